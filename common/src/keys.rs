//! Every Redis key name the cluster uses, in one place. All keys start with the configured
//! namespace (`cluster.namespace`), so several clusters or tests can share one Redis.
//!
//! Who writes and reads each key is ARCHITECTURE.md's "Redis keys" table, one row per method
//! here; `common/tests/architecture.rs` fails when the two disagree.

/// Every value under the keys matching `pattern` (SCAN, so Redis is never blocked), decoded from
/// JSON; keys that vanished meanwhile or do not decode are left out. The one reader of
/// TTL'd JSON reports (`<ns>:workers:*`, `<ns>:storage:*`) for the API, the CLI and `health`.
pub async fn scan_json<T, C>(conn: &mut C, pattern: &str) -> redis::RedisResult<Vec<T>>
where
    T: serde::de::DeserializeOwned,
    C: redis::aio::ConnectionLike + Send,
{
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500).query_async(conn).await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut out = Vec::new();
    for k in keys {
        let v: Option<String> = redis::cmd("GET").arg(&k).query_async(conn).await?;
        out.extend(v.and_then(|v| serde_json::from_str(&v).ok()));
    }
    Ok(out)
}

/// Key names of one cluster namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    ns: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Self { ns: namespace.to_owned() }
    }
    pub fn namespace(&self) -> &str {
        &self.ns
    }
    /// Prefix of one apalis queue; `kind` is a job struct's `QUEUE` constant.
    pub fn queue(&self, kind: &str) -> String {
        format!("{}:queue:{kind}", self.ns)
    }
    pub fn motion_plan(&self) -> String {
        format!("{}:motion:plan", self.ns)
    }
    pub fn motion_batch(&self, batch: &str) -> String {
        format!("{}:motion:batch:{batch}", self.ns)
    }
    pub fn motion_lease(&self, batch: &str) -> String {
        format!("{}:motion:lease:{batch}", self.ns)
    }
    pub fn motion_events(&self) -> String {
        format!("{}:events:motion", self.ns)
    }
    pub fn object_events(&self) -> String {
        format!("{}:events:objects", self.ns)
    }
    pub fn yolo_stats(&self) -> String {
        format!("{}:stats:yolo", self.ns)
    }
    /// What YOLO last saw on a channel ([`crate::seen::ObjectsSeen`]): worker-motion samples
    /// slower while motion stays inside these boxes.
    pub fn yolo_seen(&self, channel: u32) -> String {
        format!("{}:yolo:seen:{channel}", self.ns)
    }
    pub fn system_events(&self) -> String {
        format!("{}:events:system", self.ns)
    }
    pub fn backup_events(&self) -> String {
        format!("{}:events:backup", self.ns)
    }
    pub fn recording(&self, recording: &str) -> String {
        format!("{}:record:rec:{recording}", self.ns)
    }
    pub fn record_active(&self, channel: u32) -> String {
        format!("{}:record:active:{channel}", self.ns)
    }
    pub fn record_motion_event(&self, motion_event: &str) -> String {
        format!("{}:record:mevent:{motion_event}", self.ns)
    }
    pub fn record_cursor(&self) -> String {
        format!("{}:record:cursor", self.ns)
    }
    /// Stream positions of one notification sink (`mqtt`, `webhook:<name>`).
    pub fn notify_cursor(&self, sink: &str) -> String {
        format!("{}:notify:cursor:{sink}", self.ns)
    }
    pub fn record_lease(&self, recording: &str) -> String {
        format!("{}:record:lease:{recording}", self.ns)
    }
    pub fn backup_status(&self) -> String {
        format!("{}:status:backup", self.ns)
    }
    pub fn storage(&self, node: &str) -> String {
        format!("{}:storage:{node}", self.ns)
    }
    pub fn storage_pattern(&self) -> String {
        format!("{}:storage:*", self.ns)
    }
    pub fn backups_protected(&self) -> String {
        format!("{}:backups:protected", self.ns)
    }
    pub fn storage_lock(&self, volume: &str) -> String {
        format!("{}:storagelock:{volume}", self.ns)
    }
    pub fn channel_preview(&self, channel: u32) -> String {
        format!("{}:preview:{channel}", self.ns)
    }
    pub fn relay_status(&self, channel: u32) -> String {
        format!("{}:status:relay:{channel}", self.ns)
    }
    /// The playlist record jobs of `channel` read when it is not nginx-rtmp's (the relay's own
    /// buffer of an H.265 main stream); written by the relay with a TTL, absent otherwise.
    pub fn record_playlist(&self, channel: u32) -> String {
        format!("{}:relay:playlist:{channel}", self.ns)
    }
    pub fn channel_status(&self, channel: u32) -> String {
        format!("{}:status:channel:{channel}", self.ns)
    }
    pub fn scheduler_leader(&self) -> String {
        format!("{}:scheduler:leader", self.ns)
    }
    pub fn worker(&self, worker: &str) -> String {
        format!("{}:workers:{worker}", self.ns)
    }
    pub fn worker_pattern(&self) -> String {
        format!("{}:workers:*", self.ns)
    }
    /// The JPEG of a motion event's busiest frame (TTL 14 days).
    pub fn motion_thumbnail(&self, event_id: &str) -> String {
        format!("{}:thumb:motion:{event_id}", self.ns)
    }
    /// A dashboard sign-in, by the digest of its cookie's id (the id itself is never stored).
    pub fn session(&self, id_digest: &str) -> String {
        format!("{}:session:{id_digest}", self.ns)
    }
    /// Wrong sign-in tokens of one client (by a digest of its address), counted in a window.
    pub fn sign_in_failures(&self, client: &str) -> String {
        format!("{}:signin:failures:{client}", self.ns)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_key_is_namespaced() {
        let k = super::Keys::new("site-a");
        for key in [
            k.queue("motion"),
            k.motion_plan(),
            k.motion_batch("b0"),
            k.motion_lease("b0"),
            k.motion_events(),
            k.object_events(),
            k.yolo_stats(),
            k.yolo_seen(3),
            k.backup_events(),
            k.recording("r"),
            k.record_active(1),
            k.record_motion_event("e"),
            k.session("d"),
            k.motion_thumbnail("e"),
            k.sign_in_failures("c"),
            k.record_cursor(),
            k.record_lease("r"),
            k.backup_status(),
            k.backups_protected(),
            k.channel_status(3),
            k.record_playlist(3),
            k.channel_preview(3),
            k.worker("w"),
        ] {
            assert!(key.starts_with("site-a:"), "{key}");
        }
    }
}

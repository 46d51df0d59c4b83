//! Status models: what a process publishes about itself in Redis (with a TTL) and every reader
//! (API, CLI, metrics, the quality harness) decodes with the same type, never by field name.
//!
//! - `<ns>:status:relay:<id>`: [`RelayStatus`] (the relay);
//! - `<ns>:status:backup`: [`BackupDirStatus`] per record worker;
//! - `<ns>:status:channel:<id>` is [`crate::events::ChannelStatus`], `<ns>:storage:<node>`
//!   [`crate::events::StorageReport`], `<ns>:motion:plan` [`crate::plan::PublishedPlan`].

use std::collections::BTreeMap;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::keys::Keys;
use crate::probe::StreamProbe;

/// One relayed stream's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RelayState {
    pub stream: String,
    pub running: bool,
    /// Why the last run ended (redacted ffmpeg message).
    pub last_error: Option<String>,
    pub restarts: u64,
    pub since_ms: Option<i64>,
    /// What the stream carries, from its last probe (at every start and restart).
    #[serde(default)]
    pub probe: Option<StreamProbe>,
    /// How it travels (e.g. "nginx-rtmp, stream copy", "relay buffer, stream copy").
    #[serde(default)]
    pub route: Option<String>,
}

/// `<ns>:status:relay:<id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RelayStatus {
    pub channel: u32,
    pub main: RelayState,
    pub sub: Option<RelayState>,
    pub host: String,
    pub updated_ms: i64,
    /// Main and sub-stream are relayed by one ffmpeg (see the module documentation).
    #[serde(default)]
    pub one_process: bool,
    /// The H.264 detect stream transcoded from the main stream of a camera that has no
    /// sub-stream and whose main stream nginx-rtmp cannot carry.
    #[serde(default)]
    pub detect: Option<RelayState>,
}

impl RelayStatus {
    /// The main stream's relay, then the sub-stream's and the transcoded detect stream's.
    pub fn streams(&self) -> impl Iterator<Item = &RelayState> {
        std::iter::once(&self.main).chain(self.sub.as_ref()).chain(self.detect.as_ref())
    }

    /// "main H.265 1280x720 25 fps · audio G.711 A-law · sub H.264 640x360": what each probed
    /// stream carries.
    pub fn codecs(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(p) = &self.main.probe {
            parts.push(format!("main {}", p.summary()));
        }
        if let Some(p) = self.sub.as_ref().and_then(|s| s.probe.as_ref()) {
            parts.push(format!("sub {}", p.summary()));
        }
        (!parts.is_empty()).then(|| parts.join(" · "))
    }
}

impl RelayStatus {
    /// Channel `channel`'s relay status (`None`: no relay reports it, or it does not decode).
    pub async fn read<C: redis::aio::ConnectionLike + Send>(
        conn: &mut C,
        keys: &Keys,
        channel: u32,
    ) -> redis::RedisResult<Option<RelayStatus>> {
        let raw: Option<String> = redis::cmd("GET").arg(keys.relay_status(channel)).query_async(conn).await?;
        Ok(raw.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Writes it with a TTL, so a relay that dies stops reporting by itself.
    pub async fn publish<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        keys: &Keys,
        ttl_secs: u64,
    ) -> redis::RedisResult<()> {
        let json = encode(self)?;
        redis::cmd("SET").arg(keys.relay_status(self.channel)).arg(json).arg("EX").arg(ttl_secs).query_async(conn).await
    }
}

fn encode<T: Serialize>(value: &T) -> redis::RedisResult<String> {
    serde_json::to_string(value)
        .map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "encoding a status", e.to_string())))
}

/// One record worker's backup directory, in `<ns>:status:backup` (a hash: worker → this).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct BackupDirStatus {
    pub worker: String,
    pub host: String,
    pub backup_dir: String,
    /// Writable (a file was created, synced and removed).
    pub ok: bool,
    /// Why it is not usable.
    pub error: Option<String>,
    pub updated_ms: i64,
}

impl BackupDirStatus {
    pub async fn publish(&self, conn: &mut redis::aio::ConnectionManager, keys: &Keys) -> redis::RedisResult<()> {
        let json = encode(self)?;
        conn.hset(keys.backup_status(), &self.worker, json).await
    }

    /// Every record worker's report, by worker (reports that do not decode are left out).
    pub async fn read_all(conn: &mut redis::aio::ConnectionManager, keys: &Keys) -> redis::RedisResult<Vec<Self>> {
        let all: BTreeMap<String, String> = conn.hgetall(keys.backup_status()).await?;
        Ok(all.values().filter_map(|v| serde_json::from_str(v).ok()).collect())
    }

    /// A worker that stops removes its report.
    pub async fn withdraw(
        conn: &mut redis::aio::ConnectionManager,
        keys: &Keys,
        worker: &str,
    ) -> redis::RedisResult<()> {
        conn.hdel(keys.backup_status(), worker).await
    }
}

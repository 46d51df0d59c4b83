//! Every Redis key name the cluster uses, in one place. All keys start with the configured
//! namespace (`cluster.namespace`), so several clusters or tests can share one Redis.
//!
//! | key | type | written by | read by |
//! | --- | --- | --- | --- |
//! | `<ns>:queue:<kind>:*` | apalis queue | scheduler (push), workers (claim) | workers, CLI |
//! | `<ns>:motion:plan` | hash `hash`, `batches` | scheduler | workers (stale-job check), CLI |
//! | `<ns>:motion:batch:<batch>` | string: job id | scheduler | scheduler (reconcile) |
//! | `<ns>:motion:lease:<batch>` | string: worker id, TTL | worker-motion | worker-motion, CLI |
//! | `<ns>:events:motion` | stream of `MotionEvent` | worker-motion | scheduler, CLI |
//! | `<ns>:events:objects` | stream of `ObjectEvent` | worker-yolo | scheduler, CLI |
//! | `<ns>:stats:yolo` | hash of counters (`sent`, `dropped_full`, `dropped_stale`, `processed`, `positive`, `failed`, `batches`) | worker-motion, worker-yolo | CLI |
//! | `<ns>:status:channel:<id>` | string: `ChannelStatus` JSON, TTL | worker-motion | CLI |
//! | `<ns>:scheduler:leader` | string: scheduler id, TTL | scheduler (one active at a time) | scheduler |
//! | `<ns>:workers:<worker>` | string: `WorkerHeartbeat` JSON, TTL | every worker | CLI |

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
    pub fn channel_status(&self, channel: u32) -> String {
        format!("{}:status:channel:{channel}", self.ns)
    }
    pub fn channel_status_pattern(&self) -> String {
        format!("{}:status:channel:*", self.ns)
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
            k.channel_status(3),
            k.worker("w"),
        ] {
            assert!(key.starts_with("site-a:"), "{key}");
        }
    }
}

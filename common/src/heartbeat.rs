//! Worker heartbeats: every worker process writes `<ns>:workers:<worker>` (a `WorkerHeartbeat`
//! with a TTL) every few seconds, so `cctv status` and the API see who is alive and what it holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::events::{now_ms, WorkerHeartbeat};
use crate::keys::Keys;

/// Heartbeat period.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// Heartbeat TTL: a worker silent this long is gone.
pub const HEARTBEAT_TTL_SECS: u64 = 10;

/// What a worker holds right now (batch ids, channels being recorded, ...), shared with its
/// heartbeat.
pub type Held = Arc<Mutex<Vec<String>>>;

/// Writes the heartbeat until the task is aborted; then [`remove`] deletes it.
pub async fn run(mut conn: ConnectionManager, keys: Keys, worker: String, kind: &'static str, held: Held) {
    let host = crate::host_name();
    let pid = sysinfo::Pid::from_u32(std::process::id());
    let mut sys = sysinfo::System::new().ok();
    let what = sysinfo::ProcessRefreshKind::nothing().with_cpu().with_memory();
    loop {
        let me = sys.as_mut().and_then(|sys| {
            sys.refresh_processes_specifics(sysinfo::ProcessesToUpdate::Some(&[pid]), true, what);
            sys.process(pid)
        });
        let hb = WorkerHeartbeat {
            worker: worker.clone(),
            kind: kind.into(),
            host: host.clone(),
            pid: std::process::id(),
            batches: held.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            cpu_percent: me.map(|p| p.cpu_usage()),
            rss_bytes: me.map(|p| p.memory()),
            updated_ms: now_ms(),
        };
        if let Ok(json) = serde_json::to_string(&hb) {
            let r: Result<(), _> = conn.set_ex(keys.worker(&worker), json, HEARTBEAT_TTL_SECS).await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "worker heartbeat failed");
            }
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

/// Deletes the worker's heartbeat on a clean stop.
pub async fn remove(conn: &mut ConnectionManager, keys: &Keys, worker: &str) {
    let _: Result<(), _> = conn.del(keys.worker(worker)).await;
}

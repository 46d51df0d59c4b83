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

/// Why a process on this host is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("redis {url}: {source}")]
    Redis { url: String, source: redis::RedisError },
    #[error("redis {url}: no answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error(
        "no {kind} heartbeat from host {host} in the last {ttl} s (process stopped, stuck, or cut off from Redis)"
    )]
    Missing { kind: String, host: String, ttl: u64 },
    #[error("{kind} heartbeat of {worker} on {host} is {age_secs} s old (more than {max_secs} s)")]
    Stale { kind: String, worker: String, host: String, age_secs: i64, max_secs: i64 },
}

/// The health check of a container or unit: a `kind` process on this host wrote its heartbeat
/// in Redis within `max_age`. A live PID alone says nothing; the heartbeat says the process
/// runs and reaches Redis. Returns the worker's name.
pub async fn check_local(
    cluster: &crate::config::ClusterConfig,
    kind: &str,
    max_age: Duration,
) -> Result<String, HealthError> {
    let url = crate::queue::redis_location(cluster);
    let timeout = Duration::from_secs(5);
    let check = async {
        let client = crate::queue::client(cluster).map_err(|source| HealthError::Redis { url: url.clone(), source })?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|source| HealthError::Redis { url: url.clone(), source })?;
        let keys = Keys::new(&cluster.namespace);
        let beats: Vec<WorkerHeartbeat> = crate::keys::scan_json(&mut conn, &keys.worker_pattern())
            .await
            .map_err(|source| HealthError::Redis { url: url.clone(), source })?;
        let host = crate::host_name();
        let newest = beats.into_iter().filter(|hb| hb.kind == kind && hb.host == host).max_by_key(|hb| hb.updated_ms);
        let hb = newest.ok_or_else(|| HealthError::Missing {
            kind: kind.into(),
            host: host.clone(),
            ttl: HEARTBEAT_TTL_SECS,
        })?;
        let age_ms = now_ms() - hb.updated_ms;
        if age_ms > max_age.as_millis() as i64 {
            return Err(HealthError::Stale {
                kind: kind.into(),
                worker: hb.worker,
                host,
                age_secs: age_ms / 1000,
                max_secs: max_age.as_secs() as i64,
            });
        }
        Ok(hb.worker)
    };
    tokio::time::timeout(timeout, check).await.map_err(|_| HealthError::Timeout { url, secs: timeout.as_secs() })?
}

/// `<binary> health`: exit 0 with the worker's name when [`check_local`] passes, else 1 with
/// the reason on stderr (what `docker inspect` shows as the health log).
pub fn health_command(config_path: &std::path::Path, kind: &str) -> std::process::ExitCode {
    let config = match crate::Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unhealthy: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(check_local(&config.cluster, kind, Duration::from_secs(3 * HEARTBEAT_EVERY.as_secs()))) {
        Ok(worker) => {
            println!("healthy: {worker}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The job queue: the only module that touches apalis types.
//!
//! Queues are apalis-redis storages named `<ns>:queue:<Job::QUEUE>`. Heartbeat and missed-heartbeat
//! settings come from `[queue]` so a killed worker's jobs move to another worker within seconds.

use std::future::Future;
use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::{Config as RedisQueueConfig, RedisStorage};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, QueueConfig};
use crate::jobs::{Job, JobError};
use crate::keys::Keys;
use crate::redact::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot connect to redis at {url}: {source}")]
    Connect { url: String, source: redis::RedisError },
    #[error("redis error on queue {queue}: {source}")]
    Redis { queue: String, source: redis::RedisError },
    #[error("cannot encode job for queue {queue}: {source}")]
    Encode { queue: String, source: serde_json::Error },
    #[error("queue {queue}: {message}")]
    Backend { queue: String, message: String },
    #[error("worker {worker} on queue {queue} stopped with an error: {message}")]
    Worker { worker: String, queue: String, message: String },
}

/// Idle poll period of long-running job queues (motion): a new batch waits at most this long.
const DEFAULT_POLL: Duration = Duration::from_millis(500);

/// A Redis connection with a response timeout long enough that a busy Redis is not fatal
/// (the crate default of 500 ms makes apalis workers stop silently: apalis-redis issue 76).
pub async fn connect(cluster: &ClusterConfig, queue: &QueueConfig) -> Result<ConnectionManager, QueueError> {
    let err = |source| QueueError::Connect { url: redis_location(cluster), source };
    let client = client(cluster).map_err(err)?;
    let cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(queue.redis_response_timeout_secs)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client.get_connection_manager_with_config(cfg).await.map_err(err)
}

/// The Redis client of this cluster: `redis_url`, or with `[cluster.sentinel]` the same
/// credentials and database through the local relay that follows the master
/// ([`crate::sentinel`]). Every Redis connection of the processes is made from this.
pub fn client(cluster: &ClusterConfig) -> redis::RedisResult<redis::Client> {
    let Some(sentinel) = &cluster.sentinel else {
        // `rediss://`: TLS through OpenSSL, the system's CA store, or only `tls_ca_file`'s CA.
        if let Some(ca) = &cluster.tls_ca_file {
            let root_cert = std::fs::read(ca)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cluster.tls_ca_file {}: {e}", ca.display())))?;
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
            return redis::Client::build_with_tls(cluster.redis_url.as_str(), certificates);
        }
        return redis::Client::open(cluster.redis_url.as_str());
    };
    let port = crate::sentinel::local_port(sentinel).map_err(|e| std::io::Error::other(e.to_string()))?;
    let info = redis::IntoConnectionInfo::into_connection_info(cluster.redis_url.as_str())?
        .set_addr(redis::ConnectionAddr::Tcp("127.0.0.1".into(), port));
    redis::Client::open(info)
}

/// Where this cluster's Redis is, for messages: the redacted URL, or the sentinel master.
pub fn redis_location(cluster: &ClusterConfig) -> String {
    match &cluster.sentinel {
        None => redact_url(&cluster.redis_url),
        Some(s) => format!("sentinel master {:?} (sentinels {})", s.master, s.addresses.join(", ")),
    }
}

/// Handle on one job queue.
#[derive(Clone)]
pub struct Queue<J: Job> {
    /// Payloads are polled as JSON values and decoded into `J` by the worker's handler: a job
    /// of another shape (a version skew, or written into Redis by someone else) then fails on
    /// its own, for good, instead of stopping the poller (apalis stops a worker on a payload it
    /// cannot decode, and the job would come back again and again).
    storage: RedisStorage<serde_json::Value>,
    _job: std::marker::PhantomData<fn() -> J>,
    conn: ConnectionManager,
    name: String,
    poll_every: Duration,
}

/// Counts of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub waiting: u64,
    pub running: u64,
    pub done: u64,
    pub dead: u64,
}

/// Counts of one queue; YOLO's also carries its drop counters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct QueueCounts {
    pub waiting: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    /// YOLO: frames dropped (stale or queue full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<i64>,
    /// YOLO: every counter of `<ns>:yolo:stats`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<std::collections::BTreeMap<String, i64>>,
}

/// `GET /api/jobs`: the three queues.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct QueuesOverview {
    pub motion: QueueCounts,
    pub yolo: QueueCounts,
    pub record: QueueCounts,
}

impl QueuesOverview {
    /// The queues by name, in name order (how the CLI and /metrics list them).
    pub fn by_name(&self) -> [(&'static str, &QueueCounts); 3] {
        [("motion", &self.motion), ("record", &self.record), ("yolo", &self.yolo)]
    }
}

/// Counts of every queue, plus YOLO's drop counters (`<ns>:stats:yolo`): the API's `/api/jobs`,
/// `cctv jobs list` and `/metrics`.
pub async fn overview(
    conn: &ConnectionManager,
    keys: &Keys,
    config: &QueueConfig,
) -> Result<QueuesOverview, QueueError> {
    use crate::jobs::{MotionJob, RecordJob, YoloJob};
    let counts = |s: QueueStats| QueueCounts {
        waiting: s.waiting,
        running: s.running,
        done: s.done,
        failed: s.dead,
        dropped: None,
        counters: None,
    };
    let yolo: std::collections::BTreeMap<String, i64> = conn
        .clone()
        .hgetall(keys.yolo_stats())
        .await
        .map_err(|source| QueueError::Redis { queue: keys.yolo_stats(), source })?;
    let dropped = yolo.get("dropped_stale").copied().unwrap_or(0) + yolo.get("dropped_full").copied().unwrap_or(0);
    Ok(QueuesOverview {
        motion: counts(Queue::<MotionJob>::new(conn.clone(), keys, config).stats().await?),
        yolo: QueueCounts {
            dropped: Some(dropped),
            counters: Some(yolo),
            ..counts(Queue::<YoloJob>::new(conn.clone(), keys, config).stats().await?)
        },
        record: counts(Queue::<RecordJob>::new(conn.clone(), keys, config).stats().await?),
    })
}

/// One job as stored by apalis-redis.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct JobInfo {
    pub id: String,
    /// `waiting`, `running`, `done`, `dead`, or `unknown`.
    pub state: String,
    /// apalis' status field (`Pending`, `Running`, `Done`, `Failed`, `Killed`, ...).
    pub status: Option<String>,
    pub attempts: Option<u64>,
    /// Last result or error message.
    pub result: Option<String>,
    /// The job's payload (large binary fields replaced by their size).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// What a handler learns about the job it runs.
#[derive(Debug, Clone)]
pub struct JobMeta {
    pub job_id: String,
    pub attempt: usize,
    pub worker: String,
}

impl<J: Job> Queue<J> {
    pub fn new(conn: ConnectionManager, keys: &Keys, queue: &QueueConfig) -> Self {
        let name = keys.queue(J::QUEUE);
        let config = RedisQueueConfig::default()
            .queue(&name)
            .heartbeat_interval(Duration::from_secs(queue.heartbeat_interval_secs))
            .missed_heartbeats(queue.missed_heartbeats)
            // One job per fetch: long-running jobs must not sit claimed-but-idle behind a
            // concurrency limit.
            .batch_size(1);
        Self {
            storage: RedisStorage::new(conn.clone()).with_config(config),
            _job: std::marker::PhantomData,
            conn,
            name,
            poll_every: DEFAULT_POLL,
        }
    }

    /// How often an idle worker looks for new jobs. Without it apalis-redis only looks again at
    /// its next heartbeat (seconds), too late for jobs that are stale after 2 s.
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_every = every;
        self
    }

    /// Fetch up to `n` jobs per poll: for short jobs that a worker runs as one batch (YOLO).
    pub fn with_fetch_batch(mut self, n: usize) -> Self {
        let config = self.storage.get_config().clone().batch_size(n.max(1));
        self.storage = RedisStorage::new(self.conn.clone()).with_config(config);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pushes a job that needs no de-duplication. Returns its id.
    pub async fn push(&mut self, job: &J) -> Result<String, QueueError> {
        self.push_task(job, None)
            .await?
            .ok_or_else(|| QueueError::Backend { queue: self.name.clone(), message: "job was not stored".into() })
    }

    fn redis_err(&self, source: redis::RedisError) -> QueueError {
        QueueError::Redis { queue: self.name.clone(), source }
    }

    /// Pushes a job unless one with the same idempotency key was ever pushed on this queue.
    /// Returns the new job id, or `None` when the key was already taken.
    pub async fn push_unique(&mut self, job: &J, idempotency_key: &str) -> Result<Option<String>, QueueError> {
        self.push_task(job, Some(idempotency_key)).await
    }

    async fn push_task(&mut self, job: &J, idempotency_key: Option<&str>) -> Result<Option<String>, QueueError> {
        let bytes =
            serde_json::to_vec(job).map_err(|source| QueueError::Encode { queue: self.name.clone(), source })?;
        let id = ulid::Ulid::from_parts(crate::events::now_ms() as u64, uuid::Uuid::new_v4().as_u128());
        let mut task = TaskBuilder::new(bytes).task_id(TaskId::from_ulid(id));
        if let Some(key) = idempotency_key {
            task = task.idempotency_key(key);
        }
        let task = task.build();
        let config = self.storage.get_config().clone();
        let (enqueued, scheduled) = apalis_redis::queries::push_tasks(self.storage.get_connection(), &config, &[task])
            .await
            .map_err(|e| QueueError::Backend { queue: self.name.clone(), message: e.to_string() })?;
        Ok((enqueued + scheduled > 0).then(|| id.to_string()))
    }

    /// The job id an idempotency key was used for, if any.
    pub async fn id_for_key(&mut self, idempotency_key: &str) -> Result<Option<String>, QueueError> {
        let key = format!("{}:{idempotency_key}", self.storage.get_config().idempotency_key_set());
        self.conn.get(key).await.map_err(|e| self.redis_err(e))
    }

    /// True while the job is waiting, running or scheduled for a retry; false once it is done,
    /// dead (killed or out of retries) or unknown.
    pub async fn is_live(&mut self, job_id: &str) -> Result<bool, QueueError> {
        let config = self.storage.get_config().clone();
        let meta_key = format!("{}:{job_id}", config.job_meta_hash());
        let exists: bool = self.conn.exists(&meta_key).await.map_err(|e| self.redis_err(e))?;
        if !exists {
            return Ok(false);
        }
        let done: bool = self.conn.sismember(config.done_jobs_set(), job_id).await.map_err(|e| self.redis_err(e))?;
        let dead: bool = self.conn.sismember(config.dead_jobs_set(), job_id).await.map_err(|e| self.redis_err(e))?;
        Ok(!done && !dead)
    }

    /// Jobs waiting to be claimed. apalis-redis files every push (and every retry) under its
    /// scheduled set until a worker's fetch promotes it, so both count.
    pub async fn waiting(&mut self) -> Result<u64, QueueError> {
        let config = self.storage.get_config().clone();
        let active: u64 = self.conn.llen(config.active_jobs_list()).await.map_err(|e| self.redis_err(e))?;
        let scheduled: u64 = self.conn.zcard(config.scheduled_jobs_set()).await.map_err(|e| self.redis_err(e))?;
        Ok(active + scheduled)
    }

    fn inflight_pattern(&self) -> String {
        format!("{}*", self.storage.get_config().inflight_jobs_set())
    }

    async fn inflight_sets(&mut self) -> Result<Vec<String>, QueueError> {
        let pattern = self.inflight_pattern();
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut self.conn)
                .await
                .map_err(|e| self.redis_err(e))?;
            out.extend(keys);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Waiting, running, done (not yet purged) and dead jobs.
    pub async fn stats(&mut self) -> Result<QueueStats, QueueError> {
        let waiting = self.waiting().await?;
        let mut running = 0;
        for set in self.inflight_sets().await? {
            let n: u64 = self.conn.scard(&set).await.map_err(|e| self.redis_err(e))?;
            running += n;
        }
        let (done, dead) = self.finished().await?;
        Ok(QueueStats { waiting, running, done, dead })
    }

    /// Job ids in a state (`waiting`, `running`, `done`, `dead`), at most `limit`.
    pub async fn ids(&mut self, state: &str, limit: usize) -> Result<Vec<String>, QueueError> {
        let config = self.storage.get_config().clone();
        let mut ids: Vec<String> = match state {
            "waiting" => {
                let mut v: Vec<String> = self
                    .conn
                    .lrange(config.active_jobs_list(), 0, limit as isize - 1)
                    .await
                    .map_err(|e| self.redis_err(e))?;
                let s: Vec<String> = self
                    .conn
                    .zrange(config.scheduled_jobs_set(), 0, limit as isize - 1)
                    .await
                    .map_err(|e| self.redis_err(e))?;
                v.extend(s);
                v
            }
            "running" => {
                let mut v = Vec::new();
                for set in self.inflight_sets().await? {
                    let m: Vec<String> = self.conn.smembers(&set).await.map_err(|e| self.redis_err(e))?;
                    v.extend(m);
                }
                v
            }
            "done" => self.newest_members(&config.done_jobs_set(), limit).await?,
            "dead" => self.newest_members(&config.dead_jobs_set(), limit).await?,
            other => {
                return Err(QueueError::Backend {
                    queue: self.name.clone(),
                    message: format!("unknown job state {other:?} (waiting, running, done, dead)"),
                })
            }
        };
        // Ids are ULIDs: sorting puts them in push order; newest first.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        ids.truncate(limit);
        Ok(ids)
    }

    /// The `limit` greatest members of `set` (ULIDs: the newest jobs). The set may hold every job
    /// finished since the last purge (tens of thousands on a busy YOLO queue): it is read in
    /// `SSCAN` steps, so Redis never answers one huge reply, and only the best `limit` are kept.
    async fn newest_members(&mut self, set: &str, limit: usize) -> Result<Vec<String>, QueueError> {
        let mut best = NewestIds::new(limit);
        let mut cursor = 0u64;
        loop {
            let (next, ids) = self.sscan(set, cursor, 1000).await?;
            ids.into_iter().for_each(|id| best.offer(id));
            if next == 0 {
                return Ok(best.into_vec());
            }
            cursor = next;
        }
    }

    /// One `SSCAN` step of `set` from `cursor`: the next cursor (0 at the end) and the ids.
    async fn sscan(&mut self, set: &str, cursor: u64, count: usize) -> Result<(u64, Vec<String>), QueueError> {
        redis::cmd("SSCAN")
            .arg(set)
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn)
            .await
            .map_err(|e| self.redis_err(e))
    }

    /// One job, or `None` when the id is unknown (or purged).
    pub async fn show(&mut self, id: &str) -> Result<Option<JobInfo>, QueueError> {
        let config = self.storage.get_config().clone();
        let data: Option<Vec<u8>> = self.conn.hget(config.job_data_hash(), id).await.map_err(|e| self.redis_err(e))?;
        let Some(data) = data else { return Ok(None) };
        let meta: std::collections::HashMap<String, String> =
            self.conn.hgetall(format!("{}:{id}", config.job_meta_hash())).await.map_err(|e| self.redis_err(e))?;
        let mut payload: serde_json::Value = serde_json::from_slice(&data).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = payload.as_object_mut() {
            for (_, v) in obj.iter_mut() {
                if let serde_json::Value::String(s) = v {
                    if s.len() > 1024 {
                        *v = serde_json::Value::String(format!("<{} bytes of base64>", s.len()));
                    }
                }
            }
        }
        let done: bool = self.conn.sismember(config.done_jobs_set(), id).await.map_err(|e| self.redis_err(e))?;
        let dead: bool = self.conn.sismember(config.dead_jobs_set(), id).await.map_err(|e| self.redis_err(e))?;
        let state = if done {
            "done"
        } else if dead {
            "dead"
        } else if meta.get("status").is_some_and(|s| s == "Running") {
            "running"
        } else {
            "waiting"
        };
        Ok(Some(JobInfo {
            id: id.to_string(),
            state: state.into(),
            status: meta.get("status").cloned(),
            attempts: meta.get("attempts").and_then(|a| a.parse().ok()),
            result: meta.get("result").cloned(),
            payload,
        }))
    }

    /// Pushes a copy of a finished (typically dead) job as a new job; returns the new id.
    pub async fn retry(&mut self, id: &str) -> Result<Option<String>, QueueError> {
        let config = self.storage.get_config().clone();
        let data: Option<Vec<u8>> = self.conn.hget(config.job_data_hash(), id).await.map_err(|e| self.redis_err(e))?;
        let Some(data) = data else { return Ok(None) };
        let job: J = serde_json::from_slice(&data).map_err(|e| QueueError::Backend {
            queue: self.name.clone(),
            message: format!("job {id} cannot be decoded: {e}"),
        })?;
        self.push(&job).await.map(Some)
    }

    /// Jobs finished (done, or dead for good) and not yet purged: `(done, dead)`.
    pub async fn finished(&mut self) -> Result<(u64, u64), QueueError> {
        let config = self.storage.get_config().clone();
        let done: u64 = self.conn.scard(config.done_jobs_set()).await.map_err(|e| self.redis_err(e))?;
        let dead: u64 = self.conn.scard(config.dead_jobs_set()).await.map_err(|e| self.redis_err(e))?;
        Ok((done, dead))
    }

    /// Deletes the payload and metadata of jobs done longer than `done_age` ago and of dead jobs
    /// older than `dead_age` (kept longer so they can be inspected). apalis keeps both forever;
    /// a queue carrying frames would fill Redis. Returns how many jobs were purged.
    pub async fn purge_finished(&mut self, done_age: Duration, dead_age: Duration) -> Result<usize, QueueError> {
        let config = self.storage.get_config().clone();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut purged = 0;
        for (set, age) in [(config.done_jobs_set(), done_age), (config.dead_jobs_set(), dead_age)] {
            let cutoff = now.saturating_sub(age.as_secs());
            let mut cursor = 0u64;
            loop {
                let (next, ids) = self.sscan(&set, cursor, 500).await?;
                let mut pipe = redis::pipe();
                let mut victims = 0;
                for id in &ids {
                    let meta_key = format!("{}:{id}", config.job_meta_hash());
                    let done_at: Option<u64> =
                        self.conn.hget(&meta_key, "done_at").await.map_err(|e| self.redis_err(e))?;
                    if done_at.is_none_or(|t| t <= cutoff) {
                        pipe.hdel(config.job_data_hash(), id)
                            .hdel(format!("{}:result", config.job_meta_hash()), id)
                            .del(&meta_key)
                            .srem(&set, id);
                        victims += 1;
                    }
                }
                if victims > 0 {
                    let _: redis::Value = pipe.query_async(&mut self.conn).await.map_err(|e| self.redis_err(e))?;
                    purged += victims;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(purged)
    }

    /// Runs a worker on this queue until `shutdown` is cancelled and the running jobs returned.
    /// `worker` must be unique across the cluster (two workers with one name are undefined
    /// behaviour in apalis).
    pub async fn run_worker<F, Fut>(
        self,
        worker: String,
        concurrency: usize,
        shutdown: CancellationToken,
        handler: F,
    ) -> Result<(), QueueError>
    where
        F: Fn(J, JobMeta) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let queue = self.name.clone();
        let name = worker.clone();
        let queue_name = queue.clone();
        let handler = move |payload: serde_json::Value, id: TaskId, attempt: Attempt| {
            let handler = handler.clone();
            let meta = JobMeta { job_id: id.to_string(), attempt: attempt.current(), worker: name.clone() };
            let queue_name = queue_name.clone();
            async move {
                let job_id = meta.job_id.clone();
                let job: J = match serde_json::from_value(payload) {
                    Ok(job) => job,
                    Err(e) => {
                        let m = format!("the payload is not a {} job: {e}", J::QUEUE);
                        tracing::error!(job = %job_id, queue = %queue_name, error = %m, "job refused (not retried)");
                        return Err::<(), BoxDynError>(Box::new(AbortError::new(m)));
                    }
                };
                match handler(job, meta).await {
                    Ok(()) => Ok(()),
                    Err(JobError::Permanent(m)) => {
                        tracing::error!(job = %job_id, error = %m, "job failed permanently (not retried)");
                        Err::<(), BoxDynError>(Box::new(AbortError::new(m)))
                    }
                    Err(e @ JobError::Transient(_)) => {
                        tracing::warn!(job = %job_id, error = %e, "job failed; it will be retried");
                        Err(Box::new(e) as BoxDynError)
                    }
                }
            }
        };
        // apalis-redis stops a worker for good on a backend error (a Redis restart, failover or
        // network cut: "PollNextError: broken pipe"), and refuses to re-register its name until
        // the old registration expires. So the worker is supervised here: when it stops while
        // the process is not shutting down, a new one with a fresh name starts after a backoff.
        // The process itself never exits because Redis blinked.
        let mut generation = 0u32;
        let mut backoff = Duration::from_secs(1);
        loop {
            let name = if generation == 0 { worker.clone() } else { format!("{worker}-r{generation}") };
            let backend = self.storage.clone().poll_with_strategy(ArmedInterval::new(self.poll_every));
            let built =
                WorkerBuilder::new(name.as_str()).backend(backend).concurrency(concurrency).build(handler.clone());
            let stop = shutdown.clone();
            let started = std::time::Instant::now();
            let result = built
                .run_until(async move {
                    stop.cancelled().await;
                    Ok::<(), std::io::Error>(())
                })
                .await;
            if shutdown.is_cancelled() {
                return result.map_err(|e| QueueError::Worker { worker: name, queue, message: e.to_string() });
            }
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            match &result {
                Err(e) => {
                    tracing::warn!(worker = %name, queue = %queue, error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "queue worker stopped (Redis unavailable?); starting a new one")
                }
                Ok(()) => tracing::warn!(worker = %name, queue = %queue, retry_in_ms = backoff.as_millis() as u64,
                    "queue worker ended by itself; starting a new one"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            generation += 1;
        }
    }
}

/// Wakes a queue worker every `every` to look for jobs. apalis' own `IntervalStrategy` makes a
/// new timer when its timer fires but does not poll it, so no wake-up is arranged: when the
/// fetch that follows outlasts the interval (a busy machine, a slow Redis) and finds the queue
/// empty, the worker sleeps until its next heartbeat, seconds later, while jobs arrive (YOLO
/// frames waited 1–2 s this way under load). This one polls each new timer at once, so every
/// `Pending` leaves a wake-up armed, as `PollStrategy`'s contract asks.
struct ArmedInterval {
    every: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl ArmedInterval {
    fn new(every: Duration) -> Self {
        Self { every, timer: None }
    }
}

impl Clone for ArmedInterval {
    fn clone(&self) -> Self {
        Self::new(self.every)
    }
}

impl PollStrategy for ArmedInterval {
    fn poll_drive(&mut self, cx: &mut std::task::Context<'_>, _: &PollSnapshot) -> std::task::Poll<Option<()>> {
        let mut fired = false;
        loop {
            let every = self.every;
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            match timer.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => {
                    self.timer = None;
                    fired = true;
                }
                std::task::Poll::Pending if fired => return std::task::Poll::Ready(Some(())),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    }
}

/// The `limit` greatest ids offered, kept in a min-heap of that size (memory bounded by the
/// page, not by the set).
struct NewestIds {
    limit: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<String>>,
}

impl NewestIds {
    fn new(limit: usize) -> Self {
        Self { limit, heap: std::collections::BinaryHeap::with_capacity(limit + 1) }
    }

    fn offer(&mut self, id: String) {
        if self.limit == 0 {
            return;
        }
        if self.heap.len() < self.limit {
            self.heap.push(std::cmp::Reverse(id));
        } else if self.heap.peek().is_some_and(|least| id > least.0) {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse(id));
        }
    }

    /// Newest first.
    fn into_vec(self) -> Vec<String> {
        let mut v: Vec<String> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Whether `strategy` wakes its worker again after its timer fired once, with no further
    /// poll (the fetch that poll started outlasted the interval).
    async fn wakes_again_after_firing(strategy: &mut impl super::PollStrategy) -> bool {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let snapshot = super::PollSnapshot::default();
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending(), "a new timer is not due yet");
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert!(wakes.0.load(Ordering::SeqCst) >= 1, "the first timer woke the worker");
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready(), "the timer fired");
        let before = wakes.0.load(Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        wakes.0.load(Ordering::SeqCst) > before
    }

    #[tokio::test]
    async fn the_poll_timer_is_armed_again_after_it_fires() {
        let mut ours = super::ArmedInterval::new(std::time::Duration::from_millis(20));
        assert!(wakes_again_after_firing(&mut ours).await, "a worker would sleep until its heartbeat");
    }

    /// Why [`super::ArmedInterval`] exists: when this fails, apalis fixed its interval strategy
    /// and ours can go.
    #[tokio::test]
    async fn apalis_interval_strategy_leaves_no_timer_after_firing() {
        let mut theirs = super::IntervalStrategy::new(std::time::Duration::from_millis(20));
        assert!(!wakes_again_after_firing(&mut theirs).await);
    }

    #[test]
    fn the_newest_ids_are_kept_whatever_the_order_they_come_in() {
        let ids: Vec<String> = (0..500).map(|i| format!("01J{:05}", (i * 7919) % 500)).collect();
        for limit in [0, 1, 3, 50, 1000] {
            let mut best = super::NewestIds::new(limit);
            ids.iter().cloned().for_each(|id| best.offer(id));
            let mut expected = ids.clone();
            expected.sort_unstable_by(|a, b| b.cmp(a));
            expected.truncate(limit);
            assert_eq!(best.into_vec(), expected, "limit {limit}");
        }
    }
}

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

/// A Redis connection with a response timeout long enough that a busy Redis is not fatal
/// (the crate default of 500 ms makes apalis workers stop silently: apalis-redis issue 76).
pub async fn connect(cluster: &ClusterConfig, queue: &QueueConfig) -> Result<ConnectionManager, QueueError> {
    let err = |source| QueueError::Connect { url: redact_url(&cluster.redis_url), source };
    let client = redis::Client::open(cluster.redis_url.as_str()).map_err(err)?;
    let cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(queue.redis_response_timeout_secs)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client.get_connection_manager_with_config(cfg).await.map_err(err)
}

/// Handle on one job queue.
#[derive(Clone)]
pub struct Queue<J: Job> {
    storage: RedisStorage<J>,
    conn: ConnectionManager,
    name: String,
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
        Self { storage: RedisStorage::new(conn.clone()).with_config(config), conn, name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn redis_err(&self, source: redis::RedisError) -> QueueError {
        QueueError::Redis { queue: self.name.clone(), source }
    }

    /// Pushes a job unless one with the same idempotency key was ever pushed on this queue.
    /// Returns the new job id, or `None` when the key was already taken.
    pub async fn push_unique(&mut self, job: &J, idempotency_key: &str) -> Result<Option<String>, QueueError> {
        let bytes =
            serde_json::to_vec(job).map_err(|source| QueueError::Encode { queue: self.name.clone(), source })?;
        let id = ulid::Ulid::from_parts(crate::events::now_ms() as u64, uuid::Uuid::new_v4().as_u128());
        let task = TaskBuilder::new(bytes).task_id(TaskId::from_ulid(id)).idempotency_key(idempotency_key).build();
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
        let handler = move |job: J, id: TaskId, attempt: Attempt| {
            let handler = handler.clone();
            let meta = JobMeta { job_id: id.to_string(), attempt: attempt.current(), worker: name.clone() };
            async move {
                match handler(job, meta).await {
                    Ok(()) => Ok(()),
                    Err(JobError::Permanent(m)) => Err::<(), BoxDynError>(Box::new(AbortError::new(m))),
                    Err(e @ JobError::Transient(_)) => Err(Box::new(e) as BoxDynError),
                }
            }
        };
        let built = WorkerBuilder::new(worker.as_str()).backend(self.storage).concurrency(concurrency).build(handler);
        built
            .run_until(async move {
                shutdown.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
            .await
            .map_err(|e| QueueError::Worker { worker, queue, message: e.to_string() })
    }
}

//! The scheduler: turns the channel list into batches and keeps exactly one live motion job per
//! batch on the queue, and decides backups from the workers' results ([`decide`]). The process
//! also hosts the HTTP API (`cctv-api`) when `api.enabled`.
//!
//! Only one scheduler is active per namespace (a Redis leader lease); a second one waits. The
//! plan is published to `<ns>:motion:plan`; every `reconcile_interval_secs` each batch's job is
//! checked and, if it is done or dead, replaced. Pushes use idempotency keys
//! (`<batch plan>:<batch>:<generation>`), so a restarted scheduler finds its jobs instead of
//! duplicating them, and a changed channel list re-plans the batches it changed (each batch has
//! its own hash, published as `batch:<b>` in the plan key): jobs of a changed or removed batch
//! end themselves, an unchanged batch keeps its job and its worker.

pub mod decide;

use std::time::Duration;

use anyhow::Context;
use cctv_common::clock::SharedClock;
use cctv_common::config::Config;
use cctv_common::jobs::{MotionJob, RecordJob, YoloJob};
use cctv_common::keys::Keys;
use cctv_common::lease::Lease;
use cctv_common::queue::{self, Queue};
use cctv_common::shutdown::CancellationToken;
use cctv_common::system::{SystemEventKind, SystemLog};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

pub use cctv_common::plan::{plan, Plan};

/// How long a scheduler's leadership lasts without renewal.
const LEADER_TTL_MS: u64 = 15_000;
/// How often the leader purges finished jobs from the queues.
const PURGE_EVERY: Duration = Duration::from_secs(10);
/// Finished YOLO jobs (each carries a frame, a lossless one by default: a few hundred KiB) are
/// purged after this, so Redis holds about 20 s of them; their results are on the objects
/// stream. Dead ones are kept longer for inspection.
const YOLO_DONE_KEEP: Duration = Duration::from_secs(10);
const DEAD_KEEP: Duration = Duration::from_secs(3600);

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let keys = Keys::new(&config.cluster.namespace);
    let conn = queue::connect(&config.cluster, &config.queue).await?;
    let mut scheduler = Scheduler::new(&config, conn.clone(), keys.clone());
    let system = SystemLog::open(conn.clone(), keys.clone(), &config.logs, "scheduler", &scheduler.id)?;
    system.emit(SystemEventKind::Start, format!("scheduler started ({} channels)", config.channels.len()), None).await;
    let interval = Duration::from_secs_f64(config.scheduler.reconcile_interval_secs);
    tracing::info!(id = %scheduler.id, plan = %scheduler.plan.hash, batches = scheduler.plan.jobs.len(),
        channels = config.channels.len(), "scheduler started");
    let api = if config.api.enabled {
        cctv_api::auth::check_exposure(&config.api).map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(&config.api.listen)
            .await
            .with_context(|| format!("api.listen: cannot listen on {}", config.api.listen))?;
        tracing::info!(listen = %config.api.listen, "API and dashboard at http://{}/", config.api.listen);
        Some(tokio::spawn(cctv_api::serve(
            std::sync::Arc::new(config.clone()),
            conn.clone(),
            listener,
            shutdown.clone(),
        )))
    } else {
        None
    };
    // Its heartbeat is what `scheduler health` (the container health check) looks for.
    let hb = tokio::spawn(cctv_common::heartbeat::run(
        conn.clone(),
        keys.clone(),
        scheduler.id.clone(),
        "scheduler",
        Default::default(),
    ));
    let mut leading = false;
    // Masks and zones drawn in the dashboard: a new overlay re-plans the batches it touches.
    let mut overlay = config.zones_overlay_path().map(|p| cctv_common::config::overlay::OverlayWatch::new(&p));
    let leader_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let decider = tokio::spawn(decide_loop(
        // Its own connection: XREAD BLOCK would stall every command multiplexed behind it.
        decide::Decider::new(
            &config,
            queue::connect(&config.cluster, &config.queue).await?,
            keys.clone(),
            cctv_common::clock::system(),
        ),
        leader_flag.clone(),
        shutdown.clone(),
    ));
    loop {
        if let (Some(watch), Some(path)) = (overlay.as_mut(), config.source.as_deref()) {
            if watch.changed() {
                match Config::load(path) {
                    Ok(reloaded) => scheduler.replan(&reloaded),
                    Err(e) => {
                        tracing::warn!(error = %e, "the zones overlay changed but the config does not load with it; \
                        motion keeps its current masks and zones")
                    }
                }
            }
        }
        match scheduler.tick().await {
            Ok(now_leading) => {
                if now_leading != leading {
                    tracing::info!(leader = now_leading, "leadership changed");
                    leading = now_leading;
                    leader_flag.store(leading, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "scheduler round failed; retrying"),
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    let _ = decider.await;
    if let Some(api) = api {
        let _ = api.await;
    }
    scheduler.resign().await;
    hb.abort();
    cctv_common::heartbeat::remove(&mut conn.clone(), &keys, &scheduler.id).await;
    system.emit(SystemEventKind::Stop, "scheduler stopped", None).await;
    tracing::info!("scheduler stopped");
    Ok(())
}

/// Backup decisions, by the leader only, as results arrive.
async fn decide_loop(
    mut decider: decide::Decider,
    leading: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if !leading.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        if let Err(e) = decider.step(500).await {
            tracing::warn!(error = %format!("{e:#}"), "backup decisions failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One scheduler instance.
pub struct Scheduler {
    id: String,
    keys: Keys,
    conn: ConnectionManager,
    queue: Queue<MotionJob>,
    yolo: Queue<YoloJob>,
    record: Queue<RecordJob>,
    plan: Plan,
    last_purge: Option<std::time::Instant>,
    clock: SharedClock,
}

impl Scheduler {
    pub fn new(config: &Config, conn: ConnectionManager, keys: Keys) -> Self {
        Self::with_clock(config, conn, keys, cctv_common::clock::system())
    }

    pub fn with_clock(config: &Config, conn: ConnectionManager, keys: Keys, clock: SharedClock) -> Self {
        let queue = Queue::new(conn.clone(), &keys, &config.queue);
        let yolo = Queue::new(conn.clone(), &keys, &config.queue);
        let record = Queue::new(conn.clone(), &keys, &config.queue);
        Self {
            record,
            id: cctv_common::worker_name("scheduler"),
            keys,
            conn,
            queue,
            yolo,
            plan: plan(config),
            last_purge: None,
            clock,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The plan of a reloaded config (masks and zones drawn in the dashboard): the next round
    /// publishes it, and each batch whose channels changed gets a new motion job.
    pub fn replan(&mut self, config: &Config) {
        let next = plan(config);
        if next != self.plan {
            tracing::info!(from = %self.plan.hash, to = %next.hash, "config reloaded (zones overlay); re-planned");
            self.plan = next;
        }
    }

    /// One round: take or renew leadership; as leader publish the plan and reconcile every batch.
    /// Returns whether this scheduler leads.
    pub async fn tick(&mut self) -> anyhow::Result<bool> {
        if !self.lead().await? {
            return Ok(false);
        }
        self.publish_plan().await?;
        for i in 0..self.plan.jobs.len() {
            self.reconcile_batch(i).await?;
        }
        let now = self.clock.now();
        if self.last_purge.is_none_or(|t| now.saturating_duration_since(t) >= PURGE_EVERY) {
            self.last_purge = Some(now);
            self.purge().await;
        }
        Ok(true)
    }

    /// apalis keeps finished jobs forever; YOLO jobs carry a frame each, so they would fill Redis.
    async fn purge(&mut self) {
        let yolo = self.yolo.purge_finished(YOLO_DONE_KEEP, DEAD_KEEP).await;
        let motion = self.queue.purge_finished(DEAD_KEEP, DEAD_KEEP).await;
        let record = self.record.purge_finished(DEAD_KEEP, DEAD_KEEP).await;
        match (yolo, motion, record) {
            (Ok(y), Ok(m), Ok(r)) if y + m + r > 0 => {
                tracing::debug!(yolo = y, motion = m, record = r, "purged finished jobs")
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::warn!(error = %e, "cannot purge finished jobs")
            }
            _ => {}
        }
    }

    /// The leadership: one active scheduler per namespace.
    fn leadership(&self) -> Lease {
        Lease::new(self.keys.scheduler_leader(), &self.id, LEADER_TTL_MS)
    }

    /// Renews the leadership if ours, else takes it if free.
    async fn lead(&mut self) -> anyhow::Result<bool> {
        Ok(self.leadership().acquire(&mut self.conn).await?)
    }

    /// Gives up leadership (on shutdown) so a successor need not wait for the lease to expire.
    pub async fn resign(&mut self) {
        let _ = self.leadership().release(&mut self.conn).await;
    }

    async fn publish_plan(&mut self) -> anyhow::Result<()> {
        let Some(current) = self.plan.publish(&mut self.conn, &self.keys, self.clock.now_ms()).await? else {
            return Ok(());
        };
        // Records of batches the new plan no longer has.
        let stale: Vec<String> = (self.plan.jobs.len()..self.plan.jobs.len() + 64)
            .map(|i| self.keys.motion_batch(&format!("b{i}")))
            .collect();
        let _: () = self.conn.del(stale).await?;
        tracing::info!(plan = %self.plan.hash, previous = ?current, batches = self.plan.jobs.len(), "published plan");
        Ok(())
    }

    async fn reconcile_batch(&mut self, index: usize) -> anyhow::Result<()> {
        let job = &self.plan.jobs[index];
        let record_key = self.keys.motion_batch(&job.batch);
        let record: std::collections::HashMap<String, String> = self.conn.hgetall(&record_key).await?;
        let same_plan = record.get("plan") == Some(&job.plan);
        let generation: u64 =
            if same_plan { record.get("generation").and_then(|g| g.parse().ok()).unwrap_or(0) } else { 0 };
        if same_plan {
            if let Some(id) = record.get("job").filter(|id| !id.is_empty()) {
                if self.queue.is_live(id).await? {
                    return Ok(());
                }
                tracing::warn!(batch = %job.batch, job = %id, "motion job ended; replacing it");
            }
        }
        // A record of this plan whose job ended moves on to the next generation.
        let generation = if same_plan && record.contains_key("job") { generation + 1 } else { generation };
        let idem = format!("{}:{}:{generation}", job.plan, job.batch);
        let job = job.clone();
        let id = match self.queue.push_unique(&job, &idem).await? {
            Some(id) => {
                tracing::info!(batch = %job.batch, job = %id, generation, channels = ?job.channels.iter().map(|c| c.id).collect::<Vec<_>>(), "enqueued motion job");
                id
            }
            // Pushed before (e.g. a scheduler died between push and record): adopt that job.
            None => self.queue.id_for_key(&idem).await?.context("idempotency key without job id")?,
        };
        let _: () = redis::pipe()
            .atomic()
            .del(&record_key)
            .hset(&record_key, "plan", &job.plan)
            .hset(&record_key, "generation", generation)
            .hset(&record_key, "job", &id)
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }
}

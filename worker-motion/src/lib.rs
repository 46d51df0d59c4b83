//! worker-motion: claims motion jobs (one batch of channels each) and watches every channel of
//! the batch for motion for as long as this worker lives.
//!
//! A batch is held under a Redis lease (`<ns>:motion:lease:<batch>`) on top of apalis' own
//! claim, so a batch is never processed twice at once, even if apalis handed a slow worker's job
//! to another one. Motion events go to `<ns>:events:motion` and the motion log; channel status
//! to `<ns>:status:channel:<id>` with a TTL. Events that cannot reach Redis (it is down) wait in
//! an outbox and are published, in order, before anything newer once it is back: the scheduler
//! then makes their recordings from the HLS buffer, as far back as it reaches.

pub mod channel;
pub mod decode;
pub mod detector;
pub mod flv;
pub mod gate;
pub mod rtmp;
pub mod sampling;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cctv_common::catlog::CategoryLog;
use cctv_common::config::Config;
use cctv_common::events::{now_ms, ChannelStatus, MotionEvent, MotionEventKind};
use cctv_common::heartbeat;
use cctv_common::jobs::{JobError, MotionJob, YoloJob};
use cctv_common::keys::Keys;
use cctv_common::lease::Lease;
use cctv_common::plan::PublishedPlan;
use cctv_common::queue::{self, JobMeta, Queue};
use cctv_common::recording::{RecordingState, RecordingStore};
use cctv_common::shutdown::CancellationToken;
use cctv_common::streams::{self, Stream};
use cctv_common::system::{SystemEventKind, SystemLog};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::sync::mpsc;

use channel::{ChannelHandle, ChannelMsg};

/// How long a batch lease lives without renewal. A killed worker's batch is free after this.
const LEASE_TTL_MS: u64 = 6_000;
/// Lease renewal, status publication and plan check period.
const SUPERVISE_EVERY: Duration = Duration::from_secs(2);
/// How often the channels that sample by need learn what YOLO last saw on them: a confirmation
/// reaches the sampler at most this late (until then it samples at the full rate).
const OBJECTS_SEEN_EVERY: Duration = Duration::from_millis(500);
/// Channel status and worker heartbeat TTL.
const STATUS_TTL_SECS: u64 = 10;
/// A channel's picture outlives a few missed updates, not its worker.
const PREVIEW_TTL_SECS: i64 = 60;
/// How long a motion event's picture is kept: as long as a week of events is browsed.
const MOTION_THUMBNAIL_TTL_SECS: u64 = 14 * 86_400;
/// Motion events held while Redis is unreachable (the oldest give way; all are in the motion log).
const OUTBOX_MAX: usize = 10_000;

/// Everything a motion job needs besides the job itself.
#[derive(Clone)]
struct Ctx {
    conn: ConnectionManager,
    keys: Keys,
    worker: String,
    shutdown: CancellationToken,
    log: Arc<CategoryLog>,
    held: heartbeat::Held,
    yolo: Queue<YoloJob>,
    yolo_max_queue: u64,
    /// Frames older than this are of no use to worker-yolo (`yolo.max_age_secs`).
    yolo_max_age_ms: i64,
    /// Frames dropped as stale before reaching Redis, not yet added to `dropped_stale`.
    yolo_stale_uncounted: Arc<std::sync::atomic::AtomicU64>,
    /// Encoded motion events not yet on the stream, oldest first. Locked for the whole of a
    /// publication, so events of all batches reach the stream in the order they happened.
    outbox: Arc<tokio::sync::Mutex<VecDeque<String>>>,
    watchers: Watchers,
}

/// The batches this worker watches, by batch id. A watcher is a task of its own that outlives
/// the apalis job that started it — apalis drops its jobs when it loses Redis, and motion
/// detection must go on meanwhile — and a later delivery of the same batch and plan attaches to
/// it instead of starting the channels again.
type Watchers = Arc<std::sync::Mutex<HashMap<String, Watcher>>>;

#[derive(Clone)]
struct Watcher {
    plan: String,
    done: tokio::sync::watch::Receiver<Option<Release>>,
}

/// Runs a motion worker until `shutdown` is cancelled: batches in hand are handed back.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let keys = Keys::new(&config.cluster.namespace);
    let conn = queue::connect(&config.cluster, &config.queue).await?;
    let worker = cctv_common::worker_name("motion");
    let system = SystemLog::open(conn.clone(), keys.clone(), &config.logs, "motion", &worker)?;
    system.emit(SystemEventKind::Start, "motion worker started", None).await;
    let log = Arc::new(CategoryLog::open(&config.logs, "motion")?);
    let ctx = Ctx {
        conn: conn.clone(),
        keys: keys.clone(),
        worker: worker.clone(),
        shutdown: shutdown.clone(),
        log,
        held: Arc::default(),
        yolo: Queue::new(conn.clone(), &keys, &config.queue),
        yolo_max_queue: config.yolo.max_queue,
        yolo_max_age_ms: (config.yolo.max_age_secs * 1000.0) as i64,
        yolo_stale_uncounted: Arc::default(),
        outbox: Arc::default(),
        watchers: Arc::default(),
    };
    tracing::info!(worker = %worker, concurrency = config.worker_motion.concurrency, "motion worker started");

    let heartbeat =
        tokio::spawn(heartbeat::run(conn.clone(), keys.clone(), worker.clone(), "motion", ctx.held.clone()));
    let q: Queue<MotionJob> = Queue::new(conn, &keys, &config.queue);
    let handler_ctx = ctx.clone();
    let result = q
        .run_worker(worker.clone(), config.worker_motion.concurrency, shutdown, move |job, meta| {
            hold_batch(handler_ctx.clone(), job, meta)
        })
        .await;
    // Watchers whose job apalis dropped (during a Redis outage) end on the same shutdown; let
    // them hand their batches back and flush their last events.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ctx.watchers.lock().unwrap_or_else(|e| e.into_inner()).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    heartbeat.abort();
    heartbeat::remove(&mut ctx.conn.clone(), &keys, &worker).await;
    let message = match &result {
        Ok(()) => "motion worker stopped".to_string(),
        Err(e) => format!("motion worker stopped with an error: {e}"),
    };
    system.emit(if result.is_ok() { SystemEventKind::Stop } else { SystemEventKind::Error }, message, None).await;
    tracing::info!(worker = %worker, "motion worker stopped");
    Ok(result?)
}

/// Why a batch stopped being held.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Release {
    PlanChanged,
    Shutdown,
    LeaseLost,
}

async fn hold_batch(ctx: Ctx, job: MotionJob, meta: JobMeta) -> Result<(), JobError> {
    let span = tracing::info_span!("batch", batch = %job.batch, job = %meta.job_id, plan = %job.plan);
    let inner = async {
        if job.channels.is_empty() {
            return Err(JobError::Permanent(format!("batch {} has no channels", job.batch)));
        }
        let running = ctx.watchers.lock().unwrap_or_else(|e| e.into_inner()).get(&job.batch).cloned();
        let done = match running.filter(|w| w.plan == job.plan) {
            Some(w) => {
                tracing::info!("batch already watched here (its job was lost with Redis); attaching");
                w.done
            }
            None => {
                if !take_lease(&ctx, &job).await? {
                    tracing::info!("job belongs to an old plan; ending it");
                    return Ok(());
                }
                start_watcher(&ctx, job.clone(), meta.clone(), tracing::Span::current())
            }
        };
        match wait_release(done).await {
            Release::PlanChanged => Ok(()),
            Release::Shutdown => Err(JobError::Transient("worker shut down; batch handed back to the queue".into())),
            Release::LeaseLost => Err(JobError::Transient("batch lease lost".into())),
        }
    };
    tracing::Instrument::instrument(inner, span).await
}

/// Waits for the batch lease: another worker may still hold this batch (a stalled worker whose
/// job apalis already re-queued). False when the job belongs to an old plan.
async fn take_lease(ctx: &Ctx, job: &MotionJob) -> Result<bool, JobError> {
    let mut conn = ctx.conn.clone();
    loop {
        if !plan_is_current(&mut conn, &ctx.keys, &job.batch, &job.plan).await? {
            return Ok(false);
        }
        if acquire_lease(&mut conn, &ctx.keys, &job.batch, &ctx.worker).await? {
            return Ok(true);
        }
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Err(JobError::Transient("worker shutting down before the batch lease was free".into())),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Starts watching the batch (lease taken) on a task of its own; returns where its release
/// will be announced.
fn start_watcher(
    ctx: &Ctx,
    job: MotionJob,
    meta: JobMeta,
    span: tracing::Span,
) -> tokio::sync::watch::Receiver<Option<Release>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let watcher = Watcher { plan: job.plan.clone(), done: rx.clone() };
    ctx.watchers.lock().unwrap_or_else(|e| e.into_inner()).insert(job.batch.clone(), watcher);
    let ctx = ctx.clone();
    let task = async move {
        ctx.held.lock().unwrap_or_else(|e| e.into_inner()).push(job.batch.clone());
        tracing::info!(channels = ?job.channels.iter().map(|c| c.id).collect::<Vec<_>>(), "holding batch");
        let release = watch_batch(&ctx, &job, &meta).await;
        ctx.held.lock().unwrap_or_else(|e| e.into_inner()).retain(|b| b != &job.batch);
        let mut conn = ctx.conn.clone();
        match release {
            Release::PlanChanged => {
                release_lease(&mut conn, &ctx.keys, &job.batch, &ctx.worker).await;
                tracing::info!("plan changed; batch released");
            }
            Release::Shutdown => {
                release_lease(&mut conn, &ctx.keys, &job.batch, &ctx.worker).await;
                tracing::info!("worker shutting down; batch handed back");
            }
            Release::LeaseLost => tracing::warn!("batch lease lost (another worker holds it); stopping"),
        }
        let mut watchers = ctx.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if watchers.get(&job.batch).is_some_and(|w| w.plan == job.plan) {
            watchers.remove(&job.batch);
        }
        drop(watchers);
        let _ = tx.send(Some(release));
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
    rx
}

async fn wait_release(mut done: tokio::sync::watch::Receiver<Option<Release>>) -> Release {
    loop {
        if let Some(r) = *done.borrow_and_update() {
            return r;
        }
        if done.changed().await.is_err() {
            // The watcher task is gone without a word (it panicked): its lease expires.
            return Release::LeaseLost;
        }
    }
}

/// Runs the channels of the batch until the plan changes, the worker shuts down or the lease is
/// lost; keeps the lease, channel status and published events flowing meanwhile.
async fn watch_batch(ctx: &Ctx, job: &MotionJob, meta: &JobMeta) -> Release {
    let (tx, mut rx) = mpsc::unbounded_channel::<ChannelMsg>();
    let channels: Vec<ChannelHandle> = job
        .channels
        .iter()
        .map(|c| ChannelHandle::start(c.clone(), &job.play_url, job.motion.clone(), job.yolo.clone(), tx.clone()))
        .collect();
    drop(tx);
    let mut conn = ctx.conn.clone();
    let stall = Duration::from_secs_f64(job.motion.stall_timeout_secs);
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    let mut seen_tick = tokio::time::interval(OBJECTS_SEEN_EVERY);
    seen_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let samples_by_need = channels.iter().any(|c| c.shared.samples_by_need());
    // Off after a failed read until the next supervision tick: a Redis that hangs must not hold
    // the loop more often than the lease renewal does.
    let mut seen_readable = true;
    let mut frames_at_last_tick: HashMap<u32, (u64, i64)> = HashMap::new();
    let mut published: HashMap<u32, Published> = HashMap::new();
    let store = RecordingStore::new(ctx.conn.clone(), ctx.keys.clone());
    let mut lease_failing = false;
    let release = loop {
        tokio::select! {
            // The tick first: a steady flow of messages must never starve the lease renewal
            // and the status (a status that expires reads as a lost worker).
            biased;
            _ = ctx.shutdown.cancelled() => break Release::Shutdown,
            _ = tick.tick() => {
                match renew_lease(&mut conn, &ctx.keys, &job.batch, &ctx.worker).await {
                    Ok(true) => lease_failing = false,
                    // Expired while Redis was away (or Redis came back empty): take it back
                    // unless another worker has it by now.
                    Ok(false) => match acquire_lease(&mut conn, &ctx.keys, &job.batch, &ctx.worker).await {
                        Ok(true) => {
                            tracing::info!("batch lease taken back after a Redis outage");
                            lease_failing = false;
                        }
                        Ok(false) => break Release::LeaseLost,
                        Err(e) => tracing::debug!(error = %e, "cannot take the batch lease back; will retry"),
                    },
                    Err(e) => {
                        if !lease_failing {
                            tracing::warn!(error = %e, "cannot renew batch lease (Redis unavailable?); watching on, will retry");
                        }
                        lease_failing = true;
                    }
                }
                match plan_is_current(&mut conn, &ctx.keys, &job.batch, &job.plan).await {
                    Ok(false) => break Release::PlanChanged,
                    Ok(true) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the plan; will retry"),
                }
                // Events held during an outage go out before the status that counts them.
                publish_motion(ctx, &mut conn, None).await;
                seen_readable = true;
                for ch in &channels {
                    ch.shared.check_stall(stall, ch.started_ms.load(std::sync::atomic::Ordering::Relaxed));
                    let p = published.get(&ch.shared.id).cloned().unwrap_or_default();
                    publish_status(ctx, &mut conn, job, ch, &p, &mut frames_at_last_tick).await;
                    let backlog = ch.shared.take_yolo_dropped_backlog();
                    ctx.yolo_stale_uncounted.fetch_add(backlog, std::sync::atomic::Ordering::Relaxed);
                    if ch.shared.samples_recordings() {
                        // Priority channels keep YOLO sampling while their backup is open.
                        match store.active(ch.shared.id).await {
                            Ok(rec) => ch.shared.set_recording_open(
                                rec.is_some_and(|r| r.rec.state == RecordingState::Open),
                            ),
                            Err(e) => tracing::debug!(channel = ch.shared.id, error = %e, "cannot read the channel's recording"),
                        }
                    }
                }
            }
            _ = seen_tick.tick(), if samples_by_need && seen_readable => {
                seen_readable = feed_objects_seen(ctx, &mut conn, &channels).await;
            }
            Some(msg) = rx.recv() => publish_event(ctx, &mut conn, meta, msg, &mut published).await,
        }
    };
    // Stop the readers off the async executor (joining threads blocks), then flush what they
    // said on the way out (motion `end` of events in progress).
    let _ = tokio::task::spawn_blocking(move || channels.into_iter().for_each(ChannelHandle::stop)).await;
    while let Ok(msg) = rx.try_recv() {
        publish_event(ctx, &mut conn, meta, msg, &mut published).await;
    }
    release
}

/// Hands each channel that samples by need what YOLO last saw on it. Read every
/// [`OBJECTS_SEEN_EVERY`]: a confirmation reaches the sampler at most that late, which only
/// prolongs the full rate. Unreadable (Redis down): nothing is confirmed, the full rate holds;
/// returns false.
async fn feed_objects_seen(ctx: &Ctx, conn: &mut ConnectionManager, channels: &[ChannelHandle]) -> bool {
    let by_need: Vec<&ChannelHandle> = channels.iter().filter(|c| c.shared.samples_by_need()).collect();
    let ids: Vec<u32> = by_need.iter().map(|c| c.shared.id).collect();
    match cctv_common::seen::load(conn, &ctx.keys, &ids).await {
        Ok(seen) => {
            by_need.iter().zip(seen).for_each(|(c, s)| c.shared.set_objects_seen(s));
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot read what YOLO saw; sampling at full rate");
            by_need.iter().for_each(|c| c.shared.set_objects_seen(None));
            false
        }
    }
}

/// What this worker has published on the motion stream for one channel: the status reports it,
/// in publication order, so the scheduler can tell an event in progress from one whose end will
/// never come.
#[derive(Debug, Clone, Default)]
struct Published {
    seq: u64,
    active_event: Option<String>,
}

async fn publish_event(
    ctx: &Ctx,
    conn: &mut ConnectionManager,
    meta: &JobMeta,
    msg: ChannelMsg,
    published: &mut HashMap<u32, Published>,
) {
    let (channel, kind, event_id, ts_ms, started_ms, last_motion_ms, area, boxes, zones) = match msg {
        ChannelMsg::Motion { channel, kind, event_id, ts_ms, started_ms, last_motion_ms, area, boxes, zones } => {
            (channel, kind, event_id, ts_ms, started_ms, last_motion_ms, area, boxes, zones)
        }
        ChannelMsg::Preview { channel, ts_ms, jpeg } => {
            let key = ctx.keys.channel_preview(channel);
            let r: redis::RedisResult<()> = redis::pipe()
                .hset(&key, "jpeg", jpeg)
                .hset(&key, "ts_ms", ts_ms)
                .expire(&key, PREVIEW_TTL_SECS)
                .query_async(conn)
                .await;
            if let Err(e) = r {
                tracing::debug!(channel, error = %e, "cannot store the channel picture");
            }
            return;
        }
        ChannelMsg::Thumbnail { event_id, jpeg } => {
            let r: redis::RedisResult<()> =
                conn.set_ex(ctx.keys.motion_thumbnail(&event_id), jpeg, MOTION_THUMBNAIL_TTL_SECS).await;
            if let Err(e) = r {
                tracing::debug!(event = %event_id, error = %e, "cannot store the event's picture");
            }
            return;
        }
        ChannelMsg::Frame { channel, ts_ms, motion_event, boxes, image, _place } => {
            let job = YoloJob { channel, frame_ts_ms: ts_ms, motion_event, motion_boxes: boxes, image };
            return send_to_yolo(ctx, conn, job).await; // `_place` is freed after the send
        }
    };
    let p = published.entry(channel).or_default();
    p.seq += 1;
    // A zone entry is news about the event in progress, which stays in progress.
    p.active_event = (kind != MotionEventKind::End).then(|| event_id.clone());
    let event = MotionEvent {
        seq: p.seq,
        event_id,
        channel,
        kind,
        ts_ms,
        started_ms,
        area,
        boxes,
        zones,
        last_motion_ms,
        worker: ctx.worker.clone(),
        job: meta.job_id.clone(),
    };
    let json = match serde_json::to_string(&event) {
        Ok(j) => j,
        Err(e) => return tracing::error!(error = %e, "cannot encode motion event"),
    };
    publish_motion(ctx, conn, Some(json.clone())).await;
    ctx.log.append(&json);
}

/// Publishes the outbox, oldest first, then `event` (encoded); what cannot be published stays
/// in the outbox for the next call. The outage is logged when it starts and when it ends.
async fn publish_motion(ctx: &Ctx, conn: &mut ConnectionManager, event: Option<String>) {
    let mut outbox = ctx.outbox.lock().await;
    let was_held = outbox.len();
    if let Some(json) = event {
        if outbox.len() >= OUTBOX_MAX {
            outbox.pop_front();
            tracing::warn!(kept = OUTBOX_MAX, "motion outbox full; the oldest event is only in the motion log");
        }
        outbox.push_back(json);
    }
    while let Some(json) = outbox.front() {
        let r = streams::publish_json(conn, &ctx.keys, Stream::Motion, json).await;
        match r {
            Ok(_) => {
                outbox.pop_front();
            }
            Err(e) => {
                if was_held == 0 {
                    tracing::error!(error = %e, "cannot publish motion events to redis; holding them (also in the motion log)");
                }
                return;
            }
        }
    }
    if was_held > 0 {
        tracing::info!(events = was_held, "redis is back; motion events held during the outage published");
    }
}

/// Queues a frame for YOLO unless the queue is already full (YOLO slower than the cameras):
/// then the frame is dropped here and counted, so the backlog stays bounded.
async fn send_to_yolo(ctx: &Ctx, conn: &mut ConnectionManager, job: YoloJob) {
    use std::sync::atomic::Ordering;
    let channel = job.channel;
    // A frame that waited out a Redis outage here is too old for YOLO: dropped without a
    // Redis call, so frames queued behind a blocked call drain at once and memory stays bounded
    // however long Redis is away. Counted with the next frame that gets through.
    if now_ms() - job.frame_ts_ms > ctx.yolo_max_age_ms {
        ctx.yolo_stale_uncounted.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut q = ctx.yolo.clone();
    let stats = ctx.keys.yolo_stats();
    let full = match q.waiting().await {
        Ok(n) => n >= ctx.yolo_max_queue,
        Err(e) => {
            tracing::warn!(channel, error = %e, "cannot read the YOLO queue depth");
            false
        }
    };
    let counter = if full {
        "dropped_full"
    } else {
        match q.push(&job).await {
            Ok(_) => "sent",
            Err(e) => {
                tracing::warn!(channel, error = %e, "cannot queue a frame for YOLO");
                "send_failed"
            }
        }
    };
    let r: redis::RedisResult<i64> = conn.hincr(&stats, counter, 1).await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "cannot count a YOLO frame");
        return;
    }
    let stale = ctx.yolo_stale_uncounted.swap(0, Ordering::Relaxed);
    if stale > 0 {
        tracing::info!(frames = stale, "YOLO frames dropped as stale while Redis was unreachable");
        let r: redis::RedisResult<i64> = conn.hincr(&stats, "dropped_stale", stale).await;
        if r.is_err() {
            ctx.yolo_stale_uncounted.fetch_add(stale, Ordering::Relaxed);
        }
    }
}

async fn publish_status(
    ctx: &Ctx,
    conn: &mut ConnectionManager,
    job: &MotionJob,
    ch: &ChannelHandle,
    published: &Published,
    last: &mut HashMap<u32, (u64, i64)>,
) {
    let s = &ch.shared;
    let (state, reason) = s.status();
    let now = now_ms();
    let frames = s.frames();
    let (prev_frames, prev_ms) = last.insert(s.id, (frames, now)).unwrap_or((frames, now));
    let fps = if now > prev_ms { (frames - prev_frames) as f32 * 1000.0 / (now - prev_ms) as f32 } else { 0.0 };
    let status = ChannelStatus {
        channel: s.id,
        online: !matches!(state, cctv_common::events::ChannelState::Offline),
        state,
        reason,
        fps,
        last_frame_ms: s.last_frame_ms(),
        last_motion_ms: s.last_motion_ms(),
        analysing_since_ms: s.analysing_since_ms(),
        frames_total: frames,
        frames_gated: s.frames_gated(),
        yolo_frames_skipped: s.yolo_skipped(),
        worker: ctx.worker.clone(),
        batch: job.batch.clone(),
        updated_ms: now,
        active_event: published.active_event.clone(),
        seq: published.seq,
    };
    if let Ok(json) = serde_json::to_string(&status) {
        let r: Result<(), _> = conn.set_ex(ctx.keys.channel_status(s.id), json, STATUS_TTL_SECS).await;
        if let Err(e) = r {
            tracing::warn!(channel = s.id, error = %e, "cannot publish channel status");
        }
    }
}

async fn plan_is_current(conn: &mut ConnectionManager, keys: &Keys, batch: &str, plan: &str) -> Result<bool, JobError> {
    PublishedPlan::batch_is_current(conn, keys, batch, plan)
        .await
        .map_err(|e| JobError::Transient(format!("reading the plan: {e}")))
}

/// The batch's lease: one worker watches a batch at a time.
fn batch_lease(keys: &Keys, batch: &str, worker: &str) -> Lease {
    Lease::new(keys.motion_lease(batch), worker, LEASE_TTL_MS)
}

async fn acquire_lease(conn: &mut ConnectionManager, keys: &Keys, batch: &str, worker: &str) -> Result<bool, JobError> {
    batch_lease(keys, batch, worker)
        .acquire(conn)
        .await
        .map_err(|e| JobError::Transient(format!("taking the lease of batch {batch}: {e}")))
}

async fn renew_lease(conn: &mut ConnectionManager, keys: &Keys, batch: &str, worker: &str) -> redis::RedisResult<bool> {
    batch_lease(keys, batch, worker).renew(conn).await
}

async fn release_lease(conn: &mut ConnectionManager, keys: &Keys, batch: &str, worker: &str) {
    if let Err(e) = batch_lease(keys, batch, worker).release(conn).await {
        tracing::warn!(batch, error = %e, "cannot release batch lease; it expires by itself");
    }
}

//! worker-yolo: claims YOLO jobs (one JPEG frame of a priority channel in motion each), runs
//! YOLOv5n on them through ONNX Runtime, batching the jobs that wait together, and publishes
//! the verdicts on `<ns>:events:objects` and the objects log.
//!
//! A job older than `yolo.max_age_secs` when claimed is dropped unprocessed and counted
//! (`<ns>:stats:yolo`, field `dropped_stale`), so a YOLO slower than the cameras never builds an
//! unbounded backlog. A corrupt frame fails its job permanently; the worker keeps running.

pub mod agree;
pub mod model;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cctv_common::catlog::CategoryLog;
use cctv_common::config::{Config, YoloConfig, ZoneConfig};
use cctv_common::events::{now_ms, Detection, NormBox, ObjectEvent};
use cctv_common::heartbeat;
use cctv_common::jobs::{JobError, YoloJob};
use cctv_common::keys::Keys;
use cctv_common::queue::{self, JobMeta, Queue};
use cctv_common::seen::ObjectsSeen;
use cctv_common::shutdown::CancellationToken;
use cctv_common::system::{SystemEventKind, SystemLog};
use opencv::core::Mat;
use opencv::prelude::*;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::sync::{mpsc, oneshot};

use model::{ModelError, YoloModel};
use snapshot::SnapshotStore;

/// Idle poll period of the YOLO queue: adds at most this to a frame's latency.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What the inference thread says about one job.
enum Outcome {
    Detected {
        detections: Vec<Detection>,
        frame: Mat,
        batch_size: usize,
        /// The frame shared its model input with another (`yolo.pair_frames`).
        paired: bool,
    },
    /// Became older than `max_age` while waiting for the model.
    Stale,
    /// Bad frame: never retried.
    BadFrame(String),
    /// The model failed (retried).
    Failed(String),
}

struct Pending {
    job: YoloJob,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Clone)]
struct Ctx {
    conn: ConnectionManager,
    keys: Keys,
    worker: String,
    max_age_ms: i64,
    infer: mpsc::Sender<Pending>,
    log: Arc<CategoryLog>,
    snapshots: Arc<SnapshotStore>,
    /// Each channel's `[[channel.zone]]` areas, which object events name.
    zones: Arc<HashMap<u32, Vec<ZoneConfig>>>,
}

/// Loads the model (a missing library or model file is a startup error naming the path) and
/// runs a YOLO worker until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let yolo = config.yolo.clone();
    let model = tokio::task::spawn_blocking(move || YoloModel::load(&yolo)).await??;
    tracing::info!(
        model = %config.yolo.model.display(),
        threads = config.yolo.intra_threads,
        max_batch = config.yolo.max_batch,
        // A frame without a partner runs at its own size (640x384 for 16:9) only then.
        any_size = model.any_size(),
        "YOLO model loaded"
    );
    let keys = Keys::new(&config.cluster.namespace);
    let conn = queue::connect(&config.cluster, &config.queue).await?;
    let worker = cctv_common::worker_name("yolo");
    let system = SystemLog::open(conn.clone(), keys.clone(), &config.logs, "yolo", &worker)?;
    system.emit(SystemEventKind::Start, "yolo worker started", None).await;
    // Frames one model run takes: with pairing an input holds two.
    let per_run = config.yolo.max_batch * if config.yolo.pair_frames { 2 } else { 1 };
    let (tx, rx) = mpsc::channel::<Pending>(per_run * 4);
    let inference = start_inference(model, rx, config.yolo.clone())?;
    let ctx = Ctx {
        conn: conn.clone(),
        keys: keys.clone(),
        worker: worker.clone(),
        max_age_ms: (config.yolo.max_age_secs * 1000.0) as i64,
        infer: tx,
        log: Arc::new(CategoryLog::open(&config.logs, "objects")?),
        snapshots: Arc::new(SnapshotStore::open(&config.yolo.snapshot_dir, config.yolo.snapshot_keep)?),
        zones: Arc::new(config.channels.iter().map(|c| (c.id, c.zone.clone())).collect()),
    };
    tracing::info!(worker = %worker, "YOLO worker started");
    let heartbeat =
        tokio::spawn(heartbeat::run(conn.clone(), keys.clone(), worker.clone(), "yolo", heartbeat::Held::default()));
    // Twice a run's frames in flight: the next run gathers while the model runs the current
    // one. A poll fetches a whole run, so two waiting frames are paired at once instead of the
    // second arriving a poll later (after the first gave up waiting for it).
    let concurrency = per_run * 2;
    let q: Queue<YoloJob> =
        Queue::new(conn, &keys, &config.queue).with_fetch_batch(per_run).with_poll_interval(POLL_EVERY);
    let handler_ctx = ctx.clone();
    let result = q
        .run_worker(worker.clone(), concurrency, shutdown, move |job, meta| handle(handler_ctx.clone(), job, meta))
        .await;
    heartbeat.abort();
    drop(ctx.infer);
    let _ = tokio::task::spawn_blocking(move || inference.join()).await;
    heartbeat::remove(&mut ctx.conn.clone(), &keys, &worker).await;
    let message = match &result {
        Ok(()) => "yolo worker stopped".to_string(),
        Err(e) => format!("yolo worker stopped with an error: {e}"),
    };
    system.emit(if result.is_ok() { SystemEventKind::Stop } else { SystemEventKind::Error }, message, None).await;
    tracing::info!(worker = %worker, "YOLO worker stopped");
    Ok(result?)
}

/// The model runs on its own thread: it takes what waits in the channel (up to `max_batch`)
/// and runs it as one batch.
fn start_inference(
    mut model: YoloModel,
    mut rx: mpsc::Receiver<Pending>,
    cfg: YoloConfig,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let max_age_ms = (cfg.max_age_secs * 1000.0) as i64;
    // With pairing, an input holds two frames.
    let per_run = cfg.max_batch * if cfg.pair_frames { 2 } else { 1 };
    let pair_wait = Duration::from_millis(cfg.pair_wait_ms);
    std::thread::Builder::new().name("yolo inference".into()).spawn(move || {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < per_run {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            // A frame without a partner waits at most `pair_wait_ms` for one: one inference
            // then serves both; else it runs alone.
            if cfg.pair_frames && batch.len() % 2 == 1 {
                let until = std::time::Instant::now() + pair_wait;
                while std::time::Instant::now() < until {
                    match rx.try_recv() {
                        Ok(p) => {
                            batch.push(p);
                            break;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(2)),
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                    }
                }
            }
            let mut ready: Vec<(Pending, Mat)> = Vec::with_capacity(batch.len());
            for p in batch {
                if now_ms() - p.job.frame_ts_ms > max_age_ms {
                    let _ = p.reply.send(Outcome::Stale);
                    continue;
                }
                match model::decode_image(&p.job.image) {
                    Ok(frame) => ready.push((p, frame)),
                    Err(e) => {
                        let _ = p.reply.send(Outcome::BadFrame(e.to_string()));
                    }
                }
            }
            if ready.is_empty() {
                continue;
            }
            let frames: Vec<&Mat> = ready.iter().map(|(_, f)| f).collect();
            let n = frames.len();
            let paired = model.shares_input(&frames);
            match model.detect(&frames) {
                Ok(results) => {
                    for (((p, frame), detections), paired) in ready.into_iter().zip(results).zip(paired) {
                        let _ = p.reply.send(Outcome::Detected { detections, frame, batch_size: n, paired });
                    }
                }
                Err(e) => {
                    let bad_input = matches!(e, ModelError::Image(_));
                    for (p, _) in ready {
                        let _ = p.reply.send(if bad_input {
                            Outcome::BadFrame(e.to_string())
                        } else {
                            Outcome::Failed(e.to_string())
                        });
                    }
                }
            }
        }
    })
}

async fn count(conn: &mut ConnectionManager, keys: &Keys, field: &str, by: i64) {
    let r: redis::RedisResult<i64> = conn.hincr(keys.yolo_stats(), field, by).await;
    if let Err(e) = r {
        tracing::debug!(field, error = %e, "cannot update YOLO stats");
    }
}

async fn handle(ctx: Ctx, job: YoloJob, meta: JobMeta) -> Result<(), JobError> {
    let span = tracing::info_span!("yolo", channel = job.channel, job = %meta.job_id);
    tracing::Instrument::instrument(handle_inner(ctx, job, meta), span).await
}

async fn handle_inner(ctx: Ctx, job: YoloJob, meta: JobMeta) -> Result<(), JobError> {
    let mut conn = ctx.conn.clone();
    let age = now_ms() - job.frame_ts_ms;
    if age > ctx.max_age_ms {
        tracing::debug!(age_ms = age, "stale frame dropped");
        count(&mut conn, &ctx.keys, "dropped_stale", 1).await;
        return Ok(());
    }
    let (reply, outcome) = oneshot::channel();
    let (channel, frame_ts_ms, motion_event) = (job.channel, job.frame_ts_ms, job.motion_event.clone());
    ctx.infer.send(Pending { job, reply }).await.map_err(|_| JobError::Transient("inference thread stopped".into()))?;
    let outcome = outcome.await.map_err(|_| JobError::Transient("inference thread stopped".into()))?;
    let (detections, frame, batch_size) = match outcome {
        Outcome::Detected { detections, frame, batch_size, paired } => {
            if paired {
                count(&mut conn, &ctx.keys, "paired", 1).await;
            }
            (detections, frame, batch_size)
        }
        Outcome::Stale => {
            count(&mut conn, &ctx.keys, "dropped_stale", 1).await;
            return Ok(());
        }
        Outcome::BadFrame(reason) => {
            tracing::error!(reason = %reason, "bad frame; job failed permanently");
            count(&mut conn, &ctx.keys, "failed", 1).await;
            return Err(JobError::Permanent(format!("channel {channel}: bad frame: {reason}")));
        }
        Outcome::Failed(reason) => {
            tracing::error!(reason = %reason, "inference failed; job will be retried");
            return Err(JobError::Transient(format!("channel {channel}: {reason}")));
        }
    };
    let (frame_width, frame_height) = (frame.cols() as u32, frame.rows() as u32);
    let mut detections = detections;
    let seen = ObjectsSeen {
        channel,
        motion_event: motion_event.clone(),
        frame_ts_ms,
        boxes: detections.iter().map(|d| norm_box(d.bbox, frame_width, frame_height)).collect(),
    };
    if let Err(e) = cctv_common::seen::store(&mut conn, &ctx.keys, &seen).await {
        // Worker-motion then samples this channel at the full rate: nothing is lost.
        tracing::debug!(error = %e, "cannot store what YOLO saw");
    }
    if let Some(zones) = ctx.zones.get(&channel).filter(|z| !z.is_empty()) {
        for d in &mut detections {
            d.zones = cctv_common::zones::touched(zones, &[norm_box(d.bbox, frame_width, frame_height)]);
        }
    }
    let snapshot = if detections.is_empty() {
        None
    } else {
        let store = ctx.snapshots.clone();
        let dets = detections.clone();
        match tokio::task::spawn_blocking(move || store.save(channel, frame_ts_ms, &frame, &dets)).await {
            Ok(Ok(path)) => Some(path.display().to_string()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot write snapshot");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "snapshot task failed");
                None
            }
        }
    };
    let now = now_ms();
    let event = ObjectEvent {
        channel,
        frame_ts_ms,
        motion_event,
        detections,
        frame_width,
        frame_height,
        latency_ms: now - frame_ts_ms,
        batch_size,
        snapshot,
        job: meta.job_id.clone(),
        worker: ctx.worker.clone(),
        ts_ms: now,
    };
    let json = serde_json::to_string(&event).map_err(|e| JobError::Permanent(format!("encoding result: {e}")))?;
    let r =
        cctv_common::streams::publish_json(&mut conn, &ctx.keys, cctv_common::streams::Stream::Objects, &json).await;
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot publish object event to redis (kept in the objects log)");
    }
    ctx.log.append(&json);
    count(&mut conn, &ctx.keys, "processed", 1).await;
    if !event.detections.is_empty() {
        count(&mut conn, &ctx.keys, "positive", 1).await;
        let labels: Vec<&str> = event.detections.iter().map(|d| d.label.as_str()).collect();
        tracing::info!(labels = ?labels, latency_ms = event.latency_ms, batch = batch_size, "objects found");
    }
    Ok(())
}

/// A box in frame pixels as fractions of the frame.
fn norm_box([x1, y1, x2, y2]: [f32; 4], width: u32, height: u32) -> NormBox {
    let (w, h) = (width.max(1) as f32, height.max(1) as f32);
    NormBox { x: x1 / w, y: y1 / h, w: (x2 - x1) / w, h: (y2 - y1) / h }
}

/// `worker-yolo detect`: runs the model on image files and prints the detections.
pub fn detect_files(cfg: &YoloConfig, images: &[std::path::PathBuf], json: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    anyhow::ensure!(!images.is_empty(), "name at least one image file");
    let mut model = YoloModel::load(cfg)?;
    for path in images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let frame = model::decode_image(&bytes).with_context(|| format!("decoding {}", path.display()))?;
        let detections = model.detect(&[&frame])?.remove(0);
        if json {
            println!("{}", serde_json::json!({ "image": path, "detections": detections }));
        } else {
            println!("{}: {} object(s)", path.display(), detections.len());
            for d in &detections {
                let [x1, y1, x2, y2] = d.bbox.map(|v| v.round() as i64);
                println!("  {:<12} {:.3} [{x1}, {y1}, {x2}, {y2}]", d.label, d.score);
            }
        }
    }
    Ok(())
}

//! worker-record: claims record jobs and writes stream-copy backups from nginx-rtmp's HLS
//! buffer, with pre-roll (the buffer already holds the seconds before the trigger) and
//! post-roll (the scheduler sets the recording's end at last activity + post-roll).
//!
//! Stateless: everything a recording needs is in its job and in `<ns>:record:rec:<id>` (its end,
//! the parts already finished), so a retry on any machine continues where a killed attempt
//! stopped, and the video comes over HTTP from wherever nginx-rtmp runs.

pub mod files;
pub mod hls;
pub mod job_config;
pub mod mp4;
pub mod recorder;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use cctv_common::catlog::CategoryLog;
use cctv_common::clock::SharedClock;
use cctv_common::config::{Config, RecordConfig};
use cctv_common::events::{now_ms, BackupEvent, BackupEventKind};
use cctv_common::heartbeat;
use cctv_common::jobs::{JobError, RecordJob};
use cctv_common::keys::Keys;
use cctv_common::lease::Lease;
use cctv_common::queue::{self, JobMeta, Queue};
use cctv_common::recording::{RecordingStore, Rules};
use cctv_common::shutdown::CancellationToken;
use cctv_common::status::BackupDirStatus;
use cctv_common::system::{SystemEventKind, SystemLog};
use redis::aio::ConnectionManager;

use hls::HlsClient;
use recorder::Recorder;

/// A recording's lease: one writer at a time, free again this long after a writer died.
const LEASE_TTL_MS: u64 = 10_000;
/// Playlist poll period.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(500);

pub use cctv_common::recording::PartDone;

#[derive(Clone)]
pub(crate) struct Ctx {
    conn: ConnectionManager,
    keys: Keys,
    worker: String,
    record: RecordConfig,
    /// The relays pass camera audio on (`relay.audio` is not `drop`): backups look for it.
    audio: bool,
    tz: jiff::tz::TimeZone,
    hls: HlsClient,
    log: Arc<CategoryLog>,
    held: heartbeat::Held,
    shutdown: CancellationToken,
    storage: Arc<storage::Shared>,
    store: RecordingStore,
    rules: Rules,
    clock: SharedClock,
    /// The cluster config record jobs are checked against (read again for a new channel).
    config: Arc<job_config::JobConfig>,
}

/// Runs a record worker until `shutdown` is cancelled. An unusable backup directory is reported
/// (backup log, `<ns>:status:backup`) but is not fatal: jobs wait for it while the HLS buffer
/// still holds their video.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_config_file(config, None, shutdown).await
}

/// [`run`] with the file `config` was read from: a job for a channel added to it since start
/// is recorded, not refused ([`job_config::JobConfig`]).
pub async fn run_with_config_file(
    config: Config,
    path: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let keys = Keys::new(&config.cluster.namespace);
    let conn = queue::connect(&config.cluster, &config.queue).await?;
    let worker = cctv_common::worker_name("record");
    let system = SystemLog::open(conn.clone(), keys.clone(), &config.logs, "record", &worker)?;
    system.emit(SystemEventKind::Start, "record worker started", None).await;
    let tz =
        cctv_common::timefmt::zone(&config.record.timezone).map_err(|e| anyhow::anyhow!("record.timezone: {e}"))?;
    let ctx = Ctx {
        conn: conn.clone(),
        keys: keys.clone(),
        worker: worker.clone(),
        record: config.record.clone(),
        audio: config.relay.audio != cctv_common::config::RelayAudio::Drop,
        tz,
        hls: HlsClient::default(),
        log: Arc::new(CategoryLog::open(&config.logs, "backup")?),
        held: heartbeat::Held::default(),
        shutdown: shutdown.clone(),
        storage: Arc::default(),
        store: RecordingStore::new(conn.clone(), keys.clone()),
        rules: Rules::from_config(&config),
        clock: cctv_common::clock::system(),
        config: Arc::new(job_config::JobConfig::new(config.clone(), path)),
    };
    check_backup_dir(&ctx).await;
    tracing::info!(worker = %worker, dir = %config.record.backup_dir.display(), concurrency = config.record.concurrency,
        "record worker started");
    let monitor = storage::Monitor {
        conn: conn.clone(),
        keys: keys.clone(),
        worker: worker.clone(),
        dir: config.record.backup_dir.clone(),
        cfg: config.storage.clone(),
        retention: storage::Retention::from_config(&config),
        protected: Default::default(),
        shared: ctx.storage.clone(),
        log: ctx.log.clone(),
        unreachable: Default::default(),
    };
    let monitor = tokio::spawn(monitor.run(shutdown.clone()));
    let hb = tokio::spawn(heartbeat::run(conn.clone(), keys.clone(), worker.clone(), "record", ctx.held.clone()));
    let q: Queue<RecordJob> = Queue::new(conn, &keys, &config.queue).with_poll_interval(Duration::from_millis(200));
    let handler_ctx = ctx.clone();
    let result = q
        .run_worker(worker.clone(), config.record.concurrency, shutdown, move |job, meta| {
            record(handler_ctx.clone(), job, meta)
        })
        .await;
    hb.abort();
    monitor.abort();
    heartbeat::remove(&mut ctx.conn.clone(), &keys, &worker).await;
    let _ = BackupDirStatus::withdraw(&mut ctx.conn.clone(), &keys, &worker).await;
    let message = match &result {
        Ok(()) => "record worker stopped".to_string(),
        Err(e) => format!("record worker stopped with an error: {e}"),
    };
    system.emit(if result.is_ok() { SystemEventKind::Stop } else { SystemEventKind::Error }, message, None).await;
    tracing::info!(worker = %worker, "record worker stopped");
    Ok(result?)
}

/// Checks the backup directory and publishes its state; returns the error message if unusable.
pub(crate) async fn check_backup_dir(ctx: &Ctx) -> Option<String> {
    let dir = ctx.record.backup_dir.clone();
    let worker = ctx.worker.clone();
    let result = tokio::task::spawn_blocking(move || files::check_dir(&dir, &worker))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let status = BackupDirStatus {
        worker: ctx.worker.clone(),
        host: cctv_common::host_name(),
        backup_dir: ctx.record.backup_dir.display().to_string(),
        ok: result.is_ok(),
        error: result.as_ref().err().cloned(),
        updated_ms: now_ms(),
    };
    if let Err(e) = status.publish(&mut ctx.conn.clone(), &ctx.keys).await {
        tracing::warn!(error = %e, "cannot publish backup status");
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, "backup directory unusable");
    }
    result.err()
}

pub(crate) async fn publish(ctx: &Ctx, event: &BackupEvent) {
    publish_with(&ctx.conn, &ctx.keys, &ctx.log, event).await
}

/// Puts a backup-category entry on `<ns>:events:backup` and in the backup log.
pub(crate) async fn publish_with(conn: &ConnectionManager, keys: &Keys, log: &CategoryLog, event: &BackupEvent) {
    let json = match serde_json::to_string(event) {
        Ok(j) => j,
        Err(e) => return tracing::error!(error = %e, "cannot encode backup event"),
    };
    let r =
        cctv_common::streams::publish_json(&mut conn.clone(), keys, cctv_common::streams::Stream::Backup, &json).await;
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot publish backup event (kept in the backup log)");
    }
    log.append(&json);
}

pub(crate) fn error_event(ctx: &Ctx, job: &RecordJob, meta: &JobMeta, part: u32, error: String) -> BackupEvent {
    BackupEvent {
        kind: BackupEventKind::Error,
        channel: job.channel,
        recording: job.recording.clone(),
        file: None,
        part,
        start_ms: job.start_ms,
        end_ms: 0,
        duration_secs: 0.0,
        size_bytes: 0,
        trigger: Some(job.trigger.clone()),
        events: vec![],
        pre_roll_ms: None,
        writing_since_ms: None,
        validation: None,
        video_codec: None,
        error: Some(error),
        worker: ctx.worker.clone(),
        job: meta.job_id.clone(),
        ts_ms: now_ms(),
    }
}

/// The recording's lease: one worker writes a recording at a time.
pub(crate) fn recording_lease(ctx: &Ctx, recording: &str) -> Lease {
    Lease::new(ctx.keys.record_lease(recording), &ctx.worker, LEASE_TTL_MS)
}

async fn lease(ctx: &Ctx, recording: &str) -> Result<bool, JobError> {
    recording_lease(ctx, recording)
        .acquire(&mut ctx.conn.clone())
        .await
        .map_err(|e| JobError::Transient(format!("recording {recording}: lease: {e}")))
}

async fn release(ctx: &Ctx, recording: &str) {
    let _ = recording_lease(ctx, recording).release(&mut ctx.conn.clone()).await;
}

async fn record(ctx: Ctx, job: RecordJob, meta: JobMeta) -> Result<(), JobError> {
    let job =
        ctx.config.check(job).map_err(|e| JobError::Permanent(format!("record job {} refused: {e}", meta.job_id)))?;
    let span = tracing::info_span!("recording", channel = job.channel, recording = %job.recording, job = %meta.job_id);
    let rid = job.recording.clone();
    let inner = async {
        if !lease(&ctx, &rid).await? {
            return Err(JobError::Transient(format!("recording {rid} is being written by another worker")));
        }
        ctx.held.lock().unwrap_or_else(|e| e.into_inner()).push(format!("ch{}:{rid}", job.channel));
        let result = Recorder::new(&ctx, &job, &meta).run().await.map_err(|e| e.into_job_error(job.channel, &rid));
        ctx.held.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| !r.ends_with(&rid));
        release(&ctx, &rid).await;
        result
    };
    tracing::Instrument::instrument(inner, span).await
}

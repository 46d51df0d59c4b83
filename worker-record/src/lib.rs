//! worker-record: claims record jobs and writes stream-copy backups from nginx-rtmp's HLS
//! buffer, with pre-roll (the buffer already holds the seconds before the trigger) and
//! post-roll (the scheduler sets the recording's end at last activity + post-roll).
//!
//! Stateless: everything a recording needs is in its job and in `<ns>:record:rec:<id>` (its end,
//! the parts already finished), so a retry on any machine continues where a killed attempt
//! stopped, and the video comes over HTTP from wherever nginx-rtmp runs.

pub mod files;
pub mod hls;
pub mod mp4;
pub mod storage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cctv_common::catlog::CategoryLog;
use cctv_common::config::{Config, RecordConfig};
use cctv_common::events::{now_ms, BackupEvent, BackupEventKind};
use cctv_common::heartbeat;
use cctv_common::jobs::{JobError, RecordJob};
use cctv_common::keys::Keys;
use cctv_common::lease::Lease;
use cctv_common::queue::{self, JobMeta, Queue};
use cctv_common::recording::{Recording, RecordingState, RecordingStore, Rules};
use cctv_common::shutdown::CancellationToken;
use cctv_common::status::BackupDirStatus;
use cctv_common::system::{SystemEventKind, SystemLog};
use redis::aio::ConnectionManager;

use files::Spool;
use hls::{Fragment, HlsClient, HlsError};

/// A recording's lease: one writer at a time, free again this long after a writer died.
const LEASE_TTL_MS: u64 = 10_000;
/// Playlist poll period.
const POLL_EVERY: Duration = Duration::from_millis(500);

pub use cctv_common::recording::PartDone;

#[derive(Clone)]
struct Ctx {
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
}

/// Runs a record worker until `shutdown` is cancelled. An unusable backup directory is reported
/// (backup log, `<ns>:status:backup`) but is not fatal: jobs wait for it while the HLS buffer
/// still holds their video.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
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
async fn check_backup_dir(ctx: &Ctx) -> Option<String> {
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

async fn publish(ctx: &Ctx, event: &BackupEvent) {
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

fn error_event(ctx: &Ctx, job: &RecordJob, meta: &JobMeta, part: u32, error: String) -> BackupEvent {
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
fn recording_lease(ctx: &Ctx, recording: &str) -> Lease {
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
    let span = tracing::info_span!("recording", channel = job.channel, recording = %job.recording, job = %meta.job_id);
    let rid = job.recording.clone();
    let inner = async {
        if !lease(&ctx, &rid).await? {
            return Err(JobError::Transient(format!("recording {rid} is being written by another worker")));
        }
        ctx.held.lock().unwrap_or_else(|e| e.into_inner()).push(format!("ch{}:{rid}", job.channel));
        let result = Recorder::new(&ctx, &job, &meta).run().await;
        ctx.held.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| !r.ends_with(&rid));
        release(&ctx, &rid).await;
        result
    };
    tracing::Instrument::instrument(inner, span).await
}

/// Is a recording that ends at `end_ms` fully taken: the video taken reaches its end, or the
/// first fragment not taken starts at or after it (it belongs to whatever comes next)?
fn video_complete(end_ms: i64, taken_end_ms: i64, next_fragment_ms: Option<i64>) -> bool {
    taken_end_ms >= end_ms || next_fragment_ms.is_some_and(|n| n >= end_ms)
}

/// Fragment boundaries closer than this are continuous video (clock jitter between nginx's
/// fragment names and the stream's durations); a larger hole is video that never arrived.
const CONTINUITY_SLACK_MS: i64 = 1000;

/// The span at the end of a complete recording that no video covers, `(from, to)` ms, when the
/// next buffered fragment starts well after the video taken (the stream was down).
fn missing_tail(end_ms: i64, taken_end_ms: i64, next_fragment_ms: Option<i64>) -> Option<(i64, i64)> {
    let next = next_fragment_ms?;
    (taken_end_ms < end_ms && next >= end_ms && next - taken_end_ms > CONTINUITY_SLACK_MS)
        .then_some((taken_end_ms, end_ms.min(next)))
}

/// The span no video covers between the video taken (ending at `taken_end_ms`, 0: none yet)
/// and the next fragment, when it is more than [`CONTINUITY_SLACK_MS`]: the stream was down in
/// the middle of the recording. Reported, and the recording goes on.
fn hole_before(taken_end_ms: i64, next_start_ms: i64) -> Option<(i64, i64)> {
    (taken_end_ms > 0 && next_start_ms - taken_end_ms > CONTINUITY_SLACK_MS).then_some((taken_end_ms, next_start_ms))
}

/// One attempt at one recording.
struct Recorder<'a> {
    ctx: &'a Ctx,
    job: &'a RecordJob,
    meta: &'a JobMeta,
    dir: PathBuf,
    parts: Vec<PartDone>,
    spool: Option<Spool>,
    /// Start of the last fragment taken (spooled or in a finished part).
    last_taken_ms: Option<i64>,
    /// End of the video taken so far.
    taken_end_ms: i64,
    /// Start of the first buffered fragment not taken, as of the last complete pass over the
    /// playlist. Fragment names are nginx's clock and durations the stream's, so one fragment's
    /// end and the next one's start differ by a few ms: the recording is complete once the next
    /// fragment starts at or after its end, not only once the taken video reaches it.
    next_fragment_ms: Option<i64>,
    /// The recording's first instant, and the previous recording's end: fragments that start
    /// before `floor_ms` are in that recording's file.
    start_ms: i64,
    floor_ms: i64,
    /// The recording's end as last read (`None` while activity goes on).
    end_ms: Option<i64>,
    events: Vec<String>,
    last_write_error: Option<Instant>,
}

impl<'a> Recorder<'a> {
    fn new(ctx: &'a Ctx, job: &'a RecordJob, meta: &'a JobMeta) -> Self {
        Self {
            ctx,
            job,
            meta,
            dir: ctx.record.backup_dir.clone(),
            parts: Vec::new(),
            spool: None,
            last_taken_ms: None,
            taken_end_ms: 0,
            next_fragment_ms: None,
            start_ms: job.start_ms,
            floor_ms: 0,
            end_ms: None,
            events: Vec::new(),
            last_write_error: None,
        }
    }

    fn transient(&self, what: impl std::fmt::Display) -> JobError {
        JobError::Transient(format!("channel {} recording {}: {what}", self.job.channel, self.job.recording))
    }

    async fn fail(&self, message: String) -> JobError {
        let part = self.parts.len() as u32 + 1;
        publish(self.ctx, &error_event(self.ctx, self.job, self.meta, part, message.clone())).await;
        self.transient(message)
    }

    async fn read(&self) -> Result<Recording, JobError> {
        match self.ctx.store.get(&self.job.recording).await {
            Ok(Some(v)) => Ok(v.rec),
            Ok(None) => Err(JobError::Permanent(format!("recording {} is unknown (expired?)", self.job.recording))),
            Err(e) => Err(self.transient(e)),
        }
    }

    /// Is everything that starts before the end taken?
    fn complete(&self) -> bool {
        self.end_ms.is_some_and(|end| video_complete(end, self.taken_end_ms, self.next_fragment_ms))
    }

    async fn run(mut self) -> Result<(), JobError> {
        if let Some(e) = check_backup_dir(self.ctx).await {
            return Err(self.fail(e).await);
        }
        let rec = self.read().await?;
        self.parts = rec.parts.clone();
        self.start_ms = rec.start_ms;
        self.floor_ms = rec.floor_ms;
        self.end_ms = rec.end_ms;
        self.events = rec.events.clone();
        if let Some(last) = self.parts.last() {
            self.last_taken_ms = Some(last.last_fragment_ms);
            self.taken_end_ms = last.end_ms;
            tracing::info!(parts_done = self.parts.len(), "resuming after the finished parts");
        }
        if rec.state == RecordingState::Closed && self.complete() {
            tracing::info!("recording was finished before");
            return Ok(());
        }
        let (dir, rid) = (self.dir.clone(), self.job.recording.clone());
        let removed = tokio::task::spawn_blocking(move || files::remove_leftovers(&dir, &rid)).await.unwrap_or(0);
        if removed > 0 {
            tracing::info!(removed, "removed temporary files of an interrupted attempt");
        }

        let stall = Duration::from_secs_f64(self.ctx.record.stall_timeout_secs);
        let mut last_progress = Instant::now();
        let mut last_lease = Instant::now();
        let mut closed = rec.state == RecordingState::Closed;
        loop {
            if self.ctx.shutdown.is_cancelled() {
                // Keep what is spooled as a finished part; another worker continues after it.
                self.finish_part().await?;
                return Err(self.transient("worker shutting down; the rest is handed to another worker"));
            }
            if last_lease.elapsed() >= Duration::from_secs(2) {
                if !lease(self.ctx, &self.job.recording).await? {
                    return Err(self.transient("lease lost (presumed dead); another worker took over"));
                }
                last_lease = Instant::now();
            }
            match self.take_new_fragments().await {
                Ok(n) if n > 0 => last_progress = Instant::now(),
                Ok(_) => {}
                Err(HlsError::NotFound { url }) => tracing::debug!(url = %url, "playlist not found (yet)"),
                Err(e) => tracing::warn!(error = %e, "HLS buffer unavailable; will retry"),
            }
            if !closed {
                let rec = self.read().await?;
                self.end_ms = rec.end_ms;
                self.events = rec.events.clone();
                closed = rec.state == RecordingState::Closed;
            }
            if self.complete() {
                // Read before closing: a close ends the recording where its video ended.
                let hole = self.end_ms.and_then(|end| missing_tail(end, self.taken_end_ms, self.next_fragment_ms));
                if closed || self.close(None).await? {
                    self.finish_part().await?;
                    tracing::info!(parts = self.parts.len(), "recording complete");
                    if let Some((from, to)) = hole {
                        let msg = format!(
                            "gap in the stream: no video for the last {:.1} s of the recording (camera, relay or RTMP \
                             server down?); the file ends where the video stopped",
                            (to - from) as f64 / 1000.0
                        );
                        tracing::warn!(from_ms = from, to_ms = to, "{msg}");
                        publish(self.ctx, &error_event(self.ctx, self.job, self.meta, self.parts.len() as u32, msg))
                            .await;
                    }
                    return Ok(());
                }
                // Waiting out the join window: activity may still extend it.
                last_progress = Instant::now();
            }
            if last_progress.elapsed() > stall {
                let msg = format!(
                    "gap in the stream: no new video for {} s (camera, relay or RTMP server down?); recording \
                     closed with what it had, later activity starts a new one",
                    stall.as_secs()
                );
                if !closed {
                    self.close(Some(msg.clone())).await?;
                }
                self.finish_part().await?;
                publish(self.ctx, &error_event(self.ctx, self.job, self.meta, self.parts.len() as u32 + 1, msg)).await;
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = self.ctx.shutdown.cancelled() => {}
            }
        }
    }

    /// Closes the recording in the store: with `note` (stalled) whatever its state, at the video
    /// taken so far; else only once everything before its end is taken and its join window is
    /// over. Returns whether it is closed; a recording that activity extended meanwhile stays open.
    async fn close(&mut self, note: Option<String>) -> Result<bool, JobError> {
        let (now, rules, taken_end, next) = (now_ms(), self.ctx.rules, self.taken_end_ms, self.next_fragment_ms);
        let mut closed = false;
        let stored = self
            .ctx
            .store
            .update(&self.job.recording, |r| {
                if r.state == RecordingState::Closed {
                    closed = true;
                    return false;
                }
                let due = r.closable(now, &rules) && r.end_ms.is_some_and(|e| video_complete(e, taken_end, next));
                if note.is_none() && !due {
                    return false;
                }
                r.close(now, taken_end, note.clone());
                closed = true;
                true
            })
            .await
            .map_err(|e| self.transient(e))?;
        if let Some(r) = stored {
            self.end_ms = r.end_ms;
            self.events = r.events;
        }
        Ok(closed)
    }

    /// Fetches fragments not yet taken that belong to the recording; returns how many.
    async fn take_new_fragments(&mut self) -> Result<usize, HlsError> {
        let hls = self.ctx.hls.clone();
        let url = self.job.playlist_url.clone();
        let list = tokio::task::spawn_blocking(move || hls.playlist(&url))
            .await
            .map_err(|e| HlsError::Http { url: self.job.playlist_url.clone(), message: e.to_string() })??;
        let (start, floor, end) = (self.start_ms, self.floor_ms, self.end_ms);
        let wanted: Vec<Fragment> = list
            .iter()
            .filter(|f| match self.last_taken_ms {
                Some(last) => f.start_ms > last,
                None => f.end_ms() > start && f.start_ms >= floor,
            })
            // A fragment that starts at or after the end belongs to the next recording, if any.
            .filter(|f| end.is_none_or(|e| f.start_ms < e))
            .cloned()
            .collect();
        let mut taken = 0;
        for f in wanted {
            let hls = self.ctx.hls.clone();
            let frag = f.clone();
            let data = match tokio::task::spawn_blocking(move || hls.fragment(&frag)).await {
                Ok(Ok(d)) => d,
                Ok(Err(HlsError::NotFound { url })) => {
                    tracing::warn!(url = %url, "fragment rotated out before it was read; gap in the backup");
                    self.last_taken_ms = Some(f.start_ms);
                    continue;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(HlsError::Http { url: f.url.clone(), message: e.to_string() }),
            };
            if let Some((from, to)) = hole_before(self.taken_end_ms, f.start_ms) {
                let msg = format!(
                    "gap in the stream: no video for {:.1} s inside the recording (camera, relay or RTMP server \
                     down?); the recording goes on",
                    (to - from) as f64 / 1000.0
                );
                tracing::warn!(from_ms = from, to_ms = to, "{msg}");
                publish(self.ctx, &error_event(self.ctx, self.job, self.meta, self.parts.len() as u32 + 1, msg)).await;
            }
            if self.spool.is_none() {
                let part = self.parts.len() as u32 + 1;
                if part == 1 && f.start_ms > self.start_ms + 500 {
                    tracing::warn!(
                        wanted_ms = self.start_ms,
                        first_ms = f.start_ms,
                        "the buffer no longer holds the whole pre-roll"
                    );
                }
                let (dir, rid) = (self.dir.clone(), self.job.recording.clone());
                let spool = tokio::task::spawn_blocking(move || Spool::create(&dir, &rid, part, f.start_ms))
                    .await
                    .map_err(|e| HlsError::Http { url: f.url.clone(), message: e.to_string() })?;
                match spool {
                    Ok(s) => self.spool = Some(s),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot create spool file");
                        return Ok(taken);
                    }
                }
            }
            // A write can block on a slow or full disk: off the async threads, which also
            // serve the lease and the other recordings.
            let mut spool = self.spool.take().expect("spool just created");
            let (start_ms, end_ms, len) = (f.start_ms, f.end_ms(), data.len());
            let (spool, appended) = tokio::task::spawn_blocking(move || {
                let r = spool.append(&data, start_ms, end_ms);
                (spool, r)
            })
            .await
            .map_err(|e| HlsError::Http { url: f.url.clone(), message: format!("spool writer: {e}") })?;
            let spool = self.spool.insert(spool);
            if let Err(e) = appended {
                // Typically ENOSPC: the spool was cut back to its last whole fragment; ask for
                // rotation now and take this fragment again next round (it is still buffered).
                self.ctx.storage.rotate_now.notify_one();
                if self.last_write_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    self.last_write_error = Some(Instant::now());
                    let msg = format!("{e}; retrying after rotation");
                    tracing::error!(error = %msg, "cannot write spool file");
                    publish(self.ctx, &error_event(self.ctx, self.job, self.meta, self.parts.len() as u32 + 1, msg))
                        .await;
                }
                return Ok(taken);
            }
            self.ctx.storage.written.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
            self.last_taken_ms = Some(f.start_ms);
            self.taken_end_ms = f.end_ms();
            taken += 1;
            if spool.duration_ms() as f64 >= self.ctx.record.max_file_seconds * 1000.0 {
                // Split here: the next fragment opens the next part, so there is no gap.
                self.finish_part().await.map_err(|e| HlsError::Http { url: f.url.clone(), message: e.to_string() })?;
            }
        }
        // Only once video was taken: a recording whose window holds no fragment at all is a gap,
        // reported as such by the stall timeout.
        if let Some(last) = self.last_taken_ms {
            self.next_fragment_ms = list.iter().map(|f| f.start_ms).filter(|s| *s > last).min();
        }
        Ok(taken)
    }

    /// Records the finished parts in the recording, so a retry never writes one twice. Redis
    /// may be away for a while: retried with backoff, then the job fails (transient) rather than
    /// going on with an unrecorded part.
    async fn save_parts(&mut self) -> Result<(), JobError> {
        let mut delay = Duration::from_millis(200);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let parts = self.parts.clone();
            match self
                .ctx
                .store
                .update(&self.job.recording, |r| {
                    r.parts = parts.clone();
                    true
                })
                .await
            {
                Ok(Some(r)) => {
                    self.events = r.events;
                    return Ok(());
                }
                Ok(None) => return Err(JobError::Permanent(format!("recording {} vanished", self.job.recording))),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot record a finished part; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(self.transient(format!("cannot record finished part {}: {e}", self.parts.len()))),
            }
        }
    }

    /// Remuxes, validates and publishes the spooled part (if any), and records it as done.
    async fn finish_part(&mut self) -> Result<(), JobError> {
        let Some(spool) = self.spool.take() else { return Ok(()) };
        let part = self.parts.len() as u32 + 1;
        let (first_ms, last_ms, end_ms, writing_since) =
            (spool.first_ms, spool.last_start_ms, spool.end_ms, spool.created_ms);
        let stamp = cctv_common::timefmt::file_stamp(first_ms, &self.ctx.tz);
        let (dir, rid, ext, container) = (
            self.dir.clone(),
            self.job.recording.clone(),
            self.ctx.record.container.extension(),
            self.ctx.record.container,
        );
        let (channel, audio) = (self.job.channel, self.ctx.audio);
        let result = tokio::task::spawn_blocking(move || {
            let path = files::final_path(&dir, channel, &stamp, ext, &rid);
            files::finish(spool, &path, container, &rid, audio).map(|probe| (path, probe))
        })
        .await
        .map_err(|e| self.transient(e))?;
        let (path, probe) = match result {
            Ok(r) => r,
            Err(e) => {
                // The fragments are still in the buffer: the retry takes this part again.
                self.last_taken_ms = self.parts.last().map(|p| p.last_fragment_ms);
                return Err(self.fail(e.to_string()).await);
            }
        };
        let done = PartDone { part, file: path.display().to_string(), first_ms, last_fragment_ms: last_ms, end_ms };
        self.parts.push(done);
        self.save_parts().await?;
        let size = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
        self.ctx.storage.written.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        let event = BackupEvent {
            kind: BackupEventKind::File,
            channel: self.job.channel,
            recording: self.job.recording.clone(),
            file: Some(path.display().to_string()),
            part,
            start_ms: first_ms,
            end_ms,
            duration_secs: probe.duration_secs,
            size_bytes: size,
            trigger: Some(self.job.trigger.clone()),
            events: self.events.clone(),
            pre_roll_ms: (part == 1).then_some(self.job.trigger.ts_ms - first_ms),
            writing_since_ms: Some(writing_since),
            validation: Some(probe.summary()),
            video_codec: Some(probe.codec.clone()),
            error: None,
            worker: self.ctx.worker.clone(),
            job: self.meta.job_id.clone(),
            ts_ms: now_ms(),
        };
        tracing::info!(file = %path.display(), part, duration_s = probe.duration_secs, size, "backup written");
        publish(self.ctx, &event).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{hole_before, missing_tail, video_complete};

    #[test]
    fn a_hole_before_the_end_is_reported_clock_jitter_is_not() {
        // The stream stopped 5 s before the recording's end and came back after it.
        assert_eq!(missing_tail(420_000, 415_000, Some(430_000)), Some((415_000, 420_000)));
        // Jitter of a few ms between fragments: continuous video.
        assert_eq!(missing_tail(411_127, 411_125, Some(411_130)), None);
        // Video reaches the end, or more is still to come before it.
        assert_eq!(missing_tail(420_000, 421_000, Some(421_000)), None);
        assert_eq!(missing_tail(420_000, 415_000, Some(418_000)), None);
    }

    #[test]
    fn a_hole_inside_a_recording_is_found_and_jitter_is_not() {
        assert_eq!(hole_before(0, 50_000), None, "nothing taken yet: the pre-roll check speaks for it");
        assert_eq!(hole_before(10_000, 10_003), None, "jitter between fragment names and durations");
        assert_eq!(hole_before(10_000, 10_900), None);
        assert_eq!(hole_before(10_000, 13_500), Some((10_000, 13_500)), "the stream was down 3.5 s");
        assert_eq!(hole_before(10_000, 9_000), None, "overlap is no hole");
    }

    #[test]
    fn a_recording_is_complete_once_the_next_fragment_starts_at_its_end_though_the_taken_video_falls_short() {
        // The taken fragment's stream duration ends 2 ms before the recording's end; nginx named
        // the next fragment 3 ms after it: nothing that starts before the end is missing.
        assert!(video_complete(411_127, 411_125, Some(411_130)));
        assert!(video_complete(411_127, 411_125, Some(411_127)));
        // A fragment that starts before the end is still to be taken.
        assert!(!video_complete(411_127, 411_125, Some(411_126)));
        // Nothing buffered after the taken video yet: wait for it.
        assert!(!video_complete(411_127, 411_125, None));
        assert!(video_complete(411_127, 411_200, None));
    }
}

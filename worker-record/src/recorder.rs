//! One attempt at one recording: fragments from the HLS buffer into spooled parts, each part
//! remuxed, checked and renamed, until everything that starts before the recording's end is
//! taken and its join window is over. Why an attempt stops is a [`RecordError`]; whether the
//! job is retried is decided in one place ([`RecordError::into_job_error`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cctv_common::events::{BackupEvent, BackupEventKind};
use cctv_common::jobs::{JobError, RecordJob};
use cctv_common::queue::JobMeta;
use cctv_common::recording::{PartDone, Recording, RecordingState, StoreError};

use crate::files::{self, Spool};
use crate::hls::{Fragment, HlsError};
use crate::{check_backup_dir, error_event, publish, recording_lease, Ctx, POLL_EVERY};

/// Why one attempt at a recording stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The HLS buffer (or its server) could not be read: retried within the attempt until the
    /// stall timeout, then by the queue.
    #[error(transparent)]
    Hls(#[from] HlsError),
    /// Not in the store (expired, or never there): there is nothing to record.
    #[error("recording is unknown (expired?)")]
    Unknown,
    /// Deleted from the store while it was written.
    #[error("recording vanished while it was written")]
    Vanished,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lease: {0}")]
    Lease(#[from] redis::RedisError),
    #[error("lease lost (presumed dead); another worker took over")]
    LeaseLost,
    #[error("worker shutting down; the rest is handed to another worker")]
    ShuttingDown,
    /// A part could not be written or checked (reported as a backup error); the retry takes it
    /// again from the buffer.
    #[error("{0}")]
    Part(String),
    #[error("cannot record finished part {part}: {error}")]
    SaveParts { part: usize, error: StoreError },
    /// A blocking task (disk I/O) panicked or was cancelled.
    #[error("blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl RecordError {
    /// Retrying cannot help: the recording is gone.
    pub fn is_permanent(&self) -> bool {
        matches!(self, RecordError::Unknown | RecordError::Vanished)
    }

    /// The queue's view: permanent (dead at once) or transient (retried), naming the channel
    /// and recording.
    pub fn into_job_error(self, channel: u32, recording: &str) -> JobError {
        let message = format!("channel {channel} recording {recording}: {self}");
        if self.is_permanent() {
            JobError::Permanent(message)
        } else {
            JobError::Transient(message)
        }
    }
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
pub(crate) struct Recorder<'a> {
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
    pub(crate) fn new(ctx: &'a Ctx, job: &'a RecordJob, meta: &'a JobMeta) -> Self {
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

    /// Reports `message` as a backup error of the next part; the attempt then fails with it.
    async fn fail(&self, message: String) -> RecordError {
        let part = self.parts.len() as u32 + 1;
        publish(self.ctx, &error_event(self.ctx, self.job, self.meta, part, message.clone())).await;
        RecordError::Part(message)
    }

    async fn read(&self) -> Result<Recording, RecordError> {
        match self.ctx.store.get(&self.job.recording).await? {
            Some(v) => Ok(v.rec),
            None => Err(RecordError::Unknown),
        }
    }

    /// Is everything that starts before the end taken?
    fn complete(&self) -> bool {
        self.end_ms.is_some_and(|end| video_complete(end, self.taken_end_ms, self.next_fragment_ms))
    }

    pub(crate) async fn run(mut self) -> Result<(), RecordError> {
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
        let removed = tokio::task::spawn_blocking(move || files::remove_leftovers(&dir, &rid)).await?;
        if removed > 0 {
            tracing::info!(removed, "removed temporary files of an interrupted attempt");
        }

        let stall = Duration::from_secs_f64(self.ctx.record.stall_timeout_secs);
        let clock = self.ctx.clock.clone();
        let mut last_progress = clock.now();
        let mut last_lease = clock.now();
        let mut closed = rec.state == RecordingState::Closed;
        loop {
            if self.ctx.shutdown.is_cancelled() {
                // Keep what is spooled as a finished part; another worker continues after it.
                self.finish_part().await?;
                return Err(RecordError::ShuttingDown);
            }
            if clock.now().saturating_duration_since(last_lease) >= Duration::from_secs(2) {
                if !recording_lease(self.ctx, &self.job.recording).acquire(&mut self.ctx.conn.clone()).await? {
                    return Err(RecordError::LeaseLost);
                }
                last_lease = clock.now();
            }
            match self.take_new_fragments().await {
                Ok(n) if n > 0 => last_progress = clock.now(),
                Ok(_) => {}
                Err(RecordError::Hls(HlsError::NotFound { url })) => {
                    tracing::debug!(url = %url, "playlist not found (yet)")
                }
                // The buffer or its server blinked: retried here until the stall timeout.
                Err(RecordError::Hls(e)) => tracing::warn!(error = %e, "HLS buffer unavailable; will retry"),
                // Anything else ends the attempt (permanent or retried by the queue: see RecordError).
                Err(e) => return Err(e),
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
                last_progress = clock.now();
            }
            if clock.now().saturating_duration_since(last_progress) > stall {
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
    async fn close(&mut self, note: Option<String>) -> Result<bool, RecordError> {
        let (now, rules, taken_end, next) =
            (self.ctx.clock.now_ms(), self.ctx.rules, self.taken_end_ms, self.next_fragment_ms);
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
            .await?;
        if let Some(r) = stored {
            self.end_ms = r.end_ms;
            self.events = r.events;
        }
        Ok(closed)
    }

    /// Fetches fragments not yet taken that belong to the recording; returns how many.
    async fn take_new_fragments(&mut self) -> Result<usize, RecordError> {
        let hls = self.ctx.hls.clone();
        let url = self.job.playlist_url.clone();
        let list = tokio::task::spawn_blocking(move || hls.playlist(&url)).await??;
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
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(e.into()),
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
                let spool = tokio::task::spawn_blocking(move || Spool::create(&dir, &rid, part, f.start_ms)).await?;
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
            .await?;
            let spool = self.spool.insert(spool);
            if let Err(e) = appended {
                // Typically ENOSPC: the spool was cut back to its last whole fragment; ask for
                // rotation now and take this fragment again next round (it is still buffered).
                self.ctx.storage.rotate_now.notify_one();
                let now = self.ctx.clock.now();
                if self.last_write_error.is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(10)) {
                    self.last_write_error = Some(now);
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
                self.finish_part().await?;
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
    async fn save_parts(&mut self) -> Result<(), RecordError> {
        let mut delay = Duration::from_millis(200);
        let deadline = self.ctx.clock.now() + Duration::from_secs(60);
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
                Ok(None) => return Err(RecordError::Vanished),
                Err(e) if self.ctx.clock.now() < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot record a finished part; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(RecordError::SaveParts { part: self.parts.len(), error }),
            }
        }
    }

    /// Remuxes, validates and publishes the spooled part (if any), and records it as done.
    async fn finish_part(&mut self) -> Result<(), RecordError> {
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
        .await?;
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
            ts_ms: self.ctx.clock.now_ms(),
        };
        tracing::info!(file = %path.display(), part, duration_s = probe.duration_secs, size, "backup written");
        publish(self.ctx, &event).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{hole_before, missing_tail, video_complete, RecordError};
    use crate::hls::HlsError;

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

    #[test]
    fn only_a_recording_that_is_gone_is_permanent_and_the_buffer_is_never_blamed_for_it() {
        assert!(RecordError::Unknown.is_permanent());
        assert!(RecordError::Vanished.is_permanent());
        for transient in [
            RecordError::LeaseLost,
            RecordError::ShuttingDown,
            RecordError::Part("remux failed".into()),
            RecordError::Hls(HlsError::NotFound { url: "http://h/x.m3u8".into() }),
        ] {
            assert!(!transient.is_permanent(), "{transient}");
        }
        let job = RecordError::Vanished.into_job_error(3, "ch3-e1");
        assert!(
            matches!(&job, cctv_common::jobs::JobError::Permanent(m) if m.contains("ch3-e1") && m.contains("vanished")),
            "{job:?}"
        );
        let job = RecordError::LeaseLost.into_job_error(3, "ch3-e1");
        assert!(
            matches!(&job, cctv_common::jobs::JobError::Transient(m) if m.starts_with("channel 3 recording ch3-e1: lease lost")),
            "{job:?}"
        );
    }
}

//! One channel of a batch: a reader of its detect stream (the gate's packets decoded in
//! process, or an ffmpeg writing small grey raw frames), the detector, and the hysteresis, on
//! one dedicated thread (the gate's feeder on a second).
//!
//! Failures stay inside the channel: a missing or stalled stream is reported offline with the
//! reason and retried with exponential backoff; the other channels of the batch never notice.
//!
//! This module supervises; `reader` reads the stream into [`frames`] (and says why it
//! stopped), `analysis` turns frames into events.

mod analysis;
pub mod frames;
mod reader;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cctv_common::config::MotionConfig;
use cctv_common::events::{now_ms, ChannelState, MotionEventKind, NormBox};
use cctv_common::jobs::{MotionChannel, YoloFrames};
use cctv_common::seen::ObjectsSeen;
use tokio::sync::mpsc::UnboundedSender;

use frames::ReadError;
use reader::{read_stream, ReaderStop};

/// Frames analysed after which a failing channel's backoff resets.
const HEALTHY_FRAMES: u64 = 50;
/// A channel's picture for people (dashboard cards) is taken this often.
pub const PREVIEW_EVERY_MS: i64 = 10_000;

/// YOLO frames of one channel handed to the batch but not yet sent on: while Redis is away
/// (the batch waits on it) further frames are dropped here, before they are encoded (PNG by default), so memory
/// stays bounded however long the outage lasts — frames that old would be stale for YOLO.
pub const YOLO_FRAMES_IN_FLIGHT_MAX: usize = 16;

/// A YOLO frame in flight to the batch; dropping it (sent, or discarded) frees its place.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Takes a place if fewer than `max` are taken.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Self(count.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a channel thread reports to its batch.
#[derive(Debug)]
pub enum ChannelMsg {
    Motion {
        channel: u32,
        kind: MotionEventKind,
        event_id: String,
        ts_ms: i64,
        started_ms: i64,
        last_motion_ms: Option<i64>,
        area: f32,
        boxes: Vec<NormBox>,
        zones: Vec<String>,
    },
    /// The channel's latest picture (JPEG: colour on priority channels, else the grey frame
    /// the detector sees), every [`PREVIEW_EVERY_MS`].
    Preview { channel: u32, ts_ms: i64, jpeg: Vec<u8> },
    /// The picture of a motion event's busiest frame so far (JPEG, as the channel's picture):
    /// sent when the event starts and again, with its busiest frame, when it ends.
    Thumbnail { event_id: String, jpeg: Vec<u8> },
    /// A colour frame of a priority channel in motion, for object detection.
    Frame { channel: u32, ts_ms: i64, motion_event: String, boxes: Vec<NormBox>, image: Vec<u8>, _place: InFlight },
}

/// State shared between a channel thread and its batch supervisor.
#[derive(Debug)]
pub struct ChannelShared {
    pub id: u32,
    stop: AtomicBool,
    last_frame_ms: AtomicI64,
    last_motion_ms: AtomicI64,
    /// First frame of the current reader run (0: not analysing).
    analysing_since_ms: AtomicI64,
    frames: std::sync::atomic::AtomicU64,
    /// What reads the detect stream: an ffmpeg, or the gate's packet source (played in process,
    /// or an ffmpeg copying it).
    stoppers: Mutex<Vec<ReaderStop>>,
    stalled: AtomicBool,
    /// When the reader's current attempt began (ms).
    attempt_started_ms: AtomicI64,
    /// Frames the gate did not decode (see `ChannelStatus::frames_gated`).
    frames_gated: AtomicU64,
    /// The analysis wants every frame until then (motion, presence, an event; ms).
    gate_hold_until_ms: AtomicI64,
    /// The detect stream is not H.264: this channel is decoded always.
    gate_unsupported: AtomicBool,
    status: Mutex<(ChannelState, Option<String>)>,
    /// A priority channel whose frames YOLO samples while its backup is open.
    samples_recordings: bool,
    /// Set by the batch supervisor from the recording store.
    recording_open: AtomicBool,
    /// YOLO frames handed to the batch and not yet sent on (see [`InFlight`]).
    yolo_in_flight: Arc<AtomicUsize>,
    /// YOLO frames not taken because too many were in flight, not yet counted in Redis.
    yolo_dropped_backlog: AtomicU64,
    /// A priority channel with `yolo.confirmed_fps`: the supervisor feeds it what YOLO saw.
    samples_by_need: bool,
    /// What YOLO last saw here (set by the batch supervisor from Redis): sampling by need.
    objects_seen: Mutex<Option<ObjectsSeen>>,
    /// Frames the full YOLO rate would have sent that sampling by need did not.
    pub(crate) yolo_skipped: AtomicU64,
}

impl ChannelShared {
    fn new(id: u32, samples_recordings: bool, samples_by_need: bool) -> Self {
        Self {
            samples_recordings,
            samples_by_need,
            recording_open: AtomicBool::new(false),
            yolo_in_flight: Arc::default(),
            yolo_dropped_backlog: AtomicU64::new(0),
            objects_seen: Mutex::new(None),
            yolo_skipped: AtomicU64::new(0),
            id,
            stop: AtomicBool::new(false),
            last_frame_ms: AtomicI64::new(0),
            last_motion_ms: AtomicI64::new(0),
            analysing_since_ms: AtomicI64::new(0),
            frames: 0.into(),
            stoppers: Mutex::new(Vec::new()),
            stalled: AtomicBool::new(false),
            attempt_started_ms: AtomicI64::new(0),
            frames_gated: AtomicU64::new(0),
            gate_hold_until_ms: AtomicI64::new(0),
            gate_unsupported: AtomicBool::new(false),
            status: Mutex::new((ChannelState::Connecting, None)),
        }
    }

    /// Does this channel send YOLO frames while its backup is open (priority, `recording_fps`)?
    pub fn samples_recordings(&self) -> bool {
        self.samples_recordings
    }

    /// YOLO frames dropped since the last call because the batch could not send them on.
    pub fn take_yolo_dropped_backlog(&self) -> u64 {
        self.yolo_dropped_backlog.swap(0, Ordering::Relaxed)
    }

    /// Does this channel sample YOLO by need (priority, `confirmed_fps`)?
    pub fn samples_by_need(&self) -> bool {
        self.samples_by_need
    }

    pub fn set_objects_seen(&self, seen: Option<ObjectsSeen>) {
        *self.objects_seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
    }

    fn objects_seen(&self) -> Option<ObjectsSeen> {
        self.objects_seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Frames sampling by need kept from YOLO since the reader started.
    pub fn yolo_skipped(&self) -> u64 {
        self.yolo_skipped.load(Ordering::Relaxed)
    }

    pub fn set_recording_open(&self, open: bool) {
        self.recording_open.store(open, Ordering::Relaxed);
    }

    fn set_status(&self, state: ChannelState, reason: Option<String>) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = (state, reason);
    }

    /// Current state and offline reason.
    pub fn status(&self) -> (ChannelState, Option<String>) {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Frames the gate left undecoded, at the analysis rate.
    pub fn frames_gated(&self) -> u64 {
        self.frames_gated.load(Ordering::Relaxed)
    }

    /// A reader attempt begins with these ffmpegs: the watchdog may stop them, and its stall
    /// clock starts now.
    fn begin_attempt(&self, stoppers: Vec<ReaderStop>) {
        self.stalled.store(false, Ordering::Relaxed);
        self.attempt_started_ms.store(now_ms(), Ordering::Relaxed);
        *self.stoppers.lock().unwrap_or_else(|e| e.into_inner()) = stoppers;
    }

    /// The attempt is over (its ffmpegs are stopped next): `Some(reason)` when the stall
    /// watchdog ended it.
    fn end_attempt(&self, stall_timeout_secs: f64) -> Option<ReadError> {
        self.stoppers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.analysing_since_ms.store(0, Ordering::Relaxed);
        self.stalled.load(Ordering::Relaxed).then_some(ReadError::Stalled(stall_timeout_secs))
    }

    fn terminate_readers(&self) {
        for s in self.stoppers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            match s {
                ReaderStop::Ffmpeg(s) => s.terminate(),
                ReaderStop::Rtmp(s) => s.stop(),
            }
        }
    }

    pub fn last_frame_ms(&self) -> Option<i64> {
        Some(self.last_frame_ms.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    pub fn last_motion_ms(&self) -> Option<i64> {
        Some(self.last_motion_ms.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Since when this reader has analysed frames without interruption (`None` while connecting
    /// or offline).
    pub fn analysing_since_ms(&self) -> Option<i64> {
        Some(self.analysing_since_ms.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Called by the supervisor: stops a reader that delivered no frame for `timeout` since
    /// the latest of its last frame, the channel's start (`started_ms`) and the start of the
    /// reader's current attempt: a new attempt after an outage is given the whole timeout (it
    /// was killed as stalled at once when its first frame came after the next check).
    pub fn check_stall(&self, timeout: Duration, started_ms: i64) {
        let last = self
            .last_frame_ms
            .load(Ordering::Relaxed)
            .max(started_ms)
            .max(self.attempt_started_ms.load(Ordering::Relaxed));
        if now_ms() - last > timeout.as_millis() as i64
            && !self.stoppers.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
            && !self.stalled.swap(true, Ordering::Relaxed)
        {
            self.terminate_readers();
        }
    }

    /// Asks the channel thread to stop; it ends its ffmpeg and any motion event in progress.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.terminate_readers();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running channel thread.
pub struct ChannelHandle {
    pub shared: Arc<ChannelShared>,
    pub started_ms: AtomicI64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChannelHandle {
    /// Starts the channel's thread.
    pub fn start(
        channel: MotionChannel,
        play_url: &str,
        params: MotionConfig,
        yolo: Option<YoloFrames>,
        out: UnboundedSender<ChannelMsg>,
    ) -> Self {
        // Only priority channels send frames to YOLO.
        let yolo = yolo.filter(|_| channel.priority);
        let samples = yolo.as_ref().is_some_and(|y| y.recording_fps > 0.0);
        let by_need = yolo.as_ref().is_some_and(|y| y.confirmed_fps > 0.0);
        let shared = Arc::new(ChannelShared::new(channel.id, samples, by_need));
        let url = format!("{}/{}", play_url.trim_end_matches('/'), channel.detect_stream);
        let s = shared.clone();
        let params = channel.motion.apply(&params);
        let thread = std::thread::Builder::new()
            .name(format!("motion ch{}", channel.id))
            .spawn(move || channel_loop(&channel, &url, &params, yolo.as_ref(), &s, &out))
            .expect("spawning a thread");
        Self { shared, started_ms: AtomicI64::new(now_ms()), thread: Some(thread) }
    }

    /// Stops the thread and waits for it (its ffmpeg gets SIGTERM).
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.shared.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A batch whose future is dropped (its queue worker stopped under it) must not leave its
/// reader threads and their ffmpegs behind: they are told to stop (not waited for).
impl Drop for ChannelHandle {
    fn drop(&mut self) {
        self.shared.request_stop();
    }
}

fn channel_loop(
    ch: &MotionChannel,
    url: &str,
    params: &MotionConfig,
    yolo: Option<&YoloFrames>,
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
) {
    let span = tracing::info_span!("channel", channel = ch.id, stream = %ch.detect_stream);
    let _enter = span.enter();
    let initial = Duration::from_secs_f64(params.retry_initial_secs);
    let mut backoff = initial;
    while !shared.stopping() {
        // A channel that is down stays reported offline, with its reason, while it retries:
        // "connecting" is only the first attempt (or one after frames came), so a dead camera
        // never flickers between the two.
        if shared.status().0 != ChannelState::Offline {
            shared.set_status(ChannelState::Connecting, None);
        }
        let frames_before = shared.frames();
        let reason = match read_stream(ch, url, params, yolo, shared, out) {
            Ok(()) if shared.stopping() => break,
            Ok(()) => ReadError::Ended,
            Err(e) => e,
        };
        if shared.stopping() {
            break;
        }
        if shared.frames() - frames_before >= HEALTHY_FRAMES {
            backoff = initial;
        }
        if reason.is_permanent() {
            tracing::error!(reason = %reason, retry_in_ms = backoff.as_millis() as u64,
                "channel offline until its settings change");
        } else {
            tracing::warn!(reason = %reason, retry_in_ms = backoff.as_millis() as u64, "channel offline");
        }
        shared.set_status(ChannelState::Offline, Some(reason.to_string()));
        let until = Instant::now() + backoff;
        while Instant::now() < until && !shared.stopping() {
            std::thread::sleep(Duration::from_millis(100));
        }
        backoff = (backoff * 2).min(Duration::from_secs_f64(params.retry_max_secs));
    }
    tracing::debug!("channel stopped");
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;
    use cctv_common::ffmpeg::{self, FfmpegProcess};

    #[test]
    fn a_new_reader_attempt_gets_the_whole_stall_timeout() {
        let shared = ChannelShared::new(1, false, false);
        let mut cmd = ffmpeg::command();
        cmd.args(["-f", "lavfi", "-i", "nullsrc=rate=1", "-f", "null", "-"]);
        let mut p = FfmpegProcess::spawn("stall test", cmd, false).unwrap();
        let long_ago = now_ms() - 60_000;
        shared.last_frame_ms.store(long_ago, Ordering::Relaxed);
        // The last frame is a minute old (an outage), but this attempt has just begun.
        shared.begin_attempt(vec![ReaderStop::Ffmpeg(p.stopper())]);
        shared.check_stall(Duration::from_secs(20), long_ago);
        assert!(!shared.stalled.load(Ordering::Relaxed), "a fresh attempt was killed as stalled");
        assert!(p.try_wait().is_none());
        // The attempt itself is now 20 s without a frame: stalled.
        shared.attempt_started_ms.store(long_ago, Ordering::Relaxed);
        shared.check_stall(Duration::from_secs(20), long_ago);
        assert!(shared.stalled.load(Ordering::Relaxed));
        p.stop(Duration::from_secs(5));
    }

    #[test]
    fn yolo_frames_in_flight_are_capped_and_places_come_back_when_sent_or_dropped() {
        let count = Arc::new(AtomicUsize::new(0));
        let held: Vec<InFlight> = (0..3).map_while(|_| InFlight::take(&count, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(InFlight::take(&count, 3).is_none(), "a fourth frame waits for a place");
        drop(held);
        assert_eq!(count.load(Ordering::Acquire), 0);
        assert!(InFlight::take(&count, 3).is_some());
    }
}

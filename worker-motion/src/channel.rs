//! One channel of a batch: an ffmpeg reading its detect stream from nginx-rtmp as small grey raw
//! frames, the detector, and the hysteresis, on one dedicated thread.
//!
//! Failures stay inside the channel: a missing or stalled stream is reported offline with the
//! reason and retried with exponential backoff; the other channels of the batch never notice.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cctv_common::config::MotionConfig;
use cctv_common::events::{now_ms, ChannelState, MotionEventKind, NormBox};
use cctv_common::ffmpeg::{self, FfmpegProcess, Stopper};
use cctv_common::jobs::{MotionChannel, YoloFrames};
use cctv_common::zones;
use opencv::core::{Mat, Size, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};
use tokio::sync::mpsc::UnboundedSender;

use crate::detector::{Hysteresis, MotionDetector, Transition};

/// Frames analysed after which a failing channel's backoff resets.
const HEALTHY_FRAMES: u64 = 50;
/// A channel's picture for people (dashboard cards) is taken this often.
pub const PREVIEW_EVERY_MS: i64 = 10_000;
/// JPEG quality of the picture.
const PREVIEW_QUALITY: i32 = 80;

/// YOLO frames of one channel handed to the batch but not yet sent on: while Redis is away
/// (the batch waits on it) further frames are dropped here, before JPEG encoding, so memory
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
    /// A colour frame of a priority channel in motion, for object detection.
    Frame { channel: u32, ts_ms: i64, motion_event: String, boxes: Vec<NormBox>, jpeg: Vec<u8>, _place: InFlight },
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
    stopper: Mutex<Option<Stopper>>,
    stalled: AtomicBool,
    status: Mutex<(ChannelState, Option<String>)>,
    /// A priority channel whose frames YOLO samples while its backup is open.
    samples_recordings: bool,
    /// Set by the batch supervisor from the recording store.
    recording_open: AtomicBool,
    /// YOLO frames handed to the batch and not yet sent on (see [`InFlight`]).
    yolo_in_flight: Arc<AtomicUsize>,
    /// YOLO frames not taken because too many were in flight, not yet counted in Redis.
    yolo_dropped_backlog: AtomicU64,
}

impl ChannelShared {
    fn new(id: u32, samples_recordings: bool) -> Self {
        Self {
            samples_recordings,
            recording_open: AtomicBool::new(false),
            yolo_in_flight: Arc::default(),
            yolo_dropped_backlog: AtomicU64::new(0),
            id,
            stop: AtomicBool::new(false),
            last_frame_ms: AtomicI64::new(0),
            last_motion_ms: AtomicI64::new(0),
            analysing_since_ms: AtomicI64::new(0),
            frames: 0.into(),
            stopper: Mutex::new(None),
            stalled: AtomicBool::new(false),
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
    /// `since_ms` (the later of its last frame and its start).
    pub fn check_stall(&self, timeout: Duration, started_ms: i64) {
        let last = self.last_frame_ms.load(Ordering::Relaxed).max(started_ms);
        if now_ms() - last > timeout.as_millis() as i64 {
            if let Some(s) = self.stopper.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                if !self.stalled.swap(true, Ordering::Relaxed) {
                    s.terminate();
                }
            }
        }
    }

    /// Asks the channel thread to stop; it ends its ffmpeg and any motion event in progress.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.stopper.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            s.terminate();
        }
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
        let shared = Arc::new(ChannelShared::new(channel.id, samples));
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
            Ok(()) => "stream ended".to_string(),
            Err(reason) => reason,
        };
        if shared.stopping() {
            break;
        }
        if shared.frames() - frames_before >= HEALTHY_FRAMES {
            backoff = initial;
        }
        tracing::warn!(reason = %reason, retry_in_ms = backoff.as_millis() as u64, "channel offline");
        shared.set_status(ChannelState::Offline, Some(reason));
        let until = Instant::now() + backoff;
        while Instant::now() < until && !shared.stopping() {
            std::thread::sleep(Duration::from_millis(100));
        }
        backoff = (backoff * 2).min(Duration::from_secs_f64(params.retry_max_secs));
    }
    tracing::debug!("channel stopped");
}

/// Reads the stream until it ends, fails, stalls or the channel is stopped. Returns the reason
/// the channel went offline.
fn read_stream(
    ch: &MotionChannel,
    url: &str,
    params: &MotionConfig,
    yolo: Option<&YoloFrames>,
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
) -> Result<(), String> {
    let stall_us = (params.stall_timeout_secs * 1_000_000.0) as u64;
    let mut cmd = ffmpeg::command();
    cmd.args(["-nostats", "-fflags", "nobuffer", "-analyzeduration", "1000000", "-probesize", "1000000"])
        .args(["-rw_timeout", &stall_us.to_string()])
        .args(["-threads", &params.decode_threads.to_string()]);
    // Keyframes only: each decoded keyframe is analysed once (no `fps` filter, which would
    // repeat it and make the scene look still between keyframes).
    let rate = if params.keyframes_only {
        cmd.args(["-skip_frame", "nokey"]);
        String::new()
    } else {
        format!("fps={},", params.fps)
    };
    cmd.input(url).args(["-an", "-sn", "-dn"]);
    if params.keyframes_only {
        cmd.args(["-fps_mode", "passthrough"]);
    }
    match yolo {
        // Colour at the detect stream's resolution (capped): motion scales it down itself, YOLO
        // gets it as JPEG.
        Some(y) => cmd
            .args(["-vf", &format!("{rate}scale=w=-2:h=min(ih\\,{})", y.max_frame_height)])
            .args(["-pix_fmt", "bgr24", "-f", "rawvideo", "pipe:1"]),
        None => cmd
            .args(["-vf", &format!("{rate}scale=-2:{}", params.frame_height)])
            .args(["-pix_fmt", "gray", "-f", "rawvideo", "pipe:1"]),
    };
    let mut process = FfmpegProcess::spawn(format!("motion ch{}", ch.id), cmd, true).map_err(|e| e.to_string())?;
    shared.stalled.store(false, Ordering::Relaxed);
    *shared.stopper.lock().unwrap_or_else(|e| e.into_inner()) = Some(process.stopper());
    let result = analyse(ch, params, yolo, shared, out, &mut process);
    *shared.stopper.lock().unwrap_or_else(|e| e.into_inner()) = None;
    shared.analysing_since_ms.store(0, Ordering::Relaxed);
    process.stop(Duration::from_secs(2));
    if shared.stalled.load(Ordering::Relaxed) {
        return Err(format!("stalled: no frame for {} s", params.stall_timeout_secs));
    }
    result.map_err(|message| {
        let tail = process.stderr_tail();
        // The last line ffmpeg wrote is usually the reason ("Input/output error", "404 ...").
        let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        if last.is_empty() {
            message
        } else {
            format!("{message}: {last}")
        }
    })
}

fn analyse(
    ch: &MotionChannel,
    params: &MotionConfig,
    yolo: Option<&YoloFrames>,
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
    process: &mut FfmpegProcess,
) -> Result<(), String> {
    let mut stdout = process.take_stdout().ok_or("ffmpeg stdout not captured")?;
    let size = process
        .wait_output_video(Duration::from_secs_f64(params.stall_timeout_secs))
        .ok_or_else(|| "no video from stream".to_string())?;
    let mut colour = yolo.map(|y| ColourFrames::new(y, size.width, size.height, params.frame_height));
    let (grey_w, grey_h) = colour.as_ref().map_or((size.width, size.height), |c| (c.grey_w, c.grey_h));
    let mut detector = MotionDetector::new(params, grey_w, grey_h);
    detector.set_masks(&ch.masks).map_err(|e| format!("motion masks: {e}"))?;
    let mut hysteresis = Hysteresis::new(params);
    let bytes_per_pixel = if colour.is_some() { 3 } else { 1 };
    let mut frame = vec![0u8; (size.width * size.height) as usize * bytes_per_pixel];
    tracing::info!(width = size.width, height = size.height, yolo = colour.is_some(), "channel online");
    // The latest motion event: frames sampled after it ended still belong to it.
    let mut last_event: Option<String> = None;
    // The zones the event in progress touched so far, in the channel's zone order.
    let mut event_zones: Vec<String> = Vec::new();
    let mut last_preview_ms = 0i64;
    let result = loop {
        if shared.stopping() {
            break Ok(());
        }
        if let Err(e) = stdout.read_exact(&mut frame) {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Err("stream ended".into())
            } else {
                Err(format!("reading frames: {e}"))
            };
        }
        let ts = now_ms();
        shared.last_frame_ms.store(ts, Ordering::Relaxed);
        // Only the first frame of the run sets it (0 means unset).
        let _ = shared.analysing_since_ms.compare_exchange(0, ts, Ordering::Relaxed, Ordering::Relaxed);
        shared.frames.fetch_add(1, Ordering::Relaxed);
        if ts - last_preview_ms >= PREVIEW_EVERY_MS {
            last_preview_ms = ts;
            let jpeg = match colour.as_ref() {
                Some(c) => c.jpeg(&frame),
                None => grey_jpeg(&frame, grey_w, grey_h),
            };
            match jpeg {
                Ok(jpeg) => {
                    let _ = out.send(ChannelMsg::Preview { channel: ch.id, ts_ms: ts, jpeg });
                }
                Err(e) => tracing::debug!(error = %e, "cannot encode the channel picture"),
            }
        }
        let grey = match colour.as_mut().map(|c| c.grey_of(&frame)).transpose() {
            Ok(g) => g,
            Err(e) => break Err(format!("converting a colour frame: {e}")),
        };
        detector.set_in_event(hysteresis.active().is_some());
        let verdict = match detector.process(grey.unwrap_or(&frame), ts) {
            Ok(v) => v,
            Err(e) => break Err(format!("motion detector: {e}")),
        };
        if verdict.recalibrated {
            tracing::info!("scene changed as a whole (lights, IR); background recalibrated");
        }
        if verdict.motion {
            shared.last_motion_ms.store(ts, Ordering::Relaxed);
        }
        let transition = hysteresis.update(ts, verdict.motion, verdict.present, verdict.area);
        shared.set_status(if hysteresis.active().is_some() { ChannelState::Motion } else { ChannelState::Idle }, None);
        if let Some(active) = hysteresis.active() {
            last_event = Some(active.event_id.clone());
        }
        // YOLO frames: at `fps` during motion; at `recording_fps` while the channel's backup is
        // open without motion, so a wanted object in view keeps it going.
        let sample = match (hysteresis.active(), yolo) {
            (Some(active), Some(y)) => Some((active.event_id.clone(), y.fps)),
            (None, Some(y)) if y.recording_fps > 0.0 && shared.recording_open.load(Ordering::Relaxed) => {
                last_event.clone().map(|e| (e, y.recording_fps))
            }
            _ => None,
        };
        if let (Some(c), Some((event, fps))) = (colour.as_mut(), sample) {
            if c.due(ts, fps) {
                match InFlight::take(&shared.yolo_in_flight, YOLO_FRAMES_IN_FLIGHT_MAX) {
                    None => {
                        shared.yolo_dropped_backlog.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(place) => match c.jpeg(&frame) {
                        Ok(jpeg) => {
                            let _ = out.send(ChannelMsg::Frame {
                                channel: ch.id,
                                ts_ms: ts,
                                motion_event: event,
                                boxes: verdict.boxes.clone(),
                                jpeg,
                                _place: place,
                            });
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot encode a frame for YOLO"),
                    },
                }
            }
        }
        let touched = if ch.zones.is_empty() { Vec::new() } else { zones::touched(&ch.zones, &verdict.boxes) };
        match (&transition, hysteresis.active()) {
            (Some(Transition::Start(_)), _) => event_zones = touched,
            (None, Some(active)) if touched.iter().any(|z| !event_zones.contains(z)) => {
                event_zones = ch
                    .zones
                    .iter()
                    .map(|z| &z.name)
                    .filter(|n| event_zones.contains(n) || touched.contains(n))
                    .cloned()
                    .collect();
                tracing::info!(event = %active.event_id, zones = ?event_zones, "motion entered a zone");
                let _ = out.send(ChannelMsg::Motion {
                    channel: ch.id,
                    kind: MotionEventKind::Zone,
                    event_id: active.event_id.clone(),
                    ts_ms: ts,
                    started_ms: active.started_ms,
                    last_motion_ms: None,
                    area: active.max_area,
                    boxes: verdict.boxes.clone(),
                    zones: event_zones.clone(),
                });
            }
            _ => {}
        }
        if let Some(t) = transition {
            // An end takes the event's zones with it; a start keeps them for its zone entries.
            let zones = match t {
                Transition::End(_) => std::mem::take(&mut event_zones),
                Transition::Start(_) => event_zones.clone(),
            };
            emit(ch.id, t, ts, verdict.boxes, zones, out);
        }
    };
    // Close an event that was in progress when the stream went away.
    if let Some(t) = hysteresis.finish() {
        emit(ch.id, t, now_ms(), Vec::new(), event_zones, out);
    }
    result
}

/// Colour frames of a priority channel: grey copies for motion, JPEGs for YOLO at `yolo.fps`.
struct ColourFrames {
    width: i32,
    height: i32,
    grey_w: u32,
    grey_h: u32,
    quality: i32,
    last_sent_ms: i64,
    grey_full: Mat,
    grey_small: Mat,
}

impl ColourFrames {
    fn new(y: &YoloFrames, width: u32, height: u32, grey_h: u32) -> Self {
        // Same rounding as ffmpeg's `scale=-2:<h>` on the grey path: width even, aspect kept.
        let grey_w = ((width as f64 * grey_h as f64 / height.max(1) as f64 / 2.0).round() as u32 * 2).max(2);
        Self {
            width: width as i32,
            height: height as i32,
            grey_w,
            grey_h,
            quality: y.jpeg_quality as i32,
            last_sent_ms: 0,
            grey_full: Mat::default(),
            grey_small: Mat::default(),
        }
    }

    fn mat<'a>(&self, bgr: &'a [u8]) -> opencv::Result<opencv::boxed_ref::BoxedRef<'a, Mat>> {
        Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(self.height, self.width, bgr)
    }

    fn grey_of(&mut self, bgr: &[u8]) -> opencv::Result<&[u8]> {
        let m = self.mat(bgr)?;
        imgproc::cvt_color_def(&m, &mut self.grey_full, imgproc::COLOR_BGR2GRAY)?;
        let size = Size::new(self.grey_w as i32, self.grey_h as i32);
        imgproc::resize(&self.grey_full, &mut self.grey_small, size, 0.0, 0.0, imgproc::INTER_AREA)?;
        self.grey_small.data_bytes()
    }

    /// True when the next YOLO frame is due at `fps` (and counts it as sent).
    fn due(&mut self, ts_ms: i64, fps: f64) -> bool {
        if ts_ms - self.last_sent_ms >= (1000.0 / fps) as i64 {
            self.last_sent_ms = ts_ms;
            true
        } else {
            false
        }
    }

    fn jpeg(&self, bgr: &[u8]) -> opencv::Result<Vec<u8>> {
        let m = self.mat(bgr)?;
        let mut buf = Vector::<u8>::new();
        let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, self.quality]);
        imgcodecs::imencode(".jpg", &m, &mut buf, &params)?;
        Ok(buf.to_vec())
    }
}

/// A grey frame (`width` x `height` bytes) as JPEG.
fn grey_jpeg(grey: &[u8], width: u32, height: u32) -> opencv::Result<Vec<u8>> {
    let m = Mat::new_rows_cols_with_data(height as i32, width as i32, grey)?;
    let mut buf = Vector::<u8>::new();
    let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, PREVIEW_QUALITY]);
    imgcodecs::imencode(".jpg", &m, &mut buf, &params)?;
    Ok(buf.to_vec())
}

/// Sends a start (with the zones of its first frame) or an end (with every zone the event
/// touched).
fn emit(
    channel: u32,
    t: Transition,
    ts_ms: i64,
    boxes: Vec<NormBox>,
    zones: Vec<String>,
    out: &UnboundedSender<ChannelMsg>,
) {
    let msg = match t {
        Transition::Start(a) => {
            tracing::info!(event = %a.event_id, area = a.max_area, zones = ?zones, "motion started");
            ChannelMsg::Motion {
                channel,
                kind: MotionEventKind::Start,
                event_id: a.event_id,
                ts_ms,
                started_ms: a.started_ms,
                last_motion_ms: None,
                area: a.max_area,
                boxes,
                zones,
            }
        }
        Transition::End(a) => {
            tracing::info!(event = %a.event_id, lasted_ms = ts_ms - a.started_ms, "motion ended");
            ChannelMsg::Motion {
                channel,
                kind: MotionEventKind::End,
                event_id: a.event_id,
                ts_ms,
                started_ms: a.started_ms,
                last_motion_ms: Some(a.last_motion_ms),
                area: a.max_area,
                boxes: Vec::new(),
                zones,
            }
        }
    };
    // The batch is gone only when the job is ending; nothing left to tell then.
    let _ = out.send(msg);
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

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

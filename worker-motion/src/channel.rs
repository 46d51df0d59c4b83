//! One channel of a batch: a reader of its detect stream (the gate's packets decoded in
//! process, or an ffmpeg writing small grey raw frames), the detector, and the hysteresis, on
//! one dedicated thread (the gate's feeder on a second).
//!
//! Failures stay inside the channel: a missing or stalled stream is reported offline with the
//! reason and retried with exponential backoff; the other channels of the batch never notice.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cctv_common::config::{FrameFormat, MotionConfig};
use cctv_common::events::{now_ms, ChannelState, MotionEventKind, NormBox};
use cctv_common::ffmpeg::{self, FfmpegCommand, FfmpegProcess, Stopper, VideoSize};
use cctv_common::jobs::{MotionChannel, YoloFrames};
use cctv_common::zones;
use opencv::core::{Mat, Size, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};
use tokio::sync::mpsc::UnboundedSender;

use crate::decode::{AvcDecoder, PictureFormat};
use crate::detector::{Hysteresis, MotionDetector, Transition};
use crate::flv::{FlvReader, FlvTag, FLV_CODEC_AVC};
use crate::gate::Gate;
use crate::rtmp::{RtmpPlayer, RtmpStop};

/// Frames analysed after which a failing channel's backoff resets.
const HEALTHY_FRAMES: u64 = 50;
/// A channel's picture for people (dashboard cards) is taken this often.
pub const PREVIEW_EVERY_MS: i64 = 10_000;
/// JPEG quality of the picture.
const PREVIEW_QUALITY: i32 = 80;

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
    fn end_attempt(&self, stall_timeout_secs: f64) -> Option<String> {
        self.stoppers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.analysing_since_ms.store(0, Ordering::Relaxed);
        self.stalled.load(Ordering::Relaxed).then(|| format!("stalled: no frame for {stall_timeout_secs} s"))
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
    if params.gate && !params.keyframes_only && !shared.gate_unsupported.load(Ordering::Relaxed) {
        match read_stream_gated(ch, url, params, yolo, shared, out) {
            Err(GatedError::Unsupported(codec)) => {
                tracing::info!(flv_codec = codec, "detect stream is not H.264: no gate, every frame decoded");
                shared.gate_unsupported.store(true, Ordering::Relaxed);
            }
            Err(GatedError::Offline(reason)) => return Err(reason),
            Ok(()) => return Ok(()),
        }
    }
    read_stream_decoded(ch, url, params, yolo, shared, out)
}

/// Input options of a reader of the detect stream.
fn input_args(cmd: &mut FfmpegCommand, params: &MotionConfig) {
    let stall_us = (params.stall_timeout_secs * 1_000_000.0) as u64;
    cmd.args(["-nostats", "-fflags", "nobuffer", "-analyzeduration", "1000000", "-probesize", "1000000"])
        .args(["-rw_timeout", &stall_us.to_string()]);
}

/// Output options of a decoder: grey frames at `frame_height`, or colour at the detect
/// stream's resolution (capped) for YOLO, raw on stdout. `rate`: a filter prefix (`fps=5,`).
fn raw_output_args(cmd: &mut FfmpegCommand, params: &MotionConfig, yolo: Option<&YoloFrames>, rate: &str) {
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
}

/// The reason a reader stopped, with the last line ffmpeg wrote (usually the cause:
/// "Input/output error", "404 ...").
fn with_ffmpeg_reason(message: String, process: &FfmpegProcess) -> String {
    let tail = process.stderr_tail();
    let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    if last.is_empty() {
        message
    } else {
        format!("{message}: {last}")
    }
}

/// One ffmpeg that decodes every frame (at `fps`) and writes raw frames.
fn read_stream_decoded(
    ch: &MotionChannel,
    url: &str,
    params: &MotionConfig,
    yolo: Option<&YoloFrames>,
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
) -> Result<(), String> {
    let mut cmd = ffmpeg::command();
    input_args(&mut cmd, params);
    cmd.args(["-threads", &params.decode_threads.to_string()]);
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
    raw_output_args(&mut cmd, params, yolo, &rate);
    let mut process = FfmpegProcess::spawn(format!("motion ch{}", ch.id), cmd, true).map_err(|e| e.to_string())?;
    shared.begin_attempt(vec![ReaderStop::Ffmpeg(process.stopper())]);
    let result = (|| {
        let stdout = process.take_stdout().ok_or("ffmpeg stdout not captured")?;
        let size = process
            .wait_output_video(Duration::from_secs_f64(params.stall_timeout_secs))
            .ok_or_else(|| "no video from stream".to_string())?;
        analyse(ch, params, yolo, shared, out, size, &mut DecodedFrames(stdout), false)
    })();
    let stalled = shared.end_attempt(params.stall_timeout_secs);
    process.stop(Duration::from_secs(2));
    if let Some(reason) = stalled {
        return Err(reason);
    }
    result.map_err(|message| with_ffmpeg_reason(message, &process))
}

/// Why a gated reader stopped.
enum GatedError {
    /// The detect stream's codec (FLV codec id) is not H.264: read it decoded instead.
    Unsupported(u8),
    Offline(String),
}

/// Decoded pictures on their way from the feeder to the analysis: a couple, so decoding the
/// next packet overlaps analysing the last picture and a slow analysis holds the feeder back.
const GATE_PICTURES_QUEUED: usize = 2;

/// A picture the gate's decoder handed out, with what the analysis needs to know of it.
struct GatePicture {
    pixels: Vec<u8>,
    size: VideoSize,
    meta: FrameMeta,
}

/// The gated reader: packets of the detect stream (played from nginx-rtmp in process, or an
/// ffmpeg copying any other source as FLV: no decoding), the gate picks those decoded in
/// process (`crate::decode`), pictures to the analysis.
fn read_stream_gated(
    ch: &MotionChannel,
    url: &str,
    params: &MotionConfig,
    yolo: Option<&YoloFrames>,
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
) -> Result<(), GatedError> {
    let offline = GatedError::Offline;
    let stall = Duration::from_secs_f64(params.stall_timeout_secs);
    let (mut reader, packets, stop) = if url.starts_with("rtmp://") {
        let player = RtmpPlayer::connect(url, stall).map_err(|e| offline(format!("playing the detect stream: {e}")))?;
        let stop = player.stopper().map_err(|e| offline(e.to_string()))?;
        (None, Packets::Rtmp(Box::new(player)), ReaderStop::Rtmp(stop))
    } else {
        let mut cmd = ffmpeg::command();
        input_args(&mut cmd, params);
        cmd.input(url).args(["-map", "0:v:0", "-an", "-sn", "-dn", "-c:v", "copy"]);
        // Each packet on its own, at once: buffered, a still scene's tiny packets would wait for 32 KiB.
        cmd.args(["-flush_packets", "1", "-flvflags", "no_duration_filesize", "-f", "flv", "pipe:1"]);
        let mut reader = FfmpegProcess::spawn(format!("motion ch{} packets", ch.id), cmd, true)
            .map_err(|e| offline(e.to_string()))?;
        let stop = ReaderStop::Ffmpeg(reader.stopper());
        let Some(stdout) = reader.take_stdout() else {
            reader.stop(Duration::from_secs(2));
            return Err(offline("ffmpeg stdout not captured".into()));
        };
        let packets = Packets::Ffmpeg(FlvReader::new(std::io::BufReader::with_capacity(256 << 10, stdout)));
        (Some(reader), packets, stop)
    };
    let format = match yolo {
        Some(y) => PictureFormat::Colour { max_height: y.max_frame_height },
        None => PictureFormat::Grey { height: params.frame_height },
    };
    shared.begin_attempt(vec![stop]);
    let (pictures_in, pictures) = std::sync::mpsc::sync_channel::<GatePicture>(GATE_PICTURES_QUEUED);
    // Buffers the analysis is done with, back to the feeder (no allocation per picture).
    let (spare_in, spare) = std::sync::mpsc::channel::<Vec<u8>>();
    let (fed, analysed) = std::thread::scope(|scope| {
        let span = tracing::Span::current();
        let feeder = scope.spawn(move || {
            let _e = span.enter();
            feed_gate(packets, format, params, shared, &pictures_in, &spare)
        });
        // The receiver goes with this block (or with `frames`): a feeder blocked on a full
        // queue then finds the analysis gone, whatever ended it.
        let analysed = {
            let pictures = pictures;
            match pictures.recv_timeout(stall) {
                Ok(first) => {
                    let size = first.size;
                    let mut frames = GatedFrames { pictures, spare: spare_in, first: Some(first), size };
                    analyse(ch, params, yolo, shared, out, size, &mut frames, true)
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err("no video from stream".to_string()),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err("stream ended".to_string()),
            }
        };
        // The feeder ends when its packets do (stopped here) or when it finds the analysis
        // gone (the receiver, dropped above).
        shared.terminate_readers();
        let fed = feeder.join().unwrap_or_else(|_| Err(offline("the gate's feeder panicked".into())));
        (fed, analysed)
    });
    let stalled = shared.end_attempt(params.stall_timeout_secs);
    if let Some(r) = reader.as_mut() {
        r.stop(Duration::from_secs(2));
    }
    if let Some(reason) = stalled {
        return Err(offline(reason));
    }
    let with_reason = |m: String| match &reader {
        Some(reader) => with_ffmpeg_reason(m, reader),
        None => m,
    };
    match fed {
        Err(GatedError::Unsupported(c)) => Err(GatedError::Unsupported(c)),
        // The packets or the decoder failed: that is the reason, not the analysis left without
        // pictures.
        Err(GatedError::Offline(m)) => Err(offline(with_reason(m))),
        // The packets ended (the stream did, a stream not published never began, or the channel
        // is stopping).
        Ok(()) => analysed.map_err(|m| offline(with_reason(m))),
    }
}

/// The feeder: packets in, the gate's choice decoded, pictures out to the analysis; returns at
/// the end of the packets or when the analysis is gone.
fn feed_gate(
    mut flv: Packets,
    format: PictureFormat,
    params: &MotionConfig,
    shared: &ChannelShared,
    pictures: &std::sync::mpsc::SyncSender<GatePicture>,
    spare: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<(), GatedError> {
    let mut gate: Gate<FlvTag> = Gate::new(params.gate_rise, (params.gate_keyframe_secs * 1000.0) as i64);
    let mut config: Option<FlvTag> = None;
    // Each packet's tag is what the analysis needs of it: the decoder hands it back with the
    // packet's own picture (presentation order, B-frames).
    let mut decoder: Option<AvcDecoder<FrameMeta>> = None;
    let mut gated_ms = 0.0f64;
    let interval_ms = 1000.0 / params.fps;
    // The count goes on across reader runs, as `frames_total` does.
    let gated_before = shared.frames_gated.load(Ordering::Relaxed);
    let mut last_arrival: Option<i64> = None;
    let mut clock = StreamClock::default();
    loop {
        let tag = match flv.next_tag() {
            Ok(Some(tag)) => tag,
            // The reader ended: its log says why (played in process: the server ended it).
            Ok(None) if matches!(flv, Packets::Rtmp(_)) => {
                return Err(GatedError::Offline("nginx-rtmp ended the stream (its publisher left?)".into()))
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(GatedError::Offline(format!("reading packets: {e}"))),
        };
        match tag.video_codec() {
            None => continue,
            Some(FLV_CODEC_AVC) => {}
            Some(other) => return Err(GatedError::Unsupported(other)),
        }
        if tag.is_avc_config() {
            match &config {
                None => {
                    decoder = Some(
                        AvcDecoder::new(tag.avc_payload(), format, params.decode_threads)
                            .map_err(|e| GatedError::Offline(format!("the decoder: {e}")))?,
                    );
                    config = Some(tag);
                }
                Some(c) if c.body == tag.body => {}
                // New stream parameters (the camera's resolution changed): a new decoder.
                Some(_) => {
                    return Err(GatedError::Offline(
                        "the stream's parameters changed (resolution or profile), decoder restarted".into(),
                    ))
                }
            }
            continue;
        }
        let Some(decoder) = decoder.as_mut() else { continue };
        if !tag.is_avc_picture() {
            continue;
        }
        let now = now_ms();
        shared.last_frame_ms.fetch_max(now, Ordering::Relaxed);
        let hold = now < shared.gate_hold_until_ms.load(Ordering::Relaxed)
            || (shared.samples_recordings && shared.recording_open.load(Ordering::Relaxed));
        let taken = clock.frame_time(tag.ts, now);
        let (size, key) = (tag.body.len(), tag.is_keyframe());
        if let Some(lag) = decoder.lag() {
            gate.set_pushers(lag);
        }
        let step = gate.push(tag, size, key, taken, hold);
        if let Some(reason) = step.opened {
            tracing::debug!(?reason, "gate opened");
        }
        if step.closed {
            tracing::debug!(threshold = gate.threshold(), "gate closed: still scene");
        }
        // Time watched from packets alone, in frames at `fps`: all of it while closed but for
        // the keyframes analysed; the packets a newly open gate decodes are analysed after all
        // (with their keyframe, when it was kept undecoded: the first of them, before this one).
        let gap = last_arrival.map_or(0, |t| (taken - t).max(0)) as f64;
        last_arrival = Some(taken);
        if !gate.is_open() {
            gated_ms += gap - if key && !step.skipped { interval_ms } else { 0.0 };
        }
        if let (Some(_), Some(first)) = (step.opened, step.feed.first()) {
            gated_ms -= (taken - first.arrived_ms) as f64;
            if first.item.is_keyframe() && first.arrived_ms < taken {
                gated_ms -= interval_ms;
            }
        }
        gated_ms = gated_ms.max(0.0);
        shared.frames_gated.store(gated_before + (gated_ms * params.fps / 1000.0) as u64, Ordering::Relaxed);
        for f in step.feed {
            // A closed gate's keyframe is its look at the scene: always analysed.
            let check = key && !gate.is_open();
            let meta = FrameMeta { ts_ms: f.arrived_ms, analyse: f.analyse, check };
            let mut gone = false;
            decoder
                .decode(f.item.avc_payload(), f.item.is_keyframe(), meta, &mut |p| {
                    let mut pixels = spare.try_recv().unwrap_or_default();
                    pixels.clear();
                    pixels.extend_from_slice(p.pixels);
                    let size = VideoSize { width: p.width, height: p.height };
                    gone |= pictures.send(GatePicture { pixels, size, meta: p.tag }).is_err();
                })
                .map_err(|e| GatedError::Offline(format!("the decoder: {e}")))?;
            if gone {
                return Ok(());
            }
        }
    }
}

/// What stops a reader of the detect stream from another thread (the stall watchdog, a stop).
#[derive(Debug)]
enum ReaderStop {
    Ffmpeg(Stopper),
    Rtmp(RtmpStop),
}

/// Where the gate's packets come from.
enum Packets {
    /// An ffmpeg copying the stream as FLV on a pipe (any source ffmpeg reads).
    Ffmpeg(FlvReader<std::io::BufReader<std::process::ChildStdout>>),
    /// nginx-rtmp's stream played in this process.
    Rtmp(Box<RtmpPlayer>),
}

impl Packets {
    fn next_tag(&mut self) -> std::io::Result<Option<FlvTag>> {
        match self {
            Packets::Ffmpeg(r) => r.next_tag(),
            Packets::Rtmp(p) => p.next_tag(),
        }
    }
}

/// Wall-clock time of each frame from the stream's own timestamps: packets that arrive in a
/// burst (a busy machine, a network hiccup) keep their spacing, so the analysis rate and the
/// event times follow the pictures, not the pipe. Anchored on the earliest-arriving packet: a
/// frame never gets a time after it arrived, nor one more than `MAX_LAG_MS` before (a stream
/// whose clock jumped, or a reconnect, re-anchors).
#[derive(Debug, Default)]
struct StreamClock {
    /// (wall ms, stream ms) of the anchor.
    anchor: Option<(i64, u32)>,
}

impl StreamClock {
    const MAX_LAG_MS: i64 = 1_000;

    fn frame_time(&mut self, stream_ms: u32, now_ms: i64) -> i64 {
        if let Some((wall, base)) = self.anchor {
            // Signed difference of 32-bit stream times (FLV timestamps wrap).
            let t = wall + i64::from(stream_ms.wrapping_sub(base) as i32);
            if t <= now_ms && t >= now_ms - Self::MAX_LAG_MS {
                return t;
            }
        }
        self.anchor = Some((now_ms, stream_ms));
        now_ms
    }
}

/// Arrival time of a frame and whether to analyse it.
#[derive(Debug, Clone, Copy)]
struct FrameMeta {
    ts_ms: i64,
    analyse: bool,
    /// A closed gate's keyframe: analysed whatever the rate says.
    check: bool,
}

/// Where raw frames come from.
trait FrameSource {
    /// Fills `frame` with the next raw frame; an error is the reason the reader stops.
    fn next_frame(&mut self, frame: &mut [u8]) -> Result<FrameMeta, String>;
}

fn read_frame(r: &mut impl Read, frame: &mut [u8]) -> Result<(), String> {
    r.read_exact(frame).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "stream ended".to_string()
        } else {
            format!("reading frames: {e}")
        }
    })
}

/// Every frame, analysed as it comes.
struct DecodedFrames(std::process::ChildStdout);

impl FrameSource for DecodedFrames {
    fn next_frame(&mut self, frame: &mut [u8]) -> Result<FrameMeta, String> {
        read_frame(&mut self.0, frame)?;
        Ok(FrameMeta { ts_ms: now_ms(), analyse: true, check: false })
    }
}

/// The gate's pictures, decoded in process by its feeder.
struct GatedFrames {
    pictures: std::sync::mpsc::Receiver<GatePicture>,
    spare: std::sync::mpsc::Sender<Vec<u8>>,
    /// The first picture, taken to learn the size before the analysis began.
    first: Option<GatePicture>,
    /// The size the analysis began with.
    size: VideoSize,
}

impl FrameSource for GatedFrames {
    fn next_frame(&mut self, frame: &mut [u8]) -> Result<FrameMeta, String> {
        let picture = match self.first.take() {
            Some(p) => p,
            None => self.pictures.recv().map_err(|_| "stream ended".to_string())?,
        };
        if picture.pixels.len() != frame.len() {
            return Err(format!(
                "resolution changed {}x{} → {}x{}, decoder restarted",
                self.size.width, self.size.height, picture.size.width, picture.size.height
            ));
        }
        frame.copy_from_slice(&picture.pixels);
        let _ = self.spare.send(picture.pixels);
        Ok(picture.meta)
    }
}
/// Analyses frames until the source ends or the channel stops. `gated`: frames come at the
/// stream's rate (the analysis picks `fps` of them) and motion holds the gate open.
#[allow(clippy::too_many_arguments)]
fn analyse(
    ch: &MotionChannel,
    params: &MotionConfig,
    yolo: Option<&YoloFrames>,
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
    size: VideoSize,
    source: &mut dyn FrameSource,
    gated: bool,
) -> Result<(), String> {
    let interval_ms = 1000.0 / params.fps;
    let hold_ms = (params.gate_hold_secs * 1000.0) as i64;
    // The next analysis is due at this time (ms, fractional: exact rate over any input rate).
    let mut due_ms: Option<f64> = None;
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
        let meta = match source.next_frame(&mut frame) {
            Ok(meta) => meta,
            Err(e) => break Err(e),
        };
        let ts = meta.ts_ms;
        shared.last_frame_ms.fetch_max(ts, Ordering::Relaxed);
        if !meta.analyse {
            continue;
        }
        if gated {
            // Within a quarter of an interval counts as on time (arrival jitter).
            let due = *due_ms.get_or_insert(ts as f64);
            if (ts as f64) < due - interval_ms / 4.0 && !meta.check {
                continue;
            }
            due_ms = Some(if due + interval_ms < ts as f64 { ts as f64 + interval_ms } else { due + interval_ms });
        }
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
        if gated && (verdict.motion || verdict.present || hysteresis.active().is_some()) {
            shared.gate_hold_until_ms.fetch_max(ts + hold_ms, Ordering::Relaxed);
        }
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
                    Some(place) => match c.yolo_image(&frame) {
                        Ok(image) => {
                            let _ = out.send(ChannelMsg::Frame {
                                channel: ch.id,
                                ts_ms: ts,
                                motion_event: event,
                                boxes: verdict.boxes.clone(),
                                image,
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

/// Colour frames of a priority channel: grey copies for motion, YOLO frames (PNG, or JPEG with
/// `yolo.frame_format = "jpeg"`) at `yolo.fps`, JPEG previews.
struct ColourFrames {
    width: i32,
    height: i32,
    grey_w: u32,
    grey_h: u32,
    quality: i32,
    format: FrameFormat,
    last_sent_ms: i64,
    grey_full: Mat,
    grey_small: Mat,
}

impl ColourFrames {
    fn new(y: &YoloFrames, width: u32, height: u32, grey_h: u32) -> Self {
        // Same width as ffmpeg's `scale=-2:<h>` on the grey path: even, aspect kept.
        let (grey_w, _) = PictureFormat::Grey { height: grey_h }.output_size(width, height);
        Self {
            width: width as i32,
            height: height as i32,
            grey_w,
            grey_h,
            quality: y.jpeg_quality as i32,
            format: y.format,
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

    /// The frame as YOLO gets it: PNG (lossless) or JPEG. The PNG is written by the `png`
    /// crate with its fast deflate and one fixed filter (Paeth): 1.8 ms for 640x360 where
    /// OpenCV's libpng at level 1 took 11.7 ms (adaptive filtering), for ~290 KiB against 262.
    fn yolo_image(&self, bgr: &[u8]) -> Result<Vec<u8>, String> {
        match self.format {
            FrameFormat::Jpeg => self.jpeg(bgr).map_err(|e| e.to_string()),
            FrameFormat::Png => {
                let rgb: Vec<u8> = bgr.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
                let mut out = Vec::with_capacity(bgr.len() / 2);
                let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
                encoder.set_color(png::ColorType::Rgb);
                encoder.set_depth(png::BitDepth::Eight);
                encoder.set_compression(png::Compression::Fast);
                encoder.set_filter(png::FilterType::Paeth);
                encoder.set_adaptive_filter(png::AdaptiveFilterType::NonAdaptive);
                let mut writer = encoder.write_header().map_err(|e| format!("PNG: {e}"))?;
                writer.write_image_data(&rgb).map_err(|e| format!("PNG: {e}"))?;
                writer.finish().map_err(|e| format!("PNG: {e}"))?;
                Ok(out)
            }
        }
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
    fn a_new_reader_attempt_gets_the_whole_stall_timeout() {
        let shared = ChannelShared::new(1, false);
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

#[cfg(test)]
mod stream_clock_tests {
    use super::*;

    #[test]
    fn frames_of_a_burst_keep_their_spacing_and_a_jump_re_anchors() {
        let mut c = StreamClock::default();
        assert_eq!(c.frame_time(5_000, 100_000), 100_000);
        // Four frames 100 ms apart arrive together 400 ms later.
        let burst: Vec<i64> = (1..=4).map(|i| c.frame_time(5_000 + i * 100, 100_400)).collect();
        assert_eq!(burst, vec![100_100, 100_200, 100_300, 100_400]);
        // A frame can never be later than its arrival: an early anchor moves.
        assert_eq!(c.frame_time(5_600, 100_450), 100_450);
        assert_eq!(c.frame_time(5_700, 100_560), 100_550);
        // The stream's clock jumped (a reconnect): re-anchored on arrival.
        assert_eq!(c.frame_time(90, 100_700), 100_700);
        assert_eq!(c.frame_time(190, 100_800), 100_800);
    }
}

#[cfg(test)]
mod yolo_image_tests {
    use super::*;

    /// A camera-like picture: a gradient with noise, so a lossy codec cannot keep it exactly.
    fn picture(w: usize, h: usize) -> Vec<u8> {
        let mut seed = 12345u32;
        (0..w * h * 3)
            .map(|i| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((i % (w * 3)) as u32 / 8 + (seed >> 16) % 24) as u8
            })
            .collect()
    }

    fn decoded(image: &[u8]) -> Vec<u8> {
        let m = imgcodecs::imdecode(&Vector::from_slice(image), imgcodecs::IMREAD_COLOR).unwrap();
        m.data_bytes().unwrap().to_vec()
    }

    #[test]
    fn yolo_gets_the_decoded_picture_itself_unless_jpeg_is_asked_for() {
        let (w, h) = (64, 36);
        let bgr = picture(w, h);
        let mut frames = YoloFrames {
            fps: 2.0,
            recording_fps: 1.0,
            max_frame_height: 720,
            format: FrameFormat::Png,
            jpeg_quality: 85,
        };
        let png = ColourFrames::new(&frames, w as u32, h as u32, 18).yolo_image(&bgr).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        assert!(decoded(&png) == bgr, "PNG is lossless: YOLO scores exactly what was decoded");
        frames.format = FrameFormat::Jpeg;
        let jpeg = ColourFrames::new(&frames, w as u32, h as u32, 18).yolo_image(&bgr).unwrap();
        assert!(jpeg.starts_with(b"\xff\xd8"));
        assert!(decoded(&jpeg) != bgr, "JPEG is not");
    }
}

//! A channel's reader: the detect stream played in process (the gate's packets, decoded as
//! it picks them) or through one ffmpeg decoding every frame, the time each frame stands for,
//! and why a reader stopped ([`ReadError`], the channel's reason for going offline).

use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cctv_common::config::MotionConfig;
use cctv_common::events::now_ms;
use cctv_common::ffmpeg::{self, FfmpegCommand, FfmpegProcess, Stopper, VideoSize};
use cctv_common::jobs::{MotionChannel, YoloFrames};
use tokio::sync::mpsc::UnboundedSender;

use super::analysis::Analysis;
use super::frames::{FrameMeta, FrameSource, ReadError};
use super::{ChannelMsg, ChannelShared};
use crate::decode::{AvcDecoder, PictureFormat};
use crate::flv::{FlvReader, FlvTag, FLV_CODEC_AVC};
use crate::gate::Gate;
use crate::rtmp::{RtmpPlayer, RtmpStop};

/// Frames the gate left undecoded, counted in time: all of the time between packets while
/// the gate is closed, but for the keyframes it has analysed; when it opens, the packets it
/// kept and now decodes are analysed after all (with their keyframe, when that was kept
/// undecoded), so their time is given back.
#[derive(Debug)]
pub(super) struct GatedTime {
    fps: f64,
    interval_ms: f64,
    gated_ms: f64,
    last_arrival: Option<i64>,
}

impl GatedTime {
    pub(super) fn new(fps: f64) -> Self {
        Self { fps, interval_ms: 1000.0 / fps, gated_ms: 0.0, last_arrival: None }
    }

    /// A packet arrived at `taken` (ms). `analysed_keyframe`: a keyframe the gate analyses;
    /// `open`: the gate after this packet; `reopened`: the gate opened on it, and the first
    /// packet it now decodes arrived at that time (and is a keyframe or not).
    pub(super) fn packet(&mut self, taken: i64, analysed_keyframe: bool, open: bool, reopened: Option<(i64, bool)>) {
        let gap = self.last_arrival.map_or(0, |t| (taken - t).max(0)) as f64;
        self.last_arrival = Some(taken);
        if !open {
            self.gated_ms += gap - if analysed_keyframe { self.interval_ms } else { 0.0 };
        }
        if let Some((first_ms, first_is_keyframe)) = reopened {
            self.gated_ms -= (taken - first_ms) as f64;
            if first_is_keyframe && first_ms < taken {
                self.gated_ms -= self.interval_ms;
            }
        }
        self.gated_ms = self.gated_ms.max(0.0);
    }

    /// The time gated so far, in frames at `fps`.
    pub(super) fn frames(&self) -> u64 {
        (self.gated_ms * self.fps / 1000.0) as u64
    }
}

/// Reads the stream until it ends, fails, stalls or the channel is stopped. Returns the reason
/// the channel went offline.
pub(super) fn read_stream(
    ch: &MotionChannel,
    url: &str,
    params: &MotionConfig,
    yolo: Option<&YoloFrames>,
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
) -> Result<(), ReadError> {
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
        // gets it as PNG (or JPEG).
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
fn with_ffmpeg_reason(error: ReadError, process: &FfmpegProcess) -> ReadError {
    let tail = process.stderr_tail();
    let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    if last.is_empty() {
        error
    } else {
        ReadError::WithFfmpeg { error: Box::new(error), ffmpeg: last }
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
) -> Result<(), ReadError> {
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
    let mut process =
        FfmpegProcess::spawn(format!("motion ch{}", ch.id), cmd, true).map_err(|e| ReadError::Spawn(e.to_string()))?;
    shared.begin_attempt(vec![ReaderStop::Ffmpeg(process.stopper())]);
    let result = (|| {
        let stdout = process.take_stdout().ok_or(ReadError::NoStdout)?;
        let size =
            process.wait_output_video(Duration::from_secs_f64(params.stall_timeout_secs)).ok_or(ReadError::NoVideo)?;
        Analysis::new(ch, params, yolo, shared, out, size, false)?.run(&mut DecodedFrames(stdout))
    })();
    let stalled = shared.end_attempt(params.stall_timeout_secs);
    process.stop(Duration::from_secs(2));
    if let Some(stalled) = stalled {
        return Err(stalled);
    }
    result.map_err(|e| with_ffmpeg_reason(e, &process))
}

/// Why a gated reader stopped.
enum GatedError {
    /// The detect stream's codec (FLV codec id) is not H.264: read it decoded instead.
    Unsupported(u8),
    Offline(ReadError),
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
        let player = RtmpPlayer::connect(url, stall).map_err(|e| offline(ReadError::Play(e.to_string())))?;
        let stop = player.stopper().map_err(|e| offline(ReadError::Play(e.to_string())))?;
        (None, Packets::Rtmp(Box::new(player)), ReaderStop::Rtmp(stop))
    } else {
        let mut cmd = ffmpeg::command();
        input_args(&mut cmd, params);
        cmd.input(url).args(["-map", "0:v:0", "-an", "-sn", "-dn", "-c:v", "copy"]);
        // Each packet on its own, at once: buffered, a still scene's tiny packets would wait for 32 KiB.
        cmd.args(["-flush_packets", "1", "-flvflags", "no_duration_filesize", "-f", "flv", "pipe:1"]);
        let mut reader = FfmpegProcess::spawn(format!("motion ch{} packets", ch.id), cmd, true)
            .map_err(|e| offline(ReadError::Spawn(e.to_string())))?;
        let stop = ReaderStop::Ffmpeg(reader.stopper());
        let Some(stdout) = reader.take_stdout() else {
            reader.stop(Duration::from_secs(2));
            return Err(offline(ReadError::NoStdout));
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
                    Analysis::new(ch, params, yolo, shared, out, size, true).and_then(|mut a| a.run(&mut frames))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(ReadError::NoVideo),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(ReadError::Ended),
            }
        };
        // The feeder ends when its packets do (stopped here) or when it finds the analysis
        // gone (the receiver, dropped above).
        shared.terminate_readers();
        let fed = feeder.join().unwrap_or_else(|_| Err(offline(ReadError::FeederPanicked)));
        (fed, analysed)
    });
    let stalled = shared.end_attempt(params.stall_timeout_secs);
    if let Some(r) = reader.as_mut() {
        r.stop(Duration::from_secs(2));
    }
    if let Some(stalled) = stalled {
        return Err(offline(stalled));
    }
    let with_reason = |m: ReadError| match &reader {
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
    // The count goes on across reader runs, as `frames_total` does.
    let gated_before = shared.frames_gated.load(Ordering::Relaxed);
    let mut gated = GatedTime::new(params.fps);
    let mut clock = StreamClock::default();
    loop {
        let tag = match flv.next_tag() {
            Ok(Some(tag)) => tag,
            // The reader ended: its log says why (played in process: the server ended it).
            Ok(None) if matches!(flv, Packets::Rtmp(_)) => return Err(GatedError::Offline(ReadError::ServerEnded)),
            Ok(None) => return Ok(()),
            Err(e) => return Err(GatedError::Offline(ReadError::Packets(e))),
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
                            .map_err(|e| GatedError::Offline(ReadError::Decoder(e.to_string())))?,
                    );
                    config = Some(tag);
                }
                Some(c) if c.body == tag.body => {}
                // New stream parameters (the camera's resolution changed): a new decoder.
                Some(_) => return Err(GatedError::Offline(ReadError::ParametersChanged)),
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
        let reopened = step.opened.and(step.feed.first()).map(|f| (f.arrived_ms, f.item.is_keyframe()));
        gated.packet(taken, key && !step.skipped, gate.is_open(), reopened);
        shared.frames_gated.store(gated_before + gated.frames(), Ordering::Relaxed);
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
                .map_err(|e| GatedError::Offline(ReadError::Decoder(e.to_string())))?;
            if gone {
                return Ok(());
            }
        }
    }
}

/// What stops a reader of the detect stream from another thread (the stall watchdog, a stop).
#[derive(Debug)]
pub(super) enum ReaderStop {
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

fn read_frame(r: &mut impl Read, frame: &mut [u8]) -> Result<(), ReadError> {
    r.read_exact(frame).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadError::Ended
        } else {
            ReadError::Frames(e)
        }
    })
}

/// Every frame, analysed as it comes.
struct DecodedFrames(std::process::ChildStdout);

impl FrameSource for DecodedFrames {
    fn next_frame(&mut self, frame: &mut [u8]) -> Result<FrameMeta, ReadError> {
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
    fn next_frame(&mut self, frame: &mut [u8]) -> Result<FrameMeta, ReadError> {
        let picture = match self.first.take() {
            Some(p) => p,
            None => self.pictures.recv().map_err(|_| ReadError::Ended)?,
        };
        if picture.pixels.len() != frame.len() {
            return Err(ReadError::ResolutionChanged { from: self.size, to: picture.size });
        }
        frame.copy_from_slice(&picture.pixels);
        let _ = self.spare.send(picture.pixels);
        Ok(picture.meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_counts_the_time_between_packets_less_the_keyframes_it_analyses() {
        let mut t = GatedTime::new(5.0); // 200 ms a frame
        t.packet(0, true, false, None);
        // 2 s of P-frames at 10 fps, closed.
        for i in 1..=20 {
            t.packet(i * 100, false, false, None);
        }
        assert_eq!(t.frames(), 10, "2 s gated at 5 fps");
        // The next keyframe is analysed: one frame's time is not gated.
        t.packet(2_100, true, false, None);
        assert_eq!(t.frames(), 9, "2.1 s, less the analysed keyframe's 0.2 s: 1.9 s");
    }

    #[test]
    fn an_open_gate_counts_nothing_and_an_opening_gate_gives_back_what_it_decodes_now() {
        let mut t = GatedTime::new(5.0);
        t.packet(0, true, false, None);
        for i in 1..=10 {
            t.packet(i * 100, false, false, None);
        }
        assert_eq!(t.frames(), 5);
        // Opens at 1.1 s and decodes from its kept keyframe at 0 ms: all of it is analysed.
        t.packet(1_100, false, true, Some((0, true)));
        assert_eq!(t.frames(), 0, "nothing was left undecoded");
        for i in 12..=30 {
            t.packet(i * 100, false, true, None);
        }
        assert_eq!(t.frames(), 0, "open: every frame decoded");
    }

    #[test]
    fn only_a_channels_own_settings_are_permanent() {
        assert!(ReadError::Masks("bad polygon".into()).is_permanent());
        let wrapped = ReadError::WithFfmpeg { error: Box::new(ReadError::Masks("x".into())), ffmpeg: "y".into() };
        assert!(wrapped.is_permanent());
        assert!(!ReadError::Ended.is_permanent());
        assert!(!ReadError::Stalled(20.0).is_permanent());
        let size = |width, height| VideoSize { width, height };
        assert_eq!(
            ReadError::ResolutionChanged { from: size(1280, 720), to: size(640, 360) }.to_string(),
            "resolution changed 1280x720 → 640x360, decoder restarted"
        );
        assert_eq!(ReadError::Stalled(20.0).to_string(), "stalled: no frame for 20 s");
    }

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

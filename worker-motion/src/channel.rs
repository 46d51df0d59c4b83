//! One channel of a batch: an ffmpeg reading its detect stream from nginx-rtmp as small grey raw
//! frames, the detector, and the hysteresis, on one dedicated thread.
//!
//! Failures stay inside the channel: a missing or stalled stream is reported offline with the
//! reason and retried with exponential backoff; the other channels of the batch never notice.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cctv_common::config::MotionConfig;
use cctv_common::events::{now_ms, ChannelState, MotionEventKind, NormBox};
use cctv_common::ffmpeg::{self, FfmpegProcess, Stopper};
use cctv_common::jobs::MotionChannel;
use tokio::sync::mpsc::UnboundedSender;

use crate::detector::{Hysteresis, MotionDetector, Transition};

/// Frames analysed after which a failing channel's backoff resets.
const HEALTHY_FRAMES: u64 = 50;

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
    },
}

/// State shared between a channel thread and its batch supervisor.
#[derive(Debug)]
pub struct ChannelShared {
    pub id: u32,
    stop: AtomicBool,
    last_frame_ms: AtomicI64,
    last_motion_ms: AtomicI64,
    frames: std::sync::atomic::AtomicU64,
    stopper: Mutex<Option<Stopper>>,
    stalled: AtomicBool,
    status: Mutex<(ChannelState, Option<String>)>,
}

impl ChannelShared {
    fn new(id: u32) -> Self {
        Self {
            id,
            stop: AtomicBool::new(false),
            last_frame_ms: AtomicI64::new(0),
            last_motion_ms: AtomicI64::new(0),
            frames: 0.into(),
            stopper: Mutex::new(None),
            stalled: AtomicBool::new(false),
            status: Mutex::new((ChannelState::Connecting, None)),
        }
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
        out: UnboundedSender<ChannelMsg>,
    ) -> Self {
        let shared = Arc::new(ChannelShared::new(channel.id));
        let url = format!("{}/{}", play_url.trim_end_matches('/'), channel.detect_stream);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("motion ch{}", channel.id))
            .spawn(move || channel_loop(&channel, &url, &params, &s, &out))
            .expect("spawning a thread");
        Self { shared, started_ms: AtomicI64::new(now_ms()), thread: Some(thread) }
    }

    /// Stops the thread and waits for it (its ffmpeg gets SIGTERM).
    pub fn stop(mut self) {
        self.shared.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn channel_loop(
    ch: &MotionChannel,
    url: &str,
    params: &MotionConfig,
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
) {
    let span = tracing::info_span!("channel", channel = ch.id, stream = %ch.detect_stream);
    let _enter = span.enter();
    let initial = Duration::from_secs_f64(params.retry_initial_secs);
    let mut backoff = initial;
    while !shared.stopping() {
        shared.set_status(ChannelState::Connecting, None);
        let frames_before = shared.frames();
        let reason = match read_stream(ch, url, params, shared, out) {
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
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
) -> Result<(), String> {
    let stall_us = (params.stall_timeout_secs * 1_000_000.0) as u64;
    let mut cmd = ffmpeg::command();
    cmd.args(["-nostats", "-fflags", "nobuffer", "-analyzeduration", "1000000", "-probesize", "1000000"])
        .args(["-rw_timeout", &stall_us.to_string()])
        .args(["-threads", &params.decode_threads.to_string()])
        .input(url)
        .args(["-an", "-sn", "-dn"])
        .args(["-vf", &format!("fps={},scale=-2:{}", params.fps, params.frame_height)])
        .args(["-pix_fmt", "gray", "-f", "rawvideo", "pipe:1"]);
    let mut process = FfmpegProcess::spawn(format!("motion ch{}", ch.id), cmd, true).map_err(|e| e.to_string())?;
    shared.stalled.store(false, Ordering::Relaxed);
    *shared.stopper.lock().unwrap_or_else(|e| e.into_inner()) = Some(process.stopper());
    let result = analyse(ch, params, shared, out, &mut process);
    *shared.stopper.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
    shared: &ChannelShared,
    out: &UnboundedSender<ChannelMsg>,
    process: &mut FfmpegProcess,
) -> Result<(), String> {
    let mut stdout = process.take_stdout().ok_or("ffmpeg stdout not captured")?;
    let size = process
        .wait_output_video(Duration::from_secs_f64(params.stall_timeout_secs))
        .ok_or_else(|| "no video from stream".to_string())?;
    let mut detector = MotionDetector::new(params, size.width, size.height);
    let mut hysteresis = Hysteresis::new(params);
    let mut frame = vec![0u8; (size.width * size.height) as usize];
    tracing::info!(width = size.width, height = size.height, "channel online");
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
        shared.frames.fetch_add(1, Ordering::Relaxed);
        let verdict = match detector.process(&frame) {
            Ok(v) => v,
            Err(e) => break Err(format!("motion detector: {e}")),
        };
        if verdict.recalibrated {
            tracing::info!("scene changed as a whole (lights, IR); background recalibrated");
        }
        if verdict.motion {
            shared.last_motion_ms.store(ts, Ordering::Relaxed);
        }
        let transition = hysteresis.update(ts, verdict.motion, verdict.area);
        shared.set_status(if hysteresis.active().is_some() { ChannelState::Motion } else { ChannelState::Idle }, None);
        if let Some(t) = transition {
            emit(ch.id, t, ts, verdict.boxes, out);
        }
    };
    // Close an event that was in progress when the stream went away.
    if let Some(t) = hysteresis.finish() {
        emit(ch.id, t, now_ms(), Vec::new(), out);
    }
    result
}

fn emit(channel: u32, t: Transition, ts_ms: i64, boxes: Vec<NormBox>, out: &UnboundedSender<ChannelMsg>) {
    let msg = match t {
        Transition::Start(a) => {
            tracing::info!(event = %a.event_id, area = a.max_area, "motion started");
            ChannelMsg::Motion {
                channel,
                kind: MotionEventKind::Start,
                event_id: a.event_id,
                ts_ms,
                started_ms: a.started_ms,
                last_motion_ms: None,
                area: a.max_area,
                boxes,
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
            }
        }
    };
    // The batch is gone only when the job is ending; nothing left to tell then.
    let _ = out.send(msg);
}

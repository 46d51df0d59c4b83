//! `scheduler relay`: the camera relays, run next to nginx-rtmp.
//!
//! Every camera stream is probed (codec, size, frame rate, audio; [`cctv_common::probe`]) when
//! its relay starts and whenever it restarts; the probe decides how the stream travels
//! ([`CameraPlan`]):
//! - H.264 is copied into nginx-rtmp (`-c copy`): `ch<id>` from `source`, `ch<id>_sub` from
//!   `detect_source`. While nginx-rtmp's `/stat` can be read, both go through one ffmpeg per
//!   camera (half the memory; a watchdog restarts it when one stream stops growing there); where
//!   it cannot, or after [`SPLIT_AFTER_FAILURES`] failed runs, one ffmpeg per stream.
//! - A main stream nginx-rtmp cannot carry (H.265: Debian's ffmpeg 5.1 has no HEVC in FLV and
//!   nginx-rtmp's HLS is H.264-only) is copied into the relay's own rolling buffer
//!   ([`crate::ring`]), which record workers read like nginx-rtmp's (`<ns>:relay:playlist:<id>`
//!   says where).
//! - A detect stream nginx-rtmp cannot carry (an H.265 sub-stream, or the main stream of a
//!   camera without one) is transcoded to a small H.264 (640 px wide at most, a keyframe every
//!   2 s) into nginx-rtmp, so motion and YOLO run on it unchanged.
//! - Such a camera's streams each get their own ffmpeg: one stream's codec never takes the
//!   other down.
//!
//! Audio (`relay.audio`): AAC and MP3 are copied, anything else (G.711, ...) becomes AAC.
//! A relay that dies is restarted with exponential backoff (reset after a minute of health); a
//! clean end of stream is retried at once. Status per channel goes to `<ns>:status:relay:<id>`
//! with a TTL; its reasons are ffmpeg's first meaningful error in plain words. Camera URLs
//! appear in no log, status or error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cctv_common::config::{Config, RelayAudio};
use cctv_common::events::now_ms;
use cctv_common::ffmpeg::{self, FfmpegProcess, Stopper};
use cctv_common::heartbeat;
use cctv_common::keys::Keys;
use cctv_common::probe::StreamProbe;
use cctv_common::shutdown::CancellationToken;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

/// A relay running this long counts as healthy: its backoff resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// A run this long that ends cleanly is not a failure.
const CLEAN_RUN: Duration = Duration::from_secs(5);
/// Status TTL; refreshed every 2 s.
const STATUS_TTL_SECS: u64 = 10;
/// `<ns>:relay:playlist:<id>` TTL, refreshed every 2 s: long enough that a relay restart
/// does not send record jobs to a buffer the channel does not have.
const RECORD_PLAYLIST_TTL_SECS: u64 = 120;
/// A camera's shared process that failed this many times in a row, each run shorter than
/// [`HEALTHY_AFTER`], gives way to one process per stream.
pub const SPLIT_AFTER_FAILURES: u32 = 3;
/// A shared process is judged by `/stat` only once it has run this long (connecting, probing).
const WATCH_GRACE: Duration = Duration::from_secs(15);
/// A stream the process has not yet got to nginx-rtmp is judged only after this long: a relay
/// publishes once both inputs are probed, which on a busy host or a slow camera takes a while
/// (ffmpeg's own `-timeout` ends an input that sends nothing).
const START_GRACE: Duration = Duration::from_secs(60);
/// A stream of a shared process whose byte count at nginx-rtmp stood still this long is dead.
const STREAM_STALE: Duration = Duration::from_secs(10);
/// How often `/stat` is read; a reading older than [`STAT_FRESH`] does not count.
const STAT_EVERY: Duration = Duration::from_secs(2);
const STAT_FRESH: Duration = Duration::from_secs(10);

/// One relayed stream's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RelayState {
    pub stream: String,
    pub running: bool,
    /// Why the last run ended (redacted ffmpeg message).
    pub last_error: Option<String>,
    pub restarts: u64,
    pub since_ms: Option<i64>,
    /// What the stream carries, from its last probe (at every start and restart).
    #[serde(default)]
    pub probe: Option<StreamProbe>,
    /// How it travels (e.g. "nginx-rtmp, stream copy", "relay buffer, stream copy").
    #[serde(default)]
    pub route: Option<String>,
}

/// `<ns>:status:relay:<id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RelayStatus {
    pub channel: u32,
    pub main: RelayState,
    pub sub: Option<RelayState>,
    pub host: String,
    pub updated_ms: i64,
    /// Main and sub-stream are relayed by one ffmpeg (see the module documentation).
    #[serde(default)]
    pub one_process: bool,
    /// The H.264 detect stream transcoded from the main stream of a camera that has no
    /// sub-stream and whose main stream nginx-rtmp cannot carry.
    #[serde(default)]
    pub detect: Option<RelayState>,
}

impl RelayStatus {
    /// The main stream's relay, then the sub-stream's and the transcoded detect stream's.
    pub fn streams(&self) -> impl Iterator<Item = &RelayState> {
        std::iter::once(&self.main).chain(self.sub.as_ref()).chain(self.detect.as_ref())
    }

    /// "main H.265 1280x720 25 fps · audio G.711 A-law · sub H.264 640x360": what each probed
    /// stream carries.
    pub fn codecs(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(p) = &self.main.probe {
            parts.push(format!("main {}", p.summary()));
        }
        if let Some(p) = self.sub.as_ref().and_then(|s| s.probe.as_ref()) {
            parts.push(format!("sub {}", p.summary()));
        }
        (!parts.is_empty()).then(|| parts.join(" · "))
    }
}

/// How one stream of a camera travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Stream copy into nginx-rtmp (H.264).
    Nginx,
    /// Stream copy into the relay's own rolling buffer (a main stream nginx-rtmp cannot carry).
    Buffer,
    /// Transcoded to H.264 into nginx-rtmp (a detect stream nginx-rtmp cannot carry).
    Transcode,
}

impl Route {
    pub fn describe(self) -> &'static str {
        match self {
            Route::Nginx => "nginx-rtmp, stream copy",
            Route::Buffer => "relay buffer, stream copy (nginx-rtmp cannot carry this codec)",
            Route::Transcode => "nginx-rtmp, transcoded to H.264 for detection",
        }
    }
}

/// How a camera's streams travel, from their probes (`None`: not probed yet or the probe
/// failed: treated as H.264, as every camera was before probing, and probed again at the
/// next restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraPlan {
    pub main: Route,
    /// The sub-stream's route, for a camera with one.
    pub sub: Option<Route>,
    /// A camera without sub-stream whose main stream goes to the buffer: its main stream is
    /// also transcoded into nginx-rtmp (as `ch<id>`) for detection and live view.
    pub detect_transcode: bool,
}

fn carried(probe: Option<&StreamProbe>) -> bool {
    probe.and_then(|p| p.video.as_ref()).is_none_or(|v| v.nginx_carries())
}

impl CameraPlan {
    pub fn of(main: Option<&StreamProbe>, sub: Option<Option<&StreamProbe>>) -> Self {
        let main_route = if carried(main) { Route::Nginx } else { Route::Buffer };
        let sub_route = sub.map(|p| if carried(p) { Route::Nginx } else { Route::Transcode });
        CameraPlan { main: main_route, sub: sub_route, detect_transcode: sub.is_none() && main_route == Route::Buffer }
    }

    /// Every stream is copied into nginx-rtmp (the case one shared process may relay).
    pub fn all_nginx(&self) -> bool {
        self.main == Route::Nginx && self.sub.is_none_or(|r| r == Route::Nginx)
    }
}

/// The audio a relay writes for `setting` and what the camera sends: AAC and MP3 are copied
/// (FLV and MPEG-TS carry them), anything else is transcoded to AAC; unknown audio is copied.
pub fn audio_for(setting: RelayAudio, probe: Option<&StreamProbe>) -> RelayAudio {
    match (setting, probe.and_then(|p| p.audio.as_ref())) {
        (RelayAudio::Copy, Some(a)) if !a.copyable() => RelayAudio::Aac,
        (s, _) => s,
    }
}

/// Bitstream filter of every relay's video (see [`relay_command`]).
pub const RELAY_FIX_MISSING_PTS: &str = r"setts=pts=if(eq(PTS\,NOPTS)\,DTS\,PTS)";

/// The ffmpeg input options and input of one camera stream.
fn relay_input(cmd: &mut ffmpeg_sidecar::command::FfmpegCommand, source: &str, timeout_s: u64) {
    let scheme = source.split("://").next().unwrap_or("");
    match scheme {
        "rtsp" | "rtsps" => {
            cmd.args(["-rtsp_transport", "tcp", "-timeout", &(timeout_s * 1_000_000).to_string()]);
        }
        "rtmp" | "http" | "https" => {
            cmd.args(["-rw_timeout", &(timeout_s * 1_000_000).to_string()]);
        }
        // Files (demos): paced like a live camera, looped.
        "file" => {
            cmd.args(["-re", "-stream_loop", "-1"]);
        }
        _ => {}
    }
    cmd.input(source.strip_prefix("file://").unwrap_or(source));
}

/// The output options and output of input `index`'s video (and audio per `audio`).
fn relay_output(cmd: &mut ffmpeg_sidecar::command::FfmpegCommand, index: usize, publish: &str, audio: RelayAudio) {
    cmd.args(["-map", &format!("{index}:v:0"), "-c:v", "copy"]);
    // A camera that sends B-frames over RTSP: ffmpeg's RTP demuxer gives the first packet no
    // PTS and FLV refuses it ("Packet is missing PTS"), so the relay would never publish. Such a
    // packet gets its DTS (which ffmpeg estimates) as PTS; every other packet is untouched.
    cmd.args(["-bsf:v", RELAY_FIX_MISSING_PTS]);
    audio_output(cmd, index, audio);
    cmd.args(["-f", "flv"]).output(publish);
}

/// Input `index`'s first audio track per `audio` (see [`audio_for`]: FLV and MPEG-TS carry
/// AAC/MP3; other camera codecs, G.711 and the like, need `aac`).
fn audio_output(cmd: &mut ffmpeg_sidecar::command::FfmpegCommand, index: usize, audio: RelayAudio) {
    let audio_map = format!("{index}:a:0?");
    match audio {
        RelayAudio::Drop => cmd.arg("-an"),
        RelayAudio::Copy => cmd.args(["-map", &audio_map, "-c:a", "copy"]),
        RelayAudio::Aac => cmd.args(["-map", &audio_map, "-c:a", "aac", "-b:a", "64k", "-ar", "44100"]),
    };
}

/// A relay's ffmpeg up to its first output: common options and the camera input.
fn input_command(source: &str, timeout_s: u64) -> ffmpeg_sidecar::command::FfmpegCommand {
    let mut cmd = ffmpeg::command();
    cmd.arg("-nostats");
    relay_input(&mut cmd, source, timeout_s);
    cmd
}

/// The ffmpeg of a main stream nginx-rtmp cannot carry: stream copy into the relay's buffer
/// (`ring_args`: [`crate::ring::Ring::output_args`]), audio per `audio`. No `-xerror`: MPEG-TS
/// is strict about timestamps where FLV was tolerant, and one odd packet must not end it.
pub fn buffer_command(
    source: &str,
    ring_args: &[String],
    audio: RelayAudio,
    timeout_s: u64,
) -> ffmpeg_sidecar::command::FfmpegCommand {
    let mut cmd = input_command(source, timeout_s);
    cmd.args(["-map", "0:v:0", "-c:v", "copy", "-bsf:v", RELAY_FIX_MISSING_PTS]);
    audio_output(&mut cmd, 0, audio);
    cmd.args(ring_args);
    cmd
}

/// The ffmpeg of a detect stream nginx-rtmp cannot carry: decoded and encoded to H.264 at
/// most 640 px wide at the camera's rate, a keyframe every 2 s (the motion gate's pace), no
/// B-frames or look-ahead (latency), no audio, into nginx-rtmp. (A rate cap of 10 or 15 fps
/// saved 20-30 % of its CPU but left 2-3.5 % of the motion worker's frames unaccounted for in
/// the load test: not taken; docs/loadtest.md.)
pub fn transcode_command(source: &str, publish: &str, timeout_s: u64) -> ffmpeg_sidecar::command::FfmpegCommand {
    let mut cmd = ffmpeg::command();
    // One decoder thread: frame threading holds a frame per extra thread (a latency of 0.2 s
    // at 10 fps on this 2-core machine).
    cmd.args(["-nostats", "-threads", "1"]);
    relay_input(&mut cmd, source, timeout_s);
    let vf = "scale='min(640,iw)':-2";
    cmd.args(["-map", "0:v:0", "-vf", vf, "-c:v", "libx264", "-preset", "ultrafast"]);
    cmd.args(["-tune", "zerolatency", "-pix_fmt", "yuv420p", "-force_key_frames", "expr:gte(t,n_forced*2)"]);
    cmd.args(["-an", "-f", "flv"]).output(publish);
    cmd
}

/// The ffmpeg arguments of one relay (input options, input, output options, output).
pub fn relay_command(
    source: &str,
    publish: &str,
    audio: RelayAudio,
    timeout_s: u64,
) -> ffmpeg_sidecar::command::FfmpegCommand {
    let mut cmd = input_command(source, timeout_s);
    relay_output(&mut cmd, 0, publish, audio);
    cmd
}

/// One ffmpeg relaying a camera's main stream (input 0, with `audio`) and its sub-stream
/// (input 1, video only). `-xerror`: an input that fails ends the process, so the camera is
/// restarted whole at once instead of relaying one stream until the watchdog notices.
pub fn camera_relay_command(
    main: (&str, &str),
    sub: (&str, &str),
    audio: RelayAudio,
    timeout_s: u64,
) -> ffmpeg_sidecar::command::FfmpegCommand {
    let mut cmd = ffmpeg::command();
    cmd.args(["-nostats", "-xerror"]);
    relay_input(&mut cmd, main.0, timeout_s);
    relay_input(&mut cmd, sub.0, timeout_s);
    relay_output(&mut cmd, 0, main.1, audio);
    relay_output(&mut cmd, 1, sub.1, RelayAudio::Drop);
    cmd
}

/// The streams nginx-rtmp receives, from its `/stat` XML: name → bytes received so far, for
/// every stream that has a publisher.
pub fn published_streams(xml: &str) -> HashMap<String, u64> {
    let tag = |s: &str, name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let from = s.find(&open)? + open.len();
        let to = s[from..].find(&format!("</{name}>"))? + from;
        Some(s[from..to].to_string())
    };
    xml.split("<stream>")
        .skip(1)
        .filter_map(|s| {
            let s = &s[..s.find("</stream>").unwrap_or(s.len())];
            if !s.contains("<publishing/>") {
                return None;
            }
            Some((tag(s, "name")?, tag(s, "bytes_in")?.trim().parse().ok()?))
        })
        .collect()
}

/// What the watchdog knows of nginx-rtmp's streams: per stream, its byte count and when it
/// last changed.
#[derive(Default)]
pub struct StreamWatch {
    read_at: Option<Instant>,
    streams: HashMap<String, (u64, Instant)>,
}

impl StreamWatch {
    /// Takes a `/stat` reading made at `now` (`None`: it could not be read).
    pub fn update(&mut self, reading: Option<HashMap<String, u64>>, now: Instant) {
        let Some(reading) = reading else { return };
        self.read_at = Some(now);
        self.streams.retain(|name, _| reading.contains_key(name));
        for (name, bytes) in reading {
            let entry = self.streams.entry(name).or_insert((bytes, now));
            if entry.0 != bytes {
                *entry = (bytes, now);
            }
        }
    }

    /// A recent reading exists: the watchdog can see the streams.
    pub fn fresh(&self, now: Instant) -> bool {
        self.read_at.is_some_and(|t| now.duration_since(t) < STAT_FRESH)
    }

    /// `stream`'s byte count changed after `t` (a process started at `t` publishes it).
    pub fn grew_since(&self, stream: &str, t: Instant) -> bool {
        self.streams.get(stream).is_some_and(|(_, changed)| *changed > t)
    }

    /// Why `stream` is dead at `now`, when it is: not published, or no new byte for
    /// [`STREAM_STALE`]. `None` while alive or when there is no fresh reading to judge by.
    pub fn dead(&self, stream: &str, now: Instant) -> Option<String> {
        if !self.fresh(now) {
            return None;
        }
        match self.streams.get(stream) {
            None => Some(format!("{stream} is not published at nginx-rtmp")),
            Some((_, changed)) if now.duration_since(*changed) >= STREAM_STALE => {
                Some(format!("{stream} sent nginx-rtmp nothing for {} s", now.duration_since(*changed).as_secs()))
            }
            Some(_) => None,
        }
    }
}

/// The process a relay thread runs now, for the watchdog (shared processes only) and for
/// stopping it.
struct Running {
    stopper: Stopper,
    started: Instant,
    /// The streams it publishes; empty for a one-stream process (not watched).
    watched: Vec<String>,
    /// Set by the watchdog when it ended the process: the reason reported.
    killed: Option<String>,
    /// Per watched stream: its bytes grew at nginx-rtmp since this process started.
    seen: Vec<bool>,
}

type RunningSlot = Arc<Mutex<Option<Running>>>;
type WatchedSlots = Arc<Mutex<Vec<RunningSlot>>>;
type StateCell = Arc<Mutex<RelayState>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The watchdog's round: ends every shared process that has run [`WATCH_GRACE`] and one of whose
/// streams is dead at nginx-rtmp: one that reached nginx and stopped, or one that never did in
/// [`START_GRACE`].
fn watchdog_round(watch: &StreamWatch, slots: &[RunningSlot], now: Instant) {
    for slot in slots {
        let mut slot = lock(slot);
        let Some(running) = slot.as_mut() else { continue };
        let age = now.duration_since(running.started);
        if running.killed.is_some() || age < WATCH_GRACE {
            continue;
        }
        running.seen.resize(running.watched.len(), false);
        for (stream, seen) in running.watched.iter().zip(running.seen.iter_mut()) {
            *seen |= watch.grew_since(stream, running.started);
        }
        let dead = running.watched.iter().zip(&running.seen).find_map(|(stream, &seen)| {
            if seen || age >= START_GRACE {
                watch.dead(stream, now)
            } else {
                None
            }
        });
        if let Some(why) = dead {
            tracing::warn!(reason = %why, "a stream of a camera's relay died: restarting the camera's relay");
            running.killed = Some(format!("{why} (the camera's relay was restarted)"));
            running.stopper.terminate();
        }
    }
}

/// A buffer output whose ffmpeg finished no fragment for this long (or twice its longest
/// fragment) is ended: the camera sends no keyframe, or its video stalled while its audio goes
/// on (ffmpeg's own `-timeout` ends one that sends nothing).
const NO_KEYFRAME_FOR: Duration = Duration::from_secs(20);

/// Runs `cmd` to its end with its state(s) marked running; the reason it ended, in plain words
/// (the watchdog's, or ffmpeg's first meaningful error). With `ring`, the buffer's fragments
/// are taken as ffmpeg finishes them, and a run that finishes none for [`NO_KEYFRAME_FOR`] is
/// ended.
fn run_once(
    label: &str,
    cmd: ffmpeg_sidecar::command::FfmpegCommand,
    states: &[&StateCell],
    slot: &RunningSlot,
    watched: Vec<String>,
    ring: Option<&mut crate::ring::Ring>,
) -> String {
    let mut p = match FfmpegProcess::spawn(format!("relay {label}"), cmd, false) {
        Err(e) => return ffmpeg::explain_failure(&e.to_string()),
        Ok(p) => p,
    };
    *lock(slot) =
        Some(Running { stopper: p.stopper(), started: Instant::now(), watched, killed: None, seen: Vec::new() });
    for st in states {
        let mut s = lock(st);
        s.running = true;
        s.since_ms = Some(now_ms());
    }
    tracing::info!("relay running");
    let r = match ring {
        None => p.wait().map(|_| ()),
        Some(ring) => {
            let started = Instant::now();
            let mut last_fragment = started;
            let status = loop {
                if let Some(status) = p.try_wait() {
                    break status;
                }
                std::thread::sleep(Duration::from_millis(100));
                match ring.poll(now_ms(), false) {
                    Ok(0) => {}
                    Ok(_) => last_fragment = Instant::now(),
                    Err(e) => tracing::warn!(error = %e, "cannot take the relay buffer's fragments"),
                }
                // A camera with long GOPs ("smart" codecs) cuts long fragments: judged by its own.
                let limit = NO_KEYFRAME_FOR.max(Duration::from_millis(2 * ring.longest_ms().max(0) as u64));
                if last_fragment.elapsed() >= limit {
                    let mut slot = lock(slot);
                    if let Some(running) = slot.as_mut().filter(|r| r.killed.is_none()) {
                        running.killed = Some(format!("no keyframe for {} s", last_fragment.elapsed().as_secs()));
                        running.stopper.terminate();
                    }
                }
            };
            // ffmpeg wrote its last part as it ended.
            if let Err(e) = ring.poll(now_ms(), true) {
                tracing::warn!(error = %e, "cannot take the relay buffer's last fragment");
            }
            if status.success() {
                Ok(())
            } else {
                Err(p.failure(format!("ffmpeg exited with {status}")))
            }
        }
    };
    let killed = lock(slot).take().and_then(|r| r.killed);
    if let Some(why) = killed {
        return why;
    }
    match r {
        Ok(()) => "stream ended".to_string(),
        Err(_) => ffmpeg::explain_failure(&p.stderr_tail()),
    }
}

/// Restart pacing of one relay loop.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: Duration::from_secs(1) }
    }

    /// Records a run of `ran` that ended for `reason` in `states`; how long to wait before the
    /// next, and whether the run was a failure (not a clean end, not a healthy run).
    fn ended(&mut self, reason: &str, ran: Duration, states: &[&StateCell]) -> (Duration, bool) {
        // A clean end after a real run (a camera that closed the session, a clip that
        // ended) is retried at once; failures back off.
        let clean_end = reason == "stream ended" && ran >= CLEAN_RUN;
        let healthy = ran >= HEALTHY_AFTER;
        if clean_end || healthy {
            self.next = Duration::from_secs(1);
        }
        let wait = if clean_end { Duration::from_millis(200) } else { self.next };
        for st in states {
            let mut s = lock(st);
            s.running = false;
            s.last_error = Some(reason.to_string());
            s.restarts += 1;
            s.since_ms = Some(now_ms());
        }
        tracing::warn!(reason = %reason, retry_in_ms = wait.as_millis() as u64, "relay stopped");
        self.next = (self.next * 2).min(Duration::from_secs(30));
        (wait, !clean_end && !healthy)
    }
}

/// Sleeps `wait` unless `stop` comes first.
fn pause(wait: Duration, stop: &CancellationToken) {
    let until = Instant::now() + wait;
    while Instant::now() < until && !stop.is_cancelled() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a stream's probe may take (ffprobe is killed 5 s after).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one relay loop writes.
#[derive(Clone, Debug)]
enum Output {
    /// Stream copy into nginx-rtmp; audio per the setting and the probe.
    Nginx { publish: String, audio: RelayAudio },
    /// Stream copy into the relay's own buffer in `dir`.
    Buffer { dir: std::path::PathBuf, keep_secs: u32, audio: RelayAudio },
    /// H.264 transcode into nginx-rtmp.
    Transcode { publish: String },
}

impl Output {
    fn route(&self) -> Route {
        match self {
            Output::Nginx { .. } => Route::Nginx,
            Output::Buffer { .. } => Route::Buffer,
            Output::Transcode { .. } => Route::Transcode,
        }
    }

    /// The stream, as last probed, still travels this way (an unknown codec fits anything).
    fn fits(&self, probe: Option<&StreamProbe>) -> bool {
        match probe.and_then(|p| p.video.as_ref()) {
            None => true,
            Some(v) => (self.route() == Route::Nginx) == v.nginx_carries(),
        }
    }
}

/// Probes `source` into `state`; the probe, or the last one when the stream cannot be probed
/// now (ffmpeg will then say why it cannot be read).
fn probe_into(source: &str, state: &StateCell) -> Option<StreamProbe> {
    probe_fresh(source, state).0
}

/// [`probe_into`], and whether the stream answered this time.
fn probe_fresh(source: &str, state: &StateCell) -> (Option<StreamProbe>, bool) {
    match cctv_common::probe::probe(source, PROBE_TIMEOUT) {
        Ok(p) => {
            tracing::info!(codecs = %p.summary(), "stream probed");
            lock(state).probe = Some(p.clone());
            (Some(p), true)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot probe the stream");
            (lock(state).probe.clone(), false)
        }
    }
}

/// Relays one stream to `output` until `stop`, probing it before every restart (the first run
/// uses the probe already in `state` when `probed`). A probe that no longer fits the output (a
/// camera switched codec) cancels `plan`: the camera is planned anew.
#[allow(clippy::too_many_arguments)]
fn relay_loop(
    label: &str,
    source: &str,
    output: &Output,
    state: &StateCell,
    slot: &RunningSlot,
    stop: &CancellationToken,
    plan: &CancellationToken,
    mut probed: bool,
) {
    lock(state).route = Some(output.route().describe().to_string());
    let mut backoff = Backoff::new();
    let mut ring: Option<crate::ring::Ring> = None;
    let mut audio_guard = AudioGuard::default();
    while !stop.is_cancelled() {
        let (probe, answered) = if probed { (lock(state).probe.clone(), true) } else { probe_fresh(source, state) };
        probed = false;
        if stop.is_cancelled() {
            break;
        }
        if !output.fits(probe.as_ref()) {
            tracing::info!(route = ?output.route(), "the stream's codec changed: planning the camera anew");
            plan.cancel();
            break;
        }
        let started = Instant::now();
        // What a buffer's failure adds: the codec that sent the stream there.
        let mut buffer_note = None;
        let reason = match output {
            Output::Nginx { publish, audio } => {
                let cmd = relay_command(source, publish, audio_guard.audio(*audio, probe.as_ref()), 10);
                run_once(label, cmd, &[state], slot, Vec::new(), None)
            }
            Output::Transcode { publish } => {
                // Video only: its bytes at nginx-rtmp grow only while video comes, so the
                // watchdog sees a camera whose video stalled while its session lives on.
                let watched = publish.rsplit('/').next().map(str::to_string).into_iter().collect();
                run_once(label, transcode_command(source, publish, 10), &[state], slot, watched, None)
            }
            Output::Buffer { dir, keep_secs, audio } => {
                if ring.is_none() {
                    match crate::ring::Ring::open(dir.clone(), *keep_secs) {
                        Ok(r) => ring = Some(r),
                        Err(e) => tracing::error!(dir = %dir.display(), error = %e, "cannot open the relay buffer"),
                    }
                }
                match ring.as_mut() {
                    None => format!("cannot write the relay buffer in {} (relay.hls_dir)", dir.display()),
                    Some(ring) => {
                        ring.begin_run(probe.as_ref().and_then(|p| p.video.as_ref()).and_then(|v| v.fps));
                        let audio = audio_guard.audio(*audio, probe.as_ref());
                        let cmd = buffer_command(source, &ring.output_args(), audio, 10);
                        buffer_note = probe.as_ref().and_then(|p| p.video.as_ref()).map(|v| match v.codec.as_str() {
                            "hevc" => "H.265: recorded through the relay's own buffer".to_string(),
                            c => format!(
                                "camera sends {}, which nginx-rtmp cannot carry: recorded through the relay's own buffer",
                                cctv_common::probe::codec_label(c)
                            ),
                        });
                        run_once(label, cmd, &[state], slot, Vec::new(), Some(ring))
                    }
                }
            }
        };
        if stop.is_cancelled() {
            break;
        }
        // Audio is suspected only of a failure that is not the camera's, the network's or
        // nginx-rtmp's (a camera that answered its probe, an error no known cause explains).
        let suspect = answered && !ffmpeg::is_known_cause(&reason);
        let reason = audio_guard.ended(reason, started.elapsed(), suspect);
        let reason = match buffer_note {
            Some(note) if reason != "stream ended" => format!("{reason} ({note})"),
            _ => reason,
        };
        let (wait, _) = backoff.ended(&reason, started.elapsed(), &[state]);
        pause(wait, stop);
    }
}

/// An audio codec never stops the video: a relay with audio that fails at once twice in a row
/// is tried without it; if that fails at once too, the audio was not the cause and comes back.
#[derive(Debug, Default)]
struct AudioGuard {
    /// Runs with audio that ended within [`CLEAN_RUN`], in a row.
    quick_failures: u32,
    /// Audio dropped because it stopped the video.
    dropped: bool,
    /// The last run had audio.
    had_audio: bool,
}

impl AudioGuard {
    /// The audio of the next run.
    fn audio(&mut self, setting: RelayAudio, probe: Option<&StreamProbe>) -> RelayAudio {
        let wanted = audio_for(setting, probe);
        let audio = if self.dropped { RelayAudio::Drop } else { wanted };
        self.had_audio = audio != RelayAudio::Drop;
        audio
    }

    /// Takes a run's end (`reason` after `ran`; `suspect`: the failure may be the stream's own,
    /// not the camera's, the network's or nginx-rtmp's); the reason to report.
    fn ended(&mut self, reason: String, ran: Duration, suspect: bool) -> String {
        let quick = ran < CLEAN_RUN && reason != "stream ended" && suspect;
        match (quick, self.had_audio, self.dropped) {
            (true, true, _) => self.quick_failures += 1,
            // Without audio it failed as fast: the audio was not the cause.
            (true, false, true) => *self = AudioGuard::default(),
            (false, _, _) => self.quick_failures = 0,
            _ => {}
        }
        if self.quick_failures >= 2 && !self.dropped {
            self.dropped = true;
            tracing::warn!(reason = %reason, "the relay fails at once with the camera's audio: trying without it");
            return format!("{reason} (the camera's audio stopped the video: relaying without audio)");
        }
        if self.dropped && !quick {
            return format!("{reason} (relaying without the camera's audio, which stopped the video)");
        }
        reason
    }
}

/// A thread relaying one stream until `stop`.
struct Relay {
    slot: RunningSlot,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn start_relay(
    label: String,
    source: String,
    output: Output,
    state: StateCell,
    stop: CancellationToken,
    plan: CancellationToken,
    probed: bool,
) -> Relay {
    let slot: RunningSlot = Arc::default();
    let sl = slot.clone();
    let thread = std::thread::Builder::new()
        .name(format!("relay {label}"))
        .spawn(move || {
            let span = tracing::info_span!("relay", stream = %label);
            let _e = span.enter();
            relay_loop(&label, &source, &output, &state, &sl, &stop, &plan, probed);
        })
        .expect("spawning a relay thread");
    Relay { slot, thread: Some(thread) }
}

impl Relay {
    fn stop(mut self) {
        if let Some(r) = lock(&self.slot).as_ref() {
            r.stopper.terminate();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the status reports of a stream. After a failure, a new attempt counts as running only
/// once it has stayed up `CLEAN_RUN`: a camera that refuses the password (or any attempt that
/// fails at once) is reported down with its reason, not "running" for the instant each retry
/// takes.
fn snapshot(state: &StateCell) -> RelayState {
    let mut s = lock(state).clone();
    let young = s.since_ms.is_some_and(|t| now_ms() - t < CLEAN_RUN.as_millis() as i64);
    if s.running && s.last_error.is_some() && young {
        s.running = false;
    }
    s
}

/// One camera's relays: its streams' states, and the thread that runs its process(es).
struct CameraRelay {
    id: u32,
    main: StateCell,
    sub: Option<StateCell>,
    /// The transcoded detect stream of a camera without sub-stream (reported while it has a
    /// route).
    detect: StateCell,
    /// The main stream goes to the relay's own buffer, at `buffer_url`.
    buffered: Arc<AtomicBool>,
    buffer_url: String,
    one_process: Arc<AtomicBool>,
    /// The shared process, for the watchdog.
    slot: RunningSlot,
    /// The per-stream processes the watchdog also judges (transcoded detect streams).
    watched: WatchedSlots,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl CameraRelay {
    fn status(&self, host: &str) -> RelayStatus {
        RelayStatus {
            channel: self.id,
            main: snapshot(&self.main),
            sub: self.sub.as_ref().map(snapshot),
            host: host.to_string(),
            updated_ms: now_ms(),
            one_process: self.one_process.load(Ordering::Relaxed),
            detect: Some(snapshot(&self.detect)).filter(|d| d.route.is_some()),
        }
    }

    fn stop(mut self) {
        self.stop.cancel();
        if let Some(r) = lock(&self.slot).as_ref() {
            r.stopper.terminate();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One stream of a camera: label (stream name), source URL, publish URL.
#[derive(Clone)]
struct StreamSpec {
    name: String,
    source: String,
    publish: String,
}

/// Relays a camera with an H.264 main and sub-stream: in one process while the watchdog can
/// see nginx-rtmp, else (or after repeated failures) one per stream; see the module
/// documentation. Both streams are probed again after every run; a codec that nginx-rtmp
/// cannot carry cancels `stop` (the camera's plan) and returns.
#[allow(clippy::too_many_arguments)]
fn run_camera(
    main: StreamSpec,
    sub: StreamSpec,
    audio: RelayAudio,
    states: (StateCell, StateCell),
    one_process: Arc<AtomicBool>,
    slot: RunningSlot,
    watch: Arc<Mutex<StreamWatch>>,
    stop: CancellationToken,
) {
    let span = tracing::info_span!("relay", stream = %main.name, sub = %sub.name);
    let _e = span.enter();
    let (main_state, sub_state) = (&states.0, &states.1);
    let label = format!("{}+{}", main.name, sub.name);
    while !stop.is_cancelled() {
        // One process for both streams, while the watchdog can see them.
        if lock(&watch).fresh(Instant::now()) {
            one_process.store(true, Ordering::Relaxed);
            let mut backoff = Backoff::new();
            let mut failures = 0;
            while !stop.is_cancelled() && failures < SPLIT_AFTER_FAILURES {
                let started = Instant::now();
                let main_audio = audio_for(audio, lock(main_state).probe.as_ref());
                let cmd =
                    camera_relay_command((&main.source, &main.publish), (&sub.source, &sub.publish), main_audio, 10);
                let watched = vec![main.name.clone(), sub.name.clone()];
                let reason = run_once(&label, cmd, &[main_state, sub_state], &slot, watched, None);
                if stop.is_cancelled() {
                    return;
                }
                let nginx = Output::Nginx { publish: String::new(), audio };
                let fits = [(&main.source, main_state), (&sub.source, sub_state)]
                    .into_iter()
                    .all(|(source, state)| nginx.fits(probe_into(source, state).as_ref()));
                if !fits {
                    tracing::info!("a stream's codec changed: planning the camera anew");
                    stop.cancel();
                    return;
                }
                let (wait, failed) = backoff.ended(&reason, started.elapsed(), &[main_state, sub_state]);
                failures = if failed { failures + 1 } else { 0 };
                if failures < SPLIT_AFTER_FAILURES {
                    pause(wait, &stop);
                }
            }
            tracing::warn!(
                failures,
                "the camera's relay failed {failures} times in a row: one ffmpeg per stream, so a broken stream \
                 cannot keep the other down"
            );
        } else {
            tracing::info!("nginx-rtmp's /stat cannot be read: one ffmpeg per stream");
        }
        one_process.store(false, Ordering::Relaxed);
        let child = stop.child_token();
        let relays = [
            start_relay(
                main.name.clone(),
                main.source.clone(),
                Output::Nginx { publish: main.publish.clone(), audio },
                main_state.clone(),
                child.clone(),
                stop.clone(),
                false,
            ),
            start_relay(
                sub.name.clone(),
                sub.source.clone(),
                Output::Nginx { publish: sub.publish.clone(), audio: RelayAudio::Drop },
                sub_state.clone(),
                child.clone(),
                stop.clone(),
                false,
            ),
        ];
        let restarts = |s: &StateCell| lock(s).restarts;
        let since = (restarts(main_state), restarts(sub_state));
        // Joined again only when both streams failed since and neither runs: no running stream
        // is interrupted by it.
        loop {
            pause(Duration::from_secs(1), &stop);
            if stop.is_cancelled() {
                break;
            }
            let both_down = !lock(main_state).running && !lock(sub_state).running;
            let both_failed = restarts(main_state) > since.0 && restarts(sub_state) > since.1;
            if both_down && both_failed && lock(&watch).fresh(Instant::now()) {
                tracing::info!("both streams down: relaying the camera in one process again");
                break;
            }
        }
        child.cancel();
        for r in relays {
            r.stop();
        }
    }
}

/// Reads nginx-rtmp's `/stat` (next to the HLS buffer, `rtmp.hls_url`'s server).
fn read_stat(agent: &ureq::Agent, url: &str) -> Option<HashMap<String, u64>> {
    let mut resp = agent.get(url).call().ok()?;
    if resp.status() != 200 {
        return None;
    }
    let xml = resp.body_mut().with_config().limit(16 << 20).read_to_string().ok()?;
    xml.contains("<rtmp>").then(|| published_streams(&xml))
}

/// `/stat` on the server of `hls_url` (`http://host:port/hls` → `http://host:port/stat`).
pub fn stat_url(hls_url: &str) -> Option<String> {
    let (scheme, rest) = hls_url.split_once("://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}/stat"))
}

/// What a camera's relay is made of: a camera whose spec did not change keeps running across a
/// reload.
#[derive(Debug, Clone, PartialEq)]
struct CameraSpec {
    main: String,
    sub: Option<String>,
    audio: RelayAudio,
    publish: String,
    hls_dir: std::path::PathBuf,
    buffer_secs: u32,
    buffer_url: String,
}

impl CameraSpec {
    fn of(ch: &cctv_common::config::ChannelConfig, config: &Config) -> Self {
        CameraSpec {
            main: ch.source.clone(),
            sub: ch.detect_source.clone(),
            audio: config.relay.audio,
            publish: config.rtmp.publish_url.trim_end_matches('/').to_string(),
            hls_dir: config.relay.hls_dir.clone(),
            buffer_secs: config.relay.buffer_secs,
            buffer_url: config.relay_playlist_url(ch),
        }
    }
}

/// The states of a camera's streams.
#[derive(Clone)]
struct CameraStates {
    main: StateCell,
    sub: Option<StateCell>,
    detect: StateCell,
}

/// Everything a camera's supervisor thread needs.
struct CameraCtx {
    main: StreamSpec,
    sub: Option<StreamSpec>,
    audio: RelayAudio,
    /// `<hls_dir>/relay/ch<id>`.
    buffer_dir: std::path::PathBuf,
    buffer_secs: u32,
    states: CameraStates,
    buffered: Arc<AtomicBool>,
    one_process: Arc<AtomicBool>,
    slot: RunningSlot,
    watched: WatchedSlots,
    watch: Arc<Mutex<StreamWatch>>,
    stop: CancellationToken,
}

/// A camera's supervisor: probes its streams, plans how they travel ([`CameraPlan`]), relays
/// them so until the camera is stopped or a stream's codec changes, then plans anew.
fn supervise_camera(ctx: CameraCtx) {
    let span = tracing::info_span!("relay", stream = %ctx.main.name);
    let _e = span.enter();
    let CameraCtx {
        main,
        sub,
        audio,
        buffer_dir,
        buffer_secs,
        states,
        buffered,
        one_process,
        slot,
        watched,
        watch,
        stop,
    } = ctx;
    while !stop.is_cancelled() {
        let (main_probe, sub_probe) = std::thread::scope(|scope| {
            let sub_probe = sub.as_ref().zip(states.sub.as_ref()).map(|(s, st)| {
                let source = s.source.clone();
                scope.spawn(move || probe_into(&source, st))
            });
            let main_probe = probe_into(&main.source, &states.main);
            (main_probe, sub_probe.map(|h| h.join().ok().flatten()))
        });
        if stop.is_cancelled() {
            break;
        }
        let plan = CameraPlan::of(main_probe.as_ref(), sub_probe.as_ref().map(|p| p.as_ref()));
        tracing::info!(?plan, "camera planned");
        buffered.store(plan.main == Route::Buffer, Ordering::Relaxed);
        lock(&states.main).route = Some(plan.main.describe().to_string());
        if let (Some(st), Some(route)) = (&states.sub, plan.sub) {
            lock(st).route = Some(route.describe().to_string());
        }
        lock(&states.detect).route = plan.detect_transcode.then(|| Route::Transcode.describe().to_string());
        let plan_stop = stop.child_token();
        match (&sub, &states.sub) {
            (Some(sub), Some(sub_state)) if plan.all_nginx() => run_camera(
                main.clone(),
                sub.clone(),
                audio,
                (states.main.clone(), sub_state.clone()),
                one_process.clone(),
                slot.clone(),
                watch.clone(),
                plan_stop.clone(),
            ),
            (None, _) if plan.all_nginx() => {
                one_process.store(false, Ordering::Relaxed);
                let output = Output::Nginx { publish: main.publish.clone(), audio };
                relay_loop(&main.name, &main.source, &output, &states.main, &slot, &plan_stop, &plan_stop, true);
            }
            _ => {
                // Each stream its own ffmpeg: one stream's codec never takes the other down.
                one_process.store(false, Ordering::Relaxed);
                let main_output = match plan.main {
                    Route::Buffer => Output::Buffer { dir: buffer_dir.clone(), keep_secs: buffer_secs, audio },
                    _ => Output::Nginx { publish: main.publish.clone(), audio },
                };
                let start = |label: String, source: &str, output: Output, state: &StateCell| {
                    start_relay(
                        label,
                        source.to_string(),
                        output,
                        state.clone(),
                        plan_stop.clone(),
                        plan_stop.clone(),
                        true,
                    )
                };
                let mut relays = vec![start(main.name.clone(), &main.source, main_output, &states.main)];
                if let (Some(sub), Some(sub_state), Some(route)) = (&sub, &states.sub, plan.sub) {
                    let output = match route {
                        Route::Transcode => Output::Transcode { publish: sub.publish.clone() },
                        _ => Output::Nginx { publish: sub.publish.clone(), audio: RelayAudio::Drop },
                    };
                    relays.push(start(sub.name.clone(), &sub.source, output, sub_state));
                }
                if plan.detect_transcode {
                    // Probed with the main stream: the same source.
                    lock(&states.detect).probe = main_probe.clone();
                    let output = Output::Transcode { publish: main.publish.clone() };
                    relays.push(start(format!("{} (detect)", main.name), &main.source, output, &states.detect));
                }
                *lock(&watched) = relays.iter().map(|r| r.slot.clone()).collect();
                while !plan_stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                lock(&watched).clear();
                for r in relays {
                    r.stop();
                }
            }
        }
        plan_stop.cancel();
        if !stop.is_cancelled() {
            tracing::info!("relaying the camera anew after a codec change");
        }
    }
}

/// Starts one camera's supervisor thread.
fn start_camera(
    ch: &cctv_common::config::ChannelConfig,
    spec: &CameraSpec,
    watch: &Arc<Mutex<StreamWatch>>,
    stop: &CancellationToken,
) -> CameraRelay {
    let publish = &spec.publish;
    let main = StreamSpec {
        name: ch.stream_name(),
        source: spec.main.clone(),
        publish: format!("{publish}/{}", ch.stream_name()),
    };
    let state = |stream: String| -> StateCell { Arc::new(Mutex::new(RelayState { stream, ..Default::default() })) };
    let sub = spec.sub.as_ref().map(|d| {
        let name = ch.detect_stream_name();
        StreamSpec { name: name.clone(), source: d.clone(), publish: format!("{publish}/{name}") }
    });
    let states = CameraStates {
        main: state(main.name.clone()),
        sub: sub.as_ref().map(|s| state(s.name.clone())),
        detect: state(ch.detect_stream_name()),
    };
    let cam_stop = stop.child_token();
    let one_process = Arc::new(AtomicBool::new(false));
    let buffered = Arc::new(AtomicBool::new(false));
    let slot: RunningSlot = Arc::default();
    let watched: WatchedSlots = Arc::default();
    let ctx = CameraCtx {
        main,
        sub,
        audio: spec.audio,
        buffer_dir: spec.hls_dir.join("relay").join(ch.stream_name()),
        buffer_secs: spec.buffer_secs,
        states: states.clone(),
        buffered: buffered.clone(),
        one_process: one_process.clone(),
        slot: slot.clone(),
        watched: watched.clone(),
        watch: watch.clone(),
        stop: cam_stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("relay {}", ch.stream_name()))
        .spawn(move || supervise_camera(ctx))
        .expect("spawning a camera relay thread");
    CameraRelay {
        id: ch.id,
        main: states.main,
        sub: states.sub,
        detect: states.detect,
        buffered,
        buffer_url: spec.buffer_url.clone(),
        one_process,
        slot,
        watched,
        thread: Some(thread),
        stop: cam_stop,
    }
}

/// The running cameras, by channel id, with the spec each was started from.
type Cameras = std::collections::BTreeMap<u32, (CameraSpec, CameraRelay)>;

/// Brings `cameras` to `config`: cameras removed or changed are stopped (changed ones started
/// anew), new ones started; unchanged ones go on untouched. Returns the stopped relays, to be
/// joined off the async runtime.
fn apply(
    cameras: &mut Cameras,
    config: &Config,
    watch: &Arc<Mutex<StreamWatch>>,
    stop: &CancellationToken,
) -> Vec<CameraRelay> {
    let mut stopped = Vec::new();
    let wanted: std::collections::BTreeMap<u32, (&cctv_common::config::ChannelConfig, CameraSpec)> =
        config.channels.iter().map(|ch| (ch.id, (ch, CameraSpec::of(ch, config)))).collect();
    let gone: Vec<u32> = cameras
        .iter()
        .filter(|(id, (spec, _))| wanted.get(id).is_none_or(|(_, w)| w != spec))
        .map(|(id, _)| *id)
        .collect();
    for id in gone {
        if let Some((_, cam)) = cameras.remove(&id) {
            cam.stop.cancel();
            if let Some(r) = lock(&cam.slot).as_ref() {
                r.stopper.terminate();
            }
            stopped.push(cam);
        }
    }
    for (id, (ch, spec)) in wanted {
        if let std::collections::btree_map::Entry::Vacant(e) = cameras.entry(id) {
            let cam = start_camera(ch, &spec, watch, stop);
            e.insert((spec, cam));
        }
    }
    stopped
}

/// Runs every channel's relays until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_reloading(config, None, shutdown).await
}

/// Like [`run`]; with `reload`, SIGHUP reads the config file again and applies its channels:
/// only cameras added, removed or changed are started or stopped (adding a camera interrupts
/// no other). A config that does not load or validate is refused with its errors, and the
/// relays go on as they were.
pub async fn run_reloading(
    config: Config,
    reload: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // First, so that a SIGHUP during start-up is not the default action (the end of the process).
    let mut hangup = match reload {
        Some(_) => Some(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?),
        None => None,
    };
    let keys = Keys::new(&config.cluster.namespace);
    let mut conn = cctv_common::queue::connect(&config.cluster, &config.queue).await?;
    let stop = shutdown.child_token();
    let watch: Arc<Mutex<StreamWatch>> = Arc::default();
    let stat = stat_url(&config.rtmp.hls_url);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    // The first reading before any camera starts: it decides whether cameras share a process.
    if let Some(url) = stat.clone() {
        let (agent, url) = (agent.clone(), url.clone());
        let reading = tokio::task::spawn_blocking(move || read_stat(&agent, &url)).await?;
        lock(&watch).update(reading, Instant::now());
    }
    let cameras: Arc<Mutex<Cameras>> = Arc::default();
    let stopped = apply(&mut lock(&cameras), &config, &watch, &stop);
    debug_assert!(stopped.is_empty());
    tracing::info!(channels = lock(&cameras).len(), publish = %config.rtmp.publish_url, "relays started");
    // The watchdog of shared processes: reads `/stat` every STAT_EVERY.
    let watchdog = stat.map(|url| {
        let (watch, cameras, stop) = (watch.clone(), cameras.clone(), stop.clone());
        std::thread::Builder::new()
            .name("relay watchdog".into())
            .spawn(move || {
                while !stop.is_cancelled() {
                    pause(STAT_EVERY, &stop);
                    let reading = read_stat(&agent, &url);
                    let now = Instant::now();
                    let slots: Vec<RunningSlot> = lock(&cameras)
                        .values()
                        .flat_map(|(_, c)| {
                            let mut slots = lock(&c.watched).clone();
                            slots.push(c.slot.clone());
                            slots
                        })
                        .collect();
                    let mut w = lock(&watch);
                    w.update(reading, now);
                    watchdog_round(&w, &slots, now);
                }
            })
            .expect("spawning the relay watchdog")
    });
    // A heartbeat like the workers' one: `scheduler health --kind relay` (the container health
    // check) and `cctv status` see the relay host alive.
    let worker = cctv_common::worker_name("relay");
    let held: heartbeat::Held = Default::default();
    let held_of = |cameras: &Cameras| cameras.keys().map(|id| format!("ch{id}")).collect::<Vec<_>>();
    *lock(&held) = held_of(&lock(&cameras));
    let hb = tokio::spawn(heartbeat::run(conn.clone(), keys.clone(), worker.clone(), "relay", held.clone()));
    let host = cctv_common::host_name();
    loop {
        let statuses: Vec<RelayStatus> = lock(&cameras).values().map(|(_, c)| c.status(&host)).collect();
        let buffers: Vec<(u32, Option<String>)> = lock(&cameras)
            .values()
            .map(|(_, c)| (c.id, c.buffered.load(Ordering::Relaxed).then(|| c.buffer_url.clone())))
            .collect();
        for (id, url) in buffers {
            // Where record jobs read this channel: the relay's buffer while it has one.
            let r: redis::RedisResult<()> = match url {
                Some(url) => conn.set_ex(keys.record_playlist(id), url, RECORD_PLAYLIST_TTL_SECS).await,
                None => conn.del(keys.record_playlist(id)).await,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot publish the channel's record playlist");
            }
        }
        for status in statuses {
            if let Ok(json) = serde_json::to_string(&status) {
                let r: redis::RedisResult<()> =
                    conn.set_ex(keys.relay_status(status.channel), json, STATUS_TTL_SECS).await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot publish relay status");
                }
            }
        }
        let reload_now = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if let (true, Some(path)) = (reload_now, reload.as_ref()) {
            let loaded = Config::load(path).map_err(|e| e.to_string()).and_then(|c| {
                let problems = c.validate();
                if problems.is_empty() {
                    Ok(c)
                } else {
                    Err(problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))
                }
            });
            match loaded {
                Err(e) => tracing::error!(path = %path.display(), error = %e, "config not reloaded; relays unchanged"),
                Ok(new) => {
                    let stopped = apply(&mut lock(&cameras), &new, &watch, &stop);
                    let removed: Vec<u32> = stopped.iter().map(|c| c.id).collect();
                    *lock(&held) = held_of(&lock(&cameras));
                    tracing::info!(channels = lock(&cameras).len(), restarted_or_removed = ?removed, "config reloaded");
                    for id in &removed {
                        if !lock(&cameras).contains_key(id) {
                            let _: redis::RedisResult<()> = conn.del(keys.relay_status(*id)).await;
                        }
                    }
                    tokio::task::spawn_blocking(move || stopped.into_iter().for_each(CameraRelay::stop)).await?;
                }
            }
        }
    }
    stop.cancel();
    hb.abort();
    heartbeat::remove(&mut conn, &keys, &worker).await;
    tokio::task::spawn_blocking(move || {
        let all = std::mem::take(&mut *lock(&cameras));
        for (_, (_, cam)) in all {
            cam.stop();
        }
        if let Some(w) = watchdog {
            let _ = w.join();
        }
    })
    .await?;
    tracing::info!("relays stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mut cmd: ffmpeg_sidecar::command::FfmpegCommand) -> String {
        format!("{:?}", cmd.as_inner())
    }

    #[test]
    fn rtsp_relays_copy_video_over_tcp_and_handle_audio_per_config() {
        let drop = args(relay_command("rtsp://u:p@cam/1", "rtmp://127.0.0.1/live/ch1", RelayAudio::Drop, 10));
        for needle in [
            "-rtsp_transport",
            "tcp",
            "-timeout",
            "10000000",
            "-c:v",
            "copy",
            "-an",
            "flv",
            "rtmp://127.0.0.1/live/ch1",
        ] {
            assert!(drop.contains(needle), "{needle} missing from {drop}");
        }
        let aac = args(relay_command("rtsp://cam/1", "rtmp://x/live/ch1", RelayAudio::Aac, 10));
        assert!(aac.contains("\"-c:a\" \"aac\"") && !aac.contains("\"-an\""), "{aac}");
        let file = args(relay_command("file:///clips/a.mp4", "rtmp://x/live/ch1", RelayAudio::Drop, 10));
        assert!(file.contains("-stream_loop") && file.contains("\"/clips/a.mp4\""), "{file}");
    }

    #[test]
    fn a_camera_relay_has_two_inputs_and_two_outputs_and_exits_on_input_errors() {
        let cmd = args(camera_relay_command(
            ("rtsp://u:p@cam/main", "rtmp://x/live/ch1"),
            ("rtsp://u:p@cam/sub", "rtmp://x/live/ch1_sub"),
            RelayAudio::Copy,
            10,
        ));
        let pos = |needle: &str| cmd.find(needle).unwrap_or_else(|| panic!("{needle} missing from {cmd}"));
        assert!(cmd.contains("\"-xerror\""), "{cmd}");
        // Inputs first, then each output with its own map; audio only from the main stream.
        assert!(pos("cam/main") < pos("cam/sub") && pos("cam/sub") < pos("\"0:v:0\""), "{cmd}");
        assert!(pos("\"0:v:0\"") < pos("\"0:a:0?\"") && pos("\"0:a:0?\"") < pos("live/ch1\""), "{cmd}");
        assert!(pos("live/ch1\"") < pos("\"1:v:0\"") && pos("\"1:v:0\"") < pos("live/ch1_sub"), "{cmd}");
        assert!(!cmd.contains("1:a:0"), "{cmd}");
        assert_eq!(cmd.matches("-rtsp_transport").count(), 2, "{cmd}");
    }

    fn probe(video: &str, audio: Option<&str>) -> StreamProbe {
        StreamProbe {
            video: Some(cctv_common::probe::VideoProbe {
                codec: video.into(),
                width: 1280,
                height: 720,
                fps: Some(25.0),
            }),
            audio: audio.map(|a| cctv_common::probe::AudioProbe { codec: a.into(), ..Default::default() }),
        }
    }

    #[test]
    fn each_stream_travels_the_way_its_codec_allows() {
        let (h264, hevc) = (probe("h264", None), probe("hevc", Some("pcm_alaw")));
        let plan = |main: Option<&StreamProbe>, sub: Option<Option<&StreamProbe>>| CameraPlan::of(main, sub);
        // All H.264 (or not probed yet): nginx-rtmp, as before.
        assert!(plan(Some(&h264), Some(Some(&h264))).all_nginx());
        assert!(plan(None, None).all_nginx() && plan(None, Some(None)).all_nginx());
        // H.265 main, H.264 sub: the main to the relay's buffer, the sub copied.
        let p = plan(Some(&hevc), Some(Some(&h264)));
        assert_eq!((p.main, p.sub, p.detect_transcode), (Route::Buffer, Some(Route::Nginx), false));
        // H.264 main, H.265 sub: the sub transcoded for detection.
        let p = plan(Some(&h264), Some(Some(&hevc)));
        assert_eq!((p.main, p.sub, p.detect_transcode), (Route::Nginx, Some(Route::Transcode), false));
        // H.265 only, with a sub-stream and without: detection always gets H.264.
        let p = plan(Some(&hevc), Some(Some(&hevc)));
        assert_eq!((p.main, p.sub, p.detect_transcode), (Route::Buffer, Some(Route::Transcode), false));
        let p = plan(Some(&hevc), None);
        assert_eq!((p.main, p.sub, p.detect_transcode), (Route::Buffer, None, true));
        assert!(!p.all_nginx());
        // An output whose stream changed codec no longer fits: the camera is planned anew.
        let nginx = Output::Nginx { publish: String::new(), audio: RelayAudio::Drop };
        assert!(nginx.fits(Some(&h264)) && !nginx.fits(Some(&hevc)) && nginx.fits(None));
        let buffer = Output::Buffer { dir: "/x".into(), keep_secs: 60, audio: RelayAudio::Drop };
        assert!(buffer.fits(Some(&hevc)) && !buffer.fits(Some(&h264)));
    }

    #[test]
    fn camera_audio_is_copied_when_it_can_be_and_made_aac_otherwise() {
        let g711 = probe("h264", Some("pcm_mulaw"));
        let aac = probe("h264", Some("aac"));
        assert_eq!(audio_for(RelayAudio::Copy, Some(&g711)), RelayAudio::Aac);
        assert_eq!(audio_for(RelayAudio::Copy, Some(&aac)), RelayAudio::Copy);
        assert_eq!(audio_for(RelayAudio::Copy, None), RelayAudio::Copy);
        assert_eq!(audio_for(RelayAudio::Drop, Some(&g711)), RelayAudio::Drop);
        assert_eq!(audio_for(RelayAudio::Aac, Some(&aac)), RelayAudio::Aac);
    }

    #[test]
    fn audio_that_stops_the_video_is_dropped_and_comes_back_when_it_was_not_the_cause() {
        let aac = probe("h264", Some("aac"));
        let quick = Duration::from_secs(1);
        let mut g = AudioGuard::default();
        assert_eq!(g.audio(RelayAudio::Copy, Some(&aac)), RelayAudio::Copy);
        let _ = g.ended("camera sent data ffmpeg cannot read".into(), quick, true);
        assert_eq!(g.audio(RelayAudio::Copy, Some(&aac)), RelayAudio::Copy, "one failure is not enough");
        let why = g.ended("camera sent data ffmpeg cannot read".into(), quick, true);
        assert!(why.contains("relaying without audio"), "{why}");
        assert_eq!(g.audio(RelayAudio::Copy, Some(&aac)), RelayAudio::Drop);
        // Without audio it fails as fast: not the audio's fault; audio is back.
        let _ = g.ended("odd error".into(), quick, true);
        assert_eq!(g.audio(RelayAudio::Copy, Some(&aac)), RelayAudio::Copy);
        // A run that went well resets the count; a drop setting is never changed.
        let mut g = AudioGuard::default();
        g.audio(RelayAudio::Copy, Some(&aac));
        let _ = g.ended("x".into(), quick, true);
        g.audio(RelayAudio::Copy, Some(&aac));
        let _ = g.ended("stream ended".into(), Duration::from_secs(600), true);
        g.audio(RelayAudio::Copy, Some(&aac));
        let _ = g.ended("x".into(), quick, true);
        assert_eq!(g.audio(RelayAudio::Copy, Some(&aac)), RelayAudio::Copy);
        let mut g = AudioGuard::default();
        for _ in 0..3 {
            assert_eq!(g.audio(RelayAudio::Drop, Some(&aac)), RelayAudio::Drop);
            let _ = g.ended("x".into(), quick, true);
        }
        // Failures that are the camera's or nginx's never touch the audio.
        let mut g = AudioGuard::default();
        for _ in 0..3 {
            assert_eq!(g.audio(RelayAudio::Copy, Some(&aac)), RelayAudio::Copy);
            let why = g.ended("camera has no stream at that path (404 Not Found)".into(), quick, false);
            assert_eq!(why, "camera has no stream at that path (404 Not Found)");
        }
    }

    #[test]
    fn buffer_and_transcode_commands_copy_or_encode_what_they_should() {
        let ring = vec!["-f".to_string(), "segment".into(), "/buf/.part%d.ts".into()];
        let buffer = args(buffer_command("rtsp://u:p@cam/1", &ring, RelayAudio::Aac, 10));
        for needle in ["\"-c:v\" \"copy\"", "\"-c:a\" \"aac\"", "\"segment\"", "/buf/.part%d.ts", "tcp"] {
            assert!(buffer.contains(needle), "{needle} missing from {buffer}");
        }
        assert!(!buffer.contains("-xerror") && !buffer.contains("flv"), "{buffer}");
        let transcode = args(transcode_command("rtsp://cam/1", "rtmp://x/live/ch2", 10));
        let needles = ["\"-threads\" \"1\"", "libx264", "zerolatency", "scale='min(640,iw)'", "-an", "flv", "ch2"];
        for needle in needles {
            assert!(transcode.contains(needle), "{needle} missing from {transcode}");
        }
    }

    /// nginx-rtmp 1.1.4's `/stat`, cut down: a published stream, a stream only played (its
    /// publisher gone), another published one.
    const STAT: &str = "<rtmp><server><application><name>live</name><live>\
        <stream><name>ch1</name><time>7102</time><bw_in>0</bw_in><bytes_in>641190</bytes_in>\
        <client><id>3</id><flashver>FMLE/3.0</flashver><publishing/><active/></client>\
        <nclients>1</nclients><publishing/><active/></stream>\
        <stream><name>ch2</name><bytes_in>10</bytes_in><client><id>4</id><active/></client></stream>\
        <stream><name>ch1_sub</name><bytes_in>25951</bytes_in><publishing/><active/></stream>\
        </live></application></server></rtmp>";

    #[test]
    fn published_streams_are_read_from_nginx_stat() {
        let streams = published_streams(STAT);
        assert_eq!(streams.get("ch1"), Some(&641190));
        assert_eq!(streams.get("ch1_sub"), Some(&25951));
        assert!(!streams.contains_key("ch2"), "a stream without a publisher is not published");
        assert_eq!(stat_url("http://127.0.0.1:8080/hls").as_deref(), Some("http://127.0.0.1:8080/stat"));
        assert_eq!(stat_url("https://nginx:8443/a/b/").as_deref(), Some("https://nginx:8443/stat"));
    }

    #[test]
    fn a_stream_is_dead_when_unpublished_or_standing_still_and_only_with_a_fresh_reading() {
        let t0 = Instant::now();
        let mut w = StreamWatch::default();
        assert!(!w.fresh(t0) && w.dead("ch1", t0).is_none(), "no reading: nothing is judged");
        let reading =
            |main: u64, sub: u64| Some(HashMap::from([("ch1".to_string(), main), ("ch1_sub".to_string(), sub)]));
        w.update(reading(100, 50), t0);
        let mut t = t0;
        for i in 1..=6u64 {
            t = t0 + Duration::from_secs(2 * i);
            w.update(reading(100 + i, 50), t);
        }
        assert!(w.dead("ch1", t).is_none(), "ch1 grows");
        let why = w.dead("ch1_sub", t).expect("ch1_sub stood still 12 s");
        assert!(why.contains("ch1_sub") && why.contains("nothing for 12 s"), "{why}");
        assert!(w.dead("ch9", t).unwrap().contains("not published"));
        // An unreadable /stat keeps the last reading only while it is fresh.
        w.update(None, t + Duration::from_secs(2));
        assert!(w.dead("ch9", t + STAT_FRESH).is_none() && !w.fresh(t + STAT_FRESH));
        // A stream that restarted (its count fell) is alive again.
        w.update(reading(200, 3), t + Duration::from_secs(3));
        assert!(w.dead("ch1_sub", t + Duration::from_secs(3)).is_none());
    }

    #[test]
    fn the_watchdog_ends_only_shared_processes_past_their_grace_with_a_dead_stream() {
        let spawn = || {
            let mut cmd = ffmpeg::command();
            cmd.args(["-v", "error", "-re", "-f", "lavfi", "-i", "nullsrc=rate=1", "-f", "null", "-"]);
            FfmpegProcess::spawn("watchdog test", cmd, false).unwrap()
        };
        let now = Instant::now();
        // ch1 and ch4 got bytes to nginx 12 s ago; ch1 goes on, ch4 stood still since.
        let mut w = StreamWatch::default();
        w.update(Some(HashMap::from([("ch1".to_string(), 5), ("ch4".to_string(), 7)])), now - Duration::from_secs(12));
        w.update(Some(HashMap::from([("ch1".to_string(), 9), ("ch4".to_string(), 7)])), now);
        let (mut never, mut stale, mut slow, mut young, mut single) = (spawn(), spawn(), spawn(), spawn(), spawn());
        let slot = |p: &FfmpegProcess, age: Duration, watched: &[&str]| -> RunningSlot {
            Arc::new(Mutex::new(Some(Running {
                stopper: p.stopper(),
                started: now - age,
                watched: watched.iter().map(|s| s.to_string()).collect(),
                killed: None,
                seen: Vec::new(),
            })))
        };
        let slots = [
            // ch1_sub never reached nginx in START_GRACE.
            slot(&never, START_GRACE, &["ch1", "ch1_sub"]),
            // ch4 reached nginx after its process started, then stood still 12 s.
            slot(&stale, WATCH_GRACE, &["ch4", "ch1"]),
            // Nothing published yet, but a slow start is given START_GRACE.
            slot(&slow, WATCH_GRACE * 2, &["ch3", "ch3_sub"]),
            slot(&young, WATCH_GRACE / 2, &["ch2", "ch2_sub"]),
            slot(&single, WATCH_GRACE * 2, &[]),
        ];
        watchdog_round(&w, &slots, now);
        let killed = |i: usize| lock(&slots[i]).as_ref().unwrap().killed.clone();
        assert!(killed(0).is_some_and(|k| k.contains("ch1_sub is not published")), "{:?}", killed(0));
        assert!(killed(1).is_some_and(|k| k.contains("ch4 sent nginx-rtmp nothing for 12 s")), "{:?}", killed(1));
        assert_eq!((killed(2), killed(3), killed(4)), (None, None, None));
        let deadline = Instant::now() + Duration::from_secs(5);
        while (never.try_wait().is_none() || stale.try_wait().is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            never.try_wait().is_some() && stale.try_wait().is_some(),
            "the shared processes with a dead stream were ended"
        );
        assert!(slow.try_wait().is_none() && young.try_wait().is_none() && single.try_wait().is_none());
        for mut p in [slow, young, single] {
            p.stop(Duration::from_secs(2));
        }
    }
}

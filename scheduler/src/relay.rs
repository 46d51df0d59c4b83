//! `scheduler relay`: the RTSP → RTMP relays, run next to nginx-rtmp. One ffmpeg per camera
//! copies its video into nginx-rtmp (`-c copy`): `ch<id>` from `source` and, with two inputs
//! and two outputs in the same process, `ch<id>_sub` from `detect_source`; audio is dropped,
//! copied or transcoded to AAC (`relay.audio`).
//!
//! One process per camera halves the relays' memory (each Debian ffmpeg costs ~9 MiB of private
//! library pages before it relays a byte), but ffmpeg keeps running on one input when the other
//! ends. So a camera is relayed in one process only while nginx-rtmp's `/stat` can be read: a
//! watchdog restarts a camera's process when one of its streams stops growing there. Where
//! `/stat` cannot be read, or a camera's shared process failed [`SPLIT_AFTER_FAILURES`] times in
//! a row without running well (a broken sub-stream must not keep the main stream, the backups'
//! source, down), its streams get one ffmpeg each, as before; they are joined again only when
//! both are down, so joining never interrupts a running stream.
//!
//! A relay that dies is restarted with exponential backoff (reset after a minute of health); a
//! clean end of stream is retried at once. Status per channel goes to `<ns>:status:relay:<id>`
//! with a TTL. Camera URLs appear in no log, status or error: every message is redacted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cctv_common::config::{Config, RelayAudio};
use cctv_common::events::now_ms;
use cctv_common::ffmpeg::{self, FfmpegProcess, Stopper};
use cctv_common::heartbeat;
use cctv_common::keys::Keys;
use cctv_common::shutdown::CancellationToken;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

/// A relay running this long counts as healthy: its backoff resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// A run this long that ends cleanly is not a failure.
const CLEAN_RUN: Duration = Duration::from_secs(5);
/// Status TTL; refreshed every 2 s.
const STATUS_TTL_SECS: u64 = 10;
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
}

impl RelayStatus {
    /// The main stream's relay, then the sub-stream's when there is one.
    pub fn streams(&self) -> impl Iterator<Item = &RelayState> {
        std::iter::once(&self.main).chain(self.sub.as_ref())
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
    let audio_map = format!("{index}:a:0?");
    match audio {
        RelayAudio::Drop => cmd.arg("-an"),
        // FLV carries AAC/MP3; other camera codecs (G.711, ...) need `aac`.
        RelayAudio::Copy => cmd.args(["-map", &audio_map, "-c:a", "copy"]),
        RelayAudio::Aac => cmd.args(["-map", &audio_map, "-c:a", "aac", "-b:a", "64k", "-ar", "44100"]),
    };
    cmd.args(["-f", "flv"]).output(publish);
}

/// The ffmpeg arguments of one relay (input options, input, output options, output).
pub fn relay_command(
    source: &str,
    publish: &str,
    audio: RelayAudio,
    timeout_s: u64,
) -> ffmpeg_sidecar::command::FfmpegCommand {
    let mut cmd = ffmpeg::command();
    cmd.arg("-nostats");
    relay_input(&mut cmd, source, timeout_s);
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

/// Runs `cmd` to its end with its state(s) marked running; the reason it ended (the
/// watchdog's, or ffmpeg's last line).
fn run_once(
    label: &str,
    cmd: ffmpeg_sidecar::command::FfmpegCommand,
    states: &[&StateCell],
    slot: &RunningSlot,
    watched: Vec<String>,
) -> String {
    let mut p = match FfmpegProcess::spawn(format!("relay {label}"), cmd, false) {
        Err(e) => return e.to_string(),
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
    let r = p.wait();
    let killed = lock(slot).take().and_then(|r| r.killed);
    if let Some(why) = killed {
        return why;
    }
    match r {
        Ok(_) => "stream ended".to_string(),
        Err(e) => {
            let tail = p.stderr_tail();
            let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            format!("ffmpeg failed: {}", if last.is_empty() { e.to_string() } else { last.to_string() })
        }
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

/// A thread relaying one stream until `stop`.
struct Relay {
    slot: RunningSlot,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn start_relay(
    label: String,
    source: String,
    publish: String,
    audio: RelayAudio,
    state: StateCell,
    stop: CancellationToken,
) -> Relay {
    let slot: RunningSlot = Arc::default();
    let sl = slot.clone();
    let thread = std::thread::Builder::new()
        .name(format!("relay {label}"))
        .spawn(move || {
            let span = tracing::info_span!("relay", stream = %label);
            let _e = span.enter();
            let mut backoff = Backoff::new();
            while !stop.is_cancelled() {
                let started = Instant::now();
                let reason = run_once(&label, relay_command(&source, &publish, audio, 10), &[&state], &sl, Vec::new());
                if stop.is_cancelled() {
                    break;
                }
                let (wait, _) = backoff.ended(&reason, started.elapsed(), &[&state]);
                pause(wait, &stop);
            }
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
    one_process: Arc<AtomicBool>,
    /// The shared process, for the watchdog.
    slot: RunningSlot,
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

/// Relays a camera with a sub-stream: in one process while the watchdog can see nginx-rtmp,
/// else (or after repeated failures) one per stream; see the module documentation.
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
                let cmd = camera_relay_command((&main.source, &main.publish), (&sub.source, &sub.publish), audio, 10);
                let watched = vec![main.name.clone(), sub.name.clone()];
                let reason = run_once(&label, cmd, &[main_state, sub_state], &slot, watched);
                if stop.is_cancelled() {
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
                main.publish.clone(),
                audio,
                main_state.clone(),
                child.clone(),
            ),
            start_relay(
                sub.name.clone(),
                sub.source.clone(),
                sub.publish.clone(),
                RelayAudio::Drop,
                sub_state.clone(),
                child.clone(),
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
}

impl CameraSpec {
    fn of(ch: &cctv_common::config::ChannelConfig, config: &Config) -> Self {
        CameraSpec {
            main: ch.source.clone(),
            sub: ch.detect_source.clone(),
            audio: config.relay.audio,
            publish: config.rtmp.publish_url.trim_end_matches('/').to_string(),
        }
    }
}

/// Starts one camera's relay thread(s).
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
    let main_state: StateCell = Arc::new(Mutex::new(RelayState { stream: main.name.clone(), ..Default::default() }));
    let cam_stop = stop.child_token();
    let one_process = Arc::new(AtomicBool::new(false));
    let (slot, sub_state, thread) = match &spec.sub {
        None => {
            let mut r =
                start_relay(main.name, main.source, main.publish, spec.audio, main_state.clone(), cam_stop.clone());
            (r.slot.clone(), None, r.thread.take())
        }
        Some(d) => {
            let name = ch.detect_stream_name();
            let sub = StreamSpec { name: name.clone(), source: d.clone(), publish: format!("{publish}/{name}") };
            let sub_state: StateCell = Arc::new(Mutex::new(RelayState { stream: name, ..Default::default() }));
            let slot: RunningSlot = Arc::default();
            let states = (main_state.clone(), sub_state.clone());
            let (op, sl, w, st, audio) =
                (one_process.clone(), slot.clone(), watch.clone(), cam_stop.clone(), spec.audio);
            let thread = std::thread::Builder::new()
                .name(format!("relay {}", main.name))
                .spawn(move || run_camera(main, sub, audio, states, op, sl, w, st))
                .expect("spawning a camera relay thread");
            (slot, Some(sub_state), Some(thread))
        }
    };
    CameraRelay { id: ch.id, main: main_state, sub: sub_state, one_process, slot, thread, stop: cam_stop }
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
                    let slots: Vec<RunningSlot> = lock(&cameras).values().map(|(_, c)| c.slot.clone()).collect();
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

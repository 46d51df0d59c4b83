//! One stream's relay loop: probe, run ffmpeg, back off, run again, until stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cctv_common::config::RelayAudio;
use cctv_common::events::now_ms;
use cctv_common::ffmpeg;
use cctv_common::ffmpeg::FfmpegProcess;
use cctv_common::probe::StreamProbe;
use cctv_common::shutdown::CancellationToken;
use cctv_common::status::RelayState;

use crate::{
    buffer_command, lock, relay_command, transcode_command, AudioGuard, Route, Running, RunningSlot, StateCell,
    CLEAN_RUN, HEALTHY_AFTER,
};

/// A buffer output whose ffmpeg finished no fragment for this long (or twice its longest
/// fragment) is ended: the camera sends no keyframe, or its video stalled while its audio goes
/// on (ffmpeg's own `-timeout` ends one that sends nothing).
pub(crate) const NO_KEYFRAME_FOR: Duration = Duration::from_secs(20);

/// Runs `cmd` to its end with its state(s) marked running; the reason it ended, in plain words
/// (the watchdog's, or ffmpeg's first meaningful error). With `ring`, the buffer's fragments
/// are taken as ffmpeg finishes them, and a run that finishes none for [`NO_KEYFRAME_FOR`] is
/// ended.
pub(crate) fn run_once(
    label: &str,
    cmd: std::io::Result<ffmpeg_sidecar::command::FfmpegCommand>,
    states: &[&StateCell],
    slot: &RunningSlot,
    watched: Vec<String>,
    ring: Option<&mut crate::ring::Ring>,
) -> String {
    // The command could not be made (the private input list was not written): that is why.
    let cmd = match cmd {
        Ok(cmd) => cmd,
        Err(e) => return cctv_common::redact::redact_text(&e.to_string()).into_owned(),
    };
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
pub(crate) struct Backoff {
    pub(crate) next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: Duration::from_secs(1) }
    }

    /// Records a run of `ran` that ended for `reason` in `states`; how long to wait before the
    /// next, and whether the run was a failure (not a clean end, not a healthy run).
    pub(crate) fn ended(&mut self, reason: &str, ran: Duration, states: &[&StateCell]) -> (Duration, bool) {
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
pub(crate) fn pause(wait: Duration, stop: &CancellationToken) {
    let until = Instant::now() + wait;
    while Instant::now() < until && !stop.is_cancelled() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a stream's probe may take (ffprobe is killed 5 s after).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one relay loop writes.
#[derive(Clone, Debug)]
pub(crate) enum Output {
    /// Stream copy into nginx-rtmp; audio per the setting and the probe.
    Nginx { publish: String, audio: RelayAudio },
    /// Stream copy into the relay's own buffer in `dir`.
    Buffer { dir: std::path::PathBuf, keep_secs: u32, audio: RelayAudio },
    /// H.264 transcode into nginx-rtmp.
    Transcode { publish: String },
}

impl Output {
    pub(crate) fn route(&self) -> Route {
        match self {
            Output::Nginx { .. } => Route::Nginx,
            Output::Buffer { .. } => Route::Buffer,
            Output::Transcode { .. } => Route::Transcode,
        }
    }

    /// The stream, as last probed, still travels this way (an unknown codec fits anything).
    pub(crate) fn fits(&self, probe: Option<&StreamProbe>) -> bool {
        match probe.and_then(|p| p.video.as_ref()) {
            None => true,
            Some(v) => (self.route() == Route::Nginx) == v.nginx_carries(),
        }
    }
}

/// Probes `source` into `state`; the probe, or the last one when the stream cannot be probed
/// now (ffmpeg will then say why it cannot be read).
pub(crate) fn probe_into(source: &str, state: &StateCell) -> Option<StreamProbe> {
    probe_fresh(source, state).0
}

/// [`probe_into`], and whether the stream answered this time.
pub(crate) fn probe_fresh(source: &str, state: &StateCell) -> (Option<StreamProbe>, bool) {
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
pub(crate) fn relay_loop(
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

/// A thread relaying one stream until `stop`.
pub(crate) struct Relay {
    pub(crate) slot: RunningSlot,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

pub(crate) fn start_relay(
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
    pub(crate) fn stop(mut self) {
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
pub(crate) fn snapshot(state: &StateCell) -> RelayState {
    let mut s = lock(state).clone();
    let young = s.since_ms.is_some_and(|t| now_ms() - t < CLEAN_RUN.as_millis() as i64);
    if s.running && s.last_error.is_some() && young {
        s.running = false;
    }
    s
}

//! One camera's supervisor: plans its streams, runs them (shared or one process each) and
//! plans anew when a codec changes; [`apply`] brings the running cameras to a config.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cctv_common::config::{Config, RelayAudio};
use cctv_common::events::now_ms;
use cctv_common::shutdown::CancellationToken;
use cctv_common::status::{RelayState, RelayStatus};

use crate::{
    audio_for, camera_relay_command, lock, pause, probe_into, relay_loop, run_once, snapshot, start_relay, Backoff,
    CameraPlan, Output, Route, RunningSlot, StateCell, StreamWatch, WatchedSlots, SPLIT_AFTER_FAILURES,
};

/// One camera's relays: its streams' states, and the thread that runs its process(es).
pub(crate) struct CameraRelay {
    pub(crate) id: u32,
    pub(crate) main: StateCell,
    pub(crate) sub: Option<StateCell>,
    /// The transcoded detect stream of a camera without sub-stream (reported while it has a
    /// route).
    pub(crate) detect: StateCell,
    /// The main stream goes to the relay's own buffer, at `buffer_url`.
    pub(crate) buffered: Arc<AtomicBool>,
    pub(crate) buffer_url: String,
    pub(crate) one_process: Arc<AtomicBool>,
    /// The shared process, for the watchdog.
    pub(crate) slot: RunningSlot,
    /// The per-stream processes the watchdog also judges (transcoded detect streams).
    pub(crate) watched: WatchedSlots,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
    pub(crate) stop: CancellationToken,
}

impl CameraRelay {
    pub(crate) fn status(&self, host: &str) -> RelayStatus {
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

    pub(crate) fn stop(mut self) {
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
pub(crate) struct StreamSpec {
    pub(crate) name: String,
    pub(crate) source: String,
    pub(crate) publish: String,
}

/// Relays a camera with an H.264 main and sub-stream: in one process while the watchdog can
/// see nginx-rtmp, else (or after repeated failures) one per stream; see the module
/// documentation. Both streams are probed again after every run; a codec that nginx-rtmp
/// cannot carry cancels `stop` (the camera's plan) and returns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_camera(
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

/// What a camera's relay is made of: a camera whose spec did not change keeps running across a
/// reload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CameraSpec {
    pub(crate) main: String,
    pub(crate) sub: Option<String>,
    pub(crate) audio: RelayAudio,
    pub(crate) publish: String,
    pub(crate) hls_dir: std::path::PathBuf,
    pub(crate) buffer_secs: u32,
    pub(crate) buffer_url: String,
}

impl CameraSpec {
    pub(crate) fn of(ch: &cctv_common::config::ChannelConfig, config: &Config) -> Self {
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
pub(crate) struct CameraStates {
    pub(crate) main: StateCell,
    pub(crate) sub: Option<StateCell>,
    pub(crate) detect: StateCell,
}

/// Everything a camera's supervisor thread needs.
pub(crate) struct CameraCtx {
    pub(crate) main: StreamSpec,
    pub(crate) sub: Option<StreamSpec>,
    pub(crate) audio: RelayAudio,
    /// `<hls_dir>/relay/ch<id>`.
    pub(crate) buffer_dir: std::path::PathBuf,
    pub(crate) buffer_secs: u32,
    pub(crate) states: CameraStates,
    pub(crate) buffered: Arc<AtomicBool>,
    pub(crate) one_process: Arc<AtomicBool>,
    pub(crate) slot: RunningSlot,
    pub(crate) watched: WatchedSlots,
    pub(crate) watch: Arc<Mutex<StreamWatch>>,
    pub(crate) stop: CancellationToken,
}

/// A camera's supervisor: probes its streams, plans how they travel ([`CameraPlan`]), relays
/// them so until the camera is stopped or a stream's codec changes, then plans anew.
pub(crate) fn supervise_camera(ctx: CameraCtx) {
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
pub(crate) fn start_camera(
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
pub(crate) type Cameras = std::collections::BTreeMap<u32, (CameraSpec, CameraRelay)>;

/// Brings `cameras` to `config`: cameras removed or changed are stopped (changed ones started
/// anew), new ones started; unchanged ones go on untouched. Returns the stopped relays, to be
/// joined off the async runtime.
pub(crate) fn apply(
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

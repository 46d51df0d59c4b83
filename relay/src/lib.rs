//! `cctv-relay`: the camera relays, run next to nginx-rtmp (and the nginx-rtmp config, [`nginx`]).
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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cctv_common::config::Config;
use cctv_common::heartbeat;
use cctv_common::keys::Keys;
use cctv_common::shutdown::CancellationToken;
use cctv_common::status::RelayStatus;
use redis::AsyncCommands;

pub mod nginx;
pub mod ring;

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

mod camera;
mod commands;
mod plan;
mod stream;
mod watch;

use camera::*;
pub use commands::*;
pub use plan::*;
use stream::*;
pub use watch::*;

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
    // The private lists that hold camera secrets go when the relays do (see secret_input).
    let _lists = cctv_common::secret_input::Lists;
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
    // A heartbeat like the workers' one: `cctv-relay health` (the container health
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
            if let Err(e) = status.publish(&mut conn, &keys, STATUS_TTL_SECS).await {
                tracing::warn!(channel = status.channel, error = %e, "cannot publish relay status");
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
    use std::collections::HashMap;

    use cctv_common::config::RelayAudio;
    use cctv_common::ffmpeg::{self, FfmpegProcess};
    use cctv_common::probe::StreamProbe;

    fn args(cmd: std::io::Result<ffmpeg_sidecar::command::FfmpegCommand>) -> String {
        format!("{:?}", cmd.unwrap().as_inner())
    }

    #[test]
    fn rtsp_relays_copy_video_over_tcp_and_handle_audio_per_config() {
        let drop = args(relay_command("rtsp://cam/1", "rtmp://127.0.0.1/live/ch1", RelayAudio::Drop, 10));
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
        // A camera's password is not on the command line: the input is a private list.
        let secret =
            args(relay_command("rtsp://u:pw-9f3@cam/1?password=tk-77", "rtmp://x/live/ch1", RelayAudio::Drop, 10));
        assert!(!secret.contains("pw-9f3") && !secret.contains("tk-77") && !secret.contains("cam/1"), "{secret}");
        assert!(secret.contains("\"concat\"") && secret.contains("rtmp://x/live/ch1"), "{secret}");
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
        assert!(!cmd.contains("u:p@"), "no password on the command line: {cmd}");
        assert_eq!(cmd.matches("\"concat\"").count(), 2, "{cmd}");
        assert!(pos("\"-i\"") < pos("\"0:v:0\""), "{cmd}");
        assert!(pos("\"0:v:0\"") < pos("\"0:a:0?\"") && pos("\"0:a:0?\"") < pos("live/ch1\""), "{cmd}");
        assert!(pos("live/ch1\"") < pos("\"1:v:0\"") && pos("\"1:v:0\"") < pos("live/ch1_sub"), "{cmd}");
        assert!(!cmd.contains("1:a:0"), "{cmd}");
        let plain = args(camera_relay_command(
            ("rtsp://cam/main", "rtmp://x/live/ch1"),
            ("rtsp://cam/sub", "rtmp://x/live/ch1_sub"),
            RelayAudio::Copy,
            10,
        ));
        assert_eq!(plain.matches("-rtsp_transport").count(), 2, "{plain}");
        let at = |needle: &str| plain.find(needle).unwrap_or_else(|| panic!("{needle} missing from {plain}"));
        assert!(at("cam/main") < at("cam/sub") && at("cam/sub") < at("\"0:v:0\""), "{plain}");
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
        let buffer = args(buffer_command("rtsp://cam/1", &ring, RelayAudio::Aac, 10));
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

use std::time::Duration;

use cctv_common::events::{now_ms, ChannelState, MotionEventKind};
use cctv_testkit::Pusher;

use cctv_testkit::cluster::{assert_no_secret, channel, channel_with, people_clip, probe_duration, wait_for, Cluster};

const QUIET_BEFORE: f64 = 8.0;
const QUIET_AFTER: f64 = 22.0;

/// One batch of three channels: footage with quiet periods around real motion, a still scene,
/// and a camera whose stream does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn motion_follows_activity_still_is_quiet_and_missing_is_offline() {
    let channels = [channel(1), channel(2), channel(3)].concat();
    let mut cluster = Cluster::new(&channels, 8, "[motion]\nstall_timeout_secs = 5\n");
    let active = people_clip(cluster.dir.path(), "active.mp4", 3, QUIET_BEFORE, QUIET_AFTER);
    let active_len = probe_duration(&active);
    let motion_secs = active_len - QUIET_BEFORE - QUIET_AFTER;
    let still = cluster.path("still.mp4");
    cctv_testkit::make_still_clip(&cctv_testkit::media("people-detection.gif"), &still, 40.0);

    let p1 = Pusher::start(&active, &cluster.nginx.live_url(), "ch1");
    let _p2 = Pusher::start(&still, &cluster.nginx.live_url(), "ch2");
    let t0 = p1.wait_publishing();
    // ch3: nobody publishes.
    cluster.start_scheduler();
    let _worker = cluster.spawn(env!("CARGO_BIN_EXE_worker-motion"), &["run", "--concurrency", "1"]);

    // Activity starts QUIET_BEFORE s after t0 and lasts motion_secs.
    let activity_ms = t0 + (QUIET_BEFORE * 1000.0) as i64;
    let still_ms = activity_ms + (motion_secs * 1000.0) as i64;
    let end_quiet_ms = (cluster.config.motion.end_quiet_secs * 1000.0) as i64;

    let end = wait_for(Duration::from_secs(45), || async {
        cluster.motion_events().await.into_iter().find(|e| e.channel == 1 && e.kind == MotionEventKind::End)
    })
    .await
    .expect("motion on ch1 should end");
    let events = cluster.motion_events().await;
    let start = events.iter().find(|e| e.channel == 1 && e.kind == MotionEventKind::Start).expect("a start on ch1");
    assert_eq!(start.event_id, end.event_id, "start and end pair up");
    let start_lag = start.ts_ms - activity_ms;
    let end_lag = end.ts_ms - still_ms;
    eprintln!("ch1: start {start_lag} ms after activity began; end {end_lag} ms after the scene went still");
    assert!((-300..=1000).contains(&start_lag), "motion start {start_lag} ms from the activity");
    assert!(end_lag >= 0 && end_lag <= end_quiet_ms + 2000, "end {end_lag} ms after still; T = {end_quiet_ms}");
    assert!(!start.boxes.is_empty() && start.area > 0.0, "{start:?}");
    assert_eq!(events.iter().filter(|e| e.channel == 1).count(), 2, "exactly one event on ch1: {events:?}");
    // The event's picture: a JPEG of its busiest frame, at the analysed size, in Redis.
    let picture: Option<Vec<u8>> = redis::AsyncCommands::get(
        &mut cluster.conn().await,
        cctv_common::keys::Keys::new(&cluster.config.cluster.namespace).motion_thumbnail(&end.event_id),
    )
    .await
    .unwrap();
    let picture = picture.expect("the motion event has a picture");
    let decoded =
        opencv::imgcodecs::imdecode(&opencv::core::Vector::from_slice(&picture), opencv::imgcodecs::IMREAD_UNCHANGED)
            .expect("the picture is a JPEG");
    assert!(
        picture.starts_with(b"\xff\xd8") && opencv::prelude::MatTraitConst::cols(&decoded) > 0,
        "{} bytes",
        picture.len()
    );

    // The still stream: watch it 30 s from its start, including the first seconds.
    let until = t0 + 31_000;
    while now_ms() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let events = cluster.motion_events().await;
    assert!(events.iter().all(|e| e.channel != 2), "still stream raised motion: {events:?}");
    let s2 = cluster.channel_status(2).await.expect("ch2 status");
    // Watched: analysed, or judged still from its packets by the gate (`motion.gate`).
    assert!(s2.online && s2.frames_total + s2.frames_gated >= 100, "{s2:?}");

    // The missing stream is offline with a reason, and never stopped the others.
    let s3 = cluster.channel_status(3).await.expect("ch3 status");
    assert!(!s3.online && s3.state == ChannelState::Offline, "{s3:?}");
    let reason = s3.reason.clone().unwrap_or_default();
    assert!(!reason.is_empty(), "{s3:?}");
    let s1 = cluster.channel_status(1).await.expect("ch1 status");
    let fresh = s1.last_frame_ms.is_some_and(|t| now_ms() - t < 5_000);
    assert!(s1.online && fresh, "ch1 keeps running beside the offline ch3: {s1:?}");
    assert_no_secret(&serde_json::to_string(&(s1, s2, s3)).unwrap());

    // The motion log holds the same events.
    let log = std::fs::read_to_string(cluster.dir.path().join("logs/motion.jsonl")).expect("motion log");
    assert_eq!(log.lines().filter(|l| l.contains("\"channel\":1")).count(), 2, "{log}");
}

/// `motion.keyframes_only`: only keyframes are decoded (one per GOP, here 1 s), yet activity
/// still starts and ends a motion event, and the channel analyses about one frame per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframes_only_still_sees_activity_start_and_end() {
    let mut cluster = Cluster::new(&channel(1), 8, "[motion]\nkeyframes_only = true\nend_quiet_secs = 4\n");
    let clip = people_clip(cluster.dir.path(), "kf.mp4", 4, 6.0, 30.0);
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    cluster.start_scheduler();
    let _worker = cluster.spawn(env!("CARGO_BIN_EXE_worker-motion"), &["run", "--concurrency", "1"]);
    let end = wait_for(Duration::from_secs(60), || async {
        cluster.motion_events().await.into_iter().find(|e| e.channel == 1 && e.kind == MotionEventKind::End)
    })
    .await
    .expect("a motion event that ends, from keyframes only");
    assert!(end.ts_ms > end.started_ms);
    let s = cluster.channel_status(1).await.expect("status");
    assert!(s.online && s.fps > 0.5 && s.fps < 2.0, "about one keyframe per second: {s:?}");
}

/// `[[channel.mask]]` and `[channel.motion]`: the same real footage on three channels; on ch2
/// a mask covers the part of the picture where the people walk (here all of it), ch3 has its
/// own pixel threshold that no change reaches: ch1 has its motion event, ch2 and ch3 none,
/// though they are analysed all the while (so per-channel settings reach the worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn motion_inside_a_mask_or_under_a_channels_own_threshold_raises_no_event() {
    let masked = channel_with(2, "[[channel.mask]]\nname = \"everything\"\npoints = [[0, 0], [1, 0], [1, 1], [0, 1]]");
    let insensitive = channel_with(3, "[channel.motion]\npixel_threshold = 255");
    let channels = [channel(1), masked, insensitive].concat();
    let mut cluster = Cluster::new(&channels, 8, "");
    let clip = people_clip(cluster.dir.path(), "active.mp4", 3, 4.0, 6.0);
    let p1 = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let _p2 = Pusher::start(&clip, &cluster.nginx.live_url(), "ch2");
    let _p3 = Pusher::start(&clip, &cluster.nginx.live_url(), "ch3");
    p1.wait_publishing();
    cluster.start_scheduler();
    let _worker = cluster.spawn(env!("CARGO_BIN_EXE_worker-motion"), &["run", "--concurrency", "1"]);

    let ch1 = wait_for(Duration::from_secs(45), || async {
        cluster.motion_events().await.into_iter().find(|e| e.channel == 1 && e.kind == MotionEventKind::End)
    })
    .await;
    assert!(ch1.is_some(), "the unmasked channel sees the people");
    // A whole loop of the clip (16 s at 5 fps) analysed on ch2 and ch3.
    for ch in [2, 3] {
        let s = wait_for(Duration::from_secs(30), || async {
            cluster.channel_status(ch).await.filter(|s| s.online && s.frames_total + s.frames_gated >= 80)
        })
        .await;
        assert!(s.is_some(), "ch{ch} was analysed: {:?}", cluster.channel_status(ch).await);
    }
    let events = cluster.motion_events().await;
    assert!(events.iter().all(|e| e.channel != 2), "motion inside the mask: {events:?}");
    assert!(events.iter().all(|e| e.channel != 3), "motion under ch3's own threshold: {events:?}");
}

/// `motion.gate`: a still camera is watched from its packets, decoding one keyframe per GOP
/// (most of its frames are never decoded), while a camera with activity has its motion event
/// from the activity's start to its end as without the gate: the P-frames of the people
/// walking in open the gate and the frames from the last keyframe on are analysed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_leaves_a_still_camera_undecoded_and_catches_activity_from_its_start() {
    let channels = [channel(1), channel(2)].concat();
    // The defaults; said here so the test keeps testing them whatever the defaults become. The
    // clips have a 1 s GOP: a closed gate analyses every other keyframe, keeps the others
    // undecoded, and an opening gate may have to start from one of those.
    let mut cluster = Cluster::new(&channels, 8, "[motion]\ngate = true\ngate_keyframe_secs = 2\n");
    let active = people_clip(cluster.dir.path(), "active.mp4", 3, QUIET_BEFORE + 12.0, QUIET_AFTER);
    let active_len = probe_duration(&active);
    let quiet_before = QUIET_BEFORE + 12.0;
    let motion_secs = active_len - quiet_before - QUIET_AFTER;
    let still = cluster.path("still.mp4");
    cctv_testkit::make_still_clip(&cctv_testkit::media("people-detection.gif"), &still, 60.0);
    let p1 = Pusher::start(&active, &cluster.nginx.live_url(), "ch1");
    let _p2 = Pusher::start(&still, &cluster.nginx.live_url(), "ch2");
    let t0 = p1.wait_publishing();
    cluster.start_scheduler();
    let _worker = cluster.spawn(env!("CARGO_BIN_EXE_worker-motion"), &["run", "--concurrency", "1"]);

    let activity_ms = t0 + (quiet_before * 1000.0) as i64;
    let still_ms = activity_ms + (motion_secs * 1000.0) as i64;
    let end_quiet_ms = (cluster.config.motion.end_quiet_secs * 1000.0) as i64;
    // By the time people walk in, ch1's gate has learned the quiet and closed.
    let before = wait_for(Duration::from_secs(30), || async {
        cluster.channel_status(1).await.filter(|s| s.frames_gated > 0 && now_ms() < activity_ms)
    })
    .await;
    assert!(before.is_some(), "ch1's gate closed on the quiet scene: {:?}", cluster.channel_status(1).await);
    let end = wait_for(Duration::from_secs(60), || async {
        cluster.motion_events().await.into_iter().find(|e| e.channel == 1 && e.kind == MotionEventKind::End)
    })
    .await
    .expect("motion on ch1 should end");
    let events = cluster.motion_events().await;
    let start = events.iter().find(|e| e.channel == 1 && e.kind == MotionEventKind::Start).expect("a start on ch1");
    let start_lag = start.ts_ms - activity_ms;
    let end_lag = end.ts_ms - still_ms;
    eprintln!("gated ch1: start {start_lag} ms after activity began; end {end_lag} ms after the scene went still");
    assert!((-300..=1000).contains(&start_lag), "motion start {start_lag} ms from the activity");
    assert!(end_lag >= 0 && end_lag <= end_quiet_ms + 2000, "end {end_lag} ms after still; T = {end_quiet_ms}");
    assert_eq!(events.iter().filter(|e| e.channel == 1).count(), 2, "exactly one event on ch1: {events:?}");

    // The still camera: no event, watched all the while, most of it from packets alone.
    let until = t0 + 50_000;
    while now_ms() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let events = cluster.motion_events().await;
    assert!(events.iter().all(|e| e.channel != 2), "still stream raised motion: {events:?}");
    let s2 = cluster.channel_status(2).await.expect("ch2 status");
    let watched = s2.frames_total + s2.frames_gated;
    eprintln!("still ch2: {} frames analysed, {} left undecoded by the gate", s2.frames_total, s2.frames_gated);
    assert!(s2.online && watched >= 200, "watched 45 s at 5 fps: {s2:?}");
    assert!(s2.frames_gated * 10 >= watched * 7, "most frames of the still camera never decoded: {s2:?}");
    // Open while it learns (~1 s at 5 fps), then one keyframe every 2 s (not every 1 s).
    assert!((20..=44).contains(&s2.frames_total), "one keyframe every 2 s analysed (56 with every keyframe): {s2:?}");
}

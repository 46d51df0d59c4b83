use std::time::{Duration, Instant};

use cctv_testkit::{Nginx, Pusher};
use worker_motion::rtmp::RtmpPlayer;

/// The gate's in-process packet source against a real nginx-rtmp: a published stream's video
/// comes as FLV tags (the decoder configuration, keyframes, pictures, timestamps rising), a
/// stream nobody publishes is an error that says so, and a publisher that leaves ends the stream.
#[test]
fn an_rtmp_stream_is_played_in_process_tag_by_tag() {
    let nginx = Nginx::start();
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    cctv_testkit::make_camera_clip(&cctv_testkit::media("people-detection.gif"), &clip, 2, 320, 180);
    let pusher = Pusher::start(&clip, &nginx.live_url(), "cam");
    pusher.wait_publishing();

    let url = format!("{}/cam", nginx.live_url());
    let mut player = RtmpPlayer::connect(&url, Duration::from_secs(5)).expect("playing a published stream");
    let (mut config, mut keyframes, mut pictures, mut last_ts) = (0, 0, 0, 0u32);
    let started = Instant::now();
    while (keyframes < 2 || config == 0) && started.elapsed() < Duration::from_secs(20) {
        let tag = player.next_tag().expect("reading").expect("the stream goes on");
        assert_eq!(tag.video_codec(), Some(worker_motion::flv::FLV_CODEC_AVC));
        if tag.is_avc_config() {
            config += 1;
        } else if tag.is_avc_picture() {
            pictures += 1;
            keyframes += usize::from(tag.is_keyframe());
            assert!(tag.ts >= last_ts, "timestamps go back: {} after {last_ts}", tag.ts);
            last_ts = tag.ts;
        }
    }
    assert!(config >= 1 && keyframes >= 2 && pictures > keyframes, "{config} {keyframes} {pictures}");
    // The stop handle ends a blocked read at once.
    let stop = player.stopper().unwrap();
    stop.stop();
    assert!(!matches!(player.next_tag(), Ok(Some(_))) || drain_ends(&mut player), "a stopped player still plays");

    // A stream nobody publishes fails at connect, saying so.
    let missing = RtmpPlayer::connect(&format!("{}/nobody", nginx.live_url()), Duration::from_secs(5));
    let e = missing.err().expect("playing a stream nobody publishes must fail");
    assert!(e.to_string().contains("not found"), "{e}");

    // The publisher leaves: the player's stream ends (no tag forever, no hang past the stall).
    let mut player = RtmpPlayer::connect(&url, Duration::from_secs(5)).unwrap();
    assert!(player.next_tag().unwrap().is_some());
    drop(pusher);
    let ended = Instant::now();
    let end = loop {
        match player.next_tag() {
            Ok(Some(_)) if ended.elapsed() < Duration::from_secs(10) => continue,
            other => break other,
        }
    };
    assert!(!matches!(end, Ok(Some(_))), "the stream went on after its publisher left");
    assert!(ended.elapsed() < Duration::from_secs(8), "took {:?}", ended.elapsed());
}

/// Tags already received may still come out of a stopped player; it then ends.
fn drain_ends(player: &mut RtmpPlayer) -> bool {
    (0..10_000).any(|_| !matches!(player.next_tag(), Ok(Some(_))))
}

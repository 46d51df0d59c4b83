//! The simulated RTSP cameras serve every client on its own, as a camera does: a client gets the
//! stream from its start whenever it connects, and nobody else's connecting rewinds it. (They used to share one
//! media among the clients of a stream; a client that connected while that media was ending made
//! it refuse every later client, "Operation not permitted" and then "Invalid data found when
//! processing input" for good, which broke the compose test, where two channels read the same
//! camera, now and then.)

use std::process::Command;
use std::time::Duration;

use cctv_testkit::{make_camera_clip, media, RtspCameras};

/// Video packets ffprobe reads from `input` (an RTSP URL or a file), to the stream's end.
fn video_packets(input: &str) -> usize {
    let out = Command::new("timeout")
        .args(["30", "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-select_streams", "v:0"])
        .args(["-show_entries", "packet=pts", "-of", "csv=p=0", input])
        .output()
        .expect("running ffprobe");
    assert!(out.status.success(), "ffprobe {input}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn a_client_that_joins_a_watched_camera_gets_the_whole_stream() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("cam.mp4");
    make_camera_clip(&media("worker-zone-detection.gif"), &clip, 1, 320, 240);
    let frames = {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-count_packets", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=nb_read_packets", "-of", "csv=p=0"])
            .arg(&clip)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse::<usize>().expect("packet count of the clip")
    };
    let cams = RtspCameras::start(&[(clip.clone(), clip)]);
    let url = cams.url("", 1, "main");

    // The first client watches; the second connects 2 s (50 frames) later.
    let first = std::thread::spawn({
        let url = url.clone();
        move || video_packets(&url)
    });
    std::thread::sleep(Duration::from_secs(2));
    let second = video_packets(&url);
    let first = first.join().unwrap();
    // Each gets the clip once, whole: the second client neither missed its start nor rewound the
    // first one's stream (a frame at either end of a session is allowed for).
    for (who, got) in [("first", first), ("second", second)] {
        assert!(got.abs_diff(frames) <= 2, "the {who} client got {got} frames of a {frames}-frame clip from {url}");
    }
}

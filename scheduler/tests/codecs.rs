//! Cameras as sites have them, on a real RTSP server (gst-rtsp-server, `rtph265pay`,
//! `rtppcmapay`): an H.265 main stream with an H.264 sub-stream, and a camera that sends
//! nothing but H.265, both with G.711 audio. Relay → scheduler → worker-motion →
//! worker-record, in process: each camera's codecs are probed and shown, motion runs on both
//! (the sub-stream as it is, the H.265-only camera through its H.264 detect transcode), and
//! both are backed up by stream copy from the relay's own buffer: H.265 tagged `hvc1`, the
//! G.711 audio as AAC, with pre-roll and without gaps.

use std::path::Path;
use std::time::Duration;

use cctv_common::events::BackupEventKind;
use cctv_common::shutdown::CancellationToken;
use cctv_common::status::RelayStatus;
use cctv_testkit::cluster::{record_section, run_in_thread, wait_for, Cluster};
use cctv_testkit::RtspCameras;
use redis::AsyncCommands;

async fn status(cluster: &Cluster, id: u32) -> Option<RelayStatus> {
    let mut c = cluster.conn().await;
    let s: Option<String> = c.get(cluster.keys.relay_status(id)).await.unwrap();
    s.map(|s| serde_json::from_str(&s).unwrap())
}

/// (codec_type, codec_name, codec_tag_string, width) of every stream of a file or URL.
fn streams(url: &Path) -> Vec<(String, String, String, u64)> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "5000000"])
        .args(["-show_entries", "stream=codec_type,codec_name,codec_tag_string,width", "-of", "csv=p=0"])
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // ffprobe prints the entries in its own order: name, type, tag[, width].
            let f: Vec<&str> = l.split(',').collect();
            Some((
                f.get(1)?.to_string(),
                f.first()?.to_string(),
                f.get(2)?.to_string(),
                f.get(3).and_then(|w| w.parse().ok()).unwrap_or(0),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_cameras_are_watched_and_backed_up_by_stream_copy_with_their_audio() {
    cctv_common::telemetry::init(None);
    let tmp = tempfile::tempdir().unwrap();
    let source = cctv_testkit::media("worker-zone-detection.gif");
    // Quiet, someone walks through, quiet again: one event per camera session.
    let event = tmp.path().join("event.mp4");
    cctv_testkit::make_clip(&source, &event, 1, 6.0, 30.0);
    let (main265, sub264) = (tmp.path().join("main265.mp4"), tmp.path().join("sub264.mp4"));
    cctv_testkit::to_h265(&event, &main265, 640, 360);
    cctv_testkit::make_camera_clip(&event, &sub264, 1, 320, 180);
    let cameras = RtspCameras::start_with_g711(&[(main265.clone(), sub264), (main265.clone(), main265)]);
    let channels = format!(
        "[[channel]]\nid = 1\nname = \"h265 main\"\nsource = \"{}\"\ndetect_source = \"{}\"\n\
         [[channel]]\nid = 2\nname = \"h265 only\"\nsource = \"{}\"\n\
         [[channel]]\nid = 3\nname = \"wrong path\"\nsource = \"{}?password=secret\"\n",
        cameras.url("admin:secret@", 1, "main"),
        cameras.url("admin:secret@", 1, "sub"),
        cameras.url("admin:secret@", 2, "main"),
        cameras.url("", 9, "main"),
    );
    let port = cctv_testkit::free_port();
    let extra = format!(
        "{}\n[relay]\naudio = \"copy\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
        record_section(tmp.path(), "pre_roll_secs = 3\npost_roll_secs = 3")
    );
    let mut cluster = Cluster::new(&channels, 8, &extra);
    let stop = CancellationToken::new();
    let relay = tokio::spawn(cctv_relay::run(cluster.config.clone(), stop.clone()));

    // Each camera's streams are probed and shown: codec, size, rate, audio, and how each travels.
    let st1 = wait_for(Duration::from_secs(40), || async {
        status(&cluster, 1).await.filter(|s| s.main.running && s.sub.as_ref().is_some_and(|s| s.running))
    })
    .await
    .expect("ch1 relayed");
    let codecs = st1.codecs().unwrap();
    assert!(codecs.starts_with("main H.265 640x360 25 fps · audio G.711 A-law · sub H.264 320x180"), "{codecs}");
    assert!(st1.main.route.as_deref().unwrap().starts_with("relay buffer, stream copy"), "{st1:?}");
    assert_eq!(st1.sub.as_ref().unwrap().route.as_deref(), Some("nginx-rtmp, stream copy"));
    let st2 = wait_for(Duration::from_secs(40), || async {
        status(&cluster, 2).await.filter(|s| s.main.running && s.detect.as_ref().is_some_and(|d| d.running))
    })
    .await
    .expect("ch2 relayed with a detect transcode");
    assert_eq!(st2.detect.as_ref().unwrap().route.as_deref(), Some("nginx-rtmp, transcoded to H.264 for detection"));
    // What motion reads: ch1's sub-stream as the camera sends it, ch2 transcoded to H.264.
    let live = cluster.nginx.live_url();
    let video_at = |url: String| async move {
        wait_for(Duration::from_secs(30), || async {
            streams(Path::new(&url)).into_iter().find(|s| s.0 == "video").map(|s| (s.1, s.3))
        })
        .await
    };
    assert_eq!(video_at(format!("{live}/ch1_sub")).await, Some(("h264".into(), 320)));
    assert_eq!(video_at(format!("{live}/ch2")).await, Some(("h264".into(), 640)));
    // A camera the relay cannot read says why in plain words (the password in the query string
    // included, nothing of it shows).
    let missing = wait_for(Duration::from_secs(40), || async {
        status(&cluster, 3).await.and_then(|s| s.main.last_error).filter(|e| e.contains("404"))
    })
    .await;
    assert_eq!(missing.as_deref(), Some("camera has no stream at that path (404 Not Found)"));
    // Record jobs are sent to the relay's buffer.
    let mut c = cluster.conn().await;
    for id in [1, 2] {
        let key: Option<String> = c.get(cluster.keys.record_playlist(id)).await.unwrap();
        assert_eq!(
            key.as_deref(),
            Some(cluster.config.relay_playlist_url(cluster.config.channel(id).unwrap()).as_str())
        );
    }

    cluster.start_scheduler();
    let motion = run_in_thread(cluster.config.clone(), stop.clone(), worker_motion::run);
    let record = run_in_thread(cluster.config.clone(), stop.clone(), worker_record::run);
    let files = wait_for(Duration::from_secs(150), || async {
        let files: Vec<_> =
            cluster.backup_events().await.into_iter().filter(|b| b.kind == BackupEventKind::File).collect();
        let both = [1, 2].iter().all(|id| files.iter().any(|b| b.channel == *id));
        both.then_some(files)
    })
    .await;
    let events = cluster.backup_events().await;
    let files = files.unwrap_or_else(|| panic!("a backup of each camera: {events:?}"));
    for id in [1, 2] {
        let motion = cluster.motion_events().await.into_iter().filter(|m| m.channel == id).count();
        assert!(motion > 0, "no motion on ch{id}");
        let b = files.iter().find(|b| b.channel == id).unwrap();
        let path = Path::new(b.file.as_deref().unwrap());
        assert!(path.extension().is_some_and(|e| e == "mp4"), "{b:?}");
        let s = streams(path);
        assert!(s.iter().any(|s| s.0 == "video" && s.1 == "hevc" && s.2 == "hvc1" && s.3 == 640), "ch{id}: {s:?}");
        assert!(s.iter().any(|s| s.0 == "audio" && s.1 == "aac"), "ch{id}: G.711 became AAC: {s:?}");
        // Pre-roll before the trigger, the activity after it, in one piece.
        assert!(b.pre_roll_ms.is_some_and(|p| p >= 2_000), "ch{id} pre-roll: {b:?}");
        assert!(b.duration_secs >= 6.0, "ch{id}: {b:?}");
        let span = (b.end_ms - b.start_ms) as f64 / 1000.0;
        assert!(
            (span - b.duration_secs).abs() < 1.5,
            "ch{id}: wall-clock span {span} s vs {} s of video: a gap",
            b.duration_secs
        );
        assert!(b.error.is_none(), "{b:?}");
    }
    // The dashboard: each card says what the camera sends; an H.265 backup plays where the
    // browser can, else (headless Chromium has no H.265 decoder) through an H.264 copy made on
    // demand, cached and counted in storage, with the original offered for download.
    let http: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let get_json = |path: String| -> serde_json::Value {
        http.get(format!("http://127.0.0.1:{port}{path}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap()
    };
    let card = get_json("/api/channels/1".into());
    assert!(card["codecs"].as_str().is_some_and(|c| c.starts_with("main H.265 640x360")), "{card}");
    let backup = get_json("/api/backups?channel=2".into())["items"][0].clone();
    assert_eq!(backup["codec"], "hevc", "{backup}");
    let copy_url = backup["h264_copy"].as_str().expect("an H.264 copy is offered").to_string();
    let mut resp = http.get(format!("http://127.0.0.1:{port}{copy_url}")).call().unwrap();
    assert_eq!(resp.status(), 200);
    let copy = tmp.path().join("copy.mp4");
    std::fs::write(&copy, resp.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap()).unwrap();
    let s = streams(&copy);
    assert!(s.iter().any(|s| s.0 == "video" && s.1 == "h264"), "{s:?}");
    let file = backup["file"].as_str().unwrap();
    let dom =
        cctv_testkit::browse(port, &format!("/?play={file}"), &["--autoplay-policy=no-user-gesture-required"], 15_000);
    let note = dom.split("id=\"player-note\"").nth(1).unwrap_or("");
    assert!(note.contains("data-hevc=\"copy\"") && note.contains("cannot play"), "{note}");
    let player = dom.split("id=\"player\"").nth(1).and_then(|r| r.split('>').next()).unwrap_or("");
    assert!(player.contains("data-played=\"yes\""), "the H.264 copy did not play: {player}");
    assert!(dom.contains("data-codecs=\"main H.265 640x360"), "the card does not show the codecs");
    let counted = wait_for(Duration::from_secs(30), || async {
        let storage = get_json("/api/storage".into());
        storage["items"][0]["h264_copy_bytes"].as_u64().filter(|b| *b > 0)
    })
    .await;
    assert!(counted.is_some(), "the H.264 copy is not counted in storage");

    // `cctv status` says what each camera sends and how each stream travels.
    let out = std::process::Command::new(cctv_testkit::netns::workspace_bin("cctv"))
        .arg("--config")
        .arg(&cluster.config_path)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let codecs = text.lines().find(|l| l.starts_with("1 ") && l.contains("main H.265")).unwrap_or_default();
    assert!(
        codecs.contains("sub H.264 320x180") && codecs.contains("ch1: relay buffer, stream copy"),
        "cctv status: {text}"
    );
    let only = text.lines().find(|l| l.starts_with("2 ") && l.contains("main H.265")).unwrap_or_default();
    assert!(only.contains("transcoded to H.264 for detection"), "cctv status: {text}");
    assert!(!text.contains("secret"), "{text}");

    // No status ever said the old nothing, and no password anywhere.
    for id in [1, 2, 3] {
        let json = serde_json::to_string(&status(&cluster, id).await).unwrap();
        assert!(!json.contains("ffmpeg failed") && !json.contains("[error]") && !json.contains("secret"), "{json}");
    }
    stop.cancel();
    let _ = relay.await;
    let _ = (motion.join(), record.join());
}

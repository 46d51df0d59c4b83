//! RTSP cameras (a real gst-rtsp-server) → `cctv-relay run` → nginx-rtmp: main and sub-streams
//! arrive with stream copy; a camera server that goes away is reported and the relays come
//! back by themselves when it returns; no camera password in any status.

use std::time::Duration;

use cctv_common::shutdown::CancellationToken;
use cctv_common::status::RelayStatus;
use cctv_testkit::cluster::{wait_for, Cluster};
use cctv_testkit::RtspCameras;
use redis::AsyncCommands;

fn probe_stream(url: &str) -> Option<(String, u64, u64)> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "5000000", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0"])
        .arg(url)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.trim().split(',');
    Some((f.next()?.to_string(), f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

async fn status(cluster: &Cluster, id: u32) -> Option<RelayStatus> {
    let mut c = cluster.conn().await;
    let s: Option<String> = c.get(cluster.keys.relay_status(id)).await.unwrap();
    s.map(|s| serde_json::from_str(&s).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_cameras_are_relayed_into_nginx_and_relays_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let (main, sub) = (tmp.path().join("main.mp4"), tmp.path().join("sub.mp4"));
    let source = cctv_testkit::media("worker-zone-detection.gif");
    cctv_testkit::make_camera_clip(&source, &main, 6, 640, 360);
    cctv_testkit::make_camera_clip(&source, &sub, 6, 320, 180);
    // Camera 2 sends B-frames (its first RTSP packet has no PTS).
    let main_bframes = tmp.path().join("main-bframes.mp4");
    cctv_testkit::make_camera_clip_with_bframes(&source, &main_bframes, 6, 640, 360, 3);
    let cams = vec![(main.clone(), sub.clone()), (main_bframes, sub.clone())];
    let cameras = RtspCameras::start(&cams);
    let port = cameras.port;
    let channels: String = (1..=2)
        .map(|i| {
            format!(
                "[[channel]]\nid = {i}\nname = \"cam {i}\"\nsource = \"{}\"\ndetect_source = \"{}\"\n",
                cameras.url("admin:secret@", i, "main"),
                cameras.url("admin:secret@", i, "sub")
            )
        })
        .collect();
    let cluster = Cluster::new(&channels, 8, "");
    let stop = CancellationToken::new();
    let relay = tokio::spawn(cctv_relay::run(cluster.config.clone(), stop.clone()));

    // Both streams of both cameras reach nginx-rtmp, unchanged (stream copy).
    let live = cluster.nginx.live_url();
    for i in 1..=2 {
        let m = wait_for(Duration::from_secs(30), || async { probe_stream(&format!("{live}/ch{i}")) }).await;
        assert_eq!(m, Some(("h264".into(), 640, 360)), "ch{i} main");
        let s = wait_for(Duration::from_secs(30), || async { probe_stream(&format!("{live}/ch{i}_sub")) }).await;
        assert_eq!(s, Some(("h264".into(), 320, 180)), "ch{i} sub");
    }
    let st = wait_for(Duration::from_secs(10), || async { status(&cluster, 1).await.filter(|s| s.main.running) }).await;
    assert!(st.is_some(), "relay status reports ch1 running");

    // The camera server goes away: relays report it (without the password)...
    drop(cameras);
    let down = wait_for(Duration::from_secs(30), || async {
        status(&cluster, 1).await.filter(|s| !s.main.running && s.main.last_error.is_some())
    })
    .await
    .expect("ch1 relay reported down");
    let json = serde_json::to_string(&down).unwrap();
    assert!(!json.contains("secret"), "password leaked: {json}");
    eprintln!("relay down: {:?}", down.main.last_error);

    // ...and come back by themselves when it returns on the same address.
    let _cameras = RtspCameras::start_on(port, &cams);
    let back = wait_for(Duration::from_secs(45), || async { probe_stream(&format!("{live}/ch1")) }).await;
    assert_eq!(back, Some(("h264".into(), 640, 360)), "ch1 relayed again");
    let st = status(&cluster, 1).await.unwrap();
    assert!(st.main.restarts >= 1, "{st:?}");
    stop.cancel();
    let _ = relay.await;
}

/// A camera that asks for a password (a real RTSP server with Basic authentication) and a
/// channel configured with the wrong one: its relay reports "401 Unauthorized" in plain words —
/// in the relay status, `/api/channels`, `cctv status` and on the dashboard card — while the
/// channel with the right password is relayed; no password appears anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_refusing_the_password_is_reported_with_the_reason_everywhere() {
    cctv_common::telemetry::init(None);
    let tmp = tempfile::tempdir().unwrap();
    let (main, sub) = (tmp.path().join("main.mp4"), tmp.path().join("sub.mp4"));
    let source = cctv_testkit::media("worker-zone-detection.gif");
    cctv_testkit::make_camera_clip(&source, &main, 6, 640, 360);
    cctv_testkit::make_camera_clip(&source, &sub, 6, 320, 180);
    let cameras = RtspCameras::start_with_auth(&[(main.clone(), sub.clone()), (main, sub)], "admin:right-pass");
    // Channel 3 gives its password in the query string, as many cameras take it (this server
    // wants user-info, so it is refused: its reason must not carry the query).
    let channels = format!(
        "[[channel]]\nid = 1\nname = \"gate\"\nsource = \"{}\"\n[[channel]]\nid = 2\nname = \"yard\"\nsource = \"{}\"\n\
         [[channel]]\nid = 3\nname = \"door\"\nsource = \"{}?user=admin&password=qs-pass\"\n",
        cameras.url("admin:right-pass@", 1, "main"),
        cameras.url("admin:wrong-pass@", 2, "main"),
        cameras.url("", 2, "main")
    );
    let port = cctv_testkit::free_port();
    let mut cluster = Cluster::new(&channels, 8, &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"));
    cluster.start_scheduler();
    let stop = CancellationToken::new();
    let relay = tokio::spawn(cctv_relay::run(cluster.config.clone(), stop.clone()));

    let refused = wait_for(Duration::from_secs(40), || async {
        status(&cluster, 2)
            .await
            .filter(|s| !s.main.running && s.main.last_error.as_deref().is_some_and(|e| e.contains("401")))
    })
    .await
    .expect("the relay of ch2 reports the camera's 401");
    let reason = refused.main.last_error.clone().unwrap();
    assert!(reason.contains("401 Unauthorized"), "{reason}");
    let query_refused = wait_for(Duration::from_secs(40), || async {
        status(&cluster, 3).await.filter(|s| !s.main.running && s.main.last_error.is_some())
    })
    .await
    .expect("the relay of ch3 reports why it is down");
    let ok = wait_for(Duration::from_secs(30), || async { status(&cluster, 1).await.filter(|s| s.main.running) }).await;
    assert!(ok.is_some(), "ch1, with the right password, is relayed");
    // No process shows a camera's password to other local users (`ps`, /proc/<pid>/cmdline):
    // the relays and probes open such cameras through a private list file.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("rtsp_cameras.py") {
            continue; // the simulated camera itself
        }
        assert!(
            !cmdline.contains("right-pass") && !cmdline.contains("wrong-pass") && !cmdline.contains("qs-pass"),
            "a camera password on a command line: {cmdline}"
        );
    }
    assert!(!serde_json::to_string(&refused).unwrap().contains("wrong-pass"), "{refused:?}");

    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "API");
    // Every channel's answer, in the Redis key and from the API: no password of any form.
    let redis_key: Option<String> = redis::AsyncCommands::get(
        &mut cluster.conn().await,
        cctv_common::keys::Keys::new(&cluster.config.cluster.namespace).relay_status(3),
    )
    .await
    .unwrap();
    let all =
        ureq::get(format!("http://127.0.0.1:{port}/api/channels")).call().unwrap().body_mut().read_to_string().unwrap();
    for text in [redis_key.unwrap_or_default(), all, serde_json::to_string(&query_refused).unwrap()] {
        assert!(!text.contains("qs-pass") && !text.contains("right-pass"), "a camera password leaked: {text}");
    }
    let body = ureq::get(format!("http://127.0.0.1:{port}/api/channels/2"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let ch2: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(ch2["relay"]["main"]["last_error"].as_str().unwrap_or("").contains("401 Unauthorized"), "{ch2}");
    let out = std::process::Command::new(cctv_testkit::netns::workspace_bin("cctv"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["status", "--check"])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && said.contains("401 Unauthorized"), "cctv status --check: {said}");
    let dom = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=6000"])
        .arg("--dump-dom")
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-camera=\"down\"") && dom.contains("401 Unauthorized"),
        "not on the card:\n{}",
        dom.split("<main>").nth(1).unwrap_or(&dom).chars().take(3000).collect::<String>()
    );
    for text in [body.as_str(), said.as_str(), &dom, &serde_json::to_string(&refused).unwrap()] {
        assert!(!text.contains("right-pass") && !text.contains("wrong-pass"), "a camera password leaked: {text}");
    }
    let lists = || {
        let prefix = format!("cctv-inputs-{}-", std::process::id());
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    assert_eq!(lists().len(), 1, "the relays opened the cameras through this process's private lists");
    stop.cancel();
    let _ = relay.await;
    assert_eq!(lists(), Vec::<std::path::PathBuf>::new(), "the lists with the passwords outlive the relays");
}

/// A camera relayed in one ffmpeg (main + sub-stream) whose sub-stream ends while the main
/// stream goes on (ffmpeg keeps relaying the main one alone, exits with no error): the
/// watchdog sees the sub-stream stand still at nginx-rtmp and restarts the camera's process,
/// so the sub-stream comes back. Without the watchdog it would stay down for as long as the
/// main stream runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_stream_that_ends_in_a_shared_relay_is_restarted_by_the_watchdog() {
    let tmp = tempfile::tempdir().unwrap();
    let (main, sub) = (tmp.path().join("main.mp4"), tmp.path().join("sub.mp4"));
    let source = cctv_testkit::media("worker-zone-detection.gif");
    cctv_testkit::make_camera_clip(&source, &main, 6, 640, 360);
    // The sub-stream: a short clip served over HTTP as MPEG-TS (read straight through, no
    // seeking), at full speed to its end: a clean end of one input.
    cctv_testkit::make_camera_clip(&source, &sub, 1, 320, 180);
    let remux = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(&sub)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(tmp.path().join("sub.ts"))
        .status()
        .unwrap();
    assert!(remux.success());
    let http_port = cctv_testkit::free_port();
    let _http = cctv_testkit::KillOnDrop(
        std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &http_port.to_string(), "--directory"])
            .arg(tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http.server"),
    );
    cctv_testkit::wait_for_port(http_port, Duration::from_secs(10), "http.server");
    let cameras = RtspCameras::start(&[(main.clone(), main.clone())]);
    let channels = format!(
        "[[channel]]\nid = 1\nname = \"cam 1\"\nsource = \"{}\"\ndetect_source = \"http://127.0.0.1:{http_port}/sub.ts\"\n",
        cameras.url("", 1, "main"),
    );
    let cluster = Cluster::new(&channels, 8, "");
    let stop = CancellationToken::new();
    let relay = tokio::spawn(cctv_relay::run(cluster.config.clone(), stop.clone()));

    let live = cluster.nginx.live_url();
    let m = wait_for(Duration::from_secs(30), || async { probe_stream(&format!("{live}/ch1")) }).await;
    assert_eq!(m, Some(("h264".into(), 640, 360)), "ch1 main");
    let st = wait_for(Duration::from_secs(10), || async { status(&cluster, 1).await.filter(|s| s.main.running) })
        .await
        .expect("ch1 status");
    assert!(st.one_process, "main and sub-stream in one process: {st:?}");
    // The sub-stream ended within a second; the watchdog restarts the camera's relay (grace
    // 15 s + 10 s standing still), and says why.
    let restarted = wait_for(Duration::from_secs(60), || async {
        status(&cluster, 1).await.filter(|s| s.sub.as_ref().is_some_and(|sub| sub.restarts >= 1))
    })
    .await
    .expect("the camera's relay restarted after its sub-stream ended");
    let why = restarted.sub.as_ref().unwrap().last_error.clone().unwrap_or_default();
    assert!(why.contains("ch1_sub") && why.contains("nginx-rtmp"), "{why}");
    assert_eq!(restarted.main.restarts, restarted.sub.as_ref().unwrap().restarts, "{restarted:?}");
    stop.cancel();
    let _ = relay.await;
}

/// A camera whose sub-stream cannot be opened (a wrong path: the camera answers 404): the shared
/// process fails, and after SPLIT_AFTER_FAILURES tries the streams get one ffmpeg each, so the
/// main stream — what backups are cut from — is relayed; the sub-stream's status says why it
/// is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_sub_stream_does_not_keep_the_main_stream_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (main, sub) = (tmp.path().join("main.mp4"), tmp.path().join("sub.mp4"));
    let source = cctv_testkit::media("worker-zone-detection.gif");
    cctv_testkit::make_camera_clip(&source, &main, 6, 640, 360);
    cctv_testkit::make_camera_clip(&source, &sub, 6, 320, 180);
    let cameras = RtspCameras::start(&[(main, sub)]);
    let channels = format!(
        "[[channel]]\nid = 1\nname = \"cam 1\"\nsource = \"{}\"\ndetect_source = \"{}\"\n",
        cameras.url("", 1, "main"),
        cameras.url("", 1, "no-such-stream"),
    );
    let cluster = Cluster::new(&channels, 8, "");
    let stop = CancellationToken::new();
    let relay = tokio::spawn(cctv_relay::run(cluster.config.clone(), stop.clone()));
    let live = cluster.nginx.live_url();
    let m = wait_for(Duration::from_secs(40), || async { probe_stream(&format!("{live}/ch1")) }).await;
    assert_eq!(m, Some(("h264".into(), 640, 360)), "ch1 main relayed despite its broken sub-stream");
    let st = wait_for(Duration::from_secs(20), || async {
        status(&cluster, 1).await.filter(|s| s.main.running && !s.one_process)
    })
    .await
    .expect("ch1 relayed by one process per stream");
    let sub = st.sub.as_ref().unwrap();
    assert!(!sub.running && sub.last_error.as_deref().is_some_and(|e| e.contains("404")), "{st:?}");
    stop.cancel();
    let _ = relay.await;
}

/// A camera added to the config of a running relay (`cctv-relay run`, SIGHUP) is relayed while
/// the cameras already running go on untouched (same process, no restart: adding a camera
/// interrupts no other recording); a config that does not load is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_camera_without_touching_the_running_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (main, sub) = (tmp.path().join("main.mp4"), tmp.path().join("sub.mp4"));
    let source = cctv_testkit::media("worker-zone-detection.gif");
    cctv_testkit::make_camera_clip(&source, &main, 20, 640, 360);
    cctv_testkit::make_camera_clip(&source, &sub, 20, 320, 180);
    let cameras = RtspCameras::start(&[(main.clone(), sub.clone()), (main, sub)]);
    let channel = |i: u32| {
        format!(
            "[[channel]]\nid = {i}\nname = \"cam {i}\"\nsource = \"{}\"\ndetect_source = \"{}\"\n",
            cameras.url("", i, "main"),
            cameras.url("", i, "sub")
        )
    };
    let cluster = Cluster::new(&channel(1), 8, "");
    let _relay = cluster.spawn(env!("CARGO_BIN_EXE_cctv-relay"), &["run"]);
    let live = cluster.nginx.live_url();
    let m = wait_for(Duration::from_secs(30), || async { probe_stream(&format!("{live}/ch1")) }).await;
    assert_eq!(m, Some(("h264".into(), 640, 360)), "ch1 main");
    let before = wait_for(Duration::from_secs(10), || async { status(&cluster, 1).await.filter(|s| s.main.running) })
        .await
        .expect("ch1 running");
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(_relay.0.id() as i32), sig).unwrap();

    // A broken config: refused, nothing changes.
    let good = std::fs::read_to_string(&cluster.config_path).unwrap();
    std::fs::write(&cluster.config_path, format!("{good}\n[[channel]]\nid = 2\nsurce = \"typo\"\n")).unwrap();
    signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(status(&cluster, 2).await.is_none(), "a broken config was applied");

    // The camera added: relayed; ch1's relay was not restarted.
    std::fs::write(&cluster.config_path, format!("{good}\n{}", channel(2))).unwrap();
    signal(nix::sys::signal::Signal::SIGHUP);
    let m = wait_for(Duration::from_secs(30), || async { probe_stream(&format!("{live}/ch2")) }).await;
    assert_eq!(m, Some(("h264".into(), 640, 360)), "ch2 relayed after the reload");
    let after = status(&cluster, 1).await.expect("ch1 status");
    assert!(after.main.running, "{after:?}");
    assert_eq!(
        (after.main.restarts, after.main.since_ms),
        (before.main.restarts, before.main.since_ms),
        "ch1 was restarted"
    );

    // The camera removed: its relay stops, the other goes on.
    std::fs::write(&cluster.config_path, &good).unwrap();
    signal(nix::sys::signal::Signal::SIGHUP);
    let gone =
        wait_for(Duration::from_secs(20), || async { probe_stream(&format!("{live}/ch2")).is_none().then_some(()) })
            .await;
    assert!(gone.is_some(), "ch2 still relayed after its removal");
    let after = status(&cluster, 1).await.expect("ch1 status");
    assert_eq!(after.main.since_ms, before.main.since_ms, "ch1 was restarted");
}

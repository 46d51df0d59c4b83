//! Export of any range (`cctv export`, `GET /api/export`): real backup files (H.264, a keyframe
//! a second) and their backup events in a real Redis; a range across two contiguous files is one
//! MP4 of the range's length; a range over a gap lists the hole and holds only what exists; a
//! range no file covers, or longer than the API allows, is refused with the reason.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cctv_common::events::{now_ms, BackupEvent, BackupEventKind};
use cctv_testkit::cluster::{api_site, channel_with, probe_duration, Cluster};
use redis::AsyncCommands;

/// 10 s of H.264 at 25 fps with a keyframe every second (as a camera's main stream).
fn backup_file(path: &Path) {
    let ok = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=25",
        ])
        .args(["-t", "10", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "making {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_is_one_mp4_across_files_and_its_holes_are_listed() {
    let (port, tmp, backups, extra) = api_site("", "timezone = \"UTC\"");
    let mut cluster = Cluster::new(&channel_with(1, ""), 8, &extra);
    cluster.start_scheduler();
    // Three files of one channel: A and B back to back, then 10 s with nothing, then C.
    let t0 = (now_ms() / 1000 - 3600) * 1000;
    let mut conn = cluster.conn().await;
    for (name, start) in [
        ("Channel1_2026-12-07_10-00-00.mp4", t0),
        ("Channel1_2026-12-07_10-00-10.mp4", t0 + 10_000),
        ("Channel1_2026-12-07_10-00-30.mp4", t0 + 30_000),
    ] {
        backup_file(&backups.join(name));
        let event = BackupEvent {
            kind: BackupEventKind::File,
            channel: 1,
            recording: "r1".into(),
            file: Some(backups.join(name).display().to_string()),
            part: 1,
            start_ms: start,
            end_ms: start + 10_000,
            duration_secs: 10.0,
            size_bytes: std::fs::metadata(backups.join(name)).unwrap().len(),
            trigger: None,
            events: vec![],
            pre_roll_ms: None,
            writing_since_ms: None,
            validation: Some("ok".into()),
            video_codec: Some("h264".into()),
            error: None,
            worker: "w".into(),
            job: "j".into(),
            ts_ms: now_ms(),
        };
        let _: String = conn
            .xadd(cluster.keys.backup_events(), "*", &[("data", serde_json::to_string(&event).unwrap())])
            .await
            .unwrap();
    }
    let cctv = |args: &[&str]| {
        let out = Command::new(cctv_testkit::netns::workspace_bin("cctv"))
            .arg("--config")
            .arg(&cluster.config_path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let ms = |t: i64| t.to_string();

    // Across the boundary of A and B: 10 s, no hole.
    let across = tmp.path().join("across.mp4");
    let (ok, said) = cctv(&[
        "export",
        "--channel",
        "1",
        "--from",
        &ms(t0 + 5_000),
        "--to",
        &ms(t0 + 15_000),
        "-o",
        across.to_str().unwrap(),
    ]);
    assert!(ok && said.contains("no holes"), "{said}");
    let secs = probe_duration(&across);
    assert!((9.5..=10.6).contains(&secs), "the export across two files plays {secs} s, not 10 s:\n{said}");
    // In site time, as an operator types it: the same range.
    let at = |t: i64| jiff::Timestamp::from_millisecond(t).unwrap().strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let (ok, said) = cctv(&[
        "export",
        "--channel",
        "1",
        "--from",
        &at(t0 + 5_000),
        "--to",
        &at(t0 + 15_000),
        "-o",
        tmp.path().join("typed.mp4").to_str().unwrap(),
        "--json",
    ]);
    let plan: serde_json::Value = serde_json::from_str(said.trim()).unwrap_or_default();
    assert!(ok && plan["from_ms"] == t0 + 5_000 && plan["pieces"].as_array().map(Vec::len) == Some(2), "{said}");

    // Over the gap: the hole is listed and only what exists is in the file (5 s of B, 5 s of C).
    let gap = tmp.path().join("gap.mp4");
    let (ok, said) = cctv(&[
        "export",
        "--channel",
        "1",
        "--from",
        &ms(t0 + 15_000),
        "--to",
        &ms(t0 + 35_000),
        "-o",
        gap.to_str().unwrap(),
    ]);
    assert!(ok && said.contains("HOLE") && said.contains("10.0 s with no backup"), "{said}");
    let secs = probe_duration(&gap);
    assert!((9.5..=10.6).contains(&secs), "the export over the gap plays {secs} s, not the 10 s that exist");

    // Nothing there: refused, and no file left behind.
    let none = tmp.path().join("none.mp4");
    let (ok, said) = cctv(&[
        "export",
        "--channel",
        "1",
        "--from",
        &ms(t0 + 100_000),
        "--to",
        &ms(t0 + 110_000),
        "-o",
        none.to_str().unwrap(),
    ]);
    assert!(!ok && said.contains("no backup file"), "{said}");
    assert!(
        !none.exists()
            && std::fs::read_dir(tmp.path())
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().ends_with(".part"))
    );

    // The API: the plan with its hole, then the MP4 with the hole in a header, ranges served.
    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "API");
    let api = format!("http://127.0.0.1:{port}");
    let query = format!("channel=1&from={}&to={}", t0 + 15_000, t0 + 35_000);
    let plan: serde_json::Value = serde_json::from_str(
        &ureq::get(format!("{api}/api/export/plan?{query}")).call().unwrap().body_mut().read_to_string().unwrap(),
    )
    .unwrap();
    assert_eq!(plan["holes"], serde_json::json!([{"from_ms": t0 + 20_000, "to_ms": t0 + 30_000}]), "{plan}");
    assert_eq!(plan["pieces"].as_array().map(Vec::len), Some(2), "{plan}");
    let mut resp = ureq::get(format!("{api}{}", plan["download"].as_str().unwrap())).call().unwrap();
    let holes = resp.headers().get("x-cctv-holes").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(holes.contains(&(t0 + 20_000).to_string()), "X-CCTV-Holes: {holes:?}");
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("video/mp4"));
    let body = resp.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
    let downloaded = tmp.path().join("downloaded.mp4");
    std::fs::write(&downloaded, &body).unwrap();
    let secs = probe_duration(&downloaded);
    assert!((9.5..=10.6).contains(&secs), "the API's export plays {secs} s");
    let ranged = ureq::get(format!("{api}/api/export?{query}")).header("Range", "bytes=0-99").call().unwrap();
    assert_eq!(ranged.status(), 206, "a <video> element's range request");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let status = |path: String| agent.get(format!("{api}{path}")).call().unwrap().status().as_u16();
    assert_eq!(status(format!("/api/export?channel=1&from={}&to={}", t0 + 100_000, t0 + 110_000)), 404);
    assert_eq!(status(format!("/api/export?channel=1&from={}&to={}", t0, t0 + 7 * 3_600_000)), 400, "over 6 h");
    assert_eq!(status(format!("/api/export?channel=9&from={t0}&to={}", t0 + 1000)), 404, "an unknown channel");
    assert_eq!(status("/api/export?channel=1&from=soon&to=later".into()), 400);

    // The dashboard's export view in Chromium: the range across two files plays 10 s, with no
    // hole; the range over the gap shows its hole.
    let attr = |dom: &str, tag_id: &str, name: &str| -> String {
        let tag = dom.split(&format!("id=\"{tag_id}\"")).nth(1).and_then(|r| r.split('>').next()).unwrap_or("");
        tag.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string()
    };
    let dom =
        cctv_testkit::browse(port, &format!("/?export=1&channel=1&from={}&to={}", t0 + 5_000, t0 + 15_000), &[], 9_000);
    let played: f64 = attr(&dom, "ex-video", "data-duration").parse().unwrap_or(0.0);
    assert!(
        (9.5..=10.6).contains(&played),
        "the dashboard's export plays {played} s:\n{}",
        attr(&dom, "ex-video", "data-error")
    );
    assert_eq!(attr(&dom, "ex-holes", "data-holes"), "0");
    if let Some(shot) = cctv_testkit::screenshot_path("export.png") {
        let url = format!("http://127.0.0.1:{port}/?export=1&channel=1&from={}&to={}", t0 + 15_000, t0 + 35_000);
        let at = "(() => { document.getElementById('ex-holes').scrollIntoView({ block: 'center' }); return 1; })()";
        cctv_testkit::chromium_eval_shot(&url, 1280, 800, 6000, at, Some(&shot));
    }
    let dom = cctv_testkit::browse(
        port,
        &format!("/?export=1&channel=1&from={}&to={}", t0 + 15_000, t0 + 35_000),
        &[],
        6_000,
    );
    assert_eq!(attr(&dom, "ex-holes", "data-holes"), "1", "the hole on the page");
    assert!(dom.contains("no backup") && dom.contains("(10.0 s)"), "{}", dom.split("export-view").nth(1).unwrap_or(""));
}

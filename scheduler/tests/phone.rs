//! The dashboard on a phone: at 390 CSS pixels wide (an iPhone 12-15) nothing scrolls
//! sideways, with cards, the timeline, the tables and the export and search views filled in.

use std::time::Duration;

use cctv_common::events::{now_ms, BackupEvent, BackupEventKind, Detection, ObjectEvent};
use cctv_testkit::cluster::{api_site, channel_with, Cluster};
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_390_px_nothing_scrolls_sideways() {
    let (port, _tmp, backups, extra) = api_site("", "");
    let channels = [channel_with(1, "priority = true"), channel_with(2, ""), channel_with(3, "")].concat();
    let mut cluster = Cluster::new(&channels, 8, &extra);
    cluster.start_scheduler();
    // Rows in every table: a backup with a long name, objects with several labels.
    let mut conn = cluster.conn().await;
    let t = now_ms() - 600_000;
    let name = "Channel1_2026-12-07_10-00-00.mp4";
    std::fs::write(backups.join(name), b"0123456789").unwrap();
    let backup = BackupEvent {
        kind: BackupEventKind::File,
        channel: 1,
        recording: "ch1-0123456789abcdef0123456789abcdef".into(),
        file: Some(backups.join(name).display().to_string()),
        part: 1,
        start_ms: t,
        end_ms: t + 60_000,
        duration_secs: 60.0,
        size_bytes: 12_345_678,
        trigger: None,
        events: vec![],
        pre_roll_ms: Some(5000),
        writing_since_ms: None,
        validation: Some("ok: h264 1920x1080 60.0 s".into()),
        video_codec: Some("h264".into()),
        error: None,
        worker: "record-a-rather-long-host-name-0123456789".into(),
        job: "01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        ts_ms: t + 61_000,
    };
    let _: String = conn
        .xadd(cluster.keys.backup_events(), "*", &[("data", serde_json::to_string(&backup).unwrap())])
        .await
        .unwrap();
    let labels = ["person", "bicycle", "car", "motorcycle", "truck"];
    let objects = ObjectEvent {
        channel: 1,
        frame_ts_ms: t + 1000,
        motion_event: "m1".into(),
        detections: labels
            .iter()
            .map(|l| Detection { label: l.to_string(), score: 0.77, bbox: [0.1, 0.1, 0.2, 0.2], zones: vec![] })
            .collect(),
        frame_width: 1920,
        frame_height: 1080,
        latency_ms: 150,
        batch_size: 1,
        snapshot: None,
        job: "j".into(),
        worker: "w".into(),
        ts_ms: t + 1150,
    };
    let _: String = conn
        .xadd(cluster.keys.object_events(), "*", &[("data", serde_json::to_string(&objects).unwrap())])
        .await
        .unwrap();
    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "API");
    let url = format!("http://127.0.0.1:{port}/?search=1&label=person&from={}&to={}", t - 60_000, t + 60_000);
    let shot = cctv_testkit::screenshot_path("phone.png");
    let seen = cctv_testkit::chromium_eval_shot(
        &url,
        390,
        844,
        4000,
        "(() => { const w = 390; \
           const wide = [...document.querySelectorAll('body *')] \
             .filter((e) => e.getBoundingClientRect().right > w + 1 && !e.closest('.scroll-x')) \
             .map((e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : '')); \
           return { scroll: document.documentElement.scrollWidth, rows: document.querySelectorAll('tr').length, wide: wide.slice(0, 12) }; })()",
        shot.as_deref(),
    );
    let scroll = seen["scroll"].as_u64().unwrap_or(0);
    assert!(seen["rows"].as_u64().unwrap_or(0) > 5, "the tables are filled in: {seen}");
    assert!(scroll <= 390, "the page scrolls sideways at 390 px ({scroll} px wide); too wide: {}", seen["wide"]);
}

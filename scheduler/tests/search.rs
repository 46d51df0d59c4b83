//! "Person on channel 1 yesterday afternoon": object events found by channel, label and a
//! range of site time, through the API and the dashboard's search view (Chromium), each with
//! its annotated picture and a link to its moment.

use std::time::Duration;

use cctv_common::events::{now_ms, Detection, ObjectEvent};
use cctv_testkit::cluster::{api_site, channel_with, Cluster};
use redis::AsyncCommands;

fn found(labels: &[(&str, f32)], channel: u32, frame_ts_ms: i64, snapshot: Option<String>) -> ObjectEvent {
    ObjectEvent {
        channel,
        frame_ts_ms,
        motion_event: format!("m{frame_ts_ms}"),
        detections: labels
            .iter()
            .map(|(l, s)| Detection { label: l.to_string(), score: *s, bbox: [0.1, 0.1, 0.3, 0.6], zones: vec![] })
            .collect(),
        frame_width: 640,
        frame_height: 360,
        latency_ms: 120,
        batch_size: 1,
        snapshot,
        job: "j".into(),
        worker: "w".into(),
        ts_ms: frame_ts_ms + 120,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_found_by_channel_label_and_site_time_with_their_pictures() {
    let (port, tmp, _backups, extra) = api_site("", "timezone = \"Europe/Paris\"");
    let snapshots = tmp.path().join("snapshots");
    std::fs::create_dir_all(snapshots.join("ch1")).unwrap();
    let extra = format!("{extra}[yolo]\nsnapshot_dir = \"{}\"\n", snapshots.display());
    let mut cluster = Cluster::new(&[channel_with(1, ""), channel_with(2, "")].concat(), 8, &extra);
    cluster.start_scheduler();
    // Yesterday afternoon (and around it), published at their frames' times.
    let t = (now_ms() / 1000 - 86_400) * 1000;
    let name = format!("ch1_{t}.jpg");
    std::fs::write(
        snapshots.join("ch1").join(&name),
        cctv_testkit::media_frame_jpeg("worker-zone-detection.gif", 320, 180),
    )
    .unwrap();
    let events = [
        found(&[("car", 0.7)], 1, t - 3_600_000, None),
        found(&[("person", 0.81)], 1, t, Some(snapshots.join("ch1").join(&name).display().to_string())),
        found(&[("person", 0.9)], 2, t + 60_000, None),
        found(&[], 1, t + 120_000, None),
        found(&[("person", 0.6)], 1, t + 7_200_000, None),
    ];
    let mut conn = cluster.conn().await;
    for e in &events {
        let _: String = conn
            .xadd(
                cluster.keys.object_events(),
                format!("{}-0", e.frame_ts_ms),
                &[("data", serde_json::to_string(e).unwrap())],
            )
            .await
            .unwrap();
    }
    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "API");
    let api = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let get = |path: String| {
        let mut r = agent.get(format!("{api}{path}")).call().unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_str::<serde_json::Value>(&r.body_mut().read_to_string().unwrap()).unwrap_or_default())
    };
    // The range in the site's time (Paris), as an operator types it.
    let tz = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
    let site = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms).unwrap().to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S").to_string()
    };
    let (from, to) = (site(t - 1_800_000), site(t + 1_800_000));
    let (status, page) = get(format!("/api/events?category=objects&channel=1&label=person&since={from}&until={to}"));
    let items = page["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(status, 200, "{page}");
    assert_eq!(items.len(), 1, "one person on channel 1 in that half hour: {page}");
    assert_eq!(items[0]["event"]["frame_ts_ms"], t);
    let (_, all) = get(format!("/api/events?category=objects&label=PERSON&since={from}&until={to}"));
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2), "both channels, any case: {all}");
    let (_, dogs) = get(format!("/api/events?category=objects&label=dog&since={from}&until={to}"));
    assert_eq!(dogs["items"].as_array().map(Vec::len), Some(0), "{dogs}");
    assert_eq!(get("/api/events?category=motion&label=person".into()).0, 400, "label is for objects");
    assert_eq!(get("/api/events?category=objects&since=yesterday".into()).0, 400);

    if let Some(shot) = cctv_testkit::screenshot_path("search.png") {
        let url = format!("http://127.0.0.1:{port}/?search=1&label=person&from={}&to={}", t - 1_800_000, t + 1_800_000);
        let at = "(() => { document.getElementById('se-results').scrollIntoView({ block: 'center' }); return 1; })()";
        cctv_testkit::chromium_eval_shot(&url, 1280, 800, 5000, at, Some(&shot));
    }
    // The dashboard's search view: the one result, its picture, its moment.
    let dom = cctv_testkit::browse(
        port,
        &format!("/?search=1&channel=1&label=person&from={}&to={}", t - 1_800_000, t + 1_800_000),
        &[],
        6_000,
    );
    let results = dom.split("id=\"se-results\"").nth(1).and_then(|r| r.split("</div>").next()).unwrap_or("");
    assert!(
        results.starts_with(" class=\"results\" data-found=\"1\"") || results.contains("data-found=\"1\""),
        "{results}"
    );
    assert!(
        results.contains(&format!("href=\"?seek=1:{t}\"")) && results.contains(&format!("/api/snapshots/1/{name}")),
        "{results}"
    );
    assert!(results.contains("person 0.81"), "{results}");
    let picture = agent.get(format!("{api}/api/snapshots/1/{name}")).call().unwrap();
    assert_eq!(picture.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("image/jpeg"));
}

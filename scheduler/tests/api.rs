//! The HTTP API and dashboard against a real cluster: redis-server, nginx-rtmp, an ffmpeg camera,
//! the scheduler (which serves the API) and a motion worker producing real events.

use std::time::Duration;

use cctv_common::events::{now_ms, BackupEvent, BackupEventKind, MotionEventKind, StorageReport};
use cctv_common::shutdown::CancellationToken;
use cctv_testkit::browse;
use cctv_testkit::cluster::{api_site, channel_with, run_in_thread, wait_for, Cluster};
use cctv_testkit::Pusher;
use redis::AsyncCommands;

const TOKEN: &str = "test-token-0123456789";

struct Http {
    base: String,
    agent: ureq::Agent,
    bodies: std::cell::RefCell<Vec<String>>,
}

impl Http {
    fn new(base: String) -> Self {
        // A new connection per request: the server may close a kept-alive connection after
        // answering a POST whose body it did not read (as a 401 does), and a client that
        // reuses it then fails (a flake seen once in four fresh-clone runs).
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .into();
        Self { base, agent, bodies: Default::default() }
    }
    fn call(&self, method: &str, path: &str, token: Option<&str>, range: Option<&str>) -> (u16, Vec<u8>, String) {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        let mut resp = self.agent.run(req.body(()).unwrap()).unwrap();
        let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = resp.body_mut().read_to_vec().unwrap();
        self.bodies.borrow_mut().push(String::from_utf8_lossy(&body).into_owned());
        (resp.status().as_u16(), body, ctype)
    }
    fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body, _) = self.call("GET", path, None, None);
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }
}

/// The value of the sample named `series` (name and labels as written), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok()).unwrap_or(0.0)
}

/// `promtool check metrics` (Debian's prometheus package) must find nothing to say.
fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{metrics}");
}

/// Every series the Grafana dashboard in deploy/ queries is one `/metrics` serves.
fn dashboard_metrics_exist(metrics: &str) {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/cctv-dashboard.json")).expect("dashboard JSON");
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expr");
            let mut rest = expr;
            while let Some(at) = rest.find("cctv_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.push(name);
            }
        }
    }
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        let served = metrics.lines().any(|l| {
            l.strip_prefix("# TYPE ").is_some_and(|t| t.split(' ').next() == Some(&name))
                || l.split(['{', ' ']).next() == Some(&name)
        });
        assert!(served, "the dashboard queries {name}, which /metrics does not serve:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_serves_live_data_validates_input_and_guards_mutations() {
    let (port, _tmp, backups, extra) = api_site(&format!("token = \"{TOKEN}\""), "timezone = \"Asia/Tokyo\"");
    let door = "record_zones = [\"door\"]\n[[channel.zone]]\nname = \"door\"\npoints = [[0, 0], [0.3, 0], [0.3, 0.3]]";
    let mut cluster = Cluster::new(&[channel_with(1, door), channel_with(2, "priority = true")].concat(), 8, &extra);
    let clip = cluster.path("busy.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 2, 2.0, 40.0);
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    cluster.start_scheduler();
    let stop = CancellationToken::new();
    let motion = run_in_thread(cluster.config.clone(), stop.clone(), worker_motion::run);
    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "API");
    let http = Http::new(format!("http://127.0.0.1:{port}"));

    // Real events from the worker: one whole motion event (its start, maybe a zone entry, its
    // end) and a channel status written after it.
    wait_for(Duration::from_secs(40), || async {
        let ended = cluster.motion_events().await.iter().any(|e| e.kind == MotionEventKind::End);
        let (_, ch1) = http.get("/api/channels/1");
        (ended && ch1["last_motion_ms"].as_i64().is_some()).then_some(())
    })
    .await
    .expect("motion events");

    let (status, health) = http.get("/api/health");
    assert_eq!((status, health["redis"].as_bool()), (200, Some(true)), "{health}");
    // Each motion event has a picture of its busiest frame.
    let ended = cluster.motion_events().await.into_iter().find(|e| e.kind == MotionEventKind::End).unwrap();
    let (status, jpeg, ctype) =
        http.call("GET", &format!("/api/events/motion/{}/picture.jpg", ended.event_id), None, None);
    assert!(status == 200 && ctype == "image/jpeg" && jpeg.starts_with(b"\xff\xd8"), "{status} {ctype}");
    assert_eq!(http.call("GET", "/api/events/motion/no-such-event/picture.jpg", None, None).0, 404);
    assert_eq!(http.call("GET", "/api/events/motion/a%20b/picture.jpg", None, None).0, 400);

    let (status, chans) = http.get("/api/channels");
    assert_eq!(status, 200);
    let ch1 = &chans["items"].as_array().unwrap()[0];
    assert_eq!((ch1["id"].as_u64(), ch1["online"].as_bool()), (Some(1), Some(true)), "{ch1}");
    assert!(ch1["last_motion_ms"].as_i64().is_some(), "{ch1}");
    let ch2 = &chans["items"].as_array().unwrap()[1];
    assert_eq!(ch2["online"].as_bool(), Some(false), "ch2 has no stream: {ch2}");
    assert!(ch2["reason"].as_str().is_some_and(|r| !r.is_empty()), "{ch2}");
    assert_eq!(http.get("/api/channels/1").0, 200);
    assert_eq!(
        (ch1["zones"][0]["name"].as_str(), ch1["record_zones"][0].as_str()),
        (Some("door"), Some("door")),
        "{ch1}"
    );
    assert_eq!(http.get("/api/channels/99").0, 404);

    // Pagination: page 1 holds the newest, page 2 continues before it.
    let (status, page1) = http.get("/api/events?category=motion&limit=1");
    assert_eq!(status, 200, "{page1}");
    let cursor = page1["next_cursor"].as_str().expect("a cursor").to_string();
    let (_, page2) = http.get(&format!("/api/events?category=motion&limit=1&cursor={cursor}"));
    assert_ne!(page1["items"][0]["id"], page2["items"][0]["id"]);
    assert!(page2["items"][0]["id"].as_str().unwrap() < cursor.as_str(), "older page");
    let (_, ch1_events) = http.get("/api/events?category=motion&channel=1&since=10m");
    assert!(ch1_events["items"].as_array().unwrap().iter().all(|i| i["event"]["channel"] == 1));
    let (_, system) = http.get("/api/events?category=system");
    assert!(system["items"].as_array().unwrap().iter().any(|i| i["event"]["kind"] == "start"), "{system}");

    // Bad parameters: 400 naming the parameter; unknown ids: 404; never 500.
    for (path, needle) in [
        ("/api/events?category=bogus", "category"),
        ("/api/events?limit=0", "limit"),
        ("/api/events?limit=abc", "limit"),
        ("/api/events?since=yesterday", "since"),
        ("/api/events?channel=abc", "channel"),
        ("/api/events?cursor=xyz", "cursor"),
        ("/api/events?colour=red", "colour"),
        ("/api/backups?until=soon", "until"),
        ("/api/jobs/motion?state=lost", "state"),
        ("/api/backups/file/..%2Fetc%2Fpasswd", "backup"),
    ] {
        let (status, body) = http.get(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().unwrap_or("").contains(needle), "{path}: {body}");
    }
    for path in [
        "/api/events?channel=99",
        "/api/nowhere",
        "/api/jobs/nosuchqueue",
        "/api/jobs/motion/01ABC",
        "/api/backups/file/Channel1_x.mkv",
    ] {
        assert_eq!(http.get(path).0, 404, "{path}");
    }

    let (_, jobs) = http.get("/api/jobs");
    assert_eq!(jobs["motion"]["running"].as_u64(), Some(1), "{jobs}");
    let (_, workers) = http.get("/api/workers");
    let w = &workers["items"].as_array().unwrap()[0];
    assert_eq!(w["kind"], "motion");
    assert!(w["rss_bytes"].as_u64().unwrap_or(0) > 0, "{w}");
    // A record worker's disk report (none runs here), as worker-record writes it.
    let report = StorageReport {
        node: "node-a".into(),
        host: "host-a".into(),
        worker: "record-a".into(),
        backup_dir: backups.display().to_string(),
        mount_point: "/".into(),
        total_bytes: 1000,
        used_bytes: 600,
        free_bytes: 400,
        used_percent: 60.0,
        backup_bytes: 20,
        backup_files: 1,
        h264_copy_bytes: 0,
        oldest_backup_ms: None,
        write_rate_bps: 0.0,
        hours_left: None,
        high_watermark: 90.0,
        low_watermark: 80.0,
        updated_ms: now_ms(),
    };
    let _: () = cluster
        .conn()
        .await
        .set_ex(cluster.keys.storage("node-a"), serde_json::to_string(&report).unwrap(), 60)
        .await
        .unwrap();
    let (status, metrics, ctype) = http.call("GET", "/metrics", None, None);
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert!(
        metrics.contains("cctv_channel_online{channel=\"1\"} 1")
            && metrics.contains("cctv_queue_jobs{queue=\"motion\",state=\"running\"} 1")
            && metrics.contains("cctv_workers{kind=\"motion\"} 1")
            && metrics.contains("cctv_storage_used_ratio{node=\"node-a\"} 0.6")
            && metrics.contains("cctv_relay_up{channel=\"2\",stream=\"ch2\"} 0")
            && metrics.contains("cctv_backup_errors_total{channel=\"2\"} 0"),
        "{metrics}"
    );
    // Counted from the event stream: the worker's motion starts, and the frames it analysed.
    let started = metric(&metrics, "cctv_motion_events_total{channel=\"1\"}");
    assert!(started >= 1.0, "{metrics}");
    assert!(metric(&metrics, "cctv_motion_event_latency_seconds_count") >= started, "{metrics}");
    assert!(metric(&metrics, "cctv_frames_analysed_total{channel=\"1\"}") > 10.0, "{metrics}");
    promtool_check(&metrics);
    dashboard_metrics_exist(&metrics);
    let mut om = http
        .agent
        .get(format!("{}/metrics", http.base))
        .header("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .call()
        .unwrap();
    let om_type = om.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    let om = om.body_mut().read_to_string().unwrap();
    assert!(om_type.starts_with("application/openmetrics-text"), "{om_type}");
    assert!(om.ends_with("# EOF\n") && om.contains("# TYPE cctv_motion_events counter"), "{om}");
    let (_, openapi) = http.get("/api/openapi.json");
    assert!(openapi["paths"]["/api/events"].is_object());
    openapi_check(&http, &openapi);

    // A backup on disk and in the stream: listed, downloadable by range, deletable with the token.
    let name = "Channel1_2026-01-01_00-00-00.mkv";
    std::fs::write(backups.join(name), b"0123456789abcdefghij").unwrap();
    let event = BackupEvent {
        kind: BackupEventKind::File,
        channel: 1,
        recording: "r1".into(),
        file: Some(backups.join(name).display().to_string()),
        part: 1,
        start_ms: now_ms() - 20_000,
        end_ms: now_ms(),
        duration_secs: 20.0,
        size_bytes: 20,
        trigger: None,
        events: vec![],
        pre_roll_ms: Some(5000),
        writing_since_ms: None,
        validation: Some("ok".into()),
        video_codec: Some("h264".into()),
        error: None,
        worker: "w".into(),
        job: "j".into(),
        ts_ms: now_ms(),
    };
    let mut conn = cluster.conn().await;
    let _: String = conn
        .xadd(cluster.keys.backup_events(), "*", &[("data", serde_json::to_string(&event).unwrap())])
        .await
        .unwrap();
    let (_, list) = http.get("/api/backups?channel=1");
    assert_eq!(list["items"][0]["file"], name, "{list}");
    // The backup is counted once the metrics reader has seen it.
    wait_for(Duration::from_secs(10), || async {
        let (_, body, _) = http.call("GET", "/metrics", None, None);
        let text = String::from_utf8(body).unwrap();
        (metric(&text, "cctv_backups_total{channel=\"1\"}") == 1.0
            && metric(&text, "cctv_backup_written_bytes_total{channel=\"1\"}") == 20.0)
            .then_some(())
    })
    .await
    .expect("the backup counted in /metrics");
    let (status, part, _) = http.call("GET", &format!("/api/backups/file/{name}"), None, Some("bytes=10-13"));
    assert_eq!((status, part.as_slice()), (206, b"abcd".as_slice()));
    let path = format!("/api/backups/file/{name}");
    assert_eq!(http.call("DELETE", &path, None, None).0, 401);
    assert_eq!(http.call("DELETE", &path, Some("wrong-token-wrong-token"), None).0, 401);
    assert_eq!(http.call("POST", "/api/jobs/record/purge", None, None).0, 401);
    assert_eq!(http.call("POST", "/api/jobs/record/purge", Some(TOKEN), None).0, 200);
    assert_eq!(http.call("POST", "/api/jobs/record/enqueue", None, None).0, 401);
    assert_eq!(http.call("POST", "/api/jobs/record/enqueue", Some(TOKEN), None).0, 400, "no body");
    // A protected backup is listed as such and cannot be deleted until released.
    let protect = format!("{path}/protect");
    assert_eq!(http.call("POST", &protect, None, None).0, 401);
    assert_eq!(http.call("POST", &protect, Some(TOKEN), None).0, 200);
    assert_eq!(http.call("POST", "/api/backups/file/Channel1_missing.mkv/protect", Some(TOKEN), None).0, 404);
    let (_, list) = http.get("/api/backups?channel=1");
    assert_eq!(list["items"][0]["protected"], true, "{list}");
    assert_eq!(http.call("DELETE", &path, Some(TOKEN), None).0, 409);
    assert!(backups.join(name).exists(), "a protected backup was deleted");
    assert_eq!(http.call("DELETE", &protect, Some(TOKEN), None).0, 200);
    let (_, list) = http.get("/api/backups?channel=1");
    assert_eq!(list["items"][0]["protected"], false, "{list}");
    assert_eq!(http.call("DELETE", &path, Some(TOKEN), None).0, 200);
    assert!(!backups.join(name).exists());
    let (_, list) = http.get("/api/backups?channel=1");
    assert!(list["items"].as_array().unwrap().is_empty(), "deleted backups are not listed: {list}");

    // Pages of backups, newest first: a cursor continues where the last page ended, and a
    // backup deleted meanwhile shifts nothing.
    for (i, minute) in ["01", "02", "03"].iter().enumerate() {
        let name = format!("Channel1_2026-01-01_00-{minute}-00.mkv");
        std::fs::write(backups.join(&name), b"x").unwrap();
        let e = BackupEvent {
            file: Some(backups.join(&name).display().to_string()),
            ts_ms: now_ms() + i as i64,
            ..event.clone()
        };
        let _: String = conn
            .xadd(cluster.keys.backup_events(), "*", &[("data", serde_json::to_string(&e).unwrap())])
            .await
            .unwrap();
    }
    let (_, page1) = http.get("/api/backups?channel=1&limit=2");
    let files = |page: &serde_json::Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|i| i["file"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(files(&page1), ["Channel1_2026-01-01_00-03-00.mkv", "Channel1_2026-01-01_00-02-00.mkv"], "{page1}");
    let cursor = page1["next_cursor"].as_str().expect("a next page").to_string();
    assert_eq!(http.call("DELETE", "/api/backups/file/Channel1_2026-01-01_00-03-00.mkv", Some(TOKEN), None).0, 200);
    let (_, page2) = http.get(&format!("/api/backups?channel=1&limit=2&cursor={cursor}"));
    assert_eq!(files(&page2), ["Channel1_2026-01-01_00-01-00.mkv"], "{page2}");
    assert!(page2["next_cursor"].is_null(), "{page2}");
    assert_eq!(http.get("/api/backups?cursor=yesterday").0, 400);

    // The dashboard page, and no camera credentials anywhere.
    let (status, page, _) = http.call("GET", "/", None, None);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("/api/channels"));
    for body in http.bodies.borrow().iter() {
        assert!(!body.contains("secret") && !body.contains("rtsp://"), "credentials leaked: {body}");
    }
    assert!(cluster.motion_events().await.iter().any(|e| e.kind == MotionEventKind::Start));

    // The jobs CLI sees the same queues.
    let cctv = |args: &[&str]| {
        let out = std::process::Command::new(cctv_testkit::netns::workspace_bin("cctv"))
            .arg("--config")
            .arg(&cluster.config_path)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "cctv {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let overview: serde_json::Value = serde_json::from_str(&cctv(&["jobs", "list", "--json"])).unwrap();
    assert_eq!(overview["motion"]["running"].as_u64(), Some(1), "{overview}");
    let running: serde_json::Value =
        serde_json::from_str(&cctv(&["jobs", "list", "motion", "--state", "running", "--json"])).unwrap();
    let id = running[0]["id"].as_str().expect("the running motion job").to_string();
    assert_eq!(running[0]["payload"]["batch"], "b0", "{running}");
    assert!(cctv(&["jobs", "show", "motion", &id]).contains("\"batch\": \"b0\""));
    let bus = cctv_testkit::media("bus.jpg");
    assert!(cctv(&["jobs", "enqueue", "yolo", "--channel", "1", "--image", bus.to_str().unwrap()])
        .contains("queued yolo job"));
    let waiting: serde_json::Value = serde_json::from_str(&cctv(&["jobs", "list", "yolo", "--json"])).unwrap();
    assert_eq!(waiting.as_array().unwrap().len(), 1, "{waiting}");
    assert!(
        waiting[0]["payload"]["image"].as_str().unwrap().contains("bytes of base64"),
        "payload shown without the image"
    );
    assert!(cctv(&["storage"]).contains("NODE"));
    assert!(!cctv(&["status"]).contains("secret"));
    // `status --check` for monitoring: ch2 has no stream and no record or YOLO worker runs.
    let check = std::process::Command::new(cctv_testkit::netns::workspace_bin("cctv"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["status", "--check"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "status --check passed with problems: {said}");
    assert!(said.contains("ch2 (cam 2)") && said.contains("no worker-record is running"), "{said}");
    assert!(!said.contains("ch1 (cam 1)"), "ch1 is fine: {said}");

    // The dashboard in a real headless browser renders live data.
    // A picture of the camera (every 10 s from the motion worker); none for ch2, which has no
    // stream.
    let preview = wait_for(Duration::from_secs(25), || async {
        let (status, body, ctype) = http.call("GET", "/api/channels/1/preview.jpg", None, None);
        (status == 200).then_some((body, ctype))
    })
    .await
    .expect("a picture of ch1");
    assert_eq!(preview.1, "image/jpeg");
    assert!(preview.0.starts_with(&[0xFF, 0xD8, 0xFF]) && preview.0.len() > 1000, "not a JPEG picture");
    assert_eq!(http.call("GET", "/api/channels/2/preview.jpg", None, None).0, 404);
    // Camera 2's relay cannot log in (as `cctv-relay run` reports it): the API and the
    // dashboard card say so in plain words.
    let refused = cctv_common::status::RelayStatus {
        channel: 2,
        main: cctv_common::status::RelayState {
            stream: "ch2".into(),
            running: false,
            last_error: Some("401 Unauthorized (authorization failed)".into()),
            restarts: 3,
            since_ms: None,
            probe: None,
            route: None,
        },
        sub: None,
        host: "test".into(),
        updated_ms: now_ms(),
        one_process: false,
        detect: None,
    };
    let _: () = conn.set(cluster.keys.relay_status(2), serde_json::to_string(&refused).unwrap()).await.unwrap();
    let (_, ch2) = http.get("/api/channels/2");
    assert_eq!(ch2["relay"]["main"]["last_error"], "401 Unauthorized (authorization failed)", "{ch2}");
    let tokyo_before_dump = tokyo_date();
    let dom = dashboard_dom(port);
    assert!(
        dom.contains("data-camera=\"down\"") && dom.contains("camera ch2: 401 Unauthorized (authorization failed)"),
        "the camera's problem is not on its card:\n{dom}"
    );
    assert!(
        dom.contains("class=\"preview\"") && dom.contains("data-loaded=\"yes\""),
        "no camera picture shown:\n{dom}"
    );
    assert!(dom.contains("class=\"zone records\" data-zone=\"door\""), "ch1's zone is not drawn:\n{dom}");
    // The API reference, rendered in the browser from the document, and every GET endpoint it
    // documents (without path parameters) answers.
    let (_, openapi) = http.get("/api/openapi.json");
    let docs = page_dom(port, "/api/docs");
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let op = format!("data-path=\"{path}\" data-method=\"{method}\"");
            assert!(docs.contains(&op), "/api/docs does not show {method} {path}:\n{docs}");
            if method == "get" && !path.contains('{') {
                assert_ne!(http.call("GET", path, None, None).0, 404, "documented GET {path} is not served");
            }
        }
    }
    assert!(dom.contains("data-rendered=\"yes\""), "dashboard did not finish rendering:\n{dom}");
    // Times are shown with their date, in the site's zone (the one backups are named in).
    assert!(
        dom.contains("data-timezone=\"Asia/Tokyo\"") && dom.contains("times Asia/Tokyo"),
        "time zone not applied:\n{dom}"
    );
    let (before, after) = (tokyo_before_dump, tokyo_date());
    assert!(dom.contains(&before) || dom.contains(&after), "no {after} (Tokyo's date) on the page:\n{dom}");
    assert!(dom.contains("data-channel=\"1\"") && dom.contains("cam 1"), "channel grid missing:\n{dom}");
    let ch1_state = ["idle", "motion"].iter().any(|s| dom.contains(&format!("data-state=\"{s}\"")));
    assert!(ch1_state && dom.contains("data-state=\"offline\""), "live states missing:\n{dom}");
    assert!(dom.contains("motion-vm") || dom.contains(">motion<"), "workers table missing:\n{dom}");
    assert!(!dom.contains("secret"));
    stop.cancel();
    let _ = motion.join();
}

/// In headless Chromium against a live cluster: the live view of a camera plays (HLS relayed by
/// the API, hls.js); a real backup (motion worker → record worker, MP4 by default) plays in the
/// backups view, opened at its third second (`?play=<file>&t=3`): a picture is drawn and its
/// time runs on from there; the timeline shows it and its motion, and a moment in it plays it
/// from that second while a moment before it says there is no backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_plays_live_view_backups_and_timeline_moments() {
    let (port, _tmp, _backups, extra) = api_site("", "timezone = \"UTC\"\npre_roll_secs = 3\npost_roll_secs = 3");
    let mut cluster = Cluster::new(&channel_with(1, ""), 8, &extra);
    let clip = cluster.path("event.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 1, 8.0, 40.0);
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    cluster.start_scheduler();
    let stop = CancellationToken::new();
    let motion = run_in_thread(cluster.config.clone(), stop.clone(), worker_motion::run);
    let record = run_in_thread(cluster.config.clone(), stop.clone(), worker_record::run);
    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "API");
    let http = Http::new(format!("http://127.0.0.1:{port}"));
    let backup = wait_for(Duration::from_secs(90), || async {
        let (_, list) = http.get("/api/backups?channel=1");
        list["items"].as_array().and_then(|i| i.first().cloned())
    })
    .await
    .expect("a backup of channel 1");
    let file = backup["file"].as_str().unwrap().to_string();
    assert!(file.ends_with(".mp4"), "{backup}");
    assert!(backup["duration_secs"].as_f64().unwrap() > 6.0, "{backup}");

    let autoplay = ["--autoplay-policy=no-user-gesture-required"];
    // Live view: the camera's stream, relayed by the API from nginx-rtmp's HLS, plays.
    let (status, playlist, ctype) = http.call("GET", "/api/channels/1/live/index.m3u8", None, None);
    assert_eq!(
        (status, ctype.as_str()),
        (200, "application/vnd.apple.mpegurl"),
        "{}",
        String::from_utf8_lossy(&playlist)
    );
    assert_eq!(http.call("GET", "/api/channels/1/live/..%2Fch1%2Findex.m3u8", None, None).0, 400);
    let dom = browse(port, "/?live=1", &autoplay, 15_000);
    let section = dom.split("id=\"live\"").nth(1).and_then(|r| r.split('>').next()).unwrap_or("");
    assert!(section.contains("data-channel=\"1\"") && section.contains("data-played=\"yes\""), "live view: {section}");
    let dom = browse(port, &format!("/?play={file}&t=3"), &autoplay, 15_000);
    let (from, at) = assert_playing(&dom, &file);
    assert!((2.9..4.0).contains(&from), "playing began at {from} s, not at the third second asked");
    assert!(at > from, "the video did not play on: at {at} s from {from} s");
    assert!(dom.contains(&format!("data-file=\"{file}\"")) && dom.contains("class=\"playing\""), "not listed: {dom}");
    // The timeline shows the backup and the motion; a moment in the backup plays that file from
    // that second; a moment before it says there is no backup.
    let start_ms = backup["start_ms"].as_i64().unwrap();
    let dom = browse(port, &format!("/?seek=1:{}", start_ms + 5000), &autoplay, 15_000);
    let strip =
        dom.split("preserveAspectRatio=\"none\" data-channel=\"1\"").nth(1).and_then(|r| r.split("</svg>").next());
    let strip = strip.unwrap_or_else(|| panic!("no timeline strip of channel 1: {dom}"));
    assert!(strip.contains("class=\"tl-backup\"") && strip.contains(&format!("data-file=\"{file}\"")), "{strip}");
    assert!(strip.contains("class=\"tl-motion\""), "no motion on the timeline: {strip}");
    let (from, _) = assert_playing(&dom, &file);
    assert!((4.9..6.0).contains(&from), "the timeline's moment (5 s into the backup) began playing at {from} s");
    // The motion event's picture (its busiest frame) is in the events table and opens its
    // moment: the backup plays from where the motion began (after the 3 s pre-roll).
    let events = dom.split("id=\"ev-motion\"").nth(1).and_then(|r| r.split("</table>").next()).unwrap_or("");
    assert!(events.contains("<img class=\"thumb\"") && events.contains("/picture.jpg"), "no event picture: {events}");
    let started: i64 = events
        .split("href=\"?seek=1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("the picture links to no moment: {events}"));
    let dom = browse(port, &format!("/?seek=1:{started}"), &autoplay, 15_000);
    let (from, _) = assert_playing(&dom, &file);
    let expected = (started - start_ms) as f64 / 1000.0;
    assert!((from - expected).abs() < 1.0, "the event's moment ({expected:.1} s in) began playing at {from} s");
    let before = start_ms - 30_000;
    let dom = browse(port, &format!("/?seek=1:{before}"), &autoplay, 8_000);
    assert!(dom.contains(&format!("data-nobackup=\"1:{before}\"")) && dom.contains("no backup at"), "{dom}");
    assert!(!dom.contains("id=\"player\" class=\"open\""), "a player opened where there is no backup");
    // `CCTV_SCREENSHOTS=<dir>`: also save a picture of the view (the ones in docs/ are made so).
    if let Some(dir) = std::env::var_os("CCTV_SCREENSHOTS") {
        let shot = std::path::Path::new(&dir).join("dashboard-backup-playing.png");
        let flags = ["--autoplay-policy=no-user-gesture-required", "--window-size=1400,1100"];
        screenshot(port, &format!("/?play={file}&t=3"), &flags, 9_000, &shot);
        let shot = std::path::Path::new(&dir).join("dashboard-timeline.png");
        let flags = ["--autoplay-policy=no-user-gesture-required", "--window-size=1400,700"];
        screenshot(port, &format!("/?hours=0.25&seek=1:{}", start_ms + 5000), &flags, 9_000, &shot);
        let shot = std::path::Path::new(&dir).join("dashboard-live.png");
        screenshot(port, "/?live=1", &flags, 9_000, &shot);
    }
    stop.cancel();
    let _ = (motion.join(), record.join());
}

/// `api.viewer_token`: every read — dashboard, API lists, video, pictures, live view, metrics —
/// needs it (or the admin token) as a bearer or a session cookie from `/login`; browsers are
/// sent to the sign-in page; the cookie is no token and its session ends at sign-out; a viewer
/// cannot change anything; only `/api/health` stays open; sign-in never redirects off the site
/// and is throttled per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_token_guards_every_read_and_the_login_page_signs_in() {
    const VIEWER: &str = "viewer-token-0123456789";
    let api = format!("token = \"{TOKEN}\"\nviewer_token = \"{VIEWER}\"");
    let (port, _tmp, backups, extra) = api_site(&api, "timezone = \"UTC\"");
    std::fs::write(backups.join("Channel1_2026-01-01_00-00-00.mp4"), b"0123456789").unwrap();
    let mut cluster = Cluster::new(&channel_with(1, ""), 8, &extra);
    cluster.start_scheduler();
    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "API");
    // No redirects followed: the answers themselves are checked.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(0)
        .build()
        .into();
    let call = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        let mut req = ureq::http::Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = agent.run(req.body(body.as_bytes().to_vec()).unwrap()).unwrap();
        let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let (location, cookie) = (h("location"), h("set-cookie"));
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default(), location, cookie)
    };
    let reads = [
        "/api/channels",
        "/api/channels/1",
        "/api/events?category=motion",
        "/api/backups",
        "/api/backups/file/Channel1_2026-01-01_00-00-00.mp4",
        "/api/channels/1/preview.jpg",
        "/api/channels/1/live/index.m3u8",
        "/api/storage",
        "/api/openapi.json",
        "/metrics",
        "/vendor/hls.light.min.js",
    ];
    assert_eq!(call("GET", "/api/health", &[], "").0, 200, "health checks stay open");
    for path in reads {
        let (status, body, _, _) = call("GET", path, &[], "");
        assert_eq!(status, 401, "{path} answered without signing in: {body}");
        assert!(body.contains("viewer token"), "{path}: {body}");
    }
    let (status, _, location, _) = call("GET", "/?play=x.mp4", &[("Accept", "text/html")], "");
    assert_eq!((status, location.as_str()), (303, "/login?next=/%3Fplay%3Dx.mp4"), "a browser is sent to sign in");
    let (status, page, _, _) = call("GET", "/login", &[], "");
    assert!(status == 200 && page.contains("id=\"login\"") && page.contains("name=\"token\""), "{page}");

    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, page, _, cookie) = call("POST", "/login", &form, "token=not-the-token-at-all&next=/");
    assert!(status == 401 && cookie.is_empty() && page.contains("not right"), "{status} {cookie} {page}");
    let (status, _, location, cookie) = call("POST", "/login", &form, &format!("token={VIEWER}&next=/%3Fplay%3Dx.mp4"));
    assert_eq!((status, location.as_str()), (303, "/?play=x.mp4"));
    assert!(cookie.starts_with("cctv_session=") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(cookie.contains("Max-Age=43200") && !cookie.contains("Secure"), "plain HTTP site: {cookie}");
    assert!(!cookie.contains(VIEWER) && !cookie.contains(TOKEN), "the cookie carries the token: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    for path in reads.iter().filter(|p| !p.contains("preview") && !p.contains("live")) {
        let (status, body, _, _) = call("GET", path, &[("Cookie", &session)], "");
        assert_eq!(status, 200, "{path} with the session cookie: {body}");
    }
    assert_eq!(call("GET", "/", &[("Cookie", &session), ("Accept", "text/html")], "").0, 200);
    let viewer = format!("Bearer {VIEWER}");
    let admin = format!("Bearer {TOKEN}");
    assert_eq!(call("GET", "/api/channels", &[("Authorization", &viewer)], "").0, 200);
    assert_eq!(call("GET", "/api/channels", &[("Authorization", &admin)], "").0, 200);
    // A viewer reads; only the admin token changes anything.
    let file = "/api/backups/file/Channel1_2026-01-01_00-00-00.mp4";
    assert_eq!(call("DELETE", file, &[("Authorization", &viewer)], "").0, 401);
    assert_eq!(call("DELETE", file, &[("Cookie", &session)], "").0, 401);
    assert!(backups.join("Channel1_2026-01-01_00-00-00.mp4").exists());
    // Sign-in never sends a browser off the site; sign-out clears the cookie.
    let (_, _, location, _) = call("POST", "/login", &form, &format!("token={VIEWER}&next=//evil.example/"));
    assert_eq!(location, "/");
    let (status, _, location, cookie) = call("GET", "/logout", &[("Cookie", &session)], "");
    assert!(status == 303 && location == "/login" && cookie.contains("Max-Age=0"), "{cookie}");
    // Signed out on the server: a copy of the cookie is worthless from then on, and so is an id
    // the server never gave.
    assert_eq!(call("GET", "/api/channels", &[("Cookie", &session)], "").0, 401, "a session outlives sign-out");
    let forged = format!("cctv_session={}", "0".repeat(64));
    assert_eq!(call("GET", "/api/channels", &[("Cookie", &forged)], "").0, 401);
    // Guessing the token is throttled per client: after 10 wrong tokens in 5 minutes even the
    // right one waits (429 with Retry-After), and no session is given.
    for _ in 0..9 {
        assert_eq!(call("POST", "/login", &form, "token=guess-0123456789&next=/").0, 401);
    }
    let (status, page, _, cookie) = call("POST", "/login", &form, &format!("token={VIEWER}&next=/"));
    assert!(status == 429 && cookie.is_empty() && page.contains("Too many"), "{status} {cookie} {page}");
    // In the browser: the dashboard without a session is the sign-in form.
    let dom = page_dom(port, "/");
    assert!(dom.contains("id=\"login\"") && !dom.contains("id=\"channels\""), "{dom}");
}

/// The dashboard's DOM after its scripts ran, from Debian's `chromium` in headless mode.
fn dashboard_dom(port: u16) -> String {
    page_dom(port, "/")
}

/// The DOM of the page at `path` once Chromium ran its scripts.
fn page_dom(port: u16, path: &str) -> String {
    browse(port, path, &[], 6000)
}

/// The dashboard's player shows `file` and drew a picture from it: (where playing began, where
/// it is), seconds.
fn assert_playing(dom: &str, file: &str) -> (f64, f64) {
    let player = dom.split("id=\"player\"").nth(1).and_then(|r| r.split('>').next()).unwrap_or("");
    assert!(player.contains(&format!("data-file=\"{file}\"")), "the player did not open {file}: {player}\n{dom}");
    assert!(player.contains("data-played=\"yes\""), "no picture drawn from {file}: {player}");
    let attr = |name: &str| -> f64 {
        let v = player.split(&format!("data-{name}=\"")).nth(1).and_then(|r| r.split('"').next());
        v.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no data-{name} on the player: {player}"))
    };
    (attr("from"), attr("time"))
}

/// A PNG of the page at `path` after `budget_ms` of Chromium's virtual time.
fn screenshot(port: u16, path: &str, flags: &[&str], budget_ms: u32, out: &std::path::Path) {
    let status = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(flags)
        .arg(format!("--screenshot={}", out.display()))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("chromium");
    assert!(status.status.success() && out.is_file(), "no screenshot: {}", String::from_utf8_lossy(&status.stderr));
}

/// Today's date in Tokyo (UTC+9, no daylight saving) as Chromium's en-US short date shows it.
fn tokyo_date() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 9 * 3600;
    let (y, m, d) = civil_from_days((t / 86_400) as i64);
    format!("{m}/{d}/{}", y % 100)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `cctv completions <shell>` needs no config or Redis and completes the subcommands; a closed
/// pipe is no panic.
#[test]
fn cli_prints_shell_completions() {
    let out = std::process::Command::new(cctv_testkit::netns::workspace_bin("cctv"))
        .args(["--config", "/nonexistent/cctv.toml", "completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = String::from_utf8_lossy(&out.stdout);
    for word in ["_cctv()", "status", "protect", "unprotect", "--check"] {
        assert!(script.contains(word), "{word} missing from the bash completion");
    }
}

/// The served OpenAPI document is valid (openapi-spec-validator), and what every documented
/// JSON GET without path or required parameters answers right now matches the schema it documents.
fn openapi_check(http: &Http, doc: &serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let doc_file = dir.path().join("openapi.json");
    std::fs::write(&doc_file, doc.to_string()).unwrap();
    let mut args = vec![doc_file.display().to_string()];
    for (path, item) in doc["paths"].as_object().unwrap() {
        let json_answer = item["get"]["responses"]["200"]["content"]["application/json"].is_object();
        // Operations with a required query parameter (an export's range) are checked by their own tests.
        let required = item["get"]["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["required"] == true));
        if path.contains('{') || !json_answer || required || path == "/api/openapi.json" {
            continue;
        }
        let (status, answer) = http.get(path);
        assert_eq!(status, 200, "GET {path}: {answer}");
        let file = dir.path().join(format!("answer{}.json", args.len()));
        std::fs::write(&file, answer.to_string()).unwrap();
        args.push(format!("{path}={}", file.display()));
    }
    assert!(args.len() >= 8, "too few answers checked: {args:?}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let pylib = root.join(".tools/python");
    assert!(pylib.is_dir(), "{} missing: run deploy/install-deps.sh (openapi-spec-validator)", pylib.display());
    let out = std::process::Command::new("python3")
        .arg(root.join("scheduler/tests/support/openapi_check.py"))
        .args(&args)
        .env("PYTHONPATH", &pylib)
        .output()
        .expect("python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "the OpenAPI document or an answer does not hold: {text}");
}

/// Schema-driven fuzzing of every documented route (schemathesis, installed by
/// deploy/install-deps.sh into `.tools/schemathesis`) against a running API, as the admin:
/// generated paths, parameters and bodies, and no answer may be a server error (5xx).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_driven_fuzzing_finds_no_server_error() {
    let (port, _tmp, backups, extra) = api_site(&format!("token = \"{TOKEN}\""), "");
    std::fs::write(backups.join("Channel1_2026-01-01_00-00-00.mp4"), b"0123456789").unwrap();
    let mut cluster = Cluster::new(&channel_with(1, ""), 8, &extra);
    cluster.start_scheduler();
    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "API");
    let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/schemathesis");
    assert!(tools.join(".schemathesis-4.32.5").exists(), "schemathesis missing: run deploy/install-deps.sh");
    let report = cluster.path("schemathesis.txt");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; schemathesis()",
            ])
            .args(["run", &format!("http://127.0.0.1:{port}/api/openapi.json")])
            .args(["--checks", "not_a_server_error", "--max-examples", "25", "--workers", "1", "--no-color"])
            // Reproducible (a failure names the seed's case again), and not failed by a loaded
            // CI machine: Hypothesis' own speed checks off, requests given 30 s. One worker: with
            // two threads CPython 3.11 failed inside Hypothesis ("AST constructor recursion
            // depth mismatch") on a loaded machine, an error of the tool, not of the API.
            .args(["--seed", "20261207", "--suppress-health-check", "all", "--request-timeout", "30"])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .env("PYTHONPATH", &tools)
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("running schemathesis")
    })
    .await
    .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    std::fs::write(&report, &said).unwrap();
    let tail: String = said.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(out.status.success(), "schemathesis found server errors (or could not run):\n{said}");
    // It ran: it says how many cases it generated and that none failed.
    assert!(said.contains("passed") && !said.contains(" failed"), "{tail}");
    eprintln!("{tail}");
}

//! Zones drawn on the camera's picture, on real servers: redis-server, nginx-rtmp, an ffmpeg
//! camera with people walking through, the scheduler with its API and worker-motion. A zone is
//! drawn in headless Chromium (clicks on the picture, "finish", the admin token, "save"), and
//! the motion events that follow name it — with no process restarted. A bad drawing is refused
//! with its reason and nothing is written.

use std::time::Duration;

use cctv_common::config::overlay::{overlay_path, ZonesOverlay};
use cctv_common::events::{now_ms, MotionEventKind};
use cctv_testkit::cluster::{channel, people_clip, wait_for, Cluster};
use cctv_testkit::netns::workspace_bin;
use cctv_testkit::Pusher;

const TOKEN: &str = "admin-token-for-zones";

fn put_zones(port: u16, token: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .put(&format!("http://127.0.0.1:{port}/api/channels/1/zones"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_drawn_on_the_picture_is_saved_and_motion_names_it_without_a_restart() {
    cctv_common::telemetry::init(None);
    let port = cctv_testkit::free_port();
    let extra = format!("[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n");
    let mut cluster = Cluster::new(&channel(1), 8, &extra);
    // People walk through every ~20 s.
    let clip = people_clip(cluster.dir.path(), "people.mp4", 1, 6.0, 6.0);
    let _camera = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    cluster.start_scheduler();
    let _motion = cluster.spawn(workspace_bin("worker-motion").to_str().unwrap(), &["run"]);
    let starts = |since: i64| {
        let cluster = &cluster;
        async move {
            cluster
                .motion_events()
                .await
                .into_iter()
                .filter(move |m| m.channel == 1 && m.kind == MotionEventKind::Start && m.ts_ms > since)
                .collect::<Vec<_>>()
        }
    };
    let first = wait_for(Duration::from_secs(90), || async { starts(0).await.into_iter().next() }).await;
    let first = first.expect("motion on channel 1 before any zone");
    assert!(first.zones.is_empty(), "no zone is configured yet: {first:?}");

    // A bad drawing: refused with the reason, nothing written; without the token: refused.
    let overlay = overlay_path(&cluster.config_path);
    let two_corners = r#"{"zone": [{"name": "porch", "points": [[0.1, 0.1], [0.9, 0.9]]}]}"#;
    let (status, body) = put_zones(port, TOKEN, two_corners);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("zone[0].points") && body.contains("nothing saved"), "the reason is given: {body}");
    assert_eq!(put_zones(port, "wrong", two_corners).0, 401);
    assert!(!overlay.exists(), "a refused drawing wrote {}", overlay.display());

    // Drawn in the dashboard: a zone over the whole picture.
    let expr = format!(
        "(async () => {{ const $ = (id) => document.getElementById(id); const c = $('zn-canvas'); \
           for (let i = 0; i < 50 && !$('zn-list').textContent; i++) await new Promise((r) => setTimeout(r, 100)); \
           $('zn-kind').value = 'zone'; $('zn-name').value = 'porch'; \
           const r = c.getBoundingClientRect(); \
           for (const [x, y] of [[0.01, 0.01], [0.99, 0.01], [0.99, 0.99], [0.01, 0.99]]) \
             c.dispatchEvent(new MouseEvent('click', {{ clientX: r.left + x * r.width, clientY: r.top + y * r.height, bubbles: true }})); \
           $('zn-finish').click(); $('zones').scrollIntoView(); $('zn-token').value = '{TOKEN}'; $('zn-save').click(); \
           for (let i = 0; i < 50 && !$('zones').dataset.saved; i++) await new Promise((r) => setTimeout(r, 100)); \
           return {{ saved: $('zones').dataset.saved, result: $('zn-result').textContent, list: $('zn-list').textContent, \
             picture: c.width }}; }})()"
    );
    let url = format!("http://127.0.0.1:{port}/?zones=1&channel=1");
    let shot = cctv_testkit::screenshot_path("zones-editor.png");
    let seen = tokio::task::spawn_blocking(move || {
        cctv_testkit::chromium_eval_shot(&url, 1280, 900, 4000, &expr, shot.as_deref())
    })
    .await
    .unwrap();
    assert_eq!(seen["saved"], "yes", "the drawing was not saved: {seen}");
    assert!(seen["list"].as_str().unwrap_or("").contains("porch"), "{seen}");
    let saved_ms = now_ms();
    let drawn = ZonesOverlay::read(&overlay).unwrap().expect("the overlay is written");
    assert_eq!(drawn.channel[0].zone[0].name, "porch");
    assert_eq!(drawn.channel[0].zone[0].points.len(), 4);

    // Motion names the zone from the next people on, with every process as it was.
    let named = wait_for(Duration::from_secs(120), || async {
        starts(saved_ms).await.into_iter().find(|m| m.zones.iter().any(|z| z == "porch"))
    })
    .await;
    assert!(named.is_some(), "no motion event names the drawn zone within 120 s: {:?}", starts(saved_ms).await);
}

//! The live grid on real servers: 8 cameras (real footage whose bottom rows carry each frame's
//! number as a bar code) published into nginx-rtmp, the API, and headless Chromium showing the
//! dashboard's grid. The page reads the bar code of the picture each tile shows, so the
//! latency measured is the whole way from the camera sending a frame to the browser drawing
//! it — not the page's own estimate, which is reported beside it. Then one camera's main
//! stream, and the grid coming back by itself after nginx-rtmp restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use cctv_common::events::now_ms;
use cctv_testkit::cluster::{channel, Cluster};
use cctv_testkit::Pusher;

const CAMERAS: u32 = 8;

/// Samples every tile for `ms`: the bar code's age (camera → screen) where `T0` knows the
/// camera's start, the page's own latency, and what the tile says.
const SAMPLE: &str = r#"
const T0 = __T0__;
const read = (v) => {
  const c = document.createElement('canvas'); c.width = v.videoWidth; c.height = v.videoHeight;
  if (!c.width) return null;
  const g = c.getContext('2d'); g.drawImage(v, 0, 0);
  const row = g.getImageData(0, c.height - 8, c.width, 1).data, cell = c.width / 16;
  const bit = (k) => { const x = Math.floor(k * cell + cell / 2) * 4; return (row[x] + row[x + 1] + row[x + 2]) / 3 > 128; };
  if (!bit(0) || bit(15)) return null;
  let n = 0; for (let k = 1; k < 15; k++) if (bit(k)) n += 1 << (k - 1);
  return n;
};
const sample = (ms) => new Promise((done) => {
  const out = {}, start = Date.now();
  const step = () => {
    for (const t of document.querySelectorAll('.live-tile')) {
      const ch = t.dataset.channel, v = t.querySelector('video');
      const o = out[ch] = out[ch] || { e2e: [], ui: [], frames: [] };
      const n = v.readyState >= 2 ? read(v) : null;
      if (n !== null) { o.frames.push(n); if (T0[ch]) o.e2e.push(Date.now() - (T0[ch] + n * 40)); }
      if (t.dataset.latencyMs) o.ui.push(Number(t.dataset.latencyMs));
      Object.assign(o, { playing: t.dataset.playing === 'yes', codec: t.dataset.codec || '', stream: t.dataset.stream,
        viewers: t.dataset.viewers || '', reconnects: Number(t.dataset.reconnects || 0) });
    }
    if (Date.now() - start < ms) setTimeout(step, 200); else done(out);
  };
  step();
});
"#;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()
}

fn start_cameras(clip: &std::path::Path, live_url: &str) -> (Vec<Pusher>, BTreeMap<u32, i64>) {
    let mut t0 = BTreeMap::new();
    let pushers = (1..=CAMERAS)
        .map(|id| {
            // Taken before ffmpeg starts: a frame can only have left later, so the age read from
            // the bar code is never smaller than the real one.
            t0.insert(id, now_ms());
            Pusher::start(clip, live_url, &format!("ch{id}"))
        })
        .collect();
    (pushers, t0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_cameras_play_live_in_under_a_second_and_come_back_after_nginx_restarts() {
    cctv_common::telemetry::init(None);
    let channels: String = (1..=CAMERAS).map(channel).collect();
    let mut cluster = Cluster::new(&channels, 8, "");
    let clip = cluster.path("timecode.mp4");
    cctv_testkit::timecode_clip(&cctv_testkit::media("people-detection.gif"), &clip, 120);
    let (pushers, t0) = start_cameras(&clip, &cluster.nginx.live_url());
    for p in &pushers {
        p.wait_publishing();
    }
    cluster.start_scheduler();
    let port: u16 = cluster.config.api.listen.rsplit(':').next().unwrap().parse().unwrap();
    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "API");

    // The grid (3x3: all 8), then a click on camera 1: its main stream.
    let t0_json = serde_json::to_string(&t0).unwrap();
    let expr = format!(
        "(async () => {{ {} const grid = await sample(8000); \
           document.querySelector('.live-tile[data-channel=\"1\"]').click(); \
           await new Promise((r) => setTimeout(r, 5000)); \
           const main = await sample(5000); \
           const feeds = await (await fetch('/api/live')).json(); \
           return {{ grid, main, feeds }}; }})()",
        SAMPLE.replace("__T0__", &t0_json)
    );
    let url = format!("http://127.0.0.1:{port}/?grid=3x3");
    let seen =
        tokio::task::spawn_blocking(move || cctv_testkit::chromium_eval(&url, 1280, 900, 6000, &expr)).await.unwrap();
    let grid = seen["grid"].as_object().cloned().unwrap_or_default();
    assert_eq!(grid.len(), CAMERAS as usize, "8 tiles in the grid: {seen}");
    let mut report = Vec::new();
    for (ch, t) in &grid {
        let (e2e, ui) = (numbers(&t["e2e"]), numbers(&t["ui"]));
        assert_eq!(t["playing"], true, "channel {ch} shows no picture: {t}");
        assert_eq!(t["stream"], "sub", "{t}");
        assert!(t["codec"].as_str().is_some_and(|c| c.starts_with("avc1.")), "channel {ch} names no codec: {t}");
        assert!(e2e.len() >= 10, "channel {ch}: the bar code was read {} times in 8 s: {t}", e2e.len());
        let frames = numbers(&t["frames"]);
        assert!(frames.last() > frames.first(), "channel {ch}'s picture does not move: {t}");
        let (p50, worst) = (median(&e2e), e2e.iter().copied().fold(f64::MIN, f64::max));
        report.push(format!(
            "ch{ch} camera→screen p50 {p50:.0} ms max {worst:.0} ms, page's own p50 {:.0} ms",
            median(&ui)
        ));
        assert!(p50 <= 1000.0, "channel {ch} plays {p50:.0} ms behind its camera (median): {t}");
    }
    let main = &seen["main"]["1"];
    assert_eq!(main["stream"], "main", "a click shows the main stream: {seen}");
    assert_eq!(main["playing"], true, "{main}");
    let main_p50 = median(&numbers(&main["e2e"]));
    assert!(main_p50 <= 1000.0, "the main stream plays {main_p50:.0} ms behind its camera: {main}");
    report.push(format!("ch1 main stream camera→screen p50 {main_p50:.0} ms"));
    let feeds = seen["feeds"].as_array().cloned().unwrap_or_default();
    assert!(
        feeds.iter().any(|f| f["channel"] == 1 && f["stream"] == "main" && f["viewers"] == 1),
        "the API counts the main stream's viewer: {feeds:?}"
    );
    eprintln!("live grid, 8 cameras, Chromium on this machine:\n  {}", report.join("\n  "));
    if let Some(shot) = cctv_testkit::screenshot_path("live-grid.png") {
        let url = format!("http://127.0.0.1:{port}/?grid=3x3");
        let at = "(() => { document.getElementById('grid').scrollIntoView(); return 1; })()";
        tokio::task::spawn_blocking(move || cctv_testkit::chromium_eval_shot(&url, 1280, 820, 7000, at, Some(&shot)))
            .await
            .unwrap();
    }

    // nginx-rtmp restarts (the cameras reconnect to it): every tile comes back by itself.
    let expr = format!(
        "(async () => {{ {} const before = await sample(3000); \
           const deadline = Date.now() + 60000; let after = null; \
           while (Date.now() < deadline) {{ \
             after = await sample(2000); \
             const back = Object.entries(after).filter(([ch, t]) => {{ const n = t.frames.length; \
               return t.reconnects >= 1 && n >= 5 && t.frames[n - 1] > t.frames[n - 5] \
                 && t.frames[n - 1] < ((before[ch] || {{}}).frames || [0])[0]; }}); \
             if (back.length === 4) break; }} \
           return {{ before, after }}; }})()",
        SAMPLE.replace("__T0__", "{}")
    );
    let url = format!("http://127.0.0.1:{port}/?grid=2x2");
    let browser = tokio::task::spawn_blocking(move || cctv_testkit::chromium_eval(&url, 1280, 900, 6000, &expr));
    tokio::time::sleep(Duration::from_secs(12)).await;
    drop(pushers);
    cluster.nginx.restart(Duration::from_secs(1));
    let (_pushers, _) = start_cameras(&clip, &cluster.nginx.live_url());
    let seen = browser.await.unwrap();
    eprintln!("after nginx-rtmp restarted: {}", seen["after"]);
    let after = seen["after"].as_object().cloned().unwrap_or_default();
    assert_eq!(after.len(), 4, "{seen}");
    for (ch, t) in &after {
        assert!(t["reconnects"].as_u64().unwrap_or(0) >= 1, "channel {ch} never lost its stream: {t}");
        // The restarted camera plays its clip from the start again: the tile shows those
        // frames, and they move (a frozen last picture is not "back").
        let (frames, before) = (numbers(&t["frames"]), numbers(&seen["before"][ch]["frames"]));
        let n = frames.len();
        assert!(n >= 5 && frames[n - 1] > frames[n - 5], "channel {ch} did not come back (frozen): {t}");
        assert!(frames[n - 1] < before.first().copied().unwrap_or(0.0), "channel {ch} shows the old stream: {t}");
    }
}

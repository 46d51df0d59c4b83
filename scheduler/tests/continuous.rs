//! `record = "continuous"` on real servers: redis-server, nginx-rtmp with its HLS buffer, an
//! ffmpeg camera looping footage with long still stretches, the scheduler, worker-motion and
//! worker-record. The channel records all the time, quiet or not, in files cut at
//! `max_file_seconds`: back to back with no gap and no second twice (by the files' own reports
//! and by ffprobe's durations), and the motion events fall on the file that holds them.
//!
//! In headless Chromium, the dashboard's timeline plays a moment just before a file boundary
//! and carries on into the next file by itself; either side of the boundary has footage; and
//! "all cameras together" plays both channels at the same instant.

use std::time::Duration;

use cctv_common::events::{BackupEvent, BackupEventKind, MotionEventKind};
use cctv_common::jobs::TriggerKind;
use cctv_testkit::cluster::{
    channel_with, people_clip, probe_duration, record_section, wait_for, Cluster, FRAGMENT_CLOCK_SLACK_MS,
};
use cctv_testkit::netns::workspace_bin;
use cctv_testkit::Pusher;

const FILE_SECS: i64 = 10;
const FILES: usize = 5;

async fn continuous_files(cluster: &Cluster) -> Vec<BackupEvent> {
    let mut files: Vec<BackupEvent> = cluster
        .backup_events()
        .await
        .into_iter()
        .filter(|e| {
            e.channel == 1
                && e.kind == BackupEventKind::File
                && e.trigger.as_ref().is_some_and(|t| t.kind == TriggerKind::Continuous)
        })
        .collect();
    files.sort_by_key(|e| e.start_ms);
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_channel_records_back_to_back_files_with_its_events_marked() {
    cctv_common::telemetry::init(None);
    let dir = tempfile::tempdir().unwrap();
    let extra =
        record_section(dir.path(), &format!("pre_roll_secs = 2\npost_roll_secs = 2\nmax_file_seconds = {FILE_SECS}"));
    let channels = [1, 2].map(|id| channel_with(id, "record = \"continuous\"")).concat();
    let mut cluster = Cluster::new(&channels, 8, &extra);
    // 12 s still, people walking through, 10 s still: most of the time nothing moves.
    let clip = people_clip(cluster.dir.path(), "quiet-people.mp4", 1, 12.0, 10.0);
    let _cameras = ["ch1", "ch2"].map(|name| Pusher::start(&clip, &cluster.nginx.live_url(), name));
    cluster.start_scheduler();
    let _workers: Vec<_> = ["worker-motion", "worker-record"]
        .map(|bin| cluster.spawn(workspace_bin(bin).to_str().unwrap(), &["run"]))
        .into();

    let files = wait_for(Duration::from_secs(150), || async {
        let files = continuous_files(&cluster).await;
        (files.len() >= FILES).then_some(files)
    })
    .await;
    let files = files.unwrap_or_else(|| panic!("no {FILES} continuous files within 150 s"));

    // Back to back: each file starts where the previous one ended, within the fragment clock
    // slack; files after the first are whole slots.
    for pair in files.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let step = b.start_ms - a.end_ms;
        assert!(
            step.abs() <= FRAGMENT_CLOCK_SLACK_MS,
            "{} ends at {} but {} starts at {}: {} ms {}",
            a.recording,
            a.end_ms,
            b.recording,
            b.start_ms,
            step.abs(),
            if step > 0 { "never recorded" } else { "recorded twice" }
        );
        assert_ne!(a.recording, b.recording, "one file per slot");
    }
    for f in &files[1..] {
        let secs = (f.end_ms - f.start_ms) as f64 / 1000.0;
        assert!((secs - FILE_SECS as f64).abs() <= 2.5, "{} holds {secs:.1} s, not a {FILE_SECS} s slot", f.recording);
    }
    // What the files hold is what they report: over all of them, the seconds on disk add up to
    // the span they cover (a duplicated or missing fragment would show here).
    let backups = dir.path().join("backups");
    let on_disk: f64 = files.iter().map(|f| probe_duration(&backups.join(f.file.as_deref().unwrap()))).sum();
    let span = (files.last().unwrap().end_ms - files[0].start_ms) as f64 / 1000.0;
    assert!((on_disk - span).abs() <= 1.0, "the files hold {on_disk:.1} s of video for a {span:.1} s span");

    // Motion events are marked on the file that holds them (away from a boundary, where the
    // slot that holds it may already have been decided before the event was read).
    let starts: Vec<_> = cluster
        .motion_events()
        .await
        .into_iter()
        .filter(|m| m.channel == 1 && m.kind == MotionEventKind::Start)
        .collect();
    let mut marked = 0;
    for m in &starts {
        let Some(f) = files.iter().find(|f| f.start_ms + 1000 <= m.ts_ms && m.ts_ms + 1000 <= f.end_ms) else {
            continue;
        };
        assert!(
            f.events.contains(&m.event_id),
            "motion {} at {} is not marked on {}",
            m.event_id,
            m.ts_ms,
            f.recording
        );
        marked += 1;
    }
    assert!(marked >= 1, "no motion inside the files to mark (starts: {starts:?})");

    // The dashboard: a moment 1.5 s before the end of the second file plays on into the third.
    let port: u16 = cluster.config.api.listen.rsplit(':').next().unwrap().parse().unwrap();
    let (before, after) = (&files[1], &files[2]);
    let name = |f: &BackupEvent| f.file.as_deref().unwrap().rsplit('/').next().unwrap().to_string();
    let url = format!("http://127.0.0.1:{port}/?seek=1:{}", before.end_ms - 1500);
    let expr = format!(
        "new Promise((done) => {{ const p = document.getElementById('player'); let n = 0; \
           const t = setInterval(() => {{ n++; \
             if ((p.dataset.continuedFrom === '{a}' && p.dataset.file === '{b}' && p.dataset.played === 'yes') || n > 60) {{ \
               clearInterval(t); const seen = {{ file: p.dataset.file, from: p.dataset.continuedFrom, played: p.dataset.played }}; \
               const note = document.getElementById('tl-note'); \
               seekTo(1, {edge} - 100); seen.before = note.className; seekTo(1, {edge} + 100); seen.after = note.className; \
               done(seen); }} }}, 250); }})",
        a = name(before),
        b = name(after),
        edge = after.start_ms,
    );
    let seen = cctv_testkit::chromium_eval(&url, 1280, 900, 3000, &expr);
    assert_eq!(seen["from"], name(before), "playback did not carry on into the next file: {seen}");
    assert_eq!(seen["file"], name(after), "{seen}");
    assert_eq!(seen["played"], "yes", "the next file's picture was not drawn: {seen}");
    assert_eq!(
        (seen["before"].as_str(), seen["after"].as_str()),
        (Some(""), Some("")),
        "no footage at the boundary: {seen}"
    );

    // Both cameras at one moment, kept in step.
    let moment = after.start_ms + 1000;
    let url = format!("http://127.0.0.1:{port}/?seek=1:{moment}&together=1");
    let expr = "new Promise((done) => setTimeout(() => { const box = document.getElementById('together'); \
        const v = [...box.querySelectorAll('video')]; \
        done({ tiles: v.length, playing: v.filter((x) => x.currentTime > 0 && !x.paused).length, \
               spread: box.dataset.spread, moment: box.dataset.moment, \
               walls: v.map((x) => Number(x.parentElement.dataset.start) + x.currentTime * 1000) }); }, 3000))";
    let shot = cctv_testkit::screenshot_path("cameras-together.png");
    let seen = cctv_testkit::chromium_eval_shot(&url, 1280, 900, 3000, expr, shot.as_deref());
    eprintln!("all cameras together at {moment}: {seen}");
    assert_eq!(seen["tiles"], 2, "both channels have a file at that moment: {seen}");
    assert_eq!(seen["playing"], 2, "{seen}");
    let walls: Vec<f64> = seen["walls"].as_array().unwrap().iter().filter_map(|w| w.as_f64()).collect();
    let spread = (walls[0] - walls[1]).abs();
    assert!(spread <= 600.0, "the two cameras play {spread:.0} ms apart: {seen}");
    assert!(walls[0] >= moment as f64, "they play from the moment asked for: {seen}");
    if let Some(shot) = cctv_testkit::screenshot_path("timeline-continuous.png") {
        // Five minutes around the files: back-to-back backups, motion, object labels.
        let url = format!("http://127.0.0.1:{port}/?hours=0.083333&seek=1:{}", after.start_ms + 2000);
        let at = "(() => { document.getElementById('timeline').scrollIntoView(); return 1; })()";
        cctv_testkit::chromium_eval_shot(&url, 1280, 820, 6000, at, Some(&shot));
    }
}

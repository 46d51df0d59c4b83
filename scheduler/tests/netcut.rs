//! A network cut between the workers' host and the site's servers: host A runs redis-server,
//! nginx-rtmp, a camera and the scheduler; host B runs every worker. B's link goes down for 30 s
//! — longer than the Redis response timeout and the batch lease — so the workers' TCP
//! connections hang instead of failing, as on a real network cut. Every process stays up, and
//! once the link is back motion events, object events and backups resume.

use std::time::{Duration, Instant};

use cctv_common::events::now_ms;
use cctv_testkit::netns::{wait_until, workspace_bin, Network, RedisCli, SiteServers};

#[test]
fn workers_ride_out_a_network_cut_to_redis_and_nginx() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("proc-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut net = Network::new();
    let (a, b) = (net.host("a", 1), net.host("b", 2));
    // Looped: 6 s quiet, ~11 s of people, 8 s quiet: a new motion event every 25 s.
    let clip = tmp.path().join("cam.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("people-detection.gif"), &clip, 6, 6.0, 8.0);
    let site = SiteServers::start(&a, tmp.path(), &logs, &clip, 1, true);
    // The clip's quiet stretches are its first and last frame held, with people standing at
    // its edge: YOLO (scoring the decoded pictures) sees them, so the recording stays open
    // across the whole loop. Files then come at `max_file_seconds`, not at its end.
    let cfg = site.write_config_with(&a, tmp.path(), 1, "max_file_seconds = 20\n");
    let cfg_s = cfg.to_str().unwrap();
    let _scheduler = a.spawn(workspace_bin("scheduler"), &["--config", cfg_s, "run"], &logs.join("scheduler.log"));
    let redis = RedisCli { host: &a, port: site.redis_port };
    let mut workers: Vec<_> = ["worker-motion", "worker-yolo", "worker-record"]
        .iter()
        .map(|bin| (bin, b.spawn(workspace_bin(bin), &["--config", cfg_s, "run"], &logs.join(format!("{bin}.log")))))
        .collect();
    let files = |redis: &RedisCli| -> Vec<serde_json::Value> {
        redis.stream("it:events:backup").into_iter().filter(|e| e["kind"] == "file").collect()
    };
    wait_until(Duration::from_secs(120), || (!files(&redis).is_empty()).then_some(()))
        .expect("a backup is written before the cut");

    b.set_link(false);
    std::thread::sleep(Duration::from_secs(30));
    b.set_link(true);
    let restored_ms = now_ms();
    let restored = Instant::now();

    let motion = wait_until(Duration::from_secs(60), || {
        redis
            .stream("it:events:motion")
            .iter()
            .any(|m| m["kind"] == "start" && m["ts_ms"].as_i64().is_some_and(|t| t > restored_ms))
            .then(|| restored.elapsed())
    });
    let objects = wait_until(Duration::from_secs(60), || {
        redis
            .stream("it:events:objects")
            .iter()
            .any(|o| o["frame_ts_ms"].as_i64().is_some_and(|t| t > restored_ms))
            .then(|| restored.elapsed())
    });
    let backup = wait_until(Duration::from_secs(120), || {
        files(&redis)
            .iter()
            .any(|f| f["start_ms"].as_i64().is_some_and(|t| t > restored_ms))
            .then(|| restored.elapsed())
    });
    eprintln!("after the 30 s cut: motion start {motion:?}, objects {objects:?}, backup of later activity {backup:?}");
    // The cut was felt: each worker's queue poller timed out and was replaced.
    for bin in ["worker-motion", "worker-yolo", "worker-record"] {
        let log = std::fs::read_to_string(logs.join(format!("{bin}.log"))).unwrap_or_default();
        assert!(log.contains("starting a new one"), "{bin} never lost Redis: the cut did not cut");
    }
    for (bin, p) in &mut workers {
        assert!(p.0.try_wait().unwrap().is_none(), "{bin} exited after the network cut");
    }
    assert!(motion.is_some(), "no motion event after the link came back");
    assert!(objects.is_some(), "no object event after the link came back");
    assert!(backup.is_some(), "no backup of activity after the link came back");
}

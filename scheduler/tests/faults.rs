//! Redis going away under a running cluster of real processes (scheduler, motion, YOLO and
//! record workers; redis-server, nginx-rtmp, an ffmpeg camera): `kill -9` and a restart from its
//! append-only file, then a replacement server with no data at all. Every process must ride it
//! out — none exits — and motion events, object events and backup files must come again, and
//! the recording open when Redis died must be finished.

use std::time::Duration;

use cctv_common::events::{now_ms, BackupEventKind, MotionEventKind};
use cctv_common::recording::{RecordingState, RecordingStore};
use cctv_testkit::cluster::{channel_with, record_section, wait_for, yolo_section, Cluster};
use cctv_testkit::netns::workspace_bin;
use cctv_testkit::{KillOnDrop, Pusher, Redis, RedisSentinel, RtspCameras};

struct Procs(Vec<(&'static str, KillOnDrop)>);

impl Procs {
    fn assert_alive(&mut self, when: &str) {
        for (name, p) in &mut self.0 {
            assert!(matches!(p.0.try_wait(), Ok(None)), "{name} exited {when}: {:?}", p.0.try_wait());
        }
    }
}

/// After `since_ms`: a motion start, an object event on the priority channel and a backup file
/// (all written to the new Redis, so each process reconnected and its job loop runs again).
async fn cluster_works_again(cluster: &Cluster, since_ms: i64, what: &str) -> CameBack {
    let motion = wait_for(Duration::from_secs(60), || async {
        cluster.motion_events().await.into_iter().find(|e| e.kind == MotionEventKind::Start && e.ts_ms > since_ms)
    })
    .await;
    let motion = motion.unwrap_or_else(|| panic!("{what}: no motion event within 60 s"));
    let objects = wait_for(Duration::from_secs(30), || async {
        cluster.object_events().await.into_iter().find(|e| e.channel == 1 && e.frame_ts_ms > since_ms)
    })
    .await;
    let objects = objects.unwrap_or_else(|| panic!("{what}: no object event within 30 s of motion"));
    let file = wait_for(Duration::from_secs(60), || async {
        cluster.backup_events().await.into_iter().find(|e| e.kind == BackupEventKind::File && e.ts_ms > since_ms)
    })
    .await;
    let file = file.unwrap_or_else(|| panic!("{what}: no backup file within 60 s"));
    CameBack { motion_ms: motion.ts_ms, object_ms: objects.frame_ts_ms, backup_ms: file.ts_ms }
}

/// Two cameras (channel 1 priority, recorded for objects; channel 2 recorded on motion) looping
/// footage where workers walk through every 19 s or so, and the scheduler and the three workers
/// as real processes, checked to work before any fault.
struct Site {
    cluster: Cluster,
    procs: Procs,
    _cameras: [Pusher; 2],
    _dir: tempfile::TempDir,
}

impl Site {
    async fn start(redis: Redis, extra: &str, what: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let extra = format!(
            "{extra}{}{}",
            record_section(dir.path(), "pre_roll_secs = 3\npost_roll_secs = 3"),
            yolo_section(dir.path(), "")
        );
        let channels = [channel_with(1, "priority = true\nrecord = \"objects\""), channel_with(2, "")].concat();
        let cluster = Cluster::with_redis(redis, &channels, 8, &extra);
        let clip = cluster.path("cycle.mp4");
        cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 1, 6.0, 8.0);
        let cameras = ["ch1", "ch2"].map(|name| Pusher::start(&clip, &cluster.nginx.live_url(), name));
        let procs = Procs(
            ["scheduler", "worker-motion", "worker-yolo", "worker-record"]
                .into_iter()
                .map(|bin| (bin, cluster.spawn(workspace_bin(bin).to_str().unwrap(), &["run"])))
                .collect(),
        );
        cluster_works_again(&cluster, 0, what).await;
        Self { cluster, procs, _cameras: cameras, _dir: dir }
    }
}

/// When the first motion start, object event and backup file after a fault were stamped.
struct CameBack {
    motion_ms: i64,
    object_ms: i64,
    backup_ms: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_rides_out_redis_restarts_with_and_without_its_data() {
    cctv_common::telemetry::init(None);
    let Site { mut cluster, mut procs, _cameras, _dir } =
        Site::start(Redis::start_persistent(), "", "before any fault").await;

    // 1. kill -9 while a recording is open; back 20 s later with its data (AOF). Workers walk
    // through meanwhile (the clip cycles in under 20 s).
    let store = RecordingStore::new(cluster.conn_manager().await, cluster.keys.clone());
    let open = wait_for(Duration::from_secs(60), || async {
        store.active(2).await.ok().flatten().filter(|v| v.rec.state == RecordingState::Open).map(|v| v.rec.id)
    })
    .await
    .expect("a recording opens on channel 2");
    cluster.redis.kill();
    let down = now_ms();
    tokio::time::sleep(Duration::from_secs(20)).await;
    procs.assert_alive("while Redis was down");
    cluster.redis.restart();
    let back = now_ms();
    cluster_works_again(&cluster, back, "after a restart with data").await;
    // Motion during the outage reaches the scheduler afterwards and is backed up from the HLS
    // buffer.
    let during = cluster
        .motion_events()
        .await
        .into_iter()
        .find(|e| e.channel == 2 && e.kind == MotionEventKind::Start && (down..back).contains(&e.ts_ms));
    let during = during.expect("the motion that started while Redis was down is published once it is back");
    let covered = wait_for(Duration::from_secs(60), || async {
        cluster.backup_events().await.into_iter().find(|e| {
            e.channel == 2 && e.kind == BackupEventKind::File && (e.start_ms..=e.end_ms).contains(&during.ts_ms)
        })
    })
    .await;
    assert!(covered.is_some(), "no backup covers the motion at {} (during the outage)", during.ts_ms);
    procs.assert_alive("after a restart with data");
    // The recording open when Redis died is finished: a file, then closed in the store.
    let file = wait_for(Duration::from_secs(60), || async {
        cluster.backup_events().await.into_iter().find(|e| e.recording == open && e.kind == BackupEventKind::File)
    })
    .await;
    assert!(file.is_some(), "recording {open}, open when Redis died, has no file");
    let store = RecordingStore::new(cluster.conn_manager().await, cluster.keys.clone());
    let state = store.get(&open).await.unwrap().map(|v| v.rec.state);
    assert_eq!(state, Some(RecordingState::Closed), "recording {open}");

    // 2. A replacement server with no data: the scheduler re-plans, the workers claim again.
    cluster.redis.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.redis.restart_empty();
    let back = now_ms();
    cluster_works_again(&cluster, back, "after a restart without data").await;
    procs.assert_alive("after a restart without data");
}

/// nginx-rtmp restarting under a running cluster fed by real RTSP cameras through the relays:
/// the relays and motion readers reconnect by themselves, no process exits, motion and backups
/// resume, the recording caught by the restart is finished with what the buffer held and the
/// hole is reported in the backup log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_restart_is_ridden_out_and_the_gap_is_reported() {
    cctv_common::telemetry::init(None);
    let tmp = tempfile::tempdir().unwrap();
    // A minute of people at work (H.264 as IP cameras send it: GOP 1 s, no B-frames).
    let clip = tmp.path().join("busy.mp4");
    cctv_testkit::make_camera_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 14, 480, 270);
    let cameras = RtspCameras::start(&[(clip.clone(), clip.clone())]);
    let channels =
        format!("[[channel]]\nid = 1\nname = \"cam 1\"\nsource = \"{}\"\n", cameras.url("admin:secret@", 1, "main"));
    // Files of at most 20 s: the footage is busy without a pause, and a reader back within the
    // join window rightly keeps one recording open; its parts are what the test reads.
    let extra = record_section(tmp.path(), "pre_roll_secs = 3\npost_roll_secs = 3\nmax_file_seconds = 20");
    let mut cluster = Cluster::new(&channels, 8, &extra);
    let mut procs = Procs(
        [("scheduler", "run"), ("cctv-relay", "run"), ("worker-motion", "run"), ("worker-record", "run")]
            .into_iter()
            .map(|(bin, cmd)| (bin, cluster.spawn(workspace_bin(bin).to_str().unwrap(), &[cmd])))
            .collect(),
    );
    let store = RecordingStore::new(cluster.conn_manager().await, cluster.keys.clone());
    let open = wait_for(Duration::from_secs(60), || async {
        store.active(1).await.ok().flatten().filter(|v| v.rec.state == RecordingState::Open).map(|v| v.rec.id)
    })
    .await
    .expect("a recording opens");
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.nginx.restart(Duration::from_secs(3));
    let back = now_ms();

    let motion = wait_for(Duration::from_secs(60), || async {
        cluster.motion_events().await.into_iter().find(|e| e.kind == MotionEventKind::Start && e.ts_ms > back)
    })
    .await;
    assert!(motion.is_some(), "no motion event within 60 s of nginx coming back");
    procs.assert_alive("after nginx restarted");
    // Every recording ends with a playable file; the one caught by the restart reports its hole.
    let after = wait_for(Duration::from_secs(120), || async {
        let events = cluster.backup_events().await;
        events.iter().any(|e| e.kind == BackupEventKind::File && e.start_ms > back).then_some(events)
    })
    .await;
    let events = after.unwrap_or_default();
    assert!(!events.is_empty(), "no backup of video after the restart: {:?}", cluster.backup_events().await);
    let files: Vec<_> = events.iter().filter(|e| e.kind == BackupEventKind::File).collect();
    assert!(files.iter().any(|e| e.recording == open), "the recording caught by the restart has a file: {events:?}");
    for f in &files {
        let path = std::path::PathBuf::from(f.file.as_deref().unwrap());
        assert!(cctv_testkit::cluster::probe_duration(&path) > 1.0, "{} playable", path.display());
    }
    let gap = events.iter().find(|e| e.recording == open && e.kind == BackupEventKind::Error);
    assert!(gap.is_some_and(|e| e.error.as_deref().unwrap_or("").contains("gap in the stream")), "{events:?}");
    procs.assert_alive("at the end");
}

/// Redis behind Sentinel, its master killed: the sentinel promotes the replica and every process
/// follows it by itself (`[cluster.sentinel]`: connections relayed to whatever the sentinels call
/// the master). None exits; motion, object events, backups and heartbeats go to the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_follows_a_sentinel_failover() {
    cctv_common::telemetry::init(None);
    let master = Redis::start();
    let replica = Redis::start_replica_of(master.port);
    let sentinel = RedisSentinel::start("cctv", master.port);
    // The sentinel must know the replica before the master goes (it learns it from the master).
    let knows_replica = wait_for(Duration::from_secs(30), || async {
        let replicas: Vec<std::collections::HashMap<String, String>> =
            sentinel.query(&["replicas", "cctv"]).unwrap_or_default();
        replicas
            .iter()
            .any(|r| r.get("port") == Some(&replica.port.to_string()) && r.get("flags").is_some_and(|f| f == "slave"))
            .then_some(())
    })
    .await;
    assert!(knows_replica.is_some(), "the sentinel never listed the replica");

    let sentinel_section = format!("[cluster.sentinel]\nmaster = \"cctv\"\naddresses = [\"{}\"]\n", sentinel.address());
    let Site { mut cluster, mut procs, _cameras, _dir } =
        Site::start(master, &sentinel_section, "before the failover").await;

    cluster.redis.kill();
    let killed = now_ms();
    let promoted = wait_for(Duration::from_secs(60), || async {
        let addr: Option<(String, String)> = sentinel.query(&["get-master-addr-by-name", "cctv"]).ok();
        addr.filter(|(_, port)| *port == replica.port.to_string()).map(|_| now_ms())
    })
    .await
    .expect("the sentinel promotes the replica within 60 s");
    let back = cluster_works_again(&cluster, promoted, "after the failover").await;
    procs.assert_alive("after the failover");
    eprintln!(
        "sentinel failover: promoted {} ms after the kill; then first motion start {} ms, object event {} ms, \
         backup file {} ms after the promotion",
        promoted - killed,
        back.motion_ms - promoted,
        back.object_ms - promoted,
        back.backup_ms - promoted
    );

    // All of it is on the new master itself, heartbeats of every kind included.
    let mut conn = redis::Client::open(replica.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.unwrap();
    assert_eq!(role.first(), Some(&redis::Value::BulkString(b"master".to_vec())), "the replica was promoted");
    for stream in [cluster.keys.motion_events(), cluster.keys.object_events(), cluster.keys.backup_events()] {
        let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ms = newest.ids.first().and_then(|e| e.id.split('-').next()?.parse::<i64>().ok());
        assert!(
            ms.is_some_and(|ms| ms > promoted),
            "{stream} has no entry written after the failover on the new master"
        );
    }
    let beats: Vec<cctv_common::events::WorkerHeartbeat> =
        cctv_common::keys::scan_json(&mut conn, &cluster.keys.worker_pattern()).await.unwrap();
    for kind in ["scheduler", "motion", "yolo", "record"] {
        assert!(
            beats.iter().any(|hb| hb.kind == kind && hb.updated_ms > promoted),
            "no {kind} heartbeat on the new master: {beats:?}"
        );
    }
}

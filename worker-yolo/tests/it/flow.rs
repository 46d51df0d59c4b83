use std::time::Duration;

use cctv_common::events::now_ms;
use cctv_common::jobs::YoloJob;
use cctv_common::queue::Queue;
use cctv_common::shutdown::CancellationToken;
use cctv_testkit::cluster::{channel_with, wait_for, yolo_section, Cluster};
use cctv_testkit::Pusher;

/// The same footage with people on a priority and a non-priority channel: only the priority one
/// gets YOLO jobs and object events; a stale job is dropped and counted; a corrupt one fails
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_channel_gets_objects_others_none_stale_and_corrupt_jobs_dropped() {
    let channels = [channel_with(1, "priority = true"), channel_with(2, "priority = false")].concat();
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(&channels, 8, &yolo_section(tmp.path(), "max_batch = 4"));
    let clip = cluster.path("workers.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 8, 1.0, 1.0);
    let _p1 = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let p2 = Pusher::start(&clip, &cluster.nginx.live_url(), "ch2");
    p2.wait_publishing();
    cluster.start_scheduler();
    let motion_stop = CancellationToken::new();
    // In-process motion worker on its own runtime (apalis' worker future is not `Send`-general).
    let (config, stop) = (cluster.config.clone(), motion_stop.clone());
    let motion = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(worker_motion::run(config, stop))
    });
    let _yolo = cluster.spawn(env!("CARGO_BIN_EXE_worker-yolo"), &["run"]);

    let person = wait_for(Duration::from_secs(60), || async {
        cluster
            .object_events()
            .await
            .into_iter()
            .find(|e| e.channel == 1 && e.detections.iter().any(|d| d.label == "person"))
    })
    .await
    .expect("a person on the priority channel");
    eprintln!("first person: {:?}, latency {} ms, batch {}", person.detections, person.latency_ms, person.batch_size);
    assert!(person.detections.iter().all(|d| d.score >= cluster.config.yolo.min_score));
    assert_eq!((person.frame_width, person.frame_height), (480, 270), "frame at the detect stream's resolution");
    let snapshot = person.snapshot.clone().expect("a snapshot of a positive result");
    assert!(std::path::Path::new(&snapshot).is_file(), "{snapshot}");

    // Both channels are in motion all along; give the non-priority one time to (wrongly) send.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events = cluster.object_events().await;
    assert!(events.iter().all(|e| e.channel == 1), "non-priority channel got object events: {events:?}");
    let statuses = (cluster.channel_status(1).await.unwrap(), cluster.channel_status(2).await.unwrap());
    assert_eq!(statuses.1.state, cctv_common::events::ChannelState::Motion, "ch2 was in motion: {statuses:?}");
    // At most yolo.fps frames per second per channel were sent.
    let motion_ms = now_ms() - events[0].frame_ts_ms + 2000;
    let sent = cluster.yolo_stat("sent").await;
    assert!(sent as f64 <= cluster.config.yolo.fps * motion_ms as f64 / 1000.0 + 8.0, "sent {sent} in {motion_ms} ms");
    let lat: Vec<i64> = events.iter().map(|e| e.latency_ms).collect();
    eprintln!("{} object events, latency ms {:?}", events.len(), lat);

    // A job older than max_age is dropped unprocessed and counted.
    let mut q: Queue<YoloJob> = Queue::new(cluster.conn_manager().await, &cluster.keys, &cluster.config.queue);
    let jpeg = std::fs::read(cctv_testkit::media("bus.jpg")).unwrap();
    let stale = YoloJob {
        channel: 1,
        frame_ts_ms: now_ms() - 10_000,
        motion_event: "stale-probe".into(),
        motion_boxes: vec![],
        image: jpeg.clone(),
    };
    let dropped_before = cluster.yolo_stat("dropped_stale").await;
    q.push(&stale).await.unwrap();
    wait_for(Duration::from_secs(15), || async {
        (cluster.yolo_stat("dropped_stale").await > dropped_before).then_some(())
    })
    .await
    .expect("the stale job is counted as dropped");

    // A corrupt frame fails its job permanently; the worker keeps working.
    let corrupt = YoloJob {
        channel: 1,
        frame_ts_ms: now_ms(),
        motion_event: "corrupt-probe".into(),
        motion_boxes: vec![],
        image: b"\xff\xd8garbage".to_vec(),
    };
    q.push(&corrupt).await.unwrap();
    wait_for(Duration::from_secs(15), || async { (cluster.yolo_stat("failed").await >= 1).then_some(()) })
        .await
        .expect("the corrupt job is counted as failed");
    let (_, dead) = q.finished().await.unwrap();
    assert!(dead >= 1, "the corrupt job is dead, not retried");
    let seen = cluster.object_events().await.len();
    wait_for(Duration::from_secs(20), || async { (cluster.object_events().await.len() > seen).then_some(()) })
        .await
        .expect("object events keep coming after the corrupt job");
    let events = cluster.object_events().await;
    assert!(events.iter().all(|e| e.motion_event != "stale-probe" && e.motion_event != "corrupt-probe"));

    // The objects log holds what the stream holds.
    let log = std::fs::read_to_string(cluster.path("logs/objects.jsonl")).expect("objects log");
    assert!(log.lines().count() >= events.len() - 1 && log.contains("\"label\":\"person\""), "{log}");

    motion_stop.cancel();
    let _ = tokio::task::spawn_blocking(move || motion.join()).await;
}

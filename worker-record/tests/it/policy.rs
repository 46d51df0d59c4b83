use std::time::Duration;

use cctv_common::events::MotionEventKind;
use cctv_testkit::cluster::{channel_with, record_section, run_in_thread, wait_for, yolo_section, Cluster};
use cctv_testkit::Pusher;

use crate::util::{listing, Running};

/// `objects` channels record only when YOLO saw a wanted label: footage with motion but no
/// wanted object gives no backup, people footage gives one; an `off` channel never records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_policy_needs_a_wanted_object_and_off_never_records() {
    let tmp = tempfile::tempdir().unwrap();
    let channels = [
        // Wants vehicles; its footage (a factory floor) has motion and people, no vehicle.
        channel_with(1, "priority = true\nrecord = \"objects\"\nlabels = [\"bicycle\", \"car\", \"truck\"]"),
        channel_with(2, "priority = true\nrecord = \"objects\"\nlabels = [\"person\"]"),
        channel_with(3, "record = \"off\""),
    ]
    .concat();
    // The footage's quiet frame has people in view: YOLO keeps seeing them while the backup is
    // open, which holds it up to max_hold after the last motion; kept short here.
    let extra = format!(
        "{}{}[motion]\nmax_hold_secs = 8\n",
        record_section(tmp.path(), "pre_roll_secs = 3\npost_roll_secs = 3"),
        yolo_section(tmp.path(), "")
    );
    let cluster = Cluster::new(&channels, 8, &extra);
    let near = cluster.path("near.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &near, 2, 8.0, 40.0);
    let _p1 = Pusher::start(&near, &cluster.nginx.live_url(), "ch1");
    let _p2 = Pusher::start(&near, &cluster.nginx.live_url(), "ch2");
    let _p3 = Pusher::start(&near, &cluster.nginx.live_url(), "ch3");
    let run = Running::start(cluster);
    let yolo_stop = cctv_common::shutdown::CancellationToken::new();
    let yolo = run_in_thread(run.cluster.config.clone(), yolo_stop.clone(), worker_yolo::run);
    let _record = run.record_worker();

    let (_, _, file) = run.wait_backup(2, Duration::from_secs(90)).await;
    let trigger = file.trigger.clone().expect("trigger");
    assert_eq!(trigger.labels, ["person"], "{file:?}");
    for ch in [1, 3] {
        wait_for(Duration::from_secs(30), || run.motion(ch, MotionEventKind::End))
            .await
            .unwrap_or_else(|| panic!("ch{ch} had motion"));
    }
    let objects = run.cluster.object_events().await;
    let ch1: Vec<_> = objects.iter().filter(|o| o.channel == 1).collect();
    assert!(ch1.iter().any(|o| o.detections.iter().any(|d| d.label == "person")), "YOLO saw ch1's people");
    assert!(ch1.iter().all(|o| o.detections.iter().all(|d| d.label == "person")), "no vehicle on ch1: {ch1:?}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let files = run.files().await;
    assert!(files.iter().all(|f| f.channel == 2), "only ch2 is backed up: {files:?}");
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(listing(&run.backup_dir()).len(), 1);
    yolo_stop.cancel();
    let _ = yolo.join();
}

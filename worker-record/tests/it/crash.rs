use std::collections::HashSet;
use std::time::Duration;

use cctv_common::events::{BackupEventKind, MotionEventKind};
use cctv_testkit::cluster::{channel, record_section, wait_for, Cluster, FRAGMENT_CLOCK_SLACK_MS};
use cctv_testkit::Pusher;

use crate::util::{assert_playable, listing, Running};

/// kill -9 of the record worker in the middle of an event: after another worker recovers it,
/// the event is covered by playable files without gaps or duplicates, and nothing temporary is
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_record_worker_event_is_covered_without_gaps_or_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(&channel(1), 8, &record_section(tmp.path(), "pre_roll_secs = 5\npost_roll_secs = 5"));
    let clip = cluster.path("long.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 5, 10.0, 40.0);
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let run = Running::start(cluster);
    let mut first = run.record_worker();

    // Wait until the first worker is writing (its spool exists), then kill it.
    let dir = run.backup_dir();
    wait_for(Duration::from_secs(40), || async { listing(&dir).iter().any(|n| n.ends_with(".ts.part")).then_some(()) })
        .await
        .expect("the first worker starts spooling");
    tokio::time::sleep(Duration::from_secs(3)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.0.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = first.0.wait();
    let killed_at = cctv_common::events::now_ms();
    assert!(run.files().await.is_empty(), "killed before any file was finished");
    let _second = run.record_worker();

    let (start, end, _) = run.wait_backup(1, Duration::from_secs(60)).await;
    assert_eq!(start.event_id, end.event_id);
    // Let the recording finish completely (all parts).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut files = run.files().await;
    files.sort_by_key(|f| f.start_ms);
    eprintln!(
        "killed at {killed_at}; files: {:?}",
        files.iter().map(|f| (f.part, f.start_ms, f.end_ms)).collect::<Vec<_>>()
    );
    let names: HashSet<_> = files.iter().map(|f| f.file.clone().unwrap()).collect();
    assert_eq!(names.len(), files.len(), "no file reported twice: {files:?}");
    // Coverage: from ≥ pre-roll before the motion to ≥ post-roll after it, gaps ≤ one GOP (1 s).
    assert!(files[0].start_ms <= start.ts_ms - 5000, "{files:?}");
    assert!(files.last().unwrap().end_ms >= end.last_motion_ms.unwrap() + 5000 - FRAGMENT_CLOCK_SLACK_MS, "{files:?}");
    for w in files.windows(2) {
        assert!(w[1].start_ms - w[0].end_ms <= 1000, "gap between parts: {files:?}");
    }
    for f in &files {
        assert_playable(std::path::Path::new(f.file.as_deref().unwrap()));
    }
    let left = listing(&dir);
    assert!(left.iter().all(|n| !n.ends_with(".part")), "temporary files left: {left:?}");
    assert_eq!(left.len(), files.len(), "one file per reported backup: {left:?}");
    assert!(run.motion(1, MotionEventKind::Start).await.is_some());
    // Taken over, not broken: no error (such as a false "gap in the stream") was reported.
    let errors: Vec<_> =
        run.cluster.backup_events().await.into_iter().filter(|e| e.kind == BackupEventKind::Error).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

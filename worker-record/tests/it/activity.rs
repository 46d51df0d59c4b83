//! Recordings follow activity whole (issue 12): one recording per activity however its motion
//! events fall, people who stand still, activity that pauses briefly, and a prompt end once the
//! scene is as it was.

use std::time::Duration;

use cctv_common::events::{BackupEvent, MotionEventKind};
use cctv_common::recording::{Recording, RecordingState, RecordingStore};
use cctv_testkit::cluster::{channel, record_section, wait_for, Cluster};
use cctv_testkit::{activity_clip, Pusher, Segment};

use crate::util::{listing, Running};

const PRE: i64 = 5_000;
const POST: i64 = 5_000;

/// A cluster with one `motion` channel playing `segments` of the people footage; returns it
/// with the clip's time zero (wall clock, ms).
async fn start(segments: &[Segment]) -> (Running, Pusher, i64, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(&channel(1), 8, &record_section(tmp.path(), "pre_roll_secs = 5\npost_roll_secs = 5"));
    let clip = cluster.path("activity.mp4");
    activity_clip(&cctv_testkit::media("people-detection.gif"), &clip, segments);
    let pusher = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let t0 = pusher.wait_publishing();
    (Running::start(cluster), pusher, t0, tmp)
}

async fn active(run: &Running) -> Option<Recording> {
    let store = RecordingStore::new(run.cluster.conn_manager().await, run.cluster.keys.clone());
    store.active(1).await.unwrap().map(|v| v.rec)
}

/// Waits for the channel's first recording to close and every part of it to be written;
/// returns it and its files.
async fn closed_recording(run: &Running, timeout: Duration) -> (Recording, Vec<BackupEvent>) {
    wait_for(timeout, || async {
        let rec = active(run).await.filter(|r| r.state == RecordingState::Closed)?;
        let files: Vec<_> = run.files().await.into_iter().filter(|f| f.recording == rec.id).collect();
        (!files.is_empty() && files.len() == rec.parts.len()).then_some((rec, files))
    })
    .await
    .expect("the recording closes and its files are written")
}

/// Every second from `from` to `to` (ms) lies in exactly one file.
fn assert_covered_once(files: &[BackupEvent], from: i64, to: i64) {
    let mut t = from;
    while t < to {
        let n = files.iter().filter(|f| f.start_ms <= t && t < f.end_ms).count();
        assert_eq!(n, 1, "second at {} ms in {n} files: {files:?}", t - from);
        t += 1_000;
    }
}

/// Someone walks, stops perfectly still for 20 s, walks on: one recording that covers the
/// standing, never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_standing_still_between_walking_is_one_recording() {
    let (run, _p, t0, _tmp) = start(&[
        Segment::Quiet(10.0),
        Segment::Play { loops: 2, hold: 20.0 },
        Segment::Play { loops: 2, hold: 0.0 },
        Segment::Quiet(90.0),
    ])
    .await;
    let _record = run.record_worker();
    let (rec, files) = closed_recording(&run, Duration::from_secs(90)).await;
    // Activity from 10 s to 10 + 4 + 20 + 4 = 38 s of the clip.
    assert_covered_once(&files, t0 + 10_000, t0 + 38_000);
    assert_eq!(files.len(), 1, "{files:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let recordings: std::collections::HashSet<_> = run.files().await.into_iter().map(|f| f.recording).collect();
    assert_eq!(recordings.len(), 1, "one recording: {recordings:?}; {rec:?}");
}

/// Activity that pauses for 6 s (inside pre-roll + post-roll) and resumes: one file, no second
/// in two files. Then the scene is as before: the recording ends promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_resuming_within_pre_and_post_roll_is_one_file_that_ends_promptly() {
    let (run, _p, t0, _tmp) = start(&[
        Segment::Quiet(10.0),
        Segment::Play { loops: 2, hold: 0.0 },
        Segment::Quiet(6.0),
        Segment::Play { loops: 2, hold: 0.0 },
        Segment::Quiet(90.0),
    ])
    .await;
    let _record = run.record_worker();
    let (rec, files) = closed_recording(&run, Duration::from_secs(90)).await;
    assert_covered_once(&files, t0 + 10_000, t0 + 24_000);
    assert_eq!(files.len(), 1, "{files:?}");
    // Activity stops at 24 s of the clip; the scene is the one from before. The recording ends
    // within end_quiet (3 s) + post-roll + 2 s of that.
    let end = rec.end_ms.expect("a closed recording has an end");
    let limit = t0 + 24_000 + 3_000 + POST + 2_000;
    assert!(end <= limit, "ends {} ms after the activity", end - (t0 + 24_000));
    assert!(rec.start_ms <= t0 + 10_000 - PRE + 1_000, "pre-roll: {rec:?}");
    // No motion event is left outside the file.
    for m in run.cluster.motion_events().await {
        let t = if m.kind == MotionEventKind::End { m.last_motion_ms.unwrap_or(m.ts_ms) } else { m.ts_ms };
        assert!(files.iter().any(|f| f.start_ms <= t && t <= f.end_ms), "motion at {} ms not backed up", t - t0);
    }
}

/// 45 s of continuous activity, longer than every watchdog delay (end_quiet + 2 s, the status
/// TTL, the orphan grace): the channel's recording stays the same and is never closed while
/// people are in view; one file covers it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_activity_is_one_recording_never_closed_while_live() {
    let (run, _p, t0, _tmp) =
        start(&[Segment::Quiet(10.0), Segment::Play { loops: 22, hold: 0.0 }, Segment::Quiet(90.0)]).await;
    let _record = run.record_worker();
    let first = wait_for(Duration::from_secs(30), || active(&run)).await.expect("a recording opens");
    // Until the activity ends (54 s of the clip), check every half second.
    while cctv_common::events::now_ms() < t0 + 52_000 {
        let now = active(&run).await.expect("still there");
        assert_eq!(now.id, first.id, "the same recording throughout");
        assert_eq!(now.state, RecordingState::Open, "closed while live: {now:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (rec, files) = closed_recording(&run, Duration::from_secs(60)).await;
    assert_eq!(rec.id, first.id);
    assert_covered_once(&files, t0 + 10_000, t0 + 54_000);
    assert!(rec.notes.is_empty(), "no event was closed as an orphan: {:?}", rec.notes);
    assert_eq!(listing(&run.backup_dir()).len(), files.len(), "no temporary file left");
}

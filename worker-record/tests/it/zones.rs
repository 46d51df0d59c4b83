use std::time::Duration;

use cctv_common::events::{now_ms, MotionEvent, MotionEventKind};
use cctv_testkit::cluster::{channel_with, record_section, wait_for, Cluster};
use cctv_testkit::Pusher;
use redis::AsyncCommands;

use crate::util::Running;

/// The footage fills the left half; motion boxes are dilated a little, so the right zone
/// keeps a margin from the seam.
const ZONES: &str = "[[channel.zone]]\nname = \"left\"\npoints = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]\n\
                     [[channel.zone]]\nname = \"right\"\npoints = [[0.6, 0], [1, 0], [1, 1], [0.6, 1]]\n";

/// A `[[channel.schedule]]` window, every day, holding `record = "off"` from two hours before
/// now to two hours after (UTC, across midnight when it falls there).
fn off_now_schedule() -> String {
    let minute = (now_ms() / 60_000).rem_euclid(1440);
    let hhmm = |m: i64| format!("{:02}:{:02}", m.rem_euclid(1440) / 60, m.rem_euclid(1440) % 60);
    format!(
        "[[channel.schedule]]\nfrom = \"{}\"\nto = \"{}\"\nrecord = \"off\"\n",
        hhmm(minute - 120),
        hhmm(minute + 120)
    )
}

/// Real footage in the left half of the picture, the right half still. Motion events name the
/// zone the activity is in; a channel that records only for the right zone backs nothing up,
/// one that records for the left zone does; a zone entered in the middle of an event starts
/// the backup from there; a channel a schedule turns off now backs nothing up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_name_their_zones_and_record_zones_and_schedules_choose_what_is_backed_up() {
    let tmp = tempfile::tempdir().unwrap();
    let channels = [
        channel_with(1, &format!("record_zones = [\"right\"]\n{ZONES}")),
        channel_with(2, &format!("record_zones = [\"left\"]\n{ZONES}")),
        // A gate zone the footage never reaches: its backups come only from a zone entry.
        channel_with(3, &format!("record_zones = [\"gate\"]\n{ZONES}[[channel.zone]]\nname = \"gate\"\npoints = [[0.9, 0.9], [1, 0.9], [1, 1]]\n")),
        // Anywhere, but a schedule says off from two hours ago to two hours from now (UTC).
        channel_with(4, &off_now_schedule()),
    ]
    .concat();
    let extra = record_section(tmp.path(), "pre_roll_secs = 3\npost_roll_secs = 3");
    let cluster = Cluster::new(&channels, 8, &extra);
    let clip = cluster.path("clip.mp4");
    let half = cluster.path("half.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 2, 8.0, 40.0);
    cctv_testkit::left_half_clip(&clip, &half);
    let _pushers: Vec<Pusher> =
        ["ch1", "ch2", "ch3", "ch4"].iter().map(|s| Pusher::start(&half, &cluster.nginx.live_url(), s)).collect();
    let run = Running::start(cluster);
    let _record = run.record_worker();

    let (start, end, file) = run.wait_backup(2, Duration::from_secs(90)).await;
    assert_eq!(start.zones, ["left"], "{start:?}");
    assert_eq!(end.zones, ["left"], "activity stayed on the left: {end:?}");
    assert!(file.trigger.as_ref().is_some_and(|t| t.motion_event == start.event_id), "{file:?}");
    // A zone entry is news only for a zone the event had not touched yet.
    let ch2: Vec<_> = run.cluster.motion_events().await.into_iter().filter(|e| e.channel == 2).collect();
    assert!(!ch2.iter().any(|e| e.kind == MotionEventKind::Zone), "ch2 stayed in its start zone: {ch2:?}");
    let ch1_end = wait_for(Duration::from_secs(30), || run.motion(1, MotionEventKind::End)).await.expect("ch1 motion");
    assert_eq!(ch1_end.zones, ["left"], "{ch1_end:?}");

    // A zone entry of an event on ch3 (published as worker-motion would, for activity that
    // walks into the gate after it started elsewhere) opens a recording from the entry.
    let mut conn = run.cluster.conn().await;
    let entered_ms = now_ms();
    let event = |kind, ts_ms, zones: &[&str]| MotionEvent {
        event_id: "walk-in".into(),
        channel: 3,
        kind,
        ts_ms,
        started_ms: entered_ms - 2_000,
        area: 0.05,
        boxes: vec![],
        zones: zones.iter().map(|z| z.to_string()).collect(),
        last_motion_ms: (kind == MotionEventKind::End).then_some(ts_ms),
        worker: "motion-elsewhere".into(),
        job: "j".into(),
        seq: 1,
    };
    for e in [
        event(MotionEventKind::Start, entered_ms - 2_000, &["left"]),
        event(MotionEventKind::Zone, entered_ms, &["left", "gate"]),
        event(MotionEventKind::End, entered_ms + 2_000, &["left", "gate"]),
    ] {
        let _: String = conn
            .xadd(run.cluster.keys.motion_events(), "*", &[("data", serde_json::to_string(&e).unwrap())])
            .await
            .unwrap();
    }
    let walk_in =
        wait_for(Duration::from_secs(40), || async { run.files().await.into_iter().find(|f| f.channel == 3) })
            .await
            .expect("a backup of ch3 from the zone entry");
    let trigger = walk_in.trigger.clone().expect("trigger");
    assert_eq!((trigger.motion_event.as_str(), trigger.ts_ms), ("walk-in", entered_ms), "{walk_in:?}");

    // Nothing of ch1 (its activity never touched the right half) or ch4 (scheduled off,
    // though it had motion), and ch3 only from the entry.
    wait_for(Duration::from_secs(30), || run.motion(4, MotionEventKind::End)).await.expect("ch4 motion");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let files = run.files().await;
    assert!(files.iter().all(|f| f.channel != 1), "ch1 records only for the right zone: {files:?}");
    assert!(files.iter().all(|f| f.channel != 4), "ch4 is scheduled off now: {files:?}");
    assert!(
        files
            .iter()
            .filter(|f| f.channel == 3)
            .all(|f| f.trigger.as_ref().is_some_and(|t| t.motion_event == "walk-in")),
        "{files:?}"
    );
}

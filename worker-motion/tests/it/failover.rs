use std::time::{Duration, Instant};

use cctv_common::events::now_ms;
use cctv_common::recording::RecordingStore;
use cctv_testkit::Pusher;

use cctv_testkit::cluster::{channel, people_clip, wait_for, Cluster};

fn worker(cluster: &Cluster, concurrency: &str) -> cctv_testkit::KillOnDrop {
    cluster.spawn(env!("CARGO_BIN_EXE_worker-motion"), &["run", "--concurrency", concurrency])
}

/// Two batches, two workers each holding one; kill -9 one while its channel is in motion: its
/// batch resumes on the other within 15 s, no batch is ever held by both, and the activity in
/// progress stays one recording across the takeover (the lost worker's event is not cut at its
/// start: the scheduler's orphan watchdog waits for the new detector to watch the scene).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_batch_resumes_on_the_other_within_15s() {
    let channels = [channel(1), channel(2)].concat();
    let mut cluster = Cluster::new(&channels, 1, "");
    let clip = people_clip(cluster.dir.path(), "busy.mp4", 4, 1.0, 1.0);
    let _p1 = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let _p2 = Pusher::start(&clip, &cluster.nginx.live_url(), "ch2");
    cluster.start_scheduler();

    let mut first = worker(&cluster, "1");
    let first_holds = wait_for(Duration::from_secs(30), || async {
        for b in ["b0", "b1"] {
            if let Some(h) = cluster.lease_holder(b).await {
                return Some((b, h));
            }
        }
        None
    })
    .await
    .expect("the first worker takes a batch");
    let _second = worker(&cluster, "2");
    let (other_batch, second_holder) = {
        let other = if first_holds.0 == "b0" { "b1" } else { "b0" };
        let h = wait_for(Duration::from_secs(30), || async { cluster.lease_holder(other).await })
            .await
            .expect("the second worker takes the other batch");
        (other, h)
    };
    assert_ne!(first_holds.1, second_holder, "each worker holds one batch");
    let killed_channel: u32 = if first_holds.0 == "b0" { 1 } else { 2 };

    // Both work: events come from the holder of each batch only.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..10 {
        assert_eq!(cluster.lease_holder(first_holds.0).await.as_deref(), Some(first_holds.1.as_str()));
        assert_eq!(cluster.lease_holder(other_batch).await.as_deref(), Some(second_holder.as_str()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Kill while the channel's motion event has been in progress for longer than pre- and
    // post-roll together (people walk through most of the looped clip): its recording is open
    // and held by that event, and ending it at its start would cut the activity.
    let store = RecordingStore::new(cluster.conn_manager().await, cluster.keys.clone());
    let (lost_event, before) = wait_for(Duration::from_secs(60), || async {
        let status = cluster.channel_status(killed_channel).await?;
        let event = status.active_event.filter(|_| status.worker == first_holds.1)?;
        let rec = store.active(killed_channel).await.ok()??.rec;
        (rec.open_events.contains(&event) && now_ms() - rec.last_activity_ms >= 12_000).then_some((event, rec))
    })
    .await
    .expect("a motion event in progress for 12 s with its recording open");
    let killed_at = now_ms();
    let kill_instant = Instant::now();
    first.0.kill().expect("kill -9 the first worker");
    let _ = first.0.wait();

    let taken = wait_for(Duration::from_secs(20), || async {
        cluster.lease_holder(first_holds.0).await.filter(|h| *h == second_holder)
    })
    .await;
    let takeover = kill_instant.elapsed();
    assert!(taken.is_some(), "batch {} was not taken over", first_holds.0);
    let resumed = wait_for(Duration::from_secs(20), || async {
        cluster
            .motion_events()
            .await
            .into_iter()
            .find(|e| e.channel == killed_channel && e.ts_ms > killed_at && e.worker == second_holder)
    })
    .await
    .expect("motion events resume on the surviving worker");
    let resume_ms = resumed.ts_ms - killed_at;
    eprintln!("takeover: lease after {} ms, first motion event after {resume_ms} ms", takeover.as_millis());
    assert!(resume_ms <= 15_000, "motion resumed {resume_ms} ms after the kill");

    // Before the kill, the killed worker's channel had events only from it.
    let events = cluster.motion_events().await;
    assert!(
        events.iter().filter(|e| e.channel == killed_channel && e.ts_ms < killed_at).all(|e| e.worker == first_holds.1),
        "{events:?}"
    );
    let status = cluster.channel_status(killed_channel).await.expect("status");
    assert_eq!(status.worker, second_holder);

    // The lost event is closed once the new detector watched the scene; the activity stays in
    // the recording that was open at the kill, which now holds the new worker's event too.
    let after = wait_for(Duration::from_secs(40), || async {
        let rec = store.active(killed_channel).await.ok()??.rec;
        (!rec.open_events.contains(&lost_event)).then_some(rec)
    })
    .await
    .expect("the lost worker's event is closed as an orphan");
    assert_eq!(after.id, before.id, "one recording across the takeover: {after:?}");
    assert!(after.events.contains(&resumed.event_id), "the new worker's event joined it: {after:?}");
    assert!(after.end_ms.is_none_or(|end| end >= killed_at), "the recording covers the kill: {after:?}");
}

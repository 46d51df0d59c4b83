//! A job whose payload does not decode (written into Redis by anyone who reaches it) fails
//! once, for good, with its reason, and the queue's poller goes on with the next job.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cctv_common::config::Config;
use cctv_common::jobs::{Job, MotionJob, RecordJob, YoloJob};
use cctv_common::keys::Keys;
use cctv_common::queue::{self, Queue};
use cctv_common::shutdown::CancellationToken;
use cctv_testkit::Redis;
use serde::{Deserialize, Serialize};

fn config(redis: &Redis) -> Config {
    let text = format!(
        "[cluster]\nredis_url = \"{}\"\nnamespace = \"poison\"\n[[channel]]\nid = 1\nname = \"c\"\nsource = \"rtsp://127.0.0.1:1/c\"\n",
        redis.url()
    );
    Config::parse(&text).unwrap()
}

/// A payload of another shape, pushed onto the queue named `Q`.
#[derive(Debug, Serialize, Deserialize)]
struct Poison<const Q: u8> {
    nonsense: String,
}

macro_rules! poison_on {
    ($name:literal, $q:literal) => {
        impl Job for Poison<$q> {
            const QUEUE: &'static str = $name;
        }
    };
}
poison_on!("motion", 0);
poison_on!("yolo", 1);
poison_on!("record", 2);

async fn check<J: Job + std::fmt::Debug + Clone, const Q: u8>(config: &Config, good: J)
where
    Poison<Q>: Job,
{
    let keys = Keys::new(&config.cluster.namespace);
    let conn = queue::connect(&config.cluster, &config.queue).await.unwrap();
    let mut poison: Queue<Poison<Q>> = Queue::new(conn.clone(), &keys, &config.queue);
    let poison_id = poison.push(&Poison { nonsense: "x".into() }).await.unwrap();
    let mut q: Queue<J> = Queue::new(conn.clone(), &keys, &config.queue).with_poll_interval(Duration::from_millis(100));
    let good_id = q.push(&good).await.unwrap();
    let handled: Arc<Mutex<Vec<J>>> = Arc::default();
    let stop = CancellationToken::new();
    let seen = handled.clone();
    let run = q.run_worker(format!("poison-test-{}", J::QUEUE), 1, stop.clone(), move |job: J, _meta| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(job);
            Ok(())
        }
    });
    let watch = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while handled.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A poison job retried in a loop would show here as more than one failure.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut stats: Queue<J> = Queue::new(conn.clone(), &keys, &config.queue);
        let s = stats.stats().await.unwrap();
        let listed = (stats.ids("dead", 10).await.unwrap(), stats.ids("done", 10).await.unwrap());
        stop.cancel();
        (s, listed)
    };
    let (_, (s, (dead, done))) = tokio::join!(run, watch);
    // The lists the API and `cctv jobs list` show (read from the sets step by step).
    assert_eq!((dead, done), (vec![poison_id], vec![good_id]), "queue {}: the dead and done lists", J::QUEUE);
    assert_eq!(handled.lock().unwrap().len(), 1, "queue {}: the good job after the poison one was handled", J::QUEUE);
    assert_eq!(s.dead, 1, "queue {}: the poison job is dead, once: {s:?}", J::QUEUE);
}

#[tokio::test]
async fn a_job_that_does_not_decode_is_dead_once_and_the_poller_goes_on() {
    cctv_common::telemetry::init(None);
    let redis = Redis::start();
    let c = config(&redis);
    let motion: MotionJob = cctv_common::plan::plan(&c).jobs[0].clone();
    check::<MotionJob, 0>(&c, motion).await;
    let yolo =
        YoloJob { channel: 1, frame_ts_ms: 0, motion_event: "e".into(), motion_boxes: vec![], image: vec![1, 2, 3] };
    check::<YoloJob, 1>(&c, yolo).await;
    let record = RecordJob {
        recording: "ch1-e".into(),
        channel: 1,
        playlist_url: c.hls_playlist_url(&c.channels[0]),
        start_ms: 0,
        trigger: cctv_common::jobs::RecordTrigger {
            kind: cctv_common::jobs::TriggerKind::Manual,
            motion_event: "e".into(),
            ts_ms: 0,
            labels: vec![],
        },
    };
    check::<RecordJob, 2>(&c, record).await;
}

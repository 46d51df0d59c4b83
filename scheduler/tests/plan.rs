//! The scheduler against a real redis-server: one live job per batch, no duplicates on restart,
//! re-planning on a changed channel list, one leader at a time.

use cctv_common::config::Config;
use cctv_common::jobs::MotionJob;
use cctv_common::keys::Keys;
use cctv_common::queue::{self, Queue};
use cctv_testkit::Redis;
use redis::AsyncCommands;
use scheduler::Scheduler;

fn config(redis: &Redis, channels: u32) -> Config {
    let mut text =
        format!("[cluster]\nredis_url = \"{}\"\nnamespace = \"sched\"\n[scheduler]\nbatch_size = 8\n", redis.url());
    for id in 1..=channels {
        text += &format!("[[channel]]\nid = {id}\nname = \"c{id}\"\nsource = \"rtsp://127.0.0.1:1/c{id}\"\n");
    }
    let c = Config::parse(&text).unwrap();
    assert!(c.validate().is_empty());
    c
}

async fn scheduler(config: &Config) -> Scheduler {
    let conn = queue::connect(&config.cluster, &config.queue).await.unwrap();
    Scheduler::new(config, conn, Keys::new(&config.cluster.namespace))
}

async fn waiting(config: &Config) -> u64 {
    let conn = queue::connect(&config.cluster, &config.queue).await.unwrap();
    let mut q: Queue<MotionJob> = Queue::new(conn, &Keys::new(&config.cluster.namespace), &config.queue);
    q.waiting().await.unwrap()
}

#[tokio::test]
async fn restart_creates_no_duplicates_and_a_new_channel_list_replans() {
    let redis = Redis::start();
    let c20 = config(&redis, 20);

    let mut first = scheduler(&c20).await;
    assert!(first.tick().await.unwrap(), "the first scheduler leads");
    assert!(first.tick().await.unwrap());
    assert_eq!(waiting(&c20).await, 3, "20 channels in batches of 8: one job per batch");

    // A second scheduler while the first leads does nothing.
    let mut rival = scheduler(&c20).await;
    assert!(!rival.tick().await.unwrap());
    assert_eq!(waiting(&c20).await, 3);

    // Restart: the successor adopts the jobs instead of pushing new ones.
    first.resign().await;
    let mut restarted = scheduler(&c20).await;
    assert!(restarted.tick().await.unwrap());
    assert!(restarted.tick().await.unwrap());
    assert_eq!(waiting(&c20).await, 3, "restart must not duplicate jobs");

    // More channels: the batches that changed (b2: 17-20 → 17-24) and the new one (b3) get
    // jobs of their own; b0 and b1 did not change and keep theirs (their workers and readers go
    // on: adding a camera interrupts no other). The plan key names each batch's hash, so
    // workers end a changed batch's old job when they claim it.
    restarted.resign().await;
    let c30 = config(&redis, 30);
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let job_of = |b: u32| format!("sched:motion:batch:b{b}");
    let (b0_before, b2_before): (String, String) =
        (conn.hget(job_of(0), "job").await.unwrap(), conn.hget(job_of(2), "job").await.unwrap());
    let mut replanned = scheduler(&c30).await;
    assert_ne!(replanned.plan().hash, restarted.plan().hash);
    assert!(replanned.tick().await.unwrap());
    assert_eq!(waiting(&c30).await, 3 + 2, "new jobs for b2 (changed) and b3 (new) only");
    let published: String = conn.hget("sched:motion:plan", "hash").await.unwrap();
    assert_eq!(published, replanned.plan().hash);
    for (b, job) in replanned.plan().jobs.iter().enumerate() {
        let plan: String = conn.hget(job_of(b as u32), "plan").await.unwrap();
        assert_eq!(plan, job.plan);
        let published: String = conn.hget("sched:motion:plan", format!("batch:{}", job.batch)).await.unwrap();
        assert_eq!(published, job.plan);
    }
    let (b0_after, b2_after): (String, String) =
        (conn.hget(job_of(0), "job").await.unwrap(), conn.hget(job_of(2), "job").await.unwrap());
    assert_eq!(b0_before, b0_after, "an unchanged batch keeps its job");
    assert_ne!(b2_before, b2_after, "a changed batch gets a new job");
    assert!(replanned.tick().await.unwrap());
    assert_eq!(waiting(&c30).await, 5, "a second round adds nothing");
}

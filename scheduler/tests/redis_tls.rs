//! Redis over TLS (`rediss://`): a real redis-server with only a TLS port and a certificate a
//! private CA signed. With `cluster.tls_ca_file` naming the CA, the processes' one Redis
//! client ([`cctv_common::queue::client`]) connects and the job queue works (the operator's
//! `cctv` queues a record job that the library then sees waiting); without it (the system's CA
//! store does not know the CA) or over plain `redis://`, nothing connects, and the error says why.

use std::process::Command;
use std::time::Duration;

use cctv_common::config::Config;
use cctv_common::jobs::RecordJob;
use cctv_common::keys::Keys;
use cctv_common::queue::Queue;
use cctv_testkit::tls::TestCa;
use cctv_testkit::Redis;
use redis::AsyncCommands;

fn config(redis_url: &str, ca: Option<&std::path::Path>) -> String {
    let ca = ca.map(|c| format!("tls_ca_file = \"{}\"\n", c.display())).unwrap_or_default();
    format!(
        "[cluster]\nredis_url = \"{redis_url}\"\nnamespace = \"tls\"\n{ca}\
         [[channel]]\nid = 1\nname = \"Gate\"\nsource = \"rtsp://127.0.0.1:1/gate\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_clusters_ca_carries_the_queues_and_nothing_else_connects() {
    let ca = TestCa::new();
    let redis = Redis::start_tls(&ca);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let dir = tempfile::tempdir().unwrap();

    let good = Config::parse(&config(&url, Some(&ca.ca()))).unwrap();
    assert_eq!(good.validate(), vec![], "a rediss:// cluster with its CA validates");
    let mut conn =
        tokio::time::timeout(Duration::from_secs(10), cctv_common::queue::connect(&good.cluster, &good.queue))
            .await
            .expect("connecting within 10 s")
            .expect("connected over TLS with the cluster's CA");
    let () = conn.set("tls:probe", "over tls").await.unwrap();
    assert_eq!(conn.get::<_, String>("tls:probe").await.unwrap(), "over tls");

    // A real process: the operator's CLI queues a record job over TLS.
    let path = dir.path().join("cctv.toml");
    std::fs::write(&path, config(&url, Some(&ca.ca()))).unwrap();
    let out = Command::new(cctv_testkit::netns::workspace_bin("cctv"))
        .arg("--config")
        .arg(&path)
        .args(["jobs", "enqueue", "record", "--channel", "1", "--seconds", "5"])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("queued record job"), "cctv over rediss://: {said}");
    let keys = Keys::new(&good.cluster.namespace);
    let mut queue = Queue::<RecordJob>::new(conn.clone(), &keys, &good.queue);
    assert_eq!(queue.stats().await.unwrap().waiting, 1, "the CLI's job is in the queue");

    // Without the CA (the system store does not trust it): refused, with the reason.
    let untrusted = Config::parse(&config(&url, None)).unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        cctv_common::queue::connect(&untrusted.cluster, &untrusted.queue),
    )
    .await
    .expect("an answer within 10 s");
    let error = refused.expect_err("connected to a server whose certificate nobody vouched for").to_string();
    assert!(error.contains("certificate"), "the error names the certificate: {error}");
    // Plain redis:// to the TLS port: no connection either.
    let plain = Config::parse(&config(&format!("redis://127.0.0.1:{}", redis.port), None)).unwrap();
    let plain =
        tokio::time::timeout(Duration::from_secs(10), cctv_common::queue::connect(&plain.cluster, &plain.queue)).await;
    assert!(!matches!(plain, Ok(Ok(_))), "a plain connection to the TLS port worked");
    // `#insecure` (the redis crate's switch to skip the check) is refused by validation.
    let insecure = Config::parse(&config(&format!("{url}/#insecure"), None)).unwrap();
    let problems: Vec<String> = insecure.validate().iter().map(ToString::to_string).collect();
    assert!(problems.iter().any(|p| p.contains("#insecure")), "{problems:?}");
}

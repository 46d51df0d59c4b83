use std::process::Command;
use std::time::Duration;

use cctv_testkit::cluster::{channel, wait_for, Cluster};

fn health(cluster: &Cluster) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_worker-record"))
        .arg("--config")
        .arg(&cluster.config_path)
        .arg("health")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Healthy only while a record worker of this host writes its heartbeat: none before it runs,
/// yes while it runs, none again once it is gone (after the heartbeat's TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_this_hosts_record_worker_heartbeat() {
    let cluster = Cluster::new(&channel(1), 8, "");
    let (ok, said) = health(&cluster);
    assert!(!ok && said.contains("no record heartbeat"), "healthy without a worker: {said}");
    let mut worker = cluster.spawn(env!("CARGO_BIN_EXE_worker-record"), &["run"]);
    let up = wait_for(Duration::from_secs(20), || async { health(&cluster).0.then_some(()) }).await;
    assert!(up.is_some(), "not healthy with a running worker: {}", health(&cluster).1);
    worker.0.kill().unwrap();
    let _ = worker.0.wait();
    let down = wait_for(Duration::from_secs(20), || async { (!health(&cluster).0).then_some(()) }).await;
    assert!(down.is_some(), "still healthy after the worker was killed");
}

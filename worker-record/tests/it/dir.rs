use std::time::Duration;

use cctv_common::events::BackupEventKind;
use cctv_testkit::cluster::{channel, wait_for, Cluster};
use cctv_testkit::Pusher;
use redis::AsyncCommands;

use crate::util::{assert_playable, Running};

/// The backup directory cannot be created (a file is in the way; root ignores permissions, so
/// that is the portable way to make it unusable): the error names the directory in the backup
/// log and the status; once it is fixed, the event's backup is written after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_backup_dir_is_reported_and_nothing_is_lost_once_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("disk");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let backup_dir = blocker.join("backups");
    let extra = format!(
        "[record]\nbackup_dir = \"{}\"\ntimezone = \"UTC\"\npre_roll_secs = 3\npost_roll_secs = 3\n",
        backup_dir.display()
    );
    let cluster = Cluster::new(&channel(1), 8, &extra);
    let clip = cluster.path("event.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 2, 8.0, 40.0);
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let run = Running::start(cluster);
    let _record = run.record_worker();

    let err = wait_for(Duration::from_secs(60), || async {
        run.cluster.backup_events().await.into_iter().find(|e| e.kind == BackupEventKind::Error)
    })
    .await
    .expect("an error in the backup log");
    let message = err.error.clone().unwrap();
    assert!(message.contains(&backup_dir.display().to_string()) && message.contains("record.backup_dir"), "{message}");
    let mut conn = run.cluster.conn().await;
    let status: std::collections::HashMap<String, String> =
        conn.hgetall(run.cluster.keys.backup_status()).await.unwrap();
    let s: serde_json::Value = serde_json::from_str(status.values().next().expect("a status")).unwrap();
    assert_eq!(s["ok"], false, "{s}");
    assert!(s["error"].as_str().unwrap().contains(&backup_dir.display().to_string()), "{s}");
    let log = std::fs::read_to_string(run.cluster.path("logs/backup.jsonl")).unwrap();
    assert!(log.contains("\"kind\":\"error\""), "{log}");

    // Fix the disk: the retried job writes the backup from the buffer.
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir_all(&backup_dir).unwrap();
    let (_, _, file) = run.wait_backup(1, Duration::from_secs(60)).await;
    assert_playable(std::path::Path::new(file.file.as_deref().unwrap()));
    assert!(file.pre_roll_ms.unwrap() >= 3000, "{file:?}");
}

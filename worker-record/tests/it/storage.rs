use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cctv_common::events::BackupEventKind;
use cctv_testkit::cluster::{channel, wait_for, Cluster};
use cctv_testkit::Pusher;

use crate::util::Running;

/// A real, small filesystem: a size-limited tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        assert!(nix::unistd::geteuid().is_root(), "mounting a test tmpfs needs root (CI runs as root)");
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "cctv-test"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs failed");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn used_percent(&self) -> f64 {
        let s = nix::sys::statvfs::statvfs(self.path()).unwrap();
        let total = s.blocks() as f64;
        (total - s.blocks_available() as f64) * 100.0 / total
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// An old backup of `bytes`, last modified `age_secs` ago.
fn old_backup(dir: &Path, n: u32, bytes: usize, age_secs: u64) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("Channel9_2020-01-01_00-00-{n:02}.mkv"));
    std::fs::write(&path, vec![7u8; bytes])?;
    let f = std::fs::File::options().write(true).open(&path)?;
    f.set_modified(SystemTime::now() - Duration::from_secs(age_secs))?;
    Ok(path)
}

fn config(dir: &Path, storage: &str) -> String {
    format!(
        "[record]\nbackup_dir = \"{}\"\ntimezone = \"UTC\"\npre_roll_secs = 2\npost_roll_secs = 2\nmax_file_seconds = 10\n\
         [storage]\ninterval_secs = 0.5\n{storage}\n",
        dir.display()
    )
}

/// Recordings keep landing on a filling tmpfs: usage stays under the high watermark, the oldest
/// backups go first, new ones survive, and nothing outside the directory (a symlink's target)
/// is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_a_small_disk_under_the_high_watermark() {
    let disk = Tmpfs::mount("8m");
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("Channel9_precious.mkv");
    std::fs::write(&precious, vec![1u8; 100_000]).unwrap();
    std::os::unix::fs::symlink(&precious, disk.path().join("Channel9_2019-01-01_00-00-00.mkv")).unwrap();
    let old: Vec<PathBuf> =
        (0..10).map(|n| old_backup(disk.path(), n, 500_000, 86_400 - n as u64 * 60).unwrap()).collect();
    eprintln!("prefilled: {:.1} %", disk.used_percent());

    let cluster = Cluster::new(&channel(1), 8, &config(disk.path(), "high_watermark = 75\nlow_watermark = 60"));
    let clip = cluster.path("long.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 12, 3.0, 10.0);
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let run = Running::start(cluster);
    let _record = run.record_worker();

    let mut max_used: f64 = 0.0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        max_used = max_used.max(disk.used_percent());
        let deleted =
            run.cluster.backup_events().await.into_iter().filter(|e| e.kind == BackupEventKind::Deleted).count();
        let written = run.files().await.len();
        if deleted >= 2 && written >= 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no rotation: {deleted} deleted, {written} written");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = run.cluster.backup_events().await;
    let deleted: Vec<_> = events.iter().filter(|e| e.kind == BackupEventKind::Deleted).collect();
    eprintln!("max usage {max_used:.1} %, {} deleted, now {:.1} %", deleted.len(), disk.used_percent());
    assert!(max_used < 75.0 + 2.0, "usage reached {max_used:.1} % (high watermark 75 %)");
    assert!(deleted.iter().all(|d| d.error.as_deref().unwrap_or("").contains("rotation")), "{deleted:?}");
    // Oldest first: the deleted files are a prefix of the old ones by age.
    let gone: Vec<&PathBuf> = old.iter().filter(|p| !p.exists()).collect();
    assert_eq!(gone, old.iter().take(gone.len()).collect::<Vec<_>>(), "oldest deleted first");
    for f in run.files().await {
        assert!(Path::new(f.file.as_deref().unwrap()).exists(), "a new backup was deleted: {f:?}");
    }
    assert!(
        precious.exists() && std::fs::symlink_metadata(disk.path().join("Channel9_2019-01-01_00-00-00.mkv")).is_ok()
    );
}

/// A volume that other data fills past the high watermark, which deleting every backup would
/// not bring under the low one: no backup is deleted for the watermark's sake (each would be
/// an event lost for nothing), new ones land and stay, and the free space still left is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_other_data_fills_loses_no_backup_to_the_watermark() {
    let disk = Tmpfs::mount("64m");
    let old = old_backup(disk.path(), 0, 500_000, 86_400).unwrap();
    let s = nix::sys::statvfs::statvfs(disk.path()).unwrap();
    let total = s.blocks() as usize * s.fragment_size() as usize;
    let free = s.blocks_available() as usize * s.fragment_size() as usize;
    // Someone else's data: 93 % of the volume in use, about 4.5 MB left.
    std::fs::write(disk.path().join("other-data.bin"), vec![0u8; free - total * 7 / 100]).unwrap();
    eprintln!("prefilled: {:.1} %", disk.used_percent());
    assert!(disk.used_percent() > 92.0);

    let cluster = Cluster::new(
        &channel(1),
        8,
        &config(disk.path(), "high_watermark = 90\nlow_watermark = 85\nmin_free_hours = 0"),
    );
    let clip = cluster.path("event.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 1, 4.0, 30.0);
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let run = Running::start(cluster);
    let _record = run.record_worker();

    let (_, _, file) = run.wait_backup(1, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // several storage rounds (every 0.5 s)
    let deleted: Vec<_> =
        run.cluster.backup_events().await.into_iter().filter(|e| e.kind == BackupEventKind::Deleted).collect();
    assert!(deleted.is_empty(), "backups deleted though that cannot free the volume: {deleted:?}");
    assert!(old.exists(), "the old backup was deleted");
    crate::util::assert_playable(Path::new(file.file.as_deref().unwrap()));
}

/// The disk is full before rotation would start: the spool write fails with ENOSPC, which is
/// reported, triggers rotation, and the recording is retried — the backup lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_is_reported_and_the_write_retried_after_rotation() {
    let disk = Tmpfs::mount("4m");
    let mut n = 0;
    while old_backup(disk.path(), n, 256 * 1024, 86_400 - n as u64).is_ok() {
        n += 1;
    }
    // Free about 40 kB: the first fragments fit, the recording soon does not.
    std::fs::remove_file(disk.path().join(format!("Channel9_2020-01-01_00-00-{n:02}.mkv"))).unwrap();
    std::fs::remove_file(disk.path().join(format!("Channel9_2020-01-01_00-00-{:02}.mkv", n - 1))).unwrap();
    let s = nix::sys::statvfs::statvfs(disk.path()).unwrap();
    let free = s.blocks_available() as usize * s.fragment_size() as usize;
    old_backup(disk.path(), 90, free.saturating_sub(40_000), 90_000).unwrap();
    eprintln!("prefilled: {:.2} %", disk.used_percent());

    let cluster = Cluster::new(&channel(1), 8, &config(disk.path(), "high_watermark = 99.9\nlow_watermark = 50"));
    let clip = cluster.path("event.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 3, 4.0, 30.0);
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let run = Running::start(cluster);
    let _record = run.record_worker();

    let err = wait_for(Duration::from_secs(60), || async {
        run.cluster.backup_events().await.into_iter().find(|e| e.kind == BackupEventKind::Error)
    })
    .await
    .expect("the full disk is reported");
    assert!(err.error.as_deref().unwrap_or("").contains("No space left"), "{err:?}");
    let (_, _, file) = run.wait_backup(1, Duration::from_secs(90)).await;
    let deleted = run.cluster.backup_events().await.into_iter().filter(|e| e.kind == BackupEventKind::Deleted).count();
    assert!(deleted > 0, "rotation freed space");
    crate::util::assert_playable(Path::new(file.file.as_deref().unwrap()));
    assert!(file.pre_roll_ms.unwrap() >= 2000, "nothing lost: {file:?}");
}

/// `max_age_days`: backups older than their channel's limit are deleted though the disk is
/// nearly empty; younger ones, those of a channel with a longer limit of its own, and a
/// protected one are kept. `max_backup_gb`: a channel over its quota loses its oldest
/// unprotected backups, only as many as the quota needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_older_than_their_channels_limit_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400;
    let aged = |name: &str, age_secs: u64| {
        let path = dir.path().join(name);
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_secs)).unwrap();
        path
    };
    let old_default = aged("Channel9_2020-01-01_00-00-00.mkv", 3 * day);
    let young = aged("Channel9_2020-01-03_00-00-00.mkv", day);
    let old_kept_longer = aged("Channel1_2020-01-01_00-00-00.mkv", 3 * day);
    let older_than_ch1_limit = aged("Channel1_2019-01-01_00-00-00.mkv", 11 * day);
    let protected = aged("Channel9_2019-06-01_00-00-00.mkv", 30 * day);
    // Channel 2 keeps 25 kB: of its four young 10 kB backups the oldest is protected (kept,
    // counted), the next two go, the newest stays.
    let quota_protected = aged("Channel2_2026-01-01_00-00-00.mkv", 4_000);
    let quota_b = aged("Channel2_2026-01-01_00-10-00.mkv", 3_000);
    let quota_c = aged("Channel2_2026-01-01_00-20-00.mkv", 2_000);
    let quota_newest = aged("Channel2_2026-01-01_00-30-00.mkv", 1_000);

    let channels =
        [channel_with_age(1, 10.0), cctv_testkit::cluster::channel_with(2, "max_backup_gb = 0.000025")].concat();
    let extra = config(dir.path(), "").replace("[record]\n", "[record]\nmax_age_days = 2\n");
    let cluster = Cluster::new(&channels, 8, &extra);
    // Protected (as `backups protect` does): kept whatever its age.
    let mut conn = cluster.conn_manager().await;
    cctv_common::naming::set_protected(&mut conn, &cluster.keys, "Channel9_2019-06-01_00-00-00.mkv", true)
        .await
        .unwrap();
    cctv_common::naming::set_protected(&mut conn, &cluster.keys, "Channel2_2026-01-01_00-00-00.mkv", true)
        .await
        .unwrap();
    let run = Running::start(cluster);
    let _record = run.record_worker();

    wait_for(Duration::from_secs(30), || async {
        let d: Vec<_> =
            run.cluster.backup_events().await.into_iter().filter(|e| e.kind == BackupEventKind::Deleted).collect();
        (d.len() >= 4).then_some(d)
    })
    .await
    .expect("the aged and over-quota backups are deleted");
    assert!(!old_default.exists() && !older_than_ch1_limit.exists(), "aged backups still there");
    assert!(young.exists(), "a backup younger than 2 days was deleted");
    assert!(old_kept_longer.exists(), "channel 1 keeps 10 days, its 3-day-old backup was deleted");
    assert!(protected.exists(), "a protected backup was deleted");
    assert!(!quota_b.exists() && !quota_c.exists(), "channel 2 is over its quota");
    assert!(quota_protected.exists() && quota_newest.exists(), "channel 2 lost more than its quota needs");
    tokio::time::sleep(Duration::from_secs(2)).await; // a few more storage rounds: nothing else goes
    let deleted: Vec<_> =
        run.cluster.backup_events().await.into_iter().filter(|e| e.kind == BackupEventKind::Deleted).collect();
    assert_eq!(deleted.len(), 4, "{deleted:?}");
    for d in &deleted {
        let why = d.error.as_deref().unwrap_or("");
        let expected = if d.channel == 2 { "quota: channel over its 25000 bytes" } else { "retention: older than" };
        assert!(why.starts_with(expected), "{d:?}");
    }
    assert!(deleted.iter().any(|d| d.channel == 1) && deleted.iter().any(|d| d.channel == 9), "{deleted:?}");
    // The storage report says how far back the footage kept goes: the protected 30-day-old file.
    let expected = std::fs::metadata(&protected).unwrap().modified().unwrap();
    let expected_ms = expected.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let oldest = wait_for(Duration::from_secs(10), || async {
        let mut conn = run.cluster.conn().await;
        let keys: Vec<String> = redis::AsyncCommands::keys(&mut conn, run.cluster.keys.storage_pattern()).await.ok()?;
        let json: String = redis::AsyncCommands::get(&mut conn, keys.first()?).await.ok()?;
        let report: cctv_common::events::StorageReport = serde_json::from_str(&json).ok()?;
        report.oldest_backup_ms.filter(|&t| t == expected_ms)
    })
    .await;
    assert!(oldest.is_some(), "storage report's oldest backup is not the protected file's time");
}

fn channel_with_age(id: u32, days: f64) -> String {
    cctv_testkit::cluster::channel_with(id, &format!("max_age_days = {days}"))
}

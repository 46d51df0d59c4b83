//! The backup volume: measured with `sysinfo` every `storage.interval_secs`, reported to Redis
//! (`<ns>:storage:<node>`), and rotated — oldest backups deleted — when it passes
//! `storage.high_watermark` or free space would last less than `storage.min_free_hours` at the
//! current write rate: down to `storage.low_watermark` when deleting backups can get it there,
//! and always far enough that `min_free_hours` of writing fit (`rotation_need`). A volume that
//! other data fills past the watermark costs no backup for the watermark's sake.
//!
//! Only final backup files (`Channel<id>_....mkv|mp4`, regular files directly in the backup
//! directory) are ever deleted: never a symlink, never a temporary (`.…part`) file being
//! written, never anything outside the directory. One rotator per volume at a time (a Redis
//! lock named after host and mount point).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cctv_common::config::StorageConfig;
use cctv_common::events::{now_ms, BackupEvent, StorageReport};
use redis::AsyncCommands;
use tokio::sync::Notify;

/// What the monitor shares with the recorder.
#[derive(Default)]
pub struct Shared {
    /// Bytes the recorder has written (spools and remuxed files).
    pub written: AtomicU64,
    /// Rung by the recorder when a write failed for lack of space.
    pub rotate_now: Notify,
}

/// One volume as `sysinfo` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub mount_point: PathBuf,
    pub total: u64,
    pub available: u64,
}

impl Volume {
    pub fn used_percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            (self.total - self.available.min(self.total)) as f64 * 100.0 / self.total as f64
        }
    }
}

/// The volume holding `dir`: the mounted disk with the longest mount point that contains it.
pub fn volume_of(dir: &Path) -> Option<Volume> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let disks = sysinfo::Disks::new_with_refreshed_list().ok()?;
    disks.iter().filter(|d| dir.starts_with(d.mount_point())).max_by_key(|d| d.mount_point().as_os_str().len()).map(
        |d| Volume { mount_point: d.mount_point().to_owned(), total: d.total_space(), available: d.available_space() },
    )
}

/// A deletable backup: a regular file directly in the directory, named like a backup.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified: SystemTime,
}

impl BackupFile {
    /// The file's name in the directory (what protection and the API go by).
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

pub use cctv_common::naming::is_backup_name;

/// The backups in `dir`, oldest first. Symlinks and anything not named like a backup are left out.
pub fn backup_files(dir: &Path) -> Vec<BackupFile> {
    let mut files: Vec<BackupFile> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| is_backup_name(&e.file_name().to_string_lossy()))
                .filter_map(|e| {
                    // symlink_metadata: a symlink is reported as a symlink, never followed.
                    let m = std::fs::symlink_metadata(e.path()).ok()?;
                    m.file_type().is_file().then(|| BackupFile {
                        path: e.path(),
                        bytes: m.len(),
                        modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.path.cmp(&b.path)));
    files
}

/// When the backups cannot give `min_free_hours` of room, rotation keeps this much writing's
/// worth free, seconds.
const JUST_IN_TIME_SECS: f64 = 600.0;

/// What rotation must free now: `bytes` more free space on the volume, for `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationNeed {
    pub reason: String,
    pub bytes: u64,
}

/// What rotation must free now. `rate`: bytes per second being written; `deletable`: bytes
/// the backups in the directory hold that rotation may delete (unprotected); `forced`: a write
/// just failed for lack of space.
///
/// Rotation exists to keep room for new backups, so it deletes only what brings that room
/// back: down to the low watermark when the backups can get it there, and enough that
/// `min_free_hours` of writing fit (at most the band below the low watermark; only the next
/// `JUST_IN_TIME_SECS` when the backups cannot give more). A volume filled by other data, which deleting every backup
/// would not bring under the watermark, costs no backup for the watermark's sake (`Err` names
/// it): deleting them all would lose every event and not free the disk; the hours rule and a
/// failed write still make room.
pub fn rotation_need(
    v: &Volume,
    rate: f64,
    cfg: &StorageConfig,
    deletable: u64,
    forced: bool,
) -> (Option<RotationNeed>, Option<String>) {
    let mut need: Option<RotationNeed> = None;
    let mut take = |reason: String, bytes: u64| {
        if need.as_ref().is_none_or(|n| bytes > n.bytes) {
            need = Some(RotationNeed { reason, bytes });
        }
    };
    let mut unreachable = None;
    let used = v.used_percent();
    if used >= cfg.high_watermark {
        let low = (cfg.low_watermark / 100.0 * v.total as f64) as u64;
        let bytes = (v.total - v.available.min(v.total)).saturating_sub(low);
        if bytes <= deletable {
            take(format!("volume {used:.1} % full (high watermark {} %)", cfg.high_watermark), bytes);
        } else {
            unreachable = Some(format!(
                "volume {} is {used:.1} % full (high watermark {} %) but its backups hold only {deletable} of the \
                 {bytes} bytes needed to reach the low watermark: other data fills it; no backup deleted for the \
                 watermark (free space is kept for {} h of writing)",
                v.mount_point.display(),
                cfg.high_watermark,
                cfg.min_free_hours
            ));
        }
    }
    if rate > 0.0 && cfg.min_free_hours > 0.0 {
        // An hour's worth may not fit a small volume: the watermark band is room enough then.
        let band = ((100.0 - cfg.low_watermark) / 100.0 * v.total as f64) as u64;
        let reserve = ((cfg.min_free_hours * 3600.0 * rate) as u64).min(band);
        if v.available < reserve {
            let hours = v.available as f64 / rate / 3600.0;
            let mut bytes = reserve - v.available;
            if bytes > deletable {
                // The backups cannot give that much: free just in time, the next minutes of
                // writing, so the oldest go one by one as new ones come, not all at once.
                bytes = ((JUST_IN_TIME_SECS * rate) as u64).saturating_sub(v.available);
            }
            if bytes > 0 {
                let reason = format!(
                    "{hours:.2} h of free space left at {:.0} kB/s (minimum {} h)",
                    rate / 1000.0,
                    cfg.min_free_hours
                );
                take(reason, bytes);
            }
        }
    }
    if forced {
        // At least the oldest backup: the write that failed needs room whatever the figures say.
        take("a backup write failed: no space left on the volume".to_string(), 1);
    }
    (need, unreachable)
}

/// How long backups are kept, by channel (`record.max_age_days` and each channel's own).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    /// For channels without their own (and files of channels no longer configured).
    pub default: Option<Duration>,
    pub channels: std::collections::HashMap<u32, Option<Duration>>,
    /// Per channel: the most bytes of its backups this directory keeps (`max_backup_gb`).
    pub quotas: std::collections::HashMap<u32, u64>,
}

impl Retention {
    pub fn from_config(c: &cctv_common::config::Config) -> Self {
        let channels = c.channels.iter().map(|ch| (ch.id, c.max_backup_age(ch.id))).collect();
        let quotas =
            c.channels.iter().filter_map(|ch| Some((ch.id, (ch.max_backup_gb? * 1e9).round() as u64))).collect();
        Self { default: c.default_max_backup_age(), channels, quotas }
    }

    /// Whether anything is limited besides the disk (age or quota).
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.channels.values().all(Option::is_none) && self.quotas.is_empty()
    }

    /// The backups among `files` (oldest first) to delete so each channel with a quota keeps
    /// at most its quota: its oldest first, never a `protected` one (those still count).
    pub fn over_quota<'a>(
        &self,
        files: &'a [BackupFile],
        protected: &std::collections::HashSet<String>,
    ) -> Vec<(&'a BackupFile, u64)> {
        let mut out = Vec::new();
        for (&channel, &quota) in &self.quotas {
            let mine: Vec<(&BackupFile, bool)> = files
                .iter()
                .filter_map(|f| {
                    let name = f.path.file_name()?.to_string_lossy();
                    (cctv_common::naming::backup_channel(&name)? == channel)
                        .then(|| (f, protected.contains(name.as_ref())))
                })
                .collect();
            let mut total: u64 = mine.iter().map(|(f, _)| f.bytes).sum();
            for (f, is_protected) in mine {
                if total <= quota {
                    break;
                }
                if !is_protected {
                    total -= f.bytes;
                    out.push((f, quota));
                }
            }
        }
        out
    }

    fn max_age(&self, channel: u32) -> Option<Duration> {
        self.channels.get(&channel).copied().unwrap_or(self.default)
    }

    /// The backups among `files` older than their channel's limit at `now`, with that limit.
    pub fn expired<'a>(&self, files: &'a [BackupFile], now: SystemTime) -> Vec<(&'a BackupFile, Duration)> {
        files
            .iter()
            .filter_map(|f| {
                let name = f.path.file_name()?.to_string_lossy();
                let max = self.max_age(cctv_common::naming::backup_channel(&name)?)?;
                (now.duration_since(f.modified).unwrap_or_default() > max).then_some((f, max))
            })
            .collect()
    }
}

/// The monitor of one record worker's backup directory.
pub struct Monitor {
    pub conn: redis::aio::ConnectionManager,
    pub keys: cctv_common::keys::Keys,
    pub worker: String,
    pub dir: PathBuf,
    pub cfg: StorageConfig,
    pub retention: Retention,
    /// Protected backup names as last read from Redis (`<ns>:backups:protected`): never deleted.
    pub protected: std::sync::Mutex<std::collections::HashSet<String>>,
    pub shared: Arc<Shared>,
    pub log: Arc<cctv_common::catlog::CategoryLog>,
    /// Why the watermark cannot be met by deleting backups, while that lasts (said once).
    pub unreachable: std::sync::Mutex<Option<String>>,
}

impl Monitor {
    fn node(&self) -> String {
        format!("{}:{}", cctv_common::host_name(), self.dir.display())
    }

    /// Measures, reports and rotates until `shutdown`.
    pub async fn run(self, shutdown: cctv_common::shutdown::CancellationToken) {
        let every = Duration::from_secs_f64(self.cfg.interval_secs);
        let mut last = (Instant::now(), self.shared.written.load(Ordering::Relaxed));
        let mut rate = 0.0f64;
        let mut forced = false;
        loop {
            let now = Instant::now();
            let written = self.shared.written.load(Ordering::Relaxed);
            let dt = now.duration_since(last.0).as_secs_f64();
            if dt > 0.5 {
                let current = written.saturating_sub(last.1) as f64 / dt;
                // Smoothed over about a minute; the first sample is taken as is.
                rate = if rate == 0.0 { current } else { rate * 0.8 + current * 0.2 };
                last = (now, written);
            }
            if let Err(e) = self.round(rate, std::mem::take(&mut forced)).await {
                tracing::warn!(dir = %self.dir.display(), error = %e, "storage check failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = self.shared.rotate_now.notified() => {
                    tracing::info!("a write failed for lack of space; rotating now");
                    forced = true;
                }
            }
        }
    }

    /// `forced`: a write just failed for lack of space, whatever the figures say.
    async fn round(&self, rate: f64, forced: bool) -> anyhow::Result<()> {
        // Retention can wait for Redis; rotation (a filling disk) cannot, and goes by the
        // protected names last read.
        match cctv_common::naming::protected_backups(&mut self.conn.clone(), &self.keys).await {
            Ok(names) => {
                *self.protected.lock().unwrap_or_else(|e| e.into_inner()) = names;
                self.expire().await?;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the protected backups; retention by age waits"),
        }
        let dir = self.dir.clone();
        let Some(volume) = tokio::task::spawn_blocking(move || volume_of(&dir)).await? else {
            anyhow::bail!("no mounted volume found for {} (does it exist?)", self.dir.display());
        };
        let dir = self.dir.clone();
        let files = tokio::task::spawn_blocking(move || backup_files(&dir)).await?;
        let deletable = {
            let protected = self.protected.lock().unwrap_or_else(|e| e.into_inner());
            files.iter().filter(|f| !protected.contains(&BackupFile::name(f))).map(|f| f.bytes).sum()
        };
        let (need, unreachable) = rotation_need(&volume, rate, &self.cfg, deletable, forced);
        // Said once per spell, not every round.
        let was =
            std::mem::replace(&mut *self.unreachable.lock().unwrap_or_else(|e| e.into_inner()), unreachable.clone());
        match (&unreachable, was.is_some()) {
            (Some(why), false) => tracing::warn!(dir = %self.dir.display(), "{why}"),
            (None, true) => tracing::info!(dir = %self.dir.display(), "backup volume: the watermark can be met again"),
            _ => {}
        }
        if let Some(need) = need {
            self.rotate(&volume, files, &need).await?;
        }
        let dir = self.dir.clone();
        let (volume, files, h264_copies) =
            tokio::task::spawn_blocking(move || (volume_of(&dir), backup_files(&dir), h264_copy_bytes(&dir))).await?;
        let volume = volume.unwrap_or(volume_of_fallback());
        let report = StorageReport {
            node: self.node(),
            host: cctv_common::host_name(),
            worker: self.worker.clone(),
            backup_dir: self.dir.display().to_string(),
            mount_point: volume.mount_point.display().to_string(),
            total_bytes: volume.total,
            used_bytes: volume.total.saturating_sub(volume.available),
            free_bytes: volume.available,
            used_percent: volume.used_percent(),
            backup_bytes: files.iter().map(|f| f.bytes).sum(),
            backup_files: files.len() as u64,
            h264_copy_bytes: h264_copies,
            oldest_backup_ms: files
                .first()
                .and_then(|f| f.modified.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_millis() as i64)),
            write_rate_bps: rate,
            hours_left: (rate > 0.0).then(|| volume.available as f64 / rate / 3600.0),
            high_watermark: self.cfg.high_watermark,
            low_watermark: self.cfg.low_watermark,
            updated_ms: now_ms(),
        };
        let ttl = (self.cfg.interval_secs * 3.0).max(10.0) as u64;
        let _: () =
            self.conn.clone().set_ex(self.keys.storage(&self.node()), serde_json::to_string(&report)?, ttl).await?;
        Ok(())
    }

    /// Deletes the oldest backups (`files`, oldest first) until `need.bytes` are freed,
    /// holding the volume's lock.
    async fn rotate(&self, volume: &Volume, files: Vec<BackupFile>, need: &RotationNeed) -> anyhow::Result<()> {
        let lock_name = format!("{}:{}", cctv_common::host_name(), volume.mount_point.display());
        let lock = self.keys.storage_lock(&lock_name);
        let mut conn = self.conn.clone();
        let lock = cctv_common::lease::Lease::new(lock, &self.worker, 60_000);
        let got = lock.take_if_free(&mut conn).await?;
        if !got {
            tracing::debug!(volume = %volume.mount_point.display(), "another worker is rotating this volume");
            return Ok(());
        }
        self.rotate_locked(files, need).await;
        let _ = lock.release(&mut conn).await;
        Ok(())
    }

    async fn rotate_locked(&self, files: Vec<BackupFile>, need: &RotationNeed) {
        let reason = &need.reason;
        let (mut deleted, mut freed) = (0, 0u64);
        for f in files {
            if freed >= need.bytes {
                break;
            }
            let why = format!("rotation: {reason}; deleted oldest backup ({} bytes)", f.bytes);
            if self.delete(&f, why).await {
                deleted += 1;
                freed += f.bytes;
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, freed, reason = %reason, "rotation done");
        }
    }
}

impl Monitor {
    /// Deletes the backups older than their channel's `max_age_days`, then the oldest of each
    /// channel over its `max_backup_gb`.
    async fn expire(&self) -> anyhow::Result<()> {
        if self.retention.is_empty() {
            return Ok(());
        }
        let dir = self.dir.clone();
        let files = tokio::task::spawn_blocking(move || backup_files(&dir)).await?;
        for (f, max) in self.retention.expired(&files, SystemTime::now()) {
            let days = max.as_secs_f64() / 86_400.0;
            self.delete(f, format!("retention: older than {days} days; deleted ({} bytes)", f.bytes)).await;
        }
        if self.retention.quotas.is_empty() {
            return Ok(());
        }
        let dir = self.dir.clone();
        let files = tokio::task::spawn_blocking(move || backup_files(&dir)).await?;
        let protected = self.protected.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (f, quota) in self.retention.over_quota(&files, &protected) {
            let why = format!("quota: channel over its {quota} bytes; deleted oldest backup ({} bytes)", f.bytes);
            self.delete(f, why).await;
        }
        Ok(())
    }

    /// Deletes one backup of the directory and reports it (`why` in the event's `error`).
    /// Returns whether it was deleted; a file another worker deleted first is not an error.
    async fn delete(&self, f: &BackupFile, why: String) -> bool {
        let name = f.name();
        if self.protected.lock().unwrap_or_else(|e| e.into_inner()).contains(&name) {
            return false;
        }
        // Never outside the directory: the file's parent must be the directory itself.
        let inside =
            f.path.parent().and_then(|p| std::fs::canonicalize(p).ok()) == std::fs::canonicalize(&self.dir).ok();
        if !inside {
            return false;
        }
        let path = f.path.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(e) => {
                tracing::warn!(file = %f.path.display(), error = %e, "cannot delete old backup");
                return false;
            }
        }
        // Its H.264 copy (made for a browser) goes with it.
        let copy = cctv_common::naming::h264_copy_path(&self.dir, &name);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(copy)).await;
        tracing::info!(file = %f.path.display(), reason = %why, "backup deleted");
        let event = BackupEvent::deleted(&f.path, f.bytes, why, &self.worker);
        crate::publish_with(&self.conn, &self.keys, &self.log, &event).await;
        true
    }
}

/// Bytes of the backups' H.264 copies (see [`cctv_common::naming::h264_copy_path`]).
fn h264_copy_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join(cctv_common::naming::H264_COPY_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok().filter(|m| m.is_file()).map(|m| m.len()))
        .sum()
}

fn volume_of_fallback() -> Volume {
    Volume { mount_point: PathBuf::from("?"), total: 0, available: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_other_files_are_never_listed_and_order_is_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("Channel1_precious.mkv"), b"keep").unwrap();
        std::os::unix::fs::symlink(outside.path().join("Channel1_precious.mkv"), dir.path().join("Channel1_link.mkv"))
            .unwrap();
        std::fs::write(dir.path().join("Channel2_b.mkv"), b"bb").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(dir.path().join("Channel1_a.mkv"), b"a").unwrap();
        std::fs::write(dir.path().join(".Channel1_c.mkv.r1.part"), b"c").unwrap();
        let names: Vec<String> = backup_files(dir.path())
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["Channel2_b.mkv", "Channel1_a.mkv"]);
    }

    #[test]
    fn retention_deletes_by_each_channels_own_age_limit() {
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let file = |name: &str, age: Duration| BackupFile { path: PathBuf::from(name), bytes: 1, modified: now - age };
        let files = [
            file("Channel1_a.mkv", day * 3),  // ch1 keeps 10 days
            file("Channel2_a.mkv", day * 3),  // ch2: the default, 2 days
            file("Channel2_b.mkv", day / 2),  // young
            file("Channel9_a.mkv", day * 3),  // not configured any more: the default
            file("Channel3_a.mkv", day * 30), // ch3 has no limit at all
        ];
        let retention = Retention {
            default: Some(day * 2),
            channels: [(1, Some(day * 10)), (2, Some(day * 2)), (3, None)].into_iter().collect(),
            quotas: Default::default(),
        };
        let expired: Vec<_> = retention.expired(&files, now).iter().map(|(f, _)| f.path.clone()).collect();
        assert_eq!(expired, [PathBuf::from("Channel2_a.mkv"), PathBuf::from("Channel9_a.mkv")]);
        assert!(Retention::default().expired(&files, now).is_empty(), "no limit configured: nothing by age");
    }

    #[test]
    fn a_channel_over_its_quota_loses_its_oldest_unprotected_backups_only() {
        let now = SystemTime::now();
        let file = |name: &str, age: u64, bytes: u64| BackupFile {
            path: PathBuf::from(name),
            bytes,
            modified: now - Duration::from_secs(age),
        };
        let files = [
            file("Channel1_a.mkv", 50, 10),  // oldest, protected: kept, still counted
            file("Channel2_a.mkv", 45, 100), // no quota
            file("Channel1_b.mkv", 40, 10),
            file("Channel1_c.mkv", 30, 10),
            file("Channel1_d.mkv", 20, 10),
        ];
        let retention = Retention { quotas: [(1, 25)].into_iter().collect(), ..Retention::default() };
        let protected = ["Channel1_a.mkv".to_string()].into_iter().collect();
        let over: Vec<_> = retention.over_quota(&files, &protected).iter().map(|(f, _)| f.path.clone()).collect();
        assert_eq!(over, [PathBuf::from("Channel1_b.mkv"), PathBuf::from("Channel1_c.mkv")]);
        assert!(!retention.is_empty());
        let roomy = Retention { quotas: [(1, 40)].into_iter().collect(), ..Retention::default() };
        assert!(roomy.over_quota(&files, &protected).is_empty(), "exactly at its quota: nothing to delete");
    }

    #[test]
    fn rotation_frees_what_brings_room_back_and_never_empties_a_volume_others_fill() {
        let cfg = StorageConfig { high_watermark: 90.0, low_watermark: 85.0, min_free_hours: 1.0, interval_secs: 5.0 };
        let v = |avail| Volume { mount_point: "/".into(), total: 1000, available: avail };
        // 95 % full, backups hold 300 bytes: down to the low watermark (85 %), 100 bytes.
        let (need, warn) = rotation_need(&v(50), 0.0, &cfg, 300, false);
        assert_eq!(need.map(|n| n.bytes), Some(100));
        assert!(warn.is_none());
        assert_eq!(rotation_need(&v(500), 0.0, &cfg, 300, false), (None, None), "half empty: nothing");
        // 95 % full of other data, backups hold 60 bytes: deleting them all would not reach
        // 85 %, so none goes for the watermark, and it is said why.
        let (need, warn) = rotation_need(&v(50), 0.0, &cfg, 60, false);
        assert!(need.is_none(), "{need:?}");
        assert!(warn.unwrap().contains("other data fills it"));
        // The hours rule: 140 bytes free at 0.1 byte/s, an hour is 360, capped at the band
        // under the low watermark (150): 10 more.
        let (need, _) = rotation_need(&v(140), 0.1, &cfg, 160, false);
        assert_eq!(need.as_ref().map(|n| n.bytes), Some(10));
        assert!(need.unwrap().reason.contains("h of free space"));
        // When the backups cannot give the reserve: only the next 10 minutes' worth (60 - 50).
        let (need, _) = rotation_need(&v(50), 0.1, &cfg, 60, false);
        assert_eq!(need.map(|n| n.bytes), Some(10));
        // A big volume: 500 kB free at 1 kB/s is 8 minutes, an hour is 3.6 MB: 3.1 MB more.
        let big = Volume { mount_point: "/".into(), total: 100_000_000, available: 500_000 };
        let (need, _) = rotation_need(&big, 1000.0, &cfg, 10_000_000, false);
        assert_eq!(need.map(|n| n.bytes), Some(3_100_000));
        // A failed write: at least the oldest backup, whatever the figures say.
        let (need, _) = rotation_need(&v(500), 0.0, &cfg, 300, true);
        assert!(need.is_some_and(|n| n.bytes >= 1 && n.reason.contains("write failed")));
    }
}

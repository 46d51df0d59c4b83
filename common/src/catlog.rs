//! Category logs (`motion`, `objects`, `backup`, `system`): one JSON object per line in
//! `<logs.dir>/<category>.jsonl`, beside the same entries on the category's Redis stream.
//!
//! Appends are whole lines, flushed, so a crash loses at most the line being written. The file
//! is rotated when it passes `logs.max_file_mb` or the (UTC) day changes: it is renamed to
//! `<category>-<YYYY-MM-DD>T<HHMMSS>.jsonl` and at most `logs.keep_files` rotated files are kept.
//! Several processes may append to one category file (several workers on one host); a process
//! that finds the file already rotated by another simply reopens it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::LogsConfig;

#[derive(Debug, thiserror::Error)]
#[error("cannot open {category} log {path}: {error}")]
pub struct CategoryLogError {
    pub category: String,
    pub path: PathBuf,
    pub error: std::io::Error,
}

struct Current {
    file: File,
    /// UTC day the file was opened (days since epoch).
    day: i64,
}

/// An append-only JSON-lines log of one category.
pub struct CategoryLog {
    category: String,
    dir: PathBuf,
    path: PathBuf,
    max_bytes: u64,
    keep_files: usize,
    current: Mutex<Current>,
}

fn today() -> i64 {
    crate::events::now_ms().div_euclid(86_400_000)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

impl CategoryLog {
    /// Opens (creating it and its directory) `<logs.dir>/<category>.jsonl`.
    pub fn open(logs: &LogsConfig, category: &str) -> Result<Self, CategoryLogError> {
        let dir = logs.dir.clone();
        let path = dir.join(format!("{category}.jsonl"));
        let err = |error| CategoryLogError { category: category.to_owned(), path: path.clone(), error };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let file = open_append(&path).map_err(err)?;
        Ok(Self {
            category: category.to_owned(),
            dir,
            path: path.clone(),
            max_bytes: (logs.max_file_mb * 1024.0 * 1024.0) as u64,
            keep_files: logs.keep_files,
            current: Mutex::new(Current { file, day: today() }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line; a failed write is logged, never fatal (the Redis stream has the entry).
    pub fn append(&self, json_line: &str) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.rotate_if_due(&mut cur, json_line.len() as u64 + 1) {
            tracing::warn!(category = %self.category, path = %self.path.display(), error = %e, "cannot rotate log");
        }
        if let Err(e) = writeln!(cur.file, "{json_line}") {
            tracing::error!(category = %self.category, path = %self.path.display(), error = %e, "cannot write log");
        }
    }

    fn rotate_if_due(&self, cur: &mut Current, adding: u64) -> std::io::Result<()> {
        let ours = cur.file.metadata()?;
        match std::fs::metadata(&self.path) {
            // Another process rotated it (or it was deleted): follow to the new file.
            Ok(m) if m.ino() != ours.ino() || m.dev() != ours.dev() => {
                cur.file = open_append(&self.path)?;
                return Ok(());
            }
            Err(_) => {
                cur.file = open_append(&self.path)?;
                return Ok(());
            }
            Ok(_) => {}
        }
        let day = today();
        if ours.len() + adding <= self.max_bytes && day == cur.day {
            return Ok(());
        }
        if ours.len() > 0 {
            let stamp = jiff::Timestamp::from_millisecond(crate::events::now_ms())
                .map(|t| t.strftime("%Y-%m-%dT%H%M%S%.3f").to_string())
                .unwrap_or_default();
            std::fs::rename(&self.path, self.dir.join(format!("{}-{stamp}.jsonl", self.category)))?;
        }
        cur.file = open_append(&self.path)?;
        cur.day = day;
        self.prune();
        Ok(())
    }

    /// Deletes the oldest rotated files beyond `keep_files`.
    fn prune(&self) {
        let prefix = format!("{}-", self.category);
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .map(|n| n.to_string_lossy())
                            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".jsonl"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Names carry the rotation time: name order is age order.
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.keep_files);
        for old in rotated.into_iter().take(excess) {
            let _ = std::fs::remove_file(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_keeps_the_newest_files_and_loses_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogsConfig { dir: dir.path().to_owned(), max_file_mb: 0.001, keep_files: 3 };
        let log = CategoryLog::open(&logs, "motion").unwrap();
        // Two logs on one file, as two workers on one host: both rotate, neither loses lines.
        let other = CategoryLog::open(&logs, "motion").unwrap();
        for i in 0..60 {
            let l = if i % 2 == 0 { &log } else { &other };
            l.append(&format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(40)));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names.contains(&"motion.jsonl".to_string()), "{names:?}");
        assert_eq!(names.iter().filter(|n| n.starts_with("motion-")).count(), 3, "keep_files: {names:?}");
        for n in &names {
            let size = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(size <= 1100, "{n} is {size} bytes");
        }
        // The newest line is in the current file.
        assert!(std::fs::read_to_string(dir.path().join("motion.jsonl")).unwrap().contains("\"n\":59"));
    }
}

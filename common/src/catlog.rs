//! Category logs (`motion`, `objects`, `backup`, `system`): one JSON object per line in
//! `<logs.dir>/<category>.jsonl`, beside the same entries on the category's Redis stream.
//!
//! Appends are whole lines, flushed, so a crash loses at most the line being written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
#[error("cannot open {category} log {path}: {error}")]
pub struct CategoryLogError {
    pub category: String,
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// An append-only JSON-lines log of one category.
pub struct CategoryLog {
    category: String,
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl CategoryLog {
    /// Opens (creating it and its directory) `<dir>/<category>.jsonl`.
    pub fn open(dir: &Path, category: &str) -> Result<Self, CategoryLogError> {
        let path = dir.join(format!("{category}.jsonl"));
        let err = |error| CategoryLogError { category: category.to_owned(), path: path.clone(), error };
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(err)?;
        Ok(Self { category: category.to_owned(), path, file: Mutex::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line; a failed write is logged, never fatal (the Redis stream has the entry).
    pub fn append(&self, json_line: &str) {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(f, "{json_line}") {
            tracing::error!(category = %self.category, path = %self.path.display(), error = %e, "cannot write log");
        }
    }
}

//! Annotated snapshots of positive YOLO results: `<dir>/ch<id>/ch<id>_<frame ms>.jpg`, at most
//! `keep` per channel (the oldest are deleted). Written under a temporary name and renamed, so
//! a reader never sees half a JPEG.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cctv_common::events::Detection;
use opencv::core::{Mat, Point, Rect, Scalar, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot directory {path} (yolo.snapshot_dir): {error}")]
    Dir { path: PathBuf, error: std::io::Error },
    #[error("writing snapshot {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
    #[error("drawing snapshot: {0}")]
    Draw(#[from] opencv::Error),
}

pub struct SnapshotStore {
    dir: PathBuf,
    keep: usize,
    /// Per channel, the files kept, oldest first.
    files: Mutex<HashMap<u32, VecDeque<PathBuf>>>,
}

impl SnapshotStore {
    /// Creates the directory if needed and takes stock of the snapshots already there.
    pub fn open(dir: &Path, keep: usize) -> Result<Self, SnapshotError> {
        let err = |error| SnapshotError::Dir { path: dir.to_owned(), error };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut files: HashMap<u32, VecDeque<PathBuf>> = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(err)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(channel) = name.strip_prefix("ch").and_then(|n| n.parse::<u32>().ok()) else { continue };
            let mut existing: Vec<PathBuf> = std::fs::read_dir(entry.path())
                .map_err(err)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
                .collect();
            // Names carry the frame time in ms with a fixed width: name order is time order.
            existing.sort();
            files.insert(channel, existing.into());
        }
        Ok(Self { dir: dir.to_owned(), keep: keep.max(1), files: Mutex::new(files) })
    }

    /// Draws the detections on the frame and writes it; returns the file's path.
    pub fn save(
        &self,
        channel: u32,
        frame_ts_ms: i64,
        frame: &Mat,
        detections: &[Detection],
    ) -> Result<PathBuf, SnapshotError> {
        let mut img = frame.try_clone()?;
        let green = Scalar::new(0.0, 220.0, 0.0, 0.0);
        let thickness = (img.cols().max(img.rows()) / 400).max(1);
        for d in detections {
            let [x1, y1, x2, y2] = d.bbox.map(|v| v.round() as i32);
            imgproc::rectangle(
                &mut img,
                Rect::new(x1, y1, (x2 - x1).max(1), (y2 - y1).max(1)),
                green,
                thickness,
                imgproc::LINE_8,
                0,
            )?;
            let text = format!("{} {:.2}", d.label, d.score);
            let at = Point::new(x1, (y1 - 4).max(12));
            imgproc::put_text(
                &mut img,
                &text,
                at,
                imgproc::FONT_HERSHEY_SIMPLEX,
                0.5 * thickness as f64,
                green,
                thickness,
                imgproc::LINE_8,
                false,
            )?;
        }
        let mut jpeg = Vector::<u8>::new();
        imgcodecs::imencode(".jpg", &img, &mut jpeg, &Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, 85]))?;

        let channel_dir = self.dir.join(format!("ch{channel}"));
        std::fs::create_dir_all(&channel_dir)
            .map_err(|error| SnapshotError::Dir { path: channel_dir.clone(), error })?;
        let path = channel_dir.join(format!("ch{channel}_{frame_ts_ms:013}.jpg"));
        let part = path.with_extension("jpg.part");
        let write_err = |error| SnapshotError::Write { path: path.clone(), error };
        std::fs::write(&part, jpeg.as_slice()).map_err(write_err)?;
        std::fs::rename(&part, &path).map_err(write_err)?;

        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let kept = files.entry(channel).or_default();
        kept.push_back(path.clone());
        while kept.len() > self.keep {
            if let Some(old) = kept.pop_front() {
                if let Err(e) = std::fs::remove_file(&old) {
                    tracing::warn!(path = %old.display(), error = %e, "cannot delete old snapshot");
                }
            }
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_keep_per_channel_newest_survive() {
        let dir = tempfile::tempdir().unwrap();
        let frame = Mat::new_rows_cols_with_default(48, 64, opencv::core::CV_8UC3, Scalar::all(50.0)).unwrap();
        let det = vec![Detection { label: "person".into(), score: 0.9, bbox: [4.0, 4.0, 30.0, 40.0], zones: vec![] }];
        let store = SnapshotStore::open(dir.path(), 3).unwrap();
        for t in 1..=5 {
            store.save(7, t * 1000, &frame, &det).unwrap();
        }
        store.save(8, 1000, &frame, &det).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("ch7"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ch7_0000000003000.jpg", "ch7_0000000004000.jpg", "ch7_0000000005000.jpg"]);
        assert!(dir.path().join("ch8/ch8_0000000001000.jpg").is_file());
        // A restarted worker counts what is already there.
        let store = SnapshotStore::open(dir.path(), 3).unwrap();
        store.save(7, 6000, &frame, &det).unwrap();
        assert!(!dir.path().join("ch7/ch7_0000000003000.jpg").exists());
        let jpeg = std::fs::read(dir.path().join("ch7/ch7_0000000006000.jpg")).unwrap();
        assert!(crate::model::decode_image(&jpeg).is_ok(), "snapshot is a readable JPEG");
    }
}

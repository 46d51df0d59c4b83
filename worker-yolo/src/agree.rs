//! `worker-yolo agree`: how far a candidate way of running YOLO — two frames per input
//! (`yolo.pair_frames`), another model file (the int8 one), or both — agrees with the
//! reference: the configured model, one frame per input. Each video is cut into 640x360 frames
//! (a camera sub-stream) at `fps`; every frame runs through the reference and the candidate
//! (paired with the next frame when the candidate pairs). A reference box is *kept* when the
//! candidate has a box of the same label over it (IoU ≥ 0.5); a second is *kept* when every
//! label the reference saw in it is seen by the candidate too (what decides a backup); a
//! *person second* when the reference saw a person in it and the candidate did too.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cctv_common::config::YoloConfig;
use cctv_common::events::Detection;
use opencv::core::Mat;
use opencv::prelude::*;
use serde::Serialize;

use crate::model::{iou, YoloModel};

const WIDTH: i32 = 640;
const HEIGHT: i32 = 360;

/// One video's agreement.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Agreement {
    pub source: String,
    pub frames: usize,
    pub reference_boxes: usize,
    pub kept_boxes: usize,
    /// Boxes the paired run saw that the reference did not.
    pub extra_boxes: usize,
    /// Seconds in which the reference saw a wanted label, and those the paired run saw too.
    pub reference_seconds: usize,
    pub kept_seconds: usize,
    /// Seconds in which the reference saw a person, and those the candidate saw one in too.
    pub person_seconds: usize,
    pub kept_person_seconds: usize,
}

/// The way of running YOLO that is compared with the reference.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// Another model file (e.g. the int8 one); `None`: the configured model.
    pub model: Option<PathBuf>,
    /// Two frames per input.
    pub paired: bool,
}

impl Agreement {
    pub fn box_recall(&self) -> f64 {
        percent(self.kept_boxes, self.reference_boxes)
    }
    pub fn second_recall(&self) -> f64 {
        percent(self.kept_seconds, self.reference_seconds)
    }
    pub fn person_second_recall(&self) -> f64 {
        percent(self.kept_person_seconds, self.person_seconds)
    }
    fn add(&mut self, o: &Agreement) {
        self.frames += o.frames;
        self.reference_boxes += o.reference_boxes;
        self.kept_boxes += o.kept_boxes;
        self.extra_boxes += o.extra_boxes;
        self.reference_seconds += o.reference_seconds;
        self.kept_seconds += o.kept_seconds;
        self.person_seconds += o.person_seconds;
        self.kept_person_seconds += o.kept_person_seconds;
    }
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        100.0
    } else {
        (1000.0 * part as f64 / whole as f64).round() / 10.0
    }
}

/// How many of `reference`'s boxes `other` has (same label, IoU ≥ 0.5, each used once).
pub fn matched(reference: &[Detection], other: &[Detection]) -> usize {
    let mut used = vec![false; other.len()];
    reference
        .iter()
        .filter(|r| {
            let best = other
                .iter()
                .enumerate()
                .filter(|(i, o)| !used[*i] && o.label == r.label && iou(&o.bbox, &r.bbox) >= 0.5)
                .max_by(|a, b| iou(&a.1.bbox, &r.bbox).total_cmp(&iou(&b.1.bbox, &r.bbox)));
            best.map(|(i, _)| used[i] = true).is_some()
        })
        .count()
}

/// `fps` frames per second of `video` at 640x360, BGR.
fn frames(video: &Path, fps: f64) -> anyhow::Result<Vec<Mat>> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
        .arg(video)
        .args(["-vf", &format!("fps={fps},scale={WIDTH}:{HEIGHT}"), "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"])
        .output()
        .with_context(|| format!("running ffmpeg on {}", video.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "ffmpeg could not read {}: {}",
        video.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let size = (WIDTH * HEIGHT * 3) as usize;
    out.stdout
        .chunks_exact(size)
        .map(|bytes| {
            let m = Mat::new_rows_cols_with_data(HEIGHT, WIDTH * 3, bytes)?.try_clone()?;
            Ok(m.reshape(3, HEIGHT)?.try_clone()?)
        })
        .collect()
}

/// Agreement of the candidate with the reference (the configured model, one frame per input) on
/// each video, and over all of them (last).
pub fn agree(cfg: &YoloConfig, videos: &[PathBuf], fps: f64, candidate: &Candidate) -> anyhow::Result<Vec<Agreement>> {
    anyhow::ensure!(!videos.is_empty(), "name at least one video");
    let mut single = YoloModel::load(&YoloConfig { pair_frames: false, ..cfg.clone() })?;
    let model = candidate.model.clone().unwrap_or_else(|| cfg.model.clone());
    // The candidate names classes as the reference does, wherever its model file lies.
    let class_names = Some(cfg.class_names_path());
    let mut other = YoloModel::load(&YoloConfig { pair_frames: candidate.paired, model, class_names, ..cfg.clone() })?;
    let mut all = Agreement { source: "all".into(), ..Agreement::default() };
    let mut out = Vec::new();
    for video in videos {
        let frames = frames(video, fps)?;
        let mut a = Agreement { source: video.display().to_string(), frames: frames.len(), ..Agreement::default() };
        let mut seconds: std::collections::BTreeMap<usize, (Vec<String>, Vec<String>)> = Default::default();
        for (k, pair) in frames.chunks(2).enumerate() {
            let refs: Vec<&Mat> = pair.iter().collect();
            let reference: Vec<Vec<Detection>> =
                refs.iter().map(|f| single.detect(&[*f]).map(|mut d| d.remove(0))).collect::<Result<_, _>>()?;
            let together = if candidate.paired {
                other.detect(&refs)?
            } else {
                refs.iter().map(|f| other.detect(&[*f]).map(|mut d| d.remove(0))).collect::<Result<_, _>>()?
            };
            for (j, (r, p)) in reference.iter().zip(&together).enumerate() {
                let kept = matched(r, p);
                a.reference_boxes += r.len();
                a.kept_boxes += kept;
                a.extra_boxes += p.len() - matched(p, r).min(p.len());
                let second = ((2 * k + j) as f64 / fps) as usize;
                let entry = seconds.entry(second).or_default();
                entry.0.extend(r.iter().map(|d| d.label.clone()));
                entry.1.extend(p.iter().map(|d| d.label.clone()));
            }
        }
        for (seen, candidate_seen) in seconds.values() {
            if !seen.is_empty() {
                a.reference_seconds += 1;
                a.kept_seconds += usize::from(seen.iter().all(|l| candidate_seen.contains(l)));
            }
            let person = |labels: &Vec<String>| labels.iter().any(|l| l == "person");
            if person(seen) {
                a.person_seconds += 1;
                a.kept_person_seconds += usize::from(person(candidate_seen));
            }
        }
        all.add(&a);
        out.push(a);
    }
    out.push(all);
    Ok(out)
}

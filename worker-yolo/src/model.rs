//! YOLOv5n through ONNX Runtime: letterbox pre-processing, batched inference, decoding and
//! per-class NMS, boxes mapped back to the frame.
//!
//! Tensor layout (see `../shared/models/README.md`): input `images` float32 `[N,3,S,S]`, RGB
//! 0..1, letterboxed with grey 114; output `[N,R,5+C]` = cx, cy, w, h (input pixels),
//! objectness, C class scores. Score = objectness × class score of the best class.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cctv_common::config::YoloConfig;
use cctv_common::events::Detection;
use opencv::core::{Mat, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

/// Environment variable naming the ONNX Runtime library when `yolo.ort_library` is not set.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// Grey of the letterbox padding, as in YOLOv5's training.
const PAD_GREY: f32 = 114.0 / 255.0;
/// Boxes kept per frame before NMS (YOLOv5's `max_nms`).
const MAX_CANDIDATES: usize = 30_000;
/// Detections kept per frame after NMS.
const MAX_DETECTIONS: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "no ONNX Runtime library configured: set yolo.ort_library or {ORT_DYLIB_ENV} to libonnxruntime.so.1.32.0 \
         (from the onnxruntime==1.32.0 wheel: `deploy/install-deps.sh` puts it in .ort/)"
    )]
    NoLibrary,
    #[error(
        "ONNX Runtime library {path} (yolo.ort_library / {ORT_DYLIB_ENV}) does not exist: \
         get it from the onnxruntime==1.32.0 wheel (`deploy/install-deps.sh` puts it in .ort/)"
    )]
    LibraryMissing { path: PathBuf },
    #[error("cannot load ONNX Runtime library {path}: {message}")]
    LibraryLoad { path: PathBuf, message: String },
    #[error(
        "YOLO model {path} (yolo.model) does not exist: see README, 'The object detection model', \
         for where to get yolov5n.onnx"
    )]
    ModelMissing { path: PathBuf },
    #[error("cannot load YOLO model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },
    #[error("cannot read class names {path} (yolo.class_names): {message}")]
    ClassNames { path: PathBuf, message: String },
    #[error("yolo.classes: {label:?} is not a class of {path}")]
    UnknownClass { label: String, path: PathBuf },
    #[error("model {path} output has shape {shape:?}; expected [N, rows, 5 + {classes}]")]
    OutputShape { path: PathBuf, shape: Vec<i64>, classes: usize },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("image: {0}")]
    Image(String),
}

impl From<opencv::Error> for ModelError {
    fn from(e: opencv::Error) -> Self {
        ModelError::Image(e.to_string())
    }
}

/// ONNX Runtime allows one environment per process; every model shares it.
static ENVIRONMENT: Mutex<Option<ort::environment::Environment>> = Mutex::new(None);

/// The process' ONNX Runtime environment, loading the library on first use.
pub fn environment(library: Option<&Path>) -> Result<ort::environment::Environment, ModelError> {
    let mut env = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = env.as_ref() {
        return Ok(e.clone());
    }
    let path = library
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(ORT_DYLIB_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
        .ok_or(ModelError::NoLibrary)?;
    if !path.is_file() {
        return Err(ModelError::LibraryMissing { path });
    }
    let load_err = |message: String| ModelError::LibraryLoad { path: path.clone(), message };
    let built = ort::init_from(&path)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("cctv-yolo")
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    *env = Some(built.clone());
    Ok(built)
}

/// Where a frame sits inside the model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Input pixels per frame pixel, across; `scale_y` down (equal but in a shared input).
    pub scale: f32,
    pub scale_y: f32,
    pub pad_x: f32,
    pub pad_y: f32,
    pub width: u32,
    pub height: u32,
}

/// Frames at least this wide for their height (16:9 is 1.78) may share one model input, one
/// above the other, each scaled into a `size`×`size/2` half ([`pairing`]).
pub const PAIR_MIN_ASPECT: f32 = 1.6;
/// How far (input pixels) a box of a paired frame may reach over the seam into the other
/// frame's half and still count: the model's box edges overshoot a picture's edge by a few
/// pixels. A box that reaches further spans two different pictures and cannot be real.
pub const SEAM_SLACK: f32 = 8.0;

/// Width and height of each frame, as [`pairing`] takes them.
fn frame_sizes(frames: &[&Mat]) -> Vec<(i32, i32)> {
    frames.iter().map(|f| (f.cols(), f.rows())).collect()
}

/// The rows of the model input one frame is put in: all of them, or one half.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    pub top: u32,
    pub height: u32,
}

/// Which frames (by index, `sizes` as width×height) share a model input: with `pair`, wide
/// frames two by two in order; any other frame, and a wide one left over, alone.
pub fn pairing(sizes: &[(i32, i32)], pair: bool) -> Vec<Vec<usize>> {
    let wide = |(w, h): (i32, i32)| h > 0 && w as f32 / h as f32 >= PAIR_MIN_ASPECT;
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut waiting: Option<usize> = None;
    for (i, &size) in sizes.iter().enumerate() {
        if !(pair && wide(size)) {
            groups.push(vec![i]);
        } else if let Some(first) = waiting.take() {
            groups.push(vec![first, i]);
        } else {
            waiting = Some(i);
        }
    }
    groups.extend(waiting.map(|i| vec![i]));
    groups
}

/// Scales `frame` (BGR) to fit `size`×`size` keeping its aspect ratio, pads with grey 114 as
/// YOLOv5 does (padding split around the image), and writes it RGB, 0..1, channel-planar into
/// `out` (`3 * size * size` floats).
pub fn letterbox(frame: &Mat, size: u32, out: &mut [f32]) -> Result<Letterbox, ModelError> {
    letterbox_into(frame, size, Slot { top: 0, height: size }, out)
}

/// [`letterbox`] into the rows of `slot` only (the rest of `out` is left as it is); the
/// returned mapping includes the slot's offset, so boxes map back to this frame.
pub fn letterbox_into(frame: &Mat, size: u32, slot: Slot, out: &mut [f32]) -> Result<Letterbox, ModelError> {
    letterbox_in(frame, Input { width: size, height: size }, slot, out)
}

/// Width and height of one model input (a model that takes any size: [`rect_input`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    pub width: u32,
    pub height: u32,
}

/// The smallest input (multiples of 32, the model's largest stride) that holds `width`×`height`
/// scaled to fit `size`×`size`, as YOLOv5's rectangular inference does: a 640x360 frame runs
/// as 640x384 (12 rows of grey above and below) instead of 640x640, 0.6 of the pixels, at the
/// same scale, so the model sees the same picture.
pub fn rect_input(width: i32, height: i32, size: u32) -> Input {
    if width <= 0 || height <= 0 {
        return Input { width: size, height: size };
    }
    let r = (size as f32 / width as f32).min(size as f32 / height as f32);
    let up32 = |v: f32| (((v.round() as u32).div_ceil(32)) * 32).clamp(32, size);
    Input { width: up32(width as f32 * r), height: up32(height as f32 * r) }
}

/// [`letterbox_into`] for an input of any size: `out` holds `3 * width * height` floats.
pub fn letterbox_in(frame: &Mat, input: Input, slot: Slot, out: &mut [f32]) -> Result<Letterbox, ModelError> {
    let (w, h) = (frame.cols(), frame.rows());
    if w <= 0 || h <= 0 || frame.channels() != 3 {
        return Err(ModelError::Image(format!("frame is {w}x{h} with {} channels; need colour", frame.channels())));
    }
    let (in_w, in_h) = (input.width, input.height);
    let stride = in_w as usize;
    assert_eq!(out.len(), 3 * stride * in_h as usize, "letterbox output buffer");
    assert!(slot.top + slot.height <= in_h, "slot inside the input");
    let r = (slot.height as f32 / h as f32).min(in_w as f32 / w as f32);
    let half = slot.height < in_h;
    // A half of a shared input is filled edge to edge (a 16:9 frame squeezed 11 % in height):
    // letterboxed instead, a person half in view at the frame's left or right edge met grey
    // padding there and was lost (room scenes of the quality harness: 1 of 70 boxes kept).
    let (new_w, new_h) = if half {
        (in_w as i32, slot.height as i32)
    } else {
        ((w as f32 * r).round() as i32, (h as f32 * r).round() as i32)
    };
    let (rx, ry) = if half { (in_w as f32 / w as f32, slot.height as f32 / h as f32) } else { (r, r) };
    let (dw, dh) = ((in_w as f32 - new_w as f32) / 2.0, (slot.height as f32 - new_h as f32) / 2.0);
    let (left, top) = ((dw - 0.1).round() as usize, (dh - 0.1).round() as usize + slot.top as usize);
    let continuous;
    let frame = if frame.is_continuous() {
        frame
    } else {
        continuous = frame.try_clone()?;
        &continuous
    };
    let plane = stride * in_h as usize;
    let letterbox =
        Letterbox { scale: rx, scale_y: ry, pad_x: left as f32, pad_y: top as f32, width: w as u32, height: h as u32 };
    if half && new_w == w && new_h < h {
        shrink_rows_into(frame, new_h as usize, top, stride, plane, out)?;
        return Ok(letterbox);
    }
    let src = frame.data_bytes()?;
    let (resized_owned, shrunk);
    let bytes = if (new_w, new_h) == (w, h) {
        src
    } else if half {
        // A half of a shared input whose width changes too: OpenCV's area resize. The
        // Pillow-exact resize below matters only where detections must match the reference
        // result; here it cost several milliseconds a frame, eating into what pairing saves.
        let mut out = Mat::default();
        opencv::imgproc::resize(
            frame,
            &mut out,
            opencv::core::Size::new(new_w, new_h),
            0.0,
            0.0,
            opencv::imgproc::INTER_AREA,
        )?;
        shrunk = out;
        shrunk.data_bytes()?
    } else {
        resized_owned = resize_antialias(src, w as usize, h as usize, new_w as usize, new_h as usize);
        &resized_owned[..]
    };
    let rows = slot.top as usize * stride..(slot.top + slot.height) as usize * stride;
    for c in 0..3 {
        out[c * plane + rows.start..c * plane + rows.end].fill(PAD_GREY);
    }
    let (nw, nh) = (new_w as usize, new_h as usize);
    for y in 0..nh {
        let row = &bytes[y * nw * 3..(y + 1) * nw * 3];
        let base = (y + top) * stride + left;
        for (x, px) in row.chunks_exact(3).enumerate() {
            // BGR in, RGB planes out.
            out[base + x] = px[2] as f32 / 255.0;
            out[plane + base + x] = px[1] as f32 / 255.0;
            out[2 * plane + base + x] = px[0] as f32 / 255.0;
        }
    }
    Ok(letterbox)
}

/// A half of a shared input when only the height shrinks (a 640-wide sub-stream into a 640x320
/// half), written straight into the input's planes from `top` on: OpenCV splits the picture
/// into its B, G and R planes, and each output row is the area-weighted sum of the picture
/// rows it covers (two or three), what `INTER_AREA` computes, kept in float instead of rounded
/// to bytes. Contiguous rows of one plane at a time, which the compiler vectorizes: OpenCV's
/// area resize of the packed picture took 0.7 ms of the 1.1 ms a half cost.
fn shrink_rows_into(
    frame: &Mat,
    new_h: usize,
    top: usize,
    stride: usize,
    plane: usize,
    out: &mut [f32],
) -> Result<(), ModelError> {
    let (w, h) = (frame.cols() as usize, frame.rows() as usize);
    let mut bgr = Vector::<Mat>::new();
    opencv::core::split(frame, &mut bgr)?;
    let scale = h as f64 / new_h as f64;
    // Per output row: (first picture row, weights over 0..255 bytes giving 0..1).
    let taps: Vec<(usize, Vec<f32>)> = (0..new_h)
        .map(|y| {
            let (from, to) = (y as f64 * scale, (y + 1) as f64 * scale);
            let first = from.floor() as usize;
            let weights = (first..(to.ceil() as usize).min(h))
                .map(|i| ((to.min(i as f64 + 1.0) - from.max(i as f64)).max(0.0) / scale / 255.0) as f32)
                .collect();
            (first, weights)
        })
        .collect();
    for (c, channel) in bgr.iter().enumerate() {
        let bytes = channel.data_bytes()?;
        // BGR in, RGB planes out.
        let dst = &mut out[(2 - c) * plane..(3 - c) * plane];
        for (y, (first, weights)) in taps.iter().enumerate() {
            let row_out = &mut dst[(top + y) * stride..(top + y) * stride + w];
            let row_in = |k: usize| &bytes[(first + k) * w..(first + k + 1) * w];
            // The first row sets, the others add: one pass less over the output.
            row_out.iter_mut().zip(row_in(0)).for_each(|(o, &v)| *o = weights[0] * v as f32);
            for (k, &wt) in weights.iter().enumerate().skip(1) {
                row_out.iter_mut().zip(row_in(k)).for_each(|(o, &v)| *o += wt * v as f32);
            }
        }
    }
    Ok(())
}

/// Pillow's bilinear resize (a triangle filter whose support widens when reducing, so it
/// antialiases), on packed 3-channel bytes, two separable passes each rounded to bytes as Pillow
/// does. The reference detections were produced with it; OpenCV's `INTER_LINEAR` misses them by
/// up to 0.03 in score.
pub fn resize_antialias(src: &[u8], w: usize, h: usize, new_w: usize, new_h: usize) -> Vec<u8> {
    /// Per output index: first input index and the normalised weights.
    fn taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f32>)> {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        (0..out_size)
            .map(|o| {
                let center = (o as f64 + 0.5) * scale;
                let lo = (center - filter_scale + 0.5).floor().max(0.0) as usize;
                let hi = ((center + filter_scale + 0.5).floor() as usize).min(in_size);
                let weights: Vec<f64> =
                    (lo..hi).map(|i| (1.0 - ((i as f64 - center + 0.5) / filter_scale).abs()).max(0.0)).collect();
                let total: f64 = weights.iter().sum();
                (lo, weights.iter().map(|v| (if total > 0.0 { v / total } else { 0.0 }) as f32).collect())
            })
            .collect()
    }
    let to_byte = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    let horizontal = taps(w, new_w);
    let mut rows = vec![0u8; new_w * h * 3];
    for y in 0..h {
        let line = &src[y * w * 3..(y + 1) * w * 3];
        for (x, (lo, weights)) in horizontal.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, wt) in weights.iter().enumerate() {
                let px = &line[(lo + k) * 3..(lo + k) * 3 + 3];
                acc[0] += wt * px[0] as f32;
                acc[1] += wt * px[1] as f32;
                acc[2] += wt * px[2] as f32;
            }
            let at = (y * new_w + x) * 3;
            rows[at..at + 3].copy_from_slice(&acc.map(to_byte));
        }
    }
    let vertical = taps(h, new_h);
    let mut out = vec![0u8; new_w * new_h * 3];
    let stride = new_w * 3;
    for (y, (lo, weights)) in vertical.iter().enumerate() {
        let mut acc = vec![0f32; stride];
        for (k, wt) in weights.iter().enumerate() {
            let line = &rows[(lo + k) * stride..(lo + k + 1) * stride];
            acc.iter_mut().zip(line).for_each(|(a, &v)| *a += wt * v as f32);
        }
        out[y * stride..(y + 1) * stride].iter_mut().zip(acc).for_each(|(o, a)| *o = to_byte(a));
    }
    out
}

/// Decodes a JPEG (or any image OpenCV reads) into a BGR frame; a corrupt image is an error.
pub fn decode_image(bytes: &[u8]) -> Result<Mat, ModelError> {
    if bytes.is_empty() {
        return Err(ModelError::Image("empty image".into()));
    }
    let buf = Vector::<u8>::from_slice(bytes);
    let mat = imgcodecs::imdecode(&buf, imgcodecs::IMREAD_COLOR)?;
    if mat.empty() || mat.cols() < 8 || mat.rows() < 8 {
        return Err(ModelError::Image(format!("not a decodable image ({} bytes)", bytes.len())));
    }
    Ok(mat)
}

/// Post-processing settings.
#[derive(Debug, Clone)]
pub struct Decoding {
    pub min_score: f32,
    pub iou_threshold: f32,
    /// Per class id: reported or not.
    pub wanted: Vec<bool>,
    pub names: Vec<String>,
}

/// Turns one frame's output rows into detections in frame pixels, best first.
pub fn decode(rows: &[f32], stride: usize, lb: &Letterbox, d: &Decoding) -> Vec<Detection> {
    decode_slot(rows, stride, lb, d, None)
}

/// Whether a box (input pixels, centre `cy`, height `h`) is the frame's in `slot` of an input of
/// `size` rows: its centre in the slot, and over an inner edge (a seam) by at most
/// [`SEAM_SLACK`].
pub fn in_slot(cy: f32, h: f32, slot: Slot, size: u32) -> bool {
    let (top, bottom) = (slot.top as f32, (slot.top + slot.height) as f32);
    let over_top = slot.top > 0 && cy - h / 2.0 < top - SEAM_SLACK;
    let over_bottom = slot.top + slot.height < size && cy + h / 2.0 > bottom + SEAM_SLACK;
    (top..bottom).contains(&cy) && !over_top && !over_bottom
}

/// [`decode`] for a frame sharing its input: only the boxes of its slot ([`in_slot`]).
pub fn decode_slot(
    rows: &[f32],
    stride: usize,
    lb: &Letterbox,
    d: &Decoding,
    slot: Option<(Slot, u32)>,
) -> Vec<Detection> {
    let classes = stride - 5;
    let mut candidates: Vec<(usize, f32, [f32; 4])> = Vec::new();
    for row in rows.chunks_exact(stride) {
        let objectness = row[4];
        if objectness < d.min_score {
            continue;
        }
        let (class, class_score) = row[5..5 + classes]
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::MIN), |best, (i, s)| if s > best.1 { (i, s) } else { best });
        let score = objectness * class_score;
        if score < d.min_score || !d.wanted.get(class).copied().unwrap_or(false) {
            continue;
        }
        let (cx, cy, w, h) = (row[0], row[1], row[2], row[3]);
        if slot.is_some_and(|(slot, size)| !in_slot(cy, h, slot, size)) {
            continue;
        }
        candidates.push((class, score, [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]));
    }
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
    candidates.truncate(MAX_CANDIDATES);
    let kept = nms(&candidates, d.iou_threshold);
    kept.into_iter()
        .take(MAX_DETECTIONS)
        .map(|i| {
            let (class, score, b) = candidates[i];
            let map = |v: f32, pad: f32, scale: f32, limit: u32| ((v - pad) / scale).clamp(0.0, limit as f32);
            Detection {
                label: d.names.get(class).cloned().unwrap_or_else(|| format!("class{class}")),
                score,
                bbox: [
                    map(b[0], lb.pad_x, lb.scale, lb.width),
                    map(b[1], lb.pad_y, lb.scale_y, lb.height),
                    map(b[2], lb.pad_x, lb.scale, lb.width),
                    map(b[3], lb.pad_y, lb.scale_y, lb.height),
                ],
                zones: Vec::new(),
            }
        })
        .collect()
}

/// Ultralytics' names for the classes the darknet `coco.names` spells differently.
fn alias(name: &str) -> Option<&'static str> {
    match name {
        "motorbike" => Some("motorcycle"),
        "aeroplane" => Some("airplane"),
        "sofa" => Some("couch"),
        "tvmonitor" => Some("tv"),
        _ => None,
    }
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Greedy NMS within each class over candidates sorted best first; returns kept indices.
pub fn nms(candidates: &[(usize, f32, [f32; 4])], iou_threshold: f32) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    for (i, (class, _, bbox)) in candidates.iter().enumerate() {
        let suppressed = kept.iter().any(|&k| candidates[k].0 == *class && iou(&candidates[k].2, bbox) > iou_threshold);
        if !suppressed {
            kept.push(i);
        }
    }
    kept
}

/// A loaded model with its settings.
pub struct YoloModel {
    session: Session,
    input_name: String,
    input_size: u32,
    decoding: Decoding,
    model_path: PathBuf,
    /// Reused input buffer (`N * 3 * S * S`).
    input: Vec<f32>,
    /// `yolo.pair_frames`: two wide frames per input.
    pair_frames: bool,
    /// The model's input height and width are free ([`Self::any_size`]).
    any_size: bool,
}

impl YoloModel {
    /// Loads the ONNX Runtime library, the class names and the model, checking every path first
    /// so a missing file is named in the error.
    pub fn load(cfg: &YoloConfig) -> Result<Self, ModelError> {
        let env = environment(cfg.ort_library.as_deref())?;
        if !cfg.model.is_file() {
            return Err(ModelError::ModelMissing { path: cfg.model.clone() });
        }
        let names_path = cfg.class_names_path();
        let names: Vec<String> = std::fs::read_to_string(&names_path)
            .map_err(|e| ModelError::ClassNames { path: names_path.clone(), message: e.to_string() })?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let mut wanted = vec![false; names.len()];
        for label in &cfg.classes {
            let i = names
                .iter()
                .position(|n| n == label || alias(n) == Some(label.as_str()))
                .ok_or_else(|| ModelError::UnknownClass { label: label.clone(), path: names_path.clone() })?;
            wanted[i] = true;
        }
        let load_err = |message: String| ModelError::ModelLoad { path: cfg.model.clone(), message };
        let session = Session::builder(&env)
            .map_err(|e| load_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_threads(cfg.intra_threads)
            .map_err(|e| load_err(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_op_spinning(cfg.spin_wait)
            .map_err(|e| load_err(e.to_string()))?
            .with_inter_op_spinning(cfg.spin_wait)
            .map_err(|e| load_err(e.to_string()))?
            .commit_from_file(&cfg.model)
            .map_err(|e| load_err(e.to_string()))?;
        let input = session.inputs().first().ok_or_else(|| load_err("model has no input".into()))?;
        let input_name = input.name().to_string();
        // [N, 3, H, W]: ONNX Runtime says -1 for a dimension the model leaves free.
        let any_size = match input.dtype() {
            ort::value::ValueType::Tensor { shape, .. } => shape.len() == 4 && shape[2] < 0 && shape[3] < 0,
            _ => false,
        };
        Ok(Self {
            session,
            input_name,
            input_size: cfg.input_size,
            decoding: Decoding { min_score: cfg.min_score, iou_threshold: cfg.iou_threshold, wanted, names },
            model_path: cfg.model.clone(),
            input: Vec::new(),
            pair_frames: cfg.pair_frames,
            any_size,
        })
    }

    pub fn class_names(&self) -> &[String] {
        &self.decoding.names
    }

    /// Which of `frames` [`Self::detect`] puts in a shared input (two to an input).
    pub fn shares_input(&self, frames: &[&Mat]) -> Vec<bool> {
        let mut shared = vec![false; frames.len()];
        pairing(&frame_sizes(frames), self.pair_frames)
            .iter()
            .filter(|g| g.len() > 1)
            .flatten()
            .for_each(|&i| shared[i] = true);
        shared
    }

    /// The input a frame running alone gets: a model that takes any size ([`Self::any_size`])
    /// runs it at [`rect_input`]; a fixed-size one at `input_size` square.
    pub fn lone_input(&self, frame: &Mat) -> Input {
        if self.any_size {
            rect_input(frame.cols(), frame.rows(), self.input_size)
        } else {
            Input { width: self.input_size, height: self.input_size }
        }
    }

    /// Whether the model takes inputs of any height and width (a `--dynamic` export, or
    /// `deploy/yolo/any_size.sh`'s rewrite of a fixed one): then a frame alone runs at
    /// [`rect_input`], not in a padded square.
    pub fn any_size(&self) -> bool {
        self.any_size
    }

    /// Runs the frames (BGR) through the model; detections per frame, in order. With
    /// `yolo.pair_frames`, wide frames go two to an input ([`pairing`]); a frame alone gets
    /// [`Self::lone_input`]. Inputs of one size run as one batch.
    pub fn detect(&mut self, frames: &[&Mat]) -> Result<Vec<Vec<Detection>>, ModelError> {
        let size = self.input_size;
        let groups = pairing(&frame_sizes(frames), self.pair_frames);
        let square = Input { width: size, height: size };
        // Groups by input size, in order of first appearance: one model run each.
        let mut runs: Vec<(Input, Vec<usize>)> = Vec::new();
        for (g, members) in groups.iter().enumerate() {
            let input = if let [one] = members[..] { self.lone_input(frames[one]) } else { square };
            match runs.iter_mut().find(|(i, _)| *i == input) {
                Some((_, gs)) => gs.push(g),
                None => runs.push((input, vec![g])),
            }
        }
        let mut out = vec![Vec::new(); frames.len()];
        for (input, run) in runs {
            let per = 3 * input.width as usize * input.height as usize;
            self.input.resize(per * run.len(), 0.0);
            // (frame, input in this run, mapping, slot when it shares the input)
            let mut placed = Vec::with_capacity(run.len() * 2);
            for (k, &g) in run.iter().enumerate() {
                let buf = &mut self.input[k * per..(k + 1) * per];
                let members = &groups[g];
                if let [one] = members[..] {
                    let whole = Slot { top: 0, height: input.height };
                    placed.push((one, k, letterbox_in(frames[one], input, whole, buf)?, None));
                    continue;
                }
                for (half, &i) in members.iter().enumerate() {
                    let slot = Slot { top: half as u32 * size / 2, height: size / 2 };
                    placed.push((i, k, letterbox_in(frames[i], input, slot, buf)?, Some((slot, size))));
                }
            }
            let shape = [run.len(), 3, input.height as usize, input.width as usize];
            let tensor = TensorRef::from_array_view((shape, &self.input[..per * run.len()]))
                .map_err(|e| ModelError::Inference(e.to_string()))?;
            let outputs = self
                .session
                .run(ort::inputs![self.input_name.as_str() => tensor])
                .map_err(|e| ModelError::Inference(e.to_string()))?;
            let (shape, data) =
                outputs[0].try_extract_tensor::<f32>().map_err(|e| ModelError::Inference(e.to_string()))?;
            let dims: Vec<i64> = shape.iter().copied().collect();
            let classes = self.decoding.names.len();
            if dims.len() != 3 || dims[0] as usize != run.len() || dims[2] as usize != 5 + classes {
                return Err(ModelError::OutputShape { path: self.model_path.clone(), shape: dims, classes });
            }
            let (rows, stride) = (dims[1] as usize, dims[2] as usize);
            for (i, k, lb, slot) in placed {
                let rows_of_input = &data[k * rows * stride..(k + 1) * rows * stride];
                out[i] = decode_slot(rows_of_input, stride, &lb, &self.decoding, slot);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_frames_pair_in_order_and_the_rest_run_alone() {
        let (wide, square) = ((640, 360), (480, 480));
        assert_eq!(pairing(&[wide, wide, wide], true), vec![vec![0, 1], vec![2]]);
        assert_eq!(pairing(&[wide, square, wide], true), vec![vec![1], vec![0, 2]]);
        assert_eq!(pairing(&[wide, wide], false), vec![vec![0], vec![1]]);
        assert_eq!(pairing(&[(640, 480), (640, 480)], true), vec![vec![0], vec![1]], "4:3 does not fit a half");
    }

    #[test]
    fn a_box_over_the_seam_is_nobody_s() {
        let (top, bottom) = (Slot { top: 0, height: 320 }, Slot { top: 320, height: 320 });
        // A person standing on the bottom edge of the upper frame, box 2 px over the seam.
        assert!(in_slot(260.0, 124.0, top, 640));
        assert!(!in_slot(260.0, 124.0, bottom, 640), "its centre is in the upper half");
        // A box spanning both pictures.
        assert!(!in_slot(310.0, 100.0, top, 640));
        assert!(!in_slot(330.0, 100.0, bottom, 640));
        // The outer edges are no seam.
        assert!(in_slot(600.0, 100.0, bottom, 640) && in_slot(30.0, 80.0, top, 640));
    }

    #[test]
    fn a_paired_frame_maps_back_from_its_half() {
        let frame =
            Mat::new_rows_cols_with_default(360, 640, opencv::core::CV_8UC3, opencv::core::Scalar::all(200.0)).unwrap();
        let mut input = vec![0.0; 3 * 640 * 640];
        let lb = letterbox_into(&frame, 640, Slot { top: 320, height: 320 }, &mut input).unwrap();
        // 640x360 → 640x320 in the lower half, edge to edge.
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (1.0, 0.0, 320.0));
        assert!((lb.scale_y - 320.0 / 360.0).abs() < 1e-6);
        let plane = 640 * 640;
        assert_eq!(input[100 * 640 + 300], 0.0, "the upper half is left alone");
        assert!((input[400 * 640] - 200.0 / 255.0).abs() < 1e-6, "no side padding");
        assert!((input[plane + 639 * 640 + 639] - 200.0 / 255.0).abs() < 1e-6);
        // A box drawn at the bottom of the lower half maps back to the frame's bottom.
        let d = Decoding { min_score: 0.1, iou_threshold: 0.45, wanted: vec![true], names: vec!["person".into()] };
        let row = [320.0, 600.0, 64.0, 80.0, 0.9, 0.9];
        let found = decode_slot(&row, 6, &lb, &d, Some((Slot { top: 320, height: 320 }, 640)));
        assert_eq!(found[0].bbox, [288.0, 270.0, 352.0, 360.0]);
    }

    #[test]
    fn a_half_shrunk_in_height_is_opencv_s_area_resize_kept_in_float() {
        // A 640x360 picture with detail in every row and channel.
        let mut frame =
            Mat::new_rows_cols_with_default(360, 640, opencv::core::CV_8UC3, opencv::core::Scalar::all(0.0)).unwrap();
        for (i, b) in frame.data_bytes_mut().unwrap().iter_mut().enumerate() {
            *b = ((i * 7919) % 251) as u8;
        }
        let mut input = vec![-1.0; 3 * 640 * 640];
        let lb = letterbox_into(&frame, 640, Slot { top: 320, height: 320 }, &mut input).unwrap();
        assert_eq!((lb.pad_x, lb.pad_y), (0.0, 320.0));
        let mut area = Mat::default();
        opencv::imgproc::resize(
            &frame,
            &mut area,
            opencv::core::Size::new(640, 320),
            0.0,
            0.0,
            opencv::imgproc::INTER_AREA,
        )
        .unwrap();
        let area = area.data_bytes().unwrap();
        let plane = 640 * 640;
        let mut worst = 0f32;
        for y in 0..320 {
            for x in 0..640 {
                for c in 0..3 {
                    // OpenCV rounds to bytes; ours keeps the float: at most half a step apart.
                    let ours = input[(2 - c) * plane + (320 + y) * 640 + x];
                    worst = worst.max((ours * 255.0 - area[(y * 640 + x) * 3 + c] as f32).abs());
                }
            }
        }
        assert!(worst <= 0.51, "{worst} steps from OpenCV's area resize");
        assert!(input[..320 * 640].iter().all(|&v| v == -1.0), "the upper half is left alone");
    }

    #[test]
    fn a_lone_frame_gets_the_smallest_input_that_holds_it() {
        let input = |w, h| rect_input(w, h, 640);
        assert_eq!(input(640, 360), Input { width: 640, height: 384 }, "16:9 sub-stream");
        assert_eq!(input(1280, 720), Input { width: 640, height: 384 }, "scaled down first");
        assert_eq!(input(640, 480), Input { width: 640, height: 480 }, "4:3");
        assert_eq!(input(810, 1080), Input { width: 480, height: 640 }, "portrait (bus.jpg)");
        assert_eq!(input(640, 640), Input { width: 640, height: 640 });
        assert_eq!(input(0, 360), Input { width: 640, height: 640 }, "no picture: the square");
        // A 640x360 frame in 640x384: 12 grey rows above and below, scale 1, boxes map back.
        let frame =
            Mat::new_rows_cols_with_default(360, 640, opencv::core::CV_8UC3, opencv::core::Scalar::all(200.0)).unwrap();
        let inp = rect_input(640, 360, 640);
        let mut buf = vec![0.0; 3 * 640 * 384];
        let lb = letterbox_in(&frame, inp, Slot { top: 0, height: 384 }, &mut buf).unwrap();
        assert_eq!((lb.scale, lb.scale_y, lb.pad_x, lb.pad_y), (1.0, 1.0, 0.0, 12.0));
        assert!((buf[11 * 640] - PAD_GREY).abs() < 1e-6 && (buf[372 * 640] - PAD_GREY).abs() < 1e-6, "grey bands");
        assert!((buf[12 * 640] - 200.0 / 255.0).abs() < 1e-6 && (buf[371 * 640 + 639] - 200.0 / 255.0).abs() < 1e-6);
        let d = Decoding { min_score: 0.1, iou_threshold: 0.45, wanted: vec![true], names: vec!["person".into()] };
        let row = [320.0, 332.0, 64.0, 80.0, 0.9, 0.9];
        assert_eq!(decode(&row, 6, &lb, &d)[0].bbox, [288.0, 280.0, 352.0, 360.0]);
    }

    #[test]
    fn nms_suppresses_overlaps_within_a_class_only() {
        let c = vec![
            (0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            (0, 0.8, [1.0, 1.0, 11.0, 11.0]),   // same class, IoU ~0.68: suppressed
            (2, 0.7, [1.0, 1.0, 11.0, 11.0]),   // other class: kept
            (0, 0.6, [20.0, 20.0, 30.0, 30.0]), // disjoint: kept
        ];
        assert_eq!(nms(&c, 0.45), vec![0, 2, 3]);
    }

    #[test]
    fn letterbox_pads_and_maps_back() {
        // 200x100 frame: scale 640/200 = 3.2, 640x320 image, 160 rows of padding above.
        let frame = Mat::new_rows_cols_with_default(100, 200, opencv::core::CV_8UC3, (10, 20, 30, 0).into()).unwrap();
        let mut out = vec![0.0; 3 * 640 * 640];
        let lb = letterbox(&frame, 640, &mut out).unwrap();
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (3.2, 0.0, 160.0));
        assert!((out[0] - PAD_GREY).abs() < 1e-6, "padding is grey");
        let inside = 200 * 640 + 5;
        assert!((out[inside] - 30.0 / 255.0).abs() < 1e-6, "R plane holds the frame's red (BGR input)");
        assert!((out[2 * 640 * 640 + inside] - 10.0 / 255.0).abs() < 1e-6, "B plane");
        // A box in model pixels maps back to frame pixels.
        let mut row = vec![0.0f32; 85];
        row[..5].copy_from_slice(&[320.0, 320.0, 64.0, 32.0, 0.9]);
        row[5] = 0.9;
        let d = Decoding { min_score: 0.25, iou_threshold: 0.45, wanted: vec![true; 80], names: vec!["person".into()] };
        let dets = decode(&row, 85, &lb, &d);
        assert_eq!(dets.len(), 1);
        let b = dets[0].bbox;
        assert!((b[0] - 90.0).abs() < 0.01 && (b[1] - 45.0).abs() < 0.01, "{b:?}");
        assert!((b[2] - 110.0).abs() < 0.01 && (b[3] - 55.0).abs() < 0.01, "{b:?}");
    }

    #[test]
    fn decode_drops_unwanted_classes_and_low_scores() {
        let lb = Letterbox { scale: 1.0, scale_y: 1.0, pad_x: 0.0, pad_y: 0.0, width: 640, height: 640 };
        let mut rows = vec![0.0f32; 3 * 85];
        rows[..5].copy_from_slice(&[100.0, 100.0, 10.0, 10.0, 0.9]);
        rows[5 + 15] = 0.9; // class 15 (cat): not wanted
        rows[85..90].copy_from_slice(&[200.0, 200.0, 10.0, 10.0, 0.3]);
        rows[85 + 5] = 0.5; // person at 0.15: below min score
        rows[170..175].copy_from_slice(&[300.0, 300.0, 10.0, 10.0, 0.8]);
        rows[170 + 5] = 0.9; // person at 0.72: kept
        let mut wanted = vec![false; 80];
        wanted[0] = true;
        let names = (0..80).map(|i| format!("c{i}")).collect();
        let d = Decoding { min_score: 0.25, iou_threshold: 0.45, wanted, names };
        let dets = decode(&rows, 85, &lb, &d);
        assert_eq!(dets.len(), 1);
        assert!((dets[0].score - 0.72).abs() < 1e-5);
    }

    #[test]
    fn corrupt_jpeg_is_an_error() {
        assert!(decode_image(b"not a jpeg at all").is_err());
        assert!(decode_image(&[]).is_err());
    }
}

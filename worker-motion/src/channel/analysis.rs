//! A channel's analysis: frames from the reader → the detector and the hysteresis → motion
//! events, zone entries, YOLO frames and the channel's picture, sent to the batch.

use std::sync::atomic::Ordering;

use cctv_common::config::{FrameFormat, MotionConfig};
use cctv_common::events::{now_ms, ChannelState, MotionEventKind, NormBox};
use cctv_common::ffmpeg::VideoSize;
use cctv_common::jobs::{MotionChannel, YoloFrames};
use cctv_common::zones;
use opencv::core::{Mat, Size, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};
use tokio::sync::mpsc::UnboundedSender;

use super::frames::{FrameMeta, FrameSource, ReadError};
use super::{ChannelMsg, ChannelShared, InFlight, PREVIEW_EVERY_MS, YOLO_FRAMES_IN_FLIGHT_MAX};
use crate::decode::PictureFormat;
use crate::detector::{FrameMotion as Verdict, Hysteresis, MotionDetector, Transition};
use crate::sampling::{self, Sampler};

/// JPEG quality of the channel's picture.
const PREVIEW_QUALITY: i32 = 80;

/// One reader run's analysis of a channel.
pub(super) struct Analysis<'a> {
    ch: &'a MotionChannel,
    yolo: Option<&'a YoloFrames>,
    shared: &'a ChannelShared,
    out: &'a UnboundedSender<ChannelMsg>,
    /// Frames come at the stream's rate (the analysis picks `fps` of them) and motion holds the
    /// gate open.
    gated: bool,
    interval_ms: f64,
    hold_ms: i64,
    /// The next analysis is due at this time (ms, fractional: exact rate over any input rate).
    due_ms: Option<f64>,
    colour: Option<ColourFrames>,
    grey_w: u32,
    grey_h: u32,
    detector: MotionDetector,
    hysteresis: Hysteresis,
    frame: Vec<u8>,
    /// The latest motion event: frames sampled after it ended still belong to it.
    last_event: Option<String>,
    /// The zones the event in progress touched so far, in the channel's zone order.
    event_zones: Vec<String>,
    last_preview_ms: i64,
    /// The busiest frame of the event in progress (see [`Busiest`]).
    busiest: Option<Busiest>,
}

/// The frame of a motion event with the largest changed area so far, as JPEG. Encoded again
/// only when the area grows by a fifth and half a second passed: a handful of encodes per event.
struct Busiest {
    event_id: String,
    area: f32,
    at_ms: i64,
    jpeg: Vec<u8>,
}

/// Whether a frame of `area` at `ts` replaces `current` as its event's busiest.
fn busier(current: Option<&Busiest>, event_id: &str, area: f32, ts: i64) -> bool {
    match current {
        Some(b) if b.event_id == event_id => area > b.area * 1.2 && ts - b.at_ms >= 500,
        _ => area > 0.0,
    }
}

impl<'a> Analysis<'a> {
    pub(super) fn new(
        ch: &'a MotionChannel,
        params: &'a MotionConfig,
        yolo: Option<&'a YoloFrames>,
        shared: &'a ChannelShared,
        out: &'a UnboundedSender<ChannelMsg>,
        size: VideoSize,
        gated: bool,
    ) -> Result<Self, ReadError> {
        let colour = yolo.map(|y| ColourFrames::new(y, size.width, size.height, params.frame_height));
        let (grey_w, grey_h) = colour.as_ref().map_or((size.width, size.height), |c| (c.grey_w, c.grey_h));
        let mut detector = MotionDetector::new(params, grey_w, grey_h);
        detector.set_masks(&ch.masks).map_err(|e| ReadError::Masks(e.to_string()))?;
        let bytes_per_pixel = if colour.is_some() { 3 } else { 1 };
        tracing::info!(width = size.width, height = size.height, yolo = colour.is_some(), "channel online");
        Ok(Self {
            ch,
            yolo,
            shared,
            out,
            gated,
            interval_ms: 1000.0 / params.fps,
            hold_ms: (params.gate_hold_secs * 1000.0) as i64,
            due_ms: None,
            colour,
            grey_w,
            grey_h,
            detector,
            hysteresis: Hysteresis::new(params),
            frame: vec![0u8; (size.width * size.height) as usize * bytes_per_pixel],
            last_event: None,
            event_zones: Vec::new(),
            last_preview_ms: 0,
            busiest: None,
        })
    }

    /// Analyses frames until the source ends or the channel stops; an event in progress is
    /// closed when the stream goes away.
    pub(super) fn run(&mut self, source: &mut dyn FrameSource) -> Result<(), ReadError> {
        let result = loop {
            if self.shared.stopping() {
                break Ok(());
            }
            let meta = match source.next_frame(&mut self.frame) {
                Ok(meta) => meta,
                Err(e) => break Err(e),
            };
            if let Err(e) = self.frame(meta) {
                break Err(e);
            }
        };
        if let Some(t) = self.hysteresis.finish() {
            self.send_thumbnail();
            emit(self.ch.id, t, now_ms(), Vec::new(), std::mem::take(&mut self.event_zones), self.out);
        }
        result
    }

    /// Whether a frame that arrived at `meta.ts_ms` is analysed: every frame of a plain reader;
    /// of a gated one, `fps` of them (within a quarter of an interval counts as on time: arrival
    /// jitter), and every keyframe a closed gate looks at.
    fn due(&mut self, meta: FrameMeta) -> bool {
        if !meta.analyse {
            return false;
        }
        if !self.gated {
            return true;
        }
        let ts = meta.ts_ms as f64;
        let due = *self.due_ms.get_or_insert(ts);
        if ts < due - self.interval_ms / 4.0 && !meta.check {
            return false;
        }
        self.due_ms = Some(if due + self.interval_ms < ts { ts + self.interval_ms } else { due + self.interval_ms });
        true
    }

    fn frame(&mut self, meta: FrameMeta) -> Result<(), ReadError> {
        let ts = meta.ts_ms;
        let shared = self.shared;
        shared.last_frame_ms.fetch_max(ts, Ordering::Relaxed);
        if !self.due(meta) {
            return Ok(());
        }
        // Only the first frame of the run sets it (0 means unset).
        let _ = shared.analysing_since_ms.compare_exchange(0, ts, Ordering::Relaxed, Ordering::Relaxed);
        shared.frames.fetch_add(1, Ordering::Relaxed);
        self.preview(ts);
        let grey = match self.colour.as_mut() {
            Some(c) => Some(c.grey_of(&self.frame).map_err(|e| ReadError::Colour(e.to_string()))?),
            None => None,
        };
        self.detector.set_in_event(self.hysteresis.active().is_some());
        let verdict =
            self.detector.process(grey.unwrap_or(&self.frame), ts).map_err(|e| ReadError::Detector(e.to_string()))?;
        if verdict.recalibrated {
            tracing::info!("scene changed as a whole (lights, IR); background recalibrated");
        }
        if verdict.motion {
            shared.last_motion_ms.store(ts, Ordering::Relaxed);
        }
        let transition = self.hysteresis.update(ts, verdict.motion, verdict.present, verdict.area);
        let active = self.hysteresis.active().is_some();
        if self.gated && (verdict.motion || verdict.present || active) {
            shared.gate_hold_until_ms.fetch_max(ts + self.hold_ms, Ordering::Relaxed);
        }
        shared.set_status(if active { ChannelState::Motion } else { ChannelState::Idle }, None);
        if let Some(active) = self.hysteresis.active() {
            self.last_event = Some(active.event_id.clone());
        }
        self.sample_for_yolo(ts, &verdict);
        self.zones(ts, &transition, &verdict.boxes);
        self.keep_busiest(ts, verdict.area);
        if let Some(t) = transition {
            // At the start the first frame's picture, at the end the busiest of the event.
            self.send_thumbnail();
            // An end takes the event's zones with it; a start keeps them for its zone entries.
            let zones = match t {
                Transition::End(_) => std::mem::take(&mut self.event_zones),
                Transition::Start(_) => self.event_zones.clone(),
            };
            emit(self.ch.id, t, ts, verdict.boxes, zones, self.out);
        }
        Ok(())
    }

    /// Keeps the frame as its event's thumbnail when it is the busiest so far.
    fn keep_busiest(&mut self, ts: i64, area: f32) {
        let Some(event_id) = self.hysteresis.active().map(|a| a.event_id.clone()) else { return };
        if !busier(self.busiest.as_ref(), &event_id, area, ts) {
            return;
        }
        match self.picture() {
            Ok(jpeg) => self.busiest = Some(Busiest { event_id, area, at_ms: ts, jpeg }),
            Err(e) => tracing::debug!(error = %e, "cannot encode the event's picture"),
        }
    }

    fn send_thumbnail(&mut self) {
        if let Some(b) = self.busiest.as_ref() {
            let msg = ChannelMsg::Thumbnail { event_id: b.event_id.clone(), jpeg: b.jpeg.clone() };
            let _ = self.out.send(msg);
        }
    }

    /// The current frame as people see it: colour on priority channels, else grey (JPEG).
    fn picture(&self) -> opencv::Result<Vec<u8>> {
        match self.colour.as_ref() {
            Some(c) => c.jpeg(&self.frame),
            None => grey_jpeg(&self.frame, self.grey_w, self.grey_h),
        }
    }

    /// The channel's picture for people, every [`PREVIEW_EVERY_MS`].
    fn preview(&mut self, ts: i64) {
        if ts - self.last_preview_ms < PREVIEW_EVERY_MS {
            return;
        }
        self.last_preview_ms = ts;
        match self.picture() {
            Ok(jpeg) => {
                let _ = self.out.send(ChannelMsg::Preview { channel: self.ch.id, ts_ms: ts, jpeg });
            }
            Err(e) => tracing::debug!(error = %e, "cannot encode the channel picture"),
        }
    }

    /// YOLO frames: during motion at `fps`, or at `confirmed_fps` once YOLO confirmed an object
    /// that explains all of it ([`sampling::rate`]); at `recording_fps` while the channel's
    /// backup is open without motion, so a wanted object in view keeps it going, or at
    /// `confirmed_fps` while a fresh confirmation of the event says the object is still there.
    fn sample_for_yolo(&mut self, ts: i64, verdict: &Verdict) {
        let shared = self.shared;
        let aspect = self.grey_w as f32 / self.grey_h.max(1) as f32;
        let by_need = |full_fps: f64, event: &str, boxes: &[NormBox]| {
            let rates = sampling::Rates { full_fps, confirmed_fps: self.yolo.map_or(0.0, |y| y.confirmed_fps) };
            let (fps, need) = sampling::rate(rates, shared.objects_seen().as_ref(), event, ts, boxes, aspect);
            tracing::trace!(need = ?need, fps, "YOLO sampling");
            fps
        };
        let sample = match (self.hysteresis.active(), self.yolo) {
            (Some(active), Some(y)) => {
                Some((active.event_id.clone(), by_need(y.fps, &active.event_id, &verdict.boxes), y.fps))
            }
            (None, Some(y)) if y.recording_fps > 0.0 && shared.recording_open.load(Ordering::Relaxed) => {
                self.last_event.clone().map(|e| {
                    let fps = by_need(y.recording_fps, &e, &[]);
                    (e, fps, y.recording_fps)
                })
            }
            _ => None,
        };
        let (Some(c), Some((event, fps, full_fps))) = (self.colour.as_mut(), sample) else { return };
        let (due, skipped) = c.sampler.due(ts, fps, full_fps);
        if skipped {
            shared.yolo_skipped.fetch_add(1, Ordering::Relaxed);
        }
        if !due {
            return;
        }
        let Some(place) = InFlight::take(&shared.yolo_in_flight, YOLO_FRAMES_IN_FLIGHT_MAX) else {
            shared.yolo_dropped_backlog.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match c.yolo_image(&self.frame) {
            Ok(image) => {
                let _ = self.out.send(ChannelMsg::Frame {
                    channel: self.ch.id,
                    ts_ms: ts,
                    motion_event: event,
                    boxes: verdict.boxes.clone(),
                    image,
                    _place: place,
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a frame for YOLO"),
        }
    }

    /// An event's zones only grow: the start names those of its first frame; the first frame
    /// that touches another one sends a `zone` entry with every zone so far.
    fn zones(&mut self, ts: i64, transition: &Option<Transition>, boxes: &[NormBox]) {
        let ch = self.ch;
        let touched = if ch.zones.is_empty() { Vec::new() } else { zones::touched(&ch.zones, boxes) };
        match (transition, self.hysteresis.active()) {
            (Some(Transition::Start(_)), _) => self.event_zones = touched,
            (None, Some(active)) if touched.iter().any(|z| !self.event_zones.contains(z)) => {
                let event_zones = &self.event_zones;
                let zones: Vec<String> = ch
                    .zones
                    .iter()
                    .map(|z| &z.name)
                    .filter(|n| event_zones.contains(n) || touched.contains(n))
                    .cloned()
                    .collect();
                tracing::info!(event = %active.event_id, zones = ?zones, "motion entered a zone");
                let _ = self.out.send(ChannelMsg::Motion {
                    channel: ch.id,
                    kind: MotionEventKind::Zone,
                    event_id: active.event_id.clone(),
                    ts_ms: ts,
                    started_ms: active.started_ms,
                    last_motion_ms: None,
                    area: active.max_area,
                    boxes: boxes.to_vec(),
                    zones: zones.clone(),
                });
                self.event_zones = zones;
            }
            _ => {}
        }
    }
}

/// Colour frames of a priority channel: grey copies for motion, YOLO frames (PNG, or JPEG with
/// `yolo.frame_format = "jpeg"`) at `yolo.fps`, JPEG previews.
struct ColourFrames {
    width: i32,
    height: i32,
    grey_w: u32,
    grey_h: u32,
    quality: i32,
    format: FrameFormat,
    sampler: Sampler,
    grey_full: Mat,
    grey_small: Mat,
}

impl ColourFrames {
    fn new(y: &YoloFrames, width: u32, height: u32, grey_h: u32) -> Self {
        // Same width as ffmpeg's `scale=-2:<h>` on the grey path: even, aspect kept.
        let (grey_w, _) = PictureFormat::Grey { height: grey_h }.output_size(width, height);
        Self {
            width: width as i32,
            height: height as i32,
            grey_w,
            grey_h,
            quality: y.jpeg_quality as i32,
            format: y.format,
            sampler: Sampler::default(),
            grey_full: Mat::default(),
            grey_small: Mat::default(),
        }
    }

    fn mat<'a>(&self, bgr: &'a [u8]) -> opencv::Result<opencv::boxed_ref::BoxedRef<'a, Mat>> {
        Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(self.height, self.width, bgr)
    }

    fn grey_of(&mut self, bgr: &[u8]) -> opencv::Result<&[u8]> {
        let m = self.mat(bgr)?;
        imgproc::cvt_color_def(&m, &mut self.grey_full, imgproc::COLOR_BGR2GRAY)?;
        let size = Size::new(self.grey_w as i32, self.grey_h as i32);
        imgproc::resize(&self.grey_full, &mut self.grey_small, size, 0.0, 0.0, imgproc::INTER_AREA)?;
        self.grey_small.data_bytes()
    }

    fn jpeg(&self, bgr: &[u8]) -> opencv::Result<Vec<u8>> {
        let m = self.mat(bgr)?;
        let mut buf = Vector::<u8>::new();
        let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, self.quality]);
        imgcodecs::imencode(".jpg", &m, &mut buf, &params)?;
        Ok(buf.to_vec())
    }

    /// The frame as YOLO gets it: PNG (lossless) or JPEG. The PNG is written by the `png`
    /// crate with its fast deflate and one fixed filter (Paeth): 1.8 ms for 640x360 where
    /// OpenCV's libpng at level 1 took 11.7 ms (adaptive filtering), for ~290 KiB against 262.
    fn yolo_image(&self, bgr: &[u8]) -> Result<Vec<u8>, String> {
        match self.format {
            FrameFormat::Jpeg => self.jpeg(bgr).map_err(|e| e.to_string()),
            FrameFormat::Png => {
                let rgb: Vec<u8> = bgr.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
                let mut out = Vec::with_capacity(bgr.len() / 2);
                let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
                encoder.set_color(png::ColorType::Rgb);
                encoder.set_depth(png::BitDepth::Eight);
                encoder.set_compression(png::Compression::Fast);
                encoder.set_filter(png::FilterType::Paeth);
                encoder.set_adaptive_filter(png::AdaptiveFilterType::NonAdaptive);
                let mut writer = encoder.write_header().map_err(|e| format!("PNG: {e}"))?;
                writer.write_image_data(&rgb).map_err(|e| format!("PNG: {e}"))?;
                writer.finish().map_err(|e| format!("PNG: {e}"))?;
                Ok(out)
            }
        }
    }
}

/// A grey frame (`width` x `height` bytes) as JPEG.
fn grey_jpeg(grey: &[u8], width: u32, height: u32) -> opencv::Result<Vec<u8>> {
    let m = Mat::new_rows_cols_with_data(height as i32, width as i32, grey)?;
    let mut buf = Vector::<u8>::new();
    let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, PREVIEW_QUALITY]);
    imgcodecs::imencode(".jpg", &m, &mut buf, &params)?;
    Ok(buf.to_vec())
}

/// Sends a start (with the zones of its first frame) or an end (with every zone the event
/// touched).
fn emit(
    channel: u32,
    t: Transition,
    ts_ms: i64,
    boxes: Vec<NormBox>,
    zones: Vec<String>,
    out: &UnboundedSender<ChannelMsg>,
) {
    let msg = match t {
        Transition::Start(a) => {
            tracing::info!(event = %a.event_id, area = a.max_area, zones = ?zones, "motion started");
            ChannelMsg::Motion {
                channel,
                kind: MotionEventKind::Start,
                event_id: a.event_id,
                ts_ms,
                started_ms: a.started_ms,
                last_motion_ms: None,
                area: a.max_area,
                boxes,
                zones,
            }
        }
        Transition::End(a) => {
            tracing::info!(event = %a.event_id, lasted_ms = ts_ms - a.started_ms, "motion ended");
            ChannelMsg::Motion {
                channel,
                kind: MotionEventKind::End,
                event_id: a.event_id,
                ts_ms,
                started_ms: a.started_ms,
                last_motion_ms: Some(a.last_motion_ms),
                area: a.max_area,
                boxes: Vec::new(),
                zones,
            }
        }
    };
    // The batch is gone only when the job is ending; nothing left to tell then.
    let _ = out.send(msg);
}

#[cfg(test)]
mod busiest_tests {
    use super::*;

    fn kept(event_id: &str, area: f32, at_ms: i64) -> Busiest {
        Busiest { event_id: event_id.into(), area, at_ms, jpeg: Vec::new() }
    }

    #[test]
    fn the_busiest_frame_replaces_the_kept_one_only_when_clearly_busier_and_not_at_once() {
        assert!(busier(None, "e1", 0.01, 0), "an event's first moving frame");
        assert!(!busier(None, "e1", 0.0, 0), "a frame with nothing moving");
        let b = kept("e1", 0.10, 1_000);
        assert!(busier(Some(&b), "e1", 0.13, 1_500));
        assert!(!busier(Some(&b), "e1", 0.11, 1_500), "less than a fifth more");
        assert!(!busier(Some(&b), "e1", 0.50, 1_200), "within half a second of the last encode");
        assert!(busier(Some(&b), "e2", 0.01, 1_001), "another event starts afresh");
    }
}

#[cfg(test)]
mod yolo_image_tests {
    use super::*;

    /// A camera-like picture: a gradient with noise, so a lossy codec cannot keep it exactly.
    fn picture(w: usize, h: usize) -> Vec<u8> {
        let mut seed = 12345u32;
        (0..w * h * 3)
            .map(|i| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((i % (w * 3)) as u32 / 8 + (seed >> 16) % 24) as u8
            })
            .collect()
    }

    fn decoded(image: &[u8]) -> Vec<u8> {
        let m = imgcodecs::imdecode(&Vector::from_slice(image), imgcodecs::IMREAD_COLOR).unwrap();
        m.data_bytes().unwrap().to_vec()
    }

    #[test]
    fn yolo_gets_the_decoded_picture_itself_unless_jpeg_is_asked_for() {
        let (w, h) = (64, 36);
        let bgr = picture(w, h);
        let mut frames = YoloFrames {
            fps: 2.0,
            recording_fps: 1.0,
            confirmed_fps: 0.5,
            max_frame_height: 720,
            format: FrameFormat::Png,
            jpeg_quality: 85,
        };
        let png = ColourFrames::new(&frames, w as u32, h as u32, 18).yolo_image(&bgr).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        assert!(decoded(&png) == bgr, "PNG is lossless: YOLO scores exactly what was decoded");
        frames.format = FrameFormat::Jpeg;
        let jpeg = ColourFrames::new(&frames, w as u32, h as u32, 18).yolo_image(&bgr).unwrap();
        assert!(jpeg.starts_with(b"\xff\xd8"));
        assert!(decoded(&jpeg) != bgr, "JPEG is not");
    }
}

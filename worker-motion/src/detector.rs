//! Frame differencing with OpenCV, in the manner of Frigate, without its ghosts.
//!
//! Per grey frame: Gaussian blur → `absdiff` against a running-average background → threshold →
//! dilate → external contours above `min_area` → motion boxes and changed-area fraction.
//!
//! Two rules keep the background honest:
//! - it starts as the first frame (no 20-second settling after start-up), and every pixel that
//!   has been still frame-to-frame for `settle_frames` takes the current value at once, so a
//!   person who left (or stopped) leaves no ghost that keeps motion alive, while pixels that keep
//!   changing (someone walking, however small) keep the slow running average;
//! - a change above `recalibrate_fraction` of the frame (lights, IR switch) resets it instead of
//!   raising motion.
//!
//! [`Hysteresis`] turns per-frame motion into start/end events: start after `start_frames`
//! consecutive motion frames, end after `end_quiet_secs` without motion.

use cctv_common::config::MotionConfig;
use cctv_common::events::NormBox;
use opencv::core::{self, Mat, Point, Scalar, Size, Vector, BORDER_CONSTANT, CV_32F, CV_8U};
use opencv::imgproc;
use opencv::prelude::*;

/// What one frame showed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameMotion {
    pub motion: bool,
    /// Changed fraction of the frame (0..1) counted over contours above `min_area`.
    pub area: f32,
    pub boxes: Vec<NormBox>,
    /// The background was reset because most of the frame changed at once.
    pub recalibrated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("frame of {got} bytes, expected {expected} ({width}x{height} grey)")]
    FrameSize { got: usize, expected: usize, width: u32, height: u32 },
    #[error("opencv: {0}")]
    OpenCv(#[from] opencv::Error),
}

/// Frame differencing state of one channel.
pub struct MotionDetector {
    params: MotionConfig,
    width: i32,
    height: i32,
    background: Option<Mat>,
    previous: Option<Mat>,
    /// Per pixel: consecutive frames without frame-to-frame change (saturating u8).
    still_count: Mat,
    kernel: Mat,
    // Scratch buffers reused frame to frame.
    blurred: Mat,
    background_u8: Mat,
    diff: Mat,
    diff_f32: Mat,
    mask: Mat,
    dilated: Mat,
}

impl MotionDetector {
    pub fn new(params: &MotionConfig, width: u32, height: u32) -> Self {
        Self {
            params: params.clone(),
            width: width as i32,
            height: height as i32,
            background: None,
            previous: None,
            still_count: Mat::default(),
            kernel: Mat::default(),
            blurred: Mat::default(),
            background_u8: Mat::default(),
            diff: Mat::default(),
            diff_f32: Mat::default(),
            mask: Mat::default(),
            dilated: Mat::default(),
        }
    }

    /// Analyses one grey frame (`width * height` bytes, row-major).
    pub fn process(&mut self, grey: &[u8]) -> Result<FrameMotion, DetectorError> {
        let expected = (self.width * self.height) as usize;
        if grey.len() != expected {
            return Err(DetectorError::FrameSize {
                got: grey.len(),
                expected,
                width: self.width as u32,
                height: self.height as u32,
            });
        }
        let frame = Mat::new_rows_cols_with_data(self.height, self.width, grey)?;
        let k = self.params.blur_kernel;
        imgproc::gaussian_blur_def(&frame, &mut self.blurred, Size::new(k, k), 0.0)?;
        let total = f64::from(self.width * self.height);

        let Some(background) = self.background.as_mut() else {
            self.reset_background()?;
            self.previous = Some(self.blurred.clone());
            return Ok(FrameMotion::default());
        };

        // Foreground: difference against the background.
        background.convert_to(&mut self.background_u8, CV_8U, 1.0, 0.0)?;
        core::absdiff(&self.blurred, &self.background_u8, &mut self.diff)?;
        imgproc::threshold(&self.diff, &mut self.mask, self.params.pixel_threshold, 255.0, imgproc::THRESH_BINARY)?;
        let changed = f64::from(core::count_non_zero(&self.mask)?) / total;
        if changed > self.params.recalibrate_fraction {
            self.reset_background()?;
            self.previous = Some(self.blurred.clone());
            return Ok(FrameMotion { recalibrated: true, ..FrameMotion::default() });
        }
        imgproc::dilate(
            &self.mask,
            &mut self.dilated,
            &self.kernel,
            Point::new(-1, -1),
            self.params.dilate_iterations,
            BORDER_CONSTANT,
            imgproc::morphology_default_border_value()?,
        )?;
        let mut contours = Vector::<Vector<Point>>::new();
        imgproc::find_contours(
            &self.dilated,
            &mut contours,
            imgproc::RETR_EXTERNAL,
            imgproc::CHAIN_APPROX_SIMPLE,
            Point::new(0, 0),
        )?;
        let min_area = self.params.min_area * total;
        let mut boxes = Vec::new();
        let mut area = 0.0;
        for contour in &contours {
            let a = imgproc::contour_area(&contour, false)?;
            if a >= min_area {
                area += a;
                let r = imgproc::bounding_rect(&contour)?;
                boxes.push(NormBox {
                    x: r.x as f32 / self.width as f32,
                    y: r.y as f32 / self.height as f32,
                    w: r.width as f32 / self.width as f32,
                    h: r.height as f32 / self.height as f32,
                });
            }
        }

        // Stillness, per pixel: difference against the previous frame.
        let previous = self.previous.as_ref().expect("set together with the background");
        core::absdiff(&self.blurred, previous, &mut self.diff)?;
        imgproc::threshold(&self.diff, &mut self.mask, self.params.pixel_threshold, 255.0, imgproc::THRESH_BINARY)?;
        core::add(&self.still_count, &Scalar::all(1.0), &mut self.dilated, &core::no_array(), -1)?;
        std::mem::swap(&mut self.still_count, &mut self.dilated);
        self.still_count.set_to(&Scalar::all(0.0), &self.mask)?;
        std::mem::swap(self.previous.as_mut().expect("checked above"), &mut self.blurred);

        // Background update: running average everywhere, then pixels still for `settle_frames`
        // take the current value (a ghost or a parked object is absorbed at once).
        let current = self.previous.as_ref().expect("checked above");
        imgproc::accumulate_weighted(current, background, self.params.background_alpha, &core::no_array())?;
        let settle = f64::from(self.params.settle_frames.min(255));
        core::compare(&self.still_count, &Scalar::all(settle), &mut self.mask, core::CMP_GE)?;
        current.convert_to(&mut self.diff_f32, CV_32F, 1.0, 0.0)?;
        self.diff_f32.copy_to_masked(background, &self.mask)?;
        Ok(FrameMotion { motion: !boxes.is_empty(), area: (area / total) as f32, boxes, recalibrated: false })
    }

    fn reset_background(&mut self) -> Result<(), DetectorError> {
        let mut bg = Mat::new_rows_cols_with_default(self.height, self.width, CV_32F, Scalar::all(0.0))?;
        self.blurred.convert_to(&mut bg, CV_32F, 1.0, 0.0)?;
        self.background = Some(bg);
        self.still_count = Mat::new_rows_cols_with_default(self.height, self.width, CV_8U, Scalar::all(0.0))?;
        Ok(())
    }
}

/// A motion event in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveMotion {
    pub event_id: String,
    pub started_ms: i64,
    pub last_motion_ms: i64,
    pub max_area: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Start(ActiveMotion),
    End(ActiveMotion),
}

/// Start/end hysteresis over per-frame motion. Pure logic over frame timestamps (testable
/// without a clock).
#[derive(Debug, Clone)]
pub struct Hysteresis {
    start_frames: u32,
    end_quiet_ms: i64,
    consecutive: u32,
    active: Option<ActiveMotion>,
}

impl Hysteresis {
    pub fn new(params: &MotionConfig) -> Self {
        Self {
            start_frames: params.start_frames,
            end_quiet_ms: (params.end_quiet_secs * 1000.0) as i64,
            consecutive: 0,
            active: None,
        }
    }

    pub fn active(&self) -> Option<&ActiveMotion> {
        self.active.as_ref()
    }

    /// Feeds one frame's verdict at `ts_ms`; returns a transition when an event starts or ends.
    pub fn update(&mut self, ts_ms: i64, motion: bool, area: f32) -> Option<Transition> {
        self.consecutive = if motion { self.consecutive + 1 } else { 0 };
        match &mut self.active {
            None if self.consecutive >= self.start_frames => {
                let a = ActiveMotion {
                    event_id: uuid::Uuid::new_v4().to_string(),
                    started_ms: ts_ms,
                    last_motion_ms: ts_ms,
                    max_area: area,
                };
                self.active = Some(a.clone());
                Some(Transition::Start(a))
            }
            None => None,
            Some(a) if motion => {
                a.last_motion_ms = ts_ms;
                a.max_area = a.max_area.max(area);
                None
            }
            Some(a) if ts_ms - a.last_motion_ms >= self.end_quiet_ms => self.finish(),
            Some(_) => None,
        }
    }

    /// Ends the event in progress, if any (the stream went away).
    pub fn finish(&mut self) -> Option<Transition> {
        self.consecutive = 0;
        self.active.take().map(Transition::End)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> MotionConfig {
        MotionConfig::default()
    }

    /// A 160x90 grey frame with a bright square at (x, y).
    fn frame_with_square(x: usize, y: usize) -> Vec<u8> {
        let (w, h) = (160, 90);
        let mut f = vec![60u8; w * h];
        for row in y..(y + 20).min(h) {
            for col in x..(x + 20).min(w) {
                f[row * w + col] = 220;
            }
        }
        f
    }

    #[test]
    fn still_scene_never_shows_motion_even_at_start() {
        let mut d = MotionDetector::new(&params(), 160, 90);
        let f = frame_with_square(10, 10);
        for _ in 0..50 {
            assert!(!d.process(&f).unwrap().motion);
        }
    }

    #[test]
    fn moving_square_is_motion_with_a_box_where_it_is() {
        let mut d = MotionDetector::new(&params(), 160, 90);
        d.process(&frame_with_square(0, 30)).unwrap();
        let mut seen = None;
        for step in 1..10 {
            let r = d.process(&frame_with_square(step * 12, 30)).unwrap();
            assert!(r.motion, "step {step}");
            seen = Some(r);
        }
        let r = seen.unwrap();
        let b = r.boxes.iter().find(|b| b.x > 0.5).expect("a box on the right half");
        assert!(b.y < 0.6 && b.y + b.h > 0.35, "{b:?}");
        assert!(r.area > 0.01 && r.area < 0.3, "{}", r.area);
    }

    #[test]
    fn object_that_left_leaves_no_ghost() {
        let p = params();
        let mut d = MotionDetector::new(&p, 160, 90);
        // Empty scene long enough to be the background, then a square appears and stays.
        let empty = vec![60u8; 160 * 90];
        for _ in 0..20 {
            d.process(&empty).unwrap();
        }
        let parked = frame_with_square(70, 30);
        let mut motion_frames = 0;
        for _ in 0..20 {
            if d.process(&parked).unwrap().motion {
                motion_frames += 1;
            }
        }
        assert!(motion_frames >= 1, "arrival is motion");
        assert!(motion_frames <= p.settle_frames as usize + 1, "parked square absorbed, got {motion_frames}");
        // It leaves: a little motion, then quiet again within settle_frames.
        let mut after = Vec::new();
        for _ in 0..20 {
            after.push(d.process(&empty).unwrap().motion);
        }
        assert!(after[0], "departure is motion");
        assert!(after[p.settle_frames as usize + 1..].iter().all(|m| !m), "{after:?}");
    }

    #[test]
    fn global_change_recalibrates_instead_of_motion() {
        let mut d = MotionDetector::new(&params(), 160, 90);
        d.process(&vec![40u8; 160 * 90]).unwrap();
        let r = d.process(&vec![200u8; 160 * 90]).unwrap();
        assert!(r.recalibrated && !r.motion);
        assert!(!d.process(&vec![200u8; 160 * 90]).unwrap().motion);
    }

    #[test]
    fn wrong_frame_size_is_an_error() {
        let mut d = MotionDetector::new(&params(), 160, 90);
        let e = d.process(&[0u8; 10]).unwrap_err().to_string();
        assert!(e.contains("160x90"), "{e}");
    }

    #[test]
    fn hysteresis_starts_after_n_frames_and_ends_after_quiet() {
        let p = MotionConfig { start_frames: 2, end_quiet_secs: 3.0, ..params() };
        let mut h = Hysteresis::new(&p);
        assert_eq!(h.update(0, true, 0.1), None);
        assert!(matches!(h.update(200, true, 0.2), Some(Transition::Start(a)) if a.started_ms == 200));
        assert_eq!(h.update(400, true, 0.3), None);
        assert_eq!(h.update(3_300, false, 0.0), None);
        match h.update(3_400, false, 0.0) {
            Some(Transition::End(a)) => {
                assert_eq!(a.last_motion_ms, 400);
                assert_eq!(a.max_area, 0.3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.update(3_600, false, 0.0), None);
    }

    #[test]
    fn single_motion_frame_does_not_start_an_event() {
        let mut h = Hysteresis::new(&MotionConfig { start_frames: 2, ..params() });
        for t in 0..10 {
            assert_eq!(h.update(t * 400, t % 2 == 0, 0.1), None);
        }
    }
}

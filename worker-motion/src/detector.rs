//! Frame differencing with OpenCV, in the manner of Frigate, without its ghosts, plus presence.
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
//! **Presence.** Settling absorbs a person who stops moving within a second, so motion alone
//! would end an event while they stand there. While an event is in progress the detector also
//! compares each frame with the *reference*: the scene as it was on the last quiet frame before
//! the event. A region of at least `min_area` that still differs from it (after matching overall
//! brightness, so auto-exposure does not count) is presence, and holds the event. Pixels that
//! changed on their own while the scene was quiet in the last minute (a burnt-in clock, leaves,
//! flicker) never count. A person who left makes the scene match the reference again, so nothing
//! lingers; something that stays (a parked car) becomes the reference `max_hold_secs` after the
//! last motion. The reference is only ever a scene that stayed quiet for `end_quiet_secs` (what
//! the detector itself calls a quiet scene): a short pause between two people keeps the
//! reference from before the first, and a detector that starts, or recalibrates, while someone
//! walks has none (no presence) until the scene has been quiet that long — else every later
//! event would be held on the ghost of where they were.
//!
//! [`Hysteresis`] turns per-frame motion into start/end events: start after `start_frames`
//! consecutive motion frames, end after `end_quiet_secs` without motion or presence.

use cctv_common::config::MotionConfig;
use cctv_common::events::NormBox;
use opencv::core::{self, Mat, Point, Scalar, Size, Vector, BORDER_CONSTANT, CV_32F, CV_8U};
use opencv::imgproc;
use opencv::prelude::*;

/// What one frame showed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameMotion {
    pub motion: bool,
    /// During an event: something still differs from the scene before it (see the module docs).
    pub present: bool,
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
    /// The scene on the last frame of a quiet stretch (outside events) of at least
    /// `end_quiet_secs` (blurred grey).
    reference: Option<Mat>,
    /// Per pixel, 1.0 when it changed frame-to-frame on a quiet frame, decaying over about a
    /// minute: pixels that change on their own never count as presence.
    unstable: Mat,
    unstable_u8: Mat,
    /// Start of the current run of quiet frames; `None` during motion or an event.
    quiet_since_ms: Option<i64>,
    in_event: bool,
    last_motion_ms: i64,
    /// Time of the previous frame: a frame after a gap (the gate decodes one frame per GOP of a
    /// still scene) ages the background and the unstable map as the frames in between would.
    last_frame_ms: Option<i64>,
    scratch: Mat,
    /// 255 where the channel's masks are: those pixels are held constant before anything
    /// looks at them, so nothing there is ever motion, presence or a scene change.
    masked: Option<Mat>,
    #[cfg(test)]
    frame_clock: i64,
}

/// Per-frame decay of [`MotionDetector::unstable`] at 5 fps: 1.0 → 0.05 in about a minute.
const UNSTABLE_DECAY: f64 = 0.99;
/// Above this a pixel is unstable.
const UNSTABLE_LEVEL: f64 = 0.05;

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
            reference: None,
            unstable: Mat::default(),
            unstable_u8: Mat::default(),
            quiet_since_ms: None,
            in_event: false,
            last_motion_ms: 0,
            last_frame_ms: None,
            scratch: Mat::default(),
            masked: None,
            #[cfg(test)]
            frame_clock: 0,
        }
    }

    /// Masks polygons of normalised `[x, y]` corners (the channel's `[[channel.mask]]`).
    pub fn set_masks(&mut self, masks: &[Vec<[f32; 2]>]) -> Result<(), DetectorError> {
        if masks.is_empty() {
            self.masked = None;
            return Ok(());
        }
        let mut image = Mat::new_rows_cols_with_default(self.height, self.width, CV_8U, Scalar::all(0.0))?;
        let (w, h) = ((self.width - 1) as f32, (self.height - 1) as f32);
        let polygons: Vector<Vector<Point>> = masks
            .iter()
            .map(|m| m.iter().map(|[x, y]| Point::new((x * w).round() as i32, (y * h).round() as i32)).collect())
            .collect();
        imgproc::fill_poly_def(&mut image, &polygons, Scalar::all(255.0))?;
        self.masked = Some(image);
        Ok(())
    }

    /// Tells the detector whether a motion event is in progress: the reference of the quiet
    /// scene is kept only outside events, and presence is looked for only inside them.
    pub fn set_in_event(&mut self, in_event: bool) {
        self.in_event = in_event;
    }

    /// Analyses one grey frame (`width * height` bytes, row-major) taken at `ts_ms`.
    pub fn process(&mut self, grey: &[u8], ts_ms: i64) -> Result<FrameMotion, DetectorError> {
        let expected = (self.width * self.height) as usize;
        if grey.len() != expected {
            return Err(DetectorError::FrameSize {
                got: grey.len(),
                expected,
                width: self.width as u32,
                height: self.height as u32,
            });
        }
        // How many analysis frames this one stands for (1 at the configured rate).
        let interval_ms = 1000.0 / self.params.fps.max(0.1);
        let frames_spanned =
            self.last_frame_ms.map_or(1.0, |last| ((ts_ms - last) as f64 / interval_ms).round().clamp(1.0, 100.0));
        self.last_frame_ms = Some(ts_ms);
        let frame = Mat::new_rows_cols_with_data(self.height, self.width, grey)?;
        let k = self.params.blur_kernel;
        imgproc::gaussian_blur_def(&frame, &mut self.blurred, Size::new(k, k), 0.0)?;
        if let Some(masked) = &self.masked {
            self.blurred.set_to(&Scalar::all(0.0), masked)?;
        }
        let total = f64::from(self.width * self.height);

        let Some(background) = self.background.as_ref() else {
            self.reset_background()?;
            self.previous = Some(self.blurred.clone());
            self.quiet_since_ms = Some(ts_ms);
            self.unstable = Mat::new_rows_cols_with_default(self.height, self.width, CV_32F, Scalar::all(0.0))?;
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
            // The scene changed as a whole: the old reference is void; the new scene becomes it
            // once it has proved quiet.
            self.reference = None;
            self.quiet_since_ms = Some(ts_ms);
            return Ok(FrameMotion { recalibrated: true, ..FrameMotion::default() });
        }
        let (boxes, area) = self.regions()?;
        let motion = !boxes.is_empty();
        if motion {
            self.last_motion_ms = ts_ms;
        }

        // Stillness, per pixel: difference against the previous frame.
        let previous = self.previous.as_ref().expect("set together with the background");
        core::absdiff(&self.blurred, previous, &mut self.diff)?;
        imgproc::threshold(&self.diff, &mut self.mask, self.params.pixel_threshold, 255.0, imgproc::THRESH_BINARY)?;
        core::add(&self.still_count, &Scalar::all(1.0), &mut self.dilated, &core::no_array(), -1)?;
        std::mem::swap(&mut self.still_count, &mut self.dilated);
        self.still_count.set_to(&Scalar::all(0.0), &self.mask)?;
        let quiet = !motion && !self.in_event;
        if quiet {
            // Frame-to-frame change while nothing happens: this pixel changes on its own.
            let decay = UNSTABLE_DECAY.powf(frames_spanned);
            core::multiply(&self.unstable, &Scalar::all(decay), &mut self.scratch, 1.0, -1)?;
            std::mem::swap(&mut self.unstable, &mut self.scratch);
            self.unstable.set_to(&Scalar::all(1.0), &self.mask)?;
            let since = *self.quiet_since_ms.get_or_insert(ts_ms);
            if ts_ms - since >= (self.params.end_quiet_secs * 1000.0) as i64 {
                self.reference_is_current()?;
            }
        } else {
            self.quiet_since_ms = None;
        }
        let present = self.in_event && self.params.max_hold_secs > 0.0 && self.presence(ts_ms)?;
        std::mem::swap(self.previous.as_mut().expect("checked above"), &mut self.blurred);

        // Background update: running average everywhere, then pixels still for `settle_frames`
        // take the current value (a ghost or a parked object is absorbed at once).
        let current = self.previous.as_ref().expect("checked above");
        let background = self.background.as_mut().expect("checked above");
        let alpha = 1.0 - (1.0 - self.params.background_alpha).powf(frames_spanned);
        imgproc::accumulate_weighted(current, background, alpha, &core::no_array())?;
        let settle = f64::from(self.params.settle_frames.min(255));
        core::compare(&self.still_count, &Scalar::all(settle), &mut self.mask, core::CMP_GE)?;
        current.convert_to(&mut self.diff_f32, CV_32F, 1.0, 0.0)?;
        self.diff_f32.copy_to_masked(background, &self.mask)?;
        Ok(FrameMotion { motion, present, area: (area / total) as f32, boxes, recalibrated: false })
    }

    /// Dilates `self.mask` into `self.dilated` and returns the boxes and total area of the
    /// contours of at least `min_area`.
    fn regions(&mut self) -> Result<(Vec<NormBox>, f64), DetectorError> {
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
        let total = f64::from(self.width * self.height);
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
        Ok((boxes, area))
    }

    /// Does a region of at least `min_area` of the current (blurred) frame still differ from the
    /// reference, leaving out unstable pixels and overall brightness? After `max_hold_secs`
    /// without motion the current scene becomes the reference instead.
    fn presence(&mut self, ts_ms: i64) -> Result<bool, DetectorError> {
        if self.reference.is_none() {
            return Ok(false);
        }
        if ts_ms - self.last_motion_ms > (self.params.max_hold_secs * 1000.0) as i64 {
            // Whatever stays is the scene now: it has been still this long.
            self.reference_is_current()?;
            return Ok(false);
        }
        let Some(reference) = self.reference.as_ref() else { return Ok(false) };
        let offset = core::mean_def(&self.blurred)?[0] - core::mean_def(reference)?[0];
        reference.convert_to(&mut self.scratch, CV_8U, 1.0, offset)?;
        core::absdiff(&self.blurred, &self.scratch, &mut self.diff)?;
        imgproc::threshold(&self.diff, &mut self.mask, self.params.pixel_threshold, 255.0, imgproc::THRESH_BINARY)?;
        imgproc::threshold(&self.unstable, &mut self.scratch, UNSTABLE_LEVEL, 255.0, imgproc::THRESH_BINARY)?;
        self.scratch.convert_to(&mut self.unstable_u8, CV_8U, 1.0, 0.0)?;
        imgproc::dilate(
            &self.unstable_u8,
            &mut self.scratch,
            &self.kernel,
            Point::new(-1, -1),
            self.params.dilate_iterations + 1,
            BORDER_CONSTANT,
            imgproc::morphology_default_border_value()?,
        )?;
        self.mask.set_to(&Scalar::all(0.0), &self.scratch)?;
        let (boxes, _) = self.regions()?;
        Ok(!boxes.is_empty())
    }

    /// The current (blurred) frame becomes the reference, reusing its buffer (this runs on
    /// every frame of a long enough quiet stretch).
    fn reference_is_current(&mut self) -> Result<(), DetectorError> {
        match self.reference.as_mut() {
            Some(r) => self.blurred.copy_to(r)?,
            None => self.reference = Some(self.blurred.clone()),
        }
        Ok(())
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
    /// Only motion starts an event; motion or presence keeps it going.
    pub fn update(&mut self, ts_ms: i64, motion: bool, present: bool, area: f32) -> Option<Transition> {
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
            Some(a) if motion || present => {
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

    impl MotionDetector {
        /// Frames at 5 fps from t = 0.
        fn process_t(&mut self, grey: &[u8]) -> Result<FrameMotion, DetectorError> {
            self.frame_clock += 200;
            let t = self.frame_clock;
            self.process(grey, t)
        }
    }

    impl Hysteresis {
        fn update_t(&mut self, ts: i64, motion: bool, area: f32) -> Option<Transition> {
            self.update(ts, motion, false, area)
        }
    }

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
            assert!(!d.process_t(&f).unwrap().motion);
        }
    }

    #[test]
    fn nothing_inside_a_mask_is_motion_and_the_rest_of_the_picture_still_is() {
        // The left half masked: a square moving there is no motion, the same on the right is.
        let mut d = MotionDetector::new(&params(), 160, 90);
        d.set_masks(&[vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]]).unwrap();
        for x in (0..50).step_by(5) {
            let v = d.process_t(&frame_with_square(x, 30)).unwrap();
            assert!(!v.motion && !v.recalibrated, "masked square at x={x}: {v:?}");
        }
        let mut seen = false;
        for x in (90..140).step_by(5) {
            seen |= d.process_t(&frame_with_square(x, 30)).unwrap().motion;
        }
        assert!(seen, "the unmasked half still shows motion");
        // Without the mask the left half is motion too (the mask is what hid it).
        let mut open = MotionDetector::new(&params(), 160, 90);
        let seen_left = (0..50).step_by(5).any(|x| open.process_t(&frame_with_square(x, 30)).unwrap().motion);
        assert!(seen_left);
    }

    #[test]
    fn moving_square_is_motion_with_a_box_where_it_is() {
        let mut d = MotionDetector::new(&params(), 160, 90);
        d.process_t(&frame_with_square(0, 30)).unwrap();
        let mut seen = None;
        for step in 1..10 {
            let r = d.process_t(&frame_with_square(step * 12, 30)).unwrap();
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
            d.process_t(&empty).unwrap();
        }
        let parked = frame_with_square(70, 30);
        let mut motion_frames = 0;
        for _ in 0..20 {
            if d.process_t(&parked).unwrap().motion {
                motion_frames += 1;
            }
        }
        assert!(motion_frames >= 1, "arrival is motion");
        assert!(motion_frames <= p.settle_frames as usize + 1, "parked square absorbed, got {motion_frames}");
        // It leaves: a little motion, then quiet again within settle_frames.
        let mut after = Vec::new();
        for _ in 0..20 {
            after.push(d.process_t(&empty).unwrap().motion);
        }
        assert!(after[0], "departure is motion");
        assert!(after[p.settle_frames as usize + 1..].iter().all(|m| !m), "{after:?}");
    }

    /// Runs frames through detector and hysteresis as the channel loop does; returns, per frame,
    /// whether an event was in progress after it.
    fn run_event(d: &mut MotionDetector, h: &mut Hysteresis, frames: &[Vec<u8>]) -> Vec<bool> {
        frames
            .iter()
            .map(|f| {
                d.set_in_event(h.active().is_some());
                let v = d.process_t(f).unwrap();
                h.update(d.frame_clock, v.motion, v.present, v.area);
                h.active().is_some()
            })
            .collect()
    }

    /// Empty scene, a square walks in from the left and stops at `stop_x`.
    fn arrive_and_stand(stop_x: usize, stand_frames: usize) -> Vec<Vec<u8>> {
        let empty = vec![60u8; 160 * 90];
        let mut frames = vec![empty; 20];
        frames.extend((0..=stop_x).step_by(10).map(|x| frame_with_square(x, 30)));
        frames.extend(std::iter::repeat_n(frame_with_square(stop_x, 30), stand_frames));
        frames
    }

    #[test]
    fn a_person_who_stands_still_keeps_the_event_and_ends_it_by_leaving() {
        let p = params();
        let (mut d, mut h) = (MotionDetector::new(&p, 160, 90), Hysteresis::new(&p));
        // Stands 15 s (75 frames at 5 fps), then walks out of the frame.
        let mut frames = arrive_and_stand(80, 75);
        frames.extend((90..=160).step_by(10).map(|x| frame_with_square(x, 30)));
        let leave_at = frames.len();
        frames.extend(std::iter::repeat_n(vec![60u8; 160 * 90], 30));
        let active = run_event(&mut d, &mut h, &frames);
        let arrived = active.iter().position(|a| *a).expect("arrival starts an event");
        assert!(active[arrived..leave_at].iter().all(|a| *a), "held while standing: {active:?}");
        // Quiet after leaving: ends after end_quiet (3 s = 15 frames) plus settling.
        let ended = active[leave_at..].iter().position(|a| !a).expect("ends after leaving");
        assert!(ended <= 15 + p.settle_frames as usize + 2, "ended {ended} frames after leaving");
        // Without presence the same footage ends the event while the square stands there.
        let (mut d, mut h) =
            (MotionDetector::new(&MotionConfig { max_hold_secs: 0.0, ..p.clone() }, 160, 90), Hysteresis::new(&p));
        let active = run_event(&mut d, &mut h, &frames[..leave_at]);
        let stood_until = 20 + 9 + 75;
        assert!(!active[stood_until - 1], "motion alone loses the standing person");
    }

    #[test]
    fn a_detector_started_while_someone_walks_leaves_no_hold_on_their_ghost() {
        let p = params();
        let (mut d, mut h) = (MotionDetector::new(&p, 160, 90), Hysteresis::new(&p));
        // The first frame already shows the square (a worker restarted mid-activity); it walks
        // out and the scene stays empty. Its first position differs from the empty scene for
        // good, but that reference never proved quiet.
        let mut frames: Vec<_> = (0..=160).step_by(10).map(|x| frame_with_square(x, 30)).collect();
        let left_at = frames.len();
        frames.extend(std::iter::repeat_n(vec![60u8; 160 * 90], 60));
        let active = run_event(&mut d, &mut h, &frames);
        assert!(active[..left_at].iter().any(|a| *a), "walking is an event: {active:?}");
        let ended = active[left_at..].iter().position(|a| !a).expect("the event ends once the scene is empty");
        assert!(ended <= 15 + p.settle_frames as usize + 2, "ended {ended} frames after leaving: {active:?}");
    }

    #[test]
    fn someone_who_comes_back_right_after_an_event_ended_is_held_while_standing() {
        let p = params();
        let (mut d, mut h) = (MotionDetector::new(&p, 160, 90), Hysteresis::new(&p));
        let walk_out =
            |frames: &mut Vec<Vec<u8>>| frames.extend((90..=160).step_by(10).map(|x| frame_with_square(x, 30)));
        // A first visit (3 s standing), then the empty scene until that event has just ended.
        let mut frames = arrive_and_stand(80, 15);
        walk_out(&mut frames);
        assert!(*run_event(&mut d, &mut h, &frames).last().unwrap(), "the first visit is an event");
        let empty = vec![vec![60u8; 160 * 90]];
        let empty_until_end = (1..40).find(|_| !run_event(&mut d, &mut h, &empty)[0]);
        assert!(empty_until_end.is_some(), "the first event ends once the scene is empty");
        // Half a second later the second visit: walks in, stands 20 s, leaves.
        let mut second: Vec<Vec<u8>> = std::iter::repeat_n(vec![60u8; 160 * 90], 2).collect();
        second.extend((0..=80).step_by(10).map(|x| frame_with_square(x, 30)));
        let standing_from = second.len();
        second.extend(std::iter::repeat_n(frame_with_square(80, 30), 100));
        let leave_at = second.len();
        walk_out(&mut second);
        second.extend(std::iter::repeat_n(vec![60u8; 160 * 90], 30));
        let active = run_event(&mut d, &mut h, &second);
        assert!(active[standing_from..leave_at].iter().all(|a| *a), "held while standing: {active:?}");
        let ended = active[leave_at..].iter().position(|a| !a).expect("ends after leaving");
        assert!(ended <= 8 + 15 + p.settle_frames as usize + 2, "ended {ended} frames after leaving");
    }

    #[test]
    fn something_that_stays_becomes_the_scene_after_max_hold() {
        let p = MotionConfig { max_hold_secs: 10.0, ..params() };
        let (mut d, mut h) = (MotionDetector::new(&p, 160, 90), Hysteresis::new(&p));
        let frames = arrive_and_stand(80, 150); // parked for 30 s
        let active = run_event(&mut d, &mut h, &frames);
        let arrived = active.iter().position(|a| *a).unwrap();
        let ended = active[arrived..].iter().position(|a| !a).expect("the event ends while it is parked");
        // max_hold (10 s) after the last motion, then end_quiet (3 s): about 65 frames.
        assert!((55..=80).contains(&ended), "ended {ended} frames after it began");
    }

    #[test]
    fn a_ticking_clock_and_a_brighter_picture_do_not_hold_an_event() {
        // A burnt-in clock of two 3x5 "digits" that change 5 frames apart, one every 10 frames
        // and one every 50. With this min_area one digit changing is no motion (0.0043
        // of the frame); both digits differing from a frozen reference would be presence (0.0068).
        let p = MotionConfig { min_area: 0.0055, ..params() };
        let (mut d, mut h) = (MotionDetector::new(&p, 160, 90), Hysteresis::new(&p));
        let clock = |f: &mut Vec<u8>, i: usize| {
            for row in 2..7 {
                for (cols, period, phase) in [(2..5, 10, 0), (6..9, 50, 45)] {
                    for col in cols {
                        f[row * 160 + col] = if ((i + phase) / period) % 2 == 0 { 220 } else { 40 };
                    }
                }
            }
        };
        // A minute of the quiet scene with the clock ticking.
        let mut frames = Vec::new();
        for i in 0..300 {
            let mut f = vec![60u8; 160 * 90];
            clock(&mut f, i);
            frames.push(f);
        }
        // Someone crosses the frame and leaves; then the picture brightens slowly by 40 grey
        // levels (sun, auto-exposure): never motion, but far from the frozen reference. The
        // clock keeps ticking.
        for x in (0..=160).step_by(10) {
            let mut f = frame_with_square(x, 50);
            clock(&mut f, frames.len());
            frames.push(f);
        }
        let left = frames.len();
        for k in 0..30u8 {
            let mut f = vec![60 + 2 * k.min(20); 160 * 90];
            clock(&mut f, frames.len());
            frames.push(f);
        }
        let active = run_event(&mut d, &mut h, &frames);
        assert!(!active[..300].iter().any(|a| *a), "the clock alone is no motion");
        assert!(active[300..left].iter().any(|a| *a), "the crossing is");
        let ended = active[left..].iter().position(|a| !a).expect("the event ends");
        assert!(ended <= 15 + p.settle_frames as usize + 2, "lingered {ended} frames");
    }

    #[test]
    fn global_change_recalibrates_instead_of_motion() {
        let mut d = MotionDetector::new(&params(), 160, 90);
        d.process_t(&vec![40u8; 160 * 90]).unwrap();
        let r = d.process_t(&vec![200u8; 160 * 90]).unwrap();
        assert!(r.recalibrated && !r.motion);
        assert!(!d.process_t(&vec![200u8; 160 * 90]).unwrap().motion);
    }

    #[test]
    fn wrong_frame_size_is_an_error() {
        let mut d = MotionDetector::new(&params(), 160, 90);
        let e = d.process_t(&[0u8; 10]).unwrap_err().to_string();
        assert!(e.contains("160x90"), "{e}");
    }

    #[test]
    fn hysteresis_starts_after_n_frames_and_ends_after_quiet() {
        let p = MotionConfig { start_frames: 2, end_quiet_secs: 3.0, ..params() };
        let mut h = Hysteresis::new(&p);
        assert_eq!(h.update_t(0, true, 0.1), None);
        assert!(matches!(h.update_t(200, true, 0.2), Some(Transition::Start(a)) if a.started_ms == 200));
        assert_eq!(h.update_t(400, true, 0.3), None);
        assert_eq!(h.update_t(3_300, false, 0.0), None);
        match h.update_t(3_400, false, 0.0) {
            Some(Transition::End(a)) => {
                assert_eq!(a.last_motion_ms, 400);
                assert_eq!(a.max_area, 0.3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.update_t(3_600, false, 0.0), None);
    }

    #[test]
    fn single_motion_frame_does_not_start_an_event() {
        let mut h = Hysteresis::new(&MotionConfig { start_frames: 2, ..params() });
        for t in 0..10 {
            assert_eq!(h.update_t(t * 400, t % 2 == 0, 0.1), None);
        }
    }
}

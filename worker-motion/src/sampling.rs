//! Sampling by need: how often a priority channel sends a frame to YOLO. Full rate at onset
//! until YOLO confirms a wanted object in the event; then `yolo.confirmed_fps` while every
//! motion box stays in the region the confirmed objects explain and the confirmation is fresh;
//! full rate again as soon as motion appears elsewhere, a result comes back without the object
//! (the object left: the stored boxes are empty), or no result confirmed it for an interval +
//! [`STALE_GRACE_MS`] (results lost, YOLO down). The region a confirmed box explains is the
//! box grown by [`GROW`] of its size on each side (a person who shifts, turns or gestures),
//! plus as far as the object can have travelled since its frame at [`TRAVEL_HEIGHTS_PER_SEC`]
//! (a person walking on). Pure: time is the frame's timestamp.

use cctv_common::events::NormBox;
use cctv_common::seen::ObjectsSeen;

/// How far a confirmed box is grown on each side, as a fraction of its width / height, when
/// the confirmation is of this very moment: a person who shifts, turns or gestures moves within it.
pub const GROW: f32 = 0.5;

/// How far a confirmed object may have moved since its frame, in its own heights per second,
/// added on every side: a brisk walk is about one body height a second (1.5 m/s for 1.7 m),
/// seen at any distance, since size and speed on screen shrink together. Faster (a runner, a
/// car) leaves the region: the full rate comes back, the safe side.
pub const TRAVEL_HEIGHTS_PER_SEC: f32 = 1.0;

/// A confirmation is trusted for one slow interval plus this (the result's own latency).
pub const STALE_GRACE_MS: i64 = 2000;

/// YOLO frame rates of a channel in motion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub full_fps: f64,
    /// 0: never slower than `full_fps`.
    pub confirmed_fps: f64,
}

/// Why a frame goes at the rate it does (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No fresh confirmation of a wanted object in this event.
    Unconfirmed,
    /// Motion outside every confirmed object.
    Unexplained,
    /// Every motion box is inside a confirmed object: the slow rate.
    Explained,
}

/// The rate for a frame at `ts_ms` of motion event `event_id` with `motion_boxes` (none in a
/// post-roll: a confirmed object then explains the stillness), in a picture `aspect` (width /
/// height) wide.
pub fn rate(
    rates: Rates,
    seen: Option<&ObjectsSeen>,
    event_id: &str,
    ts_ms: i64,
    motion_boxes: &[NormBox],
    aspect: f32,
) -> (f64, Need) {
    if rates.confirmed_fps <= 0.0 || rates.confirmed_fps >= rates.full_fps {
        return (rates.full_fps, Need::Unconfirmed);
    }
    let fresh_for_ms = (1000.0 / rates.confirmed_fps) as i64 + STALE_GRACE_MS;
    let Some(seen) =
        seen.filter(|s| s.motion_event == event_id && !s.boxes.is_empty() && ts_ms - s.frame_ts_ms <= fresh_for_ms)
    else {
        return (rates.full_fps, Need::Unconfirmed);
    };
    let age_s = (ts_ms - seen.frame_ts_ms).max(0) as f32 / 1000.0;
    let explained =
        motion_boxes.iter().all(|m| seen.boxes.iter().any(|o| inside(m, &explained_region(o, age_s, aspect))));
    if explained {
        (rates.confirmed_fps, Need::Explained)
    } else {
        (rates.full_fps, Need::Unexplained)
    }
}

/// Where the object of box `b`, seen `age_s` ago, can be now (normalised coordinates: a
/// distance of the box's height is `b.h` down but `b.h / aspect` across).
fn explained_region(b: &NormBox, age_s: f32, aspect: f32) -> NormBox {
    let travel = TRAVEL_HEIGHTS_PER_SEC * b.h * age_s;
    let dx = GROW * b.w + travel / aspect.max(f32::EPSILON);
    let dy = GROW * b.h + travel;
    NormBox { x: b.x - dx, y: b.y - dy, w: b.w + 2.0 * dx, h: b.h + 2.0 * dy }
}

fn inside(inner: &NormBox, outer: &NormBox) -> bool {
    inner.x >= outer.x
        && inner.y >= outer.y
        && inner.x + inner.w <= outer.x + outer.w
        && inner.y + inner.h <= outer.y + outer.h
}

/// When the next YOLO frame is due, and how many frames the full rate would have sent that
/// the slower rate did not (the sampler's skipped frames).
#[derive(Debug, Default)]
pub struct Sampler {
    last_sent_ms: Option<i64>,
    /// A virtual full-rate clock: frames it would send that were not sent are counted skipped.
    last_full_ms: Option<i64>,
}

impl Sampler {
    /// Whether a frame at `ts_ms` goes at `fps` (and counts it sent); `skipped` is true when
    /// the full rate would have sent it.
    pub fn due(&mut self, ts_ms: i64, fps: f64, full_fps: f64) -> (bool, bool) {
        let is_due = |last: Option<i64>, fps: f64| last.is_none_or(|l| ts_ms - l >= (1000.0 / fps) as i64);
        let full_due = is_due(self.last_full_ms, full_fps);
        if full_due {
            self.last_full_ms = Some(ts_ms);
        }
        if is_due(self.last_sent_ms, fps) {
            self.last_sent_ms = Some(ts_ms);
            // The full-rate clock follows what was sent.
            self.last_full_ms = Some(ts_ms);
            (true, false)
        } else {
            (false, full_due)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: Rates = Rates { full_fps: 2.0, confirmed_fps: 0.5 };
    const ASPECT: f32 = 16.0 / 9.0;

    fn person(x: f32, y: f32) -> NormBox {
        NormBox { x, y, w: 0.1, h: 0.4 }
    }

    fn seen(event: &str, ts: i64, boxes: Vec<NormBox>) -> ObjectsSeen {
        ObjectsSeen { channel: 1, motion_event: event.into(), frame_ts_ms: ts, boxes }
    }

    #[test]
    fn onset_runs_at_full_rate_until_an_object_is_confirmed() {
        let motion = [NormBox { x: 0.42, y: 0.3, w: 0.05, h: 0.2 }];
        assert_eq!(rate(RATES, None, "e1", 1000, &motion, ASPECT), (2.0, Need::Unconfirmed));
        let s = seen("e1", 1000, vec![person(0.4, 0.2)]);
        assert_eq!(rate(RATES, Some(&s), "e1", 1500, &motion, ASPECT), (0.5, Need::Explained));
    }

    #[test]
    fn another_event_or_an_empty_result_or_a_stale_one_is_no_confirmation() {
        let motion = [NormBox { x: 0.42, y: 0.3, w: 0.05, h: 0.2 }];
        let s = seen("e0", 1000, vec![person(0.4, 0.2)]);
        assert_eq!(rate(RATES, Some(&s), "e1", 1500, &motion, ASPECT).1, Need::Unconfirmed);
        let gone = seen("e1", 3000, vec![]);
        assert_eq!(rate(RATES, Some(&gone), "e1", 3100, &motion, ASPECT).1, Need::Unconfirmed);
        let s = seen("e1", 1000, vec![person(0.4, 0.2)]);
        // Fresh for 2 s (one slow interval) + 2 s.
        assert_eq!(rate(RATES, Some(&s), "e1", 5000, &motion, ASPECT).1, Need::Explained);
        assert_eq!(rate(RATES, Some(&s), "e1", 5001, &motion, ASPECT).1, Need::Unconfirmed);
    }

    #[test]
    fn motion_elsewhere_brings_the_full_rate_back() {
        let s = seen("e1", 1000, vec![person(0.4, 0.2)]);
        let inside_and_elsewhere =
            [NormBox { x: 0.42, y: 0.3, w: 0.05, h: 0.2 }, NormBox { x: 0.8, y: 0.1, w: 0.05, h: 0.05 }];
        assert_eq!(rate(RATES, Some(&s), "e1", 1000, &inside_and_elsewhere, ASPECT), (2.0, Need::Unexplained));
        // Of the same moment: half its width out is still inside the grown box, a whole width not.
        let shifted = [NormBox { x: 0.36, y: 0.2, w: 0.1, h: 0.4 }];
        assert_eq!(rate(RATES, Some(&s), "e1", 1000, &shifted, ASPECT).1, Need::Explained);
        let walked = [NormBox { x: 0.5, y: 0.2, w: 0.1, h: 0.4 }];
        assert_eq!(rate(RATES, Some(&s), "e1", 1000, &walked, ASPECT).1, Need::Unexplained);
    }

    #[test]
    fn a_person_walking_on_stays_explained_a_runner_does_not() {
        // 0.1 x 0.4 of a 16:9 picture: one height a second is 0.225 of the width across.
        let s = seen("e1", 1000, vec![person(0.4, 0.2)]);
        let walked_a_second = [NormBox { x: 0.6, y: 0.2, w: 0.1, h: 0.4 }];
        assert_eq!(rate(RATES, Some(&s), "e1", 2000, &walked_a_second, ASPECT).1, Need::Explained);
        // The same place half a second after the frame is too far for a walk: full rate.
        assert_eq!(rate(RATES, Some(&s), "e1", 1500, &walked_a_second, ASPECT).1, Need::Unexplained);
        let ran_a_second = [NormBox { x: 0.8, y: 0.2, w: 0.1, h: 0.4 }];
        assert_eq!(rate(RATES, Some(&s), "e1", 2000, &ran_a_second, ASPECT).1, Need::Unexplained);
        // Down the picture a height is 0.4 (no aspect there).
        let came_closer = [NormBox { x: 0.4, y: 0.5, w: 0.1, h: 0.4 }];
        assert_eq!(rate(RATES, Some(&s), "e1", 2000, &came_closer, ASPECT).1, Need::Explained);
        assert_eq!(rate(RATES, Some(&s), "e1", 1200, &came_closer, ASPECT).1, Need::Unexplained);
    }

    #[test]
    fn a_still_post_roll_is_explained_only_by_a_fresh_confirmation() {
        let s = seen("e1", 1000, vec![person(0.4, 0.2)]);
        assert_eq!(rate(RATES, Some(&s), "e1", 3000, &[], ASPECT), (0.5, Need::Explained));
        assert_eq!(rate(RATES, None, "e1", 3000, &[], ASPECT), (2.0, Need::Unconfirmed));
        let gone = seen("e1", 2500, vec![]);
        assert_eq!(rate(RATES, Some(&gone), "e1", 3000, &[], ASPECT).1, Need::Unconfirmed);
    }

    #[test]
    fn off_means_always_the_full_rate() {
        let s = seen("e1", 1000, vec![person(0.4, 0.2)]);
        let off = Rates { full_fps: 2.0, confirmed_fps: 0.0 };
        assert_eq!(rate(off, Some(&s), "e1", 1500, &[], ASPECT).0, 2.0);
    }

    #[test]
    fn the_sampler_counts_frames_the_full_rate_would_have_sent() {
        let mut s = Sampler::default();
        // Frames every 100 ms; 2 s at the slow rate (0.5 fps) against the full 2 fps.
        let mut sent = 0;
        let mut skipped = 0;
        for ts in (0..4000).step_by(100) {
            let (due, skip) = s.due(ts, 0.5, 2.0);
            sent += usize::from(due);
            skipped += usize::from(skip);
        }
        assert_eq!((sent, skipped), (2, 6));
        // At full rate nothing is skipped.
        let mut s = Sampler::default();
        let counts: Vec<(bool, bool)> = (0..2000).step_by(100).map(|ts| s.due(ts, 2.0, 2.0)).collect();
        assert_eq!(counts.iter().filter(|c| c.0).count(), 4);
        assert!(counts.iter().all(|c| !c.1));
    }
}

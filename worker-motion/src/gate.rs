//! The compressed-domain gate (`motion.gate`): a still camera is watched without decoding it.
//!
//! The reader plays the detect stream from nginx-rtmp in process (`crate::rtmp`; any other
//! source through an ffmpeg copying it as FLV, split by [`crate::flv::FlvReader`]): video packets, no
//! decoding. [`Gate`] decides, packet by packet, which ones are decoded (in process,
//! `crate::decode`):
//!
//! - **open** (at start, during motion, presence, an open backup of a priority channel, and
//!   `gate_hold_secs` after): every packet, as a plain reader would;
//! - **closed**: a keyframe at most every `gate_keyframe_secs` (analysed: a slow change that
//!   never shows in packet sizes is still seen; with a longer GOP, every keyframe) and the few
//!   packets after it (decoded, not analysed: they push the keyframe's picture out of the
//!   decoder now instead of a GOP later, none without B-frames); the other packets of the GOP,
//!   and a keyframe not analysed, are kept in memory, undecoded.
//!
//! The gate opens on a P-frame larger than `gate_rise` x the learned quiet level (the 95th
//! percentile of the last [`QUIET_WINDOW`] P-frame sizes seen while nothing happened), or when
//! the analysis reports motion on a keyframe. It then decodes every packet of the GOP it had
//! kept, from the first one not yet decoded, so the frames from the keyframe on reach the
//! detector with their own arrival times: no frame after the last keyframe is lost. It closes
//! only at a keyframe, so the decoder is always fed a keyframe and then an unbroken run of the
//! packets after it: valid by construction, whatever the codec's references.

use std::collections::VecDeque;

/// P-frames the quiet level is learned from (10 s at 10 fps).
pub const QUIET_WINDOW: usize = 100;
/// P-frames seen quiet before the gate may close for the first time.
pub const MIN_QUIET_SAMPLES: usize = 30;
/// Added to the threshold: a P-frame of a perfectly still scene is a few dozen bytes, and a
/// few bytes more are no change.
pub const THRESHOLD_MARGIN_BYTES: f64 = 32.0;
/// After the gate opened, its P-frames are not learned from for this long (the analysis has
/// not yet said whether the rise was motion).
pub const LEARN_PAUSE_MS: i64 = 3_000;
/// A GOP longer than this is not kept: the gate stays open until the next keyframe.
pub const MAX_GOP_BYTES: usize = 8 << 20;
pub const MAX_GOP_PACKETS: usize = 600;

/// Most packets decoded after each keyframe of a closed gate, not analysed, to push its
/// picture out of the decoder: H.264 with B-frames hands a picture on only once up to its
/// reorder depth more packets came in (none without B-frames); without them the keyframe's
/// picture would come out a GOP late. How many is measured on the stream
/// (`Gate::set_pushers`: the decoder's lag, `AvcDecoder::lag`).
pub const MAX_PUSHERS: usize = 4;

/// A keyframe arriving this share of `gate_keyframe_secs` after the last one analysed is due:
/// arrival jitter must not make a GOP exactly that long skip every other keyframe.
const KEYFRAME_DUE_SHARE: f64 = 0.9;

/// A packet for the decoder, as [`Gate::push`] hands it on.
#[derive(Debug, Clone, PartialEq)]
pub struct Feed<T> {
    pub item: T,
    /// When the packet arrived (wall clock, ms): the time its picture is analysed at.
    pub arrived_ms: i64,
    /// Analyse the decoded picture (false: decoded only to push the previous one out).
    pub analyse: bool,
}

/// Why the gate opened (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenReason {
    /// A P-frame larger than the learned quiet level allows.
    SizeRise,
    /// The analysis holds it open (motion, presence, a backup being sampled).
    Hold,
    /// The GOP is too long to keep in memory.
    LongGop,
}

/// What one packet did to the gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<T> {
    pub feed: Vec<Feed<T>>,
    /// The gate opened on this packet.
    pub opened: Option<OpenReason>,
    /// The gate closed on this packet (a keyframe).
    pub closed: bool,
    /// This packet is not decoded (the scene was judged still without it).
    pub skipped: bool,
}

struct Kept<T> {
    item: T,
    arrived_ms: i64,
}

/// The gate's state for one channel (pure logic: packets in, decoder feed out).
pub struct Gate<T> {
    rise: f64,
    open: bool,
    /// No keyframe yet: nothing can be decoded.
    seen_keyframe: bool,
    /// P-frame sizes seen while nothing happened.
    quiet: VecDeque<usize>,
    /// While closed: the current GOP, from its keyframe; `fed` of them went to the decoder.
    gop: Vec<Kept<T>>,
    gop_bytes: usize,
    fed: usize,
    learn_after_ms: i64,
    pushers: usize,
    /// A closed gate analyses a keyframe only this long after the last one analysed
    /// (`gate_keyframe_secs` less the jitter leeway).
    keyframe_due_after_ms: i64,
    last_keyframe_analysed_ms: Option<i64>,
}

impl<T: Clone> Gate<T> {
    /// A gate that opens at `rise` x the quiet level and, closed, analyses a keyframe at most
    /// every `keyframe_every_ms` (0: every one); it starts open.
    pub fn new(rise: f64, keyframe_every_ms: i64) -> Self {
        Self {
            keyframe_due_after_ms: (keyframe_every_ms as f64 * KEYFRAME_DUE_SHARE) as i64,
            last_keyframe_analysed_ms: None,
            rise,
            open: true,
            seen_keyframe: false,
            quiet: VecDeque::with_capacity(QUIET_WINDOW),
            gop: Vec::new(),
            gop_bytes: 0,
            fed: 0,
            learn_after_ms: 0,
            pushers: 1,
        }
    }

    /// Packets the decoder holds before it hands a picture on (measured; 0..=[`MAX_PUSHERS`]).
    pub fn set_pushers(&mut self, n: usize) {
        self.pushers = n.min(MAX_PUSHERS);
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The size above which a P-frame opens the gate, once enough quiet was seen.
    pub fn threshold(&self) -> Option<f64> {
        if self.quiet.len() < MIN_QUIET_SAMPLES {
            return None;
        }
        let mut sizes: Vec<usize> = self.quiet.iter().copied().collect();
        sizes.sort_unstable();
        let p95 = sizes[((sizes.len() - 1) as f64 * 0.95).round() as usize];
        Some(self.rise * p95 as f64 + THRESHOLD_MARGIN_BYTES)
    }

    /// One video packet of `size` bytes that arrived at `now_ms`; `hold`: the analysis wants
    /// every frame now (motion, presence, an event, a sampled backup, or its hold time after).
    pub fn push(&mut self, item: T, size: usize, keyframe: bool, now_ms: i64, hold: bool) -> Step<T> {
        let mut step = Step { feed: Vec::new(), opened: None, closed: false, skipped: false };
        if keyframe {
            self.seen_keyframe = true;
            self.gop.clear();
            self.gop_bytes = 0;
            self.fed = 0;
            if self.open && !hold && self.threshold().is_some() {
                self.open = false;
                step.closed = true;
            } else if !self.open && hold {
                self.open = true;
                self.learn_after_ms = now_ms + LEARN_PAUSE_MS;
                step.opened = Some(OpenReason::Hold);
            }
            let due = self.last_keyframe_analysed_ms.is_none_or(|t| now_ms - t >= self.keyframe_due_after_ms);
            if self.open || step.closed || due {
                step.feed.push(Feed { item: item.clone(), arrived_ms: now_ms, analyse: true });
                self.last_keyframe_analysed_ms = Some(now_ms);
                self.fed = 1;
            } else {
                // Kept undecoded: the GOP an opening gate decodes still starts at it.
                step.skipped = true;
            }
            if !self.open {
                self.gop.push(Kept { item, arrived_ms: now_ms });
                self.gop_bytes += size;
            }
            return step;
        }
        if !self.seen_keyframe {
            // Undecodable without its keyframe; a plain reader drops it too.
            step.skipped = true;
            return step;
        }
        let rise = self.threshold().is_some_and(|t| size as f64 > t);
        if self.open {
            if !hold && !rise && now_ms >= self.learn_after_ms {
                self.learn(size);
            }
            step.feed.push(Feed { item, arrived_ms: now_ms, analyse: true });
            return step;
        }
        self.gop.push(Kept { item, arrived_ms: now_ms });
        self.gop_bytes += size;
        let reason = if hold {
            Some(OpenReason::Hold)
        } else if rise {
            Some(OpenReason::SizeRise)
        } else if self.gop_bytes > MAX_GOP_BYTES || self.gop.len() > MAX_GOP_PACKETS {
            Some(OpenReason::LongGop)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                self.open = true;
                self.learn_after_ms = now_ms + LEARN_PAUSE_MS;
                step.opened = Some(reason);
                // Every packet of the GOP not yet decoded, in order, analysed.
                for k in self.gop.drain(..).skip(self.fed) {
                    step.feed.push(Feed { item: k.item, arrived_ms: k.arrived_ms, analyse: true });
                }
                self.gop_bytes = 0;
                self.fed = 0;
            }
            None => {
                self.learn(size);
                if self.fed == self.gop.len() - 1 && self.fed <= self.pushers {
                    // The packets right after the keyframe push its picture out of the decoder.
                    let k = &self.gop[self.fed];
                    step.feed.push(Feed { item: k.item.clone(), arrived_ms: k.arrived_ms, analyse: false });
                    self.fed += 1;
                } else {
                    step.skipped = true;
                }
            }
        }
        step
    }

    fn learn(&mut self, size: usize) {
        if self.quiet.len() == QUIET_WINDOW {
            self.quiet.pop_front();
        }
        self.quiet.push_back(size);
    }

    /// Packets kept undecoded (for tests and memory checks).
    pub fn kept(&self) -> (usize, usize) {
        (self.gop.len(), self.gop_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 10 fps stream with a GOP of 20 (or `gop`): packet `i` arrives at `i * 100` ms.
    struct Stream {
        gate: Gate<usize>,
        next: usize,
        fed: Vec<Feed<usize>>,
        gop: usize,
    }

    impl Stream {
        /// The default setting (a keyframe analysed at most every 2 s) and a 2 s GOP.
        fn new() -> Self {
            Self::with(20, 2000)
        }
        fn with(gop: usize, keyframe_every_ms: i64) -> Self {
            let mut gate = Gate::new(1.5, keyframe_every_ms);
            gate.set_pushers(2);
            Self { gate, next: 0, fed: Vec::new(), gop }
        }
        fn analysed_items(&self) -> Vec<usize> {
            self.fed.iter().filter(|f| f.analyse).map(|f| f.item).collect()
        }
        /// Pushes packets of `size` (keyframes 4000 bytes) with `hold` for `n` packets.
        fn play(&mut self, n: usize, size: usize, hold: bool) -> Vec<Step<usize>> {
            (0..n)
                .map(|_| {
                    let i = self.next;
                    self.next += 1;
                    let key = i % self.gop == 0;
                    let step = self.gate.push(i, if key { 4000 } else { size }, key, i as i64 * 100, hold);
                    self.fed.extend(step.feed.iter().cloned());
                    step
                })
                .collect()
        }
        fn fed_items(&self) -> Vec<usize> {
            self.fed.iter().map(|f| f.item).collect()
        }
    }

    #[test]
    fn a_still_stream_decodes_only_keyframes_and_the_packets_that_push_them_out() {
        let mut s = Stream::new();
        // Open while it learns: 2 GOPs of quiet, everything decoded.
        s.play(40, 100, false);
        assert_eq!(s.fed_items(), (0..40).collect::<Vec<_>>());
        s.fed.clear();
        let steps = s.play(60, 100, false);
        assert!(steps[0].closed, "closes at the first keyframe after learning");
        assert_eq!(s.fed_items(), vec![40, 41, 42, 60, 61, 62, 80, 81, 82]);
        let analysed: Vec<usize> = s.fed.iter().filter(|f| f.analyse).map(|f| f.item).collect();
        assert_eq!(analysed, vec![40, 60, 80], "keyframes are analysed, the pushers are not");
        assert_eq!(steps.iter().filter(|st| st.skipped).count(), 51);
        assert_eq!(s.gate.kept().0, 20, "the current GOP is kept");
    }

    #[test]
    fn a_p_frame_rise_decodes_the_whole_gop_from_its_keyframe_in_order() {
        let mut s = Stream::new();
        s.play(45, 100, false); // closed at 40, 41 and 42 fed
        s.fed.clear();
        let steps = s.play(1, 400, false); // packet 45: 4x the quiet level
        assert_eq!(steps[0].opened, Some(OpenReason::SizeRise));
        assert_eq!(s.fed_items(), vec![43, 44, 45], "every packet after the last one decoded");
        assert!(s.fed.iter().all(|f| f.analyse));
        assert_eq!(s.fed[0].arrived_ms, 4300, "each with its own arrival time");
        s.fed.clear();
        s.play(3, 100, false);
        assert_eq!(s.fed_items(), vec![46, 47, 48], "open: every packet");
        assert_eq!(s.gate.kept(), (0, 0), "nothing kept while open");
    }

    #[test]
    fn a_short_gop_is_analysed_every_gate_keyframe_secs_and_an_opening_gate_decodes_from_its_keyframe() {
        // A camera with a keyframe every 0.5 s: closed, one keyframe in four is analysed.
        let mut s = Stream::with(5, 2000);
        s.play(60, 100, false);
        assert!(!s.gate.is_open(), "closed after learning");
        s.fed.clear();
        let steps = s.play(80, 100, false);
        let analysed = s.analysed_items();
        assert_eq!(analysed.len(), 4, "8 s of a still scene: {analysed:?}");
        assert!(analysed.windows(2).all(|w| w[1] - w[0] == 20), "every 2 s: {analysed:?}");
        assert!(analysed.iter().all(|i| i % 5 == 0), "keyframes only: {analysed:?}");
        let skipped_keys = steps.iter().zip(60..).filter(|(st, i)| i % 5 == 0 && st.skipped).count();
        assert_eq!(skipped_keys, 12, "the other keyframes are kept, not decoded");
        // A rise in a GOP whose keyframe was not analysed: decoding starts at that keyframe.
        let next = loop {
            let i = s.next;
            if s.play(1, 100, false)[0].skipped && i % 5 == 0 {
                break i;
            }
        };
        s.play(1, 100, false);
        assert_eq!(s.gate.kept().0, 2, "its keyframe and the P-frame after it are kept");
        s.fed.clear();
        let steps = s.play(1, 400, false);
        assert_eq!(steps[0].opened, Some(OpenReason::SizeRise));
        assert_eq!(s.fed_items(), vec![next, next + 1, next + 2], "from the kept keyframe, in order");
        assert!(s.fed.iter().all(|f| f.analyse));
        assert_eq!(s.fed[0].arrived_ms, next as i64 * 100, "with its own arrival time");
    }

    #[test]
    fn every_keyframe_is_analysed_with_zero_or_a_gop_as_long_as_the_setting_even_when_packets_jitter() {
        let mut s = Stream::with(5, 0);
        s.play(60, 100, false);
        s.fed.clear();
        s.play(40, 100, false);
        assert_eq!(s.analysed_items(), vec![60, 65, 70, 75, 80, 85, 90, 95], "0: every keyframe");
        // A 2 s GOP under a 2 s setting, keyframes arriving 1.95 s apart: none is skipped.
        let mut g: Gate<u32> = Gate::new(1.5, 2000);
        let mut analysed = 0;
        let mut t = 0;
        for i in 0..200u32 {
            let key = i % 20 == 0;
            t += if key { 50 } else { 100 };
            let st = g.push(i, if key { 4000 } else { 100 }, key, t, false);
            assert!(!(key && st.skipped), "keyframe {i} at {t} ms skipped");
            analysed += st.feed.iter().filter(|f| key && f.analyse).count();
        }
        assert!(!g.is_open());
        assert_eq!(analysed, 10);
    }

    #[test]
    fn a_small_rise_or_noise_within_the_learned_level_keeps_it_closed() {
        let mut s = Stream::new();
        // A noisy scene: P-frames between 800 and 1200 bytes.
        for i in 0..80 {
            s.play(1, 800 + (i * 37) % 400, false);
        }
        assert!(!s.gate.is_open());
        let steps = s.play(19, 1500, false); // 1.25x the top of the noise: below 1.5x
        assert!(steps.iter().all(|st| st.opened.is_none()), "{:?}", s.gate.threshold());
        // Those were quiet too: the level followed them up (1.5 x 1500 + margin).
        let steps = s.play(1, 2400, false);
        assert_eq!(steps[0].opened, Some(OpenReason::SizeRise));
    }

    #[test]
    fn hold_opens_it_and_keeps_it_open_it_closes_only_at_a_keyframe_after_hold() {
        let mut s = Stream::new();
        s.play(50, 100, false); // closed since 40
        let steps = s.play(1, 100, true); // the keyframe check at 40 showed motion
        assert_eq!(steps[0].opened, Some(OpenReason::Hold));
        s.play(20, 100, true);
        s.fed.clear();
        // Hold over at packet 71: stays open until the keyframe at 80.
        let steps = s.play(9, 100, false);
        assert!(steps.iter().all(|st| !st.closed && !st.skipped));
        assert_eq!(s.fed_items(), (71..80).collect::<Vec<_>>());
        let steps = s.play(1, 100, false);
        assert!(steps[0].closed);
    }

    #[test]
    fn nothing_before_the_first_keyframe_is_fed_and_it_never_closes_before_learning() {
        let mut g: Gate<u32> = Gate::new(1.5, 2000);
        assert!(g.push(1, 100, false, 0, false).skipped);
        let st = g.push(2, 4000, true, 100, false);
        assert!(!st.closed && st.feed.len() == 1, "starts open");
        for i in 0..(MIN_QUIET_SAMPLES as u32 - 1) {
            g.push(3 + i, 100, false, 200 + i as i64 * 100, false);
        }
        assert!(!g.push(99, 4000, true, 9000, false).closed, "too few quiet samples yet");
    }

    #[test]
    fn a_gop_too_long_to_keep_opens_the_gate() {
        let mut s = Stream::new();
        s.play(41, 100, false); // closed at 40
        let mut g = s.gate;
        let mut opened = None;
        for i in 0..MAX_GOP_PACKETS as i64 + 1 {
            let st = g.push(1000 + i as usize, 100, false, 10_000 + i * 100, false);
            if st.opened.is_some() {
                opened = st.opened;
                break;
            }
        }
        assert_eq!(opened, Some(OpenReason::LongGop));
        assert_eq!(g.kept(), (0, 0), "nothing kept once open");
    }
}

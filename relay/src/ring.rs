//! The relay's own rolling buffer, for main streams nginx-rtmp cannot carry (H.265).
//!
//! ffmpeg copies the camera's stream into MPEG-TS parts with its segment muxer (`.part<N>.ts`,
//! cut at the first keyframe after [`FRAGMENT_SECS`]) and lists each finished part in a CSV
//! file. The relay takes a part once the next one exists (ffmpeg closes a part before it opens
//! the next) or the process has ended, renames it to the wall-clock ms of its first frame and
//! rewrites `index.m3u8` atomically: the form of nginx-rtmp's own buffer with
//! `hls_fragment_naming system`, so worker-record reads either buffer the same way. Fragments
//! leave the playlist after `buffer_secs` and the disk `buffer_secs` later, so a record worker
//! that just read the playlist still finds them.

use cctv_common::playlist::{Entry, Playlist};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

/// Fragment length asked of ffmpeg, seconds (cut at the next keyframe after it).
pub const FRAGMENT_SECS: u32 = 2;
/// A fragment whose clock-given start is within this of the previous fragment's end follows
/// it exactly: the poll's jitter does not show in the names, and a real gap or restart does.
pub const JOIN_MS: i64 = 500;
const LIST: &str = ".segments.csv";
const PLAYLIST: &str = "index.m3u8";

/// One fragment in the buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub start_ms: i64,
    pub duration_ms: i64,
    /// The first fragment of an ffmpeg run (the camera reconnected).
    pub discontinuity: bool,
}

impl Fragment {
    pub fn name(&self) -> String {
        format!("{}.ts", self.start_ms)
    }
    fn end_ms(&self) -> i64 {
        self.start_ms + self.duration_ms
    }
}

/// The wall-clock start of a fragment seen finished at `seen_ms`: the clock says
/// `seen_ms - duration_ms` (a part ends when the next keyframe arrives); a fragment that
/// continues the previous one without a discontinuity starts exactly at its end when the clock
/// agrees within [`JOIN_MS`]. Never before the previous fragment's start.
pub fn fragment_start(prev: Option<&Fragment>, seen_ms: i64, duration_ms: i64, discontinuity: bool) -> i64 {
    let clock = seen_ms - duration_ms;
    match prev {
        Some(p) if !discontinuity && (clock - p.end_ms()).abs() <= JOIN_MS => p.end_ms(),
        Some(p) => clock.max(p.start_ms + 1),
        None => clock,
    }
}

/// A finished part in ffmpeg's segment list: `.part3.ts,6.04,8.00`.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    index: u64,
    duration_ms: i64,
}

fn parse_list(text: &str, frame_ms: i64) -> Vec<Part> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(',');
            let name = f.next()?;
            let index = name.strip_prefix(".part")?.strip_suffix(".ts")?.parse().ok()?;
            let (start, end): (f64, f64) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            // The list gives the last frame's time: the part lasts one frame more.
            let duration_ms = ((end - start) * 1000.0).round() as i64 + frame_ms;
            Some(Part { index, duration_ms: duration_ms.max(1) })
        })
        .collect()
}

fn part_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!(".part{index}.ts"))
}

/// One channel's buffer directory.
pub struct Ring {
    dir: PathBuf,
    keep_ms: i64,
    /// Listed in the playlist, oldest first.
    listed: VecDeque<Fragment>,
    /// Out of the playlist, still on disk: (name, when it left the playlist).
    retired: VecDeque<(String, i64)>,
    /// Media sequence number of `listed[0]`.
    sequence: u64,
    /// Last part taken in the current ffmpeg run.
    last_part: Option<u64>,
    run_started: bool,
    /// Duration of one frame (the segment list gives the last frame's time, not the end).
    frame_ms: i64,
}

impl Ring {
    /// Opens `dir` (created), keeping what an earlier relay left listed in its playlist.
    pub fn open(dir: PathBuf, keep_secs: u32) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut ring = Ring {
            dir,
            keep_ms: i64::from(keep_secs) * 1000,
            listed: VecDeque::new(),
            retired: VecDeque::new(),
            sequence: 0,
            last_part: None,
            run_started: false,
            frame_ms: 0,
        };
        if let Ok(text) = std::fs::read_to_string(ring.dir.join(PLAYLIST)) {
            ring.load(&text);
        }
        // Files no playlist lists any more (an earlier relay's leftovers) go.
        let listed: std::collections::HashSet<String> = ring.listed.iter().map(Fragment::name).collect();
        for entry in std::fs::read_dir(&ring.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".ts") && !listed.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ring)
    }

    fn load(&mut self, text: &str) {
        let Some(list) = Playlist::parse(text) else { return };
        self.sequence = list.sequence;
        self.listed.extend(list.entries.into_iter().map(|e| Fragment {
            start_ms: e.start_ms,
            duration_ms: e.duration_ms,
            discontinuity: e.discontinuity,
        }));
    }

    /// A new ffmpeg run is about to start: its parts number from 0 again and its first
    /// fragment follows a discontinuity. `fps`: the stream's rate, when known.
    pub fn begin_run(&mut self, fps: Option<f64>) {
        self.last_part = None;
        self.run_started = true;
        self.frame_ms = fps.filter(|f| *f > 0.0).map_or(0, |f| (1000.0 / f).round() as i64);
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".part") || name == LIST {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// ffmpeg's output options and output for this buffer (after the stream's codec options).
    pub fn output_args(&self) -> Vec<String> {
        let list = self.dir.join(LIST);
        let parts = self.dir.join(".part%d.ts");
        [
            "-f",
            "segment",
            "-segment_time",
            &FRAGMENT_SECS.to_string(),
            "-segment_format",
            "mpegts",
            "-segment_list_type",
            "csv",
            "-segment_list_size",
            "16",
            "-segment_list",
            &list.to_string_lossy(),
            &parts.to_string_lossy(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Takes every finished part: one whose successor exists, or every listed one once
    /// `ended` (ffmpeg exited and wrote its last part). Returns how many were taken.
    pub fn poll(&mut self, now_ms: i64, ended: bool) -> io::Result<usize> {
        let text = match std::fs::read_to_string(self.dir.join(LIST)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut taken = 0;
        for part in parse_list(&text, self.frame_ms) {
            if self.last_part.is_some_and(|l| part.index <= l) {
                continue;
            }
            if !ended && !part_path(&self.dir, part.index + 1).exists() {
                break;
            }
            self.take(&part, now_ms)?;
            taken += 1;
        }
        if taken > 0 {
            self.write_playlist()?;
        }
        Ok(taken)
    }

    fn take(&mut self, part: &Part, now_ms: i64) -> io::Result<()> {
        let discontinuity = self.run_started;
        let mut start_ms = fragment_start(self.listed.back(), now_ms, part.duration_ms, discontinuity);
        while self.dir.join(format!("{start_ms}.ts")).exists() {
            start_ms += 1;
        }
        let frag = Fragment { start_ms, duration_ms: part.duration_ms, discontinuity };
        let from = part_path(&self.dir, part.index);
        match std::fs::rename(&from, self.dir.join(frag.name())) {
            Ok(()) => {
                self.listed.push_back(frag);
                self.run_started = false;
            }
            // Listed but gone (removed by hand): nothing to take.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.last_part = Some(part.index);
        // Out of the playlist past the window; off the disk one window later.
        let newest_end = self.listed.back().map_or(now_ms, Fragment::end_ms);
        while self.listed.len() > 1 && self.listed.front().is_some_and(|f| newest_end - f.end_ms() > self.keep_ms) {
            if let Some(f) = self.listed.pop_front() {
                self.retired.push_back((f.name(), now_ms));
                self.sequence += 1;
            }
        }
        while self.retired.front().is_some_and(|(_, at)| now_ms - at > self.keep_ms) {
            if let Some((name, _)) = self.retired.pop_front() {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
        Ok(())
    }

    /// The playlist text (nginx-rtmp's form).
    pub fn playlist(&self) -> String {
        let entries = self
            .listed
            .iter()
            .map(|f| Entry {
                start_ms: f.start_ms,
                duration_ms: f.duration_ms,
                discontinuity: f.discontinuity,
                uri: f.name(),
            })
            .collect();
        Playlist { sequence: self.sequence, entries }.render(FRAGMENT_SECS)
    }

    fn write_playlist(&self) -> io::Result<()> {
        let tmp = self.dir.join(".index.m3u8.tmp");
        std::fs::write(&tmp, self.playlist())?;
        std::fs::rename(tmp, self.dir.join(PLAYLIST))
    }

    /// The longest fragment listed, ms (0 when none): the camera's longest GOP, about.
    pub fn longest_ms(&self) -> i64 {
        self.listed.iter().map(|f| f.duration_ms).max().unwrap_or(0)
    }

    pub fn listed(&self) -> impl Iterator<Item = &Fragment> {
        self.listed.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_follow_each_other_exactly_and_restarts_and_gaps_take_the_clock() {
        let first = Fragment { start_ms: 10_000, duration_ms: 2_000, discontinuity: true };
        // Seen 120 ms late (the poll): joined to the previous end.
        assert_eq!(fragment_start(Some(&first), 14_120, 2_000, false), 12_000);
        assert_eq!(fragment_start(Some(&first), 13_600, 2_000, false), 12_000);
        // The camera was silent 5 s: a gap on the timeline, not hidden.
        assert_eq!(fragment_start(Some(&first), 19_000, 2_000, false), 17_000);
        // A new ffmpeg run: the clock, even when close.
        assert_eq!(fragment_start(Some(&first), 14_100, 2_000, true), 12_100);
        // A burst of old video: never before the previous start.
        assert_eq!(fragment_start(Some(&first), 9_000, 2_000, false), 10_001);
        assert_eq!(fragment_start(None, 5_000, 2_000, false), 3_000);
    }

    #[test]
    fn parts_are_taken_once_their_successor_exists_and_listed_like_nginx_rtmp() {
        let dir = tempfile::tempdir().unwrap();
        let ring_dir = dir.path().join("ch1");
        let mut ring = Ring::open(ring_dir.clone(), 30).unwrap();
        ring.begin_run(Some(25.0));
        let write_list = |rows: &[(u64, f64, f64)]| {
            let text: String = rows.iter().map(|(i, s, e)| format!(".part{i}.ts,{s:.6},{e:.6}\n")).collect();
            std::fs::write(ring_dir.join(LIST), text).unwrap();
        };
        std::fs::write(part_path(&ring_dir, 0), b"part0").unwrap();
        write_list(&[(0, 0.0, 1.96)]);
        assert_eq!(ring.poll(100_000, false).unwrap(), 0, "part 1 not open yet: part 0 may be unflushed");
        std::fs::write(part_path(&ring_dir, 1), b"part1").unwrap();
        assert_eq!(ring.poll(100_050, false).unwrap(), 1);
        assert_eq!(ring.poll(100_100, false).unwrap(), 0, "taken once");
        let f0 = ring.listed().next().unwrap().clone();
        assert_eq!((f0.start_ms, f0.duration_ms, f0.discontinuity), (98_050, 2_000, true));
        assert_eq!(std::fs::read(ring_dir.join("98050.ts")).unwrap(), b"part0");
        write_list(&[(0, 0.0, 1.96), (1, 2.0, 3.96)]);
        // ffmpeg ended: its last part is taken without a successor.
        assert_eq!(ring.poll(102_130, true).unwrap(), 1);
        let text = std::fs::read_to_string(ring_dir.join(PLAYLIST)).unwrap();
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:2\n\
             #EXT-X-DISCONTINUITY\n#EXTINF:2.000,\n98050.ts\n#EXTINF:2.000,\n100050.ts\n"
        );
        // A relay started again keeps the buffer; a new run marks its first fragment.
        drop(ring);
        let mut ring = Ring::open(ring_dir.clone(), 30).unwrap();
        assert_eq!(ring.listed().count(), 2);
        ring.begin_run(None);
        assert!(!part_path(&ring_dir, 1).exists() && !ring_dir.join(LIST).exists(), "the old run's leftovers go");
        std::fs::write(part_path(&ring_dir, 0), b"again").unwrap();
        write_list(&[(0, 0.0, 2.0)]);
        assert_eq!(ring.poll(110_000, true).unwrap(), 1);
        let last = ring.listed().last().unwrap();
        assert!(last.discontinuity && last.start_ms == 108_000, "{last:?}");
    }

    #[test]
    fn the_window_rotates_and_files_stay_one_window_longer() {
        let dir = tempfile::tempdir().unwrap();
        let ring_dir = dir.path().join("ch2");
        let mut ring = Ring::open(ring_dir.clone(), 30).unwrap();
        ring.begin_run(None);
        let mut rows = String::new();
        let mut now = 1_000_000;
        for i in 0..40u64 {
            rows.push_str(&format!(".part{i}.ts,{}.0,{}.0\n", 2 * i, 2 * i + 2));
            std::fs::write(ring_dir.join(LIST), &rows).unwrap();
            std::fs::write(part_path(&ring_dir, i), b"x").unwrap();
            std::fs::write(part_path(&ring_dir, i + 1), b"").unwrap();
            now += 2_000;
            assert_eq!(ring.poll(now, false).unwrap(), 1);
        }
        let listed: Vec<_> = ring.listed().cloned().collect();
        let span = listed.last().unwrap().end_ms() - listed[0].start_ms;
        assert!((30_000..=32_000).contains(&span), "{span}");
        let text = ring.playlist();
        assert!(text.contains(&format!("#EXT-X-MEDIA-SEQUENCE:{}", 40 - listed.len())), "{text}");
        let on_disk = std::fs::read_dir(&ring_dir)
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.') && e.file_name() != PLAYLIST)
            .count();
        assert!(on_disk > listed.len() && on_disk <= listed.len() * 2 + 1, "{on_disk} files for {}", listed.len());
        assert!(listed.windows(2).all(|w| w[1].start_ms == w[0].end_ms()), "no gap, no overlap");
    }
}

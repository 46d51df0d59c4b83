//! Export of a time range of one channel: one MP4 made by stream copy from the backup files
//! that cover it, cut at keyframes, with the holes (time no file covers) listed, never papered
//! over. Used by `GET /api/export` and `cctv export`.
//!
//! [`plan`] decides, as a pure function, which part of which file goes in and where the holes
//! are; [`write`] runs one ffmpeg (concat demuxer with `inpoint`/`outpoint`, `-c copy`) into a
//! hidden `.part` file renamed once whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::events::{BackupEvent, BackupEventKind};
use crate::ffmpeg::{FfmpegError, FfmpegProcess};

/// Gaps shorter than this between two files are not holes (file boundaries of one recording
/// are contiguous to within a frame or two).
pub const HOLE_TOLERANCE_MS: i64 = 1_000;

/// A backup file on this host and the wall-clock time it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    pub start_ms: i64,
    pub end_ms: i64,
    /// The file's video codec (`h264`, `hevc`), when known: files of two codecs cannot be
    /// joined by stream copy.
    pub codec: Option<String>,
}

/// A part of one file in the export: `[from_ms, to_ms)` of wall-clock time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Piece {
    pub file: String,
    pub from_ms: i64,
    pub to_ms: i64,
    #[serde(skip)]
    path: PathBuf,
    /// Seconds into the file.
    #[serde(skip)]
    inpoint_s: f64,
    #[serde(skip)]
    outpoint_s: f64,
}

/// Time in the range no file covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Hole {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// What an export of `[from_ms, to_ms)` is made of.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExportPlan {
    pub channel: u32,
    pub from_ms: i64,
    pub to_ms: i64,
    pub pieces: Vec<Piece>,
    pub holes: Vec<Hole>,
}

impl ExportPlan {
    /// Seconds of video the export holds (before keyframe alignment).
    pub fn covered_secs(&self) -> f64 {
        self.pieces.iter().map(|p| (p.to_ms - p.from_ms) as f64 / 1000.0).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("channel {channel}: the range is empty (from {from_ms} is not before to {to_ms})")]
    EmptyRange { channel: u32, from_ms: i64, to_ms: i64 },
    #[error("channel {channel}: no backup file on this host covers {from_ms}..{to_ms}")]
    NothingCovered { channel: u32, from_ms: i64, to_ms: i64 },
    #[error(
        "channel {channel}: the range spans files of two codecs ({first} and {second}), which stream copy cannot \
         join: export the ranges on either side of the change separately"
    )]
    MixedCodecs { channel: u32, first: String, second: String },
    #[error("channel {channel}: writing {path}: {source}")]
    Io { channel: u32, path: PathBuf, source: std::io::Error },
    #[error("channel {channel}: {source}")]
    Ffmpeg { channel: u32, source: FfmpegError },
}

/// The pieces and holes of an export of `[from_ms, to_ms)` from `sources` (any order; they may
/// overlap: each moment comes from the first file, by start, that covers it, never twice).
pub fn plan(channel: u32, sources: &[Source], from_ms: i64, to_ms: i64) -> Result<ExportPlan, ExportError> {
    if from_ms >= to_ms {
        return Err(ExportError::EmptyRange { channel, from_ms, to_ms });
    }
    let mut sorted: Vec<&Source> = sources.iter().filter(|s| s.end_ms > from_ms && s.start_ms < to_ms).collect();
    sorted.sort_by_key(|s| (s.start_ms, s.end_ms));
    let mut pieces: Vec<Piece> = Vec::new();
    let mut holes = Vec::new();
    let mut codec: Option<&str> = None;
    let mut cursor = from_ms;
    for s in sorted {
        if s.end_ms <= cursor {
            continue; // covered already
        }
        if s.start_ms > cursor + HOLE_TOLERANCE_MS {
            holes.push(Hole { from_ms: cursor, to_ms: s.start_ms });
        }
        if let (Some(first), Some(this)) = (codec, s.codec.as_deref()) {
            if first != this {
                return Err(ExportError::MixedCodecs { channel, first: first.into(), second: this.into() });
            }
        }
        codec = codec.or(s.codec.as_deref());
        let from = s.start_ms.max(cursor);
        let to = s.end_ms.min(to_ms);
        pieces.push(Piece {
            file: s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            from_ms: from,
            to_ms: to,
            path: s.path.clone(),
            inpoint_s: (from - s.start_ms) as f64 / 1000.0,
            outpoint_s: (to - s.start_ms) as f64 / 1000.0,
        });
        cursor = to;
        if cursor >= to_ms {
            break;
        }
    }
    if pieces.is_empty() {
        return Err(ExportError::NothingCovered { channel, from_ms, to_ms });
    }
    if cursor < to_ms - HOLE_TOLERANCE_MS {
        holes.push(Hole { from_ms: cursor, to_ms });
    }
    Ok(ExportPlan { channel, from_ms, to_ms, pieces, holes })
}

/// The sources of `channel` among the backup events `events` (a stream read newest or oldest
/// first): files written and not deleted since, found in `backup_dir`.
pub fn sources(events: &[BackupEvent], channel: u32, backup_dir: &Path) -> Vec<Source> {
    let deleted: std::collections::HashSet<&str> =
        events.iter().filter(|e| e.kind == BackupEventKind::Deleted).filter_map(|e| e.file.as_deref()).collect();
    events
        .iter()
        .filter(|e| e.kind == BackupEventKind::File && e.channel == channel)
        .filter_map(|e| {
            let name = e.file.as_deref().and_then(|f| Path::new(f).file_name())?.to_str()?;
            if deleted.contains(name) || deleted.contains(e.file.as_deref()?) || !crate::naming::is_backup_name(name) {
                return None;
            }
            let path = backup_dir.join(name);
            path.is_file().then(|| Source {
                path,
                start_ms: e.start_ms,
                end_ms: e.end_ms,
                codec: e.video_codec.clone(),
            })
        })
        .collect()
}

/// The ffconcat list of `plan`.
fn concat_list(plan: &ExportPlan) -> String {
    let mut list = String::from("ffconcat version 1.0\n");
    for p in &plan.pieces {
        let path = p.path.display().to_string().replace('\'', r"'\''");
        list.push_str(&format!("file '{path}'\ninpoint {:.3}\noutpoint {:.3}\n", p.inpoint_s, p.outpoint_s));
    }
    list
}

/// Writes `plan` as one MP4 at `out`: stream copy (video, and audio when every file has it),
/// each piece starting at the keyframe at or before its moment; written as a hidden `.part`
/// beside `out` and renamed once whole, so `out` never exists half-written.
pub fn write(plan: &ExportPlan, out: &Path, timeout: Duration) -> Result<(), ExportError> {
    let channel = plan.channel;
    let io = |path: &Path, source| ExportError::Io { channel, path: path.to_path_buf(), source };
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export.mp4".into());
    let list = dir.join(format!(".export-{}.ffconcat", uuid::Uuid::new_v4().simple()));
    std::fs::write(&list, concat_list(plan)).map_err(|e| io(&list, e))?;
    let part = dir.join(format!(".{name}.part"));
    let audio = plan.pieces.iter().all(|p| has_audio(&p.path));
    let mut cmd = crate::ffmpeg::command();
    cmd.args(["-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i"]).arg(list.display().to_string());
    cmd.args(["-map", "0:v:0"]);
    if audio {
        cmd.args(["-map", "0:a:0"]);
    }
    cmd.args(["-c", "copy", "-avoid_negative_ts", "make_zero", "-movflags", "+faststart", "-f", "mp4"]);
    cmd.arg(part.display().to_string());
    let result = (|| {
        let mut ffmpeg = FfmpegProcess::spawn(format!("export ch{channel}"), cmd, false)
            .map_err(|source| ExportError::Ffmpeg { channel, source })?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = ffmpeg.try_wait() {
                if !status.success() {
                    return Err(ExportError::Ffmpeg {
                        channel,
                        source: ffmpeg.failure(format!("exited with {status}")),
                    });
                }
                break;
            }
            if std::time::Instant::now() >= deadline {
                ffmpeg.stop(Duration::from_secs(2));
                return Err(ExportError::Ffmpeg {
                    channel,
                    source: ffmpeg.failure(format!("did not finish within {} s", timeout.as_secs())),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::rename(&part, out).map_err(|e| io(out, e))
    })();
    let _ = std::fs::remove_file(&list);
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Whether the file has an audio stream (a file that cannot be probed counts as none).
fn has_audio(path: &Path) -> bool {
    crate::probe::probe(&path.to_string_lossy(), Duration::from_secs(10)).is_ok_and(|p| p.audio.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, start_ms: i64, end_ms: i64) -> Source {
        Source { path: PathBuf::from(format!("/b/{name}")), start_ms, end_ms, codec: Some("h264".into()) }
    }

    fn spans(p: &ExportPlan) -> Vec<(&str, i64, i64)> {
        p.pieces.iter().map(|x| (x.file.as_str(), x.from_ms, x.to_ms)).collect()
    }

    #[test]
    fn a_range_across_two_contiguous_files_takes_the_end_of_one_and_the_start_of_the_next() {
        let files = [src("b.mp4", 20_000, 40_000), src("a.mp4", 0, 20_040)];
        let p = plan(1, &files, 15_000, 25_000).unwrap();
        assert_eq!(spans(&p), [("a.mp4", 15_000, 20_040), ("b.mp4", 20_040, 25_000)], "no second twice");
        assert!(p.holes.is_empty(), "{:?}", p.holes);
        assert_eq!((p.pieces[0].inpoint_s, p.pieces[0].outpoint_s), (15.0, 20.04));
        assert_eq!((p.pieces[1].inpoint_s, p.pieces[1].outpoint_s), (0.04, 5.0));
        assert!((p.covered_secs() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn time_no_file_covers_is_a_hole_at_the_start_between_and_at_the_end() {
        let files = [src("a.mp4", 10_000, 20_000), src("b.mp4", 30_000, 40_000)];
        let p = plan(1, &files, 5_000, 50_000).unwrap();
        assert_eq!(spans(&p), [("a.mp4", 10_000, 20_000), ("b.mp4", 30_000, 40_000)]);
        assert_eq!(
            p.holes,
            [
                Hole { from_ms: 5_000, to_ms: 10_000 },
                Hole { from_ms: 20_000, to_ms: 30_000 },
                Hole { from_ms: 40_000, to_ms: 50_000 }
            ]
        );
    }

    #[test]
    fn overlapping_and_contained_files_give_each_moment_once() {
        let files = [src("a.mp4", 0, 30_000), src("inside.mp4", 5_000, 10_000), src("b.mp4", 25_000, 60_000)];
        let p = plan(1, &files, 0, 60_000).unwrap();
        assert_eq!(spans(&p), [("a.mp4", 0, 30_000), ("b.mp4", 30_000, 60_000)]);
        assert!(p.holes.is_empty());
    }

    #[test]
    fn nothing_covered_an_empty_range_and_two_codecs_are_refused_with_the_reason() {
        let files = [src("a.mp4", 0, 10_000)];
        assert!(matches!(plan(1, &files, 20_000, 30_000), Err(ExportError::NothingCovered { .. })));
        assert!(matches!(plan(1, &files, 5_000, 5_000), Err(ExportError::EmptyRange { .. })));
        let mut h265 = src("b.mp4", 10_000, 20_000);
        h265.codec = Some("hevc".into());
        let err = plan(1, &[files[0].clone(), h265], 0, 20_000).unwrap_err().to_string();
        assert!(err.contains("h264 and hevc"), "{err}");
    }

    #[test]
    fn audio_is_found_in_files_that_have_it_only() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, audio: bool| {
            let path = dir.path().join(name);
            let mut cmd = std::process::Command::new("ffmpeg");
            cmd.args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=64x36:rate=5",
            ]);
            if audio {
                cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"]);
            }
            cmd.args(["-t", "1", "-c:v", "libx264", "-preset", "ultrafast"]);
            if audio {
                cmd.args(["-c:a", "aac"]);
            }
            assert!(cmd.arg(&path).status().unwrap().success(), "making {name}");
            path
        };
        assert!(has_audio(&make("with.mp4", true)));
        assert!(!has_audio(&make("without.mp4", false)));
        assert!(!has_audio(&dir.path().join("missing.mp4")), "a file that cannot be probed has none");
    }

    #[test]
    fn the_concat_list_names_each_piece_with_its_in_and_out_points() {
        let mut a = src("it's.mp4", 0, 10_000);
        a.path = PathBuf::from("/b/it's.mp4");
        let p = plan(2, &[a], 2_500, 7_000).unwrap();
        assert_eq!(concat_list(&p), "ffconcat version 1.0\nfile '/b/it'\\''s.mp4'\ninpoint 2.500\noutpoint 7.000\n");
    }
}

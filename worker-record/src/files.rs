//! Backup files on disk: spooling fragments, remuxing them with stream copy, validating with
//! ffprobe, and publishing under the final name only once the file is whole.
//!
//! Every temporary file of a recording carries its id (`.<recording>.p<part>.ts.part`,
//! `.<final name>.<recording>.part`), so a retry of the recording — on this machine or another
//! sharing the directory — removes what a killed attempt left behind before it starts.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cctv_common::config::Container;
use cctv_common::ffmpeg::{self, FfmpegProcess};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("backup directory {dir} (record.backup_dir) is not usable: {error}")]
    Dir { dir: PathBuf, error: std::io::Error },
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
    #[error("remuxing {path}: {message}")]
    Remux { path: PathBuf, message: String },
    #[error("validating {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Creates the directory if needed and proves it writable.
pub fn check_dir(dir: &Path, worker: &str) -> Result<(), FileError> {
    let err = |error| FileError::Dir { dir: dir.to_owned(), error };
    std::fs::create_dir_all(dir).map_err(err)?;
    // One name per check: two jobs of one worker checking at once removed each other's probe
    // ("No such file or directory", a backup error in the load test).
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".write-test-{worker}-{n}"));
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}

/// Removes temporary files a killed attempt at `recording` left in `dir`; returns how many.
pub fn remove_leftovers(dir: &Path, recording: &str) -> usize {
    let spool_prefix = format!(".{recording}.");
    let part_suffix = format!(".{recording}.part");
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if (name.starts_with(&spool_prefix) || name.ends_with(&part_suffix))
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// MPEG-TS fragments of one part, appended as they are fetched. TS stays readable however it is
/// cut short.
pub struct Spool {
    pub path: PathBuf,
    file: File,
    pub first_ms: i64,
    pub last_start_ms: i64,
    pub end_ms: i64,
    pub fragments: usize,
    /// When the first fragment was written (wall clock, ms).
    pub created_ms: i64,
    /// Sum of the fragments' own durations (`#EXTINF`): the video actually spooled, which is
    /// less than the wall-clock span when the camera dropped out in between.
    pub media_ms: i64,
    bytes: u64,
}

impl Spool {
    pub fn create(dir: &Path, recording: &str, part: u32, first_ms: i64) -> Result<Self, FileError> {
        let path = dir.join(format!(".{recording}.p{part}.ts.part"));
        let file = File::create(&path).map_err(|error| FileError::Write { path: path.clone(), error })?;
        Ok(Self {
            path,
            file,
            first_ms,
            last_start_ms: first_ms,
            end_ms: first_ms,
            fragments: 0,
            created_ms: cctv_common::events::now_ms(),
            media_ms: 0,
            bytes: 0,
        })
    }

    /// Appends a whole fragment, or nothing: a failed write (disk full) is cut back so the
    /// spool always ends on a fragment boundary.
    pub fn append(&mut self, data: &[u8], start_ms: i64, end_ms: i64) -> Result<(), FileError> {
        if let Err(error) = self.file.write_all(data) {
            let _ = self.file.set_len(self.bytes);
            let _ = self.file.seek(std::io::SeekFrom::Start(self.bytes));
            return Err(FileError::Write { path: self.path.clone(), error });
        }
        self.bytes += data.len() as u64;
        self.last_start_ms = start_ms;
        self.media_ms += end_ms - start_ms;
        self.end_ms = end_ms;
        self.fragments += 1;
        Ok(())
    }

    pub fn duration_ms(&self) -> i64 {
        self.end_ms - self.first_ms
    }
}

/// What ffprobe found in a finished file.
#[derive(Debug, Clone)]
pub struct Probe {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub duration_secs: f64,
    pub title: Option<String>,
}

impl Probe {
    pub fn summary(&self) -> String {
        format!("ok: {} {}x{}, {:.1} s", self.codec, self.width, self.height, self.duration_secs)
    }
}

/// The longest an ffprobe of a backup file may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// ffprobe's view of a file's first video stream and duration.
pub fn probe(path: &Path) -> Result<Probe, String> {
    let out = ffmpeg::ffprobe(
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height:format=duration:format_tags=title",
            "-of",
            "json",
        ],
        path,
        PROBE_TIMEOUT,
    )
    .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("ffprobe output: {e}"))?;
    let s = v["streams"].get(0).ok_or("no video stream")?;
    Ok(Probe {
        codec: s["codec_name"].as_str().unwrap_or("?").to_string(),
        width: s["width"].as_u64().unwrap_or(0) as u32,
        height: s["height"].as_u64().unwrap_or(0) as u32,
        duration_secs: v["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0),
        title: v["format"]["tags"]["title"].as_str().map(String::from),
    })
}

/// [`crate::mp4::check`] on its own thread, given up after `limit` as an ffprobe would be: a read
/// from a storage that hangs must not hold the job (the thread is left to the stuck read).
pub fn check_mp4_within(path: &Path, limit: Duration) -> Result<Probe, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_owned();
    std::thread::Builder::new()
        .name("mp4-check".into())
        .spawn(move || {
            let _ = tx.send(crate::mp4::check(&p));
        })
        .map_err(|e| format!("cannot start the check: {e}"))?;
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        Err(format!("reading {} took longer than {} s (storage hanging?)", path.display(), limit.as_secs()))
    })
}

/// The video codec an MPEG-TS file declares in its first PMT (`h264`, `hevc`), read from its
/// first 1 MiB without starting a process: an H.265 backup is tagged `hvc1` in MP4 (what
/// Safari and Chrome require; ffmpeg writes `hev1` by default).
pub fn ts_video_codec(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut data = Vec::new();
    File::open(path).ok()?.take(1 << 20).read_to_end(&mut data).ok()?;
    ts_video_codec_of(&data)
}

fn ts_video_codec_of(data: &[u8]) -> Option<&'static str> {
    // The PSI section starting in a packet's payload (PUSI set), if any.
    let section = |pkt: &[u8]| -> Option<Vec<u8>> {
        if pkt[1] & 0x40 == 0 {
            return None;
        }
        let mut at = 4;
        if (pkt[3] >> 4) & 2 != 0 {
            at += 1 + usize::from(pkt[4]);
        }
        let pointer = usize::from(*pkt.get(at)?);
        pkt.get(at + 1 + pointer..).map(<[u8]>::to_vec)
    };
    let pid = |pkt: &[u8]| (u16::from(pkt[1] & 0x1f) << 8) | u16::from(pkt[2]);
    let packets = || data.chunks_exact(188).filter(|p| p[0] == 0x47);
    let pmt_pid = packets().filter(|p| pid(p) == 0).find_map(|p| {
        let s = section(p)?;
        let len = (usize::from(s.get(1)? & 0x0f) << 8) | usize::from(*s.get(2)?);
        let entries = s.get(8..(3 + len).checked_sub(4)?)?;
        entries
            .chunks_exact(4)
            .find(|e| e[0] != 0 || e[1] != 0)
            .map(|e| (u16::from(e[2] & 0x1f) << 8) | u16::from(e[3]))
    })?;
    packets().filter(|p| pid(p) == pmt_pid).find_map(|p| {
        let s = section(p)?;
        let len = (usize::from(s.get(1)? & 0x0f) << 8) | usize::from(*s.get(2)?);
        let info = (usize::from(s.get(10)? & 0x0f) << 8) | usize::from(*s.get(11)?);
        let end = (3 + len).checked_sub(4)?.min(s.len());
        let mut at = 12 + info;
        while at + 5 <= end {
            let es_info = (usize::from(s[at + 3] & 0x0f) << 8) | usize::from(s[at + 4]);
            match s[at] {
                0x1b => return Some("h264"),
                0x24 => return Some("hevc"),
                _ => at += 5 + es_info,
            }
        }
        None
    })
}

/// True when the file has an audio stream with a sample rate (a real one).
fn has_audio(path: &Path) -> bool {
    let args = ["-v", "error", "-select_streams", "a", "-show_entries", "stream=sample_rate", "-of", "csv=p=0"];
    ffmpeg::ffprobe(&args, path, PROBE_TIMEOUT)
        .is_ok_and(|o| o.lines().any(|l| l.trim().parse::<u32>().is_ok_and(|r| r > 0)))
}

/// The final file name: the seed's `Channel<id>_<YYYY-MM-DD_HH-MM-SS>.<ext>`, with `_2`, `_3`,
/// ... when another recording already owns that name (a retry of the same recording reuses it).
pub fn final_path(dir: &Path, channel: u32, stamp: &str, ext: &str, recording: &str) -> PathBuf {
    for n in 1.. {
        let name = if n == 1 {
            format!("Channel{channel}_{stamp}.{ext}")
        } else {
            format!("Channel{channel}_{stamp}_{n}.{ext}")
        };
        let path = dir.join(name);
        let owned_by_other = path.exists() && probe(&path).ok().and_then(|p| p.title).as_deref() != Some(recording);
        if !owned_by_other {
            return path;
        }
    }
    unreachable!("some suffix is free")
}

/// Remuxes the spool into `final_path` with stream copy (no encoder in the pipeline), checks
/// the result (MP4: [`crate::mp4::check`], Matroska: ffprobe; video present, duration close to
/// what was spooled), fsyncs it and only then gives it its final name. `audio`: the relays pass
/// camera audio on, so look for it (one ffprobe run less per file when they drop it, the
/// default).
pub fn finish(
    spool: Spool,
    final_path: &Path,
    container: Container,
    recording: &str,
    audio: bool,
) -> Result<Probe, FileError> {
    let expected = spool.media_ms as f64 / 1000.0;
    let spool_path = spool.path.clone();
    drop(spool);
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let part = final_path.with_file_name(format!(".{name}.{recording}.part"));
    let mut cmd = ffmpeg::command();
    cmd.args(["-nostats", "-y", "-f", "mpegts"]).input(&spool_path).args(["-map", "0:v"]);
    // nginx-rtmp's HLS declares an audio track even for cameras without audio; copying that
    // empty track fails, so audio is mapped only when it has real parameters.
    if audio && has_audio(&spool_path) {
        cmd.args(["-map", "0:a"]);
    }
    cmd.args(["-c", "copy", "-metadata", &format!("title={recording}")]);
    if container == Container::Mp4 && ts_video_codec(&spool_path) == Some("hevc") {
        cmd.args(["-tag:v", "hvc1"]);
    }
    match container {
        Container::Mkv => cmd.args(["-f", "matroska"]),
        // Index at the front: a browser plays and seeks it as it downloads (the .part is
        // renamed only once whole, so a cut never leaves a file needing the fragmented form).
        Container::Mp4 => cmd.args(["-movflags", "+faststart", "-f", "mp4"]),
    };
    cmd.output(&part);
    let remux_err = |message: String| FileError::Remux { path: final_path.to_owned(), message };
    let mut p = FfmpegProcess::spawn(format!("remux {name}"), cmd, false).map_err(|e| remux_err(e.to_string()))?;
    if let Err(e) = p.wait() {
        let _ = std::fs::remove_file(&part);
        return Err(remux_err(e.to_string()));
    }
    let invalid = |message: String| FileError::Invalid { path: final_path.to_owned(), message };
    // MP4, the default, is checked in process (no ffprobe start per file); Matroska by ffprobe.
    let checked = match container {
        Container::Mp4 => check_mp4_within(&part, PROBE_TIMEOUT),
        Container::Mkv => probe(&part),
    };
    let probed = match checked {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(invalid(e));
        }
    };
    if probed.width == 0 || (probed.duration_secs - expected).abs() > 2.0_f64.max(expected * 0.1) {
        let _ = std::fs::remove_file(&part);
        return Err(invalid(format!(
            "duration {:.1} s, expected {expected:.1} s ({})",
            probed.duration_secs,
            probed.summary()
        )));
    }
    let write_err = |error| FileError::Write { path: final_path.to_owned(), error };
    File::open(&part).and_then(|f| f.sync_all()).map_err(write_err)?;
    std::fs::rename(&part, final_path).map_err(write_err)?;
    if let Some(dir) = final_path.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    let _ = std::fs::remove_file(&spool_path);
    Ok(probed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_of_one_worker_checking_the_directory_at_once_all_pass() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|scope| {
            let checks: Vec<_> =
                (0..8).map(|_| scope.spawn(|| (0..300).try_for_each(|_| check_dir(dir.path(), "record-1")))).collect();
            for c in checks {
                c.join().unwrap().unwrap();
            }
        });
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no probe left behind");
    }

    #[test]
    fn leftovers_of_one_recording_only_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            ".ch1-abc.p1.ts.part",
            ".Channel1_2026-01-01_00-00-00.mkv.ch1-abc.part",
            ".ch1-xyz.p1.ts.part",
            "Channel1_x.mkv",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_leftovers(dir.path(), "ch1-abc"), 2);
        assert!(dir.path().join(".ch1-xyz.p1.ts.part").exists() && dir.path().join("Channel1_x.mkv").exists());
    }

    #[test]
    fn the_video_codec_is_read_from_the_transport_streams_pmt() {
        let dir = tempfile::tempdir().unwrap();
        for (codec, encoder) in [("h264", "libx264"), ("hevc", "libx265")] {
            let ts = dir.path().join(format!("{codec}.ts"));
            let made = std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=5", "-t", "1", "-c:v", encoder])
                .args(["-x265-params", "log-level=error", "-f", "mpegts"])
                .arg(&ts)
                .status()
                .unwrap();
            assert!(made.success());
            assert_eq!(ts_video_codec(&ts), Some(codec));
        }
        assert_eq!(ts_video_codec_of(&[0x47; 188 * 3]), None);
        assert_eq!(ts_video_codec_of(b"not a transport stream"), None);
    }

    #[test]
    fn unwritable_dir_is_named() {
        let err = check_dir(Path::new("/proc/cctv-no-such-dir"), "w").unwrap_err().to_string();
        assert!(err.contains("/proc/cctv-no-such-dir") && err.contains("record.backup_dir"), "{err}");
    }
}

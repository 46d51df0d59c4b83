//! The check of a finished MP4 backup, read in process: the file's boxes must tile it exactly
//! (nothing cut off, nothing trailing), the `moov` index must describe a video track with
//! samples, and every chunk the index points at must lie inside an `mdat` box. It reads only box
//! headers and the index (a few hundred KiB for an hour), so a backup costs no ffprobe process
//! (whose start, loading ~215 shared libraries, was a third of worker-record's CPU: docs/profiling.md).
//! Safe Rust only: a damaged file is an error, never a crash of the worker.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::files::Probe;

/// The largest `moov` read (an hour of 30 fps video indexes in a few MiB).
const MAX_MOOV: u64 = 64 * 1024 * 1024;

/// One box: its type and the byte range of its payload within the buffer (or file).
#[derive(Debug, Clone, Copy)]
struct BoxAt {
    kind: [u8; 4],
    body: (u64, u64),
}

/// Reads one box header at `at` from `buf` (header size 8, or 16 with a 64-bit size; size 0
/// runs to `end`).
fn header(buf: &[u8], at: u64, end: u64) -> Result<BoxAt, String> {
    let i = at as usize;
    let short = || format!("box header at byte {at} runs past its parent (ends at {end})");
    if at + 8 > end {
        return Err(short());
    }
    let size32 = u32::from_be_bytes(buf[i..i + 4].try_into().expect("4 bytes")) as u64;
    let kind: [u8; 4] = buf[i + 4..i + 8].try_into().expect("4 bytes");
    let (size, head) = match size32 {
        0 => (end - at, 8),
        1 => {
            if at + 16 > end {
                return Err(short());
            }
            (u64::from_be_bytes(buf[i + 8..i + 16].try_into().expect("8 bytes")), 16)
        }
        n => (n, 8),
    };
    if size < head || at + size > end {
        return Err(format!("box {:?} at byte {at}: size {size} runs past its parent (ends at {end})", name(&kind)));
    }
    Ok(BoxAt { kind, body: (at + head, at + size) })
}

fn name(kind: &[u8; 4]) -> String {
    kind.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
}

/// The children of a box whose payload is `body` within `buf`.
fn children(buf: &[u8], body: (u64, u64)) -> Result<Vec<BoxAt>, String> {
    let mut out = Vec::new();
    let mut at = body.0;
    while at < body.1 {
        let b = header(buf, at, body.1)?;
        at = b.body.1;
        out.push(b);
    }
    Ok(out)
}

fn child(buf: &[u8], parent: (u64, u64), kind: &[u8; 4]) -> Result<Option<BoxAt>, String> {
    Ok(children(buf, parent)?.into_iter().find(|b| &b.kind == kind))
}

fn need(buf: &[u8], parent: (u64, u64), kind: &[u8; 4], within: &str) -> Result<BoxAt, String> {
    child(buf, parent, kind)?.ok_or_else(|| format!("no {} box in {within}", name(kind)))
}

/// `n` bytes at `off` of a box's payload.
fn bytes(buf: &[u8], b: BoxAt, off: u64, n: u64) -> Result<&[u8], String> {
    let (s, e) = (b.body.0 + off, b.body.0 + off + n);
    if e > b.body.1 {
        return Err(format!("{} box is too short ({} bytes)", name(&b.kind), b.body.1 - b.body.0));
    }
    Ok(&buf[s as usize..e as usize])
}

fn u16_at(buf: &[u8], b: BoxAt, off: u64) -> Result<u16, String> {
    Ok(u16::from_be_bytes(bytes(buf, b, off, 2)?.try_into().expect("2 bytes")))
}

fn u32_at(buf: &[u8], b: BoxAt, off: u64) -> Result<u32, String> {
    Ok(u32::from_be_bytes(bytes(buf, b, off, 4)?.try_into().expect("4 bytes")))
}

fn u64_at(buf: &[u8], b: BoxAt, off: u64) -> Result<u64, String> {
    Ok(u64::from_be_bytes(bytes(buf, b, off, 8)?.try_into().expect("8 bytes")))
}

/// Checks a finished MP4 as described in the module doc; returns what ffprobe would report of
/// its first video track (codec as ffprobe names it, size, duration, title).
pub fn check(path: &Path) -> Result<Probe, String> {
    let mut f = File::open(path).map_err(|e| format!("open: {e}"))?;
    let len = f.metadata().map_err(|e| format!("stat: {e}"))?.len();
    // Top level, read header by header: the boxes must tile the file.
    let mut top = Vec::new();
    let mut at = 0u64;
    let mut head = [0u8; 16];
    while at < len {
        let n = (len - at).min(16) as usize;
        f.seek(SeekFrom::Start(at)).and_then(|_| f.read_exact(&mut head[..n])).map_err(|e| format!("read: {e}"))?;
        // Offsets of the header are relative to `at` within `head`.
        let b = header(&head[..n], 0, len - at).map_err(|e| format!("{e} (file cut short?)"))?;
        top.push(BoxAt { kind: b.kind, body: (at + b.body.0, at + b.body.1) });
        at += b.body.1;
    }
    if top.first().map(|b| &b.kind) != Some(b"ftyp") {
        return Err("does not start with an ftyp box: not an MP4".into());
    }
    let mdats: Vec<(u64, u64)> = top.iter().filter(|b| &b.kind == b"mdat").map(|b| b.body).collect();
    if mdats.is_empty() {
        return Err("no mdat box: the file holds no media".into());
    }
    let moov = top.iter().find(|b| &b.kind == b"moov").ok_or("no moov box: the file has no index (cut short?)")?;
    let size = moov.body.1 - moov.body.0;
    if size > MAX_MOOV {
        return Err(format!("moov box of {size} bytes is larger than {MAX_MOOV}"));
    }
    let mut buf = vec![0u8; size as usize];
    f.seek(SeekFrom::Start(moov.body.0)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| format!("read moov: {e}"))?;
    let all = (0, size);

    let mvhd = need(&buf, all, b"mvhd", "moov")?;
    let (timescale, duration) = match bytes(&buf, mvhd, 0, 1)?[0] {
        1 => (u32_at(&buf, mvhd, 20)?, u64_at(&buf, mvhd, 24)?),
        _ => (u32_at(&buf, mvhd, 12)?, u32_at(&buf, mvhd, 16)? as u64),
    };
    if timescale == 0 {
        return Err("mvhd timescale is 0".into());
    }
    let duration_secs = duration as f64 / timescale as f64;

    let mut video = None;
    for trak in children(&buf, all)?.into_iter().filter(|b| &b.kind == b"trak") {
        let mdia = need(&buf, trak.body, b"mdia", "trak")?;
        let hdlr = need(&buf, mdia.body, b"hdlr", "mdia")?;
        let stbl = need(&buf, need(&buf, mdia.body, b"minf", "mdia")?.body, b"stbl", "minf")?;
        // Every chunk of every track must lie inside an mdat.
        let offsets: Vec<u64> = if let Some(stco) = child(&buf, stbl.body, b"stco")? {
            let n = u32_at(&buf, stco, 4)? as u64;
            (0..n).map(|i| u32_at(&buf, stco, 8 + 4 * i).map(u64::from)).collect::<Result<_, _>>()?
        } else if let Some(co64) = child(&buf, stbl.body, b"co64")? {
            let n = u32_at(&buf, co64, 4)? as u64;
            (0..n).map(|i| u64_at(&buf, co64, 8 + 8 * i)).collect::<Result<_, _>>()?
        } else {
            return Err("a track has no chunk offsets (stco/co64)".into());
        };
        if let Some(o) = offsets.iter().find(|&&o| !mdats.iter().any(|&(s, e)| o >= s && o < e)) {
            return Err(format!("a chunk at byte {o} lies outside the media data (file of {len} bytes)"));
        }
        if bytes(&buf, hdlr, 8, 4)? != b"vide" || video.is_some() {
            continue;
        }
        let stsz = need(&buf, stbl.body, b"stsz", "stbl")?;
        let samples = u32_at(&buf, stsz, 8)?;
        if samples == 0 || offsets.is_empty() {
            return Err("the video track has no samples".into());
        }
        let stsd = need(&buf, stbl.body, b"stsd", "stbl")?;
        if u32_at(&buf, stsd, 4)? == 0 {
            return Err("the video track has no sample description".into());
        }
        // The first sample entry: a VisualSampleEntry (size, type, 6 reserved, data reference
        // index, 16 bytes pre-defined/reserved, width, height).
        let entry = header(&buf, stsd.body.0 + 8, stsd.body.1)?;
        let codec = match &entry.kind {
            b"avc1" | b"avc3" => "h264".to_string(),
            b"hvc1" | b"hev1" => "hevc".to_string(),
            b"mp4v" => "mpeg4".to_string(),
            b"av01" => "av1".to_string(),
            other => name(other),
        };
        video = Some((codec, u16_at(&buf, entry, 24)? as u32, u16_at(&buf, entry, 26)? as u32));
    }
    let (codec, width, height) = video.ok_or("no video track")?;
    Ok(Probe { codec, width, height, duration_secs, title: title(&buf, all)? })
}

/// `moov/udta/meta/ilst/©nam/data` as ffmpeg writes `-metadata title=...`.
fn title(buf: &[u8], moov: (u64, u64)) -> Result<Option<String>, String> {
    let Some(udta) = child(buf, moov, b"udta")? else { return Ok(None) };
    let Some(meta) = child(buf, udta.body, b"meta")? else { return Ok(None) };
    // `meta` is a full box: version and flags before its children.
    let Some(ilst) = child(buf, (meta.body.0 + 4, meta.body.1), b"ilst")? else { return Ok(None) };
    let Some(nam) = child(buf, ilst.body, b"\xa9nam")? else { return Ok(None) };
    let Some(data) = child(buf, nam.body, b"data")? else { return Ok(None) };
    // Type (4) and locale (4), then the text.
    let text = bytes(buf, data, 8, (data.body.1 - data.body.0).saturating_sub(8))?;
    Ok(Some(String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{self, Spool};
    use cctv_common::config::Container;

    /// A real backup: footage encoded as a camera would send it, spooled as MPEG-TS and finished
    /// by `files::finish` (the remux ffmpeg, then this check).
    fn backup(dir: &Path) -> std::path::PathBuf {
        let ts = dir.join("clip.ts");
        cctv_testkit::make_camera_clip(&cctv_testkit::media("people-detection.gif"), &ts, 1, 640, 360);
        let data = std::fs::read(&ts).unwrap();
        let mut spool = Spool::create(dir, "rec-1", 1, 0).unwrap();
        let secs = files::probe(&ts).unwrap().duration_secs;
        spool.append(&data, 0, (secs * 1000.0) as i64).unwrap();
        let out = dir.join("Channel1_x.mp4");
        files::finish(spool, &out, Container::Mp4, "rec-1", false).unwrap();
        out
    }

    #[test]
    fn a_finished_backup_reads_as_ffprobe_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = backup(dir.path());
        let ours = check(&out).unwrap();
        let ffprobe = files::probe(&out).unwrap();
        assert_eq!((ours.codec.as_str(), ours.width, ours.height), ("h264", 640, 360));
        assert_eq!((&ours.codec, ours.width, ours.height), (&ffprobe.codec, ffprobe.width, ffprobe.height));
        assert!((ours.duration_secs - ffprobe.duration_secs).abs() < 0.05, "{ours:?} vs {ffprobe:?}");
        assert!(ours.duration_secs > 1.0, "{ours:?}");
        assert_eq!(ours.title.as_deref(), Some("rec-1"));
        assert_eq!(ffprobe.title.as_deref(), Some("rec-1"));
    }

    #[test]
    fn a_check_that_hangs_is_given_up_and_names_the_file() {
        // A FIFO with no writer: opening it for reading blocks, as a hung storage does.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stuck.mp4");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = files::check_mp4_within(&fifo, std::time::Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("stuck.mp4") && e.contains("hanging"), "{e}");
        // Let the blocked thread go.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }

    #[test]
    fn a_cut_short_or_damaged_file_is_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let out = backup(dir.path());
        let whole = std::fs::read(&out).unwrap();
        let at = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            check(&p).unwrap_err()
        };
        // The media data cut off (the index, at the front, is whole).
        let e = at("cut.mp4", &whole[..whole.len() - 1000]);
        assert!(e.contains("runs past") && e.contains("cut short"), "{e}");
        // Cut inside the index.
        assert!(at("half.mp4", &whole[..200]).contains("runs past"));
        // Bytes after the last box.
        let mut trailing = whole.clone();
        trailing.extend_from_slice(&[0, 0, 0]);
        assert!(at("trailing.mp4", &trailing).contains("runs past"));
        // Not an MP4 at all, and empty.
        at("ts.mp4", &std::fs::read(dir.path().join("clip.ts")).unwrap());
        assert!(at("empty.mp4", &[]).contains("ftyp"));
        // The index points past the media data (the first chunk offset rewritten): a box
        // header 8 bytes, version and flags 4, entry count 4, then the offsets.
        let stco = whole.windows(4).position(|w| w == b"stco").unwrap() - 4;
        let mut moved = whole.clone();
        moved[stco + 16..stco + 20].copy_from_slice(&(whole.len() as u32 + 10).to_be_bytes());
        let e = at("offsets.mp4", &moved);
        assert!(e.contains("outside the media data"), "{e}");
    }
}

//! The little of fragmented MP4 the live view needs: top-level boxes cut from a byte stream
//! (`ftyp`+`moov` = the init segment, `moof`+`mdat` = one fragment), the codec string Media
//! Source Extensions asks for (from `avcC` / `hvcC`), the track's timescale, and per fragment
//! its decode time and whether it starts with a keyframe (a new viewer starts there).

/// Cuts complete top-level boxes out of bytes that arrive in pieces.
#[derive(Default)]
pub struct BoxCutter {
    buf: Vec<u8>,
}

/// One whole top-level box: its type and all its bytes (header included).
pub type Mp4Box = ([u8; 4], Vec<u8>);

/// A box too large to be a live fragment: the stream is not what it should be.
const MAX_BOX: usize = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Fmp4Error {
    #[error("an MP4 box of {0} bytes (more than 64 MiB, or malformed)")]
    TooLarge(u64),
}

impl BoxCutter {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete box (type, whole box bytes), if one is buffered.
    pub fn next_box(&mut self) -> Result<Option<Mp4Box>, Fmp4Error> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let size32 = u32::from_be_bytes(self.buf[0..4].try_into().expect("4 bytes"));
        let size = match size32 {
            1 if self.buf.len() >= 16 => u64::from_be_bytes(self.buf[8..16].try_into().expect("8 bytes")),
            1 => return Ok(None),
            n => u64::from(n),
        };
        if size < 8 || size > MAX_BOX as u64 {
            return Err(Fmp4Error::TooLarge(size));
        }
        let size = size as usize;
        if self.buf.len() < size {
            return Ok(None);
        }
        let kind: [u8; 4] = self.buf[4..8].try_into().expect("4 bytes");
        let rest = self.buf.split_off(size);
        let whole = std::mem::replace(&mut self.buf, rest);
        Ok(Some((kind, whole)))
    }
}

/// The children of a box's payload (`data` starts at the first child), as (type, payload).
fn children(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 8 {
            return None;
        }
        let size = u32::from_be_bytes(data[0..4].try_into().ok()?) as usize;
        let (header, size) = match size {
            1 if data.len() >= 16 => (16, u64::from_be_bytes(data[8..16].try_into().ok()?) as usize),
            0 => (8, data.len()),
            n => (8, n),
        };
        if size < header || size > data.len() {
            return None;
        }
        let kind: [u8; 4] = data[4..8].try_into().ok()?;
        let payload = &data[header..size];
        data = &data[size..];
        Some((kind, payload))
    })
}

/// The payload of the first box at `path` under `data` (a box's payload).
fn find<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    let (first, rest) = path.split_first()?;
    let (_, payload) = children(data).find(|(k, _)| k == *first)?;
    if rest.is_empty() {
        Some(payload)
    } else {
        find(payload, rest)
    }
}

/// What the init segment (`moov` box, whole) says.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackInfo {
    /// As MSE wants it: `avc1.64001f`, `hvc1.1.6.L93.B0`.
    pub codec: String,
    pub timescale: u32,
}

pub fn track_info(moov: &[u8]) -> Option<TrackInfo> {
    let moov = moov.get(8..)?;
    let trak = children(moov)
        .find(|(k, p)| k == b"trak" && find(p, &[b"mdia", b"hdlr"]).is_some_and(|h| h.get(8..12) == Some(b"vide")))?;
    let mdhd = find(trak.1, &[b"mdia", b"mdhd"])?;
    let timescale = match mdhd.first()? {
        1 => u32::from_be_bytes(mdhd.get(20..24)?.try_into().ok()?),
        _ => u32::from_be_bytes(mdhd.get(12..16)?.try_into().ok()?),
    };
    let stsd = find(trak.1, &[b"mdia", b"minf", b"stbl", b"stsd"])?;
    // Full box (4) + entry count (4), then the sample entry; a visual sample entry has 78
    // bytes of fields before its child boxes.
    let (entry, payload) = children(stsd.get(8..)?).next()?;
    let boxes = payload.get(78..)?;
    let codec = match &entry {
        b"avc1" | b"avc3" => {
            let c = find(boxes, &[b"avcC"])?;
            format!("{}.{:02x}{:02x}{:02x}", String::from_utf8_lossy(&entry), c.get(1)?, c.get(2)?, c.get(3)?)
        }
        b"hvc1" | b"hev1" => hevc_codec(&entry, find(boxes, &[b"hvcC"])?)?,
        _ => return None,
    };
    Some(TrackInfo { codec, timescale })
}

/// ISO/IEC 14496-15 annex E: `hvc1.<space><profile>.<compatibility, bits reversed>.<tier><level>.<constraints>`.
fn hevc_codec(entry: &[u8; 4], c: &[u8]) -> Option<String> {
    let b1 = *c.get(1)?;
    let space = ["", "A", "B", "C"][usize::from(b1 >> 6)];
    let tier = if b1 & 0x20 != 0 { 'H' } else { 'L' };
    let profile = b1 & 0x1f;
    let compat = u32::from_be_bytes(c.get(2..6)?.try_into().ok()?).reverse_bits();
    let constraints = c.get(6..12)?;
    let level = *c.get(12)?;
    let used = constraints.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let mut s = format!("{}.{space}{profile}.{compat:x}.{tier}{level}", String::from_utf8_lossy(entry));
    for b in &constraints[..used] {
        s += &format!(".{b:X}");
    }
    Some(s)
}

/// What one `moof` (whole box) says: decode time of its first sample (track timescale) and
/// whether that sample is a keyframe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FragmentInfo {
    pub decode_time: u64,
    pub key: bool,
}

/// `sample_is_non_sync_sample` in MP4 sample flags.
const NON_SYNC: u32 = 0x0001_0000;

pub fn fragment_info(moof: &[u8]) -> Option<FragmentInfo> {
    let traf = find(moof.get(8..)?, &[b"traf"])?;
    let tfdt = find(traf, &[b"tfdt"])?;
    let decode_time = match tfdt.first()? {
        1 => u64::from_be_bytes(tfdt.get(4..12)?.try_into().ok()?),
        _ => u64::from(u32::from_be_bytes(tfdt.get(4..8)?.try_into().ok()?)),
    };
    let tfhd = find(traf, &[b"tfhd"])?;
    let tf_flags = u32::from_be_bytes(tfhd.get(0..4)?.try_into().ok()?) & 0x00ff_ffff;
    // tfhd: track id, then the optional fields in flag order.
    let mut at = 8;
    for (flag, len) in [(0x01, 8), (0x02, 4), (0x08, 4), (0x10, 4)] {
        if tf_flags & flag != 0 {
            at += len;
        }
    }
    let default_flags = (tf_flags & 0x20 != 0)
        .then(|| tfhd.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4"))))
        .flatten();
    let trun = find(traf, &[b"trun"])?;
    let tr_flags = u32::from_be_bytes(trun.get(0..4)?.try_into().ok()?) & 0x00ff_ffff;
    let mut at = 8; // version/flags, sample count
    if tr_flags & 0x01 != 0 {
        at += 4; // data offset
    }
    let first = if tr_flags & 0x04 != 0 {
        Some(u32::from_be_bytes(trun.get(at..at + 4)?.try_into().ok()?))
    } else if tr_flags & 0x400 != 0 {
        // Per-sample flags: skip the first sample's duration and size when present.
        let skip = 4 * (usize::from(tr_flags & 0x100 != 0) + usize::from(tr_flags & 0x200 != 0));
        Some(u32::from_be_bytes(trun.get(at + skip..at + skip + 4)?.try_into().ok()?))
    } else {
        None
    };
    let flags = first.or(default_flags)?;
    Some(FragmentInfo { decode_time, key: flags & NON_SYNC == 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    }

    fn moov(entry: &[u8; 4], config: (&[u8; 4], &[u8]), timescale: u32) -> Vec<u8> {
        let mut hdlr = vec![0u8; 8];
        hdlr.extend_from_slice(b"vide");
        hdlr.extend_from_slice(&[0; 12]);
        let mut mdhd = vec![0u8; 12];
        mdhd.extend_from_slice(&timescale.to_be_bytes());
        mdhd.extend_from_slice(&[0; 8]);
        let mut sample_entry = vec![0u8; 78];
        sample_entry.extend(mp4_box(config.0, config.1));
        let mut stsd = vec![0, 0, 0, 0, 0, 0, 0, 1];
        stsd.extend(mp4_box(entry, &sample_entry));
        let stbl = mp4_box(b"stbl", &mp4_box(b"stsd", &stsd));
        let minf = mp4_box(b"minf", &stbl);
        let mdia = mp4_box(b"mdia", &[mp4_box(b"mdhd", &mdhd), mp4_box(b"hdlr", &hdlr), minf].concat());
        mp4_box(b"moov", &mp4_box(b"trak", &mdia))
    }

    #[test]
    fn the_codec_string_and_timescale_come_from_the_init_segment() {
        let avc = moov(b"avc1", (b"avcC", &[1, 0x64, 0x00, 0x1f, 0xff]), 12_800);
        assert_eq!(track_info(&avc), Some(TrackInfo { codec: "avc1.64001f".into(), timescale: 12_800 }));
        // Main profile, level 3.1, compatibility flag 1 and 2, progressive source flag.
        let mut hvcc = vec![1, 0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 93];
        hvcc.extend_from_slice(&[0; 10]);
        let hevc = moov(b"hvc1", (b"hvcC", &hvcc), 90_000);
        assert_eq!(track_info(&hevc).map(|t| t.codec), Some("hvc1.1.6.L93.90".into()));
        assert_eq!(track_info(&moov(b"mp4v", (b"esds", &[0; 4]), 1)), None, "not a codec the live view plays");
    }

    fn moof(decode: u64, first_flags: Option<u32>, default_flags: Option<u32>) -> Vec<u8> {
        let mut tfhd = (0x02_0000u32 | if default_flags.is_some() { 0x20 } else { 0 }).to_be_bytes().to_vec();
        tfhd.extend_from_slice(&1u32.to_be_bytes());
        if let Some(f) = default_flags {
            tfhd.extend_from_slice(&f.to_be_bytes());
        }
        let mut tfdt = vec![1, 0, 0, 0];
        tfdt.extend_from_slice(&decode.to_be_bytes());
        let mut trun = (0x01 | if first_flags.is_some() { 0x04 } else { 0 } | 0x300u32).to_be_bytes().to_vec();
        trun.extend_from_slice(&1u32.to_be_bytes());
        trun.extend_from_slice(&0u32.to_be_bytes());
        if let Some(f) = first_flags {
            trun.extend_from_slice(&f.to_be_bytes());
        }
        trun.extend_from_slice(&[0; 8]);
        let traf = [mp4_box(b"tfhd", &tfhd), mp4_box(b"tfdt", &tfdt), mp4_box(b"trun", &trun)].concat();
        mp4_box(b"moof", &mp4_box(b"traf", &traf))
    }

    #[test]
    fn a_fragment_says_its_decode_time_and_whether_it_starts_at_a_keyframe() {
        assert_eq!(
            fragment_info(&moof(640, Some(0x0200_0000), None)),
            Some(FragmentInfo { decode_time: 640, key: true })
        );
        // ffmpeg's frag_every_frame: no first-sample flags, defaults in tfhd.
        assert_eq!(fragment_info(&moof(1280, None, Some(0x0101_0000))).map(|f| f.key), Some(false));
        assert_eq!(fragment_info(&moof(1280, Some(0x0200_0000), Some(0x0101_0000))).map(|f| f.key), Some(true));
    }

    #[test]
    fn boxes_are_cut_from_pieces_and_a_malformed_size_is_an_error() {
        let data = [mp4_box(b"ftyp", b"isom"), mp4_box(b"moov", &[7; 30])].concat();
        let mut cut = BoxCutter::default();
        cut.push(&data[..5]);
        assert_eq!(cut.next_box(), Ok(None));
        cut.push(&data[5..20]);
        assert_eq!(cut.next_box().unwrap().map(|b| b.0), Some(*b"ftyp"));
        assert_eq!(cut.next_box(), Ok(None));
        cut.push(&data[20..]);
        assert_eq!(cut.next_box().unwrap().map(|b| (b.0, b.1.len())), Some((*b"moov", 38)));
        cut.push(&[0, 0, 0, 3, b'b', b'a', b'd', b'!']);
        assert_eq!(cut.next_box(), Err(Fmp4Error::TooLarge(3)));
    }
}

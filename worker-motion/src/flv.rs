//! FLV as the motion reader meets it: tags of a detect stream that an ffmpeg copies as FLV
//! (`-c copy -f flv`), or that the in-process RTMP player (`crate::rtmp`) hands on. Only what
//! the gate needs: tag kind, timestamp, body; codec, keyframe and AVC packet type.

use std::io::{self, Read};

/// FLV codec id of H.264 (AVC).
pub const FLV_CODEC_AVC: u8 = 7;

/// One FLV tag.
#[derive(Debug, Clone, PartialEq)]
pub struct FlvTag {
    /// 8 audio, 9 video, 18 script data.
    pub kind: u8,
    /// Milliseconds (the 32-bit FLV timestamp).
    pub ts: u32,
    pub body: Vec<u8>,
}

impl FlvTag {
    /// A video tag's codec id (7 = AVC), `None` for other tags.
    pub fn video_codec(&self) -> Option<u8> {
        (self.kind == 9).then(|| self.body.first().map(|b| b & 0x0f)).flatten()
    }

    /// An AVC sequence header (the decoder configuration: SPS and PPS).
    pub fn is_avc_config(&self) -> bool {
        self.video_codec() == Some(FLV_CODEC_AVC) && self.body.get(1) == Some(&0)
    }

    /// An AVC picture (`AVCPacketType` 1).
    pub fn is_avc_picture(&self) -> bool {
        self.video_codec() == Some(FLV_CODEC_AVC) && self.body.get(1) == Some(&1)
    }

    /// FLV frame type 1: a keyframe.
    pub fn is_keyframe(&self) -> bool {
        self.body.first().is_some_and(|b| b >> 4 == 1)
    }

    /// What follows an AVC tag's 5-byte header (frame type and codec, `AVCPacketType`,
    /// composition time): the decoder configuration record of a sequence header, or the
    /// length-prefixed NAL units of a picture.
    pub fn avc_payload(&self) -> &[u8] {
        self.body.get(5..).unwrap_or_default()
    }
}

/// Reads FLV tags from a stream (ffmpeg's `-f flv pipe:1`).
pub struct FlvReader<R> {
    inner: R,
    header_read: bool,
}

impl<R: Read> FlvReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, header_read: false }
    }

    /// The next tag; `None` at a clean end of the stream.
    pub fn next_tag(&mut self) -> io::Result<Option<FlvTag>> {
        if !self.header_read {
            let mut header = [0u8; 9];
            if !read_full(&mut self.inner, &mut header)? {
                return Ok(None);
            }
            if &header[..3] != b"FLV" {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "not an FLV stream"));
            }
            let offset = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
            // The rest of the header (if any) and PreviousTagSize0.
            let mut skip = vec![0u8; offset.saturating_sub(9) + 4];
            if !read_full(&mut self.inner, &mut skip)? {
                return Ok(None);
            }
            self.header_read = true;
        }
        let mut head = [0u8; 11];
        if !read_full(&mut self.inner, &mut head)? {
            return Ok(None);
        }
        let size = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
        let ts = u32::from_be_bytes([head[7], head[4], head[5], head[6]]);
        let mut body = vec![0u8; size];
        let mut trailer = [0u8; 4];
        if !read_full(&mut self.inner, &mut body)? || !read_full(&mut self.inner, &mut trailer)? {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "FLV stream cut inside a tag"));
        }
        Ok(Some(FlvTag { kind: head[0] & 0x1f, ts, body }))
    }
}

/// Fills `buf`; `false` when the stream ended before its first byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream cut mid-tag")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FLV file header of a video-only stream, with PreviousTagSize0.
    const FLV_VIDEO_HEADER: [u8; 13] = [b'F', b'L', b'V', 1, 1, 0, 0, 0, 9, 0, 0, 0, 0];

    /// A tag as FLV bytes, with its trailing PreviousTagSize.
    fn flv_bytes(t: &FlvTag) -> Vec<u8> {
        let len = t.body.len() as u32;
        let mut out = Vec::with_capacity(t.body.len() + 15);
        out.push(t.kind);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&(t.ts & 0x00ff_ffff).to_be_bytes()[1..]);
        out.push((t.ts >> 24) as u8);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&t.body);
        out.extend_from_slice(&(len + 11).to_be_bytes());
        out
    }

    #[test]
    fn flv_tags_round_trip() {
        let tags = vec![
            FlvTag { kind: 9, ts: 0, body: vec![0x17, 0, 0, 0, 0, 1, 2, 3] },
            FlvTag { kind: 9, ts: 0x0123_4567, body: vec![0x27, 1, 0, 0, 0, 9, 9] },
        ];
        let mut bytes = FLV_VIDEO_HEADER.to_vec();
        for t in &tags {
            bytes.extend(flv_bytes(t));
        }
        let mut r = FlvReader::new(&bytes[..]);
        let back: Vec<FlvTag> = std::iter::from_fn(|| r.next_tag().unwrap()).collect();
        assert_eq!(back, tags);
        assert!(back[0].is_avc_config() && back[0].is_keyframe());
        assert!(back[1].is_avc_picture() && !back[1].is_keyframe());
        let cut = &bytes[..bytes.len() - 3];
        let mut r = FlvReader::new(cut);
        r.next_tag().unwrap();
        assert!(r.next_tag().is_err(), "a tag cut short is an error, not a clean end");
        assert!(FlvReader::new(&b"GIF89a..."[..]).next_tag().is_err());
    }
}

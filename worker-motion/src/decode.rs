//! In-process H.264 decoding for the gate: libavcodec and libswscale, the libraries Debian's
//! `ffmpeg` is built on, called in this process instead of through a decoder ffmpeg per channel.
//!
//! Why: a gated channel is mostly closed (a still camera), and a decoder process per channel
//! cost ~15 MiB of private memory and a process's scheduling whatever it decoded. Here a closed
//! channel's decoder is a codec context fed a keyframe per GOP.
//!
//! The pictures are those of `ffmpeg -vf scale=-2:<h> -pix_fmt gray` (or `bgr24` at the detect
//! stream's height, capped, for a YOLO channel): the same decoder, the same swscale conversion
//! with ffmpeg's default bicubic flags and the same `-2` width rounding, so the detector sees
//! the frames an ungated reader's ffmpeg would give it (a test compares them byte for byte).
//!
//! FLV carries H.264 as AVCC (length-prefixed NAL units, parameter sets in the sequence
//! header); the decoder is fed Annex B with the parameter sets before every keyframe, as
//! ffmpeg's `h264_mp4toannexb` does, so no codec extradata is set (no unsafe code here).

use std::collections::VecDeque;
use std::sync::Once;

use ffmpeg_next as av;

use av::format::Pixel;
use av::software::scaling;

/// What the analysis gets from each picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PictureFormat {
    /// Grey, `height` rows, width even with the aspect kept (`scale=-2:<height>`).
    Grey { height: u32 },
    /// BGR24 at the stream's height, at most `max_height` rows (`scale=w=-2:h=min(ih,<max>)`).
    Colour { max_height: u32 },
}

/// Why decoding failed; the caller names the channel.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid AVC sequence header: {0}")]
    Config(&'static str),
    #[error("invalid AVC packet: {0}")]
    Packet(&'static str),
    #[error("no H.264 decoder in this libavcodec")]
    NoDecoder,
    #[error("{what}: {source}")]
    Av {
        what: &'static str,
        #[source]
        source: av::Error,
    },
    #[error("{0} packets in a row could not be decoded (last: {1})")]
    Rejected(u32, String),
}

/// Packets in a row the decoder may reject (a damaged stretch of stream, as ffmpeg skips it)
/// before the reader gives up and starts over.
pub const MAX_REJECTED_IN_A_ROW: u32 = 50;

/// Packets fed whose picture may still come (a decoder holds a few: B-frames, threads; older
/// ones were dropped as damaged).
const PENDING_MAX: i64 = 64;
/// Keyframes whose packet-to-picture lag is remembered for [`AvcDecoder::lag`].
const LAG_WINDOW: usize = 8;

/// An AVC decoder configuration record (the FLV sequence header's payload).
#[derive(Debug, Clone, PartialEq)]
pub struct AvcConfig {
    /// Bytes of each NAL unit's length prefix (1, 2 or 4).
    nal_length: usize,
    /// SPS and PPS as Annex B.
    parameter_sets: Vec<u8>,
}

const START_CODE: [u8; 4] = [0, 0, 0, 1];

impl AvcConfig {
    /// Parses an `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15, 5.2.4.1).
    pub fn parse(record: &[u8]) -> Result<Self, DecodeError> {
        let short = DecodeError::Config("truncated");
        if record.len() < 7 {
            return Err(short);
        }
        if record[0] != 1 {
            return Err(DecodeError::Config("configurationVersion is not 1"));
        }
        let nal_length = usize::from(record[4] & 0x03) + 1;
        if nal_length == 3 {
            return Err(DecodeError::Config("NAL length size of 3 bytes"));
        }
        let mut parameter_sets = Vec::new();
        let mut at = 5;
        for count_mask in [0x1f_u8, 0xff] {
            let count = record.get(at).ok_or(DecodeError::Config("truncated"))? & count_mask;
            at += 1;
            for _ in 0..count {
                let len = match record.get(at..at + 2) {
                    Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return Err(DecodeError::Config("truncated")),
                };
                let unit = record.get(at + 2..at + 2 + len).ok_or(DecodeError::Config("truncated"))?;
                parameter_sets.extend_from_slice(&START_CODE);
                parameter_sets.extend_from_slice(unit);
                at += 2 + len;
            }
        }
        if parameter_sets.is_empty() {
            return Err(DecodeError::Config("no SPS or PPS"));
        }
        Ok(Self { nal_length, parameter_sets })
    }

    /// One AVCC access unit as Annex B into `out` (cleared first), parameter sets first for a
    /// keyframe.
    pub fn to_annex_b(&self, avcc: &[u8], keyframe: bool, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        out.clear();
        if keyframe {
            out.extend_from_slice(&self.parameter_sets);
        }
        let mut at = 0;
        while at < avcc.len() {
            let prefix = avcc.get(at..at + self.nal_length).ok_or(DecodeError::Packet("truncated NAL length"))?;
            let len = prefix.iter().fold(0usize, |n, b| n << 8 | usize::from(*b));
            let unit = avcc
                .get(at + self.nal_length..at + self.nal_length + len)
                .ok_or(DecodeError::Packet("NAL unit longer than the packet"))?;
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(unit);
            at += self.nal_length + len;
        }
        Ok(())
    }
}

/// `av_rescale(a, b, c)`: a * b / c rounded to the nearest, halves away from zero.
fn rescale(a: u32, b: u32, c: u32) -> u32 {
    let (a, b, c) = (u64::from(a), u64::from(b), u64::from(c.max(1)));
    ((a * b + c / 2) / c) as u32
}

impl PictureFormat {
    /// Output size for a decoded picture of `width` x `height`, as ffmpeg's scale filter
    /// evaluates `-2` (scale_eval.c: `av_rescale(h, iw, ih * 2) * 2`).
    pub fn output_size(self, width: u32, height: u32) -> (u32, u32) {
        let h = match self {
            PictureFormat::Grey { height: h } => h,
            PictureFormat::Colour { max_height } => height.min(max_height),
        };
        (rescale(h, width, height * 2).max(1) * 2, h)
    }

    fn pixel(self) -> Pixel {
        match self {
            PictureFormat::Grey { .. } => Pixel::GRAY8,
            PictureFormat::Colour { .. } => Pixel::BGR24,
        }
    }

    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PictureFormat::Grey { .. } => 1,
            PictureFormat::Colour { .. } => 3,
        }
    }
}

/// A picture out of the decoder: `tag` is the one given with its packet.
#[derive(Debug)]
pub struct Picture<'a, T> {
    pub tag: T,
    pub width: u32,
    pub height: u32,
    /// Rows of `width` pixels, no padding.
    pub pixels: &'a [u8],
}

struct Scaler {
    context: scaling::Context,
    input: (Pixel, u32, u32),
    output: av::frame::Video,
}

/// One H.264 stream's decoder and picture conversion; each packet comes with a tag of type
/// `T` (what the caller needs to know of it), handed back with its picture.
pub struct AvcDecoder<T> {
    config: AvcConfig,
    decoder: av::decoder::Video,
    format: PictureFormat,
    scaler: Option<Scaler>,
    decoded: av::frame::Video,
    annex_b: Vec<u8>,
    packed: Vec<u8>,
    /// Packets sent so far (each packet's pts is its number).
    sent: i64,
    /// The tag of each packet sent and not yet out as a picture, by number, and whether it
    /// was a keyframe.
    tags: VecDeque<(i64, T, bool)>,
    /// For the last keyframes: packets sent after its own before its picture came out.
    lags: VecDeque<usize>,
    rejected_in_a_row: u32,
}

/// libav* logs to stderr on its own; the reader reports what matters through its errors.
fn init_libav() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = av::init();
        av::util::log::set_level(av::util::log::Level::Quiet);
    });
}

impl<T> AvcDecoder<T> {
    /// A decoder for the stream whose sequence header payload is `record`; `threads`: as
    /// ffmpeg's `-threads` (frame threads; 1 decodes on the calling thread).
    pub fn new(record: &[u8], format: PictureFormat, threads: u32) -> Result<Self, DecodeError> {
        init_libav();
        let config = AvcConfig::parse(record)?;
        let codec = av::decoder::find(av::codec::Id::H264).ok_or(DecodeError::NoDecoder)?;
        let mut context = av::codec::Context::new_with_codec(codec);
        if threads > 1 {
            context.set_threading(av::threading::Config {
                kind: av::threading::Type::Frame,
                count: threads as usize,
                ..Default::default()
            });
        }
        let decoder = context
            .decoder()
            .video()
            .map_err(|source| DecodeError::Av { what: "opening the H.264 decoder", source })?;
        Ok(Self {
            config,
            decoder,
            format,
            scaler: None,
            decoded: av::frame::Video::empty(),
            annex_b: Vec::new(),
            packed: Vec::new(),
            sent: 0,
            tags: VecDeque::new(),
            lags: VecDeque::with_capacity(LAG_WINDOW),
            rejected_in_a_row: 0,
        })
    }

    /// Packets the decoder takes after a keyframe's own before it hands its picture out (the
    /// most of the last keyframes; `None` before the first): 0 for a stream without B-frames
    /// decoded on one thread. What a closed gate feeds after each keyframe.
    pub fn lag(&self) -> Option<usize> {
        self.lags.iter().copied().max()
    }

    /// Decodes one AVCC access unit (an FLV AVC picture's payload); `picture` gets each
    /// picture that comes out, in presentation order, with the `tag` of its own packet.
    pub fn decode(
        &mut self,
        avcc: &[u8],
        keyframe: bool,
        tag: T,
        picture: &mut dyn FnMut(Picture<'_, T>),
    ) -> Result<(), DecodeError> {
        let accepted = match self.config.to_annex_b(avcc, keyframe, &mut self.annex_b) {
            Err(e) => Err(e.to_string()),
            Ok(()) => {
                let mut packet = av::Packet::copy(&self.annex_b);
                packet.set_pts(Some(self.sent));
                if keyframe {
                    packet.set_flags(av::packet::Flags::KEY);
                }
                match self.decoder.send_packet(&packet) {
                    Ok(()) => Ok(()),
                    Err(e @ av::Error::InvalidData) => Err(e.to_string()),
                    Err(source) => return Err(DecodeError::Av { what: "sending a packet to the decoder", source }),
                }
            }
        };
        match accepted {
            Ok(()) => {
                self.rejected_in_a_row = 0;
                self.tags.push_back((self.sent, tag, keyframe));
                self.sent += 1;
            }
            Err(reason) => {
                // A damaged packet: skipped, as ffmpeg does; its picture never comes (the
                // decoder conceals what referred to it).
                self.rejected_in_a_row += 1;
                if self.rejected_in_a_row >= MAX_REJECTED_IN_A_ROW {
                    return Err(DecodeError::Rejected(self.rejected_in_a_row, reason));
                }
            }
        }
        loop {
            match self.decoder.receive_frame(&mut self.decoded) {
                Ok(()) => self.hand_out(picture)?,
                Err(av::Error::Other { errno }) if errno == av::util::error::EAGAIN => return Ok(()),
                Err(av::Error::Eof) => return Ok(()),
                // A picture the decoder could not finish (concealment failed): the next one
                // comes anyway.
                Err(av::Error::InvalidData) => return Ok(()),
                Err(source) => return Err(DecodeError::Av { what: "receiving a picture", source }),
            }
        }
    }

    fn hand_out(&mut self, picture: &mut dyn FnMut(Picture<'_, T>)) -> Result<(), DecodeError> {
        let number = self.decoded.pts().unwrap_or(self.sent - 1);
        // Packets whose picture never came (damaged) are older than this one's by a window.
        while self.tags.front().is_some_and(|(n, _, _)| *n < number - PENDING_MAX) {
            self.tags.pop_front();
        }
        let Some((_, tag, keyframe)) =
            self.tags.iter().position(|(n, _, _)| *n == number).and_then(|i| self.tags.remove(i))
        else {
            return Ok(());
        };
        if keyframe {
            if self.lags.len() == LAG_WINDOW {
                self.lags.pop_front();
            }
            self.lags.push_back((self.sent - 1 - number).max(0) as usize);
        }
        let (w, h, pixel) = (self.decoded.width(), self.decoded.height(), self.decoded.format());
        let (out_w, out_h) = self.format.output_size(w, h);
        if self.scaler.as_ref().is_none_or(|s| s.input != (pixel, w, h)) {
            let context =
                scaling::Context::get(pixel, w, h, self.format.pixel(), out_w, out_h, scaling::Flags::BICUBIC)
                    .map_err(|source| DecodeError::Av { what: "converting the picture", source })?;
            let output = av::frame::Video::empty();
            self.scaler = Some(Scaler { context, input: (pixel, w, h), output });
        }
        let Some(scaler) = self.scaler.as_mut() else { return Ok(()) };
        scaler
            .context
            .run(&self.decoded, &mut scaler.output)
            .map_err(|source| DecodeError::Av { what: "converting the picture", source })?;
        let row = out_w as usize * self.format.bytes_per_pixel();
        let stride = scaler.output.stride(0);
        let data = scaler.output.data(0);
        let pixels: &[u8] = if stride == row {
            &data[..row * out_h as usize]
        } else {
            self.packed.clear();
            for y in 0..out_h as usize {
                self.packed.extend_from_slice(&data[y * stride..y * stride + row]);
            }
            &self.packed
        };
        picture(Picture { tag, width: out_w, height: out_h, pixels });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_round_like_ffmpegs_scale_minus_two() {
        // 16:9 at 180 rows: 320; 4:3 at 180: 240; odd results go to the nearest even.
        assert_eq!(PictureFormat::Grey { height: 180 }.output_size(1920, 1080), (320, 180));
        assert_eq!(PictureFormat::Grey { height: 180 }.output_size(640, 480), (240, 180));
        assert_eq!(PictureFormat::Grey { height: 120 }.output_size(704, 576), (146, 120));
        assert_eq!(PictureFormat::Colour { max_height: 480 }.output_size(640, 360), (640, 360));
        assert_eq!(PictureFormat::Colour { max_height: 480 }.output_size(1920, 1080), (854, 480));
    }

    #[test]
    fn a_sequence_header_becomes_annex_b_parameter_sets_before_keyframes() {
        // version 1, profile/compat/level, 4-byte lengths, 1 SPS of 3 bytes, 1 PPS of 2.
        let record = [1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 3, 0x67, 1, 2, 1, 0, 2, 0x68, 9];
        let config = AvcConfig::parse(&record).unwrap();
        let mut out = Vec::new();
        config.to_annex_b(&[0, 0, 0, 2, 0x65, 7], true, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 9, 0, 0, 0, 1, 0x65, 7]);
        config.to_annex_b(&[0, 0, 0, 2, 0x41, 7], false, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0x41, 7]);
        assert!(matches!(config.to_annex_b(&[0, 0, 0, 9, 0x41], false, &mut out), Err(DecodeError::Packet(_))));
        assert!(matches!(AvcConfig::parse(&record[..9]), Err(DecodeError::Config(_))));
    }
}

//! What a channel's reader hands its analysis: frames with their arrival time, from a
//! [`FrameSource`], and why the reading stopped ([`ReadError`], the channel's reason for going
//! offline).

use cctv_common::ffmpeg::VideoSize;

/// Why a channel's reader stopped: the reason its status shows while it is offline. Every one
/// is retried with backoff (a camera comes back, a stream is published again) but
/// [`ReadError::is_permanent`] ones, which only a new job (a changed config) can mend.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stream ended")]
    Ended,
    #[error("no video from stream")]
    NoVideo,
    #[error("stalled: no frame for {0} s")]
    Stalled(f64),
    #[error("{0}")]
    Spawn(String),
    #[error("ffmpeg stdout not captured")]
    NoStdout,
    #[error("playing the detect stream: {0}")]
    Play(String),
    #[error("nginx-rtmp ended the stream (its publisher left?)")]
    ServerEnded,
    #[error("reading packets: {0}")]
    Packets(std::io::Error),
    #[error("reading frames: {0}")]
    Frames(std::io::Error),
    #[error("the decoder: {0}")]
    Decoder(String),
    #[error("the stream's parameters changed (resolution or profile), decoder restarted")]
    ParametersChanged,
    #[error("resolution changed {}x{} → {}x{}, decoder restarted", from.width, from.height, to.width, to.height)]
    ResolutionChanged { from: VideoSize, to: VideoSize },
    #[error("the gate's feeder panicked")]
    FeederPanicked,
    #[error("motion masks: {0}")]
    Masks(String),
    #[error("converting a colour frame: {0}")]
    Colour(String),
    #[error("motion detector: {0}")]
    Detector(String),
    /// With the last line ffmpeg wrote (usually the cause: "Input/output error", "404 ...").
    #[error("{error}: {ffmpeg}")]
    WithFfmpeg { error: Box<ReadError>, ffmpeg: String },
}

impl ReadError {
    /// Retrying the same job cannot help: the channel's own settings are wrong.
    pub fn is_permanent(&self) -> bool {
        match self {
            ReadError::Masks(_) => true,
            ReadError::WithFfmpeg { error, .. } => error.is_permanent(),
            _ => false,
        }
    }
}

/// Arrival time of a frame and whether to analyse it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameMeta {
    pub(crate) ts_ms: i64,
    pub(crate) analyse: bool,
    /// A closed gate's keyframe: analysed whatever the rate says.
    pub(crate) check: bool,
}

/// Where raw frames come from.
pub(crate) trait FrameSource {
    /// Fills `frame` with the next raw frame; an error is the reason the reader stops.
    fn next_frame(&mut self, frame: &mut [u8]) -> Result<FrameMeta, ReadError>;
}

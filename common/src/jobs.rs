//! Job structs: one per job kind, each with its queue name beside it.
//!
//! Only these types travel through the job queues. A handler's failure is either
//! [`JobError::Permanent`] (bad input: never retried) or [`JobError::Transient`] (a server or
//! stream was unavailable: retried).

use serde::{Deserialize, Serialize};

use crate::config::{ChannelConfig, FrameFormat, MotionConfig, MotionOverrides, RecordPolicy, YoloConfig, ZoneConfig};
use crate::events::NormBox;

/// A job kind: its queue name is fixed here, never derived from the Rust type name.
pub trait Job: Serialize + for<'de> Deserialize<'de> + Send + Sync + Unpin + 'static {
    /// Queue name inside the namespace (`<ns>:queue:<QUEUE>`).
    const QUEUE: &'static str;
}

/// One channel as a motion job sees it: where to play it from, never the camera URL (so no
/// credentials travel through Redis).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MotionChannel {
    pub id: u32,
    pub name: String,
    /// Stream detection reads (`ch<id>_sub` when a sub-stream is configured, else `ch<id>`).
    pub detect_stream: String,
    pub priority: bool,
    pub record: RecordPolicy,
    /// Polygons (normalised `[x, y]` corners) that never count as motion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<Vec<[f32; 2]>>,
    /// Named areas motion events report (`[[channel.zone]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<ZoneConfig>,
    /// This channel's motion settings over `[motion]`.
    #[serde(default, skip_serializing_if = "MotionOverrides::is_empty")]
    pub motion: MotionOverrides,
}

impl MotionChannel {
    pub fn from_config(c: &ChannelConfig) -> Self {
        Self {
            id: c.id,
            name: c.name.clone(),
            detect_stream: c.detect_stream_name(),
            priority: c.priority,
            record: c.record,
            masks: c.mask.iter().map(|m| m.points.clone()).collect(),
            zones: c.zone.clone(),
            motion: c.motion.clone(),
        }
    }
}

/// Watch a batch of channels for motion. Long-running: held by one worker for as long as it
/// lives; handed to another worker when it dies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MotionJob {
    /// Batch id, `b<index>`, stable for a plan.
    pub batch: String,
    /// Hash of the plan this job belongs to; a job whose plan is no longer current ends itself.
    pub plan: String,
    /// RTMP play base URL (`rtmp.play_url`).
    pub play_url: String,
    pub channels: Vec<MotionChannel>,
    pub motion: MotionConfig,
    /// How priority channels in motion send frames to YOLO; `None` when object detection is off.
    #[serde(default)]
    pub yolo: Option<YoloFrames>,
}

/// The part of `[yolo]` worker-motion needs to send frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct YoloFrames {
    pub fps: f64,
    /// Rate while the channel has a backup open but no motion (0: none).
    #[serde(default)]
    pub recording_fps: f64,
    /// Rate once YOLO confirmed an object and the motion stays inside it (0, older jobs: off).
    #[serde(default)]
    pub confirmed_fps: f64,
    pub max_frame_height: u32,
    /// Older jobs have none: png.
    #[serde(default)]
    pub format: FrameFormat,
    pub jpeg_quality: u32,
}

impl YoloFrames {
    pub fn from_config(y: &YoloConfig) -> Option<Self> {
        y.enabled.then_some(Self {
            fps: y.fps,
            recording_fps: y.recording_fps,
            confirmed_fps: y.confirmed_fps,
            max_frame_height: y.max_frame_height,
            format: y.frame_format,
            jpeg_quality: y.jpeg_quality,
        })
    }
}

/// Look for objects in one frame of a priority channel in motion.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct YoloJob {
    pub channel: u32,
    /// Wall-clock time the frame was decoded, ms since epoch: the job's age and the result's
    /// latency count from here.
    pub frame_ts_ms: i64,
    /// The motion event the frame belongs to.
    pub motion_event: String,
    /// Motion boxes of the frame (fractions of the frame).
    pub motion_boxes: Vec<NormBox>,
    /// The colour frame at the detect stream's resolution, PNG or JPEG (`yolo.frame_format`;
    /// the YOLO worker reads either). Jobs of older workers call it `jpeg`.
    #[serde(with = "base64_bytes", alias = "jpeg")]
    pub image: Vec<u8>,
}

impl Job for YoloJob {
    const QUEUE: &'static str = "yolo";
}

// Hand-written: an image dump in a log line helps no one.
impl std::fmt::Debug for YoloJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YoloJob")
            .field("channel", &self.channel)
            .field("frame_ts_ms", &self.frame_ts_ms)
            .field("motion_event", &self.motion_event)
            .field("image_bytes", &self.image.len())
            .finish()
    }
}

/// What kind of activity made a channel record.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// A motion start on a `record = "motion"` channel.
    Motion,
    /// A wanted object on a `record = "objects"` channel.
    Objects,
    /// Asked for by a person (API, `cctv jobs enqueue record`).
    Manual,
    /// A slot of a `record = "continuous"` channel (no activity needed).
    Continuous,
}

/// What made a channel record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RecordTrigger {
    pub kind: TriggerKind,
    /// The motion event that triggered the recording.
    pub motion_event: String,
    /// Time of the triggering detection, ms since epoch (pre-roll counts back from here).
    pub ts_ms: i64,
    /// For `objects`: the wanted labels seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// Back up one recording of one channel: stream-copy the channel's main stream from the HLS
/// buffer, from `start_ms` until the recording's end (set later by the scheduler in
/// `<ns>:record:rec:<recording>`), in files of at most `record.max_file_seconds`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordJob {
    /// Recording id, also the job's idempotency key.
    pub recording: String,
    pub channel: u32,
    /// HLS playlist of the main stream: nginx-rtmp's `<rtmp.hls_url>/ch<id>/index.m3u8`, or
    /// the relay's own buffer `<rtmp.hls_url>/relay/ch<id>/index.m3u8` for a main stream
    /// nginx-rtmp cannot carry (see [`RecordJob::playlist_url_for`]).
    pub playlist_url: String,
    /// First instant the backup must contain (trigger − pre-roll), ms since epoch.
    pub start_ms: i64,
    pub trigger: RecordTrigger,
}

impl Job for RecordJob {
    const QUEUE: &'static str = "record";
}

/// What a record job may not carry: a job comes from Redis, where anyone who reaches it can
/// write, so its fields are checked before they name a file or a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordJobError {
    #[error("channel {0} is not in the config")]
    UnknownChannel(u32),
    #[error("recording id {0:?} is not ch<channel>-<letters, digits, '-', '_'> (at most 128)")]
    BadRecordingId(String),
}

impl RecordJob {
    /// The job's fields checked against `config`: the recording id names temporary files (only
    /// `ch<channel>-` and letters, digits, `-`, `_`), and the playlist fetched is one of the
    /// two this config gives the channel (nginx-rtmp's or the relay's buffer). Any other
    /// playlist URL is replaced by the channel's nginx-rtmp playlist, never fetched: the
    /// backup is made from the buffer the config names (a relay-buffer choice by its path).
    pub fn checked(mut self, config: &crate::config::Config) -> Result<Self, RecordJobError> {
        let ch = config.channel(self.channel).ok_or(RecordJobError::UnknownChannel(self.channel))?;
        let id_ok = self.recording.len() <= 128
            && self.recording.strip_prefix(&format!("ch{}-", self.channel)).is_some_and(|rest| {
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !id_ok {
            return Err(RecordJobError::BadRecordingId(self.recording));
        }
        let (nginx, relay) = (config.hls_playlist_url(ch), config.relay_playlist_url(ch));
        if self.playlist_url != nginx && self.playlist_url != relay {
            let chosen = if self.playlist_url.contains("/relay/") { relay } else { nginx };
            tracing::warn!(channel = self.channel, recording = %self.recording, playlist = %chosen,
                "the job's playlist URL is not one the config gives this channel; reading the config's instead");
            self.playlist_url = chosen;
        }
        Ok(self)
    }
}

impl RecordJob {
    /// The buffer a record job of `ch` reads: the relay's own while the relay says the main
    /// stream goes there (`<ns>:relay:playlist:<id>`), else nginx-rtmp's. Both URLs come from
    /// the config: the key only says which, so nothing in Redis can point a worker elsewhere.
    pub async fn playlist_url_for(
        conn: &mut redis::aio::ConnectionManager,
        keys: &crate::keys::Keys,
        config: &crate::config::Config,
        ch: &ChannelConfig,
    ) -> redis::RedisResult<String> {
        let buffered: bool = redis::AsyncCommands::exists(conn, keys.record_playlist(ch.id)).await?;
        Ok(if buffered { config.relay_playlist_url(ch) } else { config.hls_playlist_url(ch) })
    }
}

/// JSON carries the JPEG as base64 (a third larger) instead of an array of numbers (four times).
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

impl Job for MotionJob {
    const QUEUE: &'static str = "motion";
}

/// Why a job failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Bad input: retrying cannot help, the job is dropped.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// A server, stream or lease was unavailable: the job goes back on the queue.
    #[error("transient failure: {0}")]
    Transient(String),
}

#[cfg(test)]
mod record_job_tests {
    use super::*;

    fn config() -> crate::config::Config {
        crate::config::Config::parse(
            "[rtmp]\nhls_url = \"http://10.0.0.9:8080/hls\"\n[[channel]]\nid = 3\nname = \"c\"\nsource = \"rtsp://cam/1\"\n",
        )
        .unwrap()
    }

    fn job(recording: &str, playlist_url: &str) -> RecordJob {
        RecordJob {
            recording: recording.into(),
            channel: 3,
            playlist_url: playlist_url.into(),
            start_ms: 0,
            trigger: RecordTrigger { kind: TriggerKind::Manual, motion_event: "e".into(), ts_ms: 0, labels: vec![] },
        }
    }

    #[test]
    fn a_record_job_names_no_foreign_file_and_fetches_only_the_configs_playlists() {
        let c = config();
        let nginx = "http://10.0.0.9:8080/hls/ch3/index.m3u8";
        let relay = "http://10.0.0.9:8080/hls/relay/ch3/index.m3u8";
        for ok in ["ch3-0b9a1f2e-7c1d-4e5f-8a9b-0c1d2e3f4a5b", "ch3-manual-abc123"] {
            assert_eq!(job(ok, nginx).checked(&c).unwrap().playlist_url, nginx);
        }
        assert_eq!(job("ch3-e", relay).checked(&c).unwrap().playlist_url, relay);
        for bad in
            ["../../etc/passwd", "ch3-../x", "ch3-a/b", "ch4-e", "ch3-", ".ch3-e", &format!("ch3-{}", "a".repeat(200))]
        {
            assert!(matches!(job(bad, nginx).checked(&c), Err(RecordJobError::BadRecordingId(_))), "{bad}");
        }
        // Any other URL is never fetched: the config's playlist of the channel is read instead.
        assert_eq!(job("ch3-e", "http://169.254.169.254/latest/meta-data").checked(&c).unwrap().playlist_url, nginx);
        assert_eq!(job("ch3-e", "http://evil.example/hls/relay/x.m3u8").checked(&c).unwrap().playlist_url, relay);
        let mut other = job("ch3-e", nginx);
        other.channel = 9;
        assert_eq!(other.checked(&c), Err(RecordJobError::UnknownChannel(9)));
    }
}

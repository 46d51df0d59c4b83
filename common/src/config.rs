//! The one configuration file (`cctv.toml`) shared by the scheduler and every worker.
//!
//! Every field has a documented default (see `docs/ref/config.md`); unknown fields are errors.
//! [`Config::validate`] reports every problem at once, each naming the field and, for channels,
//! the channel. Camera URLs are redacted in every message.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::redact::redact_url;

/// Environment variable that overrides `cluster.redis_url` (so a password need not live in the file).
pub const REDIS_URL_ENV: &str = "CCTV_REDIS_URL";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub rtmp: RtmpConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub motion: MotionConfig,
    #[serde(default)]
    pub worker_motion: WorkerMotionConfig,
    #[serde(default)]
    pub yolo: YoloConfig,
    #[serde(default)]
    pub record: RecordConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub relay: RelayConfig,
    #[serde(default)]
    pub logs: LogsConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis that carries the job queues, result streams and status keys. Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Prefix of every Redis key this cluster uses, so several clusters (or tests) can share one Redis. Default `cctv`.
    pub namespace: String,
    /// Redis behind Sentinel: the master's address comes from the sentinels and every connection
    /// follows a failover. `redis_url` then gives only the user, password and database. Default: none.
    pub sentinel: Option<SentinelConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { redis_url: "redis://127.0.0.1:6379".into(), namespace: "cctv".into(), sentinel: None }
    }
}

/// `[cluster.sentinel]`: where to ask which Redis server is the master.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The master's name as the sentinels monitor it (`sentinel monitor <name> ...`). Required.
    pub master: String,
    /// `host:port` of each sentinel, asked in this order. Required, at least one.
    pub addresses: Vec<String>,
    /// The sentinels' own password (`requirepass` in sentinel.conf), if they have one; a secret
    /// reference (`{env:NAME}`, `{file:PATH}`) is allowed. Default: none.
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    /// Where camera relays publish, `<publish_url>/ch<id>`. Default `rtmp://127.0.0.1:1935/live`.
    pub publish_url: String,
    /// Where workers play streams from, `<play_url>/ch<id>` (main) and `<play_url>/ch<id>_sub` (sub-stream).
    /// Default `rtmp://127.0.0.1:1935/live`.
    pub play_url: String,
    /// nginx-rtmp's HLS output served over HTTP, `<hls_url>/ch<id>/index.m3u8`: the rolling
    /// buffer record workers cut backups (with pre-roll) from. Default `http://127.0.0.1:8080/hls`.
    pub hls_url: String,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            publish_url: "rtmp://127.0.0.1:1935/live".into(),
            play_url: "rtmp://127.0.0.1:1935/live".into(),
            hls_url: "http://127.0.0.1:8080/hls".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Channels per motion job. Default 8.
    pub batch_size: usize,
    /// How often the scheduler checks that every batch has a live job, seconds. Default 5.
    pub reconcile_interval_secs: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { batch_size: 8, reconcile_interval_secs: 5.0 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Worker heartbeat interval, seconds. Default 2.
    pub heartbeat_interval_secs: u64,
    /// Heartbeats a worker may miss before its jobs are handed to another worker. Default 3
    /// (a killed worker's batches move within about heartbeat × missed + one poll, ~8 s).
    pub missed_heartbeats: usize,
    /// Redis response timeout, seconds. The redis crate's 500 ms default turns a slow Redis into a
    /// dead worker (apalis-redis issue 76). Default 10.
    pub redis_response_timeout_secs: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { heartbeat_interval_secs: 2, missed_heartbeats: 3, redis_response_timeout_secs: 10 }
    }
}

/// Frame-differencing parameters. Defaults are tuned for 5 fps at 180 px height.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MotionConfig {
    /// Frames per second analysed per channel. Default 5.
    pub fps: f64,
    /// Height of the grey frame analysed; width follows the aspect ratio. Default 180.
    pub frame_height: u32,
    /// Gaussian blur kernel size (odd). Default 5.
    pub blur_kernel: i32,
    /// Grey-level difference that marks a pixel changed (1..=255). Default 25.
    pub pixel_threshold: f64,
    /// Dilate iterations that join nearby changed pixels. Default 2.
    pub dilate_iterations: i32,
    /// Smallest contour counted as motion, fraction of the frame area. Default 0.002.
    pub min_area: f64,
    /// Weight of the newest frame in the running-average background (0..1]. Default 0.1.
    pub background_alpha: f64,
    /// After this many consecutive frames with no frame-to-frame change the background snaps to the
    /// current frame, so nothing that left the scene lingers as a ghost. Default 3.
    pub settle_frames: u32,
    /// Consecutive motion frames before a motion event starts. Default 2.
    pub start_frames: u32,
    /// Quiet seconds before a motion event ends (T). Default 3.
    pub end_quiet_secs: f64,
    /// A change above this fraction of the frame (lights, IR switch) recalibrates the background
    /// instead of raising motion. Default 0.6.
    pub recalibrate_fraction: f64,
    /// No frame for this long marks the channel offline and restarts its reader. Default 20.
    pub stall_timeout_secs: f64,
    /// First retry delay after a channel fails, seconds; doubles up to `retry_max_secs`. Default 1.
    pub retry_initial_secs: f64,
    /// Longest retry delay, seconds: a stream back after an outage is watched again within
    /// this (a retry is one ffmpeg start against the local RTMP server). Default 5.
    pub retry_max_secs: f64,
    /// Decode threads per channel: ffmpeg's `-threads`, or the gate's in-process decoder's frame
    /// threads (each adds a frame of delay). Default 1.
    pub decode_threads: u32,
    /// Decode keyframes only (`-skip_frame nokey`): ~30x cheaper, one frame per GOP, for cameras
    /// without a sub-stream when CPU is short. Default false.
    pub keyframes_only: bool,
    /// Presence: while a motion event is in progress it is held as long as a region of at least
    /// `min_area` still differs from the scene as it was before the event (a person who stopped
    /// moving), for at most this many seconds after the last frame-to-frame motion; then the
    /// new scene becomes the reference (a parked car does not record forever). 0 turns presence
    /// off. Default 60.
    pub max_hold_secs: f64,
    /// Compressed-domain gate: the reader watches the detect stream's packets (sizes, keyframes)
    /// without decoding and decodes only while something may be happening: on a P-frame larger
    /// than `gate_rise` x the channel's learned quiet level, on a keyframe that shows motion
    /// (keyframes are decoded and analysed, at most every `gate_keyframe_secs`, so slow changes
    /// are still seen), and during motion, presence and `gate_hold_secs` after. When it opens,
    /// decoding starts from the last keyframe (kept in memory), so no frame after it is lost.
    /// H.264 only; other codecs are decoded always. Default true (the quality harness scores
    /// the same with and without it, docs/quality.md).
    pub gate: bool,
    /// A P-frame this many times the learned quiet level (its 95th percentile over the last
    /// 10 s of quiet) opens the gate. Default 1.5.
    pub gate_rise: f64,
    /// The gate stays open this long after the last motion, presence or event end. Default 10.
    pub gate_hold_secs: f64,
    /// A closed gate analyses a keyframe at most this often, seconds (0: every keyframe):
    /// what a still camera costs no longer depends on its GOP (a camera sending a keyframe
    /// every 0.5 s costs what one with a 2 s GOP does), and a change that shows neither in
    /// packet sizes nor on a keyframe is seen within this plus one GOP. The keyframes not
    /// analysed are kept all the same, so an opening gate still decodes from the last one.
    /// Default 2.
    pub gate_keyframe_secs: f64,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            fps: 5.0,
            frame_height: 180,
            blur_kernel: 5,
            pixel_threshold: 25.0,
            dilate_iterations: 2,
            min_area: 0.002,
            background_alpha: 0.1,
            settle_frames: 3,
            start_frames: 2,
            end_quiet_secs: 3.0,
            recalibrate_fraction: 0.6,
            stall_timeout_secs: 20.0,
            retry_initial_secs: 1.0,
            retry_max_secs: 5.0,
            decode_threads: 1,
            keyframes_only: false,
            max_hold_secs: 60.0,
            gate: true,
            gate_rise: 1.5,
            gate_hold_secs: 10.0,
            gate_keyframe_secs: 2.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerMotionConfig {
    /// Batches one worker process holds at once. Default 4.
    pub concurrency: usize,
}

impl Default for WorkerMotionConfig {
    fn default() -> Self {
        Self { concurrency: 4 }
    }
}

/// Object detection (worker-yolo) and the frames worker-motion sends it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct YoloConfig {
    /// Send frames of priority channels in motion to YOLO. Default true.
    pub enabled: bool,
    /// The YOLOv5n ONNX model. Default `/var/lib/cctv/models/yolov5n.onnx`.
    pub model: PathBuf,
    /// Class names, one per line, index = class id. Default `coco.names` beside the model.
    pub class_names: Option<PathBuf>,
    /// ONNX Runtime shared library (`libonnxruntime.so.1.32.0`). Default: the `ORT_DYLIB_PATH`
    /// environment variable.
    pub ort_library: Option<PathBuf>,
    /// Threads one inference uses. Default 1 on a machine with 2 cores or fewer, else 2: a
    /// second thread makes a frame about a third faster but costs about 15 % more CPU per frame,
    /// which on a small machine is taken from the decoders (measured, docs/benchmarks.md).
    pub intra_threads: usize,
    /// Let ONNX Runtime's threads spin (busy-wait) between work items instead of sleeping.
    /// Default false: on a machine shared with the decoders spinning burned about a sixth of a
    /// core under load (`perf`, docs/profiling.md) for a few percent of latency; turn it on
    /// for a machine that runs YOLO alone.
    pub spin_wait: bool,
    /// Frames run through the model at once when several jobs wait. Default 1: on a 2-core CPU
    /// batches cost more per frame (27 ms at 1, 36 at 2, 33 at 4; docs/benchmarks.md); raise it
    /// where the execution provider gains from batches.
    pub max_batch: usize,
    /// Frames per second sent per channel while it is in motion. Default 2.
    pub fps: f64,
    /// Frames per second sent per priority channel while it has a backup open but no motion
    /// (post-roll, a person standing still): a wanted object in view keeps the backup going, up
    /// to `motion.max_hold_secs` after the last motion. 0 turns it off. Default 1.
    pub recording_fps: f64,
    /// A job older than this (frame time to claim) is dropped unprocessed, seconds. Default 2.
    pub max_age_secs: f64,
    /// Jobs allowed to wait in the queue; frames beyond it are dropped at the source. Default 64.
    pub max_queue: u64,
    /// Smallest score (objectness × class score) reported. Default 0.4.
    pub min_score: f32,
    /// IoU above which a box of the same class is suppressed. Default 0.45.
    pub iou_threshold: f32,
    /// Labels reported; others are ignored. Default person and vehicles.
    pub classes: Vec<String>,
    /// Model input size (square). Default 640.
    pub input_size: u32,
    /// Frames taller than this are scaled down before they are sent. Default 720.
    pub max_frame_height: u32,
    /// How frames travel to YOLO: `png` (lossless: the model sees the decoded picture itself)
    /// or `jpeg` (`jpeg_quality`; about a third of the bytes, but a person the model scores
    /// near `min_score` on the picture can fall below it on the JPEG: measured in
    /// docs/quality.md). Default png.
    pub frame_format: FrameFormat,
    /// JPEG quality of the frames sent with `frame_format = "jpeg"` (1..=100). Default 85.
    pub jpeg_quality: u32,
    /// Annotated snapshots of positive results. Default `snapshots`.
    pub snapshot_dir: PathBuf,
    /// Snapshots kept per channel; older ones are deleted. Default 200.
    pub snapshot_keep: usize,
}

/// `yolo.intra_threads` when unset: 1 where the machine has 2 cores or fewer (the other core
/// is the decoders'), else 2.
pub fn default_intra_threads() -> usize {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() > 2 => 2,
        _ => 1,
    }
}

impl Default for YoloConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: PathBuf::from("/var/lib/cctv/models/yolov5n.onnx"),
            class_names: None,
            ort_library: None,
            intra_threads: default_intra_threads(),
            spin_wait: false,
            max_batch: 1,
            fps: 2.0,
            recording_fps: 1.0,
            max_age_secs: 2.0,
            max_queue: 64,
            min_score: 0.4,
            iou_threshold: 0.45,
            classes: ["person", "bicycle", "car", "motorcycle", "bus", "truck"].map(String::from).to_vec(),
            input_size: 640,
            max_frame_height: 720,
            frame_format: FrameFormat::Png,
            jpeg_quality: 85,
            snapshot_dir: PathBuf::from("snapshots"),
            snapshot_keep: 200,
        }
    }
}

impl YoloConfig {
    /// The class-names file: configured, or `coco.names` beside the model.
    pub fn class_names_path(&self) -> PathBuf {
        self.class_names.clone().unwrap_or_else(|| self.model.with_file_name("coco.names"))
    }
}

/// Container of backup files.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    /// Matroska: any codec; Safari does not play it in the browser.
    Mkv,
    /// MP4 with its index at the front (`+faststart`): every browser plays and seeks it
    /// progressively through the API. A file is published only once whole, so nothing needs
    /// the fragmented form's tolerance of a cut.
    #[default]
    Mp4,
}

impl Container {
    pub fn extension(self) -> &'static str {
        match self {
            Container::Mkv => "mkv",
            Container::Mp4 => "mp4",
        }
    }
}

/// Selective backups (scheduler decides, worker-record writes).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// Where backups are written: `<backup_dir>/Channel<id>_<YYYY-MM-DD_HH-MM-SS>.<ext>`.
    /// Default `/var/lib/cctv/backups`.
    pub backup_dir: PathBuf,
    /// Default `mp4` (plays in the dashboard in every browser).
    pub container: Container,
    /// Seconds before the triggering detection every backup contains. Default 5.
    pub pre_roll_secs: f64,
    /// Seconds after the last activity every backup contains. Default 5.
    pub post_roll_secs: f64,
    /// Longer events are split into files of this length, with no gap. Default 600.
    pub max_file_seconds: f64,
    /// Time zone of the file names: `UTC`, `local` (the machine's), or an IANA name
    /// (`Europe/Berlin`). Default `local`.
    pub timezone: String,
    /// Recordings one record worker writes at once. Default 16.
    pub concurrency: usize,
    /// How long a recording may wait for new video before it is closed with what it has. Default 30.
    pub stall_timeout_secs: f64,
    /// Backups older than this many days (by the time their file was last written) are deleted,
    /// whatever the free space; a channel's own `max_age_days` overrides it. Default none: kept
    /// until rotation needs the space.
    pub max_age_days: Option<f64>,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            backup_dir: PathBuf::from("/var/lib/cctv/backups"),
            container: Container::Mp4,
            pre_roll_secs: 5.0,
            post_roll_secs: 5.0,
            max_file_seconds: 600.0,
            timezone: "local".into(),
            concurrency: 16,
            stall_timeout_secs: 30.0,
            max_age_days: None,
        }
    }
}

/// What relays do with camera audio (FLV and MPEG-TS carry AAC/MP3; cameras often send G.711).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RelayAudio {
    /// No audio in the relayed stream (and so in backups).
    #[default]
    Drop,
    /// Keep the first audio track: copied when it is AAC or MP3, transcoded to AAC otherwise
    /// (G.711, G.726, ...), so no camera codec stops the video.
    Copy,
    /// Transcode the first audio track to AAC (costs a little CPU per channel).
    Aac,
}

/// The RTSP → RTMP relays (`cctv-relay run`, next to nginx-rtmp).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Default `drop`.
    pub audio: RelayAudio,
    /// nginx-rtmp's HLS directory (`cctv-relay nginx-config --hls-dir`), which `rtmp.hls_url`
    /// serves. Streams nginx-rtmp cannot carry (H.265) get a rolling buffer that the relay
    /// writes itself under `<hls_dir>/relay/ch<id>/`, served as `<hls_url>/relay/ch<id>/`, so
    /// the relay runs where it can write this directory. Default `/dev/shm/cctv-hls`.
    pub hls_dir: std::path::PathBuf,
    /// Seconds of video the relay's own buffer lists (like `--hls-playlist-secs`: pre-roll
    /// plus the record workers' retries); a fragment stays on disk up to twice that. At most
    /// nginx's `--hls-playlist-secs`, whose cleanup deletes older fragments under its HLS
    /// directory. Default 60, at least 30.
    pub buffer_secs: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { audio: RelayAudio::Drop, hls_dir: "/dev/shm/cctv-hls".into(), buffer_secs: 60 }
    }
}

/// The HTTP API and dashboard, served by `scheduler run`.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API at all. Default true.
    pub enabled: bool,
    /// Listen address. Default `127.0.0.1:8088` (loopback only; put a TLS proxy in front to expose it).
    pub listen: String,
    /// Bearer token required by mutating endpoints (retry, purge, delete). `CCTV_API_TOKEN`
    /// overrides it. Without one, mutating endpoints are refused.
    pub token: Option<String>,
    /// Token that reading needs (the dashboard, video, pictures, every `/api` read and
    /// `/metrics`): with one, a browser signs in on `/login` (a session cookie) and a client
    /// sends `Authorization: Bearer <viewer_token or token>`; `/api/health` and `/login` stay
    /// open. Default none: reads are open (the API listens on loopback by default).
    pub viewer_token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { enabled: true, listen: "127.0.0.1:8088".into(), token: None, viewer_token: None }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("viewer_token", &self.viewer_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `[notify]`: where the `notifier` process sends motion, object and backup events besides
/// Redis. Nothing is sent unless a sink is configured.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Base URL of this cluster's API as receivers reach it (e.g. `http://nvr.lan:8088`), put in
    /// front of snapshot links. Default: none (links are paths such as `/api/snapshots/1/...`).
    pub public_url: Option<String>,
    /// MQTT broker to publish on. Default: none.
    pub mqtt: Option<MqttConfig>,
    /// HTTP endpoints each event is POSTed to (`[[notify.webhook]]`). Default: none.
    #[serde(rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
}

/// `[notify.mqtt]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]` (port 1883 by default); a secret reference
    /// (`{env:NAME}`, `{file:PATH}`) is allowed anywhere in it. Required.
    pub url: String,
    /// Topics are `<topic_prefix>/ch<id>/...`. Default `cctv`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Home Assistant MQTT discovery prefix; `""` turns discovery off. Default `homeassistant`.
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// MQTT client id. Default `cctv-notifier-<namespace>`.
    #[serde(default)]
    pub client_id: Option<String>,
}

fn default_topic_prefix() -> String {
    "cctv".into()
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

/// Event categories a webhook can ask for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EventCategory {
    Motion,
    Objects,
    Backup,
}

impl EventCategory {
    pub const ALL: [EventCategory; 3] = [EventCategory::Motion, EventCategory::Objects, EventCategory::Backup];

    pub fn as_str(self) -> &'static str {
        match self {
            EventCategory::Motion => "motion",
            EventCategory::Objects => "objects",
            EventCategory::Backup => "backup",
        }
    }
}

/// One `[[notify.webhook]]`.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names its stream position in Redis, so keep it when editing the list. Default `webhook<n>`
    /// (its place in the list, from 1).
    #[serde(default)]
    pub name: Option<String>,
    /// `http://` endpoint the event JSON is POSTed to. Required.
    pub url: String,
    /// Key of the `X-CCTV-Signature: sha256=<hex HMAC-SHA256 of the body>` header; a secret
    /// reference is allowed. Default: none (no signature header).
    #[serde(default)]
    pub secret: Option<String>,
    /// Which events are sent. Default all: `["motion", "objects", "backup"]`.
    #[serde(default = "all_categories")]
    pub events: Vec<EventCategory>,
}

fn all_categories() -> Vec<EventCategory> {
    EventCategory::ALL.to_vec()
}

impl WebhookConfig {
    /// The configured name, else `webhook<n>` from its place (`index` from 0).
    pub fn name_or_default(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("webhook{}", index + 1))
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("events", &self.events)
            .finish()
    }
}

/// Environment variable that overrides `api.token`.
pub const API_TOKEN_ENV: &str = "CCTV_API_TOKEN";

/// Disk monitoring and rotation of the backup volume (done by every record worker).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Rotation starts when the volume is fuller than this, percent. Default 90.
    pub high_watermark: f64,
    /// Rotation deletes the oldest backups until the volume is below this, percent. Default 85.
    pub low_watermark: f64,
    /// Rotation also starts when free space lasts less than this at the current write rate. Default 1.
    pub min_free_hours: f64,
    /// Measurement period, seconds. Default 5.
    pub interval_secs: f64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { high_watermark: 90.0, low_watermark: 85.0, min_free_hours: 1.0, interval_secs: 5.0 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Directory of the category logs (`motion.jsonl`, ...). Default `logs`.
    pub dir: PathBuf,
    /// A category log is rotated when it passes this size (MiB), and every day. Default 50.
    pub max_file_mb: f64,
    /// Rotated files kept per category. Default 30.
    pub keep_files: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("logs"), max_file_mb: 50.0, keep_files: 30 }
    }
}

/// How a frame travels to YOLO (`yolo.frame_format`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FrameFormat {
    /// Lossless: YOLO scores the decoded picture itself.
    #[default]
    Png,
    /// Smaller, lossy (`yolo.jpeg_quality`).
    Jpeg,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordPolicy {
    /// Record while there is motion.
    #[default]
    Motion,
    /// Record only when YOLO saw a wanted object.
    Objects,
    /// Never record.
    Off,
}

#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Channel number, unique, 1..=9999. Streams are named `ch<id>` on the RTMP server.
    pub id: u32,
    /// Human name ("Front door").
    pub name: String,
    /// Camera URL (main stream). May hold credentials; never logged unredacted.
    pub source: String,
    /// Optional sub-stream for detection (smaller, cheaper to decode).
    #[serde(default)]
    pub detect_source: Option<String>,
    /// Priority channels get object detection while in motion. Default false.
    #[serde(default)]
    pub priority: bool,
    /// When to back up this channel. Default `motion`.
    #[serde(default)]
    pub record: RecordPolicy,
    /// For `record = "objects"`: the labels that trigger a backup. Default `yolo.classes`.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Areas that never count as motion (a road, a tree, a burnt-in clock): `[[channel.mask]]`
    /// polygons. Default none.
    #[serde(default)]
    pub mask: Vec<MaskConfig>,
    /// Named areas (`[[channel.zone]]`): motion and object events say which of them their
    /// activity touched. Default none.
    #[serde(default)]
    pub zone: Vec<ZoneConfig>,
    /// Back up only activity that touches one of these zones (names of `[[channel.zone]]`);
    /// activity elsewhere is still logged. Default empty: activity anywhere.
    #[serde(default)]
    pub record_zones: Vec<String>,
    /// `[[channel.schedule]]`: the record policy by time of day and weekday (in
    /// `record.timezone`); the first window that holds wins, `record` applies outside them all.
    #[serde(default)]
    pub schedule: Vec<ScheduleWindow>,
    /// This channel's backups are deleted after this many days (overrides
    /// `record.max_age_days`). Default: `record.max_age_days`.
    #[serde(default)]
    pub max_age_days: Option<f64>,
    /// Quota of this channel's backups in each backup directory, GB (10^9 bytes): beyond it
    /// the channel's oldest unprotected backups there are deleted. Default none.
    #[serde(default)]
    pub max_backup_gb: Option<f64>,
    /// `[channel.motion]`: this camera's own motion settings over `[motion]`.
    #[serde(default)]
    pub motion: MotionOverrides,
}

/// Per-channel motion settings; each one left out is `[motion]`'s.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MotionOverrides {
    pub fps: Option<f64>,
    pub pixel_threshold: Option<f64>,
    pub min_area: Option<f64>,
}

impl MotionOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with these settings over it.
    pub fn apply(&self, base: &MotionConfig) -> MotionConfig {
        MotionConfig {
            fps: self.fps.unwrap_or(base.fps),
            pixel_threshold: self.pixel_threshold.unwrap_or(base.pixel_threshold),
            min_area: self.min_area.unwrap_or(base.min_area),
            ..base.clone()
        }
    }
}

/// A polygon of the picture, in normalised coordinates: `[0, 0]` is the top-left corner,
/// `[1, 1]` the bottom-right, whatever the stream's resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// What it hides, for people reading the config ("street", "clock").
    #[serde(default)]
    pub name: Option<String>,
    /// At least three `[x, y]` corners, each in 0..=1.
    pub points: Vec<[f32; 2]>,
}

/// One `[[channel.schedule]]` window: `record` applies from `from` to `to` (local `HH:MM`; a
/// window with `to` before `from` runs past midnight into the next day) on `days`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleWindow {
    /// `mon` … `sun`: the days the window starts on. Default every day.
    #[serde(default = "every_day")]
    pub days: Vec<String>,
    pub from: String,
    pub to: String,
    pub record: RecordPolicy,
}

fn every_day() -> Vec<String> {
    WEEKDAYS.iter().map(|d| d.to_string()).collect()
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Minutes after midnight of `HH:MM` (00:00 ..= 24:00).
fn minutes_of(hhmm: &str) -> Option<u32> {
    let (h, m) = hhmm.split_once(':')?;
    if !(1..=2).contains(&h.len()) || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl ScheduleWindow {
    /// Whether the window holds at local weekday `day` (0 = Monday) and minute `minute`.
    pub fn holds(&self, day: usize, minute: u32) -> bool {
        let (Some(from), Some(to)) = (minutes_of(&self.from), minutes_of(&self.to)) else { return false };
        let starts_on = |d: usize| self.days.iter().any(|x| *x == WEEKDAYS[d % 7]);
        if from <= to {
            starts_on(day) && (from..to).contains(&minute)
        } else {
            (starts_on(day) && minute >= from) || (starts_on(day + 6) && minute < to)
        }
    }
}

/// A named area of the picture (`[[channel.zone]]`), normalised coordinates like a mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// How events name it ("driveway"): letters, digits, `-` and `_`, unique per channel.
    pub name: String,
    /// At least three `[x, y]` corners, each in 0..=1.
    pub points: Vec<[f32; 2]>,
}

/// Problems of one polygon's corners (`at` names it).
fn check_polygon(p: &mut Problems, at: &str, points: &[[f32; 2]]) {
    if points.len() < 3 {
        p.add(at, format!("{} corners; a polygon needs 3 or more", points.len()));
    }
    if let Some([x, y]) = points.iter().find(|[x, y]| !(0.0..=1.0).contains(x) || !(0.0..=1.0).contains(y)) {
        p.add(at, format!("[{x}, {y}] is outside the picture (coordinates are 0..=1)"));
    }
}

// Hand-written so that `{:?}` of a config never prints a camera password.
impl fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("source", &redact_url(&self.source))
            .field("detect_source", &self.detect_source.as_deref().map(redact_url))
            .field("priority", &self.priority)
            .field("record", &self.record)
            .field("labels", &self.labels)
            .field("mask", &self.mask)
            .field("zone", &self.zone)
            .field("record_zones", &self.record_zones)
            .field("schedule", &self.schedule)
            .field("max_age_days", &self.max_age_days)
            .field("max_backup_gb", &self.max_backup_gb)
            .field("motion", &self.motion)
            .finish()
    }
}

impl Config {
    /// How long backups of `channel` are kept at most (its own `max_age_days`, else
    /// `record.max_age_days`); `None`: until rotation needs the space.
    pub fn max_backup_age(&self, channel: u32) -> Option<std::time::Duration> {
        let days = self.channel(channel).and_then(|c| c.max_age_days).or(self.record.max_age_days)?;
        Some(days_duration(days))
    }

    /// `record.max_age_days`: the limit of backups whose channel has none of its own (or is no
    /// longer configured).
    pub fn default_max_backup_age(&self) -> Option<std::time::Duration> {
        self.record.max_age_days.map(days_duration)
    }
}

impl ChannelConfig {
    /// The record policy at `ts_ms` (ms since the epoch) in `tz`: the first schedule window
    /// that holds, else `record`.
    pub fn record_at(&self, ts_ms: i64, tz: &jiff::tz::TimeZone) -> RecordPolicy {
        if self.schedule.is_empty() {
            return self.record;
        }
        let Ok(t) = jiff::Timestamp::from_millisecond(ts_ms) else { return self.record };
        let local = t.to_zoned(tz.clone());
        let day = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u32 * 60 + local.minute() as u32;
        self.schedule.iter().find(|w| w.holds(day, minute)).map_or(self.record, |w| w.record)
    }

    /// Whether any time of the week backs this channel up.
    pub fn ever_records(&self) -> bool {
        self.record != RecordPolicy::Off || self.schedule.iter().any(|w| w.record != RecordPolicy::Off)
    }

    /// Whether activity that touched `zones` may be backed up: always without `record_zones`,
    /// else when it touched one of them.
    pub fn records_in(&self, zones: &[String]) -> bool {
        self.record_zones.is_empty() || zones.iter().any(|z| self.record_zones.contains(z))
    }

    /// RTMP stream name of the main stream.
    pub fn stream_name(&self) -> String {
        format!("ch{}", self.id)
    }
    /// RTMP stream name detection reads: the sub-stream when one is configured.
    pub fn detect_stream_name(&self) -> String {
        if self.detect_source.is_some() {
            format!("ch{}_sub", self.id)
        } else {
            self.stream_name()
        }
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path of the field, e.g. `channel[3].source` or `scheduler.batch_size`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // `error`, not `source`: the message already carries it, so `{:#}` chains don't repeat it.
    #[error("cannot read config file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {path} is not valid TOML for this schema: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid { path: PathBuf, problems: Vec<ConfigProblem> },
}

fn list(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

impl Config {
    /// Reads, parses and validates a config file; applies the `CCTV_REDIS_URL` override.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })?;
        if let Ok(url) = std::env::var(REDIS_URL_ENV) {
            config.cluster.redis_url = url;
        }
        if let Ok(token) = std::env::var(API_TOKEN_ENV) {
            config.api.token = Some(token).filter(|t| !t.is_empty());
        }
        let mut problems =
            config.expand_secrets(&|name| std::env::var(name).ok(), &|path| std::fs::read_to_string(path));
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { path: path.to_owned(), problems })
        }
    }

    /// Replaces secret references in the fields that hold secrets — `cluster.redis_url`,
    /// `api.token`, each channel's `source` and `detect_source` — so they need not be written in
    /// the file: `{env:NAME}` becomes the variable's value, `{file:/path}` the file's content
    /// without its trailing newline (systemd credentials, Docker secrets). Returns one problem per
    /// reference that cannot be resolved, naming the field and the variable or file, never a value.
    pub fn expand_secrets(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        read: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        let mut expand = |field: String, value: &mut String| match expand_secret_refs(value, env, read) {
            Ok(v) => *value = v,
            Err(e) => p.add(&field, e),
        };
        expand("cluster.redis_url".into(), &mut self.cluster.redis_url);
        if let Some(pw) = self.cluster.sentinel.as_mut().and_then(|s| s.password.as_mut()) {
            expand("cluster.sentinel.password".into(), pw);
        }
        if let Some(t) = self.api.viewer_token.as_mut() {
            expand("api.viewer_token".into(), t);
        }
        if let Some(t) = self.api.token.as_mut() {
            expand("api.token".into(), t);
        }
        if let Some(m) = self.notify.mqtt.as_mut() {
            expand("notify.mqtt.url".into(), &mut m.url);
        }
        for (i, w) in self.notify.webhooks.iter_mut().enumerate() {
            if let Some(secret) = w.secret.as_mut() {
                expand(format!("notify.webhook[{i}].secret"), secret);
            }
        }
        for (i, ch) in self.channels.iter_mut().enumerate() {
            expand(format!("channel[{i}] (id {}).source", ch.id), &mut ch.source);
            if let Some(d) = ch.detect_source.as_mut() {
                expand(format!("channel[{i}] (id {}).detect_source", ch.id), d);
            }
        }
        p.0
    }

    /// Parses TOML without validating. The message has camera URLs redacted.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| crate::redact::redact_text(&e.to_string()).into_owned())
    }

    /// Every problem in the config, empty when it is valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        let ns = &self.cluster.namespace;
        if ns.is_empty() || !ns.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            p.add("cluster.namespace", format!("{ns:?} must be non-empty letters, digits, '-', '_' or '.'"));
        }
        check_url(&mut p, "cluster.redis_url", &self.cluster.redis_url, &["redis", "rediss", "unix"]);
        if let Some(sentinel) = &self.cluster.sentinel {
            check_sentinel(&mut p, sentinel, &self.cluster.redis_url);
        }
        check_url(&mut p, "rtmp.publish_url", &self.rtmp.publish_url, &["rtmp"]);
        check_url(&mut p, "rtmp.play_url", &self.rtmp.play_url, &["rtmp"]);

        let s = &self.scheduler;
        if s.batch_size == 0 || s.batch_size > 64 {
            p.add("scheduler.batch_size", format!("{} is out of range 1..=64", s.batch_size));
        }
        range(&mut p, "scheduler.reconcile_interval_secs", s.reconcile_interval_secs, 0.1, 600.0);

        let q = &self.queue;
        if q.heartbeat_interval_secs == 0 || q.heartbeat_interval_secs > 60 {
            p.add("queue.heartbeat_interval_secs", format!("{} is out of range 1..=60", q.heartbeat_interval_secs));
        }
        if q.missed_heartbeats == 0 || q.missed_heartbeats > 100 {
            p.add("queue.missed_heartbeats", format!("{} is out of range 1..=100", q.missed_heartbeats));
        }
        if q.redis_response_timeout_secs == 0 {
            p.add("queue.redis_response_timeout_secs", "must be at least 1".into());
        }

        let m = &self.motion;
        check_channel_motion(&mut p, "motion.", Some(m.fps), Some(m.pixel_threshold), Some(m.min_area));
        if !(32..=1080).contains(&m.frame_height) || m.frame_height % 2 != 0 {
            p.add("motion.frame_height", format!("{} must be even and within 32..=1080", m.frame_height));
        }
        if m.blur_kernel < 1 || m.blur_kernel > 31 || m.blur_kernel % 2 == 0 {
            p.add("motion.blur_kernel", format!("{} must be odd and within 1..=31", m.blur_kernel));
        }
        if !(0..=10).contains(&m.dilate_iterations) {
            p.add("motion.dilate_iterations", format!("{} is out of range 0..=10", m.dilate_iterations));
        }
        range(&mut p, "motion.background_alpha", m.background_alpha, 0.001, 1.0);
        if m.settle_frames == 0 {
            p.add("motion.settle_frames", "must be at least 1".into());
        }
        if m.start_frames == 0 {
            p.add("motion.start_frames", "must be at least 1".into());
        }
        range(&mut p, "motion.end_quiet_secs", m.end_quiet_secs, 0.2, 600.0);
        range(&mut p, "motion.max_hold_secs", m.max_hold_secs, 0.0, 86_400.0);
        range(&mut p, "motion.gate_rise", m.gate_rise, 1.0, 20.0);
        range(&mut p, "motion.gate_hold_secs", m.gate_hold_secs, 1.0, 3600.0);
        // A still channel's analysis sees a picture only this often: it must stay well inside
        // the stall timeout, and the pre-roll (5 s by default) should still reach back over it.
        range(&mut p, "motion.gate_keyframe_secs", m.gate_keyframe_secs, 0.0, 10.0);
        if m.gate_keyframe_secs > m.stall_timeout_secs / 2.0 {
            p.add(
                "motion.gate_keyframe_secs",
                format!(
                    "{} must be at most half of motion.stall_timeout_secs ({}): a still channel would be \
                     taken for a stalled one",
                    m.gate_keyframe_secs, m.stall_timeout_secs
                ),
            );
        }
        range(&mut p, "motion.recalibrate_fraction", m.recalibrate_fraction, 0.05, 1.0);
        range(&mut p, "motion.stall_timeout_secs", m.stall_timeout_secs, 1.0, 600.0);
        range(&mut p, "motion.retry_initial_secs", m.retry_initial_secs, 0.1, 600.0);
        range(&mut p, "motion.retry_max_secs", m.retry_max_secs, m.retry_initial_secs.max(0.1), 3600.0);
        if m.decode_threads == 0 || m.decode_threads > 16 {
            p.add("motion.decode_threads", format!("{} is out of range 1..=16", m.decode_threads));
        }
        if self.worker_motion.concurrency == 0 || self.worker_motion.concurrency > 64 {
            p.add("worker_motion.concurrency", format!("{} is out of range 1..=64", self.worker_motion.concurrency));
        }
        let y = &self.yolo;
        if y.model.as_os_str().is_empty() {
            p.add("yolo.model", "must not be empty".into());
        }
        if y.intra_threads == 0 || y.intra_threads > 64 {
            p.add("yolo.intra_threads", format!("{} is out of range 1..=64", y.intra_threads));
        }
        if y.max_batch == 0 || y.max_batch > 32 {
            p.add("yolo.max_batch", format!("{} is out of range 1..=32", y.max_batch));
        }
        range(&mut p, "yolo.fps", y.fps, 0.1, 30.0);
        range(&mut p, "yolo.recording_fps", y.recording_fps, 0.0, 30.0);
        range(&mut p, "yolo.max_age_secs", y.max_age_secs, 0.1, 600.0);
        if y.max_queue == 0 {
            p.add("yolo.max_queue", "must be at least 1".into());
        }
        range(&mut p, "yolo.min_score", y.min_score.into(), 0.01, 1.0);
        range(&mut p, "yolo.iou_threshold", y.iou_threshold.into(), 0.01, 1.0);
        if y.classes.is_empty() {
            p.add("yolo.classes", "must name at least one label".into());
        }
        if !(64..=2048).contains(&y.input_size) || y.input_size % 32 != 0 {
            p.add("yolo.input_size", format!("{} must be a multiple of 32 within 64..=2048", y.input_size));
        }
        if !(64..=2160).contains(&y.max_frame_height) || y.max_frame_height % 2 != 0 {
            p.add("yolo.max_frame_height", format!("{} must be even and within 64..=2160", y.max_frame_height));
        }
        if !(1..=100).contains(&y.jpeg_quality) {
            p.add("yolo.jpeg_quality", format!("{} is out of range 1..=100", y.jpeg_quality));
        }
        if y.snapshot_dir.as_os_str().is_empty() {
            p.add("yolo.snapshot_dir", "must not be empty".into());
        }
        let r = &self.record;
        if r.backup_dir.as_os_str().is_empty() {
            p.add("record.backup_dir", "must not be empty".into());
        }
        range(&mut p, "record.pre_roll_secs", r.pre_roll_secs, 0.0, 50.0);
        range(&mut p, "record.post_roll_secs", r.post_roll_secs, 0.0, 600.0);
        range(&mut p, "record.max_file_seconds", r.max_file_seconds, 10.0, 86_400.0);
        range(&mut p, "record.stall_timeout_secs", r.stall_timeout_secs, 2.0, 3600.0);
        if let Some(days) = r.max_age_days {
            range(&mut p, "record.max_age_days", days, 0.001, 36_500.0);
        }
        if r.concurrency == 0 || r.concurrency > 256 {
            p.add("record.concurrency", format!("{} is out of range 1..=256", r.concurrency));
        }
        if let Err(e) = crate::timefmt::zone(&r.timezone) {
            p.add("record.timezone", e);
        }
        let st = &self.storage;
        range(&mut p, "storage.high_watermark", st.high_watermark, 1.0, 99.9);
        range(&mut p, "storage.low_watermark", st.low_watermark, 0.0, 99.0);
        if st.low_watermark >= st.high_watermark {
            p.add(
                "storage.low_watermark",
                format!("{} must be below storage.high_watermark ({})", st.low_watermark, st.high_watermark),
            );
        }
        range(&mut p, "storage.min_free_hours", st.min_free_hours, 0.0, 1000.0);
        range(&mut p, "storage.interval_secs", st.interval_secs, 0.2, 3600.0);
        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            p.add("api.listen", format!("{:?} is not an address:port", self.api.listen));
        }
        if self.api.viewer_token.as_ref().is_some_and(|t| t.len() < 16) {
            p.add("api.viewer_token", "must be at least 16 characters".into());
        }
        if self.api.token.as_ref().is_some_and(|t| t.len() < 16) {
            p.add("api.token", "must be at least 16 characters".into());
        }
        check_url(&mut p, "rtmp.hls_url", &self.rtmp.hls_url, &["http", "https"]);
        if !self.relay.hls_dir.is_absolute() {
            p.add("relay.hls_dir", format!("{} must be an absolute path", self.relay.hls_dir.display()));
        }
        if !(30..=3600).contains(&self.relay.buffer_secs) {
            p.add(
                "relay.buffer_secs",
                format!("{} must be 30..=3600 (pre-roll and retries need 30 s)", self.relay.buffer_secs),
            );
        }
        if self.logs.dir.as_os_str().is_empty() {
            p.add("logs.dir", "must not be empty".into());
        }
        range(&mut p, "logs.max_file_mb", self.logs.max_file_mb, 0.001, 100_000.0);
        if self.logs.keep_files == 0 {
            p.add("logs.keep_files", "must be at least 1".into());
        }

        check_notify(&mut p, &self.notify);

        if self.channels.is_empty() {
            p.add("channel", "no [[channel]] configured".into());
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for (i, ch) in self.channels.iter().enumerate() {
            let at = |field: &str| format!("channel[{i}] (id {}).{field}", ch.id);
            if ch.id == 0 || ch.id > 9999 {
                p.add(&at("id"), format!("{} is out of range 1..=9999", ch.id));
            }
            if !ids.insert(ch.id) {
                p.add(&at("id"), format!("duplicate channel id {}", ch.id));
            }
            if ch.name.trim().is_empty() {
                p.add(&at("name"), "must not be empty".into());
            } else if !names.insert(ch.name.as_str()) {
                p.add(&at("name"), format!("duplicate channel name {:?}", ch.name));
            }
            check_url(&mut p, &at("source"), &ch.source, CAMERA_SCHEMES);
            if let Some(d) = &ch.detect_source {
                check_url(&mut p, &at("detect_source"), d, CAMERA_SCHEMES);
            }
            if ch.record == RecordPolicy::Objects && !ch.priority {
                p.add(
                    &at("record"),
                    "\"objects\" needs priority = true (only priority channels get object detection)".into(),
                );
            }
            if ch.record == RecordPolicy::Objects && !self.yolo.enabled {
                p.add(&at("record"), "\"objects\" needs yolo.enabled = true".into());
            }
            if let Some(days) = ch.max_age_days {
                range(&mut p, &at("max_age_days"), days, 0.001, 36_500.0);
            }
            if let Some(gb) = ch.max_backup_gb {
                range(&mut p, &at("max_backup_gb"), gb, 0.000_001, 1_000_000.0);
            }
            let o = &ch.motion;
            check_channel_motion(&mut p, &at("motion."), o.fps, o.pixel_threshold, o.min_area);
            for (m, mask) in ch.mask.iter().enumerate() {
                check_polygon(&mut p, &at(&format!("mask[{m}].points")), &mask.points);
            }
            let mut zone_names = HashSet::new();
            for (z, zone) in ch.zone.iter().enumerate() {
                check_polygon(&mut p, &at(&format!("zone[{z}].points")), &zone.points);
                let ok = !zone.name.is_empty()
                    && zone.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !ok {
                    p.add(&at(&format!("zone[{z}].name")), format!("{:?} must be letters, digits, - or _", zone.name));
                } else if !zone_names.insert(zone.name.as_str()) {
                    p.add(&at(&format!("zone[{z}].name")), format!("duplicate zone name {:?}", zone.name));
                }
            }
            for name in &ch.record_zones {
                if !ch.zone.iter().any(|z| z.name == *name) {
                    p.add(&at("record_zones"), format!("{name:?} is not a [[channel.zone]] of this channel"));
                }
            }
            for (w, window) in ch.schedule.iter().enumerate() {
                let at = |f: &str| at(&format!("schedule[{w}].{f}"));
                for (f, v) in [("from", &window.from), ("to", &window.to)] {
                    if minutes_of(v).is_none() {
                        p.add(&at(f), format!("{v:?} is not a time HH:MM (00:00 to 24:00)"));
                    }
                }
                if window.from == window.to {
                    p.add(&at("to"), "equals from: the window would be empty".into());
                }
                if window.days.is_empty() {
                    p.add(&at("days"), "must name at least one day (or be left out: every day)".into());
                }
                for d in &window.days {
                    if !WEEKDAYS.contains(&d.as_str()) {
                        p.add(&at("days"), format!("{d:?} is not one of {}", WEEKDAYS.join(", ")));
                    }
                }
                if window.record == RecordPolicy::Objects && !(ch.priority && self.yolo.enabled) {
                    p.add(&at("record"), "\"objects\" needs priority = true and yolo.enabled = true".into());
                }
            }
            if !ch.record_zones.is_empty() && !ch.ever_records() {
                p.add(&at("record_zones"), "set, but record = \"off\" never backs up".into());
            }
            if let Some(labels) = &ch.labels {
                if labels.is_empty() {
                    p.add(&at("labels"), "must name at least one label (or be left out)".into());
                }
                for l in labels {
                    if !self.yolo.classes.contains(l) {
                        p.add(&at("labels"), format!("{l:?} is not in yolo.classes (YOLO reports only those)"));
                    }
                }
            }
        }
        p.0
    }

    /// The HLS playlist of a channel's main stream (what record workers read).
    pub fn hls_playlist_url(&self, ch: &ChannelConfig) -> String {
        format!("{}/{}/index.m3u8", self.rtmp.hls_url.trim_end_matches('/'), ch.stream_name())
    }

    /// The relay's own rolling buffer of `ch`'s main stream (for codecs nginx-rtmp cannot
    /// carry): `<hls_url>/relay/ch<id>/index.m3u8`, in the same form as nginx-rtmp's.
    pub fn relay_playlist_url(&self, ch: &ChannelConfig) -> String {
        format!("{}/relay/{}/index.m3u8", self.rtmp.hls_url.trim_end_matches('/'), ch.stream_name())
    }

    /// Labels that make an `objects` channel record.
    pub fn wanted_labels<'a>(&'a self, ch: &'a ChannelConfig) -> &'a [String] {
        ch.labels.as_deref().unwrap_or(&self.yolo.classes)
    }

    /// Channels by id.
    pub fn channel(&self, id: u32) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.id == id)
    }
}

impl Config {
    /// What `check-config` prints for a valid config.
    pub fn check_summary(&self, path: &Path) -> String {
        format!(
            "{}: ok ({} channels, {} motion batches, namespace {:?})",
            path.display(),
            self.channels.len(),
            crate::plan::plan(self).jobs.len(),
            self.cluster.namespace
        )
    }
}

/// The `check-config` subcommand every binary shares: prints a summary or every problem.
pub fn check_config_command(path: &Path) -> std::process::ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!("{}", c.check_summary(path));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// URL schemes accepted for camera sources (`file` is for simulated cameras and tests).
pub const CAMERA_SCHEMES: &[&str] = &["rtsp", "rtsps", "rtmp", "http", "https", "srt", "file"];

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, field: &str, message: String) {
        self.0.push(ConfigProblem { field: field.to_owned(), message });
    }
}

/// `{env:NAME}` and `{file:PATH}` in `value` replaced (see [`Config::expand_secrets`]).
pub fn expand_secret_refs(
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('{') {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let Some(end) = from.find('}') else {
            out.push_str(from);
            return Ok(out);
        };
        let reference = &from[1..end];
        match reference.split_once(':') {
            Some(("env", name)) => match env(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable {name} (from {{env:{name}}}) is not set")),
            },
            Some(("file", path)) => match read(path) {
                Ok(v) => out.push_str(v.trim_end_matches(['\n', '\r'])),
                Err(e) => return Err(format!("cannot read secret file {path} (from {{file:...}}): {e}")),
            },
            _ => out.push_str(&from[..=end]),
        }
        rest = &from[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn days_duration(days: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(days * 86_400.0)
}

/// The limits of the motion settings a channel may override, for `[motion]` (`prefix`
/// "motion.") and each `[channel.motion]` alike; `None`: not set there.
fn check_channel_motion(p: &mut Problems, prefix: &str, fps: Option<f64>, threshold: Option<f64>, area: Option<f64>) {
    for (field, value, lo, hi) in
        [("fps", fps, 0.2, 30.0), ("pixel_threshold", threshold, 1.0, 255.0), ("min_area", area, 0.0, 1.0)]
    {
        if let Some(v) = value {
            range(p, &format!("{prefix}{field}"), v, lo, hi);
        }
    }
}

fn range(p: &mut Problems, field: &str, v: f64, lo: f64, hi: f64) {
    if !(v >= lo && v <= hi) {
        p.add(field, format!("{v} is out of range {lo}..={hi}"));
    }
}

/// `[cluster.sentinel]`: a master name, `host:port` sentinels, and a plain `redis://` URL for the
/// master (its connections are relayed through a local port; TLS is not).
fn check_sentinel(p: &mut Problems, s: &SentinelConfig, redis_url: &str) {
    if s.master.trim().is_empty() || s.master.chars().any(char::is_whitespace) {
        p.add("cluster.sentinel.master", format!("{:?} must be a non-empty name without spaces", s.master));
    }
    if s.addresses.is_empty() {
        p.add("cluster.sentinel.addresses", "must list at least one sentinel as host:port".into());
    }
    for (i, a) in s.addresses.iter().enumerate() {
        if crate::sentinel::parse_host_port(a).is_none() {
            p.add(&format!("cluster.sentinel.addresses[{i}]"), format!("{a:?} is not host:port"));
        }
    }
    if !redis_url.starts_with("redis://") {
        p.add(
            "cluster.redis_url",
            format!(
                "{} must be a redis:// URL when [cluster.sentinel] is set (its host is not used)",
                redact_url(redis_url)
            ),
        );
    }
}

/// `[notify]`: URLs with the schemes the notifier speaks, MQTT topic prefixes without
/// wildcards, webhook names unique (they key stream positions).
fn check_notify(p: &mut Problems, n: &NotifyConfig) {
    if let Some(u) = &n.public_url {
        check_url(p, "notify.public_url", u, &["http", "https"]);
    }
    if let Some(m) = &n.mqtt {
        check_url(p, "notify.mqtt.url", &m.url, &["mqtt"]);
        let topic_ok = |t: &str| !t.contains(['#', '+', '\0']) && !t.starts_with('/') && !t.ends_with('/');
        if m.topic_prefix.is_empty() || !topic_ok(&m.topic_prefix) {
            p.add(
                "notify.mqtt.topic_prefix",
                format!("{:?} must be non-empty, without '#', '+' or a leading/trailing '/'", m.topic_prefix),
            );
        }
        if !m.discovery_prefix.is_empty() && !topic_ok(&m.discovery_prefix) {
            p.add(
                "notify.mqtt.discovery_prefix",
                format!("{:?} must be \"\" or a topic without '#', '+' or a leading/trailing '/'", m.discovery_prefix),
            );
        }
        if m.client_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 128) {
            p.add("notify.mqtt.client_id", "must be 1 to 128 characters".into());
        }
    }
    let mut names = HashSet::new();
    for (i, w) in n.webhooks.iter().enumerate() {
        let at = |field: &str| format!("notify.webhook[{i}].{field}");
        check_url(p, &at("url"), &w.url, &["http"]);
        let name = w.name_or_default(i);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            p.add(&at("name"), format!("{name:?} must be non-empty letters, digits, '-', '_' or '.'"));
        } else if !names.insert(name.clone()) {
            p.add(&at("name"), format!("duplicate webhook name {name:?}"));
        }
        if w.secret.as_ref().is_some_and(|s| s.len() < 16) {
            p.add(&at("secret"), "must be at least 16 characters".into());
        }
        if w.events.is_empty() {
            p.add(&at("events"), "must name at least one of motion, objects, backup".into());
        }
    }
}

fn check_url(p: &mut Problems, field: &str, value: &str, schemes: &[&str]) {
    match url::Url::parse(value) {
        Err(e) => p.add(field, format!("{:?} is not a valid URL: {e}", redact_url(value))),
        Ok(u) if !schemes.contains(&u.scheme()) => p.add(
            field,
            format!("{:?} has scheme {:?}, expected one of {}", redact_url(value), u.scheme(), schemes.join(", ")),
        ),
        Ok(u) if u.scheme() != "file" && u.scheme() != "unix" && u.host_str().is_none_or(str::is_empty) => {
            p.add(field, format!("{:?} has no host", redact_url(value)))
        }
        Ok(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `validate()` lists for the config `text`, as the messages users read.
    fn problems_of(text: &str) -> Vec<String> {
        Config::parse(text).unwrap().validate().iter().map(ToString::to_string).collect()
    }

    /// Each of `expected` begins one of `problems`.
    fn assert_listed(problems: &[String], expected: &[&str]) {
        for e in expected {
            assert!(problems.iter().any(|p| p.starts_with(e)), "{e:?} not in {problems:?}");
        }
    }

    const GOOD: &str = r#"
        [cluster]
        namespace = "t1"
        [[channel]]
        id = 1
        name = "Gate"
        source = "rtsp://admin:hunter2@10.0.0.5:554/s1"
        detect_source = "rtsp://admin:hunter2@10.0.0.5:554/s2"
        priority = true
        record = "objects"
    "#;

    #[test]
    fn good_config_validates_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.scheduler.batch_size, 8);
        assert_eq!(c.motion.fps, 5.0);
        assert_eq!(c.channels[0].record, RecordPolicy::Objects);
        assert_eq!(c.channels[0].detect_stream_name(), "ch1_sub");
        // One thread per inference where the decoders need the other core.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.yolo.intra_threads, if cores <= 2 { 1 } else { 2 }, "{cores} cores");
    }

    #[test]
    fn zones_are_named_polygons_and_record_zones_must_name_them() {
        let text = r#"
            [[channel]]
            id = 1
            name = "A"
            source = "rtsp://cam/1"
            record_zones = ["drive", "lawn"]
            [[channel.zone]]
            name = "drive"
            points = [[0, 0.5], [1, 0.5], [1, 1]]
            [[channel.zone]]
            name = "drive"
            points = [[0, 0], [1, 0], [1, 1]]
            [[channel.zone]]
            name = "front door"
            points = [[0, 0], [1, 0]]
        "#;
        let c = Config::parse(text).unwrap();
        let problems: Vec<String> = c.validate().iter().map(ToString::to_string).collect();
        assert_listed(
            &problems,
            &[
                "channel[0] (id 1).zone[1].name: duplicate zone name \"drive\"",
                "channel[0] (id 1).zone[2].points: 2 corners",
                "channel[0] (id 1).zone[2].name: \"front door\" must be letters, digits, - or _",
                "channel[0] (id 1).record_zones: \"lawn\" is not a [[channel.zone]] of this channel",
            ],
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        let ch = &c.channels[0];
        assert!(ch.records_in(&["drive".into()]) && !ch.records_in(&["pool".into()]) && !ch.records_in(&[]));
        let anywhere = Config::parse(&text.replace("record_zones = [\"drive\", \"lawn\"]", "")).unwrap();
        assert!(anywhere.channels[0].records_in(&[]), "without record_zones activity anywhere counts");
    }

    #[test]
    fn schedules_choose_the_policy_by_local_time_and_bad_windows_are_named() {
        let text = r#"
            [record]
            timezone = "Asia/Tokyo"
            [[channel]]
            id = 1
            name = "Shop"
            source = "rtsp://cam/1"
            record = "motion"
            # Open hours: nothing backed up; nights (over midnight) and the weekend: motion.
            [[channel.schedule]]
            days = ["mon", "tue", "wed", "thu", "fri"]
            from = "09:00"
            to = "18:00"
            record = "off"
        "#;
        let c = Config::parse(text).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let tz = crate::timefmt::zone("Asia/Tokyo").unwrap();
        let ch = &c.channels[0];
        // 2026-12-01 is a Tuesday. 10:00 and 17:59 Tokyo: off; 18:00 and 08:59: motion.
        let at = |s: &str| jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", s).unwrap().to_zoned(tz.clone()).unwrap();
        let ms = |s: &str| at(s).timestamp().as_millisecond();
        assert_eq!(ch.record_at(ms("2026-12-01 10:00"), &tz), RecordPolicy::Off);
        assert_eq!(ch.record_at(ms("2026-12-01 17:59"), &tz), RecordPolicy::Off);
        assert_eq!(ch.record_at(ms("2026-12-01 18:00"), &tz), RecordPolicy::Motion);
        assert_eq!(ch.record_at(ms("2026-12-01 08:59"), &tz), RecordPolicy::Motion);
        assert_eq!(ch.record_at(ms("2026-12-05 10:00"), &tz), RecordPolicy::Motion, "Saturday");
        // A window over midnight belongs to the day it starts on.
        let night = ScheduleWindow {
            days: vec!["fri".into()],
            from: "22:00".into(),
            to: "06:00".into(),
            record: RecordPolicy::Off,
        };
        assert!(
            night.holds(4, 23 * 60) && night.holds(5, 5 * 60) && !night.holds(5, 23 * 60) && !night.holds(4, 5 * 60)
        );

        let bad = text
            .replace("\"09:00\"", "\"9h\"")
            .replace("\"fri\"]", "\"fri\", \"holiday\"]")
            .replace("\"off\"", "\"objects\"");
        let problems: Vec<String> = problems_of(&bad);
        assert_listed(
            &problems,
            &[
                "channel[0] (id 1).schedule[0].from: \"9h\" is not a time HH:MM",
                "channel[0] (id 1).schedule[0].days: \"holiday\" is not one of mon",
                "channel[0] (id 1).schedule[0].record: \"objects\" needs priority = true",
            ],
        );
    }

    #[test]
    fn masks_need_three_corners_inside_the_picture() {
        let text = r#"
            [[channel]]
            id = 1
            name = "A"
            source = "rtsp://cam/1"
            [[channel.mask]]
            points = [[0, 0], [1, 0]]
            [[channel.mask]]
            name = "street"
            points = [[0, 0], [1.2, 0], [1, 1]]
            [[channel.mask]]
            points = [[0, 0], [1, 0], [1, 1]]
        "#;
        let c = Config::parse(text).unwrap();
        let problems: Vec<String> = c.validate().iter().map(ToString::to_string).collect();
        assert!(problems.iter().any(|p| p.starts_with("channel[0] (id 1).mask[0].points: 2 corners")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("mask[1].points: [1.2, 0] is outside")), "{problems:?}");
        assert!(!problems.iter().any(|p| p.contains("mask[2]")), "{problems:?}");
        assert_eq!(c.channels[0].mask[1].name.as_deref(), Some("street"));
        let unknown = Config::parse(&text.replace("name = \"street\"", "nmae = \"street\"")).unwrap_err();
        assert!(unknown.contains("nmae"), "{unknown}");
    }

    #[test]
    fn secrets_come_from_the_environment_or_files_and_missing_ones_are_named() {
        let env = |name: &str| (name == "CAM_PASS").then(|| "s3cret".to_string());
        let read = |path: &str| match path {
            "/run/secrets/token" => Ok("tok-en\n".to_string()),
            _ => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")),
        };
        let mut c = Config::parse(
            r#"
            [api]
            token = "{file:/run/secrets/token}"
            [[channel]]
            id = 1
            name = "A"
            source = "rtsp://admin:{env:CAM_PASS}@cam/1"
            detect_source = "rtsp://admin:{env:SUB_PASS}@cam/2"
            [[channel]]
            id = 2
            name = "B"
            source = "rtsp://cam/{file:/nope}"
            "#,
        )
        .unwrap();
        let problems: Vec<String> = c.expand_secrets(&env, &read).iter().map(ToString::to_string).collect();
        assert_eq!(c.channels[0].source, "rtsp://admin:s3cret@cam/1");
        assert_eq!(c.api.token.as_deref(), Some("tok-en"));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("channel[0] (id 1).detect_source: environment variable SUB_PASS"),
            "{problems:?}"
        );
        assert!(problems[1].starts_with("channel[1] (id 2).source: cannot read secret file /nope"), "{problems:?}");
        assert!(!problems.iter().any(|p| p.contains("s3cret")));
        // Braces that are no reference stay as they are.
        assert_eq!(expand_secret_refs("a{b}c{", &env, &read).unwrap(), "a{b}c{");
    }

    #[test]
    fn notify_sinks_are_checked_and_their_secrets_may_be_references() {
        let good = r#"
            [notify]
            public_url = "http://nvr.lan:8088"
            [notify.mqtt]
            url = "mqtt://cctv:{env:MQTT_PASS}@broker.lan"
            [[notify.webhook]]
            url = "http://hooks.lan/cctv"
            secret = "{file:/run/credentials/hook}"
            [[notify.webhook]]
            name = "alarm"
            url = "http://alarm.lan/in"
            events = ["objects"]
            [[channel]]
            id = 1
            name = "Gate"
            source = "rtsp://cam/1"
        "#;
        let env = |name: &str| Some(format!("{name}-value"));
        let read = |_: &str| Ok("0123456789abcdef0123\n".to_string());
        let mut c = Config::parse(good).unwrap();
        assert!(c.expand_secrets(&env, &read).is_empty());
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let m = c.notify.mqtt.as_ref().unwrap();
        assert_eq!(m.url, "mqtt://cctv:MQTT_PASS-value@broker.lan");
        assert_eq!((m.topic_prefix.as_str(), m.discovery_prefix.as_str()), ("cctv", "homeassistant"));
        assert_eq!(c.notify.webhooks[0].secret.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(c.notify.webhooks[0].events, EventCategory::ALL);
        assert_eq!(c.notify.webhooks[0].name_or_default(0), "webhook1");
        assert!(!format!("{:?}", c.notify.webhooks[0]).contains("0123456789"), "a webhook secret in Debug output");

        let bad = r#"
            [notify.mqtt]
            url = "http://broker.lan"
            topic_prefix = "cctv/#"
            [[notify.webhook]]
            name = "a"
            url = "https://hooks.lan/x"
            secret = "short"
            events = []
            [[notify.webhook]]
            name = "a"
            url = "http://hooks.lan/y"
            [[channel]]
            id = 1
            name = "Gate"
            source = "rtsp://cam/1"
        "#;
        let problems: Vec<String> = problems_of(bad);
        assert_listed(
            &problems,
            &[
                "notify.mqtt.url: \"http://broker.lan\" has scheme \"http\"",
                "notify.mqtt.topic_prefix: \"cctv/#\" must be non-empty",
                "notify.webhook[0].url: \"https://hooks.lan/x\" has scheme \"https\"",
                "notify.webhook[0].secret: must be at least 16 characters",
                "notify.webhook[0].events: must name at least one",
                "notify.webhook[1].name: duplicate webhook name \"a\"",
            ],
        );
        assert_eq!(problems.len(), 6, "{problems:?}");
    }

    #[test]
    fn a_short_viewer_token_is_a_problem_and_it_is_redacted() {
        let text = "[api]\nviewer_token = \"short\"\n[[channel]]\nid = 1\nname = \"Gate\"\nsource = \"rtsp://cam/1\"\n";
        assert_listed(&problems_of(text), &["api.viewer_token: must be at least 16 characters"]);
        let c: Config = toml::from_str(&text.replace("short", "viewer-token-0123456789")).unwrap();
        assert!(!format!("{c:?}").contains("viewer-token-0123456789"), "the viewer token is in Debug output");
    }

    #[test]
    fn a_sentinel_setup_is_checked_and_its_password_may_be_a_secret_reference() {
        let good = r#"
            [cluster]
            redis_url = "redis://:{env:REDIS_PASS}@unused/2"
            [cluster.sentinel]
            master = "cctv"
            addresses = ["10.0.0.1:26379", "[fd00::2]:26379", "sentinel-3:26379"]
            password = "{env:SENTINEL_PASS}"
            [[channel]]
            id = 1
            name = "Gate"
            source = "rtsp://cam/1"
        "#;
        let env = |name: &str| Some(format!("{name}-value"));
        let read = |_: &str| Err(std::io::Error::other("unused"));
        let mut c = Config::parse(good).unwrap();
        assert!(c.expand_secrets(&env, &read).is_empty());
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.cluster.sentinel.as_ref().unwrap().password.as_deref(), Some("SENTINEL_PASS-value"));

        let bad = r#"
            [cluster]
            redis_url = "rediss://cache:6380"
            [cluster.sentinel]
            master = "my master"
            addresses = ["10.0.0.1", "10.0.0.2:26379"]
            [[channel]]
            id = 1
            name = "Gate"
            source = "rtsp://cam/1"
        "#;
        let problems: Vec<String> = problems_of(bad);
        assert_listed(
            &problems,
            &[
                "cluster.sentinel.master: \"my master\" must be a non-empty name",
                "cluster.sentinel.addresses[0]: \"10.0.0.1\" is not host:port",
                "cluster.redis_url: rediss://cache:6380 must be a redis:// URL when [cluster.sentinel] is set",
            ],
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        let none = Config::parse("[cluster.sentinel]\nmaster = \"m\"\naddresses = []\n").unwrap().validate();
        assert!(none.iter().any(|p| p.to_string().contains("at least one sentinel")), "{none:?}");
    }

    #[test]
    fn a_channels_motion_settings_override_the_global_ones_within_the_same_limits() {
        let text = r#"
            [motion]
            pixel_threshold = 30
            [[channel]]
            id = 1
            name = "A"
            source = "rtsp://cam/1"
            [channel.motion]
            min_area = 0.01
            fps = 2
            [[channel]]
            id = 2
            name = "B"
            source = "rtsp://cam/2"
            [channel.motion]
            pixel_threshold = 300
        "#;
        let c = Config::parse(text).unwrap();
        let m = c.channels[0].motion.apply(&c.motion);
        assert_eq!((m.fps, m.min_area, m.pixel_threshold), (2.0, 0.01, 30.0));
        assert_eq!(m.end_quiet_secs, c.motion.end_quiet_secs);
        let problems: Vec<String> = c.validate().iter().map(ToString::to_string).collect();
        assert_eq!(problems, ["channel[1] (id 2).motion.pixel_threshold: 300 is out of range 1..=255"]);
        assert!(Config::parse(&text.replace("fps = 2", "fsp = 2")).unwrap_err().contains("fsp"));
    }

    #[test]
    fn gate_settings_are_checked() {
        let c = Config::parse(GOOD).unwrap();
        assert!(c.motion.gate && c.validate().is_empty(), "on by default: {:?}", c.validate());
        assert!(!Config::parse("[motion]\ngate = false\n").unwrap().motion.gate);
        let problems = problems_of(&format!("{GOOD}\n[motion]\ngate_rise = 0.5\ngate_hold_secs = 0\n"));
        assert_listed(
            &problems,
            &["motion.gate_rise: 0.5 is out of range 1..=20", "motion.gate_hold_secs: 0 is out of range 1..=3600"],
        );
        assert_eq!(c.motion.gate_keyframe_secs, 2.0);
        let problems = problems_of(&format!("{GOOD}\n[motion]\ngate_keyframe_secs = 11\n"));
        assert_listed(&problems, &["motion.gate_keyframe_secs: 11 is out of range 0..=10"]);
        let problems = problems_of(&format!("{GOOD}\n[motion]\ngate_keyframe_secs = 6\nstall_timeout_secs = 10\n"));
        assert_listed(
            &problems,
            &["motion.gate_keyframe_secs: 6 must be at most half of motion.stall_timeout_secs (10)"],
        );
        assert!(problems_of(&format!("{GOOD}\n[motion]\ngate_keyframe_secs = 0\n")).is_empty());
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let e = Config::parse("[scheduler]\nbatch_sise = 3\n").unwrap_err();
        assert!(e.contains("batch_sise"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [scheduler]
            batch_size = 0
            [motion]
            blur_kernel = 4
            [[channel]]
            id = 3
            name = "A"
            source = "rtsp://u:topsecret@cam/1"
            [[channel]]
            id = 3
            name = "B"
            source = "not a url"
        "#;
        let problems = Config::parse(text).unwrap().validate();
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"scheduler.batch_size"), "{fields:?}");
        assert!(fields.contains(&"motion.blur_kernel"), "{fields:?}");
        assert!(fields.contains(&"channel[1] (id 3).id"), "{fields:?}");
        assert!(fields.contains(&"channel[1] (id 3).source"), "{fields:?}");
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn messages_and_debug_never_show_passwords() {
        let mut c = Config::parse(GOOD).unwrap();
        c.channels[0].source = "ftp://admin:hunter2@cam/1".into();
        let text = format!("{:?} {:?}", c.validate(), c);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("ftp"), "{text}");
    }
}

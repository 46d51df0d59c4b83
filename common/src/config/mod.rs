//! The one configuration file (`cctv.toml`) shared by the scheduler and every worker.
//!
//! Every field has a documented default (see `docs/ref/config.md`); unknown fields are errors.
//! [`Config::validate`] reports every problem at once, each naming the field and, for channels,
//! the channel. Camera URLs are redacted in every message.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::redact::redact_url;

mod notify;
pub mod overlay;
mod secrets;
#[cfg(test)]
mod tests;
mod validate;

pub use notify::*;
pub use secrets::expand_secret_refs;
use validate::Problems;

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
    /// The file it was loaded from (its zones overlay lies beside it); not a setting.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis that carries the job queues, result streams and status keys: `redis://`, `unix://`,
    /// or `rediss://` for TLS (the server's certificate checked against the system's CA store or
    /// `tls_ca_file`). Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// PEM file of a private CA that signed the Redis server's certificate (`rediss://` only),
    /// trusted instead of the system's CA store. Default: none.
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key this cluster uses, so several clusters (or tests) can share one Redis. Default `cctv`.
    pub namespace: String,
    /// Redis behind Sentinel: the master's address comes from the sentinels and every connection
    /// follows a failover. `redis_url` then gives only the user, password and database. Default: none.
    pub sentinel: Option<SentinelConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { redis_url: "redis://127.0.0.1:6379".into(), tls_ca_file: None, namespace: "cctv".into(), sentinel: None }
    }
}

/// `[cluster.sentinel]`: where to ask which Redis server is the master.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
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
    /// Where masks and zones drawn in the dashboard are kept (the zones overlay). Default: beside
    /// the config file, `<name>.zones.toml`; set it where the scheduler may write when the
    /// config directory is read-only (containers).
    pub zones_overlay: Option<PathBuf>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { batch_size: 8, reconcile_interval_secs: 5.0, zones_overlay: None }
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
    /// Two wide (16:9) frames share one 640x640 input, each scaled into a 640x320 half, so one
    /// inference serves two frames; boxes over the seam are dropped. A frame waits at most
    /// `pair_wait_ms` for a partner, then runs alone; 4:3 frames always run alone. Default true:
    /// half the cost per frame, 98.7 % of single-frame boxes and seconds on real footage
    /// (docs/benchmarks.md), no YOLO frame dropped at 64 channels (docs/loadtest.md).
    pub pair_frames: bool,
    /// How long a lone frame waits for a partner with `pair_frames`, ms. Default 40.
    pub pair_wait_ms: u64,
    /// Frames per second sent per channel while it is in motion. Default 2.
    pub fps: f64,
    /// Frames per second sent per priority channel while it has a backup open but no motion
    /// (post-roll, a person standing still): a wanted object in view keeps the backup going, up
    /// to `motion.max_hold_secs` after the last motion. 0 turns it off. Default 1 (then
    /// `confirmed_fps` while a fresh result of the event still shows the object).
    pub recording_fps: f64,
    /// Frames per second sent per channel once YOLO confirmed a wanted object in the event,
    /// while every motion box stays in the region the confirmed objects explain (their boxes
    /// grown by half their size, plus as far as they can have walked since their frame at one
    /// body height a second) and the confirmation is fresh: nothing new moves, so nothing new
    /// is to be found. Onset runs at `fps` until the first confirmation; motion elsewhere, a
    /// result without the object, or a confirmation older than its interval + 2 s bring `fps`
    /// back. 0 turns it off (always `fps`). Default 0.5: the object is re-checked every 2 s,
    /// within the 5 s post-roll, a quarter of `fps`' frames (docs/loadtest.md "Sampling by need").
    pub confirmed_fps: f64,
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
            pair_frames: true,
            pair_wait_ms: 40,
            fps: 2.0,
            recording_fps: 1.0,
            confirmed_fps: 0.5,
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
    /// Record all the time: one never-ending recording cut into files at `record.max_file_seconds`
    /// boundaries (aligned to the clock), each file starting where the previous one ended.
    /// Motion and object events are marked on the recording they fall in.
    Continuous,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

// Config types that hold a secret print it redacted: a `{:?}` in a log or an error never shows
// a Redis password, a sentinel password or an MQTT password.

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &redact_url(&self.redis_url))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("namespace", &self.namespace)
            .field("sentinel", &self.sentinel)
            .finish()
    }
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("master", &self.master)
            .field("addresses", &self.addresses)
            .field("password", &self.password.as_ref().map(|_| crate::redact::MASK))
            .finish()
    }
}

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
        config.source = Some(path.to_owned());
        let drawn = config.zones_overlay_path().unwrap_or_else(|| overlay::overlay_path(path));
        let mut problems = match overlay::ZonesOverlay::read(&drawn) {
            Ok(Some(drawn)) => drawn.apply(&mut config),
            Ok(None) => Vec::new(),
            Err(e) => vec![ConfigProblem { field: "zones overlay".into(), message: e.to_string() }],
        };
        problems.extend(config.expand_secrets(&|name| std::env::var(name).ok(), &|path| std::fs::read_to_string(path)));
        config.register_secrets();
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { path: path.to_owned(), problems })
        }
    }

    /// The zones overlay's file: `scheduler.zones_overlay`, else beside the config file it was
    /// loaded from (`None` for a config not loaded from a file).
    pub fn zones_overlay_path(&self) -> Option<PathBuf> {
        self.scheduler.zones_overlay.clone().or_else(|| self.source.as_deref().map(overlay::overlay_path))
    }

    /// Parses TOML without validating. The message has camera URLs redacted.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| redact_secret_lines(&crate::redact::redact_text(&e.to_string())))
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

/// A TOML error quotes the line it stopped at: the value of a key named like a secret
/// (`token`, `secret`, `password`, ...) is masked there, whatever it holds.
fn redact_secret_lines(message: &str) -> String {
    const SECRET_KEYS: [&str; 6] = ["token", "secret", "password", "passwd", "pwd", "pass"];
    message
        .lines()
        .map(|line| {
            let Some((left, _)) = line.split_once('=') else { return line.to_string() };
            let key = left.rsplit('|').next().unwrap_or(left).trim().to_ascii_lowercase();
            if SECRET_KEYS.iter().any(|k| key.contains(k)) {
                format!("{left}= {}", crate::redact::MASK)
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// URL schemes accepted for camera sources (`file` is for simulated cameras and tests).
pub const CAMERA_SCHEMES: &[&str] = &["rtsp", "rtsps", "rtmp", "http", "https", "srt", "file"];

fn days_duration(days: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(days * 86_400.0)
}

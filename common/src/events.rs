//! Result and status structs workers publish (Redis streams and status keys).

use serde::{Deserialize, Serialize};

/// Decodes one result-stream entry (its `data` field holds the event's JSON).
pub fn decode_entry<T: serde::de::DeserializeOwned>(
    map: &std::collections::HashMap<String, redis::Value>,
) -> Option<T> {
    let data: String = redis::from_redis_value(map.get("data")?.clone()).ok()?;
    serde_json::from_str(&data).ok()
}

/// The milliseconds of a stream id (`<ms>-<seq>`); sequence numbers count per stream, so they
/// do not order entries of different streams.
pub fn stream_id_ms(id: &str) -> u64 {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().unwrap_or(0)
}

/// The id of a stream's newest entry, `0-0` when it is empty.
pub async fn last_stream_id<C: redis::aio::ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
) -> redis::RedisResult<String> {
    let last: redis::streams::StreamRangeReply =
        redis::AsyncCommands::xrevrange_count(conn, stream, "+", "-", 1).await?;
    Ok(last.ids.first().map(|e| e.id.clone()).unwrap_or_else(|| "0-0".into()))
}

/// A stream reader's positions, kept in the hash `cursor_key` (stream → last id handled): one
/// per stream of `streams`, in order. A stream without one starts at its newest entry, stored
/// at once (a new reader does not replay history).
pub async fn stream_positions<C: redis::aio::ConnectionLike + Send + Sync>(
    conn: &mut C,
    cursor_key: &str,
    streams: &[String],
) -> redis::RedisResult<Vec<String>> {
    use redis::AsyncCommands;
    let known: std::collections::HashMap<String, String> = conn.hgetall(cursor_key).await?;
    let mut ids = Vec::new();
    for s in streams {
        let id = match known.get(s) {
            Some(id) => id.clone(),
            None => {
                let id = last_stream_id(conn, s).await?;
                let _: () = conn.hset(cursor_key, s, &id).await?;
                id
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

/// Milliseconds since the Unix epoch, wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MotionEventKind {
    Start,
    /// The event in progress touched a `[[channel.zone]]` it had not touched before; `zones`
    /// lists every zone it touched so far.
    Zone,
    End,
}

/// A motion box, fractions of the analysed frame (0..1), so it maps onto any resolution.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NormBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// One entry of `<ns>:events:motion` and of the motion log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MotionEvent {
    /// Shared by the `start` and `end` of one motion event.
    pub event_id: String,
    pub channel: u32,
    pub kind: MotionEventKind,
    /// Wall-clock time of the frame that started or ended the event, ms since epoch.
    pub ts_ms: i64,
    /// For `end`: when the event started; for `start`: same as `ts_ms`.
    pub started_ms: i64,
    /// Changed fraction of the frame (start: at the start frame; end: the largest seen).
    pub area: f32,
    pub boxes: Vec<NormBox>,
    /// The channel's zones the activity touched: at `start` in its first frame, at `zone` and
    /// `end` in any frame so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// For `end`: the last frame that showed activity — motion, or presence of something that
    /// stopped moving (post-roll counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_motion_ms: Option<i64>,
    pub worker: String,
    pub job: String,
    /// Per channel and worker, counts the motion events this worker published (from 1). The
    /// channel status carries the latest one, so the scheduler can tell an event whose `end`
    /// will never come (its worker is gone or published no `end`) from one still running.
    #[serde(default)]
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelState {
    /// Reader starting, no frame yet.
    Connecting,
    Idle,
    Motion,
    Offline,
}

/// `<ns>:status:channel:<id>`, refreshed every few seconds with a TTL: a channel whose worker
/// died simply disappears (reported as unknown).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChannelStatus {
    pub channel: u32,
    pub online: bool,
    pub state: ChannelState,
    /// Why the channel is offline (redacted ffmpeg error, stall, ...).
    pub reason: Option<String>,
    /// Frames analysed per second over the last window.
    pub fps: f32,
    pub last_frame_ms: Option<i64>,
    pub last_motion_ms: Option<i64>,
    /// Since when this worker's reader has analysed the channel without interruption (its
    /// first frame): the orphan watchdog waits for a taking-over detector to have watched the
    /// scene for `end_quiet_secs` before it ends the lost worker's event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysing_since_ms: Option<i64>,
    pub frames_total: u64,
    /// Frames the compressed-domain gate left undecoded because the stream showed nothing
    /// happening (counted at the analysis rate): with `frames_total`, the frames the channel
    /// was watched for.
    #[serde(default)]
    pub frames_gated: u64,
    /// YOLO frames sampling by need did not send (a confirmed object explained the motion)
    /// that `yolo.fps` would have, since the reader started.
    #[serde(default)]
    pub yolo_frames_skipped: u64,
    pub worker: String,
    pub batch: String,
    pub updated_ms: i64,
    /// The motion event in progress as published on `<ns>:events:motion` (its `start` was
    /// published before this status was written, its `end` not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_event: Option<String>,
    /// `seq` of the last motion event published for this channel by `worker`.
    #[serde(default)]
    pub seq: u64,
}

/// `<ns>:workers:<worker>`: which worker holds what, refreshed with a TTL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct WorkerHeartbeat {
    pub worker: String,
    pub kind: String,
    pub host: String,
    pub pid: u32,
    pub batches: Vec<String>,
    /// CPU of the process, percent of one core, since the previous heartbeat.
    #[serde(default)]
    pub cpu_percent: Option<f32>,
    /// Resident memory of the process.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    pub updated_ms: i64,
}

/// One object YOLO found, in pixels of the frame it was sent (x1, y1, x2, y2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Detection {
    pub label: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The channel's zones the box touches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
}

/// One entry of `<ns>:events:objects` and of the objects log: the verdict on one frame, also
/// when nothing wanted was in it (that is how motion without objects is told apart).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ObjectEvent {
    pub channel: u32,
    /// Wall-clock time of the frame, ms since epoch.
    pub frame_ts_ms: i64,
    /// The motion event the frame belongs to.
    pub motion_event: String,
    /// Wanted objects found, best first; empty when none.
    pub detections: Vec<Detection>,
    pub frame_width: u32,
    pub frame_height: u32,
    /// Frame time to result published, ms.
    pub latency_ms: i64,
    /// Frames in the model batch this one ran in.
    pub batch_size: usize,
    /// Annotated JPEG written for a positive result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub job: String,
    pub worker: String,
    pub ts_ms: i64,
}

/// What a backup-category entry reports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupEventKind {
    /// A backup file was written and validated.
    File,
    /// Recording or writing failed (the recording is retried while the buffer holds its video).
    Error,
    /// A backup file was deleted by rotation.
    Deleted,
}

/// One entry of `<ns>:events:backup` and of the backup log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct BackupEvent {
    pub kind: BackupEventKind,
    pub channel: u32,
    pub recording: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Part number within the recording (long events are split), from 1.
    #[serde(default)]
    pub part: u32,
    /// Wall-clock time of the file's first and last video, ms since epoch.
    #[serde(default)]
    pub start_ms: i64,
    #[serde(default)]
    pub end_ms: i64,
    #[serde(default)]
    pub duration_secs: f64,
    #[serde(default)]
    pub size_bytes: u64,
    /// `motion` or `objects`, the motion event ids and labels that made the recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<crate::jobs::RecordTrigger>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Video before the trigger in this file (first part only), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_roll_ms: Option<i64>,
    /// Wall-clock time the worker began writing this file (first fragment spooled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writing_since_ms: Option<i64>,
    /// ffprobe's verdict: codec, resolution, duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    /// The file's video codec as ffmpeg names it (`h264`, `hevc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_codec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub worker: String,
    #[serde(default)]
    pub job: String,
    pub ts_ms: i64,
}

impl BackupEvent {
    /// A backup file `path` of `size_bytes` was deleted by `worker` (rotation, retention, the
    /// API), `why` in `error`; the channel comes from the file's name.
    pub fn deleted(path: &std::path::Path, size_bytes: u64, why: String, worker: &str) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self {
            kind: BackupEventKind::Deleted,
            channel: crate::naming::backup_channel(&name).unwrap_or(0),
            recording: String::new(),
            file: Some(path.display().to_string()),
            part: 0,
            start_ms: 0,
            end_ms: 0,
            duration_secs: 0.0,
            size_bytes,
            trigger: None,
            events: vec![],
            pre_roll_ms: None,
            writing_since_ms: None,
            validation: None,
            video_codec: None,
            error: Some(why),
            worker: worker.to_string(),
            job: String::new(),
            ts_ms: now_ms(),
        }
    }

    /// The file's name without its directory (what the API serves it under).
    pub fn file_name(&self) -> Option<String> {
        Some(std::path::Path::new(self.file.as_deref()?).file_name()?.to_string_lossy().into_owned())
    }
}

/// `<ns>:storage:<node>`: the disk holding one node's backup directory, refreshed with a TTL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StorageReport {
    /// Host and backup directory: one report per volume a worker writes to.
    pub node: String,
    pub host: String,
    pub worker: String,
    pub backup_dir: String,
    pub mount_point: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub used_percent: f64,
    /// Bytes of backup files in the directory.
    pub backup_bytes: u64,
    pub backup_files: u64,
    /// Bytes of the H.264 copies made for browsers that cannot play H.265 backups.
    #[serde(default)]
    pub h264_copy_bytes: u64,
    /// When the oldest backup kept was last written (ms): how far back the footage goes.
    #[serde(default)]
    pub oldest_backup_ms: Option<i64>,
    /// Bytes written per second by the recorder, recent average.
    pub write_rate_bps: f64,
    /// Free space divided by the write rate; `None` while nothing is written.
    pub hours_left: Option<f64>,
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub updated_ms: i64,
}

//! What the API answers, as types: each handler returns one of these, and the OpenAPI document
//! (`super::openapi`) is generated from them, so the document cannot drift from the answers.
//!
//! Every list endpoint answers the same envelope, [`Page`]: `items` and `next_cursor` (`null`
//! on the last page; lists that are never long, such as channels, always answer one page).

use cctv_common::config::{RecordPolicy, ScheduleWindow, ZoneConfig};
use cctv_common::events::{
    BackupEvent, ChannelState, Detection, MotionEvent, ObjectEvent, StorageReport, WorkerHeartbeat,
};
use cctv_common::jobs::RecordTrigger;
use cctv_common::queue::JobInfo;
use cctv_common::system::SystemEvent;
use serde::Serialize;
use utoipa::ToSchema;

use cctv_common::status::RelayStatus;

/// One page of a list: its items, newest first where they have a time, and the cursor that
/// asks for the next page (`null`: this is the last).
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A list that is always answered whole.
    pub fn whole(items: Vec<T>) -> Self {
        Self { items, next_cursor: None }
    }
}

/// An error: what was wrong, naming the parameter, id or file.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /api/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` while Redis does not answer.
    pub status: String,
    pub redis: bool,
    pub version: String,
    /// The time zone backups are named in and the dashboard shows times in (`record.timezone`).
    pub timezone: String,
    /// Reading needs signing in (`api.viewer_token`): the dashboard offers to sign out.
    pub sign_in: bool,
}

/// A channel as the API shows it: its settings (never its camera URL) and live status.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelView {
    pub id: u32,
    pub name: String,
    pub priority: bool,
    pub record: RecordPolicy,
    /// The objects that make it record under the `objects` policy.
    pub labels: Vec<String>,
    /// nginx-rtmp stream names: recorded (main) and analysed (detect).
    pub stream: String,
    pub detect_stream: String,
    /// `null` until a motion worker reported the channel.
    pub online: Option<bool>,
    pub state: Option<ChannelState>,
    /// Why it is offline (redacted).
    pub reason: Option<String>,
    pub fps: Option<f32>,
    pub last_motion_ms: Option<i64>,
    pub worker: Option<String>,
    /// The relay's view of the camera: running, restarts, redacted last error, each stream's
    /// probe and route.
    pub relay: Option<RelayStatus>,
    /// What the camera sends, e.g. "main H.265 1280x720 25 fps · audio G.711 A-law · sub H.264
    /// 640x360" (from the relay's probes; absent until probed).
    pub codecs: Option<String>,
    /// URL of the latest picture.
    pub preview: String,
    /// Mask polygons, normalised `[x, y]` corners.
    pub masks: Vec<Vec<[f32; 2]>>,
    pub zones: Vec<ZoneConfig>,
    pub record_zones: Vec<String>,
    pub schedule: Vec<ScheduleWindow>,
    pub last_objects: Option<LastObjects>,
    pub last_backup: Option<LastBackup>,
}

/// The channel's latest positive YOLO result.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastObjects {
    pub ts_ms: i64,
    pub labels: Vec<String>,
    /// URL of the annotated snapshot.
    pub snapshot: Option<String>,
}

/// The channel's latest backup file.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastBackup {
    pub ts_ms: i64,
    pub file: Option<String>,
}

/// One event of a category, as stored in its stream.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AnyEvent {
    Motion(MotionEvent),
    Objects(ObjectEvent),
    Backup(BackupEvent),
    System(SystemEvent),
}

/// An entry of `GET /api/events`: its stream id (what cursors are made of) and the event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventItem {
    pub id: String,
    pub event: AnyEvent,
}

/// `GET /api/events`: a page of one category.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub category: String,
    pub items: Vec<EventItem>,
    pub next_cursor: Option<String>,
}

/// A backup file that exists (not deleted).
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupItem {
    pub channel: u32,
    pub file: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
    pub duration_secs: f64,
    pub size_bytes: u64,
    pub trigger: Option<RecordTrigger>,
    /// Part number within its recording (long recordings are split at `max_file_seconds`).
    pub part: u32,
    pub pre_roll_ms: Option<i64>,
    /// ffprobe's view of the file when it was written.
    pub validation: Option<String>,
    pub recording: String,
    /// URL that serves it (HTTP Range supported).
    pub download: Option<String>,
    /// Rotation and retention never delete it.
    pub protected: bool,
    /// Its video codec as ffmpeg names it (`h264`, `hevc`), as worker-record wrote it.
    pub codec: Option<String>,
    /// For an H.265 backup: a browser-playable H.264 copy, made on first request and cached
    /// beside the backups (deleted with the backup, counted in `/api/storage`).
    pub h264_copy: Option<String>,
}

/// An annotated snapshot of a positive YOLO result.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotItem {
    pub channel: u32,
    pub frame_ts_ms: i64,
    pub detections: Vec<Detection>,
    pub url: String,
}

/// `GET /api/jobs/{queue}`: a page of jobs in one state.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub queue: String,
    pub state: String,
    pub items: Vec<JobInfo>,
    pub next_cursor: Option<String>,
}

/// `DELETE /api/backups/file/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// `POST|DELETE /api/backups/file/{name}/protect`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Protection {
    pub file: String,
    pub protected: bool,
}

/// `POST /api/jobs/{queue}/{id}/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    pub retried: String,
    /// The new job's id.
    pub job: String,
}

/// `POST /api/jobs/{queue}/purge`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    pub queue: String,
    pub purged: u64,
}

/// `POST /api/jobs/record/enqueue`: the recording made and its job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Enqueued {
    pub recording: String,
    pub job: String,
}

/// Lists of the storage and worker endpoints.
pub type StoragePage = Page<StorageReport>;
pub type WorkerPage = Page<WorkerHeartbeat>;

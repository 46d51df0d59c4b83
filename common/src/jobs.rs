//! Job structs: one per job kind, each with its queue name beside it.
//!
//! Only these types travel through the job queues. A handler's failure is either
//! [`JobError::Permanent`] (bad input: never retried) or [`JobError::Transient`] (a server or
//! stream was unavailable: retried).

use serde::{Deserialize, Serialize};

use crate::config::{ChannelConfig, MotionConfig, RecordPolicy};

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
}

impl MotionChannel {
    pub fn from_config(c: &ChannelConfig) -> Self {
        Self {
            id: c.id,
            name: c.name.clone(),
            detect_stream: c.detect_stream_name(),
            priority: c.priority,
            record: c.record,
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

//! What YOLO last saw on a channel, fed back to the motion worker so it samples by need: full
//! rate at a motion event's onset until a wanted object is confirmed, then `yolo.confirmed_fps`
//! while the motion stays inside the boxes already explained (the decision is
//! `worker_motion::sampling`). Stored once per channel by worker-yolo, newest frame first
//! (`lua/seen_store.lua`), read by worker-motion's batch supervisor.

use serde::{Deserialize, Serialize};

use crate::events::NormBox;
use crate::Keys;

const STORE: &str = include_str!("lua/seen_store.lua");

/// Kept this long after the result: a worker-motion that reads nothing newer samples at full
/// rate again long before (`worker_motion::sampling` also ages it by its frame time).
const TTL_MS: i64 = 60_000;

/// The wanted objects YOLO found in one frame of a channel (none: it looked and saw nothing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectsSeen {
    pub channel: u32,
    /// The motion event the frame belongs to: a new event starts at full rate.
    pub motion_event: String,
    /// Wall-clock time of the frame, ms since epoch.
    pub frame_ts_ms: i64,
    /// Boxes of the wanted objects, fractions of the frame.
    pub boxes: Vec<NormBox>,
}

/// Stores `seen` unless a newer frame's result is already there.
pub async fn store<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    seen: &ObjectsSeen,
) -> redis::RedisResult<()> {
    let json = serde_json::to_string(seen)
        .map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "encoding ObjectsSeen", e.to_string())))?;
    let _: i64 = redis::Script::new(STORE)
        .key(keys.yolo_seen(seen.channel))
        .arg(json)
        .arg(seen.frame_ts_ms)
        .arg(TTL_MS)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// The latest result stored for each of `channels` (`None` where there is none or it does not
/// decode), in the same order.
pub async fn load<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    channels: &[u32],
) -> redis::RedisResult<Vec<Option<ObjectsSeen>>> {
    if channels.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = channels.iter().map(|c| keys.yolo_seen(*c)).collect();
    // MGET itself: the client's `mget` sends GET for one key, whose reply is not a list.
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&names).query_async(conn).await?;
    Ok(values.into_iter().map(|v| v.and_then(|v| serde_json::from_str(&v).ok())).collect())
}

//! The result streams and the one way onto them. Each stream's cap sits beside its key: every
//! publisher trims with it (approximate `MAXLEN`, so trimming is cheap), so no stream grows
//! without bound whoever writes to it.

use redis::aio::ConnectionLike;

use crate::keys::Keys;

/// A result stream of the cluster; entries are `data` = one event as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `<ns>:events:motion`: `MotionEvent`s (worker-motion).
    Motion,
    /// `<ns>:events:objects`: `ObjectEvent`s (worker-yolo).
    Objects,
    /// `<ns>:events:backup`: `BackupEvent`s (worker-record, rotation, the API's deletes).
    Backup,
    /// `<ns>:events:system`: `SystemEvent`s (every process).
    System,
}

impl Stream {
    pub const ALL: [Stream; 4] = [Stream::Motion, Stream::Objects, Stream::Backup, Stream::System];

    pub fn key(self, keys: &Keys) -> String {
        match self {
            Stream::Motion => keys.motion_events(),
            Stream::Objects => keys.object_events(),
            Stream::Backup => keys.backup_events(),
            Stream::System => keys.system_events(),
        }
    }

    /// Entries kept (about: trimming is approximate). Result streams hold days of a busy site;
    /// system events are rarer and smaller.
    pub fn cap(self) -> usize {
        match self {
            Stream::Motion | Stream::Objects | Stream::Backup => 100_000,
            Stream::System => 20_000,
        }
    }
}

/// Appends one event, already encoded as JSON (a publisher that keeps an outbox encodes once),
/// trimmed to the stream's cap. Returns the entry id.
pub async fn publish_json<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    stream: Stream,
    json: &str,
) -> redis::RedisResult<String> {
    redis::cmd("XADD")
        .arg(stream.key(keys))
        .arg("MAXLEN")
        .arg("~")
        .arg(stream.cap())
        .arg("*")
        .arg("data")
        .arg(json)
        .query_async(conn)
        .await
}

/// Why an event did not reach its stream.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("encoding the event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Appends `event` as JSON (see [`publish_json`]).
pub async fn publish<C: ConnectionLike + Send, T: serde::Serialize>(
    conn: &mut C,
    keys: &Keys,
    stream: Stream,
    event: &T,
) -> Result<String, PublishError> {
    let json = serde_json::to_string(event)?;
    Ok(publish_json(conn, keys, stream, &json).await?)
}

//! What every handler shares: the state (Redis, keys, config, metrics) and the error answer.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cctv_common::config::{ChannelConfig, Config};
use cctv_common::keys::Keys;
use redis::aio::ConnectionManager;

use crate::metrics::ClusterMetrics;
use crate::views::ErrorBody;

impl ApiState {
    /// The configured channel a path names: 400 when it is not a number, 404 when no such
    /// channel is configured.
    pub(crate) fn channel(&self, id: &str) -> ApiResult<&ChannelConfig> {
        let id: u32 = id.parse().map_err(|_| ApiError::bad(format!("{id:?} is not a channel number")))?;
        self.config.channel(id).ok_or_else(|| ApiError::not_found(format!("channel {id} is not configured")))
    }
}

/// The handlers' shared state.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) conn: ConnectionManager,
    pub(crate) keys: Keys,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<ClusterMetrics>,
    /// The backup files not deleted, as of the backup stream's last entry (see
    /// [`LiveBackups`]); one reader at a time rebuilds it.
    pub(crate) backups: Arc<tokio::sync::Mutex<LiveBackups>>,
    /// The streams watched live (`crate::live`).
    pub(crate) live: Arc<crate::live::LiveHub>,
}

/// The backup list derived from the backup event stream (up to 100,000 entries to read and
/// decode), kept until the stream changes: the stream's last entry id is its version, since
/// every change (a file, a deletion, trimming on append) appends an entry. A list request costs
/// one `XREVRANGE COUNT 1` unless a backup event arrived since the last one.
#[derive(Default)]
pub(crate) struct LiveBackups {
    pub(crate) last_id: Option<String>,
    pub(crate) files: Arc<Vec<cctv_common::events::BackupEvent>>,
}

/// An error answer: status and a message naming what was wrong.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
    pub(crate) fn not_found(msg: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}"))
    }
}

impl From<cctv_common::queue::QueueError> for ApiError {
    fn from(e: cctv_common::queue::QueueError) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

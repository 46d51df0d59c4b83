//! Pictures of motion events: the JPEG of each event's busiest frame, written by the motion
//! worker (`Keys::motion_thumbnail`, kept 14 days). Object events have their annotated YOLO
//! snapshot instead (`/api/snapshots/...`).

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use redis::AsyncCommands;

use crate::state::{ApiError, ApiResult, ApiState};
use crate::views::ErrorBody;

/// The picture of a motion event: its busiest frame so far (the first frame while it starts,
/// the busiest once it ended), colour on priority channels, else the grey frame analysed.
#[utoipa::path(get, path = "/api/events/motion/{event_id}/picture.jpg", tag = "events",
    params(("event_id" = String, Path, description = "the motion event's event_id")),
    responses((status = 200, content_type = "image/jpeg", body = Vec<u8>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn motion_picture(State(s): State<ApiState>, Path(event_id): Path<String>) -> ApiResult<Response> {
    let plain = !event_id.is_empty()
        && event_id.len() <= 128
        && event_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plain {
        return Err(ApiError::bad(format!("{event_id:?} is not a motion event id")));
    }
    let jpeg: Option<Vec<u8>> = s.conn.clone().get(s.keys.motion_thumbnail(&event_id)).await?;
    let jpeg = jpeg.ok_or_else(|| ApiError::not_found(format!("no picture of motion event {event_id}")))?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "max-age=60")], jpeg).into_response())
}

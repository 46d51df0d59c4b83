//! Masks and zones drawn on the camera's picture: read the channel's drawing, and save a new
//! one to the zones overlay (`common::config::overlay`) with the admin token. A drawing is
//! saved only if the config with it applied validates as `check-config` would; otherwise the
//! answer lists every reason and nothing is written. The scheduler notices the new overlay and
//! re-plans: motion workers use the new masks and zones without a restart.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use cctv_common::config::overlay::{ChannelZones, ZonesOverlay};
use cctv_common::config::{ChannelConfig, MaskConfig, ZoneConfig};
use serde::{Deserialize, Serialize};

use crate::state::{ApiError, ApiResult, ApiState};
use crate::views::ErrorBody;

/// A channel's masks and zones, as motion uses them (or will, once saved).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Drawing {
    #[serde(default)]
    pub mask: Vec<MaskConfig>,
    #[serde(default)]
    pub zone: Vec<ZoneConfig>,
}

/// What a save did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrawingSaved {
    pub channel: u32,
    /// The overlay file written.
    pub overlay: String,
    /// Motion uses it within about this many seconds (the scheduler's round).
    pub applies_within_secs: f64,
}

fn read_overlay(s: &ApiState) -> ApiResult<(std::path::PathBuf, ZonesOverlay)> {
    let path = s.config.zones_overlay_path().ok_or_else(|| {
        ApiError(StatusCode::CONFLICT, "this API was not started from a config file: there is no overlay".into())
    })?;
    let overlay = ZonesOverlay::read(&path)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .unwrap_or_default();
    Ok((path, overlay))
}

/// The drawings saved so far (none when there is no overlay or it cannot be read: the config's
/// own masks and zones then stand). Read once per request, for every channel it shows.
pub(crate) fn drawn(s: &ApiState) -> ZonesOverlay {
    read_overlay(s).map(|(_, o)| o).unwrap_or_default()
}

/// The channel's masks and zones: the drawn ones when it has some, else the config's.
pub(crate) fn effective(drawn: &ZonesOverlay, ch: &ChannelConfig) -> Drawing {
    match drawn.channel.iter().find(|c| c.id == ch.id) {
        Some(d) => Drawing { mask: d.mask.clone(), zone: d.zone.clone() },
        None => Drawing { mask: ch.mask.clone(), zone: ch.zone.clone() },
    }
}

/// A channel's masks and zones (normalised `[x, y]` corners, `[0, 0]` top-left).
#[utoipa::path(get, path = "/api/channels/{id}/zones", tag = "channels",
    params(("id" = u32, Path, description = "channel id")),
    responses((status = 200, body = Drawing), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_zones(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<Json<Drawing>> {
    let ch = s.channel(&id)?;
    Ok(Json(effective(&drawn(&s), ch)))
}

/// Saves a channel's masks and zones to the zones overlay, once the config with them applied
/// validates; a bad drawing is refused with every reason and nothing is written.
#[utoipa::path(put, path = "/api/channels/{id}/zones", tag = "channels", security(("bearer" = [])),
    params(("id" = u32, Path, description = "channel id")), request_body = Drawing,
    responses((status = 200, body = DrawingSaved), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn put_zones(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(drawing): Json<Drawing>,
) -> ApiResult<Json<DrawingSaved>> {
    crate::auth::require_token(&s, &headers)?;
    let id = s.channel(&id)?.id;
    let (path, mut overlay) = read_overlay(&s)?;
    overlay.set(ChannelZones { id, mask: drawing.mask, zone: drawing.zone });
    let mut check = (*s.config).clone();
    let mut problems = overlay.apply(&mut check);
    problems.extend(check.validate());
    if !problems.is_empty() {
        let reasons: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Err(ApiError::bad(format!("channel {id}: drawing refused, nothing saved: {}", reasons.join("; "))));
    }
    overlay.write(&path).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(channel = id, overlay = %path.display(), "masks and zones saved");
    Ok(Json(DrawingSaved {
        channel: id,
        overlay: path.display().to_string(),
        applies_within_secs: s.config.scheduler.reconcile_interval_secs,
    }))
}

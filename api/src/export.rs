//! `GET /api/export` and `/api/export/plan`: a time range of a channel as one MP4, made by
//! stream copy from the backup files on this host ([`cctv_common::export`]); the holes are in
//! the answer (`X-CCTV-Holes`, and the plan), never papered over.
//!
//! Made exports are kept a while under the temp directory, named by what they hold, so the
//! range requests of a `<video>` element and a repeated download reuse the file.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use cctv_common::events::now_ms;
use cctv_common::export::{ExportPlan, Hole};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::state::{ApiError, ApiResult, ApiState};
use crate::views::ErrorBody;
use crate::Params;

/// The longest range one request may export (a main stream at 4 Mbit/s: about 11 GB).
pub const MAX_RANGE_MS: i64 = 6 * 3_600_000;
/// How long a made export is kept for repeated and range requests.
const KEEP: Duration = Duration::from_secs(3600);

/// One export made at a time per API process: each is disk and I/O work.
static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A part of one backup file in the export.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportPieceView {
    pub file: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// What an export of the range holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportPlanView {
    pub channel: u32,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Seconds of video (each piece starts at the keyframe at or before its moment).
    pub covered_secs: f64,
    pub pieces: Vec<ExportPieceView>,
    /// Time in the range no backup covers.
    pub holes: Vec<Hole>,
    /// The MP4 of this range.
    pub download: String,
}

/// The plan of the request's range, after checking its parameters.
async fn plan_of(s: &ApiState, q: HashMap<String, String>) -> ApiResult<ExportPlan> {
    let p = Params(q);
    p.check_known(&["channel", "from", "to"])?;
    let channel = p.channel(&s.config)?.ok_or_else(|| ApiError::bad("channel: required"))?;
    let tz = cctv_common::timefmt::zone(&s.config.record.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let time = |name: &str| -> ApiResult<i64> {
        let v = p.0.get(name).ok_or_else(|| ApiError::bad(format!("{name}: required")))?;
        cctv_common::timefmt::parse_time_in(v, now_ms(), &tz).map_err(|e| ApiError::bad(format!("{name}: {e}")))
    };
    let (from_ms, to_ms) = (time("from")?, time("to")?);
    if to_ms - from_ms > MAX_RANGE_MS {
        return Err(ApiError::bad(format!(
            "to: the range is {:.1} h; at most {} h per export (split it, or use `cctv export` on the storage host)",
            (to_ms - from_ms) as f64 / 3.6e6,
            MAX_RANGE_MS / 3_600_000
        )));
    }
    let events = crate::live_backups(s).await?;
    let sources = cctv_common::export::sources(&events, channel, &s.config.record.backup_dir);
    cctv_common::export::plan(channel, &sources, from_ms, to_ms).map_err(|e| match e {
        cctv_common::export::ExportError::NothingCovered { .. } => ApiError::not_found(e.to_string()),
        other => ApiError::bad(other.to_string()),
    })
}

fn view(plan: &ExportPlan) -> ExportPlanView {
    ExportPlanView {
        channel: plan.channel,
        from_ms: plan.from_ms,
        to_ms: plan.to_ms,
        covered_secs: plan.covered_secs(),
        pieces: plan
            .pieces
            .iter()
            .map(|p| ExportPieceView { file: p.file.clone(), from_ms: p.from_ms, to_ms: p.to_ms })
            .collect(),
        holes: plan.holes.clone(),
        download: format!("/api/export?channel={}&from={}&to={}", plan.channel, plan.from_ms, plan.to_ms),
    }
}

/// What an export of a range would hold: its pieces and holes (nothing is made).
#[utoipa::path(get, path = "/api/export/plan", tag = "backups",
    params(
        ("channel" = u32, Query, description = "a configured channel id"),
        ("from" = String, Query, description = "start: site time (2026-12-07T14:00), a time ago (2h) or ms since the epoch"),
        ("to" = String, Query, description = "end, same forms; at most 6 h after from")),
    responses((status = 200, body = ExportPlanView), (status = 400, body = ErrorBody),
        (status = 404, description = "no backup covers the range", body = ErrorBody)))]
pub async fn export_plan(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<ExportPlanView>> {
    Ok(Json(view(&plan_of(&s, q).await?)))
}

/// A range of a channel as one MP4 (stream copy of the backups, cut at keyframes). The holes
/// are in `X-CCTV-Holes` (JSON, as in the plan); HTTP Range is supported.
#[utoipa::path(get, path = "/api/export", tag = "backups",
    params(
        ("channel" = u32, Query, description = "a configured channel id"),
        ("from" = String, Query, description = "start: site time, a time ago or ms since the epoch"),
        ("to" = String, Query, description = "end, same forms; at most 6 h after from")),
    responses((status = 200, description = "the MP4", body = Vec<u8>), (status = 206, description = "the range asked for", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, description = "no backup covers the range", body = ErrorBody)))]
pub async fn export(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<Response> {
    let plan = plan_of(&s, q).await?;
    let dir = std::env::temp_dir().join(format!("cctv-exports-{}", std::process::id()));
    let path = dir.join(file_name(&plan));
    if !path.is_file() {
        let _making = MAKING.lock().await;
        if !path.is_file() {
            let (p, out, d) = (plan.clone(), path.clone(), dir.clone());
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
                forget_old(&d);
                cctv_common::export::write(&p, &out, Duration::from_secs(600)).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("exporting: {e}")))?;
        }
    }
    let mut response = crate::serve_file(path, req).await?;
    let holes = serde_json::to_string(&plan.holes).unwrap_or_else(|_| "[]".into());
    let name = format!("ch{}_{}_{}.mp4", plan.channel, plan.from_ms, plan.to_ms);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&holes) {
        headers.insert("x-cctv-holes", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Named by what it holds: the same plan (range and pieces) is the same file.
fn file_name(plan: &ExportPlan) -> String {
    let json = serde_json::to_string(plan).unwrap_or_default();
    let digest: String = Sha256::digest(json.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("ch{}_{}_{}_{digest}.mp4", plan.channel, plan.from_ms, plan.to_ms)
}

/// Removes exports made more than [`KEEP`] ago.
fn forget_old(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() > KEEP);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

//! The HTTP API, `/metrics` and the dashboard, served by `scheduler run` (axum).
//!
//! Everything is read from Redis (and, for downloads, from the backup and snapshot directories
//! when this host has them). Binds 127.0.0.1 by default. Mutating endpoints need
//! `Authorization: Bearer <api.token>`. Bad parameters are 400 with a message naming the
//! parameter, unknown ids 404; no endpoint ever returns a camera URL.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cctv_common::config::Config;
use cctv_common::events::{
    decode_entry, now_ms, BackupEvent, BackupEventKind, ChannelStatus, ObjectEvent, StorageReport, WorkerHeartbeat,
};
use cctv_common::jobs::{MotionJob, RecordJob, YoloJob};
use cctv_common::keys::Keys;
use cctv_common::queue::{JobInfo, Queue, QueuesOverview};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tower::ServiceExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::metrics::ClusterMetrics;
use views::*;

pub mod auth;
mod export;
mod headers;
mod live;
pub mod metrics;
pub mod openapi;
mod pictures;
pub mod server;
pub mod session;
mod state;
pub mod views;
mod zones;

use state::ApiResult;
pub use state::{ApiError, ApiState};

use auth::require_token;

pub(crate) const DASHBOARD: &str = include_str!("dashboard.html");
/// hls.js (vendor/README.md): the live view in browsers without native HLS.
const HLS_JS: &str = include_str!("vendor/hls.light.min.js");
/// The longest the API waits for nginx-rtmp's HLS server.
const LIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// `/api/docs`: a page that renders the OpenAPI document in the browser (no outside script,
/// works offline).
pub(crate) const API_DOCS: &str = include_str!("apidocs.html");
/// Categories and their streams.
const CATEGORIES: [&str; 4] = ["motion", "objects", "backup", "system"];

/// The router; `metrics` is fed by [`crate::metrics::follow_events`]. Every route is
/// registered with its `#[utoipa::path]` (`routes!`), so none is served undocumented.
pub fn router(config: Arc<Config>, conn: ConnectionManager, metrics: Arc<ClusterMetrics>) -> Router {
    let state = ApiState {
        conn,
        keys: Keys::new(&config.cluster.namespace),
        config,
        metrics,
        backups: Default::default(),
        live: Default::default(),
    };
    let (router, doc) = documented_routes().split_for_parts();
    let doc = Arc::new(openapi::finish(doc));
    router
        .route("/api/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .fallback(|| async { ApiError::not_found("no such endpoint (see /api/openapi.json)") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_viewer))
        .layer(axum::middleware::map_response(headers::add))
        .with_state(state)
}

/// The routes and their documentation.
fn documented_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(dashboard))
        .routes(routes!(auth::login_page, auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(health))
        .routes(routes!(channels))
        .routes(routes!(channel))
        .routes(routes!(channel_preview))
        .routes(routes!(channel_live))
        .routes(routes!(live::live_ws))
        .routes(routes!(live::live_feeds))
        .routes(routes!(zones::get_zones, zones::put_zones))
        .routes(routes!(hls_js))
        .routes(routes!(ui_module))
        .routes(routes!(events))
        .routes(routes!(pictures::motion_picture))
        .routes(routes!(backups))
        .routes(routes!(download_backup, delete_backup))
        .routes(routes!(backup_h264_copy))
        .routes(routes!(export::export_plan))
        .routes(routes!(export::export))
        .routes(routes!(protect_backup, unprotect_backup))
        .routes(routes!(snapshots))
        .routes(routes!(snapshot_file))
        .routes(routes!(storage))
        .routes(routes!(workers))
        .routes(routes!(jobs))
        .routes(routes!(job_list))
        .routes(routes!(job_show))
        .routes(routes!(job_retry))
        .routes(routes!(job_purge))
        .routes(routes!(job_enqueue_record))
        .routes(routes!(api_docs))
        .routes(routes!(metrics_page))
}

/// The OpenAPI document as served.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(documented_routes().into_openapi())
}

/// The dashboard.
#[utoipa::path(get, path = "/", tag = "pages", responses((status = 200, content_type = "text/html", body = String)))]
async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

/// This document as a browsable page.
#[utoipa::path(get, path = "/api/docs", tag = "pages", responses((status = 200, content_type = "text/html", body = String)))]
async fn api_docs() -> Html<&'static str> {
    Html(API_DOCS)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    config: Arc<Config>,
    conn: ConnectionManager,
    listener: tokio::net::TcpListener,
    shutdown: cctv_common::shutdown::CancellationToken,
) -> std::io::Result<()> {
    let metrics = Arc::new(ClusterMetrics::new());
    let keys = Keys::new(&config.cluster.namespace);
    // Its own token: the API stopping on an error must not stop the process.
    let counting_stop = shutdown.child_token();
    let counting =
        tokio::spawn(crate::metrics::follow_events(metrics.clone(), conn.clone(), keys, counting_stop.clone()));
    let app = router(config, conn, metrics);
    let served = crate::server::serve(listener, app, crate::server::Limits::default(), shutdown.clone()).await;
    counting_stop.cancel();
    let _ = counting.await;
    served
}

/// Query parameters, parsed by hand so every bad one gets a 400 naming it.
pub(crate) struct Params(pub(crate) HashMap<String, String>);

impl Params {
    pub(crate) fn check_known(&self, known: &[&str]) -> ApiResult<()> {
        for k in self.0.keys() {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::bad(format!("unknown parameter {k:?} (known: {})", known.join(", "))));
            }
        }
        Ok(())
    }
    pub(crate) fn channel(&self, config: &Config) -> ApiResult<Option<u32>> {
        match self.0.get("channel") {
            None => Ok(None),
            Some(v) => {
                let id: u32 =
                    v.parse().map_err(|_| ApiError::bad(format!("channel: {v:?} is not a channel number")))?;
                if config.channel(id).is_none() {
                    return Err(ApiError::not_found(format!("channel {id} is not configured")));
                }
                Ok(Some(id))
            }
        }
    }
    /// A time: ms since the epoch, a time ago (`2h`) or a site time (`2026-12-06T14:00`,
    /// `record.timezone`, as the dashboard shows every time).
    fn time(&self, name: &str, config: &Config) -> ApiResult<Option<i64>> {
        let tz = cctv_common::timefmt::zone(&config.record.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
        self.0
            .get(name)
            .map(|v| {
                cctv_common::timefmt::parse_time_in(v, now_ms(), &tz).map_err(|e| ApiError::bad(format!("{name}: {e}")))
            })
            .transpose()
    }
    /// A cursor that is the position of the previous page's last item, `<ts_ms>:<name>`, so
    /// an item deleted between pages shifts nothing.
    fn position_cursor(&self) -> ApiResult<Option<(i64, String)>> {
        let Some(c) = self.0.get("cursor") else { return Ok(None) };
        c.split_once(':')
            .and_then(|(t, f)| Some((t.parse::<i64>().ok()?, f.to_string())))
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("cursor: {c:?} is not a cursor from a previous page")))
    }
    fn limit(&self, default: usize, max: usize) -> ApiResult<usize> {
        match self.0.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad(format!("limit: {v:?} is not a number within 1..={max}"))),
            },
        }
    }
}

/// The page of `list` (sorted newest first by `(ts_ms, name)`) after `cursor`.
fn page_after<T>(list: Vec<(i64, String, T)>, cursor: Option<(i64, String)>, limit: usize) -> Page<T> {
    let rest: Vec<_> =
        list.into_iter().filter(|(t, f, _)| cursor.as_ref().is_none_or(|(ct, cf)| (*t, f) < (*ct, cf))).collect();
    let next_cursor = (rest.len() > limit).then(|| format!("{}:{}", rest[limit - 1].0, rest[limit - 1].1));
    Page { items: rest.into_iter().take(limit).map(|(_, _, item)| item).collect(), next_cursor }
}

/// Liveness, Redis reachability, version and the site's time zone.
#[utoipa::path(get, path = "/api/health", tag = "status",
    responses((status = 200, body = Health), (status = 503, description = "Redis unreachable", body = Health)))]
async fn health(State(s): State<ApiState>) -> Response {
    let redis_ok = redis::cmd("PING").query_async::<String>(&mut s.conn.clone()).await.is_ok();
    let status = if redis_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    // The time zone backups are named in: the dashboard shows every time in it.
    let timezone = &s.config.record.timezone;
    (
        status,
        Json(Health {
            status: if redis_ok { "ok" } else { "degraded" }.into(),
            redis: redis_ok,
            version: env!("CARGO_PKG_VERSION").into(),
            timezone: timezone.clone(),
            sign_in: s.config.api.viewer_token.is_some(),
        }),
    )
        .into_response()
}

/// The newest entries of a stream, decoded.
async fn recent<T: serde::de::DeserializeOwned>(
    conn: &mut ConnectionManager,
    stream: &str,
    n: usize,
) -> ApiResult<Vec<T>> {
    let r: redis::streams::StreamRangeReply = conn.xrevrange_count(stream, "+", "-", n).await?;
    Ok(r.ids.iter().filter_map(|e| decode_entry(&e.map)).collect())
}

async fn channel_views(s: &ApiState) -> ApiResult<Vec<ChannelView>> {
    let mut conn = s.conn.clone();
    let objects: Vec<ObjectEvent> = recent(&mut conn, &s.keys.object_events(), 2000).await?;
    let backups: Vec<BackupEvent> = recent(&mut conn, &s.keys.backup_events(), 2000).await?;
    let drawn = zones::drawn(s);
    let mut out = Vec::new();
    for ch in &s.config.channels {
        let status: Option<String> = conn.get(s.keys.channel_status(ch.id)).await?;
        let status: Option<ChannelStatus> = status.and_then(|j| serde_json::from_str(&j).ok());
        // The relay's view of the camera (running, restarts, redacted last error).
        let relay = cctv_common::status::RelayStatus::read(&mut conn, &s.keys, ch.id).await?;
        let last_objects = objects.iter().find(|o| o.channel == ch.id && !o.detections.is_empty());
        let last_backup = backups.iter().find(|b| b.channel == ch.id && b.kind == BackupEventKind::File);
        let drawing = zones::effective(&drawn, ch);
        out.push(ChannelView {
            id: ch.id,
            name: ch.name.clone(),
            priority: ch.priority,
            record: ch.record,
            labels: s.config.wanted_labels(ch).to_vec(),
            stream: ch.stream_name(),
            detect_stream: ch.detect_stream_name(),
            online: status.as_ref().map(|st| st.online),
            state: status.as_ref().map(|st| st.state),
            reason: status.as_ref().and_then(|st| st.reason.clone()),
            fps: status.as_ref().map(|st| st.fps),
            last_motion_ms: status.as_ref().and_then(|st| st.last_motion_ms),
            worker: status.as_ref().map(|st| st.worker.clone()),
            codecs: relay.as_ref().and_then(|r| r.codecs()),
            relay,
            preview: format!("/api/channels/{}/preview.jpg", ch.id),
            masks: drawing.mask.iter().map(|m| m.points.clone()).collect(),
            zones: drawing.zone,
            record_zones: ch.record_zones.clone(),
            schedule: ch.schedule.clone(),
            last_objects: last_objects.map(|o| LastObjects {
                ts_ms: o.frame_ts_ms,
                labels: o.detections.iter().map(|d| d.label.clone()).collect(),
                snapshot: o
                    .snapshot
                    .as_deref()
                    .and_then(|p| std::path::Path::new(p).file_name())
                    .map(|n| format!("/api/snapshots/{}/{}", o.channel, n.to_string_lossy())),
            }),
            last_backup: last_backup.map(|b| LastBackup { ts_ms: b.ts_ms, file: b.file_name() }),
        });
    }
    Ok(out)
}

/// Channels (no camera URLs) with live status: online/offline and why, fps, last motion, last
/// objects, last backup, the relay's view of the camera.
#[utoipa::path(get, path = "/api/channels", tag = "channels",
    responses((status = 200, body = Page<ChannelView>), (status = 503, body = ErrorBody)))]
async fn channels(State(s): State<ApiState>) -> ApiResult<Json<Page<ChannelView>>> {
    Ok(Json(Page::whole(channel_views(&s).await?)))
}

/// One channel.
#[utoipa::path(get, path = "/api/channels/{id}", tag = "channels", params(("id" = u32, Path, description = "channel id")),
    responses((status = 200, body = ChannelView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn channel(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<Json<ChannelView>> {
    let id: u32 = id.parse().map_err(|_| ApiError::bad(format!("{id:?} is not a channel number")))?;
    channel_views(&s)
        .await?
        .into_iter()
        .find(|c| c.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("channel {id} is not configured")))
}

/// The channel's latest picture (JPEG, taken every 10 s by the motion worker, kept 60 s; colour
/// on priority channels, else the grey frame analysed).
#[utoipa::path(get, path = "/api/channels/{id}/preview.jpg", tag = "channels",
    params(("id" = u32, Path, description = "channel id")),
    responses((status = 200, content_type = "image/jpeg", body = Vec<u8>), (status = 404, body = ErrorBody)))]
async fn channel_preview(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = s.channel(&id)?.id;
    let jpeg: Option<Vec<u8>> = s.conn.clone().hget(s.keys.channel_preview(id), "jpeg").await?;
    let jpeg = jpeg.ok_or_else(|| ApiError::not_found(format!("no picture of channel {id} in the last minute")))?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg).into_response())
}

/// Live video of a channel: its detection stream (the sub-stream when there is one) as HLS,
/// relayed from nginx-rtmp's HLS buffer (`rtmp.hls_url`), so the dashboard needs one port and
/// one origin. `file` is `index.m3u8` or a fragment the playlist names.
#[utoipa::path(get, path = "/api/channels/{id}/live/{file}", tag = "channels",
    params(("id" = u32, Path, description = "channel id"), ("file" = String, Path, description = "index.m3u8 or a fragment it lists")),
    responses((status = 200, content_type = "application/vnd.apple.mpegurl", body = String, description = "the playlist (fragments: video/mp2t)"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn channel_live(State(s): State<ApiState>, Path((id, file)): Path<(String, String)>) -> ApiResult<Response> {
    let ch = s.channel(&id)?;
    let id = ch.id;
    let fragment = file
        .strip_suffix(".ts")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let ctype = match () {
        _ if file == "index.m3u8" => "application/vnd.apple.mpegurl",
        _ if fragment => "video/mp2t",
        _ => return Err(ApiError::bad(format!("{file:?} is not index.m3u8 or a fragment of it"))),
    };
    let url = format!("{}/{}/{file}", s.config.rtmp.hls_url.trim_end_matches('/'), ch.detect_stream_name());
    let fetched = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, String> {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(LIVE_TIMEOUT)).http_status_as_error(false).build().into();
        let mut resp = agent.get(&url).call().map_err(|e| format!("{url}: {e}"))?;
        if resp.status() != 200 {
            return Ok(None);
        }
        resp.body_mut().with_config().limit(64 << 20).read_to_vec().map(Some).map_err(|e| format!("{url}: {e}"))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match fetched {
        Ok(Some(body)) => {
            Ok(([(header::CONTENT_TYPE, ctype), (header::CACHE_CONTROL, "no-store")], body).into_response())
        }
        Ok(None) => {
            Err(ApiError::not_found(format!("no live video of channel {id} ({file}): is its stream published?")))
        }
        Err(e) => Err(ApiError(StatusCode::BAD_GATEWAY, format!("live video of channel {id}: nginx-rtmp's HLS: {e}"))),
    }
}

/// The dashboard's ES modules (`api/src/ui/`), compiled in: one per view, no build step.
const UI_MODULES: &[(&str, &str)] = &[
    ("common.js", include_str!("ui/common.js")),
    ("export.js", include_str!("ui/export.js")),
    ("live.js", include_str!("ui/live.js")),
    ("search.js", include_str!("ui/search.js")),
    ("sync.js", include_str!("ui/sync.js")),
    ("zones.js", include_str!("ui/zones.js")),
];

/// One of the dashboard's ES modules.
#[utoipa::path(get, path = "/ui/{name}", tag = "pages",
    params(("name" = String, Path, description = "module file name, e.g. export.js")),
    responses((status = 200, content_type = "text/javascript", body = String), (status = 404, body = ErrorBody)))]
async fn ui_module(Path(name): Path<String>) -> ApiResult<Response> {
    let (_, js) = UI_MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ApiError::not_found(format!("no dashboard module {name:?}")))?;
    Ok(([(header::CONTENT_TYPE, "text/javascript"), (header::CACHE_CONTROL, "no-cache")], *js).into_response())
}

/// hls.js, for the dashboard's live view (vendored, `api/src/vendor/README.md`).
#[utoipa::path(get, path = "/vendor/hls.light.min.js", tag = "pages",
    responses((status = 200, content_type = "text/javascript", body = String)))]
async fn hls_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript"), (header::CACHE_CONTROL, "max-age=86400")], HLS_JS).into_response()
}

fn stream_of(keys: &Keys, category: &str) -> String {
    match category {
        "motion" => keys.motion_events(),
        "objects" => keys.object_events(),
        "backup" => keys.backup_events(),
        _ => keys.system_events(),
    }
}

/// An entry of `category`'s stream, typed (`None`: not an event of that category).
fn decode_event(category: &str, map: &HashMap<String, redis::Value>) -> Option<AnyEvent> {
    Some(match category {
        "motion" => AnyEvent::Motion(decode_entry(map)?),
        "objects" => AnyEvent::Objects(decode_entry(map)?),
        "backup" => AnyEvent::Backup(decode_entry(map)?),
        _ => AnyEvent::System(decode_entry(map)?),
    })
}

fn event_channel(e: &AnyEvent) -> Option<u32> {
    match e {
        AnyEvent::Motion(m) => Some(m.channel),
        AnyEvent::Objects(o) => Some(o.channel),
        AnyEvent::Backup(b) => Some(b.channel),
        AnyEvent::System(s) => s.channel,
    }
}

/// Events of a category, newest first, a page at a time.
#[utoipa::path(get, path = "/api/events", tag = "events",
    params(
        ("category" = Option<String>, Query, description = "motion (default), objects, backup or system"),
        ("channel" = Option<u32>, Query, description = "a configured channel id"),
        ("since" = Option<String>, Query, description = "ms since the epoch, a time ago (90s, 15m, 2h, 1d) or a site time (2026-12-06T14:00)"),
        ("until" = Option<String>, Query, description = "same forms as since"),
        ("label" = Option<String>, Query, description = "objects only: events with a detection of this label (person, car, ...)"),
        ("limit" = Option<usize>, Query, description = "1..=1000, default 100"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn events(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<EventPage>> {
    let p = Params(q);
    p.check_known(&["category", "channel", "since", "until", "limit", "cursor", "label"])?;
    let category = p.0.get("category").map(String::as_str).unwrap_or("motion");
    if !CATEGORIES.contains(&category) {
        return Err(ApiError::bad(format!("category: {category:?} is not one of {}", CATEGORIES.join(", "))));
    }
    // "person on channel 3 yesterday afternoon": object events with a detection of that label.
    let label = p.0.get("label").map(|l| l.trim().to_ascii_lowercase());
    if label.is_some() && category != "objects" {
        return Err(ApiError::bad("label: only for category=objects"));
    }
    let channel = p.channel(&s.config)?;
    let since = p.time("since", &s.config)?;
    let until = p.time("until", &s.config)?;
    let limit = p.limit(100, 1000)?;
    let cursor = p.0.get("cursor").cloned();
    if let Some(c) = &cursor {
        let ok = c.split_once('-').is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
        if !ok {
            return Err(ApiError::bad(format!("cursor: {c:?} is not a cursor from a previous page")));
        }
    }
    let stream = stream_of(&s.keys, category);
    let mut end = match (&cursor, until) {
        (Some(c), _) => format!("({c}"),
        (None, Some(u)) => format!("{u}-18446744073709551615"),
        (None, None) => "+".into(),
    };
    let start = since.map(|t| format!("{t}-0")).unwrap_or_else(|| "-".into());
    let mut items = Vec::new();
    let mut conn = s.conn.clone();
    let mut next_cursor = None;
    // Page through the stream newest first until `limit` entries match the channel filter.
    'outer: loop {
        let r: redis::streams::StreamRangeReply = conn.xrevrange_count(&stream, &end, &start, 500).await?;
        if r.ids.is_empty() {
            break;
        }
        for e in &r.ids {
            end = format!("({}", e.id);
            let Some(event) = decode_event(category, &e.map) else { continue };
            if channel.is_some_and(|c| event_channel(&event) != Some(c)) {
                continue;
            }
            if let (Some(l), AnyEvent::Objects(o)) = (&label, &event) {
                if !o.detections.iter().any(|d| d.label.eq_ignore_ascii_case(l)) {
                    continue;
                }
            }
            items.push(EventItem { id: e.id.clone(), event });
            if items.len() == limit {
                next_cursor = Some(e.id.clone());
                break 'outer;
            }
        }
        if r.ids.len() < 500 {
            break;
        }
    }
    Ok(Json(EventPage { category: category.to_string(), items, next_cursor }))
}

/// Backups listed from the backup stream, minus deleted ones, newest first.
async fn backup_list(
    s: &ApiState,
    channel: Option<u32>,
    since: Option<i64>,
    until: Option<i64>,
) -> ApiResult<Vec<BackupEvent>> {
    let files = live_backups(s).await?;
    Ok(files
        .iter()
        .filter(|e| channel.is_none_or(|c| e.channel == c))
        .filter(|e| since.is_none_or(|t| e.end_ms >= t) && until.is_none_or(|t| e.start_ms <= t))
        .cloned()
        .collect())
}

/// The backup files not deleted, from the backup stream, rebuilt only when the stream changed
/// (see `state::LiveBackups`).
pub(crate) async fn live_backups(s: &ApiState) -> ApiResult<Arc<Vec<BackupEvent>>> {
    let mut conn = s.conn.clone();
    let stream = s.keys.backup_events();
    let mut cached = s.backups.lock().await;
    let newest: redis::streams::StreamRangeReply = conn.xrevrange_count(&stream, "+", "-", 1).await?;
    let last_id = newest.ids.first().map(|e| e.id.clone());
    if last_id.is_some() && cached.last_id == last_id {
        return Ok(cached.files.clone());
    }
    let all: Vec<BackupEvent> = recent(&mut conn, &stream, 100_000).await?;
    let deleted: HashSet<String> =
        all.iter().filter(|e| e.kind == BackupEventKind::Deleted).filter_map(|e| e.file.clone()).collect();
    let files: Vec<BackupEvent> = all
        .into_iter()
        .filter(|e| e.kind == BackupEventKind::File)
        .filter(|e| e.file.as_ref().is_some_and(|f| !deleted.contains(f)))
        .collect();
    // Read after the newest id: an entry added in between makes the next request rebuild
    // (the id stored is older than the list), never serve a list older than its id.
    cached.last_id = last_id;
    cached.files = Arc::new(files);
    Ok(cached.files.clone())
}

/// Backup files (not deleted), newest first, a page at a time.
#[utoipa::path(get, path = "/api/backups", tag = "backups",
    params(
        ("channel" = Option<u32>, Query, description = "a configured channel id"),
        ("since" = Option<String>, Query, description = "files ending after: ms since the epoch, or a time ago (15m, 2h, 1d)"),
        ("until" = Option<String>, Query, description = "files starting before: same forms as since"),
        ("limit" = Option<usize>, Query, description = "1..=10000, default 200"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = Page<BackupItem>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn backups(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Page<BackupItem>>> {
    let p = Params(q);
    p.check_known(&["channel", "since", "until", "limit", "cursor"])?;
    let channel = p.channel(&s.config)?;
    let (since, until) = (p.time("since", &s.config)?, p.time("until", &s.config)?);
    let limit = p.limit(200, 10_000)?;
    // A cursor is the position of the last item of the previous page (`<ts_ms>:<file>`), so a
    // backup deleted between pages shifts nothing.
    let cursor = p.position_cursor()?;
    let mut list: Vec<(i64, String, BackupEvent)> = backup_list(&s, channel, since, until)
        .await?
        .into_iter()
        .map(|b| (b.ts_ms, b.file_name().unwrap_or_default(), b))
        .collect();
    list.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    let page = page_after(list, cursor, limit);
    let protected = cctv_common::naming::protected_backups(&mut s.conn.clone(), &s.keys).await?;
    let items: Vec<BackupItem> = page
        .items
        .into_iter()
        .map(|b| {
            let name = b.file_name();
            let codec = b.video_codec.clone();
            let h264_copy = (codec.as_deref() == Some("hevc"))
                .then(|| name.as_ref().map(|n| format!("/api/backups/h264/{n}")))
                .flatten();
            BackupItem {
                codec,
                h264_copy,
                channel: b.channel,
                download: name.as_ref().map(|n| format!("/api/backups/file/{n}")),
                protected: name.as_ref().is_some_and(|n| protected.contains(n)),
                file: name,
                start_ms: b.start_ms,
                end_ms: b.end_ms,
                duration_secs: b.duration_secs,
                size_bytes: b.size_bytes,
                trigger: b.trigger,
                part: b.part,
                pre_roll_ms: b.pre_roll_ms,
                validation: b.validation,
                recording: b.recording,
            }
        })
        .collect();
    Ok(Json(Page { items, next_cursor: page.next_cursor }))
}

fn backup_path(s: &ApiState, name: &str) -> ApiResult<PathBuf> {
    if !cctv_common::naming::is_backup_name(name) {
        return Err(ApiError::bad(format!("{name:?} is not a backup file name")));
    }
    let path = s.config.record.backup_dir.join(name);
    if !path.is_file() {
        return Err(ApiError::not_found(format!("no backup {name} on this host")));
    }
    Ok(path)
}

/// A backup file (HTTP Range supported: a `<video>` element seeks with it).
#[utoipa::path(get, path = "/api/backups/file/{name}", tag = "backups",
    params(("name" = String, Path, description = "file name, as listed")),
    responses((status = 200, description = "the file (video/mp4 or video/x-matroska)", body = Vec<u8>),
        (status = 206, description = "the range asked for", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download_backup(State(s): State<ApiState>, Path(name): Path<String>, req: Request) -> ApiResult<Response> {
    let path = backup_path(&s, &name)?;
    serve_file(path, req).await
}

/// One H.264 copy made at a time per API process: a browser asks for ranges of the same file
/// at once, and copies are CPU work.
static MAKING_H264_COPY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A browser-playable H.264 copy of an H.265 backup, for a browser that cannot play H.265
/// (Firefox, Chrome without a hardware decoder): made on the first request (x264, audio
/// copied), written under a temporary name and renamed once whole, then served from the cache.
#[utoipa::path(get, path = "/api/backups/h264/{name}", tag = "backups",
    params(("name" = String, Path, description = "file name of an H.265 backup, as listed")),
    responses((status = 200, description = "the H.264 copy (video/mp4)", body = Vec<u8>),
        (status = 206, description = "the range asked for", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn backup_h264_copy(State(s): State<ApiState>, Path(name): Path<String>, req: Request) -> ApiResult<Response> {
    let original = backup_path(&s, &name)?;
    let copy = cctv_common::naming::h264_copy_path(&s.config.record.backup_dir, &name);
    if !copy.is_file() {
        let _making = MAKING_H264_COPY.lock().await;
        if !copy.is_file() {
            let (from, to) = (original.clone(), copy.clone());
            tokio::task::spawn_blocking(move || make_h264_copy(&from, &to))
                .await
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| {
                    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("making an H.264 copy of {name}: {e}"))
                })?;
        }
    }
    serve_file(copy, req).await
}

/// `to` made from `from` by x264 (veryfast, CRF 23, faststart), audio copied; a half-made copy
/// never carries the final name.
fn make_h264_copy(from: &std::path::Path, to: &std::path::Path) -> Result<(), String> {
    let dir = to.parent().ok_or("no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let part = to.with_extension("mp4.part");
    let mut cmd = cctv_common::ffmpeg::command();
    cmd.args(["-nostats", "-y"]).input(from);
    cmd.args(["-map", "0:v:0", "-map", "0:a?", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23"]);
    cmd.args(["-pix_fmt", "yuv420p", "-c:a", "copy", "-movflags", "+faststart", "-f", "mp4"]).output(&part);
    let label = format!("h264 copy {}", to.display());
    let mut p = cctv_common::ffmpeg::FfmpegProcess::spawn(label, cmd, false).map_err(|e| e.to_string())?;
    if p.wait().is_err() {
        let _ = std::fs::remove_file(&part);
        return Err(cctv_common::ffmpeg::explain_failure(&p.stderr_tail()));
    }
    std::fs::rename(&part, to).map_err(|e| format!("{}: {e}", to.display()))
}

/// Serves a file with HTTP Range support (a `<video>` element seeks with it).
pub(crate) async fn serve_file(path: PathBuf, req: Request) -> ApiResult<Response> {
    let mime = match path.extension().and_then(|e| e.to_str()) {
        Some("mp4") => "video/mp4",
        Some("mkv") => "video/x-matroska",
        Some("jpg") => "image/jpeg",
        _ => "application/octet-stream",
    };
    let svc = tower_http::services::ServeFile::new_with_mime(&path, &mime.parse().expect("a mime type"));
    match svc.oneshot(req).await {
        Ok(r) => Ok(r.into_response()),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("reading {}: {e}", path.display()))),
    }
}

/// Deletes a backup (not a protected one).
#[utoipa::path(delete, path = "/api/backups/file/{name}", tag = "backups", security(("bearer" = [])),
    params(("name" = String, Path, description = "file name, as listed")),
    responses((status = 200, body = Deleted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "protected", body = ErrorBody)))]
async fn delete_backup(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Deleted>> {
    require_token(&s, &headers)?;
    let path = backup_path(&s, &name)?;
    if cctv_common::naming::protected_backups(&mut s.conn.clone(), &s.keys).await?.contains(&name) {
        return Err(ApiError(StatusCode::CONFLICT, format!("{name} is protected; unprotect it first")));
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    std::fs::remove_file(&path)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("deleting {name}: {e}")))?;
    let _ = std::fs::remove_file(cctv_common::naming::h264_copy_path(&s.config.record.backup_dir, &name));
    let event = BackupEvent::deleted(&path, size, "deleted through the API".into(), "api");
    cctv_common::streams::publish(&mut s.conn.clone(), &s.keys, cctv_common::streams::Stream::Backup, &event)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{name} deleted; its backup event: {e}")))?;
    Ok(Json(Deleted { deleted: name }))
}

/// Protects a backup: rotation and retention never delete it (`<ns>:backups:protected`).
#[utoipa::path(post, path = "/api/backups/file/{name}/protect", tag = "backups", security(("bearer" = [])),
    params(("name" = String, Path, description = "file name, as listed")),
    responses((status = 200, body = Protection), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn protect_backup(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Protection>> {
    set_protected(s, headers, name, true).await
}

/// Releases a backup's protection.
#[utoipa::path(delete, path = "/api/backups/file/{name}/protect", tag = "backups", security(("bearer" = [])),
    params(("name" = String, Path, description = "file name")),
    responses((status = 200, body = Protection), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn unprotect_backup(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Protection>> {
    set_protected(s, headers, name, false).await
}

async fn set_protected(s: ApiState, headers: HeaderMap, name: String, protect: bool) -> ApiResult<Json<Protection>> {
    require_token(&s, &headers)?;
    // Protecting needs the file here; releasing works for a name whatever became of the file.
    if protect {
        backup_path(&s, &name)?;
    } else if !cctv_common::naming::is_backup_name(&name) {
        return Err(ApiError::bad(format!("{name:?} is not a backup file name")));
    }
    cctv_common::naming::set_protected(&mut s.conn.clone(), &s.keys, &name, protect).await?;
    tracing::info!(file = %name, protect, "backup protection changed through the API");
    Ok(Json(Protection { file: name, protected: protect }))
}

/// Annotated snapshots of positive YOLO results, newest first.
#[utoipa::path(get, path = "/api/snapshots", tag = "objects",
    params(("channel" = Option<u32>, Query, description = "a configured channel id"),
        ("limit" = Option<usize>, Query, description = "1..=1000, default 50"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = Page<SnapshotItem>), (status = 400, body = ErrorBody)))]
async fn snapshots(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Page<SnapshotItem>>> {
    let p = Params(q);
    p.check_known(&["channel", "limit", "cursor"])?;
    let channel = p.channel(&s.config)?;
    let limit = p.limit(50, 1000)?;
    let cursor = p.position_cursor()?;
    let objects: Vec<ObjectEvent> = recent(&mut s.conn.clone(), &s.keys.object_events(), 5000).await?;
    let mut list: Vec<(i64, String, SnapshotItem)> = objects
        .into_iter()
        .filter(|o| channel.is_none_or(|c| o.channel == c))
        .filter_map(|o| {
            let name = std::path::Path::new(o.snapshot.as_deref()?).file_name()?.to_string_lossy().into_owned();
            let url = format!("/api/snapshots/{}/{name}", o.channel);
            let item = SnapshotItem { channel: o.channel, frame_ts_ms: o.frame_ts_ms, detections: o.detections, url };
            Some((item.frame_ts_ms, name, item))
        })
        .collect();
    list.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    Ok(Json(page_after(list, cursor, limit)))
}

/// A snapshot JPEG.
#[utoipa::path(get, path = "/api/snapshots/{channel}/{name}", tag = "objects",
    params(("channel" = u32, Path, description = "channel id"), ("name" = String, Path, description = "snapshot file name")),
    responses((status = 200, content_type = "image/jpeg", body = Vec<u8>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn snapshot_file(
    State(s): State<ApiState>,
    Path((channel, name)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let id: u32 = channel.parse().map_err(|_| ApiError::bad(format!("{channel:?} is not a channel number")))?;
    if !cctv_common::naming::is_snapshot_name(&name) || !name.starts_with(&format!("ch{id}_")) {
        return Err(ApiError::bad(format!("{name:?} is not a snapshot of channel {id}")));
    }
    let path = s.config.yolo.snapshot_dir.join(format!("ch{id}")).join(&name);
    if !path.is_file() {
        return Err(ApiError::not_found(format!("no snapshot {name} on this host")));
    }
    serve_file(path, req).await
}

async fn scan_json<T: serde::de::DeserializeOwned>(conn: &mut ConnectionManager, pattern: &str) -> ApiResult<Vec<T>> {
    cctv_common::keys::scan_json(conn, pattern)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// Per node: total, used, free, backup size and count, oldest backup kept, watermarks, hours
/// left at the current write rate.
#[utoipa::path(get, path = "/api/storage", tag = "status",
    responses((status = 200, body = Page<StorageReport>), (status = 503, body = ErrorBody)))]
async fn storage(State(s): State<ApiState>) -> ApiResult<Json<StoragePage>> {
    let mut reports: Vec<StorageReport> = scan_json(&mut s.conn.clone(), &s.keys.storage_pattern()).await?;
    reports.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(Json(Page::whole(reports)))
}

/// Live workers: host, kind, batches held, CPU, RSS, last heartbeat.
#[utoipa::path(get, path = "/api/workers", tag = "status",
    responses((status = 200, body = Page<WorkerHeartbeat>), (status = 503, body = ErrorBody)))]
async fn workers(State(s): State<ApiState>) -> ApiResult<Json<WorkerPage>> {
    let mut w: Vec<WorkerHeartbeat> = scan_json(&mut s.conn.clone(), &s.keys.worker_pattern()).await?;
    w.sort_by(|a, b| (a.kind.as_str(), a.worker.as_str()).cmp(&(b.kind.as_str(), b.worker.as_str())));
    Ok(Json(Page::whole(w)))
}

/// Per queue: waiting, running, done, failed; YOLO's drops.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs",
    responses((status = 200, body = QueuesOverview), (status = 503, body = ErrorBody)))]
async fn jobs(State(s): State<ApiState>) -> ApiResult<Json<QueuesOverview>> {
    Ok(Json(cctv_common::queue::overview(&s.conn, &s.keys, &s.config.queue).await?))
}

/// Runs `f` on the typed queue named `queue`.
macro_rules! with_queue {
    ($s:expr, $queue:expr, |$q:ident| $body:expr) => {
        match $queue {
            "motion" => {
                let mut $q = Queue::<MotionJob>::new($s.conn.clone(), &$s.keys, &$s.config.queue);
                $body
            }
            "yolo" => {
                let mut $q = Queue::<YoloJob>::new($s.conn.clone(), &$s.keys, &$s.config.queue);
                $body
            }
            "record" => {
                let mut $q = Queue::<RecordJob>::new($s.conn.clone(), &$s.keys, &$s.config.queue);
                $body
            }
            other => Err(ApiError::not_found(format!("no queue {other:?} (motion, yolo, record)"))),
        }
    };
}

/// Jobs of a queue in a state, newest first.
#[utoipa::path(get, path = "/api/jobs/{queue}", tag = "jobs",
    params(("queue" = String, Path, description = "motion, yolo or record"),
        ("state" = Option<String>, Query, description = "waiting (default), running, done or dead"),
        ("limit" = Option<usize>, Query, description = "1..=1000, default 50")),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn job_list(
    State(s): State<ApiState>,
    Path(queue): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<JobPage>> {
    let p = Params(q);
    p.check_known(&["state", "limit"])?;
    let state = p.0.get("state").map(String::as_str).unwrap_or("waiting");
    if !["waiting", "running", "done", "dead"].contains(&state) {
        return Err(ApiError::bad(format!("state: {state:?} is not one of waiting, running, done, dead")));
    }
    let limit = p.limit(50, 1000)?;
    with_queue!(s, queue.as_str(), |q| {
        let ids = q.ids(state, limit).await?;
        let mut items = Vec::new();
        for id in ids {
            if let Some(j) = q.show(&id).await? {
                items.push(j);
            }
        }
        // Jobs come and go while they are read: one page, no cursor (`limit` says how many).
        Ok(Json(JobPage { queue: queue.clone(), state: state.to_string(), items, next_cursor: None }))
    })
}

/// One job.
#[utoipa::path(get, path = "/api/jobs/{queue}/{id}", tag = "jobs",
    params(("queue" = String, Path, description = "motion, yolo or record"), ("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobInfo), (status = 404, body = ErrorBody)))]
async fn job_show(State(s): State<ApiState>, Path((queue, id)): Path<(String, String)>) -> ApiResult<Json<JobInfo>> {
    with_queue!(s, queue.as_str(), |q| {
        match q.show(&id).await? {
            Some(j) => Ok(Json(j)),
            None => Err(ApiError::not_found(format!("no job {id} on queue {queue}"))),
        }
    })
}

/// Pushes a copy of a finished job.
#[utoipa::path(post, path = "/api/jobs/{queue}/{id}/retry", tag = "jobs", security(("bearer" = [])),
    params(("queue" = String, Path, description = "motion, yolo or record"), ("id" = String, Path, description = "job id")),
    responses((status = 200, body = Retried), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn job_retry(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((queue, id)): Path<(String, String)>,
) -> ApiResult<Json<Retried>> {
    require_token(&s, &headers)?;
    with_queue!(s, queue.as_str(), |q| {
        match q.retry(&id).await? {
            Some(new_id) => Ok(Json(Retried { retried: id, job: new_id })),
            None => Err(ApiError::not_found(format!("no job {id} on queue {queue}"))),
        }
    })
}

/// Deletes finished jobs' payloads.
#[utoipa::path(post, path = "/api/jobs/{queue}/purge", tag = "jobs", security(("bearer" = [])),
    params(("queue" = String, Path, description = "motion, yolo or record")),
    responses((status = 200, body = Purged), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn job_purge(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(queue): Path<String>,
) -> ApiResult<Json<Purged>> {
    require_token(&s, &headers)?;
    let zero = std::time::Duration::ZERO;
    with_queue!(s, queue.as_str(), |q| {
        let n = q.purge_finished(zero, zero).await?;
        Ok(Json(Purged { queue: queue.clone(), purged: n as u64 }))
    })
}

/// `POST /api/jobs/record/enqueue`'s body.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct EnqueueRecord {
    channel: u32,
    #[serde(default = "default_seconds")]
    seconds: f64,
}

fn default_seconds() -> f64 {
    30.0
}

/// Backs up a channel now (pre-roll included) for `seconds` (default 30).
#[utoipa::path(post, path = "/api/jobs/record/enqueue", tag = "jobs", security(("bearer" = [])), request_body = EnqueueRecord,
    responses((status = 200, body = Enqueued), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn job_enqueue_record(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<EnqueueRecord>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Enqueued>> {
    require_token(&s, &headers)?;
    let Json(req) =
        body.map_err(|e| ApiError::bad(format!("body: {e} (expected {{\"channel\": N, \"seconds\": S}})")))?;
    if s.config.channel(req.channel).is_none() {
        return Err(ApiError::not_found(format!("channel {} is not configured", req.channel)));
    }
    if !(req.seconds > 0.0 && req.seconds <= 86_400.0) {
        return Err(ApiError::bad(format!("seconds: {} is out of range (0, 86400]", req.seconds)));
    }
    let (rid, job) =
        cctv_common::recording::start_manual(&s.config, &mut s.conn.clone(), &s.keys, req.channel, req.seconds)
            .await
            .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(Enqueued { recording: rid, job }))
}

/// Prometheus metrics (docs/metrics.md): OpenMetrics for a scraper that asks for it
/// (`Accept: application/openmetrics-text`), the classic text format 0.0.4 otherwise.
#[utoipa::path(get, path = "/metrics", tag = "status",
    responses((status = 200, content_type = "text/plain", body = String), (status = 503, body = ErrorBody)))]
async fn metrics_page(State(s): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let body = s
        .metrics
        .render(&mut s.conn.clone(), &s.keys, &s.config, openmetrics)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("metrics: {e:#}")))?;
    let ctype = if openmetrics { crate::metrics::OPENMETRICS_TEXT } else { crate::metrics::PROMETHEUS_TEXT };
    Ok(([(header::CONTENT_TYPE, ctype)], body).into_response())
}

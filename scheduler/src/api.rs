//! The HTTP API, `/metrics` and the dashboard, served by `scheduler run` (axum).
//!
//! Everything is read from Redis (and, for downloads, from the backup and snapshot directories
//! when this host has them). Binds 127.0.0.1 by default. Mutating endpoints need
//! `Authorization: Bearer <api.token>`. Bad parameters are 400 with a message naming the
//! parameter, unknown ids 404; no endpoint ever returns a camera URL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cctv_common::config::Config;
use cctv_common::events::{
    decode_entry, now_ms, BackupEvent, BackupEventKind, ChannelStatus, ObjectEvent, StorageReport, WorkerHeartbeat,
};
use cctv_common::jobs::{MotionJob, RecordJob, YoloJob};
use cctv_common::keys::Keys;
use cctv_common::queue::{Queue, QueueStats};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::metrics::ClusterMetrics;

const DASHBOARD: &str = include_str!("dashboard.html");
const OPENAPI: &str = include_str!("openapi.json");
/// `/api/docs`: a page that renders `OPENAPI` in the browser (no outside script, works offline).
const API_DOCS: &str = include_str!("apidocs.html");
/// Categories and their streams.
const CATEGORIES: [&str; 4] = ["motion", "objects", "backup", "system"];

#[derive(Clone)]
pub struct ApiState {
    conn: ConnectionManager,
    keys: Keys,
    config: Arc<Config>,
    metrics: Arc<ClusterMetrics>,
}

/// An error answer: status and a message naming what was wrong.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
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

type ApiResult<T> = Result<T, ApiError>;

/// The router; `metrics` is fed by [`crate::metrics::follow_events`].
pub fn router(config: Arc<Config>, conn: ConnectionManager, metrics: Arc<ClusterMetrics>) -> Router {
    let state = ApiState { conn, keys: Keys::new(&config.cluster.namespace), config, metrics };
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/api/health", get(health))
        .route("/api/channels", get(channels))
        .route("/api/channels/{id}", get(channel))
        .route("/api/channels/{id}/preview.jpg", get(channel_preview))
        .route("/api/events", get(events))
        .route("/api/backups", get(backups))
        .route("/api/backups/file/{name}", get(download_backup))
        .route("/api/backups/file/{name}", delete(delete_backup))
        .route("/api/backups/file/{name}/protect", post(protect_backup).delete(unprotect_backup))
        .route("/api/snapshots", get(snapshots))
        .route("/api/snapshots/{channel}/{name}", get(snapshot_file))
        .route("/api/storage", get(storage))
        .route("/api/workers", get(workers))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{queue}", get(job_list))
        .route("/api/jobs/{queue}/{id}", get(job_show))
        .route("/api/jobs/{queue}/{id}/retry", post(job_retry))
        .route("/api/jobs/{queue}/purge", post(job_purge))
        .route("/api/jobs/record/enqueue", post(job_enqueue_record))
        .route("/api/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/api/docs", get(|| async { Html(API_DOCS) }))
        .route("/metrics", get(metrics_page))
        .fallback(|| async { ApiError::not_found("no such endpoint (see /api/openapi.json)") })
        .with_state(state)
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
    let served = axum::serve(listener, app)
        .with_graceful_shutdown({
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        })
        .await;
    counting_stop.cancel();
    let _ = counting.await;
    served
}

fn require_token(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(expected) = state.config.api.token.as_deref() else {
        return Err(ApiError(StatusCode::FORBIDDEN, "mutating endpoints are disabled: no api.token configured".into()));
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit, so timing says nothing about the token.
    let ok = given.is_some_and(|g| {
        g.len() == expected.len() && g.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()))
    }
}

/// Query parameters, parsed by hand so every bad one gets a 400 naming it.
struct Params(HashMap<String, String>);

impl Params {
    fn check_known(&self, known: &[&str]) -> ApiResult<()> {
        for k in self.0.keys() {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::bad(format!("unknown parameter {k:?} (known: {})", known.join(", "))));
            }
        }
        Ok(())
    }
    fn channel(&self, config: &Config) -> ApiResult<Option<u32>> {
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
    fn time(&self, name: &str) -> ApiResult<Option<i64>> {
        self.0
            .get(name)
            .map(|v| crate::compare::parse_time(v, now_ms()).map_err(|e| ApiError::bad(format!("{name}: {e}"))))
            .transpose()
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

async fn health(State(s): State<ApiState>) -> Response {
    let redis_ok = redis::cmd("PING").query_async::<String>(&mut s.conn.clone()).await.is_ok();
    let status = if redis_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    // The time zone backups are named in: the dashboard shows every time in it.
    let timezone = &s.config.record.timezone;
    (
        status,
        Json(json!({ "status": if redis_ok { "ok" } else { "degraded" }, "redis": redis_ok,
        "version": env!("CARGO_PKG_VERSION"), "timezone": timezone })),
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

async fn channel_views(s: &ApiState) -> ApiResult<Vec<Value>> {
    let mut conn = s.conn.clone();
    let objects: Vec<ObjectEvent> = recent(&mut conn, &s.keys.object_events(), 2000).await?;
    let backups: Vec<BackupEvent> = recent(&mut conn, &s.keys.backup_events(), 2000).await?;
    let mut out = Vec::new();
    for ch in &s.config.channels {
        let status: Option<String> = conn.get(s.keys.channel_status(ch.id)).await?;
        let status: Option<ChannelStatus> = status.and_then(|j| serde_json::from_str(&j).ok());
        // The relay's view of the camera (running, restarts, redacted last error).
        let relay: Option<String> = conn.get(s.keys.relay_status(ch.id)).await?;
        let relay: Option<Value> = relay.and_then(|j| serde_json::from_str(&j).ok());
        let last_objects = objects.iter().find(|o| o.channel == ch.id && !o.detections.is_empty());
        let last_backup = backups.iter().find(|b| b.channel == ch.id && b.kind == BackupEventKind::File);
        out.push(json!({
            "id": ch.id,
            "name": ch.name,
            "priority": ch.priority,
            "record": ch.record,
            "labels": s.config.wanted_labels(ch),
            "stream": ch.stream_name(),
            "detect_stream": ch.detect_stream_name(),
            "online": status.as_ref().map(|st| st.online),
            "state": status.as_ref().map(|st| st.state),
            "reason": status.as_ref().and_then(|st| st.reason.clone()),
            "fps": status.as_ref().map(|st| st.fps),
            "last_motion_ms": status.as_ref().and_then(|st| st.last_motion_ms),
            "worker": status.as_ref().map(|st| st.worker.clone()),
            "relay": relay,
            "preview": format!("/api/channels/{}/preview.jpg", ch.id),
            "masks": ch.mask.iter().map(|m| &m.points).collect::<Vec<_>>(),
            "zones": ch.zone,
            "record_zones": ch.record_zones,
            "schedule": ch.schedule,
            "last_objects": last_objects.map(|o| json!({
                "ts_ms": o.frame_ts_ms,
                "labels": o.detections.iter().map(|d| d.label.clone()).collect::<Vec<_>>(),
                "snapshot": o.snapshot.as_deref().and_then(|p| std::path::Path::new(p).file_name())
                    .map(|n| format!("/api/snapshots/{}/{}", o.channel, n.to_string_lossy())),
            })),
            "last_backup": last_backup.map(|b| json!({
                "ts_ms": b.ts_ms, "file": b.file_name(),
            })),
        }));
    }
    Ok(out)
}

async fn channels(State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(channel_views(&s).await?)))
}

async fn channel(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id: u32 = id.parse().map_err(|_| ApiError::bad(format!("{id:?} is not a channel number")))?;
    channel_views(&s)
        .await?
        .into_iter()
        .find(|c| c["id"] == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("channel {id} is not configured")))
}

/// The channel's latest picture (worker-motion stores one every 10 s, kept 60 s).
async fn channel_preview(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id: u32 = id.parse().map_err(|_| ApiError::bad(format!("{id:?} is not a channel number")))?;
    if s.config.channel(id).is_none() {
        return Err(ApiError::not_found(format!("channel {id} is not configured")));
    }
    let jpeg: Option<Vec<u8>> = s.conn.clone().hget(s.keys.channel_preview(id), "jpeg").await?;
    let jpeg = jpeg.ok_or_else(|| ApiError::not_found(format!("no picture of channel {id} in the last minute")))?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg).into_response())
}

fn stream_of(keys: &Keys, category: &str) -> String {
    match category {
        "motion" => keys.motion_events(),
        "objects" => keys.object_events(),
        "backup" => keys.backup_events(),
        _ => keys.system_events(),
    }
}

fn event_channel(category: &str, v: &Value) -> Option<u32> {
    let _ = category;
    v.get("channel").and_then(Value::as_u64).map(|c| c as u32)
}

async fn events(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    let p = Params(q);
    p.check_known(&["category", "channel", "since", "until", "limit", "cursor"])?;
    let category = p.0.get("category").map(String::as_str).unwrap_or("motion");
    if !CATEGORIES.contains(&category) {
        return Err(ApiError::bad(format!("category: {category:?} is not one of {}", CATEGORIES.join(", "))));
    }
    let channel = p.channel(&s.config)?;
    let since = p.time("since")?;
    let until = p.time("until")?;
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
            let Some(v) = decode_entry::<Value>(&e.map) else { continue };
            if channel.is_some_and(|c| event_channel(category, &v) != Some(c)) {
                continue;
            }
            items.push(json!({ "id": e.id, "event": v }));
            if items.len() == limit {
                next_cursor = Some(e.id.clone());
                break 'outer;
            }
        }
        if r.ids.len() < 500 {
            break;
        }
    }
    Ok(Json(json!({ "category": category, "items": items, "next_cursor": next_cursor })))
}

/// Backups listed from the backup stream, minus deleted ones, newest first.
async fn backup_list(
    s: &ApiState,
    channel: Option<u32>,
    since: Option<i64>,
    until: Option<i64>,
) -> ApiResult<Vec<BackupEvent>> {
    let mut conn = s.conn.clone();
    let all: Vec<BackupEvent> = recent(&mut conn, &s.keys.backup_events(), 100_000).await?;
    let deleted: HashSet<String> =
        all.iter().filter(|e| e.kind == BackupEventKind::Deleted).filter_map(|e| e.file.clone()).collect();
    Ok(all
        .into_iter()
        .filter(|e| e.kind == BackupEventKind::File)
        .filter(|e| e.file.as_ref().is_some_and(|f| !deleted.contains(f)))
        .filter(|e| channel.is_none_or(|c| e.channel == c))
        .filter(|e| since.is_none_or(|t| e.end_ms >= t) && until.is_none_or(|t| e.start_ms <= t))
        .collect())
}

async fn backups(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    let p = Params(q);
    p.check_known(&["channel", "since", "until", "limit", "cursor"])?;
    let channel = p.channel(&s.config)?;
    let (since, until) = (p.time("since")?, p.time("until")?);
    let limit = p.limit(200, 10_000)?;
    // A cursor is the position of the last item of the previous page (`<ts_ms>:<file>`), so a
    // backup deleted between pages shifts nothing.
    let cursor = match p.0.get("cursor") {
        None => None,
        Some(c) => Some(
            c.split_once(':')
                .and_then(|(t, f)| Some((t.parse::<i64>().ok()?, f.to_string())))
                .ok_or_else(|| ApiError::bad(format!("cursor: {c:?} is not a cursor from a previous page")))?,
        ),
    };
    let mut list: Vec<(i64, String, BackupEvent)> = backup_list(&s, channel, since, until)
        .await?
        .into_iter()
        .map(|b| (b.ts_ms, b.file_name().unwrap_or_default(), b))
        .collect();
    list.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    let rest: Vec<_> =
        list.into_iter().filter(|(t, f, _)| cursor.as_ref().is_none_or(|(ct, cf)| (*t, f) < (*ct, cf))).collect();
    let next_cursor = (rest.len() > limit).then(|| format!("{}:{}", rest[limit - 1].0, rest[limit - 1].1));
    let protected = cctv_common::naming::protected_backups(&mut s.conn.clone(), &s.keys).await?;
    let items: Vec<Value> = rest
        .iter()
        .take(limit)
        .map(|(_, _, b)| {
            let name = b.file_name();
            json!({
                "channel": b.channel, "file": name, "start_ms": b.start_ms, "end_ms": b.end_ms,
                "duration_secs": b.duration_secs, "size_bytes": b.size_bytes, "trigger": b.trigger, "part": b.part,
                "pre_roll_ms": b.pre_roll_ms, "validation": b.validation, "recording": b.recording,
                "download": name.as_ref().map(|n| format!("/api/backups/file/{n}")),
                "protected": name.as_ref().is_some_and(|n| protected.contains(n)),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
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

async fn download_backup(State(s): State<ApiState>, Path(name): Path<String>, req: Request) -> ApiResult<Response> {
    let path = backup_path(&s, &name)?;
    serve_file(path, req).await
}

/// Serves a file with HTTP Range support (a `<video>` element seeks with it).
async fn serve_file(path: PathBuf, req: Request) -> ApiResult<Response> {
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

async fn delete_backup(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    require_token(&s, &headers)?;
    let path = backup_path(&s, &name)?;
    if cctv_common::naming::protected_backups(&mut s.conn.clone(), &s.keys).await?.contains(&name) {
        return Err(ApiError(StatusCode::CONFLICT, format!("{name} is protected; unprotect it first")));
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    std::fs::remove_file(&path)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("deleting {name}: {e}")))?;
    let event = BackupEvent::deleted(&path, size, "deleted through the API".into(), "api");
    let _: String = s
        .conn
        .clone()
        .xadd(s.keys.backup_events(), "*", &[("data", serde_json::to_string(&event).unwrap_or_default())])
        .await?;
    Ok(Json(json!({ "deleted": name })))
}

/// Protects a backup from rotation and retention (`<ns>:backups:protected`).
async fn protect_backup(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_protected(s, headers, name, true).await
}

async fn unprotect_backup(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_protected(s, headers, name, false).await
}

async fn set_protected(s: ApiState, headers: HeaderMap, name: String, protect: bool) -> ApiResult<Json<Value>> {
    require_token(&s, &headers)?;
    // Protecting needs the file here; releasing works for a name whatever became of the file.
    if protect {
        backup_path(&s, &name)?;
    } else if !cctv_common::naming::is_backup_name(&name) {
        return Err(ApiError::bad(format!("{name:?} is not a backup file name")));
    }
    cctv_common::naming::set_protected(&mut s.conn.clone(), &s.keys, &name, protect).await?;
    tracing::info!(file = %name, protect, "backup protection changed through the API");
    Ok(Json(json!({ "file": name, "protected": protect })))
}

async fn snapshots(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    let p = Params(q);
    p.check_known(&["channel", "limit"])?;
    let channel = p.channel(&s.config)?;
    let limit = p.limit(50, 1000)?;
    let objects: Vec<ObjectEvent> = recent(&mut s.conn.clone(), &s.keys.object_events(), 5000).await?;
    let items: Vec<Value> = objects
        .iter()
        .filter(|o| channel.is_none_or(|c| o.channel == c))
        .filter_map(|o| {
            let name = std::path::Path::new(o.snapshot.as_deref()?).file_name()?.to_string_lossy().into_owned();
            Some(json!({
                "channel": o.channel, "frame_ts_ms": o.frame_ts_ms, "detections": o.detections,
                "url": format!("/api/snapshots/{}/{name}", o.channel),
            }))
        })
        .take(limit)
        .collect();
    Ok(Json(json!({ "items": items })))
}

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

async fn storage(State(s): State<ApiState>) -> ApiResult<Json<Vec<StorageReport>>> {
    let mut reports: Vec<StorageReport> = scan_json(&mut s.conn.clone(), &s.keys.storage_pattern()).await?;
    reports.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(Json(reports))
}

async fn workers(State(s): State<ApiState>) -> ApiResult<Json<Vec<WorkerHeartbeat>>> {
    let mut w: Vec<WorkerHeartbeat> = scan_json(&mut s.conn.clone(), &s.keys.worker_pattern()).await?;
    w.sort_by(|a, b| (a.kind.as_str(), a.worker.as_str()).cmp(&(b.kind.as_str(), b.worker.as_str())));
    Ok(Json(w))
}

/// Counts of every queue, plus YOLO's drop counters.
pub async fn queue_overview(
    conn: &ConnectionManager,
    keys: &Keys,
    config: &Config,
) -> ApiResult<BTreeMap<String, Value>> {
    let stats: [(&str, QueueStats); 3] = [
        ("motion", Queue::<MotionJob>::new(conn.clone(), keys, &config.queue).stats().await?),
        ("yolo", Queue::<YoloJob>::new(conn.clone(), keys, &config.queue).stats().await?),
        ("record", Queue::<RecordJob>::new(conn.clone(), keys, &config.queue).stats().await?),
    ];
    let yolo: BTreeMap<String, i64> = conn.clone().hgetall(keys.yolo_stats()).await?;
    let mut out = BTreeMap::new();
    for (name, s) in stats {
        let mut v = json!({ "waiting": s.waiting, "running": s.running, "done": s.done, "failed": s.dead });
        if name == "yolo" {
            v["dropped"] =
                json!(yolo.get("dropped_stale").copied().unwrap_or(0) + yolo.get("dropped_full").copied().unwrap_or(0));
            v["counters"] = json!(yolo);
        }
        out.insert(name.to_string(), v);
    }
    Ok(out)
}

async fn jobs(State(s): State<ApiState>) -> ApiResult<Json<BTreeMap<String, Value>>> {
    Ok(Json(queue_overview(&s.conn, &s.keys, &s.config).await?))
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

async fn job_list(
    State(s): State<ApiState>,
    Path(queue): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
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
        Ok(Json(json!({ "queue": queue, "state": state, "items": items })))
    })
}

async fn job_show(State(s): State<ApiState>, Path((queue, id)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    with_queue!(s, queue.as_str(), |q| {
        match q.show(&id).await? {
            Some(j) => Ok(Json(serde_json::to_value(j).unwrap_or_default())),
            None => Err(ApiError::not_found(format!("no job {id} on queue {queue}"))),
        }
    })
}

async fn job_retry(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((queue, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    require_token(&s, &headers)?;
    with_queue!(s, queue.as_str(), |q| {
        match q.retry(&id).await? {
            Some(new_id) => Ok(Json(json!({ "retried": id, "job": new_id }))),
            None => Err(ApiError::not_found(format!("no job {id} on queue {queue}"))),
        }
    })
}

async fn job_purge(State(s): State<ApiState>, headers: HeaderMap, Path(queue): Path<String>) -> ApiResult<Json<Value>> {
    require_token(&s, &headers)?;
    let zero = std::time::Duration::ZERO;
    with_queue!(s, queue.as_str(), |q| {
        let n = q.purge_finished(zero, zero).await?;
        Ok(Json(json!({ "queue": queue, "purged": n })))
    })
}

#[derive(serde::Deserialize)]
struct EnqueueRecord {
    channel: u32,
    #[serde(default = "default_seconds")]
    seconds: f64,
}

fn default_seconds() -> f64 {
    30.0
}

/// Back up a channel now (pre-roll included) for `seconds`.
async fn job_enqueue_record(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<EnqueueRecord>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    require_token(&s, &headers)?;
    let Json(req) =
        body.map_err(|e| ApiError::bad(format!("body: {e} (expected {{\"channel\": N, \"seconds\": S}})")))?;
    if s.config.channel(req.channel).is_none() {
        return Err(ApiError::not_found(format!("channel {} is not configured", req.channel)));
    }
    if !(req.seconds > 0.0 && req.seconds <= 86_400.0) {
        return Err(ApiError::bad(format!("seconds: {} is out of range (0, 86400]", req.seconds)));
    }
    let (rid, job) = crate::jobs_cli::enqueue_record(&s.config, &mut s.conn.clone(), &s.keys, req.channel, req.seconds)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    Ok(Json(json!({ "recording": rid, "job": job })))
}

/// Prometheus metrics (see [`crate::metrics`]): OpenMetrics for a scraper that asks for it,
/// the classic text format otherwise.
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

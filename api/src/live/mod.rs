//! Live view in under a second: fragmented MP4 of a channel's stream, one frame per fragment,
//! over a WebSocket into the browser's Media Source Extensions (as Moonfire NVR does). A
//! WebSocket, not a streaming HTTP response: browsers open at most 6 HTTP/1.1 connections per
//! site, so a 3x3 grid of streamed responses left its last tiles waiting forever (seen in the
//! browser test).
//!
//! HLS from nginx-rtmp waits for whole segments (seconds); here one ffmpeg per watched stream
//! reads it from nginx-rtmp (the stream the relay already publishes: a camera is never dialled
//! again per viewer) with `-c copy` into fMP4 with a fragment per frame, and every viewer of
//! that stream shares it ([`LiveHub`]). A new viewer gets the init segment and the fragments
//! since the last keyframe (it shows a picture at once and catches up), then the live ones; a
//! viewer that falls behind skips to the next keyframe instead of holding the others back. The
//! ffmpeg stops once nobody watched for [`IDLE`], and is restarted (with the viewers' streams
//! ended, so they reconnect and re-initialise) when nginx-rtmp or the camera goes away.
//!
//! Each binary message is `[u8 kind][payload]` (big-endian numbers): kind 1 a JSON header
//! ([`LiveHeader`]), 2 the init segment, 3 a fragment as `[i64 ms the server received it][f64
//! its decode time, s][moof+mdat]`, from which the page measures its latency. A text message
//! says why there is no picture.

pub mod fmp4;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::Json;
use cctv_common::events::now_ms;
use cctv_common::ffmpeg::{self, FfmpegProcess};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::state::{ApiError, ApiResult, ApiState};
use crate::views::ErrorBody;

/// A stream nobody watched for this long is let go (its ffmpeg stopped).
pub const IDLE: Duration = Duration::from_secs(10);
/// How long a new viewer waits for the stream's first keyframe.
const FIRST_PICTURE: Duration = Duration::from_secs(12);
/// ffmpeg gives up on a stream that sent nothing for this long (nginx-rtmp keeps a player of an
/// unpublished stream waiting forever).
const READ_TIMEOUT_US: &str = "5000000";
/// Fragments buffered per viewer before it counts as behind.
const QUEUE: usize = 256;

/// Which of a channel's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LiveStream {
    /// The detection stream (the sub-stream when the camera has one): for the grid.
    Sub,
    /// The main stream: one camera, full size.
    Main,
}

/// The first frame of a live response.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveHeader {
    pub channel: u32,
    pub stream: LiveStream,
    /// As Media Source Extensions wants it (`avc1.64001f`, `hvc1.1.6.L93.B0`).
    pub codec: String,
    /// The server's clock when the response began (ms since the epoch), so the page can tell
    /// its own clock's offset.
    pub server_ms: i64,
    pub viewers: usize,
}

/// One watched stream, as `GET /api/live` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveFeedView {
    pub channel: u32,
    pub stream: LiveStream,
    pub viewers: usize,
    /// `None` until the first picture.
    pub codec: Option<String>,
    /// Since when the current ffmpeg delivers (ms since the epoch).
    pub since_ms: Option<i64>,
    /// How often it was restarted (nginx-rtmp or the camera went away).
    pub restarts: u32,
    /// Why the last ffmpeg stopped (its stderr's tail), if it did.
    pub error: Option<String>,
}

struct Chunk {
    key: bool,
    frame: Bytes,
}

struct Head {
    codec: String,
    timescale: u32,
    init: Bytes,
}

#[derive(Default)]
struct FeedState {
    head: Option<Head>,
    /// The fragments since the last keyframe: a new viewer starts with them.
    gop: Vec<Arc<Chunk>>,
    since_ms: Option<i64>,
    restarts: u32,
    error: Option<String>,
}

struct Feed {
    channel: u32,
    stream: LiveStream,
    state: Mutex<FeedState>,
    /// Replaced at each ffmpeg restart: the old viewers' streams end and they reconnect.
    tx: Mutex<broadcast::Sender<Arc<Chunk>>>,
    viewers: AtomicUsize,
    last_viewer: Mutex<Instant>,
}

/// The streams being watched, shared by every request.
#[derive(Default)]
pub struct LiveHub {
    feeds: Mutex<HashMap<(u32, LiveStream), Arc<Feed>>>,
}

/// Counts a viewer while its response is being sent.
struct Viewer(Arc<Feed>);

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::SeqCst);
        *self.0.last_viewer.lock().expect("not poisoned") = Instant::now();
    }
}

/// `[kind][payload…]`: one WebSocket message.
fn frame(kind: u8, parts: &[&[u8]]) -> Bytes {
    let mut out = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    Bytes::from(out)
}

impl LiveHub {
    /// A viewer of the channel's stream, starting its feed if nobody watches it. Counted under
    /// the hub's lock, so a feed never leaves the hub while a viewer is joining it.
    fn watch(self: &Arc<Self>, channel: u32, stream: LiveStream, url: String) -> Viewer {
        let mut feeds = self.feeds.lock().expect("not poisoned");
        if let Some(f) = feeds.get(&(channel, stream)) {
            f.viewers.fetch_add(1, Ordering::SeqCst);
            return Viewer(f.clone());
        }
        let feed = Arc::new(Feed {
            channel,
            stream,
            state: Mutex::default(),
            tx: Mutex::new(broadcast::channel(QUEUE).0),
            viewers: AtomicUsize::new(1),
            last_viewer: Mutex::new(Instant::now()),
        });
        feeds.insert((channel, stream), feed.clone());
        let (hub, f) = (self.clone(), feed.clone());
        let spawned = std::thread::Builder::new().name(format!("live ch{channel}")).spawn(move || loop {
            f.run(&url);
            // Let go only if still nobody watches, decided under the lock viewers join under.
            let mut feeds = hub.feeds.lock().expect("not poisoned");
            if f.idle() {
                feeds.remove(&(f.channel, f.stream));
                break;
            }
        });
        if let Err(e) = spawned {
            tracing::error!(channel, error = %e, "cannot start the live stream's thread");
            feeds.remove(&(channel, stream));
        }
        Viewer(feed)
    }

    pub fn views(&self) -> Vec<LiveFeedView> {
        let feeds = self.feeds.lock().expect("not poisoned");
        let mut out: Vec<LiveFeedView> = feeds
            .values()
            .map(|f| {
                let st = f.state.lock().expect("not poisoned");
                LiveFeedView {
                    channel: f.channel,
                    stream: f.stream,
                    viewers: f.viewers.load(Ordering::SeqCst),
                    codec: st.head.as_ref().map(|h| h.codec.clone()),
                    since_ms: st.since_ms,
                    restarts: st.restarts,
                    error: st.error.clone(),
                }
            })
            .collect();
        out.sort_by_key(|v| (v.channel, v.stream == LiveStream::Main));
        out
    }
}

impl Feed {
    fn idle(&self) -> bool {
        self.viewers.load(Ordering::SeqCst) == 0 && self.last_viewer.lock().expect("not poisoned").elapsed() > IDLE
    }

    /// ffmpeg after ffmpeg while someone watches.
    fn run(&self, url: &str) {
        let label = format!("live ch{} {:?}", self.channel, self.stream);
        let mut backoff = Duration::from_millis(500);
        while !self.idle() {
            let started = Instant::now();
            let error = self.one_ffmpeg(&label, url).err();
            if self.idle() {
                break;
            }
            tracing::info!(process = %label, error = ?error, "live stream ended; restarting");
            {
                let mut st = self.state.lock().expect("not poisoned");
                *st = FeedState { restarts: st.restarts + 1, error, ..FeedState::default() };
            }
            // Viewers of the old stream reconnect (their decoder needs the new init segment).
            *self.tx.lock().expect("not poisoned") = broadcast::channel(QUEUE).0;
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(500);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        tracing::debug!(process = %label, "live stream let go: nobody watches");
    }

    fn one_ffmpeg(&self, label: &str, url: &str) -> Result<(), String> {
        use std::io::Read;
        let mut cmd = ffmpeg::command();
        cmd.args(["-loglevel", "error", "-fflags", "nobuffer", "-flags", "low_delay"]);
        cmd.args(["-probesize", "262144", "-analyzeduration", "1000000", "-rw_timeout", READ_TIMEOUT_US]);
        cmd.input(url).args(["-map", "0:v:0", "-c", "copy", "-f", "mp4"]);
        cmd.args(["-movflags", "frag_every_frame+empty_moov+default_base_moof"]).output("pipe:1");
        let mut proc = FfmpegProcess::spawn(label, cmd, true).map_err(|e| e.to_string())?;
        let mut out = proc.take_stdout().ok_or("ffmpeg has no stdout")?;
        let mut cut = fmp4::BoxCutter::default();
        let mut buf = vec![0u8; 256 << 10];
        let (mut ftyp, mut moof): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
        loop {
            if self.idle() {
                proc.stop(Duration::from_secs(2));
                return Ok(());
            }
            let n = match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            cut.push(&buf[..n]);
            while let Some((kind, bytes)) = cut.next_box().map_err(|e| e.to_string())? {
                match &kind {
                    b"ftyp" => ftyp = Some(bytes),
                    b"moov" => {
                        let info =
                            fmp4::track_info(&bytes).ok_or("the stream's codec is not one the live view plays")?;
                        let init = Bytes::from([ftyp.take().unwrap_or_default(), bytes].concat());
                        let mut st = self.state.lock().expect("not poisoned");
                        st.head = Some(Head { codec: info.codec, timescale: info.timescale.max(1), init });
                        st.since_ms = Some(now_ms());
                    }
                    b"moof" => moof = Some(bytes),
                    b"mdat" => {
                        let Some(moof) = moof.take() else { continue };
                        self.publish(&moof, &bytes);
                    }
                    _ => {}
                }
            }
        }
        let tail = ffmpeg::scrub_urls(&proc.stderr_tail());
        proc.stop(Duration::from_secs(1));
        Err(if tail.trim().is_empty() { "the stream ended".into() } else { tail.trim().to_string() })
    }

    fn publish(&self, moof: &[u8], mdat: &[u8]) {
        let Some(info) = fmp4::fragment_info(moof) else { return };
        let mut st = self.state.lock().expect("not poisoned");
        let Some(head) = &st.head else { return };
        let decode_s = info.decode_time as f64 / f64::from(head.timescale);
        let chunk = Arc::new(Chunk {
            key: info.key,
            frame: frame(3, &[&now_ms().to_be_bytes(), &decode_s.to_be_bytes(), moof, mdat]),
        });
        if chunk.key {
            st.gop.clear();
        }
        if chunk.key || !st.gop.is_empty() {
            st.gop.push(chunk.clone());
        }
        // Sent under the state lock: a viewer that subscribes takes the GOP and the receiver
        // together, so it misses and repeats nothing.
        let _ = self.tx.lock().expect("not poisoned").send(chunk);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LiveQuery {
    /// `sub` (default: the detection stream, for the grid) or `main`.
    stream: Option<LiveStream>,
}

/// A browser sends the site's cookie with a WebSocket opened by any page: only this site's own
/// pages may open one (cross-site WebSocket hijacking). Without `Origin` (not a browser) the
/// viewer check alone applies.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, rest)| rest);
    if origin_host.is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(ApiError(
            axum::http::StatusCode::FORBIDDEN,
            format!("live video is only for this site's own pages (Origin {origin:?} is not {host:?})"),
        ))
    }
}

/// Live video of a channel in under a second, over a WebSocket: binary messages `[kind]
/// [payload]` as the module docs say (1 the JSON header, 2 the init segment, 3 a fragment).
/// Shared with every other viewer of the same stream.
#[utoipa::path(get, path = "/api/channels/{id}/live.ws", tag = "channels",
    params(("id" = u32, Path, description = "channel id"),
        ("stream" = Option<LiveStream>, Query, description = "sub (default: the detection stream, for the grid) or main")),
    responses((status = 101, description = "WebSocket of fMP4 fragments (see the module docs)"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn live_ws(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    same_origin(&headers)?;
    let ch = s.channel(&id)?;
    let id = ch.id;
    let stream = q.stream.unwrap_or(LiveStream::Sub);
    let name = match stream {
        LiveStream::Sub => ch.detect_stream_name(),
        LiveStream::Main => ch.stream_name(),
    };
    let url = format!("{}/{name}", s.config.rtmp.play_url.trim_end_matches('/'));
    let viewer = s.live.watch(id, stream, url);
    Ok(ws.on_upgrade(move |socket| watch(socket, viewer, id, stream)))
}

fn message(kind: u8, parts: &[&[u8]]) -> Message {
    Message::Binary(frame(kind, parts))
}

/// One viewer: the head (waiting for the first keyframe), then live fragments until the
/// viewer leaves or the stream restarts.
async fn watch(mut socket: WebSocket, viewer: Viewer, id: u32, stream: LiveStream) {
    let feed = viewer.0.clone();
    let deadline = Instant::now() + FIRST_PICTURE;
    let (first, mut rx) = loop {
        {
            let st = feed.state.lock().expect("not poisoned");
            if let (Some(head), false) = (&st.head, st.gop.is_empty()) {
                let header = LiveHeader {
                    channel: id,
                    stream,
                    codec: head.codec.clone(),
                    server_ms: now_ms(),
                    viewers: feed.viewers.load(Ordering::SeqCst),
                };
                let json = serde_json::to_vec(&header).unwrap_or_default();
                let mut first = vec![message(1, &[&json]), message(2, &[&head.init])];
                first.extend(st.gop.iter().map(|c| Message::Binary(c.frame.clone())));
                break (first, feed.tx.lock().expect("not poisoned").subscribe());
            }
        }
        if Instant::now() > deadline {
            let why = feed.state.lock().expect("not poisoned").error.clone();
            let reason = format!(
                "no live picture of channel {id} within {} s: {}",
                FIRST_PICTURE.as_secs(),
                why.unwrap_or_else(|| "is its stream published?".into())
            );
            let _ = socket.send(Message::Text(reason.into())).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for m in first {
        if socket.send(m).await.is_err() {
            return;
        }
    }
    let mut behind = false;
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Ok(c) if behind && !c.key => {}
                Ok(c) => {
                    behind = false;
                    if socket.send(Message::Binary(c.frame.clone())).await.is_err() {
                        return;
                    }
                }
                // Fell behind: skip to the next keyframe rather than hold the others back.
                Err(broadcast::error::RecvError::Lagged(_)) => behind = true,
                // The stream restarted: the page reconnects and starts on the new one.
                Err(broadcast::error::RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
    drop(viewer);
}

/// The streams being watched live: viewers, codec, restarts.
#[utoipa::path(get, path = "/api/live", tag = "channels",
    responses((status = 200, body = Vec<LiveFeedView>)))]
pub(crate) async fn live_feeds(State(s): State<ApiState>) -> Json<Vec<LiveFeedView>> {
    Json(s.live.views())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_sites_own_pages_open_a_live_websocket() {
        assert!(same_origin(&headers("nvr.example:8088", Some("https://nvr.example:8088"))).is_ok());
        assert!(same_origin(&headers("127.0.0.1:8088", None)).is_ok(), "not a browser");
        for evil in ["https://evil.example", "http://nvr.example:8089", "null", "https://nvr.example:8088.evil.example"]
        {
            assert!(same_origin(&headers("nvr.example:8088", Some(evil))).is_err(), "{evil}");
        }
    }
}

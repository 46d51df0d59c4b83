//! The notifier: reads the cluster's event streams (`<ns>:events:motion`, `:objects`,
//! `:backup`) and delivers each event to the configured sinks — an MQTT broker (with Home
//! Assistant discovery and per-channel availability) and webhooks.
//!
//! Each sink runs on its own: its stream positions are kept in Redis
//! (`<ns>:notify:cursor:<sink>`) and advanced only after the sink confirmed delivery (MQTT: the
//! broker acknowledged every QoS 1 message; webhook: a 2xx answer), so a restart of the
//! notifier, the broker, a receiver or Redis loses nothing and a dead receiver holds up only its
//! own sink. Delivery is at least once: a receiver may see an event twice after a fault (the
//! stream id is in every message for de-duplication). Workers never wait for the notifier.

mod mqtt;
mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cctv_common::config::{Config, EventCategory};
use cctv_common::events::stream_id_ms;
use cctv_common::keys::Keys;
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use mqtt::MqttSink;
pub use webhook::{signature, WebhookSink};

/// Why a delivery did not happen; the sink retries from the same stream position.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("MQTT broker {broker}: {message}")]
    Mqtt { broker: String, message: String },
    #[error("webhook {name} ({url}): {message}")]
    Webhook { name: String, url: String, message: String },
}

/// One event ready to send: its stream id, category and channel, and the JSON body every sink
/// sends (the event as the workers published it, plus `category`, `stream_id`, `channel_name`,
/// and for objects `labels` and `snapshot_url`).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub stream_id: String,
    pub category: EventCategory,
    pub channel: u32,
    pub body: Value,
}

impl Notification {
    /// For motion: `Some(true)` while the event goes on (its start, a zone it entered),
    /// `Some(false)` at its end.
    pub fn motion_on(&self) -> Option<bool> {
        (self.category == EventCategory::Motion).then(|| self.body.get("kind").and_then(Value::as_str) != Some("end"))
    }
}

/// Turns one stream entry's `data` into a notification; `None` for what is not worth sending
/// (an object frame with no detection) or does not decode.
pub fn notification(config: &Config, category: EventCategory, stream_id: &str, data: &str) -> Option<Notification> {
    let mut body: Value = serde_json::from_str(data).ok()?;
    let obj = body.as_object_mut()?;
    let channel = u32::try_from(obj.get("channel")?.as_u64()?).ok()?;
    if category == EventCategory::Objects {
        let detections = obj.get("detections").and_then(Value::as_array).cloned().unwrap_or_default();
        if detections.is_empty() {
            return None;
        }
        let mut labels: Vec<String> =
            detections.iter().filter_map(|d| d.get("label")?.as_str().map(str::to_owned)).collect();
        labels.sort();
        labels.dedup();
        obj.insert("labels".into(), labels.into());
        let snapshot = obj.get("snapshot").and_then(Value::as_str).and_then(|p| std::path::Path::new(p).file_name());
        if let Some(name) = snapshot {
            let base = config.notify.public_url.as_deref().unwrap_or("").trim_end_matches('/');
            let url = format!("{base}/api/snapshots/{channel}/{}", name.to_string_lossy());
            obj.insert("snapshot_url".into(), url.into());
        }
    }
    let name = config.channel(channel).map(|c| c.name.clone());
    obj.insert("channel_name".into(), name.into());
    obj.insert("category".into(), category.as_str().into());
    obj.insert("stream_id".into(), stream_id.into());
    Some(Notification { stream_id: stream_id.to_owned(), category, channel, body })
}

/// Where events go. A sink either delivers a prefix of the batch it is given or fails; the
/// pump keeps the stream positions of what was delivered and hands it the rest again later.
pub trait Sink: Send {
    /// Names the sink's stream positions in Redis and its log lines (`mqtt`, `webhook:<name>`).
    fn name(&self) -> String;
    /// Whether events of this category go to this sink.
    fn wants(&self, category: EventCategory) -> bool;
    /// Sends `batch` in order. Returns how many were delivered (from the front) and, when not
    /// all, why not.
    fn deliver(
        &mut self,
        batch: &[Notification],
    ) -> impl std::future::Future<Output = (usize, Result<(), NotifyError>)> + Send;
    /// Called when nothing new arrived for a while (the MQTT sink refreshes channel availability).
    fn idle(&mut self) -> impl std::future::Future<Output = Result<(), NotifyError>> + Send {
        async { Ok(()) }
    }
}

/// Reads the event streams from one sink's positions and feeds the sink.
pub struct Pump<S: Sink> {
    sink: S,
    conn: ConnectionManager,
    keys: Keys,
    config: Arc<Config>,
    streams: Vec<(String, EventCategory)>,
}

/// Entries read per step.
const READ_COUNT: usize = 200;

impl<S: Sink> Pump<S> {
    pub fn new(sink: S, conn: ConnectionManager, config: Arc<Config>) -> Self {
        let keys = Keys::new(&config.cluster.namespace);
        let streams = EventCategory::ALL
            .into_iter()
            .filter(|c| sink.wants(*c))
            .map(|c| {
                let stream = match c {
                    EventCategory::Motion => keys.motion_events(),
                    EventCategory::Objects => keys.object_events(),
                    EventCategory::Backup => keys.backup_events(),
                };
                (stream, c)
            })
            .collect();
        Self { sink, conn, keys, config, streams }
    }

    /// Reads what arrived (waiting up to `block_ms`), delivers it and advances the positions of
    /// what was delivered. Returns how many notifications were delivered.
    pub async fn step(&mut self, block_ms: usize) -> Result<usize, NotifyError> {
        let names: Vec<String> = self.streams.iter().map(|(s, _)| s.clone()).collect();
        let ids = self.cursors(&names).await?;
        let opts = StreamReadOptions::default().block(block_ms).count(READ_COUNT);
        let reply: Option<StreamReadReply> = self.conn.xread_options(&names, &ids, &opts).await?;
        let Some(reply) = reply.filter(|r| !r.keys.is_empty()) else {
            self.sink.idle().await?;
            return Ok(0);
        };
        // Entries of all streams in the order Redis stamped them (ids are its clock, to the
        // millisecond), so a receiver sees a motion end after the object frames of that motion.
        let mut read: Vec<(&str, EventCategory, &redis::streams::StreamId)> = Vec::new();
        for key in &reply.keys {
            let Some(&(_, category)) = self.streams.iter().find(|(s, _)| *s == key.key) else { continue };
            read.extend(key.ids.iter().map(|e| (key.key.as_str(), category, e)));
        }
        read.sort_by_key(|(_, _, e)| stream_id_ms(&e.id));
        // (stream, entry id, notifications built up to and including this entry).
        let mut entries = Vec::new();
        let mut batch = Vec::new();
        for (stream, category, entry) in read {
            let data: Option<String> = entry.get("data");
            if let Some(n) = data.and_then(|d| notification(&self.config, category, &entry.id, &d)) {
                batch.push(n);
            }
            entries.push((stream.to_owned(), entry.id.clone(), batch.len()));
        }
        let (delivered, result) = if batch.is_empty() { (0, Ok(())) } else { self.sink.deliver(&batch).await };
        let mut advance: HashMap<String, String> = HashMap::new();
        for (stream, id, upto) in entries {
            if upto <= delivered {
                advance.insert(stream, id);
            }
        }
        if !advance.is_empty() {
            let fields: Vec<(String, String)> = advance.into_iter().collect();
            let _: () = self.conn.hset_multiple(self.keys.notify_cursor(&self.sink.name()), &fields).await?;
        }
        result.map(|()| delivered)
    }

    /// Stream positions; a sink seen for the first time starts at the streams' ends (history is
    /// not replayed to a new receiver).
    async fn cursors(&mut self, streams: &[String]) -> Result<Vec<String>, NotifyError> {
        let key = self.keys.notify_cursor(&self.sink.name());
        Ok(cctv_common::events::stream_positions(&mut self.conn, &key, streams).await?)
    }

    /// Steps until `shutdown`; a failure (broker, receiver or Redis away) is logged once per
    /// outage and retried with backoff from the same positions, so nothing is skipped.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = self.sink.name();
        let mut outage: Option<Instant> = None;
        let mut backoff = BACKOFF_MIN;
        while !shutdown.is_cancelled() {
            let result = tokio::select! {
                r = self.step(1000) => r,
                () = shutdown.cancelled() => break,
            };
            match result {
                Ok(n) => {
                    if let Some(since) = outage.take() {
                        tracing::info!(sink = %name, down_secs = since.elapsed().as_secs_f64(), "delivering again");
                    }
                    if n > 0 {
                        tracing::debug!(sink = %name, delivered = n, "events delivered");
                    }
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    if outage.is_none() {
                        tracing::warn!(sink = %name, error = %e, "cannot deliver events; retrying with backoff, none is skipped");
                        outage = Some(Instant::now());
                    } else {
                        tracing::debug!(sink = %name, error = %e, "still cannot deliver");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Retry delays after a failed delivery: doubling from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs one pump per configured sink until `shutdown`. With no sink configured it says so and
/// returns (nothing to do is not an error).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let n = &config.notify;
    if n.mqtt.is_none() && n.webhooks.is_empty() {
        tracing::warn!("no [notify.mqtt] or [[notify.webhook]] configured; the notifier has nothing to do");
        return Ok(());
    }
    let conn = cctv_common::queue::connect(&config.cluster, &config.queue).await?;
    let keys = Keys::new(&config.cluster.namespace);
    let worker = format!("notify-{}-{}", cctv_common::host_name(), std::process::id());
    let heartbeat = tokio::spawn(cctv_common::heartbeat::run(
        conn.clone(),
        keys.clone(),
        worker.clone(),
        "notify",
        Default::default(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(m) = &n.mqtt {
        let sink = MqttSink::new(m, &config, conn.clone())?;
        tracing::info!(broker = %sink.broker(), "publishing events on MQTT");
        tasks.spawn(Pump::new(sink, conn.clone(), config.clone()).run(shutdown.clone()));
    }
    for (i, w) in n.webhooks.iter().enumerate() {
        let sink = WebhookSink::new(w, i)?;
        tracing::info!(webhook = %sink.name(), url = %cctv_common::redact::redact_url(&w.url), "posting events to a webhook");
        tasks.spawn(Pump::new(sink, conn.clone(), config.clone()).run(shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
    heartbeat.abort();
    let mut conn = conn;
    cctv_common::heartbeat::remove(&mut conn, &keys, &worker).await;
    Ok(())
}

#[cfg(test)]
mod tests;

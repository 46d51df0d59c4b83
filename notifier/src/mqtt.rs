//! The MQTT sink. Topics, under `<prefix>` (`notify.mqtt.topic_prefix`):
//!
//! | topic | payload | retained |
//! | --- | --- | --- |
//! | `<prefix>/availability` | `online`; `offline` as the last will | yes |
//! | `<prefix>/ch<id>/availability` | `online` / `offline` (the channel's motion worker sees frames) | yes |
//! | `<prefix>/ch<id>/motion` | the motion event JSON (start and end) | no |
//! | `<prefix>/ch<id>/motion/state` | `ON` / `OFF` | yes |
//! | `<prefix>/ch<id>/objects` | the object event JSON, with `labels` and `snapshot_url` | no |
//! | `<prefix>/ch<id>/backup` | the backup event JSON (file written, failed, deleted) | no |
//! | `<discovery>/binary_sensor/<ns>_ch<id>/motion/config` | Home Assistant discovery | yes |
//!
//! Every message is QoS 1. A batch counts as delivered only when the broker acknowledged each
//! of its messages on one connection; a connection that fails is dropped whole (a new client,
//! not the library's resend queue), so the acknowledgement count never mixes connections.

use std::collections::HashMap;
use std::time::Duration;

use cctv_common::config::{Config, EventCategory, MqttConfig};
use cctv_common::events::ChannelStatus;
use cctv_common::keys::Keys;
use redis::aio::ConnectionManager;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::json;
use tokio::sync::watch;

use crate::{Notification, NotifyError, Sink};

/// How long a connection attempt or the acknowledgement of a batch may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// How often channel availability is re-read from Redis while nothing else happens.
const AVAILABILITY_EVERY: Duration = Duration::from_secs(5);

pub struct MqttSink {
    options: MqttOptions,
    broker: String,
    prefix: String,
    discovery: String,
    namespace: String,
    channels: Vec<(u32, String)>,
    keys: Keys,
    redis: ConnectionManager,
    link: Option<Link>,
    /// Availability last published on the current connection.
    availability: HashMap<u32, bool>,
    availability_read: Option<tokio::time::Instant>,
}

/// One connection to the broker: its client, and what its event loop has seen.
struct Link {
    client: AsyncClient,
    progress: watch::Receiver<Progress>,
    published: u64,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[derive(Debug, Clone, Default)]
struct Progress {
    connected: bool,
    acks: u64,
    failed: Option<String>,
}

impl MqttSink {
    pub fn new(mqtt: &MqttConfig, config: &Config, redis: ConnectionManager) -> Result<Self, NotifyError> {
        let broker = cctv_common::redact::redact_url(&mqtt.url);
        let err = |message: String| NotifyError::Mqtt { broker: broker.clone(), message };
        let url = url::Url::parse(&mqtt.url).map_err(|e| err(format!("not a URL: {e}")))?;
        let host = url.host_str().ok_or_else(|| err("no host".into()))?.to_owned();
        let namespace = config.cluster.namespace.clone();
        let client_id = mqtt.client_id.clone().unwrap_or_else(|| format!("cctv-notifier-{namespace}"));
        let tls = url.scheme() == "mqtts";
        let mut options = MqttOptions::new(client_id, host, url.port().unwrap_or(if tls { 8883 } else { 1883 }));
        if tls {
            // Debian's OpenSSL: the system's CA store, plus `ca_file` for a private CA.
            let config = match &mqtt.ca_file {
                None => TlsConfiguration::Native,
                Some(path) => TlsConfiguration::SimpleNative {
                    ca: std::fs::read(path).map_err(|e| err(format!("ca_file {}: {e}", path.display())))?,
                    client_auth: None,
                },
            };
            options.set_transport(Transport::tls_with_config(config));
        }
        options.set_keep_alive(Duration::from_secs(15));
        options.set_clean_session(true);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let prefix = mqtt.topic_prefix.clone();
        options.set_last_will(LastWill::new(format!("{prefix}/availability"), "offline", QoS::AtLeastOnce, true));
        if !url.username().is_empty() {
            let password = url.password().map(percent_decode).unwrap_or_default();
            options.set_credentials(percent_decode(url.username()), password);
        }
        Ok(Self {
            options,
            broker,
            prefix,
            discovery: mqtt.discovery_prefix.clone(),
            namespace,
            channels: config.channels.iter().map(|c| (c.id, c.name.clone())).collect(),
            keys: Keys::new(&config.cluster.namespace),
            redis,
            link: None,
            availability: HashMap::new(),
            availability_read: None,
        })
    }

    /// The broker, with any password redacted.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    fn error(&self, message: impl Into<String>) -> NotifyError {
        NotifyError::Mqtt { broker: self.broker.clone(), message: message.into() }
    }

    /// The current connection, or a new one that announced the cluster (availability online,
    /// discovery of every channel) and had that acknowledged.
    async fn link(&mut self) -> Result<&mut Link, NotifyError> {
        if self.link.is_none() {
            let (client, mut events) = AsyncClient::new(self.options.clone(), 512);
            let (tx, progress) = watch::channel(Progress::default());
            let driver = tokio::spawn(async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => tx.send_modify(|p| p.connected = true),
                        Ok(Event::Incoming(Packet::PubAck(_))) => tx.send_modify(|p| p.acks += 1),
                        Ok(_) => {}
                        Err(e) => {
                            tx.send_modify(|p| p.failed = Some(e.to_string()));
                            return;
                        }
                    }
                }
            });
            let mut link = Link { client, progress, published: 0, driver };
            let mut rx = link.progress.clone();
            let state = tokio::time::timeout(CONFIRM_TIMEOUT, rx.wait_for(|p| p.connected || p.failed.is_some()))
                .await
                .map_err(|_| self.error(format!("no answer to CONNECT within {CONFIRM_TIMEOUT:?}")))?
                .map_err(|_| self.error("the connection task ended"))?
                .clone();
            if let Some(e) = state.failed {
                return Err(self.error(e));
            }
            self.availability.clear();
            publish(&mut link, format!("{}/availability", self.prefix), true, "online".as_bytes().to_vec()).await?;
            for (topic, payload) in self.discovery_messages() {
                publish(&mut link, topic, true, payload).await?;
            }
            confirm(&mut link).await?;
            tracing::info!(broker = %self.broker, "connected to the MQTT broker");
            self.link = Some(link);
            self.availability_read = None;
        }
        Ok(self.link.as_mut().expect("set above"))
    }

    /// Home Assistant discovery: one motion binary sensor per channel, a device per channel.
    fn discovery_messages(&self) -> Vec<(String, Vec<u8>)> {
        if self.discovery.is_empty() {
            return Vec::new();
        }
        self.channels
            .iter()
            .map(|(id, name)| {
                let node = format!("{}_ch{id}", self.namespace);
                let config = json!({
                    "name": "Motion",
                    "unique_id": format!("{node}_motion"),
                    "device_class": "motion",
                    "state_topic": format!("{}/ch{id}/motion/state", self.prefix),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "availability": [
                        { "topic": format!("{}/availability", self.prefix) },
                        { "topic": format!("{}/ch{id}/availability", self.prefix) },
                    ],
                    "availability_mode": "all",
                    "json_attributes_topic": format!("{}/ch{id}/motion", self.prefix),
                    "device": {
                        "identifiers": [node.clone()],
                        "name": name,
                        "manufacturer": "cctv",
                        "model": "camera channel",
                    },
                });
                (format!("{}/binary_sensor/{node}/motion/config", self.discovery), config.to_string().into_bytes())
            })
            .collect()
    }

    /// Publishes each channel's availability that changed since the last time on this
    /// connection (all of them after a reconnect: a restarted broker may have lost retained ones).
    async fn refresh_availability(&mut self) -> Result<(), NotifyError> {
        let mut now = HashMap::new();
        for (id, _) in &self.channels {
            let raw: Option<String> = redis::AsyncCommands::get(&mut self.redis, self.keys.channel_status(*id)).await?;
            let online = raw.and_then(|r| serde_json::from_str::<ChannelStatus>(&r).ok()).is_some_and(|s| s.online);
            now.insert(*id, online);
        }
        let changed: Vec<(u32, bool)> =
            now.iter().filter(|(id, on)| self.availability.get(id) != Some(on)).map(|(id, on)| (*id, *on)).collect();
        if changed.is_empty() {
            return Ok(());
        }
        let prefix = self.prefix.clone();
        let result = async {
            let link = self.link().await?;
            for (id, on) in &changed {
                let payload = if *on { "online" } else { "offline" };
                publish(link, format!("{prefix}/ch{id}/availability"), true, payload.as_bytes().to_vec()).await?;
            }
            confirm(link).await
        }
        .await;
        match result {
            Ok(()) => {
                self.availability.extend(changed);
                Ok(())
            }
            Err(e) => {
                self.link = None;
                Err(e)
            }
        }
    }
}

async fn publish(link: &mut Link, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), NotifyError> {
    link.client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await
        .map_err(|e| NotifyError::Mqtt { broker: String::new(), message: format!("cannot queue a message: {e}") })?;
    link.published += 1;
    Ok(())
}

/// Waits until the broker acknowledged every message published on this connection.
async fn confirm(link: &mut Link) -> Result<(), NotifyError> {
    let want = link.published;
    let waited =
        tokio::time::timeout(CONFIRM_TIMEOUT, link.progress.wait_for(|p| p.acks >= want || p.failed.is_some())).await;
    let fail = |message: String| NotifyError::Mqtt { broker: String::new(), message };
    let state = waited
        .map_err(|_| fail(format!("no acknowledgement within {CONFIRM_TIMEOUT:?}")))?
        .map_err(|_| fail("the connection task ended".into()))?
        .clone();
    match state.failed {
        Some(e) if state.acks < want => Err(fail(e)),
        _ => Ok(()),
    }
}

impl Sink for MqttSink {
    fn name(&self) -> String {
        "mqtt".into()
    }

    fn wants(&self, _category: EventCategory) -> bool {
        true
    }

    async fn deliver(&mut self, batch: &[Notification]) -> (usize, Result<(), NotifyError>) {
        let prefix = self.prefix.clone();
        let broker = self.broker.clone();
        let result = async {
            let link = self.link().await?;
            for n in batch {
                let base = format!("{prefix}/ch{}/{}", n.channel, n.category.as_str());
                publish(link, base.clone(), false, n.body.to_string().into_bytes()).await?;
                if let Some(on) = n.motion_on() {
                    publish(link, format!("{base}/state"), true, if on { "ON" } else { "OFF" }.into()).await?;
                }
            }
            confirm(link).await
        }
        .await;
        match result {
            Ok(()) => (batch.len(), Ok(())),
            Err(e) => {
                self.link = None;
                (0, Err(with_broker(e, &broker)))
            }
        }
    }

    async fn idle(&mut self) -> Result<(), NotifyError> {
        let due = self.availability_read.is_none_or(|t| t.elapsed() >= AVAILABILITY_EVERY);
        if !due {
            return Ok(());
        }
        let broker = self.broker.clone();
        self.refresh_availability().await.map_err(|e| with_broker(e, &broker))?;
        self.availability_read = Some(tokio::time::Instant::now());
        Ok(())
    }
}

/// Fills in the broker of errors raised where it was not at hand.
fn with_broker(e: NotifyError, broker: &str) -> NotifyError {
    match e {
        NotifyError::Mqtt { broker: b, message } if b.is_empty() => {
            NotifyError::Mqtt { broker: broker.to_owned(), message }
        }
        other => other,
    }
}

/// `%XX` escapes of a URL's user-info decoded (a password may contain `@` or `:`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex()) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn user_info_escapes_are_decoded() {
        assert_eq!(super::percent_decode("p%40ss%3Aw%2"), "p@ss:w%2");
        assert_eq!(super::percent_decode("plain"), "plain");
    }
}

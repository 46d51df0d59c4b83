//! `[notify]`: the notifier's sinks (MQTT broker, webhooks) and the events they take.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::redact::redact_url;

/// `[notify]`: where the `notifier` process sends motion, object and backup events besides
/// Redis. Nothing is sent unless a sink is configured.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Base URL of this cluster's API as receivers reach it (e.g. `http://nvr.lan:8088`), put in
    /// front of snapshot links. Default: none (links are paths such as `/api/snapshots/1/...`).
    pub public_url: Option<String>,
    /// MQTT broker to publish on. Default: none.
    pub mqtt: Option<MqttConfig>,
    /// HTTP endpoints each event is POSTed to (`[[notify.webhook]]`). Default: none.
    #[serde(rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
}

/// `[notify.mqtt]`.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]` (port 1883 by default), or `mqtts://` for TLS
    /// (port 8883 by default; the broker's certificate checked against the system's CA store or
    /// `ca_file`); a secret reference (`{env:NAME}`, `{file:PATH}`) is allowed anywhere in it.
    /// Required.
    pub url: String,
    /// PEM file of the CA that signed the broker's certificate, for `mqtts://` with a private CA.
    /// Default: none (the system's CA store, `/etc/ssl/certs`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Topics are `<topic_prefix>/ch<id>/...`. Default `cctv`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Home Assistant MQTT discovery prefix; `""` turns discovery off. Default `homeassistant`.
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// MQTT client id. Default `cctv-notifier-<namespace>`.
    #[serde(default)]
    pub client_id: Option<String>,
}

fn default_topic_prefix() -> String {
    "cctv".into()
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

/// Event categories a webhook can ask for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EventCategory {
    Motion,
    Objects,
    Backup,
}

impl EventCategory {
    pub const ALL: [EventCategory; 3] = [EventCategory::Motion, EventCategory::Objects, EventCategory::Backup];

    pub fn as_str(self) -> &'static str {
        match self {
            EventCategory::Motion => "motion",
            EventCategory::Objects => "objects",
            EventCategory::Backup => "backup",
        }
    }
}

/// One `[[notify.webhook]]`.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names its stream position in Redis, so keep it when editing the list. Default `webhook<n>`
    /// (its place in the list, from 1).
    #[serde(default)]
    pub name: Option<String>,
    /// `http://` or `https://` endpoint the event JSON is POSTed to (https: the receiver's
    /// certificate checked against the system's CA store or `ca_file`). Required.
    pub url: String,
    /// PEM file of the CA that signed the receiver's certificate, for an `https://` URL with a
    /// private CA. Default: none (the system's CA store, `/etc/ssl/certs`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Key of the `X-CCTV-Signature: sha256=<hex HMAC-SHA256 of the body>` header; a secret
    /// reference is allowed. Default: none (no signature header).
    #[serde(default)]
    pub secret: Option<String>,
    /// Which events are sent. Default all: `["motion", "objects", "backup"]`.
    #[serde(default = "all_categories")]
    pub events: Vec<EventCategory>,
}

fn all_categories() -> Vec<EventCategory> {
    EventCategory::ALL.to_vec()
}

impl WebhookConfig {
    /// The configured name, else `webhook<n>` from its place (`index` from 0).
    pub fn name_or_default(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("webhook{}", index + 1))
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("ca_file", &self.ca_file)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("events", &self.events)
            .finish()
    }
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &redact_url(&self.url))
            .field("ca_file", &self.ca_file)
            .field("topic_prefix", &self.topic_prefix)
            .field("discovery_prefix", &self.discovery_prefix)
            .field("client_id", &self.client_id)
            .finish()
    }
}

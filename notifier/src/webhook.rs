//! The webhook sink: each event is POSTed as JSON, one request per event, in stream order,
//! over `http://` or `https://` (TLS through Debian's OpenSSL; see [`WebhookSink::new`]).
//!
//! Headers: `Content-Type: application/json`, `X-CCTV-Event: motion|objects|backup`,
//! `X-CCTV-Delivery: <stream id>` (the same on a retry, for de-duplication) and, with a
//! `secret`, `X-CCTV-Signature: sha256=<hex HMAC-SHA256 of `<X-CCTV-Timestamp>.<body>`>`. A 2xx answer delivers;
//! a connection error, timeout, 408, 429 or 5xx is retried with backoff (the event and those
//! after it wait); any other status means the receiver refuses this event for good: it is
//! logged as an error and skipped, so one bad event cannot stop a webhook forever.

use std::time::Duration;

use cctv_common::config::{EventCategory, WebhookConfig};
use cctv_common::redact::redact_url;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Notification, NotifyError, Sink};

/// Time allowed for one request, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WebhookSink {
    name: String,
    url: String,
    secret: Option<String>,
    events: Vec<EventCategory>,
    agent: ureq::Agent,
}

impl WebhookSink {
    /// `index`: the webhook's place in `[[notify.webhook]]` (names it when it has no `name`).
    /// An `https://` receiver is reached over TLS with Debian's OpenSSL, its certificate checked
    /// against the system's CA store, or only against `ca_file` when one is set.
    pub fn new(config: &WebhookConfig, index: usize) -> Result<Self, NotifyError> {
        let name = config.name_or_default(index);
        let error =
            |message: String| NotifyError::Webhook { name: name.clone(), url: redact_url(&config.url), message };
        let roots = match &config.ca_file {
            None => ureq::tls::RootCerts::PlatformVerifier,
            Some(path) => ureq::tls::RootCerts::Specific(std::sync::Arc::new(
                read_ca_file(path).map_err(|e| error(format!("ca_file {}: {e}", path.display())))?,
            )),
        };
        let tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::NativeTls).root_certs(roots).build();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .tls_config(tls)
            .build()
            .into();
        Ok(Self { name, url: config.url.clone(), secret: config.secret.clone(), events: config.events.clone(), agent })
    }

    fn error(&self, message: String) -> NotifyError {
        NotifyError::Webhook { name: self.name.clone(), url: redact_url(&self.url), message }
    }

    /// POSTs one event; `Ok(false)` when the receiver refused it for good.
    async fn post(&self, n: &Notification) -> Result<bool, NotifyError> {
        let body = n.body.to_string();
        // Signed with the time it was sent: a receiver refuses a replay outside its window.
        let timestamp = (cctv_common::events::now_ms() / 1000).to_string();
        let signature = self.secret.as_deref().map(|s| signature(s, &timestamp, body.as_bytes()));
        let (agent, url, category, id) =
            (self.agent.clone(), self.url.clone(), n.category.as_str(), n.stream_id.clone());
        let status = tokio::task::spawn_blocking(move || {
            let mut request = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .header("X-CCTV-Event", category)
                .header("X-CCTV-Delivery", &id)
                .header("X-CCTV-Timestamp", &timestamp);
            if let Some(sig) = &signature {
                request = request.header("X-CCTV-Signature", sig);
            }
            request.send(body).map(|r| r.status().as_u16())
        })
        .await
        .map_err(|e| self.error(format!("request task failed: {e}")))?
        .map_err(|e| self.error(redact_url(&e.to_string())))?;
        match status {
            200..=299 => Ok(true),
            408 | 429 | 500..=599 => Err(self.error(format!("answered HTTP {status}"))),
            _ => {
                tracing::error!(
                    webhook = %self.name, url = %redact_url(&self.url), status, stream_id = %n.stream_id,
                    category, "the webhook refused this event (HTTP {status}); skipped"
                );
                Ok(false)
            }
        }
    }
}

/// The certificates of a PEM file (at least one).
fn read_ca_file(path: &std::path::Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("not PEM: {e}")),
        }
    }
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// `sha256=<hex>` of HMAC-SHA256(`secret`, `<timestamp>.<body>`): what `X-CCTV-Signature`
/// carries, `timestamp` being `X-CCTV-Timestamp` (Unix seconds), so a captured request replayed
/// later fails the receiver's time window.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Sink for WebhookSink {
    fn name(&self) -> String {
        format!("webhook:{}", self.name)
    }

    fn wants(&self, category: EventCategory) -> bool {
        self.events.contains(&category)
    }

    async fn deliver(&mut self, batch: &[Notification]) -> (usize, Result<(), NotifyError>) {
        for (i, n) in batch.iter().enumerate() {
            if let Err(e) = self.post(n).await {
                return (i, Err(e));
            }
        }
        (batch.len(), Ok(()))
    }
}

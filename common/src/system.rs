//! The `system` category: starts, stops and errors of every process, on `<ns>:events:system`
//! and in `system.jsonl`, so the API and dashboard show what happened to the cluster itself.

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::catlog::{CategoryLog, CategoryLogError};
use crate::config::LogsConfig;
use crate::events::now_ms;
use crate::keys::Keys;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SystemEventKind {
    Start,
    Stop,
    Error,
}

/// One entry of `<ns>:events:system` and of the system log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SystemEvent {
    pub kind: SystemEventKind,
    /// `scheduler`, `motion`, `yolo`, `record`.
    pub component: String,
    pub worker: String,
    pub host: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<u32>,
    pub ts_ms: i64,
}

/// A process' handle on the system category.
pub struct SystemLog {
    conn: ConnectionManager,
    keys: Keys,
    log: CategoryLog,
    component: String,
    worker: String,
}

impl SystemLog {
    pub fn open(
        conn: ConnectionManager,
        keys: Keys,
        logs: &LogsConfig,
        component: &str,
        worker: &str,
    ) -> Result<Self, CategoryLogError> {
        Ok(Self {
            conn,
            keys,
            log: CategoryLog::open(logs, "system")?,
            component: component.to_owned(),
            worker: worker.to_owned(),
        })
    }

    /// Records an event; failures to publish are logged, never fatal.
    pub async fn emit(&self, kind: SystemEventKind, message: impl Into<String>, channel: Option<u32>) {
        let event = SystemEvent {
            kind,
            component: self.component.clone(),
            worker: self.worker.clone(),
            host: crate::host_name(),
            message: crate::redact::redact_text(&message.into()).into_owned(),
            channel,
            ts_ms: now_ms(),
        };
        let Ok(json) = serde_json::to_string(&event) else { return };
        let r = crate::streams::publish_json(&mut self.conn.clone(), &self.keys, crate::streams::Stream::System, &json)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot publish system event (kept in the system log)");
        }
        self.log.append(&json);
    }
}

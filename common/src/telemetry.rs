//! One telemetry init for every binary: `tracing` to stderr, text or JSON.
//!
//! `CCTV_LOG` is an `EnvFilter` (default `info`); `CCTV_LOG_FORMAT=json` (or `--log-format json`)
//! selects JSON lines. Panics are logged through tracing before the default hook runs.

use tracing_subscriber::{fmt, EnvFilter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" | "pretty" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (expected text or json)")),
        }
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: Option<LogFormat>) {
    let format =
        format.or_else(|| std::env::var("CCTV_LOG_FORMAT").ok().and_then(|f| f.parse().ok())).unwrap_or_default();
    let mut spec = std::env::var("CCTV_LOG").unwrap_or_else(|_| "info".into());
    // ONNX Runtime logs every arena allocation at info; keep it to warnings unless asked.
    if !spec.contains("ort") {
        spec.push_str(",ort=warn");
    }
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    if result.is_ok() {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!(panic = %info, "panic");
            default_hook(info);
        }));
    }
}

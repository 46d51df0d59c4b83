//! One telemetry init for every binary: `tracing` to stderr, text or JSON.
//!
//! `CCTV_LOG` is an `EnvFilter` (default `info`); `CCTV_LOG_FORMAT=json` (or `--log-format json`)
//! selects JSON lines. Panics are logged through tracing before the default hook runs. Every
//! line passes through [`crate::redact::redact_text`] on its way out: a configured camera URL,
//! password or token never reaches the log, whichever field carried it.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, EnvFilter};

/// stderr, redacted (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactedStderr;

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = Redacting<std::io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        Redacting(std::io::stderr())
    }
}

/// A writer that redacts what it is given before passing it on.
#[derive(Debug)]
pub struct Redacting<W>(pub W);

impl<W: Write> Write for Redacting<W> {
    /// One formatted event per call (the fmt layer writes each event whole).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(crate::redact::redact_text(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

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
    let builder = fmt().with_env_filter(filter).with_writer(RedactedStderr);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_redacted_on_their_way_out() {
        crate::redact::register(["rtsp://cam:554/live?user=admin&password=log-pw-4711"], ["log-token-0123456789"]);
        let mut out = Redacting(Vec::new());
        let line = "WARN relay stopped source=rtsp://cam:554/live?user=admin&password=log-pw-4711 \
                    token=log-token-0123456789 pw=log-pw-4711\n";
        out.write_all(line.as_bytes()).unwrap();
        let written = String::from_utf8(out.0).unwrap();
        assert!(!written.contains("log-pw-4711") && !written.contains("log-token-0123456789"), "{written}");
        assert!(written.contains("relay stopped") && written.ends_with('\n'), "{written}");
    }
}

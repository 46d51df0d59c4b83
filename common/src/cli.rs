//! Command-line arguments every binary shares.

use std::path::PathBuf;

use crate::telemetry::LogFormat;

/// `--config` and `--log-format`, flattened into each binary's parser.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The cluster config file.
    #[arg(long, short, global = true, env = "CCTV_CONFIG", default_value = "cctv.toml")]
    pub config: PathBuf,
    /// Log format: text or json (default: $CCTV_LOG_FORMAT, else text).
    #[arg(long, global = true)]
    pub log_format: Option<LogFormat>,
}

/// The exit code of a binary's `main`: on error, prints the whole cause chain (`{:#}`) to stderr.
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! Command-line arguments every binary shares.

use std::path::PathBuf;

use crate::telemetry::LogFormat;

/// `--config` and `--log-format`, flattened into each binary's parser.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The cluster config file (default: ./cctv.toml, else /etc/cctv/cctv.toml).
    #[arg(long = "config", short = 'c', global = true, env = "CCTV_CONFIG")]
    pub config_arg: Option<PathBuf>,
    /// Log format: text or json (default: $CCTV_LOG_FORMAT, else text).
    #[arg(long, global = true)]
    pub log_format: Option<LogFormat>,
}

/// Where the config is looked for when neither `--config` nor `CCTV_CONFIG` names one.
pub const DEFAULT_CONFIGS: [&str; 2] = ["cctv.toml", "/etc/cctv/cctv.toml"];

impl GlobalArgs {
    /// The config file: the one named, else the first of [`DEFAULT_CONFIGS`] that exists, else
    /// `cctv.toml` (whose absence the loader then reports).
    pub fn config(&self) -> PathBuf {
        resolve_config(self.config_arg.as_deref(), |p| p.exists())
    }
}

fn resolve_config(named: Option<&std::path::Path>, exists: impl Fn(&std::path::Path) -> bool) -> PathBuf {
    if let Some(p) = named {
        return p.to_path_buf();
    }
    DEFAULT_CONFIGS.iter().map(PathBuf::from).find(|p| exists(p)).unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIGS[0]))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn config_named_else_local_else_etc() {
        let named = resolve_config(Some(Path::new("/x/site.toml")), |_| true);
        assert_eq!(named, Path::new("/x/site.toml"));
        assert_eq!(resolve_config(None, |_| true), Path::new("cctv.toml"));
        assert_eq!(resolve_config(None, |p| p.starts_with("/etc")), Path::new("/etc/cctv/cctv.toml"));
        assert_eq!(resolve_config(None, |_| false), Path::new("cctv.toml"));
    }
}

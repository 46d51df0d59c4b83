//! `notifier`: sends the cluster's events to MQTT (with Home Assistant discovery) and webhooks.

use std::path::PathBuf;
use std::process::ExitCode;

use cctv_common::cli::GlobalArgs;
use cctv_common::telemetry;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "CCTV notifier: motion, object and backup events to MQTT and webhooks")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Deliver events until SIGINT/SIGTERM.
    Run,
    /// Validate the config file and list every problem.
    CheckConfig,
    /// Exit 0 if this host's notifier wrote its heartbeat in Redis in the last 6 s, else 1 with
    /// the reason (container and unit health checks).
    Health,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format);
    let result = match cli.command {
        Command::CheckConfig => return cctv_common::config::check_config_command(&cli.global.config()),
        Command::Health => return cctv_common::heartbeat::health_command(&cli.global.config(), "notify"),
        Command::Run => run(cli.global.config()),
    };
    cctv_common::cli::exit_code(result)
}

#[tokio::main]
async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = cctv_common::Config::load(&path)?;
    let shutdown = cctv_common::shutdown::install();
    notifier::run(config, shutdown).await
}

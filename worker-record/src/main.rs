//! `worker-record`: stream-copy backups of channels with motion or wanted objects.

use std::path::PathBuf;
use std::process::ExitCode;

use cctv_common::cli::GlobalArgs;
use cctv_common::telemetry;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "CCTV record worker: stream-copy backups from the HLS buffer")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Claim record jobs until SIGINT/SIGTERM.
    Run {
        /// Recordings written at once (overrides `record.concurrency`).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Validate the config file and list every problem.
    CheckConfig,
    /// Exit 0 if this host's worker wrote its heartbeat in Redis in the last 6 s, else 1 with
    /// the reason (container and unit health checks).
    Health,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format);
    let result = match cli.command {
        Command::CheckConfig => return cctv_common::config::check_config_command(&cli.global.config()),
        Command::Health => return cctv_common::heartbeat::health_command(&cli.global.config(), "record"),
        Command::Run { concurrency } => run(cli.global.config(), concurrency),
    };
    cctv_common::cli::exit_code(result)
}

#[tokio::main]
async fn run(path: PathBuf, concurrency: Option<usize>) -> anyhow::Result<()> {
    let mut config = cctv_common::Config::load(&path)?;
    let config_file = path.clone();
    if let Some(n) = concurrency {
        anyhow::ensure!((1..=256).contains(&n), "--concurrency {n} is out of range 1..=256");
        config.record.concurrency = n;
    }
    let shutdown = cctv_common::shutdown::install();
    worker_record::run_with_config_file(config, Some(config_file), shutdown).await
}

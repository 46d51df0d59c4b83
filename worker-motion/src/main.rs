//! `worker-motion`: claims motion jobs and watches their channels.

use std::path::PathBuf;
use std::process::ExitCode;

use cctv_common::cli::GlobalArgs;
use cctv_common::telemetry;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "CCTV motion worker")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Claim motion jobs until SIGINT/SIGTERM.
    Run {
        /// Batches held at once (overrides `worker_motion.concurrency`).
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
        Command::Health => return cctv_common::heartbeat::health_command(&cli.global.config(), "motion"),
        Command::Run { concurrency } => run(cli.global.config(), concurrency),
    };
    cctv_common::cli::exit_code(result)
}

#[tokio::main]
async fn run(config: PathBuf, concurrency: Option<usize>) -> anyhow::Result<()> {
    let mut config = cctv_common::Config::load(&config)?;
    if let Some(n) = concurrency {
        anyhow::ensure!((1..=64).contains(&n), "--concurrency {n} is out of range 1..=64");
        config.worker_motion.concurrency = n;
    }
    let shutdown = cctv_common::shutdown::install();
    worker_motion::run(config, shutdown).await
}

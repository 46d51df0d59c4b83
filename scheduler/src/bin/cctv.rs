//! `cctv`: inspect the cluster (events, status) from any machine that reaches its Redis.

use std::process::ExitCode;

use cctv_common::telemetry::{self, LogFormat};
use clap::Parser;
use scheduler::cli::{Command, ConfigArg};

#[derive(Debug, Parser)]
#[command(version, about = "CCTV cluster command-line tool")]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    /// Log format: text or json.
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match scheduler::cli::run(&cli.config.config, cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `cctv`: inspect the cluster (events, status) from any machine that reaches its Redis.

use std::process::ExitCode;

use cctv_common::cli::GlobalArgs;
use cctv_common::telemetry;
use clap::Parser;
use scheduler::cli::Command;

#[derive(Debug, Parser)]
#[command(version, about = "CCTV cluster command-line tool")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format);
    cctv_common::cli::exit_code(scheduler::cli::run(&cli.global.config(), cli.command).await)
}

//! `worker-yolo`: YOLOv5n object detection on priority channels (issue 3; this release only validates config).

use std::process::ExitCode;

use cctv_common::cli::GlobalArgs;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "YOLOv5n object detection on priority channels (issue 3; this release only validates config)"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config file and list every problem.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig => cctv_common::config::check_config_command(&cli.global.config),
    }
}

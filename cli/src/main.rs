//! `cctv`: inspect the cluster (events, status) from any machine that reaches its Redis.

use std::process::ExitCode;

use cctv_cli::Command;
use cctv_common::cli::GlobalArgs;
use cctv_common::telemetry;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "CCTV cluster command-line tool")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    #[command(flatten)]
    Cluster(Command),
    /// Print a shell completion script (`cctv completions bash > /etc/bash_completion.d/cctv`).
    Completions { shell: clap_complete::Shell },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Top::Completions { shell } => {
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cctv", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    cctv_common::cli::exit_code(Err(anyhow::anyhow!("writing the completion script: {e}")))
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Top::Cluster(command) => {
            telemetry::init(cli.global.log_format);
            cctv_common::cli::exit_code(cctv_cli::run(&cli.global.config(), command).await)
        }
    }
}

//! `scheduler`: plans batches and keeps their motion jobs alive.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use cctv_common::cli::GlobalArgs;
use cctv_common::telemetry;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "CCTV cluster scheduler")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scheduler until SIGINT/SIGTERM.
    Run,
    /// Validate the config file and list every problem.
    CheckConfig,
    /// Print the batches the config produces.
    Plan,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format);
    let result = match cli.command {
        Command::CheckConfig => scheduler::cli::check_config(&cli.global.config),
        Command::Plan => print_plan(&cli.global.config),
        Command::Run => tokio_main(cli.global.config),
    };
    cctv_common::cli::exit_code(result)
}

#[tokio::main]
async fn tokio_main(config: PathBuf) -> anyhow::Result<()> {
    let config = cctv_common::Config::load(&config)?;
    let shutdown = cctv_common::shutdown::install();
    scheduler::run(config, shutdown).await
}

fn print_plan(path: &std::path::Path) -> anyhow::Result<()> {
    let config = cctv_common::Config::load(path)?;
    let plan = scheduler::plan(&config);
    let mut out = std::io::stdout().lock();
    writeln!(out, "plan {}", plan.hash)?;
    for job in &plan.jobs {
        writeln!(out, "{}: channels {:?}", job.batch, job.channels.iter().map(|c| c.id).collect::<Vec<_>>())?;
    }
    Ok(())
}

//! `scheduler`: the control plane (plans batches, keeps their motion jobs alive, decides backups)
//! and the HTTP API it hosts.

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
    /// Run the scheduler (and the HTTP API) until SIGINT/SIGTERM.
    Run,
    /// Validate the config file and list every problem.
    CheckConfig,
    /// Exit 0 if a scheduler process on this host wrote its heartbeat in Redis in the last 6 s,
    /// else 1 with the reason (container and unit health checks).
    Health,
    /// Print the batches the config produces.
    Plan,
    /// Print the API's OpenAPI document (what `GET /api/openapi.json` serves; no config read).
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format);
    let result = match cli.command {
        Command::CheckConfig => return cctv_common::config::check_config_command(&cli.global.config()),
        Command::Health => return cctv_common::heartbeat::health_command(&cli.global.config(), "scheduler"),
        Command::Plan => print_plan(&cli.global.config()),
        Command::Openapi => print_openapi(),
        Command::Run => tokio_main(cli.global.config()),
    };
    cctv_common::cli::exit_code(result)
}

#[tokio::main]
async fn tokio_main(config: PathBuf) -> anyhow::Result<()> {
    let config = cctv_common::Config::load(&config)?;
    let shutdown = cctv_common::shutdown::install();
    scheduler::run(config, shutdown).await
}

fn print_openapi() -> anyhow::Result<()> {
    let doc = serde_json::to_string_pretty(&cctv_api::openapi_document())?;
    writeln!(std::io::stdout().lock(), "{doc}")?;
    Ok(())
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

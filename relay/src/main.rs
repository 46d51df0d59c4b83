//! `cctv-relay`: the camera relays, run next to nginx-rtmp, and the nginx-rtmp config they
//! publish into.

use std::path::PathBuf;
use std::process::ExitCode;

use cctv_common::cli::GlobalArgs;
use cctv_common::telemetry;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "CCTV camera relays (RTSP → nginx-rtmp) and their nginx-rtmp config")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relays of every channel (next to nginx-rtmp) until SIGINT/SIGTERM; SIGHUP re-reads
    /// the config and starts or stops only the cameras added, removed or changed.
    Run,
    /// Exit 0 if a relay process on this host wrote its heartbeat in Redis in the last 6 s, else
    /// 1 with the reason (container and unit health checks).
    Health,
    /// Print the nginx-rtmp configuration (RTMP application, HLS rolling buffer, HTTP server).
    NginxConfig(cctv_relay::nginx::NginxArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format);
    let result = match cli.command {
        Command::Run => run(cli.global.config()),
        Command::Health => return cctv_common::heartbeat::health_command(&cli.global.config(), "relay"),
        Command::NginxConfig(args) => match args.conf() {
            Ok(conf) => {
                print!("{}", conf.render());
                return ExitCode::SUCCESS;
            }
            Err(e) => Err(e),
        },
    };
    cctv_common::cli::exit_code(result)
}

#[tokio::main]
async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = cctv_common::Config::load(&path)?;
    let shutdown = cctv_common::shutdown::install();
    cctv_relay::run_reloading(config, Some(path), shutdown).await
}

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

/// Which process `health` checks.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HealthKind {
    Scheduler,
    Relay,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scheduler (and the HTTP API) until SIGINT/SIGTERM.
    Run,
    /// Run the RTSP → RTMP relays of every channel (next to nginx-rtmp) until SIGINT/SIGTERM;
    /// SIGHUP re-reads the config and starts or stops only the cameras added, removed or changed.
    Relay,
    /// Validate the config file and list every problem.
    CheckConfig,
    /// Exit 0 if a scheduler (or relay) process on this host wrote its heartbeat in Redis in the
    /// last 6 s, else 1 with the reason (container and unit health checks).
    Health {
        #[arg(long, value_enum, default_value = "scheduler")]
        kind: HealthKind,
    },
    /// Print the batches the config produces.
    Plan,
    /// Print the API's OpenAPI document (what `GET /api/openapi.json` serves; no config read).
    Openapi,
    /// Print the nginx-rtmp configuration (RTMP application, HLS rolling buffer, HTTP server).
    NginxConfig {
        #[arg(long, default_value = "127.0.0.1:1935")]
        rtmp_listen: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_listen: String,
        /// HLS fragment directory (a tmpfs keeps the buffer off the disk).
        #[arg(long, default_value = "/dev/shm/cctv-hls")]
        hls_dir: PathBuf,
        /// nginx prefix directory (pid, error log, temp files).
        #[arg(long, default_value = "/var/lib/cctv/nginx")]
        work_dir: PathBuf,
        #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_rtmp_module.so")]
        module: PathBuf,
        /// Addresses allowed to publish (repeat); default 127.0.0.1.
        #[arg(long = "publish-allow", default_values_t = vec!["127.0.0.1".to_string()])]
        publish_allow: Vec<String>,
        /// Addresses allowed to play streams and read the HLS buffer (repeat; the workers'
        /// hosts); default 127.0.0.1.
        #[arg(long = "play-allow", default_values_t = vec!["127.0.0.1".to_string()])]
        play_allow: Vec<String>,
        /// Seconds of video the HLS buffer holds (≥ 30; pre-roll and retries read from it).
        #[arg(long, default_value_t = 60)]
        hls_playlist_secs: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format);
    let result = match cli.command {
        Command::CheckConfig => scheduler::cli::check_config(&cli.global.config()),
        Command::Health { kind } => {
            let kind = match kind {
                HealthKind::Scheduler => "scheduler",
                HealthKind::Relay => "relay",
            };
            return cctv_common::heartbeat::health_command(&cli.global.config(), kind);
        }
        Command::Plan => print_plan(&cli.global.config()),
        Command::Openapi => print_openapi(),
        Command::Run => tokio_main(cli.global.config()),
        Command::Relay => relay_main(cli.global.config()),
        Command::NginxConfig {
            rtmp_listen,
            http_listen,
            hls_dir,
            work_dir,
            module,
            publish_allow,
            play_allow,
            hls_playlist_secs,
        } => {
            if hls_playlist_secs < 30 {
                eprintln!(
                    "error: --hls-playlist-secs {hls_playlist_secs} is below 30 s (pre-roll and retries need it)"
                );
                return ExitCode::FAILURE;
            }
            let conf = scheduler::nginx::NginxConf {
                rtmp_listen,
                http_listen,
                hls_dir,
                work_dir,
                module,
                publish_allow,
                play_allow,
                hls_playlist_secs,
                hls_fragment_secs: 2,
            };
            print!("{}", conf.render());
            return ExitCode::SUCCESS;
        }
    };
    cctv_common::cli::exit_code(result)
}

#[tokio::main]
async fn tokio_main(config: PathBuf) -> anyhow::Result<()> {
    let config = cctv_common::Config::load(&config)?;
    let shutdown = cctv_common::shutdown::install();
    scheduler::run(config, shutdown).await
}

#[tokio::main]
async fn relay_main(path: PathBuf) -> anyhow::Result<()> {
    let config = cctv_common::Config::load(&path)?;
    let shutdown = cctv_common::shutdown::install();
    scheduler::relay::run_reloading(config, Some(path), shutdown).await
}

fn print_openapi() -> anyhow::Result<()> {
    let doc = serde_json::to_string_pretty(&scheduler::api::openapi_document())?;
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

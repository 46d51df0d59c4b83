//! `worker-yolo`: YOLOv5n object detection on priority channels.

use std::path::PathBuf;
use std::process::ExitCode;

use cctv_common::cli::GlobalArgs;
use cctv_common::telemetry;
use clap::{Parser, Subcommand};
use worker_yolo::agree::Candidate;

#[derive(Debug, Parser)]
#[command(version, about = "CCTV object detection worker (YOLOv5n through ONNX Runtime)")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Claim YOLO jobs until SIGINT/SIGTERM.
    Run {
        /// Frames run through the model at once (overrides `yolo.max_batch`).
        #[arg(long)]
        max_batch: Option<usize>,
        /// Threads per inference (overrides `yolo.intra_threads`).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Run the model on image files and print what it finds (checks the model set-up).
    Detect {
        images: Vec<PathBuf>,
        /// Smallest score printed (overrides `yolo.min_score`).
        #[arg(long)]
        min_score: Option<f32>,
        #[arg(long)]
        json: bool,
    },
    /// How a candidate (two frames per input, another model file, or both) agrees with the
    /// configured model run one frame per input, on videos (each cut into 640x360 frames at
    /// `--fps`): boxes, seconds and person seconds kept, boxes added.
    Agree {
        videos: Vec<PathBuf>,
        #[arg(long, default_value_t = 5.0)]
        fps: f64,
        /// The candidate's model file (e.g. the int8 one from deploy/yolo/quantize.sh).
        /// Default: the configured model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The candidate runs two frames per input. Default: on when --model is not given.
        #[arg(long)]
        paired: Option<bool>,
        #[arg(long)]
        json: bool,
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
        Command::Health => return cctv_common::heartbeat::health_command(&cli.global.config(), "yolo"),
        Command::Run { max_batch, threads } => run(cli.global.config(), max_batch, threads),
        Command::Detect { images, min_score, json } => detect(cli.global.config(), images, min_score, json),
        Command::Agree { videos, fps, model, paired, json } => {
            let candidate = Candidate { paired: paired.unwrap_or(model.is_none()), model };
            agree(cli.global.config(), videos, fps, &candidate, json)
        }
    };
    cctv_common::cli::exit_code(result)
}

fn load(path: PathBuf, max_batch: Option<usize>, threads: Option<usize>) -> anyhow::Result<cctv_common::Config> {
    let mut config = cctv_common::Config::load(&path)?;
    if let Some(n) = max_batch {
        anyhow::ensure!((1..=32).contains(&n), "--max-batch {n} is out of range 1..=32");
        config.yolo.max_batch = n;
    }
    if let Some(n) = threads {
        anyhow::ensure!((1..=64).contains(&n), "--threads {n} is out of range 1..=64");
        config.yolo.intra_threads = n;
    }
    Ok(config)
}

#[tokio::main]
async fn run(path: PathBuf, max_batch: Option<usize>, threads: Option<usize>) -> anyhow::Result<()> {
    let config = load(path, max_batch, threads)?;
    let shutdown = cctv_common::shutdown::install();
    worker_yolo::run(config, shutdown).await
}

fn detect(path: PathBuf, images: Vec<PathBuf>, min_score: Option<f32>, json: bool) -> anyhow::Result<()> {
    let mut config = load(path, None, None)?;
    if let Some(s) = min_score {
        config.yolo.min_score = s;
    }
    worker_yolo::detect_files(&config.yolo, &images, json)
}

fn agree(path: PathBuf, videos: Vec<PathBuf>, fps: f64, candidate: &Candidate, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(fps > 0.0 && fps <= 30.0, "--fps {fps} is out of range (0, 30]");
    let config = load(path, None, None)?;
    for a in worker_yolo::agree::agree(&config.yolo, &videos, fps, candidate)? {
        if json {
            println!("{}", serde_json::to_string(&a)?);
        } else {
            println!(
                "{}: {} frames; boxes kept {} of {} ({} %), {} added; seconds with a wanted label kept {} of {} ({} %); person seconds {} of {} ({} %)",
                a.source,
                a.frames,
                a.kept_boxes,
                a.reference_boxes,
                a.box_recall(),
                a.extra_boxes,
                a.kept_seconds,
                a.reference_seconds,
                a.second_recall(),
                a.kept_person_seconds,
                a.person_seconds,
                a.person_second_recall()
            );
        }
    }
    Ok(())
}

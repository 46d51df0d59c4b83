//! `loadtest`: the load and stability test (see `docs/loadtest.md`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cctv_common::cli::GlobalArgs;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "CCTV load and stability test: 4 → 8 → 16 → 32 simulated cameras through the whole cluster")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring up a cluster and run the stages; exit 1 if a stage was unstable.
    Run {
        /// Channel counts, in order.
        #[arg(long, value_delimiter = ',', default_values_t = vec![4, 8, 16, 32])]
        stages: Vec<usize>,
        /// Seconds each stage is held.
        #[arg(long, default_value_t = 120)]
        hold_secs: u64,
        /// 4 channels for 30 s: checks the harness itself.
        #[arg(long)]
        quick: bool,
        /// Where report.md, report.json and the plots go.
        #[arg(long, default_value = "loadtest-report")]
        report_dir: PathBuf,
        /// Where encoded camera clips are cached between runs.
        #[arg(long, default_value = ".local/loadtest-clips")]
        cache_dir: PathBuf,
        /// Motion worker processes.
        #[arg(long, default_value_t = 2)]
        motion_workers: usize,
        /// A `[motion]` setting for the cluster, `KEY=VALUE` in TOML (e.g. `gate=true`); repeatable.
        #[arg(long = "motion", value_name = "KEY=VALUE")]
        motion_settings: Vec<String>,
        /// A `[yolo]` setting for the cluster, `KEY=VALUE` in TOML (e.g. `intra_threads=1`);
        /// repeatable.
        #[arg(long = "yolo", value_name = "KEY=VALUE")]
        yolo_settings: Vec<String>,
        /// What the cameras show: `mixed` (a quarter active), `still` or `active` (the two
        /// parts of a mixed load, measured apart).
        #[arg(long, value_enum, default_value_t)]
        scenes: loadtest::SceneMix,
        /// The cameras' keyframe interval (GOP), seconds, main and sub-stream.
        #[arg(long, default_value_t = loadtest::DEFAULT_GOP_SECS, value_parser = loadtest::parse_gop_secs)]
        gop_secs: f64,
        /// Cameras that send H.265: `main` (H.265 main, H.264 sub-stream) or `only` (H.265 and
        /// no sub-stream), every `--h265-every`-th camera.
        #[arg(long, value_enum, default_value_t)]
        h265: loadtest::H265Kind,
        /// Which cameras `--h265` applies to: every N-th.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
        h265_every: u64,
        /// No progress bars (logs and CI).
        #[arg(long)]
        no_progress: bool,
    },
    /// The selective-backup quality harness: scripted real footage through the cluster, scored
    /// against YOLO ground truth (docs/quality.md); exit 1 if a target was missed.
    Quality {
        /// One scene, shorter script (the test suite runs this).
        #[arg(long)]
        quick: bool,
        /// Where report.md and report.json go.
        #[arg(long, default_value = "quality-report")]
        report_dir: PathBuf,
        /// Where scene clips and their ground truth are cached between runs.
        #[arg(long, default_value = ".local/quality-clips")]
        cache_dir: PathBuf,
        /// A `[motion]` setting for the cluster, `KEY=VALUE` in TOML (e.g. `gate=true`); repeatable.
        #[arg(long = "motion", value_name = "KEY=VALUE")]
        motion_settings: Vec<String>,
        /// The cameras' keyframe interval (GOP), seconds.
        #[arg(long, default_value_t = loadtest::DEFAULT_GOP_SECS, value_parser = loadtest::parse_gop_secs)]
        gop_secs: f64,
    },
    /// Re-render report.md and the plots of a report directory from its report.json.
    Render { report_dir: PathBuf },
    /// Validate the config file and list every problem.
    CheckConfig,
}

/// Runs `work` on a new runtime, raced against Ctrl-C / SIGTERM. Interrupted, the run is
/// dropped: every server and process it started is stopped by its destructor, nothing is left
/// running. Returns the exit code for an interruption or a failure to start, else the result.
fn until_interrupted<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> Result<T, ExitCode> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })?;
    let outcome = rt.block_on(async {
        tokio::select! {
            r = work => Some(r),
            _ = cctv_common::shutdown::wait_for_signal() => None,
        }
    });
    match outcome {
        None => {
            eprintln!("interrupted; the cluster was stopped and no report written");
            Err(ExitCode::from(130))
        }
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            Err(ExitCode::FAILURE)
        }
        Some(Ok(v)) => Ok(v),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig => cctv_common::config::check_config_command(&cli.global.config()),
        Command::Quality { quick, report_dir, cache_dir, motion_settings, gop_secs } => {
            let motion = match loadtest::motion_section(&motion_settings) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = loadtest::quality::QualityOptions {
                quick,
                report_dir: report_dir.clone(),
                cache_dir,
                motion,
                gop_secs,
            };
            match until_interrupted(loadtest::quality::quality(opts)) {
                Err(code) => code,
                Ok(r) => {
                    println!("report: {}", report_dir.join("report.md").display());
                    if r.targets_met {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!("targets missed; see {}", report_dir.join("report.md").display());
                        ExitCode::FAILURE
                    }
                }
            }
        }
        Command::Render { report_dir } => match loadtest::render(&report_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            stages,
            hold_secs,
            quick,
            report_dir,
            cache_dir,
            motion_workers,
            no_progress,
            motion_settings,
            yolo_settings,
            scenes,
            gop_secs,
            h265,
            h265_every,
        } => {
            let settings = loadtest::motion_section(&motion_settings)
                .and_then(|m| Ok((m, loadtest::setting_lines("yolo", &yolo_settings)?)));
            let (motion, yolo) = match settings {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let (stages, hold) = if quick { (vec![4], 30) } else { (stages, hold_secs) };
            if stages.is_empty() || stages.iter().any(|&n| n == 0 || n > 64) || hold < 10 {
                eprintln!("error: --stages must be 1..=64 channels each and --hold-secs at least 10");
                return ExitCode::from(2);
            }
            let opts = loadtest::Options {
                stages,
                hold: Duration::from_secs(hold),
                report_dir,
                cache_dir,
                sample_every: Duration::from_secs(2),
                motion_workers,
                progress: !no_progress,
                motion,
                yolo,
                scenes,
                gop_secs,
                h265: loadtest::H265Mix { kind: h265, every: h265_every as usize },
            };
            match until_interrupted(loadtest::run(opts.clone())) {
                Err(code) => code,
                Ok(r) if r.stages.iter().all(|s| s.stable) => {
                    println!("report: {}", opts.report_dir.join("report.md").display());
                    ExitCode::SUCCESS
                }
                Ok(_) => {
                    eprintln!("unstable stage(s); see {}", opts.report_dir.join("report.md").display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

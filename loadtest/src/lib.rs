//! The load and stability test: N simulated RTSP cameras (main 1280x720 25 fps, sub 640x360
//! 10 fps, about a quarter of them active) through the whole cluster — relays, nginx-rtmp,
//! scheduler, motion, YOLO and record workers — in stages of growing N, sampling CPU and RSS
//! per component, Redis, frames analysed vs expected, latencies and errors, and writing
//! `report.md`, `report.json` and PNG plots.
//!
//! A stage is unstable when a process died, a channel was offline at its end, or more than 1 %
//! of motion frames were not analysed; the run then exits non-zero.

mod clips;
mod measure;
pub mod plot;
pub mod quality;
mod report;

pub use clips::Clips;
use clips::*;
use measure::*;
pub use report::*;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use cctv_common::events::{
    decode_entry, now_ms, BackupEvent, BackupEventKind, ChannelStatus, MotionEvent, ObjectEvent,
};
use cctv_testkit::{Nginx, Redis, RtspCameras};
use redis::AsyncCommands;
use serde::Serialize;

/// Motion analysis rate (the default `motion.fps`).
const MOTION_FPS: f64 = 5.0;
/// Seconds after a stage starts before frames are counted (readers connecting).
const WARMUP_SECS: u64 = 20;
/// A channel not analysing this long after the warm-up makes the stage unstable (its frames
/// before are not counted as dropped).
const LATE_ONLINE_MS: i64 = 10_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub stages: Vec<usize>,
    pub hold: Duration,
    pub report_dir: PathBuf,
    /// Encoded camera clips are kept here between runs.
    pub cache_dir: PathBuf,
    pub sample_every: Duration,
    pub motion_workers: usize,
    pub progress: bool,
    /// `[motion]` settings of the cluster (see [`motion_section`]), empty for the defaults.
    pub motion: String,
    /// Lines added to the cluster's `[yolo]` section (see [`setting_lines`]), empty for the
    /// defaults.
    pub yolo: String,
    /// What the simulated cameras show.
    pub scenes: SceneMix,
    /// The cameras' keyframe interval, seconds (main and sub-stream).
    pub gop_secs: f64,
    /// Which cameras send H.265, and what.
    pub h265: H265Mix,
}

/// Cameras that send H.265 (see `docs/loadtest.md`): every `every`-th camera, with `kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct H265Mix {
    pub kind: H265Kind,
    pub every: usize,
}

/// What an H.265 camera of the load test sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum H265Kind {
    /// Every camera H.264 (main and sub-stream).
    #[default]
    None,
    /// H.265 main stream (1280x720), H.264 sub-stream: the relay buffers the main stream itself.
    Main,
    /// H.265 main stream only, no sub-stream: the relay also transcodes a 640-wide H.264 detect
    /// stream from it.
    Only,
}

impl H265Mix {
    /// Camera `i` (from 1) sends H.265.
    pub fn h265(&self, i: usize) -> bool {
        self.kind != H265Kind::None && self.every > 0 && i % self.every == 0
    }
}

/// What the simulated cameras show. `Still` and `Active` split the `Mixed` load into its two
/// parts, so what the still cameras cost and what the active ones cost are measured apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SceneMix {
    /// Every fourth camera active (alternating people and shoppers, one in eight a priority
    /// channel), the rest still with sensor noise.
    #[default]
    Mixed,
    /// Every camera still (sensor noise only).
    Still,
    /// Every camera active, every other one a priority channel: n channels here are the active
    /// part of 4n mixed channels.
    Active,
}

/// `KEY=VALUE` pairs as the lines of a `[motion]` section (`""` for none); the cluster's
/// config check then rejects an unknown key or a bad value, naming it.
pub fn motion_section(settings: &[String]) -> anyhow::Result<String> {
    if settings.is_empty() {
        return Ok(String::new());
    }
    Ok(format!("[motion]\n{}", setting_lines("motion", settings)?))
}

/// `KEY=VALUE` pairs (of the command-line flag `--<section>`) as TOML lines of that section.
pub fn setting_lines(section: &str, settings: &[String]) -> anyhow::Result<String> {
    let mut t = String::new();
    for kv in settings {
        let (k, v) = kv.split_once('=').with_context(|| format!("--{section} {kv:?}: expected KEY=VALUE"))?;
        let k = k.trim();
        anyhow::ensure!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "--{section} {kv:?}: {k:?} is not a [{section}] key"
        );
        t += &format!("{k} = {}\n", v.trim());
    }
    Ok(t)
}

/// A process the load test started, stopped with SIGTERM (then SIGKILL) on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let err = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .args(args)
            .env("CCTV_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { name: name.to_string(), child })
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of this workspace next to the load test (`target/<profile>/`).
fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("{name} is not built next to {} (cargo build --workspace --bins)", exe.display())
}

/// PSS is read every this many samples.
const PSS_EVERY: usize = 5;

/// The cameras' keyframe interval unless `--gop-secs` says otherwise (many cameras' default).
pub const DEFAULT_GOP_SECS: f64 = 2.0;

/// A keyframe interval of `gop_secs` at `fps`: in frames (x264's `-g`), and the tag clip cache
/// names carry for it (none for the default, so the caches of earlier runs stay valid).
pub(crate) fn gop_frames(fps: u32, gop_secs: f64) -> (u32, String) {
    let frames = ((f64::from(fps) * gop_secs).round() as u32).max(1);
    let tag = if gop_secs == DEFAULT_GOP_SECS { String::new() } else { format!("-g{frames}") };
    (frames, tag)
}

/// `--gop-secs`, checked (both subcommands take it).
pub fn parse_gop_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if (0.1..=10.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is out of range 0.1..=10"))
    }
}

/// Replaces the config file whole (a temporary file renamed over it): a process starting
/// meanwhile reads the old file or the new one, never a half-written one. (Rewritten in place,
/// a worker that read it while it was being written found no channel and exited: the quick
/// load test failed once in three fresh-clone runs.)
/// Writes the cluster's config, after checking it as every process will (`Config::load`): a bad
/// `--motion` / `--yolo` setting is one clear error here, not every process dying at start.
pub fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)?;
    if let Err(e) = cctv_common::Config::load(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("the load test's cluster config is not valid (check --motion / --yolo): {e:#}");
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The servers a config names: Redis, nginx-rtmp and the simulated cameras.
type Servers<'a> = (&'a Redis, &'a Nginx, &'a RtspCameras);

fn config_text(
    n: usize,
    (redis, nginx, cams): Servers,
    dir: &Path,
    api_port: u16,
    opts: &Options,
    model: &Path,
) -> String {
    let (motion, yolo) = (&opts.motion, &opts.yolo);
    // `--yolo model=...` replaces the default model (a second `model` key would be a TOML error).
    let model = if yolo.lines().any(|l| l.split('=').next().is_some_and(|k| k.trim() == "model")) {
        String::new()
    } else {
        format!("model = \"{}\"\n", model.display())
    };
    let mut t = motion.to_string();
    t += &format!(
        "[cluster]\nredis_url = \"{}\"\nnamespace = \"load\"\n\
         [rtmp]\npublish_url = \"{live}\"\nplay_url = \"{live}\"\nhls_url = \"{}\"\n\
         [scheduler]\nbatch_size = 8\nreconcile_interval_secs = 2\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
         [record]\nbackup_dir = \"{}\"\ntimezone = \"UTC\"\n[logs]\ndir = \"{}\"\n\
         [yolo]\n{model}snapshot_dir = \"{}\"\n{yolo}",
        redis.url(),
        nginx.hls_url(),
        dir.join("backups").display(),
        dir.join("logs").display(),
        dir.join("snapshots").display(),
        live = nginx.live_url(),
    );
    // The relay's own buffer (H.265 main streams) goes where this nginx serves HLS.
    t += &format!("[relay]\nhls_dir = \"{}\"\n", nginx.hls_dir().display());
    for i in 1..=n {
        let priority = camera_priority(i, opts.scenes);
        // An H.265-only camera has no sub-stream: the relay transcodes one.
        let detect = if opts.h265.h265(i) && opts.h265.kind == H265Kind::Only {
            String::new()
        } else {
            format!("detect_source = \"{}\"\n", cams.url("viewer:load@", i as u32, "sub"))
        };
        t += &format!(
            "[[channel]]\nid = {i}\nname = \"cam {i}\"\nsource = \"{}\"\n{detect}priority = {priority}\n",
            cams.url("viewer:load@", i as u32, "main"),
        );
    }
    t
}

async fn stream<T: serde::de::DeserializeOwned>(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    from_ms: i64,
) -> Vec<(i64, T)> {
    let r: redis::streams::StreamRangeReply = conn.xrange(key, format!("{from_ms}-0"), "+").await.unwrap_or_default();
    r.ids
        .iter()
        .filter_map(|e| {
            let ms = e.id.split('-').next()?.parse().ok()?;
            Some((ms, decode_entry::<T>(&e.map)?))
        })
        .collect()
}

/// Channel `i`'s status as worker-motion last wrote it (`None`: none, or unreadable).
async fn channel_status(conn: &mut redis::aio::MultiplexedConnection, i: u32) -> Option<ChannelStatus> {
    let s: Option<String> = conn.get(format!("load:status:channel:{i}")).await.unwrap_or(None);
    s.and_then(|s| serde_json::from_str(&s).ok())
}

/// YOLO frames sampling by need did not send, summed over the channels' statuses.
async fn yolo_sampler_skipped(conn: &mut redis::aio::MultiplexedConnection, n: usize) -> u64 {
    let mut sum = 0;
    for i in 1..=n as u32 {
        sum += channel_status(conn, i).await.map_or(0, |st| st.yolo_frames_skipped);
    }
    sum
}

/// Per channel: frames analysed so far and when that count was written.
type FrameCounts = BTreeMap<u32, (u64, i64)>;

/// Per channel: frames watched so far (analysed, or left undecoded by the gate) and when that count was written (the status'
/// `updated_ms`); and the channels offline or without status.
async fn frames_total(conn: &mut redis::aio::MultiplexedConnection, n: usize) -> (FrameCounts, Vec<u32>) {
    let mut counts = BTreeMap::new();
    let mut offline = Vec::new();
    for i in 1..=n as u32 {
        match channel_status(conn, i).await {
            Some(st) => {
                // Frames the gate judged still from their packets alone count as watched.
                counts.insert(i, (st.frames_total + st.frames_gated, st.updated_ms));
                if !st.online {
                    offline.push(i);
                }
            }
            None => offline.push(i),
        }
    }
    (counts, offline)
}

/// Frames analysed and expected (`MOTION_FPS` over the time between the two counts, per
/// channel: the counts are written every few seconds, so wall-clock time would be off by up to
/// one status period). A counter that went backwards (the channel moved to another worker)
/// counts from zero: frames before the move are then reported as dropped, on the safe side.
fn frames_between(start: &FrameCounts, end: &FrameCounts, start_ms: i64) -> (u64, f64) {
    let mut analysed = 0;
    let mut expected = 0.0;
    for (ch, &(frames_end, at_end)) in end {
        let (frames_start, at_start) = start.get(ch).copied().unwrap_or((0, start_ms));
        analysed += if frames_end >= frames_start { frames_end - frames_start } else { frames_end };
        expected += MOTION_FPS * (at_end - at_start).max(0) as f64 / 1000.0;
    }
    (analysed, expected)
}

/// Runs the stages; returns the report (already written to `report_dir`).
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.report_dir)?;
    let mut site = Site::start(&opts).await?;
    let mut samples = Vec::new();
    let mut stages = Vec::new();
    for &n in &opts.stages {
        let (report, stage_samples) = site.stage(n, &opts).await?;
        stages.push(report);
        samples.extend(stage_samples);
    }
    let work = site.stop();
    eprintln!("process logs and backups of this run: {}", work.display());
    let motion_settings = opts.motion.lines().skip(1).map(str::to_string).collect();
    let yolo_settings = opts.yolo.lines().map(str::to_string).collect();
    let report = Report {
        machine: machine(),
        started: format!("{}", now_ms()),
        motion_settings,
        yolo_settings,
        scenes: opts.scenes,
        h265: opts.h265,
        gop_secs: opts.gop_secs,
        stages,
        samples,
    };
    write_report(&report, &opts.report_dir)?;
    Ok(report)
}

/// The cluster under test: servers, cameras, workers (running the whole run), the relay
/// (reloaded per stage) and what the samples are read with.
struct Site {
    idle_used_mib: f64,
    work: PathBuf,
    logs: PathBuf,
    redis: Redis,
    nginx: Nginx,
    cameras: RtspCameras,
    api_port: u16,
    cfg: PathBuf,
    cfgs: String,
    /// The YOLO model of the config (`--yolo model=` overrides it).
    model: PathBuf,
    workers: Vec<Proc>,
    /// One relay for the whole run: each stage's config reaches it by SIGHUP, which starts the
    /// added cameras and leaves the running ones alone (as a site adding cameras does).
    relay: Option<Proc>,
    conn: redis::aio::MultiplexedConnection,
    started: Instant,
    sys: sysinfo::System,
    cpus: f64,
}

impl Site {
    /// Clips, servers, cameras and the workers, with the first stage's config.
    async fn start(opts: &Options) -> anyhow::Result<Self> {
        let idle_used_mib = machine_used_mib();
        let work = tempfile_dir(&opts.report_dir)?;
        let logs = work.join("process-logs");
        std::fs::create_dir_all(&logs)?;
        let max = *opts.stages.iter().max().context("no stage")?;
        eprintln!("preparing camera clips in {} (first run only)...", opts.cache_dir.display());
        let clips = prepare_clips(&opts.cache_dir, opts.gop_secs, opts.h265.kind != H265Kind::None)?;
        let redis = Redis::start();
        let nginx = Nginx::start();
        let cams: Vec<(PathBuf, PathBuf)> = (1..=max)
            .map(|i| {
                let c = &clips[camera_scene(i, opts.scenes)];
                match (&c.main265, opts.h265.h265(i)) {
                    (Some(main265), true) => (main265.clone(), c.sub.clone()),
                    _ => (c.main.clone(), c.sub.clone()),
                }
            })
            .collect();
        let cameras = RtspCameras::start(&cams);
        let api_port = cctv_testkit::free_port();
        let cfg = work.join("cctv.toml");
        // The default model: ../shared's export rewritten to take any input size.
        let model = cctv_testkit::any_size_model().context("the any-size YOLO model")?;
        write_config(&cfg, &config_text(opts.stages[0], (&redis, &nginx, &cameras), &work, api_port, opts, &model))?;
        let cfgs = cfg.to_str().context("config path")?.to_string();
        let workers = start_workers(opts, &cfgs, &logs)?;
        let conn = redis::Client::open(redis.url())?.get_multiplexed_async_connection().await?;
        Ok(Self {
            idle_used_mib,
            work,
            logs,
            redis,
            nginx,
            cameras,
            api_port,
            cfg,
            cfgs,
            model,
            workers,
            relay: None,
            conn,
            started: Instant::now(),
            sys: sysinfo::System::new()?,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64,
        })
    }

    /// One stage of `n` channels: the config and the relay brought to it, a fresh scheduler,
    /// samples every `sample_every` for `hold`, then the stage's figures.
    async fn stage(&mut self, n: usize, opts: &Options) -> anyhow::Result<(StageReport, Vec<Sample>)> {
        write_config(
            &self.cfg,
            &config_text(n, (&self.redis, &self.nginx, &self.cameras), &self.work, self.api_port, opts, &self.model),
        )?;
        match &self.relay {
            None => {
                self.relay = Some(Proc::spawn(
                    "relay",
                    &workspace_bin("cctv-relay")?,
                    &["--config", &self.cfgs, "run"],
                    &self.logs.join("relay.log"),
                )?)
            }
            Some(r) => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(r.pid() as i32), nix::sys::signal::Signal::SIGHUP)?
            }
        }
        // The scheduler reads the channel list at start: restart it per stage; the workers keep
        // running and follow the new plan (batches whose channels did not change keep their job).
        let mut stage_procs = vec![Proc::spawn(
            "scheduler",
            &workspace_bin("scheduler")?,
            &["--config", &self.cfgs, "run"],
            &self.logs.join(format!("scheduler-{n}.log")),
        )?];
        let mut watch = StageWatch::begin(self, n, opts).await;
        while watch.stage_start.elapsed() < opts.hold {
            tokio::time::sleep(opts.sample_every).await;
            watch.sample(self, &mut stage_procs, opts).await;
        }
        let report = watch.report(self, opts).await;
        eprintln!(
            "stage {n}: cluster CPU {:.1} % of the machine, RSS {:.0} MiB (PSS {:.0} MiB), frames dropped {:.2} %, motion p95 {:?} ms, {}",
            report.cluster_cpu_percent_of_machine,
            report.cluster_rss_mib,
            report.cluster_pss_mib,
            report.frames_dropped_percent,
            report.motion_latency_ms.p95,
            if report.stable { "stable".to_string() } else { format!("UNSTABLE: {}", report.problems.join("; ")) }
        );
        drop(stage_procs);
        Ok((report, watch.samples))
    }

    /// Stops the workers and the relay (the servers go with the site); returns the work
    /// directory (logs and backups of the run).
    fn stop(mut self) -> PathBuf {
        self.workers.clear();
        self.relay = None;
        self.work.clone()
    }
}

/// The motion workers, the YOLO worker and the record worker, for the whole run.
fn start_workers(opts: &Options, cfgs: &str, logs: &Path) -> anyhow::Result<Vec<Proc>> {
    let mut workers: Vec<Proc> = Vec::new();
    for w in 1..=opts.motion_workers {
        workers.push(Proc::spawn(
            &format!("worker-motion-{w}"),
            &workspace_bin("worker-motion")?,
            &["--config", cfgs, "run", "--concurrency", "4"],
            &logs.join(format!("motion-{w}.log")),
        )?);
    }
    default_ort_path()?;
    workers.push(Proc::spawn(
        "worker-yolo",
        &workspace_bin("worker-yolo")?,
        &["--config", cfgs, "run"],
        &logs.join("yolo.log"),
    )?);
    workers.push(Proc::spawn(
        "worker-record",
        &workspace_bin("worker-record")?,
        &["--config", cfgs, "run"],
        &logs.join("record.log"),
    )?);
    Ok(workers)
}

/// What one stage has seen so far.
struct StageWatch {
    n: usize,
    stage_start: Instant,
    stage_start_ms: i64,
    bar: Option<indicatif::ProgressBar>,
    /// Each channel's frames are counted from its first status after the warm-up that says it
    /// is online and analysing: a count written while it was still connecting would charge the
    /// connecting time as lost frames.
    warmup_ms: Option<i64>,
    frames_start: FrameCounts,
    samples: Vec<Sample>,
    dead: Vec<String>,
    yolo_max_waiting: u64,
    backups_at_start: u64,
    record_pid: Option<u32>,
    record_written_at_start: u64,
    record_cpu_at_start: f64,
    yolo_stats_start: HashMap<String, i64>,
    yolo_pid: Option<u32>,
    yolo_cpu_at_start: f64,
    yolo_skipped_at_start: u64,
}

impl StageWatch {
    async fn begin(site: &mut Site, n: usize, opts: &Options) -> Self {
        let bar = if opts.progress {
            let b = indicatif::ProgressBar::new(opts.hold.as_secs());
            b.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} s  {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(format!("{n} channels"));
            Some(b)
        } else {
            None
        };
        let record_pid = site.workers.iter().find(|w| w.name == "worker-record").map(|w| w.pid());
        let yolo_pid = site.workers.iter().find(|w| w.name == "worker-yolo").map(|w| w.pid());
        Self {
            n,
            stage_start: Instant::now(),
            stage_start_ms: now_ms(),
            bar,
            warmup_ms: None,
            frames_start: BTreeMap::new(),
            samples: Vec::new(),
            dead: Vec::new(),
            yolo_max_waiting: 0,
            backups_at_start: dir_bytes(&site.work.join("backups")),
            record_pid,
            record_written_at_start: record_pid.map_or(0, disk_write_bytes),
            record_cpu_at_start: record_pid.map_or(0.0, cpu_secs_with_children),
            yolo_stats_start: site.conn.hgetall("load:stats:yolo").await.unwrap_or_default(),
            yolo_pid,
            yolo_cpu_at_start: yolo_pid.map_or(0.0, cpu_secs_with_children),
            yolo_skipped_at_start: yolo_sampler_skipped(&mut site.conn, n).await,
        }
    }

    fn warmup_secs(opts: &Options) -> u64 {
        WARMUP_SECS.min(opts.hold.as_secs() / 3)
    }

    /// One sample: frame counts after the warm-up, resources per component, Redis.
    async fn sample(&mut self, site: &mut Site, stage_procs: &mut [Proc], opts: &Options) {
        let n = self.n;
        if self.warmup_ms.is_none() && self.stage_start.elapsed() >= Duration::from_secs(Self::warmup_secs(opts)) {
            self.warmup_ms = Some(now_ms());
        }
        if self.warmup_ms.is_some() && self.frames_start.len() < n {
            let (counts, offline) = frames_total(&mut site.conn, n).await;
            for (ch, (frames, at)) in counts {
                if frames > 0 && !offline.contains(&ch) {
                    self.frames_start.entry(ch).or_insert((frames, at));
                }
            }
        }
        let mut roots: HashMap<u32, String> = HashMap::new();
        roots.insert(site.redis.pid(), "redis-server".into());
        roots.insert(site.nginx.pid(), "nginx".into());
        roots.insert(site.cameras.pid(), "cameras (simulator)".into());
        for p in site.workers.iter_mut().chain(stage_procs.iter_mut()).chain(site.relay.iter_mut()) {
            if !p.alive() && !self.dead.contains(&p.name) {
                self.dead.push(p.name.clone());
            }
            roots.insert(p.pid(), p.name.clone());
        }
        let sys = &mut site.sys;
        sys.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::All,
            true,
            sysinfo::ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
        let mut rss: BTreeMap<String, f64> = BTreeMap::new();
        let mut pss: BTreeMap<String, f64> = BTreeMap::new();
        // Reading smaps_rollup walks every page table: PSS is read every PSS_EVERY-th sample
        // of a stage and carried between, so measuring costs the machine little (it cost ~4 %
        // of it at every sample).
        let carried_pss = self.samples.last().filter(|_| self.samples.len() % PSS_EVERY != 0);
        let read_pss = carried_pss.is_none();
        let mut processes: BTreeMap<String, usize> = BTreeMap::new();
        let mut fds: BTreeMap<String, usize> = BTreeMap::new();
        // Threads are listed as tasks of their process: count processes only.
        for (pid, p) in sys.processes().iter().filter(|(_, p)| p.thread_kind().is_none()) {
            if let Some(c) = component_of(*pid, sys, &roots) {
                // Merge the two motion workers' figures under one name per kind.
                let c = c.replace(|ch: char| ch.is_ascii_digit(), "").trim_end_matches('-').replace("-)", ")");
                *cpu.entry(c.clone()).or_default() += p.cpu_usage() as f64;
                if read_pss {
                    *pss.entry(c.clone()).or_default() += pss_kib(pid.as_u32()) / 1024.0;
                }
                *processes.entry(c.clone()).or_default() += 1;
                *fds.entry(c.clone()).or_default() +=
                    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
                *rss.entry(c).or_default() += p.memory() as f64 / 1048576.0;
            }
        }
        if let Some(last) = carried_pss {
            pss = last.pss_mib.clone();
        }
        let conn = &mut site.conn;
        let info: String = redis::cmd("INFO").query_async(conn).await.unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let waiting: u64 = {
            let a: u64 = conn.llen("load:queue:yolo:active").await.unwrap_or(0);
            let s: u64 = conn.zcard("load:queue:yolo:scheduled").await.unwrap_or(0);
            a + s
        };
        self.yolo_max_waiting = self.yolo_max_waiting.max(waiting);
        let s = Sample {
            t_secs: site.started.elapsed().as_secs_f64(),
            stage: n,
            cpu,
            rss_mib: rss,
            pss_mib: pss,
            redis_used_mib: field("used_memory") / 1048576.0,
            redis_ops_per_sec: field("instantaneous_ops_per_sec"),
            backup_bytes: dir_bytes(&site.work.join("backups")),
            yolo_waiting: waiting,
            processes,
            machine_used_above_idle_mib: machine_used_mib() - site.idle_used_mib,
            fds,
        };
        if let Some(b) = &self.bar {
            let total: f64 = s.cpu.iter().filter(|(k, _)| !k.starts_with("cameras")).map(|(_, v)| v).sum();
            b.set_position(self.stage_start.elapsed().as_secs().min(opts.hold.as_secs()));
            b.set_message(format!(
                "cluster CPU {:.0} % of {} cores, RSS {:.0} MiB, yolo queue {waiting}, dead {}",
                total / site.cpus,
                site.cpus,
                s.rss_mib.iter().filter(|(k, _)| !k.starts_with("cameras")).map(|(_, v)| v).sum::<f64>(),
                self.dead.len()
            ));
        }
        self.samples.push(s);
    }

    /// The stage's figures from its samples, the frame counters and the result streams.
    async fn report(&mut self, site: &mut Site, opts: &Options) -> StageReport {
        if let Some(b) = &self.bar {
            b.finish();
        }
        let n = self.n;
        let conn = &mut site.conn;
        let (frames_end, offline) = frames_total(conn, n).await;
        // A channel that never counted after the warm-up is charged all of it.
        let warmup_ms = self.warmup_ms.unwrap_or_else(now_ms);
        let (analysed, expected) = frames_between(&self.frames_start, &frames_end, warmup_ms);
        let late: Vec<u32> = self
            .frames_start
            .iter()
            .filter(|(_, (_, at))| *at > warmup_ms + LATE_ONLINE_MS)
            .map(|(ch, _)| *ch)
            .collect();
        // Channels without any status at the end were not analysed at all.
        let expected =
            expected + (n - frames_end.len()) as f64 * MOTION_FPS * (now_ms() - warmup_ms).max(0) as f64 / 1000.0;
        // Each channel's count is read at two status writes whose frame phase is not known: one
        // frame per channel is the measurement's resolution, not a lost frame (4 channels × 30 s
        // make 1 frame per channel = 1 %).
        let missing = (expected - analysed as f64 - n as f64).max(0.0);
        let dropped = if expected > 0.0 { missing / expected * 100.0 } else { 0.0 };

        let motion: Vec<(i64, MotionEvent)> = stream(conn, "load:events:motion", self.stage_start_ms).await;
        let objects: Vec<(i64, ObjectEvent)> = stream(conn, "load:events:objects", self.stage_start_ms).await;
        let backups: Vec<(i64, BackupEvent)> = stream(conn, "load:events:backup", self.stage_start_ms).await;
        let yolo_stats: HashMap<String, i64> = conn.hgetall("load:stats:yolo").await.unwrap_or_default();
        let delta =
            |k: &str| yolo_stats.get(k).copied().unwrap_or(0) - self.yolo_stats_start.get(k).copied().unwrap_or(0);
        let files: Vec<&BackupEvent> =
            backups.iter().map(|(_, b)| b).filter(|b| b.kind == BackupEventKind::File).collect();
        let stage_samples = &self.samples;
        let avg = |get: &dyn Fn(&Sample) -> &BTreeMap<String, f64>| -> BTreeMap<String, f64> {
            let mut m: BTreeMap<String, f64> = BTreeMap::new();
            for s in stage_samples {
                for (k, v) in get(s) {
                    *m.entry(k.clone()).or_default() += v / stage_samples.len() as f64;
                }
            }
            m
        };
        let warmup = Self::warmup_secs(opts) as f64;
        let stage_t0 = stage_samples.first().map_or(0.0, |s| s.t_secs);
        let after_warmup: Vec<Sample> =
            stage_samples.iter().filter(|s| s.t_secs - stage_t0 >= warmup).cloned().collect();
        let cpu = avg(&|s| &s.cpu);
        let rss = avg(&|s| &s.rss_mib);
        let pss = avg(&|s| &s.pss_mib);
        let mut processes: BTreeMap<String, usize> = BTreeMap::new();
        for c in cpu.keys() {
            let total: usize = stage_samples.iter().map(|s| s.processes.get(c).copied().unwrap_or(0)).sum();
            processes.insert(c.clone(), (total as f64 / stage_samples.len().max(1) as f64).round() as usize);
        }
        let machine_used = stage_samples.iter().map(|s| s.machine_used_above_idle_mib).sum::<f64>()
            / stage_samples.len().max(1) as f64;
        let cluster_pss: f64 = pss.iter().filter(|(k, _)| !k.starts_with("cameras")).map(|(_, v)| v).sum();
        let cluster_cpu: f64 =
            cpu.iter().filter(|(k, _)| !k.starts_with("cameras")).map(|(_, v)| v).sum::<f64>() / site.cpus;
        let cluster_rss: f64 = rss.iter().filter(|(k, _)| !k.starts_with("cameras")).map(|(_, v)| v).sum();
        let secs = self.stage_start.elapsed().as_secs_f64();
        let problems = stage_problems(&self.dead, &offline, &late, dropped);
        let record_pid = self.record_pid;
        StageReport {
            channels: n,
            seconds: secs,
            cpu,
            rss_mib: rss,
            cluster_cpu_percent_of_machine: cluster_cpu,
            cluster_rss_mib: cluster_rss,
            pss_mib: pss,
            cluster_pss_mib: cluster_pss,
            processes,
            machine_used_above_idle_mib: machine_used,
            redis_used_mib: stage_samples.iter().map(|s| s.redis_used_mib).fold(0.0, f64::max),
            redis_ops_per_sec: stage_samples.iter().map(|s| s.redis_ops_per_sec).sum::<f64>()
                / stage_samples.len().max(1) as f64,
            record_cpu_with_children_percent: (record_pid.map_or(0.0, cpu_secs_with_children)
                - self.record_cpu_at_start)
                / secs
                * 100.0,
            recordings_at_once: files.iter().map(|b| (b.end_ms - b.start_ms).max(0) as f64 / 1000.0).sum::<f64>()
                / secs,
            record_disk_write_kib_per_sec: record_pid
                .map_or(0, disk_write_bytes)
                .saturating_sub(self.record_written_at_start) as f64
                / 1024.0
                / secs,
            backup_write_kib_per_sec: dir_bytes(&site.work.join("backups")).saturating_sub(self.backups_at_start)
                as f64
                / 1024.0
                / secs,
            frames_expected: expected,
            frames_analysed: analysed,
            frames_dropped_percent: dropped,
            motion_latency_ms: Latency::of(motion.iter().map(|(id, m)| id - m.ts_ms).collect()),
            yolo_latency_ms: Latency::of(objects.iter().map(|(_, o)| o.latency_ms).collect()),
            yolo_processed: delta("processed"),
            yolo_dropped: delta("dropped_stale") + delta("dropped_full"),
            yolo_paired: delta("paired"),
            yolo_sampler_skipped: yolo_sampler_skipped(conn, n).await.saturating_sub(self.yolo_skipped_at_start),
            yolo_cpu_ms_per_processed: {
                let cpu_ms = (self.yolo_pid.map_or(0.0, cpu_secs_with_children) - self.yolo_cpu_at_start) * 1000.0;
                if delta("processed") > 0 {
                    cpu_ms / delta("processed") as f64
                } else {
                    0.0
                }
            },
            yolo_max_waiting: self.yolo_max_waiting,
            record_start_latency_ms: Latency::of(
                files
                    .iter()
                    .filter(|b| b.part == 1)
                    .filter_map(|b| Some(b.writing_since_ms? - b.trigger.as_ref()?.ts_ms))
                    .collect(),
            ),
            pre_roll_ms: Latency::of(files.iter().filter_map(|b| b.pre_roll_ms).collect()),
            backups: files.len(),
            backup_errors: backups.iter().filter(|(_, b)| b.kind == BackupEventKind::Error).count(),
            offline_at_end: offline,
            dead_processes: std::mem::take(&mut self.dead),
            stable: problems.is_empty(),
            problems,
            drift: drift(&after_warmup),
            redis_keys: redis_keys(conn).await,
        }
    }
}

/// Why a stage is unstable (none: stable).
fn stage_problems(dead: &[String], offline: &[u32], late: &[u32], dropped_percent: f64) -> Vec<String> {
    let mut problems = Vec::new();
    if !dead.is_empty() {
        problems.push(format!("process(es) died: {}", dead.join(", ")));
    }
    if !offline.is_empty() {
        problems.push(format!("channel(s) offline at the end: {offline:?}"));
    }
    if !late.is_empty() {
        problems.push(format!(
            "channel(s) analysed only more than {} s after the warm-up: {late:?}",
            LATE_ONLINE_MS / 1000
        ));
    }
    if dropped_percent > 1.0 {
        problems.push(format!("{dropped_percent:.1} % of motion frames not analysed"));
    }
    problems
}

/// The ONNX Runtime library install-deps puts in .ort/, unless ORT_DYLIB_PATH says otherwise.
fn default_ort_path() -> anyhow::Result<()> {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        let local = Path::new(".ort/libonnxruntime.so.1.32.0");
        if local.is_file() {
            std::env::set_var("ORT_DYLIB_PATH", std::fs::canonicalize(local)?);
        }
    }
    Ok(())
}

/// The run's working directory (config, backups, process logs): a temp dir, not the report.
fn tempfile_dir(_report_dir: &Path) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("cctv-loadtest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(std::fs::canonicalize(d)?)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map(|k| k / 1048576.0)
        .unwrap_or(0.0);
    format!("{cores} cores ({cpu}), {mem:.0} GiB RAM")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (cameras per scene: people, shoppers, still; priority channels) of `n` cameras.
    fn load_of(n: usize, scenes: SceneMix) -> ([usize; 3], usize) {
        let mut per_scene = [0; 3];
        for i in 1..=n {
            per_scene[camera_scene(i, scenes)] += 1;
        }
        let priority: Vec<usize> = (1..=n).filter(|&i| camera_priority(i, scenes)).collect();
        // A priority channel in a load with activity is always one showing people.
        if scenes != SceneMix::Still {
            assert!(priority.iter().all(|&i| camera_scene(i, scenes) == 0), "{scenes:?}");
        }
        (per_scene, priority.len())
    }

    #[test]
    fn a_gop_in_frames_tags_only_caches_of_a_non_default_interval_and_bad_ones_are_refused() {
        assert_eq!(gop_frames(25, DEFAULT_GOP_SECS), (50, String::new()));
        assert_eq!(gop_frames(10, 0.5), (5, "-g5".to_string()));
        assert_eq!(gop_frames(10, 0.01).0, 1);
        assert_eq!(parse_gop_secs("0.5"), Ok(0.5));
        assert!(parse_gop_secs("0").unwrap_err().contains("out of range"));
        assert!(parse_gop_secs("x").is_err());
    }

    #[test]
    fn the_active_load_is_the_active_part_of_a_mixed_load_four_times_as_large() {
        assert_eq!(load_of(32, SceneMix::Mixed), ([4, 4, 24], 4));
        assert_eq!(load_of(8, SceneMix::Active), ([4, 4, 0], 4));
        assert_eq!(load_of(64, SceneMix::Mixed), ([8, 8, 48], 8));
        assert_eq!(load_of(16, SceneMix::Active), ([8, 8, 0], 8));
        assert_eq!(load_of(32, SceneMix::Still), ([0, 0, 32], 4));
    }

    #[test]
    fn motion_settings_become_a_motion_section_and_bad_ones_are_named() {
        assert_eq!(motion_section(&[]).unwrap(), "");
        let t = motion_section(&["gate=true".into(), "gate_rise = 2".into()]).unwrap();
        assert_eq!(t, "[motion]\ngate = true\ngate_rise = 2\n");
        assert!(cctv_common::config::Config::parse(&t).unwrap().motion.gate);
        assert!(motion_section(&["gate".into()]).unwrap_err().to_string().contains("KEY=VALUE"));
        assert!(motion_section(&["[x]\ny=1".into()]).is_err());
        let y = setting_lines("yolo", &["intra_threads=1".into()]).unwrap();
        assert_eq!(y, "intra_threads = 1\n");
        let e = setting_lines("yolo", &["Threads=1".into()]).unwrap_err().to_string();
        assert!(e.contains("--yolo") && e.contains("[yolo]"), "{e}");
    }

    #[test]
    fn a_leak_is_still_growing_in_the_last_quarter_a_warm_up_levels_off() {
        let sample = |t: f64, pss: f64| Sample {
            t_secs: t,
            pss_mib: BTreeMap::from([("w".to_string(), pss)]),
            rss_mib: BTreeMap::from([("w".to_string(), pss)]),
            ..Sample::default()
        };
        // 20 MiB growing 12 MiB an hour, steadily.
        let leak: Vec<Sample> = (0..360).map(|i| sample(i as f64 * 10.0, 20.0 + i as f64 * 10.0 / 300.0)).collect();
        let d = &drift(&leak)["w"];
        assert!(d.quarter_slopes_mib_per_hour.iter().all(|s| (s - 12.0).abs() < 0.1), "{d:?}");
        assert!(d.growing());
        // The same 12 MiB gained in the first quarter hour, then flat.
        let warm: Vec<Sample> =
            (0..360).map(|i| sample(i as f64 * 10.0, 20.0 + (i as f64 * 10.0 / 75.0).min(12.0))).collect();
        let d = &drift(&warm)["w"];
        assert!(d.growth_percent > 10.0 && !d.growing(), "{d:?}");
    }

    #[test]
    fn keys_are_grouped_with_their_ids_starred() {
        assert_eq!(key_family("load:status:channel:12"), "load:status:channel:*");
        assert_eq!(key_family("load:record:ch1-a43dcc3b"), "load:record:*");
        assert_eq!(key_family("load:events:motion"), "load:events:motion");
    }

    #[test]
    fn proc_fields_are_read_by_key() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(proc_field::<f64>(meminfo, "MemAvailable:"), Some(20_000_000.0));
        let io = "write_bytes: 20987904\ncancelled_write_bytes: 20971520\n";
        assert_eq!(proc_field::<u64>(io, "write_bytes:"), Some(20_987_904));
        assert_eq!(proc_field::<u64>(io, "cancelled_write_bytes:"), Some(20_971_520));
        assert_eq!(proc_field::<u64>(io, "read_bytes:"), None);
    }

    #[test]
    fn frames_are_expected_over_the_time_between_the_counts_per_channel() {
        let start = BTreeMap::from([(1, (100, 10_000)), (2, (500, 11_000))]);
        // ch1: 10 s later, 50 frames (all of them); ch2: 9 s later, counter restarted at 30
        // (moved to another worker); ch3: no count at the start (from the warm-up, 12 s before).
        let end = BTreeMap::from([(1, (150, 20_000)), (2, (30, 20_000)), (3, (55, 24_000))]);
        let (analysed, expected) = frames_between(&start, &end, 12_000);
        assert_eq!(analysed, 50 + 30 + 55);
        assert!((expected - (50.0 + 45.0 + 60.0)).abs() < 1e-9, "{expected}");
    }
}

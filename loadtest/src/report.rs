//! What a run measured: samples, stage figures, drift, and the report files (`report.md`,
//! `report.json`, plots).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use redis::AsyncCommands;
use serde::Serialize;

use crate::{plot, H265Kind, H265Mix, SceneMix, DEFAULT_GOP_SECS, WARMUP_SECS};

/// One resource sample.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Sample {
    pub t_secs: f64,
    pub stage: usize,
    /// Per component: CPU (% of one core) and RSS (MiB).
    pub cpu: BTreeMap<String, f64>,
    pub rss_mib: BTreeMap<String, f64>,
    /// Proportional set size (shared pages split between the processes sharing them), MiB.
    pub pss_mib: BTreeMap<String, f64>,
    pub redis_used_mib: f64,
    pub redis_ops_per_sec: f64,
    pub backup_bytes: u64,
    pub yolo_waiting: u64,
    /// Processes per component.
    #[serde(default)]
    pub processes: BTreeMap<String, usize>,
    /// The machine's memory in use (MemTotal − MemAvailable) above its level before the run
    /// started, MiB: an independent check of the PSS total (cameras and the load test included).
    #[serde(default)]
    pub machine_used_above_idle_mib: f64,
    /// Open file descriptors per component (`/proc/<pid>/fd`).
    #[serde(default)]
    pub fds: BTreeMap<String, usize>,
}

/// How one component's footprint moved over a stage: the average of its first samples after
/// warm-up against that of its last ones (a soak run's leak check).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Drift {
    pub rss_start_mib: f64,
    pub rss_end_mib: f64,
    pub pss_start_mib: f64,
    pub pss_end_mib: f64,
    pub fds_start: f64,
    pub fds_end: f64,
    /// The largest of the RSS, PSS and fd growths, %.
    pub growth_percent: f64,
    /// Least-squares slope of PSS (Redis: used_memory) in each quarter of the stage, MiB per
    /// hour: a leak keeps growing at the same pace, a warm-up (allocator arenas, buffers)
    /// levels off.
    #[serde(default)]
    pub quarter_slopes_mib_per_hour: Vec<f64>,
}

impl Drift {
    /// Still growing in the last quarter by more than 5 % of its final size per hour.
    pub fn growing(&self) -> bool {
        let size = if self.pss_end_mib > 0.0 { self.pss_end_mib } else { self.rss_end_mib };
        self.quarter_slopes_mib_per_hour.last().is_some_and(|s| *s > 0.05 * size)
    }
}

/// Slopes of `value` over each quarter of `samples`, MiB per hour.
pub(crate) fn quarter_slopes(samples: &[Sample], value: &dyn Fn(&Sample) -> f64) -> Vec<f64> {
    let n = samples.len();
    (0..4)
        .map(|q| {
            slope_per_hour(
                &samples[q * n / 4..(q + 1) * n / 4].iter().map(|s| (s.t_secs, value(s))).collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// Least-squares slope of `(t_secs, value)` points, per hour.
pub(crate) fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mt, mv) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let var: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    points.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum::<f64>() / var * 3600.0
}

/// Samples averaged at each end of a stage for [`Drift`].
pub(crate) const DRIFT_SAMPLES: usize = 10;

pub(crate) fn drift(samples: &[Sample]) -> BTreeMap<String, Drift> {
    let n = DRIFT_SAMPLES.min(samples.len() / 2);
    if n == 0 {
        return BTreeMap::new();
    }
    let (first, last) = (&samples[..n], &samples[samples.len() - n..]);
    let mean = |set: &[Sample], f: &dyn Fn(&Sample) -> f64| set.iter().map(f).sum::<f64>() / set.len() as f64;
    let growth = |a: f64, b: f64| if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
    let mut out = BTreeMap::new();
    for c in samples[0].rss_mib.keys() {
        let rss = |s: &Sample| s.rss_mib.get(c).copied().unwrap_or(0.0);
        let pss = |s: &Sample| s.pss_mib.get(c).copied().unwrap_or(0.0);
        let fds = |s: &Sample| s.fds.get(c).copied().unwrap_or(0) as f64;
        let mut d = Drift {
            rss_start_mib: mean(first, &rss),
            rss_end_mib: mean(last, &rss),
            pss_start_mib: mean(first, &pss),
            pss_end_mib: mean(last, &pss),
            fds_start: mean(first, &fds),
            fds_end: mean(last, &fds),
            growth_percent: 0.0,
            quarter_slopes_mib_per_hour: Vec::new(),
        };
        d.growth_percent = growth(d.rss_start_mib, d.rss_end_mib)
            .max(growth(d.pss_start_mib, d.pss_end_mib))
            .max(growth(d.fds_start, d.fds_end));
        d.quarter_slopes_mib_per_hour = quarter_slopes(samples, &pss);
        out.insert(c.clone(), d);
    }
    let redis = |s: &Sample| s.redis_used_mib;
    let (a, b) = (mean(first, &redis), mean(last, &redis));
    out.insert(
        "redis used_memory".into(),
        Drift {
            rss_start_mib: a,
            rss_end_mib: b,
            growth_percent: growth(a, b),
            quarter_slopes_mib_per_hour: quarter_slopes(samples, &redis),
            ..Drift::default()
        },
    );
    out
}

/// Percentiles of a latency list, ms.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Latency {
    pub count: usize,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub max: Option<i64>,
}

impl Latency {
    pub(crate) fn of(mut v: Vec<i64>) -> Self {
        v.sort_unstable();
        let pick = |q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied();
        Self { count: v.len(), p50: pick(0.5), p95: pick(0.95), max: v.last().copied() }
    }
}

/// One stage's figures.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StageReport {
    pub channels: usize,
    pub seconds: f64,
    /// Averages over the stage's samples: CPU % of one core and RSS MiB per component.
    pub cpu: BTreeMap<String, f64>,
    pub rss_mib: BTreeMap<String, f64>,
    /// Cluster total (cameras excluded: they stand for the real cameras).
    pub cluster_cpu_percent_of_machine: f64,
    pub cluster_rss_mib: f64,
    pub pss_mib: BTreeMap<String, f64>,
    /// Cluster memory with shared pages counted once (PSS), the fair total.
    pub cluster_pss_mib: f64,
    /// Processes per component (stage average, rounded).
    #[serde(default)]
    pub processes: BTreeMap<String, usize>,
    /// Average of the samples' `machine_used_above_idle_mib`.
    #[serde(default)]
    pub machine_used_above_idle_mib: f64,
    pub redis_used_mib: f64,
    pub redis_ops_per_sec: f64,
    pub backup_write_kib_per_sec: f64,
    /// Bytes worker-record and its ffmpeg/ffprobe children sent to storage (`/proc/<pid>/io`
    /// write_bytes − cancelled_write_bytes; spool and final file), KiB/s.
    #[serde(default)]
    pub record_disk_write_kib_per_sec: f64,
    /// worker-record's CPU with its reaped ffmpeg/ffprobe children (`/proc/<pid>/stat` utime +
    /// stime + cutime + cstime over the stage), % of one core.
    #[serde(default)]
    pub record_cpu_with_children_percent: f64,
    /// Recordings going on at once on average: the backup files' durations over the stage time.
    #[serde(default)]
    pub recordings_at_once: f64,
    pub frames_expected: f64,
    pub frames_analysed: u64,
    pub frames_dropped_percent: f64,
    pub motion_latency_ms: Latency,
    pub yolo_latency_ms: Latency,
    pub yolo_processed: i64,
    pub yolo_dropped: i64,
    /// Processed frames that shared their model input with another (`yolo.pair_frames`).
    #[serde(default)]
    pub yolo_paired: i64,
    /// Frames sampling by need did not send that `yolo.fps` would have (`yolo.confirmed_fps`).
    #[serde(default)]
    pub yolo_sampler_skipped: u64,
    /// worker-yolo's CPU time over the stage per processed frame, ms.
    #[serde(default)]
    pub yolo_cpu_ms_per_processed: f64,
    pub yolo_max_waiting: u64,
    pub record_start_latency_ms: Latency,
    pub pre_roll_ms: Latency,
    pub backups: usize,
    pub backup_errors: usize,
    pub offline_at_end: Vec<u32>,
    pub dead_processes: Vec<String>,
    pub stable: bool,
    pub problems: Vec<String>,
    /// Footprint at the start and end of the stage, per component (after warm-up).
    #[serde(default)]
    pub drift: BTreeMap<String, Drift>,
    /// Redis memory at the end of the stage by key family (ids replaced by `*`).
    #[serde(default)]
    pub redis_keys: BTreeMap<String, KeyFamily>,
}

/// Keys of one family in Redis: how many, their memory (`MEMORY USAGE`), and for streams their
/// entries, so a stream's size at its length cap can be told from its size now.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct KeyFamily {
    pub keys: u64,
    pub bytes: u64,
    pub stream_entries: u64,
}

/// A key's family: every `:`-separated part holding a digit becomes `*`
/// (`load:status:channel:12` → `load:status:channel:*`).
pub(crate) fn key_family(key: &str) -> String {
    key.split(':').map(|p| if p.bytes().any(|b| b.is_ascii_digit()) { "*" } else { p }).collect::<Vec<_>>().join(":")
}

/// Memory of every key in Redis, by family.
pub(crate) async fn redis_keys(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, KeyFamily> {
    let mut out: BTreeMap<String, KeyFamily> = BTreeMap::new();
    let mut cursor = 0u64;
    loop {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query_async(conn).await
        else {
            break;
        };
        for k in keys {
            let bytes: Option<u64> =
                redis::cmd("MEMORY").arg("USAGE").arg(&k).arg("SAMPLES").arg(0).query_async(conn).await.unwrap_or(None);
            let kind: String = redis::cmd("TYPE").arg(&k).query_async(conn).await.unwrap_or_default();
            let entries: u64 = if kind == "stream" { conn.xlen(&k).await.unwrap_or(0) } else { 0 };
            let f = out.entry(key_family(&k)).or_default();
            f.keys += 1;
            f.bytes += bytes.unwrap_or(0);
            f.stream_entries += entries;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    out
}

pub(crate) fn default_gop_secs() -> f64 {
    DEFAULT_GOP_SECS
}

/// The whole run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Report {
    pub machine: String,
    pub started: String,
    /// The `[motion]` settings that differ from the defaults, as given (`[]`: defaults).
    #[serde(default)]
    pub motion_settings: Vec<String>,
    /// The `[yolo]` settings that differ from the defaults, as given (`[]`: defaults).
    #[serde(default)]
    pub yolo_settings: Vec<String>,
    /// What the cameras showed (older reports: mixed).
    #[serde(default)]
    pub scenes: SceneMix,
    /// The cameras' keyframe interval, seconds (older reports: 2).
    #[serde(default = "default_gop_secs")]
    pub gop_secs: f64,
    /// Cameras that sent H.265 (older reports: none).
    #[serde(default)]
    pub h265: H265Mix,
    pub stages: Vec<StageReport>,
    pub samples: Vec<Sample>,
}

/// Re-renders `report.md` and the plots from a `report.json` (after a change to the rendering).
pub fn render(dir: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(dir.join("report.json"))
        .with_context(|| format!("reading {}/report.json", dir.display()))?;
    let mut report: Report = serde_json::from_str(&text).context("report.json")?;
    // The drift analysis is recomputed from the samples, so older reports get its newer columns.
    for stage in &mut report.stages {
        let of_stage: Vec<Sample> = report.samples.iter().filter(|s| s.stage == stage.channels).cloned().collect();
        let warmup = WARMUP_SECS.min(stage.seconds as u64 / 3) as f64;
        let t0 = of_stage.first().map_or(0.0, |s| s.t_secs);
        let after: Vec<Sample> = of_stage.into_iter().filter(|s| s.t_secs - t0 >= warmup).collect();
        if !after.is_empty() {
            stage.drift = drift(&after);
        }
    }
    write_report(&report, dir)
}

pub(crate) fn fmt_lat(l: &Latency) -> String {
    match (l.p50, l.p95) {
        (Some(a), Some(b)) => format!("{a} / {b} ({})", l.count),
        _ => "–".into(),
    }
}

/// `report.md`, `report.json`, and the plots.
pub fn write_report(r: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    let mut md = format!("# Load test report\n\nMachine: {}.\n\n", r.machine);
    if !r.motion_settings.is_empty() {
        md += &format!("Motion settings: `{}`.\n\n", r.motion_settings.join("`, `"));
    }
    match r.scenes {
        SceneMix::Mixed => {}
        SceneMix::Still => md += "Scenes: every camera **still** (the still part of a mixed load).\n\n",
        SceneMix::Active => {
            md += "Scenes: every camera **active**, every other one a priority channel (the active part of a \
                   mixed load four times as large).\n\n"
        }
    }
    match r.h265.kind {
        H265Kind::None => {}
        H265Kind::Main => {
            md += &format!("H.265: every {}th camera sends an **H.265 main stream** (H.264 sub-stream).\n\n", r.h265.every)
        }
        H265Kind::Only => {
            md += &format!(
                "H.265: every {}th camera sends **H.265 only** (no sub-stream: the relay transcodes the detect stream).\n\n",
                r.h265.every
            )
        }
    }
    if r.gop_secs != DEFAULT_GOP_SECS {
        md += &format!("Cameras' keyframe interval (GOP): {} s.\n\n", r.gop_secs);
    }
    if !r.yolo_settings.is_empty() {
        md += &format!("YOLO settings: `{}`.\n\n", r.yolo_settings.join("`, `"));
    }
    md += "| channels | stable | cluster CPU (% of machine) | cluster RSS / PSS (MiB) | machine memory above idle (MiB) | frames watched / expected | dropped | motion latency p50 / p95 ms | YOLO latency p50 / p95 ms | YOLO processed / dropped / max queue | backups (errors) | record start p50 / p95 ms | pre-roll p50 / p95 ms | backup dir growth / recorder disk writes KiB/s | Redis MiB, ops/s |\n";
    md += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for s in &r.stages {
        md += &format!(
            "| {} | {} | {:.1} | {:.0} / {:.0} | {:.0} | {} / {:.0} | {:.2} % | {} | {} | {} / {} / {} | {} ({}) | {} | {} | {:.0} / {:.0} | {:.1}, {:.0} |\n",
            s.channels,
            if s.stable { "yes".to_string() } else { format!("**no**: {}", s.problems.join("; ")) },
            s.cluster_cpu_percent_of_machine,
            s.cluster_rss_mib,
            s.cluster_pss_mib,
            s.machine_used_above_idle_mib,
            s.frames_analysed,
            s.frames_expected,
            s.frames_dropped_percent,
            fmt_lat(&s.motion_latency_ms),
            fmt_lat(&s.yolo_latency_ms),
            s.yolo_processed,
            s.yolo_dropped,
            s.yolo_max_waiting,
            s.backups,
            s.backup_errors,
            fmt_lat(&s.record_start_latency_ms),
            fmt_lat(&s.pre_roll_ms),
            s.backup_write_kib_per_sec,
            s.record_disk_write_kib_per_sec,
            s.redis_used_mib,
            s.redis_ops_per_sec
        );
    }
    md += "\n## YOLO\n\n| channels | processed / dropped | worker-yolo CPU per processed frame (ms) | frames paired in one input | frames the sampler skipped |\n| --- | --- | --- | --- | --- |\n";
    for s in &r.stages {
        md += &format!(
            "| {} | {} / {} | {:.1} | {} ({:.0} %) | {} |\n",
            s.channels,
            s.yolo_processed,
            s.yolo_dropped,
            s.yolo_cpu_ms_per_processed,
            s.yolo_paired,
            if s.yolo_processed > 0 { 100.0 * s.yolo_paired as f64 / s.yolo_processed as f64 } else { 0.0 },
            s.yolo_sampler_skipped
        );
    }
    md += "\n## Recording\n\n| channels | recordings at once (avg) | worker-record CPU with its ffmpeg/ffprobe children (% of one core) | per recording (% of one core) | backup dir growth KiB/s | recorder disk writes KiB/s |\n| --- | --- | --- | --- | --- | --- |\n";
    for s in &r.stages {
        md += &format!(
            "| {} | {:.1} | {:.2} | {} | {:.0} | {:.0} |\n",
            s.channels,
            s.recordings_at_once,
            s.record_cpu_with_children_percent,
            if s.recordings_at_once > 0.0 {
                format!("{:.2}", s.record_cpu_with_children_percent / s.recordings_at_once)
            } else {
                "–".into()
            },
            s.backup_write_kib_per_sec,
            s.record_disk_write_kib_per_sec
        );
    }
    md += "\n## Processes, CPU (% of one core), RSS and PSS (MiB) per component, stage averages\n\n| component |";
    for s in &r.stages {
        md += &format!(" {0} ch n | {0} ch CPU | {0} ch RSS | {0} ch PSS |", s.channels);
    }
    md += "\n| --- |";
    md += &" --- | --- | --- | --- |".repeat(r.stages.len());
    md += "\n";
    let mut comps: Vec<&String> = r.stages.iter().flat_map(|s| s.cpu.keys()).collect();
    comps.sort();
    comps.dedup();
    for c in comps {
        md += &format!("| {c} |");
        for s in &r.stages {
            md += &format!(
                " {} | {:.1} | {:.0} | {:.0} |",
                s.processes.get(c).map_or("–".to_string(), |n| n.to_string()),
                s.cpu.get(c).copied().unwrap_or(0.0),
                s.rss_mib.get(c).copied().unwrap_or(0.0),
                s.pss_mib.get(c).copied().unwrap_or(0.0)
            );
        }
        md += "\n";
    }
    md += "\nCameras (the RTSP simulator) stand for the real cameras and are not counted in the cluster totals. \
RSS counts every shared page (ffmpeg's libraries, OpenCV, ONNX Runtime) once per process that maps it; PSS splits \
shared pages between the processes sharing them, so the PSS total is the cluster's memory. Machine memory above idle: \
MemTotal − MemAvailable minus its value before the run, cameras and the load test included. \
Recorder disk writes: what worker-record and its ffmpeg/ffprobe children sent to storage (spool and final file, less \
pages deleted before writeback), from `/proc/<pid>/io`. \
Motion latency: decoded frame → event on the Redis stream. YOLO latency: frame → object event. Record start: trigger → first \
fragment written. Plots: `cpu.png`, `ram.png` (RSS), `pss.png`, `latency.png`.\n";
    if let Some(s) = r.stages.iter().rev().find(|s| !s.redis_keys.is_empty()) {
        md += &format!(
            "\n## Redis memory by key family, end of the {}-channel stage\n\n`MEMORY USAGE` of every key; ids \
             replaced by `*`. Event streams are capped by length, so their size at the cap is the entries' average \
             size times the cap.\n\n| keys | count | MiB | stream entries |\n| --- | --- | --- | --- |\n",
            s.channels
        );
        let mut families: Vec<(&String, &KeyFamily)> = s.redis_keys.iter().collect();
        families.sort_by_key(|(_, f)| std::cmp::Reverse(f.bytes));
        for (name, f) in families {
            md += &format!(
                "| `{name}` | {} | {:.2} | {} |\n",
                f.keys,
                f.bytes as f64 / 1048576.0,
                if f.stream_entries > 0 { f.stream_entries.to_string() } else { "–".into() }
            );
        }
    }
    // The leak check, for stages long enough to mean something (a soak run).
    for s in r.stages.iter().filter(|s| s.seconds >= 600.0 && !s.drift.is_empty()) {
        md += &format!(
            "\n## Drift over the {}-channel stage ({:.0} s)\n\nAverage of the first and last {DRIFT_SAMPLES} samples \
             after warm-up; growth is the largest of RSS, PSS and open fds (Redis: used_memory). Slopes: \
             least-squares slope of PSS (Redis: used_memory) in each quarter of the stage; a leak keeps its \
             pace, a warm-up levels off. Still growing: the last quarter's slope is more than 5 % of the \
             final size per hour.\n\n\
             | component | RSS MiB start → end | PSS MiB start → end | open fds start → end | growth | slope per quarter MiB/h | verdict |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
            s.channels, s.seconds
        );
        for (c, d) in &s.drift {
            md += &format!(
                "| {c} | {:.0} → {:.0} | {:.0} → {:.0} | {:.0} → {:.0} | {:+.1} % | {} | {} |\n",
                d.rss_start_mib,
                d.rss_end_mib,
                d.pss_start_mib,
                d.pss_end_mib,
                d.fds_start,
                d.fds_end,
                d.growth_percent,
                d.quarter_slopes_mib_per_hour.iter().map(|v| format!("{v:+.1}")).collect::<Vec<_>>().join(", "),
                if d.growing() {
                    "**still growing**"
                } else if d.growth_percent > 10.0 {
                    "levelled off"
                } else {
                    "flat"
                }
            );
        }
    }
    std::fs::write(dir.join("report.md"), md)?;
    plot::plots(r, dir)?;
    Ok(())
}

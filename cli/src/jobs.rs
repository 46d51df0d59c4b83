//! `cctv jobs ...`, `cctv backups list`, `cctv storage`: straight to Redis, like the rest of
//! the CLI, so they work from any machine that reaches Redis, API or not.

use std::collections::HashSet;

use anyhow::Context;
use cctv_common::config::Config;
use cctv_common::events::{decode_entry, now_ms, BackupEvent, BackupEventKind, StorageReport};
use cctv_common::jobs::{MotionJob, RecordJob, YoloJob};
use cctv_common::keys::Keys;
use cctv_common::queue::{JobInfo, Queue};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use clap::Subcommand;

use crate::fmt::format_ms;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Without a queue: counts per queue. With one: its jobs in a state.
    List {
        queue: Option<String>,
        #[arg(long, default_value = "waiting", value_parser = ["waiting", "running", "done", "dead"])]
        state: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One job: state, attempts, last error, payload.
    Show { queue: String, id: String },
    /// Queue a job by hand: `record` (back up a channel now for N seconds, with pre-roll) or
    /// `yolo` (run object detection on an image as if it came from the channel).
    Enqueue {
        #[arg(value_parser = ["record", "yolo"])]
        kind: String,
        #[arg(long)]
        channel: u32,
        /// record: seconds after now to keep recording.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// yolo: the image (JPEG) to send.
        #[arg(long)]
        image: Option<std::path::PathBuf>,
    },
    /// Queue a copy of a finished (dead) job.
    Retry { queue: String, id: String },
    /// Delete finished jobs' payloads from a queue.
    Purge { queue: String },
}

macro_rules! on_queue {
    ($conn:expr, $keys:expr, $config:expr, $queue:expr, |$q:ident| $body:expr) => {
        match $queue {
            "motion" => {
                let mut $q = Queue::<MotionJob>::new($conn.clone(), $keys, &$config.queue);
                $body
            }
            "yolo" => {
                let mut $q = Queue::<YoloJob>::new($conn.clone(), $keys, &$config.queue);
                $body
            }
            "record" => {
                let mut $q = Queue::<RecordJob>::new($conn.clone(), $keys, &$config.queue);
                $body
            }
            other => anyhow::bail!("no queue {other:?}: motion, yolo or record"),
        }
    };
}

pub async fn run(config: &Config, mut conn: ConnectionManager, keys: &Keys, cmd: JobsCommand) -> anyhow::Result<()> {
    match cmd {
        JobsCommand::List { queue: None, json, .. } => {
            let overview = cctv_common::queue::overview(&conn, keys, &config.queue).await?;
            if json {
                let by_name: std::collections::BTreeMap<_, _> = overview.by_name().into_iter().collect();
                println!("{}", serde_json::to_string_pretty(&by_name)?);
            } else {
                println!("QUEUE    WAITING  RUNNING     DONE   FAILED  DROPPED");
                for (name, v) in overview.by_name() {
                    println!(
                        "{name:<8} {:>7} {:>8} {:>8} {:>8} {:>8}",
                        v.waiting,
                        v.running,
                        v.done,
                        v.failed,
                        v.dropped.map(|d| d.to_string()).unwrap_or_else(|| "-".into())
                    );
                }
            }
            Ok(())
        }
        JobsCommand::List { queue: Some(queue), state, limit, json } => {
            let jobs: Vec<JobInfo> = on_queue!(conn, keys, config, queue.as_str(), |q| {
                let mut out = Vec::new();
                for id in q.ids(&state, limit).await? {
                    out.extend(q.show(&id).await?);
                }
                out
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                println!("ID                          STATE    STATUS   ATTEMPTS  SUMMARY");
                for j in &jobs {
                    println!(
                        "{:<27} {:<8} {:<8} {:>8}  {}",
                        j.id,
                        j.state,
                        j.status.as_deref().unwrap_or("-"),
                        j.attempts.unwrap_or(0),
                        summary(&j.payload)
                    );
                }
            }
            Ok(())
        }
        JobsCommand::Show { queue, id } => {
            let job = on_queue!(conn, keys, config, queue.as_str(), |q| q.show(&id).await?);
            let job = job.with_context(|| format!("no job {id} on queue {queue}"))?;
            println!("{}", serde_json::to_string_pretty(&job)?);
            Ok(())
        }
        JobsCommand::Retry { queue, id } => {
            let new = on_queue!(conn, keys, config, queue.as_str(), |q| q.retry(&id).await?);
            let new = new.with_context(|| format!("no job {id} on queue {queue}"))?;
            println!("queued {new} (copy of {id}) on {queue}");
            Ok(())
        }
        JobsCommand::Purge { queue } => {
            let zero = std::time::Duration::ZERO;
            let n = on_queue!(conn, keys, config, queue.as_str(), |q| q.purge_finished(zero, zero).await?);
            println!("purged {n} finished job(s) from {queue}");
            Ok(())
        }
        JobsCommand::Enqueue { kind, channel, seconds, image } => {
            config.channel(channel).with_context(|| format!("channel {channel} is not in the config"))?;
            let now = now_ms();
            let event = format!("manual-{}", uuid::Uuid::new_v4().simple());
            match kind.as_str() {
                "record" => {
                    let (rid, id) =
                        cctv_common::recording::start_manual(config, &mut conn, keys, channel, seconds).await?;
                    println!("queued record job {id} for channel {channel}: recording {rid}");
                }
                _ => {
                    let path = image.context("yolo needs --image <file.jpg>")?;
                    let image = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    let job = YoloJob { channel, frame_ts_ms: now, motion_event: event, motion_boxes: vec![], image };
                    let id = Queue::<YoloJob>::new(conn.clone(), keys, &config.queue).push(&job).await?;
                    println!("queued yolo job {id} for channel {channel} ({})", path.display());
                }
            }
            Ok(())
        }
    }
}

fn summary(payload: &serde_json::Value) -> String {
    let get = |k: &str| payload.get(k).map(|v| v.to_string().trim_matches('"').to_string());
    match (get("batch"), get("recording"), get("channel")) {
        (Some(b), _, _) => format!("batch {b}"),
        (_, Some(r), _) => format!("recording {r}"),
        (_, _, Some(c)) => format!("channel {c}"),
        _ => String::new(),
    }
}

/// `backups protect|unprotect <file>`: the file name as listed (a path is reduced to its name).
pub async fn protect(mut conn: ConnectionManager, keys: &Keys, file: &str, protect: bool) -> anyhow::Result<()> {
    let name = std::path::Path::new(file).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    anyhow::ensure!(cctv_common::naming::is_backup_name(&name), "{file:?} is not a backup file name");
    let changed = cctv_common::naming::set_protected(&mut conn, keys, &name, protect).await?;
    let state = if protect { "protected" } else { "not protected" };
    println!("{name}: {state}{}", if changed { "" } else { " (already)" });
    Ok(())
}

/// The backup stream's entries, newest first (written, failed and deleted files).
pub(crate) async fn backup_events(conn: &mut ConnectionManager, keys: &Keys) -> redis::RedisResult<Vec<BackupEvent>> {
    let r: redis::streams::StreamRangeReply = conn.xrevrange_count(keys.backup_events(), "+", "-", 100_000).await?;
    Ok(r.ids.iter().filter_map(|e| decode_entry(&e.map)).collect())
}

pub async fn backups(
    config: &Config,
    mut conn: ConnectionManager,
    keys: &Keys,
    channel: Option<u32>,
    since: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let since = since
        .map(|s| cctv_common::timefmt::parse_time(s, now_ms()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    if let Some(c) = channel {
        anyhow::ensure!(config.channel(c).is_some(), "channel {c} is not in the config");
    }
    let all = backup_events(&mut conn, keys).await?;
    let deleted: HashSet<&str> =
        all.iter().filter(|e| e.kind == BackupEventKind::Deleted).filter_map(|e| e.file.as_deref()).collect();
    let list: Vec<&BackupEvent> = all
        .iter()
        .filter(|e| e.kind == BackupEventKind::File && e.file.as_deref().is_some_and(|f| !deleted.contains(f)))
        .filter(|e| channel.is_none_or(|c| e.channel == c) && since.is_none_or(|t| e.end_ms >= t))
        .take(limit)
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let protected = cctv_common::naming::protected_backups(&mut conn, keys).await?;
    let is_protected = |b: &BackupEvent| b.file_name().is_some_and(|n| protected.contains(&n));
    let tz = crate::fmt::site_zone(config);
    println!("CH    START                          LENGTH      SIZE  TRIGGER   FILE");
    for b in list {
        let trigger = b.trigger.as_ref().map(|t| format!("{:?}", t.kind).to_lowercase()).unwrap_or_default();
        println!(
            "{:<5} {} {:>7.1} s {:>6.1} MB  {:<8}  {}{}",
            b.channel,
            format_ms(b.start_ms, &tz),
            b.duration_secs,
            b.size_bytes as f64 / 1e6,
            trigger,
            b.file.as_deref().unwrap_or(""),
            if is_protected(b) { "  (protected)" } else { "" }
        );
    }
    Ok(())
}

pub async fn storage(mut conn: ConnectionManager, keys: &Keys, json: bool) -> anyhow::Result<()> {
    let reports: Vec<StorageReport> = cctv_common::keys::scan_json(&mut conn, &keys.storage_pattern()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    if reports.is_empty() {
        println!("no storage report (is a record worker running?)");
    }
    println!("NODE                                      USED    TOTAL       FREE  BACKUPS   WATERMARKS  HOURS LEFT");
    for r in reports {
        println!(
            "{:<41} {:>5.1} % {:>6.1} GB {:>7.1} GB {:>6.1} GB  {:>3}/{:<3} %   {}",
            r.node,
            r.used_percent,
            r.total_bytes as f64 / 1e9,
            r.free_bytes as f64 / 1e9,
            r.backup_bytes as f64 / 1e9,
            r.low_watermark,
            r.high_watermark,
            r.hours_left.map(|h| format!("{h:.1}")).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

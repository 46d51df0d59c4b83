//! The `cctv` command-line tool: inspect the cluster through Redis directly (no API needed).
//! Domain operations it triggers (a manual recording, the queue overview) live in `common`;
//! this crate parses, reads and prints.

pub mod compare;
mod fmt;
pub mod jobs;

use cctv_common::status::BackupDirStatus;
use fmt::{format_ms, site_zone};
use jobs::JobsCommand;

use std::io::Write;

use cctv_common::config::Config;
use cctv_common::events::{decode_entry, BackupEvent, ChannelStatus, MotionEvent, ObjectEvent, WorkerHeartbeat};
use cctv_common::jobs::{MotionJob, YoloJob};
use cctv_common::keys::Keys;
use cctv_common::queue::{self, Queue};
use clap::Subcommand;
use jiff::tz::TimeZone;
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config file and list every problem.
    CheckConfig,
    /// Inspect and steer the job queues (motion, yolo, record).
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Backup files.
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// The backup volumes: size, use, watermarks, hours left.
    Storage {
        #[arg(long)]
        json: bool,
    },
    /// Event streams.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Line motion events up with YOLO's verdicts: confirmed, motion without wanted objects
    /// (likely false motion), and objects by label, per channel.
    Compare {
        /// Channels to compare (comma-separated; default every channel).
        #[arg(long, value_delimiter = ',')]
        channels: Vec<u32>,
        /// Start of the range: a time ago (`90s`, `15m`, `2h`, `1d`) or ms since the epoch.
        #[arg(long, default_value = "1h")]
        since: String,
        /// End of the range, same forms (default now).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Export a time range of a channel as one MP4: stream copy of the backup files on this
    /// host that cover it, cut at keyframes. Time no file covers is listed, never filled.
    Export {
        #[arg(long)]
        channel: u32,
        /// Start: a site time (`2026-12-07T14:00`), a time ago (`2h`) or ms since the epoch.
        #[arg(long)]
        from: String,
        /// End, same forms.
        #[arg(long)]
        to: String,
        /// The MP4 to write (written whole or not at all).
        #[arg(long, short)]
        output: std::path::PathBuf,
        /// Print the plan (pieces and holes) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Plan, batches and who holds them, channel and camera status, workers, queue depth.
    Status {
        #[arg(long)]
        json: bool,
        /// Exit non-zero, naming each problem, when a channel is offline, a camera's relay is
        /// down, a backup directory is unusable or a needed kind of process is not running
        /// (for monitoring).
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Backups written (not deleted), newest first.
    List {
        #[arg(long)]
        channel: Option<u32>,
        /// A time ago (`90s`, `15m`, `2h`, `1d`) or ms since the epoch.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Protect a backup (its file name): rotation and retention by age never delete it.
    Protect { file: String },
    /// Release a backup's protection.
    Unprotect { file: String },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as they arrive (Ctrl-C to stop).
    Tail {
        /// Event category.
        #[arg(long, default_value = "motion", value_parser = ["motion", "objects", "backup", "system"])]
        category: String,
        /// Only this channel.
        #[arg(long)]
        channel: Option<u32>,
        /// Start with the last N events already on the stream.
        #[arg(long, default_value_t = 10)]
        last: usize,
        /// Stop after this many events (default: never).
        #[arg(long)]
        count: Option<usize>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `cctv` command.
pub async fn run(config_path: &std::path::Path, command: Command) -> anyhow::Result<()> {
    if let Command::CheckConfig = command {
        return check_config(config_path);
    }
    let config = Config::load(config_path)?;
    let keys = Keys::new(&config.cluster.namespace);
    let mut conn = queue::connect(&config.cluster, &config.queue).await?;
    match command {
        Command::CheckConfig => unreachable!("handled above"),
        Command::Events(EventsCommand::Tail { category, channel, last, count, json }) => match category.as_str() {
            "objects" => {
                tail::<ObjectEvent>(site_zone(&config), &mut conn, keys.object_events(), channel, last, count, json)
                    .await
            }
            "backup" => {
                tail::<BackupEvent>(site_zone(&config), &mut conn, keys.backup_events(), channel, last, count, json)
                    .await
            }
            "system" => {
                tail::<cctv_common::system::SystemEvent>(
                    site_zone(&config),
                    &mut conn,
                    keys.system_events(),
                    channel,
                    last,
                    count,
                    json,
                )
                .await
            }
            _ => {
                tail::<MotionEvent>(site_zone(&config), &mut conn, keys.motion_events(), channel, last, count, json)
                    .await
            }
        },
        Command::Compare { channels, since, until, json } => {
            compare::command(&mut conn, &keys, &config, &channels, &since, until.as_deref(), json).await
        }
        Command::Status { json, check } => status(&config, conn, &keys, json, check).await,
        Command::Export { channel, from, to, output, json } => {
            export(&config, &mut conn, &keys, channel, (&from, &to), &output, json).await
        }
        Command::Jobs(cmd) => jobs::run(&config, conn, &keys, cmd).await,
        Command::Backups(BackupsCommand::List { channel, since, limit, json }) => {
            jobs::backups(&config, conn, &keys, channel, since.as_deref(), limit, json).await
        }
        Command::Backups(BackupsCommand::Protect { file }) => jobs::protect(conn, &keys, &file, true).await,
        Command::Backups(BackupsCommand::Unprotect { file }) => jobs::protect(conn, &keys, &file, false).await,
        Command::Storage { json } => jobs::storage(conn, &keys, json).await,
    }
}

/// `cctv export`: plans from the backup stream and the files in `record.backup_dir`, writes.
async fn export(
    config: &Config,
    conn: &mut ConnectionManager,
    keys: &Keys,
    channel: u32,
    (from, to): (&str, &str),
    output: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(config.channel(channel).is_some(), "channel {channel} is not in the config");
    let tz = site_zone(config);
    let now = cctv_common::events::now_ms();
    let from_ms = cctv_common::timefmt::parse_time_in(from, now, &tz).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let to_ms = cctv_common::timefmt::parse_time_in(to, now, &tz).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let events = jobs::backup_events(conn, keys).await?;
    let sources = cctv_common::export::sources(&events, channel, &config.record.backup_dir);
    let plan = cctv_common::export::plan(channel, &sources, from_ms, to_ms)?;
    let (out, written) = (output.to_path_buf(), plan.clone());
    tokio::task::spawn_blocking(move || {
        cctv_common::export::write(&written, &out, std::time::Duration::from_secs(3600))
    })
    .await??;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    let at = |ms: i64| cctv_common::timefmt::rfc3339(ms, &tz);
    println!("wrote {} ({:.1} s of video from {} file(s))", output.display(), plan.covered_secs(), plan.pieces.len());
    for p in &plan.pieces {
        println!("  {}  {} .. {}", p.file, at(p.from_ms), at(p.to_ms));
    }
    if plan.holes.is_empty() {
        println!("no holes: the range is covered from start to end");
    }
    for h in &plan.holes {
        println!(
            "HOLE  {} .. {}  ({:.1} s with no backup)",
            at(h.from_ms),
            at(h.to_ms),
            (h.to_ms - h.from_ms) as f64 / 1000.0
        );
    }
    Ok(())
}

/// Shared by every binary's `check-config`: prints every problem, errors when there are any.
pub fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!("{}", config.check_summary(path));
    Ok(())
}

/// An event type `events tail` can print.
trait Tailed: serde::de::DeserializeOwned + serde::Serialize {
    fn channel(&self) -> u32;
    /// One line, times in `tz` (the site's `record.timezone`) with their date.
    fn line(&self, tz: &TimeZone) -> String;
}

impl Tailed for MotionEvent {
    fn channel(&self) -> u32 {
        self.channel
    }
    fn line(&self, tz: &TimeZone) -> String {
        format_motion(self, tz)
    }
}

impl Tailed for ObjectEvent {
    fn channel(&self) -> u32 {
        self.channel
    }
    fn line(&self, tz: &TimeZone) -> String {
        let found = if self.detections.is_empty() {
            "nothing wanted".to_string()
        } else {
            self.detections.iter().map(|d| format!("{} {:.2}", d.label, d.score)).collect::<Vec<_>>().join(", ")
        };
        format!(
            "{}  ch{:<4} objects  {}  latency {} ms  batch {}  event {}",
            format_ms(self.frame_ts_ms, tz),
            self.channel,
            found,
            self.latency_ms,
            self.batch_size,
            &self.motion_event[..8.min(self.motion_event.len())]
        )
    }
}

impl Tailed for BackupEvent {
    fn channel(&self) -> u32 {
        self.channel
    }
    fn line(&self, tz: &TimeZone) -> String {
        let what = match self.kind {
            cctv_common::events::BackupEventKind::File => format!(
                "file {} ({:.1} s, {:.1} MB, part {}{})",
                self.file.as_deref().unwrap_or("?"),
                self.duration_secs,
                self.size_bytes as f64 / 1e6,
                self.part,
                self.pre_roll_ms.map(|p| format!(", pre-roll {:.1} s", p as f64 / 1000.0)).unwrap_or_default()
            ),
            cctv_common::events::BackupEventKind::Error => format!("ERROR {}", self.error.as_deref().unwrap_or("?")),
            cctv_common::events::BackupEventKind::Deleted => {
                format!("deleted {} ({})", self.file.as_deref().unwrap_or("?"), self.error.as_deref().unwrap_or(""))
            }
        };
        let trigger = self
            .trigger
            .as_ref()
            .map(|t| {
                format!("{:?}{}", t.kind, if t.labels.is_empty() { String::new() } else { format!(" {:?}", t.labels) })
            })
            .unwrap_or_default()
            .to_lowercase();
        format!(
            "{}  ch{:<4} backup   {}  trigger {}  recording {}",
            format_ms(self.ts_ms, tz),
            self.channel,
            what,
            trigger,
            self.recording
        )
    }
}

impl Tailed for cctv_common::system::SystemEvent {
    fn channel(&self) -> u32 {
        self.channel.unwrap_or(0)
    }
    fn line(&self, tz: &TimeZone) -> String {
        format!(
            "{}  {:<9} {:<5} {}  ({} on {})",
            format_ms(self.ts_ms, tz),
            self.component,
            format!("{:?}", self.kind).to_lowercase(),
            self.message,
            self.worker,
            self.host
        )
    }
}

async fn tail<T: Tailed>(
    tz: TimeZone,
    conn: &mut ConnectionManager,
    stream: String,
    channel: Option<u32>,
    last: usize,
    count: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let mut printed = 0usize;
    let mut out = std::io::stdout().lock();
    let mut print = |e: &T, out: &mut std::io::StdoutLock<'_>| -> anyhow::Result<bool> {
        if channel.is_some_and(|c| c != e.channel()) {
            return Ok(false);
        }
        if json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        } else {
            writeln!(out, "{}", e.line(&tz))?;
        }
        out.flush()?;
        printed += 1;
        Ok(count.is_some_and(|c| printed >= c))
    };
    let mut last_id = "$".to_string();
    if last > 0 {
        let recent: redis::streams::StreamRangeReply = conn.xrevrange_count(&stream, "+", "-", last).await?;
        for entry in recent.ids.iter().rev() {
            if let Some(e) = decode_entry::<T>(&entry.map) {
                if print(&e, &mut out)? {
                    return Ok(());
                }
            }
            last_id = entry.id.clone();
        }
    }
    loop {
        let opts = StreamReadOptions::default().block(5000).count(100);
        let reply: Option<StreamReadReply> = conn.xread_options(&[&stream], &[&last_id], &opts).await?;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                last_id = entry.id.clone();
                if let Some(e) = decode_entry::<T>(&entry.map) {
                    if print(&e, &mut out)? {
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn format_motion(e: &MotionEvent, tz: &TimeZone) -> String {
    let extra = match e.kind {
        cctv_common::events::MotionEventKind::Start => format!("area {:.1}% boxes {}", e.area * 100.0, e.boxes.len()),
        cctv_common::events::MotionEventKind::Zone => "entered a zone".to_string(),
        cctv_common::events::MotionEventKind::End => {
            format!("lasted {:.1}s max area {:.1}%", (e.ts_ms - e.started_ms) as f64 / 1000.0, e.area * 100.0)
        }
    };
    let extra = if e.zones.is_empty() { extra } else { format!("{extra} zones {}", e.zones.join(",")) };
    format!(
        "{}  ch{:<4} {:<5} {}  event {}  worker {}",
        format_ms(e.ts_ms, tz),
        e.channel,
        format!("{:?}", e.kind).to_lowercase(),
        extra,
        &e.event_id[..8.min(e.event_id.len())],
        e.worker
    )
}

/// What `status --check` reports, one line each: channels not analysed, cameras whose relay is
/// down, unusable backup directories, kinds of process the config needs and none is alive.
pub fn status_problems(
    config: &Config,
    channels: &[(u32, String, Option<ChannelStatus>)],
    relays: &[Option<cctv_common::status::RelayStatus>],
    workers: &[WorkerHeartbeat],
    backup_dirs: &[BackupDirStatus],
) -> Vec<String> {
    let mut problems = Vec::new();
    for ((id, name, s), relay) in channels.iter().zip(relays) {
        match s {
            None => problems.push(format!("ch{id} ({name}): no worker reports it")),
            Some(s) if !s.online => {
                problems.push(format!("ch{id} ({name}): offline: {}", s.reason.as_deref().unwrap_or("no reason given")))
            }
            Some(_) => {}
        }
        for r in relay.iter().flat_map(|r| r.streams()) {
            if !r.running {
                let why = r.last_error.as_deref().unwrap_or("not running");
                problems.push(format!("ch{id} ({name}): camera stream {} not relayed: {why}", r.stream));
            }
        }
    }
    let mut needed = vec!["scheduler", "motion"];
    if config.yolo.enabled && config.channels.iter().any(|c| c.priority) {
        needed.push("yolo");
    }
    if config.channels.iter().any(|c| c.ever_records()) {
        needed.push("record");
    }
    if config.notify.mqtt.is_some() || !config.notify.webhooks.is_empty() {
        needed.push("notify");
    }
    for kind in needed {
        if !workers.iter().any(|w| w.kind == kind) {
            let process = match kind {
                "scheduler" => "scheduler".to_string(),
                "notify" => "notifier".to_string(),
                _ => format!("worker-{kind}"),
            };
            problems.push(format!("no {process} is running (no heartbeat in Redis)"));
        }
    }
    for b in backup_dirs.iter().filter(|b| !b.ok) {
        problems.push(format!(
            "backup dir {} on {}: {}",
            b.backup_dir,
            b.worker,
            b.error.as_deref().unwrap_or("unusable")
        ));
    }
    problems
}

async fn status(
    config: &Config,
    mut conn: ConnectionManager,
    keys: &Keys,
    json: bool,
    check: bool,
) -> anyhow::Result<()> {
    let published = cctv_common::plan::PublishedPlan::read(&mut conn, keys).await?;
    let (plan_hash, batches) = (published.hash, published.jobs);
    let mut holders = Vec::new();
    for b in &batches {
        let holder: Option<String> = conn.get(keys.motion_lease(&b.batch)).await?;
        holders.push(serde_json::json!({"batch": b.batch, "channels": b.channels.iter().map(|c| c.id).collect::<Vec<_>>(), "held_by": holder}));
    }
    let mut channels = Vec::new();
    let mut relays = Vec::new();
    for ch in &config.channels {
        let s: Option<String> = conn.get(keys.channel_status(ch.id)).await?;
        channels.push((ch.id, ch.name.clone(), s.and_then(|s| serde_json::from_str::<ChannelStatus>(&s).ok())));
        relays.push(cctv_common::status::RelayStatus::read(&mut conn, keys, ch.id).await?);
    }
    let workers: Vec<WorkerHeartbeat> = cctv_common::keys::scan_json(&mut conn, &keys.worker_pattern()).await?;
    let mut q: Queue<MotionJob> = Queue::new(conn.clone(), keys, &config.queue);
    let waiting = q.waiting().await?;
    let mut yq: Queue<YoloJob> = Queue::new(conn.clone(), keys, &config.queue);
    let yolo_waiting = yq.waiting().await?;
    let yolo_stats: std::collections::BTreeMap<String, i64> = conn.hgetall(keys.yolo_stats()).await?;
    let mut rq: Queue<cctv_common::jobs::RecordJob> = Queue::new(conn.clone(), keys, &config.queue);
    let record_waiting = rq.waiting().await?;
    let backup_status = BackupDirStatus::read_all(&mut conn, keys).await?;
    let problems = status_problems(config, &channels, &relays, &workers, &backup_status);
    let verdict = || -> anyhow::Result<()> {
        if !check {
            return Ok(());
        }
        if problems.is_empty() {
            eprintln!("status check: ok");
            return Ok(());
        }
        for p in &problems {
            eprintln!("problem: {p}");
        }
        anyhow::bail!("status check: {} problem(s)", problems.len())
    };
    if json {
        let v = serde_json::json!({
            "plan": plan_hash, "batches": holders,
            "channels": channels.iter().zip(&relays).map(|((id, name, s), r)| serde_json::json!({"id": id, "name": name, "status": s, "relay": r})).collect::<Vec<_>>(),
            "problems": problems,
            "workers": workers,
            "queues": {"motion": {"waiting": waiting}, "yolo": {"waiting": yolo_waiting, "stats": yolo_stats},
                       "record": {"waiting": record_waiting}},
            "backup_dirs": backup_status,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return verdict();
    }
    println!("plan {}  motion queue: {waiting} waiting", plan_hash.as_deref().unwrap_or("(none published)"));
    let stat = |k: &str| yolo_stats.get(k).copied().unwrap_or(0);
    println!(
        "yolo queue: {yolo_waiting} waiting; sent {} processed {} positive {} dropped stale {} dropped full {} failed {}",
        stat("sent"),
        stat("processed"),
        stat("positive"),
        stat("dropped_stale"),
        stat("dropped_full"),
        stat("failed")
    );
    println!("record queue: {record_waiting} waiting");
    for b in &backup_status {
        println!(
            "backup dir {} on {}: {}",
            b.backup_dir,
            b.worker,
            if b.ok { "ok".to_string() } else { format!("ERROR {}", b.error.as_deref().unwrap_or("")) }
        );
    }
    println!("\nBATCH  HELD BY                                   CHANNELS");
    for h in &holders {
        println!(
            "{:<6} {:<41} {}",
            h["batch"].as_str().unwrap_or(""),
            h["held_by"].as_str().unwrap_or("-"),
            h["channels"]
        );
    }
    println!("\nCH    NAME                 STATE       FPS   FRAMES    REASON");
    for ((id, name, s), relay) in channels.iter().zip(&relays) {
        // A camera the relay cannot reach says why (redacted), whatever the detector says.
        let camera = relay
            .iter()
            .flat_map(|r| r.streams())
            .find(|r| !r.running)
            .map(|r| format!("camera: {}", r.last_error.as_deref().unwrap_or("relay not running")));
        match s {
            Some(s) => println!(
                "{:<5} {:<20} {:<11} {:>4.1} {:>8}    {}",
                id,
                name,
                format!("{:?}", s.state).to_lowercase(),
                s.fps,
                s.frames_total,
                camera.as_deref().or(s.reason.as_deref()).unwrap_or("")
            ),
            None => println!(
                "{id:<5} {name:<20} unknown     {}",
                camera.as_deref().unwrap_or("(no worker reports this channel)")
            ),
        }
    }
    // What each camera sends and how it travels (probed by the relay at each start).
    println!("\nCH    CODECS");
    for ((id, _, _), relay) in channels.iter().zip(&relays) {
        let Some(r) = relay else { continue };
        let codecs = r.codecs().unwrap_or_else(|| "not probed yet".into());
        let routes: Vec<String> =
            r.streams().filter_map(|s| s.route.as_ref().map(|route| format!("{}: {route}", s.stream))).collect();
        println!("{id:<5} {codecs}  [{}]", routes.join("; "));
    }
    println!("\nWORKER                                    KIND     BATCHES");
    for w in &workers {
        println!("{:<41} {:<8} {}", w.worker, w.kind, w.batches.join(","));
    }
    verdict()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cctv_common::events::ChannelState;
    use cctv_common::status::{RelayState, RelayStatus};

    /// Event lines carry the date and time in the site's zone, with its offset.
    #[test]
    fn event_lines_show_the_date_in_the_sites_zone() {
        let tokyo = cctv_common::timefmt::zone("Asia/Tokyo").unwrap();
        let ms = 1_764_000_000_123; // 2025-11-24T16:00:00.123Z
        assert_eq!(format_ms(ms, &tokyo), "2025-11-25 01:00:00.123+09:00");
        assert_eq!(format_ms(ms, &TimeZone::UTC), "2025-11-24 16:00:00.123+00:00");
        let event = cctv_common::system::SystemEvent {
            kind: cctv_common::system::SystemEventKind::Start,
            component: "scheduler".into(),
            worker: "w".into(),
            host: "h".into(),
            message: "started".into(),
            channel: None,
            ts_ms: ms,
        };
        assert!(event.line(&tokyo).starts_with("2025-11-25 01:00:00.123+09:00  scheduler"), "{}", event.line(&tokyo));
    }

    fn status(channel: u32, online: bool, reason: Option<&str>) -> ChannelStatus {
        ChannelStatus {
            channel,
            online,
            state: if online { ChannelState::Idle } else { ChannelState::Offline },
            reason: reason.map(Into::into),
            fps: 5.0,
            last_frame_ms: None,
            last_motion_ms: None,
            analysing_since_ms: None,
            frames_total: 10,
            frames_gated: 0,
            yolo_frames_skipped: 0,
            worker: "motion-1".into(),
            batch: "b0".into(),
            updated_ms: 0,
            active_event: None,
            seq: 0,
        }
    }

    fn heartbeat(kind: &str) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker: format!("{kind}-1"),
            kind: kind.into(),
            host: "h".into(),
            pid: 1,
            batches: vec![],
            cpu_percent: None,
            rss_bytes: None,
            updated_ms: 0,
        }
    }

    #[test]
    fn status_check_names_every_problem_in_plain_words() {
        let config = Config::parse(
            "[[channel]]\nid = 1\nname = \"Gate\"\nsource = \"rtsp://cam/1\"\npriority = true\n\
             [[channel]]\nid = 2\nname = \"Yard\"\nsource = \"rtsp://cam/2\"\n\
             [[channel]]\nid = 3\nname = \"Door\"\nsource = \"rtsp://cam/3\"\n",
        )
        .unwrap();
        let channels = vec![
            (1, "Gate".to_string(), Some(status(1, true, None))),
            (2, "Yard".to_string(), Some(status(2, false, Some("stalled: no frame for 20 s")))),
            (3, "Door".to_string(), None),
        ];
        let refused = RelayState {
            stream: "ch1".into(),
            running: false,
            last_error: Some("401 Unauthorized (authentication failed)".into()),
            restarts: 4,
            since_ms: None,
            probe: None,
            route: None,
        };
        let relays = vec![
            Some(RelayStatus {
                channel: 1,
                main: refused,
                sub: None,
                host: "h".into(),
                updated_ms: 0,
                one_process: false,
                detect: None,
            }),
            None,
            None,
        ];
        let workers = vec![heartbeat("scheduler"), heartbeat("motion")];
        let dirs = vec![BackupDirStatus {
            backup_dir: "/b".into(),
            worker: "record-1".into(),
            host: "h".into(),
            ok: false,
            error: Some("read-only".into()),
            updated_ms: 0,
        }];
        let problems = status_problems(&config, &channels, &relays, &workers, &dirs);
        let expected = [
            "ch1 (Gate): camera stream ch1 not relayed: 401 Unauthorized (authentication failed)",
            "ch2 (Yard): offline: stalled: no frame for 20 s",
            "ch3 (Door): no worker reports it",
            "no worker-yolo is running (no heartbeat in Redis)",
            "no worker-record is running (no heartbeat in Redis)",
            "backup dir /b on record-1: read-only",
        ];
        assert_eq!(problems, expected);
        let all_well = status_problems(
            &config,
            &channels.iter().map(|(i, n, _)| (*i, n.clone(), Some(status(*i, true, None)))).collect::<Vec<_>>(),
            &[None, None, None],
            &["scheduler", "motion", "yolo", "record"].map(heartbeat),
            &[],
        );
        assert!(all_well.is_empty(), "{all_well:?}");

        // With a notification sink configured, the notifier is needed too.
        let mut notifying = config.clone();
        notifying.notify = cctv_common::Config::parse("[notify.mqtt]\nurl = \"mqtt://broker.lan\"").unwrap().notify;
        let ok_channels: Vec<_> =
            channels.iter().map(|(i, n, _)| (*i, n.clone(), Some(status(*i, true, None)))).collect();
        let workers = ["scheduler", "motion", "yolo", "record"].map(heartbeat);
        let missing = status_problems(&notifying, &ok_channels, &[None, None, None], &workers, &[]);
        assert_eq!(missing, ["no notifier is running (no heartbeat in Redis)"]);
        let mut with_notifier = workers.to_vec();
        with_notifier.push(heartbeat("notify"));
        assert!(status_problems(&notifying, &ok_channels, &[None, None, None], &with_notifier, &[]).is_empty());
    }
}

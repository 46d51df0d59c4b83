//! `/metrics`: the cluster's figures for Prometheus, with `prometheus-client`.
//!
//! Two sources. Counters of what happened (motion events, object frames, backups, backup
//! errors) and the latency histograms are fed by [`follow_events`], which reads the event
//! streams from where they ended when this process started: like any Prometheus counter they
//! start at 0 with the process, and `rate()` sees through restarts. Figures that are state
//! (channel online, queues, disks, workers, relays) and the counters workers keep themselves
//! (frames analysed, relay restarts, YOLO frames) are read from Redis at each scrape.
//!
//! A scraper that accepts OpenMetrics gets it as `prometheus-client` writes it; anyone else
//! (curl, `promtool check metrics`) gets the classic text format 0.0.4.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cctv_common::config::Config;
use cctv_common::events::{
    decode_entry, stream_id_ms, BackupEvent, BackupEventKind, ChannelStatus, MotionEvent, MotionEventKind, ObjectEvent,
    StorageReport, WorkerHeartbeat,
};
use cctv_common::jobs::TriggerKind;
use cctv_common::keys::Keys;
use cctv_common::shutdown::CancellationToken;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

use cctv_common::status::RelayStatus;

/// Content type of the classic text format (what curl and promtool get).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics (what Prometheus asks for).
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    channel: String,
    label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    channel: String,
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: String,
}

fn channel(id: u32) -> ChannelLabel {
    ChannelLabel { channel: id.to_string() }
}

type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Every metric the API serves, registered once.
pub struct ClusterMetrics {
    registry: Registry,
    motion_events: Family<ChannelLabel, Counter>,
    object_frames: Family<ChannelLabel, Counter>,
    objects: Family<ObjectLabels, Counter>,
    backups: Family<ChannelLabel, Counter>,
    backup_written: Family<ChannelLabel, Counter>,
    backup_errors: Family<ChannelLabel, Counter>,
    backups_deleted: Family<ChannelLabel, Counter>,
    motion_latency: Histogram,
    yolo_latency: Histogram,
    record_start_latency: Histogram,
    channel_online: Family<ChannelLabel, Gauge>,
    frames_analysed: Family<ChannelLabel, Counter>,
    relay_up: Family<StreamLabels, Gauge>,
    relay_restarts: Family<StreamLabels, Counter>,
    queue_jobs: Family<QueueLabels, Gauge>,
    yolo_frames: Family<OutcomeLabel, Counter>,
    storage_size: Family<NodeLabel, Gauge>,
    storage_free: Family<NodeLabel, Gauge>,
    backup_size: Family<NodeLabel, Gauge>,
    backup_files: Family<NodeLabel, Gauge>,
    storage_used_ratio: Family<NodeLabel, F64Gauge>,
    workers: Family<KindLabel, Gauge>,
    stream_entries: Family<CategoryLabel, Gauge>,
}

/// What became of the frames motion workers offered to YOLO (`<ns>:stats:yolo`).
const YOLO_OUTCOMES: [&str; 4] = ["sent", "dropped_full", "dropped_stale", "send_failed"];

/// Latency buckets, seconds: from a fast frame to a slow start.
const LATENCY_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0];

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterMetrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("cctv");
        let m = Self {
            registry: Registry::default(),
            motion_events: Family::default(),
            object_frames: Family::default(),
            objects: Family::default(),
            backups: Family::default(),
            backup_written: Family::default(),
            backup_errors: Family::default(),
            backups_deleted: Family::default(),
            motion_latency: Histogram::new(LATENCY_BUCKETS),
            yolo_latency: Histogram::new(LATENCY_BUCKETS),
            record_start_latency: Histogram::new(LATENCY_BUCKETS),
            channel_online: Family::default(),
            frames_analysed: Family::default(),
            relay_up: Family::default(),
            relay_restarts: Family::default(),
            queue_jobs: Family::default(),
            yolo_frames: Family::default(),
            storage_size: Family::default(),
            storage_free: Family::default(),
            backup_size: Family::default(),
            backup_files: Family::default(),
            storage_used_ratio: Family::default(),
            workers: Family::default(),
            stream_entries: Family::default(),
        };
        r.register("motion_events", "Motion events started, per channel", m.motion_events.clone());
        r.register("object_frames", "Frames in which YOLO found a wanted object, per channel", m.object_frames.clone());
        r.register("objects_detected", "Objects YOLO found, per channel and label", m.objects.clone());
        r.register("backups", "Backup files written and validated, per channel", m.backups.clone());
        r.register_with_unit(
            "backup_written",
            "Size of the backup files written, per channel",
            Unit::Bytes,
            m.backup_written.clone(),
        );
        r.register("backup_errors", "Recordings or backup writes that failed, per channel", m.backup_errors.clone());
        r.register("backups_deleted", "Backup files deleted (rotation, retention, API)", m.backups_deleted.clone());
        r.register_with_unit(
            "motion_event_latency",
            "From the frame that started a motion event to the event on Redis",
            Unit::Seconds,
            m.motion_latency.clone(),
        );
        r.register_with_unit(
            "yolo_latency",
            "From a frame's capture to YOLO's result for it",
            Unit::Seconds,
            m.yolo_latency.clone(),
        );
        r.register_with_unit(
            "record_start_latency",
            "From a recording's trigger to its first fragment written",
            Unit::Seconds,
            m.record_start_latency.clone(),
        );
        r.register("channel_online", "1 while the channel's detect stream is analysed", m.channel_online.clone());
        r.register("frames_analysed", "Frames the channel's current motion reader analysed", m.frames_analysed.clone());
        r.register("relay_up", "1 while the relay of the stream runs", m.relay_up.clone());
        r.register("relay_restarts", "Restarts of the relay of the stream", m.relay_restarts.clone());
        r.register("queue_jobs", "Jobs per queue and state", m.queue_jobs.clone());
        r.register("yolo_frames", "Frames motion workers offered to YOLO, per outcome", m.yolo_frames.clone());
        r.register_with_unit(
            "storage_size",
            "Size of the volume holding the node's backups",
            Unit::Bytes,
            m.storage_size.clone(),
        );
        r.register_with_unit("storage_free", "Free space on that volume", Unit::Bytes, m.storage_free.clone());
        r.register_with_unit(
            "storage_used",
            "Used fraction of that volume (rotation keeps it under the high watermark)",
            Unit::Other("ratio".into()),
            m.storage_used_ratio.clone(),
        );
        r.register_with_unit("backup_size", "Bytes of backups on the node", Unit::Bytes, m.backup_size.clone());
        r.register("backup_files", "Backup files on the node", m.backup_files.clone());
        r.register("workers", "Live workers per kind", m.workers.clone());
        r.register("event_stream_entries", "Entries kept in each event stream", m.stream_entries.clone());
        Self { registry: r, ..m }
    }

    /// Counts one event-stream entry.
    fn count(&self, category: Category, stream_id: &str, map: &HashMap<String, redis::Value>) {
        let published_ms = stream_id_ms(stream_id) as i64;
        let secs = |from_ms: i64, to_ms: i64| ((to_ms - from_ms).max(0)) as f64 / 1000.0;
        match category {
            Category::Motion => {
                let Some(e) = decode_entry::<MotionEvent>(map) else { return };
                if e.kind == MotionEventKind::Start {
                    self.motion_events.get_or_create(&channel(e.channel)).inc();
                    self.motion_latency.observe(secs(e.ts_ms, published_ms));
                }
            }
            Category::Objects => {
                let Some(e) = decode_entry::<ObjectEvent>(map) else { return };
                self.object_frames.get_or_create(&channel(e.channel)).inc();
                self.yolo_latency.observe(e.latency_ms.max(0) as f64 / 1000.0);
                for d in &e.detections {
                    let labels = ObjectLabels { channel: e.channel.to_string(), label: d.label.clone() };
                    self.objects.get_or_create(&labels).inc();
                }
            }
            Category::Backup => {
                let Some(e) = decode_entry::<BackupEvent>(map) else { return };
                let ch = channel(e.channel);
                match e.kind {
                    BackupEventKind::File => {
                        self.backups.get_or_create(&ch).inc();
                        self.backup_written.get_or_create(&ch).inc_by(e.size_bytes);
                        // A continuous slot has no activity to react to: no start latency.
                        let reactive = e.trigger.as_ref().filter(|t| t.kind != TriggerKind::Continuous);
                        if let (1, Some(trigger), Some(writing)) = (e.part, reactive, e.writing_since_ms) {
                            self.record_start_latency.observe(secs(trigger.ts_ms, writing));
                        }
                    }
                    BackupEventKind::Error => {
                        self.backup_errors.get_or_create(&ch).inc();
                    }
                    BackupEventKind::Deleted => {
                        self.backups_deleted.get_or_create(&ch).inc();
                    }
                }
            }
        }
    }

    /// Reads the figures that are state from Redis into the gauges.
    async fn refresh(&self, conn: &mut ConnectionManager, keys: &Keys, config: &Config) -> anyhow::Result<()> {
        for ch in &config.channels {
            // Every configured channel's series exist from the first scrape (at 0), so a
            // dashboard shows a quiet channel as 0 rather than as missing.
            let label = channel(ch.id);
            for family in [
                &self.motion_events,
                &self.object_frames,
                &self.backups,
                &self.backup_written,
                &self.backup_errors,
                &self.backups_deleted,
                &self.frames_analysed,
            ] {
                let _ = family.get_or_create(&label);
            }
            if ch.priority {
                for class in &config.yolo.classes {
                    let _ =
                        self.objects.get_or_create(&ObjectLabels { channel: ch.id.to_string(), label: class.clone() });
                }
            }
            let mut streams = vec![ch.stream_name()];
            if ch.detect_source.is_some() {
                streams.push(ch.detect_stream_name());
            }
            for stream in streams {
                let labels = StreamLabels { channel: ch.id.to_string(), stream };
                self.relay_up.get_or_create(&labels).set(0);
                let _ = self.relay_restarts.get_or_create(&labels);
            }
            let st: Option<String> = conn.get(keys.channel_status(ch.id)).await?;
            let st: Option<ChannelStatus> = st.and_then(|j| serde_json::from_str(&j).ok());
            self.channel_online.get_or_create(&channel(ch.id)).set(st.as_ref().is_some_and(|s| s.online).into());
            if let Some(st) = st {
                set_counter(&self.frames_analysed.get_or_create(&channel(ch.id)), st.frames_total);
            }
            if let Some(relay) = RelayStatus::read(conn, keys, ch.id).await? {
                for s in relay.streams() {
                    let labels = StreamLabels { channel: ch.id.to_string(), stream: s.stream.clone() };
                    self.relay_up.get_or_create(&labels).set(s.running.into());
                    set_counter(&self.relay_restarts.get_or_create(&labels), s.restarts);
                }
            }
        }
        let queues = cctv_common::queue::overview(conn, keys, &config.queue).await?;
        for (queue, v) in queues.by_name() {
            for (state, n) in [("waiting", v.waiting), ("running", v.running), ("done", v.done), ("failed", v.failed)] {
                let labels = QueueLabels { queue: queue.into(), state: state.into() };
                self.queue_jobs.get_or_create(&labels).set(n as i64);
            }
        }
        let mut yolo: HashMap<String, i64> = conn.hgetall(keys.yolo_stats()).await?;
        for outcome in YOLO_OUTCOMES {
            yolo.entry(outcome.into()).or_default();
        }
        for (outcome, n) in yolo {
            set_counter(&self.yolo_frames.get_or_create(&OutcomeLabel { outcome }), n.max(0) as u64);
        }
        // Nodes and worker kinds come and go: only those reporting now are shown.
        let reports: Vec<StorageReport> = cctv_common::keys::scan_json(conn, &keys.storage_pattern()).await?;
        for family in [&self.storage_size, &self.storage_free, &self.backup_size, &self.backup_files] {
            family.clear();
        }
        self.storage_used_ratio.clear();
        for r in &reports {
            let node = NodeLabel { node: r.node.clone() };
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.storage_size.get_or_create(&node).set(clamp(r.total_bytes));
            self.storage_free.get_or_create(&node).set(clamp(r.free_bytes));
            self.backup_size.get_or_create(&node).set(clamp(r.backup_bytes));
            self.backup_files.get_or_create(&node).set(clamp(r.backup_files));
            self.storage_used_ratio.get_or_create(&node).set(r.used_percent / 100.0);
        }
        let workers: Vec<WorkerHeartbeat> = cctv_common::keys::scan_json(conn, &keys.worker_pattern()).await?;
        self.workers.clear();
        for w in &workers {
            self.workers.get_or_create(&KindLabel { kind: w.kind.clone() }).inc();
        }
        for category in Category::ALL {
            let n: i64 = conn.xlen(category.stream(keys)).await?;
            self.stream_entries.get_or_create(&CategoryLabel { category: category.name().into() }).set(n);
        }
        Ok(())
    }

    /// Refreshes the gauges and encodes everything: OpenMetrics when `openmetrics`, else the
    /// classic text format.
    pub async fn render(
        &self,
        conn: &mut ConnectionManager,
        keys: &Keys,
        config: &Config,
        openmetrics: bool,
    ) -> anyhow::Result<String> {
        self.refresh(conn, keys, config).await?;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(if openmetrics { out } else { to_prometheus_text(&out) })
    }
}

/// A counter that mirrors a total kept elsewhere (a worker's own count).
fn set_counter(counter: &Counter, total: u64) {
    counter.inner().store(total, Ordering::Relaxed);
}

/// OpenMetrics text to the classic format 0.0.4: counter families are named with their
/// `_total` suffix there, and `# UNIT` and `# EOF` do not exist.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta.and_then(|(p, rest)| Some((p, rest.split_once(' ')?))) {
            Some((p, (name, tail))) if counters.contains(name) => out += &format!("{p}{name}_total {tail}\n"),
            _ => {
                out += line;
                out.push('\n');
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Category {
    Motion,
    Objects,
    Backup,
}

impl Category {
    const ALL: [Category; 3] = [Category::Motion, Category::Objects, Category::Backup];

    fn stream(self, keys: &Keys) -> String {
        match self {
            Category::Motion => keys.motion_events(),
            Category::Objects => keys.object_events(),
            Category::Backup => keys.backup_events(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Category::Motion => "motion",
            Category::Objects => "objects",
            Category::Backup => "backup",
        }
    }
}

/// How often the event streams are read (no blocking read: the connection is shared).
const POLL: Duration = Duration::from_secs(1);

/// Counts the event streams' new entries into `metrics` until `shutdown`, from their ends at
/// the first read; Redis going away is logged once and read past when it returns.
pub async fn follow_events(
    metrics: Arc<ClusterMetrics>,
    mut conn: ConnectionManager,
    keys: Keys,
    shutdown: CancellationToken,
) {
    let streams: Vec<String> = Category::ALL.iter().map(|c| c.stream(&keys)).collect();
    let mut ids: Option<Vec<String>> = None;
    let mut outage: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let read = async {
            if ids.is_none() {
                let mut start = Vec::new();
                for s in &streams {
                    start.push(cctv_common::events::last_stream_id(&mut conn, s).await?);
                }
                ids = Some(start);
            }
            let opts = StreamReadOptions::default().count(500);
            let reply: Option<StreamReadReply> =
                conn.xread_options(&streams, ids.as_deref().unwrap_or_default(), &opts).await?;
            Ok::<_, redis::RedisError>(reply.unwrap_or_default())
        };
        let mut more = false;
        match read.await {
            Ok(reply) => {
                if let Some(since) = outage.take() {
                    tracing::info!(
                        down_secs = since.elapsed().as_secs_f64(),
                        "metrics: reading the event streams again"
                    );
                }
                for key in reply.keys {
                    let Some(i) = streams.iter().position(|s| *s == key.key) else { continue };
                    more |= key.ids.len() >= 500;
                    for entry in &key.ids {
                        metrics.count(Category::ALL[i], &entry.id, &entry.map);
                    }
                    if let (Some(last), Some(ids)) = (key.ids.last(), ids.as_mut()) {
                        ids[i] = last.id.clone();
                    }
                }
            }
            Err(e) => {
                if outage.is_none() {
                    tracing::warn!(error = %e, "metrics: cannot read the event streams; counting resumes when Redis is back");
                    outage = Some(Instant::now());
                }
            }
        }
        if !more {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_and_openmetrics_only_lines_dropped() {
        let m = ClusterMetrics::new();
        m.motion_events.get_or_create(&channel(3)).inc_by(2);
        m.motion_latency.observe(0.3);
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &m.registry).unwrap();
        assert!(om.contains("# TYPE cctv_motion_events counter\n") && om.contains("# UNIT "), "{om}");
        let text = to_prometheus_text(&om);
        assert!(text.contains("# HELP cctv_motion_events_total Motion events started"), "{text}");
        assert!(text.contains("# TYPE cctv_motion_events_total counter\ncctv_motion_events_total{channel=\"3\"} 2"));
        assert!(text.contains("# TYPE cctv_motion_event_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("cctv_motion_event_latency_seconds_bucket{le=\"0.5\"} 1"), "{text}");
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"), "{text}");
    }
}

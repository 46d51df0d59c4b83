//! `Config::validate`: every problem at once, each named by its field, in steps that read in
//! the file's order.

use std::collections::HashSet;

use super::{
    minutes_of, ChannelConfig, Config, ConfigProblem, NotifyConfig, RecordPolicy, SentinelConfig, CAMERA_SCHEMES,
    WEEKDAYS,
};
use crate::redact::redact_url;

impl Config {
    /// Every problem in the config, empty when it is valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        self.validate_cluster(&mut p);
        self.validate_scheduler_and_queue(&mut p);
        self.validate_motion(&mut p);
        self.validate_yolo(&mut p);
        self.validate_record_and_storage(&mut p);
        self.validate_api_relay_and_logs(&mut p);
        check_notify(&mut p, &self.notify);
        self.validate_channels(&mut p);
        p.0
    }

    /// `[cluster]` and `[rtmp]`'s addresses.
    fn validate_cluster(&self, p: &mut Problems) {
        let ns = &self.cluster.namespace;
        if ns.is_empty() || !ns.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            p.add("cluster.namespace", format!("{ns:?} must be non-empty letters, digits, '-', '_' or '.'"));
        }
        check_url(p, "cluster.redis_url", &self.cluster.redis_url, &["redis", "rediss", "unix"]);
        // `#insecure` would make the redis crate skip the certificate check.
        if self.cluster.redis_url.to_ascii_lowercase().starts_with("rediss://") && self.cluster.redis_url.contains('#')
        {
            p.add(
                "cluster.redis_url",
                format!(
                    "{} has a fragment (#insecure turns off the certificate check): remove it; a private CA goes in \
                     cluster.tls_ca_file",
                    redact_url(&self.cluster.redis_url)
                ),
            );
        }
        check_ca_file(p, "cluster", &self.cluster.redis_url, "rediss", self.cluster.tls_ca_file.as_deref());
        if let Some(sentinel) = &self.cluster.sentinel {
            check_sentinel(p, sentinel, &self.cluster.redis_url);
        }
        check_url(p, "rtmp.publish_url", &self.rtmp.publish_url, &["rtmp"]);
        check_url(p, "rtmp.play_url", &self.rtmp.play_url, &["rtmp"]);
    }

    /// `[scheduler]` and `[queue]`.
    fn validate_scheduler_and_queue(&self, p: &mut Problems) {
        let s = &self.scheduler;
        if s.batch_size == 0 || s.batch_size > 64 {
            p.add("scheduler.batch_size", format!("{} is out of range 1..=64", s.batch_size));
        }
        range(p, "scheduler.reconcile_interval_secs", s.reconcile_interval_secs, 0.1, 600.0);

        let q = &self.queue;
        if q.heartbeat_interval_secs == 0 || q.heartbeat_interval_secs > 60 {
            p.add("queue.heartbeat_interval_secs", format!("{} is out of range 1..=60", q.heartbeat_interval_secs));
        }
        if q.missed_heartbeats == 0 || q.missed_heartbeats > 100 {
            p.add("queue.missed_heartbeats", format!("{} is out of range 1..=100", q.missed_heartbeats));
        }
        if q.redis_response_timeout_secs == 0 {
            p.add("queue.redis_response_timeout_secs", "must be at least 1".into());
        }
    }

    /// `[motion]` and `[worker_motion]`.
    fn validate_motion(&self, p: &mut Problems) {
        let m = &self.motion;
        check_channel_motion(p, "motion.", Some(m.fps), Some(m.pixel_threshold), Some(m.min_area));
        if !(32..=1080).contains(&m.frame_height) || m.frame_height % 2 != 0 {
            p.add("motion.frame_height", format!("{} must be even and within 32..=1080", m.frame_height));
        }
        if m.blur_kernel < 1 || m.blur_kernel > 31 || m.blur_kernel % 2 == 0 {
            p.add("motion.blur_kernel", format!("{} must be odd and within 1..=31", m.blur_kernel));
        }
        if !(0..=10).contains(&m.dilate_iterations) {
            p.add("motion.dilate_iterations", format!("{} is out of range 0..=10", m.dilate_iterations));
        }
        range(p, "motion.background_alpha", m.background_alpha, 0.001, 1.0);
        if m.settle_frames == 0 {
            p.add("motion.settle_frames", "must be at least 1".into());
        }
        if m.start_frames == 0 {
            p.add("motion.start_frames", "must be at least 1".into());
        }
        range(p, "motion.end_quiet_secs", m.end_quiet_secs, 0.2, 600.0);
        range(p, "motion.max_hold_secs", m.max_hold_secs, 0.0, 86_400.0);
        range(p, "motion.gate_rise", m.gate_rise, 1.0, 20.0);
        range(p, "motion.gate_hold_secs", m.gate_hold_secs, 1.0, 3600.0);
        // A still channel's analysis sees a picture only this often: it must stay well inside
        // the stall timeout, and the pre-roll (5 s by default) should still reach back over it.
        range(p, "motion.gate_keyframe_secs", m.gate_keyframe_secs, 0.0, 10.0);
        if m.gate_keyframe_secs > m.stall_timeout_secs / 2.0 {
            p.add(
                "motion.gate_keyframe_secs",
                format!(
                    "{} must be at most half of motion.stall_timeout_secs ({}): a still channel would be \
                 taken for a stalled one",
                    m.gate_keyframe_secs, m.stall_timeout_secs
                ),
            );
        }
        range(p, "motion.recalibrate_fraction", m.recalibrate_fraction, 0.05, 1.0);
        range(p, "motion.stall_timeout_secs", m.stall_timeout_secs, 1.0, 600.0);
        range(p, "motion.retry_initial_secs", m.retry_initial_secs, 0.1, 600.0);
        range(p, "motion.retry_max_secs", m.retry_max_secs, m.retry_initial_secs.max(0.1), 3600.0);
        if m.decode_threads == 0 || m.decode_threads > 16 {
            p.add("motion.decode_threads", format!("{} is out of range 1..=16", m.decode_threads));
        }
        if self.worker_motion.concurrency == 0 || self.worker_motion.concurrency > 64 {
            p.add("worker_motion.concurrency", format!("{} is out of range 1..=64", self.worker_motion.concurrency));
        }
    }

    /// `[yolo]`.
    fn validate_yolo(&self, p: &mut Problems) {
        let y = &self.yolo;
        if y.model.as_os_str().is_empty() {
            p.add("yolo.model", "must not be empty".into());
        }
        if y.intra_threads == 0 || y.intra_threads > 64 {
            p.add("yolo.intra_threads", format!("{} is out of range 1..=64", y.intra_threads));
        }
        if y.pair_wait_ms > 1000 {
            p.add("yolo.pair_wait_ms", format!("{} is out of range 0..=1000", y.pair_wait_ms));
        }
        if y.max_batch == 0 || y.max_batch > 32 {
            p.add("yolo.max_batch", format!("{} is out of range 1..=32", y.max_batch));
        }
        range(p, "yolo.fps", y.fps, 0.1, 30.0);
        range(p, "yolo.recording_fps", y.recording_fps, 0.0, 30.0);
        if !(0.0..=y.fps).contains(&y.confirmed_fps) {
            p.add("yolo.confirmed_fps", format!("{} is out of range 0..=yolo.fps ({})", y.confirmed_fps, y.fps));
        }
        range(p, "yolo.max_age_secs", y.max_age_secs, 0.1, 600.0);
        if y.max_queue == 0 {
            p.add("yolo.max_queue", "must be at least 1".into());
        }
        range(p, "yolo.min_score", y.min_score.into(), 0.01, 1.0);
        range(p, "yolo.iou_threshold", y.iou_threshold.into(), 0.01, 1.0);
        if y.classes.is_empty() {
            p.add("yolo.classes", "must name at least one label".into());
        }
        if !(64..=2048).contains(&y.input_size) || y.input_size % 32 != 0 {
            p.add("yolo.input_size", format!("{} must be a multiple of 32 within 64..=2048", y.input_size));
        }
        if !(64..=2160).contains(&y.max_frame_height) || y.max_frame_height % 2 != 0 {
            p.add("yolo.max_frame_height", format!("{} must be even and within 64..=2160", y.max_frame_height));
        }
        if !(1..=100).contains(&y.jpeg_quality) {
            p.add("yolo.jpeg_quality", format!("{} is out of range 1..=100", y.jpeg_quality));
        }
        if y.snapshot_dir.as_os_str().is_empty() {
            p.add("yolo.snapshot_dir", "must not be empty".into());
        }
    }

    /// `[record]` and `[storage]`.
    fn validate_record_and_storage(&self, p: &mut Problems) {
        let r = &self.record;
        if r.backup_dir.as_os_str().is_empty() {
            p.add("record.backup_dir", "must not be empty".into());
        }
        range(p, "record.pre_roll_secs", r.pre_roll_secs, 0.0, 50.0);
        range(p, "record.post_roll_secs", r.post_roll_secs, 0.0, 600.0);
        range(p, "record.max_file_seconds", r.max_file_seconds, 10.0, 86_400.0);
        range(p, "record.stall_timeout_secs", r.stall_timeout_secs, 2.0, 3600.0);
        if let Some(days) = r.max_age_days {
            range(p, "record.max_age_days", days, 0.001, 36_500.0);
        }
        if r.concurrency == 0 || r.concurrency > 256 {
            p.add("record.concurrency", format!("{} is out of range 1..=256", r.concurrency));
        }
        if let Err(e) = crate::timefmt::zone(&r.timezone) {
            p.add("record.timezone", e);
        }
        let st = &self.storage;
        range(p, "storage.high_watermark", st.high_watermark, 1.0, 99.9);
        range(p, "storage.low_watermark", st.low_watermark, 0.0, 99.0);
        if st.low_watermark >= st.high_watermark {
            p.add(
                "storage.low_watermark",
                format!("{} must be below storage.high_watermark ({})", st.low_watermark, st.high_watermark),
            );
        }
        range(p, "storage.min_free_hours", st.min_free_hours, 0.0, 1000.0);
        range(p, "storage.interval_secs", st.interval_secs, 0.2, 3600.0);
    }

    /// `[api]`, `rtmp.hls_url`, `[relay]` and `[logs]`.
    fn validate_api_relay_and_logs(&self, p: &mut Problems) {
        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            p.add("api.listen", format!("{:?} is not an address:port", self.api.listen));
        }
        if self.api.viewer_token.as_ref().is_some_and(|t| t.len() < 16) {
            p.add("api.viewer_token", "must be at least 16 characters".into());
        }
        if self.api.token.as_ref().is_some_and(|t| t.len() < 16) {
            p.add("api.token", "must be at least 16 characters".into());
        }
        check_url(p, "rtmp.hls_url", &self.rtmp.hls_url, &["http", "https"]);
        if !self.relay.hls_dir.is_absolute() {
            p.add("relay.hls_dir", format!("{} must be an absolute path", self.relay.hls_dir.display()));
        }
        if !(30..=3600).contains(&self.relay.buffer_secs) {
            p.add(
                "relay.buffer_secs",
                format!("{} must be 30..=3600 (pre-roll and retries need 30 s)", self.relay.buffer_secs),
            );
        }
        if self.logs.dir.as_os_str().is_empty() {
            p.add("logs.dir", "must not be empty".into());
        }
        range(p, "logs.max_file_mb", self.logs.max_file_mb, 0.001, 100_000.0);
        if self.logs.keep_files == 0 {
            p.add("logs.keep_files", "must be at least 1".into());
        }
    }

    /// Every `[[channel]]`: ids and names unique, then each one alone.
    fn validate_channels(&self, p: &mut Problems) {
        if self.channels.is_empty() {
            p.add("channel", "no [[channel]] configured".into());
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for (i, ch) in self.channels.iter().enumerate() {
            let at = |field: &str| format!("channel[{i}] (id {}).{field}", ch.id);
            if !ids.insert(ch.id) {
                p.add(&at("id"), format!("duplicate channel id {}", ch.id));
            }
            if !ch.name.trim().is_empty() && !names.insert(ch.name.as_str()) {
                p.add(&at("name"), format!("duplicate channel name {:?}", ch.name));
            }
            self.validate_channel(p, ch, &at);
        }
    }

    /// One channel; `at` names its fields.
    fn validate_channel(&self, p: &mut Problems, ch: &ChannelConfig, at: &dyn Fn(&str) -> String) {
        if ch.id == 0 || ch.id > 9999 {
            p.add(&at("id"), format!("{} is out of range 1..=9999", ch.id));
        }
        if ch.name.trim().is_empty() {
            p.add(&at("name"), "must not be empty".into());
        }
        check_url(p, &at("source"), &ch.source, CAMERA_SCHEMES);
        if let Some(d) = &ch.detect_source {
            check_url(p, &at("detect_source"), d, CAMERA_SCHEMES);
        }
        if ch.record == RecordPolicy::Objects && !ch.priority {
            p.add(
                &at("record"),
                "\"objects\" needs priority = true (only priority channels get object detection)".into(),
            );
        }
        if ch.record == RecordPolicy::Objects && !self.yolo.enabled {
            p.add(&at("record"), "\"objects\" needs yolo.enabled = true".into());
        }
        if let Some(days) = ch.max_age_days {
            range(p, &at("max_age_days"), days, 0.001, 36_500.0);
        }
        if let Some(gb) = ch.max_backup_gb {
            range(p, &at("max_backup_gb"), gb, 0.000_001, 1_000_000.0);
        }
        let o = &ch.motion;
        check_channel_motion(p, &at("motion."), o.fps, o.pixel_threshold, o.min_area);
        for (m, mask) in ch.mask.iter().enumerate() {
            check_polygon(p, &at(&format!("mask[{m}].points")), &mask.points);
        }
        let mut zone_names = HashSet::new();
        for (z, zone) in ch.zone.iter().enumerate() {
            check_polygon(p, &at(&format!("zone[{z}].points")), &zone.points);
            let ok =
                !zone.name.is_empty() && zone.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                p.add(&at(&format!("zone[{z}].name")), format!("{:?} must be letters, digits, - or _", zone.name));
            } else if !zone_names.insert(zone.name.as_str()) {
                p.add(&at(&format!("zone[{z}].name")), format!("duplicate zone name {:?}", zone.name));
            }
        }
        for name in &ch.record_zones {
            if !ch.zone.iter().any(|z| z.name == *name) {
                p.add(&at("record_zones"), format!("{name:?} is not a [[channel.zone]] of this channel"));
            }
        }
        self.validate_schedule(p, ch, &at);
        if !ch.record_zones.is_empty() && !ch.ever_records() {
            p.add(&at("record_zones"), "set, but record = \"off\" never backs up".into());
        }
        if let Some(labels) = &ch.labels {
            if labels.is_empty() {
                p.add(&at("labels"), "must name at least one label (or be left out)".into());
            }
            for l in labels {
                if !self.yolo.classes.contains(l) {
                    p.add(&at("labels"), format!("{l:?} is not in yolo.classes (YOLO reports only those)"));
                }
            }
        }
    }

    /// A channel's `[[channel.schedule]]` windows.
    fn validate_schedule(&self, p: &mut Problems, ch: &ChannelConfig, at: &dyn Fn(&str) -> String) {
        for (w, window) in ch.schedule.iter().enumerate() {
            let at = |f: &str| at(&format!("schedule[{w}].{f}"));
            for (f, v) in [("from", &window.from), ("to", &window.to)] {
                if minutes_of(v).is_none() {
                    p.add(&at(f), format!("{v:?} is not a time HH:MM (00:00 to 24:00)"));
                }
            }
            if window.from == window.to {
                p.add(&at("to"), "equals from: the window would be empty".into());
            }
            if window.days.is_empty() {
                p.add(&at("days"), "must name at least one day (or be left out: every day)".into());
            }
            for d in &window.days {
                if !WEEKDAYS.contains(&d.as_str()) {
                    p.add(&at("days"), format!("{d:?} is not one of {}", WEEKDAYS.join(", ")));
                }
            }
            if window.record == RecordPolicy::Objects && !(ch.priority && self.yolo.enabled) {
                p.add(&at("record"), "\"objects\" needs priority = true and yolo.enabled = true".into());
            }
        }
    }
}

/// Problems found so far.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<ConfigProblem>);

impl Problems {
    pub(super) fn add(&mut self, field: &str, message: String) {
        self.0.push(ConfigProblem { field: field.to_owned(), message });
    }
}

/// Problems of one polygon's corners (`at` names it).
fn check_polygon(p: &mut Problems, at: &str, points: &[[f32; 2]]) {
    if points.len() < 3 {
        p.add(at, format!("{} corners; a polygon needs 3 or more", points.len()));
    }
    if let Some([x, y]) = points.iter().find(|[x, y]| !(0.0..=1.0).contains(x) || !(0.0..=1.0).contains(y)) {
        p.add(at, format!("[{x}, {y}] is outside the picture (coordinates are 0..=1)"));
    }
}

// Hand-written so that `{:?}` of a config never prints a camera password.

/// The limits of the motion settings a channel may override, for `[motion]` (`prefix`
/// "motion.") and each `[channel.motion]` alike; `None`: not set there.
fn check_channel_motion(p: &mut Problems, prefix: &str, fps: Option<f64>, threshold: Option<f64>, area: Option<f64>) {
    for (field, value, lo, hi) in
        [("fps", fps, 0.2, 30.0), ("pixel_threshold", threshold, 1.0, 255.0), ("min_area", area, 0.0, 1.0)]
    {
        if let Some(v) = value {
            range(p, &format!("{prefix}{field}"), v, lo, hi);
        }
    }
}

fn range(p: &mut Problems, field: &str, v: f64, lo: f64, hi: f64) {
    if !(v >= lo && v <= hi) {
        p.add(field, format!("{v} is out of range {lo}..={hi}"));
    }
}

/// `[cluster.sentinel]`: a master name, `host:port` sentinels, and a plain `redis://` URL for the
/// master (its connections are relayed through a local port; TLS is not).
fn check_sentinel(p: &mut Problems, s: &SentinelConfig, redis_url: &str) {
    if s.master.trim().is_empty() || s.master.chars().any(char::is_whitespace) {
        p.add("cluster.sentinel.master", format!("{:?} must be a non-empty name without spaces", s.master));
    }
    if s.addresses.is_empty() {
        p.add("cluster.sentinel.addresses", "must list at least one sentinel as host:port".into());
    }
    for (i, a) in s.addresses.iter().enumerate() {
        if crate::sentinel::parse_host_port(a).is_none() {
            p.add(&format!("cluster.sentinel.addresses[{i}]"), format!("{a:?} is not host:port"));
        }
    }
    if !redis_url.starts_with("redis://") {
        p.add(
            "cluster.redis_url",
            format!(
                "{} must be a redis:// URL when [cluster.sentinel] is set (its host is not used)",
                redact_url(redis_url)
            ),
        );
    }
}

/// `[notify]`: URLs with the schemes the notifier speaks, MQTT topic prefixes without
/// wildcards, webhook names unique (they key stream positions).
fn check_notify(p: &mut Problems, n: &NotifyConfig) {
    if let Some(u) = &n.public_url {
        check_url(p, "notify.public_url", u, &["http", "https"]);
    }
    if let Some(m) = &n.mqtt {
        check_url(p, "notify.mqtt.url", &m.url, &["mqtt", "mqtts"]);
        check_ca_file(p, "notify.mqtt", &m.url, "mqtts", m.ca_file.as_deref());
        let topic_ok = |t: &str| !t.contains(['#', '+', '\0']) && !t.starts_with('/') && !t.ends_with('/');
        if m.topic_prefix.is_empty() || !topic_ok(&m.topic_prefix) {
            p.add(
                "notify.mqtt.topic_prefix",
                format!("{:?} must be non-empty, without '#', '+' or a leading/trailing '/'", m.topic_prefix),
            );
        }
        if !m.discovery_prefix.is_empty() && !topic_ok(&m.discovery_prefix) {
            p.add(
                "notify.mqtt.discovery_prefix",
                format!("{:?} must be \"\" or a topic without '#', '+' or a leading/trailing '/'", m.discovery_prefix),
            );
        }
        if m.client_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 128) {
            p.add("notify.mqtt.client_id", "must be 1 to 128 characters".into());
        }
    }
    let mut names = HashSet::new();
    for (i, w) in n.webhooks.iter().enumerate() {
        let at = |field: &str| format!("notify.webhook[{i}].{field}");
        check_url(p, &at("url"), &w.url, &["http", "https"]);
        check_ca_file(p, &format!("notify.webhook[{i}]"), &w.url, "https", w.ca_file.as_deref());
        let name = w.name_or_default(i);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            p.add(&at("name"), format!("{name:?} must be non-empty letters, digits, '-', '_' or '.'"));
        } else if !names.insert(name.clone()) {
            p.add(&at("name"), format!("duplicate webhook name {name:?}"));
        }
        if w.secret.as_ref().is_some_and(|s| s.len() < 16) {
            p.add(&at("secret"), "must be at least 16 characters".into());
        }
        if w.events.is_empty() {
            p.add(&at("events"), "must name at least one of motion, objects, backup".into());
        }
    }
}

/// A CA file belongs to a TLS URL (`tls_scheme`), and must be a readable PEM file holding a
/// certificate (checked here, so `check-config` finds what the notifier would fail on).
fn check_ca_file(p: &mut Problems, at: &str, url: &str, tls_scheme: &str, ca_file: Option<&std::path::Path>) {
    let Some(path) = ca_file else { return };
    let field = if at == "cluster" { "cluster.tls_ca_file".to_string() } else { format!("{at}.ca_file") };
    if !url.to_ascii_lowercase().starts_with(&format!("{tls_scheme}://")) {
        p.add(&field, format!("is for {tls_scheme}:// URLs only (the URL has no TLS)"));
        return;
    }
    match std::fs::read_to_string(path) {
        Err(e) => p.add(&field, format!("cannot read {}: {e}", path.display())),
        Ok(pem) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
            p.add(&field, format!("{} holds no PEM certificate", path.display()))
        }
        Ok(_) => {}
    }
}

fn check_url(p: &mut Problems, field: &str, value: &str, schemes: &[&str]) {
    match url::Url::parse(value) {
        Err(e) => p.add(field, format!("{:?} is not a valid URL: {e}", redact_url(value))),
        Ok(u) if !schemes.contains(&u.scheme()) => p.add(
            field,
            format!("{:?} has scheme {:?}, expected one of {}", redact_url(value), u.scheme(), schemes.join(", ")),
        ),
        Ok(u) if u.scheme() != "file" && u.scheme() != "unix" && u.host_str().is_none_or(str::is_empty) => {
            p.add(field, format!("{:?} has no host", redact_url(value)))
        }
        Ok(_) => {}
    }
}

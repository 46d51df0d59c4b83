//! Backup decisions: the leader reads the motion and object result streams and applies each
//! channel's `record` policy, turning results into recordings ([`cctv_common::recording`]) and
//! record jobs.
//!
//! The decision itself is [`decide`], a pure function of (input, the channel's active
//! recording, channel policy, rules, now) → action, unit-tested over event sequences below.
//! [`Decider`] feeds it from the streams and writes its actions through the recording store's
//! compare-and-set (a decision made on a stale view is made again on the fresh one).
//!
//! - `motion`: a motion `start` opens a recording (start = detection − pre-roll) or joins the
//!   channel's recording when it is open and the activity comes before its end + pre-roll; the
//!   recording stays open while any of its motion events is in progress and ends at last
//!   activity + post-roll.
//! - `objects`: the first wanted object of a motion event opens (or joins) a recording the same
//!   way; later motion starts join it while it is open.
//! - priority channels: a wanted object in view extends the open recording (YOLO keeps sampling
//!   while it is open), at most `motion.max_hold_secs` after its last motion.
//! - `off`: nothing.
//! - `continuous`: one never-ending recording in slots that end at multiples of
//!   `record.max_file_seconds` on the clock, each starting at the previous one's end
//!   ([`cctv_common::recording::next_continuous_slot`], made by [`Decider::keep_continuous`]
//!   on every step); activity is marked on the slot it falls in. Activity while no slot is
//!   open records as under `motion`, and the next slot starts at that recording's end.
//!
//! Stream positions are kept in `<ns>:record:cursor`, so a new leader carries on where the old
//! one stopped; recording ids derive from the triggering motion event and jobs are pushed with
//! the recording id as idempotency key, so re-reading an event creates nothing twice.
//!
//! **Orphans.** A motion event whose `end` never comes (its worker was killed, or Redis lost
//! the `end`) would keep its recording open forever. Workers publish, per channel, the event in
//! progress and a sequence number in the channel status *after* the events themselves, so once
//! the decider has read the stream up to what a status covers, an event the status no longer
//! shows is over. The watchdog closes an event only then, or when no worker has reported the
//! channel for [`ORPHAN_GRACE`] on the decider's own clock — never because of a motion state,
//! and never right after Redis came back.
//!
//! An orphaned event's activity is taken to last as long as anyone could not rule it out: until
//! its worker last reported it in progress, and, when another worker took the channel over,
//! until that worker's detector started watching the scene. The event is closed only once that
//! detector has watched it for `end_quiet_secs` (what any detector needs to call a scene
//! quiet), so motion it sees meanwhile joins the same recording: a lost host splits no
//! activity in two. A takeover whose detector never gets a picture is waited for at most
//! [`TAKEOVER_WAIT`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cctv_common::clock::SharedClock;
use cctv_common::config::{Config, RecordPolicy};
use cctv_common::events::{decode_entry, ChannelStatus, MotionEvent, MotionEventKind, ObjectEvent};
use cctv_common::jobs::{RecordJob, RecordTrigger, TriggerKind};
use cctv_common::keys::Keys;
use cctv_common::queue::Queue;
use cctv_common::recording::{next_continuous_slot, Recording, RecordingState, RecordingStore, Rules};
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

/// Motion-event bookkeeping lives a day.
const STATE_TTL_SECS: i64 = 86_400;
/// A channel no worker reported for this long (as seen by the decider) has lost its worker:
/// its events in progress are over. Longer than the status TTL plus a reconnect after a Redis
/// restart.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(15);
/// The longest the watchdog waits for a worker that took a channel over to watch it for
/// `end_quiet_secs` (its stream may be down) before it ends the lost worker's event.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(60);

/// One result, as the decision sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    MotionStart {
        event: String,
        ts_ms: i64,
    },
    MotionEnd {
        event: String,
        last_motion_ms: i64,
    },
    /// Wanted labels seen in a frame of motion event `event` (labels never empty).
    Objects {
        event: String,
        frame_ts_ms: i64,
        labels: Vec<String>,
        view: EventView,
    },
    /// The watchdog found `event` over without its `end`; its activity lasted at least until
    /// `last_ms` (see the module docs).
    Orphan {
        event: String,
        last_ms: i64,
    },
}

/// What the decider knows of the motion event an object frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventView {
    pub in_progress: bool,
    /// Its last activity when it ended, else its start.
    pub last_motion_ms: i64,
}

/// A channel as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelRules {
    pub channel: u32,
    pub policy: RecordPolicy,
    pub priority: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Nothing,
    /// Write the channel's active recording as changed.
    Update(Recording),
    /// A new recording, which becomes the channel's active one and gets a record job.
    Create(Recording),
}

/// The backup decision for one input.
pub fn decide(input: &Input, active: Option<&Recording>, ch: &ChannelRules, rules: &Rules, now: i64) -> Action {
    let open = active.filter(|r| r.state == RecordingState::Open);
    // `continuous`: the open slot records already; activity is marked on it and moves nothing.
    // Without an open slot (between two, or before the first), activity records as under
    // `motion`, and the next slot starts where that recording ends.
    if ch.policy == RecordPolicy::Continuous {
        if let Some(slot) = open.filter(|r| r.is_continuous_slot()) {
            return match input {
                Input::MotionStart { event, ts_ms } | Input::Objects { event, frame_ts_ms: ts_ms, .. } => {
                    let mut slot = slot.clone();
                    if slot.mark_event(event, *ts_ms) {
                        Action::Update(slot)
                    } else {
                        Action::Nothing
                    }
                }
                Input::MotionEnd { .. } | Input::Orphan { .. } => Action::Nothing,
            };
        }
    }
    let policy = if ch.policy == RecordPolicy::Continuous { RecordPolicy::Motion } else { ch.policy };
    // `off` (always, or by schedule now) starts and extends nothing; ends still close what is
    // open, so a recording begun before a schedule turned the channel off ends as usual.
    let off = policy == RecordPolicy::Off;
    match input {
        Input::MotionStart { .. } | Input::Objects { .. } if off => Action::Nothing,
        Input::MotionStart { event, ts_ms } => {
            if let Some(rec) = open.filter(|r| r.accepts(*ts_ms, rules)) {
                let mut rec = rec.clone();
                rec.join_event(event, *ts_ms);
                return Action::Update(rec);
            }
            if policy != RecordPolicy::Motion {
                return Action::Nothing; // `objects` waits for a wanted object
            }
            let trigger =
                RecordTrigger { kind: TriggerKind::Motion, motion_event: event.clone(), ts_ms: *ts_ms, labels: vec![] };
            Action::Create(Recording::new(ch.channel, trigger, Some(event), *ts_ms, active, rules, now))
        }
        Input::MotionEnd { event, .. } | Input::Orphan { event, .. } => {
            let Some(rec) = active.filter(|r| r.events.contains(event)) else { return Action::Nothing };
            let mut rec = rec.clone();
            let last = match input {
                Input::MotionEnd { last_motion_ms, .. } => *last_motion_ms,
                // As long as the watchdog could not rule activity out.
                Input::Orphan { last_ms, .. } => rec.last_activity_ms.max(*last_ms),
                _ => unreachable!("matched above"),
            };
            if matches!(input, Input::Orphan { .. }) {
                if !rec.open_events.contains(event) {
                    return Action::Nothing;
                }
                rec.notes.push(format!("motion event {event} closed without its end (worker lost?)"));
            }
            rec.end_event(event, last, rules);
            if rec == *active.expect("filtered above") {
                Action::Nothing
            } else {
                Action::Update(rec)
            }
        }
        Input::Objects { event: motion, frame_ts_ms, labels, view } => {
            let wants = policy == RecordPolicy::Objects || ch.priority;
            if !wants || labels.is_empty() {
                return Action::Nothing;
            }
            if let Some(rec) = open.filter(|r| r.accepts(*frame_ts_ms, rules)) {
                let mut rec = rec.clone();
                if view.in_progress && rec.open_events.contains(motion) {
                    rec.extend(*frame_ts_ms, false, rules);
                } else if view.in_progress && policy == RecordPolicy::Objects {
                    // The activity's motion event keeps the recording open until it ends.
                    rec.join_event(motion, *frame_ts_ms);
                } else if *frame_ts_ms - rec.last_motion_ms <= rules.max_hold_ms {
                    // A wanted object still in view (YOLO samples while the backup is open).
                    rec.extend(*frame_ts_ms, false, rules);
                } else {
                    return Action::Nothing; // held long enough without motion
                }
                return if rec == *open.expect("filtered above") { Action::Nothing } else { Action::Update(rec) };
            }
            if policy != RecordPolicy::Objects || *frame_ts_ms - view.last_motion_ms > rules.max_hold_ms {
                return Action::Nothing;
            }
            let trigger = RecordTrigger {
                kind: TriggerKind::Objects,
                motion_event: motion.clone(),
                ts_ms: *frame_ts_ms,
                labels: labels.clone(),
            };
            let open_event = view.in_progress.then_some(motion.as_str());
            // A verdict for an event already over: its end is known.
            let last = if view.in_progress { *frame_ts_ms } else { view.last_motion_ms };
            Action::Create(Recording::new(ch.channel, trigger, open_event, last, active, rules, now))
        }
    }
}

/// What the orphan watchdog saw, on the decider's clock.
#[derive(Debug, Default)]
pub struct Watch {
    /// Per channel: since when no worker reported it.
    unreported_since: HashMap<u32, Instant>,
    /// Per motion event in progress: the latest status of its own worker that showed it so.
    last_in_progress_ms: HashMap<String, i64>,
    /// Per motion event: since when another worker holds its channel.
    taken_over_since: HashMap<String, Instant>,
}

/// A motion event still open in a channel's recording, and who reported it (from
/// `<ns>:record:mevent:<event>`).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenEvent {
    pub event: String,
    /// The worker that published its start.
    pub worker: Option<String>,
    /// Its start's sequence number in that worker's channel status (`None`: unknown).
    pub seq: Option<u64>,
}

/// A channel whose active recording is open with motion events in progress, as the watchdog
/// reads it: the recording's open events and the channel's status (`None`: no worker reports
/// the channel). Gathered only once the decider has read the motion stream up to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub channel: u32,
    pub open_events: Vec<OpenEvent>,
    pub status: Option<ChannelStatus>,
}

/// A motion event the watchdog found over without its `end`: its activity lasted at least
/// until `last_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub channel: u32,
    pub event: String,
    pub last_ms: i64,
}

impl Watch {
    /// A channel with nothing open: its unreported time no longer counts.
    pub fn forget_channel(&mut self, channel: u32) {
        self.unreported_since.remove(&channel);
    }

    /// One round of the orphan watchdog (see the module docs): which open events are over, at
    /// `now` on the decider's monotonic clock. Pure but for what it remembers between rounds.
    pub fn orphans(&mut self, candidates: &[Candidate], now: Instant, end_quiet_ms: i64) -> Vec<Orphan> {
        let mut out = Vec::new();
        let mut watched = std::collections::HashSet::new();
        for c in candidates {
            let ch = c.channel;
            match &c.status {
                Some(s) => {
                    self.unreported_since.remove(&ch);
                    for open in &c.open_events {
                        let event = &open.event;
                        watched.insert(event.clone());
                        let last_known = self.last_in_progress_ms.get(event).copied().unwrap_or(0);
                        if s.active_event.as_deref() == Some(event) {
                            self.last_in_progress_ms.insert(event.clone(), s.updated_ms.max(last_known));
                            continue;
                        }
                        let other_worker = open.worker.as_deref().is_some_and(|w| w != s.worker);
                        if other_worker {
                            // Taken over: over once the new detector has watched the scene
                            // for `end_quiet_secs`; the activity may have gone on until it
                            // started watching.
                            let since = *self.taken_over_since.entry(event.clone()).or_insert(now);
                            match s.analysing_since_ms {
                                Some(from) if s.updated_ms - from >= end_quiet_ms => out.push(Orphan {
                                    channel: ch,
                                    event: event.clone(),
                                    last_ms: from.max(last_known),
                                }),
                                _ if now.saturating_duration_since(since) >= TAKEOVER_WAIT => {
                                    out.push(Orphan { channel: ch, event: event.clone(), last_ms: last_known })
                                }
                                _ => {}
                            }
                        } else if open.seq.is_some_and(|q| s.seq >= q) {
                            // Its own worker has moved past it: the end was lost.
                            out.push(Orphan {
                                channel: ch,
                                event: event.clone(),
                                last_ms: last_known.max(s.last_motion_ms.unwrap_or(0)),
                            });
                        }
                    }
                }
                None => {
                    let since = *self.unreported_since.entry(ch).or_insert(now);
                    if now.saturating_duration_since(since) >= ORPHAN_GRACE {
                        out.extend(c.open_events.iter().map(|e| Orphan {
                            channel: ch,
                            event: e.event.clone(),
                            last_ms: self.last_in_progress_ms.get(&e.event).copied().unwrap_or(0),
                        }));
                    } else {
                        watched.extend(c.open_events.iter().map(|e| e.event.clone()));
                    }
                }
            }
        }
        self.last_in_progress_ms.retain(|e, _| watched.contains(e));
        self.taken_over_since.retain(|e, _| watched.contains(e));
        out
    }
}

pub struct Decider {
    conn: ConnectionManager,
    keys: Keys,
    config: Config,
    rules: Rules,
    store: RecordingStore,
    queue: Queue<RecordJob>,
    watch: Watch,
    /// `record.timezone`, in which schedules are read.
    timezone: jiff::tz::TimeZone,
    clock: SharedClock,
}

impl Decider {
    pub fn new(config: &Config, conn: ConnectionManager, keys: Keys, clock: SharedClock) -> Self {
        let queue = Queue::new(conn.clone(), &keys, &config.queue);
        let store = RecordingStore::new(conn.clone(), keys.clone());
        Self {
            conn,
            keys,
            rules: Rules::from_config(config),
            config: config.clone(),
            store,
            queue,
            watch: Watch::default(),
            timezone: cctv_common::timefmt::zone(&config.record.timezone).unwrap_or(jiff::tz::TimeZone::UTC),
            clock,
        }
    }

    /// Reads what arrived on the result streams (waiting up to `block_ms`) and acts on it.
    /// Returns how many entries were handled.
    pub async fn step(&mut self, block_ms: usize) -> anyhow::Result<usize> {
        let result = self.step_inner(block_ms).await;
        if result.is_err() {
            // Redis blinked: what the watchdog saw before no longer counts.
            self.watch = Watch::default();
        }
        result
    }

    async fn step_inner(&mut self, block_ms: usize) -> anyhow::Result<usize> {
        self.keep_continuous().await?;
        let streams = [self.keys.motion_events(), self.keys.object_events()];
        let ids = self.cursors(&streams).await?;
        let opts = StreamReadOptions::default().block(block_ms).count(200);
        let reply: Option<StreamReadReply> = self.conn.xread_options(&streams, &ids, &opts).await?;
        let cursor_key = self.keys.record_cursor();
        let mut handled = 0;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in &key.ids {
                if key.key == streams[0] {
                    if let Some(m) = decode_entry::<MotionEvent>(&entry.map) {
                        self.on_motion(&m).await?;
                    }
                } else if let Some(o) = decode_entry::<ObjectEvent>(&entry.map) {
                    self.on_objects(&o).await?;
                }
                let _: () = self.conn.hset(&cursor_key, &key.key, &entry.id).await?;
                handled += 1;
            }
        }
        self.close_orphans().await?;
        Ok(handled)
    }

    /// Opens the next slot of every channel that records continuously now (its schedule read
    /// at the decider's clock), where [`next_continuous_slot`] says one is due.
    pub async fn keep_continuous(&mut self) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        let file_ms = (self.config.record.max_file_seconds * 1000.0) as i64;
        let continuous: Vec<u32> = self
            .config
            .channels
            .iter()
            .filter(|c| c.record_at(now, &self.timezone) == RecordPolicy::Continuous)
            .map(|c| c.id)
            .collect();
        for channel in continuous {
            let active = self.store.active(channel).await?;
            let latest = active.as_ref().map(|v| &v.rec);
            let Some((start, end)) = next_continuous_slot(latest, now, file_ms, self.rules.pre_roll_ms) else {
                continue;
            };
            let floor = latest.and_then(|r| r.end_ms).unwrap_or(0);
            let slot = Recording::continuous(channel, start, end, floor, now);
            if self.store.put(0, &slot, true).await?.is_none() {
                tracing::debug!(channel, recording = %slot.id, "continuous slot exists already");
            }
            self.push_job(&slot).await?;
        }
        Ok(())
    }

    /// Stream positions; a fresh cluster starts at the streams' ends (history is not re-decided).
    async fn cursors(&mut self, streams: &[String]) -> anyhow::Result<Vec<String>> {
        Ok(cctv_common::events::stream_positions(&mut self.conn, &self.keys.record_cursor(), streams).await?)
    }

    async fn last_id(&mut self, stream: &str) -> anyhow::Result<String> {
        Ok(cctv_common::events::last_stream_id(&mut self.conn, stream).await?)
    }

    /// The channel's rules for `input`: its record policy at the input's time (schedules).
    fn channel_rules(&self, channel: u32, input: &Input) -> Option<ChannelRules> {
        let at = match input {
            Input::MotionStart { ts_ms, .. } => *ts_ms,
            Input::MotionEnd { last_motion_ms, .. } => *last_motion_ms,
            Input::Objects { frame_ts_ms, .. } => *frame_ts_ms,
            Input::Orphan { last_ms, .. } => *last_ms,
        };
        let c = self.config.channel(channel)?;
        Some(ChannelRules { channel, policy: c.record_at(at, &self.timezone), priority: c.priority })
    }

    /// Motion events drive recordings. With `record_zones`, an event counts as a start only
    /// from its first frame in one of those zones (its `start`, or the `zone` entry that
    /// reported it), so activity elsewhere is logged but not backed up.
    async fn on_motion(&mut self, m: &MotionEvent) -> anyhow::Result<()> {
        let state = self.keys.record_motion_event(&m.event_id);
        let records = self.config.channel(m.channel).is_some_and(|c| c.records_in(&m.zones));
        let input = match m.kind {
            MotionEventKind::Start => {
                mevent::started(&mut self.conn, &state, m, records).await?;
                if !records {
                    return Ok(());
                }
                Input::MotionStart { event: m.event_id.clone(), ts_ms: m.ts_ms }
            }
            MotionEventKind::Zone => {
                if !records || !mevent::enters_zone(&mut self.conn, &state).await? {
                    return Ok(()); // not a wanted zone, or already counted (or start unseen)
                }
                Input::MotionStart { event: m.event_id.clone(), ts_ms: m.ts_ms }
            }
            MotionEventKind::End => {
                let last = m.last_motion_ms.unwrap_or(m.ts_ms);
                mevent::ended(&mut self.conn, &state, last).await?;
                Input::MotionEnd { event: m.event_id.clone(), last_motion_ms: last }
            }
        };
        self.apply(m.channel, &input).await
    }

    async fn on_objects(&mut self, o: &ObjectEvent) -> anyhow::Result<()> {
        let Some(ch) = self.config.channel(o.channel) else { return Ok(()) };
        let wanted = self.config.wanted_labels(ch);
        let mut labels: Vec<String> = o
            .detections
            .iter()
            .filter(|d| wanted.contains(&d.label) && ch.records_in(&d.zones))
            .map(|d| d.label.clone())
            .collect();
        labels.sort();
        labels.dedup();
        if labels.is_empty() {
            return Ok(());
        }
        let state = self.keys.record_motion_event(&o.motion_event);
        let view = mevent::view(&mut self.conn, &state, o.frame_ts_ms).await?;
        let input = Input::Objects { event: o.motion_event.clone(), frame_ts_ms: o.frame_ts_ms, labels, view };
        self.apply(o.channel, &input).await
    }

    /// Decides on `input` against the channel's current recording and writes the result; a
    /// conflicting write (the record worker changed it meanwhile) re-reads and decides again.
    async fn apply(&mut self, channel: u32, input: &Input) -> anyhow::Result<()> {
        let Some(rules) = self.channel_rules(channel, input) else { return Ok(()) };
        for _ in 0..20 {
            let active = self.store.active(channel).await?;
            let action = decide(input, active.as_ref().map(|v| &v.rec), &rules, &self.rules, self.clock.now_ms());
            match action {
                Action::Nothing => return Ok(()),
                Action::Update(rec) => {
                    let version = active.as_ref().map_or(0, |v| v.version);
                    if self.store.put(version, &rec, false).await?.is_some() {
                        if matches!(input, Input::Objects { .. }) {
                            tracing::debug!(channel, recording = %rec.id, end_ms = ?rec.end_ms, "wanted object in view");
                        } else {
                            tracing::info!(channel, recording = %rec.id, end_ms = ?rec.end_ms,
                                open_events = rec.open_events.len(), input = ?InputKind(input), "recording updated");
                        }
                        return Ok(());
                    }
                }
                Action::Create(rec) => {
                    if self.store.put(0, &rec, true).await?.is_none() {
                        // Created before: this event was read again (a new leader). Its job
                        // was pushed with the recording id as key, so pushing again is a no-op.
                        tracing::debug!(channel, recording = %rec.id, "recording exists already");
                    }
                    self.push_job(&rec).await?;
                    return Ok(());
                }
            }
        }
        anyhow::bail!("channel {channel}: recording changed under every attempt to decide on it")
    }

    async fn push_job(&mut self, rec: &Recording) -> anyhow::Result<()> {
        let Some(ch) = self.config.channel(rec.channel) else { return Ok(()) };
        let playlist_url = RecordJob::playlist_url_for(&mut self.conn, &self.keys, &self.config, ch).await?;
        let job = RecordJob {
            recording: rec.id.clone(),
            channel: rec.channel,
            playlist_url,
            start_ms: rec.start_ms,
            trigger: rec.trigger.clone(),
        };
        if let Some(id) = self.queue.push_unique(&job, &rec.id).await? {
            tracing::info!(channel = rec.channel, recording = %rec.id, job = %id, trigger = ?rec.trigger.kind,
                labels = ?rec.trigger.labels, start_ms = rec.start_ms, floor_ms = rec.floor_ms, "backup started");
        }
        Ok(())
    }

    /// Ends motion events that will never end by themselves (see the module docs): reads what
    /// [`Watch::orphans`] decides on, then applies its verdicts.
    async fn close_orphans(&mut self) -> anyhow::Result<()> {
        let mut open = Vec::new();
        for ch in self.config.channels.iter().map(|c| c.id).collect::<Vec<_>>() {
            let Some(active) = self.store.active(ch).await? else { continue };
            if active.rec.state != RecordingState::Open || active.rec.open_events.is_empty() {
                self.watch.forget_channel(ch);
                continue;
            }
            let status: Option<String> = self.conn.get(self.keys.channel_status(ch)).await?;
            let status: Option<ChannelStatus> = status.and_then(|s| serde_json::from_str(&s).ok());
            open.push((ch, active.rec, status));
        }
        if open.is_empty() {
            return Ok(());
        }
        // The statuses were read first: if the stream holds nothing past the cursor now, every
        // event a status covers has been decided on.
        let motion = self.keys.motion_events();
        let cursor: Option<String> = self.conn.hget(self.keys.record_cursor(), &motion).await?;
        let last = self.last_id(&motion).await?;
        if last != "0-0" && cursor.as_deref() != Some(last.as_str()) {
            return Ok(());
        }
        let mut candidates = Vec::new();
        let mut recordings = HashMap::new();
        for (ch, rec, status) in open {
            let mut open_events = Vec::new();
            for event in &rec.open_events {
                let (worker, seq) = self.event_origin(event).await?;
                open_events.push(OpenEvent { event: event.clone(), worker, seq });
            }
            candidates.push(Candidate { channel: ch, open_events, status });
            recordings.insert(ch, rec.id);
        }
        let end_quiet_ms = (self.config.motion.end_quiet_secs * 1000.0) as i64;
        for Orphan { channel, event, last_ms } in self.watch.orphans(&candidates, self.clock.now(), end_quiet_ms) {
            tracing::warn!(channel, recording = %recordings.get(&channel).map_or("", |r| r.as_str()), event = %event, last_ms,
                "motion event over without its end (its worker is gone); the recording ends after its last activity");
            self.apply(channel, &Input::Orphan { event, last_ms }).await?;
        }
        Ok(())
    }

    async fn event_origin(&mut self, event: &str) -> anyhow::Result<(Option<String>, Option<u64>)> {
        Ok(mevent::origin(&mut self.conn, &self.keys.record_motion_event(event)).await?)
    }
}

/// `<ns>:record:mevent:<event>`: what the decider knows of a motion event (a hash, TTL a
/// day), written and read only here.
mod mevent {
    use cctv_common::events::MotionEvent;
    use redis::aio::ConnectionManager;
    use redis::AsyncCommands;

    use super::{EventView, STATE_TTL_SECS};

    const CHANNEL: &str = "channel";
    const STARTED_MS: &str = "started_ms";
    const ENDED: &str = "ended";
    const LAST_MOTION_MS: &str = "last_motion_ms";
    const WORKER: &str = "worker";
    const SEQ: &str = "seq";
    /// 0 until the event touched one of the channel's `record_zones`.
    const IN_ZONE: &str = "in_zone";

    /// Its start: who published it, with which sequence number, and whether it counts yet.
    pub(super) async fn started(
        conn: &mut ConnectionManager,
        key: &str,
        m: &MotionEvent,
        in_zone: bool,
    ) -> redis::RedisResult<()> {
        redis::pipe()
            .hset_multiple(
                key,
                &[
                    (CHANNEL, m.channel.to_string()),
                    (STARTED_MS, m.ts_ms.to_string()),
                    (ENDED, "0".into()),
                    (WORKER, m.worker.clone()),
                    (SEQ, m.seq.to_string()),
                    (IN_ZONE, u8::from(in_zone).to_string()),
                ],
            )
            .expire(key, STATE_TTL_SECS)
            .query_async(conn)
            .await
    }

    /// The event entered a wanted zone: `true` the first time (it counts from now), `false` if
    /// it counted already or its start was never seen.
    pub(super) async fn enters_zone(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<bool> {
        let in_zone: Option<u8> = conn.hget(key, IN_ZONE).await?;
        if in_zone != Some(0) {
            return Ok(false);
        }
        let _: () = conn.hset(key, IN_ZONE, 1).await?;
        Ok(true)
    }

    pub(super) async fn ended(conn: &mut ConnectionManager, key: &str, last_motion_ms: i64) -> redis::RedisResult<()> {
        redis::pipe()
            .hset_multiple(key, &[(ENDED, 1), (LAST_MOTION_MS, last_motion_ms)])
            .expire(key, STATE_TTL_SECS)
            .query_async(conn)
            .await
    }

    /// The event as an object frame of it at `frame_ts_ms` sees it (unknown: over at that frame).
    pub(super) async fn view(
        conn: &mut ConnectionManager,
        key: &str,
        frame_ts_ms: i64,
    ) -> redis::RedisResult<EventView> {
        let (ended, started, last_motion): (Option<i64>, Option<i64>, Option<i64>) =
            redis::pipe().hget(key, ENDED).hget(key, STARTED_MS).hget(key, LAST_MOTION_MS).query_async(conn).await?;
        Ok(EventView { in_progress: ended == Some(0), last_motion_ms: last_motion.or(started).unwrap_or(frame_ts_ms) })
    }

    /// Who published its start, and its sequence number (`None`: unknown).
    pub(super) async fn origin(
        conn: &mut ConnectionManager,
        key: &str,
    ) -> redis::RedisResult<(Option<String>, Option<u64>)> {
        let (worker, seq): (Option<String>, Option<u64>) =
            redis::pipe().hget(key, WORKER).hget(key, SEQ).query_async(conn).await?;
        Ok((worker, seq.filter(|&s| s > 0)))
    }
}

/// Input names for logs, without their payload.
struct InputKind<'a>(&'a Input);

impl std::fmt::Debug for InputKind<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Input::MotionStart { .. } => "motion start",
            Input::MotionEnd { .. } => "motion end",
            Input::Objects { .. } => "objects",
            Input::Orphan { .. } => "orphan",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod watchdog {
        use super::*;
        use cctv_common::events::ChannelState;

        const QUIET_MS: i64 = 3_000;

        fn status(worker: &str, updated_ms: i64, active: Option<&str>, seq: u64, since: Option<i64>) -> ChannelStatus {
            ChannelStatus {
                channel: 1,
                online: true,
                state: ChannelState::Idle,
                reason: None,
                fps: 5.0,
                last_frame_ms: Some(updated_ms),
                last_motion_ms: None,
                analysing_since_ms: since,
                frames_total: 0,
                frames_gated: 0,
                yolo_frames_skipped: 0,
                worker: worker.into(),
                batch: "b0".into(),
                updated_ms,
                active_event: active.map(str::to_owned),
                seq,
            }
        }

        fn open(event: &str, worker: &str, seq: u64) -> OpenEvent {
            OpenEvent { event: event.into(), worker: Some(worker.into()), seq: Some(seq) }
        }

        fn candidate(status: Option<ChannelStatus>) -> Vec<Candidate> {
            vec![Candidate { channel: 1, open_events: vec![open("e1", "w1", 7)], status }]
        }

        #[test]
        fn an_event_its_worker_still_shows_in_progress_is_not_over() {
            let (mut w, t0) = (Watch::default(), Instant::now());
            let c = candidate(Some(status("w1", 10_000, Some("e1"), 7, Some(1_000))));
            assert!(w.orphans(&c, t0, QUIET_MS).is_empty());
            assert!(
                w.orphans(&c, t0 + Duration::from_secs(600), QUIET_MS).is_empty(),
                "no clock ends a reported event"
            );
        }

        #[test]
        fn an_event_its_own_worker_moved_past_is_over_at_its_last_known_activity() {
            let (mut w, t0) = (Watch::default(), Instant::now());
            // Seen in progress at 10 s, then the worker's status moved on (seq 8) without an end.
            assert!(w.orphans(&candidate(Some(status("w1", 10_000, Some("e1"), 7, Some(0)))), t0, QUIET_MS).is_empty());
            let mut s = status("w1", 12_000, None, 8, Some(0));
            s.last_motion_ms = Some(11_000);
            let over = w.orphans(&candidate(Some(s)), t0, QUIET_MS);
            assert_eq!(over, vec![Orphan { channel: 1, event: "e1".into(), last_ms: 11_000 }]);
        }

        #[test]
        fn a_status_not_past_the_events_start_does_not_end_it() {
            let mut w = Watch::default();
            // seq 6 < 7: the status predates the event's start (read before it): not over.
            let c = candidate(Some(status("w1", 12_000, None, 6, Some(0))));
            assert!(w.orphans(&c, Instant::now(), QUIET_MS).is_empty());
        }

        #[test]
        fn a_takeover_ends_the_event_only_once_the_new_detector_watched_for_end_quiet_secs() {
            let (mut w, t0) = (Watch::default(), Instant::now());
            assert!(w.orphans(&candidate(Some(status("w1", 10_000, Some("e1"), 7, Some(0)))), t0, QUIET_MS).is_empty());
            // w2 took the channel over and started watching at 20 s.
            let watching = |updated| candidate(Some(status("w2", updated, None, 1, Some(20_000))));
            assert!(w.orphans(&watching(22_000), t0, QUIET_MS).is_empty(), "watched 2 s < 3 s");
            let over = w.orphans(&watching(23_000), t0, QUIET_MS);
            // Its activity counts until the new detector started watching.
            assert_eq!(over, vec![Orphan { channel: 1, event: "e1".into(), last_ms: 20_000 }]);
        }

        #[test]
        fn a_takeover_whose_detector_never_sees_a_picture_ends_the_event_after_takeover_wait() {
            let (mut w, t0) = (Watch::default(), Instant::now());
            assert!(w.orphans(&candidate(Some(status("w1", 10_000, Some("e1"), 7, Some(0)))), t0, QUIET_MS).is_empty());
            let blind = candidate(Some(status("w2", 30_000, None, 0, None)));
            assert!(w.orphans(&blind, t0, QUIET_MS).is_empty());
            assert!(w.orphans(&blind, t0 + TAKEOVER_WAIT - Duration::from_millis(1), QUIET_MS).is_empty());
            let over = w.orphans(&blind, t0 + TAKEOVER_WAIT, QUIET_MS);
            // Until its own worker last reported it in progress.
            assert_eq!(over, vec![Orphan { channel: 1, event: "e1".into(), last_ms: 10_000 }]);
        }

        #[test]
        fn a_channel_no_worker_reports_is_over_after_the_grace_on_the_deciders_clock() {
            let (mut w, t0) = (Watch::default(), Instant::now());
            assert!(w.orphans(&candidate(Some(status("w1", 10_000, Some("e1"), 7, Some(0)))), t0, QUIET_MS).is_empty());
            let gone = candidate(None);
            assert!(w.orphans(&gone, t0, QUIET_MS).is_empty());
            assert!(w.orphans(&gone, t0 + ORPHAN_GRACE - Duration::from_millis(1), QUIET_MS).is_empty());
            let over = w.orphans(&gone, t0 + ORPHAN_GRACE, QUIET_MS);
            assert_eq!(over, vec![Orphan { channel: 1, event: "e1".into(), last_ms: 10_000 }]);
        }

        #[test]
        fn a_report_in_between_restarts_the_grace() {
            let (mut w, t0) = (Watch::default(), Instant::now());
            let gone = candidate(None);
            assert!(w.orphans(&gone, t0, QUIET_MS).is_empty());
            // The worker reports again (still in progress), then vanishes again.
            let back = candidate(Some(status("w1", 10_000, Some("e1"), 7, Some(0))));
            assert!(w.orphans(&back, t0 + Duration::from_secs(10), QUIET_MS).is_empty());
            assert!(w.orphans(&gone, t0 + Duration::from_secs(20), QUIET_MS).is_empty());
            assert!(w
                .orphans(&gone, t0 + Duration::from_secs(20) + ORPHAN_GRACE - Duration::from_millis(1), QUIET_MS)
                .is_empty());
            assert_eq!(w.orphans(&gone, t0 + Duration::from_secs(20) + ORPHAN_GRACE, QUIET_MS).len(), 1);
        }

        #[test]
        fn a_channel_with_nothing_open_forgets_its_unreported_time() {
            let (mut w, t0) = (Watch::default(), Instant::now());
            assert!(w.orphans(&candidate(None), t0, QUIET_MS).is_empty());
            w.forget_channel(1);
            // A new event later: the grace counts from now, not from the old sighting.
            let later = t0 + Duration::from_secs(60);
            assert!(w.orphans(&candidate(None), later, QUIET_MS).is_empty());
            assert_eq!(w.orphans(&candidate(None), later + ORPHAN_GRACE, QUIET_MS).len(), 1);
        }
    }

    const RULES: Rules = Rules { pre_roll_ms: 5_000, post_roll_ms: 5_000, max_hold_ms: 60_000 };
    const MOTION: ChannelRules = ChannelRules { channel: 1, policy: RecordPolicy::Motion, priority: false };
    const OBJECTS: ChannelRules = ChannelRules { channel: 1, policy: RecordPolicy::Objects, priority: true };

    /// Feeds inputs at their times through `decide`, keeping the channel's recordings as the
    /// store would; `close_at` lets the record worker close what is closable at that time.
    struct Sim {
        ch: ChannelRules,
        recs: Vec<Recording>,
    }

    impl Sim {
        fn new(ch: ChannelRules) -> Self {
            Self { ch, recs: Vec::new() }
        }
        fn feed(&mut self, input: Input, now: i64) -> &'static str {
            match decide(&input, self.recs.last(), &self.ch, &RULES, now) {
                Action::Nothing => "nothing",
                Action::Update(r) => {
                    *self.recs.last_mut().unwrap() = r;
                    "update"
                }
                Action::Create(r) => {
                    self.recs.push(r);
                    "create"
                }
            }
        }
        fn close_at(&mut self, now: i64) {
            if let Some(r) = self.recs.last_mut() {
                if r.closable(now, &RULES) {
                    let end = r.end_ms.expect("closable");
                    r.close(now, end, None);
                }
            }
        }
        fn start(&mut self, e: &str, t: i64) -> &'static str {
            self.close_at(t);
            self.feed(Input::MotionStart { event: e.into(), ts_ms: t }, t)
        }
        fn end(&mut self, e: &str, last: i64) -> &'static str {
            self.close_at(last + 3_000);
            self.feed(Input::MotionEnd { event: e.into(), last_motion_ms: last }, last + 3_000)
        }
        fn objects(&mut self, e: &str, t: i64, in_progress: bool, last_motion: i64) -> &'static str {
            self.close_at(t);
            let view = EventView { in_progress, last_motion_ms: last_motion };
            self.feed(Input::Objects { event: e.into(), frame_ts_ms: t, labels: vec!["person".into()], view }, t)
        }
    }

    #[test]
    fn continuous_activity_in_several_events_is_one_recording() {
        let mut s = Sim::new(MOTION);
        assert_eq!(s.start("a", 10_000), "create");
        assert_eq!(s.end("a", 20_000), "update");
        // Resumes 8 s after a's last motion: before end (25 s) + pre-roll (30 s).
        assert_eq!(s.start("b", 28_000), "update");
        assert_eq!(s.end("b", 40_000), "update");
        assert_eq!(s.start("c", 49_000), "update", "49 s < 45 s end + 5 s window");
        assert_eq!(s.end("c", 60_000), "update");
        assert_eq!(s.recs.len(), 1);
        let r = &s.recs[0];
        assert_eq!((r.start_ms, r.end_ms), (5_000, Some(65_000)));
        assert_eq!(r.events, ["a", "b", "c"]);
    }

    #[test]
    fn activity_after_the_join_window_starts_back_to_back_never_overlapping() {
        let mut s = Sim::new(MOTION);
        s.start("a", 10_000);
        s.end("a", 20_000); // end 25 s, closable after 30 s
        assert_eq!(s.start("b", 33_000), "create");
        assert_eq!(s.recs[0].state, RecordingState::Closed);
        let b = &s.recs[1];
        assert_eq!(b.floor_ms, 25_000);
        assert_eq!(b.start_ms, 28_000, "its own pre-roll, after a's end");
        assert!(b.start_ms >= s.recs[0].end_ms.unwrap());
    }

    #[test]
    fn a_closed_recording_is_never_joined() {
        let mut s = Sim::new(MOTION);
        s.start("a", 10_000);
        s.end("a", 20_000);
        // Closed early by its worker; then activity inside the old join window: a new
        // recording, starting at a's end.
        s.recs[0].close(26_000, 26_000, Some("stalled".into()));
        assert_eq!(s.feed(Input::MotionStart { event: "b".into(), ts_ms: 27_000 }, 27_000), "create");
        assert_eq!(s.recs[1].start_ms, 25_000);
        assert_eq!(s.recs[0].events, ["a"]);
    }

    #[test]
    fn an_orphaned_event_ends_the_recording_after_its_last_possible_activity() {
        let mut s = Sim::new(MOTION);
        s.start("a", 10_000);
        // Nothing known after its start.
        assert_eq!(s.feed(Input::Orphan { event: "a".into(), last_ms: 0 }, 40_000), "update");
        assert_eq!(s.recs[0].end_ms, Some(15_000));
        assert_eq!(s.feed(Input::Orphan { event: "a".into(), last_ms: 0 }, 41_000), "nothing");
        // Reported in progress until 30 s, or a new detector watching from then: activity
        // cannot be ruled out before, so the post-roll counts from there.
        let mut u = Sim::new(MOTION);
        u.start("a", 10_000);
        assert_eq!(u.feed(Input::Orphan { event: "a".into(), last_ms: 30_000 }, 40_000), "update");
        assert_eq!(u.recs[0].end_ms, Some(35_000));
        // The orphan watchdog never touches an event that is not in progress.
        let mut t = Sim::new(MOTION);
        t.start("a", 10_000);
        t.start("b", 12_000);
        assert_eq!(t.feed(Input::Orphan { event: "a".into(), last_ms: 0 }, 13_000), "update");
        assert_eq!(t.recs[0].end_ms, None, "b still holds it open");
    }

    #[test]
    fn a_takeover_detector_seeing_motion_before_the_orphan_closes_keeps_one_recording() {
        // a's worker is lost at ~20 s; the new detector watches from 25 s and sees motion at
        // 26 s (its event b) before the watchdog closes a at 28 s (end_quiet after 25 s).
        let mut s = Sim::new(MOTION);
        s.start("a", 10_000);
        assert_eq!(s.start("b", 26_000), "update");
        assert_eq!(s.feed(Input::Orphan { event: "a".into(), last_ms: 25_000 }, 28_000), "update");
        assert_eq!(s.recs.len(), 1);
        assert_eq!(s.recs[0].end_ms, None, "b holds it open");
        assert_eq!(s.end("b", 40_000), "update");
        assert_eq!(s.recs[0].end_ms, Some(45_000));
        assert_eq!(s.recs[0].events, ["a", "b"]);
    }

    #[test]
    fn objects_policy_opens_on_a_wanted_object_and_follows_motion() {
        let mut s = Sim::new(OBJECTS);
        assert_eq!(s.start("a", 10_000), "nothing");
        assert_eq!(s.objects("a", 11_000, true, 10_000), "create");
        assert_eq!(s.recs[0].start_ms, 6_000);
        assert_eq!(s.end("a", 20_000), "update");
        // Next person within the window: their motion joins before YOLO even answers.
        assert_eq!(s.start("b", 27_000), "update");
        assert_eq!(s.end("b", 35_000), "update");
        assert_eq!(s.recs.len(), 1);
        assert_eq!(s.recs[0].end_ms, Some(40_000));
    }

    #[test]
    fn a_wanted_object_in_view_holds_the_recording_up_to_max_hold() {
        let mut s = Sim::new(OBJECTS);
        s.objects("a", 10_000, true, 10_000);
        s.end("a", 12_000); // end 17 s
                            // YOLO keeps sampling at 1 fps: a person standing still.
        for t in (13_000..=72_000).step_by(1_000) {
            assert_eq!(s.objects("a", t, false, 12_000), "update", "{t}");
        }
        assert_eq!(s.objects("a", 73_000, false, 12_000), "nothing", "60 s after the last motion");
        assert_eq!(s.recs[0].end_ms, Some(72_000 + RULES.post_roll_ms));
        assert_eq!(s.recs.len(), 1);
    }

    #[test]
    fn late_verdict_for_an_event_already_over_records_it_with_its_end() {
        let mut s = Sim::new(OBJECTS);
        s.start("a", 10_000);
        s.feed(Input::MotionEnd { event: "a".into(), last_motion_ms: 12_000 }, 15_000);
        assert_eq!(s.objects("a", 11_000, false, 12_000), "create");
        assert_eq!(s.recs[0].end_ms, Some(17_000));
        assert!(s.recs[0].open_events.is_empty());
    }

    #[test]
    fn a_recording_open_when_a_schedule_turns_the_channel_off_still_ends() {
        let mut s = Sim::new(MOTION);
        s.start("a", 10_000);
        // From here the schedule says off: nothing new starts, nothing is extended by objects,
        // but a's end still closes its recording.
        s.ch.policy = RecordPolicy::Off;
        assert_eq!(s.start("b", 12_000), "nothing");
        assert_eq!(s.end("a", 20_000), "update");
        assert_eq!(s.recs[0].end_ms, Some(25_000));
        assert_eq!(s.recs[0].events, ["a"]);
    }

    #[test]
    fn off_channels_never_record_and_motion_channels_ignore_objects_unless_priority() {
        let off = ChannelRules { channel: 1, policy: RecordPolicy::Off, priority: true };
        let mut s = Sim::new(off);
        assert_eq!(s.start("a", 10_000), "nothing");
        assert_eq!(s.objects("a", 10_500, true, 10_000), "nothing");
        let mut m = Sim::new(MOTION);
        m.start("a", 10_000);
        m.end("a", 11_000);
        assert_eq!(m.objects("a", 13_000, false, 11_000), "nothing", "not a priority channel");
        let mut p = Sim::new(ChannelRules { priority: true, ..MOTION });
        p.start("a", 10_000);
        p.end("a", 11_000);
        assert_eq!(p.objects("a", 13_000, false, 11_000), "update");
        assert_eq!(p.recs[0].end_ms, Some(18_000));
    }

    /// Opens the next continuous slot the way `Decider::keep_continuous` does.
    fn tick(s: &mut Sim, now: i64) {
        s.close_at(now);
        if let Some((start, end)) = next_continuous_slot(s.recs.last(), now, 10_000, RULES.pre_roll_ms) {
            let floor = s.recs.last().and_then(|r| r.end_ms).unwrap_or(0);
            s.recs.push(Recording::continuous(1, start, end, floor, now));
        }
    }

    #[test]
    fn a_continuous_channel_records_back_to_back_slots_and_marks_activity_on_them() {
        let mut s = Sim::new(ChannelRules { channel: 1, policy: RecordPolicy::Continuous, priority: true });
        let mut now = 101_000;
        while now <= 160_000 {
            tick(&mut s, now);
            match now {
                112_000 => assert_eq!(s.start("a", now), "update", "marked"),
                125_000 => assert_eq!(s.end("a", 122_000), "nothing", "ends move no slot"),
                131_000 => assert_eq!(s.objects("b", now, true, 130_000), "update"),
                _ => {}
            }
            now += 500;
        }
        let spans: Vec<(i64, Option<i64>)> = s.recs.iter().map(|r| (r.start_ms, r.end_ms)).collect();
        assert_eq!(
            spans,
            [
                (96_000, Some(100_000)),
                (100_000, Some(110_000)),
                (110_000, Some(120_000)),
                (120_000, Some(130_000)),
                (130_000, Some(140_000)),
                (140_000, Some(150_000)),
                (150_000, Some(160_000)),
                (160_000, Some(170_000))
            ]
        );
        assert_eq!(s.recs[2].events, ["a"]);
        assert_eq!(s.recs[4].events, ["b"]);
        assert!(s.recs.iter().all(|r| r.open_events.is_empty()));
    }

    #[test]
    fn a_schedule_turning_continuous_carries_on_from_the_activity_recording() {
        let mut s = Sim::new(MOTION);
        s.start("a", 10_000);
        s.ch.policy = RecordPolicy::Continuous;
        tick(&mut s, 12_000);
        assert_eq!(s.recs.len(), 1, "motion in progress records already");
        s.end("a", 14_000); // end 19 s
        tick(&mut s, 17_000);
        assert_eq!(s.recs.len(), 1, "its post-roll is not over");
        tick(&mut s, 19_000);
        assert_eq!((s.recs[1].start_ms, s.recs[1].end_ms), (19_000, Some(20_000 + 10_000)), "short first slot merged");
        // Back to motion by schedule: activity joins the open slot and holds it open.
        s.ch.policy = RecordPolicy::Motion;
        assert_eq!(s.start("b", 29_000), "update");
        assert_eq!(s.recs[1].end_ms, None);
        assert_eq!(s.recs.len(), 2);
    }
}

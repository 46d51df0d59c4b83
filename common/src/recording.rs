//! The recording: one activity of one channel, as the scheduler decides it and worker-record
//! writes it. One typed model ([`Recording`]), pure transitions on it (unit-tested with a clock
//! passed in), and [`RecordingStore`], the only code that touches `<ns>:record:rec:*` and
//! `<ns>:record:active:*`.
//!
//! Life of a recording:
//! 1. **Open**, `end_ms = None` while a motion event of it is in progress (`open_events`);
//! 2. **Open**, `end_ms = Some(last activity + post-roll)` once every event ended: activity that
//!    resumes before `end_ms + join_window` (the pre-roll) joins it again, so one activity is one
//!    recording and no second is in two files;
//! 3. **Closed**, by the record worker once it has every fragment that starts before `end_ms`
//!    and the join window has passed. A closed recording never changes again: joining it is
//!    impossible (the store's compare-and-set refuses a stale view), and the channel's next
//!    recording starts no earlier than its end (`floor_ms`), so back-to-back files never overlap.
//!
//! Concurrency: the scheduler's leader and the record worker holding the recording's lease both
//! write it. Every write is a compare-and-set on a version number (one Lua script), so a
//! decision made on a stale view is re-made on the fresh one.

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::jobs::{RecordTrigger, TriggerKind};
use crate::keys::Keys;

/// Closed recordings are kept this long for inspection.
pub const CLOSED_TTL_SECS: i64 = 7 * 86_400;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    /// Activity ongoing, or its end not yet past the join window.
    Open,
    /// Written up to `end_ms`; never changes again.
    Closed,
}

/// A finished part (file) of a recording, so retries skip it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartDone {
    pub part: u32,
    pub file: String,
    pub first_ms: i64,
    /// Start of the last fragment in the file: a retry continues after it.
    pub last_fragment_ms: i64,
    pub end_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recording {
    pub id: String,
    pub channel: u32,
    pub trigger: RecordTrigger,
    /// First instant the backup must contain (trigger − pre-roll, not before `floor_ms`).
    pub start_ms: i64,
    /// The channel's previous recording ended here: fragments starting before it are that
    /// recording's, never this one's (0 when there was none).
    #[serde(default)]
    pub floor_ms: i64,
    /// `None` while activity is ongoing; else last activity + post-roll.
    pub end_ms: Option<i64>,
    pub state: RecordingState,
    /// Motion events of this recording still in progress.
    #[serde(default)]
    pub open_events: Vec<String>,
    /// Every motion event that joined the recording.
    #[serde(default)]
    pub events: Vec<String>,
    /// Latest activity seen (motion or a wanted object), ms.
    pub last_activity_ms: i64,
    /// Latest motion (not object) activity, ms: an object in view holds the recording at most
    /// `motion.max_hold_secs` past it.
    pub last_motion_ms: i64,
    pub created_ms: i64,
    #[serde(default)]
    pub closed_ms: Option<i64>,
    #[serde(default)]
    pub parts: Vec<PartDone>,
    /// Why it was closed early, or a motion event closed for a lost worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Manual recordings are not the channel's active recording: activity never joins them.
    #[serde(default)]
    pub manual: bool,
}

/// Timing rules of recordings (from `[record]` and `[motion]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub pre_roll_ms: i64,
    pub post_roll_ms: i64,
    /// An object in view extends a recording at most this long after its last motion.
    pub max_hold_ms: i64,
}

impl Rules {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            pre_roll_ms: (c.record.pre_roll_secs * 1000.0) as i64,
            post_roll_ms: (c.record.post_roll_secs * 1000.0) as i64,
            max_hold_ms: (c.motion.max_hold_secs * 1000.0) as i64,
        }
    }

    /// Activity this close after a recording's end joins it: its pre-roll would overlap.
    pub fn join_window_ms(&self) -> i64 {
        self.pre_roll_ms
    }
}

impl Recording {
    /// A new recording for activity at `trigger.ts_ms`. `open_event`: the motion event in
    /// progress that keeps it open; `None` for activity already over (end known). `previous`:
    /// the channel's latest recording, whose end this one never starts before.
    pub fn new(
        channel: u32,
        trigger: RecordTrigger,
        open_event: Option<&str>,
        last_motion_ms: i64,
        previous: Option<&Recording>,
        rules: &Rules,
        now_ms: i64,
    ) -> Self {
        let floor = previous.and_then(|p| p.end_ms).unwrap_or(0);
        let activity = trigger.ts_ms.max(last_motion_ms);
        let id = format!("ch{channel}-{}", trigger.motion_event);
        Self {
            id,
            channel,
            start_ms: (trigger.ts_ms - rules.pre_roll_ms).max(floor),
            floor_ms: floor,
            end_ms: if open_event.is_some() { None } else { Some(activity + rules.post_roll_ms) },
            state: RecordingState::Open,
            open_events: open_event.map(|e| vec![e.to_string()]).unwrap_or_default(),
            events: vec![trigger.motion_event.clone()],
            last_activity_ms: activity,
            last_motion_ms,
            created_ms: now_ms,
            closed_ms: None,
            parts: Vec::new(),
            notes: Vec::new(),
            manual: false,
            trigger,
        }
    }

    /// A slot of a continuous channel: `[start_ms, end_ms)`, starting exactly where `previous`
    /// ended (its `floor_ms`), so the files of one never-ending recording have no gap and no
    /// second twice. Its id names its start, so a new leader that decides the same slot again
    /// creates nothing twice.
    pub fn continuous(channel: u32, start_ms: i64, end_ms: i64, floor_ms: i64, now_ms: i64) -> Self {
        let trigger = RecordTrigger {
            kind: TriggerKind::Continuous,
            motion_event: String::new(),
            ts_ms: start_ms,
            labels: Vec::new(),
        };
        let rolls = Rules { pre_roll_ms: 0, post_roll_ms: 0, max_hold_ms: 0 };
        Self {
            id: format!("ch{channel}-c{start_ms}"),
            floor_ms,
            end_ms: Some(end_ms),
            events: Vec::new(),
            ..Self::new(channel, trigger, None, start_ms, None, &rolls, now_ms)
        }
    }

    /// A slot of a continuous channel, not (yet) held open by activity joining it.
    pub fn is_continuous_slot(&self) -> bool {
        self.trigger.kind == TriggerKind::Continuous && self.open_events.is_empty()
    }

    /// Marks activity (a motion event, or the motion event of an object seen) on a continuous
    /// slot that covers `ts_ms`, without moving its end. Returns whether anything changed.
    pub fn mark_event(&mut self, event: &str, ts_ms: i64) -> bool {
        let covers = self.start_ms <= ts_ms && self.end_ms.is_none_or(|e| ts_ms < e);
        if !covers || event.is_empty() || self.events.iter().any(|e| e == event) {
            return false;
        }
        self.events.push(event.to_string());
        self.last_activity_ms = self.last_activity_ms.max(ts_ms);
        true
    }

    /// Does activity at `ts_ms` belong to this recording (open, and not past its end + join
    /// window)?
    pub fn accepts(&self, ts_ms: i64, rules: &Rules) -> bool {
        self.state == RecordingState::Open && self.end_ms.is_none_or(|end| ts_ms <= end + rules.join_window_ms())
    }

    /// A motion event starts (or is found in progress) in this recording: it stays open until
    /// the event ends.
    pub fn join_event(&mut self, event: &str, ts_ms: i64) {
        if !self.events.iter().any(|e| e == event) {
            self.events.push(event.to_string());
        }
        if !self.open_events.iter().any(|e| e == event) {
            self.open_events.push(event.to_string());
        }
        self.last_activity_ms = self.last_activity_ms.max(ts_ms);
        self.last_motion_ms = self.last_motion_ms.max(ts_ms);
        self.end_ms = None;
    }

    /// Activity at `ts_ms` that is not a motion event in progress (a wanted object in view, a
    /// late verdict): the end moves to `ts_ms` + post-roll if that is later.
    pub fn extend(&mut self, ts_ms: i64, motion: bool, rules: &Rules) {
        self.last_activity_ms = self.last_activity_ms.max(ts_ms);
        if motion {
            self.last_motion_ms = self.last_motion_ms.max(ts_ms);
        }
        if let Some(end) = self.end_ms.as_mut() {
            *end = (*end).max(ts_ms + rules.post_roll_ms);
        }
    }

    /// A motion event of this recording ended, its last motion at `last_motion_ms`. When it was
    /// the last one in progress, the end becomes last activity + post-roll. Returns whether the
    /// event was in progress here.
    pub fn end_event(&mut self, event: &str, last_motion_ms: i64, rules: &Rules) -> bool {
        let before = self.open_events.len();
        self.open_events.retain(|e| e != event);
        let was_open = self.open_events.len() != before;
        if self.state == RecordingState::Closed {
            return was_open;
        }
        self.last_activity_ms = self.last_activity_ms.max(last_motion_ms);
        self.last_motion_ms = self.last_motion_ms.max(last_motion_ms);
        match self.end_ms {
            None if self.open_events.is_empty() => self.end_ms = Some(self.last_activity_ms + rules.post_roll_ms),
            // An end that was already set (the event was closed as an orphan first) still
            // learns the event's real last motion.
            Some(end) => self.end_ms = Some(end.max(self.last_activity_ms + rules.post_roll_ms)),
            None => {}
        }
        was_open
    }

    /// Can the record worker close it now, having taken every fragment that starts before the
    /// end? Only once the join window is past, so no activity can join a closed recording.
    pub fn closable(&self, now_ms: i64, rules: &Rules) -> bool {
        self.state == RecordingState::Open && self.end_ms.is_some_and(|end| now_ms > end + rules.join_window_ms())
    }

    /// Closes it with the video written up to `video_end_ms`. A recording closed before its end
    /// (a stalled stream) ends where its video ended, so the next one starts there.
    pub fn close(&mut self, now_ms: i64, video_end_ms: i64, note: Option<String>) {
        if self.state == RecordingState::Closed {
            return;
        }
        self.state = RecordingState::Closed;
        self.closed_ms = Some(now_ms);
        let end = self.end_ms.map_or(video_end_ms, |e| e.min(video_end_ms));
        self.end_ms = Some(end.max(self.start_ms));
        if let Some(n) = note {
            self.notes.push(n);
        }
    }
}

/// Where a continuous channel's next slot goes, decided at `now_ms` from the channel's latest
/// recording: `Some((start, end))` when a slot must be created now.
///
/// - An activity recording still in progress (no end yet) records the channel already: the
///   slot waits for its end and starts exactly there.
/// - Otherwise the slot starts at the latest recording's end (nothing in between is lost), or
///   at `now − pre_roll` when that end is older than the buffer (the channel was not continuous
///   before): the HLS buffer still holds those seconds.
/// - A slot ends at the next multiple of `file_ms` of the clock, so files cut at the same
///   wall-clock times on every channel; a first slot shorter than a quarter file is merged
///   into the next one.
/// - The next slot is made once the current one's end has come (`now ≥ end`): its events then
///   belong to it.
pub fn next_continuous_slot(
    latest: Option<&Recording>,
    now_ms: i64,
    file_ms: i64,
    pre_roll_ms: i64,
) -> Option<(i64, i64)> {
    let file_ms = file_ms.max(1_000);
    let start = match latest {
        Some(r) => match r.end_ms {
            None => return None,
            Some(end) if r.state == RecordingState::Open && now_ms < end => return None,
            Some(end) => end.max(now_ms - pre_roll_ms),
        },
        None => now_ms - pre_roll_ms,
    };
    let mut end = (start.div_euclid(file_ms) + 1) * file_ms;
    if end - start < file_ms / 4 {
        end += file_ms;
    }
    Some((start, end))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("recording store: redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("recording {id}: stored data is not a recording: {error}")]
    Decode { id: String, error: String },
    #[error("recording {0}: changed by someone else too many times in a row")]
    Contention(String),
}

/// A recording as read, with the version its next write must match.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub version: i64,
    pub rec: Recording,
}

/// The only code that reads or writes recordings in Redis.
#[derive(Clone)]
pub struct RecordingStore {
    conn: ConnectionManager,
    keys: Keys,
}

/// Compare-and-set of a recording (see the script's header).
const CAS: &str = include_str!("lua/recording_cas.lua");

impl RecordingStore {
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Self { conn, keys }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        let (version, data): (Option<i64>, Option<String>) = redis::pipe()
            .hget(self.keys.recording(id), "version")
            .hget(self.keys.recording(id), "data")
            .query_async(&mut self.conn.clone())
            .await?;
        match (version, data) {
            (Some(version), Some(data)) => {
                let rec = serde_json::from_str(&data)
                    .map_err(|e| StoreError::Decode { id: id.to_string(), error: e.to_string() })?;
                Ok(Some(Versioned { version, rec }))
            }
            _ => Ok(None),
        }
    }

    /// The channel's latest (non-manual) recording, if any.
    pub async fn active(&self, channel: u32) -> Result<Option<Versioned>, StoreError> {
        let id: Option<String> = self.conn.clone().get(self.keys.record_active(channel)).await?;
        match id {
            Some(id) => self.get(&id).await,
            None => Ok(None),
        }
    }

    /// Writes `rec` if nobody wrote it since `version` was read (0: creates it). Returns the new
    /// version, or `None` on a conflict (read again and re-decide). `make_active`: it becomes the
    /// channel's active recording in the same step.
    pub async fn put(&self, version: i64, rec: &Recording, make_active: bool) -> Result<Option<i64>, StoreError> {
        let data =
            serde_json::to_string(rec).map_err(|e| StoreError::Decode { id: rec.id.clone(), error: e.to_string() })?;
        let ttl = if rec.state == RecordingState::Closed { CLOSED_TTL_SECS } else { 0 };
        let v: i64 = redis::Script::new(CAS)
            .key(self.keys.recording(&rec.id))
            .key(self.keys.record_active(rec.channel))
            .arg(version)
            .arg(data)
            .arg(if make_active { "1" } else { "0" })
            .arg(&rec.id)
            .arg(ttl)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((v >= 0).then_some(v))
    }

    /// Read-modify-write with retries: `change` returns false to leave the recording as it is.
    /// Returns the recording as stored afterwards (`None` if it does not exist).
    pub async fn update<F>(&self, id: &str, mut change: F) -> Result<Option<Recording>, StoreError>
    where
        F: FnMut(&mut Recording) -> bool,
    {
        for _ in 0..20 {
            let Some(Versioned { version, mut rec }) = self.get(id).await? else { return Ok(None) };
            if !change(&mut rec) {
                return Ok(Some(rec));
            }
            if self.put(version, &rec, false).await?.is_some() {
                return Ok(Some(rec));
            }
        }
        Err(StoreError::Contention(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules { pre_roll_ms: 5_000, post_roll_ms: 5_000, max_hold_ms: 60_000 };

    fn trigger(event: &str, ts: i64) -> RecordTrigger {
        RecordTrigger { kind: TriggerKind::Motion, motion_event: event.into(), ts_ms: ts, labels: vec![] }
    }

    #[test]
    fn open_recording_follows_its_events_and_ends_after_post_roll() {
        let mut r = Recording::new(1, trigger("a", 10_000), Some("a"), 10_000, None, &RULES, 10_100);
        assert_eq!((r.start_ms, r.end_ms), (5_000, None));
        r.join_event("b", 12_000);
        assert!(r.end_event("a", 13_000, &RULES));
        assert_eq!(r.end_ms, None, "b is still in progress");
        assert!(r.end_event("b", 20_000, &RULES));
        assert_eq!(r.end_ms, Some(25_000));
        assert!(!r.closable(30_000, &RULES), "join window (pre-roll) not over");
        assert!(r.accepts(29_000, &RULES));
        assert!(r.closable(30_001, &RULES));
        r.close(30_001, 26_000, None);
        assert!(!r.accepts(26_000, &RULES), "a closed recording accepts nothing");
    }

    #[test]
    fn next_recording_starts_at_the_previous_end_never_before() {
        let mut a = Recording::new(1, trigger("a", 10_000), Some("a"), 10_000, None, &RULES, 10_000);
        a.end_event("a", 20_000, &RULES);
        a.close(31_000, 26_000, None);
        // Activity 7 s after a's end: its pre-roll would reach back into a.
        let b = Recording::new(1, trigger("b", 32_000), Some("b"), 32_000, Some(&a), &RULES, 32_000);
        assert_eq!(b.floor_ms, 25_000);
        assert_eq!(b.start_ms, 27_000);
        let c = Recording::new(1, trigger("c", 27_000), Some("c"), 27_000, Some(&a), &RULES, 32_000);
        assert_eq!(c.start_ms, 25_000, "clamped to the previous end");
    }

    #[test]
    fn late_end_of_an_orphaned_event_still_counts() {
        let mut r = Recording::new(1, trigger("a", 10_000), Some("a"), 10_000, None, &RULES, 10_000);
        // Closed as an orphan at its last known activity...
        r.end_event("a", 10_000, &RULES);
        assert_eq!(r.end_ms, Some(15_000));
        // ...then its real end arrives.
        assert!(!r.end_event("a", 18_000, &RULES));
        assert_eq!(r.end_ms, Some(23_000));
    }

    #[test]
    fn objects_extend_an_ended_recording() {
        let mut r = Recording::new(1, trigger("a", 10_000), None, 12_000, None, &RULES, 13_000);
        assert_eq!(r.end_ms, Some(17_000));
        r.extend(16_000, false, &RULES);
        assert_eq!(r.end_ms, Some(21_000));
        assert_eq!(r.last_motion_ms, 12_000);
    }

    #[test]
    fn continuous_slots_follow_each_other_without_gap_or_overlap() {
        // First slot: from now − pre-roll to the next 10 s boundary; 2.4 s is too short a
        // file, so it runs on to the one after.
        let (s1, e1) = next_continuous_slot(None, 112_600, 10_000, 5_000).unwrap();
        assert_eq!((s1, e1), (107_600, 120_000));
        let first = Recording::continuous(1, s1, e1, 0, 112_600);
        assert_eq!(next_continuous_slot(Some(&first), 119_999, 10_000, 5_000), None, "its end has not come");
        let (s2, e2) = next_continuous_slot(Some(&first), 120_200, 10_000, 5_000).unwrap();
        assert_eq!((s2, e2), (120_000, 130_000), "starts where the first ends");
        // Closed early (its stream stalled) with video up to 112 s: the next slot starts there.
        let mut stalled = first.clone();
        stalled.close(113_000, 112_000, None);
        assert_eq!(next_continuous_slot(Some(&stalled), 113_000, 10_000, 5_000), Some((112_000, 120_000)));
        // Long after the latest recording: only what the buffer holds.
        assert_eq!(next_continuous_slot(Some(&stalled), 500_000, 10_000, 5_000), Some((495_000, 500_000)));
    }

    #[test]
    fn a_continuous_slot_waits_for_activity_in_progress() {
        let mut r = Recording::new(1, trigger("a", 10_000), Some("a"), 10_000, None, &RULES, 10_000);
        assert_eq!(next_continuous_slot(Some(&r), 50_000, 10_000, 5_000), None, "motion still in progress");
        r.end_event("a", 52_000, &RULES);
        assert_eq!(next_continuous_slot(Some(&r), 53_000, 10_000, 5_000), None, "its post-roll not over");
        assert_eq!(next_continuous_slot(Some(&r), 57_000, 10_000, 5_000), Some((57_000, 60_000)));
    }

    #[test]
    fn marks_stay_inside_their_slot_and_never_move_its_end() {
        let mut r = Recording::continuous(1, 10_000, 20_000, 10_000, 10_000);
        assert!(r.is_continuous_slot());
        assert!(r.mark_event("m1", 12_000));
        assert!(!r.mark_event("m1", 13_000), "once");
        assert!(!r.mark_event("m2", 20_000), "belongs to the next slot");
        assert!(!r.mark_event("m3", 9_999), "belongs to the previous slot");
        assert_eq!((r.end_ms, r.events.clone()), (Some(20_000), vec!["m1".to_string()]));
    }

    #[test]
    fn closing_an_open_recording_ends_it_at_its_video() {
        let mut r = Recording::new(1, trigger("a", 10_000), Some("a"), 10_000, None, &RULES, 10_000);
        r.close(40_000, 16_000, Some("stalled".into()));
        assert_eq!((r.state, r.end_ms), (RecordingState::Closed, Some(16_000)));
    }
}

/// Why a manual recording was not started.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("channel {0} is not in the config")]
    UnknownChannel(u32),
    #[error("seconds: {0} is out of range (0, 86400]")]
    OutOfRange(f64),
    #[error("recording {0} exists already")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("recording {recording}: {source}")]
    Redis { recording: String, source: redis::RedisError },
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// A manual recording of `channel` from now − pre-roll to now + `seconds`: the recording is
/// stored and its record job queued. Returns the recording id and the job id. The API's
/// `POST /api/record` and `cctv jobs enqueue record` both start one here.
pub async fn start_manual(
    config: &crate::config::Config,
    conn: &mut ConnectionManager,
    keys: &Keys,
    channel: u32,
    seconds: f64,
) -> Result<(String, String), ManualError> {
    use crate::jobs::RecordJob;
    let ch = config.channel(channel).ok_or(ManualError::UnknownChannel(channel))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(ManualError::OutOfRange(seconds));
    }
    let now = crate::events::now_ms();
    let event = format!("manual-{}", uuid::Uuid::new_v4().simple());
    let rid = format!("ch{channel}-{event}");
    let rules = Rules::from_config(config);
    let trigger = RecordTrigger {
        kind: TriggerKind::Manual,
        motion_event: event.clone(),
        ts_ms: now,
        labels: vec!["manual".into()],
    };
    // Manual recordings cover exactly what was asked: never the channel's active recording, so
    // no activity joins or closes them early.
    let end = now + (seconds * 1000.0) as i64;
    let mut rec = Recording::new(channel, trigger.clone(), None, now, None, &rules, now);
    rec.manual = true;
    rec.end_ms = Some(end);
    rec.last_activity_ms = end - rules.post_roll_ms;
    let start_ms = rec.start_ms;
    if RecordingStore::new(conn.clone(), keys.clone()).put(0, &rec, false).await?.is_none() {
        return Err(ManualError::Exists(rid));
    }
    let playlist_url = RecordJob::playlist_url_for(conn, keys, config, ch)
        .await
        .map_err(|source| ManualError::Redis { recording: rid.clone(), source })?;
    let job = RecordJob { recording: rid.clone(), channel, playlist_url, start_ms, trigger };
    let id = crate::queue::Queue::<RecordJob>::new(conn.clone(), keys, &config.queue).push_unique(&job, &rid).await?;
    Ok((rid, id.unwrap_or_default()))
}

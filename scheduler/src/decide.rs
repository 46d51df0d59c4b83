//! Backup decisions: the leader reads the motion and object result streams and applies each
//! channel's `record` policy, turning results into record jobs.
//!
//! - `motion`: a motion `start` opens a recording (start = detection − pre-roll); its `end`
//!   closes it at last motion + post-roll.
//! - `objects`: the first object event of a motion event with a wanted label opens a recording
//!   (start = that frame − pre-roll); the motion event's end closes it.
//! - `off`: nothing.
//!
//! A motion event on a channel whose latest recording is still running (open, or inside its
//! post-roll) joins that recording instead of starting a new one: one recording per ongoing
//! activity. Recordings live in Redis (`<ns>:record:rec:<id>`); the record worker follows
//! `end_ms` there. Stream positions are kept in `<ns>:record:cursor`, so a new leader carries on
//! where the old one stopped; recording ids derive from the triggering motion event and jobs are
//! pushed with the recording id as idempotency key, so re-reading an event creates nothing twice.

use std::collections::HashMap;

use cctv_common::config::{Config, RecordPolicy};
use cctv_common::events::{
    decode_entry, now_ms, ChannelState, ChannelStatus, MotionEvent, MotionEventKind, ObjectEvent,
};
use cctv_common::jobs::{RecordJob, RecordTrigger};
use cctv_common::keys::Keys;
use cctv_common::queue::Queue;
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

/// Motion-event bookkeeping lives a day.
const STATE_TTL_SECS: i64 = 86_400;
/// Closed recordings' hashes are kept a week for inspection.
const CLOSED_TTL_SECS: i64 = 7 * 86_400;

pub struct Decider {
    conn: ConnectionManager,
    keys: Keys,
    config: Config,
    queue: Queue<RecordJob>,
}

impl Decider {
    pub fn new(config: &Config, conn: ConnectionManager, keys: Keys) -> Self {
        let queue = Queue::new(conn.clone(), &keys, &config.queue);
        Self { conn, keys, config: config.clone(), queue }
    }

    /// Reads what arrived on the result streams (waiting up to `block_ms`) and acts on it.
    /// Returns how many entries were handled.
    pub async fn step(&mut self, block_ms: usize) -> anyhow::Result<usize> {
        let streams = [self.keys.motion_events(), self.keys.object_events()];
        let cursor_key = self.keys.record_cursor();
        let cursors: HashMap<String, String> = self.conn.hgetall(&cursor_key).await?;
        // A fresh cluster starts at the streams' ends: history is not re-decided.
        let mut ids = Vec::new();
        for s in &streams {
            let id = match cursors.get(s) {
                Some(id) => id.clone(),
                None => {
                    let last: redis::streams::StreamRangeReply = self.conn.xrevrange_count(s, "+", "-", 1).await?;
                    let id = last.ids.first().map(|e| e.id.clone()).unwrap_or_else(|| "0-0".into());
                    let _: () = self.conn.hset(&cursor_key, s, &id).await?;
                    id
                }
            };
            ids.push(id);
        }
        let opts = StreamReadOptions::default().block(block_ms).count(200);
        let reply: Option<StreamReadReply> = self.conn.xread_options(&streams, &ids, &opts).await?;
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

    async fn on_motion(&mut self, m: &MotionEvent) -> anyhow::Result<()> {
        let Some(ch) = self.config.channel(m.channel) else { return Ok(()) };
        let policy = ch.record;
        let state = self.keys.record_motion_event(&m.event_id);
        match m.kind {
            MotionEventKind::Start => {
                let _: () = redis::pipe()
                    .hset_multiple(&state, &[("channel", m.channel as i64), ("started_ms", m.ts_ms), ("ended", 0)])
                    .expire(&state, STATE_TTL_SECS)
                    .query_async(&mut self.conn)
                    .await?;
                if policy == RecordPolicy::Motion {
                    let trigger = RecordTrigger {
                        kind: RecordPolicy::Motion,
                        motion_event: m.event_id.clone(),
                        ts_ms: m.ts_ms,
                        labels: vec![],
                    };
                    self.open(m.channel, trigger, true).await?;
                }
            }
            MotionEventKind::End => {
                let last = m.last_motion_ms.unwrap_or(m.ts_ms);
                let _: () = redis::pipe()
                    .hset_multiple(&state, &[("ended", 1), ("last_motion_ms", last)])
                    .expire(&state, STATE_TTL_SECS)
                    .query_async(&mut self.conn)
                    .await?;
                let rid: Option<String> = self.conn.get(self.keys.record_event(&m.event_id)).await?;
                if let Some(rid) = rid {
                    self.event_ended(&rid, last).await?;
                }
            }
        }
        Ok(())
    }

    async fn on_objects(&mut self, o: &ObjectEvent) -> anyhow::Result<()> {
        let Some(ch) = self.config.channel(o.channel) else { return Ok(()) };
        if ch.record != RecordPolicy::Objects {
            return Ok(());
        }
        let wanted = self.config.wanted_labels(ch);
        let mut labels: Vec<String> =
            o.detections.iter().map(|d| d.label.clone()).filter(|l| wanted.contains(l)).collect();
        labels.sort();
        labels.dedup();
        if labels.is_empty() {
            return Ok(());
        }
        let mapped: Option<String> = self.conn.get(self.keys.record_event(&o.motion_event)).await?;
        if mapped.is_some() {
            return Ok(()); // this activity is already being recorded
        }
        let state = self.keys.record_motion_event(&o.motion_event);
        let (ended, last_motion): (Option<i64>, Option<i64>) =
            redis::pipe().hget(&state, "ended").hget(&state, "last_motion_ms").query_async(&mut self.conn).await?;
        let still_open = ended != Some(1);
        let trigger = RecordTrigger {
            kind: RecordPolicy::Objects,
            motion_event: o.motion_event.clone(),
            ts_ms: o.frame_ts_ms,
            labels,
        };
        let rid = self.open(o.channel, trigger, still_open).await?;
        if !still_open {
            // The verdict came after the motion ended: the end is already known.
            self.set_end(&rid, last_motion.unwrap_or(o.frame_ts_ms)).await?;
        }
        Ok(())
    }

    /// Opens a recording for the trigger, or joins the channel's running one. `ongoing`: the
    /// triggering motion event has not ended yet (it keeps the recording open until it does).
    async fn open(&mut self, channel: u32, trigger: RecordTrigger, ongoing: bool) -> anyhow::Result<String> {
        let event = trigger.motion_event.clone();
        let active: Option<String> = self.conn.get(self.keys.record_active(channel)).await?;
        if let Some(rid) = active {
            let key = self.keys.recording(&rid);
            let end: Option<i64> = self.conn.hget(&key, "end_ms").await?;
            // Running: open (0), or closing at a time not yet reached by the new detection.
            if end.is_some_and(|e| e == 0 || e >= trigger.ts_ms) {
                let mut pipe = redis::pipe();
                pipe.hset(&key, "end_ms", 0).persist(&key);
                if ongoing {
                    pipe.hincr(&key, "open", 1);
                }
                pipe.set_ex(self.keys.record_event(&event), &rid, STATE_TTL_SECS as u64);
                let _: () = pipe.query_async(&mut self.conn).await?;
                self.add_event(&rid, &event).await?;
                tracing::info!(channel, recording = %rid, event = %event, "activity joins the running recording");
                return Ok(rid);
            }
        }
        let rid = format!("ch{channel}-{event}");
        let start_ms = trigger.ts_ms - (self.config.record.pre_roll_secs * 1000.0) as i64;
        let key = self.keys.recording(&rid);
        let created: bool = self.conn.hset_nx(&key, "channel", channel).await?;
        if created {
            let _: () = redis::pipe()
                .hset_multiple(
                    &key,
                    &[
                        ("start_ms", start_ms.to_string()),
                        ("end_ms", "0".to_string()),
                        ("open", if ongoing { "1" } else { "0" }.to_string()),
                        ("trigger", serde_json::to_string(&trigger)?),
                        ("events", serde_json::to_string(&[&event])?),
                        ("created_ms", now_ms().to_string()),
                    ],
                )
                .set(self.keys.record_active(channel), &rid)
                .set_ex(self.keys.record_event(&event), &rid, STATE_TTL_SECS as u64)
                .query_async(&mut self.conn)
                .await?;
        }
        let job = RecordJob {
            recording: rid.clone(),
            channel,
            playlist_url: self.config.channel(channel).map(|c| self.config.hls_playlist_url(c)).unwrap_or_default(),
            start_ms,
            trigger: trigger.clone(),
        };
        if let Some(id) = self.queue.push_unique(&job, &rid).await? {
            tracing::info!(channel, recording = %rid, job = %id, trigger = ?trigger.kind, labels = ?trigger.labels,
                "backup started");
        }
        Ok(rid)
    }

    async fn add_event(&mut self, rid: &str, event: &str) -> anyhow::Result<()> {
        let key = self.keys.recording(rid);
        let events: Option<String> = self.conn.hget(&key, "events").await?;
        let mut list: Vec<String> = events.and_then(|e| serde_json::from_str(&e).ok()).unwrap_or_default();
        if !list.iter().any(|e| e == event) {
            list.push(event.to_string());
            let _: () = self.conn.hset(&key, "events", serde_json::to_string(&list)?).await?;
        }
        Ok(())
    }

    /// One motion event of the recording ended at `last_motion_ms`; the last one to end sets the
    /// recording's end (plus post-roll).
    async fn event_ended(&mut self, rid: &str, last_motion_ms: i64) -> anyhow::Result<()> {
        let key = self.keys.recording(rid);
        let open: i64 = self.conn.hincr(&key, "open", -1).await?;
        if open <= 0 {
            self.set_end(rid, last_motion_ms).await?;
        }
        Ok(())
    }

    async fn set_end(&mut self, rid: &str, last_activity_ms: i64) -> anyhow::Result<()> {
        let key = self.keys.recording(rid);
        let end = last_activity_ms + (self.config.record.post_roll_secs * 1000.0) as i64;
        let _: () = redis::pipe()
            .hset(&key, "end_ms", end)
            .hset(&key, "open", 0)
            .expire(&key, CLOSED_TTL_SECS)
            .query_async(&mut self.conn)
            .await?;
        tracing::info!(recording = %rid, end_ms = end, "backup end set (last activity + post-roll)");
        Ok(())
    }

    /// A recording whose motion never ended (its motion worker was killed mid-event) is closed
    /// once its channel reports no motion (or nothing) for longer than the motion end delay.
    async fn close_orphans(&mut self) -> anyhow::Result<()> {
        let quiet_ms = ((self.config.motion.end_quiet_secs + 2.0) * 1000.0) as i64;
        let now = now_ms();
        for ch in self.config.channels.clone() {
            let active: Option<String> = self.conn.get(self.keys.record_active(ch.id)).await?;
            let Some(rid) = active else { continue };
            let end: Option<i64> = self.conn.hget(self.keys.recording(&rid), "end_ms").await?;
            if end != Some(0) {
                continue;
            }
            let status: Option<String> = self.conn.get(self.keys.channel_status(ch.id)).await?;
            let status: Option<ChannelStatus> = status.and_then(|s| serde_json::from_str(&s).ok());
            let last = status.as_ref().and_then(|s| s.last_motion_ms).unwrap_or(0);
            let moving = status.as_ref().is_some_and(|s| s.state == ChannelState::Motion);
            let created: Option<i64> = self.conn.hget(self.keys.recording(&rid), "created_ms").await?;
            if !moving && now - last.max(created.unwrap_or(0)) > quiet_ms {
                tracing::warn!(channel = ch.id, recording = %rid, "motion end never came (worker lost?); closing");
                self.set_end(&rid, if last > 0 { last } else { now }).await?;
            }
        }
        Ok(())
    }
}

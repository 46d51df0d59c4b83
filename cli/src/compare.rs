//! `cctv compare`: motion events lined up with YOLO's verdicts on their frames.
//!
//! A motion event is *confirmed* when at least one of its frames showed a wanted object,
//! *without objects* when YOLO looked at its frames and found none (likely false motion:
//! shadows, rain, foliage), and *unchecked* when YOLO never saw a frame of it (a non-priority
//! channel, or every frame dropped as stale).

use std::collections::{BTreeMap, HashMap};

use cctv_common::config::Config;
use cctv_common::events::{decode_entry, now_ms, MotionEvent, MotionEventKind, ObjectEvent};
use cctv_common::keys::Keys;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::Serialize;

/// Object events are read this long past the range's end: a frame's verdict lands after it.
const VERDICT_GRACE_MS: i64 = 120_000;

/// One channel's line of the comparison.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelComparison {
    pub channel: u32,
    pub motion_events: usize,
    pub confirmed: usize,
    pub without_objects: usize,
    pub unchecked: usize,
    /// Frames YOLO looked at.
    pub frames_checked: usize,
    /// Frames with at least one object of the label.
    pub objects: BTreeMap<String, usize>,
}

/// Compares motion events that started within the range with the object events of their frames.
pub fn compare(channels: &[u32], motion: &[MotionEvent], objects: &[ObjectEvent]) -> Vec<ChannelComparison> {
    let mut by_event: HashMap<&str, Vec<&ObjectEvent>> = HashMap::new();
    for o in objects {
        by_event.entry(o.motion_event.as_str()).or_default().push(o);
    }
    channels
        .iter()
        .map(|&channel| {
            let mut c = ChannelComparison { channel, ..Default::default() };
            for m in motion.iter().filter(|m| m.channel == channel && m.kind == MotionEventKind::Start) {
                c.motion_events += 1;
                match by_event.get(m.event_id.as_str()) {
                    None => c.unchecked += 1,
                    Some(frames) => {
                        c.frames_checked += frames.len();
                        if frames.iter().any(|f| !f.detections.is_empty()) {
                            c.confirmed += 1;
                        } else {
                            c.without_objects += 1;
                        }
                        for f in frames {
                            let mut labels: Vec<&str> = f.detections.iter().map(|d| d.label.as_str()).collect();
                            labels.sort_unstable();
                            labels.dedup();
                            for l in labels {
                                *c.objects.entry(l.to_string()).or_default() += 1;
                            }
                        }
                    }
                }
            }
            c
        })
        .collect()
}

async fn read_range<T: serde::de::DeserializeOwned>(
    conn: &mut ConnectionManager,
    stream: &str,
    from_ms: i64,
    to_ms: i64,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    let mut start = format!("{from_ms}-0");
    loop {
        let reply: redis::streams::StreamRangeReply =
            conn.xrange_count(stream, &start, format!("{to_ms}-18446744073709551615"), 1000).await?;
        let n = reply.ids.len();
        for e in &reply.ids {
            if let Some(v) = decode_entry(&e.map) {
                out.push(v);
            }
        }
        match reply.ids.last() {
            Some(last) if n == 1000 => start = format!("({}", last.id),
            _ => return Ok(out),
        }
    }
}

/// `cctv compare`.
pub async fn command(
    conn: &mut ConnectionManager,
    keys: &Keys,
    config: &Config,
    channels: &[u32],
    since: &str,
    until: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let now = now_ms();
    let from = cctv_common::timefmt::parse_time(since, now).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let to = until
        .map(|u| cctv_common::timefmt::parse_time(u, now))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--until: {e}"))?
        .unwrap_or(now);
    anyhow::ensure!(from <= to, "--since is after --until");
    let channels: Vec<u32> =
        if channels.is_empty() { config.channels.iter().map(|c| c.id).collect() } else { channels.to_vec() };
    for id in &channels {
        anyhow::ensure!(config.channel(*id).is_some(), "channel {id} is not in the config");
    }
    let motion: Vec<MotionEvent> = read_range::<MotionEvent>(conn, &keys.motion_events(), from, to)
        .await?
        .into_iter()
        .filter(|m| m.ts_ms >= from && m.ts_ms <= to)
        .collect();
    let objects: Vec<ObjectEvent> = read_range(conn, &keys.object_events(), from, to + VERDICT_GRACE_MS).await?;
    let rows = compare(&channels, &motion, &objects);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"from_ms": from, "to_ms": to, "channels": rows}))?
        );
        return Ok(());
    }
    println!("CH    PRIORITY  MOTION  CONFIRMED  NO-OBJECTS  UNCHECKED  FRAMES  OBJECTS (frames)");
    for r in &rows {
        let priority = config.channel(r.channel).is_some_and(|c| c.priority);
        let objects = r.objects.iter().map(|(l, n)| format!("{l}:{n}")).collect::<Vec<_>>().join(" ");
        println!(
            "{:<5} {:<9} {:>6} {:>10} {:>11} {:>10} {:>7}  {}",
            r.channel,
            if priority { "yes" } else { "no" },
            r.motion_events,
            r.confirmed,
            r.without_objects,
            r.unchecked,
            r.frames_checked,
            objects
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cctv_common::events::Detection;

    fn start(channel: u32, id: &str) -> MotionEvent {
        MotionEvent {
            event_id: id.into(),
            channel,
            kind: MotionEventKind::Start,
            ts_ms: 1000,
            started_ms: 1000,
            area: 0.1,
            boxes: vec![],
            zones: vec![],
            last_motion_ms: None,
            worker: "w".into(),
            job: "j".into(),
            seq: 1,
        }
    }

    fn verdict(channel: u32, event: &str, labels: &[&str]) -> ObjectEvent {
        ObjectEvent {
            channel,
            frame_ts_ms: 1100,
            motion_event: event.into(),
            detections: labels
                .iter()
                .map(|l| Detection { label: l.to_string(), score: 0.8, bbox: [0.0, 0.0, 1.0, 1.0], zones: vec![] })
                .collect(),
            frame_width: 640,
            frame_height: 360,
            latency_ms: 100,
            batch_size: 1,
            snapshot: None,
            job: "j".into(),
            worker: "w".into(),
            ts_ms: 1200,
        }
    }

    #[test]
    fn events_are_confirmed_false_or_unchecked() {
        let mut end = start(1, "a");
        end.kind = MotionEventKind::End;
        let motion = vec![start(1, "a"), end, start(1, "b"), start(1, "c"), start(2, "d")];
        let objects = vec![
            verdict(1, "a", &[]),
            verdict(1, "a", &["person", "person", "car"]),
            verdict(1, "b", &[]),
            verdict(1, "b", &[]),
            verdict(2, "zzz", &["person"]),
        ];
        let rows = compare(&[1, 2], &motion, &objects);
        assert_eq!(rows[0].motion_events, 3, "ends are not counted as events");
        assert_eq!((rows[0].confirmed, rows[0].without_objects, rows[0].unchecked), (1, 1, 1));
        assert_eq!(rows[0].frames_checked, 4);
        assert_eq!(rows[0].objects, BTreeMap::from([("car".into(), 1), ("person".into(), 1)]));
        assert_eq!((rows[1].motion_events, rows[1].unchecked, rows[1].confirmed), (1, 1, 0));
    }
}

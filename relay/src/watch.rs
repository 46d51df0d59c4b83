//! The watchdog of shared processes: nginx-rtmp's `/stat` read as byte counts per stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cctv_common::ffmpeg::Stopper;
use cctv_common::status::RelayState;

use crate::{START_GRACE, STAT_FRESH, STREAM_STALE, WATCH_GRACE};

/// The streams nginx-rtmp receives, from its `/stat` XML: name → bytes received so far, for
/// every stream that has a publisher.
pub fn published_streams(xml: &str) -> HashMap<String, u64> {
    let tag = |s: &str, name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let from = s.find(&open)? + open.len();
        let to = s[from..].find(&format!("</{name}>"))? + from;
        Some(s[from..to].to_string())
    };
    xml.split("<stream>")
        .skip(1)
        .filter_map(|s| {
            let s = &s[..s.find("</stream>").unwrap_or(s.len())];
            if !s.contains("<publishing/>") {
                return None;
            }
            Some((tag(s, "name")?, tag(s, "bytes_in")?.trim().parse().ok()?))
        })
        .collect()
}

/// What the watchdog knows of nginx-rtmp's streams: per stream, its byte count and when it
/// last changed.
#[derive(Default)]
pub struct StreamWatch {
    pub(crate) read_at: Option<Instant>,
    pub(crate) streams: HashMap<String, (u64, Instant)>,
}

impl StreamWatch {
    /// Takes a `/stat` reading made at `now` (`None`: it could not be read).
    pub fn update(&mut self, reading: Option<HashMap<String, u64>>, now: Instant) {
        let Some(reading) = reading else { return };
        self.read_at = Some(now);
        self.streams.retain(|name, _| reading.contains_key(name));
        for (name, bytes) in reading {
            let entry = self.streams.entry(name).or_insert((bytes, now));
            if entry.0 != bytes {
                *entry = (bytes, now);
            }
        }
    }

    /// A recent reading exists: the watchdog can see the streams.
    pub fn fresh(&self, now: Instant) -> bool {
        self.read_at.is_some_and(|t| now.duration_since(t) < STAT_FRESH)
    }

    /// `stream`'s byte count changed after `t` (a process started at `t` publishes it).
    pub fn grew_since(&self, stream: &str, t: Instant) -> bool {
        self.streams.get(stream).is_some_and(|(_, changed)| *changed > t)
    }

    /// Why `stream` is dead at `now`, when it is: not published, or no new byte for
    /// [`STREAM_STALE`]. `None` while alive or when there is no fresh reading to judge by.
    pub fn dead(&self, stream: &str, now: Instant) -> Option<String> {
        if !self.fresh(now) {
            return None;
        }
        match self.streams.get(stream) {
            None => Some(format!("{stream} is not published at nginx-rtmp")),
            Some((_, changed)) if now.duration_since(*changed) >= STREAM_STALE => {
                Some(format!("{stream} sent nginx-rtmp nothing for {} s", now.duration_since(*changed).as_secs()))
            }
            Some(_) => None,
        }
    }
}

/// The process a relay thread runs now, for the watchdog (shared processes only) and for
/// stopping it.
pub(crate) struct Running {
    pub(crate) stopper: Stopper,
    pub(crate) started: Instant,
    /// The streams it publishes; empty for a one-stream process (not watched).
    pub(crate) watched: Vec<String>,
    /// Set by the watchdog when it ended the process: the reason reported.
    pub(crate) killed: Option<String>,
    /// Per watched stream: its bytes grew at nginx-rtmp since this process started.
    pub(crate) seen: Vec<bool>,
}

pub(crate) type RunningSlot = Arc<Mutex<Option<Running>>>;
pub(crate) type WatchedSlots = Arc<Mutex<Vec<RunningSlot>>>;
pub(crate) type StateCell = Arc<Mutex<RelayState>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The watchdog's round: ends every shared process that has run [`WATCH_GRACE`] and one of whose
/// streams is dead at nginx-rtmp: one that reached nginx and stopped, or one that never did in
/// [`START_GRACE`].
pub(crate) fn watchdog_round(watch: &StreamWatch, slots: &[RunningSlot], now: Instant) {
    for slot in slots {
        let mut slot = lock(slot);
        let Some(running) = slot.as_mut() else { continue };
        let age = now.duration_since(running.started);
        if running.killed.is_some() || age < WATCH_GRACE {
            continue;
        }
        running.seen.resize(running.watched.len(), false);
        for (stream, seen) in running.watched.iter().zip(running.seen.iter_mut()) {
            *seen |= watch.grew_since(stream, running.started);
        }
        let dead = running.watched.iter().zip(&running.seen).find_map(|(stream, &seen)| {
            if seen || age >= START_GRACE {
                watch.dead(stream, now)
            } else {
                None
            }
        });
        if let Some(why) = dead {
            tracing::warn!(reason = %why, "a stream of a camera's relay died: restarting the camera's relay");
            running.killed = Some(format!("{why} (the camera's relay was restarted)"));
            running.stopper.terminate();
        }
    }
}

/// Reads nginx-rtmp's `/stat` (next to the HLS buffer, `rtmp.hls_url`'s server).
pub(crate) fn read_stat(agent: &ureq::Agent, url: &str) -> Option<HashMap<String, u64>> {
    let mut resp = agent.get(url).call().ok()?;
    if resp.status() != 200 {
        return None;
    }
    let xml = resp.body_mut().with_config().limit(16 << 20).read_to_string().ok()?;
    xml.contains("<rtmp>").then(|| published_streams(&xml))
}

/// `/stat` on the server of `hls_url` (`http://host:port/hls` → `http://host:port/stat`).
pub fn stat_url(hls_url: &str) -> Option<String> {
    let (scheme, rest) = hls_url.split_once("://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}/stat"))
}

//! `scheduler relay`: the RTSP → RTMP relays, run next to nginx-rtmp. One ffmpeg per stream
//! (`ch<id>` from `source`, `ch<id>_sub` from `detect_source`) copies the camera's video into
//! nginx-rtmp (`-c copy`); audio is dropped, copied or transcoded to AAC (`relay.audio`).
//!
//! A relay that dies is restarted with exponential backoff (reset after a minute of health); a
//! clean end of stream is retried at once. Status per channel goes to `<ns>:status:relay:<id>`
//! with a TTL. Camera URLs appear in no log, status or error: every message is redacted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cctv_common::config::{Config, RelayAudio};
use cctv_common::events::now_ms;
use cctv_common::ffmpeg::{self, FfmpegProcess, Stopper};
use cctv_common::heartbeat;
use cctv_common::keys::Keys;
use cctv_common::shutdown::CancellationToken;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

/// A relay running this long counts as healthy: its backoff resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// A run this long that ends cleanly is not a failure.
const CLEAN_RUN: Duration = Duration::from_secs(5);
/// Status TTL; refreshed every 2 s.
const STATUS_TTL_SECS: u64 = 10;

/// One relayed stream's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RelayState {
    pub stream: String,
    pub running: bool,
    /// Why the last run ended (redacted ffmpeg message).
    pub last_error: Option<String>,
    pub restarts: u64,
    pub since_ms: Option<i64>,
}

/// `<ns>:status:relay:<id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RelayStatus {
    pub channel: u32,
    pub main: RelayState,
    pub sub: Option<RelayState>,
    pub host: String,
    pub updated_ms: i64,
}

impl RelayStatus {
    /// The main stream's relay, then the sub-stream's when there is one.
    pub fn streams(&self) -> impl Iterator<Item = &RelayState> {
        std::iter::once(&self.main).chain(self.sub.as_ref())
    }
}

/// Bitstream filter of every relay's video (see [`relay_command`]).
pub const RELAY_FIX_MISSING_PTS: &str = r"setts=pts=if(eq(PTS\,NOPTS)\,DTS\,PTS)";

/// The ffmpeg arguments of one relay (input options, input, output options, output).
pub fn relay_command(
    source: &str,
    publish: &str,
    audio: RelayAudio,
    timeout_s: u64,
) -> ffmpeg_sidecar::command::FfmpegCommand {
    let mut cmd = ffmpeg::command();
    cmd.arg("-nostats");
    let scheme = source.split("://").next().unwrap_or("");
    match scheme {
        "rtsp" | "rtsps" => {
            cmd.args(["-rtsp_transport", "tcp", "-timeout", &(timeout_s * 1_000_000).to_string()]);
        }
        "rtmp" | "http" | "https" => {
            cmd.args(["-rw_timeout", &(timeout_s * 1_000_000).to_string()]);
        }
        // Files (demos): paced like a live camera, looped.
        "file" => {
            cmd.args(["-re", "-stream_loop", "-1"]);
        }
        _ => {}
    }
    let input = source.strip_prefix("file://").unwrap_or(source);
    cmd.input(input).args(["-map", "0:v:0", "-c:v", "copy"]);
    // A camera that sends B-frames over RTSP: ffmpeg's RTP demuxer gives the first packet no
    // PTS and FLV refuses it ("Packet is missing PTS"), so the relay would never publish. Such a
    // packet gets its DTS (which ffmpeg estimates) as PTS; every other packet is untouched.
    cmd.args(["-bsf:v", RELAY_FIX_MISSING_PTS]);
    match audio {
        RelayAudio::Drop => cmd.arg("-an"),
        // FLV carries AAC/MP3; other camera codecs (G.711, ...) need `aac`.
        RelayAudio::Copy => cmd.args(["-map", "0:a:0?", "-c:a", "copy"]),
        RelayAudio::Aac => cmd.args(["-map", "0:a:0?", "-c:a", "aac", "-b:a", "64k", "-ar", "44100"]),
    };
    cmd.args(["-f", "flv"]).output(publish);
    cmd
}

struct Relay {
    state: Arc<Mutex<RelayState>>,
    stopper: Arc<Mutex<Option<Stopper>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn start_relay(label: String, source: String, publish: String, audio: RelayAudio, stop: CancellationToken) -> Relay {
    let state = Arc::new(Mutex::new(RelayState { stream: label.clone(), ..Default::default() }));
    let stopper: Arc<Mutex<Option<Stopper>>> = Arc::default();
    let (st, sp) = (state.clone(), stopper.clone());
    let thread = std::thread::Builder::new()
        .name(format!("relay {label}"))
        .spawn(move || {
            let span = tracing::info_span!("relay", stream = %label);
            let _e = span.enter();
            let mut backoff = Duration::from_secs(1);
            while !stop.is_cancelled() {
                let started = Instant::now();
                let cmd = relay_command(&source, &publish, audio, 10);
                let result = FfmpegProcess::spawn(format!("relay {label}"), cmd, false);
                let reason = match result {
                    Err(e) => e.to_string(),
                    Ok(mut p) => {
                        *sp.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.stopper());
                        {
                            let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                            s.running = true;
                            s.since_ms = Some(now_ms());
                        }
                        tracing::info!("relay running");
                        let r = p.wait();
                        *sp.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        match r {
                            Ok(_) => "stream ended".to_string(),
                            Err(e) => {
                                let tail = p.stderr_tail();
                                let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                                format!(
                                    "ffmpeg failed: {}",
                                    if last.is_empty() { e.to_string() } else { last.to_string() }
                                )
                            }
                        }
                    }
                };
                if stop.is_cancelled() {
                    break;
                }
                // A clean end after a real run (a camera that closed the session, a clip that
                // ended) is retried at once; failures back off.
                let clean_end = reason == "stream ended" && started.elapsed() >= CLEAN_RUN;
                if clean_end || started.elapsed() >= HEALTHY_AFTER {
                    backoff = Duration::from_secs(1);
                }
                let wait = if clean_end { Duration::from_millis(200) } else { backoff };
                {
                    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                    s.running = false;
                    s.last_error = Some(reason.clone());
                    s.restarts += 1;
                    s.since_ms = Some(now_ms());
                }
                tracing::warn!(reason = %reason, retry_in_ms = wait.as_millis() as u64, "relay stopped");
                let until = Instant::now() + wait;
                while Instant::now() < until && !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        })
        .expect("spawning a relay thread");
    Relay { state, stopper, thread: Some(thread) }
}

impl Relay {
    /// What the status reports. After a failure, a new attempt counts as running only once it
    /// has stayed up `CLEAN_RUN`: a camera that refuses the password (or any attempt that fails
    /// at once) is reported down with its reason, not "running" for the instant each retry takes.
    fn snapshot(&self) -> RelayState {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let young = s.since_ms.is_some_and(|t| now_ms() - t < CLEAN_RUN.as_millis() as i64);
        if s.running && s.last_error.is_some() && young {
            s.running = false;
        }
        s
    }
    fn stop(mut self) {
        if let Some(s) = self.stopper.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            s.terminate();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs every channel's relays until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let keys = Keys::new(&config.cluster.namespace);
    let mut conn = cctv_common::queue::connect(&config.cluster, &config.queue).await?;
    let publish = config.rtmp.publish_url.trim_end_matches('/').to_string();
    let stop = shutdown.child_token();
    let mut relays: Vec<(u32, Relay, Option<Relay>)> = Vec::new();
    for ch in &config.channels {
        let main = start_relay(
            ch.stream_name(),
            ch.source.clone(),
            format!("{publish}/{}", ch.stream_name()),
            config.relay.audio,
            stop.clone(),
        );
        let sub = ch.detect_source.as_ref().map(|d| {
            let name = ch.detect_stream_name();
            start_relay(name.clone(), d.clone(), format!("{publish}/{name}"), RelayAudio::Drop, stop.clone())
        });
        relays.push((ch.id, main, sub));
    }
    tracing::info!(channels = relays.len(), publish = %publish, "relays started");
    // A heartbeat like the workers' one: `scheduler health --kind relay` (the container health
    // check) and `cctv status` see the relay host alive.
    let worker = cctv_common::worker_name("relay");
    let held: heartbeat::Held = Default::default();
    *held.lock().unwrap_or_else(|e| e.into_inner()) = relays.iter().map(|(id, ..)| format!("ch{id}")).collect();
    let hb = tokio::spawn(heartbeat::run(conn.clone(), keys.clone(), worker.clone(), "relay", held));
    let host = cctv_common::host_name();
    loop {
        for (id, main, sub) in &relays {
            let status = RelayStatus {
                channel: *id,
                main: main.snapshot(),
                sub: sub.as_ref().map(Relay::snapshot),
                host: host.clone(),
                updated_ms: now_ms(),
            };
            if let Ok(json) = serde_json::to_string(&status) {
                let r: redis::RedisResult<()> = conn.set_ex(keys.relay_status(*id), json, STATUS_TTL_SECS).await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot publish relay status");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    stop.cancel();
    hb.abort();
    heartbeat::remove(&mut conn, &keys, &worker).await;
    tokio::task::spawn_blocking(move || {
        for (_, main, sub) in relays {
            main.stop();
            if let Some(s) = sub {
                s.stop();
            }
        }
    })
    .await?;
    tracing::info!("relays stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mut cmd: ffmpeg_sidecar::command::FfmpegCommand) -> String {
        format!("{:?}", cmd.as_inner())
    }

    #[test]
    fn rtsp_relays_copy_video_over_tcp_and_handle_audio_per_config() {
        let drop = args(relay_command("rtsp://u:p@cam/1", "rtmp://127.0.0.1/live/ch1", RelayAudio::Drop, 10));
        for needle in [
            "-rtsp_transport",
            "tcp",
            "-timeout",
            "10000000",
            "-c:v",
            "copy",
            "-an",
            "flv",
            "rtmp://127.0.0.1/live/ch1",
        ] {
            assert!(drop.contains(needle), "{needle} missing from {drop}");
        }
        let aac = args(relay_command("rtsp://cam/1", "rtmp://x/live/ch1", RelayAudio::Aac, 10));
        assert!(aac.contains("\"-c:a\" \"aac\"") && !aac.contains("\"-an\""), "{aac}");
        let file = args(relay_command("file:///clips/a.mp4", "rtmp://x/live/ch1", RelayAudio::Drop, 10));
        assert!(file.contains("-stream_loop") && file.contains("\"/clips/a.mp4\""), "{file}");
    }
}

//! The one ffmpeg wrapper. Every ffmpeg the cluster runs is spawned here.
//!
//! - The command line is built with `ffmpeg-sidecar` (Debian's ffmpeg; its download feature is off).
//! - stderr is drained on its own thread (a full pipe would stall ffmpeg) through sidecar's log
//!   parser: lines go, redacted, into a bounded tail that errors carry; the first output video
//!   stream's size is captured for raw-frame readers.
//! - [`FfmpegProcess::stop`] sends SIGTERM, waits, then SIGKILLs, so containers are finalised;
//!   dropping a process stops it the same way, so no child outlives its owner. A child whose
//!   owner was killed with -9 dies on its next write to the closed stdout/stderr pipe (SIGPIPE).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::BufReader;
use std::process::{Child, ChildStdout, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use ffmpeg_sidecar::command::FfmpegCommand;
use ffmpeg_sidecar::event::{FfmpegEvent, LogLevel};
use ffmpeg_sidecar::log_parser::FfmpegLogParser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::redact::redact_text;

/// Lines of stderr kept for error messages.
const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    #[error("{label}: cannot start ffmpeg: {source} (is Debian's ffmpeg installed and on PATH?)")]
    Spawn { label: String, source: std::io::Error },
    #[error("{label}: ffmpeg exited with {status}; stderr tail:\n{tail}")]
    Exited { label: String, status: String, tail: String },
    #[error("{label}: {message}; stderr tail:\n{tail}")]
    Failed { label: String, message: String, tail: String },
}

/// Runs `ffprobe <args> <path>` and returns what it printed. It is killed after `timeout`: a
/// file on a storage that hangs (a dead network mount) must not hold a worker thread forever.
pub fn ffprobe(args: &[&str], path: &std::path::Path, timeout: Duration) -> Result<String, FfmpegError> {
    use std::io::Read;
    let label = format!("ffprobe {}", scrub_urls(&path.display().to_string()));
    let mut child = std::process::Command::new("ffprobe")
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FfmpegError::Spawn { label: label.clone(), source })?;
    // Drained on their own threads: a full pipe would stall ffprobe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    let tail = scrub_urls(&redact_text(String::from_utf8_lossy(&err).trim()));
    match status {
        None => Err(FfmpegError::Failed {
            label,
            message: format!("no answer within {} s; killed", timeout.as_secs()),
            tail,
        }),
        Some(s) if !s.success() => Err(FfmpegError::Exited { label, status: s.to_string(), tail }),
        Some(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
    }
}

/// The causes [`explain_failure`] knows, as it words them: none of them is the relayed
/// stream's content (its audio, say).
const KNOWN_CAUSES: [&str; 13] = [
    "camera sends H.265, which nginx-rtmp cannot carry",
    "camera sends a video codec other than H.264, which nginx-rtmp cannot carry",
    "camera refused the user name or password (401 Unauthorized)",
    "camera refused access (403 Forbidden)",
    "camera has no stream at that path (404 Not Found)",
    "nginx-rtmp refused the connection (is it running?)",
    "camera refused the connection (wrong address or port, or the camera is down)",
    "no answer within the timeout (camera unreachable or stalled)",
    "no route to the camera's address",
    "the camera's host name does not resolve",
    "the camera's timestamps went backwards",
    "the stream's codec cannot be stored in the relay's buffer (MPEG-TS)",
    "nginx-rtmp refused the stream: another relay already publishes it",
];

/// A failure with no error line at all.
const SILENT: &str = "ffmpeg ended without saying why";

/// The known cause in an ffmpeg stderr tail, if any (one of [`KNOWN_CAUSES`]).
fn known_cause(tail: &str) -> Option<&'static str> {
    let lower = tail.to_lowercase();
    let has = |s: &str| lower.contains(s);
    let index = if has("not compatible with flv") {
        if has("codec hevc") {
            0
        } else {
            1
        }
    } else if has("401 unauthorized") {
        2
    } else if has("403 forbidden") {
        3
    } else if has("404 not found") {
        4
    } else if has("connection refused") {
        // The publish side is the relay's only rtmp:// output.
        if tail.lines().any(|l| l.contains("onnection refused") && l.contains("rtmp://")) {
            5
        } else {
            6
        }
    } else if has("timed out") || has("timeout") {
        7
    } else if has("no route to host") || has("network is unreachable") {
        8
    } else if has("name or service not known") || has("failed to resolve") {
        9
    } else if has("non-monotonous dts") || has("non monotonically increasing dts") {
        10
    } else if has("not currently supported in container") || has("could not find tag for codec") {
        11
    } else if has("badname") || has("already publishing") {
        12
    } else {
        return None;
    };
    Some(KNOWN_CAUSES[index])
}

/// `reason` (from [`explain_failure`], maybe with more said after it) is a known cause outside
/// the stream's content: the camera, the network or nginx-rtmp.
pub fn is_known_cause(reason: &str) -> bool {
    KNOWN_CAUSES.iter().any(|k| reason.starts_with(k))
}

/// Why an ffmpeg (or ffprobe) run failed, in plain words, from its stderr tail: a known cause
/// first (H.265 into FLV, a refused password, a camera that does not answer, ...), else the
/// first error line with ffmpeg's `[ctx @ 0x…] [error]` prefixes removed. Never an empty
/// level tag, never a URL's credentials or query string.
pub fn explain_failure(tail: &str) -> String {
    if let Some(k) = known_cause(tail) {
        return k.to_string();
    }
    let clean = |l: &str| -> String {
        let mut rest = l.trim();
        // `[tcp @ 0x55…] [error] message`: drop every leading bracketed tag.
        while rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => break,
            }
        }
        scrub_urls(rest)
    };
    let is_error = |l: &str| l.contains("[error]") || l.contains("[fatal]");
    let lines: Vec<&str> = tail.lines().collect();
    lines
        .iter()
        .filter(|l| is_error(l))
        .chain(lines.iter().rev().filter(|l| !is_error(l)))
        .map(|l| clean(l))
        .find(|m| !m.is_empty() && m != "Conversion failed!")
        .unwrap_or_else(|| SILENT.into())
}

/// Every `scheme://…` in `text` cut to `scheme://host/path`: no user-info, no query (where
/// cameras take `?password=`), no fragment.
pub fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let start = rest[..pos].rfind(|c: char| !c.is_ascii_alphanumeric() && c != '+').map_or(0, |i| i + 1);
        out.push_str(&rest[..start]);
        let after = &rest[pos + 3..];
        let end =
            after.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`')).unwrap_or(after.len());
        let mut url = &after[..end];
        let trailing_colon = url.ends_with(':');
        url = url.trim_end_matches(':');
        let url = url.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = url.split_at(url.find('/').unwrap_or(url.len()));
        let host = authority.rsplit('@').next().unwrap_or("");
        out.push_str(&rest[start..pos + 3]);
        out.push_str(host);
        out.push_str(path);
        if trailing_colon {
            out.push(':');
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Size of a raw video output stream, parsed from ffmpeg's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSize {
    pub width: u32,
    pub height: u32,
}

#[derive(Default)]
struct StderrState {
    tail: VecDeque<String>,
    output_video: Option<VideoSize>,
    eof: bool,
}

struct Shared {
    state: Mutex<StderrState>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, StderrState> {
        // A panic while holding this lock cannot leave the tail inconsistent; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running ffmpeg.
pub struct FfmpegProcess {
    label: String,
    child: Child,
    shared: Arc<Shared>,
    started: Instant,
    exited: Option<ExitStatus>,
}

/// Sends signals to an ffmpeg from another thread (e.g. a stall watchdog).
#[derive(Debug, Clone)]
pub struct Stopper {
    pid: Pid,
}

impl Stopper {
    /// Asks ffmpeg to finish (SIGTERM): it closes its outputs and exits.
    pub fn terminate(&self) {
        let _ = kill(self.pid, Signal::SIGTERM);
    }
}

/// A new ffmpeg command line with the options every use shares.
pub fn command() -> FfmpegCommand {
    let mut cmd = FfmpegCommand::new();
    // -nostdin: without it a decode here stalled 50 s waiting on the terminal.
    cmd.hide_banner().arg("-nostdin");
    cmd
}

impl FfmpegProcess {
    /// Spawns `cmd`. `label` names the process in logs and errors (e.g. `motion ch3`); it must
    /// not contain credentials. With `capture_stdout`, stdout is a pipe to take with
    /// [`take_stdout`](Self::take_stdout); otherwise it is discarded.
    pub fn spawn(label: impl Into<String>, mut cmd: FfmpegCommand, capture_stdout: bool) -> Result<Self, FfmpegError> {
        let label = label.into();
        let inner = cmd.as_inner_mut();
        inner
            .stdin(Stdio::null())
            .stdout(if capture_stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped());
        let args: Vec<OsString> = inner.get_args().map(|a| a.to_owned()).collect();
        tracing::debug!(process = %label, args = %redact_text(&args_line(&args)), "starting ffmpeg");
        let mut child = inner.spawn().map_err(|source| FfmpegError::Spawn { label: label.clone(), source })?;
        let shared = Arc::new(Shared { state: Mutex::default(), changed: Condvar::new() });
        let stderr = child.stderr.take().expect("stderr is piped above");
        let drain = shared.clone();
        let thread_label = label.clone();
        std::thread::Builder::new()
            .name(format!("ffmpeg-stderr {label}"))
            .spawn(move || drain_stderr(stderr, &drain, &thread_label))
            .map_err(|source| FfmpegError::Spawn { label: label.clone(), source })?;
        Ok(Self { label, child, shared, started: Instant::now(), exited: None })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stopper(&self) -> Stopper {
        Stopper { pid: Pid::from_raw(self.child.id() as i32) }
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The last lines ffmpeg wrote to stderr, redacted.
    pub fn stderr_tail(&self) -> String {
        self.shared.lock().tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits until ffmpeg has announced its first output video stream (raw-frame readers need
    /// its size). `None` when ffmpeg ended or `timeout` passed first.
    pub fn wait_output_video(&self, timeout: Duration) -> Option<VideoSize> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(size) = state.output_video {
                return Some(size);
            }
            let now = Instant::now();
            if state.eof || now >= deadline {
                return None;
            }
            state = self.shared.changed.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// An error carrying the stderr tail.
    pub fn failure(&self, message: impl Into<String>) -> FfmpegError {
        FfmpegError::Failed { label: self.label.clone(), message: message.into(), tail: self.stderr_tail() }
    }

    /// Non-blocking: the exit status if ffmpeg has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits for ffmpeg to exit on its own; a non-zero exit becomes an error with the tail.
    pub fn wait(&mut self) -> Result<ExitStatus, FfmpegError> {
        let status = match self.exited {
            Some(s) => s,
            None => self.child.wait().map_err(|e| self.failure(format!("wait failed: {e}")))?,
        };
        self.exited = Some(status);
        self.log_exit(status);
        if status.success() {
            Ok(status)
        } else {
            Err(FfmpegError::Exited { label: self.label.clone(), status: status.to_string(), tail: self.stderr_tail() })
        }
    }

    /// SIGTERM, wait up to `grace` for ffmpeg to finalise its outputs, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        self.stopper().terminate();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                self.log_exit(s);
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(process = %self.label, grace_ms = grace.as_millis() as u64, "ffmpeg ignored SIGTERM; killing");
        let _ = self.child.kill();
        let status = self.child.wait().unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9));
        self.exited = Some(status);
        self.log_exit(status);
        status
    }

    fn log_exit(&self, status: ExitStatus) {
        tracing::debug!(process = %self.label, %status, ran_ms = self.started.elapsed().as_millis() as u64, "ffmpeg exited");
    }
}

impl Drop for FfmpegProcess {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.stop(Duration::from_secs(3));
        }
    }
}

fn args_line(args: &[OsString]) -> String {
    args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

fn drain_stderr(stderr: std::process::ChildStderr, shared: &Shared, label: &str) {
    let mut parser = FfmpegLogParser::new(BufReader::new(stderr));
    loop {
        let event = match parser.parse_next_event() {
            Ok(FfmpegEvent::LogEOF) | Err(_) => break,
            Ok(e) => e,
        };
        let mut state = shared.lock();
        match event {
            FfmpegEvent::ParsedOutputStream(stream) => {
                if let (None, Some(v)) = (state.output_video, stream.video_data()) {
                    state.output_video = Some(VideoSize { width: v.width, height: v.height });
                    shared.changed.notify_all();
                }
            }
            FfmpegEvent::Log(level, line) => {
                let line = redact_text(&line).into_owned();
                if matches!(level, LogLevel::Error | LogLevel::Fatal) {
                    tracing::debug!(process = %label, line = %line, "ffmpeg error line");
                }
                if state.tail.len() == TAIL_LINES {
                    state.tail.pop_front();
                }
                state.tail.push_back(line);
            }
            _ => {}
        }
    }
    let mut state = shared.lock();
    state.eof = true;
    shared.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_explained_in_plain_words_never_as_a_bare_level_tag() {
        let hevc = "[info] Stream #0:0: Video: hevc (Main)\n[flv @ 0x5] [error] Video codec hevc not compatible with flv\n\
                    [error] Could not write header for output file #0 (incorrect codec parameters ?): Function not implemented\n[error] ";
        assert_eq!(explain_failure(hevc), "camera sends H.265, which nginx-rtmp cannot carry");
        let pw = "[rtsp @ 0x1] [error] method DESCRIBE failed: 401 Unauthorized\n[error] rtsp://***@cam/1: Server returned 401 Unauthorized";
        assert!(explain_failure(pw).contains("user name or password"));
        let nginx = "[tcp @ 0x55] [error] Connection to tcp://127.0.0.1:1?tcp_nodelay=0 failed: Connection refused\n\
                     [rtmp @ 0x5] [error] Cannot open connection tcp://127.0.0.1:1?tcp_nodelay=0\n[error] rtmp://127.0.0.1:1/x: Connection refused";
        assert_eq!(explain_failure(nginx), "nginx-rtmp refused the connection (is it running?)");
        let cam = "[tcp @ 0x5] [error] Connection to tcp://127.0.0.1:9?timeout=1 failed: Connection refused\n[error] rtsp://127.0.0.1:9/a: Connection refused";
        assert!(explain_failure(cam).starts_with("camera refused the connection"), "{}", explain_failure(cam));
        // Unknown: the first error line, without its tags, with URLs cut to host and path.
        let odd =
            "[info] x\n[h264 @ 0x5] [error] odd thing at rtsp://u:pw@cam:554/s?password=pw happened\n[error] \n[error]";
        assert_eq!(explain_failure(odd), "odd thing at rtsp://cam:554/s happened");
        assert_eq!(explain_failure("[error]\n[error] "), "ffmpeg ended without saying why");
        let mjpeg = "[mpegts @ 0x5] [error] Stream #0 (mjpeg) codec not currently supported in container";
        assert!(explain_failure(mjpeg).contains("cannot be stored"), "{}", explain_failure(mjpeg));
        assert!(is_known_cause(&explain_failure(pw)) && is_known_cause(&format!("{} (more)", explain_failure(nginx))));
        assert!(!is_known_cause(&explain_failure(odd)), "an unknown error line is no known cause");
        for tail in [hevc, pw, nginx, cam, odd, "[error]", ""] {
            let why = explain_failure(tail);
            assert!(!why.is_empty() && !why.contains("[error]") && !why.contains("pw"), "{why}");
        }
    }

    #[test]
    fn ffprobe_that_hangs_is_killed_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A FIFO nobody writes to: ffprobe blocks opening it, as on a dead network mount.
        let fifo = dir.path().join("stuck.ts");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = Instant::now();
        let err = ffprobe(&["-v", "error"], &fifo, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.contains("stuck.ts") && err.contains("no answer within 1 s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20), "not killed");
        let missing = ffprobe(&["-v", "error"], &dir.path().join("missing.mp4"), Duration::from_secs(10));
        assert!(missing.unwrap_err().to_string().contains("No such file"));
    }

    #[test]
    fn failure_carries_redacted_stderr_tail() {
        let mut cmd = command();
        cmd.input("rtsp://admin:hunter2@127.0.0.1:1/nothing").args(["-rtsp_transport", "tcp", "-f", "null", "-"]);
        let mut p = FfmpegProcess::spawn("test ch1", cmd, false).unwrap();
        let err = p.wait().unwrap_err().to_string();
        assert!(err.contains("test ch1") && err.contains("exited"), "{err}");
        assert!(err.contains("rtsp://***@127.0.0.1:1"), "tail should name the input: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn raw_output_size_is_parsed_and_stop_terminates() {
        let mut cmd = command();
        cmd.args(["-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10"]).args([
            "-vf",
            "scale=-2:120",
            "-pix_fmt",
            "gray",
            "-f",
            "rawvideo",
            "pipe:1",
        ]);
        let mut p = FfmpegProcess::spawn("test raw", cmd, true).unwrap();
        let _stdout = p.take_stdout().unwrap();
        let size = p.wait_output_video(Duration::from_secs(10)).expect("output stream announced");
        assert_eq!(size, VideoSize { width: 160, height: 120 });
        let started = Instant::now();
        let status = p.stop(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(5), "SIGTERM should end ffmpeg promptly ({status})");
    }
}

//! The ffmpeg command lines of the relays (copy into nginx-rtmp, into the relay's buffer,
//! transcode for detection).

use cctv_common::config::RelayAudio;
use cctv_common::{ffmpeg, secret_input};

/// Bitstream filter of every relay's video (see [`relay_command`]).
pub const RELAY_FIX_MISSING_PTS: &str = r"setts=pts=if(eq(PTS\,NOPTS)\,DTS\,PTS)";

type Command = ffmpeg_sidecar::command::FfmpegCommand;

/// The ffmpeg input options and input of one camera stream. A URL with a password or token
/// is opened through a private list file, never named on the command line
/// ([`cctv_common::secret_input`]); the error is that file's, naming its directory.
pub(crate) fn relay_input(cmd: &mut Command, source: &str, timeout_s: u64) -> std::io::Result<()> {
    let scheme = source.split("://").next().unwrap_or("");
    let us = (timeout_s * 1_000_000).to_string();
    let options: Vec<(&str, String)> = match scheme {
        "rtsp" | "rtsps" => vec![("rtsp_transport", "tcp".into()), ("timeout", us)],
        "rtmp" | "http" | "https" => vec![("rw_timeout", us)],
        // Files (demos): paced like a live camera, looped.
        "file" => {
            cmd.args(["-re", "-stream_loop", "-1"]);
            Vec::new()
        }
        _ => Vec::new(),
    };
    cmd.args(secret_input::input_args(source.strip_prefix("file://").unwrap_or(source), &options)?);
    Ok(())
}

/// The output options and output of input `index`'s video (and audio per `audio`).
pub(crate) fn relay_output(cmd: &mut Command, index: usize, publish: &str, audio: RelayAudio) {
    cmd.args(["-map", &format!("{index}:v:0"), "-c:v", "copy"]);
    // A camera that sends B-frames over RTSP: ffmpeg's RTP demuxer gives the first packet no
    // PTS and FLV refuses it ("Packet is missing PTS"), so the relay would never publish. Such a
    // packet gets its DTS (which ffmpeg estimates) as PTS; every other packet is untouched.
    cmd.args(["-bsf:v", RELAY_FIX_MISSING_PTS]);
    audio_output(cmd, index, audio);
    cmd.args(["-f", "flv"]).output(publish);
}

/// Input `index`'s first audio track per `audio` (see [`audio_for`]: FLV and MPEG-TS carry
/// AAC/MP3; other camera codecs, G.711 and the like, need `aac`).
pub(crate) fn audio_output(cmd: &mut Command, index: usize, audio: RelayAudio) {
    let audio_map = format!("{index}:a:0?");
    match audio {
        RelayAudio::Drop => cmd.arg("-an"),
        RelayAudio::Copy => cmd.args(["-map", &audio_map, "-c:a", "copy"]),
        RelayAudio::Aac => cmd.args(["-map", &audio_map, "-c:a", "aac", "-b:a", "64k", "-ar", "44100"]),
    };
}

/// A relay's ffmpeg up to its first output: common options and the camera input.
pub(crate) fn input_command(source: &str, timeout_s: u64) -> std::io::Result<Command> {
    let mut cmd = ffmpeg::command();
    cmd.arg("-nostats");
    relay_input(&mut cmd, source, timeout_s)?;
    Ok(cmd)
}

/// The ffmpeg of a main stream nginx-rtmp cannot carry: stream copy into the relay's buffer
/// (`ring_args`: [`crate::ring::Ring::output_args`]), audio per `audio`. No `-xerror`: MPEG-TS
/// is strict about timestamps where FLV was tolerant, and one odd packet must not end it.
pub fn buffer_command(
    source: &str,
    ring_args: &[String],
    audio: RelayAudio,
    timeout_s: u64,
) -> std::io::Result<Command> {
    let mut cmd = input_command(source, timeout_s)?;
    cmd.args(["-map", "0:v:0", "-c:v", "copy", "-bsf:v", RELAY_FIX_MISSING_PTS]);
    audio_output(&mut cmd, 0, audio);
    cmd.args(ring_args);
    Ok(cmd)
}

/// The ffmpeg of a detect stream nginx-rtmp cannot carry: decoded and encoded to H.264 at
/// most 640 px wide at the camera's rate, a keyframe every 2 s (the motion gate's pace), no
/// B-frames or look-ahead (latency), no audio, into nginx-rtmp. (A rate cap of 10 or 15 fps
/// saved 20-30 % of its CPU but left 2-3.5 % of the motion worker's frames unaccounted for in
/// the load test: not taken; docs/loadtest.md.)
pub fn transcode_command(source: &str, publish: &str, timeout_s: u64) -> std::io::Result<Command> {
    let mut cmd = ffmpeg::command();
    // One decoder thread: frame threading holds a frame per extra thread (a latency of 0.2 s
    // at 10 fps on this 2-core machine).
    cmd.args(["-nostats", "-threads", "1"]);
    relay_input(&mut cmd, source, timeout_s)?;
    let vf = "scale='min(640,iw)':-2";
    cmd.args(["-map", "0:v:0", "-vf", vf, "-c:v", "libx264", "-preset", "ultrafast"]);
    cmd.args(["-tune", "zerolatency", "-pix_fmt", "yuv420p", "-force_key_frames", "expr:gte(t,n_forced*2)"]);
    cmd.args(["-an", "-f", "flv"]).output(publish);
    Ok(cmd)
}

/// The ffmpeg arguments of one relay (input options, input, output options, output).
pub fn relay_command(source: &str, publish: &str, audio: RelayAudio, timeout_s: u64) -> std::io::Result<Command> {
    let mut cmd = input_command(source, timeout_s)?;
    relay_output(&mut cmd, 0, publish, audio);
    Ok(cmd)
}

/// One ffmpeg relaying a camera's main stream (input 0, with `audio`) and its sub-stream
/// (input 1, video only). `-xerror`: an input that fails ends the process, so the camera is
/// restarted whole at once instead of relaying one stream until the watchdog notices.
pub fn camera_relay_command(
    main: (&str, &str),
    sub: (&str, &str),
    audio: RelayAudio,
    timeout_s: u64,
) -> std::io::Result<Command> {
    let mut cmd = ffmpeg::command();
    cmd.args(["-nostats", "-xerror"]);
    relay_input(&mut cmd, main.0, timeout_s)?;
    relay_input(&mut cmd, sub.0, timeout_s)?;
    relay_output(&mut cmd, 0, main.1, audio);
    relay_output(&mut cmd, 1, sub.1, RelayAudio::Drop);
    Ok(cmd)
}

//! What a camera stream carries, as ffprobe reads it: video codec, size and frame rate, and
//! the first audio track. The relay probes every stream when it starts and whenever it
//! restarts, decides from it how the stream travels (nginx-rtmp carries only H.264), and shows
//! it everywhere a channel is shown ("main H.265 1280x720 25 fps · audio G.711 A-law").

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::redact::redact_text;

/// A video codec as ffmpeg names it (`h264`, `hevc`, `mjpeg`, ...).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VideoProbe {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// Frames per second, when the stream declares a plausible rate.
    pub fps: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AudioProbe {
    pub codec: String,
    pub sample_rate: Option<u32>,
    pub channels: Option<u32>,
}

/// One stream's probe.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StreamProbe {
    pub video: Option<VideoProbe>,
    pub audio: Option<AudioProbe>,
}

/// How ffmpeg's codec names read to a user.
pub fn codec_label(codec: &str) -> String {
    match codec {
        "h264" => "H.264".into(),
        "hevc" => "H.265".into(),
        "pcm_alaw" => "G.711 A-law".into(),
        "pcm_mulaw" => "G.711 µ-law".into(),
        "adpcm_g726" | "adpcm_g726le" => "G.726".into(),
        "aac" => "AAC".into(),
        "mp3" => "MP3".into(),
        "opus" => "Opus".into(),
        "mjpeg" => "MJPEG".into(),
        other => other.to_uppercase(),
    }
}

impl VideoProbe {
    /// nginx-rtmp (FLV, its HLS muxer) carries this video as it is.
    pub fn nginx_carries(&self) -> bool {
        self.codec == "h264"
    }
}

impl AudioProbe {
    /// FLV and MPEG-TS both carry it by stream copy, and nginx-rtmp's HLS keeps it.
    pub fn copyable(&self) -> bool {
        matches!(self.codec.as_str(), "aac" | "mp3")
    }
}

impl StreamProbe {
    /// "H.265 1280x720 25 fps · audio G.711 A-law" (the audio part only with audio).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match &self.video {
            Some(v) => {
                let mut s = format!("{} {}x{}", codec_label(&v.codec), v.width, v.height);
                if let Some(fps) = v.fps {
                    s.push_str(&format!(" {} fps", (fps * 10.0).round() / 10.0));
                }
                parts.push(s);
            }
            None => parts.push("no video".into()),
        }
        if let Some(a) = &self.audio {
            parts.push(format!("audio {}", codec_label(&a.codec)));
        }
        parts.join(" · ")
    }

    /// Reads `ffprobe -of json -show_streams` output.
    pub fn from_ffprobe_json(json: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Out {
            #[serde(default)]
            streams: Vec<Stream>,
        }
        #[derive(Deserialize)]
        struct Stream {
            codec_type: Option<String>,
            codec_name: Option<String>,
            width: Option<u32>,
            height: Option<u32>,
            avg_frame_rate: Option<String>,
            r_frame_rate: Option<String>,
            sample_rate: Option<String>,
            channels: Option<u32>,
        }
        let out: Out = serde_json::from_str(json).map_err(|e| format!("ffprobe's answer is not JSON: {e}"))?;
        let mut probe = StreamProbe::default();
        for s in out.streams {
            let codec = s.codec_name.unwrap_or_else(|| "unknown".into());
            match s.codec_type.as_deref() {
                Some("video") if probe.video.is_none() => {
                    let fps = [s.avg_frame_rate, s.r_frame_rate].into_iter().flatten().find_map(|r| rate(&r));
                    probe.video =
                        Some(VideoProbe { codec, width: s.width.unwrap_or(0), height: s.height.unwrap_or(0), fps });
                }
                Some("audio") if probe.audio.is_none() => {
                    probe.audio = Some(AudioProbe {
                        codec,
                        sample_rate: s.sample_rate.and_then(|r| r.parse().ok()),
                        channels: s.channels,
                    });
                }
                _ => {}
            }
        }
        Ok(probe)
    }
}

/// `25/1` → 25.0; `0/0` and rates no camera sends (RTP's 90000/1) → None.
fn rate(r: &str) -> Option<f64> {
    let (n, d) = r.split_once('/')?;
    let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
    let fps = n / d;
    (d > 0.0 && fps > 0.0 && fps <= 240.0).then_some(fps)
}

/// ffprobe's input options for `source` (RTSP over TCP with a socket timeout, like the relay),
/// as (name, value) pairs.
pub fn input_options(source: &str, timeout: Duration) -> Vec<(&'static str, String)> {
    let us = timeout.as_micros().to_string();
    let mut options = match source.split("://").next().unwrap_or("") {
        "rtsp" | "rtsps" => vec![("rtsp_transport", "tcp".to_string()), ("timeout", us)],
        "rtmp" | "http" | "https" => vec![("rw_timeout", us)],
        _ => Vec::new(),
    };
    // Enough to see the codecs of a camera whose keyframes are 4 s apart, not more.
    options.extend([("probesize", "2000000".to_string()), ("analyzeduration", "5000000".to_string())]);
    options
}

/// Probes `source` (a camera URL or a file), giving up after `timeout`. The error is the
/// first meaningful line ffprobe printed, redacted and in plain words. A URL with a password
/// or token is not named on ffprobe's command line ([`crate::secret_input`]).
pub fn probe(source: &str, timeout: Duration) -> Result<StreamProbe, String> {
    let path = source.strip_prefix("file://").unwrap_or(source);
    let mut input = crate::secret_input::input_args(path, &input_options(source, timeout))
        .map_err(|e| redact_text(&format!("probing the stream failed: {e}")).into_owned())?;
    // `-i <input>` last: ffprobe takes the input as its last argument.
    let input_name = input.pop().unwrap_or_default();
    input.pop();
    let mut args: Vec<String> = vec!["-v".into(), "error".into()];
    args.extend(input);
    args.extend(
        [
            "-show_entries",
            "stream=codec_type,codec_name,width,height,avg_frame_rate,r_frame_rate,sample_rate,channels",
            "-of",
            "json",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match crate::ffmpeg::ffprobe(&args, std::path::Path::new(&input_name), timeout + Duration::from_secs(5)) {
        Ok(out) => StreamProbe::from_ffprobe_json(&out),
        Err(crate::ffmpeg::FfmpegError::Exited { tail, .. }) => {
            Err(format!("probing the stream failed: {}", crate::ffmpeg::explain_failure(&tail)))
        }
        Err(e) => Err(redact_text(&format!("probing the stream failed: {e}")).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_h265_camera_with_g711_audio_reads_as_such() {
        let json = r#"{"streams":[
            {"codec_name":"hevc","codec_type":"video","width":1280,"height":720,"r_frame_rate":"25/1","avg_frame_rate":"0/0"},
            {"codec_name":"pcm_alaw","codec_type":"audio","sample_rate":"8000","channels":1,"r_frame_rate":"0/0","avg_frame_rate":"0/0"}]}"#;
        let p = StreamProbe::from_ffprobe_json(json).unwrap();
        assert_eq!(p.summary(), "H.265 1280x720 25 fps · audio G.711 A-law");
        assert!(!p.video.as_ref().unwrap().nginx_carries());
        assert!(!p.audio.as_ref().unwrap().copyable());
        let h264 = r#"{"streams":[{"codec_name":"h264","codec_type":"video","width":640,"height":360,"r_frame_rate":"90000/1","avg_frame_rate":"25/2"}]}"#;
        let p = StreamProbe::from_ffprobe_json(h264).unwrap();
        assert_eq!(p.summary(), "H.264 640x360 12.5 fps");
        assert!(p.video.unwrap().nginx_carries() && p.audio.is_none());
        let rtp_clock = r#"{"streams":[{"codec_name":"h264","codec_type":"video","width":640,"height":360,"r_frame_rate":"90000/1"}]}"#;
        assert_eq!(StreamProbe::from_ffprobe_json(rtp_clock).unwrap().summary(), "H.264 640x360");
        assert!(StreamProbe::from_ffprobe_json("not json").is_err());
    }

    #[test]
    fn a_real_h265_file_is_probed_and_an_unreachable_camera_is_named_in_plain_words() {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("hevc.mp4");
        let made = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10", "-t", "1"])
            .args(["-c:v", "libx265", "-x265-params", "log-level=error", "-tag:v", "hvc1"])
            .arg(&clip)
            .status()
            .unwrap();
        assert!(made.success());
        let p = probe(clip.to_str().unwrap(), Duration::from_secs(5)).unwrap();
        assert_eq!(p.summary(), "H.265 320x240 10 fps");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = probe(&format!("rtsp://admin:s3cret@127.0.0.1:{port}/x?password=s3cret"), Duration::from_secs(2))
            .unwrap_err();
        assert!(err.contains("refused the connection"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}

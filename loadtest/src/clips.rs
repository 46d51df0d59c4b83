//! The simulated cameras' clips (encoded once from `../shared/media`, then served by stream
//! copy) and what each camera shows.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{gop_frames, SceneMix};

/// Camera clips: an active scene and a still one, main and sub-stream, long enough for the run
/// (a short encode, then stream-copied many times over, so clip ends are rare).
pub(crate) fn prepare_clips(cache: &Path, gop_secs: f64, h265: bool) -> anyhow::Result<[Clips; 3]> {
    std::fs::create_dir_all(cache)?;
    let make = |name: &str, src: &str, vf_extra: &str| -> anyhow::Result<Clips> {
        let mut out = Vec::new();
        let kinds = [("main", 1280, 720, 25), ("sub", 640, 360, 10), ("main265", 1280, 720, 25)];
        for (kind, w, h, fps) in kinds.into_iter().take(if h265 { 3 } else { 2 }) {
            let (gop, suffix) = gop_frames(fps, gop_secs);
            let long = cache.join(format!("{name}-{kind}{suffix}.mp4"));
            if !long.is_file() {
                let short = cache.join(format!("{name}-{kind}-short.mp4"));
                let vf = format!("fps={fps},scale={w}:{h}{vf_extra},format=yuv420p");
                let gop = gop.to_string();
                let x265 = format!("log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0");
                let codec: &[&str] = if kind == "main265" {
                    &["-c:v", "libx265", "-preset", "veryfast", "-x265-params", &x265, "-tag:v", "hvc1"]
                } else {
                    &["-c:v", "libx264", "-preset", "veryfast", "-g", &gop, "-bf", "0"]
                };
                let ok = Command::new("ffmpeg")
                    .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-stream_loop", "3", "-i"])
                    .arg(cctv_testkit::media(src))
                    .args(["-vf", &vf])
                    .args(codec)
                    .arg("-an")
                    .arg(&short)
                    .status()?
                    .success();
                anyhow::ensure!(ok, "encoding {}", short.display());
                let part = cache.join(format!("{name}-{kind}.part.mp4"));
                let ok = Command::new("ffmpeg")
                    .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-stream_loop", "60", "-i"])
                    .arg(&short)
                    .args(["-c", "copy"])
                    .arg(&part)
                    .status()?
                    .success();
                anyhow::ensure!(ok, "looping {}", part.display());
                std::fs::rename(&part, &long)?;
                let _ = std::fs::remove_file(&short);
            }
            out.push(long);
        }
        Ok(Clips { main: out[0].clone(), sub: out[1].clone(), main265: out.get(2).cloned() })
    };
    Ok([
        // Activity then 15 s of stillness, over and over: motion events start and end.
        make("people-q", "worker-zone-detection.gif", ",tpad=stop_mode=clone:stop_duration=15")?,
        make("shoppers-q", "store-aisle-detection.gif", ",tpad=stop_mode=clone:stop_duration=15")?,
        // A still scene as a camera sends it: with temporal sensor noise (a frozen frame without
        // it is nearly free to decode and made quiet cameras look cheaper than they are).
        make(
            "still-noisy",
            "store-aisle-detection.gif",
            ",trim=end_frame=1,tpad=stop_mode=clone:stop_duration=20,noise=alls=4:allf=t",
        )?,
    ])
}

/// One scene's camera clips: H.264 main and sub-stream, and the main stream in H.265 when an
/// H.265 mix asks for it.
#[derive(Debug, Clone)]
pub struct Clips {
    pub main: PathBuf,
    pub sub: PathBuf,
    pub main265: Option<PathBuf>,
}

/// What camera `i` (from 1) shows: 0 people (the priority channels' scene), 1 shoppers, 2 still.
pub(crate) fn camera_scene(i: usize, scenes: SceneMix) -> usize {
    match (scenes, i % 8) {
        (SceneMix::Still, _) => 2,
        (SceneMix::Mixed, 1) => 0,
        (SceneMix::Mixed, 5) => 1,
        (SceneMix::Mixed, _) => 2,
        (SceneMix::Active, _) => 1 - i % 2,
    }
}

/// Whether camera `i` is a priority channel (YOLO): the cameras showing people in a mixed or
/// active load, one in eight of a still one.
pub(crate) fn camera_priority(i: usize, scenes: SceneMix) -> bool {
    match scenes {
        SceneMix::Active => camera_scene(i, scenes) == 0,
        SceneMix::Mixed | SceneMix::Still => i % 8 == 1,
    }
}

//! The scripted scenes: clips cut from real footage with the clip's frame number as a bar
//! code, their YOLO ground truth, and reading the bar codes back from a backup file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{BAR_CELLS, BAR_ROWS, FPS, HEIGHT, WIDTH};
use crate::workspace_bin;

/// One piece of a scene's script.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Step {
    /// Nobody in view, this many seconds.
    Empty(f64),
    /// Someone comes into view (the scene's footage of arriving).
    Enter,
    /// Whoever is in view stands perfectly still, this many seconds.
    Stand(f64),
    /// Someone walks out of view.
    Leave,
    /// The scene's footage of people at work, played this many times.
    Play(u32),
}

/// A scene: real footage and a script over it.
#[derive(Debug, Clone)]
pub(crate) struct Scene {
    /// The footage (see [`scene_segments`]).
    pub(crate) name: &'static str,
    /// How the report names it.
    pub(crate) label: &'static str,
    /// The camera sends H.265 on both streams, through a real RTSP server and the relay (the
    /// main stream into the relay's own buffer, the sub-stream transcoded to H.264 for
    /// detection); the other scenes publish H.264 into nginx-rtmp directly.
    pub(crate) h265: bool,
    pub(crate) what: &'static str,
    pub(crate) script: Vec<Step>,
    /// The lights go down over this span of clip time (seconds), while nobody is there.
    pub(crate) lights_down: (f64, f64),
}

pub(crate) fn scenes(quick: bool) -> Vec<Scene> {
    use Step::*;
    let room = Scene {
        name: "room",
        label: "room",
        h265: false,
        what: "people-detection.gif: an empty room (real footage, played back and forth), a person walks in \
               through the door, stands still, walks out",
        // Stands 12 s; passes through after 4 s; comes back (3 s after in the quick script,
        // 6 s then 3 s after in the full one) and stands again.
        script: [
            vec![Empty(if quick { 25.0 } else { 30.0 }), Enter, Stand(12.0), Leave, Empty(4.0), Enter, Leave],
            if quick {
                vec![Empty(3.0), Enter, Stand(10.0), Leave, Empty(30.0)]
            } else {
                vec![Empty(6.0), Enter, Stand(3.0), Leave, Empty(3.0), Enter, Stand(20.0), Leave, Empty(45.0)]
            },
        ]
        .concat(),
        lights_down: if quick { (8.0, 14.0) } else { (10.0, 18.0) },
    };
    let floor = Scene {
        name: "floor",
        label: "floor",
        h265: false,
        what: "worker-zone-detection.gif: an empty factory floor (the footage's temporal median with sensor \
               noise), workers walk through, one stops for 12 s",
        script: vec![Empty(30.0), Play(1), Stand(12.0), Play(1), Empty(5.0), Play(2), Empty(4.0), Play(1), Empty(45.0)],
        lights_down: (12.0, 20.0),
    };
    // The room again, from a camera that sends nothing but H.265.
    let room_h265 = Scene {
        label: "room (H.265)",
        h265: true,
        what: "the room's script and footage from a camera that sends H.265 on both streams (RTSP → relay: \
               main stream into the relay's own buffer, sub-stream transcoded to H.264 for detection)",
        ..room.clone()
    };
    if quick {
        vec![room]
    } else {
        vec![room, floor, room_h265]
    }
}

pub(crate) fn ffmpeg(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .context("running ffmpeg (apt-get install ffmpeg)")?;
    anyhow::ensure!(out.status.success(), "ffmpeg {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

pub(crate) const SEGMENT_ENCODE: [&str; 10] =
    ["-c:v", "libx264", "-preset", "veryfast", "-crf", "12", "-g", "10", "-bf", "0"];

/// Encodes one filter graph of `source` into `out` (an intermediate segment).
pub(crate) fn segment(source: &Path, pre_input: &[&str], graph: &str, out: &Path) -> anyhow::Result<()> {
    let mut args: Vec<&str> = pre_input.to_vec();
    let src = source.to_str().context("media path")?;
    args.extend(["-i", src, "-filter_complex", graph]);
    args.extend(SEGMENT_ENCODE);
    args.extend(["-an", out.to_str().context("segment path")?]);
    ffmpeg(&args)
}

/// The scene's building blocks, encoded once into `dir`; returns the segment file per step.
pub(crate) fn scene_segments(scene: &Scene, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let v = format!("fps={FPS},scale={WIDTH}:{HEIGHT},format=yuv420p");
    let empty_loop = dir.join("empty-loop.mp4");
    let (enter, leave, stand_frame, play) =
        (dir.join("enter.mp4"), dir.join("leave.mp4"), dir.join("stand.png"), dir.join("play.mp4"));
    match scene.name {
        "room" => {
            // The footage: a person leaves the room through a door on the left within 1.2 s;
            // the rest is the empty room. Its empty part played forth and back is an endless
            // empty room with real sensor noise and no jump.
            let src = cctv_testkit::media("people-detection.gif");
            segment(
                &src,
                &[],
                &format!("[0]trim=start=1.2,setpts=PTS-STARTPTS,{v},split[a][b];[b]reverse[r];[a][r]concat"),
                &empty_loop,
            )?;
            segment(&src, &[], &format!("[0]trim=end=1.2,setpts=PTS-STARTPTS,{v},reverse"), &enter)?;
            segment(&src, &[], &format!("[0]trim=end=1.2,setpts=PTS-STARTPTS,{v}"), &leave)?;
            ffmpeg(&[
                "-i",
                src.to_str().unwrap_or_default(),
                "-vf",
                &v,
                "-frames:v",
                "1",
                stand_frame.to_str().unwrap_or_default(),
            ])?;
        }
        _ => {
            // Workers are always in view in this footage: the empty floor is its temporal
            // median (people removed) with temporal noise as a camera sensor adds.
            let src = cctv_testkit::media("worker-zone-detection.gif");
            let median = dir.join("median.png");
            ffmpeg(&[
                "-i",
                src.to_str().unwrap_or_default(),
                "-vf",
                "tmedian=radius=20",
                "-frames:v",
                "1",
                "-update",
                "1",
                median.to_str().unwrap_or_default(),
            ])?;
            segment(&median, &["-loop", "1", "-t", "3"], &format!("[0]{v},noise=alls=4:allf=t"), &empty_loop)?;
            segment(&src, &[], &format!("[0]{v}"), &play)?;
            ffmpeg(&[
                "-sseof",
                "-0.3",
                "-i",
                src.to_str().unwrap_or_default(),
                "-vf",
                &v,
                "-update",
                "1",
                stand_frame.to_str().unwrap_or_default(),
            ])?;
        }
    }
    let mut out = Vec::new();
    for (i, step) in scene.script.iter().enumerate() {
        let path = dir.join(format!("step-{i}.mp4"));
        let secs = |s: f64| format!("{s}");
        match *step {
            Step::Empty(s) => ffmpeg(&[
                "-stream_loop",
                "-1",
                "-i",
                empty_loop.to_str().unwrap_or_default(),
                "-t",
                &secs(s),
                "-c",
                "copy",
                path.to_str().unwrap_or_default(),
            ])?,
            Step::Enter => std::fs::copy(&enter, &path).map(|_| ())?,
            Step::Leave => std::fs::copy(&leave, &path).map(|_| ())?,
            Step::Stand(s) => segment(&stand_frame, &["-loop", "1", "-t", &secs(s)], &format!("[0]{v}"), &path)?,
            Step::Play(n) => ffmpeg(&[
                "-stream_loop",
                &(n - 1).to_string(),
                "-i",
                play.to_str().unwrap_or_default(),
                "-c",
                "copy",
                path.to_str().unwrap_or_default(),
            ])?,
        }
        out.push(path);
    }
    Ok(out)
}

/// A scene's camera clips and its timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SceneClips {
    pub(crate) main: PathBuf,
    pub(crate) sub: PathBuf,
    pub(crate) frames: u32,
    /// Per clip second: the script has someone in view.
    pub(crate) scripted: Vec<bool>,
    /// Clip time (s) of the first frame of every step that brings someone into view (`Enter`,
    /// `Play`): activity cannot begin before it, so onsets are timed from it.
    pub(crate) activity_starts_s: Vec<f64>,
    /// Per clip second: the labels YOLO saw (2 frames per second, score ≥ `yolo.min_score`).
    pub(crate) seen: Vec<BTreeSet<String>>,
}

/// Makes (or reuses from `cache`) the scene's main and sub-stream clips and their ground truth.
pub(crate) fn prepare_scene(
    scene: &Scene,
    gop_secs: f64,
    cache: &Path,
    yolo_config: &Path,
) -> anyhow::Result<SceneClips> {
    let (gop, gop_key) = crate::gop_frames(FPS, gop_secs);
    let key = format!("{}{gop_key}-{:016x}", scene.name, fingerprint(&format!("{:?}", scene)));
    let dir = cache.join(&key);
    let meta = dir.join("scene.json");
    if let Ok(text) = std::fs::read_to_string(&meta) {
        if let Ok(c) = serde_json::from_str::<SceneClips>(&text) {
            if c.main.is_file() && c.sub.is_file() {
                return Ok(c);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let steps = scene_segments(scene, &dir)?;
    let list: String = steps.iter().map(|p| format!("file '{}'\n", p.display())).collect();
    std::fs::write(dir.join("list.txt"), list)?;
    let raw = dir.join("raw.mp4");
    ffmpeg(&[
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        dir.join("list.txt").to_str().unwrap_or_default(),
        "-c",
        "copy",
        raw.to_str().unwrap_or_default(),
    ])?;
    // Clock (a camera OSD, 2026-01-01 00:00:00 at clip start) and the lights on both streams;
    // the frame-number bar code on the main stream only.
    let font = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    anyhow::ensure!(Path::new(font).is_file(), "{font} is missing (apt-get install fonts-dejavu-core)");
    let (down, up) = scene.lights_down;
    let graph = format!(
        "[0]eq=brightness=-0.25:enable='between(t,{down},{up})',\
         drawtext=fontfile={font}:fontsize=18:fontcolor=white:x=8:y=8:text='%{{pts\\:gmtime\\:1767225600\\:%Y-%m-%d %H\\\\\\:%M\\\\\\:%S}}',\
         split=2[sub][m];[m]split[a][b];\
         [b]{bar}[bar];\
         [a][bar]overlay=0:{y}[main]",
        y = HEIGHT - BAR_ROWS,
        bar = cctv_testkit::frame_number_bar_code(WIDTH, HEIGHT - BAR_ROWS),
    );
    let (main, sub) = (dir.join("main.mp4"), dir.join("sub.mp4"));
    let gop = gop.to_string();
    let enc = ["-c:v", "libx264", "-preset", "veryfast", "-g", &gop, "-bf", "0", "-an"];
    let mut args = vec!["-i", raw.to_str().unwrap_or_default(), "-filter_complex", &graph, "-map", "[sub]"];
    args.extend(enc);
    args.extend([sub.to_str().unwrap_or_default(), "-map", "[main]"]);
    args.extend(enc);
    args.push(main.to_str().unwrap_or_default());
    ffmpeg(&args)?;
    let (main, sub) = if scene.h265 {
        // As an H.265 camera sends them: x265, same keyframe interval, quality high enough
        // that the bar code reads back.
        let x265 = format!("log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:crf=18");
        let (main265, sub265) = (dir.join("main265.mp4"), dir.join("sub265.mp4"));
        for (from, to) in [(&main, &main265), (&sub, &sub265)] {
            let (from, to) = (from.to_str().unwrap_or_default(), to.to_str().unwrap_or_default());
            ffmpeg(&[
                "-i",
                from,
                "-c:v",
                "libx265",
                "-preset",
                "veryfast",
                "-x265-params",
                &x265,
                "-tag:v",
                "hvc1",
                "-an",
                to,
            ])?;
        }
        (main265, sub265)
    } else {
        (main, sub)
    };
    let frames = read_bar_codes(&main)?.len() as u32;
    let secs = frames.div_ceil(FPS) as usize;
    // The script's timeline, from the steps' real lengths.
    let mut scripted = vec![false; secs];
    let mut activity_starts_s = Vec::new();
    let mut t = 0.0;
    for (step, path) in scene.script.iter().zip(&steps) {
        let len = media_secs(path)?;
        if matches!(step, Step::Enter | Step::Play(_)) {
            activity_starts_s.push(t);
        }
        if !matches!(step, Step::Empty(_)) {
            let end = ((t + len).ceil() as usize).min(secs);
            scripted[(t as usize).min(end)..end].fill(true);
        }
        t += len;
    }
    let seen = ground_truth(&sub, secs, &dir.join("truth"), yolo_config)?;
    let clips = SceneClips { main, sub, frames, scripted, activity_starts_s, seen };
    std::fs::write(&meta, serde_json::to_string_pretty(&clips)?)?;
    Ok(clips)
}

pub(crate) fn fingerprint(s: &str) -> u64 {
    // FNV-1a: stable across runs and Rust versions (the cache key).
    s.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

pub(crate) fn media_secs(path: &Path) -> anyhow::Result<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .context("running ffprobe")?;
    String::from_utf8_lossy(&out.stdout).trim().parse().with_context(|| format!("duration of {}", path.display()))
}

/// YOLO on the clip at 2 frames per second: per clip second, the labels seen.
pub(crate) fn ground_truth(
    sub: &Path,
    secs: usize,
    dir: &Path,
    config: &Path,
) -> anyhow::Result<Vec<BTreeSet<String>>> {
    std::fs::create_dir_all(dir)?;
    ffmpeg(&[
        "-i",
        sub.to_str().unwrap_or_default(),
        "-vf",
        "fps=2",
        dir.join("%05d.png").to_str().unwrap_or_default(),
    ])?;
    let mut images: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    images.sort();
    let out = Command::new(workspace_bin("worker-yolo")?)
        .arg("--config")
        .arg(config)
        .arg("detect")
        .arg("--json")
        .args(&images)
        .output()
        .context("running worker-yolo detect")?;
    anyhow::ensure!(out.status.success(), "worker-yolo detect: {}", String::from_utf8_lossy(&out.stderr).trim());
    #[derive(Deserialize)]
    struct Detection {
        label: String,
    }
    #[derive(Deserialize)]
    struct Line {
        image: PathBuf,
        detections: Vec<Detection>,
    }
    let mut seen = vec![BTreeSet::new(); secs];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let l: Line = serde_json::from_str(line).with_context(|| format!("worker-yolo detect printed {line}"))?;
        // %05d.png from 1: image k shows clip time (k - 1) / 2 s.
        let k: usize =
            l.image.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).context("image name")?;
        if let Some(set) = seen.get_mut((k - 1) / 2) {
            set.extend(l.detections.into_iter().map(|d| d.label));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(seen)
}

/// The frame numbers a video's bar code carries, in order (`None` where the code is unreadable).
pub(crate) fn read_bar_codes(video: &Path) -> anyhow::Result<Vec<Option<u32>>> {
    let vf = format!("crop={WIDTH}:{BAR_ROWS}:0:{},scale={BAR_CELLS}:1:flags=area,format=gray", HEIGHT - BAR_ROWS);
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
        .arg(video)
        .args(["-vf", &vf, "-f", "rawvideo", "-"])
        .output()
        .context("running ffmpeg")?;
    anyhow::ensure!(
        out.status.success(),
        "reading {}: {}",
        video.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out
        .stdout
        .chunks_exact(BAR_CELLS as usize)
        .map(|c| {
            let bit = |v: u8| v > 128;
            (bit(c[0]) && !bit(c[BAR_CELLS as usize - 1]))
                .then(|| (1..BAR_CELLS as usize - 1).filter(|&k| bit(c[k])).map(|k| 1u32 << (k - 1)).sum())
        })
        .collect())
}

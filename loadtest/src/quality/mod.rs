//! The selective-backup quality harness (`loadtest quality`, see `docs/quality.md`).
//!
//! Scripted camera clips made from real footage in `../shared/media` — an empty room or floor,
//! people who walk in, stand still and leave, short gaps between them, a burnt-in OSD clock and
//! the lights going down and up while nobody is there — are published as cameras (main stream
//! plus sub-stream) into a real cluster: redis-server, nginx-rtmp, the scheduler and the motion,
//! YOLO and record workers, the same binaries a site runs, with default settings. Each scene runs
//! on one channel with `record = "motion"` and one priority channel with `record = "objects"`.
//!
//! **Ground truth** is YOLOv5n (`worker-yolo detect`) on the sub-stream clip at 2 frames per
//! second: a second is *present* when a wanted object is seen in it. The script's own activity
//! (entering, standing, leaving) counts too; everything else is *quiet*.
//!
//! **What was backed up** is read from the backup files themselves: the main stream carries the
//! clip's frame number as a 14-bit bar code in its bottom 16 rows (the sub-stream, which motion
//! detection reads, does not), so every recorded frame maps back to the exact clip frame, with no
//! clock skew between camera, server and recorder. Seconds in two files, missing seconds and
//! quiet seconds are counted, not estimated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use cctv_common::events::{now_ms, BackupEvent, BackupEventKind, MotionEvent, MotionEventKind};
use cctv_common::keys::Keys;
use cctv_common::recording::{RecordingState, RecordingStore};
use cctv_common::status::RelayStatus;
// The frame-number bar code at the bottom of the main stream: `cctv_testkit::frame_number_bar_code`.
use cctv_testkit::{Nginx, Pusher, Redis, BAR_CELLS, BAR_ROWS};

use crate::{workspace_bin, Proc};

mod scenes;
mod score;

use scenes::*;
pub use score::*;

/// Clip frame rate (main and sub-stream).
const FPS: u32 = 10;
const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;
/// Keyframe interval of the clips, s: stream copy can only cut a file there, so a recording
/// starts up to one GOP before its pre-roll and ends up to one GOP after its post-roll.
const GOP_SECS: f64 = 2.0;
/// The policy of the channel that records the first scene all the time, and its id.
const CONTINUOUS: &str = "continuous";
const CONTINUOUS_CHANNEL: u32 = 99;
/// Files of this length, so the continuous channel's files meet inside the clip (and activity
/// recordings longer than this are split the same way: the duplicate check covers both).
const FILE_SECS: u32 = 30;
/// Namespace of the harness' cluster in Redis.
const NS: &str = "quality";

/// What to run.
#[derive(Debug, Clone)]
pub struct QualityOptions {
    /// One scene (the room), shorter script: checks the harness in the test suite.
    pub quick: bool,
    pub report_dir: PathBuf,
    /// Clips and their ground truth are kept here between runs.
    pub cache_dir: PathBuf,
    /// `[motion]` settings of the cluster (`crate::motion_section`), empty for the defaults.
    pub motion: String,
    /// The cameras' keyframe interval, seconds (both streams).
    pub gop_secs: f64,
}

/// A channel of the harness' cluster: id, record policy, and the RTSP camera (main and
/// sub-stream URLs) it comes from when the relay brings it (H.265 scenes).
type HarnessChannel<'a> = (u32, &'a str, Option<(String, String)>);

/// `model`: the YOLO model of the config (the ground truth is made with the fixed 640x640 export,
/// the reference; the cluster runs the default, the any-size model).
fn config_text(
    redis: &Redis,
    nginx: &Nginx,
    dir: &Path,
    channels: &[HarnessChannel],
    motion: &str,
    model: &Path,
) -> String {
    let mut t = motion.to_string();
    t += &format!(
        "[cluster]\nredis_url = \"{}\"\nnamespace = \"{NS}\"\n\
         [rtmp]\npublish_url = \"{live}\"\nplay_url = \"{live}\"\nhls_url = \"{}\"\n\
         [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
         [record]\nbackup_dir = \"{}\"\ntimezone = \"UTC\"\nmax_file_seconds = {FILE_SECS}\n[logs]\ndir = \"{}\"\n\
         [yolo]\nmodel = \"{}\"\nsnapshot_dir = \"{}\"\n",
        redis.url(),
        nginx.hls_url(),
        dir.join("backups").display(),
        dir.join("logs").display(),
        model.display(),
        dir.join("snapshots").display(),
        live = nginx.live_url(),
        // Its own port: the default 8088 may be taken (another cluster, a site's scheduler).
        api_port = cctv_testkit::free_port(),
    );
    t += &format!("[relay]\nhls_dir = \"{}\"\n", nginx.hls_dir().display());
    for (id, policy, camera) in channels {
        // H.264 cameras publish into nginx themselves (stream copy, as the relays do) and their
        // sources are never dialled; H.265 cameras are real RTSP cameras behind the relay.
        let (source, detect) = camera
            .clone()
            .unwrap_or_else(|| (format!("rtsp://127.0.0.1:1/cam{id}"), format!("rtsp://127.0.0.1:1/cam{id}-sub")));
        let extra = match *policy {
            "objects" => "priority = true\nrecord = \"objects\"\n",
            CONTINUOUS => "record = \"continuous\"\n",
            _ => "",
        };
        t += &format!(
            "[[channel]]\nid = {id}\nname = \"quality {id}\"\nsource = \"{source}\"\n\
             detect_source = \"{detect}\"\n{extra}"
        );
    }
    t
}

/// Runs the harness; returns the report (already written to `report_dir`).
pub async fn quality(opts: QualityOptions) -> anyhow::Result<QualityReport> {
    std::fs::create_dir_all(&opts.report_dir)?;
    std::fs::create_dir_all(&opts.cache_dir)?;
    // Absolute: ffmpeg's concat lists name their parts, and a relative name there is taken
    // from the list's own directory (the default `.local/quality-clips` found no part).
    let cache_dir = std::path::absolute(&opts.cache_dir)?;
    let work = crate::tempfile_dir(&opts.report_dir)?;
    let logs = work.join("process-logs");
    std::fs::create_dir_all(&logs)?;
    let redis = Redis::start();
    let nginx = Nginx::start();
    let scenes = scenes(opts.quick);
    // Every scene on a motion and an objects channel; the first scene also on a continuous one.
    let policies = |i: u32| {
        let mut p = vec![(2 * i + 1, "motion"), (2 * i + 2, "objects")];
        if i == 0 {
            p.push((CONTINUOUS_CHANNEL, CONTINUOUS));
        }
        p
    };
    // Ground truth is made with a config that names every channel (YOLO settings, classes).
    let plain: Vec<HarnessChannel> = (0..scenes.len() as u32).flat_map(policies).map(|(id, p)| (id, p, None)).collect();
    let cfg = work.join("cctv.toml");
    let reference_model = cctv_testkit::shared_dir().join("models/yolov5n.onnx");
    crate::write_config(&cfg, &config_text(&redis, &nginx, &work, &plain, &opts.motion, &reference_model))?;
    crate::default_ort_path()?;
    eprintln!("preparing scenes and their ground truth in {} (first run only)...", cache_dir.display());
    let clips: Vec<SceneClips> =
        scenes.iter().map(|s| prepare_scene(s, opts.gop_secs, &cache_dir, &cfg)).collect::<Result<_, _>>()?;
    // The H.265 scenes' cameras: a real RTSP server, one camera per channel.
    let h265: Vec<(u32, usize)> = scenes
        .iter()
        .enumerate()
        .filter(|(_, s)| s.h265)
        .flat_map(|(i, _)| policies(i as u32).into_iter().map(move |(id, _)| (id, i)))
        .collect();
    let rtsp = (!h265.is_empty()).then(|| {
        let cams: Vec<(PathBuf, PathBuf)> =
            h265.iter().map(|(_, i)| (clips[*i].main.clone(), clips[*i].sub.clone())).collect();
        cctv_testkit::RtspCameras::start(&cams)
    });
    let mut channels: Vec<HarnessChannel> = plain.clone();
    for (cam, (id, _)) in h265.iter().enumerate() {
        let rtsp = rtsp.as_ref().context("RTSP cameras")?;
        let url = |stream| rtsp.url("", cam as u32 + 1, stream);
        if let Some(c) = channels.iter_mut().find(|c| c.0 == *id) {
            c.2 = Some((url("main"), url("sub")));
        }
    }
    let model = cctv_testkit::any_size_model().context("the any-size YOLO model")?;
    crate::write_config(&cfg, &config_text(&redis, &nginx, &work, &channels, &opts.motion, &model))?;
    let config = cctv_common::config::Config::load(&cfg)?;

    let mut pushers = Vec::new();
    for (i, scene) in scenes.iter().enumerate().filter(|(_, s)| !s.h265) {
        debug_assert!(!scene.h265);
        for (id, _) in policies(i as u32) {
            pushers.push((
                id,
                Pusher::start_with_sub(&clips[i].main, &clips[i].sub, &nginx.live_url(), &format!("ch{id}")),
            ));
        }
    }
    let mut t0: BTreeMap<u32, i64> = pushers.iter().map(|(id, p)| (*id, p.wait_publishing())).collect();
    let cfgs = cfg.to_str().context("config path")?;
    let mut procs = Vec::new();
    if !h265.is_empty() {
        // The relay brings the RTSP cameras only: its config names no other channel.
        let relay_cfg = work.join("relay.toml");
        let only: Vec<HarnessChannel> = channels.iter().filter(|c| c.2.is_some()).cloned().collect();
        crate::write_config(&relay_cfg, &config_text(&redis, &nginx, &work, &only, &opts.motion, &model))?;
        let relay_cfgs = relay_cfg.to_str().context("config path")?;
        let args = ["--config", relay_cfgs, "run"];
        procs.push(Proc::spawn("relay", &workspace_bin("cctv-relay")?, &args, &logs.join("relay.log"))?);
        // A clip starts when its RTSP session plays: the relay's detect-stream process started
        // just before (its connect time makes onsets look a little later, never earlier).
        let mut conn = redis::Client::open(redis.url())?.get_multiplexed_async_connection().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        for (id, _) in &h265 {
            loop {
                let st = RelayStatus::read(&mut conn, &Keys::new(NS), *id).await?;
                let sub = st.and_then(|s| s.sub).filter(|sub| sub.running && sub.route.is_some());
                if let Some(since) = sub.and_then(|sub| sub.since_ms) {
                    t0.insert(*id, since);
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "the relay did not bring channel {id} within 60 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    for (name, bin, args) in [
        ("scheduler", "scheduler", vec!["--config", cfgs, "run"]),
        ("worker-motion", "worker-motion", vec!["--config", cfgs, "run"]),
        ("worker-yolo", "worker-yolo", vec!["--config", cfgs, "run"]),
        ("worker-record", "worker-record", vec!["--config", cfgs, "run"]),
    ] {
        procs.push(Proc::spawn(name, &workspace_bin(bin)?, &args, &logs.join(format!("{name}.log")))?);
    }
    let clip_secs = clips.iter().map(|c| c.scripted.len()).max().unwrap_or(0) as u64;
    eprintln!("playing {clip_secs} s of scripted footage on {} channels...", channels.len());
    let started = Instant::now();
    // The first play, then until every recording is closed (files written).
    let play_end = Duration::from_secs(clip_secs + 2);
    let client = redis::Client::open(redis.url())?;
    let store = RecordingStore::new(redis::aio::ConnectionManager::new(client.clone()).await?, Keys::new(NS));
    tokio::time::sleep(play_end).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    // The cameras loop their clip: recordings of the second play are not waited for or scored.
    let first_play_end = |id: u32| t0[&id] + clip_secs as i64 * 1000;
    let keys = Keys::new(NS);
    let mut conn = client.get_multiplexed_async_connection().await?;
    loop {
        let mut open = 0;
        for (id, policy, _) in &channels {
            if *policy == CONTINUOUS {
                // Its active slot is always open: wait for the file that reaches the play's end.
                let events = crate::stream::<BackupEvent>(&mut conn, &keys.backup_events(), 0).await;
                let done = events.iter().any(|(_, e)| {
                    e.channel == *id && e.kind == BackupEventKind::File && e.end_ms >= first_play_end(*id)
                });
                open += usize::from(!done);
            } else if let Some(v) = store.active(*id).await? {
                open += usize::from(v.rec.state != RecordingState::Closed && v.rec.start_ms < first_play_end(*id));
            }
        }
        if open == 0 || Instant::now() > deadline {
            if open > 0 {
                eprintln!("{open} recording(s) still open after 120 s; scoring what was written");
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let dead: Vec<String> = procs.iter_mut().filter_map(|p| (!p.alive()).then(|| p.name.clone())).collect();
    let backups: Vec<BackupEvent> =
        crate::stream::<BackupEvent>(&mut conn, &keys.backup_events(), 0).await.into_iter().map(|(_, e)| e).collect();
    let motion: Vec<MotionEvent> =
        crate::stream::<MotionEvent>(&mut conn, &keys.motion_events(), 0).await.into_iter().map(|(_, e)| e).collect();
    let mut readers = BTreeMap::new();
    for (id, _, _) in &channels {
        let status: Option<String> = redis::AsyncCommands::get(&mut conn, keys.channel_status(*id)).await.ok();
        if let Some(st) = status.and_then(|j| serde_json::from_str::<cctv_common::events::ChannelStatus>(&j).ok()) {
            readers.insert(*id, (st.frames_total, st.frames_gated, st.yolo_frames_skipped));
        }
    }
    drop(procs);
    drop(pushers);

    let mut scores = Vec::new();
    for (i, scene) in scenes.iter().enumerate() {
        for (id, policy) in policies(i as u32) {
            let mut files = Vec::new();
            let first_play = |e: &&BackupEvent| {
                e.channel == id && e.kind == BackupEventKind::File && e.start_ms < first_play_end(id)
            };
            for ev in backups.iter().filter(first_play) {
                let Some(file) = &ev.file else { continue };
                let path = work.join("backups").join(file);
                let path = if path.is_file() { path } else { PathBuf::from(file) };
                let mut codes = read_bar_codes(&path)?;
                // A recording still open when the clip started over: its frames from the
                // second play (numbers back near zero) are not this play's.
                let mut last = 0;
                if let Some(wrap) = codes.iter().position(|c| {
                    let wrapped = c.is_some_and(|n| n + FPS < last);
                    last = c.unwrap_or(last).max(last);
                    wrapped
                }) {
                    codes.truncate(wrap);
                }
                files.push((ev.clone(), codes));
            }
            let zero = t0[&id];
            let spans = motion
                .iter()
                .filter(|m| m.channel == id && m.kind == MotionEventKind::End)
                .map(|m| {
                    (
                        (m.started_ms - zero) as f64 / 1000.0,
                        (m.last_motion_ms.unwrap_or(m.ts_ms) - zero) as f64 / 1000.0,
                    )
                })
                .collect();
            let ch = config.channels.iter().find(|c| c.id == id).context("channel")?;
            let wanted = ch.labels.clone().unwrap_or_else(|| config.yolo.classes.clone());
            let mut s = score(ChannelRun {
                channel: id,
                scene: scene.label,
                policy,
                wanted: &wanted,
                clips: &clips[i],
                files,
                motion: spans,
                pre_roll: config.record.pre_roll_secs,
                post_roll: config.record.post_roll_secs,
            });
            if !dead.is_empty() {
                s.problems.push(format!("processes died: {dead:?}"));
            }
            (s.frames_analysed, s.frames_gated, s.yolo_frames_skipped) = readers.get(&id).copied().unwrap_or_default();
            scores.push(s);
        }
    }
    let report = QualityReport {
        started: format!(
            "{} (unix ms), {} s",
            now_ms() - started.elapsed().as_millis() as i64,
            started.elapsed().as_secs()
        ),
        machine: crate::machine(),
        pre_roll_secs: config.record.pre_roll_secs,
        post_roll_secs: config.record.post_roll_secs,
        motion_settings: opts.motion.lines().skip(1).map(str::to_string).collect(),
        gop_secs: opts.gop_secs,
        scenes: scenes.iter().map(|s| (s.label.to_string(), s.what.to_string())).collect(),
        targets_met: scores.iter().all(|s| s.problems.is_empty()),
        channels: scores,
    };
    std::fs::write(opts.report_dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(opts.report_dir.join("report.md"), render(&report))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn clips(scripted: &[bool]) -> SceneClips {
        SceneClips {
            main: PathBuf::new(),
            sub: PathBuf::new(),
            frames: scripted.len() as u32 * FPS,
            scripted: scripted.to_vec(),
            activity_starts_s: Vec::new(),
            seen: scripted
                .iter()
                .map(|&p| if p { BTreeSet::from(["person".to_string()]) } else { BTreeSet::new() })
                .collect(),
        }
    }

    fn file(rec: &str, from_s: u32, to_s: u32) -> (BackupEvent, Vec<Option<u32>>) {
        let ev = BackupEvent {
            kind: BackupEventKind::File,
            channel: 1,
            recording: rec.into(),
            file: Some(format!("{rec}.mp4")),
            part: 1,
            start_ms: 0,
            end_ms: 0,
            duration_secs: 0.0,
            size_bytes: 0,
            trigger: None,
            events: vec![],
            pre_roll_ms: None,
            writing_since_ms: None,
            validation: None,
            video_codec: None,
            error: None,
            worker: "w".into(),
            job: "j".into(),
            ts_ms: 0,
        };
        (ev, (from_s * FPS..to_s * FPS).map(Some).collect())
    }

    fn run<'a>(c: &'a SceneClips, wanted: &'a [String], files: Vec<(BackupEvent, Vec<Option<u32>>)>) -> ChannelScore {
        run_as("motion", c, wanted, files)
    }

    fn run_as<'a>(
        policy: &'a str,
        c: &'a SceneClips,
        wanted: &'a [String],
        files: Vec<(BackupEvent, Vec<Option<u32>>)>,
    ) -> ChannelScore {
        score(ChannelRun {
            channel: 1,
            scene: "t",
            policy,
            wanted,
            clips: c,
            files,
            motion: vec![],
            pre_roll: 5.0,
            post_roll: 5.0,
        })
    }

    #[test]
    fn scores_count_missed_duplicated_and_quiet_seconds_from_the_frames() {
        // Activity at 20..30 s and 33..40 s of a 80 s clip.
        let scripted: Vec<bool> = (0..80).map(|s| (20..30).contains(&s) || (33..40).contains(&s)).collect();
        let c = clips(&scripted);
        let wanted = vec!["person".to_string()];
        // Whole and one recording: meets every target.
        let good = run(&c, &wanted, vec![file("a", 15, 45)]);
        assert!(good.problems.is_empty(), "{:?}", good.problems);
        assert_eq!((good.recall_percent, good.backup_secs, good.activities.len()), (100.0, 30, 1));
        // Cut in two with an overlap, the second stopping early, and a stray quiet file.
        let bad = run(&c, &wanted, vec![file("a", 15, 31), file("b", 29, 36), file("c", 60, 62)]);
        assert_eq!(bad.missed_present, vec![36, 37, 38, 39]);
        assert_eq!(bad.duplicated_secs, vec![29, 30]);
        assert_eq!(bad.quiet_backed_beyond_roll, vec![60, 61]);
        assert_eq!(bad.activities[0].recordings, 2);
        assert_eq!(bad.problems.len(), 4, "{:?}", bad.problems);
    }

    #[test]
    fn a_continuous_channel_is_scored_on_gaps_and_duplicates_not_on_quiet() {
        let scripted: Vec<bool> = (0..80).map(|s| (20..30).contains(&s)).collect();
        let c = clips(&scripted);
        let wanted = vec!["person".to_string()];
        // From second 3 (the cluster came up) to the end, back to back: all quiet seconds too.
        let good = run_as(CONTINUOUS, &c, &wanted, vec![file("a", 3, 30), file("b", 30, 60), file("c", 60, 80)]);
        assert!(good.problems.is_empty(), "{:?}", good.problems);
        assert_eq!(good.backup_secs, 77);
        // A second missing between two files, and one in two.
        let bad = run_as(CONTINUOUS, &c, &wanted, vec![file("a", 3, 30), file("b", 31, 61), file("c", 60, 80)]);
        assert_eq!(bad.gap_secs, vec![30]);
        assert_eq!(bad.duplicated_secs, vec![60]);
        assert_eq!(bad.problems.len(), 2, "{:?}", bad.problems);
    }

    #[test]
    fn onsets_are_timed_from_quiet_and_an_open_event_counts_as_no_lag() {
        // Quiet 0-4, activity 5-9, quiet 10-11, activity 12-13 (2 s gap: no onset), quiet
        // 14-19, activity 20-22, quiet 23-29, activity 30 (never seen).
        let mut activity = vec![false; 32];
        for s in [5, 6, 7, 8, 9, 12, 13, 20, 21, 22, 30] {
            activity[s] = true;
        }
        let motion = [(5.4, 13.2), (19.7, 22.0), (40.0, 41.0)];
        assert_eq!(onset_lags(&activity, &[], &motion), vec![Some(0.4), Some(0.0), None]);
        // An event held open across the onset.
        assert_eq!(onset_lags(&activity[..12], &[], &[(1.0, 6.0)]), vec![Some(0.0)]);
        // A late start is reported as it is.
        assert_eq!(onset_lags(&activity[..12], &[], &[(7.25, 9.0)]), vec![Some(2.25)]);
        // Where the script says when in its second the activity began, the lag counts from
        // there; a start in another second does not move this onset.
        assert_eq!(onset_lags(&activity[..12], &[5.3], &[(5.9, 9.0)]), vec![Some(0.6)]);
        assert_eq!(onset_lags(&activity[..12], &[1.5, 6.2], &[(5.9, 9.0)]), vec![Some(0.9)]);
        // An event that began after the second started but before the activity did counts as open.
        assert_eq!(onset_lags(&activity[..12], &[5.8], &[(5.2, 9.0)]), vec![Some(0.0)]);
        let lags = [Some(0.5), Some(1.1), Some(0.7), Some(0.1), None];
        assert_eq!(onset_percentiles(&lags), Some((0.7, f64::INFINITY)));
        assert_eq!(onset_percentiles(&lags[..4]), Some((0.5, 1.1)));
        assert_eq!(onset_percentiles(&[]), None);
    }
}

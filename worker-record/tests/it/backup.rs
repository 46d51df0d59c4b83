use std::time::Duration;

use cctv_testkit::cluster::{channel, probe_duration, record_section, Cluster, FRAGMENT_CLOCK_SLACK_MS};
use cctv_testkit::Pusher;

use crate::util::{assert_playable, listing, probe, Running};

/// quiet → people → quiet on a `motion` channel: exactly one backup, playable, stream-copied,
/// from ≥ pre-roll before motion started to ≥ post-roll after it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_gives_one_stream_copied_backup_with_pre_and_post_roll() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(&channel(1), 8, &record_section(tmp.path(), "pre_roll_secs = 5\npost_roll_secs = 5"));
    let clip = cluster.path("event.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &clip, 2, 12.0, 40.0);
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let run = Running::start(cluster);
    let _record = run.record_worker();

    let (start, end, file) = run.wait_backup(1, Duration::from_secs(60)).await;
    let path = std::path::PathBuf::from(file.file.clone().unwrap());
    let last_motion = end.last_motion_ms.unwrap();
    eprintln!(
        "motion {} → {} (last motion {}); backup {} → {}: pre-roll {} ms, post-roll {} ms, {}",
        start.ts_ms,
        end.ts_ms,
        last_motion,
        file.start_ms,
        file.end_ms,
        start.ts_ms - file.start_ms,
        file.end_ms - last_motion,
        file.validation.clone().unwrap_or_default()
    );
    assert!(
        file.start_ms <= start.ts_ms - 5000,
        "pre-roll: backup starts {} ms before motion",
        start.ts_ms - file.start_ms
    );
    assert!(
        file.end_ms >= last_motion + 5000 - FRAGMENT_CLOCK_SLACK_MS,
        "post-roll: backup ends {} ms after motion",
        file.end_ms - last_motion
    );

    // Stream copy: same codec and resolution as the camera's stream; plays from end to end.
    let source = probe(&clip);
    let backup = probe(&path);
    assert_eq!((backup.0.as_str(), backup.1, backup.2), (source.0.as_str(), source.1, source.2), "stream copied");
    assert!((backup.3 - (file.end_ms - file.start_ms) as f64 / 1000.0).abs() < 2.0, "duration {backup:?} vs {file:?}");
    assert_playable(&path);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("Channel1_") && name.ends_with(".mp4"), "{name}");
    // MP4 with its index first: a browser plays it as it downloads, and seeks by range.
    let boxes = mp4_top_level_boxes(&path);
    let at = |b: &str| boxes.iter().position(|x| x == b);
    assert!(at("moov").is_some() && at("moov") < at("mdat"), "moov after mdat (no faststart): {boxes:?}");

    // Exactly one backup, nothing temporary left, and no second one appears.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(run.files().await.len(), 1, "{:?}", run.files().await);
    assert_eq!(listing(&run.backup_dir()), [name], "backup dir holds the one file only");
    let log = std::fs::read_to_string(run.cluster.path("logs/backup.jsonl")).expect("backup log");
    assert!(log.contains(&path.display().to_string()) && log.contains("\"trigger\""), "{log}");
    let _ = probe_duration(&path);
}

/// 8 channels in motion at once: 8 valid backups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_channels_recording_at_once_all_produce_valid_files() {
    let tmp = tempfile::tempdir().unwrap();
    let channels: String = (1..=8).map(channel).collect();
    let cluster = Cluster::new(&channels, 8, &record_section(tmp.path(), "pre_roll_secs = 3\npost_roll_secs = 3"));
    let clip = cluster.path("event.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("store-aisle-detection.gif"), &clip, 2, 8.0, 40.0);
    let pushers: Vec<Pusher> =
        (1..=8).map(|i| Pusher::start(&clip, &cluster.nginx.live_url(), &format!("ch{i}"))).collect();
    let run = Running::start(cluster);
    let _record = run.record_worker();
    let mut files = Vec::new();
    for ch in 1..=8 {
        let (_, _, f) = run.wait_backup(ch, Duration::from_secs(90)).await;
        files.push(f);
    }
    drop(pushers);
    for f in &files {
        let path = std::path::Path::new(f.file.as_deref().unwrap());
        let (codec, w, h, d) = probe(path);
        assert_eq!((codec.as_str(), w, h), ("h264", 480, 270), "{f:?}");
        assert!(d > 10.0, "{f:?}");
        assert_playable(path);
    }
    let mut channels: Vec<u32> = files.iter().map(|f| f.channel).collect();
    channels.dedup();
    assert_eq!(channels, (1..=8).collect::<Vec<_>>());
}

/// A camera with audio and relays that pass it on (`relay.audio = "copy"`): the backup carries
/// the camera's AAC track beside the video, both stream-copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_audio_is_kept_when_relays_pass_it_on() {
    let tmp = tempfile::tempdir().unwrap();
    let extra =
        format!("{}\n[relay]\naudio = \"copy\"\n", record_section(tmp.path(), "pre_roll_secs = 3\npost_roll_secs = 3"));
    let cluster = Cluster::new(&channel(1), 8, &extra);
    let video = cluster.path("event.mp4");
    cctv_testkit::make_clip(&cctv_testkit::media("worker-zone-detection.gif"), &video, 1, 8.0, 30.0);
    let clip = cluster.path("event-audio.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i"])
        .arg(&video)
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-shortest", "-c:v", "copy", "-c:a", "aac", "-b:a", "64k"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(status.success(), "could not add audio to the clip");
    let _p = Pusher::start(&clip, &cluster.nginx.live_url(), "ch1");
    let run = Running::start(cluster);
    let _record = run.record_worker();

    let (_, _, file) = run.wait_backup(1, Duration::from_secs(60)).await;
    let path = std::path::PathBuf::from(file.file.clone().unwrap());
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_type,codec_name,sample_rate", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .unwrap();
    let streams = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{}: {streams}", path.display());
    assert!(streams.lines().any(|l| l.starts_with("h264,video")), "video stream: {streams}");
    assert!(streams.lines().any(|l| l.starts_with("aac,audio,44100")), "the camera's AAC track: {streams}");
    assert_playable(&path);
}

/// The types of an MP4 file's top-level boxes, in file order.
fn mp4_top_level_boxes(path: &std::path::Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let mut size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as u64;
        out.push(String::from_utf8_lossy(&data[at + 4..at + 8]).into_owned());
        if size == 1 && at + 16 <= data.len() {
            size = u64::from_be_bytes(data[at + 8..at + 16].try_into().unwrap());
        }
        if size < 8 {
            break;
        }
        at += size as usize;
    }
    out
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use cctv_common::events::{BackupEvent, BackupEventKind, MotionEvent, MotionEventKind};
use cctv_common::shutdown::CancellationToken;
use cctv_testkit::cluster::{run_in_thread, wait_for, Cluster};
use cctv_testkit::KillOnDrop;

/// A cluster with an in-process motion worker (stopped on drop).
pub struct Running {
    pub cluster: Cluster,
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start(mut cluster: Cluster) -> Self {
        cctv_common::telemetry::init(None);
        cluster.start_scheduler();
        let stop = CancellationToken::new();
        let motion = run_in_thread(cluster.config.clone(), stop.clone(), worker_motion::run);
        Self { cluster, stop, threads: vec![motion] }
    }

    pub fn record_worker(&self) -> KillOnDrop {
        self.cluster.spawn(env!("CARGO_BIN_EXE_worker-record"), &["run"])
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.cluster.config.record.backup_dir.clone()
    }

    pub async fn motion(&self, channel: u32, kind: MotionEventKind) -> Option<MotionEvent> {
        self.cluster.motion_events().await.into_iter().find(|e| e.channel == channel && e.kind == kind)
    }

    pub async fn files(&self) -> Vec<BackupEvent> {
        self.cluster.backup_events().await.into_iter().filter(|e| e.kind == BackupEventKind::File).collect()
    }

    /// Waits for motion on `channel` to end, then for its backup to be written.
    pub async fn wait_backup(&self, channel: u32, timeout: Duration) -> (MotionEvent, MotionEvent, BackupEvent) {
        let end = wait_for(timeout, || self.motion(channel, MotionEventKind::End))
            .await
            .unwrap_or_else(|| panic!("motion on ch{channel} should end"));
        let start = self.motion(channel, MotionEventKind::Start).await.expect("a motion start");
        let post = self.cluster.config.record.post_roll_secs;
        let file = wait_for(Duration::from_secs_f64(post + 30.0), || async {
            self.files().await.into_iter().find(|f| f.channel == channel)
        })
        .await
        .unwrap_or_else(|| panic!("a backup of ch{channel}"));
        (start, end, file)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Names of the files in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// `(codec, width, height, duration)` of a file's video, by ffprobe.
pub fn probe(path: &Path) -> (String, u32, u32, f64) {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height:format=duration",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    (
        s["codec_name"].as_str().unwrap_or("").to_string(),
        s["width"].as_u64().unwrap_or(0) as u32,
        s["height"].as_u64().unwrap_or(0) as u32,
        v["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0),
    )
}

/// The whole file decodes without error (playable), by ffmpeg.
pub fn assert_playable(path: &Path) {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success(), "{} does not play: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

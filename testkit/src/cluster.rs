//! A cluster on real servers for integration tests: redis-server, nginx-rtmp, an in-process
//! scheduler, and workers as real processes (their binaries come from the calling test crate).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cctv_common::config::Config;
use cctv_common::events::{ChannelStatus, MotionEvent, ObjectEvent};
use cctv_common::keys::Keys;
use cctv_common::shutdown::CancellationToken;
use redis::AsyncCommands;

use crate::{KillOnDrop, Nginx, Redis};

/// redis-server + nginx-rtmp + an in-process scheduler, and workers as real processes.
pub struct Cluster {
    pub redis: Redis,
    pub nginx: Nginx,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    pub keys: Keys,
    scheduler: Option<(CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl Cluster {
    /// `channels` is the TOML of the `[[channel]]` entries; `extra` any other sections.
    pub fn new(channels: &str, batch_size: usize, extra: &str) -> Self {
        Self::with_redis(Redis::start(), channels, batch_size, extra)
    }

    /// Same, on a given Redis (e.g. [`Redis::start_persistent`] for fault tests).
    pub fn with_redis(redis: Redis, channels: &str, batch_size: usize, extra: &str) -> Self {
        let nginx = Nginx::start();
        let dir = tempfile::tempdir().unwrap();
        // Every scheduler serves the API: give each cluster its own port unless the test chose one.
        let api = if extra.contains("[api]") {
            String::new()
        } else {
            format!("[api]\nlisten = \"127.0.0.1:{}\"\n", crate::free_port())
        };
        // The relay writes its own buffer (H.265 main streams) where this nginx serves HLS.
        let relay_dir = format!("hls_dir = \"{}\"\n", nginx.hls_dir().display());
        let extra = if extra.contains("[relay]\n") {
            extra.replacen("[relay]\n", &format!("[relay]\n{relay_dir}"), 1)
        } else {
            format!("{extra}\n[relay]\n{relay_dir}")
        };
        let text = format!(
            r#"
[cluster]
redis_url = "{redis}"
namespace = "it"
[rtmp]
publish_url = "{live}"
play_url = "{live}"
hls_url = "{hls}"
[scheduler]
reconcile_interval_secs = 1
batch_size = {batch_size}
[logs]
dir = "{logs}"
{api}{extra}
{channels}
"#,
            redis = redis.url(),
            live = nginx.live_url(),
            hls = nginx.hls_url(),
            logs = dir.path().join("logs").display(),
        );
        let config_path = dir.path().join("cctv.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).expect("test config is valid");
        let keys = Keys::new(&config.cluster.namespace);
        Self { redis, nginx, dir, config_path, config, keys, scheduler: None }
    }

    pub fn start_scheduler(&mut self) {
        let token = CancellationToken::new();
        let handle = tokio::spawn(scheduler::run(self.config.clone(), token.clone()));
        self.scheduler = Some((token, handle));
    }

    /// Starts a worker binary (`env!("CARGO_BIN_EXE_<name>")` of the calling test crate) with
    /// this cluster's config and `args` after `--config <path>`.
    pub fn spawn(&self, binary: &str, args: &[&str]) -> KillOnDrop {
        let child = Command::new(binary)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("CCTV_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        KillOnDrop(child)
    }

    /// A connection manager as the workers use (for `Queue`).
    pub async fn conn_manager(&self) -> redis::aio::ConnectionManager {
        cctv_common::queue::connect(&self.config.cluster, &self.config.queue).await.unwrap()
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        // Made as the processes make theirs, so it follows a Sentinel failover too.
        let client = cctv_common::queue::client(&self.config.cluster).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    pub async fn motion_events(&self) -> Vec<MotionEvent> {
        self.stream(&self.keys.motion_events()).await
    }

    pub async fn object_events(&self) -> Vec<ObjectEvent> {
        self.stream(&self.keys.object_events()).await
    }

    /// Every entry of a result stream, decoded. A failed read is retried for 15 s, so fault
    /// tests can poll through an outage or a failover; then it panics with the error.
    async fn stream<T: serde::de::DeserializeOwned>(&self, key: &str) -> Vec<T> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let read = async {
                let mut c =
                    cctv_common::queue::client(&self.config.cluster)?.get_multiplexed_async_connection().await?;
                c.xrange_all::<_, redis::streams::StreamRangeReply>(key).await
            };
            match read.await {
                Ok(r) => return r.ids.iter().filter_map(|e| cctv_common::events::decode_entry(&e.map)).collect(),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("reading {key}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("reading {key}: {e}"),
            }
        }
    }

    /// A counter of `<ns>:stats:yolo` (0 when unset).
    pub async fn yolo_stat(&self, field: &str) -> i64 {
        let mut c = self.conn().await;
        let v: Option<i64> = c.hget(self.keys.yolo_stats(), field).await.unwrap();
        v.unwrap_or(0)
    }

    pub async fn backup_events(&self) -> Vec<cctv_common::events::BackupEvent> {
        self.stream(&self.keys.backup_events()).await
    }

    pub async fn channel_status(&self, id: u32) -> Option<ChannelStatus> {
        let mut c = self.conn().await;
        let s: Option<String> = c.get(self.keys.channel_status(id)).await.unwrap();
        s.map(|s| serde_json::from_str(&s).unwrap())
    }

    pub async fn lease_holder(&self, batch: &str) -> Option<String> {
        let mut c = self.conn().await;
        c.get(self.keys.motion_lease(batch)).await.unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some((token, handle)) = self.scheduler.take() {
            token.cancel();
            handle.abort();
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One `[[channel]]` entry.
/// A port for the API, a temp dir with a backup directory, and the config sections that use
/// them (`api` and `record` lines added).
pub fn api_site(api: &str, record: &str) -> (u16, tempfile::TempDir, std::path::PathBuf, String) {
    cctv_common::telemetry::init(None);
    let port = crate::free_port();
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let extra = format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\n{api}\n[record]\nbackup_dir = \"{}\"\n{record}\n",
        backups.display()
    );
    (port, tmp, backups, extra)
}

pub fn channel(id: u32) -> String {
    format!("[[channel]]\nid = {id}\nname = \"cam {id}\"\nsource = \"rtsp://admin:secret{id}@127.0.0.1:1/cam{id}\"\n")
}

/// One `[[channel]]` entry with extra fields (`priority = true`, `record = "off"`, ...).
pub fn channel_with(id: u32, fields: &str) -> String {
    format!("{}{fields}\n", channel(id))
}

/// A `[yolo]` section using the shared model, snapshots under `dir`, plus `fields`.
pub fn yolo_section(dir: &Path, fields: &str) -> String {
    format!(
        "[yolo]\nmodel = \"{}\"\nsnapshot_dir = \"{}\"\n{fields}\n",
        crate::shared_dir().join("models/yolov5n.onnx").display(),
        dir.join("snapshots").display()
    )
}

/// How far a backup's reported end may fall short of the instant it was asked to cover up to.
/// nginx names each HLS fragment by its clock when it opens the fragment, while durations come
/// from the stream's timestamps, so one fragment's end and the next one's start differ by a few
/// ms (more on a loaded machine); the fragment that starts at or after the end belongs to the
/// next recording. Far below one GOP: no video is missing.
pub const FRAGMENT_CLOCK_SLACK_MS: i64 = 500;

/// A `[record]` section writing backups under `dir/backups` (UTC names), plus `fields`.
pub fn record_section(dir: &Path, fields: &str) -> String {
    format!("[record]\nbackup_dir = \"{}\"\ntimezone = \"UTC\"\n{fields}\n", dir.join("backups").display())
}

/// Runs an async worker entry point (`worker_motion::run`, ...) on its own thread and runtime
/// (apalis' worker futures are not `Send`-general, so they cannot be `tokio::spawn`ed).
pub fn run_in_thread<F, Fut>(config: Config, stop: CancellationToken, run: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce(Config, CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        if let Err(e) = rt.block_on(run(config, stop)) {
            eprintln!("in-process worker failed: {e:#}");
        }
    })
}

/// Duration of a media file, seconds (ffprobe).
pub fn probe_duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a duration")
}

/// The people footage with quiet (frozen) periods around it.
pub fn people_clip(dir: &Path, name: &str, loops: u32, quiet_before: f64, quiet_after: f64) -> PathBuf {
    let out = dir.join(name);
    crate::make_clip(&crate::media("people-detection.gif"), &out, loops, quiet_before, quiet_after);
    out
}

/// Did the worker's stderr-free artefacts (events, status) leak a camera password?
pub fn assert_no_secret(text: &str) {
    assert!(!text.contains("secret"), "camera password leaked: {text}");
}

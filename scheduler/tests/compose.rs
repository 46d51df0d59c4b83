//! The Docker Compose deployment, really running on a Docker engine: the images built from this
//! checkout's binaries (`deploy/docker/build.sh`), `deploy/docker-compose.yml` brought up as a
//! user would (plus a test override that mounts a camera clip and picks free host ports), a
//! camera relayed into nginx-rtmp, motion and objects seen, a backup written by the non-root
//! record container and downloaded through the API on the host's 127.0.0.1; publishing from
//! outside the relay refused; the hardening checked (Redis password, read-only non-root
//! containers without capabilities, cameras not playable through the published ports); health
//! checks that go unhealthy when Redis goes away and healthy
//! again when it is back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cctv_testkit::{free_port, make_clip, media, shared_dir};

const TAG: &str = "test";

struct Compose {
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(&'static str, String)>,
}

impl Compose {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-p").arg(&self.project);
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.output().expect("running docker-compose")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Health of every container of the project, by container name.
    fn health(&self) -> BTreeMap<String, String> {
        let ids = self.ok(&["ps", "-q"]);
        let mut out = BTreeMap::new();
        for id in ids.split_whitespace() {
            let o = Command::new("docker")
                .args([
                    "inspect",
                    "-f",
                    "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
                    id,
                ])
                .output()
                .expect("docker inspect");
            let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if let Some((name, status)) = line.split_once(' ') {
                out.insert(name.trim_start_matches('/').to_string(), status.to_string());
            }
        }
        out
    }

    fn wait_health(&self, wanted: impl Fn(&BTreeMap<String, String>) -> bool, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.health();
            if wanted(&h) {
                return;
            }
            assert!(Instant::now() < deadline, "{what} within {timeout:?}: {h:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn logs(&self) -> String {
        let out = self.run(&["logs", "--no-color", "--tail", "30"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "10"]);
    }
}

fn docker_engine() {
    let ok = Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    assert!(ok, "no Docker engine answers `docker info`: deploy/install-deps.sh installs docker.io and starts dockerd");
}

/// The API's reading token in the stack (it listens beyond loopback in its container).
const VIEWER_TOKEN: &str = "compose-viewer-token-0123456789";

fn get(url: &str) -> Option<Vec<u8>> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    let mut resp = agent.get(url).header("Authorization", format!("Bearer {VIEWER_TOKEN}")).call().ok()?;
    resp.body_mut().with_config().limit(1 << 30).read_to_vec().ok()
}

fn get_json(url: &str) -> Option<serde_json::Value> {
    get(url).and_then(|b| serde_json::from_slice(&b).ok())
}

fn wait<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Sets `path`'s mode (the containers run as a non-root user of group 10001).
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn compose_stack_builds_runs_backs_up_and_reports_health() {
    docker_engine();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let bin_dir = cctv_testkit::netns::workspace_bin("scheduler").parent().unwrap().to_path_buf();
    let build = Command::new(repo.join("deploy/docker/build.sh"))
        .args(["--no-cargo", "--bin-dir"])
        .arg(&bin_dir)
        .args(["--tag", TAG])
        .output()
        .expect("running deploy/docker/build.sh");
    assert!(
        build.status.success(),
        "deploy/docker/build.sh failed: {}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );

    let tmp = tempfile::tempdir().unwrap();
    set_mode(tmp.path(), 0o755);
    let (config_dir, clips) = (tmp.path().join("config"), tmp.path().join("clips"));
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&clips).unwrap();
    // A camera: quiet, workers walking through, quiet again, looped by the camera simulator;
    // H.264 without B-frames, as IP cameras send it over RTSP.
    let raw = tmp.path().join("raw.mp4");
    make_clip(&media("worker-zone-detection.gif"), &raw, 3, 8.0, 30.0);
    let clip = clips.join("cam1.mp4");
    let encoded = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i"])
        .arg(&raw)
        .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-bf", "0", "-an"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(encoded.success(), "re-encoding the camera clip");
    set_mode(&clips, 0o755);
    set_mode(&clip, 0o644);
    let config = config_dir.join("cctv.toml");
    std::fs::write(
        &config,
        r#"[cluster]
redis_url = "redis://:{file:/run/secrets/redis_password}@redis:6379"
namespace = "cctv"

[rtmp]
publish_url = "rtmp://127.0.0.1:1935/live"
play_url = "rtmp://rtmp:1935/live"
hls_url = "http://rtmp:8080/hls"

[api]
listen = "0.0.0.0:8088"
viewer_token = "{env:CCTV_VIEWER_TOKEN}"

[yolo]
model = "/var/lib/cctv/models/yolov5n.onnx"
snapshot_dir = "/var/lib/cctv/snapshots"

[record]
backup_dir = "/var/lib/cctv/backups"
pre_roll_secs = 4
post_roll_secs = 4

[logs]
dir = "/var/lib/cctv/logs"

# Backed up on motion. Not priority: the clip's quiet frame shows workers standing, whom YOLO
# would rightly count as activity on a priority channel, holding the recording open.
[[channel]]
id = 1
name = "Yard"
source = "rtsp://camera:8554/cam1/main"
record = "motion"

# The same camera as a priority channel that only runs YOLO.
[[channel]]
id = 2
name = "Yard (objects)"
source = "rtsp://camera:8554/cam1/main"
priority = true
record = "off"
"#,
    )
    .unwrap();
    // The config and the Redis password as docs/deploy.md has them: root:10001 (the containers'
    // group), 0640, in a directory of that group; other users of the host read neither.
    let redis_password = format!("{:032x}", std::process::id() as u128 * 0x9e37_79b9_7f4a_7c15 + 0xc0ffee);
    std::fs::write(config_dir.join("redis-password"), format!("{redis_password}\n")).unwrap();
    for (path, mode) in [(&config_dir, 0o750), (&config, 0o640), (&config_dir.join("redis-password"), 0o640)] {
        std::os::unix::fs::chown(path, Some(0), Some(10001)).unwrap();
        set_mode(path, mode);
    }
    let over = tmp.path().join("docker-compose.test.yml");
    std::fs::write(
        &over,
        format!(
            "services:\n  camera:\n    image: cctv/camera-sim:{TAG}\n    volumes:\n      - {}:/clips:ro\n  \
             worker-motion:\n    deploy: {{ replicas: 1 }}\n",
            clips.display()
        ),
    )
    .unwrap();

    let (api_port, rtmp_port, hls_port) = (free_port(), free_port(), free_port());
    let compose = Compose {
        project: format!("cctvtest{}", std::process::id()),
        files: vec![repo.join("deploy/docker-compose.yml"), over],
        env: vec![
            ("CCTV_TAG", TAG.into()),
            ("CCTV_CONFIG_DIR", config_dir.display().to_string()),
            ("CCTV_MODELS_DIR", shared_dir().join("models").display().to_string()),
            ("CCTV_API_PORT", api_port.to_string()),
            ("CCTV_RTMP_PORT", rtmp_port.to_string()),
            ("CCTV_HLS_PORT", hls_port.to_string()),
            ("CCTV_LOG_FORMAT", "text".into()),
            ("CCTV_VIEWER_TOKEN", VIEWER_TOKEN.into()),
        ],
    };
    let up_at = Instant::now();
    compose.ok(&["up", "-d"]);

    // Every cluster service has a health check, and every one turns healthy (the simulated
    // camera is not part of the cluster and has none).
    let services = ["redis", "rtmp", "relay", "scheduler", "worker-motion", "worker-yolo", "worker-record"];
    let all_healthy = |h: &BTreeMap<String, String>| {
        services.iter().all(|s| h.iter().any(|(n, st)| n.contains(&format!("_{s}_")) && st == "healthy"))
            && h.iter().filter(|(n, _)| !n.contains("_camera_")).all(|(_, st)| st == "healthy")
    };
    compose.wait_health(all_healthy, Duration::from_secs(120), "every container healthy");
    eprintln!("every container healthy {:.1} s after `up -d`", up_at.elapsed().as_secs_f64());

    // Published on the host's loopback only.
    for (svc, port) in [("scheduler", "8088"), ("rtmp", "1935"), ("rtmp", "8080")] {
        let mapped = compose.ok(&["port", svc, port]);
        assert!(mapped.trim().starts_with("127.0.0.1:"), "{svc}:{port} published as {mapped:?}");
    }

    // The RTSP camera is relayed, motion and objects are seen, a backup is written by the record
    // container (non-root, on the named volume, the seed's file name) and served by the API.
    let api = format!("http://127.0.0.1:{api_port}");
    let backup = wait(Duration::from_secs(150), "a backup file of channel 1 listed by the API", || {
        let list = get_json(&format!("{api}/api/backups"))?;
        list["items"].as_array()?.iter().find(|b| b["download"].is_string() && b["channel"] == 1).cloned()
    });
    eprintln!("first backup listed {:.1} s after `up -d`: {backup}", up_at.elapsed().as_secs_f64());
    let name = backup["file"].as_str().unwrap().to_string();
    assert!(seed_name(&name, 1), "backup named Channel1_YYYY-MM-DD_HH-MM-SS.mp4: {name}");
    // Without the viewer token nothing is read (the API listens beyond loopback in its container).
    let anonymous =
        ureq::get(format!("{api}/api/backups")).config().http_status_as_error(false).build().call().unwrap();
    assert_eq!(anonymous.status(), 401, "an anonymous read of the backups");
    let listing = compose.ok(&["exec", "-T", "worker-record", "ls", "-ln", "/var/lib/cctv/backups"]);
    assert!(listing.contains(&name), "{name} in the backup volume: {listing}");
    let objects = get_json(&format!("{api}/api/events?category=objects")).unwrap();
    assert!(
        objects["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|e| e["event"]["detections"].to_string().contains("\"person\""))),
        "worker-yolo found the people: {objects}"
    );
    let file = get(&format!("{api}{}", backup["download"].as_str().unwrap())).expect("downloading the backup");
    let local = tmp.path().join(&name);
    std::fs::write(&local, &file).unwrap();
    let secs = cctv_testkit::cluster::probe_duration(&local);
    assert!(secs >= 8.0, "backup plays {secs} s: {backup}");
    let metrics = String::from_utf8(get(&format!("{api}/metrics")).expect("/metrics")).unwrap();
    assert!(metrics.contains("cctv_workers{kind=\"record\"} 1"), "{metrics}");

    // Hardened containers: non-root, read-only root file system, no capabilities, no new
    // privileges.
    for id in compose.ok(&["ps", "-q"]).split_whitespace() {
        let o = Command::new("docker")
            .args(["inspect", "-f"])
            .arg("{{.Name}} user={{.Config.User}} ro={{.HostConfig.ReadonlyRootfs}} drop={{.HostConfig.CapDrop}} opt={{.HostConfig.SecurityOpt}}")
            .arg(id)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if line.contains("_camera_") {
            continue; // the simulated camera is not part of the cluster
        }
        for wanted in ["ro=true", "drop=[ALL]", "no-new-privileges:true"] {
            assert!(line.contains(wanted), "{wanted} missing: {line}");
        }
        assert!(!line.contains("user= ") && !line.contains("user=root"), "runs as root: {line}");
    }
    // Redis answers only with the password, which no process shows on its command line (the
    // host's `ps` lists the containers' processes too).
    let anonymous_redis = compose.run(&["exec", "-T", "redis", "redis-cli", "ping"]);
    let said = String::from_utf8_lossy(&anonymous_redis.stdout);
    assert!(said.contains("NOAUTH"), "Redis without its password answered {said:?}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!cmdline.contains(&redis_password), "the Redis password on a command line: {cmdline}");
    }
    // nginx-rtmp plays to the cluster's containers, not to the host's published ports (their
    // connections come through the network's gateway): no camera for any user of the host.
    let inside = compose.run(&[
        "exec",
        "-T",
        "worker-record",
        "ffprobe",
        "-v",
        "error",
        "-rw_timeout",
        "10000000",
        "rtmp://rtmp:1935/live/ch1",
    ]);
    assert!(inside.status.success(), "a worker plays ch1: {}", String::from_utf8_lossy(&inside.stderr));
    for path in ["/stat", "/hls/ch1/index.m3u8"] {
        let r =
            ureq::get(format!("http://127.0.0.1:{hls_port}{path}")).config().http_status_as_error(false).build().call();
        let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
        assert_eq!(status, 403, "{path} through the host's published port");
    }
    let outside = Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "10000000"])
        .arg(format!("rtmp://127.0.0.1:{rtmp_port}/live/ch1"))
        .output()
        .unwrap();
    assert!(!outside.status.success(), "ch1 played from the host through the published RTMP port");

    // Nobody but the relay may publish into nginx-rtmp.
    let intruder = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-t", "3", "-i"])
        .arg(&clip)
        .args(["-c", "copy", "-f", "flv"])
        .arg(format!("rtmp://127.0.0.1:{rtmp_port}/live/intruder"))
        .output()
        .unwrap();
    assert!(!intruder.status.success(), "publishing from the host was accepted");

    // A restarted worker container rejoins: a new motion worker holds the batch.
    let motion_workers = || -> Vec<(String, usize)> {
        get_json(&format!("{api}/api/workers"))
            .and_then(|w| w["items"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|w| w["kind"] == "motion")
            .map(|w| (w["worker"].as_str().unwrap_or("").to_string(), w["batches"].as_array().map_or(0, Vec::len)))
            .collect()
    };
    let before = motion_workers();
    assert!(before.iter().any(|(_, held)| *held > 0), "a motion worker holds the batch: {before:?}");
    compose.ok(&["restart", "-t", "10", "worker-motion"]);
    let rejoined = wait(Duration::from_secs(60), "the restarted motion worker holds the batch", || {
        motion_workers().into_iter().find(|(w, held)| *held > 0 && !before.iter().any(|(b, _)| b == w))
    });
    eprintln!("restarted worker-motion rejoined as {}", rejoined.0);
    compose.wait_health(all_healthy, Duration::from_secs(60), "every container healthy after the restart");

    // Health follows the processes' real state: Redis gone → workers unhealthy; back → healthy.
    compose.ok(&["stop", "redis"]);
    compose.wait_health(
        |h| h.iter().filter(|(n, _)| n.contains("_worker-record_")).all(|(_, s)| s == "unhealthy"),
        Duration::from_secs(60),
        "worker-record unhealthy without Redis",
    );
    compose.ok(&["start", "redis"]);
    compose.wait_health(all_healthy, Duration::from_secs(90), "every container healthy again after Redis returned");

    // `down -v` leaves nothing: no container, no volume, no network.
    compose.ok(&["down", "-v", "--remove-orphans", "-t", "10"]);
    let label = format!("label=com.docker.compose.project={}", compose.project);
    for what in [&["ps", "-a", "-q"][..], &["volume", "ls", "-q"][..], &["network", "ls", "-q"][..]] {
        let o = Command::new("docker").args(what).args(["--filter", &label]).output().unwrap();
        let left = String::from_utf8_lossy(&o.stdout);
        assert!(left.trim().is_empty(), "docker {what:?} left after down -v: {left}");
    }
}

/// `Channel<id>_YYYY-MM-DD_HH-MM-SS.mp4`, the seed's backup file name (MP4, the default container).
fn seed_name(name: &str, channel: u32) -> bool {
    let Some(rest) = name.strip_prefix(&format!("Channel{channel}_")).and_then(|r| r.strip_suffix(".mp4")) else {
        return false;
    };
    let shape = "dddd-dd-dd_dd-dd-dd";
    rest.len() == shape.len()
        && rest.chars().zip(shape.chars()).all(|(c, s)| if s == 'd' { c.is_ascii_digit() } else { c == s })
}

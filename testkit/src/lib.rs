//! Real servers for tests and the local cluster: `redis-server`, `nginx` with the RTMP module,
//! and ffmpeg pushers that loop footage as camera streams. Each runs on a random 127.0.0.1 port
//! with its own temp dir and is stopped when dropped. A missing program is a test failure with
//! a message naming the Debian package, never a skip.

pub mod cluster;
pub mod netns;
pub mod tls;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cctv_common::ffmpeg::{self, FfmpegProcess};
use tempfile::TempDir;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("binding 127.0.0.1:0")
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within {timeout:?}");
}

/// The shared folder beside the repository (`../shared`), or `$CCTV_SHARED_DIR`.
/// The workspace root (testkit's parent).
fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives in the workspace")
}

pub fn shared_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CCTV_SHARED_DIR") {
        return PathBuf::from(dir);
    }
    let repo = repo_dir();
    repo.parent().expect("the repository has a parent").join("shared")
}

/// `../shared/models/yolov5n.onnx` rewritten to take any input size (`deploy/yolo/any_size.sh`),
/// as worker-yolo runs it by default in the local cluster, the load test and the quality
/// harness: made once into the repository's `.local/models/` (with `coco.names` beside it).
pub fn any_size_model() -> std::io::Result<PathBuf> {
    let repo = repo_dir();
    let out = repo.join(".local/models/yolov5n-any.onnx");
    if !(out.is_file() && out.with_file_name("coco.names").is_file()) {
        yolo_script("any_size.sh", &out)?;
    }
    Ok(out)
}

/// Runs `deploy/yolo/<script>` (quantize.sh, any_size.sh) from `../shared`'s fp32 model to
/// `out`; an error carries the script's stderr.
pub fn yolo_script(script: &str, out: &Path) -> std::io::Result<()> {
    let repo = repo_dir();
    let script = repo.join("deploy/yolo").join(script);
    let run = Command::new(&script)
        .arg("--model")
        .arg(shared_dir().join("models/yolov5n.onnx"))
        .arg("--out")
        .arg(out)
        .output()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {}: {e}", script.display())))?;
    if !run.status.success() {
        let stderr = String::from_utf8_lossy(&run.stderr);
        return Err(std::io::Error::other(format!("{} failed: {}", script.display(), stderr.trim())));
    }
    Ok(())
}

/// A file of `../shared/media`, checked to exist.
pub fn media(name: &str) -> PathBuf {
    let p = shared_dir().join("media").join(name);
    assert!(p.is_file(), "test footage {} is missing (set CCTV_SHARED_DIR to the shared folder)", p.display());
    p
}

fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{program} is not installed: apt-get install {package} (.ci/run installs it)");
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` on a random port: without persistence ([`Redis::start`]) or with an
/// append-only file fsynced on every write, as docker-compose runs it ([`Redis::start_persistent`]).
/// Fault tests kill it and start it again on the same port.
pub struct Redis {
    pub port: u16,
    dir: TempDir,
    persistent: bool,
    extra: Vec<String>,
    child: KillOnDrop,
}

impl Redis {
    pub fn start() -> Self {
        Self::launch(false, Vec::new())
    }

    pub fn start_persistent() -> Self {
        Self::launch(true, Vec::new())
    }

    /// Redis over TLS only (no plain port): `rediss://127.0.0.1:<port>`, with `ca`'s server
    /// certificate; clients are not asked for certificates.
    pub fn start_tls(ca: &tls::TestCa) -> Self {
        let path = |p: PathBuf| p.display().to_string();
        // `--port 0` after the plain port: TLS only, on the port the tests connect to.
        let extra = |port: u16| {
            vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                path(ca.cert()),
                "--tls-key-file".into(),
                path(ca.key()),
                "--tls-ca-cert-file".into(),
                path(ca.ca()),
                "--tls-auth-clients".into(),
                "no".into(),
            ]
        };
        require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let extra = extra(port);
        let child = Self::spawn(port, dir.path(), false, &extra);
        Self { port, dir, persistent: false, extra, child }
    }

    /// A replica of the server on 127.0.0.1:`master_port` (for Sentinel failover tests).
    pub fn start_replica_of(master_port: u16) -> Self {
        Self::launch(false, vec!["--replicaof".into(), "127.0.0.1".into(), master_port.to_string()])
    }

    fn launch(persistent: bool, extra: Vec<String>) -> Self {
        require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Self::spawn(port, dir.path(), persistent, &extra);
        Self { port, dir, persistent, extra, child }
    }

    fn spawn(port: u16, dir: &Path, persistent: bool, extra: &[String]) -> KillOnDrop {
        let aof: &[&str] =
            if persistent { &["--appendonly", "yes", "--appendfsync", "always"] } else { &["--appendonly", "no"] };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(aof)
            .args(extra)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let child = KillOnDrop(child);
        wait_for_port(port, Duration::from_secs(10), "redis-server");
        child
    }

    /// `kill -9`: no shutdown, no final save.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Starts it again on the same port after [`Redis::kill`]: with its data when persistent.
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.port, self.dir.path(), self.persistent, &self.extra);
    }

    /// Starts it again on the same port with no data at all (a replacement server).
    pub fn restart_empty(&mut self) {
        for e in std::fs::read_dir(self.dir.path()).expect("redis dir").flatten() {
            let _ = if e.path().is_dir() { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
        }
        self.restart();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// nginx with the RTMP module (Debian's `libnginx-mod-rtmp`): the `live` application, its HLS
/// rolling buffer and the HTTP server for it, configured by the scheduler's generator.
pub struct Nginx {
    pub rtmp_port: u16,
    pub http_port: u16,
    dir: TempDir,
    _child: KillOnDrop,
}

/// Where Debian installs the RTMP module.
pub const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

impl Nginx {
    pub fn start() -> Self {
        require("nginx", "nginx");
        assert!(Path::new(RTMP_MODULE).is_file(), "{RTMP_MODULE} is missing: apt-get install libnginx-mod-rtmp");
        let dir = tempfile::tempdir().expect("temp dir");
        let (rtmp_port, http_port) = (free_port(), free_port());
        let conf = cctv_relay::nginx::NginxConf {
            rtmp_listen: format!("127.0.0.1:{rtmp_port}"),
            http_listen: format!("127.0.0.1:{http_port}"),
            hls_dir: dir.path().join("hls"),
            work_dir: dir.path().to_owned(),
            module: RTMP_MODULE.into(),
            publish_allow: vec!["127.0.0.1".into()],
            play_allow: vec!["127.0.0.1".into()],
            play_deny: Vec::new(),
            hls_playlist_secs: 60,
            hls_fragment_secs: 2,
        };
        std::fs::create_dir_all(dir.path().join("hls")).expect("hls dir");
        std::fs::write(dir.path().join("nginx.conf"), conf.render()).expect("writing nginx.conf");
        let child = Self::spawn(dir.path(), rtmp_port, http_port);
        Self { rtmp_port, http_port, dir, _child: child }
    }

    fn spawn(dir: &Path, rtmp_port: u16, http_port: u16) -> KillOnDrop {
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-e", "stderr"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let child = KillOnDrop(child);
        wait_for_port(rtmp_port, Duration::from_secs(10), "nginx-rtmp");
        wait_for_port(http_port, Duration::from_secs(10), "nginx http");
        child
    }

    /// Stops it (SIGTERM: nginx's fast shutdown, which also ends its worker processes), then
    /// `down` later starts the same server again on the same ports (a container restart).
    pub fn restart(&mut self, down: Duration) {
        let pid = nix::unistd::Pid::from_raw(self._child.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self._child.0.wait();
        std::thread::sleep(down);
        self._child = Self::spawn(self.dir.path(), self.rtmp_port, self.http_port);
    }

    pub fn pid(&self) -> u32 {
        self._child.0.id()
    }

    /// nginx-rtmp's HLS directory (`relay.hls_dir`: the relay's own buffer goes under it).
    pub fn hls_dir(&self) -> PathBuf {
        self.dir.path().join("hls")
    }

    /// `http://127.0.0.1:<port>/hls`: the HLS buffer record workers read.
    pub fn hls_url(&self) -> String {
        format!("http://127.0.0.1:{}/hls", self.http_port)
    }

    /// `rtmp://127.0.0.1:<port>/live`.
    pub fn live_url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/live", self.rtmp_port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// A Redis Sentinel (`redis-server --sentinel`) on a random port watching one master on
/// 127.0.0.1 with a quorum of one, declaring it down after 1 s (so a failover test is quick).
pub struct RedisSentinel {
    pub port: u16,
    _dir: TempDir,
    _child: KillOnDrop,
}

impl RedisSentinel {
    pub fn start(master_name: &str, master_port: u16) -> Self {
        require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        // Sentinel rewrites its config file as it learns the replicas: a file of its own.
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 5000\n",
                dir = dir.path().display()
            ),
        )
        .expect("writing sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server --sentinel");
        let child = KillOnDrop(child);
        wait_for_port(port, Duration::from_secs(10), "redis sentinel");
        Self { port, _dir: dir, _child: child }
    }

    /// `127.0.0.1:<port>`, as `[cluster.sentinel] addresses` takes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `SENTINEL <args...>` answered as `T`.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut conn = redis::Client::open(format!("redis://{}", self.address()))?.get_connection()?;
        redis::cmd("SENTINEL").arg(args).query(&mut conn)
    }
}

/// A `mosquitto` MQTT broker on a random port that wants a user name and password
/// ([`Mosquitto::USER`], [`Mosquitto::PASSWORD`]), without persistence (a restart loses retained
/// messages, as a broker replaced by a new one does). Fault tests kill it and start it again on
/// the same port.
pub struct Mosquitto {
    pub port: u16,
    /// The TLS listener's port, when started with one.
    pub tls_port: Option<u16>,
    dir: TempDir,
    child: KillOnDrop,
}

impl Mosquitto {
    pub const USER: &'static str = "cctv";
    /// With `@` and `:` in it, so the URL's user-info must be percent-decoded.
    pub const PASSWORD: &'static str = "s3cret@broker:1";

    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// Also a TLS listener on [`Mosquitto::tls_port`] with `ca`'s server certificate.
    pub fn start_with_tls(ca: &tls::TestCa) -> Self {
        Self::start_inner(Some(ca))
    }

    fn start_inner(ca: Option<&tls::TestCa>) -> Self {
        require("mosquitto", "mosquitto");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let tls_port = ca.map(|_| free_port());
        let passwd = dir.path().join("passwd");
        let made = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&passwd)
            .args([Self::USER, Self::PASSWORD])
            .status()
            .expect("running mosquitto_passwd");
        assert!(made.success(), "mosquitto_passwd failed: {made}");
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\n\
                 log_dest stderr\nuser root\n{}",
                passwd.display(),
                match (ca, tls_port) {
                    (Some(ca), Some(tls)) => format!(
                        "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                        ca.ca().display(),
                        ca.cert().display(),
                        ca.key().display()
                    ),
                    _ => String::new(),
                }
            ),
        )
        .expect("writing mosquitto.conf");
        let child = Self::spawn(port, dir.path());
        if let Some(tls) = tls_port {
            wait_for_port(tls, Duration::from_secs(10), "mosquitto (TLS)");
        }
        Self { port, tls_port, dir, child }
    }

    /// `mqtts://...@127.0.0.1:<tls port>` (only after [`Mosquitto::start_with_tls`]).
    pub fn tls_url(&self) -> String {
        let tls = self.tls_port.expect("a broker started with TLS");
        self.url().replacen("mqtt://", "mqtts://", 1).replace(&format!(":{}", self.port), &format!(":{tls}"))
    }

    fn spawn(port: u16, dir: &Path) -> KillOnDrop {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).expect("mosquitto log"))
            .spawn()
            .expect("starting mosquitto");
        let child = KillOnDrop(child);
        wait_for_port(port, Duration::from_secs(10), "mosquitto");
        child
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Starts it again on the same port after [`Mosquitto::kill`], with no retained messages.
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.port, self.dir.path());
    }

    /// `mqtt://cctv:<password, percent-encoded>@127.0.0.1:<port>`, as `[notify.mqtt] url` takes it.
    pub fn url(&self) -> String {
        format!(
            "mqtt://{}:{}@127.0.0.1:{}",
            Self::USER,
            Self::PASSWORD.replace('@', "%40").replace(':', "%3A"),
            self.port
        )
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

/// Simulated IP cameras behind a real RTSP server (`loadtest/rtsp_cameras.py`, GStreamer's
/// gst-rtsp-server): camera `i` (from 1) is `rtsp://127.0.0.1:<port>/cam<i>/main|sub`.
pub struct RtspCameras {
    pub port: u16,
    _child: KillOnDrop,
}

impl RtspCameras {
    /// `cameras`: per camera, its main and sub-stream clips (H.264 MP4).
    pub fn start(cameras: &[(PathBuf, PathBuf)]) -> Self {
        Self::start_on(free_port(), cameras)
    }

    /// Same, on a given port (to restart a "rebooted" camera server where clients expect it).
    pub fn start_on(port: u16, cameras: &[(PathBuf, PathBuf)]) -> Self {
        Self::start_with(port, cameras, None)
    }

    /// Cameras that ask for `user:password` (RTSP Basic) and answer anyone else 401.
    pub fn start_with_auth(cameras: &[(PathBuf, PathBuf)], user_password: &str) -> Self {
        Self::start_with(free_port(), cameras, Some(user_password))
    }

    /// Cameras whose main streams also carry G.711 A-law audio (the usual camera audio).
    pub fn start_with_g711(cameras: &[(PathBuf, PathBuf)]) -> Self {
        Self::start_opts(free_port(), cameras, None, true)
    }

    fn start_with(port: u16, cameras: &[(PathBuf, PathBuf)], auth: Option<&str>) -> Self {
        Self::start_opts(port, cameras, auth, false)
    }

    fn start_opts(port: u16, cameras: &[(PathBuf, PathBuf)], auth: Option<&str>, g711: bool) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtest/rtsp_cameras.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script).args(["--port", &port.to_string()]);
        if let Some(a) = auth {
            cmd.args(["--auth", a]);
        }
        if g711 {
            cmd.arg("--g711");
        }
        for (main, sub) in cameras {
            cmd.arg("--camera").arg(format!("{},{}", main.display(), sub.display()));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the RTSP camera server (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0)");
        let mut child = KillOnDrop(child);
        // The server reads every clip before it listens: 64 cameras' clips read cold from disk
        // took longer than 15 s after a long run. Waited for while it lives, up to a minute
        // plus a second per camera; one that exited is reported at once.
        let what = "RTSP camera server (python3-gi, gir1.2-gst-rtsp-server-1.0)";
        let deadline = Instant::now() + Duration::from_secs(60 + cameras.len() as u64);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("{what} exited ({status}) before it listened on 127.0.0.1:{port}");
            }
            assert!(Instant::now() < deadline, "{what} did not listen on 127.0.0.1:{port} within the deadline");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, _child: child }
    }

    pub fn pid(&self) -> u32 {
        self._child.0.id()
    }

    /// `rtsp://<userinfo>127.0.0.1:<port>/cam<i>/<stream>`.
    pub fn url(&self, userinfo: &str, camera: u32, stream: &str) -> String {
        format!("rtsp://{userinfo}127.0.0.1:{}/cam{camera}/{stream}", self.port)
    }
}

/// One JPEG frame, `width`x`height`, cut 1 s into a clip of `../shared/media` (benches, examples).
pub fn media_frame_jpeg(name: &str, width: u32, height: u32) -> Vec<u8> {
    require("ffmpeg", "ffmpeg");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-ss", "1", "-i"])
        .arg(media(name))
        .args(["-frames:v", "1", "-vf", &format!("scale={width}:{height}"), "-f", "image2pipe", "-c:v", "mjpeg"])
        .arg("pipe:1")
        .output()
        .expect("running ffmpeg");
    assert!(out.status.success(), "ffmpeg could not cut a frame of {name}");
    out.stdout
}

/// Encodes a camera clip at a given size (H.264, 25 fps, GOP 25, no B-frames, no audio).
pub fn make_camera_clip(source: &Path, out: &Path, loops: u32, width: u32, height: u32) {
    make_camera_clip_with_bframes(source, out, loops, width, height, 0);
}

/// The same with up to `bframes` consecutive B-frames (as some cameras send).
pub fn make_camera_clip_with_bframes(source: &Path, out: &Path, loops: u32, width: u32, height: u32, bframes: u32) {
    let vf = format!("fps=25,scale={width}:{height},format=yuv420p");
    encode(source, out, loops, &vf, &["-bf", &bframes.to_string(), "-profile:v", "high"]);
}

/// `input` (any clip) re-encoded as an H.265 camera would send it: x265, a keyframe every
/// second, `hvc1`, no audio, `width`x`height`.
pub fn to_h265(input: &Path, out: &Path, width: u32, height: u32) {
    require("ffmpeg", "ffmpeg");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i"])
        .arg(input)
        .args(["-vf", &format!("scale={width}:{height},format=yuv420p"), "-c:v", "libx265", "-preset", "veryfast"])
        .args(["-x265-params", "log-level=error:keyint=25:min-keyint=25:scenecut=0:bframes=0", "-tag:v", "hvc1", "-an"])
        .arg(out)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not make the H.265 clip {}", out.display());
}

/// `ffmpeg -stream_loop <loops-1> -i source -vf <vf> -c:v libx264 -g 25 -an <extra> out`.
fn encode(source: &Path, out: &Path, loops: u32, vf: &str, extra: &[&str]) {
    require("ffmpeg", "ffmpeg");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-stream_loop", &loops.saturating_sub(1).to_string(), "-i"])
        .arg(source)
        .args(["-vf", vf, "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-an"])
        .args(extra)
        .arg(out)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not make clip {} from {}", out.display(), source.display());
}

/// Height of the frame-number bar code at the bottom of a picture.
pub const BAR_ROWS: u32 = 16;
/// Bar code cells: a white guard, 14 bits of the frame number (least significant first), a black guard.
pub const BAR_CELLS: u32 = 16;

/// ffmpeg filters that turn a `width`-wide picture into the bar-code strip of its frame number
/// (`N`), to overlay at row `y`: the quality harness and the live-latency test draw the same
/// code, which both read back the same way.
pub fn frame_number_bar_code(width: u32, y: u32) -> String {
    let cell = width / BAR_CELLS;
    let last = cell * (BAR_CELLS - 1);
    format!(
        "crop={width}:{BAR_ROWS}:0:{y},geq=lum='if(lt(X,{cell}),255,if(gte(X,{last}),0,255*mod(floor(N/pow(2,floor(X/{cell})-1)),2)))':cb=128:cr=128"
    )
}

/// `secs` of `source` (real footage, looped) as a 640x360 camera at 25 fps, GOP 2 s, whose
/// bottom 16 rows carry the frame number as a bar code: 16 cells of 40 px, a white guard, bits
/// 0..13 (least significant first), a black guard. Published with `-re` from `t0`, frame `n`
/// leaves the camera at `t0 + n × 40 ms`: a player that reads the code knows how old its
/// picture is (`scheduler/tests/live.rs`).
pub fn timecode_clip(source: &Path, out: &Path, secs: u32) {
    require("ffmpeg", "ffmpeg");
    let y = 360 - BAR_ROWS;
    let graph = format!(
        "[0]fps=25,scale=640:360,format=yuv420p,split[a][b];[b]{}[bar];[a][bar]overlay=0:{y}",
        frame_number_bar_code(640, y)
    );
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-stream_loop", "-1", "-i"])
        .arg(source)
        .args(["-t", &secs.to_string(), "-filter_complex", &graph])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-bf", "0", "-an"])
        .arg(out)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not make the timecode clip {}", out.display());
}

/// A simulated camera: ffmpeg loops a clip in real time and publishes it with stream copy.
pub struct Pusher {
    process: FfmpegProcess,
}

impl Pusher {
    /// Publishes `clip` (H.264, short GOP) looped forever to `<live_url>/<stream>`.
    pub fn start(clip: &Path, live_url: &str, stream: &str) -> Self {
        require("ffmpeg", "ffmpeg");
        let mut cmd = ffmpeg::command();
        cmd.args(["-nostats", "-re", "-stream_loop", "-1"])
            .input(clip)
            .args(["-c", "copy", "-f", "flv"])
            .output(format!("{live_url}/{stream}"));
        let process = FfmpegProcess::spawn(format!("pusher {stream}"), cmd, false).expect("starting ffmpeg pusher");
        Self { process }
    }

    /// A camera with a sub-stream: `main` to `<live_url>/<stream>` and `sub` to
    /// `<live_url>/<stream>_sub`, looped forever, paced by one ffmpeg so the two stay in step
    /// (the quality harness maps recorded frames back to the clip with them).
    pub fn start_with_sub(main: &Path, sub: &Path, live_url: &str, stream: &str) -> Self {
        require("ffmpeg", "ffmpeg");
        let mut cmd = ffmpeg::command();
        cmd.args(["-nostats", "-re", "-stream_loop", "-1"]).input(main).args(["-re", "-stream_loop", "-1"]).input(sub);
        cmd.args(["-map", "0:v", "-c", "copy", "-f", "flv"]).output(format!("{live_url}/{stream}"));
        cmd.args(["-map", "1:v", "-c", "copy", "-f", "flv"]).output(format!("{live_url}/{stream}_sub"));
        let process = FfmpegProcess::spawn(format!("pusher {stream}+sub"), cmd, false).expect("starting ffmpeg pusher");
        Self { process }
    }

    /// Waits until ffmpeg has opened the RTMP output and starts pacing the clip; returns that
    /// wall-clock time (ms), the clip's time zero as players see it.
    pub fn wait_publishing(&self) -> i64 {
        self.process
            .wait_output_video(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("pusher did not start publishing: {}", self.process.stderr_tail()));
        cctv_common::events::now_ms()
    }
}

/// Encodes test footage as a camera would send it: H.264, 25 fps, GOP 25, no audio.
///
/// `quiet_before`/`quiet_after` seconds of the quiet scene (the source's first frame, frozen)
/// surround `loops` plays of `source`: afterwards the scene is as it was before, as when people
/// walked out of view.
pub fn make_clip(source: &Path, out: &Path, loops: u32, quiet_before: f64, quiet_after: f64) {
    activity_clip(
        source,
        out,
        &[Segment::Quiet(quiet_before), Segment::Play { loops, hold: 0.0 }, Segment::Quiet(quiet_after)],
    );
}

/// `loops` plays of `source` with its last frame held `hold` seconds after (whoever is in view
/// stops and stands still).
fn play_clip(source: &Path, out: &Path, loops: u32, hold: f64) {
    let vf =
        format!("fps=25,scale=trunc(iw/2)*2:trunc(ih/2)*2,tpad=stop_mode=clone:stop_duration={hold},format=yuv420p");
    encode(source, out, loops, &vf, &[]);
}

/// One part of an [`activity_clip`].
#[derive(Debug, Clone, Copy)]
pub enum Segment {
    /// The first frame of the source held this many seconds: the scene before and after.
    Quiet(f64),
    /// The source played `loops` times, then its last frame held `hold` seconds (whoever is in
    /// view stands perfectly still).
    Play { loops: u32, hold: f64 },
}

/// Concatenates segments of `source` into one camera clip (same encoding as [`make_clip`]).
/// Every quiet segment shows the same frame, so a scene that is quiet again looks as before.
pub fn activity_clip(source: &Path, out: &Path, segments: &[Segment]) {
    let dir = out.with_extension("parts");
    std::fs::create_dir_all(&dir).expect("clip parts dir");
    let mut list = String::new();
    for (i, seg) in segments.iter().enumerate() {
        let part = dir.join(format!("{i}.mp4"));
        match *seg {
            Segment::Quiet(secs) => make_still_clip(source, &part, secs),
            Segment::Play { loops, hold } => play_clip(source, &part, loops, hold),
        }
        list.push_str(&format!("file '{}'\n", part.display()));
    }
    let list_path = dir.join("list.txt");
    std::fs::write(&list_path, list).expect("concat list");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "concat", "-safe", "0", "-i"])
        .arg(&list_path)
        .args(["-c", "copy"])
        .arg(out)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not concatenate {}", list_path.display());
}

/// `clip` in the left half of a picture twice as wide whose right half stays black: activity
/// only ever on the left (zone tests).
pub fn left_half_clip(clip: &Path, out: &Path) {
    encode(clip, out, 1, "pad=iw*2:ih:0:0:color=black,format=yuv420p", &[]);
}

/// A frozen clip: the first frame of `source` held for `seconds`.
pub fn make_still_clip(source: &Path, out: &Path, seconds: f64) {
    let vf = format!(
        "trim=end_frame=1,fps=25,scale=trunc(iw/2)*2:trunc(ih/2)*2,tpad=stop_mode=clone:stop_duration={seconds},format=yuv420p"
    );
    encode(source, out, 1, &vf, &[]);
}

/// The DOM of the page at `path` on `127.0.0.1:<port>` after `budget_ms` of headless
/// Chromium's virtual time, with `flags`.
/// The value of JavaScript `expression` in the page at `url`, loaded by headless Chromium as a
/// phone of `width`x`height` CSS pixels would show it (mobile viewport), `wait_ms` after
/// navigation (DevTools protocol over a pipe: `testkit/scripts/chromium_eval.py`).
pub fn chromium_eval(url: &str, width: u32, height: u32, wait_ms: u32, expression: &str) -> serde_json::Value {
    chromium_eval_shot(url, width, height, wait_ms, expression, None)
}

/// [`chromium_eval`], also saving the page as a PNG once the value is ready (`shot`).
pub fn chromium_eval_shot(
    url: &str,
    width: u32,
    height: u32,
    wait_ms: u32,
    expression: &str,
    shot: Option<&Path>,
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chromium_eval.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(url)
        .arg(format!("{width}x{height}"))
        .arg(wait_ms.to_string())
        .arg(expression)
        .args(shot)
        .output()
        .expect("python3");
    assert!(out.status.success(), "chromium_eval failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("chromium_eval printed no JSON ({e}): {:?}", out.stdout))
}

/// Where `CCTV_SCREENSHOTS=<dir>` asks for the picture `name` of a view (the ones in
/// docs/screenshots are made so); `None` when it is not set.
pub fn screenshot_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("CCTV_SCREENSHOTS").map(|dir| Path::new(&dir).join(name))
}

pub fn browse(port: u16, path: &str, flags: &[&str], budget_ms: u32) -> String {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(flags)
        .arg("--dump-dom")
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("chromium (apt-get install chromium)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

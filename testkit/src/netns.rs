//! Hosts made of Linux network namespaces, for multi-machine tests: a hub namespace holds a
//! bridge; each host is a namespace with a veth into the bridge and an address `10.<a>.<b>.<n>`
//! the test made (random `<a>.<b>` so parallel runs do not meet). Everything is deleted on drop.
//! Needs root and iproute2.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::KillOnDrop;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip (apt-get install iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The test network: a hub with a bridge.
pub struct Network {
    tag: String,
    subnet: String,
    hub: String,
    hosts: Vec<String>,
}

/// One host: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: String,
    veth: String,
    hub: String,
}

impl Network {
    pub fn new() -> Self {
        assert!(nix::unistd::geteuid().is_root(), "network namespaces need root (CI runs as root)");
        let n = std::process::id() ^ (crate::free_port() as u32) << 8;
        let tag = format!("{:04x}", n & 0xffff);
        let subnet = format!("10.{}.{}", 100 + (n >> 8) % 100, n % 250);
        let hub = format!("cctv{tag}hub");
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        Self { tag, subnet, hub, hosts: Vec::new() }
    }

    /// A new host with address `<subnet>.<n>`.
    pub fn host(&mut self, name: &str, n: u8) -> Host {
        let ns = format!("cctv{}{name}", self.tag);
        let veth = format!("v{}{name}", self.tag);
        let eth = format!("e{}{name}", self.tag);
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &eth]);
        ip(&["link", "set", &veth, "netns", &self.hub]);
        ip(&["link", "set", &eth, "netns", &ns]);
        ip(&["-n", &self.hub, "link", "set", &veth, "master", "br0"]);
        ip(&["-n", &self.hub, "link", "set", &veth, "up"]);
        let addr = format!("{}.{n}", self.subnet);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &eth]);
        ip(&["-n", &ns, "link", "set", &eth, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Host { name: name.to_string(), ns, addr, veth, hub: self.hub.clone() }
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Host {
    /// `ip netns exec <ns> <program> <args>`.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program.as_ref());
        c
    }

    /// Starts a long-running process in the host (stdout discarded, stderr to `log`).
    pub fn spawn(&self, program: impl AsRef<Path>, args: &[&str], log: &Path) -> KillOnDrop {
        let err = std::fs::File::create(log).expect("log file");
        let child = self
            .command(program.as_ref())
            .args(args)
            .env("CCTV_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} in {}: {e}", program.as_ref().display(), self.name));
        KillOnDrop(child)
    }

    /// Waits until something listens on `addr:port` as seen from this host.
    pub fn wait_port(&self, addr: &str, port: u16, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = self
                .command("bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "{what} did not listen on {addr}:{port} (host {})", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cuts (or restores) the host's link to the others.
    pub fn set_link(&self, up: bool) {
        ip(&["-n", &self.hub, "link", "set", &self.veth, if up { "up" } else { "down" }]);
    }
}

/// A binary of this workspace, next to the running test (`target/<profile>/<name>`):
/// `deploy/run-tests.sh` builds every binary before `cargo test --workspace` (cargo itself
/// builds a package's binaries only for that package's integration tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} not built (cargo build --workspace --bins)", path.display());
    path
}

/// The servers of a site on one host: redis-server, nginx-rtmp (config from the scheduler's
/// generator: publishing from this host only, play and HLS for the whole test network) and one
/// ffmpeg camera per channel publishing `clip` (looped when `looped`) to `live/ch<i>`.
pub struct SiteServers {
    pub redis_port: u16,
    pub rtmp_port: u16,
    pub http_port: u16,
    _procs: Vec<KillOnDrop>,
}

impl SiteServers {
    pub fn start(host: &Host, dir: &Path, logs: &Path, clip: &Path, cameras: u32, looped: bool) -> Self {
        let (redis_port, rtmp_port, http_port) = (6379u16, 1935u16, 8080u16);
        let mut procs = Vec::new();
        let port = redis_port.to_string();
        let redis_args =
            ["--bind", &host.addr, "--protected-mode", "no", "--port", &port, "--save", "", "--appendonly", "no"];
        let data = dir.to_str().expect("utf-8 temp dir");
        let args: Vec<&str> = redis_args.iter().copied().chain(["--dir", data]).collect();
        procs.push(host.spawn("redis-server", &args, &logs.join("redis.log")));
        host.wait_port(&host.addr, redis_port, "redis-server");
        let nginx_dir = dir.join("nginx");
        std::fs::create_dir_all(nginx_dir.join("hls")).expect("nginx dir");
        let conf = cctv_relay::nginx::NginxConf {
            rtmp_listen: format!("{}:{rtmp_port}", host.addr),
            http_listen: format!("{}:{http_port}", host.addr),
            hls_dir: nginx_dir.join("hls"),
            work_dir: nginx_dir.clone(),
            module: crate::RTMP_MODULE.into(),
            publish_allow: vec![format!("{}/32", host.addr)],
            // Every host of the test network, those joining later included.
            play_allow: vec![format!("{}.0/24", host.addr.rsplit_once('.').expect("ipv4").0)],
            play_deny: Vec::new(),
            hls_playlist_secs: 90,
            hls_fragment_secs: 2,
        };
        std::fs::write(nginx_dir.join("nginx.conf"), conf.render()).expect("nginx.conf");
        let (prefix, file) = (nginx_dir.to_str().expect("utf-8"), nginx_dir.join("nginx.conf"));
        let nginx_args = ["-p", prefix, "-c", file.to_str().expect("utf-8"), "-e", "stderr"];
        procs.push(host.spawn("nginx", &nginx_args, &logs.join("nginx.log")));
        host.wait_port(&host.addr, rtmp_port, "nginx-rtmp");
        for i in 1..=cameras {
            let url = format!("rtmp://{}:{rtmp_port}/live/ch{i}", host.addr);
            let mut args = vec!["-nostdin", "-re"];
            if looped {
                args.extend(["-stream_loop", "-1"]);
            }
            args.extend(["-i", clip.to_str().expect("utf-8"), "-c", "copy", "-f", "flv", &url]);
            procs.push(host.spawn("ffmpeg", &args, &logs.join(format!("cam{i}.log"))));
        }
        Self { redis_port, rtmp_port, http_port, _procs: procs }
    }

    /// Writes `<dir>/cctv.toml` for workers anywhere on the test network: this host's servers,
    /// one channel per batch, 5 s pre/post-roll, YOLO with the shared model, and `channels`
    /// priority channels (`live/ch<i>`). Backups go to `<dir>/backups`.
    pub fn write_config(&self, host: &Host, dir: &Path, channels: u32) -> PathBuf {
        self.write_config_with(host, dir, channels, "")
    }

    /// The same with `record_extra` (TOML lines) added to its `[record]` section.
    pub fn write_config_with(&self, host: &Host, dir: &Path, channels: u32, record_extra: &str) -> PathBuf {
        let mut text = format!(
            "[cluster]\nredis_url = \"redis://{a}:{redis_port}\"\nnamespace = \"it\"\n\
             [rtmp]\npublish_url = \"rtmp://{a}:{rtmp_port}/live\"\nplay_url = \"rtmp://{a}:{rtmp_port}/live\"\nhls_url = \"http://{a}:{http_port}/hls\"\n\
             [scheduler]\nbatch_size = 1\nreconcile_interval_secs = 1\n[api]\nlisten = \"{a}:8088\"\nviewer_token = \"netns-viewer-token-0123456789\"\n\
             [record]\nbackup_dir = \"{bk}\"\ntimezone = \"UTC\"\npre_roll_secs = 5\npost_roll_secs = 5\n{record_extra}[logs]\ndir = \"{lg}\"\n\
             [motion]\nmax_hold_secs = 10\n\
             [yolo]\nmodel = \"{model}\"\nsnapshot_dir = \"{snap}\"\n",
            a = host.addr,
            redis_port = self.redis_port,
            rtmp_port = self.rtmp_port,
            http_port = self.http_port,
            bk = dir.join("backups").display(),
            lg = dir.join("logs").display(),
            model = crate::shared_dir().join("models/yolov5n.onnx").display(),
            snap = dir.join("snapshots").display(),
        );
        for i in 1..=channels {
            text += &format!(
                "[[channel]]\nid = {i}\nname = \"cam {i}\"\nsource = \"rtsp://127.0.0.1:1/cam{i}\"\npriority = true\n"
            );
        }
        let cfg = dir.join("cctv.toml");
        std::fs::write(&cfg, text).expect("writing cctv.toml");
        cfg
    }
}

/// Redis as seen from host A.
pub struct RedisCli<'a> {
    pub host: &'a Host,
    pub port: u16,
}

impl RedisCli<'_> {
    pub fn run(&self, args: &[&str]) -> String {
        let out = self
            .host
            .command("redis-cli")
            .args(["--raw", "-h", &self.host.addr, "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    pub fn get(&self, key: &str) -> Option<String> {
        Some(self.run(&["GET", key]).trim().to_string()).filter(|s| !s.is_empty())
    }
    /// The JSON payloads of a stream.
    pub fn stream(&self, key: &str) -> Vec<serde_json::Value> {
        self.run(&["XRANGE", key, "-", "+"])
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Polls `f` every 250 ms until it gives a value or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

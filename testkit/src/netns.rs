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

/// A binary of this workspace, next to the running test (`target/<profile>/<name>`): cargo builds
/// every binary before running `cargo test --workspace`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} not built (cargo build --workspace --bins)", path.display());
    path
}

//! A throwaway certificate authority for TLS tests, made with the `openssl` command line: a CA
//! and a server certificate for `127.0.0.1` / `localhost` signed by it, both valid for 2 days.
//! No system store trusts the CA, so a client that verifies certificates accepts the server
//! only when given `ca.pem`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

pub struct TestCa {
    dir: TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        crate::require("openssl", "openssl");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ext = d.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("writing the extensions");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(Command::new("openssl").args(["req", "-x509"]).args(ec).current_dir(d).args([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=cctv test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
        run(Command::new("openssl").arg("req").args(ec).current_dir(d).args([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]));
        run(Command::new("openssl").current_dir(d).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]));
        Self { dir }
    }

    /// The CA's certificate (PEM): what a client is told to trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate (PEM), for 127.0.0.1 and localhost.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running openssl");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

use std::process::Command;

const BROKEN: &str = r#"
[cluster]
namespace = "bad namespace"
[scheduler]
batch_size = 0
[motion]
fps = 0
[[channel]]
id = 1
name = "a"
source = "rtsp://admin:topsecret@cam/1"
[[channel]]
id = 1
name = "b"
source = "nonsense"
"#;

#[test]
fn broken_config_lists_every_error_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cctv.toml");
    std::fs::write(&path, BROKEN).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_worker-motion"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for field in
        ["cluster.namespace", "scheduler.batch_size", "motion.fps", "channel[1] (id 1).id", "channel[1] (id 1).source"]
    {
        assert!(err.contains(field), "{field} missing from:\n{err}");
    }
    assert!(err.contains("5 problem(s)"), "{err}");
    assert!(!err.contains("topsecret"), "{err}");

    // `run` refuses the same file before touching anything.
    let out = Command::new(env!("CARGO_BIN_EXE_worker-motion")).arg("--config").arg(&path).arg("run").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scheduler.batch_size"));
}

#[test]
fn unknown_field_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cctv.toml");
    std::fs::write(&path, "[motion]\nfsp = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_worker-motion"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fsp"));
}

/// Secrets out of the file: `{env:NAME}` and `{file:PATH}` are resolved when the config is
/// loaded; an unset variable fails `check-config` naming the field and the variable.
#[test]
fn secret_references_are_resolved_from_environment_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("api-token");
    std::fs::write(&token, "a-long-enough-token-from-a-file\n").unwrap();
    let path = dir.path().join("cctv.toml");
    let text = format!(
        "[api]\ntoken = \"{{file:{}}}\"\n[[channel]]\nid = 1\nname = \"a\"\nsource = \"rtsp://admin:{{env:CCTV_TEST_CAM1_PASSWORD}}@127.0.0.1:1/cam1\"\n",
        token.display()
    );
    std::fs::write(&path, text).unwrap();
    let check = |password: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker-motion"));
        cmd.arg("--config").arg(&path).arg("check-config").env_remove("CCTV_TEST_CAM1_PASSWORD");
        if let Some(p) = password {
            cmd.env("CCTV_TEST_CAM1_PASSWORD", p);
        }
        cmd.output().unwrap()
    };
    let ok = check(Some("topsecret"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(!String::from_utf8_lossy(&ok.stdout).contains("topsecret"));
    let missing = check(None);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("channel[0] (id 1).source") && err.contains("CCTV_TEST_CAM1_PASSWORD"), "{err}");
}

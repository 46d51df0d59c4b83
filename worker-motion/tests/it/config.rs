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

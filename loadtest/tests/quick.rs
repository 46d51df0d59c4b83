//! `loadtest run --quick` (4 channels, 30 s) on real servers: the harness itself works, and
//! what it reports was measured (components present, frames counted, plots written).

#[test]
fn quick_run_reports_every_component_and_a_stable_stage() {
    let dir = tempfile::tempdir().unwrap();
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/loadtest-clips");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "--quick", "--no-progress", "--report-dir"])
        .arg(dir.path())
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .expect("running loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap_or_default())
            .unwrap_or_default();
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "loadtest --quick failed:\n{stderr}\n{}",
        std::fs::read_to_string(dir.path().join("report.md")).unwrap_or_default()
    );
    let stage = &report["stages"][0];
    assert_eq!(stage["channels"], 4);
    for c in ["nginx", "redis-server", "worker-motion", "ffmpeg (relay)", "scheduler", "worker-yolo", "worker-record"] {
        assert!(stage["rss_mib"][c].as_f64().unwrap_or(0.0) > 0.0, "{c} missing: {}", stage["rss_mib"]);
    }
    // The gate (on by default) decodes in the worker: a gated channel runs no ffmpeg.
    assert!(stage["rss_mib"].get("ffmpeg (worker-motion)").is_none(), "motion ffmpegs: {}", stage["rss_mib"]);
    assert!(stage["frames_analysed"].as_u64().unwrap() > 100, "{stage}");
    assert!(stage["frames_dropped_percent"].as_f64().unwrap() <= 1.0, "{stage}");
    assert!(report["samples"].as_array().unwrap().len() >= 10);
    for f in ["report.md", "cpu.png", "ram.png", "latency.png"] {
        assert!(std::fs::metadata(dir.path().join(f)).map(|m| m.len() > 1000).unwrap_or(false), "{f} missing");
    }
}

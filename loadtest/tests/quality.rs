//! `loadtest quality --quick` on real servers: scripted real footage (an empty room, a person who
//! walks in, stands still 12 s, leaves, passes through again after 4 s, and comes back 3 s later
//! to stand 10 s; an OSD clock; the lights going down) through the whole cluster, scored from the backup files' frames against YOLO ground
//! truth. Every target of docs/quality.md must hold on both policies, and a continuous channel has
//! no gap and no second twice. On the objects channel YOLO samples by need (frames held back
//! while the standing person explains the motion) without losing a target.

#[test]
fn quick_quality_run_backs_up_every_present_second_once_and_nothing_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/quality-clips");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["quality", "--quick", "--report-dir"])
        .arg(dir.path())
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .expect("running loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap_or_default();
    eprintln!("{stderr}\n{md}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap_or_default())
            .unwrap_or_default();
    let channels = report["channels"].as_array().cloned().unwrap_or_default();
    let policies: Vec<&str> = channels.iter().filter_map(|c| c["policy"].as_str()).collect();
    assert_eq!(policies, ["motion", "objects", "continuous"], "{report}");
    for c in &channels {
        // The harness measured something: people were seen and files were read frame by frame.
        assert!(c["present_secs"].as_u64().unwrap_or(0) >= 5, "{c}");
        assert!(c["quiet_secs"].as_u64().unwrap_or(0) >= 30, "{c}");
        if c["policy"] == "continuous" {
            // Kept all the time: far more than the activity, and in several files.
            assert!(c["backup_secs"].as_u64().unwrap_or(0) >= 50, "{c}");
            assert!(c["files"].as_array().map_or(0, |f| f.len()) >= 2, "{c}");
        }
        if c["policy"] == "objects" {
            // Sampling by need: while the person stands where YOLO confirmed them, the motion
            // is explained and frames are held back; the targets (recall, onset) still hold.
            assert!(c["yolo_frames_skipped"].as_u64().unwrap_or(0) >= 1, "sampling by need held nothing back: {c}");
        }
        let files = c["files"].as_array().cloned().unwrap_or_default();
        assert!(!files.is_empty() && files.iter().all(|f| f["frames"].as_u64().unwrap_or(0) > 0), "{c}");
        assert_eq!(c["problems"], serde_json::json!([]), "channel {}: {md}", c["channel"]);
    }
    assert!(out.status.success(), "loadtest quality --quick failed:\n{stderr}\n{md}");
}

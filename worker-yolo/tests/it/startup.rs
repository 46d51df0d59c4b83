use std::process::Command;

fn config(dir: &std::path::Path, model: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("cctv.toml");
    let text = format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1:1\"\n[yolo]\nmodel = \"{}\"\n\
         [[channel]]\nid = 1\nname = \"a\"\nsource = \"rtsp://127.0.0.1:1/a\"\n",
        model.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn run(config: &std::path::Path, ort: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_worker-yolo"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("ORT_DYLIB_PATH", ort)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn missing_model_or_library_is_a_clear_error_and_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let real_ort = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (set by deploy/run-tests.sh)");
    let missing_model = dir.path().join("nowhere/yolov5n.onnx");
    let (ok, err) = run(&config(dir.path(), &missing_model), &real_ort);
    assert!(!ok, "must exit non-zero");
    assert!(err.contains(&missing_model.display().to_string()) && err.contains("yolo.model"), "{err}");

    let model = cctv_testkit::shared_dir().join("models/yolov5n.onnx");
    let missing_lib = dir.path().join("lib/libonnxruntime.so.1.32.0");
    let (ok, err) = run(&config(dir.path(), &model), &missing_lib.display().to_string());
    assert!(!ok, "must exit non-zero");
    assert!(err.contains(&missing_lib.display().to_string()) && err.contains("onnxruntime==1.32.0"), "{err}");

    let (ok, err) = run(&config(dir.path(), &model), "");
    assert!(!ok, "must exit non-zero");
    assert!(err.contains("ORT_DYLIB_PATH") && err.contains("yolo.ort_library"), "{err}");
}

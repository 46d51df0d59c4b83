use cctv_common::config::YoloConfig;
use cctv_testkit::{media, shared_dir};
use worker_yolo::model::{decode_image, YoloModel};

/// `deploy/yolo/quantize.sh` turns the fp32 model into an int8 one that worker-yolo loads and
/// that still finds bus.jpg's people and bus (ONNX Runtime's Python tools from pip, calibrated
/// on `../shared/media`). How far it agrees with fp32 on footage is docs/benchmarks.md.
#[test]
fn the_quantize_script_writes_an_int8_model_that_finds_the_reference_objects() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("yolov5n-int8.onnx");
    cctv_testkit::yolo_script("quantize.sh", &out).unwrap_or_else(|e| panic!("{e}"));
    let fp32 = shared_dir().join("models/yolov5n.onnx");
    let (size8, size32) = (std::fs::metadata(&out).unwrap().len(), std::fs::metadata(&fp32).unwrap().len());
    assert!(size8 * 2 < size32, "int8 weights are a quarter of fp32's: {size8} vs {size32} bytes");
    assert!(!dir.path().join("yolov5n-int8.onnx.part").exists(), "no half-written model left");
    let cfg = YoloConfig {
        model: out,
        class_names: Some(shared_dir().join("models/coco.names")),
        min_score: 0.25,
        ..YoloConfig::default()
    };
    let mut model = YoloModel::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let bus = decode_image(&std::fs::read(media("bus.jpg")).unwrap()).unwrap();
    let found = model.detect(&[&bus]).unwrap().remove(0);
    let people = found.iter().filter(|d| d.label == "person").count();
    assert!(people >= 3 && found.iter().any(|d| d.label == "bus"), "int8 on bus.jpg: {found:?}");
}

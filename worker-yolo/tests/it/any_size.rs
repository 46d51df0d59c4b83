use cctv_common::config::YoloConfig;
use cctv_common::events::Detection;
use cctv_testkit::{media, media_frame_jpeg, shared_dir};
use worker_yolo::model::{decode_image, iou, Input, YoloModel};

use crate::reference::{assert_reference, reference_model};

/// Every reference box has a box of the same label over it in `found` (IoU ≥ 0.8, score at
/// most 0.05 lower). `found` may hold more: with 12 grey rows instead of 140, an object at the
/// frame's top or bottom edge meets the input's edge (`worker-yolo agree` counts those).
fn assert_kept(reference: &[Detection], found: &[Detection], what: &str) {
    for r in reference {
        let m = found.iter().find(|d| d.label == r.label && iou(&d.bbox, &r.bbox) >= 0.8);
        let m = m.unwrap_or_else(|| panic!("{what}: no {} over {:?} in {found:?}", r.label, r.bbox));
        assert!(m.score >= r.score - 0.05, "{what}: {} score {} vs {}", r.label, m.score, r.score);
    }
}

/// `deploy/yolo/any_size.sh` rewrites the fixed 640x640 model so that it takes any input size;
/// worker-yolo sees that and runs a frame alone at the smallest input that holds it (a 640x360
/// sub-stream frame as 640x384, not 640x640) and finds the same objects: the fixed model's
/// detections on real camera frames, and bus.jpg's reference objects.
#[test]
fn the_any_size_model_runs_a_lone_frame_at_its_own_size_with_the_same_detections() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("yolov5n-any.onnx");
    cctv_testkit::yolo_script("any_size.sh", &out).unwrap_or_else(|e| panic!("{e}"));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().ends_with(".part")), "no half-written file left: {left:?}");
    assert!(dir.path().join("coco.names").is_file(), "the class names beside the model, where worker-yolo looks");

    let mut fixed = reference_model();
    let names = std::fs::read_to_string(shared_dir().join("models/coco.names")).unwrap();
    let cfg = YoloConfig {
        model: out.clone(),
        min_score: 0.25,
        iou_threshold: 0.45,
        classes: names.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
        pair_frames: true,
        ..YoloConfig::default()
    };
    let mut any = YoloModel::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    assert!(!fixed.any_size(), "the export in ../shared is 640x640 only");
    assert!(any.any_size(), "the rewritten model takes any size");

    let bus = decode_image(&std::fs::read(media("bus.jpg")).unwrap()).unwrap();
    assert_eq!(any.lone_input(&bus), Input { width: 480, height: 640 });
    assert_eq!(fixed.lone_input(&bus), Input { width: 640, height: 640 });
    // With no grey at the sides, the portrait picture's edges are the input's: the model finds
    // every reference object (and more: the person cut off at the left edge, a skateboard),
    // as YOLOv5's own detect.py, which runs at this size, does.
    let rect = any.detect(&[&bus]).unwrap().remove(0);
    let square = fixed.detect(&[&bus]).unwrap().remove(0);
    assert_reference(&square);
    for r in &square {
        let kept = rect.iter().any(|d| d.label == r.label && iou(&d.bbox, &r.bbox) >= 0.8);
        assert!(kept, "bus.jpg at 480x640: no {} over {:?} in {rect:?}", r.label, r.bbox);
    }

    // Camera sub-stream frames (640x360): 640x384 inputs, the fixed model's detections.
    let mut seen = 0;
    for (clip, at) in [("worker-zone-detection.gif", 640), ("person-bicycle-car-detection.gif", 640)] {
        let frame = decode_image(&media_frame_jpeg(clip, at, 360)).unwrap();
        assert_eq!(any.lone_input(&frame), Input { width: 640, height: 384 });
        let reference = fixed.detect(&[&frame]).unwrap().remove(0);
        let alone = any.detect(&[&frame]).unwrap().remove(0);
        assert_kept(&reference, &alone, clip);
        seen += reference.len();
        // Three wide frames: two share a square input, the third runs alone at 640x384 in a
        // second run of the model, and gets the answer it gets alone.
        let three = any.detect(&[&frame, &frame, &frame]).unwrap();
        assert_eq!(three[2], alone, "{clip}: the frame left over runs as it does alone");
        // (How far paired halves agree with single frames: `worker-yolo agree`.)
        assert!(!three[0].is_empty() && !three[1].is_empty(), "{clip}: the shared input ran: {three:?}");
    }
    assert!(seen >= 3, "the frames hold objects to compare ({seen})");
}

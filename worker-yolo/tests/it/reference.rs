use cctv_common::config::YoloConfig;
use cctv_testkit::{media, shared_dir};
use worker_yolo::model::{decode_image, YoloModel};

/// `../shared/models/README.md`: label, score, box (x1, y1, x2, y2) in bus.jpg pixels.
const REFERENCE: [(&str, f32, [f32; 4]); 4] = [
    ("person", 0.798, [49.0, 396.0, 232.0, 889.0]),
    ("person", 0.770, [222.0, 413.0, 345.0, 862.0]),
    ("person", 0.724, [686.0, 385.0, 811.0, 866.0]),
    ("bus", 0.694, [12.0, 233.0, 776.0, 785.0]),
];

pub(crate) fn reference_model() -> YoloModel {
    let models = shared_dir().join("models");
    let names = std::fs::read_to_string(models.join("coco.names")).unwrap();
    let cfg = YoloConfig {
        model: models.join("yolov5n.onnx"),
        min_score: 0.25,
        iou_threshold: 0.45,
        // Every class, as the reference was made.
        classes: names.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
        ..YoloConfig::default()
    };
    YoloModel::load(&cfg).unwrap_or_else(|e| panic!("{e} (run through deploy/run-tests.sh, which sets ORT_DYLIB_PATH)"))
}

pub(crate) fn assert_reference(found: &[cctv_common::events::Detection]) {
    assert_eq!(found.len(), REFERENCE.len(), "detections: {found:?}");
    for (label, score, bbox) in REFERENCE {
        let m = found
            .iter()
            .find(|d| d.label == label && (0..4).all(|i| (d.bbox[i] - bbox[i]).abs() <= 4.0))
            .unwrap_or_else(|| panic!("no {label} near {bbox:?} in {found:?}"));
        assert!((m.score - score).abs() <= 0.02, "{label} {bbox:?}: score {} vs {score}", m.score);
    }
}

#[test]
fn bus_jpg_reproduces_the_reference_alone_and_in_a_batch() {
    let mut model = reference_model();
    let bus = decode_image(&std::fs::read(media("bus.jpg")).unwrap()).unwrap();
    let alone = model.detect(&[&bus]).unwrap().remove(0);
    for d in &alone {
        eprintln!("{} {:.3} {:?}", d.label, d.score, d.bbox.map(|v| v.round()));
    }
    assert_reference(&alone);

    // In a batch of 4 with other frames, bus.jpg gets the same answer.
    let other = decode_image(&std::fs::read(media("bus.jpg")).unwrap()).unwrap();
    let mut small = opencv::core::Mat::default();
    opencv::imgproc::resize(
        &other,
        &mut small,
        opencv::core::Size::new(405, 540),
        0.0,
        0.0,
        opencv::imgproc::INTER_AREA,
    )
    .unwrap();
    let batch = model.detect(&[&small, &bus, &small, &bus]).unwrap();
    assert_eq!(batch.len(), 4);
    assert_reference(&batch[1]);
    assert_reference(&batch[3]);
    assert_eq!(batch[0], batch[2], "same frame, same answer within one batch");
    assert!(batch[0].iter().any(|d| d.label == "bus"), "the half-size frame is detected too: {:?}", batch[0]);
}

//! YOLO cost per frame, ours against plain ONNX Runtime on the same model, library and threads:
//! `ORT_DYLIB_PATH=$PWD/.ort/libonnxruntime.so.1.32.0 cargo bench -p worker-yolo --bench yolo`.
//!
//! - `ours/batch{1,2,4}`: [`YoloModel::detect`] on decoded 640x360 camera frames: letterbox,
//!   inference, decoding and NMS — everything the worker does per frame after JPEG decoding —
//!   with the default config (`spin_wait = false`).
//! - `ours_spinning/batch{1,2,4}`: the same with `spin_wait = true`, ONNX Runtime's own default,
//!   which `plain_ort` uses too.
//! - `plain_ort/batch{1,2,4}`: a bare `ort` session with the same intra-op threads running a
//!   prepared input tensor — inference alone, the floor we are compared with — with ONNX
//!   Runtime's defaults (spinning on); `plain_ort_no_spin` the same with spinning off.
//!
//! - `ours_int8/batch1`, `ours_int8_paired/frames2`: the int8 model of deploy/yolo/quantize.sh
//!   (when `.local/models/yolov5n-int8.onnx` exists), one frame, and two frames in one input.
//! - `ours_paired/frames{2,4}`: `yolo.pair_frames`: two 640x360 frames per 640x640 input (each
//!   scaled into a 640x320 half), so 2 frames cost one inference.
//! - `ours_1thread/batch1`, `ours_1thread_paired/frames2`: one frame alone and two frames in one
//!   input with one intra-op thread, `yolo.intra_threads`' default on a 2-core machine: there
//!   the time is the CPU cost (with two threads it is less than the CPU time spent).
//!
//! - `ours_any/batch1`, `ours_any_1thread/batch1`: one frame alone with the any-size model
//!   (`deploy/yolo/any_size.sh`, made by `cctv_testkit::any_size_model`): the 640x360 frame
//!   runs as a 640x384 input instead of 640x640; two and one intra-op threads.
//!
//! Throughput is frames, so criterion prints frames/s for each.

use cctv_common::config::YoloConfig;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opencv::prelude::*;
use ort::session::Session;
use ort::value::TensorRef;
use worker_yolo::model::{self, YoloModel};

/// Two threads per inference, as the numbers in docs/benchmarks.md were measured (the default
/// depends on the machine's cores); one frame per input unless a bench pairs them.
fn config() -> YoloConfig {
    YoloConfig {
        model: cctv_testkit::shared_dir().join("models/yolov5n.onnx"),
        intra_threads: 2,
        pair_frames: false,
        ..YoloConfig::default()
    }
}

/// The int8 model `deploy/yolo/quantize.sh` writes (benched when it is there).
fn int8_model() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/models/yolov5n-int8.onnx");
    p.exists().then_some(p)
}

/// A camera-sized frame (640x360) cut from real footage.
fn frame() -> opencv::core::Mat {
    model::decode_image(&cctv_testkit::media_frame_jpeg("worker-zone-detection.gif", 640, 360)).expect("a frame")
}

fn bench(c: &mut Criterion) {
    let f = frame();
    assert_eq!((f.cols(), f.rows()), (640, 360));
    let per = 3 * 640 * 640;
    let mut input = vec![0f32; 4 * per];
    for i in 0..4 {
        model::letterbox(&f, 640, &mut input[i * per..(i + 1) * per]).unwrap();
    }
    let mut g = c.benchmark_group("yolo");
    g.sample_size(10).measurement_time(std::time::Duration::from_secs(12));
    // Two frames per input (`yolo.pair_frames`): frames per second where each input serves two.
    {
        let mut m = YoloModel::load(&YoloConfig { pair_frames: true, ..config() }).expect("model");
        for n in [2usize, 4] {
            g.throughput(Throughput::Elements(n as u64));
            let frames: Vec<&opencv::core::Mat> = std::iter::repeat_n(&f, n).collect();
            g.bench_function(format!("ours_paired/frames{n}"), |b| b.iter(|| m.detect(&frames).unwrap()));
        }
    }
    // One thread (the default on 2 cores): time per frame is CPU per frame.
    for (name, pair_frames, n) in [("ours_1thread/batch1", false, 1usize), ("ours_1thread_paired/frames2", true, 2)] {
        let mut m = YoloModel::load(&YoloConfig { pair_frames, intra_threads: 1, ..config() }).expect("model");
        g.throughput(Throughput::Elements(n as u64));
        let frames: Vec<&opencv::core::Mat> = std::iter::repeat_n(&f, n).collect();
        g.bench_function(name, |b| b.iter(|| m.detect(&frames).unwrap()));
    }
    // The any-size model: a lone frame at 640x384.
    {
        let model = cctv_testkit::any_size_model().expect("deploy/yolo/any_size.sh");
        for (name, intra_threads) in [("ours_any/batch1", 2), ("ours_any_1thread/batch1", 1)] {
            let mut m =
                YoloModel::load(&YoloConfig { model: model.clone(), intra_threads, ..config() }).expect("model");
            assert!(m.any_size(), "{} takes any size", model.display());
            g.throughput(Throughput::Elements(1));
            g.bench_function(name, |b| b.iter(|| m.detect(&[&f]).unwrap()));
        }
    }
    // The int8 model (deploy/yolo/quantize.sh), alone and paired.
    if let Some(path) = int8_model() {
        let class_names = Some(config().class_names_path());
        for (name, pair_frames, n) in [("ours_int8/batch1", false, 1usize), ("ours_int8_paired/frames2", true, 2)] {
            let cfg = YoloConfig { model: path.clone(), class_names: class_names.clone(), pair_frames, ..config() };
            let mut m = YoloModel::load(&cfg).expect("int8 model");
            g.throughput(Throughput::Elements(n as u64));
            let frames: Vec<&opencv::core::Mat> = std::iter::repeat_n(&f, n).collect();
            g.bench_function(name, |b| b.iter(|| m.detect(&frames).unwrap()));
        }
    }
    // One session alive at a time: an idle session's spinning threads would slow the measured one.
    for (name, spin_wait) in [("ours", false), ("ours_spinning", true)] {
        let mut m = YoloModel::load(&YoloConfig { spin_wait, ..config() }).expect("model (is ORT_DYLIB_PATH set?)");
        for n in [1usize, 2, 4] {
            g.throughput(Throughput::Elements(n as u64));
            let frames: Vec<&opencv::core::Mat> = std::iter::repeat_n(&f, n).collect();
            g.bench_function(format!("{name}/batch{n}"), |b| b.iter(|| m.detect(&frames).unwrap()));
        }
    }
    let env = model::environment(None).unwrap();
    for (name, spin) in [("plain_ort", true), ("plain_ort_no_spin", false)] {
        let mut plain = Session::builder(&env)
            .unwrap()
            .with_intra_threads(config().intra_threads)
            .unwrap()
            .with_intra_op_spinning(spin)
            .unwrap()
            .with_inter_op_spinning(spin)
            .unwrap()
            .commit_from_file(&config().model)
            .unwrap();
        for n in [1usize, 2, 4] {
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("{name}/batch{n}"), |b| {
                b.iter(|| {
                    let t = TensorRef::from_array_view(([n, 3, 640, 640], &input[..n * per])).unwrap();
                    let out = plain.run(ort::inputs!["images" => t]).unwrap();
                    out[0].try_extract_tensor::<f32>().unwrap().1.len()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

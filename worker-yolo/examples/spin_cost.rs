//! What ONNX Runtime's spin-waiting costs the rest of the machine (`yolo.spin_wait`):
//! `ORT_DYLIB_PATH=$PWD/.ort/libonnxruntime.so.1.32.0 cargo run --release -p worker-yolo --example spin_cost`.
//!
//! First ours (`YoloModel::detect`) and a plain ONNX Runtime session, each with spinning on and
//! off, alone, in interleaved rounds (medians: this VM's host is noisy). Then ours with spin on
//! and off beside one busy thread per core that stands for the ffmpeg decoders: wall time per
//! frame, process CPU time per frame (busy threads included) and the work the busy threads got
//! done per second.

#[path = "shared/cost.rs"]
mod cost;
use std::time::Instant;

use cctv_common::config::YoloConfig;
use cost::{cpu_secs, median, Busy};
use worker_yolo::model::{self, YoloModel};

const FRAMES: usize = 60;

fn frame() -> opencv::core::Mat {
    model::decode_image(&cctv_testkit::media_frame_jpeg("worker-zone-detection.gif", 640, 360)).expect("a frame")
}

/// One of the four things measured.
enum Runner {
    Ours(YoloModel),
    Plain(ort::session::Session, Vec<f32>),
}

impl Runner {
    fn load(plain: bool, spin: bool, f: &opencv::core::Mat) -> Self {
        let cfg = YoloConfig {
            model: cctv_testkit::shared_dir().join("models/yolov5n.onnx"),
            spin_wait: spin,
            // As measured in docs/benchmarks.md (the default depends on the machine's cores).
            intra_threads: 2,
            ..YoloConfig::default()
        };
        if !plain {
            return Self::Ours(YoloModel::load(&cfg).expect("model (is ORT_DYLIB_PATH set?)"));
        }
        let env = model::environment(None).expect("ONNX Runtime");
        let session = ort::session::Session::builder(&env)
            .expect("session builder")
            .with_intra_threads(cfg.intra_threads)
            .expect("intra threads")
            .with_intra_op_spinning(spin)
            .expect("spinning")
            .with_inter_op_spinning(spin)
            .expect("spinning")
            .commit_from_file(&cfg.model)
            .expect("plain session");
        let mut input = vec![0f32; 3 * 640 * 640];
        model::letterbox(f, 640, &mut input).expect("letterbox");
        Self::Plain(session, input)
    }

    fn run(&mut self, f: &opencv::core::Mat) {
        match self {
            Self::Ours(m) => {
                m.detect(&[f]).expect("detect");
            }
            Self::Plain(s, input) => {
                let t = ort::value::TensorRef::from_array_view(([1usize, 3, 640, 640], &input[..])).expect("tensor");
                let out = s.run(ort::inputs!["images" => t]).expect("run");
                std::hint::black_box(out[0].try_extract_tensor::<f32>().expect("output").1.len());
            }
        }
    }
}

fn main() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let f = frame();
    let variants =
        [("ours", false, false), ("ours", false, true), ("plain ORT", true, false), ("plain ORT", true, true)];
    // Alone: rounds interleave the four variants (one session alive at a time) so that a noisy
    // host slows them alike; medians over the rounds.
    const ROUNDS: usize = 7;
    let mut alone: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for (i, &(_, plain, spin)) in variants.iter().enumerate() {
            let mut r = Runner::load(plain, spin, &f);
            for _ in 0..3 {
                r.run(&f);
            }
            let t0 = Instant::now();
            for _ in 0..20 {
                r.run(&f);
            }
            alone[i].push(t0.elapsed().as_secs_f64() * 1000.0 / 20.0);
        }
    }
    println!("alone, median of {ROUNDS} interleaved rounds of 20 frames (batch 1, intra_threads 2):");
    println!("what | spin_wait | ms/frame (median) | min | max");
    for (i, &(name, _, spin)) in variants.iter().enumerate() {
        let v = &alone[i];
        let (lo, hi) = (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
        println!("{name} | {spin} | {:.1} | {lo:.1} | {hi:.1}", median(v.clone()));
    }
    println!();
    println!("beside {cpus} busy threads, {FRAMES} frames each:");
    println!("spin_wait | wall ms/frame | process CPU ms/frame | busy work units/s");
    for spin in [true, false, true, false] {
        let mut r = Runner::load(false, spin, &f);
        for _ in 0..5 {
            r.run(&f);
        }
        let busy = Busy::start(cpus);
        let (t0, c0) = (Instant::now(), cpu_secs());
        for _ in 0..FRAMES {
            r.run(&f);
        }
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
        let done = busy.stop();
        println!(
            "{spin} | {:.1} | {:.1} | {:.0}",
            wall * 1000.0 / FRAMES as f64,
            cpu * 1000.0 / FRAMES as f64,
            done as f64 / wall
        );
    }
}

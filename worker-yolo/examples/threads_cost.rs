//! What `yolo.intra_threads` costs per frame: wall time and CPU time, alone and beside busy
//! threads that stand for the decoders.
//! `ORT_DYLIB_PATH=$PWD/.ort/libonnxruntime.so.1.32.0 cargo run --release -p worker-yolo --example threads_cost`.
//!
//! On a machine the cluster shares, the CPU time per frame is what YOLO takes from everything
//! else; the wall time is its latency. Rounds interleave the variants (one session alive at a
//! time) so that a noisy host slows them alike; medians over the rounds.

#[path = "shared/cost.rs"]
mod cost;
use std::time::Instant;

use cctv_common::config::YoloConfig;
use cost::{cpu_secs, median, Busy};
use worker_yolo::model::{self, YoloModel};

const ROUNDS: usize = 7;
const FRAMES: usize = 20;

fn load(threads: usize) -> YoloModel {
    let cfg = YoloConfig {
        model: cctv_testkit::shared_dir().join("models/yolov5n.onnx"),
        intra_threads: threads,
        ..YoloConfig::default()
    };
    YoloModel::load(&cfg).expect("model (is ORT_DYLIB_PATH set?)")
}

fn main() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let f =
        model::decode_image(&cctv_testkit::media_frame_jpeg("worker-zone-detection.gif", 640, 360)).expect("a frame");
    let variants = [1usize, 2];
    // (wall ms/frame, CPU ms/frame) per variant and round, alone.
    let mut alone: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
    // (wall ms/frame, busy work units/s) per variant and round, beside `cpus` busy threads.
    let mut beside: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for (i, &threads) in variants.iter().enumerate() {
            let mut m = load(threads);
            for _ in 0..3 {
                m.detect(&[&f]).expect("detect");
            }
            let (t0, c0) = (Instant::now(), cpu_secs());
            for _ in 0..FRAMES {
                m.detect(&[&f]).expect("detect");
            }
            let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
            alone[i].push((wall * 1000.0 / FRAMES as f64, cpu * 1000.0 / FRAMES as f64));

            let busy = Busy::start(cpus);
            let t0 = Instant::now();
            for _ in 0..FRAMES {
                m.detect(&[&f]).expect("detect");
            }
            let wall = t0.elapsed().as_secs_f64();
            let done = busy.stop();
            beside[i].push((wall * 1000.0 / FRAMES as f64, done as f64 / wall));
        }
    }
    println!("median of {ROUNDS} interleaved rounds of {FRAMES} frames, batch 1, spin_wait false:");
    println!("intra_threads | alone: wall ms/frame | alone: CPU ms/frame | beside {cpus} busy threads: wall ms/frame | busy work units/s");
    for (i, threads) in variants.iter().enumerate() {
        println!(
            "{threads} | {:.1} | {:.1} | {:.1} | {:.0}",
            median(alone[i].iter().map(|r| r.0).collect()),
            median(alone[i].iter().map(|r| r.1).collect()),
            median(beside[i].iter().map(|r| r.0).collect()),
            median(beside[i].iter().map(|r| r.1).collect()),
        );
    }
}

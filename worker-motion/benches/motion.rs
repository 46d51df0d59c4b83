//! Motion cost per frame on real footage: `cargo bench -p worker-motion --bench motion`.
//!
//! Frames are decoded once by ffmpeg from `../shared/media/car-detection.mp4` at the default
//! analysis size (grey, 180 px high, 5 fps), then the detector runs over them in a loop.

use std::process::Command;

use cctv_common::config::MotionConfig;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use worker_motion::detector::MotionDetector;

fn frames(params: &MotionConfig) -> (u32, u32, Vec<Vec<u8>>) {
    let clip = cctv_testkit::media("car-detection.mp4");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
        .arg(&clip)
        .args([
            "-vf",
            &format!("fps={},scale=-2:{}", params.fps, params.frame_height),
            "-pix_fmt",
            "gray",
            "-f",
            "rawvideo",
            "pipe:1",
        ])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    let height = params.frame_height;
    // 768x432 source: width follows the aspect ratio, rounded to even.
    let width = ((768.0 * f64::from(height) / 432.0 / 2.0).round() * 2.0) as u32;
    let size = (width * height) as usize;
    assert_eq!(out.stdout.len() % size, 0, "frame size mismatch");
    (width, height, out.stdout.chunks(size).map(<[u8]>::to_vec).collect())
}

fn bench(c: &mut Criterion) {
    let params = MotionConfig::default();
    let (w, h, frames) = frames(&params);
    let mut group = c.benchmark_group("motion");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function(format!("{}_frames_{w}x{h}", frames.len()), |b| {
        b.iter(|| {
            let mut d = MotionDetector::new(&params, w, h);
            let mut motion = 0;
            for (i, f) in frames.iter().enumerate() {
                motion += usize::from(d.process(f, i as i64 * 200).expect("frame").motion);
            }
            motion
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

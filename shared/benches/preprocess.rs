//! Per-frame preprocessing time: camera frames -> test transform -> one normalised CHW input, the
//! allocating reference path (`PreprocessSpec::model_input`: image's `imageops::resize`, crop,
//! `normalize_chw`) against the device path (`FramePreprocessor` into kept buffers, the same
//! bytes), in microseconds per frame. Single thread; the best of several timed rounds.
//!
//! ```text
//! cargo bench -p firm-shared --bench preprocess
//! cargo bench -p firm-shared --bench preprocess -- --rounds 9
//! # profiling the new path: skip the old one, a fixed number of calls
//! valgrind --tool=callgrind target/release/deps/preprocess-* --new-only --calls 10
//! ```
//!
//! Measured (2-core x86-64 VM shared with other jobs, load average 3.5-5, so noisy by tens of
//! percent; the better of two runs of the first command; SSE2 baseline, no target-cpu):
//!
//! ```text
//!      frame  size  allocating µs    FramePre µs speed-up
//!    640x480   224           5846            631     9.3x
//!    640x480   256           5284            885     6.0x
//!  1920x1080   224          18999           1514    12.6x
//!  1920x1080   256          17548           1219    14.4x
//! ```
//!
//! Noise-free: under callgrind (`--new-only --calls 10`, the four cases together) the new path
//! runs 13.4 M instructions per frame, the allocating one 138 M.

use std::hint::black_box;
use std::time::{Duration, Instant};

use firm_shared::preprocess::{FramePreprocessor, PreprocessSpec};
use image::RgbImage;

fn frame(w: u32, h: u32) -> RgbImage {
    // A smooth pattern with some texture, like a camera image (the content does not change the
    // work: every weight is applied to every pixel either way).
    RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 3) ^ (x.wrapping_mul(2_654_435_761) >> 27);
        image::Rgb([v as u8, (v + y) as u8, (x ^ y) as u8])
    })
}

/// Best per-call time of `f` over `rounds` rounds of about 200 ms each, or with `calls`, one
/// round of exactly that many calls (deterministic work, for `valgrind --tool=callgrind`).
fn time(rounds: usize, calls: Option<u32>, mut f: impl FnMut()) -> Duration {
    f();
    let per_round = calls.unwrap_or_else(|| {
        let start = Instant::now();
        let mut calls = 0u32;
        while start.elapsed() < Duration::from_millis(50) {
            f();
            calls += 1;
        }
        ((calls as u128 * 200) / 50).max(1) as u32
    });
    let rounds = if calls.is_some() { 1 } else { rounds };
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                f();
            }
            t.elapsed() / per_round
        })
        .min()
        .expect("at least one round")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(5, |v| v.parse().expect("--rounds N"));
    // --new-only: skip the allocating path; --calls N: exactly N calls per case (profiling).
    let new_only = args.iter().any(|a| a == "--new-only");
    let calls = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--calls N"));
    println!(
        "{:>10} {:>5} {:>14} {:>14} {:>8}",
        "frame", "size", "allocating µs", "FramePre µs", "speed-up"
    );
    for (w, h) in [(640u32, 480u32), (1920, 1080)] {
        let img = frame(w, h);
        for size in [224u32, 256] {
            let spec = PreprocessSpec::new(size);
            let old = if new_only {
                Duration::ZERO
            } else {
                time(rounds, calls, || {
                    black_box(spec.model_input(black_box(&img)).expect("preprocess"));
                })
            };
            let mut pre = FramePreprocessor::new(&spec).expect("spec");
            let mut input = vec![0f32; pre.input_len()];
            let new = time(rounds, calls, || {
                let square = pre.test_transform(black_box(&img)).expect("preprocess");
                square.normalize_into(0, &mut input);
                black_box(&input);
            });
            // Same result, or the figures mean nothing.
            assert_eq!(input, spec.model_input(&img).expect("preprocess"));
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            println!(
                "{:>10} {:>5} {:>14.0} {:>14.0} {:>7.1}x",
                format!("{w}x{h}"),
                size,
                us(old),
                us(new),
                us(old) / us(new)
            );
        }
    }
}

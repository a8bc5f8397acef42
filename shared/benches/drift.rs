//! Per-frame cost of the drift sentinel's image statistics ([`FrameStats::of`]) on the test
//! transform's output, beside the test transform itself (640x480 camera frame to the square),
//! in microseconds per frame. Single thread; the best of several timed rounds.
//!
//! ```text
//! cargo bench -p firm-shared --bench drift
//! ```
//!
//! Measured (2-core AMD EPYC VM shared with other jobs, so noisy by tens of percent; release,
//! x86-64 baseline, the typical of three runs):
//!
//! ```text
//!  size    FrameStats µs     transform µs
//!    64             10.1              217
//!   224            115.9              426
//!   256            141.6              531
//! DriftMonitor::observe (window 32, distance window 100): 0.82 µs
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use firm_shared::drift::{DriftConfig, DriftMonitor, DriftSection, FrameStats};
use firm_shared::preprocess::{FramePreprocessor, PreprocessSpec};
use image::RgbImage;

fn frame(w: u32, h: u32) -> RgbImage {
    // As benches/preprocess.rs: a pattern with some texture, like a camera image.
    RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 3) ^ (x.wrapping_mul(2_654_435_761) >> 27);
        image::Rgb([v as u8, (v + y) as u8, (x ^ y) as u8])
    })
}

/// Best per-call time of `f` over `rounds` rounds of about 200 ms each.
fn time(rounds: usize, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < Duration::from_millis(50) {
        f();
        calls += 1;
    }
    let per_round = (calls * 4).max(1);
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
    let img = frame(640, 480);
    println!(
        "{:>5} {:>16} {:>16}",
        "size", "FrameStats µs", "transform µs"
    );
    for size in [64u32, 224, 256] {
        let mut pre = FramePreprocessor::new(&PreprocessSpec::new(size)).expect("spec");
        let square = pre.test_transform(&img).expect("preprocess").to_image();
        let stats = time(5, || {
            black_box(FrameStats::of(black_box(square.as_raw()), size));
        });
        let transform = time(5, || {
            black_box(
                pre.test_transform(black_box(&img))
                    .expect("preprocess")
                    .pixels(),
            );
        });
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!("{size:>5} {:>16.1} {:>16.0}", us(stats), us(transform));
    }
    // The monitor's per-frame step (six window medians, the binomial tail), default settings.
    let train: Vec<FrameStats> = (0..100)
        .map(|i| FrameStats {
            brightness: 100.0 + (i % 7) as f64,
            contrast: 30.0 + (i % 5) as f64,
            red: 90.0 + (i % 3) as f64,
            green: 95.0,
            blue: 80.0 + (i % 4) as f64,
            focus: 800.0 + (i % 9) as f64 * 20.0,
        })
        .collect();
    let cal: Vec<f64> = (1..=100).map(|i| i as f64 * 1e-3).collect();
    let section = DriftSection::new(&train, &cal, 0.9).expect("section");
    let mut monitor = DriftMonitor::new(&section, DriftConfig::default()).expect("monitor");
    let mut seq = 0u64;
    let observe = time(5, || {
        seq += 1;
        let s = train[seq as usize % train.len()];
        let d = cal[seq as usize % cal.len()];
        black_box(monitor.observe(seq, black_box(&s), Some(d)).len());
    });
    println!(
        "DriftMonitor::observe (window 32, distance window 100): {:.2} µs",
        observe.as_secs_f64() * 1e6
    );
}

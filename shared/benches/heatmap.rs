//! The anomaly map's per-frame work on the device (the patch grid upsampled to the input and
//! smoothed) and the trainer's pixel metrics on a test set, in milliseconds.
//!
//! ```text
//! cargo bench -p firm-shared --bench heatmap
//! ```
//!
//! Measured (2-core AMD EPYC VM shared with other jobs; release): resize 28x28 -> 224x224
//! 0.10-0.19 ms, with the sigma-4 blur 0.43-0.49 ms; pixel AUROC on 100 maps of 224x224 (5 M
//! pixels, 2 threads) 190-240 ms, AUPRO (FPR <= 0.3) about 230 ms.

use std::hint::black_box;
use std::time::Instant;

use firm_shared::score::map::Map;
use firm_shared::score::pixel::{PixelCase, aupro, pixel_auroc};

fn main() {
    let grid = Map::from_vec(28, 28, (0..784).map(|i| (i % 37) as f32 * 0.1).collect()).unwrap();
    let mut map = Map::new(224, 224);
    let mut scratch = Vec::new();
    let n = 500;
    let t = Instant::now();
    for _ in 0..n {
        grid.resize_bilinear_into(&mut map);
    }
    let resize = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        grid.resize_bilinear_into(&mut map);
        map.gaussian_blur_in_place(4.0, &mut scratch);
    }
    let both = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    black_box(&map);
    println!("resize 28x28 -> 224x224: {resize:.3} ms; with the sigma-4 blur: {both:.3} ms");

    let (w, h, n) = (224usize, 224usize, 100usize);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let masks: Vec<Vec<bool>> = (0..n)
        .map(|i| {
            (0..w * h)
                .map(|p| i % 2 == 0 && (p % w) / 20 == i % 10 && (p / w) / 30 == 3)
                .collect()
        })
        .collect();
    let maps: Vec<Vec<f32>> = masks
        .iter()
        .map(|m| {
            m.iter()
                .map(|&d| next() + if d { 0.5 } else { 0.0 })
                .collect()
        })
        .collect();
    let cases: Vec<PixelCase> = maps
        .iter()
        .zip(&masks)
        .map(|(m, k)| PixelCase {
            map: m,
            mask: Some(k),
            w,
            h,
        })
        .collect();
    let t = Instant::now();
    let a = black_box(pixel_auroc(&cases));
    let ta = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let p = black_box(aupro(&cases, 0.3));
    let tp = t.elapsed().as_secs_f64() * 1e3;
    println!("100 maps of 224x224: pixel AUROC {a:?} in {ta:.0} ms, AUPRO {p:?} in {tp:.0} ms");
}

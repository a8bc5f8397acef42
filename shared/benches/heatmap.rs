//! The anomaly map's per-frame work on the device (the patch grid upsampled to the input and
//! smoothed) and the trainer's pixel metrics on a test set, in milliseconds.
//!
//! ```text
//! cargo bench -p firm-shared --bench heatmap
//! ```
//!
//! Measured (2-core AMD EPYC VM shared with other jobs; release): resize 28x28 -> 224x224
//! 0.07-0.19 ms, with the sigma-4 blur 0.36-0.49 ms, both as one precomputed linear map per axis
//! (`Smooth`, what the patch scorer runs) 0.046-0.050 ms; each of 784 cells' nearest row of a
//! 1,024 x 80 f16 bank of uniform random values (the int8 search with exact candidates)
//! 0.82-1.02 ms on one thread, 0.47-0.49 ms on two; with the mask scans and an exact distance
//! as the limit (2026-12-07) 0.71 and 0.46 ms (the f32 GEMM it replaced: 1.26-1.53 and
//! 0.70-0.83 ms for 64-d rows); pixel AUROC on 100 maps of 224x224 (5 M pixels, 2 threads)
//! 100-240 ms, AUPRO (FPR <= 0.3) 95-230 ms.

use std::hint::black_box;
use std::time::Instant;

use firm_shared::score::map::{Map, Resample, Smooth};
use firm_shared::score::patch::{NearestScratch, PatchBank};
use firm_shared::score::pixel::{PixelCase, aupro, pixel_auroc};

fn main() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
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
    let mut op = Smooth::new(
        (28, 28),
        (224, 224),
        Resample::HalfPixel,
        Resample::HalfPixel,
        4.0,
    );
    let t = Instant::now();
    for _ in 0..n {
        op.apply(&grid, &mut map);
    }
    let fused = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    black_box(&map);
    println!("the same as one precomputed linear map per axis (Smooth): {fused:.3} ms");

    // Each grid cell's nearest bank row: the default Lite0 224 px spec (28 x 28 cells, 80-d,
    // a 1,024-row f16 bank), on one thread and on the pool of every core. Uniform random
    // features are the int8 search's hard case: their distances crowd together, so many rows
    // stay candidates (on bottle's features a handful do).
    let (cells, dim, rows) = (784, 80, 1024);
    let bank: Vec<half::f16> = (0..rows * dim)
        .map(|_| half::f16::from_f32(next()))
        .collect();
    let bank = PatchBank::new(bank, dim).unwrap();
    let queries: Vec<f32> = (0..cells * dim).map(|_| next()).collect();
    let mut scratch = NearestScratch::default();
    let mut out = vec![0f32; cells];
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    for threads in [1, pool.current_num_threads()] {
        let ms = pool.install(|| {
            bank.nearest_into(&queries, cells, threads, &mut scratch, &mut out);
            let t = Instant::now();
            for _ in 0..100 {
                bank.nearest_into(&queries, cells, threads, &mut scratch, &mut out);
            }
            t.elapsed().as_secs_f64() * 1e3 / 100.0
        });
        black_box(&out);
        println!("{cells} cells x {rows} x {dim}-d rows, nearest, {threads} thread(s): {ms:.3} ms");
    }

    let (w, h, n) = (224usize, 224usize, 100usize);
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

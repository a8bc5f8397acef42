//! Per-plane loops of the training step's BatchNorm (statistics, normalisation, backward),
//! written for the auto-vectoriser and compiled once per ISA (AVX-512, AVX2, NEON, portable),
//! picked at run time.
//!
//! The training-step profile (`cargo bench -p host-trainer --bench resnet18 -- --ops`, and
//! `perf`) found these loops running one scalar value at a time: a float sum is a chain LLVM may
//! not reorder, and per-channel values read through captured vectors kept bounds checks inside
//! the element loop. Here the statistics' f64 sums run in [`LANES`] independent accumulators
//! (one chain per lane, combined in a fixed order at the end), so the vector width changes
//! nothing: each ISA's copy returns the same bits, and they differ from an in-order f64 sum only
//! in f64 rounding, far below the f32 the statistics are stored in. The element-wise loops
//! compute exactly the scalar formula, value by value (Rust never fuses a multiply and an add on
//! its own), so they equal the scalar code bit for bit. The backward pass's f32 gradient sums
//! stay in order within each run of 512 values (`norm.rs`): reordered, they round differently
//! and every seed-measured training figure would move. What runs in parallel is [`RUNS`] runs
//! side by side, each its own chain ([`grad_sums_runs`]).
//!
//! The one `unsafe` is the call into a `#[target_feature]` copy, after checking that this CPU
//! runs its ISA.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use crate::exec::kernels::isa::Isa;

/// Independent accumulators of a sum: four AVX-512 registers of f64.
const LANES: usize = 32;

/// The ISA the training step's plane loops run with (`Isa::best()`, read once).
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::best)
}

/// Compiles `$body` once per ISA (the same source each time) and defines `$name(isa, args..)`,
/// which runs `isa`'s copy; it panics when this CPU cannot run `isa`.
macro_rules! per_isa {
    (fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        #[allow(clippy::unused_unit)]
        pub(crate) fn $name(isa: Isa, $($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            fn avx512($($arg: $ty),*) -> $ret { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) -> $ret { body($($arg),*) }
            #[cfg(target_arch = "aarch64")]
            #[target_feature(enable = "neon")]
            fn neon($($arg: $ty),*) -> $ret { body($($arg),*) }
            assert!(isa.runs_here(), "{isa} does not run on this CPU");
            match isa {
                // SAFETY: this CPU runs `isa` (asserted above).
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Avx512Vnni => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "aarch64")]
                Isa::Neon | Isa::NeonDot => unsafe { neon($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}

/// The lanes of a sum, added in a fixed order, then the tail one by one.
#[inline(always)]
fn finish(acc: [f64; LANES], tail: f64) -> f64 {
    let mut w = acc;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            w[i] += w[i + n];
        }
    }
    w[0] + tail
}

per_isa! {
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64;
        }
    }
    finish(acc, tail)
}
}

per_isa! {
fn sum_sq_dev_f64(x: &[f32], m: f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| (v as f64 - m) * (v as f64 - m)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let t = v as f64 - m;
            *a += t * t;
        }
    }
    finish(acc, tail)
}
}

per_isa! {
fn normalise(x: &[f32], a: f32, d: f32, relu: bool, y: &mut [f32]) -> () {
    assert_eq!(x.len(), y.len(), "normalise: plane lengths differ");
    if relu {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = (v * a + d).max(0.0);
        }
    } else {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v * a + d;
        }
    }
}
}

/// The gradient reaching the normalisation: `d`, or 0 where the fused ReLU's output `out` is
/// not positive (PyTorch's rule).
#[inline(always)]
pub(crate) fn through_relu(relu: bool, d: f32, out: f32) -> f32 {
    if relu && out <= 0.0 { 0.0 } else { d }
}

/// Per-channel constants of BatchNorm's input gradient: `dx = a * (g - mb - xh * mg)` with
/// `xh = (x - mean) * inv_std`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GradPlane {
    pub mean: f32,
    pub inv_std: f32,
    pub a: f32,
    pub mb: f32,
    pub mg: f32,
    pub relu: bool,
}

per_isa! {
fn grad_input(x: &[f32], dy: &[f32], y: &[f32], k: GradPlane, dx: &mut [f32]) -> () {
    assert!(
        x.len() == dy.len() && x.len() == y.len() && x.len() == dx.len(),
        "grad_input: plane lengths differ"
    );
    let GradPlane { mean, inv_std, a, mb, mg, relu } = k;
    for (((o, &v), &d), &out) in dx.iter_mut().zip(x).zip(dy).zip(y) {
        let xh = (v - mean) * inv_std;
        *o = a * (through_relu(relu, d, out) - mb - xh * mg);
    }
}
}

/// Runs summed side by side by [`grad_sums_runs`].
pub(crate) const RUNS: usize = 8;

/// BatchNorm's backward sums of one run, in order, in f32: `(sum g, sum g * xh)` with `g` the
/// gradient through the fused ReLU and `xh = (x - mean) * inv_std`.
#[inline(always)]
pub(crate) fn grad_sums(
    x: &[f32],
    dy: &[f32],
    y: &[f32],
    mean: f32,
    inv_std: f32,
    relu: bool,
) -> (f32, f32) {
    let (mut pb, mut pg) = (0f32, 0f32);
    for ((&d, &o), &v) in dy.iter().zip(y).zip(x) {
        let d = through_relu(relu, d, o);
        pb += d;
        pg += d * ((v - mean) * inv_std);
    }
    (pb, pg)
}

per_isa! {
fn grad_sums_runs(
    x: [&[f32]; RUNS],
    dy: [&[f32]; RUNS],
    y: [&[f32]; RUNS],
    mean: f32,
    inv_std: f32,
    relu: bool
) -> ([f32; RUNS], [f32; RUNS]) {
    // [`grad_sums`] of RUNS runs of one length at once: each run is still one chain, summed in
    // its own order (the same bits), but the chains no longer wait on each other.
    let n = x[0].len();
    for j in 0..RUNS {
        assert!(
            x[j].len() == n && dy[j].len() == n && y[j].len() == n,
            "grad_sums_runs: run lengths differ"
        );
    }
    let (mut pb, mut pg) = ([0f32; RUNS], [0f32; RUNS]);
    for t in 0..n {
        for j in 0..RUNS {
            let d = through_relu(relu, dy[j][t], y[j][t]);
            pb[j] += d;
            pg[j] += d * ((x[j][t] - mean) * inv_std);
        }
    }
    (pb, pg)
}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    /// The same lane structure written out plainly: what every ISA's copy must return.
    fn lanes_ref(len: usize, f: impl Fn(usize) -> f64) -> f64 {
        let n = len - len % LANES;
        let mut acc = [0f64; LANES];
        for i in 0..n {
            acc[i % LANES] += f(i);
        }
        let tail: f64 = (n..len).map(&f).sum();
        finish(acc, tail)
    }

    /// Every ISA this CPU runs returns the lane reference's bits; the sums are within 1e-12 of
    /// the plain sum.
    #[test]
    fn sums_match_their_lane_reference_on_every_isa() {
        for isa in Isa::supported() {
            for n in [0, 1, 31, 32, 33, 100, 4096, 4099, 1 << 16] {
                let x = data(n, n as u32);
                let s = sum_f64(isa, &x);
                assert_eq!(s, lanes_ref(n, |i| x[i] as f64), "{isa} n {n}");
                let exact: f64 = x.iter().map(|&v| v as f64).sum();
                assert!((s - exact).abs() <= 1e-12 * (1.0 + exact.abs()), "n {n}");
                let m = 0.1;
                let q = sum_sq_dev_f64(isa, &x, m);
                let want = lanes_ref(n, |i| (x[i] as f64 - m) * (x[i] as f64 - m));
                assert_eq!(q, want, "{isa} n {n}");
            }
        }
    }

    /// Side by side, each run's sums are [`grad_sums`]'s bits, on every ISA.
    #[test]
    fn side_by_side_runs_equal_one_run_at_a_time() {
        for isa in Isa::supported() {
            for n in [1, 16, 333, 512] {
                let d: Vec<[Vec<f32>; 3]> = (0..RUNS as u32)
                    .map(|j| [data(n, 3 * j), data(n, 3 * j + 1), data(n, 3 * j + 2)])
                    .collect();
                for relu in [false, true] {
                    let (pb, pg) = grad_sums_runs(
                        isa,
                        std::array::from_fn(|j| &d[j][0][..]),
                        std::array::from_fn(|j| &d[j][1][..]),
                        std::array::from_fn(|j| &d[j][2][..]),
                        0.05,
                        1.7,
                        relu,
                    );
                    for j in 0..RUNS {
                        let (b, g) = grad_sums(&d[j][0], &d[j][1], &d[j][2], 0.05, 1.7, relu);
                        assert_eq!(pb[j].to_bits(), b.to_bits(), "{isa} n {n} run {j}");
                        assert_eq!(pg[j].to_bits(), g.to_bits(), "{isa} n {n} run {j}");
                    }
                }
            }
        }
    }

    /// The element loops compute the scalar formula value by value, on every ISA.
    #[test]
    fn element_loops_equal_the_scalar_formula_bit_for_bit() {
        for isa in Isa::supported() {
            for n in [1, 7, 16, 33, 1000] {
                let (x, dy, y) = (data(n, 1), data(n, 2), data(n, 3));
                for relu in [false, true] {
                    let (a, d) = (1.3f32, -0.2f32);
                    let mut out = vec![0f32; n];
                    normalise(isa, &x, a, d, relu, &mut out);
                    for i in 0..n {
                        let v = x[i] * a + d;
                        let want = if relu { v.max(0.0) } else { v };
                        assert_eq!(out[i].to_bits(), want.to_bits(), "{isa} n {n} relu {relu}");
                    }
                    let k = GradPlane {
                        mean: 0.05,
                        inv_std: 1.7,
                        a: 0.9,
                        mb: 0.01,
                        mg: -0.03,
                        relu,
                    };
                    let mut dx = vec![0f32; n];
                    grad_input(isa, &x, &dy, &y, k, &mut dx);
                    let g = |i: usize| if relu && y[i] <= 0.0 { 0.0 } else { dy[i] };
                    for i in 0..n {
                        let xh = (x[i] - k.mean) * k.inv_std;
                        let want = k.a * (g(i) - k.mb - xh * k.mg);
                        assert_eq!(dx[i].to_bits(), want.to_bits(), "{isa} n {n} i {i}");
                    }
                }
            }
        }
    }
}

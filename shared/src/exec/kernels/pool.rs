//! Pooling in f32, NHWC with channel stride `c`: max pooling (ResNet's 3x3 stride-2 stem pool)
//! and global average pooling (the end of every encoder).
//!
//! Definitions (the scalar references [`max_pool_ref`], [`global_avg_pool_ref`]):
//! - max pool: per output pixel and channel, `m = -inf`, then for every tap in row-major order
//!   whose input lies inside the image `if v > m || v.is_nan() { m = v }`. Padding never wins (as
//!   PyTorch's `-inf` padding), among equal values the first stays, and the first NaN propagates
//!   (as PyTorch). `pad < k`, so no window is all padding.
//! - global average pool: per channel, `s = 0.0f32`, `s += x` over the pixels in row order, then
//!   `s * (1.0 / (h * w) as f32)`. f32 suffices: for 7x7 the sum has 49 terms (relative rounding
//!   error <= 49 * 2^-24 ≈ 3e-6 in the worst case, ~1e-7 typical), and even at 56x56 the test
//!   `average_in_f32_is_close_to_f64` measures < 1e-5 relative to an f64 sum; features are
//!   L2-normalised right after, and the trainer (PyTorch) pools in f32 too.
//!
//! Both are vectorised over channels with `lanes::F32Lanes` and perform the definition's operations in
//! its order per lane, so every ISA is bit-identical to the reference (tests compare bits, NaN
//! payloads included). Max pooling splits output rows over threads; global pooling reads
//! `h * w * c` values once (25k for ResNet-18's 7x7x512) and runs on one.
//!
//! Speed (2-core Zen 4, one thread, CPU time): 3x3 s2 p1 max pool of 112x112x64 124 µs with
//! AVX-512, 160 µs AVX2, 441 µs portable; global average pool of 7x7x512 1.6 µs (AVX-512).
//! `cargo bench -p firm-shared --bench ops -- pool`; the machine was shared with other builds (load average 6-9 on 2 cores), so wall times
//! varied up to 2x between runs; the CPU time of the calling thread (`testing::time_per_call`) is
//! the steadier figure, best of two runs given.

use std::ops::Range;

use super::Isa;
use super::im2col::conv_out;
use super::lanes::{self, F32Lanes};
use super::parallel::{SharedOut, for_each_tile};

/// Below this many compared values a max pool runs on one thread.
const MIN_PARALLEL_TAPS: usize = 1 << 16;

/// Max pooling; see the module header for the definition. `x.len() >= h * w * c`, `out.len() >=
/// oh * ow * c` with `oh = conv_out(h, k, stride, pad)`; writes `out[..oh * ow * c]`.
///
/// # Panics
/// On short slices, `k == 0`, `stride == 0`, `pad >= k`, or an `isa` this CPU cannot run.
pub fn max_pool_f32(
    isa: Isa,
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out: &mut [f32],
    threads: usize,
) {
    assert!(
        k >= 1 && stride >= 1 && pad < k,
        "k = {k}, stride = {stride}, pad = {pad}"
    );
    assert!(isa.runs_here(), "{isa} does not run on this CPU");
    let (oh, ow) = (conv_out(h, k, stride, pad), conv_out(w, k, stride, pad));
    let m = oh * ow;
    assert!(
        x.len() >= h * w * c,
        "input has {} < {h}x{w}x{c} values",
        x.len()
    );
    assert!(
        out.len() >= m * c,
        "output has {} < {oh}x{ow}x{c} values",
        out.len()
    );
    if m == 0 || c == 0 {
        return;
    }
    let p = Window {
        h,
        w,
        c,
        k,
        stride,
        pad,
        ow,
    };
    let threads = if m * c * k * k < MIN_PARALLEL_TAPS {
        1
    } else {
        threads
    };
    let shared = SharedOut::new(&mut out[..m * c]);
    let tile = |rows: Range<usize>, cols: Range<usize>| {
        // SAFETY: `isa` runs here and the slices hold every index (asserted above); tiles write
        // disjoint parts of `shared`.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Avx512Vnni => max_avx512(&p, x, &shared, rows, cols),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => max_avx2(&p, x, &shared, rows, cols),
                #[cfg(target_arch = "aarch64")]
                Isa::Neon | Isa::NeonDot => max_neon(&p, x, &shared, rows, cols),
                _ => max_tile::<lanes::Portable>(&p, x, &shared, rows, cols),
            }
        }
    };
    for_each_tile(m, c, ow, 64, threads, &tile);
}

/// Shape of one max pool.
#[derive(Debug, Clone, Copy)]
struct Window {
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ow: usize,
}

impl Window {
    /// Taps `t` of output coordinate `o` with `0 <= o * stride + t - pad < size`.
    #[inline(always)]
    fn taps(&self, o: usize, size: usize) -> Range<usize> {
        let start = o * self.stride;
        let lo = self.pad.saturating_sub(start);
        let hi = (size + self.pad).saturating_sub(start).min(self.k);
        lo..hi.max(lo)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn max_avx512(
    p: &Window,
    x: &[f32],
    out: &SharedOut<'_, f32>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    // SAFETY: AVX-512 is enabled here; the rest is `max_tile`'s contract.
    unsafe { max_tile::<lanes::Avx512>(p, x, out, rows, cols) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_avx2(
    p: &Window,
    x: &[f32],
    out: &SharedOut<'_, f32>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    // SAFETY: AVX2 is enabled here; the rest is `max_tile`'s contract.
    unsafe { max_tile::<lanes::Avx2>(p, x, out, rows, cols) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn max_neon(
    p: &Window,
    x: &[f32],
    out: &SharedOut<'_, f32>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    // SAFETY: NEON is enabled here; the rest is `max_tile`'s contract.
    unsafe { max_tile::<lanes::Neon>(p, x, out, rows, cols) }
}

/// Output pixels `rows`, channels `cols`.
///
/// # Safety
/// `L`'s features are available; `x` and `out` hold every index of the geometry; no other thread
/// accesses this tile's elements of `out`.
#[inline(always)]
unsafe fn max_tile<L: F32Lanes>(
    p: &Window,
    x: &[f32],
    out: &SharedOut<'_, f32>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    let n = L::N;
    let c = p.c;
    let xp = x.as_ptr();
    // SAFETY: input pixels of taps in `taps()` are inside the image, channels < c; output
    // elements are this tile's.
    unsafe {
        let op = out.ptr();
        for i in rows {
            let (oy, ox) = (i / p.ow, i % p.ow);
            let (ty, tx) = (p.taps(oy, p.h), p.taps(ox, p.w));
            let (y0, x0) = (oy * p.stride, ox * p.stride);
            let mut j = cols.start;
            while j + 4 * n <= cols.end {
                let ninf = L::splat(f32::NEG_INFINITY);
                let (mut m0, mut m1, mut m2, mut m3) = (ninf, ninf, ninf, ninf);
                for kh in ty.clone() {
                    let row = (y0 + kh - p.pad) * p.w;
                    for kw in tx.clone() {
                        let v = xp.add((row + x0 + kw - p.pad) * c + j);
                        m0 = L::max_pool_step(m0, L::load(v));
                        m1 = L::max_pool_step(m1, L::load(v.add(n)));
                        m2 = L::max_pool_step(m2, L::load(v.add(2 * n)));
                        m3 = L::max_pool_step(m3, L::load(v.add(3 * n)));
                    }
                }
                let o = op.add(i * c + j);
                L::store(o, m0);
                L::store(o.add(n), m1);
                L::store(o.add(2 * n), m2);
                L::store(o.add(3 * n), m3);
                j += 4 * n;
            }
            while j + n <= cols.end {
                L::store(op.add(i * c + j), window_max::<L>(p, x, &ty, &tx, i, j, n));
                j += n;
            }
            if j < cols.end {
                let left = cols.end - j;
                L::store_part(
                    op.add(i * c + j),
                    left,
                    window_max::<L>(p, x, &ty, &tx, i, j, left),
                );
            }
        }
    }
}

/// The maximum over the valid taps `ty x tx` of output pixel `i`, channels `j..j + lanes`
/// (`lanes <= N`; fewer read only those lanes).
///
/// # Safety
/// As [`max_tile`]; `ty`, `tx` are `Window::taps` of pixel `i`.
#[inline(always)]
unsafe fn window_max<L: F32Lanes>(
    p: &Window,
    x: &[f32],
    ty: &Range<usize>,
    tx: &Range<usize>,
    i: usize,
    j: usize,
    lanes: usize,
) -> L::V {
    let (y0, x0) = ((i / p.ow) * p.stride, (i % p.ow) * p.stride);
    let xp = x.as_ptr();
    // SAFETY: the taps' input pixels are inside the image, channels j..j + lanes <= c.
    unsafe {
        let mut m = L::splat(f32::NEG_INFINITY);
        for kh in ty.clone() {
            let row = (y0 + kh - p.pad) * p.w;
            for kw in tx.clone() {
                let v = xp.add((row + x0 + kw - p.pad) * p.c + j);
                let v = if lanes == L::N {
                    L::load(v)
                } else {
                    L::load_part(v, lanes)
                };
                m = L::max_pool_step(m, v);
            }
        }
        m
    }
}

/// The scalar definition of [`max_pool_f32`].
pub fn max_pool_ref(
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out: &mut [f32],
) {
    let (oh, ow) = (conv_out(h, k, stride, pad), conv_out(w, k, stride, pad));
    for oy in 0..oh {
        for ox in 0..ow {
            for j in 0..c {
                let mut m = f32::NEG_INFINITY;
                for kh in 0..k {
                    let iy = (oy * stride + kh) as isize - pad as isize;
                    for kw in 0..k {
                        let ix = (ox * stride + kw) as isize - pad as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue; // padding: -inf never wins
                        }
                        let v = x[(iy as usize * w + ix as usize) * c + j];
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                }
                out[(oy * ow + ox) * c + j] = m;
            }
        }
    }
}

/// Global average pooling: `out[j]` = mean of channel `j` over the `h * w` pixels (definition in
/// the module header). `x.len() >= h * w * c`, `out.len() >= c`; writes `out[..c]`. An empty
/// image (`h * w == 0`) gives NaN (0 * inf), as `mean` of nothing.
///
/// # Panics
/// On short slices or an `isa` this CPU cannot run.
pub fn global_avg_pool_f32(isa: Isa, x: &[f32], h: usize, w: usize, c: usize, out: &mut [f32]) {
    assert!(isa.runs_here(), "{isa} does not run on this CPU");
    assert!(
        x.len() >= h * w * c,
        "input has {} < {h}x{w}x{c} values",
        x.len()
    );
    assert!(out.len() >= c, "output has {} < {c} values", out.len());
    let out = &mut out[..c];
    // SAFETY: `isa` runs here, `x` has h * w * c values and `out` c (asserted above).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni => gap_avx512(x, h * w, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => gap_avx2(x, h * w, out),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot => gap_neon(x, h * w, out),
            _ => gap::<lanes::Portable>(x, h * w, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn gap_avx512(x: &[f32], pixels: usize, out: &mut [f32]) {
    // SAFETY: AVX-512 is enabled here; the rest is `gap`'s contract.
    unsafe { gap::<lanes::Avx512>(x, pixels, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gap_avx2(x: &[f32], pixels: usize, out: &mut [f32]) {
    // SAFETY: AVX2 is enabled here; the rest is `gap`'s contract.
    unsafe { gap::<lanes::Avx2>(x, pixels, out) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn gap_neon(x: &[f32], pixels: usize, out: &mut [f32]) {
    // SAFETY: NEON is enabled here; the rest is `gap`'s contract.
    unsafe { gap::<lanes::Neon>(x, pixels, out) }
}

/// # Safety
/// `L`'s features are available; `x.len() >= pixels * out.len()`.
#[inline(always)]
unsafe fn gap<L: F32Lanes>(x: &[f32], pixels: usize, out: &mut [f32]) {
    let (n, c) = (L::N, out.len());
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: pixel `p` channel `j + l` is `x[p * c + j + l]` with `p < pixels`, `j + l < c`;
    // outputs `j + l < c`.
    unsafe {
        let inv = L::splat(1.0 / pixels as f32);
        let mut j = 0;
        while j + 4 * n <= c {
            let z = L::splat(0.0);
            let (mut s0, mut s1, mut s2, mut s3) = (z, z, z, z);
            for p in 0..pixels {
                let v = xp.add(p * c + j);
                s0 = L::add(s0, L::load(v));
                s1 = L::add(s1, L::load(v.add(n)));
                s2 = L::add(s2, L::load(v.add(2 * n)));
                s3 = L::add(s3, L::load(v.add(3 * n)));
            }
            let o = op.add(j);
            L::store(o, L::mul(s0, inv));
            L::store(o.add(n), L::mul(s1, inv));
            L::store(o.add(2 * n), L::mul(s2, inv));
            L::store(o.add(3 * n), L::mul(s3, inv));
            j += 4 * n;
        }
        while j < c {
            let lanes = n.min(c - j);
            let mut s = L::splat(0.0);
            for p in 0..pixels {
                let v = xp.add(p * c + j);
                s = L::add(
                    s,
                    if lanes == n {
                        L::load(v)
                    } else {
                        L::load_part(v, lanes)
                    },
                );
            }
            let y = L::mul(s, inv);
            if lanes == n {
                L::store(op.add(j), y);
            } else {
                L::store_part(op.add(j), lanes, y);
            }
            j += lanes;
        }
    }
}

/// The scalar definition of [`global_avg_pool_f32`].
pub fn global_avg_pool_ref(x: &[f32], h: usize, w: usize, c: usize, out: &mut [f32]) {
    let inv = 1.0 / (h * w) as f32;
    for j in 0..c {
        let mut s = 0.0f32;
        for p in 0..h * w {
            s += x[p * c + j];
        }
        out[j] = s * inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[derive(Debug, Clone)]
    pub(super) struct Case {
        h: usize,
        w: usize,
        c: usize,
        k: usize,
        stride: usize,
        pad: usize,
        threads: usize,
        /// Small integers (many ties, signed zeros) and a few NaNs instead of uniform values.
        ties: bool,
        seed: u64,
    }

    pub(super) fn edge_cases() -> Vec<Case> {
        let mut v = Vec::new();
        let mut seed = 0;
        for &(h, w) in &[(1, 1), (3, 5), (7, 7), (13, 11), (56, 56), (112, 112)] {
            for &c in &[1, 3, 5, 17, 33, 64, 96, 144] {
                for &(k, stride, pad) in &[
                    (3, 2, 1),
                    (3, 1, 1),
                    (2, 2, 0),
                    (3, 1, 0),
                    (5, 2, 2),
                    (7, 2, 3),
                ] {
                    if h * w * c > 56 * 56 * 17 && (k, stride, pad) != (3, 2, 1) {
                        continue; // large images once per channel count
                    }
                    seed += 1;
                    v.push(Case {
                        h,
                        w,
                        c,
                        k,
                        stride,
                        pad,
                        threads: 1 + seed as usize % 2,
                        ties: seed % 3 == 0,
                        seed,
                    });
                }
            }
        }
        v
    }

    pub(super) fn random_case() -> impl Strategy<Value = Case> {
        (
            1usize..24,
            1usize..24,
            1usize..80,
            1usize..6,
            1usize..4,
            0usize..3,
            1usize..3,
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(|(h, w, c, k, stride, pad, threads, ties, seed)| Case {
                h,
                w,
                c,
                k,
                stride,
                pad: pad.min(k - 1),
                threads,
                ties,
                seed,
            })
    }

    fn input(t: &Case) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(t.seed);
        (0..t.h * t.w * t.c)
            .map(|_| {
                if t.ties {
                    match rng.random_range(0..40) {
                        0 => f32::NAN,
                        1 => -0.0,
                        2 => f32::from_bits(0x7fc0_1234), // a NaN with a payload
                        r => (r % 4) as f32 - 2.0,
                    }
                } else {
                    rng.random_range(-3.0f32..3.0)
                }
            })
            .collect()
    }

    /// Same bits, or both NaN with the same bits (payloads are copied, never computed).
    fn same(g: f32, r: f32) -> bool {
        g.to_bits() == r.to_bits()
    }

    pub(super) fn check_max(isa: Isa, t: &Case) -> Result<(), String> {
        let (oh, ow) = (
            conv_out(t.h, t.k, t.stride, t.pad),
            conv_out(t.w, t.k, t.stride, t.pad),
        );
        let n = oh * ow * t.c;
        let x = input(t);
        let mut want = vec![0.0; n];
        max_pool_ref(&x, t.h, t.w, t.c, t.k, t.stride, t.pad, &mut want);
        let mut got = vec![7.5f32; n + 1];
        max_pool_f32(
            isa, &x, t.h, t.w, t.c, t.k, t.stride, t.pad, &mut got, t.threads,
        );
        if got[n] != 7.5 {
            return Err("wrote past the output".into());
        }
        for (e, (&g, &r)) in got.iter().zip(&want).enumerate() {
            if !same(g, r) {
                return Err(format!(
                    "out[{e}] (pixel {}, channel {}) = {g:?}, reference {r:?}",
                    e / t.c,
                    e % t.c
                ));
            }
        }
        Ok(())
    }

    pub(super) fn check_avg(isa: Isa, t: &Case) -> Result<(), String> {
        let x = input(t);
        let mut want = vec![0.0; t.c];
        global_avg_pool_ref(&x, t.h, t.w, t.c, &mut want);
        let mut got = vec![7.5f32; t.c + 1];
        global_avg_pool_f32(isa, &x, t.h, t.w, t.c, &mut got);
        if got[t.c] != 7.5 {
            return Err("wrote past the output".into());
        }
        for (j, (&g, &r)) in got.iter().zip(&want).enumerate() {
            // The sum of a NaN with anything is some NaN; only its payload may differ by ISA.
            if !(same(g, r) || (g.is_nan() && r.is_nan())) {
                return Err(format!("out[{j}] = {g:?}, reference {r:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn padding_never_wins() {
        // All inputs -5: every output is -5, also in windows that hang over the border.
        let x = vec![-5.0f32; 3 * 3 * 2];
        let mut out = vec![0.0; 2 * 2 * 2];
        for isa in Isa::supported() {
            max_pool_f32(isa, &x, 3, 3, 2, 3, 2, 1, &mut out, 1);
            assert!(out.iter().all(|&v| v == -5.0), "{isa}: {out:?}");
        }
    }

    #[test]
    fn average_in_f32_is_close_to_f64() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (h, w, c) = (56, 56, 64);
        // Post-ReLU activations: non-negative, the case where errors do not cancel.
        let x: Vec<f32> = (0..h * w * c)
            .map(|_| rng.random_range(0.0f32..6.0))
            .collect();
        let mut out = vec![0.0; c];
        global_avg_pool_f32(Isa::best(), &x, h, w, c, &mut out);
        for j in 0..c {
            let exact = (0..h * w).map(|p| x[p * c + j] as f64).sum::<f64>() / (h * w) as f64;
            let rel = ((out[j] as f64 - exact) / exact).abs();
            assert!(rel < 1e-5, "channel {j}: {} vs {exact} ({rel:e})", out[j]);
        }
    }
}

crate::kernel_tests! {
    family: max_pool_kernel,
    case: tests::Case,
    strategy: tests::random_case(),
    edge: tests::edge_cases(),
    check: tests::check_max,
}

crate::kernel_tests! {
    family: global_avg_pool_kernel,
    case: tests::Case,
    strategy: tests::random_case(),
    edge: tests::edge_cases(),
    check: tests::check_avg,
}

//! Depthwise convolution in f32 (groups = channels: the k x k convolutions of EfficientNet's
//! MBConv blocks), NHWC, with the fused [`Epilogue`].
//!
//! Layout: input `x[(y * w + x) * c + ch]` (channel stride = `c`), weights `wt[(kh * k + kw) * c +
//! ch]` (see [`reorder_depthwise_weights`] for PyTorch's `[c][1][kh][kw]`), output row `i` = output
//! pixel `(oy, ox)` row-major, column `j` = channel: `out[i * c + j]`.
//!
//! Definition ([`depthwise_ref`]): `sum = 0.0`, then for every tap `(kh, kw)` in row-major order
//! whose input pixel lies inside the image, `sum = sum + x * wt` (an f32 multiply, then an f32 add:
//! no FMA); padded taps are skipped (zero padding); `out = ep.apply(sum, i, j)`.
//!
//! Algorithm: vectorised over channels with `lanes::F32Lanes` (16 lanes AVX-512, 8 AVX2, 4 NEON and
//! portable), four registers of channels per step so that four independent add chains hide the
//! add latency; per output pixel the valid tap range is computed once, so the inner loop has no
//! bounds tests. Every lane performs the definition's operations in its order, so all ISAs are
//! bit-identical to the reference and the tests compare with `==`. Output pixels are split over
//! threads in whole image rows (then channel blocks of 64 when there are fewer rows than threads).
//!
//! Speed (2-core Zen 4, one thread, CPU time, 64-byte-aligned buffers): the 16 depthwise layers
//! of EfficientNet-B0 (34.5 M MAC, cold caches between layers) 3.6 ms with AVX-512 (9.5 GMAC/s),
//! 4.3 ms AVX2, 5.3 ms portable; one layer alone 12-20 GMAC/s AVX-512 (56x56x144 k3 s1:
//! 0.29 ms). About half the load-port bound (two 64-byte loads per 16 multiply-adds); reusing the
//! weights across two output pixels would save a quarter of the loads (not done). Keep the
//! activations 64-byte aligned: misaligned 64-byte loads cost ~15%. Measured with `cargo bench -p firm-shared --bench ops -- depthwise`; the machine was shared with other builds (load average 6-9 on 2 cores), so wall times
//! varied up to 2x between runs; the CPU time of the calling thread (`testing::time_per_call`) is
//! the steadier figure, best of two runs given.

use std::ops::Range;

use super::im2col::conv_out;
use super::lanes::{self, F32Lanes};
use super::parallel::{SharedOut, for_each_tile};
use super::{Epilogue, Isa};

/// Below this many multiply-adds a call runs on one thread (a `rayon::join` costs a few µs).
const MIN_PARALLEL_MACS: usize = 1 << 16;

/// Depthwise convolution; see the module header for layouts and the exact definition.
/// `x.len() >= h * w * c`, `wt.len() >= k * k * c`, `out.len() >= oh * ow * c` with
/// `oh = conv_out(h, k, stride, pad)`; writes `out[..oh * ow * c]`.
///
/// # Panics
/// On short slices, `k == 0`, `stride == 0`, an epilogue too short for `c` channels (see
/// [`Epilogue::check`]), or an `isa` this CPU cannot run.
pub fn depthwise_f32(
    isa: Isa,
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    wt: &[f32],
    ep: &Epilogue<'_>,
    out: &mut [f32],
    threads: usize,
) {
    assert!(k >= 1 && stride >= 1, "k = {k}, stride = {stride}");
    assert!(isa.runs_here(), "{isa} does not run on this CPU");
    let (oh, ow) = (conv_out(h, k, stride, pad), conv_out(w, k, stride, pad));
    let m = oh * ow;
    assert!(
        x.len() >= h * w * c,
        "input has {} < {h}x{w}x{c} values",
        x.len()
    );
    assert!(
        wt.len() >= k * k * c,
        "weights have {} < {k}x{k}x{c} values",
        wt.len()
    );
    assert!(
        out.len() >= m * c,
        "output has {} < {oh}x{ow}x{c} values",
        out.len()
    );
    ep.check(m, c);
    if m == 0 || c == 0 {
        return;
    }
    let p = Geometry {
        h,
        w,
        c,
        k,
        stride,
        pad,
        ow,
    };
    let threads = if m * c * k * k < MIN_PARALLEL_MACS {
        1
    } else {
        threads
    };
    let shared = SharedOut::new(&mut out[..m * c]);
    let tile = |rows: Range<usize>, cols: Range<usize>| {
        // SAFETY: `isa` runs here (asserted above); the slices hold every index the tile reads
        // (asserted above, `ep.check`); tiles write disjoint (row, column) ranges of `shared`.
        unsafe { dispatch(isa, &p, x, wt, ep, &shared, rows, cols) }
    };
    for_each_tile(m, c, ow, 64, threads, &tile);
}

/// Shape of one call.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ow: usize,
}

impl Geometry {
    /// Taps of output coordinate `o` along an axis of `size` inputs whose input lies inside:
    /// `lo..hi` with `0 <= o * stride + t - pad < size` for every `t` in it.
    #[inline(always)]
    fn taps(&self, o: usize, size: usize) -> Range<usize> {
        let start = o * self.stride; // input coordinate of tap 0, plus `pad`
        let lo = self.pad.saturating_sub(start);
        let hi = (size + self.pad).saturating_sub(start).min(self.k);
        lo..hi.max(lo)
    }
}

/// # Safety
/// As [`tile`], for the instantiation `isa` selects.
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(
    isa: Isa,
    p: &Geometry,
    x: &[f32],
    wt: &[f32],
    ep: &Epilogue<'_>,
    out: &SharedOut<'_, f32>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    // SAFETY: the caller checked that `isa` runs here; the rest is `tile`'s contract.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni => tile_avx512(p, x, wt, ep, out, rows, cols),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => tile_avx2(p, x, wt, ep, out, rows, cols),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot => tile_neon(p, x, wt, ep, out, rows, cols),
            _ => tile::<lanes::Portable>(p, x, wt, ep, out, rows, cols),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn tile_avx512(
    p: &Geometry,
    x: &[f32],
    wt: &[f32],
    ep: &Epilogue<'_>,
    out: &SharedOut<'_, f32>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    // SAFETY: this function's features are AVX-512's; the rest is `tile`'s contract.
    unsafe { tile::<lanes::Avx512>(p, x, wt, ep, out, rows, cols) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    p: &Geometry,
    x: &[f32],
    wt: &[f32],
    ep: &Epilogue<'_>,
    out: &SharedOut<'_, f32>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    // SAFETY: this function's features are AVX2's; the rest is `tile`'s contract.
    unsafe { tile::<lanes::Avx2>(p, x, wt, ep, out, rows, cols) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn tile_neon(
    p: &Geometry,
    x: &[f32],
    wt: &[f32],
    ep: &Epilogue<'_>,
    out: &SharedOut<'_, f32>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    // SAFETY: this function's features are NEON's; the rest is `tile`'s contract.
    unsafe { tile::<lanes::Neon>(p, x, wt, ep, out, rows, cols) }
}

/// Output pixels `rows`, channels `cols`.
///
/// # Safety
/// `L`'s features are available; `x`, `wt`, `ep` and `out` hold every index of the call's
/// geometry (checked by [`depthwise_f32`]); no other thread accesses `out`'s elements of this tile.
#[inline(always)]
unsafe fn tile<L: F32Lanes>(
    p: &Geometry,
    x: &[f32],
    wt: &[f32],
    ep: &Epilogue<'_>,
    out: &SharedOut<'_, f32>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    let n = L::N;
    let c = p.c;
    let (xp, wp) = (x.as_ptr(), wt.as_ptr());
    // SAFETY: every pointer below stays inside its slice: input pixel (iy, ix) is inside the
    // image for taps in `taps()`, channel offsets are < c; output element (i, j) is in this tile.
    unsafe {
        let op = out.ptr();
        for i in rows {
            let (oy, ox) = (i / p.ow, i % p.ow);
            let (ty, tx) = (p.taps(oy, p.h), p.taps(ox, p.w));
            // Input pixel of tap (0, 0), shifted by `pad` on both axes.
            let (y0, x0) = (oy * p.stride, ox * p.stride);
            let mut j = cols.start;
            // Four registers of channels: four independent add chains.
            while j + 4 * n <= cols.end {
                let (mut a0, mut a1, mut a2, mut a3) =
                    (L::splat(0.0), L::splat(0.0), L::splat(0.0), L::splat(0.0));
                for kh in ty.clone() {
                    let row = (y0 + kh - p.pad) * p.w;
                    for kw in tx.clone() {
                        let xv = xp.add((row + x0 + kw - p.pad) * c + j);
                        let wv = wp.add((kh * p.k + kw) * c + j);
                        a0 = L::add(a0, L::mul(L::load(xv), L::load(wv)));
                        a1 = L::add(a1, L::mul(L::load(xv.add(n)), L::load(wv.add(n))));
                        a2 = L::add(a2, L::mul(L::load(xv.add(2 * n)), L::load(wv.add(2 * n))));
                        a3 = L::add(a3, L::mul(L::load(xv.add(3 * n)), L::load(wv.add(3 * n))));
                    }
                }
                let o = op.add(i * c + j);
                L::store(o, lanes::epilogue::<L>(ep, a0, i, j, n));
                L::store(o.add(n), lanes::epilogue::<L>(ep, a1, i, j + n, n));
                L::store(o.add(2 * n), lanes::epilogue::<L>(ep, a2, i, j + 2 * n, n));
                L::store(o.add(3 * n), lanes::epilogue::<L>(ep, a3, i, j + 3 * n, n));
                j += 4 * n;
            }
            while j + n <= cols.end {
                let y =
                    lanes::epilogue::<L>(ep, taps_sum::<L>(p, x, wt, &ty, &tx, i, j, n), i, j, n);
                L::store(op.add(i * c + j), y);
                j += n;
            }
            if j < cols.end {
                let left = cols.end - j;
                let y = lanes::epilogue::<L>(
                    ep,
                    taps_sum::<L>(p, x, wt, &ty, &tx, i, j, left),
                    i,
                    j,
                    left,
                );
                L::store_part(op.add(i * c + j), left, y);
            }
        }
    }
}

/// The sum over the valid taps `ty x tx` of output pixel `i` for channels `j..j + lanes`
/// (`lanes <= N`; fewer read only those lanes).
///
/// # Safety
/// As [`tile`]; `ty`, `tx` are `Geometry::taps` of pixel `i`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn taps_sum<L: F32Lanes>(
    p: &Geometry,
    x: &[f32],
    wt: &[f32],
    ty: &Range<usize>,
    tx: &Range<usize>,
    i: usize,
    j: usize,
    lanes: usize,
) -> L::V {
    let (y0, x0) = ((i / p.ow) * p.stride, (i % p.ow) * p.stride);
    let (xp, wp) = (x.as_ptr(), wt.as_ptr());
    // SAFETY: the taps' input pixels are inside the image, channels j..j + lanes <= c.
    unsafe {
        let mut acc = L::splat(0.0);
        for kh in ty.clone() {
            let row = (y0 + kh - p.pad) * p.w;
            for kw in tx.clone() {
                let xv = xp.add((row + x0 + kw - p.pad) * p.c + j);
                let wv = wp.add((kh * p.k + kw) * p.c + j);
                let prod = if lanes == L::N {
                    L::mul(L::load(xv), L::load(wv))
                } else {
                    L::mul(L::load_part(xv, lanes), L::load_part(wv, lanes))
                };
                acc = L::add(acc, prod);
            }
        }
        acc
    }
}

/// The scalar definition (module header), for tests and as documentation.
pub fn depthwise_ref(
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    wt: &[f32],
    ep: &Epilogue<'_>,
    out: &mut [f32],
) {
    let (oh, ow) = (conv_out(h, k, stride, pad), conv_out(w, k, stride, pad));
    for oy in 0..oh {
        for ox in 0..ow {
            let i = oy * ow + ox;
            for j in 0..c {
                let mut sum = 0.0f32;
                for kh in 0..k {
                    let iy = (oy * stride + kh) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kw in 0..k {
                        let ix = (ox * stride + kw) as isize - pad as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        sum +=
                            x[(iy as usize * w + ix as usize) * c + j] * wt[(kh * k + kw) * c + j];
                    }
                }
                out[i * c + j] = ep.apply(sum, i, j);
            }
        }
    }
}

/// PyTorch's depthwise weight `[c][1][kh][kw]` (contiguous) to this kernel's `[kh][kw][c]`.
pub fn reorder_depthwise_weights<T: Copy>(w: &[T], c: usize, k: usize) -> Vec<T> {
    assert_eq!(
        w.len(),
        c * k * k,
        "depthwise weight of {} values for c = {c}, k = {k}",
        w.len()
    );
    (0..k * k)
        .flat_map(|t| (0..c).map(move |ch| w[ch * k * k + t]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::{Clamp, Residual};
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
        /// 0: bias only; 1: scale + bias; 2: + residual before the clamp; 3: + residual after.
        epilogue: u8,
        clamp: Clamp,
        threads: usize,
        seed: u64,
    }

    fn case(h: usize, w: usize, c: usize, k: usize, stride: usize, pad: usize) -> Case {
        Case {
            h,
            w,
            c,
            k,
            stride,
            pad,
            epilogue: 1,
            clamp: Clamp::RELU6,
            threads: 2,
            seed: (h * 31 + w * 7 + c) as u64,
        }
    }

    pub(super) fn edge_cases() -> Vec<Case> {
        let mut v = Vec::new();
        for &(h, w) in &[(1, 1), (3, 5), (7, 7), (13, 11), (56, 56)] {
            for &c in &[1, 3, 5, 17, 33, 96, 144] {
                for &(k, stride) in &[(3, 1), (3, 2), (5, 1), (5, 2)] {
                    if h * w * c > 56 * 56 * 17 && (k, stride) != (3, 2) {
                        continue; // the big image once per channel count keeps the test short
                    }
                    v.push(case(h, w, c, k, stride, k / 2));
                }
            }
        }
        // Other paddings and kernel sizes, every epilogue, one thread and two.
        for (n, &(k, stride, pad)) in [
            (1, 1, 0),
            (3, 1, 0),
            (3, 2, 0),
            (5, 2, 1),
            (7, 2, 3),
            (2, 2, 0),
            (3, 3, 2),
        ]
        .iter()
        .enumerate()
        {
            for e in 0..4u8 {
                let mut c = case(9 + n, 6 + 2 * n, 33 + n, k, stride, pad);
                c.epilogue = e;
                c.clamp = [Clamp::NONE, Clamp::RELU, Clamp::RELU6][(e as usize + n) % 3];
                c.threads = 1 + (e as usize & 1);
                v.push(c);
            }
        }
        v.push(case(112, 112, 32, 3, 1, 1)); // EfficientNet-B0's first depthwise layer
        v.push(case(2, 2, 7, 5, 1, 2)); // the kernel larger than the image
        v
    }

    pub(super) fn random_case() -> impl Strategy<Value = Case> {
        (
            1usize..20,
            1usize..20,
            1usize..70,
            1usize..6,
            1usize..4,
            0usize..4,
            0u8..4,
            0usize..3,
            1usize..3,
            any::<u64>(),
        )
            .prop_filter("pad < k", |t| t.5 < t.3 || t.5 == 0)
            .prop_map(
                |(h, w, c, k, stride, pad, epilogue, clamp, threads, seed)| Case {
                    h,
                    w,
                    c,
                    k,
                    stride,
                    pad,
                    epilogue,
                    clamp: [Clamp::NONE, Clamp::RELU, Clamp::RELU6][clamp],
                    threads,
                    seed,
                },
            )
    }

    fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    pub(super) fn check(isa: Isa, t: &Case) -> Result<(), String> {
        let (oh, ow) = (
            conv_out(t.h, t.k, t.stride, t.pad),
            conv_out(t.w, t.k, t.stride, t.pad),
        );
        let m = oh * ow;
        let mut rng = ChaCha8Rng::seed_from_u64(t.seed);
        let x = rand_vec(&mut rng, t.h * t.w * t.c);
        let wt = rand_vec(&mut rng, t.k * t.k * t.c);
        let bias = rand_vec(&mut rng, t.c);
        let scale = rand_vec(&mut rng, t.c);
        let ld = t.c + 3;
        let res = rand_vec(&mut rng, m * ld);
        let ep = Epilogue {
            scale: (t.epilogue >= 1).then_some(&scale[..]),
            bias: &bias,
            residual: (t.epilogue >= 2).then_some(Residual {
                data: &res,
                ld,
                before_clamp: t.epilogue == 2,
            }),
            clamp: t.clamp,
        };
        let mut want = vec![0.0; m * t.c];
        depthwise_ref(&x, t.h, t.w, t.c, t.k, t.stride, t.pad, &wt, &ep, &mut want);
        // One spare element after the output: it must survive.
        let mut got = vec![f32::NAN; m * t.c + 1];
        got[m * t.c] = 12345.0;
        depthwise_f32(
            isa, &x, t.h, t.w, t.c, t.k, t.stride, t.pad, &wt, &ep, &mut got, t.threads,
        );
        if got[m * t.c] != 12345.0 {
            return Err("wrote past the output".into());
        }
        for (e, (&g, &r)) in got.iter().zip(&want).enumerate() {
            // `==`: bit-identical up to the sign of zero (vmaxps and f32::max may differ there).
            if g != r {
                return Err(format!(
                    "out[{e}] (pixel {}, channel {}) = {g}, reference {r}",
                    e / t.c,
                    e % t.c
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn weights_reorder_from_pytorch() {
        // c = 2, k = 2: [c][kh][kw] = [[a b][c d]], [[e f][g h]] -> [kh][kw][c].
        let w = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            reorder_depthwise_weights(&w, 2, 2),
            vec![1, 5, 2, 6, 3, 7, 4, 8]
        );
    }

    #[test]
    #[should_panic(expected = "does not run")]
    fn refuses_an_isa_this_cpu_lacks() {
        let missing = Isa::ALL
            .into_iter()
            .find(|i| !i.runs_here())
            .expect("some ISA is foreign");
        let ep = Epilogue::new(&[0.0], Clamp::NONE);
        depthwise_f32(
            missing,
            &[1.0],
            1,
            1,
            1,
            1,
            1,
            0,
            &[1.0],
            &ep,
            &mut [0.0],
            1,
        );
    }
}

crate::kernel_tests! {
    family: depthwise_kernel,
    case: tests::Case,
    strategy: tests::random_case(),
    edge: tests::edge_cases(),
    check: tests::check,
}

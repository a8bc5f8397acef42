//! im2col: the patches of a k x k convolution over an NHWC tensor as the rows of a matrix, so
//! that the convolution is one GEMM with the weights in [`reorder_oihw_to_ohwi`]'s order.
//!
//! Layout: input pixel `(y, x)` channel `ch` is `x[(y * w + x) * cs + ch]` (`cs >= c`); output
//! row `r = oy * ow + ox` (row-major over output pixels) starts at `out[r * ldk]` and holds the
//! `k * k * c` inputs of that patch in `(kh, kw, ch)` order, i.e. column `(kh * k + kw) * c + ch`
//! is input pixel `(oy * stride + kh - pad, ox * stride + kw - pad)`; taps outside the image hold
//! the pad value (0.0 for f32, the input's zero point for u8, so that they dequantize to 0), and
//! columns `k * k * c .. ldk` hold the pad value too (the GEMM's K padding; its weights are 0).
//!
//! Algorithm: plain copies, no arithmetic, so every ISA gives the same bytes and there are no
//! SIMD paths (copies compile to `memcpy` / vector moves). Per output row and kernel row `kh` the
//! taps `kw` that fall inside the image are one run of input pixels; when `cs == c` that run is
//! contiguous in memory and is copied as one slice of `run * c` values (the 7x7x3 stem copies
//! 21 values at a time instead of 3). Output rows are split over threads.
//!
//! Speed (2-core Zen 4, one thread, CPU time): the u8 ResNet stem 224x224x3 (cs 4) k7 s2 p3 into
//! 12544 rows of 160 bytes 0.76 ms (per-tap overhead, not bandwidth: 614k taps of 3 bytes); f32
//! 56x56x64 k3 s1 p1 (7.2 MB written) 0.26 ms. `cargo bench -p firm-shared --bench ops -- im2col`; the machine was shared with other builds (load average 6-9 on 2 cores), so wall times
//! varied up to 2x between runs; the CPU time of the calling thread (`testing::time_per_call`) is
//! the steadier figure, best of two runs given.

use std::ops::Range;

use super::parallel::{SharedOut, for_each_tile};

/// Output size of a convolution or pool along one axis: `floor((size + 2 * pad - k) / stride) +
/// 1`, and 0 when the padded input is shorter than the kernel.
///
/// # Panics
/// When `stride == 0`.
pub fn conv_out(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    assert!(stride >= 1, "stride 0");
    match (size + 2 * pad).checked_sub(k) {
        Some(d) => d / stride + 1,
        None => 0,
    }
}

/// Below this many output values im2col runs on one thread.
const MIN_PARALLEL_VALUES: usize = 1 << 16;

/// im2col of an f32 NHWC tensor (module header): writes `out[..oh * ow * ldk]` with `oh =
/// conv_out(h, k, stride, pad)`, padding 0.0.
///
/// # Panics
/// When `cs < c`, `ldk < k * k * c`, `x.len() < h * w * cs` (or `(h * w - 1) * cs + c`, the last
/// pixel's padding may be missing), `out.len() < oh * ow * ldk`, `k == 0` or `stride == 0`.
pub fn im2col_f32(
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    cs: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out: &mut [f32],
    ldk: usize,
    threads: usize,
) {
    im2col(
        x,
        Shape {
            h,
            w,
            c,
            cs,
            k,
            stride,
            pad,
            ldk,
        },
        0.0,
        out,
        threads,
    );
}

/// im2col of a u8 NHWC tensor (module header): as [`im2col_f32`] with `pad_value` (the input's
/// zero point) in padded taps and in columns `k * k * c .. ldk`.
pub fn im2col_u8(
    x: &[u8],
    h: usize,
    w: usize,
    c: usize,
    cs: usize,
    k: usize,
    stride: usize,
    pad: usize,
    pad_value: u8,
    out: &mut [u8],
    ldk: usize,
    threads: usize,
) {
    im2col(
        x,
        Shape {
            h,
            w,
            c,
            cs,
            k,
            stride,
            pad,
            ldk,
        },
        pad_value,
        out,
        threads,
    );
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    h: usize,
    w: usize,
    c: usize,
    cs: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ldk: usize,
}

fn im2col<T: Copy + Send + Sync>(x: &[T], s: Shape, fill: T, out: &mut [T], threads: usize) {
    assert!(
        s.k >= 1 && s.stride >= 1,
        "k = {}, stride = {}",
        s.k,
        s.stride
    );
    assert!(s.cs >= s.c, "channel stride {} < {} channels", s.cs, s.c);
    let kkc = s.k * s.k * s.c;
    assert!(s.ldk >= kkc, "row stride {} < k*k*c = {kkc}", s.ldk);
    let (oh, ow) = (
        conv_out(s.h, s.k, s.stride, s.pad),
        conv_out(s.w, s.k, s.stride, s.pad),
    );
    let rows = oh * ow;
    if s.h * s.w > 0 {
        let need = (s.h * s.w - 1) * s.cs + s.c;
        assert!(
            x.len() >= need,
            "input has {} < {need} values ({}x{}, c {}, cs {})",
            x.len(),
            s.h,
            s.w,
            s.c,
            s.cs
        );
    }
    assert!(
        out.len() >= rows * s.ldk,
        "output has {} < {rows} x {} values",
        out.len(),
        s.ldk
    );
    if rows == 0 {
        return;
    }
    let threads = if rows * s.ldk < MIN_PARALLEL_VALUES {
        1
    } else {
        threads
    };
    let shared = SharedOut::new(&mut out[..rows * s.ldk]);
    let tile = |r: Range<usize>, _: Range<usize>| {
        // SAFETY: tiles get disjoint row ranges, so these output slices do not overlap.
        let dst = unsafe { shared.slice(r.start * s.ldk, r.len() * s.ldk) };
        for (row, dst) in r.zip(dst.chunks_exact_mut(s.ldk)) {
            patch(x, &s, row / ow, row % ow, fill, dst);
        }
    };
    for_each_tile(rows, 1, ow, 1, threads, &tile);
}

/// One output row: the patch of output pixel `(oy, ox)` into `dst` (`ldk` values).
#[inline]
fn patch<T: Copy>(x: &[T], s: &Shape, oy: usize, ox: usize, fill: T, dst: &mut [T]) {
    let (k, c) = (s.k, s.c);
    let (y0, x0) = (oy * s.stride, ox * s.stride); // tap (0, 0) at (y0 - pad, x0 - pad)
    // Taps kw in kw_lo..kw_hi are inside the image horizontally (the same for every kh).
    let kw_lo = s.pad.saturating_sub(x0).min(k);
    let kw_hi = (s.w + s.pad).saturating_sub(x0).clamp(kw_lo, k);
    let (patch_part, tail) = dst.split_at_mut(k * k * c);
    if !tail.is_empty() {
        tail.fill(fill);
    }
    if c == 0 {
        return;
    }
    for (kh, drow) in patch_part.chunks_exact_mut(k * c).enumerate() {
        let iy = (y0 + kh).wrapping_sub(s.pad);
        if y0 + kh < s.pad || iy >= s.h {
            drow.fill(fill);
            continue;
        }
        // (Tests first: most patches have no padding, and a `fill` of nothing is still a call.)
        if kw_lo > 0 {
            drow[..kw_lo * c].fill(fill);
        }
        if kw_hi < k {
            drow[kw_hi * c..].fill(fill);
        }
        let run = kw_hi - kw_lo;
        if run == 0 {
            continue; // the window lies in the left or right padding (possible when pad >= k)
        }
        let first = (iy * s.w + x0 + kw_lo - s.pad) * s.cs; // input pixel of tap kw_lo
        let d = &mut drow[kw_lo * c..kw_hi * c];
        if s.cs == c {
            d.copy_from_slice(&x[first..first + run * c]);
        } else {
            // Strided pixels: one copy per tap. Few channels (the 3-channel stem in cs 4) get
            // fixed-size copies, which compile to moves instead of `memcpy` calls.
            match c {
                3 if s.cs == 4 => taps_3_of_4(x, first, d),
                1 => taps::<T, 1>(x, first, s.cs, d),
                2 => taps::<T, 2>(x, first, s.cs, d),
                3 => taps::<T, 3>(x, first, s.cs, d),
                4 => taps::<T, 4>(x, first, s.cs, d),
                _ => {
                    for (t, d) in d.chunks_exact_mut(c).enumerate() {
                        let p = first + t * s.cs;
                        d.copy_from_slice(&x[p..p + c]);
                    }
                }
            }
        }
    }
}

/// `dst` = the first `C` values of consecutive pixels `first, first + cs, ...` of `x`.
#[inline(always)]
fn taps<T: Copy, const C: usize>(x: &[T], first: usize, cs: usize, dst: &mut [T]) {
    for (t, d) in dst.chunks_exact_mut(C).enumerate() {
        let src: &[T; C] = x[first + t * cs..][..C].try_into().expect("C values");
        let d: &mut [T; C] = d.try_into().expect("C values");
        *d = *src;
    }
}

/// [`taps`] for 3 channels in stride 4 (the model input): each tap but the last copies all 4
/// values of its pixel, one more than it owns; the next tap overwrites that one. The last tap
/// copies 3, so nothing outside `dst` is written, and nothing outside `x` read.
#[inline(always)]
fn taps_3_of_4<T: Copy>(x: &[T], first: usize, dst: &mut [T]) {
    let run = dst.len() / 3;
    for t in 0..run - 1 {
        let src: &[T; 4] = x[first + 4 * t..][..4].try_into().expect("4 values");
        let d: &mut [T; 4] = (&mut dst[3 * t..3 * t + 4]).try_into().expect("4 values");
        *d = *src;
    }
    let last = run - 1;
    let src: &[T; 3] = x[first + 4 * last..][..3].try_into().expect("3 values");
    let d: &mut [T; 3] = (&mut dst[3 * last..]).try_into().expect("3 values");
    *d = *src;
}

/// PyTorch's convolution weight `[c_out][c_in][kh][kw]` (contiguous) to this executor's K order
/// `[c_out][kh][kw][c_in]`, the column order of [`im2col_f32`]'s rows.
///
/// # Panics
/// When `w.len() != c_out * c_in * k * k`.
pub fn reorder_oihw_to_ohwi<T: Copy>(w: &[T], c_out: usize, c_in: usize, k: usize) -> Vec<T> {
    assert_eq!(
        w.len(),
        c_out * c_in * k * k,
        "weight of {} values for [{c_out}][{c_in}][{k}][{k}]",
        w.len()
    );
    let mut out = Vec::with_capacity(w.len());
    for o in 0..c_out {
        for t in 0..k * k {
            out.extend((0..c_in).map(|i| w[(o * c_in + i) * k * k + t]));
        }
    }
    out
}

/// The scalar definition of [`im2col_f32`] / [`im2col_u8`], index by index.
pub fn im2col_ref<T: Copy>(
    x: &[T],
    h: usize,
    w: usize,
    c: usize,
    cs: usize,
    k: usize,
    stride: usize,
    pad: usize,
    fill: T,
    out: &mut [T],
    ldk: usize,
) {
    let (oh, ow) = (conv_out(h, k, stride, pad), conv_out(w, k, stride, pad));
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut out[(oy * ow + ox) * ldk..][..ldk];
            row.fill(fill);
            for kh in 0..k {
                for kw in 0..k {
                    let iy = (oy * stride + kh) as isize - pad as isize;
                    let ix = (ox * stride + kw) as isize - pad as isize;
                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                        continue;
                    }
                    for ch in 0..c {
                        row[(kh * k + kw) * c + ch] = x[(iy as usize * w + ix as usize) * cs + ch];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::Isa;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    pub(super) struct Case {
        h: usize,
        w: usize,
        c: usize,
        /// `cs - c`.
        extra: usize,
        k: usize,
        stride: usize,
        pad: usize,
        /// `ldk - k * k * c`.
        ktail: usize,
        threads: usize,
    }

    pub(super) fn edge_cases() -> Vec<Case> {
        let mut v = Vec::new();
        for &(h, w) in &[(1, 1), (3, 5), (7, 7), (13, 11), (56, 56)] {
            for &c in &[1, 3, 5, 17, 33, 96, 144] {
                for &(k, stride, pad) in &[
                    (1, 1, 0),
                    (3, 1, 1),
                    (3, 2, 1),
                    (3, 1, 0),
                    (5, 2, 2),
                    (7, 2, 3),
                    (2, 2, 0),
                    (3, 2, 2),
                ] {
                    if h * w * c > 56 * 56 * 5 && k != 3 {
                        continue;
                    }
                    // u8 tensors round cs up to a multiple of 4; also a K tail like the GEMM's.
                    let extra = if c % 4 == 0 {
                        (h + c) % 2 * 4
                    } else {
                        4 - c % 4
                    };
                    let ktail = (16 - (k * k * c) % 16) % 16;
                    v.push(Case {
                        h,
                        w,
                        c,
                        extra,
                        k,
                        stride,
                        pad,
                        ktail,
                        threads: 1 + (h + k) % 2,
                    });
                }
            }
        }
        // The ResNet stem: 224x224x3 (cs 4) k7 s2 p3, K 147 padded to 160.
        v.push(Case {
            h: 224,
            w: 224,
            c: 3,
            extra: 1,
            k: 7,
            stride: 2,
            pad: 3,
            ktail: 13,
            threads: 2,
        });
        v
    }

    pub(super) fn random_case() -> impl Strategy<Value = Case> {
        (
            1usize..20,
            1usize..20,
            1usize..40,
            0usize..5,
            1usize..8,
            1usize..4,
            0usize..4,
            0usize..9,
            1usize..3,
        )
            .prop_map(|(h, w, c, extra, k, stride, pad, ktail, threads)| Case {
                h,
                w,
                c,
                extra,
                k,
                stride,
                pad,
                ktail,
                threads,
            })
    }

    /// Distinct values per input index (u8: modulo 251, so padding (254) is recognisable).
    fn input(t: &Case, cs: usize) -> Vec<u32> {
        (0..t.h * t.w * cs)
            .map(|i| if i % cs < t.c { i as u32 } else { 0xdead })
            .collect()
    }

    pub(super) fn check(_isa: Isa, t: &Case) -> Result<(), String> {
        let cs = t.c + t.extra;
        let ldk = t.k * t.k * t.c + t.ktail;
        let rows = conv_out(t.h, t.k, t.stride, t.pad) * conv_out(t.w, t.k, t.stride, t.pad);
        let base = input(t, cs);
        let xf: Vec<f32> = base.iter().map(|&v| v as f32 + 0.5).collect();
        let xu: Vec<u8> = base.iter().map(|&v| (v % 251) as u8).collect();

        let mut want = vec![0f32; rows * ldk];
        im2col_ref(
            &xf, t.h, t.w, t.c, cs, t.k, t.stride, t.pad, 0.0, &mut want, ldk,
        );
        let mut got = vec![f32::NAN; rows * ldk + 1];
        im2col_f32(
            &xf, t.h, t.w, t.c, cs, t.k, t.stride, t.pad, &mut got, ldk, t.threads,
        );
        if got[..rows * ldk]
            .iter()
            .zip(&want)
            .any(|(g, r)| g.to_bits() != r.to_bits())
            || !got[rows * ldk].is_nan()
        {
            let e = got
                .iter()
                .zip(&want)
                .position(|(g, r)| g.to_bits() != r.to_bits())
                .unwrap_or(rows * ldk);
            return Err(format!(
                "f32: first difference at {e} (row {}, column {})",
                e / ldk,
                e % ldk
            ));
        }

        let mut want = vec![0u8; rows * ldk];
        im2col_ref(
            &xu, t.h, t.w, t.c, cs, t.k, t.stride, t.pad, 254, &mut want, ldk,
        );
        let mut got = vec![77u8; rows * ldk + 1];
        im2col_u8(
            &xu, t.h, t.w, t.c, cs, t.k, t.stride, t.pad, 254, &mut got, ldk, t.threads,
        );
        if got[..rows * ldk] != want[..] || got[rows * ldk] != 77 {
            let e = got
                .iter()
                .zip(&want)
                .position(|(g, r)| g != r)
                .unwrap_or(rows * ldk);
            return Err(format!(
                "u8: first difference at {e} (row {}, column {})",
                e / ldk,
                e % ldk
            ));
        }
        Ok(())
    }

    #[test]
    fn output_sizes() {
        assert_eq!(conv_out(224, 7, 2, 3), 112);
        assert_eq!(conv_out(112, 3, 2, 1), 56);
        assert_eq!(conv_out(56, 3, 1, 1), 56);
        assert_eq!(conv_out(7, 1, 1, 0), 7);
        assert_eq!(conv_out(1, 3, 2, 1), 1);
        assert_eq!(conv_out(2, 5, 1, 0), 0);
        assert_eq!(conv_out(13, 3, 2, 0), 6);
    }

    #[test]
    fn hand_made_patch() {
        // 2x2 image, 1 channel, values 1..4; k3 s1 p1 -> 4 rows of 9 (+1 tail).
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = vec![9.0f32; 4 * 10];
        im2col_f32(&x, 2, 2, 1, 1, 3, 1, 1, &mut out, 10, 1);
        #[rustfmt::skip]
        let want = [
            0., 0., 0., 0., 1., 2., 0., 3., 4., 0.,
            0., 0., 0., 1., 2., 0., 3., 4., 0., 0.,
            0., 1., 2., 0., 3., 4., 0., 0., 0., 0.,
            1., 2., 0., 3., 4., 0., 0., 0., 0., 0.,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn weights_reorder_from_pytorch() {
        // c_out 1, c_in 2, k 2: [i][kh][kw] -> [kh][kw][i].
        let w = [1, 2, 3, 4, 10, 20, 30, 40];
        assert_eq!(
            reorder_oihw_to_ohwi(&w, 1, 2, 2),
            vec![1, 10, 2, 20, 3, 30, 4, 40]
        );
        // Two output channels keep their blocks.
        let w: Vec<u32> = (0..2 * 3 * 9).collect();
        let r = reorder_oihw_to_ohwi(&w, 2, 3, 3);
        for o in 0..2 {
            for t in 0..9 {
                for i in 0..3 {
                    assert_eq!(r[(o * 9 + t) * 3 + i], w[(o * 3 + i) * 9 + t]);
                }
            }
        }
    }
}

crate::kernel_tests! {
    family: im2col_kernel,
    case: tests::Case,
    strategy: tests::random_case(),
    edge: tests::edge_cases(),
    check: tests::check,
}

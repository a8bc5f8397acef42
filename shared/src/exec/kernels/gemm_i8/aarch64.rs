//! The aarch64 int8 microkernels (layouts in the parent's header) and the NEON epilogue store
//! that [`super::super::gemm_f32`] shares:
//!
//! - `dot` (NeonDot), 8 x 8: 16 bytes of each A row (4 groups of 4 k) are loaded, flipped to
//!   signed (`a ^ 0x80 = a - 128`), and `sdot v.4s, w.16b, a.4b[q]` multiplies 4 channels x 4 k
//!   of the panel by group `q`; the accumulators start at `128 * col_sum[j]`, which restores the
//!   u8 x i8 sum exactly. The SDOT intrinsics are not stable in Rust 1.95, so `sdot` is inline
//!   assembly (pure, no memory) in functions compiled with the `dotprod` feature.
//! - `wide` (Neon without dotprod), 4 x 16: 8 bytes of each A row are widened to i16, and
//!   `smlal` / `smlal2` by element multiply 8 i16 weights of one k by one A lane into two i32x4.
//!
//! The epilogue (`store_q`) uses FMAXNM / FMINNM, which are what `f32::max` / `f32::min` compile
//! to here, so even NaN and signed zeros match [`super::Epilogue::apply`].
//!
//! Tested under qemu-user (`cargo test -p firm-shared --lib --target aarch64-unknown-linux-gnu
//! exec::kernels`); not timed: qemu's speed says nothing about a Cortex-A78.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{EpRaw, Geometry, Raw};

pub(crate) const DOT_GEOMETRY: Geometry = Geometry {
    mr: 8,
    nr: 8,
    lanes: 4,
    elem: 1,
};
pub(crate) const WIDE_GEOMETRY: Geometry = Geometry {
    mr: 4,
    nr: 16,
    lanes: 8,
    elem: 2,
};

/// `acc.4s += dot(w.16b, a.4b[lane])`, four signed byte products per lane.
macro_rules! sdot {
    ($acc:expr, $w:expr, $a:expr, $lane:literal) => {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{lane}]",
            acc = inout(vreg) $acc,
            w = in(vreg) $w,
            a = in(vreg) $a,
            lane = const $lane,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
}

/// # Safety
/// See [`super::Micro`]; the CPU has the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn micro_dot(t: &Raw<'_, u8>, i0: usize, rows: usize, j0: usize, width: usize) {
    // SAFETY: forwarded contract (rows <= 8, width <= 8).
    unsafe {
        match (rows, width > 4) {
            (1, false) => dot::<1, 1>(t, i0, j0, width),
            (1, true) => dot::<1, 2>(t, i0, j0, width),
            (2, false) => dot::<2, 1>(t, i0, j0, width),
            (2, true) => dot::<2, 2>(t, i0, j0, width),
            (3, false) => dot::<3, 1>(t, i0, j0, width),
            (3, true) => dot::<3, 2>(t, i0, j0, width),
            (4, false) => dot::<4, 1>(t, i0, j0, width),
            (4, true) => dot::<4, 2>(t, i0, j0, width),
            (5, false) => dot::<5, 1>(t, i0, j0, width),
            (5, true) => dot::<5, 2>(t, i0, j0, width),
            (6, false) => dot::<6, 1>(t, i0, j0, width),
            (6, true) => dot::<6, 2>(t, i0, j0, width),
            (7, false) => dot::<7, 1>(t, i0, j0, width),
            (7, true) => dot::<7, 2>(t, i0, j0, width),
            (_, false) => dot::<8, 1>(t, i0, j0, width),
            (_, true) => dot::<8, 2>(t, i0, j0, width),
        }
    }
}

/// # Safety
/// See [`super::Micro`], with `rows == MR` and `width.div_ceil(4) == NV`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot<const MR: usize, const NV: usize>(
    t: &Raw<'_, u8>,
    i0: usize,
    j0: usize,
    width: usize,
) {
    let groups = t.kp / 4;
    let lda = t.lda;
    let flip = vdupq_n_u8(0x80);
    let mut acc = [[vdupq_n_s32(0); NV]; MR];
    let mut x = [vdupq_n_s8(0); MR];
    // SAFETY: col_fix holds whole panels (j0 + 4 NV <= its length); row i0 + r < m provides kp
    // bytes from (i0 + r) * lda and the loads end at 4 * g + 16 <= kp (or + 4 in the tail); the
    // panel holds groups * 16 * NV bytes.
    unsafe {
        for v in 0..NV {
            let c = vld1q_s32(t.col_fix.add(j0 + 4 * v));
            for r in 0..MR {
                acc[r][v] = c;
            }
        }
        let a = t.a.add(i0 * lda);
        let mut b = t.panel::<i8>(j0);
        // Group q of the four in `x`, against the panel at b + q * 16 * NV.
        macro_rules! group {
            ($q:literal) => {
                for v in 0..NV {
                    let w = vld1q_s8(b.add(($q * NV + v) * 16));
                    for r in 0..MR {
                        sdot!(acc[r][v], w, x[r], $q);
                    }
                }
            };
        }
        let mut g = 0;
        while g + 4 <= groups {
            for r in 0..MR {
                x[r] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(a.add(r * lda + 4 * g)), flip));
            }
            group!(0);
            group!(1);
            group!(2);
            group!(3);
            b = b.add(64 * NV);
            g += 4;
        }
        while g < groups {
            for r in 0..MR {
                let four = vdupq_n_u32(a.add(r * lda + 4 * g).cast::<u32>().read_unaligned());
                x[r] = vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(four), flip));
            }
            group!(0);
            b = b.add(16 * NV);
            g += 1;
        }
    }
    let mut y = [[vdupq_n_f32(0.0); NV]; MR];
    for r in 0..MR {
        for v in 0..NV {
            y[r][v] = vcvtq_f32_s32(acc[r][v]);
        }
    }
    // SAFETY: the tile's rows and columns.
    unsafe { store_q::<MR, NV>(&t.epr, &y, i0, j0, width, t.out, t.ldc) }
}

/// # Safety
/// See [`super::Micro`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn micro_wide(t: &Raw<'_, u8>, i0: usize, rows: usize, j0: usize, width: usize) {
    // SAFETY: forwarded contract (rows <= 4, width <= 16).
    unsafe {
        match (rows, width > 8) {
            (1, false) => wide::<1, 1>(t, i0, j0, width),
            (1, true) => wide::<1, 2>(t, i0, j0, width),
            (2, false) => wide::<2, 1>(t, i0, j0, width),
            (2, true) => wide::<2, 2>(t, i0, j0, width),
            (3, false) => wide::<3, 1>(t, i0, j0, width),
            (3, true) => wide::<3, 2>(t, i0, j0, width),
            (_, false) => wide::<4, 1>(t, i0, j0, width),
            (_, true) => wide::<4, 2>(t, i0, j0, width),
        }
    }
}

/// # Safety
/// See [`super::Micro`], with `rows == MR` and `width.div_ceil(8) == NV`.
#[target_feature(enable = "neon")]
unsafe fn wide<const MR: usize, const NV: usize>(
    t: &Raw<'_, u8>,
    i0: usize,
    j0: usize,
    width: usize,
) {
    let lda = t.lda;
    let wp = 8 * NV;
    let mut lo = [[vdupq_n_s32(0); NV]; MR];
    let mut hi = [[vdupq_n_s32(0); NV]; MR];
    // SAFETY: col_fix holds whole panels, and j0 + 8 * NV does not pass this one.
    unsafe {
        for v in 0..NV {
            let (l, h) = (
                vld1q_s32(t.col_fix.add(j0 + 8 * v)),
                vld1q_s32(t.col_fix.add(j0 + 8 * v + 4)),
            );
            for r in 0..MR {
                lo[r][v] = l;
                hi[r][v] = h;
            }
        }
    }
    let mut x = [vdupq_n_s16(0); MR];
    // SAFETY: row i0 + r < m provides kp bytes from (i0 + r) * lda, the loads end at kk + 8 <=
    // kp (or kk + 4 in the tail, kp being a multiple of 4); the panel holds kp * wp i16s.
    unsafe {
        let a = t.a.add(i0 * lda);
        let mut b = t.panel::<i16>(j0);
        // Lane L of the widened A rows `x` (one k) against the 8 NV weights of panel row k.
        macro_rules! wide_k {
            ($l:literal) => {
                for v in 0..NV {
                    let w = vld1q_s16(b.add($l * wp + 8 * v));
                    for r in 0..MR {
                        lo[r][v] = vmlal_laneq_s16::<$l>(lo[r][v], vget_low_s16(w), x[r]);
                        hi[r][v] = vmlal_high_laneq_s16::<$l>(hi[r][v], w, x[r]);
                    }
                }
            };
        }
        let mut kk = 0;
        while kk + 8 <= t.kp {
            for r in 0..MR {
                x[r] = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(a.add(r * lda + kk))));
            }
            wide_k!(0);
            wide_k!(1);
            wide_k!(2);
            wide_k!(3);
            wide_k!(4);
            wide_k!(5);
            wide_k!(6);
            wide_k!(7);
            b = b.add(8 * wp);
            kk += 8;
        }
        if kk < t.kp {
            for r in 0..MR {
                let four = a.add(r * lda + kk).cast::<u32>().read_unaligned();
                x[r] = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(u64::from(four))));
            }
            wide_k!(0);
            wide_k!(1);
            wide_k!(2);
            wide_k!(3);
        }
    }
    // Lanes 0..4 of vector v are in lo, 4..8 in hi: 4-lane vectors 2v and 2v + 1.
    let mut y = [[[vdupq_n_f32(0.0); 2]; NV]; MR];
    for r in 0..MR {
        for v in 0..NV {
            y[r][v] = [vcvtq_f32_s32(lo[r][v]), vcvtq_f32_s32(hi[r][v])];
        }
    }
    // SAFETY: the tile's rows and columns: vector h of 8 lanes holds columns j0 + 8h ..,
    // stored as two 4-lane vectors (the second skipped when width ends before it).
    unsafe {
        for h in 0..NV {
            let half: [[float32x4_t; 2]; MR] = std::array::from_fn(|r| y[r][h]);
            let jh = j0 + 8 * h;
            store_q::<MR, 2>(&t.epr, &half, i0, jh, (width - 8 * h).min(8), t.out, t.ldc);
        }
    }
}

/// Applies the epilogue to `acc` (rows `i0..i0 + MR`, columns `j0 + 4 v ..`) and stores the
/// first `width` columns.
///
/// # Safety
/// The rows and the `width` columns lie inside the ranges `ep` and `out` were checked for, and
/// no one else writes those outputs.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn store_q<const MR: usize, const NV: usize>(
    ep: &EpRaw,
    acc: &[[float32x4_t; NV]; MR],
    i0: usize,
    j0: usize,
    width: usize,
    out: *mut f32,
    ldc: usize,
) {
    let lo = vdupq_n_f32(ep.lo);
    let hi = vdupq_n_f32(ep.hi);
    for v in 0..NV {
        let j = j0 + 4 * v;
        if j >= j0 + width {
            break;
        }
        let valid = (width - 4 * v).min(4);
        // SAFETY: columns j..j + valid < n (the caller's contract); partial vectors go through
        // a stack copy, so nothing past them is touched.
        unsafe {
            let bias = load_part(ep.bias.add(j), valid);
            let scale = if ep.scale.is_null() {
                None
            } else {
                Some(load_part(ep.scale.add(j), valid))
            };
            for r in 0..MR {
                let i = i0 + r;
                let mut y = acc[r][v];
                if let Some(s) = scale {
                    y = vmulq_f32(y, s);
                }
                y = vaddq_f32(y, bias);
                if ep.res.is_null() {
                    y = vminnmq_f32(vmaxnmq_f32(y, lo), hi);
                } else {
                    let res = load_part(ep.res.add(i * ep.res_ld + j), valid);
                    if ep.res_before {
                        y = vminnmq_f32(vmaxnmq_f32(vaddq_f32(y, res), lo), hi);
                    } else {
                        y = vaddq_f32(vminnmq_f32(vmaxnmq_f32(y, lo), hi), res);
                    }
                }
                store_part(out.add(i * ldc + j), valid, y);
            }
        }
    }
}

/// 4 floats from `p`, or the first `valid` (the rest 0).
///
/// # Safety
/// `p..p + valid` is readable.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load_part(p: *const f32, valid: usize) -> float32x4_t {
    // SAFETY: the caller's contract.
    unsafe {
        if valid == 4 {
            vld1q_f32(p)
        } else {
            let mut t = [0.0f32; 4];
            std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), valid);
            vld1q_f32(t.as_ptr())
        }
    }
}

/// Stores the first `valid` lanes of `y` at `p`.
///
/// # Safety
/// `p..p + valid` is writable.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn store_part(p: *mut f32, valid: usize, y: float32x4_t) {
    // SAFETY: the caller's contract.
    unsafe {
        if valid == 4 {
            vst1q_f32(p, y);
        } else {
            let mut t = [0.0f32; 4];
            vst1q_f32(t.as_mut_ptr(), y);
            std::ptr::copy_nonoverlapping(t.as_ptr(), p, valid);
        }
    }
}

//! The NEON f32 microkernel (Neon and NeonDot), 8 x 8: per 4 k, 4 A floats of each row are
//! loaded once and `fmla v.4s, w.4s, a.s[q]` multiplies the 2 vectors of panel row kk + q by
//! lane q; a k tail of 1..3 uses `fmla` by a scalar. The epilogue is the int8 path's
//! ([`store_q`]). Tested under qemu-user, not timed.

use std::arch::aarch64::*;

use super::super::gemm_i8::aarch64::store_q;
use super::{Geometry, Raw};

pub(crate) const GEOMETRY: Geometry = Geometry {
    mr: 8,
    nr: 8,
    lanes: 4,
    elem: 4,
};

/// # Safety
/// See [`super::Micro`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn micro(t: &Raw<'_, f32>, i0: usize, rows: usize, j0: usize, width: usize) {
    // SAFETY: forwarded contract (rows <= 8, width <= 8).
    unsafe {
        match (rows, width > 4) {
            (1, false) => kernel::<1, 1>(t, i0, j0, width),
            (1, true) => kernel::<1, 2>(t, i0, j0, width),
            (2, false) => kernel::<2, 1>(t, i0, j0, width),
            (2, true) => kernel::<2, 2>(t, i0, j0, width),
            (3, false) => kernel::<3, 1>(t, i0, j0, width),
            (3, true) => kernel::<3, 2>(t, i0, j0, width),
            (4, false) => kernel::<4, 1>(t, i0, j0, width),
            (4, true) => kernel::<4, 2>(t, i0, j0, width),
            (5, false) => kernel::<5, 1>(t, i0, j0, width),
            (5, true) => kernel::<5, 2>(t, i0, j0, width),
            (6, false) => kernel::<6, 1>(t, i0, j0, width),
            (6, true) => kernel::<6, 2>(t, i0, j0, width),
            (7, false) => kernel::<7, 1>(t, i0, j0, width),
            (7, true) => kernel::<7, 2>(t, i0, j0, width),
            (_, false) => kernel::<8, 1>(t, i0, j0, width),
            (_, true) => kernel::<8, 2>(t, i0, j0, width),
        }
    }
}

/// # Safety
/// See [`super::Micro`], with `rows == MR` and `width.div_ceil(4) == NV`.
#[target_feature(enable = "neon")]
unsafe fn kernel<const MR: usize, const NV: usize>(
    t: &Raw<'_, f32>,
    i0: usize,
    j0: usize,
    width: usize,
) {
    let lda = t.lda;
    let wp = 4 * NV;
    let mut acc = [[vdupq_n_f32(0.0); NV]; MR];
    let mut x = [vdupq_n_f32(0.0); MR];
    // SAFETY: row i0 + r < m provides k floats from (i0 + r) * lda and the loads end at
    // kk + 4 <= k (the tail reads single floats below k); the panel holds k * wp floats.
    unsafe {
        let a = t.a.add(i0 * lda);
        let mut b = t.panel::<f32>(j0);
        // Panel row kk + L times lane L of the 4 A floats of each row.
        macro_rules! k_lane {
            ($l:literal) => {
                for v in 0..NV {
                    let w = vld1q_f32(b.add($l * wp + 4 * v));
                    for r in 0..MR {
                        acc[r][v] = vfmaq_laneq_f32::<$l>(acc[r][v], w, x[r]);
                    }
                }
            };
        }
        let mut kk = 0;
        while kk + 4 <= t.kp {
            for r in 0..MR {
                x[r] = vld1q_f32(a.add(r * lda + kk));
            }
            k_lane!(0);
            k_lane!(1);
            k_lane!(2);
            k_lane!(3);
            b = b.add(4 * wp);
            kk += 4;
        }
        while kk < t.kp {
            for v in 0..NV {
                let w = vld1q_f32(b.add(4 * v));
                for r in 0..MR {
                    acc[r][v] = vfmaq_n_f32(acc[r][v], w, *a.add(r * lda + kk));
                }
            }
            b = b.add(wp);
            kk += 1;
        }
        store_q::<MR, NV>(&t.epr, &acc, i0, j0, width, t.out, t.ldc);
    }
}

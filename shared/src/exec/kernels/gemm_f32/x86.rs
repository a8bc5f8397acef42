//! The x86-64 f32 microkernels: `avx512` (Avx512 and Avx512Vnni), 7 x 48, and `avx2`, 6 x 16.
//! Per k: `NV` loads of the panel row, then for each of the `MR` rows one broadcast of
//! `a[i][kk]` (folded into `vfmadd231ps` as `{1to16}` on AVX-512) and `NV` FMAs into the
//! accumulators. The epilogue is the int8 path's ([`store_zmm`], [`store_ymm`]).

use std::arch::x86_64::*;

use super::super::gemm_i8::x86::{dispatch_7x3, prefetch_rows, store_ymm, store_zmm};
use super::{Geometry, Raw};

pub(crate) const AVX512_GEOMETRY: Geometry = Geometry {
    mr: 7,
    nr: 48,
    lanes: 16,
    elem: 4,
};
pub(crate) const AVX2_GEOMETRY: Geometry = Geometry {
    mr: 6,
    nr: 16,
    lanes: 8,
    elem: 4,
};

/// # Safety
/// See [`super::Micro`]; the CPU has AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn micro_avx512(
    t: &Raw<'_, f32>,
    i0: usize,
    rows: usize,
    j0: usize,
    width: usize,
) {
    // SAFETY: forwarded contract; rows <= 7 and width.div_ceil(16) <= 3 select the kernel.
    unsafe { dispatch_7x3!(avx512, t, i0, rows, j0, width, width.div_ceil(16)) }
}

/// # Safety
/// See [`super::Micro`], with `rows == MR` and `width.div_ceil(16) == NV`.
#[target_feature(enable = "avx512f")]
unsafe fn avx512<const MR: usize, const NV: usize>(
    t: &Raw<'_, f32>,
    i0: usize,
    j0: usize,
    width: usize,
) {
    let lda = t.lda;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    // SAFETY: row i0 + r < m provides k floats from (i0 + r) * lda; the panel holds k * 16 NV
    // floats.
    unsafe {
        let a = t.a.add(i0 * lda);
        let mut b = t.panel::<f32>(j0);
        let next = a.wrapping_add(MR * lda);
        for kk in 0..t.kp {
            if kk % 16 == 0 {
                prefetch_rows::<MR, f32>(next, lda, kk);
            }
            let mut w = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                w[v] = _mm512_loadu_ps(b.add(16 * v));
            }
            for r in 0..MR {
                let x = _mm512_set1_ps(*a.add(r * lda + kk));
                for v in 0..NV {
                    acc[r][v] = _mm512_fmadd_ps(x, w[v], acc[r][v]);
                }
            }
            b = b.add(16 * NV);
        }
        store_zmm::<MR, NV>(&t.epr, &acc, i0, j0, width, t.out, t.ldc);
    }
}

/// # Safety
/// See [`super::Micro`]; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn micro_avx2(t: &Raw<'_, f32>, i0: usize, rows: usize, j0: usize, width: usize) {
    // SAFETY: forwarded contract (rows <= 6, width <= 16).
    unsafe {
        match (rows, width > 8) {
            (1, false) => avx2::<1, 1>(t, i0, j0, width),
            (1, true) => avx2::<1, 2>(t, i0, j0, width),
            (2, false) => avx2::<2, 1>(t, i0, j0, width),
            (2, true) => avx2::<2, 2>(t, i0, j0, width),
            (3, false) => avx2::<3, 1>(t, i0, j0, width),
            (3, true) => avx2::<3, 2>(t, i0, j0, width),
            (4, false) => avx2::<4, 1>(t, i0, j0, width),
            (4, true) => avx2::<4, 2>(t, i0, j0, width),
            (5, false) => avx2::<5, 1>(t, i0, j0, width),
            (5, true) => avx2::<5, 2>(t, i0, j0, width),
            (_, false) => avx2::<6, 1>(t, i0, j0, width),
            (_, true) => avx2::<6, 2>(t, i0, j0, width),
        }
    }
}

/// # Safety
/// See [`super::Micro`], with `rows == MR` and `width.div_ceil(8) == NV`.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<const MR: usize, const NV: usize>(
    t: &Raw<'_, f32>,
    i0: usize,
    j0: usize,
    width: usize,
) {
    let lda = t.lda;
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    // SAFETY: as in `avx512`, with 8 NV floats per k.
    unsafe {
        let a = t.a.add(i0 * lda);
        let mut b = t.panel::<f32>(j0);
        let next = a.wrapping_add(MR * lda);
        for kk in 0..t.kp {
            if kk % 16 == 0 {
                prefetch_rows::<MR, f32>(next, lda, kk);
            }
            let mut w = [_mm256_setzero_ps(); NV];
            for v in 0..NV {
                w[v] = _mm256_loadu_ps(b.add(8 * v));
            }
            for r in 0..MR {
                let x = _mm256_set1_ps(*a.add(r * lda + kk));
                for v in 0..NV {
                    acc[r][v] = _mm256_fmadd_ps(x, w[v], acc[r][v]);
                }
            }
            b = b.add(8 * NV);
        }
        store_ymm::<MR, NV>(&t.epr, &acc, i0, j0, width, t.out, t.ldc);
    }
}

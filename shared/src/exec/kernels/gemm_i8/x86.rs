//! The x86-64 int8 microkernels (layouts in the parent's header) and the SIMD epilogue stores
//! that [`super::super::gemm_f32`] shares:
//!
//! - `vnni` (Avx512Vnni), 7 x 48: per group of 4 k, 3 zmm loads of the panel, 7 broadcasts of 4
//!   A bytes, 21 `vpdpbusd` (u8 x i8, four products per i32 lane) into 21 accumulators.
//! - `bw` (Avx512 without VNNI), 7 x 48, and `avx2`, 4 x 16: the panel holds i16 pairs (k even,
//!   k odd) per lane; the broadcast A is split into its even bytes (`and 0x00ff`) and odd bytes
//!   (`srl 8`), both i16, and `vpmaddwd` gives a0*w0 + a2*w2 and a1*w1 + a3*w3 exactly
//!   (|.| <= 2 * 255 * 127), added into the i32 accumulators.
//!
//! The epilogue (`store_zmm`, `store_ymm`) converts nothing: it takes f32 accumulators and does
//! `y = acc * scale + bias` (two roundings, as [`super::Epilogue::apply`]), the residual, then
//! `max(y, lo)` and `min(y, hi)` with the operand order that returns `lo` / `hi` for NaN like
//! `f32::max` / `f32::min`, and a masked store of the last, partial vector.
//!
//! Speed: `cargo bench -p firm-shared --bench kernels` (figures in the bench's header).

use std::arch::x86_64::*;

use super::{EpRaw, Geometry, Raw};

pub(crate) const VNNI_MR: usize = 7;
pub(crate) const VNNI_GEOMETRY: Geometry = Geometry {
    mr: VNNI_MR,
    nr: 48,
    lanes: 16,
    elem: 1,
};
pub(crate) const BW_GEOMETRY: Geometry = Geometry {
    mr: 7,
    nr: 48,
    lanes: 16,
    elem: 2,
};
pub(crate) const AVX2_GEOMETRY: Geometry = Geometry {
    mr: 4,
    nr: 16,
    lanes: 8,
    elem: 2,
};

/// Calls `$k::<MR, NV>` for the run-time `rows` (1..=7) and `nv` (1..=3).
macro_rules! dispatch_7x3 {
    ($k:ident, $t:expr, $i0:expr, $rows:expr, $j0:expr, $w:expr, $nv:expr) => {
        match ($rows, $nv) {
            (1, 1) => $k::<1, 1>($t, $i0, $j0, $w),
            (1, 2) => $k::<1, 2>($t, $i0, $j0, $w),
            (1, _) => $k::<1, 3>($t, $i0, $j0, $w),
            (2, 1) => $k::<2, 1>($t, $i0, $j0, $w),
            (2, 2) => $k::<2, 2>($t, $i0, $j0, $w),
            (2, _) => $k::<2, 3>($t, $i0, $j0, $w),
            (3, 1) => $k::<3, 1>($t, $i0, $j0, $w),
            (3, 2) => $k::<3, 2>($t, $i0, $j0, $w),
            (3, _) => $k::<3, 3>($t, $i0, $j0, $w),
            (4, 1) => $k::<4, 1>($t, $i0, $j0, $w),
            (4, 2) => $k::<4, 2>($t, $i0, $j0, $w),
            (4, _) => $k::<4, 3>($t, $i0, $j0, $w),
            (5, 1) => $k::<5, 1>($t, $i0, $j0, $w),
            (5, 2) => $k::<5, 2>($t, $i0, $j0, $w),
            (5, _) => $k::<5, 3>($t, $i0, $j0, $w),
            (6, 1) => $k::<6, 1>($t, $i0, $j0, $w),
            (6, 2) => $k::<6, 2>($t, $i0, $j0, $w),
            (6, _) => $k::<6, 3>($t, $i0, $j0, $w),
            (_, 1) => $k::<7, 1>($t, $i0, $j0, $w),
            (_, 2) => $k::<7, 2>($t, $i0, $j0, $w),
            (_, _) => $k::<7, 3>($t, $i0, $j0, $w),
        }
    };
}
pub(crate) use dispatch_7x3;

/// # Safety
/// See [`super::Micro`]; the CPU has AVX-512 F, BW and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn micro_vnni(t: &Raw<'_, u8>, i0: usize, rows: usize, j0: usize, width: usize) {
    // SAFETY: forwarded contract; rows <= 7 and width.div_ceil(16) <= 3 select the kernel.
    unsafe { dispatch_7x3!(vnni, t, i0, rows, j0, width, width.div_ceil(16)) }
}

/// `MR` rows x `NV` zmm of channels (the panel is `16 * NV` wide).
///
/// # Safety
/// See [`super::Micro`], with `rows == MR` and `width.div_ceil(16) == NV`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni<const MR: usize, const NV: usize>(
    t: &Raw<'_, u8>,
    i0: usize,
    j0: usize,
    width: usize,
) {
    let groups = t.kp / 4;
    let lda = t.lda;
    let mut acc = [[_mm512_setzero_si512(); NV]; MR];
    // SAFETY: col_fix holds whole panels, and j0 + 16 * NV does not pass this one.
    unsafe {
        for v in 0..NV {
            let c = _mm512_loadu_si512(t.col_fix.add(j0 + 16 * v).cast());
            for r in 0..MR {
                acc[r][v] = c;
            }
        }
    }
    // SAFETY: row i0 + r < m provides kp bytes from (i0 + r) * lda, and 4 * g + 4 <= kp; the
    // panel holds groups * NV * 64 bytes from its start, 64-byte aligned.
    unsafe {
        let a = t.a.add(i0 * lda);
        let mut b = t.panel::<__m512i>(j0);
        let next = a.wrapping_add(MR * lda);
        for g in 0..groups {
            if g % 16 == 0 {
                prefetch_rows::<MR, u8>(next, lda, 4 * g);
            }
            let mut w = [_mm512_setzero_si512(); NV];
            for v in 0..NV {
                w[v] = _mm512_load_si512(b.add(v));
            }
            for r in 0..MR {
                let x = _mm512_set1_epi32(a.add(r * lda + 4 * g).cast::<i32>().read_unaligned());
                for v in 0..NV {
                    acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], x, w[v]);
                }
            }
            b = b.add(NV);
        }
    }
    let mut y = [[_mm512_setzero_ps(); NV]; MR];
    for r in 0..MR {
        for v in 0..NV {
            y[r][v] = _mm512_cvtepi32_ps(acc[r][v]);
        }
    }
    // SAFETY: the tile's rows and columns (see super::Micro).
    unsafe { store_zmm::<MR, NV>(&t.epr, &y, i0, j0, width, t.out, t.ldc) }
}

/// # Safety
/// See [`super::Micro`]; the CPU has AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn micro_bw(t: &Raw<'_, u8>, i0: usize, rows: usize, j0: usize, width: usize) {
    // SAFETY: forwarded contract.
    unsafe { dispatch_7x3!(bw, t, i0, rows, j0, width, width.div_ceil(16)) }
}

/// # Safety
/// See [`super::Micro`], with `rows == MR` and `width.div_ceil(16) == NV`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn bw<const MR: usize, const NV: usize>(
    t: &Raw<'_, u8>,
    i0: usize,
    j0: usize,
    width: usize,
) {
    let groups = t.kp / 4;
    let lda = t.lda;
    let low = _mm512_set1_epi32(0x00ff_00ff);
    let mut acc = [[_mm512_setzero_si512(); NV]; MR];
    // SAFETY: col_fix holds whole panels, and j0 + 16 * NV does not pass this one.
    unsafe {
        for v in 0..NV {
            let c = _mm512_loadu_si512(t.col_fix.add(j0 + 16 * v).cast());
            for r in 0..MR {
                acc[r][v] = c;
            }
        }
    }
    // SAFETY: as in `vnni`; the i16 panel holds groups * NV * 128 bytes (even, odd per vector).
    unsafe {
        let a = t.a.add(i0 * lda);
        let mut b = t.panel::<__m512i>(j0);
        let next = a.wrapping_add(MR * lda);
        for g in 0..groups {
            if g % 16 == 0 {
                prefetch_rows::<MR, u8>(next, lda, 4 * g);
            }
            let mut even = [_mm512_setzero_si512(); NV];
            let mut odd = [_mm512_setzero_si512(); NV];
            for v in 0..NV {
                even[v] = _mm512_load_si512(b.add(2 * v));
                odd[v] = _mm512_load_si512(b.add(2 * v + 1));
            }
            for r in 0..MR {
                let x = _mm512_set1_epi32(a.add(r * lda + 4 * g).cast::<i32>().read_unaligned());
                let xe = _mm512_and_si512(x, low);
                let xo = _mm512_srli_epi16::<8>(x);
                for v in 0..NV {
                    let s = _mm512_add_epi32(
                        _mm512_madd_epi16(xe, even[v]),
                        _mm512_madd_epi16(xo, odd[v]),
                    );
                    acc[r][v] = _mm512_add_epi32(acc[r][v], s);
                }
            }
            b = b.add(2 * NV);
        }
    }
    let mut y = [[_mm512_setzero_ps(); NV]; MR];
    for r in 0..MR {
        for v in 0..NV {
            y[r][v] = _mm512_cvtepi32_ps(acc[r][v]);
        }
    }
    // SAFETY: the tile's rows and columns.
    unsafe { store_zmm::<MR, NV>(&t.epr, &y, i0, j0, width, t.out, t.ldc) }
}

/// # Safety
/// See [`super::Micro`]; the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn micro_avx2(t: &Raw<'_, u8>, i0: usize, rows: usize, j0: usize, width: usize) {
    // SAFETY: forwarded contract (rows <= 4, width <= 16).
    unsafe {
        match (rows, width > 8) {
            (1, false) => avx2::<1, 1>(t, i0, j0, width),
            (1, true) => avx2::<1, 2>(t, i0, j0, width),
            (2, false) => avx2::<2, 1>(t, i0, j0, width),
            (2, true) => avx2::<2, 2>(t, i0, j0, width),
            (3, false) => avx2::<3, 1>(t, i0, j0, width),
            (3, true) => avx2::<3, 2>(t, i0, j0, width),
            (_, false) => avx2::<4, 1>(t, i0, j0, width),
            (_, true) => avx2::<4, 2>(t, i0, j0, width),
        }
    }
}

/// # Safety
/// See [`super::Micro`], with `rows == MR` and `width.div_ceil(8) == NV`.
#[target_feature(enable = "avx2")]
unsafe fn avx2<const MR: usize, const NV: usize>(
    t: &Raw<'_, u8>,
    i0: usize,
    j0: usize,
    width: usize,
) {
    let groups = t.kp / 4;
    let lda = t.lda;
    let low = _mm256_set1_epi32(0x00ff_00ff);
    let mut acc = [[_mm256_setzero_si256(); NV]; MR];
    // SAFETY: col_fix holds whole panels, and j0 + 8 * NV does not pass this one.
    unsafe {
        for v in 0..NV {
            let c = _mm256_loadu_si256(t.col_fix.add(j0 + 8 * v).cast());
            for r in 0..MR {
                acc[r][v] = c;
            }
        }
    }
    // SAFETY: as in `bw`, with 64 bytes (even, odd) per vector of 8 lanes.
    unsafe {
        let a = t.a.add(i0 * lda);
        let mut b = t.panel::<__m256i>(j0);
        let next = a.wrapping_add(MR * lda);
        for g in 0..groups {
            if g % 16 == 0 {
                prefetch_rows::<MR, u8>(next, lda, 4 * g);
            }
            let mut even = [_mm256_setzero_si256(); NV];
            let mut odd = [_mm256_setzero_si256(); NV];
            for v in 0..NV {
                even[v] = _mm256_load_si256(b.add(2 * v));
                odd[v] = _mm256_load_si256(b.add(2 * v + 1));
            }
            for r in 0..MR {
                let x = _mm256_set1_epi32(a.add(r * lda + 4 * g).cast::<i32>().read_unaligned());
                let xe = _mm256_and_si256(x, low);
                let xo = _mm256_srli_epi16::<8>(x);
                for v in 0..NV {
                    let s = _mm256_add_epi32(
                        _mm256_madd_epi16(xe, even[v]),
                        _mm256_madd_epi16(xo, odd[v]),
                    );
                    acc[r][v] = _mm256_add_epi32(acc[r][v], s);
                }
            }
            b = b.add(2 * NV);
        }
    }
    let mut y = [[_mm256_setzero_ps(); NV]; MR];
    for r in 0..MR {
        for v in 0..NV {
            y[r][v] = _mm256_cvtepi32_ps(acc[r][v]);
        }
    }
    // SAFETY: the tile's rows and columns.
    unsafe { store_ymm::<MR, NV>(&t.epr, &y, i0, j0, width, t.out, t.ldc) }
}

/// Prefetches into L1 the cache line at element `off` of each of the `MR` A rows from `next`
/// (the next microtile's rows; row stride `lda` elements): called once per 64 bytes of K, so the
/// next tile's A arrives while this one computes (short rows defeat the hardware prefetcher).
/// Prefetches never fault, and the addresses, which may lie past the slice after the last tile,
/// are formed with wrapping arithmetic and never dereferenced.
#[inline(always)]
pub(crate) fn prefetch_rows<const MR: usize, T>(next: *const T, lda: usize, off: usize) {
    for r in 0..MR {
        let p = next.wrapping_add(r * lda + off).cast::<i8>();
        // SAFETY: SSE is part of the x86-64 baseline; a prefetch reads nothing the program sees.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
    }
}

/// Applies the epilogue to `acc` (rows `i0..i0 + MR`, columns `j0 + 16 v ..`) and stores the
/// first `width` columns.
///
/// # Safety
/// The rows and the `width` columns lie inside the ranges `ep` and `out` were checked for, and
/// no one else writes those outputs.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn store_zmm<const MR: usize, const NV: usize>(
    ep: &EpRaw,
    acc: &[[__m512; NV]; MR],
    i0: usize,
    j0: usize,
    width: usize,
    out: *mut f32,
    ldc: usize,
) {
    let lo = _mm512_set1_ps(ep.lo);
    let hi = _mm512_set1_ps(ep.hi);
    for v in 0..NV {
        let j = j0 + 16 * v;
        let valid = (width - 16 * v).min(16);
        let mask: __mmask16 = if valid == 16 {
            u16::MAX
        } else {
            (1 << valid) - 1
        };
        // SAFETY: the lanes under `mask` are columns j..j+valid < n; bias and scale hold >= n
        // values, the residual and out the rows of the tile (the caller's contract). Masked-off
        // lanes are not accessed.
        unsafe {
            let bias = _mm512_maskz_loadu_ps(mask, ep.bias.add(j));
            let scale = if ep.scale.is_null() {
                None
            } else {
                Some(_mm512_maskz_loadu_ps(mask, ep.scale.add(j)))
            };
            for r in 0..MR {
                let i = i0 + r;
                let mut y = acc[r][v];
                if let Some(s) = scale {
                    y = _mm512_mul_ps(y, s);
                }
                y = _mm512_add_ps(y, bias);
                if ep.res.is_null() {
                    y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
                } else {
                    let res = _mm512_maskz_loadu_ps(mask, ep.res.add(i * ep.res_ld + j));
                    if ep.res_before {
                        y = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(y, res), lo), hi);
                    } else {
                        y = _mm512_add_ps(_mm512_min_ps(_mm512_max_ps(y, lo), hi), res);
                    }
                }
                _mm512_mask_storeu_ps(out.add(i * ldc + j), mask, y);
            }
        }
    }
}

/// [`store_zmm`] for 8-lane vectors (masks as vectors: AVX2 has no mask registers).
///
/// # Safety
/// As [`store_zmm`].
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn store_ymm<const MR: usize, const NV: usize>(
    ep: &EpRaw,
    acc: &[[__m256; NV]; MR],
    i0: usize,
    j0: usize,
    width: usize,
    out: *mut f32,
    ldc: usize,
) {
    let lo = _mm256_set1_ps(ep.lo);
    let hi = _mm256_set1_ps(ep.hi);
    for v in 0..NV {
        let j = j0 + 8 * v;
        let valid = (width - 8 * v).min(8);
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(valid as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        // SAFETY: as in store_zmm; full vectors are plain loads/stores of 8 valid columns,
        // partial ones masked (masked-off lanes are not accessed).
        unsafe {
            let bias = load_ymm(ep.bias.add(j), valid, mask);
            let scale = if ep.scale.is_null() {
                None
            } else {
                Some(load_ymm(ep.scale.add(j), valid, mask))
            };
            for r in 0..MR {
                let i = i0 + r;
                let mut y = acc[r][v];
                if let Some(s) = scale {
                    y = _mm256_mul_ps(y, s);
                }
                y = _mm256_add_ps(y, bias);
                if ep.res.is_null() {
                    y = _mm256_min_ps(_mm256_max_ps(y, lo), hi);
                } else {
                    let res = load_ymm(ep.res.add(i * ep.res_ld + j), valid, mask);
                    if ep.res_before {
                        y = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(y, res), lo), hi);
                    } else {
                        y = _mm256_add_ps(_mm256_min_ps(_mm256_max_ps(y, lo), hi), res);
                    }
                }
                let p = out.add(i * ldc + j);
                if valid == 8 {
                    _mm256_storeu_ps(p, y);
                } else {
                    _mm256_maskstore_ps(p, mask, y);
                }
            }
        }
    }
}

/// 8 floats from `p`, or the first `valid` of them (the rest 0) under `mask`.
///
/// # Safety
/// `p..p + valid` is readable.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load_ymm(p: *const f32, valid: usize, mask: __m256i) -> __m256 {
    // SAFETY: the caller's contract; masked-off lanes are not accessed.
    unsafe {
        if valid == 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, mask)
        }
    }
}

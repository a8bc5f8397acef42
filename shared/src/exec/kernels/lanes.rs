//! One register of `f32` lanes per ISA, so that the channel-vectorised kernels (depthwise
//! convolution, pooling) are written once, generic over [`F32Lanes`], and instantiated inside a
//! `#[target_feature]` function per ISA: every method is `#[inline(always)]`, so after inlining
//! the intrinsics sit in a function compiled for the ISA's features and become single
//! instructions (checked with `objdump -d -C` on the test binary: the only calls left in
//! `depthwise::tile_avx512` / `tile_avx2`, `pool::max_avx512` etc. are to panic handlers).
//!
//! Every operation is the IEEE operation of the scalar code it replaces, lane by lane (no FMA
//! contraction, no reassociation), so a kernel that performs the same operations in the same order
//! per channel as its scalar reference is bit-identical to it. Where instruction semantics differ
//! from Rust's (`max`/`min` and NaN), the method documents which Rust expression it equals.
//!
//! Widths: `Avx512` 16 lanes, `Avx2` 8, `Neon` 4, `Portable` 4 (plain arrays, which LLVM maps
//! to SSE2 / NEON registers). Partial loads and stores (`n < N` lanes) never touch memory past
//! lane `n`: AVX-512 masks, AVX2 `vmaskmov`, copies through a stack array elsewhere.

/// A vector of `N` `f32` lanes on one ISA.
///
/// # Safety
/// Implementors' methods may only be called on a CPU with the implementor's features (the
/// kernels check [`super::Isa::runs_here`] before they enter an instantiation), and the pointer
/// arguments must be valid for the lanes accessed (`N`, or `n` for the partial variants).
pub(crate) unsafe trait F32Lanes: Copy {
    const N: usize;
    type V: Copy;

    unsafe fn splat(v: f32) -> Self::V;
    /// `N` lanes from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self::V;
    /// Lanes `0..n` from `p` (`n < N`), the others 0; reads nothing past `p + n`.
    unsafe fn load_part(p: *const f32, n: usize) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Lanes `0..n` to `p` (`n < N`); writes nothing else.
    unsafe fn store_part(p: *mut f32, n: usize, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// Bit `l` set where `a[l] <= b[l]` (clear where either is NaN), for lanes `0..N`.
    unsafe fn le_mask(a: Self::V, b: Self::V) -> u32;
    /// Rust's `y.max(lo)` per lane for a `lo` that is not NaN (NaN `y` gives `lo`).
    unsafe fn max_num(y: Self::V, lo: Self::V) -> Self::V;
    /// Rust's `y.min(hi)` per lane for a `hi` that is not NaN (NaN `y` gives `hi`).
    unsafe fn min_num(y: Self::V, hi: Self::V) -> Self::V;
    /// Per lane `if v > m || v.is_nan() { v } else { m }`: the running maximum of max pooling
    /// (the first NaN wins and stays, as PyTorch's; among equal values the earlier one stays).
    unsafe fn max_pool_step(m: Self::V, v: Self::V) -> Self::V;
}

/// Plain arrays; LLVM keeps them in SSE2 / NEON registers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable;

const PN: usize = 4;

// SAFETY: plain Rust on arrays; pointer arguments are the caller's contract.
unsafe impl F32Lanes for Portable {
    const N: usize = PN;
    type V = [f32; PN];

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        [v; PN]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: `p` is valid for N lanes (trait contract).
        unsafe { std::ptr::read_unaligned(p.cast::<[f32; PN]>()) }
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize) -> Self::V {
        let mut v = [0.0; PN];
        // SAFETY: `p` is valid for `n < N` lanes (trait contract).
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n) };
        v
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: `p` is valid for N lanes (trait contract).
        unsafe { std::ptr::write_unaligned(p.cast::<[f32; PN]>(), v) }
    }
    #[inline(always)]
    unsafe fn store_part(p: *mut f32, n: usize, v: Self::V) {
        // SAFETY: `p` is valid for `n < N` lanes (trait contract).
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, n) }
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] + b[l])
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] - b[l])
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] * b[l])
    }
    #[inline(always)]
    unsafe fn le_mask(a: Self::V, b: Self::V) -> u32 {
        (0..PN).fold(0, |m, l| m | (u32::from(a[l] <= b[l]) << l))
    }
    #[inline(always)]
    unsafe fn max_num(y: Self::V, lo: Self::V) -> Self::V {
        std::array::from_fn(|l| y[l].max(lo[l]))
    }
    #[inline(always)]
    unsafe fn min_num(y: Self::V, hi: Self::V) -> Self::V {
        std::array::from_fn(|l| y[l].min(hi[l]))
    }
    #[inline(always)]
    unsafe fn max_pool_step(m: Self::V, v: Self::V) -> Self::V {
        std::array::from_fn(|l| {
            if v[l] > m[l] || v[l].is_nan() {
                v[l]
            } else {
                m[l]
            }
        })
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::F32Lanes;
    use std::arch::x86_64::*;

    /// 8 lanes in a `ymm` register (AVX2 + FMA; FMA itself is not used).
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2;

    /// The AVX2 mask of lanes `0..n`.
    #[inline(always)]
    unsafe fn mask8(n: usize) -> __m256i {
        // SAFETY: AVX2 is available (trait contract).
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }

    // SAFETY: every method needs only AVX/AVX2, which the trait contract guarantees; `maxps(y, lo)`
    // returns its second operand when either is NaN (Intel SDM), which is Rust's `y.max(lo)` for
    // a non-NaN `lo`; likewise `minps`.
    unsafe impl F32Lanes for Avx2 {
        const N: usize = 8;
        type V = __m256;

        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            // SAFETY: trait contract (AVX).
            unsafe { _mm256_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: trait contract (AVX, 8 valid lanes).
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f32, n: usize) -> __m256 {
            // SAFETY: masked-off lanes are not accessed (vmaskmovps does not fault on them).
            unsafe { _mm256_maskload_ps(p, mask8(n)) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: trait contract (AVX, 8 valid lanes).
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn store_part(p: *mut f32, n: usize, v: __m256) {
            // SAFETY: masked-off lanes are not written.
            unsafe { _mm256_maskstore_ps(p, mask8(n), v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            // SAFETY: trait contract (AVX).
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            // SAFETY: trait contract (AVX).
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            // SAFETY: trait contract (AVX).
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn le_mask(a: __m256, b: __m256) -> u32 {
            // SAFETY: trait contract (AVX). `_CMP_LE_OQ` is false on NaN.
            unsafe { _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(a, b)) as u32 }
        }
        #[inline(always)]
        unsafe fn max_num(y: __m256, lo: __m256) -> __m256 {
            // SAFETY: trait contract (AVX).
            unsafe { _mm256_max_ps(y, lo) }
        }
        #[inline(always)]
        unsafe fn min_num(y: __m256, hi: __m256) -> __m256 {
            // SAFETY: trait contract (AVX).
            unsafe { _mm256_min_ps(y, hi) }
        }
        #[inline(always)]
        unsafe fn max_pool_step(m: __m256, v: __m256) -> __m256 {
            // SAFETY: trait contract (AVX).
            unsafe {
                let take = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(v, m),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
                );
                _mm256_blendv_ps(m, v, take)
            }
        }
    }

    /// 16 lanes in a `zmm` register (AVX-512 F; BW/VL for the byte stores elsewhere).
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx512;

    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    // SAFETY: every method needs only AVX-512 F, which the trait contract guarantees; NaN
    // semantics of `vmaxps`/`vminps` as for AVX2 above.
    unsafe impl F32Lanes for Avx512 {
        const N: usize = 16;
        type V = __m512;

        #[inline(always)]
        unsafe fn splat(v: f32) -> __m512 {
            // SAFETY: trait contract (AVX-512 F).
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: trait contract (16 valid lanes).
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f32, n: usize) -> __m512 {
            // SAFETY: masked-off lanes are not accessed (no fault on them).
            unsafe { _mm512_maskz_loadu_ps(mask16(n), p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: trait contract (16 valid lanes).
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn store_part(p: *mut f32, n: usize, v: __m512) {
            // SAFETY: masked-off lanes are not written.
            unsafe { _mm512_mask_storeu_ps(p, mask16(n), v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            // SAFETY: trait contract.
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            // SAFETY: trait contract.
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            // SAFETY: trait contract.
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn le_mask(a: __m512, b: __m512) -> u32 {
            // SAFETY: trait contract. `_CMP_LE_OQ` is false on NaN.
            unsafe { u32::from(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, b)) }
        }
        #[inline(always)]
        unsafe fn max_num(y: __m512, lo: __m512) -> __m512 {
            // SAFETY: trait contract.
            unsafe { _mm512_max_ps(y, lo) }
        }
        #[inline(always)]
        unsafe fn min_num(y: __m512, hi: __m512) -> __m512 {
            // SAFETY: trait contract.
            unsafe { _mm512_min_ps(y, hi) }
        }
        #[inline(always)]
        unsafe fn max_pool_step(m: __m512, v: __m512) -> __m512 {
            // SAFETY: trait contract.
            unsafe {
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, m)
                    | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                _mm512_mask_blend_ps(take, m, v)
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) use arm::Neon;

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::F32Lanes;
    use std::arch::aarch64::*;

    /// 4 lanes in a `q` register (Advanced SIMD).
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Neon;

    // SAFETY: every method needs only NEON, which the trait contract guarantees. `fmaxnm`/`fminnm`
    // are IEEE maxNum/minNum (a quiet NaN operand yields the other), Rust's `max`/`min`.
    unsafe impl F32Lanes for Neon {
        const N: usize = 4;
        type V = float32x4_t;

        #[inline(always)]
        unsafe fn splat(v: f32) -> float32x4_t {
            // SAFETY: trait contract (NEON).
            unsafe { vdupq_n_f32(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            // SAFETY: trait contract (4 valid lanes).
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f32, n: usize) -> float32x4_t {
            let mut a = [0f32; 4];
            // SAFETY: `p` is valid for `n < 4` lanes; `a` for 4.
            unsafe {
                std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n);
                vld1q_f32(a.as_ptr())
            }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            // SAFETY: trait contract (4 valid lanes).
            unsafe { vst1q_f32(p, v) }
        }
        #[inline(always)]
        unsafe fn store_part(p: *mut f32, n: usize, v: float32x4_t) {
            let mut a = [0f32; 4];
            // SAFETY: `a` is valid for 4 lanes; `p` for `n < 4`.
            unsafe {
                vst1q_f32(a.as_mut_ptr(), v);
                std::ptr::copy_nonoverlapping(a.as_ptr(), p, n);
            }
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: trait contract.
            unsafe { vaddq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: trait contract.
            unsafe { vsubq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: trait contract.
            unsafe { vmulq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn le_mask(a: float32x4_t, b: float32x4_t) -> u32 {
            // SAFETY: trait contract. `fcmge` is false on NaN; each lane keeps its own bit.
            unsafe {
                let bits = vld1q_u32([1u32, 2, 4, 8].as_ptr());
                vaddvq_u32(vandq_u32(vcleq_f32(a, b), bits))
            }
        }
        #[inline(always)]
        unsafe fn max_num(y: float32x4_t, lo: float32x4_t) -> float32x4_t {
            // SAFETY: trait contract.
            unsafe { vmaxnmq_f32(y, lo) }
        }
        #[inline(always)]
        unsafe fn min_num(y: float32x4_t, hi: float32x4_t) -> float32x4_t {
            // SAFETY: trait contract.
            unsafe { vminnmq_f32(y, hi) }
        }
        #[inline(always)]
        unsafe fn max_pool_step(m: float32x4_t, v: float32x4_t) -> float32x4_t {
            // SAFETY: trait contract.
            unsafe {
                let gt = vcgtq_f32(v, m);
                let nan = vmvnq_u32(vceqq_f32(v, v));
                vbslq_f32(vorrq_u32(gt, nan), v, m)
            }
        }
    }
}

/// The epilogue of [`super::Epilogue::apply`] on lanes `j..j + n` of output row `i` (`n <= N`;
/// `n < N` reads only lanes `0..n` of the per-channel vectors and the residual). Equal to the
/// scalar definition lane by lane, bit for bit (same operations, same order, no FMA).
///
/// # Safety
/// `L`'s features are available, and `ep.check(m, j + n)` passed for an `m > i`.
#[inline(always)]
pub(crate) unsafe fn epilogue<L: F32Lanes>(
    ep: &super::Epilogue<'_>,
    acc: L::V,
    i: usize,
    j: usize,
    n: usize,
) -> L::V {
    // SAFETY: `bias`, `scale` have >= j + n values and the residual row i has >= j + n columns
    // (`ep.check`); partial loads read lanes 0..n only.
    unsafe {
        let ld = |p: *const f32| {
            if n == L::N {
                L::load(p)
            } else {
                L::load_part(p, n)
            }
        };
        let b = ld(ep.bias.as_ptr().add(j));
        let mut y = match ep.scale {
            Some(s) => L::add(L::mul(acc, ld(s.as_ptr().add(j))), b),
            None => L::add(acc, b),
        };
        let lo = L::splat(ep.clamp.lo);
        let hi = L::splat(ep.clamp.hi);
        match ep.residual {
            Some(r) => {
                let res = ld(r.data.as_ptr().add(i * r.ld + j));
                if r.before_clamp {
                    y = L::add(y, res);
                    L::min_num(L::max_num(y, lo), hi)
                } else {
                    L::add(L::min_num(L::max_num(y, lo), hi), res)
                }
            }
            None => L::min_num(L::max_num(y, lo), hi),
        }
    }
}

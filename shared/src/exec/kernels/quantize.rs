//! Activations from f32 to u8 (the input of every int8 convolution) and the model input from
//! CHW to NHWC.
//!
//! Definition ([`quantize_one`]), per value: `y = x * inv_scale` (one f32 multiply); NaN `y`
//! gives the zero point; otherwise `q = clamp(round_ties_even(y) + zp, 0, 255)` with the add and
//! the clamp in f32 (exact below 2^24, and beyond it the clamp decides anyway), so +-inf give
//! 255 / 0. The SIMD paths perform exactly these operations (NaN lanes are zeroed before the
//! rounding, so they come out as `0 + zp`), hence they are bit-identical to the scalar loop on
//! every input, which the tests check on ties (`k + 0.5`), infinities, NaN, signed zeros,
//! subnormals and values around the clamp bounds.
//!
//! Paths: `Avx512` (16 values a step, masked tail), `Avx2` (32 a step through two `packus`,
//! scalar tail), `Neon` (16 a step through `xtn`, scalar tail), `Portable` (the scalar loop).
//! Rounding uses the instruction's explicit round-to-nearest-even immediate (`vrndscaleps` /
//! `vroundps` imm 8, `frintn`), independent of MXCSR / FPCR.
//!
//! Speed (2-core Zen 4, one thread, CPU time): 802,816 values (56x56x256) 78 µs with AVX-512,
//! 101 µs AVX2, 1.9 ms portable (`round_ties_even` is a libm call on baseline x86-64); the
//! 224x224x3 input into cs 4 39 µs (AVX-512); `chw_to_hwc` of 3x224x224 17 µs. `cargo bench -p firm-shared --bench ops -- quantize`; the machine was shared with other builds (load average 6-9 on 2 cores), so wall times
//! varied up to 2x between runs; the CPU time of the calling thread (`testing::time_per_call`) is
//! the steadier figure, best of two runs given.

use super::Isa;

/// The scalar definition of one quantized value (module header).
#[inline(always)]
pub fn quantize_one(x: f32, inv_scale: f32, zero_point: u8) -> u8 {
    let y = x * inv_scale;
    if y.is_nan() {
        return zero_point;
    }
    (y.round_ties_even() + zero_point as f32).clamp(0.0, 255.0) as u8
}

/// `out[i] = quantize_one(x[i], inv_scale, zero_point)` for every `i`.
///
/// # Panics
/// When `out.len() != x.len()` or `isa` does not run on this CPU.
pub fn quantize_u8(isa: Isa, x: &[f32], inv_scale: f32, zero_point: u8, out: &mut [u8]) {
    assert_eq!(
        out.len(),
        x.len(),
        "quantize: {} outputs for {} inputs",
        out.len(),
        x.len()
    );
    assert!(isa.runs_here(), "{isa} does not run on this CPU");
    // SAFETY: `isa` runs here; lengths are equal.
    unsafe { quantize_unchecked(isa, x, inv_scale, zero_point, out) }
}

/// Rows of `c` values (`x.len() = rows * c`) into rows of stride `cs >= c`: row `r` goes to
/// `out[r * cs .. r * cs + c]` and `out[r * cs + c .. (r + 1) * cs]` get the zero point (so the
/// padding channels of a u8 NHWC tensor dequantize to 0). Writes `out[..rows * cs]`.
///
/// For `c < 64` rows are quantized in blocks through a 1 KiB stack buffer, so that the vector
/// loop runs over many values at once (the 3-channel model input has 3 values per row).
///
/// # Panics
/// When `c == 0`, `cs < c`, `x.len()` is not a multiple of `c`, `out.len() < rows * cs` or `isa`
/// does not run on this CPU.
pub fn quantize_u8_rows(
    isa: Isa,
    x: &[f32],
    c: usize,
    inv_scale: f32,
    zero_point: u8,
    out: &mut [u8],
    cs: usize,
) {
    assert!(c >= 1 && cs >= c, "c = {c}, cs = {cs}");
    assert!(
        x.len().is_multiple_of(c),
        "{} values are not rows of {c}",
        x.len()
    );
    let rows = x.len() / c;
    assert!(
        out.len() >= rows * cs,
        "output has {} < {rows} x {cs} bytes",
        out.len()
    );
    assert!(isa.runs_here(), "{isa} does not run on this CPU");
    let out = &mut out[..rows * cs];
    if cs == c {
        // SAFETY: `isa` runs here (asserted); equal lengths.
        unsafe { quantize_unchecked(isa, x, inv_scale, zero_point, out) };
    } else if c >= 64 {
        for (src, dst) in x.chunks_exact(c).zip(out.chunks_exact_mut(cs)) {
            let (vals, padding) = dst.split_at_mut(c);
            // SAFETY: `isa` runs here (asserted); `vals` has `c` bytes like `src`.
            unsafe { quantize_unchecked(isa, src, inv_scale, zero_point, vals) };
            padding.fill(zero_point);
        }
    } else {
        const BUF: usize = 1024;
        let mut buf = [0u8; BUF];
        let per = BUF / c; // >= 16 rows per block
        for (src, dst) in x.chunks(per * c).zip(out.chunks_mut(per * cs)) {
            let q = &mut buf[..src.len()];
            // SAFETY: `isa` runs here (asserted); `q` is as long as `src`.
            unsafe { quantize_unchecked(isa, src, inv_scale, zero_point, q) };
            if (c, cs) == (3, 4) {
                // The model input: fixed-size moves instead of a `memcpy` and a `memset` call
                // per pixel.
                for (qrow, drow) in q.chunks_exact(3).zip(dst.chunks_exact_mut(4)) {
                    let d: &mut [u8; 4] = drow.try_into().expect("4 bytes");
                    *d = [qrow[0], qrow[1], qrow[2], zero_point];
                }
            } else {
                for (qrow, drow) in q.chunks_exact(c).zip(dst.chunks_exact_mut(cs)) {
                    drow[..c].copy_from_slice(qrow);
                    drow[c..].fill(zero_point);
                }
            }
        }
    }
}

/// # Safety
/// `isa` runs on this CPU and `out.len() == x.len()`.
unsafe fn quantize_unchecked(isa: Isa, x: &[f32], inv_scale: f32, zero_point: u8, out: &mut [u8]) {
    debug_assert_eq!(x.len(), out.len());
    // SAFETY: the caller's contract.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni => x86::quantize_avx512(x, inv_scale, zero_point, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::quantize_avx2(x, inv_scale, zero_point, out),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot => arm::quantize_neon(x, inv_scale, zero_point, out),
            _ => quantize_scalar(x, inv_scale, zero_point, out),
        }
    }
}

fn quantize_scalar(x: &[f32], inv_scale: f32, zero_point: u8, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, inv_scale, zero_point);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::quantize_scalar;
    use std::arch::x86_64::*;

    /// Round to nearest, ties to even, no exceptions: the `imm8` of `vroundps` / `vrndscaleps`.
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    /// # Safety
    /// AVX-512 F/BW/VL run here; `out.len() == x.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn quantize_avx512(
        x: &[f32],
        inv_scale: f32,
        zero_point: u8,
        out: &mut [u8],
    ) {
        let inv = _mm512_set1_ps(inv_scale);
        let zp = _mm512_set1_ps(zero_point as f32);
        let lo = _mm512_setzero_ps();
        let hi = _mm512_set1_ps(255.0);
        // The definition on 16 lanes: NaN lanes zeroed (then `0 + zp`), round, add, clamp; the
        // values are integral in 0..=255, so truncation and narrowing are exact.
        let q = |v: __m512| {
            let y = _mm512_mul_ps(v, inv);
            let y = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y), y);
            let r = _mm512_add_ps(_mm512_roundscale_ps::<NEAREST>(y), zp);
            _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi)))
        };
        let n = x.len();
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        // SAFETY: full steps access i..i + 16 <= n; the tail's masked lanes are exactly i..n.
        unsafe {
            while i + 16 <= n {
                _mm_storeu_si128(op.add(i).cast(), q(_mm512_loadu_ps(xp.add(i))));
                i += 16;
            }
            if i < n {
                let m = ((1u32 << (n - i)) - 1) as __mmask16;
                _mm_mask_storeu_epi8(op.add(i).cast(), m, q(_mm512_maskz_loadu_ps(m, xp.add(i))));
            }
        }
    }

    /// # Safety
    /// AVX2 runs here; `out.len() == x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_avx2(x: &[f32], inv_scale: f32, zero_point: u8, out: &mut [u8]) {
        let inv = _mm256_set1_ps(inv_scale);
        let zp = _mm256_set1_ps(zero_point as f32);
        let lo = _mm256_setzero_ps();
        let hi = _mm256_set1_ps(255.0);
        let q = |v: __m256| {
            let y = _mm256_mul_ps(v, inv);
            let y = _mm256_and_ps(y, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
            let r = _mm256_add_ps(_mm256_round_ps::<NEAREST>(y), zp);
            _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
        };
        // packus works per 128-bit half: after both packs the dwords hold a0-3 b0-3 c0-3 d0-3
        // a4-7 b4-7 c4-7 d4-7 (4 bytes each); this permutation puts them in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let n = x.len();
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        // SAFETY: each step accesses i..i + 32 <= n.
        unsafe {
            while i + 32 <= n {
                let a = q(_mm256_loadu_ps(xp.add(i)));
                let b = q(_mm256_loadu_ps(xp.add(i + 8)));
                let c = q(_mm256_loadu_ps(xp.add(i + 16)));
                let d = q(_mm256_loadu_ps(xp.add(i + 24)));
                let bytes =
                    _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(c, d));
                _mm256_storeu_si256(op.add(i).cast(), _mm256_permutevar8x32_epi32(bytes, order));
                i += 32;
            }
        }
        quantize_scalar(&x[i..], inv_scale, zero_point, &mut out[i..]);
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::quantize_scalar;
    use std::arch::aarch64::*;

    /// # Safety
    /// NEON runs here; `out.len() == x.len()`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn quantize_neon(x: &[f32], inv_scale: f32, zero_point: u8, out: &mut [u8]) {
        let inv = vdupq_n_f32(inv_scale);
        let zp = vdupq_n_f32(zero_point as f32);
        let lo = vdupq_n_f32(0.0);
        let hi = vdupq_n_f32(255.0);
        // NaN lanes zeroed, frintn (ties to even), add, clamp (no NaN left, so maxnm/minnm are
        // plain max/min), fcvtzu exact on integral values.
        let q = |v: float32x4_t| {
            let y = vmulq_f32(v, inv);
            let y = vbslq_f32(vceqq_f32(y, y), y, lo);
            let r = vaddq_f32(vrndnq_f32(y), zp);
            vcvtq_u32_f32(vminnmq_f32(vmaxnmq_f32(r, lo), hi))
        };
        let n = x.len();
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        // SAFETY: each step accesses i..i + 16 <= n.
        unsafe {
            while i + 16 <= n {
                let a = vmovn_u32(q(vld1q_f32(xp.add(i))));
                let b = vmovn_u32(q(vld1q_f32(xp.add(i + 4))));
                let c = vmovn_u32(q(vld1q_f32(xp.add(i + 8))));
                let d = vmovn_u32(q(vld1q_f32(xp.add(i + 12))));
                let lo8 = vmovn_u16(vcombine_u16(a, b));
                let hi8 = vmovn_u16(vcombine_u16(c, d));
                vst1q_u8(op.add(i), vcombine_u8(lo8, hi8));
                i += 16;
            }
        }
        quantize_scalar(&x[i..], inv_scale, zero_point, &mut out[i..]);
    }
}

/// One CHW image (`x.len() = c * h * w`, PyTorch's layout) to HWC (NHWC with channel stride
/// `c`): `out[(y * w + x) * c + ch] = x[(ch * h + y) * w + x]`. Pure copies; pixels are taken in
/// blocks of 64 so that each of the `c` input planes is read sequentially.
///
/// # Panics
/// When `x.len() != c * h * w` or `out.len() < c * h * w`.
pub fn chw_to_hwc(x: &[f32], c: usize, h: usize, w: usize, out: &mut [f32]) {
    let hw = h * w;
    assert_eq!(
        x.len(),
        c * hw,
        "{} values for a {c}x{h}x{w} image",
        x.len()
    );
    assert!(
        out.len() >= c * hw,
        "output has {} < {c}x{h}x{w} values",
        out.len()
    );
    if c == 0 {
        return;
    }
    if c == 3 {
        // The model input: one pass over the three planes.
        let (r, rest) = x.split_at(hw);
        let (g, b) = rest.split_at(hw);
        for (o, ((&r, &g), &b)) in out.chunks_exact_mut(3).zip(r.iter().zip(g).zip(b)) {
            let o: &mut [f32; 3] = o.try_into().expect("3 values");
            *o = [r, g, b];
        }
        return;
    }
    const BLOCK: usize = 64;
    for (b, dst) in out[..c * hw].chunks_mut(BLOCK * c).enumerate() {
        let p0 = b * BLOCK;
        for ch in 0..c {
            let src = &x[ch * hw + p0..][..dst.len() / c];
            for (d, &v) in dst[ch..].iter_mut().step_by(c).zip(src) {
                *d = v;
            }
        }
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
        /// Values; for the strided check `rows * c` of them.
        n: usize,
        c: usize,
        cs: usize,
        inv_scale: f32,
        zero_point: u8,
        seed: u64,
    }

    /// Values that stress the definition: ties, bounds, specials; mixed with random ones.
    fn values(t: &Case) -> Vec<f32> {
        let s = 1.0 / t.inv_scale;
        let zp = t.zero_point as f32;
        let special = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::MIN_POSITIVE / 4.0, // subnormal
            -f32::MIN_POSITIVE / 4.0,
            f32::MAX,
            f32::MIN,
            1e30,
            -1e30,
            3e9,
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(t.seed);
        (0..t.n)
            .map(|_| match rng.random_range(0..6) {
                0 => special[rng.random_range(0..special.len())],
                // Exact ties after scaling (when the scale is a power of two) and near them.
                1 => (rng.random_range(-300i32..300) as f32 + 0.5) * s,
                2 => (rng.random_range(-300i32..300) as f32 + 0.5) * s * (1.0 + f32::EPSILON),
                // Around the clamp bounds: q near 0 and near 255.
                3 => (-zp + rng.random_range(-3.0f32..3.0)) * s,
                4 => (255.0 - zp + rng.random_range(-3.0f32..3.0)) * s,
                _ => rng.random_range(-200.0f32..200.0) * s,
            })
            .collect()
    }

    pub(super) fn edge_cases() -> Vec<Case> {
        let mut v = Vec::new();
        let mut seed = 0;
        for &n in &[
            0, 1, 3, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000, 4099,
        ] {
            for &(inv_scale, zero_point) in &[
                (1.0, 0),
                (1.0, 128),
                (4.0, 255),
                (0.5, 7),
                (1.0 / 0.0173, 113),
                (57.8, 3),
            ] {
                for &c in &[1, 3, 5, 17, 33, 96, 144] {
                    seed += 1;
                    let cs = if c % 4 == 0 {
                        c + 4 * (seed as usize % 2)
                    } else {
                        c.next_multiple_of(4)
                    };
                    v.push(Case {
                        n,
                        c,
                        cs,
                        inv_scale,
                        zero_point,
                        seed,
                    });
                }
            }
        }
        v
    }

    pub(super) fn random_case() -> impl Strategy<Value = Case> {
        (
            0usize..600,
            1usize..80,
            0usize..9,
            -8i32..8,
            any::<bool>(),
            any::<u8>(),
            any::<u64>(),
        )
            .prop_map(|(n, c, extra, e, pow2, zero_point, seed)| {
                let inv_scale = if pow2 {
                    2f32.powi(e)
                } else {
                    2f32.powi(e) * 1.37
                };
                Case {
                    n,
                    c,
                    cs: c + extra,
                    inv_scale,
                    zero_point,
                    seed,
                }
            })
    }

    pub(super) fn check(isa: Isa, t: &Case) -> Result<(), String> {
        let x = values(t);
        let want: Vec<u8> = x
            .iter()
            .map(|&v| quantize_one(v, t.inv_scale, t.zero_point))
            .collect();
        let mut got = vec![0xa5u8; t.n];
        quantize_u8(isa, &x, t.inv_scale, t.zero_point, &mut got);
        if let Some(i) = got.iter().zip(&want).position(|(g, w)| g != w) {
            return Err(format!(
                "x[{i}] = {:e}: {} vs reference {}",
                x[i], got[i], want[i]
            ));
        }
        // Strided: rows of c values (as many whole rows as fit in n).
        let rows = t.n / t.c;
        let x = &x[..rows * t.c];
        let mut got = vec![0xa5u8; rows * t.cs + 1];
        quantize_u8_rows(isa, x, t.c, t.inv_scale, t.zero_point, &mut got, t.cs);
        if got[rows * t.cs] != 0xa5 {
            return Err("strided: wrote past the output".into());
        }
        for r in 0..rows {
            for j in 0..t.cs {
                let w = if j < t.c {
                    want[r * t.c + j]
                } else {
                    t.zero_point
                };
                if got[r * t.cs + j] != w {
                    return Err(format!(
                        "strided row {r} byte {j}: {} vs {w}",
                        got[r * t.cs + j]
                    ));
                }
            }
        }
        Ok(())
    }

    #[derive(Debug, Clone)]
    pub(super) struct Image {
        c: usize,
        h: usize,
        w: usize,
    }

    pub(super) fn image_edges() -> Vec<Image> {
        let mut v = Vec::new();
        for &(h, w) in &[(1, 1), (3, 5), (7, 7), (13, 11), (56, 56), (224, 224)] {
            for &c in &[1, 3, 5, 17] {
                v.push(Image { c, h, w });
            }
        }
        v
    }

    pub(super) fn image_strategy() -> impl Strategy<Value = Image> {
        (0usize..40, 1usize..30, 1usize..30).prop_map(|(c, h, w)| Image { c, h, w })
    }

    pub(super) fn check_image(_isa: Isa, t: &Image) -> Result<(), String> {
        let x: Vec<f32> = (0..t.c * t.h * t.w).map(|i| i as f32).collect();
        let mut got = vec![-1.0f32; x.len() + 1];
        chw_to_hwc(&x, t.c, t.h, t.w, &mut got);
        for y in 0..t.h {
            for xx in 0..t.w {
                for ch in 0..t.c {
                    let g = got[(y * t.w + xx) * t.c + ch];
                    let w = x[(ch * t.h + y) * t.w + xx];
                    if g != w {
                        return Err(format!("({y}, {xx}, {ch}): {g} vs {w}"));
                    }
                }
            }
        }
        if got[x.len()] != -1.0 {
            Err("wrote past the output".into())
        } else {
            Ok(())
        }
    }

    #[test]
    fn definition_on_hand_picked_values() {
        let q = |x: f32| quantize_one(x, 1.0, 10);
        assert_eq!(
            [q(0.5), q(1.5), q(2.5), q(-0.5), q(-1.5)],
            [10, 12, 12, 10, 8]
        );
        assert_eq!(
            [
                q(f32::NAN),
                q(f32::INFINITY),
                q(f32::NEG_INFINITY),
                q(-10.4),
                q(-10.6)
            ],
            [10, 255, 0, 0, 0]
        );
        assert_eq!([q(244.5), q(245.5), q(1e9)], [254, 255, 255]);
    }
}

crate::kernel_tests! {
    family: quantize_kernel,
    case: tests::Case,
    strategy: tests::random_case(),
    edge: tests::edge_cases(),
    check: tests::check,
}

crate::kernel_tests! {
    family: chw_to_hwc_kernel,
    case: tests::Image,
    strategy: tests::image_strategy(),
    edge: tests::image_edges(),
    check: tests::check_image,
}

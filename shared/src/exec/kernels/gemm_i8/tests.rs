//! Tests of [`gemm_u8i8`] on every ISA of this CPU against the scalar reference
//! (`sum_k (a - zp) * w` in i64, checked to fit i32, then [`Epilogue::apply`]): exact equality. The
//! case type and the epilogue inputs are shared with the f32 tests.
//!
//! Edge cases: every m, n, k in {1, 3, 7, 13, 17, 33, 65} with the epilogue variants, strides and
//! thread counts cycling; the real convolution shapes (ResNet-18 and EfficientNet-Lite0 at 224
//! px); the extreme inputs (a = 255, |w| = 127) up to k = MAX_K, where an i16 saturation or an
//! i32 overflow would show. Random cases: proptest over small shapes (N, K of 3..20 included).
//! The reference accumulators of the large cases are computed once and shared by the ISAs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{MAX_K, PackedI8, gemm_u8i8};
use crate::exec::kernels::{Clamp, Epilogue, Isa, Residual};

/// One GEMM call: shape, strides, epilogue and inputs (drawn from `seed`).
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// lda = k_padded + lda_pad (int8) or k + lda_pad (f32).
    pub lda_pad: usize,
    /// ldc = n + ldc_pad (the residual's stride too).
    pub ldc_pad: usize,
    pub scale: bool,
    /// None, or Some(before_clamp).
    pub residual: Option<bool>,
    /// 0: none, 1: ReLU, 2: ReLU6.
    pub clamp: u8,
    pub threads: usize,
    /// int8: a = 255 and w = +-127 everywhere (the largest accumulators).
    pub extreme: bool,
    pub seed: u64,
}

impl Case {
    pub fn new(m: usize, n: usize, k: usize, variant: usize) -> Self {
        Self {
            m,
            n,
            k,
            lda_pad: (variant * 7) % 5,
            ldc_pad: (variant * 3) % 4,
            scale: variant.is_multiple_of(2),
            residual: [None, Some(true), Some(false)][(variant / 2) % 3],
            clamp: ((variant / 6) % 3) as u8,
            threads: 1 + (variant / 5) % 3,
            extreme: false,
            seed: variant as u64 * 0x9e37_79b9 + (m * 31 + n * 7 + k) as u64,
        }
    }

    pub fn clamp(&self) -> Clamp {
        [Clamp::NONE, Clamp::RELU, Clamp::RELU6][self.clamp as usize]
    }
}

/// Epilogue inputs of a case: scale (`acc_scale` times random in +-[0.2, 1]), bias, residual.
pub(crate) struct EpData {
    pub scale: Option<Vec<f32>>,
    pub bias: Vec<f32>,
    pub residual: Option<Vec<f32>>,
}

impl EpData {
    pub fn new(c: &Case, rng: &mut ChaCha8Rng, acc_scale: f32, bias_range: f32) -> Self {
        let ldc = c.n + c.ldc_pad;
        let scale = c.scale.then(|| {
            (0..c.n)
                .map(|_| {
                    let s = rng.random_range(0.2f32..1.0) * acc_scale;
                    if rng.random_bool(0.3) { -s } else { s }
                })
                .collect()
        });
        let bias = (0..c.n)
            .map(|_| rng.random_range(-bias_range..bias_range))
            .collect();
        let residual = c.residual.map(|_| {
            (0..(c.m - 1) * ldc + c.n)
                .map(|_| rng.random_range(-3.0f32..3.0))
                .collect()
        });
        Self {
            scale,
            bias,
            residual,
        }
    }

    pub fn epilogue(&self, c: &Case) -> Epilogue<'_> {
        Epilogue {
            scale: self.scale.as_deref(),
            bias: &self.bias,
            residual: self.residual.as_deref().map(|data| Residual {
                data,
                ld: c.n + c.ldc_pad,
                before_clamp: c.residual == Some(true),
            }),
            clamp: c.clamp(),
        }
    }
}

/// A value no kernel writes: the outputs outside m x n must keep it.
pub(crate) const SENTINEL: u32 = 0x7fc0_dead;

/// Checks that the stride gaps of `out` (columns n..ldc of rows < m - 1) still hold SENTINEL.
pub(crate) fn check_gaps(out: &[f32], c: &Case) -> Result<(), String> {
    let ldc = c.n + c.ldc_pad;
    for i in 0..c.m - 1 {
        for j in c.n..ldc {
            if out[i * ldc + j].to_bits() != SENTINEL {
                return Err(format!("wrote outside n at ({i}, {j})"));
            }
        }
    }
    Ok(())
}

struct Inputs {
    a: Vec<u8>,
    lda: usize,
    w: Vec<i8>,
}

fn inputs(c: &Case, rng: &mut ChaCha8Rng) -> Inputs {
    let kp = c.k.next_multiple_of(4);
    let lda = kp + c.lda_pad;
    let len = (c.m - 1) * lda + kp;
    // The padding bytes (k..kp, and the stride gaps) are random too: they must meet zeros.
    let a = if c.extreme {
        vec![255u8; len]
    } else {
        (0..len).map(|_| rng.random()).collect()
    };
    let w = if c.extreme {
        (0..c.n * c.k)
            .map(|i| {
                if (i / c.k).is_multiple_of(2) {
                    127
                } else {
                    -127
                }
            })
            .collect()
    } else {
        (0..c.n * c.k)
            .map(|_| rng.random_range(-127i8..=127))
            .collect()
    };
    Inputs { a, lda, w }
}

/// The A operand's zero point of a case: 0 for a quarter of the seeds, else drawn from the seed
/// (the kernels must then sum `(a - zp) * w`).
fn zero_point(c: &Case) -> u8 {
    if c.seed.is_multiple_of(4) {
        0
    } else {
        (c.seed >> 8) as u8
    }
}

/// The exact accumulators `sum (a - zp) * w`, in i64, checked to fit i32. Cached for large cases (the ISAs share
/// them).
fn reference_acc(c: &Case, inp: &Inputs) -> Arc<Vec<i32>> {
    static CACHE: Mutex<Option<HashMap<String, Arc<Vec<i32>>>>> = Mutex::new(None);
    let big = c.m * c.n * c.k > 1 << 20;
    let key = format!("{c:?}");
    if big && let Some(hit) = CACHE.lock().unwrap().get_or_insert_default().get(&key) {
        return hit.clone();
    }
    let mut acc = vec![0i32; c.m * c.n];
    for i in 0..c.m {
        let row = &inp.a[i * inp.lda..][..c.k];
        for j in 0..c.n {
            let w = &inp.w[j * c.k..][..c.k];
            let s: i64 = row
                .iter()
                .zip(w)
                .map(|(&x, &y)| (i64::from(x) - i64::from(zero_point(c))) * i64::from(y))
                .sum();
            acc[i * c.n + j] = i32::try_from(s).expect("reference accumulator exceeds i32");
        }
    }
    let acc = Arc::new(acc);
    if big {
        CACHE
            .lock()
            .unwrap()
            .get_or_insert_default()
            .insert(key, acc.clone());
    }
    acc
}

pub(crate) fn check_case(isa: Isa, c: &Case) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    let inp = inputs(c, &mut rng);
    // Scaled outputs of order 1-10, so that the clamps cut some and pass some.
    let acc_scale = 5e-4 / (c.k as f32).sqrt();
    let bias_range = if c.scale { 3.0 } else { 2e4 };
    let epd = EpData::new(c, &mut rng, acc_scale, bias_range);
    let ep = epd.epilogue(c);
    let b = PackedI8::with_zero_point(isa, &inp.w, c.n, c.k, zero_point(c));
    let ldc = c.n + c.ldc_pad;
    let mut out = vec![f32::from_bits(SENTINEL); (c.m - 1) * ldc + c.n];
    gemm_u8i8(&inp.a, inp.lda, c.m, &b, &ep, &mut out, ldc, c.threads);
    let acc = reference_acc(c, &inp);
    for i in 0..c.m {
        for j in 0..c.n {
            let want = ep.apply(acc[i * c.n + j] as f32, i, j);
            let got = out[i * ldc + j];
            // `==`: a clamped zero may have either sign (f32::max leaves it open).
            if !(got == want || got.is_nan() && want.is_nan()) {
                return Err(format!(
                    "({i}, {j}): got {got} want {want} (acc {})",
                    acc[i * c.n + j]
                ));
            }
        }
    }
    check_gaps(&out, c)
}

/// The sizes every edge case crosses: odd, around the vector widths (4, 8, 16) and the panel
/// widths (8, 16, 48), and the microkernel heights (4, 6, 7, 8).
pub(crate) const EDGE_SIZES: [usize; 7] = [1, 3, 7, 13, 17, 33, 65];

/// (m, n, k) of ResNet-18 and EfficientNet-Lite0 at 224 px; the EfficientNet pointwise shapes
/// also with n and k swapped (expand vs project).
pub(crate) fn real_shapes() -> Vec<(usize, usize, usize)> {
    let resnet = [
        (3136, 64, 576),
        (784, 128, 1152),
        (196, 256, 2304),
        (49, 512, 4608),
        (784, 128, 64),
        (196, 256, 128),
        (49, 512, 256),
        (12544, 64, 148),
    ];
    let effnet = [
        (12544, 16, 32),
        (3136, 144, 24),
        (784, 240, 40),
        (196, 480, 80),
        (196, 672, 112),
        (49, 1152, 192),
        (49, 1280, 320),
    ];
    let mut v = resnet.to_vec();
    for (m, n, k) in effnet {
        v.push((m, n, k));
        v.push((m, k, n));
    }
    v
}

/// Every size triple, then the real shapes (each with another epilogue variant and thread count).
pub(crate) fn edge_case_list() -> Vec<Case> {
    let mut v = Vec::new();
    let mut variant = 0;
    for m in EDGE_SIZES {
        for n in EDGE_SIZES {
            for k in EDGE_SIZES {
                v.push(Case::new(m, n, k, variant));
                variant += 1;
            }
        }
    }
    for (s, (m, n, k)) in real_shapes().into_iter().enumerate() {
        let mut c = Case::new(m, n, k, s);
        c.threads = [1, 2, 3][s % 3];
        v.push(c);
    }
    v
}

fn edge_cases_i8() -> Vec<Case> {
    let mut v = edge_case_list();
    for (i, (m, n, k)) in [(7, 48, MAX_K), (3, 17, 4609), (9, 50, 4608)]
        .into_iter()
        .enumerate()
    {
        let mut c = Case::new(m, n, k, i);
        c.extreme = true;
        c.scale = false;
        c.clamp = 0;
        c.residual = None;
        v.push(c);
    }
    v
}

/// Small random cases; N and K often in 3..20 (the tiny test models).
pub(crate) fn case_strategy() -> impl Strategy<Value = Case> {
    let size = || prop_oneof![3usize..=20, 1usize..=70];
    (
        1usize..=70,
        size(),
        size(),
        0usize..6,
        0usize..4,
        any::<bool>(),
        0usize..3,
        0u8..3,
        1usize..=3,
        any::<u64>(),
    )
        .prop_map(
            |(m, n, k, lda_pad, ldc_pad, scale, res, clamp, threads, seed)| Case {
                m,
                n,
                k,
                lda_pad,
                ldc_pad,
                scale,
                residual: [None, Some(true), Some(false)][res],
                clamp,
                threads,
                extreme: false,
                seed,
            },
        )
}

crate::kernel_tests! {
    family: gemm_i8,
    case: Case,
    strategy: case_strategy(),
    edge: edge_cases_i8(),
    check: check_case,
}

#[test]
fn col_sums_are_the_weight_row_sums() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (n, k) in [(1, 1), (3, 5), (17, 33), (64, 576)] {
        let w: Vec<i8> = (0..n * k).map(|_| rng.random_range(-127i8..=127)).collect();
        for isa in Isa::supported() {
            let b = PackedI8::new(isa, &w, n, k);
            assert_eq!(
                (b.isa(), b.n(), b.k(), b.k_padded()),
                (isa, n, k, k.next_multiple_of(4))
            );
            let want: Vec<i32> = w
                .chunks(k)
                .map(|r| r.iter().map(|&v| i32::from(v)).sum())
                .collect();
            assert_eq!(b.col_sums(), &want[..], "{isa} n={n} k={k}");
        }
    }
}

#[test]
#[should_panic(expected = "PackedI8::new: w has 11 values, expected n * k = 3 * 4 = 12")]
fn packing_rejects_a_wrong_length() {
    PackedI8::new(Isa::Portable, &[0; 11], 3, 4);
}

#[test]
#[should_panic(expected = "w[5] = -128, weights must lie in [-127, 127]")]
fn packing_rejects_minus_128() {
    let mut w = [1i8; 12];
    w[5] = i8::MIN;
    PackedI8::new(Isa::Portable, &w, 3, 4);
}

#[test]
#[should_panic(expected = "the i32 accumulators would overflow")]
fn packing_rejects_a_k_past_max_k() {
    PackedI8::new(Isa::Portable, &vec![0; MAX_K + 1], 1, MAX_K + 1);
}

#[test]
#[should_panic(expected = "this CPU cannot run")]
fn packing_rejects_an_isa_of_another_cpu() {
    let foreign = if cfg!(target_arch = "x86_64") {
        Isa::NeonDot
    } else {
        Isa::Avx2
    };
    PackedI8::new(foreign, &[0; 4], 1, 4);
}

#[test]
#[should_panic(expected = "gemm_u8i8: lda 5 < k_padded 8")]
fn gemm_rejects_a_short_stride() {
    let b = PackedI8::new(Isa::best(), &[1; 14], 2, 7);
    let ep = Epilogue::new(&[0.0; 2], Clamp::NONE);
    gemm_u8i8(&[0; 16], 5, 2, &b, &ep, &mut [0.0; 4], 2, 1);
}

#[test]
#[should_panic(expected = "gemm_u8i8: a has 15 bytes for 2 rows of 8 (stride 8)")]
fn gemm_rejects_a_short_a() {
    let b = PackedI8::new(Isa::best(), &[1; 14], 2, 7);
    let ep = Epilogue::new(&[0.0; 2], Clamp::NONE);
    gemm_u8i8(&[0; 15], 8, 2, &b, &ep, &mut [0.0; 4], 2, 1);
}

#[test]
fn zero_rows_or_k_are_fine() {
    for isa in Isa::supported() {
        let b = PackedI8::new(isa, &[], 3, 0);
        let ep = Epilogue::new(&[1.0, -2.0, 3.0], Clamp::RELU);
        let mut out = [9.0; 6];
        gemm_u8i8(&[], 0, 0, &b, &ep, &mut out, 3, 2);
        assert_eq!(out, [9.0; 6]);
        gemm_u8i8(&[], 0, 2, &b, &ep, &mut out, 3, 2);
        assert_eq!(out, [1.0, 0.0, 3.0, 1.0, 0.0, 3.0], "{isa}");
    }
}

//! Tests of [`gemm_f32`] on every ISA of this CPU against the scalar reference in f64 (the dot
//! product, then the epilogue's steps): `|got - want| <= 1e-5 * (|scale| * sum_k |a * w| + |bias|
//! + |residual|) + 1e-20` (the clamps are 1-Lipschitz, so the bound passes through them). Same
//! cases as the int8 tests ([`crate::exec::kernels::gemm_i8`]'s test module).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{PackedF32, gemm_f32};
use crate::exec::kernels::gemm_i8::tests::{
    Case, EpData, SENTINEL, case_strategy, check_gaps, edge_case_list,
};
use crate::exec::kernels::{Clamp, Epilogue, Isa};

/// `(sum_k a * w, sum_k |a * w|)` per output in f64, row-major m x n. Cached for large cases
/// (the ISAs share them).
fn reference_dots(c: &Case, a: &[f32], lda: usize, w: &[f32]) -> Arc<Vec<(f64, f64)>> {
    type Cache = HashMap<String, Arc<Vec<(f64, f64)>>>;
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let big = c.m * c.n * c.k > 1 << 20;
    let key = format!("{c:?}");
    if big && let Some(hit) = CACHE.lock().unwrap().get_or_insert_default().get(&key) {
        return hit.clone();
    }
    let mut dots = Vec::with_capacity(c.m * c.n);
    for i in 0..c.m {
        let row = &a[i * lda..][..c.k];
        for j in 0..c.n {
            let wr = &w[j * c.k..][..c.k];
            dots.push(row.iter().zip(wr).fold((0f64, 0f64), |(d, s), (&x, &y)| {
                let p = f64::from(x) * f64::from(y);
                (d + p, s + p.abs())
            }));
        }
    }
    let dots = Arc::new(dots);
    if big {
        CACHE
            .lock()
            .unwrap()
            .get_or_insert_default()
            .insert(key, dots.clone());
    }
    dots
}

fn check_case(isa: Isa, c: &Case) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    let lda = c.k + c.lda_pad;
    let a: Vec<f32> = (0..(c.m - 1) * lda + c.k)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let w: Vec<f32> = (0..c.n * c.k)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let epd = EpData::new(c, &mut rng, 4.0 / (c.k as f32).sqrt(), 2.0);
    let ep = epd.epilogue(c);
    let b = PackedF32::new(isa, &w, c.n, c.k);
    let ldc = c.n + c.ldc_pad;
    let mut out = vec![f32::from_bits(SENTINEL); (c.m - 1) * ldc + c.n];
    gemm_f32(&a, lda, c.m, &b, &ep, &mut out, ldc, c.threads);
    let clamp = c.clamp();
    let dots = reference_dots(c, &a, lda, &w);
    for i in 0..c.m {
        for j in 0..c.n {
            let (dot, abs) = dots[i * c.n + j];
            let s = epd.scale.as_ref().map_or(1.0, |s| f64::from(s[j]));
            let bias = f64::from(epd.bias[j]);
            let res = ep.residual.map_or(0.0, |r| f64::from(r.data[i * r.ld + j]));
            let (lo, hi) = (f64::from(clamp.lo), f64::from(clamp.hi));
            let y = dot * s + bias;
            let want = match c.residual {
                Some(true) => (y + res).max(lo).min(hi),
                Some(false) => y.max(lo).min(hi) + res,
                None => y.max(lo).min(hi),
            };
            let tol = 1e-5 * (s.abs() * abs + bias.abs() + res.abs()) + 1e-20;
            let got = f64::from(out[i * ldc + j]);
            if (got - want).abs() > tol || got.is_nan() {
                return Err(format!(
                    "({i}, {j}): got {got} want {want} (tolerance {tol})"
                ));
            }
        }
    }
    check_gaps(&out, c)
}

crate::kernel_tests! {
    family: gemm_f32,
    case: Case,
    strategy: case_strategy(),
    edge: edge_case_list(),
    check: check_case,
}

#[test]
#[should_panic(expected = "PackedF32::new: w has 5 values, expected n * k = 2 * 3 = 6")]
fn packing_rejects_a_wrong_length() {
    PackedF32::new(Isa::Portable, &[0.0; 5], 2, 3);
}

#[test]
#[should_panic(expected = "this CPU cannot run")]
fn packing_rejects_an_isa_of_another_cpu() {
    let foreign = if cfg!(target_arch = "x86_64") {
        Isa::Neon
    } else {
        Isa::Avx512
    };
    PackedF32::new(foreign, &[0.0; 4], 1, 4);
}

#[test]
#[should_panic(expected = "gemm_f32: out has 3 values for 2 x 2 (stride 2)")]
fn gemm_rejects_a_short_out() {
    let b = PackedF32::new(Isa::best(), &[1.0; 6], 2, 3);
    let ep = Epilogue::new(&[0.0; 2], Clamp::NONE);
    gemm_f32(&[0.0; 6], 3, 2, &b, &ep, &mut [0.0; 3], 2, 1);
}

#[test]
fn packing_reports_its_shape() {
    for isa in Isa::supported() {
        let b = PackedF32::new(isa, &[0.5; 21], 3, 7);
        assert_eq!((b.isa(), b.n(), b.k()), (isa, 3, 7));
    }
}

//! Loss properties beyond the golden values: gradients against finite differences, the identities
//! between losses, and finiteness on every degenerate batch a trainer can produce.

use SampleLabel::{Id, Outlier};
use candle_core::{DType, Device, Tensor, Var};
use firm_shared::model::l2_normalize_rows;
use host_trainer::loss::{LossKind, SampleLabel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_rows(rows: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows * d).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn unit(raw: &[f64], d: usize, dt: DType) -> Tensor {
    let t = Tensor::from_vec(raw.to_vec(), (raw.len() / d, d), &Device::Cpu).unwrap();
    l2_normalize_rows(&t).unwrap().to_dtype(dt).unwrap()
}

fn value(kind: LossKind, z: &Tensor, labels: &[SampleLabel], tau: f64) -> f64 {
    kind.loss(z, labels, tau)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// candle autograd through L2-normalisation and the loss, against central differences in f64.
#[test]
fn gradients_match_finite_differences() {
    let (n, d) = (6, 5);
    let labels = [Id(0), Id(0), Outlier(1), Id(0), Outlier(2), Outlier(1)];
    for kind in LossKind::ALL {
        for tau in [0.1, 0.5] {
            let raw = random_rows(2 * n, d, 7 + (tau * 10.0) as u64);
            let x =
                Var::from_tensor(&Tensor::from_vec(raw.clone(), (2 * n, d), &Device::Cpu).unwrap())
                    .unwrap();
            let loss = kind
                .loss(&l2_normalize_rows(x.as_tensor()).unwrap(), &labels, tau)
                .unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<f64> = grads
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let h = 1e-6;
            let f = |v: &[f64]| value(kind, &unit(v, d, DType::F64), &labels, tau);
            let mut worst = 0f64;
            for i in 0..raw.len() {
                let mut p = raw.clone();
                p[i] += h;
                let mut m = raw.clone();
                m[i] -= h;
                let fd = (f(&p) - f(&m)) / (2.0 * h);
                worst = worst.max((fd - g[i]).abs() / (1e-6 + fd.abs().max(g[i].abs())));
            }
            assert!(
                worst < 1e-6,
                "{kind:?} tau {tau}: relative gradient error {worst:.2e}"
            );
            assert!(
                g.iter().any(|v| v.abs() > 1e-3),
                "{kind:?}: gradient must not vanish"
            );
        }
    }
}

#[test]
fn firm_on_all_outliers_equals_ntxent() {
    let (n, d) = (8, 16);
    let z = unit(&random_rows(2 * n, d, 3), d, DType::F64);
    let labels: Vec<SampleLabel> = (0..n).map(|i| Outlier(1 + (i % 3) as u16)).collect();
    for tau in [0.05, 0.2, 1.0] {
        let a = value(LossKind::Firm, &z, &labels, tau);
        let b = value(LossKind::NtXent, &z, &labels, tau);
        assert!((a - b).abs() <= 1e-12 * b.abs(), "pairwise: {a} vs {b}");
        let a = value(LossKind::FirmConcat, &z, &labels, tau);
        let b = value(LossKind::NtXent2n, &z, &labels, tau);
        assert!((a - b).abs() <= 1e-12 * b.abs(), "concat: {a} vs {b}");
    }
}

#[test]
fn firm_concat_on_all_id_equals_supcon_and_supcon_star() {
    let (n, d) = (8, 16);
    let z = unit(&random_rows(2 * n, d, 4), d, DType::F64);
    let labels = vec![Id(0); n];
    for tau in [0.05, 0.2, 1.0] {
        let firm = value(LossKind::FirmConcat, &z, &labels, tau);
        for other in [LossKind::SupCon, LossKind::SupConStar] {
            let v = value(other, &z, &labels, tau);
            assert!(
                (firm - v).abs() <= 1e-12 * v.abs(),
                "{other:?}: {firm} vs {v}"
            );
        }
    }
}

#[test]
fn firm_differs_from_ntxent_and_supcon_on_mixed_batches() {
    // The identities above must not hold by accident: on a mixed batch the losses disagree.
    let (n, d) = (8, 16);
    let z = unit(&random_rows(2 * n, d, 5), d, DType::F64);
    let labels = [
        Id(0),
        Id(0),
        Id(0),
        Outlier(1),
        Outlier(1),
        Outlier(2),
        Outlier(2),
        Outlier(3),
    ];
    let firm = value(LossKind::FirmConcat, &z, &labels, 0.2);
    for other in [LossKind::NtXent2n, LossKind::SupCon, LossKind::SupConStar] {
        let v = value(other, &z, &labels, 0.2);
        assert!(
            (firm - v).abs() > 1e-3,
            "{other:?} equals FIRM on a mixed batch"
        );
    }
}

#[test]
fn finite_on_every_degenerate_batch() {
    let d = 8;
    let same_row: Vec<f64> = (0..d).map(|i| i as f64 + 1.0).collect();
    let cases: Vec<(&str, Vec<SampleLabel>, Vec<f64>)> = vec![
        ("N = 1 ID", vec![Id(0)], random_rows(2, d, 1)),
        ("N = 1 outlier", vec![Outlier(1)], random_rows(2, d, 2)),
        ("all ID", vec![Id(0); 6], random_rows(12, d, 3)),
        ("all outlier", vec![Outlier(2); 6], random_rows(12, d, 4)),
        (
            "identical embeddings",
            vec![Id(0), Outlier(1), Outlier(2), Id(0)],
            same_row.repeat(8),
        ),
        (
            "opposite views",
            vec![Id(0), Outlier(1)],
            [same_row.clone(), same_row.iter().map(|v| -v).collect()]
                .concat()
                .repeat(2),
        ),
    ];
    for (what, labels, raw) in cases {
        for dt in [DType::F32, DType::F64] {
            let z = unit(&raw, d, dt);
            for kind in LossKind::ALL {
                for tau in [0.05, 0.1, 0.5, 2.0] {
                    let zv = Var::from_tensor(&z).unwrap();
                    let loss = kind.loss(zv.as_tensor(), &labels, tau).unwrap();
                    let v = loss
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap();
                    assert!(
                        v.is_finite() && v >= -1e-6,
                        "{what} {kind:?} {dt:?} tau {tau}: {v}"
                    );
                    let g = loss.backward().unwrap();
                    let gv: Vec<f64> = g
                        .get(zv.as_tensor())
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    assert!(
                        gv.iter().all(|x| x.is_finite()),
                        "{what} {kind:?}: NaN gradient"
                    );
                }
            }
        }
    }
}

#[test]
fn single_sample_and_perfect_alignment_have_known_values() {
    // N = 1: the only key is the positive -> loss exactly 0 for every loss.
    let z = unit(&random_rows(2, 4, 9), 4, DType::F64);
    for kind in LossKind::ALL {
        assert!(value(kind, &z, &[Id(0)], 0.2).abs() < 1e-12, "{kind:?}");
    }
    // Identical embeddings: every softmax row is uniform, so each positive has -log p = log(keys):
    // log N for the pairwise losses, log(2N - 1) for the concat ones, whatever the positives.
    let n = 4;
    let z = unit(&[1.0, 0.0, 0.0].repeat(2 * n), 3, DType::F64);
    let ids = vec![Id(0); n];
    for kind in LossKind::ALL {
        let keys = if kind.layout() == host_trainer::loss::Layout::Pairwise {
            n
        } else {
            2 * n - 1
        };
        let v = value(kind, &z, &ids, 0.1);
        assert!((v - (keys as f64).ln()).abs() < 1e-12, "{kind:?}: {v}");
    }
}

#[test]
fn rejects_malformed_batches() {
    let z = unit(&random_rows(6, 4, 1), 4, DType::F64);
    let e = LossKind::Firm.loss(&z, &[Id(0), Id(0)], 0.2).unwrap_err();
    assert!(e.to_string().contains("expected 2 x 2"), "{e}");
    assert!(
        LossKind::Firm
            .loss(&z, &[Id(0), Id(0), Id(0)], 0.0)
            .is_err()
    );
    assert!(LossKind::SupCon.loss(&z, &[], 0.2).is_err());
}

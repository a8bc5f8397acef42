//! The GPU path against the CPU path: one seeded model, one batch, one FIRM training step on
//! each device, and the embeddings, the loss and the updated weights agree.
//!
//! Runs where a GPU is usable (a build with `--features cuda` on a machine with an NVIDIA
//! driver: `cargo test --release -p host-trainer --features cuda --test cuda`); elsewhere it
//! prints why and checks nothing. The model code has no CUDA kernels of its own: on a GPU the
//! fast CPU convolution, BatchNorm and max-pool ops fall back to candle's, so this compares
//! candle's CUDA kernels plus our fallbacks with our CPU kernels.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::{FirmModel, ModelConfig, Stem, params};
use host_trainer::compute::{DeviceSpec, cuda_compiled};
use host_trainer::loss::{LossKind, SampleLabel};
use host_trainer::optim::Sgd;

fn gpu() -> Option<Device> {
    if !cuda_compiled() {
        eprintln!("built without the `cuda` feature: the CPU/GPU comparison did not run");
        return None;
    }
    match DeviceSpec::Cuda(0).open() {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("no usable GPU ({e}): the CPU/GPU comparison did not run");
            None
        }
    }
}

/// What one step computes on `device`: features and loss before the step, and the weights and
/// features after it (all copied back to the CPU).
struct StepResult {
    features: Vec<f32>,
    loss: f32,
    weights: Vec<f32>,
    features_after: Vec<f32>,
}

fn one_step(device: &Device, loss: LossKind) -> StepResult {
    let cfg = ModelConfig::tiny(Stem::Cifar);
    let varmap = VarMap::new();
    let model = FirmModel::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, device)).unwrap();
    params::init_params(&varmap, 7).unwrap();
    // 4 good images and their 4 rotations, two views each: [2 * 8, 3, 32, 32].
    let n = 8;
    let pixels: Vec<f32> = (0..2 * n * 3 * 32 * 32)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 2.0)
        .collect();
    let x = Tensor::from_vec(pixels, (2 * n, 3, 32, 32), &Device::Cpu)
        .unwrap()
        .to_device(device)
        .unwrap();
    let labels: Vec<SampleLabel> = (0..n)
        .map(|i| {
            if i < n / 2 {
                SampleLabel::Id(0)
            } else {
                SampleLabel::Outlier(1 + (i % 3) as u16)
            }
        })
        .collect();
    let out = model.forward_t(&x, true).unwrap();
    let value = loss.loss(&out.z, &labels, 0.2).unwrap();
    let mut opt = Sgd::new(params::trainable_vars(&varmap), 0.05, 0.9, 3e-4);
    opt.step(&value.backward().unwrap()).unwrap();
    let cpu = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let mut weights = Vec::new();
    for (_, var) in params::trainable_vars(&varmap) {
        weights.extend(cpu(var.as_tensor()));
    }
    StepResult {
        features: cpu(&out.features),
        loss: value.to_scalar().unwrap(),
        weights,
        features_after: cpu(&model.encoder.forward_t(&x, false).unwrap()),
    }
}

/// Largest absolute difference, relative to the largest magnitude of `a`.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn a_training_step_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for loss in [LossKind::Firm, LossKind::SupCon, LossKind::NtXent] {
        let a = one_step(&Device::Cpu, loss);
        let b = one_step(&gpu, loss);
        let checks = [
            ("features", rel_diff(&a.features, &b.features), 1e-4),
            ("loss", (a.loss - b.loss).abs() / a.loss.abs(), 1e-5),
            (
                "weights after the step",
                rel_diff(&a.weights, &b.weights),
                1e-4,
            ),
            (
                "features after the step",
                rel_diff(&a.features_after, &b.features_after),
                1e-3,
            ),
        ];
        for (what, diff, tol) in checks {
            eprintln!("{loss}: {what}: relative difference {diff:.2e} (tolerance {tol:.0e})");
            assert!(
                diff <= tol,
                "{loss}: {what} differ by {diff:.2e} > {tol:.0e}"
            );
        }
    }
}

/// The same step twice on the CPU gives the same numbers (the comparison above is meaningful
/// only if each side is deterministic); runs everywhere.
#[test]
fn a_training_step_on_the_cpu_is_deterministic() {
    let a = one_step(&Device::Cpu, LossKind::Firm);
    let b = one_step(&Device::Cpu, LossKind::Firm);
    assert!(a.loss.is_finite() && a.loss > 0.0, "loss {}", a.loss);
    assert_eq!(a.features, b.features);
    assert_eq!(a.weights, b.weights);
    assert_ne!(a.features, a.features_after, "the step changed the encoder");
}

//! The optimiser and model can fit: on one fixed batch, repeated, every loss must fall far below
//! its starting value. Catches sign errors, detached graphs and broken updates that finite
//! differences on the loss alone cannot.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::{FirmModel, ModelConfig, Stem, params};
use host_trainer::loss::{LossKind, SampleLabel};
use host_trainer::optim::Sgd;

fn fit_fixed_batch(kind: LossKind, steps: usize) -> (f64, f64) {
    let cfg = ModelConfig::tiny(Stem::Cifar);
    let vm = VarMap::new();
    let model =
        FirmModel::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    params::init_params(&vm, 1).unwrap();
    let n = 12;
    let base = Tensor::randn(0f32, 1.0, (n, 3, 16, 16), &Device::Cpu).unwrap();
    let noise = Tensor::randn(0f32, 0.1, (n, 3, 16, 16), &Device::Cpu).unwrap();
    let x = Tensor::cat(&[&base, &(&base + &noise).unwrap()], 0).unwrap();
    let labels: Vec<SampleLabel> = (0..n)
        .map(|i| {
            if i < 4 {
                SampleLabel::Id(0)
            } else {
                SampleLabel::Outlier(1 + (i % 2) as u16)
            }
        })
        .collect();
    let mut opt = Sgd::new(params::trainable_vars(&vm), 0.05, 0.9, 3e-4);
    let mut first = 0.0;
    let mut last = 0.0;
    for s in 0..steps {
        let out = model.forward_t(&x, true).unwrap();
        let loss = kind.loss(&out.z, &labels, 0.2).unwrap();
        let v = loss.to_scalar::<f32>().unwrap() as f64;
        if s == 0 {
            first = v;
        }
        last = v;
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    (first, last)
}

#[test]
fn every_loss_fits_a_fixed_batch() {
    for kind in [LossKind::Firm, LossKind::NtXent, LossKind::SupConStar] {
        let (first, last) = fit_fixed_batch(kind, 25);
        println!("{kind:?}: {first:.3} -> {last:.3}");
        assert!(last < 0.6 * first, "{kind:?}: {first:.3} -> {last:.3}");
    }
}

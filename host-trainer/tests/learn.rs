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

/// Without augmentation the two views are the same images, and a step runs the encoder on view 1
/// only (`train::embed_views`). Its loss and every parameter's gradient must be those of the
/// two-view pass over `[view 1; view 2]`, in training mode (BatchNorm with batch statistics).
#[test]
fn identical_views_run_once_with_the_two_view_gradients() {
    use std::sync::Arc;

    use firm_shared::preprocess::Normalization;
    use host_trainer::augment::Augmentation;
    use host_trainer::batch::{BatchConfig, Sampler};
    use host_trainer::data::images::ImageCache;
    use image::{Rgb, RgbImage};

    let images: Vec<Arc<RgbImage>> = (0..6u32)
        .map(|i| {
            Arc::new(RgbImage::from_fn(40, 40, |x, y| {
                Rgb([
                    (x * 5 + i * 17) as u8,
                    (y * 7 + i) as u8,
                    ((x ^ y) * 3) as u8,
                ])
            }))
        })
        .collect();
    let cache = Arc::new(ImageCache {
        paths: vec![Default::default(); images.len()],
        images,
    });
    let sampler = |augment| {
        Sampler::new(
            cache.clone(),
            "cutpaste,scar".parse().unwrap(),
            None,
            BatchConfig {
                size: 16,
                batch: 4,
                seed: 3,
                normalization: Normalization::default(),
                keep_images: false,
                augment,
            },
        )
        .unwrap()
    };
    assert!(
        !sampler(Augmentation::Simclr)
            .batch(0, 0)
            .unwrap()
            .identical_views,
        "augmented views differ and both go through the model"
    );
    let batch = sampler(Augmentation::None).batch(0, 0).unwrap();
    assert!(batch.identical_views);
    let half = batch.x.len() / 2;
    assert_eq!(batch.x[..half], batch.x[half..], "view 2 is view 1");

    let vm = VarMap::new();
    let model = FirmModel::new(
        &ModelConfig::tiny(Stem::Cifar),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    params::init_params(&vm, 5).unwrap();
    let vars = params::trainable_vars(&vm);
    let grads = |z: &Tensor| {
        let loss = LossKind::Firm.loss(z, &batch.labels, 0.2).unwrap();
        let g = loss.backward().unwrap();
        let per_var: Vec<Vec<f32>> = vars
            .iter()
            .map(|v| {
                g.get(v.1.as_tensor())
                    .expect("every trainable parameter has a gradient")
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        (loss.to_scalar::<f32>().unwrap(), per_var)
    };
    let full = model
        .forward_t(&batch.tensor(&Device::Cpu).unwrap(), true)
        .unwrap()
        .z;
    let (loss_full, g_full) = grads(&full);
    let once = host_trainer::train::embed_views(&model, &batch).unwrap();
    assert_eq!(once.dims(), full.dims());
    let (loss_once, g_once) = grads(&once);
    assert!(
        (loss_full - loss_once).abs() <= 1e-5 * loss_full.abs(),
        "loss {loss_full} (two views) vs {loss_once} (one)"
    );
    for (i, (a, b)) in g_full.iter().zip(&g_once).enumerate() {
        let scale = a.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 1e-3 * scale,
            "parameter {i}: gradients differ by {worst:e} (largest {scale:e})"
        );
    }
}

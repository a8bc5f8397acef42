//! Smoke run: the whole numeric path on generated images in seconds, on any machine.
//!
//! Generates good and defective parts ([`crate::data::synth`]), builds a tiny FIRM model, scores the
//! test images against a bank of good training images (cos_1, cos_5, KDE, center; AUROC of each),
//! trains a few FIRM steps on the trainer's own batches (groups [ID | CutPaste | Scar] per view,
//! SimCLR augmentations, both views in one pass, PyTorch SGD), and scores again. It proves the pieces fit together; it is not a training
//! recipe (that is `fit`).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::{FirmModel, ModelConfig, Stem, params};
use firm_shared::preprocess::{self, PreprocessSpec};
use firm_shared::score::{self, Bank, ScoreFn};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::batch::{BatchConfig, Sampler};
use crate::data::images::ImageCache;
use crate::data::synth::{self, SynthClass};
use crate::error::{Error, Result};
use crate::loss::LossKind;
use crate::optim::Sgd;
use crate::outliers::OutlierSpec;
use std::sync::Arc;

/// Settings of a smoke run (`host-trainer smoke --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct SmokeArgs {
    /// Model input side in pixels.
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// FIRM training steps between the two evaluations (0: score the random model only).
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Good images per step (each with a CutPaste and a scar outlier, two views of each).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Encoder width multiplier (1.0 = full ResNet-18).
    #[arg(long, default_value_t = 0.125)]
    pub width: f32,
    /// Learning rate (SGD, momentum 0.9, weight decay 3e-4).
    #[arg(long, default_value_t = 0.03)]
    pub lr: f64,
    /// Temperature of the FIRM loss.
    #[arg(long, default_value_t = 0.2)]
    pub tau: f64,
    /// Seed of the data, the initial weights and the augmentations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the generated test images to this folder (good_*.png, <defect>_*.png).
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

/// AUROC of each score function, before and after training.
#[derive(Debug, Clone)]
pub struct SmokeReport {
    pub scores: Vec<ScoreFn>,
    pub auroc_init: Vec<f64>,
    pub auroc_trained: Vec<f64>,
    pub losses: Vec<f64>,
}

const N_TRAIN: usize = 48;
const N_TEST_GOOD: usize = 16;
const N_TEST_BAD: usize = 18;
const SCORES: [ScoreFn; 4] = [
    ScoreFn::CosK { k: 1 },
    ScoreFn::CosK { k: 5 },
    ScoreFn::Kde,
    ScoreFn::Center,
];

pub fn run(args: &SmokeArgs) -> Result<SmokeReport> {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let spec = PreprocessSpec::new(args.size);
    // Render at the test transform's resize side, so the crop jitter has room.
    let side = spec.resize_side();
    let class = SynthClass::Bottle;
    let render = |defect: Option<&str>, rng: &mut ChaCha8Rng| {
        synth::render(class, side, defect, rng)
            .map(|(img, _mask)| img)
            .map_err(|e| Error::invalid("synthetic defect", e))
    };
    let train: Vec<RgbImage> = (0..N_TRAIN)
        .map(|_| render(None, &mut rng))
        .collect::<Result<_>>()?;
    let defects = class.defects();
    let mut test: Vec<(RgbImage, Option<&str>)> = Vec::new();
    for i in 0..N_TEST_GOOD + N_TEST_BAD {
        let defect = (i >= N_TEST_GOOD).then(|| defects[i % defects.len()]);
        test.push((render(defect, &mut rng)?, defect));
    }
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        for (i, (img, d)) in test.iter().enumerate() {
            let path = dir.join(format!("{}_{i:02}.png", d.unwrap_or("good")));
            img.save(&path)
                .map_err(|e| Error::io("write", &path)(std::io::Error::other(e)))?;
        }
    }
    let is_normal: Vec<bool> = test.iter().map(|(_, d)| d.is_none()).collect();

    let mut cfg = ModelConfig::tiny(Stem::Cifar);
    cfg.encoder = firm_shared::model::EncoderConfig::new(Stem::Cifar, args.width);
    cfg.validate()?;
    let varmap = VarMap::new();
    let model = FirmModel::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    params::init_params(&varmap, args.seed)?;

    let eval_inputs = |imgs: &[&RgbImage]| -> Result<Tensor> {
        let v = imgs
            .iter()
            .map(|i| spec.model_input(i))
            .collect::<firm_shared::Result<Vec<_>>>()?;
        Ok(preprocess::batch_tensor(&v, args.size, &dev)?)
    };
    let train_x = eval_inputs(&train.iter().collect::<Vec<_>>())?;
    let test_x = eval_inputs(&test.iter().map(|(i, _)| i).collect::<Vec<_>>())?;
    let evaluate = |model: &FirmModel| -> Result<(Vec<f64>, Vec<f64>)> {
        let bank_f: Vec<f32> = model
            .encoder
            .forward_t(&train_x, false)?
            .flatten_all()?
            .to_vec1()?;
        let test_f: Vec<f32> = model
            .encoder
            .forward_t(&test_x, false)?
            .flatten_all()?
            .to_vec1()?;
        let bank = Bank::from_raw(&bank_f, model.encoder.feature_dim())?;
        let mut aurocs = Vec::new();
        let mut cos1 = Vec::new();
        for f in SCORES {
            let s: Vec<f64> = bank
                .score_all(f, &test_f)?
                .into_iter()
                .map(f64::from)
                .collect();
            if f == SCORES[0] {
                cos1 = s.clone();
            }
            aurocs.push(score::auroc(&s, &is_normal)?);
        }
        Ok((aurocs, cos1))
    };
    let (auroc_init, _) = evaluate(&model)?;

    let mut opt = Sgd::new(params::trainable_vars(&varmap), args.lr, 0.9, 3e-4);
    let mut losses = Vec::with_capacity(args.steps);
    // The trainer's own batches: groups [ID | CutPaste | Scar] per view, SimCLR augmentations.
    let cache = ImageCache {
        paths: vec![Default::default(); train.len()],
        images: train.iter().cloned().map(Arc::new).collect(),
    };
    let sampler = Sampler::new(
        Arc::new(cache),
        OutlierSpec::mvtec_default(),
        None,
        BatchConfig {
            size: args.size,
            batch: args.batch.clamp(1, N_TRAIN),
            seed: args.seed,
            normalization: spec.normalization,
            keep_images: false,
            augment: crate::augment::Augmentation::Simclr,
        },
    )?;
    let per_epoch = sampler.batches_per_epoch();
    for step in 0..args.steps {
        let batch = sampler.batch(step / per_epoch, step % per_epoch)?;
        let out = model.forward_t(&batch.tensor(&dev)?, true)?;
        let loss = LossKind::Firm.loss(&out.z, &batch.labels, args.tau)?;
        losses.push(loss.to_scalar::<f32>()? as f64);
        opt.step(&loss.backward()?)?;
    }
    let (auroc_trained, cos1) = evaluate(&model)?;

    println!(
        "smoke run: {N_TRAIN} good training images, {N_TEST_GOOD} good + {N_TEST_BAD} defective test images, {} px, width {}",
        args.size, args.width
    );
    println!("cos_1 score per test image after training (higher = more normal):");
    for ((_, d), s) in test.iter().zip(&cos1) {
        println!("  {:<14} {s:.4}", d.unwrap_or("good"));
    }
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        println!(
            "FIRM loss: step 1 {first:.4} -> step {} {last:.4}",
            losses.len()
        );
    }
    println!(
        "{:<8} {:>12} {:>14}",
        "score", "AUROC init", "AUROC trained"
    );
    for (i, f) in SCORES.iter().enumerate() {
        println!(
            "{:<8} {:>12.4} {:>14.4}",
            f.to_string(),
            auroc_init[i],
            auroc_trained[i]
        );
    }
    Ok(SmokeReport {
        scores: SCORES.to_vec(),
        auroc_init,
        auroc_trained,
        losses,
    })
}

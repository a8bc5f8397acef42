//! `device-runtime selfcheck`: frames -> firm-shared preprocessing -> ResNet-18 -> kNN score,
//! timed per frame. Weights are random (seeded) and frames generated, so it runs anywhere.

use std::time::Instant;

use anyhow::{Result, ensure};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::{ResNet18, Stem, params};
use firm_shared::preprocess::{self, PreprocessSpec};
use firm_shared::score::{Bank, ScoreFn};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, clap::Args)]
pub struct SelfcheckArgs {
    /// Model input side in pixels.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Encoder stem: imagenet (7x7/2 + max-pool, fast) or cifar (3x3/1, the FIRM reference).
    #[arg(long, value_parser = ["imagenet", "cifar"], default_value = "imagenet")]
    pub stem: String,
    /// Encoder width multiplier (1.0 = ResNet-18).
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    /// Frames to time (after one warm-up frame).
    #[arg(long, default_value_t = 20)]
    pub frames: usize,
    /// Camera frame width in pixels; frames are resized and centre-cropped to the model input.
    #[arg(long, default_value_t = 640)]
    pub frame_width: u32,
    /// Camera frame height in pixels.
    #[arg(long, default_value_t = 480)]
    pub frame_height: u32,
}

pub fn run(a: &SelfcheckArgs) -> Result<()> {
    ensure!(a.frames >= 1, "--frames must be at least 1");
    let stem = if a.stem == "cifar" {
        Stem::Cifar
    } else {
        Stem::Imagenet
    };
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let enc = ResNet18::new(
        &firm_shared::model::ResNetConfig {
            stem,
            width: a.width,
            ..Default::default()
        },
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )?;
    params::init_params(&vm, 0)?;
    let spec = PreprocessSpec::new(a.size);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut frame = || {
        let phase: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        RgbImage::from_fn(a.frame_width, a.frame_height, |x, y| {
            let v = 128.0 + 100.0 * ((x as f32 * 0.05 + phase).sin() * (y as f32 * 0.03).cos());
            Rgb([v as u8, (255.0 - v) as u8, 90])
        })
    };
    let embed = |img: &RgbImage| -> Result<Vec<f32>> {
        let x = preprocess::batch_tensor(&[spec.model_input(img)?], a.size, &dev)?;
        Ok(enc.forward_t(&x, false)?.flatten_all()?.to_vec1()?)
    };
    let mut bank_rows = Vec::new();
    for _ in 0..8 {
        bank_rows.extend(embed(&frame())?);
    }
    let bank = Bank::from_raw(&bank_rows, enc.feature_dim())?;
    let mut ms = Vec::with_capacity(a.frames);
    let mut last = 0f32;
    for i in 0..=a.frames {
        let f = frame();
        let t = Instant::now();
        last = bank.score(ScoreFn::CosK { k: 1 }, &embed(&f)?)?;
        if i > 0 {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    ensure!(
        last.is_finite(),
        "the score is not finite: the numeric path is broken"
    );
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "selfcheck: {}x{} frames -> {} px, {} stem, width {}: latency p50 {:.1} ms, p99 {:.1} ms ({} frames), last cos_1 {last:.4}",
        a.frame_width,
        a.frame_height,
        a.size,
        a.stem,
        a.width,
        pct(0.5),
        pct(0.99),
        ms.len()
    );
    Ok(())
}

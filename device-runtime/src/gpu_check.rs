//! `device-runtime gpu-check`: what an integrator runs once on a new box with a GPU, from the one
//! binary, with no bundle and no network.
//!
//! 1. **Checks**, per backend: random bundles of both backbones (ResNet-18 and
//!    EfficientNet-Lite0, u8 and f32 activations, [`firm_shared::detect::synthetic`]) load on the
//!    backend, their features match the CPU executor's within the bundle's self-test tolerance
//!    (relative to each embedding's norm), and the bundle's own self-test passes there, as a flash
//!    would require.
//! 2. **Throughput**: ResNet-18 (ImageNet stem, full width, u8 activations) at 224 and 256 px,
//!    batch 1 and 8: per-batch latency (p50, p99) from preprocessed images to distances
//!    (normalise, upload, encoder, readback, kNN) and images per second. The CPU row is the
//!    yardstick; `peer_resnet18.py --device cuda` gives PyTorch eager on the same GPU.
//!
//! Exit status 1 when a check fails; a backend this build lacks or this box cannot run is
//! reported and skipped (it fails the command only when named with `--backend`).

use std::time::Instant;

use anyhow::{Result, bail, ensure};
use firm_shared::bundle::Bundle;
use firm_shared::detect::synthetic::{SyntheticSpec, pattern, random_bundle};
use firm_shared::detect::{Backend, Detector, Embedder, embed_views, embedder};
use firm_shared::model::efficientnet::Features;
use firm_shared::model::{EncoderConfig, Stem};
use image::RgbImage;
use rand::SeedableRng;
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct GpuCheckArgs {
    /// Backend to check (repeatable; default: every GPU backend this build has, plus the CPU
    /// for comparison).
    #[arg(long, value_parser = parse_backend)]
    pub backend: Vec<Backend>,
    /// Batches to time per configuration (after 3 untimed ones).
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub batches: usize,
    /// Input sizes of the throughput table.
    #[arg(long, default_values_t = [224u32, 256], num_args = 1.., value_name = "PX")]
    pub size: Vec<u32>,
    /// Batch sizes of the throughput table.
    #[arg(long, default_values_t = [1usize, 8], num_args = 1.., value_name = "N")]
    pub batch: Vec<usize>,
    /// Only the checks, no throughput table.
    #[arg(long)]
    pub checks_only: bool,
    /// Let wgpu take a software adapter (lavapipe, llvmpipe) too: checks the kernels on a box
    /// without a GPU. The `wgpu` and `auto` backends of the pipeline never do.
    #[arg(long)]
    pub any_adapter: bool,
    /// Print one JSON object instead of the tables.
    #[arg(long)]
    pub json: bool,
}

fn parse_backend(s: &str) -> std::result::Result<Backend, String> {
    s.parse::<Backend>().map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub backend: String,
    pub device: String,
    pub model: String,
    pub max_embedding_rel_err: f64,
    pub tolerance: f64,
    pub self_test_passed: bool,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeedRow {
    pub backend: String,
    pub device: String,
    pub input_size: u32,
    pub batch: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub images_per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GpuCheckReport {
    pub checks: Vec<CheckRow>,
    pub skipped: Vec<String>,
    pub throughput: Vec<SpeedRow>,
}

fn check_models() -> Vec<(EncoderConfig, bool)> {
    vec![
        (EncoderConfig::new(Stem::Imagenet, 0.25), true),
        (EncoderConfig::new(Stem::Cifar, 0.125), false),
        (EncoderConfig::efficientnet(Features::Stage5), true),
        (EncoderConfig::efficientnet(Features::Head), false),
    ]
}

fn synthetic(encoder: EncoderConfig, size: u32, int8: bool) -> Result<Bundle> {
    Ok(random_bundle(&SyntheticSpec {
        encoder,
        size,
        score: "cos_1".parse()?,
        int8_activations: int8,
        bank: 64,
        seed: 7,
    })?)
}

/// Features of the self-test images on `e`, normalised as the bundle prescribes.
fn features(bundle: &Bundle, e: &mut dyn Embedder) -> Result<Vec<f32>> {
    let norm = &bundle.manifest.preprocess.normalization;
    Ok(embed_views(e, norm, &bundle.selftest.images(), 0)?)
}

/// `backend`'s embedder; with `any_adapter`, wgpu may run on a software adapter.
fn make(bundle: &Bundle, backend: Backend, any_adapter: bool) -> Result<Box<dyn Embedder + Send>> {
    #[cfg(feature = "wgpu")]
    if backend == Backend::Wgpu && any_adapter {
        use firm_shared::exec::wgpu::adapter::AdapterPolicy;
        return Ok(Box::new(firm_shared::detect::WgpuEmbedder::with_policy(
            bundle,
            AdapterPolicy::Any,
        )?));
    }
    let _ = any_adapter;
    Ok(embedder(bundle, backend)?)
}

/// One backend against the CPU executor on one random bundle.
fn check(bundle: &Bundle, backend: Backend, any_adapter: bool) -> Result<CheckRow> {
    let m = &bundle.manifest;
    let mut cpu = embedder(bundle, Backend::Cpu)?;
    let mut gpu = make(bundle, backend, any_adapter)?;
    let (want, got) = (features(bundle, &mut *cpu)?, features(bundle, &mut *gpu)?);
    let dim = m.model.feature_dim;
    let mut worst = 0f64;
    for (w, g) in want.chunks(dim).zip(got.chunks(dim)) {
        let norm = w
            .iter()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        let err = w
            .iter()
            .zip(g)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .fold(0f64, f64::max);
        worst = worst.max(if err.is_nan() {
            f64::INFINITY
        } else {
            err / norm
        });
    }
    let tolerance = m.selftest.tolerance.embedding_rel;
    let device = gpu.device();
    let st = Detector::new(bundle, gpu)?.self_test(bundle)?;
    Ok(CheckRow {
        backend: backend.to_string(),
        device,
        model: format!(
            "{} at {} px, {} activations",
            m.model.encoder.describe(),
            m.model.input_size,
            if m.model.activations.is_empty() {
                "f32"
            } else {
                "u8"
            }
        ),
        max_embedding_rel_err: worst,
        tolerance,
        self_test_passed: st.passed,
        passed: st.passed && worst <= tolerance,
    })
}

fn speed(
    bundle: &Bundle,
    backend: Backend,
    any_adapter: bool,
    batch: usize,
    batches: usize,
) -> Result<SpeedRow> {
    let mut det = Detector::new(bundle, make(bundle, backend, any_adapter)?)?;
    let device = det.embedder().device();
    let side = bundle.manifest.model.input_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let images: Vec<RgbImage> = (0..batch).map(|_| pattern(side, side, &mut rng)).collect();
    for _ in 0..3 {
        det.score_preprocessed(&images)?;
    }
    let mut ms = Vec::with_capacity(batches);
    let start = Instant::now();
    for _ in 0..batches {
        let t = Instant::now();
        std::hint::black_box(det.score_preprocessed(&images)?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let wall = start.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    Ok(SpeedRow {
        backend: backend.to_string(),
        device,
        input_size: side,
        batch,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        images_per_s: (batch * batches) as f64 / wall,
    })
}

/// Every check and (unless `checks_only`) the throughput table.
pub fn gpu_check(a: &GpuCheckArgs) -> Result<GpuCheckReport> {
    ensure!(a.batches >= 1, "--batches must be at least 1");
    ensure!(
        a.batch.iter().all(|&b| b >= 1),
        "--batch must be at least 1"
    );
    let named = !a.backend.is_empty();
    let backends = if named {
        a.backend.clone()
    } else {
        vec![Backend::Wgpu, Backend::Cuda]
    };
    let mut r = GpuCheckReport::default();
    let mut usable = Vec::new();
    for &b in &backends {
        if b == Backend::Cpu {
            usable.push(b);
            continue;
        }
        for (encoder, int8) in check_models() {
            let bundle = synthetic(encoder, 64, int8)?;
            match check(&bundle, b, a.any_adapter) {
                Ok(row) => r.checks.push(row),
                Err(e) if named => bail!("{b}: {e:#}"),
                Err(e) => {
                    r.skipped.push(format!("{b}: {e:#}"));
                    break;
                }
            }
        }
        if r.checks.iter().any(|c| c.backend == b.name()) {
            usable.push(b);
        }
    }
    if !usable.contains(&Backend::Cpu) {
        usable.insert(0, Backend::Cpu);
    }
    if !a.checks_only {
        for &side in &a.size {
            let bundle = synthetic(EncoderConfig::new(Stem::Imagenet, 1.0), side, true)?;
            for &b in &usable {
                for &batch in &a.batch {
                    r.throughput
                        .push(speed(&bundle, b, a.any_adapter, batch, a.batches)?);
                }
            }
        }
    }
    Ok(r)
}

pub fn print(r: &GpuCheckReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("report serialises"));
        return;
    }
    for s in &r.skipped {
        println!("skipped {s}");
    }
    if !r.checks.is_empty() {
        println!(
            "| backend | device | model | max embedding error | tolerance | self-test | check |"
        );
        println!("|---|---|---|---|---|---|---|");
        for c in &r.checks {
            println!(
                "| {} | {} | {} | {:.2e} | {:.0e} | {} | {} |",
                c.backend,
                c.device,
                c.model,
                c.max_embedding_rel_err,
                c.tolerance,
                if c.self_test_passed {
                    "passed"
                } else {
                    "FAILED"
                },
                if c.passed { "ok" } else { "FAILED" }
            );
        }
    }
    if !r.throughput.is_empty() {
        println!("\nResNet-18 (ImageNet stem, u8 activations), preprocessed images to distances:");
        println!("| backend | device | px | batch | p50 ms | p99 ms | images/s |");
        println!("|---|---|---|---|---|---|---|");
        for s in &r.throughput {
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} |",
                s.backend, s.device, s.input_size, s.batch, s.p50_ms, s.p99_ms, s.images_per_s
            );
        }
    }
}

/// `device-runtime gpu-check`.
pub fn run(a: &GpuCheckArgs) -> Result<()> {
    let r = gpu_check(a)?;
    print(&r, a.json);
    let failed = r.checks.iter().filter(|c| !c.passed).count();
    ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

//! `device-runtime gpu-check`: what an integrator runs once on a new box with a GPU, from the one
//! binary, with no bundle and no network.
//!
//! 1. **Checks**, per backend: random bundles of both backbones (ResNet-18 and
//!    EfficientNet-Lite0, u8 and f32 activations, [`firm_shared::detect::synthetic`]) load on the
//!    backend, their features match the CPU executor's within the bundle's self-test tolerance
//!    (relative to each embedding's norm), and the bundle's own self-test passes there, as a flash
//!    would require. wgpu is checked with each kernel variant the adapter runs (column
//!    `kernels`): the default, int8 by `dot4I8Packed` and by shifts, and f16 convolutions where
//!    the adapter has `SHADER_F16`; f16 rows are held to the f16 tolerances
//!    ([`firm_shared::exec::wgpu::options::F16_EMBEDDING_REL`]), since the exporter's 1e-4 is
//!    tighter than f16 rounds. A variant that changes no kernel of a model (f16 on a u8 bundle
//!    whose every dense convolution is int8, dot4 on an f32 bundle) is not repeated.
//! 2. **Throughput**: ResNet-18 (ImageNet stem, full width) at 224 and 256 px, batch 1 and 8:
//!    per-batch latency (p50, p99) from preprocessed images to distances (normalise, upload,
//!    encoder, readback, kNN) and images per second, with u8 activations (wgpu: int8 by shifts
//!    and by dot4) and, when the adapter has f16, with f32 activations too (wgpu: f32 and f16), so
//!    one table says which kernels are faster on this GPU. The CPU rows are the yardstick;
//!    `peer_resnet18.py --device cuda` gives PyTorch eager on the same GPU.
//!
//! Exit status 1 when a check fails; a backend this build lacks or this box cannot run is
//! reported and skipped (it fails the command only when named with `--backend`).
//!
//! On lavapipe (`--any-adapter`, Mesa 22.3: SHADER_F16 and native `OpSDot`) every variant runs
//! and passes its check. `--any-adapter --size 64 --batch 1 --batches 2` on the 2-core Zen 4 dev
//! machine, loaded by other builds, Dec 2026, p50 per frame of full-width ResNet-18 at 64 px:
//! int8 shift 8.96 s, int8 dot4 2.30 s, f32 8.67 s, f16 6.76 s (the CPU executor: 11.8 ms u8,
//! 18.1 ms f32). That is LLVM emulating a GPU on the CPU, not a GPU figure: it shows that every
//! variant runs, not which one a GPU runs faster.

use std::time::Instant;

use anyhow::{Result, bail, ensure};
use firm_shared::bundle::Bundle;
use firm_shared::bundle::manifest::Tolerance;
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
    /// The kernels that ran (wgpu: `f32 + int8 dot4`, ...; `default` elsewhere).
    pub kernels: String,
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
    pub kernels: String,
    pub device: String,
    pub input_size: u32,
    /// `u8` or `f32`.
    pub activations: String,
    pub batch: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub images_per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GpuCheckReport {
    /// What each GPU backend's adapter can run (wgpu: f16, dot4 native or polyfilled).
    pub capabilities: Vec<String>,
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

/// One way of running a backend: its default kernels, or (wgpu) a chosen kernel plan.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    Default,
    #[cfg(feature = "wgpu")]
    Wgpu(firm_shared::exec::wgpu::WgpuOptions),
}

/// An embedder made for one variant.
struct Made {
    embedder: Box<dyn Embedder + Send>,
    /// What the `kernels` column says.
    kernels: String,
    /// Some convolution runs f16 (held to the f16 tolerances).
    f16: bool,
    /// Which kernel runs how many convolutions: two variants with the same one run the same
    /// code on this bundle (f16 where every dense convolution is int8, ...), and only the first
    /// gets a row.
    signature: String,
}

/// The variants of `backend` to check and time, and a line on what its adapter can run.
fn variants(backend: Backend, any_adapter: bool) -> (Vec<Variant>, Option<String>) {
    #[cfg(feature = "wgpu")]
    if backend == Backend::Wgpu {
        use firm_shared::exec::wgpu::{
            AdapterPolicy, ConvPrecision, Dot4Support, Int8Kernel, WgpuOptions, pick_adapter,
        };
        let policy = if any_adapter {
            AdapterPolicy::Any
        } else {
            AdapterPolicy::RealGpu
        };
        // No adapter: the check itself reports why.
        let Ok(gpu) = pick_adapter(policy) else {
            return (vec![Variant::Default], None);
        };
        let c = gpu.caps;
        let opts = |precision, int8| Variant::Wgpu(WgpuOptions { precision, int8 });
        let mut v = vec![opts(ConvPrecision::F32, Int8Kernel::ShiftUnpack)];
        if c.dot4 != Dot4Support::Unavailable {
            v.push(opts(ConvPrecision::F32, Int8Kernel::Dot4));
        }
        if c.shader_f16 {
            v.push(opts(ConvPrecision::F16, Int8Kernel::ShiftUnpack));
        }
        let line = format!(
            "wgpu on {}: SHADER_F16 {}, dot4I8Packed {}, default kernels {}",
            gpu.info.name,
            if c.shader_f16 { "yes" } else { "no" },
            match c.dot4 {
                Dot4Support::Native => "native (OpSDot)",
                Dot4Support::Polyfilled => "polyfilled by naga",
                Dot4Support::Unavailable => "unavailable",
            },
            WgpuOptions::default()
                .resolve(&c)
                .map_or_else(|e| e.to_string(), |p| p.to_string())
        );
        return (v, Some(line));
    }
    let _ = (backend, any_adapter);
    (vec![Variant::Default], None)
}

/// `backend`'s embedder for `variant`; with `any_adapter`, wgpu may run on a software adapter.
fn make(bundle: &Bundle, backend: Backend, any_adapter: bool, variant: Variant) -> Result<Made> {
    #[cfg(feature = "wgpu")]
    if backend == Backend::Wgpu && (any_adapter || variant != Variant::Default) {
        use firm_shared::exec::wgpu::{AdapterPolicy, WgpuOptions};
        let policy = if any_adapter {
            AdapterPolicy::Any
        } else {
            AdapterPolicy::RealGpu
        };
        let options = match variant {
            Variant::Wgpu(o) => o,
            Variant::Default => WgpuOptions::default(),
        };
        let e = firm_shared::detect::WgpuEmbedder::with_options(bundle, policy, options)?;
        let x = e.executor();
        let (plan, k) = (x.plan(), x.conv_kernels());
        // Name only the kernels this bundle runs: the precision where some dense convolution
        // is not int8, the int8 kernel where some is; the default plan would run the same.
        let default = WgpuOptions::default().resolve(&x.gpu().caps)?;
        let (float, int8) = (k.f32 + k.f16 > 0, k.int8() > 0);
        let mut parts = Vec::new();
        if float || !int8 {
            parts.push(if plan.f16 { "f16" } else { "f32" });
        }
        if int8 {
            parts.push(if plan.dot4 { "int8 dot4" } else { "int8 shift" });
        }
        let is_default =
            (!float || plan.f16 == default.f16) && (!int8 || plan.dot4 == default.dot4);
        return Ok(Made {
            kernels: format!(
                "{}{}",
                parts.join(" + "),
                if is_default { " (default)" } else { "" }
            ),
            f16: k.f16 > 0,
            signature: format!("{k:?}"),
            embedder: Box::new(e),
        });
    }
    let _ = (any_adapter, variant);
    Ok(Made {
        embedder: embedder(bundle, backend)?,
        kernels: "default".into(),
        f16: false,
        signature: String::new(),
    })
}

/// Widens `t` to the f16 tolerances (only wgpu builds run f16 convolutions).
fn f16_tolerance(t: &mut Tolerance) {
    #[cfg(feature = "wgpu")]
    {
        use firm_shared::exec::wgpu::options::{F16_DISTANCE_ABS, F16_EMBEDDING_REL};
        t.embedding_rel = t.embedding_rel.max(F16_EMBEDDING_REL);
        t.distance_abs = t.distance_abs.max(F16_DISTANCE_ABS);
    }
    let _ = t;
}

/// One backend variant against the CPU executor on one random bundle; `None` when a variant
/// with the same `signature` (in `seen`) ran already.
fn check(
    bundle: &Bundle,
    backend: Backend,
    any_adapter: bool,
    variant: Variant,
    seen: &mut Vec<String>,
) -> Result<Option<CheckRow>> {
    let m = &bundle.manifest;
    let made = make(bundle, backend, any_adapter, variant)?;
    if seen.contains(&made.signature) {
        return Ok(None);
    }
    seen.push(made.signature.clone());
    let mut gpu = made.embedder;
    let mut cpu = embedder(bundle, Backend::Cpu)?;
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
    // f16 rounds beyond the exporter's tolerance: held to the f16 one, the self-test too.
    let mut held = bundle.clone();
    if made.f16 {
        f16_tolerance(&mut held.manifest.selftest.tolerance);
    }
    let tolerance = held.manifest.selftest.tolerance.embedding_rel;
    let device = gpu.device();
    let st = Detector::new(bundle, gpu)?.self_test(&held)?;
    Ok(Some(CheckRow {
        backend: backend.to_string(),
        kernels: made.kernels,
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
    }))
}

/// Latency and throughput of one backend variant at each batch size; none when a variant with
/// the same `signature` (in `seen`) ran already.
fn speed(
    bundle: &Bundle,
    backend: Backend,
    any_adapter: bool,
    variant: Variant,
    batches: usize,
    seen: &mut Vec<String>,
    batch_sizes: &[usize],
) -> Result<Vec<SpeedRow>> {
    let made = make(bundle, backend, any_adapter, variant)?;
    if seen.contains(&made.signature) {
        return Ok(Vec::new());
    }
    seen.push(made.signature.clone());
    let mut det = Detector::new(bundle, made.embedder)?;
    let device = det.embedder().device();
    let side = bundle.manifest.model.input_size;
    let activations = if bundle.manifest.model.activations.is_empty() {
        "f32"
    } else {
        "u8"
    };
    let mut rows = Vec::with_capacity(batch_sizes.len());
    for &batch in batch_sizes {
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
        rows.push(SpeedRow {
            backend: backend.to_string(),
            kernels: made.kernels.clone(),
            device: device.clone(),
            input_size: side,
            activations: activations.into(),
            batch,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            images_per_s: (batch * batches) as f64 / wall,
        });
    }
    Ok(rows)
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
    let mut usable: Vec<(Backend, Vec<Variant>)> = Vec::new();
    for &b in &backends {
        if b == Backend::Cpu {
            usable.push((b, vec![Variant::Default]));
            continue;
        }
        let (vs, caps) = variants(b, a.any_adapter);
        r.capabilities.extend(caps);
        'models: for (encoder, int8) in check_models() {
            let bundle = synthetic(encoder, 64, int8)?;
            let mut seen = Vec::new();
            for &v in &vs {
                match check(&bundle, b, a.any_adapter, v, &mut seen) {
                    Ok(row) => r.checks.extend(row),
                    Err(e) if named => bail!("{b}: {e:#}"),
                    Err(e) => {
                        r.skipped.push(format!("{b}: {e:#}"));
                        break 'models;
                    }
                }
            }
        }
        if r.checks.iter().any(|c| c.backend == b.name()) {
            usable.push((b, vs));
        }
    }
    if !usable.iter().any(|(b, _)| *b == Backend::Cpu) {
        usable.insert(0, (Backend::Cpu, vec![Variant::Default]));
    }
    if !a.checks_only {
        // f32 activations only matter where some variant runs them differently (f16).
        let f16 = r.checks.iter().any(|c| c.kernels.starts_with("f16"));
        let activations: &[bool] = if f16 { &[true, false] } else { &[true] };
        for &side in &a.size {
            for &int8 in activations {
                let bundle = synthetic(EncoderConfig::new(Stem::Imagenet, 1.0), side, int8)?;
                for (b, vs) in &usable {
                    let mut seen = Vec::new();
                    for &v in vs {
                        r.throughput.extend(speed(
                            &bundle,
                            *b,
                            a.any_adapter,
                            v,
                            a.batches,
                            &mut seen,
                            &a.batch,
                        )?);
                    }
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
    for c in &r.capabilities {
        println!("{c}");
    }
    if !r.checks.is_empty() {
        println!(
            "| backend | device | kernels | model | max embedding error | tolerance | self-test \
             | check |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for c in &r.checks {
            println!(
                "| {} | {} | {} | {} | {:.2e} | {:.0e} | {} | {} |",
                c.backend,
                c.device,
                c.kernels,
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
        println!("\nResNet-18 (ImageNet stem), preprocessed images to distances:");
        println!(
            "| backend | device | kernels | px | activations | batch | p50 ms | p99 ms | images/s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for s in &r.throughput {
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.0} |",
                s.backend,
                s.device,
                s.kernels,
                s.input_size,
                s.activations,
                s.batch,
                s.p50_ms,
                s.p99_ms,
                s.images_per_s
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

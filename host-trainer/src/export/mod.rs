//! `host-trainer export --run DIR --key KEY --out FILE`: a run's checkpoint as a signed bundle
//! (DESIGN sections 4 and 6; format in `firm_shared::bundle`).
//!
//! 1. Fold every BatchNorm into its convolution and quantize to int8 per output channel.
//! 2. Build the ID bank (f16, one per rotation angle of the score) and thumbnails **with the
//!    quantized path**, the one the device runs, so bank and queries come from the same graph.
//! 3. Score the held-out good images (and the defective ones, when any) on that path; calibrate
//!    the threshold from the good ones only ([`firm_shared::calibrate`]); with defects, AUROC, the
//!    F1-optimal threshold and the confusion matrix at the chosen threshold.
//!    The drift sentinel's reference goes into the manifest's `drift` section: brightness,
//!    contrast, colour and focus quantiles of the good training images and the quantiles of the
//!    calibration distances ([`firm_shared::drift`]).
//! 4. Compare with the float model on the same test images: AUROC drop and Spearman rank
//!    correlation of the scores.
//! 5. Self-test: the expected embeddings and distances of at least 8 preprocessed images come
//!    from the reference path ([`firm_shared::detect::reference`]).
//! 6. Sign, then read the bytes back, verify them and run the self-test on the CPU path exactly as
//!    a device would; only then write the file (atomically), and the report beside the run.

pub mod provenance;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use firm_shared::bundle::manifest::{
    self, BankSection, Manifest, ModelSection, Provenance, ScoreSection, SelfTestCase,
    SelfTestSection, TestMetrics, ThresholdSection, Tolerance, WeightsSection,
};
use firm_shared::bundle::{BankData, Bundle, EncoderWeights, Limits, SelfTestData, weights};
use firm_shared::calibrate::{self, CalibrationSpec};
use firm_shared::detect::{CpuEmbedder, Detector};
use firm_shared::drift::{DriftSection, FrameStats};
use firm_shared::model::graph::Graph;
use firm_shared::preprocess::{self, PreprocessSpec, ResizeFilter};
use firm_shared::score;
use firm_shared::score::patch::{PatchLayout, PatchSpec, coreset};
use image::RgbImage;
use tracing::info;

use crate::error::{Error, Result};
use crate::eval::{self, EvalImages};
use crate::run::RunDir;

pub use report::{ExportReport, print_summary};

/// Self-test tolerances, stated in every manifest. The reference and the bundle path compute
/// the same function in f32 with different rounding (folded vs separate BatchNorm, an f32 bias
/// from an f64 fold). Measured (max over the 8 cases): bottle, full width: embedding 5e-8
/// relative, distance 1.2e-7; bottle, half width: 1.4e-7 and 4.2e-7; demo grid at width 1/16:
/// 5.6e-6 and 2.7e-6. The distance tolerance is what a verdict can feel: it stays below a tenth of
/// the calibrated bottle threshold (2.7e-4), with about 4x headroom over the worst case measured
/// and 100x over full-width models for other backends' summation order. A wrong fold, scale or
/// layout errs by more than 1e-2.
pub const EMBEDDING_TOLERANCE: f64 = 1e-4;
pub const DISTANCE_TOLERANCE: f64 = 1e-5;
const TOLERANCE_WHY: &str = "f32 reference (unfolded graph, dequantized weights) against the folded \
    graph: measured at most 5.6e-6 (embedding, relative) and 2.7e-6 (distance), 1e-7 on full-width \
    models; 1e-5 stays below a tenth of a calibrated bottle threshold (2.7e-4); a wrong fold, scale \
    or layout errs by more than 1e-2";

/// Layers kept in f32 by default (none: int8 everywhere measured within the quality targets).
pub const DEFAULT_FLOAT_LAYERS: &[&str] = &[];

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Run folder written by `host-trainer fit`.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Private key written by `host-trainer keygen` (DIR/bundle.key).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Bundle file to write (replaced atomically: the old file stays until the new one is
    /// complete).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Checkpoint to export (default: the latest).
    #[arg(long, value_name = "NAME")]
    pub checkpoint: Option<String>,
    /// False-reject rate the threshold is calibrated for (share of good parts flagged).
    #[arg(long, default_value_t = 0.005, value_name = "RATE")]
    pub target_frr: f64,
    /// Confidence at which the false-reject rate must hold (over the draw of calibration images).
    #[arg(long, default_value_t = 0.9, value_name = "P")]
    pub confidence: f64,
    /// Version devices compare for anti-downgrade (default: the current Unix time in seconds).
    #[arg(long, value_name = "N")]
    pub bundle_version: Option<u64>,
    /// Layers to keep in f32 instead of int8, comma-separated convolution names (e.g. conv1).
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    pub float_layers: Option<Vec<String>>,
    /// Activations the convolutions read: int8 (u8 per tensor, calibrated on the good training
    /// images; the device's int8 kernels) or f32.
    #[arg(long, value_enum, default_value_t = Activations::Int8, value_name = "TYPE")]
    pub activations: Activations,
    /// Images in the self-test (at least 8).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub selftest: usize,
    /// Side of the thumbnail stored per bank entry, in pixels.
    #[arg(long, default_value_t = 64, value_name = "PX")]
    pub thumbnail: u32,
    /// Patch bank budget: the coreset of good patch features the device's heat maps (and the
    /// patch score, in runs trained with `--score patch`) compare against; 0 leaves patch
    /// scoring out of the bundle (no heat maps on the device). Default: the backbone's (1,536
    /// entries for EfficientNet-Lite0, 1,024 for ResNet), sized to keep patch scoring within
    /// 30 % of the encoder's time on the device CPU.
    #[arg(long, value_name = "N")]
    pub patch_bank: Option<usize>,
    /// Export a fine-tuned checkpoint (a run started from --init weights) even though it scores
    /// below the weights it started from.
    #[arg(long)]
    pub accept_regression: bool,
}

/// A fine-tuned run's checkpoint that scores below its start: (start, checkpoint) image AUROC
/// of the run's score, from the run's own evaluations (metrics.jsonl). None for runs trained
/// from scratch, checkpoints without an evaluation, or no loss.
pub fn regression(run: &RunDir, checkpoint: &str) -> Result<Option<(f64, f64)>> {
    let cfg = run.read_config()?;
    if cfg.init.is_none() {
        return Ok(None);
    }
    let metrics = run.metrics()?;
    let auroc = |name: &str| {
        metrics
            .iter()
            .filter(|m| m["kind"] == "eval" && m["score"] == cfg.score.to_string())
            .filter(|m| m["checkpoint"] == name)
            .find_map(|m| m["image_auroc"].as_f64())
    };
    Ok(match (auroc("init"), auroc(checkpoint)) {
        (Some(start), Some(now)) if now < start => Some((start, now)),
        _ => None,
    })
}

/// What the convolutions' inputs are stored as on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Activations {
    /// u8 with a per-tensor scale and zero point, wherever an int8-weight convolution reads.
    Int8,
    /// f32 everywhere.
    F32,
}

/// Indices spread evenly over `0..n`, at most `k` of them.
fn spread(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    (0..k).map(|i| i * n / k).collect()
}

/// Which images the self-test carries: half good test images, half defective ones, topped up
/// with training images; names and labels for the manifest.
fn selftest_cases(imgs: &EvalImages, want: usize, rel: &[String]) -> Vec<(RgbImage, SelfTestCase)> {
    let n_train = imgs.train.len();
    let good: Vec<usize> = (0..imgs.test.len())
        .filter(|&i| imgs.defect[i].is_none())
        .collect();
    let bad: Vec<usize> = (0..imgs.test.len())
        .filter(|&i| imgs.defect[i].is_some())
        .collect();
    let mut out = Vec::new();
    let n_bad = (want / 2).min(bad.len());
    let n_good = (want - n_bad).min(good.len());
    for &j in spread(good.len(), n_good).iter().map(|&i| &good[i]) {
        out.push((
            imgs.test[j].clone(),
            SelfTestCase {
                name: rel[n_train + j].clone(),
                label: "good".into(),
            },
        ));
    }
    for &j in spread(bad.len(), n_bad).iter().map(|&i| &bad[i]) {
        out.push((
            imgs.test[j].clone(),
            SelfTestCase {
                name: rel[n_train + j].clone(),
                label: "defective".into(),
            },
        ));
    }
    for i in spread(n_train, want.saturating_sub(out.len())) {
        out.push((
            imgs.train[i].clone(),
            SelfTestCase {
                name: rel[i].clone(),
                label: "train".into(),
            },
        ));
    }
    out
}

/// Export a run as a signed bundle; returns what was measured.
pub fn run(args: &ExportArgs, cwd: &Path) -> Result<ExportReport> {
    let spec = CalibrationSpec {
        target_frr: args.target_frr,
        confidence: args.confidence,
    };
    spec.validate()?;
    if args.selftest < 8 {
        return Err(Error::invalid(
            "--selftest",
            format!("{} is below the minimum of 8 images", args.selftest),
        ));
    }
    if !(8..=256).contains(&args.thumbnail) {
        return Err(Error::invalid(
            "--thumbnail",
            format!("{} px is outside 8..=256", args.thumbnail),
        ));
    }
    let key = crate::keys::read_signing_key(&args.key)?;
    let run = RunDir::open(&args.run)?;
    let cfg = run.read_config()?;
    let enc = cfg.model.encoder.clone();
    let graph = enc.graph();
    if cfg.score.ensemble.uses_crops() {
        return Err(Error::invalid(
            "export",
            format!(
                "the run's score {} uses the crop ensemble (10 random crops per frame), which \
                 bundles do not carry; retrain with --score cos_1 or cos_1+rot",
                cfg.score
            ),
        ));
    }
    let checkpoint = run.checkpoint_or_latest(args.checkpoint.as_deref())?;
    if let Some((start, now)) = regression(&run, &checkpoint)?
        && !args.accept_regression
    {
        return Err(Error::invalid(
            "export",
            format!(
                "checkpoint {checkpoint} scores image AUROC {now:.4}, below the {start:.4} of the \
                --init weights it was fine-tuned from: fine-tuning made the detector worse. \
                Export the start instead (fit --epochs 0 with the same --init), retrain, or pass \
                --accept-regression"
            ),
        ));
    }
    let state = run.read_state(&checkpoint)?;
    let weights_path = run.weights(&checkpoint);

    // 1. Fold and quantize.
    info!(
        "{}: folding BatchNorm and quantizing checkpoint {checkpoint}",
        run.root.display()
    );
    let tensors = candle_core::safetensors::load(&weights_path, &candle_core::Device::Cpu)
        .map_err(|e| Error::invalid("checkpoint", format!("{}: {e}", weights_path.display())))?;
    let float_layers: Vec<String> = args
        .float_layers
        .clone()
        .unwrap_or_else(|| DEFAULT_FLOAT_LAYERS.iter().map(|s| s.to_string()).collect());
    let get = |name: &str| -> firm_shared::Result<Vec<f32>> {
        let t = tensors
            .get(name)
            .ok_or_else(|| firm_shared::Error::Weights {
                path: weights_path.clone(),
                reason: format!("missing tensor `{name}`"),
            })?;
        Ok(t.flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?)
    };
    let (qweights, floats) = EncoderWeights::fold_and_quantize(&graph, get, &float_layers)?;

    // 2. Data, bank and thumbnails on the quantized path.
    let ds = cfg.data.open(cwd)?;
    info!(
        "{}: {} training images, {} test images",
        ds.origin,
        ds.train.len(),
        ds.test.len()
    );
    let imgs = EvalImages::for_run(&ds, &cfg)?;
    if imgs.n_good() == 0 {
        return Err(Error::invalid(
            "export",
            format!(
                "{} has no held-out good images: the threshold is calibrated on them (MVTec: \
                 test/good; plain folders: --test-good or the --holdout share)",
                ds.origin
            ),
        ));
    }
    let all_paths: Vec<PathBuf> = imgs
        .train_paths
        .iter()
        .chain(&imgs.test_paths)
        .cloned()
        .collect();
    let (dataset_sha256, rel) = provenance::dataset_hash(&all_paths)?;
    let pre = PreprocessSpec {
        normalization: enc.normalization(),
        ..PreprocessSpec::new(cfg.size)
    };
    let angles = cfg.score.ensemble.angles();
    let activations = match args.activations {
        Activations::Int8 => {
            info!(
                "calibrating u8 activations on {} good training images",
                imgs.train.len()
            );
            firm_shared::model::graph::calibrate::calibrate(
                &graph,
                &qweights,
                &pre,
                &imgs.train,
                angles,
            )?
        }
        Activations::F32 => Vec::new(),
    };
    let act_quant = activations.iter().map(|a| (a.tensor, a.quant())).collect();
    let mut quantized = CpuEmbedder::from_weights(&graph, &qweights, &act_quant, cfg.size)?;
    info!(
        "bank: {} good training images x {} angle(s) on the int8 path",
        imgs.train.len(),
        angles.len()
    );
    let raw = angles
        .iter()
        .map(|&a| {
            firm_shared::detect::embed_views(&mut quantized, &pre.normalization, &imgs.train, a)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let thumb = args.thumbnail;
    let thumbs: Vec<RgbImage> = imgs
        .train
        .iter()
        .map(|i| preprocess::resize_center_square(i, thumb, ResizeFilter::Bilinear))
        .collect::<firm_shared::Result<_>>()?;
    let dim = enc.feature_dim();
    let mut bank = BankData::new(dim, angles, &raw, &thumbs, thumb)?;
    let patch_spec = patch_spec(&graph, &cfg, args.patch_bank)?;
    if let Some(p) = &patch_spec {
        let layout = PatchLayout::new(&graph, p, cfg.size as usize)?;
        info!(
            "patch bank: taps {} ({}x{} grid, {}-d) of {} good training images on the int8 path",
            p.taps.join("+"),
            layout.gh,
            layout.gw,
            layout.dim,
            imgs.train.len()
        );
        let all = firm_shared::detect::patch_features(
            &mut quantized,
            &layout,
            &pre.normalization,
            &imgs.train,
        )?;
        let rows: Vec<f32> = coreset(&all, layout.dim, p.bank, cfg.seed)
            .iter()
            .flat_map(|&i| all[i * layout.dim..][..layout.dim].iter().copied())
            .collect();
        bank = bank.with_patch(&rows, layout.dim)?;
    }
    let patch_verdict = cfg.patch.is_some();

    // 3. The bundle path's distances; calibration on the good ones.
    info!("scoring {} test images on the int8 path", imgs.test.len());
    let det = Detector::from_parts(pre.clone(), cfg.score, &bank, quantized)?;
    let mut det = match (&patch_spec, bank.patch_rows()) {
        (Some(p), Some(rows)) => det.with_patch(&graph, p, rows, patch_verdict)?,
        _ => det,
    };
    let (scored, _) = det.score_preprocessed(&imgs.test)?;
    let q_dist: Vec<f64> = scored.iter().map(|s| s.distance).collect();
    let is_defect: Vec<bool> = imgs.defect.iter().map(Option::is_some).collect();
    let good_d: Vec<f64> = q_dist
        .iter()
        .zip(&is_defect)
        .filter(|(_, d)| !**d)
        .map(|(v, _)| *v)
        .collect();
    let cal = calibrate::conformal_threshold(&good_d, &spec)?;
    let patch_section = match &patch_spec {
        Some(p) => {
            let good_p: Vec<f64> = scored
                .iter()
                .zip(&is_defect)
                .filter(|(_, d)| !**d)
                .filter_map(|(s, _)| s.patch)
                .collect();
            let thr = calibrate::conformal_threshold(&good_p, &spec)?;
            Some(manifest::PatchSection::calibrated(
                p,
                &bank,
                patch_verdict,
                &good_p,
                thr.distance,
            ))
        }
        None => None,
    };
    // The drift sentinel's reference: the good training images' statistics after the test
    // transform (what the device computes per frame) and the calibration distances' tail.
    let train_stats: Vec<FrameStats> = imgs
        .train
        .iter()
        .map(|i| FrameStats::of(i.as_raw(), cfg.size))
        .collect();
    let drift = DriftSection::new(&train_stats, &good_d, spec.confidence)?;
    let has_defects = imgs.n_bad() > 0;
    let mut operating_points = BTreeMap::from([("calibrated".to_string(), cal.distance)]);
    let test = if has_defects {
        let f1 = calibrate::f1_optimal(&q_dist, &is_defect)?;
        operating_points.insert("f1-optimal".into(), f1.threshold);
        let normal: Vec<bool> = is_defect.iter().map(|d| !d).collect();
        let neg: Vec<f64> = q_dist.iter().map(|d| -d).collect();
        Some(TestMetrics {
            n_good: imgs.n_good(),
            n_defective: imgs.n_bad(),
            auroc: score::auroc(&neg, &normal)?,
            f1_optimal: f1,
            confusion: calibrate::confusion(&q_dist, &is_defect, cal.distance),
        })
    } else {
        None
    };

    // 4. Float model on the same images.
    info!("scoring them with the float model");
    // On the CPU: the self-test's reference values must be what the device's CPU path computes.
    let model = crate::report::load_model(&cfg, &run, &checkpoint, &candle_core::Device::Cpu)?;
    let float = eval::evaluate(&model, enc.normalization(), &imgs, &[cfg.score], cfg.seed)?;
    let f_dist: Vec<f64> = float[&cfg.score.to_string()]
        .scores
        .iter()
        .map(|&s| manifest::distance_of(s))
        .collect();
    let spearman = if q_dist.len() >= 2 {
        score::spearman(&q_dist, &f_dist).ok()
    } else {
        None
    };
    let float_auroc = float[&cfg.score.to_string()].auroc;
    let mut metrics = BTreeMap::new();
    if let (Some(fa), Some(t)) = (float_auroc, &test) {
        metrics.insert("float-auroc".into(), fa);
        metrics.insert("quantized-auroc".into(), t.auroc);
        metrics.insert("auroc-drop-points".into(), 100.0 * (fa - t.auroc));
    }
    if let Some(r) = spearman {
        metrics.insert("spearman-quantized-vs-float".into(), r);
    }

    // 5. Self-test from the reference path.
    info!("self-test expectations on the reference path");
    let cases = selftest_cases(&imgs, args.selftest, &rel);
    let case_imgs: Vec<RgbImage> = cases.iter().map(|c| c.0.clone()).collect();
    let mut refe = firm_shared::detect::reference::ReferenceEmbedder::new(
        &graph, cfg.size, &qweights, &floats, &act_quant,
    )?;
    let ref_det = Detector::from_parts(pre.clone(), cfg.score, &bank, &mut refe)?;
    let mut ref_det = match (&patch_spec, bank.patch_rows()) {
        (Some(p), Some(rows)) => ref_det.with_patch(&graph, p, rows, patch_verdict)?,
        _ => ref_det,
    };
    let (ref_scored, ref_feats) = ref_det.score_preprocessed(&case_imgs)?;
    let selftest = SelfTestData {
        size: cfg.size,
        dim,
        images: case_imgs.iter().flat_map(|i| i.as_raw().clone()).collect(),
        embeddings: ref_feats,
        distances: ref_scored.iter().map(|s| s.distance as f32).collect(),
        patch_scores: patch_spec.as_ref().map(|_| {
            ref_scored
                .iter()
                .map(|s| s.patch.unwrap_or(f64::NAN) as f32)
                .collect()
        }),
    };
    let tolerance = Tolerance {
        embedding_rel: EMBEDDING_TOLERANCE,
        distance_abs: DISTANCE_TOLERANCE,
        patch_rel: manifest::PATCH_TOLERANCE,
        why: TOLERANCE_WHY.into(),
    };

    if cal.distance < 10.0 * DISTANCE_TOLERANCE {
        tracing::warn!(
            "the calibrated threshold {:.3e} is less than 10x the self-test distance tolerance \
             {DISTANCE_TOLERANCE:e}: backends within tolerance may still disagree on verdicts near it",
            cal.distance
        );
    }
    let float_layers = qweights.float_layers();
    let manifest = Manifest {
        schema_version: manifest::SCHEMA_VERSION,
        bundle_version: args.bundle_version.unwrap_or_else(unix_seconds),
        product_class: ds.name.clone(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        model: ModelSection {
            encoder: enc.clone(),
            graph: graph.clone(),
            feature_dim: dim,
            input_size: cfg.size,
            weights: WeightsSection {
                bn_folded: true,
                scheme: weights::SCHEME.into(),
                float_layers_reason: if float_layers.is_empty() {
                    "none: int8 everywhere kept the AUROC drop and rank correlation within target (see provenance.metrics)".into()
                } else {
                    "chosen with --float-layers".into()
                },
                float_layers,
                head_exported: false,
            },
            activations,
        },
        preprocess: pre,
        score: ScoreSection::new(cfg.score),
        threshold: ThresholdSection {
            distance: cal.distance,
            operating_point: "calibrated".into(),
            operating_points,
            method: format!(
                "conformal order statistic: rank {} of the {} held-out good images' distances, the \
                 smallest rank whose false-reject rate is at most {} with probability {} (binomial bound)",
                cal.rank, cal.n_calibration, spec.target_frr, spec.confidence
            ),
            calibration: cal.clone(),
            calibration_images: format!("{} held-out good images of {}", imgs.n_good(), ds.origin),
            test,
        },
        bank: BankSection {
            entries: imgs.train.len(),
            angles: angles.to_vec(),
            dtype: "f16 residuals from an f32 mean row".into(),
            thumbnail_size: thumb,
            sources: rel[..imgs.train.len()].to_vec(),
        },
        selftest: SelfTestSection {
            cases: cases.into_iter().map(|c| c.1).collect(),
            tolerance,
            reference: if act_quant.is_empty() {
                "host: the graph unfolded on candle (convolution, then BatchNorm) with the dequantized weights unfolded again".into()
            } else {
                "host: the graph's int8 semantics on candle (integer convolutions in f64, the same f32 epilogue steps)".into()
            },
        },
        provenance: Provenance {
            dataset: ds.origin.clone(),
            dataset_sha256,
            n_train: imgs.train.len(),
            config: serde_json::to_value(&cfg).expect("config serialises"),
            git_revision: provenance::GIT_REVISION.into(),
            trainer_version: env!("CARGO_PKG_VERSION").into(),
            checkpoint: checkpoint.clone(),
            epoch: state.epoch,
            step: state.global_step,
            metrics,
        },
        patch: patch_section,
        drift: Some(drift),
        members: BTreeMap::new(),
    };
    let bundle = Bundle {
        manifest,
        encoder: qweights,
        bank,
        selftest,
    };

    // 6. Sign, read back as a device would, self-test, write.
    info!("signing, reading back and self-testing on the CPU path");
    let limits = Limits::default();
    let bytes = bundle.to_bytes(&key, &limits)?;
    let back = Bundle::open(&bytes, &key.verifying_key(), &limits)?;
    let selftest_report = back.self_test_cpu()?;
    selftest_report.check()?;
    if let Some(dir) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    }
    firm_shared::fsutil::write_atomic(&args.out, &bytes)?;
    let report = ExportReport::new(
        &back.manifest,
        &args.out,
        bytes.len(),
        &selftest_report,
        float_auroc,
        spearman,
    );
    let test_names = &rel[imgs.train.len()..];
    report::write(&run, &report, test_names, &q_dist, &is_defect)?;
    Ok(report)
}

/// The patch spec a bundle carries: the run's own when it was trained with `--score patch`,
/// else the graph's default taps with the export's budget (`None` when the budget is 0).
fn patch_spec(
    graph: &Graph,
    cfg: &crate::config::FitConfig,
    budget: Option<usize>,
) -> Result<Option<PatchSpec>> {
    if let Some(p) = &cfg.patch {
        return Ok(Some(p.clone()));
    }
    if budget == Some(0) {
        return Ok(None);
    }
    match PatchSpec::for_graph(graph) {
        Ok(p) => Ok(Some(PatchSpec {
            bank: budget.unwrap_or(p.bank),
            ..p
        })),
        Err(e) => {
            tracing::warn!("no heat maps in this bundle: {e}");
            Ok(None)
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

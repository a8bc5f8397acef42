//! A complete bundle with random weights, made in memory: for timing a backbone on a box before
//! any training (`device-runtime selfcheck`), for benchmarks and for tests that need a real
//! bundle of realistic size without a trainer run.
//!
//! Everything is built as the exporter builds it, on procedurally drawn images (smooth colour
//! patterns, so activations have realistic ranges): fold and quantize the random encoder,
//! calibrate u8 activations when asked, the bank on the CPU backend, the self-test from the
//! reference path ([`super::reference`]), the threshold from held-out images of the same kind.
//! Nothing here is a trained detector: its distances mean nothing.

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

use super::reference::ReferenceEmbedder;
use super::{CpuEmbedder, Detector, Embedder};
use crate::bundle::manifest::{
    self, BankSection, Manifest, ModelSection, Provenance, ScoreSection, SelfTestCase,
    SelfTestSection, ThresholdSection, Tolerance, WeightsSection,
};
use crate::bundle::{BankData, Bundle, EncoderWeights, SelfTestData, weights};
use crate::calibrate::{self, CalibrationSpec};
use crate::model::graph::calibrate::calibrate;
use crate::model::{Encoder, EncoderConfig, params};
use crate::preprocess::{self, PreprocessSpec, ResizeFilter};
use crate::score::ScoreSpec;
use crate::score::patch::{PatchLayout, PatchSpec, coreset};

/// What to build.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub encoder: EncoderConfig,
    pub size: u32,
    pub score: ScoreSpec,
    /// u8 activations (the int8 kernels) or f32 everywhere.
    pub int8_activations: bool,
    /// Bank entries.
    pub bank: usize,
    pub seed: u64,
}

/// A smooth random colour pattern of `w x h` pixels.
pub fn pattern(w: u32, h: u32, rng: &mut impl Rng) -> RgbImage {
    let f: [f32; 6] = std::array::from_fn(|_| rng.random_range(0.01..0.12));
    let ph: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..std::f32::consts::TAU));
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as f32, y as f32);
        let c = |i: usize| {
            let v = (x * f[2 * i] + ph[i]).sin() * (y * f[2 * i + 1] - ph[i]).cos();
            (127.5 + 110.0 * v) as u8
        };
        Rgb([c(0), c(1), c(2)])
    })
}

/// Images of the model's input size.
fn images(n: usize, size: u32, rng: &mut impl Rng) -> Vec<RgbImage> {
    (0..n).map(|_| pattern(size, size, rng)).collect()
}

/// The bundle `spec` describes.
pub fn random_bundle(spec: &SyntheticSpec) -> crate::Result<Bundle> {
    build(spec, None)
}

/// The bundle `spec` describes, also scoring patches with `patch` (`verdict`: the patch score
/// decides).
pub fn random_bundle_with_patch(
    spec: &SyntheticSpec,
    patch: &PatchSpec,
    verdict: bool,
) -> crate::Result<Bundle> {
    build(spec, Some((patch, verdict)))
}

/// A small bundle that scores patches, as the device's heat-map, overlay and browser tests use
/// it: ResNet-18 at width 0.25 (ImageNet stem), 128 px, cos_1, u8 activations, 24 bank entries,
/// the backbone's default taps with a 512-row patch bank (`verdict`: the patch score decides).
pub fn small_patch_bundle(seed: u64, verdict: bool) -> crate::Result<Bundle> {
    let spec = SyntheticSpec {
        encoder: EncoderConfig::new(crate::model::Stem::Imagenet, 0.25),
        size: 128,
        score: "cos_1".parse()?,
        int8_activations: true,
        bank: 24,
        seed,
    };
    let patch = PatchSpec {
        bank: 512,
        ..PatchSpec::for_graph(&spec.encoder.graph())?
    };
    random_bundle_with_patch(&spec, &patch, verdict)
}

fn build(spec: &SyntheticSpec, patch: Option<(&PatchSpec, bool)>) -> crate::Result<Bundle> {
    let enc = &spec.encoder;
    enc.validate()?;
    let vm = VarMap::new();
    Encoder::new(enc, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    params::init_params(&vm, spec.seed)?;
    params::randomize_batchnorm(&vm, spec.seed + 1)?;
    let graph = enc.graph();
    let get = |name: &str| -> crate::Result<Vec<f32>> {
        let v = params::find(&vm, name).ok_or_else(|| {
            crate::Error::invalid("synthetic bundle", format!("no parameter `{name}`"))
        })?;
        Ok(v.as_tensor().flatten_all()?.to_vec1()?)
    };
    let (w, floats) = EncoderWeights::fold_and_quantize(&graph, get, &[])?;
    let pre = PreprocessSpec {
        normalization: enc.normalization(),
        ..PreprocessSpec::new(spec.size)
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed + 2);
    let train = images(spec.bank.max(1), spec.size, &mut rng);
    let held_out = images(8, spec.size, &mut rng);
    let angles = spec.score.ensemble.angles();
    let activations = if spec.int8_activations {
        calibrate(&graph, &w, &pre, &train[..train.len().min(16)], angles)?
    } else {
        Vec::new()
    };
    let act: BTreeMap<_, _> = activations.iter().map(|a| (a.tensor, a.quant())).collect();
    let mut emb = CpuEmbedder::from_weights(&graph, &w, &act, spec.size)?;
    let dim = emb.feature_dim();
    let raw = angles
        .iter()
        .map(|&a| super::embed_views(&mut emb, &pre.normalization, &train, a))
        .collect::<Result<Vec<_>, _>>()?;
    let thumb = 16;
    let thumbs = train
        .iter()
        .map(|i| preprocess::resize_center_square(i, thumb, ResizeFilter::Bilinear))
        .collect::<crate::Result<Vec<_>>>()?;
    let mut bank = BankData::new(dim, angles, &raw, &thumbs, thumb)?;
    if let Some((p, _)) = patch {
        let layout = PatchLayout::new(&graph, p, spec.size as usize)?;
        let all = super::patch_features(&mut emb, &layout, &pre.normalization, &train)?;
        let rows: Vec<f32> = coreset(&all, layout.dim, p.bank, spec.seed)
            .iter()
            .flat_map(|&i| all[i * layout.dim..][..layout.dim].iter().copied())
            .collect();
        bank = bank.with_patch(&rows, layout.dim)?;
    }
    let with_patch = |d: Detector<_>| -> crate::Result<_> {
        Ok(match (patch, bank.patch_rows()) {
            (Some((p, verdict)), Some(rows)) => d.with_patch(&graph, p, rows, verdict)?,
            _ => d,
        })
    };
    let mut det = with_patch(Detector::from_parts(pre.clone(), spec.score, &bank, emb)?)?;
    let (held, _) = det.score_preprocessed(&held_out)?;
    let dist: Vec<f64> = held.iter().map(|s| s.distance).collect();
    let cal = calibrate::conformal_threshold(&dist, &CalibrationSpec::default())?;
    let patch_section = match patch {
        Some((p, verdict)) => {
            let scores: Vec<f64> = held.iter().filter_map(|s| s.patch).collect();
            let thr = calibrate::conformal_threshold(&scores, &CalibrationSpec::default())?;
            Some(manifest::PatchSection::calibrated(
                p,
                &bank,
                verdict,
                &scores,
                thr.distance,
            ))
        }
        None => None,
    };
    let mut refe = ReferenceEmbedder::new(&graph, spec.size, &w, &floats, &act)?;
    let ref_det = Detector::from_parts(pre.clone(), spec.score, &bank, &mut refe)?;
    let mut ref_det = match (patch, bank.patch_rows()) {
        (Some((p, verdict)), Some(rows)) => ref_det.with_patch(&graph, p, rows, verdict)?,
        _ => ref_det,
    };
    let (ref_scored, ref_feats) = ref_det.score_preprocessed(&held_out)?;
    let manifest = Manifest {
        schema_version: manifest::SCHEMA_VERSION,
        bundle_version: 1,
        product_class: "synthetic".into(),
        created: "1970-01-01T00:00:00Z".into(),
        model: ModelSection {
            encoder: enc.clone(),
            graph,
            feature_dim: dim,
            input_size: spec.size,
            weights: WeightsSection {
                bn_folded: true,
                scheme: weights::SCHEME.into(),
                float_layers: vec![],
                float_layers_reason: "none".into(),
                head_exported: false,
            },
            activations,
        },
        preprocess: pre,
        score: ScoreSection::new(spec.score),
        threshold: ThresholdSection {
            distance: cal.distance,
            operating_point: "calibrated".into(),
            operating_points: BTreeMap::from([("calibrated".into(), cal.distance)]),
            method: "conformal, on random patterns".into(),
            calibration: cal,
            calibration_images: "8 random patterns".into(),
            test: None,
        },
        bank: BankSection {
            entries: train.len(),
            angles: angles.to_vec(),
            dtype: "f16 residuals from an f32 mean row".into(),
            thumbnail_size: thumb,
            sources: (0..train.len()).map(|i| format!("pattern-{i}")).collect(),
        },
        selftest: SelfTestSection {
            cases: (0..held_out.len())
                .map(|i| SelfTestCase {
                    name: format!("pattern-{i}"),
                    label: "good".into(),
                })
                .collect(),
            tolerance: Tolerance {
                embedding_rel: 1e-4,
                distance_abs: 1e-5,
                patch_rel: manifest::PATCH_TOLERANCE,
                why: "as the exporter's".into(),
            },
            reference: "the reference path".into(),
        },
        provenance: Provenance {
            dataset: "random patterns (device-runtime selfcheck)".into(),
            dataset_sha256: "0".repeat(64),
            n_train: train.len(),
            config: serde_json::json!({ "seed": spec.seed }),
            git_revision: "none".into(),
            trainer_version: env!("CARGO_PKG_VERSION").into(),
            checkpoint: "random initialisation".into(),
            epoch: 0,
            step: 0,
            metrics: BTreeMap::new(),
        },
        patch: patch_section,
        drift: None,
        members: BTreeMap::new(),
    };
    Ok(Bundle {
        manifest,
        encoder: w,
        bank,
        selftest: SelfTestData {
            size: spec.size,
            dim,
            images: held_out.iter().flat_map(|i| i.as_raw().clone()).collect(),
            embeddings: ref_feats,
            distances: ref_scored.iter().map(|s| s.distance as f32).collect(),
            patch_scores: patch.map(|_| {
                ref_scored
                    .iter()
                    .map(|s| s.patch.unwrap_or(f64::NAN) as f32)
                    .collect()
            }),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stem;
    use crate::model::efficientnet::Features;

    #[test]
    fn random_bundles_pass_their_self_test_and_survive_the_file_format() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        for (encoder, size, int8) in [
            (EncoderConfig::new(Stem::Imagenet, 0.125), 64, true),
            (EncoderConfig::new(Stem::Cifar, 0.0625), 32, false),
            (EncoderConfig::efficientnet(Features::Stage5), 64, true),
        ] {
            let b = random_bundle(&SyntheticSpec {
                encoder,
                size,
                score: "cos_1+rot".parse().unwrap(),
                int8_activations: int8,
                bank: 12,
                seed: 4,
            })
            .unwrap();
            assert_eq!(b.manifest.model.activations.is_empty(), !int8);
            let limits = crate::bundle::Limits::default();
            let bytes = b.to_bytes(&key, &limits).unwrap();
            let back = Bundle::open(&bytes, &key.verifying_key(), &limits).unwrap();
            let r = back.self_test_cpu().unwrap();
            assert!(r.passed, "{r:?}");
        }
    }

    /// The CPU backend without its feature maps, as a GPU backend is.
    #[derive(Debug)]
    struct NoTaps(CpuEmbedder);

    impl Embedder for NoTaps {
        fn name(&self) -> &str {
            "no-taps"
        }
        fn feature_dim(&self) -> usize {
            self.0.feature_dim()
        }
        fn embed_into(
            &mut self,
            inputs: &[f32],
            n: usize,
            out: &mut [f32],
        ) -> Result<(), crate::bundle::BundleError> {
            self.0.embed_into(inputs, n, out)
        }
    }

    #[test]
    fn patch_bundles_reproduce_their_patch_scores_and_refuse_a_changed_patch_bank() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        for (encoder, int8, verdict) in [
            (EncoderConfig::new(Stem::Imagenet, 0.125), true, true),
            (EncoderConfig::efficientnet(Features::Stage5), false, false),
        ] {
            let spec = SyntheticSpec {
                encoder,
                size: 64,
                score: "cos_1".parse().unwrap(),
                int8_activations: int8,
                bank: 6,
                seed: 5,
            };
            let graph = spec.encoder.graph();
            let patch = PatchSpec {
                bank: 100,
                ..PatchSpec::for_graph(&graph).unwrap()
            };
            let b = random_bundle_with_patch(&spec, &patch, verdict).unwrap();
            let p = b.manifest.patch.clone().unwrap();
            assert_eq!((p.entries, p.verdict), (100, verdict));
            assert_eq!(b.selftest.patch_scores.as_ref().map(Vec::len), Some(8));
            let limits = crate::bundle::Limits::default();
            let bytes = b.to_bytes(&key, &limits).unwrap();
            let back = Bundle::open(&bytes, &key.verifying_key(), &limits).unwrap();
            let r = back.self_test_cpu().unwrap();
            assert!(r.passed && r.max_patch_rel_err.is_some(), "{r:?}");
            // The map is at the input size, its maximum is the patch score, and the verdict's
            // distance is the patch score exactly when the bundle says so.
            let mut det = Detector::cpu(&back).unwrap();
            let img = back.selftest.image(0).unwrap();
            let s = det.score_image(&img).unwrap();
            let map = det.map().unwrap();
            assert_eq!((map.w, map.h), (64, 64));
            assert_eq!(map.max().0 as f64, s.patch.unwrap());
            assert_eq!(s.distance == s.patch.unwrap(), verdict, "{s:?}");
            // A backend without feature maps (the GPU ones) runs the bundle without heat maps
            // and passes the rest of the self-test; it refuses a bundle whose verdict needs them.
            let plain = Detector::new(&back, NoTaps(CpuEmbedder::new(&back).unwrap()));
            if verdict {
                let e = plain.unwrap_err().to_string();
                assert!(e.contains("cpu backend"), "{e}");
            } else {
                let mut d = plain.unwrap();
                assert!(d.score_image(&img).unwrap().patch.is_none() && d.map().is_none());
                assert!(d.self_test(&back).unwrap().passed);
            }
            // A changed patch bank changes the scores: the self-test catches it.
            let mut bad = back.clone();
            if let Some(rows) = &mut bad.bank.patch {
                for v in std::sync::Arc::make_mut(rows).iter_mut() {
                    *v = half::f16::from_f32(v.to_f32() * 1.05 + 0.01);
                }
            }
            let r = Detector::cpu(&bad).unwrap().self_test(&bad).unwrap();
            assert!(!r.passed, "{r:?}");
        }
    }
}

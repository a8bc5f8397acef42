//! `manifest.json`: what a bundle is, how to run it and where it came from (serde, kebab-case,
//! unknown fields refused). The reader checks `schema-version` before anything else, so a bundle
//! from a newer trainer is refused with that reason rather than as a confusing field error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BundleError;
use crate::calibrate::{ConformalThreshold, Confusion, F1Point};
use crate::model::EncoderConfig;
use crate::model::graph::{Graph, TensorId};
use crate::preprocess::PreprocessSpec;
use crate::quant::ActivationQuant;
use crate::score::{Ensemble, ScoreFn, ScoreSpec};

/// The manifest schema this build writes and reads. 2: the model section carries the encoder
/// graph, per-backbone encoder settings and the activation quantization.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    /// Increases with every export of a product line; devices refuse a lower one unless forced
    /// (anti-downgrade). Default: the export's Unix time in seconds.
    pub bundle_version: u64,
    pub product_class: String,
    /// Export time, RFC 3339 UTC.
    pub created: String,
    pub model: ModelSection,
    pub preprocess: PreprocessSpec,
    pub score: ScoreSection,
    pub threshold: ThresholdSection,
    pub bank: BankSection,
    pub selftest: SelfTestSection,
    pub provenance: Provenance,
    /// Patch scoring (issue 17): the patch bank's shape and how maps are made and shown; absent
    /// in bundles that score whole images only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchSection>,
    /// The good training images' statistics and the calibration distances' quantiles, for the
    /// device's drift sentinel ([`crate::drift`]); absent in bundles exported before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::drift::DriftSection>,
    /// Size and SHA-256 of every other member (the manifest cannot list itself).
    pub members: BTreeMap<String, MemberInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModelSection {
    /// The trained encoder's settings (backbone and its own fields), for reports.
    pub encoder: EncoderConfig,
    /// The folded encoder every executor runs ([`crate::model::graph`]); the weights member holds
    /// exactly its convolutions.
    pub graph: Graph,
    pub feature_dim: usize,
    pub input_size: u32,
    pub weights: WeightsSection,
    /// Tensors quantized to u8 where a dense convolution reads them (the int8 path), calibrated
    /// on the good training images; empty: every convolution reads f32 activations.
    pub activations: Vec<TensorQuant>,
}

/// The u8 quantization of one tensor of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TensorQuant {
    pub tensor: TensorId,
    pub scale: f32,
    pub zero_point: u8,
}

impl TensorQuant {
    pub fn new(tensor: TensorId, q: ActivationQuant) -> Self {
        Self {
            tensor,
            scale: q.scale,
            zero_point: q.zero_point,
        }
    }

    pub fn quant(&self) -> ActivationQuant {
        ActivationQuant {
            scale: self.scale,
            zero_point: self.zero_point,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WeightsSection {
    /// Always true: every BatchNorm is folded into the convolution before it.
    pub bn_folded: bool,
    /// `int8-symmetric-per-output-channel`: `i8` weights in [-127, 127], one f32 scale per
    /// output channel, f32 biases.
    pub scheme: String,
    /// Layers kept in f32 instead (by convolution name), and why.
    pub float_layers: Vec<String>,
    pub float_layers_reason: String,
    /// The projection head is never exported.
    pub head_exported: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScoreSection {
    /// e.g. `cos_1` or `cos_1+rot`.
    pub spec: ScoreSpec,
    pub function: ScoreFn,
    pub ensemble: Ensemble,
    /// How the exposed distance follows from the score: `1 - score` (higher = less normal).
    pub distance: String,
}

impl ScoreSection {
    pub fn new(spec: ScoreSpec) -> Self {
        Self {
            spec,
            function: spec.f,
            ensemble: spec.ensemble,
            distance: DISTANCE_DEFINITION.into(),
        }
    }
}

/// The self-test's default patch-score tolerance: the int8 and f32 paths' patch scores agree
/// to well under 1e-3 of the score on the bundles of `shared/tests` (the map's maximum moves
/// with the features' relative error).
pub const PATCH_TOLERANCE: f64 = 2e-3;

fn default_patch_rel() -> f64 {
    PATCH_TOLERANCE
}

/// The distance every bundle exposes.
pub const DISTANCE_DEFINITION: &str =
    "1 - score (for cos_k: the cosine distance to the nearest good images; higher = less normal)";

/// Distance from normal of a score (higher score = more normal).
pub fn distance_of(score: f64) -> f64 {
    1.0 - score
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ThresholdSection {
    /// A frame is flagged when its distance is above this value (the active operating point).
    pub distance: f64,
    /// Name of the active operating point in `operating-points`.
    pub operating_point: String,
    /// Named thresholds (distance) the device may switch between without retraining.
    pub operating_points: BTreeMap<String, f64>,
    /// How the threshold was chosen, in words.
    pub method: String,
    pub calibration: ConformalThreshold,
    /// Which images the calibration used.
    pub calibration_images: String,
    /// On the test images, when defective ones exist.
    pub test: Option<TestMetrics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TestMetrics {
    pub n_good: usize,
    pub n_defective: usize,
    /// Image AUROC of the bundle's own (quantized) path.
    pub auroc: f64,
    pub f1_optimal: F1Point,
    /// At the active operating point.
    pub confusion: Confusion,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BankSection {
    pub entries: usize,
    /// Rotation angle (quarter turns) of each bank, in member order: `[0]`, or `[0, 1, 2, 3]` for
    /// the rotation ensemble.
    pub angles: Vec<u8>,
    /// How the rows are stored: f16 residuals from an f32 mean row, rows L2-normalised.
    pub dtype: String,
    /// Side of the square RGB thumbnail stored per entry.
    pub thumbnail_size: u32,
    /// Source file of each entry (relative to the dataset), for the nearest-good-image display.
    pub sources: Vec<String>,
}

/// The patch score: a patch bank of good features (`bank.safetensors`: `patch`, F16
/// `[entries, dim]`), the anomaly map of every frame, and whether it decides the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PatchSection {
    pub spec: crate::score::patch::PatchSpec,
    pub entries: usize,
    pub dim: usize,
    /// True: a frame's distance is its patch score (the map's maximum) and the threshold was
    /// calibrated on it; false: the map is shown as evidence, the image score decides.
    pub verdict: bool,
    /// The heat map's colour scale: map values at or below `low` stay uncoloured (the held-out
    /// good images' median patch score), `high` is the hottest colour (the patch threshold
    /// plus its distance from `low`).
    pub low: f32,
    pub high: f32,
    /// The patch score a frame is flagged above when `verdict` is false (calibrated the same
    /// way as the image threshold): the heat map's boxes and the overlay use it.
    pub threshold: f32,
}

impl PatchSection {
    /// The manifest's patch section: the colour scale runs from the held-out good images' median
    /// patch score to the threshold plus its distance from that median.
    pub fn calibrated(
        spec: &crate::score::patch::PatchSpec,
        bank: &super::BankData,
        verdict: bool,
        good_scores: &[f64],
        threshold: f64,
    ) -> Self {
        let mut s = good_scores.to_vec();
        s.sort_by(f64::total_cmp);
        let low = s.get(s.len() / 2).copied().unwrap_or(0.0).min(threshold);
        let high = threshold + (threshold - low).max(threshold.abs() * 0.1).max(1e-6);
        Self {
            spec: spec.clone(),
            entries: bank
                .patch
                .as_ref()
                .map_or(0, |p| p.len() / bank.patch_dim.max(1)),
            dim: bank.patch_dim,
            verdict,
            low: low as f32,
            high: high as f32,
            threshold: threshold as f32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SelfTestSection {
    pub cases: Vec<SelfTestCase>,
    pub tolerance: Tolerance,
    /// What computed the expected values.
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SelfTestCase {
    pub name: String,
    /// `good`, `defective` or `train`.
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Tolerance {
    /// Max |embedding - expected| over all components, relative to the expected embedding's L2
    /// norm.
    pub embedding_rel: f64,
    /// Max |distance - expected|.
    pub distance_abs: f64,
    /// Max |patch score - expected| relative to the expected score (bundles that score
    /// patches).
    #[serde(default = "default_patch_rel")]
    pub patch_rel: f64,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Provenance {
    /// The dataset as the trainer named it.
    pub dataset: String,
    /// SHA-256 over the sorted (relative path, file SHA-256) pairs of every image used.
    pub dataset_sha256: String,
    pub n_train: usize,
    /// The run's resolved training configuration (config.json).
    pub config: serde_json::Value,
    /// Source revision of the trainer that exported the bundle.
    pub git_revision: String,
    pub trainer_version: String,
    pub checkpoint: String,
    pub epoch: usize,
    pub step: usize,
    /// Named figures: float and quantized AUROC, their Spearman correlation, ...
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MemberInfo {
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    /// Parse, checking `schema-version` first.
    pub fn from_json(bytes: &[u8]) -> Result<Self, BundleError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::manifest(format!("not JSON: {e}")))?;
        let version = value
            .get("schema-version")
            .ok_or_else(|| BundleError::manifest("no `schema-version` field"))?;
        let found = version
            .as_u64()
            .ok_or_else(|| BundleError::manifest("`schema-version` is not a whole number"))?;
        if found < SCHEMA_VERSION as u64 {
            return Err(BundleError::OutdatedSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found != SCHEMA_VERSION as u64 {
            return Err(BundleError::UnknownSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let m: Manifest =
            serde_json::from_value(value).map_err(|e| BundleError::manifest(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// Rules serde cannot express.
    fn check(&self) -> Result<(), BundleError> {
        let bad = |why: String| Err(BundleError::manifest(why));
        let t = &self.threshold;
        if !t.distance.is_finite() {
            return bad("threshold.distance is not a finite number".into());
        }
        match t.operating_points.get(&t.operating_point) {
            Some(&d) if d == t.distance => {}
            Some(&d) => {
                return bad(format!(
                    "threshold.distance {} differs from operating point {:?} ({d})",
                    t.distance, t.operating_point
                ));
            }
            None => {
                return bad(format!(
                    "threshold.operating-point {:?} is not in operating-points",
                    t.operating_point
                ));
            }
        }
        if let Err(e) = self.preprocess.validate() {
            return bad(e.to_string());
        }
        if self.preprocess.size != self.model.input_size || self.model.input_size == 0 {
            return bad(format!(
                "preprocess.size {} differs from model.input-size {}",
                self.preprocess.size, self.model.input_size
            ));
        }
        let g = &self.model.graph;
        match g.feature_dim() {
            Ok(d) if d == self.model.feature_dim => {}
            Ok(d) => {
                return bad(format!(
                    "model.feature-dim {} differs from the graph's output ({d})",
                    self.model.feature_dim
                ));
            }
            Err(e) => return bad(format!("model.graph: {e}")),
        }
        let side = self.model.input_size as usize;
        if let Err(e) = g.shapes(side, side) {
            return bad(format!("model.graph at {side} px: {e}"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.model.activations {
            if a.tensor >= g.tensors() || !seen.insert(a.tensor) {
                return bad(format!(
                    "model.activations: tensor {} is repeated or not in the graph",
                    a.tensor
                ));
            }
            if let Err(e) = a.quant().validate() {
                return bad(format!("model.activations, tensor {}: {e}", a.tensor));
            }
        }
        if self.model.feature_dim != self.model.encoder.feature_dim() {
            return bad(format!(
                "model.feature-dim {} does not match the encoder ({})",
                self.model.feature_dim,
                self.model.encoder.feature_dim()
            ));
        }
        if self.score.spec
            != (ScoreSpec {
                f: self.score.function,
                ensemble: self.score.ensemble,
            })
        {
            return bad("score.spec contradicts score.function / score.ensemble".into());
        }
        if self.score.ensemble.uses_crops() {
            return bad("the crop ensemble is not supported in bundles".into());
        }
        if self.bank.angles != self.score.ensemble.angles() {
            return bad(format!(
                "bank.angles {:?} do not fit the score {}",
                self.bank.angles, self.score.spec
            ));
        }
        if self.bank.entries == 0 || self.bank.sources.len() != self.bank.entries {
            return bad(format!(
                "bank: {} entries with {} sources",
                self.bank.entries,
                self.bank.sources.len()
            ));
        }
        if self.selftest.cases.is_empty() {
            return bad("selftest.cases is empty".into());
        }
        let tol = &self.selftest.tolerance;
        if !(tol.embedding_rel > 0.0 && tol.distance_abs > 0.0) {
            return bad("selftest.tolerance values must be positive".into());
        }
        if let Some(Err(e)) = self.drift.as_ref().map(|d| d.validate()) {
            return bad(e);
        }
        if let Some(p) = &self.patch {
            let layout = crate::score::patch::PatchLayout::new(g, &p.spec, side)
                .map_err(|e| BundleError::manifest(format!("patch: {e}")))?;
            if p.dim != layout.dim || p.entries == 0 || p.entries > p.spec.bank {
                return bad(format!(
                    "patch: {} entries of {} dimensions; the taps give {} and the budget is {}",
                    p.entries, p.dim, layout.dim, p.spec.bank
                ));
            }
            if !(p.low.is_finite() && p.high > p.low && p.threshold.is_finite()) {
                return bad(format!(
                    "patch: colour scale {}..{} or threshold {} is not finite and increasing",
                    p.low, p.high, p.threshold
                ));
            }
        }
        Ok(())
    }

    /// The activation quantization by tensor.
    pub fn activation_quant(&self) -> std::collections::BTreeMap<TensorId, ActivationQuant> {
        self.model
            .activations
            .iter()
            .map(|a| (a.tensor, a.quant()))
            .collect()
    }

    /// The ensembles and score as a spec.
    pub fn score_spec(&self) -> ScoreSpec {
        self.score.spec
    }
}

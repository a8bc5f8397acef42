//! `selftest.safetensors` and the check that runs it: a bundle carries preprocessed images with
//! the embeddings and distances they must give, and every path that runs the bundle (this CPU
//! path, the device's backends) proves it reproduces them before it is trusted.
//!
//! - `images`: `U8 [m, s, s, 3]`, RGB after the test transform (the normalisation, the encoder,
//!   the rotations of an ensemble and the scoring are what the check exercises);
//! - `embeddings`: `F32 [m, dim]`, the raw encoder features of the unrotated images;
//! - `distances`: `F32 [m]`, the distance from normal of each image under the bundle's score.
//!
//! The expected values are computed by the exporter on a different code path from the one that
//! loads the bundle (the unfolded float graph with dequantized weights, see
//! [`crate::quant::unfold`]), so a wrong fold, a mis-read scale or a transposed weight fails here.

use std::collections::BTreeSet;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::BundleError;
use super::manifest::Tolerance;
use super::tensors::{OwnedTensor, TensorFile};

pub const MEMBER: &str = "selftest.safetensors";
const PATCH_SCORES: &str = "patch-scores";

#[derive(Debug, Clone, PartialEq)]
pub struct SelfTestData {
    pub size: u32,
    pub dim: usize,
    /// `[m, s, s, 3]`.
    pub images: Vec<u8>,
    pub embeddings: Vec<f32>,
    pub distances: Vec<f32>,
    /// `patch-scores`: `F32 [m]`, each image's patch score (its map's maximum), when the bundle
    /// scores patches.
    pub patch_scores: Option<Vec<f32>>,
}

impl SelfTestData {
    pub fn len(&self) -> usize {
        self.distances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.distances.is_empty()
    }

    pub fn image(&self, i: usize) -> Option<RgbImage> {
        let per = (self.size as usize).pow(2) * 3;
        let px = self.images.get(i * per..(i + 1) * per)?;
        RgbImage::from_raw(self.size, self.size, px.to_vec())
    }

    pub fn images(&self) -> Vec<RgbImage> {
        (0..self.len()).filter_map(|i| self.image(i)).collect()
    }

    pub fn to_safetensors(&self) -> Result<Vec<u8>, BundleError> {
        let (m, s) = (self.len(), self.size as usize);
        let mut v = vec![
            OwnedTensor::u8("images", &[m, s, s, 3], &self.images),
            OwnedTensor::f32("embeddings", &[m, self.dim], &self.embeddings),
            OwnedTensor::f32("distances", &[m], &self.distances),
        ];
        if let Some(p) = &self.patch_scores {
            v.push(OwnedTensor::f32(PATCH_SCORES, &[p.len()], p));
        }
        super::tensors::serialize(MEMBER, &v)
    }

    /// Read with the sizes the manifest gives; `patch`: the bundle scores patches.
    pub fn from_safetensors(
        bytes: &[u8],
        m: usize,
        size: u32,
        dim: usize,
        patch: bool,
    ) -> Result<Self, BundleError> {
        let f = TensorFile::parse(MEMBER, bytes)?;
        let s = size as usize;
        let out = Self {
            size,
            dim,
            images: f.u8("images", &[m, s, s, 3])?,
            embeddings: f.f32("embeddings", &[m, dim])?,
            distances: f.f32("distances", &[m])?,
            patch_scores: if patch {
                Some(f.f32(PATCH_SCORES, &[m])?)
            } else {
                None
            },
        };
        let mut names = BTreeSet::from(["images", "embeddings", "distances"].map(String::from));
        if patch {
            names.insert(PATCH_SCORES.to_string());
        }
        f.expect_exactly(&names)?;
        Ok(out)
    }
}

/// One case of a self-test run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CaseResult {
    pub name: String,
    /// Max |embedding - expected| / ||expected||.
    pub embedding_rel_err: f64,
    pub distance: f64,
    pub expected_distance: f64,
    /// |patch score - expected| / expected, when the bundle scores patches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_rel_err: Option<f64>,
}

/// Outcome of running a bundle's self-test on one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SelfTestReport {
    /// Which path ran it (e.g. `cpu`).
    pub backend: String,
    pub cases: Vec<CaseResult>,
    pub max_embedding_rel_err: f64,
    pub max_distance_err: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_patch_rel_err: Option<f64>,
    pub tolerance: Tolerance,
    pub passed: bool,
}

impl SelfTestReport {
    /// Compare what a path produced with the expected values.
    pub fn compare(
        backend: &str,
        names: &[String],
        data: &SelfTestData,
        embeddings: &[f32],
        distances: &[f64],
        patch_scores: Option<&[f64]>,
        tolerance: &Tolerance,
    ) -> Result<Self, BundleError> {
        let m = data.len();
        // A path without patch scoring (a GPU backend: no feature maps) is checked on the rest;
        // when the patch score is the verdict, its distances differ and fail below.
        match (&data.patch_scores, patch_scores) {
            (Some(w), Some(g)) if w.len() != m || g.len() != m => {
                return Err(BundleError::SelfTest {
                    why: format!("{} patch scores for {m} cases", g.len()),
                });
            }
            _ => {}
        }
        if embeddings.len() != m * data.dim || distances.len() != m || names.len() != m {
            return Err(BundleError::SelfTest {
                why: format!(
                    "{} embeddings and {} distances for {m} cases of dimension {}",
                    embeddings.len(),
                    distances.len(),
                    data.dim
                ),
            });
        }
        let mut cases = Vec::with_capacity(m);
        for i in 0..m {
            let want = &data.embeddings[i * data.dim..(i + 1) * data.dim];
            let got = &embeddings[i * data.dim..(i + 1) * data.dim];
            let norm = want
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            let err = want
                .iter()
                .zip(got)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .fold(
                    0f64,
                    |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
                );
            cases.push(CaseResult {
                name: names[i].clone(),
                embedding_rel_err: err / norm,
                distance: distances[i],
                expected_distance: data.distances[i] as f64,
                patch_rel_err: data.patch_scores.as_ref().zip(patch_scores).map(|(w, g)| {
                    let e = (g[i] - w[i] as f64).abs() / (w[i] as f64).abs().max(1e-6);
                    if e.is_nan() { f64::INFINITY } else { e }
                }),
            });
        }
        let max_e = cases
            .iter()
            .map(|c| c.embedding_rel_err)
            .fold(0.0, f64::max);
        let max_d = cases
            .iter()
            .map(|c| {
                let e = (c.distance - c.expected_distance).abs();
                if e.is_nan() { f64::INFINITY } else { e }
            })
            .fold(0.0, f64::max);
        let max_p = cases
            .iter()
            .filter_map(|c| c.patch_rel_err)
            .reduce(f64::max);
        Ok(Self {
            backend: backend.into(),
            passed: max_e <= tolerance.embedding_rel
                && max_d <= tolerance.distance_abs
                && max_p.is_none_or(|p| p <= tolerance.patch_rel),
            max_patch_rel_err: max_p,
            cases,
            max_embedding_rel_err: max_e,
            max_distance_err: max_d,
            tolerance: tolerance.clone(),
        })
    }

    /// `Err` naming the worst case when the run is outside the tolerance.
    pub fn check(&self) -> Result<(), BundleError> {
        if self.passed {
            return Ok(());
        }
        let worst = self
            .cases
            .iter()
            .max_by(|a, b| {
                let ka = (a.distance - a.expected_distance).abs() / self.tolerance.distance_abs
                    + a.embedding_rel_err / self.tolerance.embedding_rel;
                let kb = (b.distance - b.expected_distance).abs() / self.tolerance.distance_abs
                    + b.embedding_rel_err / self.tolerance.embedding_rel;
                ka.total_cmp(&kb)
            })
            .expect("a failed run has cases");
        Err(BundleError::SelfTest {
            why: format!(
                "on the {} path, case {:?} gives distance {:.6} (expected {:.6}) and embedding \
                 error {:.2e}; tolerance: distance {:.1e}, embedding {:.1e}",
                self.backend,
                worst.name,
                worst.distance,
                worst.expected_distance,
                worst.embedding_rel_err,
                self.tolerance.distance_abs,
                self.tolerance.embedding_rel
            ),
        })
    }
}

//! Running a bundle (DESIGN section 5): the [`Embedder`] trait every backend implements, the
//! backends ([`Backend`], [`embedder`]; the CPU one in [`cpu`]), and the [`Detector`] that turns
//! an image into a distance from normal, a verdict and the nearest good image, exactly as the
//! bundle's manifest prescribes. The trainer's evaluation, the exporter, the benchmark and the
//! device all score through this one [`Detector`]; running a model is not part of the file
//! format ([`crate::bundle`]).
//!
//! Per image: test transform (when not already applied) -> for each angle of the score's
//! ensemble: rotate, normalise, embed, score against that angle's bank -> mean over angles ->
//! distance `1 - score`. The nearest good image is the top cosine of the unrotated view.

pub mod cpu;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::bundle::{BankData, Bundle, BundleError, SelfTestReport};
use crate::preprocess::{self, PreprocessSpec};
use crate::score::{Bank, ScoreFn, ScoreSpec};

pub use cpu::CpuEmbedder;

/// A backend that turns normalised model inputs into encoder features.
pub trait Embedder {
    /// Short name for reports (`cpu`, `reference`, ...).
    fn name(&self) -> &str;
    fn feature_dim(&self) -> usize;
    /// `inputs`: `n` normalised CHW images of the bundle's input size, concatenated; writes
    /// `n * feature_dim` raw features into `out`.
    fn embed_into(&mut self, inputs: &[f32], n: usize, out: &mut [f32]) -> Result<(), BundleError>;

    /// [`Self::embed_into`] into a new vector.
    fn embed(&mut self, inputs: &[f32], n: usize) -> Result<Vec<f32>, BundleError> {
        let mut out = vec![0f32; n * self.feature_dim()];
        self.embed_into(inputs, n, &mut out)?;
        Ok(out)
    }
}

impl<E: Embedder + ?Sized> Embedder for &mut E {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn feature_dim(&self) -> usize {
        (**self).feature_dim()
    }
    fn embed_into(&mut self, inputs: &[f32], n: usize, out: &mut [f32]) -> Result<(), BundleError> {
        (**self).embed_into(inputs, n, out)
    }
}

impl<E: Embedder + ?Sized> Embedder for Box<E> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn feature_dim(&self) -> usize {
        (**self).feature_dim()
    }
    fn embed_into(&mut self, inputs: &[f32], n: usize, out: &mut [f32]) -> Result<(), BundleError> {
        (**self).embed_into(inputs, n, out)
    }
}

/// Where a bundle's encoder runs (the device config's `inference.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The CPU executor ([`cpu`]): int8 kernels where they are faster, both cores.
    #[default]
    Cpu,
}

impl Backend {
    pub const ALL: [Backend; 1] = [Backend::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                crate::Error::invalid(
                    "backend",
                    format!(
                        "`{s}`; expected one of {}",
                        Backend::ALL.map(Backend::name).join(", ")
                    ),
                )
            })
    }
}

/// The bundle's encoder on `backend`: what the pipeline and the flash self-test both run.
pub fn embedder(
    bundle: &Bundle,
    backend: Backend,
) -> Result<Box<dyn Embedder + Send>, BundleError> {
    match backend {
        Backend::Cpu => Ok(Box::new(CpuEmbedder::new(bundle)?)),
    }
}

/// One image's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The bundle's score (higher = more normal).
    pub score: f64,
    /// `1 - score`: what thresholds compare against.
    pub distance: f64,
    /// Index of the most similar bank entry (unrotated view); its thumbnail is the evidence.
    pub nearest: usize,
    pub nearest_cosine: f64,
}

/// A loaded bundle ready to score images on one backend.
#[derive(Debug)]
pub struct Detector<E> {
    pub preprocess: PreprocessSpec,
    pub score: ScoreSpec,
    angles: Vec<u8>,
    banks: Vec<Bank<f32>>,
    pub embedder: E,
}

impl Detector<Box<dyn Embedder + Send>> {
    /// The bundle on `backend` ([`embedder`]).
    pub fn on(bundle: &Bundle, backend: Backend) -> Result<Self, BundleError> {
        Self::new(bundle, embedder(bundle, backend)?)
    }
}

impl Detector<CpuEmbedder> {
    /// The bundle on the CPU path.
    pub fn cpu(bundle: &Bundle) -> Result<Self, BundleError> {
        Self::new(bundle, CpuEmbedder::new(bundle)?)
    }
}

impl<E: Embedder> Detector<E> {
    /// The bundle on `embedder`.
    pub fn new(bundle: &Bundle, embedder: E) -> Result<Self, BundleError> {
        let m = &bundle.manifest;
        if embedder.feature_dim() != m.model.feature_dim {
            return Err(BundleError::inconsistent(format!(
                "the {} backend gives {}-d features; the bundle has {}",
                embedder.name(),
                embedder.feature_dim(),
                m.model.feature_dim
            )));
        }
        Self::from_parts(m.preprocess.clone(), m.score.spec, &bundle.bank, embedder)
    }

    /// From the pieces a bundle is made of (the exporter scores with these before the bundle
    /// exists).
    pub fn from_parts(
        preprocess: PreprocessSpec,
        score: ScoreSpec,
        bank: &BankData,
        embedder: E,
    ) -> Result<Self, BundleError> {
        if bank.angles != score.ensemble.angles() || score.ensemble.uses_crops() {
            return Err(BundleError::inconsistent(format!(
                "bank angles {:?} for score {score}",
                bank.angles
            )));
        }
        let banks = (0..bank.angles.len())
            .map(|i| bank.bank(i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            preprocess,
            score,
            angles: bank.angles.clone(),
            banks,
            embedder,
        })
    }

    /// Score images that already went through the test transform (`size` x `size`). Also
    /// returns the raw features of the unrotated views (`n * dim`).
    pub fn score_preprocessed(
        &mut self,
        images: &[RgbImage],
    ) -> Result<(Vec<Scored>, Vec<f32>), BundleError> {
        let size = self.preprocess.size;
        if let Some(bad) = images.iter().find(|i| i.dimensions() != (size, size)) {
            return Err(BundleError::runtime(format!(
                "image of {:?} pixels; the bundle takes {size}x{size} after the test transform",
                bad.dimensions()
            )));
        }
        let n = images.len();
        let dim = self.embedder.feature_dim();
        let mut sums = vec![0f64; n];
        let mut plain = Vec::new();
        let mut nearest = vec![(0usize, 0f64); n];
        for (ai, &angle) in self.angles.iter().enumerate() {
            let mut inputs = Vec::with_capacity(n * 3 * (size as usize).pow(2));
            for img in images {
                let view = preprocess::rotate(img, angle);
                inputs.extend(self.preprocess.normalize(&view));
            }
            let feats = self.embedder.embed(&inputs, n)?;
            let bank = &self.banks[ai];
            for (i, f) in feats.chunks(dim).enumerate() {
                if f.iter().any(|v| !v.is_finite()) {
                    return Err(BundleError::runtime("the encoder produced NaN or infinity"));
                }
                sums[i] += bank.score(self.score.f, f).map_err(BundleError::runtime)? as f64;
                if angle == 0 {
                    let cos = bank.cosines(&crate::score::l2_normalize(f));
                    let (j, c) =
                        cos.iter()
                            .enumerate()
                            .fold(
                                (0, f32::NEG_INFINITY),
                                |b, (j, &c)| if c > b.1 { (j, c) } else { b },
                            );
                    nearest[i] = (j, c as f64);
                }
            }
            if angle == 0 {
                plain = feats;
            }
        }
        let na = self.angles.len() as f64;
        let scored = sums
            .iter()
            .zip(&nearest)
            .map(|(&s, &(j, c))| {
                let score = s / na;
                Scored {
                    score,
                    distance: crate::bundle::manifest::distance_of(score),
                    nearest: j,
                    nearest_cosine: c,
                }
            })
            .collect();
        Ok((scored, plain))
    }

    /// Test transform, then [`Self::score_preprocessed`]: one camera frame or image file.
    pub fn score_image(&mut self, img: &RgbImage) -> Result<Scored, BundleError> {
        let t = self
            .preprocess
            .test_transform(img)
            .map_err(BundleError::runtime)?;
        Ok(self.score_preprocessed(std::slice::from_ref(&t))?.0[0])
    }

    /// Run the bundle's self-test on this backend.
    pub fn self_test(&mut self, bundle: &Bundle) -> Result<SelfTestReport, BundleError> {
        let (scored, feats) = self.score_preprocessed(&bundle.selftest.images())?;
        let names: Vec<String> = bundle
            .manifest
            .selftest
            .cases
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let distances: Vec<f64> = scored.iter().map(|s| s.distance).collect();
        SelfTestReport::compare(
            self.embedder.name(),
            &names,
            &bundle.selftest,
            &feats,
            &distances,
            &bundle.manifest.selftest.tolerance,
        )
    }

    pub fn score_fn(&self) -> ScoreFn {
        self.score.f
    }
}

//! [`Detector`]: one bundle on one [`Embedder`], scoring images exactly as the manifest says.
//!
//! Per image: test transform ([`FramePreprocessor`], skipped when the image is already
//! `size x size`) -> for each angle of the score's ensemble: rotate + normalise into the input
//! buffer, embed, score against that angle's bank ([`Bank::score_into`]) -> mean over angles ->
//! distance `1 - score`; the nearest good image is the top cosine of the unrotated view. Every
//! buffer is made when the detector is built (the frame buffers again only when the camera's
//! frame size changes), so [`Detector::score_image`] allocates nothing per frame on an embedder
//! that does not (the CPU executor, run inside a rayon pool: `shared/tests/alloc.rs`).
//! [`Detector::score_preprocessed`] runs the same per-image code over a batch (the exporter, the
//! self-test).

use std::time::{Duration, Instant};

use image::RgbImage;

use super::{Backend, CpuEmbedder, Embedder, embedder};
use crate::bundle::{BankData, Bundle, BundleError, SelfTestReport};
use crate::model::graph::{Graph, TensorId};
use crate::preprocess::{FramePreprocessor, PreprocessSpec};
use crate::score::map::Map;
use crate::score::patch::{MAX_TAPS, PatchBank, PatchLayout, PatchRows, PatchScorer, PatchSpec};
use crate::score::scan::ScoreScratch;
use crate::score::{Bank, ScoreFn, ScoreSpec};

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
    /// The patch score (the anomaly map's maximum, [`Detector::map`]), when the bundle scores
    /// patches; when the patch score decides, `distance` is this value.
    pub patch: Option<f64>,
    /// The overlay entry (frames an operator marked good, [`Detector::set_overlay`]) nearer to
    /// the image than the bundle's bank is: its image score is that entry's.
    pub overlay: Option<usize>,
}

/// Where one image's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Test transform of the decoded frame, rotation and normalisation of every view.
    pub preprocess: Duration,
    /// The encoder, every view.
    pub encoder: Duration,
    /// The bank scans and the ensemble mean.
    pub knn: Duration,
    /// Patch scoring: patch features, the patch bank's nearest rows, the map (upsampling and
    /// smoothing); zero for bundles without patch scoring.
    pub patch: Duration,
}

/// A loaded bundle ready to score images on one backend.
#[derive(Debug)]
pub struct Detector<E> {
    pub preprocess: PreprocessSpec,
    frame: FramePreprocessor,
    core: Core<E>,
}

/// Everything after the test transform (a separate struct, so a frame's view, which borrows
/// the preprocessor, can be scored without copying it).
#[derive(Debug)]
struct Core<E> {
    score: ScoreSpec,
    angles: Vec<u8>,
    banks: Vec<Bank<f32>>,
    embedder: E,
    /// One normalised CHW view.
    input: Vec<f32>,
    /// Its features.
    feats: Vec<f32>,
    /// Features of the unrotated view of the last image.
    plain: Vec<f32>,
    scratch: Vec<ScoreScratch>,
    patch: Option<PatchState>,
    /// Raw features of every view of the last image, `[angle][dim]`.
    views: Vec<f32>,
    /// Frames marked good on the device: one bank per angle, scored by their nearest row.
    overlay: Option<Overlay>,
}

/// The image-level part of a device's overlay ([`Detector::set_overlay`]).
#[derive(Debug)]
struct Overlay {
    banks: Vec<Bank<f32>>,
    scratch: Vec<ScoreScratch>,
}

/// Patch scoring inside a detector: the scorer and the tap maps the embedder fills.
#[derive(Debug)]
struct PatchState {
    scorer: PatchScorer,
    taps: Vec<(TensorId, Vec<f32>)>,
    /// The patch score decides the verdict.
    verdict: bool,
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
        let det = Self::from_parts(m.preprocess.clone(), m.score.spec, &bundle.bank, embedder)?;
        // The patch rows stay in f16, as the bundle stores them ([`PatchBank`] packs large
        // banks block by block from them).
        match (&m.patch, bundle.bank.patch.clone()) {
            (Some(p), Some(_)) if !det.core.embedder.has_taps() => {
                if p.verdict {
                    return Err(BundleError::runtime(format!(
                        "this bundle's verdict is the patch score, which the {} backend cannot \
                         compute (it gives no feature maps); run it on the cpu backend",
                        det.core.embedder.name()
                    )));
                }
                tracing::warn!(
                    "the {} backend gives no feature maps: this bundle's heat maps are off",
                    det.core.embedder.name()
                );
                Ok(det)
            }
            (Some(p), Some(rows)) => det.with_patch(&m.model.graph, &p.spec, rows, p.verdict),
            (None, None) => Ok(det),
            _ => Err(BundleError::inconsistent(
                "the manifest's patch section and the bank's patch rows disagree",
            )),
        }
    }

    /// Also score patches: the anomaly map of every image from `graph`'s taps against the patch
    /// bank `rows` (`verdict`: the patch score is the distance thresholds compare against).
    pub fn with_patch(
        mut self,
        graph: &Graph,
        spec: &PatchSpec,
        rows: impl Into<PatchRows>,
        verdict: bool,
    ) -> Result<Self, BundleError> {
        let size = self.preprocess.size as usize;
        let layout = PatchLayout::new(graph, spec, size).map_err(BundleError::runtime)?;
        let bank = PatchBank::new(rows, layout.dim).map_err(BundleError::runtime)?;
        let taps = layout
            .taps
            .iter()
            .map(|t| (t.tensor, vec![0f32; t.shape.len()]))
            .collect();
        let scorer = PatchScorer::new(layout, bank, spec.sigma).map_err(BundleError::runtime)?;
        self.core.patch = Some(PatchState {
            scorer,
            taps,
            verdict,
        });
        Ok(self)
    }

    /// The anomaly map of the last image, at the model input's size (bundles that score
    /// patches).
    pub fn map(&self) -> Option<&Map> {
        self.core.patch.as_ref().map(|p| p.scorer.map())
    }

    /// Entries of the patch bank (0 without patch scoring).
    pub fn patch_bank_len(&self) -> usize {
        self.core
            .patch
            .as_ref()
            .map_or(0, |p| p.scorer.bank().len())
    }

    /// Raw features of every view of the last image scored, `[angle][dim]` in the bank's angle
    /// order: what an overlay entry holds ([`Self::set_overlay`]).
    pub fn views(&self) -> &[f32] {
        &self.core.views
    }

    /// Patch features of the last image whose distance to the nearest good patch (the patch
    /// bank and the overlay's patches) is above `cutoff`, `rows x dim` (empty without patch
    /// scoring): the patches an overlay entry needs so that this image's map stays at or below
    /// `cutoff` everywhere (upsampling and smoothing only average the grid).
    pub fn hot_patches(&self, cutoff: f32) -> Vec<f32> {
        let Some(p) = &self.core.patch else {
            return Vec::new();
        };
        let dim = p.scorer.layout().dim;
        p.scorer
            .grid()
            .data
            .iter()
            .zip(p.scorer.features().chunks_exact(dim))
            .filter(|(d, _)| **d > cutoff)
            .flat_map(|(_, f)| f.iter().copied())
            .collect()
    }

    /// Frames an operator marked good on the device, scored beside the bundle's banks without
    /// changing them: `views` is `n` entries of [`Self::views`] (`n x angles x dim`), `patch`
    /// their patch rows (`rows x patch dim`; [`Self::hot_patches`]). An image's score is the
    /// better of the bank's and its nearest entry's (mean over angles of the cosine); each
    /// patch's distance is the smaller of the two banks'. The calibration is untouched: a
    /// frame passes only by being near a marked frame. Empty `views` and `patch` remove the
    /// overlay. Only `cos_K` scores take an image overlay (kde, center and cos_K_norm are not
    /// on the cosine scale of one entry).
    pub fn set_overlay(&mut self, views: &[f32], patch: &[f32]) -> Result<(), BundleError> {
        let c = &mut self.core;
        let (dim, na) = (c.feats.len(), c.angles.len());
        if !views.len().is_multiple_of(dim * na) {
            return Err(BundleError::runtime(format!(
                "overlay views of {} values are not whole entries of {na} x {dim}",
                views.len()
            )));
        }
        if views.is_empty() {
            c.overlay = None;
        } else {
            if !matches!(c.score.f, ScoreFn::CosK { .. }) {
                return Err(BundleError::runtime(format!(
                    "frames cannot be marked good under the score {}: only cos_K scores take them",
                    c.score
                )));
            }
            let n = views.len() / (dim * na);
            let banks = (0..na)
                .map(|a| {
                    let rows: Vec<f32> = (0..n)
                        .flat_map(|e| views[(e * na + a) * dim..][..dim].iter().copied())
                        .collect();
                    Bank::from_raw(&rows, dim)
                })
                .collect::<crate::error::Result<Vec<_>>>()
                .map_err(BundleError::runtime)?;
            let scratch = banks.iter().map(|b| ScoreScratch::new(b, 1)).collect();
            c.overlay = Some(Overlay { banks, scratch });
        }
        match &mut c.patch {
            Some(p) => p
                .scorer
                .set_overlay(patch.to_vec())
                .map_err(BundleError::runtime),
            None if patch.is_empty() => Ok(()),
            None => Err(BundleError::runtime(
                "overlay patch rows for a bundle that does not score patches",
            )),
        }
    }

    /// Entries of the image overlay (0 without one).
    pub fn overlay_len(&self) -> usize {
        self.core.overlay.as_ref().map_or(0, |o| o.banks[0].len())
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
        let k = match score.f {
            ScoreFn::CosK { k } | ScoreFn::CosKNorm { k } => k,
            ScoreFn::Kde | ScoreFn::Center => 1,
        };
        let scratch = banks.iter().map(|b| ScoreScratch::new(b, k)).collect();
        let frame = FramePreprocessor::new(&preprocess).map_err(BundleError::runtime)?;
        let dim = embedder.feature_dim();
        Ok(Self {
            core: Core {
                input: vec![0f32; frame.input_len()],
                feats: vec![0f32; dim],
                plain: vec![0f32; dim],
                score,
                angles: bank.angles.clone(),
                banks,
                embedder,
                scratch,
                patch: None,
                views: vec![0f32; dim * bank.angles.len()],
                overlay: None,
            },
            frame,
            preprocess,
        })
    }

    /// Split each bank scan over `threads` (large banks; see [`ScoreScratch::with_threads`]).
    pub fn with_knn_threads(mut self, threads: usize) -> Self {
        self.core.scratch = std::mem::take(&mut self.core.scratch)
            .into_iter()
            .map(|s| s.with_threads(threads))
            .collect();
        self
    }

    pub fn embedder(&self) -> &E {
        &self.core.embedder
    }

    pub fn embedder_mut(&mut self) -> &mut E {
        &mut self.core.embedder
    }

    pub fn score_spec(&self) -> ScoreSpec {
        self.core.score
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
        let mut scored = Vec::with_capacity(images.len());
        let mut feats = Vec::with_capacity(images.len() * self.core.plain.len());
        let mut t = StageTimes::default();
        let frame = &self.frame;
        for img in images {
            let px = img.as_raw();
            scored.push(
                self.core
                    .score(|a, out| frame.normalize_into(px, a, out), &mut t)?,
            );
            feats.extend_from_slice(&self.core.plain);
        }
        Ok((scored, feats))
    }

    /// Test transform, then the views, the encoder and the banks: one camera frame or image file.
    /// Allocates nothing once the frame size has been seen (see the module header).
    pub fn score_image(&mut self, img: &RgbImage) -> Result<Scored, BundleError> {
        self.score_image_timed(img, &mut StageTimes::default())
    }

    /// [`Self::score_image`], adding each stage's time to `t`.
    pub fn score_image_timed(
        &mut self,
        img: &RgbImage,
        t: &mut StageTimes,
    ) -> Result<Scored, BundleError> {
        let t0 = Instant::now();
        let view = self
            .frame
            .test_transform(img)
            .map_err(BundleError::runtime)?;
        t.preprocess += t0.elapsed();
        self.core.score(|a, out| view.normalize_into(a, out), t)
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
        let patch: Option<Vec<f64>> = scored.iter().map(|s| s.patch).collect();
        SelfTestReport::compare(
            self.core.embedder.name(),
            &names,
            &bundle.selftest,
            &feats,
            &distances,
            patch.as_deref(),
            &bundle.manifest.selftest.tolerance,
        )
    }

    pub fn score_fn(&self) -> ScoreFn {
        self.core.score.f
    }

    /// Entries of the (unrotated) bank.
    pub fn bank_len(&self) -> usize {
        self.core.banks.first().map_or(0, Bank::len)
    }
}

impl<E: Embedder> Core<E> {
    /// Score one image already through the test transform; `normalize(angle, out)` writes the
    /// rotated, normalised view.
    fn score(
        &mut self,
        normalize: impl Fn(u8, &mut [f32]),
        t: &mut StageTimes,
    ) -> Result<Scored, BundleError> {
        let mut sum = 0f64;
        let mut overlay_sum = 0f64;
        let mut overlay_nearest = 0usize;
        let mut nearest = (0usize, 0f64);
        let dim = self.feats.len();
        for (ai, &angle) in self.angles.iter().enumerate() {
            let t0 = Instant::now();
            normalize(angle, &mut self.input);
            let t1 = Instant::now();
            match (&mut self.patch, angle) {
                (Some(p), 0) => {
                    self.embedder
                        .embed_taps(&self.input, &mut self.feats, &mut p.taps)?
                }
                _ => self.embedder.embed_into(&self.input, 1, &mut self.feats)?,
            }
            let t2 = Instant::now();
            if self.feats.iter().any(|v| !v.is_finite()) {
                return Err(BundleError::runtime("the encoder produced NaN or infinity"));
            }
            let n = self.banks[ai]
                .score_into(self.score.f, &self.feats, &mut self.scratch[ai])
                .map_err(BundleError::runtime)?;
            sum += n.score as f64;
            if let Some(o) = &mut self.overlay {
                let on = o.banks[ai]
                    .score_into(ScoreFn::CosK { k: 1 }, &self.feats, &mut o.scratch[ai])
                    .map_err(BundleError::runtime)?;
                overlay_sum += on.score as f64;
                if angle == 0 {
                    overlay_nearest = on.index;
                }
            }
            self.views[ai * dim..][..dim].copy_from_slice(&self.feats);
            if angle == 0 {
                nearest = (n.index, n.cosine as f64);
                self.plain.copy_from_slice(&self.feats);
            }
            t.preprocess += t1 - t0;
            t.encoder += t2 - t1;
            t.knn += t2.elapsed();
        }
        let mut score = sum / self.angles.len() as f64;
        let mut overlay = None;
        if self.overlay.is_some() {
            let o = overlay_sum / self.angles.len() as f64;
            if o > score {
                score = o;
                overlay = Some(overlay_nearest);
            }
        }
        let mut distance = crate::bundle::manifest::distance_of(score);
        let mut patch = None;
        if let Some(p) = &mut self.patch {
            let t0 = Instant::now();
            let mut maps: [&[f32]; MAX_TAPS] = [&[]; MAX_TAPS];
            for (m, (_, v)) in maps.iter_mut().zip(&p.taps) {
                *m = v;
            }
            let v = p.scorer.score(&maps[..p.taps.len()]) as f64;
            if !v.is_finite() {
                return Err(BundleError::runtime("the patch score is NaN or infinite"));
            }
            if p.verdict {
                distance = v;
            }
            patch = Some(v);
            t.patch += t0.elapsed();
        }
        Ok(Scored {
            score,
            distance,
            nearest: nearest.0,
            nearest_cosine: nearest.1,
            patch,
            overlay,
        })
    }
}

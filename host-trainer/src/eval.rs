//! Evaluation as the FIRM reference does it, never used to pick anything: the bank is the encoder
//! features of the good training images under the test transform (one bank per angle for the
//! rotation ensemble); test images are scored with cos_k, cos_k_norm, KDE, center and the rotation
//! and crop ensembles; image AUROC overall and per defect type.

use std::collections::BTreeMap;
use std::path::PathBuf;

use firm_shared::bundle::BundleError;
use firm_shared::detect::Embedder;
use firm_shared::model::FirmModel;
use firm_shared::preprocess::{self, Normalization, PreprocessSpec, ResizeFilter};
use firm_shared::score::{self, Bank, ScoreSpec};
use image::RgbImage;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::RandomResizedCrop;
use crate::batch::stream;
use crate::data::Dataset;
use crate::data::images::{self, LoadOptions};
use crate::error::{Error, Result};
use crate::outliers::rotate;

/// Random crops per test image in the crop ensemble (the reference uses 10).
pub const CROPS: usize = 10;
/// Crop area range of the crop ensemble.
pub const CROP_SCALE: (f32, f32) = (0.55, 1.0);
const EMBED_BATCH: usize = 32;

/// Decoded evaluation images, prepared once per run.
#[derive(Debug, Clone)]
pub struct EvalImages {
    pub size: u32,
    /// Test transform of every good training image (the bank).
    pub train: Vec<RgbImage>,
    /// Source file of each entry of `train`.
    pub train_paths: Vec<PathBuf>,
    /// Test transform of every test image.
    pub test: Vec<RgbImage>,
    /// Test images with the short side at most twice the input: sources of the random crops.
    pub test_crop_src: Vec<RgbImage>,
    /// Defect type per test image (`None` = good).
    pub defect: Vec<Option<String>>,
    pub test_paths: Vec<PathBuf>,
}

impl EvalImages {
    /// The evaluation images of a run, loaded as its config says (size, strictness).
    pub fn for_run(ds: &Dataset, cfg: &crate::config::FitConfig) -> Result<Self> {
        Self::load(
            ds,
            cfg.size,
            LoadOptions {
                strict: cfg.strict,
                ..LoadOptions::default()
            },
        )
    }

    pub fn load(ds: &Dataset, size: u32, opts: LoadOptions) -> Result<Self> {
        let spec = PreprocessSpec::new(size);
        let loaded_train = images::load(&ds.train, &[], opts, |img| spec.test_transform(&img))?;
        let train_paths = loaded_train.paths;
        let train: Vec<RgbImage> = loaded_train
            .items
            .into_iter()
            .collect::<firm_shared::Result<_>>()?;
        let test_paths: Vec<PathBuf> = ds.test.iter().map(|t| t.path.clone()).collect();
        let loaded = images::load(&test_paths, &[], opts, |img| {
            let t = spec.test_transform(&img);
            let short = img.width().min(img.height());
            let src = if short > 2 * size {
                preprocess::resize_short_side(&img, 2 * size, ResizeFilter::Bilinear)
            } else {
                Ok(img)
            };
            t.and_then(|t| src.map(|s| (t, s)))
        })?;
        let by_path: BTreeMap<&PathBuf, &crate::data::TestImage> =
            ds.test.iter().map(|t| (&t.path, t)).collect();
        let mut out = Self {
            size,
            train,
            train_paths,
            test: Vec::new(),
            test_crop_src: Vec::new(),
            defect: Vec::new(),
            test_paths: Vec::new(),
        };
        for (item, path) in loaded.items.into_iter().zip(loaded.paths) {
            let (t, s) = item?;
            out.test.push(t);
            out.test_crop_src.push(s);
            out.defect.push(by_path[&path].defect.clone());
            out.test_paths.push(path);
        }
        Ok(out)
    }

    pub fn n_good(&self) -> usize {
        self.defect.iter().filter(|d| d.is_none()).count()
    }

    pub fn n_bad(&self) -> usize {
        self.defect.len() - self.n_good()
    }

    /// Defect types present, sorted.
    pub fn defect_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self.defect.iter().flatten().cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}

/// One score's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResult {
    /// Image AUROC (normal = positive), when both good and defective test images exist.
    pub auroc: Option<f64>,
    /// AUROC of good test images against each defect type.
    pub per_type: BTreeMap<String, f64>,
    /// Score of every test image (higher = more normal), in test order.
    pub scores: Vec<f64>,
}

/// Encoder features of images in eval mode, `EMBED_BATCH` at a time.
pub fn embed(model: &FirmModel, size: u32, inputs: &[Vec<f32>]) -> Result<Vec<f32>> {
    let dev = model.device();
    let mut out = Vec::with_capacity(inputs.len() * model.encoder.feature_dim());
    for chunk in inputs.chunks(EMBED_BATCH) {
        let x = preprocess::batch_tensor(chunk, size, dev)?;
        let f: Vec<f32> = model
            .encoder
            .forward_t(&x, false)?
            .flatten_all()?
            .to_vec1()?;
        out.extend(f);
    }
    Ok(out)
}

/// The trainable model as an [`Embedder`] (evaluation mode), so the trainer's banks and test
/// views go through [`firm_shared::detect::embed_views`] like the exporter's and the device's.
#[derive(Debug)]
pub struct ModelEmbedder<'a> {
    pub model: &'a FirmModel,
    pub size: u32,
}

impl Embedder for ModelEmbedder<'_> {
    fn name(&self) -> &str {
        "trainer"
    }

    fn feature_dim(&self) -> usize {
        self.model.encoder.feature_dim()
    }

    fn embed_into(
        &mut self,
        inputs: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> std::result::Result<(), BundleError> {
        let per = 3 * (self.size as usize).pow(2);
        let views: Vec<Vec<f32>> = inputs.chunks(per).map(<[f32]>::to_vec).collect();
        if views.len() != n || inputs.len() != n * per {
            return Err(BundleError::Runtime {
                why: format!("{} input values for {n} views", inputs.len()),
            });
        }
        let f = embed(self.model, self.size, &views)
            .map_err(|e| BundleError::Runtime { why: e.to_string() })?;
        out.copy_from_slice(&f);
        Ok(())
    }
}

/// Features per (angle, crop set) computed once and shared by every score.
struct FeatureCache<'a> {
    model: &'a FirmModel,
    imgs: &'a EvalImages,
    norm: Normalization,
    seed: u64,
    banks: BTreeMap<u8, Bank<f32>>,
    /// (angle, crop index or usize::MAX for the test transform) -> features [n_test, D]
    test: BTreeMap<(u8, usize), Vec<f32>>,
}

impl<'a> FeatureCache<'a> {
    /// Rotated, normalised, embedded: [`firm_shared::detect::embed_views`].
    fn views(&self, imgs: &[RgbImage], angle: u8) -> Result<Vec<f32>> {
        let mut e = ModelEmbedder {
            model: self.model,
            size: self.imgs.size,
        };
        Ok(firm_shared::detect::embed_views(
            &mut e, &self.norm, imgs, angle,
        )?)
    }

    fn bank(&mut self, angle: u8) -> Result<&Bank<f32>> {
        if !self.banks.contains_key(&angle) {
            let f = self.views(&self.imgs.train, angle)?;
            self.banks
                .insert(angle, Bank::from_raw(&f, self.model.encoder.feature_dim())?);
        }
        Ok(&self.banks[&angle])
    }

    fn test_features(&mut self, angle: u8, crop: Option<usize>) -> Result<Vec<f32>> {
        let key = (angle, crop.unwrap_or(usize::MAX));
        if let Some(f) = self.test.get(&key) {
            return Ok(f.clone());
        }
        let inputs: Vec<Vec<f32>> = match crop {
            None => {
                let f = self.views(&self.imgs.test, angle)?;
                self.test.insert(key, f.clone());
                return Ok(f);
            }
            Some(c) => {
                let rrc = RandomResizedCrop {
                    scale: CROP_SCALE,
                    ..RandomResizedCrop::new(self.imgs.size)
                };
                self.imgs
                    .test_crop_src
                    .par_iter()
                    .enumerate()
                    .map(|(i, src)| {
                        // Crops depend on (seed, image, crop) only: the same for every angle and
                        // every checkpoint, so checkpoints are compared on identical views.
                        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream(
                            self.seed,
                            u64::MAX - 1,
                            i as u64,
                            c as u64,
                        ));
                        let crop = rrc.apply(src, &mut rng);
                        let crop = crate::augment::to_u8(&crop);
                        preprocess::normalize_chw(&rotate::rotate(&crop, angle), &self.norm)
                    })
                    .collect()
            }
        };
        let f = embed(self.model, self.imgs.size, &inputs)?;
        self.test.insert(key, f.clone());
        Ok(f)
    }

    fn scores(&mut self, spec: ScoreSpec) -> Result<Vec<f64>> {
        let crops: Vec<Option<usize>> = if spec.ensemble.uses_crops() {
            (0..CROPS).map(Some).collect()
        } else {
            vec![None]
        };
        let mut per_angle: Vec<Vec<Vec<f32>>> = Vec::new();
        for &a in spec.ensemble.angles() {
            let mut per_crop = Vec::new();
            for &c in &crops {
                let feats = self.test_features(a, c)?;
                per_crop.push(self.bank(a)?.score_all(spec.f, &feats)?);
            }
            per_angle.push(per_crop);
        }
        Ok(score::ensemble(&per_angle)?
            .into_iter()
            .map(f64::from)
            .collect())
    }
}

/// Score the test images with every spec in `specs` (features shared between them).
pub fn evaluate(
    model: &FirmModel,
    norm: Normalization,
    imgs: &EvalImages,
    specs: &[ScoreSpec],
    seed: u64,
) -> Result<BTreeMap<String, ScoreResult>> {
    if imgs.test.is_empty() {
        return Err(Error::invalid("evaluation", "no test images"));
    }
    let mut cache = FeatureCache {
        model,
        imgs,
        norm,
        seed,
        banks: BTreeMap::new(),
        test: BTreeMap::new(),
    };
    let is_normal: Vec<bool> = imgs.defect.iter().map(Option::is_none).collect();
    let mut out = BTreeMap::new();
    for &spec in specs {
        let scores = cache.scores(spec)?;
        let has_both = imgs.n_good() > 0 && imgs.n_bad() > 0;
        let auroc = if has_both {
            Some(score::auroc(&scores, &is_normal)?)
        } else {
            None
        };
        let mut per_type = BTreeMap::new();
        if imgs.n_good() > 0 {
            for t in imgs.defect_types() {
                let (s, l): (Vec<f64>, Vec<bool>) = scores
                    .iter()
                    .zip(&imgs.defect)
                    .filter(|(_, d)| d.is_none() || d.as_deref() == Some(t.as_str()))
                    .map(|(s, d)| (*s, d.is_none()))
                    .unzip();
                per_type.insert(t, score::auroc(&s, &l)?);
            }
        }
        out.insert(
            spec.to_string(),
            ScoreResult {
                auroc,
                per_type,
                scores,
            },
        );
    }
    Ok(out)
}

/// The scores a full evaluation reports, with the profile's score first.
pub fn report_specs(profile: ScoreSpec) -> Vec<ScoreSpec> {
    let mut v = vec![profile];
    for s in [
        "cos_1",
        "cos_5",
        "cos_1_norm",
        "kde",
        "center",
        "cos_1+rot",
        "cos_1+crops",
        "cos_1+rot+crops",
    ] {
        let spec: ScoreSpec = s.parse().expect("valid");
        if !v.contains(&spec) {
            v.push(spec);
        }
    }
    v
}

/// Just the profile's score (checkpoint evaluations during training).
pub fn quick_specs(profile: ScoreSpec) -> Vec<ScoreSpec> {
    vec![profile]
}

//! Where a trained model puts good images and synthetic outliers, on the two axes of the paper's
//! Figure 2: the mean cosine similarity between two good images ("inlier similarity") and between
//! two synthetic outliers ("synthetic outlier similarity"). NT-Xent keeps inliers apart (low
//! inlier similarity); SupCon pulls the outliers together too (high outlier similarity: the
//! collapse); FIRM pulls inliers together and keeps outliers apart.
//!
//! Measured on the good training images under the test transform and one synthetic outlier made
//! from each (rotations by 90, 180, 270 degrees in turn; otherwise the run's generators in turn,
//! seeded), in eval mode, in the projection space the loss shapes and in the encoder feature
//! space scoring uses.

use firm_shared::model::FirmModel;
use firm_shared::preprocess::{self, Normalization};
use image::RgbImage;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::outliers::{Generator, OutlierSpec, rotate};

/// Images per side used (the first ones of the training set).
pub const MAX_IMAGES: usize = 256;
const BATCH: usize = 64;

/// One embedding per image.
type Rows = Vec<Vec<f32>>;

/// Mean pairwise cosine similarities in one embedding space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Similarities {
    /// Between two different good images.
    pub inlier: f64,
    /// Between two different synthetic outliers.
    pub outlier: f64,
    /// Between a good image and an outlier.
    pub cross: f64,
}

/// [`Similarities`] in the projection space (`z`, what the loss sees) and the encoder feature
/// space (what the kNN score sees).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Geometry {
    pub projection: Similarities,
    pub features: Similarities,
    /// Good images (and as many outliers) measured.
    pub n: usize,
}

/// One outlier per good image, deterministic in `seed`; `None` when the outliers are only
/// outlier-exposure images (nothing is generated from the good images).
pub fn outliers_of(
    good: &[RgbImage],
    spec: &OutlierSpec,
    size: u32,
    seed: u64,
) -> Option<Vec<RgbImage>> {
    if spec.generators.is_empty() {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Some(
        good.iter()
            .enumerate()
            .map(
                |(i, img)| match spec.generators[i % spec.generators.len()] {
                    Generator::Rotation => rotate::rotate(img, 1 + (i % 3) as u8),
                    g => g.make(img, size, &mut rng),
                },
            )
            .collect(),
    )
}

/// Mean cosine similarity over pairs `(i, j)` of rows of `a` and `b` (`same`: `a` and `b` are
/// the same rows and `i == j` is skipped). Rows are normalised here.
fn mean_cosine(a: &[Vec<f32>], b: &[Vec<f32>], same: bool) -> f64 {
    let unit = |v: &Vec<f32>| {
        let n = v
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        v.iter().map(|x| *x as f64 / n).collect::<Vec<f64>>()
    };
    let (a, b): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
        (a.iter().map(unit).collect(), b.iter().map(unit).collect());
    let (mut sum, mut count) = (0.0, 0usize);
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            if same && i == j {
                continue;
            }
            sum += x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
            count += 1;
        }
    }
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

fn similarities(good: &[Vec<f32>], out: &[Vec<f32>]) -> Similarities {
    Similarities {
        inlier: mean_cosine(good, good, true),
        outlier: mean_cosine(out, out, true),
        cross: mean_cosine(good, out, false),
    }
}

/// Projections and features of `imgs`, row per image.
fn embed(
    model: &FirmModel,
    imgs: &[RgbImage],
    size: u32,
    norm: &Normalization,
) -> Result<(Rows, Rows)> {
    let (mut z, mut f) = (Vec::new(), Vec::new());
    for chunk in imgs.chunks(BATCH) {
        let inputs: Vec<Vec<f32>> = chunk
            .iter()
            .map(|i| preprocess::normalize_chw(i, norm))
            .collect();
        let x = preprocess::batch_tensor(&inputs, size, model.device())?;
        let out = model.forward_t(&x, false)?;
        z.extend(out.z.to_vec2::<f32>()?);
        f.extend(out.features.to_vec2::<f32>()?);
    }
    Ok((z, f))
}

/// The geometry of `model` on (at most [`MAX_IMAGES`] of) `good`; `None` when no outlier can be
/// made from the good images.
pub fn measure(
    model: &FirmModel,
    good: &[RgbImage],
    spec: &OutlierSpec,
    size: u32,
    norm: Normalization,
    seed: u64,
) -> Result<Option<Geometry>> {
    let good = &good[..good.len().min(MAX_IMAGES)];
    let Some(out) = outliers_of(good, spec, size, seed) else {
        return Ok(None);
    };
    let (zg, fg) = embed(model, good, size, &norm)?;
    let (zo, fo) = embed(model, &out, size, &norm)?;
    Ok(Some(Geometry {
        projection: similarities(&zg, &zo),
        features: similarities(&fg, &fo),
        n: good.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_cosine_skips_the_diagonal_and_ignores_scale() {
        let a = vec![vec![1.0, 0.0], vec![0.0, 2.0], vec![3.0, 3.0]];
        // Pairs: (1,0)(0,1) -> 0, (1,0)(1,1)/sqrt2 -> 0.7071, (0,1)(1,1) -> 0.7071; both orders.
        let expect = (0.0 + 2.0 * std::f64::consts::FRAC_1_SQRT_2) / 3.0;
        assert!((mean_cosine(&a, &a, true) - expect).abs() < 1e-12);
        let b = vec![vec![-5.0, 0.0]];
        assert!((mean_cosine(&a[..1], &b, false) + 1.0).abs() < 1e-12);
        assert!(mean_cosine(&a[..1], &a[..1], true).is_nan(), "no pair");
    }

    #[test]
    fn rotation_outliers_turn_each_image_by_90_180_270_in_turn() {
        let img = RgbImage::from_fn(4, 4, |x, y| image::Rgb([(x * 4 + y) as u8, 0, 0]));
        let spec: OutlierSpec = "rotation".parse().unwrap();
        let out = outliers_of(&vec![img.clone(); 4], &spec, 4, 0).unwrap();
        for (i, o) in out.iter().enumerate() {
            assert_eq!(*o, rotate::rotate(&img, 1 + (i % 3) as u8));
        }
        let oe: OutlierSpec = "oe:/somewhere".parse().unwrap();
        assert!(outliers_of(&[img], &oe, 4, 0).is_none());
    }
}

//! `bank.safetensors`: the ID embedding bank and a thumbnail per entry.
//!
//! - `bank.A.mean`: `F32 [dim]` and `bank.A`: `F16 [n, dim]`: the L2-normalised encoder features
//!   of the good training images rotated by `A` quarter turns (one pair per angle of the
//!   manifest's `bank.angles`), stored as their mean row plus each row's f16 residual from it;
//!   row `i` is `normalise(mean + bank.A[i])`;
//! - `thumbnails`: `U8 [n, t, t, 3]`, RGB, the test-transformed training image of each entry
//!   resized to `t` (the manifest's `bank.thumbnail-size`), so the device can show the nearest
//!   good image beside an alert.
//!
//! Why residuals: good images of one product lie close together (cosines of 0.999 between bank
//! rows are common after FIRM training), so the distances that decide a verdict are 1e-4..1e-2.
//! Plain f16 rows (11 significant bits) put noise of about 1e-5 on every cosine, which measurably
//! reordered the bottle test scores (Spearman 0.998 against the float model with every layer in
//! f32); the residuals are about 20x smaller than the rows, and so is their rounding error. The
//! matrix is still f16, the mean one f32 row per angle. Device and self-test reconstruct the rows
//! the same way ([`BankData::bank`]).

use std::collections::BTreeSet;

use half::f16;
use image::RgbImage;

use super::BundleError;
use super::tensors::{OwnedTensor, TensorFile};
use crate::score::Bank;

pub const MEMBER: &str = "bank.safetensors";
/// The patch bank's tensor.
pub const PATCH: &str = "patch";

/// The banks (one per angle) and thumbnails.
#[derive(Debug, Clone, PartialEq)]
pub struct BankData {
    pub dim: usize,
    pub angles: Vec<u8>,
    /// Per angle: the mean of the normalised rows `[dim]`.
    pub mean: Vec<Vec<f32>>,
    /// Per angle: each normalised row minus the mean, `[n, dim]` in f16.
    pub residual: Vec<Vec<f16>>,
    pub thumbnail_size: u32,
    /// `[n, t, t, 3]`.
    pub thumbnails: Vec<u8>,
    /// The patch bank (`patch`: `[entries, patch_dim]` f16), when the bundle scores patches.
    /// Shared with the detector's [`crate::score::patch::PatchBank`], which scores straight
    /// from these rows: a bundle's largest tensor is in memory once.
    pub patch: Option<std::sync::Arc<Vec<f16>>>,
    pub patch_dim: usize,
}

impl BankData {
    /// From raw (unnormalised) features per angle, normalised here, and one thumbnail per entry.
    pub fn new(
        dim: usize,
        angles: &[u8],
        raw: &[Vec<f32>],
        thumbnails: &[RgbImage],
        thumbnail_size: u32,
    ) -> Result<Self, BundleError> {
        if raw.len() != angles.len() {
            return Err(BundleError::inconsistent(format!(
                "{} feature sets for {} angles",
                raw.len(),
                angles.len()
            )));
        }
        let n = thumbnails.len();
        let (mut means, mut residuals) = (Vec::new(), Vec::new());
        for r in raw {
            let bank = Bank::from_raw(r, dim).map_err(BundleError::runtime)?;
            if bank.len() != n {
                return Err(BundleError::inconsistent(format!(
                    "{} bank entries for {n} thumbnails",
                    bank.len()
                )));
            }
            let mut mean = vec![0f64; dim];
            for row in bank.rows().chunks(dim) {
                mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
            }
            let mean: Vec<f32> = mean.iter().map(|m| (m / n as f64) as f32).collect();
            residuals.push(
                bank.rows()
                    .chunks(dim)
                    .flat_map(|row| row.iter().zip(&mean).map(|(&v, &m)| f16::from_f32(v - m)))
                    .collect(),
            );
            means.push(mean);
        }
        let mut pixels = Vec::with_capacity(n * (thumbnail_size as usize).pow(2) * 3);
        for t in thumbnails {
            if t.dimensions() != (thumbnail_size, thumbnail_size) {
                return Err(BundleError::inconsistent(format!(
                    "thumbnail of {:?} pixels, expected {thumbnail_size}",
                    t.dimensions()
                )));
            }
            pixels.extend_from_slice(t.as_raw());
        }
        Ok(Self {
            dim,
            angles: angles.to_vec(),
            mean: means,
            residual: residuals,
            thumbnail_size,
            thumbnails: pixels,
            patch: None,
            patch_dim: 0,
        })
    }

    /// With a patch bank of `dim`-d rows (stored in f16).
    pub fn with_patch(mut self, rows: &[f32], dim: usize) -> Result<Self, BundleError> {
        if dim == 0 || rows.is_empty() || !rows.len().is_multiple_of(dim) {
            return Err(BundleError::inconsistent(format!(
                "a patch bank of {} values is not whole rows of {dim}",
                rows.len()
            )));
        }
        if let Some(v) = rows.iter().find(|v| !v.is_finite() || v.abs() > 60000.0) {
            return Err(BundleError::inconsistent(format!(
                "patch bank value {v} does not fit f16"
            )));
        }
        self.patch = Some(std::sync::Arc::new(
            rows.iter().map(|&v| f16::from_f32(v)).collect(),
        ));
        self.patch_dim = dim;
        Ok(self)
    }

    /// The patch bank's rows in f32 (what every path scores against), if any.
    pub fn patch_rows(&self) -> Option<Vec<f32>> {
        self.patch
            .as_ref()
            .map(|p| p.iter().map(|v| v.to_f32()).collect())
    }

    pub fn len(&self) -> usize {
        self.residual
            .first()
            .map_or(0, |r| r.len() / self.dim.max(1))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bank of angle index `i` in f32, ready to score against: each row is
    /// `normalise(mean + residual)`.
    pub fn bank(&self, i: usize) -> Result<Bank<f32>, BundleError> {
        let rows: Vec<f32> = reconstruct(&self.mean[i], &self.residual[i], self.dim);
        Bank::from_normalized(rows, self.dim).map_err(BundleError::runtime)
    }

    /// Thumbnail of entry `i`.
    pub fn thumbnail(&self, i: usize) -> Option<RgbImage> {
        thumbnail_at(&self.thumbnails, self.thumbnail_size, i)
    }

    fn tensor_name(angle: u8) -> String {
        format!("bank.{angle}")
    }

    fn mean_name(angle: u8) -> String {
        format!("bank.{angle}.mean")
    }

    pub fn to_safetensors(&self) -> Result<Vec<u8>, BundleError> {
        let n = self.len();
        let t = self.thumbnail_size as usize;
        let mut v = Vec::new();
        for ((&a, m), r) in self.angles.iter().zip(&self.mean).zip(&self.residual) {
            v.push(OwnedTensor::f32(Self::mean_name(a), &[self.dim], m));
            v.push(OwnedTensor::f16(Self::tensor_name(a), &[n, self.dim], r));
        }
        v.push(OwnedTensor::u8(
            "thumbnails",
            &[n, t, t, 3],
            &self.thumbnails,
        ));
        if let Some(p) = &self.patch {
            let d = self.patch_dim.max(1);
            v.push(OwnedTensor::f16(PATCH, &[p.len() / d, d], p));
        }
        super::tensors::serialize(MEMBER, &v)
    }

    /// Read with the sizes the manifest gives (`patch`: the patch bank's entries and dimension).
    pub fn from_safetensors(
        bytes: &[u8],
        n: usize,
        dim: usize,
        angles: &[u8],
        thumbnail_size: u32,
        patch: Option<(usize, usize)>,
    ) -> Result<Self, BundleError> {
        let (mut bank, thumbnails) =
            Self::without_thumbnails(bytes, n, dim, angles, thumbnail_size, patch)?;
        bank.thumbnails = thumbnails.to_vec();
        Ok(bank)
    }

    /// [`Self::from_safetensors`] with `thumbnails` left empty: their checked bytes where they
    /// lie in `bytes`, for a caller that can place them without a copy
    /// ([`super::Bundle::open_owned`]).
    pub(crate) fn without_thumbnails<'a>(
        bytes: &'a [u8],
        n: usize,
        dim: usize,
        angles: &[u8],
        thumbnail_size: u32,
        patch: Option<(usize, usize)>,
    ) -> Result<(Self, &'a [u8]), BundleError> {
        let f = TensorFile::parse(MEMBER, bytes)?;
        let mut expected = BTreeSet::new();
        let (mut means, mut residuals) = (Vec::new(), Vec::new());
        for &a in angles {
            let name = Self::tensor_name(a);
            let mean_name = Self::mean_name(a);
            let mean = f.f32(&mean_name, &[dim])?;
            let r = f.f16(&name, &[n, dim])?;
            // Rows must be unit vectors (to f16 precision): anything else was not written by us.
            let rows = reconstruct_unnormalised(&mean, &r, dim);
            for (i, row) in rows.chunks(dim).enumerate() {
                let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                if (norm - 1.0).abs() > 1e-2 || norm.is_nan() {
                    return Err(BundleError::tensor(
                        MEMBER,
                        &name,
                        format!("row {i} has norm {norm}; bank rows are unit vectors"),
                    ));
                }
            }
            means.push(mean);
            residuals.push(r);
            expected.insert(name);
            expected.insert(mean_name);
        }
        let t = thumbnail_size as usize;
        let thumbnails = f.u8_in_place("thumbnails", &[n, t, t, 3])?;
        expected.insert("thumbnails".to_string());
        let patch_rows = match patch {
            Some((entries, pd)) => {
                let p = f.f16(PATCH, &[entries, pd])?;
                if let Some(i) = p.iter().position(|v| !v.is_finite()) {
                    return Err(BundleError::tensor(
                        MEMBER,
                        PATCH,
                        format!("value {i} is not finite"),
                    ));
                }
                expected.insert(PATCH.to_string());
                Some(std::sync::Arc::new(p))
            }
            None => None,
        };
        f.expect_exactly(&expected)?;
        let bank = Self {
            dim,
            angles: angles.to_vec(),
            mean: means,
            residual: residuals,
            thumbnail_size,
            thumbnails: Vec::new(),
            patch_dim: patch.map_or(0, |p| p.1),
            patch: patch_rows,
        };
        Ok((bank, thumbnails))
    }
}

fn reconstruct_unnormalised(mean: &[f32], residual: &[f16], dim: usize) -> Vec<f32> {
    residual
        .chunks(dim)
        .flat_map(|row| row.iter().zip(mean).map(|(r, &m)| m + r.to_f32()))
        .collect()
}

/// `normalise(mean + residual)` per row.
fn reconstruct(mean: &[f32], residual: &[f16], dim: usize) -> Vec<f32> {
    reconstruct_unnormalised(mean, residual, dim)
        .chunks(dim)
        .flat_map(crate::score::l2_normalize)
        .collect()
}

/// Entry `i`'s thumbnail in a bank's `thumbnails` buffer (`[n, side, side, 3]` RGB, the layout
/// of [`Bank::thumbnails`]), also for a device that keeps the buffer without its bank; `None`
/// past the end or without thumbnails (side 0).
pub fn thumbnail_at(pixels: &[u8], side: u32, i: usize) -> Option<RgbImage> {
    let per = (side as usize).pow(2) * 3;
    if per == 0 {
        return None;
    }
    let px = pixels.get(i.checked_mul(per)?..)?.get(..per)?;
    RgbImage::from_raw(side, side, px.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Rows as close together as a trained bank's (cosines about 0.999): residuals around the
    /// mean keep the cosines far more exact than plain f16 rows would.
    #[test]
    fn residual_rows_beat_plain_f16_on_a_tight_cluster() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (n, dim) = (50, 512);
        let base: Vec<f32> = (0..dim).map(|_| rng.random_range(0.0..1.0)).collect();
        let raw: Vec<f32> = (0..n)
            .flat_map(|_| {
                base.iter()
                    .map(|&b| b + rng.random_range(-0.02..0.02))
                    .collect::<Vec<_>>()
            })
            .collect();
        let exact = Bank::from_raw(&raw, dim).unwrap();
        let thumbs = vec![RgbImage::new(2, 2); n];
        let data = BankData::new(dim, &[0], std::slice::from_ref(&raw), &thumbs, 2).unwrap();
        let stored = data.bank(0).unwrap();
        let plain: Vec<f32> = exact
            .rows()
            .iter()
            .map(|&v| f16::from_f32(v).to_f32())
            .collect();
        let plain = Bank::from_normalized(plain, dim).unwrap();
        let query = crate::score::l2_normalize(&raw[..dim]);
        let (c_exact, c_stored, c_plain) = (
            exact.cosines(&query),
            stored.cosines(&query),
            plain.cosines(&query),
        );
        assert!(c_exact.iter().all(|&c| c > 0.99), "a tight cluster");
        let err = |c: &[f32]| {
            c.iter()
                .zip(&c_exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let (e_stored, e_plain) = (err(&c_stored), err(&c_plain));
        eprintln!("max cosine error: residual {e_stored:e}, plain f16 {e_plain:e}");
        assert!(
            e_stored * 5.0 < e_plain,
            "residual {e_stored:e} vs plain f16 {e_plain:e}"
        );
        assert!(e_stored < 2e-6, "{e_stored:e}");
        // Round trip through the member.
        let back =
            BankData::from_safetensors(&data.to_safetensors().unwrap(), n, dim, &[0], 2, None)
                .unwrap();
        assert_eq!(back, data);
    }
}

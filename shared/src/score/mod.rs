//! Scoring: kNN cosine scores against an ID bank, the rotation/crop ensemble combiner, and the
//! detection metrics (AUROC, AULC). Shared so the trainer's evaluation and the device's verdicts
//! are the same arithmetic.

pub mod heat;
pub mod knn;
pub mod map;
pub mod metrics;
pub mod patch;
pub mod pixel;
pub mod scan;
pub mod topk;

pub use knn::{Bank, Real, ScoreFn, kde, l2_norm, l2_normalize, mean_top_k};
pub use metrics::{aulc, auroc, linspace, simpson, spearman};
pub use scan::{Nearest, ScoreScratch, l2_normalize_into};
pub use topk::TopK;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Test-time ensemble of a score (FIRM's Table 1 rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ensemble {
    /// One view: the test transform.
    #[default]
    None,
    /// Rotations 0/90/180/270, each against a bank built at the same angle.
    Rotation,
    /// Random crops (scale 0.55-1) of the test image against the plain bank.
    Crops,
    /// Both: crops of each rotated test image against that angle's bank.
    RotationCrops,
}

impl Ensemble {
    pub fn angles(self) -> &'static [u8] {
        match self {
            Ensemble::Rotation | Ensemble::RotationCrops => &[0, 1, 2, 3],
            _ => &[0],
        }
    }

    pub fn uses_crops(self) -> bool {
        matches!(self, Ensemble::Crops | Ensemble::RotationCrops)
    }
}

/// A score function with its ensemble, written `cos_1`, `cos_1+rot`, `cos_1+crops` or
/// `cos_1+rot+crops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScoreSpec {
    pub f: ScoreFn,
    pub ensemble: Ensemble,
}

impl std::fmt::Display for ScoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let suffix = match self.ensemble {
            Ensemble::None => "",
            Ensemble::Rotation => "+rot",
            Ensemble::Crops => "+crops",
            Ensemble::RotationCrops => "+rot+crops",
        };
        write!(f, "{}{suffix}", self.f)
    }
}

impl std::str::FromStr for ScoreSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.split('+');
        let f: ScoreFn = parts.next().unwrap_or_default().parse()?;
        let mut rot = false;
        let mut crops = false;
        for p in parts {
            match p {
                "rot" if !rot => rot = true,
                "crops" if !crops => crops = true,
                other => {
                    return Err(Error::invalid(
                        "score",
                        format!(
                            "`{s}`: unknown or repeated ensemble `{other}`; expected +rot and/or +crops"
                        ),
                    ));
                }
            }
        }
        let ensemble = match (rot, crops) {
            (false, false) => Ensemble::None,
            (true, false) => Ensemble::Rotation,
            (false, true) => Ensemble::Crops,
            (true, true) => Ensemble::RotationCrops,
        };
        Ok(Self { f, ensemble })
    }
}

impl Serialize for ScoreSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ScoreSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Ensemble score of the FIRM reference: for every rotation angle, the mean over crops of that
/// angle's scores (each angle scored only against the bank built at the same angle); then the mean
/// over angles. `per_angle[a][c][i]` is the score of test image `i`, crop `c`, angle `a`.
pub fn ensemble<T: Real>(per_angle: &[Vec<Vec<T>>]) -> Result<Vec<T>> {
    let n = per_angle
        .first()
        .and_then(|crops| crops.first())
        .map(Vec::len)
        .ok_or_else(|| Error::invalid("ensemble", "needs at least one angle and one crop"))?;
    let mut out = vec![T::zero(); n];
    for crops in per_angle {
        if crops.is_empty() || crops.iter().any(|c| c.len() != n) {
            return Err(Error::invalid(
                "ensemble",
                format!("every angle needs >= 1 crop of {n} scores"),
            ));
        }
        let nc = T::from(crops.len()).expect("count");
        for (i, o) in out.iter_mut().enumerate() {
            let mean_over_crops = crops.iter().map(|c| c[i]).sum::<T>() / nc;
            *o = *o + mean_over_crops;
        }
    }
    let na = T::from(per_angle.len()).expect("count");
    out.iter_mut().for_each(|o| *o = *o / na);
    Ok(out)
}

/// Scores of many test images under the ensemble: `banks[a]` is the bank at angle `a`,
/// `features[a][c]` the raw test features (row-major `[n, dim]`) at angle `a`, crop `c`.
pub fn ensemble_scores<T: Real>(
    f: ScoreFn,
    banks: &[Bank<T>],
    features: &[Vec<Vec<T>>],
) -> Result<Vec<T>> {
    if banks.len() != features.len() {
        return Err(Error::invalid(
            "ensemble",
            format!("{} banks for {} angles", banks.len(), features.len()),
        ));
    }
    let per_angle: Vec<Vec<Vec<T>>> = banks
        .iter()
        .zip(features)
        .map(|(bank, crops)| crops.iter().map(|raw| bank.score_all(f, raw)).collect())
        .collect::<Result<_>>()?;
    ensemble(&per_angle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_spec_round_trips() {
        for s in ["cos_1", "cos_5_norm+rot", "kde+crops", "cos_1+rot+crops"] {
            let spec: ScoreSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        let s: ScoreSpec = "center+crops+rot".parse().unwrap();
        assert_eq!(s.ensemble, Ensemble::RotationCrops);
        assert!("cos_1+rot+rot".parse::<ScoreSpec>().is_err());
        assert!("cos_1+flip".parse::<ScoreSpec>().is_err());
    }

    #[test]
    fn ensemble_means_crops_then_angles() {
        // Angle 0: crops [1,2] and [3,4] -> [2,3]; angle 1: one crop [10, 20]. Mean -> [6, 11.5].
        let s = ensemble(&[
            vec![vec![1.0f64, 2.0], vec![3.0, 4.0]],
            vec![vec![10.0, 20.0]],
        ])
        .unwrap();
        assert_eq!(s, vec![6.0, 11.5]);
        assert!(ensemble::<f64>(&[]).is_err());
        assert!(ensemble(&[vec![vec![1.0f64]], vec![vec![1.0, 2.0]]]).is_err());
    }
}

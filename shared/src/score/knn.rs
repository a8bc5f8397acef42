//! kNN anomaly scores against a bank of ID features, as the FIRM reference computes them.
//! Higher score = more normal.
//!
//! - `cos_k`: mean of the k largest cosine similarities between the test feature and the bank
//!   (a flat inner-product index over L2-normalised features).
//! - `cos_k_norm`: `cos_k` times the L2 norm of the raw (unnormalised) test feature.
//! - `kde`: `logsumexp(gamma * cos) / gamma` over the whole bank, with
//!   `gamma = 20 / (population variance of the bank's normalised features * D)`.
//! - `center`: `-(1 - cos(x, normalise(mean of the bank's normalised features)))`.
//!
//! Generic over `f32` (the device) and `f64` (golden checks); accumulation is in the same type.

use num_traits::Float;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Floating-point types the scores run in.
pub trait Real: Float + std::iter::Sum + std::fmt::Debug + Send + Sync + 'static {}
impl Real for f32 {}
impl Real for f64 {}

/// Which score a detector uses (written into bundles and profiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ScoreFn {
    CosK { k: usize },
    CosKNorm { k: usize },
    Kde,
    Center,
}

impl std::fmt::Display for ScoreFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScoreFn::CosK { k } => write!(f, "cos_{k}"),
            ScoreFn::CosKNorm { k } => write!(f, "cos_{k}_norm"),
            ScoreFn::Kde => write!(f, "kde"),
            ScoreFn::Center => write!(f, "center"),
        }
    }
}

impl std::str::FromStr for ScoreFn {
    type Err = Error;
    /// Parses the names `Display` prints: `cos_1`, `cos_5_norm`, `kde`, `center`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "score function",
                format!("`{s}`; expected cos_K, cos_K_norm (K >= 1), kde or center"),
            )
        };
        match s {
            "kde" => return Ok(ScoreFn::Kde),
            "center" => return Ok(ScoreFn::Center),
            _ => {}
        }
        let rest = s.strip_prefix("cos_").ok_or_else(bad)?;
        let (k, norm) = match rest.strip_suffix("_norm") {
            Some(k) => (k, true),
            None => (rest, false),
        };
        let k: usize = k.parse().map_err(|_| bad())?;
        if k == 0 {
            return Err(bad());
        }
        Ok(if norm {
            ScoreFn::CosKNorm { k }
        } else {
            ScoreFn::CosK { k }
        })
    }
}

/// `x / max(||x||, 1e-12)`, as PyTorch's `F.normalize`.
pub fn l2_normalize<T: Real>(x: &[T]) -> Vec<T> {
    let n = l2_norm(x).max(T::from(1e-12).expect("representable"));
    x.iter().map(|&v| v / n).collect()
}

/// Euclidean norm.
pub fn l2_norm<T: Real>(x: &[T]) -> T {
    x.iter().map(|&v| v * v).sum::<T>().sqrt()
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

/// L2-normalised ID features, row-major `[len, dim]`, with the statistics the scores need.
#[derive(Debug, Clone)]
pub struct Bank<T> {
    dim: usize,
    rows: Vec<T>,
    /// `20 / (var * D)`, the KDE bandwidth of this bank.
    gamma: T,
    /// Normalised mean of the normalised rows.
    center: Vec<T>,
}

impl<T: Real> Bank<T> {
    /// Build from raw encoder features (`raw.len() = n * dim`); rows are normalised here.
    pub fn from_raw(raw: &[T], dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(Error::invalid("bank", "feature dimension must be positive"));
        }
        // Normalising keeps the length, so from_normalized still sees (and rejects) a ragged tail.
        let rows: Vec<T> = raw.chunks(dim).flat_map(l2_normalize).collect();
        Self::from_normalized(rows, dim)
    }

    /// Build from rows that are already L2-normalised.
    pub fn from_normalized(rows: Vec<T>, dim: usize) -> Result<Self> {
        if dim == 0 || rows.is_empty() || !rows.len().is_multiple_of(dim) {
            return Err(Error::invalid(
                "bank",
                format!(
                    "{} values do not form a non-empty [n, {dim}] matrix",
                    rows.len()
                ),
            ));
        }
        if rows.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid("bank", "features contain NaN or infinity"));
        }
        let n = rows.len() / dim;
        // Population variance over every element (numpy's `.var()` of the [n, D] matrix).
        let count = T::from(rows.len()).expect("count");
        let mean = rows.iter().copied().sum::<T>() / count;
        let var = rows.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / count;
        let gamma = T::from(20.0).expect("20") / (var * T::from(dim).expect("dim"));
        let mut center = vec![T::zero(); dim];
        for row in rows.chunks(dim) {
            for (c, &v) in center.iter_mut().zip(row) {
                *c = *c + v;
            }
        }
        let nn = T::from(n).expect("n");
        center.iter_mut().for_each(|c| *c = *c / nn);
        let center = l2_normalize(&center);
        Ok(Self {
            dim,
            rows,
            gamma,
            center,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Normalised rows, row-major.
    pub fn rows(&self) -> &[T] {
        &self.rows
    }

    pub fn kde_gamma(&self) -> T {
        self.gamma
    }

    pub fn center(&self) -> &[T] {
        &self.center
    }

    /// Cosine similarity of a normalised query with every bank row.
    pub fn cosines(&self, query_normed: &[T]) -> Vec<T> {
        self.rows
            .chunks(self.dim)
            .map(|r| dot(r, query_normed))
            .collect()
    }

    /// Score one raw test feature (normalised here) with `f`.
    pub fn score(&self, f: ScoreFn, raw: &[T]) -> Result<T> {
        if raw.len() != self.dim {
            return Err(Error::invalid(
                "test feature",
                format!(
                    "has {} values; the bank has dimension {}",
                    raw.len(),
                    self.dim
                ),
            ));
        }
        let q = l2_normalize(raw);
        Ok(match f {
            ScoreFn::CosK { k } => mean_top_k(&self.cosines(&q), k)?,
            ScoreFn::CosKNorm { k } => mean_top_k(&self.cosines(&q), k)? * l2_norm(raw),
            ScoreFn::Kde => kde(&self.cosines(&q), self.gamma),
            ScoreFn::Center => -(T::one() - dot(&q, &self.center)),
        })
    }

    /// Score many raw test features (`raw.len() = n * dim`).
    pub fn score_all(&self, f: ScoreFn, raw: &[T]) -> Result<Vec<T>> {
        raw.chunks(self.dim).map(|r| self.score(f, r)).collect()
    }
}

/// Mean of the `k` largest values (`k` clamped to the number of values, as a flat index returns at
/// most that many neighbours).
pub fn mean_top_k<T: Real>(values: &[T], k: usize) -> Result<T> {
    if k == 0 || values.is_empty() {
        return Err(Error::invalid(
            "k",
            format!(
                "need k >= 1 and a non-empty bank (k = {k}, bank {})",
                values.len()
            ),
        ));
    }
    let k = k.min(values.len());
    let mut v = values.to_vec();
    // Descending; NaN cannot occur (banks and queries are checked finite).
    v.select_nth_unstable_by(k - 1, |a, b| b.partial_cmp(a).expect("finite"));
    let mut top = v[..k].to_vec();
    // Sum in descending order, as the index returns neighbours.
    top.sort_by(|a, b| b.partial_cmp(a).expect("finite"));
    Ok(top.into_iter().sum::<T>() / T::from(k).expect("k"))
}

/// `logsumexp(gamma * cos) / gamma`, stable.
pub fn kde<T: Real>(cos: &[T], gamma: T) -> T {
    let m = cos
        .iter()
        .map(|&c| gamma * c)
        .fold(T::neg_infinity(), T::max);
    let s: T = cos.iter().map(|&c| (gamma * c - m).exp()).sum();
    (m + s.ln()) / gamma
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_mean_and_clamp() {
        let v = [0.1f64, 0.9, 0.5, 0.7];
        assert_eq!(mean_top_k(&v, 1).unwrap(), 0.9);
        assert!((mean_top_k(&v, 2).unwrap() - 0.8).abs() < 1e-15);
        assert!((mean_top_k(&v, 10).unwrap() - 0.55).abs() < 1e-15);
        assert!(mean_top_k(&v, 0).is_err());
    }

    #[test]
    fn scores_on_a_hand_made_bank() {
        // Bank: e1 and e2 (2-D). Query along e1 with norm 3.
        let bank = Bank::from_raw(&[2.0f64, 0.0, 0.0, 5.0], 2).unwrap();
        let q = [3.0, 0.0];
        assert_eq!(bank.score(ScoreFn::CosK { k: 1 }, &q).unwrap(), 1.0);
        assert_eq!(bank.score(ScoreFn::CosK { k: 2 }, &q).unwrap(), 0.5);
        assert_eq!(bank.score(ScoreFn::CosKNorm { k: 1 }, &q).unwrap(), 3.0);
        // Center = normalise(0.5, 0.5) -> cos = 1/sqrt(2).
        let c = bank.score(ScoreFn::Center, &q).unwrap();
        assert!((c + 1.0 - 0.5f64.sqrt()).abs() < 1e-15);
        // Elements {1,0,0,1}: mean 0.5, variance 0.25 -> gamma = 20 / (0.25 * 2) = 40.
        assert!((bank.kde_gamma() - 40.0).abs() < 1e-12);
        let k = bank.score(ScoreFn::Kde, &q).unwrap();
        let want = ((40.0f64).exp() + 1.0).ln() / 40.0;
        assert!((k - want).abs() < 1e-15);
        assert!(bank.score(ScoreFn::Kde, &[1.0]).is_err());
    }

    #[test]
    fn kde_is_stable_for_large_gamma() {
        let v = kde(&[0.99f32, 0.98, -1.0], 5000.0);
        assert!(v.is_finite() && (v - 0.99).abs() < 1e-3);
    }

    #[test]
    fn score_fn_names_round_trip() {
        for f in [
            ScoreFn::CosK { k: 1 },
            ScoreFn::CosKNorm { k: 5 },
            ScoreFn::Kde,
            ScoreFn::Center,
        ] {
            assert_eq!(f.to_string().parse::<ScoreFn>().unwrap(), f);
        }
        for bad in ["cos", "cos_0", "cos_x_norm", "knn"] {
            assert!(bad.parse::<ScoreFn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bank_rejects_bad_shapes_and_nan() {
        assert!(Bank::<f32>::from_raw(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(Bank::<f32>::from_raw(&[], 2).is_err());
        assert!(Bank::from_raw(&[f32::NAN, 1.0], 2).is_err());
    }
}

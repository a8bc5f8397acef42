//! [`DriftSection`]: the manifest's `drift` section, built by the exporter from the good
//! training images' [`FrameStats`] and the calibration distances.

use serde::{Deserialize, Serialize};

use super::{FrameStats, Statistic};
use crate::calibrate;
use crate::error::{Error, Result};

/// Probabilities of the stored image-statistic quantiles; the first and last bound the range.
pub const STAT_PROBABILITIES: [f64; 5] = [0.01, 0.05, 0.5, 0.95, 0.99];
/// Probabilities of the stored calibration-distance quantiles (descriptive).
pub const DISTANCE_PROBABILITIES: [f64; 4] = [0.5, 0.9, 0.95, 0.99];
/// The calibration tail the distance test counts: the top 10 % (the 90th percentile).
pub const TAIL_SHARE: f64 = 0.10;

/// The `p` quantile of ascending `sorted` values, linear between order statistics (numpy's
/// default, Hyndman and Fan's type 7). Panics on an empty slice.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let i = h.floor() as usize;
    match sorted.get(i + 1) {
        Some(&next) => sorted[i] + (h - i as f64) * (next - sorted[i]),
        None => sorted[i],
    }
}

/// The manifest's `drift` section: the good training images' statistics and the calibration
/// distances' quantiles (see the module header for how the device uses them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DriftSection {
    /// How the statistics are computed, in words.
    pub definition: String,
    /// Good training images the statistics were taken over (after the test transform).
    pub images: usize,
    /// Probabilities of the quantiles below, ascending; the first and last bound the training
    /// range (p1 and p99).
    pub probabilities: Vec<f64>,
    pub brightness: Vec<f64>,
    pub contrast: Vec<f64>,
    pub red: Vec<f64>,
    pub green: Vec<f64>,
    pub blue: Vec<f64>,
    pub focus: Vec<f64>,
    pub distance: DistanceTail,
}

/// The held-out good images' distances (the threshold's calibration set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DistanceTail {
    pub calibration_images: usize,
    /// Probabilities of `quantiles` (linear between order statistics).
    pub probabilities: Vec<f64>,
    pub quantiles: Vec<f64>,
    /// `p`: the share of good images meant to lie above `tail-distance` (0.10).
    pub tail_share: f64,
    /// The order statistic `d_(r)`, `r = ceil((1 - p) (n + 1))` capped at `n`.
    pub tail_distance: f64,
    pub tail_rank: usize,
    /// Confidence, over the draw of the calibration images, of `tail-share-bound`.
    pub tail_confidence: f64,
    /// The share above `tail-distance` guaranteed at `tail-confidence`: the null rate of the
    /// device's binomial test.
    pub tail_share_bound: f64,
}

/// What [`DriftSection::definition`] says.
pub const DEFINITION: &str = "per image after the test transform: brightness = mean luma, \
    contrast = luma standard deviation, red/green/blue = channel means (0-255), focus = variance \
    of the 4-neighbour Laplacian of luma over interior pixels; luma = (77 R + 150 G + 29 B) / 256; \
    quantiles linear between order statistics";

impl DriftSection {
    /// From the training images' statistics and the calibration distances; `confidence` is the
    /// threshold's (`--confidence`).
    pub fn new(train: &[FrameStats], calibration: &[f64], confidence: f64) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::invalid(
                "drift statistics",
                "no training images to take them over",
            ));
        }
        if calibration.is_empty() || calibration.iter().any(|d| !d.is_finite()) {
            return Err(Error::invalid(
                "drift statistics",
                "the calibration distances are empty or not all finite",
            ));
        }
        let q = |s: Statistic| {
            let mut v: Vec<f64> = train.iter().map(|t| t.get(s)).collect();
            v.sort_by(f64::total_cmp);
            STAT_PROBABILITIES
                .iter()
                .map(|&p| quantile(&v, p))
                .collect()
        };
        let mut d = calibration.to_vec();
        d.sort_by(f64::total_cmp);
        let n = d.len();
        let rank = (((1.0 - TAIL_SHARE) * (n + 1) as f64).ceil() as usize).clamp(1, n);
        let s = Self {
            definition: DEFINITION.into(),
            images: train.len(),
            probabilities: STAT_PROBABILITIES.to_vec(),
            brightness: q(Statistic::Brightness),
            contrast: q(Statistic::Contrast),
            red: q(Statistic::Red),
            green: q(Statistic::Green),
            blue: q(Statistic::Blue),
            focus: q(Statistic::Focus),
            distance: DistanceTail {
                calibration_images: n,
                probabilities: DISTANCE_PROBABILITIES.to_vec(),
                quantiles: DISTANCE_PROBABILITIES
                    .iter()
                    .map(|&p| quantile(&d, p))
                    .collect(),
                tail_share: TAIL_SHARE,
                tail_distance: d[rank - 1],
                tail_rank: rank,
                tail_confidence: confidence,
                tail_share_bound: calibrate::guaranteed_frr(n, rank, confidence),
            },
        };
        s.validate()
            .map_err(|e| Error::invalid("drift statistics", e))?;
        Ok(s)
    }

    pub fn quantiles(&self, s: Statistic) -> &[f64] {
        match s {
            Statistic::Brightness => &self.brightness,
            Statistic::Contrast => &self.contrast,
            Statistic::Red => &self.red,
            Statistic::Green => &self.green,
            Statistic::Blue => &self.blue,
            Statistic::Focus => &self.focus,
        }
    }

    /// `[p1, p99]` of a statistic (the first and last stored quantiles).
    pub fn range(&self, s: Statistic) -> [f64; 2] {
        let q = self.quantiles(s);
        [q[0], q[q.len() - 1]]
    }

    /// Rules serde cannot express; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let ascending = |v: &[f64]| v.iter().all(|x| x.is_finite()) && v.is_sorted();
        let p = &self.probabilities;
        if p.len() < 2 || !ascending(p) || p[0] <= 0.0 || p[p.len() - 1] >= 1.0 {
            return Err(format!(
                "drift.probabilities {p:?}: need at least two, ascending, inside (0, 1)"
            ));
        }
        for s in Statistic::ALL {
            let q = self.quantiles(s);
            if q.len() != p.len() || !ascending(q) {
                return Err(format!(
                    "drift.{}: {} values, need {} ascending finite ones",
                    s.name(),
                    q.len(),
                    p.len()
                ));
            }
        }
        let d = &self.distance;
        if d.quantiles.len() != d.probabilities.len() || !ascending(&d.quantiles) {
            return Err("drift.distance.quantiles do not match its probabilities".into());
        }
        if !(d.tail_distance.is_finite()
            && d.tail_share > 0.0
            && d.tail_share_bound > 0.0
            && d.tail_share_bound <= 1.0
            && d.tail_rank >= 1
            && d.tail_rank <= d.calibration_images)
        {
            return Err(format!(
                "drift.distance: tail-distance {}, tail-share-bound {}, tail-rank {} of {} \
                 calibration images are not a valid tail",
                d.tail_distance, d.tail_share_bound, d.tail_rank, d.calibration_images
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn good(i: usize) -> FrameStats {
        // Spread over a few grey levels, as the training images.
        let j = (i % 11) as f64;
        FrameStats {
            brightness: 120.0 + j,
            contrast: 40.0 + j / 2.0,
            red: 110.0 + j,
            green: 125.0 + j,
            blue: 130.0 + j,
            focus: 900.0 + 30.0 * j,
        }
    }

    pub(crate) fn section(calibration_images: usize) -> DriftSection {
        let train: Vec<FrameStats> = (0..110).map(good).collect();
        let cal: Vec<f64> = (0..calibration_images)
            .map(|i| (i + 1) as f64 / 1000.0)
            .collect();
        DriftSection::new(&train, &cal, 0.9).unwrap()
    }

    #[test]
    fn the_section_holds_quantiles_and_the_calibration_tail() {
        let s = section(20);
        // Brightness 120..=130, ten of each: p1 = 120, p99 = 130, median 125.
        assert_eq!(s.range(Statistic::Brightness), [120.0, 130.0]);
        assert_eq!(s.brightness[2], 125.0);
        // n = 20: rank ceil(0.9 * 21) = 19, the second largest distance 0.019.
        assert_eq!(
            (s.distance.tail_rank, s.distance.tail_distance),
            (19, 0.019)
        );
        // The share guaranteed at 90 %: P(Bin(20, 1 - a) <= 18) = 0.9 at a = 0.18 (to 2 places).
        assert!((s.distance.tail_share_bound - 0.18).abs() < 0.005);
        // The median of 0.001..=0.020: halfway between 0.010 and 0.011.
        assert!((s.distance.quantiles[0] - 0.0105).abs() < 1e-15);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"tail-share-bound\""));
        assert_eq!(serde_json::from_str::<DriftSection>(&json).unwrap(), s);
        let extra = json.replacen("{", "{\"surprise\":1,", 1);
        assert!(serde_json::from_str::<DriftSection>(&extra).is_err());
    }
}

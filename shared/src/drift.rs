//! The drift sentinel (issue 17, item 3): has the line stopped looking like the training images?
//!
//! - [`FrameStats`] (`stats`): per preprocessed image (the test transform's `size` x `size`
//!   RGB bytes): brightness (mean luma), contrast (luma standard deviation), the R, G and B
//!   means, and focus (variance of the 4-neighbour Laplacian of luma over the interior pixels).
//!   Luma is `Y = (77 R + 150 G + 29 B) / 256`, the integer BT.601 weights (as libjpeg); every
//!   sum is an exact integer, so trainer and device compute the same bits. One pass turns each
//!   row into luma and sums it, the Laplacian runs one row behind on three luma rows kept on the
//!   stack; nothing is allocated. Cost at 224 px: 0.115 ms (`cargo bench -p firm-shared --bench
//!   drift`, 2 shared AMD EPYC cores, x86-64 baseline), 1.5 % of the README's 7.75 ms frame and
//!   a quarter of the test transform it follows (0.42 ms from 640x480); 0.010 ms at 64 px.
//! - [`DriftSection`] (`section`): what the exporter stores in the manifest (`drift`): quantiles
//!   of each statistic over the good training images, and of the held-out good images'
//!   distances that the threshold is calibrated on, with the tail the binomial test counts.
//! - [`DriftMonitor`] (`monitor`): the device's rolling windows, raising and clearing
//!   [`DriftWarning`]s, each with its numbers ([`Evidence`]) and a sentence.
//!
//! # The image statistics' test
//!
//! Over the last `window` frames (default 32), the lower median of each statistic (the
//! element of rank `(window - 1) / 2`, so a shift from the start of the window is seen after
//! at most `window / 2 + 1` frames) is compared with the training range `[p1, p99]` (the
//! section's first and last quantiles) widened on both sides by `margin` (default 0.25) of its
//! width, and by at least 2 grey levels (focus: 0.1 decade). Focus is compared on
//! `log10(1 + focus)`, since blur and sharpening scale it. A warning is raised when the median
//! leaves the widened range and cleared when it is back inside the training range itself
//! (hysteresis: a median near the edge does not flap).
//!
//! # The distance test
//!
//! The calibration's tail is `tail-distance = d_(r)`, the order statistic of rank
//! `r = ceil((1 - p) (n + 1))` (capped at `n`) among the `n` calibration distances, for the
//! tail share `p = 0.10` (the 90th percentile). A new good image lies above it with expected
//! probability `(n + 1 - r) / (n + 1) <= p`, but with few calibration images the share itself
//! is uncertain (Beta distributed: at `n = 20` it exceeds 0.18 one time in ten). The null rate
//! of the test is therefore the share guaranteed at `tail-confidence` (the threshold's own
//! confidence, 0.9) over the draw of the calibration images, [`crate::calibrate::guaranteed_frr`]:
//! `tail-share-bound`: 0.175 for `n = 12`, 0.181 for `n = 20`, 0.149 for `n = 60`, 0.127 for
//! `n = 200`.
//!
//! Among the last `distance-window` passing frames (default 100; flagged frames are alerts, not
//! drift) the monitor counts those above `tail-distance`, `K`, and computes the one-sided
//! binomial p-value `P(X >= K)` for `X ~ Bin(window, tail-share-bound)`. It raises when the
//! p-value is below `alpha` (default 0.001) and clears when it is back at or above
//! `clear-p-value` (default 0.05). Passing frames are a slightly conservative sample: a good
//! frame above `tail-distance` but also above the threshold is not counted, so the rate among
//! passing frames is at most the null's.

mod monitor;
mod section;
mod stats;

pub use monitor::{
    BinomialEvidence, DistanceStatus, DriftConfig, DriftMonitor, DriftStatus, DriftWarning,
    Evidence, RangeEvidence, StatisticStatus, binomial_upper_tail,
};
pub use section::{
    DEFINITION, DISTANCE_PROBABILITIES, DistanceTail, DriftSection, STAT_PROBABILITIES, TAIL_SHARE,
    quantile,
};
pub use stats::{FrameStats, MAX_SIDE};

use serde::{Deserialize, Serialize};

/// Smallest widening of a linear statistic's range, in grey levels.
const LINEAR_MARGIN_FLOOR: f64 = 2.0;
/// Smallest widening of focus's range, in decades of `1 + focus`.
const LOG_MARGIN_FLOOR: f64 = 0.1;

/// An image statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Statistic {
    /// Mean luma, 0..=255.
    Brightness,
    /// Standard deviation of luma, 0..=127.5.
    Contrast,
    /// Mean of the red channel, 0..=255.
    Red,
    Green,
    Blue,
    /// Variance of the Laplacian of luma, in luma units squared.
    Focus,
}

impl Statistic {
    pub const ALL: [Statistic; 6] = [
        Statistic::Brightness,
        Statistic::Contrast,
        Statistic::Red,
        Statistic::Green,
        Statistic::Blue,
        Statistic::Focus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Statistic::Brightness => "brightness",
            Statistic::Contrast => "contrast",
            Statistic::Red => "red",
            Statistic::Green => "green",
            Statistic::Blue => "blue",
            Statistic::Focus => "focus",
        }
    }

    /// The scale the range test works on (focus: `log10(1 + x)`).
    fn scaled(self, x: f64) -> f64 {
        match self {
            Statistic::Focus => x.max(0.0).ln_1p() / std::f64::consts::LN_10,
            _ => x,
        }
    }

    fn unscaled(self, x: f64) -> f64 {
        match self {
            Statistic::Focus => 10f64.powf(x) - 1.0,
            _ => x,
        }
    }

    fn margin_floor(self) -> f64 {
        match self {
            Statistic::Focus => LOG_MARGIN_FLOOR,
            _ => LINEAR_MARGIN_FLOOR,
        }
    }
}

/// What a warning is about: an image statistic, or the distances of passing frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftKind {
    Brightness,
    Contrast,
    Red,
    Green,
    Blue,
    Focus,
    Distance,
}

impl DriftKind {
    pub const ALL: [DriftKind; 7] = [
        DriftKind::Brightness,
        DriftKind::Contrast,
        DriftKind::Red,
        DriftKind::Green,
        DriftKind::Blue,
        DriftKind::Focus,
        DriftKind::Distance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DriftKind::Distance => "distance",
            k => Statistic::ALL[k as usize].name(),
        }
    }
}

impl From<Statistic> for DriftKind {
    fn from(s: Statistic) -> Self {
        DriftKind::ALL[s as usize]
    }
}

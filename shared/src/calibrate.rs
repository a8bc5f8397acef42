//! Threshold calibration for anomaly scores exposed as a distance from normal `d` (higher = more
//! anomalous; an image is flagged as defective iff `d > t`).
//!
//! Factories rarely have defect images, so the threshold is set from held-out *good* images only,
//! with a conformal (order-statistic) guarantee on the false-reject rate
//! `FRR = P(a new good image is flagged)`. Where defect images do exist, [`f1_optimal`] and
//! [`confusion`] describe the trade-off on them.
//!
//! # The conformal threshold
//!
//! Let `d_1..d_n` be the distances of `n` held-out good images, exchangeable with future good
//! images, sorted `d_(1) <= ... <= d_(n)`, and let `F` be the distance distribution of good
//! images. The threshold is `t = d_(k)` for a rank `k` in `1..=n`. Conditional on the calibration
//! set its FRR is `1 - F(d_(k))`, and `F(d_(k))` is distributed as the k-th order statistic of `n`
//! uniforms, `U_(k) <= u  <=>  #{U_i <= u} >= k`, hence
//!
//! ```text
//! P(FRR <= alpha) = P(U_(k) >= 1 - alpha) = P(Bin(n, 1 - alpha) <= k - 1)
//!                 = BinomCDF(k - 1; n, 1 - alpha).
//! ```
//!
//! [`conformal_threshold`] takes the smallest `k` with `BinomCDF(k - 1; n, 1 - alpha) >=
//! confidence` (the lowest threshold, so the most sensitive one, that still keeps the promise).
//! Ties in the distances (a discrete `F`) only make the guarantee conservative.
//!
//! If even `k = n` fails, i.e. `1 - (1 - alpha)^n < confidence`, the target cannot be guaranteed
//! with `n` images; the threshold is then the largest calibration distance (the best possible) and
//! the report says
//!
//! - what *is* guaranteed at that confidence: `alpha* = 1 - (1 - confidence)^(1/n)`;
//! - how many good images the target needs: the smallest `n'` with
//!   `1 - (1 - alpha)^n' >= confidence`, i.e. `n' = ceil(ln(1 - confidence) / ln(1 - alpha))`
//!   ([`images_needed`]; 460 for 0.5 % at 90 %).
//!
//! For every rank the report also carries the FRR guaranteed at the confidence ([`guaranteed_frr`]:
//! the smallest `alpha` with `BinomCDF(k - 1; n, 1 - alpha) >= confidence`, by bisection) and the
//! marginal bound `E[FRR] = E[1 - U_(k)] = (n + 1 - k) / (n + 1)`.
//!
//! # The binomial CDF
//!
//! [`binom_cdf`] sums probability masses from `k` away from the mean (the lower tail when
//! `k <= n p`, else `1 -` the upper tail), with the ratio recurrence
//! `pmf(j - 1) / pmf(j) = j q / ((n - j + 1) p)`, stopping once the terms no longer change the
//! sum. The first mass uses Loader's saddle-point form (as R's `dbinom`),
//!
//! ```text
//! pmf(x) = exp(stirlerr(n) - stirlerr(x) - stirlerr(n - x) - bd0(x, n p) - bd0(n - x, n q))
//!          * sqrt(n / (2 pi x (n - x))),
//! stirlerr(m) = ln m! - (m + 1/2) ln m + m - ln sqrt(2 pi),
//! bd0(x, m)   = x ln(x / m) + m - x,
//! ```
//!
//! which avoids the cancellation of `ln C(n, x) + x ln p + (n - x) ln q` for large `n`; the sum
//! takes `O(sqrt(n p q))` terms, so `n` in the millions is cheap and accurate to ~1e-12.
//! `P(X <= n - 1) = 1 - p^n` is evaluated in closed form as `-expm1(n ln p)`, the same expression
//! [`images_needed`] uses, so "target guaranteed" and "`n >= images_needed`" never disagree.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Probabilities are compared with `>= confidence - PROB_TOL`: exact boundary cases (0.5 and
/// 0.75 with two images: `1 - 0.5^2 = 0.75`) must not be lost to rounding, and the binomial sums
/// are only accurate to about this level anyway. A guarantee short by 1e-12 is no weaker in
/// practice.
const PROB_TOL: f64 = 1e-12;

/// Relative width at which [`guaranteed_frr`] stops bisecting (brief asks for ~1e-9).
const BISECT_REL_TOL: f64 = 1e-10;

/// A tail term smaller than this share of the running sum no longer changes an `f64` sum.
const TAIL_EPS: f64 = 1e-17;

/// `ln(2 pi)`.
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// `ln(sqrt(2 pi))`.
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// What the user asks for: `--target-frr` (default 0.005) and `--confidence` (default 0.9).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CalibrationSpec {
    /// Largest acceptable false-reject rate (share of good images flagged), e.g. 0.005 = 0.5 %.
    pub target_frr: f64,
    /// Probability, over the draw of the calibration images, that the FRR is at most the target.
    pub confidence: f64,
}

impl Default for CalibrationSpec {
    /// 0.5 % false rejects at 90 % confidence: needs 460 good images, a realistic held-out set.
    fn default() -> Self {
        Self {
            target_frr: 0.005,
            confidence: 0.9,
        }
    }
}

impl CalibrationSpec {
    /// Both values are probabilities strictly inside (0, 1): a target of 0 or a confidence of 1
    /// could never be guaranteed, a target of 1 or a confidence of 0 promises nothing.
    pub fn validate(&self) -> Result<()> {
        let t = self.target_frr;
        if !(t > 0.0 && t < 1.0) {
            return Err(Error::invalid(
                "--target-frr",
                format!(
                    "{t} is not a false-reject rate strictly between 0 and 1 (0.005 means 0.5 %)"
                ),
            ));
        }
        let c = self.confidence;
        if !(c > 0.0 && c < 1.0) {
            return Err(Error::invalid(
                "--confidence",
                format!("{c} is not a probability strictly between 0 and 1 (0.9 means 90 %)"),
            ));
        }
        Ok(())
    }
}

/// The conformal threshold and what it guarantees (goes into the bundle manifest and the report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConformalThreshold {
    /// The threshold `t = d_(k)`; an image is flagged iff its distance is `> t`.
    pub distance: f64,
    pub target_frr: f64,
    pub confidence: f64,
    pub n_calibration: usize,
    /// `k`, 1-based in ascending order of the calibration distances.
    pub rank: usize,
    /// Whether `P(FRR <= target_frr) >= confidence` holds with this rank.
    pub target_guaranteed: bool,
    /// The FRR guaranteed at `confidence` with this `k` and `n` (`<= target_frr` when guaranteed).
    pub guaranteed_frr: f64,
    /// `(n + 1 - k) / (n + 1)`: the expected FRR over calibration sets (a bound if tied).
    pub expected_frr_bound: f64,
    /// The smallest calibration set that can guarantee the target at the confidence.
    pub images_needed_for_target: usize,
    /// Share of the calibration distances `> t` (in-sample, for the report only).
    pub calibration_frr: f64,
}

/// The conformal threshold of `good_distances` (held-out good images, any order) for `spec`.
///
/// Errors: invalid `spec`, no distances, a non-finite distance.
pub fn conformal_threshold(
    good_distances: &[f64],
    spec: &CalibrationSpec,
) -> Result<ConformalThreshold> {
    spec.validate()?;
    let alpha = spec.target_frr;
    let confidence = spec.confidence;
    let needed = images_needed(alpha, confidence);
    if good_distances.is_empty() {
        return Err(Error::invalid(
            "calibration set",
            format!(
                "no held-out good images; {needed} are needed to guarantee a false-reject rate \
                 of {} % at {} % confidence",
                fmt_pct(alpha),
                fmt_pct(confidence)
            ),
        ));
    }
    if let Some(i) = good_distances.iter().position(|d| !d.is_finite()) {
        return Err(Error::invalid(
            "calibration distances",
            format!(
                "distance #{i} is {}; every held-out good image needs a finite distance",
                good_distances[i]
            ),
        ));
    }
    let mut sorted = good_distances.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();

    // p = 1 - alpha and q = alpha are passed separately so that q keeps its full precision.
    let holds = |k: usize| meets(binom_cdf_pq(k - 1, n, 1.0 - alpha, alpha), confidence);
    let (rank, target_guaranteed) = if holds(n) {
        // Smallest k with holds(k); invariant: holds(hi), and holds(lo - 1) is false (or lo = 1).
        let (mut lo, mut hi) = (1, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if holds(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        (hi, true)
    } else {
        (n, false)
    };

    let distance = sorted[rank - 1];
    let above = n - sorted.partition_point(|&d| d <= distance);
    let mut guaranteed = guaranteed_frr(n, rank, confidence);
    if target_guaranteed {
        // The target itself satisfies the condition, so the smallest such rate is at most it;
        // the bisection may land a hair above at an exact boundary.
        guaranteed = guaranteed.min(alpha);
    }
    Ok(ConformalThreshold {
        distance,
        target_frr: alpha,
        confidence,
        n_calibration: n,
        rank,
        target_guaranteed,
        guaranteed_frr: guaranteed,
        expected_frr_bound: (n + 1 - rank) as f64 / (n + 1) as f64,
        images_needed_for_target: needed,
        calibration_frr: above as f64 / n as f64,
    })
}

impl ConformalThreshold {
    /// One or two sentences for the report and the command line. The guaranteed rate is rounded
    /// *up* (it is an upper bound); target and confidence are printed as given.
    pub fn summary(&self) -> String {
        let n = self.n_calibration;
        let images = if n == 1 { "image" } else { "images" };
        let head = format!(
            "threshold {} (distance): with {n} held-out good {images} the false-reject rate is at \
             most {} % at {} % confidence",
            fmt_sig(self.distance),
            fmt_pct_up(self.guaranteed_frr),
            fmt_pct(self.confidence),
        );
        if self.target_guaranteed {
            format!("{head} (rank {} of {n})", self.rank)
        } else {
            format!(
                "{head}; the target {} % needs at least {} good images",
                fmt_pct(self.target_frr),
                self.images_needed_for_target
            )
        }
    }
}

/// `P(X <= k)` for `X ~ Bin(n, p)`; NaN when `p` is not in `[0, 1]`.
pub fn binom_cdf(k: usize, n: usize, p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    binom_cdf_pq(k, n, p, 1.0 - p)
}

/// The FRR guaranteed at `confidence` by the threshold of rank `rank` among `n` calibration
/// distances: the smallest `alpha` with `BinomCDF(rank - 1; n, 1 - alpha) >= confidence`, found by
/// bisection (the returned value satisfies the condition; relative accuracy 1e-10). For
/// `rank = n` this is `1 - (1 - confidence)^(1/n)`.
///
/// A rank outside `1..=n` guarantees nothing and yields 1. A confidence `<= 0` yields ~0, one
/// `>= 1` yields 1.
pub fn guaranteed_frr(n: usize, rank: usize, confidence: f64) -> f64 {
    if rank == 0 || rank > n || confidence.is_nan() {
        return 1.0;
    }
    // The CDF grows with alpha (a smaller success probability): it is 0 at alpha = 0 (as
    // rank - 1 < n) and 1 at alpha = 1.
    let holds = |alpha: f64| meets(binom_cdf_pq(rank - 1, n, 1.0 - alpha, alpha), confidence);
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    if holds(lo) {
        return 0.0;
    }
    for _ in 0..200 {
        if hi - lo <= BISECT_REL_TOL * hi {
            break;
        }
        let mid = 0.5 * (lo + hi);
        if holds(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The smallest number of held-out good images `n'` that can guarantee `target_frr` at
/// `confidence`: `1 - (1 - target_frr)^n' >= confidence`, i.e.
/// `ceil(ln(1 - confidence) / ln(1 - target_frr))`. The closed form is only a starting point;
/// the condition itself is checked at `n'` and `n' - 1`, so rounding in the logarithms cannot
/// cause an off-by-one.
///
/// Outside the open unit interval: a target `>= 1` or a confidence `<= 0` needs 1 image; a target
/// `<= 0`, a confidence `>= 1` or NaN can never be guaranteed (`usize::MAX`).
pub fn images_needed(target_frr: f64, confidence: f64) -> usize {
    if target_frr.is_nan() || confidence.is_nan() || target_frr <= 0.0 || confidence >= 1.0 {
        return usize::MAX;
    }
    if target_frr >= 1.0 || confidence <= 0.0 {
        return 1;
    }
    let holds = |m: usize| meets(prob_not_all(m, 1.0 - target_frr, target_frr), confidence);
    let estimate = ((-confidence).ln_1p() / (-target_frr).ln_1p()).ceil();
    if estimate >= 2f64.powi(52) {
        // Beyond exact integers; no calibration set is this large anyway (the cast saturates).
        return estimate as usize;
    }
    let mut m = (estimate as usize).max(1);
    while m > 1 && holds(m - 1) {
        m -= 1;
    }
    while !holds(m) {
        m += 1;
    }
    m
}

/// Counts of a defect classifier (defect = positive class) at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Confusion {
    /// Defects flagged.
    pub true_positives: usize,
    /// Defects passed (missed).
    pub false_negatives: usize,
    /// Good images flagged (false rejects).
    pub false_positives: usize,
    /// Good images passed.
    pub true_negatives: usize,
}

impl Confusion {
    /// Share of good images flagged; `None` without good images.
    pub fn false_reject_rate(&self) -> Option<f64> {
        ratio(
            self.false_positives,
            self.false_positives + self.true_negatives,
        )
    }

    /// Share of defects passed; `None` without defects.
    pub fn miss_rate(&self) -> Option<f64> {
        ratio(
            self.false_negatives,
            self.true_positives + self.false_negatives,
        )
    }

    /// Share of flagged images that are defects; `None` when nothing is flagged.
    pub fn precision(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// Share of defects flagged; `None` without defects.
    pub fn recall(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// `2 TP / (2 TP + FP + FN)`, the harmonic mean of precision and recall; 0 when defects exist
    /// but none is flagged, `None` when there are no defects and nothing is flagged.
    pub fn f1(&self) -> Option<f64> {
        let (num, den) = f1_parts(
            self.true_positives,
            self.false_positives,
            self.false_negatives,
        );
        ratio(num, den)
    }
}

/// The confusion matrix of flagging `d > threshold` on test images (`is_defect[i]` tells whether
/// image `i` is a defect). The two slices must have the same length (callers validate it, as
/// [`f1_optimal`] does; extra entries are ignored in release builds). A NaN distance is never
/// flagged.
pub fn confusion(distances: &[f64], is_defect: &[bool], threshold: f64) -> Confusion {
    debug_assert_eq!(distances.len(), is_defect.len());
    let mut c = Confusion {
        true_positives: 0,
        false_negatives: 0,
        false_positives: 0,
        true_negatives: 0,
    };
    for (&d, &defect) in distances.iter().zip(is_defect) {
        match (defect, d > threshold) {
            (true, true) => c.true_positives += 1,
            (true, false) => c.false_negatives += 1,
            (false, true) => c.false_positives += 1,
            (false, false) => c.true_negatives += 1,
        }
    }
    c
}

/// A threshold with its F1 score, precision and recall (defect = positive class).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct F1Point {
    pub threshold: f64,
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
}

/// The threshold with the highest F1 on test images, flagging `d > threshold`.
///
/// Candidates are every distinct distance and, for "flag all", the largest `f64` below the
/// minimum distance. F1 values are compared exactly (as fractions of counts). Among equal F1 the
/// *lowest* threshold wins: it flags at least as many images, so it misses no more defects, and a
/// missed defect usually costs more than a false reject. At the optimum at least one defect is
/// flagged (flag-all already has F1 > 0), so precision and recall are defined.
///
/// Errors: lengths differ, a non-finite distance, no defect or no good image.
pub fn f1_optimal(distances: &[f64], is_defect: &[bool]) -> Result<F1Point> {
    if distances.len() != is_defect.len() {
        return Err(Error::invalid(
            "test distances",
            format!(
                "{} distances but {} defect flags; every test image needs both",
                distances.len(),
                is_defect.len()
            ),
        ));
    }
    if let Some(i) = distances.iter().position(|d| !d.is_finite()) {
        return Err(Error::invalid(
            "test distances",
            format!(
                "distance #{i} is {}; every test image needs a finite distance",
                distances[i]
            ),
        ));
    }
    let defects = is_defect.iter().filter(|&&b| b).count();
    let goods = is_defect.len() - defects;
    if defects == 0 || goods == 0 {
        let missing = if defects == 0 { "defect" } else { "good" };
        return Err(Error::invalid(
            "test distances",
            format!(
                "no {missing} test images; the F1-optimal threshold needs at least one defect and \
                 one good image"
            ),
        ));
    }

    let mut order: Vec<(f64, bool)> = distances
        .iter()
        .copied()
        .zip(is_defect.iter().copied())
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));

    let point = |threshold: f64, tp: usize, fp: usize| {
        let (num, den) = f1_parts(tp, fp, defects - tp);
        F1Point {
            threshold,
            f1: num as f64 / den as f64,
            precision: tp as f64 / (tp + fp) as f64,
            recall: tp as f64 / defects as f64,
        }
    };

    // Flag all: every image is above a threshold just below the minimum.
    let (mut tp, mut fp) = (defects, goods);
    let mut best = point(order[0].0.next_down(), tp, fp);
    let mut best_parts = f1_parts(tp, fp, 0);
    let mut i = 0;
    while i < order.len() {
        // `==` (not total_cmp) so that 0.0 and -0.0 form one threshold.
        let v = order[i].0;
        while i < order.len() && order[i].0 == v {
            if order[i].1 {
                tp -= 1;
            } else {
                fp -= 1;
            }
            i += 1;
        }
        let parts = f1_parts(tp, fp, defects - tp);
        // num/den > best_num/best_den, exactly; strict, so the lower threshold keeps ties.
        if parts.0 as u128 * best_parts.1 as u128 > best_parts.0 as u128 * parts.1 as u128 {
            best_parts = parts;
            best = point(v, tp, fp);
        }
    }
    Ok(best)
}

/// `(2 TP, 2 TP + FP + FN)`: F1 as a fraction of counts.
fn f1_parts(tp: usize, fp: usize, fn_: usize) -> (usize, usize) {
    (2 * tp, 2 * tp + fp + fn_)
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Whether a computed probability reaches `confidence` (see [`PROB_TOL`]).
fn meets(prob: f64, confidence: f64) -> bool {
    prob >= confidence - PROB_TOL
}

/// `1 - p^n`: the probability that not all of `n` Bernoulli(p) trials succeed, i.e.
/// `P(Bin(n, p) <= n - 1)`, as `-expm1(n ln p)` with `ln p = ln1p(-q)` for small `q`.
fn prob_not_all(n: usize, p: f64, q: f64) -> f64 {
    let ln_p = if q < 0.5 { (-q).ln_1p() } else { p.ln() };
    -(n as f64 * ln_p).exp_m1()
}

/// `P(Bin(n, p) <= k)` with `q = 1 - p` given separately (for full precision of small `q`).
fn binom_cdf_pq(k: usize, n: usize, p: f64, q: f64) -> f64 {
    if k >= n || p == 0.0 {
        return 1.0;
    }
    if q == 0.0 {
        return 0.0;
    }
    if k + 1 == n {
        return prob_not_all(n, p, q);
    }
    // Sum from k away from the bulk, where the masses fall off geometrically: down for the lower
    // tail (k <= n p), up for the upper tail (k > n p, returned as 1 - tail). The ratios are
    // below 1 on those sides, so a mass of k that underflows means a negligible tail.
    if k as f64 <= n as f64 * p {
        let q_over_p = q / p;
        let mut term = binom_pmf(k, n, p, q);
        let mut sum = term;
        let mut j = k;
        while j > 0 && term > sum * TAIL_EPS {
            // pmf(j - 1) = pmf(j) * j q / ((n - j + 1) p)
            term *= j as f64 / (n - j + 1) as f64 * q_over_p;
            sum += term;
            j -= 1;
        }
        sum.min(1.0)
    } else {
        let p_over_q = p / q;
        let mut j = k + 1;
        let mut term = binom_pmf(j, n, p, q);
        let mut sum = term;
        while j < n && term > sum * TAIL_EPS {
            // pmf(j + 1) = pmf(j) * (n - j) p / ((j + 1) q)
            term *= (n - j) as f64 / (j + 1) as f64 * p_over_q;
            sum += term;
            j += 1;
        }
        (1.0 - sum).max(0.0)
    }
}

/// `P(Bin(n, p) = x)` by Loader's saddle-point formula (R's `dbinom_raw`).
fn binom_pmf(x: usize, n: usize, p: f64, q: f64) -> f64 {
    if x > n {
        return 0.0;
    }
    if p == 0.0 {
        return if x == 0 { 1.0 } else { 0.0 };
    }
    if q == 0.0 {
        return if x == n { 1.0 } else { 0.0 };
    }
    let nf = n as f64;
    if x == 0 {
        if n == 0 {
            return 1.0;
        }
        let lc = if p < 0.1 {
            -bd0(nf, nf * q) - nf * p
        } else {
            nf * q.ln()
        };
        return lc.exp();
    }
    if x == n {
        let lc = if q < 0.1 {
            -bd0(nf, nf * p) - nf * q
        } else {
            nf * p.ln()
        };
        return lc.exp();
    }
    let xf = x as f64;
    let lc =
        stirlerr(nf) - stirlerr(xf) - stirlerr(nf - xf) - bd0(xf, nf * p) - bd0(nf - xf, nf * q);
    // ln(2 pi x (n - x) / n)
    let lf = LN_2PI + xf.ln() + (-xf / nf).ln_1p();
    (lc - 0.5 * lf).exp()
}

/// `stirlerr(m) = ln m! - (m + 1/2) ln m + m - ln sqrt(2 pi)` (the error of Stirling's formula)
/// for an integer `m >= 1`: directly up to 15, else by its asymptotic series
/// `1/(12 m) - 1/(360 m^3) + 1/(1260 m^5) - 1/(1680 m^7) + 1/(1188 m^9)`.
fn stirlerr(m: f64) -> f64 {
    const S0: f64 = 1.0 / 12.0;
    const S1: f64 = 1.0 / 360.0;
    const S2: f64 = 1.0 / 1260.0;
    const S3: f64 = 1.0 / 1680.0;
    const S4: f64 = 1.0 / 1188.0;
    if m <= 15.0 {
        return stirlerr_direct(m);
    }
    let mm = m * m;
    if m > 500.0 {
        (S0 - S1 / mm) / m
    } else if m > 80.0 {
        (S0 - (S1 - S2 / mm) / mm) / m
    } else if m > 35.0 {
        (S0 - (S1 - (S2 - S3 / mm) / mm) / mm) / m
    } else {
        (S0 - (S1 - (S2 - (S3 - S4 / mm) / mm) / mm) / mm) / m
    }
}

/// `stirlerr` from its definition, for small integers (`m!` is exact in `f64` up to 18).
fn stirlerr_direct(m: f64) -> f64 {
    let fact: f64 = (2..=m as u64).map(|i| i as f64).product();
    fact.ln() - (m + 0.5) * m.ln() + m - LN_SQRT_2PI
}

/// `bd0(x, m) = x ln(x / m) + m - x` (the binomial deviance term), by a series when `x` is close
/// to `m`, where the direct form cancels.
fn bd0(x: f64, m: f64) -> f64 {
    let d = x - m;
    if d.abs() < 0.1 * (x + m) {
        // x ln(x/m) + m - x = d v + 2 x (v^3/3 + v^5/5 + ...), v = d / (x + m)
        let mut v = d / (x + m);
        let mut s = d * v;
        let mut ej = 2.0 * x * v;
        v *= v;
        for j in 1..1000 {
            ej *= v;
            let s1 = s + ej / (2 * j + 1) as f64;
            if s1 == s {
                return s1;
            }
            s = s1;
        }
        s
    } else {
        x * (x / m).ln() + m - x
    }
}

/// A rate as a percentage with the fewest decimals that still show it as given (0.005 -> "0.5",
/// 0.9 -> "90", 0.9999 -> "99.99"); 4 significant digits when no short form fits.
fn fmt_pct(rate: f64) -> String {
    let v = rate * 100.0;
    for decimals in 0..=6 {
        let s = format!("{v:.decimals$}");
        if s.parse::<f64>()
            .is_ok_and(|back| (back - v).abs() <= 1e-9 * v.abs())
        {
            return s;
        }
    }
    fmt_sig(v)
}

/// An upper-bound rate as a percentage rounded *up* to 3 significant digits (0.10875 -> "10.9").
fn fmt_pct_up(rate: f64) -> String {
    let v = rate * 100.0;
    if v.is_nan() || v <= 0.0 {
        return "0".to_owned();
    }
    let decimals = (2 - v.log10().floor() as i32).clamp(0, 15) as usize;
    let scale = 10f64.powi(decimals as i32);
    // The small offset keeps exact values (0.5 stored as 0.50000000000000001) from rounding up.
    let up = ((v * scale - 1e-6).ceil() / scale).max(0.0);
    trim_zeros(format!("{up:.decimals$}"))
}

/// A distance with 4 significant digits, trailing zeros dropped; scientific outside 1e-3..1e6.
fn fmt_sig(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        return "0".to_owned();
    }
    if !(1e-3..1e6).contains(&a) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
    trim_zeros(format!("{x:.decimals$}"))
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn rel_close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE)
    }

    /// `P(X <= k)` from the textbook formula with explicit binomial coefficients.
    fn cdf_explicit(k: usize, n: usize, p: f64) -> f64 {
        let mut c = 1.0; // C(n, j), built up exactly for small n
        let mut sum = 0.0;
        for j in 0..=k.min(n) {
            if j > 0 {
                c = c * (n + 1 - j) as f64 / j as f64;
            }
            sum += c * p.powi(j as i32) * (1.0 - p).powi((n - j) as i32);
        }
        sum
    }

    #[test]
    fn binom_cdf_matches_explicit_formula_n5() {
        // By hand: C(5, j) = 1 5 10 10 5 1, p = 0.3, q = 0.7.
        let q: f64 = 0.7;
        let pmf = [
            q.powi(5),
            5.0 * 0.3 * q.powi(4),
            10.0 * 0.09 * q.powi(3),
            10.0 * 0.027 * q.powi(2),
            5.0 * 0.0081 * q,
            0.00243,
        ];
        let mut cum = 0.0;
        for k in 0..=5 {
            cum += pmf[k];
            let got = binom_cdf(k, 5, 0.3);
            assert!((got - cum).abs() < 1e-14, "k {k}: {got} vs {cum}");
            assert!((got - cdf_explicit(k, 5, 0.3)).abs() < 1e-14);
        }
        // P(X <= 0) = 0.7^5 = 0.16807 and P(X <= 1) = 0.16807 + 0.36015 exactly.
        assert!((binom_cdf(0, 5, 0.3) - 0.16807).abs() < 1e-15);
        assert!((binom_cdf(1, 5, 0.3) - 0.52822).abs() < 1e-15);
    }

    #[test]
    fn binom_cdf_small_n_grid_matches_explicit() {
        for n in 1..=30 {
            for &p in &[0.01, 0.1, 0.37, 0.5, 0.8, 0.995] {
                for k in 0..=n {
                    let got = binom_cdf(k, n, p);
                    let want = cdf_explicit(k, n, p);
                    assert!(
                        (got - want).abs() < 1e-13,
                        "n {n} p {p} k {k}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn binom_cdf_limits() {
        for &p in &[0.0, 0.2, 0.9, 1.0] {
            assert_eq!(binom_cdf(7, 7, p), 1.0);
            assert_eq!(binom_cdf(9, 7, p), 1.0);
        }
        for k in 0..10 {
            assert_eq!(binom_cdf(k, 10, 0.0), 1.0);
            assert_eq!(binom_cdf(k, 10, 1.0), 0.0);
        }
        assert_eq!(binom_cdf(0, 0, 0.5), 1.0);
        assert!(binom_cdf(1, 5, -0.1).is_nan());
        assert!(binom_cdf(1, 5, 1.5).is_nan());
        assert!(binom_cdf(1, 5, f64::NAN).is_nan());
    }

    #[test]
    fn binom_cdf_closed_forms_near_n() {
        for &n in &[1usize, 2, 20, 1000, 100_000] {
            for &p in &[0.3_f64, 0.9, 0.995, 0.9999] {
                let pn = p.powi(n as i32);
                let got = binom_cdf(n - 1, n, p);
                assert!((got - (1.0 - pn)).abs() < 1e-12, "n {n} p {p}: {got}");
                if n >= 3 {
                    // P(X <= n - 2) = 1 - p^n - n q p^(n - 1): the summed upper tail.
                    let q = 1.0 - p;
                    let want = 1.0 - pn - n as f64 * q * p.powi(n as i32 - 1);
                    let got = binom_cdf(n - 2, n, p);
                    assert!((got - want).abs() < 1e-12, "n {n} p {p}: {got} vs {want}");
                }
            }
        }
    }

    /// Against a log-factorial reference (an independent computation) at n = 2000, tails included.
    #[test]
    fn binom_cdf_matches_log_factorial_reference() {
        let n = 2000;
        let p: f64 = 0.37;
        let mut ln_fact = vec![0.0_f64; n + 1];
        for i in 1..=n {
            ln_fact[i] = ln_fact[i - 1] + (i as f64).ln();
        }
        let ln_pmf = |j: usize| {
            ln_fact[n] - ln_fact[j] - ln_fact[n - j]
                + j as f64 * p.ln()
                + (n - j) as f64 * (-p).ln_1p()
        };
        for &k in &[400usize, 600, 700, 740, 760, 800] {
            let want: f64 = (0..=k).map(|j| ln_pmf(j).exp()).sum();
            let got = binom_cdf(k, n, p);
            assert!(rel_close(got, want, 1e-8), "k {k}: {got} vs {want}");
        }
        // Upper tail P(X > k): relative to the reference's own accuracy, plus the rounding of
        // the returned 1 - tail.
        for &k in &[760usize, 800, 900] {
            let tail: f64 = (k + 1..=n).map(|j| ln_pmf(j).exp()).sum();
            let got = 1.0 - binom_cdf(k, n, p);
            assert!(
                (got - tail).abs() <= 1e-8 * tail + 2e-16,
                "k {k}: {got} vs {tail}"
            );
        }
    }

    #[test]
    fn binom_cdf_large_n_is_accurate() {
        let n = 1_000_000;
        let m = n / 2;
        // Symmetric case: P(X <= m) = 1/2 + pmf(m)/2, pmf(m) = C(2m, m)/4^m
        // = (1 - 1/(8m) + 1/(128 m^2)) / sqrt(pi m) + O(m^-3.5).
        let mf = m as f64;
        let pmf =
            (1.0 - 1.0 / (8.0 * mf) + 1.0 / (128.0 * mf * mf)) / (std::f64::consts::PI * mf).sqrt();
        let at = binom_cdf(m, n, 0.5);
        assert!((at - (0.5 + 0.5 * pmf)).abs() < 1e-12, "{at}");
        let below = binom_cdf(m - 1, n, 0.5);
        assert!(rel_close(at - below, pmf, 1e-9), "{}", at - below);
        // Symmetry P(X <= k; p) = 1 - P(X <= n - k - 1; 1 - p), for both tails.
        for &(k, p) in &[
            (4_990usize, 0.005),
            (5_200, 0.005),
            (995_100, 0.995),
            (300_000, 0.3),
        ] {
            let s = binom_cdf(k, n, p) + binom_cdf(n - k - 1, n, 1.0 - p);
            assert!((s - 1.0).abs() < 1e-11, "k {k} p {p}: {s}");
        }
        // Monotone in k through the bulk.
        let mut prev = 0.0;
        for k in (994_000..996_000).step_by(50) {
            let c = binom_cdf(k, n, 0.995);
            assert!(c >= prev);
            prev = c;
        }
        assert!(prev > 0.999_999);
    }

    #[test]
    fn stirlerr_series_continues_the_direct_form() {
        assert!((stirlerr(1.0) - 0.081_061_466_795_327_26).abs() < 1e-15);
        for m in 16..=20 {
            let m = m as f64;
            assert!((stirlerr(m) - stirlerr_direct(m)).abs() < 1e-13, "{m}");
        }
    }

    #[test]
    fn guaranteed_frr_at_rank_n_is_the_closed_form() {
        for &(n, c) in &[
            (1usize, 0.9),
            (20, 0.9),
            (20, 0.99),
            (460, 0.9),
            (5000, 0.5),
        ] {
            let want = 1.0 - (1.0_f64 - c).powf(1.0 / n as f64);
            let got = guaranteed_frr(n, n, c);
            assert!((got - want).abs() < 1e-9, "n {n} c {c}: {got} vs {want}");
        }
        assert!((guaranteed_frr(20, 20, 0.9) - 0.108_749).abs() < 1e-6);
    }

    #[test]
    fn guaranteed_frr_is_the_smallest_rate_that_holds() {
        let (n, c) = (200, 0.9);
        let mut prev = 0.0;
        for rank in (1..=n).rev() {
            let a = guaranteed_frr(n, rank, c);
            assert!(binom_cdf(rank - 1, n, 1.0 - a) >= c - 1e-12);
            if a > 1e-7 {
                assert!(binom_cdf(rank - 1, n, 1.0 - (a - 1e-7)) < c, "rank {rank}");
            }
            // A lower rank (lower threshold) guarantees less.
            assert!(a > prev, "rank {rank}");
            prev = a;
        }
        assert_eq!(guaranteed_frr(10, 0, 0.9), 1.0);
        assert_eq!(guaranteed_frr(10, 11, 0.9), 1.0);
        assert_eq!(guaranteed_frr(0, 1, 0.9), 1.0);
    }

    #[test]
    fn images_needed_examples_and_boundary() {
        assert_eq!(images_needed(0.005, 0.9), 460);
        assert_eq!(images_needed(0.01, 0.9), 230);
        assert_eq!(images_needed(0.1, 0.9), 22);
        // Exact boundary: 1 - 0.5^2 = 0.75 exactly, so 2 images suffice.
        assert_eq!(images_needed(0.5, 0.75), 2);
        assert_eq!(images_needed(0.5, 0.5), 1);
        assert_eq!(images_needed(0.95, 0.9), 1);
        assert_eq!(images_needed(0.0, 0.9), usize::MAX);
        assert_eq!(images_needed(0.01, 1.0), usize::MAX);
        assert_eq!(images_needed(f64::NAN, 0.9), usize::MAX);
        assert_eq!(images_needed(1.0, 0.9), 1);
    }

    #[test]
    fn images_needed_agrees_with_a_loop() {
        for &a in &[0.001, 0.003, 0.005, 0.01, 0.02, 0.05, 0.2] {
            for &c in &[0.5, 0.8, 0.9, 0.95, 0.99, 0.999] {
                // Smallest m with (1 - a)^m <= 1 - c, by repeated multiplication.
                let (mut m, mut pow) = (0usize, 1.0_f64);
                while pow > 1.0 - c {
                    pow *= 1.0 - a;
                    m += 1;
                }
                assert_eq!(images_needed(a, c), m, "a {a} c {c}");
            }
        }
    }

    #[test]
    fn spec_defaults_validation_and_serde() {
        let spec = CalibrationSpec::default();
        assert_eq!(spec.target_frr, 0.005);
        assert_eq!(spec.confidence, 0.9);
        spec.validate().unwrap();
        for bad in [0.0, 1.0, -0.1, 2.0, f64::NAN] {
            let e = CalibrationSpec {
                target_frr: bad,
                ..spec
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains("--target-frr"), "{e}");
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
            let e = CalibrationSpec {
                confidence: bad,
                ..spec
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains("--confidence"), "{e}");
        }
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, r#"{"target-frr":0.005,"confidence":0.9}"#);
        assert_eq!(
            serde_json::from_str::<CalibrationSpec>(&json).unwrap(),
            spec
        );
        assert!(
            serde_json::from_str::<CalibrationSpec>(
                r#"{"target-frr":0.01,"confidence":0.9,"x":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn attainable_target_picks_the_minimal_rank() {
        let n = 1000;
        let spec = CalibrationSpec {
            target_frr: 0.01,
            confidence: 0.9,
        };
        // Distinct distances in scrambled order: d_(i) = i / 1000.
        let d: Vec<f64> = (0..n)
            .map(|i| ((i * 337) % n + 1) as f64 / n as f64)
            .collect();
        let c = conformal_threshold(&d, &spec).unwrap();
        let k = c.rank;
        assert!(c.target_guaranteed);
        assert!(k < n);
        assert_eq!(c.distance, k as f64 / n as f64);
        // k satisfies the binomial condition and k - 1 does not.
        assert!(binom_cdf(k - 1, n, 0.99) >= 0.9);
        assert!(binom_cdf(k - 2, n, 0.99) < 0.9);
        // About n (1 - alpha) + 1.28 sqrt(n alpha (1 - alpha)) ≈ 994.
        assert!((990..=998).contains(&k), "{k}");
        assert!(c.guaranteed_frr <= 0.01 && c.guaranteed_frr > 0.005);
        assert!((c.guaranteed_frr - guaranteed_frr(n, k, 0.9).min(0.01)).abs() < 1e-15);
        assert_eq!(c.expected_frr_bound, (n + 1 - k) as f64 / (n + 1) as f64);
        assert_eq!(c.calibration_frr, (n - k) as f64 / n as f64);
        assert_eq!(c.images_needed_for_target, 230);
        assert_eq!(c.n_calibration, n);
        let round: ConformalThreshold =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
        let s = c.summary();
        assert!(s.contains(&format!("(rank {k} of 1000)")), "{s}");
        let at_most = format!(
            "at most {} % at 90 % confidence",
            fmt_pct_up(c.guaranteed_frr)
        );
        assert!(s.contains(&at_most), "{s}");
        assert!(fmt_pct_up(c.guaranteed_frr).parse::<f64>().unwrap() <= 1.0);
        assert!(
            s.starts_with(&format!("threshold {} (distance)", k as f64 / 1000.0)),
            "{s}"
        );
    }

    /// The guarantee itself: over many calibration sets of uniform distances (true FRR = 1 - t),
    /// the share with FRR <= target is BinomCDF(k - 1; n, 1 - alpha) >= confidence.
    #[test]
    fn guarantee_holds_in_simulation() {
        let (n, sets) = (1000, 2000);
        let spec = CalibrationSpec {
            target_frr: 0.01,
            confidence: 0.9,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(20_240_611);
        let mut covered = 0;
        let mut rank = None;
        for _ in 0..sets {
            let d: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
            let c = conformal_threshold(&d, &spec).unwrap();
            assert_eq!(*rank.get_or_insert(c.rank), c.rank);
            if 1.0 - c.distance <= spec.target_frr {
                covered += 1;
            }
        }
        let k = rank.unwrap();
        let exact = binom_cdf(k - 1, n, 0.99);
        let share = covered as f64 / sets as f64;
        let sd = (exact * (1.0 - exact) / sets as f64).sqrt();
        assert!(share >= 0.9 - 3.0 * 0.0067, "coverage {share}");
        assert!(
            (share - exact).abs() <= 4.0 * sd,
            "coverage {share}, exact {exact}"
        );
        // The rank below would break the promise: its exact coverage is under the confidence.
        assert!(binom_cdf(k - 2, n, 0.99) < 0.9);
    }

    #[test]
    fn unattainable_target_uses_the_maximum_and_says_so() {
        let d: Vec<f64> = (1..=20).rev().map(|i| i as f64 * 0.004).collect();
        let c = conformal_threshold(&d, &CalibrationSpec::default()).unwrap();
        assert!(!c.target_guaranteed);
        assert_eq!(c.rank, 20);
        assert_eq!(c.distance, 20.0 * 0.004);
        let closed = 1.0 - 0.1_f64.powf(1.0 / 20.0);
        assert!((c.guaranteed_frr - closed).abs() < 1e-9);
        assert!((c.guaranteed_frr - 0.1088).abs() < 1e-4);
        assert_eq!(c.images_needed_for_target, 460);
        assert_eq!(c.expected_frr_bound, 1.0 / 21.0);
        assert_eq!(c.calibration_frr, 0.0);
        assert_eq!(
            c.summary(),
            "threshold 0.08 (distance): with 20 held-out good images the false-reject rate is at \
             most 10.9 % at 90 % confidence; the target 0.5 % needs at least 460 good images"
        );
    }

    #[test]
    fn guaranteed_iff_enough_images() {
        let spec = CalibrationSpec::default();
        for n in 440..480 {
            let d: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let c = conformal_threshold(&d, &spec).unwrap();
            assert_eq!(c.target_guaranteed, n >= 460, "n {n}");
            if c.target_guaranteed {
                assert!(c.guaranteed_frr <= spec.target_frr);
            } else {
                assert!(c.guaranteed_frr > spec.target_frr);
            }
        }
    }

    #[test]
    fn ties_at_the_threshold_count_as_passed() {
        // Ten images: eight distinct, then the maximum twice; rank 10 is forced (n small).
        let d = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9];
        let c = conformal_threshold(&d, &CalibrationSpec::default()).unwrap();
        assert_eq!(c.distance, 0.9);
        assert_eq!(c.calibration_frr, 0.0);
        // A loose target puts the rank inside a tie: d > t counts only strictly larger values.
        let d = [1.0, 2.0, 2.0, 2.0, 3.0];
        let spec = CalibrationSpec {
            target_frr: 0.6,
            confidence: 0.5,
        };
        let c = conformal_threshold(&d, &spec).unwrap();
        assert!(c.target_guaranteed);
        assert_eq!(c.distance, 2.0, "rank {}", c.rank);
        assert_eq!(c.calibration_frr, 0.2);
    }

    #[test]
    fn conformal_threshold_errors() {
        let spec = CalibrationSpec::default();
        let e = conformal_threshold(&[], &spec).unwrap_err();
        assert!(e.to_string().contains("460"), "{e}");
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = conformal_threshold(&[0.1, bad, 0.3], &spec).unwrap_err();
            assert!(e.to_string().contains("#1"), "{e}");
        }
        let bad_spec = CalibrationSpec {
            confidence: 1.0,
            ..spec
        };
        let e = conformal_threshold(&[0.1, 0.2], &bad_spec).unwrap_err();
        assert!(e.to_string().contains("--confidence"), "{e}");
    }

    #[test]
    fn summary_formats() {
        assert_eq!(fmt_pct(0.005), "0.5");
        assert_eq!(fmt_pct(0.9), "90");
        assert_eq!(fmt_pct(0.9999), "99.99");
        assert_eq!(fmt_pct_up(0.005), "0.5");
        assert_eq!(fmt_pct_up(0.108_749), "10.9");
        assert_eq!(fmt_pct_up(0.108_01), "10.9");
        assert_eq!(fmt_pct_up(0.004_971), "0.498");
        assert_eq!(fmt_sig(0.083_12), "0.08312");
        assert_eq!(fmt_sig(12.0), "12");
        assert_eq!(fmt_sig(1.5e-5), "1.500e-5");
        let c = conformal_threshold(&[0.25], &CalibrationSpec::default()).unwrap();
        assert!(
            c.summary().contains("with 1 held-out good image the"),
            "{}",
            c.summary()
        );
    }

    /// Distances ascending with their class: G G D G D D.
    fn example() -> (Vec<f64>, Vec<bool>) {
        (
            vec![0.5, 0.1, 0.4, 0.3, 0.6, 0.2],
            vec![true, false, false, true, true, false],
        )
    }

    #[test]
    fn confusion_counts_and_rates() {
        let (d, y) = example();
        let c = confusion(&d, &y, 0.25);
        assert_eq!(
            c,
            Confusion {
                true_positives: 3,
                false_negatives: 0,
                false_positives: 1,
                true_negatives: 2,
            }
        );
        assert_eq!(c.false_reject_rate(), Some(1.0 / 3.0));
        assert_eq!(c.miss_rate(), Some(0.0));
        assert_eq!(c.precision(), Some(0.75));
        assert_eq!(c.recall(), Some(1.0));
        assert_eq!(c.f1(), Some(6.0 / 7.0));
        // Flagging is strict: the defect at exactly 0.3 passes.
        let c = confusion(&d, &y, 0.3);
        assert_eq!((c.true_positives, c.false_negatives), (2, 1));
        assert_eq!((c.false_positives, c.true_negatives), (1, 2));
        assert_eq!(c.miss_rate(), Some(1.0 / 3.0));
        // Nothing flagged, no defects: only the FRR is defined.
        let c = confusion(&[0.1, 0.2], &[false, false], 1.0);
        assert_eq!(c.false_reject_rate(), Some(0.0));
        assert_eq!(
            (c.precision(), c.recall(), c.miss_rate(), c.f1()),
            (None, None, None, None)
        );
        // Defects, none flagged: F1 is 0, precision undefined.
        let c = confusion(&[0.1, 0.2], &[true, false], 1.0);
        assert_eq!(
            (c.f1(), c.precision(), c.recall()),
            (Some(0.0), None, Some(0.0))
        );
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"false-negatives\":1"), "{json}");
    }

    #[test]
    fn f1_optimal_hand_example() {
        // Thresholds: flag-all 6/9, 0.1 6/8, 0.2 6/7, 0.3 4/6, 0.4 4/5, 0.5 2/4, 0.6 0.
        let (d, y) = example();
        let best = f1_optimal(&d, &y).unwrap();
        assert_eq!(best.threshold, 0.2);
        assert_eq!(best.f1, 6.0 / 7.0);
        assert_eq!(best.precision, 0.75);
        assert_eq!(best.recall, 1.0);
        // Consistent with the confusion matrix at that threshold.
        assert_eq!(confusion(&d, &y, best.threshold).f1(), Some(best.f1));
    }

    #[test]
    fn f1_optimal_flag_all_and_ties_keep_the_lower_threshold() {
        // D G G D: flag-all 4/6 = t 0.3 (tp 1, fn 1) 2/3; the lower one wins.
        let d = [0.1, 0.2, 0.3, 0.4];
        let y = [true, false, false, true];
        let best = f1_optimal(&d, &y).unwrap();
        assert!(best.threshold < 0.1 && best.threshold > 0.099_999);
        assert_eq!(best.recall, 1.0);
        assert_eq!(best.precision, 0.5);
        assert_eq!(best.f1, 2.0 / 3.0);
        assert_eq!(confusion(&d, &y, best.threshold).true_positives, 2);
        // Tied distances form one threshold: G and D at 0.5 cannot be split (splitting would
        // give a perfect F1 at 0.5); the optimum is 0.1 (tp 2, fp 1: 4/5).
        let best = f1_optimal(&[0.5, 0.5, 0.9, 0.1], &[false, true, true, false]).unwrap();
        assert_eq!(best.threshold, 0.1);
        assert_eq!(best.f1, 0.8);
        assert_eq!(best.precision, 2.0 / 3.0);
    }

    #[test]
    fn f1_optimal_errors() {
        let e = f1_optimal(&[0.1, 0.2], &[true]).unwrap_err();
        assert!(e.to_string().contains("2 distances but 1"), "{e}");
        let e = f1_optimal(&[0.1, 0.2], &[false, false]).unwrap_err();
        assert!(e.to_string().contains("no defect"), "{e}");
        let e = f1_optimal(&[0.1, 0.2], &[true, true]).unwrap_err();
        assert!(e.to_string().contains("no good"), "{e}");
        let e = f1_optimal(&[0.1, f64::NAN], &[true, false]).unwrap_err();
        assert!(e.to_string().contains("#1"), "{e}");
        assert!(f1_optimal(&[], &[]).is_err());
    }
}

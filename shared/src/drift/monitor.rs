//! [`DriftMonitor`]: the device's rolling windows over image statistics and passing distances,
//! the warnings they raise and clear, and the snapshot the page and `/metrics` show.

use serde::{Deserialize, Serialize};

use super::{DriftKind, DriftSection, FrameStats, Statistic};
use crate::calibrate;

/// The device's settings (`[inference.drift]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Frames the image statistics' median is taken over.
    pub window: usize,
    /// Share of the training range (p1..p99) the median may go beyond before a warning.
    pub margin: f64,
    /// Passing frames whose distances the binomial test counts.
    pub distance_window: usize,
    /// Significance level of the one-sided binomial test.
    pub alpha: f64,
    /// A distance warning clears when the p-value is back at or above this.
    pub clear_p_value: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            window: 32,
            margin: 0.25,
            distance_window: 100,
            alpha: 1e-3,
            clear_p_value: 0.05,
        }
    }
}

impl DriftConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=100_000).contains(&self.window) || !(1..=100_000).contains(&self.distance_window) {
            return Err(format!(
                "window {} and distance-window {} must be within 1..=100000 frames",
                self.window, self.distance_window
            ));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(format!(
                "margin {} must be a non-negative share",
                self.margin
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < self.clear_p_value && self.clear_p_value < 1.0) {
            return Err(format!(
                "need 0 < alpha ({}) < clear-p-value ({}) < 1",
                self.alpha, self.clear_p_value
            ));
        }
        Ok(())
    }
}

/// An image statistic's window median against its training range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RangeEvidence {
    /// Frames the median was taken over.
    pub window: usize,
    pub median: f64,
    /// `[p1, p99]` over the training images.
    pub training: [f64; 2],
    /// The training range widened by the margin: a median outside raises.
    pub allowed: [f64; 2],
}

/// Passing frames above the calibration's tail distance, against the binomial null.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BinomialEvidence {
    /// Passing frames counted.
    pub window: usize,
    /// Of them, above `tail-distance`.
    pub above: usize,
    /// `window * null-share`.
    pub expected: f64,
    pub null_share: f64,
    pub tail_distance: f64,
    /// `P(X >= above)`, `X ~ Bin(window, null-share)`.
    pub p_value: f64,
    pub alpha: f64,
}

/// The numbers behind a warning.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "test", rename_all = "kebab-case")]
pub enum Evidence {
    Range(RangeEvidence),
    Binomial(BinomialEvidence),
}

/// A warning raised or cleared by one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DriftWarning {
    pub kind: DriftKind,
    /// True when this frame raised it, false when it cleared it.
    pub active: bool,
    /// Sequence number of that frame.
    pub frame: u64,
    pub evidence: Evidence,
    /// The warning in words, with its numbers.
    pub message: String,
}

fn message(kind: DriftKind, active: bool, e: &Evidence) -> String {
    let sig = |x: f64| {
        if x != 0.0 && (x.abs() < 0.01 || x.abs() >= 1e5) {
            format!("{x:.3e}")
        } else {
            format!("{x:.2}")
        }
    };
    match e {
        Evidence::Range(r) if active => format!(
            "{} drift: the median of the last {} frames, {}, is outside {}..{} (the training \
             range {}..{}, p1..p99, widened by the margin)",
            kind.name(),
            r.window,
            sig(r.median),
            sig(r.allowed[0]),
            sig(r.allowed[1]),
            sig(r.training[0]),
            sig(r.training[1]),
        ),
        Evidence::Range(r) => format!(
            "{} back in range: the median of the last {} frames, {}, is inside the training \
             range {}..{}",
            kind.name(),
            r.window,
            sig(r.median),
            sig(r.training[0]),
            sig(r.training[1]),
        ),
        Evidence::Binomial(b) => format!(
            "distance {}: {} of the last {} passing frames are above the calibration's 90th \
             percentile {} (expected {:.1} at share {:.3}); one-sided binomial p = {} \
             ({} alpha {})",
            if active { "drift" } else { "back to normal" },
            b.above,
            b.window,
            sig(b.tail_distance),
            b.expected,
            b.null_share,
            sig(b.p_value),
            if active { "below" } else { "no longer below" },
            b.alpha,
        ),
    }
}

/// One image statistic, now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatisticStatus {
    pub statistic: Statistic,
    /// None until the window is full.
    pub median: Option<f64>,
    pub training: [f64; 2],
    pub allowed: [f64; 2],
    pub active: bool,
}

/// The distance test, now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DistanceStatus {
    /// Passing frames in the window, and how many it holds when full.
    pub window: usize,
    pub capacity: usize,
    pub above: usize,
    pub expected: f64,
    pub null_share: f64,
    pub tail_distance: f64,
    /// None until the window is full.
    pub p_value: Option<f64>,
    pub alpha: f64,
    pub active: bool,
}

/// Everything the monitor knows, without allocating (for the page and `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DriftStatus {
    /// Frames observed since the bundle loaded.
    pub frames: u64,
    pub statistics: [StatisticStatus; 6],
    pub distance: DistanceStatus,
}

impl DriftStatus {
    pub fn active(&self, kind: DriftKind) -> bool {
        match kind {
            DriftKind::Distance => self.distance.active,
            k => self.statistics[k as usize].active,
        }
    }
}

/// Rolling windows over the frames' statistics and passing distances (see the module header).
/// All buffers are allocated in [`DriftMonitor::new`]; [`DriftMonitor::observe`] allocates only
/// the message of a warning it raises or clears.
#[derive(Debug, Clone)]
pub struct DriftMonitor {
    cfg: DriftConfig,
    /// `[lo, hi]` of the training range and of the raise range, on each statistic's scale.
    training: [[f64; 2]; 6],
    allowed: [[f64; 2]; 6],
    /// Ring of the last `window` frames' statistics, on their scales.
    stats: Vec<[f64; 6]>,
    next: usize,
    scratch: Vec<f64>,
    medians: [Option<f64>; 6],
    /// Ring of the last `distance-window` passing frames: above the tail distance or not.
    above: Vec<bool>,
    next_above: usize,
    n_above: usize,
    tail_distance: f64,
    null_share: f64,
    p_value: Option<f64>,
    active: [bool; 7],
    frames: u64,
    changes: Vec<DriftWarning>,
}

impl DriftMonitor {
    pub fn new(section: &DriftSection, cfg: DriftConfig) -> std::result::Result<Self, String> {
        section.validate()?;
        cfg.validate()?;
        let mut training = [[0.0; 2]; 6];
        let mut allowed = [[0.0; 2]; 6];
        for s in Statistic::ALL {
            let [lo, hi] = section.range(s).map(|x| s.scaled(x));
            let widen = (cfg.margin * (hi - lo)).max(s.margin_floor());
            training[s as usize] = [lo, hi];
            allowed[s as usize] = [lo - widen, hi + widen];
        }
        Ok(Self {
            cfg,
            training,
            allowed,
            stats: Vec::with_capacity(cfg.window),
            next: 0,
            scratch: vec![0.0; cfg.window],
            medians: [None; 6],
            above: Vec::with_capacity(cfg.distance_window),
            next_above: 0,
            n_above: 0,
            tail_distance: section.distance.tail_distance,
            null_share: section.distance.tail_share_bound,
            p_value: None,
            active: [false; 7],
            frames: 0,
            changes: Vec::with_capacity(DriftKind::ALL.len()),
        })
    }

    pub fn config(&self) -> &DriftConfig {
        &self.cfg
    }

    /// Take one frame: its statistics, and its distance when it passed (None when it was
    /// flagged). Returns the warnings this frame raised or cleared.
    pub fn observe(
        &mut self,
        seq: u64,
        stats: &FrameStats,
        passing_distance: Option<f64>,
    ) -> &[DriftWarning] {
        self.changes.clear();
        self.frames += 1;
        let row = Statistic::ALL.map(|s| s.scaled(stats.get(s)));
        if self.stats.len() < self.cfg.window {
            self.stats.push(row);
        } else {
            self.stats[self.next] = row;
        }
        self.next = (self.next + 1) % self.cfg.window;
        if self.stats.len() == self.cfg.window {
            for s in Statistic::ALL {
                let i = s as usize;
                for (dst, r) in self.scratch.iter_mut().zip(&self.stats) {
                    *dst = r[i];
                }
                let mid = (self.cfg.window - 1) / 2;
                let (_, &mut m, _) = self.scratch.select_nth_unstable_by(mid, f64::total_cmp);
                self.medians[i] = Some(m);
                let [lo, hi] = self.allowed[i];
                let [tlo, thi] = self.training[i];
                let change = if !self.active[i] && (m < lo || m > hi) {
                    Some(true)
                } else if self.active[i] && m >= tlo && m <= thi {
                    Some(false)
                } else {
                    None
                };
                if let Some(active) = change {
                    self.active[i] = active;
                    let e = Evidence::Range(self.range_evidence(s, m));
                    self.push_change(s.into(), active, seq, e);
                }
            }
        }
        if let Some(d) = passing_distance {
            let up = d > self.tail_distance;
            if self.above.len() < self.cfg.distance_window {
                self.above.push(up);
            } else {
                self.n_above -= usize::from(self.above[self.next_above]);
                self.above[self.next_above] = up;
            }
            self.n_above += usize::from(up);
            self.next_above = (self.next_above + 1) % self.cfg.distance_window;
            if self.above.len() == self.cfg.distance_window {
                let p = binomial_upper_tail(self.n_above, self.above.len(), self.null_share);
                self.p_value = Some(p);
                let i = DriftKind::Distance as usize;
                let change = if !self.active[i] && p < self.cfg.alpha {
                    Some(true)
                } else if self.active[i] && p >= self.cfg.clear_p_value {
                    Some(false)
                } else {
                    None
                };
                if let Some(active) = change {
                    self.active[i] = active;
                    let e = Evidence::Binomial(self.binomial_evidence(p));
                    self.push_change(DriftKind::Distance, active, seq, e);
                }
            }
        }
        &self.changes
    }

    /// The warnings the last [`Self::observe`] raised or cleared.
    pub fn changes(&self) -> &[DriftWarning] {
        &self.changes
    }

    fn push_change(&mut self, kind: DriftKind, active: bool, frame: u64, evidence: Evidence) {
        self.changes.push(DriftWarning {
            kind,
            active,
            frame,
            message: message(kind, active, &evidence),
            evidence,
        });
    }

    fn range_evidence(&self, s: Statistic, median: f64) -> RangeEvidence {
        let i = s as usize;
        RangeEvidence {
            window: self.stats.len(),
            median: s.unscaled(median),
            training: self.training[i].map(|x| s.unscaled(x)),
            allowed: self.allowed[i].map(|x| s.unscaled(x)),
        }
    }

    fn binomial_evidence(&self, p_value: f64) -> BinomialEvidence {
        let n = self.above.len();
        BinomialEvidence {
            window: n,
            above: self.n_above,
            expected: n as f64 * self.null_share,
            null_share: self.null_share,
            tail_distance: self.tail_distance,
            p_value,
            alpha: self.cfg.alpha,
        }
    }

    /// The current medians, counts and active warnings.
    pub fn status(&self) -> DriftStatus {
        let statistics = Statistic::ALL.map(|s| {
            let i = s as usize;
            StatisticStatus {
                statistic: s,
                median: self.medians[i].map(|m| s.unscaled(m)),
                training: self.training[i].map(|x| s.unscaled(x)),
                allowed: self.allowed[i].map(|x| s.unscaled(x)),
                active: self.active[i],
            }
        });
        let n = self.above.len();
        DriftStatus {
            frames: self.frames,
            statistics,
            distance: DistanceStatus {
                window: n,
                capacity: self.cfg.distance_window,
                above: self.n_above,
                expected: n as f64 * self.null_share,
                null_share: self.null_share,
                tail_distance: self.tail_distance,
                p_value: self.p_value,
                alpha: self.cfg.alpha,
                active: self.active[DriftKind::Distance as usize],
            },
        }
    }
}

/// `P(X >= k)` for `X ~ Bin(n, p)`, as `P(n - X <= n - k)` so that a small tail is summed
/// directly rather than as one minus a sum near 1.
pub fn binomial_upper_tail(k: usize, n: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    calibrate::binom_cdf(n - k, n, 1.0 - p)
}

#[cfg(test)]
mod tests {
    use super::super::section::tests::{good, section};
    use super::*;

    /// Exact `P(X >= k)` for `X ~ Bin(n, 1/10)`: `sum_j C(n, j) 9^(n - j) / 10^n` in integers
    /// (n <= 30 keeps 10^n within u128), a computation independent of `calibrate`.
    fn exact_tail_tenth(k: u32, n: u32) -> f64 {
        let mut c: u128 = 1; // C(n, j)
        let mut num: u128 = 0;
        for j in 0..=n {
            if j >= k {
                num += c * 9u128.pow(n - j);
            }
            c = c * (n - j) as u128 / (j + 1) as u128;
        }
        num as f64 / 10u128.pow(n) as f64
    }

    #[test]
    fn binomial_tail_matches_an_exact_sum() {
        for (k, n) in [
            (0, 20),
            (1, 20),
            (2, 20),
            (5, 20),
            (8, 20),
            (12, 20),
            (20, 20),
            (9, 30),
        ] {
            let (got, want) = (
                binomial_upper_tail(k, n, 0.1),
                exact_tail_tenth(k as u32, n as u32),
            );
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1e-300) + 1e-300,
                "P(X >= {k}), n = {n}: {got} vs exact {want}"
            );
        }
        // Written down from Python's fractions (sum of comb(20, j) / 10^j * (9/10)^(20 - j)
        // for j >= 8): P(X >= 8 | Bin(20, 0.1)) = 0.000415635018845...
        assert!((binomial_upper_tail(8, 20, 0.1) - 4.156_350_188_45e-4).abs() < 1e-14);
        // Far tail, where 1 - CDF would cancel: P(X >= 20 | Bin(20, 0.1)) = 1e-20.
        assert!((binomial_upper_tail(20, 20, 0.1) / 1e-20 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_darker_window_raises_once_and_clears_when_back() {
        let s = section(200);
        let cfg = DriftConfig::default();
        let mut m = DriftMonitor::new(&s, cfg).unwrap();
        for i in 0..100 {
            assert!(
                m.observe(i, &good(i as usize), None).is_empty(),
                "frame {i}"
            );
        }
        // Allowed: 120 - 0.25 * 10 = 117.5 .. 132.5; darker frames at 100.
        let mut raised = Vec::new();
        for i in 100..200 {
            let mut st = good(i as usize);
            st.brightness = 100.0;
            raised.extend(m.observe(i, &st, None).iter().cloned());
        }
        assert_eq!(raised.len(), 1, "{raised:?}");
        let w = &raised[0];
        assert_eq!((w.kind, w.active), (DriftKind::Brightness, true));
        // The lower median of 32 is dark once 16 of them are: the 16th dark frame, 115.
        assert_eq!(w.frame, 115);
        let Evidence::Range(e) = w.evidence else {
            panic!("{w:?}")
        };
        assert_eq!(
            (e.window, e.median, e.training),
            (32, 100.0, [120.0, 130.0])
        );
        assert_eq!(e.allowed, [117.5, 132.5]);
        assert!(w.message.contains("brightness drift"), "{}", w.message);
        assert!(m.status().active(DriftKind::Brightness));

        // Between the allowed and the training range: still active (no flapping).
        for i in 200..240 {
            let mut st = good(i as usize);
            st.brightness = 119.0;
            assert!(m.observe(i, &st, None).is_empty());
        }
        let mut cleared = Vec::new();
        for i in 240..300 {
            cleared.extend(m.observe(i, &good(i as usize), None).iter().cloned());
        }
        assert_eq!(cleared.len(), 1);
        assert_eq!(
            (cleared[0].kind, cleared[0].active),
            (DriftKind::Brightness, false)
        );
        assert!(!m.status().active(DriftKind::Brightness));
    }

    #[test]
    fn focus_is_judged_on_a_log_scale() {
        let s = section(200);
        let mut m = DriftMonitor::new(&s, DriftConfig::default()).unwrap();
        let mut got = Vec::new();
        for i in 0..64 {
            let mut st = good(i as usize);
            if i >= 32 {
                st.focus /= 4.0;
            }
            got.extend(m.observe(i, &st, None).iter().cloned());
        }
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].kind, DriftKind::Focus);
        let Evidence::Range(e) = got[0].evidence else {
            panic!()
        };
        // Range 900..1200 on log10(1 + x): width 0.1247, margin 0.1 decade (the floor).
        let lo = 10f64.powf(901f64.log10() - 0.1) - 1.0;
        assert!((e.allowed[0] - lo).abs() < 1e-6, "{e:?}");
    }

    #[test]
    fn distance_shift_raises_by_the_binomial_test_and_clears() {
        let s = section(200);
        let bound = s.distance.tail_share_bound;
        let tail = s.distance.tail_distance;
        let cfg = DriftConfig::default();
        let mut m = DriftMonitor::new(&s, cfg).unwrap();
        // Good: 1 in 10 passing frames above the tail.
        let d = |i: u64, every: u64| {
            if i.is_multiple_of(every) {
                tail * 2.0
            } else {
                tail / 2.0
            }
        };
        for i in 0..300 {
            assert!(m.observe(i, &good(i as usize), Some(d(i, 10))).is_empty());
        }
        let st = m.status().distance;
        assert_eq!((st.window, st.above), (100, 10));
        // Now every third: the count climbs until P(X >= K) < 0.001.
        let mut raised = None;
        for i in 300..500 {
            if let Some(w) = m.observe(i, &good(i as usize), Some(d(i, 3))).first() {
                raised = Some(w.clone());
                break;
            }
        }
        let w = raised.expect("a distance warning");
        let Evidence::Binomial(e) = w.evidence else {
            panic!()
        };
        assert_eq!(
            (w.kind, e.window, e.null_share),
            (DriftKind::Distance, 100, bound)
        );
        // The critical count, computed independently of `calibrate`: the smallest K whose
        // upper tail under Bin(100, bound) is below 0.001, by summing the pmf in f64 logs.
        let ln_pmf = |k: usize| {
            let lf = |m: usize| (1..=m).map(|x| (x as f64).ln()).sum::<f64>();
            lf(100) - lf(k) - lf(100 - k)
                + k as f64 * bound.ln()
                + (100 - k) as f64 * (1.0 - bound).ln()
        };
        let tail_sum = |k: usize| (k..=100).map(|j| ln_pmf(j).exp()).sum::<f64>();
        let critical = (0..=100).find(|&k| tail_sum(k) < 1e-3).unwrap();
        assert_eq!(e.above, critical, "{e:?}");
        assert!(
            (e.p_value - tail_sum(e.above)).abs() < 1e-9 * e.p_value,
            "{e:?}"
        );
        assert!((e.expected - 100.0 * bound).abs() < 1e-9);
        // Still shifted: raised once only.
        for i in 500..600 {
            assert!(m.observe(i, &good(i as usize), Some(d(i, 3))).is_empty());
        }
        // Back to 1 in 10: cleared once p >= 0.05.
        let mut cleared = Vec::new();
        for i in 600..800 {
            cleared.extend(
                m.observe(i, &good(i as usize), Some(d(i, 10)))
                    .iter()
                    .cloned(),
            );
        }
        assert_eq!(cleared.len(), 1, "{cleared:?}");
        let Evidence::Binomial(e) = cleared[0].evidence else {
            panic!()
        };
        assert!(!cleared[0].active && e.p_value >= 0.05 && tail_sum(e.above + 1) < 0.05);
        // Flagged frames (None) leave the distance window alone.
        let before = m.status().distance;
        m.observe(800, &good(0), None);
        assert_eq!(m.status().distance.above, before.above);
    }

    #[test]
    fn settings_and_sections_are_checked() {
        let bad = DriftConfig {
            alpha: 0.1,
            clear_p_value: 0.05,
            ..DriftConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("alpha"));
        let mut s = section(20);
        s.focus.pop();
        assert!(s.validate().unwrap_err().contains("drift.focus"));
        assert!(DriftSection::new(&[], &[0.1], 0.9).is_err());
    }
}

//! Detection metrics: image AUROC and the area under the learning curve (AULC).

use crate::error::{Error, Result};

/// AUROC with normal images as the positive class and higher score = more normal: the probability
/// that a random normal image scores above a random anomaly, ties counting 1/2 (Mann-Whitney U;
/// equal to scikit-learn's `roc_auc_score(y == normal, score)`).
///
/// Computed from mid-ranks: every rank sum is a multiple of 1/2, so the result is exact up to the
/// final division. NaN scores are rejected.
pub fn auroc(scores: &[f64], is_normal: &[bool]) -> Result<f64> {
    if scores.len() != is_normal.len() {
        return Err(Error::invalid(
            "auroc",
            format!("{} scores but {} labels", scores.len(), is_normal.len()),
        ));
    }
    if scores.iter().any(|s| s.is_nan()) {
        return Err(Error::invalid("auroc", "a score is NaN"));
    }
    let n_pos = is_normal.iter().filter(|&&b| b).count();
    let n_neg = scores.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::invalid(
            "auroc",
            format!("needs normal and anomalous images (got {n_pos} normal, {n_neg} anomalous)"),
        ));
    }
    let rank_sum_pos: f64 = mid_ranks(scores)
        .iter()
        .zip(is_normal)
        .filter(|(_, n)| **n)
        .map(|(r, _)| r)
        .sum();
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Ok(u / (n_pos as f64 * n_neg as f64))
}

/// Mid-ranks (1-based; ties share the mean of their ranks), as `scipy.stats.rankdata`.
fn mid_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let mid = (i + j + 2) as f64 / 2.0;
        order[i..=j].iter().for_each(|&k| ranks[k] = mid);
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation: the Pearson correlation of the mid-ranks (`scipy.stats.spearmanr`).
pub fn spearman(a: &[f64], b: &[f64]) -> Result<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return Err(Error::invalid(
            "spearman",
            format!(
                "needs two equal-length series of at least 2 values ({} and {})",
                a.len(),
                b.len()
            ),
        ));
    }
    if a.iter().chain(b).any(|v| v.is_nan()) {
        return Err(Error::invalid("spearman", "a value is NaN"));
    }
    let (ra, rb) = (mid_ranks(a), mid_ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return Err(Error::invalid("spearman", "a series is constant"));
    }
    Ok(cov / (va * vb).sqrt())
}

/// Area under the learning curve: Simpson's rule over per-checkpoint AUROCs placed at
/// `x = linspace(0, 1, n)`, as `scipy.integrate.simpson` (SciPy >= 1.11): for an even count the
/// last interval uses Cartwright's correction. One value returns itself (the reference's rule).
pub fn aulc(aurocs: &[f64]) -> Result<f64> {
    let n = aurocs.len();
    match n {
        0 => Err(Error::invalid("aulc", "needs at least one AUROC")),
        1 => Ok(aurocs[0]),
        _ => Ok(simpson(aurocs, &linspace(0.0, 1.0, n))),
    }
}

/// numpy's `linspace(start, stop, n)` (endpoint included, last value exact).
pub fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

/// `scipy.integrate.simpson(y, x=x)` for SciPy >= 1.11, `y.len() == x.len() >= 2`.
pub fn simpson(y: &[f64], x: &[f64]) -> f64 {
    let n = y.len();
    assert!(n >= 2 && x.len() == n, "simpson needs >= 2 matching points");
    let h: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
    if n % 2 == 1 {
        return basic_simpson(y, &h, n - 2);
    }
    if n == 2 {
        return 0.5 * h[0] * (y[0] + y[1]);
    }
    // Simpson on the first n-1 points (an odd count), then the last interval by Cartwright.
    let mut result = basic_simpson(y, &h, n - 3);
    let (h0, h1) = (h[n - 3], h[n - 2]);
    let div = |num: f64, den: f64| if den != 0.0 { num / den } else { 0.0 };
    let alpha = div(2.0 * h1 * h1 + 3.0 * h0 * h1, 6.0 * (h1 + h0));
    let beta = div(h1 * h1 + 3.0 * h0 * h1, 6.0 * h0);
    let eta = div(h1 * h1 * h1, 6.0 * h0 * (h0 + h1));
    result += alpha * y[n - 1] + beta * y[n - 2] - eta * y[n - 3];
    result
}

/// Composite Simpson over panels starting at even indices `< stop` (each panel spans two
/// intervals), with SciPy's formula for irregular spacing.
fn basic_simpson(y: &[f64], h: &[f64], stop: usize) -> f64 {
    let mut total = 0.0;
    let mut i = 0;
    while i < stop {
        let (h0, h1) = (h[i], h[i + 1]);
        let hsum = h0 + h1;
        let hprod = h0 * h1;
        let h0divh1 = if h1 != 0.0 { h0 / h1 } else { 0.0 };
        let inv = if h0divh1 != 0.0 { 1.0 / h0divh1 } else { 0.0 };
        let mid = if hprod != 0.0 {
            hsum * hsum / hprod
        } else {
            0.0
        };
        total += hsum / 6.0 * (y[i] * (2.0 - inv) + y[i + 1] * mid + y[i + 2] * (2.0 - h0divh1));
        i += 2;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_ties_as_half() {
        // normal {3, 2}, anomalies {2, 1}: pairs (3>2),(3>1),(2=2 -> 1/2),(2>1) = 3.5 / 4.
        let a = auroc(&[3.0, 2.0, 2.0, 1.0], &[true, true, false, false]).unwrap();
        assert_eq!(a, 0.875);
        assert_eq!(auroc(&[0.0, 1.0], &[true, false]).unwrap(), 0.0);
        assert_eq!(auroc(&[5.0, 5.0, 5.0], &[true, false, true]).unwrap(), 0.5);
        assert!(auroc(&[1.0, 2.0], &[true, true]).is_err());
        assert!(auroc(&[f64::NAN, 2.0], &[true, false]).is_err());
    }

    #[test]
    fn simpson_is_exact_for_quadratics() {
        // Simpson panels and Cartwright's end correction both fit parabolas: exact for quadratics
        // for every count, and for cubics when the count is odd.
        let f = |x: f64| 3.0 * x * x - x + 0.5;
        let exact = 1.0 - 0.5 + 0.5; // integral over [0, 1]
        for n in [3usize, 4, 5, 6, 7, 10] {
            let x = linspace(0.0, 1.0, n);
            let y: Vec<f64> = x.iter().map(|&v| f(v)).collect();
            assert!((simpson(&y, &x) - exact).abs() < 1e-13, "n = {n}");
        }
        let cubic = |x: f64| 2.0 * x * x * x - x * x + 0.5;
        let x = linspace(0.0, 1.0, 7);
        let y: Vec<f64> = x.iter().map(|&v| cubic(v)).collect();
        assert!((simpson(&y, &x) - (0.5 - 1.0 / 3.0 + 0.5)).abs() < 1e-13);
        assert_eq!(aulc(&[0.7]).unwrap(), 0.7);
        assert!((aulc(&[0.5, 0.7]).unwrap() - 0.6).abs() < 1e-15);
        assert!(aulc(&[]).is_err());
    }

    #[test]
    fn spearman_matches_scipy() {
        // scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]).statistic = 0.8207826816681233
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]).unwrap();
        assert!((r - 0.8207826816681233).abs() < 1e-12, "{r}");
        let r = spearman(&[3.0, 1.0, 2.0], &[30.0, 10.0, 20.0]).unwrap();
        assert!((r - 1.0).abs() < 1e-12);
        let r = spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap();
        assert!((r + 1.0).abs() < 1e-12);
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_err());
        assert!(spearman(&[1.0], &[1.0]).is_err());
    }
}

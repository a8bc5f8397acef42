//! Scoring one query against a [`Bank<f32>`] without allocating: the bank matrix product
//! (cosines of the normalised query with every row), then the score and the nearest row, all in a
//! [`ScoreScratch`] made once per bank. This is the per-frame path of the device; [`Bank::score`]
//! stays the definition it is tested against.
//!
//! Layout: the bank is row-major `[len][dim]` (each row D-contiguous), the query `[dim]`.
//!
//! Algorithm ([`cosines_into`]): row by row, each dot product in [`LANES`] = 16 partial sums
//! (lane `l` sums the products of dimensions `d ≡ l mod 16` in order), added in lane order at the
//! end, then the `dim % 16` last products. Plain safe Rust on fixed-size arrays, which LLVM's SLP
//! vectoriser turns into 4 SSE2 (2 AVX) registers of independent add chains; the query stays in
//! L1. Blocks of 4 rows sharing each query load were measured 3x slower: LLVM then vectorises
//! across the 4 rows, with shuffles. The rows are split over threads with `rayon::join` on
//! `split_at_mut` halves (no allocation) when the bank has >= 2^18 elements.
//! The summation order differs from [`Bank::cosines`] (a sequential sum), so cosines agree to
//! ~1e-7, not bit for bit; the scores are compared with `Bank::score` within 1e-6 (relative for
//! `cos_k_norm`, whose cosines are multiplied by the query's norm).
//!
//! Per query, nothing is allocated on success: the normalised query, the cosines and the top-k
//! live in the scratch (error paths build a message). A 10,000 x 512 bank is 20 MB, so the scan is
//! bound by memory bandwidth. Measured on the 2-core Zen 4 (32 MiB L3) with `cargo bench -p
//! firm-shared --bench knn`, best of 5 rounds, on an otherwise idle machine (2026-12-03):
//! 10,000 x 512 0.70-0.73 ms per query on one thread (28-29 GB/s), 0.42-0.49 ms on two
//! (42-49 GB/s); 209 x 512 11-13 µs. Earlier runs beside other builds (load 6-9) gave 0.8-1.2 ms.

use super::knn::{Bank, ScoreFn, kde, l2_norm};
use super::topk::TopK;
use crate::error::{Error, Result};

/// Partial sums per dot product.
pub const LANES: usize = 16;
/// Banks with fewer elements are scanned on one thread (a `rayon::join` costs a few µs; 2^18
/// multiply-adds take ~30 µs).
const MIN_PARALLEL: usize = 1 << 18;

/// `x / max(||x||, 1e-12)` into `out`: [`super::l2_normalize`] without the allocation, bit for bit.
///
/// # Panics
/// When `out.len() != x.len()`.
pub fn l2_normalize_into(x: &[f32], out: &mut [f32]) {
    assert_eq!(
        x.len(),
        out.len(),
        "normalise {} values into {}",
        x.len(),
        out.len()
    );
    let n = l2_norm(x).max(1e-12);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v / n;
    }
}

/// `out[r] = sum_d q[d] * rows[r * dim + d]` for every row `r` (module header for the order),
/// split over `threads` when the matrix is large.
///
/// # Panics
/// When `q.len() != dim` or `rows.len() != out.len() * dim`.
pub fn cosines_into(rows: &[f32], dim: usize, q: &[f32], out: &mut [f32], threads: usize) {
    assert_eq!(
        q.len(),
        dim,
        "query of {} values for dimension {dim}",
        q.len()
    );
    assert_eq!(
        rows.len(),
        out.len() * dim,
        "{} values for {} rows of {dim}",
        rows.len(),
        out.len()
    );
    let threads = if rows.len() < MIN_PARALLEL {
        1
    } else {
        threads.max(1)
    };
    split(rows, dim, q, out, threads);
}

fn split(rows: &[f32], dim: usize, q: &[f32], out: &mut [f32], threads: usize) {
    if threads <= 1 || out.len() < 2 {
        for (r, o) in rows.chunks_exact(dim.max(1)).zip(out.iter_mut()) {
            *o = dot(q, r);
        }
        if dim == 0 {
            out.fill(0.0);
        }
        return;
    }
    let left = threads / 2;
    // Cut in proportion to the threads on each side.
    let at = (out.len() * left / threads).max(1);
    let (o1, o2) = out.split_at_mut(at);
    let (r1, r2) = rows.split_at(at * dim);
    rayon::join(
        || split(r1, dim, q, o1, left),
        || split(r2, dim, q, o2, threads - left),
    );
}

/// The dot product of `q` and `r` (equal lengths) in the order of the module header.
#[inline]
fn dot(q: &[f32], r: &[f32]) -> f32 {
    let (qc, rc) = (q.chunks_exact(LANES), r.chunks_exact(LANES));
    let (qt, rt) = (qc.remainder(), rc.remainder());
    let mut acc = [0.0f32; LANES];
    for (qv, rv) in qc.zip(rc) {
        for l in 0..LANES {
            acc[l] += qv[l] * rv[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (&a, &b) in qt.iter().zip(rt) {
        s += a * b;
    }
    s
}

/// A score with the nearest bank row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearest {
    /// The score (higher = more normal), as [`Bank::score`].
    pub score: f32,
    /// The bank row with the highest cosine (the lowest such index on ties).
    pub index: usize,
    /// Its cosine.
    pub cosine: f32,
}

/// Per-bank working memory of [`Bank::score_into`]: made once, reused for every query.
#[derive(Debug, Clone)]
pub struct ScoreScratch {
    dim: usize,
    /// The normalised query of the last call.
    query: Vec<f32>,
    /// Cosines of the last call's query with every row.
    cos: Vec<f32>,
    top: TopK<f32>,
    threads: usize,
}

impl ScoreScratch {
    /// Scratch for `bank` and scores with `k <= max_k` (cos_k, cos_k_norm; kde and center use no
    /// k). One thread; see [`ScoreScratch::with_threads`].
    pub fn new(bank: &Bank<f32>, max_k: usize) -> Self {
        Self {
            dim: bank.dim(),
            query: vec![0.0; bank.dim()],
            cos: vec![0.0; bank.len()],
            top: TopK::new(max_k.clamp(1, bank.len().max(1))),
            threads: 1,
        }
    }

    /// Split the bank scan over `threads` when the bank is large, with `rayon::join`: on the
    /// current rayon pool when called inside one (allocation-free), else on the global pool, where
    /// each join from outside is injected through rayon's global queue, which allocates a block
    /// about once per 64 calls (measured by `shared/benches/knn.rs`). Call from inside
    /// `ThreadPool::install` for zero allocations with more than one thread.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The normalised query of the last successful call.
    pub fn query(&self) -> &[f32] {
        &self.query
    }

    /// The cosines of the last successful [`Bank::score_into`] (or `score_only_into` with a
    /// score that scans).
    pub fn cosines(&self) -> &[f32] {
        &self.cos
    }
}

impl Bank<f32> {
    /// [`Bank::cosines`] into `out` (`out.len() == self.len()`), blocked and split over threads:
    /// see [`cosines_into`].
    pub fn cosines_into(&self, query_normed: &[f32], out: &mut [f32], threads: usize) {
        cosines_into(self.rows(), self.dim(), query_normed, out, threads);
    }

    /// [`Bank::score`] of one raw feature, with the nearest row, allocating nothing (given a
    /// scratch from [`ScoreScratch::new`] for this bank). Every score scans the bank, `center`
    /// too (for the nearest row); [`Bank::score_only_into`] skips that.
    ///
    /// Errors: a feature of the wrong length or with NaN/infinity, a scratch made for another
    /// bank shape, or a k larger than the scratch's.
    pub fn score_into(&self, f: ScoreFn, raw: &[f32], s: &mut ScoreScratch) -> Result<Nearest> {
        self.prepare(raw, s)?;
        self.cosines_into(&s.query, &mut s.cos, s.threads);
        let score = match f {
            ScoreFn::CosK { k } | ScoreFn::CosKNorm { k } => {
                let mean = self.top_k(k, s)?;
                let (cosine, index) = s.top.first().expect("k >= 1 and a non-empty bank");
                let score = match f {
                    ScoreFn::CosKNorm { .. } => mean * l2_norm(raw),
                    _ => mean,
                };
                return Ok(Nearest {
                    score,
                    index,
                    cosine,
                });
            }
            ScoreFn::Kde => kde(&s.cos, self.kde_gamma()),
            ScoreFn::Center => self.center_score(&s.query),
        };
        let (index, cosine) = argmax(&s.cos);
        Ok(Nearest {
            score,
            index,
            cosine,
        })
    }

    /// [`Bank::score`] without the nearest row: as [`Bank::score_into`], but `center` does not scan
    /// the bank (the rotated views of an ensemble need no nearest row).
    pub fn score_only_into(&self, f: ScoreFn, raw: &[f32], s: &mut ScoreScratch) -> Result<f32> {
        if let ScoreFn::Center = f {
            self.prepare(raw, s)?;
            return Ok(self.center_score(&s.query));
        }
        Ok(self.score_into(f, raw, s)?.score)
    }

    /// Check the inputs and normalise the query into the scratch.
    fn prepare(&self, raw: &[f32], s: &mut ScoreScratch) -> Result<()> {
        if raw.len() != self.dim() {
            return Err(Error::invalid(
                "test feature",
                format!(
                    "has {} values; the bank has dimension {}",
                    raw.len(),
                    self.dim()
                ),
            ));
        }
        if s.dim != self.dim() || s.cos.len() != self.len() {
            return Err(Error::invalid(
                "score scratch",
                format!(
                    "made for a [{}, {}] bank, used with [{}, {}]",
                    s.cos.len(),
                    s.dim,
                    self.len(),
                    self.dim()
                ),
            ));
        }
        if raw.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid("test feature", "contains NaN or infinity"));
        }
        l2_normalize_into(raw, &mut s.query);
        Ok(())
    }

    /// Mean of the `min(k, len)` largest cosines in the scratch ([`super::mean_top_k`]'s value).
    fn top_k(&self, k: usize, s: &mut ScoreScratch) -> Result<f32> {
        let k = k.min(self.len());
        if k == 0 || k > s.top.capacity() {
            return Err(Error::invalid(
                "k",
                format!(
                    "k = {k}; this scratch holds 1..={} (ScoreScratch::new's max_k)",
                    s.top.capacity()
                ),
            ));
        }
        s.top.reset(k);
        for (i, &c) in s.cos.iter().enumerate() {
            s.top.push(c, i);
        }
        Ok(s.top.mean().expect("non-empty"))
    }

    /// `-(1 - cos(q, center))`, the arithmetic of [`Bank::score`] (a sequential dot product).
    fn center_score(&self, q: &[f32]) -> f32 {
        let dot: f32 = q.iter().zip(self.center()).map(|(&a, &b)| a * b).sum();
        -(1.0 - dot)
    }
}

/// The first index of the largest value (as the Detector's fold: strict `>` from -inf).
fn argmax(v: &[f32]) -> (usize, f32) {
    v.iter().enumerate().fold(
        (0, f32::NEG_INFINITY),
        |b, (j, &c)| if c > b.1 { (j, c) } else { b },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::l2_normalize;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_bank(rng: &mut ChaCha8Rng, n: usize, dim: usize) -> Bank<f32> {
        // Non-negative features (post-ReLU, as the encoder's) plus a shared offset: cosines
        // crowd together near the top, as in a real bank.
        let raw: Vec<f32> = (0..n * dim)
            .map(|_| rng.random_range(0.0f32..1.0).powi(3))
            .collect();
        Bank::from_raw(&raw, dim).unwrap()
    }

    #[test]
    fn normalise_into_is_l2_normalize() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for dim in [1, 3, 8, 17, 512] {
            let x: Vec<f32> = (0..dim).map(|_| rng.random_range(-5.0f32..5.0)).collect();
            let mut out = vec![0.0; dim];
            l2_normalize_into(&x, &mut out);
            assert_eq!(out, l2_normalize(&x));
        }
        let mut z = [9.0f32; 4];
        l2_normalize_into(&[0.0; 4], &mut z);
        assert_eq!(z, [0.0; 4]);
    }

    #[test]
    fn blocked_cosines_match_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for &(n, dim) in &[
            (1, 1),
            (3, 5),
            (4, 8),
            (7, 17),
            (13, 64),
            (209, 512),
            (1000, 100),
            (600, 512),
        ] {
            let bank = random_bank(&mut rng, n, dim);
            let q = l2_normalize(
                &(0..dim)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect::<Vec<_>>(),
            );
            let want = bank.cosines(&q);
            for threads in [1, 2, 3] {
                let mut got = vec![f32::NAN; n];
                bank.cosines_into(&q, &mut got, threads);
                for (r, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() <= 1e-6, "[{n}, {dim}] row {r}: {g} vs {w}");
                }
            }
        }
    }

    fn close(got: f32, want: f32, rel: bool) -> bool {
        let tol = if rel {
            1e-6 * want.abs().max(1.0)
        } else {
            1e-6
        };
        (got - want).abs() <= tol
    }

    #[test]
    fn score_into_matches_score_and_the_argmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for &(n, dim) in &[(1, 4), (2, 3), (5, 17), (37, 64), (209, 512), (3000, 128)] {
            let bank = random_bank(&mut rng, n, dim);
            for &k in &[1usize, 5, n + 3] {
                for threads in [1, 2] {
                    let mut s = ScoreScratch::new(&bank, k).with_threads(threads);
                    for _ in 0..4 {
                        // Queries near a bank row (as a good part), scaled like raw features.
                        let row = rng.random_range(0..n);
                        let scale = rng.random_range(0.5f32..40.0);
                        let raw: Vec<f32> = bank.rows()[row * dim..(row + 1) * dim]
                            .iter()
                            .map(|&v| (v + rng.random_range(-0.05f32..0.05)) * scale)
                            .collect();
                        let cos = bank.cosines(&l2_normalize(&raw));
                        let (want_j, want_c) = argmax(&cos);
                        for f in [
                            ScoreFn::CosK { k },
                            ScoreFn::CosKNorm { k },
                            ScoreFn::Kde,
                            ScoreFn::Center,
                        ] {
                            let want = bank.score(f, &raw).unwrap();
                            let got = bank.score_into(f, &raw, &mut s).unwrap();
                            let rel = matches!(f, ScoreFn::CosKNorm { .. });
                            assert!(
                                close(got.score, want, rel),
                                "{f} [{n}, {dim}]: {} vs {want}",
                                got.score
                            );
                            // The same row, unless two rows are within rounding of each other.
                            assert!(
                                close(got.cosine, want_c, false),
                                "{f}: cosine {} vs {want_c}",
                                got.cosine
                            );
                            assert!(
                                got.index == want_j || (cos[got.index] - want_c).abs() <= 1e-6,
                                "{f}: nearest {} vs {want_j}",
                                got.index
                            );
                            let only = bank.score_only_into(f, &raw, &mut s).unwrap();
                            assert!(close(only, want, rel), "{f} score_only: {only} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn score_into_rejects_bad_inputs() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let bank = random_bank(&mut rng, 10, 8);
        let other = random_bank(&mut rng, 11, 8);
        let mut s = ScoreScratch::new(&bank, 3);
        let f = ScoreFn::CosK { k: 1 };
        assert!(bank.score_into(f, &[1.0; 7], &mut s).is_err());
        let mut bad = [1.0f32; 8];
        bad[3] = f32::NAN;
        assert!(bank.score_into(f, &bad, &mut s).is_err());
        assert!(other.score_into(f, &[1.0; 8], &mut s).is_err());
        assert!(
            bank.score_into(ScoreFn::CosK { k: 4 }, &[1.0; 8], &mut s)
                .is_err()
        );
        // k above the bank size clamps, as Bank::score.
        let mut s = ScoreScratch::new(&bank, 100);
        let got = bank
            .score_into(ScoreFn::CosK { k: 50 }, &[1.0; 8], &mut s)
            .unwrap();
        let want = bank.score(ScoreFn::CosK { k: 50 }, &[1.0; 8]).unwrap();
        assert!(close(got.score, want, false));
    }
}

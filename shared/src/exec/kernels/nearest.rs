//! The candidate scan of the patch bank's exact nearest-row search
//! ([`crate::score::patch::PatchBank::nearest_into`]): after the int8 GEMM has given every row
//! of a block an approximate distance, the rows whose approximation may still hide the nearest
//! row get their exact distance. The loops are plain Rust, inlined into one copy per ISA under
//! `#[target_feature]` so that LLVM vectorises them with that ISA's registers (AVX2 or AVX-512
//! rather than the SSE2 of the crate's baseline): the minimum, the compare of sixteen values at
//! a time, and each candidate's squared distance. Every copy computes the same bits.

use super::Isa;

/// One query against one block of rows.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    /// Per row of the block: the approximation of `|q - row|^2 - |q|^2`.
    pub approx: &'a [f32],
    /// The approximations' error bound `[a, b, c]`: row `j`'s is within
    /// `a * norm[j] + b * err[j] + c` of its true value.
    pub bound: [f32; 3],
    pub norm: &'a [f32],
    pub err: &'a [f32],
    /// `|q|^2`.
    pub qq: f32,
    pub q: &'a [f32],
    /// The block's rows in f32, `q.len()` values each.
    pub rows: &'a [f32],
    /// The bank index of the block's first row.
    pub j0: usize,
}

impl Candidates<'_> {
    /// Replaces `best` (exact squared distance, bank row) with a strictly nearer row of the
    /// block, if any: the first such row in bank order among the nearest.
    pub fn nearest(&self, isa: Isa, best: &mut (f32, usize)) {
        #[cfg(target_arch = "x86_64")]
        match isa {
            // SAFETY: the caller's ISA runs on this CPU (checked here).
            Isa::Avx512 | Isa::Avx512Vnni if isa.runs_here() => {
                return unsafe { nearest_avx512(self, best) };
            }
            // SAFETY: as above.
            Isa::Avx2 if isa.runs_here() => return unsafe { nearest_avx2(self, best) },
            _ => {}
        }
        let _ = isa;
        nearest(self, best)
    }
}

#[inline(always)]
fn nearest(c: &Candidates<'_>, best: &mut (f32, usize)) {
    let d = c.q.len();
    let [a, b, e] = c.bound;
    let n = c.approx.len();
    let (approx, norm, err) = (c.approx, &c.norm[..n], &c.err[..n]);
    // Every row's true value is at least its approximation - its bound, and at most its
    // approximation + its bound; the nearest row's lower end is at most the smallest upper end
    // (and at most the nearest so far, from earlier blocks).
    let mut upper = [f32::INFINITY; 16];
    let mut chunks = approx
        .chunks_exact(16)
        .zip(norm.chunks_exact(16))
        .zip(err.chunks_exact(16));
    for ((x, u), v) in &mut chunks {
        for (l, ((&x, &u), &v)) in upper.iter_mut().zip(x.iter().zip(u).zip(v)) {
            let t = x + (a * u + b * v + e);
            *l = if t < *l { t } else { *l };
        }
    }
    let tail = (n / 16) * 16;
    let mut limit = best.0 - c.qq;
    for j in tail..n {
        limit = limit.min(approx[j] + (a * norm[j] + b * err[j] + e));
    }
    limit = upper.iter().fold(limit, |m, &v| m.min(v));
    // Sixteen values at a time: a vector compare for the whole group, then a look inside the
    // rare group that holds a candidate.
    for (gi, ((x, u), v)) in approx
        .chunks(16)
        .zip(norm.chunks(16))
        .zip(err.chunks(16))
        .enumerate()
    {
        let lower = |(&x, (&u, &v)): (&f32, (&f32, &f32))| x - (a * u + b * v + e);
        if x.iter()
            .zip(u.iter().zip(v))
            .fold(false, |any, t| any | (lower(t) <= limit))
        {
            for (k, t) in x.iter().zip(u.iter().zip(v)).enumerate() {
                if lower(t) <= limit {
                    let jj = gi * 16 + k;
                    let d2 = squared_distance(c.q, &c.rows[jj * d..(jj + 1) * d]);
                    if d2 < best.0 {
                        *best = (d2, c.j0 + jj);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nearest_avx2(c: &Candidates<'_>, best: &mut (f32, usize)) {
    nearest(c, best)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn nearest_avx512(c: &Candidates<'_>, best: &mut (f32, usize)) {
    nearest(c, best)
}

/// `|a - b|^2` in f32, summed in eight lanes (so that it vectorises) and then across them.
#[inline(always)]
pub(crate) fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((l, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *l += (x - y) * (x - y);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_finds_the_portable_scans_row() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut next = move || rng.random_range(0.0f32..1.0);
        let (n, d) = (203, 13);
        let rows: Vec<f32> = (0..n * d).map(|_| next()).collect();
        for trial in 0..20 {
            let q: Vec<f32> = (0..d).map(|_| next()).collect();
            let qq: f32 = q.iter().map(|v| v * v).sum();
            // Exact approximations, then noise within each row's bound.
            let margin = 0.05 * trial as f32;
            let norm: Vec<f32> = (0..n).map(|_| next()).collect();
            let err: Vec<f32> = (0..n).map(|_| next()).collect();
            let bound = [margin, 0.5 * margin, 1e-3];
            let approx: Vec<f32> = rows
                .chunks_exact(d)
                .enumerate()
                .map(|(j, r)| {
                    let m = bound[0] * norm[j] + bound[1] * err[j] + bound[2];
                    squared_distance(&q, r) - qq + m * (2.0 * next() - 1.0)
                })
                .collect();
            let c = Candidates {
                approx: &approx,
                bound,
                norm: &norm,
                err: &err,
                qq,
                q: &q,
                rows: &rows,
                j0: 1000,
            };
            let mut want = (f32::INFINITY, 0);
            nearest(&c, &mut want);
            let exact = rows
                .chunks_exact(d)
                .map(|r| squared_distance(&q, r))
                .enumerate()
                .fold(
                    (f32::INFINITY, 0),
                    |b, (j, v)| if v < b.0 { (v, 1000 + j) } else { b },
                );
            assert_eq!(want, exact, "trial {trial}");
            for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
                let mut got = (f32::INFINITY, 0);
                c.nearest(isa, &mut got);
                assert_eq!(got, want, "{isa}");
                // A nearer row from an earlier block stays.
                let mut kept = (want.0 * 0.5, 7);
                c.nearest(isa, &mut kept);
                assert_eq!(kept, (want.0 * 0.5, 7), "{isa}");
            }
        }
    }
}

//! The candidate scan of the patch bank's exact nearest-row search
//! ([`crate::score::patch::PatchBank::nearest_into`]): after the int8 GEMM has given every row
//! of a block an approximate distance, the rows whose approximation may still hide the nearest
//! row get their exact distance. One generic loop over [`F32Lanes`], instantiated per ISA
//! under `#[target_feature]` (AVX2, AVX-512, NEON, portable): the smallest approximation, the
//! exact distance of its row as the limit, then one vector compare per `N` rows that gives a
//! bit mask of the rows to look at, so that a row's own bound is computed only where the widest
//! bound cannot rule it out. Every copy computes the same bits.
//!
//! Measured on a Lite0 224 px bundle (784 cells x 1,536 rows x 80 values, device-runtime's
//! generated frames, one thread): the scan took 0.79 ms per frame with two full passes over the
//! approximations, norms and errors, and a scalar look inside every 16 rows that held a
//! candidate (the candidates' distances ran at SSE2 width inside a closure LLVM did not inline);
//! 0.52 ms as three mask scans of the approximations alone, limited by the smallest upper end;
//! less again with the exact distance as the limit (patch stage 0.90 -> 0.82-0.88 ms at two
//! threads).

use super::Isa;
use super::lanes::{self, F32Lanes};

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
    /// At least every row's `norm` and `err`: the widest bound.
    pub top: [f32; 2],
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
        match isa {
            // SAFETY: the caller's ISA runs on this CPU (checked here).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni if isa.runs_here() => unsafe {
                nearest_avx512(self, best)
            },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa.runs_here() => unsafe { nearest_avx2(self, best) },
            // SAFETY: as above.
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot if isa.runs_here() => unsafe { nearest_neon(self, best) },
            // SAFETY: plain Rust.
            _ => unsafe { nearest::<lanes::Portable>(self, best) },
        }
    }
}

/// # Safety
/// `L`'s features are available.
#[inline(always)]
unsafe fn nearest<L: F32Lanes>(c: &Candidates<'_>, best: &mut (f32, usize)) {
    let d = c.q.len();
    let [a, b, e] = c.bound;
    let n = c.approx.len();
    let (approx, norm, err) = (c.approx, &c.norm[..n], &c.err[..n]);
    // No row's bound exceeds `wide`: f32 rounding is monotone, and the norms and errors are
    // at most `top`'s.
    let wide = a * c.top[0] + b * c.top[1] + e;
    // Every row's true value is at least its approximation - its bound; the nearest row's is
    // at most any row's exact distance (and the nearest so far, from earlier blocks). Vector
    // scans of the approximations alone find the row to measure and the candidates below that
    // limit; a row's own bound is computed only where the widest bound cannot rule it out.
    let p = approx.as_ptr();
    let full = n - n % L::N;
    // SAFETY: every load is within `approx` (`i + L::N <= full <= n`, or the part `n - i`).
    unsafe {
        let part = |i: usize| {
            if i + L::N <= n {
                (L::load(p.add(i)), u32::MAX)
            } else {
                (L::load_part(p.add(i), n - i), (1u32 << (n - i)) - 1)
            }
        };
        // 1. The smallest approximation, `low`.
        let mut m = L::splat(f32::INFINITY);
        for i in (0..full).step_by(L::N) {
            m = L::min_num(L::load(p.add(i)), m);
        }
        let mut lanes = [f32::INFINITY; 16];
        L::store(lanes.as_mut_ptr(), m);
        let low = lanes[..L::N]
            .iter()
            .chain(&approx[full..])
            .fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
        // 2. An upper end for the nearest row: the exact distance of the first row with the
        //    smallest approximation (usually the nearest itself; at least the nearest's).
        let mut limit = best.0 - c.qq;
        let at_low = L::splat(low);
        for i in (0..n).step_by(L::N) {
            let (x, valid) = part(i);
            let mask = L::le_mask(x, at_low) & valid;
            if mask != 0 {
                let j = i + mask.trailing_zeros() as usize;
                limit = limit.min(squared_distance(c.q, &c.rows[j * d..(j + 1) * d]) - c.qq);
                break;
            }
        }
        // 3. The candidates, in bank order: a row whose approximation minus the widest bound
        //    is above the limit has its own lower end above it too.
        let (wide, above) = (L::splat(wide), L::splat(limit));
        for i in (0..n).step_by(L::N) {
            let (x, valid) = part(i);
            let mut mask = L::le_mask(L::sub(x, wide), above) & valid;
            while mask != 0 {
                let j = i + mask.trailing_zeros() as usize;
                mask &= mask - 1;
                if approx[j] - (a * norm[j] + b * err[j] + e) <= limit {
                    let d2 = squared_distance(c.q, &c.rows[j * d..(j + 1) * d]);
                    if d2 < best.0 {
                        *best = (d2, c.j0 + j);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nearest_avx2(c: &Candidates<'_>, best: &mut (f32, usize)) {
    // SAFETY: AVX2 is enabled here.
    unsafe { nearest::<lanes::Avx2>(c, best) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn nearest_avx512(c: &Candidates<'_>, best: &mut (f32, usize)) {
    // SAFETY: AVX-512 F is enabled here.
    unsafe { nearest::<lanes::Avx512>(c, best) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn nearest_neon(c: &Candidates<'_>, best: &mut (f32, usize)) {
    // SAFETY: NEON is enabled here.
    unsafe { nearest::<lanes::Neon>(c, best) }
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
                // The tightest valid widest bound: the largest norm and error themselves.
                top: [&norm, &err].map(|v| v.iter().fold(0f32, |m, &x| m.max(x))),
                qq,
                q: &q,
                rows: &rows,
                j0: 1000,
            };
            let mut want = (f32::INFINITY, 0);
            // SAFETY: plain Rust.
            unsafe { nearest::<lanes::Portable>(&c, &mut want) };
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

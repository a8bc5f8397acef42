//! Window sums of HWC feature maps: the neighbourhood means of patch scoring
//! ([`crate::score::patch`]), one axis at a time. Each window's channels are summed in
//! registers (L::N lanes, a part vector for the rest) and stored once, where the scalar loop
//! read and wrote the output for every cell of the window.
//!
//! Definition, per window `w` and channel `j < c`, summed in cell order from `0.0`:
//! - [`window_sums`]: `out[w.at + j] = sum_{t < w.n} src[w.first + t * step + j]`;
//! - [`window_means`]: `out[w.at + j] = (sum_{t < n} src[w.at + t * step + j]) * (1 / (n * w.n))`
//!   as `f32`: the second axis of a box whose first axis gave `w.n` cells.
//!
//! Every ISA computes the same bits as the scalar references ([`window_sums_ref`],
//! [`window_means_ref`]): the same additions in the same order, then one multiplication.

use super::Isa;
use super::lanes::{self, F32Lanes};

/// One window: `n` cells from value `first` of the source, written at value `at` of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub first: usize,
    pub n: usize,
    pub at: usize,
}

/// Sums of `w.n` cells `step` values apart, `c` channels each (definition in the module header).
///
/// # Panics
/// When a window reads past `src` or writes past `out`, or on an `isa` this CPU cannot run.
pub fn window_sums(isa: Isa, src: &[f32], c: usize, step: usize, wins: &[Window], out: &mut [f32]) {
    Job {
        src,
        c,
        step,
        mean: None,
        wins,
    }
    .run(isa, out);
}

/// Means over `n` cells `step` values apart from each window's `at`, divided by `n * w.n`
/// (definition in the module header).
///
/// # Panics
/// As [`window_sums`].
pub fn window_means(
    isa: Isa,
    src: &[f32],
    c: usize,
    step: usize,
    n: usize,
    wins: &[Window],
    out: &mut [f32],
) {
    Job {
        src,
        c,
        step,
        mean: Some(n),
        wins,
    }
    .run(isa, out);
}

/// One call of either kernel: `mean` is the cell count of [`window_means`], `None` for sums.
struct Job<'a> {
    src: &'a [f32],
    c: usize,
    step: usize,
    mean: Option<usize>,
    wins: &'a [Window],
}

impl Job<'_> {
    /// Where window `w` starts in `src`, and its cells.
    fn cells(&self, w: &Window) -> (usize, usize) {
        match self.mean {
            Some(n) => (w.at, n),
            None => (w.first, w.n),
        }
    }

    fn run(&self, isa: Isa, out: &mut [f32]) {
        assert!(isa.runs_here(), "{isa} does not run on this CPU");
        for w in self.wins {
            let (first, n) = self.cells(w);
            assert!(
                n == 0 || first + (n - 1) * self.step + self.c <= self.src.len(),
                "window {w:?} of {n} cells reads past {} values",
                self.src.len()
            );
            assert!(
                w.at + self.c <= out.len(),
                "window {w:?} writes past {}",
                out.len()
            );
        }
        // SAFETY: `isa` runs here; every window's reads and writes are in bounds (asserted
        // above).
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Avx512Vnni => sums_avx512(self, out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => sums_avx2(self, out),
                #[cfg(target_arch = "aarch64")]
                Isa::Neon | Isa::NeonDot => sums_neon(self, out),
                _ => sums::<lanes::Portable>(self, out),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn sums_avx512(job: &Job<'_>, out: &mut [f32]) {
    // SAFETY: AVX-512 is enabled here; the rest is `sums`' contract.
    unsafe { sums::<lanes::Avx512>(job, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums_avx2(job: &Job<'_>, out: &mut [f32]) {
    // SAFETY: AVX2 is enabled here; the rest is `sums`' contract.
    unsafe { sums::<lanes::Avx2>(job, out) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn sums_neon(job: &Job<'_>, out: &mut [f32]) {
    // SAFETY: NEON is enabled here; the rest is `sums`' contract.
    unsafe { sums::<lanes::Neon>(job, out) }
}

/// # Safety
/// `L`'s features are available; every window's cells are within `job.src` and its output
/// within `out` (as [`Job::run`] asserts).
#[inline(always)]
unsafe fn sums<L: F32Lanes>(job: &Job<'_>, out: &mut [f32]) {
    let (c, step) = (job.c, job.step);
    let (sp, op) = (job.src.as_ptr(), out.as_mut_ptr());
    for w in job.wins {
        let (first, n) = job.cells(w);
        let scale = job.mean.map(|n| 1.0 / (n * w.n) as f32);
        let mut j = 0;
        // SAFETY: cell `t < n` channel `j + l < c` is `src[first + t * step + j + l]`, in
        // bounds by the contract; outputs `out[w.at + j + l]` likewise.
        unsafe {
            while j < c {
                let lanes = L::N.min(c - j);
                let mut s = L::splat(0.0);
                for t in 0..n {
                    let p = sp.add(first + t * step + j);
                    s = L::add(
                        s,
                        if lanes == L::N {
                            L::load(p)
                        } else {
                            L::load_part(p, lanes)
                        },
                    );
                }
                if let Some(k) = scale {
                    s = L::mul(s, L::splat(k));
                }
                let o = op.add(w.at + j);
                if lanes == L::N {
                    L::store(o, s);
                } else {
                    L::store_part(o, lanes, s);
                }
                j += lanes;
            }
        }
    }
}

/// The scalar definition of [`window_sums`].
pub fn window_sums_ref(src: &[f32], c: usize, step: usize, wins: &[Window], out: &mut [f32]) {
    for w in wins {
        for j in 0..c {
            let mut s = 0.0f32;
            for t in 0..w.n {
                s += src[w.first + t * step + j];
            }
            out[w.at + j] = s;
        }
    }
}

/// The scalar definition of [`window_means`].
pub fn window_means_ref(
    src: &[f32],
    c: usize,
    step: usize,
    n: usize,
    wins: &[Window],
    out: &mut [f32],
) {
    for w in wins {
        let inv = 1.0 / (n * w.n) as f32;
        for j in 0..c {
            let mut s = 0.0f32;
            for t in 0..n {
                s += src[w.at + t * step + j];
            }
            out[w.at + j] = s * inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// A row of `cells` cells of `c` channels (`step` = `c`, horizontal) or a column through
    /// `cells` rows of `width` cells (vertical, `step` = `width * c`), windows of radius `r`
    /// clipped to the map at every `every`-th cell.
    #[derive(Debug, Clone)]
    struct Case {
        c: usize,
        cells: usize,
        width: usize,
        r: usize,
        every: usize,
        mean: bool,
        seed: u64,
    }

    fn check(isa: Isa, k: &Case) -> Result<(), String> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(k.seed);
        let len = k.cells * k.width * k.c;
        let src: Vec<f32> = (0..len).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        let (mut got, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
        if k.mean {
            // Vertical: rows `0..cells` of a map `width` wide; windows at columns, each with a
            // horizontal extent of its own.
            let step = k.width * k.c;
            let wins: Vec<Window> = (0..k.width)
                .step_by(k.every)
                .map(|x| Window {
                    first: 0,
                    n: 1 + (x + k.r) % (2 * k.r + 1),
                    at: x * k.c,
                })
                .collect();
            window_means(isa, &src, k.c, step, k.cells, &wins, &mut got);
            window_means_ref(&src, k.c, step, k.cells, &wins, &mut want);
        } else {
            let wins: Vec<Window> = (0..k.cells)
                .step_by(k.every)
                .map(|x| {
                    let lo = x.saturating_sub(k.r);
                    let hi = (x + k.r + 1).min(k.cells);
                    Window {
                        first: lo * k.c,
                        n: hi - lo,
                        at: x * k.c,
                    }
                })
                .collect();
            window_sums(isa, &src, k.c, k.c, &wins, &mut got);
            window_sums_ref(&src, k.c, k.c, &wins, &mut want);
        }
        // Same bits, and cells outside the windows untouched (NaN stays NaN).
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if same {
            Ok(())
        } else {
            Err("differs from the scalar definition".into())
        }
    }

    fn edges() -> Vec<Case> {
        let mut v = Vec::new();
        for c in [1, 3, 4, 8, 15, 16, 17, 24, 40, 80] {
            for (mean, r) in [(false, 0), (false, 2), (true, 1), (true, 4)] {
                v.push(Case {
                    c,
                    cells: 7,
                    width: 5,
                    r,
                    every: 1 + c % 3,
                    mean,
                    seed: c as u64,
                });
            }
        }
        v
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            1usize..70,
            1usize..12,
            1usize..9,
            0usize..5,
            1usize..4,
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(|(c, cells, width, r, every, mean, seed)| Case {
                c,
                cells,
                width,
                r,
                every,
                mean,
                seed,
            })
    }

    crate::kernel_tests! {
        family: window,
        case: Case,
        strategy: case(),
        edge: edges(),
        check: check,
    }

    #[test]
    #[should_panic(expected = "reads past")]
    fn a_window_past_the_source_is_refused() {
        let src = [0f32; 10];
        let mut out = [0f32; 10];
        let w = Window {
            first: 4,
            n: 2,
            at: 0,
        };
        window_sums(Isa::Portable, &src, 4, 4, &[w], &mut out);
    }
}

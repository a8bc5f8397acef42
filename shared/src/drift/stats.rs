//! [`FrameStats`]: brightness, contrast, colour means and focus of one preprocessed image, in
//! exact integer sums (the module header of [`crate::drift`] defines them).

use serde::{Deserialize, Serialize};

use super::Statistic;

/// The statistics of one preprocessed image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FrameStats {
    pub brightness: f64,
    pub contrast: f64,
    pub red: f64,
    pub green: f64,
    pub blue: f64,
    pub focus: f64,
}

/// Largest image side [`FrameStats::of`] takes ([`crate::preprocess::PreprocessSpec`]'s limit).
pub const MAX_SIDE: usize = 4096;

const fn times(w: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = w * i as u32;
        i += 1;
    }
    t
}

/// `77 v`, `150 v`, `29 v` for every byte: luma x 256 is three lookups and two additions (a
/// fifth faster than the multiplications on x86-64's baseline, which cannot vectorise the
/// stride-3 loads).
static LUMA: [[u32; 256]; 3] = [times(77), times(150), times(29)];

/// `(n * sum_sq - sum^2) / n^2`, exactly in integers until the final division.
fn variance(n: u64, sum: i128, sum_sq: u128) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n = n as u128;
    // n * sum_sq >= sum^2 (Cauchy-Schwarz), so this never underflows.
    let num = n * sum_sq - sum.unsigned_abs() * sum.unsigned_abs();
    num as f64 / (n * n) as f64
}

impl FrameStats {
    /// The statistics of `rgb`, a `size` x `size` image in RGB rows (the test transform's
    /// output). Allocation-free: one pass for the means, one for the Laplacian over the
    /// interior pixels (focus is 0 below 3 x 3 pixels).
    ///
    /// Panics unless `rgb` holds `3 * size * size` bytes.
    pub fn of(rgb: &[u8], size: u32) -> Self {
        let n = size as usize;
        assert!(
            rgb.len() == 3 * n * n && n <= MAX_SIDE,
            "FrameStats::of: {} bytes for a {size} x {size} RGB image (sides up to {MAX_SIDE})",
            rgb.len()
        );
        // Luma x 256 of the last three rows, on the stack (48 KB): one luma per pixel, and the
        // Laplacian's loop runs over plain i32 rows.
        let mut rows = [[0i32; MAX_SIDE]; 3];
        // Per row in u32 (a row of 4096 px cannot overflow them), per image in u64 and u128.
        let (mut r, mut g, mut b, mut l, mut l2) = (0u64, 0u64, 0u64, 0u64, 0u128);
        let (mut s, mut s2) = (0i64, 0u128);
        for (y, src) in rgb.chunks_exact(3 * n.max(1)).enumerate() {
            let row = &mut rows[y % 3][..n];
            let (mut rr, mut rg, mut rb) = (0u32, 0u32, 0u32);
            for (dst, px) in row.iter_mut().zip(src.chunks_exact(3)) {
                let (pr, pg, pb) = (px[0] as usize, px[1] as usize, px[2] as usize);
                rr += pr as u32;
                rg += pg as u32;
                rb += pb as u32;
                *dst = (LUMA[0][pr] + LUMA[1][pg] + LUMA[2][pb]) as i32;
            }
            let (mut rl, mut rl2) = (0u32, 0u64);
            for &v in row.iter() {
                rl += v as u32;
                rl2 += (v as u64) * (v as u64);
            }
            r += rr as u64;
            g += rg as u64;
            b += rb as u64;
            l += rl as u64;
            l2 += rl2 as u128;
            if y >= 2 {
                // The Laplacian of row y - 1: up + down + left + right - 4 * centre. A row sum
                // stays within i32 (4094 * 4 * 65280 < 2^31), its squares within u64.
                let [up, mid, down] = [y - 2, y - 1, y].map(|i| &rows[i % 3][..n]);
                let (mut rs, mut rs2) = (0i32, 0u64);
                let interior = up[1..n - 1]
                    .iter()
                    .zip(&down[1..n - 1])
                    .zip(&mid[..n - 2])
                    .zip(&mid[2..])
                    .zip(&mid[1..n - 1]);
                for ((((&u, &d), &left), &right), &centre) in interior {
                    let v = u + d + left + right - 4 * centre;
                    rs += v;
                    let a = v.unsigned_abs() as u64;
                    rs2 += a * a;
                }
                s += rs as i64;
                s2 += rs2 as u128;
            }
        }
        let pixels = (n * n) as u64;
        let mean = |x: u64| {
            if pixels == 0 {
                0.0
            } else {
                x as f64 / pixels as f64
            }
        };
        let interior = (n.saturating_sub(2) * n.saturating_sub(2)) as u64;
        Self {
            brightness: mean(l) / 256.0,
            contrast: (variance(pixels, l as i128, l2) / 65536.0).sqrt(),
            red: mean(r),
            green: mean(g),
            blue: mean(b),
            focus: variance(interior, s as i128, s2) / 65536.0,
        }
    }

    pub fn get(&self, s: Statistic) -> f64 {
        match s {
            Statistic::Brightness => self.brightness,
            Statistic::Contrast => self.contrast,
            Statistic::Red => self.red,
            Statistic::Green => self.green,
            Statistic::Blue => self.blue,
            Statistic::Focus => self.focus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        (0..n)
            .flat_map(|y| (0..n).map(move |x| (x, y)))
            .flat_map(|(x, y)| f(x, y))
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn frame_stats_match_hand_computed_values() {
        // Uniform grey 100: luma (77 + 150 + 29) * 100 / 256 = 100, no contrast, no edges.
        let s = FrameStats::of(&image(5, |_, _| [100; 3]), 5);
        assert_eq!(
            (s.brightness, s.contrast, s.red, s.focus),
            (100.0, 0.0, 100.0, 0.0)
        );

        // Pure red (255, 0, 0): luma 77 * 255 / 256 = 76.69921875 everywhere.
        let s = FrameStats::of(&image(4, |_, _| [255, 0, 0]), 4);
        assert_eq!(
            (s.brightness, s.red, s.green, s.blue, s.contrast, s.focus),
            (76.69921875, 255.0, 0.0, 0.0, 0.0, 0.0)
        );

        // 4 x 4 checkerboard of grey 0 and 255: mean 127.5, std 127.5. Interior pixels (1,1),
        // (2,2) are 0 with four 255 neighbours: Laplacian +1020; (1,2), (2,1) are 255 with four
        // 0 neighbours: -1020. Mean 0, variance 1020^2 = 1040400.
        let s = FrameStats::of(
            &image(4, |x, y| [if (x + y) % 2 == 0 { 0 } else { 255 }; 3]),
            4,
        );
        assert_eq!(
            (s.brightness, s.contrast, s.focus),
            (127.5, 127.5, 1_040_400.0)
        );

        // Grey x^2 along x (3 x 3, values 0, 1, 4): one interior pixel, Laplacian
        // 1 + 1 + 0 + 4 - 4 * 1 = 2: variance 0 (one sample); mean 5/3, contrast
        // sqrt((0 + 1 + 16) / 3 - 25 / 9) = sqrt(26) / 3.
        let s = FrameStats::of(&image(3, |x, _| [(x * x) as u8; 3]), 3);
        assert!(close(s.brightness, 5.0 / 3.0), "{s:?}");
        assert!(close(s.contrast, 26f64.sqrt() / 3.0), "{s:?}");
        assert_eq!(s.focus, 0.0);

        // A vertical edge, 5 x 5, grey 10 (x < 2) and 50: interior columns 1, 2, 3 have
        // Laplacians 50 - 10 = 40, 10 - 50 = -40, 0 (three rows each). Mean 0, variance
        // (3 * 1600 + 3 * 1600) / 9 = 1066.67.
        let s = FrameStats::of(&image(5, |x, _| [if x < 2 { 10 } else { 50 }; 3]), 5);
        assert!(close(s.focus, 9600.0 / 9.0), "{s:?}");
        // Colour: (R, G, B) = (200, 100, 50) -> luma (15400 + 15000 + 1450) / 256.
        let s = FrameStats::of(&image(2, |_, _| [200, 100, 50]), 2);
        assert_eq!(
            (s.red, s.green, s.blue, s.brightness, s.focus),
            (200.0, 100.0, 50.0, 31850.0 / 256.0, 0.0)
        );
    }

    #[test]
    fn frame_stats_agree_with_a_plain_float_reference() {
        // The reference: luma as f64 per pixel, two-pass mean and variance, the Laplacian from
        // a luma plane.
        let n = 37usize;
        let mut state = 12345u32;
        let rgb: Vec<u8> = (0..3 * n * n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        let y: Vec<f64> = rgb
            .chunks(3)
            .map(|p| (77.0 * p[0] as f64 + 150.0 * p[1] as f64 + 29.0 * p[2] as f64) / 256.0)
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let var = |v: &[f64]| {
            let m = mean(v);
            v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64
        };
        let mut lap = Vec::new();
        for r in 1..n - 1 {
            for c in 1..n - 1 {
                let at = |r: usize, c: usize| y[r * n + c];
                lap.push(
                    at(r - 1, c) + at(r + 1, c) + at(r, c - 1) + at(r, c + 1) - 4.0 * at(r, c),
                );
            }
        }
        let s = FrameStats::of(&rgb, n as u32);
        assert!(close(s.brightness, mean(&y)));
        assert!(close(s.contrast, var(&y).sqrt()));
        assert!(close(s.focus, var(&lap)), "{} vs {}", s.focus, var(&lap));
        let g: Vec<f64> = rgb.chunks(3).map(|p| p[1] as f64).collect();
        assert!(close(s.green, mean(&g)));
    }
}

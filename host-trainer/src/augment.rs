//! SimCLR-style view augmentations as the FIRM reference builds them.
//!
//! Reproduces, with torchvision semantics, the reference pipeline
//! `RandomResizedCrop(size, scale=(0.25, 1.0)) -> ColorJitter(0.4, 0.4, 0.4, 0.4)
//! (always applied) -> RandomApply(GaussianBlur(3, sigma=(0.1, 2.0)), p=0.75)`.
//! There is no flip and no random greyscale, because the reference has none.
//!
//! Images are f32 RGB in [0, 1] (`Rgb32FImage`, like a float tensor after
//! `ToTensor`). The crop is taken from the 8-bit input and resized with a
//! bilinear (triangle, antialiased when shrinking) filter, as PIL does;
//! jitter and blur then run on floats. Every random draw comes from the
//! caller's RNG, in the same order as torchvision draws them, so a seeded RNG
//! gives a reproducible view.

use image::{ImageBuffer, Rgb32FImage, RgbImage};
use rand::Rng;
use rand::seq::SliceRandom;

/// Converts an 8-bit RGB image to f32 in [0, 1] (`x / 255`).
pub fn to_f32(img: &RgbImage) -> Rgb32FImage {
    let data = img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();
    ImageBuffer::from_raw(img.width(), img.height(), data)
        .expect("buffer length matches the source dimensions")
}

/// Converts an f32 image back to 8 bits (clamp to [0, 1], scale, round), for previews.
pub fn to_u8(img: &Rgb32FImage) -> RgbImage {
    let data = img
        .as_raw()
        .iter()
        // `as u8` saturates and maps NaN to 0, so no value can wrap.
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    ImageBuffer::from_raw(img.width(), img.height(), data)
        .expect("buffer length matches the source dimensions")
}

/// Uniform draw in `[lo, hi)`; unlike `random_range` it accepts `lo == hi`
/// (returns `lo`), which a zero-strength range or a fixed scale produces.
fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// torchvision `RandomResizedCrop`: a random area/aspect crop, resized to `size x size`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomResizedCrop {
    /// Output side length in pixels.
    pub size: u32,
    /// Range of the crop area as a fraction of the image area.
    pub scale: (f32, f32),
    /// Range of the crop aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f32, f32),
}

impl RandomResizedCrop {
    /// The reference settings: `scale = (0.25, 1.0)`, `ratio = (3/4, 4/3)`.
    pub fn new(size: u32) -> Self {
        Self {
            size,
            scale: (0.25, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// torchvision's `get_params`: returns `(left, top, width, height)` of the crop.
    ///
    /// Up to 10 tries of area ~ U(scale) and log-aspect ~ U(ln ratio); the first
    /// crop that fits is placed uniformly (inclusive bounds). If none fits, a
    /// central crop with the image aspect clamped into `ratio`. Rounding is
    /// half-to-even like Python's `round`. The result always lies inside the
    /// image and is at least 1x1.
    pub fn params<R: Rng + ?Sized>(
        &self,
        width: u32,
        height: u32,
        rng: &mut R,
    ) -> (u32, u32, u32, u32) {
        assert!(width > 0 && height > 0, "cannot crop an empty image");
        let area = f64::from(width) * f64::from(height);
        let (lo_r, hi_r) = (f64::from(self.ratio.0), f64::from(self.ratio.1));
        let (log_lo, log_hi) = (lo_r.ln(), hi_r.ln());
        for _ in 0..10 {
            let target_area = area * uniform(rng, f64::from(self.scale.0), f64::from(self.scale.1));
            let aspect = uniform(rng, log_lo, log_hi).exp();
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
                let (w, h) = (w as u32, h as u32);
                // torchvision draws the row (top) before the column (left).
                let top = rng.random_range(0..=height - h);
                let left = rng.random_range(0..=width - w);
                return (left, top, w, h);
            }
        }
        // Fallback: central crop whose aspect is the image's, clamped into the range.
        let (min_r, max_r) = (lo_r.min(hi_r), lo_r.max(hi_r));
        let in_ratio = f64::from(width) / f64::from(height);
        let (w, h) = if in_ratio < min_r {
            // in_ratio < min_r implies width / min_r < height, so h fits.
            let h = (f64::from(width) / min_r).round_ties_even() as u32;
            (width, h.clamp(1, height))
        } else if in_ratio > max_r {
            let w = (f64::from(height) * max_r).round_ties_even() as u32;
            (w.clamp(1, width), height)
        } else {
            (width, height)
        };
        ((width - w) / 2, (height - h) / 2, w, h)
    }

    /// Crops `img` with [`Self::params`] and resizes the crop to `size x size`
    /// with a bilinear (triangle) filter, returning floats in [0, 1].
    pub fn apply<R: Rng + ?Sized>(&self, img: &RgbImage, rng: &mut R) -> Rgb32FImage {
        let (left, top, w, h) = self.params(img.width(), img.height(), rng);
        resize_crop(img, (left, top, w, h), self.size, self.size)
    }
}

/// Triangle-filter resampling taps from `src` samples onto `dst` samples, the
/// same scheme as PIL's bilinear and `image`'s `FilterType::Triangle`: the
/// kernel is widened by the shrink factor (antialiasing) and each output's
/// weights are normalised to sum 1.
struct Taps {
    /// First source index of each output.
    first: Vec<usize>,
    /// Weights of each output, `first..first + weights.len()`, all in bounds.
    weights: Vec<Vec<f32>>,
}

impl Taps {
    fn triangle(src: u32, dst: u32) -> Self {
        let scale = src as f32 / dst as f32;
        let support = scale.max(1.0);
        let mut first = Vec::with_capacity(dst as usize);
        let mut weights = Vec::with_capacity(dst as usize);
        for o in 0..dst {
            let centre = (o as f32 + 0.5) * scale;
            // Invariant: 0 <= lo < hi <= src.
            let lo = ((centre - support).floor().max(0.0) as u32).min(src - 1);
            let hi = ((centre + support).ceil() as u32).clamp(lo + 1, src);
            let mut ws: Vec<f32> = (lo..hi)
                .map(|i| (1.0 - ((i as f32 + 0.5 - centre) / support).abs()).max(0.0))
                .collect();
            let sum: f32 = ws.iter().sum();
            if sum > 0.0 {
                ws.iter_mut().for_each(|w| *w /= sum);
            } else {
                // Unreachable for a triangle of half-width >= 1 (some source
                // centre lies within 0.5 of any point); kept total regardless.
                ws.iter_mut().for_each(|w| *w = 0.0);
                ws[0] = 1.0;
            }
            first.push(lo as usize);
            weights.push(ws);
        }
        Self { first, weights }
    }
}

/// Crops `rect = (left, top, w, h)` of `img` and resizes it to `out_w x out_h`
/// with the triangle filter, straight into f32 in [0, 1] (no 8-bit rounding in
/// between). Two separable passes over flat buffers; the only allocations are
/// per image and per output row/column of taps, never per pixel.
fn resize_crop(img: &RgbImage, rect: (u32, u32, u32, u32), out_w: u32, out_h: u32) -> Rgb32FImage {
    let (left, top, w, h) = rect;
    assert!(w > 0 && h > 0 && left + w <= img.width() && top + h <= img.height());
    assert!(out_w > 0 && out_h > 0, "output size must be positive");
    let xt = Taps::triangle(w, out_w);
    let yt = Taps::triangle(h, out_h);
    let src = img.as_raw();
    let src_row = img.width() as usize * 3;
    let row = out_w as usize * 3;
    // Horizontal pass over the crop rows: tmp is h x out_w, scaled to [0, 1].
    let mut tmp = vec![0.0f32; h as usize * row];
    for (y, out) in tmp.chunks_exact_mut(row).enumerate() {
        let base = (top as usize + y) * src_row + left as usize * 3;
        for ((px, &lo), ws) in out.chunks_exact_mut(3).zip(&xt.first).zip(&xt.weights) {
            let taps = &src[base + lo * 3..base + (lo + ws.len()) * 3];
            let mut acc = [0.0f32; 3];
            for (s, &wt) in taps.chunks_exact(3).zip(ws) {
                acc[0] += wt * f32::from(s[0]);
                acc[1] += wt * f32::from(s[1]);
                acc[2] += wt * f32::from(s[2]);
            }
            for (p, a) in px.iter_mut().zip(acc) {
                *p = a / 255.0;
            }
        }
    }
    // Vertical pass: each output row is a weighted sum of whole tmp rows.
    let mut out = vec![0.0f32; out_h as usize * row];
    for ((out_row, &lo), ws) in out.chunks_exact_mut(row).zip(&yt.first).zip(&yt.weights) {
        for (i, &wt) in ws.iter().enumerate() {
            let r = &tmp[(lo + i) * row..(lo + i + 1) * row];
            for (o, v) in out_row.iter_mut().zip(r) {
                *o += wt * v;
            }
        }
        // Non-negative weights summing to 1 keep values in range up to rounding.
        out_row.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    }
    ImageBuffer::from_raw(out_w, out_h, out).expect("buffer length matches the output size")
}

/// One of the four colour-jitter operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterOp {
    Brightness,
    Contrast,
    Saturation,
    Hue,
}

impl JitterOp {
    /// The canonical order; [`ColorJitter::sample`] shuffles it.
    pub const ALL: [JitterOp; 4] = [
        JitterOp::Brightness,
        JitterOp::Contrast,
        JitterOp::Saturation,
        JitterOp::Hue,
    ];
}

/// Sampled jitter factors. `None` means the operation is skipped, which is what
/// torchvision does for a zero strength (so strength 0 is an exact identity).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct JitterFactors {
    /// Multiplier (>= 0) of the pixel values.
    pub brightness: Option<f32>,
    /// Blend factor against the mean grey level (0 = flat grey image).
    pub contrast: Option<f32>,
    /// Blend factor against the per-pixel grey level (0 = greyscale).
    pub saturation: Option<f32>,
    /// Hue shift in turns, in [-0.5, 0.5].
    pub hue: Option<f32>,
}

/// torchvision `ColorJitter` on float images, applied with probability 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Must lie in [0, 0.5] (a hue shift beyond half a turn is meaningless).
    pub hue: f32,
}

impl Default for ColorJitter {
    /// Strength 0.4 for all four operations: the FIRM and CutPaste-scar setting.
    fn default() -> Self {
        Self::new(0.4, 0.4, 0.4, 0.4)
    }
}

/// ITU-R 601 luma, as torchvision's `rgb_to_grayscale` (weights sum to 1).
#[inline]
fn gray(p: &[f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// torchvision `_blend`: `clamp(ratio * a + (1 - ratio) * b, 0, 1)`.
#[inline]
fn blend(a: f32, b: f32, ratio: f32) -> f32 {
    (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)
}

/// RGB in [0, 1] -> HSV with all components in [0, 1] (hue in turns),
/// following torchvision's `_rgb2hsv` (grey pixels get h = s = 0).
pub fn rgb_to_hsv([r, g, b]: [f32; 3]) -> [f32; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let cr = maxc - minc;
    if cr == 0.0 {
        return [0.0, 0.0, maxc];
    }
    let s = cr / maxc;
    let rc = (maxc - r) / cr;
    let gc = (maxc - g) / cr;
    let bc = (maxc - b) / cr;
    // The same precedence as torchvision: red wins ties, then green.
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    // h / 6 lies in [-1/6, 5/6]; wrap it into [0, 1) (torchvision's fmod(h/6 + 1, 1)).
    let h = h / 6.0;
    [if h < 0.0 { h + 1.0 } else { h }, s, maxc]
}

/// HSV (hue in turns) -> RGB, following torchvision's `_hsv2rgb`.
pub fn hsv_to_rgb([h, s, v]: [f32; 3]) -> [f32; 3] {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    // rem_euclid keeps the sector in 0..6 even for h = 1.0 or slightly negative h.
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

impl ColorJitter {
    pub const fn new(brightness: f32, contrast: f32, saturation: f32, hue: f32) -> Self {
        Self {
            brightness,
            contrast,
            saturation,
            hue,
        }
    }

    /// Draws the operation order (a uniform permutation) and then the factors,
    /// in torchvision's order: b, c, s ~ U(max(0, 1 - x), 1 + x), h ~ U(-hue, hue).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> ([JitterOp; 4], JitterFactors) {
        assert!(
            self.brightness >= 0.0 && self.contrast >= 0.0 && self.saturation >= 0.0,
            "jitter strengths must be non-negative"
        );
        assert!(
            (0.0..=0.5).contains(&self.hue),
            "hue strength must be in [0, 0.5]"
        );
        let mut order = JitterOp::ALL;
        order.shuffle(rng);
        let factor = |rng: &mut R, x: f32| {
            (x > 0.0).then(|| {
                let x = f64::from(x);
                uniform(rng, (1.0 - x).max(0.0), 1.0 + x) as f32
            })
        };
        let brightness = factor(rng, self.brightness);
        let contrast = factor(rng, self.contrast);
        let saturation = factor(rng, self.saturation);
        let hue = (self.hue > 0.0).then(|| {
            let h = f64::from(self.hue);
            uniform(rng, -h, h) as f32
        });
        let factors = JitterFactors {
            brightness,
            contrast,
            saturation,
            hue,
        };
        (order, factors)
    }

    /// Samples factors and jitters `img` in place.
    pub fn apply<R: Rng + ?Sized>(&self, img: &mut Rgb32FImage, rng: &mut R) {
        let (order, factors) = self.sample(rng);
        Self::apply_with(img, &factors, &order);
    }

    /// Deterministic jitter: applies the present factors in `order`, in place.
    /// Every operation clamps to [0, 1] (hue preserves the range by construction).
    pub fn apply_with(img: &mut Rgb32FImage, factors: &JitterFactors, order: &[JitterOp; 4]) {
        for op in order {
            match op {
                JitterOp::Brightness => {
                    if let Some(b) = factors.brightness {
                        for v in img.iter_mut() {
                            *v = blend(*v, 0.0, b);
                        }
                    }
                }
                JitterOp::Contrast => {
                    if let Some(c) = factors.contrast {
                        let n = u64::from(img.width()) * u64::from(img.height());
                        if n > 0 {
                            // f64 accumulation keeps the mean accurate on large images.
                            let sum: f64 = img.pixels().map(|p| f64::from(gray(&p.0))).sum();
                            let mean = (sum / n as f64) as f32;
                            for v in img.iter_mut() {
                                *v = blend(*v, mean, c);
                            }
                        }
                    }
                }
                JitterOp::Saturation => {
                    if let Some(s) = factors.saturation {
                        for p in img.pixels_mut() {
                            let g = gray(&p.0);
                            for v in p.0.iter_mut() {
                                *v = blend(*v, g, s);
                            }
                        }
                    }
                }
                JitterOp::Hue => {
                    if let Some(shift) = factors.hue {
                        for p in img.pixels_mut() {
                            let [h, s, v] = rgb_to_hsv(p.0);
                            // Python's `%`: wraps into [0, 1]; a result of exactly 1
                            // (from rounding) is the same hue as 0 in `hsv_to_rgb`.
                            let h = h + shift;
                            p.0 = hsv_to_rgb([h - h.floor(), s, v]);
                        }
                    }
                }
            }
        }
    }
}

/// torchvision `GaussianBlur(kernel, sigma)` wrapped in `RandomApply(p)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianBlur {
    /// Odd kernel size (taps per axis).
    pub kernel: u32,
    /// Range of sigma, sampled uniformly each time the blur is applied.
    pub sigma: (f32, f32),
    /// Probability of applying the blur at all.
    pub p: f32,
}

impl Default for GaussianBlur {
    /// The reference settings: 3 taps, sigma ~ U(0.1, 2.0), p = 0.75.
    fn default() -> Self {
        Self {
            kernel: 3,
            sigma: (0.1, 2.0),
            p: 0.75,
        }
    }
}

/// Maps an index one or more steps outside `0..n` back inside by mirroring
/// without repeating the edge (reflect: -1 -> 1, n -> n - 2).
#[inline]
fn reflect(i: isize, n: usize) -> usize {
    // Fast path: almost every index is already inside.
    if (0..n as isize).contains(&i) {
        return i as usize;
    }
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

impl GaussianBlur {
    /// The normalised 1-D kernel (sums to 1, symmetric), as torchvision's
    /// `_get_gaussian_kernel1d`: samples of exp(-x^2 / (2 sigma^2)) at integer offsets.
    pub fn kernel_1d(kernel: u32, sigma: f32) -> Vec<f32> {
        assert!(kernel % 2 == 1, "kernel size must be odd");
        assert!(sigma > 0.0, "sigma must be positive");
        let half = (kernel / 2) as i64;
        let s = f64::from(sigma);
        let pdf: Vec<f64> = (-half..=half)
            .map(|x| (-0.5 * (x as f64 / s).powi(2)).exp())
            .collect();
        let sum: f64 = pdf.iter().sum();
        pdf.iter().map(|v| (v / sum) as f32).collect()
    }

    /// Blurs `img` in place with a separable kernel and reflect padding.
    ///
    /// Each output is computed as `x + sum_j k_j * ((x[-j] - x) + (x[+j] - x))`,
    /// which equals the plain convolution for a kernel summing to 1 but leaves a
    /// constant image bit-exact (every difference is exactly zero).
    pub fn blur_with(img: &mut Rgb32FImage, kernel: u32, sigma: f32) {
        let k = Self::kernel_1d(kernel, sigma);
        let r = k.len() / 2;
        let (w, h) = (img.width() as usize, img.height() as usize);
        if r == 0 || w == 0 || h == 0 {
            return;
        }
        // Only the side taps are needed: side[d - 1] weighs offsets +-d.
        let side = &k[r + 1..];
        let stride = w * 3;
        let mut tmp = vec![0.0f32; h * stride];
        // Horizontal pass, img -> tmp, through one reflect-padded row buffer.
        let mut padded = vec![0.0f32; (w + 2 * r) * 3];
        for (src, out) in img.chunks_exact(stride).zip(tmp.chunks_exact_mut(stride)) {
            for (x, px) in padded.chunks_exact_mut(3).enumerate() {
                let sx = reflect(x as isize - r as isize, w);
                px.copy_from_slice(&src[sx * 3..sx * 3 + 3]);
            }
            for (i, o) in out.iter_mut().enumerate() {
                let c = i + r * 3;
                let centre = padded[c];
                let mut acc = 0.0;
                for (d, &kd) in side.iter().enumerate() {
                    let off = (d + 1) * 3;
                    acc += kd * ((padded[c - off] - centre) + (padded[c + off] - centre));
                }
                *o = centre + acc;
            }
        }
        // Vertical pass, tmp -> img, rows addressed through reflected indices.
        let rows: Vec<usize> = (0..h + 2 * r)
            .map(|y| reflect(y as isize - r as isize, h))
            .collect();
        for (y, out) in img.chunks_exact_mut(stride).enumerate() {
            let centre_row = &tmp[rows[y + r] * stride..(rows[y + r] + 1) * stride];
            out.copy_from_slice(centre_row);
            for (d, &kd) in side.iter().enumerate() {
                let up = &tmp[rows[y + r - d - 1] * stride..(rows[y + r - d - 1] + 1) * stride];
                let down = &tmp[rows[y + r + d + 1] * stride..(rows[y + r + d + 1] + 1) * stride];
                for (((o, &c), &u), &dn) in out.iter_mut().zip(centre_row).zip(up).zip(down) {
                    *o += kd * ((u - c) + (dn - c));
                }
            }
        }
    }

    /// With probability `p` draws sigma and blurs in place; returns whether it blurred.
    /// Draw order as torchvision's `RandomApply`: the coin first, sigma only if applied.
    pub fn apply<R: Rng + ?Sized>(&self, img: &mut Rgb32FImage, rng: &mut R) -> bool {
        if rng.random::<f32>() >= self.p {
            return false;
        }
        let sigma = uniform(rng, f64::from(self.sigma.0), f64::from(self.sigma.1)) as f32;
        Self::blur_with(img, self.kernel, sigma);
        true
    }
}

/// Which view augmentation training uses (`augment` in a profile, `--augment`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Augmentation {
    /// The FIRM reference: crop scale 0.25-1, jitter 0.4 (hue 0.4), blur p 0.75.
    #[default]
    Simclr,
    /// Milder views for short CPU runs: crop scale 0.6-1, jitter 0.2 (hue 0.05), blur p 0.5.
    Light,
    /// No augmentation: both views are the test transform (previews, ablations).
    None,
}

impl std::fmt::Display for Augmentation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Simclr => "simclr",
            Self::Light => "light",
            Self::None => "none",
        })
    }
}

/// The full view augmentation: crop + resize -> colour jitter -> random blur.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    pub crop: RandomResizedCrop,
    pub jitter: ColorJitter,
    pub blur: GaussianBlur,
}

impl Augment {
    /// The FIRM reference settings for `size x size` views.
    pub fn simclr(size: u32) -> Self {
        Self {
            crop: RandomResizedCrop::new(size),
            jitter: ColorJitter::default(),
            blur: GaussianBlur::default(),
        }
    }

    /// Milder views ([`Augmentation::Light`]).
    pub fn light(size: u32) -> Self {
        Self {
            crop: RandomResizedCrop {
                scale: (0.6, 1.0),
                ..RandomResizedCrop::new(size)
            },
            jitter: ColorJitter::new(0.2, 0.2, 0.2, 0.05),
            blur: GaussianBlur {
                p: 0.5,
                ..GaussianBlur::default()
            },
        }
    }

    /// The augmentation of a kind; `None` for [`Augmentation::None`].
    pub fn of(kind: Augmentation, size: u32) -> Option<Self> {
        match kind {
            Augmentation::Simclr => Some(Self::simclr(size)),
            Augmentation::Light => Some(Self::light(size)),
            Augmentation::None => None,
        }
    }

    /// One random view of `img`, `size x size`, f32 RGB in [0, 1].
    pub fn apply<R: Rng + ?Sized>(&self, img: &RgbImage, rng: &mut R) -> Rgb32FImage {
        let mut out = self.crop.apply(img, rng);
        self.jitter.apply(&mut out, rng);
        self.blur.apply(&mut out, rng);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// A deterministic textured test image (gradients plus noise).
    fn textured(w: u32, h: u32, seed: u64) -> RgbImage {
        let mut r = rng(seed);
        RgbImage::from_fn(w, h, |x, y| {
            let n: u8 = r.random_range(0..64);
            Rgb([
                ((x * 255 / w.max(1)) as u8).saturating_add(n),
                ((y * 255 / h.max(1)) as u8).saturating_add(n / 2),
                (((x + y) * 7) % 256) as u8,
            ])
        })
    }

    fn const_f32(w: u32, h: u32, c: [f32; 3]) -> Rgb32FImage {
        Rgb32FImage::from_pixel(w, h, Rgb(c))
    }

    fn variance(img: &Rgb32FImage) -> f64 {
        let n = img.len() as f64;
        let mean: f64 = img.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        img.iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n
    }

    #[test]
    fn u8_f32_round_trip() {
        let img = textured(17, 9, 1);
        let f = to_f32(&img);
        assert!(f.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(to_u8(&f), img);
    }

    #[test]
    fn same_seed_same_view_different_seed_different_view() {
        let img = textured(96, 80, 2);
        let aug = Augment::simclr(32);
        let a = aug.apply(&img, &mut rng(7));
        let b = aug.apply(&img, &mut rng(7));
        let c = aug.apply(&img, &mut rng(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn output_is_always_size_by_size_and_in_range() {
        let aug = Augment::simclr(24);
        let mut r = rng(3);
        for (w, h) in [(64, 64), (200, 10), (10, 200), (24, 24), (5, 7), (1, 1)] {
            let img = textured(w, h, 4);
            for _ in 0..5 {
                let out = aug.apply(&img, &mut r);
                assert_eq!(out.dimensions(), (24, 24));
                assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
            }
        }
    }

    #[test]
    fn crop_params_respect_scale_ratio_and_bounds() {
        let crop = RandomResizedCrop::new(32);
        let (w, h) = (400u32, 300u32);
        let area = f64::from(w * h);
        let mut r = rng(11);
        let (mut min_frac, mut max_frac) = (f64::MAX, 0.0f64);
        for _ in 0..2000 {
            let (left, top, cw, ch) = crop.params(w, h, &mut r);
            assert!(cw > 0 && ch > 0);
            assert!(left + cw <= w && top + ch <= h, "crop outside the image");
            let frac = f64::from(cw * ch) / area;
            // Rounding each side by up to 0.5 px moves the area by ~1% here.
            assert!((0.24..=1.0).contains(&frac), "area fraction {frac}");
            let aspect = f64::from(cw) / f64::from(ch);
            // A successful try has aspect within the range up to rounding; the
            // fallback (never reached at 4:3) would be exactly the image aspect.
            assert!((0.74..=1.35).contains(&aspect), "aspect {aspect}");
            min_frac = min_frac.min(frac);
            max_frac = max_frac.max(frac);
        }
        // The draws span the scale range rather than sticking to one value.
        assert!(min_frac < 0.3 && max_frac > 0.9, "{min_frac}..{max_frac}");
    }

    #[test]
    fn crop_fallback_is_central_with_clamped_ratio() {
        // Area >= 500 with aspect <= 4/3 needs h >= 19 > 10: every try fails.
        let crop = RandomResizedCrop::new(16);
        let mut r = rng(5);
        assert_eq!(crop.params(200, 10, &mut r), (93, 0, 13, 10));
        assert_eq!(crop.params(10, 200, &mut r), (0, 93, 10, 13));
        // A ratio range containing the image aspect falls back to the whole image.
        let wide = RandomResizedCrop {
            size: 16,
            scale: (2.0, 3.0),
            ratio: (0.5, 30.0),
        };
        assert_eq!(wide.params(200, 10, &mut r), (0, 0, 200, 10));
    }

    #[test]
    fn jitter_with_zero_strength_is_identity() {
        let mut img = to_f32(&textured(20, 20, 6));
        let before = img.clone();
        ColorJitter::new(0.0, 0.0, 0.0, 0.0).apply(&mut img, &mut rng(1));
        assert_eq!(img, before);
    }

    #[test]
    fn brightness_scales_and_clamps() {
        let mut img = const_f32(3, 2, [0.4, 0.8, 0.0]);
        let f = JitterFactors {
            brightness: Some(1.5),
            ..Default::default()
        };
        ColorJitter::apply_with(&mut img, &f, &JitterOp::ALL);
        for p in img.pixels() {
            assert!((p.0[0] - 0.6).abs() < 1e-6);
            assert_eq!(p.0[1], 1.0, "1.2 must clamp to 1");
            assert_eq!(p.0[2], 0.0);
        }
    }

    #[test]
    fn saturation_zero_gives_grey() {
        let mut img = to_f32(&textured(16, 16, 7));
        let f = JitterFactors {
            saturation: Some(0.0),
            ..Default::default()
        };
        ColorJitter::apply_with(&mut img, &f, &JitterOp::ALL);
        for p in img.pixels() {
            assert!((p.0[0] - p.0[1]).abs() < 1e-6 && (p.0[1] - p.0[2]).abs() < 1e-6);
        }
    }

    #[test]
    fn contrast_zero_gives_the_grey_mean() {
        let src = to_f32(&textured(16, 12, 8));
        let mean = src.pixels().map(|p| f64::from(gray(&p.0))).sum::<f64>() / (16.0 * 12.0);
        let mut img = src.clone();
        let f = JitterFactors {
            contrast: Some(0.0),
            ..Default::default()
        };
        ColorJitter::apply_with(&mut img, &f, &JitterOp::ALL);
        let first = img.get_pixel(0, 0).0;
        assert!((f64::from(first[0]) - mean).abs() < 1e-5);
        assert!(img.pixels().all(|p| p.0 == [first[0]; 3]));
    }

    #[test]
    fn hsv_round_trip_and_zero_hue_shift() {
        let mut r = rng(9);
        for _ in 0..5000 {
            let c = [r.random::<f32>(), r.random::<f32>(), r.random::<f32>()];
            let back = hsv_to_rgb(rgb_to_hsv(c));
            for k in 0..3 {
                assert!((back[k] - c[k]).abs() < 1e-5, "{c:?} -> {back:?}");
            }
        }
        let src = to_f32(&textured(16, 16, 10));
        let mut img = src.clone();
        let f = JitterFactors {
            hue: Some(0.0),
            ..Default::default()
        };
        ColorJitter::apply_with(&mut img, &f, &JitterOp::ALL);
        for (a, b) in img.iter().zip(src.iter()) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn hue_shift_of_red_by_a_third_is_green() {
        let mut img = const_f32(2, 2, [1.0, 0.0, 0.0]);
        let f = JitterFactors {
            hue: Some(1.0 / 3.0),
            ..Default::default()
        };
        ColorJitter::apply_with(&mut img, &f, &JitterOp::ALL);
        for p in img.pixels() {
            assert!((p.0[0]).abs() < 1e-5 && (p.0[1] - 1.0).abs() < 1e-5 && p.0[2].abs() < 1e-5);
        }
        // Negative shifts wrap: red by -1/3 is blue.
        let mut img = const_f32(1, 1, [1.0, 0.0, 0.0]);
        let f = JitterFactors {
            hue: Some(-1.0 / 3.0),
            ..Default::default()
        };
        ColorJitter::apply_with(&mut img, &f, &JitterOp::ALL);
        let p = img.get_pixel(0, 0).0;
        assert!(p[0].abs() < 1e-5 && p[1].abs() < 1e-5 && (p[2] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn jitter_order_matters_and_factors_stay_in_range() {
        let j = ColorJitter::default();
        let mut r = rng(12);
        let mut orders = std::collections::HashSet::new();
        for _ in 0..500 {
            let (order, f) = j.sample(&mut r);
            let mut sorted = order.map(|o| o as u8);
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3], "order must be a permutation");
            orders.insert(order.map(|o| o as u8));
            for x in [f.brightness, f.contrast, f.saturation] {
                assert!((0.6..=1.4).contains(&x.unwrap()));
            }
            assert!((-0.4..=0.4).contains(&f.hue.unwrap()));
        }
        assert_eq!(orders.len(), 24, "all 24 permutations occur");
        // Brightness then contrast differs from contrast then brightness when clamping bites.
        let f = JitterFactors {
            brightness: Some(1.4),
            contrast: Some(0.6),
            ..Default::default()
        };
        let src = to_f32(&textured(8, 8, 13));
        let (mut a, mut b) = (src.clone(), src);
        let bc = [
            JitterOp::Brightness,
            JitterOp::Contrast,
            JitterOp::Saturation,
            JitterOp::Hue,
        ];
        let cb = [
            JitterOp::Contrast,
            JitterOp::Brightness,
            JitterOp::Saturation,
            JitterOp::Hue,
        ];
        ColorJitter::apply_with(&mut a, &f, &bc);
        ColorJitter::apply_with(&mut b, &f, &cb);
        assert_ne!(a, b);
    }

    #[test]
    fn crop_resize_matches_image_triangle_filter() {
        use image::imageops::{self, FilterType};
        let img = textured(120, 90, 15);
        for (rect, (ow, oh)) in [
            ((10, 5, 100, 80), (32, 32)),  // shrink
            ((0, 0, 120, 90), (200, 150)), // enlarge
            ((7, 3, 13, 29), (13, 29)),    // same size: a plain copy
            ((50, 40, 1, 1), (4, 4)),      // single pixel
        ] {
            let (l, t, w, h) = rect;
            let ours = resize_crop(&img, rect, ow, oh);
            let view = imageops::crop_imm(&img, l, t, w, h);
            let theirs = to_f32(&imageops::resize(&*view, ow, oh, FilterType::Triangle));
            let max_diff = ours
                .iter()
                .zip(theirs.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // The reference is rounded to 8 bits: up to half a step apart.
            assert!(
                max_diff <= 0.5 / 255.0 + 1e-4,
                "{rect:?} -> {ow}x{oh}: {max_diff}"
            );
        }
    }

    #[test]
    fn reflect_indices() {
        assert_eq!(reflect(-1, 5), 1);
        assert_eq!(reflect(-2, 5), 2);
        assert_eq!(reflect(5, 5), 3);
        assert_eq!(reflect(6, 5), 2);
        assert_eq!(reflect(2, 5), 2);
        assert_eq!(reflect(-1, 2), 1);
        assert_eq!(reflect(3, 1), 0);
    }

    #[test]
    fn blur_kernel_matches_torchvision() {
        let k = GaussianBlur::kernel_1d(3, 1.0);
        let e = (-0.5f64).exp();
        let side = (e / (1.0 + 2.0 * e)) as f32;
        assert!((k[0] - side).abs() < 1e-7 && (k[2] - side).abs() < 1e-7);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn blur_preserves_constant_and_smooths_checkerboard() {
        for sigma in [0.1, 0.5, 1.0, 2.0] {
            let mut flat = const_f32(9, 7, [0.3, 0.77, 0.123]);
            let before = flat.clone();
            GaussianBlur::blur_with(&mut flat, 3, sigma);
            assert_eq!(flat, before, "sigma {sigma}");
        }
        let board = Rgb32FImage::from_fn(16, 16, |x, y| Rgb([((x + y) % 2) as f32; 3]));
        for sigma in [0.5, 1.0, 2.0] {
            let mut img = board.clone();
            GaussianBlur::blur_with(&mut img, 3, sigma);
            assert!(variance(&img) < 0.9 * variance(&board), "sigma {sigma}");
            // Reflect padding treats the border like the interior: the 3x3
            // response of a checkerboard is the same everywhere per colour.
            let (a, b) = (img.get_pixel(0, 0).0[0], img.get_pixel(5, 7).0[0]);
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn blur_applies_with_probability_p() {
        let blur = GaussianBlur::default();
        let board = Rgb32FImage::from_fn(6, 6, |x, y| Rgb([((x + y) % 2) as f32; 3]));
        let mut r = rng(14);
        let mut applied = 0;
        for _ in 0..1000 {
            let mut img = board.clone();
            let did = blur.apply(&mut img, &mut r);
            // A skipped blur leaves the image untouched.
            if !did {
                assert_eq!(img, board);
            }
            applied += usize::from(did);
        }
        let share = applied as f64 / 1000.0;
        assert!((0.70..=0.80).contains(&share), "applied share {share}");
    }
}

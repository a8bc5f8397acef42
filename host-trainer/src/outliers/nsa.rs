//! NSA synthetic outliers: a patch cut from an image, rescaled, and
//! Poisson-blended back into the same image elsewhere, following Schlüter,
//! Tan, Hou, Bergholz & Kainz, "Natural Synthetic Anomalies for
//! Self-Supervised Anomaly Detection and Localization" (ECCV 2022), in the
//! simple rectangular form the FIRM reference uses.
//!
//! One call ([`nsa`]) draws, in this order from the caller's RNG:
//! 1. half-widths `hw_x ∈ [min_half·W, max_half·W)` and
//!    `hw_y ∈ [min_half·H, max_half·H)` (integers, uniform, independent); the
//!    patch is `2·hw_x × 2·hw_y`;
//! 2. the source corner, uniform so the patch lies fully inside the image;
//! 3. the scale `clip(N(1, scale_std), scale_min, scale_max)`, one factor for
//!    both axes; the patch is resized (bilinear, `FilterType::Triangle`) to
//!    `round(2·hw · scale)` per axis, capped to the image size;
//! 4. the destination corner, uniform so the resized patch fits.
//!
//! The resized patch is blended with [`poisson::seamless_clone`] over its
//! whole rectangle (mask = full rectangle). The rectangle's outermost pixel
//! ring is the Dirichlet boundary and keeps the original values, so at most
//! the inner `(w-2) × (h-2)` pixels change.
//!
//! The outlier mask is exactly the set of pixels whose value differs from the
//! input in any channel (by at least one level: values are 8-bit). If fewer
//! than `min_changed` pixels differ, nothing is applied: the input image is
//! returned with an empty mask and `applied == false`.

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma, RgbImage};
use rand::Rng;
use rand_distr::{Distribution, Normal};

use super::poisson;

/// NSA parameters; [`Default`] gives the paper/FIRM values.
#[derive(Debug, Clone)]
pub struct NsaConfig {
    /// Smallest half-width as a fraction of the matching image side (0.05).
    pub min_half: f32,
    /// Half-width upper bound (exclusive), fraction of the side (0.2).
    pub max_half: f32,
    /// Standard deviation of the scale factor around 1 (0.5).
    pub scale_std: f32,
    /// Lower clip of the scale factor (0.7).
    pub scale_min: f32,
    /// Upper clip of the scale factor (1.3).
    pub scale_max: f32,
    /// Fewer changed pixels than this means "not applied" (50).
    pub min_changed: usize,
    /// Guidance field of the blend (normal cloning).
    pub guidance: poisson::Guidance,
}

impl Default for NsaConfig {
    fn default() -> Self {
        Self {
            min_half: 0.05,
            max_half: 0.2,
            scale_std: 0.5,
            scale_min: 0.7,
            scale_max: 1.3,
            min_changed: 50,
            guidance: poisson::Guidance::Source,
        }
    }
}

/// Result of one NSA draw.
#[derive(Debug, Clone)]
pub struct NsaOutlier {
    /// The image with the outlier, or the input unchanged if `!applied`.
    pub image: RgbImage,
    /// 255 where `image` differs from the input, else 0.
    pub mask: GrayImage,
    /// Whether at least `min_changed` pixels changed.
    pub applied: bool,
    /// Source rectangle `(x, y, w, h)` before scaling.
    pub source: (u32, u32, u32, u32),
    /// Destination rectangle `(x, y, w, h)` of the resized patch.
    pub dest: (u32, u32, u32, u32),
    /// The drawn (clipped) scale factor.
    pub scale: f32,
}

/// Draw the scale factor `clip(N(1, scale_std), scale_min, scale_max)`.
///
/// Invalid configurations never panic: a negative or non-finite `scale_std`
/// yields 1 before clipping, and swapped bounds are reordered.
pub fn sample_scale(cfg: &NsaConfig, rng: &mut impl Rng) -> f32 {
    let (lo, hi) = if cfg.scale_min <= cfg.scale_max {
        (cfg.scale_min, cfg.scale_max)
    } else {
        (cfg.scale_max, cfg.scale_min)
    };
    let raw = match Normal::new(1.0f32, cfg.scale_std) {
        Ok(normal) => normal.sample(rng),
        Err(_) => 1.0,
    };
    // max/min rather than clamp: clamp panics on NaN bounds.
    raw.max(lo).min(hi)
}

/// `ceil(frac · side)`, with products within 1e-6 of an integer snapped to
/// it first: f32 fractions such as 0.2 are not exact (0.2f32 · 80 is
/// 16.0000002 in f64) and must not shift an integer bound by one.
fn ceil_product(frac: f32, side: u32) -> f64 {
    let v = f64::from(frac) * f64::from(side);
    let r = v.round();
    if (v - r).abs() <= 1e-6 * r.abs().max(1.0) {
        r
    } else {
        v.ceil()
    }
}

/// Integer half-width `hw` with `hw ∈ [min_half·side, max_half·side)`,
/// at least 1 and at most `side / 2` (so the patch `2·hw` fits). Needs
/// `side >= 2`. If the range holds no integer, its (clamped) lower end is
/// used.
fn sample_half(side: u32, min_half: f32, max_half: f32, rng: &mut impl Rng) -> u32 {
    let cap = f64::from(side / 2);
    // For integer k: k >= a <=> k >= ceil(a), and k < b <=> k < ceil(b).
    // NaN bounds fall to the clamp floor (`f64::max` ignores NaN).
    let lo = ceil_product(min_half, side).max(1.0).min(cap) as u32;
    let hi = ceil_product(max_half, side).max(0.0).min(cap + 1.0) as u32;
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

/// Generate one NSA outlier from `img`. Deterministic given the RNG state.
pub fn nsa(img: &RgbImage, cfg: &NsaConfig, rng: &mut impl Rng) -> NsaOutlier {
    let (w, h) = img.dimensions();
    let unchanged = |source, dest, scale| NsaOutlier {
        image: img.clone(),
        mask: GrayImage::new(w, h),
        applied: false,
        source,
        dest,
        scale,
    };
    if w < 2 || h < 2 {
        return unchanged((0, 0, 0, 0), (0, 0, 0, 0), 1.0);
    }

    let pw = 2 * sample_half(w, cfg.min_half, cfg.max_half, rng);
    let ph = 2 * sample_half(h, cfg.min_half, cfg.max_half, rng);
    // pw <= w and ph <= h by sample_half's cap.
    let sx = rng.random_range(0..=w - pw);
    let sy = rng.random_range(0..=h - ph);
    let scale = sample_scale(cfg, rng);
    let resized_len = |len: u32, side: u32| {
        // Scale is finite and in a small positive range; clamp guards the
        // degenerate configurations anyway.
        let v = (f64::from(len) * f64::from(scale)).round();
        if v.is_nan() {
            len
        } else {
            v.clamp(1.0, f64::from(side)) as u32
        }
    };
    let (nw, nh) = (resized_len(pw, w), resized_len(ph, h));
    let dx = rng.random_range(0..=w - nw);
    let dy = rng.random_range(0..=h - nh);
    let source = (sx, sy, pw, ph);
    let dest = (dx, dy, nw, nh);

    let patch = imageops::crop_imm(img, sx, sy, pw, ph).to_image();
    let patch = if (nw, nh) == (pw, ph) {
        patch
    } else {
        imageops::resize(&patch, nw, nh, FilterType::Triangle)
    };
    let mask_rect = GrayImage::from_pixel(nw, nh, Luma([255]));
    let (blended, _stats) = poisson::seamless_clone(
        img,
        &patch,
        &mask_rect,
        i64::from(dx),
        i64::from(dy),
        cfg.guidance,
    );

    let mut mask = GrayImage::new(w, h);
    let mut changed = 0usize;
    for (x, y, p) in blended.enumerate_pixels() {
        if p != img.get_pixel(x, y) {
            mask.put_pixel(x, y, Luma([255]));
            changed += 1;
        }
    }
    if changed < cfg.min_changed {
        return unchanged(source, dest, scale);
    }
    NsaOutlier {
        image: blended,
        mask,
        applied: true,
        source,
        dest,
        scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn textured(w: u32, h: u32, seed: u64) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        RgbImage::from_fn(w, h, |x, y| {
            let base = 128.0 + 60.0 * (x as f64 / 5.0).sin() * (y as f64 / 7.0).cos();
            let mut px = [0u8; 3];
            for v in &mut px {
                *v = (base + rng.random_range(-30.0..30.0)).clamp(0.0, 255.0) as u8;
            }
            Rgb(px)
        })
    }

    fn inside_image(r: (u32, u32, u32, u32), w: u32, h: u32) -> bool {
        r.2 >= 1 && r.3 >= 1 && r.0 + r.2 <= w && r.1 + r.3 <= h
    }

    #[test]
    fn geometry_stays_in_bounds_and_covers_the_size_range() {
        let cfg = NsaConfig::default();
        for (w, h) in [(64u32, 64u32), (48, 80)] {
            let img = textured(w, h, 1);
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let (mut min_pw, mut max_pw, mut min_ph, mut max_ph) = (u32::MAX, 0, u32::MAX, 0);
            let (mut at_lo, mut at_hi) = (0, 0);
            for _ in 0..300 {
                let o = nsa(&img, &cfg, &mut rng);
                let (_, _, pw, ph) = o.source;
                let (fw, fh) = (f64::from(w), f64::from(h));
                assert!(pw % 2 == 0 && ph % 2 == 0, "{:?}", o.source);
                assert!(f64::from(pw) >= 2.0 * 0.05 * fw && f64::from(pw) < 2.0 * 0.2 * fw);
                assert!(f64::from(ph) >= 2.0 * 0.05 * fh && f64::from(ph) < 2.0 * 0.2 * fh);
                assert!(inside_image(o.source, w, h), "{:?}", o.source);
                assert!(inside_image(o.dest, w, h), "{:?}", o.dest);
                assert!((0.7..=1.3).contains(&o.scale), "{}", o.scale);
                let expect = |len: u32| (f64::from(len) * f64::from(o.scale)).round() as u32;
                assert_eq!((o.dest.2, o.dest.3), (expect(pw), expect(ph)));
                min_pw = min_pw.min(pw);
                max_pw = max_pw.max(pw);
                min_ph = min_ph.min(ph);
                max_ph = max_ph.max(ph);
                at_lo += usize::from(o.scale == 0.7);
                at_hi += usize::from(o.scale == 1.3);
            }
            // Smallest/largest even sizes in [0.1 side, 0.4 side).
            let range = |side: u32| {
                let lo = (5 * side).div_ceil(100);
                let hi = (20 * side).div_ceil(100) - 1;
                (2 * lo, 2 * hi)
            };
            assert_eq!((min_pw, max_pw), range(w), "{w}x{h} widths");
            assert_eq!((min_ph, max_ph), range(h), "{w}x{h} heights");
            assert!(at_lo > 30 && at_hi > 30, "clip mass {at_lo} {at_hi}");
        }
    }

    #[test]
    fn scale_is_clipped_normal() {
        let cfg = NsaConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let n = 20_000;
        let draws: Vec<f32> = (0..n).map(|_| sample_scale(&cfg, &mut rng)).collect();
        assert!(draws.iter().all(|s| (0.7..=1.3).contains(s)));
        let frac = |pred: &dyn Fn(f32) -> bool| {
            draws.iter().filter(|&&s| pred(s)).count() as f64 / n as f64
        };
        // P(N(1, 0.5) <= 0.7) = Φ(-0.6) ≈ 0.274 at each clip bound.
        let (lo, hi) = (frac(&|s| s == 0.7), frac(&|s| s == 1.3));
        assert!(
            (0.25..0.30).contains(&lo) && (0.25..0.30).contains(&hi),
            "{lo} {hi}"
        );
        let mean = draws.iter().map(|&s| f64::from(s)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        // Interior mass is not collapsed onto the bounds: about 0.45 in (0.7, 1.3).
        let mid = frac(&|s| s > 0.7 && s < 1.3);
        assert!((0.40..0.50).contains(&mid), "{mid}");
        // Interior is bell-shaped: denser in the middle third than the outer thirds.
        let centre = frac(&|s| s > 0.9 && s < 1.1);
        let outer = frac(&|s| s > 0.7 && s <= 0.9);
        assert!(centre > outer * 1.02, "{centre} vs {outer}");
    }

    #[test]
    fn mask_is_exactly_the_changed_pixels() {
        let img = textured(64, 64, 2);
        let cfg = NsaConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for _ in 0..100 {
            let o = nsa(&img, &cfg, &mut rng);
            let mut count = 0;
            for (x, y, m) in o.mask.enumerate_pixels() {
                let differs = o.image.get_pixel(x, y) != img.get_pixel(x, y);
                assert_eq!(m[0] == 255, differs, "({x},{y})");
                assert!(m[0] == 0 || m[0] == 255);
                if differs {
                    count += 1;
                    // Only the rectangle's interior (ring = boundary) may change.
                    let (dx, dy, dw, dh) = o.dest;
                    assert!(x > dx && x + 1 < dx + dw && y > dy && y + 1 < dy + dh);
                }
            }
            assert_eq!(o.applied, count >= cfg.min_changed);
            if !o.applied {
                assert_eq!(o.image, img);
                assert_eq!(count, 0);
            }
        }
    }

    #[test]
    fn flat_image_is_never_applied() {
        let img = RgbImage::from_pixel(64, 48, Rgb([90, 140, 30]));
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..20 {
            let o = nsa(&img, &NsaConfig::default(), &mut rng);
            assert!(!o.applied);
            assert_eq!(o.image, img);
            assert!(o.mask.pixels().all(|m| m[0] == 0));
        }
    }

    #[test]
    fn textured_image_is_usually_applied() {
        let img = textured(64, 64, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let applied = (0..100)
            .filter(|_| nsa(&img, &NsaConfig::default(), &mut rng).applied)
            .count();
        assert!(applied >= 90, "{applied}/100");
    }

    #[test]
    fn same_seed_same_output() {
        let img = textured(80, 60, 4);
        let cfg = NsaConfig::default();
        let run = |seed| nsa(&img, &cfg, &mut ChaCha8Rng::seed_from_u64(seed));
        let (a, b, c) = (run(42), run(42), run(43));
        assert_eq!(a.image, b.image);
        assert_eq!(a.mask, b.mask);
        assert_eq!((a.source, a.dest, a.scale), (b.source, b.dest, b.scale));
        assert_ne!((a.source, a.dest, a.scale), (c.source, c.dest, c.scale));
    }

    #[test]
    fn blend_carries_the_source_patch_laplacian() {
        // With scale fixed at 1 the blend solves Δu = Δ(source patch) on the
        // destination interior; after rounding each 5-point Laplacian may be
        // off by at most 8 · 0.5 = 4 levels. Pasting the wrong region or
        // not solving would give errors of tens of levels on this texture.
        let img = textured(96, 96, 6);
        let cfg = NsaConfig {
            scale_std: 0.0,
            ..NsaConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let lap = |im: &RgbImage, x: u32, y: u32, c: usize| {
            let v = |x: u32, y: u32| f64::from(im.get_pixel(x, y)[c]);
            4.0 * v(x, y) - v(x - 1, y) - v(x + 1, y) - v(x, y - 1) - v(x, y + 1)
        };
        let mut checked = 0;
        for _ in 0..10 {
            let o = nsa(&img, &cfg, &mut rng);
            if !o.applied {
                continue;
            }
            let ((sx, sy, _, _), (dx, dy, dw, dh)) = (o.source, o.dest);
            for ly in 1..dh - 1 {
                for lx in 1..dw - 1 {
                    for c in 0..3 {
                        let want = lap(&img, sx + lx, sy + ly, c);
                        let got = lap(&o.image, dx + lx, dy + ly, c);
                        assert!((want - got).abs() <= 4.0 + 1e-6, "({lx},{ly}) {want} {got}");
                    }
                }
            }
            checked += 1;
        }
        assert!(checked >= 8);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let weird = [
            NsaConfig::default(),
            NsaConfig {
                min_half: f32::NAN,
                max_half: -1.0,
                scale_std: -2.0,
                scale_min: 2.0,
                scale_max: 0.1,
                ..NsaConfig::default()
            },
            NsaConfig {
                min_half: 0.4,
                max_half: 0.1,
                scale_std: f32::INFINITY,
                scale_min: f32::NAN,
                scale_max: f32::NAN,
                ..NsaConfig::default()
            },
            NsaConfig {
                min_half: 5.0,
                max_half: 9.0,
                ..NsaConfig::default()
            },
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for cfg in &weird {
            for (w, h) in [(0, 0), (1, 1), (2, 2), (3, 7), (16, 5)] {
                let img = textured(w, h, 0);
                let o = nsa(&img, cfg, &mut rng);
                assert_eq!(o.image.dimensions(), (w, h));
                if w >= 2 && h >= 2 {
                    assert!(inside_image(o.source, w, h) && inside_image(o.dest, w, h));
                }
            }
        }
    }

    #[test]
    fn large_patch_on_256_px_is_blended() {
        let img = textured(256, 256, 7);
        let cfg = NsaConfig {
            min_half: 0.19,
            max_half: 0.2,
            scale_std: 0.0,
            ..NsaConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let o = nsa(&img, &cfg, &mut rng);
        assert!(o.applied && o.dest.2 >= 98 && o.dest.3 >= 98);
    }
}

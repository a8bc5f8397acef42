//! CutPaste "scar" synthetic outliers.
//!
//! Reproduces the scar variant of CutPaste (Li et al. 2021, "CutPaste:
//! Self-Supervised Learning for Anomaly Detection and Localization") with the
//! MVTec settings the FIRM reference uses: a thin rectangle, width U{2..=16}
//! and height U{10..=25} px, is cut from a random place of the image, colour
//! jittered (strength 0.4 for brightness, contrast, saturation and hue), rotated
//! by U(-45, 45) degrees about its centre and pasted back at a random place of
//! the same image where the rotated patch's bounding box fits.
//!
//! Unlike PIL's nearest-neighbour `rotate`, the rotation samples the patch
//! bilinearly and yields a soft alpha mask (the bilinearly interpolated
//! indicator of the patch), so the scar edges are anti-aliased. The paste is an
//! alpha blend with that mask, quantised to 1/255 steps so that the returned
//! 8-bit mask describes the blend exactly: mask 0 means the pixel is the
//! original, mask 255 means it is purely the patch.

use crate::augment::{ColorJitter, to_f32};
use image::imageops;
use image::{GrayImage, Luma, Rgb32FImage, RgbImage};
use rand::Rng;

/// Parameters of the scar outlier. Size ranges are inclusive, in pixels.
#[derive(Debug, Clone)]
pub struct ScarConfig {
    /// Patch width range, inclusive (reference: 2..=16).
    pub width: (u32, u32),
    /// Patch height range, inclusive (reference: 10..=25).
    pub height: (u32, u32),
    /// Maximum absolute rotation in degrees; the angle is U(-r, r) (reference: 45).
    pub rotation_deg: f32,
    /// Jitter applied to the cut patch (reference: 0.4 for all four).
    pub jitter: ColorJitter,
}

impl Default for ScarConfig {
    fn default() -> Self {
        Self {
            width: (2, 16),
            height: (10, 25),
            rotation_deg: 45.0,
            jitter: ColorJitter::new(0.4, 0.4, 0.4, 0.4),
        }
    }
}

impl ScarConfig {
    /// The reference sizes are pixels of an image at the model's input resolution; for a source
    /// image `factor` times larger (the trainer caches images at up to twice the input side), scale
    /// them so the scar keeps its size relative to the part.
    pub fn scaled(factor: f32) -> Self {
        let d = Self::default();
        let s = |v: u32| ((v as f32 * factor).round() as u32).max(1);
        Self {
            width: (s(d.width.0), s(d.width.1)),
            height: (s(d.height.0), s(d.height.1)),
            ..d
        }
    }
}

/// One scar outlier and where it came from.
#[derive(Debug, Clone)]
pub struct ScarOutlier {
    /// The image with the scar pasted in; same size as the input.
    pub image: RgbImage,
    /// Per-pixel blend weight of the patch, `round(alpha * 255)`; 0 where untouched.
    pub mask: GrayImage,
    /// Rotation in degrees, counter-clockwise as displayed (y axis down), like PIL.
    pub angle_deg: f32,
    /// Source rectangle `(x, y, w, h)` the patch was cut from (after clamping).
    pub patch: (u32, u32, u32, u32),
    /// Top-left corner of the rotated patch's bounding box in the output.
    pub at: (u32, u32),
}

/// Bilinearly interpolated value, at continuous index `x`, of the indicator
/// of `0..n` padded with zeros: 1 on [0, n-1], ramping to 0 at -1 and n.
#[inline]
fn coverage(x: f32, n: u32) -> f32 {
    (x + 1.0).min(n as f32 - x).clamp(0.0, 1.0)
}

/// Bilinear colour sample at continuous index `(x, y)`, clamping to the edge
/// (the alpha mask, not the colour, carries the patch boundary).
fn sample_clamped(img: &Rgb32FImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = img.dimensions();
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let (a, b) = (img.get_pixel(x0, y0).0, img.get_pixel(x1, y0).0);
    let (c, d) = (img.get_pixel(x0, y1).0, img.get_pixel(x1, y1).0);
    std::array::from_fn(|k| {
        let top = a[k] + (b[k] - a[k]) * fx;
        let bottom = c[k] + (d[k] - c[k]) * fx;
        top + (bottom - top) * fy
    })
}

/// Side of the bounding box of the patch rotated, along one output axis.
///
/// `n` is the patch side along that axis and `extent` the width of the
/// projection of the alpha support (the rotated `(w+1) x (h+1)` rectangle,
/// since bilinear alpha reaches half a pixel beyond the patch). The box grows
/// by whole pixels on both sides so that it keeps the parity of `n`: at angle 0
/// pixel centres then fall exactly on patch pixel centres and the patch is
/// copied without resampling blur. Pixels outside the box have alpha 0.
fn box_side(n: u32, extent: f32) -> u32 {
    // The first pixel centre outside a box of n + 2k lies (n + 1) / 2 + k from
    // the centre; it must be at or beyond extent / 2. The epsilon absorbs
    // float noise such as cos(0) * x != x.
    let k = ((extent - (n + 1) as f32) / 2.0 - 1e-3).ceil().max(0.0);
    n + 2 * k as u32
}

/// Cuts, jitters, rotates and pastes one scar into a copy of `img`.
///
/// Small images: the patch size is clamped to the image (`w <= W`, `h <= H`)
/// and the rotated bounding box to the image as well; when the box had to be
/// clamped the corners of the rotated patch that fall outside it are clipped
/// (the mask reports exactly what was pasted). With the default sizes a
/// 32x32 image needs no clamping of the patch (max 16x25); only the box of a
/// tall, strongly rotated patch can be clipped.
///
/// # Panics
/// If `img` is empty, a size range is empty or starts at 0, or the rotation
/// range is negative or not finite.
pub fn scar<R: Rng + ?Sized>(img: &RgbImage, cfg: &ScarConfig, rng: &mut R) -> ScarOutlier {
    let (iw, ih) = img.dimensions();
    assert!(iw > 0 && ih > 0, "cannot paste a scar into an empty image");
    assert!(
        cfg.width.0 >= 1 && cfg.width.0 <= cfg.width.1,
        "invalid width range {:?}",
        cfg.width
    );
    assert!(
        cfg.height.0 >= 1 && cfg.height.0 <= cfg.height.1,
        "invalid height range {:?}",
        cfg.height
    );
    assert!(
        cfg.rotation_deg.is_finite() && cfg.rotation_deg >= 0.0,
        "invalid rotation {}",
        cfg.rotation_deg
    );

    // Cut.
    let w = rng.random_range(cfg.width.0..=cfg.width.1).min(iw);
    let h = rng.random_range(cfg.height.0..=cfg.height.1).min(ih);
    let sx = rng.random_range(0..=iw - w);
    let sy = rng.random_range(0..=ih - h);
    let mut patch = to_f32(&imageops::crop_imm(img, sx, sy, w, h).to_image());

    // Jitter the patch only, so the scar differs in colour from its source.
    cfg.jitter.apply(&mut patch, rng);

    // Rotate: a uniform angle; `random::<f64>()` also allows a zero range.
    let r = f64::from(cfg.rotation_deg);
    let angle_deg = (-r + 2.0 * r * rng.random::<f64>()) as f32;
    let (sin, cos) = angle_deg.to_radians().sin_cos();
    let (wf, hf) = (w as f32, h as f32);
    let ext_x = (wf + 1.0) * cos.abs() + (hf + 1.0) * sin.abs();
    let ext_y = (wf + 1.0) * sin.abs() + (hf + 1.0) * cos.abs();
    let bw = box_side(w, ext_x).min(iw);
    let bh = box_side(h, ext_y).min(ih);

    // Paste location: the whole bounding box lies inside the image.
    let ax = rng.random_range(0..=iw - bw);
    let ay = rng.random_range(0..=ih - bh);

    let mut image = img.clone();
    let mut mask = GrayImage::new(iw, ih);
    let (bcx, bcy) = (bw as f32 / 2.0, bh as f32 / 2.0);
    let (pcx, pcy) = (wf / 2.0, hf / 2.0);
    for by in 0..bh {
        for bx in 0..bw {
            // Offset of this pixel centre from the box centre...
            let ox = bx as f32 + 0.5 - bcx;
            let oy = by as f32 + 0.5 - bcy;
            // ...rotated back into the patch frame (inverse of a rotation that
            // turns the patch counter-clockwise on screen), as a continuous
            // pixel index (pixel k has its centre at k + 0.5).
            let u = pcx + cos * ox - sin * oy - 0.5;
            let v = pcy + sin * ox + cos * oy - 0.5;
            let alpha = coverage(u, w) * coverage(v, h);
            let m = (alpha * 255.0).round() as u8;
            if m == 0 {
                // Invariant: a zero mask pixel is the original pixel.
                continue;
            }
            // Blend with the quantised alpha so that the mask is the exact weight.
            let a = f32::from(m) / 255.0;
            let col = sample_clamped(&patch, u, v);
            let (px, py) = (ax + bx, ay + by);
            let dst = image.get_pixel_mut(px, py);
            for (d, c) in dst.0.iter_mut().zip(col) {
                let orig = f32::from(*d) / 255.0;
                *d = ((a * c + (1.0 - a) * orig).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
            mask.put_pixel(px, py, Luma([m]));
        }
    }

    ScarOutlier {
        image,
        mask,
        angle_deg,
        patch: (sx, sy, w, h),
        at: (ax, ay),
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

    /// Random per-pixel noise: a maximally textured image.
    fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
        let mut r = rng(seed);
        RgbImage::from_fn(w, h, |_, _| Rgb([r.random(), r.random(), r.random()]))
    }

    fn mask_area(m: &GrayImage) -> f64 {
        m.iter().map(|&v| f64::from(v) / 255.0).sum()
    }

    #[test]
    fn sizes_cover_the_inclusive_ranges() {
        let img = noise(128, 128, 1);
        let cfg = ScarConfig::default();
        let mut r = rng(2);
        let (mut ws, mut hs) = ([0u32; 32], [0u32; 32]);
        for _ in 0..1500 {
            let s = scar(&img, &cfg, &mut r);
            let (_, _, w, h) = s.patch;
            assert!((2..=16).contains(&w) && (10..=25).contains(&h), "{w}x{h}");
            ws[w as usize] += 1;
            hs[h as usize] += 1;
        }
        assert!((2..=16).all(|w| ws[w] > 0), "widths {ws:?}");
        assert!((10..=25).all(|h| hs[h] > 0), "heights {hs:?}");
    }

    #[test]
    fn angles_are_uniform_in_range() {
        let img = noise(64, 64, 3);
        let cfg = ScarConfig::default();
        let mut r = rng(4);
        let angles: Vec<f32> = (0..1000)
            .map(|_| scar(&img, &cfg, &mut r).angle_deg)
            .collect();
        assert!(angles.iter().all(|a| (-45.0..=45.0).contains(a)));
        let neg = angles.iter().filter(|&&a| a < 0.0).count();
        assert!((400..=600).contains(&neg), "{neg} negative of 1000");
        // Each 15-degree bin of six holds about 1/6 of the draws.
        let mut bins = [0usize; 6];
        for a in &angles {
            bins[(((a + 45.0) / 15.0) as usize).min(5)] += 1;
        }
        assert!(bins.iter().all(|&b| (110..=230).contains(&b)), "{bins:?}");
    }

    #[test]
    fn mask_area_matches_patch_area_and_lies_in_the_box() {
        let img = noise(96, 96, 5);
        let cfg = ScarConfig::default();
        let mut r = rng(6);
        for _ in 0..300 {
            let s = scar(&img, &cfg, &mut r);
            let (_, _, w, h) = s.patch;
            let ratio = mask_area(&s.mask) / f64::from(w * h);
            assert!(
                (0.9..=1.1).contains(&ratio),
                "area ratio {ratio} for {w}x{h} at {}",
                s.angle_deg
            );
            // Mask pixels sit right of and below the reported box corner.
            for (x, y, m) in s.mask.enumerate_pixels() {
                if m.0[0] > 0 {
                    assert!(x >= s.at.0 && y >= s.at.1);
                }
            }
        }
    }

    #[test]
    fn unmasked_pixels_are_unchanged_and_full_mask_pixels_change() {
        let img = noise(80, 80, 7);
        let cfg = ScarConfig::default();
        let mut r = rng(8);
        let mut mostly_changed = 0;
        let draws = 200;
        for _ in 0..draws {
            let s = scar(&img, &cfg, &mut r);
            let (mut full, mut changed) = (0, 0);
            for (x, y, m) in s.mask.enumerate_pixels() {
                let (a, b) = (img.get_pixel(x, y), s.image.get_pixel(x, y));
                match m.0[0] {
                    0 => assert_eq!(a, b, "unmasked pixel ({x}, {y}) changed"),
                    255 => {
                        full += 1;
                        changed += usize::from(a != b);
                    }
                    _ => {}
                }
            }
            assert!(full > 0, "a scar has fully covered pixels");
            if changed * 2 > full {
                mostly_changed += 1;
            }
        }
        assert!(mostly_changed * 10 >= draws * 9, "{mostly_changed}/{draws}");
    }

    #[test]
    fn zero_angle_without_jitter_copies_the_patch_exactly() {
        let img = noise(40, 40, 9);
        let cfg = ScarConfig {
            rotation_deg: 0.0,
            jitter: ColorJitter::new(0.0, 0.0, 0.0, 0.0),
            ..ScarConfig::default()
        };
        let mut r = rng(10);
        for _ in 0..20 {
            let s = scar(&img, &cfg, &mut r);
            let (sx, sy, w, h) = s.patch;
            for y in 0..h {
                for x in 0..w {
                    let (px, py) = (s.at.0 + x, s.at.1 + y);
                    assert_eq!(s.mask.get_pixel(px, py).0[0], 255);
                    assert_eq!(s.image.get_pixel(px, py), img.get_pixel(sx + x, sy + y));
                }
            }
            assert_eq!(mask_area(&s.mask), f64::from(w * h));
        }
    }

    #[test]
    fn positive_angle_turns_counter_clockwise() {
        // A vertical 2x25 bar turned counter-clockwise on screen (y down) has
        // its top end left of its bottom end; clockwise would be the reverse.
        let img = noise(64, 64, 16);
        let cfg = ScarConfig {
            width: (2, 2),
            height: (25, 25),
            ..ScarConfig::default()
        };
        let mut r = rng(17);
        let mut checked = 0;
        while checked < 10 {
            let s = scar(&img, &cfg, &mut r);
            if s.angle_deg.abs() < 20.0 {
                continue;
            }
            let pts: Vec<(f64, f64)> = s
                .mask
                .enumerate_pixels()
                .filter(|(_, _, m)| m.0[0] > 127)
                .map(|(x, y, _)| (f64::from(x), f64::from(y)))
                .collect();
            let cy = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
            let mean_x = |upper: bool| {
                let sel: Vec<f64> = pts
                    .iter()
                    .filter(|p| (p.1 < cy) == upper)
                    .map(|p| p.0)
                    .collect();
                sel.iter().sum::<f64>() / sel.len() as f64
            };
            let leans_left = mean_x(true) < mean_x(false);
            assert_eq!(leans_left, s.angle_deg > 0.0, "angle {}", s.angle_deg);
            checked += 1;
        }
    }

    #[test]
    fn same_seed_same_scar() {
        let img = noise(64, 48, 11);
        let cfg = ScarConfig::default();
        let a = scar(&img, &cfg, &mut rng(12));
        let b = scar(&img, &cfg, &mut rng(12));
        let c = scar(&img, &cfg, &mut rng(13));
        assert_eq!((a.image.clone(), a.mask.clone()), (b.image, b.mask));
        assert_eq!((a.angle_deg, a.patch, a.at), (b.angle_deg, b.patch, b.at));
        assert_ne!((a.patch, a.at), (c.patch, c.at));
    }

    #[test]
    fn small_images_clamp_and_stay_in_bounds() {
        let cfg = ScarConfig::default();
        let mut r = rng(14);
        for (w, h) in [(32, 32), (8, 8), (3, 40), (1, 1)] {
            let img = noise(w, h, 15);
            for _ in 0..100 {
                let s = scar(&img, &cfg, &mut r);
                let (sx, sy, pw, ph) = s.patch;
                assert!(sx + pw <= w && sy + ph <= h);
                assert!(s.at.0 < w && s.at.1 < h);
                assert_eq!(s.image.dimensions(), (w, h));
                assert_eq!(s.mask.dimensions(), (w, h));
                if (w, h) == (32, 32) {
                    // The default sizes fit a 32x32 image without clamping.
                    assert!((2..=16).contains(&pw) && (10..=25).contains(&ph));
                }
                assert!(s.mask.iter().any(|&m| m > 0), "something is pasted");
            }
        }
    }

    #[test]
    fn box_side_keeps_parity_and_covers_the_support() {
        // Angle 0: no growth.
        assert_eq!(box_side(5, 6.0), 5);
        assert_eq!(box_side(5, 6.0001), 5);
        // Support 9.9 wide: 2 + 2 * 4 = 10 (first centre outside at 1.5 + 4 = 5.5 >= 4.95).
        assert_eq!(box_side(2, 9.9), 10);
        assert_eq!(box_side(4, 11.0), 10);
    }

    #[test]
    fn sizes_scale_with_the_source_resolution() {
        let one = ScarConfig::scaled(1.0);
        let d = ScarConfig::default();
        assert_eq!((one.width, one.height), (d.width, d.height));
        let two = ScarConfig::scaled(2.0);
        assert_eq!((two.width, two.height), ((4, 32), (20, 50)));
        let img = RgbImage::from_fn(128, 128, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 2) as u8, 90])
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let o = scar(&img, &two, &mut rng);
            assert!(
                (4..=32).contains(&o.patch.2) && (20..=50).contains(&o.patch.3),
                "{:?}",
                o.patch
            );
        }
    }
}

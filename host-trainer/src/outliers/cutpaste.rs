//! CutPaste (Li et al. 2021) as the FIRM reference uses it: a rectangle of area U(0.02, 0.15) of
//! the image, aspect ratio log-uniform in (0.3, 3.3), cut from the image and pasted at another
//! random position of the same image; up to 10 draws for a rectangle that fits.

use image::RgbImage;
use rand::Rng;

/// Where a patch was taken from and pasted to (x, y, width, height in pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchMove {
    pub from: (u32, u32),
    pub to: (u32, u32),
    pub size: (u32, u32),
}

/// Draw the patch geometry for a `w` x `h` image; `None` when 10 draws do not fit.
pub fn draw(w: u32, h: u32, rng: &mut impl Rng) -> Option<PatchMove> {
    let area = (w * h) as f64;
    for _ in 0..10 {
        let target = area * rng.random_range(0.02..0.15);
        let aspect = rng.random_range(0.3f64.ln()..3.3f64.ln()).exp();
        let pw = (target * aspect).sqrt().round() as u32;
        let ph = (target / aspect).sqrt().round() as u32;
        if pw == 0 || ph == 0 || pw >= w || ph >= h {
            continue;
        }
        let from = (rng.random_range(0..=w - pw), rng.random_range(0..=h - ph));
        let to = (rng.random_range(0..=w - pw), rng.random_range(0..=h - ph));
        return Some(PatchMove {
            from,
            to,
            size: (pw, ph),
        });
    }
    None
}

/// Apply a patch move.
pub fn apply(img: &RgbImage, m: PatchMove) -> RgbImage {
    let patch = image::imageops::crop_imm(img, m.from.0, m.from.1, m.size.0, m.size.1).to_image();
    let mut out = img.clone();
    image::imageops::replace(&mut out, &patch, m.to.0 as i64, m.to.1 as i64);
    out
}

/// CutPaste outlier of `img` (unchanged if no patch fits, as in the reference).
pub fn cutpaste(img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    match draw(img.width(), img.height(), rng) {
        Some(m) => apply(img, m),
        None => img.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::SeedableRng;

    #[test]
    fn geometry_within_bounds_and_area() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let m = draw(64, 48, &mut rng).expect("fits");
            let frac = (m.size.0 * m.size.1) as f64 / (64.0 * 48.0);
            assert!((0.012..0.17).contains(&frac), "area fraction {frac}");
            assert!(m.from.0 + m.size.0 <= 64 && m.to.1 + m.size.1 <= 48);
        }
    }

    #[test]
    fn pasted_region_equals_source() {
        let img = RgbImage::from_fn(32, 32, |x, y| Rgb([x as u8 * 7, y as u8 * 7, 0]));
        let m = PatchMove {
            from: (2, 3),
            to: (20, 10),
            size: (5, 4),
        };
        let out = apply(&img, m);
        for dy in 0..4 {
            for dx in 0..5 {
                assert_eq!(
                    out.get_pixel(20 + dx, 10 + dy),
                    img.get_pixel(2 + dx, 3 + dy)
                );
            }
        }
        assert_eq!(out.get_pixel(0, 0), img.get_pixel(0, 0));
    }
}

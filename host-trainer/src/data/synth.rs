//! Procedurally generated inspection images: a round, bottle-like part seen from above (dark
//! background, bright lip ring, darker inside) with realistic variation (position, size, lighting,
//! sensor noise) and defects with their masks. Deterministic from the RNG passed in, so a seed
//! reproduces a dataset exactly. Used by the smoke run and by `--demo`.

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// Defects drawn into a good part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// A dark blob of foreign material inside the part.
    Contamination,
    /// A thin bright line across the lip.
    Scratch,
    /// A missing sector of the lip ring.
    BrokenLip,
}

impl Defect {
    pub const ALL: [Defect; 3] = [Defect::Contamination, Defect::Scratch, Defect::BrokenLip];

    /// MVTec-style folder name of the defect type.
    pub fn name(self) -> &'static str {
        match self {
            Defect::Contamination => "contamination",
            Defect::Scratch => "scratch",
            Defect::BrokenLip => "broken_lip",
        }
    }
}

/// Geometry and lighting of one rendered part.
struct Part {
    cx: f32,
    cy: f32,
    r_outer: f32,
    r_inner: f32,
    gain: f32,
    tint: [f32; 3],
}

/// Render one `size` x `size` image; `defect` adds a defect and marks it in the returned mask
/// (255 = defective pixel; all zero for a good part).
pub fn render(size: u32, defect: Option<Defect>, rng: &mut impl Rng) -> (RgbImage, GrayImage) {
    let s = size as f32;
    let part = Part {
        cx: s * (0.5 + rng.random_range(-0.04..0.04)),
        cy: s * (0.5 + rng.random_range(-0.04..0.04)),
        r_outer: s * rng.random_range(0.36..0.40),
        r_inner: s * rng.random_range(0.22..0.25),
        gain: rng.random_range(0.85..1.15),
        tint: [
            rng.random_range(0.95..1.05),
            rng.random_range(0.95..1.05),
            rng.random_range(0.95..1.05),
        ],
    };
    let noise = Normal::new(0.0f32, rng.random_range(2.0..5.0)).expect("finite");
    let mut mask = GrayImage::new(size, size);
    let mut img = RgbImage::from_fn(size, size, |x, y| {
        let v = base_intensity(&part, x as f32 + 0.5, y as f32 + 0.5);
        let px: [u8; 3] = std::array::from_fn(|c| {
            (v * part.gain * part.tint[c] + noise.sample(rng)).clamp(0.0, 255.0) as u8
        });
        Rgb(px)
    });
    if let Some(d) = defect {
        draw_defect(&mut img, &mut mask, &part, d, rng);
    }
    (img, mask)
}

fn base_intensity(p: &Part, x: f32, y: f32) -> f32 {
    let r = ((x - p.cx).powi(2) + (y - p.cy).powi(2)).sqrt();
    let lip = p.r_outer - p.r_inner;
    if r > p.r_outer + 1.0 {
        25.0
    } else if r > p.r_inner {
        // The lip: brightest in its middle, smooth falloff at both edges.
        let t = ((r - p.r_inner) / lip).clamp(0.0, 1.0);
        25.0 + 160.0 * (std::f32::consts::PI * t).sin().max(0.0).powf(0.6)
    } else {
        // Inside: a dim, slightly brighter centre (light from above).
        60.0 + 30.0 * (1.0 - r / p.r_inner)
    }
}

fn draw_defect(img: &mut RgbImage, mask: &mut GrayImage, p: &Part, d: Defect, rng: &mut impl Rng) {
    let size = img.width() as f32;
    let (w, h) = img.dimensions();
    let mut paint = |x: i64, y: i64, f: &dyn Fn([u8; 3]) -> [u8; 3]| {
        if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
            let px = img.get_pixel_mut(x as u32, y as u32);
            px.0 = f(px.0);
            mask.put_pixel(x as u32, y as u32, Luma([255]));
        }
    };
    match d {
        Defect::Contamination => {
            let a = rng.random_range(0.0..std::f32::consts::TAU);
            let rr = rng.random_range(0.0..0.6) * p.r_inner;
            let (bx, by) = (p.cx + rr * a.cos(), p.cy + rr * a.sin());
            let rad = size * rng.random_range(0.05..0.09);
            let col = [
                rng.random_range(0..40u8),
                rng.random_range(0..30),
                rng.random_range(0..20),
            ];
            for y in (by - rad) as i64..=(by + rad) as i64 {
                for x in (bx - rad) as i64..=(bx + rad) as i64 {
                    let dd = ((x as f32 - bx).powi(2) + (y as f32 - by).powi(2)).sqrt();
                    if dd <= rad {
                        paint(x, y, &|_| col);
                    }
                }
            }
        }
        Defect::Scratch => {
            let a = rng.random_range(0.0..std::f32::consts::TAU);
            let r0 = (p.r_inner + p.r_outer) / 2.0;
            let (x0, y0) = (p.cx + r0 * a.cos(), p.cy + r0 * a.sin());
            let dir = a + rng.random_range(1.0..2.1);
            let len = size * rng.random_range(0.25..0.4);
            let steps = (len * 2.0) as usize;
            for i in 0..steps {
                let t = i as f32 / 2.0 - len / 2.0;
                let (x, y) = (x0 + t * dir.cos(), y0 + t * dir.sin());
                for (dx, dy) in [(0, 0), (1, 0)] {
                    paint(x as i64 + dx, y as i64 + dy, &|_| [235, 235, 225]);
                }
            }
        }
        Defect::BrokenLip => {
            let a0 = rng.random_range(0.0..std::f32::consts::TAU);
            let span = rng.random_range(0.35..0.7);
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    let (fx, fy) = (x as f32 + 0.5 - p.cx, y as f32 + 0.5 - p.cy);
                    let r = (fx * fx + fy * fy).sqrt();
                    let mut da = fy.atan2(fx) - a0;
                    da = (da + std::f32::consts::PI).rem_euclid(std::f32::consts::TAU)
                        - std::f32::consts::PI;
                    if r > p.r_inner + 1.0 && r <= p.r_outer + 1.0 && da.abs() < span / 2.0 {
                        paint(x, y, &|_| [30, 28, 26]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn deterministic_and_varied() {
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (i1, _) = render(48, None, &mut a);
        let (i2, _) = render(48, None, &mut b);
        assert_eq!(i1, i2);
        let (i3, _) = render(48, None, &mut a);
        assert_ne!(i1, i3, "consecutive parts vary");
    }

    #[test]
    fn defects_are_masked_and_visible() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for d in Defect::ALL {
            let (img, mask) = render(64, Some(d), &mut rng);
            let marked: Vec<(u32, u32)> = mask
                .enumerate_pixels()
                .filter(|(_, _, p)| p.0[0] == 255)
                .map(|(x, y, _)| (x, y))
                .collect();
            assert!(marked.len() >= 10, "{d:?}: {} masked pixels", marked.len());
            assert!(marked.len() < 64 * 64 / 4, "{d:?} covers too much");
            assert_eq!(img.dimensions(), (64, 64));
        }
        let (_, mask) = render(64, None, &mut rng);
        assert!(mask.pixels().all(|p| p.0[0] == 0));
    }
}

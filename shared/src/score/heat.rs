//! Anomaly maps drawn for operators: a colour scale, a heat overlay on the inspected image, and a
//! PNG of the map alone for the web API.
//!
//! The colour scale is Turbo (Mikhailov, Google AI blog 2019; Apache-2.0): dark blue for cold, dark
//! red for hot, the hue falling steadily in between. It is stored as 17 knots (matplotlib's `turbo` at t = k/16, written by
//! `scripts/score-map-reference.py`) joined linearly: within 2 of the 256-entry table per channel.
//!
//! Values become colours through `t = (v - lo) / (hi - lo)`, clamped to 0..1: `lo` is where a map
//! starts to matter (e.g. the calibrated normal level), `hi` where it is surely a defect (e.g. the
//! decision threshold).

use image::{ImageEncoder, RgbImage};

use super::map::Map;

/// Turbo at t = 0, 1/16, ..., 1 (sRGB, u8).
const TURBO: [[u8; 3]; 17] = [
    [48, 18, 59],
    [64, 64, 161],
    [70, 107, 227],
    [66, 147, 255],
    [41, 187, 236],
    [24, 220, 195],
    [49, 242, 153],
    [107, 253, 100],
    [163, 253, 60],
    [204, 237, 52],
    [237, 208, 58],
    [253, 174, 53],
    [251, 128, 34],
    [236, 82, 15],
    [210, 49, 5],
    [172, 23, 1],
    [122, 4, 3],
];

/// The Turbo colour of `t` (clamped to 0..1; NaN as 0): dark blue at 0, green-yellow in the
/// middle, dark red at 1.
pub fn colormap(t: f32) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (TURBO.len() - 1) as f32;
    let i = (pos as usize).min(TURBO.len() - 2);
    let f = pos - i as f32;
    let (a, b) = (TURBO[i], TURBO[i + 1]);
    std::array::from_fn(|c| (f32::from(a[c]) * (1.0 - f) + f32::from(b[c]) * f).round() as u8)
}

/// `(v - lo) / (hi - lo)` clamped to 0..1; when `hi <= lo`, a step: 1 from `lo` up, else 0.
/// NaN values give 0 (drawn as normal).
pub fn normalise(v: f32, lo: f32, hi: f32) -> f32 {
    let t = if hi > lo {
        (v - lo) / (hi - lo)
    } else if v >= lo {
        1.0
    } else {
        0.0
    };
    if t > 0.0 { t.min(1.0) } else { 0.0 }
}

/// `img` with `map` blended over it. The map is resized bilinearly to the image when the sizes
/// differ. Each pixel with level `t = normalise(v, lo, hi)` is mixed with `colormap(t)` at weight
/// `a = alpha * t` (alpha clamped to 0..1):
///
/// `out = round((1 - a) * pixel + a * colormap(t))`
///
/// so pixels at or below `lo` are returned unchanged, pixels at or above `hi` get the full
/// `alpha` of dark red, and the tint fades in between.
///
/// # Panics
/// When the map is empty and the image is not.
pub fn overlay(img: &RgbImage, map: &Map, lo: f32, hi: f32, alpha: f32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let resized;
    let map = if (map.w, map.h) == (w, h) {
        map
    } else {
        resized = map.resize_bilinear(w, h);
        &resized
    };
    let alpha = if alpha > 0.0 { alpha.min(1.0) } else { 0.0 };
    let mut out = img.clone();
    for (p, &v) in out.pixels_mut().zip(&map.data) {
        let t = normalise(v, lo, hi);
        let a = alpha * t;
        if a <= 0.0 {
            continue;
        }
        let c = colormap(t);
        for (ch, c) in p.0.iter_mut().zip(c) {
            *ch = ((1.0 - a) * f32::from(*ch) + a * f32::from(c)).round() as u8;
        }
    }
    out
}

/// The map alone in colour, one pixel per map value, `colormap(normalise(v, lo, hi))`.
///
/// # Panics
/// When a side exceeds `u32::MAX`.
pub fn heat_image(map: &Map, lo: f32, hi: f32) -> RgbImage {
    let w = u32::try_from(map.w).expect("map width fits an image");
    let h = u32::try_from(map.h).expect("map height fits an image");
    let mut img = RgbImage::new(w, h);
    for (p, &v) in img.pixels_mut().zip(&map.data) {
        p.0 = colormap(normalise(v, lo, hi));
    }
    img
}

/// [`heat_image`] encoded as a PNG (8-bit RGB, fast compression), for the web API.
///
/// # Panics
/// When the map is empty (PNG has no zero-sized images) or a side exceeds `u32::MAX`.
pub fn heat_png(map: &Map, lo: f32, hi: f32) -> Vec<u8> {
    assert!(
        map.w > 0 && map.h > 0,
        "heat_png: a PNG needs a non-empty map, got {}x{}",
        map.w,
        map.h
    );
    let img = heat_image(map, lo, hi);
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("PNG encoding of an RGB8 image into memory cannot fail");
    png
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const REFERENCE: &str = include_str!("../../tests/data/score_map_reference.json");

    #[test]
    fn table_is_the_generated_turbo() {
        let v: serde_json::Value = serde_json::from_str(REFERENCE).unwrap();
        let want: Vec<[u8; 3]> = serde_json::from_value(v["turbo"].clone()).unwrap();
        assert_eq!(want, TURBO);
    }

    #[test]
    fn colormap_runs_blue_to_red_and_clamps() {
        let cold = colormap(0.0);
        let hot = colormap(1.0);
        assert!(cold[2] > cold[0] && cold[2] > cold[1], "{cold:?}");
        assert!(hot[0] > hot[1] + 100 && hot[0] > hot[2] + 100, "{hot:?}");
        assert_eq!(colormap(-3.0), cold);
        assert_eq!(colormap(f32::NAN), cold);
        assert_eq!(colormap(7.0), hot);
        assert_eq!(colormap(0.5), TURBO[8]);
        // Halfway between two knots is their mean.
        assert_eq!(colormap(1.0 / 32.0), [56, 41, 110]);
        // Ordered: from t = 1/16 on, the hue falls steadily from blue (240 degrees) to red (0).
        let hue = |[r, g, b]: [u8; 3]| {
            let (r, g, b) = (f32::from(r), f32::from(g), f32::from(b));
            let h = (3f32.sqrt() * (g - b)).atan2(2.0 * r - g - b).to_degrees();
            if h < -30.0 { h + 360.0 } else { h }
        };
        let hues: Vec<f32> = (16..=256)
            .map(|k| hue(colormap(k as f32 / 256.0)))
            .collect();
        assert!((hues[0] - 240.0).abs() < 2.0 && hues[240] < 3.0, "{hues:?}");
        assert!(hues.windows(2).all(|p| p[1] <= p[0] + 1.0), "{hues:?}");
    }

    #[test]
    fn normalise_clamps_and_steps() {
        assert_eq!(normalise(0.5, 0.0, 2.0), 0.25);
        assert_eq!(normalise(-1.0, 0.0, 2.0), 0.0);
        assert_eq!(normalise(5.0, 0.0, 2.0), 1.0);
        assert_eq!(normalise(f32::NAN, 0.0, 2.0), 0.0);
        assert_eq!(normalise(1.0, 1.0, 1.0), 1.0);
        assert_eq!(normalise(0.9, 1.0, 1.0), 0.0);
    }

    #[test]
    fn overlay_tints_hot_pixels_and_leaves_normal_ones() {
        let img = RgbImage::from_pixel(4, 4, Rgb([100, 100, 100]));
        // Same size: [below lo, mid, at hi, far above].
        let mut m = Map::new(4, 4);
        m.set(0, 0, -1.0);
        m.set(1, 0, 0.5);
        m.set(2, 0, 1.0);
        m.set(3, 0, 9.0);
        let out = overlay(&img, &m, 0.0, 1.0, 0.8);
        assert_eq!(out.dimensions(), (4, 4));
        assert_eq!(out.get_pixel(0, 0), &Rgb([100, 100, 100]));
        assert_eq!(out.get_pixel(0, 3), &Rgb([100, 100, 100]), "a value at lo");
        // t = 0.5: a = 0.4 of colormap(0.5) = (163, 253, 60) over grey 100.
        assert_eq!(out.get_pixel(1, 0), &Rgb([125, 161, 84]));
        // t = 1: a = 0.8 of (122, 4, 3) -> red-ish.
        let hot = out.get_pixel(2, 0).0;
        assert_eq!(hot, [118, 23, 22]);
        assert!(hot[0] > hot[1] + 80 && hot[0] > hot[2] + 80);
        assert_eq!(out.get_pixel(3, 0), out.get_pixel(2, 0));
        assert_eq!(overlay(&img, &m, 0.0, 1.0, 0.0), img);
    }

    #[test]
    fn overlay_resizes_the_map_to_the_image() {
        let img = RgbImage::from_pixel(6, 3, Rgb([10, 200, 30]));
        let m = Map::from_vec(2, 1, vec![0.0, 1.0]).unwrap();
        let out = overlay(&img, &m, 0.0, 1.0, 1.0);
        assert_eq!(out.dimensions(), (6, 3));
        // Left third cold (unchanged), right third hot (full alpha: the hot colour itself).
        assert_eq!(out.get_pixel(0, 1), img.get_pixel(0, 1));
        assert_eq!(out.get_pixel(5, 2).0, colormap(1.0));
    }

    #[test]
    fn heat_png_decodes_to_the_map_size() {
        let m = Map::from_vec(5, 3, (0..15).map(|i| i as f32).collect()).unwrap();
        let png = heat_png(&m, 0.0, 14.0);
        assert_eq!(&png[1..4], b"PNG");
        let back = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8();
        assert_eq!(back.dimensions(), (5, 3));
        assert_eq!(back, heat_image(&m, 0.0, 14.0));
        assert_eq!(back.get_pixel(0, 0).0, colormap(0.0));
        assert_eq!(back.get_pixel(4, 2).0, colormap(1.0));
    }
}

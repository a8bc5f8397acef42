//! Frames marked good on a device (issue 17, item 2) through [`Detector::set_overlay`]: a
//! flagged frame marked good passes afterwards, and so does a near copy of it; a different
//! defect still fails; frames the overlay does not touch score exactly as before; removing the
//! overlay restores every score; scores off the cosine scale refuse an image overlay.

use firm_shared::bundle::Bundle;
use firm_shared::detect::synthetic::{SyntheticSpec, pattern, random_bundle, small_patch_bundle};
use firm_shared::detect::{CpuEmbedder, Detector};
use firm_shared::model::{EncoderConfig, Stem};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: u32 = 128;

fn spec(score: &str) -> SyntheticSpec {
    SyntheticSpec {
        encoder: EncoderConfig::new(Stem::Imagenet, 0.25),
        size: SIZE,
        score: score.parse().unwrap(),
        int8_activations: true,
        bank: 24,
        seed: 11,
    }
}

fn patch_bundle(verdict: bool) -> Bundle {
    small_patch_bundle(11, verdict).unwrap()
}

/// A checkerboard square at `(x, y)`, `side` pixels, cells of `cell` pixels.
fn checker(mut img: RgbImage, x: u32, y: u32, side: u32, cell: u32) -> RgbImage {
    for yy in y..y + side {
        for xx in x..x + side {
            let v = if (xx / cell + yy / cell).is_multiple_of(2) {
                0
            } else {
                255
            };
            img.put_pixel(xx, yy, Rgb([v, v, v]));
        }
    }
    img
}

/// `img` with every channel moved by up to +-3: a near copy (the next part of the same kind, or
/// sensor noise).
fn jitter(img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in &mut p.0 {
            *c = (*c as i32 + rng.random_range(-3..=3)).clamp(0, 255) as u8;
        }
    }
    out
}

/// Mark the last scored image good, as the device does: its views, and its patches above `cut`.
fn mark(det: &mut Detector<CpuEmbedder>, views: &mut Vec<f32>, patch: &mut Vec<f32>, cut: f32) {
    views.extend_from_slice(det.views());
    patch.extend(det.hot_patches(cut));
    det.set_overlay(views, patch).unwrap();
}

#[test]
fn a_marked_frame_passes_and_a_different_defect_still_fails() {
    for verdict in [true, false] {
        let b = patch_bundle(verdict);
        let p = b.manifest.patch.clone().unwrap();
        let (thr, pthr) = (b.manifest.threshold.distance, p.threshold as f64);
        let mut det = Detector::cpu(&b).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let good: Vec<RgbImage> = (0..6).map(|_| pattern(SIZE, SIZE, &mut rng)).collect();
        let a = checker(good[0].clone(), 40, 40, 24, 4);
        let b_defect = checker(good[1].clone(), 80, 8, 28, 7);
        let before: Vec<_> = good
            .iter()
            .chain([&a, &b_defect])
            .map(|i| det.score_image(i).unwrap())
            .collect();
        // The defects are flagged by the patch score (a random network's pooled feature barely
        // sees them: the image distance is not asserted).
        for s in &before[6..] {
            assert!(s.patch.unwrap() > pthr, "{s:?} patch thr {pthr}");
        }
        let sa = det.score_image(&a).unwrap();
        let (mut views, mut patch) = (Vec::new(), Vec::new());
        // Cut at the colour scale's low end, the median good image's patch score: afterwards the
        // marked frame looks no less normal than a typical good part.
        let cut = p.low;
        assert!((cut as f64) < pthr);
        mark(&mut det, &mut views, &mut patch, cut);
        let rows = patch.len() / p.dim;
        let cells = det.map().map(|_| (SIZE / 8) * (SIZE / 8)).unwrap() as usize;
        assert!(
            rows > 0 && rows < cells * 3 / 4,
            "{rows} of {cells} patches taken for a 24 px defect"
        );
        assert_eq!(det.overlay_len(), 1);

        // The marked frame: its image score is the overlay's (cosine 1), its map at most the cut.
        let now = det.score_image(&a).unwrap();
        assert_eq!(now.overlay, Some(0), "{now:?}");
        assert!(now.distance < 1e-4 || verdict, "{now:?}");
        assert!(now.patch.unwrap() <= cut as f64 + 1e-4, "{now:?} vs {cut}");
        assert!(
            now.distance < if verdict { pthr } else { thr },
            "marked frame still flagged: {now:?} (was {sa:?})"
        );
        // A near copy passes too.
        for _ in 0..3 {
            let s = det.score_image(&jitter(&a, &mut rng)).unwrap();
            let t = if verdict { pthr } else { thr };
            assert!(s.distance < t, "near copy flagged: {s:?} vs {t}");
        }
        // A different defect on another part still fails, by the patch score.
        let sb = det.score_image(&b_defect).unwrap();
        assert!(
            sb.patch.unwrap() > pthr,
            "the other defect passes after the mark: {sb:?} (before {:?})",
            before[7]
        );
        if verdict {
            assert!(sb.distance > pthr, "{sb:?}");
        }
        // Removing the overlay gives every score back.
        det.set_overlay(&[], &[]).unwrap();
        assert_eq!(det.overlay_len(), 0);
        for (img, was) in good.iter().chain([&a, &b_defect]).zip(&before) {
            assert_eq!(det.score_image(img).unwrap(), *was);
        }
    }
}

#[test]
fn overlay_input_is_checked_and_kde_refuses_it() {
    let b = random_bundle(&spec("kde")).unwrap();
    let mut det = Detector::cpu(&b).unwrap();
    let img = pattern(SIZE, SIZE, &mut ChaCha8Rng::seed_from_u64(1));
    det.score_image(&img).unwrap();
    let views = det.views().to_vec();
    let e = det.set_overlay(&views, &[]).unwrap_err().to_string();
    assert!(e.contains("kde"), "{e}");
    let e = det.set_overlay(&views[1..], &[]).unwrap_err().to_string();
    assert!(e.contains("whole entries"), "{e}");
    let e = det.set_overlay(&[], &[1.0; 8]).unwrap_err().to_string();
    assert!(e.contains("does not score patches"), "{e}");

    // cos_3: the image score is the better of the bank's mean of 3 and the nearest entry.
    let b = random_bundle(&spec("cos_3")).unwrap();
    let mut det = Detector::cpu(&b).unwrap();
    let s0 = det.score_image(&img).unwrap();
    let views = det.views().to_vec();
    det.set_overlay(&views, &[]).unwrap();
    let s1 = det.score_image(&img).unwrap();
    assert!(s1.distance < 1e-4 && s0.distance > 1e-3, "{s0:?} -> {s1:?}");
    assert_eq!(
        s1.nearest, s0.nearest,
        "the evidence stays the bank's nearest"
    );
}

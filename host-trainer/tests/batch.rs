//! Batch layouts of the reference, determinism across thread counts, and the background loader.

use std::collections::BTreeMap;
use std::sync::Arc;

use SampleLabel::{Id, Outlier};
use firm_shared::preprocess::Normalization;
use host_trainer::batch::{BatchConfig, Loader, Sampler};
use host_trainer::data::images::ImageCache;
use host_trainer::loss::{LossKind, SampleLabel};
use host_trainer::outliers::OutlierSpec;
use host_trainer::outliers::oe::OeSet;
use image::{Rgb, RgbImage};

fn images(n: usize, side: u32) -> Arc<ImageCache> {
    let images = (0..n)
        .map(|i| {
            Arc::new(RgbImage::from_fn(side, side, |x, y| {
                Rgb([
                    (x * 5 + i as u32 * 17) as u8,
                    (y * 7) as u8,
                    ((x ^ y) * 3) as u8,
                ])
            }))
        })
        .collect();
    Arc::new(ImageCache {
        images,
        paths: vec![Default::default(); n],
    })
}

fn cfg(batch: usize, seed: u64) -> BatchConfig {
    BatchConfig {
        size: 16,
        batch,
        seed,
        normalization: Normalization::default(),
        keep_images: false,
        augment: host_trainer::augment::Augmentation::Simclr,
    }
}

fn sampler(n: usize, outliers: &str, batch: usize, seed: u64) -> Sampler {
    let spec: OutlierSpec = outliers.parse().unwrap();
    let oe = spec.oe.as_ref().map(|_| {
        Arc::new(OeSet::from_images(vec![
            RgbImage::from_pixel(
                20,
                20,
                Rgb([250, 0, 0])
            );
            3
        ]))
    });
    Sampler::new(images(n, 40), spec, oe, cfg(batch, seed)).unwrap()
}

#[test]
fn mvtec_groups_are_id_block_first() {
    let s = sampler(10, "cutpaste,scar", 4, 0);
    assert_eq!(
        s.batches_per_epoch(),
        2,
        "10 images / batch 4, last partial batch dropped"
    );
    let b = s.batch(0, 0).unwrap();
    assert_eq!(b.samples(), 12);
    let want: Vec<SampleLabel> =
        [vec![Id(0); 4], vec![Outlier(1); 4], vec![Outlier(2); 4]].concat();
    assert_eq!(b.labels, want);
    assert_eq!(b.kinds[4], "cutpaste");
    assert_eq!(b.kinds[8], "scar");
    assert_eq!(b.x.len(), 2 * 12 * 3 * 16 * 16, "two views of every sample");
    // The losses accept the batch as laid out.
    let z = candle_core::Tensor::randn(0f32, 1.0, (24, 8), &candle_core::Device::Cpu).unwrap();
    let z = firm_shared::model::l2_normalize_rows(&z).unwrap();
    for k in LossKind::ALL {
        let l: f32 = k.loss(&z, &b.labels, 0.2).unwrap().to_scalar().unwrap();
        assert!(l.is_finite());
    }
}

#[test]
fn rotation_pool_is_one_to_three() {
    let s = sampler(6, "rotation", 8, 3);
    assert_eq!(s.batches_per_epoch(), 3, "24 pool entries / 8");
    let mut counts = BTreeMap::new();
    for i in 0..3 {
        for l in s.batch(0, i).unwrap().labels {
            *counts.entry(l.shift_label()).or_insert(0) += 1;
        }
    }
    assert_eq!(counts, BTreeMap::from([(0, 6), (1, 6), (2, 6), (3, 6)]));
    // Shuffled: a batch is not one rotation.
    let first = s.batch(0, 0).unwrap().labels;
    assert!(first.iter().any(|l| *l != first[0]));
}

#[test]
fn outlier_exposure_replaces_outlier_slots() {
    let s = sampler(5, "oe:unused", 5, 0);
    let b = s.batch(0, 0).unwrap();
    assert_eq!(b.labels, [vec![Id(0); 5], vec![Outlier(1); 5]].concat());
    assert!(b.kinds[5..].iter().all(|k| k == "oe"));
    let s = sampler(5, "cutpaste,scar,oe:unused", 5, 0);
    let b = s.batch(0, 0).unwrap();
    assert_eq!(b.kinds[5], "oe (cutpaste slot)");
    assert_eq!(b.kinds[10], "oe (scar slot)");
    // The OE images are saturated red: the outlier views are far redder than the ID views.
    let red = |sample: usize| -> f32 {
        let plane = 16 * 16;
        b.x[sample * 3 * plane..sample * 3 * plane + plane]
            .iter()
            .sum::<f32>()
            / plane as f32
    };
    assert!(red(5) > red(0) + 0.5, "OE slot {} vs ID {}", red(5), red(0));
    let s = sampler(4, "rotation,oe:unused", 16, 0);
    let b = s.batch(0, 0).unwrap();
    assert!(b.kinds.iter().filter(|k| k.starts_with("oe (rot")).count() == 12);
}

#[test]
fn deterministic_on_any_number_of_threads() {
    let s = sampler(8, "cutpaste,scar", 4, 42);
    let a = s.batch(1, 1).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = pool.install(|| s.batch(1, 1).unwrap());
    assert_eq!(a.x, b.x);
    assert_eq!(a.labels, b.labels);
    assert_ne!(a.x, s.batch(2, 1).unwrap().x, "epochs differ");
    assert_ne!(
        a.x,
        sampler(8, "cutpaste,scar", 4, 43).batch(1, 1).unwrap().x,
        "seeds differ"
    );
    // The two views of a sample are different augmentations.
    let per = 12 * 3 * 16 * 16;
    assert_ne!(a.x[..3 * 256], a.x[per..per + 3 * 256]);
}

#[test]
fn loader_yields_the_sampler_batches_in_order_and_stops() {
    let s = Arc::new(sampler(6, "cutpaste", 3, 5));
    let direct: Vec<Vec<f32>> = (0..2)
        .flat_map(|e| (0..2).map(move |i| (e, i)))
        .map(|(e, i)| s.batch(e, i).unwrap().x)
        .collect();
    let got: Vec<(usize, usize, Vec<f32>)> = Loader::spawn(s.clone(), 0, 0, Some(2), 2)
        .map(|b| {
            let b = b.unwrap();
            (b.epoch, b.index, b.x)
        })
        .collect();
    assert_eq!(got.len(), 4, "2 epochs x 2 batches");
    assert_eq!(
        got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    );
    for (g, d) in got.iter().zip(&direct) {
        assert_eq!(&g.2, d);
    }
    // Resuming mid-epoch continues where it stopped.
    let mut resumed = Loader::spawn(s.clone(), 1, 1, Some(1), 1);
    assert_eq!(resumed.next().unwrap().unwrap().x, direct[3]);
    assert!(resumed.next().is_none());
    // Dropping a loader that still has work does not hang.
    let mut endless = Loader::spawn(s, 0, 0, None, 1);
    endless.next().unwrap().unwrap();
    drop(endless);
}

#[test]
fn preview_images_match_the_tensor() {
    let spec: OutlierSpec = "scar".parse().unwrap();
    let mut c = cfg(2, 0);
    c.keep_images = true;
    let s = Sampler::new(images(2, 40), spec, None, c).unwrap();
    let b = s.batch(0, 0).unwrap();
    let imgs = b.images.as_ref().unwrap();
    assert_eq!(imgs.len(), 2 * b.samples());
    // Normalising the kept 8-bit image reproduces the tensor within 8-bit rounding.
    let n = Normalization::default();
    let v = firm_shared::preprocess::normalize_chw(&imgs[0], &n);
    for (a, b) in v.iter().zip(&b.x[..v.len()]) {
        assert!((a - b).abs() < 0.5 / 255.0 / 0.224 + 1e-5, "{a} vs {b}");
    }
}

#[test]
fn augmentation_kinds_differ_in_how_far_the_views_move() {
    use host_trainer::augment::Augmentation;
    let with = |kind: Augmentation| {
        let spec: OutlierSpec = "cutpaste,scar".parse().unwrap();
        let s = Sampler::new(
            images(8, 40),
            spec,
            None,
            BatchConfig {
                augment: kind,
                ..cfg(4, 7)
            },
        )
        .unwrap();
        let b = s.batch(0, 0).unwrap();
        // Mean absolute difference between view 1 and view 2 over all samples.
        let half = b.x.len() / 2;
        let d: f64 = b.x[..half]
            .iter()
            .zip(&b.x[half..])
            .map(|(a, c)| (a - c).abs() as f64)
            .sum::<f64>()
            / half as f64;
        d
    };
    let none = with(Augmentation::None);
    let light = with(Augmentation::Light);
    let simclr = with(Augmentation::Simclr);
    assert_eq!(
        none, 0.0,
        "without augmentation both views are the test transform"
    );
    assert!(
        light > 0.0 && light < simclr,
        "light {light} vs simclr {simclr}"
    );
}

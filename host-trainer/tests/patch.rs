//! Heat maps point at defects (issue 17: "on generated data with known defect masks, the map's
//! hottest region overlaps the mask"): `host_trainer::patch::evaluate` on generated MVTec-layout
//! data (`data::synth`, bottle and weave at 128 px) with a seeded random ResNet-18 (ImageNet stem,
//! width 0.5, no training), its maps compared with the generated masks.
//!
//! The hottest region is what the device reports (`device-runtime` `Scorer::heat`): the box of the
//! region around the map's maximum above halfway from the threshold to it, or a box of radius
//! `w / 16` around the maximum when the maximum is below the threshold. The threshold here is the
//! largest maximum of the good test images (what a calibrated threshold approximates). As a control
//! every mask is also rolled by half the image in both axes (the defect moved to where it is not):
//! overlap and pixel AUROC must drop well below the real ones, so a map that is hot everywhere, or a
//! box that covers the image, cannot pass.
//!
//! A random network localises only some defects, and the bars below are set from what it does:
//! measured with this file's settings for data-and-network seeds 0 to 5 (seed 0 is the one the
//! test runs; `cargo test -p host-trainer --test patch -- --nocapture`, debug build with optimised
//! dependencies, 3.6-4.2 s on a 2-core AMD EPYC VM shared with other builds):
//!
//! | seeds 0..5 | overlap, all defects | rolled | conspicuous kind | pixel AUROC | rolled |
//! |---|---|---|---|---|---|
//! | bottle | 0.33-0.67 (seed 0: 12/18) | 0-1/18 | broken_large 2-6/6 | 0.896-0.969 | 0.31-0.44 |
//! | weave  | 0.20-0.47 (seed 0: 6/30) | 1-3/30 | hole 5-6/6 | 0.686-0.776 | 0.46-0.52 |
//!
//! So the brief's "clear majority" holds for the conspicuous kinds (seed 0: 12/12) but not over
//! every defect: the bars on all defects are loose floors, and what makes them mean something is
//! the control (reversing the map vertically, an orientation bug, drops seed 0 to bottle 3/18,
//! weave 4/30, pixel AUROC 0.68 / 0.61: the test fails).
//!
//! Large, high-contrast defects (bottle `broken_large`, weave `hole`) are found nearly always;
//! small or low-contrast ones (bottle `broken_small`, weave `cut`, `misweave`, `color`) mostly not:
//! good images' pose, tint and lighting variation is as unusual to random features as they are.
//! The `grid` class is left out: with a random network its maps are hottest at the image border
//! and in lighting gradients (8-10 of the 10 good images have their maximum within 8 px of the
//! border): seeds 0-2 give overlap 0/24 and pixel AUROC 0.52-0.54, no better than its rolled
//! control (0.54-0.58).
//!
//! Taps: `PatchSpec::for_graph`'s ResNet default (`layer2` + `layer3`, the grid of `layer2`) is
//! chosen for trained or pretrained encoders. With this random network it localises worse: on
//! bottle the overlap was 0.00-0.33 and pixel AUROC 0.68-0.88 (seeds 0-2), and `layer3` alone
//! was the worst tap tried, `layer1` and `layer2` the best. The test keeps the default's
//! neighbourhood, smoothing and bank size and uses `layer2` + `layer1` (the stride-8 grid with
//! the stride-4 map's features brought to it, the shape of the EfficientNet default), which still
//! takes the path where a second tap is resampled to the first tap's grid.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::config::Stem;
use firm_shared::model::graph::candle::CandleGraph;
use firm_shared::model::{Encoder, EncoderConfig, params};
use firm_shared::score::map::Map;
use firm_shared::score::patch::PatchSpec;
use firm_shared::score::pixel::{self, PixelCase};
use host_trainer::data::images::LoadOptions;
use host_trainer::data::mvtec;
use host_trainer::data::synth::{self, SynthClass, SynthSpec};
use host_trainer::eval::EvalImages;

/// Seed of the generated data, the network and the coreset.
const SEED: u64 = 0;
/// Image side of the generated data and of the model input (a 16 x 16 patch grid).
const SIZE: u32 = 128;
const WIDTH: f32 = 0.5;
const N_TRAIN: usize = 30;
const N_TEST_GOOD: usize = 10;
/// Test images per defect type: 18 defective bottles, 30 defective weaves.
const PER_DEFECT: usize = 6;

/// How one class's maps meet its masks.
#[derive(Debug, Default)]
struct Localisation {
    /// Defective test images whose mask survives the centre crop.
    n: usize,
    /// ... whose hottest region overlaps the mask, and the rolled mask.
    hits: usize,
    rolled_hits: usize,
    /// Per defect type: (hits, rolled hits, images).
    per_kind: BTreeMap<String, (usize, usize, usize)>,
    pixel_auroc: f64,
    rolled_pixel_auroc: f64,
}

impl Localisation {
    fn rate(&self) -> f64 {
        self.hits as f64 / self.n as f64
    }

    fn rolled_rate(&self) -> f64 {
        self.rolled_hits as f64 / self.n as f64
    }
}

/// The float graph of a freshly initialised encoder, built as the trainer builds its model.
fn random_encoder(enc: &EncoderConfig, seed: u64) -> CandleGraph {
    let vm = VarMap::new();
    Encoder::new(enc, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    params::init_params(&vm, seed).unwrap();
    host_trainer::patch::float_graph(&enc.graph(), |name| {
        let v = params::find(&vm, name).unwrap_or_else(|| panic!("no parameter `{name}`"));
        Ok(v.as_tensor().flatten_all()?.to_vec1()?)
    })
    .unwrap()
}

/// The device's hottest region (`Scorer::heat` calls the same [`Map::hottest_region`]).
fn hottest_region(map: &Map, threshold: f32) -> (usize, usize, usize, usize) {
    map.hottest_region(threshold, &mut Default::default())
}

fn overlaps((x0, y0, x1, y1): (usize, usize, usize, usize), mask: &[bool], w: usize) -> bool {
    (y0..y1).any(|y| (x0..x1).any(|x| mask[y * w + x]))
}

/// The mask moved by half the image in both axes (wrapping round).
fn rolled(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            out[((y + h / 2) % h) * w + (x + w / 2) % w] = mask[y * w + x];
        }
    }
    out
}

fn localise(
    root: &Path,
    class: SynthClass,
    model: &CandleGraph,
    enc: &EncoderConfig,
    spec: &PatchSpec,
) -> Localisation {
    let ds = mvtec::open(root, class.name()).unwrap();
    let imgs = EvalImages::load(&ds, SIZE, LoadOptions::default()).unwrap();
    assert_eq!(imgs.train.len(), N_TRAIN);
    let (r, pm) =
        host_trainer::patch::evaluate(model, spec, &enc.normalization(), &imgs, &ds, SEED).unwrap();
    assert_eq!(
        r.n_masks,
        imgs.n_bad(),
        "{}: every generated defect has a mask",
        class.name()
    );
    let threshold = pm
        .maps
        .iter()
        .zip(&imgs.defect)
        .filter(|(_, d)| d.is_none())
        .map(|(m, _)| m.max().0)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut out = Localisation::default();
    // The pixel metrics' cases: good images (no mask) and defective ones with a visible mask,
    // with the mask rolled.
    let mut moved: Vec<(usize, Option<Vec<bool>>)> = Vec::new();
    for (i, (map, mask)) in pm.maps.iter().zip(&pm.masks).enumerate() {
        assert_eq!((map.w, map.h), (SIZE as usize, SIZE as usize));
        let Some(mask) = mask else {
            moved.push((i, None));
            continue;
        };
        if !mask.iter().any(|&b| b) {
            continue; // the defect lies outside the centre crop
        }
        let other = rolled(mask, map.w, map.h);
        let b = hottest_region(map, threshold);
        let (hit, rolled_hit) = (overlaps(b, mask, map.w), overlaps(b, &other, map.w));
        out.n += 1;
        out.hits += usize::from(hit);
        out.rolled_hits += usize::from(rolled_hit);
        let k = out
            .per_kind
            .entry(imgs.defect[i].clone().unwrap())
            .or_default();
        k.0 += usize::from(hit);
        k.1 += usize::from(rolled_hit);
        k.2 += 1;
        moved.push((i, Some(other)));
    }
    let cases = |rolled: bool| -> Vec<PixelCase> {
        moved
            .iter()
            .map(|(i, m)| PixelCase {
                map: &pm.maps[*i].data,
                mask: if rolled {
                    m.as_deref()
                } else {
                    pm.masks[*i].as_deref()
                },
                w: pm.maps[*i].w,
                h: pm.maps[*i].h,
            })
            .collect()
    };
    out.pixel_auroc = pixel::pixel_auroc(&cases(false)).unwrap();
    out.rolled_pixel_auroc = pixel::pixel_auroc(&cases(true)).unwrap();
    // The same cases as evaluate's whenever every mask survives the crop (it does here).
    if out.n == r.n_masks {
        assert_eq!(Some(out.pixel_auroc), r.pixel_auroc, "{}", class.name());
    }
    println!(
        "{}: hottest region overlaps the mask {}/{} ({:.2}), rolled mask {}/{}; pixel AUROC {:.3}, \
         rolled {:.3}; per kind (hits, rolled, images) {:?}",
        class.name(),
        out.hits,
        out.n,
        out.rate(),
        out.rolled_hits,
        out.n,
        out.pixel_auroc,
        out.rolled_pixel_auroc,
        out.per_kind
    );
    out
}

#[test]
fn hottest_region_overlaps_the_defect_mask() {
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let classes = [SynthClass::Bottle, SynthClass::Weave];
    synth::write_dataset(
        tmp.path(),
        &SynthSpec {
            classes: classes.to_vec(),
            seed: SEED,
            size: SIZE,
            n_train: N_TRAIN,
            n_test_good: N_TEST_GOOD,
            n_test_per_defect: PER_DEFECT,
        },
    )
    .unwrap();
    let enc = EncoderConfig::new(Stem::Imagenet, WIDTH);
    let model = random_encoder(&enc, SEED);
    let mut spec = PatchSpec::for_graph(&enc.graph()).unwrap();
    spec.taps = vec!["layer2".into(), "layer1".into()];

    let results: Vec<(SynthClass, Localisation)> = classes
        .iter()
        .map(|&c| (c, localise(tmp.path(), c, &model, &enc, &spec)))
        .collect();
    println!("{:.1} s", t0.elapsed().as_secs_f64());

    // (class, conspicuous kind, least overlap rate over all defects, least pixel AUROC): bars
    // below the least of seeds 0..5 (see the header).
    let bars = [
        (SynthClass::Bottle, "broken_large", 0.25, 0.85),
        (SynthClass::Weave, "hole", 0.15, 0.65),
    ];
    let (mut big, mut big_rolled, mut big_n) = (0, 0, 0);
    let (mut all, mut all_rolled) = (0, 0);
    for ((class, l), (bar_class, kind, min_rate, min_auroc)) in results.iter().zip(bars) {
        let name = class.name();
        assert_eq!(*class, bar_class);
        assert!(
            l.n * 10 >= PER_DEFECT * class.defects().len() * 8,
            "{name}: only {} defects visible in the centre crop",
            l.n
        );
        assert!(
            l.rate() >= min_rate,
            "{name}: the hottest region overlaps the mask for {}/{} defects; at least {min_rate}",
            l.hits,
            l.n
        );
        // Control: the same boxes against masks moved elsewhere hit far less often.
        assert!(
            l.rolled_hits < l.hits && l.rolled_rate() <= 0.15,
            "{name}: the hottest region overlaps the rolled masks {}/{} times (real masks {})",
            l.rolled_hits,
            l.n,
            l.hits
        );
        assert!(
            l.pixel_auroc >= min_auroc,
            "{name}: pixel AUROC {:.3}; at least {min_auroc}",
            l.pixel_auroc
        );
        assert!(
            l.rolled_pixel_auroc <= 0.6 && l.rolled_pixel_auroc <= l.pixel_auroc - 0.15,
            "{name}: pixel AUROC against rolled masks {:.3} (real masks {:.3})",
            l.rolled_pixel_auroc,
            l.pixel_auroc
        );
        all += l.hits;
        all_rolled += l.rolled_hits;
        let &(hits, rolled_hits, n) = l.per_kind.get(kind).unwrap();
        big += hits;
        big_rolled += rolled_hits;
        big_n += n;
    }
    // Over both classes, the rolled masks are hit at most a third as often as the real ones
    // (seeds 0..5: 1-4 against 16-22 of 48).
    assert!(
        3 * all_rolled <= all,
        "hottest region overlaps {all_rolled} rolled masks against {all} real ones"
    );
    // The conspicuous defects: a majority found (seeds 0..5: 7-12 of 12, seed 0 all 12), hardly
    // any rolled mask hit (0-1 of 12).
    assert!(
        2 * big > big_n,
        "hottest region overlaps {big}/{big_n} large defects (bottle broken_large, weave hole)"
    );
    assert!(
        4 * big_rolled <= big_n,
        "hottest region overlaps {big_rolled}/{big_n} rolled masks of large defects"
    );
}

//! Training-batch loader throughput: images (augmented views) per second at 64, 128 and 256 px,
//! the loader alone (no model), on MVTec-AD bottle when ../shared/data/mvtec/bottle exists, else
//! on generated demo data.
//!
//! ```text
//! cargo bench -p host-trainer --bench loader
//! cargo bench -p host-trainer --bench loader -- --outliers nsa --batches 4 --sizes 128
//! ```
//!
//! Layout: MVTec groups [ID | CutPaste | Scar], `--batch` good images per step (32 by default, so
//! 96 samples and 192 view images per batch). Compare the rate with what a training step consumes
//! (`cargo bench --bench resnet18`): the loader keeps ahead when its images/s exceeds the step's.

// The same allocator as the host-trainer binary, so the figures match what `fit` sees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use firm_shared::preprocess::Normalization;
use host_trainer::batch::{BatchConfig, Loader, Sampler};
use host_trainer::data::images::{ImageCache, LoadOptions};
use host_trainer::data::{DataArgs, DataSource};
use host_trainer::outliers::OutlierSpec;

fn main() {
    // The same process settings as the binaries (see firm_shared::process).
    firm_shared::process::tune();
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let outliers: OutlierSpec = get("--outliers")
        .unwrap_or_else(|| "cutpaste,scar".into())
        .parse()
        .expect("--outliers");
    let batches: usize = get("--batches").map_or(6, |v| v.parse().expect("--batches"));
    let batch: usize = get("--batch").map_or(32, |v| v.parse().expect("--batch"));
    let sizes: Vec<u32> = get("--sizes").map_or(vec![64, 128, 256], |v| {
        v.split(',').map(|s| s.parse().expect("--sizes")).collect()
    });

    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bottle_root = manifest.join("../../shared/data/mvtec");
    let tmp = tempfile::tempdir().expect("temp dir");
    let source = if bottle_root.join("bottle/train/good").is_dir() {
        DataSource::Mvtec {
            root: bottle_root,
            class: "bottle".into(),
        }
    } else {
        println!("# ../shared/data/mvtec/bottle not found: using generated demo data");
        DataArgs {
            demo: true,
            class: Some("bottle".into()),
            ..DataArgs::default()
        }
        .resolve(tmp.path(), 0)
        .expect("demo")
    };
    let ds = source.open(tmp.path()).expect("dataset");
    println!(
        "# loader: {} ({} training images), outliers {outliers}, batch {batch} good images, {} threads",
        ds.origin,
        ds.train.len(),
        rayon::current_num_threads()
    );
    println!(
        "{:>5} {:>12} {:>14} {:>14} {:>12}",
        "size", "cache_load_s", "samples/batch", "ms/batch", "images/s"
    );
    for &size in &sizes {
        let t = Instant::now();
        let cache = ImageCache::load(
            &ds.train,
            &ds.unsupported,
            2 * size,
            LoadOptions::default(),
            2,
            &ds.train_dir,
        )
        .expect("decode");
        let load_s = t.elapsed().as_secs_f64();
        let sampler = Arc::new(
            Sampler::new(
                Arc::new(cache),
                outliers.clone(),
                None,
                BatchConfig {
                    size,
                    batch,
                    seed: 0,
                    normalization: Normalization::default(),
                    keep_images: false,
                    augment: host_trainer::augment::Augmentation::Simclr,
                },
            )
            .expect("sampler"),
        );
        let samples = sampler.samples_per_batch();
        let mut loader = Loader::spawn(sampler, 0, 0, None, 2);
        loader.next().expect("first batch").expect("batch"); // warm-up
        let t = Instant::now();
        for _ in 0..batches {
            loader.next().expect("batch").expect("batch");
        }
        let s = t.elapsed().as_secs_f64();
        let images = (batches * 2 * samples) as f64;
        println!(
            "{size:>5} {load_s:>12.2} {samples:>14} {:>14.1} {:>12.1}",
            s * 1e3 / batches as f64,
            images / s
        );
    }
}

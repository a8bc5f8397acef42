//! The one-class protocol on a labelled dataset: one class is normal and trained on; the test set
//! is scored with every other class as the anomaly. A split is written once as an MVTec-AD
//! layout of PNG files (ROOT/CLASS/train/good, ROOT/CLASS/test/good, ROOT/CLASS/test/<other
//! class>), so training, evaluation, resume and export read it like any other dataset, and the
//! images a result came from can be looked at.
//!
//! Subsets are seeded and stratified: the training subset is a random sample of the normal
//! class's training images; the test subset takes from each class its share of the test set
//! (largest remainders get the leftover images), so the anomaly mix stays the dataset's.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use tracing::info;

use super::labelled::{LabelledSet, Splits};
use crate::error::{Error, Result};

/// Which split to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneClassSpec {
    /// Index of the normal class.
    pub class: usize,
    /// Training images of the normal class to keep (`None`: all).
    pub train_subset: Option<usize>,
    /// Test images to keep, stratified over classes (`None`: all).
    pub test_subset: Option<usize>,
    pub seed: u64,
}

/// Bumped when the written layout changes, so old splits are rewritten.
const LAYOUT_VERSION: u32 = 1;
const MARKER: &str = ".oneclass-complete";

/// Indices of a seeded sample of `n` of the `indices` (all of them, shuffled, when `n` is larger),
/// returned in increasing order.
fn sample(indices: &[usize], n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<usize> {
    let mut v = indices.to_vec();
    v.shuffle(rng);
    v.truncate(n);
    v.sort_unstable();
    v
}

/// A seeded sample of `n` indices of `labels`, stratified: class `c` gets `n * count(c) / total`
/// images, rounded by largest remainder (ties to the lower class index). Sorted.
pub fn stratified_subset(labels: &[u16], n: usize, seed: u64) -> Vec<usize> {
    let n = n.min(labels.len());
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let total = labels.len() as f64;
    let exact: Vec<f64> = by_class
        .iter()
        .map(|v| n as f64 * v.len() as f64 / total)
        .collect();
    let mut take: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..classes).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let mut left = n - take.iter().sum::<usize>();
    for &c in order.iter().cycle() {
        if left == 0 {
            break;
        }
        if take[c] < by_class[c].len() {
            take[c] += 1;
            left -= 1;
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out: Vec<usize> = by_class
        .iter()
        .zip(&take)
        .flat_map(|(idx, &k)| sample(idx, k, &mut rng))
        .collect();
    out.sort_unstable();
    out
}

/// Write `spec`'s split of `splits` under `root` (reused when an identical split is already
/// there) and return the class folder name, the `CLASS` of `root/CLASS`.
///
/// The split is written into a temporary folder and renamed into place, so an interrupted write
/// never leaves a half split that looks complete.
pub fn materialize(splits: &Splits, spec: &OneClassSpec, root: &Path) -> Result<String> {
    let names = &splits.train.class_names;
    let name = names.get(spec.class).cloned().ok_or_else(|| {
        Error::invalid(
            "--classes",
            format!(
                "class {} does not exist; the dataset has {} classes (0..{}): {}",
                spec.class,
                names.len(),
                names.len().saturating_sub(1),
                names.join(", ")
            ),
        )
    })?;
    let dir = root.join(&name);
    let stamp = format!(
        "layout {LAYOUT_VERSION} {spec:?} train {} test {}",
        splits.train.images.len(),
        splits.test.images.len()
    );
    if std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|s| s == stamp) {
        return Ok(name);
    }
    let train_idx: Vec<usize> = {
        let of_class: Vec<usize> = (0..splits.train.labels.len())
            .filter(|&i| splits.train.labels[i] as usize == spec.class)
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed);
        match spec.train_subset {
            Some(n) => sample(&of_class, n, &mut rng),
            None => of_class,
        }
    };
    if train_idx.len() < 2 {
        return Err(Error::invalid(
            "--train-subset",
            format!(
                "class {} ({name}) has {} training image(s); at least 2 are needed",
                spec.class,
                train_idx.len()
            ),
        ));
    }
    let test_idx = match spec.test_subset {
        Some(n) => stratified_subset(&splits.test.labels, n, spec.seed ^ 0x7e57),
        None => (0..splits.test.labels.len()).collect(),
    };
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    write_images(&splits.train, &train_idx, &tmp.join("train/good"), |_| true)?;
    for (c, other) in names.iter().enumerate() {
        let folder = if c == spec.class { "good" } else { other };
        write_images(
            &splits.test,
            &test_idx,
            &tmp.join("test").join(folder),
            |l| l == c,
        )?;
    }
    std::fs::write(tmp.join(MARKER), &stamp).map_err(Error::io("write", tmp.join(MARKER)))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(Error::io("replace", &dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(Error::io("rename into place", &dir))?;
    info!(
        "one-class split written to {}: {} training images of `{name}`, {} test images",
        dir.display(),
        train_idx.len(),
        test_idx.len()
    );
    Ok(name)
}

/// Write the images `idx` of `set` whose label passes `keep` as DIR/<index>.png (the index in the
/// source split, so a file can be traced back).
fn write_images(
    set: &LabelledSet,
    idx: &[usize],
    dir: &Path,
    keep: impl Fn(usize) -> bool,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    for &i in idx.iter().filter(|&&i| keep(set.labels[i] as usize)) {
        let path: PathBuf = dir.join(format!("{i:05}.png"));
        set.images[i].save(&path).map_err(|e| Error::BadImage {
            path: path.clone(),
            reason: format!("cannot write: {e}"),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, GrayImage, Luma};

    fn set(labels: &[u16], classes: usize) -> LabelledSet {
        LabelledSet {
            images: labels
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    DynamicImage::ImageLuma8(GrayImage::from_pixel(4, 4, Luma([i as u8])))
                })
                .collect(),
            labels: labels.to_vec(),
            class_names: (0..classes).map(|c| format!("c{c}")).collect(),
        }
    }

    #[test]
    fn stratified_subsets_keep_class_shares_and_depend_on_the_seed() {
        // 60 of class 0, 30 of class 1, 10 of class 2.
        let labels: Vec<u16> = (0..100)
            .map(|i| {
                if i < 60 {
                    0
                } else if i < 90 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let s = stratified_subset(&labels, 20, 1);
        let count = |c: u16| s.iter().filter(|&&i| labels[i] == c).count();
        assert_eq!((count(0), count(1), count(2)), (12, 6, 2));
        assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        assert_eq!(s, stratified_subset(&labels, 20, 1));
        assert_ne!(s, stratified_subset(&labels, 20, 2));
        // Remainders: 7 of (60, 30, 10) -> 4.2, 2.1, 0.7 -> 4, 2, 1.
        let s = stratified_subset(&labels, 7, 0);
        let count = |c: u16| s.iter().filter(|&&i| labels[i] == c).count();
        assert_eq!((count(0), count(1), count(2)), (4, 2, 1));
        assert_eq!(stratified_subset(&labels, 1000, 0).len(), 100);
    }

    #[test]
    fn a_split_is_an_mvtec_layout_with_the_other_classes_as_defects() {
        let tmp = tempfile::tempdir().unwrap();
        let splits = Splits {
            train: set(&[0, 1, 1, 2, 1, 1, 0], 3),
            test: set(&[0, 1, 2, 2, 1, 0], 3),
        };
        let spec = OneClassSpec {
            class: 1,
            train_subset: Some(3),
            test_subset: None,
            seed: 5,
        };
        let name = materialize(&splits, &spec, tmp.path()).unwrap();
        assert_eq!(name, "c1");
        let ds = crate::data::mvtec::open(tmp.path(), "c1").unwrap();
        assert_eq!(ds.train.len(), 3);
        assert_eq!(ds.test_good(), 2);
        assert_eq!(
            ds.defect_types(),
            vec![("c0".to_string(), 2), ("c2".to_string(), 2)]
        );
        // Files keep their index in the source split; the pixels are that image's.
        let f = tmp.path().join("c1/test/c2/00003.png");
        assert_eq!(image::open(&f).unwrap().to_luma8().get_pixel(0, 0)[0], 3);
        // Written once: a second call with the same spec leaves the files alone.
        let t0 = std::fs::metadata(&f).unwrap().modified().unwrap();
        materialize(&splits, &spec, tmp.path()).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), t0);
        // A different spec rewrites it.
        let spec2 = OneClassSpec {
            train_subset: Some(2),
            ..spec.clone()
        };
        materialize(&splits, &spec2, tmp.path()).unwrap();
        let ds = crate::data::mvtec::open(tmp.path(), "c1").unwrap();
        assert_eq!(ds.train.len(), 2);
        let e = materialize(
            &splits,
            &OneClassSpec {
                class: 7,
                ..spec.clone()
            },
            tmp.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("class 7") && e.contains("c0, c1, c2"), "{e}");
    }
}

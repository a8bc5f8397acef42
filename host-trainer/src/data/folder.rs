//! Plain folders (anomalib's `Folder` convention): a folder of good images, optionally a folder of
//! good test images and folders of defective ones (the folder name is the defect type). Without a
//! good test folder, a seeded share of the good images is held out for evaluation and threshold
//! calibration, and never trained on.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::dataset::{Dataset, TestImage, file_name, list_images};
use crate::error::{Error, Result};

/// Plain-folder dataset settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FolderSpec {
    pub good: PathBuf,
    pub test_good: Option<PathBuf>,
    pub test_bad: Vec<PathBuf>,
    /// Share of the good images held out when `test_good` is absent.
    pub holdout: f64,
    pub seed: u64,
}

pub fn open(spec: &FolderSpec) -> Result<Dataset> {
    if !(0.0..1.0).contains(&spec.holdout) {
        return Err(Error::invalid(
            "--holdout",
            format!("{} is outside [0, 1)", spec.holdout),
        ));
    }
    let (mut good, mut unsupported) = list_images(&spec.good)?;
    if good.is_empty() && unsupported.is_empty() {
        return Err(Error::NoImages {
            dir: spec.good.clone(),
            note: String::new(),
        });
    }
    let mut test = Vec::new();
    match &spec.test_good {
        Some(dir) => {
            let (imgs, unsup) = list_images(dir)?;
            unsupported.extend(unsup);
            test.extend(imgs.into_iter().map(|path| TestImage {
                path,
                defect: None,
                mask: None,
            }));
        }
        None if spec.holdout > 0.0 => {
            let n_hold = ((good.len() as f64) * spec.holdout).round() as usize;
            // Keep at least two images to train on; a tiny folder holds out nothing.
            let n_hold = n_hold.min(good.len().saturating_sub(2));
            let mut order: Vec<usize> = (0..good.len()).collect();
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed));
            let mut held: Vec<usize> = order[..n_hold].to_vec();
            held.sort_unstable();
            for &i in held.iter().rev() {
                test.push(TestImage {
                    path: good.remove(i),
                    defect: None,
                    mask: None,
                });
            }
            test.reverse();
        }
        None => {}
    }
    for dir in &spec.test_bad {
        let (imgs, unsup) = list_images(dir)?;
        unsupported.extend(unsup);
        let kind = file_name(dir);
        test.extend(imgs.into_iter().map(|path| TestImage {
            path,
            defect: Some(kind.clone()),
            mask: None,
        }));
    }
    Ok(Dataset {
        name: file_name(&spec.good),
        origin: format!("plain folder {}", spec.good.display()),
        train_dir: spec.good.clone(),
        train: good,
        test,
        unsupported,
    })
}

/// Whether `p` sits inside the good folder (used to refuse a test folder equal to the good one).
pub fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

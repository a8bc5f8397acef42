//! MVTec-AD layout: ROOT/CLASS/train/good/*.png, ROOT/CLASS/test/<type>/*.png (`good` = normal),
//! ROOT/CLASS/ground_truth/<type>/<stem>_mask.png.

use std::path::Path;

use tracing::warn;

use super::dataset::{Dataset, TestImage, file_name, list_images, subdirs};
use crate::error::{Error, Result};

/// Resolve `root/class` to files. The test folder is optional (training without evaluation);
/// missing masks are recorded as `None` and, when the class has a ground_truth folder at all,
/// reported once per defect type.
pub fn open(root: &Path, class: &str) -> Result<Dataset> {
    if !root.is_dir() {
        return Err(Error::NotFound {
            path: root.to_path_buf(),
            expected: "an MVTec-AD style root folder holding one folder per class".into(),
        });
    }
    let dir = root.join(class);
    if !dir.is_dir() {
        let classes: Vec<String> = subdirs(root)?
            .iter()
            .filter(|d| d.join("train/good").is_dir())
            .map(|d| file_name(d))
            .collect();
        let available = if classes.is_empty() {
            format!(
                "{} holds no class folders with train/good inside (is it the right root?)",
                root.display()
            )
        } else {
            format!("available classes: {}", classes.join(", "))
        };
        return Err(Error::UnknownClass {
            root: root.to_path_buf(),
            class: class.into(),
            available,
        });
    }
    let train_dir = dir.join("train/good");
    if !train_dir.is_dir() {
        return Err(Error::Layout {
            path: dir.clone(),
            expected: format!(
                "a folder train/good with the good training images ({} is missing)",
                train_dir.display()
            ),
        });
    }
    let (train, mut unsupported) = list_images(&train_dir)?;
    if train.is_empty() && unsupported.is_empty() {
        return Err(Error::NoImages {
            dir: train_dir,
            note: String::new(),
        });
    }
    let mut test = Vec::new();
    let test_dir = dir.join("test");
    if test_dir.is_dir() {
        for type_dir in subdirs(&test_dir)? {
            let kind = file_name(&type_dir);
            let (imgs, unsup) = list_images(&type_dir)?;
            unsupported.extend(unsup);
            let is_good = kind == "good";
            let mask_dir = dir.join("ground_truth").join(&kind);
            let mut missing_masks = 0;
            for path in imgs {
                let mask = if is_good {
                    None
                } else {
                    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                    let m = stem.map(|s| mask_dir.join(format!("{s}_mask.png")));
                    match m {
                        Some(m) if m.is_file() => Some(m),
                        _ => {
                            missing_masks += 1;
                            None
                        }
                    }
                };
                test.push(TestImage {
                    path,
                    defect: (!is_good).then(|| kind.clone()),
                    mask,
                });
            }
            if missing_masks > 0 && dir.join("ground_truth").is_dir() {
                warn!(
                    "{missing_masks} test image(s) of type `{kind}` have no mask in {} (pixel \
                     metrics will skip them)",
                    mask_dir.display()
                );
            }
        }
    }
    Ok(Dataset {
        name: class.into(),
        origin: format!("MVTec-AD layout at {}", dir.display()),
        train_dir,
        train,
        test,
        unsupported,
    })
}

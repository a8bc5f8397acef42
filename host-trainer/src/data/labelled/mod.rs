//! Labelled image classification sets (Fashion-MNIST, CIFAR-10, CIFAR-100) read from the files
//! their publishers distribute, for the one-class protocol of `host-trainer bench`.
//!
//! - [`fashion_mnist`]: the four IDX files of Zalando's Fashion-MNIST (gzipped as Debian's
//!   `dataset-fashion-mnist` package installs them in [`FASHION_MNIST_DIR`], or plain).
//! - [`cifar10`]: the binary version of CIFAR-10 or a `train/<class>/`, `test/<class>/` folder tree.
//! - [`cifar100`]: CIFAR-100 labelled by its 20 superclasses, from the binary version or a folder
//!   tree of the 100 fine classes (mapped through [`CIFAR100_SUPERCLASSES`]).

mod cifar;
mod idx;
mod superclass;

use std::path::{Path, PathBuf};

use image::DynamicImage;

use crate::{Error, Result};

pub use cifar::{CIFAR10_CLASSES, cifar10, cifar100};
pub use idx::{FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, fashion_mnist};
pub use superclass::{CIFAR100_SUPERCLASSES, cifar100_superclass};

/// Images with one class label each.
#[derive(Debug, Clone, Default)]
pub struct LabelledSet {
    /// `ImageLuma8` for Fashion-MNIST, `ImageRgb8` for CIFAR.
    pub images: Vec<DynamicImage>,
    /// Class index of each image, `< class_names.len()`.
    pub labels: Vec<u16>,
    /// Class names by index, safe as folder names (lowercase ASCII, digits, `-`, `_`).
    pub class_names: Vec<String>,
}

impl LabelledSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Number of images of each class, by class index.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// A dataset's official train and test splits (same class names).
#[derive(Debug, Clone, Default)]
pub struct Splits {
    /// The training split (60,000 images for Fashion-MNIST, 50,000 for CIFAR).
    pub train: LabelledSet,
    /// The test split (10,000 images for all three sets).
    pub test: LabelledSet,
}

/// Read a whole file; a missing one is [`Error::NotFound`] with `expected` as the hint.
fn read_file(path: &Path, expected: impl FnOnce() -> String) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            path: path.to_path_buf(),
            expected: expected(),
        },
        _ => Error::io("read", path)(e),
    })
}

/// [`Error::Layout`] for `path`.
fn layout(path: &Path, expected: impl Into<String>) -> Error {
    Error::Layout {
        path: path.to_path_buf(),
        expected: expected.into(),
    }
}

/// `name` as a folder-safe class name: ASCII lowercase; characters other than letters, digits,
/// `-` and `_` become `_`.
fn folder_safe(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '_') => c,
            _ => '_',
        })
        .collect()
}

/// The first of `dir/<name>` for `names` that exists.
fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_folder_safe_names() {
        assert_eq!(
            folder_safe("large_man-made_outdoor_things"),
            "large_man-made_outdoor_things"
        );
        assert_eq!(folder_safe(" Pickup Truck\r"), "pickup_truck");
        assert_eq!(folder_safe("T-shirt/top"), "t-shirt_top");
    }

    #[test]
    fn labelled_class_counts() {
        let set = LabelledSet {
            images: vec![DynamicImage::new_luma8(1, 1); 3],
            labels: vec![1, 0, 1],
            class_names: vec!["a".into(), "b".into(), "c".into()],
        };
        assert_eq!(set.len(), 3);
        assert_eq!(set.class_counts(), [1, 2, 0]);
    }
}

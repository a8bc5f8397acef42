//! What a training run reads: the good training images and the labelled test images, as file
//! paths (decoding happens in [`super::images`]).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A test image: good, or defective of a named type, with its defect mask when the dataset has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    pub path: PathBuf,
    /// `None` for a good image; the defect type (folder name) otherwise.
    pub defect: Option<String>,
    /// Pixel mask of the defect (MVTec `ground_truth/<type>/<stem>_mask.png`), kept for pixel
    /// metrics.
    pub mask: Option<PathBuf>,
}

impl TestImage {
    pub fn is_good(&self) -> bool {
        self.defect.is_none()
    }
}

/// A dataset resolved to files.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Product class (MVTec class name, or the good folder's name).
    pub name: String,
    /// Where it came from, for logs and reports.
    pub origin: String,
    /// Folder of the good training images (for messages).
    pub train_dir: PathBuf,
    pub train: Vec<PathBuf>,
    pub test: Vec<TestImage>,
    /// Files found that are images of a format we do not read (BMP, TIFF, ...): reported as bad.
    pub unsupported: Vec<PathBuf>,
}

impl Dataset {
    pub fn test_good(&self) -> usize {
        self.test.iter().filter(|t| t.is_good()).count()
    }

    /// Defect types with their image counts, sorted by name.
    pub fn defect_types(&self) -> Vec<(String, usize)> {
        let mut m = std::collections::BTreeMap::new();
        for t in &self.test {
            if let Some(d) = &t.defect {
                *m.entry(d.clone()).or_insert(0usize) += 1;
            }
        }
        m.into_iter().collect()
    }
}

/// Image files we decode.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
/// Image files we recognise but do not decode: reported, not silently ignored.
pub const UNSUPPORTED_EXTENSIONS: [&str; 7] = ["bmp", "tif", "tiff", "gif", "webp", "ppm", "pgm"];

/// Images directly inside `dir` (not recursive), sorted by name, plus files of unsupported image
/// formats. Other files (notes, hidden files) are ignored.
pub fn list_images(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let rd = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            path: dir.to_path_buf(),
            expected: "a folder of PNG or JPEG images".into(),
        },
        _ => Error::Io {
            action: "list",
            path: dir.to_path_buf(),
            source: e,
        },
    })?;
    let mut images = Vec::new();
    let mut unsupported = Vec::new();
    for entry in rd {
        let path = entry.map_err(Error::io("list", dir))?.path();
        if !path.is_file() {
            continue;
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            images.push(path);
        } else if UNSUPPORTED_EXTENSIONS.contains(&ext.as_str()) {
            unsupported.push(path);
        }
    }
    images.sort();
    unsupported.sort();
    Ok((images, unsupported))
}

/// Sub-folders of `dir`, sorted by name.
pub fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let p = entry.map_err(Error::io("list", dir))?.path();
        if p.is_dir() {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

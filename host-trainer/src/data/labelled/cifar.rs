//! CIFAR-10 and CIFAR-100 (Krizhevsky, <https://www.cs.toronto.edu/~kriz/cifar.html>) from the
//! binary version or from class folders of PNG/JPEG files.

use std::path::{Path, PathBuf};

use firm_shared::preprocess;
use image::{DynamicImage, RgbImage};
use rayon::prelude::*;

use super::{
    CIFAR100_SUPERCLASSES, LabelledSet, Splits, cifar100_superclass, first_existing, folder_safe,
    layout, read_file,
};
use crate::{Error, Result};

/// CIFAR-10's class names by label, as in the binary version's `batches.meta.txt`.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Pixel bytes of one CIFAR record: 32x32 R plane, then G, then B, each row-major.
const PIXEL_BYTES: usize = 3 * 32 * 32;

/// CIFAR-10 from `dir`, in either of two layouts (detected):
///
/// - the binary version (`cifar-10-binary.tar.gz` from the CIFAR page, unpacked; `dir` may be the
///   `cifar-10-batches-bin` folder or the one holding it): `data_batch_1.bin` ..
///   `data_batch_5.bin` (train) and `test_batch.bin` (test), each a sequence of 3073-byte records:
///   1 label byte (0-9), then the 1024 bytes of the red plane, the green plane and the blue plane
///   of a 32x32 image, row-major. Class names come from `batches.meta.txt` (one per line) when it
///   is there, else [`CIFAR10_CLASSES`];
/// - class folders `dir/train/<class>/*.png|jpg|jpeg` and `dir/test/<class>/*.png|jpg|jpeg`:
///   classes are the train folders sorted by name (labels in that order); every test folder must
///   also be a train folder.
///
/// Images are `ImageRgb8`.
pub fn cifar10(dir: &Path) -> Result<Splits> {
    let Some(bin) = find_binary(dir, "cifar-10-batches-bin", "data_batch_1.bin") else {
        let train_dir = train_folder(
            dir,
            "data_batch_1.bin",
            "CIFAR-10 as its binary version (data_batch_1.bin .. data_batch_5.bin and \
             test_batch.bin, from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz \
             unpacked)",
            "<class>",
        )?;
        let folders = class_folder_names(&train_dir)?;
        let class_names = safe_names(&train_dir, folders.iter().map(String::as_str))?;
        let label_of = |folder: &Path, name: &str| {
            let i = folders.binary_search_by(|f| f.as_str().cmp(name));
            i.map(|i| i as u16).map_err(|_| {
                layout(
                    folder,
                    format!(
                        "only classes that {} has too ({}); found `{name}`",
                        train_dir.display(),
                        folders.join(", ")
                    ),
                )
            })
        };
        return Ok(Splits {
            train: read_class_folders(&train_dir, &class_names, label_of)?,
            test: read_class_folders(&dir.join("test"), &class_names, label_of)?,
        });
    };
    let meta = bin.join("batches.meta.txt");
    let class_names = if meta.exists() {
        let text = read_file(&meta, String::new)?;
        let text = String::from_utf8_lossy(&text);
        let names = safe_names(&meta, text.lines().map(str::trim).filter(|l| !l.is_empty()))?;
        if names.len() != CIFAR10_CLASSES.len() {
            return Err(layout(
                &meta,
                format!("10 class names, one per line; found {}", names.len()),
            ));
        }
        names
    } else {
        CIFAR10_CLASSES.map(String::from).into()
    };
    let labels = [("label", class_names.len())];
    let mut train = LabelledSet {
        class_names: class_names.clone(),
        ..Default::default()
    };
    for i in 1..=5 {
        read_binary(
            &bin.join(format!("data_batch_{i}.bin")),
            &labels,
            &mut train,
        )?;
    }
    let mut test = LabelledSet {
        class_names,
        ..Default::default()
    };
    read_binary(&bin.join("test_batch.bin"), &labels, &mut test)?;
    Ok(Splits { train, test })
}

/// CIFAR-100 from `dir`, labelled by its 20 superclasses (the one-class protocol of the anomaly
/// detection papers); class names are the superclass names of [`CIFAR100_SUPERCLASSES`] in
/// coarse-label order. Two layouts (detected):
///
/// - the binary version (`cifar-100-binary.tar.gz` from the CIFAR page, unpacked; `dir` may be
///   the `cifar-100-binary` folder or the one holding it): `train.bin` and `test.bin`, each a
///   sequence of 3074-byte records: coarse label byte (0-19, the label used), fine label byte
///   (0-99), then the red, green and blue 32x32 planes, row-major;
/// - class folders of the 100 fine classes, `dir/train/<fine>/*.png|jpg|jpeg` and
///   `dir/test/<fine>/*.png|jpg|jpeg`, named exactly as in `fine_label_names.txt` (`apple`,
///   `aquarium_fish`, ..., `worm`) and mapped to their superclass with [`cifar100_superclass`];
///   any other folder name is an error naming it.
///
/// Images are `ImageRgb8`.
pub fn cifar100(dir: &Path) -> Result<Splits> {
    let class_names: Vec<String> = CIFAR100_SUPERCLASSES
        .iter()
        .map(|(name, _)| folder_safe(name))
        .collect();
    let Some(bin) = find_binary(dir, "cifar-100-binary", "train.bin") else {
        let train_dir = train_folder(
            dir,
            "train.bin",
            "CIFAR-100 as its binary version (train.bin and test.bin, from \
             https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz unpacked)",
            "<fine class>",
        )?;
        let label_of = |folder: &Path, name: &str| {
            cifar100_superclass(name).map(|c| c as u16).ok_or_else(|| {
                let mut fines: Vec<&str> = CIFAR100_SUPERCLASSES
                    .iter()
                    .flat_map(|(_, f)| f.iter().copied())
                    .collect();
                fines.sort_unstable();
                layout(
                    folder,
                    format!(
                        "`{name}` is not a CIFAR-100 fine class; expected folders named as in \
                         fine_label_names.txt: {}",
                        fines.join(", ")
                    ),
                )
            })
        };
        return Ok(Splits {
            train: read_class_folders(&train_dir, &class_names, label_of)?,
            test: read_class_folders(&dir.join("test"), &class_names, label_of)?,
        });
    };
    let labels = [("coarse label", 20), ("fine label", 100)];
    let mut splits = Splits::default();
    for (file, set) in [
        ("train.bin", &mut splits.train),
        ("test.bin", &mut splits.test),
    ] {
        set.class_names = class_names.clone();
        read_binary(&bin.join(file), &labels, set)?;
    }
    Ok(splits)
}

/// The folder holding the binary version: `dir` or `dir/<tar_dir>` (as the tarball unpacks),
/// whichever has `first_file`.
fn find_binary(dir: &Path, tar_dir: &str, first_file: &str) -> Option<PathBuf> {
    let found = first_existing(dir, &[first_file, &format!("{tar_dir}/{first_file}")])?;
    found.parent().map(Path::to_path_buf)
}

/// `dir/train` when it is a folder, else [`Error::NotFound`] for `dir/<bin_file>` describing
/// both layouts (`binary`: the binary version and where to get it; `class`: the class folders).
fn train_folder(dir: &Path, bin_file: &str, binary: &str, class: &str) -> Result<PathBuf> {
    let train_dir = dir.join("train");
    if train_dir.is_dir() {
        return Ok(train_dir);
    }
    Err(Error::NotFound {
        path: dir.join(bin_file),
        expected: format!(
            "{binary} or class folders {d}/train/{class}/*.png and {d}/test/{class}/*.png",
            d = dir.display()
        ),
    })
}

/// Append the records of a CIFAR binary file to `set`: one byte per entry of `labels` (name and
/// number of classes; the first is the label kept), then [`PIXEL_BYTES`] of R, G, B planes.
fn read_binary(path: &Path, labels: &[(&str, usize)], set: &mut LabelledSet) -> Result<()> {
    let bytes = read_file(path, || {
        format!(
            "a file of the CIFAR binary version next to {}; the set is incomplete",
            path.parent().unwrap_or(path).display()
        )
    })?;
    let record = labels.len() + PIXEL_BYTES;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(layout(
            path,
            format!(
                "whole {record}-byte records ({} label byte(s), then {PIXEL_BYTES} pixel bytes); \
                 the file has {} bytes: {} whole records and {} bytes left over (truncated, or \
                 not this CIFAR version)",
                labels.len(),
                bytes.len(),
                bytes.len() / record,
                bytes.len() % record
            ),
        ));
    }
    let n = bytes.len() / record;
    set.images.reserve(n);
    set.labels.reserve(n);
    for (r, rec) in bytes.chunks_exact(record).enumerate() {
        for (k, &(name, classes)) in labels.iter().enumerate() {
            if rec[k] as usize >= classes {
                return Err(layout(
                    path,
                    format!(
                        "record {r} (byte offset {}): {name} {}; expected 0-{}",
                        r * record + k,
                        rec[k],
                        classes - 1
                    ),
                ));
            }
        }
        let (r_plane, gb) = rec[labels.len()..].split_at(PIXEL_BYTES / 3);
        let (g_plane, b_plane) = gb.split_at(PIXEL_BYTES / 3);
        let mut rgb = Vec::with_capacity(PIXEL_BYTES);
        for i in 0..PIXEL_BYTES / 3 {
            rgb.extend([r_plane[i], g_plane[i], b_plane[i]]);
        }
        let img = RgbImage::from_raw(32, 32, rgb).expect("32x32x3 bytes");
        set.images.push(DynamicImage::ImageRgb8(img));
        set.labels.push(rec[0].into());
    }
    Ok(())
}

/// Class names after [`folder_safe`], which must stay distinct.
fn safe_names<'a>(path: &Path, names: impl Iterator<Item = &'a str>) -> Result<Vec<String>> {
    let names: Vec<String> = names.map(folder_safe).collect();
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(layout(
                path,
                format!("distinct class names; `{name}` appears twice (as a folder-safe name)"),
            ));
        }
    }
    Ok(names)
}

/// Names of the subfolders of `split_dir` (hidden ones skipped), sorted.
fn class_folder_names(split_dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(split_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            path: split_dir.to_path_buf(),
            expected: "a folder with one subfolder of PNG or JPEG images per class".into(),
        },
        _ => Error::io("list", split_dir)(e),
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("list", split_dir))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            return Err(layout(&path, "a class folder name in UTF-8"));
        };
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(layout(
            split_dir,
            "one subfolder of PNG or JPEG images per class; found none",
        ));
    }
    names.sort();
    Ok(names)
}

/// One split of a class-folder tree: the PNG and JPEG files (other files are ignored) of each
/// class folder of `split_dir`, in name order, labelled `label_of(folder, folder name)` and
/// decoded to RGB in parallel. An empty class folder is an error.
fn read_class_folders(
    split_dir: &Path,
    class_names: &[String],
    label_of: impl Fn(&Path, &str) -> Result<u16>,
) -> Result<LabelledSet> {
    let mut files: Vec<(PathBuf, u16)> = Vec::new();
    for name in class_folder_names(split_dir)? {
        let folder = split_dir.join(&name);
        let label = label_of(&folder, &name)?;
        let mut images: Vec<PathBuf> = std::fs::read_dir(&folder)
            .map_err(Error::io("list", &folder))?
            .map(|e| e.map(|e| e.path()).map_err(Error::io("list", &folder)))
            .filter(|p| p.as_ref().map_or(true, |p| is_image(p)))
            .collect::<Result<_>>()?;
        if images.is_empty() {
            return Err(Error::NoImages {
                dir: folder,
                note: " (every class folder needs PNG or JPEG images)".into(),
            });
        }
        images.sort();
        files.extend(images.into_iter().map(|p| (p, label)));
    }
    let images = files
        .par_iter()
        .map(|(path, _)| decode(path))
        .collect::<Result<Vec<_>>>()?;
    Ok(LabelledSet {
        images,
        labels: files.iter().map(|&(_, l)| l).collect(),
        class_names: class_names.to_vec(),
    })
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    ["png", "jpg", "jpeg"]
        .iter()
        .any(|x| ext.eq_ignore_ascii_case(x))
        && path.is_file()
}

/// Decode one image file to `ImageRgb8`; a file that is not a usable image is
/// [`Error::BadImage`].
fn decode(path: &Path) -> Result<DynamicImage> {
    let reason = match preprocess::decode_file(path) {
        Ok(d) => return Ok(DynamicImage::ImageRgb8(d.rgb)),
        Err(firm_shared::Error::Io { source, .. }) => return Err(Error::io("read", path)(source)),
        Err(firm_shared::Error::Decode { reason, .. }) => {
            format!("corrupt or truncated image ({reason})")
        }
        Err(firm_shared::Error::UnsupportedImage { reason, .. }) => reason,
        Err(e) => e.to_string(),
    };
    Err(Error::BadImage {
        path: path.to_path_buf(),
        reason,
    })
}

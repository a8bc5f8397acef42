//! Fashion-MNIST in the IDX format of LeCun's MNIST files: a big-endian header (magic number
//! `0x000008NN`, unsigned-byte data with `NN` dimensions, then one `u32` size per dimension)
//! followed by the bytes, last dimension fastest.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use image::{DynamicImage, GrayImage};

use super::{LabelledSet, Splits, first_existing, layout, read_file};
use crate::{Error, Result};

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's class names by label, as folder names (Zalando's "T-shirt/top", "Trouser", ...
/// "Ankle boot").
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "tshirt-top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
];

/// Fashion-MNIST (Zalando Research, <https://github.com/zalandoresearch/fashion-mnist>) from the
/// four IDX files in `dir`: `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
/// `t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz`, gzipped as Zalando publishes them
/// and as Debian's `dataset-fashion-mnist` installs them in [`FASHION_MNIST_DIR`]; the same names
/// without `.gz` (decompressed) are accepted too. Images are `ImageLuma8`, 28x28 in the published
/// files; labels index [`FASHION_MNIST_CLASSES`]. The train split has 60,000 images, the test
/// split 10,000.
///
/// Errors: [`Error::NotFound`] for a missing file, [`Error::Layout`] for a wrong magic number,
/// wrong dimensions, a length that does not match the header (truncated or trailing bytes),
/// different image and label counts or a label outside 0-9.
pub fn fashion_mnist(dir: &Path) -> Result<Splits> {
    let files = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    .map(|stem| {
        first_existing(dir, &[&format!("{stem}.gz"), stem]).ok_or_else(|| Error::NotFound {
            path: dir.join(format!("{stem}.gz")),
            expected: not_found_hint(stem),
        })
    });
    let [train_images, train_labels, test_images, test_labels] = files;
    let class_names: Vec<String> = FASHION_MNIST_CLASSES.map(String::from).into();
    let split = |images: Result<PathBuf>, labels: Result<PathBuf>| -> Result<LabelledSet> {
        let (images, labels) = (images?, labels?);
        let label_values = read_labels(&labels, FASHION_MNIST_CLASSES.len())?;
        let image_values = read_images(&images)?;
        if label_values.len() != image_values.len() {
            return Err(layout(
                &labels,
                format!(
                    "{} labels for the {} images of {}; expected one label per image",
                    label_values.len(),
                    image_values.len(),
                    images.display()
                ),
            ));
        }
        Ok(LabelledSet {
            images: image_values
                .into_iter()
                .map(DynamicImage::ImageLuma8)
                .collect(),
            labels: label_values,
            class_names: class_names.clone(),
        })
    };
    Ok(Splits {
        train: split(train_images, train_labels)?,
        test: split(test_images, test_labels)?,
    })
}

fn not_found_hint(stem: &str) -> String {
    format!(
        "the Fashion-MNIST file {stem}.gz (or {stem}, decompressed): install Debian's package \
         with `apt install dataset-fashion-mnist` (it puts the files in {FASHION_MNIST_DIR}) or \
         download them from https://github.com/zalandoresearch/fashion-mnist"
    )
}

/// The images of an IDX file with 3 dimensions (count, rows, columns).
fn read_images(path: &Path) -> Result<Vec<GrayImage>> {
    let bytes = read_idx_bytes(path)?;
    let (dims, data) = parse_idx(&bytes, path, 3)?;
    let (rows, cols) = (dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(layout(
            path,
            format!("IDX image file with {rows}x{cols}-pixel images; expected non-zero sizes"),
        ));
    }
    Ok(data
        .chunks_exact(rows * cols)
        .map(|px| GrayImage::from_raw(cols as u32, rows as u32, px.to_vec()).expect("exact size"))
        .collect())
}

/// The labels of an IDX file with 1 dimension, each `< classes`.
fn read_labels(path: &Path, classes: usize) -> Result<Vec<u16>> {
    let bytes = read_idx_bytes(path)?;
    let (_, data) = parse_idx(&bytes, path, 1)?;
    if let Some(i) = data.iter().position(|&l| l as usize >= classes) {
        return Err(layout(
            path,
            format!(
                "label {} of item {i} (byte offset {}); expected labels 0-{}",
                data[i],
                bytes.len() - data.len() + i,
                classes - 1
            ),
        ));
    }
    Ok(data.iter().map(|&l| l.into()).collect())
}

/// The file's bytes, gunzipped when they start with the gzip magic number (whatever the name).
fn read_idx_bytes(path: &Path) -> Result<Vec<u8>> {
    let stem = path.file_name().unwrap_or_default().to_string_lossy();
    let bytes = read_file(path, || not_found_hint(stem.trim_end_matches(".gz")))?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    // The gzip trailer holds the decompressed size modulo 2^32: a good first capacity.
    let size_hint = bytes
        .last_chunk::<4>()
        .map_or(0, |s| u32::from_le_bytes(*s) as usize);
    let mut out = Vec::with_capacity(size_hint.min(1 << 30));
    GzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(|e| layout(path, format!("corrupt or truncated gzip data ({e})")))?;
    Ok(out)
}

/// Check an IDX header of unsigned bytes with `ndims` dimensions and that the data after it is
/// exactly as long as the dimensions say; returns the dimensions and the data.
fn parse_idx<'a>(bytes: &'a [u8], path: &Path, ndims: usize) -> Result<(Vec<usize>, &'a [u8])> {
    let magic = 0x0800 | ndims as u32;
    let header = 4 + 4 * ndims;
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let what = format!("an IDX file of unsigned bytes with {ndims} dimension(s)");
    match bytes.len() {
        0..4 => {
            return Err(layout(
                path,
                format!("{what}; the file has only {} bytes", bytes.len()),
            ));
        }
        _ if be(0) != magic => {
            return Err(layout(
                path,
                format!(
                    "{what}: magic number 0x{magic:08x} at byte 0, found 0x{:08x}",
                    be(0)
                ),
            ));
        }
        n if n < header => {
            return Err(layout(
                path,
                format!("{what}; the file ends at byte {n}, inside the {header}-byte header"),
            ));
        }
        _ => {}
    }
    let dims: Vec<usize> = (0..ndims).map(|d| be(4 + 4 * d) as usize).collect();
    let data = &bytes[header..];
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match expected {
        Some(n) if n == data.len() => Ok((dims, data)),
        Some(n) if n > data.len() => Err(layout(
            path,
            format!(
                "{what}: the header ({dims:?}) promises {n} data bytes after byte {header}, but the \
                 file is truncated: it ends at byte {} ({} bytes missing)",
                bytes.len(),
                n - data.len()
            ),
        )),
        Some(n) => Err(layout(
            path,
            format!(
                "{what}: the header ({dims:?}) promises {n} data bytes after byte {header}; found \
                 {} trailing bytes from byte offset {}",
                data.len() - n,
                header + n
            ),
        )),
        None => Err(layout(
            path,
            format!("{what}: impossible dimensions {dims:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(data);
        b
    }

    #[test]
    fn labelled_idx_parse_header() {
        let p = Path::new("x");
        let b = idx(&[2, 1, 3], &[1, 2, 3, 4, 5, 6]);
        let (dims, data) = parse_idx(&b, p, 3).unwrap();
        assert_eq!(dims, [2, 1, 3]);
        assert_eq!(data, [1, 2, 3, 4, 5, 6]);
        // Wrong dimension count is a wrong magic number.
        let e = parse_idx(&b, p, 1).unwrap_err().to_string();
        assert!(
            e.contains("magic number 0x00000801") && e.contains("0x00000803"),
            "{e}"
        );
        let e = parse_idx(&b[..14], p, 3).unwrap_err().to_string();
        assert!(e.contains("inside the 16-byte header"), "{e}");
        let e = parse_idx(&b[..2], p, 3).unwrap_err().to_string();
        assert!(e.contains("only 2 bytes"), "{e}");
        let e = parse_idx(&b[..20], p, 3).unwrap_err().to_string();
        assert!(
            e.contains("truncated") && e.contains("2 bytes missing"),
            "{e}"
        );
        let mut long = b.clone();
        long.push(0);
        let e = parse_idx(&long, p, 3).unwrap_err().to_string();
        assert!(e.contains("1 trailing bytes from byte offset 22"), "{e}");
        let huge = idx(&[u32::MAX, u32::MAX, u32::MAX], &[]);
        assert!(parse_idx(&huge, p, 3).is_err());
    }
}

//! Decoding many images at once: in parallel, with conversions counted, corrupt files skipped (a
//! few) or fatal (`--strict`, or too many), and the results kept in memory so epochs never decode
//! a file twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use firm_shared::preprocess::{self, ResizeFilter};
use image::RgbImage;
use rayon::prelude::*;
use tracing::{info, warn};

use super::dataset::file_name;
use crate::error::{Error, Result};

/// How to treat files that cannot be used.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Stop at the first corrupt or unsupported file.
    pub strict: bool,
    /// Without `strict`, fail anyway when more than this share of the files is bad (a systematic
    /// problem, not a few corrupt files). At least one bad file is always tolerated.
    pub max_bad_fraction: f64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            strict: false,
            max_bad_fraction: 0.1,
        }
    }
}

/// Decoded items, with what happened on the way.
#[derive(Debug)]
pub struct Loaded<T> {
    pub items: Vec<T>,
    /// Source path of each item.
    pub paths: Vec<PathBuf>,
    /// Files skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Source formats that needed conversion to 8-bit RGB, with their counts ("grey 16-bit": 3).
    pub converted: BTreeMap<String, usize>,
}

/// Decode `paths` in parallel and map each image with `f`. `unsupported` are files of image
/// formats we do not read; they count as bad files.
pub fn load<T: Send>(
    paths: &[PathBuf],
    unsupported: &[PathBuf],
    opts: LoadOptions,
    f: impl Fn(RgbImage) -> T + Sync,
) -> Result<Loaded<T>> {
    let decoded: Vec<std::result::Result<(T, preprocess::SourceFormat), String>> = paths
        .par_iter()
        .map(|p| {
            preprocess::decode_file(p)
                .map(|d| (f(d.rgb), d.source))
                .map_err(|e| reason_of(&e))
        })
        .collect();
    let mut loaded = Loaded {
        items: Vec::with_capacity(paths.len()),
        paths: Vec::with_capacity(paths.len()),
        skipped: Vec::new(),
        converted: BTreeMap::new(),
    };
    for p in unsupported {
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_uppercase())
            .unwrap_or_default();
        loaded.skipped.push((
            p.clone(),
            format!("{ext} files are not supported; expected PNG or JPEG"),
        ));
    }
    for (p, r) in paths.iter().zip(decoded) {
        match r {
            Ok((item, fmt)) => {
                if fmt.was_converted() {
                    *loaded.converted.entry(fmt.to_string()).or_default() += 1;
                }
                loaded.items.push(item);
                loaded.paths.push(p.clone());
            }
            Err(reason) => loaded.skipped.push((p.clone(), reason)),
        }
    }
    loaded.skipped.sort();
    let total = paths.len() + unsupported.len();
    if let Some((path, reason)) = loaded.skipped.first() {
        if opts.strict {
            return Err(Error::BadImage {
                path: path.clone(),
                reason: format!("{reason} (--strict stops at the first unusable file)"),
            });
        }
        let tolerated = ((total as f64) * opts.max_bad_fraction).floor().max(1.0) as usize;
        if loaded.skipped.len() > tolerated {
            return Err(Error::TooManyBad {
                bad: loaded.skipped.len(),
                total,
                first: format!("{}: {reason}", path.display()),
            });
        }
        for (p, r) in &loaded.skipped {
            warn!("skipping {}: {r}", p.display());
        }
        warn!(
            "skipped {} of {total} files (pass --strict to stop instead)",
            loaded.skipped.len()
        );
    }
    if !loaded.converted.is_empty() {
        let list: Vec<String> = loaded
            .converted
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        info!("converted to 8-bit RGB: {}", list.join(", "));
    }
    Ok(loaded)
}

/// The reason part of a decode error (the path is reported separately).
fn reason_of(e: &firm_shared::Error) -> String {
    match e {
        firm_shared::Error::Decode { reason, .. } => {
            format!("corrupt or truncated image ({reason})")
        }
        firm_shared::Error::UnsupportedImage { reason, .. } => reason.clone(),
        firm_shared::Error::Io { source, .. } => format!("cannot read: {source}"),
        other => other.to_string(),
    }
}

/// Good training images decoded once and kept in memory, downscaled so the short side is at most
/// `max_side` (twice the model input by default: random resized crops down to half the image side
/// still see full detail). Upscaling never happens here.
#[derive(Debug, Clone)]
pub struct ImageCache {
    pub images: Vec<Arc<RgbImage>>,
    pub paths: Vec<PathBuf>,
}

impl ImageCache {
    pub fn load(
        paths: &[PathBuf],
        unsupported: &[PathBuf],
        max_side: u32,
        opts: LoadOptions,
        min_images: usize,
        dir: &std::path::Path,
    ) -> Result<Self> {
        let loaded = load(paths, unsupported, opts, |img| {
            let short = img.width().min(img.height());
            if short > max_side {
                let resized = preprocess::resize_short_side(&img, max_side, ResizeFilter::Bilinear)
                    .expect("non-empty image and side");
                Arc::new(resized)
            } else {
                Arc::new(img)
            }
        })?;
        if loaded.items.len() < min_images {
            let note = if loaded.skipped.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} unusable: {})",
                    loaded.skipped.len(),
                    loaded
                        .skipped
                        .iter()
                        .take(3)
                        .map(|(p, _)| file_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(Error::TooFew {
                dir: dir.to_path_buf(),
                found: loaded.items.len(),
                needed: min_images,
                note,
            });
        }
        Ok(Self {
            images: loaded.items,
            paths: loaded.paths,
        })
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

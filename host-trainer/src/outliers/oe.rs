//! Outlier exposure: real images of other things (a folder given with `--outliers oe:DIR`) used as
//! outliers. As in the reference, every outlier slot of a batch is replaced, at every fetch, by a
//! randomly drawn image of the set.

use std::path::Path;
use std::sync::Arc;

use image::RgbImage;
use rand::Rng;

use crate::data::dataset::list_images;
use crate::data::images::{ImageCache, LoadOptions};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct OeSet {
    cache: ImageCache,
}

impl OeSet {
    /// Decode the folder once (short side at most `max_side`).
    pub fn load(dir: &Path, max_side: u32, opts: LoadOptions) -> Result<Self> {
        let (paths, unsupported) = list_images(dir)?;
        if paths.is_empty() {
            return Err(Error::NoImages {
                dir: dir.to_path_buf(),
                note: " (given as the outlier-exposure set with --outliers oe:DIR)".into(),
            });
        }
        let cache = ImageCache::load(&paths, &unsupported, max_side, opts, 1, dir)?;
        Ok(Self { cache })
    }

    pub fn from_images(images: Vec<RgbImage>) -> Self {
        Self {
            cache: ImageCache {
                paths: vec![Default::default(); images.len()],
                images: images.into_iter().map(Arc::new).collect(),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// A uniformly drawn image of the set.
    pub fn draw(&self, rng: &mut impl Rng) -> Arc<RgbImage> {
        self.cache.images[rng.random_range(0..self.cache.len())].clone()
    }
}

//! Training batches in the FIRM reference's layouts, and a loader that builds them in parallel
//! ahead of the trainer.
//!
//! - **Groups** (defect data, the MVTec setup): each step takes `batch` good images; every good
//!   image yields a group [ID, outlier 1, outlier 2, ...] (outliers made from that same image), and
//!   each view is laid out `[B ID | B outlier-1 | B outlier-2 ...]`, ID block first.
//! - **Rotation pool** (semantic one-class data): every ID image and its three rotations (1:3) form
//!   a pool, shuffled per epoch; each step takes `batch` entries (about a quarter ID). Both views
//!   come from the same (possibly rotated) image.
//! - **Outlier exposure** replaces every outlier slot, at every fetch, by a random OE image.
//!
//! A batch of S samples has 2S images `[view 1 of samples 0..S; view 2 of samples 0..S]`, the
//! layout the losses expect, with one [`SampleLabel`] per sample (all reference encodings derive
//! from it). Everything is deterministic in (seed, epoch, batch index): each sample draws from its
//! own RNG stream, so the parallel build gives the same batch on any number of threads.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use firm_shared::preprocess::{self, Normalization};
use image::RgbImage;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::augment::{self, Augment, Augmentation};
use crate::data::images::ImageCache;
use crate::error::{Error, Result};
use crate::loss::SampleLabel;
use crate::outliers::oe::OeSet;
use crate::outliers::{Generator, OutlierSpec, rotate};

/// Batch settings.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Model input side.
    pub size: u32,
    /// Dataset items per step: good images (groups) or pool entries (rotation).
    pub batch: usize,
    pub seed: u64,
    pub normalization: Normalization,
    /// Also return the augmented views as 8-bit images (for previews).
    pub keep_images: bool,
    /// View augmentation (training: the SimCLR one). `None`: both views are the plain test
    /// transform, so a preview shows the outliers themselves.
    pub augment: Augmentation,
}

/// One training step's input.
#[derive(Debug, Clone)]
pub struct Batch {
    pub epoch: usize,
    pub index: usize,
    pub size: u32,
    /// `[2S, 3, size, size]` normalised, view 1 of every sample first.
    pub x: Vec<f32>,
    pub labels: Vec<SampleLabel>,
    /// What each sample is ("id", "cutpaste", "rot90", "oe (scar slot)", ...).
    pub kinds: Vec<String>,
    /// The 2S augmented views as images, when [`BatchConfig::keep_images`] is set.
    pub images: Option<Vec<RgbImage>>,
    /// View 2 of every sample is view 1 (no augmentation): the model need only see one.
    pub identical_views: bool,
}

impl Batch {
    pub fn samples(&self) -> usize {
        self.labels.len()
    }

    pub fn tensor(&self, device: &Device) -> Result<Tensor> {
        let s = self.size as usize;
        Ok(Tensor::from_slice(
            &self.x,
            (2 * self.samples(), 3, s, s),
            device,
        )?)
    }

    /// What a training step must run through the model: view 1 alone `[S, 3, size, size]` when
    /// the two views are the same images ([`Batch::identical_views`]; the caller repeats the
    /// embeddings, `[z; z]`, which gives the loss and every gradient of the two-view pass at half
    /// the work), else the whole [`Batch::tensor`].
    pub fn model_input(&self, device: &Device) -> Result<Tensor> {
        let s = self.size as usize;
        let n = if self.identical_views { 1 } else { 2 } * self.samples();
        Ok(Tensor::from_slice(
            &self.x[..n * 3 * s * s],
            (n, 3, s, s),
            device,
        )?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Id,
    Rotate(u8),
    Generate(Generator),
    Oe,
}

#[derive(Debug, Clone)]
struct Recipe {
    image: usize,
    op: Op,
    label: SampleLabel,
    kind: String,
}

/// Builds the batches of any epoch from the cached good images.
#[derive(Debug)]
pub struct Sampler {
    train: Arc<ImageCache>,
    spec: OutlierSpec,
    oe: Option<Arc<OeSet>>,
    cfg: BatchConfig,
    augment: Option<Augment>,
}

impl Sampler {
    pub fn new(
        train: Arc<ImageCache>,
        spec: OutlierSpec,
        oe: Option<Arc<OeSet>>,
        cfg: BatchConfig,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::invalid("training set", "no images"));
        }
        if cfg.batch == 0 || cfg.size == 0 {
            return Err(Error::invalid("batch", "batch and size must be at least 1"));
        }
        if spec.oe.is_some() != oe.is_some() {
            return Err(Error::invalid(
                "--outliers",
                "an oe:DIR outlier needs its loaded image set (and only then)",
            ));
        }
        let augment = Augment::of(cfg.augment, cfg.size);
        Ok(Self {
            train,
            spec,
            oe,
            cfg,
            augment,
        })
    }

    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    fn pool_len(&self) -> usize {
        if self.spec.is_rotation() {
            4 * self.train.len()
        } else {
            self.train.len()
        }
    }

    /// Steps per epoch: full batches only (the last partial one is dropped), or one batch of
    /// everything when the data is smaller than a batch.
    pub fn batches_per_epoch(&self) -> usize {
        (self.pool_len() / self.cfg.batch).max(1)
    }

    /// Samples per batch (ID and outliers).
    pub fn samples_per_batch(&self) -> usize {
        let b = self.cfg.batch.min(self.pool_len());
        if self.spec.is_rotation() {
            b
        } else {
            b * (1 + self.spec.outliers_per_group())
        }
    }

    fn recipes(&self, epoch: usize, index: usize) -> Vec<Recipe> {
        let mut order: Vec<usize> = (0..self.pool_len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(stream(
            self.cfg.seed,
            epoch as u64,
            u64::MAX,
            0,
        )));
        let b = self.cfg.batch.min(order.len());
        let picked = &order[index * b..(index + 1) * b];
        let names = self.spec.slot_names();
        if self.spec.is_rotation() {
            return picked
                .iter()
                .map(|&e| {
                    let (image, turn) = (e / 4, (e % 4) as u8);
                    match turn {
                        0 => Recipe {
                            image,
                            op: Op::Id,
                            label: SampleLabel::Id(0),
                            kind: "id".into(),
                        },
                        t => Recipe {
                            image,
                            op: if self.oe.is_some() {
                                Op::Oe
                            } else {
                                Op::Rotate(t)
                            },
                            label: SampleLabel::Outlier(t as u16),
                            kind: if self.oe.is_some() {
                                format!("oe ({} slot)", names[t as usize - 1])
                            } else {
                                names[t as usize - 1].clone()
                            },
                        },
                    }
                })
                .collect();
        }
        let mut out: Vec<Recipe> = picked
            .iter()
            .map(|&image| Recipe {
                image,
                op: Op::Id,
                label: SampleLabel::Id(0),
                kind: "id".into(),
            })
            .collect();
        let slots: Vec<Op> = if self.spec.generators.is_empty() {
            vec![Op::Oe]
        } else if self.oe.is_some() {
            vec![Op::Oe; self.spec.generators.len()]
        } else {
            self.spec
                .generators
                .iter()
                .map(|&g| Op::Generate(g))
                .collect()
        };
        for (k, op) in slots.into_iter().enumerate() {
            out.extend(picked.iter().map(|&image| Recipe {
                image,
                op,
                label: SampleLabel::Outlier(k as u16 + 1),
                kind: names[k].clone(),
            }));
        }
        out
    }

    /// Build batch `index` of `epoch` (`index < batches_per_epoch()`).
    pub fn batch(&self, epoch: usize, index: usize) -> Result<Batch> {
        if index >= self.batches_per_epoch() {
            return Err(Error::invalid(
                "batch index",
                format!("{index} >= {} batches per epoch", self.batches_per_epoch()),
            ));
        }
        let recipes = self.recipes(epoch, index);
        let views: Vec<SampleViews> = recipes
            .par_iter()
            .enumerate()
            .map(|(i, r)| {
                let mut rng = ChaCha8Rng::seed_from_u64(stream(
                    self.cfg.seed,
                    epoch as u64,
                    index as u64,
                    i as u64,
                ));
                self.sample(r, &mut rng)
            })
            .collect();
        let per = 3 * (self.cfg.size as usize).pow(2);
        let mut x = Vec::with_capacity(2 * views.len() * per);
        for v in &views {
            x.extend_from_slice(&v.first);
        }
        for v in &views {
            x.extend_from_slice(&v.second);
        }
        let images = self.cfg.keep_images.then(|| {
            let (a, b): (Vec<_>, Vec<_>) = views
                .iter()
                .map(|v| v.images.clone().expect("kept"))
                .unzip();
            a.into_iter().chain(b).collect()
        });
        Ok(Batch {
            epoch,
            index,
            size: self.cfg.size,
            x,
            labels: recipes.iter().map(|r| r.label).collect(),
            kinds: recipes.into_iter().map(|r| r.kind).collect(),
            images,
            identical_views: self.augment.is_none(),
        })
    }

    fn sample(&self, r: &Recipe, rng: &mut ChaCha8Rng) -> SampleViews {
        let src = &self.train.images[r.image];
        let made: Arc<RgbImage> = match r.op {
            Op::Id => src.clone(),
            Op::Rotate(t) => Arc::new(rotate::rotate(src, t)),
            Op::Generate(g) => Arc::new(g.make(src, self.cfg.size, rng)),
            Op::Oe => self.oe.as_ref().expect("checked in new").draw(rng),
        };
        let (v1, v2) = if let Some(aug) = &self.augment {
            (aug.apply(&made, rng), aug.apply(&made, rng))
        } else {
            let plain = firm_shared::preprocess::PreprocessSpec::new(self.cfg.size)
                .test_transform(&made)
                .map(|img| augment::to_f32(&img))
                .expect("cached images are non-empty and size >= 1");
            (plain.clone(), plain)
        };
        let norm = &self.cfg.normalization;
        SampleViews {
            first: preprocess::normalize_chw_f32(&v1, norm),
            second: preprocess::normalize_chw_f32(&v2, norm),
            images: self
                .cfg
                .keep_images
                .then(|| (augment::to_u8(&v1), augment::to_u8(&v2))),
        }
    }
}

struct SampleViews {
    first: Vec<f32>,
    second: Vec<f32>,
    images: Option<(RgbImage, RgbImage)>,
}

/// A well-mixed 64-bit seed for one RNG stream (SplitMix64 finaliser over the coordinates), so
/// neighbouring samples, batches and epochs get unrelated streams.
pub(crate) fn stream(seed: u64, epoch: u64, batch: u64, sample: u64) -> u64 {
    let mut z = seed;
    for v in [epoch, batch, sample] {
        z = z
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(v.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// Builds batches on a background thread (each batch in parallel with rayon) and hands them over
/// through a bounded queue, so the trainer never waits while the loader keeps up. Dropping the
/// loader stops the thread at its next hand-over.
#[derive(Debug)]
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Batches from (`start_epoch`, `start_index`) on, for `epochs` epochs in all (None: forever),
    /// keeping up to `prefetch` finished batches ready.
    pub fn spawn(
        sampler: Arc<Sampler>,
        start_epoch: usize,
        start_index: usize,
        epochs: Option<usize>,
        prefetch: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("batch-loader".into())
            .spawn(move || produce(&sampler, start_epoch, start_index, epochs, &tx))
            .expect("spawning the loader thread");
        Self {
            rx,
            handle: Some(handle),
        }
    }
}

fn produce(
    sampler: &Sampler,
    start_epoch: usize,
    start_index: usize,
    epochs: Option<usize>,
    tx: &SyncSender<Result<Batch>>,
) {
    let per_epoch = sampler.batches_per_epoch();
    let mut epoch = start_epoch;
    let mut index = start_index;
    while epochs.is_none_or(|n| epoch < start_epoch + n) {
        let b = sampler.batch(epoch, index);
        let failed = b.is_err();
        if tx.send(b).is_err() || failed {
            return; // consumer gone, or an error handed over
        }
        index += 1;
        if index == per_epoch {
            index = 0;
            epoch += 1;
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock a producer waiting on a full queue, then wait for it.
        while self.rx.try_recv().is_ok() {}
        let (_, dead_rx) = sync_channel::<Result<Batch>>(1);
        let rx = std::mem::replace(&mut self.rx, dead_rx);
        drop(rx);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

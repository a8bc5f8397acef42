//! `host-trainer preview`: a picture of exactly what the model trains against — both augmented
//! views of good images and of their synthetic outliers, labelled — built by the same sampler the
//! trainer uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::text::Text;
use firm_shared::preprocess::Normalization;
use image::{Rgb, RgbImage};
use tracing::info;

use crate::batch::{BatchConfig, Sampler};
use crate::data::images::{ImageCache, LoadOptions};
use crate::data::source::DataArgs;
use crate::error::{Error, Result};
use crate::outliers::OutlierSpec;
use crate::outliers::oe::OeSet;

#[derive(Debug, Clone, clap::Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Synthetic outliers: cutpaste,scar (MVTec default), cutpaste, scar, nsa, rotation, oe:DIR,
    /// or a generator list plus oe:DIR (OE images replace the outlier slots).
    #[arg(long, default_value = "cutpaste,scar")]
    pub outliers: String,
    /// Model input side in pixels (the views are shown at this resolution, enlarged).
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Good images shown (rows).
    #[arg(long, default_value_t = 4)]
    pub rows: usize,
    /// Seed of the images drawn, their outliers and their views.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Show the outliers without the view augmentations (both views = the test transform).
    #[arg(long)]
    pub plain: bool,
    /// Output PNG.
    #[arg(long, default_value = "preview.png")]
    pub out: PathBuf,
}

const LABEL_H: u32 = 12;
const GAP: u32 = 4;
const TITLE_H: u32 = 28;

/// Write the preview; returns the path written.
pub fn run(args: &PreviewArgs, cwd: &Path) -> Result<PathBuf> {
    let spec: OutlierSpec = args.outliers.parse()?;
    if args.rows == 0 {
        return Err(Error::invalid("--rows", "must be at least 1"));
    }
    let source = args.data.resolve(cwd, args.seed)?;
    let ds = source.open(cwd)?;
    let opts = LoadOptions {
        strict: args.data.strict,
        ..LoadOptions::default()
    };
    let max_side = 2 * args.size;
    let train = ImageCache::load(&ds.train, &ds.unsupported, max_side, opts, 2, &ds.train_dir)?;
    let oe = match &spec.oe {
        Some(dir) => Some(Arc::new(OeSet::load(dir, max_side, opts)?)),
        None => None,
    };
    // Rotation pools show 4 samples per row; groups show one good image and its outliers.
    let per_row = if spec.is_rotation() {
        4
    } else {
        1 + spec.outliers_per_group()
    };
    let batch = if spec.is_rotation() {
        args.rows * 4
    } else {
        args.rows
    };
    let sampler = Sampler::new(
        Arc::new(train),
        spec.clone(),
        oe,
        BatchConfig {
            size: args.size,
            batch,
            seed: args.seed,
            normalization: Normalization::default(),
            keep_images: true,
            augment: if args.plain {
                crate::augment::Augmentation::None
            } else {
                crate::augment::Augmentation::Simclr
            },
        },
    )?;
    let b = sampler.batch(0, 0)?;
    let images = b.images.as_ref().expect("keep_images");
    let s = b.samples();
    let rows = if spec.is_rotation() {
        s.div_ceil(4)
    } else {
        s / per_row
    };
    // Sample index of (row, slot): rotation pools are row-major; groups are [B ID | B out1 | ...].
    let sample_at = |row: usize, slot: usize| -> Option<usize> {
        let i = if spec.is_rotation() {
            row * 4 + slot
        } else {
            slot * rows + row
        };
        (i < s).then_some(i)
    };
    let scale = (128 / args.size).max(1);
    let tile = args.size * scale;
    let cols = 2 * per_row as u32;
    let width = cols * (tile + GAP) + GAP;
    let height = TITLE_H + rows as u32 * (tile + LABEL_H + GAP) + GAP;
    let mut canvas = RgbImage::from_pixel(width.max(420), height, Rgb([32, 32, 36]));
    let title = format!(
        "{} | outliers {} | {} px | seed {}{}",
        ds.name,
        spec,
        args.size,
        args.seed,
        if args.plain { " | no augmentation" } else { "" }
    );
    let legend = format!(
        "labels: 0 = ID, {}",
        spec.slot_names()
            .iter()
            .enumerate()
            .map(|(k, n)| format!("{} = {n}", k + 1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    text(&mut canvas, &title, GAP as i32, 11, Rgb888::WHITE);
    text(
        &mut canvas,
        &legend,
        GAP as i32,
        23,
        Rgb888::new(200, 200, 200),
    );
    for row in 0..rows {
        for slot in 0..per_row {
            let Some(i) = sample_at(row, slot) else {
                continue;
            };
            for view in 0..2 {
                let img = &images[view * s + i];
                let x = GAP + (2 * slot as u32 + view as u32) * (tile + GAP);
                let y = TITLE_H + row as u32 * (tile + LABEL_H + GAP);
                let big =
                    image::imageops::resize(img, tile, tile, image::imageops::FilterType::Nearest);
                image::imageops::replace(&mut canvas, &big, x as i64, (y + LABEL_H) as i64);
                let label = b.labels[i];
                let color = if label.is_id() {
                    Rgb888::new(120, 220, 120)
                } else {
                    Rgb888::new(255, 150, 90)
                };
                let kind = &b.kinds[i];
                let name = format!(
                    "{} [{}] v{}",
                    kind.to_uppercase(),
                    label.shift_label(),
                    view + 1
                );
                text(&mut canvas, &name, x as i32, (y + 9) as i32, color);
            }
        }
    }
    canvas.save(&args.out).map_err(|e| Error::Io {
        action: "write",
        path: args.out.clone(),
        source: std::io::Error::other(e),
    })?;
    info!(
        "preview of {} training pairs from {} written to {}",
        s,
        ds.origin,
        args.out.display()
    );
    Ok(args.out.clone())
}

fn text(img: &mut RgbImage, s: &str, x: i32, y: i32, color: Rgb888) {
    let style = MonoTextStyle::new(&FONT_6X10, color);
    let mut target = Canvas(img);
    // Drawing onto an in-memory image cannot fail.
    let _ = Text::new(s, Point::new(x, y), style).draw(&mut target);
}

/// `embedded-graphics` draw target over an RGB image (pixels outside are clipped).
struct Canvas<'a>(&'a mut RgbImage);

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Self::Error> {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.0
                    .put_pixel(p.x as u32, p.y as u32, Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

//! Patch scoring in the trainer (`eval --score patch`, `fit --score patch`): the encoder's tap
//! maps of every good training image make the patch bank ([`firm_shared::score::patch`]: coreset
//! to the spec's budget), every test image gets an anomaly map whose maximum is its score, and
//! the maps are compared with the datasets' defect masks: pixel AUROC and AUPRO
//! ([`firm_shared::score::pixel`]), beside the image AUROC of the patch score.
//!
//! The encoder runs as the float graph ([`CandleGraph::unfolded`]: every convolution followed by
//! its BatchNorm in evaluation mode) from the checkpoint's tensors, the same graph the exporter
//! folds and the device runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use firm_shared::model::graph::candle::CandleGraph;
use firm_shared::model::graph::{Graph, TensorId};
use firm_shared::preprocess::{self, Normalization, PreprocessSpec};
use firm_shared::quant::BnParams;
use firm_shared::score::map::Map;
use firm_shared::score::patch::{PatchBank, PatchLayout, PatchScorer, PatchSpec, coreset};
use firm_shared::score::pixel::{self, PixelCase};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::EvalImages;

/// Images per forward pass.
const CHUNK: usize = 8;
/// AUPRO integrates the per-region overlap up to this false-positive rate (MVTec's 0.3).
pub const AUPRO_MAX_FPR: f64 = 0.3;

/// The float graph of a checkpoint: `get(name)` returns a trained tensor's values.
pub fn float_graph(
    graph: &Graph,
    mut get: impl FnMut(&str) -> firm_shared::Result<Vec<f32>>,
) -> Result<CandleGraph> {
    let mut layers = Vec::new();
    for c in graph.convs() {
        let bn = &c.fold.bn;
        layers.push((
            get(&format!("{}.weight", c.name))?,
            BnParams {
                weight: get(&format!("{bn}.weight"))?,
                bias: get(&format!("{bn}.bias"))?,
                running_mean: get(&format!("{bn}.running_mean"))?,
                running_var: get(&format!("{bn}.running_var"))?,
                eps: c.fold.eps,
            },
        ));
    }
    Ok(CandleGraph::unfolded(graph, &layers)?)
}

/// The float graph of a safetensors checkpoint file.
pub fn checkpoint_graph(graph: &Graph, weights: &Path) -> Result<CandleGraph> {
    let tensors = candle_core::safetensors::load(weights, &Device::Cpu)
        .map_err(|e| Error::invalid("checkpoint", format!("{}: {e}", weights.display())))?;
    float_graph(graph, |name| {
        let t = tensors
            .get(name)
            .ok_or_else(|| firm_shared::Error::Weights {
                path: weights.to_path_buf(),
                reason: format!("missing tensor `{name}`"),
            })?;
        Ok(t.flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?)
    })
}

/// The tap maps (HWC, one vector per tap) of images already through the test transform.
pub fn tap_maps(
    model: &CandleGraph,
    layout: &PatchLayout,
    norm: &Normalization,
    images: &[RgbImage],
) -> Result<Vec<Vec<Vec<f32>>>> {
    let s = layout.size;
    let want: Vec<TensorId> = layout.tensors();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(CHUNK) {
        let x: Vec<f32> = chunk
            .par_iter()
            .flat_map(|i| preprocess::normalize_chw(i, norm))
            .collect();
        let x = Tensor::from_vec(x, (chunk.len(), 3, s, s), &Device::Cpu)?;
        let maps = model.forward_tensors(&x, &want)?;
        // [B, C, H, W] -> per image HWC
        let hwc: Vec<Vec<f32>> = maps
            .iter()
            .map(|t| t.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        for b in 0..chunk.len() {
            out.push(
                layout
                    .taps
                    .iter()
                    .zip(&hwc)
                    .map(|(t, v)| v[b * t.shape.len()..][..t.shape.len()].to_vec())
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// The patch bank of good images: every cell's feature, then the coreset.
pub fn build_bank(
    model: &CandleGraph,
    layout: &PatchLayout,
    spec: &PatchSpec,
    norm: &Normalization,
    train: &[RgbImage],
    seed: u64,
) -> Result<PatchBank> {
    if train.is_empty() {
        return Err(Error::invalid("patch bank", "no good training images"));
    }
    let per = layout.patches() * layout.dim;
    let mut all = Vec::with_capacity(train.len() * per);
    for chunk in train.chunks(32) {
        let maps = tap_maps(model, layout, norm, chunk)?;
        let feats: Vec<Vec<f32>> = maps
            .par_iter()
            .map(|m| {
                let refs: Vec<&[f32]> = m.iter().map(Vec::as_slice).collect();
                layout.features(&refs)
            })
            .collect();
        feats.iter().for_each(|f| all.extend_from_slice(f));
    }
    let t0 = Instant::now();
    let n = all.len() / layout.dim;
    let picked = coreset(&all, layout.dim, spec.bank, seed);
    info!(
        "patch bank: {} of {n} patches kept by the coreset in {:.1} s",
        picked.len(),
        t0.elapsed().as_secs_f64()
    );
    let rows: Vec<f32> = picked
        .iter()
        .flat_map(|&i| all[i * layout.dim..][..layout.dim].iter().copied())
        .collect();
    Ok(PatchBank::new(rows, layout.dim)?)
}

/// What the patch score gives on a test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchResult {
    /// Image AUROC of the map's maximum (normal = positive, like every image AUROC here).
    pub image_auroc: Option<f64>,
    pub per_type: BTreeMap<String, f64>,
    /// Pixel AUROC over the test images that have masks, and the good ones.
    pub pixel_auroc: Option<f64>,
    /// Per-region overlap up to a false-positive rate of 0.3, normalised.
    pub aupro: Option<f64>,
    /// Test images with a defect mask.
    pub n_masks: usize,
    pub bank_entries: usize,
    pub dim: usize,
    pub grid: (usize, usize),
    pub spec: PatchSpec,
    /// The patch score of every test image, in test order (higher = more anomalous).
    pub scores: Vec<f64>,
}

/// Maps and masks kept for the report's overlays.
#[derive(Debug, Clone)]
pub struct PatchMaps {
    pub maps: Vec<Map>,
    pub masks: Vec<Option<Vec<bool>>>,
}

/// A defect mask through the test transform, as booleans at the model input's size.
pub fn load_mask(path: &Path, size: u32) -> Result<Vec<bool>> {
    let d = preprocess::decode_file(path)?;
    let t = PreprocessSpec::new(size).test_transform(&d.rgb)?;
    Ok(t.pixels().map(|p| p.0[0] > 127).collect())
}

/// Score the test images of `imgs` with the patch score.
pub fn evaluate(
    model: &CandleGraph,
    spec: &PatchSpec,
    norm: &Normalization,
    imgs: &EvalImages,
    ds: &Dataset,
    seed: u64,
) -> Result<(PatchResult, PatchMaps)> {
    let graph = model.graph();
    let layout = PatchLayout::new(graph, spec, imgs.size as usize)?;
    let bank = build_bank(model, &layout, spec, norm, &imgs.train, seed)?;
    let entries = bank.len();
    let mut scorer = PatchScorer::new(layout.clone(), bank, spec.sigma)?;
    let mut scores = Vec::with_capacity(imgs.test.len());
    let mut maps = Vec::with_capacity(imgs.test.len());
    for chunk in imgs.test.chunks(32) {
        for m in tap_maps(model, &layout, norm, chunk)? {
            let refs: Vec<&[f32]> = m.iter().map(Vec::as_slice).collect();
            scores.push(scorer.score(&refs) as f64);
            maps.push(scorer.map().clone());
        }
    }
    let by_path: BTreeMap<&PathBuf, Option<&PathBuf>> =
        ds.test.iter().map(|t| (&t.path, t.mask.as_ref())).collect();
    let masks: Vec<Option<Vec<bool>>> = imgs
        .test_paths
        .par_iter()
        .zip(&imgs.defect)
        .map(|(p, d)| match (d, by_path.get(p).copied().flatten()) {
            (Some(_), Some(m)) => load_mask(m, imgs.size).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    let is_normal: Vec<bool> = imgs.defect.iter().map(Option::is_none).collect();
    let normal_score: Vec<f64> = scores.iter().map(|s| -s).collect();
    let has_both = imgs.n_good() > 0 && imgs.n_bad() > 0;
    let image_auroc = if has_both {
        Some(firm_shared::score::auroc(&normal_score, &is_normal)?)
    } else {
        None
    };
    let mut per_type = BTreeMap::new();
    if imgs.n_good() > 0 {
        for t in imgs.defect_types() {
            let (s, l): (Vec<f64>, Vec<bool>) = normal_score
                .iter()
                .zip(&imgs.defect)
                .filter(|(_, d)| d.is_none() || d.as_deref() == Some(t.as_str()))
                .map(|(s, d)| (*s, d.is_none()))
                .unzip();
            per_type.insert(t, firm_shared::score::auroc(&s, &l)?);
        }
    }
    // Pixel metrics over the good images and the defective ones with masks.
    let n_masks = masks.iter().filter(|m| m.is_some()).count();
    let cases: Vec<PixelCase> = maps
        .iter()
        .zip(&masks)
        .zip(&imgs.defect)
        .filter(|((_, m), d)| d.is_none() || m.is_some())
        .map(|((map, m), _)| PixelCase {
            map: &map.data,
            mask: m.as_deref(),
            w: map.w,
            h: map.h,
        })
        .collect();
    let (pixel_auroc, aupro) = if n_masks > 0 {
        (
            pixel::pixel_auroc(&cases),
            pixel::aupro(&cases, AUPRO_MAX_FPR),
        )
    } else {
        (None, None)
    };
    Ok((
        PatchResult {
            image_auroc,
            per_type,
            pixel_auroc,
            aupro,
            n_masks,
            bank_entries: entries,
            dim: layout.dim,
            grid: (layout.gh, layout.gw),
            spec: spec.clone(),
            scores,
        },
        PatchMaps { maps, masks },
    ))
}

/// The patch result without the per-image scores (report.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchSummary {
    pub taps: Vec<String>,
    pub sigma: f32,
    pub bank_entries: usize,
    pub dim: usize,
    pub grid: (usize, usize),
    pub n_masks: usize,
    pub per_type: BTreeMap<String, f64>,
}

impl PatchSummary {
    pub fn of(r: &PatchResult) -> Self {
        Self {
            taps: r.spec.taps.clone(),
            sigma: r.spec.sigma,
            bank_entries: r.bank_entries,
            dim: r.dim,
            grid: r.grid,
            n_masks: r.n_masks,
            per_type: r.per_type.clone(),
        }
    }
}

/// Overlays written per group.
const OVERLAYS: usize = 4;

/// Heat-map overlays of the test images an engineer looks at first, into `dir`: the
/// highest-scoring defective images (`worst-*`), the defective images scored most normal and the
/// good images scored most anomalous (`borderline-*`: where the verdict is decided), each as
/// the test view with its map blended on and the mask's outline in white; `index.md` lists
/// them with their scores. The colour scale is the same for every image: from the lowest good
/// image's score (cooler: no colour) to the highest score of the set.
pub fn write_overlays(
    dir: &Path,
    r: &PatchResult,
    maps: &PatchMaps,
    imgs: &EvalImages,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let good: Vec<usize> = (0..r.scores.len())
        .filter(|&i| imgs.defect[i].is_none())
        .collect();
    let mut bad: Vec<usize> = (0..r.scores.len())
        .filter(|&i| imgs.defect[i].is_some())
        .collect();
    let lo = good
        .iter()
        .map(|&i| r.scores[i])
        .fold(f64::INFINITY, f64::min);
    let hi = r.scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lo = if lo.is_finite() { lo } else { 0.0 };
    bad.sort_by(|&a, &b| r.scores[b].total_cmp(&r.scores[a]));
    let mut good_desc = good.clone();
    good_desc.sort_by(|&a, &b| r.scores[b].total_cmp(&r.scores[a]));
    let mut picks: Vec<(String, usize)> = Vec::new();
    for (k, &i) in bad.iter().take(OVERLAYS).enumerate() {
        picks.push((format!("worst-{k}"), i));
    }
    for (k, &i) in bad.iter().rev().take(OVERLAYS).enumerate() {
        if !picks.iter().any(|p| p.1 == i) {
            picks.push((format!("borderline-defect-{k}"), i));
        }
    }
    for (k, &i) in good_desc.iter().take(OVERLAYS).enumerate() {
        picks.push((format!("borderline-good-{k}"), i));
    }
    let mut index = String::from(
        "# Patch-score overlays\n\n| file | image | type | patch score |\n|---|---|---|---|\n",
    );
    for (name, i) in &picks {
        let mut img = firm_shared::score::heat::overlay(
            &imgs.test[*i],
            &maps.maps[*i],
            lo as f32,
            hi as f32,
            0.6,
        );
        if let Some(m) = &maps.masks[*i] {
            outline(&mut img, m);
        }
        let file = format!("{name}.png");
        let path = dir.join(&file);
        img.save(&path)
            .map_err(|e| Error::invalid("overlay", format!("{}: {e}", path.display())))?;
        use std::fmt::Write as _;
        let _ = writeln!(
            index,
            "| {file} | {} | {} | {:.4} |",
            imgs.test_paths[*i].display(),
            imgs.defect[*i].as_deref().unwrap_or("good"),
            r.scores[*i]
        );
    }
    firm_shared::fsutil::write_atomic(&dir.join("index.md"), index.as_bytes())?;
    Ok(())
}

/// Paint the boundary pixels of a mask white.
fn outline(img: &mut RgbImage, mask: &[bool]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if mask.len() != w * h {
        return;
    }
    for y in 0..h {
        for x in 0..w {
            if !mask[y * w + x] {
                continue;
            }
            let edge = x == 0
                || y == 0
                || x + 1 == w
                || y + 1 == h
                || !mask[y * w + x - 1]
                || !mask[y * w + x + 1]
                || !mask[(y - 1) * w + x]
                || !mask[(y + 1) * w + x];
            if edge {
                img.put_pixel(x as u32, y as u32, image::Rgb([255, 255, 255]));
            }
        }
    }
}

//! Activation calibration for the int8 path: the u8 scale and zero point of every tensor an int8
//! convolution reads ([`EncoderWeights::int8_inputs`]), from the range it takes on the good
//! training images (every view the bank is built from: each rotation of the score's ensemble),
//! computed on the folded graph with the bundle's int8 weights, which is what the device runs up
//! to the activation quantization itself.
//!
//! The range is the minimum and maximum over those images (widened to include 0, so padding is
//! exact). Frames outside it saturate at 0 or 255; the export report's quantized-vs-float AUROC
//! and Spearman figures say what that costs on the test images.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::Graph;
use super::candle::CandleGraph;
use crate::Result;
use crate::bundle::EncoderWeights;
use crate::bundle::manifest::TensorQuant;
use crate::preprocess::{self, PreprocessSpec};
use crate::quant::ActivationQuant;

/// Images per forward pass (every quantized tensor of the chunk is kept for its range).
const CHUNK: usize = 8;

/// Per-tensor quantization of the int8 inputs, calibrated on `images` rotated by each of `angles`.
pub fn calibrate(
    graph: &Graph,
    weights: &EncoderWeights,
    pre: &PreprocessSpec,
    images: &[RgbImage],
    angles: &[u8],
) -> Result<Vec<TensorQuant>> {
    let tensors = weights.int8_inputs(graph);
    if tensors.is_empty() || images.is_empty() {
        return Ok(Vec::new());
    }
    let w: Vec<(Vec<f32>, Vec<f32>)> = weights
        .layers
        .iter()
        .map(|l| (l.dequantized(), l.bias.clone()))
        .collect();
    let model = CandleGraph::folded(graph, &w)?;
    let mut range: BTreeMap<usize, (f32, f32)> = tensors
        .iter()
        .map(|&t| (t, (f32::INFINITY, f32::NEG_INFINITY)))
        .collect();
    let s = pre.size as usize;
    for &a in angles {
        for chunk in images.chunks(CHUNK) {
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|i| pre.normalize(&preprocess::rotate(i, a)))
                .collect();
            let x = Tensor::from_vec(x, (chunk.len(), 3, s, s), &Device::Cpu)?;
            for (t, v) in tensors.iter().zip(model.forward_tensors(&x, &tensors)?) {
                let lo = v.min_all()?.to_scalar::<f32>()?;
                let hi = v.max_all()?.to_scalar::<f32>()?;
                let r = range.get_mut(t).expect("every tensor has a range");
                *r = (r.0.min(lo), r.1.max(hi));
            }
        }
    }
    range
        .into_iter()
        .map(|(t, (lo, hi))| Ok(TensorQuant::new(t, ActivationQuant::from_range(lo, hi)?)))
        .collect()
}

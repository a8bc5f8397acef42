//! The self-test's reference path, on candle, never on the executors' kernels:
//! - f32 activations: the bundle's graph run unfolded ([`CandleGraph::unfolded`]: each
//!   convolution, then its BatchNorm in evaluation mode) with the *dequantized* bundle weights
//!   unfolded again and the run's own BatchNorm parameters. Same function as the executors'
//!   folded graph through different arithmetic, so the expected values check the folding, the
//!   quantization, the serialisation and every executor.
//! - u8 activations: the exact int8 semantics ([`CandleGraph::bundle`]: integer convolutions in
//!   f64, the same f32 epilogue steps). Quantization is discontinuous: a 1e-7 rounding
//!   difference before it flips a step now and then, and in a small model such flips cascade
//!   (measured on the 1/16-width test model: 13 % embedding error with the unfolded graph), so
//!   here the check is that every executor reproduces the integer pipeline bit for bit up to the
//!   final pooling. The folding itself is checked by `shared/tests/graph.rs` and by the export
//!   report's float-vs-bundle AUROC and Spearman figures.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::Embedder;
use crate::Result;
use crate::bundle::weights::FloatLayer;
use crate::bundle::{BundleError, EncoderWeights};
use crate::model::graph::candle::CandleGraph;
use crate::model::graph::{Graph, TensorId};
use crate::quant::ActivationQuant;

/// Images per forward pass.
const CHUNK: usize = 32;

#[derive(Debug)]
pub struct ReferenceEmbedder {
    model: CandleGraph,
    size: usize,
    dim: usize,
}

impl ReferenceEmbedder {
    /// `weights` and `floats`: what [`EncoderWeights::fold_and_quantize`] returned for `graph`.
    pub fn new(
        graph: &Graph,
        input_size: u32,
        weights: &EncoderWeights,
        floats: &[FloatLayer],
        activations: &BTreeMap<TensorId, ActivationQuant>,
    ) -> Result<Self> {
        let model = if activations.is_empty() {
            CandleGraph::unfolded(graph, &weights.unfolded(floats)?)?
        } else {
            CandleGraph::bundle(graph, weights, activations)?
        };
        Ok(Self {
            dim: model.feature_dim(),
            model,
            size: input_size as usize,
        })
    }
}

impl Embedder for ReferenceEmbedder {
    fn name(&self) -> &str {
        "reference"
    }

    fn feature_dim(&self) -> usize {
        self.dim
    }

    fn embed_into(
        &mut self,
        inputs: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> std::result::Result<(), BundleError> {
        let per = 3 * self.size * self.size;
        if inputs.len() != n * per || out.len() != n * self.dim {
            return Err(BundleError::Runtime {
                why: format!(
                    "{} inputs / {} outputs for {n} images",
                    inputs.len(),
                    out.len()
                ),
            });
        }
        let mut run = || -> candle_core::Result<()> {
            for (chunk, dst) in inputs
                .chunks(CHUNK * per)
                .zip(out.chunks_mut(CHUNK * self.dim))
            {
                let x = Tensor::from_slice(
                    chunk,
                    (chunk.len() / per, 3, self.size, self.size),
                    &Device::Cpu,
                )?;
                dst.copy_from_slice(&self.model.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(())
        };
        run().map_err(|e| BundleError::Runtime { why: e.to_string() })
    }

    fn has_taps(&self) -> bool {
        true
    }

    fn embed_taps(
        &mut self,
        input: &[f32],
        out: &mut [f32],
        taps: &mut [(TensorId, Vec<f32>)],
    ) -> std::result::Result<(), BundleError> {
        let s = self.size;
        if input.len() != 3 * s * s || out.len() != self.dim {
            return Err(BundleError::runtime(format!(
                "{} inputs / {} outputs for one image",
                input.len(),
                out.len()
            )));
        }
        let mut run = || -> candle_core::Result<()> {
            let x = Tensor::from_slice(input, (1, 3, s, s), &Device::Cpu)?;
            let mut want: Vec<TensorId> = vec![self.model.graph().output];
            want.extend(taps.iter().map(|(t, _)| *t));
            let got = self.model.forward_tensors(&x, &want)?;
            out.copy_from_slice(&got[0].flatten_all()?.to_vec1::<f32>()?);
            for ((_, buf), t) in taps.iter_mut().zip(&got[1..]) {
                // [1, C, H, W] -> HWC
                let hwc = t
                    .squeeze(0)?
                    .permute((1, 2, 0))?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                if hwc.len() != buf.len() {
                    candle_core::bail!("tap of {} values for a buffer of {}", hwc.len(), buf.len());
                }
                buf.copy_from_slice(&hwc);
            }
            Ok(())
        };
        run().map_err(|e| BundleError::Runtime { why: e.to_string() })
    }
}

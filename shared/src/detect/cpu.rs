//! The CPU backend: the bundle's folded graph with its int8 weights dequantized to f32 at load,
//! run by [`crate::model::graph::candle::CandleGraph`].

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::Embedder;
use crate::bundle::{Bundle, BundleError, EncoderWeights};
use crate::model::graph::candle::CandleGraph;
use crate::model::graph::{Graph, TensorId};
use crate::quant::ActivationQuant;

/// The folded encoder on the CPU.
#[derive(Debug)]
pub struct CpuEmbedder {
    model: CandleGraph,
    size: usize,
    dim: usize,
}

/// Images per forward pass (bounds the activation memory of a large batch).
const CHUNK: usize = 16;

impl CpuEmbedder {
    pub fn new(bundle: &Bundle) -> Result<Self, BundleError> {
        let m = &bundle.manifest.model;
        Self::from_weights(
            &m.graph,
            &bundle.encoder,
            &bundle.manifest.activation_quant(),
            m.input_size,
        )
    }

    /// From the folded weights and activation quantization alone (the exporter, before the
    /// bundle exists).
    pub fn from_weights(
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
        input_size: u32,
    ) -> Result<Self, BundleError> {
        let model =
            CandleGraph::bundle(graph, weights, activations).map_err(BundleError::runtime)?;
        Ok(Self {
            dim: model.feature_dim(),
            model,
            size: input_size as usize,
        })
    }
}

impl Embedder for CpuEmbedder {
    fn name(&self) -> &str {
        "cpu"
    }

    fn feature_dim(&self) -> usize {
        self.dim
    }

    fn embed_into(&mut self, inputs: &[f32], n: usize, out: &mut [f32]) -> Result<(), BundleError> {
        let per = 3 * self.size * self.size;
        if inputs.len() != n * per || out.len() != n * self.dim {
            return Err(BundleError::runtime(format!(
                "{} input values and {} outputs for {n} images of 3x{s}x{s}",
                inputs.len(),
                out.len(),
                s = self.size
            )));
        }
        for (chunk, dst) in inputs
            .chunks(CHUNK * per)
            .zip(out.chunks_mut(CHUNK * self.dim))
        {
            let b = chunk.len() / per;
            let x = Tensor::from_slice(chunk, (b, 3, self.size, self.size), &Device::Cpu)
                .map_err(BundleError::runtime)?;
            let f: Vec<f32> = self
                .model
                .forward(&x)
                .and_then(|f| f.flatten_all())
                .and_then(|f| f.to_vec1())
                .map_err(BundleError::runtime)?;
            dst.copy_from_slice(&f);
        }
        Ok(())
    }
}

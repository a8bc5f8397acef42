//! The CUDA backend: the bundle's graph on candle's CUDA device ([`CandleGraph::to_device`]),
//! with the same semantics as the reference path. Integer convolutions of u8 activations run on
//! integer-valued f64 tensors (exact), the quantization of each input is done with tensor ops on
//! the GPU ([`crate::model::graph::candle::quantize_centered`], bit for bit the CPU's), the
//! f32 layers run in f32. What differs from the CPU executor is the summation order of candle's
//! f32 convolutions (and of depthwise ones, which off the CPU are candle's grouped convolution),
//! so parity is a tolerance, checked by the bundle's self-test on this backend at flash.
//!
//! Built with the `cuda` feature (candle's CUDA device; see the README for building it without a
//! system toolkit). Without it, [`CudaEmbedder::new`] says so. The same code runs on candle's CPU
//! device in the tests (`shared/tests/candle_backend.rs`), which checks everything but the device.

use candle_core::{Device, Tensor};

use super::Embedder;
use crate::bundle::{Bundle, BundleError};
use crate::model::graph::candle::CandleGraph;

/// Images per forward pass.
const CHUNK: usize = 32;

#[derive(Debug)]
pub struct CudaEmbedder {
    model: CandleGraph,
    device: Device,
    label: String,
    size: usize,
    dim: usize,
}

impl CudaEmbedder {
    /// On CUDA device `ordinal`.
    pub fn new(bundle: &Bundle, ordinal: usize) -> Result<Self, BundleError> {
        let device = Device::new_cuda(ordinal).map_err(|e| {
            BundleError::runtime(if cfg!(feature = "cuda") {
                format!("no CUDA device {ordinal}: {e}")
            } else {
                "this build has no CUDA support: build with `--features cuda`".to_string()
            })
        })?;
        Self::on(bundle, device, format!("cuda:{ordinal}"))
    }

    /// On any candle device (the tests use the CPU); `label` names it for status pages.
    pub fn on(bundle: &Bundle, device: Device, label: String) -> Result<Self, BundleError> {
        let m = &bundle.manifest.model;
        let model = CandleGraph::bundle(
            &m.graph,
            &bundle.encoder,
            &bundle.manifest.activation_quant(),
        )
        .map_err(|e| BundleError::runtime(e.to_string()))?
        .to_device(&device)
        .map_err(|e| BundleError::runtime(format!("loading the encoder onto {label}: {e}")))?;
        Ok(Self {
            dim: model.feature_dim(),
            model,
            device,
            label,
            size: m.input_size as usize,
        })
    }
}

impl Embedder for CudaEmbedder {
    fn name(&self) -> &str {
        "cuda"
    }

    fn feature_dim(&self) -> usize {
        self.dim
    }

    fn device(&self) -> String {
        format!("{} (candle)", self.label)
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
        let mut run = || -> candle_core::Result<()> {
            for (chunk, dst) in inputs
                .chunks(CHUNK * per)
                .zip(out.chunks_mut(CHUNK * self.dim))
            {
                let x = Tensor::from_slice(
                    chunk,
                    (chunk.len() / per, 3, self.size, self.size),
                    &self.device,
                )?;
                let y = self.model.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
                dst.copy_from_slice(&y);
            }
            Ok(())
        };
        run().map_err(|e| BundleError::runtime(format!("{}: {e}", self.label)))
    }
}

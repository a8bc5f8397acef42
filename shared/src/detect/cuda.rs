//! The CUDA backend: the bundle's graph on candle's CUDA device ([`CandleGraph::to_device`]).
//!
//! Two [`Precision`]s for the dense convolutions:
//! - `exact` (the default): the reference path's semantics. Integer convolutions of u8
//!   activations are exact sums rounded once to f32, computed as f32 convolutions of integer
//!   tensors whose partial sums provably stay below 2^24 (one, or two over the input's high and
//!   low 4 bits; f64 only past a fan-in of ~8000: `candle::integer_conv`), so GPUs run them at
//!   their f32 rate, not their f64 one (a sliver on Orin). The quantization of each input is
//!   done with tensor ops on the GPU ([`crate::model::graph::candle::quantize_centered`], bit for
//!   bit the CPU's), the f32 layers run in f32. What differs from the CPU executor is the
//!   summation order of candle's f32 convolutions, so parity is a tolerance, checked by the
//!   bundle's self-test on this backend at flash (on the CPU device, u8 bundles match bit for
//!   bit).
//! - `f16`: every dense convolution that is not an integer one on f16 operands, with f32
//!   accumulation and an f16 result; the integer ones exact as above (in f16 they would move
//!   quantization steps: `crate::model::graph::candle`), everything else f32
//!   ([`CandleGraph::with_precision`]). For f32-activation bundles on GPUs whose f16 rate is a
//!   multiple of their f32 one (tensor cores).
//!   It does not hold the exporter's self-test tolerance (1e-4 of the embedding's norm, 1e-5
//!   in distance) on every bundle: see [`F16_EMBEDDING_REL`]. That is why `exact` is the
//!   default: the flash self-test would refuse such a bundle on f16.
//!
//! Depthwise convolutions run as one multiply and one add per kernel tap over whole tensors, in
//! the CPU executor's order (bit for bit its f32 result), not as candle's grouped convolution.
//!
//! Built with the `cuda` feature (candle's CUDA device; see the README for building it without a
//! system toolkit). Without it, [`CudaEmbedder::new`] says so. The same code runs on candle's CPU
//! device in the tests (`shared/tests/candle_backend.rs`), which checks everything but the device.

use candle_core::{Device, Tensor};

use super::Embedder;
use crate::bundle::{Bundle, BundleError};
use crate::model::graph::candle::CandleGraph;
pub use crate::model::graph::candle::Precision;

/// Self-test tolerance a bundle needs to run with [`Precision::F16`]: max |error| relative to
/// the embedding's L2 norm, as `Tolerance::embedding_rel` (the exporter writes 1e-4). Measured
/// on the random bundles of both backbones at 64 px on candle's CPU device
/// (`shared/tests/candle_backend.rs`): at most 3.1e-4 in the self-test (ResNet-18 x0.125, f32
/// activations; EfficientNet-Lite0 7.8e-5) and 2.6e-4 against the CPU executor; u8 bundles
/// have no f32 dense convolution, so there f16 is `exact`. The wgpu executor's f16 bound
/// (`exec::wgpu::options`, measured 3.8e-4 on lavapipe), about 3x the worst measured; trained
/// weights at 224 px have not been measured.
pub const F16_EMBEDDING_REL: f64 = 1e-3;
/// As [`F16_EMBEDDING_REL`], for `Tolerance::distance_abs` (the exporter writes 1e-5): measured
/// at most 3.9e-6; 1e-4 stays below half a calibrated bottle threshold (2.7e-4).
pub const F16_DISTANCE_ABS: f64 = 1e-4;

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
    /// On CUDA device `ordinal`, in the default precision ([`Precision::Exact`]).
    pub fn new(bundle: &Bundle, ordinal: usize) -> Result<Self, BundleError> {
        Self::with_precision(bundle, ordinal, Precision::default())
    }

    /// On CUDA device `ordinal`, the dense convolutions in `precision`.
    pub fn with_precision(
        bundle: &Bundle,
        ordinal: usize,
        precision: Precision,
    ) -> Result<Self, BundleError> {
        let device = Device::new_cuda(ordinal).map_err(|e| {
            BundleError::runtime(if cfg!(feature = "cuda") {
                format!("no CUDA device {ordinal}: {e}")
            } else {
                "this build has no CUDA support: build with `--features cuda`".to_string()
            })
        })?;
        Self::on(bundle, device, format!("cuda:{ordinal}"), precision)
    }

    /// On any candle device (the tests use the CPU); `label` names it for status pages.
    pub fn on(
        bundle: &Bundle,
        device: Device,
        label: String,
        precision: Precision,
    ) -> Result<Self, BundleError> {
        let m = &bundle.manifest.model;
        let model = CandleGraph::bundle(
            &m.graph,
            &bundle.encoder,
            &bundle.manifest.activation_quant(),
        )
        .map_err(|e| BundleError::runtime(e.to_string()))?
        .to_device(&device)
        .and_then(|g| g.with_precision(precision))
        .map_err(|e| BundleError::runtime(format!("loading the encoder onto {label}: {e}")))?;
        Ok(Self {
            dim: model.feature_dim(),
            model,
            device,
            label,
            size: m.input_size as usize,
        })
    }

    pub fn precision(&self) -> Precision {
        self.model.precision()
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
        format!("{} (candle, {})", self.label, self.precision())
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

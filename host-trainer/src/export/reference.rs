//! The self-test's reference path: the trainable ResNet-18 graph (convolution, then BatchNorm in
//! evaluation mode, unfolded) loaded with the *dequantized* bundle weights unfolded again and the
//! run's own BatchNorm parameters. It computes the same function as the bundle's folded int8
//! graph through different code (no folding, separate BatchNorm, the trainer's module), so the
//! bundle's expected values are an independent check of the folding, the quantization, the
//! serialisation and the device's graph.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::bundle::weights::FloatLayer;
use firm_shared::bundle::{BundleError, Embedder, EncoderWeights};
use firm_shared::model::{Encoder, EncoderConfig, params};

use crate::error::{Error, Result};

/// Images per forward pass.
const CHUNK: usize = 32;

#[derive(Debug)]
pub struct ReferenceEmbedder {
    encoder: Encoder,
    size: usize,
    dim: usize,
}

impl ReferenceEmbedder {
    /// `checkpoint`: the run's weights (BatchNorm parameters come from there); `weights` and
    /// `floats`: what [`EncoderWeights::fold_and_quantize`] returned.
    pub fn new(
        cfg: &EncoderConfig,
        input_size: u32,
        checkpoint: &std::path::Path,
        weights: &EncoderWeights,
        floats: &[FloatLayer],
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let encoder = Encoder::new(
            cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        // Every encoder variable from the checkpoint (extra head tensors are ignored) ...
        params::load(&varmap, checkpoint, params::Part::All)?;
        // ... then the convolutions replaced by the unfolded dequantized weights.
        for (name, w) in weights.unfolded(floats)? {
            let var = params::find(&varmap, &name).ok_or_else(|| {
                Error::invalid("reference path", format!("the encoder has no `{name}`"))
            })?;
            var.set(&Tensor::from_vec(w, var.dims(), &Device::Cpu)?)?;
        }
        Ok(Self {
            dim: encoder.feature_dim(),
            encoder,
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

    fn embed(&mut self, inputs: &[f32], n: usize) -> std::result::Result<Vec<f32>, BundleError> {
        let per = 3 * self.size * self.size;
        let run = || -> candle_core::Result<Vec<f32>> {
            let mut out = Vec::with_capacity(n * self.dim);
            for chunk in inputs.chunks(CHUNK * per) {
                let x = Tensor::from_slice(
                    chunk,
                    (chunk.len() / per, 3, self.size, self.size),
                    &Device::Cpu,
                )?;
                out.extend(
                    self.encoder
                        .forward_t(&x, false)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
            Ok(out)
        };
        run().map_err(|e| BundleError::Runtime { why: e.to_string() })
    }
}

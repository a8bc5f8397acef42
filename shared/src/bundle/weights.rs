//! `encoder.safetensors`: the encoder with BatchNorm folded in, int8 per output channel.
//!
//! Per folded layer `L` (the convolution's torchvision name, see
//! [`crate::model::folded::resnet18_layers`]):
//! - `L.weight`: `I8 [c_out, c_in, k, k]` and `L.scale`: `F32 [c_out]`, or, for a layer kept in
//!   float, `L.weight`: `F32 [c_out, c_in, k, k]` and no scale;
//! - `L.bias`: `F32 [c_out]` (the folded BatchNorm shift).
//!
//! Nothing else: the reader rebuilds the layer list from the manifest's encoder configuration
//! and refuses missing, extra or reshaped tensors.

use std::collections::BTreeSet;

use candle_core::Device;
use safetensors::tensor::Dtype;

use super::BundleError;
use super::tensors::{OwnedTensor, TensorFile};
use crate::model::EncoderConfig;
use crate::model::folded::{FoldedResNet18, LayerSpec, resnet18_layers};
use crate::quant::{self, BnParams, Int8Weights};

pub const MEMBER: &str = "encoder.safetensors";
/// The quantization scheme's name in the manifest.
pub const SCHEME: &str = "int8-symmetric-per-output-channel";

/// Weights of one folded layer.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerWeight {
    Int8(Int8Weights),
    F32(Vec<f32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FoldedLayer {
    pub spec: LayerSpec,
    pub weight: LayerWeight,
    pub bias: Vec<f32>,
}

impl FoldedLayer {
    /// The f32 weights the inference graph multiplies with.
    pub fn dequantized(&self) -> Vec<f32> {
        match &self.weight {
            LayerWeight::Int8(q) => q.dequantize(),
            LayerWeight::F32(w) => w.clone(),
        }
    }
}

/// The whole folded encoder, layers in [`resnet18_layers`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderWeights {
    pub layers: Vec<FoldedLayer>,
}

/// The float weights of one convolution and its BatchNorm, as the trainer holds them.
#[derive(Debug, Clone)]
pub struct FloatLayer {
    pub conv_weight: Vec<f32>,
    pub bn: BnParams,
}

impl EncoderWeights {
    /// Fold and quantize. `get(name)` returns the float values of a trained tensor by its
    /// torchvision name (`conv1.weight`, `bn1.running_var`, ...). Layers named in `float_layers`
    /// stay f32. Also returns the float layers read, for the reference path.
    pub fn fold_and_quantize(
        cfg: &EncoderConfig,
        mut get: impl FnMut(&str) -> crate::Result<Vec<f32>>,
        float_layers: &[String],
    ) -> crate::Result<(Self, Vec<FloatLayer>)> {
        let specs = resnet18_layers(cfg)?;
        if let Some(unknown) = float_layers
            .iter()
            .find(|n| !specs.iter().any(|s| &s.conv == *n))
        {
            return Err(crate::Error::invalid(
                "float layer",
                format!(
                    "`{unknown}` is not a layer of the encoder; layers: {}",
                    specs
                        .iter()
                        .map(|s| s.conv.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let mut layers = Vec::with_capacity(specs.len());
        let mut floats = Vec::with_capacity(specs.len());
        for spec in specs {
            let w = get(&format!("{}.weight", spec.conv))?;
            if w.len() != spec.weight_len() {
                return Err(crate::Error::invalid(
                    "encoder weights",
                    format!(
                        "{}.weight has {} values, expected {:?}",
                        spec.conv,
                        w.len(),
                        spec.weight_shape()
                    ),
                ));
            }
            let bn = BnParams {
                weight: get(&format!("{}.weight", spec.bn))?,
                bias: get(&format!("{}.bias", spec.bn))?,
                running_mean: get(&format!("{}.running_mean", spec.bn))?,
                running_var: get(&format!("{}.running_var", spec.bn))?,
                eps: cfg.bn_eps,
            };
            let folded = quant::fold(&w, &bn)?;
            let weight = if float_layers.contains(&spec.conv) {
                LayerWeight::F32(folded.weight)
            } else {
                LayerWeight::Int8(quant::quantize_int8(&folded.weight, spec.c_out)?)
            };
            layers.push(FoldedLayer {
                spec,
                weight,
                bias: folded.bias,
            });
            floats.push(FloatLayer { conv_weight: w, bn });
        }
        Ok((Self { layers }, floats))
    }

    /// Names of the layers kept in f32.
    pub fn float_layers(&self) -> Vec<String> {
        self.layers
            .iter()
            .filter(|l| matches!(l.weight, LayerWeight::F32(_)))
            .map(|l| l.spec.conv.clone())
            .collect()
    }

    pub fn to_safetensors(&self) -> Result<Vec<u8>, BundleError> {
        let mut t = Vec::new();
        for l in &self.layers {
            let name = &l.spec.conv;
            let shape = l.spec.weight_shape();
            match &l.weight {
                LayerWeight::Int8(q) => {
                    t.push(OwnedTensor::i8(format!("{name}.weight"), &shape, &q.q));
                    t.push(OwnedTensor::f32(
                        format!("{name}.scale"),
                        &[l.spec.c_out],
                        &q.scale,
                    ));
                }
                LayerWeight::F32(w) => {
                    t.push(OwnedTensor::f32(format!("{name}.weight"), &shape, w))
                }
            }
            t.push(OwnedTensor::f32(
                format!("{name}.bias"),
                &[l.spec.c_out],
                &l.bias,
            ));
        }
        super::tensors::serialize(MEMBER, &t)
    }

    /// Read the member for the graph `cfg` describes.
    pub fn from_safetensors(bytes: &[u8], cfg: &EncoderConfig) -> Result<Self, BundleError> {
        let specs = resnet18_layers(cfg)
            .map_err(|e| BundleError::manifest(format!("model.encoder: {e}")))?;
        let f = TensorFile::parse(MEMBER, bytes)?;
        let mut expected = BTreeSet::new();
        let mut layers = Vec::with_capacity(specs.len());
        for spec in specs {
            let name = spec.conv.clone();
            let shape = spec.weight_shape();
            let wname = format!("{name}.weight");
            let weight = match f.dtype(&wname)? {
                Dtype::I8 => {
                    let q = f.i8(&wname, &shape)?;
                    let sname = format!("{name}.scale");
                    let scale = f.f32(&sname, &[spec.c_out])?;
                    if scale.iter().any(|&s| s < 0.0) {
                        return Err(BundleError::tensor(MEMBER, &sname, "has a negative scale"));
                    }
                    expected.insert(sname);
                    LayerWeight::Int8(Int8Weights { q, scale })
                }
                _ => LayerWeight::F32(f.f32(&wname, &shape)?),
            };
            expected.insert(wname);
            let bname = format!("{name}.bias");
            let bias = f.f32(&bname, &[spec.c_out])?;
            expected.insert(bname);
            layers.push(FoldedLayer { spec, weight, bias });
        }
        f.expect_exactly(&expected)?;
        Ok(Self { layers })
    }

    /// The folded inference graph with these weights (dequantized to f32 once, here).
    pub fn build(
        &self,
        cfg: &EncoderConfig,
        device: &Device,
    ) -> Result<FoldedResNet18, BundleError> {
        let w: Vec<(Vec<f32>, Vec<f32>)> = self
            .layers
            .iter()
            .map(|l| (l.dequantized(), l.bias.clone()))
            .collect();
        FoldedResNet18::new(cfg, &w, device).map_err(BundleError::runtime)
    }

    /// Weights of the reference path: the dequantized folded weights unfolded again, paired
    /// with the original BatchNorm of each layer (see [`crate::quant::unfold`]). `floats` comes
    /// from [`Self::fold_and_quantize`].
    pub fn unfolded(&self, floats: &[FloatLayer]) -> crate::Result<Vec<(String, Vec<f32>)>> {
        self.layers
            .iter()
            .zip(floats)
            .map(|(l, f)| {
                let w = quant::unfold(&l.dequantized(), &f.bn, &f.conv_weight)?;
                Ok((format!("{}.weight", l.spec.conv), w))
            })
            .collect()
    }
}

//! `encoder.safetensors`: the encoder's convolutions with BatchNorm folded in, int8 per output
//! channel.
//!
//! Per convolution `L` of the manifest's graph ([`crate::model::graph`], `L` is its `name`, the
//! trainable model's parameter prefix):
//! - `L.weight`: `I8 [c_out, c_in / groups, k, k]` and `L.scale`: `F32 [c_out]`, or, for a layer
//!   kept in float, `L.weight`: `F32 [c_out, c_in / groups, k, k]` and no scale;
//! - `L.bias`: `F32 [c_out]` (the folded BatchNorm shift).
//!
//! Nothing else: the reader takes the layer list from the graph and refuses missing, extra or
//! reshaped tensors. Which tensors exist follows from the graph alone, whatever the backbone.

use std::collections::BTreeSet;

use safetensors::tensor::Dtype;

use super::BundleError;
use super::tensors::{OwnedTensor, TensorFile};
use crate::model::graph::{Graph, TensorId};
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

/// One convolution of the graph with its folded weights.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedLayer {
    /// The graph convolution's name.
    pub name: String,
    /// `[c_out, c_in / groups, k, k]`.
    pub shape: [usize; 4],
    pub weight: LayerWeight,
    pub bias: Vec<f32>,
}

impl FoldedLayer {
    pub fn c_out(&self) -> usize {
        self.shape[0]
    }

    /// The f32 weights the graph multiplies with (`q * scale` for int8 layers).
    pub fn dequantized(&self) -> Vec<f32> {
        match &self.weight {
            LayerWeight::Int8(q) => q.dequantize(),
            LayerWeight::F32(w) => w.clone(),
        }
    }
}

/// The whole folded encoder, one layer per graph convolution, in graph order.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderWeights {
    pub layers: Vec<FoldedLayer>,
}

/// The float weights of one convolution and its BatchNorm, as the trainer holds them (the
/// reference path runs them unfolded).
#[derive(Debug, Clone)]
pub struct FloatLayer {
    pub conv_weight: Vec<f32>,
    pub bn: BnParams,
}

impl EncoderWeights {
    /// Fold and quantize every convolution of `graph`. `get(name)` returns the float values of
    /// a trained tensor by its parameter name (`conv1.weight`, `bn1.running_var`, ...). Layers
    /// named in `float_layers` stay f32. Also returns the float layers read, for the reference
    /// path.
    pub fn fold_and_quantize(
        graph: &Graph,
        mut get: impl FnMut(&str) -> crate::Result<Vec<f32>>,
        float_layers: &[String],
    ) -> crate::Result<(Self, Vec<FloatLayer>)> {
        graph.validate()?;
        if let Some(unknown) = float_layers
            .iter()
            .find(|n| !graph.convs().any(|c| &c.name == *n))
        {
            return Err(crate::Error::invalid(
                "float layer",
                format!(
                    "`{unknown}` is not a layer of the encoder; layers: {}",
                    graph
                        .convs()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let mut layers = Vec::new();
        let mut floats = Vec::new();
        for conv in graph.convs() {
            let w = get(&format!("{}.weight", conv.name))?;
            if w.len() != conv.weight_len() {
                return Err(crate::Error::invalid(
                    "encoder weights",
                    format!(
                        "{}.weight has {} values, expected {:?}",
                        conv.name,
                        w.len(),
                        conv.weight_shape()
                    ),
                ));
            }
            let bn_name = &conv.fold.bn;
            let bn = BnParams {
                weight: get(&format!("{bn_name}.weight"))?,
                bias: get(&format!("{bn_name}.bias"))?,
                running_mean: get(&format!("{bn_name}.running_mean"))?,
                running_var: get(&format!("{bn_name}.running_var"))?,
                eps: conv.fold.eps,
            };
            let folded = quant::fold(&w, &bn)?;
            let weight = if float_layers.contains(&conv.name) {
                LayerWeight::F32(folded.weight)
            } else {
                LayerWeight::Int8(quant::quantize_int8(&folded.weight, conv.c_out)?)
            };
            layers.push(FoldedLayer {
                name: conv.name.clone(),
                shape: conv.weight_shape(),
                weight,
                bias: folded.bias,
            });
            floats.push(FloatLayer { conv_weight: w, bn });
        }
        Ok((Self { layers }, floats))
    }

    /// The tensors an int8 executor may read as u8: those read by at least one dense
    /// convolution, where every dense convolution reading them has int8 weights (a layer kept in
    /// f32 reads its input in f32, and so do the other readers of that tensor), and whose values
    /// every correct executor computes bit for bit ("exact": the input image, and the outputs of
    /// int8 convolutions, depthwise convolutions and max-pools of exact tensors, with exact
    /// residuals). An f32 dense convolution sums in an order each executor chooses, so its output
    /// is never quantized: a rounding difference would flip quantization steps.
    pub fn int8_inputs(&self, graph: &Graph) -> Vec<TensorId> {
        // Tensors found to have an f32 reader; each round can only add to it, so this ends.
        let mut excluded = std::collections::BTreeSet::new();
        loop {
            let readers = self.int8_readers(graph, &excluded);
            let vetoed: Vec<TensorId> = readers
                .iter()
                .filter(|(t, all)| !**all && !excluded.contains(*t))
                .map(|(t, _)| *t)
                .collect();
            if vetoed.is_empty() {
                return readers
                    .into_iter()
                    .filter_map(|(t, all)| all.then_some(t))
                    .collect();
            }
            excluded.extend(vetoed);
        }
    }

    /// Per tensor read by a dense convolution: whether every such reader can read it as u8, given
    /// tensors already known to stay f32.
    fn int8_readers(
        &self,
        graph: &Graph,
        excluded: &std::collections::BTreeSet<TensorId>,
    ) -> std::collections::BTreeMap<TensorId, bool> {
        use crate::model::graph::Op;
        let mut exact = vec![false; graph.tensors()];
        exact[0] = true;
        let mut readers = std::collections::BTreeMap::new();
        let mut layers = self.layers.iter();
        for (i, op) in graph.ops.iter().enumerate() {
            exact[i + 1] = match op {
                Op::Conv(c) => {
                    let l = layers.next().expect("one layer per convolution");
                    let residual_exact = c.residual.is_none_or(|r| exact[r.tensor]);
                    if c.groups != 1 {
                        exact[c.input] && residual_exact
                    } else {
                        let ok = matches!(l.weight, LayerWeight::Int8(_))
                            && exact[c.input]
                            && !excluded.contains(&c.input);
                        *readers.entry(c.input).or_insert(true) &= ok;
                        ok && residual_exact
                    }
                }
                Op::MaxPool(p) => exact[p.input],
                Op::GlobalAvgPool { .. } => false,
            };
        }
        readers
    }

    /// Names of the layers kept in f32.
    pub fn float_layers(&self) -> Vec<String> {
        self.layers
            .iter()
            .filter(|l| matches!(l.weight, LayerWeight::F32(_)))
            .map(|l| l.name.clone())
            .collect()
    }

    pub fn to_safetensors(&self) -> Result<Vec<u8>, BundleError> {
        let mut t = Vec::new();
        for l in &self.layers {
            let name = &l.name;
            match &l.weight {
                LayerWeight::Int8(q) => {
                    t.push(OwnedTensor::i8(format!("{name}.weight"), &l.shape, &q.q));
                    t.push(OwnedTensor::f32(
                        format!("{name}.scale"),
                        &[l.c_out()],
                        &q.scale,
                    ));
                }
                LayerWeight::F32(w) => {
                    t.push(OwnedTensor::f32(format!("{name}.weight"), &l.shape, w))
                }
            }
            t.push(OwnedTensor::f32(
                format!("{name}.bias"),
                &[l.c_out()],
                &l.bias,
            ));
        }
        super::tensors::serialize(MEMBER, &t)
    }

    /// Read the member for the convolutions of `graph`.
    pub fn from_safetensors(bytes: &[u8], graph: &Graph) -> Result<Self, BundleError> {
        let f = TensorFile::parse(MEMBER, bytes)?;
        let mut expected = BTreeSet::new();
        let mut layers = Vec::new();
        for conv in graph.convs() {
            let name = conv.name.clone();
            let shape = conv.weight_shape();
            let wname = format!("{name}.weight");
            let weight = match f.dtype(&wname)? {
                Dtype::I8 => {
                    let q = f.i8(&wname, &shape)?;
                    let sname = format!("{name}.scale");
                    let scale = f.f32(&sname, &[conv.c_out])?;
                    if scale.iter().any(|&s| !(s >= 0.0 && s.is_finite())) {
                        return Err(BundleError::tensor(
                            MEMBER,
                            &sname,
                            "has a negative or non-finite scale",
                        ));
                    }
                    if q.contains(&i8::MIN) {
                        return Err(BundleError::tensor(
                            MEMBER,
                            &wname,
                            "holds -128, outside the symmetric range [-127, 127]",
                        ));
                    }
                    expected.insert(sname);
                    LayerWeight::Int8(Int8Weights { q, scale })
                }
                _ => LayerWeight::F32(f.f32(&wname, &shape)?),
            };
            expected.insert(wname);
            let bname = format!("{name}.bias");
            let bias = f.f32(&bname, &[conv.c_out])?;
            expected.insert(bname);
            layers.push(FoldedLayer {
                name,
                shape,
                weight,
                bias,
            });
        }
        f.expect_exactly(&expected)?;
        Ok(Self { layers })
    }

    /// Weights of the reference path: the dequantized folded weights unfolded again, paired
    /// with the original BatchNorm of each layer (see [`crate::quant::unfold`]). `floats` comes
    /// from [`Self::fold_and_quantize`].
    pub fn unfolded(&self, floats: &[FloatLayer]) -> crate::Result<Vec<(Vec<f32>, BnParams)>> {
        if floats.len() != self.layers.len() {
            return Err(crate::Error::invalid(
                "reference weights",
                format!(
                    "{} float layers for {} folded ones",
                    floats.len(),
                    self.layers.len()
                ),
            ));
        }
        self.layers
            .iter()
            .zip(floats)
            .map(|(l, f)| {
                let w = quant::unfold(&l.dequantized(), &f.bn, &f.conv_weight)?;
                Ok((w, f.bn.clone()))
            })
            .collect()
    }
}

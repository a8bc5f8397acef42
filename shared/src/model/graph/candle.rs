//! The graph run op by op on candle tensors (NCHW, f32, the trainer's convolution ops): the
//! self-test's reference path and the check that each backbone's graph computes its trainable
//! model (`shared/tests/graph.rs`).
//!
//! Three forms of the same function:
//! - **unfolded** ([`CandleGraph::unfolded`]): every convolution followed by its BatchNorm in
//!   evaluation mode, `(y - mean) * (gamma / sqrt(var + eps)) + beta`, as separate tensor ops;
//!   the exporter loads it with the dequantized bundle weights unfolded again
//!   ([`crate::quant::unfold`]) and the run's own BatchNorm, so the expected values of an
//!   f32-activation bundle come from a different computation than the executors' folded one;
//! - **folded** ([`CandleGraph::folded`]): convolution plus bias in f32;
//! - **bundle** ([`CandleGraph::bundle`]): the int8 semantics of [`crate::quant`] exactly. A
//!   dense convolution whose input tensor is quantized computes `sum (q - zp) * w_q` as an f64
//!   convolution of integer-valued tensors (exact: every partial sum is an integer below 2^53),
//!   then `acc * (s_w * s_x) + bias` in f32, then residual and clamp as separate f32 ops; the
//!   depthwise convolution sums in the order the executors must use (kernel rows, then columns).
//!   Every value a later quantization sees is therefore bit-identical to what a correct int8
//!   executor computes, and the self-test of an int8 bundle can keep a tight tolerance: a
//!   quantization step flipped by a rounding difference would otherwise cascade.

use std::collections::BTreeMap;

use candle_core::{D, Device, Result, Tensor};

use super::{Activation, Conv, Graph, Op, TensorId};
use crate::bundle::EncoderWeights;
use crate::bundle::weights::LayerWeight;
use crate::model::{conv, pool};
use crate::quant::{self, ActivationQuant, BnParams};

/// How one convolution's output is normalised.
#[derive(Debug, Clone)]
enum Norm {
    Bias(Tensor),
    BatchNorm {
        mean: Tensor,
        factor: Tensor,
        shift: Tensor,
    },
}

#[derive(Debug, Clone)]
struct Layer {
    /// f32 weights (dequantized for an int8 layer).
    weight: Tensor,
    norm: Norm,
    /// For an int8 layer: the integer weights as f64 and the per-channel weight scale.
    int8: Option<(Tensor, Vec<f32>)>,
    /// Depthwise weights `[c][k][k]`, for the ordered loops.
    depthwise: Option<Vec<f32>>,
}

/// A graph with its weights on candle's CPU device.
#[derive(Debug, Clone)]
pub struct CandleGraph {
    graph: Graph,
    layers: Vec<Layer>,
    quant: BTreeMap<TensorId, ActivationQuant>,
}

fn per_channel(v: &[f32], dev: &Device) -> Result<Tensor> {
    Tensor::from_slice(v, (1, v.len(), 1, 1), dev)
}

impl CandleGraph {
    fn check(graph: &Graph, n: usize) -> crate::Result<()> {
        graph.validate()?;
        let convs = graph.convs().count();
        if convs != n {
            return Err(crate::Error::invalid(
                "graph weights",
                format!("{n} layers for {convs} convolutions"),
            ));
        }
        Ok(())
    }

    fn weight(c: &Conv, w: &[f32], dev: &Device) -> crate::Result<Tensor> {
        if w.len() != c.weight_len() {
            return Err(crate::Error::invalid(
                "graph weights",
                format!(
                    "{}: {} values, expected {:?}",
                    c.name,
                    w.len(),
                    c.weight_shape()
                ),
            ));
        }
        Ok(Tensor::from_slice(w, &c.weight_shape(), dev)?)
    }

    /// Folded convolutions: one `(weight, bias)` per graph convolution, in graph order.
    pub fn folded(graph: &Graph, layers: &[(Vec<f32>, Vec<f32>)]) -> crate::Result<Self> {
        Self::check(graph, layers.len())?;
        let dev = Device::Cpu;
        let layers = graph
            .convs()
            .zip(layers)
            .map(|(c, (w, b))| {
                Ok(Layer {
                    weight: Self::weight(c, w, &dev)?,
                    norm: Norm::Bias(per_channel(b, &dev)?),
                    int8: None,
                    depthwise: c.is_depthwise().then(|| w.clone()),
                })
            })
            .collect::<crate::Result<_>>()?;
        Ok(Self {
            graph: graph.clone(),
            layers,
            quant: BTreeMap::new(),
        })
    }

    /// Bias-free convolutions each followed by its BatchNorm (evaluation mode).
    pub fn unfolded(graph: &Graph, layers: &[(Vec<f32>, BnParams)]) -> crate::Result<Self> {
        Self::check(graph, layers.len())?;
        let dev = Device::Cpu;
        let layers = graph
            .convs()
            .zip(layers)
            .map(|(c, (w, bn))| {
                if bn.channels() != c.c_out {
                    return Err(crate::Error::invalid(
                        "graph weights",
                        format!("{}: BatchNorm of {} channels", c.name, bn.channels()),
                    ));
                }
                let factor: Vec<f32> = bn.factors().iter().map(|&f| f as f32).collect();
                Ok(Layer {
                    weight: Self::weight(c, w, &dev)?,
                    norm: Norm::BatchNorm {
                        mean: per_channel(&bn.running_mean, &dev)?,
                        factor: per_channel(&factor, &dev)?,
                        shift: per_channel(&bn.bias, &dev)?,
                    },
                    int8: None,
                    depthwise: c.is_depthwise().then(|| w.clone()),
                })
            })
            .collect::<crate::Result<_>>()?;
        Ok(Self {
            graph: graph.clone(),
            layers,
            quant: BTreeMap::new(),
        })
    }

    /// A bundle's encoder with its exact int8 semantics: int8 layers whose input tensor is in
    /// `activations` run on integers, everything else in f32 with the dequantized weights.
    pub fn bundle(
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
    ) -> crate::Result<Self> {
        Self::check(graph, weights.layers.len())?;
        let dev = Device::Cpu;
        let layers = graph
            .convs()
            .zip(&weights.layers)
            .map(|(c, l)| {
                let w = l.dequantized();
                let int8 = match &l.weight {
                    LayerWeight::Int8(q) if c.groups == 1 => {
                        let v: Vec<f64> = q.q.iter().map(|&v| v as f64).collect();
                        Some((
                            Tensor::from_vec(v, &c.weight_shape(), &dev)?,
                            q.scale.clone(),
                        ))
                    }
                    _ => None,
                };
                Ok(Layer {
                    weight: Self::weight(c, &w, &dev)?,
                    norm: Norm::Bias(per_channel(&l.bias, &dev)?),
                    int8,
                    depthwise: c.is_depthwise().then_some(w),
                })
            })
            .collect::<crate::Result<_>>()?;
        Ok(Self {
            graph: graph.clone(),
            layers,
            quant: activations.clone(),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The same graph with its weights on `dev` (a CUDA device: the `cuda` backend). Off the
    /// CPU, depthwise convolutions run as candle's grouped convolution (its summation order, not
    /// the executors'); the integer convolutions and the quantization stay exact.
    pub fn to_device(&self, dev: &Device) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    weight: l.weight.to_device(dev)?,
                    norm: match &l.norm {
                        Norm::Bias(b) => Norm::Bias(b.to_device(dev)?),
                        Norm::BatchNorm {
                            mean,
                            factor,
                            shift,
                        } => Norm::BatchNorm {
                            mean: mean.to_device(dev)?,
                            factor: factor.to_device(dev)?,
                            shift: shift.to_device(dev)?,
                        },
                    },
                    int8: match &l.int8 {
                        Some((w, s)) => Some((w.to_device(dev)?, s.clone())),
                        None => None,
                    },
                    depthwise: l.depthwise.clone(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            graph: self.graph.clone(),
            layers,
            quant: self.quant.clone(),
        })
    }

    pub fn feature_dim(&self) -> usize {
        self.graph.feature_dim().expect("validated")
    }

    /// Images `[B, C, H, W]` -> pooled features `[B, feature_dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_tensors(x, &[self.graph.output])?.remove(0))
    }

    /// The tensors `want` (ids) for images `x`; taps come out as `[B, C, H, W]`.
    pub fn forward_tensors(&self, x: &Tensor, want: &[TensorId]) -> Result<Vec<Tensor>> {
        let g = &self.graph;
        // Last reader of each tensor, so intermediates are dropped as soon as possible.
        let mut last_use = vec![0usize; g.tensors()];
        for (i, op) in g.ops.iter().enumerate() {
            for t in op.inputs() {
                last_use[t] = i;
            }
        }
        let mut t: Vec<Option<Tensor>> = vec![None; g.tensors()];
        t[0] = Some(x.clone());
        let mut layer = 0;
        for (i, op) in g.ops.iter().enumerate() {
            let get = |id: TensorId| t[id].clone().expect("kept until its last use");
            let y = match op {
                Op::Conv(c) => {
                    let l = &self.layers[layer];
                    layer += 1;
                    let input = get(c.input);
                    let quantized = self.quant.get(&c.input).filter(|_| c.groups == 1);
                    let y = match (quantized, &l.int8, &l.depthwise) {
                        (Some(q), Some((wq, ws)), _) => int8_conv(&input, q, wq, ws, c)?,
                        (Some(_), None, _) => candle_core::bail!(
                            "{}: its input is quantized but its weights are f32",
                            c.name
                        ),
                        (None, _, Some(w)) if input.device().is_cpu() => {
                            depthwise_ordered(&input, w, c)?
                        }
                        (None, _, Some(_)) => {
                            conv::depthwise_conv2d(&input, &l.weight, c.stride, c.padding)?
                        }
                        (None, _, None) => conv::conv2d(&input, &l.weight, c.stride, c.padding)?,
                    };
                    let mut y = match &l.norm {
                        Norm::Bias(b) => y.broadcast_add(b)?,
                        Norm::BatchNorm {
                            mean,
                            factor,
                            shift,
                        } => y
                            .broadcast_sub(mean)?
                            .broadcast_mul(factor)?
                            .broadcast_add(shift)?,
                    };
                    let residual = c.residual.map(|r| (get(r.tensor), r.before_activation));
                    if let Some((r, true)) = &residual {
                        y = (y + r)?;
                    }
                    y = activation(&y, c.activation)?;
                    if let Some((r, false)) = &residual {
                        y = (y + r)?;
                    }
                    y
                }
                Op::MaxPool(p) => max_pool(&get(p.input), p.kernel, p.stride, p.padding)?,
                Op::GlobalAvgPool { input } => get(*input).mean(D::Minus1)?.mean(D::Minus1)?,
            };
            for id in op.inputs() {
                if last_use[id] == i && !want.contains(&id) {
                    t[id] = None;
                }
            }
            t[i + 1] = Some(y);
        }
        Ok(want
            .iter()
            .map(|&id| t[id].clone().expect("wanted tensors are kept"))
            .collect())
    }
}

fn activation(y: &Tensor, a: Activation) -> Result<Tensor> {
    match a {
        Activation::None => Ok(y.clone()),
        Activation::Relu => y.relu(),
        Activation::Relu6 => y.clamp(0f32, 6f32),
    }
}

/// `sum (q(x) - zp) * w_q` exactly (an f64 convolution of integers), then `* (s_w * s_x)` in
/// f32 (the bias follows in the caller, as a separate add).
fn int8_conv(x: &Tensor, q: &ActivationQuant, wq: &Tensor, ws: &[f32], c: &Conv) -> Result<Tensor> {
    let xq = quantize_centered(x, q)?.to_dtype(candle_core::DType::F64)?;
    let acc = xq
        .conv2d(wq, c.padding, c.stride, 1, 1)?
        .to_dtype(candle_core::DType::F32)?;
    let scale: Vec<f32> = ws
        .iter()
        .map(|&s| quant::combined_scale(s, q.scale))
        .collect();
    acc.broadcast_mul(&per_channel(&scale, x.device())?)
}

/// `quantize(x) - zp` of every element as f32 tensor ops on `x`'s device, bit for bit
/// [`ActivationQuant::quantize`] for finite `x`: `y = x * (1 / s)` (one f32 multiply), rounded
/// half to even (`round` rounds ties away from zero, so exact ties `y - floor(y) == 0.5` take
/// the even neighbour of `floor(y)` instead), plus `zp`, clamped to 0..=255, minus `zp`.
pub fn quantize_centered(x: &Tensor, q: &ActivationQuant) -> Result<Tensor> {
    let dev = x.device();
    let scalar = |v: f32| Tensor::new(v, dev);
    let y = x.broadcast_mul(&scalar(q.inv_scale())?)?;
    let fl = y.floor()?;
    let tie = (&y - &fl)?.broadcast_eq(&scalar(0.5)?)?;
    // floor(y) + (floor(y) mod 2): the even one of floor(y) and floor(y) + 1.
    let odd = (&fl - (fl.broadcast_mul(&scalar(0.5)?)?.floor()? * 2.0)?)?;
    let even = (&fl + odd)?;
    let r = tie.where_cond(&even, &y.round()?)?;
    let zp = q.zero_point as f32;
    (r + zp as f64)?.clamp(0f32, 255f32)? - zp as f64
}

/// Depthwise convolution summed per output in kernel order (rows, then columns; padding
/// skipped), one f32 multiply and one add per tap: the order the executors follow.
fn depthwise_ordered(x: &Tensor, w: &[f32], c: &Conv) -> Result<Tensor> {
    let (b, ch, h, wd) = x.dims4()?;
    let (k, s, p) = (c.kernel, c.stride, c.padding);
    let (oh, ow) = match (super::out_side(h, k, s, p), super::out_side(wd, k, s, p)) {
        (Some(a), Some(b)) => (a, b),
        _ => candle_core::bail!("{}: input {h}x{wd} too small", c.name),
    };
    let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; b * ch * oh * ow];
    for n in 0..b {
        for cc in 0..ch {
            let plane = &xv[(n * ch + cc) * h * wd..][..h * wd];
            let wk = &w[cc * k * k..][..k * k];
            let dst = &mut out[(n * ch + cc) * oh * ow..][..oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f32;
                    for ky in 0..k {
                        let iy = (oy * s + ky) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * s + kx) as isize - p as isize;
                            if ix < 0 || ix >= wd as isize {
                                continue;
                            }
                            acc += plane[iy as usize * wd + ix as usize] * wk[ky * k + kx];
                        }
                    }
                    dst[oy * ow + ox] = acc;
                }
            }
        }
    }
    Tensor::from_vec(out, (b, ch, oh, ow), x.device())
}

/// Max-pool of an NCHW tensor where padding never wins.
fn max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    if (k, s, p) == (3, 2, 1) {
        return pool::max_pool_3x3_s2(x);
    }
    if p == 0 {
        return x.max_pool2d_with_stride(k, s);
    }
    // Shift everything above zero, pad with zeros (now below every value), pool, shift back.
    let m = x.min_all()?.to_scalar::<f32>()? - 1.0;
    let y = (x - m as f64)?
        .pad_with_zeros(D::Minus1, p, p)?
        .pad_with_zeros(D::Minus2, p, p)?
        .max_pool2d_with_stride(k, s)?;
    y + m as f64
}

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
//!   dense convolution whose input tensor is quantized computes `sum (q - zp) * w_q` exactly
//!   ([`integer_conv`]: f32 convolutions of integer-valued tensors whose every partial sum is
//!   below 2^24, else f64), rounded once to f32 as an int8 executor's `acc as f32`, then
//!   `acc * (s_w * s_x) + bias` in f32, then residual and clamp as separate f32 ops; the
//!   depthwise convolution sums in the order the executors must use (kernel rows, then columns).
//!   Every value a later quantization sees is therefore bit-identical to what a correct int8
//!   executor computes, and the self-test of an int8 bundle can keep a tight tolerance: a
//!   quantization step flipped by a rounding difference would otherwise cascade.
//!
//! [`Precision`] picks the dtype of the dense f32 convolutions ([`CandleGraph::with_precision`];
//! the `cuda` backend's choice): `exact` is the above; `f16` runs each dense convolution that
//! is not an integer one on f16 operands (weights and input rounded to f16), accumulated in f32
//! by cuBLAS and candle's CPU GEMM alike, its output rounded to f16. The integer convolutions
//! stay exact under both: already f32 at full rate, and in f16 their sums overflow (65504) or,
//! scaled into range, round by 2^-12, which moves quantization steps of the next layer and the
//! steps travel on (measured on a u8 ResNet-18: 7e-3 of the embedding's norm against the CPU,
//! 1.1e-2 and 8.9e-4 in distance in its self-test). Everything else stays f32: the epilogue, the
//! quantization of each input, depthwise convolutions, pools and the feature vector.
//!
//! Depthwise convolutions on f32 CPU tensors run in the executors' order
//! ([`depthwise_ordered`]); elsewhere as one multiply and one add per kernel tap over whole
//! tensors ([`depthwise_taps`]), the same order and the same roundings, so bit for bit the same
//! (tested below), and k*k tensor ops instead of candle's grouped convolution (one convolution
//! per channel).

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

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
    /// For an int8 layer whose input is quantized: its integer weights.
    int8: Option<Int8>,
    /// Depthwise weights `[c][k][k]`, for the ordered loops.
    depthwise: Option<Vec<f32>>,
    /// Depthwise weights per kernel tap (row-major), each `[1, C, 1, 1]`: [`depthwise_taps`].
    taps: Vec<Tensor>,
    /// Dense f32 layers under [`Precision::F16`]: the weights as f16, made once by
    /// [`CandleGraph::with_precision`].
    half: Option<Tensor>,
}

impl Layer {
    fn new(
        c: &Conv,
        weight: Tensor,
        norm: Norm,
        int8: Option<Int8>,
        depthwise: Option<Vec<f32>>,
    ) -> Result<Self> {
        let taps = if c.is_depthwise() {
            tap_weights(&weight)?
        } else {
            Vec::new()
        };
        Ok(Self {
            weight,
            norm,
            int8,
            depthwise,
            taps,
            half: None,
        })
    }
}

/// The integer form of an int8 layer whose input tensor is quantized.
#[derive(Debug, Clone)]
struct Int8 {
    /// `w_q` as f32 (exact: |w_q| <= 127).
    weight: Tensor,
    /// The same as f64, only where [`integer_conv`] needs it (a fan-in over ~8000).
    wide: Option<Tensor>,
    /// `s_w * s_x` per output channel, `[1, C, 1, 1]`.
    scale: Tensor,
    /// `max over output channels of sum |w_q|`: |partial sum| <= 255 * l1.
    l1: u64,
}

/// Every integer up to 2^24 is an f32, so f32 sums of integers stay exact while every partial sum
/// is below it, whatever the summation order (an FMA included). The operands (|x| <= 255,
/// |w_q| <= 127) fit even TF32's 11 bits, should a GEMM take TF32 tensor cores.
const F32_EXACT: u64 = 1 << 24;

/// The dtype of the dense convolutions ([`CandleGraph::with_precision`]): the `cuda` backend's
/// `precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// The reference semantics: integer convolutions exact, f32 layers in f32.
    #[default]
    Exact,
    /// Dense f32 convolutions on f16 operands with f32 accumulation and an f16 result; the
    /// integer ones exact, the rest f32.
    F16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::Exact, Precision::F16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                crate::Error::invalid(
                    "precision",
                    format!(
                        "`{s}`; expected one of {}",
                        Precision::ALL.map(Precision::name).join(", ")
                    ),
                )
            })
    }
}

/// A graph with its weights on candle's CPU device.
#[derive(Debug, Clone)]
pub struct CandleGraph {
    graph: Graph,
    layers: Vec<Layer>,
    quant: BTreeMap<TensorId, ActivationQuant>,
    precision: Precision,
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
                Ok(Layer::new(
                    c,
                    Self::weight(c, w, &dev)?,
                    Norm::Bias(per_channel(b, &dev)?),
                    None,
                    c.is_depthwise().then(|| w.clone()),
                )?)
            })
            .collect::<crate::Result<_>>()?;
        Ok(Self {
            graph: graph.clone(),
            layers,
            quant: BTreeMap::new(),
            precision: Precision::Exact,
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
                Ok(Layer::new(
                    c,
                    Self::weight(c, w, &dev)?,
                    Norm::BatchNorm {
                        mean: per_channel(&bn.running_mean, &dev)?,
                        factor: per_channel(&factor, &dev)?,
                        shift: per_channel(&bn.bias, &dev)?,
                    },
                    None,
                    c.is_depthwise().then(|| w.clone()),
                )?)
            })
            .collect::<crate::Result<_>>()?;
        Ok(Self {
            graph: graph.clone(),
            layers,
            quant: BTreeMap::new(),
            precision: Precision::Exact,
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
                let int8 = match (&l.weight, activations.get(&c.input)) {
                    (LayerWeight::Int8(q), Some(a)) if c.groups == 1 => {
                        let v: Vec<f32> = q.q.iter().map(|&v| v as f32).collect();
                        let fan_in = c.fan_in().max(1);
                        let l1 =
                            q.q.chunks(fan_in)
                                .map(|o| o.iter().map(|&v| v.unsigned_abs() as u64).sum::<u64>())
                                .max()
                                .unwrap_or(0);
                        let weight = Tensor::from_vec(v, &c.weight_shape(), &dev)?;
                        let scale: Vec<f32> = q
                            .scale
                            .iter()
                            .map(|&s| quant::combined_scale(s, a.scale))
                            .collect();
                        Some(Int8 {
                            wide: (16 * l1 >= F32_EXACT)
                                .then(|| weight.to_dtype(DType::F64))
                                .transpose()?,
                            weight,
                            scale: per_channel(&scale, &dev)?,
                            l1,
                        })
                    }
                    _ => None,
                };
                Ok(Layer::new(
                    c,
                    Self::weight(c, &w, &dev)?,
                    Norm::Bias(per_channel(&l.bias, &dev)?),
                    int8,
                    c.is_depthwise().then_some(w),
                )?)
            })
            .collect::<crate::Result<_>>()?;
        Ok(Self {
            graph: graph.clone(),
            layers,
            quant: activations.clone(),
            precision: Precision::Exact,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The same graph with its dense convolutions in `precision`; for [`Precision::F16`] the
    /// f16 weights are made here, once, on the graph's device (call it after [`Self::to_device`]).
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        for (c, l) in self.graph.convs().zip(&mut self.layers) {
            l.half = match (precision, c.groups, &l.int8) {
                (Precision::F16, 1, None) => Some(l.weight.to_dtype(DType::F16)?),
                _ => None,
            };
        }
        self.precision = precision;
        Ok(self)
    }

    /// The same graph with its weights on `dev` (a CUDA device: the `cuda` backend). Off the
    /// CPU, depthwise convolutions run as [`depthwise_taps`] (bit for bit the CPU's order); the
    /// integer convolutions and the quantization stay exact.
    pub fn to_device(&self, dev: &Device) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    taps: l
                        .taps
                        .iter()
                        .map(|t| t.to_device(dev))
                        .collect::<Result<_>>()?,
                    half: l.half.as_ref().map(|h| h.to_device(dev)).transpose()?,
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
                        Some(i) => Some(Int8 {
                            weight: i.weight.to_device(dev)?,
                            wide: i.wide.as_ref().map(|w| w.to_device(dev)).transpose()?,
                            scale: i.scale.to_device(dev)?,
                            l1: i.l1,
                        }),
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
            precision: self.precision,
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
                        (Some(q), Some(i), _) => int8_conv(&input, q, i, c)?,
                        (Some(_), None, _) => candle_core::bail!(
                            "{}: its input is quantized but its weights are f32",
                            c.name
                        ),
                        (None, _, Some(w))
                            if input.device().is_cpu() && input.dtype() == DType::F32 =>
                        {
                            depthwise_ordered(&input, w, c)?
                        }
                        (None, _, Some(_)) => depthwise_taps(&input, &l.taps, c)?,
                        (None, _, None) => match &l.half {
                            Some(w) => input
                                .to_dtype(DType::F16)?
                                .conv2d(w, c.padding, c.stride, 1, 1)?
                                .to_dtype(DType::F32)?,
                            None => conv::conv2d(&input, &l.weight, c.stride, c.padding)?,
                        },
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

/// `sum (q(x) - zp) * w_q` exactly ([`integer_conv`]), then `* (s_w * s_x)` in f32 (the bias
/// follows in the caller, as a separate add).
fn int8_conv(x: &Tensor, q: &ActivationQuant, w: &Int8, c: &Conv) -> Result<Tensor> {
    integer_conv(&quantize_centered(x, q)?, w, c)?.broadcast_mul(&w.scale)
}

/// `sum x * w_q` for integer-valued f32 `x` in -255..=255, exactly, rounded once to f32 (as an
/// int8 executor's `acc as f32`); f32 convolutions, which GPUs run at full rate:
/// - every partial sum is at most `255 * l1` in magnitude: below 2^24, one f32 convolution;
/// - else split `x = 16 * hi + lo` (hi in -16..=15, lo in 0..=15, both exact in f32): two f32
///   convolutions with partial sums up to `16 * l1`, then `16 * acc_hi + acc_lo` (the
///   multiply exact, the add rounding the exact sum once);
/// - else (a fan-in over ~8000 at full-scale weights) one f64 convolution.
fn integer_conv(x: &Tensor, w: &Int8, c: &Conv) -> Result<Tensor> {
    let conv = |x: &Tensor| conv::conv2d(x, &w.weight, c.stride, c.padding);
    if 255 * w.l1 < F32_EXACT {
        return conv(x);
    }
    if let Some(wide) = &w.wide {
        return x
            .to_dtype(DType::F64)?
            .conv2d(wide, c.padding, c.stride, 1, 1)?
            .to_dtype(DType::F32);
    }
    let hi = (x * (1.0 / 16.0))?.floor()?;
    let lo = (x - (&hi * 16.0)?)?;
    (conv(&hi)? * 16.0)? + conv(&lo)?
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

/// The weights of a depthwise layer `[C, 1, k, k]` as one `[1, C, 1, 1]` tensor per tap, in
/// kernel order (rows, then columns).
fn tap_weights(w: &Tensor) -> Result<Vec<Tensor>> {
    let (ch, _, k, _) = w.dims4()?;
    let mut taps = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            taps.push(
                w.narrow(2, ky, 1)?
                    .narrow(3, kx, 1)?
                    .reshape((1, ch, 1, 1))?
                    .contiguous()?,
            );
        }
    }
    Ok(taps)
}

/// Depthwise convolution as whole-tensor ops on any device and float dtype: for each tap in
/// kernel order, the input shifted by the tap (zero padding) times the tap's weights, added to
/// the sum. Each output therefore sees [`depthwise_ordered`]'s multiplies and adds in its order
/// (a padding tap adds `±0 * w`, which leaves the sum as it is), so on f32 the two agree bit for
/// bit.
fn depthwise_taps(x: &Tensor, taps: &[Tensor], c: &Conv) -> Result<Tensor> {
    let (b, ch, h, wd) = x.dims4()?;
    let (k, s, p) = (c.kernel, c.stride, c.padding);
    let (oh, ow) = match (super::out_side(h, k, s, p), super::out_side(wd, k, s, p)) {
        (Some(a), Some(b)) => (a, b),
        _ => candle_core::bail!("{}: input {h}x{wd} too small", c.name),
    };
    if taps.len() != k * k {
        candle_core::bail!(
            "{}: {} depthwise taps for a {k}x{k} kernel",
            c.name,
            taps.len()
        );
    }
    // Tap (ky, kx) reads padded rows ky + s * oy for oy < oh: take s * oh rows from ky and keep
    // every s-th, so pad the bottom (right) far enough for the last tap's window.
    let (bottom, right) = (
        (k - 1 + s * oh).max(h + p) - h - p,
        (k - 1 + s * ow).max(wd + p) - wd - p,
    );
    let xp = x
        .pad_with_zeros(D::Minus2, p, bottom)?
        .pad_with_zeros(D::Minus1, p, right)?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..k {
        for kx in 0..k {
            let mut v = xp.narrow(2, ky, s * oh)?.narrow(3, kx, s * ow)?;
            if s > 1 {
                v = v
                    .reshape((b, ch, oh, s, ow, s))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((b, ch, oh, ow))?;
            }
            let prod = v.broadcast_mul(&taps[ky * k + kx].to_dtype(x.dtype())?)?;
            acc = Some(match acc {
                None => prod,
                Some(a) => (a + prod)?,
            });
        }
    }
    Ok(acc.expect("k >= 1"))
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

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::graph::Fold;

    fn depthwise(ch: usize, kernel: usize, stride: usize, padding: usize) -> Conv {
        Conv {
            name: format!("dw{kernel}s{stride}p{padding}"),
            input: 0,
            c_in: ch,
            c_out: ch,
            groups: ch,
            kernel,
            stride,
            padding,
            activation: Activation::None,
            residual: None,
            fold: Fold {
                bn: "bn".into(),
                eps: 1e-5,
            },
        }
    }

    /// The whole-tensor depthwise convolution (GPUs, f16) is the executors' ordered one bit for
    /// bit: EfficientNet's kernels and strides, odd and even sides, and a padding wider than
    /// the kernel's reach.
    #[test]
    fn depthwise_taps_are_the_ordered_loops_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let ch = 5;
        for (k, s, p) in [
            (3, 1, 1),
            (3, 2, 1),
            (5, 1, 2),
            (5, 2, 2),
            (3, 2, 0),
            (1, 1, 0),
            (3, 3, 4),
        ] {
            for (h, w) in [(7, 7), (8, 6), (12, 9)] {
                let c = depthwise(ch, k, s, p);
                let wv: Vec<f32> = (0..ch * k * k)
                    .map(|_| rng.random_range(-2.0..2.0))
                    .collect();
                let xv: Vec<f32> = (0..2 * ch * h * w)
                    .map(|_| rng.random_range(-3.0f32..3.0))
                    .collect();
                let x = Tensor::from_vec(xv, (2, ch, h, w), &Device::Cpu).unwrap();
                let wt = Tensor::from_slice(&wv, (ch, 1, k, k), &Device::Cpu).unwrap();
                let want = depthwise_ordered(&x, &wv, &c).unwrap();
                let got = depthwise_taps(&x, &tap_weights(&wt).unwrap(), &c).unwrap();
                assert_eq!(got.dims(), want.dims(), "{} on {h}x{w}", c.name);
                let (got, want): (Vec<f32>, Vec<f32>) = (
                    got.flatten_all().unwrap().to_vec1().unwrap(),
                    want.flatten_all().unwrap().to_vec1().unwrap(),
                );
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g, e, "{} on {h}x{w}, output {i}", c.name);
                }
            }
        }
    }

    /// An int8 layer at full scale (|x| = 255, |w_q| = 127, fan-in 4608 as ResNet-18's last
    /// stage): the f32 split is the exact f64 sum rounded once, bit for bit, where one plain f32
    /// convolution is not; a small layer takes the single f32 convolution, also exact.
    #[test]
    fn integer_convolutions_in_f32_are_the_exact_sum_rounded_once() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for (c_in, k, big) in [(512, 3, true), (16, 3, false), (64, 1, false)] {
            let c_out = 4;
            let c = Conv {
                groups: 1,
                c_in,
                c_out,
                ..depthwise(c_in, k, 1, k / 2)
            };
            // Output channel 0: every tap of input channel ci has ci's sign, and most inputs
            // of channel ci are 255 times it, so its sums reach far past 2^24; the others are
            // random.
            let signs: Vec<i8> = (0..c_in)
                .map(|_| if rng.random() { 1 } else { -1 })
                .collect();
            let wq: Vec<i8> = (0..c.weight_len())
                .map(|i| match i / c.fan_in() {
                    0 => signs[i / (k * k)] * rng.random_range(100..=127),
                    _ => rng.random_range(-127..=127),
                })
                .collect();
            let l1 = wq
                .chunks(c.fan_in())
                .map(|o| o.iter().map(|&v| v.unsigned_abs() as u64).sum::<u64>())
                .max()
                .unwrap();
            assert_eq!(255 * l1 >= F32_EXACT, big, "c_in {c_in}: l1 {l1}");
            let (h, wd) = (5, 6);
            let xv: Vec<f32> = (0..c_in * h * wd)
                .map(|i| match rng.random_range(0..4) {
                    0 => rng.random_range(-255..=255) as f32,
                    _ => 255.0 * signs[i / (h * wd)] as f32,
                })
                .collect();
            let x = Tensor::from_vec(xv, (1, c_in, h, wd), &Device::Cpu).unwrap();
            let weight = Tensor::from_vec(
                wq.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                &c.weight_shape(),
                &Device::Cpu,
            )
            .unwrap();
            let int8 = Int8 {
                wide: None,
                scale: Tensor::ones((1, c_out, 1, 1), DType::F32, &Device::Cpu).unwrap(),
                weight: weight.clone(),
                l1,
            };
            let exact = x
                .to_dtype(DType::F64)
                .unwrap()
                .conv2d(&weight.to_dtype(DType::F64).unwrap(), c.padding, 1, 1, 1)
                .unwrap();
            let max = exact
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let want: Vec<f32> = exact
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got: Vec<f32> = integer_conv(&x, &int8, &c)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want, "c_in {c_in}, k {k}");
            if big {
                assert!(max > F32_EXACT as f64, "sums up to {max} only");
                let plain: Vec<f32> = conv::conv2d(&x, &weight, 1, c.padding)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_ne!(plain, want, "one f32 convolution was exact here too");
            }
        }
    }

    #[test]
    fn precision_names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        let e = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("fp16") && e.contains("exact, f16"), "{e}");
    }
}

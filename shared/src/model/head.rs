//! FIRM projection head: bias-free linear layers 512 -> 1024 (x7) -> 128, each of the first seven
//! followed by BatchNorm + ReLU, the last by a BatchNorm without affine parameters; the output is
//! L2-normalised. Used only during training: bundles carry the encoder alone.
//!
//! Parameter names follow a PyTorch `nn.Sequential` of (Linear, BatchNorm1d, ReLU) triples, so index
//! `3i` is the i-th linear and `3i + 1` its BatchNorm: `head.0.weight`, `head.1.{weight,bias,
//! running_mean,running_var}`, ..., `head.21.weight`, `head.22.{running_mean,running_var}`.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{BatchNormConfig, Linear, VarBuilder};

use super::config::{EncoderConfig, HeadConfig};
use super::norm::{self, BatchNorm};
use super::resnet::bn;

#[derive(Debug, Clone)]
pub struct ProjectionHead {
    layers: Vec<(Linear, BatchNorm)>,
}

impl ProjectionHead {
    pub fn new(
        in_dim: usize,
        cfg: &HeadConfig,
        enc: &EncoderConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut layers = Vec::with_capacity(cfg.layers);
        let mut d_in = in_dim;
        for i in 0..cfg.layers {
            let last = i + 1 == cfg.layers;
            let d_out = if last { cfg.out } else { cfg.hidden };
            let linear = candle_nn::linear_no_bias(d_in, d_out, vb.pp((3 * i).to_string()))?;
            let vb_bn = vb.pp((3 * i + 1).to_string());
            let norm = if last {
                let c = BatchNormConfig {
                    eps: enc.bn_eps(),
                    remove_mean: true,
                    affine: false,
                    momentum: enc.bn_momentum(),
                };
                norm::batch_norm(d_out, c, vb_bn)?
            } else {
                bn(d_out, enc.bn_eps(), enc.bn_momentum(), vb_bn)?
            };
            layers.push((linear, norm));
            d_in = d_out;
        }
        Ok(Self { layers })
    }

    /// Features `[B, in]` -> L2-normalised projections `[B, out]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        let n = self.layers.len();
        for (i, (linear, norm)) in self.layers.iter().enumerate() {
            let h = linear.forward(&x)?;
            x = if i + 1 < n {
                norm.forward_relu(&h, train)?
            } else {
                norm.forward_t(&h, train)?
            };
        }
        l2_normalize_rows(&x)
    }
}

/// `x / max(||x||, 1e-12)` per row, as PyTorch's `F.normalize(x, dim=-1)`.
pub fn l2_normalize_rows(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

//! ResNet-18 encoder (He et al. 2016, "Deep Residual Learning for Image Recognition"), trainable,
//! with torchvision's parameter names so state dicts move both ways as safetensors.
//!
//! Both stems of the FIRM work: the reference's CIFAR stem (3x3 stride 1, no max-pool) and the
//! ImageNet stem (7x7 stride 2, 3x3 stride-2 max-pool). candle's `max_pool2d` has no backward pass
//! for kernel != stride, so training uses [`max_pool_3x3_s2`], which builds the same pooling out of
//! strided slices and `maximum` (both differentiable); evaluation uses candle's kernel. The two are
//! equal (tested), because the pool follows a ReLU: inputs are >= 0, so zero padding cannot win a
//! window that also holds a real pixel.
//!
//! Output: the 512-d (x width) feature after global average pooling; no `fc` layer.
//!
//! Try it: `cargo run -p host-trainer --release -- smoke`.

use candle_core::{D, Result, Tensor};
use candle_nn::{BatchNormConfig, Conv2d, VarBuilder};

use super::config::{EncoderConfig, ResNetConfig, Stem};
use super::conv::{self, conv_no_bias as conv};
use super::graph::{Activation, ConvSpec, Graph, GraphBuilder, Residual};
use super::norm::{self, BatchNorm};

mod tape;
pub use tape::ResNetTape;

/// An affine BatchNorm with the run's eps and momentum.
pub(crate) fn bn(channels: usize, eps: f64, momentum: f64, vb: VarBuilder) -> Result<BatchNorm> {
    let bn_cfg = BatchNormConfig {
        eps,
        remove_mean: true,
        affine: true,
        momentum,
    };
    norm::batch_norm(channels, bn_cfg, vb)
}

/// Stem kernel and stride.
fn stem_conv(stem: Stem) -> (usize, usize) {
    match stem {
        Stem::Cifar => (3, 1),
        Stem::Imagenet => (7, 2),
    }
}

/// The folded inference graph of ResNet-18 (names as [`ResNet18`]'s parameters): stem conv
/// (+ ReLU, then the 3x3/2 max-pool for the ImageNet stem), per block `conv1` (+ ReLU), the
/// shortcut `downsample.0` where the shape changes, and `conv2` with the shortcut added before
/// its ReLU; the global average pool. Taps: `stem`, `layer1`..`layer4` (each stage's output).
pub fn graph(cfg: &ResNetConfig) -> Graph {
    let ch = cfg.stage_channels();
    let eps = cfg.bn_eps;
    let conv_spec = |name: &'static str, c_out, kernel, stride, activation| ConvSpec {
        name,
        bn: name,
        eps,
        c_out,
        kernel,
        stride,
        depthwise: false,
        activation,
        residual: None,
    };
    let mut g = GraphBuilder::new(3);
    let (k, s) = stem_conv(cfg.stem);
    let mut x = g.conv(
        g.input(),
        ConvSpec {
            bn: "bn1",
            ..conv_spec("conv1", ch[0], k, s, Activation::Relu)
        },
    );
    if cfg.stem == Stem::Imagenet {
        x = g.max_pool(x, 3, 2, 1);
    }
    g.tap("stem", x);
    let mut c_in = ch[0];
    for (i, &c_out) in ch.iter().enumerate() {
        for b in 0..2 {
            let p = format!("layer{}.{b}", i + 1);
            let stride = if b == 0 && i > 0 { 2 } else { 1 };
            let (n1, b1, n2, b2) = (
                format!("{p}.conv1"),
                format!("{p}.bn1"),
                format!("{p}.conv2"),
                format!("{p}.bn2"),
            );
            let y = g.conv(
                x,
                ConvSpec {
                    name: &n1,
                    bn: &b1,
                    ..conv_spec("", c_out, 3, stride, Activation::Relu)
                },
            );
            let shortcut = if stride != 1 || c_in != c_out {
                let (nd, bd) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                g.conv(
                    x,
                    ConvSpec {
                        name: &nd,
                        bn: &bd,
                        ..conv_spec("", c_out, 1, stride, Activation::None)
                    },
                )
            } else {
                x
            };
            x = g.conv(
                y,
                ConvSpec {
                    name: &n2,
                    bn: &b2,
                    residual: Some(Residual {
                        tensor: shortcut,
                        before_activation: true,
                    }),
                    ..conv_spec("", c_out, 3, 1, Activation::Relu)
                },
            );
            c_in = c_out;
        }
        g.tap(&format!("layer{}", i + 1), x);
    }
    g.finish(x)
}

/// Two 3x3 convolutions with a residual connection (torchvision `BasicBlock`).
#[derive(Debug, Clone)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    fn new(
        c_in: usize,
        c_out: usize,
        stride: usize,
        cfg: &ResNetConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bn = |c, vb| bn(c, cfg.bn_eps, cfg.bn_momentum, vb);
        let downsample = if stride != 1 || c_in != c_out {
            Some((
                conv(c_in, c_out, 1, stride, vb.pp("downsample.0"))?,
                bn(c_out, vb.pp("downsample.1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv(c_in, c_out, 3, stride, vb.pp("conv1"))?,
            bn1: bn(c_out, vb.pp("bn1"))?,
            conv2: conv(c_out, c_out, 3, 1, vb.pp("conv2"))?,
            bn2: bn(c_out, vb.pp("bn2"))?,
            downsample,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = conv::forward(&self.conv1, x)?;
        let y = self.bn1.forward_relu(&y, train)?;
        let y = conv::forward(&self.conv2, &y)?;
        let y = self.bn2.forward_t(&y, train)?;
        let shortcut = match &self.downsample {
            Some((c, b)) => b.forward_t(&conv::forward(c, x)?, train)?,
            None => x.clone(),
        };
        super::residual::add_relu(&y, &shortcut)
    }
}

/// ResNet-18 without its classifier: image batch `[B, 3, H, W]` -> features `[B, C]`.
#[derive(Debug, Clone)]
pub struct ResNet18 {
    stem: Stem,
    conv1: Conv2d,
    bn1: BatchNorm,
    layers: Vec<Vec<BasicBlock>>,
    feature_dim: usize,
}

impl ResNet18 {
    /// Build (or load, depending on the VarBuilder's backend) the encoder. Parameter names are
    /// torchvision's: `conv1.weight`, `bn1.*`, `layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2}.*`,
    /// `layer{2..4}.0.downsample.{0,1}.*`.
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        EncoderConfig::Resnet18(cfg.clone())
            .validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let ch = cfg.stage_channels();
        let (k, s) = stem_conv(cfg.stem);
        let conv1 = conv(3, ch[0], k, s, vb.pp("conv1"))?;
        let bn1 = bn(ch[0], cfg.bn_eps, cfg.bn_momentum, vb.pp("bn1"))?;
        let mut layers = Vec::with_capacity(4);
        let mut c_in = ch[0];
        for (i, &c_out) in ch.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            let vb_l = vb.pp(format!("layer{}", i + 1));
            layers.push(vec![
                BasicBlock::new(c_in, c_out, stride, cfg, vb_l.pp("0"))?,
                BasicBlock::new(c_out, c_out, 1, cfg, vb_l.pp("1"))?,
            ]);
            c_in = c_out;
        }
        Ok(Self {
            stem: cfg.stem,
            conv1,
            bn1,
            layers,
            feature_dim: ch[3],
        })
    }

    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// `train = true`: BatchNorm uses batch statistics and updates its running statistics, and
    /// the max-pool is the differentiable one. `train = false`: running statistics, fast pool.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = conv::forward(&self.conv1, x)?;
        let mut x = self.bn1.forward_relu(&x, train)?;
        if self.stem == Stem::Imagenet {
            x = if train {
                super::pool::max_pool_3x3_s2(&x)?
            } else {
                x.pad_with_zeros(D::Minus1, 1, 1)?
                    .pad_with_zeros(D::Minus2, 1, 1)?
                    .max_pool2d_with_stride(3, 2)?
            };
        }
        for layer in &self.layers {
            for block in layer {
                x = block.forward_t(&x, train)?;
            }
        }
        x.mean(D::Minus1)?.mean(D::Minus1)
    }
}

/// 3x3 max-pool, stride 2, padding 1, over non-negative input, from differentiable ops only.
///
/// Rows first, then columns (max is separable). Output side `o = floor((n - 1) / 2) + 1`; window `o`
/// covers padded positions `2o, 2o+1, 2o+2`, read as three stride-2 slices of the padded tensor.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let pooled_rows = pool_axis(x, 2)?;
    pool_axis(&pooled_rows, 3)
}

fn pool_axis(x: &Tensor, axis: usize) -> Result<Tensor> {
    let n = x.dim(axis)?;
    let out = (n - 1) / 2 + 1;
    // Left pad 1 (the pooling padding); right pad so the padded length is 2 * out + 2.
    let right = 2 * out + 1 - n;
    let padded = x.pad_with_zeros(axis, 1, right)?;
    let mut acc: Option<Tensor> = None;
    for offset in 0..3 {
        let window = padded.narrow(axis, offset, 2 * out)?;
        // Split the axis into (out, 2) and keep phase 0: positions offset + 2 * o.
        let mut dims = window.dims().to_vec();
        dims[axis] = out;
        dims.insert(axis + 1, 2);
        let strided = window
            .contiguous()?
            .reshape(dims)?
            .narrow(axis + 1, 0, 1)?
            .squeeze(axis + 1)?;
        acc = Some(match acc {
            None => strided,
            Some(a) => a.maximum(&strided)?,
        });
    }
    acc.expect("three windows").contiguous()
}

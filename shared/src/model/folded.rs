//! ResNet-18 with every BatchNorm folded into the convolution before it: the inference graph the
//! bundle's weights run in (DESIGN sections 4 and 5).
//!
//! [`resnet18_layers`] lists the convolution/BatchNorm pairs of the trainable
//! [`super::ResNet18`] by their torchvision names, in execution order; the bundle stores one
//! folded layer per entry (named after the convolution) and the reader rebuilds this list from the
//! manifest's encoder configuration, so a bundle can only load into the graph it was made for.
//!
//! [`FoldedResNet18::forward`] computes, per block, `relu(conv2(relu(conv1(x))) + shortcut(x))`
//! with biased convolutions, then the global average pool: the same function as the trainable
//! model in evaluation mode, with fewer operations. Convolutions run through the project's CPU
//! custom op ([`super::conv::conv2d`]).

use candle_core::{D, Device, Result, Tensor};

use super::config::{Backbone, EncoderConfig, Stem};
use super::conv;

/// One convolution followed by a BatchNorm, as the trainable ResNet-18 names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    /// Convolution parameter prefix, e.g. `layer2.0.downsample.0`; the folded layer's name.
    pub conv: String,
    /// BatchNorm parameter prefix, e.g. `layer2.0.downsample.1`.
    pub bn: String,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl LayerSpec {
    fn new(
        conv: String,
        bn: String,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
    ) -> Self {
        Self {
            conv,
            bn,
            c_in,
            c_out,
            kernel,
            stride,
        }
    }

    /// "Same" padding of the square kernel.
    pub fn padding(&self) -> usize {
        self.kernel / 2
    }

    /// `[c_out, c_in, k, k]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kernel, self.kernel]
    }

    pub fn weight_len(&self) -> usize {
        self.weight_shape().iter().product()
    }
}

/// The convolution/BatchNorm pairs of ResNet-18 in execution order: stem, then per block
/// `conv1`, `conv2` and (first block of stages 2-4) `downsample.0`.
pub fn resnet18_layers(cfg: &EncoderConfig) -> crate::Result<Vec<LayerSpec>> {
    if cfg.backbone != Backbone::Resnet18 {
        return Err(crate::Error::invalid(
            "backbone",
            format!(
                "the folded inference graph exists for resnet18 only, not {}",
                cfg.backbone
            ),
        ));
    }
    cfg.validate()?;
    let ch = cfg.stage_channels();
    let stem_k = match cfg.stem {
        Stem::Cifar => 3,
        Stem::Imagenet => 7,
    };
    let stem_s = match cfg.stem {
        Stem::Cifar => 1,
        Stem::Imagenet => 2,
    };
    let mut v = vec![LayerSpec::new(
        "conv1".into(),
        "bn1".into(),
        3,
        ch[0],
        stem_k,
        stem_s,
    )];
    let mut c_in = ch[0];
    for (i, &c_out) in ch.iter().enumerate() {
        for b in 0..2 {
            let p = format!("layer{}.{b}", i + 1);
            let (cin, stride) = if b == 0 {
                (c_in, if i == 0 { 1 } else { 2 })
            } else {
                (c_out, 1)
            };
            v.push(LayerSpec::new(
                format!("{p}.conv1"),
                format!("{p}.bn1"),
                cin,
                c_out,
                3,
                stride,
            ));
            v.push(LayerSpec::new(
                format!("{p}.conv2"),
                format!("{p}.bn2"),
                c_out,
                c_out,
                3,
                1,
            ));
            if b == 0 && (stride != 1 || cin != c_out) {
                v.push(LayerSpec::new(
                    format!("{p}.downsample.0"),
                    format!("{p}.downsample.1"),
                    cin,
                    c_out,
                    1,
                    stride,
                ));
            }
        }
        c_in = c_out;
    }
    Ok(v)
}

/// A convolution with bias (BatchNorm folded in).
#[derive(Debug, Clone)]
struct Layer {
    weight: Tensor,
    /// `[1, c_out, 1, 1]`, ready to broadcast.
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Layer {
    fn forward(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let y =
            conv::conv2d(x, &self.weight, self.stride, self.padding)?.broadcast_add(&self.bias)?;
        if relu { y.relu() } else { Ok(y) }
    }
}

#[derive(Debug, Clone)]
struct Block {
    conv1: Layer,
    conv2: Layer,
    downsample: Option<Layer>,
}

/// ResNet-18 inference with folded BatchNorm: images `[B, 3, H, W]` -> features `[B, C]`.
#[derive(Debug, Clone)]
pub struct FoldedResNet18 {
    stem: Stem,
    conv1: Layer,
    blocks: Vec<Block>,
    feature_dim: usize,
}

impl FoldedResNet18 {
    /// Build from one `(weight, bias)` pair per entry of [`resnet18_layers`] (f32, weight in
    /// `[c_out, c_in, k, k]` row-major order), on `device`.
    pub fn new(
        cfg: &EncoderConfig,
        weights: &[(Vec<f32>, Vec<f32>)],
        device: &Device,
    ) -> crate::Result<Self> {
        let specs = resnet18_layers(cfg)?;
        if weights.len() != specs.len() {
            return Err(crate::Error::invalid(
                "folded weights",
                format!(
                    "{} layers given; resnet18 has {}",
                    weights.len(),
                    specs.len()
                ),
            ));
        }
        let mut layers = Vec::with_capacity(specs.len());
        for (spec, (w, b)) in specs.iter().zip(weights) {
            if w.len() != spec.weight_len() || b.len() != spec.c_out {
                return Err(crate::Error::invalid(
                    "folded weights",
                    format!(
                        "layer {}: {} weights and {} biases; expected {:?} and {}",
                        spec.conv,
                        w.len(),
                        b.len(),
                        spec.weight_shape(),
                        spec.c_out
                    ),
                ));
            }
            layers.push((
                spec,
                Layer {
                    weight: Tensor::from_slice(w, &spec.weight_shape(), device)?,
                    bias: Tensor::from_slice(b, (1, spec.c_out, 1, 1), device)?,
                    stride: spec.stride,
                    padding: spec.padding(),
                },
            ));
        }
        let mut it = layers.into_iter().peekable();
        let conv1 = it.next().expect("stem").1;
        let mut blocks = Vec::new();
        while let Some((_, c1)) = it.next() {
            let (_, c2) = it.next().expect("every block has conv2");
            let downsample = match it.peek() {
                Some((s, _)) if s.conv.ends_with("downsample.0") => it.next().map(|l| l.1),
                _ => None,
            };
            blocks.push(Block {
                conv1: c1,
                conv2: c2,
                downsample,
            });
        }
        Ok(Self {
            stem: cfg.stem,
            conv1,
            blocks,
            feature_dim: cfg.stage_channels()[3],
        })
    }

    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv1.forward(x, true)?;
        if self.stem == Stem::Imagenet {
            x = super::pool::max_pool_3x3_s2(&x)?;
        }
        for b in &self.blocks {
            let y = b.conv1.forward(&x, true)?;
            let y = b.conv2.forward(&y, false)?;
            let shortcut = match &b.downsample {
                Some(d) => d.forward(&x, false)?,
                None => x,
            };
            x = (y + shortcut)?.relu()?;
        }
        x.mean(D::Minus1)?.mean(D::Minus1)
    }
}

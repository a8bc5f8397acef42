//! EfficientNet-Lite0 encoder (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for
//! Convolutional Neural Networks"; the Lite variant of the TensorFlow TPU repository: no
//! squeeze-excite, ReLU6, fixed stem and head), trainable, with the parameter names of the PyTorch
//! port so ImageNet weights load as they are. Weights and the architecture summary this file
//! follows: `shared/weights/efficientnet-lite0/README.md` (`efficientnet-lite0.safetensors`).
//!
//! Layout: stem 3x3 stride-2 conv 3 -> 32 + BN + ReLU6; 16 MBConv blocks in 7 stages; head 1x1 conv
//! 320 -> 1280 + BN + ReLU6; global average pooling. BN eps 1e-3, convolutions without bias,
//! symmetric padding `k / 2`. Input scaled as `(x - 127.5) / 128` on 0..255 pixels, i.e. [`MEAN`]
//! and [`STD`] on 0..1 pixels. The `_fc` classifier is not built.
//!
//! [`Features`] picks the pooled output: the 1280-d head (default) or the end of stage 5, 6 or 7.
//! Layers after the chosen output are not built (no parameters, no compute).
//!
//! Convolutions go through the project's CPU custom ops ([`super::conv`]): candle's grouped
//! `conv2d` with one group per channel runs one tiny convolution per channel and is very slow on
//! the CPU, and its conv backward uses a direct-loop transposed convolution.

use candle_core::{D, Result, Tensor};
use candle_nn::{BatchNormConfig, Conv2d, VarBuilder};

use super::conv::conv_no_bias as conv;
use super::norm::{self, BatchNorm};
use serde::{Deserialize, Serialize};

/// Per-channel mean of the preprocessing (on 0..1 pixels): `(x / 255 - 0.5) / (128 / 255)` is
/// `(x - 127.5) / 128` on 0..255 pixels, the scaling the Lite weights were trained with.
pub const MEAN: [f32; 3] = [0.5; 3];
/// Per-channel standard deviation of the preprocessing (on 0..1 pixels), see [`MEAN`].
pub const STD: [f32; 3] = [128.0 / 255.0; 3];

const BN_EPS: f64 = 1e-3;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// One stage of MBConv blocks: kernel, stride of its first block, expansion, repeats, out channels.
#[derive(Debug, Clone, Copy)]
struct StageSpec {
    kernel: usize,
    stride: usize,
    expand: usize,
    repeats: usize,
    out: usize,
}

const fn stage(
    kernel: usize,
    stride: usize,
    expand: usize,
    repeats: usize,
    out: usize,
) -> StageSpec {
    StageSpec {
        kernel,
        stride,
        expand,
        repeats,
        out,
    }
}

/// EfficientNet-Lite0 (width and depth multipliers 1.0).
const STAGES: [StageSpec; 7] = [
    stage(3, 1, 1, 1, 16),
    stage(3, 2, 6, 2, 24),
    stage(5, 2, 6, 2, 40),
    stage(3, 2, 6, 3, 80),
    stage(5, 1, 6, 3, 112),
    stage(5, 2, 6, 4, 192),
    stage(3, 1, 6, 1, 320),
];

/// Which pooled activation the encoder outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Features {
    /// 1280-d: after `_conv_head` + `_bn1` + ReLU6 (the classifier's input).
    #[default]
    Head,
    /// 112-d: output of `_blocks.10`, the end of stage 5 (stride 16).
    Stage5,
    /// 192-d: output of `_blocks.14`, the end of stage 6 (stride 32).
    Stage6,
    /// 320-d: output of `_blocks.15`, the end of stage 7 (stride 32), before the head.
    Stage7,
}

impl Features {
    /// Number of stages built (1-based index of the last one).
    fn stages(self) -> usize {
        match self {
            Features::Stage5 => 5,
            Features::Stage6 => 6,
            Features::Stage7 | Features::Head => 7,
        }
    }

    /// Dimension of the pooled feature vector.
    pub fn dim(self) -> usize {
        match self {
            Features::Head => HEAD_CHANNELS,
            f => STAGES[f.stages() - 1].out,
        }
    }
}

fn bn(channels: usize, momentum: f64, vb: VarBuilder) -> Result<BatchNorm> {
    let cfg = BatchNormConfig {
        eps: BN_EPS,
        remove_mean: true,
        affine: true,
        momentum,
    };
    norm::batch_norm(channels, cfg, vb)
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// Mobile inverted bottleneck without squeeze-excite: [1x1 expand + BN + ReLU6] -> kxk depthwise
/// + BN + ReLU6 -> 1x1 project + BN, plus the input when the shapes allow.
#[derive(Debug, Clone)]
struct MbConv {
    expand: Option<(Conv2d, BatchNorm)>,
    /// Depthwise kernel `[C, 1, k, k]` (`_depthwise_conv.weight`).
    dw_weight: Tensor,
    stride: usize,
    bn1: BatchNorm,
    project: Conv2d,
    bn2: BatchNorm,
    residual: bool,
}

impl MbConv {
    fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        expand: usize,
        momentum: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c_mid = c_in * expand;
        let expand = if expand != 1 {
            Some((
                conv(c_in, c_mid, 1, 1, vb.pp("_expand_conv"))?,
                bn(c_mid, momentum, vb.pp("_bn0"))?,
            ))
        } else {
            None
        };
        let dw_weight = vb.pp("_depthwise_conv").get_with_hints(
            (c_mid, 1, kernel, kernel),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        Ok(Self {
            expand,
            dw_weight,
            stride,
            bn1: bn(c_mid, momentum, vb.pp("_bn1"))?,
            project: conv(c_mid, c_out, 1, 1, vb.pp("_project_conv"))?,
            bn2: bn(c_out, momentum, vb.pp("_bn2"))?,
            residual: stride == 1 && c_in == c_out,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = match &self.expand {
            Some((c, b)) => relu6(&b.forward_t(&super::conv::forward(c, x)?, train)?)?,
            None => x.clone(),
        };
        let k = self.dw_weight.dim(2)?;
        let y = depthwise(&y, &self.dw_weight, self.stride, k / 2)?;
        let y = relu6(&self.bn1.forward_t(&y, train)?)?;
        let y = super::conv::forward(&self.project, &y)?;
        let y = self.bn2.forward_t(&y, train)?;
        if self.residual { y + x } else { Ok(y) }
    }
}

/// EfficientNet-Lite0 without its classifier: image batch `[B, 3, H, W]` -> features `[B, C]`.
#[derive(Debug, Clone)]
pub struct EfficientNetLite0 {
    features: Features,
    conv_stem: Conv2d,
    bn0: BatchNorm,
    blocks: Vec<MbConv>,
    head: Option<(Conv2d, BatchNorm)>,
    /// Stem and this many MBConv blocks run frozen in training (see [`Self::freeze_stages`]).
    frozen_blocks: usize,
    frozen_stem: bool,
    /// BatchNorm always uses the (pretrained) running statistics, also in training.
    frozen_bn: bool,
}

impl EfficientNetLite0 {
    /// Build (or load, depending on the VarBuilder's backend) the encoder up to `features`.
    /// Parameter names are the PyTorch port's: `_conv_stem.weight`, `_bn0.*`,
    /// `_blocks.{i}.{_expand_conv,_depthwise_conv,_project_conv}.weight`,
    /// `_blocks.{i}.{_bn0,_bn1,_bn2}.{weight,bias,running_mean,running_var}` (block 0 has no
    /// `_expand_conv` / `_bn0`), `_conv_head.weight`, `_bn1.*`; the `_fc` classifier is not built.
    /// `bn_momentum` is PyTorch's: running = (1 - m) * running + m * batch.
    pub fn new(features: Features, bn_momentum: f64, vb: VarBuilder) -> Result<Self> {
        if !(0.0..=1.0).contains(&bn_momentum) {
            candle_core::bail!("bn_momentum {bn_momentum} is outside [0, 1]");
        }
        let conv_stem = conv(3, STEM_CHANNELS, 3, 2, vb.pp("_conv_stem"))?;
        let bn0 = bn(STEM_CHANNELS, bn_momentum, vb.pp("_bn0"))?;
        let mut blocks = Vec::new();
        let mut c_in = STEM_CHANNELS;
        for spec in &STAGES[..features.stages()] {
            for r in 0..spec.repeats {
                let stride = if r == 0 { spec.stride } else { 1 };
                let vb_b = vb.pp(format!("_blocks.{}", blocks.len()));
                blocks.push(MbConv::new(
                    c_in,
                    spec.out,
                    spec.kernel,
                    stride,
                    spec.expand,
                    bn_momentum,
                    vb_b,
                )?);
                c_in = spec.out;
            }
        }
        let head = if features == Features::Head {
            Some((
                conv(c_in, HEAD_CHANNELS, 1, 1, vb.pp("_conv_head"))?,
                bn(HEAD_CHANNELS, bn_momentum, vb.pp("_bn1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            features,
            conv_stem,
            bn0,
            blocks,
            head,
            frozen_blocks: 0,
            frozen_stem: false,
            frozen_bn: false,
        })
    }

    /// Freeze the stem and the first `stages` stages for fine-tuning: in training they run with
    /// their running statistics and without gradients (so the optimiser leaves them alone and
    /// their large activations are not kept for a backward pass: at 224 px the first three
    /// stages hold most of a training step's memory).
    pub fn freeze_stages(mut self, stages: usize) -> Result<Self> {
        if stages > STAGES.len() {
            candle_core::bail!("cannot freeze {stages} stages: EfficientNet-Lite0 has 7")
        }
        self.frozen_blocks = STAGES[..stages].iter().map(|s| s.repeats).sum::<usize>();
        self.frozen_blocks = self.frozen_blocks.min(self.blocks.len());
        if stages == 0 {
            self.frozen_blocks = 0;
        }
        self.frozen_stem = stages > 0;
        Ok(self)
    }

    pub fn features(&self) -> Features {
        self.features
    }

    /// Dimension of the pooled feature vector the encoder outputs.
    pub fn feature_dim(&self) -> usize {
        self.features.dim()
    }

    /// `[B, 3, H, W]`, already normalised with [`MEAN`] / [`STD`] -> pooled features
    /// `[B, feature_dim]`. `train = true`: BatchNorm uses batch statistics and updates its running
    /// statistics; `train = false`: running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let train_bn = train && !self.frozen_bn;
        let stem_train = train_bn && !self.frozen_stem;
        let x = super::conv::forward(&self.conv_stem, x)?;
        let mut x = relu6(&self.bn0.forward_t(&x, stem_train)?)?;
        if self.frozen_stem {
            x = x.detach();
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let frozen = i < self.frozen_blocks;
            x = block.forward_t(&x, train_bn && !frozen)?;
            if frozen {
                x = x.detach();
            }
        }
        if let Some((c, b)) = &self.head {
            x = relu6(&b.forward_t(&super::conv::forward(c, &x)?, train_bn)?)?;
        }
        x.mean(D::Minus1)?.mean(D::Minus1)
    }

    /// Fine-tuning with frozen BatchNorm: the pretrained running statistics normalise in training
    /// too and are never updated (gradients still reach the BatchNorm's scale and shift). With
    /// FIRM's small, outlier-heavy batches the batch statistics otherwise replace ImageNet's.
    pub fn freeze_bn(mut self, yes: bool) -> Self {
        self.frozen_bn = yes;
        self
    }
}

/// The folded inference graph of EfficientNet-Lite0 up to `features` (names as
/// [`EfficientNetLite0`]'s parameters): stem (+ ReLU6); per MBConv block the 1x1 expansion
/// (+ ReLU6, absent in block 0), the kxk depthwise convolution (+ ReLU6) and the 1x1 projection,
/// with the block input added after it when the shapes allow; the 1x1 head (+ ReLU6) for
/// [`Features::Head`]; the global average pool. Taps: `stem`, `stage1`..`stage7` (each stage's
/// output, as far as built) and `head`.
pub fn graph(features: Features) -> super::graph::Graph {
    use super::graph::{Activation, ConvSpec, GraphBuilder, Residual};
    let spec = |name: &str,
                bn: &str,
                c_out,
                kernel,
                stride,
                activation|
     -> (String, String, usize, usize, usize, Activation) {
        (
            name.to_string(),
            bn.to_string(),
            c_out,
            kernel,
            stride,
            activation,
        )
    };
    let mut g = GraphBuilder::new(3);
    let conv = |g: &mut GraphBuilder,
                x,
                (name, bn, c_out, kernel, stride, activation): (
        String,
        String,
        usize,
        usize,
        usize,
        Activation,
    ),
                depthwise: bool,
                residual: Option<Residual>| {
        g.conv(
            x,
            ConvSpec {
                name: &name,
                bn: &bn,
                eps: BN_EPS,
                c_out,
                kernel,
                stride,
                depthwise,
                activation,
                residual,
            },
        )
    };
    let mut x = conv(
        &mut g,
        0,
        spec("_conv_stem", "_bn0", STEM_CHANNELS, 3, 2, Activation::Relu6),
        false,
        None,
    );
    g.tap("stem", x);
    let mut c_in = STEM_CHANNELS;
    let mut block = 0;
    for (si, st) in STAGES[..features.stages()].iter().enumerate() {
        for r in 0..st.repeats {
            let p = format!("_blocks.{block}");
            let stride = if r == 0 { st.stride } else { 1 };
            let c_mid = c_in * st.expand;
            let input = x;
            let mut y = x;
            if st.expand != 1 {
                y = conv(
                    &mut g,
                    y,
                    spec(
                        &format!("{p}._expand_conv"),
                        &format!("{p}._bn0"),
                        c_mid,
                        1,
                        1,
                        Activation::Relu6,
                    ),
                    false,
                    None,
                );
                g.tap(&format!("block{block}.expand"), y);
            }
            y = conv(
                &mut g,
                y,
                spec(
                    &format!("{p}._depthwise_conv"),
                    &format!("{p}._bn1"),
                    c_mid,
                    st.kernel,
                    stride,
                    Activation::Relu6,
                ),
                true,
                None,
            );
            g.tap(&format!("block{block}.dw"), y);
            let residual = (stride == 1 && c_in == st.out).then_some(Residual {
                tensor: input,
                before_activation: false,
            });
            x = conv(
                &mut g,
                y,
                spec(
                    &format!("{p}._project_conv"),
                    &format!("{p}._bn2"),
                    st.out,
                    1,
                    1,
                    Activation::None,
                ),
                false,
                residual,
            );
            c_in = st.out;
            block += 1;
        }
        g.tap(&format!("stage{}", si + 1), x);
    }
    if features == Features::Head {
        x = conv(
            &mut g,
            x,
            spec("_conv_head", "_bn1", HEAD_CHANNELS, 1, 1, Activation::Relu6),
            false,
            None,
        );
        g.tap("head", x);
    }
    g.finish(x)
}

/// Depthwise convolution: `x` `[B, C, H, W]`, `w` `[C, 1, k, k]`, zero padding `pad` on every side;
/// the same as `x.conv2d(w, pad, stride, 1, C)`, through the project's fast custom op
/// ([`super::conv::depthwise_conv2d`]; candle's grouped conv is about 10x slower on the CPU).
fn depthwise(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    super::conv::depthwise_conv2d(x, w, stride, pad)
}

#[cfg(test)]
mod tests {
    use candle_core::Module;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use rand::{Rng, SeedableRng};

    use super::*;

    const ALL: [Features; 4] = [
        Features::Head,
        Features::Stage5,
        Features::Stage6,
        Features::Stage7,
    ];

    fn weights_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/weights/efficientnet-lite0/efficientnet-lite0.safetensors")
    }

    fn fresh(features: Features) -> (VarMap, EfficientNetLite0) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = EfficientNetLite0::new(features, 0.1, vb).unwrap();
        (varmap, model)
    }

    fn random(dims: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The closed-form input of tools/reference.py.
    fn pattern(h: usize, w: usize, variant: usize) -> Tensor {
        let s = variant as f64;
        let mut v = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            let c = c as f64;
            for y in 0..h {
                let y = y as f64;
                for x in 0..w {
                    let x = x as f64;
                    let p = 0.9
                        * (0.071 * (y + 1.0) * (c + 1.0) + 0.043 * x + 0.5 * s).sin()
                        * (0.029 * x * (c + 2.0) - 0.017 * y + 0.3 * s).cos()
                        + 0.05 * (c - 1.0);
                    v.push(p as f32);
                }
            }
        }
        Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
    }

    /// Direct loops: depthwise convolution of `x` `[B, C, H, W]` with `w` `[C, k, k]`.
    fn naive_depthwise(
        x: &[f32],
        dims: [usize; 4],
        w: &[f32],
        k: usize,
        stride: usize,
        pad: usize,
    ) -> (Vec<f32>, usize, usize) {
        let [b, c, h, wd] = dims;
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (wd + 2 * pad - k) / stride + 1;
        let mut out = vec![0f32; b * c * oh * ow];
        for n in 0..b {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0f32;
                        for i in 0..k {
                            for j in 0..k {
                                let y = (oy * stride + i) as isize - pad as isize;
                                let xx = (ox * stride + j) as isize - pad as isize;
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < wd {
                                    s += x[((n * c + ch) * h + y as usize) * wd + xx as usize]
                                        * w[(ch * k + i) * k + j];
                                }
                            }
                        }
                        out[((n * c + ch) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        (out, oh, ow)
    }

    #[test]
    fn depthwise_matches_grouped_conv_and_its_gradients() {
        let mut seed = 0;
        for &(h, w) in &[(9, 8), (7, 7), (16, 16), (5, 6)] {
            for &k in &[1, 3, 5] {
                for &stride in &[1, 2] {
                    for &pad in &[k / 2, 0] {
                        if h + 2 * pad < k || w + 2 * pad < k {
                            continue;
                        }
                        seed += 1;
                        let (b, c) = (2, 5);
                        let x = Var::from_tensor(&random(&[b, c, h, w], seed)).unwrap();
                        let wt = Var::from_tensor(&random(&[c, 1, k, k], 1000 + seed)).unwrap();
                        let ours = depthwise(&x, &wt, stride, pad).unwrap();
                        let theirs = x.conv2d(&wt, pad, stride, 1, c).unwrap();
                        assert_eq!(
                            ours.dims(),
                            theirs.dims(),
                            "h{h} w{w} k{k} s{stride} p{pad}"
                        );
                        let d = max_abs_diff(&ours, &theirs);
                        assert!(d < 1e-5, "h{h} w{w} k{k} s{stride} p{pad}: diff {d}");

                        // Gradients of L = sum(out * g). The output is linear in x and in w, so
                        // <dL/dx, x> = L and <dL/dw, w> = L; then entries against direct loops.
                        let g = random(ours.dims(), 2000 + seed);
                        let loss = (&ours * &g).unwrap().sum_all().unwrap();
                        let grads = loss.backward().unwrap();
                        let gx = grads.get(&x).unwrap();
                        let gw = grads.get(&wt).unwrap();
                        let l = loss.to_scalar::<f32>().unwrap();
                        let lx = (gx * x.as_tensor()).unwrap().sum_all().unwrap();
                        let lw = (gw * wt.as_tensor()).unwrap().sum_all().unwrap();
                        for v in [lx, lw] {
                            let v = v.to_scalar::<f32>().unwrap();
                            assert!((v - l).abs() < 1e-4 * (1.0 + l.abs()), "{v} vs {l}");
                        }
                        // Weight gradient, entry by entry, from the loops.
                        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        let gv = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        let gwv = gw.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        for ch in 0..c {
                            for t in 0..k * k {
                                let mut unit = vec![0f32; c * k * k];
                                unit[ch * k * k + t] = 1.0;
                                let (o, _, _) =
                                    naive_depthwise(&xv, [b, c, h, w], &unit, k, stride, pad);
                                let expect: f32 = o.iter().zip(&gv).map(|(a, b)| a * b).sum();
                                let got = gwv[ch * k * k + t];
                                assert!(
                                    (got - expect).abs() < 1e-4 * (1.0 + expect.abs()),
                                    "dw[{ch},{t}] {got} vs {expect} (h{h} w{w} k{k} s{stride})"
                                );
                            }
                        }
                        // Input gradient, a few entries, by the same loops.
                        let wv = wt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        let gxv = gx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        for idx in (0..xv.len()).step_by(7) {
                            let mut unit = vec![0f32; xv.len()];
                            unit[idx] = 1.0;
                            let (o, _, _) =
                                naive_depthwise(&unit, [b, c, h, w], &wv, k, stride, pad);
                            let expect: f32 = o.iter().zip(&gv).map(|(a, b)| a * b).sum();
                            assert!(
                                (gxv[idx] - expect).abs() < 1e-4 * (1.0 + expect.abs()),
                                "dx[{idx}] {} vs {expect} (h{h} w{w} k{k} s{stride})",
                                gxv[idx]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn output_shapes() {
        for f in ALL {
            let (_vm, model) = fresh(f);
            assert_eq!(model.feature_dim(), f.dim());
            for px in [224, 64] {
                let x = random(&[2, 3, px, px], px as u64);
                for train in [false, true] {
                    let y = model.forward_t(&x, train).unwrap();
                    assert_eq!(y.dims(), &[2, model.feature_dim()], "{f:?} {px} px");
                }
            }
        }
        let dims: Vec<usize> = ALL.iter().map(|f| f.dim()).collect();
        assert_eq!(dims, [1280, 112, 192, 320]);
        // Odd sizes too.
        let (_vm, model) = fresh(Features::Head);
        let y = model.forward_t(&random(&[1, 3, 97, 75], 5), false).unwrap();
        assert_eq!(y.dims(), &[1, 1280]);
    }

    #[test]
    fn serde_names_and_constants() {
        let names: Vec<String> = ALL
            .iter()
            .map(|f| serde_json::to_string(f).unwrap())
            .collect();
        assert_eq!(
            names,
            [r#""head""#, r#""stage5""#, r#""stage6""#, r#""stage7""#]
        );
        let f: Features = serde_json::from_str(r#""stage6""#).unwrap();
        assert_eq!(f, Features::Stage6);
        assert_eq!(Features::default(), Features::Head);
        // (p / 255 - MEAN) / STD == (p - 127.5) / 128.
        for p in [0f32, 127.5, 255.0] {
            let a = (p / 255.0 - MEAN[0]) / STD[0];
            assert!((a - (p - 127.5) / 128.0).abs() < 1e-6);
        }
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        assert!(EfficientNetLite0::new(Features::Head, 1.5, vb).is_err());
    }

    /// Frozen stages get no gradient and keep their running statistics; the rest trains.
    #[test]
    fn frozen_stages_get_no_gradient_and_keep_their_statistics() {
        let (varmap, model) = fresh(Features::Head);
        let model = model.freeze_stages(3).unwrap();
        let before: std::collections::HashMap<String, Vec<f32>> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.ends_with(".running_mean"))
            .map(|(n, v)| (n.clone(), v.flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        let x = random(&[2, 3, 64, 64], 7);
        let y = model.forward_t(&x, true).unwrap();
        let grads = (y.clone() * random(y.dims(), 8))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let data = varmap.data().lock().unwrap();
        // Stem + stages 1-3 = blocks 0..5.
        let frozen = |n: &str| {
            n.starts_with("_conv_stem")
                || n.starts_with("_bn0")
                || (0..5).any(|b| n.starts_with(&format!("_blocks.{b}.")))
        };
        let (mut nf, mut nt) = (0, 0);
        for (name, var) in data.iter() {
            if name.ends_with(".running_var") {
                continue;
            }
            if name.ends_with(".running_mean") {
                let now: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(frozen(name), now == before[name], "{name}");
                continue;
            }
            if frozen(name) {
                assert!(grads.get(var).is_none(), "{name} is frozen");
                nf += 1;
            } else {
                assert!(grads.get(var).is_some(), "{name} trains");
                nt += 1;
            }
        }
        assert!(nf > 10 && nt > 10, "{nf} frozen, {nt} trained");
        assert!(fresh(Features::Head).1.freeze_stages(8).is_err());
        drop(data);

        // Frozen BatchNorm: no running statistic moves, every weight still gets a gradient, and
        // the training forward equals the evaluation forward.
        let (varmap, model) = fresh(Features::Head);
        let model = model.freeze_bn(true);
        let snapshot = |vm: &candle_nn::VarMap| -> Vec<Vec<f32>> {
            let d = vm.data().lock().unwrap();
            let mut v: Vec<_> = d.iter().filter(|(n, _)| n.contains(".running_")).collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            v.iter()
                .map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap())
                .collect()
        };
        let before = snapshot(&varmap);
        let y = model.forward_t(&x, true).unwrap();
        let e = model.forward_t(&x, false).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            e.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(before, snapshot(&varmap));
        let grads = y.sum_all().unwrap().backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter() {
            if !name.contains(".running_") {
                assert!(grads.get(var).is_some(), "{name} trains");
            }
        }
    }

    #[test]
    fn train_forward_backward_reaches_every_parameter() {
        let (varmap, model) = fresh(Features::Head);
        let x = random(&[2, 3, 64, 64], 7);
        let y = model.forward_t(&x, true).unwrap();
        let probe = random(y.dims(), 8);
        let loss = (y * probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let mut convs = 0;
        for (name, var) in data.iter() {
            if name.ends_with(".running_mean") || name.ends_with(".running_var") {
                continue;
            }
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let v = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                v.iter().all(|x| x.is_finite()),
                "{name}: non-finite gradient"
            );
            assert!(v.iter().any(|&x| x != 0.0), "{name}: all-zero gradient");
            if var.rank() == 4 {
                convs += 1;
            }
        }
        // Stem, 16 depthwise, 16 project, 15 expand, head.
        assert_eq!(convs, 1 + 16 + 16 + 15 + 1);
    }

    #[test]
    fn running_stats_update_only_in_train_mode() {
        let (varmap, model) = fresh(Features::Stage6);
        let names = [
            "_bn0.running_mean",
            "_blocks.5._bn1.running_var",
            "_blocks.14._bn2.running_mean",
        ];
        let snapshot = || -> Vec<Vec<f32>> {
            let data = varmap.data().lock().unwrap();
            names
                .iter()
                .map(|n| data[*n].as_tensor().to_vec1::<f32>().unwrap())
                .collect()
        };
        let x = random(&[3, 3, 64, 64], 9);
        let before = snapshot();
        model.forward_t(&x, false).unwrap();
        assert_eq!(
            snapshot(),
            before,
            "eval mode must not touch running statistics"
        );
        model.forward_t(&x, true).unwrap();
        let after = snapshot();
        for ((n, b), a) in names.iter().zip(&before).zip(&after) {
            assert_ne!(a, b, "{n} did not move in train mode");
        }
        // PyTorch's momentum convention: the stem BN's running mean moves 0.1 of the way to the
        // batch mean of the stem convolution.
        let data = varmap.data().lock().unwrap();
        let stem = model.conv_stem.forward(&x).unwrap();
        let batch_mean = stem
            .transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .mean(1)
            .unwrap();
        let expect = (batch_mean * 0.1).unwrap();
        let d = max_abs_diff(data["_bn0.running_mean"].as_tensor(), &expect);
        assert!(d < 1e-5, "running mean off by {d}");
    }

    /// Names and shapes of the safetensors file's tensors, from its header.
    fn file_shapes(bytes: &[u8]) -> BTreeMap<String, Vec<usize>> {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| {
                let shape = v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                (k.clone(), shape)
            })
            .collect()
    }

    #[test]
    fn parameter_names_match_the_weights() {
        let file = std::fs::read(weights_path()).ok().map(|b| file_shapes(&b));
        if file.is_none() {
            println!(
                "weights absent at {}: checking counts only",
                weights_path().display()
            );
        }
        for (f, count) in [
            (Features::Head, 245),
            (Features::Stage7, 240),
            (Features::Stage6, 225),
            (Features::Stage5, 165),
        ] {
            let (varmap, _model) = fresh(f);
            let ours: BTreeMap<String, Vec<usize>> = varmap
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.dims().to_vec()))
                .collect();
            assert_eq!(ours.len(), count, "{f:?}");
            let Some(file) = &file else { continue };
            for (k, shape) in &ours {
                assert_eq!(file.get(k), Some(shape), "{f:?}: {k}");
            }
            if f == Features::Head {
                let want: BTreeSet<&String> =
                    file.keys().filter(|k| !k.starts_with("_fc.")).collect();
                let have: BTreeSet<&String> = ours.keys().collect();
                assert_eq!(have, want);
            }
        }
    }

    #[test]
    fn matches_pytorch() {
        let path = weights_path();
        if !path.exists() {
            println!("SKIP matches_pytorch: weights absent at {}", path.display());
            return;
        }
        let doc: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/efficientnet_lite0_reference.json"
        )))
        .unwrap();
        let dev = Device::Cpu;
        let tensors = candle_core::safetensors::load(&path, &dev).unwrap();
        let fc_w = tensors["_fc.weight"].clone();
        let fc_b = tensors["_fc.bias"].clone();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let models: Vec<(Features, &str, EfficientNetLite0)> = ALL
            .iter()
            .zip(["head", "stage5", "stage6", "stage7"])
            .map(|(&f, key)| (f, key, EfficientNetLite0::new(f, 0.1, vb.clone()).unwrap()))
            .collect();
        for case in doc["cases"].as_array().unwrap() {
            let h = case["height"].as_u64().unwrap() as usize;
            let w = case["width"].as_u64().unwrap() as usize;
            let x = pattern(h, w, case["variant"].as_u64().unwrap() as usize);
            for (f, key, model) in &models {
                let expect: Vec<f32> = case[*key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                let got = model.forward_t(&x, false).unwrap();
                let expect = Tensor::from_vec(expect, got.dims(), &dev).unwrap();
                let scale = expect
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let rel = max_abs_diff(&got, &expect) / scale;
                println!("{h}x{w} {f:?}: max relative difference {rel:.2e}");
                assert!(rel < 1e-4, "{h}x{w} {f:?}: relative difference {rel}");
                if *f == Features::Head {
                    let logits = got
                        .matmul(&fc_w.t().unwrap())
                        .unwrap()
                        .broadcast_add(&fc_b)
                        .unwrap();
                    let mut order: Vec<(usize, f32)> = logits
                        .squeeze(0)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .into_iter()
                        .enumerate()
                        .collect();
                    order.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let top5: Vec<u64> = order[..5].iter().map(|p| p.0 as u64).collect();
                    let want: Vec<u64> = case["top5"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap())
                        .collect();
                    assert_eq!(top5, want, "{h}x{w} top-5 classes");
                }
            }
        }
    }
}

//! The folded encoder as a backend-neutral graph (DESIGN section 5): what every backbone emits
//! once from its trainable model, what the bundle's manifest carries, and what folding,
//! quantization, the self-test's reference path and every executor consume. No executor knows a
//! backbone's name: N backbones x M executors are N + M pieces of code.
//!
//! Tensors are numbered: `0` is the input image (`input-channels` planes), op `i` writes tensor
//! `i + 1`. Every op reads only earlier tensors, so the op list is already in execution order.
//! Ops:
//! - [`Conv`]: a convolution with `groups` (1 = dense, `c_in` = depthwise; a 1x1 dense one is
//!   pointwise), square kernel, stride and zero padding, with bias (the folded BatchNorm) and a
//!   fused epilogue: activation none / ReLU / ReLU6 and an optional residual add of an earlier
//!   tensor, before the activation (ResNet: `relu(conv + shortcut)`) or after it (EfficientNet's
//!   MBConv has no activation after its projection, so either order is the same there);
//! - [`Op::MaxPool`]: square max-pool, padding never wins (PyTorch's semantics);
//! - [`Op::GlobalAvgPool`]: the mean over all pixels, a `[c, 1, 1]` tensor.
//!
//! [`Graph::taps`] name intermediate feature maps (ResNet's `layer1`..`layer4`, EfficientNet's
//! `stage1`..`stage7`), which patch scoring reads; [`Graph::output`] is the pooled feature vector.
//!
//! Each [`Conv`] names its weights (`name`, the trainable convolution's parameter prefix, which is
//! also the bundle's tensor prefix) and the BatchNorm folded into it ([`Fold`]), so the exporter
//! finds the trained tensors from the graph alone.
//!
//! Emitters: [`super::resnet::graph`] (both stems, any width) and [`super::efficientnet::graph`].
//! The manifest's graph is untrusted input for the reader's structure checks, so [`Graph::validate`]
//! bounds every size before an executor allocates anything for it.

pub mod calibrate;
pub mod candle;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Index of a tensor: 0 = input, op `i` writes `i + 1`.
pub type TensorId = usize;

/// Limits a manifest's graph must respect (far above any backbone we build).
pub const MAX_OPS: usize = 512;
pub const MAX_CHANNELS: usize = 8192;
pub const MAX_KERNEL: usize = 15;
pub const MAX_STRIDE: usize = 8;

/// The activation of a convolution's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    #[default]
    None,
    Relu,
    /// `min(max(x, 0), 6)` (EfficientNet-Lite).
    Relu6,
}

/// Where a residual tensor is added in the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Residual {
    pub tensor: TensorId,
    /// True: `act(conv + bias + residual)`; false: `act(conv + bias) + residual`.
    pub before_activation: bool,
}

/// The BatchNorm folded into a convolution: the trainable model's parameter prefix and its eps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Fold {
    /// e.g. `layer1.0.bn1`: `{bn}.weight`, `.bias`, `.running_mean`, `.running_var`.
    pub bn: String,
    pub eps: f64,
}

/// A convolution with bias and fused epilogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Conv {
    /// Weight prefix: `{name}.weight` in the checkpoint and in the bundle (with `.scale`, `.bias`).
    pub name: String,
    pub input: TensorId,
    pub c_in: usize,
    pub c_out: usize,
    /// 1: dense; `c_in` (= `c_out`): depthwise.
    pub groups: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub activation: Activation,
    pub residual: Option<Residual>,
    pub fold: Fold,
}

impl Conv {
    /// `[c_out, c_in / groups, k, k]` (PyTorch's layout).
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.c_out,
            self.c_in / self.groups.max(1),
            self.kernel,
            self.kernel,
        ]
    }

    pub fn weight_len(&self) -> usize {
        self.weight_shape().iter().product()
    }

    /// Inputs per output value (`c_in / groups * k * k`).
    pub fn fan_in(&self) -> usize {
        self.weight_len() / self.c_out.max(1)
    }

    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c_in && self.c_in == self.c_out
    }
}

/// Square max-pool with zero-free padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MaxPool {
    pub input: TensorId,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// One op; it writes the next tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Op {
    Conv(Conv),
    MaxPool(MaxPool),
    GlobalAvgPool { input: TensorId },
}

impl Op {
    /// Tensors the op reads.
    pub fn inputs(&self) -> Vec<TensorId> {
        match self {
            Op::Conv(c) => std::iter::once(c.input)
                .chain(c.residual.map(|r| r.tensor))
                .collect(),
            Op::MaxPool(p) => vec![p.input],
            Op::GlobalAvgPool { input } => vec![*input],
        }
    }
}

/// A named intermediate feature map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Tap {
    pub name: String,
    pub tensor: TensorId,
}

/// Where a tensor's cells sit on the model input, the same along both axes: cell `i` is centred
/// on input pixel `stride * i + offset` (pixel indices, fractional between pixels). ResNet-18 and
/// EfficientNet-Lite0 pad every window by `k / 2` (odd `k`), which keeps `offset` at 0: cell `i`
/// of a stride-8 map is centred on pixel `8 i`, not on `8 i + 3.5` as a resize that treats cells
/// as pixel areas assumes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub stride: f64,
    pub offset: f64,
}

impl Placement {
    /// The input itself.
    pub const INPUT: Placement = Placement {
        stride: 1.0,
        offset: 0.0,
    };

    /// The placement of a window op's output whose input has this placement.
    pub fn through(self, kernel: usize, stride: usize, padding: usize) -> Placement {
        let centre = (kernel as f64 - 1.0) / 2.0 - padding as f64;
        Placement {
            stride: self.stride * stride as f64,
            offset: self.offset + self.stride * centre,
        }
    }

    /// This grid's coordinate of input pixel `x`.
    pub fn cell_of(self, x: f64) -> f64 {
        (x - self.offset) / self.stride
    }
}

/// Channels and spatial size of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pixels(&self) -> usize {
        self.h * self.w
    }
}

/// Output side of a window op.
pub fn out_side(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    (size + 2 * padding)
        .checked_sub(kernel)
        .map(|d| d / stride.max(1) + 1)
}

/// The folded encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Graph {
    pub input_channels: usize,
    pub ops: Vec<Op>,
    pub taps: Vec<Tap>,
    /// The pooled feature vector (a global-average-pool output).
    pub output: TensorId,
}

fn bad(why: String) -> Error {
    Error::invalid("graph", why)
}

impl Graph {
    /// Number of tensors (input included).
    pub fn tensors(&self) -> usize {
        self.ops.len() + 1
    }

    pub fn convs(&self) -> impl Iterator<Item = &Conv> {
        self.ops.iter().filter_map(|o| match o {
            Op::Conv(c) => Some(c),
            _ => None,
        })
    }

    /// Channels of every tensor, checking the structure on the way (see [`Self::validate`]).
    pub fn channels(&self) -> Result<Vec<usize>> {
        if self.ops.len() > MAX_OPS {
            return Err(bad(format!("{} ops; at most {MAX_OPS}", self.ops.len())));
        }
        if !(1..=MAX_CHANNELS).contains(&self.input_channels) {
            return Err(bad(format!(
                "input-channels {} is outside 1..={MAX_CHANNELS}",
                self.input_channels
            )));
        }
        let mut ch = vec![self.input_channels];
        let mut names = std::collections::BTreeSet::new();
        for (i, op) in self.ops.iter().enumerate() {
            let me = i + 1;
            if let Some(&t) = op.inputs().iter().find(|&&t| t >= me) {
                return Err(bad(format!(
                    "op {i} reads tensor {t}, which is not written before it"
                )));
            }
            let c = match op {
                Op::Conv(c) => {
                    if c.name.is_empty() || !names.insert(c.name.as_str()) {
                        return Err(bad(format!(
                            "op {i}: convolution name {:?} is empty or repeated",
                            c.name
                        )));
                    }
                    let what = |why: String| bad(format!("op {i} ({}): {why}", c.name));
                    if c.c_in != ch[c.input] {
                        return Err(what(format!(
                            "c-in {} but tensor {} has {} channels",
                            c.c_in, c.input, ch[c.input]
                        )));
                    }
                    if !(1..=MAX_CHANNELS).contains(&c.c_out) {
                        return Err(what(format!(
                            "c-out {} is outside 1..={MAX_CHANNELS}",
                            c.c_out
                        )));
                    }
                    if c.groups == 0
                        || !c.c_in.is_multiple_of(c.groups)
                        || !c.c_out.is_multiple_of(c.groups)
                    {
                        return Err(what(format!(
                            "groups {} does not divide c-in {} and c-out {}",
                            c.groups, c.c_in, c.c_out
                        )));
                    }
                    if c.groups != 1 && !c.is_depthwise() {
                        return Err(what(format!(
                            "groups {} is neither 1 (dense) nor depthwise (c-in = c-out = groups)",
                            c.groups
                        )));
                    }
                    if !(1..=MAX_KERNEL).contains(&c.kernel)
                        || !(1..=MAX_STRIDE).contains(&c.stride)
                        || c.padding >= c.kernel
                    {
                        return Err(what(format!(
                            "kernel {} / stride {} / padding {} (kernel 1..={MAX_KERNEL}, stride \
                             1..={MAX_STRIDE}, padding below the kernel)",
                            c.kernel, c.stride, c.padding
                        )));
                    }
                    if let Some(r) = c.residual
                        && ch[r.tensor] != c.c_out
                    {
                        return Err(what(format!(
                            "residual tensor {} has {} channels, the convolution {}",
                            r.tensor, ch[r.tensor], c.c_out
                        )));
                    }
                    if !(c.fold.eps > 0.0 && c.fold.eps.is_finite()) {
                        return Err(what(format!(
                            "BatchNorm eps {} is not positive",
                            c.fold.eps
                        )));
                    }
                    c.c_out
                }
                Op::MaxPool(p) => {
                    if !(1..=MAX_KERNEL).contains(&p.kernel)
                        || !(1..=MAX_STRIDE).contains(&p.stride)
                        || p.padding >= p.kernel
                    {
                        return Err(bad(format!(
                            "op {i} (max-pool): kernel {} / stride {} / padding {}",
                            p.kernel, p.stride, p.padding
                        )));
                    }
                    ch[p.input]
                }
                Op::GlobalAvgPool { input } => ch[*input],
            };
            ch.push(c);
        }
        for t in &self.taps {
            if t.tensor >= ch.len() || t.name.is_empty() {
                return Err(bad(format!(
                    "tap {:?} names tensor {} of {}",
                    t.name,
                    t.tensor,
                    ch.len()
                )));
            }
        }
        match self.output.checked_sub(1).and_then(|i| self.ops.get(i)) {
            Some(Op::GlobalAvgPool { .. }) => {}
            _ => {
                return Err(bad(format!(
                    "output tensor {} is not written by a global-avg-pool",
                    self.output
                )));
            }
        }
        Ok(ch)
    }

    /// Structure checks: every op reads earlier tensors with the channels it declares; sizes,
    /// kernels, strides and op counts within this module's limits; unique convolution names;
    /// the output is a global average pool.
    pub fn validate(&self) -> Result<()> {
        self.channels().map(|_| ())
    }

    /// Dimension of the pooled feature vector.
    pub fn feature_dim(&self) -> Result<usize> {
        Ok(self.channels()?[self.output])
    }

    /// Where every tensor's cells sit on the input (the graph is assumed valid: see
    /// [`Self::validate`]). A convolution or pool with kernel `k`, stride `s` and padding `p`
    /// centres its output cell `i` on its input cell `s * i - p + (k - 1) / 2`, so every grid is
    /// an affine map of input pixels. A global pool's single cell keeps its input's placement
    /// (it is no grid).
    pub fn placements(&self) -> Vec<Placement> {
        let mut p = vec![Placement::INPUT];
        for op in &self.ops {
            let next = match op {
                Op::Conv(c) => p[c.input].through(c.kernel, c.stride, c.padding),
                Op::MaxPool(m) => p[m.input].through(m.kernel, m.stride, m.padding),
                Op::GlobalAvgPool { input } => p[*input],
            };
            p.push(next);
        }
        p
    }

    /// Shape of every tensor for a `h` x `w` input; errors when a map shrinks to nothing or a
    /// residual does not match its convolution's output.
    pub fn shapes(&self, h: usize, w: usize) -> Result<Vec<Shape>> {
        let ch = self.channels()?;
        let mut s = vec![Shape { c: ch[0], h, w }];
        for (i, op) in self.ops.iter().enumerate() {
            let window = |x: Shape, k: usize, st: usize, p: usize| -> Result<Shape> {
                match (out_side(x.h, k, st, p), out_side(x.w, k, st, p)) {
                    (Some(oh), Some(ow)) => Ok(Shape {
                        c: ch[i + 1],
                        h: oh,
                        w: ow,
                    }),
                    _ => Err(bad(format!(
                        "op {i}: a {}x{} map is too small for a {k}x{k} window (input {h}x{w})",
                        x.h, x.w
                    ))),
                }
            };
            let out = match op {
                Op::Conv(c) => {
                    let o = window(s[c.input], c.kernel, c.stride, c.padding)?;
                    if let Some(r) = c.residual
                        && (s[r.tensor].h, s[r.tensor].w) != (o.h, o.w)
                    {
                        return Err(bad(format!(
                            "op {i} ({}): residual tensor {} is {}x{}, the output {}x{}",
                            c.name, r.tensor, s[r.tensor].h, s[r.tensor].w, o.h, o.w
                        )));
                    }
                    o
                }
                Op::MaxPool(p) => window(s[p.input], p.kernel, p.stride, p.padding)?,
                Op::GlobalAvgPool { input } => Shape {
                    c: ch[*input],
                    h: 1,
                    w: 1,
                },
            };
            s.push(out);
        }
        Ok(s)
    }

    /// Multiply-accumulates of the convolutions for a `h` x `w` input (benchmark reports).
    pub fn macs(&self, h: usize, w: usize) -> Result<u64> {
        let s = self.shapes(h, w)?;
        Ok(self
            .ops
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Op::Conv(c) => Some(s[i + 1].len() as u64 * c.fan_in() as u64),
                _ => None,
            })
            .sum())
    }

    /// The tensor a tap names.
    pub fn tap(&self, name: &str) -> Option<TensorId> {
        self.taps.iter().find(|t| t.name == name).map(|t| t.tensor)
    }
}

/// Builds a graph op by op (the emitters use it).
#[derive(Debug)]
pub struct GraphBuilder {
    graph: Graph,
    channels: Vec<usize>,
}

/// The arguments of [`GraphBuilder::conv`] beyond the input.
#[derive(Debug, Clone)]
pub struct ConvSpec<'a> {
    pub name: &'a str,
    pub bn: &'a str,
    pub eps: f64,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub depthwise: bool,
    pub activation: Activation,
    pub residual: Option<Residual>,
}

impl GraphBuilder {
    pub fn new(input_channels: usize) -> Self {
        Self {
            graph: Graph {
                input_channels,
                ops: Vec::new(),
                taps: Vec::new(),
                output: 0,
            },
            channels: vec![input_channels],
        }
    }

    /// The input image.
    pub fn input(&self) -> TensorId {
        0
    }

    fn push(&mut self, op: Op, c: usize) -> TensorId {
        self.graph.ops.push(op);
        self.channels.push(c);
        self.graph.ops.len()
    }

    pub fn channels(&self, t: TensorId) -> usize {
        self.channels[t]
    }

    /// A convolution with "same" padding (`k / 2`), as both backbones build them.
    pub fn conv(&mut self, x: TensorId, s: ConvSpec<'_>) -> TensorId {
        let c_in = self.channels[x];
        let conv = Conv {
            name: s.name.to_string(),
            input: x,
            c_in,
            c_out: s.c_out,
            groups: if s.depthwise { c_in } else { 1 },
            kernel: s.kernel,
            stride: s.stride,
            padding: s.kernel / 2,
            activation: s.activation,
            residual: s.residual,
            fold: Fold {
                bn: s.bn.to_string(),
                eps: s.eps,
            },
        };
        self.push(Op::Conv(conv), s.c_out)
    }

    pub fn max_pool(
        &mut self,
        x: TensorId,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> TensorId {
        let c = self.channels[x];
        self.push(
            Op::MaxPool(MaxPool {
                input: x,
                kernel,
                stride,
                padding,
            }),
            c,
        )
    }

    pub fn tap(&mut self, name: &str, t: TensorId) {
        self.graph.taps.push(Tap {
            name: name.to_string(),
            tensor: t,
        });
    }

    /// Pool `x` into the feature vector and finish.
    pub fn finish(mut self, x: TensorId) -> Graph {
        let c = self.channels[x];
        self.graph.output = self.push(Op::GlobalAvgPool { input: x }, c);
        self.graph
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, c_out: usize, kernel: usize, stride: usize) -> ConvSpec<'_> {
        ConvSpec {
            name,
            bn: "bn",
            eps: 1e-5,
            c_out,
            kernel,
            stride,
            depthwise: false,
            activation: Activation::Relu,
            residual: None,
        }
    }

    fn small() -> Graph {
        let mut b = GraphBuilder::new(3);
        let x = b.conv(0, spec("a", 8, 3, 2));
        let y = b.conv(
            x,
            ConvSpec {
                residual: Some(Residual {
                    tensor: x,
                    before_activation: true,
                }),
                ..spec("b", 8, 3, 1)
            },
        );
        let p = b.max_pool(y, 3, 2, 1);
        b.tap("block", y);
        b.finish(p)
    }

    #[test]
    fn shapes_and_macs_follow_the_ops() {
        let g = small();
        g.validate().unwrap();
        let s = g.shapes(17, 9).unwrap();
        assert_eq!(s[1], Shape { c: 8, h: 9, w: 5 });
        assert_eq!(s[3], Shape { c: 8, h: 5, w: 3 });
        assert_eq!(s[4], Shape { c: 8, h: 1, w: 1 });
        assert_eq!(g.feature_dim().unwrap(), 8);
        assert_eq!(g.macs(17, 9).unwrap(), (8 * 45 * 27 + 8 * 45 * 72) as u64);
        assert_eq!(g.tap("block"), Some(2));
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.contains(r#""op":"conv""#), "{json}");
        assert_eq!(serde_json::from_str::<Graph>(&json).unwrap(), g);
    }

    #[test]
    fn placements_follow_kernels_strides_and_paddings() {
        // Odd kernels padded by k / 2 keep cells on multiples of the stride: conv a (3x3, stride
        // 2, pad 1) and b (stride 1) at 2 i, the pool (3x3, stride 2, pad 1) at 4 i.
        let g = small();
        let p = g.placements();
        assert_eq!(p.len(), g.ops.len() + 1);
        assert_eq!(p[0], Placement::INPUT);
        assert_eq!((p[1].stride, p[1].offset), (2.0, 0.0));
        assert_eq!((p[2].stride, p[2].offset), (2.0, 0.0));
        assert_eq!((p[3].stride, p[3].offset), (4.0, 0.0));
        // A 2x2 unpadded stride-2 window centres output i between input pixels 2 i and 2 i + 1;
        // a 1x1 unpadded one on input cell i; a 3x3 unpadded one on cell s i + 1.
        let q = Placement::INPUT.through(2, 2, 0);
        assert_eq!((q.stride, q.offset), (2.0, 0.5));
        assert_eq!(
            q.through(1, 2, 0),
            Placement {
                stride: 4.0,
                offset: 0.5
            }
        );
        let r = q.through(3, 2, 0);
        assert_eq!((r.stride, r.offset), (4.0, 2.5));
        assert_eq!(r.cell_of(6.5), 1.0);
    }

    #[test]
    fn structure_errors_name_the_op() {
        let mut g = small();
        if let Op::Conv(c) = &mut g.ops[1] {
            c.c_in = 5;
        }
        let e = g.validate().unwrap_err().to_string();
        assert!(e.contains("op 1 (b)") && e.contains("c-in 5"), "{e}");

        let mut g = small();
        if let Op::Conv(c) = &mut g.ops[0] {
            c.input = 3;
        }
        assert!(
            g.validate()
                .unwrap_err()
                .to_string()
                .contains("not written before")
        );

        let mut g = small();
        g.output = 2;
        assert!(
            g.validate()
                .unwrap_err()
                .to_string()
                .contains("global-avg-pool")
        );

        let mut g = small();
        if let Op::Conv(c) = &mut g.ops[1] {
            c.name = "a".into();
        }
        assert!(g.validate().unwrap_err().to_string().contains("repeated"));

        let mut g = small();
        if let Op::Conv(c) = &mut g.ops[0] {
            c.c_out = MAX_CHANNELS + 1;
        }
        assert!(g.validate().is_err());

        let mut g = small();
        if let Op::Conv(c) = &mut g.ops[0] {
            c.groups = 2;
        }
        assert!(g.validate().unwrap_err().to_string().contains("groups"));

        // Too small an input for an unpadded window.
        let mut b = GraphBuilder::new(3);
        let x = b.conv(0, spec("a", 4, 3, 1));
        let p = b.max_pool(x, 3, 2, 0);
        let g = b.finish(p);
        assert_eq!(g.shapes(3, 3).unwrap()[2], Shape { c: 4, h: 1, w: 1 });
        assert!(
            g.shapes(2, 2)
                .unwrap_err()
                .to_string()
                .contains("too small")
        );
        // A residual whose spatial size differs.
        let mut b = GraphBuilder::new(3);
        let x = b.conv(0, spec("a", 4, 3, 1));
        let y = b.conv(
            x,
            ConvSpec {
                residual: Some(Residual {
                    tensor: x,
                    before_activation: false,
                }),
                ..spec("b", 4, 3, 2)
            },
        );
        let g = b.finish(y);
        g.validate().unwrap();
        assert!(g.shapes(8, 8).unwrap_err().to_string().contains("residual"));
    }
}

//! [`CpuExecutor`]: a bundle's graph on this project's CPU kernels ([`super::kernels`]).
//!
//! At load, per op: weights reordered to the kernels' K order `(kh, kw, c)` and packed for the
//! chosen [`Isa`]; the epilogue vectors (int8: `s_w * s_x` per channel; the bias); whether a 1x1
//! convolution reads its input in place or through im2col; and one arena offset per tensor
//! ([`super::arena`]), plus one u8 copy of every tensor an int8 convolution reads. Per image
//! nothing is allocated: CHW input -> NHWC (-> u8) -> each op into its region -> the pooled
//! feature vector.
//!
//! Precision per convolution follows the bundle, never the backbone: a dense convolution whose
//! input tensor is in the manifest's `activations` runs u8 x i8 with exact i32 sums (the
//! activation zero point is folded into the packed weights' column correction, so the integer
//! `sum (q - zp) * w` is what reaches the epilogue, as in [`crate::quant`]'s definition);
//! every other one runs f32 with the dequantized weights. Depthwise convolutions, pooling and
//! residual adds are f32.
//!
//! Threads: the kernels split each op over `threads` with `rayon::join`. Called from inside a
//! rayon pool (the device runs its inference loop in one) that allocates nothing per frame.
//!
//! Measured 2026-12-03 with `scripts/bench-cpu 3` (2 Zen 4 cores, AVX512-VNNI, 2 threads, batch
//! 1; encoder alone, median of selfcheck's `encoder_p50_ms`): ResNet-18 (ImageNet stem) at 224 px
//! 7.1 ms with u8 activations (1.81 GMAC: ~255 GMAC/s), 20.7 ms with f32; at 256 px 8.7-13 ms
//! and 28.4 ms; EfficientNet-Lite0 at 224 px 4.4 ms and 6.4 ms. ONNX Runtime in the same sitting:
//! fp32 20.5, 26.1 and 10.1 ms; int8 6.6, 8.4 and 3.5 ms (README, "Numbers you can reproduce").

use std::collections::BTreeMap;

use super::arena::{self, Interval};
use super::kernels::gemm_f32::{PackedF32, gemm_f32};
use super::kernels::gemm_i8::{PackedI8, gemm_u8i8};
use super::kernels::{
    Clamp, Epilogue, Isa, Residual, chw_to_hwc, depthwise_f32, global_avg_pool_f32, im2col_f32,
    im2col_u8, max_pool_f32, quantize_u8_rows, reorder_depthwise_weights, reorder_oihw_to_ohwi,
};
use crate::bundle::EncoderWeights;
use crate::bundle::weights::LayerWeight;
use crate::model::graph::{Activation, Graph, Op, Shape, TensorId};
use crate::quant::{self, ActivationQuant};

/// How the executor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    pub isa: Isa,
    /// Threads each op is split over (the rayon pool it runs in should have as many).
    pub threads: usize,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            isa: Isa::best(),
            threads: rayon::current_num_threads().max(1),
        }
    }
}

#[derive(Debug)]
enum Work {
    ConvI8 {
        packed: PackedI8,
        scale: Vec<f32>,
        bias: Vec<f32>,
        /// 1x1, stride 1, no padding, and the u8 rows are long enough: A is the tensor itself.
        direct: bool,
    },
    ConvF32 {
        packed: PackedF32,
        bias: Vec<f32>,
        direct: bool,
    },
    Depthwise {
        weights: Vec<f32>,
        bias: Vec<f32>,
    },
    MaxPool,
    GlobalAvgPool,
}

#[derive(Debug)]
struct Step {
    input: TensorId,
    output: TensorId,
    residual: Option<(TensorId, bool)>,
    clamp: Clamp,
    kernel: usize,
    stride: usize,
    padding: usize,
    work: Work,
}

/// The u8 copy of a tensor.
#[derive(Debug, Clone, Copy)]
struct U8Slot {
    offset: usize,
    /// Row (pixel) stride: channels rounded up to 4.
    cs: usize,
    quant: ActivationQuant,
}

/// A bundle's encoder, ready to run on the CPU.
#[derive(Debug)]
pub struct CpuExecutor {
    opts: ExecOptions,
    size: usize,
    shapes: Vec<Shape>,
    steps: Vec<Step>,
    offsets: Vec<usize>,
    u8_slots: Vec<Option<U8Slot>>,
    arena: Vec<f32>,
    arena_u8: Vec<u8>,
    col_f32: Vec<f32>,
    col_u8: Vec<u8>,
    output: TensorId,
    dim: usize,
}

fn clamp_of(a: Activation) -> Clamp {
    match a {
        Activation::None => Clamp::NONE,
        Activation::Relu => Clamp::RELU,
        Activation::Relu6 => Clamp::RELU6,
    }
}

fn bad(why: String) -> crate::Error {
    crate::Error::invalid("cpu executor", why)
}

impl CpuExecutor {
    /// Plan `graph` with `weights` (one layer per convolution, in graph order) and the u8
    /// quantization of `activations`, for square inputs of `size` pixels.
    pub fn new(
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
        size: usize,
        opts: ExecOptions,
    ) -> crate::Result<Self> {
        if !opts.isa.runs_here() {
            return Err(bad(format!("{} does not run on this CPU", opts.isa)));
        }
        let opts = ExecOptions {
            threads: opts.threads.max(1),
            ..opts
        };
        let shapes = graph.shapes(size, size)?;
        if shapes[0].c != 3 {
            return Err(bad(format!(
                "{} input channels; images have 3",
                shapes[0].c
            )));
        }
        if weights.layers.len() != graph.convs().count() {
            return Err(bad(format!(
                "{} weight layers for {} convolutions",
                weights.layers.len(),
                graph.convs().count()
            )));
        }
        let n = graph.tensors();
        // Lifetimes: written by op i - 1 (the input: before op 0), last read by op `last`.
        let mut last = vec![0usize; n];
        for (i, op) in graph.ops.iter().enumerate() {
            for t in op.inputs() {
                last[t] = last[t].max(i);
            }
        }
        last[graph.output] = graph.ops.len();
        let first = |t: TensorId| t.saturating_sub(1);
        let intervals: Vec<Interval> = (0..n)
            .map(|t| Interval {
                len: shapes[t].len(),
                first: first(t),
                last: last[t].max(first(t)),
            })
            .collect();
        let (offsets, total) = arena::assign(&intervals, arena::ALIGN);
        // u8 copies of the quantized tensors, with their own lifetimes.
        let mut u8_list = Vec::new();
        for (&t, &q) in activations {
            if t >= n {
                return Err(bad(format!(
                    "activation quantization for tensor {t} of {n}"
                )));
            }
            q.validate()?;
            let cs = shapes[t].c.div_ceil(4) * 4;
            u8_list.push((t, q, cs, intervals[t]));
        }
        let u8_iv: Vec<Interval> = u8_list
            .iter()
            .map(|&(t, _, cs, iv)| Interval {
                len: shapes[t].pixels() * cs,
                ..iv
            })
            .collect();
        let (u8_off, u8_total) = arena::assign(&u8_iv, 64);
        let mut u8_slots = vec![None; n];
        for (&(t, quant, cs, _), &offset) in u8_list.iter().zip(&u8_off) {
            u8_slots[t] = Some(U8Slot { offset, cs, quant });
        }

        let mut steps = Vec::with_capacity(graph.ops.len());
        let (mut col_f32, mut col_u8) = (0usize, 0usize);
        let mut layers = weights.layers.iter();
        for (i, op) in graph.ops.iter().enumerate() {
            let output = i + 1;
            let step = match op {
                Op::Conv(c) => {
                    let l = layers.next().expect("counted above");
                    if l.shape != c.weight_shape() {
                        return Err(bad(format!(
                            "{}: weights {:?}, the graph says {:?}",
                            c.name,
                            l.shape,
                            c.weight_shape()
                        )));
                    }
                    let m = shapes[output].pixels();
                    let k_len = c.fan_in();
                    let simple = c.kernel == 1 && c.stride == 1 && c.padding == 0;
                    let work = if c.groups != 1 {
                        Work::Depthwise {
                            weights: reorder_depthwise_weights(&l.dequantized(), c.c_in, c.kernel),
                            bias: l.bias.clone(),
                        }
                    } else if let Some(slot) = u8_slots[c.input] {
                        let LayerWeight::Int8(q) = &l.weight else {
                            return Err(bad(format!(
                                "{}: its input is quantized but its weights are f32",
                                c.name
                            )));
                        };
                        let w = reorder_oihw_to_ohwi(&q.q, c.c_out, c.c_in, c.kernel);
                        let packed = PackedI8::with_zero_point(
                            opts.isa,
                            &w,
                            c.c_out,
                            k_len,
                            slot.quant.zero_point,
                        );
                        let direct = simple && slot.cs >= packed.k_padded();
                        if !direct {
                            col_u8 = col_u8.max(m * packed.k_padded());
                        }
                        Work::ConvI8 {
                            scale: q
                                .scale
                                .iter()
                                .map(|&s| quant::combined_scale(s, slot.quant.scale))
                                .collect(),
                            bias: l.bias.clone(),
                            packed,
                            direct,
                        }
                    } else {
                        let w = reorder_oihw_to_ohwi(&l.dequantized(), c.c_out, c.c_in, c.kernel);
                        let packed = PackedF32::new(opts.isa, &w, c.c_out, k_len);
                        if !simple {
                            col_f32 = col_f32.max(m * k_len);
                        }
                        Work::ConvF32 {
                            packed,
                            bias: l.bias.clone(),
                            direct: simple,
                        }
                    };
                    Step {
                        input: c.input,
                        output,
                        residual: c.residual.map(|r| (r.tensor, r.before_activation)),
                        clamp: clamp_of(c.activation),
                        kernel: c.kernel,
                        stride: c.stride,
                        padding: c.padding,
                        work,
                    }
                }
                Op::MaxPool(p) => Step {
                    input: p.input,
                    output,
                    residual: None,
                    clamp: Clamp::NONE,
                    kernel: p.kernel,
                    stride: p.stride,
                    padding: p.padding,
                    work: Work::MaxPool,
                },
                Op::GlobalAvgPool { input } => Step {
                    input: *input,
                    output,
                    residual: None,
                    clamp: Clamp::NONE,
                    kernel: 1,
                    stride: 1,
                    padding: 0,
                    work: Work::GlobalAvgPool,
                },
            };
            steps.push(step);
        }
        Ok(Self {
            opts,
            size,
            dim: shapes[graph.output].c,
            shapes,
            steps,
            offsets,
            u8_slots,
            arena: vec![0f32; total],
            arena_u8: vec![0u8; u8_total],
            col_f32: vec![0f32; col_f32],
            col_u8: vec![0u8; col_u8],
            output: graph.output,
        })
    }

    pub fn options(&self) -> ExecOptions {
        self.opts
    }

    pub fn feature_dim(&self) -> usize {
        self.dim
    }

    pub fn input_size(&self) -> usize {
        self.size
    }

    /// Bytes of activation memory (both arenas and the im2col buffers).
    pub fn activation_bytes(&self) -> usize {
        4 * (self.arena.len() + self.col_f32.len()) + self.arena_u8.len() + self.col_u8.len()
    }

    /// Convolutions that run on the int8 kernels, of all convolutions.
    pub fn int8_convs(&self) -> (usize, usize) {
        let convs = self
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    s.work,
                    Work::ConvI8 { .. } | Work::ConvF32 { .. } | Work::Depthwise { .. }
                )
            })
            .count();
        let int8 = self
            .steps
            .iter()
            .filter(|s| matches!(s.work, Work::ConvI8 { .. }))
            .count();
        (int8, convs)
    }

    /// One image: `chw` (3 x size x size, normalised) -> `out` (feature_dim values).
    pub fn run(&mut self, chw: &[f32], out: &mut [f32]) {
        self.run_taps(chw, out, &mut []);
    }

    /// Shape of tensor `t` at this executor's input size.
    pub fn shape(&self, t: TensorId) -> Option<Shape> {
        self.shapes.get(t).copied()
    }

    /// [`Self::run`], also copying each tensor `taps[i].0` (HWC) into `taps[i].1` as soon as it
    /// is written (its arena region may be reused later).
    pub fn run_taps(&mut self, chw: &[f32], out: &mut [f32], taps: &mut [(TensorId, Vec<f32>)]) {
        for (t, buf) in taps.iter() {
            let len = self.shapes.get(*t).map_or(0, Shape::len);
            assert!(
                *t > 0 && *t < self.shapes.len() && buf.len() == len,
                "tap tensor {t}: buffer of {} values for {len}",
                buf.len()
            );
        }
        let s = self.size;
        assert_eq!(
            chw.len(),
            3 * s * s,
            "input of {} values for 3x{s}x{s}",
            chw.len()
        );
        assert_eq!(
            out.len(),
            self.dim,
            "output of {} values for {}",
            out.len(),
            self.dim
        );
        let len0 = self.shapes[0].len();
        chw_to_hwc(chw, 3, s, s, &mut self.arena[self.offsets[0]..][..len0]);
        self.quantize(0);
        for i in 0..self.steps.len() {
            self.step(i);
            let t = self.steps[i].output;
            self.quantize(t);
            for (tap, buf) in taps.iter_mut().filter(|(tap, _)| *tap == t) {
                let (o, len) = (self.offsets[*tap], buf.len());
                buf.copy_from_slice(&self.arena[o..o + len]);
            }
        }
        let o = self.offsets[self.output];
        out.copy_from_slice(&self.arena[o..o + self.dim]);
    }

    /// Write the u8 copy of tensor `t`, if it has one.
    fn quantize(&mut self, t: TensorId) {
        if let Some(slot) = self.u8_slots[t] {
            let sh = self.shapes[t];
            let x = &self.arena[self.offsets[t]..][..sh.len()];
            let out = &mut self.arena_u8[slot.offset..][..sh.pixels() * slot.cs];
            quantize_u8_rows(
                self.opts.isa,
                x,
                sh.c,
                slot.quant.inv_scale(),
                slot.quant.zero_point,
                out,
                slot.cs,
            );
        }
    }

    fn step(&mut self, i: usize) {
        let Self {
            opts,
            shapes,
            steps,
            offsets,
            u8_slots,
            arena,
            arena_u8,
            col_f32,
            col_u8,
            ..
        } = self;
        let st = &steps[i];
        let (isa, threads) = (opts.isa, opts.threads);
        let xin = shapes[st.input];
        let o = shapes[st.output];
        let (out, x, res) = regions(
            arena,
            (offsets[st.output], o.len()),
            (offsets[st.input], xin.len()),
            st.residual.map(|(t, _)| (offsets[t], shapes[t].len())),
        );
        let residual = st.residual.zip(res).map(|((_, before), data)| Residual {
            data,
            ld: o.c,
            before_clamp: before,
        });
        let (k, s, p) = (st.kernel, st.stride, st.padding);
        let m = o.pixels();
        match &st.work {
            Work::ConvI8 {
                packed,
                scale,
                bias,
                direct,
            } => {
                let slot = u8_slots[st.input].expect("planned with a u8 input");
                let xq = &arena_u8[slot.offset..][..xin.pixels() * slot.cs];
                let ep = Epilogue {
                    scale: Some(scale),
                    bias,
                    residual,
                    clamp: st.clamp,
                };
                if *direct {
                    gemm_u8i8(xq, slot.cs, m, packed, &ep, out, o.c, threads);
                } else {
                    let ldk = packed.k_padded();
                    let col = &mut col_u8[..m * ldk];
                    im2col_u8(
                        xq,
                        xin.h,
                        xin.w,
                        xin.c,
                        slot.cs,
                        k,
                        s,
                        p,
                        slot.quant.zero_point,
                        col,
                        ldk,
                        threads,
                    );
                    gemm_u8i8(col, ldk, m, packed, &ep, out, o.c, threads);
                }
            }
            Work::ConvF32 {
                packed,
                bias,
                direct,
            } => {
                let ep = Epilogue {
                    scale: None,
                    bias,
                    residual,
                    clamp: st.clamp,
                };
                if *direct {
                    gemm_f32(x, xin.c, m, packed, &ep, out, o.c, threads);
                } else {
                    let ldk = packed.k();
                    let col = &mut col_f32[..m * ldk];
                    im2col_f32(x, xin.h, xin.w, xin.c, xin.c, k, s, p, col, ldk, threads);
                    gemm_f32(col, ldk, m, packed, &ep, out, o.c, threads);
                }
            }
            Work::Depthwise { weights, bias } => {
                let ep = Epilogue {
                    scale: None,
                    bias,
                    residual,
                    clamp: st.clamp,
                };
                depthwise_f32(
                    isa, x, xin.h, xin.w, xin.c, k, s, p, weights, &ep, out, threads,
                );
            }
            Work::MaxPool => max_pool_f32(isa, x, xin.h, xin.w, xin.c, k, s, p, out, threads),
            Work::GlobalAvgPool => global_avg_pool_f32(isa, x, xin.h, xin.w, xin.c, out),
        }
    }
}

/// The output region (mutable) and the input and residual regions (shared) of one arena; the
/// planner guarantees the output overlaps neither (they are live at the same time).
fn regions(
    arena: &mut [f32],
    out: (usize, usize),
    input: (usize, usize),
    residual: Option<(usize, usize)>,
) -> (&mut [f32], &[f32], Option<&[f32]>) {
    fn get<'a>(lo: &'a [f32], hi: &'a [f32], out: (usize, usize), r: (usize, usize)) -> &'a [f32] {
        let (off, len) = r;
        if off + len <= out.0 {
            &lo[off..off + len]
        } else {
            assert!(off >= out.0 + out.1, "a tensor overlaps the output region");
            &hi[off - out.0 - out.1..][..len]
        }
    }
    let (lo, rest) = arena.split_at_mut(out.0);
    let (o, hi) = rest.split_at_mut(out.1);
    let (lo, hi) = (&*lo, &*hi);
    let x = get(lo, hi, out, input);
    let r = residual.map(|r| get(lo, hi, out, r));
    (o, x, r)
}

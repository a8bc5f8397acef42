//! [`WgpuExecutor`]: a bundle's graph on our WGSL kernels ([`super::kernels`]).
//!
//! At load: one f32 buffer per tensor (the input CHW as uploaded, every other tensor NHWC; each
//! kernel reads its input through strides, so no transpose pass), the weights uploaded once, one
//! specialised pipeline and bind group per op, and one staging buffer for the feature vector.
//! Per frame: one `write_buffer` of the input, one command encoder with one compute pass of all
//! dispatches and the copy of the feature vector, one submit, one map of the staging buffer.
//! wgpu itself still allocates a little per submit (command buffers, the map callback's box).
//!
//! Precision follows the CPU executor ([`crate::exec::cpu`]) convolution by convolution: a dense
//! convolution whose input tensor is in the bundle's `activations` quantizes its input to u8 on
//! the fly (`round_ties_even(x * (1 / s)) + zp`, clamped) and sums `(q - zp) * w` over the i8
//! weights exactly in i32, then `acc * (s_w * s_x) + bias`, the CPU's integers and epilogue; every
//! other convolution (depthwise ones included) runs f32 with the dequantized weights. So int8
//! layers agree with the CPU bit for bit given the same input, and f32 layers differ only by
//! summation order.
//!
//! Buffers are not aliased across tensors (no liveness arena yet): at 224 px ResNet-18 that is
//! the sum of all activations, tens of MB, well within any GPU.

use std::collections::BTreeMap;

use super::adapter::{AdapterPolicy, Gpu, pick_adapter};
use super::kernels::{self, Dispatch, Modules, TILE, checked};
use crate::bundle::EncoderWeights;
use crate::bundle::weights::LayerWeight;
use crate::error::{Error, Result};
use crate::model::graph::{Activation, Graph, Op, Shape, TensorId};
use crate::quant::{self, ActivationQuant};

fn bad(why: String) -> Error {
    Error::invalid("wgpu executor", why)
}

/// How a kernel reads a tensor: element `(y, x, c)` at `y * sy + x * sx + c * sc`.
#[derive(Debug, Clone, Copy)]
struct Strides {
    sy: u32,
    sx: u32,
    sc: u32,
}

/// Tensor 0 is the uploaded CHW image; every tensor a kernel writes is NHWC.
fn strides(t: TensorId, s: Shape) -> Strides {
    let (h, w, c) = (s.h as u32, s.w as u32, s.c as u32);
    if t == 0 {
        Strides {
            sy: w,
            sx: 1,
            sc: h * w,
        }
    } else {
        Strides {
            sy: w * c,
            sx: c,
            sc: 1,
        }
    }
}

fn act_code(a: Activation) -> f64 {
    match a {
        Activation::None => 0.0,
        Activation::Relu => 1.0,
        Activation::Relu6 => 2.0,
    }
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// The i8 weights of one layer, `[c_out, k]`, packed four per little-endian u32 word with each
/// row padded to `ceil(k / 4)` words.
fn pack_i8(q: &[i8], c_out: usize, k: usize) -> (Vec<u32>, usize) {
    let words = k.div_ceil(4);
    let mut out = vec![0u32; c_out * words];
    for co in 0..c_out {
        for (j, &v) in q[co * k..(co + 1) * k].iter().enumerate() {
            out[co * words + j / 4] |= (v as u8 as u32) << (8 * (j % 4));
        }
    }
    (out, words)
}

/// `[c_out, c_in, k, k]` -> `[c_out, k, k, c_in]` (the kernels' K order).
fn oihw_to_ohwi<T: Copy>(w: &[T], c_out: usize, c_in: usize, k: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(w.len());
    for o in 0..c_out {
        for ky in 0..k {
            for kx in 0..k {
                for c in 0..c_in {
                    out.push(w[((o * c_in + c) * k + ky) * k + kx]);
                }
            }
        }
    }
    out
}

/// A bundle's encoder, ready to run on a wgpu adapter.
#[derive(Debug)]
pub struct WgpuExecutor {
    gpu: Gpu,
    size: usize,
    shapes: Vec<Shape>,
    tensors: Vec<wgpu::Buffer>,
    dispatches: Vec<Dispatch>,
    staging: wgpu::Buffer,
    output: TensorId,
    dim: usize,
    int8_convs: usize,
    convs: usize,
    weight_bytes: usize,
}

impl WgpuExecutor {
    /// Plan `graph` with `weights` (one layer per convolution, in graph order) and the u8
    /// quantization of `activations`, for square `size` inputs, on the adapter `policy` picks.
    pub fn new(
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
        size: usize,
        policy: AdapterPolicy,
    ) -> Result<Self> {
        Self::with_gpu(pick_adapter(policy)?, graph, weights, activations, size)
    }

    /// As [`Self::new`], on an adapter already opened (several models or the kNN share it).
    pub fn with_gpu(
        gpu: Gpu,
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
        size: usize,
    ) -> Result<Self> {
        let shapes = graph.shapes(size, size)?;
        let n_convs = graph.convs().count();
        if weights.layers.len() != n_convs {
            return Err(bad(format!(
                "{} weight layers for {n_convs} convolutions",
                weights.layers.len()
            )));
        }
        for (&t, q) in activations {
            if t >= graph.tensors() {
                return Err(bad(format!(
                    "activation quantization for tensor {t} of {}",
                    graph.tensors()
                )));
            }
            q.validate()?;
        }
        let device = gpu.device.clone();
        let limit = device.limits().max_compute_workgroups_per_dimension;
        let groups = |x: usize, y: usize| -> Result<[u32; 3]> {
            let (gx, gy) = (x.div_ceil(TILE as usize), y.div_ceil(TILE as usize));
            if gx.max(gy) > limit as usize {
                return Err(bad(format!(
                    "{gx} x {gy} workgroups; the adapter allows {limit} per dimension"
                )));
            }
            Ok([gx as u32, gy as u32, 1])
        };
        let built = checked(&device, "kernel build", || -> Result<_> {
            let modules = Modules::new(&device);
            let tensors: Vec<wgpu::Buffer> = shapes
                .iter()
                .enumerate()
                .map(|(t, s)| kernels::storage(&device, &format!("tensor {t}"), s.len()))
                .collect();
            let dummy = kernels::storage(&device, "no residual", 1);
            let mut dispatches = Vec::with_capacity(graph.ops.len());
            let (mut int8_convs, mut weight_bytes) = (0usize, 0usize);
            let mut layers = weights.layers.iter();
            for (i, op) in graph.ops.iter().enumerate() {
                let out = i + 1;
                let o = shapes[out];
                let d = match op {
                    Op::Conv(c) => {
                        let l = layers.next().expect("counted above");
                        if l.shape != c.weight_shape() || l.bias.len() != c.c_out {
                            return Err(bad(format!(
                                "{}: weights {:?} with {} biases, the graph says {:?}",
                                c.name,
                                l.shape,
                                l.bias.len(),
                                c.weight_shape()
                            )));
                        }
                        let x = shapes[c.input];
                        let xs = strides(c.input, x);
                        let (res_code, rs) = match c.residual {
                            None => (
                                0.0,
                                Strides {
                                    sy: 0,
                                    sx: 0,
                                    sc: 0,
                                },
                            ),
                            Some(r) => (
                                if r.before_activation { 1.0 } else { 2.0 },
                                strides(r.tensor, shapes[r.tensor]),
                            ),
                        };
                        let res_buf = c.residual.map_or(&dummy, |r| &tensors[r.tensor]);
                        let mut k: Vec<(&str, f64)> = vec![
                            ("H", x.h as f64),
                            ("W", x.w as f64),
                            ("IN_SY", xs.sy as f64),
                            ("IN_SX", xs.sx as f64),
                            ("IN_SC", xs.sc as f64),
                            ("OH", o.h as f64),
                            ("OW", o.w as f64),
                            ("KS", c.kernel as f64),
                            ("STRIDE", c.stride as f64),
                            ("PAD", c.padding as f64),
                            ("ACT", act_code(c.activation)),
                            ("RES", res_code),
                            ("RES_SY", rs.sy as f64),
                            ("RES_SX", rs.sx as f64),
                            ("RES_SC", rs.sc as f64),
                        ];
                        let label = format!("op {i} ({})", c.name);
                        if c.groups != 1 {
                            k.push(("C", c.c_out as f64));
                            let w =
                                kernels::storage_init(&device, &label, f32_bytes(&l.dequantized()));
                            let b = kernels::storage_init(&device, &label, f32_bytes(&l.bias));
                            weight_bytes += 4 * (c.weight_len() + c.c_out);
                            kernels::dispatch(
                                &device,
                                label,
                                &modules.depthwise,
                                "depthwise",
                                &k,
                                &[&tensors[c.input], &w, &b, res_buf, &tensors[out]],
                                groups(c.c_out, o.pixels())?,
                            )
                        } else {
                            k.push(("C_IN", c.c_in as f64));
                            k.push(("C_OUT", c.c_out as f64));
                            let k_len = c.fan_in();
                            let (entry, w, ep) = match (activations.get(&c.input), &l.weight) {
                                (Some(aq), LayerWeight::Int8(q)) => {
                                    let w = oihw_to_ohwi(&q.q, c.c_out, c.c_in, c.kernel);
                                    let (packed, words) = pack_i8(&w, c.c_out, k_len);
                                    k.push(("INV_SCALE", aq.inv_scale() as f64));
                                    k.push(("ZP", aq.zero_point as f64));
                                    k.push(("K_WORDS", words as f64));
                                    let mut ep = l.bias.clone();
                                    ep.extend(
                                        q.scale.iter().map(|&s| quant::combined_scale(s, aq.scale)),
                                    );
                                    int8_convs += 1;
                                    ("conv_u8i8", bytemuck::cast_slice(&packed).to_vec(), ep)
                                }
                                (Some(_), LayerWeight::F32(_)) => {
                                    return Err(bad(format!(
                                        "{}: its input is quantized but its weights are f32",
                                        c.name
                                    )));
                                }
                                (None, _) => {
                                    let w =
                                        oihw_to_ohwi(&l.dequantized(), c.c_out, c.c_in, c.kernel);
                                    ("conv_f32", f32_bytes(&w).to_vec(), l.bias.clone())
                                }
                            };
                            weight_bytes += w.len() + 4 * ep.len();
                            let w = kernels::storage_init(&device, &label, &w);
                            let ep = kernels::storage_init(&device, &label, f32_bytes(&ep));
                            kernels::dispatch(
                                &device,
                                label,
                                &modules.conv,
                                entry,
                                &k,
                                &[&tensors[c.input], &w, &ep, res_buf, &tensors[out]],
                                groups(c.c_out, o.pixels())?,
                            )
                        }
                    }
                    Op::MaxPool(p) => {
                        let x = shapes[p.input];
                        let xs = strides(p.input, x);
                        let k = [
                            ("C", x.c as f64),
                            ("H", x.h as f64),
                            ("W", x.w as f64),
                            ("IN_SY", xs.sy as f64),
                            ("IN_SX", xs.sx as f64),
                            ("IN_SC", xs.sc as f64),
                            ("OH", o.h as f64),
                            ("OW", o.w as f64),
                            ("KS", p.kernel as f64),
                            ("STRIDE", p.stride as f64),
                            ("PAD", p.padding as f64),
                        ];
                        kernels::dispatch(
                            &device,
                            format!("op {i} (max-pool)"),
                            &modules.pool,
                            "max_pool",
                            &k,
                            &[&tensors[p.input], &tensors[out]],
                            groups(x.c, o.pixels())?,
                        )
                    }
                    Op::GlobalAvgPool { input } => {
                        let x = shapes[*input];
                        let xs = strides(*input, x);
                        let k = [
                            ("C", x.c as f64),
                            ("H", x.h as f64),
                            ("W", x.w as f64),
                            ("IN_SY", xs.sy as f64),
                            ("IN_SX", xs.sx as f64),
                            ("IN_SC", xs.sc as f64),
                        ];
                        kernels::dispatch(
                            &device,
                            format!("op {i} (global-avg-pool)"),
                            &modules.pool,
                            "global_avg_pool",
                            &k,
                            &[&tensors[*input], &tensors[out]],
                            [x.c.div_ceil(64) as u32, 1, 1],
                        )
                    }
                };
                dispatches.push(d);
            }
            Ok((tensors, dispatches, int8_convs, weight_bytes))
        })??;
        let (tensors, dispatches, int8_convs, weight_bytes) = built;
        let dim = shapes[graph.output].c;
        let staging = kernels::staging(&device, "features", dim);
        tracing::debug!(
            adapter = %gpu.info.name,
            ops = dispatches.len(),
            int8_convs,
            weight_bytes,
            "wgpu executor planned"
        );
        Ok(Self {
            size,
            dim,
            shapes,
            tensors,
            dispatches,
            staging,
            output: graph.output,
            int8_convs,
            convs: n_convs,
            weight_bytes,
            gpu,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The adapter's name, for status pages.
    pub fn adapter_name(&self) -> &str {
        self.gpu.adapter_name()
    }

    pub fn feature_dim(&self) -> usize {
        self.dim
    }

    pub fn input_size(&self) -> usize {
        self.size
    }

    /// Channels of the input image.
    pub fn input_channels(&self) -> usize {
        self.shapes[0].c
    }

    /// Bytes of activation buffers planned at load.
    pub fn activation_bytes(&self) -> usize {
        4 * self.shapes.iter().map(|s| s.len()).sum::<usize>()
    }

    /// Bytes of weights, biases and scales uploaded at load.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Convolutions that run u8 x i8, of all convolutions.
    pub fn int8_convs(&self) -> (usize, usize) {
        (self.int8_convs, self.convs)
    }

    /// One image: `chw` (`input_channels` x size x size, normalised) -> `out` (feature_dim).
    pub fn run(&mut self, chw: &[f32], out: &mut [f32]) -> Result<()> {
        let s = self.size;
        let c = self.input_channels();
        if chw.len() != c * s * s || out.len() != self.dim {
            return Err(bad(format!(
                "{} input values for {c}x{s}x{s} and {} outputs for {}",
                chw.len(),
                out.len(),
                self.dim
            )));
        }
        self.submit(chw, Some(&self.staging));
        kernels::read_back(&self.gpu.device, &self.staging, out)
    }

    /// Upload `chw`, record every dispatch and (when `staging` is given) the copy of the
    /// feature vector into it, submit.
    fn submit(&self, chw: &[f32], staging: Option<&wgpu::Buffer>) {
        let Gpu { device, queue, .. } = &self.gpu;
        queue.write_buffer(&self.tensors[0], 0, f32_bytes(chw));
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("frame"),
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("encoder"),
                timestamp_writes: None,
            });
            for d in &self.dispatches {
                d.record(&mut pass);
            }
        }
        if let Some(st) = staging {
            enc.copy_buffer_to_buffer(&self.tensors[self.output], 0, st, 0, 4 * self.dim as u64);
        }
        queue.submit([enc.finish()]);
    }

    /// Run `chw` and read back tensor `t` in NHWC order (CHW for the input): for comparisons
    /// with the CPU and the scalar references. Allocates; not for the frame loop.
    pub fn run_and_read(&mut self, chw: &[f32], t: TensorId) -> Result<Vec<f32>> {
        let s = self.size;
        let c = self.input_channels();
        if chw.len() != c * s * s || t >= self.tensors.len() {
            return Err(bad(format!(
                "{} input values for {c}x{s}x{s}, tensor {t} of {}",
                chw.len(),
                self.tensors.len()
            )));
        }
        let len = self.shapes[t].len();
        self.submit(chw, None);
        let st = kernels::staging(&self.gpu.device, "tensor readback", len);
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("tensor readback"),
            });
        enc.copy_buffer_to_buffer(&self.tensors[t], 0, &st, 0, 4 * len as u64);
        self.gpu.queue.submit([enc.finish()]);
        let mut out = vec![0f32; len];
        kernels::read_back(&self.gpu.device, &st, &mut out)?;
        Ok(out)
    }

    /// Shapes of every tensor.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// The labels of the planned dispatches, in order (diagnostics).
    pub fn dispatch_labels(&self) -> impl Iterator<Item = &str> {
        self.dispatches.iter().map(|d| d.label.as_str())
    }
}

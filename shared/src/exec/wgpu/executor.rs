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
//! [`WgpuOptions`] choose among equivalent kernels once at load ([`KernelPlan`], see
//! [`super::options`]): the u8 x i8 sums by shifts (`conv_u8i8`) or by `dot4I8Packed`
//! (`conv_u8i8_dot4`, same integers, so still bit for bit); the f32 layers in f32 or, on an
//! adapter with `SHADER_F16`, `conv_f16` (f16 weights and tiles, f32 sums: a few 1e-4 relative
//! per layer instead of 1e-6, so not the default). Tensors between ops stay f32 in every plan:
//! depthwise convolutions, pools, the int8 kernels' quantizer, residual adds, taps and the
//! readback all read them, and an f16 copy would add one more rounding per residual and tap for
//! half the activation traffic, which no measurement on a real GPU has asked for yet.
//!
//! Buffers are not aliased across tensors (no liveness arena yet): at 224 px ResNet-18 that is
//! the sum of all activations, tens of MB, well within any GPU.

use std::collections::BTreeMap;

use super::adapter::{AdapterPolicy, Gpu, pick_adapter};
use super::kernels::{self, Dispatch, Modules, TILE, checked};
use super::options::{KernelPlan, WgpuOptions};
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

/// The f32 weights of one layer, `[c_out, k]`, as f16 quads of four consecutive k, k-major
/// (`[ceil(k / 4)][c_out]`, zero-padded), for `conv_f16`; `None` when a weight is outside f16's
/// range (the layer then stays f32).
fn pack_f16(w: &[f32], c_out: usize, k: usize) -> Option<Vec<u16>> {
    if w.iter()
        .any(|v| !v.is_finite() || v.abs() > half::f16::MAX.to_f32())
    {
        return None;
    }
    let quads = k.div_ceil(4);
    let mut out = vec![0u16; 4 * quads * c_out];
    for co in 0..c_out {
        for (j, &v) in w[co * k..(co + 1) * k].iter().enumerate() {
            out[4 * ((j / 4) * c_out + co) + j % 4] = half::f16::from_f32(v).to_bits();
        }
    }
    Some(out)
}

/// `(128 - zp) * sum_k w[co, k]` per output channel: the correction that turns
/// `conv_u8i8_dot4`'s sums of `(q - 128) * w` into sums of `(q - zp) * w`.
fn dot4_correction(q: &[i8], c_out: usize, k: usize, zero_point: u8) -> Vec<i32> {
    (0..c_out)
        .map(|co| {
            (128 - zero_point as i32)
                * q[co * k..(co + 1) * k]
                    .iter()
                    .map(|&v| v as i32)
                    .sum::<i32>()
        })
        .collect()
}

/// How many convolutions run each kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConvKernels {
    pub f32: usize,
    pub f16: usize,
    pub int8_shift: usize,
    pub int8_dot4: usize,
    pub depthwise: usize,
}

impl ConvKernels {
    pub fn int8(&self) -> usize {
        self.int8_shift + self.int8_dot4
    }

    pub fn total(&self) -> usize {
        self.f32 + self.f16 + self.int8() + self.depthwise
    }
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
    plan: KernelPlan,
    kernels: ConvKernels,
    weight_bytes: usize,
}

impl WgpuExecutor {
    /// Plan `graph` with `weights` (one layer per convolution, in graph order) and the u8
    /// quantization of `activations`, for square `size` inputs, on the adapter `policy` picks,
    /// with the default kernels.
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
        Self::with_options(
            gpu,
            graph,
            weights,
            activations,
            size,
            WgpuOptions::default(),
        )
    }

    /// As [`Self::with_gpu`], with the kernels `options` choose on this adapter (an explicit
    /// choice the adapter cannot run is an error).
    pub fn with_options(
        gpu: Gpu,
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
        size: usize,
        options: WgpuOptions,
    ) -> Result<Self> {
        let plan = options.resolve(&gpu.caps)?;
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
            let modules = Modules::new(&device, plan.f16);
            let tensors: Vec<wgpu::Buffer> = shapes
                .iter()
                .enumerate()
                .map(|(t, s)| kernels::storage(&device, &format!("tensor {t}"), s.len()))
                .collect();
            let dummy = kernels::storage(&device, "no residual", 1);
            let mut dispatches = Vec::with_capacity(graph.ops.len());
            let (mut counts, mut weight_bytes) = (ConvKernels::default(), 0usize);
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
                            counts.depthwise += 1;
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
                            k.push(("K_WORDS", k_len.div_ceil(4) as f64));
                            let mut module = &modules.conv;
                            // The dot4 kernel's correction, at binding 5.
                            let mut corr = None;
                            let (entry, w, ep) = match (activations.get(&c.input), &l.weight) {
                                (Some(aq), LayerWeight::Int8(q)) => {
                                    let w = oihw_to_ohwi(&q.q, c.c_out, c.c_in, c.kernel);
                                    let (packed, _) = pack_i8(&w, c.c_out, k_len);
                                    k.push(("INV_SCALE", aq.inv_scale() as f64));
                                    k.push(("ZP", aq.zero_point as f64));
                                    let mut ep = l.bias.clone();
                                    ep.extend(
                                        q.scale.iter().map(|&s| quant::combined_scale(s, aq.scale)),
                                    );
                                    let entry = if plan.dot4 {
                                        let cv = dot4_correction(&w, c.c_out, k_len, aq.zero_point);
                                        weight_bytes += 4 * cv.len();
                                        corr = Some(kernels::storage_init(
                                            &device,
                                            &label,
                                            bytemuck::cast_slice(&cv),
                                        ));
                                        counts.int8_dot4 += 1;
                                        "conv_u8i8_dot4"
                                    } else {
                                        counts.int8_shift += 1;
                                        "conv_u8i8"
                                    };
                                    (entry, bytemuck::cast_slice(&packed).to_vec(), ep)
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
                                    let packed = match &modules.conv_f16 {
                                        Some(m) => pack_f16(&w, c.c_out, k_len).map(|h| (m, h)),
                                        None => None,
                                    };
                                    if let Some((m, h)) = packed {
                                        module = m;
                                        counts.f16 += 1;
                                        (
                                            "conv_f16",
                                            bytemuck::cast_slice(&h).to_vec(),
                                            l.bias.clone(),
                                        )
                                    } else {
                                        if plan.f16 {
                                            tracing::warn!(
                                                layer = %c.name,
                                                "weights outside f16's range: this layer runs f32"
                                            );
                                        }
                                        counts.f32 += 1;
                                        ("conv_f32", f32_bytes(&w).to_vec(), l.bias.clone())
                                    }
                                }
                            };
                            weight_bytes += w.len() + 4 * ep.len();
                            let w = kernels::storage_init(&device, &label, &w);
                            let ep = kernels::storage_init(&device, &label, f32_bytes(&ep));
                            let mut bufs = vec![&tensors[c.input], &w, &ep, res_buf, &tensors[out]];
                            bufs.extend(corr.as_ref());
                            kernels::dispatch(
                                &device,
                                label,
                                module,
                                entry,
                                &k,
                                &bufs,
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
            Ok((tensors, dispatches, counts, weight_bytes))
        })??;
        let (tensors, dispatches, kernels, weight_bytes) = built;
        let dim = shapes[graph.output].c;
        let staging = kernels::staging(&device, "features", dim);
        tracing::debug!(
            adapter = %gpu.info.name,
            ops = dispatches.len(),
            %plan,
            ?kernels,
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
            plan,
            kernels,
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
        (self.kernels.int8(), self.kernels.total())
    }

    /// The kernels chosen at load.
    pub fn plan(&self) -> KernelPlan {
        self.plan
    }

    /// How many convolutions run each kernel.
    pub fn conv_kernels(&self) -> ConvKernels {
        self.kernels
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `conv_u8i8_dot4`'s arithmetic on the CPU: bytes (q - 128) packed as the shader packs
    /// them, `dot4I8Packed` as WGSL defines it, plus the correction, equals the shift kernel's
    /// sum of (q - zp) * w, padding (q = zp) and the ragged last word included.
    #[test]
    fn dot4_with_its_correction_is_the_shift_kernels_sum() {
        fn dot4_i8_packed(a: u32, b: u32) -> i32 {
            (0..4)
                .map(|j| (a >> (8 * j)) as u8 as i8 as i32 * (b >> (8 * j)) as u8 as i8 as i32)
                .sum()
        }
        let (c_out, k) = (3, 11);
        let w: Vec<i8> = (0..c_out * k)
            .map(|i| [-128, 127, -1, 0, 5, -77, 64][i % 7])
            .collect();
        let (packed, words) = pack_i8(&w, c_out, k);
        for zp in [0u8, 1, 128, 200, 255] {
            let corr = dot4_correction(&w, c_out, k, zp);
            // Activations in [0, 255]; every third one is padding (q = zp).
            let q: Vec<u8> = (0..k)
                .map(|i| if i % 3 == 2 { zp } else { (i * 97 % 256) as u8 })
                .collect();
            for co in 0..c_out {
                let want: i32 = (0..k)
                    .map(|i| (q[i] as i32 - zp as i32) * w[co * k + i] as i32)
                    .sum();
                let got: i32 = (0..words)
                    .map(|wd| {
                        let a = (0..4)
                            .filter(|j| 4 * wd + j < k)
                            .map(|j| ((q[4 * wd + j] as i32 - 128) as u8 as u32) << (8 * j))
                            .fold(0, |x, y| x | y);
                        dot4_i8_packed(a, packed[co * words + wd])
                    })
                    .sum::<i32>()
                    + corr[co];
                assert_eq!(got, want, "zp {zp}, channel {co}");
            }
        }
    }

    #[test]
    fn f16_weights_are_k_major_quads_and_out_of_range_layers_stay_f32() {
        let (c_out, k) = (2, 5);
        let w: Vec<f32> = (0..c_out * k).map(|i| i as f32 + 0.5).collect();
        let h = pack_f16(&w, c_out, k).unwrap();
        // [ceil(5 / 4) = 2 quads][2 channels][4 k]
        assert_eq!(h.len(), 2 * 2 * 4);
        let at = |q: usize, co: usize, j: usize| half::f16::from_bits(h[4 * (q * c_out + co) + j]);
        assert_eq!(at(0, 1, 2).to_f32(), w[k + 2]);
        assert_eq!(at(1, 0, 0).to_f32(), w[4]);
        assert_eq!(at(1, 1, 1).to_f32(), 0.0, "k padded with zeros");
        assert!(pack_f16(&[1.0, 7e4], 1, 2).is_none());
        assert!(pack_f16(&[f32::NAN], 1, 1).is_none());
    }
}

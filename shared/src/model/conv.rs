//! Fast f32 CPU 2-D convolutions for candle, as custom ops with their own backward pass.
//!
//! Why: candle 0.11's CPU `conv2d` backward computes the input gradient with
//! `conv_transpose2d`, a direct-loop kernel, and the weight gradient with a batch-transposed
//! `conv2d`. One ResNet-18 training step (batch 32, 64 px, ImageNet stem, forward + backward +
//! SGD) measured 2.3 s with candle against 0.18 s in PyTorch on the same 2-core AVX-512 machine;
//! per layer, candle's conv backward costs 3-7x its forward. This module replaces the
//! convolution with [`conv2d`] and [`depthwise_conv2d`]: for f32 tensors on the CPU they run
//! custom ops (`CustomOp2` forward, `CustomOp3` backward) built on im2col + GEMM (the `gemm`
//! crate, the same one candle's matmul uses); any other dtype or device falls back to candle's
//! `conv2d`.
//!
//! Layout and algorithm (NCHW input `[B, Cin, H, W]`, weight `[Cout, Cin, k, k]`, output
//! `[B, Cout, Ho, Wo]`, `P = Ho * Wo` output pixels per plane, `K = Cin * k * k`):
//!
//! * Large feature maps (`P >= PER_ITEM_MIN_P`, e.g. the stem and the first stage): one batch
//!   item per task, parallel over items with rayon, each task single-threaded and in cache.
//!   im2col builds `col[K, P]` (row `ci*k*k + kh*k + kw`, column `oh*Wo + ow`; for stride 1 with
//!   "same" padding each row is one shifted copy of the input plane). Forward
//!   `Y_b = W[Cout, K] x col` straight into the output. Backward: `dW^T += col x dY_b^T`
//!   (accumulated transposed per task, which gemm runs faster; summed and transposed at the
//!   end), `dcol = W^T x dY_b`, then col2im adds `dcol` back into `dX_b`. A 1x1 stride-1
//!   unpadded convolution uses the input plane itself as `col` and writes `dX_b` directly.
//! * Small feature maps (deep layers, `P < PER_ITEM_MIN_P`): the batch is stacked into wide
//!   GEMMs, so the weight is packed once rather than once per item, in chunks of items so that no
//!   buffer exceeds `COL_BUDGET` floats. im2col here is patch-major, `col[bi*P + pixel, K]`
//!   (one contiguous K-vector per output pixel), the layout gemm handles best for these shapes.
//!   Forward `[Cout, nb*P] = W x col^T`, permuted into NCHW. Backward: `dY` permuted to
//!   `dYr[Cout, nb*P]`, `dW += dYr x col`, `dcol = dYr^T x W` (patch-major), col2im. The big
//!   buffers of this path are kept per thread between calls (`Scratch`).
//! * The backward pass is one `CustomOp3` returning both gradients packed in one buffer; a
//!   gradient is computed only for an argument that takes part in autograd
//!   (`Tensor::track_op`), so the stem does not pay for a gradient of the image.
//! * Depthwise (weight `[C, 1, k, k]`, groups = C, EfficientNet's MBConv): direct loops, one
//!   `(b, c)` plane per rayon task, forward and both gradients (the weight gradient is summed
//!   per plane, then over the batch).
//!
//! Speed (batch 32, 64 px, the 20 ResNet-18 convolutions, forward + backward, one thread, CPU
//! time; `examples/bench.rs` of the scratch crate this came from): about 2.7x less than
//! candle's conv2d (4x on the stem and first stage, 2x in the middle stages), 3.6x when the
//! `gemm` crate's `x86-v4` feature is enabled (AVX-512 kernels, detected at run time); the
//! depthwise op's forward + backward about 10x. GEMM is about two thirds of the remaining time.
//!
//! The only `unsafe` is the call into `gemm::gemm` (raw pointers and strides), isolated in
//! `gemm_f32`, which checks every index it can touch against the slice lengths first.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// A parallel GEMM is split into row blocks of at least this many rows.
const SPLIT_MIN_ROWS: usize = 64;

/// Upper bound, in f32 elements, of one im2col buffer (32 MiB); the batch is chunked to fit.
const COL_BUDGET: usize = 1 << 23;

/// Output planes at least this large are multiplied one batch item at a time (no permute);
/// smaller ones are stacked across the batch into one wide GEMM.
const PER_ITEM_MIN_P: usize = 64;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// A bias-free square convolution with "same" padding (`k / 2`), as ResNet-18 and
/// EfficientNet-Lite0 build them; run it with [`forward`].
pub(crate) fn conv_no_bias(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    vb: candle_nn::VarBuilder,
) -> Result<candle_nn::Conv2d> {
    let cfg = candle_nn::Conv2dConfig {
        padding: k / 2,
        stride,
        dilation: 1,
        groups: 1,
        cudnn_fwd_algo: None,
    };
    candle_nn::conv2d_no_bias(c_in, c_out, k, cfg, vb)
}

/// Forward of a bias-free, ungrouped `candle_nn::Conv2d` through [`conv2d`] (other convolutions
/// use candle's own forward).
pub fn forward(conv: &candle_nn::Conv2d, x: &Tensor) -> Result<Tensor> {
    let c = conv.config();
    if c.groups != 1 || c.dilation != 1 || conv.bias().is_some() {
        return candle_core::Module::forward(conv, x);
    }
    conv2d(x, conv.weight(), c.stride, c.padding)
}

/// 2-D convolution, NCHW input `[B, Cin, H, W]`, weight `[Cout, Cin, k, k]` (square kernels, no
/// bias, dilation 1, groups 1), symmetric zero padding. Same result as candle's
/// `Tensor::conv2d(w, padding, stride, 1, 1)`; f32 on CPU uses the custom op (fast forward +
/// backward), any other dtype/device falls back to candle's conv2d.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if conv_op_fits(x, w, stride, padding) {
        let op = Conv2dOp { stride, padding };
        return x.contiguous()?.apply_op2(&w.contiguous()?, op);
    }
    x.conv2d(w, padding, stride, 1, 1)
}

/// Whether [`Conv2dOp`] computes this convolution (else candle's conv2d does).
fn conv_op_fits(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> bool {
    fast_path_ok(x, w)
        && w.dims()[1] == x.dims()[1]
        && Geom::new(x.dims(), w.dims(), stride, padding).is_some()
}

/// Depthwise convolution: weight `[C, 1, k, k]`, groups = C (EfficientNet's MBConv). Same
/// result as candle's conv2d with groups = C. f32 CPU custom op with backward; fallback
/// otherwise.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let groups = x.dims().get(1).copied().unwrap_or(1);
    if fast_path_ok(x, w) {
        let (x_dims, w_dims) = (x.dims(), w.dims());
        if w_dims[1] == 1
            && w_dims[0] == x_dims[1]
            && Geom::new(x_dims, w_dims, stride, padding).is_some()
        {
            let op = DepthwiseOp { stride, padding };
            return x.contiguous()?.apply_op2(&w.contiguous()?, op);
        }
    }
    x.conv2d(w, padding, stride, 1, groups)
}

/// f32, CPU, rank 4, square kernel: the shapes the custom ops handle (channel checks are the
/// caller's).
fn fast_path_ok(x: &Tensor, w: &Tensor) -> bool {
    x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.device().is_cpu()
        && w.device().is_cpu()
        && x.rank() == 4
        && w.rank() == 4
        && w.dims()[2] == w.dims()[3]
}

// ---------------------------------------------------------------------------------------------
// Geometry and small helpers
// ---------------------------------------------------------------------------------------------

/// Shapes of one convolution. For the depthwise op `cin == cout == C`.
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    /// `None` when the op cannot run this shape (the fallback then reports candle's error or
    /// handles the degenerate case).
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Option<Self> {
        let (&[b, cin, h, wd], &[cout, _, k, k2]) = (x, w) else {
            return None;
        };
        if k != k2 || k == 0 || stride == 0 || h + 2 * pad < k || wd + 2 * pad < k {
            return None;
        }
        let g = Self {
            b,
            cin,
            h,
            w: wd,
            cout,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (wd + 2 * pad - k) / stride + 1,
        };
        (b > 0 && cin > 0 && cout > 0 && h > 0 && wd > 0).then_some(g)
    }

    fn from_layouts(x: &Layout, w: &Layout, stride: usize, pad: usize) -> Result<Self> {
        match Self::new(x.dims(), w.dims(), stride, pad) {
            Some(g) => Ok(g),
            None => bail!("conv: unsupported shapes {:?} * {:?}", x.dims(), w.dims()),
        }
    }

    /// Output pixels per plane.
    fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// Input pixels per plane.
    fn hw(&self) -> usize {
        self.h * self.w
    }

    /// GEMM reduction length of the dense convolution.
    fn kdim(&self) -> usize {
        self.cin * self.k * self.k
    }

    /// Stride 1 with "same" padding: output rows are exactly as long as input rows.
    fn same_stride1(&self) -> bool {
        self.stride == 1 && self.wo == self.w
    }

    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Batch items per chunk of the stacked path (bounds its `K x nb*P` and `Cout x nb*P`
    /// buffers by [`COL_BUDGET`]).
    fn chunk(&self) -> usize {
        (COL_BUDGET / (self.kdim().max(self.cout) * self.p())).clamp(1, self.b)
    }

    /// Kernel taps `kh` (or `kw`) with `o * stride + kh - pad` inside `0..in_len`, for output
    /// row (or column) `o`, as a half-open range.
    fn taps(&self, o: usize, in_len: usize) -> (usize, usize) {
        let start = o * self.stride;
        let lo = self.pad.saturating_sub(start);
        let hi = (in_len + self.pad).saturating_sub(start).min(self.k);
        (lo.min(hi), hi)
    }

    /// Output columns `o` (rows or columns, by the arguments) whose input coordinate
    /// `o * stride + koff - pad` lies in `0..in_len`, as a half-open range.
    fn valid(&self, out_len: usize, in_len: usize, koff: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if self.pad > koff {
            (self.pad - koff).div_ceil(s)
        } else {
            0
        };
        let hi = if in_len + self.pad > koff {
            ((in_len - 1 + self.pad - koff) / s + 1).min(out_len)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// The contiguous f32 data of a storage, or an error.
/// The contiguous f32 data of a custom op's argument (`op` and `what` name it in errors).
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: {what} must be f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

thread_local! {
    /// Spare buffers of the stacked path on this thread, so that its large scratch buffers
    /// are neither re-allocated nor re-zeroed on every call (at most [`SCRATCH_KEEP`] kept,
    /// each at most [`COL_BUDGET`] floats).
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Spare scratch buffers kept per thread.
const SCRATCH_KEEP: usize = 3;

/// A scratch buffer of `len` floats with unspecified contents, taken from this thread's
/// spares and given back on drop. The pool is only locked while taking and giving back, so
/// nested use (a rayon worker stealing another convolution) simply allocates.
#[derive(Debug)]
struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

impl Scratch {
    fn new(len: usize) -> Self {
        let spare = SCRATCH.try_with(|s| s.borrow_mut().pop());
        let mut buf = spare.ok().flatten().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Self { buf, len }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // (Fails only during thread teardown; the buffer is then simply freed.)
        let _ = SCRATCH.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SCRATCH_KEEP {
                // Keep the pool sorted by size so `new` reuses the largest buffer first.
                let at = s.partition_point(|b| b.len() <= buf.len());
                s.insert(at, buf);
            }
        });
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

/// Split a packed `[dx, dw]` gradient buffer (see the backward ops) into the two gradients.
fn unpack_grads(
    packed: Tensor,
    x: &Tensor,
    w: &Tensor,
    need_dx: bool,
    need_dw: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let nx = if need_dx { x.elem_count() } else { 0 };
    let dx = if need_dx {
        Some(packed.narrow(0, 0, nx)?.reshape(x.shape())?)
    } else {
        None
    };
    let dw = if need_dw {
        Some(packed.narrow(0, nx, w.elem_count())?.reshape(w.shape())?)
    } else {
        None
    };
    Ok((dx, dw))
}

// ---------------------------------------------------------------------------------------------
// GEMM
// ---------------------------------------------------------------------------------------------

/// A read-only strided matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// A writable strided matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug)]
struct MatMut<'a> {
    data: &'a mut [f32],
    rs: usize,
    cs: usize,
}

/// Row-major `rows x cols` (contiguous rows of `cols`).
fn row_major(data: &[f32], cols: usize) -> Mat<'_> {
    Mat {
        data,
        rs: cols,
        cs: 1,
    }
}

/// Column-major `rows x cols` (contiguous columns of `rows`), i.e. the transpose of a
/// row-major `cols x rows` matrix.
fn col_major(data: &[f32], rows: usize) -> Mat<'_> {
    Mat {
        data,
        rs: 1,
        cs: rows,
    }
}

/// Number of elements a `rows x cols` matrix with strides `rs`, `cs` reaches from its start.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// `dst[m, n] (+)= lhs[m, k] x rhs[k, n]` for strided matrices; `accumulate` adds to the
/// existing contents instead of overwriting them; `parallel` lets gemm split the product over
/// the rayon pool. `dst` must be row-major-like (column stride 1) or column-major-like (row
/// stride 1) with non-overlapping lines.
#[allow(unsafe_code)]
fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut<'_>,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    parallel: bool,
) {
    assert!(m > 0 && n > 0 && k > 0, "gemm_f32: empty product");
    assert!(
        (dst.cs == 1 && dst.rs >= n) || (dst.rs == 1 && dst.cs >= m),
        "gemm_f32: destination elements overlap"
    );
    assert!(
        span(m, n, dst.rs, dst.cs) <= dst.data.len(),
        "gemm_f32: dst too short"
    );
    assert!(
        span(m, k, lhs.rs, lhs.cs) <= lhs.data.len(),
        "gemm_f32: lhs too short"
    );
    assert!(
        span(k, n, rhs.rs, rhs.cs) <= rhs.data.len(),
        "gemm_f32: rhs too short"
    );
    let threads = rayon::current_num_threads();
    if parallel && threads > 1 && dst.cs == 1 && m >= 2 * SPLIT_MIN_ROWS {
        // Row blocks of the destination, one single-threaded GEMM each: gemm's own threading
        // kept 2 threads only about 80 % busy on the stacked layers' shapes (`--ops`).
        let parts = threads.min(m / SPLIT_MIN_ROWS);
        let rows = m.div_ceil(parts);
        let (rs, lhs_rs) = (dst.rs, lhs.rs);
        // Chunk i holds rows i * rows.. (the last one fewer, and only up to its last element).
        dst.data[..span(m, n, rs, 1)]
            .par_chunks_mut(rows * rs)
            .enumerate()
            .for_each(|(i, d)| {
                let m_i = rows.min(m - i * rows);
                let lhs_i = Mat {
                    data: &lhs.data[i * rows * lhs_rs..],
                    rs: lhs_rs,
                    cs: lhs.cs,
                };
                let dst_i = MatMut { data: d, rs, cs: 1 };
                gemm_f32(m_i, n, k, dst_i, accumulate, lhs_i, rhs, false);
            });
        return;
    }
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element gemm reads or writes is `ptr + i * rs + j * cs` with `i`, `j` inside
    // the matrix shape, and the asserts above bound the largest such offset by the slice
    // length; strides are non-negative `usize` values that fit `isize` because they index into
    // live allocations. Distinct `dst` elements have distinct offsets (one stride is 1, the
    // other at least the line length), and `dst` is an exclusive borrow, so it aliases neither
    // input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Dense convolution kernels
// ---------------------------------------------------------------------------------------------

/// One row (`row = ci*k*k + kh*k + kw`) of a pixel-major im2col `col[K, P]` for batch item
/// `b`: `dst[oh*Wo + ow] = x[b, ci, oh*s + kh - pad, ow*s + kw - pad]`, zero outside.
fn im2col_row(g: &Geom, x: &[f32], b: usize, row: usize, dst: &mut [f32]) {
    let (hw, kk) = (g.hw(), g.k * g.k);
    let (ci, kh, kw) = (row / kk, (row % kk) / g.k, row % g.k);
    let (oh_lo, oh_hi) = g.valid(g.ho, g.h, kh);
    let (ow_lo, ow_hi) = g.valid(g.wo, g.w, kw);
    let n = ow_hi - ow_lo;
    let plane = &x[(b * g.cin + ci) * hw..][..hw];
    dst[..oh_lo * g.wo].fill(0.0);
    dst[oh_hi * g.wo..].fill(0.0);
    if g.same_stride1() {
        if oh_lo < oh_hi && n > 0 {
            // Output and input rows have the same length, so the valid part of this row is
            // one contiguous shifted copy of the plane; the entries that wrapped around a row
            // edge are the zero padding and are cleared afterwards.
            let (j0, j1) = (oh_lo * g.wo + ow_lo, (oh_hi - 1) * g.wo + ow_hi);
            let src0 = (oh_lo + kh - g.pad) * g.w + ow_lo + kw - g.pad;
            dst[j0..j1].copy_from_slice(&plane[src0..src0 + (j1 - j0)]);
        }
        for oh in oh_lo..oh_hi {
            let d = &mut dst[oh * g.wo..(oh + 1) * g.wo];
            d[..ow_lo].fill(0.0);
            d[ow_hi..].fill(0.0);
        }
        return;
    }
    for oh in oh_lo..oh_hi {
        let d = &mut dst[oh * g.wo..(oh + 1) * g.wo];
        d[..ow_lo].fill(0.0);
        d[ow_hi..].fill(0.0);
        if n == 0 {
            continue;
        }
        let ih = oh * g.stride + kh - g.pad;
        let iw0 = ow_lo * g.stride + kw - g.pad;
        let src = &plane[ih * g.w..(ih + 1) * g.w];
        if g.stride == 1 {
            d[ow_lo..ow_hi].copy_from_slice(&src[iw0..iw0 + n]);
        } else {
            gather_strided(&mut d[ow_lo..ow_hi], &src[iw0..], g.stride);
        }
    }
}

/// `d[j] = src[j * stride]` (`src` must reach index `(d.len() - 1) * stride`).
fn gather_strided(d: &mut [f32], src: &[f32], stride: usize) {
    let Some((last, head)) = d.split_last_mut() else {
        return;
    };
    *last = src[head.len() * stride];
    if stride == 2 {
        // Exact pairs let the compiler vectorise the even-element gather.
        for (o, pair) in head.iter_mut().zip(src.chunks_exact(2)) {
            *o = pair[0];
        }
    } else {
        for (o, v) in head.iter_mut().zip(src.iter().step_by(stride)) {
            *o = *v;
        }
    }
}

/// col2im of a pixel-major `dcol[K, P]` (one batch item) into its input-gradient plane
/// `ci`: every entry im2col took from the plane is added back. `dcol` is scratch: entries
/// that belong to the zero padding may be overwritten.
fn col2im_plane(g: &Geom, dcol: &mut [f32], ci: usize, plane: &mut [f32]) {
    let (p, kk) = (g.p(), g.k * g.k);
    plane.fill(0.0);
    for kh in 0..g.k {
        let (oh_lo, oh_hi) = g.valid(g.ho, g.h, kh);
        for kw in 0..g.k {
            let (ow_lo, ow_hi) = g.valid(g.wo, g.w, kw);
            if ow_hi == ow_lo || oh_hi == oh_lo {
                continue;
            }
            let src = &mut dcol[(ci * kk + kh * g.k + kw) * p..][..p];
            if g.same_stride1() {
                // As in im2col_row: zero the padding entries, then one contiguous shifted add.
                for oh in oh_lo..oh_hi {
                    let r = &mut src[oh * g.wo..(oh + 1) * g.wo];
                    r[..ow_lo].fill(0.0);
                    r[ow_hi..].fill(0.0);
                }
                let (j0, j1) = (oh_lo * g.wo + ow_lo, (oh_hi - 1) * g.wo + ow_hi);
                let d0 = (oh_lo + kh - g.pad) * g.w + ow_lo + kw - g.pad;
                for (o, v) in plane[d0..d0 + (j1 - j0)].iter_mut().zip(&src[j0..j1]) {
                    *o += *v;
                }
                continue;
            }
            let iw0 = ow_lo * g.stride + kw - g.pad;
            for oh in oh_lo..oh_hi {
                let ih = oh * g.stride + kh - g.pad;
                let d = &mut plane[ih * g.w..(ih + 1) * g.w];
                let s = &src[oh * g.wo + ow_lo..oh * g.wo + ow_hi];
                if g.stride == 1 {
                    for (o, v) in d[iw0..iw0 + s.len()].iter_mut().zip(s) {
                        *o += *v;
                    }
                } else {
                    for (o, v) in d[iw0..].iter_mut().step_by(g.stride).zip(s) {
                        *o += *v;
                    }
                }
            }
        }
    }
}

/// Patch-major im2col for items `b0..b0 + nb`: `col[bi*P + oh*Wo + ow, ci*k*k + kh*k + kw]`,
/// one contiguous K-vector per output pixel (parallel over items).
fn im2col_patches(g: &Geom, x: &[f32], b0: usize, nb: usize, col: &mut [f32]) {
    let (p, hw, kdim, k) = (g.p(), g.hw(), g.kdim(), g.k);
    col[..nb * p * kdim]
        .par_chunks_mut(p * kdim)
        .enumerate()
        .for_each(|(bi, cb)| {
            let xb = &x[(b0 + bi) * g.cin * hw..][..g.cin * hw];
            for (pix, patch) in cb.chunks_mut(kdim).enumerate() {
                let (oh, ow) = (pix / g.wo, pix % g.wo);
                let (kh_lo, kh_hi) = g.taps(oh, g.h);
                let (kw_lo, kw_hi) = g.taps(ow, g.w);
                for (ci, pc) in patch.chunks_mut(k * k).enumerate() {
                    pc.fill(0.0);
                    for kh in kh_lo..kh_hi {
                        let ih = oh * g.stride + kh - g.pad;
                        let src = &xb[ci * hw + ih * g.w..][..g.w];
                        let iw0 = ow * g.stride + kw_lo - g.pad;
                        pc[kh * k + kw_lo..kh * k + kw_hi]
                            .copy_from_slice(&src[iw0..iw0 + kw_hi - kw_lo]);
                    }
                }
            }
        });
}

/// col2im of a patch-major `dcol` (items `b0..`, see [`im2col_patches`]) into `dx`, which
/// holds exactly those `nb` items (parallel over items).
fn col2im_patches(g: &Geom, dcol: &[f32], dx: &mut [f32]) {
    let (p, hw, kdim, k) = (g.p(), g.hw(), g.kdim(), g.k);
    dx.par_chunks_mut(g.cin * hw)
        .enumerate()
        .for_each(|(bi, dxb)| {
            dxb.fill(0.0);
            for pix in 0..p {
                let patch = &dcol[(bi * p + pix) * kdim..][..kdim];
                let (oh, ow) = (pix / g.wo, pix % g.wo);
                let (kh_lo, kh_hi) = g.taps(oh, g.h);
                let (kw_lo, kw_hi) = g.taps(ow, g.w);
                for (ci, pc) in patch.chunks(k * k).enumerate() {
                    for kh in kh_lo..kh_hi {
                        let ih = oh * g.stride + kh - g.pad;
                        let iw0 = ow * g.stride + kw_lo - g.pad;
                        let d = &mut dxb[ci * hw + ih * g.w + iw0..][..kw_hi - kw_lo];
                        for (o, v) in d.iter_mut().zip(&pc[kh * k + kw_lo..kh * k + kw_hi]) {
                            *o += *v;
                        }
                    }
                }
            }
        });
}

/// Whether to work one batch item at a time (large feature maps) rather than stacking the
/// batch into wide GEMMs (small ones).
fn per_item(g: &Geom) -> bool {
    g.p() >= PER_ITEM_MIN_P
}

/// Minimum batch items per rayon task of the per-item path: about four tasks per thread, so
/// that each task's buffers are reused over several items while the load still balances.
fn items_per_task(b: usize) -> usize {
    b.div_ceil(4 * rayon::current_num_threads()).max(1)
}

/// Forward: `y[B, Cout, Ho, Wo]`.
fn conv_fwd(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (p, kdim, cout) = (g.p(), g.kdim(), g.cout);
    let w_m = row_major(w, kdim);
    let mut out = vec![0f32; g.b * cout * p];
    if per_item(g) {
        // One task per item: pixel-major im2col into a task-local buffer, one single-threaded
        // GEMM straight into the output. With fewer items than threads, gemm splits instead.
        let gemm_par = g.b < rayon::current_num_threads();
        let col_len = if g.pointwise() { 0 } else { kdim * p };
        out.par_chunks_mut(cout * p)
            .with_min_len(items_per_task(g.b))
            .enumerate()
            .for_each_init(
                || Scratch::new(col_len),
                |col, (b, ob)| {
                    let rhs = if g.pointwise() {
                        row_major(&x[b * kdim * p..][..kdim * p], p)
                    } else {
                        for (row, dst) in col.chunks_mut(p).enumerate() {
                            im2col_row(g, x, b, row, dst);
                        }
                        row_major(col, p)
                    };
                    let dst = MatMut {
                        data: ob,
                        rs: p,
                        cs: 1,
                    };
                    gemm_f32(cout, p, kdim, dst, false, w_m, rhs, gemm_par);
                },
            );
        return out;
    }
    // Stacked, per chunk of items: patch-major col[nb*P, K], one GEMM into tmp[Cout, nb*P],
    // then permute into NCHW.
    let nb_max = g.chunk();
    let mut col = Scratch::new(nb_max * p * kdim);
    let mut tmp = Scratch::new(cout * nb_max * p);
    for b0 in (0..g.b).step_by(nb_max) {
        let nb = nb_max.min(g.b - b0);
        let n = nb * p;
        im2col_patches(g, x, b0, nb, &mut col);
        let dst = MatMut {
            data: &mut tmp,
            rs: n,
            cs: 1,
        };
        gemm_f32(cout, n, kdim, dst, false, w_m, col_major(&col, kdim), true);
        let tmp = &tmp;
        out[b0 * cout * p..(b0 + nb) * cout * p]
            .par_chunks_mut(p)
            .enumerate()
            .for_each(|(idx, o)| {
                let (bi, co) = (idx / cout, idx % cout);
                o.copy_from_slice(&tmp[co * n + bi * p..][..p]);
            });
    }
    out
}

/// Backward: returns `[dx (if need_dx), dw (if need_dw)]` concatenated.
fn conv_bwd(g: &Geom, x: &[f32], w: &[f32], dy: &[f32], need_dx: bool, need_dw: bool) -> Vec<f32> {
    let nx = if need_dx { g.b * g.cin * g.hw() } else { 0 };
    let nw = if need_dw { g.cout * g.kdim() } else { 0 };
    let mut grads = vec![0f32; nx + nw];
    let (dx, dw) = grads.split_at_mut(nx);
    let (dx, dw) = (need_dx.then_some(dx), need_dw.then_some(dw));
    if per_item(g) {
        conv_bwd_per_item(g, x, w, dy, dx, dw);
    } else {
        conv_bwd_stacked(g, x, w, dy, dx, dw);
    }
    grads
}

/// Backward one item per task: `dW^T_task += col_b dY_b^T` (accumulated transposed, which
/// gemm runs faster here), `dcol = W^T dY_b`, col2im into `dX_b`; the per-task weight
/// gradients are summed and transposed at the end.
fn conv_bwd_per_item(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
) {
    let (p, kdim, cout, xlen) = (g.p(), g.kdim(), g.cout, g.cin * g.hw());
    let need_dw = dw.is_some();
    let need_dx = dx.is_some();
    let gemm_par = g.b < rayon::current_num_threads();
    let dx_items: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx.chunks_mut(xlen).map(Some).collect(),
        None => (0..g.b).map(|_| None).collect(),
    };
    let buf = |needed: bool| {
        if needed && !g.pointwise() {
            kdim * p
        } else {
            0
        }
    };
    let (col_len, dcol_len) = (buf(need_dw), buf(need_dx));
    let dwt_sum = dx_items
        .into_par_iter()
        .with_min_len(items_per_task(g.b))
        .enumerate()
        .fold(
            || {
                // dW^T accumulates from zero; col and dcol are overwritten before every read.
                let dwt = vec![0f32; if need_dw { cout * kdim } else { 0 }];
                (dwt, Scratch::new(col_len), Scratch::new(dcol_len))
            },
            |(mut dwt, mut col, mut dcol), (b, dx_b)| {
                let dy_b = row_major(&dy[b * cout * p..][..cout * p], p);
                if need_dw {
                    // col_b [K, P] (or the input itself for 1x1), read as col_b^T [P, K].
                    let col_t = if g.pointwise() {
                        col_major(&x[b * xlen..][..xlen], p)
                    } else {
                        for (row, dst) in col.chunks_mut(p).enumerate() {
                            im2col_row(g, x, b, row, dst);
                        }
                        col_major(&col, p)
                    };
                    let dst = MatMut {
                        data: &mut dwt,
                        rs: 1,
                        cs: cout,
                    };
                    gemm_f32(cout, kdim, p, dst, true, dy_b, col_t, gemm_par);
                }
                if let Some(dx_b) = dx_b {
                    let w_t = col_major(w, kdim);
                    if g.pointwise() {
                        let dst = MatMut {
                            data: dx_b,
                            rs: p,
                            cs: 1,
                        };
                        gemm_f32(kdim, p, cout, dst, false, w_t, dy_b, gemm_par);
                    } else {
                        let dst = MatMut {
                            data: &mut dcol,
                            rs: p,
                            cs: 1,
                        };
                        gemm_f32(kdim, p, cout, dst, false, w_t, dy_b, gemm_par);
                        for (ci, plane) in dx_b.chunks_mut(g.hw()).enumerate() {
                            col2im_plane(g, &mut dcol, ci, plane);
                        }
                    }
                }
                (dwt, col, dcol)
            },
        )
        .map(|(dwt, _, _)| dwt)
        .reduce_with(|mut a, b| {
            for (x, y) in a.iter_mut().zip(&b) {
                *x += *y;
            }
            a
        });
    if let (Some(dw), Some(dwt)) = (dw, dwt_sum) {
        for (c, row) in dw.chunks_mut(kdim).enumerate() {
            for (kk, v) in row.iter_mut().enumerate() {
                *v = dwt[kk * cout + c];
            }
        }
    }
}

/// Backward with the batch stacked (small feature maps), per chunk of items:
/// `dYr[Cout, nb*P]`, `dW += dYr col` (patch-major col), `dcol = dYr^T W` (patch-major),
/// col2im; each step parallel inside.
fn conv_bwd_stacked(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    mut dx: Option<&mut [f32]>,
    mut dw: Option<&mut [f32]>,
) {
    let (p, kdim, cout, xlen) = (g.p(), g.kdim(), g.cout, g.cin * g.hw());
    let nb_max = g.chunk();
    let mut dyr = Scratch::new(cout * nb_max * p);
    let mut col = Scratch::new(if dw.is_some() { nb_max * p * kdim } else { 0 });
    let mut dcol = Scratch::new(if dx.is_some() { nb_max * p * kdim } else { 0 });
    for b0 in (0..g.b).step_by(nb_max) {
        let nb = nb_max.min(g.b - b0);
        let n = nb * p;
        // dY chunk [nb, Cout, P] -> dYr [Cout, nb*P].
        dyr[..cout * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(co, row)| {
                for bi in 0..nb {
                    let src = &dy[((b0 + bi) * cout + co) * p..][..p];
                    row[bi * p..(bi + 1) * p].copy_from_slice(src);
                }
            });
        if let Some(dw) = dw.as_deref_mut() {
            im2col_patches(g, x, b0, nb, &mut col);
            let dst = MatMut {
                data: dw,
                rs: kdim,
                cs: 1,
            };
            let (lhs, rhs) = (row_major(&dyr, n), row_major(&col, kdim));
            gemm_f32(cout, kdim, n, dst, b0 > 0, lhs, rhs, true);
        }
        if let Some(dx) = dx.as_deref_mut() {
            let dst = MatMut {
                data: &mut dcol,
                rs: kdim,
                cs: 1,
            };
            let (lhs, rhs) = (col_major(&dyr, n), row_major(w, kdim));
            gemm_f32(n, kdim, cout, dst, false, lhs, rhs, true);
            col2im_patches(g, &dcol, &mut dx[b0 * xlen..(b0 + nb) * xlen]);
        }
    }
}

/// Forward custom op of [`conv2d`]: arguments `(x, w)`.
#[derive(Debug, Clone, Copy)]
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fast-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span("conv fwd");
        let g = Geom::from_layouts(l1, l2, self.stride, self.padding)?;
        let x = f32_slice(s1, l1, "conv", "input")?;
        let w = f32_slice(s2, l2, "conv", "weight")?;
        let y = conv_fwd(&g, x, w);
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (need_dx, need_dw) = (x.track_op(), w.track_op());
        conv2d_backward(x, w, grad, (self.stride, self.padding), need_dx, need_dw)
    }
}

/// [`conv2d`]'s forward outside autograd, for a caller that runs the backward pass itself
/// ([`conv2d_backward`]; the taped ResNet-18 step). Only for what the custom op handles:
/// f32 on the CPU, "same"-style square kernels; anything else is an error.
pub(crate) fn conv2d_untracked(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if !conv_op_fits(x, w, stride, padding) {
        bail!(
            "conv: input {:?} and weight {:?} ({:?} on {:?}) are outside the CPU f32 custom op",
            x.dims(),
            w.dims(),
            x.dtype(),
            x.device().location()
        )
    }
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &Conv2dOp { stride, padding })
}

/// The gradients of [`conv2d`] for the output gradient `dy`: `(dx, dw)`, each computed only
/// when asked (`need_dx`, `need_dw`). `(stride, padding)` as the forward.
pub(crate) fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    (stride, padding): (usize, usize),
    need_dx: bool,
    need_dw: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if !need_dx && !need_dw {
        return Ok((None, None));
    }
    let op = Conv2dBackward {
        stride,
        padding,
        need_dx,
        need_dw,
    };
    let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &op)?;
    unpack_grads(packed, x, w, need_dx, need_dw)
}

/// Backward custom op of [`conv2d`]: arguments `(x, w, dy)`, result `[dx, dw]` flattened and
/// concatenated (each only if requested).
#[derive(Debug, Clone, Copy)]
struct Conv2dBackward {
    stride: usize,
    padding: usize,
    need_dx: bool,
    need_dw: bool,
}

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "fast-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span("conv bwd");
        let g = Geom::from_layouts(l1, l2, self.stride, self.padding)?;
        if l3.dims() != [g.b, g.cout, g.ho, g.wo] {
            bail!("conv backward: gradient shape {:?}", l3.dims());
        }
        let x = f32_slice(s1, l1, "conv", "input")?;
        let w = f32_slice(s2, l2, "conv", "weight")?;
        let dy = f32_slice(s3, l3, "conv", "gradient")?;
        let grads = conv_bwd(&g, x, w, dy, self.need_dx, self.need_dw);
        let n = grads.len();
        Ok((CpuStorage::F32(grads), Shape::from(n)))
    }
}

// ---------------------------------------------------------------------------------------------
// Depthwise kernels
// ---------------------------------------------------------------------------------------------

/// One output plane: `out = sum_{kh,kw} wk[kh,kw] * shifted input plane`.
fn dw_plane_fwd(g: &Geom, xp: &[f32], wk: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for kh in 0..g.k {
        let (oh_lo, oh_hi) = g.valid(g.ho, g.h, kh);
        for kw in 0..g.k {
            let (ow_lo, ow_hi) = g.valid(g.wo, g.w, kw);
            if ow_hi == ow_lo {
                continue;
            }
            let wv = wk[kh * g.k + kw];
            let iw0 = ow_lo * g.stride + kw - g.pad;
            for oh in oh_lo..oh_hi {
                let ih = oh * g.stride + kh - g.pad;
                let src = &xp[ih * g.w..(ih + 1) * g.w];
                let d = &mut out[oh * g.wo + ow_lo..oh * g.wo + ow_hi];
                if g.stride == 1 {
                    for (o, v) in d.iter_mut().zip(&src[iw0..]) {
                        *o += wv * *v;
                    }
                } else {
                    for (o, v) in d.iter_mut().zip(src[iw0..].iter().step_by(g.stride)) {
                        *o += wv * *v;
                    }
                }
            }
        }
    }
}

/// One plane's gradients: `dx` (if given) and this plane's share of the `k*k` weight gradient.
fn dw_plane_bwd(
    g: &Geom,
    xp: &[f32],
    wk: &[f32],
    dyp: &[f32],
    mut dx: Option<&mut [f32]>,
    dwk: Option<&mut [f32]>,
) {
    if let Some(dx) = dx.as_deref_mut() {
        dx.fill(0.0);
    }
    let mut dw_acc = [0f32; 64];
    let mut dw_big = Vec::new();
    let acc: &mut [f32] = if g.k * g.k <= dw_acc.len() {
        &mut dw_acc[..g.k * g.k]
    } else {
        dw_big.resize(g.k * g.k, 0.0);
        &mut dw_big
    };
    for kh in 0..g.k {
        let (oh_lo, oh_hi) = g.valid(g.ho, g.h, kh);
        for kw in 0..g.k {
            let (ow_lo, ow_hi) = g.valid(g.wo, g.w, kw);
            if ow_hi == ow_lo {
                continue;
            }
            let wv = wk[kh * g.k + kw];
            let iw0 = ow_lo * g.stride + kw - g.pad;
            let mut sum = 0f32;
            for oh in oh_lo..oh_hi {
                let ih = oh * g.stride + kh - g.pad;
                let gy = &dyp[oh * g.wo + ow_lo..oh * g.wo + ow_hi];
                let xr = &xp[ih * g.w..(ih + 1) * g.w];
                if g.stride == 1 {
                    let xs = &xr[iw0..iw0 + gy.len()];
                    if dwk.is_some() {
                        sum += gy.iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
                    }
                    if let Some(dx) = dx.as_deref_mut() {
                        let d = &mut dx[ih * g.w + iw0..ih * g.w + iw0 + gy.len()];
                        for (o, v) in d.iter_mut().zip(gy) {
                            *o += wv * *v;
                        }
                    }
                } else {
                    if dwk.is_some() {
                        let xs = xr[iw0..].iter().step_by(g.stride);
                        sum += gy.iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
                    }
                    if let Some(dx) = dx.as_deref_mut() {
                        let d = dx[ih * g.w + iw0..(ih + 1) * g.w].iter_mut();
                        for (o, v) in d.step_by(g.stride).zip(gy) {
                            *o += wv * *v;
                        }
                    }
                }
            }
            acc[kh * g.k + kw] = sum;
        }
    }
    if let Some(dwk) = dwk {
        dwk.copy_from_slice(acc);
    }
}

fn depthwise_fwd(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (p, hw, kk, c) = (g.p(), g.hw(), g.k * g.k, g.cin);
    let mut out = vec![0f32; g.b * c * p];
    out.par_chunks_mut(p).enumerate().for_each(|(idx, o)| {
        let ch = idx % c;
        dw_plane_fwd(g, &x[idx * hw..][..hw], &w[ch * kk..][..kk], o);
    });
    out
}

/// Returns `[dx (if need_dx), dw (if need_dw)]` concatenated.
fn depthwise_bwd(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> Vec<f32> {
    let (p, hw, kk, c) = (g.p(), g.hw(), g.k * g.k, g.cin);
    let planes = g.b * c;
    let mut dx = vec![0f32; if need_dx { planes * hw } else { 0 }];
    let mut dw_part = vec![0f32; if need_dw { planes * kk } else { 0 }];
    let plane = |idx: usize, dxp: Option<&mut [f32]>, dwp: Option<&mut [f32]>| {
        let ch = idx % c;
        let (xp, wk, dyp) = (
            &x[idx * hw..][..hw],
            &w[ch * kk..][..kk],
            &dy[idx * p..][..p],
        );
        dw_plane_bwd(g, xp, wk, dyp, dxp, dwp);
    };
    match (need_dx, need_dw) {
        (true, true) => dx
            .par_chunks_mut(hw)
            .zip(dw_part.par_chunks_mut(kk))
            .enumerate()
            .for_each(|(idx, (a, b))| plane(idx, Some(a), Some(b))),
        (true, false) => dx
            .par_chunks_mut(hw)
            .enumerate()
            .for_each(|(idx, a)| plane(idx, Some(a), None)),
        (false, true) => dw_part
            .par_chunks_mut(kk)
            .enumerate()
            .for_each(|(idx, b)| plane(idx, None, Some(b))),
        (false, false) => {}
    }
    let mut grads = dx;
    if need_dw {
        let mut dw = vec![0f32; c * kk];
        for part in dw_part.chunks(c * kk) {
            for (a, b) in dw.iter_mut().zip(part) {
                *a += *b;
            }
        }
        grads.extend_from_slice(&dw);
    }
    grads
}

/// Forward custom op of [`depthwise_conv2d`]: arguments `(x, w)`.
#[derive(Debug, Clone, Copy)]
struct DepthwiseOp {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "fast-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span("depthwise fwd");
        let g = Geom::from_layouts(l1, l2, self.stride, self.padding)?;
        let x = f32_slice(s1, l1, "conv", "input")?;
        let w = f32_slice(s2, l2, "conv", "weight")?;
        let y = depthwise_fwd(&g, x, w);
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (need_dx, need_dw) = (x.track_op(), w.track_op());
        if !need_dx && !need_dw {
            return Ok((None, None));
        }
        let op = DepthwiseBackward {
            stride: self.stride,
            padding: self.padding,
            need_dx,
            need_dw,
        };
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        unpack_grads(packed, x, w, need_dx, need_dw)
    }
}

/// Backward custom op of [`depthwise_conv2d`]: `(x, w, dy)` -> `[dx, dw]` packed.
#[derive(Debug, Clone, Copy)]
struct DepthwiseBackward {
    stride: usize,
    padding: usize,
    need_dx: bool,
    need_dw: bool,
}

impl CustomOp3 for DepthwiseBackward {
    fn name(&self) -> &'static str {
        "fast-depthwise-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span("depthwise bwd");
        let g = Geom::from_layouts(l1, l2, self.stride, self.padding)?;
        if l3.dims() != [g.b, g.cout, g.ho, g.wo] {
            bail!("depthwise backward: gradient shape {:?}", l3.dims());
        }
        let x = f32_slice(s1, l1, "conv", "input")?;
        let w = f32_slice(s2, l2, "conv", "weight")?;
        let dy = f32_slice(s3, l3, "conv", "gradient")?;
        let grads = depthwise_bwd(&g, x, w, dy, self.need_dx, self.need_dw);
        let n = grads.len();
        Ok((CpuStorage::F32(grads), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn rand_t(dims: &[usize], seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1f32..1.0)).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// max |a - b| / max |b|.
    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let a = a.to_dtype(DType::F64).unwrap();
        let b = b.to_dtype(DType::F64).unwrap();
        let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap();
        let (d, s) = (
            diff.to_scalar::<f64>().unwrap(),
            scale.to_scalar::<f64>().unwrap(),
        );
        d / s.max(1e-30)
    }

    /// `(b, cin, h, w, cout, k, stride, pad)`.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

    fn grid() -> Vec<Case> {
        let mut cases = Vec::new();
        let mut i = 0;
        for (k, pads) in [(1, &[0, 1][..]), (3, &[0, 1]), (7, &[0, 3])] {
            for stride in [1, 2] {
                for &pad in pads {
                    for (cin, cout) in [(3, 5), (64, 72)] {
                        // Alternate odd/even/non-square spatial sizes and batch 1/3.
                        let (h, w) = [(9, 9), (10, 12), (11, 8)][i % 3];
                        let b = [1, 3][i % 2];
                        i += 1;
                        cases.push((b, cin, h, w, cout, k, stride, pad));
                    }
                }
            }
        }
        // The deep, small-map shapes that take the stacked GEMM path, plus a large map that
        // takes the per-item path (also 1x1 pointwise there).
        cases.push((3, 64, 4, 4, 128, 3, 1, 1));
        cases.push((2, 16, 20, 18, 8, 3, 1, 1));
        cases.push((2, 16, 20, 18, 24, 1, 1, 0));
        cases.push((3, 3, 33, 32, 8, 7, 2, 3));
        cases.push((2, 8, 16, 17, 12, 3, 2, 1));
        cases.push((2, 8, 12, 11, 6, 3, 1, 0));
        cases
    }

    #[test]
    fn grid_has_both_gemm_paths() {
        let g = grid();
        let p = |c: &Case| {
            Geom::new(&[c.0, c.1, c.2, c.3], &[c.4, c.1, c.5, c.5], c.6, c.7)
                .unwrap()
                .p()
        };
        assert!(g.iter().any(|c| p(c) >= PER_ITEM_MIN_P && c.5 == 1));
        assert!(g.iter().any(|c| p(c) >= PER_ITEM_MIN_P && c.5 > 1));
        assert!(g.iter().any(|c| p(c) < PER_ITEM_MIN_P));
    }

    #[test]
    fn forward_matches_candle() {
        for (i, &(b, cin, h, w, cout, k, s, pad)) in grid().iter().enumerate() {
            let x = rand_t(&[b, cin, h, w], 2 * i as u64);
            let wt = rand_t(&[cout, cin, k, k], 2 * i as u64 + 1);
            let ours = conv2d(&x, &wt, s, pad).unwrap();
            let theirs = x.conv2d(&wt, pad, s, 1, 1).unwrap();
            let e = rel_err(&ours, &theirs);
            assert!(e < 1e-5, "case {:?}: rel err {e}", grid()[i]);
        }
    }

    #[test]
    fn forward_non_contiguous_input() {
        let x = rand_t(&[2, 10, 9, 6], 1).transpose(2, 3).unwrap();
        let wt = rand_t(&[10, 4, 3, 3], 2).transpose(0, 1).unwrap();
        assert!(!x.is_contiguous() && !wt.is_contiguous());
        let e = rel_err(
            &conv2d(&x, &wt, 1, 1).unwrap(),
            &x.conv2d(&wt, 1, 1, 1, 1).unwrap(),
        );
        assert!(e < 1e-5, "rel err {e}");
    }

    /// Gradients of `sum(f(x, w) * r)` w.r.t. `x` and `w`.
    fn grads(
        f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        x: &Tensor,
        w: &Tensor,
        r_seed: u64,
    ) -> (Tensor, Tensor) {
        let xv = Var::from_tensor(x).unwrap();
        let wv = Var::from_tensor(w).unwrap();
        let y = f(xv.as_tensor(), wv.as_tensor()).unwrap();
        let r = rand_t(y.dims(), r_seed).to_dtype(y.dtype()).unwrap();
        let loss = (y * r).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        (
            g.get(xv.as_tensor()).unwrap().clone(),
            g.get(wv.as_tensor()).unwrap().clone(),
        )
    }

    /// Independent reference: direct f64 loops for `y = conv(x, w)` (with `groups`) and the
    /// gradients of `sum(y * r)`. Needed because candle's own conv2d backward fails on inputs
    /// whose height and width need different `output_padding` (it derives it from the height
    /// only), e.g. 10x7 at stride 2.
    fn naive(
        x: &Tensor,
        w: &Tensor,
        r: &Tensor,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> (Tensor, Tensor, Tensor) {
        let v = |t: &Tensor| {
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        let (xs, ws, rs) = (v(x), v(w), v(r));
        let (b, cin, h, wd) = x.dims4().unwrap();
        let (cout, cig, k, _) = w.dims4().unwrap();
        let (_, _, ho, wo) = r.dims4().unwrap();
        let cog = cout / groups;
        let (mut y, mut dx, mut dw) = (
            vec![0f64; rs.len()],
            vec![0f64; xs.len()],
            vec![0f64; ws.len()],
        );
        for bi in 0..b {
            for co in 0..cout {
                let grp = co / cog;
                for oh in 0..ho {
                    for ow in 0..wo {
                        let yi = ((bi * cout + co) * ho + oh) * wo + ow;
                        for cl in 0..cig {
                            let ci = grp * cig + cl;
                            for kh in 0..k {
                                for kw in 0..k {
                                    let ih = (oh * stride + kh) as isize - pad as isize;
                                    let iw = (ow * stride + kw) as isize - pad as isize;
                                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                        continue;
                                    }
                                    let xi = ((bi * cin + ci) * h + ih as usize) * wd + iw as usize;
                                    let wi = ((co * cig + cl) * k + kh) * k + kw;
                                    y[yi] += xs[xi] * ws[wi];
                                    dx[xi] += rs[yi] * ws[wi];
                                    dw[wi] += rs[yi] * xs[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        let t = |v: Vec<f64>, d: &[usize]| Tensor::from_vec(v, d, &Device::Cpu).unwrap();
        (t(y, r.dims()), t(dx, x.dims()), t(dw, w.dims()))
    }

    /// Whether candle's conv2d backward can run this shape (see [`naive`]).
    fn candle_bwd_ok(h: usize, w: usize, k: usize, s: usize, pad: usize) -> bool {
        (h + 2 * pad - k) % s == (w + 2 * pad - k) % s
    }

    #[test]
    fn backward_matches_candle() {
        let mut checked = 0;
        for (i, &(b, cin, h, w, cout, k, s, pad)) in grid().iter().enumerate() {
            let x = rand_t(&[b, cin, h, w], 2 * i as u64);
            let wt = rand_t(&[cout, cin, k, k], 2 * i as u64 + 1);
            let (dx, dw) = grads(|x, w| conv2d(x, w, s, pad), &x, &wt, 99);
            let r = rand_t(
                &[
                    b,
                    cout,
                    (h + 2 * pad - k) / s + 1,
                    (w + 2 * pad - k) / s + 1,
                ],
                99,
            );
            let (_, ndx, ndw) = naive(&x, &wt, &r, s, pad, 1);
            let (ex, ew) = (rel_err(&dx, &ndx), rel_err(&dw, &ndw));
            assert!(ex < 1e-4, "case {:?}: dx rel err {ex} vs naive", grid()[i]);
            assert!(ew < 1e-4, "case {:?}: dw rel err {ew} vs naive", grid()[i]);
            if candle_bwd_ok(h, w, k, s, pad) {
                checked += 1;
                let (rdx, rdw) = grads(|x, w| x.conv2d(w, pad, s, 1, 1), &x, &wt, 99);
                let (ex, ew) = (rel_err(&dx, &rdx), rel_err(&dw, &rdw));
                assert!(ex < 1e-4, "case {:?}: dx rel err {ex}", grid()[i]);
                assert!(ew < 1e-4, "case {:?}: dw rel err {ew}", grid()[i]);
            }
        }
        assert!(
            checked * 4 >= grid().len() * 3,
            "only {checked} cases checked against candle"
        );
    }

    #[test]
    fn backward_only_weight_when_input_is_constant() {
        let x = rand_t(&[2, 3, 12, 12], 5);
        let wv = Var::from_tensor(&rand_t(&[8, 3, 7, 7], 6)).unwrap();
        let y = conv2d(&x, wv.as_tensor(), 2, 3).unwrap();
        let r = rand_t(y.dims(), 7);
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        let (_, rdw) = grads(|x, w| x.conv2d(w, 3, 2, 1, 1), &x, wv.as_tensor(), 7);
        let e = rel_err(g.get(wv.as_tensor()).unwrap(), &rdw);
        assert!(e < 1e-4, "dw rel err {e}");
    }

    /// Forward and both gradients of one shape against candle.
    fn check_against_candle(b: usize, cin: usize, hw: usize, cout: usize, k: usize, s: usize) {
        let pad = k / 2;
        let x = rand_t(&[b, cin, hw, hw], 11);
        let wt = rand_t(&[cout, cin, k, k], 12);
        let e = rel_err(
            &conv2d(&x, &wt, s, pad).unwrap(),
            &x.conv2d(&wt, pad, s, 1, 1).unwrap(),
        );
        assert!(e < 1e-5, "forward rel err {e}");
        let (dx, dw) = grads(|x, w| conv2d(x, w, s, pad), &x, &wt, 13);
        let (rdx, rdw) = grads(|x, w| x.conv2d(w, pad, s, 1, 1), &x, &wt, 13);
        assert!(rel_err(&dx, &rdx) < 1e-4, "dx {}", rel_err(&dx, &rdx));
        assert!(rel_err(&dw, &rdw) < 1e-4, "dw {}", rel_err(&dw, &rdw));
    }

    #[test]
    fn stacked_path_in_several_chunks() {
        // Small maps (stacked GEMMs) with K * P * B above COL_BUDGET: two batch chunks.
        let g = Geom::new(&[80, 256, 7, 7], &[8, 256, 3, 3], 1, 1).unwrap();
        assert!(!per_item(&g) && g.chunk() < g.b, "chunk {}", g.chunk());
        check_against_candle(80, 256, 7, 8, 3, 1);
    }

    #[test]
    fn parallel_gemm_in_row_blocks() {
        // Stacked GEMMs with enough output channels to be split into row blocks, an odd count
        // (the last block shorter), and a destination buffer longer than the product.
        let g = Geom::new(&[4, 32, 6, 6], &[161, 32, 3, 3], 1, 1).unwrap();
        assert!(!per_item(&g) && g.cout >= 2 * SPLIT_MIN_ROWS);
        check_against_candle(4, 32, 6, 161, 3, 1);
        check_against_candle(3, 16, 7, 130, 3, 2);
        // The split's result is the single-threaded GEMM's, bit for bit.
        let (m, n, k) = (200, 37, 300);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104_729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let run = |parallel: bool| {
            let mut d = vec![0f32; m * n + 5];
            let dst = MatMut {
                data: &mut d,
                rs: n,
                cs: 1,
            };
            gemm_f32(
                m,
                n,
                k,
                dst,
                false,
                row_major(&a, k),
                row_major(&b, n),
                parallel,
            );
            d
        };
        let (one, split) = (run(false), run(true));
        assert!(
            one.iter()
                .zip(&split)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
    }

    #[test]
    fn large_map_per_item() {
        let g = Geom::new(&[3, 16, 64, 64], &[4, 16, 7, 7], 2, 3).unwrap();
        assert!(per_item(&g));
        check_against_candle(3, 16, 64, 4, 7, 2);
        check_against_candle(2, 8, 48, 16, 3, 1);
    }

    #[test]
    fn depthwise_matches_candle() {
        let mut i = 0;
        for k in [3, 5] {
            for s in [1, 2] {
                for (b, c, h, w) in [(1, 4, 9, 9), (2, 6, 10, 7), (3, 5, 12, 12)] {
                    let pad = k / 2;
                    let x = rand_t(&[b, c, h, w], 100 + i);
                    let wt = rand_t(&[c, 1, k, k], 200 + i);
                    i += 1;
                    let ours = depthwise_conv2d(&x, &wt, s, pad).unwrap();
                    let theirs = x.conv2d(&wt, pad, s, 1, c).unwrap();
                    let e = rel_err(&ours, &theirs);
                    assert!(e < 1e-5, "k{k} s{s} {:?}: fwd rel err {e}", x.dims());
                    let (dx, dw) = grads(|x, w| depthwise_conv2d(x, w, s, pad), &x, &wt, 3);
                    let r = rand_t(ours.dims(), 3);
                    let (ny, ndx, ndw) = naive(&x, &wt, &r, s, pad, c);
                    assert!(rel_err(&ours, &ny) < 1e-5);
                    let (ex, ew) = (rel_err(&dx, &ndx), rel_err(&dw, &ndw));
                    assert!(
                        ex < 1e-4,
                        "k{k} s{s} {:?}: dx rel err {ex} vs naive",
                        x.dims()
                    );
                    assert!(
                        ew < 1e-4,
                        "k{k} s{s} {:?}: dw rel err {ew} vs naive",
                        x.dims()
                    );
                    if candle_bwd_ok(h, w, k, s, pad) {
                        let (rdx, rdw) = grads(|x, w| x.conv2d(w, pad, s, 1, c), &x, &wt, 3);
                        let (ex, ew) = (rel_err(&dx, &rdx), rel_err(&dw, &rdw));
                        assert!(ex < 1e-4, "k{k} s{s} {:?}: dx rel err {ex}", x.dims());
                        assert!(ew < 1e-4, "k{k} s{s} {:?}: dw rel err {ew}", x.dims());
                    }
                }
            }
        }
    }

    #[test]
    fn f64_falls_back_and_matches() {
        let x = rand_t(&[2, 3, 9, 7], 21).to_dtype(DType::F64).unwrap();
        let wt = rand_t(&[4, 3, 3, 3], 22).to_dtype(DType::F64).unwrap();
        let y = conv2d(&x, &wt, 2, 1).unwrap();
        assert_eq!(y.dtype(), DType::F64);
        // Against our f32 path (independent code) and candle's f64 conv.
        let y32 = conv2d(
            &x.to_dtype(DType::F32).unwrap(),
            &wt.to_dtype(DType::F32).unwrap(),
            2,
            1,
        )
        .unwrap();
        assert!(rel_err(&y32, &y) < 1e-5);
        assert!(rel_err(&y, &x.conv2d(&wt, 1, 2, 1, 1).unwrap()) < 1e-12);
        let (dx, dw) = grads(|x, w| conv2d(x, w, 2, 1), &x, &wt, 23);
        assert_eq!(dx.dtype(), DType::F64);
        let (rdx, rdw) = grads(
            |x, w| conv2d(x, w, 2, 1),
            &x.to_dtype(DType::F32).unwrap(),
            &wt.to_dtype(DType::F32).unwrap(),
            23,
        );
        assert!(rel_err(&rdx, &dx) < 1e-4 && rel_err(&rdw, &dw) < 1e-4);
        let yd = depthwise_conv2d(
            &x,
            &rand_t(&[3, 1, 3, 3], 24).to_dtype(DType::F64).unwrap(),
            1,
            1,
        )
        .unwrap();
        assert_eq!(yd.dtype(), DType::F64);
    }

    #[test]
    fn two_layer_chain_matches_candle() {
        let x = rand_t(&[3, 5, 11, 9], 31);
        let w1 = Var::from_tensor(&rand_t(&[16, 5, 3, 3], 32)).unwrap();
        let w2 = Var::from_tensor(&rand_t(&[7, 16, 3, 3], 33)).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let run = |ours: bool| {
            let c = |x: &Tensor, w: &Tensor, s: usize| {
                if ours {
                    conv2d(x, w, s, 1)
                } else {
                    x.conv2d(w, 1, s, 1, 1)
                }
            };
            let h = c(xv.as_tensor(), w1.as_tensor(), 2)
                .unwrap()
                .relu()
                .unwrap();
            let y = c(&h, w2.as_tensor(), 1).unwrap();
            let r = rand_t(y.dims(), 34);
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            [xv.as_tensor(), w1.as_tensor(), w2.as_tensor()].map(|t| g.get(t).unwrap().clone())
        };
        let (a, b) = (run(true), run(false));
        for (name, (ga, gb)) in ["x", "w1", "w2"].iter().zip(a.iter().zip(&b)) {
            let e = rel_err(ga, gb);
            assert!(e < 1e-4, "{name}: rel err {e}");
        }
    }
}

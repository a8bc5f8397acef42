//! The ImageNet stem's 3x3 stride-2 max-pool (padding 1) as a CPU custom op with a backward pass.
//!
//! candle's `max_pool2d` has no backward for kernel != stride, and the differentiable version
//! built from strided slices and `maximum` ([`super::resnet::max_pool_3x3_s2`]) keeps about four
//! input-sized intermediates per image until the backward pass: at 128 px and 96 views that is
//! about 0.4 GB of a training step's peak. This op keeps nothing but its input and output; the
//! backward pass finds each window's maximum again and routes the gradient to it (the first
//! maximum in row-major window order, as PyTorch's CPU kernel). Padding never wins: the pool
//! follows a ReLU, and a padded position counts as minus infinity here anyway.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::conv::f32_slice;

/// 3x3 / stride 2 / padding 1 max-pool of an NCHW tensor; f32 on the CPU uses the custom op,
/// anything else the differentiable composition.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    if op_fits(x) {
        x.contiguous()?.apply_op1(MaxPool)
    } else {
        super::resnet::max_pool_3x3_s2(x)
    }
}

/// [`max_pool_3x3_s2`] outside autograd (f32 CPU NCHW only), for a caller that runs the
/// backward pass itself with [`max_pool_3x3_s2_backward`].
pub(crate) fn max_pool_3x3_s2_untracked(x: &Tensor) -> Result<Tensor> {
    if !op_fits(x) {
        bail!(
            "max-pool: the taped forward takes non-empty f32 CPU NCHW input, got {:?} {:?}",
            x.dtype(),
            x.shape()
        )
    }
    x.contiguous()?.apply_op1_no_bwd(&MaxPool)
}

/// The input gradient of the pool for the output gradient `dy` (`y` the pooled output).
pub(crate) fn max_pool_3x3_s2_backward(x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    x.apply_op3_no_bwd(y, &dy.contiguous()?, &MaxPoolBackward)
}

/// Whether the custom op pools `x`: non-empty f32 NCHW on the CPU.
fn op_fits(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu() && x.rank() == 4 && x.elem_count() > 0
}

fn out_side(n: usize) -> usize {
    (n - 1) / 2 + 1
}

/// The larger of two values, NaN if either is (a NaN anywhere in a window makes its maximum NaN,
/// as PyTorch's kernel).
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || a > b { a } else { b }
}

/// Pool one `h x w` plane into `out` (`ho x wo`), separably: each row's stride-2 maxima of three
/// columns into `hm` (`h x wo`, reused between planes), then the maxima of three rows of `hm`
/// (contiguous rows, which vectorise).
fn pool_plane(plane: &[f32], h: usize, w: usize, hm: &mut Vec<f32>, out: &mut [f32]) {
    let (ho, wo) = (out_side(h), out_side(w));
    hm.resize(h * wo, 0.0);
    for (src, dst) in plane.chunks_exact(w).zip(hm.chunks_exact_mut(wo)) {
        // Column window of output ow: 2ow-1 ..= 2ow+1, clipped.
        dst[0] = if w > 1 {
            nan_max(src[0], src[1])
        } else {
            src[0]
        };
        for (ow, d) in dst.iter_mut().enumerate().skip(1) {
            let c = 2 * ow;
            let m = nan_max(src[c - 1], src[c]);
            *d = if c + 1 < w { nan_max(m, src[c + 1]) } else { m };
        }
    }
    for (oh, o) in out.chunks_exact_mut(wo).enumerate() {
        let r0 = (2 * oh).saturating_sub(1);
        let r1 = (2 * oh + 1).min(h - 1);
        o.copy_from_slice(&hm[r0 * wo..r0 * wo + wo]);
        for r in r0 + 1..=r1 {
            for (v, &m) in o.iter_mut().zip(&hm[r * wo..r * wo + wo]) {
                *v = nan_max(*v, m);
            }
        }
    }
    debug_assert_eq!(out.len(), ho * wo);
}

/// Index (in the plane) of the first element of the window rows `r0..=r1`, columns `c0..=c1`
/// (row-major order) that equals `v`, the window's maximum (or is NaN when `v` is): where
/// PyTorch's CPU kernel routes the gradient.
#[inline]
fn first_equal(
    plane: &[f32],
    w: usize,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    v: f32,
) -> usize {
    let nan = v.is_nan();
    for r in r0..=r1 {
        for c in c0..=c1 {
            let x = plane[r * w + c];
            if x == v || (nan && x.is_nan()) {
                return r * w + c;
            }
        }
    }
    r0 * w + c0 // unreachable for a window's own maximum
}

/// [`first_equal`] for a whole 3x3 window starting at plane index `base` whose maximum `v` is
/// not NaN, without branches: every position is compared, the last match in reverse order (the
/// first in row-major order) wins. The stem's windows are almost all whole ones, and the early
/// exit's unpredictable branch was most of the backward pass's time.
#[inline(always)]
fn first_equal_3x3(plane: &[f32], w: usize, base: usize, v: f32) -> usize {
    let window = &plane[base..=base + 2 * w + 2];
    let mut at = 2 * w + 2;
    for r in (0..3).rev() {
        for c in (0..3).rev() {
            let off = r * w + c;
            at = if window[off] == v { off } else { at };
        }
    }
    base + at
}

struct MaxPool;

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span("pool fwd");
        let x = f32_slice(s, l, "max-pool", "input")?;
        let &[b, c, h, w] = l.dims() else {
            bail!("max-pool: input must be NCHW, got {:?}", l.dims())
        };
        let (ho, wo) = (out_side(h), out_side(w));
        let mut y = vec![0f32; b * c * ho * wo];
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each_init(Vec::new, |hm, (yo, plane)| pool_plane(plane, h, w, hm, yo));
        Ok((CpuStorage::F32(y), Shape::from((b, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        Ok(Some(max_pool_3x3_s2_backward(x, res, dy)?))
    }
}

/// Arguments `(x, y, dy)` (`y` the pooled output), result `dx` (shape of `x`).
struct MaxPoolBackward;

impl CustomOp3 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2-backward"
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
        let _span = super::profile::span("pool bwd");
        let x = f32_slice(s1, l1, "max-pool", "input")?;
        let y = f32_slice(s2, l2, "max-pool", "output")?;
        let dy = f32_slice(s3, l3, "max-pool", "gradient")?;
        let &[b, c, h, w] = l1.dims() else {
            bail!("max-pool backward: input must be NCHW, got {:?}", l1.dims())
        };
        let (ho, wo) = (out_side(h), out_side(w));
        if l2.dims() != [b, c, ho, wo] || l3.dims() != [b, c, ho, wo] {
            bail!(
                "max-pool backward: output {:?} and gradient {:?} for input {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            )
        }
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(y.par_chunks(ho * wo)))
            .zip(dy.par_chunks(ho * wo))
            .for_each(|((d, (plane, yp)), g)| {
                for oh in 0..ho {
                    let (r0, r1) = ((2 * oh).saturating_sub(1), (2 * oh + 1).min(h - 1));
                    for ow in 0..wo {
                        let (c0, c1) = ((2 * ow).saturating_sub(1), (2 * ow + 1).min(w - 1));
                        let v = yp[oh * wo + ow];
                        let i = if r1 - r0 == 2 && c1 - c0 == 2 && !v.is_nan() {
                            first_equal_3x3(plane, w, r0 * w + c0, v)
                        } else {
                            first_equal(plane, w, (r0, r1), (c0, c1), v)
                        };
                        d[i] += g[oh * wo + ow];
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    /// Same values and input gradient as the differentiable composition (no ties: random
    /// normal input), on even and odd sides; eval equals candle's pool.
    #[test]
    fn equals_the_differentiable_pool() {
        for (h, w) in [(8usize, 8usize), (7, 9), (1, 3)] {
            let x = Var::from_tensor(
                &Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu)
                    .unwrap()
                    .relu()
                    .unwrap(),
            )
            .unwrap();
            let y1 = max_pool_3x3_s2(x.as_tensor()).unwrap();
            let y2 = super::super::resnet::max_pool_3x3_s2(x.as_tensor()).unwrap();
            assert_eq!(y1.dims(), y2.dims());
            let v1 = y1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(v1, y2.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let candle = x
                .as_tensor()
                .pad_with_zeros(D::Minus1, 1, 1)
                .unwrap()
                .pad_with_zeros(D::Minus2, 1, 1)
                .unwrap()
                .max_pool2d_with_stride(3, 2)
                .unwrap();
            assert_eq!(v1, candle.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            // Gradients: use strictly positive inputs so the composition has no ties either.
            let xp = Var::from_tensor(
                &(Tensor::rand(0f32, 1.0, (2, 3, h, w), &Device::Cpu).unwrap() + 0.1).unwrap(),
            )
            .unwrap();
            let up = Tensor::randn(0f32, 1.0, y1.dims(), &Device::Cpu).unwrap();
            let g1 = (max_pool_3x3_s2(xp.as_tensor()).unwrap() * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (super::super::resnet::max_pool_3x3_s2(xp.as_tensor()).unwrap() * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let d1 = g1.get(xp.as_tensor()).unwrap().flatten_all().unwrap();
            let d2 = g2.get(xp.as_tensor()).unwrap().flatten_all().unwrap();
            let diff = (d1 - d2).unwrap().abs().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6, "{h}x{w}");
        }
    }

    /// Ties and NaN, against a direct per-window reference: on ReLU output (many zeros, so many
    /// tied windows) each window's gradient goes to its first maximum in row-major order, as
    /// PyTorch's CPU kernel; a NaN anywhere in a window makes its output NaN and takes the
    /// gradient.
    #[test]
    fn ties_go_to_the_first_maximum_and_nan_propagates() {
        for (h, w) in [(9usize, 8usize), (2, 2), (5, 1)] {
            let mut xv: Vec<f32> = Tensor::randn(0f32, 1.0, (2, 2, h, w), &Device::Cpu)
                .unwrap()
                .relu()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            // Quantise so that equal positive values occur too, and put a NaN in plane 1.
            for v in xv.iter_mut() {
                *v = (*v * 2.0).round() / 2.0;
            }
            xv[h * w + (h / 2) * w] = f32::NAN;
            let x = Var::from_tensor(
                &Tensor::from_vec(xv.clone(), (2, 2, h, w), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let y = max_pool_3x3_s2(x.as_tensor()).unwrap();
            let (ho, wo) = (out_side(h), out_side(w));
            let up: Vec<f32> = (0..4 * ho * wo).map(|i| 1.0 + i as f32).collect();
            let upt = Tensor::from_vec(up.clone(), (2, 2, ho, wo), &Device::Cpu).unwrap();
            let g = (&y * &upt).unwrap().sum_all().unwrap().backward().unwrap();
            let got_y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got_d = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut want_d = vec![0f32; xv.len()];
            for p in 0..4 {
                let plane = &xv[p * h * w..(p + 1) * h * w];
                for oh in 0..ho {
                    for ow in 0..wo {
                        // First maximum, NaN first, scanning the clipped window row by row.
                        let mut best: Option<(usize, f32)> = None;
                        for r in (2 * oh).saturating_sub(1)..=(2 * oh + 1).min(h - 1) {
                            for c in (2 * ow).saturating_sub(1)..=(2 * ow + 1).min(w - 1) {
                                let v = plane[r * w + c];
                                let better = match best {
                                    None => true,
                                    Some((_, b)) => !b.is_nan() && (v.is_nan() || v > b),
                                };
                                if better {
                                    best = Some((r * w + c, v));
                                }
                            }
                        }
                        let (at, v) = best.unwrap();
                        let o = p * ho * wo + oh * wo + ow;
                        assert!(
                            got_y[o] == v || (v.is_nan() && got_y[o].is_nan()),
                            "{h}x{w} plane {p} ({oh},{ow}): {} vs {v}",
                            got_y[o]
                        );
                        want_d[p * h * w + at] += up[o];
                    }
                }
            }
            let bad = got_d
                .iter()
                .zip(&want_d)
                .filter(|(a, b)| a != b && !(a.is_nan() && b.is_nan()))
                .count();
            assert_eq!(bad, 0, "{h}x{w}: {got_d:?} vs {want_d:?}");
            assert!(
                got_y[ho * wo..2 * ho * wo].iter().any(|v| v.is_nan()),
                "{h}x{w}: NaN lost"
            );
        }
    }
}

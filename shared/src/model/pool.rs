//! The ImageNet stem's 3x3 stride-2 max-pool (padding 1) as a CPU custom op with a backward pass.
//!
//! candle's `max_pool2d` has no backward for kernel != stride, and the differentiable version
//! built from strided slices and `maximum` ([`super::resnet::max_pool_3x3_s2`]) keeps about four
//! input-sized intermediates per image until the backward pass: at 128 px and 96 views that is
//! about 0.4 GB of a training step's peak. This op keeps nothing but its input and output; the
//! backward pass finds each window's maximum again and routes the gradient to it (the first
//! maximum in row-major window order, as PyTorch's CPU kernel). Padding never wins: the pool
//! follows a ReLU, and a padded position counts as minus infinity here anyway.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::conv::f32_slice;

/// 3x3 / stride 2 / padding 1 max-pool of an NCHW tensor; f32 on the CPU uses the custom op,
/// anything else the differentiable composition.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 && x.device().is_cpu() && x.rank() == 4 && x.elem_count() > 0 {
        x.contiguous()?.apply_op1(MaxPool)
    } else {
        super::resnet::max_pool_3x3_s2(x)
    }
}

fn out_side(n: usize) -> usize {
    (n - 1) / 2 + 1
}

/// Index (in the plane) of the first maximum of the window of output `(oh, ow)`.
#[inline]
fn argmax(plane: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> usize {
    let (r0, c0) = ((2 * oh).saturating_sub(1), (2 * ow).saturating_sub(1));
    let (r1, c1) = ((2 * oh + 1).min(h - 1), (2 * ow + 1).min(w - 1));
    let mut best = r0 * w + c0;
    let mut bv = f32::NEG_INFINITY;
    for r in r0..=r1 {
        for c in c0..=c1 {
            let v = plane[r * w + c];
            if v > bv || v.is_nan() {
                bv = v;
                best = r * w + c;
                if v.is_nan() {
                    return best;
                }
            }
        }
    }
    best
}

struct MaxPool;

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "max-pool", "input")?;
        let &[b, c, h, w] = l.dims() else {
            bail!("max-pool: input must be NCHW, got {:?}", l.dims())
        };
        let (ho, wo) = (out_side(h), out_side(w));
        let mut y = vec![0f32; b * c * ho * wo];
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each(|(yo, plane)| {
                for oh in 0..ho {
                    for ow in 0..wo {
                        yo[oh * wo + ow] = plane[argmax(plane, h, w, oh, ow)];
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((b, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        Ok(Some(
            x.apply_op2_no_bwd(&dy.contiguous()?, &MaxPoolBackward)?,
        ))
    }
}

/// Arguments `(x, dy)`, result `dx` (shape of `x`).
struct MaxPoolBackward;

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "max-pool", "input")?;
        let dy = f32_slice(s2, l2, "max-pool", "gradient")?;
        let &[b, c, h, w] = l1.dims() else {
            bail!("max-pool backward: input must be NCHW, got {:?}", l1.dims())
        };
        let (ho, wo) = (out_side(h), out_side(w));
        if l2.dims() != [b, c, ho, wo] {
            bail!("max-pool backward: gradient shape {:?}", l2.dims())
        }
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(dy.par_chunks(ho * wo)))
            .for_each(|(d, (plane, g))| {
                for oh in 0..ho {
                    for ow in 0..wo {
                        d[argmax(plane, h, w, oh, ow)] += g[oh * wo + ow];
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
}

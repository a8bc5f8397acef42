//! The residual join of a ResNet block, `relu(y + shortcut)`, as one CPU custom op.
//!
//! Composed from candle's `add` and `relu`, the join costs two single-threaded passes and two
//! activation-sized tensors forward, and backward four more (ReLU's mask is `ge`, a cast and a
//! product) before autograd sums the gradient into both inputs. The training-step profile
//! (`cargo bench -p host-trainer --bench resnet18 -- --ops`) counted these among the largest
//! costs outside the convolutions. Here the forward is one parallel pass; the backward is one
//! parallel pass, `dy * (out > 0)` (PyTorch's ReLU rule), handed to both inputs.
//! Other dtypes and devices use the composition.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::conv::f32_slice;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `relu(y + shortcut)`, both of the same shape.
pub fn add_relu(y: &Tensor, shortcut: &Tensor) -> Result<Tensor> {
    if op_fits(y, shortcut) {
        y.contiguous()?.apply_op2(&shortcut.contiguous()?, AddRelu)
    } else {
        (y + shortcut)?.relu()
    }
}

/// [`add_relu`] outside autograd (f32 CPU, equal shapes), for a caller that runs the backward
/// pass itself: the gradient of both arguments is [`relu_mask`]`(output, dy)`.
pub(crate) fn add_relu_untracked(y: &Tensor, shortcut: &Tensor) -> Result<Tensor> {
    if !op_fits(y, shortcut) {
        bail!(
            "add-relu: the taped forward takes equal non-empty f32 CPU shapes, got {:?} and {:?}",
            y.shape(),
            shortcut.shape()
        )
    }
    y.contiguous()?
        .apply_op2_no_bwd(&shortcut.contiguous()?, &AddRelu)
}

/// Whether the custom op joins these: equal non-empty f32 shapes on the CPU.
fn op_fits(y: &Tensor, shortcut: &Tensor) -> bool {
    y.dtype() == DType::F32
        && shortcut.dtype() == DType::F32
        && y.device().is_cpu()
        && y.shape() == shortcut.shape()
        && y.elem_count() > 0
}

/// `dy * (out > 0)`: the gradient through a ReLU whose output was `out`.
pub(crate) fn relu_mask(out: &Tensor, dy: &Tensor) -> Result<Tensor> {
    out.apply_op2_no_bwd(&dy.contiguous()?, &ReluMask)
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span("add-relu fwd");
        let a = f32_slice(s1, l1, "add-relu", "input")?;
        let b = f32_slice(s2, l2, "add-relu", "shortcut")?;
        let out = zip_map("add-relu", a, b, |a, b| (a + b).max(0.0))?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        shortcut: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !y.track_op() && !shortcut.track_op() {
            return Ok((None, None));
        }
        let g = relu_mask(res, dy)?;
        Ok((
            y.track_op().then(|| g.clone()),
            shortcut.track_op().then_some(g),
        ))
    }
}

/// `dy * (out > 0)`: arguments `(out, dy)`.
pub(crate) struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span("relu-mask bwd");
        let out = f32_slice(s1, l1, "relu-mask", "output")?;
        let dy = f32_slice(s2, l2, "relu-mask", "gradient")?;
        let g = zip_map("relu-mask", out, dy, |o, d| if o > 0.0 { d } else { 0.0 })?;
        Ok((CpuStorage::F32(g), l1.shape().clone()))
    }
}

/// `f(a[i], b[i])` for every `i`, in parallel chunks; `op` names the caller in the length error.
fn zip_map(op: &str, a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Vec<f32>> {
    if a.len() != b.len() {
        bail!("{op}: arguments of {} and {} values", a.len(), b.len())
    }
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values equal the composition's bit for bit; both gradients are `up * (y + s > 0)`,
    /// PyTorch's rule, on input with exact zeros (candle's own `relu` lets the gradient through
    /// at exactly zero; PyTorch and the fused BatchNorm-ReLU do not).
    #[test]
    fn equals_add_then_relu() {
        let dev = Device::Cpu;
        for shape in [(2usize, 3usize, 5usize, 7usize), (3, 64, 33, 35)] {
            let mk = |shift: f64| {
                let t = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
                // Round to quarters: some sums are exactly zero.
                let t = ((t * 4.0).unwrap() + shift).unwrap().round().unwrap();
                Var::from_tensor(&t.affine(0.25, 0.0).unwrap()).unwrap()
            };
            let (y, s) = (mk(0.0), mk(0.5));
            let up = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let out = add_relu(y.as_tensor(), s.as_tensor()).unwrap();
            let want = (y.as_tensor() + s.as_tensor()).unwrap().relu().unwrap();
            assert_eq!(v(&out), v(&want), "{shape:?}: values");
            let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let sum = v(&(y.as_tensor() + s.as_tensor()).unwrap());
            assert!(sum.contains(&0.0), "no exact zero to test");
            let want_g: Vec<f32> = v(&up)
                .iter()
                .zip(&sum)
                .map(|(&u, &x)| if x > 0.0 { u } else { 0.0 })
                .collect();
            assert_eq!(
                v(g.get(y.as_tensor()).unwrap()),
                want_g,
                "{shape:?}: gradient of y"
            );
            assert_eq!(
                v(g.get(s.as_tensor()).unwrap()),
                want_g,
                "{shape:?}: gradient of the shortcut"
            );
        }
    }
}

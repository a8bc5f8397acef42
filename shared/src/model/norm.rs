//! BatchNorm with a fused training pass: the same parameters, buffers and numbers as
//! `candle_nn::BatchNorm` (PyTorch semantics), at a fraction of the memory.
//!
//! Why: candle's training-mode BatchNorm is composed of about eight tensor operations (transpose
//! copy, subtract the mean, square, divide, scale, shift, ...), and autograd keeps each full-size
//! intermediate until the backward pass. In ResNet-18 that made BatchNorm the largest share of a
//! training step's memory: peak resident memory of `fit` at 64 px, batch 16 (96 views) was 1.77 GB.
//! Here, for f32 tensors on the CPU, the normalisation is one custom op: the forward pass keeps
//! only its output (the input is kept by the convolution before it anyway), the backward pass
//! recomputes the normalised input from the input and the saved per-channel statistics.
//!
//! Semantics (as PyTorch and candle): training normalises with the batch mean and the biased
//! variance over all axes but the channel axis (1), and updates
//! `running = (1 - momentum) * running + momentum * batch`, with the unbiased variance for
//! `running_var`. Evaluation uses the running statistics, computed exactly as candle's
//! `forward_eval`. Other dtypes and devices use a composed version of the same formulas.
//!
//! Backward, per channel with `n` values, `xh = (x - mean) * inv_std`, `a = gamma * inv_std`:
//! `dbeta = sum dy`, `dgamma = sum dy * xh`, `dx = a * (dy - dbeta / n - xh * dgamma / n)`.
//! Statistics are accumulated in f64 (the backward pass: f32 over runs of 512 values, then f64).

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, Var, bail};
use candle_nn::{BatchNormConfig, Init, VarBuilder};
use rayon::prelude::*;

use super::conv::f32_slice;
use super::planes;

/// A BatchNorm layer over axis 1 of a `[B, C, ...]` tensor (BatchNorm1d and BatchNorm2d).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    running_mean: Var,
    running_var: Var,
    weight_and_bias: Option<(Tensor, Tensor)>,
    eps: f64,
    momentum: f64,
}

/// Build (or load) a BatchNorm with PyTorch's parameter names: `weight`, `bias` (when affine),
/// `running_mean`, `running_var`; initial values 1, 0, 0, 1 as candle and PyTorch.
pub fn batch_norm(channels: usize, cfg: BatchNormConfig, vb: VarBuilder) -> Result<BatchNorm> {
    if cfg.eps < 0.0 {
        bail!("batch-norm eps cannot be negative ({})", cfg.eps)
    }
    if !cfg.remove_mean {
        bail!("batch-norm without mean removal is not supported")
    }
    let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.))?;
    let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.))?;
    let weight_and_bias = if cfg.affine {
        Some((
            vb.get_with_hints(channels, "weight", Init::Const(1.))?,
            vb.get_with_hints(channels, "bias", Init::Const(0.))?,
        ))
    } else {
        None
    };
    Ok(BatchNorm {
        running_mean: Var::from_tensor(&running_mean)?,
        running_var: Var::from_tensor(&running_var)?,
        weight_and_bias,
        eps: cfg.eps,
        momentum: cfg.momentum,
    })
}

impl BatchNorm {
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    pub fn weight_and_bias(&self) -> Option<(&Tensor, &Tensor)> {
        self.weight_and_bias.as_ref().map(|(w, b)| (w, b))
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// `train = true`: batch statistics (and a running-statistics update); `false`: running
    /// statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false)
    }

    /// `relu(self.forward_t(x, train))`; in training on the CPU one fused op that keeps only
    /// the activated output for the backward pass.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true)
    }

    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        self.check_channels(x)?;
        if x.dtype() == DType::F32 && x.device().is_cpu() && x.elem_count() > 0 && train {
            return self.forward_train_fused(x, relu);
        }
        let y = if train {
            self.forward_train_composed(x)?
        } else {
            self.forward_eval(x)?
        };
        if relu { y.relu() } else { Ok(y) }
    }

    fn check_channels(&self, x: &Tensor) -> Result<()> {
        let channels = self.running_mean.as_tensor().dim(0)?;
        if x.rank() < 2 || x.dim(1)? != channels {
            bail!(
                "batch-norm input {:?} does not have {channels} channels on axis 1",
                x.shape()
            )
        }
        Ok(())
    }

    fn stat_shape(x: &Tensor) -> Vec<usize> {
        x.dims()
            .iter()
            .enumerate()
            .map(|(i, &d)| if i == 1 { d } else { 1 })
            .collect()
    }

    /// candle's `forward_eval`, operation for operation.
    fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let shape = Self::stat_shape(x);
        let x = x
            .broadcast_sub(&self.running_mean.as_detached_tensor().reshape(&*shape)?)?
            .broadcast_div(
                &(self.running_var.as_detached_tensor().reshape(&*shape)? + self.eps)?.sqrt()?,
            )?;
        match &self.weight_and_bias {
            None => Ok(x),
            Some((w, b)) => x
                .broadcast_mul(&w.reshape(&*shape)?)?
                .broadcast_add(&b.reshape(&*shape)?),
        }
    }

    fn update_running(&self, mean: &Tensor, var_biased: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        self.running_mean.set(&rm)?;
        let unbias = if n > 1 {
            n as f64 / (n as f64 - 1.0)
        } else {
            1.0
        };
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (var_biased * (m * unbias))?)?;
        self.running_var.set(&rv)
    }

    fn forward_train_fused(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (x, w, bias, op) = self.train_op(x, relu)?;
        x.apply_op3(&w, &bias, op)
    }

    /// The training forward outside autograd (CPU f32 only; it updates the running statistics
    /// as [`Self::forward_t`] does), with what [`BnTape::backward`] needs: for a caller that runs
    /// the backward pass itself (the taped ResNet-18 step).
    pub(crate) fn forward_taped(&self, x: &Tensor, relu: bool) -> Result<(Tensor, BnTape)> {
        if !(x.dtype() == DType::F32 && x.device().is_cpu() && x.elem_count() > 0) {
            bail!(
                "batch-norm: the taped forward takes non-empty f32 CPU input, got {:?} {:?}",
                x.dtype(),
                x.shape()
            )
        }
        self.check_channels(x)?;
        let (x, w, bias, op) = self.train_op(x, relu)?;
        let y = x.apply_op3_no_bwd(&w, &bias, &op)?;
        let tape = BnTape {
            x,
            y: y.clone(),
            params: self.weight_and_bias.clone(),
            gamma: w,
            op,
        };
        Ok((y, tape))
    }

    /// Batch statistics (updating the running ones) and the normalising op for `x`, with the
    /// affine parameters it takes (ones and zeros when the layer has none).
    fn train_op(&self, x: &Tensor, relu: bool) -> Result<(Tensor, Tensor, Tensor, NormOp)> {
        let x = x.contiguous()?;
        let (c, s) = (x.dim(1)?, x.dims()[2..].iter().product::<usize>());
        let b = x.dim(0)?;
        let stats = x.apply_op1_no_bwd(&Stats { c, s })?;
        let stats_v = stats.to_vec1::<f32>()?;
        let (mean, var) = stats_v.split_at(c);
        self.update_running(
            &Tensor::new(mean, x.device())?,
            &Tensor::new(var, x.device())?,
            b * s,
        )?;
        let inv_std: Vec<f32> = var
            .iter()
            .map(|&v| (1.0 / (v as f64 + self.eps).sqrt()) as f32)
            .collect();
        let op = NormOp {
            c,
            s,
            mean: mean.to_vec(),
            inv_std,
            relu,
        };
        let (w, bias) = match &self.weight_and_bias {
            Some((w, bias)) => (w.clone(), bias.clone()),
            None => (
                Tensor::ones(c, DType::F32, x.device())?,
                Tensor::zeros(c, DType::F32, x.device())?,
            ),
        };
        Ok((x, w, bias, op))
    }

    /// The same computation from candle tensor operations (any dtype or device).
    fn forward_train_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        })?;
        let t = xf.transpose(0, 1)?;
        let dims_t = t.dims().to_vec();
        let t = t.flatten_from(1)?.contiguous()?;
        let n = t.dim(1)?;
        let mean = t.mean_keepdim(1)?;
        let centred = t.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(1)?;
        self.update_running(
            &mean.flatten_all()?.detach(),
            &var.flatten_all()?.detach(),
            n,
        )?;
        let y = centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .to_dtype(dtype)?;
        let y = match &self.weight_and_bias {
            None => y,
            Some((w, b)) => y
                .broadcast_mul(&w.reshape(((), 1))?)?
                .broadcast_add(&b.reshape(((), 1))?)?,
        };
        y.reshape(dims_t)?.transpose(0, 1)
    }
}

/// Per-channel `f(channel, plane slice)` sums in f64 over every batch item of a `[B, C, S]`
/// buffer, in parallel over channels.
fn per_channel<F>(data: &[f32], c: usize, s: usize, f: F) -> Vec<f64>
where
    F: Fn(usize, usize, &[f32]) -> f64 + Sync,
{
    let b = data.len() / (c * s);
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..b)
                .map(|bi| {
                    let off = (bi * c + ch) * s;
                    f(ch, off, &data[off..off + s])
                })
                .sum()
        })
        .collect()
}

/// Batch mean and biased variance per channel: `[2C]` = means then variances.
struct Stats {
    c: usize,
    s: usize,
}

impl candle_core::CustomOp1 for Stats {
    fn name(&self) -> &'static str {
        "batch-norm-stats"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span("bn stats");
        let x = f32_slice(st, l, "batch-norm", "input")?;
        let n = (x.len() / self.c) as f64;
        let isa = planes::isa();
        let sums = per_channel(x, self.c, self.s, |_, _, p| planes::sum_f64(isa, p));
        let means: Vec<f64> = sums.iter().map(|s| s / n).collect();
        let sq = per_channel(x, self.c, self.s, |ch, _, p| {
            planes::sum_sq_dev_f64(isa, p, means[ch])
        });
        let mut out: Vec<f32> = means.iter().map(|&m| m as f32).collect();
        out.extend(sq.iter().map(|&q| (q / n) as f32));
        Ok((CpuStorage::F32(out), Shape::from(2 * self.c)))
    }
}

/// `y = (x - mean) * inv_std * gamma + beta` with given statistics, then `max(y, 0)` when `relu`;
/// arguments `(x, gamma, beta)`.
#[derive(Debug)]
struct NormOp {
    c: usize,
    s: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    relu: bool,
}

impl CustomOp3 for NormOp {
    fn name(&self) -> &'static str {
        "batch-norm-train"
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
        let _span = super::profile::span("bn fwd");
        let x = f32_slice(s1, l1, "batch-norm", "input")?;
        let g = f32_slice(s2, l2, "batch-norm", "weight")?;
        let be = f32_slice(s3, l3, "batch-norm", "bias")?;
        if g.len() != self.c || be.len() != self.c {
            bail!(
                "batch-norm: weight/bias length differs from {} channels",
                self.c
            )
        }
        let (c, s) = (self.c, self.s);
        let isa = planes::isa();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(s)
            .zip(x.par_chunks(s))
            .enumerate()
            .for_each(|(plane, (yo, xi))| {
                let ch = plane % c;
                let a = self.inv_std[ch] * g[ch];
                let d = be[ch] - self.mean[ch] * a;
                planes::normalise(isa, xi, a, d, self.relu, yo);
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_dx, need_dg, need_db) = (x.track_op(), g.track_op(), b.track_op());
        if !(need_dx || need_dg || need_db) {
            return Ok((None, None, None));
        }
        let (dx, dg, db) = self.backward(x, g, res, dy, need_dx)?;
        Ok((dx, need_dg.then_some(dg), need_db.then_some(db)))
    }
}

impl NormOp {
    /// `(dx if need_dx, dgamma, dbeta)` for the output gradient `dy`; `res` is the op's output.
    fn backward(
        &self,
        x: &Tensor,
        g: &Tensor,
        res: &Tensor,
        dy: &Tensor,
        need_dx: bool,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let op = NormBackward {
            c: self.c,
            s: self.s,
            mean: self.mean.clone(),
            inv_std: self.inv_std.clone(),
            gamma: g.to_vec1::<f32>()?,
            need_dx,
            relu: self.relu,
        };
        // Through the ReLU (when fused): the gradient passes where the output is positive
        // (PyTorch's rule); the backward op applies the mask as it reads `dy`.
        let packed = x.apply_op3_no_bwd(&dy.contiguous()?, res, &op)?;
        let nx = if need_dx { x.elem_count() } else { 0 };
        let dx = need_dx
            .then(|| packed.narrow(0, 0, nx)?.reshape(x.shape()))
            .transpose()?;
        let dg = packed.narrow(0, nx, self.c)?;
        let db = packed.narrow(0, nx + self.c, self.c)?;
        Ok((dx, dg, db))
    }
}

/// What the backward pass of one taped BatchNorm needs ([`BatchNorm::forward_taped`]).
#[derive(Debug)]
pub(crate) struct BnTape {
    x: Tensor,
    y: Tensor,
    /// The layer's own parameters (to key their gradients), if affine.
    params: Option<(Tensor, Tensor)>,
    gamma: Tensor,
    op: NormOp,
}

impl BnTape {
    /// The input gradient for the output gradient `dy`; the weight and bias gradients go into
    /// `grads`, keyed by the layer's parameters.
    pub(crate) fn backward(self, dy: &Tensor, grads: &mut GradStore) -> Result<Tensor> {
        let (dx, dg, db) = self.op.backward(&self.x, &self.gamma, &self.y, dy, true)?;
        if let Some((w, b)) = &self.params {
            grads.insert(w, dg);
            grads.insert(b, db);
        }
        match dx {
            Some(dx) => Ok(dx),
            None => bail!("batch-norm: the input gradient was not computed"),
        }
    }
}

/// The runs `grp` (indices into `runs`, ranges of `v`) of one side-by-side sum.
fn pick<'a>(v: &'a [f32], runs: &[(usize, usize)], grp: &[usize]) -> [&'a [f32]; planes::RUNS] {
    std::array::from_fn(|j| {
        let (k, e) = runs[grp[j]];
        &v[k..e]
    })
}

/// Backward of [`NormOp`]: arguments `(x, dy, y)` (`y` the op's output, read for the ReLU's
/// mask when `relu`), result `[dx (if asked) | dgamma | dbeta]`.
struct NormBackward {
    c: usize,
    s: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
    need_dx: bool,
    relu: bool,
}

impl CustomOp3 for NormBackward {
    fn name(&self) -> &'static str {
        "batch-norm-train-backward"
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
        let _span = super::profile::span("bn bwd");
        let x = f32_slice(s1, l1, "batch-norm", "input")?;
        let dy = f32_slice(s2, l2, "batch-norm", "gradient")?;
        let y = f32_slice(s3, l3, "batch-norm", "output")?;
        if x.len() != dy.len() || x.len() != y.len() {
            bail!(
                "batch-norm backward: gradient has {} values, output {}, input {}",
                dy.len(),
                y.len(),
                x.len()
            )
        }
        let (c, s) = (self.c, self.s);
        let n = (x.len() / c) as f64;
        let (relu, isa) = (self.relu, planes::isa());
        // dbeta = sum dy, dgamma = sum dy * xh, per channel: f32 over runs of at most 512
        // values, each in order, f64 across runs, in order. (A lane-parallel sum would run
        // faster but round differently, and every seed-measured training figure would move.)
        // Runs of one length are summed side by side, each still its own chain.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (m, is) = (self.mean[ch], self.inv_std[ch]);
                let b = x.len() / (c * s);
                let runs: Vec<(usize, usize)> = (0..b)
                    .flat_map(|bi| {
                        let off = (bi * c + ch) * s;
                        (off..off + s)
                            .step_by(512)
                            .map(move |k| (k, (k + 512).min(off + s)))
                    })
                    .collect();
                let mut part = vec![(0f32, 0f32); runs.len()];
                // Run indices grouped by length (stable: in order within a length).
                let mut order: Vec<usize> = (0..runs.len()).collect();
                order.sort_by_key(|&i| runs[i].1 - runs[i].0);
                for same in order.chunk_by(|&i, &j| runs[i].1 - runs[i].0 == runs[j].1 - runs[j].0)
                {
                    let mut groups = same.chunks_exact(planes::RUNS);
                    for grp in groups.by_ref() {
                        let (pb, pg) = planes::grad_sums_runs(
                            isa,
                            pick(x, &runs, grp),
                            pick(dy, &runs, grp),
                            pick(y, &runs, grp),
                            m,
                            is,
                            relu,
                        );
                        for (j, &i) in grp.iter().enumerate() {
                            part[i] = (pb[j], pg[j]);
                        }
                    }
                    for &i in groups.remainder() {
                        let (k, e) = runs[i];
                        part[i] = planes::grad_sums(&x[k..e], &dy[k..e], &y[k..e], m, is, relu);
                    }
                }
                part.iter().fold((0f64, 0f64), |(db, dg), &(pb, pg)| {
                    (db + pb as f64, dg + pg as f64)
                })
            })
            .collect();
        let dbeta: Vec<f64> = sums.iter().map(|p| p.0).collect();
        let dgamma: Vec<f64> = sums.iter().map(|p| p.1).collect();
        let nx = if self.need_dx { x.len() } else { 0 };
        let mut out = vec![0f32; nx + 2 * c];
        let (dx, rest) = out.split_at_mut(nx);
        if self.need_dx {
            let mb: Vec<f32> = dbeta.iter().map(|v| (v / n) as f32).collect();
            let mg: Vec<f32> = dgamma.iter().map(|v| (v / n) as f32).collect();
            dx.par_chunks_mut(s)
                .zip(x.par_chunks(s).zip(dy.par_chunks(s).zip(y.par_chunks(s))))
                .enumerate()
                .for_each(|(plane, (o, (xi, (di, yi))))| {
                    let ch = plane % c;
                    let k = planes::GradPlane {
                        mean: self.mean[ch],
                        inv_std: self.inv_std[ch],
                        a: self.gamma[ch] * self.inv_std[ch],
                        mb: mb[ch],
                        mg: mg[ch],
                        relu,
                    };
                    planes::grad_input(isa, xi, di, yi, k, o);
                });
        }
        for ch in 0..c {
            rest[ch] = dgamma[ch] as f32;
            rest[c + ch] = dbeta[ch] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(nx + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, ModuleT};
    use candle_nn::VarMap;

    fn pair(c: usize, affine: bool) -> (BatchNorm, candle_nn::BatchNorm, VarMap, VarMap) {
        let cfg = BatchNormConfig {
            eps: 1e-5,
            remove_mean: true,
            affine,
            momentum: 0.1,
        };
        let (vm1, vm2) = (VarMap::new(), VarMap::new());
        let ours = batch_norm(
            c,
            cfg,
            VarBuilder::from_varmap(&vm1, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let theirs = candle_nn::batch_norm(
            c,
            cfg,
            VarBuilder::from_varmap(&vm2, DType::F32, &Device::Cpu),
        )
        .unwrap();
        // Non-trivial affine parameters, the same in both.
        if affine {
            for vm in [&vm1, &vm2] {
                let data = vm.data().lock().unwrap();
                let w: Vec<f32> = (0..c).map(|i| 0.5 + 0.1 * i as f32).collect();
                let b: Vec<f32> = (0..c).map(|i| 0.2 * i as f32 - 0.3).collect();
                data["weight"]
                    .set(&Tensor::new(w, &Device::Cpu).unwrap())
                    .unwrap();
                data["bias"]
                    .set(&Tensor::new(b, &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        (ours, theirs, vm1, vm2)
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// Same outputs, gradients (input, weight, bias) and running statistics as candle's
    /// BatchNorm, in train and eval mode, for 4-D and 2-D inputs, affine or not.
    #[test]
    fn equals_candle_batch_norm() {
        for (shape, affine) in [
            (vec![6usize, 5, 7, 3], true),
            (vec![6, 5, 7, 3], false),
            (vec![9, 4], true),
            (vec![9, 4], false),
        ] {
            let c = shape[1];
            let (ours, theirs, vm1, vm2) = pair(c, affine);
            let x = Var::from_tensor(
                &(Tensor::randn(0f32, 2.0, &*shape, &Device::Cpu).unwrap() + 0.7).unwrap(),
            )
            .unwrap();
            let up = Tensor::randn(0f32, 1.0, &*shape, &Device::Cpu).unwrap();
            for step in 0..2 {
                let y1 = ours.forward_t(x.as_tensor(), true).unwrap();
                let y2 = theirs.forward_t(x.as_tensor(), true).unwrap();
                assert!(max_rel(&y1, &y2) < 1e-5, "{shape:?} step {step}: output");
                let g1 = (&y1 * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (&y2 * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let dx1 = g1.get(x.as_tensor()).unwrap();
                let dx2 = g2.get(x.as_tensor()).unwrap();
                assert!(
                    max_rel(dx1, dx2) < 1e-4,
                    "{shape:?}: dx {}",
                    max_rel(dx1, dx2)
                );
                if affine {
                    for name in ["weight", "bias"] {
                        let p1 = vm1.data().lock().unwrap()[name].as_tensor().clone();
                        let p2 = vm2.data().lock().unwrap()[name].as_tensor().clone();
                        let (a, b) = (g1.get(&p1).unwrap(), g2.get(&p2).unwrap());
                        assert!(max_rel(a, b) < 1e-4, "{shape:?}: d{name} {}", max_rel(a, b));
                    }
                }
                assert!(max_rel(ours.running_mean(), theirs.running_mean()) < 1e-5);
                assert!(max_rel(ours.running_var(), theirs.running_var()) < 1e-5);
            }
            let e1 = ours.forward_t(x.as_tensor(), false).unwrap();
            let e2 = theirs.forward_t(x.as_tensor(), false).unwrap();
            // Eval: the same formula; running statistics differ in the last bits (f64 sums).
            assert!(
                max_rel(&e1, &e2) < 1e-5,
                "{shape:?}: eval {}",
                max_rel(&e1, &e2)
            );
            // The composed fallback agrees with the fused path.
            let (ours2, _, _, _) = pair(c, affine);
            let y3 = ours2.forward_train_composed(x.as_tensor()).unwrap();
            let (ours3, _, _, _) = pair(c, affine);
            let y4 = ours3.forward_train_fused(x.as_tensor(), false).unwrap();
            assert!(max_rel(&y3, &y4) < 1e-5);
        }
    }

    /// The fused BatchNorm + ReLU equals candle's BatchNorm followed by `relu`, gradients too.
    #[test]
    fn fused_relu_equals_batch_norm_then_relu() {
        let shape = [5usize, 3, 6, 4];
        let (ours, theirs, vm1, vm2) = pair(3, true);
        let x =
            Var::from_tensor(&Tensor::randn(0f32, 1.5, &shape[..], &Device::Cpu).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, &shape[..], &Device::Cpu).unwrap();
        let y1 = ours.forward_relu(x.as_tensor(), true).unwrap();
        let y2 = theirs
            .forward_t(x.as_tensor(), true)
            .unwrap()
            .relu()
            .unwrap();
        assert!(max_rel(&y1, &y2) < 1e-5);
        let g1 = (&y1 * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(max_rel(a, b) < 1e-4, "dx {}", max_rel(a, b));
        for name in ["weight", "bias"] {
            let p1 = vm1.data().lock().unwrap()[name].as_tensor().clone();
            let p2 = vm2.data().lock().unwrap()[name].as_tensor().clone();
            let (a, b) = (g1.get(&p1).unwrap(), g2.get(&p2).unwrap());
            assert!(max_rel(a, b) < 1e-4, "d{name} {}", max_rel(a, b));
        }
        let e1 = ours.forward_relu(x.as_tensor(), false).unwrap();
        let e2 = theirs
            .forward_t(x.as_tensor(), false)
            .unwrap()
            .relu()
            .unwrap();
        assert!(max_rel(&e1, &e2) < 1e-5);
    }

    #[test]
    fn wrong_channel_count_is_an_error() {
        let (ours, _, _, _) = pair(3, true);
        let x = Tensor::zeros((2, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(ours.forward_t(&x, true).is_err());
    }
}

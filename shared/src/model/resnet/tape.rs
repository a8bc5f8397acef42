//! ResNet-18's training step with its own backward pass instead of candle's autograd (f32, CPU).
//!
//! Why: candle's autograd sums every gradient into a zero-filled tensor of its own
//! (`zeros_like`, then `add`), even when only one gradient arrives, which is the case for every
//! activation of this network but a block's input. In a 128 px, batch-32 step that is about 60
//! activation-sized buffers allocated, zeroed (page faults on fresh memory), read and written
//! again: about 5 % of the step in `perf` (`vec_add`, `zeros_impl` and the kernel's
//! `clear_page_erms` under them), with the convolutions near the machine's peak.
//!
//! Here the forward pass runs the same custom ops untracked and records what each backward needs
//! (the [`ResNetTape`]); the backward pass calls the same backward ops in reverse and sums only
//! where two gradients meet (a block's input: its first convolution and its shortcut). The last
//! stage's output is a fresh [`Var`], so candle's autograd still runs the global pool, the
//! projection head and the loss, and hands over the gradient at that point
//! ([`ResNetTape::backward`]). The gradients equal autograd's (tested: every parameter, bit for
//! bit up to the sign of a zero), and so do the running statistics.

use candle_core::backprop::GradStore;
use candle_core::{D, Result, Tensor, Var, bail};
use candle_nn::Conv2d;

use super::super::norm::BnTape;
use super::super::{conv, pool, residual};
use super::{BasicBlock, ResNet18, Stem};

/// One convolution's backward needs: its input and weight (the gradient's key).
#[derive(Debug)]
struct ConvTape {
    x: Tensor,
    w: Tensor,
    stride_pad: (usize, usize),
    need_dx: bool,
}

impl ConvTape {
    fn run(c: &Conv2d, x: &Tensor, need_dx: bool) -> Result<(Tensor, Self)> {
        let cfg = c.config();
        if cfg.groups != 1 || cfg.dilation != 1 || c.bias().is_some() {
            bail!("taped step: a grouped, dilated or biased convolution is not ResNet-18's")
        }
        let x = x.contiguous()?;
        let w = c.weight().clone();
        let y = conv::conv2d_untracked(&x, &w, cfg.stride, cfg.padding)?;
        let tape = Self {
            x,
            w,
            stride_pad: (cfg.stride, cfg.padding),
            need_dx,
        };
        Ok((y, tape))
    }

    /// The input gradient (if needed); the weight's goes into `grads`.
    fn backward(self, dy: &Tensor, grads: &mut GradStore) -> Result<Option<Tensor>> {
        let (dx, dw) =
            conv::conv2d_backward(&self.x, &self.w, dy, self.stride_pad, self.need_dx, true)?;
        if let Some(dw) = dw {
            grads.insert(&self.w, dw);
        }
        Ok(dx)
    }
}

/// A [`BasicBlock`]'s recorded forward pass.
#[derive(Debug)]
struct BlockTape {
    conv1: ConvTape,
    bn1: BnTape,
    conv2: ConvTape,
    bn2: BnTape,
    down: Option<(ConvTape, BnTape)>,
    /// The block's output `relu(bn2 + shortcut)`, for the ReLU's gradient.
    out: Tensor,
}

impl BasicBlock {
    fn forward_taped(&self, x: &Tensor) -> Result<(Tensor, BlockTape)> {
        let (y, conv1) = ConvTape::run(&self.conv1, x, true)?;
        let (y, bn1) = self.bn1.forward_taped(&y, true)?;
        let (y, conv2) = ConvTape::run(&self.conv2, &y, true)?;
        let (y, bn2) = self.bn2.forward_taped(&y, false)?;
        let (shortcut, down) = match &self.downsample {
            Some((c, b)) => {
                let (s, ct) = ConvTape::run(c, x, true)?;
                let (s, bt) = b.forward_taped(&s, false)?;
                (s, Some((ct, bt)))
            }
            None => (x.clone(), None),
        };
        let out = residual::add_relu_untracked(&y, &shortcut)?;
        let tape = BlockTape {
            conv1,
            bn1,
            conv2,
            bn2,
            down,
            out: out.clone(),
        };
        Ok((out, tape))
    }
}

/// Every convolution but the stem's needs its input gradient; a missing one is a bug here.
fn expect_dx(d: Option<Tensor>) -> Result<Tensor> {
    match d {
        Some(d) => Ok(d),
        None => bail!("taped step: an input gradient was not computed"),
    }
}

impl BlockTape {
    /// The block input's gradient for the output gradient `dout`.
    fn backward(self, dout: &Tensor, grads: &mut GradStore) -> Result<Tensor> {
        let g = residual::relu_mask(&self.out, dout)?;
        let d = self.bn2.backward(&g, grads)?;
        let d = expect_dx(self.conv2.backward(&d, grads)?)?;
        let d = self.bn1.backward(&d, grads)?;
        let main = expect_dx(self.conv1.backward(&d, grads)?)?;
        let shortcut = match self.down {
            Some((c, b)) => {
                let d = b.backward(&g, grads)?;
                expect_dx(c.backward(&d, grads)?)?
            }
            None => g,
        };
        main + shortcut
    }
}

/// What the backward pass of one taped ResNet-18 forward needs ([`ResNet18::forward_taped`]).
#[derive(Debug)]
pub struct ResNetTape {
    stem: ConvTape,
    stem_bn: BnTape,
    /// The max-pool's input and output (ImageNet stem).
    pool: Option<(Tensor, Tensor)>,
    blocks: Vec<BlockTape>,
    /// The last stage's output, the leaf where candle's autograd stops.
    out: Var,
}

impl ResNet18 {
    /// The training-mode forward (`forward_t(x, true)`: batch statistics, running statistics
    /// updated) of f32 CPU input, recorded for [`ResNetTape::backward`]. The returned features
    /// take part in candle's autograd only from the last stage's output on.
    pub fn forward_taped(&self, x: &Tensor) -> Result<(Tensor, ResNetTape)> {
        // The image needs no gradient.
        let (y, stem) = ConvTape::run(&self.conv1, x, false)?;
        let (mut y, stem_bn) = self.bn1.forward_taped(&y, true)?;
        let pool = if self.stem == Stem::Imagenet {
            let p = pool::max_pool_3x3_s2_untracked(&y)?;
            let saved = (y, p.clone());
            y = p;
            Some(saved)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(8);
        for block in self.layers.iter().flatten() {
            let (next, tape) = block.forward_taped(&y)?;
            blocks.push(tape);
            y = next;
        }
        let out = Var::from_tensor(&y)?;
        let features = out.as_tensor().mean(D::Minus1)?.mean(D::Minus1)?;
        let tape = ResNetTape {
            stem,
            stem_bn,
            pool,
            blocks,
            out,
        };
        Ok((features, tape))
    }
}

impl ResNetTape {
    /// Complete `grads` (from `loss.backward()` of a loss computed from the taped features)
    /// with every encoder parameter's gradient. Nothing is added when the loss does not depend
    /// on the features, as with autograd.
    pub fn backward(self, grads: &mut GradStore) -> Result<()> {
        let Some(mut d) = grads.remove(self.out.as_tensor()) else {
            return Ok(());
        };
        for block in self.blocks.into_iter().rev() {
            d = block.backward(&d, grads)?;
        }
        if let Some((x, y)) = &self.pool {
            d = pool::max_pool_3x3_s2_backward(x, y, &d)?;
        }
        let d = self.stem_bn.backward(&d, grads)?;
        self.stem.backward(&d, grads)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::super::super::params;
    use super::super::super::{ResNetConfig, Stem};
    use super::ResNet18;

    /// A narrow ResNet-18 with random weights and BatchNorm parameters.
    fn model(stem: Stem, seed: u64) -> (VarMap, ResNet18) {
        let vm = VarMap::new();
        let cfg = ResNetConfig {
            stem,
            width: 0.125,
            ..Default::default()
        };
        let m =
            ResNet18::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        params::init_params(&vm, seed).unwrap();
        params::randomize_batchnorm(&vm, seed + 1).unwrap();
        (vm, m)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Features, every parameter's gradient and the running statistics equal autograd's
    /// (`==`, so up to the sign of a zero), for both stems, odd sides included.
    #[test]
    fn gradients_equal_autograd() {
        for (stem, side) in [(Stem::Imagenet, 37), (Stem::Cifar, 16)] {
            let (vm_a, a) = model(stem, 3);
            let (vm_b, b) = model(stem, 3);
            let x = Tensor::randn(0f32, 1.0, (3, 3, side, side), &Device::Cpu).unwrap();
            let (fa, fb) = (a.forward_t(&x, true).unwrap(), b.forward_taped(&x).unwrap());
            assert_eq!(values(&fa), values(&fb.0), "{stem:?}: features");
            // A loss that weights every feature differently.
            let r = Tensor::randn(0f32, 1.0, fa.shape(), &Device::Cpu).unwrap();
            let loss = |f: &Tensor| (f * &r).unwrap().sqr().unwrap().sum_all().unwrap();
            let ga = loss(&fa).backward().unwrap();
            let mut gb = loss(&fb.0).backward().unwrap();
            fb.1.backward(&mut gb).unwrap();
            let (da, db) = (vm_a.data().lock().unwrap(), vm_b.data().lock().unwrap());
            let mut with_grad = 0;
            for (name, va) in da.iter() {
                let vb = &db[name];
                assert_eq!(
                    values(va.as_tensor()),
                    values(vb.as_tensor()),
                    "{stem:?}: {name} after the forward"
                );
                match (ga.get(va.as_tensor()), gb.get(vb.as_tensor())) {
                    (Some(x), Some(y)) => {
                        assert_eq!(values(x), values(y), "{stem:?}: gradient of {name}");
                        with_grad += 1;
                    }
                    (None, None) => {}
                    (x, y) => panic!(
                        "{stem:?}: {name}: autograd has a gradient {}, the tape {}",
                        x.is_some(),
                        y.is_some()
                    ),
                }
            }
            // 20 convolutions and 20 BatchNorms (weight and bias).
            assert_eq!(with_grad, 60, "{stem:?}");
        }
    }

    /// A loss that ignores the features leaves the encoder without gradients, as autograd does.
    #[test]
    fn no_gradient_without_a_path() {
        let (_vm, m) = model(Stem::Imagenet, 5);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let (f, tape) = m.forward_taped(&x).unwrap();
        let other = candle_core::Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let mut g = other.as_tensor().sum_all().unwrap().backward().unwrap();
        drop(f);
        tape.backward(&mut g).unwrap();
        assert_eq!(g.get_ids().count(), 1);
    }
}

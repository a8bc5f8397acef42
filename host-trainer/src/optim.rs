//! SGD with PyTorch's semantics (candle's `SGD` has neither momentum nor weight decay):
//!
//! ```text
//! d   = grad + weight_decay * p            (every parameter, BatchNorm included)
//! buf = d                                  (first step)
//! buf = momentum * buf + d                 (later steps; dampening 0, no Nesterov)
//! p   = p - lr * buf
//! ```
//! `lr` and `momentum` are public so a schedule (OneCycle cycles both) can set them every step.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

#[derive(Debug)]
pub struct Sgd {
    params: Vec<(String, Var)>,
    buffers: HashMap<String, Tensor>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// The encoder's rate as a share of `lr` (parameters outside `head.`); 0 freezes the
    /// encoder: its parameters, and their momentum, are left as they are.
    pub backbone_scale: f64,
}

impl Sgd {
    /// `params`: the trainable variables (not BatchNorm buffers), in a fixed order.
    pub fn new(params: Vec<(String, Var)>, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Self {
            params,
            buffers: HashMap::new(),
            lr,
            momentum,
            weight_decay,
            backbone_scale: 1.0,
        }
    }

    /// Apply one update from `grads`; parameters without a gradient are left untouched (as
    /// PyTorch skips parameters whose `.grad` is None).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (name, var) in &self.params {
            let lr = if name.starts_with("head.") {
                self.lr
            } else {
                self.lr * self.backbone_scale
            };
            if lr == 0.0 {
                continue;
            }
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Detached: arithmetic on a Var records an autograd graph, and a momentum buffer
            // built from recorded tensors would keep every earlier step's graph alive.
            let g = g.detach();
            let p = &var.as_tensor().detach();
            let d = if self.weight_decay != 0.0 {
                (g + (p * self.weight_decay)?)?
            } else {
                g
            };
            let d = if self.momentum != 0.0 {
                let buf = match self.buffers.get(name) {
                    Some(b) => ((b * self.momentum)? + d)?,
                    None => d,
                };
                self.buffers.insert(name.clone(), buf.clone());
                buf
            } else {
                d
            };
            var.set(&(p - (d * lr)?)?)?;
        }
        Ok(())
    }

    /// Momentum buffers by parameter name (saved with checkpoints).
    pub fn buffers(&self) -> &HashMap<String, Tensor> {
        &self.buffers
    }

    /// Restore momentum buffers (from a checkpoint).
    pub fn set_buffers(&mut self, buffers: HashMap<String, Tensor>) {
        self.buffers = buffers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn matches_pytorch_sgd_by_hand() {
        // loss = 2p -> grad 2. wd 0.1, momentum 0.9, lr 0.1, p0 = 1:
        // step 1: d = 2.1, buf = 2.1, p = 0.79
        // step 2: d = 2 + 0.079 = 2.079, buf = 0.9 * 2.1 + 2.079 = 3.969, p = 0.3931
        let p = Var::from_tensor(&Tensor::new(&[1.0f64], &Device::Cpu).unwrap()).unwrap();
        let mut opt = Sgd::new(vec![("p".into(), p.clone())], 0.1, 0.9, 0.1);
        let mut got = Vec::new();
        for _ in 0..2 {
            let loss = (p.as_tensor() * 2.0).unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            got.push(p.as_tensor().to_vec1::<f64>().unwrap()[0]);
        }
        assert!((got[0] - 0.79).abs() < 1e-15, "{got:?}");
        assert!((got[1] - 0.3931).abs() < 1e-15, "{got:?}");
        let buf = opt.buffers()["p"]
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!((buf[0] - 3.969).abs() < 1e-14, "{buf:?}");
    }

    #[test]
    fn no_momentum_no_decay_is_plain_gradient_descent() {
        let p = Var::from_tensor(&Tensor::new(&[3.0f32, -1.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = Sgd::new(vec![("p".into(), p.clone())], 0.5, 0.0, 0.0);
        let loss = p.as_tensor().sqr().unwrap().sum_all().unwrap(); // grad 2p
        opt.step(&loss.backward().unwrap()).unwrap();
        assert_eq!(p.as_tensor().to_vec1::<f32>().unwrap(), [0.0, 0.0]);
        assert!(opt.buffers().is_empty());
    }

    #[test]
    fn the_encoder_takes_its_share_of_the_rate_and_none_when_frozen() {
        let enc = Var::from_tensor(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).unwrap();
        let head = Var::from_tensor(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).unwrap();
        let mut opt = Sgd::new(
            vec![
                ("layer1.0.conv1.weight".into(), enc.clone()),
                ("head.0.weight".into(), head.clone()),
            ],
            0.5,
            0.9,
            0.0,
        );
        let loss = |e: &Var, h: &Var| (e.as_tensor() + h.as_tensor()).unwrap().sum_all().unwrap();
        opt.backbone_scale = 0.0;
        opt.step(&loss(&enc, &head).backward().unwrap()).unwrap();
        assert_eq!(enc.as_tensor().to_vec1::<f32>().unwrap(), [1.0]);
        assert_eq!(head.as_tensor().to_vec1::<f32>().unwrap(), [0.5]);
        assert!(!opt.buffers().contains_key("layer1.0.conv1.weight"));
        opt.backbone_scale = 0.1;
        opt.step(&loss(&enc, &head).backward().unwrap()).unwrap();
        assert!((enc.as_tensor().to_vec1::<f32>().unwrap()[0] - 0.95).abs() < 1e-7);
        // The head's momentum buffer carried over: 0.9 * 1 + 1.
        assert!((head.as_tensor().to_vec1::<f32>().unwrap()[0] - (0.5 - 0.5 * 1.9)).abs() < 1e-7);
    }
}

//! Parameters of a model held in a candle `VarMap`: seeded initialisation, the split between
//! trainable parameters and BatchNorm buffers, and safetensors save/load with torchvision names.
//!
//! Initialisation follows the reference: convolutions Kaiming-normal with fan-out (ReLU gain),
//! linears PyTorch's default `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, BatchNorm weight 1 / bias 0,
//! running mean 0 / variance 1. It is a pure function of the seed: parameters are filled in sorted
//! name order from one ChaCha8 stream, so the same seed gives the same model on every machine.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

use super::HEAD_PREFIX;
use crate::error::{Error, Result};

/// Which part of a model a save or load covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Encoder and head.
    All,
    /// Encoder only (torchvision names, what bundles and baselines use).
    Encoder,
}

impl Part {
    fn covers(self, name: &str) -> bool {
        match self {
            Part::All => true,
            Part::Encoder => !is_head(name),
        }
    }
}

fn is_head(name: &str) -> bool {
    name.strip_prefix(HEAD_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// BatchNorm running statistics: stored with the weights, updated by the forward pass, never by
/// the optimiser.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// All variables sorted by name.
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The variable called `name`, if the model has one.
pub fn find(varmap: &VarMap, name: &str) -> Option<Var> {
    varmap
        .data()
        .lock()
        .expect("VarMap lock poisoned")
        .get(name)
        .cloned()
}

/// Parameters the optimiser updates (everything but BatchNorm buffers), sorted by name.
pub fn trainable_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    sorted_vars(varmap)
        .into_iter()
        .filter(|(n, _)| !is_buffer(n))
        .collect()
}

/// Re-initialise every variable deterministically from `seed`.
pub fn init_params(varmap: &VarMap, seed: u64) -> Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in sorted_vars(varmap) {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f64> = if name.ends_with(".running_var") {
            vec![1.0; n]
        } else if name.ends_with(".running_mean") || name.ends_with(".bias") {
            vec![0.0; n]
        } else if dims.len() == 1 {
            // BatchNorm weight.
            vec![1.0; n]
        } else if dims.len() == 4 {
            let fan_out = dims[0] * dims[2] * dims[3];
            let normal = Normal::new(0.0, (2.0 / fan_out as f64).sqrt()).expect("finite std");
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        } else if dims.len() == 2 {
            let bound = 1.0 / (dims[1] as f64).sqrt();
            let uniform = Uniform::new(-bound, bound).expect("bound > 0");
            (0..n).map(|_| uniform.sample(&mut rng)).collect()
        } else {
            return Err(Error::invalid(
                "model parameter",
                format!("{name} has shape {dims:?}; no initialisation rule for it"),
            ));
        };
        let t = Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Give every BatchNorm non-trivial statistics and affine parameters (running mean and bias in
/// U(-0.1, 0.1), running variance and weight in U(0.5, 1.5)), seeded. For parity checks,
/// benchmarks and BatchNorm folding tests, where the identity BatchNorm of a fresh model would let
/// a wrong implementation pass.
pub fn randomize_batchnorm(varmap: &VarMap, seed: u64) -> Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in sorted_vars(varmap) {
        let (lo, hi) = if name.ends_with(".running_mean") || name.ends_with(".bias") {
            (-0.1, 0.1)
        } else if name.ends_with(".running_var") || (var.rank() == 1 && name.ends_with(".weight")) {
            (0.5, 1.5)
        } else {
            continue;
        };
        let uniform = Uniform::new(lo, hi).expect("lo < hi");
        let v: Vec<f64> = (0..var.elem_count())
            .map(|_| uniform.sample(&mut rng))
            .collect();
        var.set(&Tensor::from_vec(v, var.dims(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Serialise the covered variables as safetensors bytes (names unchanged).
pub fn to_safetensors(varmap: &VarMap, part: Part) -> Result<Vec<u8>> {
    let vars = sorted_vars(varmap);
    let tensors: Vec<(String, Tensor)> = vars
        .into_iter()
        .filter(|(n, _)| part.covers(n))
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| Error::invalid("safetensors", format!("cannot serialise weights: {e}")))
}

/// Write the covered variables to `path` atomically (temporary file, fsync, rename), so a crash
/// never leaves a half-written weight file under the final name.
pub fn save(varmap: &VarMap, path: &Path, part: Part) -> Result<()> {
    let bytes = to_safetensors(varmap, part)?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// Set the covered variables from safetensors bytes; every covered variable must be present with
/// its exact shape. Extra tensors (an `fc` layer, `num_batches_tracked`) are ignored.
pub fn load_bytes(varmap: &VarMap, bytes: &[u8], origin: &Path, part: Part) -> Result<()> {
    let tensors =
        candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| Error::Weights {
            path: origin.to_path_buf(),
            reason: format!("not a safetensors file: {e}"),
        })?;
    set_from(varmap, &tensors, origin, part)
}

/// [`load_bytes`] from a file: safetensors, or a PyTorch checkpoint (`torch.save`'s zip of
/// pickles, `.pth`/`.pt`: a state dict, or a dict holding one under `state_dict` or `model`),
/// told apart by their first bytes.
pub fn load(varmap: &VarMap, path: &Path, part: Part) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(b"PK\x03\x04") {
        let tensors = read_pth(path)?;
        return set_from(varmap, &tensors, path, part);
    }
    load_bytes(varmap, &bytes, path, part)
}

/// The tensors of a PyTorch checkpoint (candle reads the pickle; nothing is executed).
fn read_pth(path: &Path) -> Result<HashMap<String, Tensor>> {
    let err = |e: candle_core::Error| Error::Weights {
        path: path.to_path_buf(),
        reason: format!("not a PyTorch checkpoint candle can read: {e}"),
    };
    let top = candle_core::pickle::read_all_with_key(path, None).map_err(err)?;
    if !top.is_empty() {
        return Ok(top.into_iter().collect());
    }
    for key in ["state_dict", "model"] {
        if let Ok(all) = candle_core::pickle::read_all_with_key(path, Some(key))
            && !all.is_empty()
        {
            return Ok(all.into_iter().collect());
        }
    }
    Err(Error::Weights {
        path: path.to_path_buf(),
        reason: "a PyTorch checkpoint without tensors (looked at the top level, `state_dict` \
                 and `model`)"
            .into(),
    })
}

fn set_from(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    origin: &Path,
    part: Part,
) -> Result<()> {
    let weights_err = |reason: String| Error::Weights {
        path: origin.to_path_buf(),
        reason,
    };
    for (name, var) in sorted_vars(varmap) {
        if !part.covers(&name) {
            continue;
        }
        let t = tensors.get(&name).ok_or_else(|| {
            weights_err(format!("missing tensor `{name}` of shape {:?}", var.dims()))
        })?;
        if t.dims() != var.dims() {
            return Err(weights_err(format!(
                "tensor `{name}` has shape {:?}; the model expects {:?}",
                t.dims(),
                var.dims()
            )));
        }
        if !matches!(
            t.dtype(),
            DType::F16 | DType::BF16 | DType::F32 | DType::F64
        ) {
            return Err(weights_err(format!(
                "tensor `{name}` is {:?}; expected a float type",
                t.dtype()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

//! Where training and evaluation run: the CPU (default) or a CUDA GPU.
//!
//! `--device cpu|cuda|cuda:N` on `fit`, `eval` and `bench`. CUDA needs a build with the `cuda`
//! feature (`cargo build --release -p host-trainer --features cuda`, which needs the CUDA
//! toolkit); without it, asking for a GPU is refused before anything is read or written, with the
//! command that builds one. The model code is device-generic: the fast CPU kernels of
//! `firm_shared::model` (convolution, BatchNorm, max-pool) fall back to candle's own ops on other
//! devices, and scores are computed on the CPU from the embeddings either way. Export always
//! runs on the CPU: the bundle's self-test must match the device's CPU path bit for bit.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use tracing::info;

use crate::error::{Error, Result};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Self::Cuda)
                    .map_err(|_| format!("`{s}`: the GPU number after `cuda:` must be 0, 1, ...")),
                None => Err(format!(
                    "`{s}` is not a device; expected cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this binary was built with CUDA support.
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

impl DeviceSpec {
    /// Open the device. A GPU is refused (exit code 2) when this build has no CUDA support or
    /// the GPU cannot be opened (no driver, no such ordinal).
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !cuda_compiled() {
                    return Err(Error::invalid(
                        "--device",
                        format!(
                            "{self}: this host-trainer was built without CUDA; build one with \
                             `cargo build --release -p host-trainer --features cuda` (needs the \
                             CUDA toolkit) or use --device cpu"
                        ),
                    ));
                }
                let device = Device::new_cuda(n).map_err(|e| {
                    Error::invalid("--device", format!("{self}: cannot open the GPU: {e}"))
                })?;
                info!("computing on {self}");
                Ok(device)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_cuda_and_ordinals() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("CUDA".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("gpu".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceSpec::default().to_string(), "cpu");
        for bad in ["cuda:", "cuda:-1", "cuda:x", "metal", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("cuda"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cpu_opens_and_a_gpu_needs_the_feature() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        if !cuda_compiled() {
            let e = DeviceSpec::Cuda(0).open().unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
    }
}

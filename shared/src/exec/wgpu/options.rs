//! Which convolution kernels a [`super::WgpuExecutor`] runs ([`WgpuOptions`]), resolved once at
//! load against what the adapter offers ([`super::Capabilities`]) into a [`KernelPlan`].
//!
//! Two independent choices:
//! - [`ConvPrecision`], for the dense convolutions the CPU runs in f32 (f32-activation bundles,
//!   and any convolution whose input is not u8-quantized): `conv_f32`, or `conv_f16` (weights and
//!   the workgroup tiles of both operands in f16, 4-term dot products in f16, sums in f32) on an
//!   adapter with `SHADER_F16`. f16 is not the default: its rounding (measured up to 3.8e-4 of an
//!   embedding's norm on random bundles, see [`F16_EMBEDDING_REL`]) is outside the 1e-4 of the
//!   exporter's self-test tolerance, so a flash of a ResNet-18 bundle would fail on it. It is for
//!   bundles exported with the f16 tolerances and for timing (`device-runtime gpu-check`).
//! - [`Int8Kernel`], for the u8 x i8 convolutions: the same exact i32 sums either by unpacking
//!   bytes with shifts (`conv_u8i8`) or by `dot4I8Packed` (`conv_u8i8_dot4`). Both are bit for
//!   bit the CPU's integers, so the choice is only about speed; `Auto` takes `dot4I8Packed`
//!   where SPIR-V can say it natively (`OpSDot`, Vulkan 1.3 or `VK_KHR_shader_integer_dot_product`)
//!   and the shift kernel where naga would only polyfill it.

use std::fmt;
use std::str::FromStr;

use super::adapter::{Capabilities, Dot4Support};
use crate::error::{Error, Result};

/// Self-test tolerance a bundle needs to run with f16 convolutions: max |error| relative to the
/// embedding's L2 norm, as `Tolerance::embedding_rel` (the exporter writes 1e-4). Measured worst
/// on random bundles at 64 px on lavapipe (`tests/wgpu.rs`, `device-runtime gpu-check`):
/// ResNet-18 x0.25 2.8e-4, x0.125 CIFAR stem 3.8e-4, EfficientNet-Lite0 6.2e-5; trained weights
/// at 224 px have not been measured, hence the margin.
pub const F16_EMBEDDING_REL: f64 = 1e-3;
/// As [`F16_EMBEDDING_REL`], for `Tolerance::distance_abs` (the exporter writes 1e-5): measured
/// worst 7.0e-5 (ResNet-18 x0.25). That is a quarter of a calibrated bottle threshold (2.7e-4),
/// another reason f16 is opt-in.
pub const F16_DISTANCE_ABS: f64 = 3e-4;

/// Precision of the dense convolutions that are not u8 x i8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvPrecision {
    /// f32 weights, tiles and sums: the CPU executor's numbers up to summation order.
    #[default]
    F32,
    /// f16 weights and tiles, f32 sums; refused on an adapter without `SHADER_F16`.
    F16,
    /// F16 where the adapter has `SHADER_F16`, else F32.
    Auto,
}

/// How the u8 x i8 convolutions sum their bytes (the sums are the same either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Int8Kernel {
    /// Bytes unpacked with shifts, one i32 multiply-add each (`conv_u8i8`).
    ShiftUnpack,
    /// Four bytes per `dot4I8Packed` (`conv_u8i8_dot4`); refused where naga lacks the builtin,
    /// polyfilled by naga (still exact) where the adapter cannot run it natively.
    Dot4,
    /// Dot4 where the adapter runs it natively, else ShiftUnpack.
    #[default]
    Auto,
}

/// How a [`super::WgpuExecutor`] chooses its convolution kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WgpuOptions {
    pub precision: ConvPrecision,
    pub int8: Int8Kernel,
}

impl WgpuOptions {
    pub fn new(precision: ConvPrecision, int8: Int8Kernel) -> Self {
        Self { precision, int8 }
    }

    /// The kernels these options select on an adapter with `caps`: an explicit request the
    /// adapter cannot honour is an error rather than a silent fallback.
    pub fn resolve(&self, caps: &Capabilities) -> Result<KernelPlan> {
        let f16 = match self.precision {
            ConvPrecision::F32 => false,
            ConvPrecision::F16 if !caps.shader_f16 => {
                return Err(Error::Gpu {
                    what: "f16 convolutions",
                    reason: "the adapter does not offer SHADER_F16".into(),
                });
            }
            ConvPrecision::F16 => true,
            ConvPrecision::Auto => caps.shader_f16,
        };
        let dot4 = match self.int8 {
            Int8Kernel::ShiftUnpack => false,
            Int8Kernel::Dot4 if caps.dot4 == Dot4Support::Unavailable => {
                return Err(Error::Gpu {
                    what: "dot4I8Packed convolutions",
                    reason: "this wgpu's WGSL lacks packed_4x8_integer_dot_product".into(),
                });
            }
            Int8Kernel::Dot4 => true,
            Int8Kernel::Auto => caps.dot4 == Dot4Support::Native,
        };
        Ok(KernelPlan { f16, dot4 })
    }
}

/// The kernels chosen at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelPlan {
    /// Dense convolutions that are not u8 x i8 run `conv_f16`.
    pub f16: bool,
    /// u8 x i8 convolutions run `conv_u8i8_dot4`.
    pub dot4: bool,
}

impl KernelPlan {
    /// The options that select exactly this plan (no `Auto`).
    pub fn options(&self) -> WgpuOptions {
        WgpuOptions {
            precision: if self.f16 {
                ConvPrecision::F16
            } else {
                ConvPrecision::F32
            },
            int8: if self.dot4 {
                Int8Kernel::Dot4
            } else {
                Int8Kernel::ShiftUnpack
            },
        }
    }
}

impl fmt::Display for KernelPlan {
    /// `f32 + int8 shift`, `f16 + int8 dot4`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.options();
        write!(f, "{} + int8 {}", o.precision, o.int8)
    }
}

impl fmt::Display for ConvPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Auto => "auto",
        })
    }
}

impl FromStr for ConvPrecision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "auto" => Ok(Self::Auto),
            _ => Err(Error::invalid(
                "conv precision",
                format!("{s:?}: expected f32, f16 or auto"),
            )),
        }
    }
}

impl fmt::Display for Int8Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ShiftUnpack => "shift",
            Self::Dot4 => "dot4",
            Self::Auto => "auto",
        })
    }
}

impl FromStr for Int8Kernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "shift" => Ok(Self::ShiftUnpack),
            "dot4" => Ok(Self::Dot4),
            "auto" => Ok(Self::Auto),
            _ => Err(Error::invalid(
                "int8 kernel",
                format!("{s:?}: expected shift, dot4 or auto"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(shader_f16: bool, dot4: Dot4Support) -> Capabilities {
        Capabilities { shader_f16, dot4 }
    }

    #[test]
    fn auto_takes_what_the_adapter_offers_and_explicit_requests_are_refused_without_it() {
        let auto = WgpuOptions::new(ConvPrecision::Auto, Int8Kernel::Auto);
        let all = caps(true, Dot4Support::Native);
        let none = caps(false, Dot4Support::Unavailable);
        assert_eq!(
            auto.resolve(&all).unwrap(),
            KernelPlan {
                f16: true,
                dot4: true
            }
        );
        assert_eq!(auto.resolve(&none).unwrap(), KernelPlan::default());
        // A polyfilled dot4 is exact but not faster: Auto keeps the shift kernel.
        assert!(
            !auto
                .resolve(&caps(false, Dot4Support::Polyfilled))
                .unwrap()
                .dot4
        );
        let f16 = WgpuOptions::new(ConvPrecision::F16, Int8Kernel::ShiftUnpack);
        assert!(f16.resolve(&none).is_err());
        let dot4 = WgpuOptions::new(ConvPrecision::F32, Int8Kernel::Dot4);
        assert!(dot4.resolve(&none).is_err());
        assert!(
            dot4.resolve(&caps(false, Dot4Support::Polyfilled))
                .unwrap()
                .dot4
        );
        // The default is what the bundle's self-test tolerance allows everywhere.
        let d = WgpuOptions::default().resolve(&all).unwrap();
        assert!(!d.f16 && d.dot4);
    }

    #[test]
    fn names_round_trip() {
        for p in [ConvPrecision::F32, ConvPrecision::F16, ConvPrecision::Auto] {
            assert_eq!(p.to_string().parse::<ConvPrecision>().unwrap(), p);
        }
        for k in [Int8Kernel::ShiftUnpack, Int8Kernel::Dot4, Int8Kernel::Auto] {
            assert_eq!(k.to_string().parse::<Int8Kernel>().unwrap(), k);
        }
        assert!("bf16".parse::<ConvPrecision>().is_err());
        let plan = KernelPlan {
            f16: true,
            dot4: false,
        };
        assert_eq!(plan.to_string(), "f16 + int8 shift");
        assert_eq!(
            plan.options()
                .resolve(&caps(true, Dot4Support::Native))
                .unwrap(),
            plan
        );
    }
}

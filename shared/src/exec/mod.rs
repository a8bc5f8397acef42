//! The device's CPU executor of the encoder graph ([`crate::model::graph`]): weights packed when
//! a bundle loads, activations in an arena allocated then, fused epilogues, int8 where it is
//! faster, both cores. Kernels: [`kernels`]. With the `wgpu` feature, `wgpu` runs the same graph on
//! WGSL kernels.

pub mod arena;
pub mod cpu;
pub mod kernels;
#[cfg(feature = "wgpu")]
pub mod wgpu;

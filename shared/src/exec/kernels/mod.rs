//! The CPU executor's kernels, one file per op family. Each family runs on every [`Isa`] this
//! CPU supports and is tested against its scalar reference through one macro
//! ([`crate::kernel_tests!`], see [`testing`]). `unsafe` lives here only: SIMD intrinsics and the
//! raw stores of tiles that write disjoint parts of one output ([`parallel::SharedOut`]).
#![allow(unsafe_code)]

pub mod epilogue;
pub mod gemm_f32;
pub mod gemm_i8;
pub mod isa;
pub mod parallel;
pub mod testing;

pub use epilogue::{Clamp, Epilogue, Residual};
pub use isa::Isa;

//! The CPU executor's kernels, one file per op family. Each family runs on every [`Isa`] this
//! CPU supports and is tested against its scalar reference through one macro
//! ([`crate::kernel_tests!`], see [`testing`]). `unsafe` lives here only: SIMD intrinsics and the
//! raw stores of tiles that write disjoint parts of one output ([`parallel::SharedOut`]).
#![allow(unsafe_code)]

pub mod depthwise;
pub mod epilogue;
pub mod gemm_f32;
pub mod gemm_i8;
pub mod im2col;
pub mod isa;
mod lanes;
pub mod nearest;
pub mod parallel;
pub mod pool;
pub mod quantize;
pub mod testing;
pub mod window;

pub use depthwise::{depthwise_f32, reorder_depthwise_weights};
pub use epilogue::{Clamp, Epilogue, Residual};
pub use im2col::{conv_out, im2col_f32, im2col_u8, reorder_oihw_to_ohwi};
pub use isa::Isa;
pub use pool::{global_avg_pool_f32, max_pool_f32};
pub use quantize::{chw_to_hwc, quantize_u8, quantize_u8_rows};

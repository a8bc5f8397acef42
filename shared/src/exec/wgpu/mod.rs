//! The wgpu executor of the encoder graph (feature `wgpu`, DESIGN section 5): our own WGSL
//! kernels (`shaders/`, one file per op family: implicit-GEMM convolution in f32, f16 (where the
//! adapter has `SHADER_F16`) and u8 x i8 with i32 sums (bytes unpacked by shifts, or
//! `dot4I8Packed`), depthwise convolution, pooling, L2 normalisation, the kNN's bank product and
//! top-k),
//! specialised once at load with override constants; everything on the GPU is planned when a
//! bundle loads, a frame is one upload, one submit and one small readback.
//!
//! - [`adapter`]: listing adapters and choosing one ([`AdapterPolicy`]: a device never runs on a
//!   CPU-type adapter such as lavapipe; tests may), and what it can run ([`Capabilities`]).
//! - [`options`]: [`WgpuOptions`], the choice among equivalent convolution kernels (f32 / f16,
//!   shift / dot4), resolved once at load.
//! - [`kernels`]: the shader sources and how pipelines, bind groups and buffers are made.
//! - [`executor`]: [`WgpuExecutor`], the graph on those kernels, checked against the CPU executor.
//! - [`knn`]: [`GpuKnn`], the `cos_k` score as a bank matrix product plus top-k.
//!
//! Tests: `cargo test -p firm-shared --features wgpu --test wgpu` (on Mesa's lavapipe where no
//! GPU is present; with `CI=true` a missing adapter fails instead of skipping).

pub mod adapter;
pub mod executor;
pub mod kernels;
pub mod knn;
pub mod options;

/// Re-exported so callers can name adapter types without depending on wgpu themselves.
pub use ::wgpu::{AdapterInfo, DeviceType, Features};
pub use adapter::{AdapterPolicy, Capabilities, Dot4Support, Gpu, list_adapters, pick_adapter};
pub use executor::{ConvKernels, WgpuExecutor};
pub use knn::{GpuKnn, KnnResult};
pub use options::{ConvPrecision, Int8Kernel, KernelPlan, WgpuOptions};

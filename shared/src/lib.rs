//! firm-shared: everything the trainer and the device must agree on, in one copy.
//!
//! - [`preprocess`]: decode, resize, crop, normalise (the one implementation).
//! - [`model`]: ResNet-18 encoder (CIFAR and ImageNet stems), EfficientNet-Lite0 and the FIRM
//!   projection head, with PyTorch parameter names; seeded initialisation; safetensors I/O; the
//!   backend-neutral inference graph every backbone emits (`model::graph`).
//! - [`score`]: kNN cosine scores, KDE, center, the rotation/crop ensemble, AUROC and AULC.
//! - [`calibrate`]: the conformal threshold for a target false-reject rate, F1 and confusion.
//! - [`quant`]: BatchNorm folding and int8 per-channel weights.
//! - [`bundle`]: the signed bundle (format, reader, writer).
//! - [`detect`]: running a bundle: the `Embedder` backends and the one `Detector` that scores.
//! - [`exec`]: the CPU executor of the encoder graph and its kernels.
//!
//! The design these follow is FIRM (Focused In-distribution Representation Modeling); see the
//! project README for the commands that exercise them.

pub mod bundle;
pub mod calibrate;
pub mod detect;
pub mod drift;
pub mod error;
pub mod exec;
pub mod fsutil;
pub mod model;
pub mod preprocess;
pub mod process;
pub mod quant;
pub mod score;

pub use error::{Error, ErrorKind, Result};

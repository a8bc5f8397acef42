//! host-trainer: trains FIRM encoders on images of good parts, evaluates them and exports signed
//! bundles for the device.
//!
//! - [`data`]: datasets (MVTec layout, plain folders, generated demo data), decoding and caching.
//! - [`outliers`]: synthetic outliers (rotation, CutPaste, scar, NSA, outlier exposure).
//! - [`augment`]: the SimCLR view augmentations of the FIRM reference.
//! - [`batch`]: the reference's batch layouts and the parallel loader.
//! - [`loss`], [`optim`], [`schedule`]: the contrastive losses, PyTorch-style SGD, one-cycle.
//! - [`config`], [`run`], [`train`]: profiles, the run folder, the training loop (`fit`).
//! - [`eval`], [`report`], [`plots`]: evaluation, reports and plots (`eval`).
//! - [`export`], [`bundle_cmd`], [`keys`]: signed bundles (`export`, `bundle inspect|verify`,
//!   `keygen`).
//! - [`bench`]: the paper's loss comparison as a resumable grid (`bench`).
//! - [`preview`], [`smoke`], [`synth_cmd`]: other commands.

pub mod augment;
pub mod batch;
pub mod bench;
pub mod bundle_cmd;
pub mod compute;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod keys;
pub mod loss;
pub mod optim;
pub mod outliers;
pub mod patch;
pub mod plots;
pub mod preview;
pub mod report;
pub mod run;
pub mod schedule;
pub mod smoke;
pub mod synth_cmd;
pub mod train;

pub use error::{Error, Result};

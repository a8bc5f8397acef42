//! host-trainer: trains FIRM encoders on images of good parts, evaluates them and (later issues)
//! exports signed bundles for the device.
//!
//! - [`data`]: datasets (MVTec layout, plain folders, generated demo data), decoding and caching.
//! - [`outliers`]: synthetic outliers (rotation, CutPaste, scar, NSA, outlier exposure).
//! - [`augment`]: the SimCLR view augmentations of the FIRM reference.
//! - [`batch`]: the reference's batch layouts and the parallel loader.
//! - [`loss`], [`optim`]: the contrastive losses and PyTorch-style SGD.
//! - [`preview`], [`smoke`], [`synth_cmd`]: commands.

pub mod augment;
pub mod batch;
pub mod data;
pub mod error;
pub mod loss;
pub mod optim;
pub mod outliers;
pub mod preview;
pub mod smoke;
pub mod synth_cmd;

pub use error::{Error, Result};

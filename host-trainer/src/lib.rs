//! host-trainer: trains FIRM encoders on images of good parts, evaluates them and (later issues)
//! exports signed bundles for the device.

pub mod data;
pub mod loss;
pub mod optim;
pub mod outliers;
pub mod smoke;

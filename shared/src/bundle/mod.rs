//! The bundle: the signed file that carries a trained model from the trainer to the appliance
//! (DESIGN section 4). [`container`] is the byte format (a canonical, signed ustar archive); the
//! manifest, weights, bank and self-test members build on it.

pub mod container;

pub use container::{Container, ContainerError, Limits, Member};

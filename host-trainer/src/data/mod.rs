//! Training and evaluation data: where images come from, how they are decoded and cached.

pub mod dataset;
pub mod folder;
pub mod images;
pub mod labelled;
pub mod mvtec;
pub mod oneclass;
pub mod source;
pub mod synth;

pub use dataset::{Dataset, TestImage};
pub use source::{DataArgs, DataSource};

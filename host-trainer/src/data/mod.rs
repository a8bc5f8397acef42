//! Training and evaluation data.

pub mod synth;

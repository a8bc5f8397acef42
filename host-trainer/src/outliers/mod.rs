//! Synthetic outliers: images made from good ones that the model must learn to push away.

pub mod cutpaste;

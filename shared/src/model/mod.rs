//! The FIRM model: ResNet-18 encoder + projection head, their configuration, initialisation and
//! safetensors I/O with torchvision parameter names.

pub mod config;
pub mod conv;
pub mod efficientnet;
pub mod head;
pub mod params;
pub mod resnet;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

pub use config::{EncoderConfig, HeadConfig, ModelConfig, Stem};
pub use head::{ProjectionHead, l2_normalize_rows};
pub use resnet::ResNet18;

/// Prefix of the projection head's parameters; everything else is the encoder (torchvision names).
pub const HEAD_PREFIX: &str = "head";

/// Encoder and projection head as trained by FIRM.
#[derive(Debug, Clone)]
pub struct FirmModel {
    pub encoder: ResNet18,
    pub head: ProjectionHead,
}

/// Output of one forward pass.
#[derive(Debug)]
pub struct FirmOutput {
    /// Raw encoder features `[B, C]` (what scoring uses).
    pub features: Tensor,
    /// L2-normalised projections `[B, out]` (what the loss uses).
    pub z: Tensor,
}

impl FirmModel {
    /// Encoder parameters at the root (torchvision names), head under `head.`.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let encoder = ResNet18::new(&cfg.encoder, vb.clone())?;
        let head = ProjectionHead::new(
            encoder.feature_dim(),
            &cfg.head,
            &cfg.encoder,
            vb.pp(HEAD_PREFIX),
        )?;
        Ok(Self { encoder, head })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<FirmOutput> {
        let features = self.encoder.forward_t(x, train)?;
        let z = self.head.forward_t(&features, train)?;
        Ok(FirmOutput { features, z })
    }
}

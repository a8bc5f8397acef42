//! The FIRM model: ResNet-18 encoder + projection head, their configuration, initialisation and
//! safetensors I/O with torchvision parameter names.

pub mod config;
pub mod conv;
pub mod efficientnet;
pub mod graph;
pub mod head;
pub mod norm;
pub mod params;
mod planes;
pub mod pool;
pub mod profile;
pub mod residual;
pub mod resnet;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

pub use config::{
    Backbone, EfficientNetConfig, EncoderConfig, HeadConfig, ModelConfig, ResNetConfig, Stem,
};
pub use efficientnet::EfficientNetLite0;
pub use head::{ProjectionHead, l2_normalize_rows};
pub use resnet::ResNet18;

/// Prefix of the projection head's parameters; everything else is the encoder (torchvision names).
pub const HEAD_PREFIX: &str = "head";

/// The encoder network, whichever backbone the configuration names.
#[derive(Debug, Clone)]
pub enum Encoder {
    ResNet18(ResNet18),
    EfficientNetLite0(EfficientNetLite0),
}

impl Encoder {
    /// ResNet-18 parameters carry torchvision's names, EfficientNet-Lite0's the PyTorch port's.
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg {
            EncoderConfig::Resnet18(r) => Encoder::ResNet18(ResNet18::new(r, vb)?),
            EncoderConfig::EfficientnetLite0(e) => Encoder::EfficientNetLite0(
                EfficientNetLite0::new(e.features, e.bn_momentum, vb)?
                    .freeze_stages(e.frozen_stages)?
                    .freeze_bn(e.frozen_bn),
            ),
        })
    }

    pub fn feature_dim(&self) -> usize {
        match self {
            Encoder::ResNet18(m) => m.feature_dim(),
            Encoder::EfficientNetLite0(m) => m.feature_dim(),
        }
    }

    /// Images `[B, 3, H, W]` -> pooled features `[B, feature_dim]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Encoder::ResNet18(m) => m.forward_t(x, train),
            Encoder::EfficientNetLite0(m) => m.forward_t(x, train),
        }
    }

    /// The training forward of one optimisation step: `forward_t(x, true)`, except that
    /// ResNet-18 on the CPU in f32 runs its own backward pass ([`resnet::ResNetTape`], faster
    /// than candle's autograd) and returns its tape. Then the gradients of `loss.backward()`
    /// hold only what follows the encoder, and `tape.backward(&mut grads)` adds the encoder's.
    /// Without a tape, autograd covers everything.
    pub fn forward_train(&self, x: &Tensor) -> Result<(Tensor, Option<EncoderTape>)> {
        match self {
            Encoder::ResNet18(m) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                let (f, tape) = m.forward_taped(x)?;
                Ok((f, Some(EncoderTape(tape))))
            }
            _ => Ok((self.forward_t(x, true)?, None)),
        }
    }
}

/// The recorded encoder forward of [`Encoder::forward_train`].
#[derive(Debug)]
pub struct EncoderTape(resnet::ResNetTape);

impl EncoderTape {
    /// Add the encoder parameters' gradients to `grads` (from the loss's `backward()`).
    pub fn backward(self, grads: &mut GradStore) -> Result<()> {
        self.0.backward(grads)
    }
}

/// Encoder and projection head as trained by FIRM.
#[derive(Debug, Clone)]
pub struct FirmModel {
    pub encoder: Encoder,
    pub head: ProjectionHead,
    /// Where the parameters live (inputs must be put there).
    device: Device,
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
        let encoder = Encoder::new(&cfg.encoder, vb.clone())?;
        let head = ProjectionHead::new(
            encoder.feature_dim(),
            &cfg.head,
            &cfg.encoder,
            vb.pp(HEAD_PREFIX),
        )?;
        Ok(Self {
            encoder,
            head,
            device: vb.device().clone(),
        })
    }

    /// The device the parameters live on (the CPU, or a CUDA GPU with the `cuda` feature).
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<FirmOutput> {
        let features = self.encoder.forward_t(x, train)?;
        let z = self.head.forward_t(&features, train)?;
        Ok(FirmOutput { features, z })
    }

    /// The training forward of one optimisation step ([`Encoder::forward_train`]): when it
    /// returns a tape, `tape.backward(&mut grads)` completes `loss.backward()`'s gradients.
    pub fn forward_train(&self, x: &Tensor) -> Result<(FirmOutput, Option<EncoderTape>)> {
        let (features, tape) = self.encoder.forward_train(x)?;
        let z = self.head.forward_t(&features, true)?;
        Ok((FirmOutput { features, z }, tape))
    }
}

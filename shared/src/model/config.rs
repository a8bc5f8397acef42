//! Model configuration: which stem, how wide, how the projection head is shaped. Saved beside every
//! checkpoint and in every bundle, so weights are never loaded into the wrong graph.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// First layers of the ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    /// 3x3 convolution, stride 1, no max-pool: the FIRM reference's choice for every dataset.
    #[default]
    Cifar,
    /// 7x7 convolution, stride 2, then 3x3 stride-2 max-pool (torchvision): about 16x cheaper at
    /// 256 px, the sensible default for high-resolution inspection.
    Imagenet,
}

impl std::str::FromStr for Stem {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cifar" => Ok(Stem::Cifar),
            "imagenet" => Ok(Stem::Imagenet),
            other => Err(Error::invalid(
                "stem",
                format!("`{other}`; expected cifar or imagenet"),
            )),
        }
    }
}

impl std::fmt::Display for Stem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stem::Cifar => "cifar",
            Stem::Imagenet => "imagenet",
        })
    }
}

/// Encoder network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backbone {
    /// ResNet-18 (the paper's encoder), trained from scratch or from torchvision weights.
    #[default]
    Resnet18,
    /// EfficientNet-Lite0, for fine-tuning ImageNet weights (beyond the paper).
    EfficientnetLite0,
}

impl std::str::FromStr for Backbone {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "resnet18" => Ok(Backbone::Resnet18),
            "efficientnet-lite0" => Ok(Backbone::EfficientnetLite0),
            other => Err(Error::invalid(
                "backbone",
                format!("`{other}`; expected resnet18 or efficientnet-lite0"),
            )),
        }
    }
}

impl std::fmt::Display for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backbone::Resnet18 => "resnet18",
            Backbone::EfficientnetLite0 => "efficientnet-lite0",
        })
    }
}

/// Encoder settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EncoderConfig {
    #[serde(default)]
    pub backbone: Backbone,
    /// ResNet stem (ResNet-18 only).
    #[serde(default)]
    pub stem: Stem,
    /// Channel multiplier: 1.0 is ResNet-18 (64-128-256-512 channels, 512-d features); tests use
    /// 1/16 or 1/8 for models that run in milliseconds.
    #[serde(default = "one")]
    pub width: f32,
    /// PyTorch BatchNorm momentum: running = (1 - m) * running + m * batch. The FIRM reference
    /// runs with 0.9, so the running statistics follow the last batches.
    #[serde(default = "reference_bn_momentum")]
    pub bn_momentum: f64,
    #[serde(default = "bn_eps")]
    pub bn_eps: f64,
    /// Which pooled output of EfficientNet-Lite0 is the feature (EfficientNet only).
    #[serde(default)]
    pub features: super::efficientnet::Features,
    /// Fine-tuning: the stem and this many stages stay frozen (EfficientNet only; 0 = none).
    #[serde(default)]
    pub frozen_stages: usize,
    /// Fine-tuning: BatchNorm keeps its pretrained running statistics (EfficientNet only).
    #[serde(default)]
    pub frozen_bn: bool,
}

/// Projection head settings (trained, never exported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HeadConfig {
    /// Number of linear layers (the reference has 8: seven hidden + the output layer).
    #[serde(default = "head_layers")]
    pub layers: usize,
    #[serde(default = "head_hidden")]
    pub hidden: usize,
    #[serde(default = "head_out")]
    pub out: usize,
}

/// Encoder plus projection head: the trained FIRM model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub encoder: EncoderConfig,
    #[serde(default)]
    pub head: HeadConfig,
}

fn one() -> f32 {
    1.0
}
fn reference_bn_momentum() -> f64 {
    0.9
}
fn bn_eps() -> f64 {
    1e-5
}
fn head_layers() -> usize {
    8
}
fn head_hidden() -> usize {
    1024
}
fn head_out() -> usize {
    128
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::default(),
            stem: Stem::default(),
            width: one(),
            bn_momentum: reference_bn_momentum(),
            bn_eps: bn_eps(),
            features: Default::default(),
            frozen_stages: 0,
            frozen_bn: false,
        }
    }
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            layers: head_layers(),
            hidden: head_hidden(),
            out: head_out(),
        }
    }
}

impl EncoderConfig {
    pub fn new(stem: Stem, width: f32) -> Self {
        Self {
            stem,
            width,
            ..Self::default()
        }
    }

    /// Channels of the four stages (64, 128, 256, 512 at width 1).
    pub fn stage_channels(&self) -> [usize; 4] {
        let c1 = ((64.0 * self.width).round() as usize).max(1);
        [c1, 2 * c1, 4 * c1, 8 * c1]
    }

    /// Dimension of the pooled feature vector the encoder outputs.
    pub fn feature_dim(&self) -> usize {
        match self.backbone {
            Backbone::Resnet18 => self.stage_channels()[3],
            Backbone::EfficientnetLite0 => self.features.dim(),
        }
    }

    /// Input normalisation the backbone expects: ImageNet statistics for ResNet-18,
    /// `(x - 127.5) / 128` for EfficientNet-Lite0 (its weights were trained that way).
    pub fn normalization(&self) -> crate::preprocess::Normalization {
        match self.backbone {
            Backbone::Resnet18 => crate::preprocess::Normalization::default(),
            Backbone::EfficientnetLite0 => crate::preprocess::Normalization {
                mean: super::efficientnet::MEAN,
                std: super::efficientnet::STD,
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.width > 0.0 && self.width <= 8.0) {
            return Err(Error::invalid(
                "encoder.width",
                format!("{} is outside (0, 8]", self.width),
            ));
        }
        if (self.frozen_stages > 0 || self.frozen_bn)
            && self.backbone != Backbone::EfficientnetLite0
        {
            return Err(Error::invalid(
                "--freeze-stages",
                "applies to efficientnet-lite0 fine-tuning only",
            ));
        }
        if self.frozen_stages > 7 {
            return Err(Error::invalid(
                "--freeze-stages",
                format!(
                    "{} is more than EfficientNet-Lite0's 7 stages",
                    self.frozen_stages
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            return Err(Error::invalid(
                "encoder.bn-momentum",
                format!("{} is outside [0, 1]", self.bn_momentum),
            ));
        }
        if self.bn_eps <= 0.0 {
            return Err(Error::invalid("encoder.bn-eps", "must be positive"));
        }
        Ok(())
    }
}

impl HeadConfig {
    pub fn validate(&self) -> Result<()> {
        if self.layers == 0 || self.hidden == 0 || self.out == 0 {
            return Err(Error::invalid(
                "head",
                format!(
                    "layers, hidden and out must be positive (got {}, {}, {})",
                    self.layers, self.hidden, self.out
                ),
            ));
        }
        Ok(())
    }
}

impl ModelConfig {
    /// A tiny model for tests and smoke runs: width 1/16 (32-d features), a 2-layer 64/32 head.
    pub fn tiny(stem: Stem) -> Self {
        Self {
            encoder: EncoderConfig::new(stem, 1.0 / 16.0),
            head: HeadConfig {
                layers: 2,
                hidden: 64,
                out: 32,
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        self.head.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference() {
        let c = ModelConfig::default();
        assert_eq!(c.encoder.stem, Stem::Cifar);
        assert_eq!(c.encoder.stage_channels(), [64, 128, 256, 512]);
        assert_eq!((c.head.layers, c.head.hidden, c.head.out), (8, 1024, 128));
        assert_eq!(c.encoder.bn_momentum, 0.9);
        c.validate().unwrap();
    }

    #[test]
    fn kebab_case_and_unknown_fields() {
        let c: ModelConfig =
            serde_json::from_str(r#"{"encoder":{"stem":"imagenet","width":0.5}}"#).unwrap();
        assert_eq!(c.encoder.stem, Stem::Imagenet);
        assert_eq!(c.encoder.feature_dim(), 256);
        assert!(serde_json::from_str::<ModelConfig>(r#"{"encoder":{"widht":0.5}}"#).is_err());
        let bad = EncoderConfig::new(Stem::Cifar, 0.0);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("encoder.width")
        );
    }
}

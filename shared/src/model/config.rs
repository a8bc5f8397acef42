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

/// ResNet-18 settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNetConfig {
    pub stem: Stem,
    /// Channel multiplier: 1.0 is ResNet-18 (64-128-256-512 channels, 512-d features); tests use
    /// 1/16 or 1/8 for models that run in milliseconds.
    pub width: f32,
    /// PyTorch BatchNorm momentum: running = (1 - m) * running + m * batch. The FIRM reference
    /// runs with 0.9, so the running statistics follow the last batches.
    pub bn_momentum: f64,
    /// BatchNorm eps of the encoder and the projection head.
    pub bn_eps: f64,
}

/// EfficientNet-Lite0 settings (ImageNet weights, fine-tuned).
#[derive(Debug, Clone, PartialEq)]
pub struct EfficientNetConfig {
    /// Which pooled output is the feature.
    pub features: super::efficientnet::Features,
    /// Fine-tuning: the stem and this many stages stay frozen (0 = none).
    pub frozen_stages: usize,
    /// Fine-tuning: BatchNorm keeps its pretrained running statistics.
    pub frozen_bn: bool,
    /// PyTorch BatchNorm momentum of the backbone and the head.
    pub bn_momentum: f64,
    /// BatchNorm eps of the projection head (the backbone's is fixed by its weights: 1e-3).
    pub bn_eps: f64,
}

/// Encoder settings: one variant per backbone, tagged by `backbone` in files.
///
/// Files (run configs, manifests) write only the variant's own fields. Reading also accepts the
/// flat layout written before the variants existed, where every field appeared for every
/// backbone, as long as a field that does not apply holds its default; otherwise it is refused by
/// name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "EncoderFile", into = "EncoderFile")]
pub enum EncoderConfig {
    Resnet18(ResNetConfig),
    EfficientnetLite0(EfficientNetConfig),
}

/// The on-disk form of [`EncoderConfig`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct EncoderFile {
    #[serde(default)]
    backbone: Backbone,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stem: Option<Stem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    width: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bn_momentum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bn_eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    features: Option<super::efficientnet::Features>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frozen_stages: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frozen_bn: Option<bool>,
}

impl TryFrom<EncoderFile> for EncoderConfig {
    type Error = String;
    fn try_from(f: EncoderFile) -> std::result::Result<Self, String> {
        let misplaced = |field: &str, set: bool| -> std::result::Result<(), String> {
            if set {
                Err(format!(
                    "`{field}` does not apply to backbone {}",
                    f.backbone
                ))
            } else {
                Ok(())
            }
        };
        let bn_momentum = f.bn_momentum.unwrap_or_else(reference_bn_momentum);
        let bn_eps = f.bn_eps.unwrap_or_else(bn_eps);
        Ok(match f.backbone {
            Backbone::Resnet18 => {
                misplaced(
                    "features",
                    f.features.is_some_and(|x| x != Default::default()),
                )?;
                misplaced("frozen-stages", f.frozen_stages.is_some_and(|x| x != 0))?;
                misplaced("frozen-bn", f.frozen_bn == Some(true))?;
                EncoderConfig::Resnet18(ResNetConfig {
                    stem: f.stem.unwrap_or_default(),
                    width: f.width.unwrap_or_else(one),
                    bn_momentum,
                    bn_eps,
                })
            }
            Backbone::EfficientnetLite0 => {
                misplaced("stem", f.stem.is_some_and(|x| x != Stem::default()))?;
                misplaced("width", f.width.is_some_and(|x| x != 1.0))?;
                EncoderConfig::EfficientnetLite0(EfficientNetConfig {
                    features: f.features.unwrap_or_default(),
                    frozen_stages: f.frozen_stages.unwrap_or(0),
                    frozen_bn: f.frozen_bn.unwrap_or(false),
                    bn_momentum,
                    bn_eps,
                })
            }
        })
    }
}

impl From<EncoderConfig> for EncoderFile {
    fn from(c: EncoderConfig) -> Self {
        match c {
            EncoderConfig::Resnet18(r) => EncoderFile {
                backbone: Backbone::Resnet18,
                stem: Some(r.stem),
                width: Some(r.width),
                bn_momentum: Some(r.bn_momentum),
                bn_eps: Some(r.bn_eps),
                ..Default::default()
            },
            EncoderConfig::EfficientnetLite0(e) => EncoderFile {
                backbone: Backbone::EfficientnetLite0,
                features: Some(e.features),
                frozen_stages: Some(e.frozen_stages),
                frozen_bn: Some(e.frozen_bn),
                bn_momentum: Some(e.bn_momentum),
                bn_eps: Some(e.bn_eps),
                ..Default::default()
            },
        }
    }
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
        EncoderConfig::Resnet18(ResNetConfig::default())
    }
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            stem: Stem::default(),
            width: one(),
            bn_momentum: reference_bn_momentum(),
            bn_eps: bn_eps(),
        }
    }
}

impl Default for EfficientNetConfig {
    fn default() -> Self {
        Self {
            features: Default::default(),
            frozen_stages: 0,
            frozen_bn: false,
            bn_momentum: reference_bn_momentum(),
            bn_eps: bn_eps(),
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

impl ResNetConfig {
    /// Channels of the four stages (64, 128, 256, 512 at width 1).
    pub fn stage_channels(&self) -> [usize; 4] {
        let c1 = ((64.0 * self.width).round() as usize).max(1);
        [c1, 2 * c1, 4 * c1, 8 * c1]
    }
}

impl EncoderConfig {
    /// ResNet-18 with this stem and width, reference BatchNorm settings.
    pub fn new(stem: Stem, width: f32) -> Self {
        EncoderConfig::Resnet18(ResNetConfig {
            stem,
            width,
            ..ResNetConfig::default()
        })
    }

    /// EfficientNet-Lite0 with this feature output, nothing frozen.
    pub fn efficientnet(features: super::efficientnet::Features) -> Self {
        EncoderConfig::EfficientnetLite0(EfficientNetConfig {
            features,
            ..EfficientNetConfig::default()
        })
    }

    pub fn backbone(&self) -> Backbone {
        match self {
            EncoderConfig::Resnet18(_) => Backbone::Resnet18,
            EncoderConfig::EfficientnetLite0(_) => Backbone::EfficientnetLite0,
        }
    }

    pub fn bn_momentum(&self) -> f64 {
        match self {
            EncoderConfig::Resnet18(r) => r.bn_momentum,
            EncoderConfig::EfficientnetLite0(e) => e.bn_momentum,
        }
    }

    /// The projection head's BatchNorm eps (and ResNet-18's).
    pub fn bn_eps(&self) -> f64 {
        match self {
            EncoderConfig::Resnet18(r) => r.bn_eps,
            EncoderConfig::EfficientnetLite0(e) => e.bn_eps,
        }
    }

    /// Dimension of the pooled feature vector the encoder outputs.
    pub fn feature_dim(&self) -> usize {
        match self {
            EncoderConfig::Resnet18(r) => r.stage_channels()[3],
            EncoderConfig::EfficientnetLite0(e) => e.features.dim(),
        }
    }

    /// The folded inference graph of this encoder (DESIGN section 5).
    pub fn graph(&self) -> super::graph::Graph {
        match self {
            EncoderConfig::Resnet18(r) => super::resnet::graph(r),
            EncoderConfig::EfficientnetLite0(e) => super::efficientnet::graph(e.features),
        }
    }

    /// A short description for reports: `resnet18 (imagenet stem, width 0.25)`.
    pub fn describe(&self) -> String {
        match self {
            EncoderConfig::Resnet18(r) => {
                format!("resnet18 ({} stem, width {})", r.stem, r.width)
            }
            EncoderConfig::EfficientnetLite0(e) => format!(
                "efficientnet-lite0 ({} features)",
                serde_json::to_value(e.features)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
        }
    }

    /// Input normalisation the backbone expects: ImageNet statistics for ResNet-18,
    /// `(x - 127.5) / 128` for EfficientNet-Lite0 (its weights were trained that way).
    pub fn normalization(&self) -> crate::preprocess::Normalization {
        match self {
            EncoderConfig::Resnet18(_) => crate::preprocess::Normalization::default(),
            EncoderConfig::EfficientnetLite0(_) => crate::preprocess::Normalization {
                mean: super::efficientnet::MEAN,
                std: super::efficientnet::STD,
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.bn_momentum()) {
            return Err(Error::invalid(
                "encoder.bn-momentum",
                format!("{} is outside [0, 1]", self.bn_momentum()),
            ));
        }
        if self.bn_eps() <= 0.0 {
            return Err(Error::invalid("encoder.bn-eps", "must be positive"));
        }
        match self {
            EncoderConfig::Resnet18(r) => {
                if !(r.width > 0.0 && r.width <= 8.0) {
                    return Err(Error::invalid(
                        "encoder.width",
                        format!("{} is outside (0, 8]", r.width),
                    ));
                }
            }
            EncoderConfig::EfficientnetLite0(e) => {
                if e.frozen_stages > 7 {
                    return Err(Error::invalid(
                        "--freeze-stages",
                        format!(
                            "{} is more than EfficientNet-Lite0's 7 stages",
                            e.frozen_stages
                        ),
                    ));
                }
            }
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
        let EncoderConfig::Resnet18(r) = &c.encoder else {
            panic!("the default backbone is resnet18")
        };
        assert_eq!(r.stem, Stem::Cifar);
        assert_eq!(r.stage_channels(), [64, 128, 256, 512]);
        assert_eq!((c.head.layers, c.head.hidden, c.head.out), (8, 1024, 128));
        assert_eq!(c.encoder.bn_momentum(), 0.9);
        c.validate().unwrap();
    }

    #[test]
    fn kebab_case_and_unknown_fields() {
        let c: ModelConfig =
            serde_json::from_str(r#"{"encoder":{"stem":"imagenet","width":0.5}}"#).unwrap();
        assert_eq!(c.encoder, EncoderConfig::new(Stem::Imagenet, 0.5));
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

    #[test]
    fn encoder_files_are_tagged_per_backbone_and_read_the_flat_layout() {
        use super::super::efficientnet::Features;
        let r = EncoderConfig::new(Stem::Imagenet, 0.25);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"backbone": "resnet18", "stem": "imagenet", "width": 0.25,
                               "bn-momentum": 0.9, "bn-eps": 1e-5})
        );
        let e = EncoderConfig::EfficientnetLite0(EfficientNetConfig {
            features: Features::Stage6,
            frozen_stages: 3,
            frozen_bn: true,
            ..EfficientNetConfig::default()
        });
        let json = serde_json::to_value(&e).unwrap();
        assert!(
            json.get("stem").is_none() && json.get("width").is_none(),
            "{json}"
        );
        assert_eq!(serde_json::from_value::<EncoderConfig>(json).unwrap(), e);
        // The flat layout every run folder and bundle wrote before: every field for every
        // backbone, the inapplicable ones at their defaults.
        let legacy = r#"{"backbone":"resnet18","stem":"cifar","width":0.5,"bn-momentum":0.9,
            "bn-eps":1e-5,"features":"head","frozen-stages":0,"frozen-bn":false}"#;
        assert_eq!(
            serde_json::from_str::<EncoderConfig>(legacy).unwrap(),
            EncoderConfig::new(Stem::Cifar, 0.5)
        );
        let legacy = r#"{"backbone":"efficientnet-lite0","stem":"cifar","width":1.0,
            "bn-momentum":0.9,"bn-eps":1e-5,"features":"stage5","frozen-stages":2,"frozen-bn":true}"#;
        let EncoderConfig::EfficientnetLite0(got) = serde_json::from_str(legacy).unwrap() else {
            panic!("efficientnet")
        };
        assert_eq!(
            (got.features, got.frozen_stages, got.frozen_bn),
            (Features::Stage5, 2, true)
        );
        // A field that does not apply, set to something that would matter, is refused by name.
        for (bad, field) in [
            (
                r#"{"backbone":"resnet18","frozen-stages":2}"#,
                "frozen-stages",
            ),
            (r#"{"backbone":"resnet18","features":"stage5"}"#, "features"),
            (
                r#"{"backbone":"efficientnet-lite0","stem":"imagenet"}"#,
                "stem",
            ),
            (r#"{"backbone":"efficientnet-lite0","width":0.5}"#, "width"),
        ] {
            let e = serde_json::from_str::<EncoderConfig>(bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(field) && e.contains("does not apply"),
                "{bad}: {e}"
            );
        }
    }
}

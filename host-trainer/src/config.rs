//! Training settings: command-line flags, profiles from TOML files, and the resolved
//! [`FitConfig`] saved in every run folder.
//!
//! Precedence: command-line flag > environment variable (where a flag names one) > profile in the
//! config file > built-in default. Profile files (configs/mvtec/<class>.toml,
//! configs/folder/default.toml, configs/demo.toml) are compiled into the binary, so `fit` works
//! from any directory; `--config FILE` reads another file instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use firm_shared::model::{Backbone, EfficientNetConfig, EncoderConfig, ModelConfig, Stem};
use firm_shared::score::ScoreSpec;
use serde::{Deserialize, Serialize};

use crate::augment::Augmentation;
use crate::compute::DeviceSpec;
use crate::data::{DataArgs, DataSource};
use crate::error::{Error, Result};
use crate::loss::LossKind;
use crate::outliers::OutlierSpec;
use crate::schedule::OneCycle;

/// Version of config.json and of the profile files.
pub const SCHEMA_VERSION: u32 = 1;

/// The 15 MVTec-AD classes; each has a profile file.
pub const MVTEC_CLASSES: [&str; 15] = [
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
];

macro_rules! embedded_profiles {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../configs/", $name, ".toml")))),*]
    };
}

/// Profile files compiled into the binary, by path under configs/ without `.toml`.
pub const EMBEDDED_PROFILES: &[(&str, &str)] = embedded_profiles!(
    "bench/semantic",
    "demo",
    "folder/default",
    "mvtec/bottle",
    "mvtec/cable",
    "mvtec/capsule",
    "mvtec/carpet",
    "mvtec/grid",
    "mvtec/hazelnut",
    "mvtec/leather",
    "mvtec/metal_nut",
    "mvtec/pill",
    "mvtec/screw",
    "mvtec/tile",
    "mvtec/toothbrush",
    "mvtec/transistor",
    "mvtec/wood",
    "mvtec/zipper",
);

/// One profile of a profile file. Every field is optional: what a profile leaves out comes from
/// the built-in defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Encoder: resnet18 (the paper) or efficientnet-lite0 (with --init ImageNet weights).
    pub backbone: Option<Backbone>,
    /// Encoder stem: cifar (3x3/1, the reference) or imagenet (7x7/2 + max-pool).
    pub stem: Option<Stem>,
    /// Encoder width multiplier (1.0 = ResNet-18).
    pub width: Option<f32>,
    /// Model input side in pixels.
    pub size: Option<u32>,
    /// Training epochs (fixed length).
    pub epochs: Option<usize>,
    /// Wall-time budget instead of epochs: the schedule is laid out over the epochs that fit.
    pub max_minutes: Option<f64>,
    /// Good images per step (groups) or pool entries per step (rotation).
    pub batch: Option<usize>,
    /// Peak learning rate of the one-cycle schedule.
    pub lr: Option<f64>,
    pub tau: Option<f64>,
    pub weight_decay: Option<f64>,
    pub loss: Option<LossKind>,
    /// Synthetic outliers (see `host-trainer preview --help`).
    pub outliers: Option<String>,
    /// View augmentation: simclr (the reference), light or none.
    pub augment: Option<Augmentation>,
    /// Score used for the verdict and the headline AUROC, e.g. cos_1 or cos_1+rot, or `patch`
    /// (the anomaly map's maximum: the defect's location decides, not the whole image).
    pub score: Option<String>,
    /// Evaluations (and checkpoints) spread evenly over the run, the last at the end.
    pub checkpoints: Option<usize>,
    /// Fine-tuning EfficientNet-Lite0: stem and this many stages stay frozen.
    pub freeze_stages: Option<usize>,
    /// Fine-tuning EfficientNet-Lite0: BatchNorm keeps the pretrained running statistics.
    pub freeze_bn: Option<bool>,
    /// The encoder's learning rate as a share of the head's (the peak `lr`).
    pub backbone_lr: Option<f64>,
    /// Share of the run at the start during which only the projection head trains (the encoder
    /// is frozen): a new head first learns to read the encoder's features.
    pub head_warmup: Option<f64>,
    /// Projection head hidden width and number of linear layers.
    pub head_hidden: Option<usize>,
    pub head_layers: Option<usize>,
}

impl Settings {
    /// `self` with every field of `over` that is set taking precedence.
    pub fn overlay(&self, over: &Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: over.$f.clone().or_else(|| self.$f.clone())),* } };
        }
        pick!(
            backbone,
            stem,
            width,
            size,
            epochs,
            max_minutes,
            batch,
            lr,
            tau,
            weight_decay,
            loss,
            outliers,
            augment,
            score,
            checkpoints,
            freeze_stages,
            freeze_bn,
            backbone_lr,
            head_warmup,
            head_hidden,
            head_layers
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ProfileFile {
    schema_version: u32,
    #[allow(dead_code)]
    description: Option<String>,
    profile: BTreeMap<String, Settings>,
}

/// Parse a profile file; errors name the file and the TOML position.
pub fn parse_profiles(text: &str, origin: &str) -> Result<BTreeMap<String, Settings>> {
    let f: ProfileFile = toml::from_str(text).map_err(|e| {
        Error::invalid(
            "config file",
            format!("{origin}: {}", e.to_string().trim_end()),
        )
    })?;
    if f.schema_version != SCHEMA_VERSION {
        return Err(Error::invalid(
            "config file",
            format!(
                "{origin}: schema-version {} is not supported (expected {SCHEMA_VERSION})",
                f.schema_version
            ),
        ));
    }
    Ok(f.profile)
}

/// The embedded profile file for a data source.
pub fn default_profile_file(source: &DataSource) -> (&'static str, &'static str) {
    let key = match source {
        DataSource::Mvtec { class, .. } if MVTEC_CLASSES.contains(&class.as_str()) => {
            format!("mvtec/{class}")
        }
        DataSource::Demo { .. } => "demo".into(),
        _ => "folder/default".into(),
    };
    *EMBEDDED_PROFILES
        .iter()
        .find(|(k, _)| *k == key)
        .expect("every key above is embedded")
}

/// `host-trainer fit` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FitArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Profile of the config file: cpu (a wall-time budget on this machine) or paper (the
    /// reference: CIFAR stem, 256 px, 2000 epochs).
    #[arg(long, default_value = "cpu", env = "FIRM_PROFILE")]
    pub profile: String,
    /// Profile file to read instead of the built-in one for this dataset.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Embedded profile file to use instead of the dataset's default (its key under configs/,
    /// e.g. `bench/semantic`); set by `host-trainer bench`, not a flag.
    #[arg(skip)]
    pub builtin_config: Option<String>,
    /// Run folder (default runs/<class>-<timestamp>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue an interrupted run from its latest checkpoint (other settings come from its
    /// config.json).
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Seed of the initial weights, the batches, the views and the synthetic outliers: the same
    /// seed and settings train the same model.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Encoder network: resnet18 (the paper's) or efficientnet-lite0 (needs --init).
    #[arg(long)]
    pub backbone: Option<Backbone>,
    /// Start the encoder from these weights: safetensors with PyTorch names (e.g.
    /// ../shared/weights/efficientnet-lite0/efficientnet-lite0.safetensors or a torchvision
    /// ResNet-18), or a PyTorch checkpoint as torch.save writes it (.pth/.pt: a state dict, or
    /// one under `state_dict` or `model`; read without running any pickled code). Nothing is
    /// downloaded. With --epochs 0: the pretrained-feature kNN baseline.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// Fine-tuning EfficientNet-Lite0: keep the stem and the first N of its 7 stages frozen
    /// (running statistics, no gradients; at 224 px this is what makes training fit in memory).
    #[arg(long, value_name = "N")]
    pub freeze_stages: Option<usize>,
    /// Fine-tuning EfficientNet-Lite0: BatchNorm normalises with the pretrained running statistics
    /// in training too and never updates them (the default with --init).
    #[arg(long, conflicts_with = "train_bn")]
    pub freeze_bn: bool,
    /// Fine-tuning: let BatchNorm update its statistics (off by default with --init).
    #[arg(long)]
    pub train_bn: bool,
    /// The encoder's learning rate as a share of the head's (default 1; 0.1 with --init).
    #[arg(long, value_name = "SHARE")]
    pub backbone_lr: Option<f64>,
    /// Share of the run, from the start, during which only the projection head trains (default
    /// 0; 0.25 with --init).
    #[arg(long, value_name = "SHARE")]
    pub head_warmup: Option<f64>,
    /// Finish with status 0 even when a fine-tune (--init) ends below its start (it is still
    /// reported; `export` asks for its own --accept-regression).
    #[arg(long)]
    pub accept_regression: bool,
    /// Training objective (FIRM by default; the others are the paper's baselines).
    #[arg(long)]
    pub loss: Option<LossKind>,
    /// Fixed number of epochs (replaces the profile's time budget); 0 evaluates the initial
    /// encoder only.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Wall-time budget in minutes (replaces --epochs).
    #[arg(long, conflicts_with = "epochs")]
    pub max_minutes: Option<f64>,
    /// Good images per step: each brings its outliers and two views of everything.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate of the one-cycle schedule (SGD, momentum 0.9, weight decay 3e-4).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Temperature of the contrastive loss.
    #[arg(long)]
    pub tau: Option<f64>,
    /// Model input side in pixels (images are resized to 1.125x and centre-cropped).
    #[arg(long)]
    pub size: Option<u32>,
    /// ResNet stem: cifar (3x3/1, the paper's) or imagenet (7x7/2 + max-pool, 16x cheaper).
    #[arg(long)]
    pub stem: Option<Stem>,
    /// Channel width multiplier of the ResNet (1.0 = ResNet-18; tests use 0.25).
    #[arg(long)]
    pub width: Option<f32>,
    /// Synthetic outliers: cutpaste, scar, nsa, rotation or oe:DIR, comma-separated.
    #[arg(long)]
    pub outliers: Option<String>,
    /// View augmentation: simclr (the reference's), light (milder, for short runs) or none.
    #[arg(long)]
    pub augment: Option<Augmentation>,
    /// Score for the verdict: cos_K, cos_K_norm, kde or center, optionally +rot and/or +crops.
    #[arg(long)]
    pub score: Option<String>,
    /// Number of evaluations/checkpoints over the run.
    #[arg(long)]
    pub checkpoints: Option<usize>,
    /// Where to train and evaluate: cpu, or cuda / cuda:N (a build with --features cuda). Not
    /// part of the run's config: a run may be resumed on another device.
    #[arg(long, default_value = "cpu", env = "FIRM_DEVICE")]
    pub device: DeviceSpec,
}

impl FitArgs {
    fn settings(&self) -> Settings {
        Settings {
            backbone: self.backbone,
            stem: self.stem,
            width: self.width,
            size: self.size,
            epochs: self.epochs,
            max_minutes: self.max_minutes,
            batch: self.batch,
            lr: self.lr,
            tau: self.tau,
            loss: self.loss,
            outliers: self.outliers.clone(),
            augment: self.augment,
            score: self.score.clone(),
            checkpoints: self.checkpoints,
            freeze_stages: self.freeze_stages,
            freeze_bn: if self.train_bn {
                Some(false)
            } else {
                self.freeze_bn.then_some(true)
            },
            backbone_lr: self.backbone_lr,
            head_warmup: self.head_warmup,
            ..Settings::default()
        }
    }
}

/// How long a run trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Length {
    /// Epochs actually scheduled (from the profile, or from the time budget).
    pub epochs: usize,
    pub steps_per_epoch: usize,
    /// The time budget the epochs were derived from, if any.
    pub max_minutes: Option<f64>,
}

impl Length {
    pub fn total_steps(&self) -> usize {
        self.epochs * self.steps_per_epoch
    }
}

/// Everything a run was trained with: written to config.json, read back by `eval` and `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FitConfig {
    pub schema_version: u32,
    pub profile: String,
    /// Where the profile came from (embedded name or file path).
    pub profile_origin: String,
    pub data: DataSource,
    pub strict: bool,
    pub model: ModelConfig,
    /// Encoder weights the run started from (None: seeded random initialisation).
    pub init: Option<PathBuf>,
    pub loss: LossKind,
    pub outliers: String,
    /// View augmentation (config.json files written before it existed mean simclr).
    #[serde(default)]
    pub augment: Augmentation,
    pub size: u32,
    pub batch: usize,
    pub tau: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub score: ScoreSpec,
    /// Set when the profile's score is `patch`: the patch score (the anomaly map's maximum)
    /// decides the verdict, with this spec; `score` is then the image score the training
    /// curve follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<firm_shared::score::patch::PatchSpec>,
    pub checkpoints: usize,
    /// Set once the length is known (after the time-budget calibration).
    pub length: Option<Length>,
    pub schedule: Option<OneCycle>,
    pub lr: f64,
    /// The encoder's rate as a share of `lr` (older runs: 1).
    #[serde(default = "one")]
    pub backbone_lr: f64,
    /// Share of the steps, from the start, with the encoder frozen (older runs: 0).
    #[serde(default)]
    pub head_warmup: f64,
}

/// What a pretrained start (`--init`) changes, whatever profile is chosen (the command line
/// still has the last word): the backbone's own input size, the head trained alone for the first quarter of the run, then the encoder at a tenth of the
/// head's rate; EfficientNet-Lite0 also keeps its BatchNorm statistics, and its stem and first
/// three stages (the 112, 56 and 28 px ones: the patch score's features, and most of the
/// activation memory at 224 px) as they are. A profile's 64 px, updating statistics and full rate destroy pretrained features within
/// an epoch or two (issue 19).
pub fn pretrained_start(backbone: Backbone) -> Settings {
    let lite0 = backbone == Backbone::EfficientnetLite0;
    Settings {
        size: Some(224),
        backbone_lr: Some(0.1),
        head_warmup: Some(0.25),
        // Our ResNet-18 updates its statistics in training (it has no frozen mode yet).
        freeze_bn: lite0.then_some(true),
        freeze_stages: lite0.then_some(3),
        ..Settings::default()
    }
}

/// Built-in defaults: a small CPU configuration.
fn defaults() -> Settings {
    Settings {
        backbone: Some(Backbone::Resnet18),
        stem: Some(Stem::Imagenet),
        width: Some(1.0),
        size: Some(64),
        epochs: None,
        max_minutes: Some(25.0),
        batch: Some(16),
        lr: Some(0.01),
        tau: Some(0.2),
        weight_decay: Some(3e-4),
        loss: Some(LossKind::Firm),
        outliers: Some("cutpaste,scar".into()),
        augment: Some(Augmentation::Simclr),
        score: Some("cos_1".into()),
        checkpoints: Some(5),
        freeze_stages: Some(0),
        freeze_bn: Some(false),
        backbone_lr: Some(1.0),
        head_warmup: Some(0.0),
        head_hidden: Some(1024),
        head_layers: Some(8),
    }
}

fn one() -> f64 {
    1.0
}

/// Resolve flags + profile + defaults into a [`FitConfig`] (length still open when budgeted).
pub fn resolve(args: &FitArgs, cwd: &Path) -> Result<(FitConfig, Settings)> {
    let data = args.data.resolve(cwd, args.seed)?;
    let (origin, text) = match &args.config {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(Error::io("read", p))?,
        ),
        None => {
            let (name, text) = match &args.builtin_config {
                Some(key) => *EMBEDDED_PROFILES
                    .iter()
                    .find(|(k, _)| k == key)
                    .ok_or_else(|| {
                        Error::invalid(
                            "profile file",
                            format!("configs/{key}.toml is not built in"),
                        )
                    })?,
                None => default_profile_file(&data),
            };
            (format!("configs/{name}.toml (built in)"), text.to_string())
        }
    };
    let profiles = parse_profiles(&text, &origin)?;
    let profile = profiles.get(&args.profile).ok_or_else(|| {
        Error::invalid(
            "--profile",
            format!(
                "`{}` is not in {origin}; it has: {}",
                args.profile,
                profiles.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    let cli = args.settings();
    // An explicit epoch count replaces a profile's time budget, and vice versa.
    let mut s = defaults().overlay(profile);
    if args.init.is_some() {
        let backbone = cli.backbone.or(s.backbone).expect("default");
        s = s.overlay(&pretrained_start(backbone));
    }
    if cli.epochs.is_some() {
        s.max_minutes = None;
    }
    if cli.max_minutes.is_some() {
        s.epochs = None;
    }
    let s = s.overlay(&cli);
    if s.epochs.is_none() && s.max_minutes.is_none() {
        return Err(Error::invalid(
            "profile",
            format!(
                "{origin} [{}] sets neither epochs nor max-minutes",
                args.profile
            ),
        ));
    }
    let outliers = s.outliers.clone().expect("default");
    outliers.parse::<OutlierSpec>()?;
    let score_name = s.score.as_deref().expect("default");
    let patch_verdict = score_name == "patch";
    let score: ScoreSpec = if patch_verdict {
        ScoreSpec {
            f: firm_shared::score::ScoreFn::CosK { k: 1 },
            ensemble: firm_shared::score::Ensemble::None,
        }
    } else {
        score_name.parse()?
    };
    let size = s.size.expect("default");
    if !(16..=1024).contains(&size) {
        return Err(Error::invalid(
            "--size",
            format!("{size} is outside 16..=1024 pixels"),
        ));
    }
    let batch = s.batch.expect("default");
    if batch == 0 {
        return Err(Error::invalid("--batch", "must be at least 1"));
    }
    let backbone = s.backbone.expect("default");
    if backbone == Backbone::EfficientnetLite0 && args.init.is_none() {
        return Err(Error::invalid(
            "--backbone",
            "efficientnet-lite0 is for fine-tuning ImageNet weights: give them with --init FILE \
             (e.g. ../shared/weights/efficientnet-lite0/efficientnet-lite0.safetensors)",
        ));
    }
    if let Some(p) = &args.init
        && !p.is_file()
    {
        return Err(Error::NotFound {
            path: p.clone(),
            expected: "a safetensors or PyTorch (.pth) file of encoder weights (--init)".into(),
        });
    }
    let (frozen_stages, frozen_bn) = (
        s.freeze_stages.expect("default"),
        s.freeze_bn.expect("default"),
    );
    let encoder = match backbone {
        Backbone::Resnet18 => {
            if frozen_stages > 0 || frozen_bn {
                return Err(Error::invalid(
                    "--freeze-stages",
                    "applies to efficientnet-lite0 fine-tuning only",
                ));
            }
            EncoderConfig::new(s.stem.expect("default"), s.width.expect("default"))
        }
        // The profile's stem and width describe a ResNet; the pretrained network has its own.
        Backbone::EfficientnetLite0 => EncoderConfig::EfficientnetLite0(EfficientNetConfig {
            frozen_stages,
            frozen_bn,
            ..EfficientNetConfig::default()
        }),
    };
    let mut model = ModelConfig {
        encoder,
        ..ModelConfig::default()
    };
    model.head.hidden = s.head_hidden.expect("default");
    model.head.layers = s.head_layers.expect("default");
    model.validate()?;
    let tau = s.tau.expect("default");
    let lr = s.lr.expect("default");
    if !(tau > 0.0 && lr > 0.0) {
        return Err(Error::invalid("--tau/--lr", "must be positive"));
    }
    let backbone_lr = s.backbone_lr.expect("default");
    if !(0.0..=1.0).contains(&backbone_lr) {
        return Err(Error::invalid(
            "--backbone-lr",
            format!("{backbone_lr} is not a share between 0 and 1 of the head's rate"),
        ));
    }
    let head_warmup = s.head_warmup.expect("default");
    if !(0.0..1.0).contains(&head_warmup) {
        return Err(Error::invalid(
            "--head-warmup",
            format!("{head_warmup} is not a share of the run in 0..1"),
        ));
    }
    let patch = if patch_verdict {
        Some(firm_shared::score::patch::PatchSpec::for_graph(
            &model.encoder.graph(),
        )?)
    } else {
        None
    };
    let cfg = FitConfig {
        schema_version: SCHEMA_VERSION,
        profile: args.profile.clone(),
        profile_origin: origin,
        data,
        strict: args.data.strict,
        model,
        init: args
            .init
            .as_ref()
            .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone())),
        loss: s.loss.expect("default"),
        outliers,
        augment: s.augment.expect("default"),
        size,
        batch,
        tau,
        weight_decay: s.weight_decay.expect("default"),
        seed: args.seed,
        score,
        patch,
        checkpoints: s.checkpoints.expect("default").max(1),
        length: None,
        schedule: None,
        lr,
        backbone_lr,
        head_warmup,
    };
    Ok((cfg, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_profile_parses_with_cpu_and_paper() {
        for (name, text) in EMBEDDED_PROFILES {
            let p = parse_profiles(text, name).unwrap();
            assert!(p.contains_key("cpu"), "{name} has no cpu profile");
            if *name != "demo" && !name.starts_with("bench/") {
                let paper = &p["paper"];
                assert_eq!(paper.stem, Some(Stem::Cifar), "{name}");
                assert_eq!(paper.size, Some(256), "{name}");
                assert_eq!(paper.epochs, Some(2000), "{name}");
                assert_eq!(
                    (paper.batch, paper.tau, paper.lr),
                    (Some(32), Some(0.2), Some(0.01))
                );
                assert!(
                    p["cpu"].max_minutes.is_some(),
                    "{name}: cpu budgets wall time"
                );
                // The paper profile keeps the reference's SimCLR views (the default).
                assert_eq!(paper.augment, None, "{name}");
                assert_eq!(p["cpu"].augment, Some(Augmentation::None), "{name}");
            }
        }
        for class in MVTEC_CLASSES {
            assert!(
                EMBEDDED_PROFILES
                    .iter()
                    .any(|(k, _)| *k == format!("mvtec/{class}"))
            );
        }
    }

    #[test]
    fn profile_errors_name_the_file_and_position() {
        let e = parse_profiles(
            "schema-version = 1\n[profile.cpu]\nsize = \"big\"\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.toml") && e.contains("line 3"), "{e}");
        let e = parse_profiles("schema-version = 1\n[profile.cpu]\nsizes = 3\n", "y.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `sizes`"), "{e}");
        let e = parse_profiles("schema-version = 9\n[profile.cpu]\n", "z.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema-version 9"), "{e}");
        let e = parse_profiles(
            "schema-version = 1\n[profile.cpu]\naugment = \"strong\"\n",
            "w.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("w.toml") && e.contains("simclr") && e.contains("light"),
            "{e}"
        );
    }

    #[test]
    fn overlay_prefers_the_upper_layer() {
        let low = Settings {
            size: Some(64),
            lr: Some(0.1),
            ..Settings::default()
        };
        let high = Settings {
            size: Some(128),
            ..Settings::default()
        };
        let s = low.overlay(&high);
        assert_eq!((s.size, s.lr), (Some(128), Some(0.1)));
    }
}

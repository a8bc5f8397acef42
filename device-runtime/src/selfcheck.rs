//! `device-runtime selfcheck`: [`crate::bench`] on a bundle with random weights
//! ([`firm_shared::detect::synthetic`]), so it answers "is this box fast enough for that
//! backbone and input size?" before any bundle exists.

use anyhow::{Result, ensure};
use firm_shared::detect::synthetic::{SyntheticSpec, random_bundle};
use firm_shared::model::efficientnet::Features;
use firm_shared::model::{Backbone, EncoderConfig, Stem};

use crate::bench::{self, RunArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct SelfcheckArgs {
    /// Encoder: resnet18 or efficientnet-lite0.
    #[arg(long, default_value = "resnet18", value_parser = ["resnet18", "efficientnet-lite0"])]
    pub backbone: String,
    /// Model input side in pixels.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// ResNet stem: imagenet (7x7/2 + max-pool, fast) or cifar (3x3/1, the FIRM reference).
    #[arg(long, value_parser = ["imagenet", "cifar"], default_value = "imagenet")]
    pub stem: String,
    /// ResNet width multiplier (1.0 = ResNet-18).
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    /// Activations: int8 (u8 per tensor, the int8 kernels) or f32.
    #[arg(long, default_value = "int8", value_parser = ["int8", "f32"])]
    pub activations: String,
    /// Score: cos_1, or cos_1+rot (four views per frame).
    #[arg(long, default_value = "cos_1", value_parser = ["cos_1", "cos_1+rot"])]
    pub score: String,
    /// Bank entries (random good images).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub bank: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(a: &SelfcheckArgs) -> Result<()> {
    ensure!(a.run.frames >= 1, "--frames must be at least 1");
    ensure!(a.bank >= 1, "--bank must be at least 1");
    let backbone: Backbone = a.backbone.parse()?;
    let encoder = match backbone {
        Backbone::Resnet18 => EncoderConfig::new(a.stem.parse::<Stem>()?, a.width),
        Backbone::EfficientnetLite0 => EncoderConfig::efficientnet(Features::Head),
    };
    let bundle = random_bundle(&SyntheticSpec {
        encoder,
        size: a.size,
        score: a.score.parse()?,
        int8_activations: a.activations == "int8",
        bank: a.bank,
        seed: 0,
    })?;
    let r = bench::bench(&bundle, &a.run)?;
    if a.run.json {
        bench::print(&r, true);
        return Ok(());
    }
    let stem = match backbone {
        Backbone::Resnet18 => format!(", {} stem, width {}", a.stem, a.width),
        Backbone::EfficientnetLite0 => String::new(),
    };
    println!(
        "selfcheck: {} frames -> {} px, {}{stem}, {} activations, {} on {} ({} threads): latency \
         p50 {:.1} ms, p99 {:.1} ms (encoder p50 {:.1} ms; {} frames), {:.1} frames/s, last \
         distance {:.4}",
        r.frame,
        a.size,
        a.backbone,
        r.activations,
        r.backend,
        r.isa,
        r.threads,
        r.total_p50_ms,
        r.total_p99_ms,
        r.encoder_p50_ms,
        r.frames,
        r.fps,
        r.last_distance
    );
    Ok(())
}

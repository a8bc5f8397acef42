//! `host-trainer`: train FIRM encoders on images of good parts, evaluate them, export bundles.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use host_trainer::preview::{self, PreviewArgs};
use host_trainer::smoke::{self, SmokeArgs};
use host_trainer::synth_cmd::{self, SynthArgs};
use tracing_subscriber::EnvFilter;

/// Train an anomaly detector on images of good parts with FIRM (contrastive learning with
/// synthetic outliers), evaluate it and export it for the inspection device.
///
/// Exit codes: 0 success, 1 failure, 2 invalid arguments, 3 unusable input data.
/// Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Debug, Parser)]
#[command(name = "host-trainer", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate parts, build a tiny model, score it, train a few FIRM steps, score again.
    ///
    /// Takes seconds on a laptop CPU and needs no data: the quickest check that the numeric core
    /// (preprocessing, encoder, loss, optimiser, kNN scores, AUROC) works on this machine.
    Smoke(SmokeArgs),
    /// Write a generated dataset in the MVTec-AD layout (objects and textures with defects and
    /// masks): what `--demo` trains on.
    Synth(SynthArgs),
    /// Draw a grid of training pairs (both augmented views of good images and of their synthetic
    /// outliers, labelled): exactly what the model learns against.
    Preview(PreviewArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let result: Result<(), host_trainer::Error> = match cli.command {
        Command::Smoke(args) => smoke::run(&args).map(|_| ()),
        Command::Synth(args) => synth_cmd::run(&args),
        Command::Preview(args) => preview::run(&args, &cwd).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(e.exit_code())
        }
    }
}

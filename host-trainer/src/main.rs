//! `host-trainer`: train FIRM encoders on images of good parts, evaluate them, export bundles.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use host_trainer::smoke::{self, SmokeArgs};
use tracing_subscriber::EnvFilter;

/// Train an anomaly detector on images of good parts with FIRM (contrastive learning with
/// synthetic outliers), evaluate it and export it for the inspection device.
///
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Smoke(args) => smoke::run(&args).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

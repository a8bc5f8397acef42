//! `device-runtime`: runs FIRM bundles on the inspection appliance.
//!
//! Bundles, capture, alerts and the web page arrive with their issues; today the binary offers
//! `selfcheck`, which times the shared preprocessing -> encoder -> kNN path on this box.

mod selfcheck;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

// Training and inference allocate and free large tensors every step; mimalloc keeps those pages
// mapped instead of returning them to the kernel (page faults were a measurable share of a step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Inspection appliance runtime: scores camera frames with a FIRM bundle and raises alerts.
///
/// Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Debug, Parser)]
#[command(name = "device-runtime", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time the scoring path (preprocess, ResNet-18, kNN) on generated frames with random weights.
    ///
    /// Answers "is this box fast enough for that input size and stem?" before any bundle exists.
    Selfcheck(selfcheck::SelfcheckArgs),
}

fn main() -> ExitCode {
    firm_shared::process::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Selfcheck(args) => selfcheck::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

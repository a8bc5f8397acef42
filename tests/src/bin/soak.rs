//! `soak`: `device-runtime run` at full rate on the `synthetic` source for a fixed time, with the
//! status page's traffic, sampling its memory, descriptors and progress (issue 18, deliverable 5).
//! `scripts/soak-test` runs the full form (30 minutes); see [`firm_e2e::soak`].
//!
//!   cargo run --release -p firm-e2e --bin soak -- --start target/release/device-runtime

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Soak a device-runtime it starts and print the curve; exit 1 if it did not hold.
#[derive(Debug, Parser)]
struct Cli {
    /// The device-runtime binary to start on loopback (random bundle, synthetic source at full
    /// rate, every frame an alert).
    #[arg(long)]
    start: PathBuf,
    /// Minutes of soak (at most 600).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Minutes of warm-up not held against the device.
    #[arg(long, default_value_t = 3.0)]
    warmup_minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60)]
    every: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(cli.minutes > 0.0 && cli.minutes <= 600.0 && cli.warmup_minutes < cli.minutes) {
        eprintln!("soak: --minutes must be in (0, 600] and above --warmup-minutes");
        return ExitCode::from(2);
    }
    let dir = tempfile::tempdir().expect("temporary folder");
    let bench = firm_e2e::soak::start(&cli.start, dir.path());
    let soak = firm_e2e::soak::run(
        bench.addr,
        bench.pid(),
        &bench.log,
        Duration::from_secs_f64(cli.minutes * 60.0),
        Duration::from_secs_f64(cli.warmup_minutes * 60.0),
        Duration::from_secs(cli.every.max(1)),
    );
    println!("{soak}");
    let failed = soak.verdict();
    for f in &failed {
        println!("FAILED: {f}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

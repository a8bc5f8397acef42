//! `flash-memory`: the resident memory a device needs to install a bundle of a given size, by
//! `device-runtime flash` and by `POST /api/bundle` (issue 18, deliverable 6); see
//! [`firm_e2e::flash_memory`]. `scripts/flash-memory` runs it on a 256 MiB bundle.
//!
//!   cargo run --release -p firm-e2e --bin flash-memory -- --start target/release/device-runtime

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use firm_e2e::flash_memory::{BOUND, Fill, Report, Station, Via};

/// Flash a bundle of --mib MiB into devices it sets up (each running a small bundle) and print
/// idle and peak RSS; exit 1 if a peak over idle is above 2.5x the bundle's size.
#[derive(Debug, Parser)]
struct Cli {
    /// The device-runtime binary to run.
    #[arg(long)]
    start: PathBuf,
    /// Size of the bundle flashed, MiB (at most; the fill comes within 1 %).
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// What makes the bundle big.
    #[arg(long, value_enum, default_value_t = Fill::Bank)]
    fill: Fill,
    /// How to flash it (repeat for both; default both).
    #[arg(long, value_enum)]
    via: Vec<Via>,
    /// Width of the bundles' ResNet-18 (default: 0.25 with --fill bank, 0.5 with --fill patch).
    #[arg(long)]
    width: Option<f32>,
    /// Bundles flashed over HTTP one after the other (the CLI flashes the first): does the
    /// memory a flash leaves behind serve the next one?
    #[arg(long, default_value_t = 1)]
    flashes: usize,
    /// Folder for the bundles and devices (default: a temporary one, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(1..=1024).contains(&cli.mib) || !(1..=5).contains(&cli.flashes) {
        eprintln!("flash-memory: --mib must be 1 to 1024 and --flashes 1 to 5");
        return ExitCode::from(2);
    }
    let tmp = tempfile::tempdir().expect("temporary folder");
    let dir = cli.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("--dir");
    // peak-rss is built beside this binary.
    let peak_rss = std::env::current_exe()
        .expect("this binary's path")
        .with_file_name(format!("peak-rss{}", std::env::consts::EXE_SUFFIX));
    let station = Station::prepare(
        &cli.start,
        &peak_rss,
        &dir,
        cli.mib << 20,
        cli.fill,
        cli.width,
        cli.flashes,
    );
    let via = if cli.via.is_empty() {
        vec![Via::Cli, Via::Http]
    } else {
        cli.via.clone()
    };
    let report = Report {
        fill: cli.fill,
        width: station.width,
        peaks: via.iter().flat_map(|&v| station.measure(v)).collect(),
    };
    println!("{report}");
    let above: Vec<_> = report.peaks.iter().filter(|p| !p.holds()).collect();
    for p in &above {
        println!(
            "FAILED: {}: peak over idle {:.2}x the bundle's size (bound {BOUND}x)",
            p.via,
            p.ratio()
        );
    }
    if above.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

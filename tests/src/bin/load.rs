//! `load`: a bounded, self-stopping load on the device's web server while it inspects (issue 18).
//! `scripts/load-test` runs it (the full form: 2,000 idle connections, 500 event streams, 64
//! clients for 60 s); see [`firm_e2e::load`] for what it measures.
//!
//!   cargo run --release -p firm-e2e --bin load -- --start target/release/device-runtime
//!   cargo run --release -p firm-e2e --bin load -- --addr 127.0.0.1:8080 --pid PID --fps 10

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use firm_e2e::load::{Bench, LoadSpec, run};

/// Load a running device-runtime's web server and measure what the line and /healthz keep.
#[derive(Debug, Parser)]
struct Cli {
    /// Start this device-runtime binary on loopback (random bundle, looping PNG frames, every
    /// frame an alert, `ulimit -n --nofile`) instead of loading one already running.
    #[arg(long, conflicts_with_all = ["addr", "pid"])]
    start: Option<PathBuf>,
    /// Address of a running device (with --pid and --fps).
    #[arg(long, requires = "pid")]
    addr: Option<SocketAddr>,
    /// Process id of the running device (its /proc/PID/fd is counted).
    #[arg(long)]
    pid: Option<u32>,
    /// The device's configured source fps.
    #[arg(long, default_value_t = 10.0)]
    fps: f64,
    /// Open-file limit of a started device.
    #[arg(long, default_value_t = 1024)]
    nofile: u32,
    /// Half-sent connections held open (each one the device closes is reopened).
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Event streams opened (/api/events).
    #[arg(long, default_value_t = 500)]
    sse: usize,
    /// Threads requesting /api/status and /api/frame.jpg without pause.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds under load (at most 600).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Seconds measured without load first (0: none; at most 600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    baseline_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = tempfile::tempdir().expect("temporary folder");
    let (bench, addr, pid) = match (&cli.start, cli.addr, cli.pid) {
        (Some(bin), _, _) => {
            let b = Bench::start(bin, dir.path(), cli.fps, cli.nofile, "");
            let (addr, pid) = (b.addr, b.pid());
            (Some(b), addr, pid)
        }
        (None, Some(addr), Some(pid)) => (None, addr, pid),
        _ => {
            eprintln!("load: give --start DEVICE_BIN, or --addr ADDR --pid PID");
            return ExitCode::from(2);
        }
    };
    let figures = run(&LoadSpec {
        addr,
        pid,
        fps: cli.fps,
        idle: cli.idle,
        sse: cli.sse,
        clients: cli.clients,
        duration: Duration::from_secs(cli.seconds),
        baseline: Duration::from_secs(cli.baseline_seconds),
    });
    println!("{figures}");
    if let Some(b) = &bench {
        let log = std::fs::read_to_string(&b.log).unwrap_or_default();
        let warnings = log.lines().filter(|l| l.contains("WARN")).count();
        println!("device log: {warnings} warning lines; the last ones:");
        for l in log.lines().filter(|l| l.contains("WARN")).rev().take(3) {
            println!("  {l}");
        }
    }
    ExitCode::SUCCESS
}

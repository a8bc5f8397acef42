//! `device-runtime`: runs FIRM bundles on the inspection appliance.

mod bench;
mod gpu_check;
mod selfcheck;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use device_runtime::config::DeviceConfig;
use device_runtime::slots::Slots;
use tracing_subscriber::EnvFilter;

// Training and inference allocate and free large tensors every step; mimalloc keeps those pages
// mapped instead of returning them to the kernel (page faults were a measurable share of a step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Inspection appliance runtime: installs signed FIRM bundles into A/B slots, scores camera
/// frames with them and raises alerts.
///
/// Exit codes: 0 success, 1 failure, 2 invalid arguments or configuration, 3 bundle refused.
/// Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Debug, Parser)]
#[command(name = "device-runtime", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Device configuration (see configs/device/example.toml).
    #[arg(long, value_name = "FILE", env = "FIRM_DEVICE_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install a bundle: verify (signature, contents, anti-downgrade) -> write the inactive slot
    /// -> load -> self-test -> switch. Any failure leaves the current bundle active.
    Flash {
        /// Bundle file written by `host-trainer export`.
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
        /// Allow a lower bundle version than the active one.
        #[arg(long)]
        force: bool,
    },
    /// Make the other slot active (it must hold a bundle that verifies and self-tests).
    Rollback {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show both slots: which is active, what each holds, whether it verifies.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the appliance: load the active bundle (rolling back if it fails), score frames from the
    /// configured source, write alerts to the journal and the other sinks, serve the status page.
    /// Stops on SIGTERM or Ctrl-C.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Stop when a non-looping dir: source has been scored to its last frame.
        #[arg(long)]
        exit_at_end: bool,
        /// Listen address instead of web.listen (e.g. 127.0.0.1:0 for any free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// The alert journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Time a bundle's detector per stage (preprocess, encoder, kNN, decision) on generated
    /// camera frames, as the pipeline runs it; `--json` prints one object.
    Bench(bench::BenchArgs),
    /// `bench` on a bundle with random weights: is this box fast enough for that backbone and
    /// input size, before any bundle exists?
    Selfcheck(selfcheck::SelfcheckArgs),
    /// On a box with a GPU: every GPU backend of this build against the CPU executor (both
    /// backbones, the bundle self-test) and the throughput table (224 and 256 px, batch 1 and 8).
    GpuCheck(gpu_check::GpuCheckArgs),
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// Check the hash chain of every journal file: any edited, deleted, inserted or reordered
    /// record is reported with its file and line; exit 0 only if the chain holds.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// An error with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

fn config_failure(e: device_runtime::config::ConfigError) -> Failure {
    Failure {
        code: 2,
        error: e.into(),
    }
}

fn open_slots(cfg: &DeviceConfig) -> Result<Slots, Failure> {
    device_runtime::run::open_slots(cfg).map_err(|error| Failure { code: 2, error })
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Flash {
            file,
            config,
            force,
        } => {
            let cfg = DeviceConfig::load(&config.config).map_err(config_failure)?;
            let slots = open_slots(&cfg)?;
            let len = std::fs::metadata(&file)
                .with_context(|| format!("cannot open {}", file.display()))?
                .len();
            if len > cfg.bundles.max_bytes {
                return Err(Failure {
                    code: 3,
                    error: anyhow::anyhow!(
                        "{}: {len} bytes is above bundles.max-bytes ({})",
                        file.display(),
                        cfg.bundles.max_bytes
                    ),
                });
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (done, _) = slots.flash(&bytes, force).map_err(|e| Failure {
                code: 3,
                error: e.into(),
            })?;
            println!(
                "installed {} (class {}, version {}) into slot {}; self-test max distance error {:.2e}",
                file.display(),
                done.bundle.product_class,
                done.bundle.bundle_version,
                done.slot,
                done.selftest_max_distance_err
            );
            if let Some(r) = done.replaced {
                println!(
                    "previous bundle (version {}) stays in slot {} for rollback",
                    r.bundle_version,
                    done.slot.other()
                );
            }
            Ok(())
        }
        Command::Rollback { config } => {
            let cfg = DeviceConfig::load(&config.config).map_err(config_failure)?;
            let slot = open_slots(&cfg)?.rollback().map_err(|e| Failure {
                code: 3,
                error: e.into(),
            })?;
            println!("slot {slot} is active");
            Ok(())
        }
        Command::Status { config, json } => {
            let cfg = DeviceConfig::load(&config.config).map_err(config_failure)?;
            let st = open_slots(&cfg)?.status();
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            println!(
                "active slot: {}",
                st.active.map_or("none".to_string(), |s| s.to_string())
            );
            for s in &st.slots {
                let mark = if s.active { "*" } else { " " };
                match (&s.bundle, &s.problem) {
                    (Some(b), _) => println!(
                        "{mark} slot {}: {} version {}, created {}, score {}, threshold {:.4e}, {} bytes, sha256 {}",
                        s.slot,
                        b.product_class,
                        b.bundle_version,
                        b.created,
                        b.score,
                        b.threshold,
                        b.bytes,
                        &b.sha256[..16]
                    ),
                    (None, Some(p)) => println!("{mark} slot {}: {p}", s.slot),
                    (None, None) => println!("{mark} slot {}: empty", s.slot),
                }
            }
            if st.boot_attempts > 0 {
                println!("starts since the last healthy run: {}", st.boot_attempts);
            }
            Ok(())
        }
        Command::Run {
            config,
            exit_at_end,
            listen,
        } => {
            let cfg = DeviceConfig::load(&config.config).map_err(config_failure)?;
            device_runtime::run::run(
                &cfg,
                &device_runtime::run::RunOptions {
                    exit_at_end,
                    listen,
                },
            )?;
            Ok(())
        }
        Command::Journal(JournalCommand::Verify { config }) => {
            let cfg = DeviceConfig::load(&config.config).map_err(config_failure)?;
            let dir = cfg.journal_dir();
            let r = device_runtime::alerts::journal::verify(&dir).map_err(|e| Failure {
                code: 3,
                error: anyhow::anyhow!("journal {}: {e}", dir.display()),
            })?;
            println!(
                "journal {}: ok, {} records in {} files (seq {}..{}), last hash {}",
                dir.display(),
                r.records,
                r.files,
                r.first_seq.map_or("-".into(), |s| s.to_string()),
                r.last_seq.map_or("-".into(), |s| s.to_string()),
                r.last_hash
            );
            if let Some(t) = r.torn_last_line {
                println!(
                    "note: the last line of {} (line {}) was cut by a power cut during an append",
                    t.file.display(),
                    t.line
                );
            }
            Ok(())
        }
        Command::Bench(args) => Ok(bench::run(&args)?),
        Command::Selfcheck(args) => Ok(selfcheck::run(&args)?),
        Command::GpuCheck(args) => Ok(gpu_check::run(&args)?),
    }
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every option of every subcommand says what it does in `--help`.
    #[test]
    fn every_option_is_explained() {
        firm_e2e::assert_every_option_is_explained(Cli::command());
    }
}

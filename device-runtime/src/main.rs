//! `device-runtime`: runs FIRM bundles on the inspection appliance.

mod bench;
mod gpu_check;
mod selfcheck;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use device_runtime::config::DeviceConfig;
use device_runtime::slots::{SlotError, Slots};
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
        /// Allow a lower (or the same) bundle version than the highest installed, or another
        /// product class. When that was needed, the flash is journaled as a
        /// `{"type": "flash", "forced": true, ...}` record.
        #[arg(long)]
        force: bool,
        /// Keep the frames operators marked good: they are marked again with the new bundle
        /// when it starts (without this flag a new bundle starts without them; the old
        /// bundle's stay with it for a rollback).
        #[arg(long)]
        carry_overlay: bool,
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
    /// Frames operators marked good on the status page ("this part is good").
    #[command(subcommand)]
    Overlay(OverlayCommand),
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

#[derive(Debug, Subcommand)]
enum OverlayCommand {
    /// List the frames marked good for the active bundle (or --bundle SHA256).
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// A bundle's SHA-256 (as `status` prints it; a unique prefix will do) instead of the
        /// active one.
        #[arg(long, value_name = "SHA256")]
        bundle: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the frames marked good as PNG images into a folder (with overlay.json listing
    /// them), to train the next bundle with them: `host-trainer fit --good DIR` on a folder
    /// that holds them beside the other good images.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Folder to write into (created when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A bundle's SHA-256 (or a unique prefix) instead of the active one.
        #[arg(long, value_name = "SHA256")]
        bundle: Option<String>,
    },
}

/// The overlay file of `bundle` (a SHA-256 or unique prefix), else of the active slot's bundle.
fn overlay_file(cfg: &DeviceConfig, bundle: Option<&str>) -> Result<PathBuf, Failure> {
    let dir = cfg.overlay_dir();
    let sha = match bundle {
        Some(b) => b.to_string(),
        None => open_slots(cfg)?
            .active_sha256()
            .ok_or_else(|| anyhow::anyhow!("no active bundle; name one with --bundle"))?,
    };
    let suffix = device_runtime::overlay::SUFFIX;
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&sha) && n.ends_with(suffix))
                })
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(anyhow::anyhow!(
            "no frames are marked good for bundle {} (nothing in {})",
            device_runtime::overlay::short(&sha),
            dir.display()
        )
        .into()),
        _ => Err(anyhow::anyhow!("--bundle {sha} matches several overlay files").into()),
    }
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

/// The appliance's journal, sealed with its checkpoint (the device secret is created if this is
/// the device's first start).
fn open_journal(
    cfg: &DeviceConfig,
) -> Result<device_runtime::alerts::journal::Journal, anyhow::Error> {
    use device_runtime::alerts::journal::{Journal, JournalOptions, Seal};
    let dir = cfg.journal_dir();
    let opts = JournalOptions {
        max_file_bytes: cfg.alerts.journal_max_file_bytes,
        max_files: cfg.alerts.journal_max_files,
    };
    Seal::in_state_dir(&cfg.state_dir)
        .and_then(|seal| Journal::open_sealed(&dir, opts, seal))
        .with_context(|| format!("journal {}", dir.display()))
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
            carry_overlay,
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
            let from = carry_overlay.then(|| slots.active_sha256()).flatten();
            // A forced flash is journaled, so the journal must take records before anything
            // changes. It takes the journal's lock per append: `run` may be appending too.
            let mut journal = if force {
                Some(open_journal(&cfg)?)
            } else {
                None
            };
            let (done, loaded) = slots.flash(&file, force).map_err(|e| Failure {
                // A bundle refused (3), or a file that cannot be read (1; the error names it).
                code: if matches!(e, SlotError::Flash { .. }) {
                    3
                } else {
                    1
                },
                error: e.into(),
            })?;
            if let (Some(journal), Some(forced)) = (journal.as_mut(), &done.forced) {
                let record = serde_json::json!({
                    "type": "flash",
                    "forced": true,
                    "reason": forced.reason,
                    "class": done.bundle.product_class,
                    "class-before": forced.class_before,
                    "from-version": done.replaced.as_ref().map(|r| r.bundle_version),
                    "floor": forced.floor,
                    "to-version": done.bundle.bundle_version,
                    "sha256": done.bundle.sha256,
                    "slot": done.slot,
                });
                let appended = journal.append(record).with_context(|| {
                    format!(
                        "the bundle is installed, but the forced flash could not be journaled in {}",
                        journal.dir().display()
                    )
                })?;
                println!(
                    "forced past: {}; journaled as record seq {}",
                    forced.reason, appended.seq
                );
            }
            if let Some(from) = from {
                device_runtime::overlay::Carry::request(
                    &cfg.overlay_dir(),
                    &from,
                    &loaded.summary.sha256,
                )
                .map_err(anyhow::Error::msg)?;
                println!(
                    "frames marked good under bundle {} will be marked again when this bundle starts",
                    device_runtime::overlay::short(&from)
                );
            }
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
            use device_runtime::alerts::journal::{Seal, SealStatus, verify_sealed};
            let cfg = DeviceConfig::load(&config.config).map_err(config_failure)?;
            let dir = cfg.journal_dir();
            let failed = |e| Failure {
                code: 3,
                error: anyhow::anyhow!("journal {}: {e}", dir.display()),
            };
            let seal = Seal::existing(&cfg.state_dir).map_err(failed)?;
            let (r, sealed) = verify_sealed(&dir, seal.as_ref()).map_err(failed)?;
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
            let cp_path = cfg
                .state_dir
                .join(device_runtime::alerts::journal::CHECKPOINT_FILE);
            match sealed {
                SealStatus::Holds { checkpoint, newer } => println!(
                    "checkpoint {}: seq {}, hash {}, sealed {} (HMAC good){}",
                    cp_path.display(),
                    checkpoint.seq,
                    checkpoint.hash,
                    checkpoint.time,
                    if newer > 0 {
                        format!(", followed by {newer} newer records")
                    } else {
                        ": the journal's end is intact".into()
                    }
                ),
                SealStatus::Unchecked { checkpoint } => println!(
                    "note: checkpoint {} (seq {}) is older than the oldest record kept; the \
                     journal's end cannot be checked against it",
                    cp_path.display(),
                    checkpoint.seq
                ),
                SealStatus::Empty => println!("checkpoint: none yet, and no record to seal"),
                SealStatus::NoSecret => println!(
                    "note: no device secret under {} (the appliance has not started since \
                     checkpoints came): a deleted end of the journal cannot be detected",
                    cfg.state_dir.display()
                ),
            }
            Ok(())
        }
        Command::Overlay(OverlayCommand::List {
            config,
            bundle,
            json,
        }) => {
            let cfg = DeviceConfig::load(&config.config).map_err(config_failure)?;
            let path = overlay_file(&cfg, bundle.as_deref())?;
            let o = device_runtime::overlay::Overlay::read(&path).map_err(anyhow::Error::msg)?;
            if json {
                let v = serde_json::json!({"bundle": o.bundle, "patch-rows": o.patch_rows(), "entries": o.entries});
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "bundle {}: {} frames marked good, {} patch rows",
                device_runtime::overlay::short(&o.bundle),
                o.entries.len(),
                o.patch_rows()
            );
            for e in &o.entries {
                println!(
                    "  entry {:>3}: alert {} (frame {} from {}), distance {:.4e}, marked {}{}",
                    e.id,
                    e.alert,
                    e.frame,
                    e.source,
                    e.distance,
                    e.marked_at,
                    e.carried_from
                        .as_deref()
                        .map(|f| format!(
                            ", carried over from {}",
                            device_runtime::overlay::short(f)
                        ))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Overlay(OverlayCommand::Export {
            config,
            out,
            bundle,
        }) => {
            let cfg = DeviceConfig::load(&config.config).map_err(config_failure)?;
            let path = overlay_file(&cfg, bundle.as_deref())?;
            let written = device_runtime::overlay::export(&cfg.overlay_dir(), &path, &out)
                .map_err(anyhow::Error::msg)?;
            println!(
                "wrote {} frames marked good and overlay.json to {}",
                written.len(),
                out.display()
            );
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

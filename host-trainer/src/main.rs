//! `host-trainer`: train FIRM encoders on images of good parts, evaluate them, export bundles.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use host_trainer::bench::{self, BenchArgs, BenchOutcome};
use host_trainer::bundle_cmd::{self, BundleCommand};
use host_trainer::config::FitArgs;
use host_trainer::export::{self, ExportArgs};
use host_trainer::keys::{self, KeygenArgs};
use host_trainer::preview::{self, PreviewArgs};
use host_trainer::report::{self, EvalArgs};
use host_trainer::smoke::{self, SmokeArgs};
use host_trainer::synth_cmd::{self, SynthArgs};
use host_trainer::train::{self, Outcome};
use tracing_subscriber::EnvFilter;

// Training and inference allocate and free large tensors every step; mimalloc keeps those pages
// mapped instead of returning them to the kernel (page faults were a measurable share of a step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Train an anomaly detector on images of good parts with FIRM (contrastive learning with
/// synthetic outliers), evaluate it and export it for the inspection device.
///
/// Exit codes: 0 success, 1 failure, 2 invalid arguments, 3 unusable input data, 130 stopped by
/// Ctrl-C (after writing a checkpoint).
/// Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Debug, Parser)]
#[command(name = "host-trainer", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a FIRM encoder on good images, evaluate it at checkpoints and at the end.
    ///
    /// Settings come from a profile (configs/mvtec/<class>.toml for MVTec classes,
    /// configs/folder/default.toml for plain folders, configs/demo.toml for --demo; `cpu` budgets
    /// wall time, `paper` is the reference), overridden by flags. Writes a run folder with
    /// config.json, checkpoints, metrics.jsonl and eval/ (report, plots). Ctrl-C writes a
    /// checkpoint; `--resume RUN` continues.
    ///
    /// Quick start: host-trainer fit --demo
    Fit(Box<FitArgs>),
    /// Evaluate a run's checkpoint: image AUROC per score and defect type, AULC, plots, report.
    Eval(EvalArgs),
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
    /// Create the ed25519 key pair that signs bundles: DIR/bundle.key (private, mode 0600, never
    /// replaced without --force) and DIR/bundle.pub (give it to the devices).
    Keygen(KeygenArgs),
    /// Export a run as a signed bundle for the device: BatchNorm folded, int8 weights, f16 bank of
    /// good images with thumbnails, a threshold calibrated on held-out good images for a target
    /// false-reject rate, and a self-test. Writes the file atomically and RUN/export/report.md.
    ///
    /// Example: host-trainer export --run runs/bottle-20261128-101500 --key keys/bundle.key
    /// --out bottle.firm
    Export(Box<ExportArgs>),
    /// Compare the training objectives (FIRM, NT-Xent, SupCon, SupCon*) under identical
    /// conditions: a grid of normal classes x losses x seeds, each cell a `fit` run scored with
    /// cos_1, the rotation ensemble and the rotation + crop ensemble.
    ///
    /// Writes OUT/table.md and table.json (mean +- std AUROC and AULC per loss and class) and
    /// OUT/curves.png (AUROC per epoch, one line per loss, shaded +- std). Each cell is resumable:
    /// rerun the same command after Ctrl-C or a crash and it continues where it stopped.
    ///
    /// Example (Fashion-MNIST from Debian's dataset-fashion-mnist, about 90 min on 2 cores):
    /// host-trainer bench --dataset fmnist --classes 0,2,6 --seeds 2 --train-subset 200
    /// --test-subset 2000 --out runs/bench-fmnist
    Bench(Box<BenchArgs>),
    /// Inspect or verify a bundle file.
    #[command(subcommand)]
    Bundle(BundleCommand),
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
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let result: Result<(), host_trainer::Error> = match cli.command {
        Command::Fit(args) => match train::fit(&args, &cwd) {
            Ok(Outcome::Finished { run }) => {
                let eval = EvalArgs {
                    run,
                    json: false,
                    checkpoint: None,
                    device: args.device,
                    score: None,
                    quick: false,
                    patch_bank: None,
                    patch_taps: None,
                    patch_sigma: None,
                    patch_neighbourhood: None,
                };
                let regressed = report::evaluate_run(&eval, &cwd).and_then(|r| {
                    report::print_summary(&r);
                    let run = host_trainer::run::RunDir::open(&eval.run)?;
                    let last = run.checkpoint_or_latest(None)?;
                    host_trainer::export::regression(&run, &last)
                });
                match regressed {
                    Ok(Some((start, now))) if args.accept_regression => {
                        eprintln!(
                            "warning: fine-tuning lowered image AUROC from {start:.4} to {now:.4} \
                             (accepted with --accept-regression)"
                        );
                        Ok(())
                    }
                    Ok(Some((start, now))) => {
                        eprintln!(
                            "error: FINE-TUNING MADE THE DETECTOR WORSE: image AUROC {start:.4} with \
                            the --init weights, {now:.4} after training. `export` refuses this run \
                            (unless --accept-regression); try fewer epochs, a lower --lr or \
                            --backbone-lr, or export the start (--epochs 0)."
                        );
                        return ExitCode::from(1);
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Ok(Outcome::Interrupted { run, checkpoint }) => {
                eprintln!(
                    "interrupted: checkpoint {checkpoint} written; continue with\n  host-trainer fit --resume {}",
                    run.display()
                );
                return ExitCode::from(130);
            }
            Err(e) => Err(e),
        },
        Command::Eval(args) => report::evaluate_run(&args, &cwd).map(|r| {
            if args.json {
                println!("{}", serde_json::to_string(&r).expect("report serialises"));
            } else {
                report::print_summary(&r);
            }
        }),
        Command::Bench(args) => match bench::run(&args, &cwd) {
            Ok(BenchOutcome::Complete { summary }) => {
                println!("{}", bench::markdown(&summary));
                Ok(())
            }
            Ok(BenchOutcome::Interrupted { done, total }) => {
                eprintln!(
                    "interrupted: {done} of {total} cells done; run the same command again to continue"
                );
                return ExitCode::from(130);
            }
            Err(e) => Err(e),
        },
        Command::Smoke(args) => smoke::run(&args).map(|_| ()),
        Command::Synth(args) => synth_cmd::run(&args),
        Command::Preview(args) => preview::run(&args, &cwd).map(|_| ()),
        Command::Export(args) => export::run(&args, &cwd).map(|r| export::print_summary(&r)),
        Command::Bundle(cmd) => bundle_cmd::run(&cmd),
        Command::Keygen(args) => keys::run(&args).map(|(private, public)| {
            println!("private key: {} (keep it secret)", private.display());
            println!("public key:  {}", public.display());
        }),
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

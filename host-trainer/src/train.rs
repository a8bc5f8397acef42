//! `host-trainer fit`: FIRM training as the reference does it — both views of a batch in one
//! pass, PyTorch SGD, one-cycle schedule per iteration — with checkpoints, evaluation at
//! checkpoints (recorded, never used to pick anything), resume, and a clean stop on Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::{EncoderTape, FirmModel, params};
use firm_shared::preprocess::Normalization;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tracing::{info, warn};

use crate::batch::{BatchConfig, Loader, Sampler};
use crate::config::{self, FitArgs, FitConfig, Length};
use crate::data::images::{ImageCache, LoadOptions};
use crate::error::{Error, Result};
use crate::eval::{self, EvalImages};
use crate::optim::Sgd;
use crate::outliers::OutlierSpec;
use crate::outliers::oe::OeSet;
use crate::run::{RunDir, TrainState, default_run_dir};
use crate::schedule::OneCycle;

/// How a `fit` ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished {
        run: PathBuf,
    },
    /// Stopped by Ctrl-C/SIGTERM after writing a checkpoint.
    Interrupted {
        run: PathBuf,
        checkpoint: String,
    },
}

/// Set by the Ctrl-C handler; the training loop checks it after every step.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Steps timed to size a time-budgeted run.
const CALIBRATION_STEPS: usize = 3;

/// Everything a run needs in memory.
struct Setup {
    cfg: FitConfig,
    run: RunDir,
    sampler: Arc<Sampler>,
    eval: Option<EvalImages>,
    norm: Normalization,
    /// Where the model is built and trained.
    device: Device,
}

fn load_options(cfg: &FitConfig) -> LoadOptions {
    LoadOptions {
        strict: cfg.strict,
        ..LoadOptions::default()
    }
}

fn prepare(cfg: FitConfig, run: RunDir, cwd: &Path, device: Device) -> Result<Setup> {
    let ds = cfg.data.open(cwd)?;
    info!(
        "{}: {} good training images, {} test images ({} defective)",
        ds.origin,
        ds.train.len(),
        ds.test.len(),
        ds.test.len() - ds.test_good()
    );
    let opts = load_options(&cfg);
    let max_side = 2 * cfg.size;
    let train = ImageCache::load(&ds.train, &ds.unsupported, max_side, opts, 2, &ds.train_dir)?;
    let spec: OutlierSpec = cfg.outliers.parse()?;
    let oe = match &spec.oe {
        Some(dir) => Some(Arc::new(OeSet::load(dir, max_side, opts)?)),
        None => None,
    };
    let norm = cfg.model.encoder.normalization();
    let sampler = Sampler::new(
        Arc::new(train),
        spec,
        oe,
        BatchConfig {
            size: cfg.size,
            batch: cfg.batch,
            seed: cfg.seed,
            normalization: norm,
            keep_images: false,
            augment: cfg.augment,
        },
    )?;
    let eval = if ds.test.is_empty() {
        warn!("no test images: training without evaluation");
        None
    } else {
        Some(EvalImages::load(&ds, cfg.size, opts)?)
    };
    Ok(Setup {
        cfg,
        run,
        sampler: Arc::new(sampler),
        eval,
        norm,
        device,
    })
}

/// A freshly initialised model (deterministic in the seed); with `--init`, the encoder then takes
/// the given weights (the head stays at its seeded initialisation).
fn build_model(cfg: &FitConfig, device: &Device) -> Result<(VarMap, FirmModel)> {
    let varmap = VarMap::new();
    let model = FirmModel::new(
        &cfg.model,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    params::init_params(&varmap, cfg.seed)?;
    if let Some(init) = &cfg.init {
        params::load(&varmap, init, params::Part::Encoder)?;
    }
    Ok((varmap, model))
}

/// Training-mode embeddings `[2S, d]` of a batch's two views. When the views are the same images
/// (no augmentation) the encoder runs once on view 1 and its embeddings are repeated: the loss and
/// the gradients are those of the two-view pass, for half the work. (BatchNorm's batch mean and
/// biased variance are the same over a batch and its duplicate; only the running variance's
/// unbiased correction, n / (n - 1), counts S images instead of 2S.)
pub fn embed_views(model: &FirmModel, batch: &crate::batch::Batch) -> Result<candle_core::Tensor> {
    let z = model
        .forward_t(&batch.model_input(model.device())?, true)?
        .z;
    both_views(z, batch)
}

/// The embeddings of both views from the encoder's output (see [`embed_views`]).
fn both_views(z: candle_core::Tensor, batch: &crate::batch::Batch) -> Result<candle_core::Tensor> {
    Ok(if batch.identical_views {
        candle_core::Tensor::cat(&[&z, &z], 0)?
    } else {
        z
    })
}

/// [`embed_views`] for an optimisation step: the encoder's tape, when it returns one, must
/// complete the loss's gradients ([`firm_shared::model::Encoder::forward_train`]).
fn embed_views_for_step(
    model: &FirmModel,
    batch: &crate::batch::Batch,
) -> Result<(candle_core::Tensor, Option<EncoderTape>)> {
    let (out, tape) = model.forward_train(&batch.model_input(model.device())?)?;
    Ok((both_views(out.z, batch)?, tape))
}

/// One optimisation step; returns the loss.
fn step(
    model: &FirmModel,
    opt: &mut Sgd,
    cfg: &FitConfig,
    batch: &crate::batch::Batch,
) -> Result<f64> {
    let (z, tape) = embed_views_for_step(model, batch)?;
    let loss = cfg.loss.loss(&z, &batch.labels, cfg.tau)?;
    let value = loss.to_scalar::<f32>()? as f64;
    if !value.is_finite() {
        return Err(Error::invalid(
            "training",
            format!("the loss became {value}; lower --lr or raise --tau"),
        ));
    }
    let mut grads = loss.backward()?;
    if let Some(tape) = tape {
        tape.backward(&mut grads)?;
    }
    opt.step(&grads)?;
    Ok(value)
}

/// Epochs that fit in the time budget, from a few timed steps (the model is rebuilt afterwards,
/// so the calibration leaves no trace in the weights).
fn calibrate(setup: &Setup, max_minutes: f64) -> Result<usize> {
    let (varmap, model) = build_model(&setup.cfg, &setup.device)?;
    let mut opt = Sgd::new(
        params::trainable_vars(&varmap),
        setup.cfg.lr / 25.0,
        0.95,
        setup.cfg.weight_decay,
    );
    let mut times = Vec::new();
    for i in 0..CALIBRATION_STEPS {
        let b = setup
            .sampler
            .batch(0, i % setup.sampler.batches_per_epoch())?;
        let t = Instant::now();
        step(&model, &mut opt, &setup.cfg, &b)?;
        times.push(t.elapsed().as_secs_f64());
    }
    // The first step pays for allocation warm-up; use the others.
    let per_step = times[1..].iter().sum::<f64>() / (times.len() - 1) as f64;
    let eval_s = match &setup.eval {
        Some(e) => {
            let t = Instant::now();
            let sample: Vec<Vec<f32>> = e
                .train
                .iter()
                .take(8)
                .map(|i| firm_shared::preprocess::normalize_chw(i, &setup.norm))
                .collect();
            eval::embed(&model, setup.cfg.size, &sample)?;
            let per_image = t.elapsed().as_secs_f64() / sample.len() as f64;
            // Checkpoint evaluations embed bank + test once each.
            per_image * (e.train.len() + e.test.len()) as f64 * setup.cfg.checkpoints as f64
        }
        None => 0.0,
    };
    let budget = max_minutes * 60.0 - eval_s;
    let steps = (budget / per_step).max(0.0) as usize;
    let epochs = (steps / setup.sampler.batches_per_epoch()).max(1);
    info!(
        "time budget {max_minutes} min: {per_step:.2} s per step, {:.0} s of evaluations -> {epochs} epochs of {} steps",
        eval_s,
        setup.sampler.batches_per_epoch()
    );
    Ok(epochs)
}

/// Epochs after which a checkpoint (and evaluation) is written: `n` evenly spaced, the last at
/// the end.
pub fn checkpoint_epochs(epochs: usize, n: usize) -> Vec<usize> {
    if epochs == 0 {
        return Vec::new();
    }
    let n = n.clamp(1, epochs);
    let mut v: Vec<usize> = (1..=n)
        .map(|k| ((k as f64 * epochs as f64 / n as f64).round() as usize).max(1))
        .collect();
    v.dedup();
    v
}

/// Install the Ctrl-C/SIGTERM handler once per process.
fn install_stop_handler() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if let Err(e) = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C while the checkpoint is being written: leave now.
                std::process::exit(130);
            }
            eprintln!("\nstopping: writing a checkpoint (Ctrl-C again to abort)");
        }) {
            warn!("cannot install the Ctrl-C handler: {e}");
        }
    });
}

/// Run `fit` with the given flags.
pub fn fit(args: &FitArgs, cwd: &Path) -> Result<Outcome> {
    // A device that cannot be used is refused before anything is read or written.
    fit_on(args, cwd, &args.device.open()?)
}

/// [`fit`] on a device already opened (`args.device` is not looked at).
pub fn fit_on(args: &FitArgs, cwd: &Path, device: &Device) -> Result<Outcome> {
    let device = device.clone();
    install_stop_handler();
    let (setup, resume_from) = match &args.resume {
        Some(dir) => {
            let run = RunDir::open(dir)?;
            let cfg = run.read_config()?;
            let latest = run.latest()?;
            info!(
                "resuming {} from checkpoint {}",
                dir.display(),
                latest.as_deref().unwrap_or("(none: from the start)")
            );
            (prepare(cfg, run, cwd, device)?, latest)
        }
        None => {
            let (cfg, settings) = config::resolve(args, cwd)?;
            let name = match &cfg.data {
                crate::data::DataSource::Mvtec { class, .. }
                | crate::data::DataSource::Demo { class } => class.clone(),
                crate::data::DataSource::Folder(f) => crate::data::dataset::file_name(&f.good),
            };
            let root = args
                .out
                .clone()
                .unwrap_or_else(|| default_run_dir(cwd, &name));
            let run = RunDir::create(&root)?;
            let mut setup = prepare(cfg, run, cwd, device)?;
            let per_epoch = setup.sampler.batches_per_epoch();
            let epochs = match (settings.epochs, settings.max_minutes) {
                (Some(0), _) => 0,
                (Some(e), _) => e,
                (None, Some(m)) => calibrate(&setup, m)?,
                (None, None) => unreachable!("resolve requires one"),
            };
            setup.cfg.length = Some(Length {
                epochs,
                steps_per_epoch: per_epoch,
                max_minutes: settings
                    .epochs
                    .is_none()
                    .then_some(settings.max_minutes)
                    .flatten(),
            });
            setup.cfg.schedule = Some(OneCycle::reference(epochs * per_epoch, setup.cfg.lr));
            setup.run.write_config(&setup.cfg)?;
            (setup, None)
        }
    };
    train(setup, resume_from)
}

fn train(setup: Setup, resume_from: Option<String>) -> Result<Outcome> {
    let Setup {
        cfg,
        run,
        sampler,
        eval,
        norm,
        device,
    } = setup;
    let length = cfg
        .length
        .clone()
        .ok_or_else(|| Error::invalid("run config", "has no length"))?;
    let schedule = cfg
        .schedule
        .clone()
        .ok_or_else(|| Error::invalid("run config", "has no schedule"))?;
    if length.steps_per_epoch != sampler.batches_per_epoch() {
        return Err(Error::invalid(
            "--resume",
            format!(
                "the dataset now gives {} batches per epoch, the run was planned with {}: the data changed",
                sampler.batches_per_epoch(),
                length.steps_per_epoch
            ),
        ));
    }
    let (varmap, model) = build_model(&cfg, &device)?;
    let mut opt = Sgd::new(
        params::trainable_vars(&varmap),
        cfg.lr,
        0.9,
        cfg.weight_decay,
    );
    let mut state = match &resume_from {
        Some(name) => run.load_checkpoint(name, &varmap, Some(&mut opt))?,
        None => TrainState {
            epoch: 0,
            next_batch: 0,
            global_step: 0,
            elapsed_s: 0.0,
            reason: "start".into(),
        },
    };
    if resume_from.is_none()
        && let Some(e) = &eval
    {
        // The same encoder before training (random initialisation, or the --init weights), on
        // the same data: the floor training must beat.
        let r = eval::evaluate(&model, norm, e, &eval::quick_specs(cfg.score), cfg.seed)?;
        let auroc = r[&cfg.score.to_string()].auroc;
        run.append_metric(&json!({
            "kind": "eval", "checkpoint": "init", "epoch": 0, "step": 0,
            "score": cfg.score.to_string(), "image_auroc": auroc,
        }))?;
        info!(
            "before training ({}): {} image AUROC {}",
            if cfg.init.is_some() {
                "--init weights"
            } else {
                "random initialisation"
            },
            cfg.score,
            auroc.map_or("n/a".into(), |a| format!("{a:.4}"))
        );
    }
    let total = length.total_steps();
    if total == 0 {
        // --epochs 0: the starting encoder as it is (the pretrained-feature baseline).
        state.reason = "final".into();
        run.save_checkpoint("epoch-0000", &varmap, &opt, &state)?;
        return Ok(Outcome::Finished {
            run: run.root.clone(),
        });
    }
    if state.global_step >= total {
        info!("the run is already complete ({} steps)", total);
        return Ok(Outcome::Finished {
            run: run.root.clone(),
        });
    }
    let ckpt_epochs = checkpoint_epochs(length.epochs, cfg.checkpoints);
    let remaining_epochs = length.epochs - state.epoch;
    let loader = Loader::spawn(
        sampler.clone(),
        state.epoch,
        state.next_batch,
        Some(remaining_epochs),
        2,
    );
    let images_per_step = 2 * sampler.samples_per_batch();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(total as u64).with_position(state.global_step as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise} < {eta_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let first_step = state.global_step;
    let (mut epoch_loss, mut epoch_steps) = (0.0f64, 0usize);
    let mut window = Instant::now();
    for batch in loader {
        let batch = batch?;
        let (lr, momentum) = schedule.at(state.global_step);
        opt.lr = lr;
        opt.momentum = momentum;
        // The head alone first (a pretrained start), then the encoder at its share of the rate.
        opt.backbone_scale = if (state.global_step as f64) < cfg.head_warmup * total as f64 {
            0.0
        } else {
            cfg.backbone_lr
        };
        let loss = step(&model, &mut opt, &cfg, &batch)?;
        let ips = images_per_step as f64 / window.elapsed().as_secs_f64();
        window = Instant::now();
        state.global_step += 1;
        state.epoch = batch.epoch;
        state.next_batch = batch.index + 1;
        if state.next_batch == length.steps_per_epoch {
            state.epoch += 1;
            state.next_batch = 0;
        }
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        run.append_metric(&json!({
            "kind": "step", "step": state.global_step, "epoch": batch.epoch, "loss": loss,
            "lr": lr, "momentum": momentum, "images_per_s": ips,
        }))?;
        bar.set_position(state.global_step as u64);
        bar.set_message(format!(
            "epoch {}/{}  loss {loss:.4}  lr {lr:.2e}  {ips:.1} img/s",
            batch.epoch + 1,
            length.epochs
        ));
        epoch_loss += loss;
        epoch_steps += 1;
        let epoch_done = state.next_batch == 0;
        if epoch_done {
            // One line per epoch in the log as well (the bar is hidden when stderr is no terminal).
            let done = (state.global_step - first_step) as f64;
            let eta = started.elapsed().as_secs_f64() / done * (total - state.global_step) as f64;
            bar.suspend(|| {
                info!(
                    "epoch {}/{}: mean loss {:.4}, lr {lr:.2e}, {ips:.1} img/s, ETA {:.0} s",
                    state.epoch,
                    length.epochs,
                    epoch_loss / epoch_steps as f64,
                    eta
                )
            });
            epoch_loss = 0.0;
            epoch_steps = 0;
        }
        if epoch_done && ckpt_epochs.contains(&state.epoch) {
            let last = state.epoch == length.epochs;
            state.reason = if last { "final" } else { "scheduled" }.into();
            let name = format!("epoch-{:04}", state.epoch);
            run.save_checkpoint(&name, &varmap, &opt, &state)?;
            if let Some(e) = &eval {
                let r = eval::evaluate(&model, norm, e, &eval::quick_specs(cfg.score), cfg.seed)?;
                let auroc = r[&cfg.score.to_string()].auroc;
                run.append_metric(&json!({
                    "kind": "eval", "checkpoint": name, "epoch": state.epoch,
                    "step": state.global_step, "score": cfg.score.to_string(), "image_auroc": auroc,
                }))?;
                bar.suspend(|| {
                    info!(
                        "checkpoint {name}: {} image AUROC {}",
                        cfg.score,
                        auroc.map_or("n/a".into(), |a| format!("{a:.4}"))
                    )
                });
            } else {
                bar.suspend(|| info!("checkpoint {name}"));
            }
        }
        if STOP.load(Ordering::SeqCst) && state.global_step < total {
            state.reason = "interrupted".into();
            let name = format!("step-{:06}", state.global_step);
            run.save_checkpoint(&name, &varmap, &opt, &state)?;
            bar.abandon();
            return Ok(Outcome::Interrupted {
                run: run.root.clone(),
                checkpoint: name,
            });
        }
    }
    bar.finish();
    Ok(Outcome::Finished {
        run: run.root.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_spread_evenly_and_end_at_the_end() {
        assert_eq!(checkpoint_epochs(10, 5), vec![2, 4, 6, 8, 10]);
        assert_eq!(checkpoint_epochs(3, 5), vec![1, 2, 3]);
        assert_eq!(checkpoint_epochs(7, 1), vec![7]);
        assert_eq!(checkpoint_epochs(2000, 200)[..2], [10, 20]);
    }
}

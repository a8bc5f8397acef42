//! One cell of the grid: a `fit` run (started, or resumed from its last checkpoint), then the
//! final checkpoint scored with the three scores of the paper's Table 1, saved as result.json.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use firm_shared::fsutil::write_atomic;
use firm_shared::score::{self, ScoreSpec};
use serde::{Deserialize, Serialize};

use super::geometry::{self, Geometry};
use super::plan::{Cell, Plan};
use crate::error::{Error, Result};
use crate::eval::{self, EvalImages};
use crate::loss::LossKind;
use crate::outliers::OutlierSpec;
use crate::report;
use crate::run::RunDir;
use crate::train::{self, Outcome};

/// The scores of every cell: cos_1 (the paper's Table 5), the rotation ensemble, and the ensemble
/// of rotations and crops (Table 1's three FIRM rows). The crop ensemble is computed on the final
/// checkpoint only.
pub const SCORES: [&str; 3] = ["cos_1", "cos_1+rot", "cos_1+rot+crops"];

const RESULT: &str = "result.json";

/// What one finished cell measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CellResult {
    pub class_index: usize,
    pub class_name: String,
    pub loss: LossKind,
    pub seed: u64,
    /// Image AUROC of the final checkpoint per score of [`SCORES`].
    pub auroc: BTreeMap<String, f64>,
    /// cos_1 AUROC before training (epoch 0) and at each checkpoint: `(epoch, AUROC)`.
    pub curve: Vec<(usize, f64)>,
    /// Area under the checkpoint curve (Simpson's rule, as `host-trainer eval`; epoch 0 excluded).
    pub aulc: f64,
    pub epochs: usize,
    pub n_train: usize,
    pub n_test: usize,
    /// Training wall time (all sessions of the run) and final scoring time, seconds.
    pub train_s: f64,
    pub score_s: f64,
    /// Similarities of good images and synthetic outliers (the paper's Figure 2 axes) at the
    /// final checkpoint; `None` for OE-only runs, and in results written before it was measured
    /// (filled in by [`backfill`]).
    #[serde(default)]
    pub geometry: Option<Geometry>,
}

/// The saved result of a finished cell, if there is one.
pub fn read_result(plan: &Plan, c: &Cell) -> Result<Option<CellResult>> {
    let p = plan.cell_dir(c).join(RESULT);
    match std::fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::invalid("bench cell result", format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &p)(e)),
    }
}

/// Train (or resume) and score one cell. `None` when Ctrl-C stopped it (a checkpoint was
/// written; the next bench run resumes it).
pub fn run_cell(plan: &Plan, c: &Cell, cwd: &Path, device: &Device) -> Result<Option<CellResult>> {
    let dir = plan.cell_dir(c);
    // A fresh cell materialises its split; a started one re-reads the config it was planned with
    // (its split is written again if it is missing).
    let (root, _) = plan.data_for(c)?;
    let args = if dir.join("config.json").is_file() {
        plan.resume_args(c)
    } else {
        plan.fit_args(c, &root)?
    };
    let run_path = match train::fit_on(&args, cwd, device)? {
        Outcome::Finished { run } => run,
        Outcome::Interrupted { .. } => return Ok(None),
    };
    let t = Instant::now();
    let run = RunDir::open(&run_path)?;
    let cfg = run.read_config()?;
    let ckpt = run.checkpoint_or_latest(None)?;
    let state = run.read_state(&ckpt)?;
    let model = report::load_model(&cfg, &run, &ckpt, device)?;
    let ds = cfg.data.open(cwd)?;
    let imgs = EvalImages::for_run(&ds, &cfg)?;
    let geometry = measure_geometry(&model, &imgs, &cfg)?;
    let specs: Vec<ScoreSpec> = SCORES.iter().map(|s| s.parse().expect("valid")).collect();
    let results = eval::evaluate(
        &model,
        cfg.model.encoder.normalization(),
        &imgs,
        &specs,
        cfg.seed,
    )?;
    let mut auroc = BTreeMap::new();
    for s in SCORES {
        let a = results[s].auroc.ok_or_else(|| {
            Error::invalid(
                "bench cell",
                format!(
                    "{}: the test set needs good and anomalous images",
                    dir.display()
                ),
            )
        })?;
        auroc.insert(s.to_string(), a);
    }
    let curve = learning_curve(&run)?;
    let after_init: Vec<f64> = curve.iter().skip(1).map(|c| c.1).collect();
    let aulc = if after_init.is_empty() {
        auroc["cos_1"]
    } else {
        score::aulc(&after_init)?
    };
    let r = CellResult {
        class_index: c.class_index,
        class_name: c.class_name.clone(),
        loss: c.loss,
        seed: c.seed,
        auroc,
        curve,
        aulc,
        epochs: cfg.length.as_ref().map_or(0, |l| l.epochs),
        n_train: imgs.train.len(),
        n_test: imgs.test.len(),
        train_s: state.elapsed_s,
        score_s: t.elapsed().as_secs_f64(),
        geometry,
    };
    write_atomic(
        &dir.join(RESULT),
        &serde_json::to_vec_pretty(&r).expect("result serialises"),
    )?;
    // Keep only the weights the result came from; the curve is in metrics.jsonl.
    run.remove_checkpoints_except(&ckpt)?;
    tracing::debug!("cell {} {} done", c.class_name, c.loss.to_string());
    Ok(Some(r))
}

fn measure_geometry(
    model: &firm_shared::model::FirmModel,
    imgs: &EvalImages,
    cfg: &crate::config::FitConfig,
) -> Result<Option<Geometry>> {
    let spec: OutlierSpec = cfg.outliers.parse()?;
    geometry::measure(
        model,
        &imgs.train,
        &spec,
        cfg.size,
        cfg.model.encoder.normalization(),
        cfg.seed,
    )
}

/// A result written before the geometry was measured gets it from the cell's final checkpoint
/// (kept for this), and is saved again.
pub fn backfill(
    plan: &Plan,
    c: &Cell,
    cwd: &Path,
    device: &Device,
    mut r: CellResult,
) -> Result<CellResult> {
    let dir = plan.cell_dir(c);
    if r.geometry.is_some() {
        return Ok(r);
    }
    let run = RunDir::open(&dir)?;
    let cfg = run.read_config()?;
    if cfg.outliers.parse::<OutlierSpec>()?.generators.is_empty() {
        return Ok(r);
    }
    let ckpt = run.checkpoint_or_latest(None)?;
    let model = report::load_model(&cfg, &run, &ckpt, device)?;
    let imgs = EvalImages::for_run(&cfg.data.open(cwd)?, &cfg)?;
    r.geometry = measure_geometry(&model, &imgs, &cfg)?;
    write_atomic(
        &dir.join(RESULT),
        &serde_json::to_vec_pretty(&r).expect("result serialises"),
    )?;
    Ok(r)
}

/// cos_1 AUROC per evaluation of the run: `init` at epoch 0, then every checkpoint.
fn learning_curve(run: &RunDir) -> Result<Vec<(usize, f64)>> {
    let mut curve: Vec<(usize, f64)> = run
        .metrics()?
        .iter()
        .filter(|m| m["kind"] == "eval" && m["score"] == "cos_1")
        .filter_map(|m| Some((m["epoch"].as_u64()? as usize, m["image_auroc"].as_f64()?)))
        .collect();
    // A resumed run may have evaluated a checkpoint twice: keep the last value per epoch.
    curve.reverse();
    let mut seen = std::collections::BTreeSet::new();
    curve.retain(|(e, _)| seen.insert(*e));
    curve.sort_by_key(|(e, _)| *e);
    Ok(curve)
}

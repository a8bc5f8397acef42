//! `host-trainer eval --run DIR`: the evaluation report of a run — every score's image AUROC
//! overall and per defect type, the learning curve over checkpoints (AULC), plots, and the
//! per-image scores — as report.json, report.md, scores.csv and PNGs in RUN/eval/.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::fsutil::write_atomic;
use firm_shared::model::FirmModel;
use firm_shared::score;
use serde::{Deserialize, Serialize};

use crate::compute::DeviceSpec;
use crate::config::FitConfig;
use crate::error::{Error, Result};
use crate::eval::{self, EvalImages, ScoreResult};
use crate::plots;
use crate::run::RunDir;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Run folder written by `host-trainer fit`.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Print one JSON object on stdout (image_auroc, score, per_type, n_test, ...).
    #[arg(long)]
    pub json: bool,
    /// Checkpoint to evaluate (default: the latest).
    #[arg(long, value_name = "NAME")]
    pub checkpoint: Option<String>,
    /// Where to embed the images: cpu, or cuda / cuda:N (a build with --features cuda).
    #[arg(long, default_value = "cpu", env = "FIRM_DEVICE")]
    pub device: DeviceSpec,
}

/// AUROC of one score, without the per-image values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    pub image_auroc: Option<f64>,
    pub per_type: BTreeMap<String, f64>,
}

/// What `eval` reports (report.json; `--json` prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Image AUROC of the profile's score on the evaluated checkpoint.
    pub image_auroc: Option<f64>,
    /// The profile's score (fixed before training; never chosen by test results).
    pub score: String,
    pub per_type: BTreeMap<String, f64>,
    /// The profile's score with the same encoder before training (random initialisation, or the
    /// `--init` weights: then this is the pretrained-feature baseline).
    pub init_auroc: Option<f64>,
    pub n_test: usize,
    pub n_good: usize,
    pub n_defective: usize,
    pub n_train: usize,
    pub checkpoint: String,
    pub epoch: usize,
    pub step: usize,
    /// AUROC of the profile's score at each scheduled checkpoint: (epoch, AUROC).
    pub curve: Vec<(usize, f64)>,
    /// Area under that learning curve (Simpson's rule on [0, 1]).
    pub aulc: Option<f64>,
    /// Every reported score.
    pub scores: BTreeMap<String, ScoreSummary>,
    pub data: String,
    pub run: PathBuf,
}

/// Rebuild the run's model and load a checkpoint's weights.
pub fn load_model(
    cfg: &FitConfig,
    run: &RunDir,
    checkpoint: &str,
    device: &Device,
) -> Result<FirmModel> {
    let varmap = VarMap::new();
    let model = FirmModel::new(
        &cfg.model,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    firm_shared::model::params::load(
        &varmap,
        &run.weights(checkpoint),
        firm_shared::model::params::Part::All,
    )?;
    Ok(model)
}

/// Evaluate a run's checkpoint and write RUN/eval/.
pub fn evaluate_run(args: &EvalArgs, cwd: &Path) -> Result<EvalReport> {
    let device = args.device.open()?;
    let run = RunDir::open(&args.run)?;
    let cfg = run.read_config()?;
    let checkpoint = run.checkpoint_or_latest(args.checkpoint.as_deref())?;
    let state = run.read_state(&checkpoint)?;
    let model = load_model(&cfg, &run, &checkpoint, &device)?;
    let ds = cfg.data.open(cwd)?;
    let imgs = EvalImages::for_run(&ds, &cfg)?;
    if imgs.test.is_empty() {
        return Err(Error::invalid(
            "evaluation",
            format!(
                "{} has no test images (give --test-good/--test-bad or an MVTec test folder)",
                ds.origin
            ),
        ));
    }
    let specs = eval::report_specs(cfg.score);
    let results = eval::evaluate(
        &model,
        cfg.model.encoder.normalization(),
        &imgs,
        &specs,
        cfg.seed,
    )?;
    let headline = &results[&cfg.score.to_string()];
    let metrics = run.metrics()?;
    let evals = || {
        metrics
            .iter()
            .filter(|m| m["kind"] == "eval" && m["score"] == cfg.score.to_string())
    };
    let curve: Vec<(usize, f64)> = evals()
        .filter(|m| m["checkpoint"] != "init")
        .filter_map(|m| Some((m["epoch"].as_u64()? as usize, m["image_auroc"].as_f64()?)))
        .collect();
    let init_auroc = evals()
        .find(|m| m["checkpoint"] == "init")
        .and_then(|m| m["image_auroc"].as_f64());
    let aulc = if curve.is_empty() {
        None
    } else {
        Some(score::aulc(&curve.iter().map(|c| c.1).collect::<Vec<_>>())?)
    };
    let report = EvalReport {
        image_auroc: headline.auroc,
        score: cfg.score.to_string(),
        per_type: headline.per_type.clone(),
        init_auroc,
        n_test: imgs.test.len(),
        n_good: imgs.n_good(),
        n_defective: imgs.n_bad(),
        n_train: imgs.train.len(),
        checkpoint: checkpoint.clone(),
        epoch: state.epoch,
        step: state.global_step,
        curve,
        aulc,
        scores: results
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    ScoreSummary {
                        image_auroc: r.auroc,
                        per_type: r.per_type.clone(),
                    },
                )
            })
            .collect(),
        data: ds.origin.clone(),
        run: run.root.clone(),
    };
    write_outputs(&run, &report, &results, &imgs)?;
    Ok(report)
}

fn write_outputs(
    run: &RunDir,
    report: &EvalReport,
    results: &BTreeMap<String, ScoreResult>,
    imgs: &EvalImages,
) -> Result<()> {
    let dir = run.eval_dir();
    std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
    write_atomic(
        &dir.join("report.json"),
        &serde_json::to_vec_pretty(report).expect("report serialises"),
    )?;
    write_atomic(&dir.join("report.md"), markdown(report).as_bytes())?;
    let headline = &results[&report.score];
    let mut csv = String::from("path,type,score\n");
    for ((p, d), s) in imgs
        .test_paths
        .iter()
        .zip(&imgs.defect)
        .zip(&headline.scores)
    {
        let _ = writeln!(
            csv,
            "{},{},{s}",
            p.display(),
            d.as_deref().unwrap_or("good")
        );
    }
    write_atomic(&dir.join("scores.csv"), csv.as_bytes())?;
    let is_normal: Vec<bool> = imgs.defect.iter().map(Option::is_none).collect();
    let plot_err = |e: plots::PlotError| Error::invalid("plot", e.to_string());
    if report.n_good > 0 && report.n_defective > 0 {
        let curves: Vec<(String, Vec<f64>, Vec<bool>)> = ["cos_1", "cos_1+rot+crops"]
            .iter()
            .chain(std::iter::once(&report.score.as_str()))
            .filter_map(|k| {
                results
                    .get(*k)
                    .map(|r| (k.to_string(), r.scores.clone(), is_normal.clone()))
            })
            .fold(Vec::new(), |mut v, c| {
                if !v.iter().any(|x: &(String, Vec<f64>, Vec<bool>)| x.0 == c.0) {
                    v.push(c);
                }
                v
            });
        plots::roc_png(
            &dir.join("roc.png"),
            &format!("ROC, {}", report.checkpoint),
            &curves,
        )
        .map_err(plot_err)?;
    }
    let (normal, anomalous): (Vec<f64>, Vec<f64>) = {
        let mut n = Vec::new();
        let mut a = Vec::new();
        for (s, good) in headline.scores.iter().zip(&is_normal) {
            if *good { n.push(*s) } else { a.push(*s) }
        }
        (n, a)
    };
    plots::histogram_png(
        &dir.join("histogram.png"),
        &format!("{} score of the test images", report.score),
        &format!("{} (higher = more normal)", report.score),
        &normal,
        &anomalous,
        None,
    )
    .map_err(plot_err)?;
    if report.curve.len() >= 2 {
        plots::curves_png(
            &dir.join("learning_curve.png"),
            "image AUROC over training",
            "epoch",
            "image AUROC",
            &[plots::Series {
                label: report.score.clone(),
                points: report.curve.iter().map(|&(e, a)| (e as f64, a)).collect(),
                band: None,
            }],
        )
        .map_err(plot_err)?;
    }
    Ok(())
}

fn fmt_auroc(a: Option<f64>) -> String {
    a.map_or("n/a".into(), |v| format!("{v:.4}"))
}

/// report.md: the numbers a process engineer reads first.
pub fn markdown(r: &EvalReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation of {}\n", r.run.display());
    let _ = writeln!(
        s,
        "- data: {}\n- test images: {} ({} good, {} defective); bank: {} good training images\n- checkpoint: {} (epoch {}, step {})\n- score (fixed by the profile before training): `{}`\n",
        r.data,
        r.n_test,
        r.n_good,
        r.n_defective,
        r.n_train,
        r.checkpoint,
        r.epoch,
        r.step,
        r.score
    );
    let _ = writeln!(
        s,
        "**Image AUROC: {}** (the same encoder before training: {})\n",
        fmt_auroc(r.image_auroc),
        fmt_auroc(r.init_auroc)
    );
    if let Some(a) = r.aulc {
        let _ = writeln!(s, "AULC over {} checkpoints: {a:.4}\n", r.curve.len());
    }
    let _ = writeln!(s, "| score | image AUROC |\n|---|---|");
    for (k, v) in &r.scores {
        let _ = writeln!(s, "| {k} | {} |", fmt_auroc(v.image_auroc));
    }
    if !r.per_type.is_empty() {
        let _ = writeln!(
            s,
            "\nPer defect type (`{}`, good test images vs that type):\n\n| type | AUROC |\n|---|---|",
            r.score
        );
        for (k, v) in &r.per_type {
            let _ = writeln!(s, "| {k} | {v:.4} |");
        }
    }
    let _ = writeln!(
        s,
        "\nPlots: `roc.png`, `histogram.png`{}; per-image scores: `scores.csv`.",
        if r.curve.len() >= 2 {
            ", `learning_curve.png`"
        } else {
            ""
        }
    );
    s
}

/// Human-readable summary for the terminal.
pub fn print_summary(r: &EvalReport) {
    println!(
        "{}: {} image AUROC {} ({} test images: {} good, {} defective; checkpoint {})",
        r.run.display(),
        r.score,
        fmt_auroc(r.image_auroc),
        r.n_test,
        r.n_good,
        r.n_defective,
        r.checkpoint
    );
    println!("  before training     {}", fmt_auroc(r.init_auroc));
    for (k, v) in &r.scores {
        println!("  {k:<18} {}", fmt_auroc(v.image_auroc));
    }
    if let Some(a) = r.aulc {
        println!("  AULC ({} checkpoints) {a:.4}", r.curve.len());
    }
    println!("report: {}", r.run.join("eval/report.md").display());
}

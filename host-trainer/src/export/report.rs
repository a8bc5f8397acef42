//! What `export` measured, as RUN/export/report.json, report.md and a distance histogram with the
//! threshold, and as the terminal summary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use firm_shared::bundle::manifest::TestMetrics;
use firm_shared::bundle::{Manifest, SelfTestReport};
use firm_shared::calibrate::ConformalThreshold;
use firm_shared::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plots;
use crate::run::RunDir;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ExportReport {
    pub bundle: PathBuf,
    pub bytes: usize,
    pub bundle_version: u64,
    pub product_class: String,
    pub score: String,
    pub threshold: f64,
    pub calibration: ConformalThreshold,
    pub calibration_summary: String,
    pub test: Option<TestMetrics>,
    pub float_auroc: Option<f64>,
    pub quantized_auroc: Option<f64>,
    /// (float - quantized) AUROC in points (x100).
    pub auroc_drop_points: Option<f64>,
    pub spearman: Option<f64>,
    pub float_layers: Vec<String>,
    pub selftest: SelfTestReport,
}

impl ExportReport {
    pub fn new(
        m: &Manifest,
        out: &Path,
        bytes: usize,
        selftest: &SelfTestReport,
        float_auroc: Option<f64>,
        spearman: Option<f64>,
    ) -> Self {
        let t = &m.threshold;
        let quantized_auroc = t.test.as_ref().map(|t| t.auroc);
        Self {
            bundle: out.to_path_buf(),
            bytes,
            bundle_version: m.bundle_version,
            product_class: m.product_class.clone(),
            score: m.score.spec.to_string(),
            threshold: t.distance,
            calibration: t.calibration.clone(),
            calibration_summary: t.calibration.summary(),
            test: t.test.clone(),
            float_auroc,
            quantized_auroc,
            auroc_drop_points: float_auroc
                .zip(quantized_auroc)
                .map(|(f, q)| 100.0 * (f - q)),
            spearman,
            float_layers: m.model.weights.float_layers.clone(),
            selftest: selftest.clone(),
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

pub fn markdown(r: &ExportReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Bundle {}\n", r.bundle.display());
    let _ = writeln!(
        s,
        "- class `{}`, bundle version {}, {} bytes, score `{}` (distance = 1 - score)\n- weights: int8 per output channel, BatchNorm folded; f32 layers: {}\n",
        r.product_class,
        r.bundle_version,
        r.bytes,
        r.score,
        if r.float_layers.is_empty() {
            "none".into()
        } else {
            r.float_layers.join(", ")
        }
    );
    let _ = writeln!(
        s,
        "## Threshold (from good images only)\n\n{}\n",
        r.calibration_summary
    );
    let c = &r.calibration;
    let _ = writeln!(
        s,
        "| | |\n|---|---|\n| threshold (distance) | {:.6} |\n| calibration images | {} |\n| rank (order statistic) | {} |\n| target false-reject rate | {} at {} confidence |\n| target guaranteed | {} |\n| guaranteed false-reject rate at that confidence | {:.4} |\n| expected false-reject rate bound (n+1-k)/(n+1) | {:.4} |\n| good images needed for the target | {} |\n",
        c.distance,
        c.n_calibration,
        c.rank,
        c.target_frr,
        c.confidence,
        if c.target_guaranteed { "yes" } else { "no" },
        c.guaranteed_frr,
        c.expected_frr_bound,
        c.images_needed_for_target
    );
    if let Some(t) = &r.test {
        let m = &t.confusion;
        let _ = writeln!(
            s,
            "## On the test images ({} good, {} defective)\n\nAUROC (bundle path): {:.4}; F1-optimal threshold {:.6} (F1 {:.3}, precision {:.3}, recall {:.3}).\n\nConfusion at the calibrated threshold (the good row is in-sample: the same good images calibrated it):\n\n| | flagged | passed |\n|---|---|---|\n| defective | {} | {} |\n| good | {} | {} |\n",
            t.n_good,
            t.n_defective,
            t.auroc,
            t.f1_optimal.threshold,
            t.f1_optimal.f1,
            t.f1_optimal.precision,
            t.f1_optimal.recall,
            m.true_positives,
            m.false_negatives,
            m.false_positives,
            m.true_negatives
        );
    }
    let _ = writeln!(
        s,
        "## Quantized against float\n\nimage AUROC float {} -> bundle {} (drop {} points); Spearman rank correlation of the distances {}.\n",
        opt(r.float_auroc, 4),
        opt(r.quantized_auroc, 4),
        opt(r.auroc_drop_points, 3),
        opt(r.spearman, 6)
    );
    let st = &r.selftest;
    let _ = writeln!(
        s,
        "## Self-test ({} images, {} path against the reference)\n\nmax embedding error {:.2e} (tolerance {:.0e}), max distance error {:.2e} (tolerance {:.0e}): {}\n",
        st.cases.len(),
        st.backend,
        st.max_embedding_rel_err,
        st.tolerance.embedding_rel,
        st.max_distance_err,
        st.tolerance.distance_abs,
        if st.passed { "passed" } else { "FAILED" }
    );
    s
}

/// RUN/export/: report.json, report.md, scores.csv (every test image's distance on the bundle
/// path and whether the threshold flags it), histogram.png.
pub fn write(
    run: &RunDir,
    r: &ExportReport,
    names: &[String],
    distances: &[f64],
    is_defect: &[bool],
) -> Result<()> {
    let dir = run.root.join("export");
    std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
    let mut csv = String::from("path,defective,distance,flagged\n");
    for ((n, d), bad) in names.iter().zip(distances).zip(is_defect) {
        let _ = writeln!(csv, "{n},{bad},{d:e},{}", *d > r.threshold);
    }
    write_atomic(&dir.join("scores.csv"), csv.as_bytes())?;
    write_atomic(
        &dir.join("report.json"),
        &serde_json::to_vec_pretty(r).expect("report serialises"),
    )?;
    write_atomic(&dir.join("report.md"), markdown(r).as_bytes())?;
    // Distances of good parts are often 1e-4 while defects reach 1e-2: a log axis shows both.
    let log = |d: f64| d.max(1e-7).log10();
    let pick = |want: bool| -> Vec<f64> {
        distances
            .iter()
            .zip(is_defect)
            .filter(|(_, d)| **d == want)
            .map(|(v, _)| log(*v))
            .collect()
    };
    let (good, bad) = (pick(false), pick(true));
    let label = format!("log10 of the calibrated threshold {:.3e}", r.threshold);
    plots::histogram_png(
        &dir.join("histogram.png"),
        "distance from normal of the test images (bundle path)",
        "log10 distance (distance = 1 - score; higher = less normal)",
        &good,
        &bad,
        Some((log(r.threshold), &label)),
    )
    .map_err(|e| Error::invalid("plot", e.to_string()))?;
    Ok(())
}

/// Terminal summary.
pub fn print_summary(r: &ExportReport) {
    println!(
        "bundle: {} ({} bytes, version {})",
        r.bundle.display(),
        r.bytes,
        r.bundle_version
    );
    println!("  {}", r.calibration_summary);
    if let Some(t) = &r.test {
        let m = &t.confusion;
        println!(
            "  test: AUROC {:.4}; at the threshold {} of {} defective flagged, {} of {} good flagged (in-sample)",
            t.auroc, m.true_positives, t.n_defective, m.false_positives, t.n_good
        );
    }
    println!(
        "  quantized vs float: AUROC {} -> {} (drop {} points), Spearman {}",
        opt(r.float_auroc, 4),
        opt(r.quantized_auroc, 4),
        opt(r.auroc_drop_points, 3),
        opt(r.spearman, 6)
    );
    println!(
        "  self-test: {} images, max embedding error {:.2e}, max distance error {:.2e}: {}",
        r.selftest.cases.len(),
        r.selftest.max_embedding_rel_err,
        r.selftest.max_distance_err,
        if r.selftest.passed {
            "passed"
        } else {
            "FAILED"
        }
    );
}

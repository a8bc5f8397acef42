//! The bench's outputs: mean ± std over seeds per loss and class (Markdown and JSON) and the
//! learning curves (AUROC per epoch, one line per loss, shaded ± std) like the paper's Figure 4.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use firm_shared::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

use super::cell::{CellResult, SCORES};
use super::plan::{Plan, PlanClass};
use crate::error::Result;
use crate::plots::{self, Series};

/// Mean and sample standard deviation (n - 1) over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    /// 0 for a single value.
    pub std: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Stat { mean, std, n })
    }
}

/// One loss's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossSummary {
    pub loss: String,
    /// class name -> metric (a score of [`SCORES`] or "aulc") -> over seeds.
    pub per_class: BTreeMap<String, BTreeMap<String, Stat>>,
    /// metric -> over seeds of the per-seed mean over classes (seeds that have every class).
    pub mean: BTreeMap<String, Stat>,
}

/// Everything the table shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub dataset: String,
    /// Normal classes in grid order: (index, name).
    pub classes: Vec<(usize, String)>,
    pub losses: Vec<LossSummary>,
    pub cells_done: usize,
    pub cells_total: usize,
    pub fit_flags: Vec<String>,
    pub train_subset: Option<usize>,
    pub test_subset: Option<usize>,
    pub train_s: f64,
}

/// Geometry metrics: similarities in the projection (`z-`) and feature (`f-`) spaces.
pub const GEOMETRY_METRICS: [&str; 6] = [
    "z-inlier",
    "z-outlier",
    "z-cross",
    "f-inlier",
    "f-outlier",
    "f-cross",
];

/// Every metric of a cell, by key: the scores of [`SCORES`], "aulc", "init" (cos_1 before
/// training) and [`GEOMETRY_METRICS`].
fn metric(r: &CellResult, key: &str) -> Option<f64> {
    let g = r.geometry.as_ref();
    match key {
        "aulc" => Some(r.aulc),
        "init" => r.curve.first().filter(|p| p.0 == 0).map(|p| p.1),
        "z-inlier" => g.map(|g| g.projection.inlier),
        "z-outlier" => g.map(|g| g.projection.outlier),
        "z-cross" => g.map(|g| g.projection.cross),
        "f-inlier" => g.map(|g| g.features.inlier),
        "f-outlier" => g.map(|g| g.features.outlier),
        "f-cross" => g.map(|g| g.features.cross),
        score => r.auroc.get(score).copied(),
    }
}

fn metric_keys() -> impl Iterator<Item = &'static str> {
    SCORES
        .iter()
        .copied()
        .chain(["aulc", "init"])
        .chain(GEOMETRY_METRICS)
}

pub fn summarize(plan: &Plan, results: &[CellResult]) -> Summary {
    let mut losses = Vec::new();
    for &loss in &plan.losses {
        let mine: Vec<&CellResult> = results.iter().filter(|r| r.loss == loss).collect();
        let mut per_class = BTreeMap::new();
        for c in &plan.classes {
            let mut m = BTreeMap::new();
            for key in metric_keys() {
                let v: Vec<f64> = mine
                    .iter()
                    .filter(|r| r.class_index == c.index)
                    .filter_map(|r| metric(r, key))
                    .collect();
                if let Some(s) = Stat::of(&v) {
                    m.insert(key.to_string(), s);
                }
            }
            if !m.is_empty() {
                per_class.insert(c.name.clone(), m);
            }
        }
        let mut mean = BTreeMap::new();
        for key in metric_keys() {
            // Per seed, the mean over classes (only seeds that have every class).
            let per_seed: Vec<f64> = (0..plan.seeds)
                .filter_map(|seed| {
                    let v: Vec<f64> = plan
                        .classes
                        .iter()
                        .filter_map(|c| {
                            mine.iter()
                                .find(|r| r.seed == seed && r.class_index == c.index)
                                .and_then(|r| metric(r, key))
                        })
                        .collect();
                    (v.len() == plan.classes.len()).then(|| v.iter().sum::<f64>() / v.len() as f64)
                })
                .collect();
            if let Some(s) = Stat::of(&per_seed) {
                mean.insert(key.to_string(), s);
            }
        }
        losses.push(LossSummary {
            loss: loss.to_string(),
            per_class,
            mean,
        });
    }
    Summary {
        dataset: plan.dataset.name(),
        classes: plan
            .classes
            .iter()
            .map(|c| (c.index, c.name.clone()))
            .collect(),
        losses,
        cells_done: results.len(),
        cells_total: plan.cells().len(),
        fit_flags: plan.fit_flags.clone(),
        train_subset: plan.train_subset,
        test_subset: plan.test_subset,
        train_s: results.iter().map(|r| r.train_s + r.score_s).sum(),
    }
}

fn pct(s: Option<&Stat>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.1} ± {:.1}", 100.0 * s.mean, 100.0 * s.std),
        Some(s) => format!("{:.1}", 100.0 * s.mean),
        None => "–".into(),
    }
}

/// The Markdown table: cos_1 AUROC per class, every score averaged over classes, AULC per class.
pub fn markdown(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Loss comparison: {}\n", s.dataset);
    let _ = writeln!(
        out,
        "{} of {} cells; training flags: `{}`; train subset {}, test subset {}; {:.0} min of \
         compute in all. Values are image AUROC (%) of the final checkpoint, mean ± std (n - 1) \
         over seeds.\n",
        s.cells_done,
        s.cells_total,
        s.fit_flags.join(" "),
        s.train_subset.map_or("all".into(), |n| n.to_string()),
        s.test_subset.map_or("all".into(), |n| n.to_string()),
        s.train_s / 60.0
    );
    let header = |out: &mut String, first: &str, cols: &[String]| {
        let _ = writeln!(out, "| {first} | {} |", cols.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(cols.len()));
    };
    let class_cols: Vec<String> = s
        .classes
        .iter()
        .map(|(i, n)| format!("{n} ({i})"))
        .chain(["mean".to_string()])
        .collect();
    for (title, key) in [
        (
            "cos_1 AUROC per normal class (the paper's Table 5 setting)",
            "cos_1",
        ),
        ("AULC per normal class (cos_1 over the checkpoints)", "aulc"),
    ] {
        let _ = writeln!(out, "## {title}\n");
        header(&mut out, "loss", &class_cols);
        for l in &s.losses {
            let cells: Vec<String> = s
                .classes
                .iter()
                .map(|(_, n)| pct(l.per_class.get(n).and_then(|m| m.get(key))))
                .chain([pct(l.mean.get(key))])
                .collect();
            let _ = writeln!(out, "| {} | {} |", l.loss, cells.join(" | "));
        }
        out.push('\n');
    }
    let _ = writeln!(out, "## Scores, mean over classes (Table 1's three rows)\n");
    let cols: Vec<String> = SCORES
        .iter()
        .map(|s| s.to_string())
        .chain(["AULC".into(), "cos_1 before training".into()])
        .collect();
    header(&mut out, "loss", &cols);
    for l in &s.losses {
        let cells: Vec<String> = SCORES
            .iter()
            .copied()
            .chain(["aulc", "init"])
            .map(|k| pct(l.mean.get(k)))
            .collect();
        let _ = writeln!(out, "| {} | {} |", l.loss, cells.join(" | "));
    }
    if s.losses.iter().any(|l| l.mean.contains_key("z-inlier")) {
        let _ = writeln!(
            out,
            "\n## Where good images and synthetic outliers lie (Figure 2's axes)\n\n\
             Mean cosine similarity between two good training images (inlier), two synthetic \
             outliers made from them (outlier), and a good image and an outlier (cross), at the \
             final checkpoint, mean over classes; in the projection space the loss shapes and \
             the encoder feature space the score uses. A collapse shows as outlier similarity \
             near 1.\n"
        );
        let cols: Vec<String> = [
            "z inlier",
            "z outlier",
            "z cross",
            "features inlier",
            "features outlier",
            "features cross",
        ]
        .map(String::from)
        .to_vec();
        header(&mut out, "loss", &cols);
        for l in &s.losses {
            let cells: Vec<String> = GEOMETRY_METRICS
                .iter()
                .map(|k| match l.mean.get(*k) {
                    Some(st) if st.n > 1 => format!("{:.3} ± {:.3}", st.mean, st.std),
                    Some(st) => format!("{:.3}", st.mean),
                    None => "–".into(),
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", l.loss, cells.join(" | "));
        }
    }
    out
}

/// Mean ± std over seeds of the curves of `cells` (each a seed's curve, or a seed's curve
/// averaged over classes), aligned by evaluation index; x is the mean epoch at that index.
fn band(curves: &[Vec<(usize, f64)>]) -> Option<Series> {
    let len = curves.iter().map(Vec::len).min()?;
    if len == 0 {
        return None;
    }
    let mut points = Vec::new();
    let mut band = Vec::new();
    for i in 0..len {
        let x = curves.iter().map(|c| c[i].0 as f64).sum::<f64>() / curves.len() as f64;
        let st = Stat::of(&curves.iter().map(|c| c[i].1).collect::<Vec<_>>())?;
        points.push((x, st.mean));
        band.push((x, st.mean - st.std, st.mean + st.std));
    }
    Some(Series {
        label: String::new(),
        points,
        band: (curves.len() > 1).then_some(band),
    })
}

fn curves_for(plan: &Plan, results: &[CellResult], class: Option<usize>) -> Vec<Series> {
    let mut series = Vec::new();
    for &loss in &plan.losses {
        let per_seed: Vec<Vec<(usize, f64)>> = (0..plan.seeds)
            .filter_map(|seed| {
                let cells: Vec<&CellResult> = results
                    .iter()
                    .filter(|r| r.loss == loss && r.seed == seed)
                    .filter(|r| class.is_none_or(|c| r.class_index == c))
                    .collect();
                let want = if class.is_some() {
                    1
                } else {
                    plan.classes.len()
                };
                if cells.len() != want {
                    return None;
                }
                let len = cells.iter().map(|r| r.curve.len()).min()?;
                Some(
                    (0..len)
                        .map(|i| {
                            let n = cells.len() as f64;
                            let e = cells.iter().map(|r| r.curve[i].0 as f64).sum::<f64>() / n;
                            let a = cells.iter().map(|r| r.curve[i].1).sum::<f64>() / n;
                            (e.round() as usize, a)
                        })
                        .collect(),
                )
            })
            .collect();
        if let Some(mut s) = band(&per_seed) {
            s.label = loss.to_string();
            series.push(s);
        }
    }
    series
}

/// Write table.md, table.json and the curve plots; returns the summary.
pub fn write_outputs(plan: &Plan, results: &[CellResult]) -> Result<Summary> {
    let s = summarize(plan, results);
    write_atomic(&plan.out.join("table.md"), markdown(&s).as_bytes())?;
    let json = serde_json::json!({ "summary": s, "cells": results });
    write_atomic(
        &plan.out.join("table.json"),
        &serde_json::to_vec_pretty(&json).expect("serialises"),
    )?;
    let class_title =
        |c: &PlanClass| format!("{}: normal class {} ({})", s.dataset, c.index, c.name);
    let mut plots_to_draw: Vec<(std::path::PathBuf, String, Option<usize>)> = vec![(
        plan.out.join("curves.png"),
        match plan.classes.as_slice() {
            [only] => class_title(only),
            _ => format!("{}: cos_1 AUROC, mean over classes", s.dataset),
        },
        None,
    )];
    if plan.classes.len() > 1 {
        for c in &plan.classes {
            plots_to_draw.push((
                plan.out.join(format!("curves-{}.png", c.name)),
                class_title(c),
                Some(c.index),
            ));
        }
    }
    for (path, title, class) in plots_to_draw {
        let series = curves_for(plan, results, class);
        if series.is_empty() {
            continue;
        }
        if let Err(e) = plots::curves_png(&path, &title, "epoch", "image AUROC", &series) {
            tracing::warn!("{e}");
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_uses_the_sample_deviation() {
        let s = Stat::of(&[0.9, 0.8]).unwrap();
        assert!((s.mean - 0.85).abs() < 1e-12);
        assert!((s.std - 0.1 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of(&[0.7]).unwrap().std, 0.0);
        assert!(Stat::of(&[]).is_none());
    }

    #[test]
    fn band_averages_seeds_point_by_point() {
        let s = band(&[vec![(0, 0.5), (2, 0.7)], vec![(0, 0.5), (2, 0.9), (4, 1.0)]]).unwrap();
        assert_eq!(s.points.len(), 2, "aligned on the shorter curve");
        assert!((s.points[1].1 - 0.8).abs() < 1e-12);
        let b = s.band.unwrap();
        assert!((b[1].2 - b[1].1 - 2.0 * 0.2 / 2f64.sqrt()).abs() < 1e-12);
    }
}

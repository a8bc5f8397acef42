//! `host-trainer bench`: the paper's loss comparison (its Tables 5 and 10, Figure 4) on our
//! implementation, as one resumable grid of classes x losses x seeds.
//!
//! ```text
//! OUT/plan.json                        the grid (a rerun with other settings is refused)
//! OUT/data/seed-<s>/<class>/...        one-class splits (MVTec layout of PNG files)
//! OUT/cells/<class>/<loss>/seed-<s>/   one `fit` run folder per cell, plus result.json when done
//! OUT/table.md, OUT/table.json         mean ± std per loss and class (rewritten after each cell)
//! OUT/curves.png, OUT/curves-<class>.png   AUROC per epoch, one line per loss, shaded ± std
//! ```
//! Every cell is an ordinary run folder: an interrupted grid continues with the same command
//! (finished cells are read back, an interrupted one resumes from its last checkpoint).

mod cell;
pub mod geometry;
mod plan;
mod table;

use std::path::Path;
use std::time::Instant;

use tracing::info;

pub use cell::{CellResult, SCORES};
pub use plan::{BenchArgs, Cell, DatasetSpec, Plan};
pub use table::{Summary, markdown, summarize};

use crate::error::Result;
use crate::train::STOP;

/// How a bench ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchOutcome {
    /// Every cell has its result; the table is complete.
    Complete { summary: Box<Summary> },
    /// Stopped by Ctrl-C; the same command continues.
    Interrupted { done: usize, total: usize },
}

/// Run (or continue) the grid `args` describes.
pub fn run(args: &BenchArgs, cwd: &Path) -> Result<BenchOutcome> {
    // A device that cannot be used is refused before anything is written; it is opened once for
    // the whole grid.
    let device = args.device.open()?;
    let plan = Plan::resolve(args, cwd)?;
    plan.save_or_check()?;
    let cells = plan.cells();
    info!(
        "bench: {} classes x {} losses x {} seeds = {} cells in {}",
        plan.classes.len(),
        plan.losses.len(),
        plan.seeds,
        cells.len(),
        plan.out.display()
    );
    let mut results: Vec<CellResult> = Vec::new();
    let started = Instant::now();
    let mut trained_here = 0usize;
    for (i, c) in cells.iter().enumerate() {
        if let Some(r) = cell::read_result(&plan, c)? {
            results.push(cell::backfill(&plan, c, cwd, &device, r)?);
            continue;
        }
        let eta = (trained_here > 0).then(|| {
            started.elapsed().as_secs_f64() / trained_here as f64 * (cells.len() - i) as f64
        });
        info!(
            "cell {}/{}: class {} ({}), loss {}, seed {}{}",
            i + 1,
            cells.len(),
            c.class_index,
            c.class_name,
            c.loss,
            c.seed,
            eta.map_or(String::new(), |s| format!(", grid ETA {:.0} min", s / 60.0))
        );
        match cell::run_cell(&plan, c, cwd, &device)? {
            Some(r) => {
                info!(
                    "cell {}/{} done: {}",
                    i + 1,
                    cells.len(),
                    SCORES
                        .iter()
                        .map(|s| format!("{s} {:.4}", r.auroc[*s]))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                results.push(r);
                trained_here += 1;
                table::write_outputs(&plan, &results)?;
            }
            None => {
                return Ok(BenchOutcome::Interrupted {
                    done: results.len(),
                    total: cells.len(),
                });
            }
        }
        if STOP.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(BenchOutcome::Interrupted {
                done: results.len(),
                total: cells.len(),
            });
        }
    }
    let summary = table::write_outputs(&plan, &results)?;
    Ok(BenchOutcome::Complete {
        summary: Box::new(summary),
    })
}

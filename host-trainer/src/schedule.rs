//! PyTorch's `OneCycleLR` (cosine annealing, two phases, momentum cycled inversely), stepped once
//! per iteration as the FIRM reference does: warm-up from `max_lr / div` to `max_lr` over the first
//! `pct_start` of the steps while momentum falls from `max_momentum` to `base_momentum`, then cosine
//! decay to `max_lr / div / final_div` while momentum climbs back.
//!
//! Phase boundaries follow PyTorch exactly: phase 1 ends at step `pct_start * total - 1` (a float),
//! phase 2 at `total - 1`; within a phase `pct = (step - start) / (end - start)`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OneCycle {
    pub total_steps: usize,
    pub max_lr: f64,
    pub pct_start: f64,
    pub div_factor: f64,
    pub final_div_factor: f64,
    pub base_momentum: f64,
    pub max_momentum: f64,
}

impl OneCycle {
    /// The reference's settings: pct_start 0.01, div 25, final div 1e4, momentum 0.85..0.95.
    pub fn reference(total_steps: usize, max_lr: f64) -> Self {
        Self {
            total_steps,
            max_lr,
            pct_start: 0.01,
            div_factor: 25.0,
            final_div_factor: 1e4,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    }

    /// Learning rate and momentum for iteration `step` (0-based). Steps past the end keep the
    /// final values.
    pub fn at(&self, step: usize) -> (f64, f64) {
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let total = self.total_steps.max(1);
        let end1 = self.pct_start * total as f64 - 1.0;
        let end2 = total as f64 - 1.0;
        let s = step.min(total - 1) as f64;
        // (start step, end step, lr from -> to, momentum from -> to)
        let phases = [
            (
                0.0,
                end1,
                initial,
                self.max_lr,
                self.max_momentum,
                self.base_momentum,
            ),
            (
                end1,
                end2,
                self.max_lr,
                min,
                self.base_momentum,
                self.max_momentum,
            ),
        ];
        for (i, &(start, end, lr0, lr1, m0, m1)) in phases.iter().enumerate() {
            if s <= end || i == phases.len() - 1 {
                let pct = if end > start {
                    (s - start) / (end - start)
                } else {
                    1.0
                };
                return (cos_anneal(lr0, lr1, pct), cos_anneal(m0, m1, pct));
            }
        }
        unreachable!("the last phase always matches")
    }
}

fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 + 1e-9 * b.abs()
    }

    /// Values printed by torch 2.15 `OneCycleLR(opt, max_lr=0.01, total_steps=50, pct_start=0.1)`
    /// (lr and momentum read before each `step()`).
    #[test]
    fn matches_pytorch_50_steps() {
        let s = OneCycle {
            pct_start: 0.1,
            ..OneCycle::reference(50, 0.01)
        };
        let idx = [0, 1, 2, 4, 5, 6, 10, 25, 48, 49];
        let lr = [
            0.0003999999999999993,
            0.0018058874503045722,
            0.0052,
            0.01,
            0.009987820300018116,
            0.009951340538346478,
            0.009567729017303852,
            0.005522660225769002,
            1.2219699981884209e-05,
            4e-08,
        ];
        let mom = [
            0.95,
            0.9353553390593273,
            0.8999999999999999,
            0.85,
            0.8501217974870088,
            0.8504865965629215,
            0.8543227271178699,
            0.8947735768366173,
            0.9498782025129912,
            0.95,
        ];
        for (k, &i) in idx.iter().enumerate() {
            let (l, m) = s.at(i);
            assert!(close(l, lr[k]) && close(m, mom[k]), "step {i}: {l} {m}");
        }
    }

    /// The reference's pct_start 0.01 over 1000 steps (torch 2.15, same reading).
    #[test]
    fn matches_pytorch_reference_setting() {
        let s = OneCycle::reference(1000, 0.01);
        let want = [
            (0, 0.0003999999999999993, 0.95),
            (1, 0.0006894754202276393, 0.9469846310392954),
            (5, 0.006033511252801265, 0.8913175911166534),
            (9, 0.01, 0.85),
            (10, 0.009999974825128455, 0.8500002517497224),
            (500, 0.005063484560121692, 0.8993653518601905),
            (999, 4e-08, 0.95),
        ];
        for (i, lr, m) in want {
            let (l, mm) = s.at(i);
            assert!(close(l, lr) && close(mm, m), "step {i}: {l} {mm}");
        }
        assert_eq!(s.at(5000), s.at(999), "past the end: final values");
    }
}

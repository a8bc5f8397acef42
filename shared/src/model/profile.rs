//! Wall-clock time spent in each of the model's CPU custom ops, for the training-step profile
//! (`cargo bench -p host-trainer --bench resnet18 -- --ops`).
//!
//! Off by default: a disabled [`span`] costs one relaxed atomic load. When [`enable`]d, each op
//! adds its elapsed time and a call to a process-wide table under its name ("conv fwd", "conv
//! bwd", ...); [`take`] returns and clears it. What the table does not hold (the step's time
//! minus the sum of its rows) is candle's own work: element-wise ops, autograd's gradient
//! accumulation, allocation.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Vec<(&'static str, Duration, u64)>> = Mutex::new(Vec::new());

/// Start or stop recording.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The recorded rows (name, total time, calls) in first-seen order; clears the table.
pub fn take() -> Vec<(&'static str, Duration, u64)> {
    std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Times the scope it lives in when recording is on.
#[must_use = "the span records when dropped"]
#[derive(Debug)]
pub struct Span(Option<(&'static str, Instant)>);

/// A span named `name`; a no-op unless [`enable`]d.
#[inline]
pub fn span(name: &'static str) -> Span {
    Span(
        ENABLED
            .load(Ordering::Relaxed)
            .then(|| (name, Instant::now())),
    )
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((name, t0)) = self.0 {
            let dt = t0.elapsed();
            let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            match t.iter_mut().find(|r| r.0 == name) {
                Some(r) => {
                    r.1 += dt;
                    r.2 += 1;
                }
                None => t.push((name, dt, 1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_enabled() {
        drop(span("off"));
        enable(true);
        for _ in 0..3 {
            let _s = span("on");
            std::thread::sleep(Duration::from_millis(1));
        }
        enable(false);
        drop(span("off"));
        // Other tests' ops may record while this one has recording on; look at our rows only.
        let t = take();
        assert!(!t.iter().any(|r| r.0 == "off"), "{t:?}");
        let on = t.iter().find(|r| r.0 == "on").expect("the enabled spans");
        assert_eq!(on.2, 3);
        assert!(on.1 >= Duration::from_millis(3));
    }
}

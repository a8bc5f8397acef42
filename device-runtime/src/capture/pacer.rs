//! Frame-rate pacing for sources that could run faster than real time (`dir`, `synthetic`).
//!
//! Frames are scheduled on a fixed grid `t0, t0 + T, t0 + 2T, ...` rather than "sleep T after
//! each frame", so decode time and sleep overshoot do not accumulate into drift. If the consumer
//! falls behind by more than one period, the grid restarts from now instead of bursting frames to
//! catch up (a camera drops frames in that situation; it does not deliver them faster later).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    /// `fps` must be validated (finite, > 0); `None` never waits.
    pub(crate) fn new(fps: Option<f64>) -> Self {
        Self {
            period: fps.map(|f| Duration::from_secs_f64(1.0 / f)),
            next: None,
        }
    }

    /// Sleep until the next frame is due. The first frame is due at once.
    pub(crate) fn wait(&mut self) {
        let wait = self.schedule(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// How long to wait at `now` for the next frame, advancing the schedule past it.
    fn schedule(&mut self, now: Instant) -> Duration {
        let Some(period) = self.period else {
            return Duration::ZERO;
        };
        let due = match self.next {
            // Behind by more than a period: restart the grid at now.
            Some(due) if now <= due + period => due,
            _ => now,
        };
        self.next = Some(due + period);
        due.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_fps_never_waits() {
        let mut p = Pacer::new(None);
        let t = Instant::now();
        assert_eq!(p.schedule(t), Duration::ZERO);
        assert_eq!(p.schedule(t), Duration::ZERO);
    }

    #[test]
    fn schedule_is_a_fixed_grid_without_drift() {
        let mut p = Pacer::new(Some(50.0));
        let t0 = Instant::now();
        assert_eq!(p.schedule(t0), Duration::ZERO);
        // Called 5 ms into the period (decode time): waits the remaining 15 ms, not 20.
        assert_eq!(p.schedule(t0 + 5 * MS), 15 * MS);
        // Woke 3 ms late for frame 2 (due at 40 ms): frame 3 is still due at 60 ms.
        assert_eq!(p.schedule(t0 + 43 * MS), Duration::ZERO);
        assert_eq!(p.schedule(t0 + 44 * MS), 16 * MS);
    }

    #[test]
    fn falling_far_behind_restarts_the_grid_instead_of_bursting() {
        let mut p = Pacer::new(Some(100.0));
        let t0 = Instant::now();
        p.schedule(t0);
        // Next due at 10 ms; the consumer comes back at 500 ms: one frame now, then 10 ms later.
        assert_eq!(p.schedule(t0 + 500 * MS), Duration::ZERO);
        assert_eq!(p.schedule(t0 + 500 * MS), 10 * MS);
    }
}

//! The systemd watchdog, fed by the pipeline itself (hardware/systemd/firm-inspect.service runs
//! the appliance with `Type=notify` and `WatchdogSec=`).
//!
//! - [`Heartbeat`]: two counters, one writer each. The capture thread bumps `capture` every time
//!   its source returns (a frame, a bad frame, an error), and [`crate::capture::Reconnecting`]
//!   bumps it on every error and every reopen attempt, so a camera that is unplugged and being
//!   retried counts as alive: a restart would not bring it back, and restarts without a healthy
//!   run roll the bundle back ([`crate::slots`]). The inference thread bumps `inference` once per
//!   turn of its loop: a frame scored, or an idle poll of the mailbox (every 100 ms).
//! - [`Watchdog`]: the decision, without clocks or sockets. A tick feeds the watchdog only if
//!   *both* counters advanced since the last feed. A source that blocks forever, an encoder or
//!   alert sink that hangs, a deadlocked state lock: one counter stops, `WATCHDOG=1` stops, and
//!   systemd kills and restarts the service after `WatchdogSec`. Nothing else touches the
//!   counters, so the web server or an open event stream cannot keep a dead pipeline "alive".
//!   A pipeline that has ended (a non-looping `dir:` replay) stops them too.
//! - [`spawn`]: a plain thread (not a tokio task: a wedged runtime must not matter either way)
//!   that ticks every half of `WATCHDOG_USEC` and sends `WATCHDOG=1` plus a `STATUS=` line
//!   through a [`Notifier`]; [`Systemd`] is sd-notify's datagram to `$NOTIFY_SOCKET`, which does
//!   nothing when the variable is unset (a run from a shell is unchanged).
//!
//! Timing invariant: with the default backoff (at most 5 s) and the camera's frame timeout
//! (5 s), a live capture thread beats at least every 5 s, so `WatchdogSec` must be at least
//! 20 s (ticks at half of it, each needing a beat since the last feed); the unit uses 30 s.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use sd_notify::NotifyState;
use tracing::{info, warn};

/// Progress counters of the pipeline's two threads.
#[derive(Debug, Default)]
pub struct Heartbeat {
    capture: AtomicU64,
    inference: AtomicU64,
}

/// A reading of a [`Heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Beats {
    pub capture: u64,
    pub inference: u64,
}

impl Heartbeat {
    /// The capture side made progress (its source returned or is retrying).
    pub fn beat_capture(&self) {
        self.capture.fetch_add(1, Ordering::Relaxed);
    }

    /// The inference loop turned (a frame scored or an idle poll).
    pub fn beat_inference(&self) {
        self.inference.fetch_add(1, Ordering::Relaxed);
    }

    pub fn beats(&self) -> Beats {
        Beats {
            capture: self.capture.load(Ordering::Relaxed),
            inference: self.inference.load(Ordering::Relaxed),
        }
    }
}

/// The part of the pipeline that did not advance since the last feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    Capture,
    Inference,
    Both,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stall::Capture => "capture",
            Stall::Inference => "inference",
            Stall::Both => "capture and inference",
        })
    }
}

/// Feeds only on progress of both pipeline threads.
#[derive(Debug)]
pub struct Watchdog {
    heartbeat: Arc<Heartbeat>,
    /// The reading at the last feed (or at the start).
    fed_at: Beats,
}

impl Watchdog {
    pub fn new(heartbeat: Arc<Heartbeat>) -> Self {
        let fed_at = heartbeat.beats();
        Self { heartbeat, fed_at }
    }

    /// `Ok`: both counters advanced since the last `Ok`, feed the watchdog now. `Err`: which
    /// part has not (nothing is fed, and the reading of the last feed stays the reference).
    pub fn tick(&mut self) -> Result<(), Stall> {
        let now = self.heartbeat.beats();
        let capture = now.capture != self.fed_at.capture;
        let inference = now.inference != self.fed_at.inference;
        match (capture, inference) {
            (true, true) => {
                self.fed_at = now;
                Ok(())
            }
            (false, true) => Err(Stall::Capture),
            (true, false) => Err(Stall::Inference),
            (false, false) => Err(Stall::Both),
        }
    }
}

/// Where service notifications go.
pub trait Notifier: Send + 'static {
    fn notify(&self, states: &[NotifyState<'_>]) -> io::Result<()>;
}

/// The service manager, through `$NOTIFY_SOCKET` (sd-notify); a no-op when it is unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct Systemd;

impl Systemd {
    /// The watchdog period systemd asks for (`WATCHDOG_USEC`, for this process when
    /// `WATCHDOG_PID` is set), if any.
    pub fn watchdog_timeout() -> Option<Duration> {
        sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
    }
}

impl Notifier for Systemd {
    fn notify(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        sd_notify::notify(states)
    }
}

/// The running watchdog thread; stops when dropped.
#[derive(Debug)]
pub struct Running {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Tick every `period` (half of the watchdog timeout): `WATCHDOG=1` and `STATUS=<status()>`
/// when [`Watchdog::tick`] says so; on a stall a `STATUS=` line that names the stalled part,
/// and a warning in the log (once per stall).
pub fn spawn(
    heartbeat: Arc<Heartbeat>,
    period: Duration,
    notifier: impl Notifier,
    status: impl Fn() -> String + Send + 'static,
) -> io::Result<Running> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut dog = Watchdog::new(heartbeat);
            let mut last_fed = Instant::now();
            let mut stalled = false;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                let sent = match dog.tick() {
                    Ok(()) => {
                        if stalled {
                            info!("pipeline moving again: feeding the watchdog");
                            stalled = false;
                        }
                        last_fed = Instant::now();
                        let s = status();
                        notifier.notify(&[NotifyState::Watchdog, NotifyState::Status(&s)])
                    }
                    Err(part) if !stalled => {
                        stalled = true;
                        let s = format!(
                            "pipeline stalled: no {part} progress for {:.1} s; \
                             not feeding the watchdog",
                            last_fed.elapsed().as_secs_f64()
                        );
                        warn!("{s}");
                        notifier.notify(&[NotifyState::Status(&s)])
                    }
                    Err(_) => Ok(()),
                };
                if let Err(e) = sent {
                    warn!("cannot notify the service manager: {e}");
                }
            }
        })?;
    Ok(Running {
        stop: Some(stop),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn feeds_only_when_both_threads_advanced_since_the_last_feed() {
        let hb = Arc::new(Heartbeat::default());
        let mut dog = Watchdog::new(hb.clone());
        assert_eq!(dog.tick(), Err(Stall::Both));
        hb.beat_inference();
        assert_eq!(dog.tick(), Err(Stall::Capture));
        hb.beat_capture();
        assert_eq!(dog.tick(), Ok(()));
        // Progress is measured from the last feed, not from the last tick.
        assert_eq!(dog.tick(), Err(Stall::Both));
        hb.beat_capture();
        assert_eq!(dog.tick(), Err(Stall::Inference));
        hb.beat_inference();
        assert_eq!(dog.tick(), Ok(()));
        // Inference idling alone (the capture thread blocked) never feeds.
        for _ in 0..5 {
            hb.beat_inference();
            assert_eq!(dog.tick(), Err(Stall::Capture));
        }
    }

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Notifier for Recorder {
        fn notify(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
            let msg = states.iter().map(|s| format!("{s}\n")).collect::<String>();
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
    }

    #[test]
    fn the_thread_stops_feeding_on_a_stall_and_resumes_after_it() {
        let hb = Arc::new(Heartbeat::default());
        let rec = Recorder::default();
        let run = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (h, r) = (hb.clone(), run.clone());
        let beater = std::thread::spawn(move || {
            for _ in 0..400 {
                if r.load(Ordering::SeqCst) {
                    h.beat_capture();
                }
                h.beat_inference();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let dog = spawn(hb, Duration::from_millis(20), rec.clone(), || "ok".into()).unwrap();
        let count = |what: &str| {
            rec.0
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m.contains(what))
                .count()
        };
        std::thread::sleep(Duration::from_millis(200));
        let fed = count("WATCHDOG=1");
        assert!(fed >= 3, "{:?}", rec.0.lock().unwrap());
        run.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(60));
        let at_stall = count("WATCHDOG=1");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(count("WATCHDOG=1"), at_stall, "fed while capture stalled");
        // "no capture progress" (or "no capture and inference progress" on a loaded machine
        // where the beater thread was not scheduled for a whole period).
        assert!(count("pipeline stalled: no capture") >= 1);
        run.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        assert!(count("WATCHDOG=1") > at_stall, "not fed after recovery");
        drop(dog);
        beater.join().unwrap();
    }
}

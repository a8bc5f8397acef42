//! [`Reconnecting`]: keeps any [`FrameSource`] alive across disconnects.
//!
//! It owns a factory that opens the source. On an error of kind `Disconnected` (from opening or
//! from a frame) it drops the source and reopens it after a delay that doubles from
//! [`Backoff::initial`] up to [`Backoff::max`]; the delay goes back to `initial` after the first
//! good frame, so a camera that opens but fails at once is not hammered. `BadFrame` errors are
//! counted and skipped; `EndOfStream` and `Fatal` errors are returned to the caller
//! (`EndOfStream` is not an error: it does not replace `last_error`).
//!
//! Counters in [`SourceStatus`] are the wrapper's own, so they survive reopening: `reconnects`
//! counts successful reopens after a first successful open, and [`Frame::seq`] is renumbered to
//! keep increasing across reconnects.
//!
//! With [`Reconnecting::with_heartbeat`], every error of the inner source and every reopen
//! attempt beat the capture side of the pipeline's [`Heartbeat`]: a camera being retried is a
//! live pipeline for the systemd watchdog, a capture call that never returns is not.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::watchdog::Heartbeat;

use super::{CaptureError, ErrorKind, Frame, FrameSource, SourceStatus};

/// Delays between reopen attempts: `initial`, `2 * initial`, ... capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before reopen attempt `failures + 1` (0 failures so far: `initial`).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// A [`FrameSource`] that reopens its inner source with backoff when it disconnects.
pub struct Reconnecting<F>
where
    F: FnMut() -> Result<Box<dyn FrameSource>, CaptureError> + Send,
{
    factory: F,
    backoff: Backoff,
    source: Option<Box<dyn FrameSource>>,
    /// Consecutive failures (failed opens and disconnects) since the last good frame.
    failures: u32,
    /// Wait before the next open attempt (false only before the very first one).
    must_wait: bool,
    opened_once: bool,
    frames: u64,
    bad_frames: u64,
    reconnects: u64,
    last_error: Option<String>,
    description: String,
    heartbeat: Option<Arc<Heartbeat>>,
}

impl<F> Reconnecting<F>
where
    F: FnMut() -> Result<Box<dyn FrameSource>, CaptureError> + Send,
{
    /// Opens lazily, on the first [`FrameSource::next_frame`].
    pub fn new(factory: F, backoff: Backoff) -> Self {
        Self {
            factory,
            backoff,
            source: None,
            failures: 0,
            must_wait: false,
            opened_once: false,
            frames: 0,
            bad_frames: 0,
            reconnects: 0,
            last_error: None,
            description: "not opened yet".into(),
            heartbeat: None,
        }
    }

    /// Beat `heartbeat`'s capture side on every error and reopen attempt.
    pub fn with_heartbeat(mut self, heartbeat: Arc<Heartbeat>) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    fn beat(&self) {
        if let Some(h) = &self.heartbeat {
            h.beat_capture();
        }
    }

    /// Opens once now, so configuration errors surface at start-up: a `Disconnected` error is
    /// kept (the first frame retries with backoff), any other error is returned.
    pub fn start(factory: F, backoff: Backoff) -> Result<Self, CaptureError> {
        let mut this = Self::new(factory, backoff);
        match this.open() {
            Ok(()) => Ok(this),
            Err(e) if e.kind() == ErrorKind::Disconnected => Ok(this),
            Err(e) => Err(e),
        }
    }

    /// The wait before the next reopen attempt, if the source is down.
    pub fn next_delay(&self) -> Duration {
        self.backoff.delay(self.failures)
    }

    /// Whether an inner source is open now.
    pub fn is_connected(&self) -> bool {
        self.source.is_some()
    }

    fn open(&mut self) -> Result<(), CaptureError> {
        if self.must_wait {
            std::thread::sleep(self.next_delay());
            self.failures = self.failures.saturating_add(1);
        }
        self.beat();
        self.must_wait = true;
        match (self.factory)() {
            Ok(source) => {
                if self.opened_once {
                    self.reconnects += 1;
                    tracing::info!(source = %self.description, reconnects = self.reconnects, "capture source reopened");
                }
                self.opened_once = true;
                self.description = source.status().description;
                self.source = Some(source);
                Ok(())
            }
            Err(e) => {
                self.record(&e);
                Err(e)
            }
        }
    }

    fn record(&mut self, e: &CaptureError) {
        self.beat();
        let msg = e.to_string();
        match e.kind() {
            ErrorKind::Disconnected => {
                tracing::warn!(error = %msg, retry_in = ?self.next_delay(), "capture source down")
            }
            ErrorKind::BadFrame => tracing::warn!(error = %msg, "bad frame skipped"),
            _ => tracing::error!(error = %msg, "capture source stopped"),
        }
        self.last_error = Some(msg);
    }
}

impl<F> FrameSource for Reconnecting<F>
where
    F: FnMut() -> Result<Box<dyn FrameSource>, CaptureError> + Send,
{
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        loop {
            let Some(source) = self.source.as_mut() else {
                match self.open() {
                    Ok(()) => continue,
                    Err(e) if e.kind() == ErrorKind::Disconnected => continue,
                    Err(e) => return Err(e),
                }
            };
            match source.next_frame() {
                Ok(mut frame) => {
                    frame.seq = self.frames;
                    self.frames += 1;
                    self.failures = 0;
                    return Ok(frame);
                }
                Err(e) if e.kind() == ErrorKind::EndOfStream => {
                    tracing::info!(source = %self.description, frames = self.frames, "capture source finished");
                    return Err(e);
                }
                Err(e) => {
                    self.record(&e);
                    match e.kind() {
                        ErrorKind::BadFrame => self.bad_frames += 1,
                        ErrorKind::Disconnected => self.source = None,
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    fn status(&self) -> SourceStatus {
        SourceStatus {
            connected: self.source.is_some(),
            reconnects: self.reconnects,
            bad_frames: self.bad_frames,
            frames: self.frames,
            last_error: self.last_error.clone(),
            description: self.description.clone(),
        }
    }
}

impl<F> fmt::Debug for Reconnecting<F>
where
    F: FnMut() -> Result<Box<dyn FrameSource>, CaptureError> + Send,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnecting")
            .field("backoff", &self.backoff)
            .field("failures", &self.failures)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::{Instant, SystemTime};

    const MS: Duration = Duration::from_millis(1);

    /// What a fake source or factory does next.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Step {
        Frame,
        Bad,
        Unplug,
        End,
        Fatal,
    }

    fn error(step: Step) -> CaptureError {
        match step {
            Step::Bad => CaptureError::BadFrame {
                origin: "fake".into(),
                reason: "torn buffer".into(),
            },
            Step::Unplug => CaptureError::Disconnected {
                device: "/dev/fake".into(),
                op: "VIDIOC_DQBUF",
                error: io::Error::from_raw_os_error(19),
            },
            Step::End => CaptureError::EndOfStream {
                origin: "fake".into(),
                frames: 0,
            },
            Step::Fatal => CaptureError::Device {
                device: "/dev/fake".into(),
                reason: "not a capture device".into(),
            },
            Step::Frame => unreachable!(),
        }
    }

    /// Plays a script of steps; every opened instance reads from the same script.
    #[derive(Debug)]
    struct Fake {
        script: Arc<Mutex<Vec<Step>>>,
        seq: u64,
    }

    impl FrameSource for Fake {
        fn next_frame(&mut self) -> Result<Frame, CaptureError> {
            let step = self.script.lock().unwrap().remove(0);
            if step != Step::Frame {
                return Err(error(step));
            }
            self.seq += 1;
            Ok(Frame {
                seq: self.seq,
                time: SystemTime::now(),
                image: image::RgbImage::new(1, 1),
                source: "fake".into(),
            })
        }

        fn status(&self) -> SourceStatus {
            SourceStatus {
                connected: true,
                reconnects: 0,
                bad_frames: 0,
                frames: self.seq,
                last_error: None,
                description: "fake camera".into(),
            }
        }
    }

    type Opened = Result<Box<dyn FrameSource>, CaptureError>;

    /// A factory that fails with `opens[i]` on its i-th call (Frame = succeeds), then succeeds.
    fn factory(
        opens: Vec<Step>,
        frames: Vec<Step>,
    ) -> (impl FnMut() -> Opened + Send, Arc<Mutex<u32>>) {
        let calls = Arc::new(Mutex::new(0u32));
        let counter = calls.clone();
        let script = Arc::new(Mutex::new(frames));
        let f = move || {
            let mut n = counter.lock().unwrap();
            let step = opens.get(*n as usize).copied().unwrap_or(Step::Frame);
            *n += 1;
            if step == Step::Frame {
                Ok(Box::new(Fake {
                    script: script.clone(),
                    seq: 0,
                }) as Box<dyn FrameSource>)
            } else {
                Err(error(step))
            }
        };
        (f, calls)
    }

    fn backoff(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX), b.max);
    }

    #[test]
    fn reopens_after_unplug_with_growing_delays_and_counts_it() {
        use Step::*;
        // The camera delivers 2 frames, is unplugged, fails to reopen 3 times, then comes back.
        let (f, calls) = factory(
            vec![Frame, Unplug, Unplug, Unplug],
            vec![Frame, Frame, Unplug, Frame, Frame],
        );
        let mut src = Reconnecting::start(f, backoff(10, 1000)).unwrap();
        assert!(src.is_connected());
        assert_eq!(src.next_frame().unwrap().seq, 0);
        assert_eq!(src.next_frame().unwrap().seq, 1);
        let t = Instant::now();
        let frame = src.next_frame().unwrap();
        let waited = t.elapsed();
        // Delays 10 + 20 + 40 + 80 ms before the 4 reopen attempts.
        assert!(waited >= 150 * MS, "waited only {waited:?}");
        assert!(waited < 2000 * MS, "waited {waited:?}");
        // Renumbered: the inner source restarted at 1, the wrapper continues.
        assert_eq!(frame.seq, 2);
        assert_eq!(*calls.lock().unwrap(), 5);
        let st = src.status();
        assert_eq!((st.connected, st.reconnects, st.frames), (true, 1, 3));
        assert_eq!(st.description, "fake camera");
        assert!(st.last_error.unwrap().contains("/dev/fake"));
        // A good frame resets the backoff.
        assert_eq!(src.next_delay(), 10 * MS);
        assert_eq!(src.next_frame().unwrap().seq, 3);
    }

    #[test]
    fn retries_beat_the_heartbeat_while_next_frame_has_not_returned() {
        use Step::*;
        // Unplugged after one frame, 3 failed reopens, then back: one `next_frame` call that
        // spans all of it, during which the watchdog must still see the capture side alive.
        let (f, _) = factory(
            vec![Frame, Unplug, Unplug, Unplug],
            vec![Frame, Unplug, Frame],
        );
        let hb = Arc::new(Heartbeat::default());
        let mut src = Reconnecting::start(f, backoff(1, 2))
            .unwrap()
            .with_heartbeat(hb.clone());
        src.next_frame().unwrap();
        assert_eq!(
            hb.beats().capture,
            0,
            "a good frame is beaten by the pipeline"
        );
        src.next_frame().unwrap();
        // The unplug (1) and the 4 reopen attempts (3 failed, 1 good: 4 + 3 recorded errors).
        assert_eq!(hb.beats().capture, 8);
    }

    #[test]
    fn a_camera_missing_at_start_is_waited_for() {
        use Step::*;
        let (f, calls) = factory(vec![Unplug, Unplug], vec![Frame]);
        let mut src = Reconnecting::start(f, backoff(1, 4)).unwrap();
        assert!(!src.is_connected());
        assert!(!src.status().connected);
        assert_eq!(src.status().description, "not opened yet");
        assert_eq!(src.next_frame().unwrap().seq, 0);
        assert_eq!(*calls.lock().unwrap(), 3);
        // The first successful open is not a reconnect.
        assert_eq!(src.status().reconnects, 0);
    }

    #[test]
    fn bad_frames_are_counted_and_skipped() {
        use Step::*;
        let (f, _) = factory(vec![], vec![Bad, Frame, Bad, Bad, Frame]);
        let mut src = Reconnecting::new(f, backoff(1, 1));
        assert_eq!(src.next_frame().unwrap().seq, 0);
        assert_eq!(src.next_frame().unwrap().seq, 1);
        let st = src.status();
        assert_eq!((st.bad_frames, st.frames, st.reconnects), (3, 2, 0));
        assert!(st.last_error.unwrap().contains("torn buffer"));
    }

    #[test]
    fn end_of_stream_and_fatal_errors_are_returned() {
        use Step::*;
        let (f, _) = factory(vec![], vec![Frame, End]);
        let mut src = Reconnecting::new(f, backoff(1, 1));
        src.next_frame().unwrap();
        assert_eq!(src.next_frame().unwrap_err().kind(), ErrorKind::EndOfStream);

        let (f, calls) = factory(vec![Fatal], vec![]);
        let e = Reconnecting::start(f, backoff(1, 1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Fatal);
        assert_eq!(*calls.lock().unwrap(), 1);

        // Fatal on a later reopen (the device node now belongs to something else): stop.
        let (f, _) = factory(vec![Frame, Fatal], vec![Unplug]);
        let mut src = Reconnecting::new(f, backoff(1, 1));
        assert_eq!(src.next_frame().unwrap_err().kind(), ErrorKind::Fatal);
        assert!(!src.status().connected);
    }
}

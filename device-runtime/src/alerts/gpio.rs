//! The reject line: a pulse on a GPIO output per alert, through the Linux GPIO character device
//! (`/dev/gpiochipN`, feature `gpio`, the gpiocdev crate). The pulse runs on its own thread, so
//! the pipeline only hands over a request; pulses that arrive during a pulse extend nothing and
//! are counted as merged (the PLC sees one reject per pulse window).
//!
//! Without the feature, a config with `[alerts.gpio]` is refused at start with that reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::AlertSink;
use crate::capture::Frame;
use crate::config::GpioConfig;
use crate::state::AlertEntry;

#[derive(Debug, Default)]
pub struct GpioStats {
    pub pulses: AtomicU64,
    pub merged: AtomicU64,
}

#[derive(Debug)]
pub struct RejectLine {
    tx: std::sync::mpsc::SyncSender<()>,
    pub stats: Arc<GpioStats>,
}

impl RejectLine {
    #[cfg(feature = "gpio")]
    pub fn open(cfg: &GpioConfig) -> Result<Self, String> {
        use gpiocdev::line::Value;
        let mut b = gpiocdev::Request::builder();
        b.on_chip(&cfg.chip)
            .with_consumer("firm-inspect reject")
            .with_line(cfg.line)
            .as_output(Value::Inactive);
        if cfg.active_low {
            b.as_active_low();
        }
        let req = b.request().map_err(|e| {
            format!(
                "GPIO {} line {}: {e} (is the chip present and the line free?)",
                cfg.chip.display(),
                cfg.line
            )
        })?;
        let (line, pulse) = (cfg.line, std::time::Duration::from_millis(cfg.pulse_ms));
        Ok(Self::with_pulser(move || {
            let _ = req.set_value(line, Value::Active);
            std::thread::sleep(pulse);
            let _ = req.set_value(line, Value::Inactive);
        }))
    }

    #[cfg(not(feature = "gpio"))]
    pub fn open(cfg: &GpioConfig) -> Result<Self, String> {
        Err(format!(
            "[alerts.gpio] ({} line {}) needs a build with the gpio feature",
            cfg.chip.display(),
            cfg.line
        ))
    }

    /// A reject line driven by `pulse` (one call per pulse, on the pulse thread).
    pub fn with_pulser(mut pulse: impl FnMut() + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let stats = Arc::new(GpioStats::default());
        let st = stats.clone();
        std::thread::Builder::new()
            .name("gpio-reject".into())
            .spawn(move || {
                for () in rx {
                    pulse();
                    st.pulses.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("spawn the GPIO thread");
        Self { tx, stats }
    }
}

impl AlertSink for RejectLine {
    fn name(&self) -> &'static str {
        "gpio"
    }

    fn alert(&mut self, _alert: &mut AlertEntry, _frame: &Frame) -> Result<(), String> {
        match self.tx.try_send(()) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(())) => {
                self.stats.merged.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(())) => {
                Err("the GPIO thread has stopped".into())
            }
        }
    }
}

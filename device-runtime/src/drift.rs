//! The drift sentinel on the device (issue 17, item 3): per frame, the image statistics of the
//! preprocessed square ([`FrameStats`]) and, for a passing frame, its distance go into the
//! bundle's [`DriftMonitor`] (the tests and their numbers: [`firm_shared::drift`]). A warning it
//! raises or clears goes, in this order, to the alert sinks' [`AlertSink::drift`] (the journal
//! first: a `{"type":"drift", ...}` record; then the webhook), to the status page's drift panel
//! and event stream, and to `/metrics` (`firm_drift_active{kind=...}` and the window figures).
//!
//! Preprocessing once: when the bundle carries a `drift` section, [`DriftWatch::score`] takes the
//! frame's test transform itself (a [`FramePreprocessor`] of the bundle's spec), computes the
//! statistics on those bytes, and scores the same bytes with
//! [`Detector::score_preprocessed`], so the frame is resized once, as without the sentinel. That
//! call allocates its two small result vectors per frame (the one allocation the sentinel adds to
//! the hot path); a `Detector` method that lends its own view would remove it. Bundles without
//! the section are scored with [`Detector::score_image`] as before.

use std::time::SystemTime;

use firm_shared::bundle::{Bundle, BundleError};
use firm_shared::detect::{Detector, Embedder, Scored};
use firm_shared::drift::{DriftConfig, DriftMonitor, DriftStatus, DriftWarning, FrameStats};
use firm_shared::preprocess::FramePreprocessor;
use image::RgbImage;
use serde::Serialize;
use tracing::{info, warn};

use crate::alerts::AlertSink;
use crate::capture::Frame;
use crate::state::{Event, Shared, timestamp};

/// What the page and `/metrics` show (in [`crate::state::Live`]).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DriftState {
    /// None when the bundle carries no drift statistics (exported before the sentinel).
    pub status: Option<DriftStatus>,
    /// The warnings in force, as they were raised.
    pub active: Vec<DriftWarning>,
    /// Warnings raised since the runtime started.
    pub raised: u64,
}

/// A warning as the journal and the webhook receive it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DriftRecord<'a> {
    /// Always `drift` (alerts have no `type`; acknowledgements are `ack`).
    #[serde(rename = "type")]
    pub record_type: &'static str,
    /// Capture time of the frame that raised or cleared it, RFC 3339 UTC.
    pub time: String,
    #[serde(flatten)]
    pub warning: &'a DriftWarning,
}

impl<'a> DriftRecord<'a> {
    pub fn new(warning: &'a DriftWarning, time: SystemTime) -> Self {
        Self {
            record_type: "drift",
            time: timestamp(time),
            warning,
        }
    }
}

/// The bundle's drift monitor and the buffers that let it see each frame's test transform.
#[derive(Debug)]
pub struct DriftWatch {
    pre: FramePreprocessor,
    /// The square the detector scores (the transform's bytes, copied once per frame).
    square: RgbImage,
    stats: FrameStats,
    monitor: DriftMonitor,
}

impl DriftWatch {
    /// For `bundle` (None when it has no drift section, or the section cannot be used: logged).
    pub fn new(bundle: &Bundle, cfg: &DriftConfig) -> Option<Self> {
        let m = &bundle.manifest;
        let Some(section) = &m.drift else {
            info!("the bundle carries no drift statistics: the drift sentinel is off");
            return None;
        };
        let made = DriftMonitor::new(section, *cfg).and_then(|monitor| {
            let pre = FramePreprocessor::new(&m.preprocess).map_err(|e| e.to_string())?;
            let side = m.preprocess.size;
            Ok(Self {
                pre,
                square: RgbImage::new(side, side),
                stats: FrameStats::default(),
                monitor,
            })
        });
        match made {
            Ok(w) => {
                info!(
                    "drift sentinel on: window {} frames, margin {}, distance window {} passing \
                     frames, alpha {}",
                    cfg.window, cfg.margin, cfg.distance_window, cfg.alpha
                );
                Some(w)
            }
            Err(e) => {
                warn!(
                    "the bundle's drift statistics cannot be used ({e}): the drift sentinel is off"
                );
                None
            }
        }
    }

    /// Score `frame` with `detector`, keeping the statistics of its test transform for
    /// [`Self::observe`].
    pub fn score<E: Embedder>(
        &mut self,
        detector: &mut Detector<E>,
        frame: &RgbImage,
    ) -> Result<Scored, BundleError> {
        let view = self
            .pre
            .test_transform(frame)
            .map_err(|e| BundleError::Runtime { why: e.to_string() })?;
        self.stats = FrameStats::of(view.pixels(), view.size());
        let square: &mut [u8] = &mut self.square;
        square.copy_from_slice(view.pixels());
        let (mut scored, _) = detector.score_preprocessed(std::slice::from_ref(&self.square))?;
        scored.pop().ok_or_else(|| BundleError::Runtime {
            why: "no score for the frame".into(),
        })
    }

    /// The last scored frame's statistics.
    pub fn stats(&self) -> &FrameStats {
        &self.stats
    }

    /// Feed the last scored frame (its distance when it passed): the monitor's state after it,
    /// and the warnings it raised or cleared.
    pub fn observe(
        &mut self,
        seq: u64,
        passing_distance: Option<f64>,
    ) -> (DriftStatus, &[DriftWarning]) {
        let stats = self.stats;
        self.monitor.observe(seq, &stats, passing_distance);
        (self.monitor.status(), self.monitor.changes())
    }

    pub fn status(&self) -> DriftStatus {
        self.monitor.status()
    }
}

/// Send the warnings one frame raised or cleared to the sinks (journal first), the page's state
/// and event stream; returns how many sinks failed.
pub fn report(
    sh: &Shared,
    sinks: &mut [Box<dyn AlertSink>],
    frame: &Frame,
    changes: &[DriftWarning],
) -> u64 {
    let mut errors = 0;
    for w in changes {
        if w.active {
            warn!("{}", w.message);
        } else {
            info!("{}", w.message);
        }
        let mut failed = 0;
        for s in sinks.iter_mut() {
            if let Err(e) = s.drift(w, frame) {
                warn!("alert sink {}: drift warning: {e}", s.name());
                failed += 1;
            }
        }
        {
            let mut live = sh.live.write().expect("state lock");
            live.counters.sink_errors += failed;
            let d = &mut live.drift;
            d.active.retain(|a| a.kind != w.kind);
            if w.active {
                d.active.push(w.clone());
                d.raised += 1;
            }
        }
        sh.publish(Event::Drift(w.clone()));
        errors += failed;
    }
    errors
}

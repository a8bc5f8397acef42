//! What the running appliance knows about itself, shared by the pipeline (writer) and the web
//! page, API and metrics (readers): counters, rates, latency percentiles, the latest frame and
//! verdict, recent scores and alerts, the bundle and slot in use, the camera state.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Scores kept for the chart when a page loads.
pub const RECENT_SCORES: usize = 300;
/// Alerts kept in memory for the page (the journal keeps all).
pub const RECENT_ALERTS: usize = 100;
/// Latencies the percentiles are computed over.
const LATENCY_WINDOW: usize = 1000;

/// The verdict on one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Verdict {
    pub seq: u64,
    /// Capture time, RFC 3339 UTC with milliseconds.
    pub time: String,
    pub source: String,
    pub distance: f64,
    pub threshold: f64,
    pub defect: bool,
    /// Bank entry most similar to the frame: its thumbnail is at /api/thumbnail/{nearest}.
    pub nearest: usize,
    pub nearest_source: String,
    /// Capture to verdict, milliseconds.
    pub latency_ms: f64,
    /// Where the defect is, for bundles that score patches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat: Option<Heat>,
    /// The overlay entry (a frame an operator marked good) nearer to this frame than any good
    /// image of the bundle: the image score is that entry's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marked_good: Option<u64>,
}

/// The patch score of a frame and its hottest region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Heat {
    /// The anomaly map's maximum.
    pub score: f64,
    /// The patch score the bundle calibrated on good images.
    pub threshold: f64,
    /// The 8-connected region around the map's maximum above halfway from `threshold` to the
    /// maximum (the maximum's neighbourhood when it is below `threshold`), in camera-frame
    /// pixels `[x0, y0, x1, y1]` (right and bottom exclusive).
    pub region: [u32; 4],
}

/// A flagged frame as the page and the API list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AlertEntry {
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Journal sequence number (when the journal took it).
    pub journal_seq: Option<u64>,
    /// Saved frame under /api/flagged/{file} (when saving is on).
    pub image: Option<String>,
    /// The same frame with its heat map blended on, under /api/flagged/{file} (bundles that
    /// score patches, when saving is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_image: Option<String>,
    /// The frame with its heat map, for the sinks that save it (not serialised).
    #[serde(skip)]
    pub overlay: Option<Arc<image::RgbImage>>,
}

/// Server-sent events.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    Verdict(Verdict),
    Alert(AlertEntry),
    Bundle(BundleInfo),
    /// An operator acknowledged alerts.
    Ack(crate::alerts::ledger::Acknowledged),
    /// The drift sentinel raised or cleared a warning ([`crate::drift`]).
    Drift(firm_shared::drift::DriftWarning),
    /// Frames marked good changed ([`crate::overlay`]).
    Overlay(crate::overlay::Status),
}

/// The bundle in use, for the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BundleInfo {
    pub slot: String,
    pub product_class: String,
    pub bundle_version: u64,
    pub created: String,
    pub score: String,
    pub threshold: f64,
    pub operating_point: String,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub calibration: String,
    pub rolled_back: Option<String>,
    /// The backend the encoder runs on (`inference.backend` as resolved) and its device: the
    /// CPU's kernel set and threads, or the GPU adapter's name.
    pub backend: String,
    pub device: String,
}

/// Counters and recent history.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Counters {
    pub frames_captured: u64,
    pub frames_scored: u64,
    pub frames_dropped: u64,
    pub bad_frames: u64,
    pub alerts: u64,
    pub sink_errors: u64,
    pub webhook_dropped: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CameraState {
    pub description: String,
    pub connected: bool,
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// The source has no more frames (a dir: replay without loop).
    pub finished: bool,
}

#[derive(Debug, Default)]
pub struct Live {
    pub counters: Counters,
    pub camera: CameraState,
    pub last: Option<Verdict>,
    /// JPEG of the latest scored frame (downscaled).
    pub last_frame: Option<Arc<Vec<u8>>>,
    pub recent: VecDeque<(u64, f64, bool)>,
    pub alerts: VecDeque<AlertEntry>,
    latencies: VecDeque<f64>,
    fps_window: VecDeque<Instant>,
    pub bundle: Option<BundleInfo>,
    pub slots: Option<crate::slots::Status>,
    pub healthy_since: Option<Instant>,
    /// The drift sentinel's windows and the warnings in force.
    pub drift: crate::drift::DriftState,
}

impl Live {
    pub fn record(&mut self, v: &Verdict) {
        self.counters.frames_scored += 1;
        push_capped(
            &mut self.recent,
            (v.seq, v.distance, v.defect),
            RECENT_SCORES,
        );
        push_capped(&mut self.latencies, v.latency_ms, LATENCY_WINDOW);
        let now = Instant::now();
        push_capped(&mut self.fps_window, now, 64);
        self.last = Some(v.clone());
    }

    pub fn add_alert(&mut self, a: AlertEntry) {
        self.counters.alerts += 1;
        push_capped(&mut self.alerts, a, RECENT_ALERTS);
    }

    /// Frames scored per second over the last (up to 64) frames.
    pub fn fps(&self) -> f64 {
        match (self.fps_window.front(), self.fps_window.back()) {
            (Some(a), Some(b)) if self.fps_window.len() >= 2 => {
                let dt = b.duration_since(*a).as_secs_f64();
                if dt > 0.0 {
                    (self.fps_window.len() - 1) as f64 / dt
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }

    /// The `q` quantile (0..=1) of recent latencies, nearest rank.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.latencies.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

/// Everything shared between the pipeline and the web server.
#[derive(Debug)]
pub struct Shared {
    pub site: String,
    pub started: SystemTime,
    pub live: RwLock<Live>,
    pub events: broadcast::Sender<Event>,
    /// Bank thumbnails (PNG-encoded on request) and their sources.
    pub thumbnails: RwLock<Vec<image::RgbImage>>,
    pub thumbnail_sources: RwLock<Vec<String>>,
    /// A bundle flashed over HTTP, for the inference thread to switch to.
    pub pending_bundle: Mutex<Option<crate::slots::Loaded>>,
    /// Set when the runtime stops: open event streams end, so the server can shut down.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// Progress of the capture and inference threads (each writes its own counter); read by
    /// the systemd watchdog ([`crate::watchdog`]).
    pub heartbeat: Arc<crate::watchdog::Heartbeat>,
    /// The journal's alerts and their acknowledgements (set once the journal is open).
    pub ledger: OnceLock<Arc<crate::alerts::ledger::Ledger>>,
    /// Frames marked good: requests for the inference thread and the overlay in force.
    pub overlay: crate::overlay::Desk,
}

impl Shared {
    pub fn new(site: &str) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            site: site.to_string(),
            started: SystemTime::now(),
            live: RwLock::new(Live::default()),
            events,
            thumbnails: RwLock::new(Vec::new()),
            thumbnail_sources: RwLock::new(Vec::new()),
            pending_bundle: Mutex::new(None),
            closing: tokio::sync::watch::Sender::new(false),
            heartbeat: Arc::default(),
            ledger: OnceLock::new(),
            overlay: Default::default(),
        })
    }

    /// Send an event to every connected page (none connected is fine).
    pub fn publish(&self, e: Event) {
        let _ = self.events.send(e);
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(seq: u64, latency_ms: f64) -> Verdict {
        Verdict {
            seq,
            time: String::new(),
            source: String::new(),
            distance: 0.1,
            threshold: 0.2,
            defect: false,
            nearest: 0,
            nearest_source: String::new(),
            latency_ms,
            heat: None,
            marked_good: None,
        }
    }

    #[test]
    fn percentiles_and_caps() {
        let mut l = Live::default();
        assert_eq!(l.latency_quantile(0.5), None);
        for i in 1..=100 {
            l.record(&verdict(i, i as f64));
        }
        assert_eq!(l.latency_quantile(0.5), Some(50.0));
        assert_eq!(l.latency_quantile(0.99), Some(99.0));
        assert_eq!(l.latency_quantile(1.0), Some(100.0));
        assert_eq!(l.counters.frames_scored, 100);
        for i in 0..400 {
            l.record(&verdict(1000 + i, 1.0));
        }
        assert_eq!(l.recent.len(), RECENT_SCORES);
        assert_eq!(l.recent.back().unwrap().0, 1399);
    }
}

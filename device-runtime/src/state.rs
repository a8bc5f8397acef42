//! What the running appliance knows about itself, shared by the pipeline (writer) and the web
//! page, API and metrics (readers): counters, rates, latency percentiles, the latest frame and
//! verdict, recent scores and alerts, the bundle and slot in use, the camera state, and whether
//! the state filesystem has room ([`StateFs`]).

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
    /// The capture thread panicked (a driver or decoder bug): no frame comes any more, and the
    /// run is ending with an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panicked: Option<String>,
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

/// The running bundle's bank thumbnails: its `thumbnails` buffer (`[n, side, side, 3]` RGB),
/// moved out of the bundle rather than copied (with a large bank they are most of its size).
#[derive(Debug, Default)]
pub struct Thumbnails {
    pub side: u32,
    pub pixels: Vec<u8>,
}

impl Thumbnails {
    /// Entry `i`'s thumbnail.
    pub fn get(&self, i: usize) -> Option<image::RgbImage> {
        firm_shared::bundle::bank::thumbnail_at(&self.pixels, self.side, i)
    }
}

/// Everything shared between the pipeline and the web server.
#[derive(Debug)]
pub struct Shared {
    pub site: String,
    pub started: SystemTime,
    pub live: RwLock<Live>,
    pub events: broadcast::Sender<Event>,
    /// Bank thumbnails (PNG-encoded on request) and their sources.
    pub thumbnails: RwLock<Thumbnails>,
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
    /// Whether the state filesystem takes writes (journal, flagged frames, boot counter).
    pub state_fs: Arc<StateFs>,
}

impl Shared {
    pub fn new(site: &str) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            site: site.to_string(),
            started: SystemTime::now(),
            live: RwLock::new(Live::default()),
            events,
            thumbnails: RwLock::new(Thumbnails::default()),
            thumbnail_sources: RwLock::new(Vec::new()),
            pending_bundle: Mutex::new(None),
            closing: tokio::sync::watch::Sender::new(false),
            heartbeat: Arc::default(),
            ledger: OnceLock::new(),
            overlay: Default::default(),
            state_fs: Arc::default(),
        })
    }

    /// Send an event to every connected page (none connected is fine).
    pub fn publish(&self, e: Event) {
        let _ = self.events.send(e);
    }
}

/// The state filesystem as the writers on it find it. A full filesystem (ENOSPC, or a quota:
/// EDQUOT) must not stop the device: frames are still scored, and each writer reports its
/// failures here instead of logging one per frame. The device then raises one error: logged
/// once when the first writer fails, shown as `state-fs` in `/api/status` and as the
/// `firm_state_fs_full` gauge in `/metrics`, and cleared (logged once more) when every writer
/// that failed has written again.
#[derive(Debug, Default)]
pub struct StateFs {
    inner: Mutex<StateFsStatus>,
}

/// What `/api/status` shows as `state-fs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StateFsStatus {
    /// A writer's last write failed for want of space.
    pub full: bool,
    /// While full: the first failure (writer, file and reason) and what it costs.
    pub error: Option<String>,
    /// While full: when the first failure happened (RFC 3339).
    pub since: Option<String>,
    /// The writers whose last write failed for want of space (`journal`, `flagged-frames`).
    pub failing: std::collections::BTreeSet<&'static str>,
    /// Writes lost for want of space since the start (alerts not journaled, frames not saved).
    pub lost_writes: u64,
    /// Set when this start could not be counted (the boot counter is not written): crash-loop
    /// rollback is degraded until the next start that counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_loop_protection: Option<String>,
    /// Set when this start rolled back to the other slot but could not record the switch
    /// (`active` is not written): the slot rolled back to runs, and every start rolls back
    /// again until one records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_not_recorded: Option<String>,
    /// Set while the device secret cannot be created (a first start on a full filesystem): the
    /// journal runs without its HMAC checkpoint. Cleared when an append creates it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_checkpoint: Option<String>,
}

impl StateFs {
    /// The error sinks return for a write lost to a full filesystem: the pipeline counts it
    /// without logging it per frame (this struct logged the cause once).
    pub const FULL: &'static str = "the state filesystem is full (see state-fs in /api/status)";

    /// Whether `e` says the filesystem (or the quota) is full.
    pub fn is_full(e: &std::io::Error) -> bool {
        matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    }

    /// Whether `e`, or an error it was caused by, says the filesystem is full.
    pub fn caused_by_full(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if c.downcast_ref::<std::io::Error>()
                .is_some_and(Self::is_full)
            {
                return true;
            }
            cause = c.source();
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateFsStatus> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `writer` lost a write for want of space (`why` names the file and the error). Logged
    /// only when the filesystem was not already known to be full.
    pub fn write_failed(&self, writer: &'static str, why: &str) {
        let mut s = self.lock();
        s.lost_writes += 1;
        s.failing.insert(writer);
        if !s.full {
            s.full = true;
            let error = format!(
                "the state filesystem is full ({writer}: {why}): frames are still scored, but \
                 alerts are not journaled and flagged frames not saved until space is freed"
            );
            tracing::error!("{error}");
            s.error = Some(error);
            s.since = Some(timestamp(SystemTime::now()));
        }
    }

    /// `writer` wrote again. When no writer is failing any more, the error clears (logged).
    pub fn wrote(&self, writer: &'static str) {
        let mut s = self.lock();
        if !s.full || !s.failing.remove(writer) || !s.failing.is_empty() {
            return;
        }
        s.full = false;
        s.error = None;
        s.since = None;
        tracing::warn!(
            lost_writes = s.lost_writes,
            "the state filesystem takes writes again: alerts are journaled and frames saved \
             again ({} writes were lost while it was full)",
            s.lost_writes
        );
    }

    /// This start could not be counted: the crash-loop rollback cannot see it.
    pub fn boot_counter_failed(&self, why: String) {
        self.lock().crash_loop_protection = Some(why);
    }

    /// This start rolled back but could not record the switch ([`crate::slots::Loaded`]'s
    /// `persist_error`, which `load_active` logged).
    pub fn rollback_not_recorded(&self, why: String) {
        self.lock().rollback_not_recorded = Some(why);
    }

    /// The journal runs without its checkpoint: the device secret could not be created (the
    /// caller logged why).
    pub fn journal_checkpoint_failed(&self, why: String) {
        self.lock().journal_checkpoint = Some(why);
    }

    /// The journal is sealed again (the device secret now exists); logged when it was not.
    pub fn journal_checkpoint_resumed(&self) {
        if self.lock().journal_checkpoint.take().is_some() {
            tracing::warn!(
                "the device secret is created: the journal's checkpoint is written again"
            );
        }
    }

    /// Whether the journal runs without its checkpoint (read before each append: cheap).
    pub fn journal_checkpoint_pending(&self) -> bool {
        self.lock().journal_checkpoint.is_some()
    }

    pub fn is_full_now(&self) -> bool {
        self.lock().full
    }

    pub fn status(&self) -> StateFsStatus {
        self.lock().clone()
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
    fn a_full_state_fs_is_one_error_until_every_writer_writes_again() {
        let full = std::io::Error::from_raw_os_error(28);
        assert!(StateFs::is_full(&full), "{full}");
        assert!(!StateFs::is_full(&std::io::Error::from_raw_os_error(5)));
        let wrapped = crate::alerts::journal::JournalError::Io {
            path: "j".into(),
            source: full,
        };
        assert!(StateFs::caused_by_full(&wrapped));
        let fs = StateFs::default();
        fs.wrote("journal");
        assert!(!fs.is_full_now());
        fs.write_failed("journal", "journal-000001.jsonl: No space left on device");
        let first = fs.status();
        assert!(first.full && first.error.as_ref().unwrap().contains("journal-000001"));
        fs.write_failed("flagged-frames", "x.png: No space left on device");
        fs.write_failed("journal", "again");
        let s = fs.status();
        assert_eq!(
            (s.error, s.since),
            (first.error, first.since),
            "the first cause stays"
        );
        assert_eq!(s.lost_writes, 3);
        // The journal writes again; frames still cannot be saved: still full.
        fs.wrote("journal");
        assert!(fs.is_full_now());
        fs.wrote("flagged-frames");
        let s = fs.status();
        assert!(!s.full && s.error.is_none() && s.failing.is_empty());
        assert_eq!(s.lost_writes, 3, "the count of lost writes stays");
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

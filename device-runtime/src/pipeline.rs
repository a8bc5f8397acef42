//! The frame pipeline (DESIGN section 5): a capture thread hands frames to the inference thread
//! through a two-frame [`Mailbox`] (newest wins, drops counted, capture never waits); the
//! inference thread scores each frame with the bundle's [`Detector`], records the verdict in the
//! shared state, publishes it to the web page and, for a flagged frame, runs the alert sinks in
//! order (journal first, so every alert is durable before anything else reports it). A sink that
//! fails is logged and counted; it never stops the pipeline.
//!
//! Both threads beat [`Shared::heartbeat`] once per turn of their loop; the systemd watchdog
//! ([`crate::watchdog`]) is fed only while both do.
//!
//! A thread that panics ends the run: the inference thread's panic comes back from
//! [`Pipeline::join_checked`]; the capture thread catches its own (a driver or decoder bug),
//! keeps the message for [`Pipeline::capture_panic`] and closes the mailbox, so inference stops
//! instead of polling an empty mailbox forever while the web server looks healthy. `run` exits
//! non-zero on either.
//!
//! A bundle flashed while running ([`crate::state::Shared::pending_bundle`]) is picked up between
//! two frames.
//!
//! When the bundle carries drift statistics, each frame's test transform is taken once by the
//! drift sentinel ([`crate::drift`]), which scores those bytes and watches their statistics and
//! the passing distances; its warnings go to the same sinks (journal first), the page and
//! `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use firm_shared::bundle::Bundle;
use firm_shared::detect::{Detector, Embedder};
use tracing::{info, warn};

use crate::alerts::AlertSink;
use crate::capture::{ErrorKind, Frame, FrameSource};
use crate::config::InferenceConfig;
use crate::drift::DriftWatch;
use crate::mailbox::{CloseOnDrop, Mailbox};
use crate::slots::Loaded;
use crate::state::{AlertEntry, BundleInfo, Event, Heat, Shared, Verdict, timestamp};
use firm_shared::score::heat;
use firm_shared::score::map::RegionScratch;
use image::RgbImage;

/// Opacity of the heat map at its hottest (blended over the live frame and saved alerts).
const HEAT_ALPHA: f32 = 0.6;

/// Frames waiting between capture and inference.
pub const QUEUE: usize = 2;
/// The live frame on the page is re-encoded at most this often.
const LIVE_FRAME_EVERY: Duration = Duration::from_millis(200);
/// Width of the live frame on the page.
const LIVE_FRAME_WIDTH: u32 = 480;

/// The distance threshold a bundle runs with under `cfg`: the configured override, else the
/// named operating point of the bundle.
pub fn threshold(bundle: &Bundle, cfg: &InferenceConfig) -> Result<(f64, String), String> {
    if let Some(t) = cfg.threshold {
        return Ok((t, "configured".into()));
    }
    let points = &bundle.manifest.threshold.operating_points;
    points
        .get(&cfg.operating_point)
        .map(|&t| (t, cfg.operating_point.clone()))
        .ok_or_else(|| {
            format!(
                "inference.operating-point `{}` is not in the bundle; it has: {}",
                cfg.operating_point,
                points.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
}

/// Page-facing description of a loaded bundle.
pub fn bundle_info(
    l: &Loaded,
    threshold: f64,
    operating_point: &str,
    embedder: &dyn Embedder,
) -> BundleInfo {
    let m = &l.bundle.manifest;
    BundleInfo {
        slot: l.slot.to_string(),
        product_class: m.product_class.clone(),
        bundle_version: m.bundle_version,
        created: m.created.clone(),
        score: m.score.spec.to_string(),
        threshold,
        operating_point: operating_point.to_string(),
        metrics: m.provenance.metrics.clone(),
        calibration: m.threshold.calibration.summary(),
        rolled_back: l.rolled_back.clone(),
        backend: embedder.name().to_string(),
        device: embedder.device(),
    }
}

/// The running threads.
#[derive(Debug)]
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    capture: Option<JoinHandle<()>>,
    inference: Option<JoinHandle<()>>,
    /// The capture thread's panic message, set before it closes the mailbox.
    capture_panic: Arc<OnceLock<String>>,
}

/// The message a panic was raised with.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl Pipeline {
    /// Ask both threads to stop (the capture thread stops after its current frame).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Wait until inference has finished (the source ended and every frame was scored, or
    /// [`Self::stop`] was called).
    pub fn join(mut self) {
        if let Some(t) = self.inference.take() {
            let _ = t.join();
        }
        self.stop();
        // The capture thread may be blocked in a camera read; it is not waited for.
        drop(self.capture.take());
    }

    /// Wait for the inference thread as [`Self::join`] does; `Err` with the panic's message
    /// when it panicked (nothing is scored any more: the process must exit non-zero so that
    /// its supervisor restarts it).
    pub fn join_checked(mut self) -> Result<(), String> {
        let r = match self.inference.take() {
            Some(t) => t.join().map_err(|p| panic_message(&*p)),
            None => Ok(()),
        };
        self.join();
        r
    }

    pub fn is_finished(&self) -> bool {
        self.inference.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The capture thread's panic message, when it panicked (no frame comes any more: the
    /// process must exit non-zero, as for an inference panic). An ordinary end of the source
    /// is not a panic.
    pub fn capture_panic(&self) -> Option<String> {
        self.capture_panic.get().cloned()
    }
}

struct Scorer {
    detector: Detector<Box<dyn Embedder + Send>>,
    threshold: f64,
    sources: Vec<String>,
    /// The drift sentinel, when the bundle carries its statistics.
    drift: Option<DriftWatch>,
    /// The patch score's threshold and colour scale, when the bundle scores patches.
    patch: Option<firm_shared::bundle::manifest::PatchSection>,
    regions: RegionScratch,
    /// Frames marked good on this device for this bundle.
    overlay: crate::overlay::Active,
}

impl Scorer {
    /// The hottest region of the last frame's map, in frame pixels.
    fn heat(&mut self, w: u32, h: u32, patch_score: Option<f64>) -> Option<Heat> {
        let p = self.patch.as_ref()?;
        let map = self.detector.map()?;
        let score = patch_score?;
        let (bx0, by0, bx1, by1) = map.hottest_region(p.threshold, &mut self.regions);
        let (wx, wy, ww, wh) = self.detector.preprocess.input_window(w, h).ok()?;
        let (sx, sy) = (ww / map.w as f64, wh / map.h as f64);
        let clamp = |v: f64, hi: u32| (v.max(0.0) as u32).min(hi);
        Some(Heat {
            score,
            threshold: p.threshold as f64,
            region: [
                clamp((wx + bx0 as f64 * sx).floor(), w),
                clamp((wy + by0 as f64 * sy).floor(), h),
                clamp((wx + bx1 as f64 * sx).ceil(), w),
                clamp((wy + by1 as f64 * sy).ceil(), h),
            ],
        })
    }

    /// `img` (the frame, or the frame scaled by `scale`) with the last map blended over the
    /// part of the frame the model saw.
    fn overlay(&self, img: &RgbImage, frame: (u32, u32), scale: f64) -> Option<RgbImage> {
        let p = self.patch.as_ref()?;
        let map = self.detector.map()?;
        let (wx, wy, ww, wh) = self
            .detector
            .preprocess
            .input_window(frame.0, frame.1)
            .ok()?;
        let x0 = ((wx * scale).round() as u32).min(img.width());
        let y0 = ((wy * scale).round() as u32).min(img.height());
        let cw = ((ww * scale).round() as u32).clamp(1, img.width() - x0.min(img.width() - 1));
        let ch = ((wh * scale).round() as u32).clamp(1, img.height() - y0.min(img.height() - 1));
        let sub = image::imageops::crop_imm(img, x0, y0, cw, ch).to_image();
        let blended = heat::overlay(&sub, map, p.low, p.high, HEAT_ALPHA);
        let mut out = img.clone();
        image::imageops::replace(&mut out, &blended, x0 as i64, y0 as i64);
        Some(out)
    }
}

impl Scorer {
    /// The scorer of `l`, whose thumbnails it moves to `shared` (the rest of the bundle is
    /// not needed once the detector is built: the caller drops it).
    fn new(shared: &Shared, l: &mut Loaded, cfg: &InferenceConfig) -> Result<Self, String> {
        let (threshold, point) = threshold(&l.bundle, cfg)?;
        let mut detector = Detector::on(&l.bundle, cfg.backend).map_err(|e| e.to_string())?;
        let bank = &mut l.bundle.bank;
        *shared.thumbnails.write().expect("state lock") = crate::state::Thumbnails {
            side: bank.thumbnail_size,
            pixels: std::mem::take(&mut bank.thumbnails),
        };
        let sources = l.bundle.manifest.bank.sources.clone();
        *shared.thumbnail_sources.write().expect("state lock") = sources.clone();
        let info = bundle_info(l, threshold, &point, detector.embedder());
        let drift = DriftWatch::new(&l.bundle, &cfg.drift);
        let patch = l.bundle.manifest.patch.clone();
        let overlay = crate::overlay::Active::attach(
            shared,
            &mut detector,
            &l.summary.sha256,
            patch.as_ref(),
            threshold,
        );
        {
            let mut live = shared.live.write().expect("state lock");
            live.bundle = Some(info.clone());
            live.drift.status = drift.as_ref().map(DriftWatch::status);
            live.drift.active.clear();
        }
        shared.publish(Event::Bundle(info));
        Ok(Self {
            detector,
            threshold,
            sources,
            drift,
            patch,
            regions: RegionScratch::default(),
            overlay,
        })
    }
}

/// Start capture and inference threads.
pub fn start(
    shared: Arc<Shared>,
    mut source: Box<dyn FrameSource>,
    mut loaded: Loaded,
    cfg: InferenceConfig,
    mut sinks: Vec<Box<dyn AlertSink>>,
) -> Result<Pipeline, String> {
    // Inference runs inside its own rayon pool: the kernels split each op over its threads, and
    // joins from a pool's own thread allocate nothing per frame.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads.unwrap_or(0))
        .thread_name(|i| format!("inference-{i}"))
        .build()
        .map_err(|e| format!("cannot start the inference threads: {e}"))?;
    let mut scorer = pool.install(|| Scorer::new(&shared, &mut loaded, &cfg))?;
    info!(
        "running bundle {} (version {}) from slot {}, threshold {:.4e}",
        loaded.bundle.manifest.product_class,
        loaded.bundle.manifest.bundle_version,
        loaded.slot,
        scorer.threshold
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mailbox: Arc<Mailbox<Frame, QUEUE>> = Arc::new(Mailbox::new());

    let (sh, mb, st) = (shared.clone(), mailbox.clone(), stop.clone());
    let capture_panic: Arc<OnceLock<String>> = Arc::default();
    let died = capture_panic.clone();
    // Fault test hook: `FIRM_TEST_CAPTURE_PANIC_AT_FRAME=N` panics the capture thread when the
    // source delivers frame N, as a driver or decoder bug would. It has no other effect.
    let capture_panic_at: Option<u64> = std::env::var("FIRM_TEST_CAPTURE_PANIC_AT_FRAME")
        .ok()
        .and_then(|v| v.parse().ok());
    let capture = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || {
            // Dropped last, after the panic (if any) is recorded: whoever sees the mailbox
            // closed can then tell a dead capture thread from a finished source.
            let _closed = CloseOnDrop(mb.clone());
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                capture_loop(&sh, &mut *source, &mb, &st, capture_panic_at);
            }));
            if let Err(p) = caught {
                let why = panic_message(&*p);
                // The lock may be poisoned by the panic; the state is still worth showing.
                let mut live = sh.live.write().unwrap_or_else(|e| e.into_inner());
                live.camera.connected = false;
                live.camera.last_error = Some(format!("the capture thread panicked: {why}"));
                live.camera.panicked = Some(why.clone());
                drop(live);
                let _ = died.set(why);
            }
        })
        .map_err(|e| format!("cannot start the capture thread: {e}"))?;

    let (sh, mb, st) = (shared, mailbox, stop.clone());
    let inference = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            // Fault test hook: `FIRM_TEST_PANIC_AT_FRAME=N` panics this thread when it takes
            // frame N, as a kernel bug would. It has no other effect.
            let panic_at: Option<u64> = std::env::var("FIRM_TEST_PANIC_AT_FRAME")
                .ok()
                .and_then(|v| v.parse().ok());
            pool.install(|| {
                let mut last_live = Instant::now() - LIVE_FRAME_EVERY;
                loop {
                    // One beat per turn: a frame scored or an idle poll (see crate::watchdog).
                    sh.heartbeat.beat_inference();
                    let next = sh.pending_bundle.lock().expect("state lock").take();
                    if let Some(mut next) = next {
                        match Scorer::new(&sh, &mut next, &cfg) {
                            Ok(s) => scorer = s,
                            Err(e) => warn!("the flashed bundle cannot run here: {e}"),
                        }
                    }
                    if sh.overlay.has_requests() {
                        scorer.overlay.serve(&sh, &mut scorer.detector);
                    }
                    let Some(frame) = mb.pop(Duration::from_millis(100)) else {
                        if mb.is_finished() || st.load(Ordering::SeqCst) {
                            break;
                        }
                        continue;
                    };
                    if panic_at == Some(frame.seq) {
                        panic!("FIRM_TEST_PANIC_AT_FRAME: frame {}", frame.seq);
                    }
                    process(&sh, &mut scorer, &mut sinks, &frame, &mut last_live);
                }
                info!("inference finished");
            })
        })
        .map_err(|e| format!("cannot start the inference thread: {e}"))?;
    Ok(Pipeline {
        stop,
        capture: Some(capture),
        inference: Some(inference),
        capture_panic,
    })
}

/// The capture thread's loop: frames into the mailbox until the source ends or `stop`.
fn capture_loop(
    sh: &Shared,
    source: &mut dyn FrameSource,
    mb: &Mailbox<Frame, QUEUE>,
    stop: &AtomicBool,
    panic_at: Option<u64>,
) {
    while !stop.load(Ordering::SeqCst) {
        let r = source.next_frame();
        if let Ok(f) = &r
            && panic_at == Some(f.seq)
        {
            panic!("FIRM_TEST_CAPTURE_PANIC_AT_FRAME: frame {}", f.seq);
        }
        sh.heartbeat.beat_capture();
        let status = source.status();
        let mut live = sh.live.write().expect("state lock");
        live.camera.description = status.description.clone();
        live.camera.connected = status.connected;
        live.camera.reconnects = status.reconnects;
        live.camera.last_error = status.last_error.clone();
        live.counters.bad_frames = status.bad_frames;
        match r {
            Ok(frame) => {
                live.counters.frames_captured += 1;
                drop(live);
                if mb.push(frame) {
                    sh.live.write().expect("state lock").counters.frames_dropped += 1;
                }
            }
            Err(e) => match e.kind() {
                ErrorKind::BadFrame => warn!("skipped a frame: {e}"),
                ErrorKind::Disconnected => {
                    live.camera.connected = false;
                    live.camera.last_error = Some(e.to_string());
                    drop(live);
                    std::thread::sleep(Duration::from_millis(200));
                }
                _ => {
                    if e.kind() != ErrorKind::EndOfStream {
                        warn!("capture stopped: {e}");
                        live.camera.last_error = Some(e.to_string());
                    }
                    live.camera.finished = true;
                    break;
                }
            },
        }
    }
}

fn process(
    sh: &Shared,
    scorer: &mut Scorer,
    sinks: &mut [Box<dyn AlertSink>],
    frame: &Frame,
    last_live: &mut Instant,
) {
    let scored = match &mut scorer.drift {
        Some(d) => d.score(&mut scorer.detector, &frame.image),
        None => scorer.detector.score_image(&frame.image),
    };
    let scored = match scored {
        Ok(s) => s,
        Err(e) => {
            warn!("frame {} not scored: {e}", frame.seq);
            sh.live.write().expect("state lock").counters.bad_frames += 1;
            return;
        }
    };
    let latency_ms = SystemTime::now()
        .duration_since(frame.time)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let v = Verdict {
        seq: frame.seq,
        time: timestamp(frame.time),
        source: frame.source.clone(),
        distance: scored.distance,
        threshold: scorer.threshold,
        defect: scored.distance > scorer.threshold,
        nearest: scored.nearest,
        nearest_source: scorer
            .sources
            .get(scored.nearest)
            .cloned()
            .unwrap_or_default(),
        latency_ms,
        heat: scorer.heat(frame.image.width(), frame.image.height(), scored.patch),
        marked_good: scored
            .overlay
            .and_then(|i| scorer.overlay.overlay.entries.get(i))
            .map(|e| e.id),
    };
    let live_jpeg = (last_live.elapsed() >= LIVE_FRAME_EVERY || v.defect).then(|| {
        *last_live = Instant::now();
        let (small, scale) = live_image(&frame.image);
        let dims = frame.image.dimensions();
        let shown = scorer.overlay(&small, dims, scale).unwrap_or(small);
        encode_jpeg(&shown)
    });
    let passing = (!v.defect).then_some(v.distance);
    let drift = scorer.drift.as_mut().map(|d| d.observe(v.seq, passing));
    {
        let mut live = sh.live.write().expect("state lock");
        live.record(&v);
        if let Some(Some(j)) = live_jpeg {
            live.last_frame = Some(Arc::new(j));
        }
        if let Some((status, _)) = drift {
            live.drift.status = Some(status);
        }
    }
    sh.publish(Event::Verdict(v.clone()));
    if let Some((_, changes)) = drift.filter(|(_, c)| !c.is_empty()) {
        crate::drift::report(sh, sinks, frame, changes);
    }
    if !v.defect {
        return;
    }
    let overlay = scorer
        .overlay(&frame.image, frame.image.dimensions(), 1.0)
        .map(Arc::new);
    let mut alert = AlertEntry {
        verdict: v,
        journal_seq: None,
        image: None,
        heat_image: None,
        overlay,
    };
    let mut errors = 0;
    for s in sinks.iter_mut() {
        if let Err(e) = s.alert(&mut alert, frame) {
            // A full state filesystem was logged once by StateFs; counted, not logged per frame.
            if e != crate::state::StateFs::FULL {
                warn!("alert sink {}: {e}", s.name());
            }
            errors += 1;
        }
    }
    {
        let mut live = sh.live.write().expect("state lock");
        live.counters.sink_errors += errors;
        live.add_alert(alert.clone());
    }
    sh.publish(Event::Alert(alert));
}

/// The frame downscaled to the page's width, and the scale applied.
fn live_image(img: &RgbImage) -> (RgbImage, f64) {
    let (w, h) = img.dimensions();
    if w > LIVE_FRAME_WIDTH {
        let nh = (h as u64 * LIVE_FRAME_WIDTH as u64 / w as u64).max(1) as u32;
        let small = image::imageops::resize(
            img,
            LIVE_FRAME_WIDTH,
            nh,
            image::imageops::FilterType::Triangle,
        );
        (small, LIVE_FRAME_WIDTH as f64 / w as f64)
    } else {
        (img.clone(), 1.0)
    }
}

fn encode_jpeg(img: &RgbImage) -> Option<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .ok()?;
    Some(out.into_inner())
}

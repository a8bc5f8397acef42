//! The drift sentinel end to end (issue 17, item 3): a bundle whose `drift` section holds the
//! statistics of generated good "parts", frames replayed by a `dir:` source through the
//! pipeline, warnings read back from the hash-chained journal, the status API and `/metrics`.
//!
//! - Darkened (x 0.55), blurred (5 x 5 box) and colour-shifted (R + 40, B - 40) frames, after
//!   [`GOOD_FIRST`] good ones, each raise their warning (brightness, focus, red) within
//!   [`N`] = 24 frames of the shift. The default window of 32 frames needs 16 (darker, blurrier)
//!   or 17 (redder) shifted frames to move its lower median; the rest is slack for frames the
//!   pipeline may drop.
//! - [`M`] = 200 fresh good frames (another seed) raise none, over the image statistics and the
//!   distance test (its window of 100 passing frames fills after 100).
//!
//! The frames are paced at 200 per second; the four replays run as parallel tests, about a
//! second each.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use device_runtime::alerts::AlertSink;
use device_runtime::alerts::journal;
use device_runtime::alerts::journal_sink::JournalSink;
use device_runtime::capture::{self, CaptureOptions, SourceSpec};
use device_runtime::config::InferenceConfig;
use device_runtime::slots::Slots;
use device_runtime::state::Shared;
use device_runtime::web::{AppState, app};
use ed25519_dalek::SigningKey;
use firm_shared::bundle::Limits;
use firm_shared::detect::Detector;
use firm_shared::detect::synthetic::{SyntheticSpec, random_bundle};
use firm_shared::drift::{DriftKind, DriftSection, DriftWarning, Evidence, FrameStats};
use firm_shared::model::{EncoderConfig, Stem};
use firm_shared::preprocess::FramePreprocessor;
use http_body_util::BodyExt;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tower::ServiceExt;

/// A shift raises its warning within this many frames of its first shifted frame.
const N: u64 = 24;
/// Fresh good frames that must raise no warning.
const M: usize = 200;
/// Good frames before a shift (the window is full of good frames when it starts).
const GOOD_FIRST: usize = 40;
/// Side of the frames on disk; the bundle's input is 32 px (resized to 36, centre crop 32).
const FRAME: u32 = 48;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

#[derive(Debug, Clone, Copy)]
enum Shift {
    Dark,
    Blur,
    Colour,
}

/// A good part: a textured disc on a darker background, jittered in position, gain and noise
/// from frame to frame.
fn part(rng: &mut ChaCha8Rng) -> RgbImage {
    let (dx, dy) = (rng.random_range(-2i32..=2), rng.random_range(-2i32..=2));
    let gain: f32 = rng.random_range(0.97..1.03);
    let c = FRAME as i32 / 2;
    RgbImage::from_fn(FRAME, FRAME, |x, y| {
        let (u, v) = (x as i32 - c - dx, y as i32 - c - dy);
        let inside = u * u + v * v < 17 * 17;
        // A 3-pixel checker on the part: the detail focus measures.
        let tex = if ((u + 60) / 3 + (v + 60) / 3) % 2 == 0 {
            40.0
        } else {
            -40.0
        };
        let base: [f32; 3] = if inside {
            [150.0 + tex, 130.0 + tex, 110.0 + tex]
        } else {
            [60.0, 70.0, 80.0]
        };
        let noise: f32 = rng.random_range(-4.0..4.0);
        Rgb(base.map(|b| (b * gain + noise).clamp(0.0, 255.0) as u8))
    })
}

fn shifted(img: &RgbImage, shift: Shift) -> RgbImage {
    match shift {
        Shift::Dark => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            Rgb(img.get_pixel(x, y).0.map(|v| (v as f32 * 0.55) as u8))
        }),
        Shift::Colour => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let [r, g, b] = img.get_pixel(x, y).0;
            Rgb([r.saturating_add(40), g, b.saturating_sub(40)])
        }),
        // 5 x 5 box blur, clamped at the edges.
        Shift::Blur => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let (w, h) = (img.width() as i32, img.height() as i32);
            let mut sum = [0u32; 3];
            for dy in -2..=2 {
                for dx in -2..=2 {
                    let px = img.get_pixel(
                        (x as i32 + dx).clamp(0, w - 1) as u32,
                        (y as i32 + dy).clamp(0, h - 1) as u32,
                    );
                    for c in 0..3 {
                        sum[c] += px[c] as u32;
                    }
                }
            }
            Rgb(sum.map(|s| (s / 25) as u8))
        }),
    }
}

/// The signed bundle: random weights (CIFAR stem at 1/16 width, 32 px), and a drift section
/// computed as the exporter computes it: the statistics of 120 good parts after the bundle's
/// test transform, the distances of 60 held-out good parts.
fn bundle_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut b = random_bundle(&SyntheticSpec {
            encoder: EncoderConfig::new(Stem::Cifar, 0.0625),
            size: 32,
            score: "cos_1".parse().unwrap(),
            int8_activations: true,
            bank: 8,
            seed: 5,
        })
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut pre = FramePreprocessor::new(&b.manifest.preprocess).unwrap();
        let train: Vec<FrameStats> = (0..120)
            .map(|_| {
                let img = part(&mut rng);
                let view = pre.test_transform(&img).unwrap();
                FrameStats::of(view.pixels(), view.size())
            })
            .collect();
        let mut det = Detector::cpu(&b).unwrap();
        let cal: Vec<f64> = (0..60)
            .map(|_| det.score_image(&part(&mut rng)).unwrap().distance)
            .collect();
        b.manifest.drift = Some(DriftSection::new(&train, &cal, 0.9).unwrap());
        b.to_bytes(&key(), &Limits::default()).unwrap()
    })
}

/// What one replay left behind.
struct Outcome {
    /// Drift records in the journal, in order.
    warnings: Vec<DriftWarning>,
    scored: u64,
    dropped: u64,
    status: serde_json::Value,
    metrics: String,
}

/// Replay `frames` from a `dir:` source through the pipeline with the journal as its sink.
fn replay(dir: &Path, frames: &[RgbImage]) -> Outcome {
    let slots = Slots::new(&dir.join("slots"), vec![key().verifying_key()], 64 << 20).unwrap();
    let (_, loaded) = slots
        .flash(&firm_e2e::bundle_file(bundle_bytes()), false)
        .unwrap();
    let folder = dir.join("frames");
    std::fs::create_dir_all(&folder).unwrap();
    for (i, f) in frames.iter().enumerate() {
        f.save(folder.join(format!("{i:04}.png"))).unwrap();
    }
    let spec: SourceSpec = format!("dir:{}", folder.display()).parse().unwrap();
    let opts = CaptureOptions {
        fps: Some(200.0),
        ..CaptureOptions::default()
    };
    let source = capture::open(&spec, &opts).unwrap();
    let journal_dir = dir.join("journal");
    let sink = JournalSink::open(&journal_dir, 1 << 20, 4).unwrap();
    let shared = Shared::new("drift-test");
    let _ = shared.ledger.set(sink.ledger());
    let sinks: Vec<Box<dyn AlertSink>> = vec![Box::new(sink)];
    let cfg = InferenceConfig {
        threads: Some(1),
        // Random weights: every part is far from the bank. Nothing is flagged, so every frame
        // is a passing frame for the distance test.
        threshold: Some(10.0),
        ..InferenceConfig::default()
    };
    let pipeline =
        device_runtime::pipeline::start(shared.clone(), source, loaded, cfg, sinks).unwrap();
    pipeline.join();

    let mut warnings = Vec::new();
    journal::scan(&journal_dir, |_, e| {
        if e.record["type"] == "drift" {
            warnings.push(serde_json::from_value(e.record).unwrap());
        }
    })
    .unwrap();
    journal::verify(&journal_dir).unwrap();
    let (scored, dropped) = {
        let live = shared.live.read().unwrap();
        (live.counters.frames_scored, live.counters.frames_dropped)
    };
    let (status, metrics) = web(shared);
    Outcome {
        warnings,
        scored,
        dropped,
        status,
        metrics,
    }
}

/// `/api/status` and `/metrics` of the device state, through the router.
fn web(shared: Arc<Shared>) -> (serde_json::Value, String) {
    let state = AppState {
        shared,
        token: None,
        public_reads: true,
        upload_dir: "uploads".into(),
        flagged_dir: "flagged".into(),
        max_upload: 1000,
        slots: None,
        stale_after_s: 30.0,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let get = |uri: &'static str| {
            let router = app(state.clone());
            async move {
                let r = router
                    .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8(body.to_vec()).unwrap()
            }
        };
        let status = serde_json::from_str(&get("/api/status").await).unwrap();
        (status, get("/metrics").await)
    })
}

/// `GOOD_FIRST` good parts, then `n` shifted ones.
fn frames(seed: u64, shift: Shift, n: usize) -> Vec<RgbImage> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..GOOD_FIRST + n)
        .map(|i| {
            let p = part(&mut rng);
            if i < GOOD_FIRST {
                p
            } else {
                shifted(&p, shift)
            }
        })
        .collect()
}

fn shift_raises(shift: Shift, kind: DriftKind, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let out = replay(dir.path(), &frames(seed, shift, 40));
    let raised: Vec<&DriftWarning> = out.warnings.iter().filter(|w| w.active).collect();
    let first = out
        .warnings
        .iter()
        .find(|w| w.kind == kind && w.active)
        .unwrap_or_else(|| panic!("{shift:?}: no {kind:?} warning; journal: {raised:#?}"));
    let shift_at = GOOD_FIRST as u64;
    assert!(
        first.frame >= shift_at && first.frame < shift_at + N,
        "{shift:?}: raised at frame {}, the shift starts at {shift_at} (N = {N})",
        first.frame
    );
    let Evidence::Range(e) = first.evidence else {
        panic!("{first:?}")
    };
    assert!(
        e.median < e.allowed[0] || e.median > e.allowed[1],
        "{first:?}"
    );
    assert!(first.message.contains(kind.name()), "{}", first.message);
    // Raised once, not once per frame.
    assert_eq!(
        out.warnings.iter().filter(|w| w.kind == kind).count(),
        1,
        "{:#?}",
        out.warnings
    );
    // The page's state and the metrics show it, with its numbers.
    let active = out.status["drift"]["active"].as_array().unwrap();
    assert!(
        active.iter().any(|w| w["kind"] == kind.name()),
        "{}",
        out.status["drift"]
    );
    assert!(
        out.metrics
            .contains(&format!("firm_drift_active{{kind=\"{}\"}} 1", kind.name())),
        "{}",
        out.metrics
    );
    assert!(
        out.metrics
            .contains("firm_drift_window_median{statistic=\"brightness\"}")
    );
    promtool_accepts(&out.metrics);
    // Drift records are not alerts.
    assert_eq!(out.status["alerts"]["in-journal"], 0, "{}", out.status);
    assert!(
        out.scored >= (GOOD_FIRST + 30) as u64,
        "scored {}",
        out.scored
    );
}

#[test]
fn darkened_frames_raise_brightness_within_n() {
    shift_raises(Shift::Dark, DriftKind::Brightness, 11);
}

#[test]
fn blurred_frames_raise_focus_within_n() {
    shift_raises(Shift::Blur, DriftKind::Focus, 12);
}

#[test]
fn colour_shifted_frames_raise_red_within_n() {
    shift_raises(Shift::Colour, DriftKind::Red, 13);
}

#[test]
fn fresh_good_frames_raise_nothing_in_m() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let good: Vec<RgbImage> = (0..M).map(|_| part(&mut rng)).collect();
    let out = replay(dir.path(), &good);
    assert!(out.warnings.is_empty(), "{:#?}", out.warnings);
    assert_eq!(out.scored + out.dropped, M as u64);
    assert!(out.scored >= M as u64 - 10, "scored {} of {M}", out.scored);
    let d = &out.status["drift"]["status"];
    assert_eq!(d["distance"]["window"], 100, "{d}");
    assert!(d["distance"]["p-value"].as_f64().unwrap() >= 1e-3, "{d}");
    assert!(
        d["statistics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["median"].is_number() && s["active"] == false),
        "{d}"
    );
    assert!(
        out.metrics
            .contains("firm_drift_active{kind=\"distance\"} 0")
    );
    assert!(out.metrics.contains("firm_drift_warnings_total 0"));
}

/// `promtool check metrics` accepts the text, where promtool is installed (as tests/web.rs).
fn promtool_accepts(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Heat maps on the device (issue 17, item 1): a bundle that scores patches runs frames from a
//! `dir:` source through the pipeline; frames with a checkerboard "defect" at a known place
//! are flagged by the patch score, their verdict's hottest region covers the square (in camera
//! frame pixels, through the test transform's resize and crop), the flagged-frame files keep the
//! frame with its heat map, and the API serves it.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use device_runtime::alerts::AlertSink;
use device_runtime::alerts::flagged::FlaggedFrames;
use device_runtime::capture::{self, CaptureOptions, SourceSpec};
use device_runtime::config::InferenceConfig;
use device_runtime::slots::Slots;
use device_runtime::state::{AlertEntry, Shared};
use device_runtime::web::{AppState, app};
use ed25519_dalek::SigningKey;
use firm_shared::bundle::Limits;
use firm_shared::detect::synthetic::{pattern, small_patch_bundle};
use http_body_util::BodyExt;
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tower::ServiceExt;

/// Camera frames: wider than tall, so the test transform crops the sides.
const W: u32 = 192;
const H: u32 = 144;
/// The defect: a black and white checkerboard (the good parts are smooth colour patterns), frame
/// pixels `[x0, y0, x1, y1)`.
const SQUARE: [u32; 4] = [84, 60, 108, 84];

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn bundle_bytes() -> Vec<u8> {
    let b = small_patch_bundle(11, true).unwrap();
    assert!(b.manifest.patch.as_ref().unwrap().verdict);
    b.to_bytes(&key(), &Limits::default()).unwrap()
}

fn with_defect(mut img: RgbImage) -> RgbImage {
    for y in SQUARE[1]..SQUARE[3] {
        for x in SQUARE[0]..SQUARE[2] {
            let v = if (x / 4 + y / 4) % 2 == 0 { 0 } else { 255 };
            img.put_pixel(x, y, Rgb([v, v, v]));
        }
    }
    img
}

fn overlaps(a: [u32; 4], b: [u32; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

#[test]
fn defects_are_flagged_located_and_saved_with_their_heat_map() {
    let dir = tempfile::tempdir().unwrap();
    let slots = Slots::new(
        &dir.path().join("slots"),
        vec![key().verifying_key()],
        64 << 20,
    )
    .unwrap();
    let (_, loaded) = slots
        .flash(&firm_e2e::bundle_file(&bundle_bytes()), false)
        .unwrap();
    // Even frames good, odd frames with the square.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let folder = dir.path().join("frames");
    std::fs::create_dir_all(&folder).unwrap();
    let n = 12;
    for i in 0..n {
        let img = pattern(W, H, &mut rng);
        let img = if i % 2 == 1 { with_defect(img) } else { img };
        img.save(folder.join(format!("{i:04}.png"))).unwrap();
    }
    let spec: SourceSpec = format!("dir:{}", folder.display()).parse().unwrap();
    let opts = CaptureOptions {
        fps: Some(20.0),
        ..CaptureOptions::default()
    };
    let source = capture::open(&spec, &opts).unwrap();
    let flagged_dir = dir.path().join("flagged");
    let sinks: Vec<Box<dyn AlertSink>> = vec![Box::new(
        FlaggedFrames::open(&flagged_dir, 1 << 30).unwrap(),
    )];
    let shared = Shared::new("heat-test");
    let cfg = InferenceConfig {
        threads: Some(1),
        ..InferenceConfig::default()
    };
    let pipeline =
        device_runtime::pipeline::start(shared.clone(), source, loaded, cfg, sinks).unwrap();
    pipeline.join();

    let alerts: Vec<AlertEntry> = shared.live.read().unwrap().alerts.iter().cloned().collect();
    // At the bundle's calibrated patch threshold, exactly the frames with the defect are
    // flagged.
    let sources: Vec<&str> = alerts.iter().map(|a| a.verdict.source.as_str()).collect();
    assert!(
        sources.iter().all(|s| odd(s)),
        "good frames flagged: {sources:?}"
    );
    // Every frame with the defect is flagged, except any the pipeline dropped because
    // inference was behind (newest frame wins; counted).
    let dropped = shared.live.read().unwrap().counters.frames_dropped as usize;
    assert!(
        alerts.len() + dropped >= n / 2 && !alerts.is_empty(),
        "defects missed: {sources:?} ({dropped} frames dropped)"
    );
    for a in &alerts {
        let heat = a
            .verdict
            .heat
            .as_ref()
            .expect("a patch bundle's verdict has its heat");
        assert_eq!(a.verdict.distance, heat.score, "the patch score decides");
        assert!(heat.score > heat.threshold);
        let r = heat.region;
        assert!(
            r[2] <= W && r[3] <= H && r[0] < r[2] && r[1] < r[3],
            "{r:?}"
        );
        // The hottest region covers the defect, and is the defect's, not the frame's.
        assert!(
            overlaps(r, SQUARE),
            "region {r:?} misses the defect {SQUARE:?}"
        );
        assert!((r[2] - r[0]) * (r[3] - r[1]) < W * H / 6, "{r:?}");
        // The same check against a defect where there is none fails (measured regions: within
        // x 79-119, y 43-136; the square is at x 84-108, y 60-84).
        assert!(!overlaps(r, [36, 12, 60, 36]), "{r:?}");
        let heat_file = a.heat_image.as_deref().expect("the heat map is saved");
        assert!(flagged_dir.join(heat_file).is_file());
    }
    let defective: Vec<&AlertEntry> = alerts.iter().collect();
    // The saved heat map is the frame with colour where the square is, served as JPEG.
    let a = defective[0];
    let name = a.heat_image.clone().unwrap();
    let saved = image::open(flagged_dir.join(&name)).unwrap().to_rgb8();
    assert_eq!(saved.dimensions(), (W, H));
    let (ct, body) = get(shared, &flagged_dir, &format!("/api/flagged/{name}"));
    assert_eq!(ct, "image/jpeg");
    assert_eq!(
        image::load_from_memory(&body)
            .unwrap()
            .to_rgb8()
            .dimensions(),
        (W, H)
    );
    let png = a.image.clone().unwrap();
    let plain = image::open(flagged_dir.join(&png)).unwrap().to_rgb8();
    // The heat map changes the defect's pixels more than the far corner's.
    let diff = |x: u32, y: u32| -> i32 {
        let (p, q) = (plain.get_pixel(x, y).0, saved.get_pixel(x, y).0);
        (0..3).map(|c| (p[c] as i32 - q[c] as i32).abs()).sum()
    };
    let centre = diff((SQUARE[0] + SQUARE[2]) / 2 - 8, (SQUARE[1] + SQUARE[3]) / 2);
    assert!(
        centre > 30,
        "the heat map does not show at the defect ({centre})"
    );
}

fn odd(source: &str) -> bool {
    Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u32>().ok())
        .is_some_and(|i| i % 2 == 1)
}

/// Content type and body of `uri` through the router.
fn get(shared: Arc<Shared>, flagged: &Path, uri: &str) -> (String, Vec<u8>) {
    let state = AppState {
        shared,
        token: None,
        public_reads: true,
        upload_dir: "uploads".into(),
        flagged_dir: flagged.to_path_buf(),
        max_upload: 1000,
        slots: None,
        stale_after_s: 30.0,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = app(state)
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
        (ct, body)
    })
}

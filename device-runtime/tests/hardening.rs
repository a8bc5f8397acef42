//! Issue 18's smaller findings, each checked where the device meets it: a weak public key file
//! is refused; flagged frames are 0640 in a 0750 folder; `/api/flagged` does not follow a symlink
//! placed in that folder; flagged frames are evicted in write order, whatever the wall clock said
//! when they were named. (MJPEG size limits: tests/mjpeg_limits.rs, its own binary for its
//! counting allocator.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use device_runtime::alerts::AlertSink;
use device_runtime::alerts::flagged::FlaggedFrames;
use device_runtime::capture::Frame;
use device_runtime::state::{AlertEntry, Shared, Verdict};
use device_runtime::web::{AppState, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn verdict(seq: u64, time: &str) -> Verdict {
    Verdict {
        seq,
        time: time.into(),
        source: format!("v4l:/dev/video0#{seq}"),
        distance: 0.9,
        threshold: 0.5,
        defect: true,
        nearest: 0,
        nearest_source: "train/good/000.png".into(),
        latency_ms: 12.5,
        heat: None,
        marked_good: None,
    }
}

fn alert(seq: u64, time: &str) -> AlertEntry {
    AlertEntry {
        verdict: verdict(seq, time),
        journal_seq: Some(seq),
        image: None,
        heat_image: None,
        overlay: None,
    }
}

fn frame(seq: u64) -> Frame {
    Frame {
        seq,
        time: SystemTime::now(),
        image: image::RgbImage::from_fn(32, 24, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 10) as u8, (seq * 30) as u8])
        }),
        source: "v4l:/dev/video0".into(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_weak_public_key_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.pub");
    // The identity point: a valid curve point of order 1, under which R = identity, s = 0
    // verifies every message with the lax check.
    std::fs::write(&path, format!("01{}\n", "00".repeat(31))).unwrap();
    let e = device_runtime::slots::read_public_key(&path).unwrap_err();
    assert!(
        e.contains("bundle.pub") && e.contains("weak") && e.contains("small order"),
        "{e}"
    );
    // A real key still loads.
    let pk = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    let hex: String = pk.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, hex).unwrap();
    assert_eq!(device_runtime::slots::read_public_key(&path).unwrap(), pk);
}

#[test]
fn flagged_frames_are_not_readable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let flagged = dir.path().join("flagged");
    let mut f = FlaggedFrames::open(&flagged, 1 << 30).unwrap();
    // Created without any permission for others (0750 under the usual umask).
    let m = mode(&flagged);
    assert_eq!(m & 0o700, 0o700, "{m:o}");
    assert_eq!(m & 0o027, 0, "{m:o}");
    let mut a = alert(1, "2026-12-01T12:50:00.123Z");
    a.overlay = Some(std::sync::Arc::new(frame(1).image));
    f.alert(&mut a, &frame(1)).unwrap();
    let stem = "20261201T125000123Z-00000001";
    for ext in [".png", ".json", ".thumb.jpg", ".heat.jpg"] {
        let p = flagged.join(format!("{stem}{ext}"));
        let m = mode(&p);
        assert_eq!(m & 0o600, 0o600, "{}: {m:o}", p.display());
        assert_eq!(m & 0o137, 0, "{}: {m:o}", p.display());
    }
    // A thumbnail made on request (the cache write) too.
    std::fs::remove_file(flagged.join(format!("{stem}.thumb.jpg"))).unwrap();
    device_runtime::alerts::flagged::thumbnail_for(&flagged, &format!("{stem}.png")).unwrap();
    let m = mode(&flagged.join(format!("{stem}.thumb.jpg")));
    assert_eq!(m & 0o137, 0, "{m:o}");
    // A folder an earlier version made 0755 is closed to others at start.
    std::fs::set_permissions(&flagged, std::fs::Permissions::from_mode(0o755)).unwrap();
    FlaggedFrames::open(&flagged, 1 << 30).unwrap();
    assert_eq!(mode(&flagged), 0o750);
}

fn state(flagged: &Path) -> AppState {
    AppState {
        shared: Shared::new("line-test"),
        token: None,
        public_reads: true,
        upload_dir: flagged.with_file_name("uploads"),
        flagged_dir: flagged.to_path_buf(),
        max_upload: 10_000,
        slots: None,
        stale_after_s: 30.0,
    }
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

#[tokio::test]
async fn flagged_routes_do_not_follow_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let flagged = dir.path().join("flagged");
    std::fs::create_dir(&flagged).unwrap();
    // Another file of the machine, as a valid image so a thumbnail could be made of it.
    let secret = dir.path().join("secret.png");
    let img = image::RgbImage::from_fn(200, 150, |x, y| image::Rgb([x as u8, y as u8, 7]));
    img.save(&secret).unwrap();
    let secret_bytes = std::fs::read(&secret).unwrap();
    let mut secret_jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut secret_jpeg)
        .encode_image(&img)
        .unwrap();
    std::fs::write(dir.path().join("secret.jpg"), &secret_jpeg).unwrap();
    // Named like a flagged frame, its heat map and another frame's thumbnail.
    let link = |name: &str, target: &str| {
        std::os::unix::fs::symlink(dir.path().join(target), flagged.join(name)).unwrap();
    };
    link("20261201T125000123Z-00000042.png", "secret.png");
    link("20261201T125000123Z-00000042.heat.jpg", "secret.jpg");
    link("20261201T125000123Z-00000043.thumb.jpg", "secret.jpg");
    // A real frame beside them is served.
    img.save(flagged.join("20261201T125000123Z-00000044.png"))
        .unwrap();

    let app = app(state(&flagged));
    for uri in [
        "/api/flagged/20261201T125000123Z-00000042.png",
        "/api/flagged/20261201T125000123Z-00000042.heat.jpg",
        "/api/flagged/20261201T125000123Z-00000042.png/thumb.jpg",
        "/api/flagged/20261201T125000123Z-00000042.heat.jpg/thumb.jpg",
        "/api/flagged/20261201T125000123Z-00000043.png/thumb.jpg",
    ] {
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert!(
            body != secret_bytes && body != secret_jpeg && body.len() < 200,
            "{uri}: {} bytes served",
            body.len()
        );
    }
    let (status, body) = get(&app, "/api/flagged/20261201T125000123Z-00000044.png").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, secret_bytes, "same pixels, plain file");
    let (status, _) = get(
        &app,
        "/api/flagged/20261201T125000123Z-00000044.png/thumb.jpg",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// A board without an RTC: frames saved with the right time, then (after a reboot with the clock
/// behind) frames named with an older time. Budget pressure after the next start deletes the
/// frames written first, not the ones whose names sort first.
#[test]
fn flagged_frames_are_evicted_in_write_order_across_a_clock_jump() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let names = |f: &mut FlaggedFrames, seqs: std::ops::Range<u64>, time: &str| -> Vec<String> {
        seqs.map(|seq| {
            let mut a = alert(seq, time);
            f.alert(&mut a, &frame(seq)).unwrap();
            a.image.unwrap()
        })
        .collect()
    };
    let mut f = FlaggedFrames::open(path, 1 << 30).unwrap();
    let before = names(&mut f, 1..3, "2026-12-01T12:00:00.000Z");
    drop(f);
    // They were written while the wall clock was a day ahead of the clock after the reboot.
    let ahead = SystemTime::now() + Duration::from_secs(86_400);
    for e in std::fs::read_dir(path).unwrap() {
        let file = std::fs::File::open(e.unwrap().path()).unwrap();
        file.set_modified(ahead).unwrap();
    }
    let mut f = FlaggedFrames::open(path, 1 << 30).unwrap();
    let after = names(&mut f, 3..5, "1970-01-01T00:00:42.000Z");
    let four = f.total();
    drop(f);
    // Next start: room for about 3.5 sets; one more frame must evict the two written first.
    let mut f = FlaggedFrames::open(path, four * 7 / 8).unwrap();
    let last = names(&mut f, 5..6, "1970-01-01T00:01:00.000Z");
    for n in &before {
        assert!(!path.join(n).exists(), "{n} (written first) is kept");
    }
    for n in after.iter().chain(&last) {
        assert!(path.join(n).is_file(), "{n} (written last) was evicted");
    }
    assert!(f.total() <= four * 7 / 8);
}

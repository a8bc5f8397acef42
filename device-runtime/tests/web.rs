//! The HTTP interface through `web::app` without a socket: pages and assets, the JSON API, auth
//! on every mutating route (and on reads when they are not public), errors that do not leak
//! internals, Prometheus text (checked with `promtool` when it is installed), health.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use device_runtime::state::{AlertEntry, BundleInfo, Shared, Verdict};
use device_runtime::web::{AppState, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef-test-token";

fn state(dir: &std::path::Path, public_reads: bool) -> AppState {
    let shared = Shared::new("line-test");
    AppState {
        shared,
        token: Some(TOKEN.into()),
        public_reads,
        upload_dir: dir.join("uploads"),
        flagged_dir: dir.join("flagged"),
        max_upload: 10_000,
        slots: Some(
            device_runtime::slots::Slots::new(
                &dir.join("slots"),
                vec![ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key()],
                10_000,
            )
            .unwrap(),
        ),
        stale_after_s: 30.0,
    }
}

fn verdict(seq: u64, distance: f64) -> Verdict {
    Verdict {
        seq,
        time: device_runtime::state::timestamp(std::time::SystemTime::now()),
        source: format!("good/{seq:03}.png"),
        distance,
        threshold: 0.5,
        defect: distance > 0.5,
        nearest: 0,
        nearest_source: "train/good/000.png".into(),
        latency_ms: 12.5,
        heat: None,
        marked_good: None,
    }
}

fn with_activity(shared: &Arc<Shared>) {
    let mut live = shared.live.write().unwrap();
    live.bundle = Some(BundleInfo {
        slot: "a".into(),
        product_class: "bottle \"x\"".into(),
        bundle_version: 7,
        created: "2026-12-01T00:00:00Z".into(),
        score: "cos_1".into(),
        threshold: 0.5,
        operating_point: "calibrated".into(),
        metrics: Default::default(),
        calibration: "threshold 0.5".into(),
        rolled_back: None,
        backend: "cpu".into(),
        device: "cpu (avx2, 2 threads)".into(),
    });
    for i in 0..10 {
        live.record(&verdict(i, 0.1 * i as f64));
    }
    live.add_alert(AlertEntry {
        verdict: verdict(9, 0.9),
        journal_seq: Some(1),
        image: None,
        heat_image: None,
        overlay: None,
    });
    live.camera.connected = true;
}

async fn get(app: &axum::Router, uri: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn post(
    app: &axum::Router,
    uri: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let mut req = Request::post(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn page_assets_and_api() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path(), true);
    with_activity(&st.shared);
    let app = app(st);
    let (s, html) = get(&app, "/", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains("/assets/app.js") && html.contains("id=\"sse-count\""));
    // No external URL anywhere in the page's files.
    for f in ["/", "/assets/app.js", "/assets/style.css"] {
        let (s, body) = get(&app, f, None).await;
        assert_eq!(s, StatusCode::OK, "{f}");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{f} links outside"
        );
    }
    assert_eq!(
        get(&app, "/assets/../Cargo.toml", None).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, body) = get(&app, "/api/status", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["site"], "line-test");
    assert_eq!(v["counters"]["frames-scored"], 10);
    assert_eq!(v["latency-ms"]["p50"], 12.5);
    assert_eq!(v["bundle"]["bundle-version"], 7);
    assert_eq!(v["health"], "ok");
    let (_, body) = get(&app, "/api/alerts", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["alerts"][0]["seq"], 9);
    assert_eq!(v["alerts"][0]["journal-seq"], 1);
    let (_, body) = get(&app, "/api/scores", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["scores"].as_array().unwrap().len(), 10);
    assert_eq!(v["threshold"], 0.5);
    assert_eq!(
        get(&app, "/api/thumbnail/0", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/api/flagged/..%2fslots", None).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, body) = get(&app, "/nowhere", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("no such page"));
    assert_eq!(get(&app, "/healthz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn health_follows_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path(), true);
    let app = app(st.clone());
    let (s, body) = get(&app, "/healthz", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no bundle"), "{body}");
    with_activity(&st.shared);
    assert_eq!(get(&app, "/healthz", None).await.0, StatusCode::OK);
    // A frame older than the staleness limit: unhealthy.
    st.shared.live.write().unwrap().last.as_mut().unwrap().time = "2020-01-01T00:00:00.000Z".into();
    let (s, body) = get(&app, "/healthz", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no frame scored for"), "{body}");
}

#[tokio::test]
async fn mutations_need_the_token_and_reads_can_too() {
    let dir = tempfile::tempdir().unwrap();
    let app_public = app(state(dir.path(), true));
    let (s, body) = post(&app_public, "/api/bundle", None, b"x".to_vec()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body.contains("needs the device token"), "{body}");
    let (s, _) = post(
        &app_public,
        "/api/bundle",
        Some("wrong-token-0000000"),
        b"x".to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // With the token: the body is flashed, and a bad bundle is refused with the step, no paths.
    let (s, body) = post(
        &app_public,
        "/api/bundle",
        Some(TOKEN),
        b"not a bundle".to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("verify step"), "{body}");
    assert!(
        !body.contains(&dir.path().display().to_string()),
        "leaks a path: {body}"
    );
    // Above the upload limit.
    let (s, body) = post(&app_public, "/api/bundle", Some(TOKEN), vec![0; 20_000]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // No upload left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("uploads"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Reads behind the token when not public (header or ?token= for the event stream).
    let app_private = app(state(dir.path(), false));
    assert_eq!(
        get(&app_private, "/api/status", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&app_private, "/metrics", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&app_private, "/api/status", Some(TOKEN)).await.0,
        StatusCode::OK
    );
    let (s, _) = get(&app_private, &format!("/api/scores?token={TOKEN}"), None).await;
    assert_eq!(s, StatusCode::OK);
    // Health stays public for the supervisor.
    assert_ne!(
        get(&app_private, "/healthz", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // No token configured: mutations are refused outright.
    let mut st = state(dir.path(), true);
    st.token = None;
    let (s, body) = post(&app(st), "/api/bundle", Some(TOKEN), b"x".to_vec()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("no token configured"), "{body}");
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path(), true);
    with_activity(&st.shared);
    let (s, text) = get(&app(st), "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    for want in [
        "firm_frames_scored_total 10",
        "firm_alerts_total 1",
        "firm_latency_p50_seconds 0.0125",
        "firm_bundle_info{class=\"bottle \\\"x\\\"\",version=\"7\",slot=\"a\",operating_point=\"calibrated\"} 1",
        "firm_backend_info{backend=\"cpu\",device=\"cpu (avx2, 2 threads)\"} 1",
        "firm_healthy 1",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    // Every sample has HELP and TYPE before it.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE"
        );
    }
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("promtool check metrics: ok");
        }
        Err(_) => println!("promtool not installed: checked the format by hand only"),
    }
}

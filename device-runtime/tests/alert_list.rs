//! The alert list and its acknowledgement through `web::app`, over a real journal: pages and their
//! cursor, acknowledging with and without the token, the count in /api/status and /metrics, the
//! `ack` event, the state after a restart (reopened the way `run` opens it), the hash chain after
//! acknowledgements, and the flagged frames' thumbnails.

use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use device_runtime::alerts::journal;
use device_runtime::alerts::journal_sink::JournalSink;
use device_runtime::state::{AlertEntry, Event, Shared, Verdict};
use device_runtime::web::{AppState, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef-test-token";

fn alert(frame: u64) -> AlertEntry {
    AlertEntry {
        verdict: Verdict {
            seq: frame,
            time: "2026-12-01T12:00:00.000Z".into(),
            source: format!("test/broken/{frame:03}.png"),
            distance: 0.5 + frame as f64 * 1e-3,
            threshold: 0.5,
            defect: true,
            nearest: 0,
            nearest_source: "train/good/000.png".into(),
            latency_ms: 3.0,
            heat: None,
            marked_good: None,
        },
        journal_seq: None,
        image: Some(format!("20261201T120000000Z-{frame:08}.png")),
        heat_image: None,
        overlay: None,
    }
}

/// A device state over the journal in `dir/journal`, opened as `run` opens it.
fn device(dir: &Path) -> (AppState, JournalSink) {
    let sink = JournalSink::open(&dir.join("journal"), 8 << 20, 16).unwrap();
    let shared = Shared::new("ack-test");
    shared.ledger.set(sink.ledger()).unwrap();
    let st = AppState {
        shared,
        token: Some(TOKEN.into()),
        public_reads: true,
        upload_dir: dir.join("uploads"),
        flagged_dir: dir.join("flagged"),
        max_upload: 10_000,
        slots: None,
        stale_after_s: 30.0,
    };
    (st, sink)
}

/// `n` alerts journaled through the pipeline's path (the journal sink's ledger).
fn with_alerts(st: &AppState, n: u64) {
    let ledger = st.shared.ledger.get().unwrap();
    for i in 0..n {
        let mut a = alert(i);
        ledger.append_alert(&mut a).unwrap();
        st.shared.live.write().unwrap().add_alert(a);
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v, headers)
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let (s, v, _) = call(app, "GET", uri, None, "").await;
    (s, v)
}

fn journal_seqs(page: &Value) -> Vec<u64> {
    page["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["journal-seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn pages_walk_the_journal_from_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _sink) = device(dir.path());
    with_alerts(&st, 130);
    let app = app(st);

    // The unpaged answer is what it was: the in-memory alerts, oldest first, and `total`.
    let (s, all) = get(&app, "/api/alerts").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(all["total"], 130);
    assert_eq!(all["alerts"].as_array().unwrap().len(), 100);
    assert_eq!(all["alerts"][99]["journal-seq"], 130);
    assert_eq!(all["alerts"][99]["source"], "test/broken/129.png");
    assert_eq!(all["alerts"][99]["acknowledged"], false);
    assert_eq!(all["unacknowledged"], 130);

    let (s, p) = get(&app, "/api/alerts?limit=50").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(journal_seqs(&p), (81..=130).collect::<Vec<_>>());
    assert_eq!(p["next-before"], 81);
    assert_eq!(
        (p["in-journal"].as_u64(), p["unacknowledged"].as_u64()),
        (Some(130), Some(130))
    );
    // The page's alerts are the journal's records, as the pipeline wrote them.
    assert_eq!(p["alerts"][0]["seq"], 80);
    assert_eq!(p["alerts"][0]["image"], "20261201T120000000Z-00000080.png");
    let (_, p) = get(&app, "/api/alerts?limit=50&before=81").await;
    assert_eq!(journal_seqs(&p), (31..=80).collect::<Vec<_>>());
    let (_, p) = get(&app, "/api/alerts?before=31").await;
    assert_eq!(
        journal_seqs(&p),
        (11..=30).collect::<Vec<_>>(),
        "default page size 20"
    );
    let (_, p) = get(&app, "/api/alerts?limit=50&before=11").await;
    assert_eq!(journal_seqs(&p), (1..=10).collect::<Vec<_>>());
    assert_eq!(p["next-before"], Value::Null);

    for bad in ["limit=0", "limit=201", "limit=ten", "before=-1"] {
        let (s, v) = get(&app, &format!("/api/alerts?{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }
}

#[tokio::test]
async fn acknowledging_needs_the_token_is_journaled_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (st, sink) = device(dir.path());
    with_alerts(&st, 40);
    let mut events = st.shared.events.subscribe();
    let app = app(st);
    let records = || {
        journal::verify(&dir.path().join("journal"))
            .unwrap()
            .records
    };

    for token in [None, Some("wrong-token-wrong-token")] {
        let (s, v, _) = call(&app, "POST", "/api/alerts/ack", token, r#"{"up-to": 40}"#).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        let (s, _, _) = call(&app, "POST", "/api/alerts/ack", token, r#"{"alert": 3}"#).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(records(), 40, "nothing journaled without the token");
    assert_eq!(sink.ledger().counts().unacknowledged, 40);
    assert!(events.try_recv().is_err(), "no event without the token");

    let t = Some(TOKEN);
    let (s, v, _) = call(&app, "POST", "/api/alerts/ack", t, r#"{"alert": 3}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"alert": 3, "acknowledged": 1, "unacknowledged": 39, "journal-seq": 41})
    );
    match events.try_recv() {
        Ok(Event::Ack(a)) => assert_eq!((a.alert, a.unacknowledged), (Some(3), 39)),
        other => panic!("expected the ack event, got {other:?}"),
    }
    // Again: nothing to do, nothing journaled.
    let (s, v, _) = call(&app, "POST", "/api/alerts/ack", t, r#"{"alert": 3}"#).await;
    assert_eq!(
        (s, &v["acknowledged"], &v["journal-seq"]),
        (StatusCode::OK, &json!(0), &Value::Null)
    );
    assert_eq!(records(), 41);

    let (s, v, _) = call(&app, "POST", "/api/alerts/ack", t, r#"{"up-to": 10}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["acknowledged"].as_u64(), v["unacknowledged"].as_u64()),
        (Some(9), Some(30))
    );

    for (body, want) in [
        (r#"{"alert": 41}"#, StatusCode::NOT_FOUND), // the first acknowledgement, not an alert
        (r#"{"alert": 9999}"#, StatusCode::NOT_FOUND),
        (r#"{"alert": 5, "up-to": 9}"#, StatusCode::BAD_REQUEST),
        (r#"{}"#, StatusCode::BAD_REQUEST),
        (r#"{"seq": 5}"#, StatusCode::BAD_REQUEST),
        ("acknowledge", StatusCode::BAD_REQUEST),
    ] {
        let (s, v, _) = call(&app, "POST", "/api/alerts/ack", t, body).await;
        assert_eq!(s, want, "{body}: {v}");
        assert!(v["error"].is_string(), "{body}: {v}");
    }
    assert_eq!(records(), 42);

    let (_, status) = get(&app, "/api/status").await;
    assert_eq!(
        status["alerts"],
        json!({"in-journal": 40, "unacknowledged": 30})
    );
    let (_, metrics, _) = call(&app, "GET", "/metrics", None, "").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("\nfirm_alerts_unacknowledged 30\n"),
        "{metrics}"
    );
    let (_, p) = get(&app, "/api/alerts?limit=12").await;
    let acked: Vec<bool> = p["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["acknowledged"].as_bool().unwrap())
        .collect();
    assert_eq!(acked, [false; 12], "alerts 29..=40 are open");
    let (_, p) = get(&app, "/api/alerts?limit=11&before=12").await;
    let acked: Vec<bool> = p["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["acknowledged"].as_bool().unwrap())
        .collect();
    let mut want = vec![true; 10];
    want.push(false);
    assert_eq!(acked, want, "alerts 1..=10 acknowledged, 11 open");
}

#[tokio::test]
async fn acknowledgements_survive_a_restart_and_keep_the_chain_valid() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    {
        let (st, _sink) = device(dir.path());
        with_alerts(&st, 25);
        let app = app(st.clone());
        for body in [r#"{"alert": 20}"#, r#"{"up-to": 5}"#, r#"{"alert": 2}"#] {
            let (s, v, _) = call(&app, "POST", "/api/alerts/ack", Some(TOKEN), body).await;
            assert_eq!(s, StatusCode::OK, "{body}: {v}");
        }
        // More alerts after the acknowledgements: not covered by them.
        let ledger = st.shared.ledger.get().unwrap();
        for i in 25..30 {
            ledger.append_alert(&mut alert(i)).unwrap();
        }
        assert_eq!(ledger.counts().unacknowledged, 24);
    }
    let report = journal::verify(&jdir).unwrap();
    assert_eq!((report.records, report.last_seq), (32, Some(32)));

    // A restart: the journal is reopened and replayed.
    let (st, sink) = device(dir.path());
    let ledger = sink.ledger();
    assert_eq!(ledger.counts().in_journal, 30);
    assert_eq!(ledger.counts().unacknowledged, 24);
    for (seq, acked) in [
        (1, true),
        (5, true),
        (6, false),
        (20, true),
        (21, false),
        (28, false),
    ] {
        assert_eq!(
            ledger.is_acknowledged(seq),
            Some(acked),
            "journal seq {seq}"
        );
    }
    assert_eq!(
        sink.recent(3)
            .iter()
            .map(|a| a.journal_seq)
            .collect::<Vec<_>>(),
        [Some(30), Some(31), Some(32)]
    );
    let app = app(st);
    let (_, status) = get(&app, "/api/status").await;
    assert_eq!(status["alerts"]["unacknowledged"], 24);
    let (s, v, _) = call(
        &app,
        "POST",
        "/api/alerts/ack",
        Some(TOKEN),
        r#"{"up-to": 32}"#,
    )
    .await;
    assert_eq!(
        (s, v["acknowledged"].as_u64()),
        (StatusCode::OK, Some(24)),
        "{v}"
    );
    let report = journal::verify(&jdir).unwrap();
    assert_eq!(report.records, 33);
    // The journal holds the acknowledgements as records of their own, chained like the alerts.
    let last = journal::read_recent(&jdir, 1).unwrap().pop().unwrap();
    assert_eq!(
        last.record,
        json!({"type": "ack", "up-to": 32, "count": 24})
    );
    assert_eq!(last.hash, report.last_hash);
}

#[tokio::test]
async fn flagged_thumbnails_are_small_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _sink) = device(dir.path());
    let flagged = dir.path().join("flagged");
    std::fs::create_dir_all(&flagged).unwrap();
    // A frame saved by a device from before thumbnails: made on the first request, then kept.
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 3 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let name = "20261201T120000000Z-00000007.png";
    img.save(flagged.join(name)).unwrap();
    let png_len = std::fs::metadata(flagged.join(name)).unwrap().len();
    let app = app(st);

    let uri = format!("/api/flagged/{name}/thumb.jpg");
    let resp = app
        .clone()
        .oneshot(Request::get(&uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "image/jpeg");
    assert!(
        resp.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let jpeg = resp.into_body().collect().await.unwrap().to_bytes();
    let thumb = image::load_from_memory(&jpeg).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (128, 96));
    assert!(
        (jpeg.len() as u64) * 20 < png_len,
        "{} vs {png_len}",
        jpeg.len()
    );
    let kept = flagged.join("20261201T120000000Z-00000007.thumb.jpg");
    assert_eq!(std::fs::read(&kept).unwrap(), jpeg);

    for bad in [
        "/api/flagged/20261201T120000000Z-00000008.png/thumb.jpg",
        "/api/flagged/..%2Fjournal.png/thumb.jpg",
        "/api/flagged/x.json/thumb.jpg",
    ] {
        let (s, v) = get(&app, bad).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}: {v}");
    }
    // The full frame is still there for a click.
    let (s, _, h) = call(&app, "GET", &format!("/api/flagged/{name}"), None, "").await;
    assert_eq!(
        (s, &h[header::CONTENT_TYPE]),
        (StatusCode::OK, &"image/png".parse().unwrap())
    );
}

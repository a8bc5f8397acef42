//! The web server on the factory floor (issue 18): bounded through `web::serve` on a real socket,
//! and strict about hosts and tokens through `web::app_with`. Asserted:
//! - a request head trickled in (half sent) is closed after `web.idle-timeout-ms`;
//! - beyond `web.max-connections` idle connections are closed for new ones (the server never
//!   holds more than the cap) and a fresh /healthz still answers; when every connection is busy
//!   (event streams, an upload in flight) a new one gets 503 and is closed, and a stalled upload
//!   body is cut after the idle timeout, which frees its connection;
//! - event streams beyond `web.max-event-streams` get 503, and a closed one frees its place;
//! - a `Host` that is not an IP address, `localhost` or a configured name gets 421;
//! - `?token=` works on GET and is refused (401) on POST; logged URIs never carry the token.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use device_runtime::config::WebConfig;
use device_runtime::state::Shared;
use device_runtime::web::{AppState, app_with};
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef-limits-token";

fn state(dir: &std::path::Path, public_reads: bool) -> AppState {
    AppState {
        shared: Shared::new("line-limits"),
        token: Some(TOKEN.into()),
        public_reads,
        upload_dir: dir.join("uploads"),
        flagged_dir: dir.join("flagged"),
        max_upload: 1 << 20,
        slots: Some(
            device_runtime::slots::Slots::new(
                &dir.join("slots"),
                vec![ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key()],
                1 << 20,
            )
            .unwrap(),
        ),
        stale_after_s: 30.0,
    }
}

fn web(max_connections: usize, max_event_streams: usize, idle_timeout_ms: u64) -> WebConfig {
    WebConfig {
        max_connections,
        max_event_streams,
        idle_timeout_ms,
        hostnames: vec!["cam-1.plant.local".into()],
        ..WebConfig::default()
    }
}

/// `web::serve` on a loopback port in its own runtime; stopped (gracefully) when dropped.
struct Server {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(web: WebConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path(), true);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let shared = st.shared.clone();
                let shutdown = async move {
                    let _ = rx.await;
                    let _ = shared.closing.send(true);
                };
                device_runtime::web::serve::serve(listener, app_with(st, &web), &web, shutdown)
                    .await
                    .unwrap();
            });
        });
        Server {
            addr,
            stop: Some(tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// One request on a fresh connection: (status, body).
    fn request(&self, head: &str) -> (u16, String) {
        let mut s = self.connect();
        // A refused connection may be answered before its request is sent; the answer is read
        // all the same.
        let _ = write!(s, "{head}Host: {}\r\nConnection: close\r\n\r\n", self.addr);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out).to_string();
        let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (code, body)
    }

    /// An event stream, once its 200 (or other) head has arrived: (status, stream).
    fn event_stream(&self) -> (u16, TcpStream) {
        let mut s = self.connect();
        write!(
            s,
            "GET /api/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => break,
            }
        }
        let code = String::from_utf8_lossy(&head)
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, s)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether the server still holds `s` open (a closed one reads EOF or a reset; an answer the
/// server wrote before closing counts as closed too).
fn held_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let open = loop {
        match (&mut &*s).read(&mut buf) {
            Ok(0) => break false,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
            Err(_) => break false,
        }
    };
    s.set_nonblocking(false).unwrap();
    open
}

/// Wait until `done` holds (or panic after `limit`).
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_half_sent_request_is_closed_after_the_idle_timeout() {
    let srv = Server::start(web(16, 4, 400));
    let mut s = srv.connect();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    // EOF (or a reset) ends this; without a header-read timeout it would block for 10 s.
    let r = s.read_to_end(&mut out);
    let waited = t.elapsed();
    assert!(
        r.is_ok() || r.as_ref().is_err_and(|e| e.kind() != ErrorKind::WouldBlock),
        "still open after {waited:?}: {r:?}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "closed after {waited:?} (idle timeout 400 ms)"
    );
    // An idle connection that never sends a byte goes the same way.
    let mut idle = srv.connect();
    let t = Instant::now();
    let _ = idle.read_to_end(&mut out);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn beyond_the_cap_idle_connections_make_room_and_healthz_answers() {
    const CAP: usize = 8;
    let srv = Server::start(web(CAP, 2, 30_000));
    // 40 slow-loris connections, each with half a request head.
    let socks: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = srv.connect();
            s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
            s
        })
        .collect();
    let mut open = 0;
    wait_for(
        "the server to hold at most the cap",
        Duration::from_secs(5),
        || {
            open = socks.iter().filter(|s| held_open(s)).count();
            open <= CAP
        },
    );
    assert!(open >= CAP - 1, "{open} held open: the newest should stay");
    // A fresh client gets in (it pushes out the oldest idle one) and is answered at once.
    let t = Instant::now();
    let (code, body) = srv.request("GET /healthz HTTP/1.1\r\n");
    assert!(
        (code == 200 || code == 503) && !body.contains("too many connections"),
        "{code} {body}"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(socks.iter().filter(|s| held_open(s)).count() <= CAP);
}

#[test]
fn when_every_connection_is_busy_new_ones_get_503_until_a_stalled_upload_is_cut() {
    let srv = Server::start(web(3, 2, 800));
    let (a, sse_a) = srv.event_stream();
    let (b, _sse_b) = srv.event_stream();
    assert_eq!((a, b), (200, 200));
    // An upload that sends 10 of its 5,000 bytes, then stalls: a request in flight.
    let mut upload = srv.connect();
    write!(
        upload,
        "POST /api/bundle HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 5000\r\n\r\n0123456789",
        srv.addr
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let (code, body) = srv.request("GET /healthz HTTP/1.1\r\n");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too many connections"), "{body}");
    // The stalled body is cut after the idle timeout; its connection then makes room.
    let mut cut = Vec::new();
    let _ = upload.read_to_end(&mut cut);
    let cut = String::from_utf8_lossy(&cut);
    assert!(cut.starts_with("HTTP/1.1 400"), "{cut}");
    wait_for(
        "/healthz after the upload was cut",
        Duration::from_secs(3),
        || {
            let (code, body) = srv.request("GET /healthz HTTP/1.1\r\n");
            code != 0 && !body.contains("too many connections")
        },
    );
    // The event streams were never touched.
    assert!(held_open(&sse_a));
}

#[test]
fn event_streams_beyond_the_cap_get_503_and_a_closed_one_frees_its_place() {
    let srv = Server::start(web(16, 2, 30_000));
    let (a, sse_a) = srv.event_stream();
    let (b, _sse_b) = srv.event_stream();
    assert_eq!((a, b), (200, 200));
    let (c, _) = srv.event_stream();
    assert_eq!(c, 503);
    let (code, body) = srv.request("GET /api/events HTTP/1.1\r\n");
    assert_eq!(code, 503);
    assert!(body.contains("web.max-event-streams"), "{body}");
    drop(sse_a);
    wait_for(
        "a place after closing a stream",
        Duration::from_secs(5),
        || srv.event_stream().0 == 200,
    );
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let code = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (code, String::from_utf8_lossy(&body).to_string())
}

fn get_with_host(host: &str) -> Request<Body> {
    Request::get("/api/status")
        .header(header::HOST, host)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn hosts_other_than_addresses_localhost_and_configured_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(state(dir.path(), true), &web(16, 2, 10_000));
    for host in [
        "192.168.10.7:8080",
        "127.0.0.1",
        "[::1]:8080",
        "localhost:8080",
        "cam-1.plant.local:8080",
    ] {
        let (code, body) = send(&app, get_with_host(host)).await;
        assert_eq!(code, StatusCode::OK, "{host}: {body}");
    }
    for host in [
        "attacker.example",
        "attacker.example:8080",
        "cam-2.plant.local",
    ] {
        let (code, body) = send(&app, get_with_host(host)).await;
        assert_eq!(code, StatusCode::MISDIRECTED_REQUEST, "{host}: {body}");
        assert!(body.contains("web.hostnames"), "{body}");
    }
    // /healthz too, and an absolute-form URI naming another host.
    let req = Request::get("http://attacker.example/healthz")
        .header(header::HOST, "127.0.0.1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::MISDIRECTED_REQUEST);
}

fn ack(uri: &str, bearer: bool) -> Request<Body> {
    let mut r = Request::post(uri)
        .header(header::HOST, "127.0.0.1")
        .header(header::CONTENT_TYPE, "application/json");
    if bearer {
        r = r.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    }
    r.body(Body::from(r#"{"up-to": 5}"#)).unwrap()
}

#[tokio::test]
async fn a_query_token_is_accepted_on_get_and_refused_on_post() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(state(dir.path(), false), &web(16, 2, 10_000));
    let get = |uri: &str| {
        Request::get(uri)
            .header(header::HOST, "127.0.0.1")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        send(&app, get("/api/status")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (code, body) = send(&app, get(&format!("/api/status?token={TOKEN}"))).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = send(&app, ack(&format!("/api/alerts/ack?token={TOKEN}"), false)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("GET only"), "{body}");
    // The same request with the header passes authentication (whatever the handler answers).
    let (code, body) = send(&app, ack("/api/alerts/ack", true)).await;
    assert!(
        code != StatusCode::UNAUTHORIZED && code != StatusCode::FORBIDDEN,
        "{code} {body}"
    );
}

/// What a `fmt` subscriber writes, kept for the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logged_requests_never_show_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(state(dir.path(), false), &web(16, 2, 10_000));
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let req = Request::get(format!("/api/status?limit=3&token={TOKEN}"))
                .header(header::HOST, "127.0.0.1")
                .body(Body::empty())
                .unwrap();
            assert_eq!(send(&app, req).await.0, StatusCode::OK);
            let req = ack(&format!("/api/alerts/ack?token={TOKEN}"), false);
            assert_eq!(send(&app, req).await.0, StatusCode::UNAUTHORIZED);
        });
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("/api/status?limit=3&token=REDACTED"),
        "the request is logged: {text}"
    );
    assert!(!text.contains(TOKEN), "the token is in the log:\n{text}");
}

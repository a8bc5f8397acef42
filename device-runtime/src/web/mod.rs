//! The status page, JSON API, Prometheus metrics and bundle upload (axum). [`app`] builds the
//! router from an [`AppState`], so tests drive it without a socket.
//!
//! | route | what | auth |
//! |---|---|---|
//! | `GET /` , `/assets/*` | the status page (assets embedded in the binary, no external URL) | read |
//! | `GET /api/status` | counters, FPS, latency p50/p99, camera, bundle, slots, health, drift | read |
//! | `GET /api/alerts` | recent alerts; `?limit=N&before=SEQ`: a page from the journal (`alerts`) | read |
//! | `GET /api/scores` | recent distances with the threshold | read |
//! | `GET /api/events` | server-sent events: `verdict`, `alert`, `bundle`, `ack`, `drift`, `overlay` | read |
//! | `GET /api/frame.jpg` | the latest frame | read |
//! | `GET /api/thumbnail/{i}` | bank entry `i`'s thumbnail (the nearest good image) | read |
//! | `GET /api/flagged/{file}` | a saved flagged frame | read |
//! | `GET /api/flagged/{file}/thumb.jpg` | its thumbnail (a few KB, cacheable) | read |
//! | `GET /metrics` | Prometheus text format | read |
//! | `GET /healthz` | 200 when a bundle runs and frames flow, else 503 | none |
//! | `POST /api/bundle` | install a bundle (body = the file), as `device-runtime flash`; `?carry-overlay=true` carries the frames marked good over | token |
//! | `POST /api/alerts/ack` | acknowledge `{"alert": SEQ}` or `{"up-to": SEQ}`, journaled | token |
//! | `GET /api/overlay` | frames marked good for the active bundle | read |
//! | `POST /api/overlay/mark` | mark `{"alert": SEQ}` good, journaled | token |
//! | `POST /api/overlay/undo` | undo `{"entry": ID}`, journaled | token |
//!
//! "read" is public when the config says `public-reads = true` (or leaves it out and listens on a
//! loopback address only: `WebConfig::reads_public`), otherwise it needs the token too
//! (as `Authorization: Bearer TOKEN`, or `?token=TOKEN` on GET for the page's event stream and
//! images, which cannot set headers). Every mutating route needs the token in the header: a
//! `?token=` ends up in proxy logs and browser history, so it is refused there (401). Without a
//! configured token mutating requests are refused. Logged URIs show `token=REDACTED`. Errors
//! answer with a short reason and never with internals (paths, backtraces); details go to the log.
//!
//! Every request's `Host` must be an IP address, `localhost` or one of `web.hostnames` (421
//! otherwise): a page from elsewhere cannot reach the device by rebinding a DNS name it controls
//! to the device's address. A request without `Host` (HTTP/1.0 tools, tests) comes from no
//! browser and passes. At most `web.max-event-streams` event streams are open (503 beyond), and a
//! request body that stalls for `web.idle-timeout-ms` is cut. Connections are bounded in
//! [`serve`].

mod alerts;
mod api;
mod assets;
mod metrics;
mod overlay;
pub mod serve;

pub use api::remove_stale_uploads;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use crate::config::WebConfig;
use crate::slots::Slots;
use crate::state::Shared;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    /// Bearer token for mutating requests (and reads unless public).
    pub token: Option<String>,
    pub public_reads: bool,
    /// Where uploads land before they are flashed.
    pub upload_dir: PathBuf,
    /// Saved flagged frames.
    pub flagged_dir: PathBuf,
    pub max_upload: u64,
    pub slots: Option<Slots>,
    /// A healthy pipeline has scored a frame within this many seconds.
    pub stale_after_s: f64,
}

/// An error as the client sees it.
#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub message: String,
}

impl AppError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A failure whose detail stays in the log.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("request failed: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (see the device log)",
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Constant-time comparison of the presented token with the configured one.
fn token_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `token=` value of a URI's query.
fn query_token(uri: &Uri) -> Option<&str> {
    uri.query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
}

/// The token in the `Authorization` header, or in the query of a GET (or HEAD) only.
fn presented_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION)
        && let Ok(s) = v.to_str()
        && let Some(t) = s.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_string());
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    query_token(req.uri()).map(str::to_string)
}

/// `uri` as logged: any `token=` value replaced.
fn redacted(uri: &Uri) -> String {
    match uri.query() {
        Some(q) if query_token(uri).is_some() => {
            let q: Vec<&str> = q
                .split('&')
                .map(|kv| {
                    if kv.starts_with("token=") {
                        "token=REDACTED"
                    } else {
                        kv
                    }
                })
                .collect();
            format!("{}?{}", uri.path(), q.join("&"))
        }
        _ => uri.to_string(),
    }
}

fn authorized(st: &AppState, req: &Request) -> Result<(), AppError> {
    let Some(expected) = &st.token else {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "this device has no token configured (web.token-file); the request is refused",
        ));
    };
    match presented_token(req) {
        Some(t) if token_matches(expected, &t) => Ok(()),
        Some(_) => Err(AppError::new(StatusCode::UNAUTHORIZED, "wrong token")),
        None if query_token(req.uri()).is_some() => Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "?token= is accepted on GET only; send Authorization: Bearer TOKEN",
        )),
        None => Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "this request needs the device token (Authorization: Bearer TOKEN)",
        )),
    }
}

async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match authorized(&st, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn require_read(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.public_reads {
        return next.run(req).await;
    }
    match authorized(&st, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Whether `host` (a `Host` header: name or address, optional port) may reach the device.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let is_port = |p: &str| !p.is_empty() && p.parse::<u16>().is_ok();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').is_some_and(|(ip, port)| {
            ip.parse::<Ipv6Addr>().is_ok()
                && (port.is_empty() || port.strip_prefix(':').is_some_and(is_port))
        });
    }
    let name = match host.split_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names
            .iter()
            .any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name))
}

async fn check_host(State(names): State<Arc<Vec<String>>>, req: Request, next: Next) -> Response {
    let header = req.headers().get(header::HOST).map(|h| h.to_str());
    let ok = match header {
        Some(Ok(h)) => host_allowed(h, &names),
        Some(Err(_)) => false,
        None => true,
    } && req
        .uri()
        .authority()
        .is_none_or(|a| host_allowed(a.as_str(), &names));
    if ok {
        return next.run(req).await;
    }
    AppError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "unknown host name: use the device's IP address, localhost, or a name in web.hostnames",
    )
    .into_response()
}

/// Answers 503 beyond the cap; the permit lives as long as the stream's body.
async fn cap_event_streams(
    State(slots): State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(permit) = slots.try_acquire_owned() else {
        return AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open status pages (web.max-event-streams): close one and reload",
        )
        .into_response();
    };
    next.run(req).await.map(|b| {
        Body::new(b.map_frame(move |f| {
            let _ = &permit;
            f
        }))
    })
}

/// The whole HTTP interface with the default `[web]` limits.
pub fn app(state: AppState) -> Router {
    app_with(state, &WebConfig::default())
}

/// The whole HTTP interface within `web`'s limits (host names, event streams, body stalls).
pub fn app_with(state: AppState, web: &WebConfig) -> Router {
    let streams = Arc::new(Semaphore::new(web.max_event_streams));
    let hostnames = Arc::new(web.hostnames.clone());
    let max_upload = usize::try_from(state.max_upload).unwrap_or(usize::MAX);
    let reads = Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::asset))
        .route("/api/status", get(api::status))
        .route("/api/alerts", get(alerts::list))
        .route("/api/scores", get(api::scores))
        .route(
            "/api/events",
            get(api::events).layer(middleware::from_fn_with_state(streams, cap_event_streams)),
        )
        .route("/api/frame.jpg", get(api::frame))
        .route("/api/thumbnail/{index}", get(api::thumbnail))
        .route("/api/flagged/{file}", get(alerts::flagged))
        .route(
            "/api/flagged/{file}/thumb.jpg",
            get(alerts::flagged_thumbnail),
        )
        .route("/api/overlay", get(overlay::list))
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    let writes = Router::new()
        .route(
            "/api/bundle",
            post(api::upload_bundle).layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            "/api/alerts/ack",
            post(alerts::acknowledge).layer(DefaultBodyLimit::max(4096)),
        )
        .route(
            "/api/overlay/mark",
            post(overlay::mark).layer(DefaultBodyLimit::max(4096)),
        )
        .route(
            "/api/overlay/undo",
            post(overlay::undo).layer(DefaultBodyLimit::max(4096)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(reads)
        .merge(writes)
        .route("/healthz", get(api::healthz))
        .fallback(|| async { AppError::new(StatusCode::NOT_FOUND, "no such page") })
        .with_state(state)
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_millis(web.idle_timeout_ms),
        ))
        .layer(middleware::from_fn_with_state(hostnames, check_host))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &Request| {
                tracing::debug_span!(
                    "request",
                    method = %req.method(),
                    uri = %redacted(req.uri()),
                    version = ?req.version(),
                )
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_ip_literals_and_localhost_pass_others_do_not() {
        let names = ["cam-1.plant.local".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:80",
            "[::1]:8080",
            "[fe80::1]",
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "cam-1.plant.local",
            "Cam-1.Plant.Local:8080",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "cam-1.plant.local.evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::1",
            "[::1]x",
            "localhost:http",
            "",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
    }

    #[test]
    fn logged_uris_hide_the_token() {
        let u: Uri = "/api/events?a=1&token=s3cret&b=2".parse().unwrap();
        assert_eq!(redacted(&u), "/api/events?a=1&token=REDACTED&b=2");
        let u: Uri = "/api/alerts?limit=5".parse().unwrap();
        assert_eq!(redacted(&u), "/api/alerts?limit=5");
    }
}

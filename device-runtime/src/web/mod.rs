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
//! "read" is public when the config says `public-reads = true`, otherwise it needs the token too
//! (as `Authorization: Bearer TOKEN`, or `?token=TOKEN` for the page's event stream). Every
//! mutating route needs the token; without a configured token they are refused. Errors answer
//! with a short reason and never with internals (paths, backtraces); details go to the log.

mod alerts;
mod api;
mod assets;
mod metrics;
mod overlay;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

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

fn presented_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION)
        && let Ok(s) = v.to_str()
        && let Some(t) = s.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_string());
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    })
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

/// The whole HTTP interface.
pub fn app(state: AppState) -> Router {
    let max_upload = usize::try_from(state.max_upload).unwrap_or(usize::MAX);
    let reads = Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::asset))
        .route("/api/status", get(api::status))
        .route("/api/alerts", get(alerts::list))
        .route("/api/scores", get(api::scores))
        .route("/api/events", get(api::events))
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
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

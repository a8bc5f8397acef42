//! JSON API handlers, the event stream, the live frame and bank thumbnails, health and the bundle
//! upload. The alert list and the flagged frames are in `alerts`.

use std::convert::Infallible;
use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{BroadcastStream, WatchStream};

use super::{AppError, AppState};
use crate::slots::SlotError;
use crate::state::Event;

/// The status page's and monitoring's view of the device.
pub fn status_json(st: &AppState) -> Value {
    let live = st.shared.live.read().expect("state lock");
    let uptime = SystemTime::now()
        .duration_since(st.shared.started)
        .map_or(0.0, |d| d.as_secs_f64());
    json!({
        "site": st.shared.site,
        "uptime-s": uptime,
        "health": health(st, &live).1,
        "bundle": live.bundle,
        "slots": live.slots,
        "camera": live.camera,
        "counters": live.counters,
        "fps": live.fps(),
        "latency-ms": {
            "p50": live.latency_quantile(0.5),
            "p99": live.latency_quantile(0.99),
        },
        "last": live.last,
        "alerts": st.shared.ledger.get().map(|l| l.counts()),
        "drift": live.drift,
        "overlay": super::overlay::summary(&st.shared.overlay.status.read().expect("overlay lock")),
        "state-fs": st.shared.state_fs.status(),
    })
}

/// (healthy, reason)
pub fn health(st: &AppState, live: &crate::state::Live) -> (bool, String) {
    if live.bundle.is_none() {
        return (false, "no bundle loaded".into());
    }
    if let Some(why) = &live.camera.panicked {
        return (false, format!("the capture thread panicked: {why}"));
    }
    if live.camera.finished {
        return (true, "source finished".into());
    }
    match &live.last {
        None => (false, "no frame scored yet".into()),
        Some(v) => {
            let age = humantime::parse_rfc3339(&v.time)
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            if age > st.stale_after_s {
                (false, format!("no frame scored for {age:.0} s"))
            } else {
                (true, "ok".into())
            }
        }
    }
}

pub async fn status(State(st): State<AppState>) -> Json<Value> {
    Json(status_json(&st))
}

pub async fn healthz(State(st): State<AppState>) -> Response {
    let (ok, why) = health(&st, &st.shared.live.read().expect("state lock"));
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, why).into_response()
}

pub async fn scores(State(st): State<AppState>) -> Json<Value> {
    let live = st.shared.live.read().expect("state lock");
    let points: Vec<Value> = live
        .recent
        .iter()
        .map(|(seq, d, defect)| json!([seq, d, defect]))
        .collect();
    Json(json!({
        "threshold": live.bundle.as_ref().map(|b| b.threshold),
        "scores": points,
    }))
}

pub async fn events(
    State(st): State<AppState>,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    enum Item {
        Event(Box<Event>),
        Close,
    }
    let events = BroadcastStream::new(st.shared.events.subscribe())
        // A lagging page skips events rather than slowing anyone down.
        .filter_map(|e| e.ok().map(|e| Item::Event(Box::new(e))));
    let closing = WatchStream::new(st.shared.closing.subscribe())
        .filter_map(|closing| closing.then_some(Item::Close));
    let stream = events
        .merge(closing)
        .take_while(|i| !matches!(i, Item::Close))
        .filter_map(|i| {
            let Item::Event(e) = i else { return None };
            let name = match &*e {
                Event::Verdict(_) => "verdict",
                Event::Alert(_) => "alert",
                Event::Bundle(_) => "bundle",
                Event::Ack(_) => "ack",
                Event::Drift(_) => "drift",
                Event::Overlay(_) => "overlay",
            };
            let data = serde_json::to_value(&*e).ok()?;
            SseEvent::default().event(name).json_data(data).ok().map(Ok)
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub(super) fn bytes_response(content_type: &'static str, body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

pub async fn frame(State(st): State<AppState>) -> Result<Response, AppError> {
    let jpeg = st
        .shared
        .live
        .read()
        .expect("state lock")
        .last_frame
        .clone();
    let jpeg = jpeg.ok_or_else(|| AppError::new(StatusCode::NOT_FOUND, "no frame yet"))?;
    Ok(bytes_response("image/jpeg", jpeg.as_ref().clone()))
}

pub async fn thumbnail(
    State(st): State<AppState>,
    Path(index): Path<usize>,
) -> Result<Response, AppError> {
    let img = st
        .shared
        .thumbnails
        .read()
        .expect("state lock")
        .get(index)
        .ok_or_else(|| AppError::new(StatusCode::NOT_FOUND, "no such bank entry"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(AppError::internal)?;
    Ok(bytes_response("image/png", png.into_inner()))
}

/// `POST /api/bundle`: the body is a bundle file. Streamed to disk within the size limit, then
/// flashed exactly as `device-runtime flash` does; the pipeline switches to it between frames.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UploadQuery {
    /// Mark the frames marked good under the active bundle again under the new one.
    #[serde(default)]
    carry_overlay: bool,
}

/// An upload's temporary file (`upload-<pid>-<n>.firm` in the upload folder), removed however
/// the request ends: flashed, refused, failed to write (a full disk), or dropped with the
/// handler's future when the client goes away mid-body.
struct UploadFile(std::path::PathBuf);

impl UploadFile {
    const PREFIX: &'static str = "upload-";
    const SUFFIX: &'static str = ".firm";

    fn new(dir: &std::path::Path) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        Self(dir.join(format!("{}{pid}-{n}{}", Self::PREFIX, Self::SUFFIX)))
    }
}

impl Drop for UploadFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Remove the upload files a crash or power cut left in `dir` (at start, before the server
/// runs); how many.
pub fn remove_stale_uploads(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(UploadFile::PREFIX)
            && name.ends_with(UploadFile::SUFFIX)
            && e.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(e.path()).is_ok()
        {
            tracing::info!(
                "removed {}, left by an interrupted upload",
                e.path().display()
            );
            removed += 1;
        }
    }
    removed
}

pub async fn upload_bundle(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<UploadQuery>,
    body: Body,
) -> Result<Response, AppError> {
    let Some(slots) = st.slots.clone() else {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "slots are not available",
        ));
    };
    tokio::fs::create_dir_all(&st.upload_dir)
        .await
        .map_err(AppError::internal)?;
    let upload = UploadFile::new(&st.upload_dir);
    let path = upload.0.clone();
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(AppError::internal)?;
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|_| AppError::new(StatusCode::BAD_REQUEST, "upload interrupted"))?;
        total += chunk.len() as u64;
        if total > st.max_upload {
            return Err(AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "bundle larger than bundles.max-bytes ({} bytes)",
                    st.max_upload
                ),
            ));
        }
        file.write_all(&chunk).await.map_err(AppError::internal)?;
    }
    file.sync_all().await.map_err(AppError::internal)?;
    drop(file);
    let shared = st.shared.clone();
    let p = path.clone();
    let carry_dir = q
        .carry_overlay
        .then(|| st.shared.overlay.config.get().map(|c| c.dir.clone()))
        .flatten();
    let result = tokio::task::spawn_blocking(move || {
        let from = slots.active_sha256();
        let (flashed, loaded) = slots.flash(&p, false)?;
        if let (Some(dir), Some(from)) = (&carry_dir, from)
            && let Err(e) = crate::overlay::Carry::request(dir, &from, &loaded.summary.sha256)
        {
            tracing::warn!("the overlay will not be carried over: {e}");
        }
        *shared.pending_bundle.lock().expect("state lock") = Some(loaded);
        shared.live.write().expect("state lock").slots = Some(slots.status());
        Ok::<_, SlotError>(flashed)
    })
    .await
    .map_err(AppError::internal)?;
    drop(upload);
    match result {
        Ok(f) => Ok(Json(json!({
            "slot": f.slot,
            "bundle-version": f.bundle.bundle_version,
            "product-class": f.bundle.product_class,
        }))
        .into_response()),
        Err(e @ SlotError::Flash { .. }) => Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
        Err(e) => Err(AppError::internal(e)),
    }
}

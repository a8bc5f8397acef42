//! Frames marked good ([`crate::overlay`]):
//!
//! - `GET /api/overlay`: the overlay in force for the active bundle (entries, patch rows, the
//!   bounds, why a file was refused or why marks are unavailable).
//! - `POST /api/overlay/mark` (token) with `{"alert": SEQ}`: mark the alert with that journal
//!   seq good. The answer holds the entry and the frame's distance before and after; the
//!   threshold does not move.
//! - `POST /api/overlay/undo` (token) with `{"entry": ID}`: undo a mark.
//!
//! Both are carried out by the inference thread between two frames (so the next frame is scored
//! with the change) and journaled; 404 for an unknown alert or entry, 409 when the mark cannot
//! be made (already marked, frame no longer saved, bounds reached), 503 when no bundle runs.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppError, AppState};
use crate::overlay::{Answer, Refusal, Request, Status};

/// How long a request waits for the inference thread.
const WAIT: Duration = Duration::from_secs(30);

/// What `/api/status` says about the overlay.
pub fn summary(s: &Status) -> Value {
    json!({
        "entries": s.entries.len(),
        "max-entries": s.max_entries,
        "patch-rows": s.patch_rows,
        "refused": s.refused,
        "unavailable": s.unavailable,
    })
}

pub async fn list(State(st): State<AppState>) -> Json<Status> {
    Json(
        st.shared
            .overlay
            .status
            .read()
            .expect("overlay lock")
            .clone(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkRequest {
    alert: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UndoRequest {
    entry: u64,
}

async fn ask(st: &AppState, r: Request) -> Result<Json<Answer>, AppError> {
    let rx = st.shared.overlay.ask(r);
    let answer = tokio::time::timeout(WAIT, rx).await.map_err(|_| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no bundle is scoring frames, so nothing can be marked now",
        )
    })?;
    let answer = answer.map_err(|_| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the inference thread stopped before answering",
        )
    })?;
    match answer {
        Ok(a) => Ok(Json(a)),
        Err(Refusal::NotFound(m)) => Err(AppError::new(StatusCode::NOT_FOUND, m)),
        Err(Refusal::Conflict(m)) => Err(AppError::new(StatusCode::CONFLICT, m)),
        Err(Refusal::Unavailable(m)) => Err(AppError::new(StatusCode::SERVICE_UNAVAILABLE, m)),
        Err(Refusal::Failed(m)) => Err(AppError::internal(m)),
    }
}

pub async fn mark(State(st): State<AppState>, body: Bytes) -> Result<Json<Answer>, AppError> {
    let req: MarkRequest = serde_json::from_slice(&body).map_err(|_| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            r#"the body must be {"alert": N}, N an alert's journal seq"#,
        )
    })?;
    ask(&st, Request::Mark { alert: req.alert }).await
}

pub async fn undo(State(st): State<AppState>, body: Bytes) -> Result<Json<Answer>, AppError> {
    let req: UndoRequest = serde_json::from_slice(&body).map_err(|_| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            r#"the body must be {"entry": N}, N an overlay entry's id"#,
        )
    })?;
    ask(&st, Request::Undo { entry: req.entry }).await
}

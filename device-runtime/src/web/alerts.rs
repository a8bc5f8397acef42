//! The alert list in pages, acknowledging alerts, and the flagged frames with their thumbnails.
//!
//! `GET /api/alerts` without parameters answers as it always has: the alerts held in memory for
//! the page (the last [`RECENT_ALERTS`](crate::state::RECENT_ALERTS)), oldest first, and `total`,
//! the alerts of this run. With `limit` (1..=[`MAX_PAGE`], default [`DEFAULT_PAGE`]) and/or
//! `before` (a journal seq) it answers one page from the journal: the `limit` newest alerts below
//! `before`, oldest first, with `next-before` for the page before them (null at the oldest).
//! Both add `acknowledged` to each alert and `unacknowledged` (and a page `in-journal`) to the
//! answer.
//!
//! `POST /api/alerts/ack` (token) with `{"alert": N}` acknowledges the alert whose journal seq is
//! N; with `{"up-to": N}`, every alert up to journal seq N. The answer (and the `ack` event) is a
//! [`ledger::Acknowledged`](crate::alerts::ledger::Acknowledged).
//!
//! `GET /api/flagged/{file}` is the saved PNG; `GET /api/flagged/{file}/thumb.jpg` its thumbnail,
//! which never changes, so the browser may keep it. Both serve plain files only: a symlink in the
//! folder answers 404 ([`flagged::read_saved`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::bytes_response;
use super::{AppError, AppState};
use crate::alerts::flagged;
use crate::alerts::ledger::{Ack, AckError, Ledger, Listed};
use crate::state::{AlertEntry, Event};

/// Alerts in a page unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 20;
/// The largest `limit`.
pub const MAX_PAGE: usize = 200;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

fn no_ledger() -> AppError {
    AppError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the alert journal is not open",
    )
}

/// The journal takes an alert before its frame is saved, so an alert read back from the journal
/// (a page, or the list after a restart) names no files: they follow from its verdict, and are
/// named when they are there.
fn with_files(dir: &std::path::Path, a: &mut AlertEntry) {
    let stem = flagged::stem_of(&a.verdict);
    if a.image.is_none() {
        let png = format!("{stem}.png");
        if dir.join(&png).is_file() {
            a.image = Some(png);
        }
    }
    if a.heat_image.is_none() {
        let heat = format!("{stem}{}", flagged::HEAT_SUFFIX);
        if dir.join(&heat).is_file() {
            a.heat_image = Some(heat);
        }
    }
}

/// An alert of the in-memory list with its acknowledgement, as a page lists it.
fn listed(ledger: Option<&Ledger>, a: &AlertEntry) -> Listed {
    let acknowledged = ledger
        .zip(a.journal_seq)
        .and_then(|(l, seq)| l.is_acknowledged(seq))
        .unwrap_or(false);
    Listed {
        alert: a.clone(),
        acknowledged,
    }
}

pub async fn list(
    State(st): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = query.map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            format!("limit and before must be whole numbers: {}", e.body_text()),
        )
    })?;
    let ledger = st.shared.ledger.get().cloned();
    let counts = ledger.as_ref().map(|l| l.counts());
    if q.limit.is_none() && q.before.is_none() {
        let live = st.shared.live.read().expect("state lock");
        let mut alerts: Vec<Listed> = live
            .alerts
            .iter()
            .map(|a| listed(ledger.as_deref(), a))
            .collect();
        for a in &mut alerts {
            with_files(&st.flagged_dir, &mut a.alert);
        }
        return Ok(Json(json!({
            "alerts": alerts,
            "total": live.counters.alerts,
            "unacknowledged": counts.map(|c| c.unacknowledged),
        })));
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_PAGE}, not {limit}"),
        ));
    }
    let ledger = ledger.ok_or_else(no_ledger)?;
    let before = q.before;
    let dir = st.flagged_dir.clone();
    let page = tokio::task::spawn_blocking(move || {
        let mut page = ledger.page(before, limit);
        for a in &mut page.alerts {
            with_files(&dir, &mut a.alert);
        }
        page
    })
    .await
    .map_err(AppError::internal)?;
    let total = st.shared.live.read().expect("state lock").counters.alerts;
    let counts = counts.ok_or_else(no_ledger)?;
    Ok(Json(json!({
        "alerts": page.alerts,
        "total": total,
        "in-journal": counts.in_journal,
        "unacknowledged": counts.unacknowledged,
        "next-before": page.next_before,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct AckRequest {
    alert: Option<u64>,
    up_to: Option<u64>,
}

const ACK_BODY: &str = r#"the body must be {"alert": N} or {"up-to": N}, N a journal seq"#;

pub async fn acknowledge(State(st): State<AppState>, body: Bytes) -> Result<Response, AppError> {
    let bad = || AppError::new(StatusCode::BAD_REQUEST, ACK_BODY);
    let req: AckRequest = serde_json::from_slice(&body).map_err(|_| bad())?;
    let ack = match (req.alert, req.up_to) {
        (Some(seq), None) => Ack::Alert(seq),
        (None, Some(seq)) => Ack::UpTo(seq),
        _ => return Err(bad()),
    };
    let ledger = st.shared.ledger.get().cloned().ok_or_else(no_ledger)?;
    let done = tokio::task::spawn_blocking(move || ledger.acknowledge(ack))
        .await
        .map_err(AppError::internal)?;
    match done {
        Ok(a) => {
            tracing::info!(
                alert = a.alert,
                up_to = a.up_to,
                acknowledged = a.acknowledged,
                unacknowledged = a.unacknowledged,
                "alerts acknowledged"
            );
            if a.acknowledged > 0 {
                st.shared.publish(Event::Ack(a.clone()));
            }
            Ok(Json(a).into_response())
        }
        Err(e @ AckError::NotAnAlert { .. }) => {
            Err(AppError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => Err(AppError::internal(e)),
    }
}

/// Saved frames are named `<digits/letters>-<digits>.png` (their heat maps `.heat.jpg`);
/// anything else is not one of ours.
fn safe_flagged_name(name: &str) -> bool {
    name.len() <= 80
        && (name.ends_with(".png") || name.ends_with(flagged::HEAT_SUFFIX))
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.contains("..")
}

fn no_image() -> AppError {
    AppError::new(StatusCode::NOT_FOUND, "no such image")
}

pub async fn flagged(
    State(st): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, AppError> {
    if !safe_flagged_name(&file) {
        return Err(no_image());
    }
    let kind = if file.ends_with(".png") {
        "image/png"
    } else {
        "image/jpeg"
    };
    // Not tokio::fs::read: it follows a symlink placed in the folder to whatever it names.
    let path = st.flagged_dir.join(&file);
    match tokio::task::spawn_blocking(move || flagged::read_saved(&path))
        .await
        .map_err(AppError::internal)?
    {
        Ok(b) => Ok(bytes_response(kind, b)),
        Err(_) => Err(no_image()),
    }
}

pub async fn flagged_thumbnail(
    State(st): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, AppError> {
    if !safe_flagged_name(&file) {
        return Err(no_image());
    }
    let dir = st.flagged_dir.clone();
    let jpeg = tokio::task::spawn_blocking(move || flagged::thumbnail_for(&dir, &file))
        .await
        .map_err(AppError::internal)?;
    match jpeg {
        Ok(b) => Ok((
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "private, max-age=86400"),
            ],
            b,
        )
            .into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(no_image()),
        Err(e) => Err(AppError::internal(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_flagged_name;

    #[test]
    fn flagged_names_cannot_escape() {
        assert!(safe_flagged_name("20261201T125000123Z-00000042.png"));
        for bad in ["../x.png", "a/b.png", "x.json", "..png", "%2e%2e.png", ""] {
            assert!(!safe_flagged_name(bad), "{bad}");
        }
    }
}

//! `GET /metrics`: Prometheus text exposition format (version 0.0.4), checked with
//! `promtool check metrics` in CI. Counters end in `_total`, durations are in seconds.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use firm_shared::drift::DriftKind;

use super::AppState;

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// Label values escaped as the format requires (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(st: &AppState) -> String {
    let live = st.shared.live.read().expect("state lock");
    let c = &live.counters;
    let mut s = String::new();
    let counters: [(&str, &str, u64); 7] = [
        (
            "firm_frames_captured_total",
            "Frames delivered by the source.",
            c.frames_captured,
        ),
        (
            "firm_frames_scored_total",
            "Frames scored by the bundle.",
            c.frames_scored,
        ),
        (
            "firm_frames_dropped_total",
            "Frames dropped because inference was behind (newest wins).",
            c.frames_dropped,
        ),
        (
            "firm_bad_frames_total",
            "Frames that could not be decoded or scored.",
            c.bad_frames,
        ),
        (
            "firm_alerts_total",
            "Frames flagged as defective.",
            c.alerts,
        ),
        (
            "firm_alert_sink_errors_total",
            "Alert sink failures (journal, images, webhook, GPIO).",
            c.sink_errors,
        ),
        (
            "firm_camera_reconnects_total",
            "Times the camera was reopened.",
            live.camera.reconnects,
        ),
    ];
    for (name, help, v) in counters {
        metric(&mut s, name, "counter", help, v as f64);
    }
    metric(
        &mut s,
        "firm_frames_per_second",
        "gauge",
        "Frames scored per second, recent.",
        live.fps(),
    );
    for (q, name) in [
        (0.5, "firm_latency_p50_seconds"),
        (0.99, "firm_latency_p99_seconds"),
    ] {
        if let Some(v) = live.latency_quantile(q) {
            metric(
                &mut s,
                name,
                "gauge",
                "Capture-to-verdict latency quantile over recent frames.",
                v / 1e3,
            );
        }
    }
    metric(
        &mut s,
        "firm_camera_connected",
        "gauge",
        "1 when the frame source is connected.",
        f64::from(u8::from(live.camera.connected)),
    );
    metric(
        &mut s,
        "firm_state_fs_full",
        "gauge",
        "1 while the state filesystem is full: frames are scored, alerts not journaled.",
        f64::from(u8::from(st.shared.state_fs.is_full_now())),
    );
    if let Some(v) = &live.last {
        metric(
            &mut s,
            "firm_last_distance",
            "gauge",
            "Distance from normal of the latest frame.",
            v.distance,
        );
    }
    if let Some(b) = &live.bundle {
        metric(
            &mut s,
            "firm_threshold_distance",
            "gauge",
            "Distance above which a frame is flagged.",
            b.threshold,
        );
        let _ = writeln!(
            s,
            "# HELP firm_bundle_info The bundle in use (value is always 1)."
        );
        let _ = writeln!(s, "# TYPE firm_bundle_info gauge");
        let _ = writeln!(
            s,
            "firm_bundle_info{{class=\"{}\",version=\"{}\",slot=\"{}\",operating_point=\"{}\"}} 1",
            label(&b.product_class),
            b.bundle_version,
            label(&b.slot),
            label(&b.operating_point)
        );
        let _ = writeln!(
            s,
            "# HELP firm_backend_info Where the encoder runs (value is always 1)."
        );
        let _ = writeln!(s, "# TYPE firm_backend_info gauge");
        let _ = writeln!(
            s,
            "firm_backend_info{{backend=\"{}\",device=\"{}\"}} 1",
            label(&b.backend),
            label(&b.device)
        );
    }
    if let Some(ledger) = st.shared.ledger.get() {
        metric(
            &mut s,
            "firm_alerts_unacknowledged",
            "gauge",
            "Alerts in the journal that no operator has acknowledged.",
            ledger.counts().unacknowledged as f64,
        );
        // The journal's head, for a copy kept off the device (see alerts::journal, checkpoint).
        let head = ledger.head();
        metric(
            &mut s,
            "firm_journal_head_seq",
            "gauge",
            "Seq of the journal's last record (the head of its hash chain).",
            head.seq as f64,
        );
        family(
            &mut s,
            "firm_journal_head_info",
            "gauge",
            "The journal's head: seq and hash of its last record (value is always 1).",
        );
        let _ = writeln!(
            s,
            "firm_journal_head_info{{seq=\"{}\",hash=\"{}\"}} 1",
            head.seq,
            label(&head.hash)
        );
    }
    drift(&mut s, &live.drift);
    metric(
        &mut s,
        "firm_overlay_entries",
        "gauge",
        "Frames an operator marked good that are in force for the active bundle.",
        st.shared
            .overlay
            .status
            .read()
            .expect("overlay lock")
            .entries
            .len() as f64,
    );
    let healthy = super::api::health(st, &live).0;
    metric(
        &mut s,
        "firm_healthy",
        "gauge",
        "1 when a bundle runs and frames flow.",
        f64::from(u8::from(healthy)),
    );
    s
}

/// Family header for metrics with labels.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The drift sentinel ([`crate::drift`]): which warnings are raised, and the numbers they are
/// decided on. Without drift statistics in the bundle only the counter is written.
fn drift(s: &mut String, d: &crate::drift::DriftState) {
    metric(
        s,
        "firm_drift_warnings_total",
        "counter",
        "Drift warnings raised (image statistics out of the training range, or passing distances shifted).",
        d.raised as f64,
    );
    let Some(st) = &d.status else { return };
    family(
        s,
        "firm_drift_active",
        "gauge",
        "1 while the drift warning of this kind is raised.",
    );
    for k in DriftKind::ALL {
        let _ = writeln!(
            s,
            "firm_drift_active{{kind=\"{}\"}} {}",
            k.name(),
            u8::from(st.active(k))
        );
    }
    family(
        s,
        "firm_drift_window_median",
        "gauge",
        "Median of an image statistic over the drift window (absent until the window is full).",
    );
    for x in st.statistics.iter().filter(|x| x.median.is_some()) {
        let m = x.median.unwrap_or_default();
        let _ = writeln!(
            s,
            "firm_drift_window_median{{statistic=\"{}\"}} {m}",
            x.statistic.name()
        );
    }
    family(
        s,
        "firm_drift_range",
        "gauge",
        "An image statistic's training range (p1, p99) and the range its window median may reach (allowed-low, allowed-high).",
    );
    for x in &st.statistics {
        let bounds = [
            ("p1", x.training[0]),
            ("p99", x.training[1]),
            ("allowed-low", x.allowed[0]),
            ("allowed-high", x.allowed[1]),
        ];
        for (bound, v) in bounds {
            let _ = writeln!(
                s,
                "firm_drift_range{{statistic=\"{}\",bound=\"{bound}\"}} {v}",
                x.statistic.name()
            );
        }
    }
    let dist = &st.distance;
    let gauges = [
        (
            "firm_drift_distance_window",
            "Passing frames in the distance window.",
            dist.window as f64,
        ),
        (
            "firm_drift_distance_above",
            "Of them, above the calibration's 90th percentile.",
            dist.above as f64,
        ),
        (
            "firm_drift_distance_expected",
            "How many the binomial null expects above it (window x null share).",
            dist.expected,
        ),
        (
            "firm_drift_distance_tail",
            "The calibration's 90th percentile distance.",
            dist.tail_distance,
        ),
    ];
    for (name, help, v) in gauges {
        metric(s, name, "gauge", help, v);
    }
    if let Some(p) = dist.p_value {
        metric(
            s,
            "firm_drift_distance_p_value",
            "gauge",
            "One-sided binomial p-value of the count above the 90th percentile (a warning below alpha).",
            p,
        );
    }
}

pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&st),
    )
}

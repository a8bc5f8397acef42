//! The load test's short form (issue 18; the full form is `scripts/load-test`): the real binary,
//! allowed 1,024 open files like a default service, scores a looping `dir:` of PNG frames at
//! 10 fps with every frame an alert, while 200 half-sent connections are held (each one it
//! closes is reopened), 50 event streams are opened and 8 clients flood /api/status and
//! /api/frame.jpg for 5 s. The device runs with `max-connections = 64`, `max-event-streams = 16`.
//! Asserted, against a 5 s window without load just before:
//! - the pipeline keeps its pace: frames scored under load at least 99 % of fps x seconds (two
//!   frames' slack for the window edges), at most 1 % more dropped than without load, and no
//!   frame skipped by the source (EMFILE showed there);
//! - the journal keeps appending: one alert per scored frame;
//! - /healthz on a fresh connection answers 200 within 100 ms at p99, failing at most once;
//! - the device never holds more than 64 + 64 descriptors (the cap with the few still closing,
//!   and what the pipeline needs: 17 without load), and at most 16 event streams are open.
//!
//! With `axum::serve` the 200 idle connections and 50 streams were all held (over 250
//! descriptors), and at 1,140 the source failed to open frames.

use std::time::Duration;

use firm_e2e::load::{Bench, LoadSpec, run};

const FPS: f64 = 10.0;
const MAX_CONNECTIONS: usize = 64;
const MAX_STREAMS: usize = 16;
/// Descriptors the device may need beside the web server's connections (17 without load:
/// standard streams, listener, runtime, journal, logs) and the 8 it may still be closing.
const PIPELINE_FDS: usize = 64;

#[test]
fn the_line_keeps_scoring_and_healthz_answers_under_a_connection_flood() {
    let dir = tempfile::tempdir().unwrap();
    let bench = Bench::start(
        env!("CARGO_BIN_EXE_device-runtime").as_ref(),
        dir.path(),
        FPS,
        1024,
        &format!("max-connections = {MAX_CONNECTIONS}\nmax-event-streams = {MAX_STREAMS}"),
    );
    let f = run(&LoadSpec {
        addr: bench.addr,
        pid: bench.pid(),
        fps: FPS,
        idle: 200,
        sse: 50,
        clients: 8,
        duration: Duration::from_secs(5),
        baseline: Duration::from_secs(5),
    });
    println!("{f}");
    let base = f.baseline.as_ref().unwrap();
    let (w, g) = (&f.load, &f.got);
    let expected = FPS * w.seconds;
    assert!(
        w.grew.scored as f64 >= 0.99 * expected - 2.0,
        "the pipeline fell behind under load: {} scored of {expected:.0}\n{f}",
        w.grew.scored
    );
    let base_drop_rate = base.grew.dropped as f64 / base.seconds;
    assert!(
        w.grew.dropped as f64 <= base_drop_rate * w.seconds + 0.01 * expected + 1.0,
        "frames dropped under load\n{f}"
    );
    assert_eq!(w.grew.bad_frames, 0, "the source skipped frames\n{f}");
    assert!(
        w.grew.in_journal + 2 >= w.grew.scored && w.grew.in_journal > 0,
        "the journal fell behind\n{f}"
    );
    assert!(
        w.healthz_quantile(0.99) <= 100.0 && w.healthz_failed <= 1,
        "/healthz slow or failing under load\n{f}"
    );
    assert!(
        w.fds_max <= MAX_CONNECTIONS + PIPELINE_FDS,
        "the device held {} descriptors\n{f}",
        w.fds_max
    );
    assert!(
        g.streams_open <= MAX_STREAMS && g.streams_refused >= 50 - MAX_STREAMS,
        "event streams beyond the cap\n{f}"
    );
    assert!(g.answered_200 > 0, "the flood got nothing\n{f}");
}

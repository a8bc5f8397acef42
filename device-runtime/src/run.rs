//! `device-runtime run --config FILE`: the appliance. Counts the start (crash-loop detection),
//! loads the active bundle (rolling back when it fails), opens the frame source, starts the
//! pipeline and the alert sinks, serves the web page, and stops cleanly on SIGTERM or Ctrl-C
//! (or, with `--exit-at-end`, when a finite source has been scored to its last frame).
//!
//! Under systemd (`Type=notify`, hardware/systemd/firm-inspect.service) it sends `READY=1` once
//! the pipeline runs and the status page listens, feeds the watchdog from the pipeline's
//! heartbeat ([`crate::watchdog`]) when `WATCHDOG_USEC` is set, and `STOPPING=1` on shutdown.
//! Without `NOTIFY_SOCKET` all of that is a no-op.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use crate::alerts::AlertSink;
use crate::alerts::flagged::FlaggedFrames;
use crate::alerts::gpio::RejectLine;
use crate::alerts::journal::Seal;
use crate::alerts::journal_sink::JournalSink;
use crate::alerts::webhook::Webhook;
use crate::capture::{self, CaptureOptions, PixelFormat, SourceSpec};
use crate::config::DeviceConfig;
use crate::slots::{self, Slots};
use crate::state::{Shared, StateFs};
use crate::watchdog::{self, Notifier, NotifyState, Systemd};
use crate::web::{self, AppState};

/// A run that stays up this long with frames flowing counts as healthy (clears the crash-loop
/// counter).
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop when a non-looping `dir:` source has been scored to its last frame.
    pub exit_at_end: bool,
    /// Replaces `web.listen`.
    pub listen: Option<String>,
}

pub fn open_slots(cfg: &DeviceConfig) -> anyhow::Result<Slots> {
    let keys = cfg
        .bundles
        .trusted_keys
        .iter()
        .map(|p| slots::read_public_key(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bundles.trusted-keys: {e}"))?;
    // With a configured threshold any bundle will do; otherwise it must carry the operating
    // point the config reads, or the device would install a bundle it cannot start.
    let point = cfg
        .inference
        .threshold
        .is_none()
        .then(|| cfg.inference.operating_point.clone());
    Ok(Slots::new(&cfg.slots_dir(), keys, cfg.bundles.max_bytes)?
        .with_backend(cfg.inference.backend)
        .with_operating_point(point))
}

fn capture_options(cfg: &DeviceConfig) -> anyhow::Result<CaptureOptions> {
    let s = &cfg.source;
    let format: PixelFormat = s.format.parse()?;
    Ok(CaptureOptions {
        fps: s.fps,
        looping: s.looping,
        width: s.width,
        height: s.height,
        format,
        exposure_us: s.exposure_us,
        defect_every: s.defect_every,
        seed: 0,
    })
}

fn sinks(cfg: &DeviceConfig, shared: &Arc<Shared>) -> anyhow::Result<Vec<Box<dyn AlertSink>>> {
    let a = &cfg.alerts;
    // The device secret (created 0600 at first start) seals the journal's head outside it. A
    // first start on a full filesystem cannot create it: the journal then runs without its
    // checkpoint, and each append tries again (the first that can seals the head).
    let seal = match Seal::in_state_dir(&cfg.state_dir) {
        Ok(seal) => seal,
        Err(e) if StateFs::caused_by_full(&e) => {
            let why = format!(
                "the device secret could not be created ({e}): the journal runs without its \
                 HMAC checkpoint (deleting its newest records would not show) until space is \
                 freed; every append tries again"
            );
            warn!("{why}");
            shared.state_fs.journal_checkpoint_failed(why);
            Seal::deferred(&cfg.state_dir)
        }
        Err(e) => return Err(e.into()),
    };
    let journal = JournalSink::open_sealed(
        &cfg.journal_dir(),
        seal,
        a.journal_max_file_bytes,
        a.journal_max_files,
    )
    .map_err(|e| anyhow::anyhow!("journal {}: {e}", cfg.journal_dir().display()))?;
    shared.live.write().expect("state lock").alerts =
        journal.recent(crate::state::RECENT_ALERTS).into();
    let _ = shared.ledger.set(journal.ledger());
    let mut v: Vec<Box<dyn AlertSink>> =
        vec![Box::new(journal.with_state_fs(shared.state_fs.clone()))];
    if a.save_flagged {
        v.push(Box::new(
            FlaggedFrames::open(&cfg.flagged_dir(), a.flagged_budget_bytes)
                .map_err(anyhow::Error::msg)?
                .with_state_fs(shared.state_fs.clone()),
        ));
    }
    if let Some(w) = &a.webhook {
        v.push(Box::new(
            Webhook::start(w, &cfg.site).with_journal(shared.ledger.get().cloned()),
        ));
    }
    if let Some(g) = &a.gpio {
        v.push(Box::new(RejectLine::open(g).map_err(anyhow::Error::msg)?));
    }
    Ok(v)
}

pub fn run(cfg: &DeviceConfig, opts: &RunOptions) -> anyhow::Result<()> {
    // Everything that does not depend on the bundle comes first, so that a bad token file, a
    // journal or GPIO error, a busy port or a missing camera fails the start without counting
    // it against the bundle (the crash-loop counter only counts starts that reach the bundle).
    let slots = open_slots(cfg)?;
    let shared = Shared::new(&cfg.site);
    let token = cfg.token()?;
    let listen = opts
        .listen
        .clone()
        .unwrap_or_else(|| cfg.web.listen.clone());
    let listener = bind(&listen).with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    let spec: SourceSpec = cfg.source.spec.parse()?;
    let copts = capture_options(cfg)?;
    // A camera may be unplugged or not ready yet: reopen it with backoff. Replays open once.
    let source = match spec {
        SourceSpec::V4l { .. } => capture::open_with_retry_beating(
            &spec,
            &copts,
            capture::Backoff::default(),
            Some(shared.heartbeat.clone()),
        )?,
        _ => capture::open(&spec, &copts)?,
    };
    let sinks = sinks(cfg, &shared)?;
    let _ = shared.overlay.config.set(crate::overlay::DeskConfig {
        dir: cfg.overlay_dir(),
        flagged_dir: cfg.flagged_dir(),
        limits: cfg.overlay.clone(),
    });
    // Leftovers of flashes and uploads cut short by a crash or a power cut (a full disk
    // leaves none: failed writes remove their own).
    slots.remove_temporaries();
    web::remove_stale_uploads(&cfg.state_dir.join("uploads"));
    // A start that cannot be counted (a full state filesystem) still starts: the line must
    // keep being inspected. Only the crash-loop rollback goes without it.
    let starts = match slots.note_start() {
        Ok(n) => n,
        Err(e) => {
            let why = format!(
                "this start could not be counted ({e}): crash-loop protection is degraded (a \
                 bundle that keeps crashing at start is not rolled back) until a start is counted"
            );
            tracing::error!("{why}");
            shared.state_fs.boot_counter_failed(why);
            slots.boot_attempts()
        }
    };
    if starts > 1 {
        warn!("start {starts} without a healthy run in between");
    }
    let loaded = slots.load_active()?;
    if let Some(why) = &loaded.rolled_back {
        warn!("rolled back to slot {}: {why}", loaded.slot);
    }
    // A rollback that could not be recorded (a full state filesystem; load_active logged it)
    // still runs the good bundle. A healthy run then must not clear the boot counter: it
    // counts the slot that `active` still names, and the next start must roll back again.
    let rollback_recorded = loaded.persist_error.is_none();
    if let Some(why) = loaded.persist_error.clone() {
        shared.state_fs.rollback_not_recorded(why);
    }
    shared.live.write().expect("state lock").slots = Some(slots.status());
    let pipeline =
        crate::pipeline::start(shared.clone(), source, loaded, cfg.inference.clone(), sinks)
            .map_err(anyhow::Error::msg)?;
    let state = AppState {
        shared: shared.clone(),
        token,
        public_reads: cfg.web.reads_public(),
        upload_dir: cfg.state_dir.join("uploads"),
        flagged_dir: cfg.flagged_dir(),
        max_upload: cfg.bundles.max_bytes,
        slots: Some(slots.clone()),
        stale_after_s: 30.0,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // A flood of requests must not take the cores from the frame pipeline.
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let exit_at_end = opts.exit_at_end;
    let web_cfg = cfg.web.clone();
    let pipeline = Arc::new(std::sync::Mutex::new(Some(pipeline)));
    let p = pipeline.clone();
    let sh = shared.clone();
    // Set when the capture or the inference thread died: the run then ends with this error
    // (exit status 1), so that the service manager restarts it.
    let died: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let died_in = died.clone();
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).context("listener")?;
        let addr = listener.local_addr()?;
        // The address ends its line: scripts and tests read it from there.
        info!("status page on http://{addr}");
        if cfg.web.reads_public() {
            info!("reads (page, API, frames, metrics) are public");
        } else {
            info!(
                "reads need the token (web.public-reads is off, or left out on a non-loopback \
                 address)"
            );
        }
        let ready = format!("scoring frames; status page on http://{addr}");
        if let Err(e) = Systemd.notify(&[NotifyState::Ready, NotifyState::Status(&ready)]) {
            warn!("cannot notify the service manager: {e}");
        }
        // Stopped when this block ends (after the server has shut down).
        let _watchdog = match Systemd::watchdog_timeout() {
            Some(timeout) => {
                info!(
                    "systemd watchdog: {} ms, fed every {} ms while the pipeline moves",
                    timeout.as_millis(),
                    (timeout / 2).as_millis()
                );
                let st = sh.clone();
                Some(
                    watchdog::spawn(sh.heartbeat.clone(), timeout / 2, Systemd, move || {
                        status_line(&st)
                    })
                    .context("cannot start the watchdog thread")?,
                )
            }
            None => None,
        };
        let started = Instant::now();
        let shutdown = async move {
            let mut healthy_marked = false;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            loop {
                tokio::select! {
                    _ = &mut ctrl_c => { info!("Ctrl-C: stopping"); break; }
                    _ = term.recv() => { info!("SIGTERM: stopping"); break; }
                    _ = tick.tick() => {
                        let scored = sh.live.read().expect("state lock").counters.frames_scored;
                        // Checked first: a dead capture thread closes the mailbox, and the
                        // inference thread then finishes as if the source had ended.
                        let capture_panic = p.lock().expect("pipeline lock").as_ref().and_then(|p| p.capture_panic());
                        if let Some(why) = capture_panic {
                            tracing::error!("the capture thread panicked: {why}; stopping");
                            *died_in.lock().expect("died lock") = Some(format!(
                                "the capture thread panicked ({why}); no frame was being captured"
                            ));
                            break;
                        }
                        let finished = p.lock().expect("pipeline lock").as_ref().is_none_or(|p| p.is_finished());
                        if finished && let Some(done) = p.lock().expect("pipeline lock").take()
                            && let Err(why) = done.join_checked()
                        {
                            tracing::error!("the inference thread panicked: {why}; stopping");
                            *died_in.lock().expect("died lock") = Some(format!(
                                "the inference thread panicked ({why}); nothing was being scored"
                            ));
                            break;
                        }
                        if !healthy_marked && scored > 0 && (started.elapsed() >= HEALTHY_AFTER || finished) {
                            if rollback_recorded {
                                slots.mark_healthy();
                            }
                            healthy_marked = true;
                        }
                        if exit_at_end && finished {
                            info!("the source has ended and every frame is scored: stopping");
                            break;
                        }
                    }
                }
            }
            let _ = Systemd.notify(&[NotifyState::Stopping]);
            // End the open event streams, or the server would wait for them forever.
            let _ = sh.closing.send(true);
        };
        // Bounded: connections, event streams, header and body stalls (web::serve).
        web::serve::serve(listener, web::app_with(state, &web_cfg), &web_cfg, shutdown)
            .await
            .context("web server")
    });
    if let Some(p) = pipeline.lock().expect("pipeline lock").take() {
        p.stop();
        p.join();
    }
    if let Some(why) = died.lock().expect("died lock").take() {
        anyhow::bail!("{why}");
    }
    result
}

/// Pending connections the kernel queues before `accept` (capped by `net.core.somaxconn`, 4096
/// by default since Linux 5.4). Each SYN lost to a full queue costs its client a one-second
/// retry: std's 128 overflowed under a burst, and 1,024 still did when the full load test of
/// issue 18 opened 2,564 connections at once (one `/healthz` probe took 1,021 ms).
const LISTEN_BACKLOG: i32 = 4096;

/// Listen on `addr` (`host:port`) with [`LISTEN_BACKLOG`].
fn bind(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address");
    for a in addr.to_socket_addrs()? {
        let s = socket2::Socket::new(socket2::Domain::for_address(a), socket2::Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        match s.bind(&a.into()).and_then(|()| s.listen(LISTEN_BACKLOG)) {
            Ok(()) => return Ok(s.into()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Niceness of the web server's threads: below the capture and inference threads, so serving
/// requests takes what the pipeline leaves (lowering one's own priority needs no privilege).
const WEB_NICENESS: i32 = 10;

fn lower_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), WEB_NICENESS) {
        tracing::debug!("cannot lower the web thread's priority: {e}");
    }
}

/// The `STATUS=` line sent with each watchdog feed (shown by `systemctl status`).
fn status_line(sh: &Shared) -> String {
    let live = sh.live.read().expect("state lock");
    let c = &live.counters;
    format!(
        "{} frames scored, {} dropped, {} alerts; camera {}",
        c.frames_scored,
        c.frames_dropped,
        c.alerts,
        if live.camera.connected {
            "connected"
        } else {
            "disconnected"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_threads_run_below_the_pipeline() {
        let (mine, web) = std::thread::spawn(|| {
            let tid = rustix::thread::gettid();
            let before = rustix::process::getpriority_process(Some(tid)).unwrap();
            lower_priority();
            (
                before,
                rustix::process::getpriority_process(Some(tid)).unwrap(),
            )
        })
        .join()
        .unwrap();
        if mine <= WEB_NICENESS {
            assert_eq!(web, WEB_NICENESS, "niceness {mine} -> {web}");
        }
        // Only that thread: this one keeps its priority.
        let here = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(here, mine);
    }

    #[test]
    fn binds_with_its_backlog_and_names_bad_addresses() {
        let l = bind("127.0.0.1:0").unwrap();
        assert!(l.local_addr().unwrap().port() > 0);
        assert!(bind("not an address").is_err());
    }
}

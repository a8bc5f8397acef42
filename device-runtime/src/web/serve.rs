//! The web server's accept loop: hyper's HTTP/1 connection under a bounded accept loop, in place
//! of `axum::serve` (which sets no header-read timeout and accepts without a limit).
//!
//! Why: at the usual limit of 1,024 open files, 1,140 idle half-sent loopback connections to
//! `axum::serve` took every file descriptor. The frame source then failed to open images (EMFILE,
//! every frame skipped) and journaling stopped. Here:
//! - at most `web.max-connections` connections are open. A new connection beyond it closes the
//!   oldest one with no request in flight (idle, or still trickling its request head), so a fresh
//!   client such as a /healthz probe still gets in under a flood of idle connections. When every
//!   connection has a request or an event stream in flight, the new one gets a 503 written
//!   without waiting and is closed: nothing beyond the cap is served (closing ones included, the
//!   server holds at most `max-connections` + [`CLOSING`] + [`LINGER`] sockets). Up to [`LINGER`]
//!   refused connections are closed gracefully (FIN, then their request read and discarded for
//!   at most [`LINGER_FOR`]): closing a socket with unread bytes sends a reset, which can destroy
//!   the 503 before the client reads it; beyond that they are dropped at once;
//! - a connection that sends no complete request head for `web.idle-timeout-ms` (idle between
//!   requests, or a header trickled in byte by byte) is closed by hyper's header-read timeout;
//! - accept errors (EMFILE included) back off instead of spinning;
//! - on shutdown the loop stops accepting, every connection finishes its request and closes, and
//!   whatever is still open after [`SHUTDOWN_GRACE`] is dropped. The caller's shutdown future
//!   ends the event streams first (`Shared::closing`).
//!
//! Request bodies that stall and event streams beyond `web.max-event-streams` are handled in
//! the router ([`super::app_with`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::config::WebConfig;

/// How long a shutdown waits for requests in flight before it drops their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// File descriptors the rest of the process needs beside the web server's (camera or frame
/// files, journal, saved frames, overlay, webhook, runtime): a warning is logged when the
/// process's limit leaves fewer.
const FDS_FOR_PIPELINE: u64 = 128;
/// Connections closed for new ones that may still be closing: the accept loop waits for them
/// beyond this, so the server never holds more than `max-connections + CLOSING` sockets (plus the
/// one being refused).
const CLOSING: usize = 8;
/// Refused connections closed gracefully at once, at most (see the module docs).
const LINGER: usize = 16;
/// How long a refused connection's request is read and discarded before it is closed.
const LINGER_FOR: Duration = Duration::from_millis(250);
/// Refusals and evictions are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a connection refused at the cap is told, written without waiting.
fn busy_reply() -> Vec<u8> {
    let body = r#"{"error":"too many connections, all busy (web.max-connections); retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Close a refused connection so that its client can read the 503: end the reply (FIN), then
/// read and discard what the client still sends (its request) until it closes, 64 KiB or
/// [`LINGER_FOR`].
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER_FOR, async {
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// One open connection, as the accept loop sees it.
#[derive(Debug, Default)]
struct Conn {
    /// Requests whose response has not been sent to the end (event streams included).
    in_flight: AtomicUsize,
    /// Chosen to make room; no longer counted against the cap.
    evicted: AtomicBool,
    evict: Notify,
}

/// Counts a request in flight until dropped (with the response body, once it is sent).
#[derive(Debug)]
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections, oldest first; `gone` is told each time one has closed.
#[derive(Debug, Default)]
struct Table(Mutex<BTreeMap<u64, Arc<Conn>>>, Notify);

enum Admit {
    Yes(Arc<Conn>),
    /// Admitted after closing an idle connection.
    Evicted(Arc<Conn>),
    /// Every connection is busy.
    Busy,
}

impl Table {
    fn admit(&self, id: u64, cap: usize) -> Admit {
        let mut t = self.0.lock().expect("connection table lock");
        let live = t
            .values()
            .filter(|c| !c.evicted.load(Ordering::SeqCst))
            .count();
        let mut evicted = false;
        if live >= cap {
            let victim = t.values().find(|c| {
                !c.evicted.load(Ordering::SeqCst) && c.in_flight.load(Ordering::SeqCst) == 0
            });
            let Some(victim) = victim else {
                return Admit::Busy;
            };
            victim.evicted.store(true, Ordering::SeqCst);
            victim.evict.notify_one();
            evicted = true;
        }
        let c = Arc::new(Conn::default());
        t.insert(id, c.clone());
        if evicted {
            Admit::Evicted(c)
        } else {
            Admit::Yes(c)
        }
    }

    fn remove(&self, id: u64) {
        self.0.lock().expect("connection table lock").remove(&id);
        self.1.notify_one();
    }

    /// Sockets held, those still closing included.
    fn len(&self) -> usize {
        self.0.lock().expect("connection table lock").len()
    }
}

/// Removes a connection from the table when its task ends, however it ends.
struct Leave(Arc<Table>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// The soft limit on open files (`/proc/self/limits`), where the system says.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serve `app` on `listener` within `web`'s limits until `shutdown` completes, then drain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    web: &WebConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cap = web.max_connections;
    let idle = Duration::from_millis(web.idle_timeout_ms);
    if let Some(limit) = open_files_limit()
        && limit < cap as u64 + FDS_FOR_PIPELINE
    {
        warn!(
            "web.max-connections {cap} leaves fewer than {FDS_FOR_PIPELINE} of the process's \
             {limit} file descriptors to the pipeline: lower it, or raise LimitNOFILE"
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut stop = std::pin::pin!(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let table = Arc::new(Table::default());
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let (mut refused, mut evicted, mut accept_errors) = (0u64, 0u64, 0u64);
    let mut last_log = Instant::now();
    let lingering = Arc::new(AtomicUsize::new(0));
    'accept: loop {
        while tasks.try_join_next().is_some() {}
        while table.len() >= cap + CLOSING {
            tokio::select! {
                () = table.1.notified() => {}
                () = &mut stop => break 'accept,
            }
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut stop => break 'accept,
        };
        if last_log.elapsed() >= LOG_EVERY && refused + evicted + accept_errors > 0 {
            warn!(
                "web: in the last {} s, {refused} connections refused (all {cap} busy), \
                 {evicted} idle ones closed for new ones, {accept_errors} accept errors",
                last_log.elapsed().as_secs()
            );
            (refused, evicted, accept_errors) = (0, 0, 0);
            last_log = Instant::now();
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS: the connection waits in the backlog; retrying at
                // once would spin.
                debug!("accept: {e}");
                accept_errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        let conn = match table.admit(next_id, cap) {
            Admit::Yes(c) => c,
            Admit::Evicted(c) => {
                evicted += 1;
                c
            }
            Admit::Busy => {
                refused += 1;
                let _ = stream.try_write(&busy_reply());
                if lingering.load(Ordering::Relaxed) < LINGER {
                    lingering.fetch_add(1, Ordering::Relaxed);
                    let l = lingering.clone();
                    tokio::spawn(async move {
                        linger(stream).await;
                        l.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                continue;
            }
        };
        let leave = Leave(table.clone(), next_id);
        tasks.spawn(connection(
            stream,
            conn,
            leave,
            app.clone(),
            idle,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let open = tasks.len();
    if open > 0 {
        info!("waiting for {open} connections to finish (at most {SHUTDOWN_GRACE:?})");
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            "{} connections still open after {SHUTDOWN_GRACE:?}: closed",
            tasks.len()
        );
        tasks.abort_all();
    }
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// One connection: HTTP/1 with the header-read timeout, closed at once when evicted, drained
/// gracefully on shutdown.
async fn connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    _leave: Leave,
    app: Router,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let counted = conn.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = InFlight::new(counted.clone());
        let app = app.clone();
        async move {
            let Ok(resp) = app.oneshot(req).await;
            // The body keeps the guard: an event stream counts as in flight while it is open.
            let resp = resp.map(|b| {
                Body::new(b.map_frame(move |f| {
                    let _ = &guard;
                    f
                }))
            });
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(idle);
    let http = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    let mut draining = *stop.borrow();
    if draining {
        http.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    debug!("connection closed: {e}");
                }
                return;
            }
            () = conn.evict.notified() => {
                debug!("connection closed for a new one (web.max-connections)");
                return;
            }
            r = stop.changed(), if !draining => {
                draining = true;
                if r.is_ok() {
                    http.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room_and_busy_ones_refuse() {
        let t = Table::default();
        let a = match t.admit(1, 2) {
            Admit::Yes(c) => c,
            _ => panic!("room for the first"),
        };
        let _busy = InFlight::new(a.clone());
        let b = match t.admit(2, 2) {
            Admit::Yes(c) => c,
            _ => panic!("room for the second"),
        };
        // The third closes b (idle), not a (a request in flight).
        assert!(matches!(t.admit(3, 2), Admit::Evicted(_)));
        assert!(b.evicted.load(Ordering::SeqCst) && !a.evicted.load(Ordering::SeqCst));
        t.remove(2);
        let c = t.0.lock().unwrap()[&3].clone();
        let _busy_c = InFlight::new(c);
        assert!(matches!(t.admit(4, 2), Admit::Busy));
        assert_eq!(t.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn the_busy_reply_is_well_formed_http() {
        let r = String::from_utf8(busy_reply()).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}

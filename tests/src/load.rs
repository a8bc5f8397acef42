//! A bounded, self-stopping load on a running `device-runtime run` (issue 18, deliverable 1):
//! what the web server's limits must hold while the line keeps being inspected.
//!
//! [`run`] measures a baseline (no load) and then, for the same kind of window, holds `idle`
//! half-sent connections open (reopening each one the device closes), opens `sse` event streams
//! (reading what they send), and floods `/api/status` and `/api/frame.jpg` from `clients`
//! threads, each request on a fresh connection. Throughout, it probes `/healthz` every 50 ms on a
//! fresh connection and counts the device's open file descriptors (`/proc/PID/fd`). The figures:
//! frames scored, dropped and skipped by the source (bad frames: EMFILE shows here) against
//! `fps x seconds`, journal growth (alerts in the journal), /healthz latency, the most file
//! descriptors, and what the load got (answers by status, idle connections closed, streams
//! refused). `scripts/load-test` runs the full form against a device it starts (`--start`);
//! `tests/tests/load.rs` runs a short form in CI and asserts on the same figures.
//!
//! [`Bench`] starts such a device: a random signed bundle, a looping `dir:` of PNG frames (each
//! frame opens a file, which is what ran out at 1,024 descriptors), `threshold = -1` so every
//! frame is an alert (the journal appends each one), under `ulimit -n 1024`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to run against which device.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    /// The device's process, for its file descriptors.
    pub pid: u32,
    /// The configured source pace.
    pub fps: f64,
    pub idle: usize,
    pub sse: usize,
    pub clients: usize,
    pub duration: Duration,
    /// The window measured without load first (zero: none).
    pub baseline: Duration,
}

/// The device's counters at one moment (`/api/status`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub captured: u64,
    pub scored: u64,
    pub dropped: u64,
    pub bad_frames: u64,
    pub sink_errors: u64,
    pub in_journal: u64,
}

impl Counters {
    fn delta(&self, before: &Counters) -> Counters {
        Counters {
            captured: self.captured - before.captured,
            scored: self.scored - before.scored,
            dropped: self.dropped - before.dropped,
            bad_frames: self.bad_frames - before.bad_frames,
            sink_errors: self.sink_errors - before.sink_errors,
            in_journal: self.in_journal - before.in_journal,
        }
    }
}

/// One measured window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub seconds: f64,
    /// Counter growth over the window.
    pub grew: Counters,
    /// /healthz round trips that answered 200, milliseconds, sorted.
    pub healthz_ms: Vec<f64>,
    /// /healthz probes that failed (no answer, refused, or not 200).
    pub healthz_failed: u64,
    pub fds_max: usize,
}

impl Window {
    /// The `q` quantile of the /healthz latency (NaN when none answered).
    pub fn healthz_quantile(&self, q: f64) -> f64 {
        if self.healthz_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((self.healthz_ms.len() - 1) as f64 * q).round() as usize;
        self.healthz_ms[i]
    }
}

/// What the load itself got.
#[derive(Debug, Clone, Default)]
pub struct LoadGot {
    pub answered_200: u64,
    pub answered_503: u64,
    pub answered_other: u64,
    pub failed: u64,
    /// Idle connections the device closed (each reopened while the load ran).
    pub idle_closed: u64,
    /// Idle connections still held when the load stopped.
    pub idle_held_at_end: usize,
    pub streams_open: usize,
    pub streams_refused: usize,
}

#[derive(Debug, Clone)]
pub struct Figures {
    pub spec: LoadSpec,
    pub baseline: Option<Window>,
    pub load: Window,
    pub got: LoadGot,
}

/// One GET on a fresh connection: (status, body).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let code = std::str::from_utf8(out.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "no HTTP status line"))?;
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(Vec::new(), |i| out[i + 4..].to_vec());
    Ok((code, body))
}

/// The device's counters, retried until they come (the device may be busy for a moment).
pub fn counters(addr: SocketAddr) -> Counters {
    let t = Instant::now();
    loop {
        if let Ok((200, body)) = get(addr, "/api/status", Duration::from_secs(5))
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        {
            let c = &v["counters"];
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            return Counters {
                captured: n("frames-captured"),
                scored: n("frames-scored"),
                dropped: n("frames-dropped"),
                bad_frames: n("bad-frames"),
                sink_errors: n("sink-errors"),
                in_journal: v["alerts"]["in-journal"].as_u64().unwrap_or(0),
            };
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no /api/status from {addr} for 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Probes /healthz and counts the device's descriptors until `stop`.
fn observe(spec: &LoadSpec, stop: &AtomicBool) -> (Vec<f64>, u64, usize) {
    let (mut ms, mut failed, mut fds) = (Vec::new(), 0, 0);
    while !stop.load(Ordering::SeqCst) {
        fds = fds.max(open_fds(spec.pid));
        let t = Instant::now();
        match get(spec.addr, "/healthz", Duration::from_secs(2)) {
            Ok((200, _)) => ms.push(t.elapsed().as_secs_f64() * 1e3),
            _ => failed += 1,
        }
        fds = fds.max(open_fds(spec.pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    ms.sort_by(f64::total_cmp);
    (ms, failed, fds)
}

/// Measure one window of `length` while `during` runs (it must return once `stop` is set).
fn window<T: Send>(
    spec: &LoadSpec,
    length: Duration,
    during: impl FnOnce(&AtomicBool) -> T + Send,
) -> (Window, T) {
    let stop = AtomicBool::new(false);
    let before = counters(spec.addr);
    let t = Instant::now();
    let (observed, got) = std::thread::scope(|s| {
        let obs = s.spawn(|| observe(spec, &stop));
        let load = s.spawn(|| during(&stop));
        std::thread::sleep(length);
        stop.store(true, Ordering::SeqCst);
        (obs.join().unwrap(), load.join().unwrap())
    });
    let after = counters(spec.addr);
    let seconds = t.elapsed().as_secs_f64();
    let (healthz_ms, healthz_failed, fds_max) = observed;
    let w = Window {
        seconds,
        grew: after.delta(&before),
        healthz_ms,
        healthz_failed,
        fds_max,
    };
    (w, got)
}

/// A half-sent request: the slow-loris connection.
fn idle_connection(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nX-Waiting: ").ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Whether the device has closed `s` (anything it sent is drained).
fn closed(mut s: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// The load: idle connections, event streams and the request flood, until `stop`.
fn load(spec: &LoadSpec, stop: &AtomicBool) -> LoadGot {
    let answered = [0, 1, 2, 3].map(|_| AtomicU64::new(0));
    let idle_closed = AtomicU64::new(0);
    let idle_held = Mutex::new(0usize);
    let streams = Mutex::new((0usize, 0usize));
    std::thread::scope(|s| {
        // Idle connections, topped up every 200 ms.
        s.spawn(|| {
            let mut conns: Vec<Option<TcpStream>> = (0..spec.idle).map(|_| None).collect();
            while !stop.load(Ordering::SeqCst) {
                for c in conns.iter_mut() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if c.as_ref().is_none_or(closed) {
                        if c.is_some() {
                            idle_closed.fetch_add(1, Ordering::Relaxed);
                        }
                        *c = idle_connection(spec.addr);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            *idle_held.lock().unwrap() = conns.iter().flatten().filter(|c| !closed(c)).count();
        });
        // Event streams, read as they come.
        s.spawn(|| {
            let mut open: Vec<TcpStream> = Vec::new();
            let mut refused = 0;
            for _ in 0..spec.sse {
                let Ok(mut c) = TcpStream::connect_timeout(&spec.addr, Duration::from_secs(2))
                else {
                    refused += 1;
                    continue;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = write!(
                    c,
                    "GET /api/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
                    spec.addr
                );
                let mut head = [0u8; 12];
                match c.read_exact(&mut head) {
                    Ok(()) if &head[9..12] == b"200" => {
                        let _ = c.set_nonblocking(true);
                        open.push(c);
                    }
                    _ => refused += 1,
                }
            }
            *streams.lock().unwrap() = (open.len(), refused);
            while !stop.load(Ordering::SeqCst) {
                for c in &open {
                    let _ = closed(c);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // The flood.
        for i in 0..spec.clients {
            let answered = &answered;
            s.spawn(move || {
                let mut n = i;
                while !stop.load(Ordering::SeqCst) {
                    let path = if n % 2 == 0 {
                        "/api/status"
                    } else {
                        "/api/frame.jpg"
                    };
                    n += 1;
                    let k = match get(spec.addr, path, Duration::from_secs(5)) {
                        Ok((200, _)) => 0,
                        Ok((503, _)) => 1,
                        Ok(_) => 2,
                        Err(_) => 3,
                    };
                    answered[k].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let (streams_open, streams_refused) = *streams.lock().unwrap();
    let [a200, a503, other, failed] = answered.map(|a| a.into_inner());
    LoadGot {
        answered_200: a200,
        answered_503: a503,
        answered_other: other,
        failed,
        idle_closed: idle_closed.into_inner(),
        idle_held_at_end: *idle_held.lock().unwrap(),
        streams_open,
        streams_refused,
    }
}

/// Run the baseline window (if any), then the load window.
pub fn run(spec: &LoadSpec) -> Figures {
    let baseline = (!spec.baseline.is_zero()).then(|| window(spec, spec.baseline, |_| ()).0);
    let (load, got) = window(spec, spec.duration, |stop| load(spec, stop));
    Figures {
        spec: spec.clone(),
        baseline,
        load,
        got,
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.spec;
        writeln!(
            f,
            "load on {} (pid {}, source {} fps): {} idle connections, {} event streams, {} \
             clients",
            s.addr, s.pid, s.fps, s.idle, s.sse, s.clients
        )?;
        writeln!(f)?;
        writeln!(f, "| figure | no load | under load |")?;
        writeln!(f, "|---|---:|---:|")?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, g: &dyn Fn(&Window) -> String| {
            let b = self.baseline.as_ref().map_or("-".into(), g);
            writeln!(f, "| {name} | {b} | {} |", g(&self.load))
        };
        row(f, "seconds", &|w| format!("{:.1}", w.seconds))?;
        row(f, "frames expected (fps x s)", &|w| {
            format!("{:.0}", s.fps * w.seconds)
        })?;
        row(f, "frames captured", &|w| w.grew.captured.to_string())?;
        row(f, "frames scored", &|w| w.grew.scored.to_string())?;
        row(f, "frames dropped (inference behind)", &|w| {
            w.grew.dropped.to_string()
        })?;
        row(f, "bad frames (source errors)", &|w| {
            w.grew.bad_frames.to_string()
        })?;
        row(f, "alert sink errors", &|w| w.grew.sink_errors.to_string())?;
        row(f, "journal growth (alerts)", &|w| {
            w.grew.in_journal.to_string()
        })?;
        row(f, "/healthz p50 / p99 / max, ms", &|w| {
            format!(
                "{:.1} / {:.1} / {:.1}",
                w.healthz_quantile(0.5),
                w.healthz_quantile(0.99),
                w.healthz_quantile(1.0)
            )
        })?;
        row(f, "/healthz answered 200 / failed", &|w| {
            format!("{} / {}", w.healthz_ms.len(), w.healthz_failed)
        })?;
        row(f, "device file descriptors, most", &|w| {
            w.fds_max.to_string()
        })?;
        let g = &self.got;
        writeln!(f)?;
        writeln!(
            f,
            "flood: {} answered 200, {} 503 (busy), {} other, {} failed ({:.0} requests/s); \
             idle connections closed by the device {}, held at the end {}; event streams open \
             {}, refused {}",
            g.answered_200,
            g.answered_503,
            g.answered_other,
            g.failed,
            (g.answered_200 + g.answered_503 + g.answered_other) as f64 / self.load.seconds,
            g.idle_closed,
            g.idle_held_at_end,
            g.streams_open,
            g.streams_refused
        )
    }
}

/// A device started for the load: a random bundle, a looping `dir:` of frames, every frame an
/// alert, under `ulimit -n`. Killed when dropped.
#[derive(Debug)]
pub struct Bench {
    child: Child,
    pub addr: SocketAddr,
    pub fps: f64,
    pub log: PathBuf,
}

impl Bench {
    /// Start `device_bin` in `root` (which it fills) at `fps`, allowed `nofile` open files;
    /// `web`: extra `[web]` keys (TOML lines).
    pub fn start(device_bin: &Path, root: &Path, fps: f64, nofile: u32, web: &str) -> Bench {
        let source = format!("spec = \"dir:frames\"\nfps = {fps:?}\nloop = true\n");
        let inference = "threads = 1\nthreshold = -1.0\n";
        Self::start_with(device_bin, root, &source, inference, fps, nofile, web)
    }

    /// [`Bench::start`] with the config's `[source]` and `[inference]` keys given (TOML lines):
    /// the soak runs the `synthetic` source unpaced.
    pub fn start_with(
        device_bin: &Path,
        root: &Path,
        source: &str,
        inference: &str,
        fps: f64,
        nofile: u32,
        web: &str,
    ) -> Bench {
        use ed25519_dalek::SigningKey;
        use firm_shared::detect::synthetic::{SyntheticSpec, pattern, random_bundle};
        use firm_shared::model::{EncoderConfig, Stem};
        use rand::SeedableRng;

        // Commands below run in `root`.
        let device_bin = &std::path::absolute(device_bin).unwrap();
        let key = SigningKey::from_bytes(&[18; 32]);
        std::fs::write(
            root.join("bundle.pub"),
            firm_shared::bundle::container::key_hex(key.verifying_key().as_bytes()),
        )
        .unwrap();
        let spec = SyntheticSpec {
            encoder: EncoderConfig::new(Stem::Imagenet, 0.25),
            size: 64,
            score: "cos_1".parse().unwrap(),
            int8_activations: true,
            bank: 16,
            seed: 18,
        };
        let bundle = random_bundle(&spec)
            .unwrap()
            .to_bytes(&key, &firm_shared::bundle::Limits::default())
            .unwrap();
        std::fs::write(root.join("load.firm"), bundle).unwrap();
        let frames = root.join("frames");
        std::fs::create_dir_all(&frames).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
        for i in 0..8 {
            pattern(160, 128, &mut rng)
                .save(frames.join(format!("{i:04}.png")))
                .unwrap();
        }
        std::fs::write(
            root.join("device.toml"),
            format!(
                "schema-version = 1\nsite = \"load\"\nstate-dir = \"state\"\n\
                 [bundles]\ntrusted-keys = [\"bundle.pub\"]\n\
                 [source]\n{source}\
                 [inference]\n{inference}[web]\n{web}\n"
            ),
        )
        .unwrap();
        let out = Command::new(device_bin)
            .current_dir(root)
            .args(["flash", "load.firm", "--config", "device.toml"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "flash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr: SocketAddr = crate::free_loopback_addr();
        let log = root.join("device.log");
        let child = Command::new("sh")
            .current_dir(root)
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(device_bin)
            .args(["run", "--config", "device.toml", "--listen"])
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let bench = Bench {
            child,
            addr,
            fps,
            log,
        };
        let t = Instant::now();
        while !matches!(get(addr, "/healthz", Duration::from_secs(2)), Ok((200, _))) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the device did not become healthy: {}",
                std::fs::read_to_string(&bench.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bench
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! What an integrator installs (hardware/), checked against the runtime itself: both board
//! profiles parse with the runtime's own config loader and say what their READMEs promise; the
//! systemd unit passes `systemd-analyze verify`; the udev rules carry the names the profiles
//! open; and the systemd watchdog is fed only while the pipeline moves, end to end through the
//! real binary and a notify socket, and in-process with a camera read that blocks.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use device_runtime::capture::{CaptureError, Frame, FrameSource, SourceStatus};
use device_runtime::config::{DeviceConfig, InferenceConfig};
use device_runtime::slots::Slots;
use device_runtime::state::Shared;
use device_runtime::watchdog::{self, Notifier, NotifyState};
use ed25519_dalek::SigningKey;
use firm_shared::bundle::{Limits, container};
use firm_shared::detect::Backend;
use firm_shared::detect::synthetic::{SyntheticSpec, random_bundle};
use firm_shared::model::{EncoderConfig, Stem};

fn hardware() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware")
}

// ---------------------------------------------------------------------------------------------
// Board profiles

#[test]
fn board_profiles_parse_with_the_runtimes_config_loader() {
    // `device-runtime run --config FILE` loads with DeviceConfig::load; as installed, the
    // profile lives in /etc/firm-inspect, so its relative paths resolve there.
    for (board, format, size, fps, exposure, chip, line) in [
        (
            "jetson-orin-nano",
            "yuyv",
            (1280, 720),
            30.0,
            4000,
            "/dev/gpiochip0",
            105,
        ),
        (
            "x86-usb",
            "mjpeg",
            (1280, 720),
            15.0,
            8000,
            "/dev/firm-reject",
            0,
        ),
    ] {
        let file = hardware().join("boards").join(board).join("device.toml");
        let c = DeviceConfig::load(&file).unwrap_or_else(|e| panic!("{board}: {e}"));
        let text = std::fs::read_to_string(&file).unwrap();
        let installed =
            DeviceConfig::parse(&text, Path::new("/etc/firm-inspect/device.toml")).unwrap();
        assert_eq!(c.source, installed.source, "{board}");
        assert_eq!(installed.state_dir, Path::new("/var/lib/firm-inspect"));
        assert_eq!(
            installed.bundles.trusted_keys,
            [PathBuf::from("/etc/firm-inspect/keys/bundle.pub")],
            "{board}"
        );
        assert_eq!(
            installed.web.token_file.as_deref(),
            Some(Path::new("/etc/firm-inspect/token"))
        );
        assert_eq!(c.source.spec, "v4l:/dev/firm-camera", "{board}");
        assert_eq!(c.source.format, format, "{board}");
        assert_eq!((c.source.width, c.source.height), size, "{board}");
        assert_eq!(c.source.fps, Some(fps), "{board}");
        assert_eq!(c.source.exposure_us, Some(exposure), "{board}");
        let gpio = c.alerts.gpio.as_ref().expect("a reject line");
        assert_eq!(
            (gpio.chip.as_path(), gpio.line),
            (Path::new(chip), line),
            "{board}"
        );
        assert!(!gpio.active_low && gpio.pulse_ms >= 20, "{board}");
        // A real GPU where the build and the box have one, else the CPU.
        assert_eq!(c.inference.backend, Backend::Auto, "{board}");
    }
    let jetson =
        std::fs::read_to_string(hardware().join("boards/jetson-orin-nano/device.toml")).unwrap();
    assert!(jetson.contains("Vulkan 1.3"));
    assert!(jetson.contains("nvidia_icd.json"));
    assert!(jetson.contains("NVIDIA_DRIVER_CAPABILITIES=graphics,compute,utility"));
}

// ---------------------------------------------------------------------------------------------
// systemd unit and udev rules

fn unit_text() -> String {
    std::fs::read_to_string(hardware().join("systemd/firm-inspect.service")).unwrap()
}

#[test]
fn the_unit_says_what_the_runtime_needs() {
    let unit = unit_text();
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let has = |k: &str, v: &str| keys.contains(&(k, v));
    for (k, v) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30s"),
        ("Restart", "on-failure"),
        ("User", "firm-inspect"),
        ("Group", "firm-inspect"),
        ("SupplementaryGroups", "video gpio"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "firm-inspect"),
        ("ReadWritePaths", "/var/lib/firm-inspect"),
        ("UMask", "0027"),
        ("Environment", "MIMALLOC_PURGE_DELAY=0"),
        (
            "ExecStart",
            "/usr/local/bin/device-runtime run --config /etc/firm-inspect/device.toml",
        ),
    ] {
        assert!(has(k, v), "the unit lacks {k}={v}");
    }
    // The ExecStart line is a command line this binary accepts.
    let out = Command::new(env!("CARGO_BIN_EXE_device-runtime"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config <FILE>"));
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing on CI (the systemd package; .ci/run installs it)"
        );
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_text().replace(
        "/usr/local/bin/device-runtime",
        env!("CARGO_BIN_EXE_device-runtime"),
    );
    let path = dir.path().join("firm-inspect.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify only warns (exit 0) about unknown keys or bad values: any output is a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    // And it does catch a broken unit (so the check above means something).
    std::fs::write(&path, unit_text().replace("Type=notify", "Typ=notify")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Typ"), "{stderr}");
}

#[test]
fn udev_rules_name_what_the_profiles_open() {
    let rules = std::fs::read_to_string(hardware().join("udev/99-firm-inspect.rules")).unwrap();
    let rules: Vec<Vec<&str>> = rules
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(", ").collect())
        .collect();
    // Every token is KEY==VALUE or KEY=VALUE / KEY+=VALUE with a quoted value.
    for rule in &rules {
        for t in rule {
            let (_, v) = t
                .split_once("==")
                .or_else(|| t.split_once("+="))
                .or_else(|| t.split_once('='))
                .unwrap_or_else(|| panic!("not a udev key: {t}"));
            assert!(
                v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                "{t}"
            );
        }
    }
    let find = |needles: &[&str]| rules.iter().any(|r| needles.iter().all(|n| r.contains(n)));
    assert!(find(&[
        "SUBSYSTEM==\"video4linux\"",
        "ATTR{index}==\"0\"",
        "SYMLINK+=\"firm-camera\"",
        "GROUP=\"video\""
    ]));
    assert!(find(&[
        "SUBSYSTEM==\"gpio\"",
        "KERNEL==\"gpiochip*\"",
        "GROUP=\"gpio\"",
        "MODE=\"0660\""
    ]));
    assert!(find(&["SUBSYSTEM==\"gpio\"", "SYMLINK+=\"firm-reject\""]));
}

// ---------------------------------------------------------------------------------------------
// The watchdog

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// A small signed bundle with random weights (CIFAR stem at 1/16 width, 32 px).
fn bundle_bytes() -> Vec<u8> {
    let b = random_bundle(&SyntheticSpec {
        encoder: EncoderConfig::new(Stem::Cifar, 0.0625),
        size: 32,
        score: "cos_1".parse().unwrap(),
        int8_activations: true,
        bank: 8,
        seed: 1,
    })
    .unwrap();
    b.to_bytes(&key(), &Limits::default()).unwrap()
}

/// A station in `dir`: key, config, `images` PNGs to replay at `fps`.
fn station(dir: &Path, images: usize, fps: f64) -> PathBuf {
    let pubkey = container::key_hex(key().verifying_key().as_bytes());
    std::fs::write(dir.join("bundle.pub"), pubkey).unwrap();
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
    for i in 0..images {
        firm_shared::detect::synthetic::pattern(48, 48, &mut rng)
            .save(frames.join(format!("{i:03}.png")))
            .unwrap();
    }
    let cfg = dir.join("device.toml");
    std::fs::write(
        &cfg,
        format!(
            "schema-version = 1\nstate-dir = \"state\"\n[bundles]\ntrusted-keys = \
             [\"bundle.pub\"]\n[source]\nspec = \"dir:frames\"\nfps = {fps}\n\
             [alerts]\nsave-flagged = false\n[inference]\nthreads = 1\n"
        ),
    )
    .unwrap();
    cfg
}

/// Flash the random bundle onto the station whose config is `cfg` (through the real binary).
fn flash_station(dir: &Path, cfg: &Path) {
    let bundle = dir.join("b.firm");
    std::fs::write(&bundle, bundle_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_device-runtime"))
        .arg("flash")
        .arg(&bundle)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Datagrams received on a notify socket, with their arrival time.
type Received = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen(sock: &Path) -> Received {
    let s = UnixDatagram::bind(sock).unwrap();
    let got: Received = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            g.lock().unwrap().push((Instant::now(), msg));
        }
    });
    got
}

fn count(got: &Received, what: &str, since: Option<Instant>) -> usize {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(t, m)| since.is_none_or(|s| *t >= s) && m.lines().any(|l| l == what))
        .count()
}

fn wait_for(what: impl Fn() -> bool, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Kills the process with this id when dropped during a panic (a failed assertion), so a
/// failing test leaves no appliance running.
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// `device-runtime run` under a fake service manager: READY=1, then WATCHDOG=1 while frames
/// flow; when the replay ends (the pipeline stops) the pings stop although the process and its
/// web server stay up; SIGTERM -> STOPPING=1 and a clean exit.
/// A panicked inference thread scores nothing while the web server would still answer: the
/// process must exit non-zero, quickly, so that systemd (`Restart=on-failure`) restarts it, and
/// the start must not count as healthy.
#[test]
fn an_inference_thread_panic_ends_the_process_with_an_error_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    // A looping replay: without the panic the run would never end.
    let cfg = station(dir.path(), 4, 20.0);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replace("fps = 20\n", "fps = 20\nloop = true\n");
    assert!(text.contains("loop = true"), "{text}");
    std::fs::write(&cfg, text).unwrap();
    let bin = env!("CARGO_BIN_EXE_device-runtime");
    flash_station(dir.path(), &cfg);
    let mut child = Command::new(bin)
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("FIRM_TEST_PANIC_AT_FRAME", "6")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reaper = Reaper(child.id());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let mut log = String::new();
    let mut panicked_at = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok((t, line)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if panicked_at.is_none() && line.contains("FIRM_TEST_PANIC_AT_FRAME") {
            panicked_at = Some(t);
        }
        log.push_str(&line);
        log.push('\n');
    }
    // stderr closed: the process has ended (or the deadline passed).
    let ended = Instant::now();
    // stderr may close a moment before the exit status is there; a process still running at
    // the deadline fails the test (and the reaper kills it).
    std::thread::sleep(Duration::from_millis(300));
    let status = child
        .try_wait()
        .unwrap()
        .unwrap_or_else(|| panic!("still running 60 s after start: {log}"));
    let panicked_at = panicked_at.unwrap_or_else(|| panic!("no panic seen: {log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("the inference thread panicked"), "{log}");
    let took = ended - panicked_at;
    assert!(
        took < Duration::from_secs(1),
        "exited {took:?} after the panic: {log}"
    );
    // Not a healthy run: the start still counts towards crash-loop detection.
    let st = Command::new(bin)
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["boot-attempts"], 1, "{st}");
}

/// Starts that fail before the bundle is reached (a busy port, a missing frame folder) are not
/// the bundle's fault: however many there are, they never count towards a rollback.
#[test]
fn a_busy_port_or_a_missing_source_never_counts_against_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = station(dir.path(), 2, 20.0);
    let bin = env!("CARGO_BIN_EXE_device-runtime");
    flash_station(dir.path(), &cfg);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let status = || {
        let st = Command::new(bin)
            .args(["status", "--json", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&st.stdout).unwrap()
    };
    for _ in 0..4 {
        let out = Command::new(bin)
            .args(["run", "--listen", &addr, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot listen on"), "{err}");
    }
    std::fs::rename(dir.path().join("frames"), dir.path().join("moved")).unwrap();
    for _ in 0..4 {
        let out = Command::new(bin)
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
    let st = status();
    assert_eq!(st["boot-attempts"], 0, "{st}");
    assert_eq!(st["active"], "a", "{st}");
}

#[test]
fn the_real_binary_feeds_the_watchdog_only_while_the_pipeline_moves() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = station(dir.path(), 30, 10.0);
    let bin = env!("CARGO_BIN_EXE_device-runtime");
    flash_station(dir.path(), &cfg);

    let sock = dir.path().join("notify.sock");
    let got = listen(&sock);
    let mut child = Command::new(bin)
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A failed assertion must not leave the appliance running.
    let _reaper = Reaper(pid);
    // Log lines: the address, then everything else (kept for the failure messages).
    let log = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let l = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("status page on http://").nth(1) {
                let _ = addr_tx.send(rest.trim().to_string());
            }
            l.lock().unwrap().push_str(&line);
            l.lock().unwrap().push('\n');
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no status page: {}", log.lock().unwrap()));
    let ready = wait_for(
        || count(&got, "READY=1", None) == 1,
        Duration::from_secs(10),
    );
    assert!(ready, "no READY=1: {:?}", got.lock().unwrap());
    // 30 frames at 10 fps: about 3 s of frames, a ping every 100 ms while they flow.
    let fed = wait_for(
        || count(&got, "WATCHDOG=1", None) >= 5,
        Duration::from_secs(20),
    );
    assert!(fed, "not fed while frames flow: {:?}", got.lock().unwrap());
    {
        let g = got.lock().unwrap();
        let first_ready = g.iter().position(|(_, m)| m.contains("READY=1")).unwrap();
        let first_dog = g
            .iter()
            .position(|(_, m)| m.contains("WATCHDOG=1"))
            .unwrap();
        assert!(first_ready < first_dog, "{g:?}");
        assert!(
            g.iter()
                .any(|(_, m)| m.contains("STATUS=") && m.contains("frames scored"))
        );
    }
    // The replay ends: the pipeline stops beating.
    let ended = wait_for(
        || log.lock().unwrap().contains("inference finished"),
        Duration::from_secs(30),
    );
    assert!(ended, "{}", log.lock().unwrap());
    // At most one more feed follows (the tick after the last beats); then silence. A
    // transient stall under load may have been reported before: any stall status will do.
    let last_feed = || {
        got.lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(t, _)| *t)
    };
    let settled = wait_for(
        || last_feed().is_none_or(|t| t.elapsed() >= Duration::from_millis(600)),
        Duration::from_secs(10),
    );
    assert!(
        settled,
        "still fed after the pipeline stopped: {:?}",
        got.lock().unwrap()
    );
    let stalled = got
        .lock()
        .unwrap()
        .iter()
        .any(|(_, m)| m.contains("STATUS=pipeline stalled"));
    assert!(stalled, "{:?}", got.lock().unwrap());
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        count(&got, "WATCHDOG=1", Some(quiet_from)),
        0,
        "fed after the pipeline stopped: {:?}",
        got.lock().unwrap()
    );
    // ... while the process and its web server are still up (and polled during the silence).
    assert!(child.try_wait().unwrap().is_none());
    for _ in 0..5 {
        let reply = http_get(&addr, "/api/status");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    assert_eq!(count(&got, "WATCHDOG=1", Some(quiet_from)), 0);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", log.lock().unwrap());
    assert!(
        wait_for(
            || count(&got, "STOPPING=1", None) == 1,
            Duration::from_secs(2)
        ),
        "{:?}",
        got.lock().unwrap()
    );
}

/// A camera whose read blocks while `open` is false (a wedged driver, say).
struct Gate {
    open: Arc<(Mutex<bool>, Condvar)>,
    seq: u64,
}

impl FrameSource for Gate {
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        let (lock, cv) = &*self.open;
        let _open = cv.wait_while(lock.lock().unwrap(), |open| !*open).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        self.seq += 1;
        Ok(Frame {
            seq: self.seq - 1,
            time: SystemTime::now(),
            image: image::RgbImage::from_pixel(40, 40, image::Rgb([90, 120, 150])),
            source: "gate".into(),
        })
    }

    fn status(&self) -> SourceStatus {
        SourceStatus {
            connected: true,
            reconnects: 0,
            bad_frames: 0,
            frames: self.seq,
            last_error: None,
            description: "gate".into(),
        }
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Notifier for Recorder {
    fn notify(&self, states: &[NotifyState<'_>]) -> std::io::Result<()> {
        let msg = states.iter().map(|s| format!("{s}\n")).collect();
        self.0.lock().unwrap().push(msg);
        Ok(())
    }
}

/// The pipeline with a capture read that blocks: the inference thread keeps polling, the web
/// state stays readable, and yet the watchdog is not fed until frames come again.
#[test]
fn a_blocked_camera_read_stops_the_watchdog_until_frames_flow_again() {
    let dir = tempfile::tempdir().unwrap();
    let slots = Slots::new(
        &dir.path().join("slots"),
        vec![key().verifying_key()],
        64 << 20,
    )
    .unwrap();
    let (_, loaded) = slots
        .flash(&firm_e2e::bundle_file(&bundle_bytes()), false)
        .unwrap();
    let shared = Shared::new("line-test");
    let open = Arc::new((Mutex::new(true), Condvar::new()));
    let source = Box::new(Gate {
        open: open.clone(),
        seq: 0,
    });
    let cfg = InferenceConfig {
        threads: Some(1),
        ..InferenceConfig::default()
    };
    let pipeline =
        device_runtime::pipeline::start(shared.clone(), source, loaded, cfg, vec![]).unwrap();
    let rec = Recorder::default();
    let dog = watchdog::spawn(
        shared.heartbeat.clone(),
        // Above the inference loop's 100 ms idle poll, so a tick sees it advance.
        Duration::from_millis(150),
        rec.clone(),
        || "running".into(),
    )
    .unwrap();
    let fed = || {
        rec.0
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.contains("WATCHDOG=1"))
            .count()
    };
    let scored = || shared.live.read().unwrap().counters.frames_scored;
    assert!(wait_for(
        || fed() >= 3 && scored() >= 3,
        Duration::from_secs(30)
    ));

    let set = |v: bool| {
        *open.0.lock().unwrap() = v;
        open.1.notify_all();
    };
    set(false);
    std::thread::sleep(Duration::from_millis(400));
    let (at_block, scored_at_block) = (fed(), scored());
    let inference_at_block = shared.heartbeat.beats().inference;
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fed(), at_block, "fed while the camera read blocks");
    assert_eq!(scored(), scored_at_block);
    assert!(
        shared.heartbeat.beats().inference > inference_at_block,
        "the inference loop kept polling"
    );
    assert!(!pipeline.is_finished());
    assert!(
        rec.0
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("STATUS=pipeline stalled: no capture"))
    );

    set(true);
    assert!(
        wait_for(|| fed() > at_block, Duration::from_secs(10)),
        "not fed after frames came back"
    );
    drop(dog);
    pipeline.stop();
    pipeline.join();
}

//! Faults of the factory floor (issue 18), through the real binary:
//! - a capture thread that panics (a driver or decoder bug) ends `run` with exit status 1
//!   within a second, logged with its message, and the start is not counted healthy; a finite
//!   source that ends is still an ordinary finish (exit 0);
//! - a full state filesystem: the device keeps scoring, raises one error (logged once, `state-fs`
//!   in /api/status, `firm_state_fs_full` in /metrics), journals again once space returns, and
//!   the journal then verifies; it also starts, and scores, on a filesystem that is already full
//!   (the boot counter cannot be written: the status says crash-loop protection is degraded);
//! - a first start on a full filesystem that must roll back: it runs the good slot without
//!   recording the switch, runs the journal without its checkpoint (the device secret cannot be
//!   created), says both in `state-fs`, seals the journal once space returns (no restart), rolls
//!   back again at the next full start, and records the rollback at the first start with space;
//! - temporaries left by interrupted flashes and uploads are removed at start, and an upload cut
//!   off mid-body leaves no file.
//!
//! The full filesystem is a small tmpfs mounted on the state folder where the test may mount
//! (root, as in CI); elsewhere the journal's write-failure hook (`FIRM_TEST_JOURNAL_FULL_WHILE`:
//! appends and the device secret's creation) stands in for it, with a link to /dev/full where
//! the slots' `active` is written through, and the test says which ran.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use firm_shared::bundle::{Limits, container};
use firm_shared::detect::synthetic::{SyntheticSpec, random_bundle};
use firm_shared::model::{EncoderConfig, Stem};
use serde_json::Value;

const TOKEN: &str = "faults-test-token-0123456789";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// A small signed bundle of `version` with random weights (CIFAR stem at 1/16 width, 32 px).
fn bundle_bytes_version(version: u64) -> Vec<u8> {
    let mut b = random_bundle(&SyntheticSpec {
        encoder: EncoderConfig::new(Stem::Cifar, 0.0625),
        size: 32,
        score: "cos_1".parse().unwrap(),
        int8_activations: true,
        bank: 8,
        seed: 1,
    })
    .unwrap();
    b.manifest.bundle_version = version;
    b.to_bytes(&key(), &Limits::default()).unwrap()
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_device-runtime"))
}

/// A station in `dir`: key, token, frames, `device.toml` with `extra` appended to its
/// sections (keys go into `[source]` and `[inference]` by name).
fn station(dir: &Path, images: usize, source: &str, inference: &str, alerts: &str) -> PathBuf {
    std::fs::write(
        dir.join("bundle.pub"),
        container::key_hex(key().verifying_key().as_bytes()),
    )
    .unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
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
             [\"bundle.pub\"]\n[source]\nspec = \"dir:frames\"\n{source}\n\
             [alerts]\n{alerts}\n[inference]\nthreads = 1\n{inference}\n\
             [web]\ntoken-file = \"token\"\npublic-reads = true\n"
        ),
    )
    .unwrap();
    cfg
}

fn flash(dir: &Path, cfg: &Path) {
    flash_version(dir, cfg, 1);
}

fn flash_version(dir: &Path, cfg: &Path, version: u64) {
    let bundle = dir.join("b.firm");
    std::fs::write(&bundle, bundle_bytes_version(version)).unwrap();
    let out = bin()
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

/// A running `device-runtime run`, its stderr collected line by line; SIGKILLed when dropped.
struct Device {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Device {
    fn start(cfg: &Path, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = bin()
            .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(cfg)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push((Instant::now(), line));
            }
        });
        Device {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
        }
    }

    fn wait_up(&mut self) {
        let t = Instant::now();
        while std::net::TcpStream::connect(&self.addr).is_err() {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("the device exited ({st}): {}", self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "not up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        let l = self.log.lock().unwrap();
        l.iter().map(|(_, s)| format!("{s}\n")).collect()
    }

    /// Log lines containing `what`.
    fn count(&self, what: &str) -> usize {
        let l = self.log.lock().unwrap();
        l.iter().filter(|(_, s)| s.contains(what)).count()
    }

    fn get(&self, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string())
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.get("/api/status")).unwrap()
    }

    fn scored(&self) -> u64 {
        self.status()["counters"]["frames-scored"].as_u64().unwrap()
    }

    fn journaled(&self) -> u64 {
        self.status()["alerts"]["in-journal"].as_u64().unwrap()
    }

    /// Wait until `done` holds for /api/status.
    fn wait_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{what}: {s}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for the exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The capture thread

/// Run until the process ends (60 s at most); (exit code, when it was seen to end, log lines
/// with their time).
fn run_to_end(cfg: &Path, env: &[(&str, &str)]) -> (Option<i32>, Instant, Vec<(Instant, String)>) {
    let mut d = Device::start(cfg, env);
    let t = Instant::now();
    let (status, ended) = loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            break (st, Instant::now());
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "still running 60 s after start: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The reader thread has the last lines once stderr closes.
    std::thread::sleep(Duration::from_millis(200));
    let log = d.log.lock().unwrap().clone();
    (status.code(), ended, log)
}

#[test]
fn a_capture_thread_panic_ends_the_process_with_an_error_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    // A looping replay: without the panic the run would never end.
    let cfg = station(
        dir.path(),
        4,
        "fps = 20\nloop = true",
        "",
        "save-flagged = false",
    );
    flash(dir.path(), &cfg);
    let (code, ended, log) = run_to_end(&cfg, &[("FIRM_TEST_CAPTURE_PANIC_AT_FRAME", "6")]);
    let text: String = log.iter().map(|(_, s)| format!("{s}\n")).collect();
    let panicked_at = log
        .iter()
        .find(|(_, s)| s.contains("FIRM_TEST_CAPTURE_PANIC_AT_FRAME: frame 6"))
        .unwrap_or_else(|| panic!("no panic seen: {text}"))
        .0;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("the capture thread panicked: FIRM_TEST_CAPTURE_PANIC_AT_FRAME: frame 6"),
        "{text}"
    );
    assert!(
        ended - panicked_at < Duration::from_secs(1),
        "exited {:?} after the panic: {text}",
        ended - panicked_at
    );
    // Not a healthy run: the start still counts towards crash-loop detection.
    let st = bin()
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["boot-attempts"], 1, "{st}");

    // An ordinary end of a finite source is still a normal finish.
    let cfg = station(dir.path(), 4, "fps = 50", "", "save-flagged = false");
    let out = bin()
        .args([
            "run",
            "--exit-at-end",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// A full state filesystem

/// How the state filesystem is made full: a small tmpfs mounted on it (filled with a filler
/// file, unmounted when dropped), or the journal's write-failure hook.
enum StateFs {
    Tmpfs { mount: PathBuf },
    Hook { flag: PathBuf },
}

impl StateFs {
    /// A tmpfs of `mib` MiB on `state` when `mount` and this process may mount one, else the
    /// hook.
    fn new(root: &Path, state: &Path, mib: u32, mount: bool) -> Self {
        std::fs::create_dir_all(state).unwrap();
        let mounted = mount
            && Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={mib}m,mode=0755"),
                    "tmpfs",
                ])
                .arg(state)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if mounted {
            eprintln!("full-disk path: tmpfs of {mib} MiB on {}", state.display());
            StateFs::Tmpfs {
                mount: state.to_path_buf(),
            }
        } else {
            eprintln!("full-disk path: the write-failure hook (FIRM_TEST_JOURNAL_FULL_WHILE)");
            StateFs::Hook {
                flag: root.join("full"),
            }
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            StateFs::Tmpfs { .. } => vec![],
            StateFs::Hook { flag } => {
                vec![("FIRM_TEST_JOURNAL_FULL_WHILE", flag.display().to_string())]
            }
        }
    }

    fn filler(&self) -> PathBuf {
        match self {
            StateFs::Tmpfs { mount } => mount.join("filler"),
            StateFs::Hook { flag } => flag.clone(),
        }
    }

    /// Fill the filesystem to ENOSPC.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        if let StateFs::Tmpfs { .. } = self {
            let chunk = vec![0x5au8; 4096];
            loop {
                match f.write_all(&chunk) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("filling: {e}"),
                }
            }
            let _ = f.sync_all();
        }
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for StateFs {
    fn drop(&mut self) {
        if let StateFs::Tmpfs { mount } = self {
            let _ = Command::new("umount").arg(&*mount).status();
        }
    }
}

/// Temporary files (`.NAME.tmp*`) under `dir`, recursively.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            out.extend(temporaries(&p));
        } else if name.starts_with('.') && name.contains(".tmp") {
            out.push(p);
        }
    }
    out
}

/// On a real full filesystem where the test may mount one (root: CI), else through the hook.
#[test]
fn a_full_state_filesystem_raises_one_error_and_the_device_keeps_scoring() {
    full_state_filesystem(true);
}

/// The same through the journal's write-failure hook, wherever the test runs.
#[test]
fn a_journal_that_cannot_write_raises_one_error_and_the_device_keeps_scoring() {
    full_state_filesystem(false);
}

fn full_state_filesystem(mount: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let fs = StateFs::new(root, &root.join("state"), 8, mount);
    let env = fs.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Every frame is an alert: journaled and saved.
    let cfg = station(
        root,
        4,
        "fps = 25\nloop = true",
        "threshold = -1.0",
        "save-flagged = true",
    );
    flash(root, &cfg);
    // Leftovers of a flash and an upload cut short: removed at start.
    let leftovers = [
        root.join("state/slots/b/.bundle.firm.tmp"),
        root.join("state/slots/.boot-attempts.tmp"),
        root.join("state/uploads/upload-4242.firm"),
        root.join("state/uploads/upload-4242-0.firm"),
    ];
    std::fs::create_dir_all(root.join("state/uploads")).unwrap();
    for p in &leftovers {
        std::fs::write(p, b"half a bundle").unwrap();
    }

    let mut d = Device::start(&cfg, &env);
    d.wait_up();
    for p in &leftovers {
        assert!(!p.exists(), "{} is left", p.display());
    }
    d.wait_status("alerts journaled", |s| {
        s["alerts"]["in-journal"].as_u64() >= Some(5)
    });
    assert_eq!(d.status()["state-fs"]["full"], false);
    assert!(d.get("/metrics").contains("\nfirm_state_fs_full 0\n"));

    fs.fill();
    let full = d.wait_status("the error raised", |s| s["state-fs"]["full"] == true);
    // The last page of the journal file may take a few more lines; then nothing fits.
    std::thread::sleep(Duration::from_millis(500));
    let error = full["state-fs"]["error"].as_str().unwrap().to_string();
    assert!(error.contains("the state filesystem is full"), "{error}");
    assert!(error.contains("No space left on device"), "{error}");
    assert!(d.get("/metrics").contains("\nfirm_state_fs_full 1\n"));
    // Scoring goes on (25 fps: ~50 frames in 2 s), every alert lost and counted.
    let (scored, journaled) = (d.scored(), d.journaled());
    let errors = full["counters"]["sink-errors"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let s = d.status();
    let more = s["counters"]["frames-scored"].as_u64().unwrap() - scored;
    assert!(more >= 20, "{more} frames scored in 2 s while full: {s}");
    assert_eq!(d.journaled(), journaled, "nothing journaled while full");
    assert!(
        s["counters"]["sink-errors"].as_u64().unwrap() >= errors + 20,
        "{s}"
    );
    assert!(s["state-fs"]["lost-writes"].as_u64().unwrap() >= 20, "{s}");
    assert!(
        s["state-fs"]["failing"]
            .as_array()
            .unwrap()
            .contains(&"journal".into())
    );
    // One error, not one per frame.
    assert_eq!(d.count("the state filesystem is full"), 1, "{}", d.log());
    assert_eq!(d.count("alert sink"), 0, "{}", d.log());
    assert!(
        d.count("checkpoint could not be written") <= 1,
        "{}",
        d.log()
    );

    fs.free();
    let s = d.wait_status("the error cleared", |s| s["state-fs"]["full"] == false);
    assert!(s["state-fs"]["error"].is_null(), "{s}");
    let journaled = d.journaled();
    d.wait_status("journaling resumed", |s| {
        s["alerts"]["in-journal"].as_u64() >= Some(journaled + 10)
    });
    assert!(d.get("/metrics").contains("\nfirm_state_fs_full 0\n"));
    assert_eq!(
        d.count("the state filesystem takes writes again"),
        1,
        "{}",
        d.log()
    );
    assert_eq!(d.count("the state filesystem is full"), 1, "{}", d.log());
    d.stop();
    let verify = |what: &str| {
        let out = bin()
            .args(["journal", "verify", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    verify("after the device ran full");
    if let StateFs::Tmpfs { mount } = &fs {
        assert!(temporaries(mount).is_empty(), "{:?}", temporaries(mount));
    }

    // A start on a filesystem that is already full: it starts and scores.
    fs.fill();
    let mut d = Device::start(&cfg, &env);
    d.wait_up();
    let s = d.wait_status("scoring on a full filesystem", |s| {
        s["counters"]["frames-scored"].as_u64() >= Some(20) && s["state-fs"]["full"] == true
    });
    if let StateFs::Tmpfs { .. } = &fs {
        // The boot counter could not be written: said once, and shown.
        let why = s["state-fs"]["crash-loop-protection"]
            .as_str()
            .unwrap_or_default();
        assert!(why.contains("crash-loop protection is degraded"), "{s}");
        assert_eq!(d.count("this start could not be counted"), 1, "{}", d.log());
    }
    assert_eq!(d.count("the state filesystem is full"), 1, "{}", d.log());
    fs.free();
    let journaled = d.journaled();
    d.wait_status("journaling resumed after a full start", |s| {
        s["alerts"]["in-journal"].as_u64() >= Some(journaled + 5) && s["state-fs"]["full"] == false
    });
    d.stop();
    verify("after a start on a full filesystem");
}

/// A first start on a full filesystem, with the active slot damaged: on a tmpfs where the test
/// may mount one (root: CI), else through the hooks.
#[test]
fn a_first_start_on_a_full_filesystem_rolls_back_unrecorded_and_seals_the_journal_later() {
    first_start_full(true);
}

/// The same through the hooks, wherever the test runs.
#[test]
fn a_first_start_that_cannot_write_rolls_back_unrecorded_and_seals_the_journal_later() {
    first_start_full(false);
}

fn first_start_full(mount: bool) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = root.join("state");
    let fs = StateFs::new(root, &state, 8, mount);
    let env = fs.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Every frame is an alert: journaled.
    let cfg = station(
        root,
        4,
        "fps = 25\nloop = true",
        "threshold = -1.0",
        "save-flagged = false",
    );
    flash_version(root, &cfg, 1);
    flash_version(root, &cfg, 2);
    // Slot b (active) stops verifying: one byte changed, in place.
    let b = state.join("slots/b/bundle.firm");
    let mut bytes = std::fs::read(&b).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&b, bytes).unwrap();
    let key = state.join("secret/device.key");
    let checkpoint = state.join("journal.checkpoint");
    assert!(!key.exists(), "flashing made no device secret");
    // Under the hook, `active` is written through a link to /dev/full (kept by the start's
    // clean-up, which removes only plain files; a failed write removes it).
    let active_tmp = state.join("slots/.active.tmp");
    let fill = || {
        fs.fill();
        if let StateFs::Hook { .. } = &fs {
            let _ = std::os::unix::fs::symlink("/dev/full", &active_tmp);
        }
    };
    let free = || {
        fs.free();
        let _ = std::fs::remove_file(&active_tmp);
    };
    let active = || std::fs::read_to_string(state.join("slots/active")).unwrap();

    fill();
    let mut d = Device::start(&cfg, &env);
    d.wait_up();
    let s = d.wait_status("scoring the slot rolled back to", |s| {
        s["counters"]["frames-scored"].as_u64() >= Some(20)
    });
    assert_eq!(s["bundle"]["slot"], "a", "{s}");
    assert_eq!(s["bundle"]["bundle-version"], 1, "{s}");
    assert!(s["bundle"]["rolled-back"].is_string(), "{s}");
    assert_eq!(s["slots"]["active"], "b", "{s}");
    assert_eq!(active(), "b", "the switch is not recorded");
    let why = s["state-fs"]["rollback-not-recorded"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("slot a runs, but the switch to it could not be recorded")
            && why.contains("No space left on device"),
        "{s}"
    );
    let why = s["state-fs"]["journal-checkpoint"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("the device secret could not be created")
            && why.contains("No space left on device")
            && why.contains("without its HMAC checkpoint"),
        "{s}"
    );
    assert!(!key.exists() && !checkpoint.exists());
    // Said once each.
    assert_eq!(d.count("could not be recorded"), 1, "{}", d.log());
    assert_eq!(
        d.count("the device secret could not be created"),
        1,
        "{}",
        d.log()
    );
    assert_eq!(d.count("checkpoint could not be written"), 0, "{}", d.log());

    // Space again, without a restart: the next append creates the secret and seals the head.
    free();
    let s = d.wait_status("the checkpoint resumed", |s| {
        s["state-fs"]["journal-checkpoint"].is_null()
            && s["state-fs"]["full"] == false
            && s["alerts"]["in-journal"].as_u64() >= Some(5)
    });
    assert!(checkpoint.exists(), "{s}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap().len(), 65);
    assert_eq!(
        d.count("the journal's checkpoint is written again"),
        1,
        "{}",
        d.log()
    );
    d.stop();
    let verify = |what: &str| -> String {
        let out = bin()
            .args(["journal", "verify", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = verify("after the checkpoint resumed");
    assert!(text.contains("(HMAC good)"), "{text}");

    // Full again: the next start detects the same and rolls back again, unrecorded.
    fill();
    let mut d = Device::start(&cfg, &env);
    d.wait_up();
    let s = d.wait_status("scoring after a second full start", |s| {
        s["counters"]["frames-scored"].as_u64() >= Some(5)
    });
    assert_eq!(s["bundle"]["slot"], "a", "{s}");
    assert!(s["state-fs"]["rollback-not-recorded"].is_string(), "{s}");
    assert!(
        s["state-fs"]["journal-checkpoint"].is_null(),
        "the secret exists: {s}"
    );
    assert_eq!(active(), "b");
    d.stop();

    // Space at start: the rollback is recorded, and nothing is degraded.
    free();
    let mut d = Device::start(&cfg, &env);
    d.wait_up();
    let s = d.wait_status("scoring after the rollback is recorded", |s| {
        s["counters"]["frames-scored"].as_u64() >= Some(5)
    });
    assert_eq!(s["bundle"]["slot"], "a", "{s}");
    assert_eq!(s["slots"]["active"], "a", "{s}");
    assert!(s["state-fs"]["rollback-not-recorded"].is_null(), "{s}");
    assert!(s["state-fs"]["journal-checkpoint"].is_null(), "{s}");
    assert_eq!(active(), "a");
    d.stop();
    let text = verify("after the rollback was recorded");
    assert!(text.contains("(HMAC good)"), "{text}");
}

/// A crash-loop rollback that could not be recorded: the run of the good slot, healthy as it
/// is, leaves the boot counter alone (it counts the slot `active` still names), so the next
/// start sees the crash loop again instead of going back to the crashing slot.
#[test]
fn a_healthy_run_after_an_unrecorded_rollback_keeps_the_crash_loop_count() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = root.join("state");
    let fs = StateFs::new(root, &state, 8, true);
    let env = fs.env();
    // A finite replay: its end counts as a healthy run (`--exit-at-end`).
    let cfg = station(root, 4, "fps = 50", "", "save-flagged = false");
    flash_version(root, &cfg, 1);
    flash_version(root, &cfg, 2);
    let boots = state.join("slots/boot-attempts");
    std::fs::write(&boots, "3").unwrap();
    fs.fill();
    let active_tmp = state.join("slots/.active.tmp");
    if let StateFs::Hook { .. } = &fs {
        std::os::unix::fs::symlink("/dev/full", &active_tmp).unwrap();
    }
    let out = bin()
        .args([
            "run",
            "--exit-at-end",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("slot a runs, but the switch to it could not be recorded"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("slots/active")).unwrap(),
        "b"
    );
    let n: u32 = std::fs::read_to_string(&boots)
        .unwrap_or_else(|e| panic!("the healthy run cleared the boot counter ({e}): {err}"))
        .trim()
        .parse()
        .unwrap();
    assert!(n >= 3, "{n}");
    fs.free();
    let _ = std::fs::remove_file(&active_tmp);
}

/// An upload cut off mid-body leaves no file in the upload folder (the handler's future is
/// dropped, or its body read fails: either way the temporary file goes).
#[test]
fn an_interrupted_upload_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = station(
        dir.path(),
        4,
        "fps = 10\nloop = true",
        "",
        "save-flagged = false",
    );
    flash(dir.path(), &cfg);
    let mut d = Device::start(&cfg, &[]);
    d.wait_up();
    let uploads = dir.path().join("state/uploads");
    let files = || -> Vec<PathBuf> {
        std::fs::read_dir(&uploads)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    let mut s = std::net::TcpStream::connect(&d.addr).unwrap();
    write!(
        s,
        "POST /api/bundle HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 200000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[1u8; 50_000]).unwrap();
    s.flush().unwrap();
    // The upload is being written...
    let t = Instant::now();
    while files().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no upload file appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ... and the client goes away.
    drop(s);
    let t = Instant::now();
    while !files().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "left behind: {:?}\n{}",
            files(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The device is unharmed.
    assert!(d.scored() > 0);
}

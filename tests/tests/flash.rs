//! Installing bundles on the device: trainer -> export -> `device-runtime flash`, A/B slots,
//! anti-downgrade, rollback, refusals, a SIGKILL at every step of a flash, after which the
//! device still holds a valid active bundle (the one it had), and SIGKILLs of a running device,
//! after which its journal verifies and the next run continues the chain.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use firm_e2e::{binary, ok};

fn trainer() -> Command {
    Command::new(binary("host-trainer", "host-trainer"))
}

fn device() -> Command {
    Command::new(binary("device-runtime", "device-runtime"))
}

/// A tiny trained run, a key pair and three bundles: versions 1 and 2, and version 3 signed
/// with another key.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
    foreign: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ok(trainer()
            .current_dir(&root)
            .args([
                "fit", "--demo", "--class", "grid", "--size", "16", "--width", "0.0625",
            ])
            .args([
                "--batch",
                "8",
                "--epochs",
                "1",
                "--checkpoints",
                "1",
                "--out",
                "run",
            ])
            .output()
            .unwrap());
        for k in ["keys", "other-keys"] {
            ok(trainer()
                .current_dir(&root)
                .args(["keygen", "--out", k])
                .output()
                .unwrap());
        }
        let export = |key: &str, version: &str, out: &str| {
            ok(trainer()
                .current_dir(&root)
                .args(["export", "--run", "run", "--key", key, "--out", out])
                .args(["--bundle-version", version, "--thumbnail", "16"])
                .output()
                .unwrap());
            root.join(out)
        };
        let v1 = export("keys/bundle.key", "1", "v1.firm");
        let v2 = export("keys/bundle.key", "2", "v2.firm");
        let foreign = export("other-keys/bundle.key", "3", "foreign.firm");
        Fixture {
            _dir: dir,
            root,
            v1,
            v2,
            foreign,
        }
    })
}

/// A fresh device: its own state folder and a config trusting `keys/bundle.pub`.
fn new_device(f: &Fixture, name: &str) -> PathBuf {
    let dir = f.root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("device.toml");
    std::fs::write(
        &cfg,
        format!(
            "schema-version = 1\nstate-dir = \"state\"\n[bundles]\ntrusted-keys = [\"{}\"]\n",
            f.root.join("keys/bundle.pub").display()
        ),
    )
    .unwrap();
    cfg
}

fn flash(cfg: &Path, file: &Path, extra: &[&str]) -> Output {
    device()
        .arg("flash")
        .arg(file)
        .arg("--config")
        .arg(cfg)
        .args(extra)
        .output()
        .unwrap()
}

fn status(cfg: &Path) -> serde_json::Value {
    let s = ok(device()
        .args(["status", "--json", "--config"])
        .arg(cfg)
        .output()
        .unwrap());
    serde_json::from_str(&s).unwrap()
}

fn active_version(st: &serde_json::Value) -> Option<u64> {
    st["slots"]
        .as_array()?
        .iter()
        .find(|s| s["active"] == true)?["bundle"]["bundle-version"]
        .as_u64()
}

#[test]
fn flash_switch_rollback_and_refusals() {
    let f = fixture();
    let cfg = new_device(f, "dev-basic");
    assert_eq!(status(&cfg)["active"], serde_json::Value::Null);
    let out = ok(flash(&cfg, &f.v1, &[]));
    assert!(out.contains("into slot a"), "{out}");
    let out = ok(flash(&cfg, &f.v2, &[]));
    assert!(
        out.contains("into slot b") && out.contains("stays in slot a"),
        "{out}"
    );
    let st = status(&cfg);
    assert_eq!(st["active"], "b");
    assert_eq!(active_version(&st), Some(2));
    // Anti-downgrade: v1 is refused unless forced.
    let out = flash(&cfg, &f.v1, &[]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("verify step") && err.contains("anti-downgrade"),
        "{err}"
    );
    assert_eq!(active_version(&status(&cfg)), Some(2));
    // Another signer.
    let out = flash(&cfg, &f.foreign, &[]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("verify step") && err.contains("signature"),
        "{err}"
    );
    // A changed byte.
    let mut bytes = std::fs::read(&f.v2).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let bad = f.root.join("dev-basic/bad.firm");
    std::fs::write(&bad, &bytes).unwrap();
    assert_eq!(flash(&cfg, &bad, &[]).status.code(), Some(3));
    assert_eq!(active_version(&status(&cfg)), Some(2));
    // Rollback to v1 and forward again.
    let out = ok(device()
        .args(["rollback", "--config"])
        .arg(&cfg)
        .output()
        .unwrap());
    assert!(out.contains("slot a is active"), "{out}");
    assert_eq!(active_version(&status(&cfg)), Some(1));
    ok(device()
        .args(["rollback", "--config"])
        .arg(&cfg)
        .output()
        .unwrap());
    assert_eq!(active_version(&status(&cfg)), Some(2));
    // Forced downgrade goes to the inactive slot (a, replacing v1 with v1).
    ok(flash(&cfg, &f.v1, &["--force"]));
    assert_eq!(active_version(&status(&cfg)), Some(1));
    // Human status names both slots.
    let s = ok(device()
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap());
    assert!(
        s.contains("active slot: a") && s.contains("slot b: grid version 2"),
        "{s}"
    );
}

#[test]
fn a_corrupted_active_slot_falls_back_at_start() {
    let f = fixture();
    let cfg = new_device(f, "dev-corrupt");
    ok(flash(&cfg, &f.v1, &[]));
    ok(flash(&cfg, &f.v2, &[]));
    // Bit rot in the active slot's file: status says so.
    let active = cfg.parent().unwrap().join("state/slots/b/bundle.firm");
    let mut bytes = std::fs::read(&active).unwrap();
    bytes[700] ^= 4;
    std::fs::write(&active, &bytes).unwrap();
    let st = status(&cfg);
    let problem = st["slots"][1]["problem"].as_str().unwrap().to_string();
    assert!(
        problem.contains("not canonical") || problem.contains("signature"),
        "{st}"
    );
    // `run` starts from slot a instead, makes it active, and scores the replayed images.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[source]\nspec = \"dir:{}\"\n[web]\nlisten = \"127.0.0.1:0\"\n",
        f.root.join("data/demo/grid/test/good").display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let out = device()
        .args(["run", "--exit-at-end", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back to slot a"), "{err}");
    let st = status(&cfg);
    assert_eq!(st["active"], "a");
    assert_eq!(active_version(&st), Some(1));
    assert_eq!(
        st["boot-attempts"], 0,
        "a run that scored its source counts as healthy"
    );
}

/// Kill the flash of v2 (over an active v1) at each step; the device must then still hold a
/// verifying active bundle, and a new flash must work.
#[test]
fn sigkill_at_every_flash_step_leaves_a_valid_active_bundle() {
    let f = fixture();
    for step in ["verify", "write", "load", "self-test", "switch"] {
        let cfg = new_device(f, &format!("dev-kill-{step}"));
        ok(flash(&cfg, &f.v1, &[]));
        let mut child = device()
            .arg("flash")
            .arg(&f.v2)
            .arg("--config")
            .arg(&cfg)
            .env("FIRM_TEST_STALL_AT", step)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the stall marker on stderr.
        let mut stderr = child.stderr.take().unwrap();
        let marker = format!("stalling at {step}");
        let start = Instant::now();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains(&marker) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{step}: no stall; {seen}"
            );
            use std::io::Read;
            let n = stderr.read(&mut buf).unwrap();
            assert!(n > 0, "{step}: flash ended without stalling: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // SIGKILL: no destructor, no flush, like a power cut for the process.
        child.kill().unwrap();
        child.wait().unwrap();
        let st = status(&cfg);
        assert_eq!(st["active"], "a", "{step}: {st}");
        assert_eq!(active_version(&st), Some(1), "{step}: {st}");
        assert!(st["slots"][0]["problem"].is_null(), "{step}: {st}");
        // The device recovers: the same flash now completes.
        ok(flash(&cfg, &f.v2, &[]));
        assert_eq!(active_version(&status(&cfg)), Some(2), "{step}");
    }
}

/// `POST /api/bundle` on a running device: refused without the token, installed with it, and
/// the running pipeline switches to the new bundle (visible in /api/status).
#[test]
fn upload_over_http_installs_and_switches_the_running_pipeline() {
    use std::io::BufRead;
    let f = fixture();
    let cfg = new_device(f, "dev-http");
    ok(flash(&cfg, &f.v1, &[]));
    let dir = cfg.parent().unwrap();
    let token = "upload-token-0123456789";
    std::fs::write(dir.join("token"), token).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[source]\nspec = \"dir:{}\"\nfps = 20.0\nloop = true\n[web]\nlisten = \"127.0.0.1:{port}\"\ntoken-file = \"token\"\n",
        f.root.join("data/demo/grid/test/good").display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let mut child = device()
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let start = Instant::now();
    while !lines.next().unwrap().unwrap().contains("status page on") {
        assert!(start.elapsed() < Duration::from_secs(60));
    }
    std::thread::spawn(move || for _ in lines {});
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}");
    let bytes = std::fs::read(&f.v2).unwrap();
    // Without the token the device answers 401 before it reads the body. A client that sends
    // the whole bundle first may see that answer, or (the server closed the connection while
    // it was still writing) a broken pipe; curl avoids both with `Expect: 100-continue`, and so
    // does this check: the 401 must come back with no body byte sent.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST /api/bundle HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
            bytes.len()
        )
        .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&head));
    }
    // A small body is read whole by the socket buffers: the plain client sees the 401 too.
    let r = agent
        .post(format!("{url}/api/bundle"))
        .send(&bytes[..1024])
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let mut r = agent
        .post(format!("{url}/api/bundle"))
        .header("authorization", format!("Bearer {token}"))
        .send(&bytes[..])
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{body}");
    assert!(
        body.contains("\"bundle-version\":2") && body.contains("\"slot\":\"b\""),
        "{body}"
    );
    // The pipeline picks the new bundle up between frames.
    let start = Instant::now();
    loop {
        let mut r = agent.get(format!("{url}/api/status")).call().unwrap();
        let s: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        if s["bundle"]["bundle-version"] == 2 && s["bundle"]["slot"] == "b" {
            // The page says where the encoder runs (the default backend: the CPU executor).
            assert_eq!(s["bundle"]["backend"], "cpu", "{}", s["bundle"]);
            let device = s["bundle"]["device"].as_str().unwrap_or_default();
            assert!(
                device.starts_with("cpu (") && device.contains("threads"),
                "{device}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pipeline still on {}",
            s["bundle"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A downgrade over HTTP is refused with the step.
    let old = std::fs::read(&f.v1).unwrap();
    let mut r = agent
        .post(format!("{url}/api/bundle"))
        .header("authorization", format!("Bearer {token}"))
        .send(&old[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(
        r.body_mut()
            .read_to_string()
            .unwrap()
            .contains("anti-downgrade")
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(active_version(&status(&cfg)), Some(2));
}

/// Journal records on disk (complete lines).
fn journal_lines(cfg: &Path) -> usize {
    let dir = cfg.parent().unwrap().join("state/journal");
    std::fs::read_dir(&dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .map(|e| {
                std::fs::read(e.path())
                    .unwrap()
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
            })
            .sum()
    })
}

/// `journal verify` output: (first seq, last seq).
fn verified_seqs(cfg: &Path) -> (u64, u64) {
    let out = ok(device()
        .args(["journal", "verify", "--config"])
        .arg(cfg)
        .output()
        .unwrap());
    assert!(out.contains(": ok,"), "{out}");
    let seqs = out
        .split("(seq ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let (a, b) = seqs.split_once("..").unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Run the device until its journal holds more than `at_least` records, then SIGKILL it.
fn run_and_kill(cfg: &Path, at_least: usize) {
    let mut child = device()
        .args(["run", "--config"])
        .arg(cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while journal_lines(cfg) <= at_least {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no alerts after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no handler, no flush, no goodbye
    child.wait().unwrap();
}

#[test]
fn sigkill_of_a_running_device_keeps_its_journal_and_the_next_run_continues_the_chain() {
    let f = fixture();
    let cfg = new_device(f, "dev-kill");
    ok(flash(&cfg, &f.v1, &[]));
    // Every frame is flagged (threshold below any distance), so alerts are written all the time.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[source]\nspec = \"dir:{}\"\nfps = 200.0\nloop = true\n\
         [inference]\nthreshold = -1.0\n[web]\nlisten = \"127.0.0.1:0\"\n",
        f.root.join("data/demo/grid/test").display()
    ));
    std::fs::write(&cfg, text).unwrap();

    run_and_kill(&cfg, 5);
    let (first, last) = verified_seqs(&cfg);
    assert_eq!(first, 1);
    assert!(last >= 6, "{last}");

    // A write the kill cut short leaves a temporary file in flagged/; the next start removes it.
    let flagged = cfg.parent().unwrap().join("state/flagged");
    let stale = flagged.join(".20260101T000000.000Z-000001.png.tmp-4242");
    std::fs::write(&stale, b"half an image").unwrap();

    for round in 0..2 {
        let before = verified_seqs(&cfg).1;
        run_and_kill(&cfg, before as usize + 5);
        let (first, last) = verified_seqs(&cfg);
        assert_eq!(first, 1, "round {round}");
        assert!(last > before + 5, "round {round}: {before} -> {last}");
    }
    assert!(!stale.exists(), "the stale temporary file was removed");
    // Every saved image has its verdict and vice versa, but for at most the pair being written
    // at the moment of each of the three kills.
    let mut pngs = std::collections::BTreeSet::new();
    let mut jsons = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&flagged).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(s) = name.strip_suffix(".png") {
            pngs.insert(s.to_string());
        } else if let Some(s) = name.strip_suffix(".json") {
            jsons.insert(s.to_string());
        }
    }
    assert!(pngs.len() > 10, "{}", pngs.len());
    let unpaired = pngs.symmetric_difference(&jsons).count();
    assert!(unpaired <= 3, "{unpaired} unpaired files");
}

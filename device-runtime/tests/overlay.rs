//! "This part is good" on the device (issue 17, item 2), through the real binary and its HTTP
//! API: a random 128 px bundle whose verdict is the patch score runs a looping `dir:` source of
//! good frames and two defects (A: a fine checkerboard in the middle; B: a coarse one at the
//! top). Asserted:
//! - marking A's alert needs the token; with it, A passes from the next frame on (no alert for
//!   A after the answer) with `marked-good` in its verdict, while B keeps being flagged; the
//!   threshold does not move; the API, the status and /metrics count the entry;
//! - the mark survives a SIGKILL right after its answer; an undo brings A's alerts back;
//! - `overlay list` and `overlay export` give the marked frame, pixel for pixel;
//! - a newly flashed bundle starts without the overlay, unless flashed with `--carry-overlay`
//!   (then A passes under it too and B still fails); another bundle's overlay file under the
//!   active bundle's name is refused (moved aside, journaled, shown in the status) and the
//!   bundle runs without it;
//! - every change is in the journal's hash chain (`journal verify`);
//! - alerts paged from the journal name their saved frame and heat map.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use firm_shared::bundle::Limits;
use firm_shared::detect::synthetic::{pattern, small_patch_bundle};
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const W: u32 = 160;
const H: u32 = 128;
const TOKEN: &str = "overlay-test-token-0123456789";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn bundle(seed: u64, version: u64) -> Vec<u8> {
    let mut b = small_patch_bundle(seed, true).unwrap();
    b.manifest.bundle_version = version;
    b.to_bytes(&key(), &Limits::default()).unwrap()
}

fn checker(mut img: RgbImage, x0: u32, y0: u32, side: u32, cell: u32) -> RgbImage {
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            let v = if (x / cell + y / cell).is_multiple_of(2) {
                0
            } else {
                255
            };
            img.put_pixel(x, y, Rgb([v, v, v]));
        }
    }
    img
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_device-runtime"))
}

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{c:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// One HTTP request; (status, body as JSON or as a string).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code: u16 = out[9..12].parse().unwrap_or(0);
    let text = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()));
    (code, v)
}

/// A running appliance, killed (SIGKILL) when dropped.
struct Device {
    child: Child,
    addr: String,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Device {
    fn start(root: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = bin()
            .current_dir(root)
            .args(["run", "--config", "device.toml", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Device {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let t = Instant::now();
        while std::net::TcpStream::connect(&d.addr).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the device did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn get(&self, path: &str) -> Value {
        let (code, v) = http(&self.addr, "GET", path, None, None);
        assert_eq!(code, 200, "{path}: {v}");
        v
    }

    fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        http(&self.addr, "POST", path, token, Some(body))
    }

    /// Alerts in the journal, oldest first.
    fn alerts(&self) -> Vec<Value> {
        self.get("/api/alerts?limit=200")["alerts"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Wait until `done` holds for the list of alerts.
    fn wait_alerts(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let a = self.alerts();
            if done(&a) {
                return a;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{what}: {a:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The next verdicts, until each of `sources` has been scored at least once after frame
    /// `after`: the last verdict of each.
    fn verdicts_of(&self, after: u64, sources: &[&str]) -> Vec<Value> {
        let t = Instant::now();
        let mut seen: Vec<Option<Value>> = vec![None; sources.len()];
        while seen.iter().any(Option::is_none) {
            let last = self.get("/api/status")["last"].clone();
            if last["seq"].as_u64().unwrap_or(0) > after {
                for (s, v) in sources.iter().zip(seen.iter_mut()) {
                    if last["source"].as_str().unwrap_or("").ends_with(s) {
                        *v = Some(last.clone());
                    }
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no verdict for {sources:?}"
            );
            std::thread::sleep(Duration::from_millis(15));
        }
        seen.into_iter().map(Option::unwrap).collect()
    }

    fn last_seq(&self) -> u64 {
        self.get("/api/status")["last"]["seq"].as_u64().unwrap_or(0)
    }
}

fn source_of(a: &Value) -> &str {
    a["source"].as_str().unwrap()
}

const A: &str = "0004.png";
const B: &str = "0005.png";

fn overlay_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn sha(bytes: &[u8]) -> String {
    firm_shared::bundle::sha256_hex(bytes)
}

#[test]
fn marked_good_passes_survives_sigkill_and_stays_with_its_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("bundle.pub"),
        firm_shared::bundle::container::key_hex(key().verifying_key().as_bytes()),
    )
    .unwrap();
    std::fs::write(root.join("token"), TOKEN).unwrap();
    let (b1, b2, b3) = (bundle(11, 1), bundle(12, 2), bundle(13, 3));
    for (n, b) in [("b1.firm", &b1), ("b2.firm", &b2), ("b3.firm", &b3)] {
        std::fs::write(root.join(n), b).unwrap();
    }
    // Four good parts, then defect A, then defect B.
    let frames = root.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let good: Vec<RgbImage> = (0..5).map(|_| pattern(W, H, &mut rng)).collect();
    for (i, g) in good.iter().take(4).enumerate() {
        g.save(frames.join(format!("{i:04}.png"))).unwrap();
    }
    let a_img = checker(good[0].clone(), 68, 52, 24, 4);
    a_img.save(frames.join(A)).unwrap();
    checker(good[4].clone(), 100, 20, 28, 7)
        .save(frames.join(B))
        .unwrap();
    std::fs::write(
        root.join("device.toml"),
        "schema-version = 1\nsite = \"overlay-test\"\nstate-dir = \"state\"\n\
         [bundles]\ntrusted-keys = [\"bundle.pub\"]\n\
         [source]\nspec = \"dir:frames\"\nfps = 12.0\nloop = true\n\
         [inference]\nthreads = 1\n\
         [web]\ntoken-file = \"token\"\npublic-reads = true\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        ok(bin()
            .current_dir(root)
            .args(args)
            .args(["--config", "device.toml"]))
    };
    cli(&["flash", "b1.firm"]);
    let overlay_dir = root.join("state/overlay");

    // 1. Both defects are flagged; A is marked good, with the token only.
    let dev = Device::start(root);
    let alerts = dev.wait_alerts("alerts for A and B", |a| {
        a.iter().any(|x| source_of(x).ends_with(A)) && a.iter().any(|x| source_of(x).ends_with(B))
    });
    assert!(
        alerts
            .iter()
            .all(|x| source_of(x).ends_with(A) || source_of(x).ends_with(B)),
        "good frames flagged: {alerts:?}"
    );
    let alert_a = alerts.iter().find(|x| source_of(x).ends_with(A)).unwrap();
    let seq_a = alert_a["journal-seq"].as_u64().unwrap();
    // Read back from the journal (which takes an alert before its frame is saved), a page still
    // names the saved frame and its heat map.
    assert!(
        alert_a["image"]
            .as_str()
            .is_some_and(|f| f.ends_with(".png"))
            && alert_a["heat-image"]
                .as_str()
                .is_some_and(|f| f.ends_with(".heat.jpg")),
        "{alert_a}"
    );
    let threshold = alert_a["threshold"].as_f64().unwrap();
    let (code, why) = dev.post("/api/overlay/mark", None, json!({"alert": seq_a}));
    assert_eq!(code, 401, "{why}");
    let (code, why) = dev.post("/api/overlay/mark", Some(TOKEN), json!({"alert": 999_999}));
    assert_eq!(code, 404, "{why}");
    let (code, marked) = dev.post("/api/overlay/mark", Some(TOKEN), json!({"alert": seq_a}));
    let after_mark = dev.last_seq();
    assert_eq!(code, 200, "{marked}");
    assert!(marked["before"].as_f64().unwrap() > threshold, "{marked}");
    assert!(marked["after"].as_f64().unwrap() < threshold, "{marked}");
    assert_eq!(marked["threshold"].as_f64().unwrap(), threshold);
    assert!(
        marked["entry"]["patch-rows"].as_u64().unwrap() > 0,
        "{marked}"
    );
    let entry = marked["entry"]["id"].as_u64().unwrap();
    let (code, again) = dev.post("/api/overlay/mark", Some(TOKEN), json!({"alert": seq_a}));
    assert_eq!(code, 409, "{again}");

    // 2. From the next frame on, A passes (marked good) and B is still flagged.
    let v = dev.verdicts_of(after_mark, &[A, B]);
    assert_eq!(v[0]["defect"], false, "{}", v[0]);
    assert_eq!(v[0]["marked-good"], entry, "{}", v[0]);
    assert_eq!(v[0]["threshold"].as_f64().unwrap(), threshold);
    assert_eq!(v[1]["defect"], true, "{}", v[1]);
    let later = dev.wait_alerts("a new alert for B after the mark", |a| {
        a.iter()
            .any(|x| source_of(x).ends_with(B) && x["seq"].as_u64().unwrap() > after_mark)
    });
    let late_a: Vec<&Value> = later
        .iter()
        .filter(|x| source_of(x).ends_with(A) && x["seq"].as_u64().unwrap() > after_mark)
        .collect();
    assert!(late_a.is_empty(), "A flagged after its mark: {late_a:?}");
    let listing = dev.get("/api/overlay");
    assert_eq!(listing["entries"].as_array().unwrap().len(), 1, "{listing}");
    assert_eq!(listing["entries"][0]["alert"], seq_a);
    assert_eq!(dev.get("/api/status")["overlay"]["entries"], 1);
    let (_, metrics) = http(&dev.addr, "GET", "/metrics", None, None);
    assert!(
        metrics.as_str().unwrap().contains("firm_overlay_entries 1"),
        "{metrics}"
    );

    // 3. SIGKILL, restart: the mark holds from the first frames.
    drop(dev);
    let dev = Device::start(root);
    let v = dev.verdicts_of(0, &[A, B]);
    assert_eq!(
        (v[0]["defect"].clone(), v[1]["defect"].clone()),
        (json!(false), json!(true)),
        "{v:?}"
    );
    assert_eq!(v[0]["marked-good"], entry);
    // Undo: A is flagged again; then marked again for what follows.
    let (code, undone) = dev.post("/api/overlay/undo", Some(TOKEN), json!({"entry": entry}));
    assert_eq!(code, 200, "{undone}");
    assert!(undone["after"].as_f64().unwrap() > threshold, "{undone}");
    let after_undo = dev.last_seq();
    dev.wait_alerts("A flagged again after the undo", |a| {
        a.iter()
            .any(|x| source_of(x).ends_with(A) && x["seq"].as_u64().unwrap() > after_undo)
    });
    assert_eq!(
        dev.get("/api/overlay")["entries"].as_array().unwrap().len(),
        0
    );
    let (code, marked) = dev.post("/api/overlay/mark", Some(TOKEN), json!({"alert": seq_a}));
    assert_eq!(code, 200, "{marked}");
    assert_eq!(marked["entry"]["id"], entry + 1, "ids are not reused");
    drop(dev);

    // 4. The marked frame comes out pixel for pixel, for the next training run.
    let listed = cli(&["overlay", "list"]);
    assert!(
        listed.contains("1 frames marked good") && listed.contains(&format!("alert {seq_a}")),
        "{listed}"
    );
    let exported = root.join("exported");
    cli(&["overlay", "export", "--out", exported.to_str().unwrap()]);
    let png = exported.join(format!("marked-good-{:04}-alert-{seq_a}.png", entry + 1));
    assert_eq!(image::open(&png).unwrap().to_rgb8(), a_img);
    let index: Value =
        serde_json::from_slice(&std::fs::read(exported.join("overlay.json")).unwrap()).unwrap();
    assert_eq!(index["entries"][0]["alert"], seq_a);

    // 5. A new bundle flashed with --carry-overlay: A is marked again under it and passes; B
    //    still fails. The first bundle's overlay stays as it was (for a rollback).
    let (sha1, sha2, sha3) = (sha(&b1), sha(&b2), sha(&b3));
    let file1 = overlay_dir.join(format!("{sha1}.overlay"));
    let kept = std::fs::read(&file1).unwrap();
    let out = cli(&["flash", "b2.firm", "--carry-overlay"]);
    assert!(out.contains("marked again"), "{out}");
    let dev = Device::start(root);
    let v = dev.verdicts_of(0, &[A, B]);
    assert_eq!(
        (v[0]["defect"].clone(), v[1]["defect"].clone()),
        (json!(false), json!(true)),
        "{v:?}"
    );
    let o = dev.get("/api/overlay");
    assert_eq!(o["bundle"], sha2.as_str(), "{o}");
    assert_eq!(o["entries"][0]["carried-from"], sha1.as_str(), "{o}");
    drop(dev);
    assert_eq!(std::fs::read(&file1).unwrap(), kept);

    // 6. A bundle flashed without it starts with no overlay: A is flagged.
    cli(&["flash", "b3.firm"]);
    let dev = Device::start(root);
    let v = dev.verdicts_of(0, &[A]);
    assert_eq!(v[0]["defect"], true, "{}", v[0]);
    assert_eq!(dev.get("/api/status")["overlay"]["entries"], 0);
    drop(dev);

    // 7. Another bundle's overlay file under the active bundle's name is refused: moved aside,
    //    journaled, reported; the bundle runs without it.
    let file3 = overlay_dir.join(format!("{sha3}.overlay"));
    std::fs::copy(overlay_dir.join(format!("{sha2}.overlay")), &file3).unwrap();
    let dev = Device::start(root);
    let v = dev.verdicts_of(0, &[A]);
    assert_eq!(
        v[0]["defect"], true,
        "a foreign overlay was applied: {}",
        v[0]
    );
    let st = dev.get("/api/status")["overlay"].clone();
    assert!(
        st["refused"]
            .as_str()
            .unwrap_or("")
            .contains("belongs to bundle"),
        "{st}"
    );
    assert_eq!(st["entries"], 0);
    drop(dev);
    assert!(!file3.exists());
    assert!(
        overlay_files(&overlay_dir)
            .iter()
            .any(|p| p.to_string_lossy().contains(".overlay.refused-")),
        "{:?}",
        overlay_files(&overlay_dir)
    );

    // 8. Every change is in the journal's hash chain.
    let verified = cli(&["journal", "verify"]);
    assert!(verified.contains(": ok,"), "{verified}");
    let mut records = String::new();
    for f in std::fs::read_dir(root.join("state/journal")).unwrap() {
        records.push_str(&std::fs::read_to_string(f.unwrap().path()).unwrap());
    }
    for action in ["mark", "undo", "carry", "refused"] {
        let n = records.matches(&format!(r#""action":"{action}""#)).count();
        assert!(n >= 1, "no journaled overlay {action}");
    }
    assert_eq!(records.matches(r#""action":"mark""#).count(), 2);
}

//! The status page in a real browser: Debian's headless Chromium, driven over the W3C WebDriver
//! protocol (chromedriver, plain HTTP + JSON), against `device-runtime run` on a looping `dir:`
//! source with a real exported bundle. Asserted from the DOM: verdict events arrive over SSE after
//! the page has loaded, a verdict is shown, and alerts (with their nearest-good thumbnail) appear
//! while the page is open. A screenshot is written to target/browser-status-page.png.
//!
//! Runs when /usr/bin/chromium and chromedriver exist (`.ci/run` installs the Debian packages
//! chromium and chromium-driver) and says so when they do not.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use firm_e2e::{binary, ok, workspace_root};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Kills the child when dropped (a failing assertion must not leave a browser running).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct WebDriver {
    base: String,
    session: String,
    agent: ureq::Agent,
}

impl WebDriver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, b) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(
                    serde_json::to_vec(&b.unwrap_or(json!({})))
                        .unwrap()
                        .as_slice(),
                ),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let text = resp.body_mut().read_to_string().unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["value"].clone()
    }

    fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }
}

#[test]
fn status_page_shows_live_verdicts_and_alerts_in_chromium() {
    let Some(driver) = which("chromedriver").filter(|_| Path::new(CHROMIUM).is_file()) else {
        println!("browser test skipped: {CHROMIUM} or chromedriver not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let trainer = |args: &[&str]| {
        ok(Command::new(binary("host-trainer", "host-trainer"))
            .current_dir(root)
            .args(args)
            .output()
            .unwrap())
    };
    trainer(&[
        "fit",
        "--demo",
        "--class",
        "grid",
        "--size",
        "16",
        "--width",
        "0.0625",
        "--epochs",
        "1",
        "--checkpoints",
        "1",
    ]);
    let run = std::fs::read_dir(root.join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    trainer(&["keygen", "--out", "keys"]);
    trainer(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--key",
        "keys/bundle.key",
        "--out",
        "b.firm",
    ]);
    // Every frame is flagged (threshold below any distance), so alerts flow for the page.
    let port = free_port();
    std::fs::write(
        root.join("device.toml"),
        format!(
            "schema-version = 1\nsite = \"browser-test\"\nstate-dir = \"state\"\n\
             [bundles]\ntrusted-keys = [\"keys/bundle.pub\"]\n\
             [source]\nspec = \"dir:data/demo/grid/test\"\nfps = 8.0\nloop = true\n\
             [inference]\nthreshold = -1.0\n\
             [web]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let device = || Command::new(binary("device-runtime", "device-runtime"));
    ok(device()
        .current_dir(root)
        .args(["flash", "b.firm", "--config", "device.toml"])
        .output()
        .unwrap());
    let mut rt = device()
        .current_dir(root)
        .args(["run", "--config", "device.toml"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = rt.stderr.take().unwrap();
    let _rt = Guard(rt);
    let mut lines = BufReader::new(stderr).lines();
    let t = Instant::now();
    loop {
        let l = lines.next().expect("device-runtime exited").unwrap();
        if l.contains("status page on") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "device did not start"
        );
    }
    std::thread::spawn(move || for _ in lines {});

    let wd_port = free_port();
    let _driver = Guard(
        Command::new(driver)
            .arg(format!("--port={wd_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("http://127.0.0.1:{wd_port}");
    let t = Instant::now();
    while agent.get(format!("{base}/status")).call().is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = root.join("chromium-profile");
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                     format!("--user-data-dir={}", profile.display())],
        }
    }}});
    let mut resp = agent
        .post(format!("{base}/session"))
        .header("content-type", "application/json")
        .send(serde_json::to_vec(&caps).unwrap().as_slice())
        .unwrap();
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let session = v["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {v}"))
        .to_string();
    let wd = WebDriver {
        base,
        session,
        agent,
    };
    wd.call(
        "POST",
        "/url",
        Some(json!({ "url": format!("http://127.0.0.1:{port}/") })),
    );
    let read = || {
        wd.eval(
            "return { events: Number(document.getElementById('sse-count').textContent), \
             verdict: document.getElementById('verdict').textContent, \
             alerts: document.querySelectorAll('#alerts li').length, \
             thumbs: Array.from(document.querySelectorAll('#alerts img.nearest')).filter(i => i.complete && i.naturalWidth > 0).length, \
             site: document.getElementById('site').textContent };",
        )
    };
    let first = read();
    let t = Instant::now();
    let last = loop {
        let s = read();
        let enough = s["events"].as_u64().unwrap_or(0) >= 5
            && s["alerts"].as_u64().unwrap_or(0) > first["alerts"].as_u64().unwrap_or(0)
            && s["thumbs"].as_u64().unwrap_or(0) >= 1;
        if enough {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "page did not update: {s}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(last["verdict"], "DEFECT", "{last}");
    assert_eq!(last["site"], "browser-test", "{last}");
    let png = wd.call("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
    let shot = workspace_root().join("target/browser-status-page.png");
    std::fs::write(&shot, &png).unwrap();
    println!(
        "browser test: {} events over SSE after load, {} alerts on the page, verdict {}; screenshot {}",
        last["events"],
        last["alerts"],
        last["verdict"],
        shot.display()
    );
    wd.call("DELETE", "", None);
}

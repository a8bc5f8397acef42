//! Alert sinks against real local peers: the webhook against an HTTP server on loopback (retry
//! with backoff, bounded queue that drops instead of blocking), flagged frames within their disk
//! budget, the GPIO reject line's pulse thread (the character device itself needs hardware).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use device_runtime::alerts::AlertSink;
use device_runtime::alerts::flagged::FlaggedFrames;
use device_runtime::alerts::gpio::RejectLine;
use device_runtime::alerts::webhook::Webhook;
use device_runtime::capture::Frame;
use device_runtime::config::WebhookConfig;
use device_runtime::state::{AlertEntry, Verdict};

fn alert(seq: u64) -> AlertEntry {
    AlertEntry {
        verdict: Verdict {
            seq,
            time: device_runtime::state::timestamp(SystemTime::now()),
            source: format!("bad/{seq}.png"),
            distance: 0.9,
            threshold: 0.5,
            defect: true,
            nearest: 3,
            nearest_source: "train/good/003.png".into(),
            latency_ms: 5.0,
            heat: None,
            marked_good: None,
        },
        journal_seq: None,
        image: None,
        heat_image: None,
        overlay: None,
    }
}

fn frame(seq: u64) -> Frame {
    Frame {
        seq,
        time: SystemTime::now(),
        image: image::RgbImage::from_pixel(32, 24, image::Rgb([seq as u8, 80, 160])),
        source: format!("bad/{seq}.png"),
    }
}

/// A minimal HTTP/1.1 server: answers each request with the next status of `plan` (then 200),
/// records the bodies; `delay` before answering.
fn server(plan: Vec<u16>, delay: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", l.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b = bodies.clone();
    std::thread::spawn(move || {
        let mut plan = plan.into_iter();
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            std::thread::sleep(delay);
            let code = plan.next().unwrap_or(200);
            b.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, bodies)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn webhook_retries_until_delivered() {
    let (url, bodies) = server(vec![500, 503], Duration::ZERO);
    let mut w = Webhook::start(
        &WebhookConfig {
            url,
            timeout_ms: 2000,
            attempts: 4,
            queue: 8,
        },
        "line-9",
    );
    w.alert(&mut alert(1), &frame(1)).unwrap();
    let stats = w.stats.clone();
    wait_until("delivery", || stats.delivered.load(Ordering::Relaxed) == 1);
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "two failures, then delivered: {got:?}");
    let v: serde_json::Value = serde_json::from_str(&got[2]).unwrap();
    assert_eq!(v["seq"], 1);
    assert_eq!(v["nearest-source"], "train/good/003.png");
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
}

#[test]
fn webhook_delivers_drift_warnings_with_their_type_and_numbers() {
    use firm_shared::drift::{DriftKind, DriftWarning, Evidence, RangeEvidence};
    let (url, bodies) = server(vec![], Duration::ZERO);
    let mut w = Webhook::start(
        &WebhookConfig {
            url,
            timeout_ms: 2000,
            attempts: 2,
            queue: 8,
        },
        "line-9",
    );
    let warning = DriftWarning {
        kind: DriftKind::Brightness,
        active: true,
        frame: 7,
        evidence: Evidence::Range(RangeEvidence {
            window: 32,
            median: 61.5,
            training: [96.0, 104.0],
            allowed: [94.0, 106.0],
        }),
        message: "brightness drift".into(),
    };
    w.drift(&warning, &frame(7)).unwrap();
    let stats = w.stats.clone();
    wait_until("delivery", || stats.delivered.load(Ordering::Relaxed) == 1);
    let v: serde_json::Value = serde_json::from_str(&bodies.lock().unwrap()[0]).unwrap();
    assert_eq!(
        (&v["type"], &v["kind"], &v["active"], &v["frame"]),
        (
            &"drift".into(),
            &"brightness".into(),
            &true.into(),
            &7.into()
        ),
        "{v}"
    );
    assert_eq!(v["evidence"]["test"], "range");
    assert_eq!(v["evidence"]["median"], 61.5);
    assert_eq!(v["evidence"]["training"][1], 104.0);
    assert!(v["time"].is_string(), "{v}");
}

#[test]
fn webhook_gives_up_after_its_attempts_and_never_blocks() {
    // A receiver that always fails: each alert is tried `attempts` times, then counted failed.
    let (url, bodies) = server(vec![500; 100], Duration::ZERO);
    let mut w = Webhook::start(
        &WebhookConfig {
            url,
            timeout_ms: 2000,
            attempts: 2,
            queue: 4,
        },
        "x",
    );
    w.alert(&mut alert(1), &frame(1)).unwrap();
    let stats = w.stats.clone();
    wait_until("failure", || stats.failed.load(Ordering::Relaxed) == 1);
    assert_eq!(bodies.lock().unwrap().len(), 2);
    // A slow receiver: the queue fills and alerts are dropped, each call returning at once.
    let (url, _) = server(vec![], Duration::from_secs(3));
    let mut w = Webhook::start(
        &WebhookConfig {
            url,
            timeout_ms: 5000,
            attempts: 1,
            queue: 2,
        },
        "x",
    );
    let t = Instant::now();
    let results: Vec<bool> = (0..10)
        .map(|i| w.alert(&mut alert(i), &frame(i)).is_ok())
        .collect();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "enqueueing blocked: {:?}",
        t.elapsed()
    );
    assert!(
        results.iter().filter(|ok| !**ok).count() >= 7,
        "{results:?}"
    );
    assert!(w.stats.dropped.load(Ordering::Relaxed) >= 7);
}

#[test]
fn webhook_to_a_closed_port_fails_cleanly() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x", l.local_addr().unwrap());
    drop(l);
    let mut w = Webhook::start(
        &WebhookConfig {
            url,
            timeout_ms: 500,
            attempts: 2,
            queue: 2,
        },
        "x",
    );
    w.alert(&mut alert(1), &frame(1)).unwrap();
    let stats = w.stats.clone();
    wait_until("failure", || stats.failed.load(Ordering::Relaxed) == 1);
}

#[test]
fn flagged_frames_stay_within_their_budget_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = FlaggedFrames::open(dir.path(), 6_000).unwrap();
    let mut names = Vec::new();
    for i in 0..20 {
        let mut a = alert(i);
        a.verdict.time = format!("2026-12-01T10:00:{i:02}.000Z");
        f.alert(&mut a, &frame(i)).unwrap();
        names.push(a.image.clone().unwrap());
        assert!(f.total() <= 6_000, "{}", f.total());
    }
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(on_disk, f.total());
    assert!(
        dir.path().join(names.last().unwrap()).is_file(),
        "the newest is kept"
    );
    assert!(
        !dir.path().join(&names[0]).exists(),
        "the oldest went first"
    );
    let img = image::open(dir.path().join(names.last().unwrap())).unwrap();
    assert_eq!((img.width(), img.height()), (32, 24));
    // Reopening counts what is there.
    let again = FlaggedFrames::open(dir.path(), 6_000).unwrap();
    assert_eq!(again.total(), f.total());
}

#[test]
fn reject_line_pulses_off_the_pipeline_thread_and_merges_bursts() {
    let pulses = Arc::new(Mutex::new(0u32));
    let p = pulses.clone();
    let mut line = RejectLine::with_pulser(move || {
        std::thread::sleep(Duration::from_millis(100));
        *p.lock().unwrap() += 1;
    });
    let t = Instant::now();
    for i in 0..5 {
        line.alert(&mut alert(i), &frame(i)).unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "alert() waited for the pulse"
    );
    let stats = line.stats.clone();
    wait_until("pulses", || stats.pulses.load(Ordering::Relaxed) >= 1);
    std::thread::sleep(Duration::from_millis(250));
    let n = *pulses.lock().unwrap();
    assert!((1..=2).contains(&n), "{n} pulses for a burst of 5");
    assert!(stats.merged.load(Ordering::Relaxed) >= 3);
}

#[cfg(not(feature = "gpio"))]
#[test]
fn gpio_config_without_the_feature_is_refused_clearly() {
    let e = RejectLine::open(&device_runtime::config::GpioConfig {
        chip: "/dev/gpiochip0".into(),
        line: 17,
        pulse_ms: 50,
        active_low: false,
    })
    .unwrap_err();
    assert!(e.contains("gpio feature") && e.contains("line 17"), "{e}");
}

#[cfg(feature = "gpio")]
#[test]
fn gpio_on_a_missing_chip_is_a_clear_error() {
    let e = RejectLine::open(&device_runtime::config::GpioConfig {
        chip: "/dev/gpiochip99".into(),
        line: 17,
        pulse_ms: 50,
        active_low: false,
    })
    .unwrap_err();
    assert!(
        e.contains("/dev/gpiochip99") && e.contains("line 17"),
        "{e}"
    );
}

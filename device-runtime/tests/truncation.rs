//! Deleting the journal's end (issue 18, deliverable 4): the chain alone cannot show it, the
//! checkpoint sealed with the device secret outside the journal directory does.
//! - `journal verify` fails naming the numbers when the last record or the last file is deleted,
//!   when the end is deleted and written anew, when the checkpoint is edited or deleted;
//! - a "torn" last line that the checkpoint covers is not silently cut at the next start: it is
//!   kept in a `journal-tamper` record that every later verify reports, while a real power cut's
//!   torn line is still truncated quietly;
//! - two writers (the appliance and `flash --force`) share one chain through the journal's lock;
//! - the head goes out in every webhook payload and in `/metrics`;
//! - a forced flash that lowers the version is journaled (through the binary, with `journal
//!   verify` before and after deleting that record).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use device_runtime::alerts::AlertSink;
use device_runtime::alerts::journal::{
    self, CHECKPOINT_FILE, Journal, JournalError, JournalErrorKind, JournalOptions, SECRET_FILE,
    Seal, SealStatus, TAMPER_RECORD, file_name, verify_sealed,
};
use device_runtime::alerts::journal_sink::JournalSink;
use device_runtime::alerts::webhook::Webhook;
use device_runtime::capture::Frame;
use device_runtime::config::WebhookConfig;
use device_runtime::state::{AlertEntry, Verdict};
use serde_json::{Value, json};

/// Lines are about 250 bytes: two per file.
const TWO_PER_FILE: JournalOptions = JournalOptions {
    max_file_bytes: 600,
    max_files: 100,
};

fn time(i: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_750_000_000_000 + i * 1_500)
}

fn record(i: u64) -> Value {
    json!({"frame": i * 10, "distance": 0.0123 * i as f64, "verdict": "defect"})
}

/// The appliance's layout under `state`: STATE/journal, STATE/journal.checkpoint, STATE/secret.
fn journal_dir(state: &Path) -> PathBuf {
    state.join("journal")
}

fn open(state: &Path, opts: JournalOptions) -> Journal {
    Journal::open_sealed(
        &journal_dir(state),
        opts,
        Seal::in_state_dir(state).unwrap(),
    )
    .unwrap()
}

/// `n` records into a sealed journal under `state`.
fn build(state: &Path, n: u64, opts: JournalOptions) {
    let mut j = open(state, opts);
    for i in 1..=n {
        j.append_at(record(i), time(i)).unwrap();
    }
}

fn check(state: &Path) -> Result<(journal::VerifyReport, SealStatus), JournalError> {
    let seal = Seal::existing(state).unwrap();
    verify_sealed(&journal_dir(state), seal.as_ref())
}

fn last_file(state: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = fs::read_dir(journal_dir(state))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files.pop().unwrap()
}

/// Delete the last line of the last file, as `sed -i '$d'` would.
fn delete_last_record(state: &Path) {
    let p = last_file(state);
    let text = fs::read_to_string(&p).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    let kept: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(&p, kept).unwrap();
}

fn records(state: &Path) -> Vec<journal::Entry> {
    let mut v = Vec::new();
    journal::scan(&journal_dir(state), |_, e| v.push(e)).unwrap();
    v
}

#[test]
fn deleting_the_last_record_fails_verify_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    build(state, 5, JournalOptions::default());
    let (r, sealed) = check(state).unwrap();
    assert_eq!(r.last_seq, Some(5));
    assert!(
        matches!(&sealed, SealStatus::Holds { checkpoint, newer: 0 } if checkpoint.seq == 5 && checkpoint.hash == r.last_hash),
        "{sealed:?}"
    );
    let hash5 = r.last_hash;

    delete_last_record(state);
    // The chain alone still holds: this is what the checkpoint is for.
    assert_eq!(
        journal::verify(&journal_dir(state)).unwrap().last_seq,
        Some(4)
    );
    let e = check(state).unwrap_err();
    match &e {
        JournalError::Truncated {
            checkpoint,
            checkpoint_seq: 5,
            checkpoint_hash,
            last_seq: 4,
            ..
        } => {
            assert_eq!(checkpoint, &state.join(CHECKPOINT_FILE));
            assert_eq!(checkpoint_hash, &hash5);
        }
        other => panic!("expected Truncated 5 -> 4, got {other:?}"),
    }
    assert_eq!(e.kind(), JournalErrorKind::Tampered);
    let msg = e.to_string();
    assert!(msg.contains("records 5..=5 were deleted"), "{msg}");
    assert!(msg.contains("ends at seq 4"), "{msg}");
}

#[test]
fn deleting_the_last_file_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    build(state, 5, TWO_PER_FILE);
    assert_eq!(check(state).unwrap().0.files, 3);
    fs::remove_file(journal_dir(state).join(file_name(3))).unwrap();
    assert!(journal::verify(&journal_dir(state)).is_ok());
    let e = check(state).unwrap_err();
    assert!(
        matches!(
            e,
            JournalError::Truncated {
                checkpoint_seq: 5,
                last_seq: 4,
                ..
            }
        ),
        "{e:?}"
    );
    // Every file gone: the journal ends before its first record.
    for no in 1..=2 {
        fs::remove_file(journal_dir(state).join(file_name(no))).unwrap();
    }
    assert!(
        matches!(
            check(state),
            Err(JournalError::Truncated {
                checkpoint_seq: 5,
                last_seq: 0,
                ..
            })
        ),
        "{:?}",
        check(state)
    );
}

#[test]
fn an_end_deleted_and_written_anew_without_the_secret_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    build(state, 5, JournalOptions::default());
    delete_last_record(state);
    // Someone without the secret continues the chain with tools of their own.
    let mut forger = Journal::open(&journal_dir(state), JournalOptions::default()).unwrap();
    forger
        .append_at(json!({"note": "nothing to see"}), time(9))
        .unwrap();
    forger
        .append_at(json!({"note": "really"}), time(10))
        .unwrap();
    drop(forger);
    assert_eq!(
        journal::verify(&journal_dir(state)).unwrap().last_seq,
        Some(6)
    );
    let e = check(state).unwrap_err();
    assert!(matches!(&e, JournalError::Diverged { seq: 5, .. }), "{e:?}");
    assert!(e.to_string().contains("record seq 5 hashes to"), "{e}");
}

#[test]
fn an_edited_or_deleted_checkpoint_is_reported_as_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    build(state, 5, JournalOptions::default());
    let cp_path = state.join(CHECKPOINT_FILE);
    let original = fs::read_to_string(&cp_path).unwrap();
    let mut cp: Value = serde_json::from_str(&original).unwrap();
    assert_eq!(cp["seq"], 5);

    // Moved back to record 4 with record 4's real hash, to cover the deletion of record 5.
    let hash4 = records(state)[3].hash.clone();
    delete_last_record(state);
    cp["seq"] = json!(4);
    cp["hash"] = json!(hash4);
    fs::write(&cp_path, serde_json::to_string(&cp).unwrap()).unwrap();
    let e = check(state).unwrap_err();
    assert!(matches!(e, JournalError::CheckpointForged { .. }), "{e:?}");
    assert_eq!(e.kind(), JournalErrorKind::Tampered);
    assert!(e.to_string().contains("HMAC does not match seq 4"), "{e}");

    // Not even JSON.
    fs::write(&cp_path, "{}").unwrap();
    assert!(matches!(
        check(state),
        Err(JournalError::CheckpointForged { .. })
    ));

    // Deleted, while the secret says the device has been sealing.
    fs::remove_file(&cp_path).unwrap();
    let e = check(state).unwrap_err();
    assert!(
        matches!(e, JournalError::CheckpointMissing { last_seq: 4, .. }),
        "{e:?}"
    );

    // Without a secret there is nothing to check against: said, not failed.
    fs::remove_file(state.join(SECRET_FILE)).unwrap();
    assert_eq!(check(state).unwrap().1, SealStatus::NoSecret);
}

#[test]
fn a_start_after_a_deleted_end_journals_the_evidence_and_keeps_reporting_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    build(state, 5, JournalOptions::default());
    delete_last_record(state);

    // The appliance starts: it does not refuse, it does not overwrite the evidence either.
    let mut j = open(state, JournalOptions::default());
    j.append_at(record(6), time(6)).unwrap();
    drop(j);
    let all = records(state);
    let tamper = all
        .iter()
        .find(|e| e.record["type"] == TAMPER_RECORD)
        .expect("a journal-tamper record");
    assert_eq!(tamper.seq, 5);
    assert_eq!(tamper.record["checkpoint"]["seq"], 5);
    assert_eq!(tamper.record["found"]["seq"], 4);
    let problem = tamper.record["problem"].as_str().unwrap();
    assert!(problem.contains("records 5..=5 were deleted"), "{problem}");

    // The checkpoint follows the new head, and verify keeps failing on the record.
    let e = check(state).unwrap_err();
    match &e {
        JournalError::TamperRecorded {
            seq: 5, problem, ..
        } => {
            assert!(problem.contains("records 5..=5 were deleted"), "{problem}")
        }
        other => panic!("expected TamperRecorded, got {other:?}"),
    }
    assert_eq!(e.kind(), JournalErrorKind::Tampered);
}

#[test]
fn a_torn_line_the_checkpoint_covers_is_kept_but_a_power_cut_is_still_repaired() {
    // A power cut during an append: the fragment is not checkpointed, open truncates it quietly.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    build(state, 3, JournalOptions::default());
    let p = last_file(state);
    let before = fs::read(&p).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"{\"seq\":4,\"time\":\"2025-06")
        .unwrap();
    assert!(check(state).unwrap().0.torn_last_line.is_some());
    drop(open(state, JournalOptions::default()));
    assert_eq!(fs::read(&p).unwrap(), before);
    assert!(
        matches!(check(state).unwrap().1, SealStatus::Holds { newer: 0, .. }),
        "{:?}",
        check(state)
    );

    // The last record's newline removed: it looks torn, but the checkpoint covers it.
    let text = String::from_utf8(before).unwrap();
    let last_line = text.lines().last().unwrap().to_string();
    fs::write(&p, text.trim_end_matches('\n')).unwrap();
    let e = check(state).unwrap_err();
    assert!(
        matches!(
            e,
            JournalError::Truncated {
                checkpoint_seq: 3,
                last_seq: 2,
                ..
            }
        ),
        "{e:?}"
    );
    drop(open(state, JournalOptions::default()));
    let all = records(state);
    let tamper = &all.last().unwrap().record;
    assert_eq!(tamper["type"], TAMPER_RECORD);
    assert_eq!(tamper["torn"]["text"], json!(last_line), "{tamper}");
    assert_eq!(tamper["torn"]["line"], 3);
    assert!(matches!(
        check(state),
        Err(JournalError::TamperRecorded { seq: 3, .. })
    ));
}

#[test]
fn a_checkpoint_left_behind_by_a_crash_is_not_tampering() {
    // A power cut after the line's fsync, before the checkpoint's rename.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    build(state, 4, TWO_PER_FILE);
    let cp_path = state.join(CHECKPOINT_FILE);
    let at4 = fs::read(&cp_path).unwrap();
    let mut j = open(state, TWO_PER_FILE);
    j.append_at(record(5), time(5)).unwrap();
    drop(j);
    fs::write(&cp_path, &at4).unwrap();
    let (_, sealed) = check(state).unwrap();
    assert!(
        matches!(&sealed, SealStatus::Holds { checkpoint, newer: 1 } if checkpoint.seq == 4),
        "{sealed:?}"
    );
    // The next start seals the head again, without a tamper record.
    drop(open(state, TWO_PER_FILE));
    assert!(matches!(
        check(state).unwrap().1,
        SealStatus::Holds { newer: 0, .. }
    ));
    assert!(
        records(state)
            .iter()
            .all(|e| e.record["type"] != TAMPER_RECORD)
    );
}

#[test]
fn two_writers_share_one_chain_through_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    // The appliance and the command line, each with its own handle on the journal.
    let mut run = open(state, TWO_PER_FILE);
    let mut cli = open(state, TWO_PER_FILE);
    let mut seqs = Vec::new();
    for i in 0..7 {
        let j = if i % 3 == 0 { &mut cli } else { &mut run };
        seqs.push(j.append_at(record(i), time(i)).unwrap().seq);
    }
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let (r, sealed) = check(state).unwrap();
    assert_eq!((r.records, r.last_seq), (7, Some(7)));
    // The last writer's head is the chain's; the other learns it at its next append.
    assert_eq!((cli.head().seq, &cli.head().hash), (7, &r.last_hash));
    assert_eq!(run.head().seq, 6);
    assert!(matches!(sealed, SealStatus::Holds { newer: 0, .. }));
}

fn alert() -> AlertEntry {
    AlertEntry {
        verdict: Verdict {
            seq: 3,
            time: device_runtime::state::timestamp(SystemTime::now()),
            source: "bad/3.png".into(),
            distance: 0.9,
            threshold: 0.5,
            defect: true,
            nearest: 1,
            nearest_source: "train/good/001.png".into(),
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

fn frame() -> Frame {
    Frame {
        seq: 3,
        time: SystemTime::now(),
        image: image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])),
        source: "bad/3.png".into(),
    }
}

/// An HTTP server on loopback that answers 200 and keeps the bodies.
fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", l.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b = bodies.clone();
    std::thread::spawn(move || {
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
            b.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, bodies)
}

#[test]
fn every_webhook_payload_carries_the_journal_head() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut sink = JournalSink::open_sealed(
        &journal_dir(state),
        Seal::in_state_dir(state).unwrap(),
        1 << 20,
        4,
    )
    .unwrap();
    let (url, bodies) = receiver();
    let mut hook = Webhook::start(
        &WebhookConfig {
            url,
            timeout_ms: 2000,
            attempts: 3,
            queue: 8,
        },
        "line-1",
    )
    .with_journal(Some(sink.ledger()));
    let mut heads = Vec::new();
    for _ in 0..2 {
        // In the pipeline's order: the journal first, then the webhook.
        let mut a = alert();
        sink.alert(&mut a, &frame()).unwrap();
        hook.alert(&mut a, &frame()).unwrap();
        heads.push((a.journal_seq.unwrap(), sink.ledger().head().hash));
    }
    let t = Instant::now();
    while bodies.lock().unwrap().len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "no delivery");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (r, _) = check(state).unwrap();
    for (body, (seq, hash)) in bodies.lock().unwrap().iter().zip(&heads) {
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["journal"]["seq"], json!(seq), "{body}");
        assert_eq!(v["journal"]["hash"], json!(hash), "{body}");
        assert_eq!(v["journal-seq"], json!(seq), "{body}");
    }
    // The last payload's head is what verify finds at the journal's end.
    assert_eq!(heads[1], (r.last_seq.unwrap(), r.last_hash));
}

#[tokio::test]
async fn metrics_expose_the_journal_head() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let sink = JournalSink::open_sealed(
        &journal_dir(state),
        Seal::in_state_dir(state).unwrap(),
        1 << 20,
        4,
    )
    .unwrap();
    let shared = device_runtime::state::Shared::new("line-1");
    shared.ledger.set(sink.ledger()).unwrap();
    let mut sink = sink;
    for _ in 0..3 {
        sink.alert(&mut alert(), &frame()).unwrap();
    }
    let head = sink.ledger().head();
    assert_eq!(head.seq, 3);
    let st = device_runtime::web::AppState {
        shared,
        token: None,
        public_reads: true,
        upload_dir: state.join("uploads"),
        flagged_dir: state.join("flagged"),
        max_upload: 1000,
        slots: None,
        stale_after_s: 30.0,
    };
    let res = device_runtime::web::app(st)
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("firm_journal_head_seq 3\n"), "{text}");
    let info = format!(
        "firm_journal_head_info{{seq=\"3\",hash=\"{}\"}} 1\n",
        head.hash
    );
    assert!(text.contains(&info), "{info} missing in:\n{text}");
    assert!(
        text.contains("# TYPE firm_journal_head_info gauge"),
        "{text}"
    );
}

mod flash {
    use super::*;
    use ed25519_dalek::SigningKey;
    use firm_shared::bundle::Limits;
    use firm_shared::detect::synthetic::{SyntheticSpec, random_bundle};
    use firm_shared::model::{EncoderConfig, Stem};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn bundle(version: u64) -> Vec<u8> {
        let mut b = random_bundle(&SyntheticSpec {
            encoder: EncoderConfig::new(Stem::Cifar, 0.0625),
            size: 16,
            score: "cos_1".parse().unwrap(),
            int8_activations: true,
            bank: 4,
            seed: 5,
        })
        .unwrap();
        b.manifest.product_class = "bottle".into();
        b.manifest.bundle_version = version;
        b.to_bytes(&key(), &Limits::default()).unwrap()
    }

    fn cli(root: &Path, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_device-runtime"))
            .current_dir(root)
            .args(args)
            .args(["--config", "device.toml"])
            .output()
            .unwrap()
    }

    fn text(out: &std::process::Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    #[test]
    fn a_forced_downgrade_is_journaled_and_its_deletion_fails_verify() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(
            root.join("bundle.pub"),
            firm_shared::bundle::container::key_hex(key().verifying_key().as_bytes()),
        )
        .unwrap();
        fs::write(
            root.join("device.toml"),
            "schema-version = 1\nstate-dir = \"state\"\n[bundles]\ntrusted-keys = \
             [\"bundle.pub\"]\n[source]\nspec = \"dir:frames\"\n[inference]\nthreads = 1\n",
        )
        .unwrap();
        for v in [1, 2] {
            fs::write(root.join(format!("b{v}.firm")), bundle(v)).unwrap();
        }
        let state = root.join("state");
        // A flash that needs no force journals nothing; a downgrade without --force is refused.
        let out = cli(root, &["flash", "b2.firm"]);
        assert!(out.status.success(), "{}", text(&out));
        let out = cli(root, &["flash", "b1.firm"]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        let before = records(&state).len();
        assert_eq!(before, 0);

        let out = cli(root, &["flash", "b1.firm", "--force"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("journaled as record seq"),
            "{}",
            text(&out)
        );
        let all = records(&state);
        assert_eq!(all.len(), before + 1);
        let r = &all.last().unwrap().record;
        assert_eq!(r["type"], "flash");
        assert_eq!(r["forced"], true);
        assert_eq!(r["from-version"], 2);
        assert_eq!(r["floor"], 2);
        assert_eq!(r["to-version"], 1);
        assert_eq!(r["class"], "bottle");
        assert_eq!(
            r["sha256"],
            json!(firm_shared::bundle::sha256_hex(&bundle(1)))
        );
        assert!(
            r["reason"].as_str().unwrap().contains("not newer than 2"),
            "{r}"
        );

        // The secret was created by the first command that opened the journal: 0600.
        let mode = fs::metadata(state.join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let out = cli(root, &["journal", "verify"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("(HMAC good): the journal's end is intact"),
            "{}",
            text(&out)
        );

        // Deleting the record that says the flash was forced: verify fails, naming it.
        let seq = all.last().unwrap().seq;
        delete_last_record(&state);
        let out = cli(root, &["journal", "verify"]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("records {seq}..={seq} were deleted")),
            "{}",
            text(&out)
        );
    }
}

//! Tests of the whole journal: the writer, its recovery on open, and what verify and read_recent
//! then see.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::files::{list_files, read_anchor, write_anchor};
use super::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(secs * 1000 + 123)
}

fn small(max_file_bytes: u64, max_files: usize) -> JournalOptions {
    JournalOptions {
        max_file_bytes,
        max_files,
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn append_reopen_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!((j.last_seq(), j.last_hash()), (0, GENESIS_PREV));
    let a = j.append_at(json!({"frame": 1}), t(1)).unwrap();
    let b = j.append_at(json!({"frame": 2}), t(2)).unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    drop(j);
    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!((j.last_seq(), j.last_hash()), (2, b.hash.as_str()));
    let c = j.append(json!({"frame": 3})).unwrap();
    assert_eq!(c.seq, 3);
    let lines = lines_of(&dir.path().join(file_name(1)));
    assert_eq!(lines.len(), 3);
    let third: Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(third["prev"], json!(b.hash));
    let report = verify(dir.path()).unwrap();
    assert_eq!(
        (report.records, report.first_seq, report.last_seq),
        (3, Some(1), Some(3))
    );
    assert_eq!(report.last_hash, c.hash);
}

#[test]
fn rotation_chains_across_files() {
    let dir = tempfile::tempdir().unwrap();
    // Each line is 213 bytes: two per file.
    let mut j = Journal::open(dir.path(), small(450, 100)).unwrap();
    let mut last = None;
    for i in 0..7 {
        last = Some(j.append_at(json!({"frame": i}), t(i)).unwrap());
    }
    let files = list_files(dir.path()).unwrap();
    assert_eq!(files.len(), 4);
    for (_, p) in &files {
        assert!(fs::metadata(p).unwrap().len() <= 450);
    }
    let first_of_2: Value = serde_json::from_str(&lines_of(&files[1].1)[0]).unwrap();
    let last_of_1: Value = serde_json::from_str(&lines_of(&files[0].1)[1]).unwrap();
    assert_eq!(first_of_2["prev"], last_of_1["hash"]);
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.files, report.records), (4, 7));
    assert_eq!(report.last_hash, last.unwrap().hash);
    assert!(!dir.path().join(ANCHOR_FILE).exists());
}

#[test]
fn a_line_larger_than_a_file_still_gets_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), small(10, 100)).unwrap();
    j.append_at(json!("a"), t(1)).unwrap();
    j.append_at(json!("b"), t(2)).unwrap();
    assert_eq!(list_files(dir.path()).unwrap().len(), 2);
    assert_eq!(verify(dir.path()).unwrap().records, 2);
}

#[test]
fn retention_deletes_the_oldest_and_moves_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), small(450, 2)).unwrap();
    for i in 0..9 {
        j.append_at(json!({"frame": i}), t(i)).unwrap();
    }
    let files = list_files(dir.path()).unwrap();
    let numbers: Vec<u64> = files.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [4, 5]);
    let anchor = read_anchor(dir.path()).unwrap().unwrap();
    let first: Value = serde_json::from_str(&lines_of(&files[0].1)[0]).unwrap();
    assert_eq!(anchor.file, 4);
    assert_eq!(json!(anchor.seq), first["seq"]);
    assert_eq!(json!(anchor.prev), first["prev"]);
    let report = verify(dir.path()).unwrap();
    assert_eq!(
        (report.first_seq, report.last_seq, report.records),
        (Some(7), Some(9), 3)
    );
    assert_eq!(report.anchor, Some(anchor));
    // Reopening with a smaller limit applies it at once.
    drop(j);
    let j = Journal::open(dir.path(), small(450, 1)).unwrap();
    assert_eq!(list_files(dir.path()).unwrap().len(), 1);
    assert_eq!(j.last_seq(), 9);
    assert_eq!(verify(dir.path()).unwrap().first_seq, Some(9));
}

#[test]
fn retention_with_one_file_anchors_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), small(200, 1)).unwrap();
    for i in 0..4 {
        j.append_at(json!({"frame": i}), t(i)).unwrap();
    }
    assert_eq!(list_files(dir.path()).unwrap().len(), 1);
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.first_seq, report.last_seq), (Some(4), Some(4)));
}

#[test]
fn interrupted_retention_is_finished_on_open_and_skipped_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), small(450, 2)).unwrap();
    for i in 0..7 {
        j.append_at(json!({"frame": i}), t(i)).unwrap();
    }
    drop(j);
    // As if the crash came after the anchor moved to file 4 but before file 3 was deleted.
    let first: Value = serde_json::from_str(&lines_of(&dir.path().join(file_name(4)))[0]).unwrap();
    let old_anchor = fs::read(dir.path().join(ANCHOR_FILE)).unwrap();
    fs::write(dir.path().join(file_name(2)), b"stale\n").unwrap();
    let anchor = Anchor {
        file: 4,
        seq: first["seq"].as_u64().unwrap(),
        prev: first["prev"].as_str().unwrap().into(),
    };
    write_anchor(dir.path(), &anchor).unwrap();
    assert_ne!(old_anchor, fs::read(dir.path().join(ANCHOR_FILE)).unwrap());
    assert_eq!(verify(dir.path()).unwrap().files, 1);
    Journal::open(dir.path(), small(450, 2)).unwrap();
    let numbers: Vec<u64> = list_files(dir.path())
        .unwrap()
        .iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(numbers, [4]);
}

#[test]
fn torn_fragment_is_truncated_on_open_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    j.append_at(json!({"frame": 1}), t(1)).unwrap();
    let b = j.append_at(json!({"frame": 2}), t(2)).unwrap();
    drop(j);
    let path = dir.path().join(file_name(1));
    let good_len = fs::metadata(&path).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"seq":3,"time":"2025-01-"#).unwrap();
    drop(f);
    let torn = verify(dir.path()).unwrap().torn_last_line.unwrap();
    assert_eq!((torn.line, torn.offset), (3, good_len));

    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
    assert_eq!((j.last_seq(), j.last_hash()), (2, b.hash.as_str()));
    assert_eq!(j.append_at(json!({"frame": 3}), t(3)).unwrap().seq, 3);
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.torn_last_line), (3, None));
}

#[test]
fn zero_filled_last_line_is_torn_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    j.append_at(json!({"frame": 1}), t(1)).unwrap();
    drop(j);
    let path = dir.path().join(file_name(1));
    let good_len = fs::metadata(&path).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0; 150]).unwrap();
    f.write_all(b"0\"}\n").unwrap();
    drop(f);
    assert!(verify(dir.path()).unwrap().torn_last_line.is_some());
    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
    j.append_at(json!({"frame": 2}), t(2)).unwrap();
    assert_eq!(verify(dir.path()).unwrap().records, 2);
}

#[test]
fn only_torn_line_of_a_new_file_continues_from_the_file_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), small(450, 10)).unwrap();
    for i in 0..2 {
        j.append_at(json!({"frame": i}), t(i)).unwrap();
    }
    let last = j.last_hash().to_owned();
    drop(j);
    fs::write(dir.path().join(file_name(2)), b"{\"seq\":3,\"ti").unwrap();
    let mut j = Journal::open(dir.path(), small(450, 10)).unwrap();
    assert_eq!((j.last_seq(), j.last_hash()), (2, last.as_str()));
    assert_eq!(
        fs::metadata(dir.path().join(file_name(2))).unwrap().len(),
        0
    );
    j.append_at(json!({"frame": 2}), t(2)).unwrap();
    assert_eq!(verify(dir.path()).unwrap().records, 3);
}

#[test]
fn open_refuses_an_edited_last_line_instead_of_truncating_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    j.append_at(json!({"verdict": "defect"}), t(1)).unwrap();
    drop(j);
    let path = dir.path().join(file_name(1));
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("defect", "ok0000");
    fs::write(&path, &text).unwrap();
    let e = Journal::open(dir.path(), JournalOptions::default()).unwrap_err();
    assert!(
        matches!(&e, JournalError::HashMismatch { line: 1, .. }),
        "{e}"
    );
    assert_eq!(e.kind(), JournalErrorKind::Tampered);
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for opts in [small(0, 1), small(1, 0)] {
        let e = Journal::open(dir.path(), opts).unwrap_err();
        assert_eq!(e.kind(), JournalErrorKind::InvalidOptions);
    }
}

#[test]
fn read_recent_returns_the_newest_last_across_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read_recent(&dir.path().join("none"), 5).unwrap().is_empty());
    let mut j = Journal::open(dir.path(), small(450, 100)).unwrap();
    for i in 0..7 {
        j.append_at(json!({"frame": i}), t(i)).unwrap();
    }
    let seqs = |n| -> Vec<u64> {
        read_recent(dir.path(), n)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(3), [5, 6, 7]);
    assert_eq!(seqs(100), [1, 2, 3, 4, 5, 6, 7]);
    assert!(seqs(0).is_empty());
    let e = read_recent(dir.path(), 1).unwrap().pop().unwrap();
    assert_eq!(e.record, json!({"frame": 6}));
    assert_eq!(e.system_time(), Some(t(6)));
}

/// Make the next write through `tmp` fail as on a full filesystem: `tmp` becomes a link to
/// /dev/full (writes there fail with ENOSPC). The failed write removes its temporary file, so
/// the link goes with it: one failure, as if space were freed right after.
fn full_once(tmp: &Path) {
    std::os::unix::fs::symlink("/dev/full", tmp).unwrap();
}

/// The temporary file the device secret is written through in this process (`secret.rs`, then
/// `firm_shared::fsutil::write_atomic_mode`).
fn secret_temporary(state: &Path) -> std::path::PathBuf {
    let pid = std::process::id();
    state.join(format!("secret/..device.key.tmp-{pid}.tmp-{pid}"))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_secret_that_cannot_be_created_defers_the_checkpoint_until_an_append_can() {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let journal_dir = state.join("journal");
    let key = state.join(SECRET_FILE);
    let checkpoint = state.join(CHECKPOINT_FILE);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(state.join("secret"))
        .unwrap();

    // The first start on a full filesystem: the secret cannot be created, and that is an
    // error that says so (the appliance tells it from other errors by this).
    full_once(&secret_temporary(state));
    let e = Seal::in_state_dir(state).unwrap_err();
    assert!(crate::state::StateFs::caused_by_full(&e), "{e}");
    assert!(e.to_string().contains("No space left on device"), "{e}");
    assert!(!key.exists());
    assert!(
        entries(&state.join("secret")).is_empty(),
        "nothing left behind"
    );

    // The journal runs unsealed with a deferred seal; appends still try to create the secret.
    let mut j = Journal::open_sealed(
        &journal_dir,
        JournalOptions::default(),
        Seal::deferred(state),
    )
    .unwrap();
    assert!(!j.is_sealed());
    full_once(&secret_temporary(state));
    j.append_at(json!({"frame": 1}), t(1)).unwrap();
    assert!(!j.is_sealed(), "still full: no secret");
    assert!(!key.exists() && !checkpoint.exists());
    assert!(
        entries(&state.join("secret")).is_empty(),
        "nothing left behind"
    );
    assert!(
        !j.checkpoint_failing,
        "a deferred secret is not a checkpoint error"
    );

    // Space again: the next append creates the secret (0600) and seals the head.
    let b = j.append_at(json!({"frame": 2}), t(2)).unwrap();
    assert!(j.is_sealed());
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(fs::read_to_string(&key).unwrap().len(), 65);
    assert_eq!(entries(&state.join("secret")), ["device.key"]);
    let seal = Seal::existing(state).unwrap().unwrap();
    match seal.read().unwrap() {
        Sealed::Good(cp) => assert_eq!((cp.seq, cp.hash), (b.seq, b.hash.clone())),
        other => panic!("expected the head sealed, got {other:?}"),
    }
    let (_, status) = verify_sealed(&journal_dir, Some(&seal)).unwrap();
    assert!(
        matches!(status, SealStatus::Holds { newer: 0, .. }),
        "{status:?}"
    );
    drop(j);

    // The next start reads that secret: the chain holds against its checkpoint, no tamper
    // record is written, and appends go on being sealed.
    let mut j = Journal::open_sealed(
        &journal_dir,
        JournalOptions::default(),
        Seal::in_state_dir(state).unwrap(),
    )
    .unwrap();
    assert_eq!(j.last_seq(), 2);
    let c = j.append_at(json!({"frame": 3}), t(3)).unwrap();
    let (report, status) = verify_sealed(&journal_dir, Some(&seal)).unwrap();
    assert_eq!(report.last_seq, Some(c.seq));
    assert!(
        matches!(status, SealStatus::Holds { newer: 0, .. }),
        "{status:?}"
    );
}

#[test]
fn temporaries_left_by_failed_or_cut_secret_writes_do_not_stop_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let secret_dir = state.join("secret");
    fs::create_dir_all(&secret_dir).unwrap();
    // Half-written temporaries, as a power cut would leave them: this process id's (reused
    // after a reboot) and another's. Neither is a key.
    fs::write(secret_temporary(state), b"0123").unwrap();
    let other = secret_dir.join(".device.key.tmp-999999");
    fs::write(&other, b"").unwrap();
    assert!(
        DeviceSecret::load(&state.join(SECRET_FILE))
            .unwrap()
            .is_none()
    );
    let (s, created) = DeviceSecret::load_or_create(&state.join(SECRET_FILE)).unwrap();
    assert!(created);
    let text = fs::read_to_string(state.join(SECRET_FILE)).unwrap();
    assert_eq!(text.len(), 65, "a whole key: {text:?}");
    assert!(
        !secret_temporary(state).exists(),
        "its own temporary was reused"
    );
    let (again, created) = DeviceSecret::load_or_create(&state.join(SECRET_FILE)).unwrap();
    assert!(!created);
    assert_eq!(again.mac_hex(b"m"), s.mac_hex(b"m"));
}

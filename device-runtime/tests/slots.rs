//! The A/B store's refusals, in process, on small random-weight bundles signed here:
//! - replays: the same version, a lower version after a rollback, another product class are
//!   refused; the high-water mark is persisted (a new `Slots` on the same folder, as after a
//!   restart, keeps it) and survives an active slot that no longer verifies; `--force` goes past
//!   it and the floor never drops;
//! - a bundle that fails its self-test, or lacks the operating point the config reads, is refused
//!   before anything is written: the fallback slot keeps its bytes;
//! - a device from before the high-water file takes its floor from its slots;
//! - a start that must roll back on a full filesystem runs the good slot without recording the
//!   switch, says why, and rolls back again at the next start until one can record it (in a
//!   crash loop too, whose count it keeps); other errors recording it still fail the start.
//!   The full filesystem is a link to /dev/full (writes fail with ENOSPC) where the write's
//!   temporary file goes; the failed write removes it, as if space were freed right after.

use std::path::Path;

use device_runtime::slots::{FlashStep, Slot, SlotError, Slots};
use ed25519_dalek::SigningKey;
use firm_e2e::bundle_file;
use firm_shared::bundle::{Bundle, Limits};
use firm_shared::detect::synthetic::{SyntheticSpec, random_bundle};
use firm_shared::model::{EncoderConfig, Stem};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn base() -> Bundle {
    random_bundle(&SyntheticSpec {
        encoder: EncoderConfig::new(Stem::Cifar, 0.0625),
        size: 16,
        score: "cos_1".parse().unwrap(),
        int8_activations: true,
        bank: 4,
        seed: 5,
    })
    .unwrap()
}

fn signed(class: &str, version: u64, edit: impl FnOnce(&mut Bundle)) -> Vec<u8> {
    let mut b = base();
    b.manifest.product_class = class.into();
    b.manifest.bundle_version = version;
    edit(&mut b);
    b.to_bytes(&key(), &Limits::default()).unwrap()
}

fn bundle(class: &str, version: u64) -> Vec<u8> {
    signed(class, version, |_| {})
}

fn slots(dir: &Path) -> Slots {
    Slots::new(dir, vec![key().verifying_key()], 64 << 20)
        .unwrap()
        .with_operating_point(Some("calibrated".into()))
}

/// The step and message of a refused flash.
fn refused(r: Result<impl std::fmt::Debug, SlotError>) -> (FlashStep, String) {
    match r {
        Err(SlotError::Flash { step, why }) => (step, why),
        other => panic!("expected a refused flash, got {other:?}"),
    }
}

fn active_version(s: &Slots) -> u64 {
    let st = s.status();
    st.slots
        .iter()
        .find(|x| x.active)
        .and_then(|x| x.bundle.as_ref())
        .map(|b| b.bundle_version)
        .expect("an active bundle")
}

#[test]
fn replays_lower_versions_and_other_classes_are_refused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let s = slots(dir.path());
    s.flash(&bundle_file(&bundle("bottle", 1)), false).unwrap();
    s.flash(&bundle_file(&bundle("bottle", 2)), false).unwrap();
    assert_eq!(active_version(&s), 2);

    // The same version again: a replay.
    let (step, why) = refused(s.flash(&bundle_file(&bundle("bottle", 2)), false));
    assert_eq!(step, FlashStep::Verify);
    assert!(why.contains("not newer than 2"), "{why}");

    // A rollback to version 1 does not lower the floor, and a new `Slots` (a restart) keeps it.
    s.rollback().unwrap();
    assert_eq!(active_version(&s), 1);
    let s = slots(dir.path());
    let (_, why) = refused(s.flash(&bundle_file(&bundle("bottle", 1)), false));
    assert!(
        why.contains("anti-downgrade") && why.contains("not newer than 2"),
        "{why}"
    );
    let hw = s.high_water().unwrap();
    assert_eq!(hw.class.as_deref(), Some("bottle"));
    assert_eq!(hw.versions.get("bottle"), Some(&2));

    // A bundle for another product, even with a higher version.
    let (step, why) = refused(s.flash(&bundle_file(&bundle("capsule", 9)), false));
    assert_eq!(step, FlashStep::Verify);
    assert!(
        why.contains("product class `capsule`") && why.contains("`bottle`"),
        "{why}"
    );

    // The floor does not depend on what the slots hold: with both slots unreadable it stays.
    for slot in ["a", "b"] {
        let p = dir.path().join(slot).join("bundle.firm");
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&p, bytes).unwrap();
    }
    let (_, why) = refused(s.flash(&bundle_file(&bundle("bottle", 2)), false));
    assert!(why.contains("not newer than 2"), "{why}");

    // --force is the explicit way past both checks; the floor keeps its maximum per class.
    s.flash(&bundle_file(&bundle("bottle", 1)), true).unwrap();
    assert_eq!(s.high_water().unwrap().versions.get("bottle"), Some(&2));
    s.flash(&bundle_file(&bundle("capsule", 4)), true).unwrap();
    let hw = s.high_water().unwrap();
    assert_eq!(hw.class.as_deref(), Some("capsule"));
    assert_eq!(hw.versions.get("capsule"), Some(&4));
    assert_eq!(hw.versions.get("bottle"), Some(&2));
    s.flash(&bundle_file(&bundle("capsule", 5)), false).unwrap();
    assert_eq!(active_version(&s), 5);
}

#[test]
fn a_refused_bundle_leaves_the_fallback_slot_intact() {
    let dir = tempfile::tempdir().unwrap();
    let s = slots(dir.path());
    s.flash(&bundle_file(&bundle("bottle", 1)), false).unwrap();
    s.flash(&bundle_file(&bundle("bottle", 2)), false).unwrap();
    // Slot a holds version 1: the fallback the next flash would overwrite.
    let fallback = std::fs::read(dir.path().join("a/bundle.firm")).unwrap();

    // Expected embeddings that no encoder produces: the self-test fails on this device.
    let bad_selftest = signed("bottle", 3, |b| {
        for v in &mut b.selftest.embeddings {
            *v = -*v;
        }
    });
    let (step, _) = refused(s.flash(&bundle_file(&bad_selftest), false));
    assert_eq!(step, FlashStep::SelfTest);
    assert_eq!(
        std::fs::read(dir.path().join("a/bundle.firm")).unwrap(),
        fallback,
        "a flash refused at its self-test overwrote the fallback slot"
    );

    // A config that reads an operating point the bundle lacks: installing it would switch
    // to a bundle the device cannot start.
    let strict = slots(dir.path()).with_operating_point(Some("frr-0.1%".into()));
    let (step, why) = refused(strict.flash(&bundle_file(&bundle("bottle", 3)), false));
    assert_eq!(step, FlashStep::Verify);
    assert!(
        why.contains("no operating point `frr-0.1%`") && why.contains("calibrated"),
        "{why}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("a/bundle.firm")).unwrap(),
        fallback
    );
    assert_eq!(active_version(&s), 2);
    // Neither refusal raised the floor: version 3 done right still installs.
    s.flash(&bundle_file(&bundle("bottle", 3)), false).unwrap();
    assert_eq!(active_version(&s), 3);
}

#[test]
fn a_device_without_the_high_water_file_takes_its_floor_from_its_slots() {
    let dir = tempfile::tempdir().unwrap();
    let s = slots(dir.path());
    s.flash(&bundle_file(&bundle("bottle", 3)), false).unwrap();
    s.flash(&bundle_file(&bundle("bottle", 7)), false).unwrap();
    s.rollback().unwrap();
    // As installed by an older runtime: no record.
    std::fs::remove_file(dir.path().join("high-water.json")).unwrap();
    let hw = s.high_water().unwrap();
    assert_eq!(hw.class.as_deref(), Some("bottle"));
    assert_eq!(hw.versions.get("bottle"), Some(&7));
    let (_, why) = refused(s.flash(&bundle_file(&bundle("bottle", 5)), false));
    assert!(why.contains("not newer than 7"), "{why}");
    // A damaged record refuses (it would otherwise be a way around the floor) until --force.
    std::fs::write(dir.path().join("high-water.json"), "{").unwrap();
    let (_, why) = refused(s.flash(&bundle_file(&bundle("bottle", 8)), false));
    assert!(why.contains("damaged"), "{why}");
    s.flash(&bundle_file(&bundle("bottle", 8)), true).unwrap();
    assert_eq!(s.high_water().unwrap().versions.get("bottle"), Some(&8));
}

/// The next write of `active` fails as on a full filesystem (see the header).
fn active_full_once(dir: &Path) {
    std::os::unix::fs::symlink("/dev/full", dir.join(".active.tmp")).unwrap();
}

/// Slot a holds version 1, slot b version 2 (active).
fn two_slots(dir: &Path) -> Slots {
    let s = slots(dir);
    s.flash(&bundle_file(&bundle("bottle", 1)), false).unwrap();
    s.flash(&bundle_file(&bundle("bottle", 2)), false).unwrap();
    assert_eq!(s.active(), Some(Slot::B));
    s
}

#[test]
fn a_rollback_that_cannot_be_recorded_for_want_of_space_still_runs_the_good_slot() {
    let dir = tempfile::tempdir().unwrap();
    let s = two_slots(dir.path());
    // Slot b no longer verifies (one byte changed).
    let b = s.bundle_path(Slot::B);
    let mut bytes = std::fs::read(&b).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&b, bytes).unwrap();

    // Two starts on a full filesystem: each runs slot a, and says the switch is not recorded.
    for start in 1..=2 {
        active_full_once(dir.path());
        let l = s.load_active().unwrap();
        assert_eq!(
            (l.slot, l.summary.bundle_version),
            (Slot::A, 1),
            "start {start}"
        );
        assert!(
            l.rolled_back.as_deref().unwrap().contains("slot b"),
            "{:?}",
            l.rolled_back
        );
        let why = l
            .persist_error
            .as_deref()
            .expect("the failure to record it");
        assert!(why.contains("slot a runs"), "{why}");
        assert!(why.contains("No space left on device"), "{why}");
        assert!(why.contains("every start rolls back again"), "{why}");
        assert_eq!(s.active(), Some(Slot::B), "start {start}: not recorded");
        assert!(
            std::fs::symlink_metadata(dir.path().join(".active.tmp")).is_err(),
            "the failed write removed its temporary"
        );
    }
    // Space again: the rollback is recorded, and the start after it needs none.
    let l = s.load_active().unwrap();
    assert_eq!(l.slot, Slot::A);
    assert!(
        l.rolled_back.is_some() && l.persist_error.is_none(),
        "{l:?}"
    );
    assert_eq!(s.active(), Some(Slot::A));
    let l = s.load_active().unwrap();
    assert_eq!(l.slot, Slot::A);
    assert!(l.rolled_back.is_none() && l.persist_error.is_none());
}

#[test]
fn a_crash_loop_rollback_that_cannot_be_recorded_keeps_the_count_and_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let s = two_slots(dir.path());
    for _ in 0..3 {
        s.note_start().unwrap();
    }
    for start in 1..=2 {
        active_full_once(dir.path());
        let l = s.load_active().unwrap();
        assert_eq!(l.slot, Slot::A, "start {start}");
        assert!(
            l.rolled_back
                .as_deref()
                .unwrap()
                .contains("crashed 3 starts")
        );
        assert!(l.persist_error.is_some());
        assert_eq!(s.active(), Some(Slot::B));
        // The count stays: the next start must see the crash loop again.
        assert_eq!(s.boot_attempts(), 3, "start {start}");
    }
    let l = s.load_active().unwrap();
    assert!(l.persist_error.is_none());
    assert_eq!((s.active(), s.boot_attempts()), (Some(Slot::A), 0));
}

#[test]
fn other_errors_recording_a_rollback_still_fail_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = two_slots(dir.path());
    for _ in 0..3 {
        s.note_start().unwrap();
    }
    // The temporary path is a folder: the write fails with EISDIR, not for want of space.
    std::fs::create_dir(dir.path().join(".active.tmp")).unwrap();
    match s.load_active() {
        Err(SlotError::Io { path, source }) => {
            assert!(path.ends_with(".active.tmp"), "{}", path.display());
            assert_eq!(source.kind(), std::io::ErrorKind::IsADirectory);
        }
        other => panic!("expected the I/O error, got {other:?}"),
    }
    assert_eq!(s.active(), Some(Slot::B));
}

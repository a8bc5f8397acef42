//! host-trainer's command line: help, errors, exit codes, and the smoke run's output.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_host-trainer"))
}

#[test]
fn help_lists_commands() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("smoke") && s.contains("FIRM"), "{s}");
}

#[test]
fn bad_arguments_exit_with_usage_code() {
    let out = bin().args(["smoke", "--steps", "many"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--steps"));
}

#[test]
fn smoke_errors_are_reported_not_panicked() {
    let out = bin()
        .args(["smoke", "--steps", "0", "--width", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("encoder.width"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn smoke_writes_test_images_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["smoke", "--steps", "12", "--batch", "8", "--dump"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let pngs = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(pngs, 34, "16 good + 18 defective test images");
    assert!(s.contains("FIRM loss: step 1"), "{s}");
}

//! device-runtime's command line.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_device-runtime"))
}

#[test]
fn help_and_errors() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("selfcheck"));
    let out = bin().args(["selfcheck", "--frames", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frames must be at least 1"));
    let out = bin().args(["selfcheck", "--stem", "vgg"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn selfcheck_cifar_stem() {
    let out = bin()
        .args([
            "selfcheck",
            "--stem",
            "cifar",
            "--size",
            "32",
            "--width",
            "0.0625",
            "--frames",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cifar stem"));
}

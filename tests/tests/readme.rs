//! The README's promises: its test command is what CI runs, and its main command works.

use std::process::Command;

use firm_e2e::{binary, workspace_root};

fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md")
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = readme();
    let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).expect(".ci/run");
    let test_cmd = readme
        .lines()
        .find(|l| l.trim_start().starts_with("./scripts/test"))
        .expect("README names ./scripts/test as the test command");
    assert!(
        ci.contains(test_cmd.trim()),
        ".ci/run must run `{}`",
        test_cmd.trim()
    );
}

#[test]
fn main_command_trains_evaluates_and_reports() {
    let readme = readme();
    let main_cmd = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo run --release -p host-trainer -- "))
        .expect("README names the main command as `cargo run --release -p host-trainer -- ...`");
    let args: Vec<&str> = main_cmd
        .split(" -- ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        args,
        ["fit", "--demo"],
        "the main job is `host-trainer fit --demo`"
    );
    // The README's command, shortened to one epoch for the test, in a fresh working directory
    // (the demo data is generated there).
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("host-trainer", "host-trainer"))
        .args(&args)
        .args(["--epochs", "1", "--checkpoints", "1", "--out", "run"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let headline = stdout.lines().next().unwrap_or_default();
    assert!(
        headline.starts_with("run: cos_1 image AUROC "),
        "headline: {stdout}"
    );
    let auroc: f64 = headline
        .split_whitespace()
        .nth(4)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("AUROC in {headline:?}"));
    assert!((0.0..=1.0).contains(&auroc), "{auroc}");
    assert!(stdout.contains("before training"), "{stdout}");
    assert!(dir.path().join("data/demo/bottle/train/good").is_dir());
    for f in [
        "config.json",
        "metrics.jsonl",
        "eval/report.md",
        "eval/roc.png",
    ] {
        assert!(dir.path().join("run").join(f).is_file(), "run/{f} missing");
    }
}

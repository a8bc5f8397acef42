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
fn main_command_runs_and_prints_aurocs() {
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
    // The README's command, shortened to a few steps for the test.
    let out = Command::new(binary("host-trainer", "host-trainer"))
        .args(&args)
        .args(["--steps", "2", "--batch", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<(String, f64, f64)> = stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [name, a, b] => Some((name.to_string(), a.parse().ok()?, b.parse().ok()?)),
                _ => None,
            }
        })
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["cos_1", "cos_5", "kde", "center"], "{stdout}");
    for (name, a, b) in rows {
        assert!(
            (0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b),
            "{name}: {a} {b}"
        );
    }
}

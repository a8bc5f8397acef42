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

/// `gpu-check` without a GPU backend in the build: each one is reported as skipped with how to
/// get it, the command still succeeds; naming one fails with that reason. (With a backend the
/// checks and the table run: the wgpu tests and the device runs.)
#[test]
fn gpu_check_reports_backends_this_build_lacks() {
    let out = bin()
        .args(["gpu-check", "--checks-only", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let skipped: Vec<&str> = r["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let checked: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["backend"].as_str())
        .collect();
    for b in ["wgpu", "cuda"] {
        let seen = skipped.iter().any(|s| s.starts_with(b)) || checked.contains(&b);
        assert!(seen, "{b} neither checked nor skipped: {stdout}");
    }
    assert!(r["throughput"].as_array().unwrap().is_empty());
    if !checked.contains(&"cuda") {
        let out = bin()
            .args(["gpu-check", "--backend", "cuda", "--checks-only"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cuda") && err.contains("--features cuda"),
            "{err}"
        );
    }
    // The throughput table on the CPU alone, tiny.
    let out = bin()
        .args([
            "gpu-check",
            "--backend",
            "cpu",
            "--size",
            "32",
            "--batch",
            "1",
            "2",
            "--batches",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.matches("| cpu | cpu (").count(), 2, "{table}");
}

/// With the wgpu backend built in, `gpu-check --any-adapter` runs every check on whatever Vulkan
/// adapter is present (lavapipe in CI, where `CI=true` makes a missing adapter a failure).
#[cfg(feature = "wgpu")]
#[test]
fn gpu_check_runs_the_wgpu_checks_on_any_adapter() {
    let out = bin()
        .args([
            "gpu-check",
            "--backend",
            "wgpu",
            "--any-adapter",
            "--checks-only",
            "--json",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && err.contains("adapter")
        && std::env::var("CI").as_deref() != Ok("true")
    {
        println!("gpu-check skipped: no Vulkan adapter here ({err})");
        return;
    }
    assert!(out.status.success(), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = r["checks"].as_array().unwrap();
    // Four models, each with every kernel variant the adapter runs that changes its kernels.
    assert!(checks.len() >= 4, "{r}");
    for c in checks {
        assert_eq!(c["backend"], "wgpu");
        assert_eq!(c["passed"], true, "{c}");
        // f16 rows are held to the f16 tolerance (in the row), every other one to 1e-4.
        let f16 = c["kernels"].as_str().unwrap().starts_with("f16");
        let tol = if f16 {
            c["tolerance"].as_f64().unwrap()
        } else {
            1e-4
        };
        assert!(c["max_embedding_rel_err"].as_f64().unwrap() <= tol, "{c}");
    }
}

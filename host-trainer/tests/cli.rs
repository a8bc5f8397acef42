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

/// `--device` on a build without the `cuda` feature: a GPU is refused with the command that
/// builds one, before a run folder or a grid is written; an unknown device is a usage error.
#[test]
fn a_gpu_device_needs_a_cuda_build() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let grid = dir.path().join("grid");
    let cases: [(&[&str], Option<&std::path::Path>); 4] = [
        (
            &[
                "fit", "--demo", "--epochs", "1", "--device", "cuda", "--out",
            ],
            Some(&run),
        ),
        (
            &[
                "bench",
                "--dataset",
                "fmnist",
                "--device",
                "cuda:1",
                "--out",
            ],
            Some(&grid),
        ),
        (&["eval", "--device", "cuda", "--run"], Some(&run)),
        (&["fit", "--demo", "--device", "metal"], None),
    ];
    for (args, path) in cases {
        if path.is_some() && cfg!(feature = "cuda") {
            // A CUDA build opens the GPU (or says why not): tests/cuda.rs covers that.
            continue;
        }
        let mut cmd = bin();
        cmd.current_dir(dir.path()).args(args);
        if let Some(p) = path {
            cmd.arg(p);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        if path.is_some() {
            assert!(err.contains("--features cuda"), "{args:?}: {err}");
        } else {
            assert!(
                err.contains("expected cpu, cuda or cuda:N"),
                "{args:?}: {err}"
            );
        }
    }
    assert!(!run.exists() && !grid.exists(), "nothing is written");
    assert!(!dir.path().join("runs").exists(), "nothing is written");
}

#[test]
fn smoke_errors_are_reported_not_panicked() {
    let out = bin()
        .args(["smoke", "--steps", "0", "--width", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an impossible setting");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("encoder.width"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bench_refuses_bad_grids_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["bench", "--dataset", "imagenet"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an impossible setting");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid --dataset") && err.contains("fmnist:DIR"),
        "{err}"
    );
    let out = bin()
        .args(["bench", "--dataset"])
        .arg(format!("fmnist:{}", dir.path().join("none").display()))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "missing data");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt install dataset-fashion-mnist"), "{err}");
    assert!(!dir.path().join("runs").exists(), "nothing written");
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

#[test]
fn synth_writes_an_mvtec_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["synth", "--classes", "grid", "--size", "64", "--train", "3"])
        .args(["--test-good", "1", "--test-per-defect", "1", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let train = std::fs::read_dir(dir.path().join("grid/train/good"))
        .unwrap()
        .count();
    assert_eq!(train, 3);
    assert!(
        dir.path()
            .join("grid/ground_truth/bent/000_mask.png")
            .is_file()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("grid: 3 training images"));
    let out = bin()
        .args(["synth", "--classes", "carpet", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown class `carpet`"));
}

#[test]
fn preview_on_demo_data_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("p.png");
    let out = bin()
        .current_dir(dir.path())
        .args([
            "preview", "--demo", "--class", "weave", "--size", "32", "--rows", "2", "--out",
        ])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&png).unwrap();
    // 2 rows x (ID + CutPaste + Scar) x 2 views, 32 px tiles shown at 128 px.
    assert_eq!(img.width(), 6 * (128 + 4) + 4);
    assert!(dir.path().join("data/demo/weave/train/good").is_dir());

    let out = bin()
        .current_dir(dir.path())
        .args([
            "preview",
            "--data",
            "/nonexistent/mvtec",
            "--class",
            "bottle",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "unusable data");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mvtec"));

    let empty = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(empty.path())
        .arg("preview")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data/mvtec") && err.contains("--demo"),
        "{err}"
    );

    let out = bin()
        .current_dir(dir.path())
        .args(["preview", "--demo", "--outliers", "cutpaste,blur"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown outlier `blur`"));
}

#[test]
fn keygen_writes_a_private_key_0600_and_never_overwrites_it_silently() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_host-trainer"))
            .arg("keygen")
            .arg("--out")
            .arg(&keys)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let private = keys.join("bundle.key");
    let public = keys.join("bundle.pub");
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&private).unwrap();
    let seed = firm_shared::bundle::container::parse_key_hex(&first).unwrap();
    let pk =
        firm_shared::bundle::container::parse_key_hex(&std::fs::read_to_string(&public).unwrap())
            .unwrap();
    assert_eq!(
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes(),
        pk,
        "the public key belongs to the private key"
    );
    // A second run refuses (exit 2) and leaves the key alone.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&private).unwrap(), first);
    // --force replaces it with a new key.
    assert!(run(&["--force"]).status.success());
    assert_ne!(std::fs::read_to_string(&private).unwrap(), first);
    let names: Vec<_> = std::fs::read_dir(&keys).unwrap().collect();
    assert_eq!(names.len(), 2, "no temporary files left");
}

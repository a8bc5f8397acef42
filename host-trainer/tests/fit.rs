//! `fit` and `eval` through the binary: a run folder with everything in it, eval --json, Ctrl-C,
//! configuration errors.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_host-trainer"));
    c.current_dir(cwd);
    c
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const TINY: &[&str] = &[
    "--demo", "--class", "grid", "--size", "16", "--width", "0.0625", "--batch", "8",
];

#[test]
fn run_folder_holds_config_checkpoints_metrics_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(bin(tmp.path())
        .arg("fit")
        .args(TINY)
        .args(["--epochs", "2", "--checkpoints", "2", "--out"])
        .arg(&run)
        .output()
        .unwrap());
    for f in [
        "config.json",
        "metrics.jsonl",
        "checkpoints/latest",
        "checkpoints/epoch-0001/model.safetensors",
        "checkpoints/epoch-0002/optimizer.safetensors",
        "checkpoints/epoch-0002/state.json",
        "eval/report.md",
        "eval/report.json",
        "eval/scores.csv",
        "eval/roc.png",
        "eval/histogram.png",
        "eval/learning_curve.png",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["length"]["epochs"], 2);
    assert_eq!(cfg["profile-origin"], "configs/demo.toml (built in)");
    let out = ok(bin(tmp.path())
        .args(["eval", "--json", "--run"])
        .arg(&run)
        .output()
        .unwrap());
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in [
        "image_auroc",
        "score",
        "per_type",
        "n_test",
        "init_auroc",
        "aulc",
        "scores",
    ] {
        assert!(r.get(key).is_some(), "eval --json lacks {key}: {out}");
    }
    assert_eq!(r["score"], "cos_1");
    assert_eq!(r["checkpoint"], "epoch-0002");
    let types = r["per_type"].as_object().unwrap();
    assert_eq!(types.len(), 4, "grid has four defect types: {types:?}");
    assert!(r["scores"]["cos_1+rot+crops"]["image_auroc"].is_number());

    // A second fit into the same folder is refused.
    let out = bin(tmp.path())
        .arg("fit")
        .args(TINY)
        .args(["--epochs", "1", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
}

/// `--init` starts from given encoder weights: a run started (with another seed) from a trained
/// run's weights, with `--epochs 0`, scores exactly what the trained run scored.
#[test]
fn init_weights_are_loaded_and_epochs_zero_scores_them() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    ok(bin(tmp.path())
        .arg("fit")
        .args(TINY)
        .args(["--epochs", "2", "--checkpoints", "1", "--out"])
        .arg(&a)
        .output()
        .unwrap());
    let b = tmp.path().join("b");
    ok(bin(tmp.path())
        .arg("fit")
        .args(TINY)
        .args(["--epochs", "0", "--seed", "5", "--init"])
        .arg(a.join("checkpoints/epoch-0002/model.safetensors"))
        .arg("--out")
        .arg(&b)
        .output()
        .unwrap());
    let json = |run: &Path| -> serde_json::Value {
        let out = ok(bin(tmp.path())
            .args(["eval", "--json", "--run"])
            .arg(run)
            .output()
            .unwrap());
        serde_json::from_str(out.trim()).unwrap()
    };
    let (ra, rb) = (json(&a), json(&b));
    assert_eq!(rb["checkpoint"], "epoch-0000");
    assert_eq!(ra["image_auroc"], rb["image_auroc"], "{ra}\n{rb}");
    assert_eq!(rb["init_auroc"], rb["image_auroc"]);
    assert_ne!(
        ra["init_auroc"], rb["init_auroc"],
        "the trained weights differ from a random start"
    );
    // A file of the wrong model is refused with the file's name.
    let c = tmp.path().join("c");
    let out = bin(tmp.path())
        .arg("fit")
        .args([
            "--demo", "--class", "grid", "--size", "16", "--width", "0.125",
        ])
        .args(["--epochs", "0", "--init"])
        .arg(a.join("checkpoints/epoch-0002/model.safetensors"))
        .arg("--out")
        .arg(&c)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let child = bin(tmp.path())
        .arg("fit")
        .args(TINY)
        .args(["--epochs", "6", "--checkpoints", "1", "--out"])
        .arg(&run)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first training step, then send SIGINT as a terminal's Ctrl-C would.
    let t = Instant::now();
    while !std::fs::read_to_string(run.join("metrics.jsonl")).is_ok_and(|m| m.contains("\"step\""))
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("host-trainer fit --resume"), "{err}");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert!(latest.starts_with("step-"), "{latest}");
    assert!(
        run.join("checkpoints")
            .join(latest.trim())
            .join("model.safetensors")
            .is_file()
    );

    let out = ok(bin(tmp.path())
        .args(["fit", "--resume"])
        .arg(&run)
        .output()
        .unwrap());
    assert!(out.contains("image AUROC"), "{out}");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "epoch-0006");
}

#[test]
fn configuration_errors_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin(tmp.path())
        .args(["fit", "--demo", "--profile", "gpu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`gpu` is not in configs/demo.toml") && err.contains("cpu"),
        "{err}"
    );

    let cfg = tmp.path().join("mine.toml");
    std::fs::write(
        &cfg,
        "schema-version = 1\n[profile.cpu]\nepochs = 2\nlearning-rate = 0.1\n",
    )
    .unwrap();
    let out = bin(tmp.path())
        .args(["fit", "--demo", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mine.toml") && err.contains("learning-rate"),
        "{err}"
    );

    let out = bin(tmp.path())
        .args(["fit", "--demo", "--score", "cos_1+flip"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin(tmp.path())
        .args(["eval", "--run", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

//! End to end through the command line: generated data -> `fit` (a tiny model) -> `eval --json`.
//! The trained encoder must beat the same encoder at its random initialisation by at least 0.10
//! image AUROC on the same test images, so the test cannot pass on defects that any features
//! find (a random ResNet already separates colour stains and holes).
//!
//! The defect is the generator's `misweave` (a rectangle of fabric woven out of step): colour and
//! texture statistics are normal, so a random encoder scores it poorly, while FIRM's CutPaste
//! outliers teach exactly this kind of discontinuity. Views are not augmented (`--augment none`):
//! with the reference's SimCLR views the loss does not move within a few hundred steps (as the
//! reference code itself, 24 epochs on this CPU), which is a budget question, not a wiring one.
//!
//! Measured with this configuration (seed 0, 2-core dev box): random init 0.745 -> trained 0.980
//! (test build, 121 s). Other seeds, release build, before the fused BatchNorm: seed 2
//! 0.517 -> 0.998, seed 3 0.777 -> 0.958, seed 0 0.745 -> 0.955.

use std::path::Path;
use std::process::Command;

use firm_e2e::binary;

fn run(args: &[&str], cwd: &Path) -> String {
    let out = Command::new(binary("host-trainer", "host-trainer"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("host-trainer runs");
    assert!(
        out.status.success(),
        "host-trainer {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

#[test]
fn trained_encoder_beats_its_random_init_by_a_tenth() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    run(
        &[
            "synth",
            "--out",
            "data",
            "--classes",
            "weave",
            "--size",
            "64",
            "--train",
            "60",
            "--test-good",
            "20",
            "--test-per-defect",
            "20",
        ],
        cwd,
    );
    run(
        &[
            "fit",
            "--good",
            "data/weave/train/good",
            "--test-good",
            "data/weave/test/good",
            "--test-bad",
            "data/weave/test/misweave",
            "--size",
            "64",
            "--stem",
            "imagenet",
            "--width",
            "0.25",
            "--epochs",
            "40",
            "--batch",
            "8",
            "--lr",
            "0.05",
            "--augment",
            "none",
            "--checkpoints",
            "2",
            "--seed",
            "0",
            "--out",
            "run",
        ],
        cwd,
    );
    let json: serde_json::Value =
        serde_json::from_str(&run(&["eval", "--run", "run", "--json"], cwd)).unwrap();
    let trained = json["image_auroc"].as_f64().unwrap();
    let init = json["init_auroc"].as_f64().unwrap();
    println!(
        "misweave: random init {init:.3}, trained {trained:.3} ({} test images)",
        json["n_test"]
    );
    assert_eq!(json["n_test"], 40);
    assert!(
        json["per_type"]["misweave"].as_f64().is_some(),
        "per-type AUROC: {}",
        json["per_type"]
    );
    assert!(
        trained >= init + 0.10,
        "training must beat random initialisation by 0.10 AUROC: init {init:.3}, trained {trained:.3}"
    );
    // The run folder holds what a user looks at.
    for f in [
        "config.json",
        "metrics.jsonl",
        "eval/report.md",
        "eval/roc.png",
        "eval/histogram.png",
        "eval/learning_curve.png",
    ] {
        assert!(cwd.join("run").join(f).is_file(), "run/{f} missing");
    }
}

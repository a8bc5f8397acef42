//! End to end through the command line, the README's main job on every generated class:
//! `host-trainer fit --demo --class C` (the demo profile: generated data, a quarter-width
//! ResNet-18 at 96 px, 60 epochs, CutPaste + scar + NSA outliers) and then `eval --json`.
//!
//! This is the demo's quality gate too: each class's image AUROC (cos_1, last checkpoint, seed 0)
//! must reach the mean of three seeds measured on the dev box, less the seeds' spread (the largest
//! distance of one from their mean, at least 0.02) and 0.01. The MVTec bottle gate
//! (`host-trainer/tests/quality.rs`) takes 0.03 off the mean; the demo's seeds can spread further
//! (its test sets are small). The same binary, data and seed give the same numbers up to
//! floating-point summation order on another CPU; the generated data are the same everywhere
//! (`synth::GENERATOR_VERSION`, seed 0).
//!
//! Training must add to the random start (`gain`), so the test cannot pass on defects that any
//! features find, and no defect type may score below 0.5 (more normal than the good parts).

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

/// The least spread the floor allows for, whatever three seeds gave.
const MIN_SPREAD: f64 = 0.02;

/// One generated class: what was measured with `host-trainer fit --demo --class CLASS --seed S`
/// (release build, seeds 0, 1, 2; see issue 19's closing note).
struct Measured {
    class: &'static str,
    /// Test images of the demo layout: 40 good and 12 per defect type.
    n_test: u64,
    /// cos_1 image AUROC of the last checkpoint, seeds 0, 1, 2.
    trained: [f64; 3],
    /// The same encoders at their random initialisation.
    init: [f64; 3],
    /// Asserted: trained >= init + gain for seed 0 (a little below the smallest measured gain).
    gain: Option<f64>,
}

fn demo_learns(m: &Measured) {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    run(
        &[
            "fit", "--demo", "--class", m.class, "--seed", "0", "--out", "run",
        ],
        cwd,
    );
    let json: serde_json::Value =
        serde_json::from_str(&run(&["eval", "--run", "run", "--json"], cwd)).unwrap();
    let trained = json["image_auroc"].as_f64().unwrap();
    let init = json["init_auroc"].as_f64().unwrap();
    let mean = m.trained.iter().sum::<f64>() / 3.0;
    let spread = m
        .trained
        .iter()
        .map(|t| (t - mean).abs())
        .fold(0.0, f64::max);
    // Three seeds may happen to agree (weave's spread is 0.0014): never allow less than 0.02.
    let floor = mean - spread.max(MIN_SPREAD) - 0.01;
    println!(
        "demo {}: random init {init:.4}, trained {trained:.4}; floor {floor:.4} = mean of seeds \
         {:?} - their spread {spread:.4} (at least {MIN_SPREAD}) - 0.01 (their inits {:?}); per \
         type {}",
        m.class, m.trained, m.init, json["per_type"]
    );
    assert_eq!(
        json["n_test"], m.n_test,
        "{}: the demo's test images",
        m.class
    );
    assert!(
        trained >= floor,
        "{}: image AUROC {trained:.4} is below the demo's gate {floor:.4}",
        m.class
    );
    // No defect type may look more normal than the good parts.
    for (ty, auroc) in json["per_type"].as_object().unwrap() {
        let auroc = auroc.as_f64().unwrap();
        assert!(
            auroc >= 0.5,
            "{}: {ty} scores {auroc:.4}, below chance",
            m.class
        );
    }
    if let Some(gain) = m.gain {
        assert!(
            trained >= init + gain,
            "{}: training must beat the random initialisation by {gain}: init {init:.4}, \
             trained {trained:.4}",
            m.class
        );
    }
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

#[test]
fn demo_bottle_learns() {
    demo_learns(&Measured {
        class: "bottle",
        n_test: 76,
        trained: [0.9799, 0.9729, 0.9931],
        init: [0.8000, 0.9201, 0.8556],
        gain: Some(0.03),
    });
}

#[test]
fn demo_weave_learns() {
    demo_learns(&Measured {
        class: "weave",
        n_test: 100,
        trained: [0.9812, 0.9821, 0.9796],
        init: [0.6358, 0.6644, 0.6617],
        gain: Some(0.25),
    });
}

#[test]
fn demo_grid_learns() {
    demo_learns(&Measured {
        class: "grid",
        n_test: 88,
        trained: [0.9823, 0.9938, 0.9573],
        init: [0.4797, 0.5052, 0.3953],
        gain: Some(0.4),
    });
}

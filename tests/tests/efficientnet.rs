//! EfficientNet-Lite0 reaches the device: a small fine-tuning run and a `--epochs 0` baseline run
//! on generated data -> `export` -> `bundle inspect` / `verify` -> `flash` -> `run` on a `dir:`
//! source, and the device flags exactly the images the exporter's bundle path puts above the
//! threshold, at the same distances.
//!
//! The device runs at a threshold override halfway between the two middle distances of the
//! exporter's scores, so about half of the test images are flagged whatever the model learned:
//! the parity check never rests on an empty set (a one-epoch fine-tune may detect nothing at its
//! calibrated threshold: issue 19), and no image sits near the threshold.
//!
//! Weights: the ImageNet ones in `../shared/weights/efficientnet-lite0` when the workplace has
//! them, otherwise random ones written here (a fresh clone); either way the whole path runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use firm_e2e::{binary, ok, workspace_root};
use firm_shared::model::efficientnet::Features;
use firm_shared::model::{EfficientNetLite0, params};

fn trainer(cwd: &Path, args: &[&str]) -> String {
    ok(Command::new(binary("host-trainer", "host-trainer"))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap())
}

fn device(args: &[&str]) -> Output {
    Command::new(binary("device-runtime", "device-runtime"))
        .args(args)
        .output()
        .unwrap()
}

fn init_weights(dir: &Path) -> PathBuf {
    let shared = workspace_root()
        .join("../shared/weights/efficientnet-lite0/efficientnet-lite0.safetensors");
    if shared.is_file() {
        println!("ImageNet weights from {}", shared.display());
        return shared;
    }
    println!("no ImageNet weights at {}: random ones", shared.display());
    let vm = VarMap::new();
    EfficientNetLite0::new(
        Features::Head,
        0.1,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    params::init_params(&vm, 1).unwrap();
    params::randomize_batchnorm(&vm, 2).unwrap();
    let p = dir.join("random-lite0.safetensors");
    params::save(&vm, &p, params::Part::All).unwrap();
    p
}

/// The exporter's distance per test image (relative to test/), from its bundle path.
fn export_distances(run: &Path) -> BTreeMap<String, f64> {
    let csv = std::fs::read_to_string(run.join("export/scores.csv")).unwrap();
    csv.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (
                f[0].strip_prefix("test/").unwrap().to_string(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// Halfway between the two middle distances.
fn middle_threshold(d: &BTreeMap<String, f64>) -> f64 {
    let mut v: Vec<f64> = d.values().copied().collect();
    v.sort_by(f64::total_cmp);
    assert!(v.len() >= 2, "{d:?}");
    let i = v.len() / 2;
    assert!(
        v[i] - v[i - 1] > 1e-4,
        "two middle distances too close: {v:?}"
    );
    (v[i - 1] + v[i]) / 2.0
}

fn journal_alerts(state: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(state.join("journal")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        for line in std::fs::read_to_string(p).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.insert(
                v["record"]["source"].as_str().unwrap().to_string(),
                v["record"]["distance"].as_f64().unwrap(),
            );
        }
    }
    out
}

fn export_flash_run(root: &Path, run: &str, data: &Path) {
    let file = format!("{run}.firm");
    trainer(
        root,
        &[
            "export",
            "--run",
            run,
            "--key",
            "keys/bundle.key",
            "--out",
            &file,
            "--thumbnail",
            "16",
            "--accept-regression",
        ],
    );
    let s = trainer(root, &["bundle", "inspect", &file]);
    for want in [
        "efficientnet-lite0 (head features), 1280-d features, 64 px input",
        "49 convolutions (16 depthwise)",
        "taps: stem, stage1",
    ] {
        assert!(s.contains(want), "{want:?} missing in:\n{s}");
    }
    let v = trainer(
        root,
        &["bundle", "verify", &file, "--pubkey", "keys/bundle.pub"],
    );
    assert!(v.contains("self-test: ok on the cpu path"), "{v}");

    let distances = export_distances(&root.join(run));
    let threshold = middle_threshold(&distances);
    let images = distances.len();
    let want: BTreeMap<_, _> = distances
        .into_iter()
        .filter(|(_, d)| *d > threshold)
        .collect();
    let dev = root.join(format!("device-{run}"));
    std::fs::create_dir_all(&dev).unwrap();
    let cfg = dev.join("device.toml");
    std::fs::write(
        &cfg,
        format!(
            "schema-version = 1\nsite = \"e2e\"\nstate-dir = \"state\"\n\
             [bundles]\ntrusted-keys = [\"{}\"]\n[source]\nspec = \"dir:{}\"\n\
             [web]\nlisten = \"127.0.0.1:0\"\n[inference]\nthreshold = {threshold}\n",
            root.join("keys/bundle.pub").display(),
            data.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    ok(device(&[
        "flash",
        root.join(&file).to_str().unwrap(),
        "--config",
        c,
    ]));
    ok(device(&["run", "--config", c, "--exit-at-end"]));
    let got = journal_alerts(&dev.join("state"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{run}: device alerts vs the exporter's flagged images"
    );
    for (src, d) in &got {
        assert!(
            (d - want[src]).abs() < 1e-5,
            "{run} {src}: device {d} vs export {}",
            want[src]
        );
    }
    assert!(!got.is_empty(), "{run}: nothing flagged at all");
    assert!(got.len() < images, "{run}: everything flagged");
}

#[test]
fn efficientnet_lite0_runs_export_flash_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let init = init_weights(root);
    let init = init.to_str().unwrap();
    trainer(
        root,
        &[
            "synth",
            "--out",
            "data",
            "--classes",
            "weave",
            "--size",
            "80",
            "--train",
            "24",
            "--test-good",
            "8",
            "--test-per-defect",
            "3",
        ],
    );
    trainer(root, &["keygen", "--out", "keys"]);
    let common = [
        "fit",
        "--data",
        "data",
        "--class",
        "weave",
        "--backbone",
        "efficientnet-lite0",
        "--init",
        init,
        "--size",
        "64",
        "--checkpoints",
        "1",
        "--batch",
        "4",
    ];
    // The pretrained-feature baseline, and a short fine-tune with frozen early stages.
    let mut base = common.to_vec();
    base.extend(["--epochs", "0", "--out", "baseline"]);
    trainer(root, &base);
    let mut tune = common.to_vec();
    // One epoch on 24 images may land below the start either way: the guard against that
    // (issue 19) is tested in host-trainer/tests/finetune.rs; here the path to the device is.
    tune.extend([
        "--epochs",
        "1",
        "--freeze-stages",
        "3",
        "--accept-regression",
        "--out",
        "tuned",
    ]);
    trainer(root, &tune);
    let test = root.join("data/weave/test");
    export_flash_run(root, "baseline", &test);
    export_flash_run(root, "tuned", &test);
}

//! Fine-tuning from pretrained weights (issue 19, item 3): a pretrained start brings its own
//! defaults whatever profile is chosen (the backbone's input size, frozen BatchNorm statistics,
//! the head trained alone first, a small encoder rate; Lite0's early stages kept), the command
//! line still overrides them, and a fine-tuned run that scores below its start is refused by
//! `export` unless `--accept-regression`.

use std::path::Path;
use std::process::{Command, Output};

use clap::Parser;
use host_trainer::config::{FitArgs, resolve};
use host_trainer::run::RunDir;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    fit: FitArgs,
}

fn args(extra: &[&str]) -> FitArgs {
    let mut v = vec!["fit", "--demo", "--class", "grid"];
    v.extend_from_slice(extra);
    Wrap::try_parse_from(v).unwrap().fit
}

#[test]
fn a_pretrained_start_has_its_own_defaults_and_the_command_line_the_last_word() {
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("w.safetensors");
    std::fs::write(&init, b"not read by resolve").unwrap();
    let init = init.to_str().unwrap();

    // From scratch: the demo profile as it is.
    let (c, _) = resolve(&args(&[]), dir.path()).unwrap();
    assert_eq!((c.size, c.backbone_lr, c.head_warmup), (96, 1.0, 0.0));

    // ResNet-18 from pretrained weights: 224 px, head first, encoder at 0.1.
    let (c, s) = resolve(&args(&["--init", init]), dir.path()).unwrap();
    assert_eq!((c.size, c.backbone_lr, c.head_warmup), (224, 0.1, 0.25));
    assert_eq!((s.freeze_bn, s.freeze_stages), (Some(false), Some(0)));

    // EfficientNet-Lite0: also its statistics, stem and first three stages frozen.
    let (c, s) = resolve(
        &args(&["--backbone", "efficientnet-lite0", "--init", init]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(c.size, 224);
    assert_eq!((s.freeze_bn, s.freeze_stages), (Some(true), Some(3)));
    let firm_shared::model::EncoderConfig::EfficientnetLite0(e) = &c.model.encoder else {
        panic!("{:?}", c.model.encoder)
    };
    assert_eq!((e.frozen_stages, e.frozen_bn), (3, true));

    // The command line overrides every one of them.
    let (c, s) = resolve(
        &args(&[
            "--backbone",
            "efficientnet-lite0",
            "--init",
            init,
            "--size",
            "128",
            "--train-bn",
            "--backbone-lr",
            "0.5",
            "--head-warmup",
            "0",
            "--freeze-stages",
            "1",
        ]),
        dir.path(),
    )
    .unwrap();
    assert_eq!((c.size, c.backbone_lr, c.head_warmup), (128, 0.5, 0.0));
    assert_eq!((s.freeze_bn, s.freeze_stages), (Some(false), Some(1)));

    for (flag, value) in [("--backbone-lr", "1.5"), ("--head-warmup", "1")] {
        let e = resolve(&args(&["--init", init, flag, value]), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(flag), "{e}");
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_host-trainer"))
}

fn run_ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn export(root: &Path, run: &Path, extra: &[&str]) -> Output {
    bin()
        .current_dir(root)
        .args(["export", "--run"])
        .arg(run)
        .args([
            "--key",
            "keys/bundle.key",
            "--out",
            "b.firm",
            "--selftest",
            "8",
        ])
        .args(extra)
        .output()
        .unwrap()
}

/// A tiny run, then told (in its config and evaluations, as a fine-tuned run that lost would
/// record them) that it started from weights scoring 1.0: export refuses it and says why;
/// `--accept-regression` exports it; the same run as trained from scratch is not checked.
#[test]
fn export_refuses_a_fine_tune_that_lost_to_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run = root.join("run");
    run_ok(
        bin()
            .current_dir(root)
            .args([
                "fit",
                "--demo",
                "--class",
                "grid",
                "--size",
                "16",
                "--width",
                "0.0625",
                "--batch",
                "8",
                "--epochs",
                "1",
                "--checkpoints",
                "1",
                "--out",
            ])
            .arg(&run)
            .output()
            .unwrap(),
    );
    run_ok(
        bin()
            .args(["keygen", "--out"])
            .arg(root.join("keys"))
            .output()
            .unwrap(),
    );
    let r = RunDir::open(&run).unwrap();
    let last = r.checkpoint_or_latest(None).unwrap();
    assert_eq!(host_trainer::export::regression(&r, &last).unwrap(), None);

    let cfg_path = run.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["init"] = serde_json::json!(root.join("pretrained.safetensors"));
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    // The start scored higher than any checkpoint can.
    let init_line = text
        .lines()
        .find(|l| l.contains(r#""checkpoint":"init""#))
        .expect("the run evaluated its start")
        .to_string();
    let mut init: serde_json::Value = serde_json::from_str(&init_line).unwrap();
    let trained = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|m| m["kind"] == "eval" && m["checkpoint"] == last.as_str())
        .and_then(|m| m["image_auroc"].as_f64())
        .expect("the last checkpoint was evaluated");
    init["image_auroc"] = serde_json::json!(1.0);
    text = text.replace(&init_line, &init.to_string());
    std::fs::write(&metrics, text).unwrap();

    let r = RunDir::open(&run).unwrap();
    assert_eq!(
        host_trainer::export::regression(&r, &last).unwrap(),
        Some((1.0, trained))
    );
    let out = export(root, &run, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("below the 1.0000 of the --init weights")
            && err.contains("--accept-regression"),
        "{err}"
    );
    assert!(!root.join("b.firm").exists());
    run_ok(export(root, &run, &["--accept-regression"]));
    assert!(root.join("b.firm").is_file());
}

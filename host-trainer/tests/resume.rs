//! A run stopped (as by Ctrl-C) and resumed ends with exactly the weights of an uninterrupted run.
//! In its own test binary: it drives the process-wide stop flag.

use std::sync::atomic::Ordering;

use clap::Parser;
use host_trainer::config::FitArgs;
use host_trainer::run::RunDir;
use host_trainer::train::{self, Outcome, STOP};

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    fit: FitArgs,
}

fn args(extra: &[&str]) -> FitArgs {
    let mut v = vec![
        "fit",
        "--demo",
        "--class",
        "grid",
        "--size",
        "16",
        "--width",
        "0.0625",
        "--epochs",
        "2",
        "--batch",
        "8",
        "--checkpoints",
        "2",
    ];
    v.extend_from_slice(extra);
    Wrap::try_parse_from(v).unwrap().fit
}

fn final_weights(run: &std::path::Path) -> Vec<u8> {
    let r = RunDir::open(run).unwrap();
    let latest = r.latest().unwrap().unwrap();
    assert_eq!(r.read_state(&latest).unwrap().reason, "final");
    std::fs::read(r.weights(&latest)).unwrap()
}

#[test]
fn interrupted_then_resumed_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let out = train::fit(&args(&["--out", a.to_str().unwrap()]), tmp.path()).unwrap();
    assert_eq!(out, Outcome::Finished { run: a.clone() });

    STOP.store(true, Ordering::SeqCst);
    let out = train::fit(&args(&["--out", b.to_str().unwrap()]), tmp.path()).unwrap();
    STOP.store(false, Ordering::SeqCst);
    let Outcome::Interrupted { checkpoint, .. } = out else {
        panic!("expected an interruption, got {out:?}");
    };
    assert_eq!(
        checkpoint, "step-000001",
        "stops after the step in progress"
    );
    let run = RunDir::open(&b).unwrap();
    assert_eq!(run.latest().unwrap().as_deref(), Some("step-000001"));

    let out = train::fit(&args(&["--resume", b.to_str().unwrap()]), tmp.path()).unwrap();
    assert_eq!(out, Outcome::Finished { run: b.clone() });
    assert_eq!(
        final_weights(&a),
        final_weights(&b),
        "resumed run = uninterrupted run, bit for bit"
    );

    // The step metrics of the resumed run continue where they stopped, without gaps or repeats.
    let steps: Vec<u64> = run
        .metrics()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "step")
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());

    // Resuming a finished run trains nothing more.
    let before = final_weights(&b);
    train::fit(&args(&["--resume", b.to_str().unwrap()]), tmp.path()).unwrap();
    assert_eq!(before, final_weights(&b));
}

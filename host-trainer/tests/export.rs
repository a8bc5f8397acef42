//! `export`, `bundle inspect` and `bundle verify` on a tiny trained run: the bundle verifies and
//! reproduces its self-test, the threshold follows the conformal rule, every refusal has its own
//! message and exit code, and a failed export never leaves a partial file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_host-trainer"))
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One trained tiny run and key pair, shared by the tests of this file.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    run: PathBuf,
    keys: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let run = root.join("run");
        ok(bin()
            .current_dir(&root)
            .args([
                "fit", "--demo", "--class", "grid", "--size", "16", "--width", "0.0625",
            ])
            .args([
                "--batch",
                "8",
                "--epochs",
                "2",
                "--checkpoints",
                "1",
                "--out",
            ])
            .arg(&run)
            .output()
            .unwrap());
        let keys = root.join("keys");
        ok(bin()
            .arg("keygen")
            .arg("--out")
            .arg(&keys)
            .output()
            .unwrap());
        Fixture {
            _dir: dir,
            root,
            run,
            keys,
        }
    })
}

/// The "max embedding error" of an export summary (each export prints its own; the report file
/// beside the run is shared by the tests of this file).
fn embedding_error(summary: &str) -> f64 {
    let at = summary
        .find("max embedding error ")
        .unwrap_or_else(|| panic!("no embedding error in:\n{summary}"));
    summary[at + 20..]
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn export(f: &Fixture, out: &Path, extra: &[&str]) -> Output {
    bin()
        .current_dir(&f.root)
        .arg("export")
        .arg("--run")
        .arg(&f.run)
        .arg("--key")
        .arg(f.keys.join("bundle.key"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn manifest(file: &Path) -> serde_json::Value {
    let s = ok(bin()
        .args(["bundle", "inspect", "--json"])
        .arg(file)
        .output()
        .unwrap());
    serde_json::from_str(&s).unwrap()
}

#[test]
fn exported_bundle_verifies_inspects_and_reports() {
    let f = fixture();
    let file = f.root.join("out/grid.firm");
    let summary = ok(export(f, &file, &["--bundle-version", "42"]));
    assert!(
        summary.contains("self-test: 8 images") && summary.contains("passed"),
        "{summary}"
    );
    assert!(
        summary.contains("needs at least 460 good images"),
        "{summary}"
    );
    // verify: every step named, exit 0.
    let v = ok(bin()
        .args(["bundle", "verify"])
        .arg(&file)
        .arg("--pubkey")
        .arg(f.keys.join("bundle.pub"))
        .output()
        .unwrap());
    for step in [
        "container: ok",
        "signature: ok",
        "contents: ok",
        "self-test: ok on the cpu path",
    ] {
        assert!(v.contains(step), "{step} missing in:\n{v}");
    }
    // inspect: without a key it says the signature was not checked; with one, that it holds.
    let s = ok(bin()
        .args(["bundle", "inspect"])
        .arg(&file)
        .output()
        .unwrap());
    for want in [
        "not checked",
        "product class    grid",
        "bundle version   42",
        "int8-symmetric-per-output-channel",
        "graph            22 ops: 20 convolutions (0 depthwise)",
        "taps: stem, layer1, layer2, layer3, layer4",
        "calibrated",
        "f1-optimal",
        "dataset sha256",
        "encoder.safetensors",
        "bank.safetensors",
        "selftest.safetensors",
        "signature.ed25519",
    ] {
        assert!(s.contains(want), "{want:?} missing in:\n{s}");
    }
    let s = ok(bin()
        .args(["bundle", "inspect"])
        .arg(&file)
        .arg("--pubkey")
        .arg(f.keys.join("bundle.pub"))
        .output()
        .unwrap());
    assert!(s.contains("signature        valid"), "{s}");

    let m = manifest(&file);
    assert_eq!(m["schema-version"], 2);
    // The manifest carries the graph the weights belong to, emitted from the trained encoder.
    let g = &m["model"]["graph"];
    assert_eq!(g["ops"].as_array().unwrap().len(), 22, "{g}");
    assert_eq!(g["taps"][4]["name"], "layer4");
    assert_eq!(m["model"]["encoder"]["backbone"], "resnet18");
    assert_eq!(m["bundle-version"], 42);
    assert_eq!(m["model"]["weights"]["head-exported"], false);
    assert_eq!(m["score"]["spec"], "cos_1");
    // The demo grid holds out 40 good and 48 defective test images; the bank is the 60 good
    // training images.
    let t = &m["threshold"];
    let cal = &t["calibration"];
    assert_eq!(cal["n-calibration"], 40);
    assert_eq!(cal["target-guaranteed"], false);
    assert_eq!(cal["rank"], 40, "not guaranteed: the largest good distance");
    assert_eq!(cal["images-needed-for-target"], 460);
    assert_eq!(t["distance"], t["operating-points"]["calibrated"]);
    assert_eq!(t["test"]["n-defective"], 48);
    let cm = &t["test"]["confusion"];
    assert_eq!(
        cm["false-positives"], 0,
        "no good image above the largest good distance"
    );
    assert_eq!(
        cm["true-positives"].as_u64().unwrap() + cm["false-negatives"].as_u64().unwrap(),
        48
    );
    assert_eq!(m["bank"]["entries"], 60);
    assert_eq!(m["bank"]["sources"].as_array().unwrap().len(), 60);
    let cases = m["selftest"]["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    let labels: Vec<&str> = cases.iter().map(|c| c["label"].as_str().unwrap()).collect();
    assert_eq!(labels.iter().filter(|l| **l == "good").count(), 4);
    assert_eq!(labels.iter().filter(|l| **l == "defective").count(), 4);
    // The drift sentinel's reference: statistics of the 60 training images, the tail of the 40
    // calibration distances (rank ceil(0.9 * 41) = 37).
    let d = &m["drift"];
    assert_eq!(d["images"], 60);
    let b: Vec<f64> = serde_json::from_value(d["brightness"].clone()).unwrap();
    assert!(
        b.len() == 5 && b.is_sorted() && b[0] > 0.0 && b[4] < 255.0,
        "{b:?}"
    );
    assert!(d["focus"][0].as_f64().unwrap() > 0.0, "{d}");
    assert_eq!(d["distance"]["calibration-images"], 40);
    assert_eq!(d["distance"]["tail-rank"], 37);
    assert!(
        d["distance"]["tail-distance"].as_f64().unwrap() <= cal["distance"].as_f64().unwrap(),
        "the 37th of 40 distances is at most the calibrated (largest) one: {d}"
    );
    let pv = &m["provenance"];
    assert_eq!(pv["dataset-sha256"].as_str().unwrap().len(), 64);
    assert_eq!(pv["config"]["seed"], 0);
    assert!(
        pv["metrics"]["spearman-quantized-vs-float"]
            .as_f64()
            .unwrap()
            > 0.5
    );

    // u8 activations: the CPU executor reproduces the reference path's integer pipeline (f64
    // integer convolutions on candle) to the last bit but for the final pooling.
    assert!(!m["model"]["activations"].as_array().unwrap().is_empty());
    let e = embedding_error(&summary);
    assert!(e < 1e-6, "reference vs bundle path: {e}");
    assert!(f.run.join("export/report.json").is_file());
    // f32 activations: the reference is the unfolded graph, a different computation, so the
    // self-test differs a little and stays within the tolerance.
    let f32_file = f.root.join("f32.firm");
    let summary32 = ok(export(f, &f32_file, &["--activations", "f32"]));
    let m32 = manifest(&f32_file);
    assert!(m32["model"]["activations"].as_array().unwrap().is_empty());
    assert!(
        m32["selftest"]["reference"]
            .as_str()
            .unwrap()
            .contains("unfolded")
    );
    let e = embedding_error(&summary32);
    assert!(
        e > 0.0 && e < 1e-4,
        "unfolded reference vs bundle path: {e}"
    );
    assert!(f.run.join("export/report.md").is_file());
    assert!(f.run.join("export/histogram.png").is_file());
    // The standard tar tool lists it (the format is inspectable without our tools).
    if let Ok(out) = Command::new("tar").arg("tf").arg(&file).output() {
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            list.contains("manifest.json") && list.contains("signature.ed25519"),
            "{list}"
        );
    }
}

#[test]
fn an_attainable_target_picks_a_lower_rank() {
    let f = fixture();
    let file = f.root.join("loose.firm");
    ok(export(
        f,
        &file,
        &["--target-frr", "0.3", "--confidence", "0.5"],
    ));
    let cal = &manifest(&file)["threshold"]["calibration"];
    assert_eq!(cal["target-guaranteed"], true);
    // Smallest k with P(Bin(40, 0.7) <= k - 1) >= 0.5: P(<= 27) = 0.4228, P(<= 28) = 0.5594.
    assert_eq!(cal["rank"], 29);
    assert!(cal["guaranteed-frr"].as_f64().unwrap() <= 0.3);
}

#[test]
fn refusals_name_the_step_and_exit_3() {
    let f = fixture();
    let file = f.root.join("tamper.firm");
    ok(export(f, &file, &[]));
    let verify = |path: &Path, key: &Path| {
        bin()
            .args(["bundle", "verify"])
            .arg(path)
            .arg("--pubkey")
            .arg(key)
            .output()
            .unwrap()
    };
    // Another key.
    let other = f.root.join("other-keys");
    ok(bin()
        .arg("keygen")
        .arg("--out")
        .arg(&other)
        .output()
        .unwrap());
    let out = verify(&file, &other.join("bundle.pub"));
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused at the signature check"), "{err}");
    // One changed byte in the middle of the file.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    let bad = f.root.join("flipped.firm");
    std::fs::write(&bad, &bytes).unwrap();
    let out = verify(&bad, &f.keys.join("bundle.pub"));
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bundle refused") && !err.contains("panicked"),
        "{err}"
    );
    // Cut short.
    std::fs::write(&bad, &bytes[..mid]).unwrap();
    let out = verify(&bad, &f.keys.join("bundle.pub"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("container check") && err.contains("truncated"),
        "{err}"
    );
    // Not a key file.
    let out = verify(&file, &file);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pubkey"));
}

#[test]
fn failed_exports_leave_no_file_and_keep_the_old_one() {
    let f = fixture();
    let dir = f.root.join("keep");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("b.firm");
    std::fs::write(&file, b"previous bundle").unwrap();
    // A public key given as the signing key.
    let out = bin()
        .arg("export")
        .arg("--run")
        .arg(&f.run)
        .arg("--key")
        .arg(f.keys.join("bundle.pub").with_extension("missing"))
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let bad_key = dir.join("bad.key");
    std::fs::write(&bad_key, "zz").unwrap();
    for (args, what) in [
        (vec!["--target-frr", "0"], "--target-frr"),
        (vec!["--confidence", "1.5"], "--confidence"),
        (vec!["--selftest", "3"], "--selftest"),
        (vec!["--float-layers", "conv9"], "conv9"),
    ] {
        let out = export(f, &file, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{args:?}: {err}");
    }
    let out = bin()
        .arg("export")
        .arg("--run")
        .arg(&f.run)
        .arg("--key")
        .arg(&bad_key)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));
    assert_eq!(std::fs::read(&file).unwrap(), b"previous bundle");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
}

#[test]
fn help_explains_the_commands() {
    let s = ok(bin().args(["export", "--help"]).output().unwrap());
    for want in [
        "--target-frr",
        "--confidence",
        "--float-layers",
        "--bundle-version",
        "atomically",
    ] {
        assert!(s.contains(want), "{want} missing in:\n{s}");
    }
    let s = ok(bin().args(["bundle", "--help"]).output().unwrap());
    assert!(s.contains("inspect") && s.contains("verify"), "{s}");
}

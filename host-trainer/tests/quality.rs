//! Quality gate on real images: MVTec-AD bottle from the workplace's `../shared/data/mvtec`
//! (evaluation data, never copied into the repository). Runs whenever that folder exists and
//! prints that it ran or why it did not.
//!
//! A small CPU configuration (ResNet-18 at half width, ImageNet stem, 64 px, fixed epochs, no view
//! augmentation as the `cpu` profiles) trains from a random start; its image AUROC (cos_1, last
//! checkpoint, the 83 test images) must reach the mean of three seeds measured on the dev box
//! minus 0.03. Same binary, same data and seed give the same numbers up to floating-point
//! summation order on another CPU.
//!
//! The run is then exported as a bundle (issue 5's targets): the quantized bundle path may lose at
//! most 0.3 points of image AUROC against the float model, its distances must keep a Spearman
//! rank correlation with the float ones (0.999 with int8 weights alone, 0.995 with u8 activations
//! too), and `bundle verify` must pass.
//!
//! EfficientNet-Lite0 (issue 15): the ImageNet weights of `../shared/weights` with `--epochs 0`
//! at 224 px, exported with u8 activations, may lose at most 0.3 AUROC points too. The same run
//! with the patch score's defaults (issue 17's targets): pixel AUROC at least 0.985 and image
//! AUROC of the patch score at least 0.998 on bottle's masks.

use std::path::PathBuf;
use std::process::Command;

/// Measured with exactly [`ARGS`] and seeds 0, 1, 2 on the dev box (release build, about 50 s
/// each, since unaugmented views run the encoder once; see issue 19's closing note; issue 4's
/// two-view figures were 0.9476, 0.9444, 0.9460):
/// `host-trainer fit --data ../shared/data/mvtec --class bottle <ARGS> --seed S`.
const MEASURED: [f64; 3] = [0.9492, 0.9484, 0.9619];
/// The same encoders at their random initialisation, for the record (printed, not asserted).
const MEASURED_INIT: [f64; 3] = [0.9008, 0.8960, 0.9071];

const ARGS: &[&str] = &[
    "--size",
    "64",
    "--stem",
    "imagenet",
    "--width",
    "0.5",
    "--batch",
    "16",
    "--epochs",
    "12",
    "--lr",
    "0.01",
    "--augment",
    "none",
    "--checkpoints",
    "1",
];

/// Print `msg` and keep it in target/tmp/quality-gate-NAME.txt, which `scripts/test` shows at the
/// end (test output is captured otherwise).
fn report(name: &str, msg: &str) {
    println!("{msg}");
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("quality-gate-{name}.txt")),
        format!("{msg}\n"),
    );
}

fn mvtec_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mvtec")
}

#[test]
fn bottle_quality_gate() {
    let root = mvtec_root();
    if !root.join("bottle/train/good").is_dir() {
        report(
            "resnet18",
            &format!(
                "quality gate skipped: {} not found (the workplace's MVTec-AD bottle)",
                root.join("bottle").display()
            ),
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_host-trainer"))
        .current_dir(tmp.path())
        .arg("fit")
        .arg("--data")
        .arg(&root)
        .args(["--class", "bottle", "--seed", "0"])
        .args(ARGS)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fit failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_host-trainer"))
        .args(["eval", "--json", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let auroc = json["image_auroc"].as_f64().unwrap();
    let init = json["init_auroc"].as_f64().unwrap();
    let mean = MEASURED.iter().sum::<f64>() / MEASURED.len() as f64;
    let floor = mean - 0.03;
    report(
        "resnet18",
        &format!(
            "quality gate ran on {}: image AUROC {auroc:.4} (random init {init:.4}); floor {floor:.4} \
         = mean of seeds {MEASURED:?} - 0.03 (their random inits {MEASURED_INIT:?})",
            root.join("bottle").display()
        ),
    );
    assert_eq!(json["n_test"], 83, "bottle has 83 test images");
    assert!(
        auroc >= floor,
        "bottle image AUROC {auroc:.4} is below the gate {floor:.4}"
    );

    // Export: quantized against float, and the device's checks.
    let keys = tmp.path().join("keys");
    let bundle = tmp.path().join("bottle.firm");
    let run_ok = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let bin = env!("CARGO_BIN_EXE_host-trainer");
    run_ok(Command::new(bin).arg("keygen").arg("--out").arg(&keys));
    run_ok(
        Command::new(bin)
            .current_dir(tmp.path())
            .arg("export")
            .arg("--run")
            .arg(&run)
            .arg("--key")
            .arg(keys.join("bundle.key"))
            .arg("--out")
            .arg(&bundle),
    );
    run_ok(
        Command::new(bin)
            .args(["bundle", "verify"])
            .arg(&bundle)
            .arg("--pubkey")
            .arg(keys.join("bundle.pub")),
    );
    let figures = || {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("export/report.json")).unwrap())
                .unwrap();
        (
            r["auroc-drop-points"].as_f64().unwrap(),
            r["spearman"].as_f64().unwrap(),
            r["quantized-auroc"].as_f64().unwrap(),
        )
    };
    let (drop, rho, q) = figures();
    // The same weights with f32 activations: int8 weights alone.
    let f32_bundle = tmp.path().join("bottle-f32.firm");
    run_ok(
        Command::new(bin)
            .current_dir(tmp.path())
            .arg("export")
            .arg("--run")
            .arg(&run)
            .arg("--key")
            .arg(keys.join("bundle.key"))
            .arg("--out")
            .arg(&f32_bundle)
            .args(["--activations", "f32"]),
    );
    let (drop32, rho32, _) = figures();
    report(
        "resnet18",
        &format!(
            "quality gate ran on {}: image AUROC {auroc:.4} (random init {init:.4}); floor {floor:.4} \
         = mean of seeds {MEASURED:?} - 0.03 (their random inits {MEASURED_INIT:?}); bundle (u8 \
         activations): AUROC {q:.4} (drop {drop:.3} points, limit 0.3), Spearman {rho:.6} (limit \
         0.995); f32 activations: drop {drop32:.3}, Spearman {rho32:.6} (limit 0.999)",
            root.join("bottle").display()
        ),
    );
    assert!(drop <= 0.3, "quantization lost {drop:.3} AUROC points");
    // u8 activations put rounding noise of a step on every tensor; measured on this run 0.9989
    // (and 0.9968-0.9991 with other calibration ranges): the ranking stays, the finest
    // differences between near-identical good images reorder.
    assert!(
        rho >= 0.995,
        "Spearman {rho:.6} of quantized vs float distances (u8 activations)"
    );
    assert!(drop32 <= 0.3, "int8 weights lost {drop32:.3} AUROC points");
    assert!(
        rho32 >= 0.999,
        "Spearman {rho32:.6} of quantized vs float distances (f32 activations)"
    );
}

/// Measured with this test's settings on the dev box (2026-12-03, release build): the float
/// baseline scores 0.9968; u8 activations keep 0.9968 (Spearman 0.9940), f32 activations with
/// int8 weights 0.9984 (Spearman 0.9949).
#[test]
fn efficientnet_lite0_quantization_gate() {
    let root = mvtec_root();
    let weights = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/weights/efficientnet-lite0/efficientnet-lite0.safetensors");
    if !root.join("bottle/train/good").is_dir() || !weights.is_file() {
        report(
            "efficientnet",
            &format!(
                "EfficientNet-Lite0 quantization gate skipped: {} or {} not found",
                root.join("bottle").display(),
                weights.display()
            ),
        );
        return;
    }
    let bin = env!("CARGO_BIN_EXE_host-trainer");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let run_ok = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run_ok(
        Command::new(bin)
            .current_dir(tmp.path())
            .arg("fit")
            .arg("--data")
            .arg(&root)
            .args([
                "--class",
                "bottle",
                "--backbone",
                "efficientnet-lite0",
                "--epochs",
                "0",
                "--size",
                "224",
                "--score",
                "cos_1",
            ])
            .arg("--init")
            .arg(&weights)
            .arg("--out")
            .arg(&run),
    );
    let keys = tmp.path().join("keys");
    run_ok(Command::new(bin).arg("keygen").arg("--out").arg(&keys));
    let bundle = tmp.path().join("lite0.firm");
    run_ok(
        Command::new(bin)
            .current_dir(tmp.path())
            .arg("export")
            .arg("--run")
            .arg(&run)
            .arg("--key")
            .arg(keys.join("bundle.key"))
            .arg("--out")
            .arg(&bundle),
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("export/report.json")).unwrap()).unwrap();
    let drop = r["auroc-drop-points"].as_f64().unwrap();
    let rho = r["spearman"].as_f64().unwrap();
    let q = r["quantized-auroc"].as_f64().unwrap();
    let float = r["float-auroc"].as_f64().unwrap();
    report(
        "efficientnet",
        &format!(
            "EfficientNet-Lite0 quantization gate ran on {}: float AUROC {float:.4}, bundle (u8 \
             activations) {q:.4} (drop {drop:.3} points, limit 0.3), Spearman {rho:.6} (limit 0.99)",
            root.join("bottle").display()
        ),
    );
    assert!(
        float >= 0.99,
        "the ImageNet features score {float:.4} on bottle"
    );
    assert!(drop <= 0.3, "quantization lost {drop:.3} AUROC points");
    assert!(
        rho >= 0.99,
        "Spearman {rho:.6} of quantized vs float distances"
    );
    let v = run_ok(
        Command::new(bin)
            .arg("bundle")
            .arg("verify")
            .arg(&bundle)
            .arg("--pubkey")
            .arg(keys.join("bundle.pub")),
    );
    println!("{v}");

    // Patch scoring with the defaults (taps, bank, smoothing): where the defect is.
    let e: serde_json::Value = serde_json::from_str(&run_ok(
        Command::new(bin)
            .current_dir(tmp.path())
            .args(["eval", "--score", "patch", "--quick", "--json", "--run"])
            .arg(&run),
    ))
    .unwrap();
    let (pixel, aupro, image) = (
        e["pixel_auroc"].as_f64().unwrap(),
        e["aupro"].as_f64().unwrap(),
        e["patch_auroc"].as_f64().unwrap(),
    );
    report(
        "efficientnet-patch",
        &format!(
            "EfficientNet-Lite0 patch score on {} ({}): pixel AUROC {pixel:.5} (target 0.985), \
             AUPRO {aupro:.4}, image AUROC {image:.4} (target 0.998)",
            root.join("bottle").display(),
            e["patch"]
        ),
    );
    assert!(pixel >= 0.985, "pixel AUROC {pixel:.5} < 0.985");
    assert!(image >= 0.998, "patch score image AUROC {image:.4} < 0.998");
    // Measured 0.9381 with these defaults; AUPRO is reported, with a floor well below it.
    assert!(aupro >= 0.9, "AUPRO {aupro:.4}");
}

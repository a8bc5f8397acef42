//! `host-trainer bench` end to end on tiny data: the grid runs, is interrupted and continues where
//! it stopped, finished cells are never trained again, another grid in the same folder is refused,
//! and the table agrees with the cells it summarises. In its own test binary: it drives the
//! process-wide stop flag.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use clap::Parser;
use host_trainer::bench::{self, BenchArgs, BenchOutcome, CellResult, SCORES};
use host_trainer::train::STOP;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

/// Tests that train hold this: the stop flag is process-wide.
static TRAINING: Mutex<()> = Mutex::new(());

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    bench: BenchArgs,
}

fn args(v: &[&str]) -> BenchArgs {
    let mut argv = vec!["bench"];
    argv.extend_from_slice(v);
    Wrap::try_parse_from(argv).unwrap().bench
}

/// A 32 px image of class `c`: a disc, horizontal stripes or a checkerboard, jittered.
fn pattern(c: usize, rng: &mut impl Rng) -> RgbImage {
    let (dx, dy) = (rng.random_range(-3i32..=3), rng.random_range(-3i32..=3));
    let tint = rng.random_range(150u8..=255);
    RgbImage::from_fn(32, 32, |x, y| {
        let (x, y) = (x as i32 + dx, y as i32 + dy);
        let on = match c {
            0 => (x - 16).pow(2) + (y - 16).pow(2) < 64,
            1 => (y / 4) % 2 == 0,
            _ => ((x / 6) + (y / 6)) % 2 == 0,
        };
        if on {
            Rgb([tint, tint / 2, 40])
        } else {
            Rgb([20, 20, 30])
        }
    })
}

/// CIFAR-10 as class folders (ROOT/train/<class>, ROOT/test/<class>), three classes (sorted by
/// name: checker 0, disc 1, stripes 2).
fn write_cifar_folders(root: &Path) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for (split, n) in [("train", 12), ("test", 6)] {
        for (c, name) in ["disc", "stripes", "checker"].iter().enumerate() {
            let d = root.join(split).join(name);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                pattern(c, &mut rng)
                    .save(d.join(format!("{i:03}.png")))
                    .unwrap();
            }
        }
    }
}

fn tiny(data: &Path, out: &Path, epochs: &str) -> BenchArgs {
    let data = format!("cifar10:{}", data.display());
    let out = out.display().to_string();
    args(&[
        "--dataset",
        &data,
        "--classes",
        "0,2",
        "--losses",
        "firm,supcon",
        "--seeds",
        "2",
        "--train-subset",
        "8",
        "--test-subset",
        "12",
        "--epochs",
        epochs,
        "--size",
        "16",
        "--width",
        "0.0625",
        "--batch",
        "8",
        "--out",
        &out,
    ])
}

fn results(out: &Path) -> Vec<CellResult> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("table.json")).unwrap()).unwrap();
    serde_json::from_value(v["cells"].clone()).unwrap()
}

#[test]
fn a_grid_continues_where_it_stopped_and_its_table_matches_its_cells() {
    let _serial = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar");
    write_cifar_folders(&data);
    let out = tmp.path().join("bench");
    let cwd = tmp.path();

    // Ctrl-C before the first step: the first cell stops after one step with a checkpoint.
    STOP.store(true, Ordering::SeqCst);
    let r = bench::run(&tiny(&data, &out, "2"), cwd).unwrap();
    STOP.store(false, Ordering::SeqCst);
    assert_eq!(r, BenchOutcome::Interrupted { done: 0, total: 8 });
    let first = out.join("cells/checker/firm/seed-0");
    let latest = std::fs::read_to_string(first.join("checkpoints/latest")).unwrap();
    assert!(latest.starts_with("step-"), "{latest}");
    assert!(!first.join("result.json").exists());

    // The same command continues: the interrupted cell resumes, the others run.
    let summary = match bench::run(&tiny(&data, &out, "2"), cwd).unwrap() {
        BenchOutcome::Complete { summary } => summary,
        other => panic!("{other:?}"),
    };
    assert_eq!((summary.cells_done, summary.cells_total), (8, 8));
    let cells = results(&out);
    assert_eq!(cells.len(), 8);
    for c in &cells {
        let epochs: Vec<usize> = c.curve.iter().map(|p| p.0).collect();
        assert_eq!(epochs, vec![0, 1, 2], "{c:?}");
        assert_eq!((c.n_train, c.n_test), (8, 12));
        for s in SCORES {
            assert!((0.0..=1.0).contains(&c.auroc[s]), "{c:?}");
        }
        assert_eq!(
            c.auroc["cos_1"], c.curve[2].1,
            "final cos_1 is the last checkpoint's"
        );
        let g = c.geometry.expect("rotation outliers give a geometry");
        assert_eq!(g.n, 8);
        for v in [g.projection.inlier, g.projection.outlier, g.features.cross] {
            assert!((-1.0..=1.0).contains(&v), "{g:?}");
        }
    }
    // The resumed cell trained both epochs: every step exactly once, after the interruption.
    let steps = std::fs::read_to_string(first.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count();
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(first.join("checkpoints/epoch-0002/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(steps as u64, state["global-step"].as_u64().unwrap());
    // Only the final checkpoint is kept.
    let kept: Vec<String> = std::fs::read_dir(first.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "latest")
        .collect();
    assert_eq!(kept, vec!["epoch-0002".to_string()]);

    // The table is the mean over seeds of the per-seed class means, with the sample deviation.
    for l in &summary.losses {
        let per_seed: Vec<f64> = (0..2)
            .map(|seed| {
                let v: Vec<f64> = cells
                    .iter()
                    .filter(|c| c.loss.to_string() == l.loss && c.seed == seed)
                    .map(|c| c.auroc["cos_1"])
                    .collect();
                assert_eq!(v.len(), 2);
                v.iter().sum::<f64>() / 2.0
            })
            .collect();
        let mean = (per_seed[0] + per_seed[1]) / 2.0;
        let std = (per_seed[0] - per_seed[1]).abs() / 2f64.sqrt();
        let got = l.mean["cos_1"];
        assert!((got.mean - mean).abs() < 1e-12 && (got.std - std).abs() < 1e-12);
        assert_eq!(got.n, 2);
        assert_eq!(l.per_class["stripes"]["aulc"].n, 2);
    }
    // Identical conditions: per class and seed, every loss starts from the same weights on the
    // same data, so the AUROC before training is the same number for each.
    for c in &cells {
        let twin = cells
            .iter()
            .find(|o| o.class_index == c.class_index && o.seed == c.seed && o.loss != c.loss)
            .unwrap();
        assert_eq!(c.curve[0], twin.curve[0], "{c:?}");
    }
    let init = |l: &str| summary.losses.iter().find(|x| x.loss == l).unwrap().mean["init"];
    assert_eq!(init("firm"), init("supcon"));
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert_eq!(md, bench::markdown(&summary));
    for needle in [
        "| loss | checker (0) | stripes (2) | mean |",
        "| firm |",
        "| supcon |",
        "Figure 2's axes",
        "cos_1 before training",
    ] {
        assert!(md.contains(needle), "{needle} missing in\n{md}");
    }
    for png in ["curves.png", "curves-checker.png", "curves-stripes.png"] {
        let img = image::open(out.join(png)).unwrap();
        assert!(img.width() > 200 && img.height() > 100, "{png}");
    }

    // Finished cells are read back, never trained again.
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = mtime(&first.join("result.json"));
    let again = bench::run(&tiny(&data, &out, "2"), cwd).unwrap();
    assert!(matches!(again, BenchOutcome::Complete { .. }));
    assert_eq!(mtime(&first.join("result.json")), before);
    assert_eq!(results(&out), cells);

    // A result written before the geometry was measured gets it from the kept final checkpoint.
    let path = first.join("result.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("geometry");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    bench::run(&tiny(&data, &out, "2"), cwd).unwrap();
    assert_eq!(results(&out), cells, "the same geometry again");

    // Another grid in the same folder is refused, naming what differs.
    let e = bench::run(&tiny(&data, &out, "3"), cwd)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds another grid") && e.contains("fit-flags") && e.contains("\"3\""),
        "{e}"
    );
}

#[test]
fn an_mvtec_class_is_one_normal_class_trained_on_its_folder() {
    let _serial = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mvtec");
    let spec = host_trainer::data::synth::SynthSpec {
        classes: vec![host_trainer::data::synth::SynthClass::Grid],
        size: 32,
        n_train: 10,
        n_test_good: 4,
        n_test_per_defect: 2,
        ..Default::default()
    };
    host_trainer::data::synth::write_dataset(&root, &spec).unwrap();
    let out = tmp.path().join("b");
    let a = args(&[
        "--dataset",
        &format!("mvtec:{}/grid", root.display()),
        "--losses",
        "ntxent",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--stem",
        "cifar",
        "--size",
        "16",
        "--width",
        "0.0625",
        "--batch",
        "4",
        "--out",
        &out.display().to_string(),
    ]);
    let BenchOutcome::Complete { summary } = bench::run(&a, tmp.path()).unwrap() else {
        panic!("not complete")
    };
    assert_eq!(summary.classes, vec![(0, "grid".to_string())]);
    let cells = results(&out);
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0].n_train, 10);
    // The class's own profile: CutPaste + scar outliers, not the semantic profile's rotations.
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("cells/grid/ntxent/seed-0/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["outliers"], "cutpaste,scar");
    assert!(
        cfg["profile-origin"]
            .as_str()
            .unwrap()
            .contains("mvtec/grid")
    );
    assert!(
        !out.join("data").exists(),
        "an MVTec class is read in place"
    );
}

#[test]
fn bad_grids_are_refused_before_anything_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar");
    write_cifar_folders(&data);
    let d = format!("cifar10:{}", data.display());
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--dataset", "imagenet"], &["`imagenet`", "cifar100:DIR"]),
        (
            &["--dataset", &d, "--classes", "0,5"],
            &["5 is not a class", "checker, disc, stripes"],
        ),
        (
            &["--dataset", "mvtec:/x/bottle", "--classes", "1"],
            &["--classes", "labelled datasets"],
        ),
        (
            &["--dataset", "mvtec:/x/bottle", "--test-subset", "9"],
            &["--test-subset"],
        ),
        (&["--dataset", &d, "--seeds", "0"], &["--seeds"]),
        (
            &["--dataset", &d, "--stem", "tiny"],
            &["bench flags", "tiny"],
        ),
    ];
    for (argv, needles) in cases {
        let mut a = args(argv);
        a.out = Some(tmp.path().join("never"));
        let e = bench::run(&a, tmp.path()).unwrap_err().to_string();
        for n in needles {
            assert!(e.contains(n), "{argv:?}: `{n}` not in: {e}");
        }
        assert!(!tmp.path().join("never").exists(), "{argv:?}");
    }
    let missing = format!("fmnist:{}", tmp.path().join("none").display());
    let e = bench::run(&args(&["--dataset", &missing]), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("dataset-fashion-mnist"), "{e}");
}

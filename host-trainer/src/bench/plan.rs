//! The grid of a bench: what the command line asks for, resolved and saved as OUT/plan.json so a
//! rerun continues the same grid (and a rerun with other settings is refused, not mixed in).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::compute::DeviceSpec;
use crate::config::FitArgs;
use crate::data::labelled::{self, Splits};
use crate::error::{Error, Result};
use crate::loss::LossKind;

/// `host-trainer bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// fmnist (Debian's dataset-fashion-mnist files), fmnist:DIR, cifar10:DIR, cifar100:DIR
    /// (20 superclasses; binary files or class folders), or mvtec:ROOT/CLASS.
    #[arg(long, value_name = "SPEC")]
    pub dataset: String,
    /// Normal classes by index, comma-separated (default: every class). Not for mvtec.
    #[arg(long, value_delimiter = ',', value_name = "I,J,...")]
    pub classes: Vec<usize>,
    /// Training objectives to compare, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "firm,ntxent,supcon,supcon-star",
        value_name = "LOSS,..."
    )]
    pub losses: Vec<LossKind>,
    /// Seeds per cell: 0..S (each seed also draws its own subsets).
    #[arg(long, default_value_t = 2, value_name = "S")]
    pub seeds: u64,
    /// Training images of the normal class per cell (seeded sample; default all).
    #[arg(long, value_name = "N")]
    pub train_subset: Option<usize>,
    /// Test images per cell, stratified over the classes (seeded; default all).
    #[arg(long, value_name = "M")]
    pub test_subset: Option<usize>,
    /// Profile: cpu or paper (configs/bench/semantic.toml for labelled sets, the class's
    /// configs/mvtec/<class>.toml for mvtec).
    #[arg(long, default_value = "cpu")]
    pub profile: String,
    /// Synthetic outliers (default: the profile's: rotation for labelled sets, cutpaste,scar
    /// for mvtec), e.g. rotation, cutpaste,scar or oe:DIR.
    #[arg(long)]
    pub outliers: Option<String>,
    /// Epochs per cell (replaces the profile's length or time budget).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Wall-time budget per cell in minutes (replaces --epochs).
    #[arg(long, conflicts_with = "epochs")]
    pub max_minutes: Option<f64>,
    /// Evaluations over each cell's training (default: every epoch up to 25, else the
    /// profile's).
    #[arg(long)]
    pub checkpoints: Option<usize>,
    /// Encoder width multiplier (1 = ResNet-18).
    #[arg(long)]
    pub width: Option<String>,
    /// Model input side in pixels.
    #[arg(long)]
    pub size: Option<String>,
    /// ResNet stem: cifar or imagenet.
    #[arg(long)]
    pub stem: Option<String>,
    /// Good images per step: each brings its outliers and two views of everything.
    #[arg(long)]
    pub batch: Option<String>,
    /// Peak learning rate of the one-cycle schedule (SGD, momentum 0.9, weight decay 3e-4).
    #[arg(long)]
    pub lr: Option<String>,
    /// Temperature of the contrastive loss.
    #[arg(long)]
    pub tau: Option<String>,
    /// View augmentation: simclr, light or none.
    #[arg(long)]
    pub augment: Option<String>,
    /// Output folder (default runs/bench-<dataset>-<class or classes>); rerun the same command to
    /// continue an interrupted grid.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where to train and score the cells: cpu, or cuda / cuda:N (a build with --features
    /// cuda). Not part of the grid: an interrupted grid may continue on another device.
    #[arg(long, default_value = "cpu", env = "FIRM_DEVICE")]
    pub device: DeviceSpec,
}

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum DatasetSpec {
    /// Fashion-MNIST, CIFAR-10 or CIFAR-100 (superclasses) under `dir`.
    Labelled {
        name: String,
        dir: PathBuf,
    },
    Mvtec {
        root: PathBuf,
        class: String,
    },
}

impl DatasetSpec {
    pub fn parse(s: &str, cwd: &Path) -> Result<Self> {
        let (kind, rest) = match s.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (s, None),
        };
        let abs = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { cwd.join(p) }
        };
        match (kind, rest) {
            ("fmnist", None) => Ok(Self::Labelled {
                name: "fmnist".into(),
                dir: PathBuf::from(labelled::FASHION_MNIST_DIR),
            }),
            ("fmnist" | "cifar10" | "cifar100", Some(dir)) if !dir.is_empty() => {
                Ok(Self::Labelled {
                    name: kind.into(),
                    dir: abs(dir),
                })
            }
            ("mvtec", Some(path)) if !path.trim_end_matches('/').is_empty() => {
                let p = abs(path.trim_end_matches('/'));
                match (p.parent(), p.file_name()) {
                    (Some(root), Some(class)) => Ok(Self::Mvtec {
                        root: root.to_path_buf(),
                        class: class.to_string_lossy().into_owned(),
                    }),
                    _ => Err(Error::invalid(
                        "--dataset",
                        format!("`{s}`: expected mvtec:ROOT/CLASS"),
                    )),
                }
            }
            _ => Err(Error::invalid(
                "--dataset",
                format!(
                    "`{s}`; expected fmnist, fmnist:DIR, cifar10:DIR, cifar100:DIR or \
                     mvtec:ROOT/CLASS"
                ),
            )),
        }
    }

    /// Short name for folders and titles.
    pub fn name(&self) -> String {
        match self {
            Self::Labelled { name, .. } => name.clone(),
            Self::Mvtec { class, .. } => format!("mvtec-{class}"),
        }
    }

    /// Load a labelled dataset (both splits).
    fn load(&self) -> Result<Splits> {
        match self {
            Self::Labelled { name, dir } => match name.as_str() {
                "fmnist" => labelled::fashion_mnist(dir),
                "cifar10" => labelled::cifar10(dir),
                "cifar100" => labelled::cifar100(dir),
                other => unreachable!("parse accepts no dataset `{other}`"),
            },
            Self::Mvtec { .. } => unreachable!("mvtec is read as folders"),
        }
    }
}

/// A normal class of the grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanClass {
    pub index: usize,
    pub name: String,
}

/// The resolved grid, saved as OUT/plan.json.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Plan {
    pub dataset: DatasetSpec,
    pub classes: Vec<PlanClass>,
    pub losses: Vec<LossKind>,
    pub seeds: u64,
    pub train_subset: Option<usize>,
    pub test_subset: Option<usize>,
    pub profile: String,
    /// Flags every cell's `fit` gets (besides data, loss, seed and output).
    pub fit_flags: Vec<String>,
    #[serde(skip)]
    pub out: PathBuf,
    #[serde(skip)]
    splits: OnceLock<Splits>,
}

impl PartialEq for Plan {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.dataset,
            &self.classes,
            &self.losses,
            self.seeds,
            self.train_subset,
            self.test_subset,
            &self.profile,
            &self.fit_flags,
        ) == (
            &o.dataset,
            &o.classes,
            &o.losses,
            o.seeds,
            o.train_subset,
            o.test_subset,
            &o.profile,
            &o.fit_flags,
        )
    }
}

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub class_index: usize,
    pub class_name: String,
    pub loss: LossKind,
    pub seed: u64,
}

/// `v` without repeats, in the order first given (`--losses firm,ntxent,firm` is two cells).
fn first_occurrences<T: PartialEq + Clone>(v: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in v {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

#[derive(Parser)]
#[command(no_binary_name = true)]
struct FitWrap {
    #[command(flatten)]
    fit: FitArgs,
}

const PLAN: &str = "plan.json";

impl Plan {
    pub fn resolve(args: &BenchArgs, cwd: &Path) -> Result<Plan> {
        let dataset = DatasetSpec::parse(&args.dataset, cwd)?;
        if args.seeds == 0 {
            return Err(Error::invalid("--seeds", "must be at least 1"));
        }
        if args.losses.is_empty() {
            return Err(Error::invalid("--losses", "name at least one loss"));
        }
        let losses = first_occurrences(&args.losses);
        let splits = OnceLock::new();
        let classes = match &dataset {
            DatasetSpec::Mvtec { class, .. } => {
                for (flag, given) in [
                    ("--classes", !args.classes.is_empty()),
                    ("--train-subset", args.train_subset.is_some()),
                    ("--test-subset", args.test_subset.is_some()),
                ] {
                    if given {
                        return Err(Error::invalid(
                            flag,
                            "applies to labelled datasets (fmnist, cifar10, cifar100); an MVTec \
                             class is trained on all its good images and tested on its test set",
                        ));
                    }
                }
                vec![PlanClass {
                    index: 0,
                    name: class.clone(),
                }]
            }
            DatasetSpec::Labelled { .. } => {
                let s = dataset.load()?;
                let names = s.train.class_names.clone();
                let idx: Vec<usize> = if args.classes.is_empty() {
                    (0..names.len()).collect()
                } else {
                    first_occurrences(&args.classes)
                };
                let mut classes = Vec::new();
                for i in idx {
                    let name = names.get(i).ok_or_else(|| {
                        Error::invalid(
                            "--classes",
                            format!(
                                "{i} is not a class of {}; it has {} (0..{}): {}",
                                dataset.name(),
                                names.len(),
                                names.len() - 1,
                                names.join(", ")
                            ),
                        )
                    })?;
                    classes.push(PlanClass {
                        index: i,
                        name: name.clone(),
                    });
                }
                let _ = splits.set(s);
                classes
            }
        };
        let mut fit_flags = vec!["--profile".to_string(), args.profile.clone()];
        let forwarded: [(&str, Option<String>); 12] = [
            ("--outliers", args.outliers.clone()),
            ("--epochs", args.epochs.map(|e| e.to_string())),
            ("--max-minutes", args.max_minutes.map(|m| m.to_string())),
            (
                "--checkpoints",
                args.checkpoints
                    .or(args.epochs.filter(|&e| e <= 25))
                    .map(|c| c.max(1).to_string()),
            ),
            ("--width", args.width.clone()),
            ("--size", args.size.clone()),
            ("--stem", args.stem.clone()),
            ("--batch", args.batch.clone()),
            ("--lr", args.lr.clone()),
            ("--tau", args.tau.clone()),
            ("--augment", args.augment.clone()),
            ("--score", Some("cos_1".into())),
        ];
        for (flag, value) in forwarded {
            if let Some(v) = value {
                fit_flags.push(flag.into());
                fit_flags.push(v);
            }
        }
        let out = args.out.clone().unwrap_or_else(|| {
            let classes: Vec<String> = classes.iter().map(|c| c.index.to_string()).collect();
            let tag = match &dataset {
                DatasetSpec::Mvtec { .. } => String::new(),
                _ if args.classes.is_empty() => "-all".into(),
                _ => format!("-{}", classes.join("_")),
            };
            cwd.join("runs")
                .join(format!("bench-{}{tag}", dataset.name()))
        });
        let plan = Plan {
            dataset,
            classes,
            losses,
            seeds: args.seeds,
            train_subset: args.train_subset,
            test_subset: args.test_subset,
            profile: args.profile.clone(),
            fit_flags,
            out,
            splits,
        };
        // Validate the forwarded flags and the profile now, not at the first cell.
        let probe = plan.fit_args(&plan.cells()[0], Path::new("/nonexistent"))?;
        crate::config::resolve(&probe, cwd)?;
        Ok(plan)
    }

    /// Every cell, seed-major (a whole seed of the grid is done before the next starts, so a
    /// partial table already compares every loss).
    pub fn cells(&self) -> Vec<Cell> {
        let mut v = Vec::new();
        for seed in 0..self.seeds {
            for c in &self.classes {
                for &loss in &self.losses {
                    v.push(Cell {
                        class_index: c.index,
                        class_name: c.name.clone(),
                        loss,
                        seed,
                    });
                }
            }
        }
        v
    }

    pub fn cell_dir(&self, c: &Cell) -> PathBuf {
        self.out
            .join("cells")
            .join(&c.class_name)
            .join(c.loss.to_string())
            .join(format!("seed-{}", c.seed))
    }

    /// Data root and class folder of a cell; a labelled set's one-class split is written on
    /// first use.
    pub fn data_for(&self, c: &Cell) -> Result<(PathBuf, String)> {
        match &self.dataset {
            DatasetSpec::Mvtec { root, class } => Ok((root.clone(), class.clone())),
            DatasetSpec::Labelled { .. } => {
                let splits = match self.splits.get() {
                    Some(s) => s,
                    None => {
                        let s = self.dataset.load()?;
                        self.splits.get_or_init(|| s)
                    }
                };
                let root = self.out.join("data").join(format!("seed-{}", c.seed));
                let spec = crate::data::oneclass::OneClassSpec {
                    class: c.class_index,
                    train_subset: self.train_subset,
                    test_subset: self.test_subset,
                    seed: c.seed,
                };
                let name = crate::data::oneclass::materialize(splits, &spec, &root)?;
                Ok((root, name))
            }
        }
    }

    /// `fit` flags of a fresh cell whose data lives at `root/<class>`.
    pub fn fit_args(&self, c: &Cell, root: &Path) -> Result<FitArgs> {
        let mut argv: Vec<String> = vec![
            "--data".into(),
            root.display().to_string(),
            "--class".into(),
            c.class_name.clone(),
            "--out".into(),
            self.cell_dir(c).display().to_string(),
            "--seed".into(),
            c.seed.to_string(),
            "--loss".into(),
            c.loss.to_string(),
        ];
        argv.extend(self.fit_flags.iter().cloned());
        let mut fit = FitWrap::try_parse_from(&argv)
            .map_err(|e| Error::invalid("bench flags", e.to_string().trim().to_string()))?
            .fit;
        if matches!(self.dataset, DatasetSpec::Labelled { .. }) {
            fit.builtin_config = Some("bench/semantic".into());
        }
        Ok(fit)
    }

    /// `fit --resume` flags of a started cell.
    pub fn resume_args(&self, c: &Cell) -> FitArgs {
        let dir = self.cell_dir(c).display().to_string();
        FitWrap::try_parse_from(["--resume", dir.as_str()])
            .expect("--resume parses")
            .fit
    }

    /// Write OUT/plan.json, or check that the one there describes the same grid.
    pub fn save_or_check(&self) -> Result<()> {
        let p = self.out.join(PLAN);
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                let old: Plan = serde_json::from_str(&text)
                    .map_err(|e| Error::invalid("bench plan", format!("{}: {e}", p.display())))?;
                if old != *self {
                    let was = serde_json::to_value(&old).expect("plan serialises");
                    let now = serde_json::to_value(self).expect("plan serialises");
                    let diff: Vec<String> = now
                        .as_object()
                        .expect("object")
                        .iter()
                        .filter(|(k, v)| was.get(k.as_str()) != Some(v))
                        .map(|(k, v)| format!("{k}: was {}, now {v}", was[k.as_str()]))
                        .collect();
                    return Err(Error::invalid(
                        "--out",
                        format!(
                            "{} holds another grid ({}); rerun with its settings to continue it, \
                             or pick another --out",
                            self.out.display(),
                            diff.join("; ")
                        ),
                    ));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.out).map_err(Error::io("create", &self.out))?;
                firm_shared::fsutil::write_atomic(
                    &p,
                    &serde_json::to_vec_pretty(self).expect("plan serialises"),
                )?;
                Ok(())
            }
            Err(e) => Err(Error::io("read", &p)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_classes_and_losses_count_once_in_order() {
        assert_eq!(first_occurrences(&[2, 0, 2, 6, 0]), vec![2, 0, 6]);
        assert_eq!(
            first_occurrences(&[LossKind::Firm, LossKind::SupCon, LossKind::Firm]),
            vec![LossKind::Firm, LossKind::SupCon]
        );
    }

    #[test]
    fn dataset_specs_resolve_relative_paths_and_split_mvtec_root_and_class() {
        let cwd = Path::new("/work");
        assert_eq!(
            DatasetSpec::parse("fmnist", cwd).unwrap(),
            DatasetSpec::Labelled {
                name: "fmnist".into(),
                dir: labelled::FASHION_MNIST_DIR.into()
            }
        );
        assert_eq!(
            DatasetSpec::parse("cifar100:data/c100", cwd).unwrap(),
            DatasetSpec::Labelled {
                name: "cifar100".into(),
                dir: "/work/data/c100".into()
            }
        );
        let m = DatasetSpec::parse("mvtec:/d/mvtec/bottle/", cwd).unwrap();
        assert_eq!(
            m,
            DatasetSpec::Mvtec {
                root: "/d/mvtec".into(),
                class: "bottle".into()
            }
        );
        assert_eq!(m.name(), "mvtec-bottle");
        for bad in ["cifar10", "cifar10:", "mvtec:", "svhn:/x", ""] {
            let e = DatasetSpec::parse(bad, cwd).unwrap_err().to_string();
            assert!(e.contains("mvtec:ROOT/CLASS"), "{bad}: {e}");
        }
    }
}

//! Where the images come from, as the command line says it (`--data/--class`, `--good ...`,
//! `--demo`), validated into a [`DataSource`] and opened as a [`Dataset`].

use std::path::{Path, PathBuf};

use tracing::info;

use super::dataset::Dataset;
use super::folder::{self, FolderSpec};
use super::mvtec;
use super::synth::{self, SynthClass, SynthSpec};
use crate::error::{Error, Result};

/// Where `--data` is looked for when absent.
pub const DEFAULT_MVTEC_ROOT: &str = "data/mvtec";
/// Where `--demo` writes its generated dataset.
pub const DEMO_ROOT: &str = "data/demo";

/// Dataset options shared by every command that reads images.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataArgs {
    /// MVTec-AD style root: ROOT/CLASS/train/good, ROOT/CLASS/test/<type>,
    /// ROOT/CLASS/ground_truth/<type>. Default: ./data/mvtec when it exists.
    #[arg(long, value_name = "ROOT", conflicts_with_all = ["good", "demo"])]
    pub data: Option<PathBuf>,
    /// Product class: a folder under ROOT (with --data or --demo).
    #[arg(long = "class", value_name = "NAME")]
    pub class: Option<String>,
    /// Plain folder of good images to train on (anomalib's Folder convention).
    #[arg(long, value_name = "DIR", conflicts_with = "demo")]
    pub good: Option<PathBuf>,
    /// Plain folder of good test images (with --good). Without it, --holdout of the good images
    /// are kept aside for evaluation and threshold calibration.
    #[arg(long, value_name = "DIR", requires = "good")]
    pub test_good: Option<PathBuf>,
    /// Plain folder of defective test images, one per defect type (repeatable; with --good).
    #[arg(long, value_name = "DIR", requires = "good")]
    pub test_bad: Vec<PathBuf>,
    /// Share of --good images held out when --test-good is not given.
    #[arg(long, default_value_t = 0.2, value_name = "FRACTION")]
    pub holdout: f64,
    /// Use generated data (written once to ./data/demo): `--class` picks bottle, weave or grid.
    #[arg(long)]
    pub demo: bool,
    /// Stop at the first corrupt or unsupported image instead of skipping a few with a warning.
    #[arg(long)]
    pub strict: bool,
}

/// A validated dataset choice (saved in run configs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum DataSource {
    Mvtec {
        root: PathBuf,
        class: String,
    },
    Folder(FolderSpec),
    /// Generated data; the demo dataset is fixed (seed 0) whatever the training seed.
    Demo {
        class: String,
    },
}

impl DataArgs {
    /// Validate the flags. `cwd` is where relative defaults (./data/mvtec) are looked for;
    /// `seed` picks the held-out share of a plain folder.
    pub fn resolve(&self, cwd: &Path, seed: u64) -> Result<DataSource> {
        if self.demo {
            let class = self.class.clone().unwrap_or_else(|| "bottle".into());
            if SynthClass::from_name(&class).is_none() {
                return Err(Error::invalid(
                    "--class",
                    format!(
                        "`{class}` is not a demo class; expected one of {}",
                        demo_classes()
                    ),
                ));
            }
            return Ok(DataSource::Demo { class });
        }
        if let Some(good) = &self.good {
            if self.class.is_some() {
                return Err(Error::invalid(
                    "--class",
                    "applies to --data and --demo; a plain --good folder is one class",
                ));
            }
            if let Some(tg) = self
                .test_good
                .as_ref()
                .filter(|tg| folder::same_dir(tg, good))
            {
                return Err(Error::invalid(
                    "--test-good",
                    format!(
                        "{} is the training folder; evaluating on training images would \
                         overstate every metric",
                        tg.display()
                    ),
                ));
            }
            return Ok(DataSource::Folder(FolderSpec {
                good: good.clone(),
                test_good: self.test_good.clone(),
                test_bad: self.test_bad.clone(),
                holdout: self.holdout,
                seed,
            }));
        }
        let root = match &self.data {
            Some(r) => r.clone(),
            None => {
                let looked = cwd.join(DEFAULT_MVTEC_ROOT);
                if !looked.is_dir() {
                    return Err(Error::NoDefaultData { looked });
                }
                looked
            }
        };
        let class = self.class.clone().ok_or_else(|| {
            Error::invalid(
                "--class",
                format!(
                    "missing: which product class under {} (for example --class bottle)?",
                    root.display()
                ),
            )
        })?;
        Ok(DataSource::Mvtec { root, class })
    }
}

fn demo_classes() -> String {
    SynthClass::ALL
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl DataSource {
    /// Resolve to files; `--demo` first writes (or reuses) the generated dataset under `cwd`.
    pub fn open(&self, cwd: &Path) -> Result<Dataset> {
        match self {
            DataSource::Mvtec { root, class } => mvtec::open(root, class),
            DataSource::Folder(spec) => folder::open(spec),
            DataSource::Demo { class } => {
                let root = cwd.join(DEMO_ROOT);
                ensure_demo(&root, class, 0)?;
                let mut ds = mvtec::open(&root, class)?;
                ds.origin = format!("generated demo data at {}", root.join(class).display());
                Ok(ds)
            }
        }
    }
}

/// Write the demo class once; a marker file records the spec so a changed generator or seed
/// regenerates it.
fn ensure_demo(root: &Path, class: &str, seed: u64) -> Result<()> {
    let cls = SynthClass::from_name(class).ok_or_else(|| {
        Error::invalid(
            "--class",
            format!("`{class}`; expected one of {}", demo_classes()),
        )
    })?;
    let spec = SynthSpec {
        classes: vec![cls],
        seed,
        ..SynthSpec::default()
    };
    let marker = root.join(class).join(".synth-complete");
    let stamp = format!("generator {} {spec:?}", synth::GENERATOR_VERSION);
    if std::fs::read_to_string(&marker).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    info!(
        "writing generated demo data for `{class}` to {}",
        root.display()
    );
    synth::write_dataset(root, &spec).map_err(Error::io("write demo data to", root))?;
    std::fs::write(&marker, stamp).map_err(Error::io("write", &marker))?;
    Ok(())
}

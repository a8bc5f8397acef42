//! `host-trainer synth`: write a generated MVTec-layout dataset (see [`crate::data::synth`]).

use std::path::PathBuf;

use crate::data::synth::{self, SynthClass, SynthSpec};
use crate::error::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    /// Output root: OUT/<class>/train/good, OUT/<class>/test/<type>, OUT/<class>/ground_truth/<type>.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Classes to generate (comma-separated): bottle, weave, grid. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Seed of the generated parts and defects: the same seed writes the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Good training images per class.
    #[arg(long, default_value_t = 60)]
    pub train: usize,
    /// Good test images per class.
    #[arg(long, default_value_t = 40)]
    pub test_good: usize,
    /// Test images per defect type.
    #[arg(long, default_value_t = 12)]
    pub test_per_defect: usize,
}

pub fn run(a: &SynthArgs) -> Result<()> {
    let classes = if a.classes.is_empty() {
        SynthClass::ALL.to_vec()
    } else {
        a.classes
            .iter()
            .map(|c| {
                SynthClass::from_name(c).ok_or_else(|| {
                    let all: Vec<&str> = SynthClass::ALL.iter().map(|c| c.name()).collect();
                    Error::invalid(
                        "--classes",
                        format!("unknown class `{c}`; expected {}", all.join(", ")),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    if a.size < 32 || a.train < 2 {
        return Err(Error::invalid(
            "synth",
            "needs --size >= 32 and --train >= 2",
        ));
    }
    let spec = SynthSpec {
        classes,
        seed: a.seed,
        size: a.size,
        n_train: a.train,
        n_test_good: a.test_good,
        n_test_per_defect: a.test_per_defect,
    };
    let summary = synth::write_dataset(&a.out, &spec).map_err(Error::io("write", &a.out))?;
    for (class, train, test) in &summary.per_class {
        println!("{class}: {train} training images, {test} test images");
    }
    println!(
        "wrote {} images and {} masks to {}",
        summary.images,
        summary.masks,
        a.out.display()
    );
    Ok(())
}

//! Synthetic outliers: images made from good ones that the model must learn to push away, and
//! the `--outliers` setting that picks them.
//!
//! | `--outliers`       | layout (see [`crate::batch`])        | labels                      |
//! |--------------------|--------------------------------------|-----------------------------|
//! | `cutpaste,scar`    | groups [ID, CutPaste, Scar] (MVTec)  | 0, 1, 2                     |
//! | `cutpaste` / `scar` / `nsa` | groups [ID, outlier]        | 0, 1                        |
//! | `rotation`         | pool of every image x 4 rotations    | 0, 1 (90), 2 (180), 3 (270) |
//! | `oe:DIR`           | groups [ID, OE image]                | 0, 1                        |
//! | `...,oe:DIR`       | the layout above, every outlier slot replaced by an OE image   |

pub mod cutpaste;
pub mod nsa;
pub mod oe;
pub mod poisson;
pub mod rotate;
pub mod scar;

use std::path::PathBuf;
use std::str::FromStr;

use image::RgbImage;
use rand::Rng;

use crate::error::Error;

/// A way to make an outlier from a good image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generator {
    CutPaste,
    Scar,
    Nsa,
    /// Rotations by 90/180/270 degrees (semantic one-class data).
    Rotation,
}

impl Generator {
    pub fn name(self) -> &'static str {
        match self {
            Generator::CutPaste => "cutpaste",
            Generator::Scar => "scar",
            Generator::Nsa => "nsa",
            Generator::Rotation => "rotation",
        }
    }

    /// Make one outlier from `img`, an image that the trainer will show at `model_side` pixels
    /// (for [`Generator::Rotation`] the batch layout picks the turn; this draws one).
    pub fn make(self, img: &RgbImage, model_side: u32, rng: &mut impl Rng) -> RgbImage {
        match self {
            Generator::CutPaste => cutpaste::cutpaste(img, rng),
            Generator::Scar => {
                let factor = img.width().min(img.height()) as f32 / model_side.max(1) as f32;
                scar::scar(img, &scar::ScarConfig::scaled(factor), rng).image
            }
            Generator::Nsa => nsa::nsa(img, &nsa::NsaConfig::default(), rng).image,
            Generator::Rotation => rotate::rotate(img, rng.random_range(1..=3)),
        }
    }
}

/// The parsed `--outliers` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSpec {
    /// Generators in label order: the k-th has label k + 1.
    pub generators: Vec<Generator>,
    /// Outlier-exposure folder: replaces every outlier slot (or, alone, is the only outlier).
    pub oe: Option<PathBuf>,
}

impl OutlierSpec {
    /// The reference's MVTec default: CutPaste and scar, 3-way groups.
    pub fn mvtec_default() -> Self {
        Self {
            generators: vec![Generator::CutPaste, Generator::Scar],
            oe: None,
        }
    }

    pub fn is_rotation(&self) -> bool {
        self.generators == [Generator::Rotation]
    }

    /// Outlier kinds per good image in group layouts (1 when only OE).
    pub fn outliers_per_group(&self) -> usize {
        self.generators.len().max(1)
    }

    /// Human-readable names of the outlier slots, by label (1-based).
    pub fn slot_names(&self) -> Vec<String> {
        if self.is_rotation() {
            return ["rot90", "rot180", "rot270"].map(String::from).to_vec();
        }
        if self.generators.is_empty() {
            return vec!["oe".into()];
        }
        self.generators
            .iter()
            .map(|g| match &self.oe {
                Some(_) => format!("oe ({} slot)", g.name()),
                None => g.name().to_string(),
            })
            .collect()
    }
}

impl std::fmt::Display for OutlierSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.generators.iter().map(|g| g.name().into()).collect();
        if let Some(d) = &self.oe {
            parts.push(format!("oe:{}", d.display()));
        }
        write!(f, "{}", parts.join(","))
    }
}

impl FromStr for OutlierSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::invalid("--outliers", reason);
        let mut generators = Vec::new();
        let mut oe = None;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g = match part {
                "cutpaste" => Generator::CutPaste,
                "scar" => Generator::Scar,
                "nsa" => Generator::Nsa,
                "rotation" => Generator::Rotation,
                p if p.starts_with("oe:") => {
                    let dir = &p[3..];
                    if dir.is_empty() || oe.is_some() {
                        return Err(bad(format!("`{p}`: give exactly one folder, as oe:DIR")));
                    }
                    oe = Some(PathBuf::from(dir));
                    continue;
                }
                other => {
                    return Err(bad(format!(
                        "unknown outlier `{other}`; expected cutpaste, scar, nsa, rotation or oe:DIR \
                         (comma-separated, e.g. cutpaste,scar)"
                    )));
                }
            };
            if generators.contains(&g) {
                return Err(bad(format!("`{}` is listed twice", g.name())));
            }
            generators.push(g);
        }
        if generators.contains(&Generator::Rotation) && generators.len() > 1 {
            return Err(bad(
                "rotation uses its own batch layout and cannot be combined with cutpaste, scar or nsa"
                    .into(),
            ));
        }
        if generators.is_empty() && oe.is_none() {
            return Err(bad("no outliers given".into()));
        }
        Ok(Self { generators, oe })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_values() {
        let s: OutlierSpec = "cutpaste,scar".parse().unwrap();
        assert_eq!(s, OutlierSpec::mvtec_default());
        assert_eq!(s.slot_names(), ["cutpaste", "scar"]);
        assert!("rotation".parse::<OutlierSpec>().unwrap().is_rotation());
        let s: OutlierSpec = "oe:/data/imagenet".parse().unwrap();
        assert_eq!(s.oe, Some(PathBuf::from("/data/imagenet")));
        assert_eq!(s.outliers_per_group(), 1);
        let s: OutlierSpec = "rotation,oe:x".parse().unwrap();
        assert!(s.is_rotation() && s.oe.is_some());
        assert_eq!(s.to_string(), "rotation,oe:x");
    }

    #[test]
    fn rejects_with_reasons() {
        for (v, why) in [
            ("cutpaste,blur", "unknown outlier `blur`"),
            ("rotation,scar", "cannot be combined"),
            ("scar,scar", "listed twice"),
            ("oe:", "exactly one folder"),
            ("", "no outliers"),
        ] {
            let e = v.parse::<OutlierSpec>().unwrap_err().to_string();
            assert!(e.contains(why), "{v}: {e}");
        }
    }
}

//! Where a bundle came from: a content hash of the dataset and the trainer's source revision.

use std::path::{Path, PathBuf};

use firm_shared::bundle::sha256_hex;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// The trainer's source revision (from build.rs), `-dirty` when built from modified files.
pub const GIT_REVISION: &str = env!("FIRM_GIT_REVISION");

/// Longest common folder of `paths`.
fn common_root(paths: &[PathBuf]) -> PathBuf {
    let mut root: Option<PathBuf> = None;
    for p in paths {
        let parent = p.parent().unwrap_or(Path::new(""));
        root = Some(match root {
            None => parent.to_path_buf(),
            Some(r) => r
                .components()
                .zip(parent.components())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    root.unwrap_or_default()
}

/// SHA-256 over the sorted lines `relative/path<TAB>sha256-of-file`, paths relative to the
/// files' common folder: the same files give the same hash wherever the dataset lives; a changed,
/// added, removed or renamed image changes it. Also returns each path relative to that folder.
pub fn dataset_hash(paths: &[PathBuf]) -> Result<(String, Vec<String>)> {
    let root = common_root(paths);
    let rel: Vec<String> = paths
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let hashes: Vec<String> = paths
        .par_iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| sha256_hex(&b))
                .map_err(Error::io("read", p))
        })
        .collect::<Result<_>>()?;
    let mut lines: Vec<String> = rel
        .iter()
        .zip(&hashes)
        .map(|(r, h)| format!("{r}\t{h}\n"))
        .collect();
    lines.sort();
    Ok((sha256_hex(lines.concat().as_bytes()), rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_follows_content_and_names_not_location() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("x/train")).unwrap();
            std::fs::write(d.join("x/train/1.png"), b"one").unwrap();
            std::fs::write(d.join("x/train/2.png"), b"two").unwrap();
        }
        let files = |d: &Path| vec![d.join("x/train/2.png"), d.join("x/train/1.png")];
        let (ha, rel) = dataset_hash(&files(a.path())).unwrap();
        let (hb, _) = dataset_hash(&files(b.path())).unwrap();
        assert_eq!(ha, hb, "same files elsewhere, other order: same hash");
        assert_eq!(rel, ["2.png", "1.png"]);
        std::fs::write(b.path().join("x/train/2.png"), b"tw0").unwrap();
        assert_ne!(dataset_hash(&files(b.path())).unwrap().0, ha);
        let e = dataset_hash(&[a.path().join("missing.png")]).unwrap_err();
        assert!(e.to_string().contains("missing.png"), "{e}");
    }
}

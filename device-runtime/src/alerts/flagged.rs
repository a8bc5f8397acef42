//! Flagged frames saved as PNG within a disk budget: `FLAGGED/<time>-<seq>.png` with a JSON
//! sidecar (`.json`: the verdict). File names start with the capture time, so name order is age
//! order; when the folder exceeds its budget the oldest pairs are deleted first. Each file is
//! written atomically, so a power cut leaves no half image; the temporary file such a cut leaves
//! behind is deleted at the next start.

use std::path::{Path, PathBuf};

use firm_shared::fsutil::write_atomic;

use super::AlertSink;
use crate::capture::Frame;
use crate::state::AlertEntry;

#[derive(Debug)]
pub struct FlaggedFrames {
    dir: PathBuf,
    budget: u64,
    /// (name stem, bytes of the PNG and its sidecar), oldest first.
    files: std::collections::VecDeque<(String, u64)>,
    total: u64,
}

impl FlaggedFrames {
    pub fn open(dir: &Path, budget: u64) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut stems: std::collections::BTreeMap<String, u64> = Default::default();
        let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                // A write cut short by a crash or power loss (write_atomic's temporary file).
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Some(stem) = name
                .strip_suffix(".png")
                .or_else(|| name.strip_suffix(".json"))
            else {
                continue;
            };
            let len = e.metadata().map_or(0, |m| m.len());
            *stems.entry(stem.to_string()).or_default() += len;
        }
        let total = stems.values().sum();
        Ok(Self {
            dir: dir.to_path_buf(),
            budget,
            files: stems.into_iter().collect(),
            total,
        })
    }

    /// Bytes in use.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn evict(&mut self) {
        while self.total > self.budget {
            let Some((stem, len)) = self.files.pop_front() else {
                break;
            };
            for ext in ["png", "json"] {
                let _ = std::fs::remove_file(self.dir.join(format!("{stem}.{ext}")));
            }
            self.total -= len;
        }
    }
}

impl AlertSink for FlaggedFrames {
    fn name(&self) -> &'static str {
        "flagged-frames"
    }

    fn alert(&mut self, alert: &mut AlertEntry, frame: &Frame) -> Result<(), String> {
        // 2026-12-01T12:50:00.123Z -> 20261201T125000123Z
        let t: String = alert
            .verdict
            .time
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let stem = format!("{t}-{:08}", alert.verdict.seq);
        let mut png = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(frame.image.clone())
            .write_to(&mut png, image::ImageFormat::Png)
            .map_err(|e| format!("PNG encoding: {e}"))?;
        let png = png.into_inner();
        let json = serde_json::to_vec_pretty(&alert.verdict).expect("verdict serialises");
        write_atomic(&self.dir.join(format!("{stem}.png")), &png).map_err(|e| e.to_string())?;
        write_atomic(&self.dir.join(format!("{stem}.json")), &json).map_err(|e| e.to_string())?;
        let len = (png.len() + json.len()) as u64;
        self.files.push_back((stem.clone(), len));
        self.total += len;
        self.evict();
        alert.image = Some(format!("{stem}.png"));
        Ok(())
    }
}

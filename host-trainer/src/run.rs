//! The run folder: everything one training run produced, laid out so a crash or power cut at any
//! moment leaves it usable.
//!
//! ```text
//! RUN/config.json                      resolved settings (FitConfig)
//! RUN/metrics.jsonl                    one JSON object per line: steps, evaluations
//! RUN/checkpoints/<name>/model.safetensors      encoder (torchvision names) + head
//! RUN/checkpoints/<name>/optimizer.safetensors  SGD momentum buffers by parameter name
//! RUN/checkpoints/<name>/state.json             where training stands (epoch, batch, step)
//! RUN/checkpoints/latest                        name of the newest complete checkpoint
//! RUN/eval/                            report.md, report.json, plots, per-image scores
//! ```
//! A checkpoint is written into a temporary folder, fsynced and renamed into place; `latest` is
//! replaced atomically afterwards, so it always names a complete checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use firm_shared::fsutil::write_atomic;
use firm_shared::model::params::{self, Part};
use serde::{Deserialize, Serialize};

use crate::config::FitConfig;
use crate::error::{Error, Result};
use crate::optim::Sgd;

/// Where training stands at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrainState {
    /// Epoch of the next batch to train.
    pub epoch: usize,
    /// Index, within `epoch`, of the next batch to train.
    pub next_batch: usize,
    /// Optimiser steps taken so far.
    pub global_step: usize,
    /// Training wall time so far, seconds.
    pub elapsed_s: f64,
    /// Why it was written: "scheduled", "final" or "interrupted".
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

const CONFIG: &str = "config.json";
const METRICS: &str = "metrics.jsonl";
const LATEST: &str = "latest";

impl RunDir {
    /// Create a new run folder; refuses a folder that already holds a run.
    pub fn create(root: &Path) -> Result<Self> {
        if root.join(CONFIG).exists() {
            return Err(Error::invalid(
                "--out",
                format!(
                    "{} already holds a run; continue it with --resume {} or pick another folder",
                    root.display(),
                    root.display()
                ),
            ));
        }
        std::fs::create_dir_all(root.join("checkpoints")).map_err(Error::io("create", root))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Open an existing run folder.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join(CONFIG).is_file() {
            return Err(Error::NotFound {
                path: root.join(CONFIG),
                expected: "a run folder written by `host-trainer fit` (with config.json)".into(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn write_config(&self, cfg: &FitConfig) -> Result<()> {
        let json = serde_json::to_vec_pretty(cfg).expect("config serialises");
        write_atomic(&self.root.join(CONFIG), &json)?;
        Ok(())
    }

    pub fn read_config(&self) -> Result<FitConfig> {
        let p = self.root.join(CONFIG);
        let text = std::fs::read_to_string(&p).map_err(Error::io("read", &p))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::invalid("run config", format!("{}: {e}", p.display())))
    }

    /// Append one JSON object to metrics.jsonl (flushed; fsynced at checkpoints).
    pub fn append_metric(&self, value: &serde_json::Value) -> Result<()> {
        let p = self.root.join(METRICS);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(Error::io("open", &p))?;
        let mut line = serde_json::to_vec(value).expect("metric serialises");
        line.push(b'\n');
        f.write_all(&line).map_err(Error::io("write", &p))?;
        Ok(())
    }

    /// Every metric line, in order (lines that do not parse, e.g. one cut by a power loss, are
    /// skipped).
    pub fn metrics(&self) -> Result<Vec<serde_json::Value>> {
        let p = self.root.join(METRICS);
        match std::fs::read_to_string(&p) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io("read", &p)(e)),
        }
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.root.join("eval")
    }

    fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Write a complete checkpoint atomically and point `latest` at it.
    pub fn save_checkpoint(
        &self,
        name: &str,
        varmap: &VarMap,
        opt: &Sgd,
        state: &TrainState,
    ) -> Result<PathBuf> {
        let dir = self.checkpoints_dir();
        let final_dir = dir.join(name);
        let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(Error::io("create", &tmp))?;
        write_atomic(
            &tmp.join("model.safetensors"),
            &params::to_safetensors(varmap, Part::All)?,
        )?;
        let buffers: Vec<(&String, &Tensor)> = {
            let mut v: Vec<_> = opt.buffers().iter().collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            v
        };
        let opt_bytes = safetensors::serialize(buffers, None)
            .map_err(|e| Error::invalid("optimizer state", format!("cannot serialise: {e}")))?;
        write_atomic(&tmp.join("optimizer.safetensors"), &opt_bytes)?;
        write_atomic(
            &tmp.join("state.json"),
            &serde_json::to_vec_pretty(state).expect("state serialises"),
        )?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(Error::io("replace", &final_dir))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(Error::io("rename into place", &final_dir))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        write_atomic(&dir.join(LATEST), name.as_bytes())?;
        Ok(final_dir)
    }

    /// Name of the newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<String>> {
        let p = self.checkpoints_dir().join(LATEST);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &p)(e)),
        }
    }

    /// `name` when given, else the newest complete checkpoint (an error when there is none).
    pub fn checkpoint_or_latest(&self, name: Option<&str>) -> Result<String> {
        match name {
            Some(c) => Ok(c.to_string()),
            None => self.latest()?.ok_or_else(|| {
                Error::invalid(
                    "--run",
                    format!("{} has no checkpoint yet", self.root.display()),
                )
            }),
        }
    }

    pub fn read_state(&self, name: &str) -> Result<TrainState> {
        let p = self.checkpoints_dir().join(name).join("state.json");
        let text = std::fs::read_to_string(&p).map_err(Error::io("read", &p))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::invalid("checkpoint", format!("{}: {e}", p.display())))
    }

    /// Checkpoint weights file.
    pub fn weights(&self, name: &str) -> PathBuf {
        self.checkpoints_dir().join(name).join("model.safetensors")
    }

    /// Load weights (and, with `opt`, the momentum buffers) of checkpoint `name`.
    pub fn load_checkpoint(
        &self,
        name: &str,
        varmap: &VarMap,
        opt: Option<&mut Sgd>,
    ) -> Result<TrainState> {
        params::load(varmap, &self.weights(name), Part::All)?;
        if let Some(opt) = opt {
            // The momentum buffers go where the parameters are.
            let device = varmap
                .all_vars()
                .first()
                .map_or(Device::Cpu, |v| v.device().clone());
            let p = self
                .checkpoints_dir()
                .join(name)
                .join("optimizer.safetensors");
            let bytes = std::fs::read(&p).map_err(Error::io("read", &p))?;
            let buffers: HashMap<String, Tensor> =
                candle_core::safetensors::load_buffer(&bytes, &device).map_err(|e| {
                    Error::invalid("optimizer state", format!("{}: {e}", p.display()))
                })?;
            opt.set_buffers(buffers);
        }
        self.read_state(name)
    }

    /// Delete every checkpoint but `keep` (scheduled and interrupted ones alike).
    pub fn remove_checkpoints_except(&self, keep: &str) -> Result<()> {
        let dir = self.checkpoints_dir();
        for entry in std::fs::read_dir(&dir).map_err(Error::io("list", &dir))? {
            let entry = entry.map_err(Error::io("list", &dir))?;
            if entry.file_name() != keep && entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path()).map_err(Error::io("remove", entry.path()))?;
            }
        }
        Ok(())
    }

    /// Scheduled and final checkpoints in training order (interrupted ones excluded).
    pub fn scheduled_checkpoints(&self) -> Result<Vec<(String, TrainState)>> {
        let dir = self.checkpoints_dir();
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list", &dir)(e)),
        };
        for entry in rd {
            let entry = entry.map_err(Error::io("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            if let Ok(state) = self.read_state(&name)
                && state.reason != "interrupted"
            {
                out.push((name, state));
            }
        }
        out.sort_by_key(|(_, s)| s.global_step);
        Ok(out)
    }
}

/// Default run folder: runs/<name>-<UTC timestamp>.
pub fn default_run_dir(cwd: &Path, name: &str) -> PathBuf {
    let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // 2026-11-28T17:20:00Z -> 20261128-172000
    let compact: String = ts
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .map(|c| if c == 'T' { '-' } else { c })
        .collect();
    cwd.join("runs").join(format!("{name}-{compact}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_folder_name_is_compact_utc() {
        let p = default_run_dir(Path::new("/x"), "bottle");
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("bottle-20"), "{name}");
        assert_eq!(name.len(), "bottle-".len() + 15, "{name}");
        assert_eq!(p.parent().unwrap(), Path::new("/x/runs"));
    }
}

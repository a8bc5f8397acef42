//! "This part is good" (issue 17, item 2): frames an operator marked good on the device, scored
//! beside the bundle's banks ([`Detector::set_overlay`]) without retraining and without moving
//! the calibrated threshold.
//!
//! - A mark takes the alert's saved frame, scores it once more and keeps its views (the image
//!   embeddings of every angle of the score's ensemble) and, for bundles that score patches,
//!   the patches whose distance is above the bundle's `patch.low` (the median good image's
//!   patch score): afterwards the frame looks no less normal than a typical good part, and so
//!   do near copies of it. A different defect still fails: nothing else about the detector
//!   changes.
//! - The overlay is one file per bundle, `STATE/overlay/<bundle sha256>.overlay` (a safetensors
//!   file: `views`, `patch`, and a JSON header in its metadata with the bundle's hash, the
//!   entries and the SHA-256 of both tensors), written atomically with fsync, beside copies of
//!   the marked frames (`frames/<bundle sha256 prefix>-<entry>.png`). A newly flashed bundle
//!   starts without one; `flash --carry-overlay` (or `POST /api/bundle?carry-overlay=true`)
//!   asks for the marked frames to be marked again with the new bundle when it starts.
//! - A file that is not this bundle's (another hash in its header, other dimensions, tensors
//!   that do not match their hashes, unreadable) is refused: moved aside as
//!   `<name>.refused-<unix time>`, journaled, shown on the page; the bundle runs without it.
//! - Every mark, undo, carry and refusal is a journal record (`"type": "overlay"`) in the hash
//!   chain, with the alert, its distance and the time.
//! - At most `overlay.max-entries` entries and `overlay.max-patch-rows` patch rows (each row
//!   adds its share to the patch scoring time); past that a mark is refused, with the advice to
//!   retrain on the exported frames (`device-runtime overlay export`).
//!
//! The web handlers hand requests to the inference thread ([`Desk`]), which owns the detector:
//! a mark is in force from the frame after it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use firm_shared::bundle::sha256_hex;
use firm_shared::detect::{Detector, Embedder};
use firm_shared::fsutil::write_atomic;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::{Shared, timestamp};

/// The file format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Entries unless `overlay.max-entries` says otherwise.
pub const DEFAULT_MAX_ENTRIES: usize = 64;
/// Patch rows unless `overlay.max-patch-rows` says otherwise (each costs one bank row in every
/// frame's patch scoring).
pub const DEFAULT_MAX_PATCH_ROWS: usize = 1024;
/// The suffix of overlay files.
pub const SUFFIX: &str = ".overlay";

/// `[overlay]` in the device config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// Frames that can be marked good per bundle.
    pub max_entries: usize,
    /// Patch rows all marked frames may add together.
    pub max_patch_rows: usize,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_patch_rows: DEFAULT_MAX_PATCH_ROWS,
        }
    }
}

/// A frame marked good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    pub id: u64,
    /// The alert's journal seq.
    pub alert: u64,
    /// The frame's seq and source, and when it was captured.
    pub frame: u64,
    pub source: String,
    pub captured: String,
    pub marked_at: String,
    /// The alert's distance (what the threshold compared), and the patch score when there was
    /// one.
    pub distance: f64,
    pub patch_score: Option<f64>,
    /// The frame's copy under `STATE/overlay/frames/`.
    pub image: String,
    pub patch_rows: usize,
    /// The bundle (sha256) it was first marked under, when carried over from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Header {
    format: u32,
    bundle_sha256: String,
    dim: usize,
    angles: usize,
    patch_dim: usize,
    next_id: u64,
    entries: Vec<Entry>,
    views_sha256: String,
    patch_sha256: String,
}

/// The shape of the features a bundle's overlay holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Image feature dimension.
    pub dim: usize,
    /// Views per image (the score's ensemble).
    pub angles: usize,
    /// Patch feature dimension (0 without patch scoring).
    pub patch_dim: usize,
}

/// One bundle's overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlay {
    pub bundle: String,
    pub dims: Dims,
    pub next_id: u64,
    pub entries: Vec<Entry>,
    /// `entries x angles x dim`.
    views: Vec<f32>,
    /// The entries' patch rows in entry order, `rows x patch_dim`.
    patch: Vec<f32>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Overlay {
    pub fn empty(bundle: &str, dims: Dims) -> Self {
        Self {
            bundle: bundle.to_string(),
            dims,
            next_id: 1,
            entries: Vec::new(),
            views: Vec::new(),
            patch: Vec::new(),
        }
    }

    /// `DIR/<bundle sha256>.overlay`.
    pub fn path(dir: &Path, bundle: &str) -> PathBuf {
        dir.join(format!("{bundle}{SUFFIX}"))
    }

    pub fn views(&self) -> &[f32] {
        &self.views
    }

    pub fn patch(&self) -> &[f32] {
        &self.patch
    }

    pub fn patch_rows(&self) -> usize {
        self.patch.len() / self.dims.patch_dim.max(1)
    }

    /// Add an entry (its `id` is set here) with its views and patch rows.
    pub fn push(&mut self, mut e: Entry, views: &[f32], patch: &[f32]) -> Entry {
        let d = self.dims;
        assert_eq!(views.len(), d.dim * d.angles, "one entry's views");
        e.id = self.next_id;
        e.patch_rows = patch.len() / d.patch_dim.max(1);
        self.next_id += 1;
        self.views.extend_from_slice(views);
        self.patch.extend_from_slice(patch);
        self.entries.push(e.clone());
        e
    }

    /// Remove entry `id` with its rows.
    pub fn remove(&mut self, id: u64) -> Option<Entry> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        let d = self.dims;
        let per = d.dim * d.angles;
        self.views.drain(i * per..(i + 1) * per);
        let start: usize = self.entries[..i].iter().map(|e| e.patch_rows).sum();
        let rows = self.entries[i].patch_rows;
        self.patch
            .drain(start * d.patch_dim..(start + rows) * d.patch_dim);
        Some(self.entries.remove(i))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let (views, patch) = (f32_bytes(&self.views), f32_bytes(&self.patch));
        let d = self.dims;
        let header = Header {
            format: FORMAT,
            bundle_sha256: self.bundle.clone(),
            dim: d.dim,
            angles: d.angles,
            patch_dim: d.patch_dim,
            next_id: self.next_id,
            entries: self.entries.clone(),
            views_sha256: sha256_hex(&views),
            patch_sha256: sha256_hex(&patch),
        };
        let n = self.entries.len();
        let rows = self.patch_rows();
        let tensors = [
            (
                "views",
                TensorView::new(Dtype::F32, vec![n, d.angles * d.dim], &views).expect("shape"),
            ),
            (
                "patch",
                TensorView::new(Dtype::F32, vec![rows, d.patch_dim], &patch).expect("shape"),
            ),
        ];
        let meta = HashMap::from([(
            "overlay".to_string(),
            serde_json::to_string(&header).expect("header serialises"),
        )]);
        safetensors::tensor::serialize(tensors, Some(meta)).expect("overlay serialises")
    }

    /// Parse and check a file's bytes (its hashes and shapes; not whose it is).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let (_, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| format!("not an overlay file: {e}"))?;
        let header = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("overlay"))
            .ok_or("no overlay header")?;
        let h: Header = serde_json::from_str(header).map_err(|e| format!("overlay header: {e}"))?;
        if h.format != FORMAT {
            return Err(format!(
                "overlay format {}; this build reads {FORMAT}",
                h.format
            ));
        }
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| format!("not an overlay file: {e}"))?;
        let get = |name: &str, sha: &str, cols: usize| -> Result<Vec<f32>, String> {
            let t = st.tensor(name).map_err(|_| format!("no `{name}` tensor"))?;
            if t.dtype() != Dtype::F32 || t.shape().len() != 2 || t.shape()[1] != cols {
                return Err(format!(
                    "`{name}` is {:?} {:?}; expected f32 [n, {cols}]",
                    t.dtype(),
                    t.shape()
                ));
            }
            if sha256_hex(t.data()) != sha {
                return Err(format!("`{name}` does not match its SHA-256"));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let dims = Dims {
            dim: h.dim,
            angles: h.angles,
            patch_dim: h.patch_dim,
        };
        let views = get("views", &h.views_sha256, h.angles * h.dim)?;
        let patch = get("patch", &h.patch_sha256, h.patch_dim)?;
        let o = Self {
            bundle: h.bundle_sha256,
            dims,
            next_id: h.next_id,
            entries: h.entries,
            views,
            patch,
        };
        let rows: usize = o.entries.iter().map(|e| e.patch_rows).sum();
        if o.views.len() != o.entries.len() * h.angles * h.dim || rows != o.patch_rows() {
            return Err("the entries do not match the tensors' rows".into());
        }
        if o.entries.iter().any(|e| e.id >= o.next_id)
            || o.views.iter().chain(&o.patch).any(|v| !v.is_finite())
        {
            return Err("inconsistent entries or values".into());
        }
        Ok(o)
    }

    /// Write `DIR/<bundle>.overlay` atomically (fsynced).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_atomic(&Self::path(dir, &self.bundle), &self.to_bytes()).map_err(|e| e.to_string())
    }

    /// The overlay of bundle `bundle` in `dir`: None when there is none; Err (why) when the file
    /// there is not that bundle's or does not fit `dims`.
    pub fn load(dir: &Path, bundle: &str, dims: Dims) -> Result<Option<Self>, String> {
        let path = Self::path(dir, bundle);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let o = Self::from_bytes(&bytes)?;
        if o.bundle != bundle {
            return Err(format!(
                "it belongs to bundle {}, not to the active bundle {}",
                short(&o.bundle),
                short(bundle)
            ));
        }
        if o.dims != dims {
            return Err(format!(
                "its features are {:?}; this bundle's are {dims:?}",
                o.dims
            ));
        }
        Ok(Some(o))
    }

    /// Read a file's entries without checking whose it is (`overlay list` and `export`).
    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The first 16 hex digits of a hash.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(16)]
}

/// The marker `flash --carry-overlay` leaves: mark the overlay of bundle `from` again under
/// bundle `to` when `to` starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Carry {
    pub from: String,
    pub to: String,
}

pub const CARRY: &str = "carry.json";

impl Carry {
    /// Ask for `from`'s overlay to be carried over to `to` (fsynced).
    pub fn request(dir: &Path, from: &str, to: &str) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let c = Carry {
            from: from.into(),
            to: to.into(),
        };
        write_atomic(
            &dir.join(CARRY),
            serde_json::to_string(&c).expect("carry").as_bytes(),
        )
        .map_err(|e| e.to_string())
    }

    fn take(dir: &Path, to: &str) -> Option<Carry> {
        let p = dir.join(CARRY);
        let c: Carry = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
        (c.to == to).then(|| {
            let _ = std::fs::remove_file(&p);
            c
        })
    }
}

/// Where overlays live and their bounds (set by `run`; without them marks are refused).
#[derive(Debug, Clone)]
pub struct DeskConfig {
    /// `STATE/overlay`.
    pub dir: PathBuf,
    /// Where the alerts' frames are saved.
    pub flagged_dir: PathBuf,
    pub limits: OverlayConfig,
}

/// What an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Mark the alert with this journal seq good.
    Mark { alert: u64 },
    /// Undo the entry with this id.
    Undo { entry: u64 },
}

/// Why a request was refused, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound(String),
    Conflict(String),
    Unavailable(String),
    Failed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotFound(s)
            | Refusal::Conflict(s)
            | Refusal::Unavailable(s)
            | Refusal::Failed(s) => f.write_str(s),
        }
    }
}

/// The answer to a mark or undo.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Answer {
    pub action: &'static str,
    pub entry: Entry,
    /// The frame's distance (and patch score) with the overlay before and after the change.
    pub before: f64,
    pub after: f64,
    pub patch_before: Option<f64>,
    pub patch_after: Option<f64>,
    /// The bundle's threshold (unchanged).
    pub threshold: f64,
    pub entries: usize,
    pub journal_seq: Option<u64>,
}

/// The overlay in force, for the page, the API and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    pub bundle: Option<String>,
    pub entries: Vec<Entry>,
    pub patch_rows: usize,
    pub max_entries: usize,
    pub max_patch_rows: usize,
    /// Why this bundle's overlay file was refused (the bundle runs without it).
    pub refused: Option<String>,
    /// Why marks cannot be made with this bundle (its score takes none), if so.
    pub unavailable: Option<String>,
}

type Reply = tokio::sync::oneshot::Sender<Result<Answer, Refusal>>;

/// Between the web handlers and the inference thread.
#[derive(Debug, Default)]
pub struct Desk {
    pub config: OnceLock<DeskConfig>,
    requests: Mutex<Vec<(Request, Reply)>>,
    pub status: RwLock<Status>,
}

impl Desk {
    /// Queue a request for the inference thread; the answer comes on the receiver.
    pub fn ask(&self, r: Request) -> tokio::sync::oneshot::Receiver<Result<Answer, Refusal>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests.lock().expect("desk lock").push((r, tx));
        rx
    }

    /// Requests waiting (the inference thread takes them between frames).
    pub fn take(&self) -> Vec<(Request, Reply)> {
        std::mem::take(&mut *self.requests.lock().expect("desk lock"))
    }

    pub fn has_requests(&self) -> bool {
        !self.requests.lock().expect("desk lock").is_empty()
    }
}

/// One bundle's overlay in the inference thread.
#[derive(Debug)]
pub struct Active {
    pub overlay: Overlay,
    /// Patches above this distance join an entry (the bundle's `patch.low`).
    cut: Option<f32>,
    threshold: f64,
}

fn journal(sh: &Shared, record: serde_json::Value) -> Result<Option<u64>, String> {
    match sh.ledger.get() {
        Some(l) => l
            .append_record(record)
            .map(Some)
            .map_err(|e| format!("the journal refused the record: {e}")),
        None => Ok(None),
    }
}

fn dims_of<E: Embedder>(det: &Detector<E>, patch_dim: usize) -> Dims {
    let angles = det.score_spec().ensemble.angles().len();
    Dims {
        dim: det.views().len() / angles.max(1),
        angles,
        patch_dim,
    }
}

/// The views and hot patches of `img` under `det` (its current overlay included), with the
/// frame's scores.
fn features<E: Embedder>(
    det: &mut Detector<E>,
    img: &image::RgbImage,
    cut: Option<f32>,
) -> Result<(Vec<f32>, Vec<f32>, firm_shared::detect::Scored), String> {
    let s = det.score_image(img).map_err(|e| e.to_string())?;
    let views = det.views().to_vec();
    let patch = cut.map(|c| det.hot_patches(c)).unwrap_or_default();
    Ok((views, patch, s))
}

fn frame_name(bundle: &str, id: u64) -> String {
    format!("{}-{id:06}.png", short(bundle))
}

impl Active {
    /// The overlay of the bundle `sha` for `det`: its file when there is one and it is this
    /// bundle's (else refused and moved aside), or the overlay carried over from the previous
    /// bundle when the flash asked for it, or none. Applied to `det`; the status is published.
    pub fn attach<E: Embedder>(
        sh: &Shared,
        det: &mut Detector<E>,
        sha: &str,
        patch: Option<&firm_shared::bundle::manifest::PatchSection>,
        threshold: f64,
    ) -> Self {
        let cut = patch.map(|p| p.low);
        let dims = dims_of(det, patch.map_or(0, |p| p.dim));
        let mut status = Status {
            bundle: Some(sha.to_string()),
            ..Status::default()
        };
        if !matches!(det.score_fn(), firm_shared::score::ScoreFn::CosK { .. }) {
            status.unavailable = Some(format!(
                "this bundle's score ({}) takes no frames marked good; only cos_K scores do",
                det.score_spec()
            ));
        }
        let mut active = Self {
            overlay: Overlay::empty(sha, dims),
            cut,
            threshold,
        };
        let Some(cfg) = sh.overlay.config.get().cloned() else {
            status.unavailable = Some("the overlay is not configured on this device".into());
            *sh.overlay.status.write().expect("overlay lock") = status;
            return active;
        };
        status.max_entries = cfg.limits.max_entries;
        status.max_patch_rows = cfg.limits.max_patch_rows;
        match Overlay::load(&cfg.dir, sha, dims) {
            Ok(Some(o)) => match det.set_overlay(o.views(), o.patch()) {
                Ok(()) => {
                    tracing::info!(
                        "{} frames marked good are in force ({} patch rows)",
                        o.entries.len(),
                        o.patch_rows()
                    );
                    active.overlay = o;
                }
                Err(e) => status.refused = Some(active.refuse(sh, &cfg.dir, &e.to_string())),
            },
            Ok(None) => {
                if let Some(c) = Carry::take(&cfg.dir, sha) {
                    active.carry(sh, det, &cfg, &c);
                }
            }
            Err(why) => status.refused = Some(active.refuse(sh, &cfg.dir, &why)),
        }
        status.entries = active.overlay.entries.clone();
        status.patch_rows = active.overlay.patch_rows();
        *sh.overlay.status.write().expect("overlay lock") = status;
        active
    }

    /// Move a file that is not this bundle's aside and say so.
    fn refuse(&self, sh: &Shared, dir: &Path, why: &str) -> String {
        let path = Overlay::path(dir, &self.overlay.bundle);
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = path.with_file_name(format!(
            "{}.refused-{secs}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let moved = std::fs::rename(&path, &aside).is_ok();
        let msg = format!(
            "the overlay file {} was refused: {why}; the bundle runs without frames marked good{}",
            path.display(),
            if moved {
                format!(" (the file was moved to {})", aside.display())
            } else {
                String::new()
            }
        );
        tracing::warn!("{msg}");
        let _ = journal(
            sh,
            json!({"type": "overlay", "action": "refused", "bundle": self.overlay.bundle, "why": why}),
        );
        msg
    }

    /// Mark the frames of bundle `c.from`'s overlay again under this bundle.
    fn carry<E: Embedder>(
        &mut self,
        sh: &Shared,
        det: &mut Detector<E>,
        cfg: &DeskConfig,
        c: &Carry,
    ) {
        let old = match Overlay::read(&Overlay::path(&cfg.dir, &c.from)) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("the overlay to carry over cannot be read: {e}");
                return;
            }
        };
        let mut carried = 0;
        for e in &old.entries {
            let src = cfg.dir.join("frames").join(&e.image);
            let img = match image::open(&src) {
                Ok(i) => i.to_rgb8(),
                Err(err) => {
                    tracing::warn!(
                        "overlay entry {} not carried over: {}: {err}",
                        e.id,
                        src.display()
                    );
                    continue;
                }
            };
            let (views, patch, _) = match features(det, &img, self.cut) {
                Ok(f) => f,
                Err(err) => {
                    tracing::warn!("overlay entry {} not carried over: {err}", e.id);
                    continue;
                }
            };
            let mut next = self.overlay.clone();
            let entry = next.push(
                Entry {
                    carried_from: Some(e.carried_from.clone().unwrap_or(c.from.clone())),
                    image: frame_name(&next.bundle, next.next_id),
                    ..e.clone()
                },
                &views,
                &patch,
            );
            if next.entries.len() > cfg.limits.max_entries
                || next.patch_rows() > cfg.limits.max_patch_rows
                || det.set_overlay(next.views(), next.patch()).is_err()
            {
                tracing::warn!("overlay entry {} not carried over: over the bounds", e.id);
                continue;
            }
            let dst = cfg.dir.join("frames").join(&entry.image);
            if let Err(err) = std::fs::copy(&src, &dst) {
                tracing::warn!("overlay entry {} not carried over: {err}", e.id);
                let _ = det.set_overlay(self.overlay.views(), self.overlay.patch());
                continue;
            }
            self.overlay = next;
            carried += 1;
        }
        if let Err(e) = self.overlay.save(&cfg.dir) {
            tracing::warn!("the carried overlay cannot be saved: {e}");
        }
        tracing::info!(
            "{carried} of {} frames marked good carried over from bundle {}",
            old.entries.len(),
            short(&c.from)
        );
        let _ = journal(
            sh,
            json!({"type": "overlay", "action": "carry", "bundle": self.overlay.bundle,
                   "from": c.from, "carried": carried, "of": old.entries.len()}),
        );
    }

    fn publish(&self, sh: &Shared) {
        let mut st = sh.overlay.status.write().expect("overlay lock");
        st.entries = self.overlay.entries.clone();
        st.patch_rows = self.overlay.patch_rows();
        drop(st);
        sh.publish(crate::state::Event::Overlay(
            sh.overlay.status.read().expect("overlay lock").clone(),
        ));
    }

    /// Answer the waiting requests (the inference thread, between two frames).
    pub fn serve<E: Embedder>(&mut self, sh: &Shared, det: &mut Detector<E>) {
        for (req, reply) in sh.overlay.take() {
            let r = match sh.overlay.config.get() {
                None => Err(Refusal::Unavailable(
                    "the overlay is not configured on this device".into(),
                )),
                Some(cfg) => match req {
                    Request::Mark { alert } => self.mark(sh, det, cfg, alert),
                    Request::Undo { entry } => self.undo(sh, det, cfg, entry),
                },
            };
            if r.is_ok() {
                self.publish(sh);
            }
            let _ = reply.send(r);
        }
    }

    fn mark<E: Embedder>(
        &mut self,
        sh: &Shared,
        det: &mut Detector<E>,
        cfg: &DeskConfig,
        alert: u64,
    ) -> Result<Answer, Refusal> {
        if let Some(why) = &sh.overlay.status.read().expect("overlay lock").unavailable {
            return Err(Refusal::Unavailable(why.clone()));
        }
        if let Some(e) = self.overlay.entries.iter().find(|e| e.alert == alert) {
            return Err(Refusal::Conflict(format!(
                "alert {alert} is already marked good (entry {})",
                e.id
            )));
        }
        if self.overlay.entries.len() >= cfg.limits.max_entries {
            return Err(Refusal::Conflict(format!(
                "{} frames are marked good, the most overlay.max-entries allows: undo one, or \
                 retrain with them (device-runtime overlay export)",
                self.overlay.entries.len()
            )));
        }
        let a = find_alert(sh, alert)
            .ok_or_else(|| Refusal::NotFound(format!("no alert with journal seq {alert}")))?;
        // The journal takes an alert before the frame is saved, so its record names no file:
        // the name follows from the verdict.
        let file = a
            .image
            .clone()
            .unwrap_or_else(|| format!("{}.png", crate::alerts::flagged::stem_of(&a.verdict)));
        let src = cfg.flagged_dir.join(&file);
        let bytes = crate::alerts::flagged::read_saved(&src).map_err(|_| {
            Refusal::Conflict(format!(
                "alert {alert}'s frame is not kept (not saved, alerts.save-flagged = false, or \
                evicted: flagged frames are deleted oldest first), so it cannot be marked"
            ))
        })?;
        let img = image::load_from_memory(&bytes)
            .map_err(|e| Refusal::Failed(format!("alert {alert}'s frame: {e}")))?
            .to_rgb8();
        let (views, patch, before) = features(det, &img, self.cut).map_err(Refusal::Failed)?;
        let mut next = self.overlay.clone();
        let entry = next.push(
            Entry {
                id: 0,
                alert,
                frame: a.verdict.seq,
                source: a.verdict.source.clone(),
                captured: a.verdict.time.clone(),
                marked_at: timestamp(SystemTime::now()),
                distance: a.verdict.distance,
                patch_score: a.verdict.heat.as_ref().map(|h| h.score),
                image: frame_name(&self.overlay.bundle, self.overlay.next_id),
                patch_rows: 0,
                carried_from: None,
            },
            &views,
            &patch,
        );
        if next.patch_rows() > cfg.limits.max_patch_rows {
            return Err(Refusal::Conflict(format!(
                "this frame needs {} patch rows and {} are in use, above overlay.max-patch-rows \
                 ({}): undo a mark, or retrain with the marked frames",
                entry.patch_rows,
                self.overlay.patch_rows(),
                cfg.limits.max_patch_rows
            )));
        }
        let frames = cfg.dir.join("frames");
        std::fs::create_dir_all(&frames)
            .and_then(|()| {
                write_atomic(&frames.join(&entry.image), &bytes).map_err(std::io::Error::other)
            })
            .map_err(|e| Refusal::Failed(format!("cannot keep the frame: {e}")))?;
        det.set_overlay(next.views(), next.patch())
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        let restore = |det: &mut Detector<E>, why: String| {
            let _ = det.set_overlay(self.overlay.views(), self.overlay.patch());
            let _ = std::fs::remove_file(frames.join(&entry.image));
            Refusal::Failed(why)
        };
        let after = match det.score_image(&img) {
            Ok(s) => s,
            Err(e) => return Err(restore(det, e.to_string())),
        };
        if let Err(e) = next.save(&cfg.dir) {
            return Err(restore(det, format!("cannot save the overlay: {e}")));
        }
        let seq = match journal(
            sh,
            json!({"type": "overlay", "action": "mark", "entry": entry.id, "alert": alert,
                   "frame": entry.frame, "source": entry.source, "distance": entry.distance,
                   "patch-score": entry.patch_score, "distance-after": after.distance,
                   "patch-rows": entry.patch_rows, "bundle": next.bundle,
                   "entries": next.entries.len()}),
        ) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.overlay.save(&cfg.dir);
                return Err(restore(det, e));
            }
        };
        tracing::info!(
            "alert {alert} marked good (entry {}): distance {:.4e} -> {:.4e}, {} patch rows",
            entry.id,
            before.distance,
            after.distance,
            entry.patch_rows
        );
        self.overlay = next;
        Ok(Answer {
            action: "mark",
            entry,
            before: before.distance,
            after: after.distance,
            patch_before: before.patch,
            patch_after: after.patch,
            threshold: self.threshold,
            entries: self.overlay.entries.len(),
            journal_seq: seq,
        })
    }

    fn undo<E: Embedder>(
        &mut self,
        sh: &Shared,
        det: &mut Detector<E>,
        cfg: &DeskConfig,
        id: u64,
    ) -> Result<Answer, Refusal> {
        let mut next = self.overlay.clone();
        let entry = next
            .remove(id)
            .ok_or_else(|| Refusal::NotFound(format!("no overlay entry {id}")))?;
        let frame = cfg.dir.join("frames").join(&entry.image);
        let img = image::open(&frame).ok().map(|i| i.to_rgb8());
        let before = img.as_ref().and_then(|i| det.score_image(i).ok());
        det.set_overlay(next.views(), next.patch())
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        let after = img.as_ref().and_then(|i| det.score_image(i).ok());
        if let Err(e) = next.save(&cfg.dir) {
            let _ = det.set_overlay(self.overlay.views(), self.overlay.patch());
            return Err(Refusal::Failed(format!("cannot save the overlay: {e}")));
        }
        let seq = match journal(
            sh,
            json!({"type": "overlay", "action": "undo", "entry": id, "alert": entry.alert,
                   "distance": entry.distance, "bundle": next.bundle,
                   "entries": next.entries.len()}),
        ) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.overlay.save(&cfg.dir);
                let _ = det.set_overlay(self.overlay.views(), self.overlay.patch());
                return Err(Refusal::Failed(e));
            }
        };
        let _ = std::fs::remove_file(&frame);
        tracing::info!("overlay entry {id} (alert {}) undone", entry.alert);
        self.overlay = next;
        Ok(Answer {
            action: "undo",
            entry,
            before: before.map_or(f64::NAN, |s| s.distance),
            after: after.map_or(f64::NAN, |s| s.distance),
            patch_before: before.and_then(|s| s.patch),
            patch_after: after.and_then(|s| s.patch),
            threshold: self.threshold,
            entries: self.overlay.entries.len(),
            journal_seq: seq,
        })
    }
}

/// The alert with journal seq `seq`: from the journal, else from the alerts in memory.
fn find_alert(sh: &Shared, seq: u64) -> Option<crate::state::AlertEntry> {
    if let Some(l) = sh.ledger.get() {
        let page = l.page(Some(seq + 1), 1);
        if let Some(a) = page.alerts.into_iter().next()
            && a.alert.journal_seq == Some(seq)
        {
            return Some(a.alert);
        }
    }
    let live = sh.live.read().expect("state lock");
    live.alerts
        .iter()
        .find(|a| a.journal_seq == Some(seq))
        .cloned()
}

/// `device-runtime overlay export`: the frames of the overlay file `path` as PNGs in `out`
/// (named `marked-good-<entry>-alert-<seq>.png`, for `host-trainer fit --good`), with
/// `overlay.json` listing the entries. Returns the files written.
pub fn export(dir: &Path, path: &Path, out: &Path) -> Result<Vec<PathBuf>, String> {
    let o = Overlay::read(path)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut written = Vec::new();
    for e in &o.entries {
        let src = dir.join("frames").join(&e.image);
        let dst = out.join(format!("marked-good-{:04}-alert-{}.png", e.id, e.alert));
        std::fs::copy(&src, &dst).map_err(|err| {
            format!(
                "entry {} (alert {}): {}: {err}",
                e.id,
                e.alert,
                src.display()
            )
        })?;
        written.push(dst);
    }
    let listing = json!({"bundle": o.bundle, "entries": o.entries});
    let p = out.join("overlay.json");
    write_atomic(
        &p,
        serde_json::to_string_pretty(&listing)
            .expect("listing")
            .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(alert: u64) -> Entry {
        Entry {
            id: 0,
            alert,
            frame: alert * 10,
            source: format!("cam/{alert}"),
            captured: "2026-12-06T00:00:00.000Z".into(),
            marked_at: "2026-12-06T00:00:01.000Z".into(),
            distance: 0.5,
            patch_score: Some(3.0),
            image: format!("x-{alert}.png"),
            patch_rows: 0,
            carried_from: None,
        }
    }

    fn dims() -> Dims {
        Dims {
            dim: 3,
            angles: 2,
            patch_dim: 2,
        }
    }

    #[test]
    fn round_trip_remove_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        let mut o = Overlay::empty(&sha, dims());
        let a = o.push(entry(7), &[1.0; 6], &[1.0, 2.0, 3.0, 4.0]);
        let b = o.push(entry(9), &[2.0; 6], &[5.0, 6.0]);
        assert_eq!((a.id, b.id, a.patch_rows, b.patch_rows), (1, 2, 2, 1));
        o.save(dir.path()).unwrap();
        let back = Overlay::load(dir.path(), &sha, dims()).unwrap().unwrap();
        assert_eq!(back, o);
        // Removing the first entry keeps the second's rows.
        let mut r = o.clone();
        r.remove(1).unwrap();
        assert_eq!(r.views(), &[2.0; 6]);
        assert_eq!(r.patch(), &[5.0, 6.0]);
        assert_eq!(r.next_id, 3);
        assert!(r.remove(1).is_none());

        // Another bundle's file under this name, other dimensions, a flipped byte: refused.
        let other = "cd".repeat(32);
        std::fs::copy(
            Overlay::path(dir.path(), &sha),
            Overlay::path(dir.path(), &other),
        )
        .unwrap();
        let e = Overlay::load(dir.path(), &other, dims()).unwrap_err();
        assert!(e.contains("belongs to bundle abababab"), "{e}");
        let e = Overlay::load(dir.path(), &sha, Dims { dim: 4, ..dims() }).unwrap_err();
        assert!(e.contains("features"), "{e}");
        let mut bytes = o.to_bytes();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        let e = Overlay::from_bytes(&bytes).unwrap_err();
        assert!(e.contains("SHA-256"), "{e}");
        assert!(Overlay::from_bytes(b"not a file").is_err());
        assert!(
            Overlay::load(dir.path(), &"ef".repeat(32), dims())
                .unwrap()
                .is_none()
        );
    }
}

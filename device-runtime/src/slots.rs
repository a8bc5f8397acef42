//! A/B bundle slots: how a bundle is installed without risk (DESIGN section 5).
//!
//! ```text
//! STATE/slots/a/bundle.firm     one bundle per slot
//! STATE/slots/b/bundle.firm
//! STATE/slots/active            "a" or "b": the slot the runtime runs
//! STATE/slots/boot-attempts     starts since the last healthy run (crash-loop detection)
//! STATE/slots/high-water.json   the device's product class and, per class, the highest bundle
//!                               version ever activated (anti-downgrade floor)
//! ```
//!
//! A flash goes through [`FlashStep`]s in order: **verify** (size, canonical container, signature
//! against the trusted keys, every member; the product class and anti-downgrade against the
//! persisted high-water mark; the configured operating point) -> **self-test** on this device's
//! backend, from memory -> **write** into the inactive slot (temporary file, fsync, rename, fsync
//! of the folder; the bytes written must have the SHA-256 of the bytes verified) -> **load**
//! (read back from disk: the same SHA-256 again) -> **switch** (the high-water mark raised, then
//! `active` replaced atomically). The active bundle changes only in
//! the last step, by one rename, so a crash or power cut at any moment leaves the previous bundle
//! active and intact (tested by killing the process at every step); a bundle refused before the
//! write (at verify or self-test) leaves the fallback slot untouched too. A failure names the
//! step and the reason.
//!
//! Anti-downgrade: a bundle must be *newer* than every bundle of its class ever activated here
//! (a replay of the same version is refused), whatever the slots hold now, so a rollback does not
//! lower the floor and a slot that no longer verifies does not remove it. A bundle made for
//! another product class is refused. `--force` is the explicit way past both. A device that has
//! no high-water file yet (installed before it existed) takes its floor from the bundles its
//! slots hold.
//!
//! At start, [`Slots::load_active`] verifies and self-tests the active bundle; if it fails, or if
//! the runtime has crashed [`CRASH_LOOP_STARTS`] times in a row without a healthy run, it rolls
//! back to the other slot when that one holds a good bundle.
//!
//! Memory (issue 18: a flash needed 5-7x the bundle's size, measured with
//! `scripts/flash-memory`): the file is read once, and decoded in place of itself where it can
//! be (`Bundle::open_owned`: the thumbnails, most of a large bundle, take over the file's
//! buffer); the slot is written by copying the file again and read back by its hash, so its
//! bytes are never held twice; what a slot holds (`status`, the bundle a flash replaces, an old
//! device's anti-downgrade floor) is checked in one streamed pass (`bundle::scan`), never
//! loaded. A flash of 256 MiB of image bank entries now peaks at 1.2-1.4x the bundle's size in
//! `device-runtime flash` and 1.3-1.6x over idle by upload (the README has the figures).
//!
//! Crash tests: `FIRM_TEST_STALL_AT=<step>` makes a flash stop at that step (after writing half
//! of the file for `write`) and wait to be killed. It has no other effect.
//!
//! Temporary files (`.NAME.tmp` beside the file they replace) are removed when their write
//! fails, and those a crash or power cut left behind by [`Slots::remove_temporaries`] at start.
//! The boot counter and, after a rollback, `active` are the writes a start makes here. When one
//! fails for want of space, the start goes on: without crash-loop protection for that start
//! (the counter, logged by `run`), or running the slot rolled back to without recording it
//! (`active`: [`Loaded::persist_error`], so the next start rolls back again).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use firm_shared::bundle::{Bundle, Limits, Manifest, container, scan, sha256_hex};
use firm_shared::detect::{Backend, Detector};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::state::StateFs;

/// Starts without a healthy run after which the other slot is tried.
pub const CRASH_LOOP_STARTS: u32 = 3;
const BUNDLE_FILE: &str = "bundle.firm";
const ACTIVE: &str = "active";
const BOOTS: &str = "boot-attempts";
const HIGH_WATER: &str = "high-water.json";

/// The anti-downgrade floor, persisted beside the slots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HighWater {
    /// The product class of the last bundle activated: what this device inspects.
    pub class: Option<String>,
    /// Per product class, the highest bundle version ever activated.
    pub versions: std::collections::BTreeMap<String, u64>,
}

impl HighWater {
    /// Why `bundle` may not be installed over this floor (without `--force`).
    fn refuses(&self, class: &str, version: u64) -> Option<String> {
        if let Some(c) = self.class.as_deref().filter(|c| *c != class) {
            return Some(format!(
                "the bundle is for product class `{class}` but this device inspects `{c}` \
                 (pass --force to change the product)"
            ));
        }
        let floor = *self.versions.get(class)?;
        (version <= floor).then(|| {
            format!(
                "bundle version {version} is not newer than {floor}, the highest version of \
                 class `{class}` installed on this device (anti-downgrade; pass --force to \
                 install it anyway)"
            )
        })
    }

    fn raised(&self, class: &str, version: u64) -> HighWater {
        let mut hw = self.clone();
        hw.class = Some(class.to_string());
        let v = hw.versions.entry(class.to_string()).or_insert(version);
        *v = (*v).max(version);
        hw
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The steps of a flash, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlashStep {
    Verify,
    SelfTest,
    Write,
    Load,
    Switch,
}

impl FlashStep {
    pub const ALL: [FlashStep; 5] = [
        FlashStep::Verify,
        FlashStep::SelfTest,
        FlashStep::Write,
        FlashStep::Load,
        FlashStep::Switch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FlashStep::Verify => "verify",
            FlashStep::Write => "write",
            FlashStep::Load => "load",
            FlashStep::SelfTest => "self-test",
            FlashStep::Switch => "switch",
        }
    }
}

/// Why a flash or a start did not install / load a bundle.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("flash failed at the {} step: {why}; the active bundle is unchanged", step.name())]
    Flash { step: FlashStep, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no usable bundle installed ({why}); install one with `device-runtime flash FILE`")]
    NoBundle { why: String },
    #[error("cannot roll back: slot {slot} {why}")]
    Rollback { slot: Slot, why: String },
    /// A bundle file changed between its verification and its copy into a slot.
    #[error(
        "{path}: the bytes written are not the bytes verified (the bundle file changed while it \
         was installed)"
    )]
    Changed { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
    move |source| SlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a slot holds, for `status` and the web page.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BundleSummary {
    pub bundle_version: u64,
    pub product_class: String,
    pub created: String,
    pub score: String,
    pub threshold: f64,
    pub bytes: u64,
    pub sha256: String,
}

impl BundleSummary {
    /// A bundle file of `bytes` bytes with this SHA-256 (hex) and manifest.
    fn new(m: &Manifest, bytes: u64, sha256: String) -> Self {
        Self {
            bundle_version: m.bundle_version,
            product_class: m.product_class.clone(),
            created: m.created.clone(),
            score: m.score.spec.to_string(),
            threshold: m.threshold.distance,
            bytes,
            sha256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SlotStatus {
    pub slot: Slot,
    pub active: bool,
    /// The bundle, when the slot holds one that verifies.
    pub bundle: Option<BundleSummary>,
    /// Why the slot's content does not verify (or "empty").
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    pub active: Option<Slot>,
    pub slots: Vec<SlotStatus>,
    pub boot_attempts: u32,
}

/// The outcome of a successful flash.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Flashed {
    pub slot: Slot,
    pub bundle: BundleSummary,
    pub replaced: Option<BundleSummary>,
    pub selftest_max_distance_err: f64,
    /// Set when `force` went past a refusal (the command line journals it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<Forced>,
}

/// What `--force` went past in a flash.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Forced {
    /// Why the flash would have been refused without it.
    pub reason: String,
    /// The device's product class before, and the highest version of the bundle's class
    /// installed before (None when the high-water record was damaged or had none).
    pub class_before: Option<String>,
    pub floor: Option<u64>,
}

/// A verified, self-tested bundle loaded from a slot.
#[derive(Debug)]
pub struct Loaded {
    pub slot: Slot,
    pub bundle: Bundle,
    pub summary: BundleSummary,
    /// Set when the start rolled back from the other slot, with the reason.
    pub rolled_back: Option<String>,
    /// Set when the start rolled back but could not record the switch in `active` for want of
    /// space (ENOSPC, EDQUOT): this bundle runs, `active` still names the slot rolled back
    /// from, and every start rolls back again until a switch is recorded. Why, for the status.
    pub persist_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Slots {
    dir: PathBuf,
    keys: Vec<VerifyingKey>,
    limits: Limits,
    /// The backend self-tests run on.
    backend: Backend,
    /// The operating point the device's config reads from a bundle (None: a configured
    /// threshold, which any bundle satisfies).
    operating_point: Option<String>,
}

fn stall_if(step: FlashStep) {
    if std::env::var("FIRM_TEST_STALL_AT").is_ok_and(|s| s == step.name()) {
        eprintln!("stalling at {}", step.name());
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}

/// The temporary file [`write_durable`] writes `path` through.
fn temporary(path: &Path) -> PathBuf {
    let dir = path.parent().expect("slot files live in a folder");
    dir.join(format!(
        ".{}{TMP_SUFFIX}",
        path.file_name().unwrap().to_string_lossy()
    ))
}

const TMP_SUFFIX: &str = ".tmp";

/// Write `bytes` to `path` durably ([`write_durable_from`]).
fn write_durable(path: &Path, bytes: &[u8], stall: Option<FlashStep>) -> Result<(), SlotError> {
    write_durable_from(path, &mut &bytes[..], bytes.len() as u64, None, stall)
}

/// Write the `len` bytes `source` gives to `path` through a temporary file, fsync, rename, fsync
/// of the folder; the temporary file is removed when that fails (a full filesystem leaves
/// nothing behind). With `sha256`, the bytes written must have that SHA-256 (hex), or nothing
/// is renamed ([`SlotError::Changed`]). With the stall hook, stop after half of the bytes.
fn write_durable_from(
    path: &Path,
    source: &mut dyn Read,
    len: u64,
    sha256: Option<&str>,
    stall: Option<FlashStep>,
) -> Result<(), SlotError> {
    let tmp = temporary(path);
    let r = write_through(path, &tmp, source, len, sha256, stall);
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Bytes copied at a time by [`write_through`] and [`file_sha256`].
const PIECE: usize = 1 << 20;

fn write_through(
    path: &Path,
    tmp: &Path,
    source: &mut dyn Read,
    len: u64,
    sha256: Option<&str>,
    stall: Option<FlashStep>,
) -> Result<(), SlotError> {
    let dir = path.parent().expect("slot files live in a folder");
    let mut f = std::fs::File::create(tmp).map_err(io(tmp))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; PIECE.min(len as usize)];
    let mut copy = |f: &mut std::fs::File, mut n: u64| -> Result<(), SlotError> {
        while n > 0 {
            let piece = &mut buf[..(n as usize).min(PIECE)];
            source.read_exact(piece).map_err(|e| match e.kind() {
                // The source is shorter than what was verified.
                std::io::ErrorKind::UnexpectedEof => SlotError::Changed {
                    path: path.to_path_buf(),
                },
                _ => SlotError::Io {
                    path: path.to_path_buf(),
                    source: e,
                },
            })?;
            hash.update(&*piece);
            f.write_all(piece).map_err(io(tmp))?;
            n -= piece.len() as u64;
        }
        Ok(())
    };
    let half = len / 2;
    copy(&mut f, half)?;
    if let Some(step) = stall {
        f.sync_all().map_err(io(tmp))?;
        stall_if(step);
    }
    copy(&mut f, len - half)?;
    if sha256.is_some_and(|want| hex(hash.finalize()) != want) {
        return Err(SlotError::Changed {
            path: path.to_path_buf(),
        });
    }
    f.sync_all().map_err(io(tmp))?;
    drop(f);
    std::fs::rename(tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn hex(digest: impl AsRef<[u8]>) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The size and SHA-256 (hex) of a file, read in pieces.
fn file_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok((n, hex(hash.finalize()))),
            Ok(k) => {
                hash.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Read a public key file (64 hex digits, keygen's `.pub`).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, String> {
    // Bytes, not a string: a binary file given by mistake is a bad key, not an I/O error.
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    container::parse_verifying_key(&String::from_utf8_lossy(&raw))
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl Slots {
    pub fn new(dir: &Path, keys: Vec<VerifyingKey>, max_bytes: u64) -> Result<Self, SlotError> {
        for s in [Slot::A, Slot::B] {
            let d = dir.join(s.name());
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            keys,
            limits: Limits {
                max_total: max_bytes,
                ..Limits::default()
            },
            backend: Backend::default(),
            operating_point: None,
        })
    }

    /// Refuse bundles that lack this operating point (the one the config will run them at).
    pub fn with_operating_point(mut self, point: Option<String>) -> Self {
        self.operating_point = point;
        self
    }

    /// The persisted anti-downgrade floor. Without the file (a device installed before it
    /// existed), the floor the slots' bundles imply: each class's highest version, and the
    /// active bundle's class.
    pub fn high_water(&self) -> Result<HighWater, String> {
        let p = self.dir.join(HIGH_WATER);
        match std::fs::read(&p) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|e| {
                format!(
                    "{}: {e} (the anti-downgrade record is damaged; --force installs anyway \
                     and rewrites it)",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut hw = HighWater::default();
                let active = self.active();
                for s in [Slot::A, Slot::B] {
                    if let Ok(b) = self.check_slot(s) {
                        let class = hw.class.take();
                        hw = hw.raised(&b.product_class, b.bundle_version);
                        hw.class = class;
                        if active == Some(s) {
                            hw.class = Some(b.product_class);
                        }
                    }
                }
                Ok(hw)
            }
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    fn set_high_water(&self, hw: &HighWater) -> Result<(), SlotError> {
        let json = serde_json::to_vec_pretty(hw).expect("the high-water mark serialises");
        write_durable(&self.dir.join(HIGH_WATER), &json, None)
    }

    /// Self-test bundles on `backend` (the one the pipeline will run them on).
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn bundle_path(&self, slot: Slot) -> PathBuf {
        self.dir.join(slot.name()).join(BUNDLE_FILE)
    }

    /// The active slot, if one was ever switched to.
    pub fn active(&self) -> Option<Slot> {
        match std::fs::read_to_string(self.dir.join(ACTIVE)).ok()?.trim() {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    fn set_active(&self, slot: Slot) -> Result<(), SlotError> {
        write_durable(&self.dir.join(ACTIVE), slot.name().as_bytes(), None)
    }

    /// Read, verify (signature under a trusted key, members, tensors) and decode the bundle
    /// file at `path`; its summary. The file is read once, into the buffer that becomes the
    /// bank's thumbnails when they are most of it (`Bundle::open_owned`); nothing else of it is
    /// kept. `Ok(Err(why))`: a file that is not a good bundle.
    fn read_bundle(&self, path: &Path) -> std::io::Result<Result<(Bundle, BundleSummary), String>> {
        let len = std::fs::metadata(path)?.len();
        if len > self.limits.max_total {
            let e = container::ContainerError::FileTooLarge {
                size: len,
                limit: self.limits.max_total,
            };
            return Ok(Err(e.to_string()));
        }
        // At most one byte above the limit, should the file grow meanwhile (then refused).
        let mut bytes = Vec::with_capacity(len as usize);
        std::fs::File::open(path)?
            .take(self.limits.max_total + 1)
            .read_to_end(&mut bytes)?;
        let (n, sha256) = (bytes.len() as u64, sha256_hex(&bytes));
        Ok(Bundle::open_owned(bytes, &self.keys, &self.limits)
            .map_err(|e| e.to_string())
            .map(|b| {
                let summary = BundleSummary::new(&b.manifest, n, sha256);
                (b, summary)
            }))
    }

    /// Read, verify and decode a slot's bundle (no self-test).
    fn read_slot(&self, slot: Slot) -> Result<(Bundle, BundleSummary), String> {
        let p = self.bundle_path(slot);
        match self.read_bundle(&p) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("empty".into()),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    /// What a slot holds, checked in one streamed pass without holding the file (signature
    /// under a trusted key, members as the signed manifest lists them: `bundle::scan`); the
    /// tensors were decoded and self-tested when the bundle was flashed, and are again when it
    /// is loaded.
    fn check_slot(&self, slot: Slot) -> Result<BundleSummary, String> {
        let p = self.bundle_path(slot);
        let mut f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("empty".into()),
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        let s = scan::scan(&mut f, &self.keys, &self.limits).map_err(|e| e.to_string())?;
        Ok(BundleSummary::new(&s.manifest, s.bytes, s.sha256))
    }

    fn self_test(&self, b: &Bundle) -> Result<f64, String> {
        let r = Detector::on(b, self.backend)
            .and_then(|mut d| d.self_test(b))
            .map_err(|e| e.to_string())?;
        r.check().map_err(|e| e.to_string())?;
        Ok(r.max_distance_err)
    }

    /// The SHA-256 of the active slot's bundle file, when it holds one that verifies.
    pub fn active_sha256(&self) -> Option<String> {
        Some(self.check_slot(self.active()?).ok()?.sha256)
    }

    pub fn status(&self) -> Status {
        let active = self.active();
        let slots = [Slot::A, Slot::B]
            .into_iter()
            .map(|s| {
                let (bundle, problem) = match self.check_slot(s) {
                    Ok(b) => (Some(b), None),
                    Err(why) => (None, Some(why)),
                };
                SlotStatus {
                    slot: s,
                    active: active == Some(s),
                    bundle,
                    problem,
                }
            })
            .collect();
        Status {
            active,
            slots,
            boot_attempts: self.boot_attempts(),
        }
    }

    /// Install the bundle file `source` into the inactive slot and switch to it (see the module
    /// docs). `force` allows a lower bundle version than the active one.
    /// Also returns the installed bundle, verified and self-tested, ready to run.
    pub fn flash(&self, source: &Path, force: bool) -> Result<(Flashed, Loaded), SlotError> {
        let fail = |step, why: String| SlotError::Flash { step, why };
        stall_if(FlashStep::Verify);
        let active = self.active();
        // What it replaces, for the report: checked as `status` checks a slot, never loaded.
        let current = active.and_then(|s| self.check_slot(s).ok());
        let (bundle, summary) = self
            .read_bundle(source)
            .map_err(io(source))?
            .map_err(|why| fail(FlashStep::Verify, why))?;
        let (class, version) = (
            bundle.manifest.product_class.clone(),
            bundle.manifest.bundle_version,
        );
        let mut forced = None;
        let floor = match self.high_water() {
            Ok(hw) => hw,
            Err(why) if force => {
                warn!("flash --force: {why}");
                forced = Some(Forced {
                    reason: why,
                    class_before: None,
                    floor: None,
                });
                HighWater::default()
            }
            Err(why) => return Err(fail(FlashStep::Verify, why)),
        };
        if let Some(why) = floor.refuses(&class, version) {
            if !force {
                return Err(fail(FlashStep::Verify, why));
            }
            warn!("flash --force past the anti-downgrade check: {why}");
            forced = Some(Forced {
                reason: why,
                class_before: floor.class.clone(),
                floor: floor.versions.get(&class).copied(),
            });
        }
        if let Some(point) = &self.operating_point {
            let points = &bundle.manifest.threshold.operating_points;
            if !points.contains_key(point) {
                return Err(fail(
                    FlashStep::Verify,
                    format!(
                        "the bundle has no operating point `{point}` (inference.operating-point \
                         of this device's config); it has: {}",
                        points.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        // Self-test before anything is written: a refused bundle leaves both slots as they were.
        stall_if(FlashStep::SelfTest);
        let err = self
            .self_test(&bundle)
            .map_err(|why| fail(FlashStep::SelfTest, why))?;
        let target = active.map_or(Slot::A, Slot::other);
        let path = self.bundle_path(target);
        info!("flash: writing slot {target} ({} bytes)", summary.bytes);
        // Copied from the file again rather than kept in memory through the self-test: the
        // bytes written must have the SHA-256 of the bytes verified, or nothing is renamed.
        let mut src = std::fs::File::open(source)
            .map_err(|e| fail(FlashStep::Write, format!("{}: {e}", source.display())))?;
        write_durable_from(
            &path,
            &mut src,
            summary.bytes,
            Some(&summary.sha256),
            Some(FlashStep::Write),
        )
        .map_err(|e| fail(FlashStep::Write, e.to_string()))?;
        drop(src);
        stall_if(FlashStep::Load);
        // The slot read back: the same SHA-256 as the bytes verified, decoded and self-tested
        // is the same bundle, so the file is hashed in pieces, not decoded a second time.
        let on_disk = file_sha256(&path)
            .map_err(|e| fail(FlashStep::Load, format!("{}: {e}", path.display())))?;
        if on_disk != (summary.bytes, summary.sha256.clone()) {
            return Err(fail(
                FlashStep::Load,
                "the slot reads back different bytes".into(),
            ));
        }
        stall_if(FlashStep::Switch);
        // The floor rises before the switch: a power cut between the two leaves the old bundle
        // active and the new one installable by `rollback`, never a floor below the active one.
        self.set_high_water(&floor.raised(&class, version))
            .map_err(|e| fail(FlashStep::Switch, e.to_string()))?;
        self.set_active(target)
            .map_err(|e| fail(FlashStep::Switch, e.to_string()))?;
        self.reset_boots();
        info!("flash: slot {target} is active");
        let flashed = Flashed {
            slot: target,
            bundle: summary.clone(),
            replaced: current,
            selftest_max_distance_err: err,
            forced,
        };
        Ok((
            flashed,
            Loaded {
                slot: target,
                bundle,
                summary,
                rolled_back: None,
                persist_error: None,
            },
        ))
    }

    /// Make the other slot active, when it holds a bundle that verifies and self-tests.
    pub fn rollback(&self) -> Result<Slot, SlotError> {
        let target = self.active().map_or(Slot::A, Slot::other);
        let (b, _) = self.read_slot(target).map_err(|why| SlotError::Rollback {
            slot: target,
            why: format!("does not hold a usable bundle: {why}"),
        })?;
        self.self_test(&b).map_err(|why| SlotError::Rollback {
            slot: target,
            why: format!("fails its self-test: {why}"),
        })?;
        self.set_active(target)?;
        self.reset_boots();
        warn!("rolled back to slot {target}");
        Ok(target)
    }

    /// Load the bundle to run: the active one if it verifies and self-tests, else the other
    /// one, which then becomes active. In a crash loop the other slot is tried first (and the
    /// active one still used when the other is not usable).
    ///
    /// A switch that cannot be recorded for want of space (a full state filesystem) does not
    /// stop the start: the good bundle is in memory, and the line must keep being inspected. It
    /// is logged here (once per start) and returned in [`Loaded::persist_error`]; the boot
    /// counter is then left as it is, so the next start sees what this one saw (the same
    /// unusable slot, or the same crash loop) and rolls back again. Any other error writing
    /// `active` still fails the start.
    pub fn load_active(&self) -> Result<Loaded, SlotError> {
        let boots = self.boot_attempts();
        let active = self.active();
        let first = active.unwrap_or(Slot::A);
        let crash_loop = active.is_some() && boots >= CRASH_LOOP_STARTS;
        let order = if crash_loop {
            [first.other(), first]
        } else {
            [first, first.other()]
        };
        let mut problems = Vec::new();
        if crash_loop {
            problems.push(format!(
                "slot {first} crashed {boots} starts in a row without a healthy run"
            ));
        }
        if active.is_none() {
            problems.push("no slot is active".to_string());
        }
        for slot in order {
            let checked = self
                .read_slot(slot)
                .and_then(|(b, summary)| self.self_test(&b).map(|_| (b, summary)));
            match checked {
                Ok((b, summary)) => {
                    let switched = Some(slot) != active;
                    let rolled_back = switched.then(|| problems.join("; "));
                    let mut persist_error = None;
                    if switched {
                        warn!("{}: starting from slot {slot}", problems.join("; "));
                        match self.set_active(slot) {
                            Ok(()) => self.reset_boots(),
                            Err(e) if StateFs::caused_by_full(&e) => {
                                let why = format!(
                                    "slot {slot} runs, but the switch to it could not be \
                                     recorded ({e}): every start rolls back again until space \
                                     is freed"
                                );
                                warn!("{why}");
                                persist_error = Some(why);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    return Ok(Loaded {
                        slot,
                        summary,
                        bundle: b,
                        rolled_back,
                        persist_error,
                    });
                }
                Err(e) => problems.push(format!("slot {slot}: {e}")),
            }
        }
        Err(SlotError::NoBundle {
            why: problems.join("; "),
        })
    }

    pub fn boot_attempts(&self) -> u32 {
        std::fs::read_to_string(self.dir.join(BOOTS))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Count a start (before loading); [`Self::mark_healthy`] clears it. An error (a full
    /// filesystem) leaves the count as it was: the caller may start anyway, without crash-loop
    /// protection for this start.
    pub fn note_start(&self) -> Result<u32, SlotError> {
        let n = self.boot_attempts() + 1;
        write_durable(&self.dir.join(BOOTS), n.to_string().as_bytes(), None)?;
        Ok(n)
    }

    /// The runtime ran long enough to count as healthy. Removing the counter needs no space;
    /// a failure is logged (the next starts would count from the old value).
    pub fn mark_healthy(&self) {
        let p = self.dir.join(BOOTS);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                "cannot clear the boot counter {}: {e}; the next starts may be taken for a \
                 crash loop",
                p.display()
            ),
        }
    }

    /// Remove the temporary files that writes cut short by a crash or power cut left in the
    /// slots folder and the slot folders; how many. Called at start, before anything here is
    /// written.
    pub fn remove_temporaries(&self) -> usize {
        let mut removed = 0;
        for d in [
            self.dir.clone(),
            self.dir.join(Slot::A.name()),
            self.dir.join(Slot::B.name()),
        ] {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let plain = e.file_type().is_ok_and(|t| t.is_file());
                if plain
                    && name.starts_with('.')
                    && name.ends_with(TMP_SUFFIX)
                    && std::fs::remove_file(e.path()).is_ok()
                {
                    info!(
                        "removed {}, left by an interrupted write",
                        e.path().display()
                    );
                    removed += 1;
                }
            }
        }
        removed
    }

    fn reset_boots(&self) {
        let _ = std::fs::remove_file(self.dir.join(BOOTS));
    }
}

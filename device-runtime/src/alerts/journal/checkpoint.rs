//! The journal's checkpoint: where the chain's head stood after the last append, kept *outside*
//! the journal directory and authenticated with the device secret ([`DeviceSecret`]), so that
//! deleting the newest records, or the newest file, shows.
//!
//! ```text
//! STATE/secret/device.key      64 hex digits, mode 0600 in a 0700 folder, created at first start
//! STATE/journal.checkpoint     {"seq":42,"hash":"<64 hex>","time":"...","hmac":"<64 hex>"}
//! ```
//!
//! `hmac` is HMAC-SHA256 under the secret of `firm-inspect journal checkpoint v1\n<seq>\n<hash>\n
//! <time>`. A sealed [`Journal`](super::Journal) rewrites the checkpoint (temporary file, fsync,
//! rename, fsync of the folder) after every append, once the line itself is fsynced, so the
//! checkpoint never names a record that is not durable: a torn last line (power cut) is never one
//! the checkpoint covers. Against it:
//!
//! - the journal ends before the checkpoint's seq: records were deleted from its end
//!   ([`JournalError::Truncated`]);
//! - the record at the checkpoint's seq has another hash: the end was deleted and written anew
//!   ([`JournalError::Diverged`]);
//! - the HMAC does not check out ([`JournalError::CheckpointForged`]), or the checkpoint is gone
//!   while the secret exists and the journal has records ([`JournalError::CheckpointMissing`]).
//!
//! A journal that goes on past its checkpoint is fine (a power cut between the line's fsync and
//! the checkpoint's rename), as long as its record at the checkpoint's seq has the sealed hash.
//!
//! [`verify_sealed`](super::verify_sealed) reports these. [`Journal::open`](super::Journal) finds
//! them too, and then does not write over the evidence: it appends a `journal-tamper` record
//! naming the problem (and a torn line's bytes, when a "torn" last line was a checkpointed record),
//! then seals the new head, so the appliance keeps inspecting and every later `journal verify`
//! reports the loss ([`JournalError::TamperRecorded`]) until retention deletes that record.
//!
//! A first start on a full filesystem cannot create the secret. The appliance then starts with
//! a *deferred* seal ([`Seal::deferred`]): the journal runs without its checkpoint, and every
//! append tries to create the secret again (its temporary file removed when that fails, so a
//! failed attempt takes no space and leaves nothing a later start could take for a key); the
//! first that succeeds seals the head, without a restart. Until then nothing is checked, and a
//! missing checkpoint is not taken for a deleted one (the secret is newer than this start).
//!
//! What this cannot catch on its own: someone who can read the secret (root on the device), or who
//! puts back an older checkpoint together with a journal cut back to it (a replay). The head
//! (seq and hash) also goes out in every webhook payload and in `/metrics`, so a receiver that
//! keeps the highest seq it saw catches those too.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{JournalError, Result};
use super::line::is_hash_hex;
use super::secret::{DeviceSecret, same};
use super::tail::Torn;
use crate::state::StateFs;

/// The checkpoint's file name in the state directory (beside, not in, `journal/`).
pub const CHECKPOINT_FILE: &str = "journal.checkpoint";
/// The device secret's path under the state directory.
pub const SECRET_FILE: &str = "secret/device.key";
/// `type` of the record a journal appends when it finds, at open, that it was tampered with.
pub const TAMPER_RECORD: &str = "journal-tamper";

const DOMAIN: &str = "firm-inspect journal checkpoint v1";

/// The contents of the checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// seq of the last record appended (0 for a journal that has none).
    pub seq: u64,
    /// Its hash (the next record's prev).
    pub hash: String,
    /// When it was sealed, RFC 3339 UTC.
    pub time: String,
    pub hmac: String,
}

/// What the checkpoint file holds, checked against the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    Missing,
    Good(Checkpoint),
    /// Not a checkpoint, or its HMAC does not check out: why.
    Forged(String),
}

/// The device secret and where the checkpoint goes: what makes a [`Journal`](super::Journal)
/// sealed.
#[derive(Debug)]
pub struct Seal {
    /// None while a deferred seal has no secret yet ([`Seal::ensure_secret`]).
    secret: Option<DeviceSecret>,
    secret_path: PathBuf,
    path: PathBuf,
    /// The secret was created by this start: a journal without a checkpoint is then an upgrade
    /// from a version that had none, not a deleted checkpoint.
    created: bool,
}

impl Seal {
    /// The appliance's seal: the secret at `STATE/secret/device.key` (created when there is
    /// none: the first start) and the checkpoint at `STATE/journal.checkpoint`.
    pub fn in_state_dir(state_dir: &Path) -> Result<Seal> {
        let secret_path = state_dir.join(SECRET_FILE);
        let (secret, created) = DeviceSecret::load_or_create(&secret_path)?;
        Ok(Seal {
            secret: Some(secret),
            secret_path,
            path: state_dir.join(CHECKPOINT_FILE),
            created,
        })
    }

    /// The appliance's seal when [`Seal::in_state_dir`] could not create the secret for want of
    /// space: no secret yet, and no checkpoint written or checked until
    /// [`Seal::ensure_secret`] creates it (the journal tries at every append). `created`: any
    /// secret it finds later is newer than this start, so a checkpoint missing then is not a
    /// deleted one.
    pub fn deferred(state_dir: &Path) -> Seal {
        Seal {
            secret: None,
            secret_path: state_dir.join(SECRET_FILE),
            path: state_dir.join(CHECKPOINT_FILE),
            created: true,
        }
    }

    /// Whether the seal has its secret (false only for a deferred seal still without one).
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// Give a deferred seal its secret: read it, or create it ([`DeviceSecret::load_or_create`]).
    /// `Ok(false)`: still none, for want of space (the caller reported that once already).
    pub(super) fn ensure_secret(&mut self) -> Result<bool> {
        if self.secret.is_some() {
            return Ok(true);
        }
        match DeviceSecret::load_or_create(&self.secret_path) {
            Ok((secret, _)) => {
                self.secret = Some(secret);
                Ok(true)
            }
            Err(e) if StateFs::caused_by_full(&e) => {
                tracing::debug!(error = %e, "the device secret still cannot be created");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The seal for reading (`journal verify`): None when the device has no secret yet.
    pub fn existing(state_dir: &Path) -> Result<Option<Seal>> {
        Ok(
            DeviceSecret::load(&state_dir.join(SECRET_FILE))?.map(|secret| Seal {
                secret: Some(secret),
                secret_path: state_dir.join(SECRET_FILE),
                path: state_dir.join(CHECKPOINT_FILE),
                created: false,
            }),
        )
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn secret_path(&self) -> &Path {
        &self.secret_path
    }

    pub(super) fn created(&self) -> bool {
        self.created
    }

    /// The checkpoint's HMAC; None without a secret (a deferred seal).
    fn mac(&self, seq: u64, hash: &str, time: &str) -> Option<String> {
        let s = self.secret.as_ref()?;
        Some(s.mac_hex(format!("{DOMAIN}\n{seq}\n{hash}\n{time}").as_bytes()))
    }

    /// Read the checkpoint and check its HMAC. Without a secret (a deferred seal) a checkpoint
    /// cannot be checked: it counts as forged (none can have been written without one).
    pub fn read(&self) -> Result<Sealed> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Sealed::Missing),
            Err(source) => {
                return Err(JournalError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let cp: Checkpoint = match serde_json::from_slice(&bytes) {
            Ok(cp) => cp,
            Err(e) => {
                return Ok(Sealed::Forged(format!(
                    "not a {{seq, hash, time, hmac}} object ({e})"
                )));
            }
        };
        if !is_hash_hex(cp.hash.as_bytes()) {
            return Ok(Sealed::Forged(format!(
                "hash {:?} is not 64 lowercase hex digits",
                cp.hash
            )));
        }
        let Some(mac) = self.mac(cp.seq, &cp.hash, &cp.time) else {
            return Ok(Sealed::Forged(format!(
                "there is no device secret ({}) to check it with",
                self.secret_path.display()
            )));
        };
        if !same(&mac, &cp.hmac) {
            return Ok(Sealed::Forged(format!(
                "its HMAC does not match seq {} and hash {} under the device secret",
                cp.seq, cp.hash
            )));
        }
        Ok(Sealed::Good(cp))
    }

    /// Seal `seq`/`hash` as the head: written atomically and fsynced. A deferred seal without
    /// its secret writes nothing.
    pub(super) fn write(&self, seq: u64, hash: &str, time: &str) -> Result<()> {
        let Some(hmac) = self.mac(seq, hash, time) else {
            return Ok(());
        };
        let cp = Checkpoint {
            seq,
            hash: hash.to_string(),
            time: time.to_string(),
            hmac,
        };
        let mut bytes = serde_json::to_vec(&cp).unwrap_or_default();
        bytes.push(b'\n');
        firm_shared::fsutil::write_atomic(&self.path, &bytes).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: super::secret::io_source(e),
        })
    }

    /// Compare a good checkpoint with the head (`head_seq`, `head_hash`) of a chain. `at_cp` is the
    /// chain's hash at the checkpoint's seq (a record's hash, or its successor's prev) when the
    /// head is past it and the record is still there.
    pub(super) fn compare(
        &self,
        cp: &Checkpoint,
        head_seq: u64,
        head_hash: &str,
        at_cp: Option<&str>,
    ) -> Result<Standing> {
        let diverged = |found: &str| JournalError::Diverged {
            checkpoint: self.path.clone(),
            seq: cp.seq,
            expected: cp.hash.clone(),
            found: found.to_string(),
        };
        if cp.seq > head_seq {
            return Err(JournalError::Truncated {
                checkpoint: self.path.clone(),
                checkpoint_seq: cp.seq,
                checkpoint_hash: cp.hash.clone(),
                last_seq: head_seq,
                last_hash: head_hash.to_string(),
            });
        }
        if cp.seq == head_seq {
            return if head_hash == cp.hash {
                Ok(Standing::Current)
            } else {
                Err(diverged(head_hash))
            };
        }
        match at_cp {
            Some(h) if h == cp.hash => Ok(Standing::Ahead(head_seq - cp.seq)),
            Some(h) => Err(diverged(h)),
            None => Ok(Standing::Unchecked),
        }
    }
}

/// Where a chain stands against its checkpoint (when nothing is wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The head is the checkpoint.
    Current,
    /// The checkpoint's record is followed by this many newer ones.
    Ahead(u64),
    /// The checkpoint's record is older than the oldest one kept (retention): it cannot be checked.
    Unchecked,
}

/// The `journal-tamper` record a journal appends at open when it finds `problem`.
pub(super) fn tamper_record(
    problem: &JournalError,
    checkpoint: Option<&Checkpoint>,
    head_seq: u64,
    head_hash: &str,
    torn: Option<&Torn>,
) -> Value {
    const TEXT_MAX: usize = 64 * 1024;
    let mut record = json!({
        "type": TAMPER_RECORD,
        "problem": problem.to_string(),
        "checkpoint": checkpoint.map(|c| json!({"seq": c.seq, "hash": c.hash, "time": c.time})),
        "found": {"seq": head_seq, "hash": head_hash},
    });
    if let Some(t) = torn {
        // The "torn" line is kept here instead of being lost: it may be the deleted record.
        let text = &t.bytes[..t.bytes.len().min(TEXT_MAX)];
        record["torn"] = json!({
            "file": t.path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "line": t.line,
            "offset": t.offset,
            "bytes": t.bytes.len(),
            "text": String::from_utf8_lossy(text),
        });
    }
    record
}

/// The problem a `journal-tamper` record names, if `record` is one.
pub(super) fn tamper_problem(record: &Value) -> Option<String> {
    (record.get("type").and_then(Value::as_str) == Some(TAMPER_RECORD)).then(|| {
        record
            .get("problem")
            .and_then(Value::as_str)
            .unwrap_or("(no description)")
            .to_string()
    })
}

//! The alert journal: an append-only, hash-chained log of alerts (JSON lines) that survives crashes
//! and power cuts and shows tampering.
//!
//! # On disk
//!
//! A directory holding `journal-000001.jsonl`, `journal-000002.jsonl`, ... (numbered without gaps,
//! oldest first; [`file_name`]) and, once retention has deleted a file, `journal.anchor`. Each line
//! of a journal file is one record, compact JSON followed by `\n`:
//!
//! ```text
//! {"seq":7,"time":"2025-03-01T12:00:00.123Z","prev":"<64 hex>","record":{...},"hash":"<64 hex>"}
//! ```
//!
//! - `seq`: 1 for the first record ever written, then +1 per record, across files.
//! - `time`: when the record was appended, RFC 3339 UTC with milliseconds. Wall clock: it may step
//!   backwards after an NTP correction, so [`verify`] does not require it to increase.
//! - `prev`: the `hash` of the record before it, or 64 zeros ([`GENESIS_PREV`]) for seq 1.
//! - `record`: the caller's payload, any JSON value.
//! - `hash`: lowercase hex SHA-256 of the line's *body*. The body is the compact JSON object
//!   `{"seq":..,"time":..,"prev":..,"record":..}` (members in this order); the line is the body with
//!   `,"hash":"<hex>"` inserted before its closing brace. So to recompute it from a line (without
//!   the `\n`): drop its last 75 bytes (`,"hash":"` + 64 hex digits + `"}`), append `}`, hash those
//!   bytes. The verifier hashes the bytes as they are on disk, never a re-serialisation, so the check
//!   does not depend on how serde_json orders object members or prints numbers.
//!
//! `journal.anchor` is `{"file":N,"seq":S,"prev":"<64 hex>"}`: `journal-N` must be the oldest file
//! and its first record must have seq S and prev `<hex>`. Retention writes it (temporary file, fsync,
//! rename) *before* deleting the oldest file(s), so a crash in between leaves files older than N,
//! which open deletes and verify skips. Without an anchor the journal must start at
//! `journal-000001.jsonl` with seq 1 and prev [`GENESIS_PREV`].
//!
//! # Durability
//!
//! [`Journal::append`] writes one line with a single `write_all`, then `sync_data`, then returns: a
//! record reported as appended survives a power cut. A file is never rewritten. Rotation: when a line
//! would take the current file past `max_file_bytes`, the next file is created and the directory
//! fsynced before the line goes into it; a file holds at least one record, whatever its size.
//!
//! A power cut during an append leaves a *torn last line*: the end of the last file lacks its `\n`,
//! or contains NUL bytes (the file size reached the disk, the data did not). [`Journal::open`]
//! truncates exactly that line away (warning with its file, line and size) and continues the chain
//! from the record before it; earlier complete lines are never touched. A last line that is complete
//! text but does not check out (bad hash, not JSON) is not what a power cut produces: open refuses it
//! instead of deleting evidence. A failed write is undone (truncated back) before append returns the
//! error; if even that fails, the journal refuses further appends until it is reopened.
//!
//! Writers take `journal.lock` (an advisory `flock` on a file in the directory) for each append
//! and for open's recovery, and an append first checks whether another process appended since
//! (the current file grew, or a newer one exists) and continues the chain from there. So the
//! appliance (`run`) and the command line (`flash --force` journals itself) can both append to one
//! journal; each append waits at most for the other's fsyncs.
//!
//! # What [`verify`] detects, and what it cannot
//!
//! Any changed byte in a line (hash mismatch), a deleted, inserted or moved line (seq or prev
//! mismatch), a file missing in the numbering, the oldest file(s) deleted without the anchor, garbage
//! lines, and torn lines anywhere but at the very end (which is reported, not failed:
//! [`VerifyReport::torn_last_line`]). The chain has no secret: someone who rewrites a line *and*
//! every line after it, or deletes the newest records, or rewrites the anchor, is not detected by the
//! journal alone. The *checkpoint* catches a deleted end: see below and [`verify_sealed`].
//!
//! # Checkpoint
//!
//! A journal opened with a [`Seal`] ([`Journal::open_sealed`], as the appliance does) rewrites,
//! after every append, an HMAC-authenticated checkpoint of its head (seq and hash) outside the
//! journal directory, keyed by a device secret created at first start (see `checkpoint`). Open
//! compares the chain with it *before* truncating a torn last line, so a "torn" line that is a
//! checkpointed record is not silently cut: the problem, the line's bytes included, goes into a
//! `journal-tamper` record, which [`verify_sealed`] reports from then on. The head also goes out in
//! every webhook payload and in `/metrics` ([`Journal::head`]), for a copy kept off the device.
//!
//! # Code
//!
//! This module holds the writer ([`Journal`]: open, append, rotation, retention). The rest:
//!
//! - `error`: [`JournalError`] and its coarse [`JournalErrorKind`].
//! - `line`: the line format: encoding a record, checking one line on its own, times and hashes.
//! - `files`: the directory: journal file names and listing, `journal.anchor`, directory fsync.
//! - `tail`: reading the ends of a journal file, and recovering from a torn last line.
//! - `secret`, `checkpoint`: the device secret (HMAC-SHA256) and the sealed head ([`Seal`]).
//! - `read`: the read side of a whole directory: [`verify`], [`read_recent`], and [`scan`] and
//!   [`read_at`], which find records by their [`Position`] (the alert list's index).
//! - `tests` (test builds only): the writer, its recovery on open, and what verify then sees.

mod checkpoint;
mod error;
mod files;
mod line;
mod read;
mod secret;
mod tail;

#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

pub use checkpoint::{
    CHECKPOINT_FILE, Checkpoint, SECRET_FILE, Seal, Sealed, Standing, TAMPER_RECORD,
};
pub use error::{JournalError, JournalErrorKind};
pub use files::{ANCHOR_FILE, Anchor, LOCK_FILE, file_name};
pub use line::{Entry, GENESIS_PREV};
pub use read::{
    Position, SealStatus, TornLine, VerifyReport, read_at, read_recent, scan, verify, verify_sealed,
};
pub use secret::DeviceSecret;

use checkpoint::tamper_record;
use error::{Result, io_err};
use files::{list_files, read_anchor, sync_dir, write_anchor};
use line::{encode_line, format_time};
use read::hash_at;
use tail::{Torn, first_entry, inspect_tail, truncate_torn};

/// Size limits of a journal directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// A file is closed and the next one started when a line would take it past this many bytes.
    pub max_file_bytes: u64,
    /// At most this many files are kept; the oldest are deleted (and the anchor moved) beyond it.
    pub max_files: usize,
}

impl Default for JournalOptions {
    /// 4 MiB x 16 files: about 150 000 alerts of ~400 bytes.
    fn default() -> Self {
        JournalOptions {
            max_file_bytes: 4 * 1024 * 1024,
            max_files: 16,
        }
    }
}

/// What [`Journal::append`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: String,
    /// Where the line went, for [`read_at`].
    pub position: Position,
}

/// The chain's head: the last record's seq and hash (seq 0 and [`GENESIS_PREV`] before the
/// first), as the webhook and `/metrics` publish it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// The append side of a journal directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    opts: JournalOptions,
    /// `journal.lock`, flocked around each append and open's recovery.
    lock: File,
    seal: Option<Seal>,
    file: File,
    file_no: u64,
    /// Bytes in the current file; tracked here so appends never read the file.
    file_len: u64,
    next_seq: u64,
    last_hash: String,
    /// A failed write could not be truncated back: appending after it would follow garbage.
    poisoned: bool,
    /// The last checkpoint write failed (a full filesystem): logged once, not per append.
    checkpoint_failing: bool,
}

/// Where the chain stands: the next record gets `next_seq` and `prev = last_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainState {
    next_seq: u64,
    last_hash: String,
}

impl ChainState {
    fn genesis(anchor: Option<&Anchor>) -> Self {
        match anchor {
            Some(a) => ChainState {
                next_seq: a.seq,
                last_hash: a.prev.clone(),
            },
            None => ChainState {
                next_seq: 1,
                last_hash: GENESIS_PREV.to_string(),
            },
        }
    }
}

impl Journal {
    /// Open (or create) the journal in `dir` and recover where the chain stands from the end of the
    /// last file, truncating a torn last line (see the module header). Only the last file's tail is
    /// read; [`verify`] checks the rest. Unsealed: no checkpoint is kept (tests, tools).
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<Journal> {
        Self::open_with(dir, opts, None)
    }

    /// [`Journal::open`], then the chain against the checkpoint of `seal` (which every append
    /// then rewrites). A problem found is journaled as a `journal-tamper` record rather than
    /// refused, so the appliance keeps running and the evidence stays (see the module header).
    pub fn open_sealed(dir: &Path, opts: JournalOptions, seal: Seal) -> Result<Journal> {
        Self::open_with(dir, opts, Some(seal))
    }

    fn open_with(dir: &Path, opts: JournalOptions, seal: Option<Seal>) -> Result<Journal> {
        if opts.max_files == 0 {
            return Err(JournalError::InvalidOptions {
                reason: "max-files must be at least 1".into(),
            });
        }
        if opts.max_file_bytes == 0 {
            return Err(JournalError::InvalidOptions {
                reason: "max-file-bytes must be at least 1".into(),
            });
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        // On an error the lock file is closed, which releases the lock.
        let journal = Self::recover(dir, opts, lock, seal)?;
        journal.unlock();
        tracing::debug!(dir = %dir.display(), file_no = journal.file_no, next_seq = journal.next_seq, "journal opened");
        Ok(journal)
    }

    /// Where the chain stands on disk (with the lock held): files older than the anchor deleted,
    /// the last file's tail read, a torn last line truncated unless the checkpoint covers it.
    fn recover(
        dir: &Path,
        opts: JournalOptions,
        lock: File,
        seal: Option<Seal>,
    ) -> Result<Journal> {
        let anchor = read_anchor(dir)?;
        let mut files = list_files(dir)?;
        if let Some(a) = &anchor {
            // Retention wrote the anchor, then crashed before deleting: finish its job.
            let stale: Vec<_> = files
                .iter()
                .filter(|(no, _)| *no < a.file)
                .cloned()
                .collect();
            for (_, path) in &stale {
                tracing::warn!(file = %path.display(), "deleting a file older than journal.anchor");
                fs::remove_file(path).map_err(io_err(path))?;
            }
            if !stale.is_empty() {
                sync_dir(dir)?;
            }
            files.retain(|(no, _)| *no >= a.file);
        }

        let (file_no, state, torn) = match files.last() {
            None => (
                anchor.as_ref().map_or(1, |a| a.file),
                ChainState::genesis(anchor.as_ref()),
                None,
            ),
            Some((no, path)) => {
                let (state, torn) = inspect_tail(path, true)?;
                let state = match state {
                    Some(s) => s,
                    // The last file holds no record: created just before a power cut, or its
                    // only line was torn. The chain continues from the file before it.
                    None => match files.len().checked_sub(2).map(|i| &files[i].1) {
                        Some(before) => inspect_tail(before, false)?.0.ok_or_else(|| {
                            JournalError::Malformed {
                                file: before.clone(),
                                line: 1,
                                reason: "holds no record, but a newer file exists".into(),
                            }
                        })?,
                        None => ChainState::genesis(anchor.as_ref()),
                    },
                };
                (*no, state, torn)
            }
        };
        let head_seq = state.next_seq.saturating_sub(1);
        let check = match &seal {
            Some(seal) => seal_check(seal, &files, head_seq, &state.last_hash, torn.as_ref())?,
            None => SealCheck::Current,
        };
        if let Some(t) = &torn {
            truncate_torn(t)?;
        }

        let path = dir.join(file_name(file_no));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if files.is_empty() {
            sync_dir(dir)?;
        }
        let file_len = file.metadata().map_err(io_err(&path))?.len();
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            opts,
            lock,
            seal,
            file,
            file_no,
            file_len,
            next_seq: state.next_seq,
            last_hash: state.last_hash,
            poisoned: false,
            checkpoint_failing: false,
        };
        journal.enforce_retention_logged();
        match check {
            SealCheck::Current => {}
            // Not fatal, as after an append: a checkpoint behind the chain is one the chain
            // holds, and a device on a full filesystem must still start.
            SealCheck::Reseal => journal.checkpoint_logged(SystemTime::now()),
            SealCheck::Evidence(record) => {
                tracing::error!(
                    problem = record["problem"].as_str().unwrap_or_default(),
                    "journal: tampering found at open; journaled as a `{TAMPER_RECORD}` record"
                );
                journal.append_locked(record, SystemTime::now())?;
            }
        }
        Ok(journal)
    }

    /// The chain's head (see [`Head`]) as this process last wrote or read it.
    pub fn head(&self) -> Head {
        Head {
            seq: self.last_seq(),
            hash: self.last_hash.clone(),
        }
    }

    fn unlock(&self) {
        if let Err(e) = self.lock.unlock() {
            tracing::warn!(error = %e, "journal: cannot release journal.lock");
        }
    }

    /// Another process appended since this one last did (the current file grew, or a newer file
    /// exists): take the chain up from where it stands now. Called with the lock held.
    fn catch_up(&mut self) -> Result<()> {
        let path = self.current_file();
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX);
        let newer = self.dir.join(file_name(self.file_no + 1)).exists();
        if len == self.file_len && !newer {
            return Ok(());
        }
        tracing::debug!(dir = %self.dir.display(), "journal: another process appended; catching up");
        let lock = self.lock.try_clone().map_err(io_err(&self.dir))?;
        match Self::recover(&self.dir, self.opts, lock, self.seal.take()) {
            Ok(fresh) => {
                *self = fresh;
                Ok(())
            }
            Err(e) => {
                // Where the chain stands is unknown (and the seal went with the attempt).
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// [`Self::write_checkpoint`], a failure logged (once until a write succeeds again).
    fn checkpoint_logged(&mut self, time: SystemTime) {
        match self.write_checkpoint(time) {
            Ok(()) if self.checkpoint_failing => {
                self.checkpoint_failing = false;
                tracing::info!(
                    seq = self.last_seq(),
                    "journal: the checkpoint is written again"
                );
            }
            Ok(()) => {}
            Err(e) if !self.checkpoint_failing => {
                self.checkpoint_failing = true;
                tracing::error!(error = %e, seq = self.last_seq(), "journal: the checkpoint could not be written");
            }
            Err(_) => {}
        }
    }

    /// The checkpoint for the head. A deferred seal first tries to create its secret again
    /// (still no space: nothing is written, and nothing logged here: the appliance reported it
    /// once); the first append that creates it seals the head.
    fn write_checkpoint(&mut self, time: SystemTime) -> Result<()> {
        let (seq, time) = (self.last_seq(), format_time(time));
        let Some(seal) = &mut self.seal else {
            return Ok(());
        };
        if !seal.ensure_secret()? {
            return Ok(());
        }
        seal.write(seq, &self.last_hash, &time)
    }

    /// Whether appends are checkpointed: opened with a seal that has its secret (a deferred
    /// seal has none until an append creates it).
    pub fn is_sealed(&self) -> bool {
        self.seal.as_ref().is_some_and(Seal::has_secret)
    }

    /// Append `record` stamped with the current time; durable (fsynced) when this returns Ok.
    pub fn append(&mut self, record: Value) -> Result<Appended> {
        self.append_at(record, SystemTime::now())
    }

    /// [`Journal::append`] with a given time (tests, replays). Times outside 1970..=9999 are
    /// clamped: a wrong real-time clock must not take the alert path down.
    pub fn append_at(&mut self, record: Value, time: SystemTime) -> Result<Appended> {
        let lock_path = self.dir.join(LOCK_FILE);
        self.lock.lock().map_err(io_err(&lock_path))?;
        let done = self
            .catch_up()
            .and_then(|()| self.append_locked(record, time));
        self.unlock();
        done
    }

    /// [`Journal::append_at`] with the lock held; then the checkpoint, when sealed. A checkpoint
    /// that cannot be written is logged, not returned: the record is durable, and a checkpoint
    /// left behind the chain is still one the chain holds.
    fn append_locked(&mut self, record: Value, time: SystemTime) -> Result<Appended> {
        if self.poisoned {
            return Err(JournalError::Poisoned {
                path: self.current_file(),
            });
        }
        let seq = self.next_seq;
        let next_seq = seq.checked_add(1).ok_or_else(|| JournalError::Malformed {
            file: self.current_file(),
            line: 0,
            reason: format!("seq {seq} is the largest possible; the journal cannot continue"),
        })?;
        let (line, hash) = encode_line(seq, &format_time(time), &self.last_hash, &record);
        let rotate = self.file_len > 0
            && self.file_len.saturating_add(line.len() as u64) > self.opts.max_file_bytes;
        if rotate {
            self.rotate()?;
        }
        let position = Position {
            file: self.file_no,
            offset: self.file_len,
            len: line.len() as u64 - 1,
        };
        self.write_line(&line)?;
        self.next_seq = next_seq;
        self.last_hash.clone_from(&hash);
        if rotate {
            self.enforce_retention_logged();
        }
        self.checkpoint_logged(time);
        Ok(Appended {
            seq,
            hash,
            position,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file the next record goes to (unless it rotates).
    pub fn current_file(&self) -> PathBuf {
        self.dir.join(file_name(self.file_no))
    }

    /// seq of the last record written, 0 (or the anchor's seq - 1) when there is none.
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// hash of the last record written; the next record's prev.
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    fn write_line(&mut self, line: &[u8]) -> Result<()> {
        let written = full_for_test()
            .and_then(|()| self.file.write_all(line))
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Leave no partial line behind: the next append would follow it and break the file.
            let undone = self
                .file
                .set_len(self.file_len)
                .and_then(|()| self.file.sync_all());
            if undone.is_err() {
                self.poisoned = true;
            }
            return Err(JournalError::Io {
                path: self.current_file(),
                source,
            });
        }
        self.file_len += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        let file_no = self.file_no + 1;
        let path = self.dir.join(file_name(file_no));
        // Not create_new: an empty file left by a rotation whose directory fsync failed is reused.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len != 0 {
            return Err(JournalError::Io {
                path,
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("the next journal file already holds {len} bytes"),
                ),
            });
        }
        sync_dir(&self.dir)?;
        tracing::info!(file = %path.display(), "journal rotated");
        self.file = file;
        self.file_no = file_no;
        self.file_len = 0;
        Ok(())
    }

    /// Retention is best effort: the record is already durable, so a failure is logged and the
    /// deletion retried at the next rotation or open.
    fn enforce_retention_logged(&mut self) {
        if let Err(e) = self.enforce_retention() {
            tracing::warn!(error = %e, "journal retention failed; old files kept for now");
        }
    }

    fn enforce_retention(&mut self) -> Result<()> {
        let files = list_files(&self.dir)?;
        let Some(keep) = files.len().checked_sub(self.opts.max_files) else {
            return Ok(());
        };
        if keep == 0 {
            return Ok(());
        }
        let (keep_no, keep_path) = &files[keep];
        let anchor = if *keep_no == self.file_no && self.file_len == 0 {
            Anchor {
                file: *keep_no,
                seq: self.next_seq,
                prev: self.last_hash.clone(),
            }
        } else {
            let first = first_entry(keep_path)?;
            Anchor {
                file: *keep_no,
                seq: first.seq,
                prev: first.prev,
            }
        };
        write_anchor(&self.dir, &anchor)?;
        for (_, path) in &files[..keep] {
            fs::remove_file(path).map_err(io_err(path))?;
            tracing::info!(file = %path.display(), "journal retention deleted the oldest file");
        }
        sync_dir(&self.dir)
    }
}

/// Fault test hook: while the file that `FIRM_TEST_JOURNAL_FULL_WHILE` names exists, appends,
/// and the creation of the device secret, fail as on a full filesystem (ENOSPC), for machines
/// where a test cannot mount a small one (tests/faults.rs). It has no other effect.
fn full_for_test() -> io::Result<()> {
    static FLAG: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let flag =
        FLAG.get_or_init(|| std::env::var_os("FIRM_TEST_JOURNAL_FULL_WHILE").map(Into::into));
    match flag {
        Some(p) if p.exists() => Err(io::Error::from_raw_os_error(
            rustix::io::Errno::NOSPC.raw_os_error(),
        )),
        _ => Ok(()),
    }
}

/// What open does after comparing the chain with the checkpoint.
enum SealCheck {
    /// The checkpoint is the head.
    Current,
    /// Write the checkpoint for the head (a first start, or a checkpoint left behind by a crash).
    Reseal,
    /// Append this `journal-tamper` record (which seals the new head).
    Evidence(Value),
}

/// Compare the chain's head (before a torn line is truncated) with the checkpoint of `seal`.
fn seal_check(
    seal: &Seal,
    files: &[(u64, PathBuf)],
    head_seq: u64,
    head_hash: &str,
    torn: Option<&Torn>,
) -> Result<SealCheck> {
    let evidence = |e: JournalError, cp: Option<&Checkpoint>| {
        Ok(SealCheck::Evidence(tamper_record(
            &e, cp, head_seq, head_hash, torn,
        )))
    };
    if !seal.has_secret() {
        // A deferred seal: nothing to check against until the secret exists (none can have
        // sealed anything yet); the append that creates it seals the head.
        return Ok(SealCheck::Current);
    }
    match seal.read()? {
        // A secret created by this start: the first start, or one after an upgrade from a
        // version without checkpoints. A journal without records has nothing to lose.
        Sealed::Missing if seal.created() || head_seq == 0 => Ok(SealCheck::Reseal),
        Sealed::Missing => evidence(
            JournalError::CheckpointMissing {
                path: seal.path().to_path_buf(),
                secret: seal.secret_path().to_path_buf(),
                last_seq: head_seq,
            },
            None,
        ),
        Sealed::Forged(reason) => evidence(
            JournalError::CheckpointForged {
                path: seal.path().to_path_buf(),
                reason,
            },
            None,
        ),
        Sealed::Good(cp) => {
            let at_cp = if cp.seq < head_seq {
                hash_at(files, cp.seq)?
            } else {
                None
            };
            match seal.compare(&cp, head_seq, head_hash, at_cp.as_deref()) {
                Ok(Standing::Current) => Ok(SealCheck::Current),
                Ok(_) => Ok(SealCheck::Reseal),
                Err(e) => evidence(e, Some(&cp)),
            }
        }
    }
}

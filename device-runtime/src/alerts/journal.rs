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
//! One process writes a journal directory at a time; nothing here locks it.
//!
//! # What [`verify`] detects, and what it cannot
//!
//! Any changed byte in a line (hash mismatch), a deleted, inserted or moved line (seq or prev
//! mismatch), a file missing in the numbering, the oldest file(s) deleted without the anchor, garbage
//! lines, and torn lines anywhere but at the very end (which is reported, not failed:
//! [`VerifyReport::torn_last_line`]). The chain has no secret: someone who rewrites a line *and*
//! every line after it, or deletes the newest records, or rewrites the anchor, is not detected by the
//! journal alone. Compare [`VerifyReport::last_seq`] / [`VerifyReport::last_hash`] with a copy kept
//! elsewhere (the webhook receiver sees every `seq` and `hash`) to catch that.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev` of the very first record of a journal: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Name of the anchor file in the journal directory.
pub const ANCHOR_FILE: &str = "journal.anchor";

const FILE_PREFIX: &str = "journal-";
const FILE_SUFFIX: &str = ".jsonl";
const HASH_KEY: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`: what a line has after its body minus the closing brace.
const HASH_TAIL_LEN: usize = HASH_KEY.len() + 64 + 2;
/// First read size when looking at the end of a file; doubled until enough lines are in view.
const TAIL_CHUNK: u64 = 8 * 1024;

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
}

/// One record as read back ([`read_recent`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub prev: String,
    pub record: Value,
    pub hash: String,
}

impl Entry {
    /// [`Entry::time`] as a [`SystemTime`].
    pub fn system_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.time).ok()
    }
}

/// Contents of `journal.anchor`: where the journal starts after retention deleted older files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// Number of the oldest file that must remain.
    pub file: u64,
    /// seq of its first record.
    pub seq: u64,
    /// prev of its first record (the hash of the last deleted record).
    pub prev: String,
}

/// A line cut short by a power cut at the very end of the journal (see the module header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornLine {
    pub file: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// Byte offset in the file where the torn line starts.
    pub offset: u64,
    pub bytes: u64,
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Journal files checked (files older than the anchor, awaiting deletion, are not counted).
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The hash the next record must chain to (the anchor's or genesis prev when there is none).
    pub last_hash: String,
    pub anchor: Option<Anchor>,
    /// Set when the last file ends in a torn line: a power cut during an append, not tampering.
    pub torn_last_line: Option<TornLine>,
}

/// What went wrong, naming the file, the line and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid journal options: {reason}")]
    InvalidOptions { reason: String },
    #[error(
        "journal {path}: an earlier write failed and could not be undone; reopen the journal \
         (open truncates the partial line)"
    )]
    Poisoned { path: PathBuf },
    #[error("{}:{line}: not a journal record: {reason}", file.display())]
    Malformed {
        file: PathBuf,
        line: u64,
        reason: String,
    },
    #[error(
        "{}:{line}: hash mismatch: the line says {found}, its content hashes to {expected} \
         (the line was edited or forged)", file.display()
    )]
    HashMismatch {
        file: PathBuf,
        line: u64,
        expected: String,
        found: String,
    },
    #[error(
        "{}:{line}: expected seq {expected}, found {found} (a record was deleted, inserted or \
         moved)", file.display()
    )]
    SeqMismatch {
        file: PathBuf,
        line: u64,
        expected: u64,
        found: u64,
    },
    #[error(
        "{}:{line}: prev is {found}, expected {expected}, the hash of the record before it (a \
         record before it was edited, deleted or replaced)", file.display()
    )]
    PrevMismatch {
        file: PathBuf,
        line: u64,
        expected: String,
        found: String,
    },
    #[error(
        "{}:{line}: the journal starts with seq {found_seq} and prev {found_prev}; expected seq \
         {expected_seq} and prev {expected_prev} ({}): records or files at the start were \
         deleted", file.display(),
        anchor.as_ref().map_or("no journal.anchor: the journal must start at its first record".into(),
            |a| format!("from {}", a.display()))
    )]
    StartMismatch {
        file: PathBuf,
        line: u64,
        anchor: Option<PathBuf>,
        expected_seq: u64,
        found_seq: u64,
        expected_prev: String,
        found_prev: String,
    },
    #[error(
        "{} is missing: {}", expected.display(),
        found.as_ref().map_or("there are no journal files".into(),
            |f| format!("the journal continues with {}", f.display()))
    )]
    FileMissing {
        expected: PathBuf,
        found: Option<PathBuf>,
    },
    #[error(
        "{}:{line}: torn line (no newline, or NUL bytes) at byte {offset}, but it is not the end \
         of the journal", file.display()
    )]
    TornLine {
        file: PathBuf,
        line: u64,
        offset: u64,
    },
    #[error("{}: {reason}", path.display())]
    Anchor { path: PathBuf, reason: String },
}

/// Coarse classes of [`JournalError`], for code that decides whether to retry, reopen or alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalErrorKind {
    /// The file system refused (disk full, permissions, a failed write): retry or reopen.
    Io,
    /// The caller passed impossible options.
    InvalidOptions,
    /// The content contradicts its own hashes, sequence numbers or anchor: someone changed it.
    Tampered,
    /// The content is not journal data at all (garbage, a torn line in the middle, a bad anchor).
    Corrupt,
}

impl JournalError {
    pub fn kind(&self) -> JournalErrorKind {
        match self {
            JournalError::Io { .. } | JournalError::Poisoned { .. } => JournalErrorKind::Io,
            JournalError::InvalidOptions { .. } => JournalErrorKind::InvalidOptions,
            JournalError::HashMismatch { .. }
            | JournalError::SeqMismatch { .. }
            | JournalError::PrevMismatch { .. }
            | JournalError::StartMismatch { .. }
            | JournalError::FileMissing { .. } => JournalErrorKind::Tampered,
            JournalError::Malformed { .. }
            | JournalError::TornLine { .. }
            | JournalError::Anchor { .. } => JournalErrorKind::Corrupt,
        }
    }
}

type Result<T, E = JournalError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The append side of a journal directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    opts: JournalOptions,
    file: File,
    file_no: u64,
    /// Bytes in the current file; tracked here so appends never read the file.
    file_len: u64,
    next_seq: u64,
    last_hash: String,
    /// A failed write could not be truncated back: appending after it would follow garbage.
    poisoned: bool,
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
    /// read; [`verify`] checks the rest.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<Journal> {
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

        let (file_no, state) = match files.last() {
            None => (
                anchor.as_ref().map_or(1, |a| a.file),
                ChainState::genesis(anchor.as_ref()),
            ),
            Some((no, path)) => {
                let state = match recover_tail(path, true)? {
                    Some(s) => s,
                    // The last file holds no record: created just before a power cut, or its only
                    // line was torn. The chain continues from the file before it.
                    None => match files.len().checked_sub(2).map(|i| &files[i].1) {
                        Some(before) => {
                            recover_tail(before, false)?.ok_or_else(|| JournalError::Malformed {
                                file: before.clone(),
                                line: 1,
                                reason: "holds no record, but a newer file exists".into(),
                            })?
                        }
                        None => ChainState::genesis(anchor.as_ref()),
                    },
                };
                (*no, state)
            }
        };

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
            file,
            file_no,
            file_len,
            next_seq: state.next_seq,
            last_hash: state.last_hash,
            poisoned: false,
        };
        journal.enforce_retention_logged();
        tracing::debug!(dir = %dir.display(), file_no, next_seq = journal.next_seq, "journal opened");
        Ok(journal)
    }

    /// Append `record` stamped with the current time; durable (fsynced) when this returns Ok.
    pub fn append(&mut self, record: Value) -> Result<Appended> {
        self.append_at(record, SystemTime::now())
    }

    /// [`Journal::append`] with a given time (tests, replays). Times outside 1970..=9999 are
    /// clamped: a wrong real-time clock must not take the alert path down.
    pub fn append_at(&mut self, record: Value, time: SystemTime) -> Result<Appended> {
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
        self.write_line(&line)?;
        self.next_seq = next_seq;
        self.last_hash.clone_from(&hash);
        if rotate {
            self.enforce_retention_logged();
        }
        Ok(Appended { seq, hash })
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
        let written = self
            .file
            .write_all(line)
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

/// File name of journal file number `no` (1-based): `journal-000001.jsonl`.
pub fn file_name(no: u64) -> String {
    format!("{FILE_PREFIX}{no:06}{FILE_SUFFIX}")
}

/// Check the whole journal in `dir` (see the module header for what is and is not detected).
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let anchor = read_anchor(dir)?;
    let anchor_path = anchor.as_ref().map(|_| dir.join(ANCHOR_FILE));
    let mut files = list_files(dir)?;
    if let Some(a) = &anchor {
        // Older files are leftovers of a retention interrupted between anchor and deletion.
        files.retain(|(no, _)| *no >= a.file);
    }
    let first_no = anchor.as_ref().map_or(1, |a| a.file);
    let mut expected_no = first_no;
    for (no, path) in &files {
        if *no != expected_no {
            return Err(JournalError::FileMissing {
                expected: dir.join(file_name(expected_no)),
                found: Some(path.clone()),
            });
        }
        expected_no = no.saturating_add(1);
    }
    if files.is_empty() && anchor.is_some() {
        // An anchor is only written while newer files remain.
        return Err(JournalError::FileMissing {
            expected: dir.join(file_name(first_no)),
            found: None,
        });
    }

    let start = ChainState::genesis(anchor.as_ref());
    let mut report = VerifyReport {
        files: files.len(),
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: start.last_hash.clone(),
        anchor: anchor.clone(),
        torn_last_line: None,
    };
    // None after a record with seq u64::MAX: nothing may follow it.
    let mut expected_seq = Some(start.next_seq);
    for (i, (_, path)) in files.iter().enumerate() {
        let is_last_file = i + 1 == files.len();
        let mut reader = BufReader::new(File::open(path).map_err(io_err(path))?);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        let mut offset = 0u64;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let complete = buf.last() == Some(&b'\n');
            let content = if complete { &buf[..n - 1] } else { &buf[..] };
            let at_end = !complete || reader.fill_buf().map_err(io_err(path))?.is_empty();
            if !complete || content.contains(&0) {
                if is_last_file && at_end {
                    report.torn_last_line = Some(TornLine {
                        file: path.clone(),
                        line: line_no,
                        offset,
                        bytes: n as u64,
                    });
                    break;
                }
                return Err(JournalError::TornLine {
                    file: path.clone(),
                    line: line_no,
                    offset,
                });
            }
            let entry = parse_line(content).map_err(|f| f.at(path, line_no))?;
            let Some(expected) = expected_seq else {
                return Err(JournalError::Malformed {
                    file: path.clone(),
                    line: line_no,
                    reason: format!("follows a record with seq {}", u64::MAX),
                });
            };
            if report.records == 0 && (entry.seq != expected || entry.prev != report.last_hash) {
                return Err(JournalError::StartMismatch {
                    file: path.clone(),
                    line: line_no,
                    anchor: anchor_path,
                    expected_seq: expected,
                    found_seq: entry.seq,
                    expected_prev: report.last_hash,
                    found_prev: entry.prev,
                });
            }
            if entry.seq != expected {
                return Err(JournalError::SeqMismatch {
                    file: path.clone(),
                    line: line_no,
                    expected,
                    found: entry.seq,
                });
            }
            if entry.prev != report.last_hash {
                return Err(JournalError::PrevMismatch {
                    file: path.clone(),
                    line: line_no,
                    expected: report.last_hash,
                    found: entry.prev,
                });
            }
            report.records += 1;
            report.first_seq.get_or_insert(entry.seq);
            report.last_seq = Some(entry.seq);
            report.last_hash = entry.hash;
            expected_seq = entry.seq.checked_add(1);
            offset += n as u64;
        }
    }
    Ok(report)
}

/// The last `n` records (newest last), for the alert list after a restart. Reads only the ends of
/// the newest files. Lines that do not check out on their own (torn, garbage, hash mismatch) are
/// skipped; the chain between records is [`verify`]'s job. A missing directory has no records.
pub fn read_recent(dir: &Path, n: usize) -> Result<Vec<Entry>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let files = match list_files(dir) {
        Ok(files) => files,
        Err(JournalError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut newest_first: Vec<Vec<Entry>> = Vec::new();
    let mut have = 0;
    for (_, path) in files.iter().rev() {
        let mut file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let want = n - have;
        let (start, buf) = read_tail(&mut file, len, TAIL_CHUNK, |buf| {
            valid_entries(buf, false).len() >= want
        })
        .map_err(io_err(path))?;
        let mut entries = valid_entries(&buf, start == 0);
        let skip = entries.len().saturating_sub(want);
        entries.drain(..skip);
        have += entries.len();
        newest_first.push(entries);
        if have >= n {
            break;
        }
    }
    Ok(newest_first.into_iter().rev().flatten().collect())
}

/// Why one line, looked at on its own, is not a record.
#[derive(Debug)]
enum LineFault {
    Malformed(String),
    Hash { expected: String, found: String },
}

impl LineFault {
    fn at(self, file: &Path, line: u64) -> JournalError {
        let file = file.to_path_buf();
        match self {
            LineFault::Malformed(reason) => JournalError::Malformed { file, line, reason },
            LineFault::Hash { expected, found } => JournalError::HashMismatch {
                file,
                line,
                expected,
                found,
            },
        }
    }
}

/// The body as written; field order is the hashed order.
#[derive(Serialize)]
struct BodyOut<'a> {
    seq: u64,
    time: &'a str,
    prev: &'a str,
    record: &'a Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyIn {
    seq: u64,
    time: String,
    prev: String,
    record: Value,
}

/// The line for one record (with its `\n`) and its hash.
fn encode_line(seq: u64, time: &str, prev: &str, record: &Value) -> (Vec<u8>, String) {
    let body = BodyOut {
        seq,
        time,
        prev,
        record,
    };
    // A struct of a number, strings and a Value has no map keys that could fail to serialise.
    let mut line = serde_json::to_vec(&body).unwrap_or_default();
    let hash = sha256_hex(&line);
    debug_assert_eq!(line.last(), Some(&b'}'));
    line.pop();
    line.extend_from_slice(HASH_KEY);
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, hash)
}

/// Check one line (without its `\n`) on its own: hash over the body as on disk, then structure.
fn parse_line(line: &[u8]) -> Result<Entry, LineFault> {
    let bad_tail = || {
        LineFault::Malformed("does not end with ,\"hash\":\"<64 lowercase hex digits>\"}".into())
    };
    let split = line.len().checked_sub(HASH_TAIL_LEN).ok_or_else(bad_tail)?;
    let (head, tail) = line.split_at(split);
    if !tail.starts_with(HASH_KEY) || !tail.ends_with(b"\"}") {
        return Err(bad_tail());
    }
    let found = &tail[HASH_KEY.len()..HASH_KEY.len() + 64];
    if !is_hash_hex(found) {
        return Err(bad_tail());
    }
    let mut body = Vec::with_capacity(split + 1);
    body.extend_from_slice(head);
    body.push(b'}');
    let expected = sha256_hex(&body);
    if expected.as_bytes() != found {
        return Err(LineFault::Hash {
            expected,
            found: String::from_utf8_lossy(found).into_owned(),
        });
    }
    let b: BodyIn = serde_json::from_slice(&body).map_err(|e| {
        LineFault::Malformed(format!("not a {{seq, time, prev, record}} object: {e}"))
    })?;
    if !is_hash_hex(b.prev.as_bytes()) {
        return Err(LineFault::Malformed(format!(
            "prev {:?} is not 64 lowercase hex digits",
            b.prev
        )));
    }
    if !is_canonical_time(&b.time) {
        return Err(LineFault::Malformed(format!(
            "time {:?} is not RFC 3339 UTC with milliseconds (2025-01-31T12:00:00.000Z)",
            b.time
        )));
    }
    Ok(Entry {
        seq: b.seq,
        time: b.time,
        prev: b.prev,
        record: b.record,
        hash: expected,
    })
}

fn format_time(t: SystemTime) -> String {
    // humantime panics outside 1970..=9999.
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, last)).to_string()
}

fn is_canonical_time(s: &str) -> bool {
    s.len() == 24 && s.is_ascii() && humantime::parse_rfc3339(s).is_ok_and(|t| format_time(t) == s)
}

fn sha256_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn is_hash_hex(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Journal files in `dir`, oldest first. Other names (the anchor, its temporary) are ignored.
fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name
            .strip_prefix(FILE_PREFIX)
            .and_then(|s| s.strip_suffix(FILE_SUFFIX))
        else {
            continue;
        };
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        match digits.parse::<u64>() {
            Ok(no) if no >= 1 && file_name(no) == name => files.push((no, entry.path())),
            _ => continue,
        }
    }
    files.sort();
    Ok(files)
}

fn read_anchor(dir: &Path) -> Result<Option<Anchor>> {
    let path = dir.join(ANCHOR_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(JournalError::Io { path, source }),
    };
    let bad = |reason: String| JournalError::Anchor {
        path: path.clone(),
        reason,
    };
    let anchor: Anchor = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a {{file, seq, prev}} object: {e}")))?;
    if anchor.file == 0 || anchor.seq == 0 {
        return Err(bad("file and seq start at 1".into()));
    }
    if !is_hash_hex(anchor.prev.as_bytes()) {
        return Err(bad(format!(
            "prev {:?} is not 64 lowercase hex digits",
            anchor.prev
        )));
    }
    Ok(Some(anchor))
}

fn write_anchor(dir: &Path, anchor: &Anchor) -> Result<()> {
    let path = dir.join(ANCHOR_FILE);
    let mut bytes = serde_json::to_vec(anchor).unwrap_or_default();
    bytes.push(b'\n');
    match firm_shared::fsutil::write_atomic(&path, &bytes) {
        Ok(()) => Ok(()),
        Err(firm_shared::Error::Io { source, .. }) => Err(JournalError::Io { path, source }),
        Err(e) => Err(JournalError::Io {
            path,
            source: io::Error::other(e.to_string()),
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The first record of a file that must have one (the new oldest file, for the anchor).
fn first_entry(path: &Path) -> Result<Entry> {
    let mut reader = BufReader::new(File::open(path).map_err(io_err(path))?);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
    if line.pop() != Some(b'\n') {
        return Err(JournalError::Malformed {
            file: path.to_path_buf(),
            line: 1,
            reason: "no complete first record".into(),
        });
    }
    parse_line(&line).map_err(|f| f.at(path, 1))
}

/// Read the end of `file` (of length `len`) in chunks doubling from `chunk` until `enough(buf)` or
/// the whole file is read. Returns the offset of the buffer's first byte and the buffer.
fn read_tail(
    file: &mut File,
    len: u64,
    chunk: u64,
    mut enough: impl FnMut(&[u8]) -> bool,
) -> io::Result<(u64, Vec<u8>)> {
    let mut size = chunk.max(1);
    loop {
        let take = size.min(len);
        let start = len - take;
        let mut buf = vec![0; take as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf)?;
        if start == 0 || enough(&buf) {
            return Ok((start, buf));
        }
        size = size.saturating_mul(2);
    }
}

/// Ranges (without `\n`) of the complete lines in a tail buffer. Unless the buffer starts at the
/// start of the file (`whole`), the bytes before its first `\n` may be part of a longer line.
fn complete_lines(buf: &[u8], whole: bool) -> Vec<(usize, usize)> {
    let mut lines = Vec::new();
    let mut start = if whole { Some(0) } else { None };
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            if let Some(s) = start {
                lines.push((s, i));
            }
            start = Some(i + 1);
        }
    }
    lines
}

fn valid_entries(buf: &[u8], whole: bool) -> Vec<Entry> {
    complete_lines(buf, whole)
        .into_iter()
        .filter_map(|(s, e)| parse_line(&buf[s..e]).ok())
        .collect()
}

/// 1-based number of the line that starts at byte `offset` (rare paths: errors, torn lines).
fn line_number(path: &Path, offset: u64) -> u64 {
    let Ok(file) = File::open(path) else { return 0 };
    let mut newlines = 0u64;
    let mut reader = BufReader::new(file.take(offset));
    let mut buf = [0u8; 8192];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        newlines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    newlines + 1
}

/// Where the chain stands at the end of `path`, or None if it holds no record. With `is_last`, a
/// torn last line is truncated away; elsewhere it is an error.
fn recover_tail(path: &Path, is_last: bool) -> Result<Option<ChainState>> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(is_last)
        .open(path)
        .map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    // Three newlines in view: a torn line plus the complete record before it.
    let (start, buf) = read_tail(&mut file, len, TAIL_CHUNK, |buf| {
        buf.iter().filter(|&&b| b == b'\n').count() >= 3
    })
    .map_err(io_err(path))?;
    let mut lines = complete_lines(&buf, start == 0);
    let complete_end = lines.last().map_or(0, |&(_, e)| e + 1);
    // Where torn bytes start, as an index into buf.
    let torn_at = if complete_end < buf.len() {
        Some(complete_end)
    } else {
        match lines.last() {
            Some(&(s, e)) if buf[s..e].contains(&0) => {
                lines.pop();
                Some(s)
            }
            _ => None,
        }
    };
    let state = match lines.last() {
        None => None,
        Some(&(s, e)) => {
            let entry = parse_line(&buf[s..e])
                .map_err(|f| f.at(path, line_number(path, start + s as u64)))?;
            let next_seq = entry
                .seq
                .checked_add(1)
                .ok_or_else(|| JournalError::Malformed {
                    file: path.to_path_buf(),
                    line: line_number(path, start + s as u64),
                    reason: format!("seq {} is the largest possible", entry.seq),
                })?;
            Some(ChainState {
                next_seq,
                last_hash: entry.hash,
            })
        }
    };
    if let Some(at) = torn_at {
        let offset = start + at as u64;
        let line = line_number(path, offset);
        if !is_last {
            return Err(JournalError::TornLine {
                file: path.to_path_buf(),
                line,
                offset,
            });
        }
        tracing::warn!(
            file = %path.display(),
            line,
            offset,
            bytes = len - offset,
            "journal: truncating a torn last line (power cut during an append)"
        );
        file.set_len(offset)
            .and_then(|()| file.sync_all())
            .map_err(io_err(path))?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + 123)
    }

    fn small(max_file_bytes: u64, max_files: usize) -> JournalOptions {
        JournalOptions {
            max_file_bytes,
            max_files,
        }
    }

    fn lines_of(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The documented format, written out by hand: body, its SHA-256, the line. (Keys already in
    /// sorted order, so the record prints the same with or without serde_json's preserve_order.)
    #[test]
    fn line_matches_the_documented_format() {
        let record_text = r#"{"a":0.1,"b":[1,"x\ny"]}"#;
        let body = format!(
            r#"{{"seq":1,"time":"2025-01-31T12:00:00.000Z","prev":"{GENESIS_PREV}","record":{record_text}}}"#
        );
        let hash = sha256_hex(body.as_bytes());
        let expected = format!("{},\"hash\":\"{hash}\"}}\n", &body[..body.len() - 1]);
        let record: Value = serde_json::from_str(record_text).unwrap();
        let (line, h) = encode_line(1, "2025-01-31T12:00:00.000Z", GENESIS_PREV, &record);
        assert_eq!(String::from_utf8(line.clone()).unwrap(), expected);
        assert_eq!(h, hash);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        // The line is a plain JSON object too, for jq users.
        let parsed: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed["hash"], json!(hash));
        let entry = parse_line(&line[..line.len() - 1]).unwrap();
        assert_eq!((entry.seq, entry.record, entry.hash), (1, record, hash));
    }

    #[test]
    fn parse_line_rejects_each_kind_of_bad_line() {
        let forge = |body: &str| {
            let hash = sha256_hex(body.as_bytes());
            format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]).into_bytes()
        };
        let malformed = |line: &[u8]| matches!(parse_line(line), Err(LineFault::Malformed(_)));
        assert!(malformed(b""));
        assert!(malformed(b"{\"seq\":1}"));
        let good = format!(
            r#"{{"seq":1,"time":"2025-01-31T12:00:00.000Z","prev":"{GENESIS_PREV}","record":null}}"#
        );
        assert!(parse_line(&forge(&good)).is_ok());
        let upper = String::from_utf8(forge(&good)).unwrap().to_uppercase();
        assert!(malformed(upper.as_bytes()));
        assert!(malformed(&forge(
            &good.replace("\"record\":null", "\"x\":1")
        )));
        assert!(malformed(&forge(
            &good.replace("\"record\":null}", "\"record\":1,\"hash\":1}")
        )));
        assert!(malformed(&forge(&good.replace(".000Z", "Z"))));
        assert!(malformed(&forge(&good.replace(".000Z", ".000+00:00"))));
        assert!(malformed(&forge(&good.replace(GENESIS_PREV, "00"))));
        assert!(malformed(&forge(&good.replace("\"seq\":1", "\"seq\":-1"))));
        let mut edited = forge(&good);
        edited[8] = b'2';
        assert!(matches!(parse_line(&edited), Err(LineFault::Hash { .. })));
    }

    #[test]
    fn times_outside_the_calendar_are_clamped_not_panicked_on() {
        assert_eq!(
            format_time(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)),
            "9999-12-31T23:59:59.000Z"
        );
        assert!(is_canonical_time(&format_time(t(1_700_000_000))));
    }

    #[test]
    fn tail_reader_grows_until_enough_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, &text).unwrap();
        let mut f = File::open(&path).unwrap();
        let len = text.len() as u64;
        let (start, buf) = read_tail(&mut f, len, 4, |b| {
            b.iter().filter(|&&c| c == b'\n').count() >= 3
        })
        .unwrap();
        assert!(start > 0);
        let lines = complete_lines(&buf, false);
        assert!(lines.len() >= 2);
        let (s, e) = *lines.last().unwrap();
        assert_eq!(&buf[s..e], b"line 99");
        let (start, buf) = read_tail(&mut f, len, 4, |_| false).unwrap();
        assert_eq!((start, buf.len()), (0, text.len()));
        assert_eq!(complete_lines(&buf, true).len(), 100);
        assert_eq!(line_number(&path, 0), 1);
        assert_eq!(line_number(&path, "line 0\n".len() as u64), 2);
    }

    #[test]
    fn append_reopen_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!((j.last_seq(), j.last_hash()), (0, GENESIS_PREV));
        let a = j.append_at(json!({"frame": 1}), t(1)).unwrap();
        let b = j.append_at(json!({"frame": 2}), t(2)).unwrap();
        assert_eq!((a.seq, b.seq), (1, 2));
        drop(j);
        let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!((j.last_seq(), j.last_hash()), (2, b.hash.as_str()));
        let c = j.append(json!({"frame": 3})).unwrap();
        assert_eq!(c.seq, 3);
        let lines = lines_of(&dir.path().join(file_name(1)));
        assert_eq!(lines.len(), 3);
        let third: Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(third["prev"], json!(b.hash));
        let report = verify(dir.path()).unwrap();
        assert_eq!(
            (report.records, report.first_seq, report.last_seq),
            (3, Some(1), Some(3))
        );
        assert_eq!(report.last_hash, c.hash);
    }

    #[test]
    fn rotation_chains_across_files() {
        let dir = tempfile::tempdir().unwrap();
        // Each line is 213 bytes: two per file.
        let mut j = Journal::open(dir.path(), small(450, 100)).unwrap();
        let mut last = None;
        for i in 0..7 {
            last = Some(j.append_at(json!({"frame": i}), t(i)).unwrap());
        }
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files.len(), 4);
        for (_, p) in &files {
            assert!(fs::metadata(p).unwrap().len() <= 450);
        }
        let first_of_2: Value = serde_json::from_str(&lines_of(&files[1].1)[0]).unwrap();
        let last_of_1: Value = serde_json::from_str(&lines_of(&files[0].1)[1]).unwrap();
        assert_eq!(first_of_2["prev"], last_of_1["hash"]);
        let report = verify(dir.path()).unwrap();
        assert_eq!((report.files, report.records), (4, 7));
        assert_eq!(report.last_hash, last.unwrap().hash);
        assert!(!dir.path().join(ANCHOR_FILE).exists());
    }

    #[test]
    fn a_line_larger_than_a_file_still_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), small(10, 100)).unwrap();
        j.append_at(json!("a"), t(1)).unwrap();
        j.append_at(json!("b"), t(2)).unwrap();
        assert_eq!(list_files(dir.path()).unwrap().len(), 2);
        assert_eq!(verify(dir.path()).unwrap().records, 2);
    }

    #[test]
    fn retention_deletes_the_oldest_and_moves_the_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), small(450, 2)).unwrap();
        for i in 0..9 {
            j.append_at(json!({"frame": i}), t(i)).unwrap();
        }
        let files = list_files(dir.path()).unwrap();
        let numbers: Vec<u64> = files.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [4, 5]);
        let anchor = read_anchor(dir.path()).unwrap().unwrap();
        let first: Value = serde_json::from_str(&lines_of(&files[0].1)[0]).unwrap();
        assert_eq!(anchor.file, 4);
        assert_eq!(json!(anchor.seq), first["seq"]);
        assert_eq!(json!(anchor.prev), first["prev"]);
        let report = verify(dir.path()).unwrap();
        assert_eq!(
            (report.first_seq, report.last_seq, report.records),
            (Some(7), Some(9), 3)
        );
        assert_eq!(report.anchor, Some(anchor));
        // Reopening with a smaller limit applies it at once.
        drop(j);
        let j = Journal::open(dir.path(), small(450, 1)).unwrap();
        assert_eq!(list_files(dir.path()).unwrap().len(), 1);
        assert_eq!(j.last_seq(), 9);
        assert_eq!(verify(dir.path()).unwrap().first_seq, Some(9));
    }

    #[test]
    fn retention_with_one_file_anchors_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), small(200, 1)).unwrap();
        for i in 0..4 {
            j.append_at(json!({"frame": i}), t(i)).unwrap();
        }
        assert_eq!(list_files(dir.path()).unwrap().len(), 1);
        let report = verify(dir.path()).unwrap();
        assert_eq!((report.first_seq, report.last_seq), (Some(4), Some(4)));
    }

    #[test]
    fn interrupted_retention_is_finished_on_open_and_skipped_by_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), small(450, 2)).unwrap();
        for i in 0..7 {
            j.append_at(json!({"frame": i}), t(i)).unwrap();
        }
        drop(j);
        // As if the crash came after the anchor moved to file 4 but before file 3 was deleted.
        let first: Value =
            serde_json::from_str(&lines_of(&dir.path().join(file_name(4)))[0]).unwrap();
        let old_anchor = fs::read(dir.path().join(ANCHOR_FILE)).unwrap();
        fs::write(dir.path().join(file_name(2)), b"stale\n").unwrap();
        let anchor = Anchor {
            file: 4,
            seq: first["seq"].as_u64().unwrap(),
            prev: first["prev"].as_str().unwrap().into(),
        };
        write_anchor(dir.path(), &anchor).unwrap();
        assert_ne!(old_anchor, fs::read(dir.path().join(ANCHOR_FILE)).unwrap());
        assert_eq!(verify(dir.path()).unwrap().files, 1);
        Journal::open(dir.path(), small(450, 2)).unwrap();
        let numbers: Vec<u64> = list_files(dir.path())
            .unwrap()
            .iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(numbers, [4]);
    }

    #[test]
    fn torn_fragment_is_truncated_on_open_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        j.append_at(json!({"frame": 1}), t(1)).unwrap();
        let b = j.append_at(json!({"frame": 2}), t(2)).unwrap();
        drop(j);
        let path = dir.path().join(file_name(1));
        let good_len = fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"seq":3,"time":"2025-01-"#).unwrap();
        drop(f);
        let torn = verify(dir.path()).unwrap().torn_last_line.unwrap();
        assert_eq!((torn.line, torn.offset), (3, good_len));

        let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
        assert_eq!((j.last_seq(), j.last_hash()), (2, b.hash.as_str()));
        assert_eq!(j.append_at(json!({"frame": 3}), t(3)).unwrap().seq, 3);
        let report = verify(dir.path()).unwrap();
        assert_eq!((report.records, report.torn_last_line), (3, None));
    }

    #[test]
    fn zero_filled_last_line_is_torn_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        j.append_at(json!({"frame": 1}), t(1)).unwrap();
        drop(j);
        let path = dir.path().join(file_name(1));
        let good_len = fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0; 150]).unwrap();
        f.write_all(b"0\"}\n").unwrap();
        drop(f);
        assert!(verify(dir.path()).unwrap().torn_last_line.is_some());
        let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
        j.append_at(json!({"frame": 2}), t(2)).unwrap();
        assert_eq!(verify(dir.path()).unwrap().records, 2);
    }

    #[test]
    fn only_torn_line_of_a_new_file_continues_from_the_file_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), small(450, 10)).unwrap();
        for i in 0..2 {
            j.append_at(json!({"frame": i}), t(i)).unwrap();
        }
        let last = j.last_hash().to_owned();
        drop(j);
        fs::write(dir.path().join(file_name(2)), b"{\"seq\":3,\"ti").unwrap();
        let mut j = Journal::open(dir.path(), small(450, 10)).unwrap();
        assert_eq!((j.last_seq(), j.last_hash()), (2, last.as_str()));
        assert_eq!(
            fs::metadata(dir.path().join(file_name(2))).unwrap().len(),
            0
        );
        j.append_at(json!({"frame": 2}), t(2)).unwrap();
        assert_eq!(verify(dir.path()).unwrap().records, 3);
    }

    #[test]
    fn open_refuses_an_edited_last_line_instead_of_truncating_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        j.append_at(json!({"verdict": "defect"}), t(1)).unwrap();
        drop(j);
        let path = dir.path().join(file_name(1));
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("defect", "ok0000");
        fs::write(&path, &text).unwrap();
        let e = Journal::open(dir.path(), JournalOptions::default()).unwrap_err();
        assert!(
            matches!(&e, JournalError::HashMismatch { line: 1, .. }),
            "{e}"
        );
        assert_eq!(e.kind(), JournalErrorKind::Tampered);
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn invalid_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for opts in [small(0, 1), small(1, 0)] {
            let e = Journal::open(dir.path(), opts).unwrap_err();
            assert_eq!(e.kind(), JournalErrorKind::InvalidOptions);
        }
    }

    #[test]
    fn read_recent_returns_the_newest_last_across_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_recent(&dir.path().join("none"), 5).unwrap().is_empty());
        let mut j = Journal::open(dir.path(), small(450, 100)).unwrap();
        for i in 0..7 {
            j.append_at(json!({"frame": i}), t(i)).unwrap();
        }
        let seqs = |n| -> Vec<u64> {
            read_recent(dir.path(), n)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(3), [5, 6, 7]);
        assert_eq!(seqs(100), [1, 2, 3, 4, 5, 6, 7]);
        assert!(seqs(0).is_empty());
        let e = read_recent(dir.path(), 1).unwrap().pop().unwrap();
        assert_eq!(e.record, json!({"frame": 6}));
        assert_eq!(e.system_time(), Some(t(6)));
    }
}

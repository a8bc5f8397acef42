//! What can go wrong with a journal: [`JournalError`], naming the file, the line and what was
//! expected, and its coarse classes ([`JournalErrorKind`]).

use std::io;
use std::path::{Path, PathBuf};

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
    #[error(
        "the journal ends at seq {last_seq} (hash {last_hash}), but the checkpoint {} (HMAC \
         good) was sealed at seq {checkpoint_seq} (hash {checkpoint_hash}): records {}..={checkpoint_seq} \
         were deleted from the journal's end", checkpoint.display(), last_seq + 1
    )]
    Truncated {
        checkpoint: PathBuf,
        checkpoint_seq: u64,
        checkpoint_hash: String,
        last_seq: u64,
        last_hash: String,
    },
    #[error(
        "the journal's record seq {seq} hashes to {found}, but the checkpoint {} (HMAC good) \
         sealed it as {expected}: the journal's end was deleted and written anew",
        checkpoint.display()
    )]
    Diverged {
        checkpoint: PathBuf,
        seq: u64,
        expected: String,
        found: String,
    },
    #[error(
        "checkpoint {}: {reason}: it was edited, or copied from another device or an older \
         start", path.display()
    )]
    CheckpointForged { path: PathBuf, reason: String },
    #[error(
        "checkpoint {} is missing, but the device secret {} exists and the journal holds \
         records up to seq {last_seq}: the checkpoint was deleted", path.display(), secret.display()
    )]
    CheckpointMissing {
        path: PathBuf,
        secret: PathBuf,
        last_seq: u64,
    },
    #[error(
        "{}:{line}: record seq {seq} is the device's own report that its journal was tampered \
         with, found at a start: {problem}", file.display()
    )]
    TamperRecorded {
        file: PathBuf,
        line: u64,
        seq: u64,
        problem: String,
    },
    #[error("device secret {}: {reason}", path.display())]
    Secret { path: PathBuf, reason: String },
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
            | JournalError::FileMissing { .. }
            | JournalError::Truncated { .. }
            | JournalError::Diverged { .. }
            | JournalError::CheckpointForged { .. }
            | JournalError::CheckpointMissing { .. }
            | JournalError::TamperRecorded { .. } => JournalErrorKind::Tampered,
            JournalError::Malformed { .. }
            | JournalError::TornLine { .. }
            | JournalError::Anchor { .. }
            | JournalError::Secret { .. } => JournalErrorKind::Corrupt,
        }
    }
}

pub(super) type Result<T, E = JournalError> = std::result::Result<T, E>;

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

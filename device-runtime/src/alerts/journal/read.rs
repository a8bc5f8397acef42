//! The read side of a whole journal directory: [`verify`] checks every file and the chain between
//! them, and [`verify_sealed`] the journal's end against its checkpoint too; [`read_recent`] returns the newest records without checking the chain; [`scan`] walks
//! every record with its [`Position`], and [`read_at`] reads one record back from its position.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::ChainState;
use super::checkpoint::{Checkpoint, Seal, Sealed, Standing, tamper_problem};
use super::error::{JournalError, Result, io_err};
use super::files::{ANCHOR_FILE, Anchor, file_name, list_files, read_anchor};
use super::line::{Entry, parse_line};
use super::tail::{TAIL_CHUNK, line_number, read_tail, valid_entries};

/// A line cut short by a power cut at the very end of the journal (see the journal module
/// header).
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

/// Check the whole journal in `dir` (see the journal module header for what is and is not
/// detected). Without the checkpoint a deleted end goes unseen: [`verify_sealed`] checks that too.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    verify_each(dir, |_, _, _| {})
}

/// How the journal's end stood against its checkpoint in [`verify_sealed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealStatus {
    /// No device secret: the appliance has never started with checkpoints; the end is not
    /// checked.
    NoSecret,
    /// A secret, but neither a checkpoint nor a record: nothing to lose yet.
    Empty,
    /// The checkpoint's record is in the chain, followed by `newer` records.
    Holds { checkpoint: Checkpoint, newer: u64 },
    /// The checkpoint's record is older than the oldest one retention kept: not checkable.
    Unchecked { checkpoint: Checkpoint },
}

/// [`verify`], then the journal's end against the checkpoint of `seal` (see the checkpoint
/// section of the journal module header), then the `journal-tamper` records a start appended:
/// the first problem found is the error.
pub fn verify_sealed(dir: &Path, seal: Option<&Seal>) -> Result<(VerifyReport, SealStatus)> {
    // The checkpoint first: it is written after its record is fsynced, so a journal read after it
    // holds that record even while the appliance appends.
    let sealed = seal.map(Seal::read).transpose()?;
    let want = match &sealed {
        Some(Sealed::Good(cp)) => Some(cp.seq),
        _ => None,
    };
    let mut at_cp: Option<String> = None;
    let mut recorded: Option<JournalError> = None;
    let report = verify_each(dir, |path, line, e| {
        if want == Some(e.seq) {
            at_cp = Some(e.hash.clone());
        } else if want.and_then(|w| w.checked_add(1)) == Some(e.seq) && at_cp.is_none() {
            at_cp = Some(e.prev.clone());
        }
        if recorded.is_none()
            && let Some(problem) = tamper_problem(&e.record)
        {
            recorded = Some(JournalError::TamperRecorded {
                file: path.to_path_buf(),
                line,
                seq: e.seq,
                problem,
            });
        }
    })?;
    let head_seq = report
        .last_seq
        .unwrap_or_else(|| report.anchor.as_ref().map_or(0, |a| a.seq - 1));
    let status = match (seal, sealed) {
        (None, _) | (_, None) => SealStatus::NoSecret,
        (Some(seal), Some(Sealed::Missing)) => match report.last_seq {
            Some(last_seq) => {
                return Err(JournalError::CheckpointMissing {
                    path: seal.path().to_path_buf(),
                    secret: seal.secret_path().to_path_buf(),
                    last_seq,
                });
            }
            None => SealStatus::Empty,
        },
        (Some(seal), Some(Sealed::Forged(reason))) => {
            return Err(JournalError::CheckpointForged {
                path: seal.path().to_path_buf(),
                reason,
            });
        }
        (Some(seal), Some(Sealed::Good(checkpoint))) => {
            match seal.compare(&checkpoint, head_seq, &report.last_hash, at_cp.as_deref())? {
                Standing::Current => SealStatus::Holds {
                    checkpoint,
                    newer: 0,
                },
                Standing::Ahead(newer) => SealStatus::Holds { checkpoint, newer },
                Standing::Unchecked => SealStatus::Unchecked { checkpoint },
            }
        }
    };
    if let Some(e) = recorded {
        return Err(e);
    }
    Ok((report, status))
}

/// The chain's hash at `seq` in `files` (the record's hash, or its successor's prev), searching
/// from the newest file back; None when no such record is kept. Lines that do not check out are
/// skipped: this only locates, [`verify`] judges.
pub(super) fn hash_at(files: &[(u64, PathBuf)], seq: u64) -> Result<Option<String>> {
    let mut buf = Vec::new();
    for (_, path) in files.iter().rev() {
        let mut reader = BufReader::new(File::open(path).map_err(io_err(path))?);
        let mut first: Option<u64> = None;
        let mut found = None;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io_err(path))? == 0 {
                break;
            }
            let Some(e) = buf.strip_suffix(b"\n").and_then(|l| parse_line(l).ok()) else {
                continue;
            };
            first.get_or_insert(e.seq);
            if e.seq == seq {
                return Ok(Some(e.hash));
            }
            if Some(e.seq) == seq.checked_add(1) {
                found = Some(e.prev);
            }
        }
        if found.is_some() || first.is_some_and(|f| f <= seq) {
            return Ok(found);
        }
    }
    Ok(None)
}

/// [`verify`], calling `each(file, line, entry)` for every record that checks out, in order.
fn verify_each(dir: &Path, mut each: impl FnMut(&Path, u64, &Entry)) -> Result<VerifyReport> {
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
            each(path, line_no, &entry);
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

/// Where a record's line lies in the journal directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Journal file number ([`file_name`]).
    pub file: u64,
    /// Byte offset of the line in that file.
    pub offset: u64,
    /// Length of the line without its `\n`.
    pub len: u64,
}

/// Every record of the journal in `dir` that checks out on its own, oldest first, with its
/// position; lines that do not (torn, garbage, hash mismatch) are skipped and counted, as in
/// [`read_recent`] (the chain is [`verify`]'s job). Files older than the anchor are not read. A
/// missing directory has no records. Returns the number of lines skipped.
pub fn scan(dir: &Path, mut each: impl FnMut(Position, Entry)) -> Result<u64> {
    let mut files = match list_files(dir) {
        Ok(files) => files,
        Err(JournalError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    if let Some(a) = read_anchor(dir)? {
        files.retain(|(no, _)| *no >= a.file);
    }
    let mut skipped = 0;
    let mut buf = Vec::new();
    for (no, path) in &files {
        let mut reader = BufReader::new(File::open(path).map_err(io_err(path))?);
        let mut offset = 0u64;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            let parsed = match buf.split_last() {
                Some((b'\n', line)) if !line.contains(&0) => parse_line(line).ok(),
                _ => None,
            };
            match parsed {
                Some(entry) => each(
                    Position {
                        file: *no,
                        offset,
                        len: n as u64 - 1,
                    },
                    entry,
                ),
                None => skipped += 1,
            }
            offset += n as u64;
        }
    }
    Ok(skipped)
}

/// The record at `pos` (from [`scan`] or [`Journal::append`](super::Journal::append)), checked
/// on its own as [`verify`] checks each line. A file deleted by retention is a
/// [`JournalError::Io`] of kind `NotFound`.
pub fn read_at(dir: &Path, pos: &Position) -> Result<Entry> {
    let path = dir.join(file_name(pos.file));
    let file = File::open(&path).map_err(io_err(&path))?;
    let len = usize::try_from(pos.len).map_err(|_| JournalError::Malformed {
        file: path.clone(),
        line: 0,
        reason: format!("a {}-byte line cannot be read here", pos.len),
    })?;
    let mut line = vec![0; len];
    file.read_exact_at(&mut line, pos.offset)
        .map_err(io_err(&path))?;
    parse_line(&line).map_err(|f| f.at(&path, line_number(&path, pos.offset)))
}

//! Reading records back from the ends of one journal file: its first record, a tail read that
//! grows until enough lines are in view, and recovery of where the chain stands at its end
//! (and truncating a torn last line; see the journal module header).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::ChainState;
use super::error::{JournalError, Result, io_err};
use super::line::{Entry, parse_line};

/// First read size when looking at the end of a file; doubled until enough lines are in view.
pub(super) const TAIL_CHUNK: u64 = 8 * 1024;

/// The first record of a file that must have one (the new oldest file, for the anchor).
pub(super) fn first_entry(path: &Path) -> Result<Entry> {
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
pub(super) fn read_tail(
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

pub(super) fn valid_entries(buf: &[u8], whole: bool) -> Vec<Entry> {
    complete_lines(buf, whole)
        .into_iter()
        .filter_map(|(s, e)| parse_line(&buf[s..e]).ok())
        .collect()
}

/// 1-based number of the line that starts at byte `offset` (rare paths: errors, torn lines).
pub(super) fn line_number(path: &Path, offset: u64) -> u64 {
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

/// A torn last line found by [`inspect_tail`], still in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Torn {
    pub path: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// Where the torn bytes start: the file is truncated to this length.
    pub offset: u64,
    /// The torn bytes, to the end of the file.
    pub bytes: Vec<u8>,
}

/// Where the chain stands at the end of `path` (None if it holds no record), and a torn last
/// line if there is one. With `is_last` the torn line is returned for the caller to truncate
/// ([`truncate_torn`]) once it knows that no checkpointed record goes with it; elsewhere it is an
/// error.
pub(super) fn inspect_tail(
    path: &Path,
    is_last: bool,
) -> Result<(Option<ChainState>, Option<Torn>)> {
    let mut file = File::open(path).map_err(io_err(path))?;
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
    let torn = match torn_at {
        None => None,
        Some(at) => {
            let offset = start + at as u64;
            let line = line_number(path, offset);
            if !is_last {
                return Err(JournalError::TornLine {
                    file: path.to_path_buf(),
                    line,
                    offset,
                });
            }
            Some(Torn {
                path: path.to_path_buf(),
                line,
                offset,
                bytes: buf[at..].to_vec(),
            })
        }
    };
    Ok((state, torn))
}

/// Truncate a torn last line away (see the journal module header), with a warning.
pub(super) fn truncate_torn(t: &Torn) -> Result<()> {
    tracing::warn!(
        file = %t.path.display(),
        line = t.line,
        offset = t.offset,
        bytes = t.bytes.len(),
        "journal: truncating a torn last line (power cut during an append)"
    );
    OpenOptions::new()
        .write(true)
        .open(&t.path)
        .and_then(|f| f.set_len(t.offset).and_then(|()| f.sync_all()))
        .map_err(io_err(&t.path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
}

//! The journal directory: file naming and listing, the anchor file (read, and written atomically),
//! and fsync of the directory itself.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{JournalError, Result, io_err};
use super::line::is_hash_hex;

/// Name of the anchor file in the journal directory.
pub const ANCHOR_FILE: &str = "journal.anchor";
/// Name of the lock file in the journal directory (see the journal module header).
pub const LOCK_FILE: &str = "journal.lock";

const FILE_PREFIX: &str = "journal-";
const FILE_SUFFIX: &str = ".jsonl";

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

/// File name of journal file number `no` (1-based): `journal-000001.jsonl`.
pub fn file_name(no: u64) -> String {
    format!("{FILE_PREFIX}{no:06}{FILE_SUFFIX}")
}

/// Journal files in `dir`, oldest first. Other names (the anchor, its temporary) are ignored.
pub(super) fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
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

pub(super) fn read_anchor(dir: &Path) -> Result<Option<Anchor>> {
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

pub(super) fn write_anchor(dir: &Path, anchor: &Anchor) -> Result<()> {
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

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

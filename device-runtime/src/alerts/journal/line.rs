//! The line format (see the journal module header): encoding one record as a line, checking one
//! line on its own (hash over the bytes as on disk, then structure), and the time and hash text.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::{JournalError, Result};

/// `prev` of the very first record of a journal: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_KEY: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`: what a line has after its body minus the closing brace.
const HASH_TAIL_LEN: usize = HASH_KEY.len() + 64 + 2;

/// One record as read back ([`read_recent`](super::read_recent)).
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

/// Why one line, looked at on its own, is not a record.
#[derive(Debug)]
pub(super) enum LineFault {
    Malformed(String),
    Hash { expected: String, found: String },
}

impl LineFault {
    pub(super) fn at(self, file: &Path, line: u64) -> JournalError {
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
pub(super) fn encode_line(seq: u64, time: &str, prev: &str, record: &Value) -> (Vec<u8>, String) {
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
pub(super) fn parse_line(line: &[u8]) -> Result<Entry, LineFault> {
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

pub(super) fn format_time(t: SystemTime) -> String {
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

pub(super) fn is_hash_hex(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert!(is_canonical_time(&format_time(
            UNIX_EPOCH + Duration::from_millis(1_700_000_000 * 1000 + 123)
        )));
    }
}

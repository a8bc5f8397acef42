//! Structure-aware: the input is a set of member payloads that the target signs itself, so the
//! fuzzer gets past the signature into the manifest, safetensors and cross-check code of
//! `Bundle::open`. Nothing may panic; a bundle that opens must also survive
//! `to_bytes` -> `open` -> `to_bytes` unchanged (the writer's output is readable, byte-stable).
//!
//! Input encoding (what `scripts/fuzz` builds the seeds in):
//!
//! ```text
//! [control byte] payload 0 DELIM payload 1 DELIM ... (at most 6 payloads; DELIM = b"#FZ#")
//! ```
//!
//! Payloads 0-3 are named manifest.json, encoder.safetensors, bank.safetensors,
//! selftest.safetensors (the bundle's order), payloads 4 and 5 extra.bin and notes/readme.txt.
//! Control byte: bit 7 set = rewrite the manifest's `members` table (size + SHA-256) to match
//! the payloads, so mutated tensor members still reach their parsers; bits 0-3 non-zero = rename
//! payload number (bits 4-6) to `NAMES[bits 0-3]` (bad, reserved, duplicate and extra names).
#![no_main]

use std::sync::LazyLock;

use ed25519_dalek::{SigningKey, VerifyingKey};
use firm_fuzz::{LIMITS, same, signing_key, verbose};
use firm_shared::bundle::container;
use firm_shared::bundle::{self, Bundle, Member, sha256_hex};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<SigningKey> = LazyLock::new(signing_key);
static PK: LazyLock<VerifyingKey> = LazyLock::new(|| KEY.verifying_key());

pub const DELIM: &[u8] = b"#FZ#";
const DEFAULT_NAMES: [&str; 6] = [
    bundle::MANIFEST,
    bundle::MEMBERS[1],
    bundle::MEMBERS[2],
    bundle::MEMBERS[3],
    "extra.bin",
    "notes/readme.txt",
];
/// Index 0 is unused (no rename).
const NAMES: [&str; 16] = [
    "",
    "manifest.json",
    "encoder.safetensors",
    "bank.safetensors",
    "selftest.safetensors",
    "signature.ed25519",
    "extra.bin",
    "Manifest.json",
    "../manifest.json",
    "/manifest.json",
    "a//b",
    "dir/manifest.json",
    "",
    "encoder.safetensors.bak",
    "./bank.safetensors",
    "selftest.safetensor",
];

fn split(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while parts.len() < DEFAULT_NAMES.len() - 1 {
        match rest.windows(DELIM.len()).position(|w| w == DELIM) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + DELIM.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// The manifest with its `members` table rewritten to describe `members` (when it is a JSON
/// object; anything else is left as it is).
fn fix_up(manifest: &[u8], members: &[Member]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let table: serde_json::Map<String, serde_json::Value> = members
        .iter()
        .filter(|m| m.name != bundle::MANIFEST)
        .map(|m| {
            (
                m.name.clone(),
                serde_json::json!({ "size": m.data.len(), "sha256": sha256_hex(&m.data) }),
            )
        })
        .collect();
    v.as_object_mut()?
        .insert("members".into(), serde_json::Value::Object(table));
    serde_json::to_vec_pretty(&v).ok()
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let mut members: Vec<Member> = split(rest)
        .into_iter()
        .zip(DEFAULT_NAMES)
        .map(|(data, name)| Member {
            name: name.into(),
            data: data.to_vec(),
        })
        .collect();
    let rename = (control & 0x0f) as usize;
    if rename != 0 {
        if let Some(m) = members.get_mut(((control >> 4) & 0x07) as usize) {
            m.name = NAMES[rename].into();
        }
    }
    if control & 0x80 != 0 {
        if let Some(i) = members.iter().position(|m| m.name == bundle::MANIFEST) {
            if let Some(fixed) = fix_up(&members[i].data, &members) {
                members[i].data = fixed;
            }
        }
    }

    let bytes = match container::write(&members, &KEY, &LIMITS) {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            if verbose() {
                eprintln!("write: {msg}");
            }
            return;
        }
    };
    let b = match Bundle::open(&bytes, &PK, &LIMITS) {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            if verbose() {
                eprintln!("Bundle::open: {msg}");
            }
            return;
        }
    };
    if verbose() {
        eprintln!(
            "Bundle::open: ok ({} bank entries)",
            b.manifest.bank.entries
        );
    }
    // What opened must be writable, and the written form must open to the same bundle and be
    // a fixed point of to_bytes.
    let b1 = b
        .to_bytes(&KEY, &LIMITS)
        .expect("an opened bundle does not serialise");
    let again = Bundle::open(&b1, &PK, &LIMITS).expect("Bundle::to_bytes output does not open");
    assert!(same(&again, &b), "to_bytes -> open changed the bundle");
    let b2 = again.to_bytes(&KEY, &LIMITS).expect("re-serialise");
    assert!(b1 == b2, "to_bytes is not stable");
});

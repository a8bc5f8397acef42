//! The bundle's container: a POSIX ustar archive in one canonical form, signed with ed25519.
//!
//! Any `tar` lists and extracts it (`tar tvf bottle.firm`), yet the reader accepts exactly one
//! byte sequence per content, so that "any changed byte anywhere in the file is refused":
//!
//! ```text
//! [512-byte ustar header][data][zero padding to 512] ...   one entry per member, in order
//! [header of "signature.ed25519"][64-byte signature][zero padding to 512]
//! [1024 zero bytes]                                          end-of-archive, then end of file
//! ```
//!
//! * Every header must equal the canonical header the writer builds from (name, size): regular
//!   file, mode 0644, uid/gid 0, mtime 0, empty owner names, ustar magic, correct checksum. So a
//!   flipped bit in any header field (including the checksum and the unused fields) is refused.
//! * Padding and the end-of-archive blocks must be zero; nothing may follow them.
//! * The signature is the last entry; it signs every byte before its own header. Its header,
//!   padding and the end blocks are covered by the canonical-form checks above.
//! * Member names: 1-100 bytes of `[a-z0-9._-]` and `/` separators, relative, no empty, `.` or `..`
//!   component, unique; each member at most [`Limits::max_member`], the file at most
//!   [`Limits::max_total`].
//!
//! Errors say what was wrong and where (byte offset, member name); the reader never panics on any
//! input (property-tested and fuzzed).

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Name of the signature entry (always the last).
pub const SIGNATURE_NAME: &str = "signature.ed25519";
pub(crate) const BLOCK: usize = 512;

/// Size limits the reader enforces (before reading a member's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_member: u64,
    pub max_total: u64,
    pub max_members: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_member: 512 << 20,
            max_total: 1 << 30,
            max_members: 4096,
        }
    }
}

/// What is wrong with a bundle file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerError {
    /// The file ends inside a header, a member or the end blocks.
    Truncated {
        offset: usize,
        needed: usize,
    },
    /// A header differs from the canonical one for its name and size (edited, or not ours).
    BadHeader {
        offset: usize,
        name: String,
        why: String,
    },
    /// Non-zero bytes where zero padding or the end-of-archive blocks belong.
    BadPadding {
        offset: usize,
    },
    /// Bytes after the end-of-archive blocks.
    TrailingData {
        offset: usize,
        len: usize,
    },
    UnsafeName {
        name: String,
        why: &'static str,
    },
    DuplicateMember {
        name: String,
    },
    MemberTooLarge {
        name: String,
        size: u64,
        limit: u64,
    },
    FileTooLarge {
        size: u64,
        limit: u64,
    },
    TooManyMembers {
        limit: usize,
    },
    /// No `signature.ed25519` entry at the end.
    MissingSignature,
    /// The signature does not verify with the given public key (wrong key or changed bytes).
    BadSignature,
    /// A key file of the wrong length or format.
    BadKey {
        why: String,
    },
}

impl fmt::Display for ContainerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ContainerError::*;
        match self {
            Truncated { offset, needed } => write!(
                f,
                "truncated: the file ends at byte {offset}, {needed} more bytes were expected"
            ),
            BadHeader { offset, name, why } => {
                write!(
                    f,
                    "member header at byte {offset} ({name:?}) is not canonical: {why}"
                )
            }
            BadPadding { offset } => write!(f, "non-zero padding at byte {offset}"),
            TrailingData { offset, len } => {
                write!(
                    f,
                    "{len} unexpected bytes after the end of the archive at byte {offset}"
                )
            }
            UnsafeName { name, why } => write!(f, "member name {name:?} refused: {why}"),
            DuplicateMember { name } => write!(f, "member {name:?} appears twice"),
            MemberTooLarge { name, size, limit } => {
                write!(
                    f,
                    "member {name:?} has {size} bytes, above the limit of {limit}"
                )
            }
            FileTooLarge { size, limit } => {
                write!(f, "the file has {size} bytes, above the limit of {limit}")
            }
            TooManyMembers { limit } => write!(f, "more than {limit} members"),
            MissingSignature => write!(
                f,
                "no signature: the last member must be {SIGNATURE_NAME} (unsigned or cut file)"
            ),
            BadSignature => write!(
                f,
                "signature does not verify: the file was changed or signed with another key"
            ),
            BadKey { why } => write!(f, "bad key: {why}"),
        }
    }
}

impl std::error::Error for ContainerError {}

type Result<T> = std::result::Result<T, ContainerError>;

/// One named blob of the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub data: Vec<u8>,
}

/// A parsed container: members in file order (signature excluded) and what the signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub members: Vec<Member>,
    /// Bytes `[0, signed_len)` are the signed message.
    pub signed_len: usize,
    pub signature: [u8; 64],
}

impl Container {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.data.as_slice())
    }
}

/// Check a member name (see the module docs).
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(ContainerError::UnsafeName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 100 {
        return bad("must be 1 to 100 bytes");
    }
    if name.starts_with('/') {
        return bad("absolute path");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
    {
        return bad("only a-z, 0-9, '.', '_', '-' and '/' are allowed");
    }
    for part in name.split('/') {
        match part {
            "" => return bad("empty path component"),
            "." | ".." => return bad("path traversal ('.' or '..' component)"),
            _ => {}
        }
    }
    Ok(())
}

/// The canonical 512-byte header for a member.
pub(crate) fn header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    // Names are checked to fit the 100-byte name field, so this cannot fail or use the prefix.
    h.as_ustar_mut()
        .expect("ustar header")
        .name
        .iter_mut()
        .zip(name.bytes().chain(std::iter::repeat(0)))
        .for_each(|(d, s)| *d = s);
    h.set_cksum();
    let mut out = [0u8; BLOCK];
    out.copy_from_slice(h.as_bytes());
    out
}

pub(crate) fn padding(len: usize) -> usize {
    (BLOCK - len % BLOCK) % BLOCK
}

fn push_entry(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(&header(name, data.len() as u64));
    out.extend_from_slice(data);
    out.resize(out.len() + padding(data.len()), 0);
}

/// Serialise and sign. Errors on a bad or duplicate name or a member above the limits.
pub fn write(members: &[Member], key: &SigningKey, limits: &Limits) -> Result<Vec<u8>> {
    let mut seen = std::collections::BTreeSet::new();
    if members.len() > limits.max_members {
        return Err(ContainerError::TooManyMembers {
            limit: limits.max_members,
        });
    }
    let mut out = Vec::new();
    for m in members {
        check_name(&m.name)?;
        if m.name == SIGNATURE_NAME {
            return Err(ContainerError::UnsafeName {
                name: m.name.clone(),
                why: "reserved for the signature",
            });
        }
        if !seen.insert(m.name.as_str()) {
            return Err(ContainerError::DuplicateMember {
                name: m.name.clone(),
            });
        }
        if m.data.len() as u64 > limits.max_member {
            return Err(ContainerError::MemberTooLarge {
                name: m.name.clone(),
                size: m.data.len() as u64,
                limit: limits.max_member,
            });
        }
        push_entry(&mut out, &m.name, &m.data);
    }
    let sig = key.sign(&out);
    push_entry(&mut out, SIGNATURE_NAME, &sig.to_bytes());
    out.resize(out.len() + 2 * BLOCK, 0);
    if out.len() as u64 > limits.max_total {
        return Err(ContainerError::FileTooLarge {
            size: out.len() as u64,
            limit: limits.max_total,
        });
    }
    Ok(out)
}

fn take(bytes: &[u8], offset: usize, len: usize) -> Result<&[u8]> {
    bytes
        .get(offset..offset.saturating_add(len))
        .ok_or_else(|| ContainerError::Truncated {
            offset: bytes.len(),
            needed: offset.saturating_add(len).saturating_sub(bytes.len()),
        })
}

fn zeros(bytes: &[u8], offset: usize, len: usize) -> Result<()> {
    let s = take(bytes, offset, len)?;
    match s.iter().position(|&b| b != 0) {
        Some(i) => Err(ContainerError::BadPadding { offset: offset + i }),
        None => Ok(()),
    }
}

/// A member of a [`ContainerRef`]: its data borrowed from the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRef<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// A parsed container that borrows the file's bytes instead of copying its members: what a
/// device verifies a bundle with, so that a flash holds the file once (see [`read_ref`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef<'a> {
    pub members: Vec<MemberRef<'a>>,
    /// Bytes `[0, signed_len)` are the signed message.
    pub signed_len: usize,
    pub signature: [u8; 64],
}

impl<'a> ContainerRef<'a> {
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.members.iter().find(|m| m.name == name).map(|m| m.data)
    }

    /// Check the signature over the bytes this was read from ([`verify`]).
    pub fn verify(&self, bytes: &[u8], key: &VerifyingKey) -> Result<()> {
        verify_signed(bytes, self.signed_len, &self.signature, key)
    }

    /// The members copied out.
    pub fn to_owned(&self) -> Container {
        Container {
            members: self
                .members
                .iter()
                .map(|m| Member {
                    name: m.name.to_string(),
                    data: m.data.to_vec(),
                })
                .collect(),
            signed_len: self.signed_len,
            signature: self.signature,
        }
    }
}

impl Container {
    /// A view of the members (no copy).
    pub fn as_ref(&self) -> ContainerRef<'_> {
        ContainerRef {
            members: self
                .members
                .iter()
                .map(|m| MemberRef {
                    name: &m.name,
                    data: &m.data,
                })
                .collect(),
            signed_len: self.signed_len,
            signature: self.signature,
        }
    }
}

/// Check one 512-byte header found at `offset` (not all zero): its name and size, when it is
/// the canonical header for them and within the member limit. The one header check of [`read`]
/// and of the streamed reader ([`super::scan`]).
pub(crate) fn check_header(h: &[u8], offset: usize, limits: &Limits) -> Result<(String, u64)> {
    // Name: up to the first NUL of the 100-byte field.
    let raw = &h[..100];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(100);
    let name = String::from_utf8_lossy(&raw[..end]).into_owned();
    // Size: octal digits of the 12-byte field; anything else is refused by the canonical
    // comparison below, so a rough parse is enough here.
    let size = parse_octal(&h[124..136]).ok_or_else(|| ContainerError::BadHeader {
        offset,
        name: name.clone(),
        why: "size field is not an octal number".into(),
    })?;
    check_name(&name)?;
    let canonical = header(&name, size);
    if h != canonical {
        let field = first_diff_field(h, &canonical);
        return Err(ContainerError::BadHeader {
            offset,
            name,
            why: format!("field `{field}` differs"),
        });
    }
    if size > limits.max_member {
        return Err(ContainerError::MemberTooLarge {
            name,
            size,
            limit: limits.max_member,
        });
    }
    Ok((name, size))
}

/// Parse the structure (no key needed): canonical headers, padding, names, limits, signature
/// entry last. Verify the signature with [`verify`] before trusting any member.
pub fn read(bytes: &[u8], limits: &Limits) -> Result<Container> {
    read_ref(bytes, limits).map(|c| c.to_owned())
}

/// [`read`] without copying the members out of `bytes`.
pub fn read_ref<'a>(bytes: &'a [u8], limits: &Limits) -> Result<ContainerRef<'a>> {
    if bytes.len() as u64 > limits.max_total {
        return Err(ContainerError::FileTooLarge {
            size: bytes.len() as u64,
            limit: limits.max_total,
        });
    }
    let mut members: Vec<MemberRef<'a>> = Vec::new();
    let mut offset = 0usize;
    loop {
        let h = take(bytes, offset, BLOCK)?;
        if h.iter().all(|&b| b == 0) {
            // End of archive before any signature entry.
            return Err(ContainerError::MissingSignature);
        }
        let (name, size) = check_header(h, offset, limits)?;
        let size = size as usize;
        let data = take(bytes, offset + BLOCK, size)?;
        let pad_at = offset + BLOCK + size;
        zeros(bytes, pad_at, padding(size))?;
        let next = pad_at + padding(size);
        if name == SIGNATURE_NAME {
            if size != 64 {
                return Err(ContainerError::BadHeader {
                    offset,
                    name,
                    why: format!("a signature has 64 bytes, not {size}"),
                });
            }
            zeros(bytes, next, 2 * BLOCK)?;
            let end = next + 2 * BLOCK;
            if bytes.len() > end {
                return Err(ContainerError::TrailingData {
                    offset: end,
                    len: bytes.len() - end,
                });
            }
            let mut signature = [0u8; 64];
            signature.copy_from_slice(data);
            return Ok(ContainerRef {
                members,
                signed_len: offset,
                signature,
            });
        }
        if members.iter().any(|m| m.name == name) {
            return Err(ContainerError::DuplicateMember { name });
        }
        if members.len() >= limits.max_members {
            return Err(ContainerError::TooManyMembers {
                limit: limits.max_members,
            });
        }
        // The name as it stands in the header (check_name allows ASCII only, so the lossy
        // conversion above changed nothing).
        let name_in_header = std::str::from_utf8(&h[..name.len()]).expect("an ASCII name");
        members.push(MemberRef {
            name: name_in_header,
            data,
        });
        offset = next;
    }
}

/// Check the signature of a parsed container over the original bytes.
pub fn verify(bytes: &[u8], c: &Container, key: &VerifyingKey) -> Result<()> {
    verify_signed(bytes, c.signed_len, &c.signature, key)
}

fn verify_signed(
    bytes: &[u8],
    signed_len: usize,
    signature: &[u8; 64],
    key: &VerifyingKey,
) -> Result<()> {
    let msg = bytes
        .get(..signed_len)
        .ok_or(ContainerError::BadSignature)?;
    // `verify_strict`, not `verify`: it also refuses a small-order R and a weak (small-order)
    // key, with which one signature verifies for many messages (for the identity key, R = the
    // identity and s = 0 "sign" every message). RFC 8032 leaves these cases to the verifier;
    // nothing we sign produces them.
    key.verify_strict(msg, &Signature::from_bytes(signature))
        .map_err(|_| ContainerError::BadSignature)
}

/// [`read`] then [`verify`]: the members of a bundle that is exactly as its signer wrote it.
pub fn open(bytes: &[u8], key: &VerifyingKey, limits: &Limits) -> Result<Container> {
    let c = read(bytes, limits)?;
    verify(bytes, &c, key)?;
    Ok(c)
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s = field.split(|&b| b == 0 || b == b' ').next()?;
    if s.is_empty() || s.len() > 11 || !s.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 8).ok()
}

/// The ustar field a byte offset falls in (for error messages).
fn first_diff_field(a: &[u8], b: &[u8]) -> &'static str {
    const FIELDS: [(usize, &str); 17] = [
        (0, "name"),
        (100, "mode"),
        (108, "uid"),
        (116, "gid"),
        (124, "size"),
        (136, "mtime"),
        (148, "checksum"),
        (156, "type"),
        (157, "link name"),
        (257, "magic"),
        (263, "version"),
        (265, "owner name"),
        (297, "group name"),
        (329, "device major"),
        (337, "device minor"),
        (345, "prefix"),
        (500, "padding"),
    ];
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
    FIELDS
        .iter()
        .rev()
        .find(|(start, _)| *start <= i)
        .map_or("?", |f| f.1)
}

/// Parse a 32-byte ed25519 key from its file form: 64 hex digits (whitespace around allowed).
pub fn parse_key_hex(text: &str) -> Result<[u8; 32]> {
    let t = text.trim();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ContainerError::BadKey {
            why: format!("expected 64 hex digits, found {} characters", t.len()),
        });
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(out)
}

/// A public key from its file form (keygen's `.pub`: 64 hex digits). A weak key (a point of small
/// order, such as the identity `0100..00`) is refused: signatures made without any private key
/// verify under it, and no key made by keygen is one.
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey> {
    let key =
        VerifyingKey::from_bytes(&parse_key_hex(text)?).map_err(|_| ContainerError::BadKey {
            why: "not a valid ed25519 public key".into(),
        })?;
    if key.is_weak() {
        return Err(ContainerError::BadKey {
            why: "a weak ed25519 public key (a point of small order): signatures made without its \
                  private key verify under it; use a key made by `host-trainer keygen`"
                .into(),
        });
    }
    Ok(key)
}

/// Hex form of a key (what key files hold).
pub fn key_hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new signing key from the operating system's random source.
pub fn generate_key() -> std::result::Result<SigningKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sample() -> Vec<Member> {
        vec![
            Member {
                name: "manifest.json".into(),
                data: br#"{"schema-version":1}"#.to_vec(),
            },
            Member {
                name: "weights/encoder.safetensors".into(),
                data: (0..1500u32).map(|i| (i * 7) as u8).collect(),
            },
            Member {
                name: "empty".into(),
                data: vec![],
            },
            Member {
                name: "bank/block".into(),
                data: vec![9; 512],
            },
        ]
    }

    fn signed() -> Vec<u8> {
        write(&sample(), &key(1), &Limits::default()).unwrap()
    }

    #[test]
    fn round_trip_and_standard_tar_listing() {
        let bytes = signed();
        let c = open(&bytes, &key(1).verifying_key(), &Limits::default()).unwrap();
        assert_eq!(c.members, sample());
        // The tar crate (an independent reader) lists the same members plus the signature.
        let mut ar = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "manifest.json",
                "weights/encoder.safetensors",
                "empty",
                "bank/block",
                SIGNATURE_NAME
            ]
        );
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let bytes = signed();
        let pk = key(1).verifying_key();
        for i in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    open(&b, &pk, &Limits::default()).is_err(),
                    "flip of bit {bit} at byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn truncation_anywhere_is_refused_as_truncation_or_missing_signature() {
        let bytes = signed();
        for len in 0..bytes.len() {
            let e = open(&bytes[..len], &key(1).verifying_key(), &Limits::default()).unwrap_err();
            assert!(
                matches!(
                    e,
                    ContainerError::Truncated { .. } | ContainerError::MissingSignature
                ),
                "cut at {len}: {e}"
            );
        }
    }

    #[test]
    fn specific_errors() {
        let pk = key(1).verifying_key();
        let lim = Limits::default();
        let bytes = signed();
        assert_eq!(
            open(&bytes, &key(2).verifying_key(), &lim).unwrap_err(),
            ContainerError::BadSignature
        );
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 512]);
        assert!(matches!(
            open(&longer, &pk, &lim).unwrap_err(),
            ContainerError::TrailingData { len: 512, .. }
        ));
        // Unsigned: a plain archive of the members with end blocks.
        let mut unsigned = Vec::new();
        for m in sample() {
            push_entry(&mut unsigned, &m.name, &m.data);
        }
        unsigned.resize(unsigned.len() + 1024, 0);
        assert_eq!(
            open(&unsigned, &pk, &lim).unwrap_err(),
            ContainerError::MissingSignature
        );
        // Size limits, checked before reading data.
        let small = Limits {
            max_member: 1000,
            ..lim
        };
        assert!(matches!(
            open(&bytes, &pk, &small).unwrap_err(),
            ContainerError::MemberTooLarge { size: 1500, .. }
        ));
        assert!(matches!(
            write(&sample(), &key(1), &small).unwrap_err(),
            ContainerError::MemberTooLarge { .. }
        ));
        let tiny = Limits {
            max_total: 100,
            ..lim
        };
        assert!(matches!(
            open(&bytes, &pk, &tiny).unwrap_err(),
            ContainerError::FileTooLarge { .. }
        ));
        // A header edited by hand (mtime) is named as such.
        let mut b = bytes.clone();
        b[136] = b'1';
        let e = open(&b, &pk, &lim).unwrap_err().to_string();
        assert!(e.contains("byte 0") && e.contains("mtime"), "{e}");
    }

    /// Crafted archives (valid tar, signed with the right key over their own bytes) with bad
    /// names or duplicates are refused by name.
    #[test]
    fn names_are_checked_on_read_and_write() {
        let pk = key(1).verifying_key();
        let craft = |names: &[&str]| {
            let mut out = Vec::new();
            for n in names {
                push_entry(&mut out, n, b"x");
            }
            let sig = key(1).sign(&out);
            push_entry(&mut out, SIGNATURE_NAME, &sig.to_bytes());
            out.resize(out.len() + 1024, 0);
            out
        };
        for (name, why) in [
            ("../etc/passwd", "traversal"),
            ("/etc/passwd", "absolute"),
            ("a//b", "empty"),
            ("a/./b", "traversal"),
            ("Manifest.json", "only"),
        ] {
            let e = open(&craft(&[name]), &pk, &Limits::default()).unwrap_err();
            assert!(
                matches!(&e, ContainerError::UnsafeName { why: w, .. } if w.contains(why)),
                "{name}: {e}"
            );
            let m = vec![Member {
                name: name.into(),
                data: vec![],
            }];
            assert!(write(&m, &key(1), &Limits::default()).is_err());
        }
        let e = open(&craft(&["a", "b", "a"]), &pk, &Limits::default()).unwrap_err();
        assert_eq!(e, ContainerError::DuplicateMember { name: "a".into() });
        assert!(open(&craft(&["a", "b"]), &pk, &Limits::default()).is_ok());
    }

    #[test]
    fn key_hex_round_trip() {
        let k = generate_key().unwrap();
        let hex = key_hex(&k.to_bytes());
        assert_eq!(parse_key_hex(&format!(" {hex}\n")).unwrap(), k.to_bytes());
        assert!(matches!(
            parse_key_hex("abc"),
            Err(ContainerError::BadKey { .. })
        ));
    }

    /// Encodings of points of small order (the identity, the point of order 2, one of order 4):
    /// valid curve points, so `VerifyingKey::from_bytes` takes them.
    fn small_order_points() -> [[u8; 32]; 3] {
        let identity = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        // y = p - 1 = 2^255 - 20 (the point (0, -1)).
        let order_2 = {
            let mut b = [0xffu8; 32];
            b[0] = 0xec;
            b[31] = 0x7f;
            b
        };
        // y = 0: x = sqrt(-1).
        let order_4 = [0u8; 32];
        [identity, order_2, order_4]
    }

    #[test]
    fn weak_keys_are_refused_with_a_clear_message() {
        for point in small_order_points() {
            assert!(VerifyingKey::from_bytes(&point).is_ok(), "a curve point");
            let e = parse_verifying_key(&format!("{}\n", key_hex(&point))).unwrap_err();
            assert!(
                matches!(&e, ContainerError::BadKey { why } if why.contains("weak")),
                "{e}"
            );
            assert!(e.to_string().contains("small order"), "{e}");
        }
        // Real keys still parse.
        let pk = key(1).verifying_key();
        assert_eq!(parse_verifying_key(&key_hex(&pk.to_bytes())).unwrap(), pk);
    }

    /// Under the identity key, `R` = the identity and `s` = 0 pass the lax `verify` for any
    /// message ([s]B - [k]A = identity for every k): a forgery without any private key. The
    /// reader must refuse it (`verify_strict`).
    #[test]
    fn signatures_only_lax_verification_accepts_are_refused() {
        let mut forged = Vec::new();
        for m in sample() {
            push_entry(&mut forged, &m.name, &m.data);
        }
        let mut sig = [0u8; 64];
        sig[0] = 1; // R = identity (compressed y = 1), s = 0
        push_entry(&mut forged, SIGNATURE_NAME, &sig);
        forged.resize(forged.len() + 1024, 0);
        let c = read(&forged, &Limits::default()).unwrap();
        let weak = VerifyingKey::from_bytes(&small_order_points()[0]).unwrap();
        let msg = &forged[..c.signed_len];
        assert!(
            weak.verify(msg, &Signature::from_bytes(&sig)).is_ok(),
            "the lax check accepts the forgery (what this test guards against)"
        );
        assert_eq!(
            verify(&forged, &c, &weak).unwrap_err(),
            ContainerError::BadSignature
        );
        assert_eq!(
            open(&forged, &weak, &Limits::default()).unwrap_err(),
            ContainerError::BadSignature
        );
        assert_eq!(scanned(&forged, &weak), ContainerError::BadSignature.into());
    }

    /// What the streamed check ([`crate::bundle::scan`]) says of `bytes` under `key`: it must
    /// refuse what `verify_strict` refuses.
    fn scanned(bytes: &[u8], key: &VerifyingKey) -> crate::bundle::BundleError {
        crate::bundle::scan::scan(
            &mut std::io::Cursor::new(bytes),
            std::slice::from_ref(key),
            &Limits::default(),
        )
        .unwrap_err()
    }

    /// Arithmetic modulo the group order l = 2^252 + 27742317777372353535851937790883648493, bit
    /// by bit on little-endian u64 limbs (slow and plain: a test reference, not a library).
    mod scalar {
        const L: [u64; 4] = [
            0x5812_631a_5cf5_d3ed,
            0x14de_f9de_a2f7_9cd6,
            0,
            0x1000_0000_0000_0000,
        ];

        fn add_mod(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
            // a, b < l < 2^253: the sum fits, and one subtraction reduces it.
            let mut r = [0u64; 4];
            let mut carry = false;
            for i in 0..4 {
                let (x, c1) = a[i].overflowing_add(b[i]);
                let (x, c2) = x.overflowing_add(u64::from(carry));
                r[i] = x;
                carry = c1 || c2;
            }
            if (0..4).rev().map(|i| r[i].cmp(&L[i])).find(|o| o.is_ne())
                != Some(std::cmp::Ordering::Less)
            {
                let mut borrow = false;
                for i in 0..4 {
                    let (x, b1) = r[i].overflowing_sub(L[i]);
                    let (x, b2) = x.overflowing_sub(u64::from(borrow));
                    r[i] = x;
                    borrow = b1 || b2;
                }
            }
            r
        }

        fn bits_from_top(le: &[u8]) -> impl Iterator<Item = bool> + '_ {
            le.iter()
                .rev()
                .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
        }

        /// `le` (any length, little-endian) mod l.
        pub fn reduce(le: &[u8]) -> [u64; 4] {
            bits_from_top(le).fold([0; 4], |r, bit| {
                add_mod(add_mod(r, r), [u64::from(bit), 0, 0, 0])
            })
        }

        /// a * b mod l, as the 32 little-endian bytes of a scalar.
        pub fn mul(a: &[u8], b: [u64; 4]) -> [u8; 32] {
            let r = bits_from_top(a).fold([0; 4], |r, bit| {
                let r = add_mod(r, r);
                if bit { add_mod(r, b) } else { r }
            });
            let mut out = [0u8; 32];
            for (chunk, limb) in out.chunks_exact_mut(8).zip(r) {
                chunk.copy_from_slice(&limb.to_le_bytes());
            }
            out
        }
    }

    /// With a real key, `R` = the identity (small order) and s = k * a mod l, k = H(R || A || M),
    /// make [s]B - [k]A the identity, so the lax `verify` accepts. Made by no signer (R = [r]B
    /// for a random r), and refused by `verify_strict`.
    #[test]
    fn small_order_r_is_refused_under_a_real_key() {
        use sha2::Digest;
        let sk = key(1);
        let pk = sk.verifying_key();
        let mut forged = Vec::new();
        for m in sample() {
            push_entry(&mut forged, &m.name, &m.data);
        }
        let r = small_order_points()[0];
        let k = sha2::Sha512::new()
            .chain_update(r)
            .chain_update(pk.to_bytes())
            .chain_update(&forged)
            .finalize();
        let s = scalar::mul(&k, scalar::reduce(&sk.to_scalar().to_bytes()));
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r);
        sig[32..].copy_from_slice(&s);
        let msg = forged.clone();
        push_entry(&mut forged, SIGNATURE_NAME, &sig);
        forged.resize(forged.len() + 1024, 0);
        assert!(
            pk.verify(&msg, &Signature::from_bytes(&sig)).is_ok(),
            "the lax check accepts it (what this test guards against)"
        );
        assert_eq!(
            open(&forged, &pk, &Limits::default()).unwrap_err(),
            ContainerError::BadSignature
        );
        assert_eq!(scanned(&forged, &pk), ContainerError::BadSignature.into());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// write -> read gives back the members, for any names and contents.
        #[test]
        fn write_read_round_trip(
            entries in proptest::collection::btree_map(
                "[a-z0-9_]{1,12}(/[a-z0-9._-]{1,12}){0,2}",
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
                0..6,
            )
        ) {
            let members: Vec<Member> = entries
                .into_iter()
                .filter(|(n, _)| n != SIGNATURE_NAME && check_name(n).is_ok())
                .map(|(name, data)| Member { name, data })
                .collect();
            let bytes = write(&members, &key(3), &Limits::default()).unwrap();
            let c = open(&bytes, &key(3).verifying_key(), &Limits::default()).unwrap();
            proptest::prop_assert_eq!(c.members, members);
        }

        /// Arbitrary bytes never panic the reader.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000)) {
            let _ = read(&bytes, &Limits::default());
        }
    }
}

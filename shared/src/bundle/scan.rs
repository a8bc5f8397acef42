//! A bundle file checked in one pass of fixed-size reads, never held whole: what a device needs
//! to *report* on a bundle it already holds (its slots' status, the bundle a flash replaces, the
//! anti-downgrade floor of an old device) without the memory of loading it.
//!
//! [`scan`] checks what [`container::read_ref`] and [`ContainerRef::verify`] check, in the same
//! order and with the same errors: every header canonical ([`container::check_header`]), padding
//! and end blocks zero, nothing after them, names and limits, the signature last and valid
//! (`verify_strict`'s rules: a small-order R or a weak key is refused) under one of the trusted
//! keys; then that the members are exactly the bundle's and match the manifest's sizes and
//! SHA-256 ([`super::check_listed`], as [`Bundle::from_container`] does). It keeps only the
//! manifest and returns it with the file's size and SHA-256. What it does not do is decode the
//! tensors (shapes, norms, consistency with the manifest): a device does that, and the
//! self-test, before it installs or runs a bundle ([`Bundle::open`]); a file that scans clean is
//! byte for byte one that a trusted key signed.
//!
//! The signature is the last entry but an ed25519 verifier must know it before the message, so
//! it is read first from where a canonical file has it (`len - 1536`), and the entry found at
//! the end of the pass must hold the same bytes.
//!
//! [`Bundle::from_container`]: super::Bundle::from_container
//! [`Bundle::open`]: super::Bundle::open
//! [`ContainerRef::verify`]: super::ContainerRef::verify

use std::io::{Read, Seek, SeekFrom};

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, StreamVerifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::container::{self, BLOCK, ContainerError, Limits, SIGNATURE_NAME};
use super::{BundleError, MANIFEST, Manifest};

/// Bytes read at a time.
const CHUNK: usize = 64 << 10;

/// A bundle file that [`scan`] found signed by a trusted key, with members as its manifest
/// lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanned {
    pub manifest: Manifest,
    /// The file's size.
    pub bytes: u64,
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
}

/// The hex form of a finished SHA-256.
fn hex(digest: impl AsRef<[u8]>) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Check the bundle file `file` (see the module docs) against `keys`.
pub fn scan(
    file: &mut (impl Read + Seek),
    keys: &[VerifyingKey],
    limits: &Limits,
) -> Result<Scanned, BundleError> {
    let io = |e: std::io::Error| BundleError::Read { why: e.to_string() };
    let len = file.seek(SeekFrom::End(0)).map_err(io)?;
    if len > limits.max_total {
        return Err(ContainerError::FileTooLarge {
            size: len,
            limit: limits.max_total,
        }
        .into());
    }
    // Where a canonical file keeps its signature: its entry's header, the 64 bytes padded to a
    // block, and two zero blocks end the file.
    let signature = match len.checked_sub(3 * BLOCK as u64) {
        Some(at) if len >= 4 * BLOCK as u64 => {
            let mut sig = [0u8; 64];
            file.seek(SeekFrom::Start(at)).map_err(io)?;
            file.read_exact(&mut sig).map_err(io)?;
            Some(sig)
        }
        _ => None,
    };
    let verifiers = signature.map_or_else(Vec::new, |s| verifiers(keys, &s));
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut r = Reader {
        file,
        len,
        offset: 0,
        whole: Sha256::new(),
        verifiers,
        signing: false,
    };
    let mut members: Vec<(String, u64, String)> = Vec::new();
    let mut manifest: Option<Vec<u8>> = None;
    let mut block = [0u8; BLOCK];
    let mut buf = vec![0u8; CHUNK];
    loop {
        let at = r.offset as usize;
        // A header is signed unless it is the signature's: known once it is read.
        r.signing = false;
        r.read(&mut block)?;
        if block.iter().all(|&b| b == 0) {
            return Err(ContainerError::MissingSignature.into());
        }
        let (name, size) = container::check_header(&block, at, limits)?;
        let is_signature = name == SIGNATURE_NAME;
        if !is_signature {
            r.sign(&block);
            r.signing = true;
        }
        // The data, then its padding, in read_ref's order (size checks come after); a member
        // the file ends inside is truncated by all of its size, as read_ref says it.
        r.need(size)?;
        let keep = name == MANIFEST || (is_signature && size == 64);
        let mut kept = Vec::new();
        let mut member = Sha256::new();
        let mut left = size;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            r.read(&mut buf[..n])?;
            member.update(&buf[..n]);
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
            left -= n as u64;
        }
        r.zeros(container::padding(size as usize))?;
        if is_signature {
            if size != 64 {
                return Err(ContainerError::BadHeader {
                    offset: at,
                    name,
                    why: format!("a signature has 64 bytes, not {size}"),
                }
                .into());
            }
            r.zeros(2 * BLOCK)?;
            if r.len > r.offset {
                return Err(ContainerError::TrailingData {
                    offset: r.offset as usize,
                    len: (r.len - r.offset) as usize,
                }
                .into());
            }
            // The entry read first is this one, unless the file changed during the scan.
            if signature.as_ref().map(|s| s.as_slice()) != Some(kept.as_slice()) {
                return Err(ContainerError::BadSignature.into());
            }
            let verified = r
                .verifiers
                .into_iter()
                .any(|v| v.finalize_and_verify().is_ok());
            if !verified {
                return Err(ContainerError::BadSignature.into());
            }
            break;
        }
        if members.iter().any(|m| m.0 == name) {
            return Err(ContainerError::DuplicateMember { name }.into());
        }
        if members.len() >= limits.max_members {
            return Err(ContainerError::TooManyMembers {
                limit: limits.max_members,
            }
            .into());
        }
        if keep {
            manifest = Some(kept);
        }
        members.push((name, size, hex(member.finalize())));
    }
    super::check_names(members.iter().map(|m| m.0.as_str()))?;
    let manifest = manifest.ok_or_else(|| BundleError::MissingMember {
        name: MANIFEST.into(),
    })?;
    let manifest = Manifest::from_json(&manifest)?;
    super::check_listed(&manifest, |name| {
        members
            .iter()
            .find(|m| m.0 == name)
            .map(|m| (m.1, m.2.clone()))
    })?;
    Ok(Scanned {
        manifest,
        bytes: len,
        sha256: hex(r.whole.finalize()),
    })
}

/// A stream verifier per key that `verify_strict` could accept `signature` under: none for a
/// weak key, and none at all for a small-order (or not decodable) R, which `verify_strict`
/// refuses before it looks at the message.
fn verifiers(keys: &[VerifyingKey], signature: &[u8; 64]) -> Vec<StreamVerifier> {
    let sig = Signature::from_bytes(signature);
    let r_ok = CompressedEdwardsY(*sig.r_bytes())
        .decompress()
        .is_some_and(|r| !r.is_small_order());
    if !r_ok {
        return Vec::new();
    }
    keys.iter()
        .filter(|k| !k.is_weak())
        .filter_map(|k| k.verify_stream(&sig).ok())
        .collect()
}

/// The file, read forward with what every byte goes through.
struct Reader<'a, R> {
    file: &'a mut R,
    len: u64,
    offset: u64,
    /// SHA-256 of every byte.
    whole: Sha256,
    verifiers: Vec<StreamVerifier>,
    /// Bytes are still part of the signed message.
    signing: bool,
}

impl<R: Read> Reader<'_, R> {
    /// Fill `buf` from the file: `Truncated` as [`container::read_ref`] says it when the file
    /// ends first.
    fn read(&mut self, buf: &mut [u8]) -> Result<(), BundleError> {
        self.need(buf.len() as u64)?;
        self.file
            .read_exact(buf)
            .map_err(|e| BundleError::Read { why: e.to_string() })?;
        self.whole.update(&*buf);
        if self.signing {
            self.sign(buf);
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Refuse as truncated when fewer than `n` bytes are left.
    fn need(&self, n: u64) -> Result<(), BundleError> {
        let end = self.offset.saturating_add(n);
        if end > self.len {
            return Err(ContainerError::Truncated {
                offset: self.len as usize,
                needed: (end - self.len) as usize,
            }
            .into());
        }
        Ok(())
    }

    /// Feed bytes already read to the signature verifiers.
    fn sign(&mut self, bytes: &[u8]) {
        for v in &mut self.verifiers {
            v.update(bytes);
        }
    }

    /// Read `n` bytes that must be zero (padding, end blocks).
    fn zeros(&mut self, n: usize) -> Result<(), BundleError> {
        let at = self.offset as usize;
        let mut buf = vec![0u8; n];
        self.read(&mut buf)?;
        match buf.iter().position(|&b| b != 0) {
            Some(i) => Err(ContainerError::BadPadding { offset: at + i }.into()),
            None => Ok(()),
        }
    }
}

//! The device secret: 32 random bytes created once, at the device's first start, in a file only
//! its owner can read (mode 0600, in a 0700 folder outside the journal directory), and
//! HMAC-SHA256 (RFC 2104) keyed by it. The journal's checkpoint ([`super::Seal`]) is authenticated
//! with it, so someone who can write the journal and the checkpoint but cannot read this file
//! cannot move the checkpoint to a shortened journal.
//!
//! Creation is atomic: the key is written to a temporary file (0600 from its creation), fsynced,
//! then linked into place; a write that fails (a full filesystem) removes its temporary file, so
//! `device.key` is either absent or whole, and a later attempt starts afresh (a temporary left by a
//! crash is never read as the key, and the same process id's next attempt truncates it).
//!
//! The key never leaves this module: it has no accessor, and its `Debug` prints no byte of it.
//! On disk it is 64 lowercase hex digits and a newline. HMAC is written out here over `sha2`
//! (a dozen lines) rather than adding the `hmac` crate; the RFC 4231 test vectors below check it.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{JournalError, Result, io_err};
use super::files::sync_dir;

const KEY_LEN: usize = 32;
/// SHA-256's block size: HMAC pads the key to it.
const BLOCK: usize = 64;

/// The device's HMAC key (see the module header).
pub struct DeviceSecret {
    key: [u8; KEY_LEN],
    path: PathBuf,
}

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSecret")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DeviceSecret {
    /// Read the secret at `path`, creating it (and its folder, 0700) when there is none yet.
    /// Returns whether it was created now. Two processes starting at once agree on one secret:
    /// the file is linked into place only if it does not exist yet. A full filesystem is an
    /// [`JournalError::Io`] whose source says so (ENOSPC, EDQUOT), and leaves no file behind.
    pub fn load_or_create(path: &Path) -> Result<(DeviceSecret, bool)> {
        if let Some(s) = Self::load(path)? {
            return Ok((s, false));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let mut key = [0u8; KEY_LEN];
        fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut key))
            .map_err(io_err(Path::new("/dev/urandom")))?;
        let tmp = dir.join(format!(".device.key.tmp-{}", std::process::id()));
        let mut text = hex(&key);
        text.push('\n');
        super::full_for_test().map_err(io_err(&tmp))?;
        firm_shared::fsutil::write_atomic_mode(&tmp, text.as_bytes(), 0o600).map_err(|e| {
            JournalError::Io {
                path: tmp.clone(),
                source: io_source(e),
            }
        })?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(dir)?;
                tracing::info!(path = %path.display(), "device secret created (0600)");
                Ok((
                    DeviceSecret {
                        key,
                        path: path.to_path_buf(),
                    },
                    true,
                ))
            }
            // Another process created it between our look and our link: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path)?
                .map(|s| (s, false))
                .ok_or_else(|| JournalError::Secret {
                    path: path.to_path_buf(),
                    reason: "created by another process, then gone".into(),
                }),
            Err(source) => Err(JournalError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Read the secret at `path`; None when there is none (the appliance has not started yet).
    pub fn load(path: &Path) -> Result<Option<DeviceSecret>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let bad = |reason: &str| JournalError::Secret {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        let digits = text.trim_end_matches('\n').as_bytes();
        if digits.len() != 2 * KEY_LEN {
            return Err(bad("expected 64 lowercase hex digits"));
        }
        let mut key = [0u8; KEY_LEN];
        for (k, pair) in key.iter_mut().zip(digits.chunks(2)) {
            let s = std::str::from_utf8(pair).map_err(|_| bad("not hex"))?;
            *k = u8::from_str_radix(s, 16).map_err(|_| bad("expected 64 lowercase hex digits"))?;
        }
        let mode = fs::metadata(path)
            .map_err(io_err(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the device secret is readable by others than its owner (expected 0600)"
            );
        }
        Ok(Some(DeviceSecret {
            key,
            path: path.to_path_buf(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// HMAC-SHA256 of `msg` under the device secret, lowercase hex.
    pub fn mac_hex(&self, msg: &[u8]) -> String {
        hex(&hmac_sha256(&self.key, msg))
    }
}

/// The I/O error under a `firm_shared` error, its kind kept (a full filesystem must stay
/// recognisable as one).
pub(super) fn io_source(e: firm_shared::error::Error) -> io::Error {
    match e {
        firm_shared::error::Error::Io { source, .. } => source,
        e => io::Error::other(e.to_string()),
    }
}

/// HMAC-SHA256 (RFC 2104): H((K ^ opad) || H((K ^ ipad) || msg)), K padded to the block size
/// (hashed first when longer).
pub(super) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal in time independent of where the first difference is (MACs are compared with it).
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 4231 test cases 1, 2, 6 (a key longer than the block) and 7.
    #[test]
    fn hmac_matches_rfc_4231() {
        let cases: [(Vec<u8>, &[u8], &str); 4] = [
            (
                vec![0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than \
                  block-size data. The key needs to be hashed before being used by the HMAC \
                  algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, msg, mac) in cases {
            assert_eq!(hmac_sha256(&key, msg).to_vec(), unhex(mac));
        }
    }

    #[test]
    fn secret_is_created_once_with_mode_0600_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret/device.key");
        assert!(DeviceSecret::load(&path).unwrap().is_none());
        let (s, created) = DeviceSecret::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "key file mode {mode:o}");
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700, "key folder mode {dir_mode:o}");
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(!format!("{s:?}").contains(text.trim()));
        assert!(!format!("{s:?}").contains(&text[..8]));
        // A second start reads the same secret: the same MAC, and no temporary left behind.
        let (again, created) = DeviceSecret::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.mac_hex(b"m"), s.mac_hex(b"m"));
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        // A damaged file is an error, not a new secret.
        fs::write(&path, "zz").unwrap();
        assert!(matches!(
            DeviceSecret::load_or_create(&path),
            Err(JournalError::Secret { .. })
        ));
        assert!(same("ab", "ab") && !same("ab", "ac") && !same("ab", "abc"));
    }
}

//! `host-trainer keygen`: the ed25519 key pair that signs bundles.
//!
//! Files (hex, one line each): `<name>.key` holds the 32-byte private seed and is created with
//! mode 0600; `<name>.pub` holds the public key that devices trust. Both are written atomically
//! (temporary file, fsync, rename), and an existing private key is never replaced without
//! `--force`: bundles signed with it would no longer verify against a new public key.

use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use firm_shared::bundle::container::{self, generate_key, key_hex};
use firm_shared::fsutil::write_atomic_mode;

use crate::error::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct KeygenArgs {
    /// Folder for the key pair (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Base name of the two files: NAME.key (private, 0600) and NAME.pub.
    #[arg(long, default_value = "bundle")]
    pub name: String,
    /// Replace an existing key pair (bundles signed with the old key stop verifying).
    #[arg(long)]
    pub force: bool,
}

/// Generate and write the key pair; returns (private, public) paths.
pub fn run(args: &KeygenArgs) -> Result<(PathBuf, PathBuf)> {
    if args.name.is_empty() || args.name.contains('/') {
        return Err(Error::invalid("--name", "must be a plain file name"));
    }
    std::fs::create_dir_all(&args.out).map_err(Error::io("create", &args.out))?;
    let private = args.out.join(format!("{}.key", args.name));
    let public = args.out.join(format!("{}.pub", args.name));
    if !args.force && (private.exists() || public.exists()) {
        return Err(Error::invalid(
            "--out",
            format!(
                "{} already holds a key pair `{}`; pass --force to replace it (bundles signed \
                 with the old key will no longer verify)",
                args.out.display(),
                args.name
            ),
        ));
    }
    let key = generate_key().map_err(|e| Error::invalid("keygen", e))?;
    write_atomic_mode(
        &private,
        format!("{}\n", key_hex(&key.to_bytes())).as_bytes(),
        0o600,
    )?;
    write_atomic_mode(
        &public,
        format!("{}\n", key_hex(&key.verifying_key().to_bytes())).as_bytes(),
        0o644,
    )?;
    Ok((private, public))
}

/// The 32 bytes of a key file (64 hex digits); `flag` names the option in errors.
fn read_key(path: &Path, flag: &'static str, kind: &str) -> Result<[u8; 32]> {
    // Bytes, not a string: a binary file given by mistake is a bad key, not an I/O error.
    let raw = std::fs::read(path).map_err(Error::io("read", path))?;
    container::parse_key_hex(&String::from_utf8_lossy(&raw)).map_err(|e| {
        Error::invalid(
            flag,
            format!("{}: {e} (a keygen {kind} file)", path.display()),
        )
    })
}

/// A private key file written by keygen (`--key`).
pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_key(path, "--key", ".key")?))
}

/// A public key file written by keygen (`--pubkey`).
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let raw = std::fs::read(path).map_err(Error::io("read", path))?;
    container::parse_verifying_key(&String::from_utf8_lossy(&raw)).map_err(|e| {
        Error::invalid(
            "--pubkey",
            format!("{}: {e} (a keygen .pub file)", path.display()),
        )
    })
}

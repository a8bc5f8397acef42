//! Raw bytes into the bundle reader: `container::read`, `container::open` (fixed key) and
//! `Bundle::parse_unverified`. None may panic. When `read` accepts the input, the canonical-form
//! claim is checked too: the file is exactly what `container::write` makes of its members (bar
//! the 64 signature bytes), and `open`/`Bundle::open` agree with `read`/`verify`/`from_container`.
#![no_main]

use std::sync::LazyLock;

use ed25519_dalek::{SigningKey, VerifyingKey};
use firm_fuzz::{LIMITS, same, signing_key, verbose};
use firm_shared::bundle::Bundle;
use firm_shared::bundle::container::{self, SIGNATURE_NAME};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<SigningKey> = LazyLock::new(signing_key);
static PK: LazyLock<VerifyingKey> = LazyLock::new(|| KEY.verifying_key());

/// Header + 64 signature bytes padded to a block + the two end-of-archive blocks.
const SIGNATURE_TAIL: usize = 512 + 512 + 1024;

fuzz_target!(|bytes: &[u8]| {
    let limits = &LIMITS;
    let read = container::read(bytes, limits);
    let opened = container::open(bytes, &PK, limits);
    let parsed = Bundle::parse_unverified(bytes, limits);
    let bundle_opened = Bundle::open(bytes, &PK, limits);
    if verbose() {
        eprintln!(
            "read: {:?}; open: {:?}; parse_unverified: {:?}; Bundle::open: {:?}",
            read.as_ref().map(|c| c.members.len()),
            opened.as_ref().map(|c| c.members.len()),
            parsed.as_ref().map(|b| b.manifest.bank.entries),
            bundle_opened.as_ref().map(|b| b.manifest.bank.entries),
        );
    }
    // Error messages are part of the reader: format them (must not panic either).
    if let Err(e) = &read {
        let _ = e.to_string();
    }
    if let Err(e) = &parsed {
        let _ = e.to_string();
    }
    if let Err(e) = &bundle_opened {
        let _ = e.to_string();
    }

    let c = match read {
        Ok(c) => c,
        Err(e) => {
            assert_eq!(opened, Err(e), "open and read disagree on a refused file");
            assert!(
                parsed.is_err(),
                "parse_unverified accepted what read refused"
            );
            assert!(
                bundle_opened.is_err(),
                "Bundle::open accepted what read refused"
            );
            return;
        }
    };

    // Structure.
    assert!(
        c.signed_len <= bytes.len(),
        "signed_len {} > {}",
        c.signed_len,
        bytes.len()
    );
    assert_eq!(c.signed_len % 512, 0, "signed_len not block aligned");
    assert_eq!(
        bytes.len(),
        c.signed_len + SIGNATURE_TAIL,
        "file length vs signed_len"
    );
    assert!(c.members.len() <= limits.max_members);
    let mut names = std::collections::BTreeSet::new();
    for m in &c.members {
        container::check_name(&m.name).expect("read returned a member name check_name refuses");
        assert_ne!(m.name, SIGNATURE_NAME, "signature returned as a member");
        assert!(
            names.insert(m.name.as_str()),
            "duplicate member {:?}",
            m.name
        );
        assert!(m.data.len() as u64 <= limits.max_member);
    }
    assert_eq!(
        &bytes[c.signed_len + 512..c.signed_len + 576],
        &c.signature[..]
    );

    // Canonical form: writing the members again gives the same bytes, signature aside.
    let w =
        container::write(&c.members, &KEY, limits).expect("write refused members read accepted");
    assert_eq!(w.len(), bytes.len(), "rewritten length differs");
    assert_eq!(
        &w[..c.signed_len],
        &bytes[..c.signed_len],
        "signed part is not canonical"
    );
    let mut w_with_sig = w.clone();
    w_with_sig[c.signed_len + 512..c.signed_len + 576].copy_from_slice(&c.signature);
    assert!(
        w_with_sig == bytes,
        "file differs from write(members) outside the signature"
    );
    let back = container::open(&w, &PK, limits).expect("open refused what write produced");
    assert_eq!(back.members, c.members, "write -> read changed the members");
    assert_eq!(back.signed_len, c.signed_len);

    // open = read + verify; the bundle layer = container + from_container.
    let verified = container::verify(bytes, &c, &PK);
    match (&opened, &verified) {
        (Ok(o), Ok(())) => assert_eq!(o, &c),
        (Err(e), Err(v)) => assert_eq!(e, v),
        _ => panic!("open {opened:?} disagrees with read + verify {verified:?}"),
    }
    let from = Bundle::from_container(&c);
    assert!(
        same(&parsed, &from),
        "parse_unverified differs from read + from_container"
    );
    match (&bundle_opened, &verified) {
        (Ok(b), Ok(())) => assert!(same(&Ok(b), &from.as_ref()), "Bundle::open differs"),
        (Err(_), Err(_)) => {}
        (Err(e), Ok(())) => assert!(same(&Err(e), &from.as_ref()), "Bundle::open differs"),
        (Ok(_), Err(_)) => panic!("Bundle::open accepted a bad signature"),
    }
});

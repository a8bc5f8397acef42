//! What the fuzz targets share: the fixed key and the small limits.

use ed25519_dalek::SigningKey;
use firm_shared::bundle::Limits;

/// Seed of the fixed signing key. `scripts/fuzz` signs the seed bundle with the same key (its
/// hex form: "42" 32 times), so `open` gets past the signature on the seed.
pub const KEY_SEED: [u8; 32] = [0x42; 32];

pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&KEY_SEED)
}

/// Small limits, so no input can make the reader ask for a large allocation.
pub const LIMITS: Limits = Limits {
    max_member: 1 << 20,
    max_total: 4 << 20,
    max_members: 64,
};

/// Equal, or equal but for NaN (which `PartialEq` never calls equal): same Debug text.
pub fn same<T: PartialEq + std::fmt::Debug>(a: &T, b: &T) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

/// `FIRM_FUZZ_VERBOSE=1` prints each input's outcome (to check what the seeds reach, e.g.
/// `FIRM_FUZZ_VERBOSE=1 cargo +nightly fuzz run bundle_members fuzz/corpus/bundle_members -- -runs=0`).
pub fn verbose() -> bool {
    static V: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os("FIRM_FUZZ_VERBOSE").is_some());
    *V
}

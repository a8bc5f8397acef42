//! The bundle: the signed file that carries a trained model from the trainer to the appliance
//! (DESIGN section 4). Format reference: `docs/bundle-format.md`.
//!
//! One file, a canonical signed ustar archive ([`container`]) with exactly these members:
//!
//! | member | content |
//! |---|---|
//! | `manifest.json` | [`Manifest`]: schema version, class, model, preprocessing, score, threshold, bank, self-test, provenance, size + SHA-256 of every other member |
//! | `encoder.safetensors` | [`weights`]: BatchNorm folded, int8 per output channel + f32 scales and biases |
//! | `bank.safetensors` | [`bank`]: f16 ID bank per rotation angle + one thumbnail per entry |
//! | `selftest.safetensors` | [`selftest`]: preprocessed images with expected embeddings and distances |
//! | `signature.ed25519` | ed25519 over every byte before its own header |
//!
//! [`Bundle::open`] verifies the signature before it parses a single member; the members are then
//! checked against the manifest (size, SHA-256, dtypes, shapes, exactly the expected tensors).
//! Running a bundle is not this module's job: [`crate::detect::Detector`] does, and its
//! `self_test` must reproduce the expected values within the manifest's tolerance before a device
//! uses the bundle.

pub mod bank;
pub mod container;
pub mod error;
pub mod manifest;
pub mod scan;
pub mod selftest;
pub mod tensors;
pub mod weights;

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

pub use bank::BankData;
pub use container::{Container, ContainerError, ContainerRef, Limits, Member, MemberRef};
pub use error::BundleError;
pub use manifest::{Manifest, MemberInfo};
pub use selftest::{SelfTestData, SelfTestReport};
pub use weights::EncoderWeights;

pub const MANIFEST: &str = "manifest.json";
/// Every member but the signature, in file order.
pub const MEMBERS: [&str; 4] = [MANIFEST, weights::MEMBER, bank::MEMBER, selftest::MEMBER];

/// A bundle's content, parsed and cross-checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub manifest: Manifest,
    pub encoder: EncoderWeights,
    pub bank: BankData,
    pub selftest: SelfTestData,
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Refuse a member that is not part of the bundle format.
pub(crate) fn check_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), BundleError> {
    let names: BTreeSet<&str> = names.collect();
    match names.iter().find(|n| !MEMBERS.contains(n)) {
        Some(extra) => Err(BundleError::UnexpectedMember {
            name: extra.to_string(),
        }),
        None => Ok(()),
    }
}

/// Check the members against the manifest's list: every member but the manifest listed with
/// its size and SHA-256, nothing else listed. `digest(name)`: the member's size and SHA-256
/// (hex), `None` when the file has no such member.
pub(crate) fn check_listed(
    manifest: &Manifest,
    digest: impl Fn(&str) -> Option<(u64, String)>,
) -> Result<(), BundleError> {
    let listed: BTreeMap<&str, &MemberInfo> = manifest
        .members
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    for &name in &MEMBERS[1..] {
        let (size, sha256) = digest(name).ok_or_else(|| BundleError::MissingMember {
            name: name.to_string(),
        })?;
        let info = listed
            .get(name)
            .ok_or_else(|| BundleError::manifest(format!("`members` does not list {name:?}")))?;
        if info.size != size {
            return Err(BundleError::MemberMismatch {
                name: name.into(),
                why: format!("{size} bytes, the manifest says {}", info.size),
            });
        }
        if sha256 != info.sha256 {
            return Err(BundleError::MemberMismatch {
                name: name.into(),
                why: "SHA-256 differs from the manifest's".into(),
            });
        }
    }
    if let Some(extra) = listed.keys().find(|n| !MEMBERS[1..].contains(n)) {
        return Err(BundleError::manifest(format!(
            "`members` lists {extra:?}, which is not a bundle member"
        )));
    }
    Ok(())
}

impl Bundle {
    /// The file's bytes, signed with `key`. `manifest.members` is filled in here.
    pub fn to_bytes(&self, key: &SigningKey, limits: &Limits) -> Result<Vec<u8>, BundleError> {
        let data = [
            (weights::MEMBER, self.encoder.to_safetensors()?),
            (bank::MEMBER, self.bank.to_safetensors()?),
            (selftest::MEMBER, self.selftest.to_safetensors()?),
        ];
        let mut manifest = self.manifest.clone();
        manifest.members = data
            .iter()
            .map(|(n, d)| {
                (
                    n.to_string(),
                    MemberInfo {
                        size: d.len() as u64,
                        sha256: sha256_hex(d),
                    },
                )
            })
            .collect();
        let mut members = vec![Member {
            name: MANIFEST.into(),
            data: manifest.to_json(),
        }];
        members.extend(data.into_iter().map(|(n, d)| Member {
            name: n.into(),
            data: d,
        }));
        Ok(container::write(&members, key, limits)?)
    }

    /// Verify the signature with `key`, then parse every member.
    pub fn open(bytes: &[u8], key: &VerifyingKey, limits: &Limits) -> Result<Self, BundleError> {
        let c = container::read_ref(bytes, limits)?;
        c.verify(bytes, key)?;
        Self::from_container_ref(&c)
    }

    /// Parse without checking the signature: for `bundle inspect` without a key and for tests.
    /// Never trust what this returns on a device.
    pub fn parse_unverified(bytes: &[u8], limits: &Limits) -> Result<Self, BundleError> {
        let c = container::read_ref(bytes, limits)?;
        Self::from_container_ref(&c)
    }

    /// Members of a container that has been read (and, for trust, verified).
    pub fn from_container(c: &Container) -> Result<Self, BundleError> {
        Self::from_container_ref(&c.as_ref())
    }

    /// Verify the signature with one of `keys`, then parse every member, taking the file's
    /// buffer: when the bank's thumbnails are most of the file (a bundle of many good images),
    /// they are moved to the front of the buffer and it becomes theirs, so that loading holds
    /// the file once instead of the file and a copy of its largest part (memory during a
    /// flash, issue 18). What is left of the buffer behind them (less than they take) stays
    /// allocated with them.
    pub fn open_owned(
        mut bytes: Vec<u8>,
        keys: &[VerifyingKey],
        limits: &Limits,
    ) -> Result<Self, BundleError> {
        let c = container::read_ref(&bytes, limits)?;
        if !keys.iter().any(|k| c.verify(&bytes, k).is_ok()) {
            return Err(ContainerError::BadSignature.into());
        }
        let (mut bundle, thumbnails) = Self::decode(&c)?;
        let len = thumbnails.len();
        if len < bytes.len() / 2 {
            bundle.bank.thumbnails = thumbnails.to_vec();
            return Ok(bundle);
        }
        // Where the thumbnails lie in the buffer (they are a slice of it).
        let start = thumbnails.as_ptr() as usize - bytes.as_ptr() as usize;
        debug_assert!(start + len <= bytes.len());
        drop(c);
        bytes.copy_within(start..start + len, 0);
        bytes.truncate(len);
        bundle.bank.thumbnails = bytes;
        Ok(bundle)
    }

    /// [`Self::from_container`] on a container that borrows the file's bytes.
    pub fn from_container_ref(c: &ContainerRef<'_>) -> Result<Self, BundleError> {
        let (mut bundle, thumbnails) = Self::decode(c)?;
        bundle.bank.thumbnails = thumbnails.to_vec();
        Ok(bundle)
    }

    /// Every member parsed and cross-checked, but the bank's thumbnails left empty: their bytes
    /// where they lie in the container.
    fn decode<'a>(c: &ContainerRef<'a>) -> Result<(Self, &'a [u8]), BundleError> {
        check_names(c.members.iter().map(|m| m.name))?;
        let get = |name: &str| {
            c.get(name).ok_or_else(|| BundleError::MissingMember {
                name: name.to_string(),
            })
        };
        let manifest = Manifest::from_json(get(MANIFEST)?)?;
        check_listed(&manifest, |name| {
            c.get(name).map(|d| (d.len() as u64, sha256_hex(d)))
        })?;
        let m = &manifest;
        let encoder = EncoderWeights::from_safetensors(get(weights::MEMBER)?, &m.model.graph)?;
        let float = encoder.float_layers();
        if float != m.model.weights.float_layers {
            return Err(BundleError::inconsistent(format!(
                "layers stored in f32 {float:?}; the manifest lists {:?}",
                m.model.weights.float_layers
            )));
        }
        let allowed = encoder.int8_inputs(&m.model.graph);
        if let Some(a) = m
            .model
            .activations
            .iter()
            .find(|a| !allowed.contains(&a.tensor))
        {
            return Err(BundleError::inconsistent(format!(
                "model.activations quantizes tensor {}, which is not read by int8 convolutions only",
                a.tensor
            )));
        }
        let (bank, thumbnails) = BankData::without_thumbnails(
            get(bank::MEMBER)?,
            m.bank.entries,
            m.model.feature_dim,
            &m.bank.angles,
            m.bank.thumbnail_size,
            m.patch.as_ref().map(|p| (p.entries, p.dim)),
        )?;
        let selftest = SelfTestData::from_safetensors(
            get(selftest::MEMBER)?,
            m.selftest.cases.len(),
            m.model.input_size,
            m.model.feature_dim,
            m.patch.is_some(),
        )?;
        let bundle = Self {
            manifest,
            encoder,
            bank,
            selftest,
        };
        Ok((bundle, thumbnails))
    }

    /// Load the bundle on the CPU backend and run its self-test there.
    pub fn self_test_cpu(&self) -> Result<SelfTestReport, BundleError> {
        self.self_test_on(crate::detect::Backend::Cpu)
    }

    /// Load the bundle on `backend` and run its self-test there.
    pub fn self_test_on(
        &self,
        backend: crate::detect::Backend,
    ) -> Result<SelfTestReport, BundleError> {
        crate::detect::Detector::on(self, backend)?.self_test(self)
    }
}

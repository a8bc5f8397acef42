//! What can be wrong with a bundle, one variant per failure mode, each naming the member, tensor or
//! field involved. A device refuses the bundle on any of them and says which.

use super::container::ContainerError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The archive itself: truncation, edited headers or padding, names, sizes, signature.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// manifest.json is not a manifest of a known schema.
    #[error("manifest.json: {why}")]
    Manifest { why: String },
    #[error(
        "manifest.json has schema-version {found}; this build reads schema-version {supported} \
         (update the runtime, or export with a matching trainer)"
    )]
    UnknownSchema { found: u64, supported: u32 },
    #[error(
        "manifest.json has schema-version {found}, written before bundles carried the encoder \
         graph; this build reads schema-version {supported}. Export the run again with this \
         trainer: host-trainer export --run RUN --key KEY --out FILE"
    )]
    OutdatedSchema { found: u64, supported: u32 },
    #[error("member {name:?} is missing")]
    MissingMember { name: String },
    #[error("member {name:?} is not part of the bundle format")]
    UnexpectedMember { name: String },
    /// A member's size or SHA-256 differs from what the manifest lists.
    #[error("member {name:?} does not match the manifest: {why}")]
    MemberMismatch { name: String, why: String },
    #[error("{member}: tensor `{tensor}` {why}")]
    Tensor {
        member: String,
        tensor: String,
        why: String,
    },
    /// Members that parse but contradict each other or the manifest.
    #[error("inconsistent bundle: {why}")]
    Inconsistent { why: String },
    /// The bundle's own inputs do not give its expected outputs on this path.
    #[error("self-test failed: {why}")]
    SelfTest { why: String },
    /// The file could not be read ([`super::scan`]; the caller names the file).
    #[error("cannot read the bundle file: {why}")]
    Read { why: String },
    /// The inference path could not run the bundle.
    #[error("cannot run the bundle: {why}")]
    Runtime { why: String },
}

impl BundleError {
    pub(crate) fn tensor(member: &str, tensor: &str, why: impl Into<String>) -> Self {
        BundleError::Tensor {
            member: member.into(),
            tensor: tensor.into(),
            why: why.into(),
        }
    }

    pub(crate) fn manifest(why: impl Into<String>) -> Self {
        BundleError::Manifest { why: why.into() }
    }

    pub(crate) fn inconsistent(why: impl Into<String>) -> Self {
        BundleError::Inconsistent { why: why.into() }
    }

    pub(crate) fn runtime(e: impl std::fmt::Display) -> Self {
        BundleError::Runtime { why: e.to_string() }
    }
}

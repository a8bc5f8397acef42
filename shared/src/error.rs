//! The one error type of firm-shared. Every variant names the file, field or tensor involved and what
//! was expected, so a process engineer can act on the message without reading code.

use std::path::PathBuf;

/// Result alias used throughout firm-shared.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a caller can react to (see [`Error::kind`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a decodable PNG or JPEG image ({reason})")]
    Decode { path: PathBuf, reason: String },
    #[error("{path}: unsupported image: {reason}")]
    UnsupportedImage { path: PathBuf, reason: String },
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },
    #[error("{path}: weight file does not fit the model: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("bundle refused: {0}")]
    Bundle(#[from] crate::bundle::BundleError),
    /// The GPU stack (the `wgpu` executor): no usable adapter, a device that refused, a kernel
    /// that failed to build or run.
    #[error("GPU {what}: {reason}")]
    Gpu { what: &'static str, reason: String },
}

/// Coarse classes of [`Error`], for code that must decide whether to retry, skip or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file system refused (missing file, permissions, disk).
    Io,
    /// The input data itself is bad (corrupt, unsupported, wrong shape): skip or reject it.
    BadInput,
    /// The caller passed an impossible setting.
    InvalidArgument,
    /// A bug or resource problem inside the numeric backend.
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Decode { .. } | Error::UnsupportedImage { .. } | Error::Weights { .. } => {
                ErrorKind::BadInput
            }
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Candle(_) | Error::Gpu { .. } => ErrorKind::Internal,
            Error::Bundle(_) => ErrorKind::BadInput,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            what,
            reason: reason.into(),
        }
    }
}

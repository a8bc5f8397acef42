//! Errors of the trainer library. Each names the path involved and what was expected there, so a
//! process engineer can fix the data without reading code.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path} does not exist; expected {expected}")]
    NotFound { path: PathBuf, expected: String },
    #[error("{path} is not laid out as expected: {expected}")]
    Layout { path: PathBuf, expected: String },
    #[error("class `{class}` not found in {root}; {available}")]
    UnknownClass {
        root: PathBuf,
        class: String,
        available: String,
    },
    #[error("no PNG or JPEG images in {dir}{note}")]
    NoImages { dir: PathBuf, note: String },
    #[error("{dir}: {found} usable training image(s); at least {needed} are needed{note}")]
    TooFew {
        dir: PathBuf,
        found: usize,
        needed: usize,
        note: String,
    },
    #[error("{path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error(
        "{bad} of {total} images could not be used (first: {first}); that is more than a few \
         corrupt files — check the folder, or pass --strict to stop at the first one"
    )]
    TooManyBad {
        bad: usize,
        total: usize,
        first: String,
    },
    #[error(
        "no dataset given and none found at {looked}. Use --data ROOT --class NAME for an \
         MVTec-AD layout (ROOT/NAME/train/good, ROOT/NAME/test/<type>), --good DIR for a plain \
         folder of good images, or --demo for generated data"
    )]
    NoDefaultData { looked: PathBuf },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: bundle refused at the {step} check: {reason}")]
    BundleRefused {
        path: PathBuf,
        step: String,
        reason: String,
    },
    #[error(transparent)]
    Shared(#[from] firm_shared::Error),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Process exit code for this error: 2 for an impossible setting (as for command-line usage
    /// errors), 3 for unusable input data, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid { .. } => 2,
            Error::NotFound { .. }
            | Error::Layout { .. }
            | Error::UnknownClass { .. }
            | Error::NoImages { .. }
            | Error::TooFew { .. }
            | Error::BadImage { .. }
            | Error::TooManyBad { .. }
            | Error::NoDefaultData { .. }
            | Error::BundleRefused { .. } => 3,
            Error::Shared(e) => match e.kind() {
                firm_shared::ErrorKind::InvalidArgument => 2,
                firm_shared::ErrorKind::BadInput => 3,
                _ => 1,
            },
            _ => 1,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

impl From<firm_shared::bundle::BundleError> for Error {
    fn from(e: firm_shared::bundle::BundleError) -> Self {
        Error::Shared(e.into())
    }
}

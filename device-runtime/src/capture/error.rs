//! Capture errors and their coarse [`ErrorKind`], which tells generic code (the pipeline,
//! [`super::Reconnecting`]) whether to reopen, skip, finish or stop.
//!
//! Every message is complete on its own (the status page shows `to_string()`): it names the
//! device, folder or file and what was expected, and includes the OS error text.

use std::io;
use std::path::PathBuf;

use super::decode::PixelError;

/// What the caller should do about a [`CaptureError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The device went away or is not ready: drop the source and reopen it with backoff.
    Disconnected,
    /// This one frame is unusable: count it, skip it, ask for the next.
    BadFrame,
    /// A finite source (a `dir:` replay without looping) has delivered its last frame.
    EndOfStream,
    /// A configuration error no retry can fix: stop and report.
    Fatal,
}

/// Why a frame source could not be opened or could not deliver a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error(
        "invalid capture source {spec:?}: {reason}; expected \"dir:PATH\", \"synthetic\" or \"v4l:/dev/videoN\""
    )]
    InvalidSpec { spec: String, reason: String },

    #[error("invalid capture option {field} = {value}: expected {expected}")]
    InvalidOption {
        field: &'static str,
        value: String,
        expected: &'static str,
    },

    /// The replay folder is missing, unreadable or holds no images.
    #[error("{path}: cannot replay this folder: {reason}")]
    Folder { path: PathBuf, reason: String },

    /// One replayed file could not be read or decoded; the next call moves on to the next file.
    #[error("{path}: skipped: {reason}")]
    BadFile { path: PathBuf, reason: String },

    /// A camera buffer the driver flagged as broken or that does not decode.
    #[error("{origin}: bad frame: {reason}")]
    BadFrame { origin: String, reason: String },

    /// A raw camera buffer does not fit its pixel format (see [`PixelError`]).
    #[error("{origin}: bad frame: {error}")]
    Pixel { origin: String, error: PixelError },

    /// The camera is missing, unplugged, stalled or in an error state.
    #[error("{device}: {op} failed: {error} (camera unplugged, not ready or stalled)")]
    Disconnected {
        device: PathBuf,
        op: &'static str,
        error: io::Error,
    },

    /// The device exists but cannot be used as configured (not a capture device, format
    /// refused, permission denied).
    #[error("{device}: {reason}")]
    Device { device: PathBuf, reason: String },

    #[error("{origin}: end of stream after {frames} frames")]
    EndOfStream { origin: String, frames: u64 },

    #[error(
        "capture source {spec:?}: this program was built without the {feature} feature; rebuild with `cargo build -p device-runtime --features {feature}`"
    )]
    FeatureDisabled { spec: String, feature: &'static str },
}

impl CaptureError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CaptureError::InvalidSpec { .. }
            | CaptureError::InvalidOption { .. }
            | CaptureError::Folder { .. }
            | CaptureError::Device { .. }
            | CaptureError::FeatureDisabled { .. } => ErrorKind::Fatal,
            CaptureError::BadFile { .. }
            | CaptureError::BadFrame { .. }
            | CaptureError::Pixel { .. } => ErrorKind::BadFrame,
            CaptureError::Disconnected { .. } => ErrorKind::Disconnected,
            CaptureError::EndOfStream { .. } => ErrorKind::EndOfStream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_subject_and_the_expectation() {
        let e = CaptureError::InvalidSpec {
            spec: "camera".into(),
            reason: "unknown kind \"camera\"".into(),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("\"camera\"") && msg.contains("v4l:/dev/videoN"),
            "{msg}"
        );
        assert_eq!(e.kind(), ErrorKind::Fatal);

        let e = CaptureError::Disconnected {
            device: "/dev/video3".into(),
            op: "VIDIOC_DQBUF",
            error: io::Error::from_raw_os_error(19),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("/dev/video3") && msg.contains("VIDIOC_DQBUF"),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("no such device"), "{msg}");
        assert_eq!(e.kind(), ErrorKind::Disconnected);

        let e = CaptureError::Pixel {
            origin: "v4l:/dev/video0".into(),
            error: PixelError::OddWidth { width: 5 },
        };
        assert!(e.to_string().contains("v4l:/dev/video0"));
        assert_eq!(e.kind(), ErrorKind::BadFrame);
    }
}

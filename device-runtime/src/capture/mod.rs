//! Frame sources: where the pipeline's images come from.
//!
//! - [`FrameSource`]: the trait; `next_frame` blocks (each source runs on its own thread).
//! - [`SourceSpec`] + [`CaptureOptions`] -> [`open`]: `dir:PATH` ([`dir`]), `synthetic`
//!   ([`synthetic`]), `v4l:/dev/videoN` (`v4l` module, feature `v4l`; without it `open` returns
//!   [`CaptureError::FeatureDisabled`]).
//! - [`Reconnecting`] / [`open_with_retry`]: reopen on disconnect with backoff, skip bad frames.
//! - [`decode`]: YUYV and GREY buffers -> RGB, pure functions (tested without a camera).
//!
//! Errors carry an [`ErrorKind`]: `Disconnected` (reopen), `BadFrame` (skip, count),
//! `EndOfStream`, `Fatal` (configuration: stop).

pub mod decode;
pub mod dir;
mod error;
mod pacer;
mod reconnect;
mod spec;
pub mod synthetic;
#[cfg(feature = "v4l")]
pub mod v4l;

use std::time::SystemTime;

use serde::Serialize;

pub use decode::PixelError;
pub use dir::DirSource;
pub use error::{CaptureError, ErrorKind};
pub use reconnect::{Backoff, Reconnecting};
pub use spec::{CaptureOptions, MIN_SYNTHETIC_SIDE, PixelFormat, SourceSpec};
pub use synthetic::SyntheticSource;

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Frames delivered by this source so far (0 first); bad frames are not numbered.
    pub seq: u64,
    /// Wall-clock time the frame was captured (for a replay: read).
    pub time: SystemTime,
    pub image: image::RgbImage,
    /// `dir`: the file's path relative to the folder (`good/000.png`); `synthetic`:
    /// [`synthetic::SOURCE_GOOD`] or [`synthetic::SOURCE_DEFECT`]; `v4l`: `v4l:/dev/videoN`.
    pub source: String,
}

/// State shown on the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SourceStatus {
    pub connected: bool,
    pub reconnects: u64,
    pub bad_frames: u64,
    pub frames: u64,
    pub last_error: Option<String>,
    /// What is being captured, e.g. `v4l:/dev/video0 (HD Webcam, MJPEG 1280x720)`.
    pub description: String,
}

/// What every source counts: frames delivered (their `seq`), bad frames, the last error; and
/// how a decoded image becomes a [`Frame`] or a bad frame.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    pub frames: u64,
    pub bad_frames: u64,
    pub last_error: Option<String>,
}

impl Tally {
    /// Number a good image as the next frame, or count a bad one (and keep its message).
    pub fn deliver(
        &mut self,
        image: Result<image::RgbImage, CaptureError>,
        source: impl FnOnce() -> String,
    ) -> Result<Frame, CaptureError> {
        match image {
            Ok(image) => {
                let frame = Frame {
                    seq: self.frames,
                    time: SystemTime::now(),
                    image,
                    source: source(),
                };
                self.frames += 1;
                Ok(frame)
            }
            Err(e) => {
                self.bad_frames += 1;
                self.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The status of a source that is connected (sources that reconnect wrap this one).
    pub fn status(&self, description: String) -> SourceStatus {
        SourceStatus {
            connected: true,
            reconnects: 0,
            bad_frames: self.bad_frames,
            frames: self.frames,
            last_error: self.last_error.clone(),
            description,
        }
    }
}

/// A camera or something that stands in for one.
pub trait FrameSource: Send {
    /// Blocks until the next frame (the pipeline runs each source on its own thread).
    fn next_frame(&mut self) -> Result<Frame, CaptureError>;
    fn status(&self) -> SourceStatus;
}

impl<S: FrameSource + ?Sized> FrameSource for Box<S> {
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        (**self).next_frame()
    }

    fn status(&self) -> SourceStatus {
        (**self).status()
    }
}

/// Open the source `spec` names, once (no retry: see [`open_with_retry`]).
pub fn open(
    spec: &SourceSpec,
    opts: &CaptureOptions,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    opts.validate(spec)?;
    match spec {
        SourceSpec::Dir { path } => Ok(Box::new(DirSource::open(path, opts)?)),
        SourceSpec::Synthetic => Ok(Box::new(SyntheticSource::new(opts))),
        SourceSpec::V4l { device } => open_v4l(device, opts),
    }
}

/// Open `spec` inside a [`Reconnecting`] wrapper. Configuration errors (Fatal) are returned now;
/// a camera that is not there yet is waited for by the first `next_frame`.
pub fn open_with_retry(
    spec: &SourceSpec,
    opts: &CaptureOptions,
    backoff: Backoff,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    open_with_retry_beating(spec, opts, backoff, None)
}

/// [`open_with_retry`] whose retries beat `heartbeat` (the pipeline's, for the systemd watchdog:
/// see [`crate::watchdog`]).
pub fn open_with_retry_beating(
    spec: &SourceSpec,
    opts: &CaptureOptions,
    backoff: Backoff,
    heartbeat: Option<std::sync::Arc<crate::watchdog::Heartbeat>>,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    opts.validate(spec)?;
    let (spec, opts) = (spec.clone(), opts.clone());
    let mut source = Reconnecting::start(move || open(&spec, &opts), backoff)?;
    if let Some(h) = heartbeat {
        source = source.with_heartbeat(h);
    }
    Ok(Box::new(source))
}

#[cfg(feature = "v4l")]
fn open_v4l(
    device: &std::path::Path,
    opts: &CaptureOptions,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    Ok(Box::new(v4l::V4lSource::open(device, opts)?))
}

#[cfg(not(feature = "v4l"))]
fn open_v4l(
    device: &std::path::Path,
    _opts: &CaptureOptions,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    Err(CaptureError::FeatureDisabled {
        spec: format!("v4l:{}", device.display()),
        feature: "v4l",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_dispatches_on_the_spec_and_validates_options() {
        let opts = CaptureOptions {
            width: 32,
            height: 32,
            ..CaptureOptions::default()
        };
        let mut s = open(&"synthetic".parse().unwrap(), &opts).unwrap();
        assert_eq!(s.next_frame().unwrap().image.dimensions(), (32, 32));
        assert!(s.status().description.starts_with("synthetic 32x32"));

        let bad = CaptureOptions {
            fps: Some(0.0),
            ..opts.clone()
        };
        let e = open(&SourceSpec::Synthetic, &bad).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Fatal);

        let missing = SourceSpec::Dir {
            path: "/nonexistent/replay".into(),
        };
        let e = open_with_retry(&missing, &opts, Backoff::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Fatal);
        assert!(e.to_string().contains("/nonexistent/replay"), "{e}");
    }

    #[cfg(not(feature = "v4l"))]
    #[test]
    fn v4l_without_the_feature_is_a_clear_fatal_error() {
        let spec: SourceSpec = "v4l:/dev/video0".parse().unwrap();
        for e in [
            open(&spec, &CaptureOptions::default()).err().unwrap(),
            open_with_retry(&spec, &CaptureOptions::default(), Backoff::default())
                .err()
                .unwrap(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Fatal);
            let msg = e.to_string();
            assert!(msg.contains("built without the v4l feature"), "{msg}");
            assert!(msg.contains("/dev/video0"), "{msg}");
        }
    }

    #[test]
    fn status_serialises_in_kebab_case() {
        let st = SourceStatus {
            connected: false,
            reconnects: 2,
            bad_frames: 1,
            frames: 10,
            last_error: Some("gone".into()),
            description: "fake".into(),
        };
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains("\"bad-frames\":1") && json.contains("\"last-error\":\"gone\""));
    }
}

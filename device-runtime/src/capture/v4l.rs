//! `v4l:/dev/videoN`: a Video4Linux2 camera (feature `v4l`), mmap streaming.
//!
//! Opening asks the driver for the configured pixel format and resolution; the driver picks the
//! nearest size it supports (logged, and frames come at that size), but a format it does not
//! offer is a Fatal error listing the ones it does. A requested fps is passed on as the frame
//! interval (best effort). A configured exposure turns auto exposure off
//! (`V4L2_CID_EXPOSURE_AUTO` = manual) and sets `V4L2_CID_EXPOSURE_ABSOLUTE` (100 us units);
//! a camera without those controls is logged and keeps its own exposure (best effort too: a
//! UVC camera may only take manual exposure in some modes).
//!
//! Buffers -> RGB through [`super::decode`]: MJPEG with the decoder image files use (it copes
//! with the Huffman-table-less JPEG many UVC cameras send), limited to the negotiated frame size;
//! YUYV (as BT.601 limited range) and GREY.
//!
//! Error mapping: a missing node, an unplugged camera (ENODEV/EIO on any streaming ioctl), a
//! busy device or no frame within [`FRAME_TIMEOUT`] -> `Disconnected` (reopen with backoff); a
//! node that is not a V4L2 capture device, a refused format or missing permission -> Fatal; a
//! buffer the driver flags as broken or that does not decode -> `BadFrame`.

use std::io;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::capability::Flags as CapabilityFlags;
use v4l::control::{Control, Value as ControlValue};
use v4l::format::Quantization;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, Format, FourCC};

use super::decode::{grey_to_rgb_strided, mjpeg_to_rgb, yuyv_to_rgb_strided};
use super::{CaptureError, CaptureOptions, Frame, FrameSource, PixelFormat, SourceStatus, Tally};

/// A camera that delivers nothing for this long is treated as disconnected.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// mmap buffers requested from the driver.
const BUFFERS: u32 = 4;
/// `V4L2_CID_EXPOSURE_AUTO` (camera class base 0x009a0900 + 1) and its `V4L2_EXPOSURE_MANUAL`.
const CID_EXPOSURE_AUTO: u32 = 0x009a_0901;
const EXPOSURE_MANUAL: i64 = 1;
/// `V4L2_CID_EXPOSURE_ABSOLUTE` (`exposure_time_absolute`), in units of 100 us.
const CID_EXPOSURE_ABSOLUTE: u32 = 0x009a_0902;

// Linux errno values (v4l is Linux-only; the workspace does not depend on libc directly).
const EPERM: i32 = 1;
const EACCES: i32 = 13;
const EINVAL: i32 = 22;
const ENOTTY: i32 = 25;

/// An open, streaming V4L2 capture device.
pub struct V4lSource {
    device: PathBuf,
    /// `v4l:/dev/videoN`, the [`Frame::source`] of every frame.
    origin: String,
    format: PixelFormat,
    width: u32,
    height: u32,
    /// Bytes per line as the driver reports it (0: packed).
    stride: usize,
    /// Always `Some` until dropped; see the `Drop` impl. The stream keeps the device's file
    /// descriptor open through its own handle.
    stream: Option<MmapStream<'static>>,
    tally: Tally,
    description: String,
}

impl V4lSource {
    pub fn open(device: &Path, opts: &CaptureOptions) -> Result<Self, CaptureError> {
        let dev = Device::with_path(device).map_err(|e| setup_error(device, "open", e))?;
        let caps = dev
            .query_caps()
            .map_err(|e| setup_error(device, "VIDIOC_QUERYCAP", e))?;
        let fatal = |reason: String| CaptureError::Device {
            device: device.to_path_buf(),
            reason,
        };
        if !caps.capabilities.contains(CapabilityFlags::VIDEO_CAPTURE) {
            return Err(fatal(format!(
                "{} ({}) is not a video capture node (capabilities: {}); a UVC camera also \
                 creates a metadata node: use the first /dev/videoN `v4l2-ctl --list-devices` \
                 shows for it",
                caps.card, caps.driver, caps.capabilities
            )));
        }
        if !caps.capabilities.contains(CapabilityFlags::STREAMING) {
            return Err(fatal(format!(
                "{} ({}) does not support streaming (mmap) I/O",
                caps.card, caps.driver
            )));
        }

        let fourcc = FourCC::new(&opts.format.fourcc());
        let want = Format::new(opts.width, opts.height, fourcc);
        let got = dev
            .set_format(&want)
            .map_err(|e| setup_error(device, "VIDIOC_S_FMT", e))?;
        if got.fourcc != fourcc {
            let offered = match dev.enum_formats() {
                Ok(list) => list
                    .iter()
                    .map(|d| format!("{} ({})", d.fourcc, d.description))
                    .collect::<Vec<_>>()
                    .join(", "),
                Err(e) => format!("unknown (VIDIOC_ENUM_FMT: {e})"),
            };
            return Err(fatal(format!(
                "{} does not offer the {} pixel format (fourcc {fourcc}); it offers: {offered}; \
                 set the source format to one of mjpeg, yuyv, grey that it supports",
                caps.card, opts.format
            )));
        }
        if (got.width, got.height) != (opts.width, opts.height) {
            tracing::warn!(
                device = %device.display(),
                requested = %format!("{}x{}", opts.width, opts.height),
                got = %format!("{}x{}", got.width, got.height),
                "camera does not support the requested size; using the nearest it offers"
            );
        }
        if opts.format == PixelFormat::Yuyv && matches!(got.quantization, Quantization::FullRange) {
            tracing::warn!(device = %device.display(), "camera reports full-range YUYV; colours are converted as limited range (slightly too contrasty)");
        }
        if let Some(fps) = opts.fps {
            let fps = fps.round().max(1.0) as u32;
            if let Err(e) = dev.set_params(&Parameters::with_fps(fps)) {
                tracing::warn!(device = %device.display(), fps, error = %e, "camera refused the frame rate; using its own");
            }
        }

        if let Some(us) = opts.exposure_us {
            let steps = exposure_steps(us);
            let manual = dev
                .set_control(Control {
                    id: CID_EXPOSURE_AUTO,
                    value: ControlValue::Integer(EXPOSURE_MANUAL),
                })
                .and_then(|()| {
                    dev.set_control(Control {
                        id: CID_EXPOSURE_ABSOLUTE,
                        value: ControlValue::Integer(steps),
                    })
                });
            match manual {
                Ok(()) => {
                    tracing::info!(device = %device.display(), exposure_us = steps * 100, "fixed exposure")
                }
                Err(e) => {
                    tracing::warn!(device = %device.display(), exposure_us = us, error = %e, "camera refused a fixed exposure; it keeps its own")
                }
            }
        }

        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, BUFFERS)
            .map_err(|e| setup_error(device, "VIDIOC_REQBUFS", e))?;
        stream.set_timeout(FRAME_TIMEOUT);
        let origin = format!("v4l:{}", device.display());
        let description = format!(
            "{origin} ({}, {} {}x{})",
            caps.card, opts.format, got.width, got.height
        );
        tracing::info!(%description, "camera opened");
        Ok(Self {
            device: device.to_path_buf(),
            origin,
            format: opts.format,
            width: got.width,
            height: got.height,
            stride: got.stride as usize,
            stream: Some(stream),
            tally: Tally::default(),
            description,
        })
    }
}

impl FrameSource for V4lSource {
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        let stream = self.stream.as_mut().expect("the stream lives until drop");
        let converted = match CaptureStream::next(stream) {
            // After a failed dequeue the stream's queue state is unknown: only a reopen is safe,
            // so every streaming error is a disconnect.
            Err(e) => {
                let (op, error) = if e.kind() == io::ErrorKind::TimedOut {
                    let msg = format!(
                        "no frame within {}",
                        humantime::format_duration(FRAME_TIMEOUT)
                    );
                    (
                        "waiting for a frame",
                        io::Error::new(io::ErrorKind::TimedOut, msg),
                    )
                } else {
                    ("VIDIOC_DQBUF", e)
                };
                let e = CaptureError::Disconnected {
                    device: self.device.clone(),
                    op,
                    error,
                };
                self.tally.last_error = Some(e.to_string());
                return Err(e);
            }
            Ok((buf, meta)) => {
                if meta.flags.contains(BufferFlags::ERROR) {
                    Err(CaptureError::BadFrame {
                        origin: self.origin.clone(),
                        reason: "the driver flagged the buffer as corrupt (V4L2_BUF_FLAG_ERROR)"
                            .into(),
                    })
                } else {
                    let used = meta.bytesused as usize;
                    let data = if used > 0 && used <= buf.len() {
                        &buf[..used]
                    } else {
                        buf
                    };
                    convert(
                        self.format,
                        data,
                        (self.width, self.height, self.stride),
                        &self.origin,
                    )
                }
            }
        };
        let origin = self.origin.clone();
        self.tally.deliver(converted, || origin)
    }

    fn status(&self) -> SourceStatus {
        self.tally.status(self.description.clone())
    }
}

impl Drop for V4lSource {
    fn drop(&mut self) {
        // v4l's stream panics in its own Drop when VIDIOC_STREAMOFF fails with anything but
        // ENODEV (EIO from a USB camera that half-disconnected, for one). A reconnect must not
        // take the capture thread down with it.
        if let Some(stream) = self.stream.take()
            && std::panic::catch_unwind(AssertUnwindSafe(move || drop(stream))).is_err()
        {
            tracing::warn!(device = %self.device.display(), "closing the camera stream failed; continuing");
        }
    }
}

impl std::fmt::Debug for V4lSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4lSource")
            .field("description", &self.description)
            .field("stride", &self.stride)
            .field("frames", &self.tally.frames)
            .field("bad_frames", &self.tally.bad_frames)
            .finish_non_exhaustive()
    }
}

/// Microseconds -> V4L2 `exposure_time_absolute` steps of 100 us (nearest, at least 1).
fn exposure_steps(us: u32) -> i64 {
    ((i64::from(us) + 50) / 100).max(1)
}

/// One buffer -> RGB.
fn convert(
    format: PixelFormat,
    data: &[u8],
    (width, height, stride): (u32, u32, usize),
    origin: &str,
) -> Result<image::RgbImage, CaptureError> {
    let pixel = |error| CaptureError::Pixel {
        origin: origin.to_string(),
        error,
    };
    match format {
        // With limits: a frame declaring a size beyond the stream's is refused, not allocated.
        PixelFormat::Mjpeg => mjpeg_to_rgb(data, width, height).map_err(pixel),
        PixelFormat::Yuyv => {
            let stride = if stride == 0 {
                width as usize * 2
            } else {
                stride
            };
            yuyv_to_rgb_strided(data, width, height, stride).map_err(pixel)
        }
        PixelFormat::Grey => {
            let stride = if stride == 0 { width as usize } else { stride };
            grey_to_rgb_strided(data, width, height, stride).map_err(pixel)
        }
    }
}

/// Map an error while opening and configuring the device.
fn setup_error(device: &Path, op: &'static str, error: io::Error) -> CaptureError {
    let fatal = |reason: String| CaptureError::Device {
        device: device.to_path_buf(),
        reason,
    };
    match error.raw_os_error() {
        Some(EACCES | EPERM) => fatal(format!(
            "{op} failed: {error}; the service user needs access to the device (group `video`, \
             see hardware/udev)"
        )),
        Some(ENOTTY) => fatal(format!(
            "{op} failed: {error}; this is not a V4L2 device (expected a /dev/videoN node)"
        )),
        Some(EINVAL) => fatal(format!("{op} refused the settings: {error}")),
        // ENOENT (not plugged in yet), ENODEV/EIO (unplugged), EBUSY (another process streams).
        _ => CaptureError::Disconnected {
            device: device.to_path_buf(),
            op,
            error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::ErrorKind;

    #[test]
    fn a_missing_device_is_a_clear_disconnected_error() {
        let e = V4lSource::open(Path::new("/dev/video99"), &CaptureOptions::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Disconnected);
        let msg = e.to_string();
        assert!(
            msg.contains("/dev/video99") && msg.contains("open"),
            "{msg}"
        );
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn a_node_that_is_not_v4l2_is_fatal() {
        let e = V4lSource::open(Path::new("/dev/null"), &CaptureOptions::default())
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Fatal);
        let msg = e.to_string();
        assert!(
            msg.contains("/dev/null") && msg.contains("not a V4L2 device"),
            "{msg}"
        );
    }

    #[test]
    fn exposure_is_rounded_to_100_us_steps() {
        assert_eq!(exposure_steps(1), 1);
        assert_eq!(exposure_steps(149), 1);
        assert_eq!(exposure_steps(150), 2);
        assert_eq!(exposure_steps(8000), 80);
        assert_eq!(exposure_steps(1_000_000), 10_000);
    }

    #[test]
    fn buffers_convert_per_format_and_bad_ones_are_bad_frames() {
        let grey = convert(PixelFormat::Grey, &[9; 8], (2, 2, 4), "v4l:x").unwrap();
        assert_eq!(grey.get_pixel(1, 1).0, [9; 3]);
        let yuyv = convert(PixelFormat::Yuyv, &[16, 128, 235, 128], (2, 1, 0), "v4l:x");
        assert_eq!(yuyv.unwrap().get_pixel(1, 0).0, [255; 3]);
        for (format, data) in [
            (PixelFormat::Yuyv, &[0u8; 3][..]),
            (PixelFormat::Mjpeg, &b"\xff\xd8 not really a jpeg"[..]),
        ] {
            let e = convert(format, data, (2, 1, 0), "v4l:x").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadFrame, "{e}");
            assert!(e.to_string().contains("v4l:x"), "{e}");
        }
    }
}

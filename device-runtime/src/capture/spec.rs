//! What to open: the source spec string of the config (`dir:PATH`, `synthetic`,
//! `v4l:/dev/videoN`) and the options every source reads its settings from.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::decode::MAX_SIDE;
use super::error::CaptureError;

/// A frame source as named in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// Replay the PNG/JPEG files under a folder (recursively, sorted by relative path).
    Dir { path: PathBuf },
    /// A moving test pattern with injected defects.
    Synthetic,
    /// A Video4Linux2 camera (`v4l` feature). Any path works, e.g. `/dev/v4l/by-id/...`.
    V4l { device: PathBuf },
}

impl FromStr for SourceSpec {
    type Err = CaptureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| CaptureError::InvalidSpec {
            spec: s.to_string(),
            reason,
        };
        if s == "synthetic" {
            return Ok(SourceSpec::Synthetic);
        }
        let Some((kind, rest)) = s.split_once(':') else {
            return Err(invalid(format!("unknown source kind {s:?}")));
        };
        if rest.is_empty() {
            return Err(invalid(format!("{kind:?} needs a path after the colon")));
        }
        match kind {
            "dir" => Ok(SourceSpec::Dir { path: rest.into() }),
            "v4l" => Ok(SourceSpec::V4l {
                device: rest.into(),
            }),
            "synthetic" => Err(invalid("\"synthetic\" takes no argument".into())),
            other => Err(invalid(format!("unknown source kind {other:?}"))),
        }
    }
}

/// The spec string again (`parse` of it gives the same spec).
impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Dir { path } => write!(f, "dir:{}", path.display()),
            SourceSpec::Synthetic => f.write_str("synthetic"),
            SourceSpec::V4l { device } => write!(f, "v4l:{}", device.display()),
        }
    }
}

/// Camera pixel format requested from a V4L2 device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelFormat {
    /// Motion JPEG (fourcc `MJPG`): small buffers, what most USB webcams offer at high resolution.
    #[default]
    Mjpeg,
    /// Packed YUV 4:2:2 (fourcc `YUYV`), BT.601 limited range.
    Yuyv,
    /// 8-bit greyscale (fourcc `GREY`), typical of machine-vision cameras.
    Grey,
}

impl PixelFormat {
    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Grey => *b"GREY",
        }
    }
}

impl FromStr for PixelFormat {
    type Err = CaptureError;

    /// `mjpeg` (or `mjpg`), `yuyv` (or `yuy2`), `grey` (or `gray`), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mjpeg" | "mjpg" => Ok(PixelFormat::Mjpeg),
            "yuyv" | "yuy2" => Ok(PixelFormat::Yuyv),
            "grey" | "gray" => Ok(PixelFormat::Grey),
            _ => Err(CaptureError::InvalidOption {
                field: "format",
                value: format!("{s:?}"),
                expected: "\"mjpeg\", \"yuyv\" or \"grey\"",
            }),
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::Mjpeg => "MJPEG",
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Grey => "GREY",
        })
    }
}

/// Settings shared by all sources; each reads the ones that concern it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureOptions {
    /// `dir`/`synthetic`: frames per second to pace at (`None`: as fast as they are consumed).
    /// `v4l`: frame rate requested from the camera (best effort; the driver may pick another).
    pub fps: Option<f64>,
    /// `dir`: start again after the last image instead of ending the stream.
    pub looping: bool,
    /// `synthetic`: frame size. `v4l`: requested resolution (the driver picks the nearest).
    pub width: u32,
    pub height: u32,
    /// `v4l`: pixel format requested from the camera.
    pub format: PixelFormat,
    /// `v4l`: fixed exposure in microseconds (auto exposure off); `None`: the camera's auto
    /// exposure.
    pub exposure_us: Option<u32>,
    /// `synthetic`: every Nth frame carries an injected defect; 0 = never.
    pub defect_every: u32,
    /// `synthetic`: seed of the texture, the noise and the defect positions.
    pub seed: u64,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            fps: None,
            looping: false,
            width: 640,
            height: 480,
            format: PixelFormat::Mjpeg,
            exposure_us: None,
            defect_every: 0,
            seed: 0,
        }
    }
}

/// Smallest synthetic frame side: below it the disc and its defects do not fit.
pub const MIN_SYNTHETIC_SIDE: u32 = 16;

impl CaptureOptions {
    /// Reject the settings `spec` cannot run with (Fatal errors).
    pub fn validate(&self, spec: &SourceSpec) -> Result<(), CaptureError> {
        if let Some(fps) = self.fps
            && !(fps.is_finite() && fps > 0.0 && fps <= 1000.0)
        {
            return Err(CaptureError::InvalidOption {
                field: "fps",
                value: fps.to_string(),
                expected: "a frame rate in (0, 1000], or none to run as fast as frames are consumed",
            });
        }
        if let Some(us) = self.exposure_us
            && !(1..=1_000_000).contains(&us)
        {
            return Err(CaptureError::InvalidOption {
                field: "exposure-us",
                value: us.to_string(),
                expected: "an exposure in 1..=1000000 microseconds, or none for auto exposure",
            });
        }
        let min = match spec {
            SourceSpec::Dir { .. } => return Ok(()),
            SourceSpec::Synthetic => MIN_SYNTHETIC_SIDE,
            SourceSpec::V4l { .. } => 1,
        };
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if !(min..=MAX_SIDE).contains(&value) {
                return Err(CaptureError::InvalidOption {
                    field,
                    value: value.to_string(),
                    expected: if min == 1 {
                        "a frame side in 1..=16384 pixels"
                    } else {
                        "a frame side in 16..=16384 pixels"
                    },
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::ErrorKind;

    #[test]
    fn specs_parse_and_print_back() {
        for (text, spec) in [
            ("synthetic", SourceSpec::Synthetic),
            (
                "dir:data/mvtec/bottle/test",
                SourceSpec::Dir {
                    path: "data/mvtec/bottle/test".into(),
                },
            ),
            ("dir:C:x", SourceSpec::Dir { path: "C:x".into() }),
            (
                "v4l:/dev/video0",
                SourceSpec::V4l {
                    device: "/dev/video0".into(),
                },
            ),
        ] {
            assert_eq!(text.parse::<SourceSpec>().unwrap(), spec);
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn bad_specs_are_fatal_and_say_what_is_expected() {
        for text in [
            "",
            "camera",
            "dir:",
            "v4l:",
            "synthetic:3",
            "usb:/dev/video0",
        ] {
            let e = text.parse::<SourceSpec>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Fatal);
            let msg = e.to_string();
            assert!(msg.contains(&format!("{text:?}")), "{msg}");
            assert!(msg.contains("dir:PATH"), "{msg}");
        }
    }

    #[test]
    fn pixel_formats_parse_in_any_case() {
        assert_eq!("MJPEG".parse::<PixelFormat>().unwrap(), PixelFormat::Mjpeg);
        assert_eq!("yuy2".parse::<PixelFormat>().unwrap(), PixelFormat::Yuyv);
        assert_eq!("Gray".parse::<PixelFormat>().unwrap(), PixelFormat::Grey);
        let e = "rgb24".parse::<PixelFormat>().unwrap_err();
        assert!(e.to_string().contains("\"rgb24\""), "{e}");
        assert_eq!(PixelFormat::Grey.fourcc(), *b"GREY");
    }

    #[test]
    fn options_are_validated_per_source() {
        let ok = CaptureOptions::default();
        assert!(ok.validate(&SourceSpec::Synthetic).is_ok());
        for fps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let o = CaptureOptions {
                fps: Some(fps),
                ..ok.clone()
            };
            let e = o.validate(&SourceSpec::Synthetic).unwrap_err();
            assert!(e.to_string().contains("fps"), "{e}");
        }
        let tiny = CaptureOptions {
            width: 8,
            ..ok.clone()
        };
        assert!(tiny.validate(&SourceSpec::Synthetic).is_err());
        // A folder replay ignores the frame size.
        assert!(tiny.validate(&SourceSpec::Dir { path: "x".into() }).is_ok());
        let v4l = SourceSpec::V4l {
            device: "/dev/video0".into(),
        };
        assert!(tiny.validate(&v4l).is_ok());
        let dark = CaptureOptions {
            exposure_us: Some(0),
            ..ok.clone()
        };
        assert!(
            dark.validate(&v4l)
                .unwrap_err()
                .to_string()
                .contains("exposure-us")
        );
        let zero = CaptureOptions { height: 0, ..ok };
        assert!(
            zero.validate(&v4l)
                .unwrap_err()
                .to_string()
                .contains("height")
        );
    }
}

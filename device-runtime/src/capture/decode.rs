//! Raw camera buffers -> 8-bit RGB: packed YUYV 4:2:2, 8-bit GREY and MJPEG. (MJPEG uses the JPEG
//! decoder image files use, image's zune-jpeg, so JPEG has one decoder.)
//!
//! An MJPEG frame declares its own size in its header, and the decoder allocates for that size
//! before it reads any scan data: a corrupt or hostile frame claiming 60000 x 60000 would ask for
//! 10 GB. [`mjpeg_to_rgb`] decodes with `image::Limits`: no side above the negotiated frame size
//! (or [`MAX_SIDE`] when none is known) and at most [`MJPEG_MAX_ALLOC`] bytes, so such a frame is a
//! bad frame, refused after parsing its header.
//!
//! Pure functions, compiled with or without the `v4l` feature, so they are tested on machines
//! without a camera.
//!
//! YUYV colour conversion: ITU-R BT.601, **limited ("studio") range**: Y in 16..=235, Cb/Cr in
//! 16..=240 centred at 128. That is what V4L2 means by `V4L2_QUANTIZATION_DEFAULT` for Y'CbCr with
//! the SMPTE 170M / sRGB colorspaces UVC webcams report. (Full-range JPEG data is MJPEG's business
//! and is handled by the JPEG decoder.) The float reference is
//!
//! ```text
//! R = 1.164383 (Y - 16)                     + 1.596027 (Cr - 128)
//! G = 1.164383 (Y - 16) - 0.391762 (Cb - 128) - 0.812968 (Cr - 128)
//! B = 1.164383 (Y - 16) + 2.017232 (Cb - 128)
//! ```
//!
//! computed here in 8.8 fixed point (coefficients x 256, rounded: 298, 409, 100, 208, 516), which
//! stays within 1 of the rounded float result for every input (tested exhaustively below).

use image::RgbImage;

use super::spec::PixelFormat;

/// Largest frame side accepted from a driver: guards the `width * height * 3` allocation.
pub const MAX_SIDE: u32 = 16384;

/// Most bytes an MJPEG frame's decoding may allocate for its pixels (a 4K RGB frame is 25 MB).
pub const MJPEG_MAX_ALLOC: u64 = 128 << 20;

/// A raw buffer that does not hold a frame of the announced size and format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PixelError {
    #[error("frame size {width}x{height} is outside 1..={MAX_SIDE} pixels per side")]
    Size { width: u32, height: u32 },
    #[error(
        "YUYV frame width {width} is odd; YUYV packs two pixels per 4 bytes, so it must be even"
    )]
    OddWidth { width: u32 },
    #[error(
        "{format} line stride {stride} bytes is shorter than a {width}-pixel line ({min} bytes)"
    )]
    Stride {
        format: PixelFormat,
        width: u32,
        stride: usize,
        min: usize,
    },
    #[error(
        "{format} buffer holds {actual} bytes, a {width}x{height} frame needs at least {expected}"
    )]
    ShortBuffer {
        format: PixelFormat,
        width: u32,
        height: u32,
        expected: usize,
        actual: usize,
    },
    #[error("MJPEG frame refused: {reason}")]
    Mjpeg { reason: String },
}

/// Packed YUYV (Y0 Cb Y1 Cr per pixel pair), lines of exactly `2 * width` bytes.
pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32) -> Result<RgbImage, PixelError> {
    yuyv_to_rgb_strided(data, width, height, width as usize * 2)
}

/// YUYV with lines `stride` bytes apart (V4L2 `bytesperline`, which drivers may pad). Bytes
/// after the last line are ignored: drivers round buffers up.
pub fn yuyv_to_rgb_strided(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<RgbImage, PixelError> {
    check_size(width, height)?;
    if !width.is_multiple_of(2) {
        return Err(PixelError::OddWidth { width });
    }
    let line = width as usize * 2;
    check_buffer(PixelFormat::Yuyv, data, width, height, line, stride)?;
    let mut out = vec![0u8; width as usize * height as usize * 3];
    for (y, out_line) in out.chunks_exact_mut(width as usize * 3).enumerate() {
        let src = &data[y * stride..y * stride + line];
        for (pair, dst) in src.chunks_exact(4).zip(out_line.chunks_exact_mut(6)) {
            let (cb, cr) = (pair[1], pair[3]);
            dst[..3].copy_from_slice(&bt601_limited_to_rgb(pair[0], cb, cr));
            dst[3..].copy_from_slice(&bt601_limited_to_rgb(pair[2], cb, cr));
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("buffer is width * height * 3 bytes"))
}

/// 8-bit grey (V4L2 `GREY`), lines of exactly `width` bytes; each value is replicated to R, G, B.
pub fn grey_to_rgb(data: &[u8], width: u32, height: u32) -> Result<RgbImage, PixelError> {
    grey_to_rgb_strided(data, width, height, width as usize)
}

/// 8-bit grey with lines `stride` bytes apart.
pub fn grey_to_rgb_strided(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<RgbImage, PixelError> {
    check_size(width, height)?;
    let line = width as usize;
    check_buffer(PixelFormat::Grey, data, width, height, line, stride)?;
    let mut out = vec![0u8; width as usize * height as usize * 3];
    for (y, out_line) in out.chunks_exact_mut(width as usize * 3).enumerate() {
        let src = &data[y * stride..y * stride + line];
        for (&v, dst) in src.iter().zip(out_line.chunks_exact_mut(3)) {
            dst.fill(v);
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("buffer is width * height * 3 bytes"))
}

/// One MJPEG buffer (a JPEG image) -> RGB, for a stream negotiated at `width` x `height` (0 x 0:
/// unknown). A frame whose header declares a larger side, or whose pixels would need more than
/// [`MJPEG_MAX_ALLOC`] bytes, is refused before the pixel buffer is allocated.
pub fn mjpeg_to_rgb(data: &[u8], width: u32, height: u32) -> Result<RgbImage, PixelError> {
    use image::ImageDecoder;
    let refused = |e: image::ImageError| PixelError::Mjpeg {
        reason: e.to_string(),
    };
    let side = |s: u32| if s == 0 { MAX_SIDE } else { s.min(MAX_SIDE) };
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(side(width));
    limits.max_image_height = Some(side(height));
    limits.max_alloc = Some(MJPEG_MAX_ALLOC);
    let mut decoder =
        image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(data)).map_err(refused)?;
    let (w, h) = decoder.dimensions();
    let declared = |reason| PixelError::Mjpeg {
        reason: format!("its header declares {w}x{h} pixels: {reason}"),
    };
    decoder
        .set_limits(limits.clone())
        .map_err(|_| declared(format!("above the {}x{} stream", side(width), side(height))))?;
    limits
        .reserve(decoder.total_bytes())
        .map_err(|_| declared(format!("more than {MJPEG_MAX_ALLOC} bytes")))?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(refused)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(PixelError::Size {
            width: img.width(),
            height: img.height(),
        });
    }
    // `into_rgb8` replicates grey (the other colour type a JPEG decodes to).
    Ok(img.into_rgb8())
}

/// One limited-range BT.601 Y'CbCr sample -> RGB (see the module header for the formula).
#[inline]
pub fn bt601_limited_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let d = i32::from(cb) - 128;
    let e = i32::from(cr) - 128;
    // `>> 8` on a negative i32 floors; the clamp then maps it to 0.
    let clamp = |v: i32| ((v + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

fn check_size(width: u32, height: u32) -> Result<(), PixelError> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(PixelError::Size { width, height });
    }
    Ok(())
}

fn check_buffer(
    format: PixelFormat,
    data: &[u8],
    width: u32,
    height: u32,
    line: usize,
    stride: usize,
) -> Result<(), PixelError> {
    if stride < line {
        return Err(PixelError::Stride {
            format,
            width,
            stride,
            min: line,
        });
    }
    // The last line need not carry its padding.
    let expected = stride * (height as usize - 1) + line;
    if data.len() < expected {
        return Err(PixelError::ShortBuffer {
            format,
            width,
            height,
            expected,
            actual: data.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The float reference of the module header, rounded and clamped.
    fn reference(y: u8, cb: u8, cr: u8) -> [f64; 3] {
        let (c, d, e) = (
            f64::from(y) - 16.0,
            f64::from(cb) - 128.0,
            f64::from(cr) - 128.0,
        );
        [
            1.164383 * c + 1.596027 * e,
            1.164383 * c - 0.391762 * d - 0.812968 * e,
            1.164383 * c + 2.017232 * d,
        ]
        .map(|v| v.round().clamp(0.0, 255.0))
    }

    #[test]
    fn hand_computed_yuyv_pixels() {
        // Pair 1: Y0 = 16 (black), Y1 = 235 (white), Cb = Cr = 128 (no colour):
        //   black: 298 * 0 = 0 -> 0; white: (298 * 219 + 128) >> 8 = 65390 >> 8 = 255.
        // Pair 2: Y = 81, Cb = 90, Cr = 240 (BT.601 limited-range red); c = 298 * 65 = 19370:
        //   R = (19370 + 409 * 112 + 128) >> 8 = 65306 >> 8 = 255
        //   G = (19370 + 100 * 38 - 208 * 112 + 128) >> 8 = 2 >> 8 = 0
        //   B = (19370 - 516 * 38 + 128) >> 8 = -110 >> 8 = -1 -> 0
        //   Y1 = 126 (mid grey with the same chroma): c = 298 * 110 = 32780:
        //   R = (32780 + 45808 + 128) >> 8 = 307; G = (32780 + 3800 - 23296 + 128) >> 8 = 52;
        //   B = (32780 - 19608 + 128) >> 8 = 51   -> (255, 52, 51)
        // Line 2: Y0 = Y1 = 126, Cb = Cr = 128 -> (32780 + 128) >> 8 = 128 grey.
        //         Y0 = 0 (below black), Cb = 255, Cr = 0: c = -4768, d = 127, e = -128:
        //   R = (-4768 - 52352 + 128) >> 8 < 0 -> 0; G = (-4768 - 12700 + 26624 + 128) >> 8 = 36;
        //   B = (-4768 + 65532 + 128) >> 8 = 237. Y1 = 255: c = 71222: R = (71222 - 52352 +
        //   128) >> 8 = 74; G = (71222 - 12700 + 26624 + 128) >> 8 = 333 -> 255; B = 534 -> 255.
        let data = [
            16, 128, 235, 128, 81, 90, 126, 240, // line 0
            126, 128, 126, 128, 0, 255, 255, 0, // line 1
        ];
        let img = yuyv_to_rgb(&data, 4, 2).unwrap();
        let px = |x, y| img.get_pixel(x, y).0;
        assert_eq!(px(0, 0), [0, 0, 0]);
        assert_eq!(px(1, 0), [255, 255, 255]);
        assert_eq!(px(2, 0), [255, 0, 0]);
        assert_eq!(px(3, 0), [255, 52, 51]);
        assert_eq!(px(0, 1), [128, 128, 128]);
        assert_eq!(px(1, 1), [128, 128, 128]);
        assert_eq!(px(2, 1), [0, 36, 237]);
        assert_eq!(px(3, 1), [74, 255, 255]);
    }

    #[test]
    fn fixed_point_stays_within_one_of_the_float_reference_for_every_input() {
        let mut worst = 0.0f64;
        for y in 0..=255u8 {
            for cb in 0..=255u8 {
                for cr in 0..=255u8 {
                    let got = bt601_limited_to_rgb(y, cb, cr);
                    let want = reference(y, cb, cr);
                    for c in 0..3 {
                        worst = worst.max((f64::from(got[c]) - want[c]).abs());
                    }
                }
            }
        }
        assert!(worst <= 1.0, "worst deviation {worst}");
    }

    #[test]
    fn yuyv_stride_padding_is_skipped() {
        // 2x2 frame, 4 payload bytes + 3 padding bytes per line; the last line unpadded.
        let data = [16, 128, 235, 128, 9, 9, 9, 235, 128, 16, 128];
        let img = yuyv_to_rgb_strided(&data, 2, 2, 7).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(0, 1).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(1, 1).0, [0, 0, 0]);
    }

    #[test]
    fn yuyv_rejects_odd_width_short_buffers_and_bad_sizes() {
        assert_eq!(
            yuyv_to_rgb(&[0; 64], 3, 2),
            Err(PixelError::OddWidth { width: 3 })
        );
        let e = yuyv_to_rgb(&[0; 15], 4, 2).unwrap_err();
        assert_eq!(
            e,
            PixelError::ShortBuffer {
                format: PixelFormat::Yuyv,
                width: 4,
                height: 2,
                expected: 16,
                actual: 15
            }
        );
        assert!(e.to_string().contains("15 bytes"), "{e}");
        assert!(matches!(
            yuyv_to_rgb_strided(&[0; 64], 4, 2, 6),
            Err(PixelError::Stride { min: 8, .. })
        ));
        assert!(matches!(
            yuyv_to_rgb(&[], 0, 2),
            Err(PixelError::Size { .. })
        ));
        assert!(matches!(
            yuyv_to_rgb(&[], 2, MAX_SIDE + 1),
            Err(PixelError::Size { .. })
        ));
    }

    #[test]
    fn grey_is_replicated_and_checked() {
        let img = grey_to_rgb(&[0, 7, 255, 128, 1, 2], 3, 2).unwrap();
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(img.get_pixel(1, 0).0, [7, 7, 7]);
        assert_eq!(img.get_pixel(2, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(0, 1).0, [128, 128, 128]);
        assert_eq!(img.get_pixel(2, 1).0, [2, 2, 2]);
        // Odd widths are fine for GREY; stride padding is skipped.
        let img = grey_to_rgb_strided(&[5, 0, 0, 6], 1, 2, 3).unwrap();
        assert_eq!(img.get_pixel(0, 1).0, [6, 6, 6]);
        assert!(matches!(
            grey_to_rgb(&[0; 5], 3, 2),
            Err(PixelError::ShortBuffer {
                expected: 6,
                actual: 5,
                ..
            })
        ));
    }

    #[test]
    fn mjpeg_decodes_colour_and_grey_up_to_the_stream_size() {
        let colour = image::RgbImage::from_fn(32, 24, |x, _| image::Rgb([(x * 8) as u8, 90, 200]));
        let grey = image::GrayImage::from_fn(32, 24, |_, y| image::Luma([(y * 10) as u8]));
        let mut jpegs = [Vec::new(), Vec::new()];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpegs[0], 100)
            .encode_image(&colour)
            .unwrap();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpegs[1], 100)
            .encode_image(&grey)
            .unwrap();
        let img = mjpeg_to_rgb(&jpegs[0], 32, 24).unwrap();
        assert_eq!(img.dimensions(), (32, 24));
        let px = img.get_pixel(20, 10).0;
        assert!(
            px.iter()
                .zip([160, 90, 200])
                .all(|(&a, b)| a.abs_diff(b) <= 8),
            "{px:?}"
        );
        let img = mjpeg_to_rgb(&jpegs[1], 0, 0).unwrap();
        let px = img.get_pixel(3, 20).0;
        assert!(
            px[0] == px[1] && px[1] == px[2] && px[0].abs_diff(200) <= 4,
            "{px:?}"
        );
        // Larger than the negotiated stream on either side: refused, naming both sizes.
        for (w, h) in [(31, 24), (32, 23)] {
            let e = mjpeg_to_rgb(&jpegs[0], w, h).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("32x24") && msg.contains(&format!("{w}x{h}")),
                "{msg}"
            );
        }
        assert!(matches!(
            mjpeg_to_rgb(b"\xff\xd8 not really a jpeg", 32, 24),
            Err(PixelError::Mjpeg { .. })
        ));
    }

    proptest! {
        #[test]
        fn yuyv_matches_the_per_pixel_reference(
            (w, h, data) in (1u32..8, 1u32..6).prop_flat_map(|(half_w, h)| {
                let len = (half_w * 4 * h) as usize;
                (Just(half_w * 2), Just(h), proptest::collection::vec(any::<u8>(), len))
            })
        ) {
            let img = yuyv_to_rgb(&data, w, h).unwrap();
            for y in 0..h {
                for x in 0..w {
                    let pair = (y * w * 2 + (x / 2) * 4) as usize;
                    let luma = data[pair + if x % 2 == 0 { 0 } else { 2 }];
                    let want = reference(luma, data[pair + 1], data[pair + 3]);
                    let got = img.get_pixel(x, y).0;
                    for c in 0..3 {
                        prop_assert!((f64::from(got[c]) - want[c]).abs() <= 1.0);
                    }
                }
            }
        }
    }
}

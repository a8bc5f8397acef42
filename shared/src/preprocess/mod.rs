//! Image preprocessing: file bytes -> 8-bit RGB -> resized, centre-cropped square -> normalised CHW f32.
//!
//! This is the only implementation; the trainer (bank, evaluation, self-test) calls
//! [`PreprocessSpec::test_transform`] and [`PreprocessSpec::normalize`], and the device's
//! per-frame path ([`FramePreprocessor`], below) produces exactly their bytes and floats, so a
//! bundle scores the same image the same way on both sides.
//!
//! Conventions, matching the FIRM reference (PIL + torchvision):
//! - Decoding accepts PNG and JPEG, 8 or 16 bits per channel, grey, grey+alpha, RGB or RGBA. Grey is
//!   replicated to three channels, alpha is dropped (not composited, as PIL's `convert("RGB")`), and
//!   16-bit samples are rounded to 8 bits (`round(v * 255 / 65535)`), so every later stage sees 8-bit
//!   RGB whatever the camera or dataset delivered.
//! - Resizing uses a triangle (bilinear) filter whose support widens with the downscale factor, which
//!   is PIL's `BILINEAR` (torchvision's default with antialiasing) up to rounding.
//! - Non-square images: the short side is resized to the target, then the centre is cropped
//!   (torchvision `Resize(int)` + `CenterCrop`, with its rounding of the crop offset).
//! - Test transform: resize the short side to `floor(size * 1.125)`, centre-crop `size` x `size`.
//! - Normalisation: `(x / 255 - mean) / std` per channel, ImageNet statistics by default.
//!
//! Two paths compute the same bytes and floats:
//! - The allocating functions here ([`PreprocessSpec::test_transform`], [`resize_short_side`],
//!   [`center_crop`], [`rotate`], [`normalize_chw`]): the reference, used by the trainer. Resizing
//!   is image 0.25's `imageops::resize`.
//! - [`FramePreprocessor`] (`frame.rs`) with [`Resizer`] (`resize.rs`): the device's per-frame
//!   path, into kept buffers, allocation-free after the first frame of a size. Its resize is an
//!   own copy of `imageops::resize`'s arithmetic, bit-exact for all three [`ResizeFilter`]s (unit
//!   tests compare it with image on random images and sizes); the crop, rotation and
//!   normalisation match bit for bit too.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage, imageops::FilterType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod frame;
mod resize;

pub use frame::{FramePreprocessor, TransformedFrame};
pub use resize::{Rect, Resizer};

/// ImageNet channel means (RGB), the default normalisation.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The reference test transform resizes to this multiple of the input size before cropping.
pub const TEST_RESIZE_RATIO: f32 = 1.125;

/// Per-channel normalisation applied after scaling 8-bit values to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Normalization {
    fn default() -> Self {
        Self {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

/// Resampling filter used by every resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeFilter {
    /// Bilinear with antialiasing (support scaled with the downscale factor), as PIL's BILINEAR.
    #[default]
    Bilinear,
    /// Bicubic (Catmull-Rom), as PIL's BICUBIC.
    Bicubic,
    /// Nearest neighbour: only for label masks.
    Nearest,
}

impl ResizeFilter {
    fn to_image(self) -> FilterType {
        match self {
            ResizeFilter::Bilinear => FilterType::Triangle,
            ResizeFilter::Bicubic => FilterType::CatmullRom,
            ResizeFilter::Nearest => FilterType::Nearest,
        }
    }
}

/// Everything needed to turn an image into the model's input: written into bundles, so the device
/// preprocesses exactly as the trainer did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PreprocessSpec {
    /// Side of the square model input, in pixels.
    pub size: u32,
    /// The test transform resizes the short side to `floor(size * resize-ratio)` before cropping.
    #[serde(default = "default_ratio")]
    pub resize_ratio: f32,
    #[serde(default)]
    pub filter: ResizeFilter,
    #[serde(default)]
    pub normalization: Normalization,
}

fn default_ratio() -> f32 {
    TEST_RESIZE_RATIO
}

impl PreprocessSpec {
    /// The reference settings for a square input of `size` pixels.
    pub fn new(size: u32) -> Self {
        Self {
            size,
            resize_ratio: TEST_RESIZE_RATIO,
            filter: ResizeFilter::default(),
            normalization: Normalization::default(),
        }
    }

    /// Reject settings no image can be preprocessed with (a size of 0, a resize ratio outside
    /// [1, 4], a non-finite or non-positive standard deviation).
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 || self.size > 4096 {
            return Err(Error::invalid(
                "preprocess size",
                format!("{} is outside 1..=4096 pixels", self.size),
            ));
        }
        if !(1.0..=4.0).contains(&self.resize_ratio) {
            return Err(Error::invalid(
                "preprocess resize-ratio",
                format!("{} is outside [1, 4]", self.resize_ratio),
            ));
        }
        let n = &self.normalization;
        if !n.mean.iter().all(|m| m.is_finite()) || !n.std.iter().all(|s| s.is_finite() && *s > 0.0)
        {
            return Err(Error::invalid(
                "preprocess normalization",
                format!(
                    "mean {:?} and std {:?} must be finite, std positive",
                    n.mean, n.std
                ),
            ));
        }
        Ok(())
    }

    /// Side the short edge is resized to before the centre crop.
    pub fn resize_side(&self) -> u32 {
        ((self.size as f32 * self.resize_ratio).floor() as u32).max(self.size)
    }

    /// The reference test transform: short side to `floor(size * ratio)`, centre crop `size`.
    pub fn test_transform(&self, img: &RgbImage) -> Result<RgbImage> {
        if self.size == 0 {
            return Err(Error::invalid(
                "preprocess size",
                "must be at least 1 pixel",
            ));
        }
        let resized = resize_short_side(img, self.resize_side(), self.filter)?;
        Ok(center_crop(&resized, self.size, self.size))
    }

    /// The part of a `w` x `h` frame the model input shows after [`Self::test_transform`], in
    /// frame pixels (continuous): `(x, y, width, height)`. Input pixel edge `u` (0..=size) is at
    /// frame x `x + u * width / size`: how a map over the input is drawn back onto the frame.
    pub fn input_window(&self, w: u32, h: u32) -> Result<(f64, f64, f64, f64)> {
        let (nw, nh) = short_side_dims((w, h), self.resize_side())?;
        let r = center_crop_rect((nw, nh), self.size, self.size);
        let (sx, sy) = (w as f64 / nw as f64, h as f64 / nh as f64);
        Ok((
            r.x as f64 * sx,
            r.y as f64 * sy,
            r.width as f64 * sx,
            r.height as f64 * sy,
        ))
    }

    /// Scale to [0, 1], subtract mean, divide by std; returns CHW planes.
    pub fn normalize(&self, img: &RgbImage) -> Vec<f32> {
        normalize_chw(img, &self.normalization)
    }

    /// Test transform then normalisation: the model input for one image.
    pub fn model_input(&self, img: &RgbImage) -> Result<Vec<f32>> {
        Ok(self.normalize(&self.test_transform(img)?))
    }
}

/// Bit depth and channel layout of a decoded source image, kept so loaders can report what they
/// converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceFormat {
    pub channels: u8,
    pub has_alpha: bool,
    pub bits: u8,
}

impl SourceFormat {
    /// True when the image needed more than a plain 8-bit RGB decode.
    pub fn was_converted(&self) -> bool {
        self.channels != 3 || self.has_alpha || self.bits != 8
    }
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layout = match (self.channels, self.has_alpha) {
            (1, _) => "grey",
            (2, _) => "grey+alpha",
            (3, _) => "RGB",
            _ => "RGBA",
        };
        write!(f, "{layout} {}-bit", self.bits)
    }
}

/// A decoded image in the pipeline's working format.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub rgb: RgbImage,
    pub source: SourceFormat,
}

/// Decode PNG or JPEG bytes; `origin` only labels errors.
pub fn decode_bytes(bytes: &[u8], origin: &Path) -> Result<Decoded> {
    if bytes.is_empty() {
        return Err(Error::Decode {
            path: origin.to_path_buf(),
            reason: "the file is empty (0 bytes)".into(),
        });
    }
    let format = image::guess_format(bytes).map_err(|_| Error::UnsupportedImage {
        path: origin.to_path_buf(),
        reason: "unknown file signature; expected PNG or JPEG".into(),
    })?;
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg) {
        return Err(Error::UnsupportedImage {
            path: origin.to_path_buf(),
            reason: format!("{format:?} files are not supported; expected PNG or JPEG"),
        });
    }
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| Error::Decode {
        path: origin.to_path_buf(),
        reason: e.to_string(),
    })?;
    to_rgb8(img, origin)
}

/// Read and decode one image file.
pub fn decode_file(path: &Path) -> Result<Decoded> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bytes(&bytes, path)
}

fn to_rgb8(img: DynamicImage, origin: &Path) -> Result<Decoded> {
    let color = img.color();
    let source = SourceFormat {
        channels: color.channel_count(),
        has_alpha: color.has_alpha(),
        bits: (color.bits_per_pixel() / color.channel_count() as u16) as u8,
    };
    if source.bits != 8 && source.bits != 16 {
        return Err(Error::UnsupportedImage {
            path: origin.to_path_buf(),
            reason: format!("{}-bit samples; expected 8 or 16 bits", source.bits),
        });
    }
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::UnsupportedImage {
            path: origin.to_path_buf(),
            reason: "image has zero width or height".into(),
        });
    }
    // `to_rgb8` replicates grey, drops alpha and rounds 16-bit samples to 8 bits.
    let rgb = match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    };
    Ok(Decoded { rgb, source })
}

/// Resize so that the short side equals `short`, keeping the aspect ratio (long side rounded).
pub fn resize_short_side(img: &RgbImage, short: u32, filter: ResizeFilter) -> Result<RgbImage> {
    let (nw, nh) = short_side_dims(img.dimensions(), short)?;
    if (nw, nh) == img.dimensions() {
        return Ok(img.clone());
    }
    Ok(image::imageops::resize(img, nw, nh, filter.to_image()))
}

/// The target size of [`resize_short_side`] (shared with [`FramePreprocessor`]).
fn short_side_dims((w, h): (u32, u32), short: u32) -> Result<(u32, u32)> {
    if w == 0 || h == 0 || short == 0 {
        return Err(Error::invalid(
            "resize",
            format!("cannot resize a {w}x{h} image to short side {short}"),
        ));
    }
    // torchvision: the long side is int(short * long / short_side), i.e. truncated.
    Ok(if w <= h {
        (short, ((short as u64 * h as u64) / w as u64) as u32)
    } else {
        (((short as u64 * w as u64) / h as u64) as u32, short)
    })
}

/// Crop the centre `cw` x `ch` window (torchvision's rounding of the offsets). Sizes larger than the
/// image are clamped to it.
pub fn center_crop(img: &RgbImage, cw: u32, ch: u32) -> RgbImage {
    let r = center_crop_rect(img.dimensions(), cw, ch);
    image::imageops::crop_imm(img, r.x, r.y, r.width, r.height).to_image()
}

/// The window [`center_crop`] keeps of a `w` x `h` image (shared with [`FramePreprocessor`]).
fn center_crop_rect((w, h): (u32, u32), cw: u32, ch: u32) -> Rect {
    let (cw, ch) = (cw.min(w), ch.min(h));
    Rect {
        x: ((w - cw) as f64 / 2.0).round() as u32,
        y: ((h - ch) as f64 / 2.0).round() as u32,
        width: cw,
        height: ch,
    }
}

/// Short side to `size`, then centre crop to a `size` x `size` square.
pub fn resize_center_square(img: &RgbImage, size: u32, filter: ResizeFilter) -> Result<RgbImage> {
    let resized = resize_short_side(img, size, filter)?;
    Ok(center_crop(&resized, size, size))
}

/// Rotate counter-clockwise by `quarter_turns * 90` degrees (0..=3), as `torch.rot90(x, k)` on
/// the image's (H, W) axes: the rotation outliers and the rotation ensemble's views.
pub fn rotate(img: &RgbImage, quarter_turns: u8) -> RgbImage {
    match quarter_turns % 4 {
        0 => img.clone(),
        // imageops rotates clockwise; k counter-clockwise quarter turns = 4 - k clockwise.
        1 => image::imageops::rotate270(img),
        2 => image::imageops::rotate180(img),
        _ => image::imageops::rotate90(img),
    }
}

/// 8-bit RGB (HWC) to normalised CHW f32.
pub fn normalize_chw(img: &RgbImage, norm: &Normalization) -> Vec<f32> {
    let (w, h) = img.dimensions();
    planes(
        img.pixels().map(|p| p.0.map(|c| c as f32 / 255.0)),
        (w * h) as usize,
        norm,
    )
}

/// Float RGB in [0, 1] (HWC, the augmentations' output) to normalised CHW f32, with the same
/// arithmetic as [`normalize_chw`].
pub fn normalize_chw_f32(img: &image::Rgb32FImage, norm: &Normalization) -> Vec<f32> {
    let (w, h) = img.dimensions();
    planes(img.pixels().map(|p| p.0), (w * h) as usize, norm)
}

fn planes(pixels: impl Iterator<Item = [f32; 3]>, plane: usize, norm: &Normalization) -> Vec<f32> {
    let mut out = vec![0f32; 3 * plane];
    let inv_std: [f32; 3] = std::array::from_fn(|c| 1.0 / norm.std[c]);
    for (i, px) in pixels.enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] - norm.mean[c]) * inv_std[c];
        }
    }
    out
}

/// Stack CHW planes of `size` x `size` images into a `[B, 3, size, size]` f32 tensor.
pub fn batch_tensor(images: &[Vec<f32>], size: u32, device: &Device) -> Result<Tensor> {
    let per = 3 * (size as usize) * (size as usize);
    if let Some(bad) = images.iter().position(|v| v.len() != per) {
        return Err(Error::invalid(
            "batch",
            format!(
                "image {bad} has {} values; expected 3x{size}x{size} = {per}",
                images[bad].len()
            ),
        ));
    }
    let flat: Vec<f32> = images.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(
        flat,
        (images.len(), 3, size as usize, size as usize),
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};
    use std::io::Cursor;

    fn encode(img: DynamicImage, fmt: image::ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, fmt).unwrap();
        buf.into_inner()
    }

    fn p() -> &'static Path {
        Path::new("test.png")
    }

    #[test]
    fn grey8_is_replicated() {
        let g = ImageBuffer::from_fn(4, 3, |x, y| Luma([(10 * x + 50 * y) as u8]));
        let d = decode_bytes(
            &encode(DynamicImage::ImageLuma8(g), image::ImageFormat::Png),
            p(),
        )
        .unwrap();
        assert_eq!(d.source.to_string(), "grey 8-bit");
        assert!(d.source.was_converted());
        assert_eq!(d.rgb.get_pixel(2, 1).0, [70, 70, 70]);
    }

    #[test]
    fn sixteen_bit_is_rounded_to_eight() {
        // 65535 -> 255, 257*k -> k exactly, 128 -> 0 (128/257 < 0.5), 129 -> 1.
        let vals = [65535u16, 257 * 100, 128, 129];
        let g = ImageBuffer::from_fn(4, 1, |x, _| Luma([vals[x as usize]]));
        let d = decode_bytes(
            &encode(DynamicImage::ImageLuma16(g), image::ImageFormat::Png),
            p(),
        )
        .unwrap();
        assert_eq!(d.source.bits, 16);
        let got: Vec<u8> = d.rgb.pixels().map(|p| p.0[0]).collect();
        assert_eq!(got, vec![255, 100, 0, 1]);
        let rgb16 = ImageBuffer::from_fn(2, 2, |_, _| Rgb([65535u16, 0, 257 * 7]));
        let d = decode_bytes(
            &encode(DynamicImage::ImageRgb16(rgb16), image::ImageFormat::Png),
            p(),
        )
        .unwrap();
        assert_eq!(d.rgb.get_pixel(1, 1).0, [255, 0, 7]);
    }

    #[test]
    fn alpha_is_dropped_not_composited() {
        let rgba = ImageBuffer::from_fn(2, 2, |_, _| Rgba([200u8, 100, 50, 0]));
        let d = decode_bytes(
            &encode(DynamicImage::ImageRgba8(rgba), image::ImageFormat::Png),
            p(),
        )
        .unwrap();
        assert!(d.source.has_alpha);
        assert_eq!(d.rgb.get_pixel(0, 0).0, [200, 100, 50]);
        let la = ImageBuffer::from_fn(2, 2, |_, _| LumaA([90u8, 255]));
        let d = decode_bytes(
            &encode(DynamicImage::ImageLumaA8(la), image::ImageFormat::Png),
            p(),
        )
        .unwrap();
        assert_eq!(d.source.to_string(), "grey+alpha 8-bit");
        assert_eq!(d.rgb.get_pixel(1, 0).0, [90, 90, 90]);
    }

    #[test]
    fn jpeg_decodes_close_to_source() {
        let rgb = ImageBuffer::from_fn(16, 16, |_, _| Rgb([120u8, 60, 200]));
        let d = decode_bytes(
            &encode(DynamicImage::ImageRgb8(rgb), image::ImageFormat::Jpeg),
            p(),
        )
        .unwrap();
        let px = d.rgb.get_pixel(8, 8).0;
        for (a, b) in px.iter().zip([120u8, 60, 200]) {
            assert!((*a as i32 - b as i32).abs() <= 4, "{px:?}");
        }
    }

    #[test]
    fn bad_bytes_name_the_file() {
        let e = decode_bytes(&[], Path::new("/x/empty.png")).unwrap_err();
        assert!(e.to_string().contains("/x/empty.png") && e.to_string().contains("empty"));
        let e = decode_bytes(b"GIF89a....", Path::new("a.gif")).unwrap_err();
        assert!(e.to_string().contains("expected PNG or JPEG"), "{e}");
        let mut png = encode(
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(32, 32, |x, _| Rgb([x as u8, 0, 0]))),
            image::ImageFormat::Png,
        );
        png.truncate(png.len() / 2);
        let e = decode_bytes(&png, Path::new("trunc.png")).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::BadInput);
        let e = decode_file(Path::new("/nonexistent/img.png")).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Io);
    }

    #[test]
    fn short_side_resize_and_centre_crop() {
        // 40 x 20 landscape: short side 20 -> 10 gives 20 x 10.
        let img = ImageBuffer::from_fn(40, 20, |x, _| Rgb([(x * 6) as u8, 0, 0]));
        let r = resize_short_side(&img, 10, ResizeFilter::Bilinear).unwrap();
        assert_eq!(r.dimensions(), (20, 10));
        let sq = resize_center_square(&img, 10, ResizeFilter::Bilinear).unwrap();
        assert_eq!(sq.dimensions(), (10, 10));
        // The centre crop keeps the middle columns: left offset 5 of 20.
        assert_eq!(sq.get_pixel(0, 0), r.get_pixel(5, 0));
        // Odd margins round like torchvision: (7 - 4) / 2 = 1.5 -> 2.
        let img = ImageBuffer::from_fn(7, 4, |x, _| Rgb([x as u8, 0, 0]));
        assert_eq!(center_crop(&img, 4, 4).get_pixel(0, 0).0[0], 2);
    }

    #[test]
    fn test_transform_sizes() {
        for (size, side) in [(32u32, 36u32), (64, 72), (224, 252), (256, 288)] {
            let spec = PreprocessSpec::new(size);
            assert_eq!(spec.resize_side(), side);
            let img = ImageBuffer::from_fn(300, 200, |x, y| Rgb([x as u8, y as u8, 0]));
            assert_eq!(
                spec.test_transform(&img).unwrap().dimensions(),
                (size, size)
            );
            assert_eq!(
                spec.model_input(&img).unwrap().len(),
                (3 * size * size) as usize
            );
        }
    }

    #[test]
    fn constant_image_survives_resize() {
        let img = ImageBuffer::from_fn(90, 90, |_, _| Rgb([17u8, 130, 250]));
        let out = PreprocessSpec::new(32).test_transform(&img).unwrap();
        assert!(out.pixels().all(|p| p.0 == [17, 130, 250]));
    }

    #[test]
    fn normalisation_matches_formula() {
        let img = ImageBuffer::from_fn(2, 1, |x, _| Rgb([255 * x as u8, 128, 0]));
        let n = Normalization::default();
        let v = normalize_chw(&img, &n);
        let expect = |c: usize, val: f32| (val / 255.0 - n.mean[c]) / n.std[c];
        let want = [
            expect(0, 0.0),
            expect(0, 255.0),
            expect(1, 128.0),
            expect(1, 128.0),
            expect(2, 0.0),
            expect(2, 0.0),
        ];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let as_f32 = image::Rgb32FImage::from_fn(2, 1, |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb(p.map(|c| c as f32 / 255.0))
        });
        assert_eq!(
            normalize_chw_f32(&as_f32, &n),
            v,
            "u8 and f32 paths agree exactly"
        );
        let t = batch_tensor(&[v.clone(), v], 1, &Device::Cpu);
        assert!(t.is_err(), "2x1 images are not 1x1 squares");
    }

    #[test]
    fn spec_round_trips_through_serde() {
        let spec = PreprocessSpec::new(64);
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("resize-ratio"));
        let back: PreprocessSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        assert!(serde_json::from_str::<PreprocessSpec>(r#"{"size":3,"colour":1}"#).is_err());
    }
}

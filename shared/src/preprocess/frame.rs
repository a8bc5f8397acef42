//! [`FramePreprocessor`]: the device's per-frame preprocessing (test transform, rotation,
//! normalisation) into buffers it keeps, with no heap allocation once the frame size is known.
//!
//! It computes exactly the bytes and floats of the allocating reference functions, which the
//! trainer keeps using: [`PreprocessSpec::test_transform`] (through [`Resizer`], bit-exact with
//! image's `imageops::resize`), and `normalize_chw(&rotate(img, q), norm)` for each quarter turn
//! (through a per-channel table holding `(v as f32 / 255.0 - mean) * (1.0 / std)` for every byte
//! `v`, the arithmetic of `normalize_chw`, so a lookup is the same float). The unit tests below
//! compare the two paths byte for byte and float bit for float bit;
//! `shared/tests/preprocess_alloc.rs` counts the allocations.
//!
//! Allocation happens in [`FramePreprocessor::new`] (the square buffer and the table) and in
//! [`FramePreprocessor::test_transform`] when a frame's dimensions differ from the previous
//! frame's (the resize plan). Errors allocate their message, as everywhere.

use image::RgbImage;

use super::resize::{Rect, Resizer};
use super::{PreprocessSpec, center_crop_rect, short_side_dims};
use crate::error::Result;

/// Turns camera frames into model inputs the way [`PreprocessSpec::test_transform`] and
/// [`PreprocessSpec::normalize`] (after [`super::rotate`]) do, into buffers kept between frames.
///
/// ```no_run
/// # use firm_shared::preprocess::{FramePreprocessor, PreprocessSpec};
/// # fn f(frame: &image::RgbImage) -> firm_shared::Result<()> {
/// let spec = PreprocessSpec::new(224);
/// let mut pre = FramePreprocessor::new(&spec)?;
/// let mut input = vec![0f32; pre.input_len()];
/// let square = pre.test_transform(frame)?; // 224 x 224 x 3 bytes
/// for q in 0..4 {
///     square.normalize_into(q, &mut input); // CHW of the view turned q x 90° CCW
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FramePreprocessor {
    size: u32,
    resize_side: u32,
    table: NormalizeTable,
    resizer: Resizer,
    /// The geometry of the last frame's dimensions.
    geometry: Option<FrameGeometry>,
    /// The test-transformed square, `3 * size * size` bytes (allocated once).
    square: Vec<u8>,
}

/// What follows from one frame size: the short-side resize target and the crop of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameGeometry {
    frame: (u32, u32),
    resized: (u32, u32),
    crop: Rect,
}

impl FramePreprocessor {
    /// For frames preprocessed as `spec` says. Refuses a spec that [`PreprocessSpec::validate`]
    /// refuses.
    pub fn new(spec: &PreprocessSpec) -> Result<Self> {
        spec.validate()?;
        let n = spec.size as usize;
        Ok(Self {
            size: spec.size,
            resize_side: spec.resize_side(),
            table: NormalizeTable::new(spec),
            resizer: Resizer::new(spec.filter),
            geometry: None,
            square: vec![0; 3 * n * n],
        })
    }

    /// Side of the square model input.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Floats in one normalised image: `3 * size * size`.
    pub fn input_len(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }

    /// The test transform of `frame`: the same `size` x `size` RGB bytes as
    /// [`PreprocessSpec::test_transform`]. When that transform is the identity (the frame is
    /// already the square it would produce) the view borrows the frame's own bytes.
    pub fn test_transform<'a>(&'a mut self, frame: &'a RgbImage) -> Result<TransformedFrame<'a>> {
        let dims = frame.dimensions();
        let geo = match self.geometry {
            Some(g) if g.frame == dims => g,
            _ => {
                let resized = short_side_dims(dims, self.resize_side)?;
                let crop = center_crop_rect(resized, self.size, self.size);
                // Invariant: the resized short side is resize_side >= size, so the crop is
                // always the full square.
                debug_assert_eq!((crop.width, crop.height), (self.size, self.size));
                let g = FrameGeometry {
                    frame: dims,
                    resized,
                    crop,
                };
                self.geometry = Some(g);
                g
            }
        };
        let (w, h) = (dims.0 as usize, dims.1 as usize);
        let raw = &frame.as_raw()[..3 * w * h];
        let pixels: &'a [u8] = if geo.resized == dims && geo.crop == Rect::full(dims.0, dims.1) {
            raw
        } else {
            // With resized == dims the resizer copies the window: resize_short_side's clone
            // followed by the crop.
            self.resizer
                .resize_window_into(raw, dims, geo.resized, geo.crop, &mut self.square);
            &self.square
        };
        Ok(TransformedFrame {
            pixels,
            size: self.size,
            table: &self.table,
        })
    }

    /// `normalize_chw(&rotate(img, quarter_turns), norm)` into `out` (CHW planes), for an image
    /// that already went through the test transform (`img`: `size` x `size` RGB rows).
    ///
    /// Panics unless `img` has `3 * size * size` bytes and `out` as many floats.
    pub fn normalize_into(&self, img: &[u8], quarter_turns: u8, out: &mut [f32]) {
        self.table
            .write(img, self.size, quarter_turns, Layout::Chw, out);
    }

    /// As [`Self::normalize_into`] but interleaved: `out[(y * size + x) * 3 + c]`.
    pub fn normalize_nhwc_into(&self, img: &[u8], quarter_turns: u8, out: &mut [f32]) {
        self.table
            .write(img, self.size, quarter_turns, Layout::Nhwc, out);
    }
}

/// A test-transformed frame: `size` x `size` RGB bytes, borrowed from the
/// [`FramePreprocessor`] (or from the frame itself when the transform was the identity).
#[derive(Debug, Clone, Copy)]
pub struct TransformedFrame<'a> {
    pixels: &'a [u8],
    size: u32,
    table: &'a NormalizeTable,
}

impl<'a> TransformedFrame<'a> {
    /// The RGB rows, `3 * size * size` bytes (an `RgbImage`'s raw layout).
    pub fn pixels(&self) -> &'a [u8] {
        self.pixels
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// A copy as an image (allocates; for callers that want the allocating API's type).
    pub fn to_image(&self) -> RgbImage {
        RgbImage::from_raw(self.size, self.size, self.pixels.to_vec())
            .expect("3 * size * size bytes")
    }

    /// [`FramePreprocessor::normalize_into`] of this square: CHW planes of the view turned
    /// `quarter_turns` x 90° counter-clockwise.
    pub fn normalize_into(&self, quarter_turns: u8, out: &mut [f32]) {
        self.table
            .write(self.pixels, self.size, quarter_turns, Layout::Chw, out);
    }

    /// [`FramePreprocessor::normalize_nhwc_into`] of this square.
    pub fn normalize_nhwc_into(&self, quarter_turns: u8, out: &mut [f32]) {
        self.table
            .write(self.pixels, self.size, quarter_turns, Layout::Nhwc, out);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Chw,
    Nhwc,
}

/// The normalised float of every byte, per channel.
#[derive(Debug, Clone)]
struct NormalizeTable {
    /// `lut[c][v] = (v as f32 / 255.0 - mean[c]) * (1.0 / std[c])`: the operations and order of
    /// `normalize_chw` (its `planes`), so a lookup equals the computed value bit for bit.
    lut: [[f32; 256]; 3],
}

impl NormalizeTable {
    fn new(spec: &PreprocessSpec) -> Self {
        let n = &spec.normalization;
        let inv_std: [f32; 3] = std::array::from_fn(|c| 1.0 / n.std[c]);
        Self {
            lut: std::array::from_fn(|c| {
                std::array::from_fn(|v| (v as f32 / 255.0 - n.mean[c]) * inv_std[c])
            }),
        }
    }

    /// Normalise `img` (`size` x `size` RGB rows) turned `quarter_turns` x 90° counter-clockwise
    /// into `out`.
    fn write(&self, img: &[u8], size: u32, quarter_turns: u8, layout: Layout, out: &mut [f32]) {
        let n = size as usize;
        let plane = n * n;
        assert_eq!(img.len(), 3 * plane, "a {n}x{n} RGB image");
        assert_eq!(out.len(), 3 * plane, "3x{n}x{n} floats");
        let [r, g, b] = &self.lut;
        for yo in 0..n {
            // Output (xo, yo) reads source pixel base + xo * step (pixel indices), the inverse of
            // imageops' rotations for a square: a quarter turn CCW maps source (x, y) to
            // (y, n - 1 - x).
            let (base, step): (isize, isize) = match quarter_turns % 4 {
                0 => ((yo * n) as isize, 1),
                1 => ((n - 1 - yo) as isize, n as isize),
                2 => (((n - 1 - yo) * n + n - 1) as isize, -1),
                _ => (((n - 1) * n + yo) as isize, -(n as isize)),
            };
            let row = yo * n;
            match layout {
                Layout::Chw => {
                    let (pr, rest) = out.split_at_mut(plane);
                    let (pg, pb) = rest.split_at_mut(plane);
                    for xo in 0..n {
                        let s = 3 * (base + xo as isize * step) as usize;
                        let px = &img[s..s + 3];
                        pr[row + xo] = r[px[0] as usize];
                        pg[row + xo] = g[px[1] as usize];
                        pb[row + xo] = b[px[2] as usize];
                    }
                }
                Layout::Nhwc => {
                    let dst = &mut out[3 * row..3 * (row + n)];
                    for (xo, d) in dst.chunks_exact_mut(3).enumerate() {
                        let s = 3 * (base + xo as isize * step) as usize;
                        let px = &img[s..s + 3];
                        d[0] = r[px[0] as usize];
                        d[1] = g[px[1] as usize];
                        d[2] = b[px[2] as usize];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{Normalization, ResizeFilter, normalize_chw, rotate};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_frame(rng: &mut ChaCha8Rng, w: u32, h: u32) -> RgbImage {
        crate::preprocess::resize::tests::random_image(rng, w, h)
    }

    fn specs() -> Vec<PreprocessSpec> {
        let odd = Normalization {
            mean: [0.3, 0.61, 0.12],
            std: [0.17, 0.31, 0.9],
        };
        vec![
            PreprocessSpec::new(32),
            PreprocessSpec {
                filter: ResizeFilter::Bicubic,
                normalization: odd,
                ..PreprocessSpec::new(24)
            },
            PreprocessSpec {
                filter: ResizeFilter::Nearest,
                resize_ratio: 1.0,
                ..PreprocessSpec::new(17)
            },
            PreprocessSpec {
                resize_ratio: 1.5,
                ..PreprocessSpec::new(9)
            },
        ]
    }

    fn nhwc_of_chw(chw: &[f32], n: usize) -> Vec<f32> {
        let plane = n * n;
        (0..3 * plane)
            .map(|i| chw[(i % 3) * plane + i / 3])
            .collect()
    }

    /// The new path against the allocating one, bit for bit, for one frame.
    fn check(pre: &mut FramePreprocessor, spec: &PreprocessSpec, frame: &RgbImage) {
        let want = spec.test_transform(frame).unwrap();
        let n = spec.size as usize;
        let mut chw = vec![f32::NAN; 3 * n * n];
        let mut nhwc = vec![f32::NAN; 3 * n * n];
        let square = pre.test_transform(frame).unwrap();
        assert_eq!(
            square.pixels(),
            want.as_raw().as_slice(),
            "{spec:?} {:?}",
            frame.dimensions()
        );
        assert_eq!(square.to_image(), want);
        for q in 0..5u8 {
            let reference = normalize_chw(&rotate(&want, q), &spec.normalization);
            square.normalize_into(q, &mut chw);
            square.normalize_nhwc_into(q, &mut nhwc);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&chw), bits(&reference), "CHW, {q} quarter turns");
            assert_eq!(
                bits(&nhwc),
                bits(&nhwc_of_chw(&reference, n)),
                "NHWC, {q} quarter turns"
            );
        }
    }

    #[test]
    fn random_frames_match_the_allocating_path() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        for spec in specs() {
            let mut pre = FramePreprocessor::new(&spec).unwrap();
            for _ in 0..25 {
                let (w, h) = (rng.random_range(1..90), rng.random_range(1..90));
                let frame = random_frame(&mut rng, w, h);
                check(&mut pre, &spec, &frame);
                // Same size again: the kept plan.
                let frame = random_frame(&mut rng, w, h);
                check(&mut pre, &spec, &frame);
            }
        }
    }

    #[test]
    fn camera_frames_match_the_allocating_path() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for size in [224, 256] {
            let spec = PreprocessSpec::new(size);
            let mut pre = FramePreprocessor::new(&spec).unwrap();
            for (w, h) in [(640, 480), (1920, 1080), (480, 640), (2448, 2048)] {
                check(&mut pre, &spec, &random_frame(&mut rng, w, h));
            }
        }
    }

    #[test]
    fn identity_and_crop_only_frames() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        // Ratio 1: a size x size frame is the transform's output itself, borrowed.
        let spec = PreprocessSpec {
            resize_ratio: 1.0,
            ..PreprocessSpec::new(20)
        };
        let mut pre = FramePreprocessor::new(&spec).unwrap();
        let frame = random_frame(&mut rng, 20, 20);
        let ptr = pre.test_transform(&frame).unwrap().pixels().as_ptr();
        assert_eq!(ptr, frame.as_raw().as_ptr(), "no copy");
        check(&mut pre, &spec, &frame);
        // Short side already the resize side: only the crop.
        for (w, h) in [(20, 31), (44, 20), (21, 20)] {
            check(&mut pre, &spec, &random_frame(&mut rng, w, h));
        }
        // Ratio 1.125: a 32 x 32 frame still goes up to 36 and is cropped back.
        let spec = PreprocessSpec::new(32);
        let mut pre = FramePreprocessor::new(&spec).unwrap();
        check(&mut pre, &spec, &random_frame(&mut rng, 32, 32));
        check(&mut pre, &spec, &random_frame(&mut rng, 36, 50));
    }

    #[test]
    fn preprocessed_images_normalise_like_the_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for spec in specs() {
            let pre = FramePreprocessor::new(&spec).unwrap();
            let n = spec.size as usize;
            let img = random_frame(&mut rng, spec.size, spec.size);
            let mut chw = vec![0f32; pre.input_len()];
            let mut nhwc = vec![0f32; pre.input_len()];
            for q in 0..4u8 {
                let reference = normalize_chw(&rotate(&img, q), &spec.normalization);
                pre.normalize_into(img.as_raw(), q, &mut chw);
                pre.normalize_nhwc_into(img.as_raw(), q, &mut nhwc);
                assert_eq!(chw, reference);
                assert_eq!(nhwc, nhwc_of_chw(&reference, n));
            }
        }
    }

    #[test]
    fn refuses_what_the_reference_refuses() {
        assert!(FramePreprocessor::new(&PreprocessSpec::new(0)).is_err());
        let mut pre = FramePreprocessor::new(&PreprocessSpec::new(8)).unwrap();
        let empty = RgbImage::new(0, 4);
        assert!(pre.test_transform(&empty).is_err());
        assert!(PreprocessSpec::new(8).test_transform(&empty).is_err());
    }

    #[test]
    #[should_panic(expected = "3x8x8 floats")]
    fn wrong_output_length_panics() {
        let pre = FramePreprocessor::new(&PreprocessSpec::new(8)).unwrap();
        pre.normalize_into(&[0; 3 * 64], 0, &mut [0.0; 10]);
    }
}

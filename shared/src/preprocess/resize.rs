//! [`Resizer`]: image 0.25's `imageops::resize` for 8-bit RGB, byte for byte, without allocating
//! per call, and computing only the window of the output that is kept (the centre crop).
//!
//! Why: the device preprocesses every camera frame; `imageops::resize` allocates two images and
//! recomputes every filter weight per call. The trainer keeps calling `imageops::resize` (through
//! [`super::resize_short_side`]); the tests below hold this copy to it bit for bit, for each of
//! the three filters, so trainer and device still see the same bytes (and fail if an upgrade of
//! image changes its arithmetic).
//!
//! The arithmetic that has to match (image 0.25.10, `src/imageops/sample.rs`):
//! - Equal source and target size: a plain copy. An empty source gives a black image.
//! - Otherwise a vertical pass first (u8 source -> f32 rows of the target height, no rounding),
//!   then a horizontal pass (f32 -> target width), whose sums are clamped to [0, 255] and rounded
//!   half away from zero.
//! - Per axis: `ratio = src / dst` (f32), `sratio = max(ratio, 1)`, support = filter support x
//!   sratio. Output index `o` reads source indices `left..right` with
//!   `left = clamp(floor(c - support), 0, src - 1)`, `right = clamp(ceil(c + support), left + 1,
//!   src)`, `c = (o + 0.5) * ratio`; the weight of source `i` is `kernel((i - (c - 0.5)) /
//!   sratio)`, each divided by their f32 sum (summed in index order).
//! - Every output value is `0.0 + v[left] * w[0] + v[left + 1] * w[1] + ...`, accumulated in f32
//!   in index order (Rust does not contract to FMA, so the order fixes the result).
//!
//! What this copy does differently, none of which changes a byte:
//! - Weights and index ranges are computed once per (source size, target size, window, filter)
//!   and reused until one of them changes.
//! - Zero weights at either end of a span are dropped: they add `±0.0`, which only ever changes
//!   the sign of a zero sum, and a zero of either sign clamps and rounds to the byte 0.
//! - Only the target rows and columns inside the window are computed, and the vertical pass only
//!   over the source columns those target columns read. Each target value depends on nothing
//!   else, so the window equals the same window cropped from the full resize.
//! - The two passes run one target row at a time (the horizontal pass only needs that row of the
//!   vertical pass), so the intermediate is one row, not an image. Source rows are converted to
//!   f32 once per call into a ring of as many rows as the longest vertical span (the same
//!   `v as f32` image does per tap), and the vertical sums sweep whole rows, up to four taps per
//!   sweep, keeping each value's tap order.
//! - Rounding adds 2^23 and reads the low byte of the bits, fixing up exact .5 ties, instead of
//!   calling `f32::round` (same result for every value in [0, 255], checked exhaustively by an
//!   ignored test; a loop of it vectorises on plain SSE2, which has no `roundps`).
//!
//! Speed (`cargo bench -p firm-shared --bench preprocess`, figures in that file's header):
//! 640x480 -> 224 test transform + normalisation in about 0.6 ms against 5.8 ms for the
//! allocating path, 1920x1080 -> 256 in 1.2 ms against 17.5 ms, on a shared 2-core VM.

use super::ResizeFilter;

/// A rectangle of pixels: `width` x `height` starting at column `x`, row `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// The whole of a `width` x `height` image.
    pub fn full(width: u32, height: u32) -> Self {
        Self {
            x: 0,
            y: 0,
            width,
            height,
        }
    }

    /// True when the rectangle lies inside a `width` x `height` image.
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        self.x as u64 + self.width as u64 <= width as u64
            && self.y as u64 + self.height as u64 <= height as u64
    }

    fn area(&self) -> usize {
        self.width as usize * self.height as usize
    }
}

impl ResizeFilter {
    /// Half-width of the kernel in source pixels before widening for downscales (image's
    /// `Filter::support`).
    fn support(self) -> f32 {
        match self {
            ResizeFilter::Nearest => 0.0,
            ResizeFilter::Bilinear => 1.0,
            ResizeFilter::Bicubic => 2.0,
        }
    }

    /// The kernel at offset `x` (in target-scaled source pixels). Same expressions and operation
    /// order as image's `box_kernel`, `triangle_kernel` and `bc_cubic_spline(x, 0, 0.5)`; the
    /// cubic's coefficients are that function's with B = 0, C = 0.5 substituted, each exact in
    /// f32 (12 - 9B - 6C = 9, -18 + 12B + 6C = -15, 6 - 2B = 6, -B - 6C = -3, 6B + 30C = 15,
    /// -12B - 48C = -24, 8B + 24C = 12).
    fn kernel(self, x: f32) -> f32 {
        match self {
            ResizeFilter::Nearest => 1.0,
            ResizeFilter::Bilinear => {
                if x.abs() < 1.0 {
                    1.0 - x.abs()
                } else {
                    0.0
                }
            }
            ResizeFilter::Bicubic => {
                let a = x.abs();
                let k = if a < 1.0 {
                    9.0 * a.powi(3) + -15.0 * a.powi(2) + 6.0
                } else if a < 2.0 {
                    -3.0 * a.powi(3) + 15.0 * a.powi(2) + -24.0 * a + 12.0
                } else {
                    0.0
                };
                k / 6.0
            }
        }
    }
}

/// The taps of one target index along one axis: source indices `start..start + len`, weights
/// `weights[offset..offset + len]`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    offset: usize,
    len: usize,
}

/// Filter taps for a range of target indices along one axis.
#[derive(Debug, Clone, Default)]
struct AxisPlan {
    /// One per target index of the window, in order.
    spans: Vec<Span>,
    weights: Vec<f32>,
}

impl AxisPlan {
    /// Taps for target indices `outputs` when `src` source pixels become `dst`, reusing the
    /// vectors' capacity. Invariants: every span has `len >= 1` and lies in `0..src`.
    fn build(&mut self, filter: ResizeFilter, src: u32, dst: u32, outputs: std::ops::Range<u32>) {
        self.spans.clear();
        self.weights.clear();
        let ratio = src as f32 / dst as f32;
        let sratio = if ratio < 1.0 { 1.0 } else { ratio };
        let support = filter.support() * sratio;
        for o in outputs {
            let centre = (o as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, src as i64 - 1);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, src as i64);
            // The kernel puts a pixel's centre at 0, so measure from the left edge.
            let centre = centre - 0.5;
            let offset = self.weights.len();
            let mut sum = 0f32;
            for i in left..right {
                let w = filter.kernel((i as f32 - centre) / sratio);
                self.weights.push(w);
                sum += w;
            }
            for w in &mut self.weights[offset..] {
                *w /= sum;
            }
            let ws = &self.weights[offset..];
            let lead = ws.iter().take_while(|w| **w == 0.0).count();
            let (lead, len) = if lead == ws.len() {
                // All zero cannot happen (the sum would be 0 and image would panic on the NaN);
                // keep the span as it is rather than make it empty.
                (0, ws.len())
            } else {
                let trail = ws.iter().rev().take_while(|w| **w == 0.0).count();
                (lead, ws.len() - lead - trail)
            };
            self.weights
                .copy_within(offset + lead..offset + lead + len, offset);
            self.weights.truncate(offset + len);
            self.spans.push(Span {
                start: left as usize + lead,
                offset,
                len,
            });
        }
    }

    fn taps(&self, s: &Span) -> &[f32] {
        &self.weights[s.offset..s.offset + s.len]
    }
}

/// What a plan was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlanKey {
    src: (u32, u32),
    dst: (u32, u32),
    window: Rect,
}

/// Resizes 8-bit RGB exactly as image 0.25's `imageops::resize` does with the filter's
/// `FilterType` (Triangle, CatmullRom, Nearest), into a caller's buffer.
///
/// The weights and index ranges are computed on the first call for a (source size, target size,
/// window) and reused while those stay the same; after that a call allocates nothing (buffers
/// keep their capacity across geometry changes too, so alternating sizes stops allocating once
/// the largest has been seen). Only the requested window of the target is computed, which is how
/// the centre crop of the test transform costs nothing extra.
///
/// Memory: the row cache holds (longest vertical span) x (source columns read) x 12 bytes, about
/// 350 KB for a 2448 x 2048 frame to 288 rows (16 taps); extreme downscales need more (a span
/// covers about 2 x support x factor source rows).
#[derive(Debug, Clone)]
pub struct Resizer {
    filter: ResizeFilter,
    key: Option<PlanKey>,
    /// Target rows of the window -> source rows.
    rows: AxisPlan,
    /// Target columns of the window -> source columns, counted from `col0`.
    cols: AxisPlan,
    /// The source columns any window column reads: `col0..col0 + ncols`.
    col0: usize,
    ncols: usize,
    /// One target row of the vertical pass over those columns, 4 floats per pixel so each tap
    /// of the horizontal pass is one 4-lane multiply-add. Lane 3 is always 0.0 (zeroed when the
    /// plan changes, never written).
    mid: Vec<f32>,
    /// The same row while the vertical pass sums it, 3 floats per pixel.
    acc: Vec<f32>,
    /// One target row's sums before rounding, `3 * window width + 1` floats.
    sums: Vec<f32>,
    /// Source rows (those columns) as f32, converted once per call however many target rows
    /// read them.
    cache: RowCache,
}

impl Resizer {
    pub fn new(filter: ResizeFilter) -> Self {
        Self {
            filter,
            key: None,
            rows: AxisPlan::default(),
            cols: AxisPlan::default(),
            col0: 0,
            ncols: 0,
            mid: Vec::new(),
            acc: Vec::new(),
            sums: Vec::new(),
            cache: RowCache::default(),
        }
    }

    pub fn filter(&self) -> ResizeFilter {
        self.filter
    }

    /// Resize `src` (RGB rows, `src_size` = (width, height), at least `3 * width * height`
    /// bytes) to `dst_size`; `out` takes the `3 * width * height` bytes of the target.
    pub fn resize_into(
        &mut self,
        src: &[u8],
        src_size: (u32, u32),
        dst_size: (u32, u32),
        out: &mut [u8],
    ) {
        let window = Rect::full(dst_size.0, dst_size.1);
        self.resize_window_into(src, src_size, dst_size, window, out);
    }

    /// Like [`Self::resize_into`] but only the `window` of the `dst_size` target (row by row,
    /// `3 * window.width * window.height` bytes): the same bytes as cropping the full resize.
    ///
    /// Panics when `src` is shorter than its size says, `window` does not fit in `dst_size`, or
    /// `out` is not the window's size.
    pub fn resize_window_into(
        &mut self,
        src: &[u8],
        src_size: (u32, u32),
        dst_size: (u32, u32),
        window: Rect,
        out: &mut [u8],
    ) {
        let (w, h) = (src_size.0 as usize, src_size.1 as usize);
        assert!(
            src.len() >= 3 * w * h,
            "a {w}x{h} RGB source needs {} bytes, got {}",
            3 * w * h,
            src.len()
        );
        assert!(
            window.fits_in(dst_size.0, dst_size.1),
            "window {window:?} outside the {dst_size:?} target"
        );
        assert_eq!(out.len(), 3 * window.area(), "output size for {window:?}");
        if window.area() == 0 {
            return;
        }
        if w == 0 || h == 0 {
            // imageops::resize: nothing to sample, a black image of the target size.
            out.fill(0);
            return;
        }
        let row_bytes = 3 * window.width as usize;
        if src_size == dst_size {
            // imageops::resize copies when the size does not change.
            let x0 = 3 * window.x as usize;
            for (r, dst) in out.chunks_exact_mut(row_bytes).enumerate() {
                let y = window.y as usize + r;
                dst.copy_from_slice(&src[y * 3 * w + x0..][..row_bytes]);
            }
            return;
        }
        self.plan(src_size, dst_size, window);
        let Self {
            rows,
            cols,
            col0,
            mid,
            acc,
            sums,
            cache,
            ..
        } = self;
        let src = &src[..3 * w * h];
        let cols_src = &src[3 * *col0..];
        // A new source image: nothing converted yet.
        cache.forget();
        for (span, dst) in rows.spans.iter().zip(out.chunks_exact_mut(row_bytes)) {
            cache.load(cols_src, 3 * w, span.start..span.start + span.len);
            vertical_row(cache, span.start, rows.taps(span), acc, mid);
            horizontal_row(mid, cols, sums, dst);
        }
    }

    /// Build the plan for this geometry unless the current one is for it.
    fn plan(&mut self, src: (u32, u32), dst: (u32, u32), window: Rect) {
        let key = PlanKey { src, dst, window };
        if self.key == Some(key) {
            return;
        }
        let xs = window.x..window.x + window.width;
        let ys = window.y..window.y + window.height;
        self.cols.build(self.filter, src.0, dst.0, xs);
        self.rows.build(self.filter, src.1, dst.1, ys);
        let col0 = self.cols.spans.iter().map(|s| s.start).min().unwrap_or(0);
        let col_end = self
            .cols
            .spans
            .iter()
            .map(|s| s.start + s.len)
            .max()
            .unwrap_or(0);
        for s in &mut self.cols.spans {
            s.start -= col0;
        }
        self.col0 = col0;
        self.ncols = col_end - col0;
        self.mid.clear();
        self.mid.resize(4 * self.ncols, 0.0);
        self.acc.resize(3 * self.ncols, 0.0);
        self.sums.resize(3 * window.width as usize + 1, 0.0);
        let slots = self.rows.spans.iter().map(|s| s.len).max().unwrap_or(0);
        self.cache.reset(slots, 3 * self.ncols);
        self.key = Some(key);
    }
}

/// Source rows converted to f32 (only the columns read), kept while the target rows that read
/// them are computed: each source row is converted once per call instead of once per tap.
#[derive(Debug, Clone, Default)]
struct RowCache {
    /// `tags.len()` slots of `len` floats; source row `r` lives in slot `r % tags.len()`, so the
    /// rows of one span (consecutive, at most `tags.len()` of them) never share a slot.
    data: Vec<f32>,
    /// The source row each slot holds; `usize::MAX` for none.
    tags: Vec<usize>,
    len: usize,
}

impl RowCache {
    /// Room for spans of up to `slots` rows of `len` floats.
    fn reset(&mut self, slots: usize, len: usize) {
        self.data.clear();
        self.data.resize(slots * len, 0.0);
        self.tags.clear();
        self.tags.resize(slots, usize::MAX);
        self.len = len;
    }

    fn forget(&mut self) {
        self.tags.fill(usize::MAX);
    }

    /// Convert the source rows of `rows` that are not held yet (`src` starts at the first column
    /// read, `stride` bytes per source row).
    fn load(&mut self, src: &[u8], stride: usize, rows: std::ops::Range<usize>) {
        let slots = self.tags.len();
        debug_assert!(rows.len() <= slots);
        for r in rows {
            let slot = r % slots;
            if self.tags[slot] != r {
                let dst = &mut self.data[slot * self.len..(slot + 1) * self.len];
                for (d, &v) in dst.iter_mut().zip(&src[r * stride..][..self.len]) {
                    *d = v as f32;
                }
                self.tags[slot] = r;
            }
        }
    }

    fn row(&self, r: usize) -> &[f32] {
        let slot = r % self.tags.len();
        debug_assert_eq!(self.tags[slot], r, "row {r} not loaded");
        &self.data[slot * self.len..(slot + 1) * self.len]
    }
}

/// One target row of the vertical pass: `mid[4 * x + c] = 0.0 + Σ_i src[start + i][x][c] *
/// taps[i]`, in tap order, from the cached source rows. `acc` holds `3 * ncols` floats of scratch.
///
/// The sums run over whole rows, up to four taps per sweep: `a + v0 * w0 + v1 * w1` is
/// `(a + v0 * w0) + v1 * w1`, the sequential order, and each sweep vectorises across the row.
fn vertical_row(cache: &RowCache, start: usize, taps: &[f32], acc: &mut [f32], mid: &mut [f32]) {
    let mut i = 0;
    while i < taps.len() {
        let first = i == 0;
        let row = |k: usize| cache.row(start + i + k);
        let w = &taps[i..];
        i += match w.len() {
            1 => sweep(acc, [row(0)], [w[0]], first),
            2 | 3 => sweep(acc, [row(0), row(1)], [w[0], w[1]], first),
            _ => sweep(
                acc,
                [row(0), row(1), row(2), row(3)],
                [w[0], w[1], w[2], w[3]],
                first,
            ),
        };
    }
    for (m, a) in mid.chunks_exact_mut(4).zip(acc.chunks_exact(3)) {
        m[..3].copy_from_slice(a);
    }
}

/// `acc[k] = (start) + rows[0][k] * w[0] + ... + rows[N - 1][k] * w[N - 1]` in that order, where
/// `start` is 0.0 for the first sweep of a row and `acc[k]` after. Returns `N`.
#[inline]
fn sweep<const N: usize>(acc: &mut [f32], rows: [&[f32]; N], w: [f32; N], first: bool) -> usize {
    let n = acc.len();
    let rows = rows.map(|r| &r[..n]);
    if first {
        for (k, a) in acc.iter_mut().enumerate() {
            let mut t = 0.0;
            for j in 0..N {
                t += rows[j][k] * w[j];
            }
            *a = t;
        }
    } else {
        for (k, a) in acc.iter_mut().enumerate() {
            let mut t = *a;
            for j in 0..N {
                t += rows[j][k] * w[j];
            }
            *a = t;
        }
    }
    N
}

/// One target row of the horizontal pass: each window column's taps over `mid`, then clamped
/// and rounded to bytes. `sums` holds `3 * width + 1` floats of scratch.
///
/// Each column's sum is four lanes (one 4-wide multiply-add per tap) stored at `3 * j`: its
/// fourth lane lands on column `j + 1`'s first, which that column then overwrites (the last one
/// on the spare float). Rounding is a separate loop over the row, which vectorises.
fn horizontal_row(mid: &[f32], cols: &AxisPlan, sums: &mut [f32], out: &mut [u8]) {
    for (j, span) in cols.spans.iter().enumerate() {
        let taps = cols.taps(span);
        let src = &mid[4 * span.start..4 * (span.start + span.len)];
        let mut t = [0f32; 4];
        for (v, &w) in src.chunks_exact(4).zip(taps) {
            for c in 0..4 {
                t[c] += v[c] * w;
            }
        }
        sums[3 * j..3 * j + 4].copy_from_slice(&t);
    }
    for (o, &v) in out.iter_mut().zip(sums.iter()) {
        *o = round_to_u8(v);
    }
}

/// image's `FloatNearest(clamp(x, 0, 255))` to u8: clamp, then round half away from zero.
///
/// Written so that a loop of it vectorises on plain SSE2 (no `roundps`; `f32::round` is a libm
/// call there): adding 2^23 rounds x in [0, 255] to the nearest integer `n` (ties to even) and
/// leaves `n` in the low mantissa bits; `x - n` is exact (Sterbenz) and is exactly 0.5 just where
/// ties-to-even rounded down but half-away rounds up (then `n + 1 <= 255`). The rounding tests
/// compare this with `f32::round`, exhaustively over [0, 256) in the ignored one.
#[inline]
fn round_to_u8(x: f32) -> u8 {
    const MAGIC: f32 = 8_388_608.0;
    // Same as image's clamp for every non-NaN value (sums of finite products are never NaN).
    let x = x.clamp(0.0, 255.0);
    let y = x + MAGIC;
    let n = y - MAGIC;
    let tie = (x - n >= 0.5) as u32;
    // The low byte of the bits of 2^23 + m is m.
    y.to_bits().wrapping_add(tie) as u8
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use image::RgbImage;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const FILTERS: [ResizeFilter; 3] = [
        ResizeFilter::Bilinear,
        ResizeFilter::Bicubic,
        ResizeFilter::Nearest,
    ];

    /// A random test image (shared with `frame.rs`'s tests).
    pub(crate) fn random_image(rng: &mut ChaCha8Rng, w: u32, h: u32) -> RgbImage {
        // Half the images noise, half smooth gradients with noise (the rounding of values
        // near .5 shows up in both).
        let smooth = rng.random_bool(0.5);
        let (a, b) = (rng.random_range(0..4u32), rng.random_range(0..4u32));
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb(std::array::from_fn(|c| {
                if smooth {
                    ((x * a + y * b + c as u32 * 40) % 256) as u8 ^ (rng.random::<u8>() & 7)
                } else {
                    rng.random()
                }
            }))
        })
    }

    fn reference(img: &RgbImage, nw: u32, nh: u32, f: ResizeFilter) -> RgbImage {
        image::imageops::resize(img, nw, nh, f.to_image())
    }

    fn ours(r: &mut Resizer, img: &RgbImage, nw: u32, nh: u32) -> Vec<u8> {
        let mut out = vec![0u8; 3 * nw as usize * nh as usize];
        r.resize_into(img.as_raw(), img.dimensions(), (nw, nh), &mut out);
        out
    }

    fn check(img: &RgbImage, nw: u32, nh: u32) {
        for f in FILTERS {
            let want = reference(img, nw, nh, f);
            let mut r = Resizer::new(f);
            let got = ours(&mut r, img, nw, nh);
            if got != *want.as_raw() {
                let i = got.iter().zip(want.as_raw()).position(|(a, b)| a != b);
                panic!(
                    "{f:?} {:?} -> {nw}x{nh}: first difference at byte {i:?}",
                    img.dimensions()
                );
            }
            // The cached plan gives the same bytes on a second call.
            assert_eq!(ours(&mut r, img, nw, nh), got);
        }
    }

    #[test]
    fn rounding_matches_f32_round() {
        // Every f32 in [0, 256) whose bits are a multiple of 61 (about 18.5 million values),
        // all values within 64 ulps of each k + 0.5, negatives and values above 255.
        let mut bits = 0u32;
        while f32::from_bits(bits) < 256.0 {
            let x = f32::from_bits(bits);
            assert_eq!(round_to_u8(x), x.round() as u8, "{x}");
            bits += 61;
        }
        for k in 0..256 {
            let half = k as f32 + 0.5;
            for d in -64i32..=64 {
                let x = f32::from_bits((half.to_bits() as i32 + d) as u32);
                assert_eq!(round_to_u8(x), x.clamp(0.0, 255.0).round() as u8, "{x}");
            }
        }
        for x in [-0.0f32, -0.4, -1.0, -300.0, 255.49, 255.5, 256.0, 1e9] {
            assert_eq!(round_to_u8(x), x.clamp(0.0, 255.0).round() as u8, "{x}");
        }
    }

    #[test]
    fn kernels_match_image_at_their_knots() {
        // Spot values every filter pass depends on; the bit-exact resizes below cover the rest.
        let cr = ResizeFilter::Bicubic;
        assert_eq!(cr.kernel(0.0), 1.0);
        assert_eq!(cr.kernel(1.0), 0.0);
        assert_eq!(cr.kernel(-2.0), 0.0);
        assert_eq!(cr.kernel(0.5), 0.5625);
        assert_eq!(cr.kernel(1.5), -0.0625);
        assert_eq!(ResizeFilter::Bilinear.kernel(-0.25), 0.75);
        assert_eq!(ResizeFilter::Bilinear.kernel(1.0), 0.0);
    }

    #[test]
    fn edge_sizes_are_bit_exact() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // (source width, height) -> (target width, height).
        let cases = [
            (1, 1, 1, 1),
            (1, 1, 5, 3),
            (1, 1, 1, 7),
            (1, 9, 1, 2),
            (9, 1, 2, 1),
            (7, 5, 1, 1),
            (2, 2, 3, 3),
            (3, 3, 2, 2),
            // One axis unchanged.
            (40, 30, 40, 17),
            (40, 30, 23, 30),
            (17, 31, 17, 64),
            (31, 17, 64, 17),
            // Odd sizes, up and down.
            (101, 67, 37, 25),
            (37, 25, 101, 67),
            (13, 211, 29, 5),
            // Big factors.
            (500, 3, 2, 3),
            (3, 400, 3, 1),
            (4, 4, 150, 90),
        ];
        for (w, h, nw, nh) in cases {
            let img = random_image(&mut rng, w, h);
            check(&img, nw, nh);
        }
    }

    #[test]
    fn random_sizes_are_bit_exact() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..150 {
            let (w, h) = (rng.random_range(1..120), rng.random_range(1..120));
            let (nw, nh) = match rng.random_range(0..4) {
                0 => (w, rng.random_range(1..160)),
                1 => (rng.random_range(1..160), h),
                _ => (rng.random_range(1..160), rng.random_range(1..160)),
            };
            let img = random_image(&mut rng, w, h);
            check(&img, nw, nh);
        }
    }

    #[test]
    fn camera_sizes_are_bit_exact() {
        // The test transform's resizes of common camera frames (224 -> 252, 256 -> 288 short
        // sides, long side truncated as in resize_short_side).
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for ((w, h), (nw, nh)) in [
            ((640, 480), (336, 252)),
            ((1920, 1080), (512, 288)),
            ((2448, 2048), (344, 288)),
            ((480, 640), (252, 336)),
            ((224, 224), (252, 252)),
            // Large factors: the long side of a full-HD frame to 288, and far beyond.
            ((1920, 1080), (288, 162)),
            ((1000, 700), (7, 5)),
            ((3, 2), (641, 479)),
        ] {
            let img = random_image(&mut rng, w, h);
            check(&img, nw, nh);
        }
    }

    #[test]
    fn windows_equal_crops_of_the_full_resize() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..60 {
            let (w, h) = (rng.random_range(1..250), rng.random_range(1..250));
            let (nw, nh) = (rng.random_range(1..120), rng.random_range(1..120));
            let img = random_image(&mut rng, w, h);
            let f = FILTERS[rng.random_range(0..3)];
            let full = reference(&img, nw, nh, f);
            let (ww, wh) = (rng.random_range(1..=nw), rng.random_range(1..=nh));
            let window = Rect {
                x: rng.random_range(0..=nw - ww),
                y: rng.random_range(0..=nh - wh),
                width: ww,
                height: wh,
            };
            let want = image::imageops::crop_imm(&full, window.x, window.y, ww, wh).to_image();
            let mut out = vec![0u8; 3 * window.area()];
            let mut r = Resizer::new(f);
            r.resize_window_into(img.as_raw(), (w, h), (nw, nh), window, &mut out);
            assert_eq!(out, *want.as_raw(), "{f:?} {w}x{h} -> {nw}x{nh} {window:?}");
        }
    }

    #[test]
    fn one_resizer_follows_changing_sizes() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut r = Resizer::new(ResizeFilter::Bilinear);
        for (w, h, nw, nh) in [
            (30, 20, 12, 9),
            (30, 20, 12, 9),
            (9, 40, 30, 3),
            (30, 20, 12, 9),
        ] {
            let img = random_image(&mut rng, w, h);
            let want = reference(&img, nw, nh, ResizeFilter::Bilinear);
            assert_eq!(ours(&mut r, &img, nw, nh), *want.as_raw());
        }
    }

    #[test]
    fn empty_source_gives_black() {
        let mut r = Resizer::new(ResizeFilter::Bilinear);
        let mut out = vec![7u8; 3 * 4 * 2];
        r.resize_into(&[], (0, 5), (4, 2), &mut out);
        let want = reference(&RgbImage::new(0, 5), 4, 2, ResizeFilter::Bilinear);
        assert_eq!(out, *want.as_raw());
    }
}

//! A 2-D f32 map (a patch-level anomaly map, row-major, higher = more anomalous) and what the
//! patch score does to it each frame: bilinear resize, Gaussian smoothing, the maximum, and the box
//! around the hottest region.
//!
//! - [`Map::resize_bilinear`] is PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`:
//!   output pixel `i` samples input coordinate `(i + 0.5) * in / out - 0.5`, clamped to the edge.
//! - [`Map::gaussian_blur`] is `scipy.ndimage.gaussian_filter(x, sigma)` with its defaults
//!   (`truncate=4.0`, mode "reflect": `d c b a | a b c d | d c b a`): separable, radius
//!   `int(4 * sigma + 0.5)` as scipy rounds it, O(w * h * radius).
//!
//! Both have `_into` / `_in_place` forms that write into the caller's buffers, so the device
//! allocates nothing per frame once the buffers have grown. Expected values in the tests come from
//! `scripts/score-map-reference.py` (skimage / scipy), kept in `shared/tests/data/`.
//!
//! [`Smooth`] does both as one precomputed linear map per axis, which is what the patch scorer
//! runs each frame.
//!
//! Measured (`cargo bench -p firm-shared --bench heatmap`, one thread, a 2-core AMD EPYC VM
//! shared with other builds): 28x28 -> 224x224 resize 0.07-0.19 ms, resize + blur (sigma 4,
//! radius 16) 0.36-0.49 ms per frame, the same by [`Smooth`] 0.046-0.050 ms.

/// A `w` x `h` map of f32, row-major (`data[y * w + x]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map {
    pub w: usize,
    pub h: usize,
    pub data: Vec<f32>,
}

/// Reusable buffers of [`Map::box_of_hottest_with`] (a visited mask and a flood-fill stack).
#[derive(Debug, Clone, Default)]
pub struct RegionScratch {
    seen: Vec<bool>,
    stack: Vec<usize>,
}

impl Map {
    /// A `w` x `h` map of zeros.
    pub fn new(w: usize, h: usize) -> Self {
        Self::filled(w, h, 0.0)
    }

    /// A `w` x `h` map with every value `v`.
    pub fn filled(w: usize, h: usize, v: f32) -> Self {
        Self {
            w,
            h,
            data: vec![v; w * h],
        }
    }

    /// A map over `data` (row-major); `None` unless `data.len() == w * h`.
    pub fn from_vec(w: usize, h: usize, data: Vec<f32>) -> Option<Self> {
        (data.len() == w * h).then_some(Self { w, h, data })
    }

    /// The value at column `x`, row `y`. Panics outside the map.
    pub fn get(&self, x: usize, y: usize) -> f32 {
        assert!(
            x < self.w && y < self.h,
            "({x}, {y}) outside a {}x{} map",
            self.w,
            self.h
        );
        self.data[y * self.w + x]
    }

    /// Sets the value at column `x`, row `y`. Panics outside the map.
    pub fn set(&mut self, x: usize, y: usize, v: f32) {
        assert!(
            x < self.w && y < self.h,
            "({x}, {y}) outside a {}x{} map",
            self.w,
            self.h
        );
        self.data[y * self.w + x] = v;
    }

    /// Row `y`.
    pub fn row(&self, y: usize) -> &[f32] {
        &self.data[y * self.w..(y + 1) * self.w]
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Changes the size, keeping the allocation when it is large enough. The values are left
    /// as they were in the buffer (callers overwrite them).
    pub fn reshape(&mut self, w: usize, h: usize) {
        self.w = w;
        self.h = h;
        self.data.resize(w * h, 0.0);
    }

    /// The largest value and its `(x, y)`: the first in row-major order when several are equal.
    /// NaN values are skipped; an empty or all-NaN map gives `(-inf, (0, 0))`.
    pub fn max(&self) -> (f32, (usize, usize)) {
        let mut best = f32::NEG_INFINITY;
        let mut at = 0;
        for (i, &v) in self.data.iter().enumerate() {
            if v > best {
                best = v;
                at = i;
            }
        }
        let w = self.w.max(1);
        (best, (at % w, at / w))
    }

    /// The smallest and largest value (NaN skipped; `(inf, -inf)` for an empty map).
    pub fn min_max(&self) -> (f32, f32) {
        self.data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })
    }

    /// This map resized to `w` x `h` by [`Self::resize_bilinear_into`].
    pub fn resize_bilinear(&self, w: usize, h: usize) -> Map {
        let mut out = Map::new(w, h);
        self.resize_bilinear_into(&mut out);
        out
    }

    /// Bilinear resize to `out`'s size (`out.w` x `out.h`, its values overwritten), as PyTorch's
    /// `F.interpolate(mode="bilinear", align_corners=False)` in f32: source coordinate
    /// `(i + 0.5) * in / out - 0.5`, negative ones clamped to 0, the upper neighbour clamped to
    /// the last pixel. Allocates nothing.
    ///
    /// # Panics
    /// When `out.data.len() != out.w * out.h`, or when this map is empty and `out` is not.
    pub fn resize_bilinear_into(&self, out: &mut Map) {
        self.resample_into(out, Resample::HalfPixel, Resample::HalfPixel)
    }

    /// Bilinear resize to `out`'s size with the source coordinate of each column (`x`) and row
    /// (`y`) given by a [`Resample`]; [`Self::resize_bilinear_into`] is the half-pixel case.
    ///
    /// # Panics
    /// As [`Self::resize_bilinear_into`].
    pub fn resample_into(&self, out: &mut Map, x: Resample, y: Resample) {
        assert_eq!(
            out.data.len(),
            out.w * out.h,
            "output map: {} values for {}x{}",
            out.data.len(),
            out.w,
            out.h
        );
        if out.data.is_empty() {
            return;
        }
        assert!(
            !self.is_empty(),
            "cannot resize an empty {}x{} map to {}x{}",
            self.w,
            self.h,
            out.w,
            out.h
        );
        if (self.w, self.h) == (out.w, out.h)
            && (x, y) == (Resample::HalfPixel, Resample::HalfPixel)
        {
            out.data.copy_from_slice(&self.data);
            return;
        }
        // Columns in blocks whose sources are tabled on the stack once for all rows.
        const BLOCK: usize = 64;
        let (mut x0s, mut x1s, mut lxs) = ([0usize; BLOCK], [0usize; BLOCK], [0f32; BLOCK]);
        for bx in (0..out.w).step_by(BLOCK) {
            let n = BLOCK.min(out.w - bx);
            for i in 0..n {
                (x0s[i], x1s[i], lxs[i]) = x.source(bx + i, self.w, out.w);
            }
            let cols = x0s[..n].iter().zip(&x1s[..n]).zip(&lxs[..n]);
            for oy in 0..out.h {
                let (y0, y1, ly) = y.source(oy, self.h, out.h);
                let (r0, r1) = (self.row(y0), self.row(y1));
                let row = &mut out.data[oy * out.w + bx..oy * out.w + bx + n];
                for (o, ((&x0, &x1), &lx)) in row.iter_mut().zip(cols.clone()) {
                    // PyTorch's order of operations (upsample_bilinear2d's CPU kernel).
                    *o = (1.0 - ly) * ((1.0 - lx) * r0[x0] + lx * r0[x1])
                        + ly * ((1.0 - lx) * r1[x0] + lx * r1[x1]);
                }
            }
        }
    }

    /// This map smoothed by [`Self::gaussian_blur_into`].
    pub fn gaussian_blur(&self, sigma: f32) -> Map {
        let mut out = Map::new(self.w, self.h);
        self.gaussian_blur_into(sigma, &mut out, &mut Vec::new());
        out
    }

    /// Gaussian smoothing into `out` (resized to this map's size), as
    /// `scipy.ndimage.gaussian_filter(x, sigma)`: a normalised kernel of radius
    /// `int(4 * sigma + 0.5)` along rows, then along columns, borders reflected (`d c b a | a b c d`,
    /// repeated for a kernel wider than the map). `sigma <= 0` (or NaN) copies. `scratch` is grown
    /// to `w * h + w + 3 * radius + 1` values and reused: no allocation once it has that size.
    ///
    /// # Panics
    /// When `sigma` is infinite.
    pub fn gaussian_blur_into(&self, sigma: f32, out: &mut Map, scratch: &mut Vec<f32>) {
        out.reshape(self.w, self.h);
        if sigma.is_nan() || sigma <= 0.0 || self.is_empty() {
            out.data.copy_from_slice(&self.data);
            return;
        }
        let (kernel, pad, tmp) = blur_buffers(sigma, self.w, self.h, scratch);
        blur_rows(&self.data, self.w, kernel, pad, tmp);
        blur_columns(tmp, self.w, self.h, kernel, &mut out.data);
    }

    /// [`Self::gaussian_blur_into`] with this map as its own output.
    pub fn gaussian_blur_in_place(&mut self, sigma: f32, scratch: &mut Vec<f32>) {
        if sigma.is_nan() || sigma <= 0.0 || self.is_empty() {
            return;
        }
        let (kernel, pad, tmp) = blur_buffers(sigma, self.w, self.h, scratch);
        blur_rows(&self.data, self.w, kernel, pad, tmp);
        blur_columns(tmp, self.w, self.h, kernel, &mut self.data);
    }

    /// The bounding box `(x0, y0, x1, y1)` (ends exclusive) of the 8-connected region of pixels
    /// `>= threshold` that holds the map's maximum ([`Self::max`]); `None` when that maximum is
    /// below `threshold` (or the threshold is NaN). Allocates a `w * h` mask and a stack; see
    /// [`Self::box_of_hottest_with`] for reusable buffers.
    pub fn box_of_hottest(&self, threshold: f32) -> Option<(usize, usize, usize, usize)> {
        self.box_of_hottest_with(threshold, &mut RegionScratch::default())
    }

    /// The region an operator is shown, `(x0, y0, x1, y1)` with exclusive ends: the 8-connected
    /// region around the maximum above halfway from `threshold` to the maximum (a large defect
    /// lifts its whole smoothed neighbourhood over the threshold itself), or a box of radius
    /// `w / 16` around the maximum when it is below `threshold`.
    pub fn hottest_region(
        &self,
        threshold: f32,
        scratch: &mut RegionScratch,
    ) -> (usize, usize, usize, usize) {
        let (top, (x, y)) = self.max();
        let level = if top > threshold {
            0.5 * (top + threshold)
        } else {
            threshold
        };
        self.box_of_hottest_with(level, scratch).unwrap_or_else(|| {
            let r = (self.w / 16).max(1);
            (
                x.saturating_sub(r),
                y.saturating_sub(r),
                (x + r + 1).min(self.w),
                (y + r + 1).min(self.h),
            )
        })
    }

    /// [`Self::box_of_hottest`] with the caller's buffers.
    pub fn box_of_hottest_with(
        &self,
        threshold: f32,
        scratch: &mut RegionScratch,
    ) -> Option<(usize, usize, usize, usize)> {
        let (best, (mx, my)) = self.max();
        if self.is_empty() || threshold.is_nan() || best < threshold {
            return None;
        }
        let (w, h) = (self.w, self.h);
        let seen = &mut scratch.seen;
        seen.clear();
        seen.resize(w * h, false);
        let stack = &mut scratch.stack;
        stack.clear();
        let start = my * w + mx;
        seen[start] = true;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1) = (mx, my, mx, my);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let j = ny * w + nx;
                    if !seen[j] && self.data[j] >= threshold {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        Some((x0, y0, x1 + 1, y1 + 1))
    }
}

/// Bilinear source of output index `i` at scale `in / out` along an axis of `n` input pixels:
/// the two neighbours and the weight of the second (PyTorch's `area_pixel_compute_source_index`
/// with `align_corners=False`, then `guard_index_and_lambda`).
#[inline]
fn source(i: usize, scale: f32, n: usize) -> (usize, usize, f32) {
    let s = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
    neighbours(s, n)
}

/// The two source indices around coordinate `s` (clamped to `0..n`) and the weight of the second.
fn neighbours(s: f32, n: usize) -> (usize, usize, f32) {
    let s = s.max(0.0);
    let i0 = (s as usize).min(n - 1);
    let i1 = (i0 + 1).min(n - 1);
    (i0, i1, (s - i0 as f32).clamp(0.0, 1.0))
}

/// Where a bilinear resize reads output index `i` from, along one axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resample {
    /// PyTorch's `align_corners=False`: source `(i + 0.5) * in / out - 0.5`, each cell taken as
    /// an area of the output (right for pixels; PatchCore resizes its maps this way).
    HalfPixel,
    /// Source `scale * i + shift`: a grid whose cells are centred on known output positions
    /// (`crate::model::graph::Placement`).
    Affine { scale: f32, shift: f32 },
}

impl Resample {
    /// The source of output `i` when resizing `in_len` values to `out_len`: `(index, next index,
    /// weight of next)`, clamped to the source.
    pub fn source(self, i: usize, in_len: usize, out_len: usize) -> (usize, usize, f32) {
        match self {
            Resample::HalfPixel => source(i, in_len as f32 / out_len as f32, in_len),
            Resample::Affine { scale, shift } => neighbours(i as f32 * scale + shift, in_len),
        }
    }
}

/// One axis of [`Smooth`]: each output index's source weights (blur after bilinear resample),
/// as a band `first..first + len` of the source (the weights outside are exactly zero).
#[derive(Debug, Clone, Default)]
struct Axis {
    /// Per output index: the first source index and the band's length.
    band: Vec<(usize, usize)>,
    /// The bands' weights, one after the other.
    weights: Vec<f32>,
    /// Where each output index's weights start in `weights`.
    start: Vec<usize>,
}

impl Axis {
    /// The `out_len x in_len` matrix of "resample `in_len` values to `out_len` by `how`, then
    /// blur with `kernel` (half kernel, centre first; reflected borders)", computed in f64.
    fn new(in_len: usize, out_len: usize, how: Resample, kernel: &[f64]) -> Self {
        let mut up = vec![0f64; out_len * in_len];
        for o in 0..out_len {
            let (i0, i1, l) = how.source(o, in_len, out_len);
            up[o * in_len + i0] += 1.0 - f64::from(l);
            up[o * in_len + i1] += f64::from(l);
        }
        let r = kernel.len() as isize - 1;
        let mut band = Vec::with_capacity(out_len);
        let (mut weights, mut start) = (Vec::new(), Vec::with_capacity(out_len));
        let mut row = vec![0f64; in_len];
        for o in 0..out_len {
            row.iter_mut().for_each(|v| *v = 0.0);
            for k in -r..=r {
                let src = reflect(o as isize + k, out_len);
                let w = kernel[k.unsigned_abs()];
                for (v, &u) in row.iter_mut().zip(&up[src * in_len..(src + 1) * in_len]) {
                    *v += w * u;
                }
            }
            let first = row.iter().position(|&v| v != 0.0).unwrap_or(0);
            let last = row.iter().rposition(|&v| v != 0.0).unwrap_or(0);
            start.push(weights.len());
            band.push((first, last + 1 - first));
            weights.extend(row[first..=last].iter().map(|&v| v as f32));
        }
        Self {
            band,
            weights,
            start,
        }
    }

    fn weights(&self, o: usize) -> (usize, &[f32]) {
        let (first, len) = self.band[o];
        (first, &self.weights[self.start[o]..self.start[o] + len])
    }
}

/// [`Map::resample_into`] followed by [`Map::gaussian_blur_in_place`], as one precomputed linear
/// map per axis: `out = Y * src * X^T`, where `X` (`out_w x in_w`) and `Y` (`out_h x in_h`) are
/// each axis's resample matrix with the blur applied to it. Both steps are linear and separable,
/// so this is the same map (up to f32 rounding: the weights are summed in f64) for a fraction of
/// the work: the patch scorer's 28x28 grid to 224x224 with sigma 4 costs 28 x 28 x 40 + 224 x 6
/// x 224 multiply-adds instead of a 224x224 map blurred by 33 taps twice.
#[derive(Debug, Clone)]
pub struct Smooth {
    in_w: usize,
    in_h: usize,
    out_w: usize,
    out_h: usize,
    x: Axis,
    y: Axis,
    /// The source resampled along x: `in_h x out_w`.
    tmp: Vec<f32>,
}

impl Smooth {
    /// Resample an `in_w x in_h` map to `out_w x out_h` (sources by `x` and `y`), then smooth it
    /// with `sigma` as [`Map::gaussian_blur_into`] (`sigma <= 0` or NaN: no smoothing).
    ///
    /// # Panics
    /// When a size is 0 or `sigma` is infinite.
    pub fn new(
        (in_w, in_h): (usize, usize),
        (out_w, out_h): (usize, usize),
        x: Resample,
        y: Resample,
        sigma: f32,
    ) -> Self {
        assert!(
            in_w * in_h * out_w * out_h > 0,
            "cannot resample {in_w}x{in_h} to {out_w}x{out_h}"
        );
        let kernel = if sigma.is_nan() || sigma <= 0.0 {
            vec![1.0]
        } else {
            let mut k = vec![0f64; gaussian_radius(sigma) + 1];
            gaussian_half_kernel(sigma, &mut k, |w| w);
            k
        };
        Self {
            in_w,
            in_h,
            out_w,
            out_h,
            x: Axis::new(in_w, out_w, x, &kernel),
            y: Axis::new(in_h, out_h, y, &kernel),
            tmp: vec![0f32; in_h * out_w],
        }
    }

    /// `src` resampled and smoothed into `out` (reshaped to the output size). Allocates nothing.
    ///
    /// # Panics
    /// When `src` is not `in_w x in_h`.
    pub fn apply(&mut self, src: &Map, out: &mut Map) {
        assert_eq!(
            (src.w, src.h, src.data.len()),
            (self.in_w, self.in_h, self.in_w * self.in_h),
            "source map of the wrong size"
        );
        out.reshape(self.out_w, self.out_h);
        // Along x: each source row into `out_w` values, output column by output column (each
        // reads a few neighbouring source values).
        for (t, s) in self
            .tmp
            .chunks_exact_mut(self.out_w)
            .zip(src.data.chunks_exact(self.in_w))
        {
            for (o, v) in t.iter_mut().enumerate() {
                let (first, w) = self.x.weights(o);
                *v = w.iter().zip(&s[first..]).map(|(a, b)| a * b).sum();
            }
        }
        // Along y: each output row a weighted sum of a few whole rows (contiguous, vectorised).
        for (o, row) in out.data.chunks_exact_mut(self.out_w).enumerate() {
            let (first, w) = self.y.weights(o);
            row.iter_mut().for_each(|v| *v = 0.0);
            for (&a, t) in w
                .iter()
                .zip(self.tmp[first * self.out_w..].chunks_exact(self.out_w))
            {
                for (v, &b) in row.iter_mut().zip(t) {
                    *v += a * b;
                }
            }
        }
    }
}

/// Kernel radius as scipy computes it for `truncate = 4.0`: `int(4 * sigma + 0.5)`.
pub fn gaussian_radius(sigma: f32) -> usize {
    assert!(
        sigma.is_finite(),
        "Gaussian sigma must be finite, got {sigma}"
    );
    (4.0 * f64::from(sigma.max(0.0)) + 0.5) as usize
}

/// Splits `scratch` into the half kernel (`radius + 1` weights, centre first), a padded row
/// (`w + 2 * radius`) and the intermediate map (`w * h`), filling in the kernel.
fn blur_buffers(
    sigma: f32,
    w: usize,
    h: usize,
    scratch: &mut Vec<f32>,
) -> (&[f32], &mut [f32], &mut [f32]) {
    let r = gaussian_radius(sigma);
    let need = (r + 1) + (w + 2 * r) + w * h;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (kernel, rest) = scratch.split_at_mut(r + 1);
    let (pad, rest) = rest.split_at_mut(w + 2 * r);
    gaussian_half_kernel(sigma, kernel, |w| w as f32);
    (kernel, pad, &mut rest[..w * h])
}

/// scipy's _gaussian_kernel1d: `exp(-x^2 / (2 sigma^2))` over `-r..=r` (`r = out.len() - 1`),
/// normalised in f64; `out[x]` gets weight `x` (centre first) through `cast`. Two passes rather
/// than a temporary, so that a warm scratch means no allocation.
fn gaussian_half_kernel<T>(sigma: f32, out: &mut [T], cast: impl Fn(f64) -> T) {
    let r = out.len() - 1;
    let s2 = f64::from(sigma) * f64::from(sigma);
    let phi = |x: usize| (-0.5 / s2 * (x * x) as f64).exp();
    let sum = 1.0 + 2.0 * (1..=r).map(phi).sum::<f64>();
    out.iter_mut()
        .enumerate()
        .for_each(|(x, k)| *k = cast(phi(x) / sum));
}

/// Index `i` (may be outside `0..n`) reflected into `0..n` as scipy's mode "reflect"
/// (`d c b a | a b c d | d c b a`, period `2n`).
#[inline]
fn reflect(i: isize, n: usize) -> usize {
    let n2 = 2 * n as isize;
    let m = i.rem_euclid(n2) as usize;
    if m < n { m } else { 2 * n - 1 - m }
}

/// Each row of `src` (`w` wide) convolved with the symmetric kernel into `dst`, through `pad`.
fn blur_rows(src: &[f32], w: usize, kernel: &[f32], pad: &mut [f32], dst: &mut [f32]) {
    let r = kernel.len() - 1;
    for (row, out) in src.chunks_exact(w).zip(dst.chunks_exact_mut(w)) {
        pad[r..r + w].copy_from_slice(row);
        for j in 0..r {
            pad[j] = row[reflect(j as isize - r as isize, w)];
            pad[r + w + j] = row[reflect((w + j) as isize, w)];
        }
        // Tap by tap over the whole row (contiguous, vectorisable), centre first then the pairs
        // at distance k = 1..=r, the same order of sums as the column pass.
        out.iter_mut()
            .zip(&pad[r..r + w])
            .for_each(|(o, &c)| *o = kernel[0] * c);
        for k in 1..=r {
            let (a, b) = (&pad[r - k..r - k + w], &pad[r + k..r + k + w]);
            let wk = kernel[k];
            for ((o, &u), &d) in out.iter_mut().zip(a).zip(b) {
                *o += wk * (u + d);
            }
        }
    }
}

/// Each column of `src` (`w` x `h`) convolved with the symmetric kernel into `dst`, a whole row
/// at a time so that the inner loop runs over contiguous memory.
fn blur_columns(src: &[f32], w: usize, h: usize, kernel: &[f32], dst: &mut [f32]) {
    let r = kernel.len() - 1;
    for (y, out) in dst.chunks_exact_mut(w).enumerate() {
        let centre = &src[y * w..(y + 1) * w];
        out.iter_mut()
            .zip(centre)
            .for_each(|(o, &c)| *o = kernel[0] * c);
        for k in 1..=r {
            let up = reflect(y as isize - k as isize, h);
            let down = reflect((y + k) as isize, h);
            let (a, b) = (&src[up * w..(up + 1) * w], &src[down * w..(down + 1) * w]);
            let wk = kernel[k];
            for ((o, &u), &d) in out.iter_mut().zip(a).zip(b) {
                *o += wk * (u + d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const REFERENCE: &str = include_str!("../../tests/data/score_map_reference.json");

    fn reference(section: &str) -> Value {
        let v: Value = serde_json::from_str(REFERENCE).expect("reference JSON");
        v[section].clone()
    }

    fn floats(v: &Value) -> Vec<f32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect()
    }

    fn dim(v: &Value, k: &str) -> usize {
        v[k].as_u64().expect(k) as usize
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, expected {w}");
        }
    }

    #[test]
    fn resize_matches_pytorch_by_hand() {
        // F.interpolate([[1, 2], [3, 4]], scale_factor=2, mode="bilinear", align_corners=False):
        // sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (upper neighbour clamped).
        let m = Map::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let up = m.resize_bilinear(4, 4);
        #[rustfmt::skip]
        let want = [
            1.0, 1.25, 1.75, 2.0,
            1.5, 1.75, 2.25, 2.5,
            2.5, 2.75, 3.25, 3.5,
            3.0, 3.25, 3.75, 4.0,
        ];
        assert_eq!(up.data, want);
        // Halving: sources 0.5 and 2.5, the mean of each pair.
        let row = Map::from_vec(4, 1, vec![0.0, 2.0, 4.0, 10.0]).unwrap();
        assert_eq!(row.resize_bilinear(2, 1).data, [1.0, 7.0]);
        // Same size is the identity.
        assert_eq!(m.resize_bilinear(2, 2), m);
    }

    #[test]
    fn resize_matches_skimage_reference() {
        for c in reference("resize").as_array().unwrap() {
            let m = Map::from_vec(dim(c, "w"), dim(c, "h"), floats(&c["input"])).unwrap();
            let (ow, oh) = (dim(c, "out_w"), dim(c, "out_h"));
            let got = m.resize_bilinear(ow, oh);
            let what = format!("{}x{} -> {ow}x{oh}", m.w, m.h);
            assert_close(&got.data, &floats(&c["expected"]), 1e-6, &what);
        }
    }

    #[test]
    fn blur_matches_scipy_reference() {
        let mut scratch = Vec::new();
        for c in reference("blur").as_array().unwrap() {
            let m = Map::from_vec(dim(c, "w"), dim(c, "h"), floats(&c["input"])).unwrap();
            let sigma = c["sigma"].as_f64().unwrap() as f32;
            assert_eq!(
                gaussian_radius(sigma),
                dim(c, "radius"),
                "radius of sigma {sigma}"
            );
            let want = floats(&c["expected"]);
            let what = format!("{}x{} sigma {sigma}", m.w, m.h);
            assert_close(&m.gaussian_blur(sigma).data, &want, 2e-6, &what);
            let mut inplace = m.clone();
            inplace.gaussian_blur_in_place(sigma, &mut scratch);
            assert_close(&inplace.data, &want, 2e-6, &what);
        }
    }

    #[test]
    fn blur_keeps_constants_and_mass_and_copies_at_zero_sigma() {
        let c = Map::filled(7, 5, 3.5).gaussian_blur(1.7);
        assert!(
            c.data.iter().all(|v| (v - 3.5).abs() < 1e-5),
            "{:?}",
            c.data
        );
        // Reflection keeps the sum of an impulse far from the border.
        let mut m = Map::new(40, 40);
        m.set(20, 20, 1.0);
        let b = m.gaussian_blur(2.0);
        assert!((b.data.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(b.max().1, (20, 20));
        assert_eq!(b.get(18, 20), b.get(22, 20));
        assert_eq!(b.get(20, 17), b.get(17, 20));
        assert_eq!(m.gaussian_blur(0.0), m);
        assert_eq!(m.gaussian_blur(-1.0), m);
        assert_eq!(m.gaussian_blur(f32::NAN), m);
        // scipy rounds 4 sigma: 1.3 -> 5 (not ceil's 6), 0.6 -> 2, 4 -> 16.
        assert_eq!([1.3, 0.6, 4.0, 0.1].map(gaussian_radius), [5, 2, 16, 0]);
    }

    #[test]
    fn smooth_is_resample_then_blur() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut next = move || rng.random_range(0.0f32..1.0);
        let affine = Resample::Affine {
            scale: 0.125,
            shift: 0.0,
        };
        let cases = [
            // The patch scorer's shapes: a 28x28 grid to 224x224, both placements.
            ((28, 28), (224, 224), Resample::HalfPixel, 4.0),
            ((28, 28), (224, 224), affine, 4.0),
            // Non-square, a kernel wider than the map (reflected more than once), no blur,
            // an odd scale, a single cell and a downsample.
            ((5, 3), (40, 24), affine, 2.5),
            ((4, 4), (9, 7), Resample::HalfPixel, 6.0),
            ((7, 6), (56, 48), Resample::HalfPixel, 0.0),
            ((3, 5), (17, 23), Resample::HalfPixel, f32::NAN),
            ((1, 1), (8, 8), Resample::HalfPixel, 1.0),
            ((16, 12), (8, 6), Resample::HalfPixel, 1.3),
        ];
        let mut out = Map::default();
        for ((iw, ih), (ow, oh), how, sigma) in cases {
            let src = Map::from_vec(iw, ih, (0..iw * ih).map(|_| next()).collect()).unwrap();
            let mut want = Map::new(ow, oh);
            src.resample_into(&mut want, how, how);
            let want = want.gaussian_blur(sigma);
            let mut op = Smooth::new((iw, ih), (ow, oh), how, how, sigma);
            op.apply(&src, &mut out);
            assert_eq!((out.w, out.h), (ow, oh));
            let what = format!("{iw}x{ih} -> {ow}x{oh} ({how:?}, sigma {sigma})");
            assert_close(&out.data, &want.data, 2e-6, &what);
            // Again into the same buffer: the same values.
            let first = out.data.clone();
            op.apply(&src, &mut out);
            assert_eq!(out.data, first, "{what}: second frame");
        }
        // A constant stays constant; an impulse keeps its mass.
        let mut op = Smooth::new((6, 6), (48, 48), affine, affine, 4.0);
        op.apply(&Map::filled(6, 6, 2.5), &mut out);
        assert!(out.data.iter().all(|v| (v - 2.5).abs() < 1e-5));
    }

    #[test]
    fn reflect_is_scipys_reflect() {
        // d c b a | a b c d | d c b a, then again.
        let got: Vec<usize> = (-6..10).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, [2, 3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0, 1]);
        assert!((-5..5).all(|i| reflect(i, 1) == 0));
    }

    #[test]
    fn max_and_hottest_box() {
        #[rustfmt::skip]
        let m = Map::from_vec(6, 5, vec![
            0.0, 0.0, 0.0, 0.0, 0.0, 0.9,
            0.0, 0.6, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 1.0, 0.7, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.8, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ]).unwrap();
        assert_eq!(m.max(), (1.0, (2, 2)));
        // 0.6 and 0.8 join the maximum only diagonally (8-connectivity); 0.9 is a separate region.
        assert_eq!(m.box_of_hottest(0.5), Some((1, 1, 5, 4)));
        assert_eq!(m.box_of_hottest(0.75), Some((2, 2, 3, 3)));
        assert_eq!(m.box_of_hottest(1.0), Some((2, 2, 3, 3)));
        assert_eq!(m.box_of_hottest(1.01), None);
        assert_eq!(m.box_of_hottest(f32::NAN), None);
        assert_eq!(m.box_of_hottest(-1.0), Some((0, 0, 6, 5)));
        assert_eq!(Map::new(0, 0).box_of_hottest(0.0), None);
        assert_eq!(Map::new(0, 3).box_of_hottest(f32::NEG_INFINITY), None);
        // Ties: the first maximum in row-major order; NaN skipped.
        let t = Map::from_vec(3, 1, vec![f32::NAN, 2.0, 2.0]).unwrap();
        assert_eq!(t.max(), (2.0, (1, 0)));
        assert_eq!(t.min_max(), (2.0, 2.0));
    }

    #[test]
    fn into_forms_reuse_buffers() {
        let src = Map::from_vec(3, 2, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let mut out = Map::new(12, 8);
        let ptr = out.data.as_ptr();
        src.resize_bilinear_into(&mut out);
        let mut scratch = Vec::new();
        out.gaussian_blur_in_place(1.0, &mut scratch);
        let cap = scratch.capacity();
        out.gaussian_blur_in_place(1.0, &mut scratch);
        assert_eq!((out.data.as_ptr(), scratch.capacity()), (ptr, cap));
        let mut blurred = Map::default();
        src.resize_bilinear(12, 8)
            .gaussian_blur_into(1.0, &mut blurred, &mut scratch);
        let twice = src
            .resize_bilinear(12, 8)
            .gaussian_blur(1.0)
            .gaussian_blur(1.0);
        assert_close(&out.data, &twice.data, 1e-6, "in place vs allocating");
        assert_eq!(blurred, src.resize_bilinear(12, 8).gaussian_blur(1.0));
    }
}

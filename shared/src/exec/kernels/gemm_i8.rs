//! int8 GEMM with the fused epilogue: `out[i][j] = ep.apply(sum_k a_u8[i][k] * w_i8[j][k], i, j)`,
//! the convolutions of the int8 executor after im2col (M = output pixels, N = output channels,
//! K = c_in * kh * kw). The left operand `a` (activations, u8) is read in place, row-major with
//! stride `lda`; the right operand (weights, i8) is packed once per ISA when a bundle loads
//! ([`PackedI8`]). The i32 accumulators are exact on every path (|w| <= 127, k <= [`MAX_K`]), and
//! every path applies the epilogue with the same f32 operations as [`Epilogue::apply`]
//! (convert, multiply, add, residual, clamp; no fused multiply-add), so all ISAs give the same
//! bits as the scalar reference (up to the sign of a clamped zero, which `f32::max` leaves open).
//!
//! # Layout
//! K is padded to `k_padded = round_up(k, 4)` with zero weights (the A rows must provide
//! `k_padded` bytes; the bytes past `k` are read and meet zeros). The N output channels are cut
//! into panels of `nr` channels (the last one narrower: the remainder rounded up to the ISA's
//! vector width, `lanes`); panel `p` starts at element `p * nr * k_padded` and holds its `wp`
//! channels for all of K in one of four layouts:
//!
//! | ISA                | elem | element (kk, l) of a panel (kk = 4g + q)   | mr x nr | lanes |
//! |--------------------|------|-------------------------------------------|---------|-------|
//! | Portable           | i8   | `kk * 16 + l`                              | 4 x 16  | 16    |
//! | Avx2               | i16  | `g*4wp + (l/8)*32 + (q%2)*16 + (l%8)*2 + q/2` | 4 x 16 | 8  |
//! | Avx512 (no VNNI)   | i16  | `g*4wp + (l/16)*64 + (q%2)*32 + (l%16)*2 + q/2` | 7 x 48 | 16 |
//! | Avx512Vnni         | i8   | `g*4wp + l*4 + q`                          | 7 x 48  | 16    |
//! | Neon               | i16  | `kk * wp + l`                              | 4 x 16  | 8     |
//! | NeonDot            | i8   | `g*4wp + l*4 + q`                          | 8 x 8   | 4     |
//!
//! So one vector register holds `lanes` channels x 4 k-values (Vnni: `vpdpbusd` against a broadcast
//! of 4 bytes of an A row; NeonDot: `sdot` by element against 16 bytes of an A row); Avx2/Avx512
//! hold the even (k = 4g, 4g+2) and odd (4g+1, 4g+3) pairs as i16 in two registers and multiply
//! them with `vpmaddwd` against the even/odd bytes of the broadcast A (exact: 2 * 255 * 127 fits
//! i32; `vpmaddubsw` would saturate at i16); Neon widens both to i16 and uses `smlal` by element.
//! NeonDot runs `sdot` (signed x signed) on `a ^ 0x80 = a - 128` and starts its accumulators at
//! `128 * col_sum[j]`, which gives back the exact u8 x i8 sum.
//!
//! # Blocking
//! Each thread's rectangle ([`parallel::for_each_tile`], cut on `mr` rows and `nr` columns) is
//! walked in blocks of `mc` rows (about [`A_BLOCK_BYTES`] of A, kept in L2 while every panel of
//! the rectangle passes over it), then panel by panel, then `mr` rows at a time: the microkernel
//! keeps `mr x wp` i32 accumulators in registers over all of K, applies the epilogue and stores
//! (masked at the last columns; rows past `m` get a smaller-`mr` kernel, so no access leaves the
//! slices). No K blocking: the largest panel (48 x 4608 bytes) streams from L2.
//!
//! # Speed
//! Measured with `cargo bench -p firm-shared --bench kernels` (2-core Zen 4, one thread); see
//! the table in that bench's header.

use std::ops::Range;

use super::Epilogue;
use super::Isa;
use super::parallel::{SharedOut, for_each_tile};

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
mod portable;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// The largest K whose accumulators are exact in i32 for any u8 x i8 inputs with |w| <= 127:
/// `2 * MAX_K * 255 * 127 <= i32::MAX`: the accumulators start at the column correction (at
/// most `255 * 127 * k` in magnitude) and add at most as much.
pub const MAX_K: usize = i32::MAX as usize / (2 * 255 * 127);

/// Rows of A one block should hold (the block stays in L2 while the panels pass over it).
pub(crate) const A_BLOCK_BYTES: usize = 192 * 1024;

/// How an ISA's kernel is shaped: `mr` rows x up to `nr` columns per microkernel, panel widths
/// in multiples of `lanes`, elements of `elem` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub mr: usize,
    pub nr: usize,
    pub lanes: usize,
    pub elem: usize,
}

impl Geometry {
    /// Width of the panel that starts at channel `j0` (a multiple of `nr`) of `n`.
    pub fn panel_width(&self, j0: usize, n: usize) -> usize {
        (n - j0).min(self.nr).next_multiple_of(self.lanes)
    }
}

fn geometry(isa: Isa) -> Geometry {
    match isa {
        Isa::Portable => portable::GEOMETRY,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::AVX2_GEOMETRY,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::BW_GEOMETRY,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::VNNI_GEOMETRY,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => aarch64::WIDE_GEOMETRY,
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => aarch64::DOT_GEOMETRY,
        #[allow(unreachable_patterns)]
        other => unreachable!("{other} is not an ISA of this target (checked by is_supported)"),
    }
}

/// One cache line; [`PanelBuf`] is made of them so that every panel vector is 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// Element types a [`PanelBuf`] may be viewed as: every bit pattern valid, alignment <= 64.
pub(crate) trait PanelElem: Copy + Default {}
impl PanelElem for i8 {}
impl PanelElem for i16 {}
impl PanelElem for f32 {}

/// Packed panels in 64-byte aligned storage (allocated once, at packing).
#[derive(Clone)]
pub(crate) struct PanelBuf {
    lines: Vec<Line>,
}

impl PanelBuf {
    pub fn zeroed(bytes: usize) -> Self {
        Self {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
        }
    }

    /// The buffer as `T`s, for filling it.
    pub fn as_mut_slice<T: PanelElem>(&mut self) -> &mut [T] {
        let len = self.lines.len() * 64 / size_of::<T>();
        // SAFETY: `lines` owns `len * size_of::<T>()` initialised bytes, aligned to 64 >=
        // align_of::<T>(), and every bit pattern is a valid `T` (the `PanelElem` contract).
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), len) }
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.lines.as_ptr().cast()
    }
}

/// The weights of one convolution as the right operand: n output channels x k inputs, packed for
/// one ISA (layouts in the module header).
#[derive(Clone)]
pub struct PackedI8 {
    isa: Isa,
    n: usize,
    k: usize,
    k_padded: usize,
    geo: Geometry,
    col_sums: Vec<i32>,
    /// Where every accumulator starts, per column, zero-padded to whole panels: `-zp * col_sums`
    /// (the input's zero point, so the kernels sum `(a - zp) * w` exactly), plus `128 *
    /// col_sums` on NeonDot (its activations are sign-flipped to i8).
    col_fix: Vec<i32>,
    data: PanelBuf,
}

impl std::fmt::Debug for PackedI8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedI8")
            .field("isa", &self.isa)
            .field("n", &self.n)
            .field("k", &self.k)
            .field("k_padded", &self.k_padded)
            .field("geometry", &self.geo)
            .finish_non_exhaustive()
    }
}

impl PackedI8 {
    /// `w`: row-major [n][k], values in [-127, 127].
    ///
    /// Panics if `w.len() != n * k`, a value is -128, `k > MAX_K`, or this CPU cannot run `isa`.
    pub fn new(isa: Isa, w: &[i8], n: usize, k: usize) -> Self {
        Self::with_zero_point(isa, w, n, k, 0)
    }

    /// [`Self::new`] for an A operand with zero point `zp`: [`gemm_u8i8`] then computes
    /// `sum_k (a - zp) * w` (exact), the integer the int8 semantics of [`crate::quant`] define.
    pub fn with_zero_point(isa: Isa, w: &[i8], n: usize, k: usize, zp: u8) -> Self {
        assert!(
            w.len() == n * k,
            "PackedI8::new: w has {} values, expected n * k = {n} * {k} = {}",
            w.len(),
            n * k
        );
        assert!(
            k <= MAX_K,
            "PackedI8::new: k = {k} > {MAX_K}, the i32 accumulators would overflow"
        );
        if let Some(at) = w.iter().position(|&v| v == i8::MIN) {
            panic!("PackedI8::new: w[{at}] = -128, weights must lie in [-127, 127]");
        }
        assert!(isa.runs_here(), "PackedI8::new: this CPU cannot run {isa}");
        let geo = geometry(isa);
        let k_padded = k.next_multiple_of(4);
        let col_sums: Vec<i32> = (0..n)
            .map(|j| w[j * k..(j + 1) * k].iter().map(|&v| i32::from(v)).sum())
            .collect();
        let panels = n.div_ceil(geo.nr);
        let flip = if isa == Isa::NeonDot { 128 } else { 0 };
        let mut col_fix = vec![0i32; panels * geo.nr];
        for (f, &s) in col_fix.iter_mut().zip(&col_sums) {
            *f = (flip - i32::from(zp)) * s;
        }
        // Elements: all panels but the last are nr wide; the last is panel_width(..) wide.
        let elems = if n == 0 {
            0
        } else {
            let last = (panels - 1) * geo.nr;
            (last + geo.panel_width(last, n)) * k_padded
        };
        let mut data = PanelBuf::zeroed(elems * geo.elem);
        for p in 0..panels {
            let j0 = p * geo.nr;
            let wp = geo.panel_width(j0, n);
            let base = j0 * k_padded;
            let cols = j0..(j0 + geo.nr).min(n);
            // index(l, kk): where w[j0 + l][kk] goes inside the panel.
            match isa {
                Isa::Portable => fill::<i8>(&mut data, w, k, cols, base, |l, kk| kk * wp + l),
                Isa::Neon => fill::<i16>(&mut data, w, k, cols, base, |l, kk| kk * wp + l),
                Isa::Avx512Vnni | Isa::NeonDot => {
                    fill::<i8>(&mut data, w, k, cols, base, |l, kk| {
                        (kk / 4) * 4 * wp + l * 4 + kk % 4
                    })
                }
                Isa::Avx2 | Isa::Avx512 => {
                    let lanes = geo.lanes;
                    fill::<i16>(&mut data, w, k, cols, base, |l, kk| {
                        let (g, q) = (kk / 4, kk % 4);
                        g * 4 * wp
                            + (l / lanes) * 4 * lanes
                            + (q % 2) * 2 * lanes
                            + (l % lanes) * 2
                            + q / 2
                    })
                }
            }
        }
        Self {
            isa,
            n,
            k,
            k_padded,
            geo,
            col_sums,
            col_fix,
            data,
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Row length the A operand must provide (>= k; bytes k..k_padded of each A row are read but
    /// meet zero weights). `round_up(k, 4)` on every ISA.
    pub fn k_padded(&self) -> usize {
        self.k_padded
    }

    /// sum_k w[j][k] per output channel (the exporter folds the activation zero point with it).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }
}

/// Writes the weights of channels `cols` (w row-major [n][k]) into the panel at element `base`.
fn fill<T: PanelElem + From<i8>>(
    data: &mut PanelBuf,
    w: &[i8],
    k: usize,
    cols: Range<usize>,
    base: usize,
    index: impl Fn(usize, usize) -> usize,
) {
    let dst = &mut data.as_mut_slice::<T>()[base..];
    let j0 = cols.start;
    for j in cols {
        for kk in 0..k {
            dst[index(j - j0, kk)] = T::from(w[j * k + kk]);
        }
    }
}

/// The epilogue as raw pointers, for SIMD loads (valid for the call that made it; every index
/// a kernel forms was checked by [`Epilogue::check`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EpRaw {
    /// Null when the scale is absent (1).
    pub scale: *const f32,
    pub bias: *const f32,
    /// Null when there is no residual.
    pub res: *const f32,
    pub res_ld: usize,
    pub res_before: bool,
    pub lo: f32,
    pub hi: f32,
}

impl EpRaw {
    pub fn new(ep: &Epilogue<'_>) -> Self {
        Self {
            scale: ep.scale.map_or(std::ptr::null(), <[f32]>::as_ptr),
            bias: ep.bias.as_ptr(),
            res: ep.residual.map_or(std::ptr::null(), |r| r.data.as_ptr()),
            res_ld: ep.residual.map_or(0, |r| r.ld),
            res_before: ep.residual.is_some_and(|r| r.before_clamp),
            lo: ep.clamp.lo,
            hi: ep.clamp.hi,
        }
    }
}

/// What a microkernel needs, as raw pointers: A at row 0, the packed panels, the output at
/// (0, 0). `T` is the A element (u8 here, f32 for [`super::gemm_f32`]).
#[derive(Debug)]
pub(crate) struct Raw<'a, T> {
    pub a: *const T,
    pub lda: usize,
    /// Packed panels (bytes); panel of channel j0 at element `j0 * kp`.
    pub b: *const u8,
    /// Row length of the packed panels (k_padded for int8, k for f32).
    pub kp: usize,
    pub n: usize,
    pub geo: Geometry,
    pub ep: &'a Epilogue<'a>,
    pub epr: EpRaw,
    pub out: *mut f32,
    pub ldc: usize,
    /// NeonDot: `128 * col_sum`, padded to whole panels; null elsewhere.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub col_fix: *const i32,
}

impl<T> Raw<'_, T> {
    /// The panel holding channel `j0` (a multiple of `nr`), as `E`s.
    ///
    /// # Safety
    /// `j0 < n`, and `E` is the element type of the packing.
    pub unsafe fn panel<E>(&self, j0: usize) -> *const E {
        // SAFETY: panels before j0's are nr wide, so it starts at element j0 * kp < the buffer.
        unsafe { self.b.add(j0 * self.kp * self.geo.elem).cast() }
    }
}

/// A microkernel: rows `i0..i0 + rows` (rows <= mr) x columns `j0..j0 + width` (j0 a multiple of
/// nr, width <= nr, j0 + width <= n).
///
/// # Safety
/// The indices lie in the checked ranges of the call that made `Raw`, the output elements are
/// written by no one else, and the CPU supports the kernel's ISA.
pub(crate) type Micro<T> = unsafe fn(&Raw<'_, T>, usize, usize, usize, usize);

/// Visits the microtiles of one thread's rectangle: blocks of `mc` rows, then panels, then `mr`
/// rows. `cols.start` is a multiple of `nr`.
pub(crate) fn for_each_micro(
    rows: Range<usize>,
    cols: Range<usize>,
    geo: Geometry,
    mc: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let mut ic = rows.start;
    while ic < rows.end {
        let ie = (ic + mc).min(rows.end);
        let mut j0 = cols.start;
        while j0 < cols.end {
            let width = geo.nr.min(cols.end - j0);
            let mut i = ic;
            while i < ie {
                let h = geo.mr.min(ie - i);
                f(i, h, j0, width);
                i += h;
            }
            j0 += width;
        }
        ic = ie;
    }
}

/// Rows per A block for rows of `row_bytes`: about `A_BLOCK_BYTES`, a multiple of `mr`.
pub(crate) fn block_rows(row_bytes: usize, mr: usize) -> usize {
    (A_BLOCK_BYTES / row_bytes.max(1) / mr).max(1) * mr
}

/// Runs `micro` over the grid `m x n` split over `threads` (shared by both GEMM families).
pub(crate) fn run_tiles<T: Sync>(raw: &Raw<'_, T>, m: usize, micro: Micro<T>, threads: usize) {
    let geo = raw.geo;
    let mc = block_rows(raw.lda * size_of::<T>(), geo.mr);
    let job = RawRef(raw);
    for_each_tile(m, raw.n, geo.mr, geo.nr, threads, &|rows, cols| {
        let raw = job.get();
        for_each_micro(rows, cols, geo, mc, |i, h, j0, w| {
            // SAFETY: for_each_tile hands out disjoint rectangles inside m x n whose column
            // starts are multiples of nr; for_each_micro stays inside its rectangle; the caller
            // checked the slices for m x n and the ISA when the weights were packed.
            unsafe { micro(raw, i, h, j0, w) }
        });
    });
}

/// `&Raw` shared by the tiles of one call.
struct RawRef<'r, 'a, T>(&'r Raw<'a, T>);

// SAFETY: the pointers in `Raw` come from slices borrowed for the whole call: A, the panels and
// the epilogue are only read, and the tiles write disjoint output elements (`SharedOut`'s
// contract, upheld by `for_each_tile`).
unsafe impl<T: Sync> Sync for RawRef<'_, '_, T> {}

impl<'r, 'a, T> RawRef<'r, 'a, T> {
    fn get(&self) -> &'r Raw<'a, T> {
        self.0
    }
}

/// out[i*ldc + j] = ep.apply(acc_ij as f32, i, j) for i < m, j < n, where
/// acc_ij = sum_{kk < k} (a[i*lda + kk] as i32) * (w[j][kk] as i32), exact in i32.
/// Requires lda >= b.k_padded(), a.len() >= (m-1)*lda + b.k_padded(), out.len() >= (m-1)*ldc + n,
/// ldc >= n. Splits over `threads` with parallel::for_each_tile. Allocates nothing.
pub fn gemm_u8i8(
    a: &[u8],
    lda: usize,
    m: usize,
    b: &PackedI8,
    ep: &Epilogue,
    out: &mut [f32],
    ldc: usize,
    threads: usize,
) {
    let (n, kp) = (b.n, b.k_padded);
    assert!(ldc >= n, "gemm_u8i8: ldc {ldc} < n {n}");
    assert!(lda >= kp, "gemm_u8i8: lda {lda} < k_padded {kp}");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.len() >= (m - 1) * lda + kp,
        "gemm_u8i8: a has {} bytes for {m} rows of {kp} (stride {lda})",
        a.len()
    );
    assert!(
        out.len() >= (m - 1) * ldc + n,
        "gemm_u8i8: out has {} values for {m} x {n} (stride {ldc})",
        out.len()
    );
    ep.check(m, n);
    let micro: Micro<u8> = match b.isa {
        Isa::Portable => portable::micro,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::micro_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::micro_bw,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::micro_vnni,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => aarch64::micro_wide,
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => aarch64::micro_dot,
        #[allow(unreachable_patterns)]
        other => unreachable!("PackedI8 for {other} cannot exist on this target"),
    };
    let shared = SharedOut::new(out);
    let raw = Raw {
        a: a.as_ptr(),
        lda,
        b: b.data.as_ptr(),
        kp,
        n,
        geo: b.geo,
        ep,
        epr: EpRaw::new(ep),
        // SAFETY: the tiles write disjoint elements of (m-1)*ldc + n <= out.len().
        out: unsafe { shared.ptr() },
        ldc,
        col_fix: b.col_fix.as_ptr(),
    };
    run_tiles(&raw, m, micro, threads);
}

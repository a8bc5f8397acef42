//! f32 GEMM with the fused epilogue: `out[i][j] = ep.apply(sum_k a[i][k] * w[j][k], i, j)`, the
//! float path of the executor (layers kept in f32, and bundles run without int8). Same shape as
//! [`super::gemm_i8`], whose driver it shares: A read in place (row-major, stride `lda`, `k`
//! floats per row, no padding), weights packed once per ISA ([`PackedF32`]), the grid split over
//! threads with [`super::parallel::for_each_tile`], microkernels of `mr x nr` accumulators in
//! registers over all of K, then the epilogue (the same SIMD stores as int8) and a masked store.
//!
//! # Layout
//! Panels of `nr` channels (the last narrower: the remainder rounded up to `lanes`, zero-padded),
//! panel `p` at element `p * nr * k`, k-major inside: element (kk, l) at `kk * wp + l`. One k of
//! a panel is `wp / lanes` vectors; the microkernel broadcasts `a[i][kk]` and does one FMA per
//! vector (`vfmadd231ps` with the broadcast folded into the instruction on x86; `fmla` by element
//! of 4 A floats on NEON). The dot products may use FMA (the tests compare with a tolerance); the
//! epilogue is [`Epilogue::apply`]'s multiply-then-add.
//!
//! | ISA                 | mr x nr | lanes |
//! |---------------------|---------|-------|
//! | Portable            | 4 x 16  | 16    |
//! | Avx2                | 6 x 16  | 8     |
//! | Avx512, Avx512Vnni  | 7 x 48  | 16    |
//! | Neon, NeonDot       | 8 x 8   | 4     |
//!
//! # Speed
//! `cargo bench -p firm-shared --bench kernels` (figures in the bench's header).

use super::Epilogue;
use super::Isa;
use super::gemm_i8::{EpRaw, Geometry, Micro, PanelBuf, Raw, run_tiles};
use super::parallel::SharedOut;

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

fn geometry(isa: Isa) -> Geometry {
    match isa {
        Isa::Portable => portable::GEOMETRY,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::AVX2_GEOMETRY,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => x86::AVX512_GEOMETRY,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => aarch64::GEOMETRY,
        #[allow(unreachable_patterns)]
        other => unreachable!("{other} is not an ISA of this target (checked by is_supported)"),
    }
}

/// The weights of one layer as the right operand: n output channels x k inputs, packed for one
/// ISA (layout in the module header).
#[derive(Clone)]
pub struct PackedF32 {
    isa: Isa,
    n: usize,
    k: usize,
    geo: Geometry,
    data: PanelBuf,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedF32")
            .field("isa", &self.isa)
            .field("n", &self.n)
            .field("k", &self.k)
            .field("geometry", &self.geo)
            .finish_non_exhaustive()
    }
}

impl PackedF32 {
    /// `w`: row-major [n][k].
    ///
    /// Panics if `w.len() != n * k` or this CPU cannot run `isa`.
    pub fn new(isa: Isa, w: &[f32], n: usize, k: usize) -> Self {
        assert!(
            w.len() == n * k,
            "PackedF32::new: w has {} values, expected n * k = {n} * {k} = {}",
            w.len(),
            n * k
        );
        assert!(isa.runs_here(), "PackedF32::new: this CPU cannot run {isa}");
        let geo = geometry(isa);
        let panels = n.div_ceil(geo.nr);
        let elems = if n == 0 {
            0
        } else {
            let last = (panels - 1) * geo.nr;
            (last + geo.panel_width(last, n)) * k
        };
        let mut data = PanelBuf::zeroed(elems * 4);
        let dst = data.as_mut_slice::<f32>();
        for p in 0..panels {
            let j0 = p * geo.nr;
            let wp = geo.panel_width(j0, n);
            let panel = &mut dst[j0 * k..];
            for j in j0..(j0 + geo.nr).min(n) {
                for kk in 0..k {
                    panel[kk * wp + (j - j0)] = w[j * k + kk];
                }
            }
        }
        Self {
            isa,
            n,
            k,
            geo,
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
}

/// out[i*ldc + j] = ep.apply(sum_{kk < k} a[i*lda + kk] * w[j][kk], i, j) for i < m, j < n (the
/// sum in f32, with FMA where the ISA has it, in k order per lane).
/// Requires lda >= b.k(), a.len() >= (m-1)*lda + b.k(), out.len() >= (m-1)*ldc + n, ldc >= n.
/// Splits over `threads` with parallel::for_each_tile. Allocates nothing.
pub fn gemm_f32(
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedF32,
    ep: &Epilogue,
    out: &mut [f32],
    ldc: usize,
    threads: usize,
) {
    let (n, k) = (b.n, b.k);
    assert!(ldc >= n, "gemm_f32: ldc {ldc} < n {n}");
    assert!(lda >= k, "gemm_f32: lda {lda} < k {k}");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.len() >= (m - 1) * lda + k,
        "gemm_f32: a has {} values for {m} rows of {k} (stride {lda})",
        a.len()
    );
    assert!(
        out.len() >= (m - 1) * ldc + n,
        "gemm_f32: out has {} values for {m} x {n} (stride {ldc})",
        out.len()
    );
    ep.check(m, n);
    let micro: Micro<f32> = match b.isa {
        Isa::Portable => portable::micro,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::micro_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => x86::micro_avx512,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => aarch64::micro,
        #[allow(unreachable_patterns)]
        other => unreachable!("PackedF32 for {other} cannot exist on this target"),
    };
    let shared = SharedOut::new(out);
    let raw = Raw {
        a: a.as_ptr(),
        lda,
        b: b.data.as_ptr(),
        kp: k,
        n,
        geo: b.geo,
        ep,
        epr: EpRaw::new(ep),
        // SAFETY: the tiles write disjoint elements of (m-1)*ldc + n <= out.len().
        out: unsafe { shared.ptr() },
        ldc,
        col_fix: std::ptr::null(),
    };
    run_tiles(&raw, m, micro, threads);
}

//! The portable f32 microkernel: plain Rust over fixed-size arrays that LLVM vectorises for the
//! target's baseline. k-major panels 16 wide (zero-padded), `mr = 4`, the inner loop
//! `acc[r][0..16] += a[r][kk] * w[kk][0..16]` as a multiply then an add (no `mul_add`: without an
//! FMA unit that is a libm call). The epilogue is [`Epilogue::apply`] itself.
//!
//! [`Epilogue::apply`]: super::Epilogue::apply

use super::{Geometry, Raw};

pub(crate) const GEOMETRY: Geometry = Geometry {
    mr: 4,
    nr: 16,
    lanes: 16,
    elem: 4,
};

const NR: usize = 16;

/// # Safety
/// See [`super::Micro`].
pub(crate) unsafe fn micro(t: &Raw<'_, f32>, i0: usize, rows: usize, j0: usize, width: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        match rows {
            1 => kernel::<1>(t, i0, j0, width),
            2 => kernel::<2>(t, i0, j0, width),
            3 => kernel::<3>(t, i0, j0, width),
            _ => kernel::<4>(t, i0, j0, width),
        }
    }
}

/// # Safety
/// See [`super::Micro`], with `rows == MR`.
unsafe fn kernel<const MR: usize>(t: &Raw<'_, f32>, i0: usize, j0: usize, width: usize) {
    let k = t.kp;
    // SAFETY: rows i0..i0+MR exist and each provides k floats (checked by gemm_f32); the panel
    // of j0 holds 16 * k floats.
    let (a_rows, panel) = unsafe {
        let a_rows: [&[f32]; MR] =
            std::array::from_fn(|r| std::slice::from_raw_parts(t.a.add((i0 + r) * t.lda), k));
        let panel = std::slice::from_raw_parts(t.panel::<f32>(j0), NR * k);
        (a_rows, panel)
    };
    let mut acc = [[0f32; NR]; MR];
    for (kk, w) in panel.chunks_exact(NR).enumerate() {
        for r in 0..MR {
            let x = a_rows[r][kk];
            for l in 0..NR {
                acc[r][l] += x * w[l];
            }
        }
    }
    for r in 0..MR {
        let i = i0 + r;
        for l in 0..width {
            let j = j0 + l;
            // SAFETY: (i, j) lies in this tile's part of the output (see super::Micro).
            unsafe { t.out.add(i * t.ldc + j).write(t.ep.apply(acc[r][l], i, j)) };
        }
    }
}

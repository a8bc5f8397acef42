//! The portable int8 microkernel: plain Rust over fixed-size arrays that LLVM vectorises for the
//! target's baseline (SSE2 on x86-64, NEON on aarch64). Panels are k-major (element (kk, l) at
//! `kk * 16 + l`, every panel 16 wide, zero-padded), so the inner loop is
//! `acc[r][0..16] += a[r][kk] * w[kk][0..16]` on contiguous lanes; `mr = 4`. The epilogue is
//! [`Epilogue::apply`] itself, element by element.
//!
//! It is the reference the SIMD paths are compared with in speed, not the test reference (that is
//! the scalar loop in the tests); about 4-6 GMAC/s on one Zen 4 core.

use super::{Geometry, Raw};

pub(crate) const GEOMETRY: Geometry = Geometry {
    mr: 4,
    nr: 16,
    lanes: 16,
    elem: 1,
};

const NR: usize = 16;

/// # Safety
/// See [`super::Micro`].
pub(crate) unsafe fn micro(t: &Raw<'_, u8>, i0: usize, rows: usize, j0: usize, width: usize) {
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
unsafe fn kernel<const MR: usize>(t: &Raw<'_, u8>, i0: usize, j0: usize, width: usize) {
    // The loop runs over all kp = round_up(k, 4) columns: the padding weights are zero.
    let k = t.kp;
    // SAFETY: rows i0..i0+MR exist and each provides kp bytes (checked by gemm_u8i8); the panel
    // of j0 holds 16 * kp i8s.
    let (a_rows, panel) = unsafe {
        let a_rows: [&[u8]; MR] =
            std::array::from_fn(|r| std::slice::from_raw_parts(t.a.add((i0 + r) * t.lda), k));
        let panel = std::slice::from_raw_parts(t.panel::<i8>(j0), NR * t.kp);
        (a_rows, panel)
    };
    // SAFETY: col_fix holds whole panels of NR columns.
    let fix = unsafe { std::slice::from_raw_parts(t.col_fix.add(j0), NR) };
    let mut acc = [[0i32; NR]; MR];
    for row in &mut acc {
        row.copy_from_slice(fix);
    }
    for (kk, w) in panel.chunks_exact(NR).take(k).enumerate() {
        for r in 0..MR {
            let x = i32::from(a_rows[r][kk]);
            for l in 0..NR {
                acc[r][l] += x * i32::from(w[l]);
            }
        }
    }
    for r in 0..MR {
        let i = i0 + r;
        for l in 0..width {
            let j = j0 + l;
            // SAFETY: (i, j) lies in this tile's part of the output (see super::Micro).
            unsafe {
                t.out
                    .add(i * t.ldc + j)
                    .write(t.ep.apply(acc[r][l] as f32, i, j))
            };
        }
    }
}

//! Poisson image editing ("seamless cloning"): our own solver for the
//! discrete Poisson equation of Pérez, Gangnet & Blake, "Poisson Image
//! Editing", ACM SIGGRAPH 2003, with normal cloning (guidance = source
//! gradient) and mixed gradients (per-edge larger of source/destination).
//!
//! # Discretisation
//!
//! Pixels live on a `width x height` grid, index `i = y * width + x`, with
//! 4-connectivity. The unknown set Ω is every pixel with `inside[i]` that is
//! *not* on the grid's outermost ring (see below). For `p ∈ Ω` the equation
//! (Pérez eq. 7, with |N_p| = 4) is
//!
//! ```text
//! 4 u_p - Σ_{q ∈ N_p ∩ Ω} u_q = Σ_{q ∈ N_p \ Ω} boundary_q + Σ_{q ∈ N_p} v_pq
//! ```
//!
//! The guidance field is stored per edge as forward differences:
//! `guidance_x[i]` lives on the edge from `(x, y)` to `(x + 1, y)` and
//! `guidance_y[i]` on the edge from `(x, y)` to `(x, y + 1)`. For normal
//! cloning `guidance_x[i] = g(x+1, y) - g(x, y)`. Since `v_pq = g_p - g_q`,
//! the guidance term is
//!
//! ```text
//! Σ_q v_pq = gx(x-1, y) - gx(x, y) + gy(x, y-1) - gy(x, y) = -div v
//! ```
//!
//! so with `v = ∇f` the right-hand side is the 5-point discrete Laplacian
//! `4 f_p - Σ f_q` and the solver reproduces `f` exactly (up to CG tolerance).
//!
//! # Boundary choices
//!
//! * Grid-edge pixels are never unknowns: they are Dirichlet pixels taking
//!   `boundary`. So every unknown has all 4 neighbours on the grid, every
//!   connected component of Ω touches at least one Dirichlet pixel, and the
//!   system matrix is symmetric positive definite (no pure-Neumann,
//!   singular component can arise).
//! * In [`seamless_clone`] the grid is the overlap of the patch rectangle with
//!   the destination, so the patch's outermost ring (and any destination edge
//!   that clips the patch) keeps the destination values, as do mask==0
//!   pixels. Only strictly interior mask pixels are re-solved.
//!
//! # Solver
//!
//! Conjugate gradient in f64, warm-started from `boundary` (the destination
//! values). The diagonal is the constant 4, so a Jacobi preconditioner would
//! only rescale and is omitted. The reported relative residual is the *true*
//! residual `‖b - A u‖ / ‖b‖` recomputed after the last iteration.

use image::{GrayImage, RgbImage};

/// Which guidance field drives the interior of the clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guidance {
    /// Normal cloning: the guidance is the source patch's gradient.
    #[default]
    Source,
    /// Mixed gradients: per edge, the source or destination difference with
    /// the larger magnitude (ties go to the source).
    Mixed,
}

/// Convergence report of a solve (for [`seamless_clone`]: the worst channel,
/// i.e. the maximum over channels of each field).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveStats {
    /// CG iterations performed.
    pub iterations: usize,
    /// True relative residual `‖b - A u‖₂ / ‖b‖₂` at the returned solution
    /// (`‖b‖` replaced by 1 when `b = 0`).
    pub relative_residual: f64,
}

/// Conjugate-gradient stopping parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgParams {
    /// Stop once the relative residual is at or below this.
    pub tol: f64,
    /// Hard cap on iterations.
    pub max_iter: usize,
}

impl Default for CgParams {
    /// `tol = 1e-6`, `max_iter = 2000`: on 8-bit data the rounding to integer
    /// levels dominates the remaining error at this tolerance.
    fn default() -> Self {
        Self {
            tol: 1e-6,
            max_iter: 2000,
        }
    }
}

/// Marks a grid pixel that is not an unknown.
const NONE: usize = usize::MAX;

/// Solve the discrete Poisson equation (see the module docs) on one f64
/// channel.
///
/// * `inside[i]`: candidate unknowns; grid-edge pixels are ignored even if set.
/// * `boundary[i]`: Dirichlet values for every non-unknown pixel, and the CG
///   warm start for unknowns.
/// * `guidance_x[i]`, `guidance_y[i]`: forward-difference guidance on the
///   edges `(x,y)-(x+1,y)` and `(x,y)-(x,y+1)`; entries on edges that leave
///   the grid are never read.
///
/// Returns the full grid (unknowns solved, other pixels = `boundary`) and
/// the solve statistics.
///
/// # Panics
///
/// If any slice length differs from `width * height` (a caller bug).
pub fn solve_channel(
    width: usize,
    height: usize,
    inside: &[bool],
    boundary: &[f64],
    guidance_x: &[f64],
    guidance_y: &[f64],
    params: CgParams,
) -> (Vec<f64>, SolveStats) {
    let n = width * height;
    assert_eq!(inside.len(), n, "inside must have width*height entries");
    assert_eq!(boundary.len(), n, "boundary must have width*height entries");
    assert_eq!(
        guidance_x.len(),
        n,
        "guidance_x must have width*height entries"
    );
    assert_eq!(
        guidance_y.len(),
        n,
        "guidance_y must have width*height entries"
    );

    // Number the unknowns; only pixels with 1 <= x < width-1, 1 <= y <
    // height-1 qualify, so i-1, i+1, i-width, i+width are always in range.
    let mut index = vec![NONE; n];
    let mut cells: Vec<usize> = Vec::new();
    for y in 1..height.saturating_sub(1) {
        for x in 1..width.saturating_sub(1) {
            let i = y * width + x;
            if inside[i] {
                index[i] = cells.len();
                cells.push(i);
            }
        }
    }
    let mut out = boundary.to_vec();
    if cells.is_empty() {
        return (
            out,
            SolveStats {
                iterations: 0,
                relative_residual: 0.0,
            },
        );
    }

    // Neighbour unknown numbers (NONE = Dirichlet) and right-hand side.
    let mut nbrs: Vec<[usize; 4]> = Vec::with_capacity(cells.len());
    let mut b: Vec<f64> = Vec::with_capacity(cells.len());
    for &i in &cells {
        let q = [i - 1, i + 1, i - width, i + width];
        let mut nb = [NONE; 4];
        let mut rhs = guidance_x[i - 1] - guidance_x[i] + guidance_y[i - width] - guidance_y[i];
        for (slot, &qi) in nb.iter_mut().zip(q.iter()) {
            *slot = index[qi];
            if *slot == NONE {
                rhs += boundary[qi];
            }
        }
        nbrs.push(nb);
        b.push(rhs);
    }

    // y = A x with A = 4 I - adjacency(Ω): symmetric positive definite.
    let apply = |x: &[f64], y: &mut [f64]| {
        for ((yk, nb), &xk) in y.iter_mut().zip(&nbrs).zip(x) {
            let mut s = 4.0 * xk;
            for &j in nb {
                if j != NONE {
                    s -= x[j];
                }
            }
            *yk = s;
        }
    };
    let dot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(u, v)| u * v).sum::<f64>();

    let b_norm = {
        let nb = dot(&b, &b).sqrt();
        if nb > 0.0 { nb } else { 1.0 }
    };
    let mut x: Vec<f64> = cells.iter().map(|&i| boundary[i]).collect();
    let mut ap = vec![0.0; cells.len()];
    apply(&x, &mut ap);
    let mut r: Vec<f64> = b.iter().zip(&ap).map(|(bk, ak)| bk - ak).collect();
    let mut p = r.clone();
    let mut rr = dot(&r, &r);
    let mut iterations = 0;
    while iterations < params.max_iter && rr.sqrt() / b_norm > params.tol {
        apply(&p, &mut ap);
        let pap = dot(&p, &ap);
        if pap <= 0.0 || !pap.is_finite() {
            // Only reachable when p == 0 (A is SPD): nothing left to reduce.
            break;
        }
        let alpha = rr / pap;
        for ((xk, rk), (pk, apk)) in x.iter_mut().zip(r.iter_mut()).zip(p.iter().zip(&ap)) {
            *xk += alpha * pk;
            *rk -= alpha * apk;
        }
        let rr_new = dot(&r, &r);
        let beta = rr_new / rr;
        for (pk, rk) in p.iter_mut().zip(&r) {
            *pk = rk + beta * *pk;
        }
        rr = rr_new;
        iterations += 1;
    }

    // Report the true residual, not the recursively updated one.
    apply(&x, &mut ap);
    let res = b
        .iter()
        .zip(&ap)
        .map(|(bk, ak)| (bk - ak) * (bk - ak))
        .sum::<f64>()
        .sqrt();
    for (&i, &xk) in cells.iter().zip(&x) {
        out[i] = xk;
    }
    (
        out,
        SolveStats {
            iterations,
            relative_residual: res / b_norm,
        },
    )
}

/// Blend `src` into `dst` with default CG parameters; see
/// [`seamless_clone_with`].
pub fn seamless_clone(
    dst: &RgbImage,
    src: &RgbImage,
    mask: &GrayImage,
    x0: i64,
    y0: i64,
    guidance: Guidance,
) -> (RgbImage, SolveStats) {
    seamless_clone_with(dst, src, mask, x0, y0, guidance, CgParams::default())
}

/// Blend `src` (patch) into `dst` with the patch's top-left corner at
/// `(x0, y0)` (the patch may lie partly or wholly outside `dst`; it is
/// clipped), only where `mask > 0`. `mask` is indexed like `src`; where it has
/// no pixel (size mismatch) it counts as 0.
///
/// Re-solved pixels are mask pixels strictly inside the overlap of the patch
/// rectangle with `dst`; the patch's outermost ring, destination-edge pixels
/// and mask==0 pixels keep `dst` values and act as the Dirichlet boundary.
/// Each channel is solved independently; results are rounded and clamped to
/// `0..=255`. Stats are the worst channel.
pub fn seamless_clone_with(
    dst: &RgbImage,
    src: &RgbImage,
    mask: &GrayImage,
    x0: i64,
    y0: i64,
    guidance: Guidance,
    params: CgParams,
) -> (RgbImage, SolveStats) {
    let mut out = dst.clone();
    let mut stats = SolveStats {
        iterations: 0,
        relative_residual: 0.0,
    };
    let (dw, dh) = (i64::from(dst.width()), i64::from(dst.height()));
    let (sw, sh) = (i64::from(src.width()), i64::from(src.height()));
    let left = x0.max(0);
    let top = y0.max(0);
    let right = x0.saturating_add(sw).min(dw);
    let bottom = y0.saturating_add(sh).min(dh);
    if right <= left || bottom <= top {
        return (out, stats);
    }
    // All four are now within 0..=dw / 0..=dh, so the casts below are lossless.
    let (gw, gh) = ((right - left) as usize, (bottom - top) as usize);
    let (dx0, dy0) = (left as u32, top as u32);
    // Offset of the overlap inside the source patch (>= 0, < sw / sh).
    let (sx0, sy0) = ((left - x0) as u32, (top - y0) as u32);
    let at = |lx: usize, ly: usize| (lx as u32, ly as u32);

    let n = gw * gh;
    let mut inside = vec![false; n];
    for ly in 0..gh {
        for lx in 0..gw {
            let (ux, uy) = at(lx, ly);
            inside[ly * gw + lx] = mask
                .get_pixel_checked(sx0 + ux, sy0 + uy)
                .is_some_and(|m| m[0] > 0);
        }
    }

    let mut boundary = vec![0.0; n];
    let mut gx = vec![0.0; n];
    let mut gy = vec![0.0; n];
    for c in 0..3 {
        let d = |lx: usize, ly: usize| {
            let (ux, uy) = at(lx, ly);
            f64::from(dst.get_pixel(dx0 + ux, dy0 + uy)[c])
        };
        let s = |lx: usize, ly: usize| {
            let (ux, uy) = at(lx, ly);
            f64::from(src.get_pixel(sx0 + ux, sy0 + uy)[c])
        };
        let pick = |sd: f64, dd: f64| match guidance {
            Guidance::Source => sd,
            Guidance::Mixed => {
                if dd.abs() > sd.abs() {
                    dd
                } else {
                    sd
                }
            }
        };
        for ly in 0..gh {
            for lx in 0..gw {
                let i = ly * gw + lx;
                boundary[i] = d(lx, ly);
                gx[i] = if lx + 1 < gw {
                    pick(s(lx + 1, ly) - s(lx, ly), d(lx + 1, ly) - d(lx, ly))
                } else {
                    0.0
                };
                gy[i] = if ly + 1 < gh {
                    pick(s(lx, ly + 1) - s(lx, ly), d(lx, ly + 1) - d(lx, ly))
                } else {
                    0.0
                };
            }
        }
        let (u, st) = solve_channel(gw, gh, &inside, &boundary, &gx, &gy, params);
        stats.iterations = stats.iterations.max(st.iterations);
        stats.relative_residual = stats.relative_residual.max(st.relative_residual);
        for ly in 0..gh {
            for lx in 0..gw {
                if inside[ly * gw + lx] {
                    let (ux, uy) = at(lx, ly);
                    // Clamped to 0..=255 first, so the cast cannot truncate.
                    let v = u[ly * gw + lx].round().clamp(0.0, 255.0) as u8;
                    out.get_pixel_mut(dx0 + ux, dy0 + uy)[c] = v;
                }
            }
        }
    }
    (out, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn smooth_f(x: usize, y: usize) -> f64 {
        let (x, y) = (x as f64, y as f64);
        0.02 * x * x - 0.015 * x * y + 0.03 * y * y + 5.0 * (0.3 * x).sin() * (0.2 * y).cos() + 10.0
    }

    /// Residual recomputed independently of the solver.
    fn residual(
        w: usize,
        h: usize,
        inside: &[bool],
        boundary: &[f64],
        gx: &[f64],
        gy: &[f64],
        u: &[f64],
    ) -> f64 {
        let unknown =
            |x: usize, y: usize| x > 0 && y > 0 && x + 1 < w && y + 1 < h && inside[y * w + x];
        let (mut rr, mut bb) = (0.0, 0.0);
        for y in 0..h {
            for x in 0..w {
                if !unknown(x, y) {
                    continue;
                }
                let i = y * w + x;
                let mut b = gx[i - 1] - gx[i] + gy[i - w] - gy[i];
                let mut au = 4.0 * u[i];
                for (qx, qy) in [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)] {
                    if unknown(qx, qy) {
                        au -= u[qy * w + qx];
                    } else {
                        b += boundary[qy * w + qx];
                    }
                }
                rr += (b - au) * (b - au);
                bb += b * b;
            }
        }
        rr.sqrt() / bb.sqrt()
    }

    #[test]
    fn recovers_known_smooth_solution_on_several_shapes() {
        let (w, h) = (40usize, 36usize);
        type Shape = fn(usize, usize) -> bool;
        let shapes: [(&str, Shape); 3] = [
            ("rect", |x, y| (3..37).contains(&x) && (2..33).contains(&y)),
            ("L", |x, y| {
                (2..14).contains(&x) && (2..34).contains(&y)
                    || (2..38).contains(&x) && (22..34).contains(&y)
            }),
            ("disc", |x, y| {
                let (dx, dy) = (x as f64 - 20.0, y as f64 - 18.0);
                dx * dx + dy * dy < 15.0 * 15.0
            }),
        ];
        for (name, shape) in shapes {
            let n = w * h;
            let mut inside = vec![false; n];
            let mut boundary = vec![0.0; n];
            let mut gx = vec![0.0; n];
            let mut gy = vec![0.0; n];
            for y in 0..h {
                for x in 0..w {
                    let i = y * w + x;
                    inside[i] = shape(x, y);
                    // Unknowns start at 0, far from f: the solve must do the work.
                    boundary[i] = if inside[i] { 0.0 } else { smooth_f(x, y) };
                    if x + 1 < w {
                        gx[i] = smooth_f(x + 1, y) - smooth_f(x, y);
                    }
                    if y + 1 < h {
                        gy[i] = smooth_f(x, y + 1) - smooth_f(x, y);
                    }
                }
            }
            let params = CgParams {
                tol: 1e-13,
                max_iter: 10_000,
            };
            let (u, st) = solve_channel(w, h, &inside, &boundary, &gx, &gy, params);
            let mut max_err: f64 = 0.0;
            for y in 0..h {
                for x in 0..w {
                    if inside[y * w + x] {
                        max_err = max_err.max((u[y * w + x] - smooth_f(x, y)).abs());
                    }
                }
            }
            let indep = residual(w, h, &inside, &boundary, &gx, &gy, &u);
            assert!(st.iterations > 0, "{name}: no iterations");
            assert!(st.relative_residual <= 1e-13, "{name}: {st:?}");
            assert!(
                (indep - st.relative_residual).abs() < 1e-14,
                "{name}: {indep}"
            );
            assert!(max_err < 1e-8, "{name}: max error {max_err}");
        }
    }

    fn full_mask(w: u32, h: u32) -> GrayImage {
        GrayImage::from_pixel(w, h, Luma([255]))
    }

    #[test]
    fn constant_patch_into_constant_dst_is_identity() {
        let dst = RgbImage::from_pixel(50, 40, Rgb([100, 150, 200]));
        let src = RgbImage::from_pixel(20, 16, Rgb([10, 20, 30]));
        for g in [Guidance::Source, Guidance::Mixed] {
            let (out, st) = seamless_clone(&dst, &src, &full_mask(20, 16), 12, 9, g);
            assert_eq!(out, dst, "{g:?}");
            assert!(st.relative_residual <= CgParams::default().tol);
        }
    }

    #[test]
    fn linear_source_into_flat_dst_is_flat() {
        // A linear ramp has zero divergence, so with a constant Dirichlet
        // ring the membrane is the constant: the ramp's colour *and* slope
        // are removed (the slope is not pinned by the boundary).
        let dst = RgbImage::from_pixel(64, 64, Rgb([120, 60, 200]));
        let src = RgbImage::from_fn(30, 20, |x, y| {
            Rgb([(2 * x + y) as u8, (250 - 3 * x) as u8, (5 + 4 * y) as u8])
        });
        let (out, _) = seamless_clone(&dst, &src, &full_mask(30, 20), 10, 12, Guidance::Source);
        assert_eq!(out, dst);
    }

    #[test]
    fn linear_source_keeps_gradient_and_drops_colour_offset() {
        // dst is a ramp with the same slopes as the source but other colour
        // offsets: inside, the result is the dst colour + the source's
        // gradient, i.e. u(x, y) = c + L(x, y), not the source's colour.
        let dst = RgbImage::from_fn(64, 64, |x, y| {
            Rgb([(40 + 2 * x + y) as u8, (200 - x) as u8, (100 + y) as u8])
        });
        let (x0, y0) = (10u32, 12u32);
        let src = RgbImage::from_fn(30, 20, |x, y| {
            Rgb([(5 + 2 * x + y) as u8, (250 - x) as u8, (3 + y) as u8])
        });
        let (out, _) = seamless_clone(
            &dst,
            &src,
            &full_mask(30, 20),
            x0.into(),
            y0.into(),
            Guidance::Source,
        );
        for (lx, ly) in [(1u32, 1u32), (15, 10), (28, 18), (7, 13)] {
            let (x, y) = (x0 + lx, y0 + ly);
            let expect = [40 + 2 * x + y, 200 - x, 100 + y];
            let got = out.get_pixel(x, y).0;
            for c in 0..3 {
                assert_eq!(u32::from(got[c]), expect[c], "({lx},{ly}) c{c}");
                // Naive paste would have given the source value here.
                assert_ne!(got[c], src.get_pixel(lx, ly)[c]);
            }
        }
    }

    /// Max |difference| over 4-neighbour pairs (all channels) that cross the
    /// border of either `[a, b)` rectangle (a pixel in, its neighbour out).
    fn seam_max(img: &RgbImage, rects: &[(u32, u32, u32, u32)]) -> i32 {
        let mut m = 0;
        let within = |x: u32, y: u32, r: &(u32, u32, u32, u32)| {
            x >= r.0 && x < r.0 + r.2 && y >= r.1 && y < r.1 + r.3
        };
        for y in 0..img.height() {
            for x in 0..img.width() {
                for (qx, qy) in [(x + 1, y), (x, y + 1)] {
                    if qx >= img.width() || qy >= img.height() {
                        continue;
                    }
                    if !rects.iter().any(|r| within(x, y, r) != within(qx, qy, r)) {
                        continue;
                    }
                    let (p, q) = (img.get_pixel(x, y), img.get_pixel(qx, qy));
                    for c in 0..3 {
                        m = m.max((i32::from(p[c]) - i32::from(q[c])).abs());
                    }
                }
            }
        }
        m
    }

    #[test]
    fn blend_leaves_no_visible_seam_unlike_copy_paste() {
        let dst = RgbImage::from_fn(96, 96, |x, y| {
            let v = |c: f64| 128.0 + 100.0 * (x as f64 / 6.0 + c).sin() * (y as f64 / 7.0).cos();
            Rgb([v(0.0) as u8, v(1.0) as u8, v(2.0) as u8])
        });
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let src = RgbImage::from_fn(40, 40, |x, _| {
            let stripe = 3.0 * (0.9 * x as f64).sin();
            let mut px = [0u8; 3];
            for (c, base) in [30.0, 40.0, 50.0].into_iter().enumerate() {
                px[c] = (base + stripe + rng.random_range(-1.0..=1.0f64)).round() as u8;
            }
            Rgb(px)
        });
        let (x0, y0) = (28u32, 28u32);
        // Gradient range of dst away from the patch (2-pixel margin).
        let mut dst_max = 0;
        for y in 0..95u32 {
            for x in 0..95u32 {
                let near =
                    |x: u32, y: u32| x + 2 >= x0 && x < x0 + 42 && y + 2 >= y0 && y < y0 + 42;
                if near(x, y) || near(x + 1, y + 1) {
                    continue;
                }
                let p = dst.get_pixel(x, y);
                for q in [dst.get_pixel(x + 1, y), dst.get_pixel(x, y + 1)] {
                    for c in 0..3 {
                        dst_max = dst_max.max((i32::from(p[c]) - i32::from(q[c])).abs());
                    }
                }
            }
        }
        let rects = [(x0, y0, 40, 40), (x0 + 1, y0 + 1, 38, 38)];
        let (blended, _) = seamless_clone(
            &dst,
            &src,
            &full_mask(40, 40),
            x0.into(),
            y0.into(),
            Guidance::Source,
        );
        let mut naive = dst.clone();
        image::imageops::replace(&mut naive, &src, x0.into(), y0.into());
        let (seam_b, seam_n) = (seam_max(&blended, &rects), seam_max(&naive, &rects));
        eprintln!("dst_max {dst_max} blended {seam_b} naive {seam_n}");
        let margin = 3;
        assert!(
            seam_b <= dst_max + margin,
            "blended seam {seam_b} > {dst_max}+{margin}"
        );
        assert!(
            seam_n > dst_max + margin,
            "naive seam {seam_n} should be visible"
        );
    }

    #[test]
    fn cg_converges_on_64x64_patch() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let dst = RgbImage::from_fn(128, 128, |x, y| Rgb([(x + y) as u8, 90, (2 * y) as u8]));
        let src = RgbImage::from_fn(64, 64, |_, _| {
            Rgb([rng.random(), rng.random(), rng.random()])
        });
        let params = CgParams::default();
        let (_, st) = seamless_clone_with(
            &dst,
            &src,
            &full_mask(64, 64),
            30,
            40,
            Guidance::Source,
            params,
        );
        eprintln!("{st:?}");
        assert!(
            st.iterations > 0 && st.iterations < params.max_iter,
            "{st:?}"
        );
        assert!(st.relative_residual <= params.tol, "{st:?}");
    }

    #[test]
    fn mixed_keeps_strong_dst_edge_source_does_not() {
        // dst: vertical step edge at x = 32; src: flat grey.
        let dst = RgbImage::from_fn(64, 64, |x, _| {
            if x < 32 {
                Rgb([30, 30, 30])
            } else {
                Rgb([220, 220, 220])
            }
        });
        let src = RgbImage::from_pixel(40, 40, Rgb([128, 128, 128]));
        let step = |img: &RgbImage| {
            i32::from(img.get_pixel(32, 32)[0]) - i32::from(img.get_pixel(31, 32)[0])
        };
        let (mixed, _) = seamless_clone(&dst, &src, &full_mask(40, 40), 12, 12, Guidance::Mixed);
        let (plain, _) = seamless_clone(&dst, &src, &full_mask(40, 40), 12, 12, Guidance::Source);
        assert_eq!(step(&mixed), 190);
        assert!(
            step(&plain) < 40,
            "source guidance kept the edge: {}",
            step(&plain)
        );
    }

    #[test]
    fn clipped_and_mismatched_inputs_do_not_panic() {
        let dst = RgbImage::from_fn(32, 24, |x, y| Rgb([(5 * x) as u8, (7 * y) as u8, 9]));
        let src = RgbImage::from_fn(20, 20, |x, y| Rgb([((x + y) % 2 * 200) as u8, 0, 0]));
        // Partly outside on the top-left: pixels outside the overlap and the
        // destination's edge keep dst values; the overlap interior changes.
        let (out, _) = seamless_clone(&dst, &src, &full_mask(20, 20), -6, -4, Guidance::Source);
        assert_eq!(out.get_pixel(0, 5), dst.get_pixel(0, 5));
        assert_eq!(out.get_pixel(20, 20), dst.get_pixel(20, 20));
        assert_ne!(out.get_pixel(5, 5), dst.get_pixel(5, 5));
        // Entirely outside, absurd offsets and a too-small mask.
        for (x0, y0) in [(100, 0), (-50, -50), (i64::MAX, i64::MIN)] {
            let (o, st) = seamless_clone(&dst, &src, &full_mask(20, 20), x0, y0, Guidance::Mixed);
            assert_eq!(o, dst);
            assert_eq!(st.iterations, 0);
        }
        let (o, _) = seamless_clone(&dst, &src, &full_mask(3, 3), 4, 4, Guidance::Source);
        // Only mask pixel (1, 1) is interior: pixel (5, 5) may change, (9, 9) not.
        assert_eq!(o.get_pixel(9, 9), dst.get_pixel(9, 9));
    }
}

//! Patch scoring (DESIGN section 5): PatchCore's recipe (Roth et al., "Towards Total Recall in
//! Industrial Anomaly Detection", CVPR 2022) on the folded graph's taps, shared by the trainer's
//! evaluation, the exporter and the device.
//!
//! - **Features** ([`PatchLayout`]): each tap's map (HWC, as the executors write it) is averaged
//!   over a `neighbourhood` x `neighbourhood` window (stride 1, the mean of the cells inside the
//!   map), brought to the first tap's grid by bilinear interpolation, and the taps are
//!   concatenated: one `dim`-vector per grid cell. Where a cell is on the input follows
//!   [`MapPlacement`]: by default the graph's receptive-field centres. The means of a tap finer
//!   than the grid are taken only at the cells the grid reads.
//! - **Bank** ([`coreset`], [`PatchBank`]): the features of every grid cell of the good training
//!   images, reduced by greedy k-center selection (on a seeded Gaussian projection to
//!   [`PROJECTION_DIM`] dimensions, as PatchCore does) to a size budget.
//! - **Map** ([`PatchScorer`]): per cell the Euclidean distance to its nearest bank row; the grid
//!   upsampled bilinearly to the model input (by the same placement) and smoothed with a
//!   Gaussian (`sigma` input pixels), both as one precomputed linear map per axis
//!   ([`super::map::Smooth`]); the image score is the map's maximum (higher = more anomalous).
//!
//! The nearest row is exact but found cheaply ([`PatchBank::nearest_into`]): the executor's
//! int8 GEMM gives approximate distances with a proven error bound, and only the rows that
//! bound cannot rule out get their distance computed directly in f32 (no expansion, so no
//! cancellation). [`PatchBank::nearest_exact`] is the f64 scan the tests and the self-test
//! reference use.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::map::{Map, Resample, Smooth};
use crate::error::{Error, Result};
use crate::exec::kernels::gemm_i8::{MAX_K, PackedI8, gemm_u8i8};
use crate::exec::kernels::nearest::Candidates;
use crate::exec::kernels::window::{Window, window_means, window_sums};
use crate::exec::kernels::{Clamp, Epilogue, Isa, quantize_u8_rows};
use crate::model::graph::{Graph, Placement, Shape, TensorId};

/// Dimensions of the random projection the coreset selection measures distances in.
pub const PROJECTION_DIM: usize = 128;
/// Default patch bank budget (entries) of ResNet's taps: what keeps patch scoring within 30 % of
/// the encoder's time at the bundle's input size on the device CPU (`device-runtime bench`).
pub const DEFAULT_BANK: usize = 1024;
/// Default patch bank budget of EfficientNet's taps (80 values per patch, against ResNet's 384):
/// 1,536 entries, about 1 % of MVTec bottle's 163,856 training patches at 224 px. Bottle with the
/// ImageNet EfficientNet-Lite0 (`eval --score patch --quick`), pixel AUROC / AUPRO: bank 1024
/// 0.9849 / 0.9365, 1536 0.9853 / 0.9381, 2048 0.9857 / 0.9335. Patch scoring's share of the
/// encoder's time on the device CPU: 20-21 %, 25 % and 30-31 % (README).
pub const DEFAULT_BANK_EFFICIENTNET: usize = 1536;
/// Default smoothing of the map, in input pixels (PatchCore: 4 at 224 px).
pub const DEFAULT_SIGMA: f32 = 4.0;
/// Most taps a spec may name.
pub const MAX_TAPS: usize = 8;
/// Most patches a bank may be selected from (above this, a seeded subsample is taken first).
/// On MVTec bottle (209 images x 784 cells = 163,856 patches, Lite0 defaults, bank 1024) the
/// subsample cut the selection from 7.3 s to 2.0 s (release) and moved pixel AUROC from 0.9798
/// to 0.9797, AUPRO from 0.9193 to 0.9195, image AUROC from 1.0000 to 0.9992.
pub const MAX_CANDIDATES: usize = 65_536;

fn bad(why: impl Into<String>) -> Error {
    Error::invalid("patch score", why.into())
}

/// The graph's tap names, for error messages.
fn tap_names(graph: &Graph) -> String {
    graph
        .taps
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How patches are made and scored (the bundle's manifest and the training profile carry it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PatchSpec {
    /// Graph taps whose maps are concatenated; the first sets the grid.
    pub taps: Vec<String>,
    /// Side of the window each cell's feature averages (PatchCore's p = 3).
    pub neighbourhood: usize,
    /// Gaussian smoothing of the upsampled map, in input pixels (0 = none).
    pub sigma: f32,
    /// Patch bank budget: entries kept by the coreset selection.
    pub bank: usize,
    /// Where grid cells sit on the input when taps meet and when the map is upsampled. Absent
    /// (bundles and runs written before it existed): PyTorch's half-pixel rule, as they were
    /// calibrated.
    #[serde(default = "MapPlacement::half_pixel")]
    pub placement: MapPlacement,
}

/// Where a tap's grid cells are taken to sit on the model input.
///
/// A stride-8 map of a network that pads its windows by `k / 2` has cell `i` centred on input
/// pixel `8 i` (`Graph::placements`). PyTorch's `F.interpolate(align_corners=False)`, which
/// PatchCore uses, treats cells as pixel areas and puts it at `8 i + 3.5`: the map is shifted
/// 3.5 pixels down and right of the features it came from, and the taps of different strides
/// shift against each other. Measured on MVTec bottle with the ImageNet EfficientNet-Lite0 at 224
/// px, the default taps, bank 1024, sigma 4 (`eval --score patch --quick`), pixel AUROC / AUPRO:
/// half-pixel 0.9797 / 0.9195, receptive field 0.9829 / 0.9341; image AUROC unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapPlacement {
    /// Each cell on the centre of its receptive field (from the graph's kernels, strides and
    /// paddings).
    ReceptiveField,
    /// PyTorch's `align_corners=False` (cell `i` of `n` over `N` pixels at
    /// `(i + 0.5) N / n - 0.5`).
    HalfPixel,
}

impl MapPlacement {
    fn half_pixel() -> Self {
        MapPlacement::HalfPixel
    }
}

impl PatchSpec {
    /// The default for a graph: ResNet's `layer2` + `layer3` (strides 8 and 16, PatchCore's
    /// choice) with 3x3 windows, or EfficientNet's `stage3` + `stage2` + `stage1` (the stride-8
    /// grid with the stride-4 and stride-2 maps' features brought to it; 40 + 24 + 16 values)
    /// with 5x5 windows. Measured on MVTec bottle with the ImageNet EfficientNet-Lite0 at
    /// 224 px, bank 1024, sigma 4 (`eval --score patch --quick`), pixel AUROC / AUPRO, with
    /// the receptive-field placement: stage3+stage2 0.9829 / 0.934, stage3+stage2+stage1
    /// 0.9849 / 0.937 (the finest stage holds the edges of small breaks); half-pixel placement,
    /// earlier: stage3+stage5 3x3 0.957 / 0.834; stage2+stage3 3x3 0.971 / 0.918, 5x5 0.980 /
    /// 0.926 (a 56x56 grid: four times the kNN work); image AUROC 0.999-1.000 for each. On the
    /// device CPU the three taps' patch scoring takes 25 % of the encoder's time with
    /// EfficientNet's default bank ([`DEFAULT_BANK_EFFICIENTNET`]), 20-21 % with 1,024 rows
    /// (`device-runtime bench`, README). The bank budget is the default's too: ResNet's 384
    /// values per patch cost the GEMM almost five times Lite0's 80.
    pub fn for_graph(graph: &Graph) -> Result<Self> {
        let has = |n: &str| graph.taps.iter().any(|t| t.name == n);
        let defaults: [(&[&str], usize, usize); 2] = [
            (&["layer2", "layer3"], 3, DEFAULT_BANK),
            (
                &["stage3", "stage2", "stage1"],
                5,
                DEFAULT_BANK_EFFICIENTNET,
            ),
        ];
        let (taps, neighbourhood, bank) = defaults
            .into_iter()
            .find(|(p, _, _)| p.iter().all(|n| has(n)))
            .ok_or_else(|| {
                bad(format!(
                    "no default taps for this graph (taps: {}); name them with patch-taps",
                    tap_names(graph)
                ))
            })?;
        Ok(Self {
            taps: taps.iter().map(|s| s.to_string()).collect(),
            neighbourhood,
            sigma: DEFAULT_SIGMA,
            bank,
            placement: MapPlacement::ReceptiveField,
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.taps.is_empty() || self.taps.len() > MAX_TAPS {
            return Err(bad(format!("{} taps; 1 to {MAX_TAPS}", self.taps.len())));
        }
        if self.neighbourhood == 0 || self.neighbourhood.is_multiple_of(2) || self.neighbourhood > 9
        {
            return Err(bad(format!(
                "neighbourhood {}; an odd number from 1 to 9",
                self.neighbourhood
            )));
        }
        if !(0.0..=64.0).contains(&self.sigma) {
            return Err(bad(format!("sigma {}; 0 to 64 pixels", self.sigma)));
        }
        if !(1..=1 << 20).contains(&self.bank) {
            return Err(bad(format!("bank {}; 1 to 1048576 entries", self.bank)));
        }
        Ok(())
    }
}

/// One tap of a layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TapPlace {
    pub tensor: TensorId,
    pub shape: Shape,
    /// First feature column of this tap.
    pub offset: usize,
    /// Where grid cell `j` reads this tap's map (both axes; unused when the map is the grid).
    pub from_grid: Resample,
}

/// Where a spec's taps are in a graph at one input size, and how their maps become patches.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchLayout {
    pub taps: Vec<TapPlace>,
    /// Grid rows and columns (the first tap's map).
    pub gh: usize,
    pub gw: usize,
    /// Feature dimension (sum of the taps' channels).
    pub dim: usize,
    pub neighbourhood: usize,
    /// Model input side.
    pub size: usize,
    /// Where input pixel `u` reads the grid (both axes) when the map is upsampled.
    pub to_input: Resample,
    /// Per tap, where the grid reads its map ([`Sampling`]), which rows that needs, and the
    /// horizontal windows of the columns it reads.
    sampling: Vec<(Sampling, RowMasks, Vec<Window>)>,
    /// The window kernels' instruction set (the CPU's best, chosen when the layout is made).
    isa: Isa,
}

/// A bilinear source along one axis: the index, the next one and the weight of the next.
type Source = (usize, usize, f32);

/// Where the grid reads one tap's map: per grid row and column the two source indices and the
/// weight of the second (the second is the first where that weight is 0, so that only cells
/// that count are read), and the source rows and columns read at all. A tap finer than the grid
/// gets its neighbourhood means at those cells only: for EfficientNet-Lite0's stride-2 `stage1`
/// under a stride-8 grid, 28 x 28 of its 112 x 112 cells.
#[derive(Debug, Clone, PartialEq)]
struct Sampling {
    ys: Vec<Source>,
    xs: Vec<Source>,
    /// Sorted, without repeats.
    rows: Vec<usize>,
    cols: Vec<usize>,
}

/// Which rows of a tap's map [`box_mean_hwc`] fills: per row, whether its horizontal sums are
/// needed (`sums`: within the window of a read row) and whether its means are (`means`).
#[derive(Debug, Clone, PartialEq)]
struct RowMasks {
    sums: Vec<bool>,
    means: Vec<bool>,
}

impl RowMasks {
    fn new(h: usize, rows: &[usize], r: usize) -> Self {
        let mut sums = vec![false; h];
        let mut means = vec![false; h];
        for &y in rows {
            means[y] = true;
            sums[y.saturating_sub(r)..(y + r + 1).min(h)].fill(true);
        }
        Self { sums, means }
    }
}

impl Sampling {
    fn new(s: Shape, (gh, gw): (usize, usize), from: Resample) -> Self {
        let axis = |n: usize, len: usize| -> (Vec<Source>, Vec<usize>) {
            let table: Vec<Source> = (0..len)
                .map(|i| {
                    let (i0, i1, l) = match from {
                        Resample::HalfPixel => source(i, n, len),
                        r => r.source(i, n, len),
                    };
                    if l == 0.0 { (i0, i0, l) } else { (i0, i1, l) }
                })
                .collect();
            let mut read: Vec<usize> = table.iter().flat_map(|&(a, b, _)| [a, b]).collect();
            read.sort_unstable();
            read.dedup();
            (table, read)
        };
        let (ys, rows) = axis(s.h, gh);
        let (xs, cols) = axis(s.w, gw);
        Self { ys, xs, rows, cols }
    }

    /// Every cell of a map the size of the grid, in place.
    fn whole(s: Shape) -> Self {
        Self {
            ys: (0..s.h).map(|i| (i, i, 0.0)).collect(),
            xs: (0..s.w).map(|i| (i, i, 0.0)).collect(),
            rows: (0..s.h).collect(),
            cols: (0..s.w).collect(),
        }
    }
}

impl PatchLayout {
    pub fn new(graph: &Graph, spec: &PatchSpec, size: usize) -> Result<Self> {
        spec.validate()?;
        let shapes = graph.shapes(size, size)?;
        let places = graph.placements();
        let mut taps = Vec::with_capacity(spec.taps.len());
        let mut dim = 0;
        for name in &spec.taps {
            let t = graph.taps.iter().find(|t| &t.name == name).ok_or_else(|| {
                bad(format!(
                    "tap `{name}` is not in the graph (taps: {})",
                    tap_names(graph)
                ))
            })?;
            let shape = shapes[t.tensor];
            taps.push(TapPlace {
                tensor: t.tensor,
                shape,
                offset: dim,
                from_grid: Resample::HalfPixel,
            });
            dim += shape.c;
        }
        let first = taps[0].shape;
        let mut to_input = Resample::HalfPixel;
        if spec.placement == MapPlacement::ReceptiveField {
            let grid = places[taps[0].tensor];
            for t in &mut taps {
                t.from_grid = affine(grid, places[t.tensor]);
            }
            to_input = affine(Placement::INPUT, grid);
        }
        let sampling = taps
            .iter()
            .map(|t| {
                let at = if (t.shape.h, t.shape.w) == (first.h, first.w) {
                    Sampling::whole(t.shape)
                } else {
                    Sampling::new(t.shape, (first.h, first.w), t.from_grid)
                };
                let r = spec.neighbourhood / 2;
                let masks = RowMasks::new(t.shape.h, &at.rows, r);
                let wins = windows(t.shape, r, &at.cols);
                (at, masks, wins)
            })
            .collect();
        Ok(Self {
            sampling,
            isa: Isa::best(),
            gh: first.h,
            gw: first.w,
            dim,
            neighbourhood: spec.neighbourhood,
            size,
            taps,
            to_input,
        })
    }

    /// Grid cells per image.
    pub fn patches(&self) -> usize {
        self.gh * self.gw
    }

    pub fn tensors(&self) -> Vec<TensorId> {
        self.taps.iter().map(|t| t.tensor).collect()
    }

    /// Patch features of one image: `maps[i]` is tap `i`'s map (HWC); `out` gets
    /// `patches() x dim` values. `scratch` is reused between calls.
    pub fn features_into(&self, maps: &[&[f32]], scratch: &mut Vec<f32>, out: &mut [f32]) {
        self.features_with(maps, 1, scratch, out)
    }

    /// [`Self::features_into`] with the rows of each map split over `threads` (rayon's pool);
    /// the same values whatever the threads.
    pub fn features_with(
        &self,
        maps: &[&[f32]],
        threads: usize,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        assert_eq!(maps.len(), self.taps.len(), "one map per tap");
        assert_eq!(out.len(), self.patches() * self.dim, "patch feature buffer");
        let r = self.neighbourhood / 2;
        let par = threads > 1;
        for ((tap, map), (at, masks, wins)) in self.taps.iter().zip(maps).zip(&self.sampling) {
            let s = tap.shape;
            assert_eq!(map.len(), s.len(), "tap map of {:?}", s);
            scratch.resize(2 * s.len(), 0.0);
            let (rows, avg) = scratch.split_at_mut(s.len());
            box_mean_hwc(map, s, r, (masks, wins), (self.isa, par), rows, avg);
            if (s.h, s.w) == (self.gh, self.gw) {
                for p in 0..self.patches() {
                    out[p * self.dim + tap.offset..][..s.c].copy_from_slice(&avg[p * s.c..][..s.c]);
                }
            } else {
                bilinear_hwc(avg, s, (&at.ys, &at.xs), (self.dim, tap.offset), par, out);
            }
        }
    }

    /// [`Self::features_into`] into a new vector.
    pub fn features(&self, maps: &[&[f32]]) -> Vec<f32> {
        let mut out = vec![0f32; self.patches() * self.dim];
        self.features_into(maps, &mut Vec::new(), &mut out);
        out
    }
}

/// Runs `f` on each `(index, chunk)` of `x` in `len`-value chunks, on rayon's pool when `par`.
fn each_row(x: &mut [f32], len: usize, par: bool, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if par {
        x.par_chunks_mut(len)
            .enumerate()
            .with_min_len(4)
            .for_each(|(i, c)| f(i, c));
    } else {
        x.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// The horizontal windows of radius `r`, clipped to the map, at columns `xs` of a row of `s`.
fn windows(s: Shape, r: usize, xs: &[usize]) -> Vec<Window> {
    xs.iter()
        .map(|&x| {
            let (lo, hi) = (x.saturating_sub(r), (x + r + 1).min(s.w));
            Window {
                first: lo * s.c,
                n: hi - lo,
                at: x * s.c,
            }
        })
        .collect()
}

/// Mean over the `(2r+1)^2` window clipped to the map, per channel, at the cells of the rows
/// `masks.means` marks and of the columns of `wins` ([`windows`]; `out`'s other cells are left
/// as they were); `rows` is scratch (horizontal sums, on the rows `masks.sums` marks). `par`:
/// rows on rayon's pool. The sums run in [`window_sums`] and [`window_means`] on `isa`.
fn box_mean_hwc(
    x: &[f32],
    s: Shape,
    r: usize,
    (masks, wins): (&RowMasks, &[Window]),
    (isa, par): (Isa, bool),
    rows: &mut [f32],
    out: &mut [f32],
) {
    let (h, w, c) = (s.h, s.w, s.c);
    // Horizontal sums at the windows' columns.
    each_row(&mut rows[..h * w * c], w * c, par, |y, row| {
        if masks.sums[y] {
            window_sums(isa, &x[y * w * c..(y + 1) * w * c], c, c, wins, row);
        }
    });
    // Vertical sums, then the mean.
    let rows = &rows[..h * w * c];
    each_row(&mut out[..h * w * c], w * c, par, |yo, orow| {
        if masks.means[yo] {
            let (y0, y1) = (yo.saturating_sub(r), (yo + r + 1).min(h));
            window_means(
                isa,
                &rows[y0 * w * c..y1 * w * c],
                c,
                w * c,
                y1 - y0,
                wins,
                orow,
            );
        }
    });
}

/// Where cell `j` of a grid placed `dst` reads a map placed `src`: `src.cell_of(dst.stride * j +
/// dst.offset)`.
fn affine(dst: Placement, src: Placement) -> Resample {
    Resample::Affine {
        scale: (dst.stride / src.stride) as f32,
        shift: ((dst.offset - src.offset) / src.stride) as f32,
    }
}

/// PyTorch's bilinear source coordinate (`align_corners=False`): `(index, next, weight of next)`.
fn source(dst: usize, src_len: usize, dst_len: usize) -> (usize, usize, f32) {
    let scale = src_len as f32 / dst_len as f32;
    let s = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (s as usize).min(src_len - 1);
    let i1 = if i0 + 1 < src_len { i0 + 1 } else { i0 };
    (i0, i1, s - i0 as f32)
}

/// Bilinear resize of an HWC map to a grid: grid row `y` reads source rows `ys[y]` (`(index, next,
/// weight of next)`), column `x` columns `xs[x]`; written at column `offset` of rows of `ld`.
/// `par`: grid rows on rayon's pool.
fn bilinear_hwc(
    x: &[f32],
    s: Shape,
    (ys, xs): (&[Source], &[Source]),
    (ld, offset): (usize, usize),
    par: bool,
    out: &mut [f32],
) {
    let (c, gw) = (s.c, xs.len());
    each_row(&mut out[..ys.len() * gw * ld], gw * ld, par, |y, orow| {
        let (y0, y1, ly) = ys[y];
        for (xx, &(x0, x1, lx)) in xs.iter().enumerate() {
            let w00 = (1.0 - ly) * (1.0 - lx);
            let w01 = (1.0 - ly) * lx;
            let w10 = ly * (1.0 - lx);
            let w11 = ly * lx;
            let a = &x[(y0 * s.w + x0) * c..][..c];
            let b = &x[(y0 * s.w + x1) * c..][..c];
            let d = &x[(y1 * s.w + x0) * c..][..c];
            let e = &x[(y1 * s.w + x1) * c..][..c];
            let o = &mut orow[xx * ld + offset..][..c];
            for ch in 0..c {
                o[ch] = w00 * a[ch] + w01 * b[ch] + w10 * d[ch] + w11 * e[ch];
            }
        }
    });
}

/// Greedy k-center selection of at most `budget` rows of `feats` (`dim` per row), measured on a
/// seeded Gaussian projection to [`PROJECTION_DIM`] dimensions: start at a seeded random row,
/// then repeatedly take the row farthest from everything taken. Returns the rows in selection
/// order (all rows, in order, when there are no more than `budget`).
pub fn coreset(feats: &[f32], dim: usize, budget: usize, seed: u64) -> Vec<usize> {
    assert!(
        dim > 0 && feats.len().is_multiple_of(dim),
        "features of {dim} values per row"
    );
    let n = feats.len() / dim;
    if n <= budget {
        return (0..n).collect();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    if n > MAX_CANDIDATES {
        // A seeded subsample first: the selection's time and memory grow with the candidates.
        let mut keep = rand::seq::index::sample(&mut rng, n, MAX_CANDIDATES).into_vec();
        keep.sort_unstable();
        let sub: Vec<f32> = keep
            .iter()
            .flat_map(|&i| feats[i * dim..][..dim].iter().copied())
            .collect();
        return coreset(&sub, dim, budget, seed.wrapping_add(1))
            .into_iter()
            .map(|i| keep[i])
            .collect();
    }
    let p = dim.min(PROJECTION_DIM);
    let proj: Vec<f32> = if p < dim {
        let m: Vec<f32> = (0..dim * p)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let mut out = vec![0f32; n * p];
        out.par_chunks_mut(p)
            .zip(feats.par_chunks(dim))
            .for_each(|(o, f)| {
                for (i, &v) in f.iter().enumerate() {
                    if v != 0.0 {
                        for (a, b) in o.iter_mut().zip(&m[i * p..][..p]) {
                            *a += v * b;
                        }
                    }
                }
            });
        out
    } else {
        feats.to_vec()
    };
    let start = rand::Rng::random_range(&mut rng, 0..n);
    let mut chosen = Vec::with_capacity(budget);
    let mut min_d = vec![f32::INFINITY; n];
    let mut next = start;
    for _ in 0..budget {
        chosen.push(next);
        let c: Vec<f32> = proj[next * p..][..p].to_vec();
        // Update the distances and find the farthest row in one pass per chunk.
        let best = min_d
            .par_chunks_mut(4096)
            .zip(proj.par_chunks(4096 * p))
            .enumerate()
            .map(|(ci, (d, rows))| {
                let mut best = (f32::NEG_INFINITY, 0usize);
                for (j, (dj, row)) in d.iter_mut().zip(rows.chunks_exact(p)).enumerate() {
                    let mut s = 0f32;
                    for (a, b) in row.iter().zip(&c) {
                        let t = a - b;
                        s += t * t;
                    }
                    if s < *dj {
                        *dj = s;
                    }
                    if *dj > best.0 {
                        best = (*dj, ci * 4096 + j);
                    }
                }
                best
            })
            .reduce(
                || (f32::NEG_INFINITY, usize::MAX),
                |a, b| {
                    if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
                        b
                    } else {
                        a
                    }
                },
            );
        if best.0 <= 0.0 {
            break; // every remaining row duplicates a chosen one
        }
        next = best.1;
    }
    chosen
}

/// Bank rows per GEMM block. A bank of more rows is scored block by block, each block packed
/// from the stored rows when a query arrives, so a large bank costs its stored rows (f16 when
/// it comes from a bundle) plus one block, and the distance scratch is `queries x BLOCK`
/// instead of `queries x entries` (issue 18: a 256 MiB patch bank made a flash peak at 8.7x the
/// bundle). Banks of up to `BLOCK` rows (the exporter's default is 1,024) are packed once.
pub const BLOCK: usize = 4096;

/// Queries per GEMM of [`PatchBank::nearest_into`]: their distances to a 1,024-row block (112 KiB)
/// stay in a core's L2 until the scan reads them. A multiple of the AVX-512 microkernel's 7 rows.
pub const CHUNK: usize = 28;

/// A bank's rows as stored: f32 (the trainer's), or f16 as a bundle holds them.
#[derive(Clone)]
pub enum PatchRows {
    F32(Vec<f32>),
    /// Shared with the bundle that holds them.
    F16(std::sync::Arc<Vec<half::f16>>),
}

impl std::fmt::Debug for PatchRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::F32(v) => write!(f, "PatchRows::F32({} values)", v.len()),
            Self::F16(v) => write!(f, "PatchRows::F16({} values)", v.len()),
        }
    }
}

impl From<Vec<f32>> for PatchRows {
    fn from(v: Vec<f32>) -> Self {
        Self::F32(v)
    }
}

impl From<Vec<half::f16>> for PatchRows {
    fn from(v: Vec<half::f16>) -> Self {
        Self::F16(std::sync::Arc::new(v))
    }
}

impl From<std::sync::Arc<Vec<half::f16>>> for PatchRows {
    fn from(v: std::sync::Arc<Vec<half::f16>>) -> Self {
        Self::F16(v)
    }
}

impl PatchRows {
    fn values(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) => v.len(),
        }
    }

    /// Values `from..from + out.len()` in f32.
    fn read(&self, from: usize, out: &mut [f32]) {
        match self {
            Self::F32(v) => out.copy_from_slice(&v[from..][..out.len()]),
            Self::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                v[from..][..out.len()].convert_to_f32_slice(out);
            }
        }
    }

    fn all_finite(&self) -> bool {
        match self {
            Self::F32(v) => v.iter().all(|x| x.is_finite()),
            Self::F16(v) => v.iter().all(|x| x.is_finite()),
        }
    }
}

/// The bank of good patch features, packed for the int8 GEMM that finds each query's nearest
/// row ([`PatchBank::nearest_into`]).
#[derive(Clone)]
pub struct PatchBank {
    dim: usize,
    isa: Isa,
    rows: PatchRows,
    /// The rows packed with what their search needs, when the bank is one block.
    packed: Option<Block>,
    /// `|row|^2`, the epilogue's bias.
    sq: Vec<f32>,
    /// How queries are quantized: one scale and zero point that cover the bank's values.
    quant: QueryQuant,
}

/// The u8 quantization of queries: `q8 = round(q / scale) + zp`, clamped to 0..=255.
#[derive(Debug, Clone, Copy)]
struct QueryQuant {
    scale: f32,
    zp: u8,
}

impl QueryQuant {
    /// A scale and zero point whose range holds `lo..=hi` (and 0).
    fn covering(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Self { scale, zp }
    }
}

/// Rows `j0..j0 + n` of a bank as the int8 search reads them: i8 with one scale per row, packed
/// as the GEMM's right operand, with the bounds of their quantization error, and in f32 for
/// the exact distances of the candidates.
#[derive(Clone)]
struct Block {
    j0: usize,
    w: PackedI8,
    /// `-2 * query scale * row scale`: the epilogue's scale, so that the GEMM gives
    /// `|row|^2 - 2 q' . row'` (quantized query and row).
    scale: Vec<f32>,
    /// Per row `|row|` and `|row - row'|` (rounded up), and their largest.
    norm: Vec<f32>,
    err: Vec<f32>,
    max_norm: f32,
    max_err: f32,
    /// The largest `|row|^2`.
    max_sq: f32,
    rows: Vec<f32>,
}

impl Block {
    fn new(isa: Isa, bank: &PatchRows, dim: usize, j0: usize, n: usize, quant: QueryQuant) -> Self {
        let mut rows = vec![0f32; n * dim];
        bank.read(j0 * dim, &mut rows);
        let mut w = vec![0i8; n * dim];
        let mut scale = Vec::with_capacity(n);
        let (mut max_norm, mut max_err, mut max_sq) = (0f64, 0f64, 0f64);
        let up = |x: f64| (x * (1.0 + 1e-6)) as f32;
        let (mut norm, mut error) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (r, w) in rows.chunks_exact(dim).zip(w.chunks_exact_mut(dim)) {
            let top = r.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = if top > 0.0 { top / 127.0 } else { 1.0 };
            let (mut sq, mut err) = (0f64, 0f64);
            for (w, &v) in w.iter_mut().zip(r) {
                *w = (v / s).round().clamp(-127.0, 127.0) as i8;
                let e = f64::from(v) - f64::from(s) * f64::from(*w);
                err += e * e;
                sq += f64::from(v) * f64::from(v);
            }
            scale.push(-2.0 * quant.scale * s);
            norm.push(up(sq.sqrt()));
            error.push(up(err.sqrt()));
            max_norm = max_norm.max(sq.sqrt());
            max_err = max_err.max(err.sqrt());
            max_sq = max_sq.max(sq);
        }
        Self {
            j0,
            norm,
            err: error,
            w: PackedI8::with_zero_point(isa, &w, n, dim, quant.zp),
            scale,
            max_norm: up(max_norm),
            max_err: up(max_err),
            max_sq: up(max_sq),
            rows,
        }
    }

    fn len(&self) -> usize {
        self.scale.len()
    }

    fn heap_bytes(&self) -> usize {
        self.len() * (self.w.k_padded() + 3 * 4) + self.rows.len() * 4
    }
}

/// One part's queries, their u8 rows and their bounds (see [`query_bound`]).
type PreparePart<'a> = (&'a [f32], (&'a mut [u8], &'a mut [[f32; 3]]));

/// `[|q|^2, |q - q'|, |q'|]` for query `q` and its u8 row `q8` (`q' = scale * (q8 - zp)`),
/// summed in eight lanes so that the loop vectorises.
fn query_bound(q: &[f32], q8: &[u8], scale: f32, zp: u8) -> [f32; 3] {
    let q8 = &q8[..q.len()];
    let (zp, mut acc) = (f32::from(zp), [[0f32; 8]; 3]);
    let (cq, c8) = (q.chunks_exact(8), q8.chunks_exact(8));
    let (tq, t8) = (cq.remainder(), c8.remainder());
    for (v, b) in cq.zip(c8) {
        for l in 0..8 {
            let r = scale * (f32::from(b[l]) - zp);
            acc[0][l] += v[l] * v[l];
            acc[1][l] += (v[l] - r) * (v[l] - r);
            acc[2][l] += r * r;
        }
    }
    for (l, (&v, &b)) in tq.iter().zip(t8).enumerate() {
        let r = scale * (f32::from(b) - zp);
        acc[0][l] += v * v;
        acc[1][l] += (v - r) * (v - r);
        acc[2][l] += r * r;
    }
    let [qq, err, norm] = acc.map(|a| a.iter().sum::<f32>());
    [qq, err.sqrt(), norm.sqrt()]
}

impl std::fmt::Debug for PatchBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchBank")
            .field("entries", &self.len())
            .field("dim", &self.dim)
            .finish()
    }
}

/// A query's smallest exact squared distance so far and its row.
type Best = (f32, usize);

/// Buffers of [`PatchBank::nearest_into`], kept between calls.
#[derive(Debug, Clone, Default)]
pub struct NearestScratch {
    /// The queries in u8, rows padded to the GEMM's K.
    q8: Vec<u8>,
    /// Per query: `|q|^2`, `|q - q'|` and `|q'|` (`q'` the quantized query).
    bound: Vec<[f32; 3]>,
    /// Approximate distances of one chunk of queries to one block of rows, per thread.
    dist: Vec<f32>,
    /// Per query, the smallest exact squared distance so far and its row.
    best: Vec<Best>,
}

impl PatchBank {
    /// A bank of `dim`-d rows, f32 or f16 ([`PatchRows`]).
    pub fn new(rows: impl Into<PatchRows>, dim: usize) -> Result<Self> {
        Self::with_isa(rows, dim, Isa::best())
    }

    pub fn with_isa(rows: impl Into<PatchRows>, dim: usize, isa: Isa) -> Result<Self> {
        let rows = rows.into();
        let len = rows.values();
        if dim == 0 || len == 0 || !len.is_multiple_of(dim) {
            return Err(bad(format!(
                "a patch bank of {len} values is not whole rows of {dim}"
            )));
        }
        if !rows.all_finite() {
            return Err(bad("the patch bank holds NaN or infinity"));
        }
        if dim > MAX_K {
            return Err(bad(format!(
                "patch features of {dim} values (at most {MAX_K})"
            )));
        }
        let n = len / dim;
        let mut row = vec![0f32; dim];
        let (mut lo, mut hi) = (0f32, 0f32);
        let sq = (0..n)
            .map(|j| {
                rows.read(j * dim, &mut row);
                for &v in &row {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
                row.iter().map(|v| v * v).sum()
            })
            .collect();
        let quant = QueryQuant::covering(lo, hi);
        let packed = (n <= BLOCK).then(|| Block::new(isa, &rows, dim, 0, n, quant));
        Ok(Self {
            dim,
            isa,
            rows,
            packed,
            sq,
            quant,
        })
    }

    pub fn len(&self) -> usize {
        self.sq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sq.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `j` in f32.
    pub fn row(&self, j: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.dim];
        self.rows.read(j * self.dim, &mut out);
        out
    }

    /// Bytes the bank holds: its rows as stored (f16 rows may be shared with their bundle),
    /// the packed copy of a one-block bank (i8 rows, their scales and the f32 rows) and the
    /// norms.
    pub fn heap_bytes(&self) -> usize {
        let rows = match &self.rows {
            PatchRows::F32(v) => v.len() * 4,
            PatchRows::F16(v) => v.len() * 2,
        };
        rows + self.packed.as_ref().map_or(0, Block::heap_bytes) + self.sq.len() * 4
    }

    /// Distance from each of the `m` queries (`q`, `m x dim`) to its nearest row, into `out`.
    /// `scratch` grows to `m x dim` bytes and `min(threads, chunks) x CHUNK x min(len, BLOCK)`
    /// distances once.
    ///
    /// The nearest row is exact, found in two steps:
    /// 1. An int8 GEMM (u8 queries on one scale, i8 rows on one scale each: [`gemm_u8i8`], VNNI
    ///    or SDOT where the CPU has them) gives every row's approximate `|row|^2 - 2 q . row`.
    ///    Its error is bounded by Cauchy-Schwarz: `|q.r - q'.r'| <= |q - q'| |r| + |q'| |r - r'|`,
    ///    where `'` is the quantized value and every norm is known (the query's per call, the
    ///    rows' when packed). With `e_j` twice row `j`'s bound (plus f32 rounding), every row's
    ///    true value lies in `approx_j +- e_j`, so the nearest row's lower end is at most the
    ///    exact distance of any row: that of the row with the smallest approximation is the
    ///    limit, and only rows whose lower end is at most the limit are candidates.
    /// 2. Only those candidates get their exact distance (f32, `sum (q - r)^2`, no cancellation),
    ///    and the smallest wins (the first row on ties). The scan is [`Candidates::nearest`].
    ///
    /// On bottle (EfficientNet-Lite0 taps, 1,024 rows) a cell had 13 candidates with one bound
    /// per block and the smallest upper end as the limit; 6 of 1,536 on device-runtime's
    /// generated frames with per-row bounds (`cargo bench -p firm-shared --bench heatmap` has
    /// the timings, on random rows, the hard case). The queries are split into one
    /// contiguous part per thread, each going through the bank [`CHUNK`] queries at a time, so
    /// that a chunk's distances are scanned from cache; the result does not depend on `threads`.
    pub fn nearest_into(
        &self,
        q: &[f32],
        m: usize,
        threads: usize,
        scratch: &mut NearestScratch,
        out: &mut [f32],
    ) {
        let (n, d) = (self.len(), self.dim);
        assert_eq!(q.len(), m * d, "queries of {d} values");
        assert_eq!(out.len(), m, "one distance per query");
        let kp = d.next_multiple_of(4);
        let bn = n.min(BLOCK);
        let parts = threads.clamp(1, m.div_ceil(CHUNK).max(1));
        // Queries per part: whole chunks, so that only the last part has a short one.
        let per = m.div_ceil(parts).div_ceil(CHUNK).max(1) * CHUNK;
        let NearestScratch {
            q8,
            bound,
            dist,
            best,
        } = scratch;
        let QueryQuant { scale, zp } = self.quant;
        q8.resize(m * kp, 0);
        bound.resize(m, [0.0; 3]);
        // Per query, on its part's thread: the u8 row, then |q|^2, and |q - q'| and |q'| for the
        // margin.
        let prepare = |(q, (q8, bound)): PreparePart<'_>| {
            quantize_u8_rows(self.isa, q, d, 1.0 / scale, zp, q8, kp);
            for ((q, q8), b) in q.chunks_exact(d).zip(q8.chunks_exact(kp)).zip(bound) {
                *b = query_bound(q, q8, scale, zp);
            }
        };
        if parts > 1 {
            q.par_chunks(per * d)
                .zip(q8.par_chunks_mut(per * kp).zip(bound.par_chunks_mut(per)))
                .for_each(prepare);
        } else {
            prepare((q, (&mut q8[..], &mut bound[..])));
        }
        dist.resize(parts * CHUNK * bn, 0.0);
        best.clear();
        best.resize(m, (f32::INFINITY, 0));
        let mut block_here;
        for j0 in (0..n).step_by(BLOCK) {
            let nb = (n - j0).min(BLOCK);
            let block = match &self.packed {
                Some(b) => b,
                None => {
                    block_here = Block::new(self.isa, &self.rows, d, j0, nb, self.quant);
                    &block_here
                }
            };
            debug_assert_eq!((block.j0, block.len()), (j0, nb));
            let ep = Epilogue {
                scale: Some(&block.scale),
                ..Epilogue::new(&self.sq[j0..j0 + nb], Clamp::NONE)
            };
            let part = |(p, (best, dist)): (usize, (&mut [Best], &mut [f32]))| {
                for (c, best) in best.chunks_mut(CHUNK).enumerate() {
                    let i0 = p * per + c * CHUNK;
                    let mc = best.len();
                    gemm_u8i8(
                        &q8[i0 * kp..(i0 + mc) * kp],
                        kp,
                        mc,
                        &block.w,
                        &ep,
                        dist,
                        nb,
                        1,
                    );
                    for (i, (b, row)) in best.iter_mut().zip(dist.chunks_exact(nb)).enumerate() {
                        let i = i0 + i;
                        self.refine(block, &q[i * d..(i + 1) * d], bound[i], row, b);
                    }
                }
            };
            if parts > 1 {
                best.par_chunks_mut(per)
                    .zip(dist.par_chunks_mut(CHUNK * bn))
                    .enumerate()
                    .for_each(part);
            } else {
                part((0, (&mut best[..], &mut dist[..])));
            }
        }
        for (o, &(d2, _)) in out.iter_mut().zip(best.iter()) {
            *o = d2.sqrt();
        }
    }

    /// Step 2 of [`Self::nearest_into`] for query `q` against one block: `approx` holds the
    /// block's approximate `|row|^2 - 2 q . row`; `best` (exact squared distance, row) is
    /// replaced by a nearer row of the block.
    fn refine(
        &self,
        block: &Block,
        q: &[f32],
        [qq, dq, nq]: [f32; 3],
        approx: &[f32],
        best: &mut Best,
    ) {
        // |approx_j - (|q - r_j|^2 - |q|^2)| <= a |r_j| + b |r_j - r_j'| + c for row j: twice
        // the dot product's bound, widened for f32 rounding (the epilogue's, the norms', the
        // exact distances').
        let (a, b) = (2.0 * dq * (1.0 + 1e-4), 2.0 * nq * (1.0 + 1e-4));
        let c = 1e-4 * (block.max_sq + 2.0 * nq * (block.max_norm + block.max_err) + qq);
        let candidates = Candidates {
            approx,
            bound: [a, b, c],
            norm: &block.norm,
            err: &block.err,
            top: [block.max_norm, block.max_err],
            qq,
            q,
            rows: &block.rows,
            j0: block.j0,
        };
        candidates.nearest(self.isa, best);
    }

    /// The distance from `q` to its nearest row, by a plain scan in f64 (the reference).
    pub fn nearest_exact(&self, q: &[f32]) -> f64 {
        (0..self.len())
            .map(|j| {
                self.row(j)
                    .iter()
                    .zip(q)
                    .map(|(a, b)| {
                        let t = *a as f64 - *b as f64;
                        t * t
                    })
                    .sum::<f64>()
            })
            .fold(f64::INFINITY, f64::min)
            .sqrt()
    }
}

/// A bank and its layout, with the buffers one image needs: features, per-cell distances, the
/// upsampled and smoothed map.
#[derive(Debug, Clone)]
pub struct PatchScorer {
    layout: PatchLayout,
    bank: PatchBank,
    sigma: f32,
    threads: usize,
    /// The grid to the input, smoothed ([`Smooth`]: its matrices are computed once).
    smooth: Smooth,
    feats: Vec<f32>,
    scratch: Vec<f32>,
    gemm: NearestScratch,
    grid: Map,
    map: Map,
    /// Patches of frames marked good on the device ([`Self::set_overlay`]).
    overlay: Option<PatchBank>,
    /// Per-cell distances to the overlay.
    overlay_grid: Vec<f32>,
}

impl PatchScorer {
    pub fn new(layout: PatchLayout, bank: PatchBank, sigma: f32) -> Result<Self> {
        if bank.dim() != layout.dim {
            return Err(bad(format!(
                "a patch bank of {}-d rows for {}-d patch features",
                bank.dim(),
                layout.dim
            )));
        }
        let p = layout.patches();
        let r = layout.to_input;
        let smooth = Smooth::new(
            (layout.gw, layout.gh),
            (layout.size, layout.size),
            r,
            r,
            sigma,
        );
        Ok(Self {
            threads: rayon::current_num_threads().max(1),
            smooth,
            feats: vec![0f32; p * layout.dim],
            scratch: Vec::new(),
            gemm: NearestScratch::default(),
            grid: Map::new(layout.gw, layout.gh),
            map: Map::new(layout.size, layout.size),
            layout,
            bank,
            sigma,
            overlay: None,
            overlay_grid: vec![0f32; p],
        })
    }

    /// Score each patch against `rows` (`n x dim`) as well as the bank, keeping the smaller
    /// distance; empty `rows` remove the overlay.
    pub fn set_overlay(&mut self, rows: Vec<f32>) -> Result<()> {
        self.overlay = if rows.is_empty() {
            None
        } else {
            Some(PatchBank::new(rows, self.layout.dim)?)
        };
        Ok(())
    }

    /// Rows of the overlay (0 without one).
    pub fn overlay_len(&self) -> usize {
        self.overlay.as_ref().map_or(0, PatchBank::len)
    }

    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Score one image from its tap maps: fills [`Self::grid`] and [`Self::map`] and returns the
    /// map's maximum (the image's patch score).
    pub fn score(&mut self, maps: &[&[f32]]) -> f32 {
        self.layout
            .features_with(maps, self.threads, &mut self.scratch, &mut self.feats);
        let p = self.layout.patches();
        self.bank.nearest_into(
            &self.feats,
            p,
            self.threads,
            &mut self.gemm,
            &mut self.grid.data,
        );
        if let Some(o) = &self.overlay {
            o.nearest_into(
                &self.feats,
                p,
                self.threads,
                &mut self.gemm,
                &mut self.overlay_grid,
            );
            for (g, v) in self.grid.data.iter_mut().zip(&self.overlay_grid) {
                *g = g.min(*v);
            }
        }
        self.smooth.apply(&self.grid, &mut self.map);
        self.map.max().0
    }

    pub fn layout(&self) -> &PatchLayout {
        &self.layout
    }

    pub fn bank(&self) -> &PatchBank {
        &self.bank
    }

    /// The smoothing of the map (its Gaussian's sigma, in input pixels).
    pub fn sigma(&self) -> f32 {
        self.sigma
    }

    /// Per-cell distances of the last image (`gh x gw`).
    pub fn grid(&self) -> &Map {
        &self.grid
    }

    /// The anomaly map of the last image at the model input's size.
    pub fn map(&self) -> &Map {
        &self.map
    }

    /// Patch features of the last image.
    pub fn features(&self) -> &[f32] {
        &self.feats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::Tap;

    fn shape(c: usize, h: usize, w: usize) -> Shape {
        Shape { c, h, w }
    }

    #[test]
    fn box_mean_is_the_clipped_window_mean() {
        let s = shape(2, 3, 4);
        let x: Vec<f32> = (0..s.len()).map(|i| (i * 7 % 11) as f32).collect();
        let mut rows = vec![0f32; s.len()];
        let mut out = vec![0f32; s.len()];
        let all = ([0, 1, 2], [0, 1, 2, 3]);
        let all_masks = RowMasks::new(3, &all.0, 1);
        let isa = Isa::best();
        box_mean_hwc(
            &x,
            s,
            1,
            (&all_masks, &windows(s, 1, &all.1)),
            (isa, false),
            &mut rows,
            &mut out,
        );
        // At some cells only: the same bits there, the others untouched.
        // Split over threads or not: the same bits.
        for par in [false, true] {
            let mut some = vec![-1f32; s.len()];
            let masks = RowMasks::new(3, &[0, 2], 1);
            box_mean_hwc(
                &x,
                s,
                1,
                (&masks, &windows(s, 1, &[1, 3])),
                (isa, par),
                &mut rows,
                &mut some,
            );
            for y in 0..3usize {
                for xx in 0..4usize {
                    let at = (y * 4 + xx) * 2;
                    let want = if y != 1 && xx % 2 == 1 {
                        &out[at..at + 2]
                    } else {
                        &[-1.0, -1.0]
                    };
                    assert_eq!(&some[at..at + 2], want, "({y},{xx}), par {par}");
                }
            }
        }
        for y in 0..3usize {
            for xx in 0..4usize {
                for c in 0..2 {
                    let mut sum = 0f32;
                    let mut n = 0;
                    for yy in y.saturating_sub(1)..(y + 2).min(3) {
                        for xi in xx.saturating_sub(1)..(xx + 2).min(4) {
                            sum += x[(yy * 4 + xi) * 2 + c];
                            n += 1;
                        }
                    }
                    let got = out[(y * 4 + xx) * 2 + c];
                    assert!((got - sum / n as f32).abs() < 1e-5, "({y},{xx},{c})");
                }
            }
        }
    }

    #[test]
    fn bilinear_matches_pytorch_align_corners_false() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4),
        // mode="bilinear", align_corners=False)
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        let x = [0.0, 1.0, 2.0, 3.0];
        let mut out = vec![0f32; 16];
        let at = Sampling::new(shape(1, 2, 2), (4, 4), Resample::HalfPixel);
        bilinear_hwc(
            &x,
            shape(1, 2, 2),
            (&at.ys, &at.xs),
            (1, 0),
            false,
            &mut out,
        );
        assert_eq!(out, want);
        assert_eq!((at.rows, at.cols), (vec![0, 1], vec![0, 1]));
        // A stride-4 map under a stride-8 grid, both centred on their strides' multiples: grid
        // cell j reads cell 2 j exactly, and only those cells.
        let at = Sampling::new(
            shape(1, 8, 8),
            (4, 4),
            Resample::Affine {
                scale: 2.0,
                shift: 0.0,
            },
        );
        assert_eq!(at.cols, [0, 2, 4, 6]);
        assert_eq!(at.xs[1], (2, 2, 0.0));
    }

    fn toy_graph() -> Graph {
        // A 1-channel input, two strided 1x1 convolutions as "taps", then the pool.
        use crate::model::graph::{Activation, Conv, Fold, Op};
        let conv = |name: &str, input, c_in, c_out, stride| {
            Op::Conv(Conv {
                name: name.into(),
                input,
                c_in,
                c_out,
                groups: 1,
                kernel: 1,
                stride,
                padding: 0,
                activation: Activation::None,
                residual: None,
                fold: Fold {
                    bn: format!("{name}.bn"),
                    eps: 1e-5,
                },
            })
        };
        Graph {
            input_channels: 1,
            ops: vec![
                conv("a", 0, 1, 2, 2),
                conv("b", 1, 2, 3, 2),
                Op::GlobalAvgPool { input: 2 },
            ],
            taps: vec![
                Tap {
                    name: "layer2".into(),
                    tensor: 1,
                },
                Tap {
                    name: "layer3".into(),
                    tensor: 2,
                },
            ],
            output: 3,
        }
    }

    #[test]
    fn layout_concatenates_taps_on_the_first_grid() {
        let g = toy_graph();
        let spec = PatchSpec::for_graph(&g).unwrap();
        let l = PatchLayout::new(&g, &spec, 16).unwrap();
        assert_eq!((l.gh, l.gw, l.dim), (8, 8, 5));
        let a = vec![1f32; 8 * 8 * 2];
        let b: Vec<f32> = (0..4 * 4 * 3).map(|i| (i % 3) as f32).collect();
        let f = l.features(&[&a, &b]);
        for p in 0..64 {
            assert_eq!(&f[p * 5..p * 5 + 5], &[1.0, 1.0, 0.0, 1.0, 2.0]);
        }
        let bad = PatchSpec {
            taps: vec!["nope".into()],
            ..spec
        };
        let e = PatchLayout::new(&g, &bad, 16).unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains("layer2"), "{e}");
    }

    #[test]
    fn means_at_the_sampled_cells_are_the_whole_maps_samples() {
        // The stride-2 tap under the stride-4 grid: its means are taken only where the grid
        // reads them, and must be the bits of means over the whole map, then sampled.
        let g = toy_graph();
        let (a, b) = (random(8 * 8 * 2, 11), random(4 * 4 * 3, 12));
        for placement in [MapPlacement::ReceptiveField, MapPlacement::HalfPixel] {
            let spec = PatchSpec {
                taps: vec!["layer3".into(), "layer2".into()],
                neighbourhood: 3,
                placement,
                ..PatchSpec::for_graph(&g).unwrap()
            };
            let l = PatchLayout::new(&g, &spec, 16).unwrap();
            assert_eq!((l.gh, l.gw, l.dim), (4, 4, 5));
            let got = l.features(&[&b, &a]);
            // Split over threads: the same bits.
            let mut par = vec![0f32; got.len()];
            l.features_with(&[&b, &a], 3, &mut Vec::new(), &mut par);
            assert_eq!(par, got, "{placement:?}: threads");
            let mut want = vec![0f32; 16 * 5];
            for (t, map) in l.taps.iter().zip([&b, &a]) {
                let s = t.shape;
                let (all_y, all_x): (Vec<usize>, Vec<usize>) =
                    ((0..s.h).collect(), (0..s.w).collect());
                let (mut rows, mut avg) = (vec![0f32; s.len()], vec![0f32; s.len()]);
                let masks = RowMasks::new(s.h, &all_y, 1);
                let wins = windows(s, 1, &all_x);
                box_mean_hwc(
                    map,
                    s,
                    1,
                    (&masks, &wins),
                    (Isa::Portable, false),
                    &mut rows,
                    &mut avg,
                );
                let table = |n: usize, len: usize| -> Vec<Source> {
                    (0..len)
                        .map(|i| match t.from_grid {
                            Resample::HalfPixel if n != len => source(i, n, len),
                            Resample::HalfPixel => (i, i, 0.0),
                            r => r.source(i, n, len),
                        })
                        .collect()
                };
                let (ys, xs) = (table(s.h, 4), table(s.w, 4));
                bilinear_hwc(&avg, s, (&ys, &xs), (5, t.offset), false, &mut want);
            }
            assert_eq!(got, want, "{placement:?}");
        }
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
    }

    #[test]
    fn gemm_nearest_is_the_exact_scan() {
        let dim = 37;
        let bank = PatchBank::new(random(301 * dim, 1), dim).unwrap();
        // Queries over several chunks, the last one short.
        let m = 2 * CHUNK + 17;
        let q = random(m * dim, 2);
        let mut out = vec![0f32; m];
        let mut scratch = NearestScratch::default();
        bank.nearest_into(&q, m, 2, &mut scratch, &mut out);
        // Whatever the threads (parts of whole chunks, more threads than chunks), the same bits.
        for threads in [1, 3, 4, 64] {
            let mut again = vec![0f32; m];
            bank.nearest_into(&q, m, threads, &mut scratch, &mut again);
            assert_eq!(again, out, "{threads} threads");
        }
        for (i, &d) in out.iter().enumerate() {
            let want = bank.nearest_exact(&q[i * dim..][..dim]);
            assert!(
                (d as f64 - want).abs() < 1e-4 * want.max(1.0),
                "{i}: {d} vs {want}"
            );
        }
        // A bank row as query is at distance 0.
        let row = bank.row(5);
        let mut z = [1f32];
        bank.nearest_into(&row, 1, 1, &mut NearestScratch::default(), &mut z);
        assert!(z[0] < 1e-5, "{}", z[0]);
    }

    #[test]
    fn int8_search_is_exact_where_quantization_cannot_tell_rows_apart() {
        let dim = 16;
        // Rows 0..100 random; rows 100..110 copies of row 7 moved by less than a quantization
        // step (1/127 of the row's largest value) in one coordinate each, an all-zero row, and
        // queries next to each near-copy, far outside the bank's range, and zero.
        let mut rows = random(100 * dim, 21);
        for t in 0..10 {
            let mut r = rows[7 * dim..8 * dim].to_vec();
            r[t] += 1e-4 * (t as f32 + 1.0);
            rows.extend(r);
        }
        rows.extend(vec![0f32; dim]);
        let mut q = Vec::new();
        for t in 0..10 {
            let mut r = rows[(100 + t) * dim..(101 + t) * dim].to_vec();
            r[t] += 2e-5;
            q.extend(r);
        }
        q.extend((0..dim).map(|k| 50.0 * (k as f32 - 7.5)));
        q.extend(vec![0f32; dim]);
        q.extend(random(40 * dim, 22));
        let m = q.len() / dim;
        for isa in [Isa::Portable, Isa::best()] {
            let bank = PatchBank::with_isa(rows.clone(), dim, isa).unwrap();
            let mut out = vec![0f32; m];
            bank.nearest_into(&q, m, 2, &mut NearestScratch::default(), &mut out);
            for (i, &d) in out.iter().enumerate() {
                let want = bank.nearest_exact(&q[i * dim..][..dim]);
                assert!(
                    (d as f64 - want).abs() <= 1e-5 * want.max(1e-3),
                    "{isa:?} query {i}: {d} vs {want}"
                );
            }
            // The near-copies are told apart: each query's own row, at 2e-5.
            assert!(
                out[..10].iter().all(|&d| (d - 2e-5).abs() < 1e-6),
                "{:?}",
                &out[..10]
            );
            assert_eq!(out[11], 0.0, "the zero query meets the zero row");
        }
    }

    #[test]
    fn a_bank_of_several_blocks_keeps_f16_rows_and_finds_the_exact_nearest() {
        // Two whole blocks and a ragged one; queries near rows of each block, and random ones.
        let dim = 6;
        let n = 2 * BLOCK + 37;
        let f32_rows: Vec<f32> = random(n * dim, 3)
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        let f16_rows: Vec<half::f16> = f32_rows.iter().map(|&v| half::f16::from_f32(v)).collect();
        let wide = PatchBank::new(f32_rows.clone(), dim).unwrap();
        let narrow = PatchBank::new(f16_rows, dim).unwrap();
        assert_eq!(narrow.len(), n);
        // Stored as f16 and never packed whole: 2 bytes per value plus the norms.
        assert_eq!(narrow.heap_bytes(), n * dim * 2 + n * 4);
        assert_eq!(wide.heap_bytes(), n * dim * 4 + n * 4);
        let mut q = random(40 * dim, 4);
        for (i, j) in [(0, 5), (1, BLOCK + 9), (2, 2 * BLOCK + 36), (3, BLOCK - 1)] {
            for (k, v) in q[i * dim..][..dim].iter_mut().enumerate() {
                *v = f32_rows[j * dim + k] + 1e-3 * (k as f32 - 2.0);
            }
        }
        let (mut a, mut b) = (vec![0f32; 40], vec![0f32; 40]);
        let mut scratch = NearestScratch::default();
        wide.nearest_into(&q, 40, 2, &mut scratch, &mut a);
        narrow.nearest_into(&q, 40, 2, &mut scratch, &mut b);
        assert_eq!(a, b, "f16 storage scores as its f32 values");
        for (i, &d) in b.iter().enumerate() {
            let want = narrow.nearest_exact(&q[i * dim..][..dim]);
            assert!(
                (d as f64 - want).abs() < 1e-4 * want.max(1.0),
                "{i}: {d} vs {want}"
            );
        }
        assert!(b[..4].iter().all(|&d| d < 0.01), "{:?}", &b[..4]);
        // The distance scratch is one block wide, not the bank's width, and a chunk of queries
        // deep per thread.
        assert_eq!(scratch.dist.len(), 2 * CHUNK * BLOCK);
        // A one-block bank is packed once and scores the same whether stored in f16 or f32.
        let small = PatchBank::new(f32_rows[..100 * dim].to_vec(), dim).unwrap();
        let mut c = vec![0f32; 40];
        small.nearest_into(&q, 40, 1, &mut scratch, &mut c);
        for (i, &d) in c.iter().enumerate() {
            let want = small.nearest_exact(&q[i * dim..][..dim]);
            assert!((d as f64 - want).abs() < 1e-4 * want.max(1.0), "{i}");
        }
    }

    #[test]
    fn coreset_covers_far_clusters_first() {
        // 3 tight clusters of unequal size far apart: a budget of 3 takes one from each.
        let dim = 4;
        let mut rows = Vec::new();
        for (c, count) in [(0f32, 500), (100.0, 20), (-100.0, 3)] {
            for i in 0..count {
                rows.extend([c + (i % 7) as f32 * 0.01, c, -c, 1.0]);
            }
        }
        let picked = coreset(&rows, dim, 3, 7);
        let mut centres: Vec<i32> = picked.iter().map(|&i| rows[i * dim] as i32 / 50).collect();
        centres.sort();
        assert_eq!(centres, vec![-2, 0, 2], "{picked:?}");
        // Deterministic for a seed; everything when under budget.
        assert_eq!(picked, coreset(&rows, dim, 3, 7));
        assert_eq!(coreset(&rows[..8], dim, 5, 0), vec![0, 1]);
        // Projected (dim > PROJECTION_DIM) still separates clusters.
        let dim = 200;
        let mut rows = vec![0f32; 50 * dim];
        for i in 40..50 {
            rows[i * dim..(i + 1) * dim].fill(3.0);
        }
        let picked = coreset(&rows, dim, 2, 1);
        assert_eq!(picked.len(), 2);
        assert_ne!(picked[0] >= 40, picked[1] >= 40, "{picked:?}");
    }

    #[test]
    fn cells_are_placed_on_their_receptive_fields() {
        // The toy graph's taps are 1x1 unpadded stride-2 convolutions: layer2 (8x8 at 16 px)
        // has cell i centred on input pixel 2 i, layer3 (4x4) on pixel 4 i, i.e. layer2's cell 2 i.
        let g = toy_graph();
        let spec = PatchSpec {
            sigma: 0.0,
            ..PatchSpec::for_graph(&g).unwrap()
        };
        assert_eq!(spec.placement, MapPlacement::ReceptiveField);
        let l = PatchLayout::new(&g, &spec, 16).unwrap();
        let a = vec![0f32; 8 * 8 * 2];
        // layer3: channel 0 is the cell's column index, so each grid column shows where it reads.
        let b: Vec<f32> = (0..4 * 4 * 3)
            .map(|i| {
                if i % 3 == 0 {
                    ((i / 3) % 4) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let f = l.features(&[&a, &b]);
        let read: Vec<f32> = (0..8).map(|x| f[x * 5 + 2]).collect();
        // The 3x3 window averages neighbours first (clipped at the border): column means
        // 0.5, 1, 2, 2.5 of layer3, read at cells 0, 0.5, 1, 1.5, 2, 2.5, 3, 3 (clamped).
        assert_eq!(read, [0.5, 0.75, 1.0, 1.5, 2.0, 2.25, 2.5, 2.5]);
        let half = PatchSpec {
            placement: MapPlacement::HalfPixel,
            ..spec.clone()
        };
        let lh = PatchLayout::new(&g, &half, 16).unwrap();
        let fh = lh.features(&[&a, &b]);
        // PyTorch's rule reads cell (x + 0.5) / 2 - 0.5: a quarter cell to the left.
        let read_h: Vec<f32> = (0..8).map(|x| fh[x * 5 + 2]).collect();
        assert_eq!(read_h, [0.5, 0.625, 0.875, 1.25, 1.75, 2.125, 2.375, 2.5]);

        // The map: one odd cell at (row 3, column 5), distance 9, no window and no smoothing.
        let map_of = |spec: &PatchSpec| {
            let spec = PatchSpec {
                neighbourhood: 1,
                ..spec.clone()
            };
            let l = PatchLayout::new(&g, &spec, 16).unwrap();
            let mut s =
                PatchScorer::new(l, PatchBank::new(vec![0f32; 5], 5).unwrap(), 0.0).unwrap();
            let mut a2 = vec![0f32; 8 * 8 * 2];
            a2[(3 * 8 + 5) * 2] = 9.0;
            s.score(&[&a2, &[0f32; 4 * 4 * 3]]);
            s.map().clone()
        };
        // On its receptive field: the full distance at input pixel (10, 6), half a cell away half.
        let m = map_of(&spec);
        let at = |x: usize, y: usize| m.data[y * m.w + x];
        assert_eq!(m.max(), (9.0, (10, 6)));
        assert_eq!(
            (at(9, 6), at(11, 6), at(10, 5), at(10, 7)),
            (4.5, 4.5, 4.5, 4.5)
        );
        // PyTorch's rule puts the cell between pixels 10 and 11, 6 and 7: 3/4 x 3/4 of it on each.
        let m = map_of(&half);
        let at = |x: usize, y: usize| m.data[y * m.w + x];
        assert_eq!(m.max().0, 9.0 * 0.75 * 0.75);
        assert_eq!(
            (at(10, 6), at(11, 6), at(10, 7), at(11, 7)),
            (m.max().0, m.max().0, m.max().0, m.max().0)
        );
    }

    #[test]
    fn specs_without_a_placement_keep_the_half_pixel_rule() {
        // Bundles and runs written before `placement` existed were calibrated on it.
        let g = toy_graph();
        let spec = PatchSpec::for_graph(&g).unwrap();
        let mut v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["placement"], "receptive-field");
        assert_eq!(
            serde_json::from_value::<PatchSpec>(v.clone()).unwrap(),
            spec
        );
        v.as_object_mut().unwrap().remove("placement");
        let old: PatchSpec = serde_json::from_value(v).unwrap();
        assert_eq!(old.placement, MapPlacement::HalfPixel);
    }

    #[test]
    fn scorer_map_peaks_where_the_patch_is_new() {
        let g = toy_graph();
        let spec = PatchSpec {
            sigma: 1.0,
            ..PatchSpec::for_graph(&g).unwrap()
        };
        let l = PatchLayout::new(&g, &spec, 16).unwrap();
        let a = vec![1f32; 8 * 8 * 2];
        let b = vec![0.5f32; 4 * 4 * 3];
        let good = l.features(&[&a, &b]);
        let bank = PatchBank::new(good[..5 * 4].to_vec(), 5).unwrap();
        let mut s = PatchScorer::new(l, bank, spec.sigma).unwrap();
        assert!(s.score(&[&a, &b]) < 1e-3);
        let mut a2 = a.clone();
        // An odd cell at (row 6, column 1) of the 8x8 grid.
        a2[(6 * 8 + 1) * 2] = 9.0;
        let top = s.score(&[&a2, &b]);
        assert!(top > 0.3, "{top}");
        let (_, (x, y)) = s.map().max();
        assert!(
            (0..=5).contains(&x) && (10..=15).contains(&y),
            "peak at {x},{y}"
        );
    }
}

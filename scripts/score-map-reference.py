#!/usr/bin/env python3
"""Golden data for firm-shared's anomaly-map code (shared/src/score/{map,pixel,heat}.rs).

Writes shared/tests/data/score_map_reference.json, which the unit tests read with include_str!:

- `resize`: bilinear resizes with half-pixel centres and edge clamping (PyTorch's
  `F.interpolate(mode="bilinear", align_corners=False)`), computed with
  `skimage.transform.resize(order=1, mode="edge", anti_aliasing=False)`, which is
  `scipy.ndimage.zoom(grid_mode=True)`. The script first checks that this reproduces PyTorch's
  documented 2x2 -> 4x4 result.
- `blur`: `scipy.ndimage.gaussian_filter(x, sigma)` (truncate 4.0, mode "reflect") in float64.
- `pixel`: a small random test set (two defect regions per mask, one mask whose two blocks touch only
  at a corner, two good images, scores rounded so that many tie) with
  `sklearn.metrics.roc_auc_score` over all pixels and AUPRO evaluated straight from its definition
  at every distinct threshold (cross-checked against the MVTec AD evaluation code's cumulative-sum
  form).
- `turbo`: matplotlib's turbo colormap (Google's Turbo, Apache-2.0) at t = k/16, as u8.

Scores are float32 values written as exact decimals, so Rust's f32 sees the same numbers.

Run:  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install numpy scipy scikit-learn scikit-image matplotlib
      /tmp/venv/bin/python scripts/score-map-reference.py
"""

import json
import pathlib

import matplotlib
import numpy as np
import scipy
import scipy.ndimage as ndi
import skimage
import sklearn
from skimage.transform import resize
from sklearn.metrics import roc_auc_score

OUT = pathlib.Path(__file__).resolve().parent.parent / "shared/tests/data/score_map_reference.json"
rng = np.random.default_rng(20261207)


def f32(a):
    return np.asarray(a, dtype=np.float32)


def as_list(a):
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def bilinear(x, h, w):
    return resize(x.astype(np.float64), (h, w), order=1, mode="edge", anti_aliasing=False,
                  preserve_range=True)


# PyTorch: F.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]), scale_factor=2, mode="bilinear",
# align_corners=False) (the example in PyTorch's own upsampling tests).
torch_2x2 = np.array([[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5],
                      [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]])
assert np.allclose(bilinear(np.array([[1.0, 2.0], [3.0, 4.0]]), 4, 4), torch_2x2)

resize_cases = []
for (w, h), (ow, oh) in [((5, 3), (11, 7)), ((7, 6), (3, 4)), ((4, 4), (4, 4)), ((3, 2), (1, 9)),
                         ((6, 5), (13, 2))]:
    x = f32(rng.random((h, w)))
    resize_cases.append({"w": w, "h": h, "out_w": ow, "out_h": oh, "input": as_list(x),
                         "expected": as_list(bilinear(x, oh, ow))})

blur_cases = []
for (w, h), sigma in [((9, 7), 1.3), ((16, 12), 2.0), ((5, 4), 2.0), ((6, 1), 1.0),
                      ((11, 10), 0.6)]:
    x = f32(rng.random((h, w)))
    y = ndi.gaussian_filter(x.astype(np.float64), float(np.float32(sigma)))
    blur_cases.append({"w": w, "h": h, "sigma": sigma, "radius": int(4.0 * sigma + 0.5),
                       "input": as_list(x), "expected": as_list(y)})


# --- pixel metrics -------------------------------------------------------------------------------
W, H = 12, 10
STRUCT = np.ones((3, 3), dtype=int)


def defect_mask(blocks):
    m = np.zeros((H, W), dtype=bool)
    for x0, y0, x1, y1 in blocks:
        m[y0:y1, x0:x1] = True
    return m


masks = [
    defect_mask([(1, 1, 4, 3), (7, 5, 11, 9)]),
    defect_mask([(0, 6, 2, 10), (5, 0, 9, 2)]),
    defect_mask([(3, 3, 6, 6), (8, 1, 9, 2)]),  # a large region and a one-pixel one
    defect_mask([(2, 2, 4, 4), (4, 4, 6, 6)]),  # touch at a corner: one region (8-connected)
    None,
    None,
]
maps = []
for m in masks:
    base = rng.random((H, W))
    if m is not None:
        base = base + 0.6 * m * rng.random((H, W))
    maps.append(f32(np.round(base * 12) / 12))  # coarse levels: many tied scores

scores = np.concatenate([mp.ravel() for mp in maps]).astype(np.float64)
labels = np.concatenate([(m if m is not None else np.zeros((H, W), bool)).ravel() for m in masks])
pix_auroc = roc_auc_score(labels, scores)

regions = []  # per region: (image index, boolean mask)
normal = []
for i, m in enumerate(masks):
    m = m if m is not None else np.zeros((H, W), bool)
    lab, n = ndi.label(m, structure=STRUCT)
    regions += [(i, lab == k + 1) for k in range(n)]
    normal.append(~m)
n_normal = sum(int(nm.sum()) for nm in normal)


def curve_by_definition():
    fprs, pros = [0.0], [0.0]
    for th in np.unique(scores)[::-1]:
        fp = sum(int(((mp >= th) & nm).sum()) for mp, nm in zip(maps, normal))
        pro = np.mean([float((maps[i][r] >= th).sum()) / r.sum() for i, r in regions])
        fprs.append(fp / n_normal)
        pros.append(pro)
    return np.array(fprs + [1.0]), np.array(pros + [1.0])


def curve_mvtec():
    # The cumulative-sum form of MVTec AD's compute_pro (generic_util.py).
    fp_changes, pro_changes = [], []
    for mp, m in zip(maps, masks):
        m = m if m is not None else np.zeros((H, W), bool)
        lab, n = ndi.label(m, structure=STRUCT)
        pc = np.zeros((H, W))
        for k in range(n):
            pc[lab == k + 1] = 1.0 / (lab == k + 1).sum()
        fp_changes.append((lab == 0).astype(np.float64).ravel())
        pro_changes.append(pc.ravel())
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    fprs = np.cumsum(np.concatenate(fp_changes)[order]) / n_normal
    pros = np.cumsum(np.concatenate(pro_changes)[order]) / len(regions)
    keep = np.append(np.diff(s) != 0, True)
    fprs, pros = np.clip(fprs[keep], None, 1.0), np.clip(pros[keep], None, 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def trapezoid(x, y, x_max):
    # As MVTec AD's generic_util.trapezoid: interpolate the curve at x_max when no point is on it.
    from bisect import bisect
    correction = 0.0
    if x_max not in x:
        ins = bisect(x, x_max)
        y_i = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_i + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


fx, fy = curve_by_definition()
mx, my = curve_mvtec()
assert np.allclose(fx, mx, atol=1e-12, rtol=0) and np.allclose(fy, my, atol=1e-12, rtol=0)
aupro = {str(t): trapezoid(fx, fy, t) / t for t in (0.3, 0.05, 1.0)}

pixel = {
    "w": W, "h": H,
    "maps": [as_list(mp) for mp in maps],
    "masks": [None if m is None else [int(b) for b in m.ravel()] for m in masks],
    "n_regions": len(regions),
    "auroc": float(pix_auroc),
    "aupro": aupro,
}

turbo = matplotlib.colormaps["turbo"]
table = np.array(turbo.colors)  # 256 x 3 in 0..1
t = np.linspace(0.0, 1.0, 17) * 255.0
knots = np.stack([np.interp(t, np.arange(256), table[:, c]) for c in range(3)], axis=1)
turbo_u8 = [[int(v) for v in row] for row in np.round(knots * 255.0).astype(int)]

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps({
    "generator": "scripts/score-map-reference.py",
    "versions": {"numpy": np.__version__, "scipy": scipy.__version__,
                 "scikit-learn": sklearn.__version__, "scikit-image": skimage.__version__,
                 "matplotlib": matplotlib.__version__},
    "resize": resize_cases,
    "blur": blur_cases,
    "pixel": pixel,
    "turbo": turbo_u8,
}, indent=None, separators=(",", ":")) + "\n")
print(f"wrote {OUT}: pixel auroc {pix_auroc:.6f}, aupro {aupro}, {len(regions)} regions")

#!/usr/bin/env python3
"""Independent PyTorch EfficientNet-Lite0 (written from the weights' README, not from the Rust code)
that produces the expected features for the Rust test `efficientnet::tests::matches_pytorch`.

    /work/peer/.venv-peer/bin/python tools/reference.py \
        --weights /work/shared/weights/efficientnet-lite0/efficientnet-lite0.safetensors \
        --out tests/efficientnet_lite0_reference.json [--photo cat.jpg ...]

Inputs are closed-form patterns (see `pattern`), regenerated bit-for-bit by the Rust test. The model
runs in eval mode in float64 (the stored reference) and float32 (to report the float32 rounding
noise a correct implementation may show). `--photo` classifies images as a sanity check of this
reference itself (resize shorter side to 256, centre crop 224, (x - 127.5) / 128).
"""

import argparse
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

# (kernel, stride of the first block, expansion, repeats, out channels)
STAGES = [(3, 1, 1, 1, 16), (3, 2, 6, 2, 24), (5, 2, 6, 2, 40), (3, 2, 6, 3, 80),
          (5, 1, 6, 3, 112), (5, 2, 6, 4, 192), (3, 1, 6, 1, 320)]
EPS = 1e-3
# Last block index of stages 5, 6, 7.
TAPS = {"stage5": 10, "stage6": 14, "stage7": 15}

INPUTS = [(224, 224, 0), (96, 128, 1)]  # (height, width, variant)


def pattern(h, w, variant):
    """[1, 3, h, w] float32 in about [-0.95, 0.95]; computed in float64, then rounded."""
    c = np.arange(3, dtype=np.float64).reshape(3, 1, 1)
    y = np.arange(h, dtype=np.float64).reshape(1, h, 1)
    x = np.arange(w, dtype=np.float64).reshape(1, 1, w)
    s = float(variant)
    v = (0.9 * np.sin(0.071 * (y + 1.0) * (c + 1.0) + 0.043 * x + 0.5 * s)
         * np.cos(0.029 * x * (c + 2.0) - 0.017 * y + 0.3 * s)
         + 0.05 * (c - 1.0))
    return torch.from_numpy(v.astype(np.float32)[None])


def bn(x, p, name):
    return F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"],
                        p[f"{name}.weight"], p[f"{name}.bias"], training=False, eps=EPS)


def conv(x, weight, stride=1, groups=1):
    k = weight.shape[-1]
    return F.conv2d(x, weight, None, stride=stride, padding=k // 2, groups=groups)


def forward(p, x):
    """Returns pooled features {head, stage5, stage6, stage7} and the logits."""
    out = {}
    x = F.relu6(bn(conv(x, p["_conv_stem.weight"], stride=2), p, "_bn0"))
    i = 0
    c_in = 32
    for kernel, stride, expand, repeats, c_out in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            pre = f"_blocks.{i}"
            y = x
            if expand != 1:
                y = F.relu6(bn(conv(y, p[f"{pre}._expand_conv.weight"]), p, f"{pre}._bn0"))
            w = p[f"{pre}._depthwise_conv.weight"]
            assert w.shape[-1] == kernel and w.shape[0] == c_in * expand
            y = F.relu6(bn(conv(y, w, stride=s, groups=w.shape[0]), p, f"{pre}._bn1"))
            y = bn(conv(y, p[f"{pre}._project_conv.weight"]), p, f"{pre}._bn2")
            if s == 1 and c_in == c_out:
                y = y + x
            x = y
            c_in = c_out
            for name, last in TAPS.items():
                if last == i:
                    out[name] = x.mean(dim=(2, 3))
            i += 1
    assert i == 16
    x = F.relu6(bn(conv(x, p["_conv_head.weight"]), p, "_bn1"))
    out["head"] = x.mean(dim=(2, 3))
    logits = F.linear(out["head"], p["_fc.weight"], p["_fc.bias"])
    return out, logits


def classify_photo(p, path):
    from PIL import Image
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    a = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    a = (a - 127.5) / 128.0
    _, logits = forward(p, a)
    prob = logits.softmax(-1)[0]
    top = prob.topk(5)
    return [(int(k), round(float(v), 3)) for v, k in zip(top.values, top.indices)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--photo", action="append", default=[])
    args = ap.parse_args()

    p32 = {k: v.float() for k, v in load_file(args.weights).items()}
    p64 = {k: v.double() for k, v in p32.items()}
    torch.set_grad_enabled(False)

    for path in args.photo:
        print(f"{path}: top-5 (class, p) {classify_photo(p32, path)}")

    cases = []
    for h, w, variant in INPUTS:
        x = pattern(h, w, variant)
        f64, logits = forward(p64, x.double())
        f32, _ = forward(p32, x)
        case = {"height": h, "width": w, "variant": variant,
                "top5": [int(k) for k in logits[0].topk(5).indices]}
        for name, v in f64.items():
            ref = v[0]
            rel = float((f32[name][0].double() - ref).abs().max() / ref.abs().max())
            print(f"{h}x{w} {name:6s} dim {ref.numel():4d}  max|x| {float(ref.abs().max()):.4f}"
                  f"  float32-vs-float64 rel {rel:.2e}")
            case[name] = [float(f"{float(t):.7g}") for t in ref]
        print(f"{h}x{w} top5 {case['top5']}  input[0,0,0,:3] {x[0, 0, 0, :3].tolist()}")
        cases.append(case)

    doc = {
        "about": "EfficientNet-Lite0 eval-mode pooled features (float64 PyTorch, tools/reference.py)"
                 " of closed-form inputs: x[c,y,x] = 0.9*sin(0.071*(y+1)*(c+1) + 0.043*x + 0.5*s)"
                 " * cos(0.029*x*(c+2) - 0.017*y + 0.3*s) + 0.05*(c-1), in float64, then float32",
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    assert math.isclose(128 / 255 * 255, 128)
    main()

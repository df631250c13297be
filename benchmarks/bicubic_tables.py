"""Reproduce the published bicubic PSNR tables (Set5, Set14 at x2, x3, x4).

Protocol (one rule for all six numbers, SRCNN's ``demo_SR.m``, used by SRCNN/VDSR/DRCN):
read the image as uint8; colour images -> Y with MATLAB's ``rgb2ycbcr`` on uint8 (Y rounded
to an integer), grayscale images are Y as they are; modcrop(Y, s); LR = imresize(Y/255, 1/s)
and SR = imresize(LR, s) in floating point; SR rounded to uint8 (``uint8(im_b * 255)``);
PSNR on [0, 255] with ``s`` pixels shaved, averaged over the images of the set.

The script also scores the other plausible rules (where the uint8 rounding happens, Y
before or after resizing, grey -> RGB) to show that only the chosen one lands on the tables.

Usage::

    python benchmarks/bicubic_tables.py [--data data] [--out benchmarks/results/bicubic_tables.json]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import landprobe
from landprobe.common.io import save_json
from landprobe.data import SREvalSet, imresize, list_images, modcrop, rgb2y
from landprobe.metrics import psnr

VDSR = {"Set5": {2: 33.66, 3: 30.39, 4: 28.42}, "Set14": {2: 30.24, 3: 27.55, 4: 26.00}}  # Kim et al. 2016 (VDSR, DRCN)
SRCNN = {"Set5": {2: 33.66, 3: 30.39, 4: 28.42}, "Set14": {2: 30.23, 3: 27.54, 4: 26.00}}  # Dong et al. 2016 (TPAMI)


def _round(x):
    return np.clip(np.floor(x + 0.5), 0, 255)


def _alt(rgb_or_gray: np.ndarray, s: int, rule: str) -> float:
    """PSNR of one image under an alternative rule (numpy, float64, [0, 255])."""
    im = rgb_or_gray
    if rule == "grey_as_rgb" and im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=-1)
    im = modcrop(im, s)
    colour = im.ndim == 3
    y_f = rgb2y(im.astype(np.float64) / 255) * 255 if colour else im.astype(np.float64)
    y_u = _round(y_f)
    if rule in ("chosen", "grey_as_rgb"):
        hr, sr = y_u, _round(imresize(imresize(y_u / 255, 1 / s), s) * 255)
    elif rule == "y_uint8_no_rounding":  # SREvalSet(quantize=False)
        hr, sr = y_u, imresize(imresize(y_u / 255, 1 / s), s) * 255
    elif rule == "y_double_no_rounding":  # Y kept in double (rgb2ycbcr(im / 255)), nothing rounded
        hr, sr = y_f, imresize(imresize(y_f / 255, 1 / s), s) * 255
    elif rule == "all_uint8_imresize":  # MATLAB imresize on uint8: each pass rounded to uint8
        lr = imresize(y_u.astype(np.uint8), 1 / s)
        hr, sr = y_u, imresize(lr, s).astype(np.float64)
    elif rule == "lr_and_sr_rounded":  # LR stored as an 8-bit image, SR rounded too
        lr = _round(imresize(y_u / 255, 1 / s) * 255)
        hr, sr = y_u, _round(imresize(lr / 255, s) * 255)
    elif rule == "rgb_resized_then_y":  # resize the uint8 RGB image (MATLAB), then Y in double
        if colour:
            sr_rgb = imresize(imresize(im, 1 / s), s)
            hr, sr = y_f, rgb2y(sr_rgb.astype(np.float64) / 255) * 255
        else:
            hr, sr = y_f, imresize(imresize(im, 1 / s), s).astype(np.float64)
    else:
        raise ValueError(rule)
    return float(psnr(hr, sr, shave=s, data_range=255))


ALT_RULES = [
    "y_uint8_no_rounding",
    "y_double_no_rounding",
    "all_uint8_imresize",
    "lr_and_sr_rounded",
    "rgb_resized_then_y",
    "grey_as_rgb",
]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", type=Path, default=root / "data")
    ap.add_argument("--out", type=Path, default=root / "benchmarks" / "results" / "bicubic_tables.json")
    ap.add_argument("--no-alternatives", action="store_true")
    args = ap.parse_args(argv)
    from PIL import Image

    t0 = time.perf_counter()
    table, per_image = {}, {}
    for name in ("Set5", "Set14"):
        table[name], per_image[name] = {}, {}
        for s in (2, 3, 4):
            ds = SREvalSet(args.data / name, s)
            vals = ds.bicubic_psnr("none")
            table[name][s] = float(np.mean(vals))
            per_image[name][s] = dict(zip(ds.names, vals))
    seconds = time.perf_counter() - t0
    alternatives = {}
    if not args.no_alternatives:
        images = {n: [np.asarray(Image.open(f)) for f in list_images(args.data / n)] for n in ("Set5", "Set14")}
        for rule in ["chosen"] + ALT_RULES:
            alternatives[rule] = {
                n: {s: float(np.mean([_alt(im, s, rule) for im in images[n]])) for s in (2, 3, 4)} for n in images
            }
    max_dev = max(abs(table[n][s] - VDSR[n][s]) for n in VDSR for s in VDSR[n])
    print(f"{'':8s}{'x2':>10s}{'x3':>10s}{'x4':>10s}   (published VDSR/DRCN)")
    for n in ("Set5", "Set14"):
        row = "".join(f"{table[n][s]:10.4f}" for s in (2, 3, 4))
        pub = " / ".join(f"{VDSR[n][s]:.2f}" for s in (2, 3, 4))
        print(f"{n:8s}{row}   ({pub})")
    print(f"max |ours - published| = {max_dev:.4f} dB; all within 0.01 dB: {max_dev < 0.01}")
    for rule, t in alternatives.items():
        dev = max(abs(t[n][s] - VDSR[n][s]) for n in VDSR for s in VDSR[n])
        vals = " ".join(f"{t[n][s]:.4f}" for n in ("Set5", "Set14") for s in (2, 3, 4))
        print(f"  {rule:22s} {vals}  max dev {dev:.4f}")
    result = {
        "command": " ".join(["python benchmarks/bicubic_tables.py", *(argv if argv is not None else sys.argv[1:])]),
        "protocol": __doc__.split("Usage::")[0].strip(),
        "psnr_db": table,
        "published_vdsr_drcn": VDSR,
        "published_srcnn": SRCNN,
        "max_abs_deviation_from_vdsr_db": max_dev,
        "within_0.01_db": bool(max_dev < 0.01),
        "matches_srcnn_to_2_decimals": all(round(table[n][s], 2) == SRCNN[n][s] for n in SRCNN for s in SRCNN[n]),
        "per_image_db": per_image,
        "alternative_rules_db": alternatives,
        "seconds_main_table": seconds,
        "versions": {"landprobe": landprobe.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} torch threads".strip(),
    }
    save_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

"""Independent float64 reference of MATLAB's bicubic imresize, written from its documented
algorithm with explicit per-pixel loops (slow; for small test images only)."""

from __future__ import annotations

import math

import numpy as np


def keys_cubic(d: float) -> float:
    """Keys (1981) cubic convolution kernel, a = -0.5."""
    d = abs(d)
    if d <= 1.0:
        return 1.5 * d**3 - 2.5 * d**2 + 1.0
    if d <= 2.0:
        return -0.5 * d**3 + 2.5 * d**2 - 4.0 * d + 2.0
    return 0.0


def mirror(k: int, n: int) -> int:
    """MATLAB's out-of-range rule: 1-based index k into [1..n, n..1] repeated (0-based result)."""
    period = 2 * n
    r = (k - 1) % period
    return r if r < n else period - 1 - r


def matlab_round(v: float) -> float:
    """Round half away from zero, saturate to [0, 255] (MATLAB's uint8 conversion)."""
    r = math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)
    return float(min(255, max(0, r)))


def resize_line(line: np.ndarray, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    n = len(line)
    shrink = scale < 1 and antialias
    width = 4.0 / scale if shrink else 4.0
    out = np.empty(out_len, dtype=np.float64)
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        acc = 0.0
        total = 0.0
        for j in range(int(math.ceil(width)) + 2):
            k = left + j
            d = u - k
            w = scale * keys_cubic(scale * d) if shrink else keys_cubic(d)
            acc += w * float(line[mirror(k, n)])
            total += w
        out[i - 1] = acc / total
    return out


def reference_imresize(img: np.ndarray, scale=None, size=None, antialias=True, uint8=False) -> np.ndarray:
    """img: (H, W) float64 (or uint8-valued if ``uint8``). Returns float64 (H', W')."""
    img = np.asarray(img, dtype=np.float64)
    H, W = img.shape
    if size is not None:
        out_hw = tuple(size)
        scales = (out_hw[0] / H, out_hw[1] / W)
    else:
        scales = (scale, scale) if np.isscalar(scale) else tuple(scale)
        out_hw = (math.ceil(scales[0] * H), math.ceil(scales[1] * W))
    dims = [0, 1] if scales[0] <= scales[1] else [1, 0]
    cur = img
    for d in dims:
        if d == 0:
            nxt = np.empty((out_hw[0], cur.shape[1]))
            for c in range(cur.shape[1]):
                nxt[:, c] = resize_line(cur[:, c], out_hw[0], scales[0], antialias)
        else:
            nxt = np.empty((cur.shape[0], out_hw[1]))
            for r in range(cur.shape[0]):
                nxt[r, :] = resize_line(cur[r, :], out_hw[1], scales[1], antialias)
        if uint8:
            nxt = np.vectorize(matlab_round)(nxt)
        cur = nxt
    return cur

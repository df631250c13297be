"""PSNR as the SR tables compute it: per image, Y in [0, 255], a border shaved."""

from __future__ import annotations

import numpy as np
from einops import rearrange
import torch

__all__ = ["psnr"]


def _as_nchw(x, name):
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.array(x) if not x.flags.writeable else np.ascontiguousarray(x))
        if t.dim() == 3:
            t = rearrange(t, "h w c -> c h w")
        elif t.dim() != 2:
            raise ValueError(f"psnr: numpy `{name}` must be (H, W) or (H, W, C), got shape {x.shape}.")
    elif isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dim() not in (2, 3, 4):
            raise ValueError(
                f"psnr: `{name}` must be (N, C, H, W), (C, H, W) or (H, W), got shape {tuple(x.shape)}."
            )
    else:
        raise TypeError(f"psnr: `{name}` must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")
    if not (t.dtype.is_floating_point or t.dtype == torch.uint8):
        raise TypeError(f"psnr: `{name}` dtype must be floating point or uint8, got {t.dtype}.")
    batched = t.dim() == 4
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t, batched


def _check_values(h: torch.Tensor, s: torch.Tensor, data_range: float) -> None:
    """ValueError for non-finite values and for images far outside ``[0, data_range]``."""
    for name, t in (("hr", h), ("sr", s)):
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"psnr: `{name}` contains {bad} NaN or inf value(s); PSNR needs finite images.")
    hint = (" for images in [0, 255] pass data_range=255 (or divide them by 255 to keep data_range=1)"
            if data_range < 255 else " pass the images' white level as data_range")
    top = float(h.max())
    if top > 1.5 * data_range:
        raise ValueError(f"psnr: `hr` has values up to {top:g} with data_range={data_range:g}:{hint}.")
    low = float(h.min())
    if low < -0.5 * data_range:
        raise ValueError(f"psnr: `hr` has values down to {low:g}; images must lie in [0, data_range] "
                         f"(data_range={data_range:g}), e.g. (x + 1) / 2 for images in [-1, 1].")
    mean = float(s.to(torch.float64).mean())
    if mean > 1.5 * data_range:
        raise ValueError(f"psnr: `sr` has mean {mean:g} with data_range={data_range:g}, far above white:{hint}.")


def psnr(hr, sr, shave: int = 0, *, data_range: float | None = None, reduction: str = "none"):
    """Peak signal-to-noise ratio per image, on the [0, 255] scale of the SR literature.

    Convention:
        Both images are brought to [0, 255] by ``x * 255 / data_range``; ``sr`` is first
        clamped to ``[0, data_range]`` (an output outside the displayable range is scored as
        displayed); ``hr`` is used as is. ``shave`` pixels are removed on each side, then
        ``PSNR = 10 log10(255^2 / MSE)`` with the MSE over channels and pixels of each image,
        in float64 (``inf`` for identical images). Tables average these per-image values.
        Rule: float images in [0, 1] use the default (``data_range=1.0``); float images in
        [0, 255] need ``data_range=255``; uint8 images have ``data_range=255`` (the default
        for them). Both images have the same kind of dtype (both uint8 or both float). Score
        the Y channel (``rgb2y``).

    Input checks (a wrongly scaled pair would otherwise score a plausible-looking number):
        NaN or inf in either image, a uint8 image beside a float one, a uint8 image with a
        ``data_range`` other than 255, an ``hr`` above ``1.5 * data_range`` or below
        ``-0.5 * data_range``, and an ``sr`` whose mean is above ``1.5 * data_range`` (e.g.
        [0, 255] images scored with ``data_range=1.0``) raise ``ValueError``. Single ``sr``
        values outside ``[0, data_range]`` are allowed: they are clamped, as above.

    Args:
        hr: Reference (ground truth), ``(N, C, H, W)``, ``(C, H, W)`` or ``(H, W)`` tensor,
            or numpy ``(H, W)`` / ``(H, W, C)``.
        sr: Estimate, same shape.
        shave: Border pixels ignored on each side (the scale factor, by convention).
        data_range: Value of white in the inputs (1.0 or 255). ``None`` (default): 255 for
            uint8 images, 1.0 for float images.
        reduction: ``"none"``: one value per image (shape ``(N,)`` for 4-D input, a scalar
            otherwise); ``"mean"``: the mean over the batch.

    Returns:
        float64 tensor (numpy value for numpy inputs), in dB.

    Raises:
        ValueError: On shape mismatch, a too large or negative ``shave``, a non-positive
            ``data_range``, an unknown ``reduction``, or inputs that fail the checks above
            (NaN/inf, mixed uint8/float, values far outside ``[0, data_range]``).
        TypeError: If an input is not a tensor/array of float or uint8 dtype.

    Example:
        >>> import torch
        >>> from landprobe.metrics import psnr
        >>> hr = torch.zeros(2, 1, 8, 8)
        >>> sr = hr.clone(); sr[0] += 1 / 255; sr[1] += 2 / 255   # MSE 1 and 4 on [0, 255]
        >>> psnr(hr, sr).tolist()                                 # 20 log10(255), minus 6.02
        [48.1308..., 42.1102...]
        >>> round(float(psnr(hr, sr, shave=2, reduction="mean")), 4)
        45.1205
        >>> u8 = torch.zeros(1, 8, 8, dtype=torch.uint8)
        >>> round(float(psnr(u8, u8 + 1)), 4)                   # uint8: data_range 255
        48.1308
        >>> round(float(psnr(hr * 255, sr * 255, data_range=255, reduction="mean")), 4)
        45.1205
        >>> psnr(hr + 200, sr)
        Traceback (most recent call last):
            ...
        ValueError: psnr: `hr` has values up to 200 with data_range=1: for images in [0, 255] pass data_range=255 (or divide them by 255 to keep data_range=1).
    """
    h, batched = _as_nchw(hr, "hr")
    s, _ = _as_nchw(sr, "sr")
    if h.shape != s.shape:
        raise ValueError(f"psnr: `hr` and `sr` must have the same shape, got {tuple(hr.shape)} and {tuple(sr.shape)}.")
    is_u8 = h.dtype == torch.uint8
    if is_u8 != (s.dtype == torch.uint8):
        raise ValueError(f"psnr: `hr` is {h.dtype} and `sr` is {s.dtype}; give both as uint8 (range 255) or both "
                         f"as float (e.g. x.float() / 255 for [0, 1] with the default data_range).")
    if data_range is None:
        data_range = 255.0 if is_u8 else 1.0
    if not isinstance(data_range, (int, float)) or isinstance(data_range, bool) or not data_range > 0:
        raise ValueError(f"psnr: `data_range` must be a positive number (1.0 for [0, 1] images, 255 for [0, 255]), got {data_range!r}.")
    if is_u8 and data_range != 255:
        raise ValueError(f"psnr: uint8 images have data_range=255, got data_range={data_range!r}; "
                         f"omit it or pass 255.")
    if isinstance(shave, bool) or not isinstance(shave, (int, np.integer)) or shave < 0:
        raise ValueError(f"psnr: `shave` must be a non-negative integer (the scale factor), got {shave!r}.")
    H, W = h.shape[-2:]
    if 2 * shave >= min(H, W):
        raise ValueError(f"psnr: `shave`={shave} removes the whole {H}x{W} image; use a smaller shave.")
    if reduction not in ("none", "mean"):
        raise ValueError(f"psnr: `reduction` must be 'none' or 'mean', got {reduction!r}.")
    if not is_u8:
        _check_values(h, s, float(data_range))
    if shave:
        h = h[..., shave:-shave, shave:-shave]
        s = s[..., shave:-shave, shave:-shave]
    k = 255.0 / float(data_range)
    h64 = h.to(torch.float64) * k
    s64 = s.to(torch.float64).clamp(0.0, float(data_range)) * k
    mse = (h64 - s64).pow(2).mean(dim=(1, 2, 3))
    out = 10.0 * torch.log10(255.0**2 / mse)
    if reduction == "mean":
        out = out.mean()
    elif not batched:
        out = out[0]
    if isinstance(hr, np.ndarray):
        return out.cpu().numpy()[()] if out.dim() == 0 else out.cpu().numpy()
    return out

"""Colour conversion (MATLAB ``rgb2ycbcr`` / ``ycbcr2rgb``, ITU-R BT.601) and ``modcrop``."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rgb2ycbcr", "ycbcr2rgb", "rgb2y", "modcrop"]

# MATLAB's rgb2ycbcr: rows give Y, Cb, Cr from R, G, B in [0, 1], result in [0, 255] units.
_M = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64
)
_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float64)
_M_INV = np.linalg.inv(_M)


def _channels_axis(x, name):
    if isinstance(x, torch.Tensor):
        if x.dim() < 3 or x.shape[-3] != 3:
            raise ValueError(
                f"{name}: a tensor must have 3 channels at dim -3, i.e. (3, H, W) or (N, 3, H, W); "
                f"got shape {tuple(x.shape)}."
            )
        return -3
    if isinstance(x, np.ndarray):
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"{name}: a numpy image must be (H, W, 3), got shape {x.shape}.")
        return -1
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")


def _round_half_away(x):
    if isinstance(x, torch.Tensor):
        return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _to_unit(x, name):
    """Float view on the [0, 1] scale and whether the input was uint8."""
    _channels_axis(x, name)
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.uint8:
            return x.to(torch.float64) / 255.0, True
        if x.dtype.is_floating_point:
            return x, False
    else:
        if x.dtype == np.uint8:
            return x.astype(np.float64) / 255.0, True
        if np.issubdtype(x.dtype, np.floating):
            return x, False
    raise TypeError(
        f"{name}: dtype must be floating point (range [0, 1]) or uint8 (range [0, 255]), got {x.dtype}."
    )


def _apply(u, A, b):
    """A @ u + b over the channel axis (dim -3 for tensors, last for numpy)."""
    if isinstance(u, torch.Tensor):
        At = torch.as_tensor(A, dtype=u.dtype, device=u.device)
        bt = torch.as_tensor(b, dtype=u.dtype, device=u.device).view(-1, 1, 1)
        return torch.einsum("ij,...jhw->...ihw", At, u) + bt
    return (np.einsum("ij,...j->...i", A, u) + b).astype(u.dtype, copy=False)


def _from_unit(y, was_uint8):
    if not was_uint8:
        return y
    y = _round_half_away(y * 255.0)
    if isinstance(y, torch.Tensor):
        return y.clamp_(0, 255).to(torch.uint8)
    return np.clip(y, 0, 255).astype(np.uint8)


def rgb2ycbcr(rgb):
    """RGB to YCbCr as MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, studio swing).

    Convention:
        ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` for R, G, B in [0, 1], giving
        Y in [16, 235] and Cb, Cr in [16, 240] on the [0, 255] scale. Float input is taken
        in [0, 1] and gives float output on the same scale (Y in [16/255, 235/255]);
        uint8 input in [0, 255] gives uint8 output rounded half away from zero, as MATLAB.
        Channels at dim -3 for tensors (``(3, H, W)``, ``(N, 3, H, W)``), last for numpy
        ``(H, W, 3)``.

    Args:
        rgb: RGB image (tensor or array).

    Returns:
        YCbCr image of the same type, layout and dtype.

    Raises:
        ValueError: If the channel dimension is not 3.
        TypeError: If ``rgb`` is not a tensor/array of float or uint8 dtype.

    Example:
        >>> import numpy as np
        >>> from landprobe.data import rgb2ycbcr
        >>> px = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8)
        >>> rgb2ycbcr(px)[0].tolist()        # white, black, red (Y = 16 + 65.481 = 81.481)
        [[235, 128, 128], [16, 128, 128], [81, 90, 240]]
    """
    u, was_uint8 = _to_unit(rgb, "rgb2ycbcr")
    return _from_unit(_apply(u, _M / 255.0, _OFFSET / 255.0), was_uint8)


def ycbcr2rgb(ycbcr):
    """YCbCr to RGB, the exact inverse of :func:`rgb2ycbcr` (as MATLAB's ``ycbcr2rgb``).

    Convention:
        Same ranges and layouts as :func:`rgb2ycbcr`; float output is not clipped.

    Args:
        ycbcr: YCbCr image (tensor or array), float on the [0, 1] scale or uint8.

    Returns:
        RGB image of the same type, layout and dtype.

    Raises:
        ValueError: If the channel dimension is not 3.
        TypeError: If ``ycbcr`` is not a tensor/array of float or uint8 dtype.

    Example:
        >>> import torch
        >>> from landprobe.data import rgb2ycbcr, ycbcr2rgb
        >>> x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
        >>> bool((ycbcr2rgb(rgb2ycbcr(x)) - x).abs().max() < 1e-12)
        True
    """
    u, was_uint8 = _to_unit(ycbcr, "ycbcr2rgb")
    # rgb = 255 * M^-1 (ycbcr - offset / 255), all on the [0, 1] scale
    return _from_unit(_apply(u, _M_INV * 255.0, -(_M_INV * 255.0) @ (_OFFSET / 255.0)), was_uint8)


def rgb2y(rgb):
    """Luma Y of MATLAB's ``rgb2ycbcr`` (ITU-R BT.601), the channel SR tables are scored on.

    Convention:
        As :func:`rgb2ycbcr`, first channel only. Tensors keep a channel dim of size 1
        (``(N, 1, H, W)`` / ``(1, H, W)``); numpy ``(H, W, 3)`` gives ``(H, W)``.

    Args:
        rgb: RGB image, float in [0, 1] or uint8.

    Returns:
        Y, same type and dtype; float Y lies in [16/255, 235/255].

    Raises:
        ValueError: If the channel dimension is not 3.
        TypeError: If ``rgb`` is not a tensor/array of float or uint8 dtype.

    Example:
        >>> import torch
        >>> from landprobe.data import rgb2y
        >>> y = rgb2y(torch.ones(3, 1, 1, dtype=torch.float64))   # white -> 235/255
        >>> y.shape, round(y.item() * 255, 10)
        (torch.Size([1, 1, 1]), 235.0)
    """
    u, was_uint8 = _to_unit(rgb, "rgb2y")
    y = _from_unit(_apply(u, _M[:1] / 255.0, _OFFSET[:1] / 255.0), was_uint8)
    if isinstance(y, np.ndarray):
        return np.ascontiguousarray(y[..., 0])
    return y


def modcrop(image, scale: int):
    """Crop height and width down to multiples of ``scale``, keeping the top-left corner.

    As the SR evaluation scripts' ``modcrop``: ``img(1:H - mod(H, s), 1:W - mod(W, s), :)``.

    Args:
        image: Tensor ``(..., H, W)`` or numpy ``(H, W)`` / ``(H, W, C)``.
        scale: Positive integer.

    Returns:
        The cropped view (no copy).

    Raises:
        ValueError: If ``scale`` is not a positive integer.

    Example:
        >>> import torch
        >>> from landprobe.data import modcrop
        >>> modcrop(torch.zeros(3, 10, 7), 3).shape
        torch.Size([3, 9, 6])
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"modcrop: `scale` must be a positive integer, got {scale!r}.")
    if isinstance(image, torch.Tensor):
        h, w = image.shape[-2:]
        return image[..., : h - h % scale, : w - w % scale]
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]

"""MATLAB-compatible bicubic ``imresize`` as cached weight matrices applied by matmul."""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from einops import rearrange
import torch

__all__ = ["imresize", "cubic", "resize_weights"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's ``imresize`` defines it.

    Args:
        x: Distances (any shape), in input pixels.

    Returns:
        Kernel values, float64, zero for ``|x| > 2``.

    Example:
        >>> from landprobe.data import cubic
        >>> cubic([0.0, 0.5, 1.0, 1.5, 2.0]).tolist()   # 1, (1.5/8 - 2.5/4 + 1), 0, ...
        [1.0, 0.5625, 0.0, -0.0625, 0.0]
    """
    x = np.abs(np.asarray(x, dtype=np.float64))
    x2, x3 = x * x, x * x * x
    return (1.5 * x3 - 2.5 * x2 + 1.0) * (x <= 1) + (-0.5 * x3 + 2.5 * x2 - 4.0 * x + 2.0) * (
        (x > 1) & (x <= 2)
    )


def _contributions(in_len: int, out_len: int, scale: float, antialias: bool):
    """MATLAB's ``contributions``: raw 1-based tap indices (may leave [1, in_len]) and weights."""
    kernel_width = 4.0
    if scale < 1 and antialias:
        # MATLAB: h = @(x) scale * kernel(scale * x); kernel_width = kernel_width / scale
        def h(x):
            return scale * cubic(scale * x)

        kernel_width = kernel_width / scale
    else:
        h = cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # output pixel centre in input coordinates
    left = np.floor(u - kernel_width / 2.0).astype(np.int64)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.int64)[None, :]
    w = h(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    return left, idx, w


def _mirror(idx1: np.ndarray, in_len: int) -> np.ndarray:
    """MATLAB's boundary rule: 1-based indices into ``[1:n, n:-1:1]`` repeated; 0-based out."""
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    return aux[np.mod(idx1 - 1, 2 * in_len)]


@functools.lru_cache(maxsize=256)
def _weights_np(in_len: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    _, idx, w = _contributions(in_len, out_len, scale, antialias)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), idx.shape[1]), _mirror(idx, in_len).ravel()), w.ravel())
    mat.setflags(write=False)
    return mat


_MAX_PHASES = 16


@functools.lru_cache(maxsize=256)
def _polyphase_np(in_len: int, out_len: int, scale: float, antialias: bool):
    """Polyphase form of the weights when they repeat every ``p`` outputs (integer and
    1/integer scales, and rationals with a small numerator), else None.

    Output ``m * p + r`` = sum_j kernels[r][j] * in[pad[m * q + j]], with ``pad`` the
    mirrored input indices; applied as shifted strided adds (a few taps per pixel).
    """
    left, idx, w = _contributions(in_len, out_len, scale, antialias)
    taps = w.shape[1]
    for p in range(1, min(_MAX_PHASES, out_len) + 1):
        if out_len <= p:
            break
        steps = left[p:] - left[:-p]
        if np.all(steps == steps[0]) and steps[0] > 0 and np.allclose(w[p:], w[:-p], rtol=0, atol=1e-13):
            q = int(steps[0])
            base = int(left[:p].min())
            offsets = left[:p] - base
            length = int(offsets.max()) + taps
            kernels = np.zeros((p, length))
            for r in range(p):
                kernels[r, offsets[r] : offsets[r] + taps] = w[r]
            m = -(-out_len // p)
            pad = _mirror(base + np.arange((m - 1) * q + length), in_len)
            return p, q, m, tuple(tuple(float(v) for v in row) for row in kernels), pad
    return None


def resize_weights(in_len: int, out_len: int, scale: float | None = None, antialias: bool = True) -> np.ndarray:
    """The dense ``(out_len, in_len)`` float64 matrix that resizes one dimension.

    Mirrored boundary taps are summed into the matrix, so ``out = W @ x`` equals MATLAB's
    gather-and-weight. Matrices are cached per ``(in_len, out_len, scale, antialias)``.

    Args:
        in_len: Input length along the dimension.
        out_len: Output length.
        scale: Scale factor used for the coordinate mapping; ``out_len / in_len`` if None.
        antialias: Widen the kernel by ``1/scale`` when shrinking (MATLAB's default).

    Returns:
        A read-only float64 array whose rows sum to 1.

    Example:
        >>> from landprobe.data import resize_weights
        >>> W = resize_weights(4, 2)            # halve: each output averages a 4+ tap window
        >>> W.shape, bool(abs(W.sum(axis=1) - 1).max() < 1e-12)
        ((2, 4), True)
    """
    if scale is None:
        scale = out_len / in_len
    return _weights_np(int(in_len), int(out_len), float(scale), bool(antialias))


_TORCH_CACHE: dict = {}


def _cached_tensor(kind, key, make, device, dtype=None):
    full = (kind, key, str(device), dtype)
    t = _TORCH_CACHE.get(full)
    if t is None:
        if len(_TORCH_CACHE) > 1024:
            _TORCH_CACHE.clear()
        t = make().to(device=device, dtype=dtype) if dtype is not None else make().to(device)
        _TORCH_CACHE[full] = t
    return t


def _resize_rows(x: torch.Tensor, in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Resize dim -2 of ``x`` (any strides); returns a contiguous tensor."""
    key = (in_len, out_len, scale, antialias)
    plan = _polyphase_np(*key)
    if plan is None:
        W = _cached_tensor("dense", key, lambda: torch.from_numpy(np.array(_weights_np(*key))), x.device, x.dtype)
        return torch.matmul(W, x)
    p, q, m, kernels, pad = plan
    pad_t = _cached_tensor("pad", key, lambda: torch.from_numpy(pad), x.device)
    xp = x.index_select(-2, pad_t)  # mirrored border, contiguous
    out = x.new_empty(*x.shape[:-2], m, p, x.shape[-1])
    span = (m - 1) * q + 1
    for r in range(p):
        acc = out.select(-2, r)
        acc.zero_()
        for j, wj in enumerate(kernels[r]):
            if wj != 0.0:
                acc.add_(xp[..., j : j + span : q, :], alpha=wj)
    return out.view(*x.shape[:-2], m * p, x.shape[-1])[..., :out_len, :]


def _round_uint8(x: torch.Tensor) -> torch.Tensor:
    # MATLAB rounds half away from zero, then saturates to [0, 255]. Clipping first is the
    # same (a negative value rounds to <= 0, a value above 255 to >= 255), and on [0, 255]
    # half away from zero is floor(x + 0.5). In place: x is a fresh intermediate.
    return x.clamp_(0, 255).add_(0.5).floor_()


def _resolve(in_hw, scale, size):
    if (scale is None) == (size is None):
        raise ValueError(
            "imresize needs exactly one of `scale` (e.g. 0.5) or `size` (e.g. (256, 256)); "
            f"got scale={scale!r}, size={size!r}."
        )
    if size is not None:
        if isinstance(size, int) or len(size) != 2:
            raise ValueError(f"imresize `size` must be (height, width), got {size!r}.")
        out_hw = tuple(int(s) for s in size)
        if min(out_hw) < 1:
            raise ValueError(f"imresize `size` must be positive, got {size!r}.")
        scales = tuple(o / i for o, i in zip(out_hw, in_hw))
    else:
        if isinstance(scale, (int, float)):
            scales = (float(scale), float(scale))
        elif len(scale) == 2:
            scales = (float(scale[0]), float(scale[1]))
        else:
            raise ValueError(f"imresize `scale` must be a number or (scale_h, scale_w), got {scale!r}.")
        if min(scales) <= 0 or not all(math.isfinite(s) for s in scales):
            raise ValueError(f"imresize `scale` must be positive and finite, got {scale!r}.")
        out_hw = tuple(int(math.ceil(s * i)) for s, i in zip(scales, in_hw))
    return out_hw, scales


def imresize(
    image,
    scale: float | Sequence[float] | None = None,
    *,
    size: Sequence[int] | None = None,
    antialias: bool = True,
):
    """Resize like MATLAB's ``imresize(image, scale, 'bicubic')``.

    Convention:
        Cubic kernel a = -0.5; antialiased when shrinking (kernel widened by ``1/scale``);
        output pixel ``x`` (1-based) maps to input ``x / scale + 0.5 * (1 - 1 / scale)``;
        out-of-range taps mirror symmetrically (``[1..n, n..1]``, edge pixel repeated);
        output size ``ceil(scale * H)``; the dimension with the smaller scale is resized
        first (height first on ties). Torch layouts ``(N, C, H, W)``, ``(C, H, W)``,
        ``(H, W)``; numpy layouts ``(H, W)`` or ``(H, W, C)``. Float in, same float dtype
        out (no clipping). ``uint8`` in, ``uint8`` out: like MATLAB each dimension's pass is
        computed in float64 then rounded half away from zero and clipped to [0, 255].

    The weights are computed once per ``(in size, out size, scale)`` and cached. When they
    repeat every few outputs (integer and 1/integer scales, the SR case) each dimension is a
    handful of shifted strided multiply-adds (polyphase form, ``P`` taps per output pixel);
    otherwise a matmul with the dense weight matrix. Tensors stay on their device and the
    operation is differentiable.

    Args:
        image: Torch tensor or numpy array (see Convention).
        scale: Scale factor, or ``(scale_h, scale_w)``. Give this or ``size``.
        size: Output ``(height, width)``; then each scale is ``out / in``.
        antialias: Antialias when shrinking (MATLAB's default True).

    Returns:
        The resized image, same type, layout and dtype as ``image``.

    Raises:
        TypeError: If ``image`` is not a tensor/array, or has an unsupported dtype.
        ValueError: If neither or both of ``scale``/``size`` are given, they are not
            positive, or ``image`` has an unsupported number of dimensions.

    Example:
        >>> import torch
        >>> from landprobe.data import imresize
        >>> x = torch.full((1, 3, 6, 5), 0.25, dtype=torch.float64)
        >>> y = imresize(x, 0.5)                      # ceil(3.0), ceil(2.5) -> 3 x 3
        >>> y.shape, bool((y - 0.25).abs().max() < 1e-12)   # constants stay constant
        (torch.Size([1, 3, 3, 3]), True)
        >>> imresize(torch.tensor([[0, 255]], dtype=torch.uint8), size=(1, 4)).tolist()
        [[0, 52, 203, 255]]
    """
    is_numpy = isinstance(image, np.ndarray)
    if is_numpy:
        arr = image if image.flags.writeable else image.copy()  # torch wants writable memory
        if arr.ndim == 2:
            t = torch.from_numpy(np.ascontiguousarray(arr))
        elif arr.ndim == 3:
            t = rearrange(torch.from_numpy(np.ascontiguousarray(arr)), "h w c -> c h w")
        else:
            raise ValueError(
                f"imresize: a numpy image must be (H, W) or (H, W, C), got shape {arr.shape}."
            )
    elif isinstance(image, torch.Tensor):
        t = image
        if t.dim() not in (2, 3, 4):
            raise ValueError(
                f"imresize: a tensor must be (N, C, H, W), (C, H, W) or (H, W), got shape {tuple(t.shape)}."
            )
    else:
        raise TypeError(f"imresize: `image` must be a torch.Tensor or numpy.ndarray, got {type(image).__name__}.")

    if t.dtype == torch.uint8:
        work_dtype, is_uint8 = torch.float64, True
    elif t.dtype.is_floating_point:
        work_dtype, is_uint8 = t.dtype, False
    else:
        raise TypeError(
            f"imresize: `image` dtype must be floating point or uint8, got {t.dtype}; "
            "convert it, e.g. image.float() / 255."
        )
    in_hw = (t.shape[-2], t.shape[-1])
    out_hw, scales = _resolve(in_hw, scale, size)
    x = t.to(work_dtype, memory_format=torch.contiguous_format)  # numpy HWC comes in channels-last
    order = sorted(range(2), key=lambda d: scales[d])  # stable: height first on ties
    for d in order:
        if scales[d] == 1.0 and out_hw[d] == in_hw[d]:
            continue  # identity (MATLAB skips it as well)
        if d == 0:
            x = _resize_rows(x, in_hw[0], out_hw[0], scales[0], antialias)
        else:  # the width as rows of the transposed view; index_select makes it contiguous
            x = _resize_rows(x.transpose(-1, -2), in_hw[1], out_hw[1], scales[1], antialias).transpose(-1, -2)
        if is_uint8:
            x = _round_uint8(x)
    x = x.contiguous()
    if is_uint8:
        x = x.to(torch.uint8)
    if is_numpy:
        out = x.numpy()
        return np.ascontiguousarray(out.transpose(1, 2, 0)) if image.ndim == 3 else out
    return x

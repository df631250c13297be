"""An AutoNEB band's vector algebra: segments, their inner products, the nudged momentum step
and the re-spacing, over the band's images as the rows of matrices.

Per parameter, the images θ_0 … θ_{n−1} are stacked along dim 0 and seen as an
(images, numbers) matrix over the stack's memory (:func:`rows_of`). Every operation runs on
column blocks of these matrices: a large stack is swept block by block, each block small enough
that its rows of every operand stay in cache through all the operations on it, so that a step
reads the band from memory three times, not once per operation: the Gram products of the
segments and the gradients in one sweep, the nudged momentum step with the new segments' lengths
in a second, the re-spacing in a third. The segments θ_{j+1} − θ_j of a block are formed in a
cache-sized scratch buffer where a sweep needs them, never stored whole. A small stack is one
block. The tangent of image i is a·(θ_{i+1} − θ_i) + b·(θ_i − θ_{i−1}), so the nudged step
needs only inner products of the segments and the gradients.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from itertools import accumulate
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["rows_of", "nudged_step", "respace"]

#: numbers per column block of all rows of one operand (256 KB of float32): the blocks of the
#: five operands of the nudged step (images, gradients, momentum, two scratch buffers) fit a
#: 2 MB L2 cache together
_BLOCK = 1 << 16
#: images of at most this many numbers are small: a band of them re-spaces with batched
#: gathers (one call per parameter) instead of a call per moved image, and AutoNEB evaluates
#: its ends in the interior images' model call and sets all its parameters side by side
SMALL = 4096


def rows_of(stack: Tensor, like: Tensor | None = None) -> Tensor:
    """``stack`` (images along dim 0) as an (images, numbers) matrix, with the numbers in the
    memory order of ``like`` (default: of ``stack``): a view where the layouts allow, else a copy."""
    like = stack if like is None else like
    order = [0] + sorted(range(1, like.dim()), key=lambda k: like.stride(k), reverse=True)
    return stack.permute(order).reshape(stack.shape[0], -1)


def _blocks(x: Tensor) -> list[slice]:
    """Column slices of the matrix ``x``, each at most :data:`_BLOCK` numbers over all its rows."""
    width = max(1, _BLOCK // max(1, x.shape[0]))
    n = x.shape[1]
    return [slice(None)] if n <= width else [slice(c, c + width) for c in range(0, n, width)]


def _scratch(space: dict[Any, Tensor], key: str, rows: int, like: Tensor, width: int) -> Tensor:
    """A (rows, width) buffer in ``like``'s dtype and device, kept in ``space`` from step to
    step (a block's segments or update: it stays in cache from block to block)."""
    buf = space.get(key)
    if buf is None or buf.shape[0] != rows or buf.shape[1] < width or buf.dtype != like.dtype \
            or buf.device != like.device:
        buf = space[key] = torch.empty(rows, width, dtype=like.dtype, device=like.device)
    return buf[:, :width]


def _segments(f: Tensor, c: slice, space: dict[Any, Tensor]) -> Tensor:
    """The segments θ_{j+1} − θ_j of the columns ``c`` of ``f``, in a scratch buffer."""
    width = f[:, c].shape[1]
    return torch.sub(f[1:, c], f[:-1, c], out=_scratch(space, "seg", f.shape[0] - 1, f, width))


def _gram(rows: list[Tensor], grads: list[Tensor], space: dict[Any, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed over the parameters as float64: the segments' Gram matrix s·sᵀ and the products
    g·sᵀ with the interior images' gradients ``grads``, in one sweep over the band."""
    m = rows[0].shape[0] - 1
    ss = torch.zeros(m, m, dtype=torch.float64)
    gs = torch.zeros(m - 1, m, dtype=torch.float64)
    for f, g in zip(rows, grads):
        blocks = _blocks(f)
        if len(blocks) == 1:                      # one product of all rows
            both = torch.cat([_segments(f, blocks[0], space), g])
            gram = both @ both.T
        else:
            gram = torch.zeros(2 * m - 1, m, dtype=f.dtype, device=f.device)
            for c in blocks:
                sb = _segments(f, c, space)
                gram[:m].addmm_(sb, sb.T)
                gram[m:].addmm_(g[:, c], sb.T)
        gram = gram.to("cpu", torch.float64)
        ss += gram[:m, :m]
        gs += gram[m:, :m]
    return ss, gs


def _tangent(ep: float, ei: float, en: float) -> tuple[float, float]:
    """Weights (a, b) of the upwind tangent a·(θ_{i+1} − θ_i) + b·(θ_i − θ_{i−1}) before
    normalising, from the energies of images i − 1, i, i + 1."""
    if en > ei > ep:
        return 1.0, 0.0
    if en < ei < ep:
        return 0.0, 1.0
    dmax, dmin = max(abs(en - ei), abs(ep - ei)), min(abs(en - ei), abs(ep - ei))
    return (dmax, dmin) if en > ep else (dmin, dmax)


def _coefficients(ss: list[list[float]], gs: list[list[float]], energies: list[float], climb_at: int | None,
                  spring: float) -> tuple[list[float], list[float]]:
    """Per interior image i, the coefficients (c_next, c_prev) of its nudged gradient
    g_i + c_next·(θ_{i+1} − θ_i) + c_prev·(θ_i − θ_{i−1}): the gradient without its part along
    the upwind tangent (Henkelman & Jónsson 2000, energy-weighted at extrema; unit norm), the
    climbing image's tangential part reversed, a finite spring's force along the tangent."""
    c_next, c_prev = [], []
    for k in range(len(gs)):
        i = k + 1
        dd_i, dd_p, cross = ss[i][i], ss[i - 1][i - 1], ss[i][i - 1]
        a, b = _tangent(energies[i - 1], energies[i], energies[i + 1])
        nrm = math.sqrt(max(a * a * dd_i + 2 * a * b * cross + b * b * dd_p, 0.0))
        if nrm == 0.0:                                       # θ_{i+1} − θ_{i−1}
            a, b = 1.0, 1.0
            nrm = math.sqrt(max(dd_i + 2 * cross + dd_p, 0.0))
        if nrm > 0:
            a, b = a / nrm, b / nrm
        gt = a * gs[k][k + 1] + b * gs[k][k]
        s = 2 * gt if i == climb_at else gt
        if i != climb_at and math.isfinite(spring):
            s += spring * (math.sqrt(dd_i) - math.sqrt(dd_p))
        c_next.append(-a * s)
        c_prev.append(-b * s)
    return c_next, c_prev


def nudged_step(rows: list[Tensor], grads: list[Tensor], energies: list[float], *, climb_at: int | None,
                spring: float, lr: float, momentum: float, bufs: list[Tensor] | None, space: dict[Any, Tensor],
                measure: bool = False) -> tuple[list[Tensor], list[float] | None]:
    """One SGD step (with momentum, as ``torch.optim.SGD`` computes it) of the interior rows of
    ``rows`` along their nudged gradients; ``grads``: the interior images' gradients, rows as
    ``rows`` (read, not written). ``bufs``: the momentum buffers of the cycle's previous step
    (None at its first); ``space``: scratch buffers kept from step to step. Returns the
    momentum buffers and, with ``measure``, the lengths of the band's new segments (for
    :func:`respace`), taken in the same sweep."""
    if _tiny(rows):
        return _nudged_step_tiny(rows[0], grads[0], energies, climb_at=climb_at, spring=spring, lr=lr,
                                 momentum=momentum, bufs=bufs, measure=measure)
    with torch.no_grad():
        ss, gs = _gram(rows, grads, space)
        c_next, c_prev = _coefficients(ss.tolist(), gs.tolist(), energies, climb_at, spring)
        first = bufs is None
        if bufs is None:
            bufs = [torch.empty_like(g) for g in grads] if momentum else []
        sq = torch.zeros(rows[0].shape[0] - 1, dtype=torch.float64)
        for p, (f, g) in enumerate(zip(rows, grads)):
            coef = torch.tensor([c_next, c_prev], dtype=g.dtype, device=g.device)
            cn, cp = coef[0].reshape(-1, 1), coef[1].reshape(-1, 1)
            x, blocks = f[1:-1], _blocks(f)
            gram = torch.zeros(len(f) - 1, len(f) - 1, dtype=f.dtype, device=f.device) \
                if measure and len(blocks) > 1 else None
            for c in blocks:
                sb = _segments(f, c, space)
                u = _scratch(space, "update", len(g), g, sb.shape[1])
                u = torch.addcmul(g[:, c], sb[1:], cn, out=u).addcmul_(sb[:-1], cp)
                if momentum:
                    b = bufs[p][:, c]
                    u = b.copy_(u) if first else b.mul_(momentum).add_(u)
                x[:, c].add_(u, alpha=-lr)
                if measure:                       # the block's new segments
                    sb = _segments(f, c, space)
                    if gram is not None:
                        gram.addmm_(sb, sb.T)
                    else:                         # squared lengths row by row in one call
                        sq += torch.bmm(sb.unsqueeze(1), sb.unsqueeze(2)).reshape(-1).to("cpu", torch.float64)
            if gram is not None:
                sq += gram.diagonal().to("cpu", torch.float64)
        if not measure:
            return bufs, None
        return bufs, [math.sqrt(max(v, 0.0)) for v in sq.tolist()]


def _tiny(rows: list[Tensor]) -> bool:
    """A band of one small float matrix in CPU memory: its algebra runs in NumPy over the same
    memory (a torch call costs microseconds of dispatch, more than the arithmetic here)."""
    return (len(rows) == 1 and rows[0].device.type == "cpu" and rows[0].shape[1] <= SMALL
            and rows[0].dtype in (torch.float32, torch.float64))


def _nudged_step_tiny(f: Tensor, g: Tensor, energies: list[float], *, climb_at: int | None, spring: float,
                      lr: float, momentum: float, bufs: list[Tensor] | None, measure: bool
                      ) -> tuple[list[Tensor], list[float] | None]:
    """:func:`nudged_step` for a :func:`_tiny` band, in NumPy, in the tensors' dtype."""
    x, gx = f.detach().numpy(), g.detach().numpy()
    m = x.shape[0] - 1
    seg = x[1:] - x[:-1]
    both = np.concatenate([seg, gx])
    gram = (both @ both.T).astype(np.float64)
    c_next, c_prev = _coefficients(gram[:m, :m].tolist(), gram[m:, :m].tolist(), energies, climb_at, spring)
    u = gx + seg[1:] * np.asarray(c_next, dtype=x.dtype)[:, None] + seg[:-1] * np.asarray(c_prev, dtype=x.dtype)[:, None]
    if momentum:
        if bufs is None:
            bufs = [torch.from_numpy(u.copy())]
        else:
            buf = bufs[0].numpy()
            buf *= x.dtype.type(momentum)
            buf += u
        u = bufs[0].numpy()
    else:
        bufs = []
    x[1:-1] -= x.dtype.type(lr) * u
    if not measure:
        return bufs, None
    seg = x[1:] - x[:-1]
    sq = np.einsum("ij,ij->i", seg, seg).astype(np.float64)
    return bufs, np.sqrt(np.maximum(sq, 0.0)).tolist()


def respace(rows: list[Tensor], fixed: set[int], lengths: list[float], space: dict[Any, Tensor] | None = None
            ) -> None:
    """Move the free interior images (rows of ``rows``), in place, to even arc-length spacing
    along the chain between fixed ones (the ends and ``fixed``): image i goes to
    θ_j + s·(θ_{j+1} − θ_j) of the chain as it stands. ``lengths``: the segments' lengths, as
    :func:`nudged_step` measures them; ``space``: scratch buffers kept from step to step."""
    n = rows[0].shape[0]
    anchors = sorted({0, n - 1} | fixed)
    cum = list(accumulate(lengths, initial=0.0))
    moves = []
    for lo, hi in zip(anchors[:-1], anchors[1:]):
        if hi - lo < 2 or cum[hi] == cum[lo]:
            continue
        for i in range(lo + 1, hi):
            pos = cum[lo] + (cum[hi] - cum[lo]) * (i - lo) / (hi - lo)
            j = min(max(bisect_right(cum, pos) - 1, 0), n - 2)
            s = 0.0 if lengths[j] == 0 else (pos - cum[j]) / lengths[j]
            moves.append((i, j, min(max(s, 0.0), 1.0)))
    if not moves:
        return
    at_rows, js, ws = zip(*moves)
    with torch.no_grad():
        if _tiny(rows):                           # in NumPy over the same memory
            x = rows[0].numpy()
            at, j = np.asarray(at_rows), np.asarray(js)
            w = np.asarray(ws).astype(x.dtype)[:, None]
            x[at] = x[j] + w * (x[j + 1] - x[j])
            return
        if max(f.shape[1] for f in rows) <= SMALL:     # a few gathers beat a sweep over blocks
            at, lo_, hi_ = torch.tensor([at_rows, js, [j + 1 for j in js]], device=rows[0].device)
            for f in rows:
                w = torch.tensor(ws, dtype=f.dtype, device=f.device).reshape(-1, 1)
                f.index_copy_(0, at, torch.lerp(f.index_select(0, lo_), f.index_select(0, hi_), w))
            return
        space = {} if space is None else space
        for f in rows:                            # the moved rows of a block at once, from its old rows
            mix = torch.zeros(len(moves), n, dtype=f.dtype)
            for k, (j, w) in enumerate(zip(js, ws)):
                mix[k, j], mix[k, j + 1] = 1.0 - w, w
            mix, at = mix.to(f.device), torch.tensor(at_rows, device=f.device)
            for c in _blocks(f):
                new = torch.mm(mix, f[:, c], out=_scratch(space, "moved", len(moves), f, f[:, c].shape[1]))
                f[:, c].index_copy_(0, at, new)

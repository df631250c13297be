"""An AutoNEB band's vector algebra: segments, their inner products, the nudged momentum step
and the re-spacing, over the band's images as the rows of matrices.

Per parameter, the images θ_0 … θ_{n−1} are stacked along dim 0 and seen as an
(images, numbers) matrix over the stack's memory (:func:`rows_of`). Every operation runs on
column blocks of these matrices: a large stack is swept block by block, each block small enough
that its rows of every operand stay in cache through all the operations on it (the segments and
their inner products in one sweep, the nudged momentum step in another), so that a step reads
the band from memory a few times, not once per operation; a small stack is one block. The
tangent of image i is a·(θ_{i+1} − θ_i) + b·(θ_i − θ_{i−1}), so the nudged step needs only the
inner products of each segment with itself and its predecessor, and of each interior image's
gradient with its two segments: four row-wise dot products per block (a Gram matrix of all the
segments and gradients would cost four times the arithmetic).
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

#: numbers per column block of all rows of one operand (2 MB of float32): the fastest of
#: 2^16 ... 2^20 for a ~1M-parameter band of 10 images on a 2-core AMD EPYC with 1 MB L2 per core
#: and 32 MB L3 (benchmarks/bench_band_algebra.py); the four operands' blocks stay in cache
_BLOCK = 1 << 19
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


def _workspace(space: dict[Any, Tensor], key: Any, like: Tensor) -> Tensor:
    """A buffer shaped as ``like``, kept in ``space`` from step to step (large bands: fresh
    memory each step costs page faults)."""
    buf = space.get(key)
    if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = space[key] = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    return buf


class _BlockSums:
    """Per column block, a row of ``width`` numbers (row-wise products of the block), in its
    parameter's dtype on its device, one buffer per device and dtype; :meth:`total` reads each
    buffer once and sums its rows in float64 (one transfer per step from a GPU, not one per block)."""

    def __init__(self, rows: list[Tensor], width: int):
        self.next: dict[tuple[torch.device, torch.dtype], int] = {}
        count: dict[tuple[torch.device, torch.dtype], int] = {}
        for f in rows:
            count[(f.device, f.dtype)] = count.get((f.device, f.dtype), 0) + len(_blocks(f))
        self.bufs = {key: torch.empty(n, width, dtype=key[1], device=key[0]) for key, n in count.items()}

    def row(self, like: Tensor) -> Tensor:
        """The next free row of the buffer for ``like``'s device and dtype."""
        key = (like.device, like.dtype)
        at = self.next.get(key, 0)
        self.next[key] = at + 1
        return self.bufs[key][at]

    def total(self) -> list[float]:
        return sum(b[:self.next.get(key, 0)].to("cpu", torch.float64).sum(0) for key, b in self.bufs.items()).tolist()


class _Products:
    """Inner products of a band's segments s_j = θ_{j+1} − θ_j and the interior images'
    gradients g_k (of image k + 1), summed over the parameters in float64: ``ss[j]`` = s_j·s_j,
    ``sp[j]`` = s_{j+1}·s_j, ``gn[k]`` = g_k·s_{k+1}, ``gp[k]`` = g_k·s_k (lists, after :meth:`total`)."""

    def __init__(self, rows: list[Tensor]):
        self.m = rows[0].shape[0] - 1
        self.sums = _BlockSums(rows, 4 * self.m - 3)

    def add(self, seg: Tensor, g: Tensor) -> None:
        """Add a block's share: ``seg`` its segments (m rows), ``g`` its gradients (m − 1 rows)."""
        m, row = self.m, self.sums.row(seg)
        torch.linalg.vecdot(seg, seg, out=row[:m])
        torch.linalg.vecdot(seg[1:], seg[:-1], out=row[m:2 * m - 1])
        torch.linalg.vecdot(g, seg[1:], out=row[2 * m - 1:3 * m - 2])
        torch.linalg.vecdot(g, seg[:-1], out=row[3 * m - 2:])

    def total(self) -> None:
        m, t = self.m, self.sums.total()
        self.ss, self.sp, self.gn, self.gp = t[:m], t[m:2 * m - 1], t[2 * m - 1:3 * m - 2], t[3 * m - 2:]


def _segments_and_products(rows: list[Tensor], grads: list[Tensor], space: dict[Any, Tensor]
                           ) -> tuple[list[Tensor], _Products]:
    """The segments s_j = θ_{j+1} − θ_j (per parameter, in ``space``) and the inner products the
    nudged step needs (:class:`_Products`) of them and the interior images' gradients ``grads``,
    in one sweep over the band."""
    prods = _Products(rows)
    segs = []
    for p, (f, g) in enumerate(zip(rows, grads)):
        seg = _workspace(space, ("seg", p), f[1:])
        for c in _blocks(f):
            prods.add(torch.sub(f[1:, c], f[:-1, c], out=seg[:, c]), g[:, c])
        segs.append(seg)
    prods.total()
    return segs, prods


def _tangent(ep: float, ei: float, en: float) -> tuple[float, float]:
    """Weights (a, b) of the upwind tangent a·(θ_{i+1} − θ_i) + b·(θ_i − θ_{i−1}) before
    normalising, from the energies of images i − 1, i, i + 1."""
    if en > ei > ep:
        return 1.0, 0.0
    if en < ei < ep:
        return 0.0, 1.0
    dmax, dmin = max(abs(en - ei), abs(ep - ei)), min(abs(en - ei), abs(ep - ei))
    return (dmax, dmin) if en > ep else (dmin, dmax)


def _coefficients(ss: list[float], sp: list[float], gn: list[float], gp: list[float], energies: list[float],
                  climb_at: int | None, spring: float) -> tuple[list[float], list[float]]:
    """Per interior image i, the coefficients (c_next, c_prev) of its nudged gradient
    g_i + c_next·(θ_{i+1} − θ_i) + c_prev·(θ_i − θ_{i−1}), from the inner products of
    :class:`_Products`: the gradient without its part along the upwind tangent
    (Henkelman & Jónsson 2000, energy-weighted at extrema; unit norm), the climbing image's
    tangential part reversed, a finite spring's force along the tangent."""
    c_next, c_prev = [], []
    for k in range(len(gn)):
        i = k + 1
        dd_i, dd_p, cross = ss[i], ss[i - 1], sp[i - 1]
        a, b = _tangent(energies[i - 1], energies[i], energies[i + 1])
        nrm = math.sqrt(max(a * a * dd_i + 2 * a * b * cross + b * b * dd_p, 0.0))
        if nrm == 0.0:                                       # θ_{i+1} − θ_{i−1}
            a, b = 1.0, 1.0
            nrm = math.sqrt(max(dd_i + 2 * cross + dd_p, 0.0))
        if nrm > 0:
            a, b = a / nrm, b / nrm
        gt = a * gn[k] + b * gp[k]
        s = 2 * gt if i == climb_at else gt
        if i != climb_at and math.isfinite(spring):
            s += spring * (math.sqrt(dd_i) - math.sqrt(dd_p))
        c_next.append(-a * s)
        c_prev.append(-b * s)
    return c_next, c_prev


def nudged_step(rows: list[Tensor], grads: list[Tensor], energies: list[float], *, climb_at: int | None,
                spring: float, lr: float, momentum: float, bufs: list[Tensor] | None, space: dict[Any, Tensor],
                measure: bool = False) -> tuple[list[Tensor], tuple[list[Tensor], list[float]] | None]:
    """One SGD step (with momentum, as ``torch.optim.SGD`` computes it) of the interior rows of
    ``rows`` along their nudged gradients; ``grads`` (the interior images' gradients, rows as
    ``rows``) are overwritten. ``bufs``: the momentum buffers of the cycle's previous step
    (None at its first). Returns the momentum buffers and, with ``measure``, the band's new
    segments and their lengths (for :func:`respace`), taken in the same sweep."""
    if _tiny(rows):
        return _nudged_step_tiny(rows[0], grads[0], energies, climb_at=climb_at, spring=spring, lr=lr,
                                 momentum=momentum, bufs=bufs, measure=measure)
    with torch.no_grad():
        segs, prods = _segments_and_products(rows, grads, space)
        c_next, c_prev = _coefficients(prods.ss, prods.sp, prods.gn, prods.gp, energies, climb_at, spring)
        first = bufs is None
        if bufs is None:
            bufs = [torch.empty_like(g) for g in grads] if momentum else []
        lengths = _BlockSums(rows, rows[0].shape[0] - 1) if measure else None
        for p, (f, g, sg) in enumerate(zip(rows, grads, segs)):
            coef = torch.tensor([c_next, c_prev], dtype=g.dtype, device=g.device)
            cn, cp = coef[0].reshape(-1, 1), coef[1].reshape(-1, 1)
            x = f[1:-1]
            for c in _blocks(f):
                u = g[:, c].addcmul_(sg[1:, c], cn).addcmul_(sg[:-1, c], cp)
                if momentum:
                    b = bufs[p][:, c]
                    u = b.copy_(u) if first else b.mul_(momentum).add_(u)
                x[:, c].add_(u, alpha=-lr)
                if lengths is not None:           # the block's old segments are spent: the new ones
                    sb = torch.sub(f[1:, c], f[:-1, c], out=sg[:, c])
                    torch.linalg.vecdot(sb, sb, out=lengths.row(sb))
        if lengths is None:
            return bufs, None
        return bufs, (segs, [math.sqrt(max(v, 0.0)) for v in lengths.total()])


def _tiny(rows: list[Tensor]) -> bool:
    """A band of one small float matrix in CPU memory: its algebra runs in NumPy over the same
    memory (a torch call costs microseconds of dispatch, more than the arithmetic here)."""
    return (len(rows) == 1 and rows[0].device.type == "cpu" and rows[0].shape[1] <= SMALL
            and rows[0].dtype in (torch.float32, torch.float64))


def _nudged_step_tiny(f: Tensor, g: Tensor, energies: list[float], *, climb_at: int | None, spring: float,
                      lr: float, momentum: float, bufs: list[Tensor] | None, measure: bool
                      ) -> tuple[list[Tensor], tuple[list[Tensor], list[float]] | None]:
    """:func:`nudged_step` for a :func:`_tiny` band, in NumPy, in the tensors' dtype."""
    x, gx = f.detach().numpy(), g.detach().numpy()
    m = x.shape[0] - 1
    seg = x[1:] - x[:-1]
    both = np.concatenate([seg, gx])
    gram = (both @ both.T).astype(np.float64)             # one product beats four row-wise ones here
    ss, gs = gram[:m, :m], gram[m:, :m]
    c_next, c_prev = _coefficients(np.diagonal(ss).tolist(), np.diagonal(ss, -1).tolist(), np.diagonal(gs, 1).tolist(),
                                   np.diagonal(gs).tolist(), energies, climb_at, spring)
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
    return bufs, ([torch.from_numpy(seg)], np.sqrt(np.maximum(sq, 0.0)).tolist())


def respace(rows: list[Tensor], fixed: set[int], segments: tuple[list[Tensor], list[float]]) -> None:
    """Move the free interior images (rows of ``rows``), in place, to even arc-length spacing
    along the chain between fixed ones (the ends and ``fixed``); ``segments``: the band's
    segments and their lengths, as :func:`nudged_step` measures them."""
    n = rows[0].shape[0]
    anchors = sorted({0, n - 1} | fixed)
    segs, d = segments
    with torch.no_grad():
        cum = list(accumulate(d, initial=0.0))
        moves = []
        for lo, hi in zip(anchors[:-1], anchors[1:]):
            if hi - lo < 2 or cum[hi] == cum[lo]:
                continue
            for i in range(lo + 1, hi):
                pos = cum[lo] + (cum[hi] - cum[lo]) * (i - lo) / (hi - lo)
                j = min(max(bisect_right(cum, pos) - 1, 0), n - 2)
                s = 0.0 if d[j] == 0 else (pos - cum[j]) / d[j]
                moves.append((i, j, min(max(s, 0.0), 1.0)))
        if not moves:
            return
        if _tiny(rows):                           # in NumPy over the same memory
            x = rows[0].numpy()
            at_rows, js, ws = (np.asarray(v) for v in zip(*moves))
            w = ws.astype(x.dtype)[:, None]
            x[at_rows] = x[js] + w * (x[js + 1] - x[js])
            return
        if max(f.shape[1] for f in rows) <= SMALL:     # a few gathers beat a call per image
            at_rows, js, ws = zip(*moves)
            at, lo_, hi_ = torch.tensor([at_rows, js, [j + 1 for j in js]], device=rows[0].device)
            for f in rows:
                w = torch.tensor(ws, dtype=f.dtype, device=f.device).reshape(-1, 1)
                f.index_copy_(0, at, torch.lerp(f.index_select(0, lo_), f.index_select(0, hi_), w))
            return
        for i, j, s in moves:                     # θ_i ← θ_j + s·(θ_{j+1} − θ_j), from the old segments
            for f, sg in zip(rows, segs):
                for k, c in _walk(i, j, s):
                    f[i].add_(sg[k], alpha=c)


def _walk(i: int, j: int, s: float) -> list[tuple[int, float]]:
    """The segments k and coefficients c with θ_j + s·(θ_{j+1} − θ_j) = θ_i + Σ c·(θ_{k+1} − θ_k)."""
    if j >= i:
        steps = [(k, 1.0) for k in range(i, j)] + [(j, s)]
    else:
        steps = [(j, s - 1.0)] + [(k, -1.0) for k in range(j + 1, i)]
    return [(k, c) for k, c in steps if c != 0.0]

"""Linear interpolation between two parameter sets (Goodfellow et al. 2015) and its barrier."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from landprobe.common.deprecation import renamed_keywords
from landprobe.engine import Engine, HasEngine, as_engine
from landprobe.params import Selector, select
from landprobe.probes.results import Curve
from landprobe.symmetry import ALIGN_METHODS, PermutationSpec, align_endpoint

__all__ = ["interpolate", "MAX_POINTS"]

#: The most points one ``interpolate`` or ``plane`` call evaluates; a larger grid is refused
#: with a ValueError that says how many points it would have and how to ask for fewer.
MAX_POINTS = 100_000


@renamed_keywords(steps="points")
def interpolate(engine: Engine | HasEngine, a: Any, b: Any, points: int = 51, *, subnet: Selector | None = None,
                extend: float = 0.0, batch_points: int = 1, align: str | None = None,
                spec: PermutationSpec | None = None) -> Curve:
    """Evaluate the empirical error on the segment θ(α) = (1 − α)·a + α·b.

    Args:
        a, b: Endpoints: state_dicts, modules or ParamVectors of the probed model. A
            buffer missing from an endpoint is taken from the model as it is.
        points: Evenly spaced alphas in [0, 1], both ends included. At least 2 (``steps=``,
            the old name, works for one release with a ``DeprecationWarning``).
        subnet: Selector of the parameters that move; the others stay at ``a``.
        extend: Extrapolate past both ends by this fraction of the segment, on the same
            grid spacing (rounded up to whole grid steps), so 0 and 1 stay on the grid.
        batch_points: Evaluate this many points per model call (``torch.func.functional_call``
            under ``vmap``; ``bn='eval'`` only). Results agree with ``batch_points=1`` to float
            rounding. It costs ``batch_points`` copies of the parameters (allocated once per
            call) plus ``batch_points`` times the activations of one batch's forward
            (benchmarks/bench_batch_points_memory.py: 3.5 parameter copies at
            ``batch_points=3`` on a 4M-parameter MLP, 13.3 on a CNN whose activations weigh
            more than its parameters). On a 2-core CPU it did not beat one point per pass
            (benchmarks/results/interpolate.json); it is offered for devices where wider
            batched kernels pay.
        align: ``"weights"`` or ``"activations"``: first permute ``b``'s hidden units to match
            ``a``'s (:func:`landprobe.symmetry.weight_matching` /
            :func:`~landprobe.symmetry.activation_matching` on this probe's data), so the curve
            runs from ``a`` to the aligned ``b`` (the same function as ``b``). The naive curve
            is evaluated too and recorded beside it: ``curve.settings["align"]`` holds the
            method, ``naive_barrier``, ``naive_argmax_alpha``, ``naive_losses`` and the
            matching's ``objective``. For BatchNorm networks pair it with ``bn="recompute"``
            (statistics re-estimated at every point, as REPAIR, Jordan et al. 2022). See
            docs/symmetry.md.
        spec: The :class:`~landprobe.symmetry.PermutationSpec` for ``align`` (traced from the
            model on the first batch's inputs if None).

    Returns:
        A :class:`Curve`. The model is restored exactly afterwards. Under
        ``torch.distributed`` the points are split across ranks and every rank gets the
        whole curve.

    Raises:
        ValueError: If ``points < 2``, ``extend < 0``, the grid would exceed ``MAX_POINTS``
            (100,000) points (``points + 2·ceil(extend·(points − 1))``), or an endpoint lacks a
            parameter of the model or has another shape (the message names the keys).

    Example:
        >>> import torch, landprobe as lp
        >>> model = torch.nn.Linear(1, 1, bias=False)       # y_hat = w * x
        >>> data = [(torch.ones(4, 1), torch.zeros(4, 1))]  # so L(w) = w**2
        >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), data)
        >>> a, b = {"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[1.0]])}
        >>> curve = probe.interpolate(a, b, points=5)
        >>> curve.losses.tolist()
        [1.0, 0.25, 0.0, 0.25, 1.0]
        >>> curve.barrier                                    # a convex bowl has none
        0.0
    """
    engine = as_engine(engine)
    if align is not None:
        return _aligned(engine, a, b, points, align, spec, subnet=subnet, extend=extend, batch_points=batch_points)
    if not isinstance(points, int) or points < 2:
        raise ValueError(f"points={points!r}; an interpolation needs an integer of at least 2 (both ends)")
    if not (isinstance(extend, (int, float)) and math.isfinite(extend) and extend >= 0):
        raise ValueError(f"extend={extend!r}; expected a finite fraction >= 0 (e.g. 0.25)")
    h = 1.0 / (points - 1)
    k = int(math.ceil(extend / h - 1e-9)) if extend > 0 else 0
    if points + 2 * k > MAX_POINTS:
        raise ValueError(f"interpolate(points={points}, extend={extend!r}) would evaluate {points + 2 * k:,} points "
                         f"({points:,} in [0, 1] and {k:,} past each end), more than MAX_POINTS = {MAX_POINTS:,} per "
                         f"call; use fewer points or a smaller extend (the points past the ends are "
                         f"ceil(extend·(points − 1)) on each side), or split the range over several calls")
    names = engine.state_names()
    va = engine.as_point(a, "a", names)
    vb = engine.as_point(b, "b", names)
    moving = set(engine.state_names(subnet)) if subnet is not None else set(names)
    # Entries outside the subnet lerp from a to a: exactly a.
    b_eff = [tb if n in moving else ta for n, ta, tb in zip(names, va.tensors, vb.tensors)]
    a_list = va.tensors
    idx = np.arange(-k, points + k)
    alphas = idx * h
    alphas[idx == 0] = 0.0
    alphas[idx == points - 1] = 1.0

    # Large tensors: one fused pass lerp(a, b, out=target) (a copy followed by an in-place
    # lerp reads and writes them twice); small ones: two foreach kernels over all of them.
    big = [i for i, t in enumerate(a_list) if t.numel() >= 1 << 16]
    small = [i for i in range(len(a_list)) if i not in set(big)]
    a_small, b_small = [a_list[i] for i in small], [b_eff[i] for i in small]

    def writer(alpha: float):
        def write(targets: list[torch.Tensor]) -> None:
            if alpha == 0.0:
                torch._foreach_copy_(targets, a_list)
                return
            for i in big:
                torch.lerp(a_list[i], b_eff[i], alpha, out=targets[i])
            if small:
                t_small = [targets[i] for i in small]
                torch._foreach_copy_(t_small, a_small)
                torch._foreach_lerp_(t_small, b_small, alpha)
        return write

    if not isinstance(batch_points, int) or batch_points < 1:
        raise ValueError(f"batch_points={batch_points!r}; expected an integer >= 1 (1: one point per pass)")
    writers = [writer(float(al)) for al in alphas]
    if batch_points == 1:
        evals = engine.sweep(names, writers, "interpolate")
    else:
        evals = engine.sweep_batched(names, writers, batch_points, "interpolate")
    losses = np.array([e.loss for e in evals])
    stderr = np.array([e.stderr for e in evals])
    i0, i1 = k, k + points - 1
    sub = None if subnet is None else (subnet if isinstance(subnet, str) else select(engine.model, subnet))
    return Curve(
        alphas=alphas, losses=losses, stderr=stderr,
        loss_a=float(losses[i0]), loss_b=float(losses[i1]),
        settings=engine.settings(probe="interpolate", points=points, extend=float(extend), subnet=sub,
                                extension_points=k, batch_points=batch_points,
                                samples_per_point=[int(e.batch_sizes.sum()) for e in evals]),
    )


def _aligned(engine: Engine, a: Any, b: Any, points: int, align: str, spec: PermutationSpec | None,
             **kw: Any) -> Curve:
    """The curve from ``a`` to ``b`` aligned to ``a``, with the naive curve's barrier recorded."""
    if align not in ALIGN_METHODS:
        raise ValueError(f"align={align!r}; expected one of {ALIGN_METHODS} or None (no alignment)")
    naive = interpolate(engine, a, b, points, **kw)
    b_aligned, perm, spec = align_endpoint(engine, a, b, align, spec=spec)
    curve = interpolate(engine, a, b_aligned, points, **kw)
    curve.settings["align"] = {
        "method": align, "naive_barrier": naive.barrier, "naive_argmax_alpha": naive.argmax_alpha,
        "naive_losses": naive.losses.tolist(), "objective": list(perm.objective),
        "groups": {g: spec.sizes[g] for g in spec.groups}, "identity": perm.is_identity()}
    return curve

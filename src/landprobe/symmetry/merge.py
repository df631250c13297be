"""Aligning ``b`` to ``a`` in one call, and merging the aligned networks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from landprobe.common.checks import check_module
from landprobe.engine import Engine
from landprobe.symmetry.activations import activation_matching, first_inputs
from landprobe.symmetry.apply import Permutation, permute, state_of
from landprobe.symmetry.matching import weight_matching
from landprobe.symmetry.spec import PermutationSpec, _resolve_spec

__all__ = ["ALIGN_METHODS", "align", "align_endpoint", "merge"]

ALIGN_METHODS = ("weights", "activations")


def _first_inputs(data: Any) -> Any:
    if data is None:
        return None
    try:
        batch = next(iter(data))
    except (TypeError, StopIteration):
        return None
    return batch[0] if isinstance(batch, (tuple, list)) and batch else None


def align(a: Any, b: Any, method: str = "weights", *, spec: PermutationSpec | None = None,
          example_input: Any = None, data: Iterable | None = None, seed: int = 0,
          max_sweeps: int = 100) -> tuple[dict[str, Tensor], Permutation, PermutationSpec]:
    """``b``'s state_dict permuted to match ``a`` (``method``: ``"weights"`` or ``"activations"``).

    Args:
        a: The reference: a module (needed to trace the spec or to run activations) or a
            state_dict (with ``spec``).
        b: The network to align (module or state_dict).
        method: ``"weights"`` (:func:`weight_matching`) or ``"activations"``
            (:func:`activation_matching`, needs ``data`` and a module ``a``).
        spec: The :class:`PermutationSpec`; traced from ``a`` on ``example_input`` (or the
            first batch's inputs of ``data``) if None.
        example_input, data, seed, max_sweeps: As the matching functions.

    Returns:
        ``(aligned_b, permutation, spec)``.

    Example:
        >>> import torch
        >>> from landprobe.symmetry import align
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> a = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1))
        >>> b = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1))
        >>> aligned, perm, spec = align(a, b, example_input=torch.zeros(1, 2))
        >>> x = torch.randn(5, 2)
        >>> torch.allclose(torch.func.functional_call(b, aligned, (x,)), b(x), atol=1e-6)
        True
    """
    if method not in ALIGN_METHODS:
        raise ValueError(f"align={method!r}; expected one of {ALIGN_METHODS} (or None for no alignment)")
    if method == "activations" and data is None:
        raise ValueError("align='activations' needs data= (batches of (inputs, targets)) to correlate units on")
    if example_input is None and spec is None:
        example_input = _first_inputs(data)
    spec = _resolve_spec(spec, a, example_input, "align")
    if method == "activations" and data is not None:
        perm = activation_matching(check_module(a, "a"), b, data, spec)
    else:
        perm = weight_matching(a, b, spec, seed=seed, max_sweeps=max_sweeps)
    return permute(state_of(b, "b"), perm, spec), perm, spec


_align = align   # merge's argument of the same name shadows it


def align_endpoint(engine: Engine, a: Any, b: Any, method: str = "weights", *, spec: PermutationSpec | None = None,
                   seed: int = 0) -> tuple[dict[str, Tensor], Permutation, PermutationSpec]:
    """``b`` aligned to ``a`` for a probe over ``engine``'s model: endpoints as a probe takes them.

    ``a`` and ``b`` are state_dicts, modules or ParamVectors of ``engine.model`` (an entry an
    endpoint lacks is the model's own); the spec is traced from the model on the first batch's
    inputs unless given; ``method="activations"`` runs on the engine's data.

    Example:
        >>> import torch
        >>> from landprobe.engine import Engine
        >>> from landprobe.symmetry import align_endpoint
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> engine = Engine(model, torch.nn.MSELoss(), [(torch.randn(8, 2), torch.zeros(8, 1))])
        >>> other = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> aligned, perm, spec = align_endpoint(engine, model.state_dict(), other.state_dict())
        >>> sorted(perm.perms["0.weight:0"])
        [0, 1, 2, 3]
    """
    if method not in ALIGN_METHODS:
        raise ValueError(f"align={method!r}; expected one of {ALIGN_METHODS} (or None for no alignment)")
    own = state_of(engine.model, "the model")
    sa, sb = {**own, **state_of(a, "a")}, {**own, **state_of(b, "b")}
    if spec is None:
        traced: list[PermutationSpec] = []

        def trace() -> list[Tensor]:             # inside all_sum: an error on one rank reaches all
            traced.append(_resolve_spec(None, engine.model, first_inputs(engine), "align"))
            return [torch.zeros(1, dtype=torch.float64)]
        with engine.guard("aligning endpoints"):
            engine.all_sum(trace, "tracing the model")
        spec = traced[-1]
    if method == "activations":
        perm = activation_matching(sa, sb, engine, spec)
    else:
        perm = weight_matching(sa, sb, spec, seed=seed)
    return permute(sb, perm, spec), perm, spec

def merge(a: Any, b: Any, alpha: float = 0.5, align: str | None = "weights", *, data: Iterable | None = None,
          spec: PermutationSpec | None = None, example_input: Any = None, seed: int = 0) -> dict[str, Tensor]:
    """The state_dict ``(1 - alpha) * a + alpha * P(b)`` with ``b`` aligned to ``a`` first.

    Floating tensors are interpolated; integer buffers (BatchNorm's batch counts) are ``a``'s.
    The BatchNorm statistics of a merged network describe neither endpoint well: evaluate
    it with ``bn="recompute"`` (REPAIR-style renormalisation, Jordan et al. 2022).

    Args:
        a, b: Modules or state_dicts of one architecture (``a`` a module unless ``spec`` is given).
        alpha: Weight of ``b`` (0 gives ``a``).
        align: ``"weights"``, ``"activations"`` (needs ``data``) or None (naive interpolation).
        data, spec, example_input, seed: As :func:`align`.

    Example:
        >>> import torch
        >>> from landprobe.symmetry import merge
        >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> m = merge(a, b, alpha=0.25, align=None)
        >>> torch.allclose(m["weight"], 0.75 * a.weight + 0.25 * b.weight)
        True
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha={alpha!r}; expected a number (0: a, 1: b aligned)")
    sa = state_of(a, "a")
    if align is None:
        sb = state_of(b, "b")
    else:
        sb, _, _ = _align(a, b, align, spec=spec, example_input=example_input, data=data, seed=seed)
    missing = sorted(set(sa) ^ set(sb))
    if missing:
        raise KeyError(f"a and b have different keys ({missing[:5]}); merge networks of one architecture")
    out = {}
    for k, t in sa.items():
        if t.is_floating_point():
            out[k] = torch.lerp(t.detach(), sb[k].detach().to(t.device, t.dtype), float(alpha))
        else:
            out[k] = t.detach().clone()
    return out

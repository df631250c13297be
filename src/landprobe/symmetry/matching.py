"""Aligning network ``b`` to network ``a``: weight matching and activation matching.

Both return a :class:`~landprobe.symmetry.Permutation` ``P`` such that ``permute(b, P, spec)``
computes what ``b`` computes, with its hidden units in ``a``'s order as far as they can be
matched (Ainsworth et al., "Git Re-Basin", ICLR 2023).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from landprobe.common.checks import check_int
from landprobe.symmetry.apply import Permutation, _permuted_tensor, state_of
from landprobe.symmetry.spec import AxisRef, PermutationSpec, _resolve_spec

__all__ = ["solve_assignment", "unit_rows", "weight_matching"]


def unit_rows(t: Tensor, ref: AxisRef, n: int) -> Tensor:
    """The ``n`` units of ``ref``'s stretch of ``t`` as rows: shape ``(n, everything else)``.

    Example:
        >>> import torch
        >>> from landprobe.symmetry import AxisRef
        >>> from landprobe.symmetry.matching import unit_rows
        >>> unit_rows(torch.arange(12.0).reshape(2, 6), AxisRef("w", 1, 0, 3), 2)
        tensor([[ 0.,  1.,  2.,  6.,  7.,  8.],
                [ 3.,  4.,  5.,  9., 10., 11.]])
    """
    seg = t.narrow(ref.axis, ref.offset, n * ref.inner)
    shape = tuple(seg.shape)
    seg = seg.reshape(shape[:ref.axis] + (n, ref.inner) + shape[ref.axis + 1:])
    return seg.movedim(ref.axis, 0).reshape(n, -1)


def solve_assignment(cost: np.ndarray, block: int | None = None) -> np.ndarray:
    """The permutation ``p`` maximising ``sum_i cost[i, p[i]]``, block-diagonal in blocks of ``block``.

    Example:
        >>> import numpy as np
        >>> from landprobe.symmetry.matching import solve_assignment
        >>> solve_assignment(np.array([[0.0, 1.0], [1.0, 0.0]])).tolist()
        [1, 0]
    """
    n = cost.shape[0]
    block = block or n
    out = np.empty(n, dtype=np.int64)
    for s in range(0, n, block):
        rows, cols = linear_sum_assignment(cost[s:s + block, s:s + block], maximize=True)
        out[s + rows] = s + cols
    return out


class _Problem:
    """The weight-matching objective ``sum_name <a[name], P(b)[name]>`` and its pieces."""

    def __init__(self, spec: PermutationSpec, sa: Mapping[str, Tensor], sb: Mapping[str, Tensor]) -> None:
        self.spec = spec
        names = [n for n in spec.names() if n not in spec.buffers and sa[n].is_floating_point()]
        for n in names:
            if sa[n].shape != sb[n].shape:
                raise ValueError(f"a[{n!r}] has shape {tuple(sa[n].shape)} but b[{n!r}] has {tuple(sb[n].shape)}; "
                                 f"a and b must be the same architecture")
        self.a = {n: sa[n].detach().to("cpu", torch.float64) for n in names}
        self.b = {n: sb[n].detach().to("cpu", torch.float64) for n in names}
        self.entries = {n: spec.entries_of(n) for n in names}
        self.touching = {g: [(n, r) for n in names for gg, r in self.entries[n] if gg == g] for g in spec.groups}
        # a group met twice by one tensor (a recurrent weight): the step is no longer exact
        self.quadratic = {g: len({n for n, _ in refs}) < len(refs) for g, refs in self.touching.items()}

    def objective(self, perms: Mapping[str, Tensor]) -> float:
        return float(sum((self.a[n] * _permuted_tensor(self.b[n], e, perms, self.spec.sizes)).sum()
                         for n, e in self.entries.items()))

    def cost(self, g: str, perms: Mapping[str, Tensor], known: set[str] | None = None) -> np.ndarray:
        """``cost[i, j]``: the objective's terms if unit ``j`` of b took the place of unit ``i``
        (with ``known``: only the tensors whose other axes are fixed or in those groups)."""
        n = self.spec.sizes[g]
        cost = torch.zeros(n, n, dtype=torch.float64)
        for name, ref in self.touching[g]:
            others = [(gg, r) for gg, r in self.entries[name] if not (gg == g and r == ref)]
            if known is not None and any(gg not in known for gg, _ in others):
                continue
            b = _permuted_tensor(self.b[name], others, perms, self.spec.sizes)
            cost += unit_rows(self.a[name], ref, n) @ unit_rows(b, ref, n).T
        return cost.numpy()


def weight_matching(a: Any, b: Any, spec: PermutationSpec | None = None, example_input: Any = None, *,
                    seed: int = 0, max_sweeps: int = 100, init: str = "greedy",
                    callback: Callable[[int, float], None] | None = None) -> Permutation:
    """Align ``b``'s hidden units to ``a``'s by their weights (Ainsworth et al.'s weight matching).

    Coordinate descent over the groups, started from one greedy pass in the spec's order (each
    group matched on the tensors whose other axes are already matched, so a permuted copy is
    recovered exactly; kept only if it beats the identity): a sweep visits the groups in a
    random order drawn from
    ``seed``; for each, given the other groups' current permutations, a linear assignment
    (``scipy.optimize.linear_sum_assignment``) maximises the summed inner products of every
    parameter touching the group. Sweeps stop when one improves nothing (or after
    ``max_sweeps``). A step is kept only if it raises the objective, so the recorded objective
    (``result.objective``: the start, then one value per sweep) never decreases. BatchNorm
    statistics (``spec.buffers``) are permuted but not matched.

    Args:
        a: The reference (a module or a state_dict).
        b: The network to align (same architecture).
        spec: The :class:`PermutationSpec`; traced from ``a`` on ``example_input`` if None.
        example_input: A batch of inputs, to trace the spec.
        seed: Seed of the order of the groups.
        max_sweeps: Most sweeps.
        init: ``"greedy"`` (the pass above) or ``"identity"`` (Ainsworth et al.'s start).
        callback: Called as ``callback(sweep, objective)`` after each sweep.

    Returns:
        A :class:`Permutation` to apply to ``b`` with :func:`permute`.

    Example:
        >>> import torch
        >>> from landprobe.symmetry import permute, random_permutation, weight_matching, permutation_spec
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> a = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> spec = permutation_spec(a, torch.zeros(1, 4))
        >>> shuffle = random_permutation(spec, seed=3)
        >>> b = permute(a.state_dict(), shuffle, spec)
        >>> found = weight_matching(a, b, spec)
        >>> found.perms == shuffle.inverse().perms
        True
    """
    max_sweeps = check_int("max_sweeps", max_sweeps, 1, "sweeps of coordinate descent")
    spec = _resolve_spec(spec, a, example_input, "weight_matching")
    sa, sb = state_of(a, "a"), state_of(b, "b")
    spec.check(sa, "a")
    spec.check(sb, "b")
    if init not in ("greedy", "identity"):
        raise ValueError(f"init={init!r}; expected 'greedy' (a pass in the spec's order) or 'identity'")
    problem = _Problem(spec, sa, sb)
    perms = _greedy_start(problem) if init == "greedy" else {g: torch.arange(spec.sizes[g]) for g in spec.groups}
    history = [problem.objective(perms)]
    rng = np.random.default_rng(seed)
    order = list(spec.groups)
    sweeps, converged = 0, False
    for sweeps in range(1, max_sweeps + 1):
        improved = False
        for i in rng.permutation(len(order)):
            improved |= _step(problem, order[i], perms)
        history.append(problem.objective(perms))
        if callback is not None:
            callback(sweeps, history[-1])
        if not improved:
            converged = True
            break
    return Permutation({g: p.tolist() for g, p in perms.items()}, history, "weight_matching",
                       {"seed": seed, "sweeps": sweeps, "max_sweeps": max_sweeps, "converged": converged,
                        "init": init})


def _greedy_start(problem: _Problem) -> dict[str, Tensor]:
    """The start of the descent: the groups matched one by one in the spec's order (the order of
    the layers for a traced spec), each on the tensors whose other axes are unpermuted or
    already matched; the identity instead if that scores lower."""
    identity = {g: torch.arange(problem.spec.sizes[g]) for g in problem.spec.groups}
    perms = dict(identity)
    known: set[str] = set()
    for g in problem.spec.groups:
        cost = problem.cost(g, perms, known)
        if np.any(cost):
            perms[g] = torch.as_tensor(solve_assignment(cost, problem.spec.blocks.get(g)))
        known.add(g)
    return perms if problem.objective(perms) >= problem.objective(identity) else identity


def _step(problem: _Problem, g: str, perms: dict[str, Tensor]) -> bool:
    """One linear assignment for group ``g``; True if it was kept (it raised the objective)."""
    cost = problem.cost(g, perms)
    old = perms[g].numpy()
    new = solve_assignment(cost, problem.spec.blocks.get(g))
    rows = np.arange(len(old))
    gain = cost[rows, new].sum() - cost[rows, old].sum()
    if not gain > 1e-12 * max(1.0, abs(cost[rows, old].sum())):
        return False
    previous = perms[g]
    before = problem.objective(perms) if problem.quadratic[g] else 0.0
    perms[g] = torch.as_tensor(new)
    if problem.quadratic[g] and not problem.objective(perms) > before:
        perms[g] = previous
        return False
    return True

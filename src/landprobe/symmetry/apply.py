"""Permutations of hidden units and their application to state_dicts and modules."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landprobe.common.results import Result
from landprobe.symmetry.spec import AxisRef, PermutationSpec

__all__ = ["Permutation", "permute", "random_permutation", "state_of"]


@dataclass
class Permutation(Result):
    """One permutation per group: unit ``i`` of the permuted model is unit ``perms[g][i]`` of the
    original. ``objective`` is the matching's objective after each sweep (weight matching) or
    before and after (activation matching); ``save``/``load`` write and read JSON atomically.

    Example:
        >>> from landprobe.symmetry import Permutation
        >>> p = Permutation({"hidden": [2, 0, 1]})
        >>> p.inverse().perms
        {'hidden': [1, 2, 0]}
        >>> p.is_identity()
        False
    """

    perms: dict[str, list[int]]
    objective: list[float] = field(default_factory=list)
    method: str = "given"
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.perms, Mapping):
            raise TypeError(f"perms={self.perms!r}; expected a dict group -> list of unit indices")
        self.perms = {str(g): _check_perm(g, p) for g, p in self.perms.items()}
        self.objective = [float(x) for x in self.objective]

    def inverse(self) -> Permutation:
        """The permutation that undoes this one."""
        return dataclasses.replace(self, perms={g: np.argsort(p).tolist() for g, p in self.perms.items()},
                                   objective=[], method=f"inverse of {self.method}")

    def is_identity(self) -> bool:
        """Whether every group keeps its units in place."""
        return all(p == list(range(len(p))) for p in self.perms.values())


def _check_perm(group: Any, p: Any) -> list[int]:
    arr = np.asarray(p.detach().cpu() if isinstance(p, Tensor) else p)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or sorted(arr.tolist()) != list(range(arr.size)):
        raise ValueError(f"perms[{group!r}] is not a permutation of 0..n-1 (got {np.asarray(p).tolist()[:10]}...); "
                         f"give each group a list holding every unit index once")
    return [int(i) for i in arr]


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Permutation:
    """A uniformly random permutation of every group of ``spec`` (within its blocks, if any).

    Example:
        >>> from landprobe.symmetry import PermutationSpec, random_permutation
        >>> spec = PermutationSpec({"h": [("w", 0)]}, sizes={"h": 4})
        >>> sorted(random_permutation(spec, seed=1).perms["h"])
        [0, 1, 2, 3]
    """
    missing = [g for g in spec.groups if g not in spec.sizes]
    if missing:
        raise ValueError(f"the spec lacks the sizes of groups {missing}; call spec.check(state_dict) first")
    rng = np.random.default_rng(seed)
    perms = {}
    for g, n in spec.sizes.items():
        b = spec.blocks.get(g, n)
        perms[g] = np.concatenate([s + rng.permutation(b) for s in range(0, n, b)]).tolist()
    return Permutation(perms, method="random", settings={"seed": seed})


def state_of(x: Any, what: str) -> dict[str, Tensor]:
    """A module's or a mapping's tensors (parameters and buffers) by state_dict name.

    Example:
        >>> import torch
        >>> from landprobe.symmetry import state_of
        >>> list(state_of(torch.nn.Linear(1, 1), "a"))
        ['weight', 'bias']
    """
    if isinstance(x, nn.Module):
        return {k: v.detach() for k, v in x.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}
    if isinstance(x, Mapping):
        bad = [k for k, v in x.items() if not isinstance(v, Tensor)][:3]
        if bad:
            raise TypeError(f"{what} holds non-tensor values at {bad}; pass a state_dict of tensors or a module")
        return dict(x)
    raise TypeError(f"{what} has type {type(x).__name__}; expected an nn.Module or a state_dict (dict of tensors)")


def _permute_axis(t: Tensor, ref: AxisRef, n: int, perm: Tensor) -> Tensor:
    """``t`` with the ``n`` units of ``ref``'s stretch reordered by ``perm`` (a new tensor)."""
    span = n * ref.inner
    seg = t.narrow(ref.axis, ref.offset, span)
    shape = tuple(seg.shape)
    seg = seg.reshape(shape[:ref.axis] + (n, ref.inner) + shape[ref.axis + 1:])
    seg = seg.index_select(ref.axis, perm.to(t.device)).reshape(shape)
    if span == t.shape[ref.axis]:
        return seg
    out = t.clone()
    out.narrow(ref.axis, ref.offset, span).copy_(seg)
    return out


def _permuted_tensor(t: Tensor, entries: list[tuple[str, AxisRef]], perms: Mapping[str, Tensor],
                    sizes: Mapping[str, int]) -> Tensor:
    for g, ref in entries:
        if g in perms:
            t = _permute_axis(t, ref, sizes[g], perms[g])
    return t


def _as_index(perms: Any) -> dict[str, Tensor]:
    """A Permutation's (or dict's) groups as long tensors."""
    raw = perms.perms if isinstance(perms, Permutation) else Permutation(dict(perms)).perms
    return {g: torch.as_tensor(p, dtype=torch.long) for g, p in raw.items()}


def permute(state_or_module: Any, permutation: Permutation | Mapping[str, Any], spec: PermutationSpec) -> Any:
    """Apply ``permutation`` to the parameters and buffers that ``spec`` names.

    The permuted network computes the same function. A state_dict gives a new state_dict
    (other entries shared, not copied); a module is permuted in place and returned.

    Example:
        >>> import torch
        >>> from landprobe.symmetry import permutation_spec, permute, random_permutation
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> x = torch.randn(5, 3)
        >>> spec = permutation_spec(model, x)
        >>> before = model(x)
        >>> _ = permute(model, random_permutation(spec, seed=0), spec)
        >>> torch.allclose(model(x), before, atol=1e-6)
        True
    """
    state = state_of(state_or_module, "state_or_module")
    spec.check(state)
    perms = _as_index(permutation)
    unknown = sorted(set(perms) - set(spec.groups))
    if unknown:
        raise KeyError(f"the permutation has groups {unknown[:5]} that the spec lacks (its groups: "
                       f"{list(spec.groups)[:5]}...); use the spec the permutation was found with")
    for g, p in perms.items():
        if len(p) != spec.sizes[g]:
            raise ValueError(f"perms[{g!r}] has {len(p)} units, the spec's group has {spec.sizes[g]}")
    out = {k: _permuted_tensor(state[k], spec.entries_of(k), perms, spec.sizes) for k in spec.names()}
    if isinstance(state_or_module, nn.Module):
        with torch.no_grad():
            for k, v in out.items():
                state[k].copy_(v)
        return state_or_module
    return {**state, **out}

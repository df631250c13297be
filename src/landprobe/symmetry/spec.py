"""The permutation spec: which axes of which parameters and buffers one permutation moves.

:func:`permutation_spec` derives it from the model and an example input; a spec written by
hand (or a partial one, listing only the groups to align) is a :class:`PermutationSpec` of
``group -> [(name, axis), ...]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor, nn

from landprobe.common.checks import check_module
from landprobe.symmetry._trace import SpecError, Trace, trace

__all__ = ["AxisRef", "PermutationSpec", "SpecError", "permutation_spec"]


class AxisRef(NamedTuple):
    """One axis (or a stretch of it) that a group permutes.

    ``tensor.narrow(axis, offset, n * inner)`` viewed as ``(n, inner)`` along ``axis`` has its
    ``n`` units permuted (``n``: the group's size). ``offset`` is nonzero where the axis is a
    concatenation of several groups; ``inner > 1`` where a channel permutation reaches a layer
    after a flatten (each channel is ``H*W`` consecutive entries).

    Example:
        >>> from landprobe.symmetry import AxisRef
        >>> AxisRef("fc.weight", 1, 0, 16)
        AxisRef(name='fc.weight', axis=1, offset=0, inner=16)
    """

    name: str
    axis: int
    offset: int = 0
    inner: int = 1


@dataclass
class PermutationSpec:
    """Groups of hidden units permuted together: ``group -> [AxisRef or (name, axis), ...]``.

    Args:
        groups: For each group, every parameter/buffer axis it permutes. Entries are
            :class:`AxisRef` or tuples ``(name, axis)`` / ``(name, axis, offset, inner)``.
        sizes: Units per group (filled in from the tensors by :meth:`check` when left out).
        blocks: ``group -> b``: permute only within consecutive blocks of ``b`` units
            (GroupNorm's groups).
        buffers: Names that are buffers (BatchNorm statistics): permuted with the rest, left
            out of weight matching's objective.

    Example:
        >>> import torch
        >>> from landprobe.symmetry import PermutationSpec
        >>> spec = PermutationSpec({"hidden": [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)]})
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
        >>> spec.check(model.state_dict()).sizes
        {'hidden': 5}
    """

    groups: dict[str, list[AxisRef]]
    sizes: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)
    buffers: list[str] = field(default_factory=list)
    trace: Trace | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.groups, Mapping):
            raise TypeError(f"groups={self.groups!r}; expected a dict group -> [(name, axis), ...], e.g. "
                            f"{{'hidden': [('fc1.weight', 0), ('fc1.bias', 0), ('fc2.weight', 1)]}}")
        self.groups = {str(g): [_axis_ref(g, e) for e in entries] for g, entries in self.groups.items()}
        self.sizes = {str(k): int(v) for k, v in dict(self.sizes).items()}
        self.blocks = {str(k): int(v) for k, v in dict(self.blocks).items()}
        self.buffers = list(self.buffers)

    def entries_of(self, name: str) -> list[tuple[str, AxisRef]]:
        """``(group, ref)`` for every axis of the tensor ``name`` that a group permutes."""
        return [(g, r) for g, refs in self.groups.items() for r in refs if r.name == name]

    def names(self) -> list[str]:
        """The tensors the spec touches, in order of first appearance."""
        return list(dict.fromkeys(r.name for refs in self.groups.values() for r in refs))

    def check(self, state: Mapping[str, Tensor], what: str = "the state_dict") -> PermutationSpec:
        """Check every entry against ``state``'s tensors and fill in :attr:`sizes`; returns self."""
        for g, refs in self.groups.items():
            rooms = [_room(g, r, state, what) for r in refs]
            exact = g not in self.sizes        # sizes read from the tensors: every entry spans its axis
            if exact:
                if any(r.offset for r in refs):
                    raise ValueError(f"group {g!r} of the spec has an entry at an offset, so its size cannot be "
                                     f"read from the tensors; give sizes={{{g!r}: n}} in the PermutationSpec")
                self.sizes[g] = rooms[0] // refs[0].inner
            n = self.sizes[g]
            for r, room in zip(refs, rooms):
                if n < 1 or n * r.inner > room or (exact and n * r.inner != room):
                    raise ValueError(f"group {g!r} has {n} units but {r} of {what} leaves room for "
                                     f"{room // r.inner}; every entry of a group permutes the same number of units")
            b = self.blocks.get(g)
            if b is not None and (b < 1 or n % b):
                raise ValueError(f"blocks[{g!r}]={b} does not divide the group's {n} units; give a block size "
                                 f"that divides it")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the trace is left out)."""
        return {"groups": {g: [list(r) for r in refs] for g, refs in self.groups.items()},
                "sizes": dict(self.sizes), "blocks": dict(self.blocks), "buffers": list(self.buffers)}


def _axis_ref(group: Any, entry: Any) -> AxisRef:
    if isinstance(entry, AxisRef):
        return entry
    if (isinstance(entry, (tuple, list)) and len(entry) in (2, 4) and isinstance(entry[0], str)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in entry[1:])):
        return AxisRef(*entry)
    raise TypeError(f"entry {entry!r} of group {group!r}; expected (name, axis) or (name, axis, offset, inner), "
                    f"e.g. ('fc1.weight', 0)")


def _room(group: str, r: AxisRef, state: Mapping[str, Tensor], what: str) -> int:
    if r.name not in state:
        close = [k for k in state if k.endswith(r.name.rpartition(".")[2])][:5]
        raise KeyError(f"group {group!r} of the spec names {r.name!r}, which {what} lacks; its keys ending alike: "
                       f"{close}. Use the names of model.state_dict()")
    t = state[r.name]
    if not 0 <= r.axis < t.dim():
        raise ValueError(f"group {group!r}: {r.name!r} has shape {tuple(t.shape)}, no axis {r.axis}; give an axis "
                         f"in 0..{t.dim() - 1}")
    room = t.shape[r.axis] - r.offset
    if r.inner < 1 or r.offset < 0 or room < r.inner:
        raise ValueError(f"group {group!r}: {r} does not fit {r.name!r}'s axis {r.axis} of length "
                         f"{t.shape[r.axis]}; give an offset inside the axis and an inner that fits")
    return room


def permutation_spec(model: nn.Module, example_input: Any) -> PermutationSpec:
    """Derive the permutation groups of ``model`` from its graph traced on ``example_input``.

    The graph (``torch.export``, in eval mode; the model's modes and values are left as they
    were) is walked operation by operation: linear and convolution layers tie their input axis
    to the weight's input axis and start a new group at their output, BatchNorm/LayerNorm
    carry the permutation to their weights and statistics, GroupNorm restricts it to within
    its groups, element-wise ops and residual additions tie their operands, concatenation
    joins groups, flatten expands a channel permutation into blocks; a tensor used at several
    places (a recurred block) has one permutation everywhere. The network's inputs and
    outputs are never permuted.

    Args:
        model: The network.
        example_input: A batch of inputs (a tensor, or a tuple of the forward's arguments).

    Returns:
        A :class:`PermutationSpec` whose groups are named after their first parameter axis.

    Raises:
        SpecError: An operation whose effect on permutations is not known; the message names
            the fx node and says how to write the spec by hand.

    Example:
        >>> import torch
        >>> from landprobe.symmetry import permutation_spec
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> spec = permutation_spec(model, torch.zeros(4, 3))
        >>> [(g, [(r.name, r.axis) for r in refs]) for g, refs in spec.groups.items()]
        [('0.weight:0', [('0.weight', 0), ('0.bias', 0), ('2.weight', 1)])]
    """
    check_module(model)
    found = trace(model, example_input)
    groups: dict[str, Any] = _with_aliases(model, found.groups)
    return PermutationSpec(groups, sizes=found.sizes, blocks=found.blocks, buffers=found.buffers,
                           trace=found)


def _with_aliases(model: nn.Module, groups: Mapping[str, list]) -> dict[str, list]:
    """Each group's entries, repeated for every other name of a tensor registered twice (tied weights)."""
    names: dict[int, list[str]] = {}
    for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(n)
    others = {n: [m for m in same if m != n] for same in names.values() if len(same) > 1 for n in same}
    out = {}
    for g, refs in groups.items():
        listed = {(r[0], r[1]) for r in refs}
        extra = [(m, *r[1:]) for r in refs for m in others.get(r[0], []) if (m, r[1]) not in listed]
        out[g] = [*refs, *extra]
    return out


def _resolve_spec(spec: PermutationSpec | None, model: Any, example_input: Any, who: str) -> PermutationSpec:
    """``spec`` as given, or traced from ``model`` (a module) on ``example_input``."""
    if spec is not None:
        if not isinstance(spec, PermutationSpec):
            raise TypeError(f"{who}: spec={spec!r}; expected a PermutationSpec (or None to trace the model)")
        return spec
    if not isinstance(model, nn.Module) or example_input is None:
        raise ValueError(f"{who} needs a spec: pass example_input= (a batch of inputs) with a model (nn.Module) "
                         f"to trace one, or spec=PermutationSpec(...)")
    return permutation_spec(model, example_input)

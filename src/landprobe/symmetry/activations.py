"""Activation matching: pair hidden units of ``a`` and ``b`` by how their activations correlate.

Both networks run on the same batches (one pass through :class:`landprobe.engine.Engine`, so
data sharding and the restoration of the model hold); for each group only running sums are
kept (counts, means, second moments and the ``n x n`` cross moments), never a whole
activation. The forwards run the traced graph (:func:`landprobe.symmetry.permutation_spec`)
with ``a``'s and ``b``'s tensors, reading each group's units where they leave a nonlinearity
(or, for groups that never pass one, wherever they appear), at every use of a shared block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from landprobe.common.checks import check_module
from landprobe.engine import Engine, Sharding
from landprobe.symmetry._rules import IGNORED
from landprobe.symmetry._trace import Trace, Walk, input_key, trace
from landprobe.symmetry.apply import Permutation, state_of
from landprobe.symmetry.matching import solve_assignment, unit_rows
from landprobe.symmetry.spec import AxisRef, PermutationSpec, permutation_spec

__all__ = ["activation_matching", "first_inputs"]

def _no_loss(output: Any, target: Any) -> Tensor:
    return torch.zeros(())


def _captures(tr: Trace, spec: PermutationSpec) -> dict[str, list[tuple[str, AxisRef]]]:
    """Node -> [(spec group, where on the node's output)] for every group of the spec."""
    by_ref = {(r[0], r[1], r[2], r[3]): g for g, refs in tr.groups.items() for r in refs}
    to_spec: dict[str, str] = {}
    for g, refs in spec.groups.items():
        keys = [(r.name, r.axis, r.offset, r.inner) for r in refs]
        hits = [by_ref[k] for k in keys if k in by_ref]
        if not hits or tr.sizes.get(hits[0]) != spec.sizes.get(g):
            raise ValueError(f"activation matching cannot find the units of group {g!r} in the traced graph (its "
                             f"entries {refs[:2]} are not one traced group); use weight_matching for this spec")
        to_spec[hits[0]] = g
    out: dict[str, list[tuple[str, AxisRef]]] = {}
    for g_trace, g in to_spec.items():
        nodes = [(node, found) for node, found in tr.node_groups.items() if any(x[1] == g_trace for x in found)]
        post = [(node, found) for node, found in nodes if node in tr.nonlinear]
        for node, found in (post or nodes):
            for axis, gg, offset, inner in found:
                if gg == g_trace:
                    out.setdefault(node, []).append((g, AxisRef(node, axis, offset, inner)))
    return out


class _Moments:
    """Running sums of one group: samples, means, second moments and cross moments (float64)."""

    def __init__(self, n: int) -> None:
        self.parts = [torch.zeros(*shape, dtype=torch.float64) for shape in ((1,), (n,), (n,), (n,), (n,), (n, n))]

    def add(self, xa: Tensor, xb: Tensor) -> None:
        xa, xb = xa.to(torch.float64), xb.to(torch.float64)
        count, sa, sb, saa, sbb, sab = self.parts
        count += xa.shape[0]
        sa += xa.sum(0)
        sb += xb.sum(0)
        saa += (xa * xa).sum(0)
        sbb += (xb * xb).sum(0)
        sab += xa.T @ xb

    @staticmethod
    def correlation(parts: list[Tensor], eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
        """The correlation matrix of a's and b's units, and which of a's units are constant."""
        count, sa, sb, saa, sbb, sab = parts
        m = max(float(count), 1.0)
        ma, mb = sa / m, sb / m
        va, vb = (saa / m - ma * ma).clamp_min(0), (sbb / m - mb * mb).clamp_min(0)
        cov = sab / m - torch.outer(ma, mb)
        constant = va <= 1e-12 * (saa / m).clamp_min(eps)
        return (cov / (torch.outer(va.sqrt(), vb.sqrt()) + eps)).numpy(), constant.numpy()


class _Runner(torch.fx.Interpreter):
    """Runs an exported graph on given tensors, handing the captured nodes' outputs to ``sink``."""

    def __init__(self, tr: Trace, captures: Mapping[str, Any], sink: Callable[[str, Tensor], None]) -> None:
        super().__init__(tr.program.graph_module)
        self.captures, self.sink = captures, sink

    def run_node(self, n: Any) -> Any:
        if n.op == "call_function" and Walk.op_name(n) in IGNORED:
            return None
        out = super().run_node(n)
        if n.name in self.captures:
            self.sink(n.name, out)
        return out


def _flat_args(tr: Trace, state: Mapping[str, Tensor], fallback: Mapping[str, Tensor], x: Any) -> list[Any]:
    user = iter(tree_flatten((tuple(x) if isinstance(x, (tuple, list)) else (x,), {}))[0])
    program = tr.program
    out = []
    for s in program.graph_signature.input_specs:
        kind = s.kind.name
        if kind in ("PARAMETER", "BUFFER"):
            out.append(state[s.target] if s.target in state else fallback[s.target])
        elif kind == "CONSTANT_TENSOR":
            out.append(program.constants[s.target])
        elif kind == "USER_INPUT":
            out.append(next(user))
        else:
            raise ValueError(f"activation matching cannot run a traced graph with a {kind} input; use "
                             f"weight_matching")
    return out


class _Pass:
    """One pass over the engine's batches, accumulating every group's moments."""

    def __init__(self, model: nn.Module, sa: Mapping[str, Tensor], sb: Mapping[str, Tensor], spec: PermutationSpec,
                 engine: Engine) -> None:
        self.a, self.spec, self.engine = model, spec, engine
        own = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}
        self.sa = {k: v.detach().to(own[k].device, own[k].dtype) for k, v in sa.items() if k in own}
        self.sb = {k: v.detach().to(own[k].device, own[k].dtype) for k, v in sb.items() if k in own}
        self.fallback = {**own, **dict(model.named_buffers())}
        self.traces: dict[tuple, tuple[Trace, Any]] = {}
        if spec.trace is not None and spec.trace.groups:
            self.traces[spec.trace.input_key] = (spec.trace, _captures(spec.trace, spec))

    def _trace_for(self, x: Any) -> tuple[Trace, Any]:
        key = input_key(x)
        if key not in self.traces:
            tr = trace(self.a, x)
            self.traces[key] = (tr, _captures(tr, self.spec))
        return self.traces[key]

    def local(self) -> list[Tensor]:
        """This rank's sums over its batches, every group's six tensors in the spec's order."""
        moments = {g: _Moments(n) for g, n in self.spec.sizes.items() if g in self.spec.groups}
        with torch.no_grad():
            for batch, _ in self.engine.each_batch():
                self._batch(self.engine.contract.inputs(batch), moments)
        return [t for g in moments for t in moments[g].parts]

    def _batch(self, x: Any, moments: dict[str, _Moments]) -> None:
        """``a`` then ``b`` on one batch; each captured output of ``a`` is dropped once paired."""
        tr, captures = self._trace_for(x)
        seen: dict[str, Tensor] = {}
        _Runner(tr, captures, seen.__setitem__).run(*_flat_args(tr, self.sa, self.fallback, x))

        def pair(node: str, out: Tensor) -> None:
            for g, ref in captures[node]:
                n = self.spec.sizes[g]
                moments[g].add(_samples(seen[node], ref, n), _samples(out, ref, n))
            del seen[node]
        _Runner(tr, captures, pair).run(*_flat_args(tr, self.sb, self.fallback, x))


def _samples(t: Tensor, ref: AxisRef, n: int) -> Tensor:
    """The units of ``ref`` as columns, every other entry a sample: ``(samples, n)``."""
    return unit_rows(t.detach(), ref, n).T


def activation_matching(a: Any, b: Any, data: Iterable | Engine, spec: PermutationSpec | None = None, *,
                        example_input: Any = None, loss_fn: Callable | None = None,
                        sharding: Sharding | None = None) -> Permutation:
    """Align ``b``'s hidden units to ``a``'s by the correlation of their activations on ``data``.

    For each group, the Pearson correlation ``corr[i, j]`` of unit ``i`` of ``a`` and unit ``j``
    of ``b`` over every sample (and spatial position, and use of a shared block) gives a linear
    assignment maximising the summed correlation. ``a`` and ``b`` run in eval mode.

    Args:
        a: The reference network: an ``nn.Module`` (it runs the data), or the tensors of the
            model of the Engine given as ``data`` (a state_dict; missing entries are the model's).
        b: The network to align: a module or a state_dict of the same architecture.
        data: ``(inputs, targets)`` batches (a list or DataLoader), or an :class:`Engine` whose
            model is ``a`` (then ``loss_fn`` and ``sharding`` come from it).
        spec: The :class:`PermutationSpec`; traced from ``a`` on the first batch's inputs (or
            ``example_input``) if None.
        example_input: Inputs to trace the spec on.
        loss_fn: Not needed to match; passed to the engine if given.
        sharding: Data sharding across ``torch.distributed`` ranks (the sums are added up).

    Returns:
        A :class:`Permutation`; ``objective`` holds the mean matched correlation before and after;
        ``settings["constant_units"]`` lists, per group, ``a``'s units whose activation never
        varied on the data (dead ReLUs): they correlate with nothing, so their places are
        arbitrary (``b`` computes the same function whatever they are).

    Example:
        >>> import torch
        >>> from landprobe.symmetry import activation_matching, permute, random_permutation, permutation_spec
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> a = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> data = [(torch.randn(64, 3), torch.zeros(64, 1))]
        >>> spec = permutation_spec(a, data[0][0])
        >>> shuffle = random_permutation(spec, seed=1)
        >>> found = activation_matching(a, permute(a.state_dict(), shuffle, spec), data, spec)
        >>> found.perms == shuffle.inverse().perms
        True
    """
    engine = _engine_for(a, data, loss_fn, sharding)
    model = engine.model
    found: list[PermutationSpec] = []

    def local() -> list[Tensor]:                 # inside all_sum: an error on one rank reaches all
        sa = state_of(model, "the model") if a is model else {**state_of(model, "the model"), **state_of(a, "a")}
        sb = state_of(b, "b")
        found.append(_spec_for(model, spec, example_input, engine).check(sa, "a").check(sb, "b"))
        return _Pass(model, sa, sb, found[-1], engine).local()
    with engine.guard("activation_matching"):
        engine.set_eval_modes()
        flat = engine.all_sum(local, "activation_matching")
    return _assign(found[-1], flat)


def _engine_for(a: Any, data: Any, loss_fn: Callable | None, sharding: Sharding | None) -> Engine:
    if isinstance(data, Engine):
        if isinstance(a, nn.Module) and data.model is not a:
            raise ValueError("data is an Engine over another model than a; pass an Engine whose model is a, or the "
                             "batches themselves")
        return data
    if not isinstance(a, nn.Module):
        raise TypeError(f"a has type {type(a).__name__}; activation matching runs a: pass the module, or pass its "
                        f"state_dict with data=Engine(model, ...) over a model of the same architecture")
    return Engine(check_module(a, "a"), loss_fn or _no_loss, data, sharding=sharding)


def _spec_for(a: nn.Module, spec: PermutationSpec | None, example_input: Any, engine: Engine) -> PermutationSpec:
    if spec is not None:
        if not isinstance(spec, PermutationSpec):
            raise TypeError(f"spec={spec!r}; expected a PermutationSpec or None (traced from a)")
        return spec.check(state_of(a, "a"), "a")
    return permutation_spec(a, first_inputs(engine) if example_input is None else example_input)


def first_inputs(engine: Engine) -> Any:
    """The model inputs of the first batch of ``engine``'s data, the same on every rank that reads
    the whole data (call inside the engine's guard).

    Example:
        >>> import torch
        >>> from landprobe.engine import Engine
        >>> from landprobe.symmetry.activations import first_inputs
        >>> engine = Engine(torch.nn.Linear(2, 1), torch.nn.MSELoss(), [(torch.ones(3, 2), torch.ones(3, 1))])
        >>> with engine.guard():
        ...     first_inputs(engine).shape
        torch.Size([3, 2])
    """
    first = next(iter(engine.batches()), None)
    if first is not None:
        return engine.contract.inputs(first[0])
    raise ValueError("the data yielded no batch to trace the model on (under data sharding with shards of "
                     "their own, this rank's shard is empty); pass spec= or example_input=")


def _assign(spec: PermutationSpec, flat: list[Tensor]) -> Permutation:
    perms, before, after, units, constant = {}, 0.0, 0.0, 0, {}
    groups = [g for g in spec.sizes if g in spec.groups]
    for k, g in enumerate(groups):
        corr, const = _Moments.correlation(list(flat[6 * k: 6 * k + 6]))
        constant[g] = np.flatnonzero(const).tolist()
        p = solve_assignment(corr, spec.blocks.get(g))
        rows = np.arange(len(p))
        before += float(corr[rows, rows].sum())
        after += float(corr[rows, p].sum())
        units += len(p)
        perms[g] = p.tolist()
    units = max(units, 1)
    return Permutation(perms, [before / units, after / units], "activation_matching",
                       {"samples": [float(flat[6 * k][0]) for k in range(len(groups))], "constant_units": constant})

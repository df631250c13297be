"""The walk over a model's traced graph that finds its permutation groups.

The model is traced with ``torch.export`` (an fx graph of ATen operators whose placeholders
name the model's parameters and buffers; Python control flow, such as a loop over
recurrences, is unrolled for the example input). Each node's axes get variables from
:mod:`landprobe.symmetry._axes` through the operator's rule in :mod:`landprobe.symmetry._rules`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landprobe.symmetry._axes import AxisVars
from landprobe.symmetry._rules import FUNCTIONS, IGNORED, NONLINEAR, RULES

HAND_SPEC = ("give the spec by hand instead: PermutationSpec({'hidden': [('fc1.weight', 0), ('fc1.bias', 0), "
             "('fc2.weight', 1)]}) lists, for each group of units permuted together, the (name, axis) of every "
             "parameter and buffer axis it permutes; pass it as spec= (see docs/symmetry.md)")


class SpecError(ValueError):
    """The permutation groups of a model cannot be derived from its traced graph.

    The message names the fx node (and the module it belongs to) whose operation is not
    understood, and says how to write the spec by hand.

    Example:
        >>> from landprobe.symmetry import SpecError
        >>> str(SpecError("fx node 'foo': an unknown operation"))
        "fx node 'foo': an unknown operation"
    """


@dataclass
class Trace:
    """What activation matching needs from the walk: the graph and where each group appears."""

    program: Any
    node_groups: dict[str, list[tuple[int, str, int, int]]]   # node -> [(axis, group, offset, inner)]
    nonlinear: set[str]
    groups: dict[str, list[tuple[str, int, int, int]]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)
    buffers: list[str] = field(default_factory=list)
    input_key: tuple = ()


@contextlib.contextmanager
def eval_modes(model: nn.Module) -> Iterator[None]:
    """The model in eval mode; every submodule's own mode restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def export(model: nn.Module, example_input: Any) -> Any:
    """``torch.export`` of ``model`` in eval mode on ``example_input`` (a tensor or a tuple of args)."""
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    try:
        with eval_modes(model), torch.no_grad():
            return torch.export.export(model, args, strict=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"cannot trace {type(model).__name__} with torch.export on example_input of "
                        f"{_describe(args)} ({type(exc).__name__}: {first}); check that model(*example_input) "
                        f"runs, or {HAND_SPEC}") from exc


def _describe(args: tuple) -> str:
    return ", ".join(f"shape {tuple(a.shape)}" if isinstance(a, torch.Tensor) else type(a).__name__ for a in args)


class Walk:
    """One pass over an exported graph, assigning axis variables node by node."""

    def __init__(self, program: Any) -> None:
        self.program = program
        self.vars = AxisVars()
        self.node_axes: dict[str, Any] = {}
        self.param_axes: dict[str, list[int]] = {}
        self.buffers: list[str] = []

    # ---------------------------------------------------------------- helpers for the rules
    @staticmethod
    def is_tensor(a: Any) -> bool:
        return isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor)

    @staticmethod
    def vals(node: Any) -> Any:
        return node.meta.get("val")

    def shape(self, a: Any) -> tuple[int, ...]:
        return tuple(int(s) for s in a.meta["val"].shape)

    def axes(self, a: Any) -> list[int]:
        found = self.node_axes.get(a.name)
        if not isinstance(found, list):
            raise self.unsupported(a, "a tensor whose axes were not derived")
        return found

    def new_axes_of(self, val: Any, fixed: bool = False) -> list[int]:
        if not isinstance(val, torch.Tensor):
            return []
        return [self.vars.new(int(s), fixed=fixed) for s in val.shape]

    def new_axes(self, node: Any, fixed: bool = False) -> list[int]:
        return self.new_axes_of(node.meta.get("val"), fixed)

    @staticmethod
    def op_name(node: Any) -> str:
        target = node.target
        packet = getattr(target, "overloadpacket", None)
        return packet.__name__ if packet is not None else getattr(target, "__name__", str(target))

    def unsupported(self, node: Any, what: str) -> SpecError:
        stack = node.meta.get("nn_module_stack") or {}
        path = str(list(stack.values())[-1][0]) if stack else ""
        where = f" in module {path!r}" if path else ""
        trace = (node.meta.get("stack_trace") or "").strip().splitlines()
        code = f" (from: {trace[-1].strip()})" if trace else ""
        return SpecError(f"cannot tell how fx node {node.name!r} ({node.op} {node.target}){where}{code} acts on "
                         f"permutations of hidden units: {what}; {HAND_SPEC}")

    def reshape(self, src: Any, node: Any) -> list[int]:
        """Views: merged axes keep the first one's permutation, expanded; split axes are fixed."""
        xa, ins, outs = self.axes(src), self.shape(src), self.shape(node)
        out = self.new_axes(node, fixed=True)
        i_dims = [d for d, s in enumerate(ins) if s != 1]
        o_dims = [d for d, s in enumerate(outs) if s != 1]
        while i_dims and o_dims:
            gi, go = [i_dims.pop(0)], [o_dims.pop(0)]
            while math.prod(ins[d] for d in gi) != math.prod(outs[d] for d in go):
                if math.prod(ins[d] for d in gi) < math.prod(outs[d] for d in go):
                    gi.append(i_dims.pop(0))
                else:
                    go.append(o_dims.pop(0))
            self._regroup(xa, gi, out, go, ins)
        return out

    def _regroup(self, xa: list[int], gi: list[int], out: list[int], go: list[int], ins: tuple) -> None:
        if len(gi) == 1 and len(go) == 1:
            out[go[0]] = xa[gi[0]]
        elif len(go) == 1:
            for d in gi[1:]:
                self.vars.fix(xa[d])
            merged = self.vars.new(math.prod(ins[d] for d in gi))
            self.vars.refined[merged] = [(xa[gi[0]], math.prod(ins[d] for d in gi[1:]))]
            out[go[0]] = merged
        else:
            for d in gi:
                self.vars.fix(xa[d])

    # ---------------------------------------------------------------- the walk
    def run(self) -> None:
        specs = {s.arg.name: s for s in self.program.graph_signature.input_specs if hasattr(s.arg, "name")}
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node, specs.get(node.name))
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                self._output(node)
            else:
                raise self.unsupported(node, f"an fx {node.op!r} node (control flow or a submodule call)")

    def _placeholder(self, node: Any, spec: Any) -> None:
        kind = getattr(getattr(spec, "kind", None), "name", "")
        weight = kind == "PARAMETER" or (kind == "BUFFER" and getattr(spec, "persistent", True))
        axes = [self.vars.new(int(s), fixed=not weight, active=False) for s in node.meta["val"].shape] \
            if self.is_tensor(node) else None
        self.node_axes[node.name] = axes
        if weight and axes is not None:
            self.param_axes[spec.target] = axes
            if kind == "BUFFER":
                self.buffers.append(spec.target)

    def _call(self, node: Any) -> None:
        if node.target in FUNCTIONS:
            result = FUNCTIONS[node.target](self, node)
        else:
            name = self.op_name(node)
            if name in IGNORED:
                return
            if name not in RULES:
                raise self.unsupported(node, f"no rule for the operator {name!r}")
            result = RULES[name](self, node)
        self._check(node, result)
        for axes in (result if isinstance(result, tuple) else [result]):
            for v in axes or []:
                for leaf in self.vars.leaves(v):
                    self.vars.active[leaf.var] = True
        self.node_axes[node.name] = result

    def _check(self, node: Any, result: Any) -> None:
        vals = node.meta.get("val")
        pairs = zip(vals, result) if isinstance(vals, (tuple, list)) and isinstance(result, tuple) else [(vals, result)]
        for val, axes in pairs:
            if isinstance(val, torch.Tensor) and (not isinstance(axes, list) or len(axes) != val.dim() or any(
                    sum(leaf.length for leaf in self.vars.leaves(v)) != s for v, s in zip(axes, val.shape))):
                raise self.unsupported(node, "its output's axes do not match its shape")

    def _output(self, node: Any) -> None:
        kinds = [getattr(s.kind, "name", "") for s in self.program.graph_signature.output_specs]
        outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else [node.args[0]]
        for k, out in enumerate(outs):
            if k < len(kinds) and kinds[k] == "BUFFER_MUTATION":
                continue
            if self.is_tensor(out):
                for v in self.axes(out):
                    self.vars.fix(v)


def trace(model: nn.Module, example_input: Any) -> Trace:
    """Trace ``model`` on ``example_input`` and derive its permutation groups."""
    program = export(model, example_input)
    walk = Walk(program)
    walk.run()
    found = collect(walk)
    found.input_key = input_key(example_input)
    return found


def input_key(x: Any) -> tuple:
    """Shapes and dtypes of an input's tensors: inputs with one key share a traced graph."""
    from torch.utils._pytree import tree_flatten
    args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    return tuple((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else repr(t) for t in tree_flatten(args)[0])


def collect(walk: Walk) -> Trace:
    """The groups (named after their first parameter axis) and where they appear in the graph."""
    v = walk.vars
    names: dict[int, str] = {}
    out = Trace(walk.program, {}, set(), buffers=list(walk.buffers))
    for pname, axes in walk.param_axes.items():
        for axis, var in enumerate(axes):
            offset = 0
            for leaf in v.leaves(var):
                r = leaf.var
                if not v.fixed[r] and v.active[r] and v.size[r] > 1:
                    g = names.setdefault(r, f"{pname}:{axis}" + (f"+{offset}" if offset else ""))
                    out.groups.setdefault(g, []).append((pname, axis, offset, leaf.inner))
                    out.sizes[g] = v.size[r]
                    if v.block[r] and v.block[r] < v.size[r]:
                        out.blocks[g] = v.block[r]
                offset += leaf.length
    for node in walk.program.graph.nodes:
        tensor_axes = walk.node_axes.get(node.name)
        if node.op != "call_function" or not isinstance(tensor_axes, list):
            continue
        found = _node_groups(v, tensor_axes, names)
        if found:
            out.node_groups[node.name] = found
            if walk.op_name(node) in NONLINEAR:
                out.nonlinear.add(node.name)
    return out


def _node_groups(v: AxisVars, axes: list[int], names: dict[int, str]) -> list[tuple[int, str, int, int]]:
    found = []
    for axis, var in enumerate(axes):
        offset = 0
        for leaf in v.leaves(var):
            if leaf.var in names:
                found.append((axis, names[leaf.var], offset, leaf.inner))
            offset += leaf.length
    return found

"""How each operation of a traced graph ties the axes of its inputs, outputs and weights.

A rule takes the :class:`~landprobe.symmetry._trace.Walk` and the fx node and returns the axis
variables of the node's output (a list, one variable per axis; a tuple of lists for several
outputs; ``None`` for no tensor). Rules are keyed by the ATen operator's name without its
overload (``"conv2d"``, ``"batch_norm"``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from landprobe.symmetry._trace import Walk

Rule = Callable[["Walk", Any], Any]
RULES: dict[str, Rule] = {}

POINTWISE = (
    "relu relu_ gelu silu sigmoid tanh leaky_relu elu selu celu hardtanh hardswish hardsigmoid softplus mish "
    "relu6 prelu_scalar dropout feature_dropout alpha_dropout clone contiguous detach alias lift_fresh_copy neg "
    "abs exp log log1p sqrt rsqrt square sin cos reciprocal sign pow clamp clamp_min clamp_max to _to_copy "
    "type_as add add_ sub sub_ mul mul_ div div_ maximum minimum where addcmul addcdiv lerp zeros_like "
    "ones_like full_like empty_like softmax log_softmax _softmax _log_softmax erf floor_divide fmod "
    "remainder masked_fill copy_ logical_not eq ne lt le gt ge expand expand_as"
).split()
#: Activations after which units are compared in activation matching.
NONLINEAR = frozenset("relu relu_ gelu silu sigmoid tanh leaky_relu elu selu celu hardtanh hardswish "
                      "hardsigmoid softplus mish relu6".split())
IGNORED = ("_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_constrain_range_for_size",
           "_assert_async", "sym_numel", "sym_stride")


def rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn
    return register


def arg(node: Any, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


@rule(*POINTWISE)
def pointwise(w: Walk, node: Any) -> list[int]:
    """Broadcasting element-wise ops: every operand's axis of the output's length is one axis."""
    out = w.new_axes(node)
    for a in [*node.args, *node.kwargs.values()]:
        for t in (a if isinstance(a, (list, tuple)) else [a]):
            if not w.is_tensor(t):
                continue
            axes, shape = w.axes(t), w.shape(t)
            for k in range(1, len(axes) + 1):
                if shape[-k] == w.shape(node)[-k]:
                    w.vars.unify(axes[-k], out[-k])
    return out


@rule("linear")
def linear(w: Walk, node: Any) -> list[int]:
    x, weight, bias = node.args[0], node.args[1], arg(node, 2, "bias")
    xa, wa = w.axes(x), w.axes(weight)
    w.vars.unify(xa[-1], wa[1])
    out = [*xa[:-1], wa[0]]
    if w.is_tensor(bias):
        w.vars.unify(w.axes(bias)[0], wa[0])
    return out


def _conv(w: Walk, node: Any, groups: int) -> list[int]:
    x, weight, bias = node.args[0], node.args[1], arg(node, 2, "bias")
    xa, wa = w.axes(x), w.axes(weight)
    out = w.new_axes(node, fixed=True)
    ch = 1 if len(xa) == len(wa) else 0                 # batched or not
    if ch:
        out[0] = xa[0]
    for v in wa[2:]:
        w.vars.fix(v)
    c_in, c_out, per_group = w.shape(x)[ch], w.shape(weight)[0], w.shape(weight)[1]
    if groups == 1:
        w.vars.unify(xa[ch], wa[1])
        out[ch] = wa[0]
    elif groups == c_in == c_out and per_group == 1:     # depthwise: channel c sees only channel c
        w.vars.fix(wa[1])
        w.vars.unify(xa[ch], wa[0])
        out[ch] = wa[0]
    else:                                                # grouped: left unpermuted
        for v in (*wa[:2], xa[ch]):
            w.vars.fix(v)
    if w.is_tensor(bias):
        w.vars.unify(w.axes(bias)[0], out[ch])
    return out


@rule("conv1d", "conv2d", "conv3d")
def conv(w: Walk, node: Any) -> list[int]:
    return _conv(w, node, int(arg(node, 6, "groups", 1)))


@rule("convolution")
def convolution(w: Walk, node: Any) -> list[int]:
    if bool(arg(node, 6, "transposed", False)):
        raise w.unsupported(node, "a transposed convolution")
    return _conv(w, node, int(arg(node, 8, "groups", 1)))


def _channel_norm(w: Walk, node: Any, tensors: list[Any]) -> list[int]:
    xa = w.axes(node.args[0])
    ch = xa[1] if len(xa) > 1 else xa[0]
    for t in tensors:
        if w.is_tensor(t):
            w.vars.unify(w.axes(t)[0], ch)
    return list(xa)


@rule("batch_norm", "instance_norm")
def batch_norm(w: Walk, node: Any) -> list[int]:
    return _channel_norm(w, node, list(node.args[1:5]))


@rule("_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional", "native_batch_norm",
      "_native_batch_norm_legit", "cudnn_batch_norm")
def native_batch_norm(w: Walk, node: Any) -> tuple:
    out = _channel_norm(w, node, list(node.args[1:5]))
    return (out, *(w.new_axes_of(v, fixed=True) for v in w.vals(node)[1:]))


@rule("layer_norm")
def layer_norm(w: Walk, node: Any) -> list[int]:
    xa = w.axes(node.args[0])
    k = len(node.args[1])
    for t in (arg(node, 2, "weight"), arg(node, 3, "bias")):
        if w.is_tensor(t):
            for ax_x, ax_t in zip(xa[-k:], w.axes(t)):
                w.vars.unify(ax_x, ax_t)
    return list(xa)


@rule("group_norm")
def group_norm(w: Walk, node: Any) -> list[int]:
    xa = w.axes(node.args[0])
    groups = int(node.args[1])
    channels = w.shape(node.args[0])[1]
    for t in (arg(node, 2, "weight"), arg(node, 3, "bias")):
        if w.is_tensor(t):
            w.vars.unify(w.axes(t)[0], xa[1])
    if groups > 1:
        w.vars.constrain_blocks(xa[1], channels // groups)
    return list(xa)


@rule("cat", "concat")
def cat(w: Walk, node: Any) -> list[int]:
    parts = [t for t in node.args[0] if w.is_tensor(t)]
    out = w.new_axes(node)
    dim = int(arg(node, 1, "dim", 0)) % len(out)
    for t in parts:
        for d, v in enumerate(w.axes(t)):
            if d != dim:
                w.vars.unify(v, out[d])
    joined = w.vars.new(w.shape(node)[dim])
    w.vars.refined[joined] = [(w.axes(t)[dim], 1) for t in parts if w.shape(t)[dim] > 0]
    out[dim] = joined
    return out


@rule("stack")
def stack(w: Walk, node: Any) -> list[int]:
    parts = [t for t in node.args[0] if w.is_tensor(t)]
    out = w.new_axes(node)
    dim = int(arg(node, 1, "dim", 0)) % len(out)
    w.vars.fix(out[dim])
    rest = out[:dim] + out[dim + 1:]
    for t in parts:
        for v, o in zip(w.axes(t), rest):
            w.vars.unify(v, o)
    return out


@rule("flatten", "view", "reshape", "_unsafe_view", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
def reshape(w: Walk, node: Any) -> list[int]:
    return w.reshape(node.args[0], node)


@rule("t", "transpose", "permute", "swapaxes", "movedim", "numpy_T", "mT")
def transpose(w: Walk, node: Any) -> list[int]:
    xa = w.axes(node.args[0])
    name = w.op_name(node)
    order = list(range(len(xa)))
    if name in ("t", "numpy_T") and len(xa) == 2:
        order = [1, 0]
    elif name in ("transpose", "swapaxes", "mT"):
        i, j = (-2, -1) if name == "mT" else (int(node.args[1]), int(node.args[2]))
        order[i], order[j] = order[j], order[i]
    elif name == "permute":
        order = [int(d) % len(xa) for d in node.args[1]]
    else:
        raise w.unsupported(node, f"the axis order of {name}")
    return [xa[d] for d in order]


@rule("mm", "matmul", "bmm", "addmm", "baddbmm")
def matmul(w: Walk, node: Any) -> list[int]:
    shift = 1 if w.op_name(node) in ("addmm", "baddbmm") else 0
    a, b = node.args[shift], node.args[shift + 1]
    aa, ba = w.axes(a), w.axes(b)
    if len(aa) < 2 or len(ba) < 2:
        raise w.unsupported(node, "a matrix product with a vector operand")
    w.vars.unify(aa[-1], ba[-2])
    out = w.new_axes(node)
    w.vars.unify(out[-2], aa[-2])
    w.vars.unify(out[-1], ba[-1])
    for k in range(3, len(out) + 1):
        for t in (aa, ba):
            if len(t) >= k and w.shape(node)[-k] == w.shape(a if t is aa else b)[-k]:
                w.vars.unify(out[-k], t[-k])
    if shift:
        pointwise_into(w, node.args[0], out, w.shape(node))
    return out


def pointwise_into(w: Walk, t: Any, out: list[int], shape: tuple) -> None:
    if not w.is_tensor(t):
        return
    axes, ts = w.axes(t), w.shape(t)
    for k in range(1, len(axes) + 1):
        if ts[-k] == shape[-k]:
            w.vars.unify(axes[-k], out[-k])


@rule("mean", "sum", "amax", "amin", "var", "std", "var_mean", "logsumexp", "norm", "max", "min", "prod",
      "linalg_vector_norm", "argmax", "argmin")
def reduce(w: Walk, node: Any) -> Any:
    """Reductions are invariant to a permutation of the reduced axes; the kept axes carry over."""
    if any(w.is_tensor(a) for a in [*node.args[1:], *node.kwargs.values()]):
        return pointwise(w, node)                                  # max(a, b), min(a, b): element-wise
    xa = w.axes(node.args[0])
    dims = reduced_dims(node, len(xa))
    vals = w.vals(node)
    first = vals[0] if isinstance(vals, (list, tuple)) else vals
    if first.dim() == len(xa):                                       # keepdim
        out = [w.vars.new(1, fixed=True) if d in dims else v for d, v in enumerate(xa)]
    elif first.dim() == len(xa) - len(dims):
        out = [v for d, v in enumerate(xa) if d not in dims]
    else:
        out = w.new_axes_of(first, fixed=True)
    if w.op_name(node) in ("argmax", "argmin") or isinstance(vals, (list, tuple)):
        for d in dims:
            w.vars.fix(xa[d])                                         # an index into the reduced axis
    if isinstance(vals, (list, tuple)):
        return tuple(list(out) for _ in vals)
    return out


def reduced_dims(node: Any, ndim: int) -> set[int]:
    at = 2 if str(node.target).split(".")[-2] in ("norm", "linalg_vector_norm") else 1
    dims = node.kwargs.get("dim", node.args[at] if len(node.args) > at else None)
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not dims:
        return set(range(ndim))
    return {int(d) % ndim for d in dims}


@rule("constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
      "replication_pad2d", "reflection_pad3d", "replication_pad3d")
def pad(w: Walk, node: Any) -> list[int]:
    xa = w.axes(node.args[0])
    widths = list(node.args[1])
    out = list(xa)
    for k in range(len(widths) // 2):
        d = len(xa) - 1 - k
        if widths[2 * k] or widths[2 * k + 1]:
            w.vars.fix(xa[d])
            out[d] = w.vars.new(w.shape(node)[d], fixed=True)
    return out


@rule("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
      "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
      "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool2d_with_indices", "max_pool1d_with_indices",
      "max_pool3d_with_indices", "upsample_nearest1d", "upsample_nearest2d", "upsample_bilinear2d",
      "upsample_nearest3d")
def spatial(w: Walk, node: Any) -> Any:
    """Per-channel spatial ops: the leading (batch, channel) axes carry over, space is fixed."""
    xa = w.axes(node.args[0])
    k = next((int(c) for c in w.op_name(node) if c.isdigit()), len(xa) - 2)
    vals = w.vals(node)
    first = vals[0] if isinstance(vals, (list, tuple)) else vals
    lead = len(xa) - k
    out = [*xa[:lead], *w.new_axes_of(first, fixed=True)[lead:]]
    if isinstance(vals, (list, tuple)):
        return tuple(list(out) for _ in vals)
    return out


@rule("select")
def select(w: Walk, node: Any) -> list[int]:
    xa = w.axes(node.args[0])
    d = int(node.args[1]) % len(xa)
    w.vars.fix(xa[d])
    return xa[:d] + xa[d + 1:]


@rule("slice")
def slice_(w: Walk, node: Any) -> list[int]:
    xa = w.axes(node.args[0])
    d = int(arg(node, 1, "dim", 0)) % len(xa)
    if w.shape(node)[d] == w.shape(node.args[0])[d]:
        return list(xa)
    w.vars.fix(xa[d])
    out = list(xa)
    out[d] = w.vars.new(w.shape(node)[d], fixed=True)
    return out


@rule("embedding")
def embedding(w: Walk, node: Any) -> list[int]:
    weight, idx = node.args[0], node.args[1]
    wa = w.axes(weight)
    w.vars.fix(wa[0])
    return [*w.axes(idx), wa[1]]


@rule("arange", "zeros", "ones", "full", "empty", "scalar_tensor", "tensor", "rand", "randn", "randint",
      "_tensor_constant")
def factory(w: Walk, node: Any) -> list[int]:
    return w.new_axes(node, fixed=True)


def getitem(w: Walk, node: Any) -> Any:
    src, i = node.args
    parts = w.node_axes.get(src.name)
    if isinstance(parts, tuple) and isinstance(i, int):
        return parts[i]
    raise w.unsupported(node, "an item of something other than an operator's tuple of outputs")


FUNCTIONS: dict[Any, Rule] = {operator.getitem: getitem}

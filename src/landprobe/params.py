"""Parameter vectors and subnet selectors: the spine every probe and penalty uses.

A :class:`ParamVector` is an ordered mapping ``name -> tensor`` with vector arithmetic that
runs on all tensors at once (``torch._foreach_*``). A *subnet selector* names a part of a
model; :func:`select` turns one into parameter names.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

__all__ = ["ParamVector", "Selector", "select", "select_subnets", "state_names", "match_selector", "no_match_error",
           "unwrap_state_dict", "unwrapped_key", "WRAPPER_PREFIXES", "as_param_vector", "check_finite"]

Selector = Union[str, nn.Module, Sequence[Union[str, nn.Module]]]

_GLOB_CHARS = set("*?[")


# --------------------------------------------------------------------------- selectors
def state_names(model: nn.Module, *, buffers: bool = False) -> list[str]:
    """Names of the model's parameters (or buffers), in registration order, shared ones once."""
    if buffers:
        return [n for n, _ in model.named_buffers()]
    return [n for n, _ in model.named_parameters()]


def _module_path(model: nn.Module, module: nn.Module) -> str:
    for name, mod in model.named_modules(remove_duplicate=False):
        if mod is module:
            return name
    raise ValueError(
        f"subnet selector {type(module).__name__} module is not a submodule of "
        f"{type(model).__name__}: pass a module that belongs to the model, or its dotted path."
    )


def match_selector(model: nn.Module, sel: str | nn.Module, names: list[str]) -> list[str]:
    """The names among ``names`` that one selector (a dotted path, a glob, a module or a module
    type) matches in ``model``; empty when it matches none.

    Example:
        >>> import torch
        >>> from landprobe.params import match_selector
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> match_selector(net, "1", [n for n, _ in net.named_parameters()])
        ['1.weight', '1.bias']
    """
    if isinstance(sel, nn.Module):
        path = _module_path(model, sel)
        if path == "":
            return list(names)
        return [n for n in names if n.startswith(path + ".")]
    if isinstance(sel, type):
        raise TypeError(
            f"received the class {sel.__name__}, not a module: pass the submodule instance "
            f"that belongs to the model (e.g. model.inet) or its name ('inet')."
        )
    if not isinstance(sel, str):
        raise TypeError(
            f"subnet selector {sel!r} has type {type(sel).__name__}; expected a dotted module path "
            f"('rnet.expand'), a glob on parameter names ('inet.*'), a submodule of the model, or a list of these."
        )
    if sel in names:
        return [sel]
    if any(c in sel for c in _GLOB_CHARS):
        return [n for n in names if fnmatch.fnmatchcase(n, sel)]
    prefix = sel.rstrip(".") + "."
    return [n for n in names if n.startswith(prefix)]


def no_match_error(model: nn.Module, sel: Any, names: list[str], what: str) -> ValueError:
    """The error for a selector that matched nothing, naming close candidates.

    Example:
        >>> import torch
        >>> from landprobe.params import no_match_error
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 1))
        >>> str(no_match_error(net, "encoder", ["0.weight", "0.bias"], "parameter"))[:46]
        "subnet selector 'encoder' matched no parameter"
    """
    candidates = sorted({n.split(".")[0] for n in names} | {m for m, _ in model.named_modules() if m})
    near = difflib.get_close_matches(str(sel), candidates, n=4, cutoff=0.4) or candidates[:6]
    return ValueError(
        f"subnet selector {sel!r} matched no {what} of {type(model).__name__}. "
        f"Close names: {near}. A selector is a dotted module path ('rnet.expand'), "
        f"a glob on parameter names ('inet.*'), or a submodule of the model."
    )


def select(model: nn.Module, selector: Selector | None, *, buffers: bool = False,
           allow_empty: bool = False) -> list[str]:
    """Names of the parameters (or buffers) of ``model`` that ``selector`` picks, in model order.

    Args:
        model: The module the selector refers to.
        selector: ``None`` (everything), a dotted submodule path (``"rnet.expand"``) or an
            exact parameter name, a glob on parameter names (``"inet.*"``, ``"*.weight"``),
            a submodule of ``model``, or a list of these (their union).
        buffers: Select among buffers instead of parameters.
        allow_empty: Return ``[]`` instead of raising when nothing matches.

    Raises:
        ValueError: If the selector (or an element of a list) matches nothing.

    Example:
        >>> import torch.nn as nn, landprobe as lp
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> lp.select(net, "0")
        ['0.weight', '0.bias']
        >>> lp.select(net, "*.weight")
        ['0.weight', '2.weight']
        >>> lp.select(net, [net[2], "0.bias"])
        ['0.bias', '2.weight', '2.bias']
    """
    names = state_names(model, buffers=buffers)
    if selector is None:
        return names
    sels = list(selector) if isinstance(selector, (list, tuple)) else [selector]
    if not sels:
        raise ValueError("subnet selector is an empty list; pass None to select the whole model.")
    chosen: set[str] = set()
    for sel in sels:
        got = match_selector(model, sel, names)
        if not got and not allow_empty:
            raise no_match_error(model, sel, names, "buffer" if buffers else "parameter")
        chosen.update(got)
    return [n for n in names if n in chosen]


def select_subnets(model: nn.Module, selectors: Mapping[Any, Selector]) -> dict[Any, list[str]]:
    """Resolve several selectors at once and refuse overlaps.

    Returns a dict ``key -> parameter names`` in the order of ``selectors``.

    Raises:
        ValueError: If a selector matches nothing, or two selectors share a parameter
            (the message names both and the shared parameter).

    Example:
        >>> import torch.nn as nn, landprobe as lp
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> lp.select_subnets(net, {"first": "0", "last": net[1]})
        {'first': ['0.weight', '0.bias'], 'last': ['1.weight', '1.bias']}
    """
    out: dict[Any, list[str]] = {}
    owner: dict[str, Any] = {}
    for key, sel in selectors.items():
        names = select(model, sel)
        for n in names:
            if n in owner:
                raise ValueError(
                    f"subnet selectors {owner[n]!r} and {key!r} both select parameter {n!r}; "
                    f"each parameter may belong to one subnet only. Narrow one of the selectors "
                    f"(e.g. a glob such as 'inet.conv1.*')."
                )
            owner[n] = key
        out[key] = names
    return out


# --------------------------------------------------------------------------- ParamVector
def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float)) or (isinstance(x, Tensor) and x.dim() == 0)


class ParamVector(Mapping[str, Tensor]):
    """An ordered mapping ``name -> tensor`` that behaves like one long vector.

    Arithmetic (``+``, ``-``, ``*`` by a scalar, ``dot``, ``norm``, ``lerp``) runs on all tensors
    at once with ``torch._foreach_*`` kernels; no flat copy of the whole vector is made.
    Two vectors combine only if they hold the same names with the same shapes.

    Args:
        tensors: Mapping ``name -> tensor`` (order kept). Tensors are used as given (no copy).

    Example:
        >>> import torch, landprobe as lp
        >>> v = lp.ParamVector({"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])})
        >>> v.norm()
        5.0
        >>> (2 * v - v).dot(v)
        25.0
        >>> v.lerp(lp.ParamVector({"w": torch.zeros(2), "b": torch.zeros(1)}), 0.5)["w"]
        tensor([1.5000, 0.0000])
    """

    __slots__ = ("_names", "_tensors")

    def __init__(self, tensors: Mapping[str, Tensor]):
        names = list(tensors.keys())
        ts = [tensors[n] for n in names]
        for n, t in zip(names, ts):
            if not isinstance(t, Tensor):
                raise TypeError(f"ParamVector entry {n!r} is a {type(t).__name__}, expected a torch.Tensor")
        self._names: list[str] = names
        self._tensors: list[Tensor] = ts

    # ---- construction
    @classmethod
    def _wrap(cls, names: list[str], tensors: list[Tensor]) -> ParamVector:
        out = cls.__new__(cls)
        out._names = names
        out._tensors = list(tensors)
        return out

    @classmethod
    def from_module(cls, model: nn.Module, subnet: Selector | None = None, *, buffers: bool = False,
                    copy: bool = True) -> ParamVector:
        """The model's parameters (optionally one subnet, optionally with floating buffers).

        Args:
            model: Any ``nn.Module``.
            subnet: A selector (see :func:`select`); ``None`` takes every parameter.
            buffers: Also take the floating-point buffers (e.g. BatchNorm statistics) that the
                subnet covers; integer buffers such as ``num_batches_tracked`` are never taken.
            copy: Detached clones (default) or detached views sharing the model's storage.

        Example:
            >>> import torch.nn as nn, landprobe as lp
            >>> net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
            >>> list(lp.ParamVector.from_module(net, "1", buffers=True))
            ['1.weight', '1.bias', '1.running_mean', '1.running_var']
        """
        params = dict(model.named_parameters())
        names = select(model, subnet)
        tensors = {n: params[n] for n in names}
        if buffers:
            bufs = dict(model.named_buffers())
            for n in select(model, subnet, buffers=True, allow_empty=True):
                if bufs[n] is not None and bufs[n].is_floating_point():
                    tensors[n] = bufs[n]
        return cls({n: (t.detach().clone() if copy else t.detach()) for n, t in tensors.items()})

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], model: nn.Module | None = None,
                        subnet: Selector | None = None, *, buffers: bool = False) -> ParamVector:
        """Build from a state_dict, checked against ``model`` when one is given.

        Without ``model`` every floating tensor of the state_dict is taken. With ``model`` the
        vector holds the model's parameters (and floating buffers if ``buffers``) in the
        model's order; missing keys or shape mismatches raise and name the keys.

        Example:
            >>> import torch.nn as nn, landprobe as lp
            >>> net = nn.Linear(2, 1)
            >>> v = lp.ParamVector.from_state_dict(net.state_dict(), net)
            >>> v.names, v.numel()
            (['weight', 'bias'], 3)
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"expected a state_dict (a mapping name -> tensor), got {type(state_dict).__name__}")
        if model is None:
            return cls({k: v.detach() for k, v in state_dict.items()
                        if isinstance(v, Tensor) and v.is_floating_point()})
        state_dict = unwrap_state_dict(state_dict, model)
        ref = cls.from_module(model, subnet, buffers=buffers, copy=False)
        _check_keys_and_shapes(state_dict, ref, model)
        return cls({n: state_dict[n].detach() for n in ref.names})

    # ---- mapping protocol
    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._tensors[self._names.index(name)]
        except ValueError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        dev = self._tensors[0].device if self._tensors else "-"
        dt = self._tensors[0].dtype if self._tensors else "-"
        return f"ParamVector({len(self)} tensors, {self.numel()} elements, {dt}, {dev})"

    @property
    def names(self) -> list[str]:
        """Tensor names, in order."""
        return list(self._names)

    @property
    def tensors(self) -> list[Tensor]:
        """The tensors, in order (not copies)."""
        return list(self._tensors)

    def numel(self) -> int:
        """Total number of elements."""
        return sum(t.numel() for t in self._tensors)

    def state_dict(self) -> dict[str, Tensor]:
        """A plain ``dict`` (shares storage), e.g. for ``torch.save`` or ``load_state_dict``."""
        return dict(zip(self._names, self._tensors))

    # ---- helpers
    def _other(self, other: ParamVector, op: str) -> list[Tensor]:
        if not isinstance(other, ParamVector):
            raise TypeError(f"cannot {op} a ParamVector and a {type(other).__name__}")
        if other._names != self._names:
            missing = [n for n in self._names if n not in other._names]
            extra = [n for n in other._names if n not in self._names]
            raise ValueError(
                f"cannot {op} ParamVectors with different names: missing {missing[:5]}, extra {extra[:5]}"
                + ("" if missing or extra else " (same names in another order)")
            )
        for n, a, b in zip(self._names, self._tensors, other._tensors):
            if a.shape != b.shape:
                raise ValueError(f"cannot {op} ParamVectors: {n!r} has shape {tuple(a.shape)} vs {tuple(b.shape)}")
        return other._tensors

    def _like(self, tensors: list[Tensor]) -> ParamVector:
        return ParamVector._wrap(self._names, tensors)

    # ---- arithmetic (all tensors at once)
    def __add__(self, other: ParamVector) -> ParamVector:
        return self._like(list(torch._foreach_add(self._tensors, self._other(other, "add"))))

    def __sub__(self, other: ParamVector) -> ParamVector:
        return self._like(list(torch._foreach_sub(self._tensors, self._other(other, "subtract"))))

    def __mul__(self, scalar: float) -> ParamVector:
        if not _is_scalar(scalar):
            return NotImplemented
        return self._like(list(torch._foreach_mul(self._tensors, float(scalar))))

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> ParamVector:
        if not _is_scalar(scalar):
            return NotImplemented
        return self._like(list(torch._foreach_div(self._tensors, float(scalar))))

    def __neg__(self) -> ParamVector:
        return self._like(list(torch._foreach_neg(self._tensors)))

    def add_(self, other: ParamVector, alpha: float = 1.0) -> ParamVector:
        """In place: ``self += alpha * other``."""
        torch._foreach_add_(self._tensors, self._other(other, "add"), alpha=alpha)
        return self

    def mul_(self, scalar: float) -> ParamVector:
        """In place: ``self *= scalar``."""
        torch._foreach_mul_(self._tensors, float(scalar))
        return self

    def copy_(self, other: ParamVector) -> ParamVector:
        """In place: copy ``other``'s values into this vector's tensors."""
        torch._foreach_copy_(self._tensors, self._other(other, "copy"))
        return self

    def dot(self, other: ParamVector) -> float:
        """Inner product, accumulated in float64."""
        o = self._other(other, "dot")
        parts = [torch.dot(a.reshape(-1).double(), b.reshape(-1).double()) if a.numel() else a.new_zeros((), dtype=torch.float64)
                 for a, b in zip(self._tensors, o)]
        return float(torch.stack(parts).sum()) if parts else 0.0

    def norm(self, p: float = 2) -> float:
        """The p-norm of the whole vector (float64 accumulation)."""
        if not self._tensors:
            return 0.0
        norms = torch._foreach_norm([t.double() if t.dtype != torch.float64 else t for t in self._tensors], p)
        return float(torch.linalg.vector_norm(torch.stack(norms), p))

    def lerp(self, other: ParamVector, alpha: float) -> ParamVector:
        """``(1 - alpha) * self + alpha * other``; exact at ``alpha`` 0 and 1."""
        return self._like(list(torch._foreach_lerp(self._tensors, self._other(other, "lerp"), float(alpha))))

    def clone(self) -> ParamVector:
        """Deep copy of the tensors."""
        return self._like([t.clone() for t in self._tensors])

    def zeros_like(self) -> ParamVector:
        """A vector of zeros with the same names, shapes, dtypes and devices."""
        return self._like(list(torch._foreach_mul(self._tensors, 0.0)))

    def to(self, *args, **kwargs) -> ParamVector:
        """``Tensor.to`` on every tensor (device and/or dtype)."""
        return self._like([t.to(*args, **kwargs) for t in self._tensors])

    def subset(self, names: Sequence[str]) -> ParamVector:
        """The entries named in ``names`` (in this vector's order)."""
        wanted = set(names)
        unknown = wanted - set(self._names)
        if unknown:
            raise KeyError(f"names not in this ParamVector: {sorted(unknown)[:5]}")
        idx = [i for i, n in enumerate(self._names) if n in wanted]
        return ParamVector._wrap([self._names[i] for i in idx], [self._tensors[i] for i in idx])

    def flatten(self) -> Tensor:
        """One flat tensor (a copy), in name order."""
        return torch.cat([t.reshape(-1) for t in self._tensors]) if self._tensors else torch.zeros(0)

    def unflatten(self, flat: Tensor) -> ParamVector:
        """Split a flat tensor into a vector shaped like this one (views into ``flat``)."""
        if flat.numel() != self.numel():
            raise ValueError(f"flat tensor has {flat.numel()} elements, this ParamVector {self.numel()}")
        out, i = [], 0
        for t in self._tensors:
            out.append(flat[i:i + t.numel()].view_as(t))
            i += t.numel()
        return self._like(out)

    # ---- random directions and normalisation
    def randn_like(self, seed: int = 0) -> ParamVector:
        """Standard Gaussian vector shaped like this one, from its own seeded generator.

        Draws on the CPU in float64, in name order, then moves each tensor to this vector's
        device and dtype: the same seed gives the same direction on every device, and the
        global RNG is never touched.

        Example:
            >>> import torch, landprobe as lp
            >>> v = lp.ParamVector({"w": torch.zeros(3)})
            >>> state = torch.get_rng_state()
            >>> torch.equal(v.randn_like(7)["w"], v.randn_like(7)["w"])
            True
            >>> torch.equal(state, torch.get_rng_state())
            True
        """
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        return self._like([
            torch.randn(t.shape, generator=gen, dtype=torch.float64).to(device=t.device, dtype=t.dtype)
            for t in self._tensors
        ])

    def normalize_(self, reference: ParamVector, method: str | None = "filter",
                   one_d: str = "zero", eps: float = 1e-12) -> ParamVector:
        """Rescale this direction in place to the scale of ``reference`` (Li et al. 2018, §4).

        Args:
            reference: The point θ the direction is attached to (same names and shapes).
            method: ``"filter"`` (each filter d_i, a slice along dim 0, becomes
                d_i / ||d_i|| * ||θ_i||, as Li et al.), ``"layer"`` (each tensor scaled to its
                θ tensor's norm), ``"model"`` (the whole vector to ||θ||), or ``None``.
            one_d: What happens to 1-D and 0-D tensors (biases, BatchNorm) under ``"filter"``
                and ``"layer"``: ``"zero"`` (set to 0, as Li et al.'s reference code with
                ``ignore='biasbn'``), ``"filter"`` (treated as a single filter: rescaled to the
                norm of the θ tensor), ``"copy"`` (replaced by θ itself, their code's other
                branch), or ``"keep"`` (left unnormalised).
            eps: Guards the division for all-zero filters of the direction.

        Example:
            >>> import torch, landprobe as lp
            >>> theta = lp.ParamVector({"w": torch.tensor([[3.0, 4.0], [0.0, 1.0]]), "b": torch.ones(2)})
            >>> d = lp.ParamVector({"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "b": torch.ones(2)})
            >>> d.normalize_(theta)["w"]                      # row norms become 5 and 1
            tensor([[5., 0.],
                    [0., 1.]])
            >>> d["b"]                                        # biases zeroed, as Li et al.
            tensor([0., 0.])
        """
        ref = self._other(reference, "normalise")
        if method is None:
            return self
        if method not in ("filter", "layer", "model"):
            raise ValueError(f"normalization={method!r}; expected 'filter' (Li et al. 2018), 'layer', 'model' or None")
        if one_d not in ("zero", "filter", "copy", "keep"):
            raise ValueError(f"one_d={one_d!r}; expected 'zero', 'filter', 'copy' or 'keep'")
        if method == "model":
            scale = reference.norm() / max(self.norm(), eps)
            return self.mul_(scale)
        with torch.no_grad():
            for d, w in zip(self._tensors, ref):
                if d.dim() <= 1:
                    if one_d == "zero":
                        d.zero_()
                    elif one_d == "copy":
                        d.copy_(w)
                    elif one_d == "filter":
                        d.mul_(w.norm() / (d.norm() + eps))
                    continue
                if method == "layer":
                    d.mul_(w.norm() / (d.norm() + eps))
                else:
                    dn = d.reshape(d.shape[0], -1).norm(dim=1)
                    wn = w.reshape(w.shape[0], -1).norm(dim=1)
                    d.mul_((wn / (dn + eps)).view(-1, *([1] * (d.dim() - 1))))
        return self

    # ---- writing back
    def apply_to(self, model: nn.Module) -> nn.Module:
        """Copy these values into the model's parameters/buffers of the same names, in place.

        Names not in the vector are left alone. ``requires_grad`` flags are kept.

        Raises:
            ValueError: If a name is not a parameter or buffer of ``model`` or a shape differs.

        Example:
            >>> import torch, landprobe as lp
            >>> net = torch.nn.Linear(1, 1)
            >>> _ = lp.ParamVector({"bias": torch.tensor([2.0])}).apply_to(net)
            >>> net.bias.item(), net.bias.requires_grad
            (2.0, True)
        """
        targets = _named_state(model)
        missing = [n for n in self._names if n not in targets]
        if missing:
            raise ValueError(
                f"{type(model).__name__} has no parameter or buffer named {missing[:5]}; "
                f"it has e.g. {list(targets)[:5]}"
            )
        dst = [targets[n] for n in self._names]
        for n, a, b in zip(self._names, dst, self._tensors):
            if a.shape != b.shape:
                raise ValueError(f"shape mismatch for {n!r}: model {tuple(a.shape)} vs vector {tuple(b.shape)}")
        with torch.no_grad():
            torch._foreach_copy_(dst, self._tensors)
        return model


def _named_state(model: nn.Module) -> dict[str, Tensor]:
    out: dict[str, Tensor] = dict(model.named_parameters())
    out.update({n: b for n, b in model.named_buffers() if b is not None})
    return out


def _check_keys_and_shapes(state_dict: Mapping[str, Tensor], ref: ParamVector, model: nn.Module) -> None:
    missing = [n for n in ref.names if n not in state_dict]
    if missing:
        unexpected = [k for k in state_dict if k not in _named_state(model)]
        raise ValueError(
            f"state_dict lacks {len(missing)} entries of {type(model).__name__}: {missing[:6]}"
            + (f"; it has unexpected keys {unexpected[:6]}" if unexpected else "")
            + ". Was it saved from another architecture, or wrapped (e.g. a 'module.' prefix from DDP)?"
        )
    bad = [(n, tuple(state_dict[n].shape), tuple(t.shape)) for n, t in zip(ref.names, ref.tensors)
           if tuple(state_dict[n].shape) != tuple(t.shape)]
    if bad:
        desc = ", ".join(f"{n}: {s} vs model {m}" for n, s, m in bad[:6])
        raise ValueError(f"state_dict shapes differ from {type(model).__name__}: {desc}")


#: Prefixes that wrappers add to every key of a state_dict: DistributedDataParallel / DataParallel
#: (``module.``) and ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrapped_key(name: str) -> str:
    """``name`` without the prefixes wrappers add (:data:`WRAPPER_PREFIXES`, repeated).

    Example:
        >>> from landprobe.params import unwrapped_key
        >>> unwrapped_key("module._orig_mod.enet.conv1.weight")
        'enet.conv1.weight'
    """
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def unwrap_state_dict(state_dict: Mapping[str, Any], model: nn.Module, what: str = "state_dict") -> dict[str, Any]:
    """``state_dict`` with its keys spelled as ``model`` spells them, when the two differ only by
    the prefixes a wrapper adds (``module.`` from DDP/DataParallel, ``_orig_mod.`` from
    ``torch.compile``, in either direction); otherwise ``state_dict`` unchanged. A rename
    warns once, saying which prefix it stripped or added.

    Example:
        >>> import torch, warnings
        >>> from landprobe.params import unwrap_state_dict
        >>> net = torch.nn.Linear(1, 1)
        >>> saved = {"module." + k: v for k, v in net.state_dict().items()}
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     sorted(unwrap_state_dict(saved, net))
        ['bias', 'weight']
    """
    own = list(model.state_dict().keys())
    keys = list(state_dict.keys())
    if not keys or not all(isinstance(k, str) for k in keys) or set(keys) <= set(own):
        return dict(state_dict)
    by_bare = {unwrapped_key(k): k for k in own}
    if len(by_bare) != len(own):
        return dict(state_dict)
    renamed = {}
    for key in keys:
        target = by_bare.get(unwrapped_key(key))
        if target is None:
            return dict(state_dict)           # not a wrapper's renaming: let the caller name the keys
        renamed[target] = state_dict[key]
    if len(renamed) != len(keys):
        return dict(state_dict)
    example = keys[0]
    warnings.warn(f"{what}: keys renamed to the model's (e.g. {example!r} -> {_target_of(example, by_bare)!r}); "
                  f"they carried a wrapper's prefix (DDP 'module.' or torch.compile '_orig_mod.')",
                  UserWarning, stacklevel=3)
    return renamed


def _target_of(key: str, by_bare: Mapping[str, str]) -> str:
    return by_bare[unwrapped_key(key)]


def as_param_vector(theta: Any, model: nn.Module, *, names: Sequence[str], what: str = "theta",
                    strict: bool = False, finite: bool = True) -> ParamVector:
    """Turn a state_dict, a module or a ParamVector into a ParamVector over ``names`` of ``model``,
    as strictly as ``load_state_dict(strict=True)``.

    ``names`` are parameter and floating-buffer names of ``model``; an endpoint that lacks a
    buffer falls back to the model's current value (parameters are required). Keys carrying a
    wrapper's prefix (``module.``, ``_orig_mod.``) are renamed with a warning. Tensors that share
    memory with the model's own (the probed model's state_dict or the model itself) are cloned,
    so that probes may write into the model; others are used without a copy.

    Raises:
        ValueError: On a key that is neither a parameter nor a buffer of ``model``, a missing
            parameter, another shape, or (with ``finite=True``) a non-finite parameter (NaN or
            inf; a buffer may hold infinities, as attention masks do, but not NaN).
        TypeError: On a value that is not a tensor, or a non-floating tensor for a floating
            parameter or buffer; with ``strict=True`` also on another floating dtype, which is
            otherwise cast to the model's dtype with one warning that names the keys.

    Example:
        >>> import torch
        >>> from landprobe.params import as_param_vector
        >>> net = torch.nn.Linear(2, 1)
        >>> as_param_vector({"weight": torch.ones(1, 2), "bias": torch.zeros(1)}, net, names=["weight", "bias"]).numel()
        3
        >>> as_param_vector({"weight": torch.ones(1, 2), "bias": torch.zeros(1), "scale": torch.ones(1)}, net,
        ...                 names=["weight", "bias"])
        Traceback (most recent call last):
        ValueError: theta has 1 key(s) that Linear does not have: ['scale']. Pass a state_dict or model of the probed...
    """
    source = _endpoint_source(theta, model, what)
    current = _named_state(model)
    _check_endpoint_keys(source, current, model, names, what)
    out: dict[str, Tensor] = {}
    cast: list[str] = []
    for n in names:
        ref = current[n]
        if n not in source:
            out[n] = ref.detach().clone()          # a missing buffer: the model's value, copied
            continue
        t = _checked_value(source[n], ref, n, what).detach()
        if t.dtype != ref.dtype:
            cast.append(f"{n} ({str(t.dtype).replace('torch.', '')})")
        if t.device != ref.device or t.dtype != ref.dtype:
            t = t.to(device=ref.device, dtype=ref.dtype)
        elif _shares_memory(t, ref):
            # e.g. theta = model.state_dict() of the probed model itself: a probe writes into the
            # model's tensors, so the endpoint must not be a view of them.
            t = t.clone()
        out[n] = t
    if cast:
        target = str(current[names[0]].dtype if names else "").replace("torch.", "")
        message = (f"{what} has {len(cast)} tensor(s) of another floating dtype than the model's: {cast[:6]}")
        if strict:
            raise TypeError(message + "; convert them (or the model) first, or pass strict=False to cast them")
        warnings.warn(message + f"; cast to the model's dtype ({target})", UserWarning, stacklevel=3)
    if finite:
        check_finite(out, what, params=set(dict(model.named_parameters())))
    return ParamVector(out)


def _endpoint_source(theta: Any, model: nn.Module, what: str) -> Mapping[str, Any]:
    if isinstance(theta, type) and issubclass(theta, nn.Module):
        raise TypeError(f"{what} is the class {theta.__name__}; pass an instance (a trained model) or its state_dict.")
    if isinstance(theta, ParamVector):
        return theta
    if isinstance(theta, nn.Module):
        return unwrap_state_dict(_named_state(theta), model, what)
    if isinstance(theta, Mapping):
        return unwrap_state_dict(theta, model, what)
    raise TypeError(f"{what} must be a state_dict, an nn.Module or a ParamVector, not {type(theta).__name__}")


def _check_endpoint_keys(source: Mapping[str, Any], current: Mapping[str, Tensor], model: nn.Module,
                         names: Sequence[str], what: str) -> None:
    arch = type(model).__name__
    known = set(current) | {n for n, _ in model.named_parameters(remove_duplicate=False)} | {
        n for n, _ in model.named_buffers(remove_duplicate=False)}              # tied tensors under every name
    extra = [k for k in source if k not in known]
    params = dict(model.named_parameters())
    missing = [n for n in names if n in params and n not in source]
    if missing or extra:
        parts = [f"{what} lacks {len(missing)} parameter(s) of {arch}: {missing[:6]}"] if missing else []
        if extra:
            parts.append(f"{what} has {len(extra)} key(s) that {arch} does not have: {extra[:6]}")
        raise ValueError("; ".join(parts) + ". Pass a state_dict or model of the probed architecture (a checkpoint "
                         "dict that holds one, e.g. ckpt['model'], must be unpacked first).")
    bad = [(n, tuple(source[n].shape), tuple(current[n].shape)) for n in names
           if n in source and isinstance(source[n], Tensor) and tuple(source[n].shape) != tuple(current[n].shape)]
    if bad:
        desc = ", ".join(f"{n}: {s} vs model {m}" for n, s, m in bad[:6])
        raise ValueError(f"{what} has shapes that differ from {arch}: {desc}")


def _checked_value(value: Any, ref: Tensor, name: str, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{what}[{name!r}] is a {type(value).__name__}, not a tensor; pass tensors "
                        f"(torch.as_tensor(...)) of the model's dtype {ref.dtype}")
    if ref.is_floating_point() and not value.is_floating_point():
        raise TypeError(f"{what}[{name!r}] has dtype {value.dtype}, but the model's tensor is {ref.dtype}; a "
                        f"non-floating tensor would be rounded. Pass floating values (e.g. .to({ref.dtype}))")
    return value


def check_finite(tensors: Mapping[str, Tensor], what: str, params: Any = None) -> None:
    """Raise a ValueError naming the tensors of ``tensors`` that hold NaN or inf (those in
    ``params``, default all) or NaN (the others: buffers may hold infinities, as masks do).

    Example:
        >>> import torch
        >>> from landprobe.params import check_finite
        >>> check_finite({"w": torch.ones(2)}, "theta")
        >>> check_finite({"w": torch.tensor([1.0, float("nan")])}, "theta")
        Traceback (most recent call last):
        ValueError: theta has non-finite values (NaN or inf) in ['w']; probing it would give NaN losses...
    """
    floats = [(n, t) for n, t in tensors.items() if t.is_floating_point() and t.numel()]
    if not floats:
        return
    # a screen: NaN and inf carry into the 2-norm (a vectorised kernel; the inf-norm's is ~20x
    # slower on CPUs); a finite tensor whose norm overflows is sorted out by the exact test below
    norms = torch._foreach_norm([t for _, t in floats], 2)
    if bool(torch.isfinite(torch.stack([p.float().cpu() for p in norms])).all()):
        return
    bad = [n for (n, t), norm in zip(floats, norms) if not bool(torch.isfinite(norm))
           and not bool(torch.isfinite(t).all()) and (params is None or n in params or bool(torch.isnan(t).any()))]
    if bad:
        raise ValueError(f"{what} has non-finite values (NaN or inf) in {bad[:6]}; probing it would give NaN "
                         f"losses. Pass finite values (of a run that diverged, an earlier checkpoint).")


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _prod(shape) -> int:
    return int(math.prod(shape))

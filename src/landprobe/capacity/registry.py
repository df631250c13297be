"""The measure groups :func:`~landprobe.capacity.report` computes, and how to add one.

A group is a :class:`Measure`: a name, a ``compute(ctx)`` function and what it needs (data, a
loss) and covers (each subnet or the whole model only, cheap or not). The built-in groups are
registered here, in :data:`MEASURES` order; :func:`register_measure` adds a user's group, which
``report(measures=[name])`` (and ``"all"``, and ``"cheap"`` when it is cheap) then computes.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from landprobe.engine import BatchLoss, Sharding
from landprobe.capacity._common import MODEL
from landprobe.capacity.fisher_rao import fisher_rao_norm
from landprobe.capacity.norms import subnet_norms
from landprobe.capacity.pathnorm import path_norm
from landprobe.capacity.sharpness import epsilon_sharpness, pac_bayes_sigma
from landprobe.capacity.sparsity import activation_sparseness, fraction_near_zero, hoyer
from landprobe.capacity.spectral import spectral_complexity
from landprobe.params import Selector

__all__ = ["Measure", "MeasureContext", "MEASURE_REGISTRY", "register_measure", "unregister_measure",
           "MEASURES", "CHEAP_MEASURES"]

Values = dict[str, dict[str, float]]


@dataclass
class MeasureContext:
    """What :func:`~landprobe.capacity.report` hands to a measure's ``compute`` for one group.

    Attributes:
        name: The group being computed (the key of its ``skipped`` entries).
        model: The model; a measure reads it and leaves it as it was (passes over ``data`` go
            through :class:`landprobe.engine.Engine`, which restores it).
        data, loss_fn: As given to ``report``; never ``None`` when the measure declared that it
            needs them.
        subnets: Subnet name → selector; empty for a measure with ``per_subnet=False``.
        parameters: Scope → names of its parameters, ``"model"`` first.
        options: ``report``'s settings: ``input_shape``, ``output``, ``reference``,
            ``threshold``, ``epsilon``, ``sharpness_steps``, ``pac_bayes_target``,
            ``pac_bayes_samples``, ``seed``, ``max_batches``.
        strict: Whether :meth:`skip` raises.
        skipped: What :meth:`skip` recorded.
        sharding: ``report``'s :class:`landprobe.Sharding` (``None``: the default). A measure
            that passes over ``data`` hands it on (``Engine(ctx.model, ctx.loss_fn, ctx.data,
            sharding=ctx.sharding)``); under data sharding each rank then holds only its share
            of a pass, so sum what it collects with ``engine.all_sum`` to return the
            one-process values on every rank.

    Example:
        >>> import torch
        >>> from landprobe.capacity import MeasureContext
        >>> ctx = MeasureContext("size", torch.nn.Linear(2, 1), subnets={"w": "weight"})
        >>> ctx.scopes
        {'model': None, 'w': 'weight'}
        >>> ctx.skip("not a conv net", "w"); ctx.skipped
        {'size[w]': 'not a conv net'}
    """

    name: str
    model: nn.Module
    data: Iterable | None = None
    loss_fn: Callable | None = None
    subnets: dict[str, Selector] = field(default_factory=dict)
    parameters: dict[str, list[str]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    strict: bool = False
    skipped: dict[str, str] = field(default_factory=dict)
    sharding: Sharding | None = None

    @property
    def scopes(self) -> dict[str, Selector | None]:
        """``{"model": None, <subnet>: selector, ...}``: the scopes to compute, the model first."""
        return {MODEL: None, **self.subnets}

    def skip(self, why: str, scope: str | None = None) -> None:
        """Record that the group (or one ``scope`` of it) cannot be computed; raise if ``strict``.

        Example:
            >>> import torch
            >>> from landprobe.capacity import MeasureContext
            >>> ctx = MeasureContext("size", torch.nn.Linear(2, 1), strict=True)
            >>> ctx.skip("needs a conv net")
            Traceback (most recent call last):
            ...
            ValueError: capacity.report: measure 'size' cannot be computed: needs a conv net
        """
        key = self.name if scope is None else f"{self.name}[{scope}]"
        if self.strict:
            raise ValueError(f"capacity.report: measure {key!r} cannot be computed: {why}")
        self.skipped[key] = why


@dataclass(frozen=True)
class Measure:
    """One group of measures that :func:`~landprobe.capacity.report` computes.

    Attributes:
        name: The group's name: what ``report(measures=[...])`` and ``skipped`` use.
        compute: ``compute(ctx: MeasureContext) -> {scope: {measure: value}}`` (or ``None``
            when it computed nothing); it may call ``ctx.skip(why, scope)`` for what does not
            apply. Scopes are ``"model"`` and, when ``per_subnet``, the subnets' names.
        needs_data: ``report`` skips the group ("needs data") when no ``data`` is given.
        needs_loss: ``report`` skips the group ("needs loss_fn") when no ``loss_fn`` is given.
        per_subnet: Computed for each subnet as well as the model (else the model only).
        cheap: At most one pass over the data per scope: part of ``measures="cheap"``.

    Raises:
        ValueError, TypeError: On an empty or reserved name, a ``compute`` that is not
            callable, or a flag that is not a bool.

    Example:
        >>> import torch
        >>> from landprobe.capacity import Measure, MeasureContext
        >>> m = Measure("size", lambda ctx: {"model": {"size": float(len(ctx.parameters["model"]))}})
        >>> m.run(MeasureContext("size", torch.nn.Linear(2, 1), parameters={"model": ["weight", "bias"]}))
        {'model': {'size': 2.0}}
    """

    name: str
    compute: Callable[[MeasureContext], Mapping[str, Mapping[str, float]] | None]
    needs_data: bool = False
    needs_loss: bool = False
    per_subnet: bool = False
    cheap: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or any(c in self.name for c in "[]") \
                or self.name in ("all", "cheap"):
            raise ValueError(f"name={self.name!r}; expected a non-empty string without brackets, other than "
                             f"'all' and 'cheap' (e.g. 'my_norm')")
        if not callable(self.compute):
            raise TypeError(f"compute has type {type(self.compute).__name__}; expected a function "
                            f"compute(ctx) returning {{scope: {{measure: value}}}}, e.g. "
                            f"lambda ctx: {{'model': {{'{self.name}': 1.0}}}}")
        for flag in ("needs_data", "needs_loss", "per_subnet", "cheap"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag}={getattr(self, flag)!r}; expected True or False")

    def run(self, ctx: MeasureContext) -> Values:
        """``compute(ctx)``, checked: known scopes only, every value a float.

        Example:
            >>> import torch
            >>> from landprobe.capacity import Measure, MeasureContext
            >>> Measure("one", lambda ctx: {"model": {"one": 1}}).run(MeasureContext("one", torch.nn.Linear(1, 1)))
            {'model': {'one': 1.0}}
        """
        result = self.compute(ctx)
        if result is None:
            return {}
        if not isinstance(result, Mapping):
            raise TypeError(f"measure {self.name!r}: compute returned {type(result).__name__}; expected a dict "
                            f"{{scope: {{measure: value}}}} such as {{'model': {{'{self.name}': 1.0}}}}")
        allowed = ctx.scopes
        out: Values = {}
        for scope, vals in result.items():
            if scope not in allowed:
                hint = "" if self.per_subnet else " (register it with per_subnet=True to cover subnets)"
                raise ValueError(f"measure {self.name!r}: compute returned the scope {scope!r}; expected one "
                                 f"of {list(allowed)}{hint}")
            if not isinstance(vals, Mapping):
                raise TypeError(f"measure {self.name!r}: compute returned {type(vals).__name__} for scope "
                                f"{scope!r}; expected a dict {{measure: value}}")
            out[scope] = {str(k): _as_float(self.name, scope, k, v) for k, v in vals.items()}
        return out


def _as_float(name: str, scope: str, key: Any, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"measure {name!r}: the value of {key!r} for scope {scope!r} has type "
                        f"{type(value).__name__}; expected a number (return float(...))") from None


# ----------------------------------------------------------------------------- the built-in groups
def _norms(ctx: MeasureContext) -> Values:
    return subnet_norms(ctx.model, ctx.subnets)


def _path_norm(ctx: MeasureContext) -> Values:
    vals: dict[str, float] = {}
    try:
        for p in (1, 2):
            vals[f"path_norm_l{p}"] = path_norm(ctx.model, p, input_shape=ctx.options["input_shape"],
                                                output=ctx.options["output"])
    except (ValueError, TypeError) as exc:
        ctx.skip(str(exc))
    return {MODEL: vals}


def _spectral_complexity(ctx: MeasureContext) -> Values:
    out: Values = {}
    for scope, sel in ctx.scopes.items():
        try:
            out[scope] = {"spectral_complexity": spectral_complexity(ctx.model, reference=ctx.options["reference"],
                                                                     subnet=sel)}
        except ValueError as exc:
            ctx.skip(str(exc), scope)
    return out


def _weight_sparsity(ctx: MeasureContext) -> Values:
    params = dict(ctx.model.named_parameters())
    out: Values = {}
    for scope, names in ctx.parameters.items():
        ts = [params[n] for n in names]
        out[scope] = {"near_zero": fraction_near_zero(ts, ctx.options["threshold"]),
                      "hoyer": hoyer(ts) if sum(t.numel() for t in ts) >= 2 else float("nan")}
    return out


def _fisher_rao(ctx: MeasureContext) -> Values:
    if isinstance(ctx.loss_fn, BatchLoss):
        ctx.skip("needs (inputs, targets) pairs and a per-sample loss_fn(output, target); the loss is a BatchLoss")
        return {}
    return {scope: {"fisher_rao": fisher_rao_norm(ctx.model, ctx.loss_fn, ctx.data, subnet=sel,
                                                  sharding=ctx.sharding)}
            for scope, sel in ctx.scopes.items()}


def _activation_sparsity(ctx: MeasureContext) -> Values:
    modules = {}
    for key, sel in ctx.subnets.items():
        if isinstance(sel, nn.Module) or (isinstance(sel, str) and _is_module_path(ctx.model, sel)):
            modules[key] = sel
        else:
            ctx.skip(f"selector {sel!r} is not a submodule (its output is the activation)", key)
    return activation_sparseness(ctx.model, ctx.data, modules, max_batches=ctx.options["max_batches"],
                                 loss_fn=ctx.loss_fn if isinstance(ctx.loss_fn, BatchLoss) else None,
                                 sharding=ctx.sharding)


def _sharpness(ctx: MeasureContext) -> Values:
    o = ctx.options
    return {MODEL: {"sharpness": epsilon_sharpness(ctx.model, ctx.loss_fn, ctx.data, o["epsilon"],
                                                   steps=o["sharpness_steps"], seed=o["seed"],
                                                   sharding=ctx.sharding)}}


def _pac_bayes(ctx: MeasureContext) -> Values:
    o = ctx.options
    sigma = pac_bayes_sigma(ctx.model, ctx.loss_fn, ctx.data, o["pac_bayes_target"],
                            samples=o["pac_bayes_samples"], seed=o["seed"], sharding=ctx.sharding)
    return {MODEL: {"pac_bayes_sigma": sigma, "pac_bayes_measure": 1.0 / sigma**2 if sigma > 0 else float("inf")}}


def _is_module_path(model: nn.Module, sel: str) -> bool:
    try:
        model.get_submodule(sel)
        return True
    except AttributeError:
        return False


_REGISTRY: dict[str, Measure] = {m.name: m for m in (
    Measure("norms", _norms, per_subnet=True, cheap=True),
    Measure("path_norm", _path_norm, cheap=True),
    Measure("spectral_complexity", _spectral_complexity, per_subnet=True, cheap=True),
    Measure("weight_sparsity", _weight_sparsity, per_subnet=True, cheap=True),
    Measure("fisher_rao", _fisher_rao, needs_data=True, needs_loss=True, per_subnet=True, cheap=True),
    Measure("activation_sparsity", _activation_sparsity, needs_data=True, per_subnet=True),
    Measure("sharpness", _sharpness, needs_data=True, needs_loss=True),
    Measure("pac_bayes", _pac_bayes, needs_data=True, needs_loss=True),
)}

#: Every built-in measure group, in the order ``report`` computes them.
MEASURES = tuple(_REGISTRY)
#: The built-in groups that cost at most one pass over the data per scope (what
#: :class:`~landprobe.LandscapeMonitor` runs by default).
CHEAP_MEASURES = tuple(name for name, m in _REGISTRY.items() if m.cheap)
#: Every registered group, built-in and added by :func:`register_measure`, name → :class:`Measure`
#: (read-only; add and remove through the functions).
MEASURE_REGISTRY: Mapping[str, Measure] = types.MappingProxyType(_REGISTRY)


def register_measure(name: str, compute: Callable[[MeasureContext], Mapping[str, Mapping[str, float]] | None], *,
                     needs_data: bool = False, needs_loss: bool = False, per_subnet: bool = False,
                     cheap: bool = False, replace: bool = False) -> Measure:
    """Add a measure group that :func:`~landprobe.capacity.report` computes (see :class:`Measure`).

    Args:
        name: The group's name (not a built-in one).
        compute: ``compute(ctx)`` → ``{scope: {measure: value}}``; ``ctx`` is a :class:`MeasureContext`.
        needs_data, needs_loss, per_subnet, cheap: As in :class:`Measure`.
        replace: Replace a group registered before under ``name``.

    Returns:
        The registered :class:`Measure`.

    Raises:
        ValueError: On a built-in name, or a name registered before without ``replace=True``.
        TypeError: On a ``compute`` that is not callable or a flag that is not a bool.

    Example:
        >>> import torch
        >>> from landprobe.capacity import register_measure, report, unregister_measure
        >>> def param_count(ctx):
        ...     params = dict(ctx.model.named_parameters())
        ...     return {s: {"n_params": float(sum(params[n].numel() for n in names))}
        ...             for s, names in ctx.parameters.items()}
        >>> _ = register_measure("param_count", param_count, per_subnet=True, cheap=True)
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
        >>> report(net, subnets={"first": "0"}, measures=["param_count"]).values
        {'model': {'n_params': 13.0}, 'first': {'n_params': 9.0}}
        >>> _ = unregister_measure("param_count")
    """
    measure = Measure(name, compute, needs_data=needs_data, needs_loss=needs_loss, per_subnet=per_subnet,
                      cheap=cheap)
    if name in MEASURES:
        raise ValueError(f"name={name!r} is a built-in measure group of report {MEASURES}; choose another name")
    if not isinstance(replace, bool):
        raise TypeError(f"replace={replace!r}; expected True or False")
    if name in _REGISTRY and not replace:
        raise ValueError(f"name={name!r} is already registered; pass replace=True to replace it, or call "
                         f"unregister_measure({name!r}) first")
    _REGISTRY[name] = measure
    return measure


def unregister_measure(name: str) -> Measure:
    """Remove a group added by :func:`register_measure`; returns it.

    Raises:
        ValueError: On a built-in group or a name that is not registered.

    Example:
        >>> from landprobe.capacity import MEASURE_REGISTRY, register_measure, unregister_measure
        >>> _ = register_measure("zero", lambda ctx: {"model": {"zero": 0.0}})
        >>> unregister_measure("zero").name, "zero" in MEASURE_REGISTRY
        ('zero', False)
    """
    if name in MEASURES:
        raise ValueError(f"name={name!r} is a built-in measure group of report; it cannot be removed "
                         f"(leave it out with report(measures=[...]))")
    if name not in _REGISTRY:
        raise ValueError(f"name={name!r} is not registered; registered groups: {list(_REGISTRY)}")
    return _REGISTRY.pop(name)

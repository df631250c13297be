"""``report``: every capacity measure of a model (and its subnets) in one :class:`CapacityReport`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from landprobe.common.io import restore_floats
from landprobe.common.results import Result, require_matplotlib
from landprobe.capacity._common import MODEL, check_model, scopes
from landprobe.capacity.fisher_rao import fisher_rao_norm
from landprobe.capacity.norms import subnet_norms
from landprobe.capacity.pathnorm import path_norm
from landprobe.capacity.sharpness import epsilon_sharpness, pac_bayes_sigma
from landprobe.capacity.sparsity import activation_sparseness, fraction_near_zero, hoyer
from landprobe.capacity.spectral import spectral_complexity
from landprobe.params import Selector

__all__ = ["CapacityReport", "report", "MEASURES", "CHEAP_MEASURES"]

#: Every measure group ``report`` knows, in the order it computes them.
MEASURES = ("norms", "path_norm", "spectral_complexity", "weight_sparsity", "fisher_rao",
            "activation_sparsity", "sharpness", "pac_bayes")
#: The groups that cost at most one pass over the data (what :class:`~landprobe.LandscapeMonitor` runs).
CHEAP_MEASURES = ("norms", "path_norm", "spectral_complexity", "weight_sparsity", "fisher_rao")
_NEEDS_DATA = {"fisher_rao", "activation_sparsity", "sharpness", "pac_bayes"}
_NEEDS_LOSS = {"fisher_rao", "sharpness", "pac_bayes"}
_PER_SUBNET = {"norms", "spectral_complexity", "weight_sparsity", "fisher_rao", "activation_sparsity"}


@dataclass(frozen=True, eq=False)
class CapacityReport(Result):
    """Capacity measures of a model and of its subnets, as a table scope → measure → value.

    Attributes:
        values: ``{"model": {measure: float}, <subnet>: {measure: float}}``. Measures (those
            computed): ``l1``, ``l2``, ``l2_squared``, ``frobenius_sum``, ``frobenius_product``,
            ``spectral_sum``, ``spectral_product``, ``spectral_max`` (:func:`subnet_norms`);
            ``path_norm_l1``, ``path_norm_l2`` (model only, :func:`path_norm`);
            ``spectral_complexity`` (:func:`spectral_complexity`); ``near_zero``, ``hoyer``
            (weights); ``fisher_rao`` (:func:`fisher_rao_norm`); ``population_sparseness``,
            ``lifetime_sparseness`` (activations); ``sharpness`` (:func:`epsilon_sharpness`),
            ``pac_bayes_sigma`` and ``pac_bayes_measure`` = 1/σ² (model only,
            :func:`pac_bayes_sigma`).
        skipped: Measure group → why it was not computed (no data, no loss, BatchNorm in a
            path norm, a glob subnet for activations, ...).
        settings: The arguments that produced it.

    Example:
        >>> from landprobe.capacity import CapacityReport
        >>> r = CapacityReport(values={"model": {"l1": 3.0}}, skipped={}, settings={})
        >>> r["model"]["l1"], r.measure("l1")
        (3.0, {'model': 3.0})
    """

    values: dict[str, dict[str, float]]
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, scope: str) -> dict[str, float]:
        return self.values[scope]

    @property
    def scopes(self) -> list[str]:
        """``"model"`` and the subnet names, in order."""
        return list(self.values)

    def measure(self, name: str) -> dict[str, float]:
        """One measure over the scopes that have it: ``{scope: value}``.

        Example:
            >>> from landprobe.capacity import CapacityReport
            >>> CapacityReport({"model": {"l2": 2.0, "path_norm_l2": 5.0}, "a": {"l2": 1.0}}).measure("l2")
            {'model': 2.0, 'a': 1.0}
        """
        return {s: v[name] for s, v in self.values.items() if name in v}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapacityReport:
        data = dict(data)
        if "values" in data:
            data["values"] = restore_floats(data["values"])
        return super().from_dict(data)

    def plot(self, ax=None, measures: Sequence[str] = ("l2", "l1", "spectral_sum", "fisher_rao")):
        """Bars of the chosen measures per subnet (log scale); returns the axes.

        Example:
            >>> from landprobe.capacity import CapacityReport
            >>> r = CapacityReport({"model": {"l2": 2.0, "l1": 3.0}, "a": {"l2": 1.0, "l1": 1.5}})
            >>> ax = r.plot()
            >>> len(ax.patches)                                # 2 measures x 2 scopes
            4
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        names = [m for m in measures if any(m in v for v in self.values.values())]
        scopes_ = self.scopes
        width = 0.8 / max(len(names), 1)
        x = np.arange(len(scopes_))
        for i, m in enumerate(names):
            vals = [self.values[s].get(m, np.nan) for s in scopes_]
            ax.bar(x + i * width, vals, width, label=m)
        ax.set_xticks(x + width * (len(names) - 1) / 2)
        ax.set_xticklabels(scopes_)
        if names and all(v > 0 for m in names for s in scopes_ if math.isfinite(v := self.values[s].get(m, np.nan))):
            ax.set_yscale("log")
        ax.set_ylabel("value")
        ax.legend(frameon=False, fontsize="small")
        return ax


def report(model: nn.Module, data: Iterable | None = None, subnets: Mapping[Any, Selector] | None = None,
           loss_fn: Callable | None = None, *, measures: Sequence[str] | str = "all",
           input_shape: Sequence[int] | None = None, output: Callable | None = None, reference: Any = None,
           threshold: float = 1e-3, epsilon: float = 1e-3, sharpness_steps: int = 10,
           pac_bayes_target: float = 0.1, pac_bayes_samples: int = 8, seed: int = 0,
           max_batches: int | None = None, strict: bool = False) -> CapacityReport:
    """Every capacity measure of ``model`` (and each subnet) in one :class:`CapacityReport`.

    Measures that need what is not given (``data``, ``loss_fn``) or that do not apply (a path
    norm through BatchNorm, activations of a glob subnet) are listed in ``skipped`` with the
    reason, unless ``strict=True``, which raises instead.

    Args:
        model: Any ``nn.Module`` (never modified).
        data: Iterable of ``(x, y)`` batches, for the data-dependent measures.
        subnets: Mapping name → selector (see :func:`landprobe.select`); the measures marked per
            subnet in :class:`CapacityReport` are computed for each, besides ``"model"``.
        loss_fn: Mean-reduced loss, for ``fisher_rao``, ``sharpness`` and ``pac_bayes``.
        measures: ``"all"``, ``"cheap"`` (:data:`CHEAP_MEASURES`: no more than one pass over the
            data) or a list of groups from :data:`MEASURES`.
        input_shape, output: For :func:`path_norm`. reference: Initial weights for
            :func:`spectral_complexity`. threshold: For :func:`fraction_near_zero`.
        epsilon, sharpness_steps: For :func:`epsilon_sharpness`. pac_bayes_target,
            pac_bayes_samples, seed: For :func:`pac_bayes_sigma`. max_batches: For
            :func:`activation_sparseness`.
        strict: Raise when a requested measure cannot be computed.

    Raises:
        ValueError: On an unknown measure group, or (``strict``) a measure that cannot be computed.

    Example:
        >>> import torch
        >>> from landprobe.capacity import report
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.ReLU(),
        ...                           torch.nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.eye(2)); _ = net[2].weight.fill_(1.0)
        >>> r = report(net, subnets={"first": "0"}, measures="cheap")
        >>> r["model"]["l1"], r["first"]["l1"], r["model"]["path_norm_l1"]   # paths 1*1 + 1*1
        (4.0, 2.0, 2.0)
        >>> r.skipped["fisher_rao"]
        'needs data and loss_fn'
    """
    check_model(model, "capacity.report")
    if measures == "all":
        groups = list(MEASURES)
    elif measures == "cheap":
        groups = list(CHEAP_MEASURES)
    elif isinstance(measures, str):
        raise ValueError(f"measures={measures!r}; expected 'all', 'cheap' or a list of {MEASURES}")
    else:
        groups = list(measures)
        unknown = [g for g in groups if g not in MEASURES]
        if unknown:
            raise ValueError(f"measures has unknown group(s) {unknown}; expected a list of {MEASURES}, 'all' or 'cheap'")
    scope_names = scopes(model, subnets)               # validates the selectors
    sub_items = dict(subnets or {})
    values: dict[str, dict[str, float]] = {k: {} for k in scope_names}
    skipped: dict[str, str] = {}

    def skip(group: str, why: str) -> None:
        if strict:
            raise ValueError(f"capacity.report: measure {group!r} cannot be computed: {why}")
        skipped[group] = why

    for group in groups:
        missing = [w for w, need, have in (("data", _NEEDS_DATA, data), ("loss_fn", _NEEDS_LOSS, loss_fn))
                   if group in need and have is None]
        if missing:
            skip(group, f"needs {' and '.join(missing)}")
            continue
        keyed = [(MODEL, None)] + [(str(k), s) for k, s in sub_items.items()]
        if group == "norms":
            for s, v in subnet_norms(model, subnets).items():
                values[s].update(v)
        elif group == "path_norm":
            try:
                values[MODEL]["path_norm_l1"] = path_norm(model, 1, input_shape=input_shape, output=output)
                values[MODEL]["path_norm_l2"] = path_norm(model, 2, input_shape=input_shape, output=output)
            except (ValueError, TypeError) as exc:
                skip(group, str(exc))
        elif group == "spectral_complexity":
            for s, sel in keyed:
                try:
                    values[s]["spectral_complexity"] = spectral_complexity(model, reference=reference, subnet=sel)
                except ValueError as exc:
                    skip(f"{group}[{s}]", str(exc))
        elif group == "weight_sparsity":
            params = dict(model.named_parameters())
            for s, names in scope_names.items():
                ts = [params[n] for n in names]
                values[s]["near_zero"] = fraction_near_zero(ts, threshold)
                values[s]["hoyer"] = hoyer(ts) if sum(t.numel() for t in ts) >= 2 else float("nan")
        elif group == "fisher_rao":
            for s, sel in keyed:
                values[s]["fisher_rao"] = fisher_rao_norm(model, loss_fn, data, subnet=sel)
        elif group == "activation_sparsity":
            ok = {}
            for k, sel in sub_items.items():
                if isinstance(sel, nn.Module) or (isinstance(sel, str) and _is_module_path(model, sel)):
                    ok[k] = sel
                else:
                    skip(f"{group}[{k}]", f"selector {sel!r} is not a submodule (its output is the activation)")
            for s, v in activation_sparseness(model, data, ok, max_batches=max_batches).items():
                values[s].update(v)
        elif group == "sharpness":
            values[MODEL]["sharpness"] = epsilon_sharpness(model, loss_fn, data, epsilon,
                                                           steps=sharpness_steps, seed=seed)
        elif group == "pac_bayes":
            sigma = pac_bayes_sigma(model, loss_fn, data, pac_bayes_target, samples=pac_bayes_samples, seed=seed)
            values[MODEL]["pac_bayes_sigma"] = sigma
            values[MODEL]["pac_bayes_measure"] = 1.0 / sigma**2 if sigma > 0 else float("inf")
    from landprobe.common.version import __version__

    settings = dict(measures=groups, subnets={str(k): (v if isinstance(v, (str, list)) else repr(v))
                                              for k, v in sub_items.items()},
                    input_shape=None if input_shape is None else list(input_shape),
                    reference=reference is not None, threshold=threshold, epsilon=epsilon,
                    sharpness_steps=sharpness_steps, pac_bayes_target=pac_bayes_target,
                    pac_bayes_samples=pac_bayes_samples, seed=seed, model=type(model).__name__,
                    landprobe=__version__)
    return CapacityReport(values=values, skipped=skipped, settings=settings)


def _is_module_path(model: nn.Module, sel: str) -> bool:
    try:
        model.get_submodule(sel)
        return True
    except AttributeError:
        return False

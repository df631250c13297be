"""``report``: every capacity measure of a model (and its subnets) in one :class:`CapacityReport`.

Under ``torch.distributed`` with ``sharding=landprobe.Sharding(data=True)`` the measures that
pass over the data share each pass among the ranks and add up what the ranks collected, so
every rank holds the one-process report.
"""

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
from landprobe.capacity.registry import CHEAP_MEASURES, MEASURE_REGISTRY, MEASURES, Measure, MeasureContext
from landprobe.engine import Progress, Sharding
from landprobe.params import Selector

__all__ = ["CapacityReport", "report", "MEASURES", "CHEAP_MEASURES"]


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
           max_batches: int | None = None, strict: bool = False, progress: bool | None = None,
           sharding: Sharding | None = None) -> CapacityReport:
    """Every capacity measure of ``model`` (and each subnet) in one :class:`CapacityReport`.

    Measures that need what is not given (``data``, ``loss_fn``) or that do not apply (a path
    norm through BatchNorm, activations of a glob subnet) are listed in ``skipped`` with the
    reason, unless ``strict=True``, which raises instead. The groups are those of
    :data:`~landprobe.capacity.MEASURE_REGISTRY`: the built-in :data:`MEASURES` and any added
    with :func:`~landprobe.capacity.register_measure`.

    Args:
        model: Any ``nn.Module`` (never modified).
        data: Iterable of ``(x, y)`` batches, for the data-dependent measures.
        subnets: Mapping name → selector (see :func:`landprobe.select`); the measures marked per
            subnet in :class:`CapacityReport` are computed for each, besides ``"model"``.
        loss_fn: Mean-reduced loss, for ``fisher_rao``, ``sharpness`` and ``pac_bayes``.
        measures: ``"all"`` (every registered group), ``"cheap"`` (those that cost no more than
            one pass over the data per scope: :data:`CHEAP_MEASURES` and cheap registered ones)
            or a list of group names.
        input_shape, output: For :func:`path_norm`. reference: Initial weights for
            :func:`spectral_complexity`. threshold: For :func:`fraction_near_zero`.
        epsilon, sharpness_steps: For :func:`epsilon_sharpness`. pac_bayes_target,
            pac_bayes_samples, seed: For :func:`pac_bayes_sigma`. max_batches: For
            :func:`activation_sparseness`.
        strict: Raise when a requested measure cannot be computed.
        progress: A bar over the groups: ``None`` (on a terminal only), ``True`` or ``False``.
        sharding: Under ``torch.distributed``: :class:`landprobe.Sharding`, handed to every
            group (:attr:`MeasureContext.sharding`). ``data=True``: each pass over ``data`` is
            shared by the ranks (each takes its share of the batches) and every rank returns the
            one-process report; call ``report`` on every rank. ``None``: every rank computes the
            whole report alone.

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
    groups = _groups(measures)
    parameters = scopes(model, subnets)                # validates the selectors
    sub_items = dict(subnets or {})
    named = {str(k): s for k, s in sub_items.items()}
    options = dict(input_shape=input_shape, output=output, reference=reference, threshold=threshold,
                   epsilon=epsilon, sharpness_steps=sharpness_steps, pac_bayes_target=pac_bayes_target,
                   pac_bayes_samples=pac_bayes_samples, seed=seed, max_batches=max_batches)
    values: dict[str, dict[str, float]] = {k: {} for k in parameters}
    skipped: dict[str, str] = {}
    with Progress("capacity report", len(groups), enabled=progress, unit="measure") as bar:
        for group in groups:
            bar.set(measure=group)
            m = MEASURE_REGISTRY[group]
            ctx = MeasureContext(group, model, data, loss_fn, subnets=named if m.per_subnet else {},
                                 parameters=dict(parameters) if m.per_subnet else {MODEL: parameters[MODEL]},
                                 options=dict(options), strict=strict, sharding=sharding)
            for scope, vals in _compute(m, ctx).items():
                values[scope].update(vals)
            skipped.update(ctx.skipped)
            bar.update()
    from landprobe.common.version import __version__

    settings = dict(measures=groups, subnets={str(k): (v if isinstance(v, (str, list)) else repr(v))
                                              for k, v in sub_items.items()},
                    input_shape=None if input_shape is None else list(input_shape),
                    reference=reference is not None, threshold=threshold, epsilon=epsilon,
                    sharpness_steps=sharpness_steps, pac_bayes_target=pac_bayes_target,
                    pac_bayes_samples=pac_bayes_samples, seed=seed, model=type(model).__name__,
                    landprobe=__version__)
    return CapacityReport(values=values, skipped=skipped, settings=settings)


def _groups(measures: Sequence[str] | str) -> list[str]:
    """The group names ``measures`` asks for, checked against the registry."""
    known = tuple(MEASURE_REGISTRY)
    if measures == "all":
        return list(known)
    if measures == "cheap":
        return [name for name, m in MEASURE_REGISTRY.items() if m.cheap]
    if isinstance(measures, str):
        raise ValueError(f"measures={measures!r}; expected 'all', 'cheap' or a list of {known}")
    groups = list(measures)
    if not groups:
        raise ValueError(f"measures={measures!r} names no group; pass 'all', 'cheap' or a non-empty list of {known}")
    unknown = [g for g in groups if not isinstance(g, str) or g not in MEASURE_REGISTRY]
    if unknown:
        raise ValueError(f"measures has unknown group(s) {unknown}; expected a list of {known}, 'all' or "
                         f"'cheap' (add a group with landprobe.capacity.register_measure)")
    return groups


def _compute(measure: Measure, ctx: MeasureContext) -> dict[str, dict[str, float]]:
    """One group's values, or ``{}`` (and a ``skipped`` entry) when its data or loss is missing."""
    missing = [what for what, needed, given in (("data", measure.needs_data, ctx.data),
                                                ("loss_fn", measure.needs_loss, ctx.loss_fn))
               if needed and given is None]
    if missing:
        ctx.skip(f"needs {' and '.join(missing)}")
        return {}
    return measure.run(ctx)

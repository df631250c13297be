"""``LandscapeMonitor``: a training-loop callback that records the landscape epoch by epoch.

At the end of every ``every``-th epoch it records, for the model as it then is: the empirical
error, the top Hessian eigenvalue and the Hessian trace (whole model and per subnet), the
capacity measures of :func:`landprobe.capacity.report`, and the linear interpolation between
the previous recorded checkpoint and this one (its barrier, Frankle et al. 2020). Records go
into a JSON history (written atomically after each record when ``directory`` is given) that
:class:`MonitorHistory` loads and plots.

Under ``torch.distributed`` the monitor runs on every rank; with a probe built with
``sharding=landprobe.Sharding(data=True)`` every measure shares its passes over the data among
the ranks and each rank records the one-process values. Only the process that writes files
(global rank 0) writes the history and the previous checkpoint.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from landprobe.common.deprecation import renamed_keywords
from landprobe.common.io import atomic_torch_save, load_torch
from landprobe.common.results import Result, require_matplotlib
from landprobe.common.tempfiles import remove_stale_temps
from landprobe.capacity import MODEL
from landprobe.capacity import CHEAP_MEASURES, MEASURE_REGISTRY, report
from landprobe.common.io import restore_floats
from landprobe.params import ParamVector, Selector, select
from landprobe.engine import Progress, Sharding
from landprobe.probes import LandscapeProbe

__all__ = ["LandscapeMonitor", "MonitorHistory"]

HISTORY_FILE = "monitor.json"
PREVIOUS_FILE = "monitor_previous.pt"


@dataclass(frozen=True, eq=False)
class MonitorHistory(Result):
    """The records of a :class:`LandscapeMonitor`, one per recorded epoch.

    Attributes:
        records: One dict per recorded epoch with ``epoch``, ``loss``, ``seconds`` and, when
            measured, ``lambda_max``, ``trace``, ``trace_stderr`` (whole model), ``hessian``
            (``{scope: {"lambda_max", "trace", "trace_stderr"}}`` for ``"model"`` and each
            subnet), ``capacity`` (``{scope: {measure: value}}``, see
            :class:`~landprobe.capacity.CapacityReport`), and from the second record on
            ``previous_epoch``, ``barrier``, ``barrier_alpha``, ``distance`` (‖θ_now − θ_prev‖ of
            the parameters) and ``interpolation`` (the curve's ``alphas`` and ``losses``).
        settings: The monitor's settings.

    Example:
        >>> from landprobe.monitor import MonitorHistory
        >>> h = MonitorHistory([{"epoch": 1, "loss": 2.0, "capacity": {"model": {"l2": 3.0}}},
        ...                     {"epoch": 2, "loss": 1.0, "capacity": {"model": {"l2": 4.0}}, "barrier": 0.5}])
        >>> h.epochs.tolist(), h.series("l2").tolist(), h.series("barrier").tolist()
        ([1.0, 2.0], [3.0, 4.0], [nan, 0.5])
    """

    records: list = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def epochs(self) -> np.ndarray:
        """The recorded epochs (float64)."""
        return np.array([r["epoch"] for r in self.records], dtype=np.float64)

    def series(self, key: str, scope: str = MODEL) -> np.ndarray:
        """One quantity over the records (NaN where absent): a top-level key (``"loss"``,
        ``"barrier"``), a Hessian key of ``scope`` (``"lambda_max"``, ``"trace"``) or a capacity
        measure of ``scope`` (``"l2"``, ``"fisher_rao"``, ...).

        Example:
            >>> from landprobe.monitor import MonitorHistory
            >>> h = MonitorHistory([{"epoch": 1, "loss": 1.0, "hessian": {"inet": {"trace": 4.0}}}])
            >>> h.series("trace", "inet").tolist(), h.series("trace").tolist()
            ([4.0], [nan])
        """
        out = []
        for r in self.records:
            v = r.get(key) if scope == MODEL else None
            if v is None:
                v = r.get("hessian", {}).get(scope, {}).get(key)
            if v is None:
                v = r.get("capacity", {}).get(scope, {}).get(key)
            out.append(np.nan if v is None else float(v))
        return np.array(out, dtype=np.float64)

    @property
    def scopes(self) -> list[str]:
        """``"model"`` and the subnets that appear in the records."""
        seen: dict[str, None] = {MODEL: None}
        for r in self.records:
            for part in ("hessian", "capacity"):
                seen.update(dict.fromkeys(r.get(part, {})))
        return list(seen)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MonitorHistory:
        data = dict(data)
        data["records"] = restore_floats(data.get("records", []))
        return super().from_dict(data)

    def plot(self, axes=None, norm: str = "l2"):
        """Four panels over epochs: λ_max, Hessian trace (±2 stderr), ``norm`` per scope, barrier.

        Returns the array of 4 axes.

        Example:
            >>> from landprobe.monitor import MonitorHistory
            >>> h = MonitorHistory([{"epoch": 1, "loss": 2.0, "lambda_max": 3.0, "trace": 5.0},
            ...                     {"epoch": 2, "loss": 1.0, "lambda_max": 2.0, "trace": 4.0, "barrier": 0.1}])
            >>> axes = h.plot()
            >>> [ax.get_ylabel() for ax in axes]
            ['top eigenvalue', 'Hessian trace', 'l2', 'barrier to previous']
        """
        plt = require_matplotlib()
        if axes is None:
            _, axes = plt.subplots(1, 4, figsize=(15, 3.2))
        ep = self.epochs
        scopes = self.scopes
        for s in scopes:
            lam = self.series("lambda_max", s)
            if np.isfinite(lam).any():
                axes[0].plot(ep, lam, "o-", label=s)
            tr, se = self.series("trace", s), self.series("trace_stderr", s)
            if np.isfinite(tr).any():
                axes[1].errorbar(ep, tr, yerr=2 * np.nan_to_num(se), fmt="o-", capsize=2, label=s)
            nv = self.series(norm, s)
            if np.isfinite(nv).any():
                axes[2].plot(ep, nv, "o-", label=s)
        axes[3].plot(ep, self.series("barrier"), "o-", color="k")
        for ax, label in zip(axes, ("top eigenvalue", "Hessian trace", norm, "barrier to previous")):
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            if ax.get_legend_handles_labels()[0] and len(scopes) > 1:
                ax.legend(frameon=False, fontsize="small")
        return axes


def _capacity_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` as a dict, checked against the keywords of :func:`landprobe.capacity.report`
    that the monitor does not set itself."""
    import inspect

    out = dict(options or {})
    allowed = sorted(set(inspect.signature(report).parameters)
                     - {"model", "data", "subnets", "loss_fn", "measures", "progress"})
    unknown = sorted(k for k in out if k not in allowed)
    if unknown:
        raise ValueError(f"capacity_options has unknown key(s) {unknown}; expected keywords of "
                         f"landprobe.capacity.report: {allowed}")
    return out


class LandscapeMonitor:
    """Record the landscape at the end of epochs, in any training loop.

    Call ``monitor.epoch_end(epoch)`` (or ``monitor(epoch)``) after each epoch. When ``epoch``
    is a multiple of ``every`` it records (see :class:`MonitorHistory` for the fields):

    - the empirical error of the probe's data (``probe.loss()``);
    - ``hessian``: the top Hessian eigenvalue (Lanczos) and the trace (Hutch++, ``trace_matvecs``
      Hessian-vector products, seed 0) for the whole model and each subnet (diagonal blocks),
      through ``probe.hessian(subnet=...)`` (:mod:`landprobe.curvature`);
    - ``capacity``: :func:`landprobe.capacity.report` on the probe's data and loss;
    - the interpolation ``probe.interpolate(previous, current, points=interpolate_points)`` from the
      previous recorded checkpoint (kept as one cloned ParamVector, with the floating buffers
      when the probe's ``bn="eval"``) and its barrier.

    The model is never changed: every probe restores parameters, buffers, flags, modes and the
    global RNG states bitwise. With ``directory`` the history is written atomically to
    ``directory/monitor.json`` after each record, with the previous checkpoint in
    ``monitor_previous.pt``, so that ``resume=True`` continues an interrupted run.

    Under ``torch.distributed`` construct and call the monitor on every rank. With data
    sharding (a probe built with ``sharding=landprobe.Sharding(data=True)``, or ``sharding=``
    here) the loss, the Hessian products, the capacity measures and the interpolation each
    share their passes over the data among the ranks, and every rank's record equals the
    one-process record (but for ``seconds``, each rank's own time). Only global rank 0 writes files, and every rank waits for
    the writes before :meth:`epoch_end` returns; ``resume=True`` reads them on every rank, so
    ``directory`` must be one that all the ranks see (a shared filesystem).

    Args:
        probe_or_model: A :class:`~landprobe.LandscapeProbe`, or a model (then ``loss_fn`` and
            ``data`` build one with ``bn="eval"``).
        loss_fn, data: For a model: the mean-reduced loss and the (x, y) batches to measure on
            (a fixed, small subset of the training or validation data keeps this cheap).
        every: Record when ``epoch % every == 0``.
        hessian: ``True``: λ_max and the trace of the whole model and of each subnet's diagonal
            block; ``"model"``: of the whole model only; ``False``: none. Each trace costs
            ``trace_matvecs`` Hessian-vector products (each about two passes over ``data``),
            and a block's products cost nearly as much as the whole model's: with k subnets
            ``True`` costs about (1 + k) times ``"model"`` (measured 2.7x on WARSHIP with three
            subnets; ``docs/capacity.md``).
        trace_matvecs: Hutch++ products per trace (>= 4).
        eig_tol: Relative residual tolerance of the top eigenvalue.
        subnets: Mapping name → selector: Hessian blocks and capacity per subnet.
        capacity: ``True`` (the groups of :data:`~landprobe.capacity.CHEAP_MEASURES`), ``False``,
            ``"all"`` or a list of groups; ``capacity_options`` are passed to ``report`` (with the
            probe's ``sharding`` unless they name one).
        interpolate_points: Points of the segment between consecutive checkpoints (>= 2).
        directory: Where to write the history (``None``: keep it in memory only).
        resume: Load the history and previous checkpoint found in ``directory`` (on every rank;
            ``ValueError`` if the ranks find different ones).
        verbose: Write one line per record through ``tqdm.write`` (on global rank 0);
            ``logger``: a ``logging.Logger`` to use instead.
        sharding: For a model: how the probe it builds uses the ranks of ``torch.distributed``
            (:class:`landprobe.Sharding`; ``None``: the default). A probe carries its own.

    Raises:
        TypeError: If a model is given without ``loss_fn``/``data``, or a probe with them (or
            with ``sharding``).
        ValueError: On ``every < 1``, ``interpolate_points < 2``, ``trace_matvecs < 4``, an unknown
            capacity group, a selector that matches nothing, or ``resume`` without ``directory``.

    Example:
        >>> import torch
        >>> from landprobe.monitor import LandscapeMonitor
        >>> model = torch.nn.Linear(1, 1, bias=False)                      # L(w) = w**2
        >>> data = [(torch.ones(4, 1), torch.zeros(4, 1))]
        >>> monitor = LandscapeMonitor(model, torch.nn.MSELoss(), data, hessian=True, trace_matvecs=4)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(1.0)
        >>> r1 = monitor(1)
        >>> round(r1["loss"], 9), round(r1["lambda_max"], 6), round(r1["trace"], 6)   # L'' = 2
        (1.0, 2.0, 2.0)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(-1.0)
        >>> r2 = monitor(2)
        >>> r2["barrier"], r2["capacity"]["model"]["l1"]                   # w: 1 -> -1 passes 0: below the chord
        (0.0, 1.0)
        >>> len(monitor.history)
        2
    """

    @renamed_keywords(interpolate_steps="interpolate_points")
    def __init__(self, probe_or_model: LandscapeProbe | nn.Module, loss_fn: Callable | None = None,
                 data: Iterable | None = None, *, every: int = 1, hessian: bool | str = True,
                 trace_matvecs: int = 30, eig_tol: float = 1e-4, subnets: Mapping[Any, Selector] | None = None,
                 capacity: bool | str | Sequence[str] = True, capacity_options: Mapping[str, Any] | None = None,
                 interpolate_points: int = 11, directory: str | Path | None = None, resume: bool = False,
                 verbose: bool = False, logger: logging.Logger | None = None, sharding: Sharding | None = None):
        if isinstance(probe_or_model, LandscapeProbe):
            if loss_fn is not None or data is not None or sharding is not None:
                raise TypeError("LandscapeMonitor got a LandscapeProbe and also loss_fn/data/sharding; the probe "
                                "already holds them: pass LandscapeMonitor(probe) or LandscapeMonitor(model, "
                                "loss_fn, data, sharding=...)")
            self.probe = probe_or_model
        elif isinstance(probe_or_model, nn.Module):
            if loss_fn is None or data is None:
                raise TypeError("LandscapeMonitor(model, loss_fn, data): a model needs loss_fn and data (the batches "
                                "to measure on); or pass a LandscapeProbe")
            self.probe = LandscapeProbe(probe_or_model, loss_fn, data, sharding=sharding)
        else:
            if isinstance(probe_or_model, type):
                raise TypeError(f"received the class {probe_or_model.__name__}; pass an instance (model or probe)")
            raise TypeError(f"probe_or_model has type {type(probe_or_model).__name__}; expected a LandscapeProbe "
                            f"or an nn.Module")
        for name, value, least in (("every", every, 1), ("interpolate_points", interpolate_points, 2),
                                   ("trace_matvecs", trace_matvecs, 4)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}={value!r}; expected an integer of at least {least}")
        if not (isinstance(eig_tol, (int, float)) and eig_tol > 0):
            raise ValueError(f"eig_tol={eig_tol!r}; expected a positive float such as 1e-4")
        if capacity is True:
            groups: list[str] = list(CHEAP_MEASURES)
        elif capacity is False or capacity is None:
            groups = []
        elif capacity == "all":
            groups = list(MEASURE_REGISTRY)
        elif isinstance(capacity, str) or not all(isinstance(g, str) and g in MEASURE_REGISTRY for g in capacity):
            raise ValueError(f"capacity={capacity!r}; expected True, False, 'all' or a list of groups from "
                             f"{tuple(MEASURE_REGISTRY)} (built-in and registered measures)")
        else:
            groups = list(capacity)
        model = self.probe.model
        self.subnets = dict(subnets or {})
        for sel in self.subnets.values():
            select(model, sel)                        # fail now, naming the selector
        if str(MODEL) in map(str, self.subnets):
            raise ValueError(f"subnets has a key {MODEL!r}, which is reserved for the whole model; rename it")
        if hessian not in (True, False, "model"):
            raise ValueError(f"hessian={hessian!r}; expected True (model and subnets), 'model' (whole model only) or False")
        self._hessian_scopes = "model" if hessian == "model" else "all"
        self._hessian = bool(hessian)
        self.every, self.trace_matvecs, self.eig_tol = every, trace_matvecs, float(eig_tol)
        self.capacity_groups = groups
        self.capacity_options = _capacity_options(capacity_options)
        self.interpolate_points = interpolate_points
        self.directory = None if directory is None else Path(directory)
        self.verbose, self.logger = verbose, logger
        self._records: list[dict[str, Any]] = []
        self._previous: ParamVector | None = None
        self._previous_epoch: Any = None
        self._names = self.probe.engine.state_names()
        if self.directory is not None and self.probe.engine.writes_files:
            for name in (HISTORY_FILE, PREVIOUS_FILE):  # left by a run killed while writing them
                remove_stale_temps(self.directory / name)
        if resume:
            if self.directory is None:
                raise ValueError("resume=True needs directory= (where monitor.json was written)")
            self._resume()

    # ------------------------------------------------------------------ state
    @property
    def history(self) -> MonitorHistory:
        """The records so far, as a :class:`MonitorHistory` (a copy)."""
        return MonitorHistory(records=copy.deepcopy(self._records), settings=self.settings)

    @property
    def settings(self) -> dict[str, Any]:
        return self.probe.engine.settings(
            probe="monitor", every=self.every,
            hessian=(self._hessian_scopes if self._hessian else False), trace_matvecs=self.trace_matvecs,
            trace_method="hutch++", eig_tol=self.eig_tol,
            subnets={str(k): (v if isinstance(v, (str, list)) else repr(v)) for k, v in self.subnets.items()},
            capacity=self.capacity_groups, interpolate_points=self.interpolate_points)

    def state_dict(self) -> dict[str, Any]:
        """The records and the previous checkpoint (copies), to keep with a training checkpoint:
        plain Python values and tensors, which ``torch.load(..., weights_only=True)`` reads.

        Example:
            >>> import torch
            >>> from landprobe.monitor import LandscapeMonitor
            >>> model, data = torch.nn.Linear(1, 1), [(torch.ones(2, 1), torch.zeros(2, 1))]
            >>> first = LandscapeMonitor(model, torch.nn.MSELoss(), data, hessian=False, capacity=False)
            >>> _ = first(1)
            >>> second = LandscapeMonitor(model, torch.nn.MSELoss(), data, hessian=False, capacity=False)
            >>> second.load_state_dict(first.state_dict())
            >>> second(2)["previous_epoch"], len(second.history)
            (1, 2)
        """
        previous = None if self._previous is None else {
            n: t.detach().clone() for n, t in self._previous.state_dict().items()}
        return {"records": copy.deepcopy(self._records), "previous_epoch": self._previous_epoch, "previous": previous}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: its records, and its previous checkpoint as the start
        of the next interpolation.

        Raises:
            ValueError: If ``state`` lacks one of its keys, or its previous checkpoint does not
                hold the tensors (names and shapes) that this monitor's probe interpolates.

        Example:
            >>> import torch
            >>> from landprobe.monitor import LandscapeMonitor
            >>> data = [(torch.ones(2, 1), torch.zeros(2, 1))]
            >>> old = LandscapeMonitor(torch.nn.Linear(1, 1), torch.nn.MSELoss(), data, hessian=False, capacity=False)
            >>> _ = old(1)
            >>> new = LandscapeMonitor(torch.nn.Linear(1, 1), torch.nn.MSELoss(), data, hessian=False, capacity=False)
            >>> new.load_state_dict(old.state_dict())
            >>> new.history.epochs.tolist()
            [1.0]
        """
        missing = sorted({"records", "previous_epoch", "previous"} - set(state))
        if missing:
            raise ValueError(f"LandscapeMonitor.load_state_dict: the state lacks {missing}; pass the dict that "
                             f"LandscapeMonitor.state_dict() returned")
        previous = state["previous"]
        if previous is not None:
            now = dict(zip(self._names, self.probe.engine.targets(self._names)))
            bad = sorted(set(previous) ^ set(now)) or [n for n in now if previous[n].shape != now[n].shape]
            if bad:
                raise ValueError(f"LandscapeMonitor.load_state_dict: the previous checkpoint does not fit the model "
                                 f"(tensors {bad[:5]} missing, extra or of another shape); load a state saved "
                                 f"from a monitor of this model")
            previous = ParamVector({n: previous[n].to(self.probe.engine.device) for n in self._names})
        self._records = copy.deepcopy(list(state["records"]))
        self._previous, self._previous_epoch = previous, state["previous_epoch"]

    def save(self, path: str | Path | None = None) -> Path:
        """Write the history as JSON, atomically (default ``directory/monitor.json``).

        Under ``torch.distributed`` only global rank 0 writes; every rank returns the path.

        Example:
            >>> import tempfile, torch
            >>> from landprobe.monitor import LandscapeMonitor
            >>> model = torch.nn.Linear(1, 1)
            >>> monitor = LandscapeMonitor(model, torch.nn.MSELoss(), [(torch.ones(2, 1), torch.zeros(2, 1))],
            ...                            hessian=False, capacity=False)
            >>> _ = monitor(0); _ = monitor(1)                      # nothing trained in between
            >>> path = monitor.save(tempfile.mkdtemp() + "/history.json")
            >>> [r["epoch"] for r in LandscapeMonitor.load(path).records], LandscapeMonitor.load(path).records[1]["barrier"]
            ([0, 1], 0.0)
        """
        if path is None:
            if self.directory is None:
                raise ValueError("LandscapeMonitor.save: give a path, or construct the monitor with directory=")
            path = self.directory / HISTORY_FILE
        if self.probe.engine.writes_files:
            return self.history.save(path)
        return Path(path)

    @staticmethod
    def load(path: str | Path) -> MonitorHistory:
        """Read a history written by a monitor (a file, or the directory holding ``monitor.json``).

        Example:
            >>> import tempfile, torch
            >>> from landprobe.monitor import LandscapeMonitor
            >>> folder = tempfile.mkdtemp()
            >>> monitor = LandscapeMonitor(torch.nn.Linear(1, 1), torch.nn.MSELoss(),
            ...                            [(torch.ones(2, 1), torch.zeros(2, 1))], hessian=False, directory=folder)
            >>> _ = monitor(3)                                      # written to folder/monitor.json
            >>> LandscapeMonitor.load(folder).epochs.tolist()
            [3.0]
        """
        p = Path(path)
        return MonitorHistory.load(p / HISTORY_FILE if p.is_dir() else p)

    def plot(self, axes=None, norm: str = "l2"):
        """:meth:`MonitorHistory.plot` of the records so far.

        Example:
            >>> import torch
            >>> from landprobe.monitor import LandscapeMonitor
            >>> monitor = LandscapeMonitor(torch.nn.Linear(1, 1), torch.nn.MSELoss(),
            ...                            [(torch.ones(2, 1), torch.zeros(2, 1))], hessian=False)
            >>> _ = monitor(1)
            >>> len(monitor.plot())                                 # four panels
            4
        """
        return self.history.plot(axes, norm=norm)

    def _resume(self) -> None:
        """Read the history and the previous checkpoint; under ``torch.distributed`` every rank
        reads them (an error on one raises on all) and checks that all read the same ones."""
        def read() -> tuple[list[Any], Any]:
            hist_path = self.directory / HISTORY_FILE
            if hist_path.exists():
                self._records = list(MonitorHistory.load(hist_path).records)
            prev_path = self.directory / PREVIOUS_FILE
            if prev_path.exists():
                blob = load_torch(prev_path, map_location=self.probe.engine.device)
                self._previous = ParamVector(blob["state"])
                self._previous_epoch = blob["epoch"]
            return [r.get("epoch") for r in self._records], self._previous_epoch
        found = self.probe.engine.ranks().gather(read, "reading the monitor's files")
        if any(f != found[0] for f in found):
            raise ValueError(f"LandscapeMonitor(resume=True): the ranks read different files in {str(self.directory)!r} "
                             f"(recorded epochs and previous checkpoint per rank: {found}); pass a directory that "
                             f"every rank reads (a shared filesystem)")

    # ------------------------------------------------------------------ recording
    def __call__(self, epoch: int) -> dict[str, Any] | None:
        """Same as :meth:`epoch_end`."""
        return self.epoch_end(epoch)

    def _snapshot(self) -> ParamVector:
        return ParamVector({n: t.detach().clone() for n, t in zip(self._names, self.probe.engine.targets(self._names))})

    def epoch_end(self, epoch: int) -> dict[str, Any] | None:
        """Record the landscape now if ``epoch % every == 0``; returns the record (or ``None``).

        Raises:
            TypeError: If ``epoch`` is not an integer.

        Example:
            >>> import torch
            >>> from landprobe.monitor import LandscapeMonitor
            >>> model = torch.nn.Linear(1, 1, bias=False)
            >>> _ = torch.nn.init.constant_(model.weight, 2.0)       # L = (2 * 1 - 0)**2 = 4
            >>> monitor = LandscapeMonitor(model, torch.nn.MSELoss(), [(torch.ones(2, 1), torch.zeros(2, 1))],
            ...                            every=2, hessian=False, capacity=["norms"])
            >>> monitor.epoch_end(1) is None, monitor.epoch_end(2)["loss"], monitor.history.records[0]["capacity"]["model"]["l1"]
            (True, 4.0, 2.0)
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise TypeError(f"epoch={epoch!r}; expected an integer epoch number")
        if int(epoch) % self.every != 0:
            return None
        start = time.perf_counter()
        probe = self.probe
        scopes = [(MODEL, None)]
        if self._hessian and self._hessian_scopes == "all":
            scopes += [(str(k), s) for k, s in self.subnets.items()]
        stages = 1 + (len(scopes) if self._hessian else 0) + bool(self.capacity_groups) + (self._previous is not None)
        with Progress(f"monitor (epoch {int(epoch)})", stages, enabled=probe.progress, unit="measure") as bar:
            rec: dict[str, Any] = {"epoch": int(epoch), "loss": probe.loss()}
            bar.update()
            if self._hessian:
                rec["hessian"] = {}
                for scope, sel in scopes:
                    rec["hessian"][scope] = self._curvature(sel)
                    bar.update()
                rec.update(rec["hessian"][MODEL])
            if self.capacity_groups:
                options = {"sharding": probe.engine.sharding, **self.capacity_options}
                rep = report(probe.model, probe.data, self.subnets or None, probe.loss_fn,
                             measures=self.capacity_groups, progress=probe.progress, **options)
                rec["capacity"] = rep.values
                if rep.skipped:
                    rec["capacity_skipped"] = rep.skipped
                bar.update()
            current = self._snapshot()
            if self._previous is not None:
                rec.update(self._barrier(current))
                bar.update()
        self._previous, self._previous_epoch = current, int(epoch)
        rec["seconds"] = time.perf_counter() - start
        self._records.append(rec)
        if self.directory is not None:
            self._write(int(epoch), current)
        self._say(rec)
        return rec

    def _write(self, epoch: int, current: ParamVector) -> None:
        """The previous checkpoint and the history, written by global rank 0; every rank waits for
        the writes (an error writing them raises on every rank)."""
        engine = self.probe.engine

        def write() -> None:
            atomic_torch_save({"epoch": epoch, "state": current.state_dict()}, self.directory / PREVIOUS_FILE)
            self.save()
        engine.write_files(write, "writing the monitor's files")

    def _curvature(self, subnet: Selector | None) -> dict[str, float]:
        """λ_max (Lanczos) and the Hutch++ trace of one Hessian block."""
        op = self.probe.hessian(subnet=subnet)
        lam = float(np.asarray(op.top_eigenvalues(1, tol=self.eig_tol).values).reshape(-1)[0])
        tr = op.trace(method="hutch++", matvecs=self.trace_matvecs, seed=0)
        return {"lambda_max": lam, "trace": float(tr.value), "trace_stderr": float(tr.stderr)}

    def _barrier(self, current: ParamVector) -> dict[str, Any]:
        """The interpolation from the previous record's parameters to ``current`` and its barrier."""
        probe = self.probe
        curve = probe.interpolate(self._previous, current, points=self.interpolate_points)
        params = set(dict(probe.model.named_parameters()))
        keep = [n for n in self._names if n in params]
        return dict(previous_epoch=self._previous_epoch, barrier=curve.barrier, barrier_alpha=curve.argmax_alpha,
                    distance=(current.subset(keep) - self._previous.subset(keep)).norm(),
                    interpolation={"alphas": curve.alphas.tolist(), "losses": curve.losses.tolist()})

    def _say(self, rec: dict[str, Any]) -> None:
        if not (self.verbose or self.logger) or not self.probe.engine.writes_files:
            return
        parts = [f"epoch {rec['epoch']}", f"loss {rec['loss']:.5g}"]
        if "lambda_max" in rec:
            parts.append(f"λmax {rec['lambda_max']:.4g}")
            parts.append(f"trace {rec['trace']:.4g}±{rec['trace_stderr']:.2g}")
        cap = rec.get("capacity", {}).get(MODEL, {})
        if "l2" in cap:
            parts.append(f"‖θ‖ {cap['l2']:.4g}")
        if "barrier" in rec:
            parts.append(f"barrier {rec['barrier']:.3g}")
        parts.append(f"({rec['seconds']:.1f} s)")
        line = "LandscapeMonitor: " + ", ".join(parts)
        if self.logger is not None:
            self.logger.info(line)
        else:
            from tqdm.auto import tqdm

            tqdm.write(line)



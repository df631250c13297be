"""``LandscapeCallback``: the :class:`~landprobe.LandscapeMonitor` as a Lightning callback.

At the end of every ``every``-th training epoch the callback records the landscape of the
LightningModule (or of its attribute that holds the network, ``network="net"``), logs the
scalar measures through ``pl_module.log`` (so they reach ``trainer.callback_metrics`` and the
trainer's loggers), and keeps its history in the Lightning checkpoint, so that a Trainer
resumed with ``ckpt_path=`` continues it. Needs Lightning (``pip install landprobe[lightning]``);
``import landprobe`` does not import it.

Under DDP the callback runs on every rank (see :class:`LandscapeCallback`).
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

try:
    from lightning.pytorch import Callback
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test without lightning
    raise ImportError("landprobe.integrations.lightning needs Lightning (lightning.pytorch), which is not "
                      "installed: pip install landprobe[lightning]") from exc

from landprobe.common.checks import check_int, check_loss_fn
from landprobe.engine import Sharding
from landprobe.monitor import LandscapeMonitor, MonitorHistory
from landprobe.probes import LandscapeProbe

__all__ = ["LandscapeCallback", "scalars"]

#: Keys of a record that are bookkeeping, not measures (never logged).
NOT_LOGGED = ("epoch", "previous_epoch", "seconds")
#: LandscapeProbe keywords that the callback sets itself (not accepted in ``probe_options``).
PROBE_OWN = ("self", "model", "loss_fn", "data", "sharding")


def _probe_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` as a dict, checked against the keywords of :class:`~landprobe.LandscapeProbe`."""
    out = dict(options or {})
    allowed = sorted(set(inspect.signature(LandscapeProbe.__init__).parameters) - set(PROBE_OWN))
    unknown = sorted(k for k in out if k not in allowed)
    if unknown:
        raise ValueError(f"probe_options has unknown key(s) {unknown}; expected keywords of "
                         f"landprobe.LandscapeProbe: {allowed}")
    return out


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalar measures of a monitor record, named as :class:`LandscapeCallback` logs them
    (without its prefix): the top-level numbers (``loss``, ``lambda_max``, ``trace``,
    ``barrier``, ``distance``, ...), each subnet's Hessian numbers as ``<subnet>/<key>``, and the
    capacity measures as ``<measure>`` (whole model) or ``<subnet>/<measure>``.

    Example:
        >>> from landprobe.integrations.lightning import scalars
        >>> scalars({"epoch": 2, "loss": 0.5, "barrier": 0.0, "seconds": 1.2,
        ...          "hessian": {"model": {"trace": 3.0}, "head": {"trace": 1.0}},
        ...          "capacity": {"model": {"l2": 4.0}, "head": {"l2": 2.0}}})
        {'loss': 0.5, 'barrier': 0.0, 'head/trace': 1.0, 'l2': 4.0, 'head/l2': 2.0}
    """
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    out = {k: float(v) for k, v in record.items() if k not in NOT_LOGGED and number(v)}
    for part in ("hessian", "capacity"):
        for scope, values in record.get(part, {}).items():
            if part == "hessian" and scope == "model":
                continue                                  # the top-level lambda_max, trace, trace_stderr
            for key, v in values.items():
                if number(v):
                    out[key if scope == "model" else f"{scope}/{key}"] = float(v)
    return out


class LandscapeCallback(Callback):
    """Record the landscape at the end of training epochs of a Lightning ``Trainer``.

    A :class:`~landprobe.LandscapeMonitor` (see it for what a record holds) on the
    LightningModule, or on ``getattr(pl_module, network)``, measured on ``data`` with
    ``loss_fn``. Epochs are counted from 1 (``trainer.current_epoch + 1`` at the end of an
    epoch); the callback records when that number is a multiple of ``every``. Lightning calls it
    before the LightningModule's own ``on_train_epoch_end`` and before the checkpoint callbacks,
    so a checkpoint written at the end of that epoch holds the record.

    - **Logging**: each record's scalars (:func:`scalars`: ``loss``, ``lambda_max``, ``trace``,
      ``barrier``, ``distance``, the capacity measures such as ``l2``, and the subnets' as
      ``<subnet>/<name>``) are logged as ``log_prefix + name`` with
      ``pl_module.log(..., on_epoch=True)``: they appear in ``trainer.callback_metrics`` and in
      every logger of the Trainer.
    - **Checkpoints**: :meth:`state_dict` holds the records and the previous checkpoint (the
      start of the next barrier's interpolation); a Trainer resumed with ``ckpt_path=`` loads it
      and continues the history. Without a Lightning checkpoint, ``directory`` and ``resume``
      continue from the monitor's own files; when both are there the Lightning checkpoint wins.
    - **The module is untouched**: every probe restores parameters, buffers, ``.grad``,
      ``requires_grad``, train/eval modes and the global RNG states bitwise, so training goes on
      exactly as without the callback.
    - **DDP**: the callback runs on every rank, and must: the probes' collectives span the
      default process group, so measuring on rank 0 alone would leave the others waiting.
      With ``sharding=None`` (``Sharding(data=False)``) every rank passes over all of ``data``
      and the points of the interpolation are split across the ranks; with
      ``sharding=landprobe.Sharding(data=True)`` the ranks share every pass over ``data``
      (give every rank the same ``data``, or each rank its shard with ``split="given"``). Either
      way every rank records the one-process numbers and logs the same values (logged without
      ``sync_dist``; Lightning may warn that it recommends ``sync_dist=True``, which would only
      average equal numbers). Only global rank 0 writes ``directory``'s files.

    Args:
        loss_fn, data: The mean-reduced loss ``loss_fn(network(x), y)`` (or a
            :class:`landprobe.BatchLoss`) and the batches to measure on: a fixed, small subset
            of the training or validation data keeps the callback cheap.
        network: ``None``: the LightningModule itself (its ``forward`` is the model); a name
            (dotted for nested attributes, ``"model.backbone"``): the attribute of the
            LightningModule that holds the network.
        every, hessian, trace_matvecs, eig_tol, subnets, capacity, capacity_options,
            interpolate_points, directory, resume, verbose, logger, sharding: As for
            :class:`~landprobe.LandscapeMonitor`.
        probe_options: Keywords of :class:`~landprobe.LandscapeProbe` (``bn``, ``precision``,
            ``progress``, ``dtype``, ...) for the probe built on the network.
        log_metrics: Log each record's scalars (``False``: keep them in :attr:`history` only).
        log_prefix: Prefix of the logged names (also tells two callbacks apart in a checkpoint).

    Raises:
        TypeError: If ``loss_fn`` is not callable, or ``network`` names an attribute that is not
            an ``nn.Module`` (at the start of ``fit``).
        ValueError: On a bad ``every``, ``interpolate_points``, ``trace_matvecs``, ``hessian``,
            ``network``, ``log_prefix`` or ``probe_options``; on a ``network`` attribute the module
            lacks (at the start of ``fit``); and as :class:`~landprobe.LandscapeMonitor` does
            for its other options (at the start of ``fit``, where the network is known).

    Example:
        >>> import torch
        >>> import lightning.pytorch as pl
        >>> from landprobe.integrations.lightning import LandscapeCallback
        >>> class Tiny(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(2, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return torch.nn.functional.mse_loss(self.net(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(32, 2)
        >>> y = x.sum(1, keepdim=True)
        >>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
        >>> callback = LandscapeCallback(torch.nn.MSELoss(), [(x, y)], network="net", trace_matvecs=4,
        ...                              capacity=["norms"])
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[callback], enable_progress_bar=False, logger=False,
        ...                      enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(Tiny(), loader)
        >>> callback.history.epochs.tolist()
        [1.0, 2.0]
        >>> history = callback.history
        >>> float(trainer.callback_metrics["landscape/barrier"]) == history.records[-1]["barrier"]
        True
        >>> bool(history.records[1]["loss"] < history.records[0]["loss"])
        True
    """

    def __init__(self, loss_fn: Callable, data: Iterable, *, network: str | None = None, every: int = 1,
                 hessian: bool | str = True, trace_matvecs: int = 30, eig_tol: float = 1e-4,
                 subnets: Mapping[Any, Any] | None = None, capacity: bool | str | Sequence[str] = True,
                 capacity_options: Mapping[str, Any] | None = None, interpolate_points: int = 11,
                 directory: str | Path | None = None, resume: bool = False, verbose: bool = False,
                 logger: logging.Logger | None = None, sharding: Sharding | None = None,
                 probe_options: Mapping[str, Any] | None = None, log_metrics: bool = True,
                 log_prefix: str = "landscape/"):
        super().__init__()
        self.loss_fn = check_loss_fn(loss_fn)
        if data is None or isinstance(data, (str, bytes)):
            raise TypeError(f"data={data!r}; expected the batches to measure on (a list of (x, y) pairs or a "
                            f"DataLoader)")
        if network is not None and (not isinstance(network, str) or not network.strip(".")):
            raise ValueError(f"network={network!r}; expected None (the LightningModule itself) or the name of "
                             f"its attribute that holds the network, e.g. 'net' or 'model.backbone'")
        if not isinstance(log_prefix, str):
            raise ValueError(f"log_prefix={log_prefix!r}; expected a string such as 'landscape/'")
        if hessian not in (True, False, "model"):
            raise ValueError(f"hessian={hessian!r}; expected True (model and subnets), 'model' (whole model "
                             f"only) or False")
        check_int("every", every, 1, "record when the epoch number is a multiple of it")
        check_int("interpolate_points", interpolate_points, 2, "points of the segment between records")
        check_int("trace_matvecs", trace_matvecs, 4, "Hessian-vector products per trace")
        if resume and directory is None:
            raise ValueError("resume=True needs directory= (where the monitor's monitor.json was written)")
        self.data, self.network, self.every = data, network, every
        self.probe_options = _probe_options(probe_options)
        self.sharding = sharding
        self.monitor_options = dict(
            every=every, hessian=hessian, trace_matvecs=trace_matvecs, eig_tol=eig_tol, subnets=subnets,
            capacity=capacity, capacity_options=capacity_options, interpolate_points=interpolate_points,
            directory=directory, verbose=verbose, logger=logger)
        self.resume = bool(resume)
        self.log_metrics, self.log_prefix = bool(log_metrics), log_prefix
        self._monitor: LandscapeMonitor | None = None
        self._pending: dict[str, Any] | None = None     # a state loaded before the monitor was built

    # ------------------------------------------------------------------ what the callback holds
    @property
    def state_key(self) -> str:
        return self._generate_state_key(network=self.network, log_prefix=self.log_prefix)

    @property
    def monitor(self) -> LandscapeMonitor | None:
        """The monitor (built at the start of ``fit``, on the network; ``None`` before)."""
        return self._monitor

    @property
    def history(self) -> MonitorHistory:
        """The records so far (a copy), as a :class:`~landprobe.MonitorHistory`."""
        if self._monitor is not None:
            return self._monitor.history
        return MonitorHistory(records=list((self._pending or {}).get("records", [])))

    def network_of(self, pl_module: nn.Module) -> nn.Module:
        """The network the callback measures: ``pl_module`` or its attribute ``network``.

        Raises:
            ValueError: If ``pl_module`` has no such attribute.
            TypeError: If the attribute is not an ``nn.Module``.

        Example:
            >>> import torch
            >>> from landprobe.integrations.lightning import LandscapeCallback
            >>> holder = torch.nn.Module()
            >>> holder.net = torch.nn.Linear(1, 1)
            >>> LandscapeCallback(torch.nn.MSELoss(), [], network="net").network_of(holder) is holder.net
            True
        """
        if self.network is None:
            return pl_module
        try:
            net = operator.attrgetter(self.network)(pl_module)
        except AttributeError as exc:
            raise ValueError(f"network={self.network!r}: {type(pl_module).__name__} has no attribute "
                             f"{self.network!r} ({exc}); pass the name of the attribute that holds the network, "
                             f"or network=None to measure the LightningModule itself") from exc
        if not isinstance(net, nn.Module):
            raise TypeError(f"network={self.network!r}: {type(pl_module).__name__}.{self.network} is a "
                            f"{type(net).__name__}, not an nn.Module; name the attribute that holds the network")
        return net

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the monitor on the network, now on its device; continue the history so far."""
        state = self._pending if self._pending is not None else (
            self._monitor.state_dict() if self._monitor is not None else None)
        first = self._monitor is None and self._pending is None
        probe = LandscapeProbe(self.network_of(pl_module), self.loss_fn, self.data, sharding=self.sharding,
                               **self.probe_options)
        self._monitor = LandscapeMonitor(probe, resume=self.resume and first, **self.monitor_options)
        if state is not None:
            self._monitor.load_state_dict(state)
        self._pending = None

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Record (every ``every``-th epoch) and log the record's scalars."""
        if self._monitor is None:                           # the hook called outside Trainer.fit
            self.on_fit_start(trainer, pl_module)
        record = self._monitor.epoch_end(int(trainer.current_epoch) + 1)
        if record is None or not self.log_metrics:
            return
        to_loggers = bool(getattr(trainer, "loggers", None))  # logger=False: callback_metrics only
        for name, value in scalars(record).items():
            if math.isfinite(value):
                pl_module.log(self.log_prefix + name, value, on_step=False, on_epoch=True, prog_bar=False,
                              logger=to_loggers, sync_dist=False)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The monitor's state (records and previous checkpoint), saved in the Lightning checkpoint.

        Example:
            >>> import torch
            >>> from landprobe.integrations.lightning import LandscapeCallback
            >>> LandscapeCallback(torch.nn.MSELoss(), []).state_dict()      # before fit: nothing yet
            {}
        """
        if self._monitor is not None:
            return self._monitor.state_dict()
        return dict(self._pending or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state_dict` (applied when the monitor is built).

        Example:
            >>> import torch
            >>> from landprobe.integrations.lightning import LandscapeCallback
            >>> callback = LandscapeCallback(torch.nn.MSELoss(), [])
            >>> callback.load_state_dict({"records": [{"epoch": 1, "loss": 0.5}], "previous_epoch": 1,
            ...                           "previous": None})
            >>> callback.history.epochs.tolist()
            [1.0]
        """
        if not state_dict:
            return
        if self._monitor is not None:
            self._monitor.load_state_dict(state_dict)
        else:
            self._pending = dict(state_dict)

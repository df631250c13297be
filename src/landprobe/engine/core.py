"""The engine: every pass over the user's data, in one class.

An :class:`Engine` holds a model, a loss and the data, and offers what the layers above need:
the empirical error at the model's current values (:meth:`Engine.evaluate`) or at θ
(:meth:`Engine.evaluate_at`), a sweep over many points (:meth:`Engine.sweep`), the loss and
its gradient (:meth:`Engine.loss_and_grad`), a functional loss for ``torch.func``
(:meth:`Engine.functional_loss`, :meth:`Engine.fit_loss`), the cached batches of a Hessian
(:meth:`Engine.cached_batches`) and plain forward passes for activation statistics
(:meth:`Engine.forwards`). Each pass runs inside the model guard (:meth:`Engine.guard`), so
the draws a shuffling loader makes are undone with everything else.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from landprobe.common.checks import check_loss_fn, check_module
from landprobe.common.distributed import rank_and_world
from landprobe.common.version import __version__
from landprobe.engine.contract import (Contract, FunctionalModel, batch_size, call_model, check_loss, cycle,
                                       looks_sum_reduced,
                                       is_batchnorm, no_batch_error)
from landprobe.engine.guard import ModelGuard, ParameterWatch, data_pass
from landprobe.engine.progress import progress
from landprobe.engine.sampler import PrecisionSampler
from landprobe.engine.shards import Part, Ranks, Sharding, owned_rounds, sliceable
from landprobe.engine.statistics import Evaluation
from landprobe.params import ParamVector, Selector, as_param_vector, check_finite, select

__all__ = ["Engine", "BN_MODES", "Writer", "HasEngine", "as_engine", "as_array"]

BN_MODES = ("eval", "train", "recompute")

#: A point of a sweep: writes its values, in place, into the target tensors (model order).
Writer = Callable[[list[Tensor]], None]


class Engine:
    """Runs the data through the model at given parameter values, in place, fast and safely.

    Args: as :class:`landprobe.LandscapeProbe` (which documents each), plus ``progress``.

    Example:
        >>> import torch
        >>> from landprobe.engine import Engine
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> data = [(torch.ones(2, 1), torch.zeros(2, 1)), (torch.ones(6, 1), torch.ones(6, 1))]
        >>> engine = Engine(model, torch.nn.MSELoss(), data)
        >>> engine.evaluate_at({"weight": torch.tensor([[0.0]])}).loss        # (2*0 + 6*1) / 8
        0.75
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, data: Iterable, *, bn: str = "eval",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 precision: float | None = None, min_batches: int = 4, batch_size: int | None = None,
                 seed: int = 0, control: Callable | None = None, control_at: Sequence[Any] | None = None,
                 progress: bool | None = None, sharding: Sharding | None = None, strict: bool = False):
        self.model = check_module(model)
        if not isinstance(strict, bool):
            raise TypeError(f"strict={strict!r}; expected True (endpoints must have the model's dtypes) or False")
        self.strict = strict
        if sharding is not None and not isinstance(sharding, Sharding):
            raise TypeError(f"sharding={sharding!r}; expected None or a landprobe.Sharding")
        self.sharding = sharding if sharding is not None else Sharding()
        self.loss_fn = check_loss_fn(loss_fn)
        if bn not in BN_MODES:
            raise ValueError(f"bn={bn!r}; expected one of {BN_MODES} (see LandscapeProbe's docstring)")
        if data is None or isinstance(data, (Tensor, str, bytes, int, float)):
            raise TypeError(f"data must be an iterable of batches (a DataLoader, or a list of (x, y) pairs); "
                            f"got {type(data).__name__}")
        if isinstance(data, Iterator):
            raise TypeError(f"data is a one-shot iterator ({type(data).__name__}), but a probe passes over the data "
                            f"once per point: pass a list of batches (list(data)) or a DataLoader")
        self.data = data
        self.bn = bn
        self.contract = Contract(loss_fn)
        self.device, self.dtype = self._placement(device, dtype)
        self._bns = [m for m in model.modules() if is_batchnorm(m)]
        self.precision = precision
        if control is not None and (precision is None or not callable(control)):
            raise ValueError(
                "control= needs precision= (it reduces the variance of precision-targeted evaluation) and a "
                f"callable control(x, y) -> per-sample covariates; got control={control!r}, precision={precision!r}"
            )
        self.control = control
        if batch_size is not None and precision is None:
            raise ValueError(f"batch_size={batch_size!r} applies only with precision= (random batches of a "
                             f"Dataset); without it every pass uses the data's own batches: pass a DataLoader "
                             f"(DataLoader(dataset, batch_size={batch_size!r})) or a list of batches instead")
        self.progress = progress
        self._watch: ParameterWatch | None = None
        self._names: list[str] | None = None
        self._tied: bool | None = None          # whether a tensor sits under two names (listed once per guard)
        self._reduction_checked = False
        #: Refuse NaN or inf in the model (at the start of every probe call) and in endpoints (set by
        #: LandscapeProbe; engines that train, as memorization's, report divergence themselves).
        self.finite_model = False
        self._sampler = (None if precision is None else
                         PrecisionSampler(data, precision, min_batches, batch_size, seed, control, self.contract))
        self._population: int | None = None
        self.control_at = self._references(control_at)
        #: The exact empirical errors at ``control_at`` (filled by the first precision-targeted pass).
        self.reference_losses: list[float] | None = None

    def _references(self, control_at: Sequence[Any] | None) -> list[ParamVector]:
        """``control_at`` as parameter vectors over :meth:`state_names`, checked now."""
        if control_at is None:
            return []
        if self.precision is None:
            raise ValueError("control_at= needs precision= (its losses are control variates of precision-targeted "
                             "evaluation); pass precision=0.01, say, or leave control_at out")
        if isinstance(control_at, (dict, nn.Module, ParamVector)) or not isinstance(control_at, Sequence) \
                or len(control_at) == 0:
            raise ValueError(f"control_at= takes a non-empty list of parameter sets (state_dicts, modules or "
                             f"ParamVectors), e.g. control_at=[theta_a, theta_b]; got {type(control_at).__name__}")
        if self.bn == "recompute":
            raise ValueError("control_at= with bn='recompute' would need the BatchNorm statistics re-estimated at "
                             "each reference; use bn='eval' (statistics move with the weights) or leave control_at out")
        names = self.state_names()
        return [self.as_point(theta, what=f"control_at[{i}]", names=names) for i, theta in enumerate(control_at)]

    def _placement(self, device: Any, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype | None]:
        model = self.model
        first = next(iter(model.parameters()), None)
        if first is not None and first.device.type == "meta":
            raise ValueError(f"{type(model).__name__} is on the meta device (no values to evaluate); materialise it "
                             f"first, e.g. model.to_empty(device='cpu') and load a state_dict")
        try:
            dev = torch.device(device) if device is not None else (first.device if first is not None
                                                                    else torch.device("cpu"))
        except (RuntimeError, TypeError):
            raise ValueError(f"device={device!r} is not a torch device; expected e.g. 'cpu', 'cuda', 'cuda:1' "
                             f"or torch.device(...)") from None
        if first is not None and first.device != dev:
            raise ValueError(
                f"the model lives on {first.device} but device={dev} was asked for; move the model first "
                f"(model.to({str(dev)!r})): a probe never moves the user's model."
            )
        if dtype is not None and dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype={dtype}; expected None (the model's own), torch.bfloat16/float16 (autocast) "
                             f"or float32/64")
        model_dtype = first.dtype if first is not None else torch.float32
        if dtype in (torch.float32, torch.float64) and dtype != model_dtype:
            raise ValueError(f"dtype={dtype} but the model's parameters are {model_dtype}; convert the model "
                             f"(model.to({dtype})) or pass dtype=None")
        from landprobe.common.hardware import warn_if_slow_autocast

        warn_if_slow_autocast(dev, dtype, "dtype=torch.bfloat16", stacklevel=5)
        return dev, dtype

    # ------------------------------------------------------------------ contexts
    @contextlib.contextmanager
    def guard(self, label: str = "a probe") -> Iterator[ModelGuard]:
        """The model guard of one probe call: everything restored on exit; one probe per model.
        The outermost guard's :class:`~landprobe.engine.guard.ParameterWatch` serves every pass
        inside it (listing the parameter slots once per call, not once per pass)."""
        with ModelGuard(self.model, owner=self, label=label) as g:
            outer = self._watch is None
            if outer and self.finite_model:
                check_finite({n: p.detach() for n, p in self.model.named_parameters()},
                             f"the model ({type(self.model).__name__})")
                self._watch = g.watch
                self._names = [n for n, _ in self.model.named_parameters()]
                self._tied = _has_tied_tensors(self.model)
            try:
                yield g
            finally:
                if outer:
                    self._watch = self._names = self._tied = None

    def unchanged_check(self) -> Callable[[], None]:
        """A check for long steps that do not write the model themselves (a fit's optimizer steps
        on its own tensors): calling it raises :class:`~landprobe.engine.ModelChangedError` if a
        parameter of the model was written or replaced since this call. Call inside :meth:`guard`
        and take a new one after anything that restores the model (a nested probe)."""
        watch = self._parameter_watch()
        versions = watch.versions()
        return lambda: watch.check(versions)

    def _parameter_watch(self) -> ParameterWatch:
        return self._watch if self._watch is not None else ParameterWatch.of(self.model)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """No progress bars from the engine's sweeps inside a search that shows its own."""
        flag, self.progress = self.progress, False
        try:
            yield
        finally:
            self.progress = flag

    def set_eval_modes(self) -> None:
        """Eval mode everywhere; BatchNorm in train mode under ``bn='train'``."""
        self.model.eval()
        if self.bn == "train":
            for m in self._bns:
                m.train()

    def set_fit_modes(self) -> None:
        """Modes of a fit (curves, AutoNEB, descents): dropout off, BatchNorm on batch statistics."""
        self.model.eval()
        for m in self._bns:
            m.train()

    # ------------------------------------------------------------------ names, points, settings
    def state_names(self, subnet: Selector | None = None) -> list[str]:
        """Parameters, plus the floating buffers that move with them under ``bn='eval'``."""
        model = self.model
        names = select(model, subnet)
        if self.bn == "eval":
            bufs = dict(model.named_buffers())
            names += [n for n in select(model, subnet, buffers=True, allow_empty=True)
                      if bufs[n] is not None and bufs[n].is_floating_point()]
        return names

    def parameter_names(self) -> list[str]:
        """The model's parameter names in order (listed once per probe call inside :meth:`guard`:
        fits ask for them at every step)."""
        if self._names is not None:
            return self._names
        return [n for n, _ in self.model.named_parameters()]

    def targets(self, names: Sequence[str]) -> list[Tensor]:
        """The model's own tensors (``.data``) for ``names``: where a point is written."""
        state = dict(self.model.named_parameters())
        state.update(dict(self.model.named_buffers()))
        return [state[n].data for n in names]

    def as_point(self, theta: Any, what: str = "theta", names: Sequence[str] | None = None) -> ParamVector:
        """``theta`` (a state_dict, module or ParamVector) over ``names`` (default :meth:`state_names`)."""
        return as_param_vector(theta, self.model, names=list(names) if names is not None else self.state_names(),
                               what=what, strict=self.strict, finite=self.finite_model)

    def settings(self, **kw: Any) -> dict[str, Any]:
        """What a result records besides its own settings: bn, device, dtype, model, version."""
        first = next(self.model.parameters(), None)
        kw.update(bn=self.bn, device=str(self.device), precision=self.precision,
                  dtype=str(self.dtype or (first.dtype if first is not None else torch.float32)),
                  model=type(self.model).__name__, landprobe=__version__)
        if self.control is not None:
            kw["control"] = getattr(self.control, "__qualname__", repr(self.control))
        if self.control_at:
            kw["control_at"] = len(self.control_at)
        if self.contract.whole:
            kw["loss"] = repr(self.loss_fn)
        return kw

    # ------------------------------------------------------------------ ranks
    def ranks(self) -> Ranks:
        """This call's layout over the ranks of ``torch.distributed`` (see :class:`Sharding`)."""
        return self.sharding.resolve(self.data)

    def all_sum(self, compute: Callable[[], Sequence[Tensor]], what: str = "a probe") -> list[Tensor]:
        """``compute()``'s tensors (this rank's share of a sum over the data) summed over the
        ranks that share the data; an exception in ``compute`` on any rank raises on every rank.
        ``compute`` must not issue collectives itself (see :meth:`Ranks.all_sum`). Without data
        sharding: ``compute()`` as it is."""
        return self.ranks().all_sum(compute, what)

    @property
    def writes_files(self) -> bool:
        """Whether this process writes a probe's files (checkpoints): rank 0, or the only process."""
        return rank_and_world()[0] == 0

    def write_files(self, write: Callable[[], None], what: str = "writing files") -> None:
        """``write()`` on the process that writes a probe's files (rank 0, or the only one);
        under ``torch.distributed`` the other ranks wait for it, and an exception in it is raised
        on every rank (so no rank reads a file before it is written, and a full disk stops all).

        Example:
            >>> import torch
            >>> from landprobe.engine import Engine
            >>> written = []
            >>> Engine(torch.nn.Linear(1, 1), torch.nn.MSELoss(), []).write_files(lambda: written.append(1))
            >>> written
            [1]
        """
        if rank_and_world()[1] == 1:
            write()
            return

        def one() -> None:
            if self.writes_files:
                write()
        self.ranks().gather(one, what)

    # ------------------------------------------------------------------ batches
    def batches(self, dtype: torch.dtype | None = None) -> Iterator[tuple[Any, int]]:
        """Prepared batches of one pass over this rank's data, with their sample counts."""
        for batch in self.data:
            yield self.contract.prepare(batch, self.device, dtype)

    def owned_batches(self, ranks: Ranks, dtype: torch.dtype | None = None) -> Iterator[tuple[int, Any, int]]:
        """This rank's prepared batches of one pass with their slots (their places among all
        the ranks' batches, see :meth:`Ranks.slot`) and sample counts; all of them alone."""
        for i, raw in enumerate(self.data):
            if ranks.owns(i):
                batch, n = self.contract.prepare(raw, self.device, dtype)
                yield ranks.slot(i), batch, n

    def batch_cycle(self) -> Iterator[Part]:
        """A fit's batches over and over, as this rank's :class:`Part` of each (the whole batch
        alone); ``ValueError`` if the data is empty."""
        ranks = self.ranks()
        if not ranks.sharded:
            return (Part(b, n, 1.0) for b, n in cycle(self.batches))
        if ranks.given:
            return self._given_cycle(ranks)
        split = not self._bns and not self.contract.whole   # BatchNorm: batch statistics need the whole batch
        return (ranks.part(b, n, step, split and sliceable(b, n))
                for step, (b, n) in enumerate(cycle(self.batches)))

    def _given_cycle(self, ranks: Ranks) -> Iterator[Part]:
        """Each rank's own batches over and over; a step's batch is the union of the ranks'
        batches of that step (an empty shard takes part with no samples)."""
        step_batches = cycle(self.batches) if self._local_batches(ranks) else None
        while True:
            batch, n = next(step_batches) if step_batches is not None else (None, 0)
            total = int(ranks.all_sum(lambda: [torch.tensor([float(n)], dtype=torch.float64)], "a fit step")[0])
            if total == 0:
                raise no_batch_error()
            yield Part(batch if n else None, n, n / total)

    def _local_batches(self, ranks: Ranks) -> bool:
        """Whether this rank's shard has a batch; ``ValueError`` on every rank if no rank has one."""
        mine = [False]

        def count() -> list[Tensor]:
            mine[0] = any(True for _ in self.data)
            return [torch.tensor([float(mine[0])], dtype=torch.float64)]
        if not int(ranks.all_sum(count, "reading the shards")[0]):
            raise no_batch_error()
        return mine[0]

    def cached_batches(self, dtype: torch.dtype | None = None) -> tuple[list[tuple[Any, float]], int]:
        """This rank's batches on the device (floating tensors in ``dtype``) with their weights
        n_b / N, and N (over all ranks). Read inside the model guard, so a shuffling loader's
        draws are undone. A rank without batches gets none (its share of every sum is zero)."""
        ranks = self.ranks()
        raw: list[tuple[Any, int]] = []

        def read() -> list[Tensor]:
            with self.guard("hessian (reading the data)"):
                raw.extend((b, n) for _, b, n in self.owned_batches(ranks, dtype))
            return [torch.tensor([float(sum(n for _, n in raw)), float(len(raw))], dtype=torch.float64)]
        total_t, count = ranks.all_sum(read, "reading the data")[0].tolist()
        if not count:
            raise no_batch_error()
        total = int(total_t)
        return [(b, n / float(total)) for b, n in raw], total

    def each_batch(self) -> Iterator[tuple[Any, int]]:
        """This rank's prepared batches of one pass for a computation of the caller's (e.g. a
        per-sample jvp), marked as a pass over the data. Call inside :meth:`guard`; compute
        losses with :meth:`functional_loss` or :meth:`per_sample_losses`. Alone: ``ValueError``
        if the data is empty; under data sharding, sum the results with :meth:`all_sum` (the
        loop inside its ``compute``) and check the total there."""
        ranks = self.ranks()
        empty = True
        with data_pass(self.model):
            for _, batch, n in self.owned_batches(ranks):
                empty = False
                yield batch, n
        if empty and not ranks.sharded:
            raise no_batch_error()

    def per_sample_losses(self, state: Mapping[str, Tensor], batch: Any) -> Tensor:
        """The loss of each sample of a prepared ``(inputs, targets)`` batch, shape ``(n,)``, with
        the model's tensors replaced by ``state``: one forward, the loss applied to one-sample
        slices of the output and the targets. Pair form only."""
        from torch.utils._pytree import tree_map

        x, y = self.contract.inputs(batch), batch[1]
        out = call_model(FunctionalModel(self.model, state), x)
        n = batch_size(x)

        def one(t: Any, i: int) -> Any:
            return t[i:i + 1] if isinstance(t, Tensor) else t
        return torch.stack([check_loss(self.loss_fn(tree_map(lambda t: one(t, i), out),
                                                     tree_map(lambda t: one(t, i), y))) for i in range(n)])

    def forwards(self) -> Iterator[int]:
        """Run the model's forward on this rank's batches (no gradients), yielding each batch's
        sample count after its forward: for statistics that hooks collect. Call inside
        :meth:`guard`; under data sharding sum the statistics with :meth:`all_sum` (see
        :meth:`each_batch`)."""
        ranks = self.ranks()
        empty = True
        with torch.no_grad(), self.autocast(), data_pass(self.model):
            for _, batch, n in self.owned_batches(ranks):
                self.contract.forward(self.model, batch)
                empty = False
                yield n
        if empty and not ranks.sharded:
            raise no_batch_error()

    # ------------------------------------------------------------------ evaluation
    def recompute_bn(self) -> None:
        """Reset BatchNorm statistics and re-estimate them with a cumulative average over the
        data's batches (under data sharding: over every rank's batches)."""
        if not self._bns:
            return
        for m in self._bns:
            if m.track_running_stats:
                m.reset_running_stats()
                m.momentum = None
            m.train()
        ranks = self.ranks()
        tracked = [m for m in self._bns if m.track_running_stats]

        def local() -> list[Tensor]:
            count = 0
            with torch.no_grad(), self.autocast(), data_pass(self.model):
                for _, batch, _ in self.owned_batches(ranks):
                    self.contract.forward(self.model, batch)
                    count += 1
            stats = [t * count for m in tracked for t in (m.running_mean, m.running_var) if t is not None]
            return stats + [torch.tensor([float(count)], dtype=torch.float64)]
        if not ranks.sharded:
            local()
        else:
            *stats, count = ranks.all_sum(local, "recomputing BatchNorm statistics")
            k = int(count)
            it = iter(stats)
            with torch.no_grad():
                for m in tracked:
                    for t in (m.running_mean, m.running_var):
                        if t is not None:
                            t.copy_(next(it) / max(k, 1))
                    m.num_batches_tracked.fill_(k)
        for m in self._bns:
            m.eval()

    def evaluate(self, desc: str | None = None) -> Evaluation:
        """One pass over the data at the model's current parameters (modes already set);
        ``desc``: show a progress bar over the batches (single evaluations; a sweep shows one
        over its points instead). Under data sharding every rank returns the whole data's
        evaluation.

        Raises :class:`~landprobe.engine.ModelChangedError` if the parameters change during the
        pass (the model is trained while probed).
        """
        if self.bn == "recompute":
            self.recompute_bn()
            self.set_eval_modes()
        if self._sampler is not None:
            self._control_means()                 # before the watch: the references are written in place
        watch = self._parameter_watch()
        versions = watch.versions()
        if self._sampler is not None:
            ev = self._evaluate_to_precision()
        else:
            ev = self._evaluate_all(desc)
        watch.check(versions)
        return ev

    def _check_reduction(self, batch: Any, outputs: list, loss: Tensor) -> None:
        """Warn once if ``loss_fn`` sums over samples: every probe assumes a mean-reduced loss.
        Two extra calls of a plain-function loss on the halves of the first batch (none for a
        torch loss module, which states its reduction)."""
        self._reduction_checked = True
        if self.contract.whole or not outputs:
            return
        if looks_sum_reduced(self.loss_fn, outputs[0], batch[1], float(loss)):
            warnings.warn(f"loss_fn {self.loss_fn!r} looks sum-reduced (on one batch the loss equals the sum of its "
                          f"halves' losses, not their mean); probes weight each batch by its sample count and "
                          f"assume a mean, so losses would scale with the batch size. Use a mean-reduced loss "
                          f"(e.g. reduction='mean')", UserWarning, stacklevel=2)

    def _evaluate_all(self, desc: str | None = None) -> Evaluation:
        ranks = self.ranks()
        losses: list[Tensor] = []
        sizes: list[int] = []
        slots: list[int] = []

        def local() -> Tensor:
            batches: Iterable[tuple[int, Any, int]] = self.owned_batches(ranks)
            if desc is not None:
                total = len(self.data) if hasattr(self.data, "__len__") else None  # type: ignore[arg-type]
                if total is not None and not ranks.given:
                    total = len(range(ranks.data_rank, total, ranks.data_world))
                batches = progress(batches, desc, total=total, enabled=self.progress, unit="batch")
            with torch.inference_mode(), self.autocast(), data_pass(self.model):
                for slot, batch, n in batches:
                    if self._reduction_checked:
                        losses.append(self.contract.loss(self.model, batch))
                    else:
                        outputs: list = []
                        losses.append(self.contract.loss(self.model, batch, outputs))
                        self._check_reduction(batch, outputs, losses[-1])
                    sizes.append(n)
                    slots.append(slot)
            if losses and any(l.dtype != losses[0].dtype for l in losses):
                losses[:] = [l.double() for l in losses]
            return torch.stack(losses).double().cpu() if losses else torch.zeros(0, dtype=torch.float64)
        if not ranks.sharded:
            vals = local()                                # one device sync per point
            if not sizes:
                raise no_batch_error()
            return Evaluation.from_batches(vals.numpy(), sizes)

        def table() -> Tensor:
            vals = local()
            rows = torch.zeros(max(slots) + 1 if slots else 0, 3, dtype=torch.float64)
            idx = torch.tensor(slots, dtype=torch.long)
            rows[idx, 0], rows[idx, 1], rows[idx, 2] = vals, torch.tensor(sizes, dtype=torch.float64), 1.0
            return rows
        full = ranks.all_sum_rows(table, "an evaluation")
        present = full[:, 2] > 0
        if not bool(present.any()):
            raise no_batch_error()
        return Evaluation.from_batches(full[present, 0].numpy(), full[present, 1].long().tolist())

    def _evaluate_to_precision(self) -> Evaluation:
        """Seeded random batches until 2·stderr <= precision·|loss| (or the data runs out).
        Under data sharding the ranks take the common sequence's batches in turns (given
        shards: each its own sequence) and the stopping rule reads them in order."""
        sampler = self._sampler
        assert sampler is not None
        ranks = self.ranks()
        means = self._control_means()
        population = self._population_size(ranks)
        losses: list[float] = []
        sizes: list[int] = []
        with torch.inference_mode(), self.autocast(), data_pass(self.model):
            for rnd in self._precision_rounds(ranks):
                def table(rnd: list[tuple[int, Any]] = rnd) -> Tensor:
                    rows = torch.zeros(len(rnd) if not ranks.given else ranks.data_world, 3, dtype=torch.float64)
                    for row, raw in rnd:
                        if raw is not None:
                            batch, n = self.contract.prepare(raw, self.device)
                            rows[row] = torch.tensor([float(self.contract.loss(self.model, batch).double()), n, 1.0],
                                                     dtype=torch.float64)
                    return rows
                rows = ranks.all_sum_rows(table, "a precision-targeted evaluation")
                if ranks.given and not bool((rows[:, 2] > 0).any()):
                    break
                for loss, n, present in rows.tolist():
                    if not present:
                        continue
                    losses.append(loss)
                    sizes.append(int(n))
                    if len(losses) >= sampler.min_batches:
                        ev = self._estimate(losses, sizes, means, population)
                        if 2.0 * ev.stderr <= sampler.precision * abs(ev.loss):
                            return ev
        if not losses:
            raise no_batch_error()
        return self._estimate(losses, sizes, means, population)

    def _control_means(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The covariates of ``control`` and the losses at ``control_at``, per batch of the
        sampling order, and their exact means (computed once per probe); None without either."""
        sampler = self._sampler
        assert sampler is not None
        if sampler.control is None and not self.control_at:
            return None
        ranks = self.ranks()
        if ranks.given and ranks.sharded:
            raise ValueError("control= and control_at= need the covariates' mean over all the data, which "
                             "split='given' shards do not hold; pass every rank the same data (split='engine')")
        return sampler.control_means(self._reference_passes if self.control_at else None)

    def _reference_passes(self) -> tuple[np.ndarray, np.ndarray]:
        """One pass over all the sampler's batches at each of ``control_at``: per-batch losses
        ``(batches, references)`` and batch sizes. The point in the model is put back after."""
        sampler = self._sampler
        assert sampler is not None
        names = self.state_names()
        targets = self.targets(names)
        held = [t.clone() for t in targets]
        columns: list[list[float]] = []
        sizes: list[int] = []
        total = sampler.batch_count
        try:
            for i, ref in enumerate(self.control_at):
                with torch.no_grad():
                    torch._foreach_copy_(targets, ref.tensors)
                column: list[float] = []
                desc = f"control_at[{i}] ({i + 1} of {len(self.control_at)}): exact loss"
                with torch.inference_mode(), self.autocast(), data_pass(self.model):
                    for raw in progress(sampler.batches(), desc, total=total, enabled=self.progress, unit="batch"):
                        batch, n = self.contract.prepare(raw, self.device)
                        column.append(float(self.contract.loss(self.model, batch).double()))
                        if i == 0:
                            sizes.append(n)
                if not all(math.isfinite(v) for v in column):
                    raise ValueError(f"the loss at control_at[{i}] is not finite on some batch; a reference must "
                                     f"have a finite loss everywhere (its losses are control variates)")
                columns.append(column)
        finally:
            with torch.no_grad():
                torch._foreach_copy_(targets, held)
        losses = np.asarray(columns, dtype=np.float64).T
        w = np.asarray(sizes, dtype=np.float64)
        self.reference_losses = [float(v) for v in (w @ losses) / w.sum()]
        return losses, np.asarray(sizes, dtype=np.int64)

    def _precision_rounds(self, ranks: Ranks) -> Iterator[list[tuple[int, Any]]]:
        """Rounds of (row, raw batch) this rank evaluates: one batch of the common sequence per
        data rank (alone: one batch per round); given shards: this rank's next batch, then
        empty rounds until every rank's sequence has ended."""
        sampler = self._sampler
        assert sampler is not None
        w, r = ranks.data_world, ranks.data_rank
        if not ranks.given or not ranks.sharded:
            seq = sampler.batches(keep=lambda j: j % w == r)
            for rnd in owned_rounds(seq, w):
                yield [(k, raw) for k, raw in enumerate(rnd)]
            return
        for raw in sampler.batches():
            yield [(r, raw)]
        while True:
            yield []

    def _population_size(self, ranks: Ranks) -> int:
        sampler = self._sampler
        assert sampler is not None
        if not (ranks.given and ranks.sharded):
            return sampler.population
        if self._population is None:
            self._population = int(ranks.all_sum(
                lambda: [torch.tensor([float(sampler.population)], dtype=torch.float64)], "counting samples")[0])
        return self._population

    def _estimate(self, losses: list[float], sizes: list[int], means: Any, population: int) -> Evaluation:
        if means is None:
            return Evaluation.from_batches(losses, sizes, population=population)
        covariates, population_mean = means
        return Evaluation.with_control(losses, sizes, covariates[: len(losses)], population_mean,
                                       population=population)

    def evaluate_at(self, theta: Any = None, label: str = "LandscapeProbe.evaluate") -> Evaluation:
        """The empirical error at ``theta`` (``None``: the model as it is); the model restored."""
        with self.guard(label):
            if theta is not None:
                names = self.state_names()
                vec = self.as_point(theta, names=names)
                with torch.no_grad():
                    torch._foreach_copy_(self.targets(names), vec.tensors)
            self.set_eval_modes()
            return self.evaluate(desc=label)

    def sweep(self, names: Sequence[str], points: Sequence[Writer], desc: str) -> list[Evaluation]:
        """Evaluate points given as in-place writers of the target tensors of ``names``.

        Under ``torch.distributed`` the points are split across the teams of :class:`Sharding`
        (point i on team i mod teams; every rank its own team without data sharding) and every
        rank returns all of them.
        """
        ranks = self.ranks()
        mine = ranks.points(len(points))

        def run() -> dict[int, Evaluation]:
            results: dict[int, Evaluation] = {}
            with self.guard(desc):
                self.set_eval_modes()
                targets = self.targets(names)
                with torch.no_grad():
                    watch = self._parameter_watch()
                    left: list[int] | None = None
                    for i in progress(mine, desc, enabled=self.progress, unit="point"):
                        if left is not None:             # nothing but the sweep writes between points
                            watch.check(left)
                        points[i](targets)
                        results[i] = self.evaluate()
                        left = watch.versions()
            return results
        results = ranks.merge(run, desc)
        return [results[i] for i in range(len(points))]

    def sweep_batched(self, names: Sequence[str], points: Sequence[Writer], chunk: int,
                      desc: str) -> list[Evaluation]:
        """Evaluate ``chunk`` points per model call: ``functional_call`` under ``vmap``. Each point
        is a writer (as in :meth:`sweep`) that fills one slice of stacked tensors allocated once
        per call: ``chunk`` copies of the ``names`` tensors, besides ``chunk`` times the
        activations of one batch's forward."""
        if self.bn != "eval":
            raise ValueError(f"batch_points > 1 needs bn='eval' (got bn={self.bn!r}); use batch_points=1")
        if self.precision is not None:
            raise ValueError("batch_points > 1 evaluates all the data per point; it cannot be combined with "
                             "precision= (use batch_points=1)")
        if self.contract.whole:
            raise ValueError("batch_points > 1 needs (inputs, targets) pairs; use batch_points=1 with a BatchLoss")
        ranks = self.ranks()
        chunks = [list(range(i, min(i + chunk, len(points)))) for i in range(0, len(points), chunk)]
        mine = [chunks[c] for c in ranks.points(len(chunks))]

        def run() -> dict[int, Evaluation]:
            results: dict[int, Evaluation] = {}
            with self.guard(desc):
                self.set_eval_modes()
                stacks = [torch.empty((chunk, *t.shape), dtype=t.dtype, device=t.device)
                          for t in self.targets(names)]
                for idx in progress(mine, desc, enabled=self.progress, unit="chunk"):
                    for j, i in enumerate(idx):
                        points[i]([s[j] for s in stacks])
                    evals = self._chunk(ranks, names, [s[:len(idx)] for s in stacks])
                    results.update(zip(idx, evals))
            return results
        results = ranks.merge(run, desc)
        return [results[i] for i in range(len(points))]

    def _chunk(self, ranks: Ranks, names: Sequence[str], stacked_values: Sequence[Tensor]) -> list[Evaluation]:
        """One chunk of points (``stacked_values``: per name, the points along dim 0) in one
        vmapped call per batch: each point's evaluation."""
        from torch.func import vmap
        from torch.utils._pytree import tree_map

        model = self.model

        def one(params: dict[str, Tensor], x: Any) -> Any:
            return self.contract.forward(FunctionalModel(model, params), (x, None))

        batched = vmap(one, in_dims=(0, None))
        stacked = dict(zip(names, stacked_values))
        count = stacked_values[0].shape[0] if stacked_values else 0
        per_point: list[list[Tensor]] = [[] for _ in range(count)]
        sizes: list[int] = []
        slots: list[int] = []

        def local() -> Tensor:
            with torch.no_grad(), self.autocast(), data_pass(model):
                for slot, (x, y), n in self.owned_batches(ranks):
                    try:
                        outs = batched(stacked, x)
                    except RuntimeError as exc:
                        raise RuntimeError(f"this model cannot be evaluated under torch.func.vmap ({exc}); "
                                           f"use batch_points=1") from exc
                    for j in range(count):
                        out_j = tree_map(lambda t, j=j: t[j], outs)
                        per_point[j].append(check_loss(self.loss_fn(out_j, y)).detach().double())
                    sizes.append(n)
                    slots.append(slot)
            if not sizes:
                return torch.zeros(0, count + 2, dtype=torch.float64)
            return torch.stack([torch.stack(p) for p in per_point], 1).cpu()
        if not ranks.sharded:
            vals = local()
            if not sizes:
                raise no_batch_error()
            return [Evaluation.from_batches(vals[:, j].numpy(), sizes) for j in range(count)]

        def table() -> Tensor:
            vals = local()
            rows = torch.zeros(max(slots) + 1 if slots else 0, count + 2, dtype=torch.float64)
            if slots:
                idx = torch.tensor(slots, dtype=torch.long)
                rows[idx, : count] = vals
                rows[idx, -2], rows[idx, -1] = torch.tensor(sizes, dtype=torch.float64), 1.0
            return rows
        full = ranks.all_sum_rows(table, "an evaluation")
        present = full[:, -1] > 0
        if not bool(present.any()):
            raise no_batch_error()
        counts = full[present, -2].long().tolist()
        return [Evaluation.from_batches(full[present, j].numpy(), counts) for j in range(count)]

    def train_step(self, part: Part, optimizer: torch.optim.Optimizer, loss_fn: Callable | None = None) -> float:
        """One step of the user's training on this rank's part of a batch (from
        :meth:`batch_cycle`): the model in train mode, the probe's autocast, ``loss_fn`` (default
        the engine's; same form) backpropagated, the gradients summed over the ranks that share
        the data, and ``optimizer.step()``. Returns the batch's loss. Call inside :meth:`guard`.

        Under data sharding a parameter no rank's backward reached keeps ``.grad = None`` (the
        optimizer skips it, as alone), and when the step's whole batch ran on one rank (a
        BatchNorm model with the engine's split) that rank's new running statistics go to all."""
        contract = self.contract if loss_fn is None else Contract(loss_fn)
        ranks = self.ranks()
        params = [p for g in optimizer.param_groups for p in g["params"]]

        def backward() -> float:
            self.model.train()
            optimizer.zero_grad(set_to_none=True)
            if part.batch is None:
                return 0.0
            with self.autocast(), data_pass(self.model):
                loss = contract.loss(self.model, part.batch)
            if part.weight != 1.0:
                loss = loss * part.weight
            loss.backward()
            return float(loss.detach().double())
        if not ranks.sharded:
            value = backward()
        else:
            stats = [] if ranks.given else [b for m in self._bns for b in m.buffers(recurse=False)]
            value = self._sum_step(ranks, params, backward, stats, owner=part.batch is not None)
        optimizer.step()
        return value

    def _sum_step(self, ranks: Ranks, leaves: Sequence[Tensor], backward: Callable[[], float],
                  stats: Sequence[Tensor] = (), owner: bool = False) -> float:
        """Run this rank's ``backward()``, then sum the step's loss and the gradients of ``leaves``
        over the data ranks (``None`` where no rank has one) and hand the ranks' sum of ``stats``
        to all (buffers only the rank that ran the whole batch moved; the others give zeros)."""
        def local() -> list[Tensor]:
            value = backward()
            has = torch.tensor([float(p.grad is not None) for p in leaves], dtype=torch.float64)
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in leaves]
            moved = [b if owner else torch.zeros_like(b) for b in stats]
            return [torch.tensor([value], dtype=torch.float64), has, *grads, *moved]
        value, has, *rest = ranks.all_sum(local, "a fit step")
        grads, moved = rest[: len(leaves)], rest[len(leaves):]
        for p, g, h in zip(leaves, grads, has.tolist()):
            p.grad = g if h else None
        if stats:
            with torch.no_grad():
                torch._foreach_copy_(list(stats), moved)
        return float(value)

    # ------------------------------------------------------------------ gradients and functional losses
    def loss_and_grad(self, params: Sequence[Tensor], want_grad: bool = True) -> tuple[float, list[Tensor] | None]:
        """Sample-weighted mean loss over the data at the model's current values, and its gradient
        w.r.t. ``params`` (accumulated as Σ n_b ∇L_b, divided by N at the end, over every rank's
        batches under data sharding; ``.grad`` fields are not touched). Call inside
        :meth:`guard` with the modes set."""
        ranks = self.ranks()
        sizes: list[int] = []
        losses: list[Tensor] = []
        grads: list[Tensor] | None = None

        def local() -> list[Tensor]:
            nonlocal grads
            with data_pass(self.model):
                for _, batch, n in self.owned_batches(ranks):
                    with torch.set_grad_enabled(want_grad):
                        loss = self.contract.loss(self.model, batch)
                        if want_grad:
                            g = torch.autograd.grad(loss * n, list(params), allow_unused=True)
                            g = tuple(torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params))
                            grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
                    losses.append(loss.detach().double().reshape(()))
                    sizes.append(n)
            if not ranks.sharded:
                return []
            dev = params[0].device if params else self.device
            w = torch.tensor(sizes, dtype=torch.float64, device=dev)
            sums = torch.stack([(torch.stack(losses).to(dev) * w).sum(), w.sum()]) if losses else \
                torch.zeros(2, dtype=torch.float64, device=dev)
            local_grads = grads if grads is not None else [torch.zeros_like(p) for p in params]
            return [sums] + (list(local_grads) if want_grad else [])
        if ranks.sharded:
            sums, *summed = ranks.all_sum(local, "a gradient")
            if not float(sums[1]):
                raise no_batch_error()
            return float(sums[0] / sums[1]), ([g / float(sums[1]) for g in summed] if want_grad else None)
        local()
        if not losses:
            raise no_batch_error()
        total = float(sum(sizes))
        w = torch.tensor(sizes, dtype=torch.float64, device=losses[0].device)
        if grads is not None:
            grads = [g / total for g in grads]
        return float((torch.stack(losses) * w).sum() / w.sum()), grads

    def functional_loss(self, state: Mapping[str, Tensor], batch: Any, *, autocast: bool = False) -> Tensor:
        """The loss of a prepared batch with the model's tensors replaced by ``state`` (any subset
        of parameters and buffers; ``torch.func.functional_call``): differentiable in ``state``."""
        tied = self._tied if self._tied is not None else _has_tied_tensors(self.model)
        fmodel = FunctionalModel(self.model, state, tie_weights=tied)
        with (self.autocast() if autocast else contextlib.nullcontext()), data_pass(self.model):
            return self.contract.loss(fmodel, batch)

    def fit_loss(self, params: Sequence[Tensor], part: Part) -> Tensor:
        """This rank's share of a fit step's loss (the loss of its part times the part's weight;
        the shares sum to the batch's loss over the ranks): parameters (model order) replaced,
        the probe's autocast, a low-precision result widened to float32. Zero (without a graph)
        when this rank has no samples of the batch. Sum the gradients with :meth:`reduce_step`."""
        if part.batch is None:
            return torch.zeros((), device=self.device)
        loss = self.functional_loss(dict(zip(self.parameter_names(), params)), part.batch, autocast=True)
        loss = loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss
        return loss if part.weight == 1.0 else loss * part.weight

    def fit_losses(self, stacked: Sequence[Tensor], part: Part) -> Tensor | None:
        """This rank's shares of a fit step's loss at several points in one model call: ``stacked``
        holds, per parameter (model order), the points along dim 0; ``functional_call`` under
        ``torch.func.vmap``, differentiable in ``stacked``; shape ``(points,)``. ``None`` when the
        points cannot share a call: BatchNorm on batch statistics, no samples of the batch on this
        rank, or a model or loss that vmap cannot run (then call :meth:`fit_loss` per point).

        Example:
            >>> import torch
            >>> from landprobe.engine import Engine, Part
            >>> engine = Engine(torch.nn.Linear(1, 1, bias=False), torch.nn.MSELoss(), [])
            >>> part = Part((torch.ones(2, 1), torch.zeros(2, 1)), 2, 1.0)
            >>> engine.fit_losses([torch.tensor([[[1.0]], [[3.0]]])], part).tolist()
            [1.0, 9.0]
        """
        if self._bns or part.batch is None:
            return None
        from torch.func import vmap

        try:
            with warnings.catch_warnings():      # an op without a batching rule runs point by point: still right
                warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
                return vmap(lambda *params: self.fit_loss(params, part))(*stacked)
        except RuntimeError as exc:
            if type(exc) not in (RuntimeError, NotImplementedError):   # torch's; not the probe's own errors
                raise
            return None

    def fit_value(self, params: Sequence[Tensor], part: Part) -> float:
        """A fit step's loss (no gradient), summed over the ranks that share the data."""
        def local() -> list[Tensor]:
            with torch.no_grad():
                return [self.fit_loss(params, part).detach().double().reshape(1)]
        return float(self.all_sum(local, "a fit step")[0])

    def fit_loss_and_grad(self, params: Sequence[Tensor], part: Part) -> tuple[float, list[Tensor]]:
        """A fit step's loss and its gradient with respect to ``params`` (zeros where unused),
        summed over the ranks that share the data."""
        def local() -> list[Tensor]:
            if part.batch is None:
                return [torch.zeros(1, dtype=torch.float64)] + [torch.zeros_like(p) for p in params]
            leaves = [p.detach().requires_grad_(True) for p in params]
            with torch.enable_grad():
                loss = self.fit_loss(leaves, part)
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            return [loss.detach().double().reshape(1)] + [torch.zeros_like(p) if g is None else g
                                                          for p, g in zip(leaves, grads)]
        value, *grads = self.all_sum(local, "a fit step")
        return float(value), grads

    def reduce_step(self, leaves: Sequence[Tensor], compute: Callable[[], float]) -> float:
        """Run a fit step's backward passes (``compute()``: accumulates ``.grad`` of ``leaves``
        from :meth:`fit_loss` shares and returns this rank's share of the step's loss), then sum
        the gradients and the loss over the ranks that share the data; a leaf no rank's backward
        reached keeps ``.grad = None``, as alone. Returns the step's loss."""
        ranks = self.ranks()
        if not ranks.sharded:
            return compute()
        return self._sum_step(ranks, leaves, compute)


def _has_tied_tensors(model: nn.Module) -> bool:
    """Whether a parameter or buffer of ``model`` is reachable under two names (tied weights)."""
    named = [t for _, t in model.named_parameters(remove_duplicate=False)]
    named += [t for _, t in model.named_buffers(remove_duplicate=False)]
    return len({id(t) for t in named}) != len(named)


@runtime_checkable
class HasEngine(Protocol):
    """Anything that holds an engine, such as :class:`landprobe.LandscapeProbe`.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.engine import HasEngine
        >>> isinstance(lp.LandscapeProbe(torch.nn.Linear(1, 1), torch.nn.MSELoss(), []), HasEngine)
        True
    """

    engine: Engine


def as_engine(obj: Engine | HasEngine) -> Engine:
    """The engine itself, or the one a probe holds (layer functions accept either).

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.engine import as_engine
        >>> probe = lp.LandscapeProbe(torch.nn.Linear(1, 1), torch.nn.MSELoss(), [])
        >>> as_engine(probe) is probe.engine
        True
    """
    if isinstance(obj, Engine):
        return obj
    engine = getattr(obj, "engine", None)
    if isinstance(engine, Engine):
        return engine
    raise TypeError(f"expected a LandscapeProbe or an Engine, got {type(obj).__name__}; build one with "
                    f"lp.LandscapeProbe(model, loss_fn, data)")


def as_array(evals: Sequence[Evaluation]) -> tuple[np.ndarray, np.ndarray]:
    """Losses and standard errors of a sweep as float64 arrays.

    Example:
        >>> from landprobe.engine import Evaluation, as_array
        >>> as_array([Evaluation.from_batches([1.0], [4]), Evaluation.from_batches([2.0, 4.0], [1, 1])])[0].tolist()
        [1.0, 3.0]
    """
    return np.array([e.loss for e in evals]), np.array([e.stderr for e in evals])

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from landprobe.common.checks import check_loss_fn, check_module
from landprobe.common.distributed import merge_across_ranks, rank_and_world
from landprobe.common.version import __version__
from landprobe.engine.contract import (Contract, FunctionalModel, batch_size, call_model, check_loss, cycle,
                                       is_batchnorm, no_batch_error)
from landprobe.engine.guard import ModelGuard, ParameterWatch, data_pass
from landprobe.engine.progress import progress
from landprobe.engine.sampler import PrecisionSampler
from landprobe.engine.statistics import Evaluation
from landprobe.params import ParamVector, Selector, as_param_vector, select

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
                 seed: int = 0, control: Callable | None = None, progress: bool | None = None):
        self.model = check_module(model)
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
        self.progress = progress
        self._watch: ParameterWatch | None = None
        self._names: list[str] | None = None
        self._sampler = (None if precision is None else
                         PrecisionSampler(data, precision, min_batches, batch_size, seed, control, self.contract))

    def _placement(self, device: Any, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype | None]:
        model = self.model
        first = next(iter(model.parameters()), None)
        if first is not None and first.device.type == "meta":
            raise ValueError(f"{type(model).__name__} is on the meta device (no values to evaluate); materialise it "
                             f"first, e.g. model.to_empty(device='cpu') and load a state_dict")
        dev = torch.device(device) if device is not None else (first.device if first is not None
                                                                else torch.device("cpu"))
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
            if outer:
                self._watch = g.watch
                self._names = [n for n, _ in self.model.named_parameters()]
            try:
                yield g
            finally:
                if outer:
                    self._watch = self._names = None

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
                               what=what)

    def settings(self, **kw: Any) -> dict[str, Any]:
        """What a result records besides its own settings: bn, device, dtype, model, version."""
        first = next(self.model.parameters(), None)
        kw.update(bn=self.bn, device=str(self.device), precision=self.precision,
                  dtype=str(self.dtype or (first.dtype if first is not None else torch.float32)),
                  model=type(self.model).__name__, landprobe=__version__)
        if self.control is not None:
            kw["control"] = getattr(self.control, "__qualname__", repr(self.control))
        if self.contract.whole:
            kw["loss"] = repr(self.loss_fn)
        return kw

    # ------------------------------------------------------------------ batches
    def batches(self, dtype: torch.dtype | None = None) -> Iterator[tuple[Any, int]]:
        """Prepared batches of one pass over the data, with their sample counts."""
        for batch in self.data:
            yield self.contract.prepare(batch, self.device, dtype)

    def batch_cycle(self) -> Iterator[tuple[Any, int]]:
        """Prepared batches over and over (fits); ``ValueError`` if the data is empty."""
        return cycle(self.batches)

    def cached_batches(self, dtype: torch.dtype | None = None) -> tuple[list[tuple[Any, float]], int]:
        """Every batch on the device (floating tensors in ``dtype``) with its weight n_b / N,
        and N. Read inside the model guard, so a shuffling loader's draws are undone."""
        with self.guard("hessian (reading the data)"):
            raw = list(self.batches(dtype))
        if not raw:
            raise no_batch_error()
        total = sum(n for _, n in raw)
        return [(b, n / float(total)) for b, n in raw], total

    def each_batch(self) -> Iterator[tuple[Any, int]]:
        """Prepared batches of one pass for a computation of the caller's (e.g. a per-sample
        jvp), marked as a pass over the data; ``ValueError`` if the data is empty. Call inside
        :meth:`guard`; compute losses with :meth:`functional_loss` or :meth:`per_sample_losses`."""
        empty = True
        with data_pass(self.model):
            for batch, n in self.batches():
                empty = False
                yield batch, n
        if empty:
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
        """Run the model's forward on every batch (no gradients), yielding each batch's sample
        count after its forward: for statistics that hooks collect. Call inside :meth:`guard`."""
        empty = True
        with torch.no_grad(), self.autocast(), data_pass(self.model):
            for batch, n in self.batches():
                self.contract.forward(self.model, batch)
                empty = False
                yield n
        if empty:
            raise no_batch_error()

    # ------------------------------------------------------------------ evaluation
    def recompute_bn(self) -> None:
        """Reset BatchNorm statistics and re-estimate them with a cumulative average over the data."""
        if not self._bns:
            return
        for m in self._bns:
            if m.track_running_stats:
                m.reset_running_stats()
                m.momentum = None
            m.train()
        with torch.no_grad(), self.autocast(), data_pass(self.model):
            for batch, _ in self.batches():
                self.contract.forward(self.model, batch)
        for m in self._bns:
            m.eval()

    def evaluate(self, desc: str | None = None) -> Evaluation:
        """One pass over the data at the model's current parameters (modes already set);
        ``desc``: show a progress bar over the batches (single evaluations; a sweep shows one
        over its points instead).

        Raises :class:`~landprobe.engine.ModelChangedError` if the parameters change during the
        pass (the model is trained while probed).
        """
        if self.bn == "recompute":
            self.recompute_bn()
            self.set_eval_modes()
        watch = self._parameter_watch()
        versions = watch.versions()
        if self._sampler is not None:
            ev = self._evaluate_to_precision()
        else:
            ev = self._evaluate_all(desc)
        watch.check(versions)
        return ev

    def _evaluate_all(self, desc: str | None = None) -> Evaluation:
        losses: list[Tensor] = []
        sizes: list[int] = []
        batches: Iterable[tuple[Any, int]] = self.batches()
        if desc is not None:
            total = len(self.data) if hasattr(self.data, "__len__") else None  # type: ignore[arg-type]
            batches = progress(batches, desc, total=total, enabled=self.progress, unit="batch")
        with torch.inference_mode(), self.autocast(), data_pass(self.model):
            for batch, n in batches:
                losses.append(self.contract.loss(self.model, batch))
                sizes.append(n)
        if not losses:
            raise no_batch_error()
        if any(l.dtype != losses[0].dtype for l in losses):
            losses = [l.double() for l in losses]
        vals = torch.stack(losses).double().cpu().numpy()   # one device sync per point
        return Evaluation.from_batches(vals, sizes)

    def _evaluate_to_precision(self) -> Evaluation:
        """Seeded random batches until 2·stderr <= precision·|loss| (or the data runs out)."""
        sampler = self._sampler
        assert sampler is not None
        means = sampler.control_means() if sampler.control is not None else None
        losses: list[float] = []
        sizes: list[int] = []
        with torch.inference_mode(), self.autocast(), data_pass(self.model):
            for raw in sampler.batches():
                batch, n = self.contract.prepare(raw, self.device)
                losses.append(float(self.contract.loss(self.model, batch).double()))
                sizes.append(n)
                if len(losses) >= sampler.min_batches:
                    ev = self._estimate(losses, sizes, means)
                    if 2.0 * ev.stderr <= sampler.precision * abs(ev.loss):
                        return ev
        if not losses:
            raise no_batch_error()
        return self._estimate(losses, sizes, means)

    def _estimate(self, losses: list[float], sizes: list[int], means: Any) -> Evaluation:
        sampler = self._sampler
        assert sampler is not None
        if means is None:
            return Evaluation.from_batches(losses, sizes, population=sampler.population)
        covariates, population_mean = means
        return Evaluation.with_control(losses, sizes, covariates[: len(losses)], population_mean,
                                       population=sampler.population)

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

        Under ``torch.distributed`` the points are split across ranks (point i on rank
        i mod world) and every rank returns all of them.
        """
        rank, world = rank_and_world()
        mine = list(range(rank, len(points), world))
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
        results = merge_across_ranks(results)
        return [results[i] for i in range(len(points))]

    def sweep_batched(self, names: Sequence[str], values: Sequence[Callable[[], list[Tensor]]], chunk: int,
                      desc: str) -> list[Evaluation]:
        """Evaluate ``chunk`` points per model call: ``functional_call`` under ``vmap``."""
        from torch.func import vmap
        from torch.utils._pytree import tree_map

        if self.bn != "eval":
            raise ValueError(f"batch_points > 1 needs bn='eval' (got bn={self.bn!r}); use batch_points=1")
        if self.precision is not None:
            raise ValueError("batch_points > 1 evaluates all the data per point; it cannot be combined with "
                             "precision= (use batch_points=1)")
        if self.contract.whole:
            raise ValueError("batch_points > 1 needs (inputs, targets) pairs; use batch_points=1 with a BatchLoss")
        model = self.model
        rank, world = rank_and_world()
        chunks = [list(range(i, min(i + chunk, len(values)))) for i in range(0, len(values), chunk)]
        mine = chunks[rank::world]
        results: dict[int, Evaluation] = {}

        def one(params: dict[str, Tensor], x: Any) -> Any:
            return self.contract.forward(FunctionalModel(model, params), (x, None))

        batched = vmap(one, in_dims=(0, None))
        with self.guard(desc):
            self.set_eval_modes()
            with torch.no_grad(), self.autocast(), data_pass(model):
                for idx in progress(mine, desc, enabled=self.progress, unit="chunk"):
                    stacked = {n: torch.stack(ts) for n, ts in zip(names, zip(*(values[i]() for i in idx)))}
                    per_point: list[list[Tensor]] = [[] for _ in idx]
                    sizes: list[int] = []
                    for (x, y), n in self.batches():
                        try:
                            outs = batched(stacked, x)
                        except RuntimeError as exc:
                            raise RuntimeError(f"this model cannot be evaluated under torch.func.vmap ({exc}); "
                                               f"use batch_points=1") from exc
                        for j in range(len(idx)):
                            out_j = tree_map(lambda t, j=j: t[j], outs)
                            per_point[j].append(check_loss(self.loss_fn(out_j, y)).detach().double())
                        sizes.append(n)
                    if not sizes:
                        raise no_batch_error()
                    for j, i in enumerate(idx):
                        results[i] = Evaluation.from_batches(torch.stack(per_point[j]).cpu().numpy(), sizes)
        results = merge_across_ranks(results)
        return [results[i] for i in range(len(values))]

    def train_step(self, batch: Any, optimizer: torch.optim.Optimizer, loss_fn: Callable | None = None) -> float:
        """One step of the user's training on a prepared batch: the model in train mode, the
        probe's autocast, ``loss_fn`` (default the engine's; same form) backpropagated and
        ``optimizer.step()``. Returns the loss. Call inside :meth:`guard`."""
        contract = self.contract if loss_fn is None else Contract(loss_fn)
        self.model.train()
        optimizer.zero_grad(set_to_none=True)
        with self.autocast(), data_pass(self.model):
            loss = contract.loss(self.model, batch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    # ------------------------------------------------------------------ gradients and functional losses
    def loss_and_grad(self, params: Sequence[Tensor], want_grad: bool = True) -> tuple[float, list[Tensor] | None]:
        """Sample-weighted mean loss over the data at the model's current values, and its gradient
        w.r.t. ``params`` (accumulated as Σ n_b ∇L_b, divided by N at the end; ``.grad`` fields
        are not touched). Call inside :meth:`guard` with the modes set."""
        sizes: list[int] = []
        losses: list[Tensor] = []
        grads: list[Tensor] | None = None
        with data_pass(self.model):
            for batch, n in self.batches():
                with torch.set_grad_enabled(want_grad):
                    loss = self.contract.loss(self.model, batch)
                    if want_grad:
                        g = torch.autograd.grad(loss * n, list(params), allow_unused=True)
                        g = tuple(torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params))
                        grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
                losses.append(loss.detach().double().reshape(()))
                sizes.append(n)
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
        fmodel = FunctionalModel(self.model, state)
        with (self.autocast() if autocast else contextlib.nullcontext()), data_pass(self.model):
            return self.contract.loss(fmodel, batch)

    def fit_loss(self, params: Sequence[Tensor], batch: Any) -> Tensor:
        """The loss of a fit step: parameters (model order) replaced, the probe's autocast, a
        low-precision result widened to float32."""
        loss = self.functional_loss(dict(zip(self.parameter_names(), params)), batch, autocast=True)
        return loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss

    def fit_loss_and_grad(self, params: Sequence[Tensor], batch: Any) -> tuple[float, list[Tensor]]:
        """:meth:`fit_loss` and its gradient with respect to ``params`` (zeros where unused)."""
        leaves = [p.detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            loss = self.fit_loss(leaves, batch)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return float(loss.detach()), [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]


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

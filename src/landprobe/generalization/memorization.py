"""Memorization of corrupted data: how long a network takes to fit true labels, partially
or fully random labels, shuffled or random pixels, Gaussian inputs or shuffled targets, and
how it then does on clean test data (Zhang et al. 2017, "Understanding deep learning
requires rethinking generalization", §2 and Figure 1).

Each setting and seed trains a fresh model from the user's factory to a training-loss
threshold (or a step budget, reported as not reached), through :class:`landprobe.engine.Engine`
(the steps are :meth:`~landprobe.engine.Engine.train_step`, the losses and errors its passes).
The corrupted views come from :func:`landprobe.data.corrupt`; the user's datasets are read,
never written.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset

from landprobe.common.checks import check_int, check_loss_fn, check_module, check_positive
from landprobe.common.results import Result, require_matplotlib
from landprobe.common.version import __version__
from landprobe.data import ShuffledPixels, corrupt, materialize
from landprobe.engine import Engine, Progress

__all__ = ["memorization", "MemorizationOptions", "MemorizationResult", "classification_error", "INPUT_VARIANTS"]

#: The corruptions besides label levels that :func:`memorization` accepts by name.
INPUT_VARIANTS = ("shuffled_pixels", "random_pixels", "gaussian", "shuffled_targets")
_CHECKS = ("full", "running")
_PRETTY = {"clean": "true labels", "labels 1": "random labels", "shuffled_pixels": "shuffled pixels",
           "random_pixels": "random pixels", "gaussian": "Gaussian", "shuffled_targets": "shuffled targets"}


def classification_error(output: Tensor, target: Tensor) -> Tensor:
    """The batch's classification error, ``1 − accuracy`` (the fraction of ``argmax`` misses).

    Args:
        output: Scores ``(B, C)`` (logits or probabilities).
        target: Class indices ``(B,)``.

    Returns:
        A float scalar tensor in [0, 1].

    Raises:
        ValueError: If ``target`` does not hold integer class indices of shape ``(B,)``;
            for regression pass another ``error_fn`` to :func:`memorization`.

    Example:
        >>> import torch
        >>> from landprobe.generalization.memorization import classification_error
        >>> out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
        >>> float(classification_error(out, torch.tensor([0, 1, 1])))    # one miss in three
        0.3333333432674408
    """
    if (not isinstance(target, Tensor) or target.is_floating_point() or target.dim() != 1
            or not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != target.shape[0]):
        raise ValueError(
            f"classification_error needs scores (B, C) and integer class indices (B,); got "
            f"{tuple(getattr(output, 'shape', ()))} and {tuple(getattr(target, 'shape', ()))} "
            f"{getattr(target, 'dtype', type(target).__name__)}. For regression or super-resolution pass "
            f"error_fn= (e.g. the loss itself, or a PSNR) to memorization")
    return (output.argmax(dim=1) != target).float().mean()


def _default_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


@dataclass(frozen=True)
class MemorizationOptions:
    """How each run of :func:`memorization` trains and when it stops.

    Attributes:
        threshold: Training loss at or below which a run counts as fitted (> 0).
        max_steps: Step budget of a run; a run that has not met the threshold then stops
            and is reported as not reached.
        batch_size: Training batch size; batches are drawn from a seeded shuffle of the
            (corrupted) training set, a new permutation each epoch.
        record_every: Steps between records of the training loss (and threshold checks);
            ``None``: one epoch, ``ceil(n / batch_size)``. Steps to fit are resolved to it.
        check: ``"full"``: the recorded training loss is a pass over the whole corrupted
            training set with the model in eval mode (the empirical risk itself);
            ``"running"``: the sample-weighted mean of the batch losses since the previous
            record (no extra pass; a model in train mode, lagging the current one).
        optimizer: ``optimizer(params) -> torch.optim.Optimizer``; ``None``: SGD with
            lr 0.01 and momentum 0.9.
        clip_norm: Clip the global gradient norm to this before each step (``None``: no).
        eval_batch_size: Batch size of the passes that measure losses and errors (1 for
            test images of different sizes).
        materialize: Read the corrupted training set once into tensors
            (:func:`landprobe.data.materialize`) before training; ``False`` reads it
            through the view every epoch (for sets too large for memory).
        num_workers: ``DataLoader`` workers for the training batches.
        dtype: Autocast dtype of the training steps and of the recorded training losses
            (``torch.bfloat16``/``torch.float16``, as :class:`landprobe.engine.Engine`'s
            ``dtype``); ``None``: the model's own. The final errors and the test loss are
            always measured in the model's dtype. bf16 is fast only on CPUs with native
            bf16 (AMX, AVX512-BF16); elsewhere it is emulated and much slower.

    Raises:
        ValueError: On an argument out of range (names it).

    Example:
        >>> from landprobe.generalization.memorization import MemorizationOptions
        >>> MemorizationOptions(threshold=0.05, max_steps=2000).batch_size
        128
        >>> MemorizationOptions(check="exact")
        Traceback (most recent call last):
        ...
        ValueError: MemorizationOptions: check='exact'; expected one of ('full', 'running')
    """

    threshold: float = 0.01
    max_steps: int = 10_000
    batch_size: int = 128
    record_every: int | None = None
    check: str = "full"
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None
    clip_norm: float | None = None
    eval_batch_size: int = 512
    materialize: bool = True
    num_workers: int = 0
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        check_positive("MemorizationOptions.threshold", self.threshold, "the training loss of a fitted run")
        for name, low in (("max_steps", 1), ("batch_size", 1), ("eval_batch_size", 1), ("num_workers", 0)):
            check_int(f"MemorizationOptions.{name}", getattr(self, name), low)
        if self.record_every is not None:
            check_int("MemorizationOptions.record_every", self.record_every, 1, "steps between records, or None")
        if self.check not in _CHECKS:
            raise ValueError(f"MemorizationOptions: check={self.check!r}; expected one of {_CHECKS}")
        if self.clip_norm is not None:
            check_positive("MemorizationOptions.clip_norm", self.clip_norm, "a gradient norm, or None")
        if self.dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"MemorizationOptions: dtype={self.dtype!r}; expected None (the model's dtype) or an "
                             f"autocast dtype, torch.bfloat16 or torch.float16")
        if self.optimizer is not None and not callable(self.optimizer):
            raise TypeError(f"MemorizationOptions: optimizer={self.optimizer!r}; expected None or a callable "
                            f"params -> torch.optim.Optimizer, e.g. lambda ps: torch.optim.SGD(ps, lr=0.01)")

    def describe(self) -> dict[str, Any]:
        """The options as JSON-ready values; the optimizer by its class and hyperparameters
        (its ``defaults``, read from one built on a dummy parameter).

        Example:
            >>> from landprobe.generalization.memorization import MemorizationOptions
            >>> MemorizationOptions().describe()["optimizer"][:28]
            'SGD(lr=0.01, momentum=0.9, d'
        """
        out = {k: v for k, v in asdict(self).items() if k not in ("optimizer", "dtype")}
        out["dtype"] = None if self.dtype is None else str(self.dtype)
        opt = (self.optimizer or _default_optimizer)([nn.Parameter(torch.zeros(1))])
        hyper = ", ".join(f"{k}={v!r}" for k, v in getattr(opt, "defaults", {}).items() if v is not None)
        out["optimizer"] = f"{type(opt).__name__}({hyper})"
        return out


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class _Setting:
    name: str
    kind: str | None        # None: the clean data; else a landprobe.data.CORRUPTION_KINDS entry
    level: float | None     # label-corruption level p (0 for the clean data), None for the variants


def _settings(corruptions: Sequence[float | str], num_classes: int | None) -> list[_Setting]:
    """The settings to run, the clean one first (added when missing)."""
    if isinstance(corruptions, (str, float, int)) or not len(corruptions):
        raise ValueError(f"corruptions={corruptions!r}; expected a non-empty list of label-corruption levels in "
                         f"[0, 1] and names from {('clean', 'random_labels') + INPUT_VARIANTS}")
    out: list[_Setting] = []
    for c in corruptions:
        s = _setting(c)
        if s.kind == "labels" and num_classes is None:
            raise ValueError(f"corruption {c!r} corrupts labels, which needs num_classes= (the number of classes)")
        if any(o.name == s.name for o in out):
            raise ValueError(f"corruptions={list(corruptions)!r} name {s.name!r} twice (p = 0 is 'clean'); "
                             f"give each setting once")
        out.append(s)
    clean = [o for o in out if o.name == "clean"] or [_Setting("clean", None, 0.0)]
    return clean + [o for o in out if o.name != "clean"]


def _setting(c: float | str) -> _Setting:
    if isinstance(c, str):
        if c == "clean":
            return _Setting("clean", None, 0.0)
        if c == "random_labels":
            return _Setting("labels 1", "labels", 1.0)
        if c in INPUT_VARIANTS:
            return _Setting(c, c, None)
        raise ValueError(f"corruption {c!r}; expected a label-corruption level in [0, 1], 'clean', 'random_labels' "
                         f"or one of {INPUT_VARIANTS}")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= float(c) <= 1.0:
        raise ValueError(f"corruption {c!r}; a label-corruption level must be a number in [0, 1]")
    p = float(c)
    return _Setting("clean", None, 0.0) if p == 0.0 else _Setting(f"labels {p:g}", "labels", p)


def _views(setting: _Setting, train: Dataset, test: Dataset, seed: int, num_classes: int | None
           ) -> tuple[Dataset, Dataset]:
    """The corrupted training set and the test set a setting is scored on: clean, except that
    shuffled pixels permute the test inputs with the training permutation (a fixed change of
    the input's coordinates, as Zhang et al.)."""
    if setting.kind is None:
        return train, test
    if setting.kind == "labels":
        return corrupt(train, "labels", p=setting.level, num_classes=num_classes, seed=seed), test
    view = corrupt(train, setting.kind, seed=seed)
    if setting.kind == "shuffled_pixels":
        return view, ShuffledPixels(test, seed)
    return view, test


# ----------------------------------------------------------------------------- data as the engine reads it
class _TrainData:
    """The training set as the engine reads it: seeded shuffled batches for the steps, and
    plain ordered batches inside :meth:`in_order` (the passes that measure the loss)."""

    def __init__(self, ds: Dataset, opts: MemorizationOptions, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        if isinstance(ds, TensorDataset) and opts.num_workers == 0:
            # whole batches by one indexing of the tensors
            self.shuffled: DataLoader = DataLoader(ds, batch_size=None, sampler=BatchSampler(
                RandomSampler(ds, generator=g), opts.batch_size, drop_last=False))
            self.ordered: DataLoader = DataLoader(ds, batch_size=None, sampler=BatchSampler(
                SequentialSampler(ds), opts.eval_batch_size, drop_last=False))
        else:
            self.shuffled = DataLoader(ds, batch_size=opts.batch_size, shuffle=True, generator=g,
                                       num_workers=opts.num_workers)
            self.ordered = DataLoader(ds, batch_size=opts.eval_batch_size)
        self._plain = False

    def __iter__(self) -> Iterator[Any]:
        return iter(self.ordered if self._plain else self.shuffled)

    def __len__(self) -> int:
        return len(self.ordered if self._plain else self.shuffled)

    @contextlib.contextmanager
    def in_order(self) -> Iterator[None]:
        self._plain = True
        try:
            yield
        finally:
            self._plain = False


def _grid(opts: MemorizationOptions, n_train: int) -> np.ndarray:
    """Steps at which the training loss is recorded: 0, r, 2r, ... and the budget."""
    every = opts.record_every or max(1, math.ceil(n_train / opts.batch_size))
    steps = list(range(0, opts.max_steps, every)) + [opts.max_steps]
    return np.asarray(steps, dtype=np.int64)


# ----------------------------------------------------------------------------- one run
@dataclass
class _Run:
    train_loss: np.ndarray
    batch_loss: np.ndarray
    status: str = "budget"
    steps_to_fit: float = math.nan
    steps_run: int = 0
    values: dict[str, float] = field(default_factory=dict)


def _build(model_factory: Callable[[int], nn.Module], seed: int) -> nn.Module:
    """``model_factory(seed)`` with torch's global generator seeded by ``seed`` and restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory(seed)
    return check_module(model, "model_factory(seed)")


def _optimizer(model: nn.Module, opts: MemorizationOptions) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (opts.optimizer or _default_optimizer)(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"MemorizationOptions.optimizer returned a {type(opt).__name__}, not a torch.optim.Optimizer; "
                        f"e.g. optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01)")
    if opts.clip_norm is not None:
        limit = opts.clip_norm

        def clip(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            nn.utils.clip_grad_norm_(params, limit)
        opt.register_step_pre_hook(clip)
    return opt


def _loss_now(engine: Engine, data: _TrainData) -> float:
    with data.in_order():
        engine.set_eval_modes()
        return engine.evaluate().loss


def _fit(engine: Engine, data: _TrainData, opt: torch.optim.Optimizer, opts: MemorizationOptions,
         grid: np.ndarray, bar: Progress) -> _Run:
    """Train until the recorded loss is at most the threshold, the budget is spent or the loss
    is not finite; call inside ``engine.guard``."""
    run = _Run(np.full(len(grid), np.nan), np.full(len(grid), np.nan))
    run.train_loss[0] = _loss_now(engine, data)
    if not math.isfinite(run.train_loss[0]):
        run.status = "diverged"
        return run
    if run.train_loss[0] <= opts.threshold:
        run.status, run.steps_to_fit = "fit", 0.0
        return run
    batches = engine.batch_cycle()
    step = 0
    for r in range(1, len(grid)):
        total, count, finite = 0.0, 0, True
        while step < grid[r] and finite:
            part = next(batches)
            value = engine.train_step(part, opt)
            total, count, step = total + value * part.samples, count + part.samples, step + 1
            finite = math.isfinite(value)
        run.batch_loss[r] = total / max(count, 1)
        run.train_loss[r] = run.batch_loss[r] if opts.check == "running" or not finite else _loss_now(engine, data)
        bar.set(step=step, loss=f"{run.train_loss[r]:.4g}")
        if not math.isfinite(run.train_loss[r]):
            run.status = "diverged"
            break
        if run.train_loss[r] <= opts.threshold:
            run.status, run.steps_to_fit = "fit", float(step)
            break
    run.steps_run = step
    return run


def _evaluate(model: nn.Module, fn: Callable, loader: DataLoader, state: dict[str, Tensor], what: str) -> float:
    return Engine(model, fn, loader, progress=False).evaluate_at(state, label=f"memorization ({what})").loss


@dataclass(frozen=True)
class _Job:
    """What every run of one :func:`memorization` call shares."""

    model_factory: Callable[[int], nn.Module]
    loss_fn: Callable
    error_fn: Callable
    opts: MemorizationOptions
    grid: np.ndarray


def _one_run(job: _Job, seed: int, train: Dataset, test: Dataset, bar: Progress) -> _Run:
    """Train a fresh model from ``job.model_factory(seed)`` on ``train`` (a corrupted view),
    then score its final parameters on the training and test sets."""
    opts = job.opts
    data = _TrainData(materialize(train) if opts.materialize else train, opts, seed)
    model = _build(job.model_factory, seed)
    engine = Engine(model, job.loss_fn, data, dtype=opts.dtype, progress=False)
    opt = _optimizer(model, opts)
    start = time.perf_counter()
    with engine.guard("memorization"):                    # restores the global RNG on exit
        torch.manual_seed(seed)                            # dropout and other draws of the steps
        run = _fit(engine, data, opt, opts, job.grid, bar)
        state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    seconds = time.perf_counter() - start
    test_loader = DataLoader(test, batch_size=opts.eval_batch_size)
    run.values = {
        "final_loss": float(run.train_loss[np.searchsorted(job.grid, run.steps_run)]),
        "train_error": _evaluate(model, job.error_fn, data.ordered, state, "training error"),
        "test_error": _evaluate(model, job.error_fn, test_loader, state, "test error"),
        "test_loss": _evaluate(model, job.loss_fn, test_loader, state, "test loss"),
        "seconds": seconds,
    }
    return run


# ----------------------------------------------------------------------------- the result
@dataclass(frozen=True, eq=False)
class MemorizationResult(Result):
    """Steps to fit, training-loss curves and errors of a :func:`memorization` experiment.

    Settings are indexed by ``s`` (``names[0]`` is always ``"clean"``), seeds by ``k``, records
    by ``r``.

    Attributes:
        names: One name per setting: ``"clean"``, ``"labels <p>"``, ``"shuffled_pixels"``,
            ``"random_pixels"``, ``"gaussian"``, ``"shuffled_targets"``.
        levels: Label-corruption level ``p`` of each setting (0 for clean), ``None`` for the
            input and target variants.
        seeds: The seeds; seed ``k`` seeds the model's initialisation, the batch order and
            the corruption's draws of every setting.
        steps: ``(R,)`` steps of the records: 0, every ``record_every`` steps, the budget.
        train_loss: ``(S, K, R)`` recorded training loss on the corrupted training set (see
            :class:`MemorizationOptions` ``check``); NaN after a run stopped.
        batch_loss: ``(S, K, R)`` mean batch loss since the previous record (NaN at step 0).
        steps_to_fit: ``(S, K)`` first recorded step with ``train_loss <= threshold``; NaN
            when the threshold was not met.
        steps_run: ``(S, K)`` steps trained.
        status: ``[s][k]``: ``"fit"``, ``"budget"`` (not reached in ``max_steps``) or
            ``"diverged"`` (a non-finite loss).
        final_loss: ``(S, K)`` the last recorded training loss.
        train_error, test_error: ``(S, K)`` ``error_fn`` on the corrupted training set and on
            the test set (clean; permuted alike for shuffled pixels) at the final parameters.
        test_loss: ``(S, K)`` the loss on the test set.
        seconds: ``(S, K)`` training time of each run.
        threshold, max_steps: The stopping rule.
        error_name: What ``test_error`` measures (axis label).
        settings: Options, loss, model, data sizes, versions.

    Example:
        >>> import numpy as np
        >>> from landprobe.generalization.memorization import MemorizationResult
        >>> nan = float("nan")
        >>> res = MemorizationResult(
        ...     names=["clean", "labels 1"], levels=[0.0, 1.0], seeds=[0], steps=np.array([0, 10, 20]),
        ...     train_loss=np.array([[[2.3, 0.5, nan]], [[2.3, 1.9, 0.9]]]), batch_loss=np.full((2, 1, 3), nan),
        ...     steps_to_fit=np.array([[10.0], [nan]]), steps_run=np.array([[10.0], [20.0]]),
        ...     status=[["fit"], ["budget"]], final_loss=np.array([[0.5], [0.9]]),
        ...     train_error=np.zeros((2, 1)), test_error=np.array([[0.1], [0.9]]), test_loss=np.ones((2, 1)),
        ...     seconds=np.ones((2, 1)), threshold=0.5, max_steps=20)
        >>> res.reached.tolist(), res.relative_time.tolist()      # random labels: not reached in 20 steps
        ([[True], [False]], [[1.0], [nan]])
        >>> res.summary()[1]["steps_to_fit"], res.summary()[1]["relative_time_at_least"]
        (None, 2.0)
    """

    names: list[str]
    levels: list[float | None]
    seeds: list[int]
    steps: np.ndarray
    train_loss: np.ndarray
    batch_loss: np.ndarray
    steps_to_fit: np.ndarray
    steps_run: np.ndarray
    status: list[list[str]]
    final_loss: np.ndarray
    train_error: np.ndarray
    test_error: np.ndarray
    test_loss: np.ndarray
    seconds: np.ndarray
    threshold: float
    max_steps: int
    error_name: str = "test error"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def reached(self) -> np.ndarray:
        """``(S, K)`` bools: the run met the threshold."""
        return np.array([[st == "fit" for st in row] for row in self.status], dtype=bool)

    @property
    def relative_time(self) -> np.ndarray:
        """``(S, K)`` steps to fit over the clean setting's steps to fit for the same seed
        (Zhang et al.'s relative convergence time); NaN where either did not fit."""
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = self.steps_to_fit / self.steps_to_fit[0]
        return np.where(np.isfinite(rel), rel, np.nan)

    def _relative_bound(self) -> np.ndarray:
        """``(S, K)`` steps run over the clean steps to fit: the relative time, or a lower
        bound of it where the run stopped at the budget."""
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(self.reached, self.steps_to_fit, self.steps_run) / self.steps_to_fit[0]
        return np.where(np.isfinite(rel), rel, np.nan)

    def summary(self) -> list[dict[str, Any]]:
        """One row per setting, means over the seeds: fitted runs, steps to fit (``None`` unless
        every seed fit), relative time (or ``relative_time_at_least``, a lower bound from the
        budget, when some seed did not fit), final training loss, training and test error.

        Example: see the class.
        """
        rows = []
        bound = self._relative_bound()
        for s, name in enumerate(self.names):
            all_fit = bool(self.reached[s].all())
            rows.append({
                "setting": name, "level": self.levels[s], "fitted": f"{int(self.reached[s].sum())}/{len(self.seeds)}",
                "status": sorted(set(self.status[s])),
                "steps_to_fit": float(np.mean(self.steps_to_fit[s])) if all_fit else None,
                "relative_time": float(np.mean(self.relative_time[s])) if all_fit else None,
                "relative_time_at_least": None if all_fit else _mean_or_none(bound[s]),
                "final_loss": float(np.mean(self.final_loss[s])),
                "train_error": float(np.mean(self.train_error[s])),
                "test_error": float(np.mean(self.test_error[s])),
                "test_error_min": float(np.min(self.test_error[s])),
                "test_error_max": float(np.max(self.test_error[s])),
                "test_loss": float(np.mean(self.test_loss[s])),
                "seconds": float(np.sum(self.seconds[s])),
            })
        return rows

    def markdown(self) -> str:
        """:meth:`summary` as a Markdown table (``>`` marks a lower bound from the budget).

        Example:
            >>> import numpy as np
            >>> from landprobe.generalization.memorization import MemorizationResult
            >>> one = np.ones((1, 1))
            >>> res = MemorizationResult(["clean"], [0.0], [0], np.array([0, 5]), np.ones((1, 1, 2)),
            ...                          np.ones((1, 1, 2)), 5 * one, 5 * one, [["fit"]], one, 0 * one, one, one,
            ...                          one, threshold=1.0, max_steps=5)
            >>> print(res.markdown().splitlines()[2])
            | clean | 0 | 1/1 | 5 | 1.00 | 1 | 0 | 1 | 1 |
        """
        head = ["setting", "p", "fitted", "steps to fit", "relative time", "final training loss", "training error",
                self.error_name, "test loss"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row, s in zip(self.summary(), range(len(self.names))):
            level = "" if row["level"] is None else f"{row['level']:g}"
            steps = (f"{row['steps_to_fit']:.0f}" if row["steps_to_fit"] is not None
                     else f"> {np.mean(self.steps_run[s]):.0f}")
            rel = (f"{row['relative_time']:.2f}" if row["relative_time"] is not None
                   else ("n/a" if row["relative_time_at_least"] is None else f"> {row['relative_time_at_least']:.2f}"))
            lines.append(f"| {row['setting']} | {level} | {row['fitted']} | {steps} | {rel} | "
                         f"{row['final_loss']:.4g} | {row['train_error']:.4g} | {row['test_error']:.4g} | "
                         f"{row['test_loss']:.4g} |")
        return "\n".join(lines)

    def plot(self, axes: Sequence[Any] | None = None) -> Any:
        """Zhang et al.'s Figure 1: (a) training loss against steps for every setting, (b) relative
        convergence time and (c) test error against the label-corruption level (the input and
        target variants as dashed horizontal lines; bars over the settings when fewer than two
        label levels were run). Open markers are lower bounds: runs stopped at the budget.
        Panel (c) marks chance for classification and ``settings["reference"]``, a dict
        ``{"value": ..., "label": ...}`` (e.g. bicubic interpolation's PSNR), when present.
        Needs matplotlib; returns the figure.

        Example:
            >>> fig = result.plot()                                  # doctest: +SKIP
            >>> fig.savefig("memorization.png")                      # doctest: +SKIP
        """
        plt = require_matplotlib()
        if axes is None:
            fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        else:
            fig = axes[0].figure
        _plot_curves(self, axes[0])
        labels = [s for s, lv in enumerate(self.levels) if lv is not None]
        if len(labels) >= 2:
            _plot_against_level(self, axes[1], self._relative_bound(), "relative convergence time", relative=True)
            _plot_against_level(self, axes[2], self.test_error, self.error_name, relative=False)
        else:
            _plot_bars(self, axes[1], self._relative_bound(), "relative convergence time")
            _plot_bars(self, axes[2], self.test_error, self.error_name)
        for ax, letter in zip(axes, "abc"):
            ax.set_title(f"({letter}) " + ax.get_title())
        fig.tight_layout()
        return fig


def _mean_or_none(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(np.mean(v)) if v.size else None


def _pretty(res: MemorizationResult, name: str) -> str:
    if name == "clean" and res.settings.get("num_classes") is None:
        return "clean data"
    return _PRETTY.get(name, name.replace("labels ", "labels p="))


def _colour(res: MemorizationResult, s: int) -> Any:
    import matplotlib

    level = res.levels[s]
    if level is not None:
        return matplotlib.colormaps["viridis"](0.9 * level)
    fixed = {"shuffled_pixels": "tab:red", "random_pixels": "tab:orange", "gaussian": "tab:brown",
             "shuffled_targets": "tab:pink"}
    return fixed.get(res.names[s], "tab:gray")


def _plot_curves(res: MemorizationResult, ax: Any) -> None:
    for s, name in enumerate(res.names):
        style = "-" if res.levels[s] is not None else "--"
        for k in range(len(res.seeds)):
            ok = np.isfinite(res.train_loss[s, k])
            ax.plot(res.steps[ok], res.train_loss[s, k][ok], style, color=_colour(res, s), lw=1.2,
                    label=_pretty(res, name) if k == 0 else None)
    ax.axhline(res.threshold, color="0.5", lw=0.8, ls=":", label=f"threshold {res.threshold:.4g}")
    finite = res.train_loss[np.isfinite(res.train_loss)]
    if finite.size and finite.min() > 0:
        ax.set_yscale("log")
    ax.set_xlabel("steps")
    ax.set_ylabel("training loss")
    ax.set_title("training loss")
    ax.legend(frameon=False, fontsize=7)


def _plot_against_level(res: MemorizationResult, ax: Any, values: np.ndarray, what: str, relative: bool) -> None:
    pairs = sorted((lv, s) for s, lv in enumerate(res.levels) if lv is not None)
    labels = [s for _, s in pairs]
    x = np.array([lv for lv, _ in pairs], dtype=float)
    v = values[labels]
    bound = ~res.reached[labels] if relative else np.zeros_like(v, dtype=bool)
    ax.plot(x, np.nanmean(np.where(np.isfinite(v), v, np.nan), axis=1), "-", color="tab:blue", lw=1.2)
    for k in range(len(res.seeds)):
        ax.plot(x[~bound[:, k]], v[~bound[:, k], k], "o", color="tab:blue", ms=5,
                label="per seed" if k == 0 else None)
        if bound[:, k].any():
            ax.plot(x[bound[:, k]], v[bound[:, k], k], "^", mfc="none", color="tab:blue", ms=7,
                    label="not reached: at least" if k == 0 else None)
    for s, name in enumerate(res.names):
        if res.levels[s] is None and np.isfinite(values[s]).any():
            ax.axhline(float(np.nanmean(values[s])), color=_colour(res, s), ls="--", lw=1.0,
                       label=_pretty(res, name) + (" (at least)" if relative and not res.reached[s].all() else ""))
    if not relative:
        _reference_lines(res, ax)
    ax.set_xlabel("label corruption p")
    ax.set_ylabel(what)
    ax.set_title(what)
    ax.legend(frameon=False, fontsize=7)


def _plot_bars(res: MemorizationResult, ax: Any, values: np.ndarray, what: str) -> None:
    xs = np.arange(len(res.names))
    means = [float(np.nanmean(v)) if np.isfinite(v).any() else 0.0 for v in values]
    bars = ax.bar(xs, means, color=[_colour(res, s) for s in range(len(res.names))])
    for s, bar in enumerate(bars):
        if what.startswith("relative") and not res.reached[s].all():
            bar.set_hatch("//")
            bar.set_alpha(0.5)
            ax.annotate("not reached:\nat least", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        for k in range(len(res.seeds)):
            ax.plot(xs[s], values[s, k], "k.", ms=4)
    ax.set_xticks(xs, [_pretty(res, n) for n in res.names], fontsize=8)
    ax.margins(y=0.15)
    if not what.startswith("relative"):
        _reference_lines(res, ax)
    ax.set_ylabel(what)
    ax.set_title(what)


def _reference_lines(res: MemorizationResult, ax: Any) -> None:
    """Chance (classification) and a reference from ``settings["reference"]`` (e.g. bicubic)."""
    lines = [(res.settings.get("chance_error"), "chance")]
    ref = res.settings.get("reference")
    if isinstance(ref, dict):
        lines.append((ref.get("value"), str(ref.get("label", "reference"))))
    drawn = False
    for value, label in lines:
        if isinstance(value, (int, float)):
            ax.axhline(value, color="0.4", ls=":", lw=0.9, label=label)
            drawn = True
    if drawn:
        ax.legend(frameon=False, fontsize=7)


# ----------------------------------------------------------------------------- the experiment
def _check_dataset(ds: Any, name: str) -> Any:
    if isinstance(ds, DataLoader):
        raise TypeError(f"memorization: `{name}` is a DataLoader; pass its dataset ({name}.dataset): the experiment "
                        f"makes its own loaders (MemorizationOptions sets the batch sizes)")
    if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
        raise TypeError(f"memorization: `{name}` ({type(ds).__name__}) must be a map-style dataset of (x, y) pairs "
                        f"with __getitem__ and __len__")
    return ds


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    if isinstance(seeds, int) or not len(seeds):
        raise ValueError(f"memorization: seeds={seeds!r}; expected a non-empty list of ints >= 0, e.g. seeds=(0, 1)")
    out = [check_int("memorization seed", s, 0) for s in seeds]
    if len(set(out)) != len(out):
        raise ValueError(f"memorization: seeds={list(seeds)!r} repeat a seed; a repeated seed repeats a run exactly")
    return out


class _Table:
    """The arrays of a :class:`MemorizationResult`, filled run by run."""

    def __init__(self, n_settings: int, n_seeds: int, n_records: int) -> None:
        shape = (n_settings, n_seeds)
        self.train_loss = np.full((*shape, n_records), np.nan)
        self.batch_loss = np.full((*shape, n_records), np.nan)
        self.steps_to_fit, self.steps_run = np.full(shape, np.nan), np.zeros(shape)
        self.values = {k: np.full(shape, np.nan) for k in ("final_loss", "train_error", "test_error", "test_loss",
                                                           "seconds")}
        self.status = [["" for _ in range(n_seeds)] for _ in range(n_settings)]

    def put(self, s: int, k: int, run: _Run) -> None:
        self.train_loss[s, k], self.batch_loss[s, k] = run.train_loss, run.batch_loss
        self.steps_to_fit[s, k], self.steps_run[s, k] = run.steps_to_fit, run.steps_run
        self.status[s][k] = run.status
        for key, v in run.values.items():
            self.values[key][s, k] = v


def memorization(
    model_factory: Callable[[int], nn.Module],
    train: Dataset,
    test: Dataset,
    loss_fn: Callable,
    corruptions: Sequence[float | str] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, "shuffled_pixels", "random_pixels", "gaussian"),
    *,
    num_classes: int | None = None,
    error_fn: Callable | None = None,
    error_name: str | None = None,
    seeds: Sequence[int] = (0,),
    options: MemorizationOptions | None = None,
    progress: bool | None = None,
) -> MemorizationResult:
    """Zhang et al.'s (2017) memorization experiment: train a fresh network on each corruption
    of the training set until its training loss meets a threshold, and record how long it took,
    the training-loss curve and the test error.

    For each setting (the clean data always first, then each of ``corruptions``) and each
    seed: the training set is wrapped by :func:`landprobe.data.corrupt` with that seed, a model
    is built by ``model_factory(seed)`` (with torch's global generator seeded by ``seed`` and
    restored afterwards), and trained by :meth:`landprobe.engine.Engine.train_step` on
    batches of a seeded shuffle until the recorded training loss is at most
    ``options.threshold`` or ``options.max_steps`` steps are spent (reported as not reached,
    never as fitted). Then ``error_fn`` is measured on the corrupted training set and on the
    test set (clean; under shuffled pixels with the training permutation, as a change of
    input coordinates), and ``loss_fn`` on the test set. Relative convergence time is the
    steps to fit over the clean setting's for the same seed.

    Args:
        model_factory: ``model_factory(seed) -> nn.Module``, a new model each call (on the
            device to train on; batches are moved there).
        train: Map-style training set of pairs ``(x, y)`` (class indices for label levels).
        test: Map-style test set of pairs ``(x, y)``.
        loss_fn: ``loss_fn(model(x), y)``, a mean over the batch (e.g. ``nn.CrossEntropyLoss()``).
        corruptions: Label-corruption levels ``p`` in [0, 1] (0 is the clean data,
            ``"random_labels"`` is ``p = 1``) and names of :data:`INPUT_VARIANTS`:
            ``"shuffled_pixels"``, ``"random_pixels"``, ``"gaussian"``, ``"shuffled_targets"``.
        num_classes: Number of classes; needed for label levels.
        error_fn: ``error_fn(model(x), y)``, a per-batch mean; default
            :func:`classification_error` (``1 − accuracy``). For regression or
            super-resolution pass e.g. the loss or a PSNR (then a higher value is better).
        error_name: Its name in tables and plots (default ``"test error"``).
        seeds: One run per seed and setting; seed ``k`` seeds the model, the batch order and
            the corruption.
        options: :class:`MemorizationOptions` (threshold, budget, batch size, optimizer, ...).
        progress: A bar over the runs (``None``: on a terminal only).

    Returns:
        A :class:`MemorizationResult` (``save``/``load`` JSON, ``plot()``, ``markdown()``).
        The user's datasets are not written; the models are the factory's.

    Raises:
        ValueError: On an unknown corruption, a label level without ``num_classes``, a
            repeated setting or seed, or an out-of-range option; and the corruption's errors.
        TypeError: If ``model_factory`` is a module (pass a function) or a dataset is not
            map-style.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from landprobe.generalization.memorization import MemorizationOptions, memorization
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 4, generator=g); y = (x[:, 0] > 0).long()
        >>> res = memorization(lambda seed: nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2)),
        ...                    TensorDataset(x, y), TensorDataset(x, y), nn.CrossEntropyLoss(), [1.0],
        ...                    num_classes=2, options=MemorizationOptions(threshold=0.3, max_steps=400,
        ...                    batch_size=16, optimizer=lambda ps: torch.optim.Adam(ps, lr=0.01)))
        >>> res.names, res.status[0][0], bool(res.steps_to_fit[0, 0] < res.steps_to_fit[1, 0])
        (['clean', 'labels 1'], 'fit', True)
    """
    if isinstance(model_factory, nn.Module) or not callable(model_factory):
        raise TypeError(f"memorization: model_factory is a {type(model_factory).__name__}; pass a function that "
                        f"builds a new model from a seed, e.g. lambda seed: MyNet()")
    if isinstance(model_factory, type) and issubclass(model_factory, nn.Module):
        raise TypeError(f"memorization: model_factory is the class {model_factory.__name__}, which would be called "
                        f"with the seed; pass a function of the seed, e.g. lambda seed: {model_factory.__name__}(...)")
    n_train = len(_check_dataset(train, "train"))
    _check_dataset(test, "test")
    opts = options if options is not None else MemorizationOptions()
    if not isinstance(opts, MemorizationOptions):
        raise TypeError(f"memorization: options={opts!r}; expected a MemorizationOptions")
    if num_classes is not None:
        check_int("memorization num_classes", num_classes, 2, "the number of classes")
    settings, seeds = _settings(corruptions, num_classes), _check_seeds(seeds)
    error = classification_error if error_fn is None else check_loss_fn(error_fn, "error_fn")
    job = _Job(model_factory, check_loss_fn(loss_fn), error, opts, _grid(opts, n_train))
    table = _Table(len(settings), len(seeds), len(job.grid))
    with Progress("memorization", total=len(settings) * len(seeds), enabled=progress, unit="run") as bar:
        for s, setting in enumerate(settings):
            for k, seed in enumerate(seeds):
                bar.set(setting=setting.name, seed=seed)
                view, test_view = _views(setting, train, test, seed, num_classes)
                table.put(s, k, _one_run(job, seed, view, test_view, bar))
                bar.update()
    return MemorizationResult(
        names=[st.name for st in settings], levels=[st.level for st in settings], seeds=seeds, steps=job.grid,
        train_loss=table.train_loss, batch_loss=table.batch_loss, steps_to_fit=table.steps_to_fit,
        steps_run=table.steps_run, status=table.status, **table.values, threshold=float(opts.threshold),
        max_steps=int(opts.max_steps), error_name=error_name or "test error",
        settings=_describe(job, model_factory, train, test, num_classes, error_fn))


def _describe(job: _Job, model_factory: Callable[[int], nn.Module], train: Any, test: Any,
              num_classes: int | None, error_fn: Callable | None) -> dict[str, Any]:
    model = _build(model_factory, 0)
    return {
        **job.opts.describe(), "loss": repr(job.loss_fn),
        "error_fn": "classification_error (1 - accuracy)" if error_fn is None else getattr(
            error_fn, "__qualname__", repr(error_fn)),
        "chance_error": 1.0 - 1.0 / num_classes if error_fn is None and num_classes else None,
        "num_classes": num_classes, "n_train": len(train), "n_test": len(test), "model": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seeds_rule": "seed k seeds model_factory (torch.manual_seed), the batch shuffle and the corruption's draws",
        "test_sets": "clean test set; shuffled_pixels permutes the test inputs with the training permutation",
        "landprobe": __version__, "torch": torch.__version__,
    }

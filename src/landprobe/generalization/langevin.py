"""Langevin sampling from a probe's model: :class:`~landprobe.optim.SGLD` run through the engine.

:func:`langevin_sample` starts from the model as it is, runs SGLD on the probe's data (batches
cycled in order, one ``Engine.train_step`` per step), keeps every ``thin``-th iterate after
``burn_in`` steps (or only their running mean and variance), and returns them with
diagnostics: the loss trace, the squared gradient norms, and the effective sample size of
each parameter tensor's chain (:func:`effective_sample_size`). The model (parameters,
buffers, flags, ``.grad``, modes) and the global RNGs are restored exactly afterwards, also
on an exception or KeyboardInterrupt.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landprobe.common.checks import check_int, check_nonnegative
from landprobe.common.io import atomic_torch_save, load_torch, restore_floats
from landprobe.common.results import Result, require_matplotlib
from landprobe.engine import Engine, HasEngine, Progress, as_engine
from landprobe.generalization.bounds import BoundTracker, grad_norm_sq
from landprobe.optim import SGLD
from landprobe.params import ParamVector, Selector, select

__all__ = ["KEEP_MODES", "LangevinSamples", "effective_sample_size", "langevin_sample"]

#: What :func:`langevin_sample` keeps: the thinned iterates and their moments, or the moments only.
KEEP_MODES = ("samples", "moments")

_TENSOR_FIELDS = ("mean", "var", "samples")


def effective_sample_size(x: Any) -> Any:
    """Effective sample size of a chain (or of each column of ``(n, k)`` chains).

    Geyer's initial monotone sequence estimator (Geyer 1992, "Practical Markov chain Monte
    Carlo", Statist. Sci. 7): autocorrelations rho_t from the FFT autocovariance normalised
    by n, pair sums P_m = rho_{2m} + rho_{2m+1} cut at the first negative one and made
    non-increasing, tau = -1 + 2 * sum_m P_m, ESS = n / tau. About n for independent draws,
    n * (1 - r) / (1 + r) for an AR(1) chain with coefficient r; NaN for a constant chain.

    Args:
        x: A 1-d sequence, or a 2-d ``(n, k)`` array of k chains of length n.

    Returns:
        A float (1-d input) or a float64 array of k values.

    Example:
        >>> import numpy as np
        >>> from landprobe.generalization.langevin import effective_sample_size
        >>> x = np.random.default_rng(0).standard_normal(4000)
        >>> 0.9 < effective_sample_size(x) / 4000 < 1.1                 # independent draws
        True
        >>> bool(effective_sample_size(np.repeat(x, 10)) < 0.15 * 40000)   # each draw repeated 10 times
        True
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[0] == 0:
        raise ValueError(f"x has shape {arr.shape}; expected a non-empty chain (n,) or chains (n, k)")
    one = arr.ndim == 1
    arr = arr[:, None] if one else arr
    n, k = arr.shape
    centred = arr - arr.mean(0)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=size, axis=0)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=0)[:n] / n
    var0 = acov[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = acov / var0
    if n % 2:
        rho = np.vstack([rho, np.zeros((1, k))])
    pairs = rho[0::2] + rho[1::2]
    pairs = np.where(np.cumsum(pairs < 0, axis=0) > 0, 0.0, pairs)   # initial positive sequence
    pairs = np.minimum.accumulate(pairs, axis=0)                      # ... made monotone
    with np.errstate(invalid="ignore", divide="ignore"):
        ess = np.where(var0 > 0, n / (-1.0 + 2.0 * pairs.sum(0)), np.nan)
    return float(ess[0]) if one else ess


@dataclass(frozen=True, eq=False)
class LangevinSamples(Result):
    """The output of :func:`langevin_sample`: kept iterates or their moments, with diagnostics.

    Steps are counted 1 .. burn_in + steps; step k moves w_{k-1} to w_k.

    Attributes:
        names: The sampled parameters (model order); the flat vectors concatenate them.
        shapes: Their shapes.
        losses: Mini-batch training loss of every step, at w_{k-1} (burn-in included).
        grad_norms_sq: ||g_k||^2 of every step: the mini-batch gradient of the loss (without
            weight decay) over the sampled parameters.
        sample_steps: The step k of each kept iterate w_k (after ``burn_in``, every ``thin``-th).
        projections: ``(count, len(names))``: each kept iterate's parameter tensors projected
            on fixed random unit directions (one per tensor), the chains whose ESS is ``ess``.
        ess: Effective sample size of each tensor's projection chain (in kept samples;
            :func:`effective_sample_size`).
        loss_ess: Effective sample size of the loss trace after burn-in (in steps). The
            batches are cycled in order, so the trace has a component of period the number
            of batches, whose negative correlations can make this exceed the steps.
        count: Number of kept iterates.
        settings: lr, beta, weight_decay, steps, burn_in, thin, keep, seed, subnet, bn, ...
        mean: Running mean of the kept iterates, flat float64 (``None`` without any).
        var: Their running variance (divisor count - 1; NaN for one), flat float64.
        samples: ``(count, d)`` kept iterates in the parameters' dtype on the CPU
            (``keep="samples"``), else ``None``.

    :meth:`save` writes the JSON (everything but the tensors) and, beside it, a ``.pt``
    file with ``mean``, ``var`` and ``samples``; :meth:`load` reads both.

    Example:
        >>> import numpy as np, torch
        >>> from landprobe.generalization.langevin import LangevinSamples
        >>> r = LangevinSamples(["w"], [[2]], np.zeros(3), np.zeros(3), np.array([2.0, 3.0]), np.zeros((2, 1)),
        ...                     np.array([2.0]), 3.0, 2, mean=torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> r.mean_params()["w"].tolist()
        [1.0, 2.0]
    """

    names: list[str]
    shapes: list[list[int]]
    losses: np.ndarray
    grad_norms_sq: np.ndarray
    sample_steps: np.ndarray
    projections: np.ndarray
    ess: np.ndarray
    loss_ess: float
    count: int
    settings: dict[str, Any] = field(default_factory=dict)
    mean: Any = field(default=None, repr=False)
    var: Any = field(default=None, repr=False)
    samples: Any = field(default=None, repr=False)

    def _unflatten(self, flat: Tensor | None, what: str) -> ParamVector:
        if flat is None:
            raise ValueError(f"this result holds no {what} (no iterate was kept, or it was loaded without its .pt "
                             f"file); keep samples with steps >= thin")
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = math.prod(shape)
            out[name] = flat[start:start + size].reshape(shape)
            start += size
        return ParamVector(out)

    def mean_params(self) -> ParamVector:
        """The running mean as a :class:`~landprobe.ParamVector` of the sampled parameters
        (``vec.apply_to(model)`` writes it into a model).

        Example:
            >>> import numpy as np, torch
            >>> from landprobe.generalization.langevin import LangevinSamples
            >>> r = LangevinSamples(["a", "b"], [[1], [2]], np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 2)),
            ...                     np.zeros(2), 0.0, 0, mean=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
            >>> r.mean_params()["b"].tolist()
            [2.0, 3.0]
        """
        return self._unflatten(self.mean, "mean")

    def sample_params(self, i: int) -> ParamVector:
        """The ``i``-th kept iterate as a :class:`~landprobe.ParamVector` (``keep="samples"``).

        Example:
            >>> import numpy as np, torch
            >>> from landprobe.generalization.langevin import LangevinSamples
            >>> r = LangevinSamples(["w"], [[2]], np.zeros(2), np.zeros(2), np.array([1.0, 2.0]), np.zeros((2, 1)),
            ...                     np.zeros(1), 2.0, 2, samples=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
            >>> r.sample_params(-1)["w"].tolist()
            [3.0, 4.0]
        """
        if self.samples is None:
            return self._unflatten(None, "samples")
        return self._unflatten(self.samples[i], "samples")

    def var_params(self) -> ParamVector:
        """The running variance as a :class:`~landprobe.ParamVector` of the sampled parameters.

        Example:
            >>> import numpy as np, torch
            >>> from landprobe.generalization.langevin import LangevinSamples
            >>> r = LangevinSamples(["a", "b"], [[1], [1]], np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 2)),
            ...                     np.zeros(2), 0.0, 0, var=torch.tensor([0.5, 2.0], dtype=torch.float64))
            >>> r.var_params()["b"].tolist()
            [2.0]
        """
        return self._unflatten(self.var, "variance")

    def to_dict(self) -> dict[str, Any]:
        """The JSON content: every field but the tensors ``mean``, ``var`` and ``samples``.

        Example:
            >>> import numpy as np, torch
            >>> from landprobe.generalization.langevin import LangevinSamples
            >>> r = LangevinSamples(["w"], [[1]], *[np.zeros(0)] * 3, np.zeros((0, 1)), np.zeros(1), 0.0, 0,
            ...                     mean=torch.zeros(1))
            >>> "mean" in r.to_dict(), r.to_dict()["kind"]
            (False, 'LangevinSamples')
        """
        out = super().to_dict()
        for name in _TENSOR_FIELDS:
            out.pop(name, None)
        return out

    def tensors_path(self, path: str | os.PathLike) -> Path:
        """Where :meth:`save` puts the tensors for a JSON at ``path``: the same name, ``.pt``.

        Example:
            >>> import numpy as np
            >>> from landprobe.generalization.langevin import LangevinSamples
            >>> r = LangevinSamples(["w"], [[1]], *[np.zeros(0)] * 3, np.zeros((0, 1)), np.zeros(1), 0.0, 0)
            >>> r.tensors_path("out/chain.json").as_posix()
            'out/chain.pt'
        """
        return Path(path).with_suffix(".pt")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON at ``path`` and the tensors (mean, var, samples) beside it, atomically.

        Example:
            >>> import os, tempfile, numpy as np, torch
            >>> from landprobe.generalization.langevin import LangevinSamples
            >>> r = LangevinSamples(["w"], [[1]], np.ones(2), np.ones(2), np.array([2.0]), np.zeros((1, 1)),
            ...                     np.array([np.nan]), 1.0, 1, samples=torch.ones(1, 1))
            >>> f = os.path.join(tempfile.mkdtemp(), "chain.json")
            >>> _ = r.save(f); LangevinSamples.load(f).samples.tolist()
            [[1.0]]
        """
        tensors = atomic_torch_save({name: getattr(self, name) for name in _TENSOR_FIELDS}, self.tensors_path(path))
        try:
            return super().save(path)
        except BaseException:
            tensors.unlink(missing_ok=True)  # no tensors without their JSON
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> LangevinSamples:
        """Read a result written by :meth:`save` (the tensors too when the ``.pt`` file is there).

        Example:
            >>> import os, tempfile, numpy as np, torch
            >>> from landprobe.generalization.langevin import LangevinSamples
            >>> r = LangevinSamples(["w"], [[1]], np.ones(1), np.ones(1), np.array([1.0]), np.zeros((1, 1)),
            ...                     np.array([np.nan]), 1.0, 1, settings={"beta": float("inf")})
            >>> f = os.path.join(tempfile.mkdtemp(), "chain.json"); _ = r.save(f)
            >>> back = LangevinSamples.load(f); back.count, back.settings["beta"], back.samples
            (1, inf, None)
        """
        result = super().load(path)
        tensors = result.tensors_path(path)
        result = dataclasses.replace(result, count=int(result.count), loss_ess=float(result.loss_ess),
                                     settings=restore_floats(result.settings))
        if not tensors.exists():
            return result
        return dataclasses.replace(result, **load_torch(tensors))

    def plot(self, ax=None, **kwargs):
        """The loss trace against the step, burn-in shaded (matplotlib); returns the axes.

        Example:
            >>> import numpy as np
            >>> from landprobe.generalization.langevin import LangevinSamples
            >>> r = LangevinSamples(["w"], [[1]], np.array([3.0, 2, 1, 1]), np.ones(4), np.array([4.0]),
            ...                     np.zeros((1, 1)), np.array([np.nan]), 2.0, 1, settings={"burn_in": 2})
            >>> r.plot().get_xlabel()
            'step'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        steps = np.arange(1, len(self.losses) + 1)
        ax.plot(steps, self.losses, lw=0.7, label=kwargs.pop("label", "mini-batch loss"), **kwargs)
        burn_in = int(self.settings.get("burn_in", 0))
        if burn_in:
            ax.axvspan(0.5, burn_in + 0.5, color="0.9", label="burn-in")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ess = np.nanmin(self.ess) if self.ess.size and np.isfinite(self.ess).any() else float("nan")
        ax.set_title(f"SGLD: {self.count} kept, min ESS {ess:.3g}")
        ax.legend(frameon=False, fontsize=7)
        return ax


@dataclass
class _Options:
    lr: float | Callable[[int], float]
    beta: float
    steps: int
    burn_in: int
    thin: int
    keep: str
    weight_decay: float
    seed: int
    tracker: BoundTracker | None
    steps_per_epoch: int | None


def langevin_sample(engine: Engine | HasEngine, lr: float | Callable[[int], float], beta: float, steps: int, *,
                    burn_in: int = 0, thin: int = 1, keep: str = "samples", weight_decay: float = 0.0,
                    subnet: Selector | None = None, seed: int = 0, loss_fn: Callable | None = None,
                    tracker: BoundTracker | None = None, steps_per_epoch: int | None = None) -> LangevinSamples:
    """Run SGLD from the probe's model and return its thinned iterates (or their moments).

    ``burn_in + steps`` SGLD steps (:class:`~landprobe.optim.SGLD`, one mini-batch each:
    the probe's batches cycled in order through ``Engine.train_step``, the model in train
    mode, the probe's autocast); after the first ``burn_in`` steps every ``thin``-th
    iterate is kept, ``steps // thin`` in all. The running mean and variance (float64,
    Welford's update) are always kept; the iterates themselves with ``keep="samples"``
    (``keep="moments"`` for models too big to store them). Seeds: ``np.random.SeedSequence(
    seed).generate_state(3)`` gives the SGLD noise generator's seed, the global torch RNG's
    seed during the run (dropout, a shuffling loader) and the seed of the ESS directions.
    Under data sharding every rank runs the same chain (gradients summed, the same noise).

    Args:
        engine: A :class:`landprobe.LandscapeProbe` or its engine.
        lr: Step size, or a schedule ``lr(k)`` of the step k = 1, 2, ...
        beta: Inverse temperature (``float("inf")``: plain SGD).
        steps: Steps after burn-in, >= 1.
        burn_in: Steps before the first kept iterate, >= 0.
        thin: Keep every ``thin``-th iterate, >= 1.
        keep: ``"samples"`` or ``"moments"``.
        weight_decay: SGLD's L2 coefficient.
        subnet: Sample only these parameters (the others are frozen during the run).
        seed: Seed of the run (see above).
        loss_fn: Training loss (same form as the probe's), default the probe's.
        tracker: A :class:`~landprobe.generalization.bounds.BoundTracker` fed every step
            (step size, squared gradient norm) and closed every ``steps_per_epoch`` steps.
        steps_per_epoch: Steps per tracker epoch; default ``len(data)`` when the data has a
            length, else one epoch for the whole run. A last partial epoch is labelled by
            its fraction.

    Returns:
        A :class:`LangevinSamples`. The model is restored exactly afterwards.

    Raises:
        ValueError: If an argument is outside its range, or no sampled parameter requires grad.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.generalization.langevin import langevin_sample
        >>> model = torch.nn.Linear(1, 1, bias=False).double()
        >>> data = [(torch.ones(4, 1, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))]
        >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), data)      # L(w) = w^2
        >>> before = model.weight.detach().clone()
        >>> r = langevin_sample(probe, lr=0.05, beta=10.0, steps=2000, burn_in=100, thin=10)
        >>> r.count, r.samples.shape                                         # 2000 // 10 kept
        (200, torch.Size([200, 1]))
        >>> bool(abs(r.var.item() - 0.05) < 0.02)                            # Gibbs: N(0, 1 / (2 * beta))
        True
        >>> torch.equal(model.weight, before)                                # the model is as it was
        True
    """
    engine = as_engine(engine)
    opts = _check_args(lr, beta, steps, burn_in, thin, keep, weight_decay, seed, tracker, steps_per_epoch,
                       engine)
    named = dict(engine.model.named_parameters())
    names = [n for n in select(engine.model, subnet) if named[n].requires_grad]
    if not names:
        raise ValueError(f"no parameter selected by subnet={subnet!r} requires grad; SGLD would move nothing. "
                         f"Select trainable parameters, or set requires_grad=True on them")
    seeds = [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(3)]
    with engine.guard("langevin"):              # restores the flags below with everything else
        torch.manual_seed(seeds[1])
        sampled = {id(named[n]) for n in names}
        for p in engine.model.parameters():
            if id(p) not in sampled:
                p.requires_grad_(False)             # not sampled: no gradient to compute
        chain = _Chain(engine, [named[n] for n in names], opts, seeds, loss_fn)
        chain.run()
    settings = engine.settings(probe="langevin", lr=opts.lr if not callable(opts.lr) else "schedule",
                               beta=opts.beta, weight_decay=opts.weight_decay, steps=opts.steps,
                               burn_in=opts.burn_in, thin=opts.thin, keep=opts.keep, seed=int(seed),
                               subnet=subnet if isinstance(subnet, (str, type(None))) else names,
                               ess="Geyer initial monotone sequence, random unit projection per tensor")
    return chain.result(names, settings)


def _check_args(lr: Any, beta: Any, steps: Any, burn_in: Any, thin: Any, keep: Any, weight_decay: Any, seed: Any,
                tracker: Any, steps_per_epoch: Any, engine: Engine) -> _Options:
    if not callable(lr):
        check_nonnegative("lr", lr, "the step size, or a schedule lr(k)")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or math.isnan(beta) or beta <= 0:
        raise ValueError(f"beta={beta!r}; expected a number > 0 (the inverse temperature; float('inf') for SGD)")
    if keep not in KEEP_MODES:
        raise ValueError(f"keep={keep!r}; expected one of {KEEP_MODES} ('moments' keeps only the running mean and "
                         f"variance, for models too big to store the iterates)")
    if tracker is not None and not isinstance(tracker, BoundTracker):
        raise TypeError(f"tracker has type {type(tracker).__name__}; expected None or a "
                        f"landprobe.generalization.bounds.BoundTracker")
    if steps_per_epoch is None:
        data = engine.data
        steps_per_epoch = len(data) if isinstance(data, Sized) and len(data) else None
    else:
        check_int("steps_per_epoch", steps_per_epoch, 1, "SGLD steps per tracker epoch")
    return _Options(lr=lr, beta=float(beta), steps=check_int("steps", steps, 1, "SGLD steps after burn-in"),
                    burn_in=check_int("burn_in", burn_in, 0, "SGLD steps before the first kept iterate"),
                    thin=check_int("thin", thin, 1, "keep every thin-th iterate"), keep=keep,
                    weight_decay=check_nonnegative("weight_decay", weight_decay, "SGLD's L2 coefficient"),
                    seed=check_int("seed", seed, 0, "the seed of the run"), tracker=tracker,
                    steps_per_epoch=steps_per_epoch)


class _Moments:
    """Running mean and sum of squared deviations of flat float64 vectors (Welford 1962)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        self.count += 1
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = x.clone(), torch.zeros_like(x)
            return
        delta = x - self.mean
        self.mean.add_(delta, alpha=1.0 / self.count)
        self.m2.addcmul_(delta, x - self.mean)

    def variance(self) -> Tensor | None:
        if self.m2 is None:
            return None
        return self.m2 / (self.count - 1) if self.count > 1 else torch.full_like(self.m2, float("nan"))


class _Chain:
    """One SGLD run inside the engine's guard: the steps, the kept iterates, the diagnostics."""

    def __init__(self, engine: Engine, params: list[Tensor], opts: _Options, seeds: list[int],
                 loss_fn: Callable | None) -> None:
        self.engine, self.params, self.opts, self.loss_fn = engine, params, opts, loss_fn
        device = params[0].device
        lr0 = opts.lr(1) if callable(opts.lr) else opts.lr
        self.optimizer = SGLD(params, lr=check_nonnegative("lr", lr0, "lr(1) of the schedule"), beta=opts.beta,
                              weight_decay=opts.weight_decay,
                              generator=torch.Generator(device=device).manual_seed(seeds[0]))
        cpu = torch.Generator().manual_seed(seeds[2])          # drawn on the CPU, then moved
        dirs = [torch.randn(p.numel(), generator=cpu, dtype=torch.float64) for p in params]
        self.directions = [(u / u.norm()).to(device) for u in dirs]
        total = opts.burn_in + opts.steps
        self.losses, self.grads = np.zeros(total), np.zeros(total)
        self.moments = _Moments()
        self.samples: list[Tensor] = []
        self.projections: list[Tensor] = []
        self.sample_steps: list[int] = []

    def run(self) -> None:
        opts, tracker, spe = self.opts, self.opts.tracker, self.opts.steps_per_epoch
        total = opts.burn_in + opts.steps
        batches = self.engine.batch_cycle()
        with Progress("langevin", total, enabled=self.engine.progress, unit="step") as bar:
            for k in range(1, total + 1):
                lr = self._set_lr(k)
                self.losses[k - 1] = self.engine.train_step(next(batches), self.optimizer, self.loss_fn)
                self.grads[k - 1] = grad_norm_sq(self.params)
                if tracker is not None:
                    tracker.step(lr, self.grads[k - 1])
                    if spe is not None and k % spe == 0:
                        tracker.epoch_end(k // spe)
                if k > opts.burn_in and (k - opts.burn_in) % opts.thin == 0:
                    self._keep(k)
                bar.update()
                if k % 50 == 0:
                    bar.set(loss=f"{self.losses[k - 1]:.4g}")
        if tracker is not None and (spe is None or total % spe):
            tracker.epoch_end(total / spe if spe is not None else 1)

    def _set_lr(self, k: int) -> float:
        if not callable(self.opts.lr):
            return float(self.opts.lr)
        lr = check_nonnegative("lr", self.opts.lr(k), f"lr({k}) of the schedule")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _keep(self, k: int) -> None:
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self.params])
            wide = flat.double()
            self.moments.add(wide)
            proj, start = [], 0
            for u in self.directions:
                proj.append(wide[start:start + u.numel()] @ u)
                start += u.numel()
            self.projections.append(torch.stack(proj).cpu())
            if self.opts.keep == "samples":
                self.samples.append(flat.cpu().clone())
        self.sample_steps.append(k)

    def result(self, names: Sequence[str], settings: dict[str, Any]) -> LangevinSamples:
        count = len(self.sample_steps)
        proj = (torch.stack(self.projections).numpy() if count else np.zeros((0, len(names))))
        ess = effective_sample_size(proj) if count else np.full(len(names), np.nan)
        post = self.losses[self.opts.burn_in:]
        mean = self.moments.mean.cpu() if self.moments.mean is not None else None
        var = self.moments.variance()
        return LangevinSamples(
            names=list(names), shapes=[list(p.shape) for p in self.params], losses=self.losses,
            grad_norms_sq=self.grads, sample_steps=np.asarray(self.sample_steps, dtype=np.float64),
            projections=proj, ess=np.asarray(ess, dtype=np.float64), loss_ess=float(effective_sample_size(post)),
            count=count, settings=settings, mean=mean, var=var.cpu() if var is not None else None,
            samples=torch.stack(self.samples) if self.samples else None)

"""Perturb-and-retrain probes (Liao & Poggio 2017): how wide is the basin the model sits in?

Liao & Poggio's "Theory of Deep Learning II: Landscape of the Empirical Risk" read the basin
around a solution by adding noise to the weights and training again: in a wide, flat basin
the perturbed model falls back to the same low error within a few steps. ``perturb`` does
that several times from the user's model with the user's optimizer, records each repeat's
loss curve, and leaves model and optimizer exactly as they were.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landprobe.common.results import Result, require_matplotlib
from landprobe.engine import Engine, HasEngine, as_engine, progress
from landprobe.params import ParamVector, Selector, select

__all__ = ["PerturbationResult", "perturb"]


@dataclass(frozen=True, eq=False)
class PerturbationResult(Result):
    """Empirical error after perturbing the weights and retraining, per repeat.

    Attributes:
        base_loss: Empirical error of the unperturbed model.
        eval_steps: Training steps at which the empirical error was measured (first 0: right
            after the perturbation; last: after all the retraining steps).
        losses: ``(repeats, len(eval_steps))`` empirical error (through the probe's engine,
            eval mode, all the data) at each of ``eval_steps``.
        train_losses: ``(repeats, steps)`` training loss of each mini-batch step.
        noise_norms: ``(repeats,)`` ‖noise‖ / ‖θ‖ over the perturbed parameters.
        settings: scale, relative, steps, repeats, seed, subnet, optimizer, ...

    Example:
        >>> import numpy as np
        >>> from landprobe.probes.perturb import PerturbationResult
        >>> r = PerturbationResult(1.0, np.array([0.0, 5.0]), np.array([[3.0, 1.5], [5.0, 1.1]]),
        ...                        np.zeros((2, 5)), np.array([0.1, 0.1]))
        >>> r.perturbed_losses.tolist(), r.retrained_losses.tolist()
        ([3.0, 5.0], [1.5, 1.1])
        >>> round(r.recovered, 6)                   # mean share of the rise undone: (0.75 + 0.975) / 2
        0.8625
    """

    base_loss: float
    eval_steps: np.ndarray
    losses: np.ndarray
    train_losses: np.ndarray
    noise_norms: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def perturbed_losses(self) -> np.ndarray:
        """Empirical error right after each perturbation (before retraining)."""
        return self.losses[:, 0]

    @property
    def retrained_losses(self) -> np.ndarray:
        """Empirical error after the retraining steps."""
        return self.losses[:, -1]

    @property
    def recovered(self) -> float:
        """Mean over repeats of (perturbed − retrained) / (perturbed − base): 1 when retraining
        returns to the base error, 0 when it does not help (NaN if no perturbation raised it)."""
        rise = self.perturbed_losses - self.base_loss
        with np.errstate(divide="ignore", invalid="ignore"):
            share = (self.perturbed_losses - self.retrained_losses) / rise
        share = share[rise > 0]
        return float(np.mean(share)) if share.size else float("nan")

    def plot(self, ax=None, *, train: bool = True, log: bool = False, **kwargs):
        """Loss against retraining step, one line per repeat (matplotlib); returns the axes.

        Solid lines with markers: the empirical error at ``eval_steps``; thin lines: the
        mini-batch training losses; dashed: the unperturbed error.

        Example:
            >>> import numpy as np
            >>> r = PerturbationResult(1.0, np.array([0.0, 2.0]), np.array([[3.0, 1.5]]), np.array([[2.5, 2.0]]),
            ...                        np.array([0.1]))
            >>> r.plot().get_xlabel()
            'retraining step'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
        for r in range(self.losses.shape[0]):
            c = colors[r % len(colors)]
            ax.plot(self.eval_steps, self.losses[r], "-o", color=c, ms=4, label=f"repeat {r}" if r < 8 else None,
                    **kwargs)
            if train and self.train_losses.size:
                ax.plot(np.arange(1, self.train_losses.shape[1] + 1), self.train_losses[r], color=c, lw=0.6,
                        alpha=0.5)
        ax.axhline(self.base_loss, color="k", ls="--", lw=0.8, label="unperturbed")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("retraining step")
        ax.set_ylabel("loss")
        ax.set_title(f"perturb scale {self.settings.get('scale', '?')}: recovered {self.recovered:.2f}")
        ax.legend(frameon=False, fontsize=7)
        return ax


def perturb(engine: Engine | HasEngine, optimizer: torch.optim.Optimizer | Callable[[list], torch.optim.Optimizer], scale: float = 0.1,
            steps: int = 20, repeats: int = 5, seed: int = 0, loss_fn: Callable | None = None, *,
            subnet: Selector | None = None, relative: bool = True, eval_every: int | None = None
            ) -> PerturbationResult:
    """Perturb the weights with Gaussian noise and retrain a few steps, several times (Liao & Poggio 2017).

    Each repeat starts from the model as it is, adds noise to the parameters (of ``subnet``),
    measures the empirical error, trains ``steps`` mini-batch steps on the probe's data
    (batches cycled in order, the model in train mode, autocast as the probe's dtype), and
    measures again. Each repeat's noise and retraining depend on ``(seed, r)`` only, so under
    ``torch.distributed`` (see :class:`landprobe.Sharding`) every rank returns the one-process
    result: by default the repeats are split across the ranks (repeat r on rank r mod world
    size) and gathered; with data sharding every rank runs every repeat, each training step's
    batch shared by the ranks (gradients summed before ``optimizer.step()``, a BatchNorm
    model's running statistics taken from the rank that ran the step's batch) and each
    evaluation too; with a data group the repeats are split across the groups. Random layers
    in train mode (dropout) draw other masks under data sharding, and with ``split="given"``
    BatchNorm normalises each rank's batch by its own statistics, so those retrainings are not
    one process's. Pass the plain module to the probe, not a DistributedDataParallel wrapper.
    Afterwards the model (parameters, buffers, ``requires_grad`` flags,
    ``.grad`` tensors, modes), the optimizer (its ``state`` and ``param_groups``, the very
    same objects) and the global RNG states are exactly as before.

    Noise, per parameter tensor θ_t (``relative=True``): ε_t ~ N(0, σ_t²·I) with
    σ_t = scale·‖θ_t‖ / √numel(θ_t), so E‖ε_t‖² = scale²·‖θ_t‖²: each tensor moves by about
    ``scale`` times its own norm (a tensor at zero is not moved). With ``relative=False``,
    σ_t = ``scale`` for every element. The noise comes from its own generator, seeded from
    ``(seed, repeat)``; the global RNG (used by dropout or a shuffling DataLoader during
    retraining) is seeded per repeat and restored at the end.

    Args:
        optimizer: An optimizer *factory*, ``lambda params: torch.optim.SGD(params, lr=0.01)``
            (called once per repeat with the parameters that require grad), or the user's
            optimizer itself: its state (e.g. momentum) is copied at the start of each repeat
            and the original put back at the end.
        scale: Noise scale (relative to each tensor's norm, or absolute), >= 0.
        steps: Retraining steps per repeat, >= 0.
        repeats: Number of perturbations, >= 1.
        seed: Seed of the noise and of the retraining's global RNG.
        loss_fn: Training loss ``loss_fn(model(x), y)``, default the probe's ``loss_fn``; add
            a penalty with a closure (``lambda out, y: crit(out, y) + penalty()``). The
            empirical error reported is always the probe's.
        subnet: Perturb only this subnet (training still updates what the optimizer holds).
        relative: Per-tensor relative noise (default) or absolute.
        eval_every: Also measure the empirical error every this many steps (default: only
            before and after retraining).

    Returns:
        A :class:`PerturbationResult`.

    Raises:
        ValueError: If ``scale`` < 0, ``steps`` < 0, ``repeats`` < 1, ``eval_every`` < 1, or a
            given optimizer holds no parameter of the model.
        TypeError: If ``optimizer`` is neither an optimizer nor a callable returning one.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.probes.perturb import perturb
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1)
        >>> x = torch.randn(32, 3); data = [(x, x.sum(1, keepdim=True))]   # y = x1 + x2 + x3: convex
        >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), data)
        >>> r = perturb(probe, lambda p: torch.optim.SGD(p, lr=0.1), scale=0.5, steps=30, repeats=3)
        >>> r.losses.shape, bool((r.retrained_losses < r.perturbed_losses).all())
        ((3, 2), True)
        >>> probe.loss() == r.base_loss                                # the model is as it was
        True
    """
    engine = as_engine(engine)
    model = engine.model
    _check_args(engine, scale, steps, repeats, eval_every, loss_fn)
    params = list(model.parameters())
    user_opt = _check_optimizer(optimizer, params)
    opt_saved = copy.deepcopy(optimizer.state_dict()) if isinstance(optimizer, torch.optim.Optimizer) else None
    opt_attrs = dict(vars(optimizer)) if user_opt else {}
    # an optimizer's own generators (SGLD's noise) advance in place: their states are put back too
    generators = {k: v.get_state() for k, v in opt_attrs.items() if isinstance(v, torch.Generator)}
    pnames = select(model, subnet)
    eval_steps = sorted({0, steps} | (set(range(eval_every, steps, eval_every)) if eval_every else set()))
    ranks = engine.ranks()
    mine = ranks.points(repeats)
    base: list[float] = []

    def run() -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
        repeat = _Repeat(engine, optimizer, opt_saved, pnames, eval_steps, steps)
        out = {}
        with engine.guard("perturb"):
            repeat.start = [t.detach().clone() for t in repeat.state]
            engine.set_eval_modes()
            base.append(engine.evaluate().loss)
            seeds = np.random.SeedSequence(int(seed)).generate_state(2 * repeats)
            for r in progress(mine, "perturb", enabled=engine.progress, unit="repeat"):
                out[r] = repeat(int(seeds[2 * r]), float(scale), relative, int(seeds[2 * r + 1]), loss_fn)
        return out
    try:
        done = ranks.merge(run, "perturb")
    finally:                                    # the guard restores the model; the optimizer is ours to restore
        if user_opt:
            optimizer.__dict__.clear()
            optimizer.__dict__.update(opt_attrs)
            for k, state in generators.items():
                opt_attrs[k].set_state(state)
    losses = np.stack([done[r][0] for r in range(repeats)])
    train_losses = np.stack([done[r][1] for r in range(repeats)])
    noise_norms = np.array([done[r][2] for r in range(repeats)], dtype=np.float64)
    settings = engine.settings(probe="perturb", scale=float(scale), relative=relative, steps=steps, repeats=repeats,
                               seed=int(seed), subnet=subnet if isinstance(subnet, (str, type(None))) else pnames,
                               optimizer=type(optimizer).__name__ if user_opt else "factory",
                               eval_every=eval_every, noise="per-tensor relative" if relative else "absolute",
                               ranks=ranks.teams * ranks.data_world)
    return PerturbationResult(base_loss=float(base[0]), eval_steps=np.asarray(eval_steps, dtype=np.float64),
                              losses=losses, train_losses=train_losses, noise_norms=noise_norms, settings=settings)


def _check_args(engine: Engine, scale: Any, steps: Any, repeats: Any, eval_every: Any, loss_fn: Any) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale={scale!r}; expected a finite number >= 0 (e.g. 0.1: noise of 10% of each "
                         f"tensor's norm)")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps={steps!r}; expected an integer >= 0 (retraining steps per repeat)")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats={repeats!r}; expected an integer >= 1")
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise ValueError(f"eval_every={eval_every!r}; expected None or an integer >= 1")
    train_loss = engine.loss_fn if loss_fn is None else loss_fn
    if not callable(train_loss) or isinstance(train_loss, type):
        raise TypeError(f"loss_fn must be a callable loss(out, y) instance, got {train_loss!r}")


def _check_optimizer(optimizer: Any, params: Sequence[torch.Tensor]) -> bool:
    """True for the user's optimizer (it must hold a parameter of the model), False for a factory."""
    if isinstance(optimizer, torch.optim.Optimizer):
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not any(id(p) in held for p in params):
            raise ValueError("optimizer holds no parameter of the probed model; pass the optimizer that trains "
                             "it, or a factory: lambda params: torch.optim.SGD(params, lr=0.01)")
        return True
    if isinstance(optimizer, type):
        raise TypeError(f"optimizer is the class {optimizer.__name__}; pass a factory "
                        f"(lambda params: {optimizer.__name__}(params, lr=...)) or an optimizer instance")
    if not callable(optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or a factory params -> optimizer, got "
                        f"{type(optimizer).__name__}")
    return False


def _add_noise(pnames: list[str], noisy: Sequence[torch.Tensor], seed: int, scale: float, relative: bool) -> float:
    """Add Gaussian noise to ``noisy`` in place (per-tensor relative or absolute σ); return
    ‖noise‖ / ‖θ‖ (NaN at θ = 0)."""
    vec = ParamVector({n: p.detach() for n, p in zip(pnames, noisy)})
    theta_norm = vec.norm()
    noise = vec.randn_like(seed)
    if relative:
        sig = [scale * float(t.double().norm()) / math.sqrt(max(t.numel(), 1)) for t in vec.tensors]
    else:
        sig = [scale] * len(vec)
    for e, s in zip(noise.tensors, sig):
        e.mul_(s)
    torch._foreach_add_([p.data for p in noisy], noise.tensors)
    return noise.norm() / theta_norm if theta_norm > 0 else float("nan")


class _Repeat:
    """The repeats of one call, each from the start state: noise from its own seed, the global
    RNG seeded, a fresh optimizer from the factory (or the user's with its saved state
    ``opt_saved``), retraining. A repeat returns its losses at the eval steps, its training
    losses and its relative noise norm."""

    def __init__(self, engine: Engine, optimizer: Any, opt_saved: dict | None, pnames: list[str],
                 eval_steps: list[int], steps: int):
        model = engine.model
        self.engine, self.optimizer, self.opt_saved = engine, optimizer, opt_saved
        self.params = list(model.parameters())
        self.trainable = [p for p in self.params if p.requires_grad]
        named = dict(model.named_parameters())
        self.pnames, self.noisy = pnames, [named[n] for n in pnames]
        self.eval_steps, self.steps = eval_steps, steps
        self.state = list(model.parameters()) + list(model.buffers())
        self.start: list[torch.Tensor] = []

    def __call__(self, noise_seed: int, scale: float, relative: bool, rng_seed: int, loss_fn: Callable | None
                 ) -> tuple[np.ndarray, np.ndarray, float]:
        with torch.no_grad():
            torch._foreach_copy_([t.data for t in self.state], self.start)
            noise_norm = _add_noise(self.pnames, self.noisy, noise_seed, scale, relative)
        torch.manual_seed(rng_seed)
        for p in self.params:
            p.grad = None
        losses, train_losses = np.zeros(len(self.eval_steps)), np.zeros(self.steps)
        _retrain(self.engine, self._optimizer(), loss_fn, self.eval_steps, losses, train_losses)
        return losses, train_losses, float(noise_norm)

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.opt_saved is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self.opt_saved))
            return self.optimizer
        opt = self.optimizer(self.trainable)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"the optimizer factory returned a {type(opt).__name__}, not a "
                            f"torch.optim.Optimizer; e.g. lambda params: torch.optim.SGD(params, lr=0.01)")
        return opt


def _retrain(engine: Engine, opt: torch.optim.Optimizer, loss_fn: Callable | None, eval_steps: list[int],
             losses: np.ndarray, train_losses: np.ndarray) -> None:
    """Measure, train ``len(train_losses)`` steps on the cycled data, measuring at ``eval_steps``;
    fills ``losses`` and ``train_losses`` in place."""
    engine.set_eval_modes()
    losses[0] = engine.evaluate().loss
    col = 1
    batches = engine.batch_cycle()
    for s in range(1, len(train_losses) + 1):
        part = next(batches)
        train_losses[s - 1] = engine.train_step(part, opt, loss_fn)
        if s in eval_steps:
            engine.set_eval_modes()
            losses[col] = engine.evaluate().loss
            col += 1

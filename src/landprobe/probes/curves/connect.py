"""Curves of low error between two minima (Garipov et al. 2018).

``probe.connect(a, b)`` fits a Bezier curve or a polygonal chain with trainable bend points
between two parameter sets ``a`` and ``b`` of the probed model, then measures the empirical
error along the fitted curve through the probe's engine. ``method="neb"`` hands over to
AutoNEB (:func:`landprobe.probes.curves.neb.auto_neb`), which returns the same :class:`Path`.

The model is called through ``torch.func.functional_call`` with the curve's parameters: no
layer of the user's model is rewritten, and the model is restored exactly afterwards.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landprobe.common.deprecation import renamed_keywords
from landprobe.common.checks import check_int, check_positive
from landprobe.common.io import atomic_torch_save
from landprobe.common.tempfiles import remove_stale_temps
from landprobe.engine import Engine, HasEngine, as_engine, progress
from landprobe.params import ParamVector
from landprobe.probes.curves.common import (all_finite, bezier_coeffs, diverged, endpoints, evaluate_path, grid,
                                            make_optimizer, polychain_coeffs, read_checkpoint, resume_connect)
from landprobe.probes.curves.neb import auto_neb
from landprobe.probes.curves.path import Path

__all__ = ["connect"]


@renamed_keywords(eval_points="points")
def connect(engine: Engine | HasEngine, a: Any, b: Any, method: str = "bezier", bends: int = 1, steps: int = 1000, lr: float = 0.01,
            optimizer: str = "sgd", *, momentum: float = 0.9, t_samples: int = 1, points: int = 61,
            seed: int = 0, checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
            **neb_kwargs: Any) -> Path:
    """Fit a low-error curve between ``a`` and ``b`` and measure the error along it (Garipov et al. 2018).

    The curve φ(t), t in [0, 1], starts at ``a`` and ends at ``b`` (both fixed) and bends
    through trainable points, initialised evenly on the segment (one bend: the midpoint):

    - ``"bezier"``: φ(t) = Σ_i C(n, i)·tⁱ(1 − t)ⁿ⁻ⁱ·P_i with P_0 = a, P_1..P_bends the bends,
      P_n = b, n = bends + 1 (one bend: Garipov et al.'s quadratic Bezier curve);
    - ``"polychain"``: straight segments from a through the bends to b, the i-th bend at
      t = i / (bends + 1);
    - ``"neb"``: AutoNEB (Draxler et al. 2018), see :func:`landprobe.probes.curves.neb.auto_neb`;
      ``bends`` is ignored, ``steps``, ``lr``, ``momentum``, ``points`` and ``seed`` are
      passed on with the keyword arguments ``neb_kwargs``.

    Training minimises E_{t ~ U(0, 1)} L(φ(t)): each of ``steps`` steps draws ``t_samples``
    values of t (from its own generator seeded with ``seed``; the global RNG is untouched),
    takes the next batch of the probe's data (cycled) and averages ``loss_fn`` over the t's.
    The model is called with ``torch.func.functional_call`` on φ(t): no layer is rewritten,
    and gradients flow to the bends only. During training the modules are in eval mode
    (dropout off) except BatchNorm, which normalises with each batch's statistics (as in
    training); the probe's ``bn`` mode applies to the measurement afterwards, where
    ``bn="recompute"`` re-estimates the statistics at every evaluated t (recommended for
    BatchNorm networks; under ``bn="eval"`` the floating buffers follow the chord).

    All parameters of the model move (including those with ``requires_grad=False``); if
    ``a`` and ``b`` coincide no training is done and the path is that single point.

    Under data sharding (``landprobe.Sharding(data=True)``) every rank fits the same bends:
    each step's batch is shared by the ranks (see :meth:`~landprobe.engine.Engine.batch_cycle`),
    the loss and gradients are summed before the optimizer step, and every rank returns the
    one-process path (to float rounding).

    Args:
        a, b: Endpoints: state_dicts, modules or ParamVectors of the probed model.
        method: ``"bezier"``, ``"polychain"`` or ``"neb"``.
        bends: Number of trainable bend points, >= 1.
        steps: Training steps, >= 0 (0: the straight segment).
        lr: Learning rate.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD momentum.
        t_samples: Values of t drawn per step, >= 1.
        points: Evenly spaced t at which the fitted curve is measured (the polychain's
            knots are added), >= 2.
        seed: Seed of the t draws.
        checkpoint: A file for long runs (``"bezier"``/``"polychain"``): every
            ``checkpoint_every`` steps the training state (bends, optimizer state, the t
            generator, step count, losses so far) is written to it atomically; a call that
            finds the file resumes from it and gives the result an uninterrupted call would
            (the data iterator is advanced to the same batch). The settings and a fingerprint
            of the endpoints must match (else ``ValueError``). The file is kept after the
            run; it loads with ``torch.load(path, weights_only=True)``. ``"neb"`` checkpoints
            after every cycle instead (see :func:`~landprobe.probes.curves.neb.auto_neb`).
            Under ``torch.distributed`` rank 0 alone writes it and every rank resumes from
            it, so it must lie on a file system all ranks share.
        checkpoint_every: Steps between checkpoints, >= 1 (bezier/polychain).

    Returns:
        A :class:`Path`; ``losses[0] == probe.loss(a)`` and ``losses[-1] == probe.loss(b)``.
        The model is restored exactly afterwards, also on an exception or KeyboardInterrupt.

    Raises:
        ValueError: For an unknown ``method`` or ``optimizer``, ``bends`` < 1, ``steps`` < 0,
            ``t_samples`` < 1, ``points`` < 2, a non-positive ``lr``, or endpoints that
            do not fit the model.
        FitDivergedError: If a step's training loss (summed over the ranks under data
            sharding) is not finite, or the last step leaves non-finite bends; the message
            names the step, the learning rate and the last checkpoint kept.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.probes import toys
        >>> from landprobe.probes.curves.connect import connect
        >>> valley = toys.CurvyValley()                       # minima at (∓5π/2, ∓1), saddle 1.0
        >>> probe = toys.toy_probe(valley)
        >>> a, b = valley.minima()
        >>> straight = probe.interpolate(a, b, points=401)
        >>> round(straight.barrier, 2)                        # the segment climbs to 2.977
        2.98
        >>> path = connect(probe, a, b, method="polychain", bends=5, steps=300, lr=0.01)
        >>> bool(path.max_loss < 1.3), bool(path.losses[0] == probe.loss(a))
        (True, True)
    """
    engine = as_engine(engine)
    if method == "neb":
        return auto_neb(engine, a, b, steps=steps, lr=lr, momentum=momentum, points=points, seed=seed,
                        checkpoint=checkpoint, **neb_kwargs)
    if neb_kwargs:
        raise TypeError(f"connect() got unexpected keyword arguments {sorted(neb_kwargs)} (they are AutoNEB's: "
                        f"pass method='neb')")
    if method not in ("bezier", "polychain"):
        raise ValueError(f"method={method!r}; expected 'bezier' (Garipov et al.), 'polychain' or 'neb' (AutoNEB)")
    check_int("bends", bends, 1, "number of trainable bend points")
    check_int("steps", steps, 0, "training steps")
    check_int("t_samples", t_samples, 1, "values of t per step")
    check_int("points", points, 2, "points of the measured grid, both ends included")
    check_positive("lr", lr, "the learning rate")
    check_int("checkpoint_every", checkpoint_every, 1, "steps between checkpoints")
    check_int("seed", seed, 0, "seed of the t draws")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer={optimizer!r}; expected 'sgd' (with momentum) or 'adam'")

    names, va, vb, pnames, _ = endpoints(engine, a, b)
    pa, pb = va.subset(pnames), vb.subset(pnames)
    settings = engine.settings(probe="connect", method=method, bends=bends, steps=steps, lr=lr, optimizer=optimizer,
                               momentum=momentum, t_samples=t_samples, points=points, seed=seed)
    curve = _Curve(method, pa, pb, bends)
    fit = _FitOptions(steps, lr, optimizer, momentum, t_samples, seed, checkpoint, checkpoint_every)
    with engine.guard(f"connect ({method})"):
        if not curve.degenerate and steps > 0:
            settings["train_losses"] = _train(engine, curve, fit, settings)
        else:
            settings["train_losses"] = []
        return evaluate_path(engine, names=names, va=va, vb=vb, pnames=pnames, points=curve.points(),
                             coeffs=curve.coeffs, ts=grid(points, curve.knots), knots=curve.knots,
                             method=method, settings=settings)


class _Curve:
    """The curve's points [a, bends..., b] (bends initialised evenly on the segment) and its
    coefficients c_i(t): θ(t) = Σ_i c_i(t)·points[i]."""

    def __init__(self, method: str, pa: ParamVector, pb: ParamVector, bends: int):
        self.method = method
        self.n_points = bends + 2
        self.ends = {0: pa.tensors, self.n_points - 1: pb.tensors}
        self.pa, self.pb = pa, pb
        self.bends = [pa.lerp(pb, i / (self.n_points - 1)).clone() for i in range(1, self.n_points - 1)]
        self.degenerate = (pa - pb).norm() == 0.0
        self.knots = np.zeros(0) if method == "bezier" else np.linspace(0.0, 1.0, self.n_points)
        self._point: list[Tensor] | None = None

    def points(self) -> list[ParamVector]:
        return [self.pa, *self.bends, self.pb]

    def coeffs(self, t: float) -> list[tuple[int, float]]:
        if self.degenerate:                   # a single point: no rounding of coefficients summing to 1
            return [(0, 1.0)]
        if self.method == "bezier":
            return bezier_coeffs(self.n_points - 1, t)
        return polychain_coeffs(self.knots, t)

    def point(self, t: float) -> list[Tensor]:
        """θ(t) of a polychain without a graph, written into buffers kept from call to call
        (leaves for the gradient at θ(t); :meth:`accumulate` hands it to the bends)."""
        if self._point is None:
            self._point = [x.detach().clone().requires_grad_(True) for x in self.pa.tensors]
        cs = self.coeffs(t)
        src = [self.ends[i] if i in self.ends else self.bends[i - 1].tensors for i, _ in cs]
        with torch.no_grad():
            for k, buf in enumerate(self._point):
                if len(cs) == 1:
                    buf.copy_(src[0][k])
                else:
                    torch.lerp(src[0][k], src[1][k], cs[1][1], out=buf)
        return self._point

    def accumulate(self, t: float, grads: Sequence[Tensor | None]) -> None:
        """Add the gradient at θ(t) of a polychain, times each bend's coefficient, to the bends' ``.grad``."""
        with torch.no_grad():
            for i, c in self.coeffs(t):
                if i in self.ends:
                    continue
                for p, g in zip(self.bends[i - 1].tensors, grads):
                    if g is None:
                        continue
                    if p.grad is None:
                        p.grad = g * c
                    else:
                        p.grad.add_(g, alpha=c)

    def theta(self, t: float) -> list[Tensor]:
        """θ(t) with the autograd graph to the bends."""
        theta: list[Tensor] | None = None
        for i, c in self.coeffs(t):
            src = self.ends[i] if i in self.ends else self.bends[i - 1].tensors
            term = torch._foreach_mul(src, c)
            theta = list(term) if theta is None else list(torch._foreach_add(theta, term))
        assert theta is not None
        return theta


@dataclass(frozen=True)
class _FitOptions:
    steps: int
    lr: float
    optimizer: str
    momentum: float
    t_samples: int
    seed: int
    checkpoint: str | os.PathLike | None
    checkpoint_every: int


def _train(engine: Engine, curve: _Curve, fit: _FitOptions, settings: dict[str, Any]) -> list[float]:
    """Minimise E_t L(θ(t)) over the bends; resumable from ``fit.checkpoint``. Returns the
    training losses, one per step. Runs inside the engine's guard."""
    leaves = [t.requires_grad_(True) for v in curve.bends for t in v.tensors]
    opt = make_optimizer(fit.optimizer, leaves, fit.lr, fit.momentum)
    gen = torch.Generator().manual_seed(int(fit.seed))
    batches = engine.batch_cycle()
    pa, pb = curve.pa, curve.pb
    fingerprint = {k: settings[k] for k in ("method", "bends", "steps", "lr", "optimizer", "momentum",
                                             "t_samples", "seed")}
    fingerprint.update(n=int(sum(t.numel() for t in pa.tensors)), norm_a=float(pa.norm()),
                       norm_b=float(pb.norm()), dot_ab=float(pa.dot(pb)))
    train_losses: list[float] = []
    if fit.checkpoint is not None and engine.writes_files:
        remove_stale_temps(fit.checkpoint)      # left by a run killed while writing the checkpoint
    first = read_checkpoint(engine, fit.checkpoint,
                            lambda: resume_connect(fit.checkpoint, fingerprint, leaves, opt, gen, train_losses),
                            lambda step: f"step {step}")
    if first is not None:
        for _ in range(first):                 # the batch the interrupted run would take next
            next(batches)
        settings["resumed_at_step"] = first
    first = first or 0
    kept = None if fit.checkpoint is None or not first else f"step {first}"

    def fail(what: str, step: int) -> Exception:
        return diverged(f"connect ({curve.method})", what, step=step, steps=fit.steps, lr=fit.lr,
                        checkpoint=fit.checkpoint, kept=kept)
    engine.set_fit_modes()
    unchanged = engine.unchanged_check()          # the fit writes only its bends, never the model
    try:
        for step in progress(range(first, fit.steps), f"connect ({curve.method})", enabled=engine.progress,
                             unit="step"):
            unchanged()
            part = next(batches)
            opt.zero_grad(set_to_none=True)
            ts = torch.rand(fit.t_samples, generator=gen, dtype=torch.float64).tolist()

            def backward(ts: list[float] = ts, part: Any = part) -> float:
                total = 0.0
                for t in ts:
                    point = curve.point(t) if curve.method == "polychain" else None
                    with torch.enable_grad():
                        loss = engine.fit_loss(curve.theta(t) if point is None else point, part) / fit.t_samples
                        if loss.requires_grad and point is None:
                            loss.backward()
                        elif loss.requires_grad:
                            curve.accumulate(t, torch.autograd.grad(loss, point, allow_unused=True))
                    total += float(loss.detach())
                return total
            total = engine.reduce_step(leaves, backward)     # summed over the ranks: all of them raise
            if not math.isfinite(total):
                raise fail(f"the training loss became {total}", step + 1)
            opt.step()
            unchanged()
            train_losses.append(total)
            if fit.checkpoint is not None and ((step + 1) % fit.checkpoint_every == 0 or step + 1 == fit.steps):
                def save(done: int = step + 1, path: str | os.PathLike = fit.checkpoint) -> None:
                    atomic_torch_save({"fingerprint": fingerprint, "step": done,
                                       "bends": [t.detach().clone() for t in leaves], "optimizer": opt.state_dict(),
                                       "generator": gen.get_state(), "train_losses": list(train_losses)}, path)
                engine.write_files(save, "writing the checkpoint")
                kept = f"step {step + 1}"
        if not all_finite(leaves):                    # the last update, which no later loss has seen
            raise fail("the bends became non-finite", fit.steps)
    finally:
        for t in leaves:
            t.requires_grad_(False)
            t.grad = None
    return train_losses

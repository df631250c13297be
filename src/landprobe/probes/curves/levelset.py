"""Level-set connectivity by Dynamic String Sampling (Freeman & Bruna 2017, Algorithm 1).

Are two parameter sets ``a`` and ``b`` with loss below a threshold L0 connected by a path
that stays below L0? Dynamic String Sampling keeps a string of beads from ``a`` to ``b``.
Where the straight segment between two consecutive beads rises above L0, it takes the
segment's midpoint, runs gradient descent from it until the loss falls below L0, and inserts
the result as a new bead, then works on both halves; it stops when every segment stays below
L0 (connected) or when a descent or the budget fails (not found). A descent whose loss
becomes non-finite is no such verdict: it raises ``FitDivergedError``. The normalised
geodesic length (the string's length over ‖a − b‖) tells how far the level set bends.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landprobe.common.checks import check_int, check_positive
from landprobe.common.io import atomic_torch_save
from landprobe.common.tempfiles import remove_stale_temps
from landprobe.common.results import Result, require_matplotlib
from landprobe.engine import Engine, HasEngine, Progress, as_engine
from landprobe.params import ParamVector
from landprobe.probes.curves.common import load_checkpoint
from landprobe.probes.curves.common import (check_fingerprint, diverged, endpoints, make_optimizer,
                                            read_checkpoint)

__all__ = ["LevelSet", "level_set"]


@dataclass(frozen=True, eq=False)
class LevelSet(Result):
    """The outcome of a level-set connectivity search between ``a`` and ``b`` at ``threshold``.

    Attributes:
        connected: True if a string of beads was found along which every measured point has
            loss <= ``threshold``; False if none was found within the budget (this does not
            prove the level set disconnected).
        reason: Why the search stopped without a path ('' when connected).
        threshold: The level L0.
        loss_a, loss_b: The endpoints' losses.
        ts: Position along the string (normalised arc length, 0 at ``a``, 1 at ``b``) of every
            measured point: the beads and ``check_points`` points inside each segment.
        losses: Empirical error at ``ts``.
        bead_ts, bead_losses: Positions and losses of the beads (``a`` and ``b`` included).
        length: Length of the string in parameter space, Σ‖bead_{i+1} − bead_i‖ (parameters only).
        normalized_length: ``length / ‖a − b‖`` (1: the segment; NaN when a == b).
        settings: threshold, steps, lr, optimizer, budget, bn, dtype, version, ...
        beads: The beads as :class:`~landprobe.ParamVector` (memory only, not in the JSON;
            ``None`` after :meth:`load`).

    Example:
        >>> import numpy as np
        >>> from landprobe.probes.curves.levelset import LevelSet
        >>> r = LevelSet(True, "", 1.0, 0.2, 0.1, np.array([0, 0.5, 1.0]), np.array([0.2, 0.9, 0.1]),
        ...              np.array([0.0, 1.0]), np.array([0.2, 0.1]), 3.0, 1.0)
        >>> r.connected, r.max_loss
        (True, 0.9)
    """

    # checked by Result.from_dict when loading
    _same_length = (("ts", "losses"), ("bead_ts", "bead_losses"))
    connected: bool
    reason: str
    threshold: float
    loss_a: float
    loss_b: float
    ts: np.ndarray
    losses: np.ndarray
    bead_ts: np.ndarray
    bead_losses: np.ndarray
    length: float
    normalized_length: float
    settings: dict[str, Any] = field(default_factory=dict)
    beads: Any = field(default=None, repr=False)

    @property
    def max_loss(self) -> float:
        """The highest loss measured along the string."""
        return float(np.max(self.losses))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("beads", None)
        return out

    def plot(self, ax=None, **kwargs):
        """Loss along the string, beads marked, threshold dashed (matplotlib); returns the axes.

        Example:
            >>> import numpy as np
            >>> r = LevelSet(False, "budget", 1.0, 0.2, 0.1, np.array([0, 0.5, 1.0]), np.array([0.2, 1.5, 0.1]),
            ...              np.array([0.0, 1.0]), np.array([0.2, 0.1]), 3.0, 1.0)
            >>> r.plot().get_xlabel()
            'position along the string'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(self.ts, self.losses, label=kwargs.pop("label", "string"), **kwargs)
        ax.plot(self.bead_ts, self.bead_losses, "o", ms=4, color="C1", label="beads")
        ax.axhline(self.threshold, color="k", ls="--", lw=0.8, label="threshold")
        ax.set_xlabel("position along the string")
        ax.set_ylabel("loss")
        state = "connected" if self.connected else "not found"
        ax.set_title(f"level {self.threshold:.4g}: {state}, length {self.normalized_length:.3g}")
        ax.legend(frameon=False)
        return ax


def level_set(engine: Engine | HasEngine, a: Any, b: Any, threshold: float, *, steps: int = 500, lr: float = 0.01,
              optimizer: str = "sgd", momentum: float = 0.0, margin: float = 0.25, pull: float = 0.0,
              check_points: int = 9, check_every: int = 10, max_beads: int = 64, max_depth: int = 12,
              checkpoint: str | os.PathLike | None = None) -> LevelSet:
    """Search a path from ``a`` to ``b`` inside the level set {θ : L(θ) <= threshold} (Freeman & Bruna 2017).

    Dynamic String Sampling (their Algorithm 1). The string starts as the beads ``[a, b]``.
    Going from ``a`` towards ``b``, each segment between consecutive beads is measured through
    the engine at ``check_points`` evenly spaced interior points. A segment that stays
    <= ``threshold`` is done. Otherwise its midpoint m is the start of a descent: up to
    ``steps`` optimizer steps on the probe's loss (one batch per step, cycled;
    ``torch.func.functional_call``, BatchNorm on batch statistics, dropout off), optionally
    pulled towards m by ``pull/2·‖θ − m‖²``; every ``check_every`` steps (and before the first)
    the empirical error is measured on all the data, and the descent stops once it is
    <= the target ``threshold − margin·(threshold − min(L(a), L(b)))`` (below the level,
    so that the new segments have room). The result becomes a bead between the two, and
    the search goes on with the left half. Floating buffers (``bn="eval"``) of a bead are the
    mean of its neighbours' and do not descend.

    Under data sharding (``landprobe.Sharding(data=True)``) each descent step's batch is shared
    by the ranks and its gradient summed, and every loss the search decides on (segment
    checks, the descent's stopping rule) is the whole data's, so every rank takes the same
    decisions and returns one process's result (to float rounding).

    Args:
        a, b: Endpoints with losses <= ``threshold``: state_dicts, modules or ParamVectors.
        threshold: The level L0.
        steps: Descent budget per midpoint, >= 1.
        lr: Learning rate of the descent.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD momentum.
        margin: Fraction of the room between the lower endpoint and the level that a descent
            must reach below the level, in [0, 1).
        pull: Strength of the pull towards the midpoint (0: plain descent, as Freeman & Bruna).
        check_points: Points measured inside each segment, >= 1.
        check_every: Descent steps between full-data checks, >= 1.
        max_beads: Budget: most beads in the string (endpoints included), >= 2.
        max_depth: Budget: most nested halvings of a segment, >= 1.
        checkpoint: A file for long searches: after every accepted bead the string (beads,
            their losses and depths), the search position and the number of batches used are
            written to it atomically; a call that finds it resumes there and returns what an
            uninterrupted call would. Settings and an endpoint fingerprint must match (else
            ``ValueError``); the file is kept and loads with ``torch.load(path, weights_only=True)``.
            Under ``torch.distributed`` rank 0 alone writes it and every rank resumes from it
            (a file system all ranks share).

    Returns:
        A :class:`LevelSet`. ``connected=False`` means "not found within the budget" (the
        ``reason`` says which budget, or which descent failed); the string found so far is
        reported. The model is restored exactly afterwards.

    Raises:
        ValueError: If an endpoint's loss is above ``threshold``, or for out-of-range budgets,
            ``lr``, ``margin``, ``pull`` or ``optimizer``.
        FitDivergedError: If a descent meets a non-finite loss (a step's batch loss or a
            full-data check, summed over the ranks under data sharding). A descent that ends
            above the target is evidence of "not found" (``connected=False``); a diverged
            one says only that ``lr`` is too large for this loss, so it is an error, not a
            verdict. The message names the descent, the step, the learning rate and the last
            checkpoint kept.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.probes import toys
        >>> from landprobe.probes.curves.levelset import level_set
        >>> p = toys.two_unit_relu()                    # minima a, b; every path crosses loss 0.5
        >>> probe = lp.LandscapeProbe(p["model"], p["loss_fn"], p["data"])
        >>> r = level_set(probe, p["a"], p["b"], threshold=0.3, steps=100, lr=0.1)
        >>> r.connected, r.loss_a, r.loss_b
        (False, 0.0, 0.0)
        >>> same = level_set(probe, p["a"], p["a"], threshold=0.3)   # a bead-free string of length 0
        >>> same.connected, same.length
        (True, 0.0)
    """
    engine = as_engine(engine)
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)):
        raise ValueError(f"threshold={threshold!r}; expected a finite loss level")
    check_int("steps", steps, 1, "descent steps per midpoint")
    check_positive("lr", lr, "the descent's learning rate")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer={optimizer!r}; expected 'sgd' (with momentum) or 'adam'")
    if not (isinstance(margin, (int, float)) and 0 <= margin < 1):
        raise ValueError(f"margin={margin!r}; expected a fraction in [0, 1) (0.25: a quarter of the room below the "
                         f"level)")
    if not (isinstance(pull, (int, float)) and math.isfinite(pull) and pull >= 0):
        raise ValueError(f"pull={pull!r}; expected a finite number >= 0 (0: plain descent)")
    check_int("check_points", check_points, 1, "points measured inside each segment")
    check_int("check_every", check_every, 1, "descent steps between checks")
    check_int("max_beads", max_beads, 2, "beads in the string, endpoints included")
    check_int("max_depth", max_depth, 1, "nested halvings")

    names, va, vb, pnames, _ = endpoints(engine, a, b)
    with engine.guard("level_set"):
        la, lb = engine.evaluate_at(va).loss, engine.evaluate_at(vb).loss
        for what, val in (("a", la), ("b", lb)):
            if val > threshold:
                raise ValueError(f"the loss at {what} is {val:.6g} > threshold={threshold!r}: both endpoints must lie "
                                 f"in the level set; raise the threshold above max(L(a), L(b)) = {max(la, lb):.6g}")
        target = threshold - margin * (threshold - min(la, lb))
        descent = _Descent(steps, lr, optimizer, momentum, pull, check_every, target)
        search = _Search(engine, names, len(pnames), check_points, descent)
        fingerprint = {"threshold": float(threshold), "steps": steps, "lr": float(lr), "optimizer": optimizer,
                       "momentum": float(momentum), "margin": float(margin), "pull": float(pull),
                       "check_points": check_points, "check_every": check_every, "max_beads": max_beads,
                       "max_depth": max_depth, "n": int(sum(t.numel() for t in va.tensors)),
                       "norm_a": float(va.norm()), "norm_b": float(vb.norm()), "dot_ab": float(va.dot(vb))}
        string = _String([va, vb], [la, lb], [0, 0])
        if checkpoint is not None and engine.writes_files:
            remove_stale_temps(checkpoint)          # left by a run killed while writing the checkpoint
        resumed = read_checkpoint(engine, checkpoint, lambda: string.resume(checkpoint, fingerprint, va, vb, names),
                                  lambda descents: f"{descents} descents, {string.consumed} batches")
        if resumed is not None:
            search.kept = f"after {resumed} descents"
            for _ in range(string.consumed):         # the batch the interrupted search would take next
                next(search.batches)
        search.consumed = string.consumed
        search.checkpoint = checkpoint
        connected, reason = search.run(string, threshold, max_beads, max_depth, checkpoint, fingerprint)
        ts, losses = search.measured(string, pnames)
    length, bead_ts = string.arc(pnames)
    ab = (va.subset(pnames) - vb.subset(pnames)).norm()
    settings = engine.settings(probe="level_set", threshold=threshold, target=target, steps=steps, lr=lr,
                               optimizer=optimizer, momentum=momentum, margin=margin, pull=pull,
                               check_points=check_points, check_every=check_every, max_beads=max_beads,
                               max_depth=max_depth, descents=string.descents,
                               **({"resumed_after_descents": resumed} if resumed is not None else {}))
    return LevelSet(connected=connected, reason=reason, threshold=float(threshold), loss_a=la, loss_b=lb,
                    ts=ts, losses=losses, bead_ts=bead_ts, bead_losses=np.array(string.losses),
                    length=length, normalized_length=length / ab if ab > 0 else float("nan"), settings=settings,
                    beads=tuple(string.beads))


@dataclass(frozen=True)
class _Descent:
    steps: int
    lr: float
    optimizer: str
    momentum: float
    pull: float
    check_every: int
    target: float


@dataclass
class _String:
    """The beads, their losses and depths (nested halvings), and the search's position."""

    beads: list[ParamVector]
    losses: list[float]
    depth: list[int]
    position: int = 0
    descents: int = 0
    consumed: int = 0

    def resume(self, path: Any, fingerprint: dict[str, Any], va: ParamVector, vb: ParamVector,
               names: list[str]) -> int:
        state = load_checkpoint(path, "level_set()")
        check_fingerprint(path, state["fingerprint"], fingerprint, "level_set()")
        self.beads = [va] + [ParamVector._wrap(list(names), list(ts)) for ts in state["interior"]] + [vb]
        self.losses, self.depth = list(state["bead_losses"]), list(state["depth"])
        self.position, self.descents = int(state["position"]), int(state["descents"])
        self.consumed = int(state["consumed"])
        return self.descents

    def save(self, path: Any, fingerprint: dict[str, Any], consumed: int) -> None:
        atomic_torch_save({"fingerprint": fingerprint, "position": self.position, "descents": self.descents,
                           "consumed": consumed, "bead_losses": self.losses, "depth": self.depth,
                           "interior": [[t.detach().clone() for t in bd.tensors] for bd in self.beads[1:-1]]}, path)

    def arc(self, pnames: list[str]) -> tuple[float, np.ndarray]:
        """The string's length (parameters only) and the beads' normalised arc-length positions."""
        dists = [(self.beads[j + 1].subset(pnames) - self.beads[j].subset(pnames)).norm()
                 for j in range(len(self.beads) - 1)]
        length = float(sum(dists))
        cum = np.concatenate([[0.0], np.cumsum(dists)]) / length if length > 0 \
            else np.linspace(0.0, 1.0, len(self.beads))
        cum[-1] = 1.0
        return length, cum


class _Search:
    """Dynamic String Sampling through the engine: segments measured, midpoints descended."""

    def __init__(self, engine: Engine, names: list[str], n_params: int, check_points: int, descent: _Descent):
        self.engine, self.names, self.n_params, self.descent = engine, names, n_params, descent
        self.s = np.linspace(0.0, 1.0, check_points + 2)
        self.batches = engine.batch_cycle()
        self.checked: dict[tuple[int, int], np.ndarray] = {}
        self.consumed = 0
        self.checkpoint: Any = None
        self.kept: str | None = None                 # what the last checkpoint written holds

    def segment(self, u: ParamVector, v: ParamVector) -> np.ndarray:
        ut, vt = u.tensors, v.tensors

        def writer(al: float) -> Callable[[list[Tensor]], None]:
            def write(targets: list[Tensor]) -> None:
                torch._foreach_copy_(targets, ut)
                torch._foreach_lerp_(targets, vt, al)
            return write
        with self.engine.quiet():
            evals = self.engine.sweep(self.names, [writer(float(al)) for al in self.s[1:-1]], "level set")
        return np.array([e.loss for e in evals])

    def descend(self, m: ParamVector, where: str = "") -> tuple[bool, float, int, ParamVector]:
        """Descend from ``m`` until the full-data loss is at most the target, or the budget ends.
        Raises ``FitDivergedError`` on a non-finite loss (``where``: the descent, for the message)."""
        d, engine = self.descent, self.engine

        def check(value: float, what: str, step: int) -> None:
            if not math.isfinite(value):              # a global value: every rank raises
                raise diverged("level_set", f"{what} became {value}", step=step, steps=d.steps, lr=d.lr,
                               checkpoint=self.checkpoint, kept=self.kept, where=where,
                               adam=d.optimizer != "adam")
        theta = m.clone()
        leaves = theta.tensors[:self.n_params]
        anchor = [t.clone() for t in leaves]
        opt = make_optimizer(d.optimizer, leaves, d.lr, d.momentum)
        loss = engine.evaluate_at(theta).loss
        check(loss, "the full-data loss at the midpoint (before the descent)", 0)
        done = 0
        while loss > d.target and done < d.steps:
            engine.set_fit_modes()
            unchanged = engine.unchanged_check()  # new after each full-data check (it restores the model)
            for _ in range(min(d.check_every, d.steps - done)):
                value, grads = engine.fit_loss_and_grad(leaves, next(self.batches))
                self.consumed += 1
                check(value, "the descent's batch loss", done + 1)
                if d.pull:
                    torch._foreach_add_(grads, torch._foreach_sub(leaves, anchor), alpha=d.pull)
                for p, g in zip(leaves, grads):
                    p.grad = g
                opt.step()
                done += 1
            unchanged()
            loss = engine.evaluate_at(theta).loss
            check(loss, "the descent's full-data loss", done)
        for p in leaves:
            p.grad = None
        return loss <= d.target, loss, done, theta

    def run(self, string: _String, threshold: float, max_beads: int, max_depth: int, checkpoint: Any,
            fingerprint: dict[str, Any]) -> tuple[bool, str]:
        """Walk the string from a to b, splitting segments that rise above the level."""
        beads = string.beads
        with Progress("level set (beads)", None, enabled=self.engine.progress, unit="bead") as bar:
            while string.position < len(beads) - 1:
                i = string.position
                seg = self.segment(beads[i], beads[i + 1])
                self.checked[(id(beads[i]), id(beads[i + 1]))] = seg
                if seg.max() <= threshold:
                    string.position += 1
                    continue
                d = max(string.depth[i], string.depth[i + 1]) + 1
                if len(beads) >= max_beads:
                    return False, f"max_beads={max_beads} reached with segments still above the threshold"
                if d > max_depth:
                    return False, (f"max_depth={max_depth} reached: the segment between beads {i} and {i + 1} "
                                   f"still rises to {seg.max():.6g}")
                where = f" of descent {string.descents + 1} (from the midpoint of beads {i} and {i + 1})"
                ok, loss, done, bead = self.descend(beads[i].lerp(beads[i + 1], 0.5), where)
                string.descents += 1
                if not ok:
                    return False, (f"descent from the midpoint of beads {i} and {i + 1} ended at loss {loss:.6g} > "
                                   f"target {self.descent.target:.6g} after {done} steps")
                beads.insert(i + 1, bead)
                string.losses.insert(i + 1, loss)
                string.depth.insert(i + 1, d)
                if checkpoint is not None:
                    self.engine.write_files(lambda: string.save(checkpoint, fingerprint, self.consumed),
                                             "writing the checkpoint")
                    self.kept = f"after {string.descents} descents"
                bar.update()
        return True, ""

    def measured(self, string: _String, pnames: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every measured point of the string (beads and segment checks) at its arc-length position."""
        _, cum = string.arc(pnames)
        s = self.s
        ts, losses = [0.0], [string.losses[0]]
        for j in range(len(string.beads) - 1):
            key = (id(string.beads[j]), id(string.beads[j + 1]))
            seg = self.checked[key] if key in self.checked else self.segment(string.beads[j], string.beads[j + 1])
            ts += list(cum[j] + (cum[j + 1] - cum[j]) * s[1:-1]) + [float(cum[j + 1])]
            losses += list(seg) + [string.losses[j + 1]]
        return np.array(ts), np.array(losses)

"""Level-set connectivity by Dynamic String Sampling (Freeman & Bruna 2017, Algorithm 1).

Are two parameter sets ``a`` and ``b`` with loss below a threshold L0 connected by a path
that stays below L0? Dynamic String Sampling keeps a string of beads from ``a`` to ``b``.
Where the straight segment between two consecutive beads rises above L0, it takes the
segment's midpoint, runs gradient descent from it until the loss falls below L0, and inserts
the result as a new bead, then works on both halves; it stops when every segment stays below
L0 (connected) or when a descent or the budget fails (not found). The normalised geodesic
length (the string's length over ‖a − b‖) tells how far the level set bends.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path as _FilePath
from typing import Any

import numpy as np
import torch

from landprobe._io import atomic_torch_save
from landprobe._results import Result, require_matplotlib
from landprobe.params import ParamVector
from landprobe.probes._engine import ModelGuard
from landprobe.probes.connect import (_check_fingerprint, _check_int, _check_positive, _endpoints, _Functional, _make_optimizer,
                                      _quiet)

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
        >>> from landprobe.probes.levelset import LevelSet
        >>> r = LevelSet(True, "", 1.0, 0.2, 0.1, np.array([0, 0.5, 1.0]), np.array([0.2, 0.9, 0.1]),
        ...              np.array([0.0, 1.0]), np.array([0.2, 0.1]), 3.0, 1.0)
        >>> r.connected, r.max_loss
        (True, 0.9)
    """

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


def level_set(self, a: Any, b: Any, threshold: float, *, steps: int = 500, lr: float = 0.01,
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

    Returns:
        A :class:`LevelSet`. ``connected=False`` means "not found within the budget" (the
        ``reason`` says which budget, or which descent failed); the string found so far is
        reported. The model is restored exactly afterwards.

    Raises:
        ValueError: If an endpoint's loss is above ``threshold``, or for out-of-range budgets,
            ``lr``, ``margin``, ``pull`` or ``optimizer``.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.probes import toys
        >>> from landprobe.probes.levelset import level_set
        >>> p = toys.two_unit_relu()                    # minima a, b; every path crosses loss 0.5
        >>> probe = lp.LandscapeProbe(p["model"], p["loss_fn"], p["data"])
        >>> r = level_set(probe, p["a"], p["b"], threshold=0.3, steps=100, lr=0.1)
        >>> r.connected, r.loss_a, r.loss_b
        (False, 0.0, 0.0)
        >>> same = level_set(probe, p["a"], p["a"], threshold=0.3)   # a bead-free string of length 0
        >>> same.connected, same.length
        (True, 0.0)
    """
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)):
        raise ValueError(f"threshold={threshold!r}; expected a finite loss level")
    _check_int("steps", steps, 1, "descent steps per midpoint")
    _check_positive("lr", lr, "the descent's learning rate")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer={optimizer!r}; expected 'sgd' (with momentum) or 'adam'")
    if not (isinstance(margin, (int, float)) and 0 <= margin < 1):
        raise ValueError(f"margin={margin!r}; expected a fraction in [0, 1) (0.25: a quarter of the room below the "
                         f"level)")
    if not (isinstance(pull, (int, float)) and math.isfinite(pull) and pull >= 0):
        raise ValueError(f"pull={pull!r}; expected a finite number >= 0 (0: plain descent)")
    _check_int("check_points", check_points, 1, "points measured inside each segment")
    _check_int("check_every", check_every, 1, "descent steps between checks")
    _check_int("max_beads", max_beads, 2, "beads in the string, endpoints included")
    _check_int("max_depth", max_depth, 1, "nested halvings")

    names, va, vb, pnames, bnames = _endpoints(self, a, b)
    np_ = len(pnames)
    la, lb = self.loss(va), self.loss(vb)
    for what, val in (("a", la), ("b", lb)):
        if val > threshold:
            raise ValueError(f"the loss at {what} is {val:.6g} > threshold={threshold!r}: both endpoints must lie in "
                             f"the level set; raise the threshold above max(L(a), L(b)) = {max(la, lb):.6g}")
    target = threshold - margin * (threshold - min(la, lb))
    fn = _Functional(self)
    s = np.linspace(0.0, 1.0, check_points + 2)

    def segment(u: ParamVector, v: ParamVector) -> np.ndarray:
        ut, vt = u.tensors, v.tensors

        def writer(al: float):
            def write(targets):
                torch._foreach_copy_(targets, ut)
                torch._foreach_lerp_(targets, vt, al)
            return write
        with _quiet(self):
            evals = self._sweep(names, [writer(float(al)) for al in s[1:-1]], "level set")
        return np.array([e.loss for e in evals])

    def descend(m: ParamVector) -> tuple[bool, float, int, ParamVector]:
        theta = m.clone()
        leaves = theta.tensors[:np_]
        anchor = [t.clone() for t in leaves]
        opt = _make_optimizer(optimizer, leaves, lr, momentum)
        loss = self.loss(theta)
        done = 0
        with ModelGuard(self.model):
            fn.set_modes()
            while loss > target and done < steps:
                for _ in range(min(check_every, steps - done)):
                    _, grads = fn.loss_and_grad(leaves, fn.next_batch())
                    consumed[0] += 1
                    if pull:
                        torch._foreach_add_(grads, torch._foreach_sub(leaves, anchor), alpha=pull)
                    for p, g in zip(leaves, grads):
                        p.grad = g
                    opt.step()
                    done += 1
                loss = self.loss(theta)
                if not math.isfinite(loss):
                    break
        for p in leaves:
            p.grad = None
        return loss <= target, loss, done, theta

    beads: list[ParamVector] = [va, vb]
    bead_losses = [la, lb]
    depth = [0, 0]
    checked: dict[tuple[int, int], np.ndarray] = {}
    connected, reason = True, ""
    descents = 0
    i = 0
    fingerprint = {"threshold": float(threshold), "steps": steps, "lr": float(lr), "optimizer": optimizer,
                   "momentum": float(momentum), "margin": float(margin), "pull": float(pull),
                   "check_points": check_points, "check_every": check_every, "max_beads": max_beads,
                   "max_depth": max_depth, "n": int(sum(t.numel() for t in va.tensors)),
                   "norm_a": float(va.norm()), "norm_b": float(vb.norm()), "dot_ab": float(va.dot(vb))}
    resumed = None
    if checkpoint is not None and _FilePath(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=True)
        _check_fingerprint(checkpoint, state.get("fingerprint", {}), fingerprint, "level_set()")
        beads = [va] + [ParamVector._wrap(list(names), list(ts)) for ts in state["interior"]] + [vb]
        bead_losses, depth = list(state["bead_losses"]), list(state["depth"])
        i, descents, resumed = int(state["position"]), int(state["descents"]), int(state["consumed"])
        resumed_descents = descents
        for _ in range(resumed):                # the batch the interrupted search would take next
            fn.next_batch()
    consumed = [resumed or 0]
    bar = None
    if self.progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="level set (beads)", total=None, leave=False)
    try:
        while i < len(beads) - 1:
            key = (id(beads[i]), id(beads[i + 1]))
            seg = segment(beads[i], beads[i + 1])
            checked[key] = seg
            if seg.max() <= threshold:
                i += 1
                continue
            d = max(depth[i], depth[i + 1]) + 1
            if len(beads) >= max_beads:
                connected, reason = False, f"max_beads={max_beads} reached with segments still above the threshold"
                break
            if d > max_depth:
                connected, reason = False, (f"max_depth={max_depth} reached: the segment between beads {i} and "
                                            f"{i + 1} still rises to {seg.max():.6g}")
                break
            ok, loss, done, bead = descend(beads[i].lerp(beads[i + 1], 0.5))
            descents += 1
            if not ok:
                connected, reason = False, (f"descent from the midpoint of beads {i} and {i + 1} ended at loss "
                                            f"{loss:.6g} > target {target:.6g} after {done} steps")
                break
            beads.insert(i + 1, bead)
            bead_losses.insert(i + 1, loss)
            depth.insert(i + 1, d)
            if checkpoint is not None:
                atomic_torch_save({"fingerprint": fingerprint, "position": i, "descents": descents,
                                   "consumed": consumed[0], "bead_losses": bead_losses, "depth": depth,
                                   "interior": [[t.detach().clone() for t in bd.tensors] for bd in beads[1:-1]]},
                                  checkpoint)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    # the string found so far: its beads and measured segments
    dists = [(beads[j + 1].subset(pnames) - beads[j].subset(pnames)).norm() for j in range(len(beads) - 1)]
    length = float(sum(dists))
    total = length
    cum = np.concatenate([[0.0], np.cumsum(dists)]) / total if total > 0 else np.linspace(0.0, 1.0, len(beads))
    cum[-1] = 1.0
    ts, losses = [0.0], [la]
    for j in range(len(beads) - 1):
        key = (id(beads[j]), id(beads[j + 1]))
        seg = checked[key] if key in checked else segment(beads[j], beads[j + 1])
        ts += list(cum[j] + (cum[j + 1] - cum[j]) * s[1:-1]) + [float(cum[j + 1])]
        losses += list(seg) + [bead_losses[j + 1]]
    ab = (va.subset(pnames) - vb.subset(pnames)).norm()
    settings = self._settings(probe="level_set", threshold=threshold, target=target, steps=steps, lr=lr,
                              optimizer=optimizer, momentum=momentum, margin=margin, pull=pull,
                              check_points=check_points, check_every=check_every, max_beads=max_beads,
                              max_depth=max_depth, descents=descents,
                              **({"resumed_after_descents": resumed_descents} if resumed is not None else {}))
    return LevelSet(connected=connected, reason=reason, threshold=float(threshold), loss_a=la, loss_b=lb,
                    ts=np.array(ts), losses=np.array(losses), bead_ts=cum, bead_losses=np.array(bead_losses),
                    length=length, normalized_length=length / ab if ab > 0 else float("nan"), settings=settings,
                    beads=tuple(beads))

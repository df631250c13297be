"""What the path searches share: endpoints, the path's measurement through the engine,
curve coefficients, checkpoints (fingerprints, reading and writing under ``torch.distributed``)
and the optimizers of fits."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path as _FilePath
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landprobe.common.io import LoadError, load_torch
from landprobe.engine import Engine
from landprobe.params import ParamVector
from landprobe.probes.curves.path import Path

__all__ = ["FitDivergedError", "diverged", "all_finite", "check_fingerprint", "read_checkpoint", "endpoints", "polychain_coeffs",
           "bezier_coeffs", "evaluate_path", "grid", "make_optimizer"]


class FitDivergedError(FloatingPointError):
    """A fit of a path search (``connect``, ``auto_neb``, ``level_set``) met a non-finite loss.

    Raised instead of returning a result that holds NaN. The message names the fit, the step,
    the learning rate, a smaller one to try, and the last checkpoint kept (the file a call
    with the same settings resumes from). The attributes carry the same facts: ``step``
    (1-based; 0: before the first step), ``lr``, ``checkpoint`` (the path, or ``None`` when
    none was passed) and ``kept`` (what that checkpoint holds, e.g. ``"step 30"``; ``None``
    when none was written). Under data sharding the losses checked are summed over the
    ranks, so every rank raises the same error. The model is restored as after any exception.

    Example:
        >>> import torch
        >>> from landprobe.probes import toys
        >>> from landprobe.probes.curves import FitDivergedError, connect
        >>> valley = toys.CurvyValley()
        >>> probe = toys.toy_probe(valley)
        >>> a, b = valley.minima()
        >>> try:
        ...     connect(probe, a, b, method="polychain", steps=20, lr=1e30)
        ... except FitDivergedError as err:
        ...     print(err.step, err.lr, err.checkpoint)
        3 1e+30 None
    """

    def __init__(self, message: str, *, step: int, lr: float, checkpoint: Any = None, kept: str | None = None):
        super().__init__(message)
        self.step, self.lr, self.checkpoint, self.kept = step, lr, checkpoint, kept


def diverged(fit: str, what: str, *, step: int, steps: int, lr: float, checkpoint: Any, kept: str | None,
             where: str = "", adam: bool = True) -> FitDivergedError:
    """The :class:`FitDivergedError` of ``fit`` (e.g. ``"connect (polychain)"``) whose ``what``
    (e.g. ``"the training loss became nan"``) happened at ``step`` (1-based) of ``steps``
    (``where``: e.g. ``" of cycle 2 of 7"``); ``kept`` describes the last checkpoint written
    to ``checkpoint`` (``None``: none yet).

    Example:
        >>> str(diverged("connect (bezier)", "the training loss became nan", step=3, steps=10, lr=0.5,
        ...              checkpoint=None, kept=None))  # doctest: +NORMALIZE_WHITESPACE
        "connect (bezier): the training loss became nan at step 3 of 10 (lr=0.5); lower lr (e.g. 0.25) or
        use optimizer='adam'; no checkpoint was written (pass checkpoint=...)"
    """
    advice = f"lower lr (e.g. {lr / 2:.6g})" + (" or use optimizer='adam'" if adam else "")
    if checkpoint is None:
        saved = "no checkpoint was written (pass checkpoint=...)"
    elif kept is None:
        saved = f"no checkpoint was written yet to {str(checkpoint)!r}"
    else:
        saved = f"the last checkpoint kept is {str(checkpoint)!r} ({kept})"
    return FitDivergedError(f"{fit}: {what} at step {step} of {steps}{where} (lr={lr:.6g}); {advice}; {saved}",
                            step=step, lr=lr, checkpoint=checkpoint, kept=kept)


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every entry of ``tensors`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def check_fingerprint(path, saved: dict, fingerprint: dict, what: str) -> None:
    """Raise ValueError naming the settings in which a checkpoint differs from this call."""
    def same(x, y):
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-12)
        return x == y
    diff = [k for k in fingerprint if k not in saved or not same(saved[k], fingerprint[k])]
    if diff:
        detail = ", ".join(f"{k}: file {saved.get(k)!r}, this call {fingerprint[k]!r}" for k in diff)
        raise ValueError(
            f"checkpoint {str(path)!r} belongs to another {what} run ({detail}); pass the same "
            f"endpoints and settings to resume it, or another checkpoint path to start afresh."
        )


def read_checkpoint(engine: Engine, path: Any, read: Callable[[], Any],
                    describe: Callable[[Any], str] = str) -> Any:
    """``read()`` on every rank when the checkpoint file ``path`` exists; ``None`` when it does
    not (or ``path`` is ``None``).

    Under ``torch.distributed`` the ranks then wait for each other, so that none is still
    reading when rank 0, the only one that writes checkpoints (``Engine.write_files``),
    replaces the file; an exception in ``read`` (a checkpoint of another run) is raised on
    every rank, and ``ValueError`` on every rank if the ranks read different states
    (``describe`` of what ``read()`` returned, e.g. ``"step 40"``): not every rank sees the
    file rank 0 writes.

    Example:
        >>> import torch
        >>> from landprobe.engine import Engine
        >>> engine = Engine(torch.nn.Linear(1, 1), torch.nn.MSELoss(), [])
        >>> read_checkpoint(engine, "no/such/file.pt", lambda: 7) is None
        True
    """
    if path is None:
        return None
    got: list[Any] = []

    def one() -> str | None:
        got.append(read() if _FilePath(path).exists() else None)
        return None if got[0] is None else describe(got[0])
    seen = engine.ranks().gather(one, "reading the checkpoint")
    if any(s != seen[0] for s in seen):
        found = ", ".join(f"rank {r}: {'no file' if s is None else s}" for r, s in enumerate(seen))
        raise ValueError(f"the ranks read different checkpoints at {str(path)!r} ({found}); rank 0 alone writes "
                         f"it and every rank resumes from it: put it on a file system all ranks share")
    return got[0]


def load_checkpoint(path: Any, who: str) -> dict[str, Any]:
    """The state in a fit's checkpoint file: a dict with a fingerprint, or ``LoadError`` naming the file."""
    state = load_torch(path)
    if not isinstance(state, dict) or "fingerprint" not in state:
        found = "a dict without a fingerprint" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise LoadError(path, f"it holds {found}, not a {who} checkpoint",
                        "pass the checkpoint path this kind of call wrote, or a new path to start afresh")
    return state


def resume_connect(path, fingerprint: dict, leaves: list[Tensor], opt, gen: torch.Generator,
                    train_losses: list[float]) -> int:
    """Load a connect() checkpoint into the bends, optimizer and generator; return its step."""
    state = load_checkpoint(path, "connect()")
    check_fingerprint(path, state["fingerprint"], fingerprint, "connect()")
    with torch.no_grad():
        for t, v in zip(leaves, state["bends"]):
            t.copy_(v)
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    train_losses[:] = list(state["train_losses"])
    return int(state["step"])


def endpoints(engine: Engine, a: Any, b: Any) -> tuple[list[str], ParamVector, ParamVector, list[str], list[str]]:
    """Endpoints over the engine's state names; parameter names and buffer names apart."""
    names = engine.state_names()
    va = engine.as_point(a, "a", names)
    vb = engine.as_point(b, "b", names)
    pnames = engine.parameter_names()
    bnames = [n for n in names if n not in set(pnames)]
    return names, va, vb, pnames, bnames


def polychain_coeffs(knots: np.ndarray, t: float) -> list[tuple[int, float]]:
    """Nonzero weights of the points of a polygonal chain with ``knots`` at ``t``."""
    n = len(knots)
    j = int(np.searchsorted(knots, t, side="right")) - 1
    j = min(max(j, 0), n - 2)
    lo, hi = knots[j], knots[j + 1]
    s = 0.0 if hi <= lo else (t - lo) / (hi - lo)
    s = min(max(s, 0.0), 1.0)
    if s == 0.0:
        return [(j, 1.0)]
    if s == 1.0:
        return [(j + 1, 1.0)]
    return [(j, 1.0 - s), (j + 1, s)]


def bezier_coeffs(degree: int, t: float) -> list[tuple[int, float]]:
    out = [(i, math.comb(degree, i) * t**i * (1.0 - t) ** (degree - i)) for i in range(degree + 1)]
    return [(i, c) for i, c in out if c != 0.0]


def evaluate_path(engine: Engine, *, names, va, vb, pnames, points: Sequence[ParamVector], coeffs: Callable,
                   ts: np.ndarray, knots: np.ndarray, method: str, settings: dict) -> Path:
    """Measure the empirical error at θ(t) = Σ_i c_i(t)·points[i] for each t, through the engine.

    Floating buffers (under ``bn='eval'``) follow the chord: (1 − t)·buf(a) + t·buf(b).
    """
    np_ = len(pnames)
    ptensors = [p.tensors for p in points]
    buf_a, buf_b = va.tensors[np_:], vb.tensors[np_:]

    def theta(t: float) -> list[Tensor]:
        cs = coeffs(t)
        if len(cs) == 1:
            return list(ptensors[cs[0][0]])
        acc = list(torch._foreach_mul(ptensors[cs[0][0]], cs[0][1]))
        for i, c in cs[1:]:
            torch._foreach_add_(acc, ptensors[i], alpha=c)
        return acc

    def writer(t: float):
        def write(targets: list[Tensor]) -> None:
            torch._foreach_copy_(targets[:np_], theta(t))
            if buf_a:
                torch._foreach_copy_(targets[np_:], buf_a)
                if t != 0.0:
                    torch._foreach_lerp_(targets[np_:], buf_b, t)
        return write

    evals = engine.sweep(names, [writer(float(t)) for t in ts], method)
    losses = np.array([e.loss for e in evals])
    stderr = np.array([e.stderr for e in evals])
    length = 0.0
    with torch.no_grad():
        prev = ParamVector._wrap(list(pnames), theta(float(ts[0])))
        for t in ts[1:]:
            cur = ParamVector._wrap(list(pnames), theta(float(t)))
            length += (cur - prev).norm()
            prev = cur
    knot_losses = np.array([losses[int(np.argmin(np.abs(ts - k)))] for k in knots]) if len(knots) else np.zeros(0)
    return Path(ts=ts, losses=losses, stderr=stderr, loss_a=float(losses[0]), loss_b=float(losses[-1]),
                knots=np.asarray(knots, dtype=np.float64), knot_losses=knot_losses, length=float(length),
                method=method, settings=settings, points=tuple(points))


def grid(points: int, knots: np.ndarray) -> np.ndarray:
    ts = np.union1d(np.linspace(0.0, 1.0, points), np.asarray(knots, dtype=np.float64))
    ts[0], ts[-1] = 0.0, 1.0
    return ts


def make_optimizer(kind: str, tensors: list[Tensor], lr: float, momentum: float):
    if kind == "sgd":
        return torch.optim.SGD(tensors, lr=lr, momentum=momentum)
    if kind == "adam":
        return torch.optim.Adam(tensors, lr=lr)
    raise ValueError(f"optimizer={kind!r}; expected 'sgd' (with momentum) or 'adam'")



"""Curves of low error between two minima (Garipov et al. 2018), and the ``Path`` result.

``connect(probe, a, b)`` fits a Bezier curve or a polygonal chain with trainable bend points
between two parameter sets ``a`` and ``b`` of the probed model, then measures the empirical
error along the fitted curve through the probe's engine. ``method="neb"`` hands over to
AutoNEB (:func:`landprobe.probes.neb.auto_neb`), which returns the same :class:`Path`.

The model is called through ``torch.func.functional_call`` with the curve's parameters: no
layer of the user's model is rewritten, and the model is restored exactly afterwards.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path as _FilePath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landprobe._io import atomic_torch_save
from landprobe._results import Result, require_matplotlib
from landprobe.params import ParamVector, as_param_vector
from landprobe.probes._engine import ModelGuard, call_model, is_batchnorm
from landprobe.probes.results import _chord_barrier

__all__ = ["Path", "connect"]


# --------------------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class Path(Result):
    """Empirical error along a path θ(t), t in [0, 1], from θ(0) = a to θ(1) = b.

    Attributes:
        ts: float64 grid of the path parameter, first 0.0, last 1.0 (holds the knots).
        losses: Empirical error at each t (sample-weighted mean over the data).
        stderr: Standard error of each loss from its per-batch losses (NaN with one batch).
        loss_a, loss_b: The losses at t = 0 and t = 1 (the endpoints themselves).
        knots: t of the path's points that lie on it: the bend points of a polychain, the
            images of AutoNEB (endpoints included); empty for a Bezier curve, whose control
            points lie off the curve.
        knot_losses: Empirical error at each knot (the images' energies for AutoNEB).
        length: Length of the path in parameter space (of the polygon through the evaluated
            points: exact for a polychain and AutoNEB, whose knots are on the grid).
        method: ``"bezier"``, ``"polychain"`` or ``"neb"``.
        settings: bends, steps, lr, optimizer, seed, schedule, bn, dtype, version, ...
        points: The control points ``[a, bends..., b]`` (Bezier), bend points (polychain) or
            images (AutoNEB) as :class:`~landprobe.ParamVector` of the parameters; kept in
            memory only, not in the JSON (save them with :meth:`save_points`). ``None`` after
            :meth:`load`.

    ``barrier`` is the largest excess of the loss over the chord between the endpoint
    losses, max over t of L(θ(t)) − [(1 − t)·L(a) + t·L(b)] (never negative), reached at
    ``argmax_t``, as :attr:`landprobe.Curve.barrier`; ``max_loss`` is the highest loss along
    the path (AutoNEB's saddle estimate).

    Example:
        >>> import numpy as np
        >>> from landprobe.probes.connect import Path
        >>> p = Path(ts=np.array([0, 0.5, 1.0]), losses=np.array([1.0, 3.0, 2.0]), stderr=np.full(3, np.nan),
        ...          loss_a=1.0, loss_b=2.0, knots=np.array([0.0, 1.0]), knot_losses=np.array([1.0, 2.0]),
        ...          length=2.0, method="polychain")
        >>> p.barrier, p.argmax_t, p.max_loss          # 3.0 - (1.0 + 2.0) / 2
        (1.5, 0.5, 3.0)
    """

    ts: np.ndarray
    losses: np.ndarray
    stderr: np.ndarray
    loss_a: float
    loss_b: float
    knots: np.ndarray
    knot_losses: np.ndarray
    length: float
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    points: Any = field(default=None, repr=False)

    @property
    def barrier(self) -> float:
        return _chord_barrier(self.ts, self.losses, self.loss_a, self.loss_b)[0]

    @property
    def argmax_t(self) -> float:
        return _chord_barrier(self.ts, self.losses, self.loss_a, self.loss_b)[1]

    @property
    def max_loss(self) -> float:
        """The highest empirical error along the path (the saddle estimate of AutoNEB)."""
        return float(np.max(self.losses))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("points", None)
        return out

    def save_points(self, path) -> Any:
        """Write :attr:`points` as a list of state_dicts with ``torch.save``, atomically.

        Read them back with ``torch.load(path, weights_only=True)``.

        Raises:
            ValueError: If the result holds no points (e.g. it was loaded from JSON).

        Example:
            >>> import os, tempfile, torch, numpy as np, landprobe as lp
            >>> from landprobe.probes.connect import Path
            >>> pts = [lp.ParamVector({"w": torch.tensor([float(i)])}) for i in range(3)]
            >>> p = Path(np.array([0.0, 1.0]), np.zeros(2), np.zeros(2), 0.0, 0.0, np.array([0.0, 0.5, 1.0]),
            ...          np.zeros(3), 2.0, "polychain", points=pts)
            >>> f = os.path.join(tempfile.mkdtemp(), "points.pt")
            >>> _ = p.save_points(f)
            >>> [sd["w"].item() for sd in torch.load(f, weights_only=True)]
            [0.0, 1.0, 2.0]
        """
        if self.points is None:
            raise ValueError("this Path holds no points (a Path read from JSON has none); save_points needs the "
                             "result returned by connect()")
        return atomic_torch_save([{k: v.detach().cpu() for k, v in p.items()} for p in self.points], path)

    def plot(self, ax=None, *, chord: bool = True, **kwargs):
        """Plot loss against t (matplotlib), knots marked; returns the axes.

        Example:
            >>> import numpy as np
            >>> from landprobe.probes.connect import Path
            >>> p = Path(np.linspace(0, 1, 5), np.array([1.0, 2, 3, 2, 1]), np.zeros(5), 1.0, 1.0,
            ...          np.array([0.0, 0.5, 1.0]), np.array([1.0, 3.0, 1.0]), 1.0, "polychain")
            >>> p.plot().get_xlabel()
            't'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(self.ts, self.losses, label=kwargs.pop("label", self.method), **kwargs)
        if len(self.knots):
            ax.plot(self.knots, self.knot_losses, "o", ms=4, color="C1", label="knots")
        if chord:
            ax.plot([0.0, 1.0], [self.loss_a, self.loss_b], "k--", lw=0.8, label="chord")
        ax.set_xlabel("t")
        ax.set_ylabel("loss")
        ax.set_title(f"{self.method}: barrier {self.barrier:.4g} at t={self.argmax_t:.3g}")
        ax.legend(frameon=False)
        return ax


def _check_fingerprint(path, saved: dict, fingerprint: dict, what: str) -> None:
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


def _resume_connect(path, fingerprint: dict, leaves: list[Tensor], opt, gen: torch.Generator,
                    train_losses: list[float]) -> int:
    """Load a connect() checkpoint into the bends, optimizer and generator; return its step."""
    state = torch.load(path, weights_only=True)
    _check_fingerprint(path, state.get("fingerprint", {}) if isinstance(state, dict) else {}, fingerprint,
                       "connect()")
    with torch.no_grad():
        for t, v in zip(leaves, state["bends"]):
            t.copy_(v)
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    train_losses[:] = list(state["train_losses"])
    return int(state["step"])


# --------------------------------------------------------------------------- shared machinery
def _cycle(batches: Callable[[], Iterator]) -> Iterator:
    while True:
        empty = True
        for batch in batches():
            empty = False
            yield batch
        if empty:
            raise ValueError("data yielded no batch: pass a non-empty DataLoader or list of (x, y) pairs")


class _Functional:
    """The probe's loss at given parameter tensors, through ``torch.func.functional_call``.

    Used inside a :class:`ModelGuard`: modules in eval mode (dropout off), BatchNorm in train
    mode (each batch's own statistics; running statistics updated in the model's buffers,
    which the guard restores). Nothing of the model's parameters is touched.
    """

    def __init__(self, probe):
        self.probe = probe
        self.model = probe.model
        self.engine = probe.engine
        self.names = [n for n, _ in self.model.named_parameters()]
        self._batches = _cycle(self.engine.batches)

    def set_modes(self) -> None:
        self.engine.set_eval_modes()
        for m in self.model.modules():
            if is_batchnorm(m):
                m.train()

    def next_batch(self):
        return next(self._batches)

    def loss(self, params: Sequence[Tensor], batch) -> Tensor:
        from torch.func import functional_call

        x, y = batch
        model = self.model
        pd = dict(zip(self.names, params))
        with self.engine.autocast():
            out = call_model(lambda *args, **kw: functional_call(model, pd, args, kw), x)
            loss = self.probe.loss_fn(out, y)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor (a mean-reduced loss such as nn.MSELoss()); "
                             f"got {type(loss).__name__}")
        return loss.reshape(()).float() if loss.dtype in (torch.float16, torch.bfloat16) else loss.reshape(())

    def loss_and_grad(self, params: Sequence[Tensor], batch) -> tuple[float, list[Tensor]]:
        leaves = [p.detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            loss = self.loss(leaves, batch)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]
        return float(loss.detach()), grads


@contextlib.contextmanager
def _quiet(probe):
    """No progress bars from the engine's sweeps inside a search that shows its own."""
    flag = probe.progress
    probe.progress = False
    try:
        yield
    finally:
        probe.progress = flag


def _endpoints(probe, a: Any, b: Any):
    names = probe._state_names()
    va = as_param_vector(a, probe.model, names=names, what="a")
    vb = as_param_vector(b, probe.model, names=names, what="b")
    pnames = [n for n, _ in probe.model.named_parameters()]
    bnames = [n for n in names if n not in set(pnames)]
    return names, va, vb, pnames, bnames


def _polychain_coeffs(knots: np.ndarray, t: float) -> list[tuple[int, float]]:
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


def _bezier_coeffs(degree: int, t: float) -> list[tuple[int, float]]:
    out = [(i, math.comb(degree, i) * t**i * (1.0 - t) ** (degree - i)) for i in range(degree + 1)]
    return [(i, c) for i, c in out if c != 0.0]


def _evaluate_path(probe, *, names, va, vb, pnames, points: Sequence[ParamVector], coeffs: Callable,
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

    evals = probe._sweep(names, [writer(float(t)) for t in ts], method)
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


def _grid(eval_points: int, knots: np.ndarray) -> np.ndarray:
    ts = np.union1d(np.linspace(0.0, 1.0, eval_points), np.asarray(knots, dtype=np.float64))
    ts[0], ts[-1] = 0.0, 1.0
    return ts


def _check_int(name: str, value: Any, low: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r}; expected an integer >= {low} ({what})")


def _check_positive(name: str, value: Any, what: str) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}; expected a finite number > 0 ({what})")


def _make_optimizer(kind: str, tensors: list[Tensor], lr: float, momentum: float):
    if kind == "sgd":
        return torch.optim.SGD(tensors, lr=lr, momentum=momentum)
    if kind == "adam":
        return torch.optim.Adam(tensors, lr=lr)
    raise ValueError(f"optimizer={kind!r}; expected 'sgd' (with momentum) or 'adam'")


# --------------------------------------------------------------------------- connect
def connect(self, a: Any, b: Any, method: str = "bezier", bends: int = 1, steps: int = 1000, lr: float = 0.01,
            optimizer: str = "sgd", *, momentum: float = 0.9, t_samples: int = 1, eval_points: int = 61,
            seed: int = 0, checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
            **neb_kwargs: Any) -> Path:
    """Fit a low-error curve between ``a`` and ``b`` and measure the error along it (Garipov et al. 2018).

    The curve φ(t), t in [0, 1], starts at ``a`` and ends at ``b`` (both fixed) and bends
    through trainable points, initialised evenly on the segment (one bend: the midpoint):

    - ``"bezier"``: φ(t) = Σ_i C(n, i)·tⁱ(1 − t)ⁿ⁻ⁱ·P_i with P_0 = a, P_1..P_bends the bends,
      P_n = b, n = bends + 1 (one bend: Garipov et al.'s quadratic Bezier curve);
    - ``"polychain"``: straight segments from a through the bends to b, the i-th bend at
      t = i / (bends + 1);
    - ``"neb"``: AutoNEB (Draxler et al. 2018), see :func:`landprobe.probes.neb.auto_neb`;
      ``bends`` is ignored, ``steps``, ``lr``, ``momentum``, ``eval_points`` and ``seed`` are
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

    Args:
        a, b: Endpoints: state_dicts, modules or ParamVectors of the probed model.
        method: ``"bezier"``, ``"polychain"`` or ``"neb"``.
        bends: Number of trainable bend points, >= 1.
        steps: Training steps, >= 0 (0: the straight segment).
        lr: Learning rate.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD momentum.
        t_samples: Values of t drawn per step, >= 1.
        eval_points: Evenly spaced t at which the fitted curve is measured (the polychain's
            knots are added), >= 2.
        seed: Seed of the t draws.
        checkpoint: A file for long runs (``"bezier"``/``"polychain"``): every
            ``checkpoint_every`` steps the training state (bends, optimizer state, the t
            generator, step count, losses so far) is written to it atomically; a call that
            finds the file resumes from it and gives the result an uninterrupted call would
            (the data iterator is advanced to the same batch). The settings and a fingerprint
            of the endpoints must match (else ``ValueError``). The file is kept after the
            run; it loads with ``torch.load(path, weights_only=True)``. ``"neb"`` checkpoints
            after every cycle instead (see :func:`~landprobe.probes.neb.auto_neb`).
        checkpoint_every: Steps between checkpoints, >= 1 (bezier/polychain).

    Returns:
        A :class:`Path`; ``losses[0] == probe.loss(a)`` and ``losses[-1] == probe.loss(b)``.
        The model is restored exactly afterwards, also on an exception or KeyboardInterrupt.

    Raises:
        ValueError: For an unknown ``method`` or ``optimizer``, ``bends`` < 1, ``steps`` < 0,
            ``t_samples`` < 1, ``eval_points`` < 2, a non-positive ``lr``, or endpoints that
            do not fit the model.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.probes import toys
        >>> from landprobe.probes.connect import connect
        >>> valley = toys.CurvyValley()                       # minima at (∓5π/2, ∓1), saddle 1.0
        >>> probe = toys.toy_probe(valley)
        >>> a, b = valley.minima()
        >>> straight = probe.interpolate(a, b, steps=401)
        >>> round(straight.barrier, 2)                        # the segment climbs to 2.977
        2.98
        >>> path = connect(probe, a, b, method="polychain", bends=5, steps=300, lr=0.01)
        >>> bool(path.max_loss < 1.3), bool(path.losses[0] == probe.loss(a))
        (True, True)
    """
    if method == "neb":
        from landprobe.probes.neb import auto_neb

        return auto_neb(self, a, b, steps=steps, lr=lr, momentum=momentum, eval_points=eval_points, seed=seed,
                        checkpoint=checkpoint, **neb_kwargs)
    if neb_kwargs:
        raise TypeError(f"connect() got unexpected keyword arguments {sorted(neb_kwargs)} (they are AutoNEB's: "
                        f"pass method='neb')")
    if method not in ("bezier", "polychain"):
        raise ValueError(f"method={method!r}; expected 'bezier' (Garipov et al.), 'polychain' or 'neb' (AutoNEB)")
    _check_int("bends", bends, 1, "number of trainable bend points")
    _check_int("steps", steps, 0, "training steps")
    _check_int("t_samples", t_samples, 1, "values of t per step")
    _check_int("eval_points", eval_points, 2, "points of the measured grid, both ends included")
    _check_positive("lr", lr, "the learning rate")
    _check_int("checkpoint_every", checkpoint_every, 1, "steps between checkpoints")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer={optimizer!r}; expected 'sgd' (with momentum) or 'adam'")

    names, va, vb, pnames, _ = _endpoints(self, a, b)
    pa, pb = va.subset(pnames), vb.subset(pnames)
    n_pts = bends + 2
    same = (pa - pb).norm() == 0.0
    settings = self._settings(probe="connect", method=method, bends=bends, steps=steps, lr=lr, optimizer=optimizer,
                              momentum=momentum, t_samples=t_samples, eval_points=eval_points, seed=seed)
    train_losses: list[float] = []
    bend_vecs = [pa.lerp(pb, i / (n_pts - 1)).clone() for i in range(1, n_pts - 1)]
    if method == "bezier":
        degree = n_pts - 1

        def coeffs(t: float):
            return _bezier_coeffs(degree, t)
        knots = np.zeros(0)
    else:
        knots = np.linspace(0.0, 1.0, n_pts)

        def coeffs(t: float):
            return _polychain_coeffs(knots, t)

    if not same and steps > 0:
        fn = _Functional(self)
        leaves = [t.requires_grad_(True) for v in bend_vecs for t in v.tensors]
        opt = _make_optimizer(optimizer, leaves, lr, momentum)
        gen = torch.Generator().manual_seed(int(seed))
        ends = {0: pa.tensors, n_pts - 1: pb.tensors}
        from landprobe.probes.landscape import _progress

        fingerprint = {k: settings[k] for k in ("method", "bends", "steps", "lr", "optimizer", "momentum",
                                                 "t_samples", "seed")}
        fingerprint.update(n=int(sum(t.numel() for t in pa.tensors)), norm_a=float(pa.norm()),
                           norm_b=float(pb.norm()), dot_ab=float(pa.dot(pb)))
        first = 0
        if checkpoint is not None and _FilePath(checkpoint).exists():
            first = _resume_connect(checkpoint, fingerprint, leaves, opt, gen, train_losses)
            for _ in range(first):                 # the batch the interrupted run would take next
                fn.next_batch()
            settings["resumed_at_step"] = first
        with ModelGuard(self.model):
            fn.set_modes()
            for step in _progress(range(first, steps), steps - first, f"connect ({method})", self.progress):
                batch = fn.next_batch()
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for t in torch.rand(t_samples, generator=gen, dtype=torch.float64).tolist():
                    with torch.enable_grad():
                        theta: list[Tensor] | None = None
                        for i, c in coeffs(t):
                            src = ends[i] if i in ends else bend_vecs[i - 1].tensors
                            term = torch._foreach_mul(src, c)
                            theta = list(term) if theta is None else list(torch._foreach_add(theta, term))
                        loss = fn.loss(theta, batch) / t_samples
                        if loss.requires_grad:
                            loss.backward()
                    total += float(loss.detach())
                opt.step()
                train_losses.append(total)
                if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                    atomic_torch_save({"fingerprint": fingerprint, "step": step + 1,
                                       "bends": [t.detach().clone() for t in leaves],
                                       "optimizer": opt.state_dict(), "generator": gen.get_state(),
                                       "train_losses": list(train_losses)}, checkpoint)
        for t in leaves:
            t.requires_grad_(False)
    settings["train_losses"] = train_losses
    points = [pa, *bend_vecs, pb]
    if same:                                   # a single point: no rounding of coefficients summing to 1
        def coeffs(t: float):
            return [(0, 1.0)]
    return _evaluate_path(self, names=names, va=va, vb=vb, pnames=pnames, points=points, coeffs=coeffs,
                          ts=_grid(eval_points, knots), knots=knots, method=method, settings=settings)

"""The :class:`Path` result: the empirical error along a fitted path between two minima."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from landprobe.common.io import atomic_torch_save
from landprobe.common.results import Result, require_matplotlib
from landprobe.probes.results import chord_barrier

__all__ = ["Path"]


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
        >>> from landprobe.probes.curves import Path
        >>> p = Path(ts=np.array([0, 0.5, 1.0]), losses=np.array([1.0, 3.0, 2.0]), stderr=np.full(3, np.nan),
        ...          loss_a=1.0, loss_b=2.0, knots=np.array([0.0, 1.0]), knot_losses=np.array([1.0, 2.0]),
        ...          length=2.0, method="polychain")
        >>> p.barrier, p.argmax_t, p.max_loss          # 3.0 - (1.0 + 2.0) / 2
        (1.5, 0.5, 3.0)
    """

    # checked by Result.from_dict when loading
    _same_length = (("ts", "losses", "stderr"), ("knots", "knot_losses"))
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
        return chord_barrier(self.ts, self.losses, self.loss_a, self.loss_b)[0]

    @property
    def argmax_t(self) -> float:
        return chord_barrier(self.ts, self.losses, self.loss_a, self.loss_b)[1]

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
            >>> from landprobe.probes.curves import Path
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
            >>> from landprobe.probes.curves import Path
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



"""Two-dimensional slices of the landscape: random, given, or through three models.

``plane`` evaluates the empirical error on θ(x, y) = center + x·d₁ + y·d₂ over a grid,
with Li et al.'s filter-normalised Gaussian directions (Li et al. 2018, "Visualizing the
Loss Landscape of Neural Nets", §4), directions of the user's own (e.g. the PCA directions
of a training trajectory, :class:`landprobe.probes.trajectory.TrajectoryPCA`), or the plane
through three models as in Garipov et al. 2018's figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landprobe.common.checks import check_int
from landprobe.common.deprecation import renamed_keywords
from landprobe.common.results import Result, require_matplotlib
from landprobe.engine import Engine, HasEngine, as_engine
from landprobe.engine.core import Writer
from landprobe.params import ParamVector, Selector, select
from landprobe.probes.interpolate import MAX_POINTS

__all__ = ["Surface", "plane", "grid_axis"]

_NORMALIZATIONS = ("filter", "layer", "model", None)


@dataclass(frozen=True, eq=False)
class Surface(Result):
    """Empirical error on a plane θ(x, y) = center + x·d₁ + y·d₂ of parameter space.

    Attributes:
        xs: float64 coordinates along d₁ (``nx`` values, increasing).
        ys: float64 coordinates along d₂ (``ny`` values, increasing).
        losses: ``(ny, nx)`` array; ``losses[i, j]`` is the error at ``(xs[j], ys[i])``
            (row ``i`` ↔ ``ys[i]``, the layout ``matplotlib.contour(xs, ys, losses)`` expects).
        stderr: ``(ny, nx)`` standard errors over batches (NaN with a single batch).
        center_loss: The error at the center, (0, 0). Measured there even when (0, 0) is
            not a grid point.
        anchors: Named points of the plane, name → ``[x, y]``: ``{"center": [0, 0]}``, or
            for a plane through three models ``{"a": [0, 0], "b": [1, 0], "c": [cx, cy]}``.
        anchor_losses: The error measured at each anchor's exact coordinates.
        settings: directions ("random", "given" or "through"), normalization, one_d,
            seed, span, points, subnet, direction norms, bn, dtype, device, version, ...

    Example:
        >>> import numpy as np
        >>> from landprobe.probes.plane import Surface
        >>> xs = ys = np.array([-1.0, 0.0, 1.0])
        >>> s = Surface(xs, ys, np.add.outer(ys**2, xs**2), np.full((3, 3), np.nan), 0.0,
        ...             {"center": [0.0, 0.0]}, {"center": 0.0})
        >>> float(s.losses[0, 2]), s.at(1.0, -1.0)   # row i <-> ys[i]: 1 + 1
        (2.0, 2.0)
        >>> s.min()                                   # (loss, x, y) of the lowest grid point
        (0.0, 0.0, 0.0)
    """

    xs: np.ndarray
    ys: np.ndarray
    losses: np.ndarray
    stderr: np.ndarray
    center_loss: float
    anchors: dict = field(default_factory=dict)
    anchor_losses: dict = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def at(self, x: float, y: float) -> float:
        """The loss at the grid point ``(x, y)`` (coordinates must be on the grid).

        Raises:
            ValueError: If ``x`` or ``y`` is not one of the grid's coordinates.
        """
        j = np.flatnonzero(np.isclose(self.xs, x, rtol=0, atol=1e-12))
        i = np.flatnonzero(np.isclose(self.ys, y, rtol=0, atol=1e-12))
        if not len(i) or not len(j):
            raise ValueError(f"({x}, {y}) is not a grid point of this Surface; xs run {self.xs[0]}..{self.xs[-1]} "
                             f"in {len(self.xs)} points, ys {self.ys[0]}..{self.ys[-1]} in {len(self.ys)}")
        return float(self.losses[i[0], j[0]])

    def min(self) -> tuple[float, float, float]:
        """``(loss, x, y)`` of the lowest grid point."""
        i, j = np.unravel_index(int(np.nanargmin(self.losses)), self.losses.shape)
        return float(self.losses[i, j]), float(self.xs[j]), float(self.ys[i])

    def plot(self, ax=None, kind: str = "contour", *, levels: int | Sequence[float] = 20, log: bool = False,
             anchors: bool = True, **kwargs):
        """Draw the surface (matplotlib); returns the axes.

        Args:
            ax: Axes to draw on (for ``kind="surface"`` a 3-D axes); a new figure if None.
            kind: ``"contour"`` (filled contours with labelled level lines) or ``"surface"``
                (a 3-D surface plot).
            levels: Number of contour levels, or the levels themselves.
            log: Plot log10 of the loss (helps when the edges dwarf the basin).
            anchors: Mark the center or the anchor models.

        Raises:
            ValueError: If ``kind`` is neither ``"contour"`` nor ``"surface"``.

        Example:
            >>> import numpy as np
            >>> xs = ys = np.linspace(-1, 1, 5)
            >>> s = Surface(xs, ys, np.add.outer(ys**2, xs**2), np.zeros((5, 5)), 0.0, {"center": [0.0, 0.0]})
            >>> ax = s.plot(levels=4)
            >>> ax.get_xlabel()
            'direction 1'
            >>> ax3d = s.plot(kind="surface")
            >>> ax3d.name
            '3d'
        """
        if kind not in ("contour", "surface"):
            raise ValueError(f"kind={kind!r}; expected 'contour' or 'surface'")
        plt = require_matplotlib()
        z = np.log10(np.maximum(self.losses, np.finfo(float).tiny)) if log else self.losses
        zlabel = "log10 loss" if log else "loss"
        X, Y = np.meshgrid(self.xs, self.ys)
        if kind == "surface":
            if ax is None:
                fig = plt.figure(figsize=(5.5, 4.5))
                ax = fig.add_subplot(projection="3d")
            ax.plot_surface(X, Y, z, cmap=kwargs.pop("cmap", "viridis"), linewidth=0, antialiased=True, **kwargs)
            ax.set_zlabel(zlabel)
        else:
            if ax is None:
                _, ax = plt.subplots(figsize=(5, 4.5))
            filled = ax.contourf(X, Y, z, levels=levels, cmap=kwargs.pop("cmap", "viridis"), **kwargs)
            lines = ax.contour(X, Y, z, levels=filled.levels, colors="k", linewidths=0.5)
            ax.clabel(lines, inline=True, fontsize=7, fmt="%.3g")
            ax.figure.colorbar(filled, ax=ax, label=zlabel)
            if anchors:
                for name, (x, y) in self.anchors.items():
                    ax.plot([x], [y], "o", color="w", mec="k", ms=6)
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), color="w")
            ax.set_aspect("equal" if self.settings.get("directions") == "through" else "auto")
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        return ax


# --------------------------------------------------------------------------- helpers
def grid_axis(lo: float, hi: float, points: int) -> np.ndarray:
    """``np.linspace(lo, hi, points)`` with the coordinate nearest 0 set to exactly 0.0 if it is 0 up
    to rounding (so an odd symmetric grid holds the center exactly).

    Example:
        >>> grid_axis(-0.3, 0.3, 3).tolist()
        [-0.3, 0.0, 0.3]
        >>> grid_axis(-1.0, 1.0, 4).tolist()                 # even: 0 is not on the grid
        [-1.0, -0.3333333333333333, 0.3333333333333333, 1.0]
    """
    xs = np.linspace(float(lo), float(hi), int(points))
    if points > 1:
        h = (hi - lo) / (points - 1)
        k = int(np.argmin(np.abs(xs)))
        if abs(xs[k]) <= 1e-9 * h:
            xs[k] = 0.0
    return xs


def _parse_points(points: Any) -> tuple[int, int]:
    pair = points if isinstance(points, (tuple, list)) else (points, points)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 2 for s in pair):
        raise ValueError(f"points={points!r}; expected an integer >= 2 (points per axis, odd puts the center on the "
                         f"grid) or a pair (nx, ny) of such integers")
    return int(pair[0]), int(pair[1])


def _parse_span(span: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    if isinstance(span, (int, float, np.floating, np.integer)) and not isinstance(span, bool):
        s = float(span)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"span={span!r}; expected a finite number > 0 (the grid runs from -span to span) "
                             f"or ((xmin, xmax), (ymin, ymax))")
        return (-s, s), (-s, s)
    try:
        (x0, x1), (y0, y1) = span
        rng = (float(x0), float(x1)), (float(y0), float(y1))
    except (TypeError, ValueError):
        raise ValueError(f"span={span!r}; expected a number > 0 or ((xmin, xmax), (ymin, ymax))") from None
    for lo, hi in rng:
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"span={span!r}; each range (min, max) needs finite min < max")
    return rng


def _subnet_label(model, subnet):
    if subnet is None:
        return None
    return subnet if isinstance(subnet, str) else select(model, subnet)


def _direction(engine: Engine, value: Any, names: list[str], what: str) -> ParamVector:
    if isinstance(value, ParamVector):
        src = value
    elif isinstance(value, torch.nn.Module) or hasattr(value, "keys"):
        src = value
    else:
        raise TypeError(f"{what} must be a ParamVector, a state_dict or a module, not {type(value).__name__}")
    vec = engine.as_point(src, what=what, names=names)
    bad = [n for n, t in vec.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{what} has non-finite values (NaN or inf) in {bad[:6]}")
    return vec


# --------------------------------------------------------------------------- the probe method
@renamed_keywords(steps="points")
def plane(engine: Engine | HasEngine, center: Any = None, directions: Sequence[Any] | None = None, span: Any = None, points: Any = 21,
          normalization: str | None = "auto", subnet: Selector | None = None, seed: int = 0, *,
          one_d: str = "zero", through: Sequence[Any] | None = None, margin: float = 0.25) -> Surface:
    """Evaluate the empirical error on a plane θ(x, y) = center + x·d₁ + y·d₂.

    Three ways to choose the plane:

    * **Random** (``directions=None``): d₁, d₂ are Gaussian, drawn from their own generators
      with seeds ``np.random.SeedSequence(seed).generate_state(2)`` (CPU, float64, then cast:
      the same on every device; the global RNG is not touched), then filter-normalised as Li
      et al. 2018, §4: each filter (slice along dim 0) of a direction gets the norm of the
      same filter of ``center``, which makes the plot invariant to the rescalings a ReLU
      network allows. 1-D and 0-D parameters (biases, BatchNorm weights) are zeroed, as
      their reference code (``ignore='biasbn'``); ``one_d`` chooses otherwise.
    * **Given** (``directions=(d1, d2)``, ParamVectors, state_dicts or modules, e.g.
      :class:`TrajectoryPCA` directions): used **as given** unless ``normalization`` is
      passed explicitly (``"filter"``, ``"layer"`` or ``"model"``), in which case copies are
      normalised against ``center``.
    * **Through three models** (``through=(a, b, c)``, Garipov et al. 2018, Fig. 1): the
      origin is ``a``, d₁ = u = b − a, d₂ = the part of c − a orthogonal to u (Gram–Schmidt
      on the parameters) rescaled to ‖u‖, so coordinates are in units of ‖b − a‖:
      a = (0, 0), b = (1, 0), c = (cx, cy) with cy > 0, reported in ``surface.anchors``.
      Floating buffers (BatchNorm statistics, under ``bn="eval"``) are interpolated
      affinely between the three models with the same plane coordinates, so each model
      sits at its anchor with its own statistics. The grid covers the three anchors plus
      ``margin`` on every side unless ``span`` gives the ranges.

    Only parameters move along random or given directions: floating buffers stay at the
    center's values (their directions are zero), as do parameters outside ``subnet``.

    Args:
        center: The point at (0, 0): a state_dict, module or ParamVector; ``None`` takes the
            model as it is. Must be ``None`` with ``through`` (the origin is ``a``).
        directions: ``None`` (random) or a pair ``(d1, d2)``. A given direction needs every
            moving parameter (those of ``subnet``); its buffers are ignored.
        span: ``None`` (random/given: 1.0, i.e. ±1 direction lengths; ``through``: fit the
            anchors), a number ``s`` (both axes run from −s to s), or explicit ranges
            ``((xmin, xmax), (ymin, ymax))``. With ``through`` only ``None`` or ranges.
        points: Grid points per axis, or a pair ``(nx, ny)``. An odd count on a symmetric span puts
            the center exactly on the grid (its coordinate is set to exactly 0.0).
        normalization: ``"auto"`` (``"filter"`` for random directions, none for given ones
            and for ``through``), ``"filter"`` (Li et al. 2018, §4), ``"layer"`` (each
            tensor scaled to the norm of the center's tensor), ``"model"`` (the whole
            direction to ‖center‖) or ``None`` (raw).
        subnet: Selector of the parameters that move (see :func:`landprobe.select`); the
            directions are zero outside it.
        seed: Seed of the random directions.
        one_d: 1-D/0-D tensors under ``"filter"``/``"layer"``: ``"zero"`` (Li et al.'s
            default), ``"filter"`` (rescaled as one filter), ``"copy"`` (set to the center's
            values, their code's other option) or ``"keep"``.
        through: A triple ``(a, b, c)`` of models, state_dicts or ParamVectors.
        margin: With ``through``: room around the anchors, in units of ‖b − a‖.

    Returns:
        A :class:`Surface`; the model is restored exactly afterwards. Under
        ``torch.distributed`` the grid points are split across ranks and every rank gets the
        whole surface.

    Raises:
        ValueError: On a bad ``span``, ``points``, ``normalization``, ``one_d`` or ``margin``;
            a grid of more than ``MAX_POINTS`` (100,000) points, ``nx·ny``;
            a direction or model lacking a parameter or with another shape; an all-zero
            direction; ``through`` models that coincide (a = b) or lie on one line.
        TypeError: If ``directions``/``through`` are not pairs/triples of vectors.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.probes.plane import plane
        >>> model = torch.nn.Linear(2, 1, bias=False)                 # y_hat = w1*x1 + w2*x2
        >>> data = [(torch.eye(2), torch.zeros(2, 1))]                 # L(w) = (w1**2 + w2**2) / 2
        >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), data)
        >>> d1, d2 = {"weight": torch.tensor([[1.0, 0.0]])}, {"weight": torch.tensor([[0.0, 1.0]])}
        >>> center = {"weight": torch.tensor([[0.0, 0.0]])}
        >>> s = plane(probe, center, directions=(d1, d2), span=2.0, points=3)
        >>> s.xs.tolist(), s.center_loss                               # L(0, 0) = 0
        ([-2.0, 0.0, 2.0], 0.0)
        >>> s.losses.tolist()                                          # (x**2 + y**2) / 2
        [[4.0, 2.0, 4.0], [2.0, 0.0, 2.0], [4.0, 2.0, 4.0]]
        >>> a = {"weight": torch.tensor([[0.0, 0.0]])}
        >>> b = {"weight": torch.tensor([[2.0, 0.0]])}
        >>> c = {"weight": torch.tensor([[1.0, 1.0]])}
        >>> t = plane(probe, through=(a, b, c), points=5)
        >>> t.anchors["c"], t.anchor_losses["b"]                       # c - a = 0.5 u + 0.5 v; L(b) = 4/2
        ([0.5, 0.5], 2.0)
    """
    engine = as_engine(engine)
    nx, ny = _check_args(points, normalization, one_d)
    check_int("seed", seed, 0, "seed of the random directions")
    names = engine.state_names()                       # parameters (+ floating buffers under bn='eval')
    pnames = select(engine.model, subnet)             # the parameters that move
    if through is not None:
        _check_through(through, center, directions, normalization, margin)
        chosen = _through_three(engine, through, names, pnames, subnet, span, margin)
    else:
        origin = engine.as_point(center if center is not None else engine.model, what="center",
                                 names=names).clone()
        xr, yr = _parse_span(1.0 if span is None else span)
        cp = origin.subset(pnames)
        if directions is None:
            kind, norm_used = "random", "filter" if normalization == "auto" else normalization
            raw = _random_directions(cp, seed)
        else:
            kind, norm_used = "given", None if normalization == "auto" else normalization
            raw = _given_directions(engine, directions, pnames)
        d1, d2 = _normalized(raw, cp, norm_used, one_d, subnet)
        chosen = _Plane(kind, origin, d1, d2, xr, yr, {"center": [0.0, 0.0]}, norm_used,
                        info=dict(direction_norms=[d1.norm(), d2.norm()],
                                  direction_cosine=d1.dot(d2) / (d1.norm() * d2.norm())))

    xs, ys = grid_axis(*chosen.xr, nx), grid_axis(*chosen.yr, ny)
    grid = _grid_points(xs, ys, chosen.anchors)
    evals = engine.sweep(names, _writers(names, chosen, grid), "plane")
    settings = engine.settings(probe="plane", directions=chosen.kind, normalization=chosen.normalization,
                               one_d=one_d, seed=int(seed) if chosen.kind == "random" else None,
                               span=[list(chosen.xr), list(chosen.yr)], points=[nx, ny],
                               subnet=_subnet_label(engine.model, subnet),
                               margin=float(margin) if chosen.kind == "through" else None, **chosen.info)
    return _surface(xs, ys, grid, evals, chosen.anchors, settings)


# --------------------------------------------------------------------------- the steps of plane
@dataclass
class _Plane:
    """The chosen plane: θ(x, y) = origin + x·d1 + y·d2 for x in ``xr``, y in ``yr``."""

    kind: str                           # "random", "given" or "through"
    origin: ParamVector                 # over the engine's state names
    d1: ParamVector
    d2: ParamVector
    xr: tuple[float, float]
    yr: tuple[float, float]
    anchors: dict[str, list[float]]     # name -> [x, y], measured exactly
    normalization: str | None           # the one applied to the directions
    info: dict[str, Any]                # direction norms and cosine, or |b - a|, for the settings


def _check_args(points: Any, normalization: Any, one_d: Any) -> tuple[int, int]:
    """``(nx, ny)``, after checking the arguments every kind of plane takes."""
    nx, ny = _parse_points(points)
    if nx * ny > MAX_POINTS:
        raise ValueError(f"points={points!r} would evaluate {nx * ny:,} points ({nx:,} × {ny:,}), more than "
                         f"MAX_POINTS = {MAX_POINTS:,} per call (landprobe.probes.interpolate.MAX_POINTS); "
                         f"use fewer points per axis (e.g. points={math.isqrt(MAX_POINTS)}), or cover the span "
                         f"in tiles with several calls and explicit span ranges")
    if normalization not in _NORMALIZATIONS + ("auto",):
        raise ValueError(f"normalization={normalization!r}; expected 'auto', 'filter' (Li et al. 2018, §4), "
                         f"'layer', 'model' or None")
    if one_d not in ("zero", "filter", "copy", "keep"):
        raise ValueError(f"one_d={one_d!r}; expected 'zero' (Li et al.), 'filter', 'copy' or 'keep'")
    return nx, ny


def _check_through(through: Any, center: Any, directions: Any, normalization: Any, margin: Any) -> None:
    """The arguments that a plane through three models excludes or needs."""
    if directions is not None:
        raise ValueError("pass either directions=(d1, d2) or through=(a, b, c), not both")
    if center is not None:
        raise ValueError("center must be None with through=(a, b, c): the plane's origin is a")
    if normalization not in ("auto", None):
        raise ValueError(f"normalization={normalization!r} with through=(a, b, c); the plane through three "
                         f"models uses their own differences (normalization='auto' or None)")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin={margin!r}; expected a finite number >= 0 (in units of |b - a|)")
    if not isinstance(through, (tuple, list)) or len(through) != 3:
        raise TypeError(f"through must be a triple (a, b, c) of models, state_dicts or ParamVectors; "
                        f"got {type(through).__name__}" + (f" of length {len(through)}"
                                                          if isinstance(through, (tuple, list)) else ""))


def _through_three(engine: Engine, through: Sequence[Any], names: list[str], pnames: list[str],
                   subnet: Selector | None, span: Any, margin: float) -> _Plane:
    """The plane with origin a, d1 = u = b - a and d2 = the part of c - a orthogonal to u (on the
    parameters) rescaled to |u|, so that a = (0, 0), b = (1, 0) and c = (cx, cy), cy > 0."""
    model = engine.model
    # clones: a module argument may be the probed model itself, whose tensors the sweep overwrites
    va, vb, vc = (engine.as_point(t, what=w, names=names).clone() for t, w in zip(through, "abc"))
    moving = set(pnames) | (set(engine.state_names(subnet)) - set(select(model, None)))
    u = ParamVector({n: (tb - ta) if n in moving else torch.zeros_like(ta)
                     for n, ta, tb in zip(names, va.tensors, vb.tensors)})
    w = ParamVector({n: (tc - ta) if n in moving else torch.zeros_like(ta)
                     for n, ta, tc in zip(names, va.tensors, vc.tensors)})
    up, wp = u.subset(pnames), w.subset(pnames)
    uu = up.dot(up)
    if not uu > 0:
        raise ValueError("through=(a, b, c): a and b have the same parameters (b - a = 0"
                         + (f" on subnet {subnet!r}" if subnet is not None else "") + "); pass three distinct models")
    cx = wp.dot(up) / uu
    cy = (wp - up * cx).norm() / math.sqrt(uu)
    eps = torch.finfo(up.tensors[0].dtype).eps if len(up) else 1e-16
    if not cy > 64 * eps * max(1.0, abs(cx), math.sqrt(wp.dot(wp) / uu)):
        raise ValueError(f"through=(a, b, c): c lies on the line through a and b (c - a = {cx:.6g} (b - a)); "
                         f"a plane needs three models not on one line")
    # d1 = u; d2 = (c - a - cx u) / cy: orthogonal to u on the parameters, |d2| = |u|, and
    # a + cx d1 + cy d2 = c on every entry (buffers included).
    d2 = (w - u * cx) / cy
    xr, yr = _through_ranges(span, cx, cy, margin)
    return _Plane("through", va, u, d2, xr, yr, {"a": [0.0, 0.0], "b": [1.0, 0.0], "c": [float(cx), float(cy)]},
                  None, info=dict(norm_b_minus_a=math.sqrt(uu)))


def _through_ranges(span: Any, cx: float, cy: float, margin: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The grid's ranges through three models: the anchors plus ``margin``, or the explicit ``span``."""
    if span is None:
        xr = (min(0.0, cx) - margin, max(1.0, cx) + margin)
        yr = (-margin, cy + margin)
        if margin == 0:
            raise ValueError("margin=0 with span=None leaves a and b on the grid's edge with no room: pass "
                             "margin > 0 or explicit span=((xmin, xmax), (ymin, ymax))")
        return xr, yr
    if isinstance(span, (int, float)):
        raise ValueError(f"span={span!r} with through=(a, b, c); pass span=None (fit the three models, plus "
                         f"margin) or explicit ranges ((xmin, xmax), (ymin, ymax)) in units of |b - a|")
    return _parse_span(span)


def _random_directions(cp: ParamVector, seed: int) -> list[ParamVector]:
    """Two Gaussian directions shaped like ``cp``, from their own generators seeded by ``seed``."""
    s1, s2 = (int(s) for s in np.random.SeedSequence(int(seed)).generate_state(2))
    return [cp.randn_like(s1), cp.randn_like(s2)]


def _given_directions(engine: Engine, directions: Any, pnames: list[str]) -> list[ParamVector]:
    """Copies of the user's pair ``(d1, d2)`` over the moving parameters."""
    if not isinstance(directions, (tuple, list)) or len(directions) != 2:
        raise TypeError(f"directions must be a pair (d1, d2) of ParamVectors, state_dicts or modules; got "
                        f"{type(directions).__name__}" + (f" of length {len(directions)}"
                                                         if isinstance(directions, (tuple, list)) else ""))
    return [_direction(engine, d, pnames, f"directions[{i}]").clone() for i, d in enumerate(directions)]


def _normalized(raw: list[ParamVector], cp: ParamVector, norm_used: str | None, one_d: str,
                subnet: Selector | None) -> list[ParamVector]:
    """The directions normalised in place against ``cp`` (unless ``norm_used`` is None); none may be zero."""
    for i, d in enumerate(raw):
        if norm_used is not None:
            d.normalize_(cp, norm_used, one_d=one_d)
        if not d.norm() > 0:
            raise ValueError(f"direction {i + 1} is zero on the moving parameters "
                             f"({'subnet ' + repr(subnet) if subnet is not None else 'whole model'}"
                             + (f", normalization={norm_used!r} with one_d={one_d!r} zeroes 1-D tensors"
                                if norm_used in ("filter", "layer") and one_d == "zero" else "")
                             + "); choose another subnet or one_d='filter'")
    return raw


def _grid_points(xs: np.ndarray, ys: np.ndarray, anchors: dict[str, list[float]]) -> list[tuple[float, float]]:
    """The grid row by row (y outer, x inner), then the anchors that are not grid points."""
    points = [(float(x), float(y)) for y in ys for x in xs]
    on_grid = set(points)
    return points + [p for p in (tuple(v) for v in anchors.values()) if p not in on_grid]


def _writers(names: list[str], chosen: _Plane, points: list[tuple[float, float]]) -> list[Writer]:
    """One writer per point: moving entries get base + x d1 + y d2 (the base of the row cached, so
    a row of the grid costs one add per point); the others are copied from the origin."""
    c0, d1, d2 = chosen.origin, chosen.d1, chosen.d2
    index = {n: i for i, n in enumerate(names)}
    mov = [n for n in d1.names if bool((d1[n] != 0).any()) or bool((d2[n] != 0).any())]
    mi = [index[n] for n in mov]
    si = [i for i, n in enumerate(names) if n not in set(mov)]
    c_mov = [c0.tensors[i] for i in mi]
    c_static = [c0.tensors[i] for i in si]
    d1m, d2m = [d1[n] for n in mov], [d2[n] for n in mov]
    cache: dict[str, Any] = {"y": None, "base": None}

    def row_base(y: float) -> list[torch.Tensor]:
        if cache["y"] != y:
            cache["base"] = c_mov if y == 0.0 else list(torch._foreach_add(c_mov, d2m, alpha=y))
            cache["y"] = y
        return cache["base"]

    def writer(x: float, y: float) -> Writer:
        def write(targets: list[torch.Tensor]) -> None:
            if c_static:
                torch._foreach_copy_([targets[i] for i in si], c_static)
            base = row_base(y)
            tm = [targets[i] for i in mi]
            if x == 0.0:
                torch._foreach_copy_(tm, base)
            else:
                for t, b0, d in zip(tm, base, d1m):
                    torch.add(b0, d, alpha=x, out=t)
        return write

    return [writer(x, y) for x, y in points]


def _surface(xs: np.ndarray, ys: np.ndarray, points: list[tuple[float, float]], evals: list,
             anchors: dict[str, list[float]], settings: dict[str, Any]) -> Surface:
    """The :class:`Surface` from the evaluations of ``points`` (the grid, then off-grid anchors)."""
    nx, ny = len(xs), len(ys)
    at = {p: evals[k] for k, p in enumerate(points)}
    losses = np.array([e.loss for e in evals[:nx * ny]]).reshape(ny, nx)
    stderr = np.array([e.stderr for e in evals[:nx * ny]]).reshape(ny, nx)
    anchor_losses = {k: float(at[(float(v[0]), float(v[1]))].loss) for k, v in anchors.items()}
    center_loss = anchor_losses.get("center", anchor_losses.get("a"))
    if settings.get("precision") is not None:        # what precision-targeted evaluation drew, per point
        used = np.array([int(e.batch_sizes.sum()) for e in evals])
        settings = {**settings, "samples_per_point": used[:nx * ny].reshape(ny, nx).tolist(),
                    "samples_total": int(used.sum())}
    return Surface(xs=xs, ys=ys, losses=losses, stderr=stderr, center_loss=float(center_loss), anchors=anchors,
                   anchor_losses=anchor_losses, settings=settings)

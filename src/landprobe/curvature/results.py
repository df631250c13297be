"""Result dataclasses of the curvature probes: eigenpairs, trace estimates, spectral densities."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from landprobe.common.io import to_jsonable
from landprobe.common.results import Result, require_matplotlib

__all__ = ["Eigenpairs", "TraceEstimate", "Spectrum"]


@dataclass(frozen=True, eq=False)
class Eigenpairs(Result):
    """Extreme eigenpairs of a Hessian, each with its own measured residual.

    Attributes:
        values: Eigenvalue estimates (Ritz values), float64: descending for ``which="LA"``,
            ascending for ``"SA"``, by descending magnitude for ``"LM"``.
        residuals: ‖H v − λ v‖ for each unit vector v, from real Hessian-vector products
            (Hv = Σ s_j H q_j over the kept Lanczos products; with ARPACK one extra product per
            pair), not the Lanczos recurrence's estimate. |λ − λ_true| ≤ residual for the
            nearest true eigenvalue.
        converged: Per pair, ``residual <= tol * |λ| + atol`` (see ``settings``), or with
            ``tol_on="value"`` the value's error estimate ``min(r, r²/gap)`` within it; a copy of
            an eigenvalue whose vector is not orthogonal to an earlier one's (a ghost) is never
            marked converged.
        matvecs: Hessian-vector products spent.
        vectors: The unit eigenvectors as ParamVectors (not written by :meth:`save`; save them
            with ``torch.save(v.state_dict(), ...)``).
        settings: k, which, tol, tol_on, atol, max_iter, seed, method, dtype, ...

    Example:
        >>> import numpy as np, landprobe.curvature as lc
        >>> e = lc.Eigenpairs(values=np.array([4.0, 1.0]), residuals=np.array([0.0, 1e-3]),
        ...                   converged=np.array([True, False]), matvecs=3)
        >>> e.values.tolist(), e.converged.tolist(), e.all_converged
        ([4.0, 1.0], [True, False], False)
    """

    # checked by Result.from_dict when loading
    _same_length = (("values", "residuals"),)
    values: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    matvecs: int = 0
    vectors: list = field(default_factory=list, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "values": to_jsonable(self.values),
                "residuals": to_jsonable(self.residuals), "converged": [bool(c) for c in self.converged],
                "matvecs": int(self.matvecs), "settings": to_jsonable(self.settings)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Eigenpairs:
        data = dict(data)
        flags = np.asarray(data.pop("converged", []), dtype=bool)
        out = super().from_dict(dict(data, converged=[]))
        object.__setattr__(out, "converged", flags)
        return out


@dataclass(frozen=True, eq=False)
class TraceEstimate(Result):
    """A stochastic estimate of tr(H) with its standard error.

    Attributes:
        value: The estimate (unbiased).
        stderr: Its standard error, estimated from the same draws (see :func:`~landprobe.curvature.trace.trace`).
        matvecs: Hessian-vector products spent.
        method: ``"hutchinson"`` or ``"hutch++"``.
        samples: The Rademacher quadratic forms zᵀ(·)z of the stochastic part.
        deflated: For Hutch++ the exact part tr(QᵀHQ) over the sketched range; 0 for Hutchinson.
        settings: seed, dtype, n, ...

    Example:
        >>> import numpy as np, landprobe.curvature as lc
        >>> t = lc.TraceEstimate(value=5.0, stderr=0.1, matvecs=9, method="hutch++",
        ...                      samples=np.array([1.0, 1.2, 0.8]), deflated=4.0)
        >>> t.interval()                      # 5 -/+ 1.96 * 0.1
        (4.804, 5.196)
    """

    value: float
    stderr: float
    matvecs: int
    method: str
    samples: np.ndarray
    deflated: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Normal-approximation confidence interval ``value -/+ z * stderr``."""
        return (round(self.value - z * self.stderr, 12), round(self.value + z * self.stderr, 12))


def _gauss(grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    ok = np.isfinite(nodes) & (weights > 0)
    t, w = nodes[ok], weights[ok]
    z = (grid[:, None] - t[None, :]) / sigma
    return (np.exp(-0.5 * z * z) @ w) / (sigma * math.sqrt(2 * math.pi))


@dataclass(frozen=True, eq=False)
class Spectrum(Result):
    """Spectral density of a Hessian by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Each probe p gives a Gauss quadrature: nodes θ_pi (Ritz values) with weights τ_pi
    (squared first components of the Ritz vectors; Σ_i τ_pi = 1). The density is the
    mean over probes of Σ_i τ_pi · N(t; θ_pi, σ²).

    Attributes:
        nodes: (probes, steps) float64; a probe whose Krylov space became invariant early
            (exact quadrature) is padded with NaN nodes of weight 0.
        weights: (probes, steps) float64, each row summing to 1.
        grid: Points t where the density is evaluated.
        density: The smoothed density on ``grid`` (integrates to about 1).
        sigma: Width of the Gaussian kernel.
        n: Dimension of the Hessian.
        settings: steps, probes, seed, dtype, ...

    Example:
        >>> import numpy as np, landprobe.curvature as lc
        >>> s = lc.Spectrum.from_quadrature(np.array([[1.0, 3.0]]), np.array([[0.5, 0.5]]),
        ...                                  n=2, sigma=0.1, grid=np.linspace(0, 4, 401))
        >>> s.trace                              # n * sum(weights * nodes) = 2 * 2
        4.0
        >>> round(float(np.trapezoid(s.density, s.grid)), 6)
        1.0
    """

    # checked by Result.from_dict when loading
    _same_length = (("nodes", "weights"), ("grid", "density"))
    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    n: int
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_quadrature(cls, nodes: np.ndarray, weights: np.ndarray, *, n: int, sigma: float | None = None,
                        grid: Any = 1000, settings: dict[str, Any] | None = None) -> Spectrum:
        """Smooth quadrature nodes/weights into a density (``sigma`` default: 1% of the node range)."""
        nodes = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        fin = nodes[np.isfinite(nodes)]
        lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 0.0)
        span = hi - lo
        if sigma is None:
            sigma = 0.01 * span if span > 0 else max(abs(hi), 1.0) * 0.01
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma={sigma!r}; expected a positive kernel width (e.g. 0.01 * (lambda_max - lambda_min))")
        if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
            if grid < 2:
                raise ValueError(f"grid={grid!r}; expected at least 2 points or an array of points")
            grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(grid))
        else:
            grid = np.asarray(grid, dtype=np.float64).reshape(-1)
            if grid.size < 1 or not np.all(np.isfinite(grid)):
                raise ValueError("grid must be a point count (int >= 2) or a non-empty array of finite points")
        dens = _gauss(grid, nodes.reshape(-1), weights.reshape(-1), float(sigma)) / nodes.shape[0]
        return cls(nodes=nodes, weights=weights, grid=grid, density=dens, sigma=float(sigma), n=int(n),
                   settings=dict(settings or {}))

    @property
    def trace(self) -> float:
        """n · mean over probes of Σ τ·θ: an unbiased estimate of tr(H) (exact moments of the quadrature)."""
        return self.moment(1) * self.n

    def moment(self, k: int) -> float:
        """The k-th spectral moment (1/n) tr(H^k) as estimated by the quadrature (exact for 2k-1 < steps)."""
        t = np.where(np.isfinite(self.nodes), self.nodes, 0.0)
        return float(np.mean(np.sum(self.weights * t**k, axis=1)))

    def plot(self, ax=None, *, log: bool = True, **kwargs):
        """Plot the density against eigenvalue (log scale by default, as Ghorbani et al.).

        Example:
            >>> import numpy as np, landprobe.curvature as lc
            >>> s = lc.Spectrum.from_quadrature(np.array([[0.0, 2.0]]), np.array([[0.9, 0.1]]), n=10)
            >>> ax = s.plot()
            >>> ax.get_xlabel()
            'eigenvalue'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        y = np.maximum(self.density, 1e-300) if log else self.density
        ax.plot(self.grid, y, **kwargs)
        if log:
            ax.set_yscale("log")
            top = float(np.max(y)) if y.size else 1.0
            ax.set_ylim(max(top * 1e-8, 1e-300), top * 2)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.set_title(f"Hessian spectrum (SLQ, n={self.n}, {self.nodes.shape[0]} probe(s))")
        return ax

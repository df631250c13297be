"""Spectral density by stochastic Lanczos quadrature (SLQ; Ghorbani, Krishnan & Xiao 2019)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from landprobe.curvature.lanczos import _rademacher, lanczos
from landprobe.curvature.results import Spectrum
from landprobe.engine import Progress

__all__ = ["density"]


def density(op, steps: int = 90, probes: int = 1, *, sigma: float | None = None, grid: Any = 1000,
            seed: int = 0) -> Spectrum:
    """The eigenvalue density of a Hessian by stochastic Lanczos quadrature.

    For each of ``probes`` normalised Rademacher vectors v, ``steps`` Lanczos steps (full
    reorthogonalisation, float64 basis) give T = V Θ Vᵀ; the Gauss quadrature nodes are the
    Ritz values θ_i and the weights τ_i = V_1i². Then vᵀ f(H) v ≈ Σ τ_i f(θ_i), exact for
    polynomials of degree < 2·steps, and the density is the probe mean of
    Σ τ_i N(t; θ_i, σ²) (Ghorbani et al. 2019, §3). With ``steps = n`` the nodes are the
    eigenvalues of H (those the probe sees). A probe whose Krylov space becomes invariant
    stops there (its quadrature is then exact) and is padded with NaN nodes of weight 0.
    When the operator's ``progress`` (the probe's setting) asks for it, a bar counts the
    products (``probes · steps`` at most). Under data sharding call it on every rank with the
    same arguments: the probes are seeded and each product is summed over the ranks, so every
    rank returns the same spectrum (that of one process, to rounding).

    Args:
        op: A :class:`~landprobe.curvature.HessianOperator`.
        steps: Lanczos steps per probe (clamped to n); 90 as Ghorbani et al.'s experiments.
        probes: Number of probe vectors (their densities are averaged).
        sigma: Gaussian kernel width; default 1% of the range of the nodes.
        grid: Number of evenly spaced points (node range ± 5σ) or an array of points.
        seed: Seed of the probes.

    Returns:
        A :class:`Spectrum` (nodes and weights per probe, density on the grid, ``plot()``).

    Raises:
        ValueError: If ``steps`` or ``probes`` is not a positive integer, or sigma/grid is bad.

    Example:
        >>> import numpy as np, torch, landprobe as lp
        >>> from landprobe.curvature import hessian, density
        >>> model = torch.nn.Linear(3, 1, bias=False)
        >>> x = torch.diag(torch.tensor([1.0, 2.0, 3.0])); y = torch.zeros(3, 1)
        >>> H = hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)]), dtype=torch.float64)
        >>> spec = density(H, steps=3)
        >>> np.round(np.sort(spec.nodes[0]) * 3 / 2, 10).tolist()       # eigenvalues (2/3) * [1, 4, 9]
        [1.0, 4.0, 9.0]
        >>> round(float(spec.weights.sum()), 12), round(spec.trace, 10)         # Rademacher: weights 1/3 each
        (1.0, 9.3333333333)
    """
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r}; expected a positive integer number of Lanczos steps (e.g. 90)")
    if not isinstance(probes, (int, np.integer)) or isinstance(probes, bool) or probes < 1:
        raise ValueError(f"probes={probes!r}; expected a positive integer number of probe vectors")
    steps = int(min(steps, op.n))
    gen = torch.Generator().manual_seed(int(seed))
    nodes = np.full((int(probes), steps), np.nan)
    weights = np.zeros((int(probes), steps))
    start = op.matvecs
    with Progress("SLQ", int(probes) * steps, enabled=getattr(op, "progress", None), unit="product") as bar:
        def mv(v: Tensor) -> Tensor:
            bar.update()
            return op._flat_matvec(v)

        for p in range(int(probes)):
            v = _rademacher(op.n, gen).to(op.device)
            run = lanczos(mv, v, steps, restart=False)
            th, S = np.linalg.eigh(run.tridiagonal())
            m = len(th)
            nodes[p, :m] = th
            weights[p, :m] = S[0, :] ** 2
    settings = dict(op.settings, steps=steps, probes=int(probes), seed=int(seed),
                    matvecs=int(op.matvecs - start))
    return Spectrum.from_quadrature(nodes, weights, n=op.n, sigma=sigma, grid=grid, settings=settings)

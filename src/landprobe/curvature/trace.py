"""Stochastic trace estimators: Hutchinson (1989) and Hutch++ (Meyer, Musco, Musco & Woodruff 2021).

Both use Rademacher probes drawn on the CPU from a seeded generator (float64), so the same seed
gives the same estimate on every device, and the global RNG is never touched. When the
operator's ``progress`` (the probe's setting) asks for it, a bar counts the products. Under
data sharding every rank draws the same probes and gets the products summed over the ranks,
so every rank returns the same estimate (that of one process, to rounding).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from landprobe.curvature.results import TraceEstimate
from landprobe.engine import Progress

__all__ = ["trace", "hutchinson", "hutchpp", "TRACE_METHODS"]

TRACE_METHODS = ("hutch++", "hutchinson")


def _rademacher(n: int, count: int, gen: torch.Generator, device) -> Tensor:
    z = torch.randint(0, 2, (count, n), generator=gen, dtype=torch.int8).to(torch.float64)
    return z.mul_(2).sub_(1).to(device)


_CHUNK = 32


def _bar(op, desc: str, total: int) -> Progress:
    """A bar of ``total`` products, shown as the operator's ``progress`` setting says."""
    return Progress(desc, total, enabled=getattr(op, "progress", None), unit="product")


def _products(op, rows: Tensor, bar: Progress) -> Tensor:
    """H applied to each row of ``rows`` (m x n, float64), in chunks through ``op``'s batched
    path; ``bar`` advances by the products of each chunk."""
    out = []
    for i in range(0, rows.shape[0], _CHUNK):
        block = rows[i:i + _CHUNK]
        if hasattr(op, "_rows_product"):
            out.append(op._rows_product(block).to(torch.float64))
        elif hasattr(op, "matmat"):
            out.append(op.matmat(block.T).T.to(torch.float64))
        else:
            out.append(torch.stack([op._flat_matvec(r).to(torch.float64) for r in block]))
        bar.update(block.shape[0])
    return torch.cat(out) if out else rows.new_zeros((0, rows.shape[1]))


class _Spread:
    """The standard error of a mean of Rademacher quadratic forms gᵀAg, from the vectors d = g ⊙ Ag.

    For Rademacher g, Var(gᵀAg) = 2(‖A‖_F² − Σ A_ii²) and E[d] = diag(A), E‖d‖² = ‖Ag‖² (as
    g_i² = 1), so the trace of the sample covariance of the d_j (divisor c − 1) is an unbiased
    estimate of ‖A‖_F² − Σ A_ii² that pools all n coordinates of every draw: far less noisy than
    the sample variance of c scalars gᵀAg (whose z-score is Student-t with c − 1 degrees of
    freedom). Sums are shifted by the first d, so identical draws give exactly 0.
    """

    def __init__(self):
        self.count, self.squares, self.shift, self.total = 0, 0.0, None, None

    def add(self, G: Tensor, AG: Tensor) -> None:
        """Add the draws ``G`` (rows g_j, not projected) with their products ``AG`` (rows A g_j)."""
        D = G * AG
        if self.shift is None:
            self.shift, self.total = D[0].clone(), torch.zeros_like(D[0])
        D = D - self.shift
        self.total += D.sum(dim=0)
        self.squares += float(torch.sum(D * D))
        self.count += D.shape[0]

    def stderr(self) -> float:
        """√(2 ŝ / c) with ŝ the estimate of ‖A‖_F² − Σ A_ii²; NaN for fewer than two draws."""
        c = self.count
        if c < 2:
            return float("nan")
        spread = max(self.squares - float(self.total @ self.total) / c, 0.0) / (c - 1)
        return math.sqrt(2.0 * spread / c)


def hutchinson(op, matvecs: int = 100, *, seed: int = 0) -> TraceEstimate:
    """Hutchinson's estimator: the mean of zᵀHz over ``matvecs`` Rademacher vectors z.

    Unbiased; variance 2(‖H‖_F² − Σ H_ii²)/m. The standard error estimates that variance from
    the vectors z ⊙ Hz of the same draws (their sample covariance's trace is unbiased for
    ‖H‖_F² − Σ H_ii²), which pools every coordinate and so stays calibrated at small m, where
    the sample standard deviation of m scalars would not (see ``docs/curvature.md``).

    Raises:
        ValueError: If ``matvecs < 2`` (one draw has no standard error).

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.curvature import hessian, hutchinson
        >>> model = torch.nn.Linear(3, 1, bias=False)
        >>> x = torch.diag(torch.tensor([1.0, 2.0, 3.0])); y = torch.zeros(3, 1)
        >>> H = hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)]), dtype=torch.float64)
        >>> est = hutchinson(H, matvecs=10)      # H is diagonal: every draw is exactly tr(H)
        >>> round(est.value, 12), round(est.stderr, 12)                 # (2/3)(1 + 4 + 9)
        (9.333333333333, 0.0)
    """
    if not isinstance(matvecs, (int, np.integer)) or matvecs < 2:
        raise ValueError(f"matvecs={matvecs!r}; Hutchinson needs an integer of at least 2 (for its standard error)")
    gen = torch.Generator().manual_seed(int(seed))
    start = op.matvecs
    samples: list[float] = []
    spread = _Spread()
    left = int(matvecs)
    with _bar(op, "Hutchinson", left) as bar:
        while left > 0:                               # chunks bound the memory of the probes
            c = min(left, _CHUNK)
            Z = _rademacher(op.n, c, gen, op.device)
            HZ = _products(op, Z, bar)
            samples.extend(torch.sum(Z * HZ, dim=1).tolist())
            spread.add(Z, HZ)
            left -= c
    s = np.asarray(samples)
    settings = dict(op.settings, seed=int(seed), estimator="hutchinson")
    return TraceEstimate(value=float(s.mean()), stderr=spread.stderr(), matvecs=int(op.matvecs - start),
                         method="hutchinson", samples=s, deflated=0.0, settings=settings)


def hutchpp(op, matvecs: int = 99, *, seed: int = 0) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021, Algorithm 1): exact trace on a sketched top range + Hutchinson on the rest.

    With s = ⌊m/3⌋: S is n x s Rademacher, Q = orth(H S), and
    tr(H) ≈ tr(QᵀHQ) + mean over the remaining m − 2s Rademacher g of gᵀ(I−QQᵀ)H(I−QQᵀ)g.
    The second part is unbiased for tr(A), A = (I−QQᵀ)H(I−QQᵀ), given Q, so the estimate is
    unbiased and Var(estimate) = E_Q[Var(estimate | Q)] = E_Q[2(‖A‖_F² − Σ A_ii²)/(m − 2s)].
    The standard error is the root of an unbiased estimate of that, from the vectors g ⊙ Ag of
    the same draws (no splitting, no extra products; see :func:`hutchinson`); it stays
    calibrated down to the smallest budget, 4, where the sample spread of the few deflated
    forms gᵀAg would understate the error (see ``docs/curvature.md``). When H is
    dominated by a few large eigenvalues, as Hessians of networks are, the deflated part has
    far smaller variance than plain Hutchinson.

    Raises:
        ValueError: If ``matvecs < 4`` (the deflated part needs two draws for a standard error).

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.curvature import hessian, hutchpp
        >>> model = torch.nn.Linear(3, 1, bias=False)
        >>> x = torch.diag(torch.tensor([1.0, 2.0, 3.0])); y = torch.zeros(3, 1)
        >>> H = hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)]), dtype=torch.float64)
        >>> est = hutchpp(H, matvecs=9)          # s = 3 = n: the sketch holds all of H
        >>> round(est.value, 12), round(est.deflated, 12), round(est.stderr, 12)
        (9.333333333333, 9.333333333333, 0.0)
    """
    if not isinstance(matvecs, (int, np.integer)) or matvecs < 4:
        raise ValueError(f"matvecs={matvecs!r}; Hutch++ needs an integer of at least 4 (use 'hutchinson' for fewer)")
    m = int(matvecs)
    s = m // 3
    g_count = m - 2 * s
    gen = torch.Generator().manual_seed(int(seed))
    start = op.matvecs
    with _bar(op, "Hutch++", m) as bar:
        S = _rademacher(op.n, s, gen, op.device)
        Q, _ = torch.linalg.qr(_products(op, S, bar).T)             # n x s, orthonormal range of HS
        deflated = float(torch.sum(Q.T * _products(op, Q.T.contiguous(), bar)))
        G = _rademacher(op.n, g_count, gen, op.device)
        PG = G - (G @ Q) @ Q.T                                       # (I - QQᵀ) g, as rows
        HPG = _products(op, PG, bar)
        smp = torch.sum(PG * HPG, dim=1).cpu().numpy()
        spread = _Spread()
        spread.add(G, HPG - (HPG @ Q) @ Q.T)                         # rows A g, A = (I-QQᵀ)H(I-QQᵀ)
    settings = dict(op.settings, seed=int(seed), estimator="hutch++", sketch=int(s))
    return TraceEstimate(value=deflated + float(smp.mean()), stderr=spread.stderr(), matvecs=int(op.matvecs - start),
                         method="hutch++", samples=smp, deflated=deflated, settings=settings)


def trace(op, method: str = "hutch++", matvecs: int = 99, *, seed: int = 0) -> TraceEstimate:
    """Estimate tr(H) with ``method`` in ``matvecs`` Hessian-vector products.

    Args:
        op: A :class:`~landprobe.curvature.HessianOperator`.
        method: ``"hutch++"`` (default; Meyer et al. 2021) or ``"hutchinson"`` (Hutchinson 1989).
        matvecs: The budget of products (Hutch++ >= 4, Hutchinson >= 2).
        seed: Seed of the Rademacher probes.

    Returns:
        A :class:`TraceEstimate` with value and standard error; under data sharding the same
        on every rank (call it on every rank with the same arguments).

    Raises:
        ValueError: For an unknown method or too small a budget.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.curvature import hessian, trace
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); y = torch.zeros(2, 1)
        >>> H = hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)]), dtype=torch.float64)
        >>> round(trace(H, "hutchinson", 4).value, 12)                  # diag(1, 4)
        5.0
    """
    if method == "hutch++":
        return hutchpp(op, matvecs, seed=seed)
    if method == "hutchinson":
        return hutchinson(op, matvecs, seed=seed)
    raise ValueError(f"method={method!r}; expected one of {TRACE_METHODS}")

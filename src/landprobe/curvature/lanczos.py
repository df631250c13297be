"""Lanczos with full reorthogonalisation (float64 Krylov basis) and extreme eigenpairs.

The Krylov basis is kept in float64 whatever the operator's dtype, and every new vector is
orthogonalised twice against all earlier ones (classical Gram-Schmidt, "twice is enough"),
so Ritz vectors stay orthonormal and no spurious copies (ghosts) of converged eigenvalues
appear. (A second pass only on demand, the DGKS test, left residuals of 6e-12 instead of
rounding level at an exhausted Krylov space of a test problem and so missed a breakdown.)
Each step works in place in the basis' next row. Memory: 8·n bytes per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landprobe.curvature.results import Eigenpairs
from landprobe.engine import Progress

__all__ = ["lanczos", "LanczosRun", "top_eigenvalues", "WHICH"]

WHICH = ("LA", "SA", "LM")


@dataclass
class LanczosRun:
    """Output of :func:`lanczos`: T = tridiag(betas, alphas, betas) and the basis Q (m x n, float64).

    Example:
        >>> import numpy as np
        >>> from landprobe.curvature import LanczosRun
        >>> run = LanczosRun(np.array([1.0, 2.0]), np.array([0.5]), None, 0.0, 2)
        >>> run.tridiagonal()
        array([[1. , 0.5],
               [0.5, 2. ]])
    """

    alphas: np.ndarray
    betas: np.ndarray          # m - 1 couplings (0 where the run restarted after a breakdown)
    basis: Tensor              # (m, n) float64, orthonormal rows
    last_beta: float           # β_m: norm of the part of H q_m outside the basis
    matvecs: int
    products: Tensor | None = None   # (m, n) float64 rows H q_j, when kept

    def tridiagonal(self) -> np.ndarray:
        m = len(self.alphas)
        T = np.diag(self.alphas)
        if m > 1:
            T += np.diag(self.betas, 1) + np.diag(self.betas, -1)
        return T


def _rademacher(n: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).to(torch.float64).mul_(2).sub_(1)


def lanczos(matvec: Callable[[Tensor], Tensor], v0: Tensor, steps: int, *, restart: bool = False,
            seed: int = 0, callback: Callable[[LanczosRun], bool] | None = None,
            keep_products: bool = False) -> LanczosRun:
    """Symmetric Lanczos with full reorthogonalisation against a float64 basis.

    Args:
        matvec: Flat float64 tensor -> H @ it (any float dtype; cast to float64 here).
        v0: Start vector (any non-zero flat tensor; normalised here).
        steps: Krylov dimension to reach (at most n).
        restart: On a breakdown (the Krylov space became invariant) continue with a random
            vector orthogonal to the basis (coupling 0: T becomes block diagonal), so that
            multiple eigenvalues are found; otherwise stop there (as SLQ wants).
        seed: Seed of the restart vectors.
        callback: Called after each step with the run so far; returning True stops.
        keep_products: Also keep the products H q_j (another 8·n bytes per step), so that
            H v of any Ritz vector v = Σ s_j q_j is Σ s_j H q_j without a new product.

    Returns:
        A :class:`LanczosRun`.

    Example:
        >>> import torch
        >>> from landprobe.curvature.lanczos import lanczos
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> run = lanczos(lambda v: A @ v, torch.ones(3, dtype=torch.float64), 3)
        >>> sorted(round(x, 12) for x in torch.linalg.eigvalsh(torch.from_numpy(run.tridiagonal())).tolist())
        [1.0, 2.0, 3.0]
    """
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r}; expected an integer >= 1 (Lanczos steps, at most the dimension)")
    v0 = v0.detach().to(torch.float64).reshape(-1)
    n = v0.numel()
    steps = int(min(steps, n))
    Q = torch.empty(min(steps + 1, 32), n, dtype=torch.float64, device=v0.device)
    nrm = float(torch.linalg.vector_norm(v0))
    if not math.isfinite(nrm) or nrm == 0.0:
        raise ValueError(f"v0 has norm {nrm}: the start vector is zero or not finite; pass a finite, non-zero "
                         f"flat tensor")
    Q[0] = v0 / nrm
    W = torch.empty_like(Q) if keep_products else None
    alphas: list[float] = []
    betas: list[float] = []
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    scale = 0.0
    run = None
    for j in range(steps):
        if j + 1 >= Q.shape[0]:
            Q, W = _grow(Q, W, j, steps)
        beta = _extend(matvec, Q, W, j, alphas, betas)
        scale = max(scale, abs(alphas[-1]) + beta + (betas[-1] if betas else 0.0))
        run = LanczosRun(np.array(alphas), np.array(betas), Q[: j + 1], beta, j + 1)
        if j + 1 == steps:
            break
        # With restarts on (eigenpairs), a space invariant to sqrt(eps) already holds what this
        # block can give: restarting there drops a coupling of that size, which moves the Ritz
        # values by O(beta²), and finds further copies of a repeated eigenvalue. (How far below
        # 1e-12·scale an exactly invariant space's beta falls depends on the CPU's kernels: 4e-12
        # was seen.) Without restarts (SLQ) the recurrence runs on to 1e-12·scale.
        breakdown = beta <= (1e-8 if restart else 1e-12) * max(scale, 1e-300) or not math.isfinite(beta)
        # At a breakdown with restarts on, go on even if the callback is satisfied: the next
        # block may hold further copies of a repeated eigenvalue.
        if callback is not None and not (breakdown and restart) and callback(run):
            break
        if breakdown:
            if not restart or not _restart(Q, j, gen):
                break
            beta = 0.0
        else:
            Q[j + 1].div_(beta)
        betas.append(beta)
    assert run is not None
    run.basis = Q[: len(alphas)]
    run.products = None if W is None else W[: len(alphas)]
    return run


def _grow(Q: Tensor, W: Tensor | None, j: int, steps: int) -> tuple[Tensor, Tensor | None]:
    """Room for the basis' next row (grown on demand, doubling: on a GPU an unused row is memory)."""
    rows = min(2 * Q.shape[0], steps + 1)
    bigger = torch.empty(rows, Q.shape[1], dtype=torch.float64, device=Q.device)
    bigger[: j + 1] = Q[: j + 1]
    if W is None:
        return bigger, None
    bigger_w = torch.empty_like(bigger)
    bigger_w[: j] = W[: j]
    return bigger, bigger_w


def _extend(matvec: Callable[[Tensor], Tensor], Q: Tensor, W: Tensor | None, j: int, alphas: list[float],
            betas: list[float]) -> float:
    """One Lanczos step: append α_j, leave H q_j orthogonalised against q_0..q_j (not yet
    normalised) in row j + 1 of ``Q`` (and H q_j in row j of ``W``), and return its norm β."""
    q = Q[j]
    # Everything in place in the next row of the basis: no n-sized temporaries per step.
    w = Q[j + 1]
    w.copy_(matvec(q).reshape(-1))          # to float64 while copying
    if W is not None:
        W[j].copy_(w)
    a = float(torch.dot(q, w))
    alphas.append(a)
    w.sub_(q, alpha=a)
    if j > 0:
        w.sub_(Q[j - 1], alpha=betas[-1])
    B = Q[: j + 1]
    for _ in range(2):                      # full reorthogonalisation, twice ("twice is enough")
        w.addmv_(B.T, B @ w, alpha=-1.0)
    return float(torch.linalg.vector_norm(w))


def _restart(Q: Tensor, j: int, gen: torch.Generator) -> bool:
    """After a breakdown at step j, put a random unit vector orthogonal to q_0..q_j into row
    j + 1 of ``Q``; False when there is none (the basis spans everything: H is fully known)."""
    B = Q[: j + 1]
    n = Q.shape[1]
    # Gaussian, not Rademacher: a few +-1 vectors are linearly dependent too often in small n.
    r = torch.randn(n, generator=gen, dtype=torch.float64).to(Q.device)
    for _ in range(2):
        r = r - B.T @ (B @ r)
    rn = float(torch.linalg.vector_norm(r))
    if rn <= 1e-8 * math.sqrt(n):
        return False
    Q[j + 1].copy_(r).div_(rn)
    return True


def _order(theta: np.ndarray, which: str) -> np.ndarray:
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


def top_eigenvalues(op, k: int = 1, which: str = "LA", *, tol: float = 1e-6, max_iter: int | None = None,
                    seed: int = 0, method: str = "lanczos", atol: float | None = None,
                    warm_start: float | str | None = None, tol_on: str = "residual") -> Eigenpairs:
    """The k extreme eigenpairs of a Hessian operator, each with a measured residual.

    Lanczos with full reorthogonalisation from a seeded Gaussian start, stopped once the
    recurrence's residual estimates β_m·|s_mi| of the k wanted Ritz pairs are below
    ``tol·|θ| + atol`` and the wanted Ritz values have held within that bound over the last
    quarter of the steps (at least one; in a cluster of eigenvalues, one whose direction the
    start vector barely holds enters the wanted set late, after the others have converged;
    its arrival restarts the wait); then every returned pair's residual ‖Hv − θv‖ is measured, not
    estimated: the products H q_j of the Lanczos vectors are kept, so Hv = Σ s_j (H q_j) by
    linearity from real products (no reliance on the recurrence, whose relation a float32 or
    slightly asymmetric product breaks), and that decides its ``converged`` flag.
    (``method="arpack"`` spends one more product per pair for it.) On a breakdown (the
    Krylov space became invariant) the run restarts with a random vector orthogonal to the
    basis, so repeated eigenvalues are found with their multiplicity in small problems.

    ``tol_on="value"`` asks for the eigenvalues to ``tol`` rather than the pairs: a Ritz value
    θ with residual r lies within r²/gap of its eigenvalue (Kato-Temple; gap: the distance to
    the rest of the spectrum), far inside r once r is small against the gap, so the test is
    ``min(r, r²/gap) <= tol·|θ| + atol`` with the gap estimated from the other Ritz values of
    the Krylov space: the distance to each less its residual estimate (an eigenvalue lies
    within that of it), the smallest, so that a neighbour still climbing towards the wanted
    value does not pass for a wide gap; first on the recurrence's estimates, then on the
    measured residuals for ``converged``. At tol 1e-3 it stops a few products earlier
    than the residual test on a separated top eigenvalue; the vectors are then only
    as good as their residuals say.

    Limitation (of every single-vector Krylov method, ARPACK's too): before its Krylov space
    is exhausted, Lanczos sees one copy of an exactly repeated eigenvalue, so in a large
    problem a returned set can skip further copies of a converged value; each returned pair
    is still a true eigenpair to its residual. Ghosts (spurious copies from lost
    orthogonality) do not arise: the basis is reorthogonalised in float64, and a value whose
    vector is not orthogonal to an earlier equal one is flagged unconverged.

    Progress: when the operator's ``progress`` (the probe's setting) asks for it, a bar counts
    the products (up to ``max_iter`` for Lanczos) and shows the current worst residual estimate.

    Data sharding: call it on every rank with the same arguments. Each product is summed over
    the ranks and the start and restart vectors are seeded, so every rank takes the same steps
    and returns the same pairs (those of one process, to rounding).

    Args:
        op: A :class:`~landprobe.curvature.HessianOperator` (or anything with ``n``,
            ``dtype``, ``device`` and a flat ``matvec``).
        k: How many eigenpairs (1 <= k <= n).
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"LM"`` largest magnitude.
        tol: Relative residual tolerance.
        max_iter: Largest Krylov dimension (default ``min(n, max(100, 10 * k))``); memory
            16·n·max_iter bytes (basis and products). When it is reached the pairs are returned unconverged.
        seed: Seed of the start vector.
        method: ``"lanczos"`` (this module) or ``"arpack"`` (SciPy ``eigsh`` on
            ``op.as_linear_operator()``; implicitly restarted, float64 numpy on the CPU).
        atol: Absolute residual floor; default ``100·eps(op.dtype)·max|θ|``: a product in
            float32 cannot resolve a residual below its own rounding.
        warm_start: ``None`` (default): start from a seeded Gaussian vector. A fraction such as
            ``0.125``: first run this Lanczos on the Hessian of that share of the data
            (``op.subsample(fraction)``, to tolerance ``max(tol, 1e-3)``), then start the run on
            the full H from the sum of its k Ritz vectors. When the wanted eigenvalues are well
            separated the subsample's vectors are already close and the full run needs one or
            two products. The result is still judged on the full H (its residuals are measured
            there), but like any single-vector start it can miss an eigenvalue that the
            subsample ranks below the k-th (nearly equal eigenvalues): leave it off when the top
            of the spectrum may be clustered. Its products are reported in
            ``settings["warm_start"]``, not in ``matvecs``. ``"gradient"``: start from the
            unit loss gradient at θ plus the unit seeded random vector. During training the
            gradient lies mostly in the span of the top eigenvectors (Gur-Ari et al. 2018), so
            the top pairs converge in fewer products; the gradient comes off the kept graph
            (or costs one pass when products are streamed) and its norm is reported in
            ``settings["warm_start"]``; where the gradient is zero (or not finite) the start
            is the random vector alone.
        tol_on: ``"residual"`` (default): every pair to ``tol`` (its residual ‖Hv − θv‖).
            ``"value"``: the eigenvalues to ``tol`` (their error estimate min(r, r²/gap), above);
            Lanczos only.

    Returns:
        :class:`Eigenpairs` (values, unit vectors as ParamVectors, residuals, flags).

    Raises:
        ValueError: For a bad ``k``, ``which``, ``tol``, ``max_iter``, ``method``, ``warm_start``
            or ``tol_on`` (``"value"`` with ``method="arpack"``).

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.curvature import hessian, top_eigenvalues
        >>> model = torch.nn.Linear(3, 1, bias=False)
        >>> x = torch.diag(torch.tensor([1.0, 2.0, 3.0])); y = torch.zeros(3, 1)
        >>> H = hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)]), dtype=torch.float64)
        >>> res = top_eigenvalues(H, k=2, which="SA")                     # (2/3) * [1, 4]
        >>> [round(v, 12) for v in res.values.tolist()], res.converged.tolist()
        ([0.666666666667, 2.666666666667], [True, True])
    """
    max_iter = _checked_arguments(op.n, k, which, tol, max_iter, method)
    if atol is not None and not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol={atol!r}; expected None (the default floor) or a finite absolute residual >= 0")
    if tol_on not in ("residual", "value"):
        raise ValueError(f"tol_on={tol_on!r}; expected 'residual' (the pairs to tol) or 'value' (the eigenvalues)")
    if tol_on == "value" and method != "lanczos":
        raise ValueError("tol_on='value' needs method='lanczos' (the gap comes from its Ritz values); "
                         "use tol_on='residual' with ARPACK")
    v0, warm = _start_vector(op, k, which, tol, max_iter, seed, method, atol, warm_start)
    eps = torch.finfo(op.dtype).eps
    start = op.matvecs
    with _product_progress(op, method, max_iter) as bar:
        def mv(v: Tensor) -> Tensor:
            bar.update()
            return op._flat_matvec(v)

        if method == "arpack":
            theta, vecs, hvecs, big = _arpack_pairs(op, v0, k, which, tol, max_iter, bar)
            gaps = None
        else:
            theta, vecs, hvecs, big, gaps = _lanczos_pairs(mv, v0, k, which, tol, atol, eps, max_iter, seed, bar,
                                                           by_value=tol_on == "value")
        floor = atol if atol is not None else 100 * eps * big
        units, residuals, flags = _measured(mv, theta, vecs, hvecs, tol, floor, gaps)
    settings = dict(op.settings)
    settings.update(k=int(k), which=which, tol=float(tol), atol=float(floor), max_iter=int(max_iter),
                    seed=int(seed), method=method, warm_start=warm, tol_on=tol_on)
    return Eigenpairs(values=np.asarray(theta, dtype=np.float64), residuals=np.asarray(residuals),
                      converged=np.asarray(flags, dtype=bool), matvecs=int(op.matvecs - start),
                      vectors=[op.to_param_vector(v) for v in units], settings=settings)


def _checked_arguments(n: int, k: Any, which: Any, tol: Any, max_iter: Any, method: Any) -> int:
    """Check the arguments of :func:`top_eigenvalues`; return the Krylov dimension limit."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n:
        raise ValueError(f"k={k!r}; expected an integer from 1 to the dimension n={n}")
    if which not in WHICH:
        raise ValueError(f"which={which!r}; expected 'LA' (largest), 'SA' (smallest) or 'LM' (largest magnitude)")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol={tol!r}; expected a positive relative tolerance such as 1e-6")
    if max_iter is None:
        max_iter = min(n, max(100, 10 * k))
    if not isinstance(max_iter, (int, np.integer)) or max_iter < k:
        raise ValueError(f"max_iter={max_iter!r}; expected an integer >= k={k} (the Krylov dimension limit)")
    if method not in ("lanczos", "arpack"):
        raise ValueError(f"method={method!r}; expected 'lanczos' or 'arpack'")
    return int(min(max_iter, n))


def _start_vector(op, k: int, which: str, tol: float, max_iter: int, seed: int, method: str,
                  atol: float | None, warm_start: Any) -> tuple[Tensor, dict[str, Any] | None]:
    """The start vector (float64, on the operator's device) and what the warm start did (or None).

    Cold: a seeded Gaussian vector. ``"gradient"``: see :func:`_gradient_start`. A fraction:
    the sum of the k Ritz vectors of a run on ``op.subsample(warm_start)`` to tolerance
    ``max(tol, 1e-3)``.
    """
    if warm_start is None:
        return _random_start(op, seed), None
    if isinstance(warm_start, str) and warm_start == "gradient":
        return _gradient_start(op, _random_start(op, seed))
    if isinstance(warm_start, bool) or not isinstance(warm_start, (int, float)) or not 0 < warm_start < 1:
        raise ValueError(f"warm_start={warm_start!r}; expected None, a share of the data in (0, 1) such as 0.125, "
                         f"or 'gradient'")
    if not hasattr(op, "subsample"):
        raise ValueError(f"warm_start needs an operator with subsample(fraction) (a HessianOperator); "
                         f"got {type(op).__name__}")
    sub = op.subsample(float(warm_start))
    pre = top_eigenvalues(sub, k, which, tol=max(float(tol), 1e-3), max_iter=max_iter, seed=seed,
                          method=method, atol=atol)
    v0 = torch.stack([v.flatten().to(torch.float64) for v in pre.vectors]).sum(0).to(op.device)
    warm = {"fraction": float(warm_start), "samples_share": float(sub.settings.get("subsample", warm_start)),
            "matvecs": int(pre.matvecs), "values": pre.values.tolist()}
    return v0, warm


def _random_start(op, seed: int) -> Tensor:
    """A seeded Gaussian vector (float64, on the operator's device)."""
    gen = torch.Generator().manual_seed(int(seed))
    # drawn in float32 (4x cheaper at n = 1M) and widened: a start vector needs no more
    return torch.randn(op.n, generator=gen, dtype=torch.float32).to(device=op.device, dtype=torch.float64)


def _gradient_start(op, rand: Tensor) -> tuple[Tensor, dict[str, Any]]:
    """The start vector ĝ + r̂: the unit loss gradient at θ (in training it leans towards the
    top eigenvectors) plus the unit seeded random vector ``rand``, which keeps a share of every
    direction; ``rand`` alone where the gradient is zero or not finite."""
    if not hasattr(op, "gradient"):
        raise ValueError(f"warm_start='gradient' needs an operator with gradient() (a HessianOperator); "
                         f"got {type(op).__name__}")
    g = op.gradient().to(device=rand.device, dtype=torch.float64)
    norm = float(torch.linalg.vector_norm(g))
    v0 = rand / torch.linalg.vector_norm(rand)
    if math.isfinite(norm) and norm > 0:
        v0 = v0 + g / norm
    return v0, {"from": "gradient", "gradient_norm": norm}


def _product_progress(op, method: str, max_iter: int) -> Progress:
    """The bar of one eigenpair run: a Krylov step (one product) per unit, up to ``max_iter``
    for Lanczos; ARPACK's count is not known in advance. Named after the share of the data
    for a subsampled operator (the warm start's run)."""
    desc = "Lanczos" if method == "lanczos" else "ARPACK"
    share = getattr(op, "settings", {}).get("subsample")
    if share is not None:
        desc += f" ({share:.1%} of the data)"
    total = max_iter if method == "lanczos" else None
    return Progress(desc, total, enabled=getattr(op, "progress", None), unit="product")


def _value_errors(residuals: np.ndarray, gaps: np.ndarray | None) -> np.ndarray:
    """The error estimates of Ritz values: min(r, r²/gap) (Kato-Temple), or r where no gap is
    known (none given, or a lone Ritz value: an infinite gap says nothing of the spectrum)."""
    r = np.asarray(residuals, dtype=np.float64)
    if gaps is None:
        return r
    g = np.asarray(gaps, dtype=np.float64)
    known = np.isfinite(g) & (g > 0)
    quad = np.divide(r * r, g, out=np.full_like(r, np.inf), where=known)
    return np.minimum(r, quad)


def _residual_estimates(run: LanczosRun, S: np.ndarray) -> np.ndarray:
    """The recurrence's residual estimates β_m·|s_mi| of all Ritz pairs (``S``: the
    tridiagonal matrix's eigenvectors)."""
    return abs(run.last_beta) * np.abs(S[-1])


def _gaps(th: np.ndarray, idx: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """The gap of each wanted Ritz value ``th[idx]``: the distance to each other Ritz value less
    that value's residual estimate (``residuals``, one per Ritz value), the smallest, at least 0;
    inf if alone. An eigenvalue lies within its residual of each Ritz value, and a neighbour that
    has not converged (large residual) may stand for an eigenvalue much nearer than itself: the
    bare distance overstates the gap exactly where the r²/gap estimate would stop too early."""
    out = np.full(len(idx), np.inf)
    for n, i in enumerate(idx):
        others = np.abs(np.delete(th, i) - th[i]) - np.delete(np.asarray(residuals, dtype=np.float64), i)
        if others.size:
            out[n] = max(float(np.min(others)), 0.0)
    return out


def _lanczos_pairs(mv: Callable[[Tensor], Tensor], v0: Tensor, k: int, which: str, tol: float,
                   atol: float | None, eps: float, max_iter: int, seed: int, bar: Progress, *,
                   by_value: bool = False) -> tuple[np.ndarray, Tensor, Tensor, float, np.ndarray | None]:
    """Lanczos until the k wanted Ritz pairs' residual estimates (``by_value``: their values'
    error estimates) pass; their values, unit vectors (k, n), H applied to them (from the kept
    products), the largest |Ritz value| and (``by_value``) the wanted values' gaps."""
    seen: list[np.ndarray] = []               # the wanted Ritz values after each step

    def enough(run: LanczosRun) -> bool:
        m = len(run.alphas)
        if m < k:
            return False
        th, S = np.linalg.eigh(run.tridiagonal())
        idx = _order(th, which)[:k]
        seen.append(th[idx])
        every = _residual_estimates(run, S)
        est = every[idx]
        bar.set(residual=float(np.max(est)))
        if by_value:
            est = _value_errors(est, _gaps(th, idx, every))
        floor = atol if atol is not None else 100 * eps * float(np.max(np.abs(th)))
        bound = tol * np.abs(th[idx]) + floor
        if not np.all(est <= bound):
            return False
        # held still over the last quarter of the steps (at least one): in a cluster, a value
        # whose direction the start vector barely holds enters the wanted set late
        look = max(1, m // 4)
        return len(seen) > look and all(len(v) == len(idx) and np.all(np.abs(v - th[idx]) <= bound)
                                        for v in seen[-look - 1:-1])

    run = lanczos(mv, v0, max_iter, restart=True, seed=seed, callback=enough, keep_products=True)
    assert run.products is not None
    th, S = np.linalg.eigh(run.tridiagonal())
    idx = _order(th, which)[:k]
    coef = torch.from_numpy(np.ascontiguousarray(S[:, idx].T)).to(run.basis)
    vecs = coef @ run.basis                   # (k', n) Ritz vectors, orthonormal
    hvecs = coef @ run.products               # H applied to them, by linearity from real products
    gaps = _gaps(th, idx, _residual_estimates(run, S)) if by_value else None
    return th[idx], vecs, hvecs, float(np.max(np.abs(th))), gaps


def _arpack_pairs(op, v0: Tensor, k: int, which: str, tol: float, max_iter: int,
                  bar: Progress) -> tuple[np.ndarray, Tensor, None, float]:
    """SciPy ``eigsh`` on ``op.as_linear_operator()`` (a dense eigensolver for k >= n - 1, which
    ARPACK cannot do): the k wanted values, their vectors (k, n) and the largest |value|."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    n = op.n
    if k >= n - 1:                            # ARPACK needs k < n - 1: small blocks go dense
        dense = op.dense(max_n=n).to("cpu", torch.float64).numpy()
        bar.update(n)
        th, V = np.linalg.eigh((dense + dense.T) / 2)
    else:
        try:
            th, V = eigsh(_counted(op.as_linear_operator(), bar), k=k, which=which, tol=tol,
                          maxiter=max(1, max_iter), ncv=min(n, max(2 * k + 1, 20)), v0=v0.cpu().numpy())
        except ArpackNoConvergence as err:
            th, V = err.eigenvalues, err.eigenvectors
    th = np.asarray(th, dtype=np.float64)
    idx = _order(th, which)[:k]
    vecs = torch.from_numpy(np.ascontiguousarray(V[:, idx].T)).to(op.device)
    return th[idx], vecs, None, (float(np.max(np.abs(th))) if th.size else 0.0)


def _counted(A, bar: Progress):
    """``A`` (a SciPy LinearOperator) with one bar update per product."""
    from scipy.sparse.linalg import LinearOperator

    def mv(x: np.ndarray) -> np.ndarray:
        bar.update()
        return A.matvec(x)

    return LinearOperator(A.shape, matvec=mv, rmatvec=mv, dtype=A.dtype)


def _measured(mv: Callable[[Tensor], Tensor], theta: np.ndarray, vecs: Tensor, hvecs: Tensor | None,
              tol: float, floor: float,
              gaps: np.ndarray | None = None) -> tuple[list[Tensor], list[float], list[bool]]:
    """Unit vectors, measured residuals ‖Hv − θv‖ (from ``hvecs`` = H applied to ``vecs`` when
    given, else one product each) and convergence flags: the residual within the bound, or
    (``gaps`` given) the value's error estimate min(r, r²/gap); a ghost (a copy of an earlier
    value whose vector is not orthogonal to the earlier one) is flagged unconverged."""
    units: list[Tensor] = []
    residuals: list[float] = []
    flags: list[bool] = []
    for i in range(len(theta)):
        nv = torch.linalg.vector_norm(vecs[i])
        v = vecs[i] / nv
        hv = (hvecs[i] / nv) if hvecs is not None else mv(v).to(torch.float64)
        r = float(torch.linalg.vector_norm(hv - theta[i] * v))
        ghost = any(abs(theta[i] - theta[j]) <= tol * abs(theta[j]) + floor
                    and abs(float(torch.dot(v, units[j]))) > 1e-6 for j in range(i))
        units.append(v)
        residuals.append(r)
        err = float(_value_errors(np.array([r]), None if gaps is None else gaps[i:i + 1])[0])
        flags.append(bool(err <= tol * abs(theta[i]) + floor and not ghost))
    return units, residuals, flags

"""The statistics of one evaluation: the sample-weighted mean, its standard error, and the
regression estimator with control variates.

Example:
    >>> from landprobe.engine import Evaluation
    >>> ev = Evaluation.from_batches([1.0, 3.0], [1, 3])          # (1 * 1 + 3 * 3) / 4
    >>> ev.loss
    2.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Evaluation"]


@dataclass
class Evaluation:
    """Empirical error of one parameter set: sample-weighted mean over the data.

    Example:
        >>> from landprobe.engine import Evaluation
        >>> ev = Evaluation.from_batches([0.0, 1.0], [2, 6])            # (2*0 + 6*1) / 8
        >>> ev.loss, ev.batch_sizes.tolist()
        (0.75, [2, 6])
    """

    loss: float
    stderr: float
    batch_losses: np.ndarray
    batch_sizes: np.ndarray

    @staticmethod
    def from_batches(losses: Sequence[float], sizes: Sequence[int], population: int | None = None) -> Evaluation:
        """Mean and standard error from per-batch losses and sizes.

        Without ``population`` the standard error is that of a ratio (cluster) estimator over
        batches, Var = B/(B-1) Σ w_b² (l_b − m)² (s²/B for equal batches): how well a random
        subset of such batches pins the mean down; with all the data evaluated the mean itself
        is exact. With ``population`` (the number of samples the batches were drawn from,
        without replacement) the finite-population factor (1 − n/N) is applied: the error of
        the estimate of the full-data mean, zero once every sample is used.
        """
        l = np.asarray(losses, dtype=np.float64)
        n = np.asarray(sizes, dtype=np.int64)
        # Plain Python floats: for the handful of batches of one point this is several times
        # cheaper than numpy's per-call overhead, and it runs once per point.
        lf, nf = l.tolist(), [float(v) for v in sizes]
        total = math.fsum(nf)
        mean = math.fsum(ni * li for ni, li in zip(nf, lf)) / total
        b = len(lf)
        if b > 1:
            var = b / (b - 1) * math.fsum((ni / total) ** 2 * (li - mean) ** 2 for ni, li in zip(nf, lf))
            if population is not None:
                var *= max(0.0, 1.0 - total / population)
            se = math.sqrt(var)
        else:
            se = float("nan")
        return Evaluation(mean, se, l, n)

    @staticmethod
    def with_control(losses: Sequence[float], sizes: Sequence[int], covariates: np.ndarray,
                     population_mean: np.ndarray, population: int) -> Evaluation:
        """Regression estimator with control variates (Cochran 1977, ch. 7) and a
        leverage-corrected standard error.

        ``covariates[b]`` is batch b's mean of per-sample covariates whose mean over the whole
        data, ``population_mean`` (C̄), is known exactly. With batch weights w_b = n_b/n and
        the weighted means l̄, c̄, the weighted least-squares fit l_b ≈ l̄ + βᵀ(c_b − c̄) gives
        the estimate m = l̄ + βᵀ(C̄ − c̄), a linear combination Σ g_b l_b of the batch losses with
        g_b = w_b (1 + (C̄ − c̄)ᵀ S⁺ (c_b − c̄)), S = Σ w_b (c_b − c̄)(c_b − c̄)ᵀ. Its variance is
        estimated from the residuals e_b and the leverages h_b = w_b (1 + (c_b − c̄)ᵀ S⁺ (c_b − c̄))
        as Var = (1 − n/N) Σ g_b² e_b² / (1 − h_b)² (HC3, MacKinnon & White 1985): on a few
        batches the fit's residuals are smaller than its errors, most where a batch pulls the
        fit, and the fitted β errs too (g's second term). When the covariates predict the batch
        losses well the variance shrinks by about 1 − R²; when they do not, the estimate stays
        honest and the stopping rule simply needs more batches. The bias is O(1/B). Once every
        sample is used, c̄ = C̄ and the estimate is the exact mean, with zero error.

        Example:
            >>> import numpy as np
            >>> from landprobe.engine import Evaluation
            >>> c = np.array([[1.0], [2.0], [3.0], [4.0]])       # the losses are 2c + 1 exactly
            >>> ev = Evaluation.with_control(2 * c[:, 0] + 1, [5] * 4, c, np.array([3.0]), population=100)
            >>> round(ev.loss, 12), round(ev.stderr, 12)         # 2·3 + 1, no residual
            (7.0, 0.0)
        """
        l = np.asarray(losses, dtype=np.float64)
        n = np.asarray(sizes, dtype=np.float64)
        c = np.asarray(covariates, dtype=np.float64).reshape(len(l), -1)
        w = n / n.sum()
        lbar, cbar = float(w @ l), w @ c
        b, k = c.shape
        # One SVD of the weighted, centred covariates gives β, g and h (S⁺ = V Σ⁻² Vᵀ) without
        # forming S, whose condition number is the square of theirs.
        rw = np.sqrt(w)
        u, s, vt = np.linalg.svd(rw[:, None] * (c - cbar), full_matrices=False)
        keep = s > (s[0] if s.size else 0.0) * max(b, k) * np.finfo(np.float64).eps
        u, s, vt = u[:, keep], s[keep], vt[keep]
        beta = vt.T @ ((u.T @ (rw * (l - lbar))) / s)
        d = np.asarray(population_mean, dtype=np.float64) - cbar
        mean = lbar + float(beta @ d)
        finite_population = 1.0 - n.sum() / population
        if b - k - 1 <= 0:
            se = float("nan")
        elif finite_population <= 0.0:
            se = 0.0
        else:
            resid = l - lbar - (c - cbar) @ beta
            g = w + rw * (u @ ((vt @ d) / s))
            room = 1.0 - (w + (u * u).sum(1))
            if np.any(room <= 1e-12):
                se = float("inf")                  # a batch alone fixes the fit: no error estimate yet
            else:
                se = float(math.sqrt(float(np.sum(g * g * resid * resid / (room * room))) * finite_population))
        return Evaluation(mean, se, l, n.astype(np.int64))

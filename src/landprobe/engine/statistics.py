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
        """Regression estimator with control variates (Cochran 1977, ch. 7).

        ``covariates[b]`` is batch b's mean of per-sample covariates whose mean over the whole
        data, ``population_mean``, is known exactly. With batch weights w_b = n_b/n, the
        weighted least-squares fit l_b ≈ a + βᵀc_b gives the estimate
        m = l̄ − βᵀ(c̄ − C̄) and, from the residuals e_b,
        Var = (1 − n/N) · B/(B − k − 1) · Σ w_b² e_b². When the covariates predict the batch
        losses well the variance shrinks by about 1 − R²; when they do not, the estimate
        stays honest and the stopping rule simply needs more batches. The bias is O(1/B).
        Once every sample is used, c̄ = C̄ and the estimate is the exact mean.
        """
        l = np.asarray(losses, dtype=np.float64)
        n = np.asarray(sizes, dtype=np.float64)
        c = np.asarray(covariates, dtype=np.float64).reshape(len(l), -1)
        total = n.sum()
        w = n / total
        lbar = float(np.dot(w, l))
        cbar = w @ c
        b, k = len(l), c.shape[1]
        dc = c - cbar
        sw = np.sqrt(w)[:, None]
        beta, *_ = np.linalg.lstsq(sw * dc, sw[:, 0] * (l - lbar), rcond=None)
        mean = lbar - float(beta @ (cbar - np.asarray(population_mean, dtype=np.float64)))
        resid = l - lbar - dc @ beta
        dof = b - k - 1
        if dof > 0:
            var = b / dof * np.sum(w**2 * resid**2) * max(0.0, 1.0 - total / population)
            se = float(math.sqrt(var))
        else:
            se = float("nan")
        return Evaluation(mean, se, l, n.astype(np.int64))

"""Result dataclasses of the probes: plain arrays plus the settings that produced them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from landprobe.common.results import Result, require_matplotlib

__all__ = ["Curve"]


def chord_barrier(alphas: np.ndarray, losses: np.ndarray, loss_a: float, loss_b: float) -> tuple[float, float]:
    inside = (alphas >= 0.0) & (alphas <= 1.0)
    al, lo = alphas[inside], losses[inside]
    excess = lo - ((1.0 - al) * loss_a + al * loss_b)
    i = int(np.argmax(excess))
    return float(max(excess[i], 0.0)), float(al[i])


@dataclass(frozen=True, eq=False)
class Curve(Result):
    """Empirical error along θ(α) = (1 − α)·a + α·b (Goodfellow et al. 2015).

    Attributes:
        alphas: float64 grid; holds 0.0 and 1.0 exactly, and points below 0 / above 1 when
            the curve was extended.
        losses: Empirical error at each alpha (sample-weighted mean over the data).
        stderr: Standard error of each loss from the spread of its per-batch losses (NaN
            with one batch). It says how well a random subset of such batches would pin the
            loss down; the loss itself is computed over all the data.
        loss_a, loss_b: The losses at α = 0 and α = 1 (the endpoints themselves).
        settings: steps, extend, subnet, bn, dtype, device, landprobe version, ...

    ``barrier`` is the largest excess of the loss over the chord between the endpoints,
    max over α in [0, 1] of L(θ(α)) − [(1 − α)·L(a) + α·L(b)] (never negative), and
    ``argmax_alpha`` where it is reached (the linear-mode-connectivity barrier of
    Frankle et al. 2020).

    Example:
        >>> import numpy as np, landprobe as lp
        >>> c = lp.Curve(alphas=np.array([0, 0.5, 1.0]), losses=np.array([1.0, 3.0, 2.0]),
        ...              stderr=np.full(3, np.nan), loss_a=1.0, loss_b=2.0, settings={})
        >>> c.barrier, c.argmax_alpha          # 3.0 - (1.0 + 2.0) / 2
        (1.5, 0.5)
    """

    alphas: np.ndarray
    losses: np.ndarray
    stderr: np.ndarray
    loss_a: float
    loss_b: float
    settings: dict[str, Any] = field(default_factory=dict)

    _same_length = (("alphas", "losses", "stderr"),)  # checked by Result.from_dict when loading

    @property
    def barrier(self) -> float:
        return chord_barrier(self.alphas, self.losses, self.loss_a, self.loss_b)[0]

    @property
    def argmax_alpha(self) -> float:
        return chord_barrier(self.alphas, self.losses, self.loss_a, self.loss_b)[1]

    def plot(self, ax=None, *, errorbars: bool = True, chord: bool = True, **kwargs):
        """Plot loss against alpha (matplotlib); returns the axes.

        Example:
            >>> import numpy as np, landprobe as lp
            >>> c = lp.Curve(np.linspace(0, 1, 5), np.array([1.0, 2, 3, 2, 1]), np.zeros(5), 1.0, 1.0)
            >>> ax = c.plot()                                   # doctest: +SKIP
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        label = kwargs.pop("label", "empirical error")
        if errorbars and np.isfinite(self.stderr).any():
            ax.errorbar(self.alphas, self.losses, yerr=2 * self.stderr, label=label, capsize=2, **kwargs)
        else:
            ax.plot(self.alphas, self.losses, label=label, **kwargs)
        if chord:
            ax.plot([0.0, 1.0], [self.loss_a, self.loss_b], "k--", lw=0.8, label="chord")
        ax.axvline(self.argmax_alpha, color="0.6", lw=0.6)
        ax.set_xlabel(r"$\alpha$")
        ax.set_ylabel("loss")
        ax.set_title(f"barrier {self.barrier:.4g} at $\\alpha$={self.argmax_alpha:.3g}")
        ax.legend(frameon=False)
        return ax

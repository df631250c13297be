"""Bound quantities along training: the SGLD stability and PAC-Bayes terms, and the two-phase bound.

Steps are counted k = 1, 2, ..., N (N: the steps taken so far), with step sizes eta_k, the
cumulated step sizes T_k = eta_1 + ... + eta_k (so T_k includes eta_k), and the measured
squared stochastic-gradient norms G_k = ||g_k||^2. :class:`BoundTracker` keeps, after each
step, as the survey writes them (Raginsky et al. 2017; Mou et al. 2018):

- stability term   S_N = sqrt(beta * sum_{k0 <= k <= N} eta_k),
  k0 = min{k : eta_k * beta * L^2 < 1}   (the sum starts at k0 and includes it;
  NaN while no step has met the condition, or without a Lipschitz constant L);
- PAC-Bayes term   P_N = sqrt(beta / n * sum_{1 <= k <= N} eta_k * exp(-lambda * (T_N - T_k) / 2) * G_k),

with ``beta`` SGLD's inverse temperature, ``n`` the number of training samples and
``lambda`` a constant the user gives: in Mou et al. the coefficient of the L2 regulariser
(lambda / 2) * ||w||^2 of the objective (SGLD's ``weight_decay``), more generally the
constant of a log-Sobolev or strong-convexity condition that makes early steps forgotten;
``lambda = 0`` keeps every step at full weight. E||g_k||^2, an expectation over the
algorithm's randomness, is estimated by the one measured value G_k. These are the terms
as written, without the constants and the 1/n (stability) factors of the theorems.

:func:`two_phase_bound` is Kawaguchi et al.'s data-independent bound for two-phase training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from landprobe.common.checks import check_int, check_nonnegative, check_positive
from landprobe.common.results import Result, require_matplotlib

__all__ = ["BoundTrace", "BoundTracker", "TwoPhaseBound", "grad_norm_sq", "two_phase_bound"]


def _check_beta(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise ValueError(f"beta={value!r}; expected a number > 0 (SGLD's inverse temperature; float('inf') for "
                         f"noiseless SGD, where both terms are infinite or undefined)")
    return float(value)


def grad_norm_sq(params: Iterable[torch.Tensor]) -> float:
    """The squared norm of the gradients held in ``.grad``, summed over ``params`` (float64).

    Call it after ``loss.backward()`` (``optimizer.step()`` leaves ``.grad`` as it is);
    parameters without a gradient count as zero.

    Example:
        >>> import torch
        >>> from landprobe.generalization.bounds import grad_norm_sq
        >>> a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
        >>> a.grad = torch.tensor([3.0, 4.0])
        >>> grad_norm_sq([a, b])                         # 3^2 + 4^2; b has no gradient
        25.0
    """
    squares = [p.grad.detach().double().pow(2).sum() for p in params if p.grad is not None]
    return float(torch.stack(squares).sum()) if squares else 0.0


@dataclass(frozen=True, eq=False)
class BoundTrace(Result):
    """The two bound terms of :class:`BoundTracker` at the end of each recorded epoch.

    Attributes:
        epochs: The epoch labels given to :meth:`BoundTracker.epoch_end`.
        steps: N, the steps taken by the end of each epoch.
        total_time: T_N, the cumulated step sizes by then.
        k0: The first step with eta_k * beta * L^2 < 1 (NaN while there is none).
        stability: sqrt(beta * sum_{k0 <= k <= N} eta_k) (NaN without k0).
        pac_bayes: sqrt(beta / n * sum_k eta_k * exp(-lambda * (T_N - T_k) / 2) * ||g_k||^2).
        grad_norm_sq: Mean measured ||g_k||^2 over the epoch's steps (NaN for an empty epoch).
        settings: beta, n, lipschitz, lam (and what the caller adds).

    Example:
        >>> import numpy as np
        >>> from landprobe.generalization.bounds import BoundTrace
        >>> t = BoundTrace(np.array([1.0, 2.0]), np.array([10.0, 20.0]), np.array([1.0, 2.0]), np.array([1.0, 1.0]),
        ...                np.array([0.5, 0.7]), np.array([0.2, 0.3]), np.array([4.0, 3.0]), {"beta": 1.0})
        >>> t.final()["pac_bayes"]
        0.3
    """

    # checked by Result.from_dict when loading
    _same_length = (("epochs", "steps", "total_time", "k0", "stability", "pac_bayes", "grad_norm_sq"),)
    epochs: np.ndarray
    steps: np.ndarray
    total_time: np.ndarray
    k0: np.ndarray
    stability: np.ndarray
    pac_bayes: np.ndarray
    grad_norm_sq: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def final(self) -> dict[str, float]:
        """The last epoch's values (``{}`` when no epoch was recorded).

        Example:
            >>> import numpy as np
            >>> from landprobe.generalization.bounds import BoundTrace
            >>> BoundTrace(*[np.array([1.0, 2.0])] * 7).final()["steps"]
            2.0
        """
        if len(self.epochs) == 0:
            return {}
        return {name: float(getattr(self, name)[-1]) for name in
                ("epochs", "steps", "total_time", "k0", "stability", "pac_bayes", "grad_norm_sq")}

    def plot(self, ax=None, **kwargs):
        """Both terms against the epoch (matplotlib); returns the axes.

        Example:
            >>> import numpy as np
            >>> from landprobe.generalization.bounds import BoundTrace
            >>> t = BoundTrace(*[np.array([1.0, 2.0])] * 7)
            >>> t.plot().get_xlabel()
            'epoch'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        label = kwargs.pop("label", None)
        prefix = f"{label}: " if label else ""
        ax.plot(self.epochs, self.stability, "-o", ms=3, label=prefix + r"stability $\sqrt{\beta\sum_{k\geq k_0}\eta_k}$",
                **kwargs)
        ax.plot(self.epochs, self.pac_bayes, "--s", ms=3, label=prefix + "PAC-Bayes term", **kwargs)
        ax.set_xlabel("epoch")
        ax.set_ylabel("bound term")
        ax.legend(frameon=False, fontsize=7)
        return ax


class BoundTracker:
    """The stability and PAC-Bayes terms of SGLD along training, fed one step at a time.

    After each optimizer step call :meth:`step` with the step size and the measured squared
    gradient norm (:func:`grad_norm_sq`); at the end of an epoch call :meth:`epoch_end`. The
    terms (formulas in this module's docstring: the stability sum starts at k0 inclusive,
    T_k includes eta_k) are updated in O(1) per step with

        A_N = exp(-lambda * eta_N / 2) * A_{N-1} + eta_N * G_N,   P_N = sqrt(beta / n * A_N),

    which is the sum as written. :meth:`trace` returns the per-epoch records as a
    :class:`BoundTrace` (``save``/``load``/``plot``).

    Args:
        beta: SGLD's inverse temperature, > 0 (``inf``: both terms infinite or undefined).
        n: Number of training samples, >= 1.
        lipschitz: The Lipschitz constant L of the loss for k0; ``None``: no stability term (NaN).
        lam: The decay constant lambda >= 0 of the PAC-Bayes term (Mou et al.: the L2
            regularisation coefficient; 0: no decay).

    Example:
        >>> from landprobe.generalization.bounds import BoundTracker
        >>> tr = BoundTracker(beta=4.0, n=100, lipschitz=1.0)
        >>> for lr, g2 in [(0.5, 1.0), (0.25, 4.0), (0.1, 9.0)]:     # eta * beta * L^2 = 2, 1, 0.4
        ...     tr.step(lr, g2)
        >>> tr.k0, round(tr.stability_term, 6)                       # sqrt(4 * 0.1)
        (3, 0.632456)
        >>> round(tr.pac_bayes_term, 6)                              # lam = 0: sqrt(4/100 * (0.5 + 1 + 0.9))
        0.309839
        >>> tr.epoch_end(1)["steps"]
        3
    """

    def __init__(self, beta: float, n: int, lipschitz: float | None = None, lam: float = 0.0) -> None:
        self.beta = _check_beta(beta)
        self.n = check_int("n", n, 1, "the number of training samples")
        self.lipschitz = None if lipschitz is None else check_positive("lipschitz", lipschitz,
                                                                       "the Lipschitz constant L of the loss")
        self.lam = check_nonnegative("lam", lam, "the decay constant lambda of the PAC-Bayes term")
        self.steps = 0
        self.total_time = 0.0
        self.k0: int | None = None
        self._after_k0 = 0.0        # sum of eta_k for k >= k0
        self._pac = 0.0             # A_N
        self._epoch_g2 = 0.0
        self._epoch_steps = 0
        self._records: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ feeding
    def step(self, lr: float, grad_norm_sq: float | torch.Tensor) -> None:
        """Record one step: its step size eta_k and the measured ||g_k||^2.

        Raises:
            ValueError: If ``lr`` or ``grad_norm_sq`` is negative or not finite.

        Example:
            >>> from landprobe.generalization.bounds import BoundTracker
            >>> tr = BoundTracker(beta=1.0, n=1); tr.step(0.1, 2.0); tr.step(0.1, 2.0)
            >>> tr.steps, round(tr.total_time, 12)
            (2, 0.2)
        """
        eta = check_nonnegative("lr", lr, "the step size eta_k of the step just taken")
        g2 = grad_norm_sq.item() if isinstance(grad_norm_sq, torch.Tensor) else grad_norm_sq
        g2 = check_nonnegative("grad_norm_sq", g2, "the measured squared gradient norm; a non-finite value means "
                                                   "the training diverged")
        self.steps += 1
        self.total_time += eta
        if self.k0 is None and self.lipschitz is not None and eta * self.beta * self.lipschitz ** 2 < 1.0:
            self.k0 = self.steps
        if self.k0 is not None:
            self._after_k0 += eta
        self._pac = math.exp(-self.lam * eta / 2.0) * self._pac + eta * g2
        self._epoch_g2 += g2
        self._epoch_steps += 1

    def epoch_end(self, epoch: float | None = None) -> dict[str, Any]:
        """Record the terms now under the label ``epoch`` (default: 1 + the epochs recorded so
        far) and start a new epoch's gradient mean; returns the record.

        Example:
            >>> from landprobe.generalization.bounds import BoundTracker
            >>> tr = BoundTracker(beta=2.0, n=8); tr.step(0.5, 4.0)
            >>> rec = tr.epoch_end(); rec["epoch"], rec["pac_bayes"], rec["grad_norm_sq"]   # sqrt(2/8 * 0.5 * 4)
            (1.0, 0.7071067811865476, 4.0)
        """
        label = float(len(self._records) + 1 if epoch is None else epoch)
        record = {"epoch": label, "steps": self.steps, "total_time": self.total_time,
                  "k0": float("nan") if self.k0 is None else float(self.k0),
                  "stability": self.stability_term, "pac_bayes": self.pac_bayes_term,
                  "grad_norm_sq": self._epoch_g2 / self._epoch_steps if self._epoch_steps else float("nan")}
        self._records.append(record)
        self._epoch_g2, self._epoch_steps = 0.0, 0
        return dict(record)

    # ------------------------------------------------------------------ reading
    @property
    def stability_term(self) -> float:
        """sqrt(beta * sum_{k0 <= k <= N} eta_k); NaN while k0 is undefined.

        Example:
            >>> from landprobe.generalization.bounds import BoundTracker
            >>> tr = BoundTracker(beta=2.0, n=1, lipschitz=1.0); tr.step(1.0, 0.0); tr.step(0.25, 0.0)
            >>> tr.k0, tr.stability_term                     # 1 * 2 * 1 >= 1; 0.25 * 2 < 1: sqrt(2 * 0.25)
            (2, 0.7071067811865476)
        """
        if self.k0 is None:
            return float("nan")
        return math.sqrt(self.beta * self._after_k0)

    @property
    def pac_bayes_term(self) -> float:
        """sqrt(beta / n * sum_k eta_k * exp(-lambda * (T_N - T_k) / 2) * ||g_k||^2).

        Example:
            >>> import math
            >>> from landprobe.generalization.bounds import BoundTracker
            >>> tr = BoundTracker(beta=1.0, n=1, lam=2.0); tr.step(1.0, 1.0); tr.step(1.0, 0.0)
            >>> tr.pac_bayes_term == math.sqrt(math.exp(-1.0))      # the first step decayed by exp(-2 * 1 / 2)
            True
        """
        if self._pac == 0.0:
            return 0.0
        return math.sqrt(self.beta / self.n * self._pac)

    def trace(self, **settings: Any) -> BoundTrace:
        """The recorded epochs as a :class:`BoundTrace` (``settings`` added to its settings).

        Example:
            >>> from landprobe.generalization.bounds import BoundTracker
            >>> tr = BoundTracker(beta=1.0, n=4); tr.step(1.0, 4.0); _ = tr.epoch_end(0)
            >>> tr.trace(run="demo").pac_bayes.tolist()           # sqrt(1/4 * 1 * 4)
            [1.0]
        """
        cols = {key: np.array([r[key] for r in self._records], dtype=np.float64)
                for key in ("epoch", "steps", "total_time", "k0", "stability", "pac_bayes", "grad_norm_sq")}
        info = {"beta": self.beta, "n": self.n, "lipschitz": self.lipschitz, "lam": self.lam, **settings}
        return BoundTrace(epochs=cols["epoch"], steps=cols["steps"], total_time=cols["total_time"], k0=cols["k0"],
                          stability=cols["stability"], pac_bayes=cols["pac_bayes"],
                          grad_norm_sq=cols["grad_norm_sq"], settings=info)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (with :meth:`load_state_dict`) after a checkpoint.

        Example:
            >>> from landprobe.generalization.bounds import BoundTracker
            >>> a = BoundTracker(beta=1.0, n=2); a.step(0.1, 1.0)
            >>> b = BoundTracker(beta=1.0, n=2); b.load_state_dict(a.state_dict())
            >>> b.pac_bayes_term == a.pac_bayes_term
            True
        """
        return {"steps": self.steps, "total_time": self.total_time, "k0": self.k0, "after_k0": self._after_k0,
                "pac": self._pac, "epoch_g2": self._epoch_g2, "epoch_steps": self._epoch_steps,
                "records": [dict(r) for r in self._records],
                "settings": {"beta": self.beta, "n": self.n, "lipschitz": self.lipschitz, "lam": self.lam}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (the settings must be this tracker's).

        Raises:
            ValueError: If the state lacks an entry of :meth:`state_dict` or was written with
                other beta, n, lipschitz or lam.

        Example:
            >>> from landprobe.generalization.bounds import BoundTracker
            >>> a = BoundTracker(beta=1.0, n=2); a.step(0.5, 2.0)
            >>> b = BoundTracker(beta=1.0, n=2); b.load_state_dict(a.state_dict()); b.steps
            1
        """
        mine = {"beta": self.beta, "n": self.n, "lipschitz": self.lipschitz, "lam": self.lam}
        keys = ("settings", "steps", "total_time", "k0", "after_k0", "pac", "epoch_g2", "epoch_steps", "records")
        missing = [k for k in keys if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"state lacks {', '.join(map(repr, missing))}, so it was not written by "
                             f"BoundTracker.state_dict(); pass what a tracker's state_dict() returned")
        if state["settings"] != mine:
            raise ValueError(f"the state was written by a tracker with settings {state['settings']}, but this one "
                             f"has {mine}; build the tracker with the same beta, n, lipschitz and lam")
        self.steps, self.total_time, self.k0 = int(state["steps"]), float(state["total_time"]), state["k0"]
        self._after_k0, self._pac = float(state["after_k0"]), float(state["pac"])
        self._epoch_g2, self._epoch_steps = float(state["epoch_g2"]), int(state["epoch_steps"])
        self._records = [dict(r) for r in state["records"]]


class TwoPhaseBound(NamedTuple):
    """What :func:`two_phase_bound` returns: the bound on the expected risk and its extra term
    (the bound minus the empirical risk).

    Example:
        >>> from landprobe.generalization.bounds import TwoPhaseBound
        >>> bound, extra = TwoPhaseBound(0.3, 0.25)
        >>> extra
        0.25
    """

    bound: float
    extra: float


def two_phase_bound(r_hat: float, m: int, alpha: float, d_y: int, c_sigma: float, c_w: float, rho: float,
                    delta: float) -> TwoPhaseBound:
    """Kawaguchi et al.'s data-independent bound for two-phase training, as the survey writes it.

    With probability at least 1 - delta,

        R <= R_hat + 2 * d_y^2 * C_sigma * C_w / (rho * sqrt(m_sigma)) + sqrt(ln(1 / delta) / (2 * m_sigma)),

    where m_sigma = (1 - alpha) * m is the number of samples left for the second phase (the
    first phase uses alpha * m of the m samples to fix the gates), d_y the output dimension,
    rho the margin, and C_sigma, C_w the bounds on the norms of the frozen-gate features and
    of the second phase's weights. m_sigma is used as the real number (1 - alpha) * m.
    Reference: K. Kawaguchi, L. P. Kaelbling, Y. Bengio, "Generalization in Deep Learning"
    (arXiv:1710.05468), two-phase training.

    Args:
        r_hat: Empirical risk of the second phase, finite.
        m: Number of training samples, >= 1.
        alpha: Share of the samples used by the first phase, 0 <= alpha < 1.
        d_y: Output dimension (number of classes), >= 1.
        c_sigma, c_w: Norm bounds, >= 0.
        rho: Margin, > 0.
        delta: Failure probability, 0 < delta < 1.

    Returns:
        ``TwoPhaseBound(bound, extra)`` with ``extra`` = bound - r_hat.

    Raises:
        ValueError: If an argument is outside its range.

    Example:
        >>> from landprobe.generalization.bounds import two_phase_bound
        >>> b = two_phase_bound(0.0, m=50_000, alpha=0.1, d_y=10, c_sigma=0.5, c_w=0.5, rho=1.0, delta=0.1)
        >>> round(b.extra, 4)                      # 2 * 100 * 0.25 / sqrt(45000) + sqrt(ln 10 / 90000)
        0.2408
        >>> round(two_phase_bound(0.0, 50_000, 0.1, 10, 0.1, 0.1, 1.0, 0.1).extra, 4)
        0.0145
    """
    if isinstance(r_hat, bool) or not isinstance(r_hat, (int, float)) or not math.isfinite(r_hat):
        raise ValueError(f"r_hat={r_hat!r}; expected a finite number (the empirical risk)")
    m = check_int("m", m, 1, "the number of training samples")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha={alpha!r}; expected 0 <= alpha < 1 (the share of the samples used by the first "
                         f"phase)")
    d_y = check_int("d_y", d_y, 1, "the output dimension")
    c_sigma = check_nonnegative("c_sigma", c_sigma, "the norm bound of the frozen-gate features")
    c_w = check_nonnegative("c_w", c_w, "the norm bound of the second phase's weights")
    rho = check_positive("rho", rho, "the margin")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta={delta!r}; expected 0 < delta < 1 (the failure probability)")
    m_sigma = (1.0 - alpha) * m
    extra = 2.0 * d_y ** 2 * c_sigma * c_w / (rho * math.sqrt(m_sigma)) + math.sqrt(math.log(1.0 / delta)
                                                                                   / (2.0 * m_sigma))
    return TwoPhaseBound(bound=float(r_hat) + extra, extra=extra)

"""Sharpness measures: Keskar et al. 2017's ε-sharpness and Jiang et al. 2019's PAC-Bayes flatness.

Convention:
    - L(θ) is the empirical error of a :class:`~landprobe.LandscapeProbe`: the sample-weighted
      mean over ``data`` of ``loss_fn(model(x), y)``, the model in eval mode (dropout off,
      BatchNorm on its running statistics, which are not perturbed).
    - Perturbations touch the selected parameters only (``subnet``; default all). The model is
      restored bitwise afterwards (parameters, buffers, flags, modes, global RNG).
    - Under data sharding (``sharding=landprobe.Sharding(data=True)``) every loss and gradient
      is summed over the ranks' shares of the data by the engine, so each rank takes the same
      steps and returns the one-process value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from landprobe.capacity._common import check_model
from landprobe.common.checks import check_int, check_nonnegative, check_positive
from landprobe.engine import Engine, Sharding
from landprobe.params import ParamVector, Selector, select

__all__ = ["epsilon_sharpness", "pac_bayes_sigma", "gaussian_noise"]


def epsilon_sharpness(model: nn.Module, loss_fn: Callable, data: Iterable, epsilon: float = 1e-3, *,
                      steps: int = 10, step_size: float = 0.25, subnet: Selector | None = None,
                      random_start: bool = False, seed: int = 0, sharding: Sharding | None = None) -> float:
    """Keskar et al. 2017's ε-sharpness: ``100 · (max_(δ ∈ C_ε) L(θ + δ) − L(θ)) / (1 + L(θ))``.

    The box is ``C_ε = {δ : |δ_i| ≤ ε (|θ_i| + 1)}`` (their Eq. 3 with the full space, A = I).
    The maximum is sought by projected sign-gradient ascent (``steps`` full-batch gradients;
    each step moves every coordinate by ``step_size`` times its box half-width, then clips to the
    box), and the largest loss met on the way is taken, so the value is a lower bound of the
    true maximum and never negative. Keskar et al. use L-BFGS-B; for a loss convex in each
    coordinate the maximiser is a box corner, which sign ascent reaches in ``1/step_size`` steps.

    Args:
        model, loss_fn, data: As for :class:`~landprobe.LandscapeProbe`.
        epsilon: Box size ε (Keskar et al. report 1e-3 and 5e-4).
        steps: Gradient steps of the ascent (each a full pass with backward over ``data``).
        step_size: Fraction of the box half-width moved per step.
        subnet: Selector of the perturbed parameters.
        random_start: Start at a seeded uniform point of the box instead of δ = 0.
        seed: Seed of the random start (own generator).
        sharding: Under ``torch.distributed``: :class:`landprobe.Sharding` (``data=True``: the
            ranks share every pass over the data and each returns the one-process value).
            ``None``: every rank passes over all the data.

    Raises:
        ValueError: On a non-positive ``epsilon``, ``step_size`` or ``steps < 1``.

    Example:
        >>> import torch
        >>> from landprobe.capacity import epsilon_sharpness
        >>> model = torch.nn.Linear(1, 1, bias=False)                  # L(w) = w**2
        >>> _ = torch.nn.init.constant_(model.weight, 1.0)
        >>> data = [(torch.ones(2, 1), torch.zeros(2, 1))]
        >>> s = epsilon_sharpness(model, torch.nn.MSELoss(), data, epsilon=0.5)
        >>> round(s, 9)                                                 # corner w = 1 + 0.5 * 2 = 2: 100 * 3 / 2
        150.0
    """
    check_model(model, "epsilon_sharpness")
    epsilon = check_positive("epsilon", epsilon)
    step_size = check_positive("step_size", step_size)
    steps = check_int("steps", steps, 1)
    engine = Engine(model, loss_fn, data, sharding=sharding)
    names = select(model, subnet)
    params = dict(model.named_parameters())
    with engine.guard("epsilon_sharpness"):
        engine.set_eval_modes()
        ps = [params[n] for n in names]
        for p in ps:
            p.requires_grad_(True)
        theta = [p.detach().clone() for p in ps]
        box = [epsilon * (t.abs() + 1) for t in theta]
        if random_start:
            gen = torch.Generator().manual_seed(int(seed))
            delta = [(torch.rand(t.shape, generator=gen, dtype=torch.float64).to(t) * 2 - 1) * b
                     for t, b in zip(theta, box)]
        else:
            delta = [torch.zeros_like(t) for t in theta]
        loss0, _ = engine.loss_and_grad(ps, want_grad=False)
        best = loss0

        def write() -> None:
            with torch.no_grad():
                for p, t, d in zip(ps, theta, delta):
                    p.copy_(t + d)

        for _ in range(steps):
            write()
            loss, grads = engine.loss_and_grad(ps)
            best = max(best, loss)
            with torch.no_grad():
                delta = [torch.maximum(torch.minimum(d + step_size * b * g.sign(), b), -b)
                         for d, b, g in zip(delta, box, grads)]
        write()
        loss, _ = engine.loss_and_grad(ps, want_grad=False)
        best = max(best, loss)
    return 100.0 * (best - loss0) / (1.0 + loss0)


def gaussian_noise(theta: ParamVector, sigma: float, seed: int) -> ParamVector:
    """Isotropic Gaussian noise ``u ~ N(0, σ² I)`` shaped like ``theta``: standard deviation ``sigma``.

    Drawn on the CPU in float64 from its own seeded generator (``ParamVector.randn_like``), then
    multiplied by ``sigma`` (not ``sigma**2``: some implementations of Jiang et al.'s measure
    pass the variance where the sampler expects the standard deviation).

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.capacity import gaussian_noise
        >>> u = gaussian_noise(lp.ParamVector({"w": torch.zeros(100_000, dtype=torch.float64)}), 0.1, seed=0)
        >>> abs(float(u["w"].std()) - 0.1) < 1e-3                    # std sigma, not sigma**2 = 0.01
        True
    """
    sigma = check_nonnegative("sigma", sigma)
    return theta.randn_like(seed) * sigma


def pac_bayes_sigma(model: nn.Module, loss_fn: Callable, data: Iterable, target: float = 0.1, *,
                    samples: int = 8, seed: int = 0, sigma_max: float = 1.0, iterations: int = 30,
                    rtol: float = 1e-3, subnet: Selector | None = None, sharding: Sharding | None = None) -> float:
    """Jiang et al. 2019's PAC-Bayes flatness: the largest σ with ``E_u[L(θ + u)] − L(θ) ≤ target``.

    ``u ~ N(0, σ² I)`` (standard deviation σ) on the selected parameters; the expectation is a
    Monte Carlo mean over ``samples`` draws. The same seeded standard-normal draws ``z_k`` are
    reused for every σ (``u = σ z_k``: common random numbers), so the estimated deviation is a
    smooth function of σ and bisection is well defined. The bracket starts at ``[0, sigma_max]``
    and doubles its upper end (at most 30 times) while the deviation there is still below the
    target; then bisection runs until ``(hi − lo) ≤ rtol · hi`` or ``iterations`` halvings. The
    returned σ is the lower end: a σ whose deviation was measured ≤ target. Jiang et al.'s
    measure ("pacbayes.flatness") is ``1 / σ²``; they target a deviation of 0.1 in *accuracy*,
    here it is a deviation of the loss (set ``loss_fn`` to an error rate to follow them).

    Args:
        model, loss_fn, data: As for :class:`~landprobe.LandscapeProbe`.
        target: Allowed increase of the expected loss (> 0).
        samples: Monte Carlo draws per σ (each a full pass over ``data``).
        seed: Draw ``k`` uses seed ``seed + k``.
        sigma_max: Initial upper end of the bracket.
        iterations: Most bisection steps. rtol: Relative width at which bisection stops.
        subnet: Selector of the perturbed parameters.
        sharding: Under ``torch.distributed``: :class:`landprobe.Sharding` (``data=True``: the
            ranks share every pass over the data and each returns the one-process value).
            ``None``: every rank passes over all the data.

    Raises:
        ValueError: On a non-positive ``target``, ``sigma_max`` or ``rtol``, ``samples`` or
            ``iterations`` below 1, or when no σ up to ``sigma_max · 2³⁰`` raises the loss by ``target``.

    Example:
        >>> import torch
        >>> from landprobe.capacity import pac_bayes_sigma
        >>> model = torch.nn.Linear(1, 1, bias=False)                 # L(w) = w**2 at w = 0
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> data = [(torch.ones(1, 1), torch.zeros(1, 1))]
        >>> s = pac_bayes_sigma(model, torch.nn.MSELoss(), data, target=0.1, samples=4, rtol=1e-9, iterations=60)
        >>> import landprobe as lp
        >>> from landprobe.capacity import gaussian_noise
        >>> theta = lp.ParamVector({"weight": torch.zeros(1, 1)})
        >>> z2 = sum(float(gaussian_noise(theta, 1.0, seed=k)["weight"]) ** 2 for k in range(4)) / 4
        >>> abs(s - (0.1 / z2) ** 0.5) < 1e-6                             # the mean of (s z_k)^2 is 0.1
        True
    """
    check_model(model, "pac_bayes_sigma")
    target = check_positive("target", target)
    sigma_max = check_positive("sigma_max", sigma_max)
    rtol = check_positive("rtol", rtol)
    samples = check_int("samples", samples, 1)
    iterations = check_int("iterations", iterations, 1)
    engine = Engine(model, loss_fn, data, sharding=sharding)
    names = select(model, subnet)
    params = dict(model.named_parameters())
    with engine.guard("pac_bayes_sigma"):
        engine.set_eval_modes()
        targets = [params[n].data for n in names]
        theta = ParamVector({n: t.clone() for n, t in zip(names, targets)})
        draws = [gaussian_noise(theta, 1.0, int(seed) + k) for k in range(samples)]
        base = engine.evaluate().loss

        def deviation(sigma: float) -> float:
            total = 0.0
            with torch.no_grad():
                for z in draws:
                    torch._foreach_copy_(targets, theta.tensors)
                    torch._foreach_add_(targets, z.tensors, alpha=sigma)
                    total += engine.evaluate().loss
            return total / samples - base

        lo, hi = 0.0, sigma_max
        doublings = 0
        while deviation(hi) <= target:
            lo, hi = hi, 2 * hi
            doublings += 1
            if doublings > 30:
                raise ValueError(
                    f"pac_bayes_sigma: the expected loss rose by at most {target} even at sigma = {lo:.3g}; the "
                    f"loss is flat in every direction (or ignores the selected parameters). Raise target or "
                    f"check the subnet.")
        for _ in range(iterations):
            if hi - lo <= rtol * hi:
                break
            mid = 0.5 * (lo + hi)
            if deviation(mid) <= target:
                lo = mid
            else:
                hi = mid
    return lo

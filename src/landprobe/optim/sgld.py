"""Stochastic gradient Langevin dynamics (Welling & Teh 2011) as a ``torch.optim.Optimizer``.

One step, for every parameter ``w`` of a group that has a gradient ``g``::

    w <- w - lr * (g + weight_decay * w) + sqrt(2 * lr / beta) * z,     z ~ N(0, I)

With a full-batch gradient of F and a small constant ``lr`` the iterates are distributed,
in the long run, close to the Gibbs density proportional to exp(-beta * F(w)) (with
``weight_decay``: F + weight_decay / 2 * ||w||^2). Welling & Teh write the step as
``eps / 2 * grad log p(w | data) + N(0, eps)``: that is ``lr = eps / 2``, ``beta = 1`` and
F = -log p(w | data). ``beta = inf`` adds no noise and is ``torch.optim.SGD`` (momentum 0)
with the same ``lr`` and ``weight_decay``, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from landprobe.common.checks import check_nonnegative

__all__ = ["SGLD"]

# Device types on which torch.optim.SGD's default path is the multi-tensor (foreach) one; on
# these SGLD does the same arithmetic with the same kernels, elsewhere the per-tensor one.
_FOREACH_DEVICE_TYPES = ("cuda", "xpu")


def _check_beta(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise ValueError(f"beta={value!r}; expected a number > 0 (the inverse temperature; float('inf') for "
                         f"plain SGD without noise)")
    return float(value)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same one (``cuda`` and ``cuda:0`` are, with device 0 current)."""
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    current = torch.cuda.current_device() if a.type == "cuda" else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


class SGLD(torch.optim.Optimizer):
    """Stochastic gradient Langevin dynamics: SGD plus Gaussian noise of variance 2 * lr / beta.

    Each step updates every parameter ``w`` that has a gradient ``g`` as
    ``w <- w - lr * (g + weight_decay * w) + sqrt(2 * lr / beta) * z`` with ``z`` standard
    normal, drawn from the optimizer's own generator (parameter groups in order, parameters
    in order within a group, one ``torch.randn`` per parameter); a parameter without a
    gradient is skipped, as by ``torch.optim.SGD``, and draws nothing. The drift is computed
    exactly as ``torch.optim.SGD`` (momentum 0) computes it on the same device, so
    ``beta = float("inf")`` (no noise, nothing drawn) gives SGD's iterates bit for bit.

    ``lr``, ``beta`` and ``weight_decay`` are per parameter group (a learning-rate scheduler
    changes ``lr``; a schedule of ``beta`` can write ``group["beta"]``). :meth:`state_dict`
    carries the generator's state, so loading it resumes the same noise sequence.

    Args:
        params: Parameters, or parameter groups (dicts) as for any ``torch.optim`` optimizer.
            All on one device (the noise generator lives there).
        lr: Step size, >= 0.
        beta: Inverse temperature, > 0; ``float("inf")`` for no noise.
        weight_decay: L2 coefficient added to the gradient (``g + weight_decay * w``), >= 0.
        generator: The noise generator, on the parameters' device; or an int, the seed of a new
            one there; or ``None``: a new one seeded from the global torch RNG (so
            ``torch.manual_seed`` makes a run reproducible).

    Raises:
        ValueError: If ``lr`` or ``weight_decay`` is negative, ``beta`` is not > 0, the
            parameters are on several devices, or ``generator`` is on another device.
        TypeError: If ``generator`` is neither a ``torch.Generator``, an int nor ``None``.

    Example:
        >>> import torch, landprobe as lp
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> opt = lp.optim.SGLD([w], lr=0.5, beta=4.0, generator=0)       # noise sd sqrt(2 * 0.5 / 4) = 0.5
        >>> w.grad = torch.zeros(3); opt.step()
        >>> torch.equal(w.detach(), 0.5 * torch.randn(3, generator=torch.Generator().manual_seed(0)))
        True
        >>> saved = opt.state_dict()                       # carries the generator's state
        >>> opt.step(); after = w.detach().clone()
        >>> _ = w.data.copy_(0.5 * torch.randn(3, generator=torch.Generator().manual_seed(0)))
        >>> opt.load_state_dict(saved); opt.step()         # resumes the same noise
        >>> torch.equal(w.detach(), after)
        True
    """

    def __init__(self, params: Iterable[Any], lr: float, beta: float, weight_decay: float = 0.0,
                 generator: torch.Generator | int | None = None) -> None:
        defaults = {"lr": check_nonnegative("lr", lr, "the step size"), "beta": _check_beta(beta),
                    "weight_decay": check_nonnegative("weight_decay", weight_decay, "the L2 coefficient")}
        self._device: torch.device | None = None
        params = list(params)
        if not params:
            raise ValueError("SGLD: params is empty; pass the parameters to sample, e.g. SGLD(model.parameters(), "
                             "lr=1e-3, beta=1e4), for a model that has parameters")
        super().__init__(params, defaults)
        self._generator = self._make_generator(generator)

    # ------------------------------------------------------------------ construction
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as ``torch.optim.Optimizer.add_param_group``), its ``lr``, ``beta`` and
        ``weight_decay`` checked and its parameters on the optimizer's device.

        Example:
            >>> import torch, landprobe as lp
            >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
            >>> opt = lp.optim.SGLD([a], lr=0.1, beta=1.0, generator=0)
            >>> opt.add_param_group({"params": [b], "beta": 10.0})
            >>> [(g["lr"], g["beta"]) for g in opt.param_groups]
            [(0.1, 1.0), (0.1, 10.0)]
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_nonnegative("lr", group["lr"], "the step size of a parameter group")
        _check_beta(group["beta"])
        check_nonnegative("weight_decay", group["weight_decay"], "the L2 coefficient of a parameter group")
        for p in group["params"]:
            if self._device is None:
                self._device = p.device
            elif not _same_device(p.device, self._device):
                raise ValueError(f"SGLD draws its noise from one generator, but its parameters are on "
                                 f"{self._device} and {p.device}; move the model to one device, or use one SGLD "
                                 f"per device")

    def _make_generator(self, generator: torch.Generator | int | None) -> torch.Generator:
        device = self._device if self._device is not None else torch.device("cpu")
        if isinstance(generator, torch.Generator):
            if not _same_device(generator.device, device):
                raise ValueError(f"generator is on {generator.device} but the parameters are on {device}; pass "
                                 f"torch.Generator(device={str(device)!r}).manual_seed(seed), or an int seed")
            return generator
        if generator is None:
            seed = int(torch.randint(0, 2**62, ()))
        elif isinstance(generator, int) and not isinstance(generator, bool):
            seed = generator
        else:
            raise TypeError(f"generator has type {type(generator).__name__}; expected a torch.Generator on the "
                            f"parameters' device, an int seed, or None")
        return torch.Generator(device=device).manual_seed(seed)

    @property
    def generator(self) -> torch.Generator:
        """The generator the noise is drawn from (on the parameters' device).

        Example:
            >>> import torch, landprobe as lp
            >>> lp.optim.SGLD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, beta=1.0, generator=0).generator.device
            device(type='cpu')
        """
        return self._generator

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SGLD step for every parameter with a gradient; returns ``closure()``'s loss (or None).

        Example:
            >>> import torch, landprobe as lp
            >>> w = torch.nn.Parameter(torch.ones(2))
            >>> opt = lp.optim.SGLD([w], lr=0.1, beta=float("inf"), weight_decay=1.0)
            >>> w.grad = torch.ones(2); opt.step()             # 1 - 0.1 * (1 + 1 * 1)
            >>> w.detach().tolist()
            [0.8, 0.8]
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("SGLD does not support sparse gradients; use dense embeddings "
                                   "(sparse=False)")
            lr, beta, wd = float(group["lr"]), float(group["beta"]), float(group["weight_decay"])
            self._drift(params, grads, lr, wd)
            scale = math.sqrt(2.0 * lr / beta)
            if scale > 0.0:
                for p in params:
                    z = torch.randn(p.shape, generator=self._generator, device=p.device, dtype=p.dtype)
                    p.add_(z, alpha=scale)
        return loss

    @staticmethod
    def _drift(params: list[Tensor], grads: list[Tensor], lr: float, wd: float) -> None:
        """``w -= lr * (g + wd * w)`` with the operations of ``torch.optim.SGD`` (momentum 0)."""
        if all(p.device.type in _FOREACH_DEVICE_TYPES for p in params):
            if wd != 0:
                grads = list(torch._foreach_add(grads, params, alpha=wd))
            torch._foreach_add_(params, grads, alpha=-lr)
            return
        for p, g in zip(params, grads):
            if wd != 0:
                g = g.add(p, alpha=wd)
            p.add_(g, alpha=-lr)

    # ------------------------------------------------------------------ state
    def __getstate__(self) -> dict[str, Any]:
        """Pickling and ``copy.deepcopy`` keep the generator (a copy has its own, same state)."""
        return {**super().__getstate__(), "_generator": self._generator, "_device": self._device}

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``torch.optim.Optimizer.state_dict()`` plus ``"generator"``: the noise generator's state.

        Example:
            >>> import torch, landprobe as lp
            >>> opt = lp.optim.SGLD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, beta=1.0, generator=0)
            >>> sorted(opt.state_dict())
            ['generator', 'param_groups', 'state']
        """
        out = super().state_dict()
        out["generator"] = self._generator.get_state()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load groups, state and the generator's state written by :meth:`state_dict`.

        Raises:
            ValueError: If ``state_dict`` has no ``"generator"`` entry (not an SGLD state).

        Example:
            >>> import torch, landprobe as lp
            >>> w = torch.nn.Parameter(torch.zeros(1))
            >>> opt = lp.optim.SGLD([w], lr=0.1, beta=1.0, generator=0)
            >>> opt.load_state_dict(lp.optim.SGLD([w], lr=0.3, beta=2.0, generator=1).state_dict())
            >>> opt.param_groups[0]["lr"], opt.param_groups[0]["beta"]
            (0.3, 2.0)
        """
        if "generator" not in state_dict:
            raise ValueError("state_dict has no 'generator' entry, so it was not written by SGLD.state_dict(); "
                             "load a state written by an SGLD optimizer (the noise sequence resumes from it)")
        rest = {k: v for k, v in state_dict.items() if k != "generator"}
        super().load_state_dict(rest)
        self._generator.set_state(state_dict["generator"])

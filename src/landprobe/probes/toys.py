"""Analytic toy landscapes with known minima and barriers, as tiny ``nn.Module`` s.

Each energy toy holds its coordinates in one parameter, ``location``, and returns the energy
E(location) when called (the input is ignored). Probe it with :func:`toy_probe`, which uses
the loss ``energy(out, y) = out`` on one dummy batch, so ``probe.loss(theta) == E(theta)``.
The three test functions come from Draxler et al. 2018 (AutoNEB) and its reference code:

========================  ==================================  ==============================
toy                       minima (E = min)                    minimum-energy path's barrier
========================  ==================================  ==============================
:class:`CurvyValley`      (∓5π/2, ∓1), E = 0                  1.0 (straight line: 2.977)
:class:`Eggcarton`        every (i + ½, j + ½), E = −2        2.0 between neighbours
:class:`Flat`             everywhere, E = 0                   0.0
========================  ==================================  ==============================

Two network problems for level sets (Freeman & Bruna 2017) complete the set:
:func:`deep_linear` (connected level sets) and :func:`two_unit_relu` (disconnected below 0.5).
For spectral methods, :func:`least_squares_spectrum` is a model whose Hessian has any spectrum.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CurvyValley", "Eggcarton", "Flat", "energy", "toy_probe", "deep_linear", "two_unit_relu",
           "least_squares_spectrum"]


def energy(out: Tensor, y: Any = None) -> Tensor:
    """The loss of an energy toy: its output itself (a scalar).

    Example:
        >>> import torch
        >>> energy(torch.tensor(2.5), None)
        tensor(2.5000)
    """
    return out.reshape(())


class _Energy(nn.Module):
    def __init__(self, location: Any = None, dims: int = 2, dtype: torch.dtype = torch.float64):
        super().__init__()
        loc = torch.zeros(dims, dtype=dtype) if location is None else torch.as_tensor(location, dtype=dtype).clone()
        if loc.shape != (dims,):
            raise ValueError(f"location has shape {tuple(loc.shape)}; expected ({dims},) for {type(self).__name__}")
        self.location = nn.Parameter(loc)

    def _state(self, *xy: float) -> dict[str, Tensor]:
        return {"location": torch.tensor(xy, dtype=self.location.dtype, device=self.location.device)}


class CurvyValley(_Energy):
    """A valley along y = sin x between two minima (Draxler et al. 2018's test function).

    E(x, y) = (y − sin x)² + (2βx² − 1)²  with  β = 1 / (2·x0²), x0 = 5π/2.

    Minima: (−x0, −1) and (x0, 1), E = 0. Along the valley floor y = sin x the energy is
    (2βx² − 1)², whose maximum, at x = 0, is exactly 1.0: the minimum-energy path's saddle
    (0, 0). The straight segment between the minima, y = x / x0, cuts across the curves of the
    valley and climbs to 2.9767 (at x = ∓4.779).

    Args:
        location: Initial (x, y); default (0, 0).
        dtype: Parameter dtype (float64 by default, for exact checks).

    Example:
        >>> v = CurvyValley([0.0, 0.0])
        >>> v(None).item()                          # the saddle
        1.0
        >>> a, b = v.minima(); _ = v.load_state_dict(b); v(None).item()   # sin(5π/2) = 1
        0.0
    """

    x0 = 5 * math.pi / 2
    saddle = 1.0
    line_peak = 2.976668

    def forward(self, x: Any = None) -> Tensor:
        px, py = self.location[0], self.location[1]
        beta = 1.0 / (2 * self.x0**2)
        return (py - torch.sin(px)) ** 2 + (2 * beta * px**2 - 1) ** 2

    def minima(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The two minima as state_dicts: (−5π/2, −1) and (5π/2, 1).

        Example:
            >>> a, b = CurvyValley().minima()
            >>> a["location"].tolist()
            [-7.853981633974483, -1.0]
        """
        return self._state(-self.x0, -1.0), self._state(self.x0, 1.0)


class Eggcarton(_Energy):
    """E(θ) = Σ_i cos(2π θ_i) (Draxler et al. 2018's test function).

    Minima at every point with half-integer coordinates, E = −dims; between two neighbouring
    minima (one coordinate differs by 1) the saddle has that coordinate at an integer:
    E = −dims + 2, a barrier of 2.0, and the straight segment passes through it. Between
    diagonal neighbours the segment crosses a maximum (barrier 4 in 2-D) while the
    minimum-energy path still goes over a saddle of barrier 2.

    Example:
        >>> e = Eggcarton([0.5, 0.5])
        >>> e(None).item()
        -2.0
        >>> _ = e.load_state_dict({"location": torch.tensor([1.0, 0.5], dtype=torch.float64)})
        >>> e(None).item()                           # the saddle: cos 2π + cos π
        0.0
    """

    saddle_barrier = 2.0

    def __init__(self, location: Any = None, dims: int = 2, dtype: torch.dtype = torch.float64):
        super().__init__(location, dims, dtype)

    def forward(self, x: Any = None) -> Tensor:
        return torch.cos(2 * math.pi * self.location).sum()

    def minima(self, diagonal: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Two neighbouring minima: (½, ½, …) and (1½, ½, …); ``diagonal``: (1½, 1½, …).

        Example:
            >>> [m["location"].tolist() for m in Eggcarton().minima(diagonal=True)]
            [[0.5, 0.5], [1.5, 1.5]]
        """
        d = self.location.numel()
        a = [0.5] * d
        b = [1.5] * d if diagonal else [1.5] + [0.5] * (d - 1)
        return self._state(*a), self._state(*b)


class Flat(_Energy):
    """E(θ) = 0 everywhere: every path has barrier 0 (a check of the machinery).

    Example:
        >>> Flat([3.0, -1.0])(None).item()
        0.0
    """

    def forward(self, x: Any = None) -> Tensor:
        return self.location.sum() * 0.0

    def minima(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Two arbitrary points, (0, 0) and (0, 1), as in the reference code.

        Example:
            >>> [m["location"].tolist() for m in Flat().minima()]
            [[0.0, 0.0], [0.0, 1.0]]
        """
        return self._state(0.0, 0.0), self._state(0.0, 1.0)


def toy_probe(toy: nn.Module, **kwargs: Any):
    """A :class:`~landprobe.LandscapeProbe` whose loss is the toy's energy (one dummy batch).

    Example:
        >>> probe = toy_probe(Eggcarton())
        >>> probe.loss({"location": torch.tensor([0.5, 0.5], dtype=torch.float64)})
        -2.0
    """
    from landprobe.probes.landscape import LandscapeProbe

    dtype = next(toy.parameters()).dtype
    data = [(torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=dtype))]
    return LandscapeProbe(toy, energy, data, **kwargs)


# --------------------------------------------------------------------------- network problems
def deep_linear(d_in: int = 4, d_out: int = 3, widths: tuple[int, ...] = (5,), n: int = 32, seed: int = 0,
                dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """A deep linear network on random data with two different global minima (Freeman & Bruna 2017).

    The model is ``nn.Sequential`` of bias-free ``nn.Linear`` layers d_in → widths → d_out,
    trained with ``nn.MSELoss`` on x ~ N(0, I), y ~ N(0, I) (seeded). With every width
    >= min(d_in, d_out) the product W = W_L⋯W_1 can be the least-squares solution
    W* = Y^T X (X^T X)^{-1}, so the minimum of the loss is the least-squares residual, and
    Freeman & Bruna (Thm 2.3) show every level set above it is connected.

    Returns a dict: ``model``, ``loss_fn``, ``data`` (one batch), ``minimum`` (the least-squares
    loss), ``a`` (a global minimum from the SVD of W*, split evenly), ``b`` (another: layers
    reparametrised W_1 → A·W_1, W_2 → W_2·A⁻¹ with a random invertible A, same product W*).

    Example:
        >>> import torch, landprobe as lp
        >>> p = deep_linear(seed=0)
        >>> probe = lp.LandscapeProbe(p["model"], p["loss_fn"], p["data"])
        >>> abs(probe.loss(p["a"]) - p["minimum"]) < 1e-12, abs(probe.loss(p["b"]) - p["minimum"]) < 1e-12
        (True, True)
    """
    if any(w < min(d_in, d_out) for w in widths):
        raise ValueError(f"widths={widths}; every width must be >= min(d_in, d_out) = {min(d_in, d_out)} for the "
                         f"product to reach the least-squares solution")
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    w_star = torch.linalg.lstsq(x, y).solution.T                          # (d_out, d_in)
    minimum = float(((x @ w_star.T - y) ** 2).mean())
    sizes = [d_in, *widths, d_out]
    model = nn.Sequential(*[nn.Linear(i, o, bias=False) for i, o in zip(sizes[:-1], sizes[1:])]).to(dtype)
    # a: W* = U S V^T; first layer S^½ V^T (padded), last U S^½, identities (padded) between.
    u, s, vh = torch.linalg.svd(w_star, full_matrices=False)
    r = s.numel()
    layers: list[Tensor] = []
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = torch.zeros(fo, fi, dtype=torch.float64)
        if i == 0 and len(sizes) == 2:
            w = w_star.clone()
        elif i == 0:
            w[:r] = s.sqrt()[:, None] * vh
        elif i == len(sizes) - 2:
            w[:, :r] = u * s.sqrt()[None, :]
        else:
            w[:r, :r] = torch.eye(r, dtype=torch.float64)
        layers.append(w)
    keys = [f"{i}.weight" for i in range(len(layers))]
    a = {k: w.to(dtype) for k, w in zip(keys, layers)}
    b_layers = list(layers)
    if len(layers) >= 2:
        h = sizes[1]
        mat = torch.eye(h, dtype=torch.float64) + 0.8 * torch.randn(h, h, generator=g, dtype=torch.float64)
        b_layers[0] = mat @ layers[0]
        b_layers[1] = layers[1] @ torch.linalg.inv(mat)
    b = {k: w.to(dtype) for k, w in zip(keys, b_layers)}
    return {"model": model, "loss_fn": nn.MSELoss(), "data": [(x.to(dtype), y.to(dtype))], "minimum": minimum,
            "a": a, "b": b}


class _TwoUnit(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.hidden = nn.Linear(1, 2, bias=False, dtype=dtype)
        self.out = nn.Linear(2, 1, bias=False, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(x)))


def two_unit_relu(dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """Two ReLU units whose level sets below 0.5 are disconnected (after Freeman & Bruna 2017, §2).

    f(x) = u₁·relu(w₁x) + u₂·relu(w₂x) on the two samples x = +1 and x = −1, both with target 1,
    loss ``nn.MSELoss``. A zero loss needs one unit to serve x = +1 (w > 0) and the other x = −1
    (w < 0). The minima ``a`` (w = (1, −1), u = (1, 1)) and ``b`` (w = (−2, ½), u = (½, 2)) give the
    roles to different units, so on any path from one to the other some w_i passes through 0
    first; at that moment one unit with one sign of w must fit both samples, impossible, and
    one residual is 1: the loss is >= 0.5. A path reaching exactly 0.5 exists (silence a unit,
    flip it, hand over the output weight, repeat for the other), so the barrier is 0.5 and the
    level sets {L <= c} are disconnected for c < 0.5, connected for c >= 0.5.

    Returns a dict: ``model``, ``loss_fn``, ``data``, ``a``, ``b``, ``barrier`` (0.5).

    Example:
        >>> import landprobe as lp
        >>> p = two_unit_relu()
        >>> probe = lp.LandscapeProbe(p["model"], p["loss_fn"], p["data"])
        >>> probe.loss(p["a"]), probe.loss(p["b"])
        (0.0, 0.0)
    """
    model = _TwoUnit(dtype)
    x = torch.tensor([[1.0], [-1.0]], dtype=dtype)
    y = torch.ones(2, 1, dtype=dtype)

    def state(w, u):
        return {"hidden.weight": torch.tensor([[w[0]], [w[1]]], dtype=dtype),
                "out.weight": torch.tensor([u], dtype=dtype)}

    return {"model": model, "loss_fn": nn.MSELoss(), "data": [(x, y)], "a": state((1.0, -1.0), (1.0, 1.0)),
            "b": state((-2.0, 0.5), (0.5, 2.0)), "barrier": 0.5}


def least_squares_spectrum(eigenvalues: Any, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """Least squares whose Hessian has the given eigenvalues, in seeded random directions.

    A bias-free ``nn.Linear(d, 1)`` with ``nn.MSELoss`` on one batch of d samples
    X = (d/2)^½ diag(λ)^½ Qᵀ (Q a seeded random orthogonal matrix), so the Hessian of the loss is
    (2/d) XᵀX = Q diag(λ) Qᵀ at every parameter value: a known spectrum (a separated top, a
    cluster, a bulk) on which to check eigensolvers, trace and density estimators.

    Args:
        eigenvalues: The d eigenvalues, each >= 0 (a sequence or 1-D tensor).
        seed: Seed of Q.
        dtype: Of the model and data.

    Returns a dict: ``model``, ``loss_fn``, ``data`` (one batch; targets 0), ``hessian`` (the
    dense d x d matrix, float64), ``eigenvalues`` (float64, descending).

    Example:
        >>> import landprobe as lp
        >>> p = lp.probes.toys.least_squares_spectrum([3.0, 2.0, 1.0, 0.5], seed=0)
        >>> H = lp.LandscapeProbe(p["model"], p["loss_fn"], p["data"]).hessian()
        >>> [round(v, 10) for v in H.top_eigenvalues(k=2).values.tolist()]
        [3.0, 2.0]
    """
    ev = torch.as_tensor(eigenvalues, dtype=torch.float64)
    if ev.ndim != 1 or ev.numel() == 0 or not bool(torch.isfinite(ev).all()) or bool((ev < 0).any()):
        raise ValueError(f"eigenvalues={eigenvalues!r}; expected a non-empty 1-D sequence of finite values >= 0 "
                         f"(a least-squares Hessian is positive semi-definite)")
    d = ev.numel()
    g = torch.Generator().manual_seed(int(seed))
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = (d / 2) ** 0.5 * ev.sqrt()[:, None] * q.T
    model = nn.Linear(d, 1, bias=False).to(dtype)
    return {"model": model, "loss_fn": nn.MSELoss(), "data": [(x.to(dtype), torch.zeros(d, 1, dtype=dtype))],
            "hessian": (q * ev) @ q.T, "eigenvalues": torch.sort(ev, descending=True).values}

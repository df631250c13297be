"""Curvature test problems and the float64 brute force behind every Hessian test (curvlinops' pattern).

``dense_hessian`` builds the exact Hessian of the sample-weighted empirical error with
``torch.func.jacrev(torch.func.jacrev(L))`` on the flattened parameters (reverse over reverse:
independent of both HVP paths of the library, and free of a forward-AD bug of ``mse_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev

from helpers import MLP


class TanhMLP(MLP):
    """The shared test MLP (tanh), narrower: dense Hessians stay small."""

    def __init__(self, d_in=4, hidden=5, d_out=2):
        super().__init__(d_in, hidden, d_out)


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2)
        self.fc = nn.Linear(2 * 2 * 2, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 3 * 3, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


class Quadratic(nn.Module):
    """No layers: its output is ½(θ−c)ᵀA(θ−c) for every sample, so L = that and H = A (sym.)."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor, theta0: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("c", c)
        self.theta = nn.Parameter(theta0.clone())

    def forward(self, x):
        d = self.theta - self.c
        return (0.5 * d @ (self.A @ d)).expand(x.shape[0])


def mean_output(out, y):
    return out.mean()


@dataclass
class Case:
    name: str
    make_model: Callable[[], nn.Module]
    make_data: Callable[[torch.Generator], list]
    loss_fn: Callable

    def build(self, seed=0, dtype=torch.float64):
        torch.manual_seed(seed)
        model = self.make_model().to(dtype)
        g = torch.Generator().manual_seed(seed + 100)
        data = [(x.to(dtype), y.to(dtype)) for x, y in self.make_data(g)]
        return model, data


def _mlp_data(g):          # three batches of unequal sizes
    return [(torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)) for n in (5, 3, 7)]


def _conv_data(g):
    return [(torch.randn(n, 1, 5, 5, generator=g), torch.randn(n, 1, generator=g)) for n in (4, 2, 3)]


CASES = [
    Case("mlp-tanh-mse", TanhMLP, _mlp_data, nn.MSELoss()),
    Case("conv-tanh-mse", TinyConv, _conv_data, nn.MSELoss()),
]


def case_id(case: Case) -> str:
    return case.name


def spd_with_spectrum(eigs, seed=0, dtype=torch.float64) -> torch.Tensor:
    """U diag(eigs) Uᵀ with a seeded random orthogonal U."""
    n = len(eigs)
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (U @ torch.diag(torch.as_tensor(eigs, dtype=torch.float64)) @ U.T).to(dtype)


def quadratic_problem(eigs, seed=0):
    """A Quadratic module with H = U diag(eigs) Uᵀ, one dummy batch, float64."""
    n = len(eigs)
    A = spd_with_spectrum(eigs, seed)
    A = (A + A.T) / 2
    g = torch.Generator().manual_seed(seed + 1)
    c = torch.randn(n, generator=g, dtype=torch.float64)
    model = Quadratic(A, c, torch.randn(n, generator=g, dtype=torch.float64))
    return model, [(torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))], mean_output, A


def dense_hessian(model: nn.Module, loss_fn: Callable, data: list, names=None, *, train_bn: bool = False,
                  state=None) -> torch.Tensor:
    """Exact float64 Hessian of Σ_b (n_b/N) loss_fn(model(x_b), y_b) w.r.t. ``names`` (all params by default)."""
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    buffers = {n: b.detach().double() if b.is_floating_point() else b for n, b in model.named_buffers()}
    if state is not None:
        for k, v in state.items():
            if k in params:
                params[k] = v.detach().double()
            elif k in buffers and v.is_floating_point():
                buffers[k] = v.detach().double()
    names = list(params) if names is None else list(names)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat0 = torch.cat([params[n].reshape(-1) for n in names])
    total = float(sum(x.shape[0] for x, _ in data))
    was = [m.training for m in model.modules()]
    model.eval()
    if train_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False

    def L(flat):
        st = dict(params)
        st.update({n: c.view(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)})
        st.update(buffers)
        out = 0.0
        for x, y in data:
            out = out + (x.shape[0] / total) * loss_fn(functional_call(model, st, (x.double(),)), y.double())
        return out

    try:
        if train_bn:
            # torch 2.13's jacrev(jacrev) of train-mode BatchNorm is wrong (asymmetric: the
            # conv-bias column, which BN cancels, is not zero); autograd's double backward is right.
            H = torch.autograd.functional.hessian(L, flat0)
        else:
            H = jacrev(jacrev(L))(flat0)
    finally:
        for m, flag in zip(model.modules(), was):
            m.training = flag
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = True
    return H

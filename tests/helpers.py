"""Shared test problems (BackPACK-style: problems as data) and float64 brute-force references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in=4, hidden=6, d_out=2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv(x))))


class Recursive(nn.Module):
    """A weight-shared block applied three times, with dropout (off in eval)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 5)
        self.block = nn.Linear(5, 5)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(5, 1)

    def forward(self, x):
        h = torch.relu(self.embed(x))
        for _ in range(3):
            h = torch.relu(self.block(self.drop(h)) + h)
        return self.out(h)


@dataclass
class Case:
    name: str
    make_model: Callable[[], nn.Module]
    make_data: Callable[[torch.Generator], list]
    loss_fn: Callable

    def build(self, seed=0, dtype=torch.float32):
        torch.manual_seed(seed)
        model = self.make_model().to(dtype)
        g = torch.Generator().manual_seed(seed + 100)
        data = [(x.to(dtype), y.to(dtype)) for x, y in self.make_data(g)]
        return model, data


def _mlp_data(g):  # unequal batch sizes
    return [(torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)) for n in (5, 3, 7)]


def _img_data(g):
    return [(torch.randn(n, 1, 6, 6, generator=g), torch.randn(n, 1, 6, 6, generator=g)) for n in (4, 2)]


def _rec_data(g):
    return [(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)) for n in (6, 4)]


CASES = [
    Case("mlp", MLP, _mlp_data, nn.MSELoss()),
    Case("convbn", ConvBN, _img_data, nn.L1Loss()),
    Case("recursive", Recursive, _rec_data, nn.MSELoss()),
]


def perturbed(model: nn.Module, seed: int, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A state_dict near the model's: every floating tensor moved by seeded noise."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            noise = torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.dtype)
            if "running_var" in k:
                out[k] = v + scale * noise.abs()
            else:
                out[k] = v + scale * noise
        else:
            out[k] = v.clone()
    return out


def snapshot(model: nn.Module):
    """Everything a probe promises to restore."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
        "grad_flags": [p.requires_grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "rng": torch.get_rng_state().clone(),
    }


def assert_same_snapshot(before, after):
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        a, b = before["state"][k], after["state"][k]
        assert a.dtype == b.dtype and torch.equal(a, b), f"{k} changed"
    assert before["grad_flags"] == after["grad_flags"]
    assert before["modes"] == after["modes"]
    assert torch.equal(before["rng"], after["rng"])

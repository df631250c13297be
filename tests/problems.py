"""Small float64 problems as data (BackPACK-style): one list, one parametrized test skeleton.

Each :class:`Problem` builds ``(model, loss_fn, batches)``: a few parameters, 2-3 batches of
unequal size (so sample weighting matters), every tensor float64. The models cover what the
model guard must put back: BatchNorm running statistics, dropout, a plain registered buffer
used in ``forward``, a frozen parameter, an eval-mode child inside a train-mode model, two
modules sharing one Parameter, and the recursive WARSHIP network at its smallest width.

:func:`shuffling_loader` turns a problem's batches into a ``DataLoader(..., shuffle=True)``,
whose sampler draws its permutation from the global torch RNG on each pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import landprobe as lp

D = torch.float64

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Problem:
    name: str
    make: Callable[[torch.Generator], tuple[nn.Module, Callable, Batches]]

    def build(self, seed: int = 0) -> tuple[nn.Module, Callable, Batches]:
        """``(model, loss_fn, batches)``, float64, deterministic in ``seed`` (global RNG untouched)."""
        fork = torch.get_rng_state()
        try:
            torch.manual_seed(seed)                   # nn.Module initialisers draw from the global RNG
            model, loss_fn, batches = self.make(torch.Generator().manual_seed(seed + 1000))
        finally:
            torch.set_rng_state(fork)
        return model, loss_fn, batches

    def __repr__(self) -> str:
        return self.name


def problem_id(p: Problem) -> str:
    return p.name


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=D)


# ----------------------------------------------------------------------------- models
class MLP(nn.Module):
    def __init__(self, d_in: int = 3, hidden: int = 4, d_out: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(5, 1)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class Scaled(nn.Module):
    """A linear map followed by a registered (non-parameter) buffer scale and shift."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("scale", torch.tensor([1.5, -0.5]))
        self.register_buffer("shift", torch.tensor([0.25, 0.125]))

    def forward(self, x):
        return torch.tanh(self.fc(x)) * self.scale + self.shift


class EvalChild(nn.Module):
    """Built in train mode with its BatchNorm child put in eval mode (a frozen-statistics layer)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.norm = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.norm(self.fc1(x)))))


class Tied(nn.Module):
    """Encoder and decoder share one weight Parameter (two modules, one tensor)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, 3)
        self.dec = nn.Linear(3, 3)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


# ----------------------------------------------------------------------------- builders
def _mlp(g):
    """Targets from the model itself plus a little noise: it sits near a minimum (a level set
    between it and a permutation of its hidden units must descend around the midpoint)."""
    model = MLP().to(D)
    xs = [_randn(g, n, 3) for n in (5, 3, 4)]
    with torch.no_grad():
        data = [(x, model(x) + 0.05 * _randn(g, len(x), 2)) for x in xs]
    return model, nn.MSELoss(), data


def _conv_bn(g):
    model = ConvBN().to(D)
    with torch.no_grad():                               # running statistics away from their defaults
        model(_randn(g, 6, 1, 5, 5) * 2 + 0.5)
    data = [(_randn(g, n, 1, 5, 5), _randn(g, n, 1, 5, 5)) for n in (4, 2, 3)]
    return model, nn.MSELoss(), data


def _dropout(g):
    model = DropoutNet().to(D)
    data = [(_randn(g, n, 3), _randn(g, n, 1)) for n in (4, 5, 2)]
    return model, nn.MSELoss(), data


def _buffer(g):
    model = Scaled().to(D)
    data = [(_randn(g, n, 3), _randn(g, n, 2)) for n in (3, 5)]
    return model, nn.MSELoss(), data


def _frozen(g):
    model = MLP().to(D)
    model.fc1.bias.requires_grad_(False)
    data = [(_randn(g, n, 3), _randn(g, n, 2)) for n in (4, 2, 5)]
    return model, nn.MSELoss(), data


def _eval_child(g):
    model = EvalChild().to(D)
    with torch.no_grad():
        model(_randn(g, 8, 3) + 1.0)                    # running statistics of the child, then freeze it
    model.train()
    model.norm.eval()
    data = [(_randn(g, n, 3), _randn(g, n, 1)) for n in (4, 3, 3)]
    return model, nn.L1Loss(), data


def _tied(g):
    model = Tied().to(D)
    data = [(_randn(g, n, 3), _randn(g, n, 3)) for n in (3, 5)]
    return model, nn.MSELoss(), data


#: The smallest WARSHIP: every width rounds to one channel (widths are max(1, round(width·n))).
WARSHIP_WIDTH = 0.005


def _warship(g):
    model = lp.models.WarshipXZNetBeta(width=WARSHIP_WIDTH, recursions=2).to(D)
    xs = [torch.rand(n, 1, 9, 9, generator=g, dtype=D) for n in (3, 2)]
    data = [(x, (x + 0.1 * _randn(g, *x.shape)).clamp(0, 1)) for x in xs]
    return model, lp.losses.RecursiveSupervisionLoss(alpha=0.5), data


PROBLEMS: list[Problem] = [
    Problem("mlp", _mlp),
    Problem("conv_bn", _conv_bn),
    Problem("dropout", _dropout),
    Problem("buffer", _buffer),
    Problem("frozen", _frozen),
    Problem("eval_child", _eval_child),
    Problem("tied", _tied),
    Problem("warship", _warship),
]

BY_NAME = {p.name: p for p in PROBLEMS}


def problems(*names: str) -> list[Problem]:
    """The problems called ``names`` (all of them without names), in that order."""
    return list(PROBLEMS) if not names else [BY_NAME[n] for n in names]


# ----------------------------------------------------------------------------- data
def shuffling_loader(batches: Batches, batch_size: int | None = None) -> DataLoader:
    """The samples of ``batches`` in a ``DataLoader(TensorDataset(x, y), shuffle=True)``.

    Default batch size: the first batch's, so that the last batch is usually shorter. The
    loader's sampler draws from the global torch RNG each time it is iterated.
    """
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return DataLoader(TensorDataset(x, y), batch_size=batch_size or len(batches[0][0]), shuffle=True)


def point(model: nn.Module, seed: int, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """A state_dict near the model's: floating tensors moved by seeded noise (tied tensors
    moved together; running variances kept positive; integer buffers unchanged)."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict(keep_vars=True)             # tied names hold the very same Parameter
    moved: dict[int, torch.Tensor] = {}
    out = {}
    for k, v in state.items():
        if id(v) not in moved:
            t = v.detach()
            if t.is_floating_point():
                noise = scale * torch.randn(t.shape, generator=g, dtype=D).to(t.dtype)
                moved[id(v)] = t + (noise.abs() if "running_var" in k else noise)
            else:
                moved[id(v)] = t.clone()
        out[k] = moved[id(v)]
    return out


# ----------------------------------------------------------------------------- what a probe must leave as it found it
class Boom(Exception):
    """The exception a test's loss raises (an ordinary error, as opposed to KeyboardInterrupt)."""


class Interrupting:
    """``loss_fn`` that counts its calls, draws from every global RNG at each one (as user code
    may), and raises ``exc`` at call number ``at`` (never when ``at`` is None)."""

    def __init__(self, loss_fn: Callable, at: int | None = None, exc: type[BaseException] = Boom):
        self.loss_fn, self.at, self.exc = loss_fn, at, exc
        self.calls = 0

    def __call__(self, out, y):
        import random

        import numpy as np

        self.calls += 1
        torch.rand(1)
        np.random.rand()
        random.random()
        if self.at is not None and self.calls == self.at:
            raise self.exc(f"interrupted at loss call {self.calls}")
        return self.loss_fn(out, y)


def dress(model: nn.Module, seed: int = 7) -> None:
    """Give the model state a probe could lose: ``.grad`` on every other parameter, the mode of
    every other submodule flipped (mixed train/eval), and a frozen parameter if none is."""
    g = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    for i, p in enumerate(params):
        if i % 2 == 0:
            p.grad = torch.randn(p.shape, generator=g, dtype=D).to(p.dtype)
    for i, m in enumerate(list(model.modules())[1:]):
        if i % 2 == 1:
            m.training = not m.training
    if all(p.requires_grad for p in params):
        params[-1].requires_grad_(False)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def snapshot(model: nn.Module) -> dict:
    """Everything the guard promises to restore, with the global RNG states."""
    import random

    import numpy as np

    return {
        "params": [(n, p, p.detach().clone(), p.requires_grad, p.grad,
                    None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()],
        "buffers": [(n, b, b.detach().clone()) for n, b in model.named_buffers()],
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "rng": (torch.get_rng_state(), np.random.get_state(), random.getstate()),
    }


def assert_restored(model: nn.Module, snap: dict, *, rng: bool = True) -> None:
    """Parameters and buffers bitwise (the same objects), ``requires_grad``, ``.grad`` (object
    and values), every module's mode; and, with ``rng``, that the global RNGs draw what they
    would have drawn had the probe not run (this consumes draws)."""
    import random

    import numpy as np

    now = list(model.named_parameters())
    assert [n for n, _ in now] == [s[0] for s in snap["params"]]
    for (name, p), (_, p0, value, flag, grad, grad_value) in zip(now, snap["params"]):
        assert p is p0, f"parameter {name} was replaced"
        assert bitwise_equal(p, value), f"parameter {name} changed"
        assert p.requires_grad == flag, f"requires_grad of {name} changed"
        assert p.grad is grad, f".grad of {name} is another object (or was set/cleared)"
        if grad is not None:
            assert bitwise_equal(p.grad, grad_value), f".grad values of {name} changed"
    bufs = list(model.named_buffers())
    assert [n for n, _ in bufs] == [s[0] for s in snap["buffers"]]
    for (name, b), (_, b0, value) in zip(bufs, snap["buffers"]):
        assert b is b0, f"buffer {name} was replaced"
        assert bitwise_equal(b, value), f"buffer {name} changed"
    assert [(n, m.training) for n, m in model.named_modules()] == snap["modes"]
    if rng:
        t, n, r = snap["rng"]
        got = torch.rand(4, dtype=D), np.random.rand(4), [random.random() for _ in range(4)]
        torch.set_rng_state(t)
        np.random.set_state(n)
        random.setstate(r)
        want = torch.rand(4, dtype=D), np.random.rand(4), [random.random() for _ in range(4)]
        assert torch.equal(got[0], want[0]), "the global torch RNG was moved"
        assert np.array_equal(got[1], want[1]), "the global numpy RNG was moved"
        assert got[2] == want[2], "the global Python random RNG was moved"


def draw_from_every_rng() -> None:
    import random

    import numpy as np

    torch.rand(3)
    np.random.rand(3)
    random.random()

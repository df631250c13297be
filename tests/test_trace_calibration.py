"""Calibration of the trace estimators' standard errors against exact (brute-force) traces.

Over many seeds, z = (estimate − tr H) / stderr must have a root-mean-square near 1 at small,
medium and large budgets (and at the monitor's default budget) on two float64 Hessians: a tanh
MLP and a small conv net. The traces come from the dense reverse-over-reverse Hessian of
``helpers_curvature.dense_hessian``, independent of the library's Hessian-vector products.
"""

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers_curvature import dense_hessian
from landprobe.curvature import hessian, hutchinson, hutchpp, trace
from landprobe.monitor import LandscapeMonitor

HUTCHPP_SEEDS = 100
HUTCHINSON_SEEDS = 60


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class SmallConv(nn.Module):
    """71 parameters: more than a third of 96, so 96 products do not sketch all of H."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 5 * 5, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _problem(kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "mlp-tanh":
        model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()
        x, y = torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)
    else:
        model = SmallConv().double()
        x, y = torch.randn(16, 1, 7, 7, generator=g), torch.randn(16, 1, generator=g)
    data = [(x.double(), y.double())]
    exact = float(torch.trace(dense_hessian(model, nn.MSELoss(), data)))
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data, progress=False), dtype=torch.float64)
    return op, exact


@pytest.fixture(scope="module", params=["mlp-tanh", "conv-tanh"])
def problem(request):
    return _problem(request.param)


def _monitor_budget() -> int:
    return inspect.signature(LandscapeMonitor).parameters["trace_matvecs"].default


def _rms_z(estimates, exact):
    z = np.array([(e.value - exact) / e.stderr for e in estimates])
    assert np.all(np.isfinite(z))
    return math.sqrt(float(np.mean(z ** 2)))


def test_hutchpp_stderr_is_calibrated_from_the_smallest_budget_to_96_products(problem):
    op, exact = problem
    budgets = sorted({4, 12, 24, 96, _monitor_budget()})
    assert op.n > 96 // 3                                   # no budget here sketches all of H
    for m in budgets:
        est = [hutchpp(op, m, seed=s) for s in range(HUTCHPP_SEEDS)]
        assert all(e.matvecs == m for e in est)
        rms = _rms_z(est, exact)
        assert 0.8 <= rms <= 1.2, f"Hutch++ at {m} products: RMS z = {rms:.3f}"
        if m == 12:
            # the sample standard deviation of the 4 deflated forms understates the error
            naive = [e.samples.std(ddof=1) / math.sqrt(len(e.samples)) for e in est]
            naive_rms = math.sqrt(np.mean([((e.value - exact) / s) ** 2 for e, s in zip(est, naive)]))
            assert naive_rms > 1.2 * rms


def test_hutchinson_stderr_is_calibrated_from_two_products_to_96(problem):
    op, exact = problem
    for m in (2, 12, 24, 96):
        est = [hutchinson(op, m, seed=s) for s in range(HUTCHINSON_SEEDS)]
        rms = _rms_z(est, exact)
        assert 0.8 <= rms <= 1.2, f"Hutchinson at {m} products: RMS z = {rms:.3f}"


def test_budgets_too_small_for_a_standard_error_are_refused():
    op, _ = _problem("mlp-tanh")
    for call in (lambda: hutchpp(op, 3), lambda: trace(op, "hutch++", 3)):
        with pytest.raises(ValueError, match="matvecs=3; Hutch.. needs an integer of at least 4"):
            call()
    for call in (lambda: hutchinson(op, 1), lambda: trace(op, "hutchinson", 1)):
        with pytest.raises(ValueError, match="matvecs=1; Hutchinson needs an integer of at least 2"):
            call()
    assert op.matvecs == 0                                  # refused before any product


def test_stderr_is_reproducible_from_the_seed_and_the_same_for_both_entry_points():
    op, _ = _problem("conv-tanh")
    a, b = hutchpp(op, 12, seed=3), trace(op, "hutch++", 12, seed=3)
    assert (a.value, a.stderr) == (b.value, b.stderr)
    c, d = hutchinson(op, 12, seed=3), trace(op, "hutchinson", 12, seed=3)
    assert (c.value, c.stderr) == (d.value, d.stderr)
    assert hutchpp(op, 12, seed=4).stderr != a.stderr

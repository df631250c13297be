"""DARC1 (Kawaguchi et al. 2017) against a hand computation; gradients; errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import landprobe as lp
from landprobe.penalties.darc1 import DARC1Penalty


def hand(h: np.ndarray, lam: float) -> float:
    h = h.reshape(h.shape[0], -1)
    return lam / h.shape[0] * max(np.abs(h[:, k]).sum() for k in range(h.shape[1]))


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 3), (6,)])
def test_value_and_gradient_match_hand_computation(shape):
    torch.manual_seed(0)
    h = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    pen = DARC1Penalty(0.3)
    v = pen(h)
    assert v.item() == pytest.approx(hand(h.detach().numpy(), 0.3), rel=1e-12)
    assert pen.last == pytest.approx(v.item(), rel=0) and pen.breakdown() == {"darc1": pen.last}
    assert pen.breakdown(weighted=False)["darc1"] == pytest.approx(v.item() / 0.3, rel=1e-12)
    v.backward()
    flat = h.detach().reshape(h.shape[0], -1)
    k = int(flat.abs().sum(0).argmax())
    assert pen.last_unit == k
    expected = torch.zeros_like(flat)
    expected[:, k] = 0.3 / h.shape[0] * flat[:, k].sign()
    torch.testing.assert_close(h.grad.reshape(flat.shape), expected, rtol=1e-12, atol=1e-15)
    assert torch.autograd.gradcheck(lambda t: DARC1Penalty(0.3)(t), (h.detach().clone().requires_grad_(),))


def test_in_a_training_loop_with_subnet_penalty():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    darc1 = DARC1Penalty(0.05)
    l2 = lp.SubnetNormPenalty(net, {"0": "l2_squared", "2": "l2_squared"}, weight=1e-3)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    values = []
    for _ in range(20):
        opt.zero_grad()
        out = net(x)
        loss = torch.nn.functional.mse_loss(out, y) + darc1(out) + l2()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        values.append((darc1.last, hand(out.detach().numpy(), 0.05), loss.item()))
    assert all(math.isfinite(v) and v == pytest.approx(ref, rel=1e-6) for v, ref, _ in values)
    assert values[-1][2] < values[0][2]                 # the regularised loss goes down


def test_weight_zero_gives_zero_and_repr():
    h = torch.ones(3, 2, requires_grad=True)
    pen = DARC1Penalty(0.0)
    assert pen(h).item() == 0.0 and pen.breakdown(weighted=False) == {"darc1": 1.0}   # column sums 3, over 3
    assert repr(pen) == "DARC1Penalty(weight=0.0)"


@pytest.mark.parametrize("weight,exc,match", [
    (-1.0, ValueError, "weight=-1.0"), (float("inf"), ValueError, "weight=inf"),
    ("0.1", TypeError, "has type str"), (True, TypeError, "has type bool"),
])
def test_weight_validation(weight, exc, match):
    with pytest.raises(exc, match=match):
        DARC1Penalty(weight)


def test_output_validation():
    pen = DARC1Penalty(0.1)
    with pytest.raises(ValueError, match="no value yet"):
        pen.breakdown()
    with pytest.raises(TypeError, match=r"darc1\(outputs\[-1\]\)"):
        pen((torch.ones(2, 2), torch.ones(2, 2)))
    with pytest.raises(ValueError, match="0-dim tensor"):
        pen(torch.tensor(1.0))
    with pytest.raises(ValueError, match="empty batch"):
        pen(torch.ones(0, 3))
    with pytest.raises(ValueError, match="floating-point"):
        pen(torch.ones(2, 3, dtype=torch.long))

"""RecursiveSupervisionLoss against hand computation in float64; AlphaSchedule; errors."""

import pytest
import torch

from landprobe.losses import AlphaSchedule, LossComponents, RecursiveSupervisionLoss
from landprobe.models import SROutput, WarshipXZNetBeta


def hand(final, inters, y, alpha):
    """The study's formulas with explicit loops over images and recursions."""
    n, r = y.shape[0], len(inters)
    l1 = sum(((y[i] - final[i]) ** 2).sum() for i in range(n)) / (2 * n)
    l2 = sum(((y[i] - inters[k][i]) ** 2).sum() for i in range(n) for k in range(r)) / (2 * r * n)
    return (1 - alpha) * l1 + alpha * l2, l1, l2


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64)
    final = torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64)
    inters = [torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    return final, inters, y


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_components_match_hand_computation(case, alpha):
    final, inters, y = case
    total, l1, l2 = hand(final, inters, y, alpha)
    c = RecursiveSupervisionLoss(alpha).components(SROutput(final, inters), y)
    assert isinstance(c, LossComponents)
    torch.testing.assert_close(c.final, l1, rtol=1e-12, atol=0)
    torch.testing.assert_close(c.intermediate, l2, rtol=1e-12, atol=0)
    torch.testing.assert_close(c.total, total, rtol=1e-12, atol=0)
    torch.testing.assert_close(RecursiveSupervisionLoss(alpha)((final, inters), y), total,
                               rtol=1e-12, atol=0)


def test_tiny_numbers_by_hand():
    y = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    final = torch.tensor([[[[1.0, 2.0]]]], dtype=torch.float64)  # ‖.‖² = 5: L1 = 5/2
    inters = [torch.full_like(y, 1.0), torch.full_like(y, 3.0)]  # 2 + 18 = 20: L2 = 20/4
    c = RecursiveSupervisionLoss(0.25).components((final, inters), y)
    assert (c.final.item(), c.intermediate.item(), c.total.item()) == (2.5, 5.0, 0.75 * 2.5 + 0.25 * 5)


def test_mean_variant_is_sum_variant_over_pixels(case):
    final, inters, y = case
    pixels = y[0].numel()
    s = RecursiveSupervisionLoss(0.4).components((final, inters), y)
    m = RecursiveSupervisionLoss(0.4, reduction="mean").components((final, inters), y)
    for a, b in zip(m, s):
        torch.testing.assert_close(a, b / pixels, rtol=1e-12, atol=0)


def test_bare_tensor_is_l1(case):
    final, inters, y = case
    crit = RecursiveSupervisionLoss(0.7)
    c = crit.components(final, y)
    torch.testing.assert_close(c.total, hand(final, inters, y, 0.0)[1], rtol=1e-12, atol=0)
    assert c.intermediate.item() == 0.0


def test_gradient_flows_to_all_parameters():
    torch.manual_seed(0)
    m = WarshipXZNetBeta(width=0.1)
    x, y = torch.rand(2, 1, 6, 6), torch.rand(2, 1, 6, 6)
    RecursiveSupervisionLoss(0.5)(m(x), y).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def test_alpha_can_be_scheduled():
    crit = RecursiveSupervisionLoss()
    sched = AlphaSchedule(start=1.0, end=0.2, epochs=10)
    crit.alpha = sched(5)
    assert crit.alpha == pytest.approx(0.6)
    assert sched(-3) == 1.0 and sched(100) == pytest.approx(0.2)


def test_errors(case):
    final, inters, y = case
    with pytest.raises(ValueError, match=r"alpha=1.5; expected a float in \[0, 1\]"):
        RecursiveSupervisionLoss(1.5)
    with pytest.raises(TypeError, match=r"alpha='0.5'.*expected a float"):
        RecursiveSupervisionLoss("0.5")
    with pytest.raises(ValueError, match=r"reduction='sum'; expected one of"):
        RecursiveSupervisionLoss(reduction="sum")
    crit = RecursiveSupervisionLoss()
    with pytest.raises(ValueError, match=r"intermediates\[1\] has shape \(3, 1, 4, 4\)"):
        crit((final, [inters[0], inters[1][..., :4]]), y)
    with pytest.raises(TypeError, match="expected a Tensor or a pair"):
        crit([final, final, final], y)
    with pytest.raises(ValueError, match="target is a scalar"):
        crit(torch.tensor(1.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"start=2; expected a float in \[0, 1\]"):
        AlphaSchedule(start=2)
    with pytest.raises(TypeError, match=r"epochs=4.5.*expected a positive int"):
        AlphaSchedule(epochs=4.5)
    with pytest.raises(ValueError, match=r"epochs=0; expected a positive int"):
        AlphaSchedule(epochs=0)

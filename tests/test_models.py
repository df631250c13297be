"""WARSHIP-XZNet β and DRCN: parameter arithmetic, shapes, sharing, initialisation, errors."""

import math

import pytest
import torch
from torch import nn

from landprobe.models import DRCN, SROutput, WarshipXZNetBeta
from landprobe.models._recursive import identity_init_


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def conv_count(cin, cout, k):
    return cin * cout * k * k + cout


# ---------------------------------------------------------------- parameter counts

def test_warship_per_layer_counts():
    m = WarshipXZNetBeta()
    expected = {
        "enet.conv1": conv_count(1, 192, 3), "enet.conv2": conv_count(192, 192, 3),
        "enet.shrink": conv_count(192, 96, 1), "inet.conv1": conv_count(96, 96, 3),
        "inet.conv2": conv_count(96, 96, 3), "rnet.expand": conv_count(96, 192, 1),
        "rnet.images": conv_count(192, 235, 3), "rnet.weigh": conv_count(235, 1, 3),
    }
    got = {name: n_params(mod) for name, mod in m.named_modules() if isinstance(mod, nn.Conv2d)}
    assert got == expected
    assert len(got) == 8  # 3 + 2 + 3 layers
    assert sum(expected.values()) + 4 == n_params(m) == 945_555


def test_warship_total_within_tenth_percent_of_paper():
    m = WarshipXZNetBeta()
    assert abs(n_params(m) - m.PAPER_PARAMS) / m.PAPER_PARAMS < 1e-3
    assert n_params(m) - m.PAPER_PARAMS == 237


def test_drcn_count_against_paper():
    m = DRCN()
    weights = sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight") and p.ndim == 4)
    assert weights == DRCN.PAPER_WEIGHTS == 1_774_080
    assert n_params(m) == 1_774_080 + 4 * 256 + 1 + 16 == 1_775_121


def test_width_multiplier_scales_widths():
    m = WarshipXZNetBeta(width=0.25)
    assert m.enet.conv1.out_channels == 48
    assert m.enet.shrink.out_channels == 24
    assert m.rnet.images.out_channels == 59
    assert n_params(m) == (conv_count(1, 48, 3) + conv_count(48, 48, 3) + conv_count(48, 24, 1)
                           + 2 * conv_count(24, 24, 3) + conv_count(24, 48, 1)
                           + conv_count(48, 59, 3) + conv_count(59, 1, 3) + 4)
    assert DRCN(width=0.5).inet.conv.out_channels == 128


@pytest.mark.parametrize("r", [1, 2, 7])
def test_recursions_configurable(r):
    m = WarshipXZNetBeta(width=0.1, recursions=r)
    assert m.recursions == r
    torch.testing.assert_close(m.recursion_weights.detach(), torch.full((r,), 1 / r))
    out = m(torch.rand(1, 1, 5, 5))
    assert len(out.intermediates) == r


# ---------------------------------------------------------------- shapes and outputs

@pytest.mark.parametrize("cls,kw", [(WarshipXZNetBeta, {"width": 0.1}),
                                    (DRCN, {"width": 0.05, "recursions": 3})], ids=["warship", "drcn"])
def test_output_shapes_and_final_is_weighted_sum(cls, kw):
    torch.manual_seed(0)
    m = cls(**kw)
    with torch.no_grad():
        m.recursion_weights.copy_(torch.rand(m.recursions))
    x = torch.rand(3, 1, 9, 7)
    out = m(x)
    assert isinstance(out, SROutput)
    assert out.final.shape == x.shape and all(y.shape == x.shape for y in out.intermediates)
    expected = sum(w * y for w, y in zip(m.recursion_weights, out.intermediates))
    torch.testing.assert_close(out.final, expected)
    torch.testing.assert_close(m.predict(x), out.final)
    torch.testing.assert_close(m(x, return_intermediates=False), out.final)


def test_intermediates_are_rnet_plus_skip():
    torch.manual_seed(0)
    m = WarshipXZNetBeta(width=0.1, recursions=2).double()
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    h1 = m.inet(m.enet(x))
    h2 = m.inet(h1)
    out = m(x)
    torch.testing.assert_close(out.intermediates[0], m.rnet(h1) + x)
    torch.testing.assert_close(out.intermediates[1], m.rnet(h2) + x)


# ---------------------------------------------------------------- sharing

def test_weight_sharing_grads_accumulate_over_recursions():
    torch.manual_seed(0)
    m = WarshipXZNetBeta(width=0.1, recursions=3).double()
    # 3 Inet applications use one set of parameters: no per-recursion copies
    assert n_params(m.inet) == 2 * conv_count(m.inet.conv1.in_channels, m.inet.conv1.out_channels, 3)
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    out = m(x)
    # gradient of the sum of intermediates = sum of gradients of each intermediate
    grads = []
    for r in range(3):
        m.zero_grad()
        m(x).intermediates[r].sum().backward()
        grads.append(m.rnet.images.weight.grad.clone())
    m.zero_grad()
    sum(out.intermediates).sum().backward()
    torch.testing.assert_close(m.rnet.images.weight.grad, sum(grads))
    assert all(g.abs().sum() > 0 for g in grads)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    for m in (WarshipXZNetBeta(width=0.1), DRCN(width=0.05, recursions=2)):
        out = m(torch.rand(2, 1, 6, 6))
        (out.final.pow(2).sum() + sum(y.pow(2).sum() for y in out.intermediates)).backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert missing == []


# ---------------------------------------------------------------- initialisation

def test_recursive_convs_are_identity_at_init():
    m = WarshipXZNetBeta(width=0.25)
    h = torch.rand(2, m.inet.conv1.in_channels, 7, 7)
    for conv in (m.inet.conv1, m.inet.conv2):
        torch.testing.assert_close(conv(h), h)
    # the residual block relu(h + conv2(relu(conv1 h))) doubles nonnegative features at init
    torch.testing.assert_close(m.inet(h), 2 * h)
    d = DRCN(width=0.0625)
    g = torch.rand(1, 16, 5, 5)
    torch.testing.assert_close(d.inet(g), g)


def test_identity_init_needs_square_conv():
    with pytest.raises(ValueError, match="square conv"):
        identity_init_(nn.Conv2d(2, 3, 3))


def test_biases_zero_at_init():
    for m in (WarshipXZNetBeta(width=0.1), DRCN(width=0.05)):
        biases = [p for n, p in m.named_parameters() if n.endswith("bias")]
        assert len(biases) == sum(isinstance(mod, nn.Conv2d) for mod in m.modules())
        assert all(torch.equal(b, torch.zeros_like(b)) for b in biases)


def test_he_init_std_on_large_layers():
    torch.manual_seed(0)
    m = WarshipXZNetBeta()
    for conv in (m.enet.conv2, m.rnet.images, m.enet.shrink):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = conv.weight.std().item()
        assert abs(std / math.sqrt(2 / fan_in) - 1) < 0.02, (conv, std)
        assert abs(conv.weight.mean().item()) < 0.05 * std


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("cls", [WarshipXZNetBeta, DRCN])
def test_bad_arguments(cls):
    with pytest.raises(ValueError, match=r"width=0.0; expected a finite float > 0"):
        cls(width=0.0)
    with pytest.raises(TypeError, match=r"width='1'.*expected a positive float"):
        cls(width="1")
    with pytest.raises(ValueError, match=r"recursions=0; expected a positive int"):
        cls(recursions=0)
    with pytest.raises(TypeError, match=r"recursions=2.0.*expected a positive int"):
        cls(recursions=2.0)


def test_bad_inputs():
    m = WarshipXZNetBeta(width=0.1)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 4\); expected \(B, 1, H, W\)"):
        m(torch.rand(2, 3, 4, 4))
    with pytest.raises(TypeError, match="expected a Tensor"):
        m([[1.0]])


def test_penalty_preset_applies_to_both():
    import landprobe as lp
    for m in (WarshipXZNetBeta(width=0.1), DRCN(width=0.05, recursions=2)):
        pen = lp.SubnetNormPenalty.preset(m, "mix")
        assert pen.kinds == {"enet": "l2_squared", "inet": "l1", "rnet": "l2_squared"}
        assert torch.isfinite(pen())

import pytest
import torch
from torch import nn

import landprobe as lp
from landprobe.params import as_param_vector
from helpers import ConvBN, MLP, Recursive


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enet = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 1))
        self.inet = nn.Conv2d(2, 2, 3, padding=1)
        self.rnet = nn.ModuleDict({"expand": nn.Conv2d(2, 3, 1), "out": nn.Conv2d(3, 1, 3)})


# ---------------------------------------------------------------- selectors
@pytest.mark.parametrize(
    "sel, expected",
    [
        ("inet", ["inet.weight", "inet.bias"]),
        ("rnet.expand", ["rnet.expand.weight", "rnet.expand.bias"]),
        ("inet.*", ["inet.weight", "inet.bias"]),
        ("*.weight", ["enet.0.weight", "enet.1.weight", "inet.weight", "rnet.expand.weight", "rnet.out.weight"]),
        ("enet.0.bias", ["enet.0.bias"]),
        (["rnet.out", "enet.1"], ["enet.1.weight", "enet.1.bias", "rnet.out.weight", "rnet.out.bias"]),
    ],
    ids=["attr", "dotted", "glob", "glob-suffix", "exact-param", "list-in-model-order"],
)
def test_selectors(sel, expected):
    assert lp.select(Net(), sel) == expected


def test_selector_module_and_mixed_list():
    net = Net()
    assert lp.select(net, net.rnet.expand) == ["rnet.expand.weight", "rnet.expand.bias"]
    assert lp.select(net, [net.inet, "enet.1.*"]) == ["enet.1.weight", "enet.1.bias", "inet.weight", "inet.bias"]
    assert lp.select(net, net) == lp.select(net, None)


def test_selector_prefix_is_not_a_substring_match():
    net = nn.ModuleDict({"inet": nn.Linear(1, 1), "inet2": nn.Linear(1, 1)})
    assert lp.select(net, "inet") == ["inet.weight", "inet.bias"]


def test_shared_parameters_selected_once():
    model = Recursive()
    assert lp.select(model, "block") == ["block.weight", "block.bias"]
    model.alias = model.block  # the same module under a second name
    assert lp.select(model, None).count("block.weight") == 1


def test_selector_errors():
    net = Net()
    with pytest.raises(ValueError, match=r"'inett' matched no parameter of Net\. Close names: \['inet'"):
        lp.select(net, "inett")
    with pytest.raises(ValueError, match="matched no parameter"):
        lp.select(net, ["inet", "nope.*"])
    with pytest.raises(ValueError, match="not a submodule of Net"):
        lp.select(net, nn.Linear(1, 1))
    with pytest.raises(TypeError, match="received the class Linear"):
        lp.select(net, nn.Linear)
    with pytest.raises(TypeError, match="has type int"):
        lp.select(net, 3)
    with pytest.raises(ValueError, match="empty list"):
        lp.select(net, [])
    assert lp.select(net, "nope", allow_empty=True) == []


def test_select_subnets_refuses_overlap():
    net = Net()
    with pytest.raises(ValueError, match=r"'a' and 'b' both select parameter 'inet.weight'"):
        lp.select_subnets(net, {"a": "inet", "b": "*.weight"})
    got = lp.select_subnets(net, {"e": "enet", "i": net.inet})
    assert list(got) == ["e", "i"] and got["i"] == ["inet.weight", "inet.bias"]


# ---------------------------------------------------------------- ParamVector
def test_from_module_subnet_and_buffers():
    m = ConvBN()
    v = lp.ParamVector.from_module(m, "bn", buffers=True)
    assert v.names == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]  # no num_batches_tracked
    v["bn.weight"].add_(1)  # a copy by default
    assert torch.equal(m.bn.weight, torch.ones(4))
    view = lp.ParamVector.from_module(m, "bn", copy=False)
    view["bn.weight"].add_(1)
    assert torch.equal(m.bn.weight.detach(), 2 * torch.ones(4))


def test_arithmetic_matches_flat_float64():
    torch.manual_seed(0)
    a = lp.ParamVector.from_module(MLP()).to(torch.float64)
    b = lp.ParamVector.from_module(MLP()).to(torch.float64)
    fa, fb = a.flatten(), b.flatten()
    torch.testing.assert_close((a + b).flatten(), fa + fb, rtol=0, atol=0)
    torch.testing.assert_close((a - b).flatten(), fa - fb, rtol=0, atol=0)
    torch.testing.assert_close((0.3 * a).flatten(), 0.3 * fa, rtol=0, atol=0)
    torch.testing.assert_close((a / 4).flatten(), fa / 4, rtol=0, atol=0)
    torch.testing.assert_close((-a).flatten(), -fa, rtol=0, atol=0)
    assert a.dot(b) == pytest.approx(float(fa @ fb), rel=1e-13)
    assert a.norm() == pytest.approx(float(fa.norm()), rel=1e-13)
    assert a.norm(1) == pytest.approx(float(fa.abs().sum()), rel=1e-13)
    lerped = a.lerp(b, 0.25).flatten()
    torch.testing.assert_close(lerped, fa + 0.25 * (fb - fa), rtol=1e-15, atol=1e-15)
    assert torch.equal(a.lerp(b, 0.0).flatten(), fa) and torch.equal(a.lerp(b, 1.0).flatten(), fb)
    c = a.clone().add_(b, alpha=2.0)
    torch.testing.assert_close(c.flatten(), fa + 2 * fb, rtol=0, atol=1e-15)
    assert torch.equal(a.unflatten(fa)["fc1.weight"], a["fc1.weight"])
    assert a.zeros_like().norm() == 0.0


def test_arithmetic_uses_foreach_kernels(monkeypatch):
    calls = []
    real = torch._foreach_add
    monkeypatch.setattr(torch, "_foreach_add", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    a = lp.ParamVector.from_module(MLP())
    _ = a + a
    assert calls == [1]  # one call for all tensors, no per-tensor loop


def test_mismatched_vectors_raise():
    a = lp.ParamVector({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"different names: missing \['w'\], extra \['v'\]"):
        a + lp.ParamVector({"v": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"'w' has shape \(2,\) vs \(3,\)"):
        a.dot(lp.ParamVector({"w": torch.zeros(3)}))
    with pytest.raises(TypeError, match="cannot add a ParamVector and a dict"):
        a + {"w": torch.zeros(2)}
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        lp.ParamVector({"w": [1.0]})
    with pytest.raises(ValueError, match="flat tensor has 3 elements"):
        a.unflatten(torch.zeros(3))


def test_randn_like_is_seeded_device_independent_and_leaves_global_rng():
    v = lp.ParamVector.from_module(MLP())
    state = torch.get_rng_state()
    d1, d2, d3 = v.randn_like(3), v.randn_like(3), v.randn_like(4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(d1.flatten(), d2.flatten()) and not torch.equal(d1.flatten(), d3.flatten())
    flat = d1.flatten()
    assert abs(float(flat.mean())) < 0.2 and abs(float(flat.std()) - 1) < 0.2  # Gaussian, not uniform [0, 1)
    assert float(flat.min()) < -1.0


def test_filter_normalization_li_et_al():
    torch.manual_seed(0)
    theta = lp.ParamVector.from_module(ConvBN())
    d = theta.randn_like(0).normalize_(theta)
    for name in theta.names:
        w, dd = theta[name], d[name]
        if w.dim() <= 1:
            assert torch.count_nonzero(dd) == 0, name  # biases and BN zeroed by default
        else:
            torch.testing.assert_close(dd.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1))
    kept = theta.randn_like(0).normalize_(theta, one_d="copy")
    assert torch.equal(kept["bn.weight"], theta["bn.weight"])
    as_filter = theta.randn_like(0).normalize_(theta, one_d="filter")
    assert as_filter["conv.bias"].norm() == pytest.approx(float(theta["conv.bias"].norm()), rel=1e-5)
    layer = theta.randn_like(0).normalize_(theta, "layer")
    assert layer["conv.weight"].norm() == pytest.approx(float(theta["conv.weight"].norm()), rel=1e-5)
    model = theta.randn_like(0).normalize_(theta, "model")
    assert model.norm() == pytest.approx(theta.norm(), rel=1e-6)
    with pytest.raises(ValueError, match="normalization='bogus'"):
        theta.randn_like(0).normalize_(theta, "bogus")
    with pytest.raises(ValueError, match="one_d='x'"):
        theta.randn_like(0).normalize_(theta, one_d="x")


def test_filter_normalization_is_scale_invariant():
    theta = lp.ParamVector.from_module(MLP())
    d1 = theta.randn_like(1).normalize_(theta)
    d2 = theta.randn_like(1).mul_(7.0).normalize_(theta * 3.0)
    torch.testing.assert_close((d2 / 3.0).flatten(), d1.flatten(), rtol=1e-5, atol=1e-6)


def test_apply_to_and_state_dict_checks():
    m = MLP()
    m.fc1.weight.requires_grad_(False)
    v = lp.ParamVector.from_module(MLP())
    v.apply_to(m)
    assert torch.equal(m.fc2.weight.detach(), v["fc2.weight"])
    assert m.fc1.weight.requires_grad is False and m.fc2.weight.requires_grad is True
    with pytest.raises(ValueError, match=r"has no parameter or buffer named \['nope'\]"):
        lp.ParamVector({"nope": torch.zeros(1)}).apply_to(m)
    with pytest.raises(ValueError, match=r"shape mismatch for 'fc1.bias'"):
        lp.ParamVector({"fc1.bias": torch.zeros(2)}).apply_to(m)
    sd = MLP().state_dict()
    assert lp.ParamVector.from_state_dict(sd, m).names == lp.select(m, None)
    bad = dict(sd)
    del bad["head.bias"]
    with pytest.raises(ValueError, match=r"lacks 1 entries of MLP: \['head.bias'\]"):
        lp.ParamVector.from_state_dict(bad, m)
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):   # DDP, torch.compile, both
        wrapped = {prefix + k: v for k, v in sd.items()}
        with pytest.warns(UserWarning, match=f"'{prefix}fc1.weight' -> 'fc1.weight'"):
            got = lp.ParamVector.from_state_dict(wrapped, m)
        assert got.names == lp.select(m, None) and all(torch.equal(got[n], sd[n]) for n in got.names)
    foreign = {"encoder." + k: v for k, v in sd.items()}
    with pytest.raises(ValueError, match="unexpected keys.*'encoder."):
        lp.ParamVector.from_state_dict(foreign, m)
    bad = dict(sd, **{"head.weight": torch.zeros(3, 6)})
    with pytest.raises(ValueError, match=r"head.weight: \(3, 6\) vs model \(2, 6\)"):
        lp.ParamVector.from_state_dict(bad, m)
    with pytest.raises(TypeError, match="expected a state_dict"):
        lp.ParamVector.from_state_dict([1, 2], m)


def test_as_param_vector_endpoint_kinds():
    m = ConvBN()
    names = lp.select(m, None) + ["bn.running_mean", "bn.running_var"]
    other = ConvBN()
    from_mod = as_param_vector(other, m, names=names)
    from_sd = as_param_vector(other.state_dict(), m, names=names)
    from_vec = as_param_vector(lp.ParamVector.from_module(other, buffers=True), m, names=names)
    for v in (from_sd, from_vec):
        assert all(torch.equal(x, y) for x, y in zip(v.tensors, from_mod.tensors))
    only_params = {k: v for k, v in other.state_dict().items() if "running" not in k}
    v = as_param_vector(only_params, m, names=names)  # missing buffers fall back to the model's
    assert torch.equal(v["bn.running_var"], m.bn.running_var)
    with pytest.raises(TypeError, match="the class ConvBN; pass an instance"):
        as_param_vector(ConvBN, m, names=names)
    with pytest.raises(TypeError, match="must be a state_dict, an nn.Module or a ParamVector"):
        as_param_vector(3.0, m, names=names)

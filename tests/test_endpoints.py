"""Endpoints, centers and directions are read as strictly as ``load_state_dict(strict=True)``:
keys, dtypes, finiteness, wrapper prefixes; models on the meta device; sum-reduced losses."""

import warnings

import pytest
import torch
from torch import nn

import landprobe as lp
from landprobe.engine.contract import looks_sum_reduced


def _setup(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).to(dtype).eval()
    x = torch.randn(16, 3, dtype=dtype)
    data = [(x[:8], x[:8].sum(1, keepdim=True)), (x[8:], x[8:].sum(1, keepdim=True))]
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: (v + 0.1 if v.is_floating_point() else v.clone()) for k, v in a.items()}
    return probe, a, b


def test_a_key_the_model_lacks_is_an_error_naming_it():
    probe, a, b = _setup()
    with pytest.raises(ValueError, match=r"b has 1 key\(s\) that Sequential does not have: \['3.weight'\]"):
        probe.interpolate(a, dict(b, **{"3.weight": torch.zeros(1)}), 3)


def test_another_architecture_names_missing_and_extra_keys_together():
    probe, a, _ = _setup()
    other = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)).state_dict()
    with pytest.raises(ValueError, match=r"lacks 4 parameter\(s\).*; b has 2 key\(s\) that Sequential does not have"):
        probe.interpolate(a, {"0.weight": a["0.weight"], "0.bias": a["0.bias"],
                              "9.weight": other["1.weight"], "9.bias": other["1.bias"]}, 3)


def test_a_non_floating_tensor_for_a_float_parameter_is_an_error():
    probe, a, b = _setup()
    with pytest.raises(TypeError, match=r"b\['0.weight'\] has dtype torch.int64, but the model's tensor is torch.float32"):
        probe.interpolate(a, dict(b, **{"0.weight": b["0.weight"].round().long()}), 3)
    with pytest.raises(TypeError, match=r"a\['0.bias'\] is a list, not a tensor"):
        probe.interpolate(dict(a, **{"0.bias": [0.0] * 4}), b, 3)


def test_another_floating_dtype_is_cast_with_one_warning_or_refused_when_strict():
    probe, a, b = _setup()
    b64 = {k: (v.double() if v.is_floating_point() else v) for k, v in b.items()}
    with pytest.warns(UserWarning, match=r"b has 8 tensor\(s\) of another floating dtype.*'0.weight \(float64\)'.*cast to "
                                         r"the model's dtype \(float32\)") as caught:
        curve = probe.interpolate(a, b64, 3)
    assert sum("floating dtype" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = probe.interpolate(a, b, 3)
    assert curve.losses.tolist() == same.losses.tolist()          # float64 -> float32 of float32 values: exact
    strict = lp.LandscapeProbe(probe.model, nn.MSELoss(), probe.data, strict=True)
    with pytest.raises(TypeError, match=r"b has 8 tensor\(s\) of another floating dtype.*pass strict=False"):
        strict.interpolate(a, b64, 3)
    with pytest.raises(TypeError, match="strict='yes'"):
        lp.LandscapeProbe(probe.model, nn.MSELoss(), probe.data, strict="yes")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_endpoints_and_directions_are_errors_before_any_pass(bad):
    probe, a, b = _setup()
    passes = []
    calls = lp.BatchLoss(lambda m, batch: passes.append(1) or nn.functional.mse_loss(m(batch[0]), batch[1]))
    counting = lp.LandscapeProbe(probe.model, calls, probe.data)
    nb = dict(b, **{"2.bias": torch.tensor([bad])})
    with pytest.raises(ValueError, match=r"b has non-finite values \(NaN or inf\) in \['2.bias'\]"):
        counting.interpolate(a, nb, 3)
    with pytest.raises(ValueError, match=r"directions\[0\] has non-finite values"):
        counting.plane(directions=(nb, b), points=3)
    assert passes == []


def test_a_non_finite_model_is_an_error_but_a_buffer_may_hold_infinities():
    probe, a, b = _setup()
    with torch.no_grad():
        probe.model[2].weight[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"the model \(Sequential\) has non-finite values.*\['2.weight'\]"):
        probe.loss()
    probe.model.load_state_dict(a)
    probe.model.register_buffer("mask", torch.tensor([0.0, -float("inf")]))  # an attention-style mask
    assert probe.loss() == pytest.approx(probe.loss(a))
    with pytest.raises(ValueError, match=r"b has non-finite values.*\['mask'\]"):
        probe.interpolate(a, dict(b, mask=torch.tensor([float("nan"), 0.0])), 3)


def test_large_finite_values_whose_norm_overflows_are_not_called_non_finite():
    from landprobe.params import check_finite

    big = torch.full((4,), 3e38)                  # finite; its float32 2-norm is inf
    check_finite({"w": big, "h": torch.full((8,), 6e4, dtype=torch.float16)}, "theta")
    with pytest.raises(ValueError, match=r"theta has non-finite values.*\['v'\]"):
        check_finite({"w": big, "v": torch.tensor([1.0, -float("inf")])}, "theta")
    with pytest.raises(ValueError, match=r"\['w'\]"):
        check_finite({"w": torch.cat([big, torch.tensor([float("nan")])])}, "theta")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_renamed_with_a_warning(prefix):
    probe, a, b = _setup()
    wrapped = {prefix + k: v for k, v in b.items()}
    with pytest.warns(UserWarning, match=f"'{prefix}0.weight' -> '0.weight'"):
        got = probe.interpolate(a, wrapped, 3)
    assert got.losses.tolist() == probe.interpolate(a, b, 3).losses.tolist()


def test_a_compiled_or_ddp_style_module_endpoint_is_unwrapped():
    probe, a, b = _setup()

    class Wrapper(nn.Module):                     # what DDP and torch.compile look like from outside
        def __init__(self, inner):
            super().__init__()
            self.module = inner
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    other.load_state_dict(b)
    with pytest.warns(UserWarning, match="'module.0.weight' -> '0.weight'"):
        got = probe.interpolate(a, Wrapper(other), 3)
    assert got.loss_b == probe.loss(b)


def test_a_tied_parameter_may_appear_under_every_name():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.dec(self.enc(x))
    model = Tied()
    probe = lp.LandscapeProbe(model, nn.MSELoss(), [(torch.ones(2, 2), torch.zeros(2, 2))])
    sd = model.state_dict()
    assert set(sd) == {"enc.weight", "dec.weight"}
    assert probe.interpolate(sd, sd, 2).losses[0] == probe.loss()


def test_a_meta_model_is_a_clear_error_everywhere():
    meta = nn.Linear(2, 1, device="meta")
    with pytest.raises(ValueError, match="meta device"):
        lp.LandscapeProbe(meta, nn.MSELoss(), [(torch.ones(1, 2), torch.ones(1, 1))])
    with pytest.raises(ValueError, match=r"model \(Linear\) is on the meta device \('weight'"):
        lp.SubnetNormPenalty(meta, {"weight": "l1"})
    with pytest.raises(ValueError, match="meta device"):
        lp.capacity.subnet_norms(meta, {"all": None})


def test_a_sum_reduced_loss_warns_once_and_a_mean_reduced_one_does_not():
    probe, a, _ = _setup()
    summed = lp.LandscapeProbe(probe.model, nn.MSELoss(reduction="sum"), probe.data)
    with pytest.warns(UserWarning, match="looks sum-reduced") as caught:
        summed.loss()
        summed.loss()
    assert sum("sum-reduced" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe.loss()


@pytest.mark.parametrize("loss, expected", [
    (nn.MSELoss(reduction="sum"), True), (nn.L1Loss(reduction="sum"), True), (nn.MSELoss(), False),
    (nn.L1Loss(), False), (lambda out, y: ((out - y) ** 2).sum(1).mean(), False),   # per-sample sum, batch mean
    (lambda out, y: ((out - y) ** 2).sum() * 0.0, False),                           # a zero loss cannot tell
])
def test_looks_sum_reduced(loss, expected):
    torch.manual_seed(1)
    out, y = torch.randn(10, 2), torch.randn(10, 2)
    assert looks_sum_reduced(loss, out, y) is expected
    if not hasattr(loss, "reduction"):                                             # a module states it
        assert looks_sum_reduced(loss, out[:1], y[:1]) is False                    # one sample cannot tell


def test_a_plain_loss_is_called_twice_more_once_and_a_stated_reduction_not_at_all():
    probe, _, _ = _setup()
    calls = []

    def loss_fn(out, y):
        calls.append(len(y))
        return nn.functional.mse_loss(out, y)
    lp.LandscapeProbe(probe.model, loss_fn, probe.data).interpolate(probe.model, probe.model, 3)
    assert sorted(calls) == sorted([8] * 6 + [4, 4])       # 3 points x 2 batches, and the halves once
    calls.clear()
    loss_fn.reduction = "mean"
    lp.LandscapeProbe(probe.model, loss_fn, probe.data).interpolate(probe.model, probe.model, 3)
    assert calls == [8] * 6

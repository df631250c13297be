"""The bf16-on-an-emulating-CPU warning: raised exactly where bf16 autocast would be slow."""

import warnings

import pytest
import torch

import landprobe as lp
from landprobe.common import hardware as _hardware


def _probe(dtype):
    model = torch.nn.Linear(2, 1)
    return lp.LandscapeProbe(model, torch.nn.MSELoss(), [(torch.randn(3, 2), torch.randn(3, 1))], dtype=dtype)


def test_bf16_probe_on_an_emulating_cpu_warns_and_says_what_to_do(monkeypatch):
    monkeypatch.setattr(_hardware, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"without bf16 arithmetic .* Use float32 here \(dtype=None"):
        _probe(torch.bfloat16)


@pytest.mark.parametrize("native, dtype", [(True, torch.bfloat16), (None, torch.bfloat16), (False, None)])
def test_no_warning_where_bf16_is_native_unknown_or_not_asked_for(monkeypatch, native, dtype):
    monkeypatch.setattr(_hardware, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _probe(dtype)
        _hardware.warn_if_slow_autocast("cuda", torch.bfloat16, "x")   # GPUs: never


def test_recipe_with_amp_bf16_warns_on_an_emulating_cpu(monkeypatch):
    from landprobe.recipes._train import TrainSpec, Trainer

    monkeypatch.setattr(_hardware, "cpu_has_native_bf16", lambda: False)
    x, y = torch.rand(8, 1, 41, 41), torch.rand(8, 1, 41, 41)
    spec = TrainSpec(width=0.125, setting="mix", epochs=1, max_steps=1, amp="bf16", batch_size=4)
    with pytest.warns(RuntimeWarning, match=r"amp='bf16' asks for bf16 autocast"):
        Trainer(spec, x, y)


def test_detection_answers_a_bool_or_none():
    assert _hardware.cpu_has_native_bf16() in (True, False, None)

"""Two-phase training (landprobe.generalization.two_phase): the frozen gates replay the phase-1
network exactly, make the network linear in each layer's weights, refuse what they cannot gate,
leave the user's model as it was; two_phase_train and the experiment runner on tiny problems."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from landprobe.generalization.two_phase import (
    GatedNetwork,
    TwoPhaseResult,
    check_gates,
    frozen_copy,
    frozen_gates,
    gate_modules,
    two_phase_experiment,
    two_phase_train,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- the cases
class Twice(nn.Module):
    """One ReLU module called twice in one forward (equal widths: a swapped replay would fit)."""

    def __init__(self, d: int = 6):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, d), nn.Linear(d, d), nn.Linear(d, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class Recursive(nn.Module):
    """A weight-shared block applied three times with one LeakyReLU module."""

    def __init__(self):
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        h = self.act(self.embed(x))
        for _ in range(3):
            h = h + self.act(self.block(h))
        return self.head(h)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))


def cnn() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1),
                        nn.Conv2d(4, 4, 3), nn.PReLU(4), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    with torch.no_grad():                               # BatchNorm with statistics of its own
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[4].weight.uniform_(0.05, 0.4)
    return net


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    shape: tuple
    shared: tuple = ()                                  # parameters used more than once per forward


CASES = [Case("mlp-relu", mlp, (10, 4)), Case("cnn-leaky-prelu-bn", cnn, (6, 2, 6, 6)),
         Case("relu-twice", Twice, (10, 4)),
         Case("recursive-shared", Recursive, (10, 4), ("block.weight", "block.bias"))]


def build(case: Case, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = case.build().double().eval()
    x = torch.randn(*case.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100))
    return model, x


def moved(model: nn.Module, scale: float = 0.5, seed: int = 1) -> nn.Module:
    """A copy with every parameter moved by Gaussian noise (gates of the original now differ)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return out


def hook_counts(model: nn.Module) -> list[tuple]:
    return [(name, sorted(vars(m)), len(m._forward_hooks), len(m._forward_pre_hooks),
             len(m._forward_hooks_with_kwargs), len(m._forward_pre_hooks_with_kwargs),
             len(m._forward_hooks_always_called), len(m._backward_hooks))
            for name, m in model.named_modules()]


# ---------------------------------------------------------------------------- replay at the start of phase 2
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_start_of_phase2_equals_phase1_bitwise(case):
    model, x = build(case)
    ref = frozen_copy(model)
    plain = model(x)
    with frozen_gates(model, ref):
        gated = model(x)
    assert gated.dtype == torch.float64
    assert torch.equal(gated, plain) and torch.equal(gated, ref(x))
    assert torch.equal(GatedNetwork(model, ref).eval()(x), plain)
    check_gates(model, ref, x)                           # both checks pass


def test_replay_is_call_by_call_against_a_hand_computation():
    """Twice's ReLU runs twice; its k-th call must get the reference's k-th gate."""
    ref_model, x = build(CASES[2])
    ref = frozen_copy(ref_model)
    model = moved(ref_model)
    with torch.no_grad():
        g1 = ref.fc1(x) > 0
        g2 = ref.fc2(torch.relu(ref.fc1(x))) > 0
        expected = model.fc3(g2 * model.fc2(g1 * model.fc1(x)))
        with frozen_gates(model, ref):
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)
    assert not torch.allclose(got, model(x))             # the gates are not the model's own


def test_inplace_relu_and_prelu_gates_against_a_hand_computation():
    torch.manual_seed(0)
    ref_model = cnn().double().eval()
    ref = frozen_copy(ref_model)
    model = moved(ref_model)
    x = torch.randn(6, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        z1r = ref[1](ref[0](x))
        z2r = ref[3](torch.nn.functional.leaky_relu(z1r, 0.1))
        slope = ref[4].weight.view(1, 4, 1, 1)          # PReLU: the reference's slope, per channel
        z1 = model[1](model[0](x))
        h = model[3](torch.where(z1r > 0, z1, 0.1 * z1))
        h = torch.where(z2r > 0, h, slope * h)
        expected = model[7](model[6](model[5](h)))
        with frozen_gates(model, ref):
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------- linear in each layer's weights
def _along(model: nn.Module, param: torch.nn.Parameter, d: torch.Tensor, ts, ref, x, gated: bool) -> list:
    start = param.detach().clone()
    outs = []
    with torch.no_grad():
        for t in ts:
            param.copy_(start + t * d)
            if gated:
                with frozen_gates(model, ref):
                    outs.append(model(x).clone())
            else:
                outs.append(model(x).clone())
        param.copy_(start)
    return outs


def _affine_residual(outs, ts) -> float:
    f0, f1 = outs[ts.index(0.0)], outs[ts.index(1.0)]
    scale = max(float(f.abs().max()) for f in outs)
    return max(float((f - ((1 - t) * f0 + t * f1)).abs().max()) for t, f in zip(ts, outs)) / scale


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gated_output_is_affine_along_each_layer(case):
    ref_model, x = build(case)
    ref = frozen_copy(ref_model)
    model = moved(ref_model)
    ts = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0]
    g = torch.Generator().manual_seed(7)
    checked = 0
    for name, p in model.named_parameters():
        if name in case.shared:
            continue
        d = torch.randn(p.shape, generator=g, dtype=p.dtype)
        res = _affine_residual(_along(model, p, d, ts, ref, x, gated=True), ts)
        assert res < 1e-12, (name, res)
        checked += 1
    assert checked >= 4
    # the same probe sees the plain network's kinks: the check can fail
    first = next(p for n, p in model.named_parameters() if n not in case.shared)
    d = 3 * torch.randn(first.shape, generator=g, dtype=first.dtype)
    assert _affine_residual(_along(model, first, d, ts, ref, x, gated=False), ts) > 1e-3


# ---------------------------------------------------------------------------- what cannot be gated
class Block(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = act

    def forward(self, x):
        return self.act(self.fc(x))


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.GELU(), nn.Tanh(), nn.Sigmoid(), nn.ELU(), nn.SiLU(), nn.RReLU(),
                                 nn.Hardtanh(), nn.Softplus(), nn.Softmax(dim=1)], ids=lambda m: type(m).__name__)
def test_unsupported_activation_is_named_with_its_path(act):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), Block(act))
    match = rf"'2\.act' \({type(act).__name__}\): its output is not a fixed gate times its input"
    with pytest.raises(ValueError, match=match):
        gate_modules(model)
    with pytest.raises(ValueError, match=match), frozen_gates(model, copy.deepcopy(model)):
        pass
    with pytest.raises(ValueError, match=match):                  # before any training
        two_phase_train(model, nn.MSELoss(), [(torch.ones(2, 3), torch.ones(2, 3))],
                        [(torch.ones(2, 3), torch.ones(2, 3))], optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                        steps=(1, 1))


@pytest.mark.parametrize("mod, why", [(nn.MaxPool1d(1), "picks or weighs its inputs by their values"),
                                      (nn.LayerNorm(3), "statistics of its own input"),
                                      (nn.GroupNorm(1, 3), "statistics of its own input"),
                                      (nn.RNN(3, 3), "tanh/sigmoid inside")], ids=lambda m: type(m).__name__)
def test_other_nonlinear_modules_are_refused(mod, why):
    with pytest.raises(ValueError, match=rf"'1' \({type(mod).__name__}\): it.*{why}"):
        gate_modules(nn.Sequential(nn.Linear(3, 3), mod))


def test_all_offenders_are_listed_at_once():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.GELU())
    with pytest.raises(ValueError, match=r"'1' \(Tanh\).*'3' \(GELU\)"):
        gate_modules(model)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act = nn.ReLU()

    def forward(self, x):                                # one module, one functional relu
        return self.fc3(torch.relu(self.fc2(self.act(self.fc1(x)))))


def test_functional_relu_is_caught_by_the_output_check():
    torch.manual_seed(0)
    model = Functional().double()
    x = torch.randn(16, 4, dtype=torch.float64)
    assert list(gate_modules(model)) == ["act"]          # traversal cannot see it
    with pytest.raises(ValueError, match="not affine in its input.*functional F.relu"):
        check_gates(model, frozen_copy(model), x)
    check_gates(model, frozen_copy(model), x, affine=False)          # replay alone cannot tell
    with pytest.raises(ValueError, match="not affine in its input"):
        two_phase_train(model, nn.CrossEntropyLoss(), [(x, torch.zeros(16, dtype=torch.long))],
                        [(x, torch.zeros(16, dtype=torch.long))], optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                        steps=(2, 2))
    run = two_phase_train(model, nn.CrossEntropyLoss(), [(x, torch.zeros(16, dtype=torch.long))],
                          [(x, torch.zeros(16, dtype=torch.long))], optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                          steps=(2, 2), check=False)
    assert run.phase2_losses.shape == (2,)


def test_replay_check_fails_when_weights_differ():
    model, x = build(CASES[0])
    with pytest.raises(ValueError, match="outputs differ from the reference's"):
        check_gates(moved(model), frozen_copy(model), x)


def test_affine_check_needs_floating_inputs():
    model = nn.Sequential(nn.Embedding(5, 3), nn.ReLU(), nn.Linear(3, 2))
    ids = torch.tensor([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="inputs has none.*affine=False"):
        check_gates(model, frozen_copy(model), ids)
    check_gates(model, frozen_copy(model), ids, affine=False)


class Times(nn.Module):
    def __init__(self, times: int):
        super().__init__()
        self.fc, self.act, self.times = nn.Linear(3, 3), nn.ReLU(), times

    def forward(self, x):
        for _ in range(self.times):
            x = self.act(self.fc(x))
        return x


def test_units_called_a_different_number_of_times_are_refused():
    x = torch.randn(4, 3)
    model = Times(1)
    ref = frozen_copy(model)
    ref.times = 2
    with pytest.raises(ValueError, match=r"left unused.*\{'act': 1\}"), frozen_gates(model, ref):
        model(x)
    model.times, ref.times = 3, 2
    more = "'act' ran more often than in the reference"
    with pytest.raises(ValueError, match=more), frozen_gates(model, ref):
        model(x)


def test_bad_pairs_are_refused():
    model = mlp()
    with pytest.raises(ValueError, match="reference is the model itself"), frozen_gates(model, model):
        pass
    other = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="differ from the model's"), frozen_gates(model, other):
        pass
    one, two = (nn.Sequential(model[0], model[1], nn.Linear(8, 3)) for _ in range(2))
    with pytest.raises(ValueError, match=r"share the unit modules \['1'\]"), frozen_gates(one, two):
        pass
    alone = "ran more often.*outside a call of the whole model"
    with pytest.raises(ValueError, match=alone), frozen_gates(model, frozen_copy(model)):
        model[1](torch.ones(2, 8))                   # a unit called alone: no gates recorded
    with pytest.raises(TypeError, match="instantiate it"):
        gate_modules(nn.ReLU)


# ---------------------------------------------------------------------------- the user's model is left alone
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_no_hooks_or_attributes_left_also_on_exceptions(case):
    model, x = build(case)
    ref = frozen_copy(model)
    before, ref_before = hook_counts(model), hook_counts(ref)
    class_dict = dict(vars(type(model)))
    with frozen_gates(model, ref):
        model(x)
    assert hook_counts(model) == before and hook_counts(ref) == ref_before
    with pytest.raises(KeyError), frozen_gates(model, ref):
        model(x)
        raise KeyError("stop")
    assert hook_counts(model) == before
    with pytest.raises(RuntimeError), frozen_gates(model, ref):      # an error inside the gated forward
        model(x[..., :1])
    with frozen_gates(model, ref):                       # the context stays usable after a failed call
        with pytest.raises(RuntimeError):
            model(x[..., :1])
        assert torch.equal(model(x), ref(x))
    assert hook_counts(model) == before and hook_counts(ref) == ref_before
    GatedNetwork(model, ref)(x)
    assert hook_counts(model) == before and dict(vars(type(model))) == class_dict
    with frozen_gates(model, ref):                       # still usable after the failed call
        assert torch.equal(model(x), ref(x))


def test_two_phase_train_leaves_the_model_and_the_global_rng_alone():
    torch.manual_seed(0)
    model = Twice()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = hook_counts(model)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    torch.manual_seed(123)
    run = two_phase_train(model, nn.CrossEntropyLoss(), [(x[:8], y[:8])], [(x[8:], y[8:])],
                          optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), steps=(5, 5), seed=3)
    after_draw = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after_draw, torch.rand(1))       # the caller's RNG stream is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert hook_counts(model) == before and model.training
    assert run.network.model is not model and run.phase1 is not model


# ---------------------------------------------------------------------------- two_phase_train
def _problem(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = ((x[:, 0] * x[:, 1] > 0).long() + (x[:, 2] > 0.5).long())
    return x, y


def test_two_phase_train_phases():
    torch.manual_seed(0)
    model = Recursive()
    x, y = _problem()
    opt = lambda p: torch.optim.SGD(p, lr=0.05)
    d1, d2 = [(x[:12], y[:12])], [(x[12:], y[12:])]
    start = two_phase_train(model, nn.CrossEntropyLoss(), d1, d2, optimizer=opt, steps=(6, 0), seed=1)
    run = two_phase_train(model, nn.CrossEntropyLoss(), d1, d2, optimizer=opt, steps=(6, 10), seed=1)
    # phase 1 is deterministic; phase 2 starts from it and moves only the gated network's weights
    assert all(torch.equal(a, b) for a, b in zip(start.phase1.parameters(), run.phase1.parameters()))
    assert torch.equal(start.network.eval()(x), start.phase1(x))
    assert not torch.equal(run.network.model.block.weight, run.phase1.block.weight)
    assert not any(p.requires_grad for p in run.phase1.parameters())
    assert bool(run.phase2_losses[-1] < run.phase2_losses[0])
    # the trained network is gated by the phase-1 network: a hand computation of the gates
    net, ref = run.network.model, run.phase1
    with torch.no_grad():
        zr = ref.embed(x)
        hr, h = ref.act(zr), torch.where(zr > 0, net.embed(x), 0.2 * net.embed(x))
        for _ in range(3):
            zr, z = ref.block(hr), net.block(h)
            hr, h = hr + ref.act(zr), h + torch.where(zr > 0, z, 0.2 * z)
        torch.testing.assert_close(run.network.eval()(x), net.head(h), rtol=1e-6, atol=1e-6)
    again = two_phase_train(model, nn.CrossEntropyLoss(), d1, d2, optimizer=opt, steps=(6, 10), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(run.network.parameters(), again.network.parameters()))


def test_phase2_keeps_batchnorm_statistics_and_the_reference_frozen():
    torch.manual_seed(0)
    model = cnn()
    x, y = torch.randn(24, 2, 6, 6), torch.randint(0, 3, (24,))
    run = two_phase_train(model, nn.CrossEntropyLoss(), [(x[:8], y[:8])], [(x[8:], y[8:])],
                          optimizer=lambda p: torch.optim.SGD(p, lr=0.05), steps=(4, 6))
    bn, bn_ref = run.network.model[1], run.phase1[1]
    assert torch.equal(bn.running_mean, bn_ref.running_mean) and torch.equal(bn.running_var, bn_ref.running_var)
    assert not torch.equal(bn.weight, bn_ref.weight)    # its affine part trains
    run.network.train()
    assert run.network.model[0].training and not bn.training and not run.phase1.training


def test_two_phase_train_argument_errors():
    model, (x, y) = mlp(), _problem()
    d = [(x, y)]
    sgd = lambda p: torch.optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="expected a factory params -> torch.optim.Optimizer"):
        two_phase_train(model, nn.CrossEntropyLoss(), d, d, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        steps=(1, 1))
    with pytest.raises(TypeError, match="returned a list"):
        two_phase_train(model, nn.CrossEntropyLoss(), d, d, optimizer=lambda p: [], steps=(1, 1))
    with pytest.raises(ValueError, match=r"steps=5; expected a pair"):
        two_phase_train(model, nn.CrossEntropyLoss(), d, d, optimizer=sgd, steps=5)
    with pytest.raises(ValueError, match=r"steps\[1\]=-1"):
        two_phase_train(model, nn.CrossEntropyLoss(), d, d, optimizer=sgd, steps=(1, -1))
    with pytest.raises(ValueError, match="phase2_data yielded no batch"):
        two_phase_train(model, nn.CrossEntropyLoss(), d, [], optimizer=sgd, steps=(1, 1))
    import landprobe as lp
    loss = lp.BatchLoss(lambda m, b: nn.functional.cross_entropy(m(b["x"]), b["y"]))
    dict_data = [{"x": x, "y": y}]
    with pytest.raises(ValueError, match="pass check_inputs="):
        two_phase_train(model, loss, dict_data, dict_data, optimizer=sgd, steps=(1, 1))
    run = two_phase_train(model, loss, dict_data, dict_data, optimizer=sgd, steps=(1, 1), check_inputs=x)
    assert run.phase2_losses.shape == (1,)


# ---------------------------------------------------------------------------- the experiment runner
def _make() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3))


def test_experiment_runner_ratios_and_round_trip(tmp_path):
    x, y = _problem(120)
    res = two_phase_experiment(_make, (x[:80], y[:80]), (x[80:], y[80:]), alpha=0.25, seeds=[0, 1, 2], steps=60,
                               batch_size=16, darc1_weight=0.01, progress_bar=False)
    s = res.settings
    assert (s["phase1_samples"], s["phase2_samples"], s["phase1_steps"], s["phase2_steps"]) == (20, 60, 15, 45)
    assert s["optimizer"]["class"] == "SGD" and s["optimizer"]["lr"] == 0.05
    for arr in (res.base_error, res.two_phase_error, res.darc1_error, res.phase1_error, res.base_train_error):
        assert arr.shape == (3,) and np.all((arr >= 0) & (arr <= 1))
    np.testing.assert_allclose(res.two_phase_ratio, res.two_phase_error / res.base_error, rtol=1e-15)
    mean, sd = res.ratio_stats("darc1")
    assert mean == pytest.approx(np.mean(res.darc1_ratio)) and sd == pytest.approx(np.std(res.darc1_ratio, ddof=1))
    path = res.save(tmp_path / "r.json")
    back = TwoPhaseResult.load(path)
    assert back.seeds == res.seeds and back.settings == json.loads(json.dumps(res.settings))
    for f in ("base_error", "two_phase_error", "darc1_error", "phase1_error", "two_phase_train_error"):
        np.testing.assert_array_equal(getattr(back, f), getattr(res, f))
    summary = json.loads(path.read_text())["summary"]
    assert summary["two_phase_ratio_mean"] == pytest.approx(res.ratio_stats("two_phase")[0])
    assert "| two-phase / base |" in back.table() and "| 2 |" in back.table(per_seed=True)
    assert back.plot().get_ylabel() == "test error / base test error"
    again = two_phase_experiment(_make, (x[:80], y[:80]), (x[80:], y[80:]), alpha=0.25, seeds=[2], steps=60,
                                 batch_size=16, darc1_weight=0.01, progress_bar=False)
    assert again.two_phase_error[0] == res.two_phase_error[2] and again.darc1_error[0] == res.darc1_error[2]


def test_experiment_argument_errors():
    x, y = _problem(40)
    tr, te = (x[:30], y[:30]), (x[30:], y[30:])
    with pytest.raises(ValueError, match=r"alpha=1.5; expected a number in \(0, 1\)"):
        two_phase_experiment(_make, tr, te, alpha=1.5)
    with pytest.raises(ValueError, match="leaves 0 for phase 1"):
        two_phase_experiment(_make, tr, te, alpha=0.01)
    with pytest.raises(ValueError, match="seeds=.*distinct integers"):
        two_phase_experiment(_make, tr, te, seeds=[0, 0])
    with pytest.raises(ValueError, match="train must be a pair"):
        two_phase_experiment(_make, (x, y[:3]), te)
    with pytest.raises(ValueError, match="steps=1; expected an integer >= 2"):
        two_phase_experiment(_make, tr, te, steps=1)
    with pytest.raises(ValueError, match="darc1_weight=-1"):
        two_phase_experiment(_make, tr, te, darc1_weight=-1)


def test_ratios_with_a_zero_base_error_are_nan():
    r = TwoPhaseResult([0, 1], np.array([0.0, 0.1]), np.array([0.1, 0.1]), np.array([0.0, 0.05]))
    assert np.isnan(r.two_phase_ratio[0]) and r.two_phase_ratio[1] == 1.0
    with pytest.raises(ValueError, match="which='base'"):
        r.ratio_stats("base")


def test_digits_example_runs_small(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "tp"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "generalization" / "two_phase_digits.py"),
                           "--out", str(out), "--seeds", "2", "--steps", "30", "--width", "32"],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "two_phase.json").read_text())
    assert data["kind"] == "TwoPhaseResult" and len(data["base_error"]) == 2
    assert {"command", "torch", "cpu", "date"} <= set(data["settings"]["run"])
    assert "two-phase / base" in (out / "table.md").read_text()
    assert (out / "ratios.png").stat().st_size > 1000

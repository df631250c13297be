"""perturb(): exact restoration of model and optimizer, the noise definition, retraining on a convex toy, errors."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import CASES, assert_same_snapshot, snapshot
from landprobe.probes.perturb import PerturbationResult, perturb


def case_id(c):
    return c.name


def opt_snapshot(opt):
    state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in opt.state.items()}
    idents = {id(p): {k: id(v) for k, v in s.items()} for p, s in opt.state.items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return state, idents, groups, id(opt.state), id(opt.param_groups)


def assert_same_opt(before, opt):
    state, idents, groups, sid, gid = before
    now = opt_snapshot(opt)
    assert now[3] == sid and now[4] == gid                      # the very same objects
    assert now[1] == idents
    assert now[2] == groups
    for pid, s in state.items():
        for k, v in s.items():
            if torch.is_tensor(v):
                assert torch.equal(v, now[0][pid][k]), k
            else:
                assert v == now[0][pid][k]


def warm(model, data, loss_fn, opt, steps=3):
    for _ in range(steps):
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("kind", ["sgd_momentum", "adam"])
def test_model_and_user_optimizer_bitwise_unchanged(case, kind):
    model, data = case.build()
    opt = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if kind == "sgd_momentum"
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    warm(model, data, case.loss_fn, opt)
    opt.zero_grad(set_to_none=False)
    grads = [p.grad for p in model.parameters()]
    grad_vals = [g.clone() for g in grads]
    model.train()
    before, obefore = snapshot(model), opt_snapshot(opt)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    r = perturb(probe, opt, scale=0.2, steps=4, repeats=2)
    assert_same_snapshot(before, snapshot(model))
    assert_same_opt(obefore, opt)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(g, v) for g, v in zip(grads, grad_vals))
    assert r.losses.shape == (2, 2) and r.train_losses.shape == (2, 4)
    assert r.settings["optimizer"] == type(opt).__name__
    # the user's optimizer still trains the model as before the probe
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    opt.step()
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in sd.items())


def test_repeats_start_from_the_same_optimizer_state():
    model, data = CASES[0].build(dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    warm(model, data, CASES[0].loss_fn, opt)
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    a = perturb(probe, opt, scale=0.0, steps=3, repeats=3)
    np.testing.assert_array_equal(a.losses[0], a.losses[1])      # no noise: identical repeats,
    np.testing.assert_array_equal(a.losses[0], a.losses[2])      # each from the saved momentum
    # the momentum matters: a fresh optimizer moves differently
    b = perturb(probe, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), scale=0.0, steps=3, repeats=1)
    assert b.losses[0, -1] != a.losses[0, -1]


def test_scale_zero_and_lr_zero_give_the_unperturbed_loss():
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    r = perturb(probe, lambda p: torch.optim.SGD(p, lr=0.0), scale=0.0, steps=3, repeats=2, eval_every=1)
    base = probe.loss()
    assert r.base_loss == base
    np.testing.assert_array_equal(r.losses, np.full((2, 4), base))
    np.testing.assert_array_equal(r.eval_steps, [0, 1, 2, 3])
    np.testing.assert_array_equal(r.noise_norms, [0.0, 0.0])
    assert math.isnan(r.recovered)


def test_noise_is_the_documented_per_tensor_relative_gaussian():
    model, data = CASES[0].build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    scale, seed = 0.3, 4
    r = perturb(probe, lambda p: torch.optim.SGD(p, lr=0.1), scale=scale, steps=0, repeats=2, seed=seed, subnet="fc2")
    seeds = np.random.SeedSequence(seed).generate_state(4)
    for rep in range(2):
        g = torch.Generator().manual_seed(int(seeds[2 * rep]))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        num, den = 0.0, 0.0
        for n in ("fc2.weight", "fc2.bias"):
            w = state[n]
            e = torch.randn(w.shape, generator=g, dtype=torch.float64) * (scale * w.norm() / math.sqrt(w.numel()))
            state[n] = w + e
            num, den = num + float((e**2).sum()), den + float((w**2).sum())
        assert r.losses[rep, 0] == pytest.approx(probe.loss(state), rel=1e-12)
        assert r.noise_norms[rep] == pytest.approx(math.sqrt(num / den), rel=1e-12)
    assert r.losses.shape == (2, 1) and r.train_losses.shape == (2, 0)
    a = perturb(probe, lambda p: torch.optim.SGD(p, lr=0.1), scale=0.05, steps=0, repeats=1, relative=False)
    g = torch.Generator().manual_seed(int(np.random.SeedSequence(0).generate_state(2)[0]))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for n, _ in model.named_parameters():
        state[n] = state[n] + 0.05 * torch.randn(state[n].shape, generator=g, dtype=torch.float64)
    assert a.losses[0, 0] == pytest.approx(probe.loss(state), rel=1e-12)


def test_retraining_lowers_the_loss_on_a_convex_toy_and_is_reproducible():
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    x = torch.randn(64, 5)
    data = [(x[:32], x[:32] @ torch.arange(5.0).unsqueeze(1)), (x[32:], x[32:] @ torch.arange(5.0).unsqueeze(1))]
    with torch.no_grad():                                     # at the minimum: L = 0
        model.weight.copy_(torch.arange(5.0).unsqueeze(0))
        model.bias.zero_()
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data)
    assert probe.loss() == 0.0
    factory = lambda p: torch.optim.SGD(p, lr=0.05)          # noqa: E731
    r = perturb(probe, factory, scale=0.5, steps=40, repeats=3, eval_every=10)
    assert (r.perturbed_losses > r.base_loss).all()
    assert (r.retrained_losses < r.perturbed_losses).all()
    assert (np.diff(r.losses, axis=1) < 0).all()              # monotone on a convex quadratic with small lr
    assert r.eval_steps.tolist() == [0, 10, 20, 30, 40]
    assert r.train_losses[:, -1].max() < r.train_losses[:, 0].min()
    again = perturb(probe, factory, scale=0.5, steps=40, repeats=3, eval_every=10)
    np.testing.assert_array_equal(r.losses, again.losses)
    assert 0 < r.recovered <= 1


def test_training_loss_fn_and_dropout_model():
    model, data = CASES[2].build()                            # dropout inside: train mode used for retraining
    probe = lp.LandscapeProbe(model, CASES[2].loss_fn, data)
    before = snapshot(model)
    calls = []

    def train_loss(out, y):
        calls.append(out.shape[0])
        return nn.functional.mse_loss(out, y) + 0.0 * sum(p.sum() for p in model.parameters())

    r = perturb(probe, lambda p: torch.optim.SGD(p, lr=0.01), scale=0.1, steps=3, repeats=1, loss_fn=train_loss)
    assert calls == [6, 4, 6]                                 # batches cycled in order
    assert_same_snapshot(before, snapshot(model))
    assert r.settings["optimizer"] == "factory"


def test_interrupt_restores_model_and_optimizer():
    model, data = CASES[1].build()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    warm(model, data, CASES[1].loss_fn, opt, steps=1)
    before, obefore = snapshot(model), opt_snapshot(opt)
    n = {"calls": 0}

    def train_loss(out, y):
        n["calls"] += 1
        if n["calls"] == 3:
            raise KeyboardInterrupt
        return nn.functional.l1_loss(out, y)

    with pytest.raises(KeyboardInterrupt):
        perturb(lp.LandscapeProbe(model, CASES[1].loss_fn, data), opt, scale=0.1, steps=5, loss_fn=train_loss)
    assert_same_snapshot(before, snapshot(model))
    assert_same_opt(obefore, opt)


def test_save_load_and_plot(tmp_path):
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    r = perturb(probe, lambda p: torch.optim.SGD(p, lr=0.05), scale=0.3, steps=4, repeats=2, eval_every=2)
    back = PerturbationResult.load(r.save(tmp_path / "r.json"))
    for f in ("eval_steps", "losses", "train_losses", "noise_norms"):
        np.testing.assert_array_equal(getattr(back, f), getattr(r, f))
    assert back.base_loss == r.base_loss and back.settings == r.settings
    ax = r.plot(log=True)
    assert ax.get_yscale() == "log" and len(ax.lines) == 2 * 2 + 1


def test_errors():
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    sgd = lambda p: torch.optim.SGD(p, lr=0.1)                # noqa: E731
    with pytest.raises(ValueError, match="scale=-1"):
        perturb(probe, sgd, scale=-1)
    with pytest.raises(ValueError, match="steps=-1"):
        perturb(probe, sgd, steps=-1)
    with pytest.raises(ValueError, match="repeats=0"):
        perturb(probe, sgd, repeats=0)
    with pytest.raises(ValueError, match="eval_every=0"):
        perturb(probe, sgd, eval_every=0)
    with pytest.raises(TypeError, match="the class SGD"):
        perturb(probe, torch.optim.SGD)
    with pytest.raises(TypeError, match="factory params -> optimizer"):
        perturb(probe, 0.1)
    with pytest.raises(TypeError, match="returned a list"):
        perturb(probe, lambda p: list(p), steps=1)
    with pytest.raises(ValueError, match="holds no parameter of the probed model"):
        perturb(probe, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        perturb(probe, sgd, loss_fn=nn.MSELoss)
    with pytest.raises(ValueError, match="scalar tensor"):
        perturb(probe, sgd, steps=1, loss_fn=lambda out, y: (out - y) ** 2)
    with pytest.raises(ValueError, match="matched no parameter"):
        perturb(probe, sgd, subnet="nope")
    with pytest.raises(ValueError, match="yielded no batch"):
        perturb(lp.LandscapeProbe(model, CASES[0].loss_fn, []), sgd, steps=1)


def test_an_optimizers_own_generator_is_put_back():
    """SGLD draws its noise from a generator it holds: after perturb the same noise comes next."""
    model, data = CASES[0].build(dtype=torch.float64)
    opt = lp.optim.SGLD(model.parameters(), lr=0.01, beta=100.0, generator=3)
    before = opt.state_dict()["generator"].clone()
    perturb(lp.LandscapeProbe(model, CASES[0].loss_fn, data), opt, scale=0.2, steps=3, repeats=1)
    assert torch.equal(opt.state_dict()["generator"], before)

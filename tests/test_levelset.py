"""level_set(): Dynamic String Sampling (Freeman & Bruna 2017) on problems with known answers."""

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import CASES, assert_same_snapshot, perturbed, snapshot
from landprobe.probes import toys
from landprobe.probes.curves.levelset import LevelSet, level_set


def probe_of(problem, **kw):
    return lp.LandscapeProbe(problem["model"], problem["loss_fn"], problem["data"], **kw)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("frac", [0.3, 0.1])
def test_deep_linear_minima_are_connected_above_the_minimum(seed, frac):
    # Freeman & Bruna Thm 2.3: deep linear nets (widths >= min(in, out)) have connected level sets.
    p = toys.deep_linear(seed=seed)
    probe = probe_of(p)
    line = probe.interpolate(p["a"], p["b"], points=51)
    assert line.loss_a == pytest.approx(p["minimum"], rel=1e-12)
    assert line.loss_b == pytest.approx(p["minimum"], rel=1e-12)
    threshold = p["minimum"] + frac * (line.losses.max() - p["minimum"])   # the segment leaves the level set
    r = level_set(probe, p["a"], p["b"], threshold=threshold, steps=300, lr=0.2)
    assert r.connected and r.reason == ""
    assert len(r.beads) >= 3 and r.max_loss <= threshold
    assert np.all(r.bead_losses[1:-1] <= r.settings["target"])
    assert r.normalized_length >= 1.0
    for bead, loss in zip(r.beads, r.bead_losses):                  # reported bead losses are the probe's
        assert loss == pytest.approx(probe.loss(bead), rel=1e-12)
    d = [(r.beads[i + 1].subset(["0.weight", "1.weight"]) - r.beads[i].subset(["0.weight", "1.weight"])).norm()
         for i in range(len(r.beads) - 1)]
    assert r.length == pytest.approx(sum(d), rel=1e-12)
    np.testing.assert_allclose(r.bead_ts, np.concatenate([[0], np.cumsum(d)]) / sum(d), rtol=1e-12)


@pytest.mark.parametrize("threshold", [0.3, 0.45])
def test_two_unit_relu_is_not_connected_below_its_barrier(threshold):
    p = toys.two_unit_relu()
    probe = probe_of(p)
    r = level_set(probe, p["a"], p["b"], threshold=threshold, steps=100, lr=0.1)
    assert not r.connected
    assert "descent from the midpoint" in r.reason
    assert r.loss_a == 0.0 and r.loss_b == 0.0
    assert r.max_loss > threshold


def test_two_unit_relu_is_connected_well_above_its_barrier():
    p = toys.two_unit_relu()
    r = level_set(probe_of(p), p["a"], p["b"], threshold=0.75, steps=100, lr=0.1)
    assert r.connected and r.max_loss <= 0.75 and r.max_loss > p["barrier"]


def test_identical_models_give_a_zero_length_path():
    case = CASES[0]
    model, data = case.build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    a = perturbed(model, 1)
    la = probe.loss(a)
    r = level_set(probe, a, dict(a), threshold=la)
    assert r.connected and r.length == 0.0 and np.isnan(r.normalized_length)
    assert np.all(r.losses == la) and len(r.beads) == 2


def test_budgets_end_the_search_with_a_reason():
    p = toys.deep_linear(seed=0)
    probe = probe_of(p)
    line = probe.interpolate(p["a"], p["b"], points=51)
    threshold = p["minimum"] + 0.1 * (line.losses.max() - p["minimum"])
    r = level_set(probe, p["a"], p["b"], threshold=threshold, steps=300, lr=0.2, max_beads=2)
    assert not r.connected and "max_beads=2" in r.reason
    r = level_set(probe, p["a"], p["b"], threshold=threshold, steps=300, lr=0.2, max_depth=1)
    assert not r.connected and "max_depth=1" in r.reason
    r = level_set(probe, p["a"], p["b"], threshold=threshold, steps=1, lr=1e-6, check_every=1)
    assert not r.connected and "after 1 steps" in r.reason


def test_level_set_restores_the_model_and_json_round_trip(tmp_path):
    case = CASES[1]                                              # conv + BatchNorm
    model, data = case.build(dtype=torch.float64)
    model.train()
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    a, b = perturbed(model, 1, 0.3), perturbed(model, 2, 0.3)
    before = snapshot(model)
    threshold = max(probe.loss(a), probe.loss(b)) + 0.01
    r = level_set(probe, a, b, threshold=threshold, steps=20, lr=0.05, check_every=5, max_beads=4)
    assert_same_snapshot(before, snapshot(model))
    assert r.losses[0] == probe.loss(a) and r.losses[-1] == probe.loss(b)
    back = LevelSet.load(r.save(tmp_path / "ls.json"))
    assert back.connected == r.connected and back.reason == r.reason and back.beads is None
    np.testing.assert_array_equal(back.losses, r.losses)
    assert r.plot().get_xlabel() == "position along the string"


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("after", [2, 12, 30])
def test_interrupted_level_set_restores_the_model(exc, after):
    case = CASES[0]
    model, data = case.build(dtype=torch.float64)
    a, b = perturbed(model, 1, 1.0), perturbed(model, 2, 1.0)
    before = snapshot(model)
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc()
        torch.rand(1)
        return nn.functional.mse_loss(out, y)

    probe = lp.LandscapeProbe(model, loss_fn, data)
    with pytest.raises(exc):
        level_set(probe, a, b, threshold=5.0, steps=50, lr=0.01)
    assert_same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=-0.1), "the loss at a is 0 > threshold=-0.1"),
    (dict(threshold=float("nan")), "threshold=nan"),
    (dict(steps=0), "steps=0"),
    (dict(lr=-1.0), "lr=-1.0"),
    (dict(optimizer="rmsprop"), "optimizer='rmsprop'"),
    (dict(margin=1.0), "margin=1.0"),
    (dict(pull=-1.0), "pull=-1.0"),
    (dict(check_points=0), "check_points=0"),
    (dict(check_every=0), "check_every=0"),
    (dict(max_beads=1), "max_beads=1"),
    (dict(max_depth=0), "max_depth=0"),
])
def test_bad_arguments_raise(kwargs, match):
    p = toys.two_unit_relu()
    probe = probe_of(p)
    kwargs = {"threshold": 3.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        level_set(probe, p["a"], p["b"], **kwargs)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pull_keeps_the_new_bead_near_the_midpoint(optimizer):
    p = toys.deep_linear(seed=0)
    probe = probe_of(p)
    line = probe.interpolate(p["a"], p["b"], points=51)
    threshold = p["minimum"] + 0.3 * (line.losses.max() - p["minimum"])
    lr = 0.2 if optimizer == "sgd" else 0.01
    free = level_set(probe, p["a"], p["b"], threshold=threshold, steps=300, lr=lr, optimizer=optimizer)
    held = level_set(probe, p["a"], p["b"], threshold=threshold, steps=300, lr=lr, optimizer=optimizer, pull=0.2)
    assert free.connected and held.connected
    a, b = free.beads[0], free.beads[-1]
    mid = a.lerp(b, 0.5)
    # the first descent starts at the midpoint of a and b; its bead is the one whose halves came next
    d_free = min((bd - mid).norm() for bd in free.beads[1:-1])
    d_held = min((bd - mid).norm() for bd in held.beads[1:-1])
    assert 0 < d_held < d_free


def test_a_diverging_descent_is_an_error_not_a_verdict(tmp_path):
    p = toys.two_unit_relu()
    probe = probe_of(p)
    before = snapshot(p["model"])
    with pytest.raises(lp.probes.FitDivergedError) as info:
        level_set(probe, p["a"], p["b"], threshold=0.3, steps=100, lr=1e30, checkpoint=tmp_path / "ls.pt")
    msg = str(info.value)
    assert "level_set" in msg and "at step 3 of 100 of descent 1" in msg and "lr=1e+30" in msg
    assert "no checkpoint was written yet" in msg and "ls.pt" in msg
    assert_same_snapshot(before, snapshot(p["model"]))

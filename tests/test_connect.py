"""connect(): Bezier and polychain curves between minima (Garipov et al. 2018), the Path result."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import CASES, assert_same_snapshot, perturbed, snapshot
from landprobe.probes import toys
from landprobe.probes.curves import Path, connect


@pytest.fixture(scope="module")
def valley():
    v = toys.CurvyValley()
    return toys.toy_probe(v), *v.minima()


def by_hand(points, coeffs):
    """θ(t) = Σ c_i P_i, summed in plain float64 Python-side order."""
    out = {}
    for n in points[0]:
        out[n] = sum(c * points[i][n] for i, c in coeffs)
    return out


def test_straight_line_of_curvy_valley_peaks_at_2977(valley):
    probe, a, b = valley
    curve = probe.interpolate(a, b, points=2001)
    x0 = 5 * math.pi / 2                                # E on y = x/x0: (x/x0 − sin x)² + (x²/x0² − 1)²
    xs = np.linspace(-x0, x0, 2001)
    expected = ((xs / x0 - np.sin(xs)) ** 2 + (xs**2 / x0**2 - 1) ** 2).max()
    assert curve.barrier == pytest.approx(expected, rel=1e-9)
    assert curve.barrier == pytest.approx(2.9767, abs=1e-4)


def test_polychain_with_eight_bends_finds_the_saddle_of_curvy_valley(valley):
    probe, a, b = valley
    path = connect(probe, a, b, method="polychain", bends=8, steps=1000, lr=0.01)
    assert path.max_loss == pytest.approx(1.0, rel=0.01)       # the minimum-energy path's saddle
    assert path.barrier == pytest.approx(path.max_loss)        # endpoints at E = 0
    assert path.length > (a["location"] - b["location"]).norm().item()


@pytest.mark.parametrize("method, bends", [("polychain", 2), ("bezier", 2), ("bezier", 5)])
def test_few_bends_or_bezier_stay_far_above_the_saddle(valley, method, bends):
    # Documented in docs/probes_geometry.md: a Bezier curve (any of bends 1..8 tried) and a polychain
    # with up to 3 bends cannot follow the sine valley; they cut across it.
    probe, a, b = valley
    path = connect(probe, a, b, method=method, bends=bends, steps=300, lr=0.01)
    assert 1.5 < path.max_loss < 2.977


@pytest.mark.parametrize("method", ["bezier", "polychain"])
def test_losses_equal_probe_loss_at_the_curve_by_hand(method):
    case = CASES[0]
    model, data = case.build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    a, b = perturbed(model, 1), perturbed(model, 2)
    path = connect(probe, a, b, method=method, bends=2, steps=20, lr=0.05, points=5)
    pts = [p.state_dict() for p in path.points]
    assert path.losses[0] == probe.loss(a) and path.losses[-1] == probe.loss(b)
    assert path.loss_a == probe.loss(a) and path.loss_b == probe.loss(b)
    for t, loss in zip(path.ts, path.losses):
        if method == "bezier":
            coeffs = [(i, math.comb(3, i) * t**i * (1 - t) ** (3 - i)) for i in range(4)]
        else:
            k = min(int(t * 3), 2)
            s = t * 3 - k
            coeffs = [(k, 1 - s), (k + 1, s)]
        assert loss == pytest.approx(probe.loss(by_hand(pts, coeffs)), rel=1e-10, abs=1e-12)
    if method == "polychain":
        np.testing.assert_allclose(path.knots, [0, 1 / 3, 2 / 3, 1])
        np.testing.assert_allclose(path.knot_losses, [probe.loss(p) for p in pts], rtol=1e-12)


def test_training_lowers_the_mean_loss_and_steps_zero_is_the_segment():
    case = CASES[0]
    model, data = case.build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    a, b = perturbed(model, 1, 1.0), perturbed(model, 2, 1.0)
    seg = connect(probe, a, b, method="polychain", bends=1, steps=0, points=11)
    line = probe.interpolate(a, b, points=11)
    np.testing.assert_allclose(seg.losses, line.losses, rtol=1e-12)
    fit = connect(probe, a, b, method="bezier", bends=1, steps=200, lr=0.05, points=11)
    assert fit.losses.mean() < 0.8 * line.losses.mean()
    tl = fit.settings["train_losses"]
    assert len(tl) == 200 and np.mean(tl[-20:]) < np.mean(tl[:20])


@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_batchnorm_model_endpoints_and_restoration(bn):
    case = CASES[1]                                            # conv + BatchNorm
    model, data = case.build(dtype=torch.float64)
    model.train()
    probe = lp.LandscapeProbe(model, case.loss_fn, data, bn=bn)
    a, b = perturbed(model, 1), perturbed(model, 2)
    before = snapshot(model)
    path = connect(probe, a, b, method="bezier", bends=1, steps=5, lr=0.01, points=4)
    assert_same_snapshot(before, snapshot(model))
    assert path.losses[0] == probe.loss(a) and path.losses[-1] == probe.loss(b)


def test_identical_endpoints_give_a_zero_length_path():
    case = CASES[0]
    model, data = case.build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    a = perturbed(model, 1)
    path = connect(probe, a, dict(a), method="bezier", bends=2, steps=50)
    assert path.length == 0.0 and path.barrier < 1e-12         # chord rounding only
    assert np.all(path.losses == probe.loss(a)) and path.settings["train_losses"] == []


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("after", [0, 4, 15])                 # in training, late training, evaluation
def test_interrupted_connect_restores_the_model(exc, after):
    case = CASES[1]
    model, data = case.build(dtype=torch.float64)
    a, b = perturbed(model, 1), perturbed(model, 2)
    before = snapshot(model)
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc()
        torch.rand(1)
        return nn.functional.l1_loss(out, y)

    probe = lp.LandscapeProbe(model, loss_fn, data, bn="recompute")
    with pytest.raises(exc):
        connect(probe, a, b, method="polychain", bends=1, steps=10, points=5)
    assert calls["n"] == after + 1
    assert_same_snapshot(before, snapshot(model))


def test_training_goes_through_functional_call_not_the_model():
    case = CASES[0]
    model, data = case.build(dtype=torch.float64)
    originals = [(p, p.detach().clone()) for p in model.parameters()]
    seen = {"train": 0}

    def loss_fn(out, y):
        if torch.is_grad_enabled():                            # a training step
            seen["train"] += 1
            assert out.requires_grad
            for p, v in originals:
                assert torch.equal(p, v)                       # the model's own tensors are untouched
        return nn.functional.mse_loss(out, y)

    probe = lp.LandscapeProbe(model, loss_fn, data)
    connect(probe, perturbed(model, 1), perturbed(model, 2), method="bezier", steps=6, t_samples=2, points=3)
    assert seen["train"] == 12
    assert all(p.grad is None for p in model.parameters())


def test_seeded_and_rng_neutral(valley):
    probe, a, b = valley
    state = torch.get_rng_state()
    p1 = connect(probe, a, b, method="polychain", bends=3, steps=30, optimizer="adam", lr=0.05, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    p2 = connect(probe, a, b, method="polychain", bends=3, steps=30, optimizer="adam", lr=0.05, seed=3)
    p3 = connect(probe, a, b, method="polychain", bends=3, steps=30, optimizer="adam", lr=0.05, seed=4)
    np.testing.assert_array_equal(p1.losses, p2.losses)
    assert not np.array_equal(p1.losses, p3.losses)


def test_json_round_trip_and_points(tmp_path, valley):
    probe, a, b = valley
    path = connect(probe, a, b, method="polychain", bends=2, steps=5, points=7)
    f = path.save(tmp_path / "path.json")
    back = Path.load(f)
    np.testing.assert_array_equal(back.losses, path.losses)
    np.testing.assert_array_equal(back.knots, path.knots)
    assert back.barrier == path.barrier and back.method == "polychain" and back.points is None
    saved = torch.load(path.save_points(tmp_path / "pts.pt"), weights_only=True)
    assert len(saved) == 4 and torch.equal(saved[0]["location"], a["location"])
    with pytest.raises(ValueError, match="holds no points"):
        back.save_points(tmp_path / "x.pt")
    assert path.plot().get_xlabel() == "t"


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="spline"), "method='spline'"),
    (dict(bends=0), "bends=0"),
    (dict(steps=-1), "steps=-1"),
    (dict(t_samples=0), "t_samples=0"),
    (dict(points=1), "points=1"),
    (dict(lr=0.0), "lr=0.0"),
    (dict(optimizer="lbfgs"), "optimizer='lbfgs'"),
])
def test_bad_arguments_raise(valley, kwargs, match):
    probe, a, b = valley
    with pytest.raises(ValueError, match=match):
        connect(probe, a, b, **kwargs)


def test_neb_keywords_need_method_neb(valley):
    probe, a, b = valley
    with pytest.raises(TypeError, match="pass method='neb'"):
        connect(probe, a, b, method="bezier", spring=1.0)


def test_endpoint_of_another_model_raises(valley):
    probe, a, _ = valley
    with pytest.raises(ValueError, match="lacks 1 parameter"):
        connect(probe, a, {"weight": torch.zeros(2)})


@pytest.mark.parametrize("method", ["bezier", "polychain"])
def test_a_diverging_fit_raises_naming_step_lr_and_restores_the_model(method):
    valley = toys.CurvyValley()
    probe = toys.toy_probe(valley)
    a, b = valley.minima()
    before = snapshot(probe.model)
    with pytest.raises(lp.probes.FitDivergedError) as info:
        connect(probe, a, b, method=method, steps=20, lr=1e30)
    msg = str(info.value)
    assert isinstance(info.value, FloatingPointError)
    assert f"connect ({method})" in msg and "at step 3 of 20" in msg and "lr=1e+30" in msg
    assert "no checkpoint was written (pass checkpoint=...)" in msg
    assert info.value.step == 3 and info.value.lr == 1e30 and info.value.checkpoint is None
    assert_same_snapshot(before, snapshot(probe.model))


def test_a_diverging_fit_names_the_last_checkpoint_kept(tmp_path):
    valley = toys.CurvyValley()
    probe = toys.toy_probe(valley)
    a, b = valley.minima()
    before = snapshot(probe.model)
    ck = tmp_path / "fit.pt"
    with pytest.raises(lp.probes.FitDivergedError) as info:
        connect(probe, a, b, method="polychain", steps=200, lr=1e30, checkpoint=ck, checkpoint_every=2)
    msg = str(info.value)
    assert "at step 3 of 200" in msg and f"the last checkpoint kept is {str(ck)!r} (step 2)" in msg
    assert info.value.kept == "step 2" and torch.load(ck, weights_only=True)["step"] == 2
    assert_same_snapshot(before, snapshot(probe.model))

"""AutoNEB (Draxler et al. 2018) on the analytic test functions of its paper, and on small networks."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import CASES, assert_same_snapshot, perturbed, snapshot
from landprobe.probes import toys
from landprobe.probes.curves.connect import connect
from landprobe.probes.curves.neb import NebCycle, auto_neb, paper_schedule

# A short version of the paper's schedule: insertion cycles, then climbing cycles at a lower rate.
QUICK = ([dict(steps=10, lr=0.02, insert=3)] + [dict(steps=10, lr=0.02, insert=4)] * 3
         + [dict(steps=10, lr=0.002, climbing=True)] * 3)


def loc(*xy):
    return {"location": torch.tensor(xy, dtype=torch.float64)}


@pytest.fixture(scope="module")
def valley():
    v = toys.CurvyValley()
    return toys.toy_probe(v), *v.minima()


@pytest.mark.parametrize("spring", [math.inf, 1.0])
def test_curvy_valley_saddle_within_two_percent(valley, spring):
    probe, a, b = valley
    straight = probe.interpolate(a, b, points=401)
    assert straight.barrier == pytest.approx(2.977, abs=1e-3)
    path = auto_neb(probe, a, b, schedule=QUICK, spring=spring)
    assert path.max_loss == pytest.approx(1.0, rel=0.02)          # the saddle (0, 0), E = 1 exactly
    assert path.knot_losses.max() == pytest.approx(1.0, rel=1e-3)  # the climbing image sits on it
    assert path.method == "neb" and len(path.knots) == 2 + 3 + 3 * 4


def test_eggcarton_barrier_two_and_flat_zero():
    egg = toys.Eggcarton()
    probe = toys.toy_probe(egg)
    a, b = egg.minima()                                            # neighbours: the segment is the MEP
    assert auto_neb(probe, a, b, schedule=QUICK).barrier == pytest.approx(2.0, abs=1e-9)
    a, b = loc(0.5, 0.5), loc(1.5, 2.5)                            # the segment crosses two ridges
    assert probe.interpolate(a, b, points=201).barrier > 3.1
    assert auto_neb(probe, a, b, schedule=QUICK).barrier == pytest.approx(2.0, rel=0.02)
    flat = toys.Flat()
    fp = toys.toy_probe(flat)
    path = auto_neb(fp, *flat.minima(), schedule=QUICK[:2])
    assert path.barrier == 0.0 and path.max_loss == 0.0


def test_images_are_knots_and_losses_match_probe_loss(valley):
    probe, a, b = valley
    path = auto_neb(probe, a, b, schedule=QUICK[:3], sub_points=3, points=5)
    assert path.losses[0] == probe.loss(a) and path.losses[-1] == probe.loss(b)
    images = [p.state_dict() for p in path.points]
    assert len(images) == len(path.knots)
    np.testing.assert_allclose(path.knot_losses, [probe.loss(im) for im in images], rtol=1e-12)
    for k in path.knots:                                          # every image is on the grid
        assert np.min(np.abs(path.ts - k)) == 0.0
    d = np.array([(images[i + 1]["location"] - images[i]["location"]).norm().item() for i in range(len(images) - 1)])
    np.testing.assert_allclose(np.diff(path.knots), d / d.sum(), rtol=1e-9)
    assert path.length == pytest.approx(d.sum(), rel=1e-9)
    j = len(images) // 2                                           # a point between images, by hand
    t = 0.5 * (path.knots[j] + path.knots[j + 1])
    i = int(np.argmin(np.abs(path.ts - t)))
    if abs(path.ts[i] - t) < 1e-12:
        mid = {"location": 0.5 * (images[j]["location"] + images[j + 1]["location"])}
        assert path.losses[i] == pytest.approx(probe.loss(mid), rel=1e-9)


def test_connect_method_neb_is_auto_neb(valley):
    probe, a, b = valley
    p1 = connect(probe, a, b, method="neb", schedule=QUICK[:2])
    p2 = auto_neb(probe, a, b, schedule=QUICK[:2])
    np.testing.assert_array_equal(p1.losses, p2.losses)
    assert p1.settings["schedule"][0]["images"] == 5


def test_paper_schedule():
    s = paper_schedule(steps=1000, lr=0.1)
    assert [c["steps"] for c in s] == [1000] * 4 + [2000] * 2 + [1000] * 8
    assert [c["lr"] for c in s] == [0.1] * 6 + [0.01] * 4 + [0.001] * 4
    assert [c["insert"] for c in s] == [3, 2, 2, 2] + [0] * 10
    assert [c["climbing"] for c in s] == [False] * 4 + [True] * 10


def test_network_band_descends_and_restores_the_model():
    case = CASES[0]
    model, data = case.build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    a, b = perturbed(model, 1, 1.0), perturbed(model, 2, 1.0)
    before = snapshot(model)
    sched = [dict(steps=15, lr=0.05, insert=3), dict(steps=15, lr=0.05, insert=2)]
    path = auto_neb(probe, a, b, schedule=sched, sub_points=2)
    assert_same_snapshot(before, snapshot(model))
    line = probe.interpolate(a, b, points=21)
    assert path.losses.mean() < 0.5 * line.losses.mean()           # the images descended into the valley
    assert path.knot_losses[1:-1].max() < line.losses.min()
    assert path.losses[0] == probe.loss(a) and path.losses[-1] == probe.loss(b)


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("after", [0, 7, 25])
def test_interrupted_neb_restores_the_model(exc, after):
    case = CASES[1]
    model, data = case.build(dtype=torch.float64)
    a, b = perturbed(model, 1), perturbed(model, 2)
    before = snapshot(model)
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc()
        return nn.functional.l1_loss(out, y)

    probe = lp.LandscapeProbe(model, loss_fn, data, bn="recompute")
    with pytest.raises(exc):
        auto_neb(probe, a, b, schedule=[dict(steps=3, lr=0.01, insert=2), dict(steps=3, lr=0.01, insert=1)])
    assert_same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule=[]), "schedule=\\[\\]"),
    (dict(schedule=[dict(steps=3)]), "needs 'steps' and 'lr'"),
    (dict(schedule=[dict(steps=3, lr=0.1, climb=True)]), r"unknown keys \['climb'\]"),
    (dict(schedule=[dict(steps=-1, lr=0.1)]), "steps'\\]=-1"),
    (dict(schedule=[dict(steps=1, lr=-0.1)]), "lr'\\]=-0.1"),
    (dict(schedule=[dict(steps=1, lr=0.1, insert=-2)]), "insert'\\]=-2"),
    (dict(images=0), "images=0"),
    (dict(spring=0.0), "spring=0.0"),
    (dict(sub_points=0), "sub_points=0"),
    (dict(points=1), "points=1"),
])
def test_bad_arguments_raise(valley, kwargs, match):
    probe, a, b = valley
    with pytest.raises(ValueError, match=match):
        auto_neb(probe, a, b, **kwargs)


def test_a_cycle_of_another_type_is_a_type_error(valley):
    probe, a, b = valley
    with pytest.raises(TypeError, match=r"schedule\[0\] is a tuple; expected a NebCycle or a dict"):
        auto_neb(probe, a, b, schedule=[(3, 0.1)])


def test_nebcycles_and_dicts_give_the_same_path(valley):
    probe, a, b = valley
    cycles = [NebCycle(**c) for c in QUICK[:3]]
    p1 = auto_neb(probe, a, b, schedule=cycles)
    p2 = auto_neb(probe, a, b, schedule=QUICK[:3])
    np.testing.assert_array_equal(p1.losses, p2.losses)
    assert p1.settings["schedule"] == p2.settings["schedule"]


def test_a_diverging_cycle_raises_naming_cycle_step_lr_and_checkpoint(tmp_path):
    valley = toys.CurvyValley()
    probe = toys.toy_probe(valley)
    a, b = valley.minima()
    before = snapshot(probe.model)
    ck = tmp_path / "neb.pt"
    schedule = [dict(steps=3, lr=0.001, insert=3), dict(steps=10, lr=1e30, insert=1)]
    with pytest.raises(lp.probes.FitDivergedError) as info:
        auto_neb(probe, a, b, schedule=schedule, checkpoint=ck)
    msg = str(info.value)
    assert "auto_neb" in msg and "at step 3 of 10 of cycle 2 of 2" in msg and "lr=1e+30" in msg
    assert f"the last checkpoint kept is {str(ck)!r} (after cycle 1 of 2)" in msg
    assert_same_snapshot(before, snapshot(probe.model))
    with pytest.raises(FloatingPointError, match=r"no checkpoint was written \(pass checkpoint=\.\.\.\)"):
        connect(probe, a, b, method="neb", schedule=[dict(steps=10, lr=1e30, insert=3)])
    assert_same_snapshot(before, snapshot(probe.model))


# ---------------------------------------------------------------- one call for all images, or one each
def conv_problem():
    """A float64 conv net of more than band.SMALL numbers (so the default measures both ways)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 24, 3), nn.Tanh(), nn.Conv2d(24, 24, 3), nn.Flatten(),
                          nn.Linear(24 * 2 * 2, 3)).double()
    data = [(torch.randn(6, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (6,)))]
    probe = lp.LandscapeProbe(model, nn.CrossEntropyLoss(), data, progress=False)
    a, b = perturbed(model, 1, 0.5), perturbed(model, 2, 0.5)
    assert sum(p.numel() for p in model.parameters()) > lp.probes.curves.band.SMALL
    return probe, a, b


SHORT = [dict(steps=6, lr=0.05, insert=3), dict(steps=4, lr=0.05, insert=1, climbing=True)]


def test_batched_and_per_image_bands_agree_and_are_recorded():
    probe, a, b = conv_problem()
    paths = {way: auto_neb(probe, a, b, schedule=SHORT, sub_points=2, batch_images=way) for way in (True, False, None)}
    assert paths[True].settings["batch_images"] is True and paths[False].settings["batch_images"] is False
    assert paths[None].settings["batch_images"] in (True, False)         # measured on the first step
    for way in (False, None):
        np.testing.assert_allclose(paths[way].losses, paths[True].losses, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(paths[way].knots, paths[True].knots, rtol=1e-10, atol=1e-12)
    assert paths[True].losses[1:-1].max() < probe.interpolate(a, b, points=9).losses.max()


def test_small_images_share_a_call_without_measuring(valley, monkeypatch):
    from landprobe.probes.curves import neb

    def never(*args):
        raise AssertionError("a band of small images measured both ways")
    monkeypatch.setattr(neb, "_batching_pays", never)
    path = auto_neb(*valley, schedule=QUICK[:2])
    assert path.settings["batch_images"] is True


def test_the_measured_choice_is_made_once_and_kept_by_the_checkpoint(tmp_path, monkeypatch):
    from landprobe.probes.curves import neb
    calls = []

    def slower(*args):
        calls.append(1)
        return False
    monkeypatch.setattr(neb, "_batching_pays", slower)
    probe, a, b = conv_problem()
    ck = tmp_path / "neb.pt"
    first = auto_neb(probe, a, b, schedule=SHORT[:1], sub_points=2, checkpoint=ck)
    assert calls == [1] and first.settings["batch_images"] is False
    assert torch.load(ck, weights_only=True)["batch_images"] is False
    monkeypatch.setattr(neb, "_batching_pays", lambda *args: pytest.fail("measured again after a resume"))
    ck2 = tmp_path / "neb2.pt"
    state = torch.load(ck, weights_only=True)
    state["fingerprint"]["schedule"] = [dict(c, climbing=bool(c.get("climbing", False))) for c in SHORT]
    torch.save(state, ck2)                                # as if the longer run stopped after its first cycle
    resumed = auto_neb(probe, a, b, schedule=SHORT, sub_points=2, checkpoint=ck2)
    assert resumed.settings["resumed_at_cycle"] == 1 and resumed.settings["batch_images"] is False


def test_batch_images_must_be_a_bool_or_none(valley):
    with pytest.raises(TypeError, match="batch_images='yes'"):
        auto_neb(*valley, schedule=QUICK[:1], batch_images="yes")


def test_small_parameters_share_one_matrix_and_step_as_apart(monkeypatch):
    import importlib

    neb = importlib.import_module("landprobe.probes.curves.neb")
    stacks = [torch.zeros(3, 20_000), torch.zeros(3, 10), torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, 7)]
    # the small float32 ones together, the float64 one and the large one alone
    assert neb._groups(stacks) == [[1, 3], [2], [0]]
    probe, a, b = conv_problem()                   # six float64 parameters, each small, together large
    stacks = [torch.zeros(3, *p.shape, dtype=p.dtype) for p in probe.engine.model.parameters()]
    assert neb._groups(stacks) == [list(range(6))]
    shared = auto_neb(probe, a, b, schedule=SHORT, sub_points=2, batch_images=False)
    monkeypatch.setattr(neb, "_SHARED", 0)
    assert neb._groups(stacks) == [[i] for i in range(6)]
    apart = auto_neb(probe, a, b, schedule=SHORT, sub_points=2, batch_images=False)
    np.testing.assert_allclose(shared.losses, apart.losses, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(shared.knots, apart.knots, rtol=1e-10, atol=1e-12)
    for x, y in zip(shared.points, apart.points):
        for t, u in zip(x.tensors, y.tensors):
            assert t.is_contiguous()
            torch.testing.assert_close(t, u, rtol=1e-10, atol=1e-12)

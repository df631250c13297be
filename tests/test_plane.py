"""plane(): grid values against a float64 brute force, Li et al.'s invariance, three-model planes, errors."""

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import CASES, MLP, assert_same_snapshot, perturbed, snapshot
from landprobe.probes.plane import Surface, grid_axis, plane


def case_id(c):
    return c.name


def brute_force_loss(make_model, state, data, loss_fn):
    model = make_model().to(next(iter(state.values())).dtype)
    model.load_state_dict(state)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in data:
            total += float(loss_fn(model(x), y)) * len(x)
            count += len(x)
    return total / count


def li_directions(model, center, seed, one_d="zero"):
    """Independent re-implementation of the random filter-normalised directions."""
    names = [n for n, _ in model.named_parameters()]
    seeds = np.random.SeedSequence(seed).generate_state(2)
    out = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        d = {}
        for n in names:
            w = center[n]
            r = torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.dtype)
            if w.dim() <= 1:
                r = torch.zeros_like(r) if one_d == "zero" else r
            else:
                for i in range(w.shape[0]):
                    r[i] = r[i] * (w[i].norm() / (r[i].norm() + 1e-12))
            d[n] = r
        out.append(d)
    return out


def state_at(center, d1, d2, x, y):
    return {k: (v + x * d1[k] + y * d2[k]) if k in d1 else v.clone() for k, v in center.items()}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_grid_value_equals_float64_brute_force(case):
    model, data = case.build(dtype=torch.float64)
    center = perturbed(model, 3, scale=0.2)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    s = plane(probe, center, span=0.6, points=(3, 4), seed=5)
    d1, d2 = li_directions(model, center, 5)
    assert s.losses.shape == (4, 3)
    for i, y in enumerate(s.ys):
        for j, x in enumerate(s.xs):
            expected = brute_force_loss(case.make_model, state_at(center, d1, d2, x, y), data, case.loss_fn)
            assert s.losses[i, j] == pytest.approx(expected, rel=1e-10, abs=1e-12), (i, j)
    np.testing.assert_allclose(s.settings["direction_norms"],
                               [math.sqrt(sum(float((v**2).sum()) for v in d.values())) for d in (d1, d2)], rtol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_center_value_is_probe_loss_and_model_restored(case):
    model, data = case.build()
    center = perturbed(model, 1, scale=0.1)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    before = snapshot(model)
    s = plane(probe, center, points=3)
    assert_same_snapshot(before, snapshot(model))
    assert s.center_loss == probe.loss(center)
    assert s.at(0.0, 0.0) == s.center_loss
    assert s.losses[1, 1] == probe.loss(center)


def test_odd_steps_put_center_exactly_at_zero_and_even_steps_measure_it_anyway():
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    s = plane(probe, points=7, span=0.3)
    assert s.xs[3] == 0.0 and s.ys[3] == 0.0
    assert s.xs[0] == -0.3 and s.xs[-1] == 0.3
    assert s.center_loss == probe.loss() == s.losses[3, 3]
    e = plane(probe, points=4, span=0.3)
    assert 0.0 not in e.xs
    assert e.center_loss == probe.loss()
    assert grid_axis(-1.0, 2.0, 4).tolist() == [-1.0, 0.0, 1.0, 2.0]


def test_span_ranges_give_explicit_coordinates():
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    s = plane(probe, span=((-1.0, 0.5), (0.0, 2.0)), points=(4, 3))
    np.testing.assert_array_equal(s.xs, np.linspace(-1.0, 0.5, 4))
    np.testing.assert_array_equal(s.ys, [0.0, 1.0, 2.0])
    assert s.losses.shape == (3, 4)


class BiasFreeReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 8, bias=False)
        self.l2 = nn.Linear(8, 8, bias=False)
        self.l3 = nn.Linear(8, 2, bias=False)

    def forward(self, x):
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def test_filter_normalised_surface_is_invariant_to_relu_rescaling_raw_is_not():
    torch.manual_seed(0)
    model = BiasFreeReLU().double()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64))]
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    c = 5.0
    scaled = dict(sd, **{"l1.weight": sd["l1.weight"] * c, "l2.weight": sd["l2.weight"] / c})
    assert probe.loss(scaled) == pytest.approx(probe.loss(sd), rel=1e-12)      # same function
    f0 = plane(probe, sd, span=1.0, points=5, normalization="filter", seed=2)
    f1 = plane(probe, scaled, span=1.0, points=5, normalization="filter", seed=2)
    np.testing.assert_allclose(f1.losses, f0.losses, rtol=1e-9)
    r0 = plane(probe, sd, span=1.0, points=5, normalization=None, seed=2)
    r1 = plane(probe, scaled, span=1.0, points=5, normalization=None, seed=2)
    assert np.max(np.abs(r1.losses - r0.losses) / r0.losses) > 0.1
    assert r0.settings["normalization"] is None and f0.settings["normalization"] == "filter"


def test_directions_reproducible_under_seed_and_global_rng_untouched():
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    torch.manual_seed(11)
    np.random.seed(3)
    random.seed(4)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    a = plane(probe, points=3, seed=7)
    assert torch.equal(states[0], torch.get_rng_state())
    assert np.array_equal(states[1], np.random.get_state()[1]) and states[2] == random.getstate()
    torch.manual_seed(99)
    b = plane(probe, points=3, seed=7)
    c = plane(probe, points=3, seed=8)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert not np.array_equal(a.losses, c.losses)


class WithSpare(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(3, 2)
        self.spare = nn.Linear(3, 3)        # never called

    def forward(self, x):
        return self.used(x)


def test_subnet_moves_only_the_subnet():
    torch.manual_seed(0)
    model = WithSpare().double()
    data = [(torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))]
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data)
    s = plane(probe, points=3, subnet="spare")           # moving only unused weights changes nothing
    np.testing.assert_array_equal(s.losses, np.full((3, 3), probe.loss()))
    assert s.settings["subnet"] == "spare"
    # given directions nonzero everywhere, masked to the subnet: brute force moves only 'used.weight'
    d1 = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    d2 = {k: torch.linspace(-1, 1, v.numel(), dtype=torch.float64).view_as(v) for k, v in model.state_dict().items()}
    t = plane(probe, directions=(d1, d2), points=3, span=0.5, subnet="used.weight")
    center = {k: v.clone() for k, v in model.state_dict().items()}
    for i, y in enumerate(t.ys):
        for j, x in enumerate(t.xs):
            st = dict(center)
            st["used.weight"] = center["used.weight"] + x * d1["used.weight"] + y * d2["used.weight"]
            assert t.losses[i, j] == pytest.approx(brute_force_loss(WithSpare, st, data, nn.MSELoss()), rel=1e-10)


def test_given_directions_used_as_given_unless_normalization_passed():
    model, data = CASES[0].build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    center = {k: v.clone() for k, v in model.state_dict().items()}
    d1, d2 = (lp.ParamVector.from_module(model).randn_like(s) for s in (1, 2))
    raw = plane(probe, directions=(d1, d2), points=3)
    assert raw.settings["normalization"] is None
    x = raw.xs[2]
    expected = brute_force_loss(MLP, state_at(center, d1, d2, x, 0.0), data, CASES[0].loss_fn)
    assert raw.losses[1, 2] == pytest.approx(expected, rel=1e-10)
    fil = plane(probe, directions=(d1, d2), points=3, normalization="filter")
    n1 = d1.clone().normalize_(lp.ParamVector.from_module(model), "filter")
    n2 = d2.clone().normalize_(lp.ParamVector.from_module(model), "filter")
    expected = brute_force_loss(MLP, state_at(center, n1, n2, x, 0.0), data, CASES[0].loss_fn)
    assert fil.losses[1, 2] == pytest.approx(expected, rel=1e-10)
    assert torch.equal(d1["fc1.bias"], lp.ParamVector.from_module(model).randn_like(1)["fc1.bias"])  # not mutated


@pytest.mark.parametrize("case", CASES[:2], ids=case_id)
def test_plane_through_three_models_puts_each_at_its_anchor(case):
    model, data = case.build(dtype=torch.float64)
    a, b, c = perturbed(model, 1), perturbed(model, 2), perturbed(model, 3)
    ma = case.make_model().double()
    ma.load_state_dict(a)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    s = plane(probe, through=(ma, b, lp.ParamVector.from_state_dict(c)), points=5)
    pn = [n for n, _ in model.named_parameters()]
    u = torch.cat([(b[n] - a[n]).reshape(-1) for n in pn])
    w = torch.cat([(c[n] - a[n]).reshape(-1) for n in pn])
    cx = float(w @ u / (u @ u))
    cy = float((w - cx * u).norm() / u.norm())
    assert s.anchors["a"] == [0.0, 0.0] and s.anchors["b"] == [1.0, 0.0]
    np.testing.assert_allclose(s.anchors["c"], [cx, cy], rtol=1e-12)
    for name, theta in zip("abc", (a, b, c)):   # BatchNorm statistics included (bn='eval')
        assert s.anchor_losses[name] == pytest.approx(probe.loss(theta), rel=1e-10, abs=1e-12), name
    assert s.center_loss == probe.loss(a)
    lo = min(0.0, cx) - 0.25
    assert s.xs[0] == pytest.approx(lo) and s.xs[-1] == pytest.approx(max(1.0, cx) + 0.25)
    assert s.ys[0] == pytest.approx(-0.25) and s.ys[-1] == pytest.approx(cy + 0.25)
    # a grid point against a brute force built by hand
    v = (w - cx * u) / cy
    i, j = 2, 3
    x, y = s.xs[j], s.ys[i]
    st, off = {}, 0
    for n in pn:
        k = a[n].numel()
        st[n] = a[n] + (x * u[off:off + k] + y * v[off:off + k]).view_as(a[n])
        off += k
    for n in a:
        if n not in st:
            if a[n].is_floating_point():
                bb = b[n] - a[n]
                st[n] = a[n] + x * bb + y * (c[n] - a[n] - cx * bb) / cy
            else:
                st[n] = a[n]
    assert s.losses[i, j] == pytest.approx(brute_force_loss(case.make_model, st, data, case.loss_fn), rel=1e-10)


def test_save_load_round_trip(tmp_path):
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    s = plane(probe, through=(perturbed(model, 1), perturbed(model, 2), perturbed(model, 3)), points=3)
    back = Surface.load(s.save(tmp_path / "s.json"))
    for f in ("xs", "ys", "losses", "stderr"):
        np.testing.assert_array_equal(getattr(back, f), getattr(s, f))
    assert back.anchors == s.anchors and back.anchor_losses == s.anchor_losses
    assert back.center_loss == s.center_loss and back.settings == s.settings


def test_plot_contour_and_surface():
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    s = plane(probe, points=5)
    ax = s.plot(levels=5)
    assert len(ax.collections) > 0 and ax.get_xlabel() == "direction 1"
    ax3 = s.plot(kind="surface", log=True)
    assert ax3.get_zlabel() == "log10 loss"
    with pytest.raises(ValueError, match="kind='bars'"):
        s.plot(kind="bars")
    with pytest.raises(ValueError, match="not a grid point"):
        s.at(0.123, 0.0)


def test_interrupted_plane_restores_model():
    model, data = CASES[0].build()
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return nn.functional.mse_loss(out, y)

    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        plane(lp.LandscapeProbe(model, loss_fn, data), perturbed(model, 1), points=3)
    assert_same_snapshot(before, snapshot(model))


def test_errors():
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    a, b, c = perturbed(model, 1), perturbed(model, 2), perturbed(model, 3)
    with pytest.raises(ValueError, match="points=1"):
        plane(probe, points=1)
    with pytest.raises(ValueError, match=r"points=\(3,\)"):
        plane(probe, points=(3,))
    with pytest.raises(ValueError, match="span=-1"):
        plane(probe, span=-1)
    with pytest.raises(ValueError, match="finite min < max"):
        plane(probe, span=((1, 0), (0, 1)))
    with pytest.raises(ValueError, match="expected a number > 0 or"):
        plane(probe, span="wide")
    with pytest.raises(ValueError, match="normalization='bogus'"):
        plane(probe, normalization="bogus")
    with pytest.raises(ValueError, match="one_d='x'"):
        plane(probe, one_d="x")
    with pytest.raises(TypeError, match="directions must be a pair"):
        plane(probe, directions=(a,))
    with pytest.raises(TypeError, match="directions\\[0\\] must be"):
        plane(probe, directions=(3.0, b))
    with pytest.raises(ValueError, match="lacks"):
        plane(probe, directions=({"fc1.weight": a["fc1.weight"]}, b))
    with pytest.raises(ValueError, match="non-finite"):
        plane(probe, directions=({k: v * float("nan") for k, v in a.items()}, b))
    with pytest.raises(ValueError, match="direction 1 is zero.*one_d='filter'"):
        plane(probe, subnet="*.bias")
    with pytest.raises(ValueError, match="either directions"):
        plane(probe, directions=(a, b), through=(a, b, c))
    with pytest.raises(ValueError, match="center must be None"):
        plane(probe, a, through=(a, b, c))
    with pytest.raises(ValueError, match="normalization='filter' with through"):
        plane(probe, through=(a, b, c), normalization="filter")
    with pytest.raises(ValueError, match="span=2.0 with through"):
        plane(probe, through=(a, b, c), span=2.0)
    with pytest.raises(ValueError, match="margin=-1"):
        plane(probe, through=(a, b, c), margin=-1)
    with pytest.raises(ValueError, match="margin=0 with span=None"):
        plane(probe, through=(a, b, c), margin=0)
    with pytest.raises(TypeError, match="triple"):
        plane(probe, through=(a, b))
    with pytest.raises(ValueError, match="a and b have the same parameters"):
        plane(probe, through=(a, a, c))
    mid = {k: (v + b[k]) / 2 if v.is_floating_point() else v for k, v in a.items()}
    with pytest.raises(ValueError, match="c lies on the line"):
        plane(probe, through=(a, b, mid))
    s = plane(probe, through=(a, b, c), span=((-0.5, 1.5), (-0.5, 1.5)), margin=0, points=3)
    assert s.xs.tolist() == [-0.5, 0.5, 1.5]


def _plane_for_ranks(calls=None):
    model, data = CASES[1].build(dtype=torch.float64)

    def loss_fn(out, y):
        if calls is not None:
            calls.append(1)
        return CASES[1].loss_fn(out, y)
    loss_fn.reduction = "mean"     # stated, so the engine's reduction check makes no extra call to count

    return plane(lp.LandscapeProbe(model, loss_fn, data), perturbed(model, 1), points=3, seed=2)


def _worker(rank, world, init_file, out_dir):
    import os
    import sys

    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(__file__))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        calls = []
        _plane_for_ranks(calls).save(os.path.join(out_dir, f"rank{rank}.json"))
        with open(os.path.join(out_dir, f"calls{rank}"), "w") as fh:
            fh.write(str(len(calls)))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_gloo_ranks_give_the_one_process_surface(tmp_path):
    import torch.multiprocessing as mp

    single = _plane_for_ranks()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = Surface.load(tmp_path / f"rank{rank}.json")
        np.testing.assert_array_equal(got.losses, single.losses)      # same points, same arithmetic
        assert got.center_loss == single.center_loss
    # 9 grid points split 5 + 4 across the ranks, 2 batches per point
    assert [int((tmp_path / f"calls{r}").read_text()) for r in range(2)] == [10, 8]


def test_a_huge_grid_is_refused_with_its_size():
    model = nn.Linear(2, 1, bias=False)
    probe = lp.LandscapeProbe(model, nn.MSELoss(), [(torch.eye(2), torch.zeros(2, 1))])
    with pytest.raises(ValueError, match=r"would evaluate 1,000,000 points \(1,000 × 1,000\).*MAX_POINTS = 100,000"):
        plane(probe, points=1000)
    with pytest.raises(ValueError, match=r"100,002 points \(2 × 50,001\).*fewer points"):
        plane(probe, points=(2, 50_001))

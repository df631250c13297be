import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import CASES, ConvBN, MLP, assert_same_snapshot, perturbed, snapshot


def case_id(c):
    return c.name


def brute_force_loss(make_model, state, data, loss_fn, bn="eval"):
    """Fresh model, state loaded by hand, plain loop: the reference."""
    model = make_model().to(next(iter(state.values())).dtype)
    model.load_state_dict(state)
    model.eval()
    if bn == "train":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    if bn == "recompute":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
                m.train()
        with torch.no_grad():
            for x, _ in data:
                model(x)
        model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in data:
            total += float(loss_fn(model(x), y)) * len(x)
            count += len(x)
    return total / count


def lerp_state(a, b, alpha):
    return {k: (a[k] + alpha * (b[k] - a[k])) if a[k].is_floating_point() else a[k] for k in a}


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("bn", ["eval", "train", "recompute"])
def test_interpolate_equals_float64_brute_force(case, bn):
    model, data = case.build(dtype=torch.float64)
    a, b = perturbed(model, 1), perturbed(model, 2)
    curve = lp.LandscapeProbe(model, case.loss_fn, data, bn=bn).interpolate(a, b, points=7)
    expected = [brute_force_loss(case.make_model, lerp_state(a, b, al), data, case.loss_fn, bn) for al in curve.alphas]
    np.testing.assert_allclose(curve.losses, expected, rtol=1e-10, atol=1e-12)
    assert curve.loss_a == pytest.approx(brute_force_loss(case.make_model, a, data, case.loss_fn, bn), rel=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_interpolate_float32_close_to_brute_force(case):
    model, data = case.build()
    a, b = perturbed(model, 1), perturbed(model, 2)
    curve = lp.LandscapeProbe(model, case.loss_fn, data).interpolate(a, b, points=5)
    expected = [brute_force_loss(case.make_model, lerp_state(a, b, al), data, case.loss_fn) for al in curve.alphas]
    np.testing.assert_allclose(curve.losses, expected, rtol=1e-6)


def test_endpoints_are_the_models_themselves_with_batchnorm():
    model, data = CASES[1].build()
    ma, mb = ConvBN(), ConvBN()
    ma.load_state_dict(perturbed(model, 1))
    mb.load_state_dict(perturbed(model, 2))
    probe = lp.LandscapeProbe(model, CASES[1].loss_fn, data)
    curve = probe.interpolate(ma, mb, points=3)
    assert curve.loss_a == probe.loss(ma) and curve.loss_b == probe.loss(mb)
    assert curve.losses[0] == curve.loss_a and curve.losses[-1] == curve.loss_b


def test_sample_weighted_mean_and_stderr():
    model = nn.Linear(1, 1, bias=False)
    data = [(torch.ones(n, 1), torch.full((n, 1), float(t))) for n, t in ((1, 0), (3, 2), (4, 1))]
    ev = lp.LandscapeProbe(model, nn.MSELoss(), data).evaluate({"weight": torch.zeros(1, 1)})
    losses, n = np.array([0.0, 4.0, 1.0]), np.array([1, 3, 4])
    mean = (n * losses).sum() / n.sum()
    w = n / n.sum()
    se = math.sqrt(3 / 2 * np.sum(w**2 * (losses - mean) ** 2))
    assert ev.loss == pytest.approx(mean, rel=1e-15) and ev.stderr == pytest.approx(se, rel=1e-12)
    one = lp.LandscapeProbe(model, nn.MSELoss(), data[:1]).evaluate()
    assert math.isnan(one.stderr)


class Quadratic(nn.Module):
    """L(theta) = 1/2 (theta - c)^T H (theta - c), returned by forward; the data is a dummy batch."""

    def __init__(self, H, c):
        super().__init__()
        self.register_buffer("H", H)
        self.register_buffer("c", c)
        self.theta = nn.Parameter(torch.zeros_like(c))

    def forward(self, x):
        d = self.theta - self.c
        return 0.5 * d @ self.H @ d + 0 * x.sum()


@pytest.mark.parametrize("seed", range(4))
def test_quadratic_parabola_barrier_closed_form(seed):
    g = torch.Generator().manual_seed(seed)
    n = 5
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.tensor([3.0, 1.0, 0.5, -0.7, -2.0], dtype=torch.float64)  # indefinite
    H = Q @ torch.diag(eig) @ Q.T
    c = torch.randn(n, generator=g, dtype=torch.float64)
    model = Quadratic(H, c).double()
    probe = lp.LandscapeProbe(model, lambda out, y: out, [(torch.zeros(1), None)])
    a = {"theta": torch.randn(n, generator=g, dtype=torch.float64)}
    b = {"theta": torch.randn(n, generator=g, dtype=torch.float64)}
    curve = probe.interpolate(a, b, points=101)

    d = b["theta"] - a["theta"]
    L = lambda t: float(0.5 * (t - c) @ H @ (t - c))
    C = 0.5 * float(d @ H @ d)
    exact = [L(a["theta"] + al * d) for al in curve.alphas]
    np.testing.assert_allclose(curve.losses, exact, rtol=1e-12, atol=1e-12)
    # excess over the chord is -C alpha (1 - alpha): a barrier of -C/4 at alpha 1/2 when C < 0
    expected_barrier = max(-C / 4, 0.0)
    assert curve.barrier == pytest.approx(expected_barrier, rel=1e-10, abs=1e-12)
    if C < 0:
        assert curve.argmax_alpha == 0.5


def test_quadratic_has_some_positive_barrier_case():
    # H negative along d: the analytic barrier is |d^T H d| / 8.
    H = torch.diag(torch.tensor([-1.0, 2.0], dtype=torch.float64))
    model = Quadratic(H, torch.zeros(2, dtype=torch.float64)).double()
    probe = lp.LandscapeProbe(model, lambda out, y: out, [(torch.zeros(1), None)])
    curve = probe.interpolate({"theta": torch.tensor([-1.0, 0.0])}, {"theta": torch.tensor([1.0, 0.0])}, points=11)
    assert curve.barrier == pytest.approx(4 / 8) and curve.argmax_alpha == 0.5


def test_subnet_moves_only_the_subnet():
    model, data = CASES[0].build(dtype=torch.float64)
    a, b = perturbed(model, 1), perturbed(model, 2)
    curve = lp.LandscapeProbe(model, CASES[0].loss_fn, data).interpolate(a, b, points=5, subnet="fc2")
    for al, got in zip(curve.alphas, curve.losses):
        st = {k: (a[k] + al * (b[k] - a[k]) if k.startswith("fc2.") else a[k]) for k in a}
        assert got == pytest.approx(brute_force_loss(MLP, st, data, CASES[0].loss_fn), rel=1e-12)
    assert curve.settings["subnet"] == "fc2"


def test_extend_keeps_zero_and_one_on_the_grid():
    model, data = CASES[0].build(dtype=torch.float64)
    a, b = perturbed(model, 1), perturbed(model, 2)
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    curve = probe.interpolate(a, b, points=5, extend=0.3)  # spacing 0.25 -> two extra steps each side
    np.testing.assert_allclose(curve.alphas, np.arange(-2, 7) * 0.25)
    assert 0.0 in curve.alphas and 1.0 in curve.alphas
    assert curve.losses[0] == pytest.approx(brute_force_loss(MLP, lerp_state(a, b, -0.5), data, CASES[0].loss_fn), rel=1e-12)
    assert curve.loss_a == probe.loss(a) and curve.loss_b == probe.loss(b)


def test_argument_errors():
    model, data = CASES[0].build()
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    sd = model.state_dict()
    with pytest.raises(ValueError, match="points=1; an interpolation needs an integer of at least 2"):
        probe.interpolate(sd, sd, points=1)
    with pytest.raises(ValueError, match="extend=-0.1"):
        probe.interpolate(sd, sd, extend=-0.1)
    bad = {k: v for k, v in sd.items() if k != "fc1.bias"}
    with pytest.raises(ValueError, match=r"b lacks 1 parameter\(s\) of MLP: \['fc1.bias'\]"):
        probe.interpolate(sd, bad)
    with pytest.raises(ValueError, match=r"a has shapes that differ from MLP: head.bias"):
        probe.interpolate(dict(sd, **{"head.bias": torch.zeros(3)}), sd)
    with pytest.raises(ValueError, match="bn='batch'"):
        lp.LandscapeProbe(model, CASES[0].loss_fn, data, bn="batch")
    with pytest.raises(TypeError, match="instantiate it: MSELoss()"):
        lp.LandscapeProbe(model, nn.MSELoss, data)
    with pytest.raises(TypeError, match="received the class MLP"):
        lp.LandscapeProbe(MLP, nn.MSELoss(), data)
    with pytest.raises(TypeError, match="data must be an iterable"):
        lp.LandscapeProbe(model, nn.MSELoss(), torch.zeros(3))
    with pytest.raises(ValueError, match="data yielded no batch"):
        lp.LandscapeProbe(model, nn.MSELoss(), []).loss()
    with pytest.raises(ValueError, match="must be a pair"):
        lp.LandscapeProbe(model, nn.MSELoss(), [(1, 2, 3)]).loss()
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
        lp.LandscapeProbe(model, nn.MSELoss(reduction="none"), data).loss()
    with pytest.raises(ValueError, match="device=meta"):
        lp.LandscapeProbe(model, nn.MSELoss(), data, device="meta")
    with pytest.raises(ValueError, match="dtype=torch.float64 but the model's parameters are torch.float32"):
        lp.LandscapeProbe(model, nn.MSELoss(), data, dtype=torch.float64)


# ---------------------------------------------------------------- the probe never harms the model
def _user_model():
    model, data = CASES[1].build()
    model.train()
    model.conv2.eval()                      # a mixed mode that must come back as it was
    model.conv.bias.requires_grad_(False)  # a flag that must survive
    return model, data


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["loss_fn", "data"])
@pytest.mark.parametrize("after", [0, 3, 9])
@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_interrupted_probe_restores_everything(exc, where, after, bn):
    model, data = _user_model()
    a, b = perturbed(model, 1), perturbed(model, 2)
    before = snapshot(model)
    calls = {"n": 0}

    def tick():
        calls["n"] += 1
        if calls["n"] > after:
            raise exc()

    def loss_fn(out, y):
        if where == "loss_fn":
            tick()
        torch.rand(1)  # consumes global RNG inside the probe
        return nn.functional.l1_loss(out, y)

    class Data:
        def __iter__(self):
            for batch in data:
                if where == "data":
                    tick()
                yield batch

    probe = lp.LandscapeProbe(model, loss_fn, Data(), bn=bn)
    with pytest.raises(exc):
        probe.interpolate(a, b, points=11)
    assert calls["n"] == after + 1
    assert_same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("bn", ["eval", "train", "recompute"])
def test_completed_probe_restores_everything(bn):
    model, data = _user_model()
    before = snapshot(model)
    probe = lp.LandscapeProbe(model, lambda o, y: torch.rand(()) * 0 + nn.functional.l1_loss(o, y), data, bn=bn)
    probe.interpolate(perturbed(model, 1), perturbed(model, 2), points=4)
    probe.loss(perturbed(model, 3))
    assert_same_snapshot(before, snapshot(model))
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_no_deep_copy_of_the_model(monkeypatch):
    model, data = CASES[2].build()
    def refuse(*a, **k):
        raise AssertionError("the probe deep-copied something")
    monkeypatch.setattr(copy, "deepcopy", refuse)
    curve = lp.LandscapeProbe(model, CASES[2].loss_fn, data).interpolate(perturbed(model, 1), perturbed(model, 2), points=5)
    assert np.isfinite(curve.losses).all()


def test_dropout_is_off_while_probing():
    model, data = CASES[2].build()
    model.train()
    probe = lp.LandscapeProbe(model, CASES[2].loss_fn, data)
    assert probe.loss() == probe.loss()  # deterministic although the model is in train mode
    assert model.training


# ---------------------------------------------------------------- results
def test_curve_save_load_plot(tmp_path):
    model, data = CASES[0].build()
    curve = lp.LandscapeProbe(model, CASES[0].loss_fn, data).interpolate(perturbed(model, 1), perturbed(model, 2), points=6)
    path = curve.save(tmp_path / "sub" / "curve.json")
    back = lp.Curve.load(path)
    np.testing.assert_array_equal(back.alphas, curve.alphas)
    np.testing.assert_array_equal(back.losses, curve.losses)
    assert back.barrier == curve.barrier and back.settings == curve.settings
    assert not list((tmp_path / "sub").glob("*.tmp"))
    one = lp.LandscapeProbe(model, CASES[0].loss_fn, data[:1]).interpolate(perturbed(model, 1), perturbed(model, 2), points=3)
    back = lp.Curve.load(one.save(tmp_path / "nan.json"))
    assert np.isnan(back.stderr).all()
    ax = curve.plot()
    assert ax.get_xlabel() == r"$\alpha$" and len(ax.lines) >= 2
    with pytest.raises(ValueError, match="this JSON holds a Surface, not a Curve"):
        lp.Curve.from_dict({"kind": "Surface"})


# ---------------------------------------------------------------- the established library
def test_matches_loss_landscapes_linear_interpolation():
    loss_landscapes = pytest.importorskip("loss_landscapes")
    from loss_landscapes.metrics import Metric

    model, data = CASES[0].build(dtype=torch.float64)
    ma, mb = MLP().double(), MLP().double()
    ma.load_state_dict(perturbed(model, 1))
    mb.load_state_dict(perturbed(model, 2))

    class MeanOverBatches(Metric):  # its built-in Loss metric sees one batch only
        def __call__(self, wrapper):
            tot = sum(float(CASES[0].loss_fn(wrapper.forward(x), y)) * len(x) for x, y in data)
            return tot / sum(len(x) for x, _ in data)

    steps = 20
    theirs = loss_landscapes.linear_interpolation(ma, mb, MeanOverBatches(), steps=steps, deepcopy_model=True)
    # Their alphas are k/steps for k = 1..steps (alpha = 0 is never evaluated); ours are
    # k/(steps' - 1) for k = 0..steps'-1, so steps' = steps + 1 and we drop our first point.
    ours = lp.LandscapeProbe(model, CASES[0].loss_fn, data).interpolate(ma, mb, points=steps + 1)
    np.testing.assert_allclose(ours.losses[1:], theirs, rtol=1e-6)


@pytest.mark.parametrize("case", [CASES[0], CASES[1]], ids=case_id)
def test_batch_points_vmap_path_matches(case):
    model, data = case.build(dtype=torch.float64)
    a, b = perturbed(model, 1), perturbed(model, 2)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    before = snapshot(model)
    one = probe.interpolate(a, b, points=7)
    many = probe.interpolate(a, b, points=7, batch_points=3)  # chunks of 3, 3, 1
    np.testing.assert_allclose(many.losses, one.losses, rtol=1e-12)
    np.testing.assert_allclose(many.stderr, one.stderr, rtol=1e-9)
    assert many.loss_a == pytest.approx(one.loss_a, rel=1e-13)
    assert_same_snapshot(before, snapshot(model))
    with pytest.raises(ValueError, match="batch_points=0"):
        probe.interpolate(a, b, batch_points=0)
    with pytest.raises(ValueError, match="batch_points > 1 needs bn='eval'"):
        lp.LandscapeProbe(model, case.loss_fn, data, bn="train").interpolate(a, b, batch_points=2)


def test_batch_points_holds_k_copies_allocated_once(monkeypatch):
    # the memory claim's logic: one stack of batch_points copies per tensor for the whole call,
    # each chunk a view of it (benchmarks/bench_batch_points_memory.py measures the bytes)
    model, data = CASES[0].build(dtype=torch.float64)
    a, b = perturbed(model, 1), perturbed(model, 2)
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    seen = []
    original = type(probe.engine)._chunk

    def spy(self, ranks, names, stacked):
        seen.append([(t.shape, t.untyped_storage().data_ptr()) for t in stacked])
        return original(self, ranks, names, stacked)
    monkeypatch.setattr(type(probe.engine), "_chunk", spy)
    probe.interpolate(a, b, points=7, batch_points=3)
    names = probe.engine.state_names()
    sizes = [t.shape for t in probe.engine.targets(names)]
    assert [[shape[0] for shape, _ in chunk] for chunk in seen] == [[3] * len(names), [3] * len(names), [1] * len(names)]
    assert all([shape[1:] for shape, _ in chunk] == sizes for chunk in seen)
    assert seen[0] == seen[1] and [p for _, p in seen[2]] == [p for _, p in seen[0]]    # the same storage


@pytest.mark.parametrize("as_", ["module", "state_dict", "vector_view"])
def test_endpoint_that_is_the_probed_model_itself(as_):
    # regression (found while building plane): endpoints aliasing the model's storage
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    data = [(torch.ones(1, 1), torch.zeros(1, 1))]  # L(w) = w**2
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data)
    a = {"module": model, "state_dict": model.state_dict(),
         "vector_view": lp.ParamVector.from_module(model, copy=False)}[as_]
    curve = probe.interpolate(a, {"weight": torch.tensor([[3.0]])}, points=5)
    np.testing.assert_allclose(curve.losses, [1.0, 2.25, 4.0, 6.25, 9.0], rtol=1e-6)
    assert model.weight.item() == 1.0


class CachingNet(nn.Module):
    """Keeps a tensor attribute set in forward: lazily (as some positional-encoding caches) or
    replaced on every call."""

    def __init__(self, lazy: bool):
        super().__init__()
        self.fc = nn.Linear(3, 1)
        self.lazy = lazy
        if not lazy:
            self._scale = torch.full((1,), 2.0)

    def forward(self, x):
        if not self.lazy or getattr(self, "_scale", None) is None:
            self._scale = torch.full((1,), 2.0)
        return self.fc(x) * self._scale


@pytest.mark.parametrize("lazy", [True, False], ids=["cache-set-by-probe", "cache-replaced-by-probe"])
def test_module_tensor_attributes_set_while_probing_are_put_back(lazy):
    # The probe evaluates under torch.inference_mode: a cache created then is an inference
    # tensor, and training through it afterwards would fail ("Inference tensors cannot be
    # saved for backward"). The guard puts the attributes back.
    torch.manual_seed(0)
    model = CachingNet(lazy)
    before = model.__dict__.get("_scale")
    data = [(torch.randn(4, 3), torch.randn(4, 1))]
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data)
    probe.interpolate(model, perturbed(model, 0, 0.1), points=3)
    assert model.__dict__.get("_scale") is before
    x, y = data[0]
    nn.functional.mse_loss(model(x), y).backward()      # training still works
    assert model.fc.weight.grad is not None


def test_a_huge_grid_is_refused_with_its_size():
    model = nn.Linear(1, 1, bias=False)
    probe = lp.LandscapeProbe(model, nn.MSELoss(), [(torch.ones(2, 1), torch.zeros(2, 1))])
    before = snapshot(model)
    a, b = {"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[1.0]])}
    with pytest.raises(ValueError, match=r"would evaluate 4,000,003 points .*MAX_POINTS = 100,000.*smaller extend"):
        probe.interpolate(a, b, points=3, extend=1e6)
    with pytest.raises(ValueError, match=r"200,001 points .*fewer points"):
        probe.interpolate(a, b, points=200_001)
    assert_same_snapshot(before, snapshot(model))
    assert len(probe.interpolate(a, b, points=3, extend=1.0).alphas) == 7     # small grids are untouched

"""Precision-targeted evaluation: seeded random batches until 2σ <= precision · loss."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import landprobe as lp
from landprobe.engine import Evaluation
from helpers import CASES, assert_same_snapshot, perturbed, snapshot


def regression_dataset(n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def test_tight_precision_uses_all_data_and_is_exact():
    model, data = CASES[0].build(dtype=torch.float64)
    exact = lp.LandscapeProbe(model, CASES[0].loss_fn, data).evaluate()
    ev = lp.LandscapeProbe(model, CASES[0].loss_fn, data, precision=1e-12, min_batches=2).evaluate()
    assert ev.loss == pytest.approx(exact.loss, rel=1e-13)
    assert ev.stderr == 0.0  # finite-population correction: every sample was used
    assert sorted(ev.batch_sizes.tolist()) == sorted(exact.batch_sizes.tolist())


@pytest.mark.parametrize("wrap", ["dataset", "loader"])
def test_stops_once_the_target_is_met(wrap):
    ds = regression_dataset()
    data = ds if wrap == "dataset" else DataLoader(ds, batch_size=50)
    model = nn.Linear(3, 1).double()
    ds.tensors = tuple(t.double() for t in ds.tensors)
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data, precision=0.05, batch_size=50, seed=3)
    ev = probe.evaluate()
    assert 2 * ev.stderr <= 0.05 * ev.loss
    assert 4 <= len(ev.batch_losses) < 40  # stopped well before the 2,000 samples
    assert set(ev.batch_sizes.tolist()) == {50}
    # the same seed draws the same samples
    again = probe.evaluate()
    assert again.loss == ev.loss


def test_estimator_is_unbiased_and_its_error_bars_cover():
    ds = regression_dataset(n=4000, seed=1)
    model = nn.Linear(3, 1)
    full = lp.LandscapeProbe(model, nn.MSELoss(), DataLoader(ds, batch_size=500)).loss()
    estimates, covered = [], 0
    for seed in range(120):
        ev = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, batch_size=40, seed=seed).evaluate()
        estimates.append(ev.loss)
        covered += abs(ev.loss - full) <= 2 * ev.stderr
    assert abs(np.mean(estimates) - full) / full < 0.01  # mean of many seeded draws
    assert covered / 120 > 0.85                            # 2σ bars cover about 95%


def test_interpolate_with_precision_reports_per_point_error_and_restores():
    model, data = CASES[1].build()
    before = snapshot(model)
    probe = lp.LandscapeProbe(model, CASES[1].loss_fn, data * 10, precision=0.2, min_batches=3)
    curve = probe.interpolate(perturbed(model, 1), perturbed(model, 2), points=5)
    assert len(curve.settings["samples_per_point"]) == 5 and curve.settings["precision"] == 0.2
    used = np.array(curve.settings["samples_per_point"])
    assert ((2 * curve.stderr <= 0.2 * curve.losses) | (used == 60)).all()
    assert_same_snapshot(before, snapshot(model))


def test_precision_errors():
    model, data = CASES[0].build()
    with pytest.raises(ValueError, match="precision=1.5; expected a relative error in"):
        lp.LandscapeProbe(model, CASES[0].loss_fn, data, precision=1.5)
    with pytest.raises(ValueError, match="min_batches=1"):
        lp.LandscapeProbe(model, CASES[0].loss_fn, data, precision=0.1, min_batches=1)

    class Stream(IterableDataset):
        def __iter__(self):
            yield from data

    with pytest.raises(ValueError, match="got an IterableDataset"):
        lp.LandscapeProbe(model, CASES[0].loss_fn, DataLoader(Stream(), batch_size=None), precision=0.1)
    with pytest.raises(TypeError, match="one-shot iterator"):       # refused whatever the precision
        lp.LandscapeProbe(model, CASES[0].loss_fn, (b for b in data), precision=0.1)

    class Batches:                                                   # re-iterable, no random access
        def __iter__(self):
            return iter(data)

    with pytest.raises(ValueError, match="needs random access"):
        lp.LandscapeProbe(model, CASES[0].loss_fn, Batches(), precision=0.1)
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data, precision=0.1)
    with pytest.raises(ValueError, match="cannot be combined with precision="):
        probe.interpolate(model, perturbed(model, 1), batch_points=2)


# ---------------------------------------------------------------- control variates
def zero_model():
    model = nn.Linear(3, 1).double()
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    return model


def y_squared(x, y):
    return y.reshape(len(y), -1).pow(2).mean(1)


def double_dataset(n, seed):
    ds = regression_dataset(n, seed)
    ds.tensors = tuple(t.double() for t in ds.tensors)
    return ds


def test_control_that_is_the_loss_itself_gives_the_exact_mean_at_once():
    # MSE of a zero model is the mean of y²: the covariate predicts every batch loss exactly,
    # so the regression estimate is the exact full-data mean with zero error at min_batches.
    ds = double_dataset(2000, 0)
    model = zero_model()
    exact = float(ds.tensors[1].pow(2).mean())
    probe = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.01, batch_size=20, seed=0, control=y_squared)
    ev = probe.evaluate()
    assert ev.loss == pytest.approx(exact, rel=1e-12)
    assert ev.stderr <= 1e-12 * exact
    assert len(ev.batch_losses) == 8                     # min_batches raised to 4 (k + 1) = 8
    plain = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.01, batch_size=20, seed=0).evaluate()
    assert len(plain.batch_losses) > 4 * len(ev.batch_losses)


def test_control_estimator_is_unbiased_covers_and_needs_fewer_samples():
    ds = double_dataset(4000, 1)
    model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.8, -1.5, 0.0]]))
    full = lp.LandscapeProbe(model, nn.MSELoss(), DataLoader(ds, batch_size=500)).loss()

    def covariates(x, y):                                 # correlated with, not equal to, the loss
        return torch.stack([y[:, 0] ** 2, x[:, 2] ** 2, x[:, 1] * y[:, 0]], dim=1)

    estimates, covered, used, used_plain = [], 0, [], []
    for seed in range(100):
        ev = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, batch_size=20, seed=seed,
                               control=covariates).evaluate()
        plain = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, batch_size=20, seed=seed).evaluate()
        estimates.append(ev.loss)
        covered += abs(ev.loss - full) <= 2 * ev.stderr
        used.append(ev.batch_sizes.sum())
        used_plain.append(plain.batch_sizes.sum())
    assert abs(np.mean(estimates) - full) / full < 0.01
    assert covered / 100 > 0.85
    assert np.mean(used) < 0.8 * np.mean(used_plain)


@pytest.mark.parametrize("wrap", ["dataset", "batches"])
def test_control_with_all_the_data_is_exact(wrap):
    ds = double_dataset(300, 2)
    model = nn.Linear(3, 1).double()
    data = ds if wrap == "dataset" else list(DataLoader(ds, batch_size=30))
    exact = lp.LandscapeProbe(model, nn.MSELoss(), DataLoader(ds, batch_size=300)).loss()
    ev = lp.LandscapeProbe(model, nn.MSELoss(), data, precision=1e-12, batch_size=30,
                           control=y_squared).evaluate()
    assert ev.loss == pytest.approx(exact, rel=1e-12) and ev.stderr == 0.0
    assert ev.batch_sizes.sum() == 300


def test_control_on_a_curve_records_the_setting_and_restores_the_model():
    ds = double_dataset(1000, 3)
    model = nn.Linear(3, 1).double()
    before = snapshot(model)
    probe = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.05, batch_size=25, control=y_squared)
    curve = probe.interpolate(model, perturbed(model, 1, 0.3), points=3)
    assert curve.settings["control"] == "y_squared"
    assert np.all(2 * curve.stderr <= 0.05 * curve.losses)
    assert_same_snapshot(before, snapshot(model))


def test_control_errors():
    ds = double_dataset(100, 0)
    model = zero_model()
    with pytest.raises(ValueError, match="control= needs precision="):
        lp.LandscapeProbe(model, nn.MSELoss(), ds, control=y_squared)
    with pytest.raises(ValueError, match="control= needs precision="):
        lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, control=3.0)
    bad_shape = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, batch_size=10,
                                  control=lambda x, y: y.sum())
    with pytest.raises(ValueError, match=r"per-sample covariates, shape \(10,\)"):
        bad_shape.evaluate()
    nan = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, batch_size=10,
                            control=lambda x, y: y[:, 0] * float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        nan.evaluate()


def test_sr_covariates_with_mean_follow_a_bias_driven_loss():
    # A 1x1 convolution y_hat = 3x + 2 on patches x = y + noise: each patch's loss is
    # 4·mean(y²) + 8·mean(y) + 4 plus small terms, a term linear in the patch's mean that only the
    # third column follows. With it the point needs a fraction of the samples; both stay honest.
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3000, 1, 1, 1, generator=g, dtype=torch.float64) + 0.2 * torch.randn(3000, 1, 6, 6, generator=g,
                                                                                       dtype=torch.float64)
    ds = TensorDataset(y + 0.05 * torch.randn(y.shape, generator=g, dtype=torch.float64), y)
    model = nn.Conv2d(1, 1, 1).double()
    with torch.no_grad():
        model.weight.fill_(3.0), model.bias.fill_(2.0)
    exact = lp.LandscapeProbe(model, nn.MSELoss(), DataLoader(ds, batch_size=1000)).loss()
    used = {}
    for control in (lp.data.sr_covariates, lp.data.sr_covariates_with_mean):
        ev = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.005, batch_size=4, seed=0,
                               control=control).evaluate()
        assert abs(ev.loss - exact) <= 3 * ev.stderr
        used[control.__name__] = int(ev.batch_sizes.sum())
    assert used["sr_covariates_with_mean"] < 2 * 4 * 4 * (3 + 1)     # under twice the floor, 4(k + 1) batches of 4
    assert used["sr_covariates"] > 3 * used["sr_covariates_with_mean"]


# ---------------------------------------------------------------- control variates at reference parameters
def weight(*w):
    return {"weight": torch.tensor([list(w)], dtype=torch.float64)}


def test_control_at_three_references_makes_any_point_of_a_quadratic_loss_exact():
    # y_hat = w·x under MSE: each batch loss is quadratic in w, so along a line through three
    # references it is an exact linear combination of their batch losses (Lagrange). The
    # regression estimate is then the exact full-data mean at min_batches = 4 (3 + 1).
    ds = double_dataset(2000, 4)
    model = nn.Linear(3, 1, bias=False).double()
    refs = [weight(0.0, 0.0, 0.0), weight(1.0, -2.0, 0.5), weight(2.0, -4.0, 1.0)]
    probe = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.001, batch_size=20, seed=0, control_at=refs)
    full = lp.LandscapeProbe(model, nn.MSELoss(), DataLoader(ds, batch_size=2000))
    assert probe.engine.reference_losses is None                       # no pass before the first point
    for t in (0.3, 1.7, -0.6):
        ev = probe.evaluate(weight(t, -2 * t, 0.5 * t))
        exact = full.loss(weight(t, -2 * t, 0.5 * t))
        assert ev.loss == pytest.approx(exact, rel=1e-10)
        assert ev.stderr <= 1e-10 * exact
        assert len(ev.batch_losses) == 16
    assert probe.engine.reference_losses == pytest.approx([full.loss(r) for r in refs], rel=1e-12)


def test_control_at_covers_and_beats_model_free_covariates_between_two_solutions():
    ds = double_dataset(4000, 5)
    a, b = weight(1.0, -2.0, 0.5), weight(0.6, -1.2, 1.1)
    model = nn.Linear(3, 1, bias=False).double()
    full = lp.LandscapeProbe(model, nn.MSELoss(), DataLoader(ds, batch_size=4000))
    mid = {"weight": 0.5 * (a["weight"] + b["weight"]) + torch.tensor([[0.1, 0.0, -0.05]], dtype=torch.float64)}
    exact = full.loss(mid)
    covered, used, used_plain, estimates = 0, [], [], []
    for seed in range(30):
        ev = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.02, batch_size=10, seed=seed,
                               control=y_squared, control_at=[a, b]).evaluate(mid)
        plain = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.02, batch_size=10, seed=seed,
                                  control=y_squared).evaluate(mid)
        covered += abs(ev.loss - exact) <= 2 * ev.stderr
        estimates.append(ev.loss)
        used.append(ev.batch_sizes.sum())
        used_plain.append(plain.batch_sizes.sum())
    assert abs(np.mean(estimates) - exact) / exact < 0.005
    assert covered / 30 > 0.8
    assert np.mean(used) < 0.3 * np.mean(used_plain)


def test_control_at_on_a_curve_restores_the_model_and_records_the_setting():
    ds = double_dataset(1000, 6)
    model = nn.Linear(3, 1).double()
    other = perturbed(model, 1, 0.3)
    before = snapshot(model)
    probe = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.01, batch_size=25, control_at=[model, other])
    curve = probe.interpolate(model, other, points=5)
    assert curve.settings["control_at"] == 2
    exact = lp.LandscapeProbe(model, nn.MSELoss(), DataLoader(ds, batch_size=1000))
    assert curve.losses[0] == pytest.approx(exact.loss(), rel=1e-12)           # a reference: exact at once
    assert curve.losses[-1] == pytest.approx(exact.loss(other), rel=1e-12)
    assert np.all(2 * curve.stderr <= 0.01 * curve.losses)
    assert_same_snapshot(before, snapshot(model))


def test_control_at_errors_name_the_argument():
    ds = double_dataset(100, 0)
    model = zero_model()
    with pytest.raises(ValueError, match="control_at= needs precision="):
        lp.LandscapeProbe(model, nn.MSELoss(), ds, control_at=[model])
    with pytest.raises(ValueError, match="non-empty list of parameter sets"):
        lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, control_at=model.state_dict())
    with pytest.raises(ValueError, match="non-empty list"):
        lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, control_at=[])
    with pytest.raises(ValueError, match="bn='recompute'"):
        lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, control_at=[model], bn="recompute")
    with pytest.raises((ValueError, KeyError), match=r"control_at\[0\]"):
        lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, control_at=[{"weight": torch.zeros(2, 2)}])
    inf = {"weight": torch.full((1, 3), float("inf"), dtype=torch.float64), "bias": torch.zeros(1, dtype=torch.float64)}
    with pytest.raises(ValueError, match="not finite|non-finite"):
        lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.1, batch_size=10, control_at=[inf]).evaluate()


def test_plane_records_the_samples_each_point_drew():
    ds = double_dataset(600, 7)
    model = nn.Linear(3, 1).double()
    probe = lp.LandscapeProbe(model, nn.MSELoss(), ds, precision=0.05, batch_size=20, control_at=[model])
    surface = probe.plane(points=3, span=0.5)
    used = np.array(surface.settings["samples_per_point"])
    assert used.shape == (3, 3) and used.min() >= 8 * 20               # 4(k + 1) batches, k = 1
    assert surface.settings["samples_total"] == used.sum()
    exact = lp.LandscapeProbe(model, nn.MSELoss(), DataLoader(ds, batch_size=600)).loss()
    assert surface.losses[1, 1] == pytest.approx(exact, rel=1e-12)     # the center is the reference
    assert "samples_per_point" not in lp.LandscapeProbe(model, nn.MSELoss(), [ds[:]]).plane(points=3).settings


# ---------------------------------------------------------------- the regression estimator's error bars
def hat_matrix_reference(l, n, c, population_mean, population):
    """Mean and HC3 standard error from the explicit weighted design [1, c] (no centring, no SVD)."""
    w = n / n.sum()
    x = np.column_stack([np.ones(len(l)), c])
    inv = np.linalg.inv(x.T @ (w[:, None] * x))
    coef = inv @ x.T @ (w * l)
    x0 = np.concatenate([[1.0], population_mean])
    g = w * (x @ inv @ x0)
    h = w * np.einsum("bi,ij,bj->b", x, inv, x)
    e = l - x @ coef
    return float(x0 @ coef), float(np.sqrt(np.sum(g**2 * e**2 / (1 - h) ** 2) * (1 - n.sum() / population)))


def test_control_estimate_and_error_match_the_explicit_hat_matrix():
    rng = np.random.default_rng(7)
    for b, k in ((16, 3), (9, 2), (40, 5)):
        c = rng.lognormal(size=(b, k))
        l = c @ rng.normal(size=k) + 0.2 * rng.normal(size=b)
        n = rng.integers(5, 9, b).astype(np.float64)
        pop_mean = c.mean(0) * 1.1
        ev = Evaluation.with_control(l, n, c, pop_mean, 5000)
        mean, se = hat_matrix_reference(l, n, c, pop_mean, 5000)
        assert ev.loss == pytest.approx(mean, rel=1e-12)
        assert ev.stderr == pytest.approx(se, rel=1e-9)


def test_control_error_bars_cover_at_the_batch_floor_on_heavy_tailed_data():
    # Log-normal covariates and heteroscedastic losses, 16 batches of 8 (the 4(k + 1) floor for
    # k = 3): the residual variance B/(B − k − 1)·Σ w²e² alone covers too rarely; the leverage-
    # corrected error covers about 95% of 2000 draws without replacement.
    rng = np.random.default_rng(0)
    size, k, b = 20000, 3, 16
    c = rng.lognormal(0, 0.8, (size, k))
    loss = c @ np.array([0.5, 0.3, 0.2]) + 0.3 * c[:, 0] * rng.standard_normal(size) + 0.5 * rng.standard_normal(size) ** 2
    exact, pop_mean = loss.mean(), c.mean(0)
    covered = residual_only = 0
    for _ in range(2000):
        idx = rng.permutation(size)[: b * 8].reshape(b, 8)
        lb, cb = loss[idx].mean(1), c[idx].mean(1)
        ev = Evaluation.with_control(lb, [8] * b, cb, pop_mean, size)
        covered += abs(ev.loss - exact) <= 2 * ev.stderr
        x = np.column_stack([np.ones(b), cb])
        e = lb - x @ np.linalg.lstsq(x, lb, rcond=None)[0]
        plain_se = np.sqrt(b / (b - k - 1) * np.sum(e**2) / b**2 * (1 - 8 * b / size))
        residual_only += abs(ev.loss - exact) <= 2 * plain_se
    assert 0.93 <= covered / 2000 <= 0.985
    assert residual_only / 2000 < 0.91


def test_control_error_is_infinite_while_one_batch_alone_fixes_the_fit():
    c = np.array([[0.0], [0.0], [0.0], [1.0]])            # only the last batch moves the covariate
    ev = Evaluation.with_control([1.0, 1.1, 0.9, 3.0], [4] * 4, c, np.array([0.5]), population=100)
    assert ev.loss == pytest.approx(1.0 + 2.0 * 0.5) and ev.stderr == float("inf")

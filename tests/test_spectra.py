"""Spectra of the Hessian: Lanczos eigenpairs, trace estimators, SLQ densities; dense float64 references and PyHessian."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import assert_same_snapshot, snapshot
from helpers_curvature import CASES, case_id, dense_hessian, quadratic_problem
from landprobe.curvature import (Eigenpairs, Spectrum, TraceEstimate, density, hessian, hutchinson, hutchpp,
                                 lanczos, top_eigenvalues, trace)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: one thread is faster, and immune to contention on the shared 2-core CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _op(case, **kw):
    model, data = case.build()
    H = dense_hessian(model, case.loss_fn, data)
    return hessian(lp.LandscapeProbe(model, case.loss_fn, data), **kw), H


def _expected(H, k, which):
    ev = torch.linalg.eigvalsh(H).numpy()
    if which == "LA":
        return ev[::-1][:k]
    if which == "SA":
        return ev[:k]
    return ev[np.argsort(-np.abs(ev), kind="stable")][:k]


# ------------------------------------------------------------------ eigenvalues
@pytest.mark.parametrize("method", ["lanczos", "arpack"])
@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_top_eigenvalues_match_dense(case, which, method):
    op, H = _op(case)
    res = op.top_eigenvalues(k=3, which=which, tol=1e-10, method=method)
    expected = _expected(H, 3, which)
    np.testing.assert_allclose(res.values, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
    assert res.converged.tolist() == [True, True, True]
    # residuals are real ones: recompute with the dense matrix
    for lam, v, r in zip(res.values, res.vectors, res.residuals):
        x = v.flatten()
        assert abs(float(x.norm()) - 1) < 1e-12
        true_r = float((H @ x - lam * x).norm())
        assert abs(true_r - r) <= 1e-10 * abs(expected).max()
        assert r <= 1e-10 * abs(lam) + res.settings["atol"]
    assert isinstance(res, Eigenpairs) and res.matvecs > 3


def test_convergence_flag_is_false_when_max_iter_is_too_small():
    op, H = _op(CASES[0])
    res = top_eigenvalues(op, k=1, which="LA", tol=1e-8, max_iter=3)
    assert res.converged.tolist() == [False]
    assert res.residuals[0] > 1e-8 * abs(res.values[0])
    assert not res.all_converged
    assert res.matvecs == 3                             # 3 Krylov steps; residuals from their products


def test_repeated_eigenvalues_found_with_multiplicity_and_no_ghosts():
    eigs = [5.0, 5.0, 5.0, 2.0, 1.0, 0.5, 0.25, 0.1]
    model, data, loss_fn, A = quadratic_problem(eigs, seed=3)
    op = hessian(lp.LandscapeProbe(model, loss_fn, data))
    res = op.top_eigenvalues(k=4, which="LA", tol=1e-10)
    np.testing.assert_allclose(res.values, [5.0, 5.0, 5.0, 2.0], rtol=1e-9)
    V = torch.stack([v.flatten() for v in res.vectors])
    torch.testing.assert_close(V @ V.T, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-9)
    assert res.all_converged


def test_zero_eigenvalues_at_a_zero_residual_minimum():
    # over-parameterised linear regression: d = 12 weights, N = 5 samples, an exact fit exists
    g = torch.Generator().manual_seed(0)
    d, N = 12, 5
    X = torch.randn(N, d, generator=g, dtype=torch.float64)
    w_star = torch.linalg.lstsq(X, torch.randn(N, 1, generator=g, dtype=torch.float64)).solution
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w_star.T)
    data = [(X[:3], X[:3] @ w_star), (X[3:], X[3:] @ w_star)]
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data)
    assert probe.loss() < 1e-25
    op = hessian(probe)
    res = op.top_eigenvalues(k=d, which="SA", tol=1e-10)
    scale = float(torch.linalg.eigvalsh(2 / N * X.T @ X).max())
    zero = np.abs(res.values) <= 1e-10 * scale
    assert int(zero.sum()) == d - N                     # rank of (2/N) XᵀX is N
    np.testing.assert_allclose(np.sort(res.values)[d - N:], torch.linalg.eigvalsh(2 / N * X.T @ X)[d - N:].numpy(),
                               rtol=1e-9)


# ------------------------------------------------------------------ trace
def test_hutchinson_is_unbiased_over_many_seeds():
    model, data, loss_fn, A = quadratic_problem(np.linspace(-1.0, 4.0, 10), seed=1)
    op = hessian(lp.LandscapeProbe(model, loss_fn, data))
    exact = float(torch.trace(A))
    draws = [hutchinson(op, matvecs=4, seed=s) for s in range(200)]
    values = np.array([d.value for d in draws])
    sd = values.std(ddof=1)
    # the mean of 200 draws is within 4 standard errors of the exact trace ...
    assert abs(values.mean() - exact) < 4 * sd / math.sqrt(200)
    # ... and the reported standard errors match the spread of the estimates
    rms_se = math.sqrt(np.mean([d.stderr ** 2 for d in draws]))
    assert 0.75 < rms_se / sd < 1.25
    # the variance is the known 2(||A||_F^2 - sum A_ii^2)/m
    theory = math.sqrt(2 * (float((A ** 2).sum()) - float((torch.diag(A) ** 2).sum())) / 4)
    assert 0.8 < sd / theory < 1.2


def test_hutchpp_is_unbiased_and_beats_hutchinson_on_a_low_rank_dominated_case():
    eigs = [100.0, 60.0, 30.0] + [0.1] * 27                 # a few outliers over a small bulk
    model, data, loss_fn, A = quadratic_problem(eigs, seed=2)
    op = hessian(lp.LandscapeProbe(model, loss_fn, data))
    exact = float(np.sum(eigs))
    pp = [hutchpp(op, matvecs=12, seed=s) for s in range(200)]
    hu = [hutchinson(op, matvecs=12, seed=s) for s in range(50)]
    vpp = np.array([d.value for d in pp])
    vhu = np.array([d.value for d in hu])
    assert abs(vpp.mean() - exact) / exact < 1e-2
    assert abs(vpp.mean() - exact) < 4 * vpp.std(ddof=1) / math.sqrt(200) + 1e-12
    assert vpp.std() < 0.1 * vhu.std()                      # deflation removes the outliers' variance
    rms_se = math.sqrt(np.mean([d.stderr ** 2 for d in pp]))
    assert 0.7 < rms_se / vpp.std(ddof=1) < 1.3
    assert all(d.matvecs == 12 for d in pp)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_hutchpp_with_a_full_sketch_is_exact(case):
    op, H = _op(case)
    est = op.trace(method="hutch++", matvecs=3 * op.n)
    assert math.isclose(est.value, float(torch.trace(H)), rel_tol=1e-9, abs_tol=1e-10)
    assert est.stderr < 1e-9 * abs(float(torch.trace(H))) + 1e-10
    assert isinstance(est, TraceEstimate) and est.method == "hutch++"


# ------------------------------------------------------------------ SLQ
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_slq_with_n_steps_recovers_the_spectrum(case):
    op, H = _op(case)
    ev = torch.linalg.eigvalsh(H).numpy()
    spec = op.density(steps=op.n, probes=2, seed=0)
    scale = np.abs(ev).max()
    for p in range(2):
        nodes = np.sort(spec.nodes[p][np.isfinite(spec.nodes[p])])
        assert len(nodes) == op.n
        np.testing.assert_allclose(nodes, ev, rtol=0, atol=1e-9 * scale)
        assert math.isclose(spec.weights[p].sum(), 1.0, rel_tol=1e-12)
    # the first moment of each probe's quadrature is v'Hv / n for its Rademacher probe
    g = torch.Generator().manual_seed(0)
    for p in range(2):
        v = torch.randint(0, 2, (op.n,), generator=g, dtype=torch.int8).double() * 2 - 1
        first = float(np.nansum(spec.weights[p] * spec.nodes[p]))
        assert math.isclose(first, float(v @ H @ v) / op.n, rel_tol=1e-9, abs_tol=1e-12 * scale)


def test_slq_trace_estimate_converges_and_density_integrates_to_one():
    model, data, loss_fn, A = quadratic_problem(np.linspace(-1.0, 4.0, 10), seed=1)
    op = hessian(lp.LandscapeProbe(model, loss_fn, data))
    spec = op.density(steps=4, probes=300, seed=0)
    exact = float(torch.trace(A))
    per_probe = op.n * np.nansum(spec.weights * spec.nodes, axis=1)
    assert abs(spec.trace - exact) < 4 * per_probe.std(ddof=1) / math.sqrt(300)
    assert abs(spec.trace - exact) / exact < 3e-2
    np.testing.assert_allclose(spec.weights.sum(axis=1), 1.0, rtol=1e-12)
    assert math.isclose(float(np.trapezoid(spec.density, spec.grid)), 1.0, rel_tol=1e-3)
    # moments of degree < 2*steps are exact per probe; averaged they estimate tr(A^2)/n
    assert abs(spec.moment(2) * op.n - float(torch.trace(A @ A))) / float(torch.trace(A @ A)) < 5e-2


def test_slq_stops_at_an_invariant_subspace():
    model, data, loss_fn, A = quadratic_problem([3.0, 3.0, 3.0, 1.0, 1.0, 1.0], seed=0)
    op = hessian(lp.LandscapeProbe(model, loss_fn, data))
    spec = density(op, steps=6, probes=1)
    fin = np.isfinite(spec.nodes[0])
    assert fin.sum() == 2                               # two distinct eigenvalues: two steps
    np.testing.assert_allclose(np.sort(spec.nodes[0][fin]), [1.0, 3.0], rtol=1e-10)
    assert np.all(spec.weights[0][~fin] == 0)


# ------------------------------------------------------------------ results
def test_results_round_trip_and_plot(tmp_path):
    op, H = _op(CASES[0])
    res = op.top_eigenvalues(k=2)
    back = Eigenpairs.load(res.save(tmp_path / "eig.json"))
    np.testing.assert_array_equal(back.values, res.values)
    assert back.converged.dtype == bool and back.converged.tolist() == res.converged.tolist()
    assert back.settings["which"] == "LA" and back.matvecs == res.matvecs
    tr = op.trace(matvecs=9)
    tb = TraceEstimate.load(tr.save(tmp_path / "tr.json"))
    assert tb.value == tr.value and tb.stderr == tr.stderr and tb.method == "hutch++"
    spec = op.density(steps=5, probes=2)
    sb = Spectrum.load(spec.save(tmp_path / "spec.json"))
    np.testing.assert_array_equal(sb.density, spec.density)
    np.testing.assert_array_equal(sb.nodes, spec.nodes)
    assert sb.n == op.n and sb.sigma == spec.sigma
    ax = sb.plot()
    assert ax.get_yscale() == "log" and len(ax.lines) == 1
    assert ax.lines[0].get_xdata().shape == spec.grid.shape


def test_spectra_leave_the_model_unchanged():
    case = CASES[1]
    model, data = case.build()
    before = snapshot(model)
    op = hessian(lp.LandscapeProbe(model, case.loss_fn, data))
    op.top_eigenvalues(k=2, which="LM")
    op.trace(method="hutchinson", matvecs=3)
    op.density(steps=5)
    top_eigenvalues(op, k=1, method="arpack")
    assert_same_snapshot(before, snapshot(model))


# ------------------------------------------------------------------ the peer
def test_pyhessian_agrees_on_a_single_batch():
    pyhessian = pytest.importorskip("pyhessian")
    torch.manual_seed(0)
    model = CASES[0].make_model()                       # float32, as PyHessian assumes
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 2, generator=g)
    crit = nn.MSELoss()
    ours = hessian(lp.LandscapeProbe(model, crit, [(x, y)]), dtype=torch.float64)
    top = ours.top_eigenvalues(k=1, tol=1e-10).values[0]
    exact_trace = float(torch.trace(ours.dense()))
    peer_model = copy.deepcopy(model)                    # PyHessian leaves its model in eval() with grads
    torch.manual_seed(1)
    ph = pyhessian.hessian(peer_model, crit, data=(x, y), cuda=False)
    eig, _ = ph.eigenvalues(maxIter=500, tol=1e-7, top_n=1)
    assert abs(eig[0] - top) / top < 1e-3
    samples = np.array(ph.trace(maxIter=300, tol=0.0))
    se = samples.std(ddof=1) / math.sqrt(len(samples))
    assert abs(samples.mean() - exact_trace) < 4 * se
    assert len(samples) == 300


# ------------------------------------------------------------------ errors
def test_errors():
    op, H = _op(CASES[0])
    with pytest.raises(ValueError, match="k=0; expected an integer from 1"):
        op.top_eigenvalues(k=0)
    with pytest.raises(ValueError, match="k=1000; expected an integer from 1 to the dimension n=67"):
        op.top_eigenvalues(k=1000)
    with pytest.raises(ValueError, match="which='BE'"):
        op.top_eigenvalues(which="BE")
    with pytest.raises(ValueError, match="tol=0"):
        op.top_eigenvalues(tol=0)
    with pytest.raises(ValueError, match="max_iter=1; expected an integer >= k=2"):
        op.top_eigenvalues(k=2, max_iter=1)
    with pytest.raises(ValueError, match="method='power'"):
        op.top_eigenvalues(method="power")
    with pytest.raises(ValueError, match="method='exact'"):
        op.trace(method="exact")
    with pytest.raises(ValueError, match="matvecs=3; Hutch\\+\\+ needs an integer of at least 4"):
        trace(op, "hutch++", 3)
    with pytest.raises(ValueError, match="matvecs=1; Hutchinson needs an integer of at least 2"):
        trace(op, "hutchinson", 1)
    with pytest.raises(ValueError, match="steps=0; expected a positive integer"):
        op.density(steps=0)
    with pytest.raises(ValueError, match="probes=0; expected a positive integer"):
        op.density(probes=0)
    with pytest.raises(ValueError, match="sigma=-1.0; expected a positive kernel width"):
        op.density(steps=3, sigma=-1.0)
    with pytest.raises(ValueError, match="grid=1; expected at least 2 points"):
        op.density(steps=3, grid=1)
    with pytest.raises(ValueError, match="grid must be a point count"):
        op.density(steps=3, grid=np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="start vector is zero"):
        lanczos(lambda v: v, torch.zeros(3, dtype=torch.float64), 2)


# ------------------------------------------------------------------ warm start from a subsample
def _regression(n=400, batches=8, seed=0):
    """Linear least squares with a well separated top eigenvalue: H = (2/N) XᵀX."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([5.0, 2.0, 1.5, 1.0, 0.5, 0.2], dtype=torch.float64)
    X = torch.randn(n, 6, generator=g, dtype=torch.float64) * scales
    Y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()
    data = [(X[i::batches], Y[i::batches]) for i in range(batches)]
    return model, data, 2.0 / n * X.T @ X


def test_subsample_is_the_hessian_of_the_first_batches():
    model, data, _ = _regression()
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data))
    sub = op.subsample(0.25)                       # 8 equal batches: the first 2
    X2 = torch.cat([x for x, _ in data[:2]])
    torch.testing.assert_close(sub.dense(), 2.0 / len(X2) * X2.T @ X2, rtol=0, atol=1e-12)
    assert sub.settings["batches"] == 2 and sub.settings["subsample"] == pytest.approx(0.25)
    assert op.subsample(0.26).settings["batches"] == 3 and op.subsample(1.0).settings["batches"] == 8
    with pytest.raises(ValueError, match="fraction=0; expected a share"):
        op.subsample(0)


@pytest.mark.parametrize("k", [1, 2])
def test_warm_start_gives_the_same_eigenpairs_in_fewer_full_products(k):
    model, data, H = _regression()
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data))
    expected = torch.linalg.eigvalsh(H).flip(0)[:k].numpy()
    cold = op.top_eigenvalues(k=k, tol=1e-4)
    warm = op.top_eigenvalues(k=k, tol=1e-4, warm_start=0.25)
    for res in (cold, warm):
        assert res.converged.all()
        np.testing.assert_allclose(res.values, expected, rtol=1e-6)
        for lam, v, r in zip(res.values, res.vectors, res.residuals):   # residuals measured on the full H
            x = v.flatten()
            assert abs(float((H @ x - lam * x).norm()) - r) <= 1e-12
    assert warm.matvecs < cold.matvecs
    info = warm.settings["warm_start"]
    assert info["fraction"] == 0.25 and info["matvecs"] > 0 and len(info["values"]) == k
    assert cold.settings["warm_start"] is None


def test_warm_start_errors():
    model, data, _ = _regression()
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data))
    for bad in (0, 1, 1.5, True, "half"):
        with pytest.raises(ValueError, match="warm_start=.*expected None, a share"):
            op.top_eigenvalues(warm_start=bad)

    class Plain:                                   # an operator without subsample()
        n, dtype, device, matvecs, settings = 6, torch.float64, torch.device("cpu"), 0, {}

        def _flat_matvec(self, v):
            return v

    with pytest.raises(ValueError, match="warm_start needs an operator with subsample"):
        top_eigenvalues(Plain(), warm_start=0.5)
    with pytest.raises(ValueError, match=r"warm_start='gradient' needs an operator with gradient\(\)"):
        top_eigenvalues(Plain(), warm_start="gradient")


@pytest.mark.parametrize("kw", [{}, {"graph": "streamed"}, {"hvp": "forward-over-reverse"}, {"graph": "per-batch"}])
def test_gradient_is_the_empirical_errors_and_costs_no_product(kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    data = [(torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 1, dtype=torch.float64)) for n in (5, 3, 8)]
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data), **kw)
    total = sum(len(x) for x, _ in data)
    loss = sum(nn.functional.mse_loss(model(x), y) * len(x) / total for x, y in data)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    torch.testing.assert_close(op.gradient(), expected, rtol=1e-12, atol=1e-14)
    assert op.matvecs == 0
    last = op.block("2")                                   # a block: its own parameters' part
    torch.testing.assert_close(last.gradient(), expected[-5:], rtol=1e-12, atol=1e-14)


def _trained_regression(n=2000, d=200, seed=0, top=1.3):
    """Least squares displaced from its minimum w* along the top eigenvector: the gradient
    H (w − w*), as in training, leans towards the top of the spectrum, which is close to the
    next eigenvalues (scale ``top`` = 1.3 against a bulk at most 1), where a random start is slow."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.cat([torch.tensor([top]), torch.linspace(1.0, 0.1, d - 1)]).double()
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    Y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    H = 2.0 / n * X.T @ X
    top = torch.linalg.eigh(H).eigenvectors[:, -1]
    w = torch.linalg.lstsq(X, Y).solution[:, 0] + top + 0.1 * torch.randn(d, generator=g, dtype=torch.float64) / d**0.5
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w.reshape(1, d))
    return model, [(X[i::4], Y[i::4]) for i in range(4)], H


def test_gradient_start_gives_the_same_top_pair_in_fewer_products():
    model, data, H = _trained_regression()
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data))
    top = float(torch.linalg.eigvalsh(H)[-1])
    cold = op.top_eigenvalues(k=1, tol=1e-6)
    warm = op.top_eigenvalues(k=1, tol=1e-6, warm_start="gradient")
    for res in (cold, warm):
        assert res.converged.all()
        assert res.values[0] == pytest.approx(top, rel=1e-9)
    assert warm.matvecs < cold.matvecs
    info = warm.settings["warm_start"]
    assert info["from"] == "gradient" and info["gradient_norm"] == pytest.approx(float(op.gradient().norm()))


def test_gradient_start_at_a_zero_gradient_is_the_random_start():
    model, data, H = _trained_regression()
    data = [(x, torch.zeros_like(y)) for x, y in data]
    with torch.no_grad():
        model.weight.zero_()                               # Y = X·0: the gradient is exactly zero
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data))
    cold = op.top_eigenvalues(k=2, tol=1e-8)
    warm = op.top_eigenvalues(k=2, tol=1e-8, warm_start="gradient")
    assert warm.settings["warm_start"]["gradient_norm"] == 0.0
    assert warm.matvecs == cold.matvecs
    np.testing.assert_allclose(warm.values, cold.values, rtol=1e-12)


# ------------------------------------------------------------------ tolerance on the values
def test_value_tolerance_reaches_the_eigenvalue_in_fewer_products():
    # a top eigenvalue that stands clear of the bulk (scale 2 against at most 1)
    model, data, H = _trained_regression(n=3000, d=300, top=2.0)
    ev = torch.linalg.eigvalsh(H)
    top, gap = float(ev[-1]), float(ev[-1] - ev[-2])
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data))
    pairs = op.top_eigenvalues(k=1, tol=1e-6)
    values = op.top_eigenvalues(k=1, tol=1e-6, tol_on="value")
    assert pairs.settings["tol_on"] == "residual" and values.settings["tol_on"] == "value"
    assert pairs.converged.all() and values.converged.all()
    for res in (pairs, values):
        assert abs(res.values[0] - top) <= 1e-6 * top
    assert values.matvecs < pairs.matvecs
    # the residual alone would not pass: the value is within tol through r²/gap (Kato-Temple,
    # which holds with the true gap)
    r = float(values.residuals[0])
    assert r > 1e-6 * top
    assert abs(values.values[0] - top) <= r * r / gap * (1 + 1e-9)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_value_tolerance_holds_on_every_case(case, which):
    op, H = _op(case)
    res = op.top_eigenvalues(k=3, which=which, tol=1e-8, tol_on="value")
    expected = _expected(H, 3, which)
    assert res.converged.all()
    err = np.abs(res.values - expected)
    assert np.all(err <= 1e-8 * np.abs(expected) + res.settings["atol"]), (err, expected)


def test_value_tolerance_gap_allows_for_unconverged_neighbours(monkeypatch):
    import importlib

    lanczos_module = importlib.import_module("landprobe.curvature.lanczos")
    # a classifier's top spectrum: nine outliers 2.04 ... 1.74 (spacing 0.0375), a bulk below 0.21
    g = torch.Generator().manual_seed(4)
    p = lp.probes.toys.least_squares_spectrum(torch.cat([torch.linspace(2.04, 1.74, 9), 0.21 * torch.rand(191, generator=g)]),
                                              seed=4)
    op = hessian(lp.LandscapeProbe(p["model"], p["loss_fn"], p["data"]))
    res = op.top_eigenvalues(k=1, tol=1e-3, seed=15, tol_on="value")
    assert res.converged.all() and abs(res.values[0] - 2.04) <= 1e-3 * 2.04
    # The bare distance to the nearest other Ritz value (residuals taken as 0) overstates the
    # gap while that neighbour is still climbing: the run stops early, more than 1% below the
    # top, and calls it converged.
    gaps = lanczos_module._gaps
    monkeypatch.setattr(lanczos_module, "_gaps", lambda th, idx, r: gaps(th, idx, np.zeros_like(r)))
    bare = op.top_eigenvalues(k=1, tol=1e-3, seed=15, tol_on="value")
    assert bare.converged.all() and abs(bare.values[0] - 2.04) > 1e-2 * 2.04
    assert bare.matvecs < res.matvecs


def test_value_tolerance_flags_a_run_cut_short():
    op, _ = _op(CASES[0])
    res = op.top_eigenvalues(k=1, tol=1e-8, max_iter=3, tol_on="value")
    assert res.converged.tolist() == [False] and res.matvecs == 3


def test_value_error_estimate_needs_a_known_gap():
    import importlib

    lanczos_module = importlib.import_module("landprobe.curvature.lanczos")
    errors = lanczos_module._value_errors(np.array([1.0, 0.1, 0.1, 0.2]), np.array([np.inf, 1.0, 0.0, 0.01]))
    # a lone Ritz value (infinite gap) or a zero gap: the residual; otherwise min(r, r²/gap)
    np.testing.assert_allclose(errors, [1.0, 0.01, 0.1, 0.2])


def test_value_tolerance_errors():
    op, _ = _op(CASES[0])
    with pytest.raises(ValueError, match="tol_on='values'; expected 'residual'"):
        op.top_eigenvalues(tol_on="values")
    with pytest.raises(ValueError, match="tol_on='value' needs method='lanczos'"):
        op.top_eigenvalues(tol_on="value", method="arpack")


# ------------------------------------------------------------------ progress
@pytest.fixture
def bars(monkeypatch):
    """Every Progress opened during the test: its desc, total, whether a bar was drawn, its
    updates and postfixes, and whether it was closed."""
    from landprobe.engine import Progress

    made = []
    init, update, set_, close = Progress.__init__, Progress.update, Progress.set, Progress.close

    def rec_init(self, desc, total=None, **kw):
        init(self, desc, total, **kw)
        self.log = {"desc": desc, "total": total, "drawn": self._bar is not None, "updates": [], "set": [],
                    "closed": False}
        made.append(self.log)

    def rec_update(self, n=1):
        self.log["updates"].append(n)
        update(self, n)

    def rec_set(self, **postfix):
        self.log["set"].append(postfix)
        set_(self, **postfix)

    def rec_close(self):
        self.log["closed"] = True
        close(self)

    for name, fn in [("__init__", rec_init), ("update", rec_update), ("set", rec_set), ("close", rec_close)]:
        monkeypatch.setattr(Progress, name, fn)
    return made


def test_spectra_draw_a_progress_bar_counting_every_product(bars, capsys):
    model, data, _ = _regression()
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data, progress=True))
    assert op.progress is True
    runs = [("Lanczos", op.n, lambda: op.top_eigenvalues(k=1, tol=1e-4)),       # converges early (4 of 6)
            ("Lanczos", 3, lambda: op.top_eigenvalues(k=1, tol=1e-10, max_iter=3)),  # stops unconverged
            ("ARPACK", None, lambda: op.top_eigenvalues(k=2, tol=1e-10, method="arpack")),
            ("ARPACK", None, lambda: op.top_eigenvalues(k=5, method="arpack")),   # k >= n - 1: dense
            ("Hutchinson", 70, lambda: op.trace("hutchinson", 70)),               # three chunks
            ("Hutch++", 40, lambda: op.trace("hutch++", 40)),
            ("SLQ", 3 * 5, lambda: op.density(steps=5, probes=3))]
    for desc, total, call in runs:
        bars.clear()
        res = call()
        products = res.settings["matvecs"] if desc == "SLQ" else res.matvecs
        assert len(bars) == 1, desc
        bar = bars[0]
        assert (bar["desc"], bar["total"], bar["drawn"], bar["closed"]) == (desc, total, True, True)
        assert sum(bar["updates"]) == products > 0, desc
        if desc in ("Lanczos", "SLQ"):
            assert bar["updates"] == [1] * products          # one update per Krylov step
        if desc == "Lanczos":
            assert bar["set"] and all(p["residual"] >= 0 for p in bar["set"])
            assert products < total or not res.converged.all()   # early stop: the bar closes short
    err = capsys.readouterr().err
    for desc in ("Lanczos", "ARPACK", "Hutchinson", "Hutch++", "SLQ"):
        assert f"{desc}:" in err                             # tqdm drew to standard error
    assert "product" in err


def test_warm_start_shows_the_subsample_run_as_its_own_bar(bars):
    model, data, _ = _regression()
    op = hessian(lp.LandscapeProbe(model, nn.MSELoss(), data, progress=True))
    res = op.top_eigenvalues(k=1, tol=1e-6, warm_start=0.25)
    assert [b["desc"] for b in bars] == ["Lanczos (25.0% of the data)", "Lanczos"]
    assert sum(bars[0]["updates"]) == res.settings["warm_start"]["matvecs"]
    assert sum(bars[1]["updates"]) == res.matvecs
    assert all(b["drawn"] and b["closed"] for b in bars)


def test_no_progress_bar_when_off_or_off_a_terminal(bars, capsys):
    model, data, _ = _regression()
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data, progress=False)
    op = hessian(probe)
    op.top_eigenvalues(k=1)
    probe.progress = None                                    # a terminal only: pytest captures stderr
    op.trace(matvecs=8)
    op.density(steps=3)
    assert len(bars) == 3 and not any(b["drawn"] for b in bars)
    assert capsys.readouterr().err == ""


def test_spectra_accept_an_operator_without_a_progress_setting(bars):
    class Diagonal:                                # n, dtype, device, a flat product; no progress
        n, dtype, device, settings = 6, torch.float64, torch.device("cpu"), {}

        def __init__(self):
            self.matvecs = 0
            self.d = torch.arange(1.0, 7.0, dtype=torch.float64)

        def _flat_matvec(self, v):
            self.matvecs += 1
            return self.d * v

        def to_param_vector(self, flat):
            return lp.ParamVector({"w": flat.clone()})

    op = Diagonal()
    res = top_eigenvalues(op, k=2, tol=1e-10)
    np.testing.assert_allclose(res.values, [6.0, 5.0], rtol=1e-10)
    est = hutchpp(op, matvecs=18)                   # s = 6 = n: exact
    assert math.isclose(est.value, 21.0, rel_tol=1e-12)
    spec = density(op, steps=6)
    assert math.isclose(spec.trace, 21.0, rel_tol=1e-10)
    assert [b["desc"] for b in bars] == ["Lanczos", "Hutch++", "SLQ"]
    assert not any(b["drawn"] for b in bars)
    assert [sum(b["updates"]) for b in bars] == [res.matvecs, est.matvecs, spec.settings["matvecs"]]


def test_least_squares_spectrum_has_the_given_hessian():
    ev = [5.0, 2.0, 2.0, 0.5, 0.0]
    p = lp.probes.toys.least_squares_spectrum(ev, seed=3)
    H = dense_hessian(p["model"], p["loss_fn"], p["data"])
    torch.testing.assert_close(H, p["hessian"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(torch.linalg.eigvalsh(H).flip(0).numpy(), ev, atol=1e-12)
    assert p["eigenvalues"].tolist() == sorted(ev, reverse=True)
    with pytest.raises(ValueError, match="eigenvalues="):
        lp.probes.toys.least_squares_spectrum([1.0, -1.0])
    with pytest.raises(ValueError, match="eigenvalues="):
        lp.probes.toys.least_squares_spectrum([[1.0]])

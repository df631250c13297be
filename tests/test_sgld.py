"""SGLD (landprobe.optim.SGLD) and the Langevin sampler (landprobe.generalization.langevin).

The optimizer: plain SGD bit for bit at beta = inf; the noise per group; the generator's
state in state_dict; the stationary law on a quadratic (against the exact stationary
covariance of the discretised chain) and on an asymmetric double well (against the Gibbs
share by quadrature). The sampler: the restore promise, thinning, running moments, the
documented seeds, save/load, and the effective sample size estimator.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from helpers import CASES, assert_same_snapshot, snapshot
from scipy import integrate, signal
from torch import nn

import landprobe as lp
from landprobe.generalization.bounds import BoundTracker
from landprobe.generalization.langevin import (
    LangevinSamples,
    effective_sample_size,
    langevin_sample,
)
from landprobe.optim import SGLD


# --------------------------------------------------------------------------- beta = inf is SGD
def _two_group_model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def _groups(model, lr0, lr1, wd0, wd1, **extra):
    return [{"params": model[0].parameters(), "lr": lr0, "weight_decay": wd0, **extra},
            {"params": model[2].parameters(), "lr": lr1, "weight_decay": wd1, **extra}]


@pytest.mark.parametrize("wd", [0.0, 3e-2], ids=["no-decay", "decay"])
def test_beta_inf_is_sgd_bit_for_bit(wd):
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)) for _ in range(4)]
    a, b = _two_group_model(), _two_group_model()
    sgld = SGLD(_groups(a, 0.1, 0.03, wd, 2 * wd, beta=float("inf")), lr=0.5, beta=float("inf"))
    sgd = torch.optim.SGD(_groups(b, 0.1, 0.03, wd, 2 * wd), lr=0.5, momentum=0.0)
    state = sgld.generator.get_state()
    for step in range(20):
        for model, opt in ((a, sgld), (b, sgd)):
            x, y = batches[step % 4]
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(sgld.generator.get_state(), state)          # no noise drawn


# --------------------------------------------------------------------------- the noise
def test_noise_of_each_group_is_sqrt_2_lr_over_beta_times_the_generator_draws():
    a, b = nn.Parameter(torch.zeros(3, 2, dtype=torch.float64)), nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = SGLD([{"params": [a], "lr": 0.5, "beta": 4.0}, {"params": [b], "lr": 0.02, "beta": 0.5}],
               lr=1.0, beta=1.0, generator=7)
    assert opt.generator.device == a.device
    a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    opt.step()
    ref = torch.Generator().manual_seed(7)                          # groups in order, one draw per tensor
    za = torch.randn(3, 2, generator=ref, dtype=torch.float64)
    zb = torch.randn(5, generator=ref, dtype=torch.float64)
    assert torch.equal(a.detach(), math.sqrt(2 * 0.5 / 4.0) * za)
    assert torch.equal(b.detach(), math.sqrt(2 * 0.02 / 0.5) * zb)


def test_a_parameter_without_gradient_is_skipped_and_draws_nothing():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = SGLD([a, b], lr=0.1, beta=1.0, generator=0)
    a.grad = torch.zeros(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2))
    z = torch.randn(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.detach(), torch.ones(2).add(z, alpha=math.sqrt(0.2)))


def test_drift_with_weight_decay_and_a_scheduler():
    w = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = SGLD([w], lr=0.1, beta=float("inf"), weight_decay=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    expected = 2.0
    for lr in (0.1, 0.05, 0.025):
        w.grad = torch.tensor([1.0], dtype=torch.float64)
        opt.step()
        sched.step()
        expected -= lr * (1.0 + 0.5 * expected)
        assert w.item() == pytest.approx(expected, rel=1e-15)


def test_generator_none_is_seeded_from_the_global_rng():
    def one_step():
        w = nn.Parameter(torch.zeros(4))
        opt = SGLD([w], lr=0.5, beta=1.0)
        w.grad = torch.zeros(4)
        opt.step()
        return w.detach().clone()
    torch.manual_seed(3)
    first = one_step()
    torch.manual_seed(3)
    assert torch.equal(one_step(), first)
    assert not torch.equal(one_step(), first)


def test_state_dict_round_trip_resumes_the_identical_noise():
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)

    def steps(opt, m, n):
        out = []
        for _ in range(n):
            opt.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            opt.step()
            out.append([p.detach().clone() for p in m.parameters()])
        return out
    opt = SGLD([{"params": [model.weight], "beta": 50.0}, {"params": [model.bias]}], lr=0.05, beta=10.0,
               weight_decay=1e-3, generator=123)
    steps(opt, model, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    reference = steps(opt, model, 5)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = nn.Linear(4, 2).double()
    fresh.load_state_dict(saved["model"])
    resumed = SGLD([{"params": [fresh.weight]}, {"params": [fresh.bias]}], lr=1.0, beta=1.0, generator=999)
    resumed.load_state_dict(saved["opt"])
    assert [g["beta"] for g in resumed.param_groups] == [50.0, 10.0]
    again = steps(resumed, fresh, 5)
    for ref_step, new_step in zip(reference, again):
        for p, q in zip(ref_step, new_step):
            assert torch.equal(p, q)


def test_a_deep_copy_or_a_pickle_continues_the_same_noise_independently():
    w = nn.Parameter(torch.zeros(3))
    opt = SGLD([w], lr=0.5, beta=1.0, generator=4)
    twin = copy.deepcopy(opt)
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    thawed = torch.load(buffer, weights_only=False)
    w.grad = torch.zeros(3)
    opt.step()
    for other in (twin, thawed):
        assert other.generator is not opt.generator
        p = other.param_groups[0]["params"][0]
        p.grad = torch.zeros(3)
        p.data.zero_()
        other.step()
        assert torch.equal(p.detach(), w.detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_lives_on_the_parameters_cuda_device():
    w = nn.Parameter(torch.zeros(3, device="cuda"))
    opt = SGLD([w], lr=0.1, beta=1.0, generator=0)
    assert opt.generator.device.type == "cuda"
    w.grad = torch.zeros_like(w)
    opt.step()
    ref = torch.randn(3, generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
    assert torch.equal(w.detach(), ref.mul(math.sqrt(0.2)))
    with pytest.raises(ValueError, match="generator is on cpu"):
        SGLD([w], lr=0.1, beta=1.0, generator=torch.Generator())


def test_argument_errors():
    w = nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="lr=-0.1"):
        SGLD([w], lr=-0.1, beta=1.0)
    for beta in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="beta="):
            SGLD([w], lr=0.1, beta=beta)
    with pytest.raises(ValueError, match="weight_decay=-1"):
        SGLD([w], lr=0.1, beta=1.0, weight_decay=-1)
    with pytest.raises(ValueError, match="beta=0"):
        SGLD([{"params": [w], "beta": 0}], lr=0.1, beta=1.0)
    with pytest.raises(TypeError, match="generator has type str"):
        SGLD([w], lr=0.1, beta=1.0, generator="0")
    with pytest.raises(ValueError, match="parameters are on cpu and meta"):
        SGLD([w, nn.Parameter(torch.zeros(1, device="meta"))], lr=0.1, beta=1.0)
    opt = SGLD([w], lr=0.1, beta=1.0, generator=0)
    with pytest.raises(ValueError, match="no 'generator' entry"):
        opt.load_state_dict(torch.optim.SGD([w], lr=0.1).state_dict())


# --------------------------------------------------------------------------- the stationary law
def test_quadratic_covariance_matches_the_discretised_chain_and_the_gibbs_law():
    """F(w) = w^T A w / 2 in 4-d, eigenvalues 0.5 .. 4. With exact gradients the chain is
    w' = M w + sqrt(2 eta / beta) z, M = I - eta A, whose stationary covariance solves
    S = M S M + (2 eta / beta) I: S = (beta (A - eta A^2 / 2))^-1 = (beta A)^-1 (1 + O(eta)).
    500 independent chains start exactly stationary (no burn-in) and run 2000 steps; each
    entry of the sample covariance (mean known: 0) is compared with S at 5 standard
    deviations, the standard deviation computed exactly for a stationary Gaussian VAR(1):
    Var = (1 / (C T^2)) sum_{|l| < T} (T - |l|) (S_ii(l) S_jj(l) + S_ij(l)^2), S(l) = M^|l| S.
    (Over ten noise seeds the largest of the 16 deviations was 1.1 to 2.5 standard
    deviations from S, and 4.4 to 7.5 from (beta A)^-1: the test resolves the O(eta) bias.)"""
    beta, eta, chains, steps = 2.0, 0.02, 500, 2000
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    a = np.array([0.5, 1.0, 2.0, 4.0])
    A = q @ np.diag(a) @ q.T
    s = 1.0 / (beta * (a - eta * a**2 / 2))                         # eigenvalues of S
    S = q @ np.diag(s) @ q.T
    gibbs = np.linalg.inv(beta * A)

    A_t = torch.tensor(A)
    z0 = torch.randn(chains, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = nn.Parameter(z0 @ torch.linalg.cholesky(torch.tensor(S)).T)
    opt = SGLD([w], lr=eta, beta=beta, generator=2)
    acc = torch.zeros(4, 4, dtype=torch.float64)
    for _ in range(steps):
        w.grad = w.detach() @ A_t
        opt.step()
        acc += w.detach().T @ w.detach()
    cov = (acc / (chains * steps)).numpy()

    lags = np.arange(steps)
    lagged = np.einsum("ik,jk,lk->lij", q, q, (1 - eta * a)[None, :] ** lags[:, None] * s)   # S(l)
    d = np.einsum("lii->li", lagged)
    terms = d[:, :, None] * d[:, None, :] + lagged**2
    weights = np.where(lags == 0, steps, 2.0 * (steps - lags))
    sd = np.sqrt(np.einsum("l,lij->ij", weights, terms) / (chains * steps**2))
    assert np.all(np.abs(cov - S) <= 5 * sd), (cov, S, sd)
    assert np.max(sd / np.abs(S).max()) < 0.02                      # the check is tight: 2% of the scale
    # the Gibbs law (beta A)^-1, up to the O(eta) bias of the discretisation (4% at eta * a = 0.08)
    assert np.all(np.abs(cov - gibbs) <= 5 * sd + np.abs(S - gibbs))
    assert np.abs(S - gibbs).max() / np.abs(gibbs).max() < eta * a.max()


def test_double_well_share_of_time_matches_the_gibbs_ratio():
    """F(w) = (w^2 - 1)^2 + 0.3 w: the left well is deeper. The share of time left of the
    barrier top w* (the middle root of F') is compared with the Gibbs share by quadrature of
    exp(-beta F). 2000 independent chains start from the Gibbs law (inverse CDF on a grid)
    and run 2000 steps; the standard error is that of the mean of the chains' shares (the
    chains are independent). The discretisation bias at eta = 0.01 (the stationary law of
    the discretised kernel, by power iteration on a grid) is -8e-4, against a standard error
    of about 0.006."""
    beta, eta, tilt, chains, steps = 3.0, 0.01, 0.3, 2000, 2000
    F = lambda x: (x * x - 1) ** 2 + tilt * x
    w_star = np.sort(np.roots([4.0, 0.0, -4.0, tilt]).real)[1]
    left = integrate.quad(lambda x: math.exp(-beta * F(x)), -np.inf, w_star)[0]
    right = integrate.quad(lambda x: math.exp(-beta * F(x)), w_star, np.inf)[0]
    p_gibbs, ratio_gibbs = left / (left + right), left / right

    grid = np.linspace(-3.0, 3.0, 20001)
    cdf = integrate.cumulative_trapezoid(np.exp(-beta * F(grid)), grid, initial=0.0)
    u = np.random.default_rng(5).uniform(size=chains)
    w = nn.Parameter(torch.tensor(np.interp(u * cdf[-1], cdf, grid)))
    opt = SGLD([w], lr=eta, beta=beta, generator=6)
    inside = torch.zeros(chains, dtype=torch.float64)
    for _ in range(steps):
        x = w.detach()
        w.grad = 4 * x**3 - 4 * x + tilt
        opt.step()
        inside += (w.detach() < w_star).double()
    share = (inside / steps).numpy()
    p_hat, se = share.mean(), share.std(ddof=1) / math.sqrt(chains)
    assert abs(p_hat - p_gibbs) <= 4 * se, (p_hat, p_gibbs, se)
    assert se < 0.01
    ratio_hat, ratio_se = p_hat / (1 - p_hat), se / (1 - p_gibbs) ** 2     # delta method
    assert abs(ratio_hat - ratio_gibbs) <= 4 * ratio_se
    assert ratio_gibbs > 4                                                  # the wells differ


# --------------------------------------------------------------------------- effective sample size
def _ar1(rho, n, chains, seed):
    e = np.random.default_rng(seed).standard_normal((n, chains))
    e[0] /= math.sqrt(1 - rho**2)                                   # start stationary
    return signal.lfilter([1.0], [1.0, -rho], e, axis=0)


def test_ess_of_independent_draws_is_close_to_their_number():
    """50 chains of 20,000: Geyer's estimator has a spread of about 3% per chain, 0.4% for
    the mean, and a small downward bias (about 1%); tolerance 3%."""
    ratio = effective_sample_size(_ar1(0.0, 20_000, 50, 0)) / 20_000
    assert abs(ratio.mean() - 1) < 0.03
    assert effective_sample_size(np.arange(10.0) * 0 + 1) != effective_sample_size(np.arange(10.0) * 0 + 1)  # NaN


def test_ess_of_an_ar1_chain_is_close_to_n_1_minus_rho_over_1_plus_rho():
    """rho = 0.9: theory n (1 - rho) / (1 + rho) = 1052.6 for n = 20,000. Over 50 chains the
    estimator's spread is about 8% per chain, 1.1% for the mean, its truncation bias about
    2%; tolerance 5% for the mean, 30% for every chain."""
    n, rho = 20_000, 0.9
    ratio = effective_sample_size(_ar1(rho, n, 50, 1)) / (n * (1 - rho) / (1 + rho))
    assert abs(ratio.mean() - 1) < 0.05
    assert np.all(np.abs(ratio - 1) < 0.3)
    one = _ar1(rho, n, 1, 2)[:, 0]
    assert isinstance(effective_sample_size(one), float)


def test_ess_rejects_an_empty_chain():
    with pytest.raises(ValueError, match="non-empty chain"):
        effective_sample_size([])


# --------------------------------------------------------------------------- the sampler
def _line_probe(n_batches=2):
    """L(w) = mean over samples of (w x - y)^2 on a one-weight linear model, float64."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    g = torch.Generator().manual_seed(4)
    data = [(torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 1, generator=g, dtype=torch.float64))
            for _ in range(n_batches)]
    return model, data, lp.LandscapeProbe(model, nn.MSELoss(), data)


def test_sampler_equals_sgld_in_a_plain_loop_with_the_documented_seeds():
    model, data, probe = _line_probe()
    r = langevin_sample(probe, lr=0.05, beta=20.0, steps=12, burn_in=3, thin=2, weight_decay=0.01, seed=11)
    seeds = [int(s) for s in np.random.SeedSequence(11).generate_state(3)]
    hand = copy.deepcopy(model)
    opt = SGLD(hand.parameters(), lr=0.05, beta=20.0, weight_decay=0.01,
               generator=torch.Generator().manual_seed(seeds[0]))
    kept, losses = [], []
    for k in range(1, 16):
        x, y = data[(k - 1) % len(data)]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(hand(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if k > 3 and (k - 3) % 2 == 0:
            kept.append(torch.cat([p.detach().reshape(-1) for p in hand.parameters()]))
    assert r.count == 6 and r.sample_steps.tolist() == [5, 7, 9, 11, 13, 15]
    assert torch.equal(r.samples, torch.stack(kept))
    assert r.losses.tolist() == losses
    assert r.names == ["weight", "bias"] and r.shapes == [[1, 3], [1]]


def test_running_moments_equal_the_moments_of_the_kept_samples():
    _, _, probe = _line_probe()
    r = langevin_sample(probe, lr=0.05, beta=5.0, steps=200, thin=3)
    torch.testing.assert_close(r.mean, r.samples.mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(r.var, r.samples.var(0), rtol=1e-10, atol=1e-14)
    moments = langevin_sample(probe, lr=0.05, beta=5.0, steps=200, thin=3, keep="moments")
    assert moments.samples is None and moments.count == 66
    assert torch.equal(moments.mean, r.mean) and torch.equal(moments.var, r.var)
    assert r.mean_params()["weight"].shape == (1, 3)


def test_sampler_ess_of_independent_iterates_is_close_to_their_count():
    """L(w) = w^2 and lr = 1 / L'' = 0.5: each iterate is pure noise, N(0, 1 / beta)."""
    model = nn.Linear(1, 1, bias=False).double()
    data = [(torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))]
    r = langevin_sample(lp.LandscapeProbe(model, nn.MSELoss(), data), lr=0.5, beta=4.0, steps=1000)
    assert 0.85 < r.ess[0] / r.count < 1.15
    assert abs(r.var.item() - 0.25) < 5 * 0.25 * math.sqrt(2 / 1000)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_sampler_restores_the_model_after_a_run(case):
    model, data = case.build()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad.clone() for p in model.parameters()]
    model.eval()
    before = snapshot(model)
    r = langevin_sample(lp.LandscapeProbe(model, case.loss_fn, data), lr=0.01, beta=100.0, steps=6, thin=2)
    assert r.count == 3
    assert_same_snapshot(before, snapshot(model))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt], ids=["exception", "keyboard"])
def test_sampler_restores_the_model_when_interrupted(exc):
    model, _ = CASES[1].build()                         # conv + BatchNorm: buffers move in train mode
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 1, 6, 6),
                                                                        torch.randn(12, 1, 6, 6)),
                                         batch_size=4, shuffle=True)
    calls = []

    def loss(out, y):
        calls.append(1)
        if len(calls) == 5:
            raise exc("stop")
        return nn.functional.mse_loss(out, y)
    before = snapshot(model)
    with pytest.raises(exc):
        langevin_sample(lp.LandscapeProbe(model, loss, loader), lr=0.01, beta=10.0, steps=10)
    assert_same_snapshot(before, snapshot(model))
    assert all(p.grad is None for p in model.parameters())


def test_sampler_feeds_a_bound_tracker_per_epoch():
    *_, probe = _line_probe(n_batches=4)
    tracker = BoundTracker(beta=20.0, n=24, lipschitz=0.5, lam=0.01)
    r = langevin_sample(probe, lr=0.05, beta=20.0, steps=10, tracker=tracker, weight_decay=0.01)
    trace = tracker.trace()
    assert tracker.steps == 10
    assert trace.epochs.tolist() == [1.0, 2.0, 2.5]                 # 4 batches per epoch; a half epoch last
    reference = BoundTracker(beta=20.0, n=24, lipschitz=0.5, lam=0.01)
    for g2 in r.grad_norms_sq:
        reference.step(0.05, g2)
    assert trace.pac_bayes[-1] == reference.pac_bayes_term
    assert trace.stability[-1] == pytest.approx(math.sqrt(20.0 * 0.05 * 10), rel=1e-14)   # eta beta L^2 = 0.25: k0 = 1


def test_sampler_with_a_schedule_and_a_subnet():
    model, _, probe = _line_probe()
    bias = model.bias.detach().clone()
    tracker = BoundTracker(beta=10.0, n=12)
    r = langevin_sample(probe, lr=lambda k: 0.1 / k, beta=10.0, steps=4, subnet="weight", tracker=tracker,
                        steps_per_epoch=2)
    assert r.names == ["weight"] and r.samples.shape == (4, 3)
    assert tracker.total_time == pytest.approx(0.1 * (1 + 1 / 2 + 1 / 3 + 1 / 4), rel=1e-14)
    assert r.settings["lr"] == "schedule"
    assert torch.equal(model.bias, bias) and model.bias.requires_grad and model.bias.grad is None


def test_result_saves_json_and_tensors_and_loads_them(tmp_path):
    _, _, probe = _line_probe()
    r = langevin_sample(probe, lr=0.05, beta=5.0, steps=20, burn_in=5, thin=5)
    path = r.save(tmp_path / "chain.json")
    assert path.exists() and (tmp_path / "chain.pt").exists()
    back = LangevinSamples.load(path)
    assert torch.equal(back.samples, r.samples) and torch.equal(back.mean, r.mean) and torch.equal(back.var, r.var)
    np.testing.assert_array_equal(back.losses, r.losses)
    np.testing.assert_array_equal(back.ess, r.ess)
    assert back.count == 4 and back.settings["beta"] == 5.0 and back.names == r.names
    assert back.plot().get_xlabel() == "step"
    (tmp_path / "chain.pt").unlink()
    assert LangevinSamples.load(path).mean is None
    with pytest.raises(ValueError, match="holds no mean"):
        LangevinSamples.load(path).mean_params()


def test_sampler_argument_errors():
    model, _, probe = _line_probe()
    with pytest.raises(ValueError, match="keep='all'"):
        langevin_sample(probe, lr=0.1, beta=1.0, steps=1, keep="all")
    with pytest.raises(ValueError, match="thin=0"):
        langevin_sample(probe, lr=0.1, beta=1.0, steps=1, thin=0)
    with pytest.raises(ValueError, match="steps=0"):
        langevin_sample(probe, lr=0.1, beta=1.0, steps=0)
    with pytest.raises(ValueError, match="beta=0"):
        langevin_sample(probe, lr=0.1, beta=0, steps=1)
    with pytest.raises(ValueError, match="lr=-1"):
        langevin_sample(probe, lr=-1, beta=1.0, steps=1)
    with pytest.raises(ValueError, match=r"lr\(2\)"):
        langevin_sample(probe, lr=lambda k: 0.1 if k == 1 else -1.0, beta=1.0, steps=3)
    with pytest.raises(TypeError, match="tracker has type dict"):
        langevin_sample(probe, lr=0.1, beta=1.0, steps=1, tracker={})
    model.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        langevin_sample(probe, lr=0.1, beta=1.0, steps=1, subnet="weight")

"""The bound tracker (stability and PAC-Bayes terms) and the two-phase bound, by hand and
against a direct float64 transcription of the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from landprobe.generalization.bounds import (
    BoundTrace,
    BoundTracker,
    TwoPhaseBound,
    grad_norm_sq,
    two_phase_bound,
)


def direct_terms(etas, g2, beta, n, lipschitz, lam):
    """The two terms after the last step, summed as written (no recursion)."""
    etas, g2 = np.asarray(etas, dtype=np.float64), np.asarray(g2, dtype=np.float64)
    T = np.cumsum(etas)
    pac = math.sqrt(beta / n * np.sum(etas * np.exp(-lam * (T[-1] - T) / 2) * g2))
    below = np.nonzero(etas * beta * lipschitz**2 < 1)[0]
    stab = math.sqrt(beta * etas[below[0]:].sum()) if below.size else float("nan")
    return (int(below[0]) + 1 if below.size else None), stab, pac


def test_hand_computed_sequence():
    """eta = 0.5, 0.25, 0.1 with beta = 4, L = 1: eta beta L^2 = 2, 1, 0.4, so k0 = 3 (1 is not
    < 1) and the stability term is sqrt(4 * 0.1). PAC-Bayes with lambda = 2, n = 100,
    ||g||^2 = 1, 4, 9: T = 0.5, 0.75, 0.85, sum = 0.5 e^-0.35 + 0.25 * 4 e^-0.1 + 0.1 * 9."""
    tr = BoundTracker(beta=4.0, n=100, lipschitz=1.0, lam=2.0)
    tr.step(0.5, 1.0)
    tr.step(0.25, torch.tensor(4.0))
    assert tr.k0 is None and math.isnan(tr.stability_term)
    tr.step(0.1, 9.0)
    assert tr.k0 == 3
    assert tr.stability_term == pytest.approx(math.sqrt(0.4), rel=1e-15)
    total = 0.5 * math.exp(-0.35) + 0.25 * 4 * math.exp(-0.1) + 0.1 * 9
    assert total == pytest.approx(2.157181, abs=1e-6)
    assert tr.pac_bayes_term == pytest.approx(math.sqrt(4 / 100 * total), rel=1e-14)
    assert tr.pac_bayes_term == pytest.approx(0.293747, abs=1e-6)
    tr.step(0.2, 1.0)                                   # k0 stays; the sum includes every later step
    assert tr.k0 == 3 and tr.stability_term == pytest.approx(math.sqrt(4 * 0.3), rel=1e-14)


def test_recursion_equals_the_sum_as_written_on_a_long_sequence():
    rng = np.random.default_rng(0)
    etas = np.concatenate([np.full(50, 0.3), 0.3 / np.sqrt(1 + np.arange(500))])
    g2 = rng.exponential(2.0, size=etas.size)
    tr = BoundTracker(beta=8.0, n=1000, lipschitz=1.2, lam=0.7)
    for e, g in zip(etas, g2):
        tr.step(float(e), float(g))
    k0, stab, pac = direct_terms(etas, g2, 8.0, 1000, 1.2, 0.7)
    assert tr.k0 == k0
    assert tr.stability_term == pytest.approx(stab, rel=1e-12)
    assert tr.pac_bayes_term == pytest.approx(pac, rel=1e-12)
    assert tr.total_time == pytest.approx(etas.sum(), rel=1e-12)


def test_epochs_trace_save_load_and_plot(tmp_path):
    tr = BoundTracker(beta=2.0, n=10, lipschitz=0.5)
    for epoch in (1, 2):
        for g in (1.0, 3.0):
            tr.step(0.5, g)
        record = tr.epoch_end(epoch)
        assert record["grad_norm_sq"] == 2.0 and record["steps"] == 2 * epoch
    assert math.isnan(tr.epoch_end()["grad_norm_sq"])   # an empty epoch, labelled 3
    trace = tr.trace(run="test")
    assert trace.epochs.tolist() == [1.0, 2.0, 3.0] and trace.k0.tolist() == [1.0, 1.0, 1.0]
    assert trace.stability.tolist() == pytest.approx([math.sqrt(2 * 1.0), math.sqrt(2 * 2.0), math.sqrt(2 * 2.0)])
    assert trace.pac_bayes[1] == pytest.approx(math.sqrt(2 / 10 * 0.5 * 8), rel=1e-14)
    assert trace.settings == {"beta": 2.0, "n": 10, "lipschitz": 0.5, "lam": 0.0, "run": "test"}
    back = BoundTrace.load(trace.save(tmp_path / "bounds.json"))
    np.testing.assert_array_equal(back.pac_bayes, trace.pac_bayes)
    np.testing.assert_array_equal(back.grad_norm_sq, trace.grad_norm_sq)
    assert back.final()["stability"] == trace.final()["stability"]
    assert back.plot().get_ylabel() == "bound term"
    assert BoundTracker(beta=1.0, n=1).trace().final() == {}


def test_undefined_k0_and_infinite_beta():
    tr = BoundTracker(beta=1.0, n=5)                    # no Lipschitz constant: no stability term
    tr.step(0.1, 1.0)
    assert tr.k0 is None and math.isnan(tr.stability_term)
    sgd = BoundTracker(beta=float("inf"), n=5, lipschitz=1.0)
    sgd.step(0.1, 1.0)
    assert sgd.k0 is None and math.isnan(sgd.stability_term) and sgd.pac_bayes_term == math.inf
    assert BoundTracker(beta=1.0, n=5).pac_bayes_term == 0.0


def test_state_dict_resumes_the_tracker():
    a = BoundTracker(beta=3.0, n=7, lipschitz=0.2, lam=0.1)
    for g in (1.0, 2.0):
        a.step(0.2, g)
    a.epoch_end()
    b = BoundTracker(beta=3.0, n=7, lipschitz=0.2, lam=0.1)
    b.load_state_dict(a.state_dict())
    for t in (a, b):
        t.step(0.1, 5.0)
        t.epoch_end()
    assert a.trace().to_dict() == b.trace().to_dict()
    with pytest.raises(ValueError, match="same beta, n, lipschitz and lam"):
        BoundTracker(beta=3.0, n=8).load_state_dict(a.state_dict())


def test_tracker_argument_errors():
    with pytest.raises(ValueError, match="beta=0"):
        BoundTracker(beta=0, n=1)
    with pytest.raises(ValueError, match="n=0"):
        BoundTracker(beta=1.0, n=0)
    with pytest.raises(ValueError, match="lipschitz=-1"):
        BoundTracker(beta=1.0, n=1, lipschitz=-1)
    with pytest.raises(ValueError, match="lam=-0.5"):
        BoundTracker(beta=1.0, n=1, lam=-0.5)
    tr = BoundTracker(beta=1.0, n=1)
    with pytest.raises(ValueError, match="lr=-0.1"):
        tr.step(-0.1, 1.0)
    with pytest.raises(ValueError, match="grad_norm_sq=nan.*diverged"):
        tr.step(0.1, float("nan"))
    assert tr.steps == 0


def test_grad_norm_sq_sums_the_gradients_in_float64():
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(3))
    assert grad_norm_sq([a, b]) == 0.0
    a.grad = torch.full((2, 2), 0.5)
    b.grad = torch.tensor([1.0, 2.0, 2.0])
    assert grad_norm_sq([a, b]) == 1.0 + 9.0


# --------------------------------------------------------------------------- two-phase bound
@pytest.mark.parametrize("c, extra, parts", [(0.5, 0.2408, (0.2357, 0.0051)), (0.1, 0.0145, (0.0094, 0.0051))])
def test_two_phase_bound_reproduces_the_worked_numbers(c, extra, parts):
    """m = 50,000, d_y = 10, rho = 1, alpha = 0.1, delta = 0.1: m_sigma = 45,000,
    2 * 100 * c^2 / sqrt(45000) + sqrt(ln 10 / 90000)."""
    out = two_phase_bound(0.02, m=50_000, alpha=0.1, d_y=10, c_sigma=c, c_w=c, rho=1.0, delta=0.1)
    assert isinstance(out, TwoPhaseBound)
    assert round(out.extra, 4) == extra
    assert round(2 * 100 * c * c / math.sqrt(45_000), 4) == parts[0]
    assert round(math.sqrt(math.log(10) / 90_000), 4) == parts[1]
    assert out.bound == pytest.approx(0.02 + out.extra, rel=1e-15)
    bound, more = out
    assert (bound, more) == (out.bound, out.extra)


def test_two_phase_bound_argument_errors():
    ok = {"r_hat": 0.0, "m": 100, "alpha": 0.1, "d_y": 2, "c_sigma": 1.0, "c_w": 1.0, "rho": 1.0, "delta": 0.1}
    for name, bad, match in [("m", 0, "m=0"), ("alpha", 1.0, "alpha=1.0"), ("alpha", -0.1, "alpha=-0.1"),
                             ("d_y", 0, "d_y=0"), ("c_sigma", -1.0, "c_sigma=-1.0"), ("rho", 0.0, "rho=0.0"),
                             ("delta", 1.0, "delta=1.0"), ("delta", 0.0, "delta=0.0"),
                             ("r_hat", float("nan"), "r_hat=nan")]:
        with pytest.raises(ValueError, match=match):
            two_phase_bound(**{**ok, name: bad})

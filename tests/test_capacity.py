"""Capacity measures against closed forms, brute force and hand computations (float64)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from landprobe.capacity import (
    CapacityReport, activation_sparseness, conv_operator_norm, epsilon_sharpness, fisher_rao_norm,
    fraction_near_zero, gaussian_noise, hoyer, pac_bayes_sigma, path_norm, radial_derivative, report,
    spectral_complexity, spectral_norm, subnet_norms, treves_rolls,
)

D = torch.float64


def relu_net(sizes, bias=True, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(D)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def rescale(net, layer, c):
    """Multiply Linear ``layer`` (weight and bias) by c and the next Linear's weight by 1/c."""
    lin = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        lin[layer].weight.mul_(c)
        if lin[layer].bias is not None:
            lin[layer].bias.mul_(c)
        lin[layer + 1].weight.div_(c)


class Point(nn.Module):
    """A model whose output is its parameter vector: loss_fn sees θ itself."""

    def __init__(self, theta):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(theta, dtype=D).clone())

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


def quadratic(a):
    a = torch.as_tensor(a, dtype=D)
    return lambda out, y: 0.5 * (a * out[0] ** 2).sum()


ONE = [(torch.zeros(1, 1, dtype=D), torch.zeros(1, 1, dtype=D))]


# ----------------------------------------------------------------------------- Fisher–Rao
@pytest.mark.parametrize("hidden", [0, 1, 2, 3])
def test_homogeneity_of_bias_free_relu_nets(hidden):
    net = relu_net([4] + [5] * hidden + [3], bias=False)
    x = torch.randn(7, 4, dtype=D)
    f, d = radial_derivative(net, x)
    torch.testing.assert_close(d, (hidden + 1) * f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f, net(x).detach(), rtol=0, atol=0)


def test_homogeneity_per_layer_sums_to_L_plus_1():
    net = relu_net([3, 4, 4, 2], bias=False)               # L = 2: each layer's share is f
    x = torch.randn(6, 3, dtype=D)
    total = torch.zeros(6, 2, dtype=D)
    for name in ["0", "2", "4"]:
        _, d = radial_derivative(net, x, subnet=name)
        torch.testing.assert_close(d, net(x).detach(), rtol=1e-12, atol=1e-12)
        total += d
    torch.testing.assert_close(total, 3 * net(x).detach(), rtol=1e-12, atol=1e-12)


def per_sample_fr(net, loss_fn, data, names=None):
    """Brute force: reverse-mode gradient of each sample's loss, dotted with θ."""
    params = dict(net.named_parameters())
    names = names or list(params)
    vals = []
    for x, y in data:
        for i in range(x.shape[0]):
            loss = loss_fn(net(x[i:i + 1]), y[i:i + 1])
            g = torch.autograd.grad(loss, [params[n] for n in names])
            vals.append(sum((gi * params[n]).sum() for gi, n in zip(g, names)).item())
    return math.sqrt(np.mean(np.square(vals)))


def test_fisher_rao_closed_form_bias_free():
    net = relu_net([3, 5, 4, 2], bias=False)              # L = 2 hidden layers
    x, y = torch.randn(9, 3, dtype=D), torch.randn(9, 2, dtype=D)
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    before = state(net)
    fr = fisher_rao_norm(net, nn.MSELoss(), data)
    f = net(x).detach()
    dl_df = 2 * (f - y) / 2                                  # per-sample MSE: mean over K = 2 outputs
    closed = 3 * math.sqrt(float(((dl_df * f).sum(1) ** 2).mean()))
    assert fr == pytest.approx(closed, rel=1e-10)
    assert fisher_rao_norm(net, nn.MSELoss(), data, squared=True) == pytest.approx(closed**2, rel=1e-10)
    assert_unchanged(net, before)


def test_fisher_rao_matches_per_sample_gradients_with_biases_and_subnet():
    net = relu_net([3, 4, 3], bias=True)
    x, y = torch.randn(8, 3, dtype=D), torch.randint(0, 3, (8,))
    data = [(x[:5], y[:5]), (x[5:], y[5:])]
    ce = nn.CrossEntropyLoss()
    assert fisher_rao_norm(net, ce, data) == pytest.approx(per_sample_fr(net, ce, data), rel=1e-10)
    sub = fisher_rao_norm(net, ce, data, subnet="2")
    assert sub == pytest.approx(per_sample_fr(net, ce, data, ["2.weight", "2.bias"]), rel=1e-10)


# ----------------------------------------------------------------------------- path norms
def brute_path_norm(net, p):
    """Enumerate every input→output path (bias units included) of a 2-3-2-1 net."""
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight.detach(), m.bias.detach()) for m in net if isinstance(m, nn.Linear)]
    total = 0.0
    for i, j, k in itertools.product(range(2), range(3), range(2)):      # input i -> j -> k -> out
        total += float(abs(w1[j, i] * w2[k, j] * w3[0, k]) ** p)
    for j, k in itertools.product(range(3), range(2)):                   # bias unit of layer 1
        total += float(abs(b1[j] * w2[k, j] * w3[0, k]) ** p)
    for k in range(2):                                                   # bias unit of layer 2
        total += float(abs(b2[k] * w3[0, k]) ** p)
    total += float(abs(b3[0]) ** p)
    return total ** (1 / p)


@pytest.mark.parametrize("p", [1, 2])
def test_path_norm_against_enumeration(p):
    net = relu_net([2, 3, 2, 1], bias=True, seed=3)
    before = state(net)
    assert path_norm(net, p) == pytest.approx(brute_path_norm(net, p), rel=1e-12)
    assert_unchanged(net, before)


@pytest.mark.parametrize("p", [1, 2])
def test_path_norm_and_fisher_rao_invariant_under_rescaling(p):
    net = relu_net([3, 4, 4, 2], bias=True, seed=1)
    x, y = torch.randn(6, 3, dtype=D), torch.randn(6, 2, dtype=D)
    pn, fr = path_norm(net, p), fisher_rao_norm(net, nn.MSELoss(), [(x, y)])
    l2 = subnet_norms(net)["model"]["l2"]
    rescale(net, 0, 3.0)
    rescale(net, 1, 0.25)
    assert path_norm(net, p) == pytest.approx(pn, rel=1e-12)
    assert fisher_rao_norm(net, nn.MSELoss(), [(x, y)]) == pytest.approx(fr, rel=1e-10)
    assert abs(subnet_norms(net)["model"]["l2"] - l2) > 0.1 * l2


def test_path_norm_conv_input_shape_and_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1, bias=False)).to(D)
    w1, w2 = net[0].weight.detach(), net[2].weight.detach()
    # on a 1x1 input only the centre tap of the 3x3 kernel touches the pixel
    expected = math.sqrt(sum(float((w1[c, 0, 1, 1] * w2[0, c, 0, 0]) ** 2) for c in range(2)))
    assert path_norm(net, 2, input_shape=(1, 1, 1)) == pytest.approx(expected, rel=1e-12)
    pair = nn.Sequential(net)
    pair.forward = lambda x: (x, net(x))                     # a model with two outputs
    assert path_norm(pair, 2, input_shape=(1, 1, 1), output=lambda o: o[1]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(TypeError, match="not a tensor"):
        path_norm(pair, 2, input_shape=(1, 1, 1))
    with pytest.raises(ValueError, match="cannot infer the input shape"):
        path_norm(net, 2)


def test_path_norm_errors():
    net = relu_net([2, 2, 1])
    with pytest.raises(ValueError, match="p=0.5"):
        path_norm(net, 0.5)
    with pytest.raises(ValueError, match="BatchNorm"):
        path_norm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), 2)
    with pytest.raises(TypeError, match="instantiate it"):
        path_norm(nn.Linear, 2)
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        path_norm("net", 2)


# ----------------------------------------------------------------------------- spectral
def test_spectral_complexity_against_numpy():
    net = relu_net([4, 6, 3], bias=True, seed=2)
    A = [net[0].weight.detach().numpy(), net[2].weight.detach().numpy()]
    rng = np.random.default_rng(0)
    M = [rng.normal(size=a.shape) for a in A]

    def hand(refs):
        s = [np.linalg.svd(a, compute_uv=False)[0] for a in A]
        l21 = [np.linalg.norm((a - m).T, axis=0).sum() for a, m in zip(A, refs)]   # columns of (A - M)^T
        return np.prod(s) * sum(l ** (2 / 3) / si ** (2 / 3) for l, si in zip(l21, s)) ** 1.5

    assert spectral_complexity(net) == pytest.approx(hand([np.zeros_like(a) for a in A]), rel=1e-12)
    ref = {"0.weight": torch.from_numpy(M[0]), "2.weight": torch.from_numpy(M[1]),
           "0.bias": torch.zeros(6, dtype=D), "2.bias": torch.zeros(3, dtype=D)}
    assert spectral_complexity(net, reference=ref) == pytest.approx(hand(M), rel=1e-12)
    sub = spectral_complexity(net, subnet="2", lipschitz=2.0)
    s2 = np.linalg.svd(A[1], compute_uv=False)[0]
    assert sub == pytest.approx(2 * s2 * (np.linalg.norm(A[1], axis=1).sum() ** (2 / 3) / s2 ** (2 / 3)) ** 1.5, rel=1e-12)


def test_spectral_complexity_errors():
    net = relu_net([2, 2, 1])
    with pytest.raises(ValueError, match="no parameter with 2 or more dimensions"):
        spectral_complexity(net, subnet="*.bias")
    with pytest.raises(ValueError, match="lipschitz=0"):
        spectral_complexity(net, lipschitz=0)
    with pytest.raises(ValueError, match="reference lacks"):
        spectral_complexity(net, reference={"0.weight": torch.zeros(2, 2, dtype=D)})
    with torch.no_grad():
        net[0].weight.zero_()
    assert spectral_complexity(net) == 0.0


def test_subnet_norms_against_naive():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)).to(D)
    out = subnet_norms(net, {"conv": "0", "w": "*.weight"})
    ps = dict(net.named_parameters())
    for scope, names in {"model": list(ps), "conv": ["0.weight", "0.bias"], "w": ["0.weight", "3.weight"]}.items():
        flat = torch.cat([ps[n].detach().reshape(-1) for n in names])
        mats = [ps[n].detach().reshape(ps[n].shape[0], -1).numpy() for n in names if ps[n].dim() >= 2]
        spec = [np.linalg.svd(m, compute_uv=False)[0] for m in mats]
        fro = [np.linalg.norm(m) for m in mats]
        assert out[scope]["l1"] == pytest.approx(float(flat.abs().sum()), rel=1e-12)
        assert out[scope]["l2_squared"] == pytest.approx(float((flat**2).sum()), rel=1e-12)
        assert out[scope]["l2"] == pytest.approx(float(flat.norm()), rel=1e-12)
        assert out[scope]["frobenius_product"] == pytest.approx(np.prod(fro), rel=1e-12)
        assert out[scope]["frobenius_sum"] == pytest.approx(sum(fro), rel=1e-12)
        assert out[scope]["spectral_sum"] == pytest.approx(sum(spec), rel=1e-12)
        assert out[scope]["spectral_product"] == pytest.approx(np.prod(spec), rel=1e-12)
        assert out[scope]["spectral_max"] == pytest.approx(max(spec), rel=1e-12)
    assert subnet_norms(net, ["0"])["0"]["l1"] == out["conv"]["l1"]
    with pytest.raises(ValueError, match="reserved for the whole model"):
        subnet_norms(net, {"model": "0"})
    with pytest.raises(TypeError, match="expected a mapping name -> selector"):
        subnet_norms(net, "0")
    with pytest.raises(ValueError, match="matched no parameter"):
        subnet_norms(net, {"x": "nothere"})
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        spectral_norm(torch.ones(3))


@pytest.mark.parametrize("stride,padding,size", [(1, 1, (5, 4)), (2, 1, (6, 5)), (1, 0, (4, 4))])
def test_conv_operator_norm_against_dense(stride, padding, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding, bias=False).to(D)
    x0 = torch.zeros(1, 2, *size, dtype=D)
    J = torch.autograd.functional.jacobian(lambda x: conv(x).reshape(-1), x0).reshape(-1, x0.numel())
    expected = float(torch.linalg.matrix_norm(J, ord=2))
    assert conv_operator_norm(conv, size, iterations=400, tol=1e-15) == pytest.approx(expected, rel=1e-10)


def test_conv_operator_norm_errors():
    conv = nn.Conv2d(1, 1, 3)
    with pytest.raises(TypeError, match="needs an nn.Conv1d/2d/3d"):
        conv_operator_norm(nn.Linear(2, 2), (2,))
    with pytest.raises(ValueError, match="needs 2"):
        conv_operator_norm(conv, (5,))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        conv_operator_norm(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (5, 5))
    with pytest.raises(ValueError, match="padding='same'"):
        conv_operator_norm(nn.Conv2d(1, 1, 3, padding="same"), (5, 5))
    with pytest.raises(ValueError, match="iterations=0"):
        conv_operator_norm(conv, (5, 5), iterations=0)
    valid = nn.Conv2d(1, 1, 1, padding="valid", bias=False)
    with torch.no_grad():
        valid.weight.fill_(-2.0)
    assert conv_operator_norm(valid, (3, 3)) == pytest.approx(2.0, rel=1e-9)
    with torch.no_grad():
        valid.weight.zero_()
    assert conv_operator_norm(valid, (3, 3)) == 0.0


# ----------------------------------------------------------------------------- ε-sharpness
def test_epsilon_sharpness_quadratic_corner_is_exact():
    theta = [1.5, -0.5, 2.0, -3.0, 0.25]
    a = [1.0, 2.0, 0.5, 3.0, 4.0]
    eps = 0.1
    model = Point(theta)
    before = state(model)
    t, av = np.array(theta), np.array(a)
    loss0 = 0.5 * (av * t**2).sum()
    corner = t + np.sign(t) * eps * (np.abs(t) + 1)                # the box corner away from 0
    expected = 100 * (0.5 * (av * corner**2).sum() - loss0) / (1 + loss0)
    got = epsilon_sharpness(model, quadratic(a), ONE, eps, steps=5, step_size=0.25)
    assert got == pytest.approx(expected, rel=1e-12)
    bounded = epsilon_sharpness(model, quadratic(a), ONE, eps, steps=3, random_start=True, seed=1)
    assert 0 <= bounded <= expected * (1 + 1e-12)
    assert_unchanged(model, before)


def test_epsilon_sharpness_flat_and_nonnegative():
    model = Point([1.0, -2.0])
    flat = lambda out, y: (out * 0).sum() + 3.0   # noqa: E731
    assert epsilon_sharpness(model, flat, ONE, 0.1) == 0.0
    net = relu_net([3, 4, 2])
    data = [(torch.randn(8, 3, dtype=D), torch.randn(8, 2, dtype=D))]
    rng = torch.get_rng_state()
    s = epsilon_sharpness(net, nn.MSELoss(), data, 1e-2, steps=3)
    assert s > 0
    assert torch.equal(rng, torch.get_rng_state())
    assert epsilon_sharpness(net, nn.MSELoss(), data, 1e-2, steps=3, subnet="2") >= 0


@pytest.mark.parametrize("kw,match", [({"epsilon": 0.0}, "epsilon=0.0"), ({"epsilon": float("nan")}, "epsilon=nan"),
                                      ({"steps": 0}, "steps=0"), ({"step_size": -1.0}, "step_size=-1.0")])
def test_epsilon_sharpness_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        epsilon_sharpness(Point([1.0]), quadratic([1.0]), ONE, **kw)


def test_loss_errors_in_gradient_passes():
    with pytest.raises(ValueError, match="data yielded no batch"):
        epsilon_sharpness(Point([1.0]), quadratic([1.0]), [], 0.1)
    with pytest.raises(ValueError, match="must return a scalar"):
        epsilon_sharpness(Point([1.0, 2.0]), lambda o, y: o, ONE, 0.1)
    with pytest.raises(ValueError, match="must return a scalar"):
        fisher_rao_norm(Point([1.0, 2.0]), lambda o, y: o, ONE)
    with pytest.raises(ValueError, match="data yielded no batch"):
        fisher_rao_norm(Point([1.0]), quadratic([1.0]), [])


# ----------------------------------------------------------------------------- PAC-Bayes flatness
def test_noise_has_standard_deviation_sigma():
    theta = lp.ParamVector({"a": torch.zeros(300, 400, dtype=D), "b": torch.zeros(50_000, dtype=D)})
    for sigma in (0.05, 0.3):
        u = gaussian_noise(theta, sigma, seed=4).flatten()
        assert float(u.std()) == pytest.approx(sigma, rel=5e-3)      # 170k draws: std error 0.17%
        assert abs(float(u.mean())) < 5 * sigma / math.sqrt(u.numel())
    assert torch.equal(gaussian_noise(theta, 0.1, 2)["a"], gaussian_noise(theta, 0.1, 2)["a"])
    with pytest.raises(ValueError, match="sigma=-1"):
        gaussian_noise(theta, -1, 0)


def test_pac_bayes_sigma_on_a_quadratic():
    n, a, target, k = 50, 2.0, 0.1, 16
    model = Point(np.zeros(n))
    before = state(model)
    sigma = pac_bayes_sigma(model, quadratic([a] * n), ONE, target, samples=k, seed=3, rtol=1e-12, iterations=80)
    # exact for the Monte Carlo mean with the same draws: ½ a σ² mean_k ||z_k||² = target
    theta = lp.ParamVector({"w": torch.zeros(n, dtype=D)})
    z2 = np.mean([float((gaussian_noise(theta, 1.0, 3 + j)["w"] ** 2).sum()) for j in range(k)])
    assert sigma == pytest.approx(math.sqrt(2 * target / (a * z2)), rel=1e-9)
    # and the analytic E[L(θ+u)] − L(θ) = ½ a n σ² (Monte Carlo error of 800 squares: ~5%)
    assert sigma == pytest.approx(math.sqrt(2 * target / (a * n)), rel=0.1)
    assert_unchanged(model, before)
    # a large sigma_max is bisected down; a small one is doubled up to the same answer
    up = pac_bayes_sigma(model, quadratic([a] * n), ONE, target, samples=k, seed=3, sigma_max=1e-4, rtol=1e-12,
                         iterations=80)
    assert up == pytest.approx(sigma, rel=1e-9)


@pytest.mark.parametrize("kw,match", [({"target": 0}, "target=0"), ({"samples": 0}, "samples=0"),
                                      ({"sigma_max": -1.0}, "sigma_max=-1.0"), ({"rtol": 0.0}, "rtol=0.0"),
                                      ({"iterations": 1.5}, "iterations=1.5")])
def test_pac_bayes_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        pac_bayes_sigma(Point([0.0]), quadratic([1.0]), ONE, **kw)


def test_pac_bayes_flat_loss_raises():
    with pytest.raises(ValueError, match="flat in every direction"):
        pac_bayes_sigma(Point([0.0]), lambda o, y: (o * 0).sum(), ONE, 0.1, samples=1)


# ----------------------------------------------------------------------------- sparsity
def test_hoyer_and_near_zero():
    assert hoyer(torch.full((7,), -2.5)) == pytest.approx(0.0, abs=1e-12)
    assert hoyer(np.eye(1, 9, 4).ravel()) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(hoyer(torch.zeros(3)))
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0]]))
        net.bias.zero_()
    assert hoyer(net) == pytest.approx(1.0)                        # (1, 0, 0): one-hot
    assert fraction_near_zero(net) == pytest.approx(2 / 3)
    assert fraction_near_zero([torch.tensor([0.5e-3]), torch.tensor([2e-3])], threshold=1e-3) == 0.5
    assert fraction_near_zero(lp.ParamVector({"a": torch.tensor([0.0, 1.0])})) == 0.5
    with pytest.raises(ValueError, match="at least 2 entries"):
        hoyer(torch.ones(1))
    with pytest.raises(ValueError, match="holds no entries"):
        fraction_near_zero(torch.zeros(0))
    with pytest.raises(ValueError, match="threshold=0"):
        fraction_near_zero(torch.zeros(2), threshold=0)
    with pytest.raises(TypeError, match="expected a tensor"):
        hoyer("weights")


def test_treves_rolls_hand_matrices():
    r = np.array([[2.0, 0.0, 0.0, 0.0],      # one-hot stimulus: 1
                  [1.0, 1.0, 1.0, 1.0],      # uniform: 0
                  [1.0, 1.0, 0.0, 0.0],      # half: (1 - (1/2)^2/(1/2)) / (3/4) = 2/3
                  [0.0, 0.0, 0.0, 0.0]])     # silent: left out
    assert treves_rolls(r, "population") == pytest.approx((1 + 0 + 2 / 3) / 3, abs=1e-15)
    # units over the 4 stimuli: (2,1,1,0): (1 - 1/1.5)/(3/4) = 4/9; (0,1,1,0): 2/3; (0,1,0,0): 1; same: 1
    assert treves_rolls(r, "lifetime") == pytest.approx((4 / 9 + 2 / 3 + 1 + 1) / 4, abs=1e-15)
    assert math.isnan(treves_rolls(np.zeros((2, 2))))
    with pytest.raises(ValueError, match="kind='both'"):
        treves_rolls(r, "both")
    with pytest.raises(ValueError, match="2-D"):
        treves_rolls(np.ones(3))
    with pytest.raises(ValueError, match="at least 2 units"):
        treves_rolls(np.ones((3, 1)))
    with pytest.raises(ValueError, match="at least 2 stimuli"):
        treves_rolls(np.ones((1, 3)), "lifetime")


def test_activation_sparseness_conv_channels_are_units():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1)).to(D)
    xs = [torch.randn(2, 1, 4, 5, dtype=D), torch.randn(3, 1, 4, 5, dtype=D)]
    before = state(net)
    out = activation_sparseness(net, [(x, None) for x in xs], {"relu": "1", "head": net[2]})
    assert_unchanged(net, before)
    feats = torch.cat([net[1](net[0](x)).detach() for x in xs])          # (5, 3, 4, 5)
    mat = feats.permute(0, 2, 3, 1).reshape(-1, 3)                        # stimuli = images x positions
    assert out["relu"]["population_sparseness"] == pytest.approx(treves_rolls(mat, "population"), rel=1e-12)
    assert out["relu"]["lifetime_sparseness"] == pytest.approx(treves_rolls(mat, "lifetime"), rel=1e-12)
    assert set(out) == {"model", "relu", "head"}
    one = activation_sparseness(net, [(x, None) for x in xs], {"relu": "1"}, max_batches=1)
    first = net[1](net[0](xs[0])).detach().permute(0, 2, 3, 1).reshape(-1, 3)
    assert one["relu"]["lifetime_sparseness"] == pytest.approx(treves_rolls(first, "lifetime"), rel=1e-12)


def test_activation_sparseness_errors():
    net = relu_net([2, 3, 1])
    data = [(torch.randn(4, 2, dtype=D), None)]
    with pytest.raises(ValueError, match="needs a submodule"):
        activation_sparseness(net, data, {"w": "*.weight"})
    with pytest.raises(ValueError, match="is not a submodule"):
        activation_sparseness(net, data, {"w": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="reserved for the whole model"):
        activation_sparseness(net, data, {"model": "0"})
    with pytest.raises(ValueError, match="data yielded no batch"):
        activation_sparseness(net, [])

    class Grow(nn.Module):
        def forward(self, x):
            return x.repeat(1, x.shape[0])

    m = nn.Sequential(Grow())
    with pytest.raises(ValueError, match="fixed number of units"):
        activation_sparseness(m, [(torch.ones(2, 2), None), (torch.ones(3, 2), None)], {"g": "0"})


def test_activation_sparseness_warns_on_signed_activations():
    import warnings
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5), nn.ReLU()).to(D)
    data = [(torch.randn(6, 3, dtype=D), None), (torch.randn(4, 3, dtype=D), None)]
    with pytest.warns(UserWarning, match=r"'tanh'.*most negative -.*non-negative activations.*ReLU") as rec:
        out = activation_sparseness(net, data, {"tanh": "1", "relu": "3"})
    assert [str(w.message) for w in rec if "'relu'" in str(w.message)] == []
    assert sum("'tanh'" in str(w.message) for w in rec) == 1            # once per module, not per batch
    tanh = torch.cat([net[1](net[0](x)).detach() for x, _ in data])
    relu = torch.cat([net(x).detach() for x, _ in data])
    assert float(tanh.min()) < 0 <= float(relu.min())
    for key, mat in (("tanh", tanh), ("relu", relu)):                    # values as before: used as they are
        assert out[key]["population_sparseness"] == pytest.approx(treves_rolls(mat, "population"), rel=1e-12)
        assert out[key]["lifetime_sparseness"] == pytest.approx(treves_rolls(mat, "lifetime"), rel=1e-12)
    with pytest.raises(ValueError, match=r"'tanh'.*non-negative"):
        activation_sparseness(net, data, {"tanh": "1"}, strict=True)
    with warnings.catch_warnings():                                       # ReLU output (and model = ReLU): silent
        warnings.simplefilter("error")
        quiet = activation_sparseness(net, data, {"relu": "3"}, strict=True)
    assert quiet["relu"] == out["relu"] and quiet["model"] == out["model"]
    acc = lp.capacity.SparsenessAccumulator()
    acc.add(torch.tensor([[1.0, -0.5], [0.0, 2.0]]))
    assert acc.min_value == -0.5


# ----------------------------------------------------------------------------- report
def test_report_all_measures_and_round_trip(tmp_path):
    net = relu_net([3, 4, 2], bias=True)
    data = [(torch.randn(6, 3, dtype=D), torch.randn(6, 2, dtype=D))]
    before = state(net)
    rng = torch.get_rng_state()
    r = report(net, data, {"first": "0", "w": "*.weight"}, nn.MSELoss(), measures="all",
               sharpness_steps=2, pac_bayes_samples=2)
    assert_unchanged(net, before)
    assert torch.equal(rng, torch.get_rng_state())
    assert r.scopes == ["model", "first", "w"]
    assert r["model"]["path_norm_l2"] == pytest.approx(path_norm(net, 2), rel=1e-12)
    assert r["first"]["fisher_rao"] == pytest.approx(fisher_rao_norm(net, nn.MSELoss(), data, subnet="0"), rel=1e-12)
    assert r["model"]["pac_bayes_measure"] == pytest.approx(1 / r["model"]["pac_bayes_sigma"] ** 2)
    assert "lifetime_sparseness" in r["first"] and "activation_sparsity[w]" in r.skipped
    for scope, vals in r.values.items():
        assert all(math.isfinite(v) for v in vals.values()), (scope, vals)
    back = CapacityReport.load(r.save(tmp_path / "cap.json"))
    assert back.values == r.values and back.skipped == r.skipped
    ax = r.plot()
    assert len(ax.patches) == 4 * 3


def test_report_skips_and_strict(tmp_path):
    bn = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 1))
    r = report(bn, measures=["norms", "path_norm", "fisher_rao"])
    assert "BatchNorm" in r.skipped["path_norm"] and r.skipped["fisher_rao"] == "needs data and loss_fn"
    nanrep = report(nn.Linear(1, 1, bias=False), measures=["weight_sparsity"])     # one weight: hoyer NaN
    assert math.isnan(CapacityReport.load(nanrep.save(tmp_path / "n.json"))["model"]["hoyer"])
    with pytest.raises(ValueError, match="cannot be computed: needs data"):
        report(bn, measures=["sharpness"], strict=True)
    with pytest.raises(ValueError, match="measures='some'"):
        report(bn, measures="some")
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['hessian'\]"):
        report(bn, measures=["hessian"])
    r2 = report(bn, measures=["spectral_complexity"], subnets={"b": "1"})
    assert "spectral_complexity[b]" in r2.skipped


@pytest.fixture
def user_measures():
    from landprobe.capacity import MEASURE_REGISTRY, unregister_measure

    added = []
    yield added
    for name in added:
        if name in MEASURE_REGISTRY:
            unregister_measure(name)


def test_register_measure_is_computed_by_report(user_measures):
    from landprobe.capacity import CHEAP_MEASURES, MEASURE_REGISTRY, MEASURES, register_measure

    net = relu_net([3, 4, 2])
    data = [(torch.randn(6, 3, dtype=D), torch.randn(6, 2, dtype=D))]
    seen = {}

    def max_abs(ctx):                                   # per scope, from the context's parameter names
        params = dict(ctx.model.named_parameters())
        seen["options"] = ctx.options
        return {s: {"max_abs": max(float(params[n].detach().abs().max()) for n in names)}
                for s, names in ctx.parameters.items()}

    def batches(ctx):                                   # whole model only, needs data
        return {"model": {"batches": len(ctx.data)}}

    user_measures += ["max_abs", "batches"]
    m = register_measure("max_abs", max_abs, per_subnet=True, cheap=True)
    assert MEASURE_REGISTRY["max_abs"] is m and m.per_subnet and m.cheap
    register_measure("batches", batches, needs_data=True)
    r = report(net, data, {"first": "0"}, nn.MSELoss(), measures=["norms", "max_abs", "batches"])
    assert r["model"]["max_abs"] == max(float(p.detach().abs().max()) for p in net.parameters())
    assert r["first"]["max_abs"] == max(float(p.detach().abs().max()) for p in net[0].parameters())
    assert r["model"]["batches"] == 1.0 and "batches" not in r["first"]
    assert r["model"]["l1"] == report(net, measures=["norms"])["model"]["l1"]
    assert seen["options"]["threshold"] == 1e-3
    assert report(net, measures=["batches"]).skipped == {"batches": "needs data"}
    cheap = report(net, measures="cheap")
    assert "max_abs" in cheap["model"] and cheap.settings["measures"][-1] == "max_abs"
    assert report(net, data, loss_fn=nn.MSELoss(), measures="all", sharpness_steps=1,
                  pac_bayes_samples=1).settings["measures"] == [*MEASURES, "max_abs", "batches"]
    assert MEASURES[:2] == ("norms", "path_norm") and len(MEASURES) == 8 and len(CHEAP_MEASURES) == 5
    # replacing needs replace=True; a measure may skip a scope
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_measure("max_abs", max_abs)
    register_measure("max_abs", lambda ctx: ctx.skip("not today", "first"), per_subnet=True, replace=True)
    assert report(net, subnets={"first": "0"}, measures=["max_abs"]).skipped == {"max_abs[first]": "not today"}
    with pytest.raises(ValueError, match="'max_abs\\[first\\]' cannot be computed: not today"):
        report(net, subnets={"first": "0"}, measures=["max_abs"], strict=True)


def test_register_measure_errors(user_measures):
    from landprobe.capacity import MEASURE_REGISTRY, register_measure, unregister_measure

    net = relu_net([3, 4, 2])
    one = lambda ctx: {"model": {"one": 1.0}}                           # noqa: E731
    with pytest.raises(ValueError, match="name='norms' is a built-in measure group"):
        register_measure("norms", one)
    for bad in ("", "all", "cheap", "a[b]", 3):
        with pytest.raises(ValueError, match="expected a non-empty string"):
            register_measure(bad, one)
    with pytest.raises(TypeError, match="compute has type int; expected a function compute"):
        register_measure("one", 1)
    with pytest.raises(TypeError, match="cheap=1; expected True or False"):
        register_measure("one", one, cheap=1)
    assert "one" not in MEASURE_REGISTRY
    with pytest.raises(ValueError, match="built-in measure group of report; it cannot be removed"):
        unregister_measure("norms")
    with pytest.raises(ValueError, match="name='nothing' is not registered"):
        unregister_measure("nothing")
    with pytest.raises(TypeError):
        MEASURE_REGISTRY["one"] = one                                    # read-only: use register_measure
    # what a compute function returns is checked
    user_measures += ["bad"]
    cases = [(lambda ctx: 1.0, TypeError, "compute returned float; expected a dict"),
             (lambda ctx: {"first": {"x": 1.0}}, ValueError, "returned the scope 'first'.*per_subnet=True"),
             (lambda ctx: {"model": 1.0}, TypeError, "returned float for scope 'model'"),
             (lambda ctx: {"model": {"x": "high"}}, TypeError, "the value of 'x' for scope 'model' has type str")]
    for fn, exc, match in cases:
        register_measure("bad", fn, replace=True)
        with pytest.raises(exc, match=match):
            report(net, subnets={"first": "0"}, measures=["bad"])


def test_report_progress_bar(capsys):
    net = relu_net([3, 4, 2])
    quiet = report(net, measures=["norms", "weight_sparsity"], progress=False)
    assert capsys.readouterr().err == ""
    shown = report(net, measures=["norms", "weight_sparsity"], progress=True)
    assert "capacity report" in capsys.readouterr().err
    assert shown.values == quiet.values

def test_gradient_pass_is_sample_weighted_over_batches():
    from landprobe.engine import Engine

    net = relu_net([3, 4, 2])
    x, y = torch.randn(8, 3, dtype=D), torch.randn(8, 2, dtype=D)
    params = list(net.parameters())
    one = Engine(net, nn.MSELoss(), [(x, y)]).loss_and_grad(params)
    two = Engine(net, nn.MSELoss(), [(x[:3], y[:3]), (x[3:], y[3:])]).loss_and_grad(params)
    assert two[0] == pytest.approx(one[0], rel=1e-12)
    for a, b in zip(one[1], two[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert Engine(net, nn.MSELoss(), [(x, y)]).loss_and_grad(params, want_grad=False)[1] is None

"""Permutation symmetry: specs traced from the graph, permute, weight/activation matching, merge."""

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from landprobe import symmetry as S


# ----------------------------------------------------------------------------- models
class ConvBN(nn.Module):
    """conv -> BN -> relu -> conv -> BN -> relu -> pool -> flatten -> linear."""

    def __init__(self, c=6):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.fc = nn.Linear(c * 4 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.b2(self.c2(h)))
        return self.fc(nn.functional.max_pool2d(h, 2).flatten(1))


class Residual(nn.Module):
    """A stem, two residual blocks on one stream, a head."""

    def __init__(self, d=6, h=7):
        super().__init__()
        self.stem = nn.Linear(4, d)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d)) for _ in range(2)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.stem(x)
        for blk in self.blocks:
            h = h + blk(h)
        return self.head(torch.relu(h))


class Norms(nn.Module):
    """GroupNorm in a conv net, a concatenation, LayerNorm in the head."""

    def __init__(self):
        super().__init__()
        self.c1, self.gn = nn.Conv2d(2, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.c2 = nn.Conv2d(2, 3, 1)
        self.fc, self.ln, self.out = nn.Linear(11 * 2 * 2, 6), nn.LayerNorm(6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.cat([self.gn(torch.relu(self.c1(x))), self.c2(x)], dim=1)
        h = nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.out(torch.tanh(self.ln(self.fc(h))))


class Tied(nn.Module):
    """One square weight used by two layers in a row (its rows and columns in one group)."""

    def __init__(self):
        super().__init__()
        self.enc, self.mid, self.mid2, self.out = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.mid2.weight = self.mid.weight

    def forward(self, x):
        h = torch.relu(self.enc(x))
        return self.out(torch.relu(self.mid2(torch.relu(self.mid(h)))))


class Mixed(nn.Module):
    """Element-wise max of two layers, a learned scale, centring by a mean, expand and sum."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 5), nn.Linear(3, 5), nn.Linear(5, 2)
        self.scale = nn.Parameter(torch.rand(5))

    def forward(self, x):
        h = torch.max(self.a(x), self.b(x)) * self.scale
        h = h - h.mean(-1, keepdim=True)
        return self.c(h.unsqueeze(1).expand(-1, 2, -1).sum(1))


def mlp():
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 3))


def warship():
    return lp.models.WarshipXZNetBeta(width=0.06, recursions=4)


MODELS = {
    "mlp": (mlp, (7, 5)),
    "convbn": (ConvBN, (3, 3, 8, 8)),
    "residual": (Residual, (7, 4)),
    "norms": (Norms, (3, 2, 4, 4)),
    "warship": (warship, (2, 1, 8, 8)),
    "tied": (Tied, (5, 3)),
    "mixed": (Mixed, (6, 3)),
}


def build(kind, seed=0, dtype=torch.float32):
    """A model with random weights and BatchNorm statistics (eval mode) and an input batch."""
    make, shape = MODELS[kind]
    torch.manual_seed(seed)
    model = make().to(dtype).eval()
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.normal_(0.0, 0.5)
    return model, torch.randn(*shape, dtype=dtype)


def final(out):
    return out.final if hasattr(out, "final") else out


def run(model, state, x):
    """``model``'s output on ``x`` with ``state`` loaded (into a copy: tied weights stay tied)."""
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return final(other(x))


_SPECS = {}


def spec_of(kind):
    if kind not in _SPECS:
        model, x = build(kind)
        _SPECS[kind] = S.permutation_spec(model, x)
    return _SPECS[kind]


# ----------------------------------------------------------------------------- the spec
def test_spec_of_a_recursive_block_has_one_permutation_per_shared_tensor():
    spec = spec_of("warship")
    where = {(r.name, r.axis): g for g, refs in spec.groups.items() for r in refs}
    # the stream that inet maps to itself: shrink's output, inet's input and output, rnet's input
    stream = where[("enet.shrink.weight", 0)]
    assert where[("inet.conv1.weight", 1)] == where[("inet.conv2.weight", 0)] == where[("rnet.expand.weight", 1)] \
        == stream
    assert where[("inet.conv1.weight", 0)] == where[("inet.conv2.weight", 1)] != stream
    names = [r.name for refs in spec.groups.values() for r in refs]
    assert len(names) == len(set(zip(names, [r.axis for refs in spec.groups.values() for r in refs])))
    # the network's input and output channels are never permuted
    assert ("enet.conv1.weight", 1) not in where and ("rnet.weigh.weight", 0) not in where
    assert "recursion_weights" not in names


def test_a_tied_weight_is_permuted_under_both_names_on_both_axes():
    spec = spec_of("tied")
    (g,) = [g for g, refs in spec.groups.items() if any(r.name == "mid.weight" for r in refs)]
    where = {(r.name, r.axis) for r in spec.groups[g]}
    assert {("mid.weight", 0), ("mid.weight", 1), ("mid2.weight", 0), ("mid2.weight", 1), ("enc.weight", 0),
            ("out.weight", 1)} <= where
    model, x = build("tied")
    perm = S.random_permutation(spec, 2)
    moved = S.permute(model.state_dict(), perm, spec)
    assert torch.equal(moved["mid.weight"], moved["mid2.weight"])
    model.load_state_dict(moved)                 # both names hold the one tensor
    torch.testing.assert_close(model(x), run(model, build("tied")[0].state_dict(), x), rtol=1e-6, atol=1e-6)


def test_spec_through_norms_concatenation_and_flatten():
    spec = spec_of("norms")
    by_name = {g: {(r.name, r.axis): r for r in refs} for g, refs in spec.groups.items()}
    g1 = next(g for g, m in by_name.items() if ("c1.weight", 0) in m)
    g2 = next(g for g, m in by_name.items() if ("c2.weight", 0) in m)
    assert spec.blocks[g1] == 4                                     # GroupNorm(2, 8): within 2 groups of 4
    assert by_name[g1][("fc.weight", 1)] == S.AxisRef("fc.weight", 1, 0, 4)        # 8 channels x 2x2
    assert by_name[g2][("fc.weight", 1)] == S.AxisRef("fc.weight", 1, 32, 4)       # after the 8, offset 32
    assert {("gn.weight", 0), ("gn.bias", 0)} <= set(by_name[g1])
    g3 = next(g for g, m in by_name.items() if ("fc.weight", 0) in m)
    assert {("ln.weight", 0), ("ln.bias", 0), ("out.weight", 1)} <= set(by_name[g3])


def test_batchnorm_statistics_are_permuted_and_kept_out_of_the_objective():
    spec = spec_of("convbn")
    names = {r.name for refs in spec.groups.values() for r in refs}
    assert {"b1.running_mean", "b1.running_var", "b2.running_mean"} <= names
    assert set(spec.buffers) >= {"b1.running_mean", "b1.running_var"}


def test_tracing_leaves_the_model_as_it_was():
    model, x = build("convbn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    S.permutation_spec(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- permute keeps the function
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_a_random_permutation_keeps_the_function(kind, dtype, tol):
    model, x = build(kind, dtype=dtype)
    spec = spec_of(kind)
    perm = S.random_permutation(spec, seed=5)
    assert not any(p == sorted(p) for p in perm.perms.values())    # every group really moves
    state = model.state_dict()
    moved = S.permute(state, perm, spec)
    assert any(not torch.equal(moved[k], state[k]) for k in state)
    ref, got = run(model, state, x), run(model, moved, x)
    assert (got - ref).abs().max() <= tol * ref.abs().max()
    back = S.permute(moved, perm.inverse(), spec)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_permute_a_module_in_place():
    model, x = build("mlp")
    ref = model(x)
    spec = spec_of("mlp")
    assert S.permute(model, S.random_permutation(spec, 1), spec) is model
    torch.testing.assert_close(model(x), ref, rtol=1e-6, atol=1e-6)


def test_a_groupnorm_permutation_must_stay_within_its_groups():
    model, x = build("norms")
    spec = spec_of("norms")
    g = next(g for g in spec.blocks)
    perm = S.random_permutation(spec, 0)
    perm.perms[g] = [4, 1, 2, 3, 0, 5, 6, 7]                      # a channel moves to the other group
    ref = run(model, model.state_dict(), x)
    assert not torch.allclose(run(model, S.permute(model.state_dict(), perm, spec), x), ref, atol=1e-3)


# ----------------------------------------------------------------------------- weight matching
@pytest.mark.parametrize("kind", list(MODELS))
def test_weight_matching_recovers_a_random_permutation(kind):
    model, _ = build(kind)
    spec = spec_of(kind)
    shuffle = S.random_permutation(spec, seed=11)
    b = S.permute(model.state_dict(), shuffle, spec)
    found = S.weight_matching(model, b, spec, seed=3)
    assert found.perms == shuffle.inverse().perms
    aligned = S.permute(b, found, spec)
    assert all(torch.equal(aligned[k], v) for k, v in model.state_dict().items())
    assert np.all(np.diff(found.objective) >= 0) and found.settings["converged"]


@pytest.mark.parametrize("kind", ["residual", "convbn", "warship"])
@pytest.mark.parametrize("init", ["identity", "greedy"])
def test_the_objective_never_decreases_between_independent_networks(kind, init):
    spec = spec_of(kind)
    a, _ = build(kind, seed=0)
    b, _ = build(kind, seed=1)
    seen = []
    found = S.weight_matching(a, b, spec, seed=2, init=init, callback=lambda i, v: seen.append(v))
    obj = np.asarray(found.objective)
    assert np.all(np.diff(obj) >= 0) and seen == found.objective[1:] and found.settings["init"] == init
    plain = S.weight_matching(a, b, spec, seed=2, init="identity", max_sweeps=1)
    if init == "identity":
        assert len(obj) >= 3 and obj[-1] > obj[0] == plain.objective[0]
    else:                                 # the greedy start scores at least the identity
        assert obj[0] >= plain.objective[0]


def test_weight_matching_equals_brute_force_on_a_one_group_mlp():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    b = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    spec = S.permutation_spec(a, torch.zeros(1, 3))
    (g,) = spec.groups
    found = S.weight_matching(a, b, spec)

    def objective(p):
        moved = S.permute(b.state_dict(), {g: list(p)}, spec)
        return sum(float((a.state_dict()[k].double() * moved[k].double()).sum()) for k in moved)
    best = max(itertools.permutations(range(6)), key=objective)
    assert found.perms[g] == list(best)


def test_weight_matching_traces_the_spec_itself():
    model, x = build("mlp")
    spec = spec_of("mlp")
    shuffle = S.random_permutation(spec, seed=4)
    found = S.weight_matching(model, S.permute(model.state_dict(), shuffle, spec), example_input=x)
    assert found.perms == shuffle.inverse().perms


def test_permutation_round_trips_through_json(tmp_path):
    spec = spec_of("mlp")
    model, _ = build("mlp")
    found = S.weight_matching(model, build("mlp", seed=1)[0], spec)
    path = found.save(tmp_path / "perm.json")
    back = S.Permutation.load(path)
    assert back.perms == found.perms and back.objective == found.objective and back.method == "weight_matching"


# ----------------------------------------------------------------------------- a spec by hand
def test_a_hand_written_partial_spec():
    model, x = build("mlp")
    spec = S.PermutationSpec({"first": [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)]})
    spec.check(model.state_dict())
    assert spec.sizes == {"first": 12}
    shuffle = S.random_permutation(spec, seed=2)
    b = S.permute(model.state_dict(), shuffle, spec)
    torch.testing.assert_close(run(model, b, x), model(x), rtol=1e-6, atol=1e-6)
    assert S.weight_matching(model, b, spec).perms == shuffle.inverse().perms


def test_hand_written_spec_errors():
    state = mlp().state_dict()
    with pytest.raises(KeyError, match="'0.wieght'"):
        S.PermutationSpec({"h": [("0.wieght", 0)]}).check(state)
    with pytest.raises(ValueError, match="no axis 2"):
        S.PermutationSpec({"h": [("0.weight", 2)]}).check(state)
    with pytest.raises(ValueError, match="same number of units"):
        S.PermutationSpec({"h": [("0.weight", 0), ("2.weight", 0)]}).check(state)
    with pytest.raises(TypeError, match="expected \\(name, axis\\)"):
        S.PermutationSpec({"h": ["0.weight"]})
    with pytest.raises(ValueError, match="not a permutation"):
        S.Permutation({"h": [0, 0, 1]})


# ----------------------------------------------------------------------------- what the tracer cannot handle
class Sorted(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.sort(self.a(x), dim=-1).values)


class Gathered(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        self.register_buffer("order", torch.tensor([1, 0, 3, 2]))

    def forward(self, x):
        return self.b(self.a(x)[:, self.order])


@pytest.mark.parametrize("cls, node", [(Sorted, "sort"), (Gathered, "index")])
def test_an_operation_the_tracer_does_not_know_fails_naming_the_node(cls, node):
    with pytest.raises(S.SpecError, match=f"fx node '{node}'.*give the spec by hand") as err:
        S.permutation_spec(cls(), torch.zeros(2, 3))
    assert "PermutationSpec(" in str(err.value)
    with pytest.raises(S.SpecError):
        S.weight_matching(cls(), cls(), example_input=torch.zeros(2, 3))


def test_a_model_that_cannot_be_traced_says_so():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x) if float(x.sum()) > 0 else -self.a(x)
    with pytest.raises(S.SpecError, match="cannot trace Branchy"):
        S.permutation_spec(Branchy(), torch.ones(2, 3))


# ----------------------------------------------------------------------------- activation matching
@pytest.mark.parametrize("kind", ["mlp", "convbn", "residual", "warship"])
def test_activation_matching_recovers_a_random_permutation(kind):
    model, _ = build(kind)
    spec = spec_of(kind)
    shuffle = S.random_permutation(spec, seed=7)
    b = S.permute(model.state_dict(), shuffle, spec)
    shape = MODELS[kind][1]
    data = [(torch.randn(64, *shape[1:]), None) for _ in range(3)] + [(torch.randn(5, *shape[1:]), None)]
    found = S.activation_matching(model, b, data, spec)
    want = shuffle.inverse().perms
    dead = found.settings["constant_units"]
    for g, p in found.perms.items():      # units that never varied on the data may go anywhere
        assert [p[i] for i in range(len(p)) if i not in dead[g]] == [want[g][i] for i in range(len(p))
                                                                      if i not in dead[g]]
        assert len(dead[g]) <= len(p) // 3
    assert found.settings["samples"][0] > 0 and found.objective[-1] >= found.objective[0]


def test_activation_matching_leaves_the_model_as_it_was():
    model, _ = build("convbn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other, _ = build("convbn", seed=1)
    found = S.activation_matching(model, other, [(torch.randn(8, 3, 8, 8), None)])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(found.perms) == set(spec_of("convbn").groups)


# ----------------------------------------------------------------------------- merge and barriers
def test_merge():
    a, x = build("mlp")
    b, _ = build("mlp", seed=1)
    naive = S.merge(a, b, alpha=0.25, align=None)
    assert all(torch.allclose(naive[k], torch.lerp(a.state_dict()[k], b.state_dict()[k], 0.25)) for k in naive)
    spec = spec_of("mlp")
    shuffled = S.permute(a.state_dict(), S.random_permutation(spec, 3), spec)
    merged = S.merge(a, shuffled, alpha=0.5, align="weights", example_input=x)
    assert all(torch.allclose(merged[k], v) for k, v in a.state_dict().items())
    with pytest.raises(ValueError, match="align='bogus'"):
        S.merge(a, b, align="bogus", example_input=x)


@pytest.mark.parametrize("kind", ["mlp", "convbn", "warship"])
@pytest.mark.parametrize("align", ["weights", "activations"])
def test_the_aligned_barrier_to_a_permuted_copy_is_zero(kind, align):
    model, _ = build(kind)
    shape = MODELS[kind][1]
    torch.manual_seed(1)
    xs = [torch.randn(8, *shape[1:]) for _ in range(2)]
    data = [(x, final(model(x)).detach() + 0.1 * torch.randn_like(final(model(x)))) for x in xs]

    def loss(out, y):
        return nn.functional.mse_loss(final(out), y)
    spec = spec_of(kind)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = S.permute(a, S.random_permutation(spec, seed=9), spec)
    probe = lp.LandscapeProbe(model, loss, data, progress=False)
    curve = probe.interpolate(a, b, points=5, align=align)
    info = curve.settings["align"]
    assert info["method"] == align and info["naive_barrier"] > 1e-3
    assert abs(curve.barrier) <= 1e-9 and np.ptp(curve.losses) <= 1e-9 * max(1.0, abs(curve.losses[0]))
    assert np.allclose(curve.losses[0], info["naive_losses"][0])
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in a)


def test_aligned_interpolation_with_recomputed_batchnorm_statistics():
    model, _ = build("convbn")
    torch.manual_seed(2)
    xs = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    data = [(x, model(x).detach()) for x in xs]                   # the endpoints fit the data
    spec = spec_of("convbn")
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = S.permute(a, S.random_permutation(spec, seed=4), spec)
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data, bn="recompute", progress=False)
    curve = probe.interpolate(a, b, points=3, align="weights")
    assert curve.settings["bn"] == "recompute" and np.ptp(curve.losses) <= 1e-6 * curve.losses[0]
    assert curve.settings["align"]["naive_barrier"] > 1e-3


def test_interpolate_function_takes_align_and_refuses_unknown_methods():
    model, _ = build("mlp")
    data = [(torch.randn(4, 5), torch.randn(4, 3))]
    engine = lp.engine.Engine(model, nn.MSELoss(), data)
    from landprobe.probes.interpolate import interpolate
    with pytest.raises(ValueError, match="align='weight'"):
        interpolate(engine, model.state_dict(), model.state_dict(), 3, align="weight")
    curve = interpolate(engine, model.state_dict(), build("mlp", seed=2)[0].state_dict(), 3, align="weights",
                        spec=spec_of("mlp"))
    assert set(curve.settings["align"]["groups"]) == set(spec_of("mlp").groups)


# ----------------------------------------------------------------------------- the peer
def _peer_objective(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sum(float((sa[k].double() * sb[k].double()).sum()) for k in sa)


def test_weight_matching_objective_at_least_the_peer_rebasin():
    rebasin = pytest.importorskip("rebasin", reason="the rebasin package (test-only peer) is not installed")
    for seed in range(3):
        torch.manual_seed(100 + seed)
        a = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        b = copy.deepcopy(a)
        for p in b.parameters():
            nn.init.normal_(p, 0.0, 0.3)
        peer_b = copy.deepcopy(b)
        torch.manual_seed(seed)
        rebasin.PermutationCoordinateDescent(a, peer_b, torch.zeros(2, 6)).rebasin()
        ours = S.weight_matching(a, b, example_input=torch.zeros(2, 6), seed=seed)
        spec = S.permutation_spec(a, torch.zeros(2, 6))
        ours_b = S.permute(b.state_dict(), ours, spec)
        mine = sum(float((a.state_dict()[k].double() * ours_b[k].double()).sum()) for k in ours_b)
        assert mine >= _peer_objective(a, peer_b) - 1e-9 * abs(mine)

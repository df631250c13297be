"""SubnetNormPenalty against a naive float64 formulation, on architectures that are not ours."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import landprobe as lp
from landprobe.penalties import SubnetNormPenalty

TOL = dict(rtol=1e-10, atol=1e-10)
KINDS = ["l2_squared", "l1", "l2norm", "group", "spectral"]


# --------------------------------------------------------------------------- architectures
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 7), nn.Linear(7, 6), nn.Linear(6, 3)


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(4), BasicBlock(4))
        self.fc = nn.Linear(4, 2)


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.encoder = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=24)
        self.out = nn.Linear(16, 1)


# (name, factory, two disjoint selectors covering parts of the model)
ARCHS = [
    ("mlp", MLP, {"fc1": "fc1", "rest": ["fc2", "head"]}),
    ("resnet", SmallResNet, {"stem": "stem", "blocks": ["layer1.*", "fc"]}),
    ("transformer", Transformer, {"attn": "encoder.self_attn", "mlp": ["encoder.linear*", "encoder.norm*", "out"]}),
]


def build(factory, seed=0):
    torch.manual_seed(seed)
    model = factory().double()
    with torch.no_grad():  # BatchNorm/LayerNorm start at 1/0: make every parameter generic
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


# --------------------------------------------------------------------------- naive float64 reference
def keep(name, p, include_bias):
    return include_bias or (p.dim() >= 2 and not name.endswith("bias"))


def naive_norm(kind, tensors):
    if kind == "l2_squared":
        return sum(t.pow(2).sum() for t in tensors)
    if kind == "l1":
        return sum(t.abs().sum() for t in tensors)
    if kind == "l2norm":
        return torch.sqrt(sum(t.pow(2).sum() for t in tensors))
    if kind == "group":
        return sum(t.reshape(t.shape[0], -1).norm(dim=1).sum() if t.dim() >= 2 else t.abs().sum() for t in tensors)
    if kind == "spectral":
        return sum(torch.linalg.matrix_norm(t.reshape(t.shape[0], -1), 2) for t in tensors)
    raise AssertionError(kind)


def naive_penalty(model, selectors, kinds, weights, include_bias):
    params = dict(model.named_parameters())
    parts = {}
    for key, sel in selectors.items():
        names = [n for n in lp.select(model, sel) if keep(n, params[n], include_bias)]
        parts[key] = weights[key] * naive_norm(kinds[key], [params[n] for n in names])
    return parts


def grads(model, scalar):
    params = list(model.parameters())
    gs = torch.autograd.grad(scalar, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def check_against_naive(model, selectors, kinds, weights, include_bias, **kw):
    norms = {k: kinds[k] for k in selectors}
    # selectors given as tuples (hashable keys); labels are then the tuples
    keyed = {(tuple(s) if isinstance(s, list) else s): kinds[k] for k, s in selectors.items()}
    keyed_w = {(tuple(s) if isinstance(s, list) else s): weights[k] for k, s in selectors.items()}
    pen = SubnetNormPenalty(model, keyed, weight=keyed_w, include_bias=include_bias,
                            init_power_iterations=1000, **kw)
    got = pen()
    ref_parts = naive_penalty(model, selectors, norms, weights, include_bias)
    ref = sum(ref_parts.values())
    torch.testing.assert_close(got, ref, **TOL)
    ref_grads = grads(model, ref)
    for g, r in zip(grads(model, got), ref_grads):
        torch.testing.assert_close(g, r, **TOL)
    bd = pen.breakdown()
    assert list(bd) == list(keyed)
    for key, sel in selectors.items():
        assert bd[tuple(sel) if isinstance(sel, list) else sel] == pytest.approx(ref_parts[key].item(), rel=1e-10)
    assert sum(bd.values()) == pytest.approx(got.item(), rel=1e-12)
    check_direct_backward(model, pen, ref, ref_grads)
    return pen


def check_direct_backward(model, pen, ref, ref_grads):
    """``pen.backward()`` writes the reference gradient into ``.grad`` and returns the value."""
    for p in model.parameters():
        p.grad = None
    value = pen.backward()
    assert not value.requires_grad and value.dim() == 0
    torch.testing.assert_close(value, ref.detach(), **TOL)
    for p, r in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(torch.zeros_like(p) if p.grad is None else p.grad, r, **TOL)
    pen.backward(scale=0.5)                      # accumulates into the existing .grad
    for p, r in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(torch.zeros_like(p) if p.grad is None else p.grad, 1.5 * r, **TOL)
    for p in model.parameters():
        p.grad = None


# --------------------------------------------------------------------------- values and gradients
CASES = [(a, k, b) for a in ARCHS for k in KINDS for b in (True, False) if not (k == "spectral" and b)]


@pytest.mark.parametrize("arch,kind,include_bias", CASES,
                         ids=[f"arch={a[0]}-kind={k}-bias={b}" for a, k, b in CASES])
def test_value_and_gradient_match_naive_float64(arch, kind, include_bias):
    _, factory, selectors = arch
    model = build(factory)
    keys = list(selectors)
    weights = {keys[0]: 0.3, keys[1]: 1.7}
    check_against_naive(model, selectors, {k: kind for k in keys}, weights, include_bias)


MIXED = [("l1", "group"), ("l2norm", "l2_squared"), ("group", "l1"), ("l2_squared", "l1")]


@pytest.mark.parametrize("arch", ARCHS, ids=[f"arch={a[0]}" for a in ARCHS])
@pytest.mark.parametrize("pair", MIXED, ids=[f"kinds={a}+{b}" for a, b in MIXED])
def test_mixed_kinds_per_subnet_weights(arch, pair):
    _, factory, selectors = arch
    model = build(factory, seed=1)
    keys = list(selectors)
    check_against_naive(model, selectors, dict(zip(keys, pair)), {keys[0]: 2e-4, keys[1]: 3.0}, True)


def test_spectral_and_l2_subnets_together_on_transformer():
    model = build(Transformer, seed=2)
    sel = {"a": "encoder.self_attn", "b": ["encoder.linear*", "out", "embed"]}
    check_against_naive(model, sel, {"a": "spectral", "b": "l2_squared"}, {"a": 0.5, "b": 0.25}, False)


def test_include_bias_false_drops_biases_and_1d_parameters():
    model = build(Transformer)
    pen = SubnetNormPenalty(model, {"encoder": "l2_squared"}, include_bias=False)
    assert pen.subnets["encoder"] == [
        "encoder.self_attn.in_proj_weight", "encoder.self_attn.out_proj.weight",
        "encoder.linear1.weight", "encoder.linear2.weight",
    ]
    full = SubnetNormPenalty(model, {"encoder": "l2_squared"}).subnets["encoder"]
    assert "encoder.norm1.weight" in full and "encoder.self_attn.in_proj_bias" in full


def test_include_bias_false_drops_a_2d_parameter_named_bias():
    model = nn.Module()
    model.w, model.pos_bias = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    assert SubnetNormPenalty(model, {"*": "l1"}, include_bias=False).subnets == {"*": ["w"]}


def test_zero_parameters_give_zero_gradient_not_nan():
    model = MLP().double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    for kind in ("l2_squared", "l1", "l2norm", "group"):
        pen = SubnetNormPenalty(model, {"fc1": kind, "fc2": "l2norm"})
        out = pen()
        assert out.item() == 0.0
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads(model, out))


def test_module_selector_key_and_model_level_doubles():
    model = build(MLP)
    pen = SubnetNormPenalty(model, {model.fc1: "l2_squared"}, weight=2.0)
    torch.testing.assert_close(pen(), 2 * model.fc1.weight.pow(2).sum() + 2 * model.fc1.bias.pow(2).sum(), **TOL)


def test_second_order_hessian_vector_product_matches_naive():
    model = build(MLP)
    params = list(model.parameters())
    vec = [torch.randn_like(p) for p in params]
    for kind in ("l2_squared", "l1"):
        pen = SubnetNormPenalty(model, {"fc1": kind, "fc2": "l2_squared"}, weight={"fc1": 0.7, "fc2": 1.3})
        ref = 0.7 * naive_norm(kind, list(model.fc1.parameters())) + 1.3 * naive_norm("l2_squared", list(model.fc2.parameters()))
        products = []
        for total in (pen(), ref):
            g = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
            dot = sum((gi * v).sum() for gi, v in zip(g, vec) if gi is not None and gi.requires_grad)
            products.append(grads(model, dot) if torch.is_tensor(dot) else [torch.zeros_like(p) for p in params])
        hv_ours, hv_ref = products
        for a, b in zip(hv_ours, hv_ref):
            torch.testing.assert_close(a, b, **TOL)
        # l2 part: H = 2 * weight on its parameters
        torch.testing.assert_close(hv_ours[2], 2 * 1.3 * vec[2], **TOL)


def test_float32_model_agrees_with_float64_reference():
    model = build(SmallResNet).float()
    pen = SubnetNormPenalty(model, {"stem": "l2_squared", "layer1": "l1", "fc": "group"})
    ref = SubnetNormPenalty(build(SmallResNet), {"stem": "l2_squared", "layer1": "l1", "fc": "group"})
    assert pen().dtype == torch.float32
    torch.testing.assert_close(pen().double(), ref(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- presets (Table II)
class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.enet = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Conv2d(3, 2, 1))
        self.inet = nn.Conv2d(2, 2, 3)
        self.rnet = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 1, 3))
        self.extra = nn.Linear(2, 2)     # in no subnet: never penalised


TABLE_II = {"all-l2": ("l2_squared", "l2_squared", "l2_squared"), "mix": ("l2_squared", "l1", "l2_squared"), "all-l1": ("l1", "l1", "l1")}


@pytest.mark.parametrize("setting", list(TABLE_II))
@pytest.mark.parametrize("via", ["attributes", "subnets-mapping"])
def test_preset_penalises_exactly_table_ii(setting, via):
    model = build(Toy)
    lam = 2e-4
    if via == "attributes":
        pen = SubnetNormPenalty.preset(model, setting.upper() if setting == "mix" else setting)
    else:
        renamed = nn.ModuleDict({"head": model.enet, "body": model.inet, "tail": model.rnet, "x": model.extra})
        model = renamed
        pen = SubnetNormPenalty.preset(model, setting, subnets={"enet": "head", "inet": "body", "rnet": "tail"})
    assert pen.kinds == dict(zip(("enet", "inet", "rnet"), TABLE_II[setting]))
    assert pen.weights == {"enet": lam, "inet": lam, "rnet": lam}
    total = pen()
    gs = dict(zip([n for n, _ in model.named_parameters()], grads(model, total)))
    prefix = {"attributes": ("enet", "inet", "rnet"), "subnets-mapping": ("head", "body", "tail")}[via]
    expected_total = 0.0
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        if top not in prefix:
            assert torch.equal(gs[name], torch.zeros_like(p)), name
            continue
        kind = TABLE_II[setting][prefix.index(top)]
        want = 2 * lam * p if kind == "l2_squared" else lam * p.sign()
        torch.testing.assert_close(gs[name], want, **TOL)
        expected_total += lam * (p.pow(2).sum() if kind == "l2_squared" else p.abs().sum()).item()
    assert total.item() == pytest.approx(expected_total, rel=1e-12)
    assert list(pen.breakdown()) == ["enet", "inet", "rnet"]


def test_preset_per_subnet_weights_and_include_bias():
    model = build(Toy)
    pen = SubnetNormPenalty.preset(model, "mix", weight={"enet": 1.0, "inet": 2.0, "rnet": 0.0}, include_bias=False)
    assert pen.subnets["inet"] == ["inet.weight"]
    torch.testing.assert_close(pen(), sum(p.pow(2).sum() for p in (model.enet[0].weight, model.enet[1].weight))
                               + 2 * model.inet.weight.abs().sum(), **TOL)


# --------------------------------------------------------------------------- spectral
def sigma_and_grad(w):
    mat = w.detach().reshape(w.shape[0], -1)
    u, s, vh = torch.linalg.svd(mat)
    return s[0], torch.outer(u[:, 0], vh[0]).reshape(w.shape)


@pytest.mark.parametrize("shape", [(6, 4), (3, 8), (5, 2, 3, 3)], ids=["linear-tall", "linear-wide", "conv-reshaped"])
def test_spectral_value_and_gradient_equal_top_singular_pair(shape):
    torch.manual_seed(3)
    model = nn.Module()
    model.w = nn.Parameter(torch.randn(*shape, dtype=torch.float64))
    pen = SubnetNormPenalty(model, {"w": "spectral"}, init_power_iterations=2000)
    out = pen()
    sigma, grad = sigma_and_grad(model.w)
    torch.testing.assert_close(out, torch.linalg.matrix_norm(model.w.reshape(shape[0], -1), 2), **TOL)
    torch.testing.assert_close(out.detach(), sigma, **TOL)
    torch.testing.assert_close(grads(model, out)[0], grad, **TOL)


def test_spectral_warm_start_converges_one_iteration_per_call():
    torch.manual_seed(4)
    model = nn.Module()
    model.w = nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
    sigma = torch.linalg.matrix_norm(model.w.detach(), 2)
    pen = SubnetNormPenalty(model, {"w": "spectral"}, init_power_iterations=1, power_iterations=1)
    errors = [abs(pen().item() - sigma.item()) for _ in range(400)]
    assert errors[0] > 1e-3                     # one iteration from a random start is not enough
    assert errors[-1] < 1e-10                   # ... but the vector is kept warm between calls
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:]))   # Rayleigh quotient rises monotonically
    # warm start tracks a changed weight: a few calls after a small update reach the new sigma
    with torch.no_grad():
        model.w.mul_(1.5)
    for _ in range(200):
        out = pen()
    torch.testing.assert_close(out.detach(), 1.5 * sigma, **TOL)


def test_spectral_does_not_touch_global_rng_and_is_seeded():
    model = build(MLP)
    state = torch.get_rng_state()
    a = SubnetNormPenalty(model, {"*.weight": "spectral"}, init_power_iterations=2, seed=5)()
    b = SubnetNormPenalty(model, {"*.weight": "spectral"}, init_power_iterations=2, seed=5)()
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- errors
def test_model_class_instead_of_instance():
    with pytest.raises(TypeError, match=r"class MLP, not a model; instantiate it"):
        SubnetNormPenalty(MLP, {"fc1": "l2_squared"})
    with pytest.raises(TypeError, match=r"class MLP, not a model; instantiate it"):
        SubnetNormPenalty.preset(MLP, "mix")


def test_model_not_a_module():
    with pytest.raises(TypeError, match=r"model has type dict; expected a torch.nn.Module"):
        SubnetNormPenalty({"w": torch.ones(1)}, {"w": "l2_squared"})


def test_norms_errors():
    model = MLP()
    with pytest.raises(TypeError, match=r"norms has type list; expected a mapping selector -> kind"):
        SubnetNormPenalty(model, ["fc1"])
    with pytest.raises(ValueError, match=r"norms is empty"):
        SubnetNormPenalty(model, {})
    with pytest.raises(ValueError, match=r"unknown kind 'L3' for subnet 'fc1'; expected one of \['l2_squared', 'l1', 'l2norm', 'group', 'spectral'\]"):
        SubnetNormPenalty(model, {"fc1": "L3"})
    with pytest.raises(TypeError, match=r"kind for subnet 'fc1' is 2 \(int\)"):
        SubnetNormPenalty(model, {"fc1": 2})


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")], ids=["negative", "nan", "inf"])
def test_weight_value_errors(bad):
    with pytest.raises(ValueError, match=r"weight=.*expected a finite, non-negative float"):
        SubnetNormPenalty(MLP(), {"fc1": "l2_squared"}, weight=bad)
    with pytest.raises(ValueError, match=r"weight\['fc1'\]=.*expected a finite, non-negative float"):
        SubnetNormPenalty(MLP(), {"fc1": "l2_squared"}, weight={"fc1": bad})


@pytest.mark.parametrize("bad", ["2e-4", True, None], ids=["str", "bool", "none"])
def test_weight_type_errors(bad):
    with pytest.raises(TypeError, match=r"weight=.* has type .*; expected a non-negative float"):
        SubnetNormPenalty(MLP(), {"fc1": "l2_squared"}, weight=bad)


def test_weight_mapping_keys_must_match_norms():
    with pytest.raises(ValueError, match=r"weight mapping keys differ.*missing \['fc2'\], unexpected \['head'\]"):
        SubnetNormPenalty(MLP(), {"fc1": "l2_squared", "fc2": "l1"}, weight={"fc1": 1.0, "head": 1.0})


def test_other_argument_errors():
    with pytest.raises(TypeError, match=r"include_bias='no'; expected True or False"):
        SubnetNormPenalty(MLP(), {"fc1": "l2_squared"}, include_bias="no")
    with pytest.raises(ValueError, match=r"power_iterations=0; expected an int >= 1"):
        SubnetNormPenalty(MLP(), {"fc1": "spectral"}, include_bias=False, power_iterations=0)
    with pytest.raises(ValueError, match=r"init_power_iterations=2.5; expected an int >= 1"):
        SubnetNormPenalty(MLP(), {"fc1": "spectral"}, include_bias=False, init_power_iterations=2.5)


def test_selector_errors_come_from_select_subnets():
    with pytest.raises(ValueError, match=r"subnet selector 'fc9' matched no parameter of MLP"):
        SubnetNormPenalty(MLP(), {"fc9": "l2_squared"})
    with pytest.raises(ValueError, match=r"subnet selectors 'fc1' and '\*.weight' both select parameter 'fc1.weight'"):
        SubnetNormPenalty(MLP(), {"fc1": "l2_squared", "*.weight": "l1"})


def test_include_bias_false_emptying_a_subnet():
    with pytest.raises(ValueError, match=r"subnet '\*.bias' selects only biases and 1-D parameters.*include_bias=False"):
        SubnetNormPenalty(MLP(), {"*.bias": "l2_squared"}, include_bias=False)


def test_spectral_on_1d_parameters_names_them():
    with pytest.raises(ValueError, match=r"kind 'spectral' needs weight matrices.*\['stem.0.bias', 'stem.1.weight', 'stem.1.bias'\].*include_bias=False"):
        SubnetNormPenalty(SmallResNet(), {"stem": "spectral"})


def test_non_finite_parameter_is_named_at_call_time():
    model = build(MLP)
    pen = SubnetNormPenalty(model, {"fc1": "l2_squared", "head": "l1"})
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    with pytest.raises(ValueError, match=r"parameter\(s\) 'head.bias' \(subnet 'head'\) of MLP hold NaN or inf"):
        pen()
    assert math.isnan(SubnetNormPenalty(model, {"head": "l1"}, check_finite=False)().item())


def test_overflow_with_finite_parameters():
    model = MLP()
    with torch.no_grad():
        model.fc1.weight.fill_(1e30)                      # finite in float32, but its square is not
    with pytest.raises(ValueError, match=r"parameters are finite but the penalty of subnet\(s\) \['fc1'\] overflowed"):
        SubnetNormPenalty(model, {"fc1": "l2_squared"})()
    model = build(MLP)
    with pytest.raises(ValueError, match=r"weighted total is not finite.*Lower the weights"):
        SubnetNormPenalty(model, {"fc1": "l2_squared"}, weight=1e308)()


def test_preset_errors():
    with pytest.raises(ValueError, match=r"setting='l2-mix'; expected one of \['all-l2', 'mix', 'all-l1'\]"):
        SubnetNormPenalty.preset(Toy(), "l2-mix")
    with pytest.raises(ValueError, match=r"MLP has no submodule\(s\) \['enet', 'inet', 'rnet'\].*subnets="):
        SubnetNormPenalty.preset(MLP(), "mix")
    with pytest.raises(ValueError, match=r"subnets=\['fc1', 'fc2'\]; expected a mapping with exactly the keys"):
        SubnetNormPenalty.preset(MLP(), "mix", subnets={"fc1": "fc1", "fc2": "fc2"})
    with pytest.raises(TypeError, match=r"preset\(\) got unexpected keyword argument\(s\) \['norms'\]"):
        SubnetNormPenalty.preset(Toy(), "mix", norms={})


@pytest.mark.parametrize("kinds", [("group", "group"), ("spectral", "spectral"), ("group", "spectral")],
                         ids=lambda k: "+".join(k))
def test_equal_shape_layers_split_across_subnets(kinds):
    # equal shapes are computed batched: the per-subnet split must still be exact
    torch.manual_seed(6)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)]).double()
    sel = {"a": ["0", "2", "3"], "b": ["1", "4"]}
    check_against_naive(model, sel, dict(zip(sel, kinds)), {"a": 0.25, "b": 4.0}, False)


# --------------------------------------------------------------------------- stacked buckets, backward()
class Deep(nn.Module):
    """Many same-shaped layers (stacked buckets) plus one big layer (never stacked)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(*[nn.Linear(5, 5) for _ in range(9)])
        self.b = nn.Sequential(*[nn.Linear(5, 3) for _ in range(4)], nn.Linear(40, 30))


@pytest.mark.parametrize("limits", [None, (10, 60)], ids=["default", "tiny-limits"])
@pytest.mark.parametrize("kinds", [("l2_squared", "l1"), ("l1", "l2norm"), ("l2norm", "l2_squared")], ids=lambda k: "+".join(k))
def test_stacked_buckets_match_naive(monkeypatch, limits, kinds):
    # tiny limits: tensors above 10 elements are not stacked, buckets split every 60 elements
    import landprobe.penalties.subnet as pmod
    if limits is not None:
        monkeypatch.setattr(pmod, "_STACK_MAX_NUMEL", limits[0])
        monkeypatch.setattr(pmod, "_STACK_MAX_BUCKET", limits[1])
    model = build(Deep)
    pen = check_against_naive(model, {"a": "a", "b": "b"}, dict(zip("ab", kinds)), {"a": 0.7, "b": 1.3}, True)
    plan_segments = [seg for plan, _ in pen._fused for seg in plan.segments]
    stacked = sum(seg[3] for seg in plan_segments)
    assert stacked >= (2 if limits is None else 1)
    if limits is not None:
        assert len(plan_segments) > 6               # chunked


def test_backward_skips_frozen_parameters_and_matches_autograd():
    model = build(Deep)
    for p in model.b.parameters():
        p.requires_grad_(False)
    pen = SubnetNormPenalty(model, {"a": "l2_squared", "b": "l1"}, weight=0.1)
    pen().backward()
    auto = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    pen.backward()
    for p, a in zip(model.parameters(), auto):
        if a is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, a, rtol=0, atol=0)


def test_backward_checks_scale_and_finiteness():
    model = build(Deep)
    pen = SubnetNormPenalty(model, {"a": "l2_squared"})
    for bad in (float("nan"), "1", True):
        with pytest.raises(ValueError, match="scale="):
            pen.backward(scale=bad)
    with torch.no_grad():
        model.a[3].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"'a\.3\.weight'"):
        pen.backward()
    assert all(p.grad is None for p in model.parameters())        # a failing call writes no gradient


def test_l2norm_subnet_reports_a_nan_parameter_instead_of_a_norm_of_zero():
    model = nn.Linear(2, 1)
    penalty = lp.SubnetNormPenalty(model, {"weight": "l2norm", "bias": "l2_squared"}, weight=1.0)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    assert math.isnan(penalty.breakdown()["weight"])
    with pytest.raises(ValueError, match="hold NaN or inf"):
        penalty()


# --------------------------------------------------------------------------- shared (tied) parameters
class Tied(nn.Module):
    """An embedding whose matrix the output layer reuses (``out.weight = emb.weight``)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(3, 4, bias=False)
        self.out = nn.Linear(3, 4)
        self.out.weight = self.emb.weight


def tied_model():
    torch.manual_seed(0)
    return Tied().double()


def test_tied_parameter_belongs_to_every_module_that_uses_it():
    model = tied_model()
    assert [n for n, _ in model.named_parameters()] == ["emb.weight", "out.bias"]
    pen = SubnetNormPenalty(model, {"out": "l1"})
    assert pen.subnets == {"out": ["emb.weight", "out.bias"]}
    w, b = model.emb.weight.detach(), model.out.bias.detach()
    assert pen().item() == pytest.approx(float(w.abs().sum() + b.abs().sum()), rel=1e-12)
    assert SubnetNormPenalty(model, {model.out: "l2_squared"}).subnets == {model.out: ["emb.weight", "out.bias"]}
    assert SubnetNormPenalty(model, {"out.weight": "l2_squared"}).subnets == {"out.weight": ["emb.weight"]}


@pytest.mark.parametrize("weight", [1.0, {"emb": 0.5, "out": 0.5}])
def test_tied_parameter_with_conflicting_kinds_raises_naming_both(weight):
    with pytest.raises(ValueError, match=r"'emb' and 'out' both select parameter 'emb\.weight'.*'l2_squared' and 'l1'"):
        SubnetNormPenalty(tied_model(), {"emb": "l2_squared", "out": "l1"}, weight=weight)


def test_tied_parameter_with_conflicting_weights_raises_naming_both():
    with pytest.raises(ValueError, match=r"'emb' and 'out' both select parameter 'emb\.weight'.*weights \(1\.0 and 2\.0\)"):
        SubnetNormPenalty(tied_model(), {"emb": "l2_squared", "out": "l2_squared"}, weight={"emb": 1.0, "out": 2.0})


@pytest.mark.parametrize("kind", ["l2_squared", "l1", "group"])
def test_tied_parameter_with_same_kind_counted_once(kind):
    model = tied_model()
    pen = SubnetNormPenalty(model, {"emb": kind, "out": kind}, weight=0.5)
    assert pen.subnets == {"emb": ["emb.weight"], "out": ["out.bias"]}
    w = model.emb.weight.detach().double()
    b = model.out.bias.detach().double()
    by_hand = {
        "l2_squared": ((w ** 2).sum(), (b ** 2).sum()),
        "l1": (w.abs().sum(), b.abs().sum()),
        "group": (w.norm(dim=1).sum(), b.abs().sum()),   # bias elements are groups of one
    }[kind]
    emb_v, out_v = float(by_hand[0]), float(by_hand[1])
    raw = pen.breakdown(weighted=False)
    assert raw["emb"] == pytest.approx(emb_v, rel=1e-12)
    assert raw["out"] == pytest.approx(out_v, rel=1e-12)
    assert pen.breakdown() == pytest.approx({"emb": 0.5 * emb_v, "out": 0.5 * out_v}, rel=1e-12)
    total = pen()
    assert total.item() == pytest.approx(0.5 * (emb_v + out_v), rel=1e-12)
    total.backward()
    g_w = {"l2_squared": 2 * w, "l1": torch.sign(w), "group": w / w.norm(dim=1, keepdim=True)}[kind]
    g_b = {"l2_squared": 2 * b, "l1": torch.sign(b), "group": torch.sign(b)}[kind]
    torch.testing.assert_close(model.emb.weight.grad, 0.5 * g_w, **TOL)
    torch.testing.assert_close(model.out.bias.grad, 0.5 * g_b, **TOL)


def test_subnet_whose_parameters_are_all_counted_earlier_is_zero():
    model = tied_model()
    pen = SubnetNormPenalty(model, {"out": "l2_squared", "emb": "l2_squared"}, weight=0.5)
    assert pen.subnets == {"out": ["emb.weight", "out.bias"], "emb": []}
    w, b = model.emb.weight.detach(), model.out.bias.detach()
    expected = float((w ** 2).sum() + (b ** 2).sum())
    assert pen.breakdown(weighted=False) == pytest.approx({"out": expected, "emb": 0.0}, rel=1e-12)
    assert pen().item() == pytest.approx(0.5 * expected, rel=1e-12)
    assert pen.backward().item() == pytest.approx(0.5 * expected, rel=1e-12)
    torch.testing.assert_close(model.emb.weight.grad, w.clone(), **TOL)

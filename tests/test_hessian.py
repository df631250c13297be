"""HessianOperator against a dense float64 torch.func Hessian (curvlinops' pattern), closed forms, BN, errors."""

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import assert_same_snapshot, perturbed, snapshot
from helpers_curvature import CASES, ConvBN, TanhMLP, case_id, dense_hessian, quadratic_problem
from landprobe.curvature import HVP_METHODS, HessianOperator, hessian


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: one thread is faster, and immune to contention on the shared 2-core CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _probe(model, loss_fn, data, **kw):
    return lp.LandscapeProbe(model, loss_fn, data, **kw)


def _convbn_problem(seed):
    """ConvBN in float64 with two batches of unequal size; also the generator, for more draws."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(0)
    model = ConvBN().double()
    data = [(torch.randn(n, 1, 5, 5, generator=g, dtype=torch.float64),
             torch.randn(n, 1, generator=g, dtype=torch.float64)) for n in (4, 3)]
    return model, data, g


@pytest.mark.parametrize("method", HVP_METHODS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matvec_matches_dense(case, method):
    model, data = case.build()
    H = dense_hessian(model, case.loss_fn, data)
    op = hessian(_probe(model, case.loss_fn, data), hvp=method)
    assert isinstance(op, HessianOperator) and op.shape == H.shape and op.dtype == torch.float64
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        v = torch.randn(op.n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    # ParamVector in, ParamVector out, same numbers
    pv = op.to_param_vector(v)
    out = op.matvec(pv)
    assert isinstance(out, lp.ParamVector) and out.names == op.names
    torch.testing.assert_close(out.flatten(), H @ v, rtol=0, atol=1e-10)


def test_dense_and_linear_operator_match_reference():
    case = CASES[0]
    model, data = case.build()
    H = dense_hessian(model, case.loss_fn, data)
    op = hessian(_probe(model, case.loss_fn, data))
    torch.testing.assert_close(op.dense(), H, rtol=0, atol=1e-10)
    A = op.as_linear_operator()
    X = np.random.default_rng(0).standard_normal((op.n, 2))
    assert A.shape == (op.n, op.n) and A.dtype == np.float64
    np.testing.assert_allclose(A.matvec(X[:, 0]), H.numpy() @ X[:, 0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(A.matmat(X), H.numpy() @ X, rtol=0, atol=1e-10)
    assert isinstance(A.matvec(X[:, 0]), np.ndarray) and A.matvec(X[:, 0]).dtype == np.float64


def test_float64_on_a_float32_model_leaves_it_float32():
    case = CASES[0]
    model64, data64 = case.build(dtype=torch.float64)
    model32, data32 = case.build(dtype=torch.float32)
    # reference: the float32 weights and data, widened, in float64
    ref_model = TanhMLP().double()
    ref_model.load_state_dict({k: v.double() for k, v in model32.state_dict().items()})
    before = snapshot(model32)
    op = hessian(_probe(model32, case.loss_fn, data32), dtype=torch.float64)
    H = dense_hessian(ref_model, case.loss_fn, [(x.double(), y.double()) for x, y in data32])
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    assert op.dtype == torch.float64
    assert_same_snapshot(before, snapshot(model32))
    assert all(p.dtype == torch.float32 for p in model32.parameters())
    # the float32 operator agrees to float32 precision
    op32 = hessian(_probe(model32, case.loss_fn, data32))
    assert op32.dtype == torch.float32
    torch.testing.assert_close(op32.matvec(v).double(), H @ v, rtol=1e-4, atol=1e-5)


def test_theta_is_evaluated_functionally_and_model_unchanged():
    case = CASES[1]
    model, data = case.build()
    theta = perturbed(model, seed=5, scale=0.3)
    H = dense_hessian(model, case.loss_fn, data, state=theta)
    H_model = dense_hessian(model, case.loss_fn, data)
    other = type(model)().double()
    other.load_state_dict(theta)
    before = snapshot(model)
    op = hessian(_probe(model, case.loss_fn, data), theta)
    assert (H - H_model).abs().max() > 1e-3          # theta really differs from the model
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    op.top_eigenvalues(k=2)
    op.trace(matvecs=6)
    assert_same_snapshot(before, snapshot(model))
    # theta as a module and as a ParamVector give the same operator
    for th in (other, lp.ParamVector.from_module(other)):
        torch.testing.assert_close(hessian(_probe(model, case.loss_fn, data), th).matvec(v), H @ v,
                                   rtol=0, atol=1e-10)


def test_model_restored_bitwise_with_requires_grad_flags_and_modes():
    case = CASES[0]
    model, data = case.build()
    model.fc2.weight.requires_grad_(False)
    model.train()
    before = snapshot(model)
    op = hessian(_probe(model, case.loss_fn, data))
    op.matvec(torch.ones(op.n, dtype=torch.float64))
    op.density(steps=4)
    assert_same_snapshot(before, snapshot(model))
    assert model.training and all(p.grad is None for p in model.parameters())


def test_subnet_and_blocks_are_the_diagonal_blocks():
    case = CASES[0]
    model, data = case.build()
    H = dense_hessian(model, case.loss_fn, data)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    probe = _probe(model, case.loss_fn, data)

    def index(sel_names):
        return torch.cat([torch.arange(offsets[names.index(n)], offsets[names.index(n) + 1]) for n in sel_names])

    op_fc2 = hessian(probe, subnet="fc2")
    assert op_fc2.names == ["fc2.weight", "fc2.bias"]
    i = index(op_fc2.names)
    torch.testing.assert_close(op_fc2.dense(), H[i][:, i], rtol=0, atol=1e-10)
    parts = hessian(probe).blocks({"enet": "fc1", "inet": "fc2", "rnet": "head"})
    assert list(parts) == ["enet", "inet", "rnet"]
    for key, op in parts.items():
        i = index(op.names)
        assert op.n == len(i)
        torch.testing.assert_close(op.dense(), H[i][:, i], rtol=0, atol=1e-10)
    # a glob block of a block
    w = parts["enet"].block("fc1.weight")
    i = index(["fc1.weight"])
    torch.testing.assert_close(w.dense(), H[i][:, i], rtol=0, atol=1e-10)


def test_quadratic_closed_form():
    model, data, loss_fn, A = quadratic_problem([5.0, 2.0, 1.0, -0.5, 0.25])
    op = hessian(_probe(model, loss_fn, data))
    torch.testing.assert_close(op.dense(), A, rtol=0, atol=1e-12)


def test_linear_regression_closed_form_with_unequal_batches():
    g = torch.Generator().manual_seed(0)
    d = 4
    X = torch.randn(9, d, generator=g, dtype=torch.float64)
    Y = torch.randn(9, 1, generator=g, dtype=torch.float64)
    data = [(X[:2], Y[:2]), (X[2:7], Y[2:7]), (X[7:], Y[7:])]
    model = nn.Linear(d, 1, bias=False).double()
    op = hessian(_probe(model, nn.MSELoss(), data))
    torch.testing.assert_close(op.dense(), 2.0 / 9 * X.T @ X, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_batchnorm_modes(bn):
    model, data, g = _convbn_problem(1)
    with torch.no_grad():                               # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    before = snapshot(model)
    op = hessian(_probe(model, nn.MSELoss(), data, bn=bn))
    H = dense_hessian(model, nn.MSELoss(), data, train_bn=(bn == "train"))
    v = torch.randn(op.n, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    torch.testing.assert_close(H, H.T, rtol=0, atol=1e-12)   # the reference itself is sound
    other = dense_hessian(model, nn.MSELoss(), data, train_bn=(bn != "train"))
    assert (other - H).abs().max() > 1e-4             # the two modes really differ
    assert_same_snapshot(before, snapshot(model))


def test_batchnorm_recompute_uses_statistics_recomputed_at_theta():
    model, data, g = _convbn_problem(2)
    before = snapshot(model)
    op = hessian(_probe(model, nn.MSELoss(), data, bn="recompute"))
    # reference: cumulative-average statistics over all samples, as BN's momentum=None does
    h = torch.cat([model.conv(x) for x, _ in data]).detach()
    per_batch = [model.conv(x).detach() for x, _ in data]
    mean = h.mean(dim=(0, 2, 3))
    var = sum(p.var(dim=(0, 2, 3), unbiased=True) for p in per_batch) / len(per_batch)
    H = dense_hessian(model, nn.MSELoss(), data, state={"bn.running_mean": sum(p.mean(dim=(0, 2, 3)) for p in per_batch) / 2,
                                                         "bn.running_var": var})
    v = torch.randn(op.n, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    assert mean.shape == (2,)
    assert_same_snapshot(before, snapshot(model))


def test_interrupted_product_restores_the_model():
    case = CASES[0]
    model, data = case.build()
    before = snapshot(model)

    def boom(out, y):
        raise KeyboardInterrupt

    op = hessian(_probe(model, boom, data))
    with pytest.raises(KeyboardInterrupt):
        op.matvec(torch.ones(op.n, dtype=torch.float64))
    assert_same_snapshot(before, snapshot(model))


def test_errors():
    case = CASES[0]
    model, data = case.build()
    probe = _probe(model, case.loss_fn, data)
    with pytest.raises(ValueError, match="dtype=torch.bfloat16"):
        hessian(probe, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="hvp='exact'"):
        hessian(probe, hvp="exact")
    with pytest.raises(ValueError, match="matched no parameter"):
        hessian(probe, subnet="nope")
    with pytest.raises(ValueError, match="lacks 1 parameter"):
        sd = dict(model.state_dict())
        del sd["fc1.bias"]
        hessian(probe, sd)
    op = hessian(probe)
    with pytest.raises(ValueError, match="expected a flat tensor of 67 elements"):
        op.matvec(torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="other names than this Hessian block"):
        op.matvec(lp.ParamVector.from_module(model, "fc1"))
    with pytest.raises(TypeError, match="must be a ParamVector or a flat torch.Tensor"):
        op.matvec([1.0, 2.0])
    with pytest.raises(ValueError, match="max_n=10"):
        op.dense(max_n=10)
    with pytest.raises(ValueError, match="not in this Hessian block"):
        hessian(probe, subnet="fc1").block("fc2")
    with pytest.raises(ValueError, match="both select parameter"):
        op.blocks({"a": "fc1", "b": "fc1.weight"})
    with pytest.raises(ValueError, match="has no parameters"):
        hessian(_probe(nn.Tanh(), case.loss_fn, data))
    with pytest.raises(ValueError, match="data yielded no batch"):
        hessian(_probe(model, case.loss_fn, []))
    bad = hessian(_probe(model, nn.MSELoss(reduction="none"), data))
    with pytest.raises(ValueError, match="must return a scalar tensor"):
        bad.matvec(torch.ones(bad.n, dtype=torch.float64))
    pv = lp.ParamVector({n: torch.zeros(3, dtype=torch.float64) for n in op.names})
    with pytest.raises(ValueError, match=r"v\['fc1.weight'\] has shape"):
        op.matvec(pv)


@pytest.mark.parametrize("method", HVP_METHODS)
def test_matmat_matches_dense(method):
    case = CASES[1]
    model, data = case.build()
    H = dense_hessian(model, case.loss_fn, data)
    op = hessian(_probe(model, case.loss_fn, data), hvp=method)
    V = torch.randn(op.n, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    before = op.matvecs
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=0, atol=1e-10)
    assert op.matvecs - before == 3
    with pytest.raises(ValueError, match=r"V has shape \(5,\); expected a \(n, m\) tensor with n=29"):
        op.matmat(torch.ones(5, dtype=torch.float64))


# ---- kept gradient graphs (graph=): same H, fewer passes
class BatchCentred(nn.Module):
    """Couples the samples of a batch (subtracts the batch mean): concatenating batches changes it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return h - h.mean(dim=0, keepdim=True)


@pytest.mark.parametrize("graph", ["auto", "merged", "per-batch", "streamed"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_graph_mode_gives_the_dense_hessian(case, graph):
    model, data = case.build()
    H = dense_hessian(model, case.loss_fn, data)
    op = hessian(_probe(model, case.loss_fn, data), graph=graph)
    assert op.graph_used == ("streamed" if graph == "streamed" else None)
    V = torch.randn(op.n, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(V[:, 0]), H @ V[:, 0], rtol=0, atol=1e-10)
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=0, atol=1e-10)
    assert op.matvecs == 4
    assert op.graph_used == {"auto": "merged"}.get(graph, graph)     # these losses are per-sample means
    assert op.settings["graph_used"] == op.graph_used
    if op.graph_used != "streamed":
        assert op.settings["graph_saved_bytes"] > 0
    # blocks keep the choice and build their own graph
    blk = op.block(op.names[0])
    assert blk.graph == graph
    assert blk.graph_used == ("streamed" if graph == "streamed" else None)
    assert blk.settings.get("graph_used") == blk.graph_used


@pytest.mark.parametrize("loss_fn, why", [(nn.MSELoss(reduction="sum"), "not a per-sample mean"),
                                          (nn.MSELoss(), "samples coupled")])
def test_auto_keeps_per_batch_graphs_when_concatenating_would_change_the_error(loss_fn, why):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = (TanhMLP() if why == "not a per-sample mean" else BatchCentred()).double()
    data = [(torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64))
            for n in (5, 3, 7)]
    H = dense_hessian(model, loss_fn, data)
    op = hessian(_probe(model, loss_fn, data))
    v = torch.randn(op.n, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    assert op.graph_used == "per-batch"
    # forcing the concatenation really computes another function: the check is needed
    forced = hessian(_probe(model, loss_fn, data), graph="merged")
    assert (forced.matvec(v) - H @ v).abs().max() > 1e-3


def test_batchnorm_train_never_concatenates():
    model, data, g = _convbn_problem(1)
    op = hessian(_probe(model, nn.MSELoss(), data, bn="train"))
    v = torch.randn(op.n, generator=g, dtype=torch.float64)
    H = dense_hessian(model, nn.MSELoss(), data, train_bn=True)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    assert op.graph_used == "per-batch"
    with pytest.raises(ValueError, match="changes what BatchNorm normalises"):
        hessian(_probe(model, nn.MSELoss(), data, bn="train"), graph="merged")


def test_batches_that_do_not_concatenate_keep_one_graph_each():
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1)).double()
    data = [(torch.randn(3, 1, s, s, generator=g, dtype=torch.float64), torch.randn(3, 1, generator=g, dtype=torch.float64))
            for s in (5, 7)]
    H = dense_hessian(model, nn.MSELoss(), data)
    op = hessian(_probe(model, nn.MSELoss(), data))
    v = torch.randn(op.n, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    assert op.graph_used == "per-batch"
    with pytest.raises(ValueError, match="needs batches that concatenate"):
        hessian(_probe(model, nn.MSELoss(), data), graph="merged").matvec(v)


def test_a_graph_over_budget_is_dropped_and_products_stream():
    case = CASES[1]
    model, data = case.build()
    H = dense_hessian(model, case.loss_fn, data)
    op = hessian(_probe(model, case.loss_fn, data), graph_bytes=100)
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    assert op.graph_used == "streamed" and op.settings["graph_bytes_limit"] == 100
    # the budget binds only "auto": an explicit mode keeps its graph
    kept = hessian(_probe(model, case.loss_fn, data), graph="per-batch", graph_bytes=100)
    kept.matvec(v)
    assert kept.graph_used == "per-batch" and kept.settings["graph_saved_bytes"] > 100


def test_kept_graph_survives_later_products_and_release():
    case = CASES[0]
    model, data = case.build()
    before = snapshot(model)
    H = dense_hessian(model, case.loss_fn, data)
    op = hessian(_probe(model, case.loss_fn, data))
    res = op.top_eigenvalues(k=2, tol=1e-10)
    expected = torch.linalg.eigvalsh(H).flip(0)[:2]
    np.testing.assert_allclose(res.values, expected.numpy(), rtol=1e-9)
    assert res.settings["graph_used"] == "merged"
    op.release_graph()
    assert op.graph_used is None
    v = torch.ones(op.n, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    assert op.graph_used == "merged"
    assert_same_snapshot(before, snapshot(model))


def test_interrupted_graph_build_leaves_no_graph_and_restores_the_model():
    case = CASES[0]
    model, data = case.build()
    before = snapshot(model)
    calls = {"n": 0}

    def flaky(out, y):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return nn.functional.mse_loss(out, y)

    op = hessian(_probe(model, flaky, data))
    with pytest.raises(KeyboardInterrupt):
        op.matvec(torch.ones(op.n, dtype=torch.float64))
    assert op.graph_used is None and op.matvecs == 0
    assert_same_snapshot(before, snapshot(model))
    H = dense_hessian(model, case.loss_fn, data)
    torch.testing.assert_close(op.matvec(torch.ones(op.n, dtype=torch.float64)), H @ torch.ones(op.n, dtype=torch.float64),
                               rtol=0, atol=1e-10)


def test_graph_argument_errors():
    case = CASES[0]
    model, data = case.build()
    probe = _probe(model, case.loss_fn, data)
    with pytest.raises(ValueError, match="graph='kept'; expected one of"):
        hessian(probe, graph="kept")
    with pytest.raises(ValueError, match="cannot be combined with hvp='forward-over-reverse'"):
        hessian(probe, hvp="forward-over-reverse", graph="per-batch")
    with pytest.raises(ValueError, match="graph_bytes=-1"):
        hessian(probe, graph_bytes=-1)
    assert hessian(probe, hvp="forward-over-reverse").graph_used == "streamed"

"""Hessian blocks of WARSHIP-XZNet β: the Enet / Inet / Rnet diagonal blocks, in float64.

The reference is an independent dense Hessian (``torch.func.hessian`` through
``functional_call``, batches weighted by sample count) of each block's parameters, on a tiny
WARSHIP (width 0.02: 521 parameters) with the study's recursive-supervision loss and two
batches of unequal sizes.
"""

import numpy as np
import pytest
import torch

import landprobe as lp
from helpers import assert_same_snapshot, snapshot
from helpers_curvature import dense_hessian
from landprobe.curvature import hessian

SUBNETS = ("enet", "inet", "rnet")


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = lp.models.WarshipXZNetBeta(width=0.02).double()
    with torch.no_grad():                           # move off the identity-like init: generic curvature
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    data = []
    for b in (3, 2):                                # unequal batch sizes: sample weighting matters
        y = torch.rand(b, 1, 6, 6, generator=g, dtype=torch.float64)
        x = y + 0.1 * torch.randn(b, 1, 6, 6, generator=g, dtype=torch.float64)
        data.append((x, y))
    loss_fn = lp.losses.RecursiveSupervisionLoss(alpha=0.5)
    probe = lp.LandscapeProbe(model, loss_fn, data)
    return model, data, loss_fn, probe


def test_blocks_partition_the_subnets_and_leave_the_rest(problem):
    model, _, _, probe = problem
    blocks = hessian(probe).blocks({s: s for s in SUBNETS})
    names = [n for op in blocks.values() for n in op.names]
    assert len(names) == len(set(names))                            # disjoint
    for s, op in blocks.items():
        assert all(n.startswith(s + ".") for n in op.names)
        assert op.n == sum(p.numel() for p in getattr(model, s).parameters())
    rest = [n for n, _ in model.named_parameters() if n not in names]
    assert rest and not any(n.split(".")[0] in SUBNETS for n in rest)   # e.g. the recursion weights


@pytest.mark.parametrize("subnet", SUBNETS)
def test_block_equals_the_dense_float64_block(problem, subnet):
    model, data, loss_fn, probe = problem
    before = snapshot(model)
    op = hessian(probe, subnet=subnet)
    H = dense_hessian(model, loss_fn, data, names=op.names)
    assert tuple(H.shape) == (op.n, op.n)
    assert torch.allclose(H, H.T, rtol=0, atol=1e-12 * H.abs().max())
    # matvecs on random vectors, the dense view, the LinearOperator view
    g = torch.Generator().manual_seed(2)
    scale = float(H.abs().max())
    for _ in range(3):
        v = torch.randn(op.n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10 * scale * v.norm().item())
    torch.testing.assert_close(op.dense(), H, rtol=0, atol=1e-10 * scale)
    A = op.as_linear_operator()
    assert A.shape == (op.n, op.n)
    v = np.random.default_rng(3).standard_normal(op.n)
    np.testing.assert_allclose(A @ v, H.numpy() @ v, rtol=0, atol=1e-10 * scale * np.linalg.norm(v))
    # extreme eigenvalues of the block, both ends
    ev = np.linalg.eigvalsh(H.numpy())
    top = op.top_eigenvalues(k=2, which="LA", tol=1e-11)
    bottom = op.top_eigenvalues(k=1, which="SA", tol=1e-11)
    np.testing.assert_allclose(top.values, ev[::-1][:2], rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(bottom.values, ev[:1], rtol=1e-9, atol=1e-12 * scale)
    assert top.all_converged and bottom.all_converged
    assert_same_snapshot(before, snapshot(model))


def test_trace_of_a_block_with_a_full_sketch_is_exact(problem):
    model, data, loss_fn, probe = problem
    op = hessian(probe, subnet="inet")
    H = dense_hessian(model, loss_fn, data, names=op.names)
    est = op.trace(method="hutch++", matvecs=3 * op.n)   # a sketch spanning the block: exact
    assert est.value == pytest.approx(float(torch.trace(H)), rel=1e-9, abs=1e-12 * float(H.abs().max()))

"""Data-sharded Hessians: 2 and 3 gloo processes give the one-process curvature.

Each worker builds the same float64 problems, runs the Hessian family under
``lp.Sharding(data=True)`` (the engine's split, and shards the ranks are given) and returns
plain arrays; the test process computes the one-process reference and compares to 1e-12
relative. Every product is the sum over the ranks of the shares over their own batches, so
the numbers differ from one process by rounding only, and Lanczos, Hutchinson, Hutch++ and
SLQ take the same steps. The batches are of unequal sizes and their number (5) is no multiple
of 2 or 3, so the ranks own unequal numbers of batches; one case leaves a rank without any.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

import landprobe as lp
from problems import point, problems
from ranks import Raised, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

RTOL = 1e-12
D = torch.float64


def _uneven(name: str) -> tuple[torch.nn.Module, object, list]:
    """A problem with 5 batches of unequal sizes (its 3, then 2 and 1 samples of the first two)."""
    model, loss_fn, batches = problems(name)[0].build()
    extra = [(batches[0][0][:2] * 0.5, batches[0][1][:2]), (-batches[1][0][:1], batches[1][1][:1])]
    return model, loss_fn, batches + extra


def _given_shards(batches: list, world: int) -> list[list]:
    """Unequal contiguous shards, one per rank: 3+2 batches on 2 ranks, 1+3+1 on 3."""
    cuts = {2: [0, 3, 5], 3: [0, 1, 4, 5]}[world]
    return [batches[cuts[r]:cuts[r + 1]] for r in range(world)]


def _in_slot_order(shards: list[list]) -> list:
    """All the shards' batches in the order a given split reads them: the j-th batch of every
    rank in turn (rank-interleaved)."""
    longest = max(len(s) for s in shards)
    return [s[j] for j in range(longest) for s in shards if j < len(s)]


def _vectors(pairs: lp.curvature.Eigenpairs) -> np.ndarray:
    """The unit eigenvectors as rows, each signed so that its largest entry is positive."""
    rows = np.stack([v.flatten().numpy() for v in pairs.vectors])
    return rows * np.sign(rows[np.arange(len(rows)), np.argmax(np.abs(rows), axis=1)])[:, None]


def _spectra(H, v: torch.Tensor, eig: bool = True) -> dict[str, np.ndarray]:
    out = {"matvec": H.matvec(v).numpy(), "trace": np.array([H.trace(matvecs=12).value])}
    if eig:
        pairs = H.top_eigenvalues(k=2, tol=1e-10)
        out["eig"], out["eigvec"] = pairs.values, _vectors(pairs)
    return out


def _mlp_family(model, loss_fn, data, sharding, full: bool = True) -> dict[str, np.ndarray]:
    """The MLP's Hessian through the spectral probes and (``full``) every product path."""
    probe = lp.LandscapeProbe(model, loss_fn, data, sharding=sharding, progress=False)
    theta = point(model, 1)
    H = probe.hessian(theta)
    v = torch.randn(H.n, generator=torch.Generator().manual_seed(0), dtype=D)
    out = _spectra(H, v)
    sub = H.subsample(0.4)
    out["subsample"] = sub.matvec(v).numpy()
    out["counts"] = np.array([H.settings["batches"], H.settings["samples"], sub.settings["batches"],
                              sub.settings["subsample"]])
    spec = H.density(steps=12, probes=2)
    out["nodes"], out["weights"], out["density"] = spec.nodes, spec.weights, spec.density
    tight = probe.hessian(theta, graph_bytes=0)       # no graph fits: every rank streams (one with no batch too)
    out["tight"] = tight.matvec(v).numpy()
    out["streamed"] = np.array([tight.graph_used == "streamed"], dtype=float)
    if not full:
        return out
    out["merged"] = np.array([H.graph_used == "merged"], dtype=float)
    out["matmat"] = H.matmat(torch.stack([v, v.flip(0)], 1)).numpy()
    for graph in ("merged", "per-batch", "streamed"):
        out[f"matvec_{graph}"] = probe.hessian(theta, graph=graph).matvec(v).numpy()
    out["matvec_fwd"] = probe.hessian(theta, hvp="forward-over-reverse").matvec(v).numpy()
    out["hutchinson"] = np.array([H.trace("hutchinson", matvecs=6).value])
    out["block_eig"] = H.blocks({"fc1": "fc1", "fc2": "fc2"})["fc2"].top_eigenvalues(k=2, tol=1e-10).values
    subnet = probe.hessian(theta, subnet="fc1")
    out["subnet"] = subnet.matvec(v[: subnet.n]).numpy()
    out["warm"] = H.top_eigenvalues(k=1, tol=1e-10, warm_start=0.4).values
    out["gradient"], out["tight_gradient"] = H.gradient().numpy(), tight.gradient().numpy()
    out["gradient_start"] = H.top_eigenvalues(k=1, tol=1e-10, warm_start="gradient").values
    out["arpack"] = H.top_eigenvalues(k=2, tol=1e-10, method="arpack").values
    out["settings"] = dict(H.settings)
    return out


def _engine_split(sharding: lp.Sharding | None) -> dict[str, np.ndarray]:
    """The MLP in full, and the conv+BatchNorm problem under each ``bn``, on 5 uneven batches."""
    model, loss_fn, data = _uneven("mlp")
    out = {f"mlp/{k}": a for k, a in _mlp_family(model, loss_fn, data, sharding).items()}
    bn_model, bn_loss, bn_data = _uneven("conv_bn")
    theta = point(bn_model, 1)
    for mode in ("eval", "train", "recompute"):
        probe = lp.LandscapeProbe(bn_model, bn_loss, bn_data, bn=mode, sharding=sharding, progress=False)
        H = probe.hessian(theta)
        v = torch.randn(H.n, generator=torch.Generator().manual_seed(1), dtype=D)
        out.update({f"bn_{mode}/{k}": a for k, a in _spectra(H, v, eig=mode != "recompute").items()})
    return out


def _given(world: int, rank: int | None) -> dict[str, np.ndarray]:
    """The MLP on shards given to the ranks (``rank=None``: all of them in one process)."""
    model, loss_fn, data = _uneven("mlp")
    shards = _given_shards(data, world)
    if rank is None:
        return _mlp_family(model, loss_fn, _in_slot_order(shards), None, full=False)
    return _mlp_family(model, loss_fn, shards[rank], lp.Sharding(data=True, split="given"), full=False)


def _empty(sharding: lp.Sharding | None) -> dict[str, np.ndarray]:
    """The MLP on 2 batches (on 3 ranks, rank 2 owns none)."""
    model, loss_fn, data = _uneven("mlp")
    return _mlp_family(model, loss_fn, data[:2], sharding, full=False)


def _worker(rank: int, world: int) -> dict[str, object]:
    """Every case on this rank, then the failures of :func:`_failing`."""
    sharding = lp.Sharding(data=True)
    out: dict[str, object] = {"engine": _engine_split(sharding), "given": _given(world, rank)}
    if world == 3:
        out["empty"] = _empty(sharding)
        out["failures"] = _failing(rank)
    return out


@functools.cache
def _spawned(world: int) -> list[object]:
    """What each of ``world`` ranks returned (one spawn per world size for every test)."""
    return run_ranks(world, _worker)


@functools.cache
def _reference(case: str, world: int = 0) -> dict[str, np.ndarray]:
    """The one-process result of a case."""
    return {"engine": lambda: _engine_split(None), "given": lambda: _given(world, None),
            "empty": lambda: _empty(None)}[case]()


def _close(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], who: str) -> None:
    assert got.keys() == ref.keys()
    for k, want in ref.items():
        if k.endswith("settings"):                   # the same, but for the ranks' largest graph
            assert {**got[k], "graph_saved_bytes": 0} == {**want, "graph_saved_bytes": 0}, who
            continue
        scale = float(np.nanmax(np.abs(want))) if want.size else 0.0
        np.testing.assert_allclose(got[k], want, rtol=RTOL, atol=RTOL * scale, equal_nan=True,
                                   err_msg=f"{who}: {k}")


def _ranks_result(world: int) -> list[dict[str, object]]:
    outs = _spawned(world)
    for rank, got in enumerate(outs):
        assert not isinstance(got, Raised), (rank, got)
    return outs


@pytest.mark.parametrize("world", [2, 3])
def test_engine_split_equals_one_process(world):
    ref = _reference("engine")
    assert ref["mlp/merged"][0] == 1.0                 # the kept graph over concatenated batches is tested
    outs = _ranks_result(world)
    for rank, got in enumerate(outs):
        _close(got["engine"], ref, f"rank {rank} of {world}")
        assert got["engine"]["mlp/settings"] == outs[0]["engine"]["mlp/settings"]


@pytest.mark.parametrize("world", [2, 3])
def test_given_shards_equal_one_process(world):
    ref = _reference("given", world)
    for rank, got in enumerate(_ranks_result(world)):
        _close(got["given"], ref, f"rank {rank} of {world}, given shards")


def test_a_rank_without_batches_takes_part():
    ref = _reference("empty")
    for rank, got in enumerate(_ranks_result(3)):
        _close(got["empty"], ref, f"rank {rank} of 3, 2 batches")


# ---------------------------------------------------------------------------- a rank that raises
class _FailingLoss(torch.nn.Module):
    """MSE that raises on data rank 1 from its ``after``-th call on (``after=None``: never)."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank, self.calls, self.after = rank, 0, None

    def forward(self, out, y):
        self.calls += 1
        if self.rank == 1 and self.after is not None and self.calls > self.after:
            raise ValueError("boom in the loss")
        return torch.nn.functional.mse_loss(out, y)


def _failing(rank: int) -> list[tuple[str, str, float] | None]:
    """Raise on data rank 1 in a streamed Lanczos product, then while the first product builds
    the kept graph: each rank's exception, message and seconds (the default timeout is 30
    minutes, so the raise must reach the others at once)."""
    model, _, data = _uneven("mlp")
    loss = _FailingLoss(rank)
    probe = lp.LandscapeProbe(model, loss, data, sharding=lp.Sharding(data=True), progress=False)
    out: list[tuple[str, str, float] | None] = []
    for graph in ("streamed", "auto"):
        H = probe.hessian(graph=graph)
        loss.after = loss.calls + (7 if graph == "streamed" else 0)
        start = time.monotonic()
        try:
            H.top_eigenvalues(k=2)
            out.append(None)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out.append((type(exc).__name__, str(exc), time.monotonic() - start))
        loss.after = None
    return out


def test_a_rank_raising_in_a_product_raises_everywhere():
    for rank, got in enumerate(_ranks_result(3)):
        failures = got["failures"]
        assert None not in failures, (rank, failures)
        for kind, message, seconds in failures:
            assert seconds < 10.0, (rank, kind, seconds)        # the status exchange, not the timeout
            if rank == 1:
                assert (kind, message) == ("ValueError", "boom in the loss")
            else:
                assert kind == "RankFailedError" and "data rank 1" in message and "boom in the loss" in message


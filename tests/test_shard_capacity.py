"""Capacity reports and LandscapeMonitor records under data sharding equal the one-process ones.

Each spawn runs several ranks (gloo, CPU) over float64 problems whose batches have unequal
sizes and do not divide evenly among the ranks (3 batches on 2 ranks; 2 batches on 3 ranks
leave one rank without a batch); every rank's values must match the one-process values
computed here, and only rank 0 may write the monitor's files.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist

import landprobe as lp
from landprobe.capacity import activation_sparseness, fisher_rao_norm, report
from landprobe.monitor import LandscapeMonitor
from problems import Boom, problems
from ranks import Raised, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

SUBNETS = {"mlp": {"fc1": "fc1", "w": "*.weight"}, "conv_bn": {"conv": "conv", "bn": "bn"}}
RTOL = 1e-12


def _build(name: str, batches: int | None):
    model, loss_fn, data = problems(name)[0].build()
    return model, loss_fn, data if batches is None else data[:batches]


def _reports(name: str, batches: int | None, sharding) -> dict:
    """Every data-dependent measure (and the rest) of one problem, and sparsity over a prefix."""
    model, loss_fn, data = _build(name, batches)
    full = report(model, data, SUBNETS[name], loss_fn, measures="all", sharpness_steps=3, pac_bayes_samples=2,
                  sharding=sharding)
    prefix = activation_sparseness(model, data, {k: v for k, v in SUBNETS[name].items() if "*" not in v},
                                   max_batches=2, sharding=sharding)
    return {"values": full.values, "skipped": full.skipped, "prefix": prefix}


def _step(model: torch.nn.Module, k: int) -> None:
    """A deterministic change of the parameters (stands for an epoch of training)."""
    g = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _records(directory: str | None, sharding, batches: int | None) -> list:
    """Two monitor records of the MLP (loss, Hessian of the model and a block, cheap capacity
    measures, barrier) with a change of its parameters before each."""
    model, loss_fn, data = _build("mlp", batches)
    monitor = LandscapeMonitor(model, loss_fn, data, sharding=sharding, trace_matvecs=8, subnets={"fc1": "fc1"},
                               interpolate_points=3, directory=directory)
    for epoch in (1, 2):
        _step(model, epoch)
        monitor.epoch_end(epoch)
    return [{k: v for k, v in r.items() if k != "seconds"} for r in monitor.history.records]


def _ranks_target(rank: int, world: int, cases: list, folder: str) -> dict:
    """This rank's reports and monitor records for each case, and which writes it made."""
    from landprobe.monitor import landscape

    writes: list[str] = []
    save, history_save = landscape.atomic_torch_save, landscape.MonitorHistory.save

    def counting_save(obj, path):
        writes.append(os.path.basename(str(path)))
        return save(obj, path)

    def counting_history_save(self, path):
        writes.append(os.path.basename(str(path)))
        return history_save(self, path)
    landscape.atomic_torch_save = counting_save
    landscape.MonitorHistory.save = counting_history_save
    sharding = lp.Sharding(data=True, timeout=60)
    out: dict = {"reports": {}}
    for name, batches in cases:
        out["reports"][name, batches] = _reports(name, batches, sharding)
    directory = os.path.join(folder, "monitor")
    out["records"] = _records(directory, sharding, cases[0][1])
    resumed = LandscapeMonitor(*_build("mlp", cases[0][1]), sharding=sharding, directory=directory, resume=True)
    out["resumed"] = [r["epoch"] for r in resumed.history.records]
    out["writes"] = writes
    out["failure"] = _failure(rank, sharding)                 # last: every rank must raise
    return out


def _failure(rank: int, sharding) -> str:
    """The exception each rank gets when the loss raises on rank 1 only."""
    model, loss_fn, data = _build("mlp", None)

    def loss(out, y):
        if rank == 1:
            raise Boom("rank 1's loss")
        return loss_fn(out, y)
    try:
        fisher_rao_norm(model, loss, data, sharding=sharding)
    except Exception as exc:                                  # noqa: BLE001 - compared by the test
        return f"{type(exc).__name__}: {exc}"
    return "no exception"


def _assert_close(got, want, where: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(got), sorted(want))
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=RTOL, abs_tol=1e-15), \
            (where, got, want)
    else:
        assert got == want, (where, got, want)


CASES = {
    2: [("mlp", None), ("conv_bn", None)],                # 3 batches (5, 3, 4 samples) on 2 ranks
    3: [("mlp", 2), ("conv_bn", None)],                   # 2 batches on 3 ranks: rank 2 holds none
}


@pytest.fixture(scope="module", params=sorted(CASES), ids=lambda w: f"world{w}")
def spawned(request, tmp_path_factory):
    """One spawn per world size: ``(world, cases, each rank's output, the monitor's folder)``."""
    world = request.param
    folder = tmp_path_factory.mktemp(f"world{world}")
    outs = run_ranks(world, _ranks_target, CASES[world], str(folder))
    assert not any(isinstance(o, Raised) for o in outs), outs
    return world, CASES[world], outs, folder / "monitor"


def test_capacity_reports_equal_one_process(spawned):
    _, cases, outs, _ = spawned
    for name, batches in cases:
        want = _reports(name, batches, None)
        assert want["values"]["model"].keys() >= {"fisher_rao", "population_sparseness", "lifetime_sparseness",
                                                  "sharpness", "pac_bayes_sigma"}
        for rank, out in enumerate(outs):
            _assert_close(out["reports"][name, batches], want, f"rank {rank} {name}")


def test_monitor_records_equal_one_process_and_rank_0_writes(spawned):
    _, cases, outs, folder = spawned
    want = _records(None, None, cases[0][1])
    assert {"loss", "lambda_max", "trace", "hessian", "capacity", "barrier", "interpolation"} <= set(want[1])
    for rank, out in enumerate(outs):
        _assert_close(out["records"], want, f"rank {rank} monitor")
        assert out["resumed"] == [1, 2]
    # two records, each writing the previous checkpoint and the history: on rank 0 only
    assert sorted(outs[0]["writes"]) == ["monitor.json"] * 2 + ["monitor_previous.pt"] * 2
    assert all(out["writes"] == [] for out in outs[1:])
    assert "Boom: rank 1's loss" in outs[1]["failure"]
    assert all(out["failure"].startswith("RankFailedError") and "rank 1's loss" in out["failure"]
               for r, out in enumerate(outs) if r != 1)
    saved = LandscapeMonitor.load(folder)
    _assert_close([{k: v for k, v in r.items() if k != "seconds"} for r in saved.records], want, "file")

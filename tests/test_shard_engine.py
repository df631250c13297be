"""Data sharding in the engine: 2 and 3 gloo processes give the one-process numbers.

Each worker builds the same float64 problem, runs the engine's families under
``lp.Sharding(...)`` and returns plain arrays; the test process computes the one-process
reference and compares (to 1e-12 relative: the per-batch losses are computed by one rank each
and summed into place with zeros, so in practice they agree to the last bit). The batches are
of unequal sizes and their number is not a multiple of the world size, so shards are uneven;
one case leaves a rank without any batch.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import landprobe as lp
from problems import point, problems
from ranks import Raised, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

RTOL = 1e-12


def _uneven(name: str) -> tuple[torch.nn.Module, object, list]:
    """A problem with 5 batches of unequal sizes (5 is no multiple of 2 or 3)."""
    model, loss_fn, batches = problems(name)[0].build()
    extra = [(b[0][:2] * 0.5, b[1][:2]) for b in batches[:2]]
    return model, loss_fn, batches + extra


def _families(sharding: lp.Sharding | None) -> dict[str, np.ndarray]:
    """Every engine family on the MLP and the conv+BatchNorm problems."""
    out: dict[str, np.ndarray] = {}
    model, loss_fn, data = _uneven("mlp")
    a, b = point(model, 1), point(model, 2)
    probe = lp.LandscapeProbe(model, loss_fn, data, sharding=sharding, progress=False)
    ev = probe.evaluate(a)
    out["loss"] = np.array([ev.loss, ev.stderr])
    out["batch_losses"], out["batch_sizes"] = ev.batch_losses, ev.batch_sizes.astype(float)
    out["interpolate"] = probe.interpolate(a, b, points=5).losses
    out["interpolate_vmap"] = probe.interpolate(a, b, points=5, batch_points=2).losses
    plane = probe.plane(through=(a, b, point(model, 3)), points=3)
    out["plane"] = np.asarray(plane.losses)
    precise = lp.LandscapeProbe(model, loss_fn, data, sharding=sharding, progress=False, precision=0.2,
                                min_batches=2, seed=3)
    c = precise.interpolate(a, b, points=3)
    out["precision"], out["precision_stderr"] = c.losses, c.stderr
    x = torch.cat([bt[0] for bt in data]); y = torch.cat([bt[1] for bt in data])
    per_sample = lp.LandscapeProbe(model, loss_fn, TensorDataset(x, y), sharding=sharding, progress=False,
                                   precision=0.05, min_batches=2, batch_size=3, seed=1)
    ev = per_sample.evaluate(a)
    out["precision_dataset"] = np.array([ev.loss, ev.stderr, len(ev.batch_losses)])
    bn_model, bn_loss, bn_data = _uneven("conv_bn")
    for mode in ("eval", "train", "recompute"):
        p = lp.LandscapeProbe(bn_model, bn_loss, bn_data, bn=mode, sharding=sharding, progress=False)
        out[f"bn_{mode}"] = p.interpolate(point(bn_model, 1), point(bn_model, 2), points=3).losses
    with torch.no_grad():
        params = list(model.parameters())
    with probe.engine.guard():
        probe.engine.set_eval_modes()
        value, grads = probe.engine.loss_and_grad(params)
    out["loss_and_grad"] = np.concatenate([[value]] + [g.flatten().numpy() for g in grads])
    return out


def _data_sharded(rank: int, world: int) -> dict[str, np.ndarray]:
    return _families(lp.Sharding(data=True))


def _close(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], who: str) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=RTOL, atol=1e-15, err_msg=f"{who}: {k}")


@pytest.mark.parametrize("world", [2, 3])
def test_every_engine_family_equals_one_process(world):
    ref = _families(None)
    outs = run_ranks(world, _data_sharded)
    for rank, got in enumerate(outs):
        assert not isinstance(got, Raised), got
        _close(got, ref, f"rank {rank} of {world}")


def _empty_shard(rank: int, world: int) -> dict[str, np.ndarray]:
    model, loss_fn, batches = problems("mlp")[0].build()
    probe = lp.LandscapeProbe(model, loss_fn, batches[:2], sharding=lp.Sharding(data=True), progress=False)
    ev = probe.evaluate(point(model, 1))
    return {"loss": np.array([ev.loss, ev.stderr]), "curve": probe.interpolate(point(model, 1), point(model, 2),
                                                                                 points=3).losses}


def test_a_rank_without_batches_takes_part():
    model, loss_fn, batches = problems("mlp")[0].build()
    probe = lp.LandscapeProbe(model, loss_fn, batches[:2], progress=False)
    ev = probe.evaluate(point(model, 1))
    ref = {"loss": np.array([ev.loss, ev.stderr]),
           "curve": probe.interpolate(point(model, 1), point(model, 2), points=3).losses}
    for rank, got in enumerate(run_ranks(3, _empty_shard)):          # rank 2 owns no batch
        assert not isinstance(got, Raised), got
        _close(got, ref, f"rank {rank}")


# ---------------------------------------------------------------------------- shards given by the user
def _samples() -> TensorDataset:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(24, 3, generator=g, dtype=torch.float64)
    return TensorDataset(x, torch.randn(24, 2, generator=g, dtype=torch.float64))


def _given(rank: int, world: int) -> dict[str, np.ndarray]:
    model, loss_fn, _ = problems("mlp")[0].build()
    loader = DataLoader(_samples(), batch_size=5, sampler=DistributedSampler(_samples(), shuffle=False))
    probe = lp.LandscapeProbe(model, loss_fn, loader, sharding=lp.Sharding(data=True), progress=False)
    ev = probe.evaluate(point(model, 1))
    return {"loss": np.array([ev.loss, ev.stderr]), "sizes": ev.batch_sizes.astype(float),
            "curve": probe.interpolate(point(model, 1), point(model, 2), points=3).losses}


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_sampler_shards_equal_one_process_over_their_union(world):
    """Rank r's shard holds samples r, r + W, ...; in batches of 5. The one-process reference
    takes the ranks' batches in the order the engine places them (batch k of rank r at k·W + r)."""
    model, loss_fn, _ = problems("mlp")[0].build()
    ds = _samples()
    shards = [[(ds.tensors[0][idx[i:i + 5]], ds.tensors[1][idx[i:i + 5]])
               for i in range(0, len(idx), 5)]
              for idx in (torch.arange(r, 24, world) for r in range(world))]
    union = [shards[r][k] for k in range(max(map(len, shards))) for r in range(world) if k < len(shards[r])]
    probe = lp.LandscapeProbe(model, loss_fn, union, progress=False)
    ev = probe.evaluate(point(model, 1))
    ref = {"loss": np.array([ev.loss, ev.stderr]), "sizes": ev.batch_sizes.astype(float),
           "curve": probe.interpolate(point(model, 1), point(model, 2), points=3).losses}
    for rank, got in enumerate(run_ranks(world, _given)):
        assert not isinstance(got, Raised), got
        _close(got, ref, f"rank {rank} of {world}")


# ---------------------------------------------------------------------------- points across teams of data ranks
def _teams(rank: int, world: int) -> dict[str, np.ndarray]:
    group, _ = dist.new_subgroups(2)
    model, loss_fn, data = _uneven("mlp")
    calls = []

    def counting(out, y):
        calls.append(len(y))
        return loss_fn(out, y)
    counting.reduction = "mean"    # stated, so the engine's reduction check makes no extra call to count
    probe = lp.LandscapeProbe(model, counting, data, sharding=lp.Sharding(data=group), progress=False)
    plane = probe.plane(through=(point(model, 1), point(model, 2), point(model, 3)), points=3)
    return {"plane": np.asarray(plane.losses), "samples": np.array([float(sum(calls))])}


def test_points_across_teams_and_data_within_each():
    model, loss_fn, data = _uneven("mlp")
    seen = []

    def counting(out, y):
        seen.append(len(y))
        return loss_fn(out, y)
    counting.reduction = "mean"
    ref = lp.LandscapeProbe(model, counting, data, progress=False).plane(
        through=(point(model, 1), point(model, 2), point(model, 3)), points=3)
    outs = run_ranks(4, _teams)
    for rank, got in enumerate(outs):
        assert not isinstance(got, Raised), got
        np.testing.assert_allclose(got["plane"], ref.losses, rtol=RTOL, err_msg=f"rank {rank}")
    # the two teams split the points (one more at most for team 0) and, within a team, the two
    # ranks split each pass: every sample of every point evaluated exactly once overall
    samples = sum(len(b[0]) for b in data)
    share = [float(o["samples"][0]) for o in outs]
    teams = [share[0] + share[1], share[2] + share[3]]
    assert sum(teams) == sum(seen)
    assert 0 <= teams[0] - teams[1] <= samples and teams[1] > 0
    assert all(0 < s < t for s, t in zip(share, [teams[0]] * 2 + [teams[1]] * 2))


# ---------------------------------------------------------------------------- refused set-ups
def _refusals(rank: int, world: int) -> list[str]:
    model, loss_fn, _ = problems("mlp")[0].build()
    ds = _samples()
    messages = []
    cases = [
        (DataLoader(ds, batch_size=5, sampler=DistributedSampler(ds, shuffle=False)), lp.Sharding()),
        (DataLoader(TensorDataset(*(t[:23] for t in ds.tensors)), batch_size=5,
                    sampler=DistributedSampler(TensorDataset(*(t[:23] for t in ds.tensors)), shuffle=False)),
         lp.Sharding(data=True)),
        (DataLoader(ds, batch_size=5, shuffle=True), lp.Sharding(data=True)),
    ]
    for data, sharding in cases:
        try:
            lp.LandscapeProbe(model, loss_fn, data, sharding=sharding, progress=False).loss()
            messages.append("accepted")
        except ValueError as exc:
            messages.append(str(exc))
    return messages


def test_sharded_data_that_would_be_miscounted_is_refused():
    for messages in run_ranks(2, _refusals):
        assert not isinstance(messages, Raised), messages
        sampler_unused, padded, shuffled = messages
        assert "DistributedSampler" in sampler_unused and "Sharding(data=True)" in sampler_unused
        assert "repeats 1 sample" in padded
        assert "shuffle=False" in shuffled


def test_sharding_arguments_are_checked():
    with pytest.raises(TypeError, match="Sharding\\(data=...\\)"):
        lp.Sharding(data="world")
    with pytest.raises(ValueError, match="split='rows'"):
        lp.Sharding(data=True, split="rows")
    with pytest.raises(ValueError, match="timeout"):
        lp.Sharding(timeout=0)
    with pytest.raises(TypeError, match="sharding="):
        lp.LandscapeProbe(torch.nn.Linear(1, 1), torch.nn.MSELoss(), [], sharding=True)


# ---------------------------------------------------------------------------- one rank fails
def _failing(rank: int, world: int, data_sharded: bool) -> float:
    model, loss_fn, data = _uneven("mlp")

    def loss(out, y):
        if rank == 1 and len(y) == 3:
            raise FloatingPointError("loss exploded on this batch")
        return loss_fn(out, y)
    sharding = lp.Sharding(data=True, timeout=60) if data_sharded else lp.Sharding(timeout=60)
    probe = lp.LandscapeProbe(model, loss, data, sharding=sharding, progress=False)
    return float(probe.interpolate(point(model, 1), point(model, 2), points=4).losses.sum())


@pytest.mark.parametrize("data_sharded", [True, False], ids=["data", "points"])
def test_an_exception_on_one_rank_is_raised_on_every_rank(data_sharded):
    start = time.monotonic()
    outs = run_ranks(3, _failing, data_sharded, timeout=90)
    assert time.monotonic() - start < 40                          # far below the 60 s collective timeout
    assert outs[1].kind == "FloatingPointError"
    for rank in (0, 2):
        assert outs[rank].kind == "RankFailedError", outs[rank]
        assert "rank 1 raised" in outs[rank].message and "loss exploded" in outs[rank].message


def _late(rank: int, world: int) -> float:
    model, loss_fn, data = _uneven("mlp")
    if rank == 1:
        time.sleep(4)                                             # stands in for a rank stuck elsewhere
    probe = lp.LandscapeProbe(model, loss_fn, data, sharding=lp.Sharding(data=True, timeout=1), progress=False)
    return probe.loss()


def test_a_rank_that_does_not_answer_times_out_the_others():
    outs = run_ranks(2, _late, timeout=60)
    assert outs[0].kind == "RankFailedError" and "within 1 s" in outs[0].message
    assert outs[0].seconds < 3
    assert isinstance(outs[1], Raised)                            # its peer is gone: it fails too, at once


# ---------------------------------------------------------------------------- other batch structures
def _structures(sharding: lp.Sharding | None) -> dict[str, np.ndarray]:
    """Dict batches through a BatchLoss (whole batches, also for a fit step) and keyword inputs
    in the pair form (a fit step's batch sliced inside the dict)."""
    model, loss_fn, data = _uneven("mlp")
    out: dict[str, np.ndarray] = {}

    def batch_loss(m, batch):
        return loss_fn(m(batch["x"]), batch["y"])
    dicts = [{"x": x, "y": y, "tag": "same for all"} for x, y in data]
    probe = lp.LandscapeProbe(model, lp.BatchLoss(batch_loss), dicts, sharding=sharding, progress=False)
    a, b = point(model, 1), point(model, 2)
    out["batchloss.curve"] = probe.interpolate(a, b, points=3).losses
    path = probe.connect(a, b, method="polychain", bends=1, steps=4, lr=0.05, points=3)
    out["batchloss.fit"] = np.array(path.settings["train_losses"])

    class Keyword(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *, features):
            return self.inner(features)
    kw_model = Keyword(model)
    kw_data = [({"features": x}, y) for x, y in data]
    kw = lp.LandscapeProbe(kw_model, loss_fn, kw_data, sharding=sharding, progress=False)
    ka, kb = ({f"inner.{k}": v for k, v in p.items()} for p in (a, b))
    out["keyword.curve"] = kw.interpolate(ka, kb, points=3).losses
    out["keyword.fit"] = np.array(kw.connect(ka, kb, method="polychain", bends=1, steps=4, lr=0.05,
                                             points=3).settings["train_losses"])
    return out


def _structures_sharded(rank: int, world: int) -> dict[str, np.ndarray]:
    return _structures(lp.Sharding(data=True))


def test_batch_losses_and_keyword_inputs_equal_one_process():
    ref = _structures(None)
    for rank, got in enumerate(run_ranks(2, _structures_sharded)):
        assert not isinstance(got, Raised), got
        _close(got, ref, f"rank {rank}")

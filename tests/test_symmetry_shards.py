"""Activation matching and aligned interpolation under data sharding equal the one-process ones.

Two gloo ranks share 3 batches of unequal sizes (float64 MLP); every rank must get the
permutation, the matched correlations and the aligned curve that one process computes. A
rank whose own shard is empty fails on every rank with the reason, not with a hang.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from ranks import Raised, run_ranks
from torch import nn

import landprobe as lp
from landprobe import symmetry as S

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")


def _problem():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 2)).double()
    b = nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 2)).double()
    data = [(torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64)) for n in (5, 11, 4)]
    return a, b, data


def _results(sharding):
    a, b, data = _problem()
    found = S.activation_matching(a, b, data, sharding=sharding)
    probe = lp.LandscapeProbe(a, nn.MSELoss(), data, sharding=sharding, progress=False)
    curve = probe.interpolate(a.state_dict(), b.state_dict(), points=3, align="activations")
    return {"perms": found.perms, "objective": found.objective, "samples": found.settings["samples"],
            "losses": curve.losses.tolist(), "naive": curve.settings["align"]["naive_losses"]}


def _target(rank: int, world: int):
    return _results(lp.Sharding(data=True, timeout=60))


def _empty_shard(rank: int, world: int):
    a, b, data = _problem()
    sharding = lp.Sharding(data=True, split="given", timeout=60)
    return S.activation_matching(a, b, data if rank == 0 else [], sharding=sharding)


def test_activation_matching_under_data_sharding_equals_one_process():
    want = _results(None)
    outs = run_ranks(2, _target)
    for out in outs:
        assert not isinstance(out, Raised), out
        assert out["perms"] == want["perms"] and out["samples"] == want["samples"]
        torch.testing.assert_close(torch.tensor(out["objective"]), torch.tensor(want["objective"]), rtol=1e-12,
                                   atol=0)
        torch.testing.assert_close(torch.tensor(out["losses"]), torch.tensor(want["losses"]), rtol=1e-12, atol=0)
        torch.testing.assert_close(torch.tensor(out["naive"]), torch.tensor(want["naive"]), rtol=1e-12, atol=0)


def test_an_empty_shard_fails_on_every_rank():
    outs = run_ranks(2, _empty_shard, timeout=120)
    assert all(isinstance(o, Raised) for o in outs), outs
    assert any("no batch to trace" in o.message for o in outs), outs

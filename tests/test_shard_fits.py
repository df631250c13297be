"""Fits under data sharding (``lp.Sharding(data=True)``) give every rank the one-process result.

Bezier and polychain curves, AutoNEB, a level-set search and perturb's retraining run on 2 and
3 gloo ranks over batches of unequal size, one of them with fewer samples than ranks (so some
rank's part of that step is empty); a BatchNorm model (whole batches per step), a given split
(each rank its own shard) and a float32 model run one or two fits each, and perturb runs on
a points x data layout. Every rank must hold the same numbers (bitwise: the decisions of the
fits are taken on summed values), equal to one process's up to float64 rounding. Under 2
ranks the checkpoints are written by rank 0 alone, a resumed run equals an uninterrupted
one, and ranks that find different checkpoint files refuse to resume.

Many fits run in one spawn per world size (starting a rank costs seconds).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

import landprobe as lp

sys.path.insert(0, os.path.dirname(__file__))
from problems import point, problems  # noqa: E402
from ranks import Raised, run_ranks  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

#: float64 rounding: a rank's share of a step's loss is the loss of its slice times its weight,
#: and the shares are summed in another order than one process's single mean.
RTOL = 1e-12

#: float32 rounding of the same sums, over a few steps.
RTOL_FLOAT32 = 1e-5

NEB_SCHEDULE = [dict(steps=4, lr=0.05, insert=2), dict(steps=4, lr=0.05, insert=1, climbing=True)]


# ----------------------------------------------------------------------------- problems
def mlp_data() -> tuple[torch.nn.Module, Any, list]:
    """The MLP and batches of 5, 1, 4 and 2 samples (the 1- and 2-sample batches leave some
    rank of 2 or 3 without a sample)."""
    model, loss_fn, b = problems("mlp")[0].build()
    x1, y1 = b[1]
    return model, loss_fn, [b[0], (x1[:1], y1[:1]), b[2], (x1[1:], y1[1:])]


def permuted(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The MLP with its hidden units permuted: the same function, another point."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    perm = torch.roll(torch.arange(sd["fc1.bias"].numel()), 1)
    sd["fc1.weight"], sd["fc1.bias"] = sd["fc1.weight"][perm], sd["fc1.bias"][perm]
    sd["fc2.weight"] = sd["fc2.weight"][:, perm]
    return sd


def flat(points: Any) -> np.ndarray:
    """The control points / images / beads of a result as one float64 array."""
    return np.concatenate([t.detach().reshape(-1).numpy() for p in points for t in p.tensors])


def shards(batches: list, rank: int, world: int) -> list:
    """Rank ``rank``'s own part of every batch (contiguous rows): the concatenation over the
    ranks of their batch k is batch k."""
    def rows(t: torch.Tensor) -> torch.Tensor:
        n = len(t)
        return t[rank * n // world:(rank + 1) * n // world]
    return [(rows(x), rows(y)) for x, y in batches]


# ----------------------------------------------------------------------------- the fits
def curve_fits(sharding: Any) -> dict[str, np.ndarray]:
    """Bezier, polychain, AutoNEB, a level set and perturb on the MLP."""
    model, loss_fn, data = mlp_data()
    probe = lp.LandscapeProbe(model, loss_fn, data, sharding=sharding)
    a, b = point(model, 1), point(model, 2)
    out: dict[str, np.ndarray] = {}
    bez = probe.connect(a, b, method="bezier", bends=2, steps=8, lr=0.05, t_samples=2, points=5, seed=3)
    poly = probe.connect(a, b, method="polychain", bends=2, steps=8, lr=0.05, points=5)
    for name, path in (("bezier", bez), ("polychain", poly)):
        out[f"{name}.bends"] = flat(path.points[1:-1])
        out[f"{name}.losses"] = path.losses
        out[f"{name}.train"] = np.array(path.settings["train_losses"])
    neb = probe.connect(a, b, method="neb", schedule=NEB_SCHEDULE, sub_points=2, points=5)
    out["neb.images"], out["neb.energies"] = flat(neb.points), neb.knot_losses
    out["neb.losses"], out["neb.knots"] = neb.losses, neb.knots
    out["neb.climbing"] = np.array([-1 if c.get("climbing_image") is None else c["climbing_image"]
                                  for c in neb.settings["schedule"]], dtype=float)
    out.update(level_fit(probe, model)[0])
    r = probe.perturb(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), scale=0.2, steps=4, repeats=2, seed=5,
                      eval_every=2)
    out["perturb.base"] = np.array([r.base_loss])
    out["perturb.losses"], out["perturb.train"], out["perturb.noise"] = r.losses, r.train_losses, r.noise_norms
    return out


def level_fit(probe: lp.LandscapeProbe, model: torch.nn.Module, checkpoint: Any = None
              ) -> tuple[dict[str, np.ndarray], Any]:
    """A level set between the MLP and its permutation that needs two descents, and the
    number of descents it resumed after."""
    a, b = {k: v.detach().clone() for k, v in model.state_dict().items()}, permuted(model)
    la, mid = probe.loss(a), probe.loss({k: (a[k] + b[k]) / 2 for k in a})
    r = probe.level_set(a, b, threshold=la + 0.2 * (mid - la), steps=60, lr=0.2, check_every=5, max_beads=6,
                        checkpoint=checkpoint)
    return ({"level.connected": np.array([float(r.connected), r.settings["descents"]]), "level.ts": r.ts,
             "level.losses": r.losses, "level.beads": flat(r.beads), "level.bead_losses": r.bead_losses},
            r.settings.get("resumed_after_descents"))


def bn_fits(sharding: Any) -> dict[str, np.ndarray]:
    """A polychain and perturb on the conv + BatchNorm model (each step's batch whole on one rank)."""
    model, loss_fn, data = problems("conv_bn")[0].build()
    probe = lp.LandscapeProbe(model, loss_fn, data, sharding=sharding)
    path = probe.connect(point(model, 1), point(model, 2), method="polychain", bends=1, steps=6, lr=0.05,
                         points=4)
    r = probe.perturb(lambda p: torch.optim.SGD(p, lr=0.05), scale=0.1, steps=3, repeats=1, seed=2)
    return {"bn.bends": flat(path.points[1:-1]), "bn.losses": path.losses,
            "bn.train": np.array(path.settings["train_losses"]), "bn.perturb": r.losses,
            "bn.perturb_train": r.train_losses}


def frozen_perturb(sharding: Any) -> dict[str, np.ndarray]:
    """perturb whose optimizer holds a frozen parameter, with weight decay and momentum: no
    rank's backward reaches it, so it must keep no gradient (the optimizer skips it) as alone."""
    model, loss_fn, data = problems("frozen")[0].build()
    probe = lp.LandscapeProbe(model, loss_fn, data, sharding=sharding)
    r = probe.perturb(lambda p: torch.optim.SGD(list(model.parameters()), lr=0.05, momentum=0.9, weight_decay=0.1),
                      scale=0.2, steps=3, repeats=1, seed=4)
    return {"frozen.losses": r.losses, "frozen.train": r.train_losses}


def given_fit(data: list, sharding: Any) -> dict[str, np.ndarray]:
    """A polychain on the MLP over ``data`` (each rank's own shard under ``split="given"``)."""
    model, loss_fn, _ = problems("mlp")[0].build()
    probe = lp.LandscapeProbe(model, loss_fn, data, sharding=sharding)
    path = probe.connect(point(model, 1), point(model, 2), method="polychain", bends=2, steps=6, lr=0.05,
                         points=5)
    # the losses only: the per-batch standard errors depend on how the samples fall into batches
    return {"given.bends": flat(path.points[1:-1]), "given.losses": path.losses,
            "given.train": np.array(path.settings["train_losses"])}


def float32_neb(sharding: Any) -> dict[str, np.ndarray]:
    """AutoNEB on the MLP in float32 (a rank's empty part must not change the energies' rounding)."""
    model, loss_fn, data = mlp_data()
    model = model.float()
    probe = lp.LandscapeProbe(model, loss_fn, [(x.float(), y.float()) for x, y in data], sharding=sharding)
    a, b = ({k: v.float() for k, v in point(model, seed).items()} for seed in (1, 2))
    path = probe.connect(a, b, method="neb", schedule=NEB_SCHEDULE, sub_points=2, points=5)
    return {"f32.images": flat(path.points).astype(np.float64), "f32.losses": path.losses}


def grouped_perturb(sharding: Any, counter: list | None = None) -> dict[str, np.ndarray]:
    """perturb with three repeats (split across the teams of a points x data layout)."""
    model, loss_fn, data = mlp_data()
    probe = lp.LandscapeProbe(model, loss_fn, data, sharding=sharding)

    def factory(params: list) -> torch.optim.Optimizer:
        if counter is not None:
            counter.append(1)                 # one optimizer per repeat this rank runs
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    r = probe.perturb(factory, scale=0.2, steps=4, repeats=3, seed=9, eval_every=2)
    return {"groups.losses": r.losses, "groups.train": r.train_losses, "groups.noise": r.noise_norms}


# ----------------------------------------------------------------------------- checkpoints
class Boom(Exception):
    """The error a trapped loss raises."""


class Trap:
    """The MLP's loss, raising :class:`Boom` once armed (rank 0 arms it at its first checkpoint
    write, so the run stops after that checkpoint and before the next)."""

    armed_by_writes: Trap | None = None

    def __init__(self, loss_fn: Any):
        self.loss_fn, self.armed = loss_fn, False

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise Boom("interrupted")
        return self.loss_fn(out, y)


def count_writes() -> dict[str, int]:
    """Count the checkpoint writes of connect, AutoNEB and level set in this process (each
    write also arms the pending :class:`Trap`)."""
    import importlib

    writes = {"connect": 0, "neb": 0, "level": 0}
    for name, module in (("connect", "connect"), ("neb", "neb"), ("level", "levelset")):
        mod = importlib.import_module(f"landprobe.probes.curves.{module}")
        def counted(obj: Any, path: Any, name: str = name, save: Any = mod.atomic_torch_save) -> Any:
            writes[name] += 1
            if Trap.armed_by_writes is not None:
                Trap.armed_by_writes.armed = True
            return save(obj, path)
        mod.atomic_torch_save = counted
    return writes


def checkpointed(kind: str, loss_fn: Any, path: Any) -> tuple[dict[str, np.ndarray], Any]:
    """One checkpointed fit of ``kind`` on 2 ranks: its numbers and where it resumed."""
    model, _, data = mlp_data()
    probe = lp.LandscapeProbe(model, loss_fn, data, sharding=lp.Sharding(data=True))
    a, b = point(model, 1), point(model, 2)
    if kind == "connect":
        p = probe.connect(a, b, method="polychain", bends=2, steps=12, lr=0.05, checkpoint=path, checkpoint_every=4)
        return {"bends": flat(p.points[1:-1]), "losses": p.losses}, p.settings.get("resumed_at_step")
    if kind == "neb":
        p = probe.connect(a, b, method="neb", schedule=NEB_SCHEDULE + [dict(steps=3, lr=0.02, climbing=True)],
                          sub_points=2, points=5, checkpoint=path)
        return {"images": flat(p.points), "losses": p.losses}, p.settings.get("resumed_at_cycle")
    return level_fit(probe, model, checkpoint=path)


def checkpoints(rank: int, folder: str) -> dict[str, Any]:
    """Each fit uninterrupted, interrupted after its first checkpoint and resumed; then ranks
    that are given different checkpoint files (as on unshared file systems)."""
    writes = count_writes()
    _, loss_fn, _ = problems("mlp")[0].build()
    out: dict[str, Any] = {}
    for kind in ("connect", "neb", "level"):
        out[f"{kind}.plain"], _ = checkpointed(kind, loss_fn, os.path.join(folder, f"{kind}-plain.pt"))
        out[f"{kind}.writes"] = writes[kind]
        trap = Trap(loss_fn)
        Trap.armed_by_writes = trap if rank == 0 else None
        stopped = os.path.join(folder, f"{kind}-stopped.pt")
        try:
            checkpointed(kind, trap, stopped)
            out[f"{kind}.stopped"] = None
        except Exception as exc:  # noqa: BLE001 - the test checks which
            out[f"{kind}.stopped"] = type(exc).__name__
        Trap.armed_by_writes = None
        out[f"{kind}.resumed"], out[f"{kind}.resumed_at"] = checkpointed(kind, loss_fn, stopped)
    mine = os.path.join(folder, "connect-plain.pt" if rank == 0 else "connect-absent.pt")
    try:
        checkpointed("connect", loss_fn, mine)
        out["unshared"] = None
    except ValueError as exc:
        out["unshared"] = str(exc)
    return out


# ----------------------------------------------------------------------------- the runs
def on_ranks(rank: int, world: int, folder: str) -> dict[str, Any]:
    """Every fit on this rank (run by ``run_ranks``): data sharding over all the ranks, a
    given split; with 2 ranks the checkpoints, with 3 a float32 AutoNEB and a points x data
    layout (ranks 0 and 1 share the data of one team, rank 2 is the other team)."""
    fits = curve_fits(lp.Sharding(data=True))
    fits.update(bn_fits(lp.Sharding(data=True)))
    fits.update(frozen_perturb(lp.Sharding(data=True)))
    _, _, batches = problems("mlp")[0].build()
    fits.update(given_fit(shards(batches, rank, world), lp.Sharding(data=True, split="given")))
    out: dict[str, Any] = {"fits": fits}
    if world == 2:
        out["checkpoints"] = checkpoints(rank, folder)
    else:
        fits.update(float32_neb(lp.Sharding(data=True)))
        teams = [dist.new_group([0, 1]), dist.new_group([2])]
        counter: list = []
        fits.update(grouped_perturb(lp.Sharding(data=teams[0] if rank < 2 else teams[1]), counter))
        out["repeats_run"] = len(counter)
    return out


@pytest.fixture(scope="module")
def one_process() -> dict[str, np.ndarray]:
    out = curve_fits(None)
    out.update(bn_fits(None))
    out.update(frozen_perturb(None))
    out.update(given_fit(problems("mlp")[0].build()[2], None))
    out.update(grouped_perturb(None))
    out.update(float32_neb(None))
    return out


def spawn(world: int, folder: Any) -> list[dict[str, Any]]:
    got = run_ranks(world, on_ranks, str(folder))
    for rank, res in enumerate(got):
        assert not isinstance(res, Raised), f"rank {rank}: {res}"
    return got


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict[str, Any]]:
    return spawn(2, tmp_path_factory.mktemp("two_ranks"))


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory) -> list[dict[str, Any]]:
    return spawn(3, tmp_path_factory.mktemp("three_ranks"))


def close(have: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> bool:
    """Equal to rounding: the largest difference at most ``rtol`` times the largest value."""
    scale = np.max(np.abs(want)) if want.size else 0.0
    return have.shape == want.shape and bool(np.max(np.abs(have - want), initial=0.0) <= rtol * scale)


@pytest.mark.parametrize("world", [2, 3])
def test_fits_on_every_rank_equal_one_process(world, one_process, request):
    got = request.getfixturevalue("two_ranks" if world == 2 else "three_ranks")
    bad = []
    for key, want in one_process.items():
        if key.startswith(("groups.", "f32.")) and world != 3:
            continue
        have = got[0]["fits"][key]
        for rank in range(1, world):       # the same numbers on every rank, bit for bit
            np.testing.assert_array_equal(got[rank]["fits"][key], have, err_msg=f"{key}: rank {rank} vs 0")
        if not close(have, want, RTOL_FLOAT32 if key.startswith("f32.") else RTOL):
            bad.append((key, np.max(np.abs(have - want)) if have.shape == want.shape else "shape"))
    assert not bad, bad
    if world == 3:                         # team 0 (ranks 0, 1) ran repeats 0 and 2, team 1 repeat 1
        assert [g["repeats_run"] for g in got] == [2, 2, 1]


def test_checkpoints_are_written_by_rank_0_and_resumed_runs_equal_uninterrupted_ones(two_ranks):
    zero, one = two_ranks[0]["checkpoints"], two_ranks[1]["checkpoints"]
    for kind, resumed_at in (("connect", 4), ("neb", 1), ("level", 1)):
        assert zero[f"{kind}.writes"] > 0 and one[f"{kind}.writes"] == 0, kind
        assert (zero[f"{kind}.stopped"], one[f"{kind}.stopped"]) == ("Boom", "RankFailedError"), kind
        assert zero[f"{kind}.resumed_at"] == one[f"{kind}.resumed_at"] == resumed_at, kind
        for rank in (zero, one):
            plain, resumed = rank[f"{kind}.plain"], rank[f"{kind}.resumed"]
            for key in plain:
                # a reloaded point may sit at another memory alignment, where vectorised kernels
                # round the head and tail of an array differently (last-digit differences)
                assert close(resumed[key], plain[key]), (kind, key)
    for rank in (zero, one):
        assert "the ranks read different checkpoints" in rank["unshared"]
        assert "rank 0: step 12, rank 1: no file" in rank["unshared"]

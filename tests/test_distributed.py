"""Two gloo processes give the same curve as one process."""

import os
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import landprobe as lp

sys.path.insert(0, os.path.dirname(__file__))
from helpers import CASES, perturbed  # noqa: E402


def _curve(calls=None):
    model, data = CASES[1].build(dtype=torch.float64)

    def loss_fn(out, y):
        if calls is not None:
            calls.append(1)
        return CASES[1].loss_fn(out, y)
    loss_fn.reduction = "mean"     # stated, so the engine's reduction check makes no extra call to count

    probe = lp.LandscapeProbe(model, loss_fn, data)
    return probe.interpolate(perturbed(model, 1), perturbed(model, 2), points=7)


def _worker(rank, world, init_file, out_dir):
    sys.path.insert(0, os.path.dirname(__file__))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        calls = []
        curve = _curve(calls)
        curve.save(os.path.join(out_dir, f"rank{rank}.json"))
        with open(os.path.join(out_dir, f"calls{rank}"), "w") as fh:
            fh.write(str(len(calls)))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_gloo_ranks_equal_one_process(tmp_path):
    single = _curve()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = lp.Curve.load(tmp_path / f"rank{rank}.json")
        np.testing.assert_array_equal(got.alphas, single.alphas)
        np.testing.assert_array_equal(got.losses, single.losses)  # same points, same arithmetic
        np.testing.assert_array_equal(got.stderr, single.stderr)
    # the 7 points were split 4 + 3 across the ranks (2 batches per point)
    assert [int((tmp_path / f"calls{r}").read_text()) for r in range(2)] == [8, 6]

"""Perturbation repeats split across two gloo ranks give the one-process result on every rank."""

import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import landprobe as lp

sys.path.insert(0, os.path.dirname(__file__))
from helpers import CASES  # noqa: E402

REPEATS, STEPS = 5, 3


def _run(counter=None):
    model, data = CASES[0].build(dtype=torch.float64)

    def factory(params):
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        if counter is not None:
            counter.append(1)                       # one optimizer per repeat run here
        return opt

    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    return probe.perturb(factory, scale=0.2, steps=STEPS, repeats=REPEATS, seed=7)


def _worker(rank, world, init_file, out_dir):
    sys.path.insert(0, os.path.dirname(__file__))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        counter = []
        res = _run(counter)
        res.save(os.path.join(out_dir, f"rank{rank}.json"))
        with open(os.path.join(out_dir, f"repeats{rank}"), "w") as fh:
            json.dump(len(counter), fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_gloo_ranks_equal_one_process(tmp_path):
    single = _run()
    assert single.settings["ranks"] == 1
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = lp.probes.PerturbationResult.load(tmp_path / f"rank{rank}.json")
        assert got.settings["ranks"] == 2
        assert got.base_loss == single.base_loss
        np.testing.assert_array_equal(got.losses, single.losses)        # same seeds, same arithmetic
        np.testing.assert_array_equal(got.train_losses, single.train_losses)
        np.testing.assert_array_equal(got.noise_norms, single.noise_norms)
    # repeats 0, 2, 4 on rank 0 and 1, 3 on rank 1
    assert [json.loads((tmp_path / f"repeats{r}").read_text()) for r in range(2)] == [3, 2]

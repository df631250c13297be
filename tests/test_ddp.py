"""Two gloo ranks, each with half of every global batch, train like one process (DDP)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import landprobe as lp
from landprobe.recipes import _train

SPEC = dict(width=0.05, batch_size=64, max_steps=3, epochs=10, seed=3)


def _patches():
    ds = lp.data.T91Patches(lp.data.sample_dir("train"), scale=2)  # 49 patches: batches span several pools
    return ds.inputs, ds.targets


def _train_steps(setting):
    x, y = _patches()
    tr = _train.Trainer(_train.TrainSpec(setting=setting, **SPEC), x, y)
    tr.run()
    return tr


def _worker(rank, world, init_file, out_dir, setting):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tr = _train_steps(setting)
        torch.save({k: v.clone() for k, v in tr.model.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
        x, y = _patches()
        try:
            _train.Trainer(_train.TrainSpec(setting=setting, **{**SPEC, "batch_size": 63}), x, y)
        except ValueError as exc:
            with open(os.path.join(out_dir, f"err{rank}.txt"), "w") as fh:
                fh.write(str(exc))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
@pytest.mark.parametrize("setting", ["mix"])
def test_two_gloo_ranks_equal_one_process(tmp_path, setting):
    torch.set_num_threads(1)
    single = _train_steps(setting)
    assert single.step == 3
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), setting), nprocs=2, join=True)
    moved = False
    init = _train.build_model(SPEC["width"], 4, SPEC["seed"]).state_dict()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for k, v in single.model.state_dict().items():
            torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-6, msg=f"rank {rank}, {k}")
            moved |= not torch.equal(v, init[k])
        err = (tmp_path / f"err{rank}.txt").read_text()
        assert "batch_size=63 does not split over 2 ranks" in err
    assert moved  # the three steps changed the parameters

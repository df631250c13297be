"""``landprobe probe`` under ``torchrun``: two ranks share the data and give the one-process file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

import landprobe as lp
from landprobe.cli import build_parser, main

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")


COUNTS = "LANDPROBE_TEST_COUNTS"


class CountingWarship(lp.models.WarshipXZNetBeta):
    """WARSHIP that appends each forward's batch size to ``$LANDPROBE_TEST_COUNTS/rank<RANK>``."""

    def forward(self, x):
        folder = os.environ.get(COUNTS)
        if folder:
            with open(os.path.join(folder, f"rank{os.environ.get('RANK', '0')}"), "a") as fh:
                fh.write(f"{x.shape[0]}\n")
        return super().forward(x)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        path = d / f"m{seed}.pt"
        torch.save(lp.models.WarshipXZNetBeta(width=0.05).state_dict(), path)
        paths.append(str(path))
    return paths


def _args(checkpoints, out) -> list[str]:
    """A small job: 2 batches of 16 patches, 3 points."""
    return ["probe", "interpolate", *checkpoints, "--points", "3", "--model", "test_shard_cli:CountingWarship",
            "--model-kwargs", '{"width": 0.05}', "--patches", "32", "--batch-size", "16",
            "--data", str(lp.data.sample_dir("train")), "--out", str(out), "--no-progress", "--threads", "1"]


def test_two_ranks_write_the_one_process_file_once(checkpoints, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert main(_args(checkpoints, tmp_path / "one")) == 0
    finally:
        torch.set_num_threads(threads)
    assert capsys.readouterr().out.count("barrier") == 1
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    counts = tmp_path / "counts"
    counts.mkdir()
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(sys.path),
               **{COUNTS: str(counts)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "landprobe.cli", *_args(checkpoints, tmp_path / "two")]
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("barrier") == 1 and run.stdout.count("wrote ") == 1, run.stdout   # rank 0 prints
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["interpolate.json", "interpolate.png"]
    # the data was shared: each rank ran its one batch of 16 at each of the 3 points
    assert [(counts / f"rank{r}").read_text().split() for r in range(2)] == [["16"] * 3] * 2
    one = json.loads((tmp_path / "one" / "interpolate.json").read_text())
    two = json.loads((tmp_path / "two" / "interpolate.json").read_text())
    for key in ("alphas", "losses", "stderr", "loss_a", "loss_b"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-12, atol=0)
    assert two["settings"] == one["settings"]


def test_sharding_options_and_help(capsys):
    args = build_parser().parse_args(["probe", "plane", "a.pt", "--sharding", "points", "--timeout", "60"])
    assert (args.sharding, args.timeout, args.device) == ("points", 60.0, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["probe", "plane", "a.pt", "--timeout", "0"])
    assert "positive finite number of seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "torchrun" in text and "rank 0" in text
    for kind in ("interpolate", "plane", "connect", "level-set"):
        with pytest.raises(SystemExit):
            main(["probe", kind, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--sharding {data,points}" in text and "--timeout TIMEOUT" in text and "rank 0" in text

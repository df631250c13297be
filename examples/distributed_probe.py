"""Probe one model with several processes: alone, or under torchrun.

    python examples/distributed_probe.py                                   # one process
    torchrun --nproc_per_node 2 examples/distributed_probe.py              # 2 ranks share the data
    torchrun --nproc_per_node 2 examples/distributed_probe.py --sharding points
    torchrun --nproc_per_node 4 examples/distributed_probe.py --teams 2    # 2 teams of 2 ranks

A small regression network and 10 batches (unequal sizes). Every rank builds the same probe;
with ``--sharding data`` the ranks share each pass over the data (the loss, the plane, the
Hessian's products, a curve fit), with ``--sharding points`` they split the plane's points
and each passes over all the data, and with ``--teams T`` the points are split across T teams
whose ranks share the data. Every rank gets the same numbers as one process; rank 0 prints
them (and writes ``--out`` as JSON).
"""

import argparse
import datetime
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import landprobe as lp


def make_problem(seed: int = 0) -> tuple[nn.Module, list]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)).double()
    w = torch.randn(8, 1, generator=g, dtype=torch.float64)
    data = []
    for n in (16, 16, 16, 16, 16, 16, 16, 16, 16, 7):
        x = torch.randn(n, 8, generator=g, dtype=torch.float64)
        data.append((x, torch.tanh(x @ w)))
    return model, data


def start() -> None:
    """The process group of a torchrun launch (nccl with the device of LOCAL_RANK on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sharding", choices=("data", "points"), default="data")
    ap.add_argument("--teams", type=int, default=1, help="points across this many teams, data within each")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here (rank 0)")
    args = ap.parse_args(argv)
    start()
    if args.teams > 1:
        group, _ = dist.new_subgroups(dist.get_world_size() // args.teams)
        sharding = lp.Sharding(data=group)
    else:
        sharding = lp.Sharding(data=args.sharding == "data")
    model, data = make_problem()
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data, sharding=sharding, progress=False)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.1 * torch.ones_like(v) for k, v in a.items()}
    numbers = {
        "loss": probe.loss(a),
        "plane_min": float(probe.plane(a, points=5, seed=1).losses.min()),
        "top_eigenvalue": float(probe.hessian(a).top_eigenvalues(k=1).values[0]),
        "curve_max": float(probe.connect(a, b, bends=1, steps=20, lr=0.05, points=11).losses.max()),
    }
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps(numbers, indent=1))
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(numbers, fh)
    if dist.is_initialized():
        dist.destroy_process_group()
    return numbers


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # under torchrun, leave without the interpreter's finalisation: with torch 2.13 a gloo
        # rank can abort there ("terminate called without an active exception") after its work
        # is done and its process group destroyed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

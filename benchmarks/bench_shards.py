"""1 process against W processes sharing the data: a plane, top_eigenvalues, bytes exchanged.

Data sharding is ``lp.Sharding(data=True)``.

    python benchmarks/bench_shards.py [--world 2] [--steps 7] [--rounds 3] [--out FILE]

Model: a small CNN whose forward dominates (3x32x32 inputs, two 3x3 convs of 32 channels,
15,274 parameters), 8 batches of 32 samples, float32, one torch thread per process. Each
configuration runs in fresh gloo processes (world 1, then world W, alternating for
``--rounds`` rounds); inside, each probe is timed after one warm-up call. Reported: the
median wall time per configuration, the speed-up (1-process time / W-process time, paired by
round), and the payload bytes each rank hands to collectives (the tensors' sizes, counted by
wrapping ``torch.distributed.all_reduce`` / ``all_gather``) per plane point and per Hessian
product. A ring all-reduce sends about 2(W-1)/W times its payload per rank. Also checked: every
rank's numbers equal the one-process ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import RESULTS, environment  # noqa: E402

from landprobe.common.io import save_json  # noqa: E402


def make_problem() -> tuple[nn.Module, list]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 10))
    data = [(torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(8)]
    return model, data


class Counter:
    """Payload bytes handed to all_reduce / all_gather since the last reset."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.bytes = 0
        for name in ("all_reduce", "all_gather"):
            real = getattr(dist, name)

            def wrapped(*args, _real=real, **kw):
                first = args[0]
                tensors = first if isinstance(first, list) else [first]
                self.bytes += sum(t.numel() * t.element_size() for t in tensors[:1])
                return _real(*args, **kw)
            setattr(dist, name, wrapped)


def worker(rank: int, world: int, steps: int) -> dict:
    import landprobe as lp

    counter = Counter() if world > 1 else None
    model, data = make_problem()
    probe = lp.LandscapeProbe(model, nn.CrossEntropyLoss(), data, progress=False,
                              sharding=lp.Sharding(data=True))
    out: dict = {}

    def timed(name, fn):
        fn()                                                   # warm-up
        if counter is not None:
            counter.bytes = 0
        t0 = time.perf_counter()
        value = fn()
        out[name] = {"seconds": time.perf_counter() - t0,
                     "bytes": counter.bytes if counter is not None else 0}
        return value
    surface = timed("plane", lambda: probe.plane(points=steps, seed=1))
    out["plane_points"] = steps * steps
    op = probe.hessian()
    eig = timed("top_eigenvalues", lambda: op.top_eigenvalues(k=1, tol=1e-4, max_iter=20))
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0))
    timed("one_product", lambda: op.matvec(v))
    out["plane_losses"] = np.asarray(surface.losses).tolist()
    out["eigenvalue"] = float(eig.values[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "shards.json"))
    args = ap.parse_args()
    from ranks import run_ranks

    runs: dict[int, list[list[dict]]] = {1: [], args.world: []}
    for _ in range(args.rounds):
        for w in (1, args.world):
            runs[w].append(run_ranks(w, worker, args.steps, timeout=1800))
    one = runs[1][0][0]
    for rnd in runs[args.world]:
        for r in rnd:
            np.testing.assert_allclose(r["plane_losses"], one["plane_losses"], rtol=1e-6)
            np.testing.assert_allclose(r["eigenvalue"], one["eigenvalue"], rtol=1e-6)
    report = {"env": environment(), "what": __doc__.strip().splitlines()[0], "world": args.world,
              "model": "Conv2d(3,32,3) ReLU Conv2d(32,32,3) ReLU AdaptiveAvgPool2d(4) Linear(512,10)",
              "data": "8 batches of 32x3x32x32, CrossEntropyLoss, float32", "plane_points": one["plane_points"],
              "results": {}}
    for name in ("plane", "top_eigenvalues", "one_product"):
        t1 = [rnd[0][name]["seconds"] for rnd in runs[1]]
        tw = [max(r[name]["seconds"] for r in rnd) for rnd in runs[args.world]]
        entry = {"one_process_s": float(np.median(t1)), f"{args.world}_processes_s": float(np.median(tw)),
                 "speedup": float(np.median(np.asarray(t1) / np.asarray(tw))),
                 "payload_bytes_per_rank": runs[args.world][0][0][name]["bytes"]}
        report["results"][name] = entry
    report["results"]["plane"]["payload_bytes_per_point"] = (report["results"]["plane"]["payload_bytes_per_rank"]
                                                             / one["plane_points"])
    report["results"]["one_product"]["payload_bytes_per_product"] = \
        report["results"]["one_product"]["payload_bytes_per_rank"]
    print(json.dumps(report["results"], indent=1))
    save_json(args.out, report)


if __name__ == "__main__":
    main()

"""A 21x21 filter-normalised plane vs the floor (441 plain forward passes over the same data).

    python benchmarks/bench_plane.py [--steps 21] [--repeats 5] [--threads 1]

Model: ~1M parameters with a cheap forward (strided conv stem + a large Linear, the
``big_cheap`` net of bench_interpolate.py), 8 batches of 64x1x41x41. The floor runs the same
forwards and losses at the model as it is, with no probe: what any grid evaluation must pay.
Both run in this process, interleaved (warm-up, then median and IQR of the repeats), timed
by the wall clock and by this process's CPU time. The machine is a shared 2-core CPU, so the
default is one intra-op thread (two threads contend with the other jobs and swing the
timings several-fold) and the CPU-time ratio is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import landprobe as lp
from landprobe.common.io import save_json
from landprobe.probes.plane import plane

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402
from bench_interpolate import big_cheap, floor, make_data  # noqa: E402


def timeit_both(fns, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Like _common.timeit (warm-up, interleaved rounds), recording wall and process CPU time.

    On a shared machine the wall clock includes time spent waiting for a core; the CPU time of
    this (single-threaded) process does not, so its ratio is the steadier of the two.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)

    def summary(ts):
        a = np.asarray(ts)
        return {"median_s": float(np.median(a)), "iqr_s": float(np.percentile(a, 75) - np.percentile(a, 25)),
                "runs": [float(t) for t in a]}

    return {k: {"wall": summary(wall[k]), "cpu": summary(cpu[k])} for k in fns}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "plane.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, data, loss_fn = big_cheap(), make_data(), nn.MSELoss()
    probe = lp.LandscapeProbe(model, loss_fn, data)
    load0 = list(os.getloadavg())
    points = args.steps**2
    fns = {
        "floor": lambda: floor(model, data, loss_fn, points),
        "landprobe_plane": lambda: plane(probe, points=args.steps, span=1.0, seed=0),
    }
    t = timeit_both(fns, repeats=args.repeats, warmup=1)
    ratio = {c: t["landprobe_plane"][c]["median_s"] / t["floor"][c]["median_s"] for c in ("wall", "cpu")}
    paired = {c: float(np.median(np.asarray(t["landprobe_plane"][c]["runs"]) / np.asarray(t["floor"][c]["runs"])))
              for c in ("wall", "cpu")}
    # The probe's own cost per point, isolated: the same plane and floor over one 1-sample batch,
    # where the forward is nearly free; what is left is writing θ(x, y) and the engine's bookkeeping.
    tiny = [(data[0][0][:1], data[0][1][:1])]
    tiny_probe = lp.LandscapeProbe(model, loss_fn, tiny)
    iso = timeit_both({"floor": lambda: floor(model, tiny, loss_fn, points),
                       "landprobe_plane": lambda: plane(tiny_probe, points=args.steps, span=1.0, seed=0)},
                      repeats=args.repeats, warmup=1)
    overhead_ms = 1000 * (iso["landprobe_plane"]["cpu"]["median_s"] - iso["floor"]["cpu"]["median_s"]) / points
    floor_ms = 1000 * t["floor"]["cpu"]["median_s"] / points
    report = {
        "env": environment(),
        "what": f"{args.steps}x{args.steps} filter-normalised random plane vs {points} plain forward passes "
                f"(8 batches each) over the same data, same process, interleaved",
        "model": "Conv2d(1,16,5,stride=4) -> ReLU -> Linear(1600,600) -> ReLU -> Linear(600,1)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": "8 batches of 64x1x41x41, MSELoss",
        "grid_points": points,
        "repeats": args.repeats,
        "timings": t,
        "per_point_ms": {k: {c: 1000 * v[c]["median_s"] / points for c in ("wall", "cpu")} for k, v in t.items()},
        "ratio_plane_over_floor": ratio,
        "ratio_paired_rounds_median": paired,
        "isolated_overhead": {
            "what": "CPU ms per point of plane minus floor over one 1-sample batch (writing theta(x, y), bookkeeping)",
            "overhead_ms_per_point": overhead_ms,
            "floor_cpu_ms_per_point_full_data": floor_ms,
            "predicted_ratio": 1.0 + overhead_ms / floor_ms,
            "timings": iso,
        },
        "load_average_before_after": [load0, list(os.getloadavg())],
        "target": "<= 1.05",
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("timings", "env")}, indent=1, default=str))
    save_json(args.out, report)


if __name__ == "__main__":
    main()

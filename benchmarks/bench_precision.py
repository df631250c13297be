"""Precision-targeted interpolation of full-size WARSHIP-XZNet β on the T91 x2 patches.

    python benchmarks/bench_precision.py [--points 51] [--precision 0.01] [--a A.pt --b B.pt]

Side by side in one process: the naive path (every point one fp32 pass over all 9,362
patches; timed on a few batches and extrapolated) and the precision-targeted path (seeded
random batches until 2σ <= precision · loss, bf16 autocast opt-in), over ``--points`` points.
Without --a/--b the two endpoints are full-size models from seeds 0 and 1 (study init).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import landprobe as lp

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def endpoint(path: str | None, seed: int):
    if path:
        from landprobe.probes._cli import load_checkpoint

        return load_checkpoint(path)[0]
    torch.manual_seed(seed)
    return lp.models.WarshipXZNetBeta().state_dict()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=51)
    ap.add_argument("--precision", type=float, default=0.01)
    ap.add_argument("--naive-batches", type=int, default=3, help="fp32 batches timed for the extrapolation")
    ap.add_argument("--a", default=None)
    ap.add_argument("--b", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    patches = lp.data.T91Patches(ROOT / "data" / "T91", scale=2)
    build_s = time.perf_counter() - t0
    a, b = endpoint(args.a, 0), endpoint(args.b, 1)
    model = lp.models.WarshipXZNetBeta()
    loss_fn = lp.losses.RecursiveSupervisionLoss(alpha=0.5)
    loader = torch.utils.data.DataLoader(patches, batch_size=64)

    # naive: time a few fp32 batches at the midpoint, extrapolate to all batches and points
    naive = lp.LandscapeProbe(model, loss_fn, [next(iter(loader))] * args.naive_batches)
    naive.loss(a)  # warm-up
    t = time.perf_counter()
    naive.interpolate(a, b, steps=2)
    per_batch = (time.perf_counter() - t) / (2 * args.naive_batches)
    n_batches = len(loader)
    naive_s = per_batch * n_batches * args.points

    probe = lp.LandscapeProbe(model, loss_fn, loader, precision=args.precision, dtype=torch.bfloat16,
                              seed=0, progress=True)
    t = time.perf_counter()
    curve = probe.interpolate(a, b, steps=args.points)
    ours_s = time.perf_counter() - t
    used = np.array(curve.settings["samples_per_point"])
    rel = 2 * curve.stderr / curve.losses
    report = {
        "env": environment(),
        "endpoints": "checkpoints " + f"{args.a}, {args.b}" if args.a else "full-size WARSHIP, study init, seeds 0 and 1",
        "parameters": sum(p.numel() for p in model.parameters()),
        "patches": len(patches), "t91_build_s": build_s, "points": args.points, "precision": args.precision,
        "naive_fp32": {"seconds_per_batch": per_batch, "batches_per_point": n_batches,
                        "extrapolated_seconds": naive_s},
        "precision_bf16": {"seconds": ours_s, "samples_per_point_median": float(np.median(used)),
                            "samples_per_point_max": int(used.max()),
                            "max_relative_2sigma": float(np.nanmax(rel)), "barrier": curve.barrier},
        "speedup_vs_naive": naive_s / ours_s,
    }
    print({k: v for k, v in report.items() if k != "env"})
    lp._io.save_json(RESULTS / "precision.json", report)
    curve.save(RESULTS / "precision_curve.json")


if __name__ == "__main__":
    main()

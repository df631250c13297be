"""Exact passes at seeded random points of a plane written by ``bench_precision.py``: how often
the reported 2σ covers the exact loss.

    python benchmarks/check_precision_plane.py --a A.pt --b B.pt --plane NAME_plane.json
        [--count 5] [--seed 0] [--threads T] [--out NAME_checks]

The plane's directions are rebuilt as ``bench_precision.plane_directions`` made them (same
endpoints, seed 0); each chosen grid point is evaluated exactly (one bf16 pass over all 9,362
T91 x2 patches) and compared with the plane's estimate and its reported standard error.
Several processes with different ``--seed`` split the work; their JSONs are read together by
``--merge FILE ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import landprobe as lp

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, environment  # noqa: E402
from bench_precision import ROOT, endpoints, exact_at, plane_directions  # noqa: E402


def merge(files: list[str]) -> dict:
    """The checks of several runs together, with the share of errors within 1σ and 2σ."""
    rows = [r for f in files for r in json.loads(Path(f).read_text())["checks"]]
    z = np.array([r["error_in_sigma"] for r in rows])
    return {"files": files, "points": len(rows), "within_1_sigma": float(np.mean(z <= 1)),
            "within_2_sigma": float(np.mean(z <= 2)), "max_error_in_sigma": float(z.max()),
            "max_relative_error": float(max(r["relative_error"] for r in rows))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a")
    ap.add_argument("--b")
    ap.add_argument("--plane", help="the plane JSON of bench_precision.py --plane-points")
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the choice of grid points")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="precision_checks")
    ap.add_argument("--merge", nargs="+", default=None, metavar="FILE", help="summarise the JSONs of several runs")
    args = ap.parse_args(argv)
    if args.merge:
        summary = merge(args.merge)
        print(summary)
        lp.common.io.save_json(RESULTS / f"{args.out}.json", {"env": environment(), **summary})
        return summary
    if not (args.a and args.b and args.plane):
        ap.error("--a, --b and --plane are needed (or --merge)")
    if args.threads:
        torch.set_num_threads(args.threads)
    surface = json.loads(Path(args.plane).read_text())
    xs, ys = np.array(surface["xs"]), np.array(surface["ys"])
    losses, stderr = np.array(surface["losses"]), np.array(surface["stderr"])
    a, b, model, loss_fn, ends = endpoints(args)
    d1, d2 = plane_directions(a, b)
    patches = lp.data.T91Patches(ROOT / "data" / "T91", scale=2)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(losses.size, size=args.count, replace=False)
    checks = []
    for flat in picks.tolist():
        i, j = divmod(flat, len(xs))
        x, y = float(xs[j]), float(ys[i])
        sd = {k: a[k] + x * d1[k] + y * d2[k] if k in d1 else a[k] for k in a}
        exact, seconds = exact_at(model, loss_fn, patches, sd)
        err = abs(float(losses[i, j]) - exact)
        checks.append({"x": x, "y": y, "estimate": float(losses[i, j]), "stderr": float(stderr[i, j]),
                       "exact_bf16_full_pass": exact, "error_in_sigma": err / float(stderr[i, j]),
                       "relative_error": err / exact, "seconds": seconds})
        print(checks[-1], flush=True)
    report = {"env": environment(), "endpoints": ends, "plane": args.plane, "seed": args.seed, "checks": checks}
    lp.common.io.save_json(RESULTS / f"{args.out}.json", report)
    return report


if __name__ == "__main__":
    main()

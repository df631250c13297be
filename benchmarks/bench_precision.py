"""Precision-targeted interpolation of full-size WARSHIP-XZNet β on the T91 x2 patches.

    python benchmarks/bench_precision.py [--points 51] [--precision 0.01] [--a A.pt --b B.pt]
        [--train-steps N] [--no-control] [--batch-size 16] [--validate 0.5] [--out NAME]

Side by side in one process: the naive path (every point one fp32 pass over all 9,362
patches; timed on a few batches and extrapolated) and the precision-targeted path (seeded
random batches until 2σ <= precision · loss, bf16 autocast opt-in, control variates
``lp.data.sr_covariates`` unless --no-control), over ``--points`` points.
Without --a/--b the two endpoints are full-size models from seeds 0 and 1 (study init),
optionally trained ``--train-steps`` Adam steps each (bf16, the study's loss) so that the
per-patch losses are those of networks that have started to learn rather than of the
initialisation. ``--validate ALPHA`` evaluates that point exactly (one bf16 pass over all
patches) and reports the estimate's error in units of its 2σ.
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


def train(state: dict, patches, loss_fn, steps: int, seed: int) -> tuple[dict, list[float]]:
    """``steps`` Adam steps (lr 1e-4, batch 64, bf16 autocast) from ``state``; returns the new state."""
    model = lp.models.WarshipXZNetBeta()
    model.load_state_dict(state)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(patches), (64,), generator=gen).tolist()
        x = torch.stack([patches[i][0] for i in idx])
        y = torch.stack([patches[i][1] for i in idx])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=51)
    ap.add_argument("--precision", type=float, default=0.01)
    ap.add_argument("--naive-batches", type=int, default=3, help="fp32 batches timed for the extrapolation")
    ap.add_argument("--a", default=None)
    ap.add_argument("--b", default=None)
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--no-control", action="store_true")
    ap.add_argument("--batch-size", type=int, default=16, help="samples per random batch of the targeted path")
    ap.add_argument("--validate", type=float, default=None, metavar="ALPHA")
    ap.add_argument("--out", default="precision")
    args = ap.parse_args()
    t0 = time.perf_counter()
    patches = lp.data.T91Patches(ROOT / "data" / "T91", scale=2)
    build_s = time.perf_counter() - t0
    a, b = endpoint(args.a, 0), endpoint(args.b, 1)
    model = lp.models.WarshipXZNetBeta()
    loss_fn = lp.losses.RecursiveSupervisionLoss(alpha=0.5)
    training = None
    if args.train_steps:
        t = time.perf_counter()
        a, la = train(a, patches, loss_fn, args.train_steps, seed=10)
        b, lb = train(b, patches, loss_fn, args.train_steps, seed=11)
        training = {"steps": args.train_steps, "seconds": time.perf_counter() - t,
                    "loss_a_first_last": [la[0], la[-1]], "loss_b_first_last": [lb[0], lb[-1]]}
        print("trained endpoints", training, flush=True)
    loader = torch.utils.data.DataLoader(patches, batch_size=64)

    # naive: time a few fp32 batches at the midpoint, extrapolate to all batches and points
    naive = lp.LandscapeProbe(model, loss_fn, [next(iter(loader))] * args.naive_batches)
    naive.loss(a)  # warm-up
    t = time.perf_counter()
    naive.interpolate(a, b, points=2)
    per_batch = (time.perf_counter() - t) / (2 * args.naive_batches)
    n_batches = len(loader)
    naive_s = per_batch * n_batches * args.points

    control = None if args.no_control else lp.data.sr_covariates
    probe = lp.LandscapeProbe(model, loss_fn, patches, precision=args.precision, dtype=torch.bfloat16,
                              seed=0, progress=True, batch_size=args.batch_size, control=control)
    t = time.perf_counter()
    curve = probe.interpolate(a, b, points=args.points)
    ours_s = time.perf_counter() - t
    used = np.array(curve.settings["samples_per_point"])
    rel = 2 * curve.stderr / curve.losses
    validation = None
    if args.validate is not None:
        i = int(np.argmin(np.abs(curve.alphas - args.validate)))
        exact_probe = lp.LandscapeProbe(model, loss_fn, torch.utils.data.DataLoader(patches, batch_size=64),
                                        dtype=torch.bfloat16)
        sd = {k: torch.lerp(a[k], b[k], float(curve.alphas[i])) if a[k].is_floating_point() else a[k] for k in a}
        t = time.perf_counter()
        exact = exact_probe.loss(sd)
        validation = {"alpha": float(curve.alphas[i]), "exact_bf16_full_pass": exact,
                      "estimate": float(curve.losses[i]), "two_sigma": float(2 * curve.stderr[i]),
                      "error_in_two_sigma": abs(float(curve.losses[i]) - exact) / float(2 * curve.stderr[i]),
                      "relative_error": abs(float(curve.losses[i]) - exact) / exact,
                      "full_pass_seconds": time.perf_counter() - t}
        print("validation", validation, flush=True)
    if args.a:
        ends = f"checkpoints {args.a}, {args.b}"
    else:
        ends = "full-size WARSHIP, study init, seeds 0 and 1"
        if args.train_steps:
            ends += f", each trained {args.train_steps} Adam steps (lr 1e-4, batch 64, bf16)"
    report = {
        "env": environment(),
        "endpoints": ends,
        "training": training,
        "control": None if control is None else "lp.data.sr_covariates",
        "batch_size": args.batch_size,
        "validation": validation,
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
    lp.common.io.save_json(RESULTS / f"{args.out}.json", report)
    curve.save(RESULTS / f"{args.out}_curve.json")


if __name__ == "__main__":
    main()

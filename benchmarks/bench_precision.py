"""Precision-targeted curves and planes of WARSHIP-XZNet β on all T91 x2 patches.

    python benchmarks/bench_precision.py [--points 51] [--plane-points 21] [--precision 0.01]
        [--a A.pt --b B.pt] [--control-at] [--train-steps N] [--no-control] [--covariates {sr,sr-mean}]
        [--batch-size 16]
        [--validate ALPHA ...] [--validate-plane=X,Y ...] [--threads T] [--out NAME]

Side by side in one process: the naive path (every point one fp32 pass over all 9,362
patches; timed on a few batches and extrapolated) and the precision-targeted path (seeded
random batches until 2σ <= precision · loss, bf16 autocast, control variates
``lp.data.sr_covariates`` unless --no-control (``lp.data.sr_covariates_with_mean`` with
``--covariates sr-mean``), and with --control-at the per-batch losses of
the two endpoints, one exact pass over all patches at each, shared by the curve and the plane).

Endpoints: --a/--b are checkpoints of ``landprobe reproduce`` (the model is rebuilt from their
spec and evaluated with the study's empirical error, the final output's loss); without them
two full-size models from seeds 0 and 1 (study init, loss ``RecursiveSupervisionLoss(0.5)``),
optionally trained ``--train-steps`` Adam steps each.

``--plane-points N`` adds an N x N plane through the endpoints: origin a, d1 = b − a, d2 a
Gaussian direction orthogonal to d1 with its length, x in [−0.25, 1.25], y in [−0.75, 0.75].

Sample evaluations (hardware-independent): each point's samples, plus N per exact pass at an
endpoint and a first evaluation at a (which makes those passes), against N per point for the
naive path; the curve's and the plane's ratios are each charged the whole reference cost. ``--validate`` / ``--validate-plane`` evaluate
such points exactly (one bf16 pass over all patches each) and report the error in units of 2σ.
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
SPAN = ((-0.25, 1.25), (-0.75, 0.75))
COVARIATES = {"sr": lp.data.sr_covariates, "sr-mean": lp.data.sr_covariates_with_mean}


def endpoints(args) -> tuple[dict, dict, torch.nn.Module, torch.nn.Module, str]:
    """(a, b, model, loss_fn, description) from checkpoints, or from seeds 0 and 1 at study init."""
    if args.a:
        from landprobe.cli.checkpoints import load_checkpoint
        from landprobe.recipes._train import RecipeLoss, build_model

        (a, spec), (b, spec_b) = load_checkpoint(args.a), load_checkpoint(args.b)
        if {k: spec.get(k) for k in ("width", "recursions")} != {k: spec_b.get(k) for k in ("width", "recursions")}:
            raise SystemExit(f"--a and --b hold different models: {spec} vs {spec_b}")
        model = build_model(spec["width"], spec["recursions"], 0)
        return a, b, model, RecipeLoss(0.0, spec["loss_scaling"], 1), f"checkpoints {args.a}, {args.b}"
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(lp.models.WarshipXZNetBeta().state_dict())
    return (*states, lp.models.WarshipXZNetBeta(), lp.losses.RecursiveSupervisionLoss(alpha=0.5),
            "full-size WARSHIP, study init, seeds 0 and 1")


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


def plane_directions(a: dict, b: dict, seed: int = 0) -> tuple[dict, dict]:
    """d1 = b − a; d2 Gaussian (seeded), orthogonal to d1 over all floating tensors, ‖d2‖ = ‖d1‖."""
    keys = [k for k in a if a[k].is_floating_point()]
    u = {k: (b[k] - a[k]).double() for k in keys}
    gen = torch.Generator().manual_seed(seed)
    r = {k: torch.randn(a[k].shape, generator=gen, dtype=torch.float64) for k in keys}
    dot = lambda p, q: sum(float((p[k] * q[k]).sum()) for k in keys)  # noqa: E731
    c = dot(r, u) / dot(u, u)
    r = {k: r[k] - c * u[k] for k in keys}
    scale = (dot(u, u) / dot(r, r)) ** 0.5
    return ({k: u[k].to(a[k].dtype) for k in keys}, {k: (scale * r[k]).to(a[k].dtype) for k in keys})


def naive_seconds_per_pass(model, loss_fn, patches, a, batches: int) -> tuple[float, int]:
    """fp32 seconds per batch of 64 (timed on ``batches`` batches) and the batches in a pass."""
    loader = torch.utils.data.DataLoader(patches, batch_size=64)
    naive = lp.LandscapeProbe(model, loss_fn, [next(iter(loader))] * batches)
    naive.loss(a)  # warm-up
    t = time.perf_counter()
    naive.loss(a)
    return (time.perf_counter() - t) / batches, len(loader)


def exact_at(model, loss_fn, patches, state: dict) -> tuple[float, float]:
    """The exact bf16 empirical error at ``state`` (one pass over all patches) and its seconds."""
    probe = lp.LandscapeProbe(model, loss_fn, torch.utils.data.DataLoader(patches, batch_size=64),
                              dtype=torch.bfloat16)
    t = time.perf_counter()
    return probe.loss(state), time.perf_counter() - t


def validation(model, loss_fn, patches, state: dict, estimate: float, stderr: float, where: dict) -> dict:
    exact, seconds = exact_at(model, loss_fn, patches, state)
    out = {**where, "exact_bf16_full_pass": exact, "estimate": estimate, "two_sigma": 2 * stderr,
           "error_in_two_sigma": abs(estimate - exact) / (2 * stderr), "relative_error": abs(estimate - exact) / exact,
           "full_pass_seconds": seconds}
    print("validation", out, flush=True)
    return out


def run_curve(probe, model, loss_fn, patches, a, b, args) -> tuple[dict, list]:
    t = time.perf_counter()
    curve = probe.interpolate(a, b, points=args.points)
    seconds = time.perf_counter() - t
    used = np.array(curve.settings["samples_per_point"])
    checks = []
    for alpha in args.validate:
        i = int(np.argmin(np.abs(curve.alphas - alpha)))
        al = float(curve.alphas[i])
        sd = {k: torch.lerp(a[k], b[k], al) if a[k].is_floating_point() else a[k] for k in a}
        checks.append(validation(model, loss_fn, patches, sd, float(curve.losses[i]), float(curve.stderr[i]),
                                 {"alpha": al}))
    curve.save(RESULTS / f"{args.out}_curve.json")
    return {"seconds": seconds, "samples": int(used.sum()), "samples_per_point_median": float(np.median(used)),
            "samples_per_point_max": int(used.max()),
            "max_relative_2sigma": float(np.nanmax(2 * curve.stderr / curve.losses)),
            "barrier": curve.barrier, "losses_ends": [float(curve.losses[0]), float(curve.losses[-1])]}, checks


def run_plane(probe, model, loss_fn, patches, a, b, args) -> tuple[dict, list]:
    d1, d2 = plane_directions(a, b)
    t = time.perf_counter()
    surface = probe.plane(center=a, directions=(d1, d2), span=SPAN, points=args.plane_points)
    seconds = time.perf_counter() - t
    used = np.array(surface.settings["samples_per_point"])
    checks = []
    for x, y in args.validate_plane:
        j, i = int(np.argmin(np.abs(surface.xs - x))), int(np.argmin(np.abs(surface.ys - y)))
        px, py = float(surface.xs[j]), float(surface.ys[i])
        sd = {k: a[k] + px * d1[k] + py * d2[k] if k in d1 else a[k] for k in a}
        checks.append(validation(model, loss_fn, patches, sd, float(surface.losses[i, j]),
                                 float(surface.stderr[i, j]), {"x": px, "y": py}))
    surface.save(RESULTS / f"{args.out}_plane.json")
    return {"seconds": seconds, "samples": int(used.sum()), "samples_per_point_median": float(np.median(used)),
            "samples_per_point_max": int(used.max()),
            "max_relative_2sigma": float(np.nanmax(2 * surface.stderr / surface.losses)),
            "loss_range": [float(surface.losses.min()), float(surface.losses.max())]}, checks


def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=51)
    ap.add_argument("--plane-points", type=int, default=0, help="N: also an N x N plane (0: none)")
    ap.add_argument("--precision", type=float, default=0.01)
    ap.add_argument("--naive-batches", type=int, default=3, help="fp32 batches timed for the extrapolation")
    ap.add_argument("--a", default=None)
    ap.add_argument("--b", default=None)
    ap.add_argument("--control-at", action="store_true", help="the endpoints' losses as control variates")
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--no-control", action="store_true")
    ap.add_argument("--covariates", choices=sorted(COVARIATES), default="sr",
                    help="sr: lp.data.sr_covariates; sr-mean: lp.data.sr_covariates_with_mean")
    ap.add_argument("--batch-size", type=int, default=16, help="samples per random batch of the targeted path")
    ap.add_argument("--validate", type=float, nargs="*", default=[], metavar="ALPHA")
    ap.add_argument("--validate-plane", action="append", default=[], metavar="X,Y",
                    type=lambda s: tuple(float(v) for v in s.split(",")),
                    help="a plane point to check exactly; repeat it; --validate-plane=-0.25,-0.75 for negatives")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="precision")
    args = ap.parse_args(argv)
    if bool(args.a) != bool(args.b):
        ap.error("--a and --b go together")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    patches = lp.data.T91Patches(ROOT / "data" / "T91", scale=2)
    build_s = time.perf_counter() - t0
    a, b, model, loss_fn, ends = endpoints(args)
    training = None
    if args.train_steps:
        t = time.perf_counter()
        a, la = train(a, patches, loss_fn, args.train_steps, seed=10)
        b, lb = train(b, patches, loss_fn, args.train_steps, seed=11)
        training = {"steps": args.train_steps, "seconds": time.perf_counter() - t,
                    "loss_a_first_last": [la[0], la[-1]], "loss_b_first_last": [lb[0], lb[-1]]}
        ends += f", each trained {args.train_steps} Adam steps (lr 1e-4, batch 64, bf16)"
        print("trained endpoints", training, flush=True)
    per_batch, n_batches = naive_seconds_per_pass(model, loss_fn, patches, a, args.naive_batches)
    control = None if args.no_control else COVARIATES[args.covariates]
    probe = lp.LandscapeProbe(model, loss_fn, patches, precision=args.precision, dtype=torch.bfloat16, seed=0,
                              progress=True, batch_size=args.batch_size, control=control,
                              control_at=[a, b] if args.control_at else None)
    t = time.perf_counter()
    first = probe.evaluate(a)             # with --control-at: the exact passes at the endpoints happen here
    first = {"seconds": time.perf_counter() - t, "samples": int(first.batch_sizes.sum())}
    curve, checks = run_curve(probe, model, loss_fn, patches, a, b, args)
    context = dict(args=args, ends=ends, training=training, control=control, probe=probe, model=model, n=len(patches),
                   build_s=build_s, per_batch=per_batch, n_batches=n_batches, first=first)
    report = write_report(context, curve, None, checks)   # the curve's report, in case the plane is stopped
    if args.plane_points:
        plane, more = run_plane(probe, model, loss_fn, patches, a, b, args)
        report = write_report(context, curve, plane, checks + more)
    return report


def write_report(c: dict, curve: dict, plane: dict | None, checks: list) -> dict:
    """The JSON of the run so far: sample evaluations against the naive path, seconds, validations."""
    args, n, per_batch, n_batches, first = c["args"], c["n"], c["per_batch"], c["n_batches"], c["first"]
    reference = (2 * n if args.control_at else 0) + first["samples"]
    evaluations = {"reference_passes_samples": reference, "curve": curve["samples"] + reference,
                   "naive_curve": args.points * n, "ratio_curve": args.points * n / (curve["samples"] + reference)}
    if plane is not None:
        pts = args.plane_points ** 2
        evaluations.update(plane=plane["samples"] + reference, naive_plane=pts * n,
                           ratio_plane=pts * n / (plane["samples"] + reference),
                           ratio_curve_and_plane=(args.points + pts) * n / (curve["samples"] + plane["samples"]
                                                                            + reference))
    report = {
        "env": environment(), "endpoints": c["ends"], "training": c["training"],
        "control": None if c["control"] is None else f"lp.data.{c['control'].__name__}",
        "control_at": "the two endpoints" if args.control_at else None,
        "reference_losses": c["probe"].engine.reference_losses,
        "batch_size": args.batch_size, "validation": checks,
        "parameters": sum(p.numel() for p in c["model"].parameters()),
        "patches": n, "t91_build_s": c["build_s"], "points": args.points, "plane_points": args.plane_points,
        "precision": args.precision, "evaluations": evaluations,
        "naive_fp32": {"seconds_per_batch": per_batch, "batches_per_point": n_batches,
                       "extrapolated_seconds_curve": per_batch * n_batches * args.points,
                       "extrapolated_seconds_plane": per_batch * n_batches * args.plane_points ** 2},
        "precision_bf16": {"first_evaluation_and_reference_passes": first, "curve": curve, "plane": plane},
        "speedup_vs_naive_curve": per_batch * n_batches * args.points / (curve["seconds"] + first["seconds"]),
    }
    if plane is not None:
        report["speedup_vs_naive_plane"] = (per_batch * n_batches * args.plane_points ** 2
                                            / (plane["seconds"] + first["seconds"]))
    print({k: v for k, v in report.items() if k != "env"}, flush=True)
    lp.common.io.save_json(RESULTS / f"{args.out}.json", report)
    return report


if __name__ == "__main__":
    main()

"""How often precision-targeted error bars cover the exact loss, over many random orders.

    python benchmarks/coverage_precision.py collect --a A.pt --b B.pt --plane NAME_plane.json
        [--random 5] [--points N] [--part I --parts P] [--threads T] [--out NAME]
    python benchmarks/coverage_precision.py replay NAME_part*.npz [--orders 400] [--batch-size 8]
        [--no-control] [--covariates {sr,sr-mean}] [--min-batches M] [--variance {library,residual,hc2}]
        [--out NAME]
    python benchmarks/coverage_precision.py ratio NAME_part*.npz [--orders 200] [--batches 20]

``collect`` evaluates the per-patch empirical error (bf16, all 9,362 T91 x2 patches) at the two
endpoints of a ``bench_precision.py`` plane and at grid points of it (the points its
validations check, ten drawn with seeds 1 and 2, and ``--random`` seeded others; ``--points N``
keeps the first N of them, where each pass over the data is costly), with
the patches' ``lp.data.sr_covariates_with_mean`` (whose first two columns are
``lp.data.sr_covariates``), into an ``.npz`` (several processes split the points with
``--part``/``--parts``).

``replay`` runs the library's own precision-targeted engine on those tables: a stand-in model
whose parameters select one point's per-patch losses (``theta = e_p`` gives exactly the losses
of point p on any batch), ``control=`` the patches' covariates (``--covariates``: the two of
``sr_covariates`` or all three), ``control_at=`` the two endpoints, batches of 8, ±1% (2σ).
Each sampler seed is one random order; for every point and seed the estimate is compared with
the exact mean of its table. Reported per point and overall: the share of estimates within
their reported 2σ (the aim: about 95%), within ±1%, and the samples used. Differences between
seeds are the only randomness, so the share measures the error bars themselves, not one lucky
order.

``ratio`` compares, on the same random batches, the library's standard error with the residual
variance's (``replay --variance residual``): how much wider the leverage correction makes a bar.
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

import landprobe as lp
from landprobe.engine import Evaluation

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, environment  # noqa: E402
from bench_precision import COVARIATES, ROOT, endpoints, plane_directions  # noqa: E402


def grid_points(plane: dict, random: int) -> list[tuple[float, float]]:
    """Points of the plane's grid: the three that ``bench_precision.py`` validates, five drawn
    with each of seeds 1 and 2, then ``random`` more (seed 123)."""
    xs, ys = np.array(plane["xs"]), np.array(plane["ys"])
    chosen = [(0.5, 0.0), (0.5, 0.75), (-0.25, -0.75)]
    for seed in (1, 2):
        picks = np.random.default_rng(seed).choice(xs.size * ys.size, size=5, replace=False)
        chosen += [(xs[f % len(xs)], ys[f // len(xs)]) for f in picks.tolist()]
    snapped = []
    for x, y in chosen:
        p = (float(xs[np.argmin(np.abs(xs - x))]), float(ys[np.argmin(np.abs(ys - y))]))
        if p not in snapped:
            snapped.append(p)
    rng = np.random.default_rng(123)
    while random > 0:
        p = (float(rng.choice(xs)), float(rng.choice(ys)))
        if p not in snapped:
            snapped.append(p)
            random -= 1
    return snapped


def per_patch_losses(model: nn.Module, loss_fn: nn.Module, patches, state: dict) -> np.ndarray:
    """bf16 per-patch loss at ``state``: the model on batches of 64, the loss on each patch."""
    model.load_state_dict(state)
    model.eval()
    out_rows = []
    loader = torch.utils.data.DataLoader(patches, batch_size=64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in loader:
            out = model(x)
            rows = [float(loss_fn(torch.utils._pytree.tree_map(lambda t, i=i: t[i:i + 1], out), y[i:i + 1]))
                    for i in range(len(y))]
            batch = float(loss_fn(out, y))
            if abs(np.mean(rows) - batch) > 1e-4 * abs(batch):
                raise SystemExit(f"the loss is not a mean over patches ({np.mean(rows)} vs {batch})")
            out_rows += rows
    return np.array(out_rows)


def collect(args) -> None:
    plane = json.loads(Path(args.plane).read_text())
    a, b, model, loss_fn, ends = endpoints(args)
    d1, d2 = plane_directions(a, b)
    patches = lp.data.T91Patches(ROOT / "data" / "T91", scale=2)
    points = [(0.0, 0.0), (1.0, 0.0)] + grid_points(plane, args.random)[:args.points]
    mine = [p for i, p in enumerate(points) if i % args.parts == args.part]
    losses = []
    for x, y in mine:
        t = time.perf_counter()
        sd = {k: a[k] + x * d1[k] + y * d2[k] if k in d1 else a[k] for k in a}
        losses.append(per_patch_losses(model, loss_fn, patches, sd))
        print(f"({x:+.3f}, {y:+.3f}) mean {losses[-1].mean():.6f} in {time.perf_counter() - t:.0f} s", flush=True)
    cov = torch.cat([lp.data.sr_covariates_with_mean(x, y)
                     for x, y in torch.utils.data.DataLoader(patches, batch_size=256)])
    np.savez(RESULTS / f"{args.out}_part{args.part}.npz", points=np.array(mine), losses=np.stack(losses),
             covariates=cov.numpy(), endpoints=ends, env=json.dumps(environment()))


class Lookup(nn.Module):
    """Stand-in model: ``theta`` (one weight per tabulated point) mixes the points' per-patch
    losses; at ``theta = e_p`` a batch's loss is point p's mean over the batch's patches."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float64))
        self.theta = nn.Parameter(torch.zeros(len(table), dtype=torch.float64))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.theta @ self.table[:, index]


def other_variance(kind: str):
    """``Evaluation.with_control`` with another standard error, for comparison: "residual",
    (1 − n/N)·B/(B − k − 1)·Σ w_b² e_b², or "hc2", (1 − n/N)·Σ g_b² e_b² / (1 − h_b)."""
    library = Evaluation.with_control

    def with_control(losses, sizes, covariates, population_mean, population):
        ev = library(losses, sizes, covariates, population_mean, population)
        y, n = np.asarray(losses, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
        c = np.asarray(covariates, dtype=np.float64).reshape(len(y), -1)
        w = n / n.sum()
        x = np.column_stack([np.ones(len(y)), c])
        inv = np.linalg.pinv(x.T @ (w[:, None] * x))
        e = y - x @ (inv @ x.T @ (w * y))
        keep = 1.0 - n.sum() / population
        b, k = c.shape
        if b - k - 1 <= 0 or keep <= 0:
            return ev
        if kind == "residual":
            var = b / (b - k - 1) * np.sum(w**2 * e**2)
        else:
            g = w * (x @ inv @ np.concatenate([[1.0], population_mean]))
            h = w * np.einsum("bi,ij,bj->b", x, inv, x)
            var = np.sum(g**2 * e**2 / (1.0 - h))
        return Evaluation(ev.loss, float(np.sqrt(var * keep)), ev.batch_losses, ev.batch_sizes)

    return staticmethod(with_control)


def covariate_columns(parts: list, args) -> np.ndarray:
    """The tables' per-patch covariates that ``--covariates`` names: the first as many columns as
    its function returns (tables collected before the mean column existed hold two)."""
    one = torch.zeros(1, 1, 2, 2)
    k = COVARIATES[args.covariates](one, one).shape[1]
    held = parts[0]["covariates"]
    if held.shape[1] < k:
        raise SystemExit(f"--covariates {args.covariates} needs {k} covariate columns; {args.files[0]} holds "
                         f"{held.shape[1]} (collected before the mean column): collect the tables again")
    return held[:, :k]


def replay(args) -> dict:
    if args.variance != "library":
        Evaluation.with_control = other_variance(args.variance)
    parts = [np.load(f) for f in args.files]
    points = np.concatenate([p["points"] for p in parts])
    table = np.concatenate([p["losses"] for p in parts])
    covariates = torch.as_tensor(covariate_columns(parts, args))
    n = table.shape[1]
    exact = table.mean(1)
    model = Lookup(table)
    unit = torch.eye(len(table), dtype=torch.float64)
    at = lambda p: {"theta": unit[p]}  # noqa: E731
    ends = [int(np.flatnonzero((points == e).all(1))[0]) for e in ([0.0, 0.0], [1.0, 0.0])]
    data = torch.utils.data.TensorDataset(torch.arange(n), torch.zeros(n))
    control = None if args.no_control else (lambda x, y: covariates[x])
    mean_loss = lambda out, y: out.mean()  # noqa: E731
    z = np.zeros((args.orders, len(table)))
    rel = np.zeros_like(z)
    samples = np.zeros_like(z)
    t = time.perf_counter()
    for seed in range(args.orders):
        probe = lp.LandscapeProbe(model, mean_loss, data, precision=args.precision, batch_size=args.batch_size,
                                  min_batches=args.min_batches, seed=seed, control=control,
                                  control_at=[at(e) for e in ends], progress=False)
        for p in range(len(table)):
            ev = probe.engine.evaluate_at(at(p))
            err = abs(ev.loss - exact[p])
            z[seed, p] = err / ev.stderr if ev.stderr > 0 else (0.0 if err <= 1e-12 * exact[p] else np.inf)
            rel[seed, p] = err / exact[p]
            samples[seed, p] = ev.batch_sizes.sum()
    # At the references the estimate is exact to rounding (their losses are covariates): the
    # ratio of two rounding errors says nothing, so they are listed but left out of the shares.
    per_point = [{"x": float(points[p][0]), "y": float(points[p][1]), "exact": float(exact[p]),
                  "within_2_sigma": float(np.mean(z[:, p] <= 2)), "within_precision": float(np.mean(rel[:, p] <= args.precision)),
                  "samples_mean": float(samples[:, p].mean()), "reference": p in ends} for p in range(len(table))]
    off = [p for p in range(len(table)) if p not in ends]
    report = {"env": environment(), "tables": args.files, "endpoints": str(parts[0]["endpoints"]),
              "collect_env": json.loads(str(parts[0]["env"])), "orders": args.orders, "precision": args.precision,
              "batch_size": args.batch_size, "min_batches": args.min_batches, "variance": args.variance,
              "control": None if args.no_control else f"lp.data.{COVARIATES[args.covariates].__name__}",
              "control_at": "the two endpoints", "patches": n, "seconds": time.perf_counter() - t,
              "within_2_sigma": float(np.mean(z[:, off] <= 2)), "within_precision": float(np.mean(rel[:, off] <= args.precision)),
              "worst_point_within_2_sigma": float(min(per_point[p]["within_2_sigma"] for p in off)),
              "samples_mean": float(samples[:, off].mean()), "points": per_point}
    print({k: v for k, v in report.items() if k not in ("points", "env", "collect_env")})
    lp.common.io.save_json(RESULTS / f"{args.out}.json", report)
    return report


def se_ratio(args) -> dict:
    """The library's standard error over the residual-variance one ("residual" above) on the
    same batches: ``--batches`` random batches of ``--batch-size`` patches per order, each
    point of the tables but the two ends, ``--orders`` orders (seed 0)."""
    parts = [np.load(f) for f in args.files]
    points = np.concatenate([p["points"] for p in parts])
    table = np.concatenate([p["losses"] for p in parts])
    patch_cov = covariate_columns(parts, args)
    ends = [int(np.flatnonzero((points == e).all(1))[0]) for e in ([0.0, 0.0], [1.0, 0.0])]
    population_mean = np.concatenate([patch_cov.mean(0), table[ends].mean(1)])
    residual = other_variance("residual").__func__
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(args.orders):
        idx = rng.permutation(table.shape[1])[: args.batches * args.batch_size].reshape(args.batches, -1)
        cov = np.column_stack([patch_cov[idx].mean(1), table[ends][:, idx].mean(2).T])
        for p in (p for p in range(len(table)) if p not in ends):
            batch = table[p][idx].mean(1)
            sizes = [args.batch_size] * args.batches
            ours = Evaluation.with_control(batch, sizes, cov, population_mean, table.shape[1]).stderr
            ratios.append(ours / residual(batch, sizes, cov, population_mean, table.shape[1]).stderr)
    report = {"env": environment(), "tables": args.files, "orders": args.orders, "batches": args.batches,
              "batch_size": args.batch_size, "evaluations": len(ratios),
              "ratio_percentiles_10_50_90": np.percentile(ratios, [10, 50, 90]).tolist()}
    print(report["ratio_percentiles_10_50_90"])
    lp.common.io.save_json(RESULTS / f"{args.out}.json", report)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--a", required=True)
    c.add_argument("--b", required=True)
    c.add_argument("--plane", required=True)
    c.add_argument("--random", type=int, default=5)
    c.add_argument("--points", type=int, default=None, help="only the first N grid points")
    c.add_argument("--part", type=int, default=0)
    c.add_argument("--parts", type=int, default=1)
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--out", default="coverage_tables")
    r = sub.add_parser("replay")
    r.add_argument("files", nargs="+")
    r.add_argument("--orders", type=int, default=400)
    r.add_argument("--precision", type=float, default=0.01)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--no-control", action="store_true", help="control_at only, without sr_covariates")
    r.add_argument("--covariates", choices=sorted(COVARIATES), default="sr",
                   help="sr: the tables' first two columns (lp.data.sr_covariates); sr-mean: all three")
    r.add_argument("--min-batches", type=int, default=4, help="the probe's min_batches (raised to 4(k + 1))")
    r.add_argument("--variance", choices=("library", "residual", "hc2"), default="library",
                   help="the standard error: the library's (HC3) or one of two others, for comparison")
    r.add_argument("--out", default="precision_coverage")
    q = sub.add_parser("ratio", help="the library's standard error over the residual-variance one")
    q.add_argument("files", nargs="+")
    q.add_argument("--orders", type=int, default=200)
    q.add_argument("--batches", type=int, default=20)
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--covariates", choices=sorted(COVARIATES), default="sr")
    q.add_argument("--out", default="precision_se_ratio")
    args = ap.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return {"collect": collect, "replay": replay, "ratio": se_ratio}[args.cmd](args)


if __name__ == "__main__":
    main()

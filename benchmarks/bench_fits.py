"""Benchmark: the per-step cost of curve fits and AutoNEB against the model's own passes.

(1) ``auto_neb`` on the two-parameter toy ``CurvyValley`` at the default schedule
(``paper_schedule()``: 14 cycles, 16,000 steps): wall time (median of three runs) and steps per second. The model
costs next to nothing, so this measures the fit's own work per step.

(2) On an MLP 1000-1000-10 (about 1M parameters, float32, batches of 64): the cost of one
optimizer step of an AutoNEB band of K interior images and of a polychain curve (``t_samples``
values of t per step), and of the band's model evaluation alone (``Engine.fit_losses`` on the
K images stacked, and their gradients), against K (resp. ``t_samples``) forward-and-backward
passes of the model itself (the floor), measured in the same process. A step's cost is the difference of
two calls that differ only in their number of steps (1 and ``--steps``), divided by that
difference (the band's insertion, its set-up for a cycle's steps and the final measurement cancel). Runs are interleaved, after warm-up; medians, and
the ratio to the floor as the median of the per-round ratios. The MLP is the band algebra's
hardest case: a pass of a batch of 64 costs few operations per parameter, and the band's vector
algebra over K + 2 images of 1M numbers is bound by memory bandwidth. As a second reference,
``torch.optim.SGD`` (momentum 0.9) steps K copies of the parameters, as training K models
would: the band's step is also reported against the floor plus that step.

(3) The same on the study's network, full-size WARSHIP-XZNet beta (945,555 parameters, batches of
4 random 41x41 patches, ``RecursiveSupervisionLoss(0.5)``): convolutions do many operations per
parameter, and ``auto_neb``'s default evaluates the images one call each here (measured faster
than vmap's grouped convolutions on the first step; ``batch_images`` in the result).

Run:  python benchmarks/bench_fits.py [--images 8] [--steps 10] [--repeats 5] [--threads 1] [--skip-toy]
      [--skip-warship] [--warship-steps 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cpu_tag, environment, timeit  # noqa: E402

import landprobe as lp  # noqa: E402
from landprobe.common.io import save_json  # noqa: E402
from landprobe.engine import Part  # noqa: E402
from landprobe.probes import toys  # noqa: E402
from landprobe.probes.curves.neb import auto_neb, paper_schedule  # noqa: E402


def toy_auto_neb(repeats: int = 3) -> dict:
    """AutoNEB on CurvyValley at the default schedule: wall time (median of ``repeats`` runs),
    steps per second, saddle."""
    valley = toys.CurvyValley()
    probe = toys.toy_probe(valley, progress=False)
    a, b = valley.minima()
    steps = sum(c["steps"] for c in paper_schedule())
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        path = auto_neb(probe, a, b)
        walls.append(time.perf_counter() - t0)
    wall = float(np.median(walls))
    return {"steps": steps, "wall_s": wall, "runs_s": walls, "steps_per_s": steps / wall,
            "max_loss": float(path.max_loss), "images": int(path.settings["images"])}


def mlp_problem(batches: int = 2, batch: int = 64):
    """The MLP 1000-1000-10, its loss, data and two endpoints."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))
    data = [(torch.randn(batch, 1000), torch.randint(0, 10, (batch,))) for _ in range(batches)]
    loss_fn = torch.nn.CrossEntropyLoss()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.05 * torch.randn_like(v) for k, v in a.items()}
    return model, loss_fn, data, a, b


def warship_problem(batch: int = 4, size: int = 41):
    """Full-size WARSHIP-XZNet beta (945,555 parameters), the study's loss, random patches, two endpoints."""
    torch.manual_seed(0)
    model = lp.models.WarshipXZNetBeta()
    data = [(torch.rand(batch, 1, size, size), torch.rand(batch, 1, size, size)) for _ in range(2)]
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.01 * torch.randn_like(v) for k, v in a.items()}
    return model, lp.losses.RecursiveSupervisionLoss(alpha=0.5), data, a, b


def per_step(model, loss_fn, data, a, b, images: int, steps: int, repeats: int, lr: float = 1e-3) -> dict:
    """Per-step seconds of a K-image band and of a polychain curve, and the K-pass floor. The
    band's way of evaluating its images (``batch_images``) is measured once by ``auto_neb``
    itself (its default); the timed bands then pass that choice, so that the one-time
    measurement does not enter the per-step difference (it is reported on its own)."""
    probe = lp.LandscapeProbe(model, loss_fn, data, progress=False)
    x, y = data[0]

    def band(n: int, batch_images=None):
        return lambda: auto_neb(probe, a, b, schedule=[{"steps": n, "lr": lr, "insert": images}], sub_points=1,
                                points=2, batch_images=batch_images)

    t0 = time.perf_counter()
    chosen = band(1)().settings["batch_images"]          # the default: measured on the first step
    first_call_s = time.perf_counter() - t0

    def chain(n: int):
        return lambda: probe.connect(a, b, method="polychain", bends=2, steps=n, lr=lr, points=2,
                                     t_samples=images)

    stacked = [torch.stack([a[n] + 0.01 * k for k in range(images)]) for n in probe.engine.parameter_names()]
    part = Part(data[0], len(x), 1.0)

    def batched():                       # the band's model evaluation in one vmapped call, its gradients
        engine = probe.engine
        with engine.guard("bench_fits"):
            engine.set_fit_modes()
            leaves = [t.detach().requires_grad_(True) for t in stacked]
            with torch.enable_grad():
                torch.autograd.grad(engine.fit_losses(leaves, part).sum(), leaves)

    def passes():
        for _ in range(images):
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    copies = [t.detach().clone().requires_grad_(True) for t in stacked]     # K models' parameters
    for c in copies:
        c.grad = torch.randn_like(c)
    sgd = torch.optim.SGD(copies, lr=lr, momentum=0.9)
    sgd.step()                                                              # momentum buffers exist

    t = timeit({"band_n": band(steps, chosen), "band_1": band(1, chosen), "chain_n": chain(steps),
                "chain_1": chain(1), "batched": batched, "floor": passes, "sgd_step": sgd.step},
               repeats=repeats, warmup=1)
    floor = np.asarray(t["floor"]["runs"])
    band_step = (np.asarray(t["band_n"]["runs"]) - np.asarray(t["band_1"]["runs"])) / (steps - 1)
    chain_step = (np.asarray(t["chain_n"]["runs"]) - np.asarray(t["chain_1"]["runs"])) / (steps - 1)
    return {"images": images, "steps": steps, "repeats": repeats, "batch": int(len(x)),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "floor_s": float(np.median(floor)), "band_step_s": float(np.median(band_step)),
            "band_ratio": float(np.median(band_step / floor)), "batch_images": chosen,
            "one_step_band_s": first_call_s,
            "polychain_step_s": float(np.median(chain_step)), "polychain_ratio": float(np.median(chain_step / floor)),
            "batched_evaluation_s": t["batched"]["median_s"],
            "batched_evaluation_ratio": float(np.median(np.asarray(t["batched"]["runs"]) / floor)),
            "sgd_step_s": t["sgd_step"]["median_s"],
            "band_ratio_to_floor_and_sgd_step": float(np.median(band_step / (floor + np.asarray(t["sgd_step"]["runs"]))))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="interior images K of the band (t values of the curve)")
    ap.add_argument("--steps", type=int, default=10, help="steps of the longer of the two calls (>= 2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-toy", action="store_true", help="only the 1M-parameter measurements")
    ap.add_argument("--toy-repeats", type=int, default=3, help="CurvyValley runs (the median is reported)")
    ap.add_argument("--skip-warship", action="store_true", help="skip the full-size WARSHIP-XZNet beta measurement")
    ap.add_argument("--warship-steps", type=int, default=2, help="steps of the longer WARSHIP call (>= 2; ~6 s each)")
    ap.add_argument("--out", default=str(RESULTS / f"fits_{cpu_tag()}.json"))
    args = ap.parse_args(argv)
    if args.steps < 2 or args.warship_steps < 2:
        ap.error("--steps and --warship-steps must be >= 2 (a step's cost is the difference of a 1-step and an n-step call)")
    torch.set_num_threads(args.threads)
    out = {"environment": environment()}
    if not args.skip_toy:
        out["curvy_valley_auto_neb"] = toy_auto_neb(args.toy_repeats)
        print("CurvyValley auto_neb:", out["curvy_valley_auto_neb"])
    model, loss_fn, data, a, b = mlp_problem()
    out["mlp_1m"] = per_step(model, loss_fn, data, a, b, args.images, args.steps, args.repeats)
    print("MLP 1000-1000-10:", out["mlp_1m"])
    if not args.skip_warship:              # the study's loss sums over pixels: a tiny lr keeps the band finite
        model, loss_fn, data, a, b = warship_problem()
        out["warship"] = per_step(model, loss_fn, data, a, b, args.images, args.warship_steps,
                                  max(1, args.repeats - 2), lr=1e-9)
        print("WARSHIP-XZNet beta:", out["warship"])
    save_json(args.out, out)
    return out


if __name__ == "__main__":
    main()

"""Benchmark: the per-step cost of curve fits and AutoNEB against the model's own passes.

(1) ``auto_neb`` on the two-parameter toy ``CurvyValley`` at the default schedule
(``paper_schedule()``: 14 cycles, 16,000 steps): wall time and steps per second. The model
costs next to nothing, so this measures the fit's own work per step.

(2) On an MLP 1000-1000-10 (about 1M parameters, float32, batches of 64): the cost of one
optimizer step of an AutoNEB band of K interior images and of a polychain curve (``t_samples``
values of t per step), and of the band's model evaluation alone (``Engine.fit_losses`` on the
K images stacked, and their gradients), against K (resp. ``t_samples``) forward-and-backward
passes of the model itself (the floor), measured in the same process. A step's cost is the difference of
two calls that differ only in their number of steps, divided by that difference (the band's
insertion and the final measurement cancel). Runs are interleaved, after warm-up; medians, and
the ratio to the floor as the median of the per-round ratios.

Run:  python benchmarks/bench_fits.py [--images 8] [--steps 10] [--repeats 5] [--threads 1] [--skip-toy]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, timeit  # noqa: E402

import landprobe as lp  # noqa: E402
from landprobe.common.io import save_json  # noqa: E402
from landprobe.engine import Part  # noqa: E402
from landprobe.probes import toys  # noqa: E402
from landprobe.probes.curves.neb import auto_neb, paper_schedule  # noqa: E402


def toy_auto_neb() -> dict:
    """AutoNEB on CurvyValley at the default schedule: wall time, steps per second, saddle."""
    valley = toys.CurvyValley()
    probe = toys.toy_probe(valley, progress=False)
    a, b = valley.minima()
    steps = sum(c["steps"] for c in paper_schedule())
    t0 = time.perf_counter()
    path = auto_neb(probe, a, b)
    wall = time.perf_counter() - t0
    return {"steps": steps, "wall_s": wall, "steps_per_s": steps / wall, "max_loss": float(path.max_loss),
            "images": int(path.settings["images"])}


def mlp_problem(batches: int = 2, batch: int = 64):
    """The MLP 1000-1000-10, its loss, data and two endpoints."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))
    data = [(torch.randn(batch, 1000), torch.randint(0, 10, (batch,))) for _ in range(batches)]
    loss_fn = torch.nn.CrossEntropyLoss()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.05 * torch.randn_like(v) for k, v in a.items()}
    return model, loss_fn, data, a, b


def per_step(model, loss_fn, data, a, b, images: int, steps: int, repeats: int) -> dict:
    """Per-step seconds of a K-image band and of a polychain curve, and the K-pass floor."""
    probe = lp.LandscapeProbe(model, loss_fn, data, progress=False)
    x, y = data[0]

    def band(n: int):
        return lambda: auto_neb(probe, a, b, schedule=[{"steps": n, "lr": 1e-3, "insert": images}], sub_points=1,
                                points=2)

    def chain(n: int):
        return lambda: probe.connect(a, b, method="polychain", bends=2, steps=n, lr=1e-3, points=2,
                                     t_samples=images)

    stacked = [torch.stack([a[n] + 0.01 * k for k in range(images)]) for n in probe.engine.parameter_names()]
    part = Part(data[0], len(x), 1.0)

    def batched():                       # the band's model evaluation alone: one vmapped call, its gradients
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
    t = timeit({"band_n": band(steps), "band_0": band(0), "chain_n": chain(steps), "chain_0": chain(0),
                "batched": batched, "floor": passes}, repeats=repeats, warmup=1)
    floor = np.asarray(t["floor"]["runs"])
    band_step = (np.asarray(t["band_n"]["runs"]) - np.asarray(t["band_0"]["runs"])) / steps
    chain_step = (np.asarray(t["chain_n"]["runs"]) - np.asarray(t["chain_0"]["runs"])) / steps
    return {"images": images, "steps": steps, "repeats": repeats,
            "floor_s": float(np.median(floor)), "band_step_s": float(np.median(band_step)),
            "polychain_step_s": float(np.median(chain_step)),
            "band_ratio": float(np.median(band_step / floor)),
            "batched_evaluation_s": t["batched"]["median_s"],
            "batched_evaluation_ratio": float(np.median(np.asarray(t["batched"]["runs"]) / floor)), "polychain_ratio": float(np.median(chain_step / floor)),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="interior images K of the band (t values of the curve)")
    ap.add_argument("--steps", type=int, default=10, help="steps of the longer of the two calls")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-toy", action="store_true", help="only the 1M-parameter measurement")
    ap.add_argument("--out", default=str(RESULTS / "fits_xeon.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"environment": environment()}
    if not args.skip_toy:
        out["curvy_valley_auto_neb"] = toy_auto_neb()
        print("CurvyValley auto_neb:", out["curvy_valley_auto_neb"])
    model, loss_fn, data, a, b = mlp_problem()
    out["mlp_1m"] = per_step(model, loss_fn, data, a, b, args.images, args.steps, args.repeats)
    print("MLP 1000-1000-10:", out["mlp_1m"])
    save_json(args.out, out)
    return out


if __name__ == "__main__":
    main()

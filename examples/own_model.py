"""Your own model end to end: two seeds with a subnet norm penalty, the landscape between them.

    python examples/own_model.py --out own-model-out [--quick]

A small convnet classifies synthetic 8x8 images (three classes set by a random teacher). It
is trained twice (seeds 0 and 1) with ``lp.SubnetNormPenalty``: squared L2 on the feature
extractor, L1 on the head. Then, on the training data:

- the curve between the two solutions (``probe.interpolate(a, b, points=...)``) and its barrier;
- a plane through both (origin a, first direction b - a, second a random direction
  orthogonal to it with the same length, so that a = (0, 0) and b = (1, 0));
- at each solution, the top Hessian eigenvalue (Lanczos) and the Hessian trace (Hutch++),
  ``probe.hessian(theta)``;
- a capacity report per solution (``lp.capacity.report``: norms, path norm, spectral
  complexity, sparsity, Fisher-Rao), for the whole model and per subnet.

Writes to the output folder: ``curve.json``, ``plane.json``, ``capacity_a.json``,
``capacity_b.json``, ``summary.json`` (and ``curve.png``, ``plane.png`` with matplotlib).
``--quick`` (fewer steps and points) runs in well under 30 s on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

import landprobe as lp

SUBNETS = {"features": "features", "head": "head"}     # name -> selector (module paths)


def make_model() -> nn.Module:
    features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                             nn.ReLU(), nn.Flatten())
    return nn.Sequential(OrderedDict(features=features, head=nn.Linear(8 * 4 * 4, 3)))


def make_data(n: int, seed: int, batch: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` images in batches; the labels come from a fixed random linear teacher."""
    teacher = torch.randn(3, 64, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.flatten(1) @ teacher.T).argmax(1)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def train(seed: int, data, steps: int) -> nn.Module:
    torch.manual_seed(seed)
    model = make_model()
    penalty = lp.SubnetNormPenalty(model, {"features": "l2_squared", "head": "l1"}, weight={"features": 1e-4,
                                                                                            "head": 1e-3})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = nn.CrossEntropyLoss()
    for step in range(steps):
        x, y = data[step % len(data)]
        loss = criterion(model(x), y) + penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def accuracy(model: nn.Module, data) -> float:
    with torch.no_grad():
        return sum(int((model(x).argmax(1) == y).sum()) for x, y in data) / sum(len(y) for _, y in data)


def plane_directions(a: nn.Module, b: nn.Module) -> tuple[lp.ParamVector, lp.ParamVector, lp.ParamVector]:
    """Origin a, d1 = b - a, d2 = a random direction orthogonal to d1 with d1's length."""
    pa, pb = lp.ParamVector.from_module(a), lp.ParamVector.from_module(b)
    d1 = pb - pa
    d2 = d1.randn_like(seed=0)
    d2 = d2 - d1 * (d2.dot(d1) / d1.dot(d1))
    d2 = d2 * (d1.norm() / d2.norm())
    return pa, d1, d2


def curvature(probe: lp.LandscapeProbe, model: nn.Module, matvecs: int) -> dict[str, float]:
    op = probe.hessian(model)
    top = op.top_eigenvalues(1, tol=1e-4)
    trace = op.trace(method="hutch++", matvecs=matvecs, seed=0)
    return {"lambda_max": float(top.values[0]), "trace": float(trace.value), "trace_stderr": float(trace.stderr)}


def save_figures(out: Path, curve, surface) -> list[str]:
    try:
        ax = curve.plot()
    except ImportError:
        print("matplotlib not installed: no PNG (pip install 'landprobe[plot]')")
        return []
    ax.set_xlabel("alpha (seed 0 -> seed 1)")
    ax.figure.savefig(out / "curve.png", dpi=110, bbox_inches="tight")
    ax = surface.plot()
    ax.figure.savefig(out / "plane.png", dpi=110, bbox_inches="tight")
    return ["curve.png", "plane.png"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="own-model-out", help="output folder (created)")
    ap.add_argument("--quick", action="store_true", help="fewer steps and points (under 30 s)")
    args = ap.parse_args(argv)
    steps, points, grid, matvecs = (120, 11, 7, 12) if args.quick else (600, 41, 21, 60)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, test = make_data(512, seed=0), make_data(512, seed=1)
    a, b = train(0, data, steps), train(1, data, steps)
    criterion = nn.CrossEntropyLoss()
    probe = lp.LandscapeProbe(make_model(), criterion, data, progress=False)

    curve = probe.interpolate(a, b, points=points)
    curve.save(out / "curve.json")
    origin, d1, d2 = plane_directions(a, b)
    surface = probe.plane(origin, directions=(d1, d2), span=((-0.25, 1.25), (-0.5, 0.5)), points=grid)
    surface.save(out / "plane.json")
    summary = {"steps": steps, "points": points, "plane_points": grid, "solutions": {}}
    for name, model in (("a", a), ("b", b)):
        rep = lp.capacity.report(model, data, SUBNETS, criterion, measures=lp.capacity.CHEAP_MEASURES,
                                 progress=False)
        rep.save(out / f"capacity_{name}.json")
        summary["solutions"][name] = {"train_loss": probe.loss(model), "train_accuracy": accuracy(model, data),
                                      "test_accuracy": accuracy(model, test), **curvature(probe, model, matvecs),
                                      "l2": rep["model"]["l2"], "head_l1": rep["head"]["l1"]}
    summary["curve"] = {"loss_a": curve.loss_a, "loss_b": curve.loss_b, "barrier": curve.barrier,
                        "argmax_alpha": curve.argmax_alpha}
    summary["plane"] = {"min_loss": float(surface.losses.min()), "max_loss": float(surface.losses.max())}
    summary["figures"] = save_figures(out, curve, surface)
    summary["seconds"] = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for name, s in summary["solutions"].items():
        print(f"{name}: train loss {s['train_loss']:.4f}, test accuracy {s['test_accuracy']:.3f}, "
              f"lambda_max {s['lambda_max']:.4g}, trace {s['trace']:.4g} +- {s['trace_stderr']:.2g}, "
              f"||theta|| {s['l2']:.4g}")
    print(f"curve: barrier {curve.barrier:.4f} at alpha {curve.argmax_alpha:.2f}; "
          f"plane: loss {summary['plane']['min_loss']:.4f} .. {summary['plane']['max_loss']:.4f}")
    print(f"wrote {out} in {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()

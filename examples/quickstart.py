"""Quick start: a subnet-wise norm penalty in your own loop, then the landscape between two solutions.

    python examples/quickstart.py [--out quickstart-out]

Trains the same small CNN twice (two seeds) with a Mix-like penalty (L2 on the feature
extractor, L1 on the head), then evaluates the empirical error along the segment between
the two solutions and saves the curve as JSON and PNG. Runs in a few seconds on a CPU.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

import landprobe as lp


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 1),
    )


def make_data(n_batches=8, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 8, 8, generator=g)
    data = []
    for _ in range(n_batches):
        x = torch.randn(batch, 1, 8, 8, generator=g)
        y = (x * w).sum(dim=(1, 2, 3)).unsqueeze(1) + 0.1 * torch.randn(batch, 1, generator=g)
        data.append((x, y))
    return data


def train(seed: int, data, steps: int = 150) -> nn.Module:
    torch.manual_seed(seed)
    model = make_model()
    # L2 (weight decay) on the two convs, L1 on the head; selectors are module paths or globs
    penalty = lp.SubnetNormPenalty(model, {"0": "l2_squared", "2": "l2_squared", "5": "l1"}, weight=1e-4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = nn.MSELoss()
    for step in range(steps):
        x, y = data[step % len(data)]
        loss = criterion(model(x), y) + penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="quickstart-out")
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    data = make_data()
    a, b = train(0, data, args.steps), train(1, data, args.steps)
    probe = lp.LandscapeProbe(make_model(), nn.MSELoss(), data)
    curve = probe.interpolate(a, b, points=21)
    print(f"L(a) = {curve.loss_a:.4f}  L(b) = {curve.loss_b:.4f}  barrier = {curve.barrier:.4f} "
          f"at alpha = {curve.argmax_alpha:.2f}")
    out = Path(args.out)
    curve.save(out / "curve.json")
    try:
        ax = curve.plot()
        ax.figure.savefig(out / "curve.png", dpi=120, bbox_inches="tight")
    except ImportError:
        print("matplotlib not installed: skipped the PNG (pip install 'landprobe[plot]')")
    print(f"wrote {out / 'curve.json'}")


if __name__ == "__main__":
    main()

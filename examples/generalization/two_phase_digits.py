"""Two-phase training on the scikit-learn digits (Kawaguchi, Kaelbling & Bengio, "Generalization
in Deep Learning"): test error of base, two-phase and DARC1 training over seeds.

    python examples/generalization/two_phase_digits.py --out results/two_phase [--seeds 20]

A ReLU MLP (64 -> 256 -> 256 -> 10) on the digits' 1,258 training images (30% of the 1,797 held
out for testing, split by ``load_digits_split(seed=0)``). Per seed, from one initialisation:
base training on all m training images; two-phase training (phase 1 on alpha*m images drawn
by the seed, phase 2 on the rest with the ReLU gates frozen from the phase-1 network); base
training with DARC1 (lambda = 0.001). Each arm takes the same number of SGD steps. Writes
``two_phase.json`` (the TwoPhaseResult, with the command, torch version, CPU model and date),
``table.md`` (ratios to base, mean and sd over seeds, and per-seed errors) and ``ratios.png``.
Needs scikit-learn and matplotlib (``pip install 'landprobe[experiments]'``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits import load_digits_split

from landprobe.common.hardware import cpu_model
from landprobe.common.results import require_matplotlib
from landprobe.generalization.two_phase import two_phase_experiment




def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("two_phase-out"), help="output folder")
    p.add_argument("--seeds", type=int, default=20, help="runs, seeds 0..N-1 (default 20)")
    p.add_argument("--alpha", type=float, default=0.25, help="share of the training images in phase 1")
    p.add_argument("--steps", type=int, default=1500, help="SGD steps of each arm (default 1500, ~76 epochs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--width", type=int, default=256, help="hidden units per layer")
    p.add_argument("--darc1", type=float, default=1e-3, help="lambda of DARC1 (Kawaguchi et al.: 0.001)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    (x, y), (xt, yt) = load_digits_split(test=0.3, seed=0)

    def make_model() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, args.width), nn.ReLU(), nn.Linear(args.width, args.width),
                             nn.ReLU(), nn.Linear(args.width, 10))

    def sgd(params):
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9)

    start = time.perf_counter()
    res = two_phase_experiment(make_model, (x, y), (xt, yt), alpha=args.alpha, seeds=range(args.seeds),
                               steps=args.steps, batch_size=args.batch_size, optimizer=sgd,
                               darc1_weight=args.darc1)
    seconds = time.perf_counter() - start
    res.settings["run"] = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None
                                                                               else argv)]),
        "data": "scikit-learn digits, load_digits_split(test=0.3, seed=0), pixels / 16",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    res.save(args.out / "two_phase.json")
    table = res.table(per_seed=True)
    (args.out / "table.md").write_text(table + "\n", encoding="utf-8")
    plt = require_matplotlib()
    ax = res.plot()
    ax.figure.tight_layout()
    ax.figure.savefig(args.out / "ratios.png", dpi=120)
    plt.close(ax.figure)
    print(table)
    print(f"{seconds:.1f} s; wrote {args.out / 'two_phase.json'}, table.md, ratios.png")
    return res.summary()


if __name__ == "__main__":
    main()

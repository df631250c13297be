"""Zhang et al. (2017)'s memorization experiment on the scikit-learn 8x8 digits: a small CNN
trained to a fixed training loss on true labels, on labels corrupted with probability p, and
on shuffled pixels, random pixels and Gaussian inputs.

    python examples/generalization/memorization_digits.py --out results/memorization/digits
    python examples/generalization/memorization_digits.py --out /tmp/mem --quick     # seconds

Writes OUT/memorization.json (a landprobe MemorizationResult, with the command, versions, CPU
model and date under settings["run"]), OUT/memorization.png (Figure 1's three panels) and
OUT/table.md. Needs scikit-learn and matplotlib (pip install 'landprobe[experiments]').
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits import load_digits_split  # noqa: E402

from landprobe.common.hardware import cpu_model  # noqa: E402
from landprobe.generalization.memorization import MemorizationOptions, memorization  # noqa: E402


def cnn(seed: int) -> nn.Module:
    """Two 3x3 convs (8, 16 channels), a 2x2 max-pool and a 256-unit hidden layer: 69,610 parameters."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 10))


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)




def provenance(argv: list[str]) -> dict:
    return {"command": " ".join(shlex.quote(a) for a in ["python", sys.argv[0], *argv]), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="memorization-digits")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ap.add_argument("--threshold", type=float, default=0.02, help="training cross-entropy of a fitted run")
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="levels 0 and 1, one seed, 60 steps: a smoke run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.levels, args.max_steps, args.threshold = [0], [0.0, 1.0], 60, 0.6
    (x_train, y_train), (x_test, y_test) = load_digits_split(test=0.3, seed=0)
    options = MemorizationOptions(threshold=args.threshold, max_steps=args.max_steps, batch_size=128, optimizer=sgd)
    start = time.perf_counter()
    result = memorization(cnn, TensorDataset(x_train, y_train), TensorDataset(x_test, y_test), nn.CrossEntropyLoss(),
                          [*args.levels, "shuffled_pixels", "random_pixels", "gaussian"], num_classes=10,
                          seeds=args.seeds, options=options, error_name="test error (1 - accuracy)")
    result.settings["run"] = {**provenance(argv), "seconds": time.perf_counter() - start,
                              "data": f"scikit-learn digits, load_digits_split(test=0.3, seed=0): "
                                      f"{len(y_train)} train, {len(y_test)} test"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "memorization.json")
    result.plot().savefig(out / "memorization.png", dpi=120)
    (out / "table.md").write_text(result.markdown() + "\n")
    print(result.markdown())
    print(f"{time.perf_counter() - start:.0f} s; wrote {out}/memorization.json, memorization.png, table.md")
    return result


if __name__ == "__main__":
    main()

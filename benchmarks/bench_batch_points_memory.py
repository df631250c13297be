"""Peak memory of ``interpolate(..., batch_points=k)``: what the points per model call cost.

    python benchmarks/bench_batch_points_memory.py [--ks 1 2 3 4] [--out FILE]

Each (model, k) runs in a fresh process (peak RSS only grows): the model, its data and one
``probe.loss()`` first (so the guard's copy of the state and the allocator's first pages are
in the baseline), then one ``probe.interpolate(a, b, 7, batch_points=k)``; reported is the rise
of the peak resident set size in units of the model's parameter bytes ("copies"). The claim
checked: ``batch_points=k`` costs k copies of the parameters plus k times the activations of
one batch's forward (the MLP's activations are small; the CNN's are not).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cpu_tag, environment  # noqa: E402

from landprobe.common.io import save_json  # noqa: E402

CHILD = r"""
import gc, json, resource, sys, torch
torch.set_num_threads(1)
import landprobe as lp
kind, k = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
if kind == "mlp":
    model = torch.nn.Sequential(torch.nn.Linear(1000, 2000), torch.nn.ReLU(), torch.nn.Linear(2000, 1000),
                                torch.nn.ReLU(), torch.nn.Linear(1000, 10))
    data = [(torch.randn(32, 1000), torch.randn(32, 10)) for _ in range(2)]
    act = 32 * (2000 + 1000 + 10)
else:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(4096, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 10))
    data = [(torch.randn(16, 3, 32, 32), torch.randn(16, 10)) for _ in range(2)]
    act = 16 * (2 * 2 * 64 * 32 * 32 + 4096 + 256 + 10)
params = sum(p.numel() for p in model.parameters())
a = {n: v.clone() for n, v in model.state_dict().items()}
b = {n: v + 0.01 for n, v in a.items()}
probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), data, progress=False)
probe.loss()
gc.collect()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
probe.interpolate(a, b, 7, batch_points=k)
rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
print(json.dumps({"params": params, "activation_floats": act, "rise_bytes": rise}))
"""


def measure(kind: str, k: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(k)], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    param_bytes = 4 * got["params"]
    got["copies"] = got["rise_bytes"] / param_bytes
    got["claim_copies"] = k + k * 4 * got["activation_floats"] / param_bytes if k > 1 else 0.0
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--out", default=str(RESULTS / f"batch_points_memory_{cpu_tag()}.json"))
    args = parser.parse_args()
    results: dict = {}
    for kind in ("mlp", "cnn"):
        results[kind] = {}
        for k in args.ks:
            got = measure(kind, k)
            results[kind][str(k)] = got
            print(f"{kind} batch_points={k}: peak rise {got['rise_bytes'] / 1e6:.1f} MB = {got['copies']:.2f} "
                  f"parameter copies (claim: {got['claim_copies']:.2f})", flush=True)
    save_json(args.out, {"env": environment(), "what": __doc__.splitlines()[0], "results": results})


if __name__ == "__main__":
    main()

"""Weight matching: landprobe.symmetry vs the ``rebasin`` package (PermutationCoordinateDescent).

    python benchmarks/bench_rebasin.py [--seeds 5] [--out benchmarks/results/rebasin_CPU.json]

Two independently initialised networks ``a`` and ``b`` of one architecture (an MLP and a conv
net with BatchNorm); ``b`` is aligned to ``a`` by each method, from the same seeds. Reported
per method: wall time (the graph tracing apart from the matching) and the final objective
``sum over parameters of <a, P(b)>`` (float64, BatchNorm statistics left out), the quantity
both methods maximise. Methods: ours with its default greedy start, ours from the identity
(Ainsworth et al.'s start, as the peer), and the peer. ``function_kept``: whether the aligned
``b`` still computes what ``b`` computed (a higher objective from a permutation that changes
the function is no alignment).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from landprobe import symmetry as S

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _common import RESULTS, cpu_tag, environment  # noqa: E402


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 256),
                         nn.ReLU(), nn.Linear(256, 10))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS = {"mlp": (mlp, (2, 256)), "convnet": (ConvNet, (2, 3, 16, 16))}


def objective(a: nn.Module, state_b: dict) -> float:
    sa = dict(a.named_parameters())
    return float(sum((sa[k].detach().double() * state_b[k].detach().double()).sum() for k in sa))


def ours(a: nn.Module, b: nn.Module, x: torch.Tensor, seed: int, init: str) -> dict:
    t0 = time.perf_counter()
    spec = S.permutation_spec(a, x)
    t1 = time.perf_counter()
    perm = S.weight_matching(a, b, spec, seed=seed, init=init)
    t2 = time.perf_counter()
    aligned = S.permute(b.state_dict(), perm, spec)
    kept = torch.allclose(torch.func.functional_call(b.eval(), aligned, (x,)), b.eval()(x), atol=1e-5)
    return {"trace_s": t1 - t0, "match_s": t2 - t1, "objective": objective(a, aligned),
            "sweeps": perm.settings["sweeps"], "function_kept": bool(kept)}


def peer(a: nn.Module, b: nn.Module, x: torch.Tensor, seed: int) -> dict:
    from rebasin import PermutationCoordinateDescent

    original, b = b, copy.deepcopy(b)
    torch.manual_seed(seed)                     # the peer draws its group order from torch's RNG
    t0 = time.perf_counter()
    pcd = PermutationCoordinateDescent(a, b, x)
    t1 = time.perf_counter()
    pcd.rebasin()
    t2 = time.perf_counter()
    return {"trace_s": t1 - t0, "match_s": t2 - t1, "objective": objective(a, b.state_dict()),
            "function_kept": bool(torch.allclose(b.eval()(x), original.eval()(x), atol=1e-5))}


def run(kind: str, seeds: int) -> dict:
    make, shape = MODELS[kind]
    torch.manual_seed(1000)
    a, b = make().eval(), make().eval()
    x = torch.randn(*shape)
    rows = []
    for seed in range(seeds):
        row = {"seed": seed, "ours_greedy": ours(a, b, x, seed, "greedy"),
               "ours_identity": ours(a, b, x, seed, "identity")}
        try:
            row["peer"] = peer(a, b, x, seed)
        except Exception as exc:  # the peer may not handle an architecture: say so
            row["peer"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        rows.append(row)
        print(kind, seed, {k: {m: (round(v, 4) if isinstance(v, float) else v) for m, v in r.items()}
                           for k, r in row.items() if k != "seed"}, flush=True)
    summary = {}
    for method in ("ours_greedy", "ours_identity", "peer"):
        got = [r[method] for r in rows if "objective" in r[method]]
        if got:
            summary[method] = {"objective_median": float(np.median([g["objective"] for g in got])),
                               "match_s_median": float(np.median([g["match_s"] for g in got])),
                               "trace_s_median": float(np.median([g["trace_s"] for g in got]))}
    peers = [r for r in rows if "objective" in r["peer"]]
    if peers:
        summary["ours_greedy_at_least_peer"] = sum(r["ours_greedy"]["objective"] >= r["peer"]["objective"] - 1e-9
                                                   for r in peers)
        summary["ours_identity_at_least_peer"] = sum(
            r["ours_identity"]["objective"] >= r["peer"]["objective"] - 1e-9 for r in peers)
        summary["seeds_with_peer"] = len(peers)
    return {"parameters": sum(p.numel() for p in a.parameters()), "identity_objective": objective(a, b.state_dict()),
            "rows": rows, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / f"rebasin_{cpu_tag()}.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        import rebasin  # noqa: F401
        peer_version = subprocess.run([sys.executable, "-m", "pip", "show", "rebasin"], capture_output=True,
                                      text=True).stdout.split("Version:")[1].split()[0]
    except (ImportError, IndexError):
        peer_version = None
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    out = {"environment": {**environment(), "lscpu_model_name": model_name, "rebasin": peer_version},
           "results": {kind: run(kind, args.seeds) for kind in MODELS}}
    from landprobe.common.io import save_json

    print(json.dumps({k: v["summary"] for k, v in out["results"].items()}, indent=1))
    print("wrote", save_json(args.out, out))


if __name__ == "__main__":
    main()

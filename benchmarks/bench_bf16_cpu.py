"""Does bf16 autocast pay on this CPU? Full-size WARSHIP-XZNet β forward, fp32 vs bf16, one process.

    python benchmarks/bench_bf16_cpu.py [--patches 16] [--repeats 3] [--out benchmarks/results/bf16_cpu_epyc.json]

A forward pass (under ``torch.inference_mode``) of the full-size model on ``--patches`` random
41x41 patches, after one warm-up pass, fp32 and bf16 autocast interleaved; seconds per patch
(median over repeats). On a CPU without AVX512-BF16 or AMX PyTorch emulates bf16, which is what
``landprobe.common.hardware`` warns about.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, environment, paired_ratio, timeit  # noqa: E402

import landprobe as lp  # noqa: E402
from landprobe.common.io import save_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "bf16_cpu_epyc.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = lp.models.WarshipXZNetBeta().eval()
    x = torch.randn(args.patches, 1, 41, 41)

    def run(dtype):
        def f():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                model(x)
        return f

    t = timeit({"fp32": run(None), "bf16_autocast": run(torch.bfloat16)}, repeats=args.repeats, warmup=1)
    per_patch = {k: v["median_s"] / args.patches for k, v in t.items()}
    report = {"env": environment(), "model": "WarshipXZNetBeta() (945,555 parameters)",
              "input": f"{args.patches}x1x41x41, torch.inference_mode", "timings": t,
              "seconds_per_patch": per_patch,
              "bf16_over_fp32_paired": paired_ratio(t, "bf16_autocast", "fp32")}
    print(per_patch, "bf16/fp32", round(report["bf16_over_fp32_paired"], 2))
    save_json(args.out, report)
    print("wrote", args.out)


if __name__ == "__main__":
    main()

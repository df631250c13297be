"""Benchmark: one training step of the recipe vs a minimal hand-written PyTorch loop, fp32 and bf16.

Both sides do the same work on the same WARSHIP-XZNet β (width 0.25 by default), batch 64 of
41x41 T91 x2 patches: index the batch, forward (under bf16 autocast or not), the recursive-
supervision loss ((1 − α)·L1 + α·L2, literal scaling), the Mix penalty in fp32 at λ = 2e-4,
backward, ``clip_grad_norm_(…, 1.0)``, SGD (lr 0.01, momentum 0.9). The recipe side is
``Trainer.train_step()`` of ``landprobe.recipes._train`` (with its data stream, loss
components, ``SubnetNormPenalty`` and per-epoch accumulators); the reference is the few lines
a user would write, with the penalty as ``sum(p.pow(2).sum())`` / ``sum(p.abs().sum())``.
Runs are interleaved (recipe, reference, recipe, ...), after warm-up; median and IQR.

Reported: the recipe's overhead (ratio of medians − 1, and the median of the per-round
ratios − 1, "paired") and the fp32 / bf16 step-time ratio on this CPU.

Run:  python benchmarks/bench_train_step.py [--width 0.25] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, paired_ratio, timeit  # noqa: E402

from landprobe.common.io import save_json  # noqa: E402
from landprobe.data import T91Patches  # noqa: E402
from landprobe.recipes._train import Trainer, TrainSpec, build_model, split_output  # noqa: E402


def reference_step_fn(model, inputs, targets, amp: bool, setting_kinds, lam=2e-4, alpha=0.5, batch=64, seed=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    subnets = {name: list(getattr(model, name).parameters()) for name in ("enet", "inet", "rnet")}

    def step():
        idx = torch.randint(0, inputs.shape[0], (batch,), generator=gen)
        x, y = inputs[idx], targets[idx]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            final, inter = split_output(model(x))
            n = y.shape[0]
            l1 = (final - y).pow(2).sum() / (2 * n)
            l2 = sum((o - y).pow(2).sum() for o in inter) / (2 * len(inter) * n)
            loss = (1 - alpha) * l1 + alpha * l2
        pen = sum(lam * (sum(p.pow(2).sum() for p in ps) if setting_kinds[k] == "l2" else sum(p.abs().sum() for p in ps))
                  for k, ps in subnets.items())
        (loss.float() + pen).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "data" / "T91"))
    ap.add_argument("--out", default=str(RESULTS / "train_step.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    patches = T91Patches(args.data, scale=2)
    kinds = {"enet": "l2", "inet": "l1", "rnet": "l2"}  # Mix
    results = {"settings": {"width": args.width, "batch": 64, "patch": 41, "setting": "mix", "repeats": args.repeats,
                            "warmup": args.warmup, "data": args.data, "patches": len(patches)}}
    for amp in ("off", "bf16"):
        spec = TrainSpec(setting="mix", width=args.width, amp=amp, epochs=10**6)
        trainer = Trainer(spec, patches.inputs, patches.targets)
        ref_model = build_model(args.width, 4, seed=0)
        ref = reference_step_fn(ref_model, patches.inputs, patches.targets, amp == "bf16", kinds)
        t = timeit({"recipe": trainer.train_step, "reference": ref}, repeats=args.repeats, warmup=args.warmup)
        t["overhead"] = t["recipe"]["median_s"] / t["reference"]["median_s"] - 1.0
        t["overhead_of_minima"] = min(t["recipe"]["runs"]) / min(t["reference"]["runs"]) - 1.0
        t["overhead_paired"] = paired_ratio(t, "recipe", "reference") - 1.0     # median of per-round ratios
        results[amp] = t
        print(f"{amp:>4}: recipe {t['recipe']['median_s']:.3f} s (IQR {t['recipe']['iqr_s']:.3f}), reference "
              f"{t['reference']['median_s']:.3f} s (IQR {t['reference']['iqr_s']:.3f}), overhead "
              f"{100 * t['overhead']:+.1f} % (paired {100 * t['overhead_paired']:+.1f} %, of minima "
              f"{100 * t['overhead_of_minima']:+.1f} %)")
    results["parameters"] = sum(p.numel() for p in build_model(args.width, 4).parameters())
    results["fp32_over_bf16"] = {
        "recipe": results["off"]["recipe"]["median_s"] / results["bf16"]["recipe"]["median_s"],
        "reference": results["off"]["reference"]["median_s"] / results["bf16"]["reference"]["median_s"],
    }
    results["environment"] = environment()
    print(f"fp32 / bf16 step time: {results['fp32_over_bf16']['recipe']:.2f}x (recipe), "
          f"{results['fp32_over_bf16']['reference']:.2f}x (reference)")
    save_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The super-resolution analogue of Zhang et al. (2017)'s memorization experiment: WARSHIP-XZNet
beta at the cpu preset's width trained on T91 x2 patches with their true targets and with the
targets shuffled across patches, to a training-loss threshold set from bicubic interpolation.

    python examples/generalization/memorization_sr.py --out results/memorization/sr
    python examples/generalization/memorization_sr.py --out /tmp/mem-sr --quick      # seconds

The recipe of the study's cpu preset (landprobe.recipes, docs/reproduce.md): width 0.125,
4 recursions, the study's loss with its literal scaling (RecursiveSupervisionLoss, sums over
pixels / 2N) at a fixed alpha = 0.5, no penalty, SGD lr 0.01 momentum 0.9, gradient norm
clipped at 1.0; here on a fixed random subset of the 9,362 T91 x2 patches in batches of 32,
bf16 autocast for the steps on CPUs with native bf16. The threshold is `--factor` times the
training loss of the bicubic input itself (the model replaced by the identity). Test error:
PSNR on Set5 x2 (whole images, Y, 2 pixels shaved; bicubic 33.66 dB).

Writes OUT/memorization.json (a MemorizationResult with the command, versions, CPU model and
date under settings["run"]), OUT/memorization.png and OUT/table.md.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import landprobe as lp
from landprobe.common.hardware import cpu_has_native_bf16, cpu_model
from landprobe.generalization.memorization import MemorizationOptions, memorization
from landprobe.recipes import PRESETS

ROOT = Path(__file__).resolve().parents[2]




def provenance(argv: list[str]) -> dict:
    return {"command": " ".join(shlex.quote(a) for a in ["python", sys.argv[0], *argv]), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def shown(path: str) -> str:
    """``path`` relative to the repository when inside it (for the JSON record)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def warship(seed: int) -> torch.nn.Module:
    return lp.models.WarshipXZNetBeta(width=PRESETS["cpu"]["width"], recursions=4)


def set5_psnr(out: lp.models.SROutput, y: torch.Tensor) -> torch.Tensor:
    """Mean PSNR (dB, Y in [0, 255], 2 pixels shaved) of the batch's final images."""
    return lp.metrics.psnr(y, out.final, shave=2).mean()


def patch_subset(root: Path, n: int, seed: int = 0) -> TensorDataset:
    """``n`` T91 x2 patches (41x41, stride 21) drawn without replacement by a seeded permutation."""
    patches = lp.data.T91Patches(root, scale=2)
    idx = torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed))[:n]
    return TensorDataset(patches.inputs[idx], patches.targets[idx])


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="memorization-sr")
    ap.add_argument("--data", default=str(ROOT / "data" / "T91"))
    ap.add_argument("--val", default=str(ROOT / "data" / "Set5"))
    ap.add_argument("--patches", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--record-every", type=int, default=8)
    ap.add_argument("--factor", type=float, default=1.25, help="threshold = factor x the bicubic training loss")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the embedded sample, 16 patches, 8 steps: a smoke run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.data, args.val = str(lp.data.sample_dir("train")), str(lp.data.sample_dir("val"))
        args.patches, args.batch_size, args.max_steps, args.record_every = 16, 8, 8, 4
    train = patch_subset(Path(args.data), args.patches)
    test = lp.data.SREvalSet(args.val, 2)
    loss_fn = lp.losses.RecursiveSupervisionLoss(alpha=0.5)
    x, y = train.tensors
    bicubic_loss = float(loss_fn(lp.models.SROutput(x, [x] * 4), y))
    amp = args.amp == "bf16" or (args.amp == "auto" and bool(cpu_has_native_bf16()))
    options = MemorizationOptions(
        threshold=args.factor * bicubic_loss, max_steps=args.max_steps, batch_size=args.batch_size,
        record_every=args.record_every, eval_batch_size=1, clip_norm=1.0,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9), dtype=torch.bfloat16 if amp else None)
    start = time.perf_counter()
    result = memorization(warship, train, test, loss_fn, ["shuffled_targets"], error_fn=set5_psnr,
                          error_name="Set5 x2 PSNR (dB)", seeds=args.seeds, options=options)
    result.settings["run"] = {
        **provenance(argv), "seconds": time.perf_counter() - start,
        "data": f"{args.patches} x2 patches of {shown(args.data)} (seeded subset), "
                f"test {shown(args.val)} x2 whole images",
        "bicubic_training_loss": bicubic_loss, "threshold_factor": args.factor,
        "bicubic_test_psnr": test.bicubic_psnr(), "amp": "bf16" if amp else "off"}
    result.settings["reference"] = {"value": result.settings["run"]["bicubic_test_psnr"], "label": "bicubic"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "memorization.json")
    result.plot().savefig(out / "memorization.png", dpi=120)
    (out / "table.md").write_text(result.markdown() + "\n")
    print(f"bicubic training loss {bicubic_loss:.4g}, threshold {options.threshold:.4g}; "
          f"Set5 bicubic {result.settings['run']['bicubic_test_psnr']:.2f} dB")
    print(result.markdown())
    print(f"{time.perf_counter() - start:.0f} s; wrote {out}/memorization.json, memorization.png, table.md")
    return result


if __name__ == "__main__":
    main()

"""The super-resolution study at a tiny scale, then the landscape between two settings' solutions.

    python examples/sr_study.py --out sr-study-out [--quick] [--settings all-l2 all-l1]

Trains the study's WARSHIP-XZNet beta (``landprobe.recipes.reproduce``, the same recipe as
``landprobe reproduce``) under two penalty settings from the same initialisation, on the
embedded sample (``landprobe.data.sample_dir``: a few training patches at x2 and two
validation crops), narrow and for a few epochs. Then it loads both settings' checkpoints and
evaluates the recipe loss (``landprobe.losses.RecursiveSupervisionLoss``, alpha 0.5) on the
training patches along the segment between the two solutions (``probe.interpolate``).

Writes to the output folder: ``runs/<setting>/`` (each run's history, checkpoint and
``final.json``, as ``landprobe reproduce`` does), ``curve.json`` and ``summary.json`` (and
``curve.png`` with matplotlib). ``--quick`` runs in under a minute on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import landprobe as lp


def train_settings(settings: list[str], out: Path, quick: bool) -> dict[str, dict]:
    """``reproduce`` each setting on the embedded sample; its ``final.json`` content per setting."""
    small = dict(epochs=8, width=0.05, batch_size=8) if quick else dict(epochs=30, width=0.125, batch_size=16)
    results = {}
    for setting in settings:
        results[setting] = lp.recipes.reproduce(
            setting, preset="cpu", data=lp.data.sample_dir("train"), val=lp.data.sample_dir("val"),
            out=out / "runs", seed=0, progress=False, patches_per_epoch=None, val_crop=None, **small)
    return results


def solution(out: Path, setting: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The trained weights and the spec from ``runs/<setting>/checkpoint.pt``."""
    ckpt = torch.load(out / "runs" / setting / "checkpoint.pt", map_location="cpu", weights_only=True)
    return ckpt["model"], ckpt["spec"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="sr-study-out", help="output folder (created; runs/ must not exist yet)")
    ap.add_argument("--quick", action="store_true", help="a narrower model, 8 epochs, fewer points (under 60 s)")
    ap.add_argument("--settings", nargs=2, default=["all-l2", "all-l1"], choices=lp.recipes.SETTINGS,
                    help="the two penalty settings to train and compare")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    results = train_settings(args.settings, out, args.quick)

    (state_a, spec), (state_b, _) = solution(out, args.settings[0]), solution(out, args.settings[1])
    model = lp.models.WarshipXZNetBeta(width=spec["width"], recursions=spec["recursions"])
    patches = lp.data.T91Patches(lp.data.sample_dir("train"), scale=spec["scale"])
    data = [(patches.inputs[i:i + 25], patches.targets[i:i + 25]) for i in range(0, len(patches), 25)]
    probe = lp.LandscapeProbe(model, lp.losses.RecursiveSupervisionLoss(alpha=0.5), data, progress=False)
    curve = probe.interpolate(state_a, state_b, points=7 if args.quick else 21)
    curve.save(out / "curve.json")

    summary = {"settings": args.settings, "width": spec["width"], "epochs": spec["epochs"],
               "runs": {s: {"steps": r["steps"], "psnr": r["psnr"], "bicubic_psnr": r["bicubic_psnr"]}
                        for s, r in results.items()},
               "curve": {"loss_a": curve.loss_a, "loss_b": curve.loss_b, "barrier": curve.barrier,
                         "argmax_alpha": curve.argmax_alpha}}
    try:
        ax = curve.plot()
        ax.set_xlabel(f"alpha ({args.settings[0]} -> {args.settings[1]})")
        ax.figure.savefig(out / "curve.png", dpi=110, bbox_inches="tight")
    except ImportError:
        print("matplotlib not installed: no PNG (pip install 'landprobe[plot]')")
    summary["seconds"] = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for s, r in summary["runs"].items():
        print(f"{s}: {r['steps']} steps, validation PSNR {r['psnr']:.3f} dB (bicubic {r['bicubic_psnr']:.3f} dB)")
    print(f"curve {args.settings[0]} -> {args.settings[1]}: loss {curve.loss_a:.5g} -> {curve.loss_b:.5g}, "
          f"barrier {curve.barrier:.4g} at alpha {curve.argmax_alpha:.2f}")
    print(f"wrote {out} in {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()

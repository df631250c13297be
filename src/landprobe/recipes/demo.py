"""``demo``: the library's main job in a minute, on the embedded sample, with no paths."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from landprobe.common.io import save_json
from landprobe.recipes._train import RecipeLoss, Trainer, TrainSpec, build_model

__all__ = ["demo"]

_DEMO_SPEC = dict(width=0.125, batch_size=16, patches_per_epoch=None, lr=0.01, clip_norm=1.0, alpha=0.5)


def demo(out: str | os.PathLike = "landprobe-demo", *, settings: Sequence[str] = ("all-l2", "all-l1"),
         steps: int = 60, points: int = 11, extend: float = 0.5, width: float = 0.125, seed: int = 0,
         amp: str = "off", threads: int | None = None,
         progress: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Train a tiny WARSHIP under two penalty settings from one init, and probe the segment between.

    On the embedded sample (:func:`landprobe.data.sample_dir`: 49 training patches at x2, two
    validation crops), the recipe's training loop (:func:`landprobe.recipes.reproduce`'s loss,
    penalty, clipped SGD) runs ``steps`` steps of batch 16 for each setting, starting from the
    same initialisation (``seed``). Then :meth:`landprobe.LandscapeProbe.interpolate` measures
    the recipe loss (without penalty) on the training patches along the straight line between
    the two solutions. Prints a table (setting, validation PSNR, bicubic PSNR, penalty; curve:
    loss at a and b, barrier, argmax α) and writes ``out/demo.json`` (summary and curve) and
    ``out/demo.png`` (the curve). 45 s measured with one thread on a shared 2-core CPU.

    Args:
        out: Output folder (created).
        settings: Two of ``"all-l2"``, ``"mix"``, ``"all-l1"``.
        steps: Training steps per setting (>= 1).
        points: Points on the segment [0, 1] (>= 2).
        extend: Also evaluate past both ends by this fraction of the segment (same spacing),
            to show the basin around the two solutions.
        width: Width multiplier of the model (1.0: the paper's 945,318 parameters).
        seed: Seed of the shared initialisation and of the data order.
        amp: ``"off"`` or ``"bf16"`` for training; the probe evaluates in fp32.
        threads: Torch CPU threads for the demo (restored afterwards); None keeps the current
            setting. The CLI passes 1: on a shared 2-core machine the default two OpenMP threads
            took 168 s where one took 45 s.
        progress: Progress bars.
        verbose: Print the table.

    Returns:
        The summary dict written to ``demo.json`` (with the curve under ``"curve"``).

    Raises:
        ValueError: If ``settings`` is not two known settings, or ``steps``/``points``/``threads``
            is too small.

    Example:
        >>> import tempfile, landprobe as lp
        >>> from landprobe.recipes import demo
        >>> d = tempfile.mkdtemp()
        >>> res = demo(out=d, steps=2, points=3, extend=0.0, progress=False, verbose=False)
        >>> [r["setting"] for r in res["runs"]], len(res["curve"]["alphas"])
        (['all-l2', 'all-l1'], 3)
        >>> sorted(p.name for p in __import__("pathlib").Path(d).iterdir())
        ['demo.json', 'demo.png']
    """
    from landprobe.recipes.reproduce import SETTINGS

    settings = tuple(settings) if not isinstance(settings, str) else (settings,)
    if len(settings) != 2 or any(s not in SETTINGS for s in settings):
        raise ValueError(f"settings={settings!r}; expected two of {list(SETTINGS)}, e.g. ('all-l2', 'all-l1').")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}; expected an integer >= 1 (training steps per setting).")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points={points!r}; expected an integer >= 2 (both ends of the segment).")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r}; expected an integer >= 1 or None.")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _demo(out, settings, steps, points, extend, width, seed, amp, progress, verbose)
    finally:
        torch.set_num_threads(previous_threads)


def _demo(out, settings, steps, points, extend, width, seed, amp, progress, verbose) -> dict[str, Any]:
    from landprobe.data import SREvalSet, T91Patches, sample_dir
    from landprobe.probes import LandscapeProbe

    t_start = time.perf_counter()
    out = Path(out)
    patches = T91Patches(sample_dir("train"), scale=2)
    val_set = SREvalSet(sample_dir("val"), 2)
    val = [val_set[i] for i in range(len(val_set))]
    bicubic = val_set.bicubic_psnr()

    runs, states = [], []
    for s in settings:
        spec = TrainSpec(**{**_DEMO_SPEC, "width": width}, setting=s, epochs=10**6, max_steps=steps, amp=amp,
                         seed=seed)
        tr = Trainer(spec, patches.inputs, patches.targets, val=val, progress=progress)
        t0 = time.perf_counter()
        tr.run()
        v = tr.validate()
        with torch.no_grad():
            pen = float(tr.penalty())
        runs.append({"setting": s, "steps": tr.step, "psnr": v["psnr"], "bicubic_psnr": bicubic,
                     "penalty": pen, "penalty_kinds": tr.penalty.kinds, "seconds": time.perf_counter() - t0})
        states.append({k: t.detach().clone() for k, t in tr.model.state_dict().items()})

    model = build_model(width, 4, seed)
    loss = RecipeLoss(0.5, "sum_over_pixels", 1)
    data = [(patches.inputs[i:i + 25], patches.targets[i:i + 25]) for i in range(0, len(patches), 25)]
    probe = LandscapeProbe(model, loss, data, progress=progress)
    curve = probe.interpolate(states[0], states[1], steps=points, extend=extend)
    curve_path = out / "demo.json"
    summary = {
        "runs": runs, "bicubic_psnr": bicubic,
        "curve_summary": {"loss_a": curve.loss_a, "loss_b": curve.loss_b, "barrier": curve.barrier,
                          "argmax_alpha": curve.argmax_alpha, "a": settings[0], "b": settings[1]},
        "curve": curve.to_dict(),
        "settings": {"width": width, "steps": steps, "points": points, "extend": extend, "seed": seed, "amp": amp,
                     "batch_size": _DEMO_SPEC["batch_size"], "data": "embedded sample (train x2, val x2)",
                     "parameters": sum(p.numel() for p in model.parameters())},
    }
    from landprobe.common.io import atomic_write
    from landprobe.common.results import require_matplotlib

    out.mkdir(parents=True, exist_ok=True)
    written = [curve_path]
    try:
        plt = require_matplotlib()
    except ImportError as exc:  # the JSON is the result; the PNG needs the plot extra
        plt = None
        note = f"no PNG: {exc}"
    if plt is not None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        curve.plot(ax=ax, errorbars=False)
        ax.set_xlabel(f"alpha  ({settings[0]} -> {settings[1]})")
        ax.set_ylabel("recipe loss on sample patches")
        fig.tight_layout()
        atomic_write(out / "demo.png", lambda fh: fig.savefig(fh, format="png", dpi=110), binary=True)
        plt.close(fig)
        written.append(out / "demo.png")
    summary["seconds"] = time.perf_counter() - t_start
    save_json(curve_path, summary)
    if verbose:
        print(_table(summary))
        if plt is None:
            print(note)
        print(f"wrote {' and '.join(map(str, written))} in {summary['seconds']:.1f} s")
    return summary


def _table(s: dict[str, Any]) -> str:
    lines = [f"{'setting':<8} {'steps':>5} {'val PSNR':>9} {'bicubic':>8} {'penalty':>10}"]
    for r in s["runs"]:
        lines.append(f"{r['setting']:<8} {r['steps']:>5} {r['psnr']:>9.3f} {r['bicubic_psnr']:>8.3f} {r['penalty']:>10.4g}")
    c = s["curve_summary"]
    lines.append(f"interpolation {c['a']} -> {c['b']}: loss(a) {c['loss_a']:.5g}, loss(b) {c['loss_b']:.5g}, "
                 f"barrier {c['barrier']:.4g} at alpha {c['argmax_alpha']:.3g}")
    return "\n".join(lines)

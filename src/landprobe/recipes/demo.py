"""``demo``: the library's main job in a minute, on the embedded sample, with no paths."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from landprobe.common.io import save_json
from landprobe.common.version import __version__
from landprobe.recipes._train import RecipeLoss, Trainer, TrainSpec, build_model

__all__ = ["demo"]

# batch 8, Adam at 1e-3, the recipe's fixed-alpha loss and clipping: measured best of SGD/Adam,
# batch 8/16 and lr 1e-3..4e-3 (with or without a cosine decay) at 50-80 steps on the sample
_DEMO_SPEC = dict(batch_size=8, patches_per_epoch=None, lr=1e-3, clip_norm=1.0, alpha=0.5)
_BATCH_EVAL = 25  # patches per batch of the probe's passes (49 patches: 25 + 24)


def demo(out: str | os.PathLike = "landprobe-demo", *, settings: Sequence[str] = ("all-l2", "all-l1"),
         steps: int = 50, points: int = 11, extend: float = 0.2, width: float = 0.125, seed: int = 0,
         amp: str = "off", threads: int | None = None,
         progress: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Train three tiny WARSHIPs on the sample, compare them with bicubic, and probe between them.

    On the embedded sample (:func:`landprobe.data.sample_dir`: 49 training patches at x2, two
    validation crops), the training loop of :func:`landprobe.recipes.reproduce` (its loss
    with a fixed α = 0.5, its penalty, gradient clipping at 1.0) trains three models for
    ``steps`` steps of batch 8 with Adam (lr 1e-3):

    - **A**: ``settings[0]`` from initialisation ``seed``;
    - **B**: ``settings[0]`` from initialisation ``seed + 1`` (the same data order as A);
    - **C**: ``settings[1]`` from A's initialisation and data order.

    Every model starts as bicubic: the last conv of Rnet (``rnet.weigh``) starts at zero, so
    the skip connection from the bicubic input is the whole output and training learns the
    residual (with the study's He init of that conv the untrained output is at 3.6 dB, and
    60 steps of the recipe's SGD at lr 0.01 end 2.3 dB below bicubic). Then :meth:`landprobe.LandscapeProbe.interpolate`
    measures the recipe loss (without penalty) on the training patches along two straight
    lines: A → B (two seeds of one setting: separate basins, with a barrier between them)
    and A → C (two penalty settings from one init). With the defaults, on the sample, all
    three models beat bicubic on the validation crops (by +1.53, +0.93 and +1.54 dB); the
    loss between the two seeds rises above the bicubic input's (barrier 0.35 over a chord
    at 1.9); the line between the two settings is flat (barrier 0.007).

    Prints a table (each model's validation PSNR with its margin over bicubic; each line's
    losses at the ends, barrier, its α and the distance between the ends) and writes
    ``out/demo.json`` (what was run, the summary and both curves) and ``out/demo.png`` (the
    curves against bicubic's loss, and the PSNRs against bicubic's). Deterministic for a
    ``seed``. ``landprobe demo`` with the defaults, one thread, on a shared 2-core CPU (Intel
    Xeon Processor): 44 s of wall time (38 s of CPU time) at load average 2, 78-82 s (41-42 s
    of CPU time) at load average 5.

    Args:
        out: Output folder (created).
        settings: Two of ``"all-l2"``, ``"mix"``, ``"all-l1"``: A and B's setting, then C's.
        steps: Training steps per model (>= 1). Adam's first steps overshoot (after 2 steps
            model A is at 18 dB, after 20 still 0.2 dB below bicubic, after 25 0.96 dB above);
            the table says when a model is below bicubic.
        points: Points on each segment [0, 1] (>= 2).
        extend: Also evaluate past both ends by this fraction of the segment (same spacing,
            >= 0), to show the walls of the basins.
        width: Width multiplier of the model (1.0: the paper's 945,318 parameters; 0.125:
            15,235).
        seed: Seed of A's and C's initialisation and of the data order; B's initialisation is
            ``seed + 1``.
        amp: ``"off"`` or ``"bf16"`` for training; validation and the probe run in fp32.
        threads: Torch CPU threads for the demo (restored afterwards); None keeps the current
            setting. The CLI passes 1: on a shared 2-core machine the default two OpenMP threads
            ran several times slower than one.
        progress: Progress bars.
        verbose: Print the table.

    Returns:
        The summary dict written to ``demo.json``: ``"runs"`` (A, B, C), ``"curves"`` (the
        lines A → B and A → C, each with its points under ``"curve"``), ``"bicubic_psnr"``,
        ``"bicubic_loss"``, ``"settings"`` (everything that defines the run) and ``"seconds"``.

    Raises:
        ValueError: If ``settings`` is not two known settings, ``steps``/``points``/``threads``
            is too small, ``extend`` is negative or ``amp`` unknown.

    Example:
        >>> import tempfile, landprobe as lp
        >>> from landprobe.recipes import demo
        >>> d = tempfile.mkdtemp()
        >>> res = demo(out=d, steps=2, points=3, extend=0.0, progress=False, verbose=False)
        >>> [(r["name"], r["setting"], r["seed"]) for r in res["runs"]]
        [('A', 'all-l2', 0), ('B', 'all-l2', 1), ('C', 'all-l1', 0)]
        >>> [c["name"] for c in res["curves"]], len(res["curves"][0]["curve"]["alphas"])
        (['A -> B', 'A -> C'], 3)
        >>> sorted(p.name for p in __import__("pathlib").Path(d).iterdir())
        ['demo.json', 'demo.png']
    """
    from landprobe.recipes.reproduce import SETTINGS

    settings = tuple(settings) if not isinstance(settings, str) else (settings,)
    if len(settings) != 2 or any(s not in SETTINGS for s in settings):
        raise ValueError(f"settings={settings!r}; expected two of {list(SETTINGS)}, e.g. ('all-l2', 'all-l1').")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}; expected an integer >= 1 (training steps per model).")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points={points!r}; expected an integer >= 2 (both ends of the segment).")
    if isinstance(extend, bool) or not isinstance(extend, (int, float)) or not math.isfinite(extend) or extend < 0:
        raise ValueError(f"extend={extend!r}; expected a finite fraction >= 0 of the segment, e.g. 0.2.")
    if amp not in ("off", "bf16"):
        raise ValueError(f"amp={amp!r}; expected 'off' or 'bf16'.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r}; expected an integer >= 1 or None.")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _demo(Path(out), settings, steps, points, float(extend), width, seed, amp, progress, verbose)
    finally:
        torch.set_num_threads(previous_threads)


def _train(name: str, setting: str, seed: int, data_seed: int, common: dict[str, Any], patches, val,
           progress: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train one model from initialisation ``seed`` (residual conv at zero) on data order
    ``data_seed``; return its row of the table and its final state."""
    model = build_model(common["width"], 4, seed)
    with torch.no_grad():  # the model starts as its bicubic input: training learns the residual
        model.rnet.weigh.weight.zero_()
        model.rnet.weigh.bias.zero_()
    spec = TrainSpec(**common, setting=setting, epochs=10**6, seed=data_seed)
    tr = Trainer(spec, patches.inputs, patches.targets, val=None, progress=progress, model=model,
                 optimizer=lambda ps: torch.optim.Adam(ps, lr=spec.lr))
    t0 = time.perf_counter()
    tr.run()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pen = float(tr.penalty())
    row = {"name": name, "setting": setting, "seed": seed, "data_seed": data_seed, "steps": tr.step,
           "psnr": tr.validate(val)["psnr"], "penalty": pen, "penalty_kinds": tr.penalty.kinds,
           "train_loss_last_epoch": tr.history[-1]["loss_final"] if tr.history else None, "seconds": seconds}
    return row, {k: t.detach().clone() for k, t in tr.model.state_dict().items()}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Euclidean distance between two states (floating tensors)."""
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a if a[k].is_floating_point()))


def _demo(out: Path, settings, steps, points, extend, width, seed, amp, progress, verbose) -> dict[str, Any]:
    from landprobe.data import SREvalSet, T91Patches, sample_dir
    from landprobe.models import SROutput
    from landprobe.probes import LandscapeProbe

    t_start = time.perf_counter()
    patches = T91Patches(sample_dir("train"), scale=2)
    val_set = SREvalSet(sample_dir("val"), 2)
    val = [val_set[i] for i in range(len(val_set))]
    bicubic = val_set.bicubic_psnr()
    common = {**_DEMO_SPEC, "width": width, "max_steps": steps, "amp": amp}
    runs, states = [], []
    for name, setting, init_seed in (("A", settings[0], seed), ("B", settings[0], seed + 1), ("C", settings[1], seed)):
        row, state = _train(name, setting, init_seed, seed, common, patches, val, progress)
        row.update(bicubic_psnr=bicubic, gain_db=row["psnr"] - bicubic)
        runs.append(row)
        states.append(state)

    loss = RecipeLoss(_DEMO_SPEC["alpha"], "sum_over_pixels", 1)
    x, y = patches.inputs, patches.targets
    data = [(x[i:i + _BATCH_EVAL], y[i:i + _BATCH_EVAL]) for i in range(0, len(x), _BATCH_EVAL)]
    with torch.no_grad():  # the loss of the bicubic input itself (every recursion's output = x)
        bicubic_loss = sum(float(loss(SROutput(xb, [xb] * 4), yb)) * len(xb) for xb, yb in data) / len(x)
    probe = LandscapeProbe(build_model(width, 4, seed), loss, data, progress=progress)
    curves = []
    lines = (((0, 1), f"two seeds of {settings[0]}"), ((0, 2), f"{settings[0]} -> {settings[1]}, one init"))
    for (i, j), what in lines:
        c = probe.interpolate(states[i], states[j], points=points, extend=extend)
        curves.append({"name": f"{runs[i]['name']} -> {runs[j]['name']}", "what": what, "loss_a": c.loss_a,
                       "loss_b": c.loss_b, "barrier": c.barrier, "argmax_alpha": c.argmax_alpha,
                       "peak_loss": float(c.losses[(c.alphas >= 0) & (c.alphas <= 1)].max()),
                       "distance": _distance(states[i], states[j]), "curve": c.to_dict()})
    summary = {
        "runs": runs, "curves": curves, "bicubic_psnr": bicubic, "bicubic_loss": bicubic_loss,
        "settings": {**{k: v for k, v in common.items() if k != "max_steps"}, "settings": list(settings),
                     "steps": steps, "points": points, "extend": extend,
                     "seed": seed, "optimizer": "adam", "recursions": 4, "init": "study init, rnet.weigh zero",
                     "loss": "recipe loss (alpha 0.5, sum over pixels), no penalty, on the training patches",
                     "penalty_weight": TrainSpec.penalty_weight, "threads": torch.get_num_threads(),
                     "data": "embedded sample (49 train patches x2, 2 val crops x2)",
                     "parameters": sum(p.numel() for p in build_model(width, 4, seed).parameters()),
                     "landprobe": __version__},
    }
    written = _write(out, summary)
    summary["seconds"] = time.perf_counter() - t_start
    save_json(out / "demo.json", summary)
    if verbose:
        print(_table(summary))
        print(f"wrote {' and '.join(map(str, written))} in {summary['seconds']:.1f} s")
    return summary


def _verdict(gain: float) -> str:
    """``"beats bicubic by +0.40 dB"`` or ``"below bicubic by -0.40 dB"``."""
    return f"beats bicubic by {gain:+.2f} dB" if gain > 0 else f"below bicubic by {gain:+.2f} dB"


def _write(out: Path, summary: dict[str, Any]) -> list[Path]:
    """Write ``demo.png`` (when matplotlib is installed); return the files that will exist."""
    from landprobe.common.io import atomic_write
    from landprobe.common.results import require_matplotlib

    out.mkdir(parents=True, exist_ok=True)
    try:
        plt = require_matplotlib()
    except ImportError as exc:  # the JSON is the result; the PNG needs the plot extra
        summary["png"] = f"no PNG: {exc}"
        return [out / "demo.json"]
    fig = _figure(plt, summary)
    atomic_write(out / "demo.png", lambda fh: fig.savefig(fh, format="png", dpi=110), binary=True)
    plt.close(fig)
    summary["png"] = "demo.png"
    return [out / "demo.json", out / "demo.png"]


def _figure(plt, s: dict[str, Any]):
    """Left: the loss along A -> B and A -> C against bicubic's loss; right: PSNR against bicubic."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    for c, color in zip(s["curves"], ("tab:red", "tab:blue")):
        alphas, losses = c["curve"]["alphas"], c["curve"]["losses"]
        ax.plot(alphas, losses, "o-", ms=3, color=color,
                label=f"{c['name']} ({c['what']}): barrier {c['barrier']:.3g}, distance {c['distance']:.3g}")
    ax.axhline(s["bicubic_loss"], color="0.3", ls="--", lw=1, label=f"bicubic input: {s['bicubic_loss']:.4g}")
    ax.axvspan(0, 1, color="0.93", zorder=0)
    lo = min(min(c["loss_a"], c["loss_b"], s["bicubic_loss"]) for c in s["curves"])
    hi = max(max(c["peak_loss"], s["bicubic_loss"]) for c in s["curves"])
    span = hi - lo if hi > lo else 1.0  # the ends, bicubic and the peaks; the walls past the ends may leave
    ax.set_ylim(lo - 0.15 * span, hi + 0.6 * span)
    ax.set_xlabel("alpha (0: A, 1: B or C)")
    ax.set_ylabel("recipe loss on the 49 training patches")
    ax.set_title("loss along straight lines between trained models")
    ax.legend(frameon=False, fontsize=8, loc="upper center")
    names = [f"{r['name']}: {r['setting']}, seed {r['seed']}" for r in s["runs"]]
    psnrs = [r["psnr"] for r in s["runs"]]
    bx.barh(names, psnrs, color=["tab:green" if r["gain_db"] > 0 else "tab:gray" for r in s["runs"]])
    bx.axvline(s["bicubic_psnr"], color="0.3", ls="--", lw=1)
    for k, r in enumerate(s["runs"]):
        bx.text(r["psnr"], k, f" {r['psnr']:.2f} dB ({r['gain_db']:+.2f})", va="center", fontsize=8)
    bx.set_xlim(min(psnrs + [s["bicubic_psnr"]]) - 1.0, max(psnrs + [s["bicubic_psnr"]]) + 1.2)
    bx.invert_yaxis()
    bx.set_xlabel("validation PSNR (dB, Y, 2 crops at x2)")
    bx.set_title(f"{s['settings']['steps']} steps each; dashed: bicubic input, {s['bicubic_psnr']:.2f} dB")
    fig.suptitle(f"landprobe demo: WARSHIP-XZNet beta, width {s['settings']['width']:g} "
                 f"({s['settings']['parameters']:,} parameters), embedded sample", fontsize=10)
    fig.tight_layout()
    return fig


def _table(s: dict[str, Any]) -> str:
    """The printed table: the models against bicubic, then the two lines between them."""
    versus = f"vs bicubic ({s['bicubic_psnr']:.2f} dB)"
    lines = [f"{'model':<5} {'setting':<7} {'seed':>4} {'steps':>5} {'val PSNR':>8}  {versus:<27} {'penalty':>9}"]
    for r in s["runs"]:
        lines.append(f"{r['name']:<5} {r['setting']:<7} {r['seed']:>4} {r['steps']:>5} {r['psnr']:>8.2f}  "
                     f"{_verdict(r['gain_db']):<27} {r['penalty']:>9.4g}")
    if any(r["gain_db"] <= 0 for r in s["runs"]):
        lines.append(f"  (below bicubic: {s['settings']['steps']} steps are too few; Adam's first steps overshoot "
                     f"and a model needs 20-30 to get back to bicubic; the default 50 beat it)")
    lines.append(f"{'line':<7} {'between':<30} {'loss(a)':>8} {'loss(b)':>8} {'barrier':>8} {'at alpha':>8} "
                 f"{'distance':>8}")
    for c in s["curves"]:
        lines.append(f"{c['name']:<7} {c['what']:<30} {c['loss_a']:>8.4g} {c['loss_b']:>8.4g} {c['barrier']:>8.3g} "
                     f"{c['argmax_alpha']:>8.3g} {c['distance']:>8.3g}")
    lines.append(f"bicubic input's loss on the training patches: {s['bicubic_loss']:.4g}")
    for c in s["curves"]:
        above = c["peak_loss"] > s["bicubic_loss"]
        lines.append(f"  {c['name']}: highest loss between the ends {c['peak_loss']:.4g}, "
                     f"{'above' if above else 'below'} bicubic's loss")
    return "\n".join(lines)

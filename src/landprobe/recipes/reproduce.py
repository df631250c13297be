"""``reproduce``: Xu & Zhang's three penalty settings trained as the study describes, and read off.

See ``docs/reproduce.md`` for the choices the paper leaves open (loss scaling, clipping, the
step count) and the measured runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from landprobe.common.io import load_json, load_torch, save_json
from landprobe.common.tempfiles import remove_stale_temps
from landprobe.recipes._train import SUBNETS, Trainer, TrainSpec

__all__ = ["reproduce", "summarize", "summarize_seeds", "seeds_figure", "paired", "PRESETS", "SETTINGS"]

#: The study's three settings (Table II): kinds on (Enet, Inet, Rnet).
SETTINGS = ("all-l2", "mix", "all-l1")

#: Presets: ``paper`` is the study at full size; ``cpu`` the same code, narrower and with a
#: fixed random subset of patches per epoch, sized for a 2-core CPU (see docs/reproduce.md).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"width": 1.0, "patches_per_epoch": None},
    "cpu": {"width": 0.125, "patches_per_epoch": 8 * 64, "val_crop": 96},
    # twice the cpu width (60,139 parameters), every patch every epoch, 15 epochs (2,195 steps):
    # about an hour per setting on one core with native bf16
    "cpu-large": {"width": 0.25, "patches_per_epoch": None, "val_crop": 96, "epochs": 15},
}

_AMP = ("off", "bf16")


def _repo_data(name: str) -> Path | None:
    """``data/<name>`` in the working directory or in the source checkout, if either exists."""
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents[2:4]):
        p = base / "data" / name
        if p.is_dir():
            return p
    return None


def _resolve_dir(value, default_name: str, sample_subset: str, what: str) -> tuple[Path, str]:
    from landprobe.data import sample_dir

    if value is not None:
        p = Path(value)
        if not p.is_dir():
            raise ValueError(f"{what}={str(value)!r}: no such folder ({p.resolve()}). Point it at a folder "
                             f"of images, or leave it out to use data/{default_name} or the embedded sample.")
        return p, str(p)
    p = _repo_data(default_name)
    if p is not None:
        return p, str(p)
    return sample_dir(sample_subset), f"embedded sample ({sample_subset})"


def _check_int(name, value, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an integer >= {minimum}"
                         + (" or None" if allow_none else "") + ".")
    return int(value)


def _device(device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local)
    return torch.device("cpu")


def _init_distributed(device: torch.device) -> bool:
    """Start the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    d = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and d.is_available() and not d.is_initialized():
        d.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return True
    return False


def reproduce(setting: str, preset: str = "cpu", epochs: int | None = None, max_steps: int | None = None,
              data=None, val=None, out: str | os.PathLike = "runs", resume: bool = False,
              amp: str = "off", seed: int = 0, device=None, monitor: bool | dict = False,
              progress: bool = True, *, callback: Callable | None = None,
              **overrides: Any) -> dict[str, Any]:
    """Train the study's WARSHIP-XZNet β under one or all three penalty settings.

    The recipe (Xu & Zhang, as DRCN; choices the paper leaves open are marked *ours*):
    T91 at x2, 41x41 patches at stride 21 (9,362 patches), mini-batch 64, SGD from lr 0.01,
    momentum 0.9, weight decay 0 (the penalty is explicit: ``SubnetNormPenalty.preset``,
    λ = 2e-4, computed in fp32), the loss ``(1 − α)·L1 + α·L2`` of
    :class:`~landprobe.losses.RecursiveSupervisionLoss` with the study's literal scaling (sums
    over pixels divided by 2N and 2RN) and α following DRCN's decay
    (:class:`~landprobe.losses.AlphaSchedule`, 1 → 0 linearly over the epochs; *ours*: the
    study gives no schedule), global gradient-norm clipping at 1.0 (*ours*: without it SGD
    diverges at this scaling; DRCN clips too), ``ReduceLROnPlateau(mode="min", factor=0.1,
    patience=5)`` stepped each epoch on the validation MSE (Set5 Y at x2), 45 epochs. Data
    order: a continuous stream of seeded permutations cut into full batches, so epoch ``e``
    ends at step ``ceil(e * P / 64)`` (6,583 steps for 45 epochs of the 9,362 patches; the
    paper's 6,601 is not reachable with batches of 64 from 9,362 patches: ceil gives
    147 x 45 = 6,615, floor 146 x 45 = 6,570).

    Presets: ``"paper"``: full width (945,555 parameters; the paper states 945,318), all
    patches every epoch, validation on the whole images; ``"cpu"``: the same code at width
    0.125 (15,235 parameters), a fresh seeded random subset of 512 patches (8 steps) per
    epoch, and per-epoch validation on the 96x96 centre crops of the validation images (the
    final model is also scored on the whole images, in ``final.json``), for a 2-core CPU:
    all three settings x 45 epochs in about 20 minutes with bf16 on a shared machine.

    Writes ``out/SETTING/``: ``history.jsonl`` (one record per epoch: epoch, step, lr, psnr,
    val_mse, loss_final, loss_intermediate, penalty, norms, sparsity, seconds),
    ``checkpoint.pt`` (every epoch and every ``checkpoint_every`` steps, atomic, loadable with
    ``torch.load(..., weights_only=True)``), ``final.json``; with ``monitor=True`` also a
    parameter snapshot per epoch in ``snapshots/`` (for ``TrajectoryRecorder.from_directory``).
    For ``setting="all"`` also ``out/summary.json`` and figures (:func:`summarize`).

    Args:
        setting: ``"all-l2"``, ``"mix"``, ``"all-l1"`` or ``"all"`` (the three in turn).
        preset: ``"paper"``, ``"cpu"`` or ``"cpu-large"`` (:data:`PRESETS`).
        epochs: Epochs; ``None``: the preset's (45 as in the study; ``cpu-large``: 15).
        max_steps: Stop after this many optimizer steps (a checkpoint is written, and
            ``final.json`` holds the validation PSNR there); None runs all epochs.
        data: Folder of training images; default ``data/T91`` of the checkout (or of the
            working directory), else the embedded sample.
        val: Folder of validation images; default ``data/Set5``, else the embedded sample.
        out: Output folder.
        resume: Continue from ``out/SETTING/checkpoint.pt``. On CPU with the same seed the
            result equals an uninterrupted run bitwise.
        amp: ``"off"`` (fp32) or ``"bf16"`` (autocast around forward and loss; the penalty and
            validation stay fp32).
        seed: Seeds the initialisation and, separately, the data order.
        device: Torch device; default CUDA if available, else CPU.
        monitor: After each epoch, save a parameter snapshot (``snapshots/``, for
            ``TrajectoryRecorder.from_directory``) and record a
            :class:`~landprobe.monitor.LandscapeMonitor` entry (``monitor/monitor.json``: loss,
            Hessian top eigenvalue and trace per subnet, capacity, the barrier to the previous
            epoch) on 256 fixed training patches. ``True`` or a dict of LandscapeMonitor
            options (e.g. ``{"hessian": False}``).
        progress: tqdm progress bar with ETA.
        callback: ``callback(trainer)`` after each optimizer step (logging, tests).
        **overrides: Any :class:`~landprobe.recipes._train.TrainSpec` field (``width``,
            ``patches_per_epoch``, ``batch_size``, ``clip_norm``, ``loss_scaling``
            (``"sum_over_pixels"`` or ``"mean"``), ``alpha`` (a float fixes it),
            ``checkpoint_every``, ``val_crop``, ``lr``, ``plateau_patience``, ...).

    Returns:
        For one setting, ``final.json``'s content (spec, steps, PSNR, timing); for ``"all"``,
        the summary (see :func:`summarize`).

    Raises:
        ValueError: On an unknown setting, preset or amp, ``epochs``/``max_steps`` below 1, a
            data/val folder that does not exist (names the path), an unknown override, or an
            existing checkpoint in ``out/SETTING`` without ``resume=True``.

    Example:
        >>> import tempfile, landprobe as lp
        >>> from landprobe.recipes import reproduce
        >>> d = tempfile.mkdtemp()
        >>> res = reproduce("mix", data=lp.data.sample_dir("train"),
        ...                 val=lp.data.sample_dir("val"), out=d, max_steps=2,
        ...                 width=0.05, batch_size=8, progress=False)
        >>> res["steps"], res["spec"]["setting"]          # stopped by max_steps, inside epoch 1
        (2, 'mix')
        >>> # bicubic x2 on the sample's two Set5 crops, and on their 96x96 centres (the cpu preset's)
        >>> round(res["bicubic_psnr_whole_images"], 2), round(res["bicubic_psnr"], 2)
        (35.16, 35.06)
        >>> res["psnr"] < res["bicubic_psnr"]   # two steps from He initialisation: far from trained
        True
    """
    if not isinstance(setting, str) or setting.lower() not in (*SETTINGS, "all"):
        raise ValueError(f"setting={setting!r}; expected one of {[*SETTINGS, 'all']} (Xu & Zhang, Table II).")
    setting = setting.lower()
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}; expected one of {list(PRESETS)}.")
    if amp not in _AMP:
        raise ValueError(f"amp={amp!r}; expected 'off' (fp32) or 'bf16' (autocast).")
    if epochs is None and preset in PRESETS:
        epochs = PRESETS[preset].get("epochs", 45)
    epochs = _check_int("epochs", epochs, 1)
    max_steps = _check_int("max_steps", max_steps, 1, allow_none=True)
    seed = _check_int("seed", seed, 0)
    fields = set(TrainSpec.__dataclass_fields__)
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown option(s) {bad}; reproduce accepts the TrainSpec fields {sorted(fields)}.")
    data_dir, data_desc = _resolve_dir(data, "T91", "train", "data")
    val_dir, val_desc = _resolve_dir(val, "Set5", "val", "val")
    out = Path(out)
    dev = _device(device)
    _init_distributed(dev)

    settings = SETTINGS if setting == "all" else (setting,)
    results = {}
    for s in settings:
        spec_kw = dict(PRESETS[preset])
        spec_kw.update(setting=s, epochs=epochs, max_steps=max_steps, amp=amp, seed=seed)
        spec_kw.update(overrides)
        spec = TrainSpec(**spec_kw)
        results[s] = _run_setting(spec, preset, data_dir, data_desc, val_dir, val_desc, out / s, resume,
                                  dev, monitor, progress, callback)
    if setting != "all":
        return results[setting]
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    if rank == 0:
        return summarize(out)
    return {}


def _run_setting(spec: TrainSpec, preset, data_dir, data_desc, val_dir, val_desc, out_dir: Path,
                 resume, device, monitor, progress, callback) -> dict[str, Any]:
    from landprobe.data import SREvalSet, T91Patches

    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists() and not resume:
        raise ValueError(f"{str(ckpt)!r} exists: pass resume=True (--resume) to continue that run, "
                         f"or choose another out folder.")
    patches = T91Patches(data_dir, scale=spec.scale, patch=41, stride=21)
    val_set = SREvalSet(val_dir, spec.scale)
    full_pairs = [val_set[i] for i in range(len(val_set))]
    val_pairs = full_pairs if spec.val_crop is None else [_centre_crop(x, y, spec.val_crop, spec.scale)
                                                           for x, y in full_pairs]

    trainer = Trainer(spec, patches.inputs, patches.targets, val=val_pairs, out_dir=out_dir,
                      device=device, progress=progress, callback=callback)
    if trainer.rank == 0:  # left by a run killed while writing its files
        for name in ("checkpoint.pt", "history.jsonl", "final.json"):
            remove_stale_temps(out_dir / name)
    if resume and ckpt.exists():
        trainer.load_state_dict(load_torch(ckpt, map_location="cpu"))
    if monitor:
        _install_monitor(trainer, out_dir, monitor if isinstance(monitor, dict) else {}, resume)
    start_step = trainer.step
    t0 = time.perf_counter()
    history = trainer.run()
    wall = time.perf_counter() - t0
    steps_now = trainer.step - start_step
    final = {
        "spec": spec.to_dict(), "preset": preset, "data": data_desc, "val": val_desc,
        "patches": trainer.n_patches, "patches_per_epoch": trainer.pool_size,
        "steps_per_epoch": trainer.pool_size / spec.batch_size,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "world_size": trainer.world, "device": str(device), "torch": torch.__version__,
        "epochs_completed": trainer.epoch, "steps": trainer.step,
        "wall_seconds_this_call": wall, "steps_this_call": steps_now,
        "seconds_per_step_this_call": (wall / steps_now) if steps_now else None,
        "bicubic_psnr": _bicubic_psnr(val_pairs, spec.scale),
        "val_crop": spec.val_crop,
    }
    last = history[-1] if history and history[-1]["step"] == trainer.step else None
    if last is None:  # stopped inside an epoch: measure where it stopped
        v = trainer.validate()
        final["psnr"], final["val_mse"] = v.get("psnr"), v.get("val_mse")
    else:
        final["psnr"], final["val_mse"] = last.get("psnr"), last.get("val_mse")
    if spec.val_crop is not None:  # the final model on the whole validation images, once
        whole = trainer.validate(full_pairs)
        final["psnr_whole_images"], final["val_mse_whole_images"] = whole.get("psnr"), whole.get("val_mse")
        final["bicubic_psnr_whole_images"] = val_set.bicubic_psnr()
    if trainer.rank == 0:
        save_json(out_dir / "final.json", final)
    return final


def _centre_crop(x: torch.Tensor, y: torch.Tensor, side: int, scale: int):
    """The centre ``side x side`` window (rounded down to a multiple of ``scale``, at most the
    image) of an evaluation pair; the bicubic input was made from the whole image."""
    h, w = y.shape[-2:]
    s = max(scale, (min(side, h, w) // scale) * scale)
    top, left = ((h - s) // 2 // scale) * scale, ((w - s) // 2 // scale) * scale
    return x[..., top:top + s, left:left + s], y[..., top:top + s, left:left + s]


def _bicubic_psnr(pairs, scale: int) -> float:
    from landprobe.metrics import psnr

    return float(np.mean([float(psnr(y, x, shave=scale)) for x, y in pairs]))


def _install_monitor(trainer: Trainer, out_dir: Path, options: dict[str, Any], resume: bool) -> None:
    """After every epoch: a parameter snapshot (``snapshots/``, the format of
    ``TrajectoryRecorder.from_directory``) and a :class:`landprobe.monitor.LandscapeMonitor`
    record (``monitor/monitor.json``) on a fixed set of 256 training patches, with the study's
    loss at α = 0.5 (fixed, so the records are comparable across epochs)."""
    from landprobe.common.io import atomic_torch_save
    from landprobe.monitor import LandscapeMonitor
    from landprobe.recipes._train import RecipeLoss

    snap_dir = out_dir / "snapshots"
    gen = torch.Generator().manual_seed(trainer.spec.seed + 2)
    idx = torch.randperm(trainer.n_patches, generator=gen)[:256]
    batches = [(trainer.inputs[idx[i:i + 64]], trainer.targets[idx[i:i + 64]]) for i in range(0, len(idx), 64)]
    opts = {"subnets": {n: n for n in SUBNETS}, "trace_matvecs": 8}
    opts.update(options)
    monitor = LandscapeMonitor(trainer.model, RecipeLoss(0.5, trainer.spec.loss_scaling, 1), batches,
                               directory=(out_dir / "monitor") if trainer.rank == 0 else None,
                               resume=resume and (out_dir / "monitor" / "monitor.json").is_file(), **opts)
    original = trainer.end_epoch

    def snapshot():
        if trainer.rank == 0:
            tensors = {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters()}
            atomic_torch_save({"step": trainer.step, "tensors": tensors}, snap_dir / f"snapshot_{trainer.step:09d}.pt")

    def end_epoch():
        rec = original()
        snapshot()
        monitor.epoch_end(trainer.epoch)
        return rec

    trainer.end_epoch = end_epoch  # type: ignore[method-assign]
    trainer.landscape_monitor = monitor  # type: ignore[attr-defined]
    if trainer.step == 0 and not (snap_dir / f"snapshot_{0:09d}.pt").exists():
        snapshot()


# ----------------------------------------------------------------------------- summary
def _read_history(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _stages(epochs: int) -> list[tuple[int, int]]:
    if epochs == 45:
        return [(1, 15), (16, 30), (31, 45)]
    parts = np.array_split(np.arange(1, epochs + 1), 3)
    return [(int(p[0]), int(p[-1])) for p in parts if len(p)]


def summarize(out: str | os.PathLike, *, figures: bool = True) -> dict[str, Any]:
    """Stage table, the study's two comparisons and figures from ``out/{all-l2,mix,all-l1}``.

    Reads each setting's ``history.jsonl``; the stages are epochs 1–15, 16–30 and 31–45 (for
    another number of epochs, three near-equal parts). The study's claims, judged here on the
    mean validation PSNR over stages 2 and 3:

    - Enet/Rnet, L1 beats L2: All-L1 (L1, L1, L1) above Mix (L2, L1, L2);
    - Inet, L2 beats L1: All-L2 (L2, L2, L2) above Mix.

    Each comparison reports both means, their difference, the number of epochs of stages 2–3
    where the claimed order holds, and ``supported`` (difference > 0): whatever was measured.
    Writes ``out/summary.json`` and, with ``figures``, ``psnr_stages.png`` (the study's
    Figures 2–5: one panel per stage and one for all epochs), ``norms.png`` and
    ``sparsity.png``.

    Args:
        out: The ``out`` folder of a ``reproduce(setting="all")`` run.
        figures: Also draw the PNG figures (needs matplotlib).

    Returns:
        The summary dict.

    Raises:
        ValueError: If a setting's ``history.jsonl`` is missing or empty (names the path).

    Example:
        >>> import json, tempfile, pathlib, landprobe as lp
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for s, p in {"all-l2": 31.0, "mix": 30.0, "all-l1": 29.0}.items():
        ...     (d / s).mkdir()
        ...     _ = (d / s / "history.jsonl").write_text(
        ...         "".join(json.dumps({"epoch": e, "psnr": p + e / 10}) + "\\n" for e in range(1, 4)))
        >>> from landprobe.recipes import summarize
        >>> summ = summarize(d, figures=False)
        >>> c = summ["comparisons"]
        >>> c["inet_l2_beats_l1"]["difference_db"], c["inet_l2_beats_l1"]["supported"]  # 31 vs 30
        (1.0, True)
        >>> c["enet_rnet_l1_beats_l2"]["supported"]                 # all-l1 is 1 dB below mix
        False
    """
    out = Path(out)
    hist = {}
    for s in SETTINGS:
        p = out / s / "history.jsonl"
        if not p.is_file():
            raise ValueError(f"summarize: {str(p)!r} is missing; run reproduce(setting={s!r}, out={str(out)!r}) first.")
        h = _read_history(p)
        if not h:
            raise ValueError(f"summarize: {str(p)!r} is empty (no completed epoch).")
        hist[s] = h
    epochs = min(len(h) for h in hist.values())
    stages = _stages(epochs)
    table = {}
    for s, h in hist.items():
        ps = np.array([r.get("psnr", np.nan) for r in h[:epochs]], dtype=float)
        row = {}
        for a, b in stages:
            seg = ps[a - 1:b]
            row[f"epochs {a}-{b}"] = {"mean": float(np.mean(seg)), "max": float(np.max(seg)), "last": float(seg[-1])}
        row["final"] = float(ps[-1])
        row["best"] = float(np.max(ps))
        table[s] = row
    late = (stages[1][0], stages[-1][1]) if len(stages) >= 2 else stages[0]

    def late_psnr(s):
        return np.array([r.get("psnr", np.nan) for r in hist[s][late[0] - 1:late[1]]], dtype=float)

    def compare(better, worse, claim, subnet):
        a, b = late_psnr(better), late_psnr(worse)
        diff = float(np.mean(a) - np.mean(b))
        return {
            "claim": claim, "subnets": subnet, "epochs": list(late),
            f"{better}_mean_db": float(np.mean(a)), f"{worse}_mean_db": float(np.mean(b)),
            "difference_db": round(diff, 6), "epochs_where_claim_holds": int(np.sum(a > b)),
            "epochs_compared": int(len(a)), "supported": bool(diff > 0),
        }

    comps = {
        "enet_rnet_l1_beats_l2": compare("all-l1", "mix", "L1 beats L2 for Enet/Rnet: All-L1 > Mix", ["enet", "rnet"]),
        "inet_l2_beats_l1": compare("all-l2", "mix", "L2 beats L1 for Inet: All-L2 > Mix", ["inet"]),
    }
    bicubic = None
    finals = {}
    for s in SETTINGS:
        f = out / s / "final.json"
        if f.is_file():
            finals[s] = load_json(f)
            bicubic = finals[s].get("bicubic_psnr", bicubic)
    summary = {
        "epochs": epochs, "stages": [list(st) for st in stages], "psnr_by_stage": table,
        "comparisons": comps, "bicubic_psnr": bicubic,
        "beats_bicubic": ({s: bool(table[s]["final"] > bicubic) for s in SETTINGS} if bicubic is not None else None),
        "runs": {s: {k: finals[s].get(k) for k in ("preset", "steps", "parameters", "wall_seconds_this_call",
                                                   "seconds_per_step_this_call", "data", "val", "val_crop",
                                                   "psnr_whole_images", "bicubic_psnr_whole_images")}
                 for s in finals},
    }
    whole = {s: f.get("psnr_whole_images") for s, f in finals.items()}
    bic_whole = next((f.get("bicubic_psnr_whole_images") for f in finals.values()), None)
    if bic_whole is not None and all(v is not None for v in whole.values()):
        summary["bicubic_psnr_whole_images"] = bic_whole
        summary["beats_bicubic_whole_images"] = {s: bool(v > bic_whole) for s, v in whole.items()}
    save_json(out / "summary.json", summary)
    if figures:
        _figures(out, hist, epochs, stages, bicubic)
    return summary


def paired(d: Sequence[float]) -> dict[str, Any]:
    """Mean, sd, standard error, 95% t-interval and two-sided one-sample t-test of differences.

    Example:
        >>> from landprobe.recipes.reproduce import paired
        >>> r = paired([1.0, 2.0, 3.0])
        >>> r["mean"], r["sd"], round(r["ci95"][0], 3), round(r["ci95"][1], 3)   # 2 ± 4.303/√3
        (2.0, 1.0, -0.484, 4.484)
        >>> round(r["p"], 4), r["favouring"], r["n"]
        (0.0742, 3, 3)
    """
    from scipy import stats

    x = np.asarray(d, dtype=float)
    n, mean = len(x), float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    se = sd / math.sqrt(n) if n > 1 else math.nan
    if n < 2:
        half, t, p = math.nan, math.nan, math.nan
    elif sd > 0:
        half = float(stats.t.ppf(0.975, n - 1)) * se
        t, p = (float(v) for v in stats.ttest_1samp(x, 0.0))
    else:                       # identical differences: certain if non-zero, nothing if zero
        half = 0.0
        t, p = (math.copysign(math.inf, mean), 0.0) if mean else (math.nan, 1.0)
    return {"values": x.tolist(), "n": n, "mean": mean, "sd": sd, "stderr": se,
            "ci95": [mean - half, mean + half], "ci95_width": 2 * half, "t": t, "p": p,
            "favouring": int(np.sum(x > 0))}


def summarize_seeds(outs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *,
                    figures: bool = True) -> dict[str, Any]:
    """The study's two comparisons over several seeds: per-seed differences, mean, spread, a t-test.

    Each folder in ``outs`` is the ``out`` of one ``reproduce(setting="all", seed=...)`` run
    (same preset); each is summarised with :func:`summarize` (which rewrites its
    ``summary.json``). For each comparison the per-seed difference d_i (mean validation PSNR
    over stages 2–3, e.g. All-L1 − Mix) is one observation; reported are the d_i, their mean,
    sample standard deviation and standard error, the 95% t-interval of the mean
    (``ci95_db``; mean ± t₀.₉₇₅,ₙ₋₁·s.e.) and its width, how many seeds favour the claim, and a
    two-sided one-sample t-test of mean(d) = 0 (``scipy.stats.ttest_1samp``; with 3 seeds it
    has 2 degrees of freedom, so only large, consistent differences reach p < 0.05).
    ``supported`` is ``mean > 0``, ``significant`` is ``p < 0.05`` with ``mean > 0``. The
    per-epoch PSNR of each setting is averaged over seeds (mean and standard deviation).

    Args:
        outs: Two or more run folders, one per seed.
        out: Where to write ``seeds_summary.json`` and, with ``figures``, ``psnr_seeds.png``
            (mean ± sd over seeds per setting); default the parent of the first folder.
        figures: Draw the figure (:func:`seeds_figure`; needs matplotlib).

    Returns:
        The summary dict.

    Raises:
        ValueError: With fewer than two folders, or if a folder lacks a setting's history.

    Example:
        >>> import json, tempfile, pathlib
        >>> from landprobe.recipes import summarize_seeds
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for seed, gap in enumerate([1.0, 2.0, 3.0]):       # All-L1 beats Mix by 1, 2, 3 dB
        ...     for s, p in {"all-l2": 30.0, "mix": 30.0, "all-l1": 30.0 + gap}.items():
        ...         (root / f"seed{seed}" / s).mkdir(parents=True)
        ...         _ = (root / f"seed{seed}" / s / "history.jsonl").write_text(
        ...             "".join(json.dumps({"epoch": e, "psnr": p}) + "\\n" for e in range(1, 4)))
        >>> res = summarize_seeds([root / f"seed{i}" for i in range(3)], figures=False)
        >>> c = res["comparisons"]["enet_rnet_l1_beats_l2"]
        >>> c["differences_db"], c["mean_db"], c["sd_db"], c["seeds_favouring_claim"]
        ([1.0, 2.0, 3.0], 2.0, 1.0, 3)
        >>> c["ci95_db"]                                  # 2 ± 4.303 · 1/√3
        [-0.484138, 4.484138]
        >>> round(c["t_test_p_two_sided"], 4)   # t = 2/(1/√3) = 3.46, 2 dof: 2(1 − F(t)), F(t) = ½ + t/(2√(2+t²))
        0.0742
        >>> c["supported"], c["significant"]                  # three seeds agree, yet p > 0.05
        (True, False)
        >>> res["comparisons"]["inet_l2_beats_l1"]["supported"]   # All-L2 ties Mix: no support
        False
    """

    outs = [Path(o) for o in outs]
    if len(outs) < 2:
        raise ValueError(f"summarize_seeds needs at least two run folders (one per seed); got {len(outs)}. "
                         f"For one run use summarize(out).")
    per = [summarize(o, figures=False) for o in outs]
    epochs = min(p["epochs"] for p in per)
    comps: dict[str, Any] = {}
    for key in per[0]["comparisons"]:
        d = np.array([p["comparisons"][key]["difference_db"] for p in per], dtype=float)
        r = paired(d)
        sd, mean, half, t, pval = r["sd"], r["mean"], r["ci95_width"] / 2, r["t"], r["p"]
        comps[key] = {
            "claim": per[0]["comparisons"][key]["claim"], "epochs": per[0]["comparisons"][key]["epochs"],
            "differences_db": [round(float(x), 6) for x in d], "mean_db": round(mean, 6), "sd_db": round(sd, 6),
            "stderr_db": round(sd / math.sqrt(len(d)), 6), "seeds": len(d),
            "ci95_db": [round(mean - half, 6), round(mean + half, 6)], "ci95_width_db": round(2 * half, 6),
            "seeds_favouring_claim": int(np.sum(d > 0)), "t_statistic": t, "t_test_p_two_sided": pval,
            "supported": bool(mean > 0), "significant": bool(mean > 0 and pval < 0.05),
        }
    curves = {}
    for s in SETTINGS:
        rows = np.array([[r.get("psnr", np.nan) for r in _read_history(o / s / "history.jsonl")[:epochs]]
                         for o in outs], dtype=float)
        curves[s] = {"mean": rows.mean(0).tolist(), "sd": rows.std(0, ddof=1).tolist()}
    stage_means = {s: {k: float(np.mean([p["psnr_by_stage"][s][k]["mean"] for p in per]))
                       for k in per[0]["psnr_by_stage"][s] if k.startswith("epochs")} for s in SETTINGS}
    finals = {s: [p["psnr_by_stage"][s]["final"] for p in per] for s in SETTINGS}
    result = {"runs": [str(o) for o in outs], "epochs": epochs, "comparisons": comps,
              "psnr_by_stage_mean_over_seeds": stage_means, "final_psnr_per_seed": finals,
              "bicubic_psnr": per[0].get("bicubic_psnr"), "psnr_per_epoch_over_seeds": curves}
    dest = Path(out) if out is not None else outs[0].parent
    save_json(dest / "seeds_summary.json", result)
    if figures:
        seeds_figure(dest)
    return result


_COLORS = {"all-l2": "tab:blue", "mix": "tab:green", "all-l1": "tab:red"}
_LABELS = {"all-l2": "All-L2", "mix": "Mix", "all-l1": "All-L1"}


def seeds_figure(out: str | os.PathLike) -> Path:
    """Draw ``out/psnr_seeds.png`` from ``out/seeds_summary.json`` alone: validation PSNR per
    epoch, mean ± 1 sd over seeds per setting, one panel per stage and one for all epochs
    (the study's Figures 2-5). Returns the file written.

    Raises:
        LoadError: If ``out/seeds_summary.json`` is missing or is not :func:`summarize_seeds`'s.

    Example:
        >>> import tempfile
        >>> from landprobe.recipes.reproduce import seeds_figure
        >>> seeds_figure(tempfile.mkdtemp())             # doctest: +ELLIPSIS
        Traceback (most recent call last):
        landprobe.common.io.LoadError: ...seeds_summary.json...
    """
    from landprobe.common.io import LoadError, load_json
    from landprobe.common.results import require_matplotlib

    out = Path(out)
    res = load_json(out / "seeds_summary.json")
    curves, epochs = res.get("psnr_per_epoch_over_seeds"), res.get("epochs")
    if not isinstance(curves, dict) or not isinstance(epochs, int):
        raise LoadError(f"{str(out / 'seeds_summary.json')!r} has no per-epoch PSNR over seeds; write it with "
                        f"landprobe summarize OUT OUT ...", out / "seeds_summary.json")
    plt = require_matplotlib()
    stages = [*_stages(epochs), (1, epochs)]
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.4), squeeze=False)
    for ax, (a, b) in zip(axes[0], stages):
        ep = np.arange(a, b + 1)
        for s in SETTINGS:
            m = np.asarray(curves[s]["mean"], dtype=float)[a - 1:b]
            sd = np.asarray(curves[s]["sd"], dtype=float)[a - 1:b]
            ax.plot(ep, m, "o-", ms=2.5, color=_COLORS[s], label=f"{_LABELS[s]}")
            ax.fill_between(ep, m - sd, m + sd, color=_COLORS[s], alpha=0.15, lw=0)
        if res.get("bicubic_psnr") is not None:
            ax.axhline(res["bicubic_psnr"], color="0.5", ls="--", lw=0.8, label="bicubic")
        ax.set_title(f"epochs {a}-{b}", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("validation PSNR (dB, Y)")
    fig.suptitle(f"mean ± 1 sd over {len(res.get('runs', []))} seeds", fontsize=9)
    axes[0][-1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "psnr_seeds.png", dpi=110)
    plt.close(fig)
    return out / "psnr_seeds.png"


def _figures(out: Path, hist, epochs, stages, bicubic) -> None:
    from landprobe.common.results import require_matplotlib

    plt = require_matplotlib()
    # PSNR per stage (Figures 2-5 of the study)
    fig, axes = plt.subplots(1, len(stages) + 1, figsize=(4 * (len(stages) + 1), 3.4))
    for ax, (a, b) in zip(axes, [*stages, (1, epochs)]):
        for s, h in hist.items():
            ep = [r["epoch"] for r in h[a - 1:b]]
            ax.plot(ep, [r.get("psnr", np.nan) for r in h[a - 1:b]], "o-", ms=2.5, color=_COLORS[s], label=_LABELS[s])
        if bicubic is not None:
            ax.axhline(bicubic, color="0.5", ls="--", lw=0.8, label="bicubic")
        ax.set_title(f"epochs {a}-{b}")
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("validation PSNR (dB, Y)")
    axes[-1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "psnr_stages.png", dpi=110)
    plt.close(fig)
    # norms per subnet
    fig, axes = plt.subplots(2, 3, figsize=(12, 6), sharex=True)
    for j, sub in enumerate(SUBNETS):
        for i, (key, label) in enumerate((("l1", "L1 norm Σ|θ|"), ("l2sq", "squared L2 Σθ²"))):
            ax = axes[i, j]
            for s, h in hist.items():
                ax.plot([r["epoch"] for r in h], [r.get("norms", {}).get(sub, {}).get(key, np.nan) for r in h],
                        color=_COLORS[s], label=_LABELS[s])
            ax.set_title(f"{sub}: {label}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "norms.png", dpi=110)
    plt.close(fig)
    # sparsity per subnet
    keys = (("frac_small", "fraction |θ| < 1e-3"), ("hoyer", "Hoyer sparsity of θ"),
            ("treves_rolls", "Treves-Rolls population sparseness"))
    fig, axes = plt.subplots(3, 3, figsize=(12, 8.5), sharex=True)
    for j, sub in enumerate(SUBNETS):
        for i, (key, label) in enumerate(keys):
            ax = axes[i, j]
            for s, h in hist.items():
                ax.plot([r["epoch"] for r in h],
                        [np.nan if (v := r.get("sparsity", {}).get(sub, {}).get(key)) is None else v for r in h],
                        color=_COLORS[s], label=_LABELS[s])
            ax.set_title(f"{sub}: {label}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sparsity.png", dpi=110)
    plt.close(fig)

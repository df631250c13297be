"""``study``: what the three norm settings do to the landscape of the empirical error.

:func:`study` takes the solutions of one or more ``reproduce --setting all`` runs (one per
seed) and measures their landscape with the library's own probes; :func:`study_figures`
draws the figures from the JSON it writes.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from landprobe.capacity import report as capacity_report
from landprobe.common.hardware import cpu_has_native_bf16, cpu_model
from landprobe.common.io import LoadError, load_json, load_torch, save_json, sha256
from landprobe.common.version import __version__
from landprobe.engine import Progress
from landprobe.probes import LandscapeProbe
from landprobe.recipes._train import SUBNETS, RecipeLoss, build_model
from landprobe.recipes.reproduce import SETTINGS, _resolve_dir, paired

__all__ = ["study", "study_figures", "summarize_runs", "scalar_measures", "paired", "PAIRS", "COMPARISONS",
           "CAPACITY_GROUPS"]

#: The pairwise curves, in the order they are reported.
PAIRS = (("all-l2", "mix"), ("mix", "all-l1"), ("all-l2", "all-l1"))
#: The study's two claims as paired differences between settings (better, worse).
COMPARISONS = {"all-l1_minus_mix": ("all-l1", "mix"), "all-l2_minus_mix": ("all-l2", "mix")}
_LABELS = {"all-l2": "All-L2", "mix": "Mix", "all-l1": "All-L1"}
_COLORS = {"all-l2": "tab:blue", "mix": "tab:green", "all-l1": "tab:red"}
#: The capacity groups measured by default.
CAPACITY_GROUPS = ("norms", "path_norm", "spectral_complexity", "weight_sparsity", "activation_sparsity", "sharpness")


def study(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, data: str | os.PathLike | None = None,
          patches: int | None = 1024, curvature_patches: int = 64, batch_size: int = 64, points: int = 21,
          plane_points: int = 0, top_k: int = 5, trace_matvecs: int = 30, subnets: bool = True,
          align: str | None = "weights", capacity: Sequence[str] | None = CAPACITY_GROUPS, seed: int = 0,
          figures: bool = True, progress: bool | None = None, command: str | None = None) -> dict[str, Any]:
    """Measure the landscape of the three settings' solutions of one or more reproduce runs.

    Each folder in ``runs`` is the ``out`` of ``reproduce(setting="all", ...)`` (one seed):
    ``all-l2/``, ``mix/`` and ``all-l1/`` each hold a ``checkpoint.pt``; or the ``out`` of an
    earlier ``study`` of one run with the same options, whose measures are reused (so seeds
    can be measured as their training ends and summarised together). The empirical error is
    the study's training loss without the penalty at the end of training (α = 0: the final
    reconstruction's ``(1/2N)·Σ‖ŷ − y‖²`` as the run scaled it,
    :class:`~landprobe.recipes._train.RecipeLoss`), over a seeded random subset of
    ``patches`` T91 patches at the run's scale (all of them with ``None``), in batches of
    ``batch_size``. For every run it measures, with :class:`landprobe.LandscapeProbe`:

    - the Euclidean distances between the solutions and from each to the run's initialisation;
    - the three pairwise curves (:data:`PAIRS`) on ``points`` points with their barrier over the
      chord, the standard error of the loss where the barrier is reached, and, with ``align``,
      the same curves after aligning the second model's hidden units to the first
      (:mod:`landprobe.symmetry`; the barrier modulo permutations);
    - with ``plane_points``, the plane through the three solutions (Garipov et al. 2018), a
      ``plane_points`` x ``plane_points`` grid;
    - per setting, and per subnet (``enet``, ``inet``, ``rnet``) with ``subnets``, the ``top_k``
      largest Hessian eigenvalues (Lanczos, 1e-3 relative) and the trace (Hutch++,
      ``trace_matvecs`` products, with its standard error) on the first ``curvature_patches``
      patches of the subset;
    - per setting the capacity report (:func:`landprobe.capacity.report`) of the ``capacity``
      groups for the model and each subnet, its data the curvature patches, the spectral
      complexity relative to the run's initialisation (rebuilt from its seed).

    With two or more runs, ``summary`` holds, for every scalar measure, its mean and standard
    deviation over runs per setting, and the study's two comparisons (:data:`COMPARISONS`) as
    paired differences per run with mean, standard deviation, standard error, the 95%
    t-interval and a two-sided one-sample t-test; with ``align``, the curve between the first
    two runs' solutions of each setting (two seeds), before and after alignment.

    Writes ``out/study.json`` (the options, the command, the machine, every run's inputs with
    the SHA-256 of its checkpoints, the measures and the summary) and, with ``figures``, the
    figures of :func:`study_figures`. Returns the JSON's dict.

    Args:
        runs: One or more reproduce output folders (seeds of one preset).
        out: Output folder (created).
        data: Folder of training images; default ``data/T91`` or the embedded sample, as
            :func:`~landprobe.recipes.reproduce` chooses.
        patches: Patches in the landscape's data (``None``: all). curvature_patches: Patches for
            the Hessian, the sharpness and the activation measures (the first of the subset).
        points: Points of each curve (α in [0, 1]). plane_points: Grid side of the plane (0: none).
        top_k: Hessian eigenvalues per scope (0: none). trace_matvecs: Products of each trace
            estimate (0: none). subnets: Curvature and capacity per subnet too.
        align: ``"weights"``, ``"activations"`` or ``None`` (no aligned curves).
        capacity: Capacity groups (:data:`landprobe.capacity.MEASURES`), or ``None``.
        seed: Seed of the patch subset, the plane and the trace's probes.
        figures: Draw the figures (needs matplotlib). progress: Progress bars (``None``: on a
            terminal). command: The command line to record (the CLI passes its own).

    Raises:
        ValueError: On no runs, a folder without a setting's checkpoint, runs of different
            models, or a bad option (named).

    Example:
        >>> import tempfile, landprobe as lp
        >>> from landprobe.recipes import reproduce, study
        >>> root = tempfile.mkdtemp()
        >>> _ = reproduce("all", data=lp.data.sample_dir("train"), val=lp.data.sample_dir("val"), out=root,
        ...               epochs=1, patches_per_epoch=8, batch_size=8, width=0.125, progress=False)
        >>> res = study([root], root + "/study", patches=16, curvature_patches=8, batch_size=8, points=3,
        ...             top_k=1, trace_matvecs=0, subnets=False, align=None, capacity=("norms",),
        ...             figures=False, progress=False)
        >>> sorted(res["runs"][0]["curves"])
        ['all-l2~all-l1', 'all-l2~mix', 'mix~all-l1']
        >>> len(res["runs"][0]["curves"]["all-l2~mix"]["losses"])
        3
    """
    opts = _check_options(runs, patches, curvature_patches, batch_size, points, plane_points, top_k,
                          trace_matvecs, align, capacity)
    out = Path(out)
    data_dir, data_desc = _resolve_dir(data, "T91", "train", "data")
    options = dict(data=data_desc, patches=patches, curvature_patches=curvature_patches, batch_size=batch_size,
                   points=points, plane_points=plane_points, top_k=top_k, trace_matvecs=trace_matvecs,
                   subnets=subnets, align=align, capacity=list(capacity or ()), seed=seed)
    t0 = time.perf_counter()
    folders = [Path(r) for r in opts["runs"]]
    measured = {f: _measured_before(f, options) for f in folders}
    wanted = folders[:2 if align and len(folders) >= 2 else 1] + [f for f in folders if measured[f] is None]
    loaded = {f: _load_run(Path(measured[f]["folder"]) if measured[f] else f) for f in wanted}
    _check_same_model([run["spec"] for run in loaded.values()] + [m["spec"] for m in measured.values() if m],
                      [str(f) for f in loaded] + [str(f) for f, m in measured.items() if m])
    batches, small = _patch_batches(data_dir, next(iter(loaded.values()))["spec"], patches, curvature_patches,
                                    batch_size, seed)
    per_run = []
    with Progress("study", len(folders), enabled=progress, unit="run") as bar:
        for f in folders:
            bar.set(run=f.name)
            per_run.append(measured[f] or _measure_run(loaded[f], batches, small, options, progress))
            bar.update()
    result: dict[str, Any] = {
        "what": "landscape of the empirical error of the three norm settings' solutions",
        "command": command or " ".join(sys.argv), "options": options, "machine": _machine(),
        "empirical_error": "RecipeLoss(alpha=0): the final reconstruction's loss as the run scaled it, no penalty",
        "patches_used": sum(len(b[0]) for b in batches), "curvature_patches_used": sum(len(b[0]) for b in small),
        "bicubic_loss": _bicubic_loss(batches, next(iter(loaded.values()))["spec"]),
        "runs": per_run,
    }
    if len(folders) >= 2:
        result["summary"] = summarize_runs(per_run)
        if align:
            result["across_seeds"] = _across_seeds([loaded[f] for f in folders[:2]], batches, options, progress)
    result["wall_seconds"] = time.perf_counter() - t0
    save_json(out / "study.json", result)
    if figures:
        study_figures(out)
    return result


# ----------------------------------------------------------------------------- inputs
def _check_options(runs, patches, curvature_patches, batch_size, points, plane_points, top_k, trace_matvecs,
                   align, capacity) -> dict[str, Any]:
    from landprobe.capacity import MEASURE_REGISTRY
    from landprobe.symmetry import ALIGN_METHODS

    if isinstance(runs, (str, os.PathLike)) or not len(runs):
        raise ValueError(f"runs={runs!r}: expected a list of one or more reproduce output folders.")
    for name, value, low in (("patches", patches, 1), ("curvature_patches", curvature_patches, 1),
                             ("batch_size", batch_size, 1), ("points", points, 3), ("plane_points", plane_points, 0),
                             ("top_k", top_k, 0), ("trace_matvecs", trace_matvecs, 0)):
        if name == "patches" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: expected an integer >= {low}.")
    if plane_points and plane_points < 3:
        raise ValueError(f"plane_points={plane_points}: expected 0 (no plane) or at least 3.")
    if trace_matvecs and trace_matvecs < 4:
        raise ValueError(f"trace_matvecs={trace_matvecs}: expected 0 (no trace) or at least 4 (Hutch++).")
    if align is not None and align not in ALIGN_METHODS:
        raise ValueError(f"align={align!r}: expected one of {ALIGN_METHODS} or None.")
    unknown = sorted(set(capacity or ()) - set(MEASURE_REGISTRY))
    if unknown:
        raise ValueError(f"capacity={list(capacity)!r}: unknown group(s) {unknown}; known: {list(MEASURE_REGISTRY)}.")
    return {"runs": list(runs)}


def _load_run(folder: Path) -> dict[str, Any]:
    """The three settings' models of one reproduce folder, with their spec and final record."""
    if not folder.is_dir():
        raise ValueError(f"run folder {str(folder)!r} does not exist; pass the --out folder of "
                         f"`landprobe reproduce --setting all`.")
    models, specs, records = {}, {}, {}
    for s in SETTINGS:
        path = folder / s / "checkpoint.pt"
        if not path.is_file():
            raise ValueError(f"{str(path)!r} is missing: study needs all three settings of a run "
                             f"(`landprobe reproduce --setting all --out {folder}`).")
        ck = load_torch(path, map_location="cpu")
        if not isinstance(ck, dict) or ck.get("format") != "landprobe-recipe-checkpoint-1":
            raise LoadError(f"{str(path)!r} is not a landprobe recipe checkpoint (written by reproduce).", path)
        spec = dict(ck["spec"])
        model = build_model(spec["width"], spec["recursions"], spec["seed"])
        model.load_state_dict(ck["model"])
        final = folder / s / "final.json"
        rec = load_json(final) if final.is_file() else {}
        models[s], specs[s] = model, spec
        records[s] = {"checkpoint": str(path.resolve()), "sha256": sha256(path), "steps": int(ck["step"]),
                      "epochs": int(ck["epoch"]), "psnr": rec.get("psnr"),
                      "psnr_whole_images": rec.get("psnr_whole_images")}
    seeds = {sp["seed"] for sp in specs.values()}
    if len(seeds) != 1:
        raise ValueError(f"run folder {str(folder)!r} mixes seeds {sorted(seeds)} across its settings.")
    return {"folder": str(folder), "models": models, "spec": specs["mix"], "records": records,
            "init": build_model(specs["mix"]["width"], specs["mix"]["recursions"], specs["mix"]["seed"])}


def _measured_before(folder: Path, options: dict[str, Any]) -> dict[str, Any] | None:
    """The run measured in ``folder/study.json`` (a study of that one run with the same options),
    or ``None`` when ``folder`` is a reproduce folder to measure."""
    path = folder / "study.json"
    if not path.is_file():
        return None
    prior = load_json(path)
    runs = prior.get("runs")
    if not isinstance(runs, list) or len(runs) != 1 or "options" not in prior:
        raise LoadError(f"{str(path)!r} is not the study of one run; pass the run's reproduce folder, or a "
                        f"folder written by `landprobe study RUN --out FOLDER` with one RUN.", path)
    differ = {k: (prior["options"].get(k), v) for k, v in options.items() if prior["options"].get(k) != v}
    if differ:
        raise ValueError(f"{str(path)!r} was measured with other options {differ} (there, here); rerun it with "
                         f"these options or pass its reproduce folder.")
    return runs[0]


def _check_same_model(specs: list[dict[str, Any]], names: list[str]) -> None:
    keys = ("width", "recursions", "scale", "loss_scaling")
    first = {k: specs[0][k] for k in keys}
    for spec, name in zip(specs[1:], names[1:]):
        other = {k: spec[k] for k in keys}
        if other != first:
            raise ValueError(f"runs of different models: {names[0]} has {first}, {name} has {other}; "
                             f"study compares runs of one preset.")


def _patch_batches(data_dir: Path, spec: dict[str, Any], patches: int | None, curvature_patches: int,
                   batch_size: int, seed: int) -> tuple[list, list]:
    """The landscape's batches (a seeded subset of the T91 patches) and the curvature batches."""
    from landprobe.data import T91Patches

    p = T91Patches(data_dir, scale=spec["scale"], patch=41, stride=21)
    n = len(p.inputs) if patches is None else min(patches, len(p.inputs))
    order = torch.randperm(len(p.inputs), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = p.inputs[order], p.targets[order]

    def split(k: int) -> list:
        return [(x[i:min(i + batch_size, k)], y[i:min(i + batch_size, k)]) for i in range(0, k, batch_size)]

    return split(n), split(min(curvature_patches, n))


def _bicubic_loss(batches: list, spec: dict[str, Any]) -> float:
    """The empirical error of the bicubic input itself (the network with a zero residual): the
    level a curve falls back to where the interpolated residual cancels out."""
    loss = RecipeLoss(0.0, spec["loss_scaling"], 1)
    total = sum(float(loss(x, y)) * len(x) for x, y in batches)
    return total / sum(len(x) for x, _ in batches)


def _machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "landprobe": __version__}


# ----------------------------------------------------------------------------- one run
def _probe(run: dict[str, Any], batches: list, progress: bool | None) -> LandscapeProbe:
    loss = RecipeLoss(0.0, run["spec"]["loss_scaling"], 1)
    net = build_model(run["spec"]["width"], run["spec"]["recursions"], run["spec"]["seed"])
    return LandscapeProbe(net, loss, batches, progress=progress)


def _measure_run(run: dict[str, Any], batches: list, small: list, o: dict[str, Any],
                 progress: bool | None) -> dict[str, Any]:
    probe = _probe(run, batches, progress)
    states = {s: m.state_dict() for s, m in run["models"].items()}
    res: dict[str, Any] = {"folder": run["folder"], "seed": run["spec"]["seed"], "spec": run["spec"],
                           "models": run["records"],
                           "losses": {s: float(probe.evaluate(states[s]).loss) for s in SETTINGS}}
    flat = {s: torch.cat([p.detach().flatten() for p in m.parameters()]) for s, m in run["models"].items()}
    init = torch.cat([p.detach().flatten() for p in run["init"].parameters()])
    res["distances"] = {f"{a}~{b}": float((flat[a] - flat[b]).norm()) for a, b in PAIRS}
    res["from_init"] = {s: float((flat[s] - init).norm()) for s in SETTINGS}
    res["curves"] = {f"{a}~{b}": _curve_record(probe.interpolate(states[a], states[b], o["points"]))
                     for a, b in PAIRS}
    if o["align"]:
        res["aligned_curves"] = {f"{a}~{b}": _aligned_record(probe, states[a], states[b], o, res["curves"][f"{a}~{b}"])
                                 for a, b in PAIRS}
    if o["plane_points"]:
        surf = probe.plane(through=tuple(states[s] for s in SETTINGS), points=o["plane_points"], seed=o["seed"])
        res["plane"] = {"through": list(SETTINGS), "xs": surf.xs.tolist(), "ys": surf.ys.tolist(),
                        "losses": surf.losses.tolist(), "stderr": surf.stderr.tolist(),
                        "anchors": {s: surf.anchors[k] for s, k in zip(SETTINGS, "abc")},
                        "anchor_losses": {s: surf.anchor_losses[k] for s, k in zip(SETTINGS, "abc")}}
    scopes = {"model": None, **({n: n for n in SUBNETS} if o["subnets"] else {})}
    if o["top_k"] or o["trace_matvecs"]:
        curv = _probe(run, small, progress)
        res["hessian"] = {s: {name: _curvature(curv, states[s], sel, o) for name, sel in scopes.items()}
                          for s in SETTINGS}
    if o["capacity"]:
        res["capacity"] = {s: _capacity(run, s, small, o) for s in SETTINGS}
    return res


def _curve_record(c) -> dict[str, Any]:
    i = int(np.argmin(np.abs(c.alphas - c.argmax_alpha)))
    return {"alphas": c.alphas.tolist(), "losses": c.losses.tolist(), "stderr": c.stderr.tolist(),
            "loss_a": c.loss_a, "loss_b": c.loss_b, "barrier": c.barrier, "argmax_alpha": c.argmax_alpha,
            "barrier_point_stderr": float(c.stderr[i]), "max_loss": float(np.max(c.losses)), "aligned": None}


def _aligned_record(probe: LandscapeProbe, a: dict, b: dict, o: dict[str, Any], plain: dict[str, Any]) -> dict:
    """The curve from ``a`` to ``b`` aligned to ``a`` (:func:`landprobe.symmetry.align_endpoint`);
    when the best permutation is the identity it is the plain curve, not measured twice."""
    from landprobe.symmetry import align_endpoint

    b_aligned, perm, _ = align_endpoint(probe.engine, a, b, o["align"], seed=o["seed"])
    identity = bool(perm.is_identity())
    rec = dict(plain) if identity else _curve_record(probe.interpolate(a, b_aligned, o["points"]))
    rec.update(aligned=o["align"], identity=identity, objective=[float(v) for v in perm.objective])
    return rec


def _curvature(probe: LandscapeProbe, state: dict, subnet: str | None, o: dict[str, Any]) -> dict[str, Any]:
    H = probe.hessian(state, subnet=subnet)
    rec: dict[str, Any] = {"parameters": H.n}
    if o["top_k"]:
        top = H.top_eigenvalues(min(o["top_k"], H.n), tol=1e-3)
        rec["eigenvalues"] = [float(v) for v in top.values]
        rec["eigen_matvecs"] = H.matvecs
    if o["trace_matvecs"]:
        tr = H.trace(matvecs=o["trace_matvecs"], seed=o["seed"])
        rec["trace"], rec["trace_stderr"], rec["trace_matvecs"] = float(tr.value), float(tr.stderr), tr.matvecs
    return rec


def _capacity(run: dict[str, Any], setting: str, small: list, o: dict[str, Any]) -> dict[str, Any]:
    rep = capacity_report(run["models"][setting], small, {n: n for n in SUBNETS} if o["subnets"] else None,
                          RecipeLoss(0.0, run["spec"]["loss_scaling"], 1), measures=list(o["capacity"]),
                          input_shape=(1, 41, 41), output=lambda out: out.final, reference=run["init"],
                          seed=o["seed"], progress=False)
    return {"values": rep.values, "skipped": rep.skipped}


def _across_seeds(pair: list[dict[str, Any]], batches: list, o: dict[str, Any],
                  progress: bool | None) -> dict[str, Any]:
    """Each setting's curve between the first two runs' solutions, before and after alignment."""
    probe = _probe(pair[0], batches, progress)
    res: dict[str, Any] = {"seeds": [r["spec"]["seed"] for r in pair]}
    for s in SETTINGS:
        a, b = pair[0]["models"][s].state_dict(), pair[1]["models"][s].state_dict()
        plain = _curve_record(probe.interpolate(a, b, o["points"]))
        res[s] = {"plain": plain, "aligned": _aligned_record(probe, a, b, o, plain)}
    return res


# ----------------------------------------------------------------------------- over runs
def scalar_measures(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every scalar measure of one run, per setting: name → setting → value.

    Per-setting measures (loss, PSNR, eigenvalues, trace, capacity values per scope) are keyed
    by setting; the pairwise barriers, which belong to a pair, are under the key ``"pair"``.

    Example:
        >>> run = {"losses": {"all-l2": 1.0, "mix": 2.0, "all-l1": 3.0}, "models": {},
        ...        "curves": {"all-l2~mix": {"barrier": 0.5}}}
        >>> m = scalar_measures(run)
        >>> m["loss"]["mix"], m["barrier all-l2~mix"]["pair"]
        (2.0, 0.5)
    """
    m: dict[str, dict[str, float]] = {"loss": dict(run["losses"])}
    if "from_init" in run:
        m["distance from init"] = dict(run["from_init"])
        m.update({f"distance {pair}": {"pair": d} for pair, d in run["distances"].items()})
    for s, rec in run.get("models", {}).items():
        for key in ("psnr", "psnr_whole_images"):
            if rec.get(key) is not None:
                m.setdefault(key, {})[s] = float(rec[key])
    for kind in ("curves", "aligned_curves"):
        for pair, c in run.get(kind, {}).items():
            m[f"{'aligned ' if kind == 'aligned_curves' else ''}barrier {pair}"] = {"pair": float(c["barrier"])}
    for s, scopes in run.get("hessian", {}).items():
        for scope, rec in scopes.items():
            if rec.get("eigenvalues"):
                m.setdefault(f"top eigenvalue {scope}", {})[s] = rec["eigenvalues"][0]
            if "trace" in rec:
                m.setdefault(f"trace {scope}", {})[s] = rec["trace"]
    for s, cap in run.get("capacity", {}).items():
        for scope, values in cap["values"].items():
            for name, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    m.setdefault(f"{name} {scope}", {})[s] = float(v)
    return m


def summarize_runs(per_run: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per measure: mean and sd over runs per setting, and the paired differences of
    :data:`COMPARISONS` (:func:`paired`), for the measures every run has.

    Example:
        >>> runs = [{"losses": {"all-l2": 1.0 + i, "mix": 1.0, "all-l1": 0.5}} for i in range(3)]
        >>> s = summarize_runs(runs)["loss"]
        >>> s["all-l2"]["mean"], s["all-l2_minus_mix"]["mean"], s["all-l1_minus_mix"]["values"]
        (2.0, 1.0, [-0.5, -0.5, -0.5])
    """
    per = [scalar_measures(r) for r in per_run]
    names = [k for k in per[0] if all(k in p for p in per)]
    out: dict[str, Any] = {}
    for name in names:
        rec: dict[str, Any] = {}
        for key in per[0][name]:
            vals = [p[name].get(key) for p in per]
            if any(v is None for v in vals):
                continue
            x = np.asarray(vals, dtype=float)
            rec[key] = {"values": x.tolist(), "mean": float(x.mean()), "sd": float(x.std(ddof=1))}
        for comp, (better, worse) in COMPARISONS.items():
            if better in rec and worse in rec:
                rec[comp] = paired([p[name][better] - p[name][worse] for p in per])
        out[name] = rec
    return out


# ----------------------------------------------------------------------------- figures
def study_figures(out: str | os.PathLike) -> list[Path]:
    """Write ``tables.md`` and draw the figures of ``out/study.json`` (and nothing else).

    ``tables.md`` holds, per run, the losses, distances and barriers, and over runs each main
    measure's mean ± sd per setting with the paired differences (mean, 95% interval, p). The
    figures: ``curves.png`` (the pairwise curves of every run as their excess over the chord,
    aligned dashed), ``plane.png`` (the plane through the three solutions, when measured),
    ``spectra.png`` (top eigenvalues and trace per setting
    and scope) and, with two or more runs, ``differences.png`` (the paired differences of the
    main measures with their 95% intervals) and ``across_seeds.png`` (each setting's curve between
    two seeds, plain and aligned). Returns the files written.

    Raises:
        LoadError: If ``out/study.json`` is missing or not a study's JSON.

    Example:
        >>> import tempfile
        >>> from landprobe.recipes import study_figures
        >>> study_figures(tempfile.mkdtemp())             # doctest: +ELLIPSIS
        Traceback (most recent call last):
        landprobe.common.io.LoadError: ...study.json...
    """
    from landprobe.common.results import require_matplotlib

    out = Path(out)
    path = out / "study.json"
    res = load_json(path)
    if "runs" not in res or "options" not in res:
        raise LoadError(f"{str(path)!r} is not a study's JSON (no 'runs'/'options'); write it with landprobe study.",
                        path)
    written = [_write_tables(res, out / "tables.md")]
    plt = require_matplotlib()
    written.append(_figure_curves(plt, res, out / "curves.png"))
    if any("plane" in r for r in res["runs"]):
        written.append(_figure_plane(plt, res, out / "plane.png"))
    if any("hessian" in r for r in res["runs"]):
        written.append(_figure_spectra(plt, res, out / "spectra.png"))
    if "summary" in res:
        written.append(_figure_differences(plt, res, out / "differences.png"))
    if "across_seeds" in res:
        written.append(_figure_across(plt, res, out / "across_seeds.png"))
    return written


def _figure_curves(plt, res: dict[str, Any], path: Path) -> Path:
    """Each pairwise curve as its excess over the chord, L(α) − [(1 − α)·L(a) + α·L(b)]: the
    quantity whose maximum is the barrier, zero at both ends, comparable across seeds."""
    fig, axes = plt.subplots(1, len(PAIRS), figsize=(4.2 * len(PAIRS), 3.4), squeeze=False, sharey=True)
    for ax, (a, b) in zip(axes[0], PAIRS):
        key = f"{a}~{b}"
        for i, run in enumerate(res["runs"]):
            for kind, style in (("curves", "-"), ("aligned_curves", "--")):
                c = run.get(kind, {}).get(key)
                if c is None or (kind == "aligned_curves" and c.get("identity")):
                    continue
                al, lo = np.asarray(c["alphas"], dtype=float), np.asarray(c["losses"], dtype=float)
                excess = lo - ((1 - al) * c["loss_a"] + al * c["loss_b"])
                label = f"seed {run['seed']}" + (" aligned" if kind == "aligned_curves" else "") if i < 4 else None
                ax.plot(al, excess, style, lw=1, color=f"C{i % 10}", label=label)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_title(f"{_LABELS[a]} (α=0) → {_LABELS[b]} (α=1)", fontsize=9)
        ax.set_xlabel("α")
    axes[0][0].set_ylabel("empirical error − chord")
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.suptitle("pairwise curves between the settings' solutions (dashed: aligned, where not the identity)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure_across(plt, res: dict[str, Any], path: Path) -> Path:
    a = res["across_seeds"]
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(4.2 * len(SETTINGS), 3.4), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], SETTINGS):
        for kind, style in (("plain", "-"), ("aligned", "--")):
            c = a[s][kind]
            ax.plot(c["alphas"], c["losses"], style, color=_COLORS[s], label=f"{kind} (barrier {c['barrier']:.3g})")
        if res.get("bicubic_loss") is not None:
            ax.axhline(res["bicubic_loss"], color="0.5", ls=":", lw=0.8, label="bicubic input")
        ax.set_title(f"{_LABELS[s]}: seed {a['seeds'][0]} (α=0) → seed {a['seeds'][1]} (α=1)", fontsize=9)
        ax.set_xlabel("α")
        ax.legend(frameon=False, fontsize=7)
    axes[0][0].set_ylabel("empirical error")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure_plane(plt, res: dict[str, Any], path: Path) -> Path:
    run = next(r for r in res["runs"] if "plane" in r)
    p = run["plane"]
    xs, ys, z = np.asarray(p["xs"]), np.asarray(p["ys"]), np.asarray(p["losses"], dtype=float)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    levels = np.quantile(z[np.isfinite(z)], np.linspace(0, 1, 16))
    cs = ax.contourf(xs, ys, z, levels=np.unique(levels), cmap="viridis")
    fig.colorbar(cs, ax=ax, label="empirical error")
    for s in p["through"]:
        x, y = p["anchors"][s]
        ax.plot(x, y, "o", color=_COLORS[s], mec="white", ms=8, label=f"{_LABELS[s]} ({p['anchor_losses'][s]:.3g})")
    ax.set_aspect("equal")
    ax.set_title(f"plane through the three solutions, seed {run['seed']}", fontsize=9)
    ax.legend(frameon=False, fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure_spectra(plt, res: dict[str, Any], path: Path) -> Path:
    scopes = list(next(r for r in res["runs"] if "hessian" in r)["hessian"]["mix"])
    fig, axes = plt.subplots(1, len(scopes), figsize=(3.4 * len(scopes), 3.3), squeeze=False)
    for ax, scope in zip(axes[0], scopes):
        for j, s in enumerate(SETTINGS):
            for run in res["runs"]:
                rec = run.get("hessian", {}).get(s, {}).get(scope, {})
                ev = rec.get("eigenvalues", [])
                ax.plot(np.arange(1, len(ev) + 1) + 0.2 * (j - 1), ev, "o", ms=3, color=_COLORS[s], alpha=0.7)
                if "trace" in rec:
                    ax.plot([len(ev) + 1.5 + 0.2 * (j - 1)], [rec["trace"]], "s", ms=4, color=_COLORS[s], alpha=0.7)
            ax.plot([], [], "o", color=_COLORS[s], label=_LABELS[s])
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"{scope}: top eigenvalues, trace (■)", fontsize=9)
        ax.set_xlabel("eigenvalue index")
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_MAIN = ("psnr", "loss", "distance from init", "top eigenvalue model", "trace model", "l1 model", "l2 model",
         "spectral_complexity model", "near_zero model", "sharpness model")


def _figure_differences(plt, res: dict[str, Any], path: Path) -> Path:
    summ = res["summary"]
    names = [n for n in _MAIN if n in summ and any(c in summ[n] for c in COMPARISONS)]
    cols = 3
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 1.5 * rows + 0.4), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for i, comp in enumerate(c for c in COMPARISONS if c in summ[name]):
            r = summ[name][comp]
            ax.plot(r["ci95"], [i, i], "-", color="0.3", lw=1.5)
            ax.plot(r["values"], [i] * r["n"], ".", color="tab:orange", alpha=0.7)
            ax.plot([r["mean"]], [i], "o", color="k", ms=4)
        labels = [c.replace("_minus_", " − ").replace("all-l", "All-L").replace("mix", "Mix")
                  for c in COMPARISONS if c in summ[name]]
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_title(name, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"paired differences over {len(res['runs'])} seeds: per seed (•), mean (●), 95% t-interval",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(x: Any) -> str:
    """A number to 4 significant digits; "—" for a missing or non-finite one (JSON keeps those as strings)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "—"
    return f"{v:.4g}" if math.isfinite(v) else "—"


def _write_tables(res: dict[str, Any], path: Path) -> Path:
    """Markdown tables of a study's JSON (written atomically)."""
    from landprobe.common.io import atomic_write

    lines = [f"# Landscape of the three settings' solutions ({len(res['runs'])} run(s))", "",
             f"Command: `{res.get('command', '')}`; machine: {res.get('machine', {}).get('cpu', '?')}; "
             f"{res.get('patches_used', '?')} patches, curvature on {res.get('curvature_patches_used', '?')}.", "",
             "| seed | loss All-L2 | Mix | All-L1 | distance L2~Mix | Mix~L1 | L2~L1 "
             "| barrier L2~Mix | Mix~L1 | L2~L1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in res["runs"]:
        keys = [f"{a}~{b}" for a, b in PAIRS]
        cells = ([run["losses"][s] for s in SETTINGS] + [run.get("distances", {}).get(k) for k in keys]
                 + [run["curves"][k]["barrier"] for k in keys])
        lines.append(f"| {run['seed']} | " + " | ".join(_fmt(c) for c in cells) + " |")
    summ = res.get("summary")
    if summ:
        lines += ["", "Over runs: mean ± sd per setting; paired differences per run: mean [95% t-interval], "
                      "two-sided p, runs with a positive difference.", "",
                  "| measure | All-L2 | Mix | All-L1 | All-L1 − Mix | All-L2 − Mix |", "|---|---|---|---|---|---|"]
        for name, rec in summ.items():
            if not all(s in rec for s in SETTINGS):
                continue
            cells = [f"{_fmt(rec[s]['mean'])} ± {_fmt(rec[s]['sd'])}" for s in SETTINGS]
            for comp in COMPARISONS:
                r = rec.get(comp)
                cells.append("—" if r is None else f"{_fmt(r['mean'])} [{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}], "
                                                   f"p = {_fmt(r['p'])}, {r['favouring']}/{r['n']}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda fh: fh.write(text))

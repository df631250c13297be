"""``landprobe probe interpolate|plane|connect|level-set``: probes on saved checkpoints.

Each probe kind is a subcommand with its own options plus the shared ones (checkpoints, model,
data, loss, device, threads, output, progress, sharding and timeout). Grid sizes are
``--points``; the optimizer steps of connect and level-set are ``--steps``.

The model is ``--model warship`` (default), ``drcn`` or the user's ``package.module:Class``
(with ``--model-kwargs``); the width of a built-in model comes from ``--width``, else from a
recipe checkpoint's spec, else from the shapes of the checkpoint. The loss is the study's
recursive-supervision loss (default), ``mse`` or the user's ``package.module:name``; the data
are T91 x2 patches (default the repository's data/T91 or the embedded sample, or a folder given
as ``--data``) or the user's ``package.module:name`` (see ``landprobe.cli.usercode``).

The JSON written records the inputs (each checkpoint's path and SHA-256, the model, data and
loss, the command line) under ``"inputs"``; the last line printed lists every file written.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the command starts the process group itself (nccl on
the GPU of ``LOCAL_RANK`` when CUDA is available, gloo on CPU) and by default the ranks share
every pass over the data (``--sharding data``), each rank computing the one-process result;
``--sharding points`` splits the points of a sweep across the ranks instead. Only rank 0 writes
the output files and prints.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from landprobe.cli.argtypes import (finite_float, int_at_least, nonneg_float, nonneg_int, positive_float,
                                    positive_int, positive_seconds)
from landprobe.cli.checkpoints import BUILTIN_MODELS, builtin_model, check_fits, load_checkpoint, model_width
from landprobe.common.io import sha256
from landprobe.cli.usercode import is_import_path, model_kwargs, user_data, user_loss, user_model
from landprobe.params import unwrap_state_dict

__all__ = ["register_probe", "load_checkpoint", "PROBES"]

PROBES = ("interpolate", "plane", "connect", "level-set")
SHARDINGS = ("data", "points")
#: How many checkpoints each kind takes.
COUNTS = {"interpolate": (2,), "plane": (1, 3), "connect": (2,), "level-set": (2,)}
#: Default of ``--points`` per kind.
POINTS = {"interpolate": 51, "plane": 21, "connect": 61}

DESCRIPTION = ("Probe the loss landscape around saved checkpoints. Each kind has its own options; see "
               "landprobe probe KIND --help. Under torchrun (torchrun --nproc_per_node N -m landprobe.cli probe "
               "KIND ...) the ranks share the work and rank 0 alone writes the files and prints.")


# ----------------------------------------------------------------------------- parser
def register_probe(sub) -> None:
    """Add ``landprobe probe KIND CHECKPOINT...`` (one subcommand per kind) to the ``landprobe`` command.

    Example:
        >>> from landprobe.cli import build_parser
        >>> a = build_parser().parse_args(["probe", "interpolate", "a.pt", "b.pt", "--points", "11"])
        >>> a.probe, a.checkpoints, a.points, a.bn
        ('interpolate', ['a.pt', 'b.pt'], 11, 'eval')
        >>> a.sharding, a.timeout                   # used under torchrun only
        ('data', 1800.0)
        >>> c = build_parser().parse_args(["probe", "connect", "a.pt", "b.pt", "--steps", "50"])
        >>> c.steps, c.points, c.method
        (50, None, 'polychain')
    """
    p = sub.add_parser("probe", help="probe saved checkpoints: interpolate, plane, connect, level-set",
                       description=DESCRIPTION)
    kinds = p.add_subparsers(dest="probe", metavar="KIND")
    kinds.required = True
    for add in (_add_interpolate, _add_plane, _add_connect, _add_level_set):
        add(kinds)


def _kind_parser(kinds, name: str, help: str, description: str, checkpoints: str) -> argparse.ArgumentParser:
    p = kinds.add_parser(name, help=help, description=description)
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=checkpoints)
    p.set_defaults(func=_run, prog_name=p.prog)
    return p


def _add_shared(p: argparse.ArgumentParser) -> None:
    """The options every kind takes: model, data, loss, evaluation, device and output."""
    g = p.add_argument_group("model, data and loss")
    g.add_argument("--model", default="warship",
                   help="warship (default), drcn, or the import path package.module:Class of an nn.Module "
                        "(the current folder is importable)")
    g.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments of an imported model class, as a JSON object, e.g. '{\"width\": 0.5}'")
    g.add_argument("--width", type=positive_float, default=None,
                   help="width of a built-in model (default: from a recipe checkpoint's spec, else from the "
                        "checkpoint's shapes)")
    g.add_argument("--data", default=None,
                   help="a folder of training images (default data/T91 or the embedded sample), or "
                        "package.module:name of an iterable of (inputs, targets) batches, a Dataset, or a "
                        "function without arguments returning one")
    g.add_argument("--patches", type=positive_int, default=None, help="T91 patches evaluated per point (default 512)")
    g.add_argument("--batch-size", type=positive_int, default=64,
                   help="batch size of the T91 patches or of a Dataset from --data (default 64)")
    g.add_argument("--loss", default="study",
                   help="study (recursive supervision, default), mse, or package.module:name of a loss "
                        "loss_fn(output, target) or of a class or function without arguments returning one")
    g.add_argument("--alpha", type=nonneg_float, default=None,
                   help="weight of the intermediate outputs in the study loss (default 0.5)")
    g.add_argument("--bn", choices=["eval", "train", "recompute"], default="eval",
                   help="BatchNorm statistics while evaluating (default eval)")
    r = p.add_argument_group("running")
    r.add_argument("--out", default="probe-out", help="output folder (default probe-out; written by rank 0 only)")
    r.add_argument("--device", default=None,
                   help="torch device of the model (default: under torchrun with CUDA the GPU of LOCAL_RANK, else cpu)")
    r.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--sharding", choices=SHARDINGS, default="data",
                   help="under torchrun: data (default): the ranks share every pass over the data, each computing "
                        "the one-process result; points: each rank passes over all the data and the points of a "
                        "sweep are split across the ranks")
    r.add_argument("--timeout", type=positive_seconds, default=1800.0,
                   help="under torchrun: seconds a rank waits for the others at one exchange before it fails "
                        "(default 1800)")


def _add_points(p: argparse.ArgumentParser, what: str, old_steps: bool) -> None:
    p.add_argument("--points", type=int_at_least(2), default=None, help=what)
    if old_steps:  # the former name of --points, accepted for one release
        p.add_argument("--steps", dest="old_steps", type=int_at_least(2), default=None, help=argparse.SUPPRESS)


def _add_interpolate(kinds) -> None:
    p = _kind_parser(kinds, "interpolate", "the loss on the segment between two checkpoints",
                     "The loss on the segment (1 - alpha) A + alpha B between checkpoints A and B, its barrier, "
                     "and a plot. Writes OUT/interpolate.json and OUT/interpolate.png.",
                     "two checkpoint files A B")
    _add_points(p, "points on the segment [0, 1] (default 51)", old_steps=True)
    p.add_argument("--extend", type=nonneg_float, default=0.0, help="also evaluate past both ends by this fraction")
    p.add_argument("--subnet", default=None, help="move only this subnet (e.g. inet)")
    p.add_argument("--align", choices=["weights", "activations"], default=None,
                   help="first permute B's hidden units to match A's (weight or activation matching); the naive "
                        "barrier is recorded beside the aligned one (see docs/symmetry.md)")
    _add_shared(p)


def _add_plane(kinds) -> None:
    p = _kind_parser(kinds, "plane", "the loss on a plane through one or three checkpoints",
                     "The loss on a grid: around one checkpoint along two random filter-normalised directions, "
                     "or on the plane through three checkpoints. Writes OUT/plane.json and OUT/plane.png.",
                     "one checkpoint (the centre) or three (A B C)")
    _add_points(p, "grid points per axis (default 21)", old_steps=True)
    p.add_argument("--span", type=positive_float, default=None,
                   help="half-width of the grid around one checkpoint (default the library's)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random directions (default 0)")
    p.add_argument("--subnet", default=None, help="move only this subnet (e.g. inet)")
    _add_shared(p)


def _add_fit(p: argparse.ArgumentParser, steps: int, lr: float) -> None:
    p.add_argument("--steps", type=positive_int, default=None, help=f"optimizer steps (default {steps})")
    p.add_argument("--lr", type=positive_float, default=lr, help=f"learning rate (default {lr:g})")
    p.add_argument("--resume-file", default=None,
                   help="checkpoint the search to this file; rerun the same command to resume")
    p.set_defaults(default_steps=steps)


def _add_connect(kinds) -> None:
    p = _kind_parser(kinds, "connect", "fit a low-loss curve between two checkpoints",
                     "Fit a curve between checkpoints A and B (Bezier, polygonal chain or AutoNEB) and measure "
                     "the loss along it. Writes OUT/connect.json and OUT/connect.png.",
                     "two checkpoint files A B")
    p.add_argument("--method", choices=["bezier", "polychain", "neb"], default="polychain",
                   help="the curve (default polychain)")
    p.add_argument("--bends", type=positive_int, default=3, help="bends of the curve (default 3)")
    _add_fit(p, steps=200, lr=0.01)
    p.add_argument("--train-steps", dest="old_train_steps", type=positive_int, default=None, help=argparse.SUPPRESS)
    _add_points(p, "points measured along the fitted curve (default 61)", old_steps=False)
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the fit (default 0)")
    _add_shared(p)


def _add_level_set(kinds) -> None:
    p = _kind_parser(kinds, "level-set", "search a path between two checkpoints below a loss level",
                     "Search a path from checkpoint A to checkpoint B on which the loss stays below --threshold "
                     "(Freeman and Bruna 2017). Writes OUT/level_set.json and OUT/level_set.png.",
                     "two checkpoint files A B")
    p.add_argument("--threshold", type=finite_float, required=True,
                   help="the loss level (above both checkpoints' losses)")
    _add_fit(p, steps=500, lr=0.01)
    _add_shared(p)


# ----------------------------------------------------------------------------- checks before any work
def _say(args, text: str) -> None:
    """A one-line note on standard error (rank 0 only)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{args.prog_name}: {text}", file=sys.stderr)


def _renamed(args, old_dest: str, new_dest: str, old_flag: str, new_flag: str) -> None:
    """Move a deprecated flag's value to its new name, saying so on standard error."""
    value = getattr(args, old_dest, None)
    if value is None:
        return
    if getattr(args, new_dest) is not None:
        raise ValueError(f"{old_flag} is the deprecated name of {new_flag}; pass only {new_flag}")
    _say(args, f"warning: {old_flag} is deprecated, use {new_flag} (the old name will be removed in the next release)")
    setattr(args, new_dest, value)


def _check_args(args) -> None:
    """Deprecated names, defaults and every check that needs no file read; one-line ``ValueError``."""
    kind = args.probe
    _renamed(args, "old_steps", "points", "--steps", "--points")
    _renamed(args, "old_train_steps", "steps", "--train-steps", "--steps")
    if hasattr(args, "points") and args.points is None:
        args.points = POINTS[kind]
    if hasattr(args, "default_steps") and args.steps is None:
        args.steps = args.default_steps
    need, count = COUNTS[kind], len(args.checkpoints)
    if count not in need:
        raise ValueError(f"CHECKPOINT: {kind} takes {' or '.join(map(str, need))} checkpoint(s), got {count} "
                         f"({' '.join(args.checkpoints)}); see {args.prog_name} --help")
    builtin = args.model in BUILTIN_MODELS
    if not builtin and not is_import_path(args.model):
        raise ValueError(f"--model {args.model!r}: expected warship, drcn or an import path 'package.module:Class'")
    if builtin and args.model_kwargs is not None:
        raise ValueError(f"--model-kwargs applies to an imported --model package.module:Class, not --model "
                         f"{args.model}; use --width for a built-in model")
    if not builtin and args.width is not None:
        raise ValueError(f"--width applies to the built-in models; pass the width of --model {args.model} in "
                         f"--model-kwargs")
    if args.data is not None and is_import_path(args.data) and not Path(args.data).exists() \
            and args.patches is not None:
        raise ValueError(f"--patches applies to the T91 images, not to --data {args.data}")
    if args.loss not in ("study", "mse") and args.alpha is not None:
        raise ValueError(f"--alpha is the weight of the study loss; it does not apply to --loss {args.loss}")
    if args.loss not in ("study", "mse") and not is_import_path(args.loss):
        raise ValueError(f"--loss {args.loss!r}: expected study, mse or an import path 'package.module:name'")
    _check_paths(args)


def _check_paths(args) -> None:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} is a file; pass a folder (it is created if missing)")
    resume = getattr(args, "resume_file", None)
    if resume is not None and Path(resume).is_dir():
        raise ValueError(f"--resume-file {resume!r} is a folder; pass a file path, e.g. "
                         f"{str(Path(resume) / 'search.pt')!r}")
    if args.data is not None and not is_import_path(args.data) and not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data!r} is neither a folder of images nor an import path "
                         f"'package.module:name'")


# ----------------------------------------------------------------------------- inputs
def _load(args) -> tuple[list[dict], list[dict], list[dict[str, str]]]:
    """Every checkpoint's state_dict, recipe spec and ``{"path", "sha256"}`` record."""
    sds, specs, records = [], [], []
    for path in args.checkpoints:
        sd, spec = load_checkpoint(path)
        sds.append(sd)
        specs.append(spec)
        records.append({"path": str(Path(path).resolve()), "sha256": sha256(path)})
    return sds, specs, records


def _model(args, sds: list[dict], spec: dict[str, Any]) -> tuple[torch.nn.Module, list[dict], dict[str, Any]]:
    """The model, the checkpoints with their keys spelled as the model's, and the model's record."""
    if args.model in BUILTIN_MODELS:
        width, source = model_width(args.model, args.width, sds[0], spec)
        model = builtin_model(args.model, width, spec)
        record = {"name": args.model, "width": width, "width_from": source}
        if args.model == "warship":
            record["recursions"] = int(spec.get("recursions", 4))
    else:
        kwargs = model_kwargs(args.model_kwargs)
        model = user_model(args.model, kwargs)
        record = {"name": args.model, "class": type(model).__qualname__, "kwargs": kwargs}
    fitted = []
    for path, sd in zip(args.checkpoints, sds):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sd = unwrap_state_dict(sd, model, what=f"checkpoint {path!r}")
        for w in caught:
            _say(args, f"warning: {' '.join(str(w.message).split())}")
        check_fits(model, sd, path, args.model, spec)
        fitted.append(sd)
    record["parameters"] = sum(p.numel() for p in model.parameters())
    return model, fitted, record


def _loss(args, spec: dict[str, Any]) -> tuple[Callable, dict[str, Any]]:
    from landprobe.losses import RecursiveSupervisionLoss

    if args.loss == "mse":
        mse = torch.nn.MSELoss()

        def final_mse(out, y):
            return mse(out.final if hasattr(out, "final") else out, y)
        return final_mse, {"name": "mse", "of": "the final output"}
    if args.loss == "study":
        alpha = 0.5 if args.alpha is None else args.alpha
        reduction = spec.get("loss_scaling", "sum_over_pixels")
        return RecursiveSupervisionLoss(alpha=alpha, reduction=reduction), \
            {"name": "study", "alpha": alpha, "reduction": reduction}
    loss_fn, how = user_loss(args.loss)
    return loss_fn, {"name": args.loss, "from": how, "type": type(loss_fn).__qualname__}


def _data(args, spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from landprobe import data as lpdata

    if args.data is not None and is_import_path(args.data) and not Path(args.data).exists():
        return user_data(args.data, args.batch_size)
    root = Path(args.data) if args.data else None
    if root is None:
        repo = Path(__file__).resolve().parents[3] / "data" / "T91"
        root = repo if repo.is_dir() else lpdata.sample_dir("train")
    scale = int(spec.get("scale", 2))
    patches = lpdata.T91Patches(root, scale=scale)
    n = min(512 if args.patches is None else args.patches, len(patches))
    idx = torch.linspace(0, len(patches) - 1, n).round().long()  # evenly spread, deterministic
    xs, ys = zip(*(patches[int(i)] for i in idx))
    x, y = torch.stack(xs), torch.stack(ys)
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]
    return batches, {"name": "t91", "folder": str(Path(root).resolve()), "scale": scale, "patches": n,
                     "batch_size": args.batch_size}


# ----------------------------------------------------------------------------- running
def _device(args) -> torch.device:
    """``--device``, else the GPU of ``LOCAL_RANK`` under ``torchrun`` with CUDA, else the CPU."""
    if args.device is not None:
        return torch.device(args.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _start_ranks(device: torch.device, timeout: float) -> bool:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) and none is
    running: nccl on ``device`` when it is a GPU, gloo otherwise. Whether it started one."""
    d = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not d.is_available() or d.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    d.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout))
    return True


def _run(args) -> int:
    """``landprobe probe KIND``: check the arguments, read the inputs, probe, write (rank 0)."""
    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    sds, specs, records = _load(args)
    spec = specs[0]
    model, sds, model_record = _model(args, sds, spec)
    loss_fn, loss_record = _loss(args, spec)
    data, data_record = _data(args, spec)
    inputs = {"checkpoints": records, "model": model_record, "data": data_record, "loss": loss_record,
              "command": list(getattr(args, "command_line", sys.argv))}
    device = _device(args)
    started = _start_ranks(device, args.timeout)
    try:
        return _probe(args, device, model, loss_fn, data, sds, inputs)
    finally:
        if started:
            torch.distributed.destroy_process_group()


def _probe(args, device: torch.device, model, loss_fn, data, sds: list[dict], inputs: dict[str, Any]) -> int:
    from landprobe.engine import Sharding
    from landprobe.probes.landscape import LandscapeProbe

    model.load_state_dict(sds[0])
    model.to(device)
    sharding = Sharding(data=args.sharding == "data", timeout=args.timeout)
    probe = LandscapeProbe(model, loss_fn, data, bn=args.bn, progress=not args.no_progress, sharding=sharding)
    res, line = RUNNERS[args.probe](args, probe, sds)
    if probe.engine.writes_files:
        _write(args, res, line, inputs)
    return 0


def _interpolate(args, probe, sds) -> tuple[Any, str]:
    align = getattr(args, "align", None)
    res = probe.interpolate(sds[0], sds[1], points=args.points, subnet=args.subnet, extend=args.extend, align=align)
    naive = f"  naive barrier {res.settings['align']['naive_barrier']:.6g} ({align}-aligned above)" if align else ""
    return res, (f"L(a) {res.loss_a:.6g}  L(b) {res.loss_b:.6g}  barrier {res.barrier:.6g} at alpha "
                 f"{res.argmax_alpha:.3g}{naive}")


def _plane(args, probe, sds) -> tuple[Any, str]:
    kw: dict[str, Any] = {"points": args.points, "subnet": args.subnet, "seed": args.seed}
    if len(sds) == 3:  # the grid is fitted to the three anchors
        res = probe.plane(through=sds, **kw)
    else:
        res = probe.plane(sds[0], **kw, **({} if args.span is None else {"span": args.span}))
    return res, f"center loss {res.center_loss:.6g}; grid {res.losses.shape}"


def _connect(args, probe, sds) -> tuple[Any, str]:
    res = probe.connect(sds[0], sds[1], method=args.method, bends=args.bends, steps=args.steps, lr=args.lr,
                        points=args.points, seed=args.seed, checkpoint=args.resume_file)
    return res, f"{args.method} path: barrier {res.barrier:.6g}"


def _level_set(args, probe, sds) -> tuple[Any, str]:
    res = probe.level_set(sds[0], sds[1], args.threshold, steps=args.steps, lr=args.lr, checkpoint=args.resume_file)
    return res, f"connected: {res.connected}"


RUNNERS: dict[str, Callable[..., tuple[Any, str]]] = {
    "interpolate": _interpolate, "plane": _plane, "connect": _connect, "level-set": _level_set}


def _write(args, res: Any, line: str, inputs: dict[str, Any]) -> None:
    """The result's JSON (with its inputs) and PNG in ``--out``; the summary and the files written."""
    from landprobe.common.io import save_json
    from landprobe.common.results import FORMAT_VERSION

    out = Path(args.out)
    stem = args.probe.replace("-", "_")
    data = res.to_dict()
    data.setdefault("format", FORMAT_VERSION)
    data["inputs"] = inputs
    written = [save_json(out / f"{stem}.json", data)]
    png = _save_png(res, out / f"{stem}.png")
    if png is not None:
        written.append(png)
    print(line)
    print("wrote " + ", ".join(map(str, written)))


def _save_png(res: Any, path: Path) -> Path | None:
    """The result's plot as ``path``, or ``None`` (said on standard output) without matplotlib."""
    try:
        ax = res.plot()
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install 'landprobe[plot]')")
        return None
    ax = ax[0] if isinstance(ax, (list, tuple)) else ax
    fig = getattr(ax, "figure", None) or ax.flat[0].figure
    from landprobe.common.io import atomic_write

    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"), binary=True)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path

"""``landprobe probe interpolate|plane|connect|level-set``: probes on saved checkpoints.

Checkpoints are those of ``landprobe reproduce`` (``OUT/SETTING/checkpoint.pt``: the model's
width is read from them) or any state_dict saved with ``torch.save``, with the model named by
``--model`` (``warship``, ``drcn`` or an import path ``package.module:Class``). The empirical
error is the study's recursive-supervision loss on T91 x2 patches (``--data``, default the
repository's ``data/T91`` or the embedded sample) unless ``--loss mse``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the command starts the process group itself (nccl on
the GPU of ``LOCAL_RANK`` when CUDA is available, gloo on CPU) and by default the ranks share
every pass over the data (``--sharding data``), each rank computing the one-process result;
``--sharding points`` splits the points of a sweep across the ranks instead. Only rank 0 writes
the output files and prints.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from landprobe.common.io import LoadError, load_torch

__all__ = ["register_probe", "load_checkpoint"]

PROBES = ("interpolate", "plane", "connect", "level-set")
SHARDINGS = ("data", "points")


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, spec)`` from a recipe checkpoint or a plain state_dict file.

    ``spec`` holds the recipe's settings (width, recursions, loss scaling, ...) or is empty.
    Files are read with ``torch.load(..., weights_only=True)``.

    Example:
        >>> import tempfile, os, torch
        >>> from landprobe.cli.probe import load_checkpoint
        >>> f = os.path.join(tempfile.mkdtemp(), "sd.pt")
        >>> torch.save(torch.nn.Linear(2, 1).state_dict(), f)
        >>> sd, spec = load_checkpoint(f)
        >>> sorted(sd), spec
        (['bias', 'weight'], {})
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist; pass a file written by landprobe reproduce "
                         f"(OUT/SETTING/checkpoint.pt) or by torch.save(model.state_dict(), ...)")
    try:
        obj = load_torch(path, map_location="cpu")
    except LoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"], dict(obj.get("spec", {}))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(f"{str(path)!r} holds neither a landprobe recipe checkpoint nor a state_dict")


def _build_model(args, spec: dict[str, Any]) -> torch.nn.Module:
    name = args.model
    width = args.width if args.width is not None else float(spec.get("width", 1.0))
    if name in _BUILTIN:
        return _builtin(name, width, spec)
    if ":" not in name:
        raise ValueError(f"--model {name!r}: expected warship, drcn or an import path 'package.module:Class'")
    mod, _, cls = name.partition(":")
    try:
        factory = getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--model {name!r}: cannot import it ({exc})") from exc
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    return factory(**kwargs)


_BUILTIN = ("warship", "drcn")


def _builtin(name: str, width: float, spec: dict[str, Any]) -> torch.nn.Module:
    from landprobe import models

    if name == "warship":
        return models.WarshipXZNetBeta(width=width, recursions=int(spec.get("recursions", 4)))
    return models.DRCN(width=width)


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _fitting_width(name: str, file: dict[str, tuple[int, ...]], spec: dict[str, Any]) -> float | None:
    """The shortest decimal width at which the built-in model ``name`` has the file's shapes."""
    first = file.get("enet.conv1.weight")
    if first is None or len(first) < 1:
        return None
    from landprobe import models

    feats = (models.WarshipXZNetBeta if name == "warship" else models.DRCN).FEATURES
    c = first[0]
    lo, hi = max((c - 0.5) / feats, 1e-9), (c + 0.5) / feats
    tried = 0
    for digits in range(1, 7):  # fewest digits first; among equals, the nearest to c / FEATURES
        step = 10 ** -digits
        grid = (round(i * step, digits) for i in range(max(1, int(lo / step)), int(hi / step) + 2))
        for w in sorted((w for w in grid if lo <= w <= hi), key=lambda w: abs(w - c / feats)):
            tried += 1
            if tried > 24:
                return None
            if _shapes(_builtin(name, w, spec).state_dict()) == file:
                return w
    return None


def _likely_fix(args, file: dict[str, tuple[int, ...]], spec: dict[str, Any]) -> str:
    """The flags that make the CLI's model fit the file's keys and shapes, or advice."""
    for name in sorted(_BUILTIN, key=lambda n: n != args.model):  # the requested model first
        if set(_shapes(_builtin(name, 0.01, spec).state_dict())) != set(file):
            continue
        width = _fitting_width(name, file, spec)
        flags = ([] if name == args.model else [f"--model {name}"]) + ([f"--width {width:g}"] if width else [])
        if flags:
            return "likely fix: " + " ".join(flags)
        return f"its keys are those of --model {name} but no --width reproduces its shapes"
    if args.model in _BUILTIN:
        return ("its keys are those of neither built-in model: pass its class with --model package.module:Class "
                "(and --model-kwargs)")
    return "check --model and --model-kwargs"


def _check_fits(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: str, args,
                spec: dict[str, Any]) -> None:
    """A one-line ``ValueError`` when ``sd``'s keys or shapes differ from ``model``'s.

    It names the file, the first few differences and the likely fix (``--width``, ``--model``).
    """
    want, have = _shapes(model.state_dict()), _shapes(sd)
    if want == have:
        return

    def dims(shape: tuple[int, ...]) -> str:
        return "x".join(map(str, shape)) or "scalar"
    diffs = [f"{k} {dims(have[k])} (model {dims(want[k])})" for k in want if k in have and have[k] != want[k]]
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]

    def few(items: list[str], n: int = 3) -> str:
        return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
    parts = ([f"shapes in the file: {few(diffs)}"] if diffs else []) + \
            ([f"missing keys: {few(missing)}"] if missing else []) + \
            ([f"unexpected keys: {few(extra)}"] if extra else [])
    model_desc = f"--model {args.model}" + (f" --width {model.width:g}" if hasattr(model, "width") else "")
    raise ValueError(f"checkpoint {path!r} does not fit {model_desc}: {'; '.join(parts)}; "
                     f"{_likely_fix(args, have, spec)}")


def _data(args, spec: dict[str, Any]):
    from landprobe import data as lpdata

    root = Path(args.data) if args.data else None
    if root is None:
        repo = Path(__file__).resolve().parents[3] / "data" / "T91"
        root = repo if repo.is_dir() else lpdata.sample_dir("train")
    patches = lpdata.T91Patches(root, scale=int(spec.get("scale", 2)))
    n = min(args.patches, len(patches))
    idx = torch.linspace(0, len(patches) - 1, n).round().long()  # evenly spread, deterministic
    xs, ys = zip(*(patches[int(i)] for i in idx))
    x, y = torch.stack(xs), torch.stack(ys)
    return [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]


def _loss(args, spec: dict[str, Any]):
    from landprobe.losses import RecursiveSupervisionLoss

    if args.loss == "mse":
        mse = torch.nn.MSELoss()

        def final_mse(out, y):
            return mse(out.final if hasattr(out, "final") else out, y)
        return final_mse
    return RecursiveSupervisionLoss(alpha=args.alpha, reduction=spec.get("loss_scaling", "sum_over_pixels"))


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
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args)
    started = _start_ranks(device, args.timeout)
    code = _probe(args, device)
    if started:
        torch.distributed.destroy_process_group()
    return code


def _probe(args, device: torch.device) -> int:
    from landprobe.engine import Sharding
    from landprobe.probes.landscape import LandscapeProbe

    sds, specs = zip(*(load_checkpoint(p) for p in args.checkpoints))
    spec = specs[0]
    model = _build_model(args, spec)
    for path, sd in zip(args.checkpoints, sds):
        _check_fits(model, sd, path, args, spec)
    model.load_state_dict(sds[0])
    model.to(device)
    sharding = Sharding(data=args.sharding == "data", timeout=args.timeout)
    probe = LandscapeProbe(model, _loss(args, spec), _data(args, spec), bn=args.bn, progress=not args.no_progress,
                           sharding=sharding)
    kind = args.probe
    need = {"interpolate": 2, "connect": 2, "level-set": 2, "plane": (1, 3)}[kind]
    count = len(sds)
    if (isinstance(need, int) and count != need) or (isinstance(need, tuple) and count not in need):
        raise ValueError(f"landprobe probe {kind} takes {need if isinstance(need, int) else ' or '.join(map(str, need))} "
                         f"checkpoint(s), got {count}")
    res, line = _result(args, probe, sds)
    if probe.engine.writes_files:
        _write(args, res, line)
    return 0


def _result(args, probe, sds) -> tuple[Any, str]:
    """The probe's result and its one-line summary."""
    kind, count = args.probe, len(sds)
    if kind == "interpolate":
        res = probe.interpolate(sds[0], sds[1], steps=args.steps, subnet=args.subnet, extend=args.extend)
        return res, (f"L(a) {res.loss_a:.6g}  L(b) {res.loss_b:.6g}  barrier {res.barrier:.6g} at alpha "
                     f"{res.argmax_alpha:.3g}")
    if kind == "plane":
        kw = {"steps": args.steps, "subnet": args.subnet, "seed": args.seed}
        if args.span is not None:
            kw["span"] = args.span
        if count == 3:
            kw.pop("span", None)  # the grid is fitted to the three anchors
            res = probe.plane(through=sds, **kw)
        else:
            res = probe.plane(sds[0], **kw)
        return res, f"center loss {res.center_loss:.6g}; grid {res.losses.shape}"
    if kind == "connect":
        res = probe.connect(sds[0], sds[1], method=args.method, bends=args.bends, steps=args.train_steps, lr=args.lr,
                            checkpoint=args.resume_file)
        return res, f"{args.method} path: barrier {res.barrier:.6g}"
    if args.threshold is None:
        raise ValueError("landprobe probe level-set needs --threshold (a loss value above both endpoints' losses)")
    res = probe.level_set(sds[0], sds[1], args.threshold, checkpoint=args.resume_file)
    return res, f"connected: {res.connected}"


def _write(args, res: Any, line: str) -> None:
    """The result's JSON and PNG in ``--out``, and the summary on standard output."""
    out = Path(args.out)
    stem = args.probe.replace("-", "_")
    res.save(out / f"{stem}.json")
    try:
        ax = res.plot()
        ax = ax[0] if isinstance(ax, (list, tuple)) else ax
        fig = getattr(ax, "figure", None) or ax.flat[0].figure
        fig.savefig(out / f"{stem}.png", dpi=120, bbox_inches="tight")
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install 'landprobe[plot]')")
    print(line)
    print(f"wrote {out / (stem + '.json')}")


def register_probe(sub) -> None:
    """Add ``landprobe probe KIND CHECKPOINT...`` to the ``landprobe`` command.

    Example:
        >>> from landprobe.cli import build_parser
        >>> a = build_parser().parse_args(["probe", "interpolate", "a.pt", "b.pt", "--steps", "11"])
        >>> a.probe, a.checkpoints, a.steps, a.bn
        ('interpolate', ['a.pt', 'b.pt'], 11, 'eval')
        >>> a.sharding, a.timeout                   # used under torchrun only
        ('data', 1800.0)
    """
    p = sub.add_parser("probe", help="probe saved checkpoints: interpolate, plane, connect, level-set",
                       description=" ".join(__doc__.split("\n\n")[1:3]))
    p.add_argument("probe", choices=PROBES, help="which probe")
    p.add_argument("checkpoints", nargs="+", help="checkpoint files (2 for interpolate/connect/level-set; "
                                                   "1 or 3 for plane: a centre, or three models a b c)")
    p.add_argument("--model", default="warship", help="warship (default), drcn, or package.module:Class")
    p.add_argument("--model-kwargs", default=None, help="JSON keyword arguments for an imported model class")
    p.add_argument("--width", type=float, default=None, help="model width (default: from the checkpoint, else 1.0)")
    p.add_argument("--data", default=None, help="folder of training images (default data/T91 or the sample)")
    p.add_argument("--patches", type=int, default=512, help="patches evaluated per point (default 512)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--loss", choices=["study", "mse"], default="study", help="recursive supervision (default) or MSE")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the intermediate outputs in the study loss")
    p.add_argument("--bn", choices=["eval", "train", "recompute"], default="eval")
    p.add_argument("--steps", type=int, default=None, help="points (interpolate: 51; plane: 21 per axis)")
    p.add_argument("--subnet", default=None, help="move only this subnet (e.g. inet)")
    p.add_argument("--extend", type=float, default=0.0, help="interpolate: extrapolate past both ends")
    p.add_argument("--span", type=float, default=None, help="plane: half-width of the grid")
    p.add_argument("--seed", type=int, default=0, help="plane: seed of the random directions")
    p.add_argument("--method", choices=["bezier", "polychain", "neb"], default="polychain", help="connect: curve")
    p.add_argument("--bends", type=int, default=3, help="connect: bends of the curve")
    p.add_argument("--train-steps", type=int, default=200, help="connect: training steps of the bends")
    p.add_argument("--lr", type=float, default=0.01, help="connect: learning rate of the bends")
    p.add_argument("--threshold", type=float, default=None, help="level-set: the loss level")
    p.add_argument("--resume-file", default=None,
                   help="connect / level-set: checkpoint the search to this file; rerun the same command to resume")
    p.add_argument("--out", default="probe-out", help="output folder (default probe-out; written by rank 0 only)")
    p.add_argument("--device", default=None,
                   help="torch device of the model (default: under torchrun with CUDA the GPU of LOCAL_RANK, "
                        "else cpu)")
    p.add_argument("--sharding", choices=SHARDINGS, default="data",
                   help="under torchrun: data (default): the ranks share every pass over the data, each computing "
                        "the one-process result; points: each rank passes over all the data and the points of a "
                        "sweep are split across the ranks")
    p.add_argument("--timeout", type=_positive_seconds, default=1800.0,
                   help="under torchrun: seconds a rank waits for the others at one exchange before it fails "
                        "(default 1800)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_with_defaults)


def _positive_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number of seconds, got {text}")
    return v


def _run_with_defaults(args: argparse.Namespace) -> int:
    if args.steps is None:
        args.steps = 51 if args.probe == "interpolate" else 21
    return _run(args)

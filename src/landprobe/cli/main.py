"""The ``landprobe`` command: ``landprobe demo``, ``landprobe reproduce`` (and more subcommands).

Subcommands are registered through ``SUBCOMMANDS``, a dict name → registrar. A registrar
receives the ``argparse`` sub-parsers object, adds its parser and sets ``func``: a callable
taking the parsed namespace and returning an exit code. Another module adds one with
``landprobe.cli.SUBCOMMANDS["probe"] = register_probe`` (before ``main`` runs).
``landprobe --version`` prints the version.

Every usage error is one line on standard error, ``<command>: error: <message>``, and exit
status 2; ``--help`` texts are plain text.

Under ``torchrun`` (``torchrun --nproc_per_node N -m landprobe.cli probe ...``) every rank runs
the command; rank 0 alone writes the output files and prints the results.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, NoReturn

from landprobe.cli.argtypes import nonneg_int as _nonneg_int
from landprobe.cli.argtypes import positive_float as _positive_float
from landprobe.cli.argtypes import positive_int as _positive_int
from landprobe.common.version import __version__

__all__ = ["main", "SUBCOMMANDS", "build_parser", "check_device", "OneLineParser"]

DEVICE_FORMS = "cpu, cuda, cuda:N, mps"


def _available_devices() -> list[str]:
    """The devices this process can use: ``cpu``, each ``cuda:N``, ``mps``."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(text: str):
    """``torch.device(text)`` when this process can use it, else a one-line ``ValueError``.

    Every subcommand's ``--device`` goes through it (:func:`main` checks it before running
    the command), so a bad value is a usage error, exit status 2.

    Example:
        >>> from landprobe.cli.main import check_device
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("bogus")
        Traceback (most recent call last):
        ValueError: --device 'bogus' is not a device (expected cpu, cuda, cuda:N, mps)
        >>> check_device("cuda:99")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --device 'cuda:99' is not available here...; available: cpu...
    """
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {text!r} is not a device (expected {DEVICE_FORMS})") from None
    kind = device.type
    if kind == "cpu":
        return device
    if kind == "cuda":
        ok = torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count())
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        ok = mps is not None and mps.is_available()
    else:  # other backends (xpu, ...) that torch knows: usable when their module says so
        backend = getattr(torch, kind, None)
        is_available = getattr(backend, "is_available", None)
        ok = bool(is_available()) if callable(is_available) else kind == "meta"
    if not ok:
        if kind == "cuda" and torch.cuda.is_available():
            why = f" ({torch.cuda.device_count()} CUDA device(s))"
        elif kind == "cuda":
            why = f" (torch {torch.__version__} sees no CUDA device)"
        else:
            why = ""
        raise ValueError(f"--device {text!r} is not available here{why}; available: "
                         f"{', '.join(_available_devices())}")
    return device


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``<prog>: error: <message>``, exit 2.

    Its sub-parsers are of the same class, so every subcommand reports errors the same way.

    Example:
        >>> import contextlib, io
        >>> from landprobe.cli.main import OneLineParser
        >>> p = OneLineParser(prog="tool")
        >>> _ = p.add_argument("--n", type=int)
        >>> err = io.StringIO()
        >>> with contextlib.redirect_stderr(err):
        ...     try:
        ...         p.parse_args(["--n", "x"])
        ...     except SystemExit as exc:
        ...         print(exc.code)
        2
        >>> err.getvalue()
        "tool: error: argument --n: invalid int value: 'x' (see tool --help)\\n"
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- reproduce
def _register_reproduce(sub) -> None:
    from landprobe.recipes.reproduce import PRESETS, SETTINGS

    p = sub.add_parser(
        "reproduce", help="train the study's three penalty settings (Xu & Zhang) and summarise them",
        description="Train WARSHIP-XZNet beta on T91 x2 under All-L2, Mix and All-L1 penalties, write "
                    "history.jsonl, checkpoints, summary.json and figures. See docs/reproduce.md.")
    p.add_argument("--setting", required=True, choices=[*SETTINGS, "all"], help="penalty setting, or all three")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS),
                   help="paper: full width, all patches; cpu: width 0.125, 512 random patches per epoch, "
                        "96x96 validation crops (default); cpu-large: width 0.25, all patches, 15 epochs, "
                        "96x96 validation crops")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs (default: the preset's; 45 for paper and cpu, 15 for cpu-large)")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="stop after N optimizer steps")
    p.add_argument("--data", default=None, help="folder of training images (default data/T91 or the sample)")
    p.add_argument("--val", default=None, help="folder of validation images (default data/Set5 or the sample)")
    p.add_argument("--out", default="runs", help="output folder (default runs)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/SETTING/checkpoint.pt")
    p.add_argument("--amp", default="off", choices=["off", "bf16"], help="bf16 autocast for forward+loss (pays only on GPUs and CPUs with AVX512-BF16/AMX; "
                   "emulated, and many times slower, elsewhere)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of init and data order (default 0)")
    p.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    p.add_argument("--monitor", action="store_true", help="save a parameter snapshot every epoch")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None,
                   help="also checkpoint every N steps inside an epoch")
    p.add_argument("--width", type=_positive_float, default=None,
                   help="override the preset's width multiplier (1.0: 945,555 parameters, the paper's 945,318 "
                        "+0.025%%)")
    p.add_argument("--patches-per-epoch", type=_positive_int, default=None,
                   help="override the preset's patches per epoch (a fresh random subset each epoch)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="global mini-batch (default 64)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (1 is fastest on a busy shared CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_reproduce)


def _run_reproduce(args) -> int:
    from landprobe.recipes.reproduce import reproduce

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    extra = {k: getattr(args, k) for k in ("checkpoint_every", "width", "patches_per_epoch", "batch_size")
             if getattr(args, k) is not None}
    res = reproduce(args.setting, preset=args.preset, epochs=args.epochs, max_steps=args.max_steps,
                    data=args.data, val=args.val, out=args.out, resume=args.resume, amp=args.amp,
                    seed=args.seed, device=args.device, monitor=args.monitor,
                    progress=not args.no_progress, **extra)
    wall = time.perf_counter() - t0
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return 0  # rank 0 reports
    if args.setting == "all" and res:
        print(_format_summary(res))
    elif res:
        print(f"{args.setting}: {res['steps']} steps, validation PSNR {res['psnr']:.3f} dB "
              f"(bicubic {res['bicubic_psnr']:.3f} dB)")
    print(f"wall time {wall:.1f} s; results in {args.out}")
    return 0


def _format_summary(s: dict) -> str:
    lines = ["setting   " + "  ".join(f"{k:>14}" for k in next(iter(s["psnr_by_stage"].values())) if k.startswith("epochs"))
             + "     final"]
    for name, row in s["psnr_by_stage"].items():
        stages = [v["mean"] for k, v in row.items() if k.startswith("epochs")]
        lines.append(f"{name:<9} " + "  ".join(f"{v:14.3f}" for v in stages) + f"  {row['final']:8.3f}")
    if s.get("bicubic_psnr") is not None:
        lines.append(f"bicubic   {s['bicubic_psnr']:.3f} dB")
    for c in s["comparisons"].values():
        lines.append(f"{c['claim']}: difference {c['difference_db']:+.3f} dB over epochs "
                     f"{c['epochs'][0]}-{c['epochs'][1]} -> {'supported' if c['supported'] else 'not supported'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- summarize
def _register_summarize(sub) -> None:
    p = sub.add_parser(
        "summarize", help="stage table and the study's comparisons of one run, or over several seeds",
        description="Summarise the runs of landprobe reproduce --setting all. One OUT folder: its stage table and the "
                    "study's two comparisons (summary.json, figures). Several (one per seed): per-seed "
                    "differences, mean, sd and a one-sample t-test (seeds_summary.json, psnr_seeds.png).")
    p.add_argument("outs", nargs="+", metavar="OUT", help="the --out folder(s) of reproduce runs")
    p.add_argument("--to", default=None, help="where the several-seed summary goes (default: parent of the first OUT)")
    p.add_argument("--no-figures", action="store_true", help="write JSON only")
    p.set_defaults(func=_run_summarize)


def _run_summarize(args) -> int:
    from landprobe.recipes.reproduce import summarize, summarize_seeds

    if len(args.outs) == 1:
        print(_format_summary(summarize(args.outs[0], figures=not args.no_figures)))
        return 0
    res = summarize_seeds(args.outs, out=args.to, figures=not args.no_figures)
    for c in res["comparisons"].values():
        print(f"{c['claim']}: per seed {', '.join(f'{d:+.3f}' for d in c['differences_db'])} dB; "
              f"mean {c['mean_db']:+.3f} ± {c['stderr_db']:.3f} (s.e.), 95% CI [{c['ci95_db'][0]:+.3f}, "
              f"{c['ci95_db'][1]:+.3f}], {c['seeds_favouring_claim']}/{c['seeds']} "
              f"seeds favour it, t-test p = {c['t_test_p_two_sided']:.3g} -> "
              f"{'significant' if c['significant'] else ('supported, not significant' if c['supported'] else 'not supported')}")
    return 0


# ----------------------------------------------------------------------------- demo
def _register_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="one-minute demo: train three tiny WARSHIPs, compare with bicubic, interpolate",
        description="On the embedded sample: train a tiny WARSHIP-XZNet beta three times (setting A from two "
                    "seeds, setting B from the first seed), compare each with bicubic, interpolate between "
                    "the two seeds and between the two settings, print a table and write JSON and PNG.")
    p.add_argument("--out", default="landprobe-demo", help="output folder (default landprobe-demo)")
    p.add_argument("--steps", type=_positive_int, default=None, help="training steps per model (default 50)")
    p.add_argument("--points", type=_positive_int, default=None, help="points on each segment [0, 1] (>= 2, default 11)")
    p.add_argument("--extend", type=float, default=None, help="evaluate past both ends by this fraction (default 0.2)")
    p.add_argument("--settings", nargs=2, default=None, metavar=("A", "B"),
                   help="two of all-l2, mix, all-l1 (default all-l2 all-l1)")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads (default 1: fastest on a busy shared CPU)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from landprobe.recipes.demo import demo

    kw = {k: v for k, v in (("steps", args.steps), ("points", args.points), ("settings", args.settings),
                            ("extend", args.extend)) if v is not None}
    demo(out=args.out, seed=args.seed, threads=args.threads, progress=not args.no_progress, verbose=True, **kw)
    return 0


def _register_probe(sub) -> None:
    from landprobe.cli.probe import register_probe

    register_probe(sub)


def _register_align(sub) -> None:
    from landprobe.cli.align import register_align

    register_align(sub)


def _register_study(sub) -> None:
    from landprobe.cli.study import register_study

    register_study(sub)


def _register_figures(sub) -> None:
    from landprobe.cli.study import register_figures

    register_figures(sub)


#: name → registrar(subparsers); other modules may add entries.
SUBCOMMANDS: dict[str, Callable] = {"demo": _register_demo, "reproduce": _register_reproduce,
                                    "summarize": _register_summarize, "probe": _register_probe,
                                    "align": _register_align, "study": _register_study,
                                    "figures": _register_figures}


def build_parser() -> argparse.ArgumentParser:
    """The ``landprobe`` argument parser with every registered subcommand.

    Example:
        >>> from landprobe.cli import build_parser
        >>> args = build_parser().parse_args(["reproduce", "--setting", "mix", "--max-steps", "5"])
        >>> args.setting, args.max_steps, args.preset, args.amp
        ('mix', 5, 'cpu', 'off')
    """
    parser = OneLineParser(prog="landprobe", description="Landscape probes for PyTorch.")
    parser.add_argument("--version", action="version", version=f"landprobe {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, register in SUBCOMMANDS.items():
        register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``landprobe`` console script.

    Argument errors exit with status 2 and one line on standard error; a ``ValueError`` from
    the library (e.g. a data folder that does not exist), a ``--device`` this process cannot
    use (``check_device``) or a checkpoint that does not fit the model is printed as
    ``landprobe <command>: error: <message>`` (one line) and also exits with status 2. Under
    ``torchrun``, a rank whose peers failed (``landprobe.RankFailedError``) prints the
    same line, naming the rank that failed, and exits with status 1.

    Args:
        argv: Arguments (default ``sys.argv[1:]``). The parsed namespace carries the command
            line as ``command_line``: ``sys.argv`` itself, or ``["landprobe", *argv]``.

    Returns:
        The exit status (0 on success).

    Example:
        >>> from landprobe.cli import main
        >>> main(["reproduce", "--setting", "mix", "--data", "/no/such/dir"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        SystemExit: 2
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    name = getattr(args, "prog_name", None) or f"landprobe {args.command}"
    if unknown:  # reported by the subcommand that did not take them
        print(f"{name}: error: unrecognized arguments: {' '.join(unknown)} (see {name} --help)", file=sys.stderr)
        raise SystemExit(2)
    args.command_line = list(sys.argv) if argv is None else ["landprobe", *argv]
    try:
        if isinstance(getattr(args, "device", None), str):
            check_device(args.device)
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except RuntimeError as exc:
        from landprobe.engine import RankFailedError

        if not isinstance(exc, RankFailedError):
            raise
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None

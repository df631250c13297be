"""``landprobe study RUN [RUN ...] --out OUT`` and ``landprobe figures OUT``: the landscape of the
three norm settings' solutions, and its figures redrawn from the JSON."""

from __future__ import annotations

import shlex

from landprobe.cli.argtypes import nonneg_int, positive_int

__all__ = ["register_study", "register_figures"]


def _patches(text: str) -> int | None:
    return None if text == "all" else positive_int(text)


def register_study(sub) -> None:
    from landprobe.capacity import MEASURES
    from landprobe.recipes.study import CAPACITY_GROUPS

    p = sub.add_parser(
        "study", help="the landscape of the three settings' solutions of reproduce runs (one per seed)",
        description="Measure the landscape of the empirical error at the All-L2, Mix and All-L1 solutions of one "
                    "or more `landprobe reproduce --setting all` runs (one per seed): the pairwise curves with "
                    "barriers (and modulo permutations), the plane through the three solutions, the top Hessian "
                    "eigenvalues and trace per setting and subnet, the capacity report per subnet; over several "
                    "runs the paired differences with 95% intervals and t-tests. Writes OUT/study.json and figures. "
                    "See docs/study.md.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="the --out folder(s) of reproduce --setting all")
    p.add_argument("--out", required=True, help="output folder for study.json and the figures")
    p.add_argument("--data", default=None, help="folder of training images (default data/T91 or the sample)")
    p.add_argument("--patches", type=_patches, default=1024,
                   help="patches in the landscape's data, a seeded subset, or 'all' (default 1024)")
    p.add_argument("--curvature-patches", type=positive_int, default=64,
                   help="patches for the Hessian, sharpness and activation measures (default 64)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="patches per batch (default 64)")
    p.add_argument("--points", type=positive_int, default=21, help="points on each curve (>= 3, default 21)")
    p.add_argument("--plane-points", type=nonneg_int, default=0,
                   help="grid side of the plane through the three solutions (0: no plane; default 0)")
    p.add_argument("--top-k", type=nonneg_int, default=5, help="Hessian eigenvalues per scope (0: none; default 5)")
    p.add_argument("--trace-matvecs", type=nonneg_int, default=30,
                   help="Hessian-vector products per trace estimate (0: no trace; default 30)")
    p.add_argument("--no-subnets", action="store_true", help="curvature and capacity of the whole model only")
    p.add_argument("--align", choices=("weights", "activations", "none"), default="weights",
                   help="align hidden units before the aligned curves (default weights; none: no aligned curves)")
    p.add_argument("--capacity", nargs="*", choices=MEASURES, default=list(CAPACITY_GROUPS), metavar="GROUP",
                   help=f"capacity groups (default {' '.join(CAPACITY_GROUPS)}; none given: no capacity report)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the patch subset and the trace (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-figures", action="store_true", help="write JSON only")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_study)


def _run_study(args) -> int:
    import torch

    from landprobe.recipes.study import study

    if args.threads:
        torch.set_num_threads(args.threads)
    res = study(args.runs, args.out, data=args.data, patches=args.patches, curvature_patches=args.curvature_patches,
                batch_size=args.batch_size, points=args.points, plane_points=args.plane_points, top_k=args.top_k,
                trace_matvecs=args.trace_matvecs, subnets=not args.no_subnets,
                align=None if args.align == "none" else args.align, capacity=args.capacity or None, seed=args.seed,
                figures=not args.no_figures, progress=False if args.no_progress else None,
                command=shlex.join(args.command_line))
    for run in res["runs"]:
        bars = ", ".join(f"{k} {c['barrier']:.4g}" for k, c in run["curves"].items())
        print(f"seed {run['seed']}: losses " + ", ".join(f"{s} {v:.4g}" for s, v in run["losses"].items())
              + f"; barriers {bars}")
    for name, rec in res.get("summary", {}).items():
        for comp in ("all-l1_minus_mix", "all-l2_minus_mix"):
            if comp in rec and name in ("psnr", "loss", "top eigenvalue model", "trace model"):
                r = rec[comp]
                print(f"{name} {comp}: mean {r['mean']:+.4g}, 95% CI [{r['ci95'][0]:+.4g}, {r['ci95'][1]:+.4g}], "
                      f"p = {r['p']:.3g} ({r['favouring']}/{r['n']} seeds > 0)")
    print(f"wrote {args.out}/study.json and its figures ({res['wall_seconds']:.0f} s)")
    return 0


def register_figures(sub) -> None:
    p = sub.add_parser(
        "figures", help="redraw the figures of a study or a several-seed summary from its JSON",
        description="Redraw from the JSON alone: a `landprobe study` folder's tables.md, curves.png, plane.png, "
                    "spectra.png and differences.png (from study.json), and a several-seed `landprobe summarize` "
                    "folder's psnr_seeds.png (from seeds_summary.json).")
    p.add_argument("outs", nargs="+", metavar="OUT", help="folder(s) holding study.json and/or seeds_summary.json")
    p.set_defaults(func=_run_figures)


def _run_figures(args) -> int:
    from pathlib import Path

    from landprobe.recipes.reproduce import seeds_figure
    from landprobe.recipes.study import study_figures

    for out in args.outs:
        has_study, has_seeds = (Path(out) / "study.json").is_file(), (Path(out) / "seeds_summary.json").is_file()
        if not (has_study or has_seeds):
            raise ValueError(f"{out!r} holds neither study.json nor seeds_summary.json; pass the --out folder of "
                             f"landprobe study, or the --to folder of landprobe summarize with several runs.")
        written = (study_figures(out) if has_study else []) + ([seeds_figure(out)] if has_seeds else [])
        for path in written:
            print(f"wrote {path}")
    return 0

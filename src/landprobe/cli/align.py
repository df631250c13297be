"""``landprobe align A B -o B_aligned.pt``: permute checkpoint B's hidden units to match A's.

The permutation groups are traced from the model (``--model``, as for ``landprobe probe``) on
the first batch of ``--data``; B is aligned by weight matching (default) or activation
matching on the data, and written as a state_dict that computes exactly what B computes. The
permutation itself goes to ``--permutation`` (default: the output path with ``.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from landprobe.cli.argtypes import nonneg_int, positive_float, positive_int
from landprobe.cli.checkpoints import BUILTIN_MODELS
from landprobe.cli.probe import _data, _load, _model
from landprobe.cli.usercode import is_import_path

__all__ = ["register_align"]


def register_align(sub) -> None:
    """Add ``landprobe align A B -o OUT`` to the ``landprobe`` command.

    Example:
        >>> from landprobe.cli import build_parser
        >>> args = build_parser().parse_args(["align", "a.pt", "b.pt", "-o", "b_aligned.pt"])
        >>> args.checkpoints, args.output, args.method
        (['a.pt', 'b.pt'], 'b_aligned.pt', 'weights')
    """
    p = sub.add_parser(
        "align", help="permute checkpoint B's hidden units to match A's (Git Re-Basin)",
        description="Align checkpoint B to checkpoint A: find the permutation of B's hidden units that best "
                    "matches A (weight matching, or activation matching on --data) and write B permuted, which "
                    "computes the same function. See docs/symmetry.md.")
    p.add_argument("checkpoints", nargs=2, metavar="CHECKPOINT", help="the reference A and the checkpoint B to align")
    p.add_argument("-o", "--output", required=True, help="where B aligned goes (a .pt state_dict)")
    p.add_argument("--method", choices=["weights", "activations"], default="weights",
                   help="weights (default): weight matching; activations: correlation of activations on --data")
    p.add_argument("--permutation", default=None,
                   help="where the permutation goes as JSON (default: OUTPUT with the suffix .json)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of weight matching's group order (default 0)")
    p.add_argument("--max-sweeps", type=positive_int, default=100, help="most sweeps of weight matching (default 100)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="warship",
                   help="warship (default), drcn, or the import path package.module:Class of an nn.Module")
    g.add_argument("--model-kwargs", default=None, metavar="JSON", help="keyword arguments of an imported model class")
    g.add_argument("--width", type=positive_float, default=None, help="width of a built-in model (default: from "
                   "the checkpoint)")
    g.add_argument("--data", default=None,
                   help="a folder of training images (default data/T91 or the embedded sample), or "
                        "package.module:name of (inputs, targets) batches: the inputs to trace (and to correlate)")
    g.add_argument("--patches", type=positive_int, default=None, help="T91 patches used (default 512)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default 64)")
    g.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=_run_align, prog_name=p.prog)


def _check(args) -> tuple[Path, Path]:
    out = Path(args.output)
    if out.is_dir():
        raise ValueError(f"--output {args.output!r} is a folder; pass a file path, e.g. {str(out / 'b_aligned.pt')!r}")
    perm = Path(args.permutation) if args.permutation else out.with_suffix(".json")
    if perm.resolve() == out.resolve():
        raise ValueError(f"--permutation {str(perm)!r} is the --output file; give it another path")
    if args.model not in BUILTIN_MODELS and not is_import_path(args.model):
        raise ValueError(f"--model {args.model!r}: expected warship, drcn or an import path 'package.module:Class'")
    if args.model in BUILTIN_MODELS and args.model_kwargs is not None:
        raise ValueError(f"--model-kwargs applies to an imported --model package.module:Class, not --model "
                         f"{args.model}; use --width for a built-in model")
    if args.data is not None and not is_import_path(args.data) and not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data!r} is neither a folder of images nor an import path "
                         f"'package.module:name'")
    return out, perm


def _first_inputs(data) -> torch.Tensor:
    for batch in data:
        if isinstance(batch, (tuple, list)) and batch:
            return batch[0]
        raise ValueError("--data yields batches that are not (inputs, targets) pairs; align needs the inputs")
    raise ValueError("--data yielded no batch; pass a non-empty data set")


def _run_align(args) -> int:
    from landprobe.common.io import atomic_torch_save
    from landprobe.symmetry import activation_matching, permutation_spec, permute, weight_matching

    out, perm_path = _check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    sds, specs, records = _load(args)
    model, sds, model_record = _model(args, sds, specs[0])
    data, data_record = _data(args, specs[0])
    model.load_state_dict(sds[0])
    spec = permutation_spec(model, _first_inputs(data))
    if args.method == "weights":
        perm = weight_matching(sds[0], sds[1], spec, seed=args.seed, max_sweeps=args.max_sweeps)
    else:
        perm = activation_matching(model, sds[1], data, spec)
    aligned = permute(sds[1], perm, spec)
    perm.settings.update(checkpoints=records, model=model_record, data=data_record,
                         command=list(getattr(args, "command_line", sys.argv)))
    written = [atomic_torch_save(aligned, out), perm.save(perm_path)]
    moved = sum(int(i != j) for p in perm.perms.values() for j, i in enumerate(p))
    units = sum(len(p) for p in perm.perms.values())
    print(f"{args.method} matching: {len(perm.perms)} groups, {moved} of {units} units moved; objective "
          f"{perm.objective[0]:.6g} -> {perm.objective[-1]:.6g}")
    print("wrote " + ", ".join(map(str, written)))
    return 0

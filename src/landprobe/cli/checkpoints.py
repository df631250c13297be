"""Checkpoints for ``landprobe probe``: reading them, the built-in models that fit them, and the
one-line error when one does not fit.

A checkpoint is a recipe checkpoint of ``landprobe reproduce`` (``{"model": state_dict,
"spec": {...}}``, the width read from its spec) or a plain state_dict saved with ``torch.save``
(the width of a built-in model inferred from the first conv's output channels). Keys carrying
the prefixes of DDP (``module.``) or ``torch.compile`` (``_orig_mod.``) are renamed to the
model's by ``landprobe.params.unwrap_state_dict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from landprobe.common.io import load_torch
from landprobe.params import unwrapped_key

__all__ = ["load_checkpoint", "BUILTIN_MODELS", "builtin_model", "model_width", "check_fits"]

#: The ``--model`` names of the library's own models.
BUILTIN_MODELS = ("warship", "drcn")


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, spec)`` from a recipe checkpoint or a plain state_dict file.

    ``spec`` holds the recipe's settings (width, recursions, loss scaling, ...) or is empty.
    Files are read with ``torch.load(..., weights_only=True)``; every problem is a one-line
    ``ValueError`` naming the file.

    Example:
        >>> import tempfile, os, torch
        >>> from landprobe.cli.checkpoints import load_checkpoint
        >>> f = os.path.join(tempfile.mkdtemp(), "sd.pt")
        >>> torch.save(torch.nn.Linear(2, 1).state_dict(), f)
        >>> sd, spec = load_checkpoint(f)
        >>> sorted(sd), spec
        (['bias', 'weight'], {})
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a folder; pass the checkpoint file inside it "
                         f"(e.g. {str(path / 'checkpoint.pt')!r})")
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist; pass a file written by landprobe reproduce "
                         f"(OUT/SETTING/checkpoint.pt) or by torch.save(model.state_dict(), ...)")
    obj = load_torch(path, map_location="cpu")  # LoadError (a ValueError) names the file
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"], dict(obj.get("spec", {}))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(f"checkpoint {str(path)!r} holds neither a landprobe recipe checkpoint nor a state_dict "
                     f"(a dict of tensors); save one with torch.save(model.state_dict(), path)")


def builtin_model(name: str, width: float, spec: dict[str, Any] | None = None) -> torch.nn.Module:
    """The built-in model ``name`` (``warship`` or ``drcn``) at ``width``; recursions from ``spec``.

    Example:
        >>> from landprobe.cli.checkpoints import builtin_model
        >>> builtin_model("warship", 0.125).enet.conv1.out_channels
        24
    """
    from landprobe import models

    spec = spec or {}
    if name == "warship":
        return models.WarshipXZNetBeta(width=width, recursions=int(spec.get("recursions", 4)))
    return models.DRCN(width=width)


def _shapes(sd: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes by key, the keys stripped of the prefixes of DDP and torch.compile."""
    return {unwrapped_key(key): tuple(value.shape) for key, value in sd.items()}


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
            if _shapes(builtin_model(name, w, spec).state_dict()) == file:
                return w
    return None


def model_width(name: str, width: float | None, sd: dict[str, Any], spec: dict[str, Any]) -> tuple[float, str]:
    """``(width, where it came from)`` for the built-in model ``name`` and checkpoint ``sd``.

    ``--width`` when given, else the recipe checkpoint's spec, else the width at which the
    model's shapes equal the checkpoint's (found from the first conv's output channels), else 1.0.

    Example:
        >>> from landprobe.cli.checkpoints import builtin_model, model_width
        >>> sd = builtin_model("warship", 0.25).state_dict()
        >>> model_width("warship", None, sd, {})
        (0.25, 'checkpoint shapes')
        >>> model_width("warship", 0.5, sd, {})
        (0.5, '--width')
    """
    if width is not None:
        return float(width), "--width"
    if "width" in spec:
        return float(spec["width"]), "checkpoint spec"
    found = _fitting_width(name, _shapes(sd), spec)
    if found is not None:
        return found, "checkpoint shapes"
    return 1.0, "default"


def _likely_fix(model_name: str, file: dict[str, tuple[int, ...]], spec: dict[str, Any]) -> str:
    """The flags that make the CLI's model fit the file's keys and shapes, or advice."""
    for name in sorted(BUILTIN_MODELS, key=lambda n: n != model_name):  # the requested model first
        if set(_shapes(builtin_model(name, 0.01, spec).state_dict())) != set(file):
            continue
        width = _fitting_width(name, file, spec)
        flags = ([] if name == model_name else [f"--model {name}"]) + ([f"--width {width:g}"] if width else [])
        if flags:
            return "likely fix: " + " ".join(flags)
        return f"its keys are those of --model {name} but no --width reproduces its shapes"
    if model_name in BUILTIN_MODELS:
        return ("its keys are those of neither built-in model: pass its class with --model package.module:Class "
                "(and --model-kwargs)")
    return "check --model and --model-kwargs"


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def check_fits(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: str, model_name: str,
               spec: dict[str, Any]) -> None:
    """A one-line ``ValueError`` when ``sd``'s keys or shapes differ from ``model``'s.

    It names the file, the first few differences and the likely fix (``--width``, ``--model``).

    Example:
        >>> import torch
        >>> from landprobe.cli.checkpoints import check_fits
        >>> check_fits(torch.nn.Linear(2, 1), torch.nn.Linear(3, 1).state_dict(), "m.pt", "my:Net", {})
        Traceback (most recent call last):
        ValueError: checkpoint 'm.pt' does not fit --model my:Net: shapes in the file: weight 1x3 (model 1x2); check --model and --model-kwargs
    """
    want, have = {k: tuple(v.shape) for k, v in model.state_dict().items()}, {k: tuple(v.shape) for k, v in sd.items()}
    if want == have:
        return
    diffs = [f"{k} {_dims(have[k])} (model {_dims(want[k])})" for k in want if k in have and have[k] != want[k]]
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    parts = ([f"shapes in the file: {_few(diffs)}"] if diffs else []) + \
            ([f"missing keys: {_few(missing)}"] if missing else []) + \
            ([f"unexpected keys: {_few(extra)}"] if extra else [])
    model_desc = f"--model {model_name}" + (f" --width {model.width:g}" if model_name in BUILTIN_MODELS else "")
    raise ValueError(f"checkpoint {path!r} does not fit {model_desc}: {'; '.join(parts)}; "
                     f"{_likely_fix(model_name, _shapes(sd), spec)}")

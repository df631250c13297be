"""Base class of every result: a dataclass of plain arrays plus the settings that made it."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import numpy as np

from landprobe.common.io import load_json, save_json, to_jsonable

__all__ = ["Result", "require_matplotlib"]

R = typing.TypeVar("R", bound="Result")


def _as_float_array(value: Any) -> np.ndarray:
    def conv(v):
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, str):
            return float(v)  # "nan", "inf", "-inf"
        return v

    return np.asarray(conv(value), dtype=np.float64)


def require_matplotlib():
    """Import ``matplotlib.pyplot`` or say how to install it."""
    try:
        import matplotlib

        if os.environ.get("DISPLAY", "") == "" and "MPLBACKEND" not in os.environ:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib, an optional extra: pip install 'landprobe[plot]'"
        ) from exc
    return plt


class Result:
    """Mixin for result dataclasses: ``to_dict``, atomic JSON ``save``, ``load``.

    Fields annotated as ``np.ndarray`` are stored as (nested) lists and come back as
    float64 arrays; every other field goes through JSON as it is.
    """

    kind: typing.ClassVar[str] = "result"

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = to_jsonable(getattr(self, f.name))
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON, atomically; read it back with :meth:`load`."""
        return save_json(path, self.to_dict())

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        data = dict(data)
        kind = data.pop("kind", cls.__name__)
        if kind != cls.__name__:
            raise ValueError(f"this JSON holds a {kind}, not a {cls.__name__}; load it with lp.{kind}.load")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            value = data[f.name]
            hint = hints.get(f.name)
            if hint is np.ndarray or (typing.get_origin(hint) is typing.Union and np.ndarray in typing.get_args(hint)):
                value = None if value is None else _as_float_array(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a result written by :meth:`save`."""
        return cls.from_dict(load_json(path))

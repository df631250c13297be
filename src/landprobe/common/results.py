"""Base class of every result: a dataclass of plain arrays plus the settings that made it."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import numpy as np

from landprobe.common.io import LoadError, load_json, save_json, to_jsonable

__all__ = ["Result", "require_matplotlib", "FORMAT_VERSION"]

#: Version of the JSON layout that :meth:`Result.save` writes (the ``"format"`` field); files
#: without the field are version 1.
FORMAT_VERSION = 1

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
    float64 arrays; every other field goes through JSON as it is. A saved file carries
    ``"format"`` (:data:`FORMAT_VERSION`); :meth:`load` refuses newer versions and reports
    every unreadable file as :class:`~landprobe.common.io.LoadError`.
    """

    kind: typing.ClassVar[str] = "result"
    #: Groups of array fields whose first dimension must agree (checked on loading).
    _same_length: typing.ClassVar[tuple[tuple[str, ...], ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = to_jsonable(getattr(self, f.name))
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON, atomically; read it back with :meth:`load`."""
        data = self.to_dict()
        data.setdefault("format", FORMAT_VERSION)
        return save_json(path, data)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """Rebuild a result from :meth:`to_dict`'s output (``LoadError`` if it does not fit)."""
        if not isinstance(data, dict):
            raise LoadError(None, f"expected a JSON object for a {cls.__name__}, got {type(data).__name__}",
                            "pass what to_dict() returned")
        data = dict(data)
        version = data.pop("format", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise LoadError(None, f"the format field {version!r} is not a format version, so this is not a "
                            f"landprobe result file", "pass a file written by a result's save method")
        if version > FORMAT_VERSION:
            raise LoadError(None, f"the file has format version {version}, newer than the {FORMAT_VERSION} this "
                            f"landprobe reads", "upgrade landprobe (pip install -U landprobe)")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        if "kind" not in data and not any(f.name in data for f in fields):
            raise LoadError(None, f"none of a {cls.__name__}'s fields are there, so this is not a landprobe "
                            f"result file", "pass a file written by a result's save method")
        kind = data.pop("kind", cls.__name__)
        if kind != cls.__name__:
            raise LoadError(None, f"this JSON holds a {kind}, not a {cls.__name__}", f"load it with lp.{kind}.load")
        required = [f.name for f in fields if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise LoadError(None, f"the {cls.__name__} lacks the field(s) {', '.join(map(repr, missing))} "
                            f"(truncated or edited?)", "save the result again")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in fields:
            if f.name not in data:
                continue
            value = data[f.name]
            hint = hints.get(f.name)
            if hint is np.ndarray or (typing.get_origin(hint) is typing.Union and np.ndarray in typing.get_args(hint)):
                try:
                    value = None if value is None else _as_float_array(value)
                except (TypeError, ValueError) as exc:
                    raise LoadError(None, f"field {f.name!r} of the {cls.__name__} is not an array of numbers "
                                    f"({exc})", "save the result again") from exc
            kwargs[f.name] = value
        for group in cls._same_length:
            sizes = {n: len(kwargs[n]) for n in group if kwargs.get(n) is not None and np.ndim(kwargs[n]) > 0}
            if len(set(sizes.values())) > 1:
                found = ", ".join(f"{n}: {k}" for n, k in sizes.items())
                raise LoadError(None, f"the {cls.__name__}'s fields {', '.join(sizes)} should have the same "
                                f"length but have {found} (truncated or edited?)", "save the result again")
        return cls(**kwargs)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a result written by :meth:`save`.

        Raises:
            LoadError: If the file is missing, empty, cut short or not valid JSON, is not a
                landprobe result, holds another kind of result, lacks fields, has array fields
                of disagreeing lengths or has a newer format version; the message names the file.
        """
        try:
            return cls.from_dict(load_json(path))
        except LoadError as err:
            if err.path is not None:
                raise
            raise err.with_path(path) from err.__cause__

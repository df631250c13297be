"""Atomic file writing and JSON helpers shared by every result and checkpoint."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "LoadError", "atomic_write", "save_json", "load_json", "load_torch", "atomic_torch_save", "to_jsonable",
    "restore_floats", "sha256",
]


class LoadError(ValueError):
    """A file that landprobe cannot read back: what is wrong with it, and what to do.

    Raised for missing, empty, truncated or corrupt files, files that are not landprobe's,
    results of another kind than asked for, inconsistent fields and newer format versions.
    It is a ``ValueError``, so code that caught ``ValueError`` keeps working.

    Attributes:
        path: The file (a string), or ``None`` when the data did not come from a file.
        problem: What is wrong with it.
        remedy: What to do about it (may be empty).

    Example:
        >>> from landprobe.common.io import LoadError
        >>> err = LoadError("run/curve.json", "the file is empty", "save the result again")
        >>> print(err)
        cannot load 'run/curve.json': the file is empty; save the result again
        >>> isinstance(err, ValueError), err.path
        (True, 'run/curve.json')
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, remedy: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(self._message())

    def _message(self) -> str:
        head = self.problem if self.path is None else f"cannot load {self.path!r}: {self.problem}"
        return f"{head}; {self.remedy}" if self.remedy else head

    def with_path(self, path: str | os.PathLike) -> "LoadError":
        """The same error naming ``path`` (for data first checked without knowing its file).

        Example:
            >>> from landprobe.common.io import LoadError
            >>> print(LoadError(None, "field 'losses' is missing").with_path("c.json"))
            cannot load 'c.json': field 'losses' is missing
        """
        return LoadError(path, self.problem, self.remedy)

    def __reduce__(self):
        return (type(self), (self.path, self.problem, self.remedy))


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Write a file so that readers see either the old or the new content, never half.

    ``write`` receives an open file object in the destination's folder; the file is
    flushed, fsynced and renamed over ``path`` only when ``write`` returns.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a folder; pass a file path inside it, e.g. "
                                f"{str(path / 'result.json')!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch values, dataclass-like containers and non-finite floats to JSON."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON atomically (non-finite floats stored as strings)."""
    try:
        text = json.dumps(to_jsonable(obj), indent=indent)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot write {str(path)!r}: {exc}; keep the values (settings included) to numbers, "
                        f"strings, lists, dicts, arrays and tensors") from exc
    return atomic_write(path, lambda fh: fh.write(text + "\n"))


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object written by :func:`save_json`.

    Raises:
        LoadError: If the file is missing, empty, not valid JSON (the message gives the line
            and column where parsing stopped, e.g. a file cut short) or holds something other
            than an object at the top level.

    Example:
        >>> import os, tempfile
        >>> from landprobe.common.io import LoadError, load_json, save_json
        >>> f = save_json(os.path.join(tempfile.mkdtemp(), "x.json"), {"v": 1})
        >>> load_json(f)
        {'v': 1}
        >>> _ = f.write_text('{"v": ')
        >>> try:
        ...     load_json(f)
        ... except LoadError as err:
        ...     print(err.problem)
        the file is truncated or not valid JSON (Expecting value at line 1 column 7)
    """
    redo = "write it again (for a result, with its save method)"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise LoadError(path, "the file does not exist", "check the path") from None
    except IsADirectoryError:
        raise LoadError(path, "this is a folder, not a file", "pass the JSON file inside it") from None
    except UnicodeDecodeError as exc:
        raise LoadError(path, f"the file is not text ({exc.reason} at byte {exc.start}), so not a landprobe "
                        f"JSON file", redo) from exc
    if not text.strip():
        raise LoadError(path, "the file is empty (an interrupted write?)", redo)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(path, f"the file is truncated or not valid JSON ({exc.msg} at line {exc.lineno} "
                        f"column {exc.colno})", redo) from exc
    if not isinstance(data, dict):
        raise LoadError(path, f"the top level is a JSON {_json_type(data)}, not an object, so this is not a "
                        f"landprobe file", "pass a file written by landprobe")
    return data


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def load_torch(path: str | os.PathLike, map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True, map_location=map_location)``, with unreadable files
    reported as :class:`LoadError` naming the file.

    Empty, truncated (an interrupted copy or write) and garbage files, and files holding
    objects other than tensors and plain containers, raise ``LoadError`` instead of
    ``EOFError``, ``RuntimeError`` or ``UnpicklingError``.

    Example:
        >>> import os, tempfile, torch
        >>> from landprobe.common.io import LoadError, atomic_torch_save, load_torch
        >>> f = atomic_torch_save({"step": 3}, os.path.join(tempfile.mkdtemp(), "c.pt"))
        >>> load_torch(f)
        {'step': 3}
        >>> _ = f.write_bytes(f.read_bytes()[:40])
        >>> try:
        ...     load_torch(f)
        ... except LoadError as err:
        ...     print(err.problem.split(" (")[0])
        the file is truncated or corrupt
    """
    redo = "delete it and write it again (or restore it from a copy)"
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise LoadError(path, "the file does not exist", "check the path") from None
    except IsADirectoryError:
        raise LoadError(path, "this is a folder, not a file", "pass the file inside it") from None
    except EOFError as exc:
        raise LoadError(path, "the file is empty or cut short (an interrupted write?)", redo) from exc
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise LoadError(path, "the file holds Python objects other than tensors and plain containers, so "
                            "it was not written by landprobe", "pass a landprobe checkpoint or a state_dict "
                            "saved with torch.save") from exc
        raise LoadError(path, f"the file is corrupt or not a torch file ({_first_line(exc)})", redo) from exc
    except RuntimeError as exc:
        text = str(exc)
        if "PytorchStreamReader failed" in text or "invalid header" in text or "archive" in text:
            raise LoadError(path, f"the file is truncated or corrupt ({_first_line(exc)})", redo) from exc
        raise
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise LoadError(path, f"the file is truncated or corrupt ({_first_line(exc)})", redo) from exc
        raise
    except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError) as exc:
        # bytes that are no zip archive go to the legacy unpickler, which fails in these ways on garbage
        raise LoadError(path, f"the file is corrupt or not a torch file ({_first_line(exc)})", redo) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(exc).__name__}: {first}"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`; load back with ``weights_only=True``."""
    def write(fh: Any) -> None:
        try:
            torch.save(obj, fh)
        except (AttributeError, TypeError, pickle.PicklingError) as exc:
            raise TypeError(f"cannot write {str(path)!r}: {exc}; save tensors, numbers, strings and containers of "
                            f"them (not functions or open resources)") from exc

    return atomic_write(path, write, binary=True)


def restore_floats(obj: Any) -> Any:
    """The inverse of :func:`to_jsonable` for floats: "nan", "inf" and "-inf" back to floats."""
    if isinstance(obj, dict):
        return {k: restore_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [restore_floats(v) for v in obj]
    if obj in ("nan", "inf", "-inf"):
        return float(obj)
    return obj


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (what a results JSON records of its input files).

    Example:
        >>> import os, tempfile
        >>> from landprobe.common.io import sha256
        >>> f = os.path.join(tempfile.mkdtemp(), "x")
        >>> _ = open(f, "wb").write(b"abc")
        >>> sha256(f)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Cleanup of the temporary files that :func:`landprobe.common.io.atomic_write` leaves behind.

``atomic_write(path, ...)`` writes into ``tempfile.mkstemp(prefix=f".{path.name}.",
suffix=".tmp", dir=path.parent)``, i.e. ``.NAME.XXXXXXXX.tmp`` beside ``path`` (``XXXXXXXX``:
eight characters of ``[a-z0-9_]``), and renames it over ``path`` when the write completes. A
process killed during the write leaves that temporary file behind; :func:`remove_stale_temps`
removes such files when a run starts or resumes with a known output path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["remove_stale_temps"]

# The random part of a ``tempfile.mkstemp`` name: 8 characters of this alphabet.
_RANDOM_PART = r"[a-z0-9_]{8}"


def _temp_name_pattern(name: str) -> re.Pattern[str]:
    """The full-match pattern of the temporary files ``atomic_write`` uses for a target ``name``."""
    return re.compile(rf"\.{re.escape(name)}\.{_RANDOM_PART}\.tmp")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an interrupted :func:`~landprobe.common.io.atomic_write` of
    ``path`` left beside it; return the paths removed (sorted).

    Only regular files named ``.NAME.XXXXXXXX.tmp`` (the ``atomic_write`` naming: ``NAME`` is
    ``path``'s file name, ``XXXXXXXX`` eight characters of ``[a-z0-9_]``) in ``path``'s folder
    are removed; every other file, ``path`` itself included, is left alone, as are folders and
    symbolic links. A missing folder removes nothing. Call it only where this process is the
    sole writer of ``path`` (the start of a run, on the process that writes its files): the
    temporary file of a write in progress elsewhere would be removed too.

    Args:
        path: The target file of ``atomic_write`` (it need not exist).

    Returns:
        The removed files, as :class:`pathlib.Path` objects, sorted.

    Raises:
        OSError: If a matching file exists but cannot be removed (e.g. ``PermissionError``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from landprobe.common.tempfiles import remove_stale_temps
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in (".ckpt.pt.k2j4_x9q.tmp", ".ckpt.pt.backup.tmp", ".other.pt.k2j4_x9q.tmp", "ckpt.pt"):
        ...     _ = (folder / name).write_bytes(b"")
        >>> [p.name for p in remove_stale_temps(folder / "ckpt.pt")]
        ['.ckpt.pt.k2j4_x9q.tmp']
        >>> sorted(p.name for p in folder.iterdir())
        ['.ckpt.pt.backup.tmp', '.other.pt.k2j4_x9q.tmp', 'ckpt.pt']
        >>> remove_stale_temps(folder / "missing" / "ckpt.pt")
        []
    """
    path = Path(path)
    pattern = _temp_name_pattern(path.name)
    folder = path.parent
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        if not pattern.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:  # removed meanwhile
            continue
        removed.append(folder / entry.name)
    return sorted(removed)

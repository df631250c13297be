"""The one progress facility: a tqdm bar with ETA on a terminal, silent otherwise.

Every call that can take more than a couple of seconds (each probe, Lanczos, the trace and
density estimators, the capacity report, monitor records, training epochs) reports here.
``progress=None`` (the default everywhere) shows a bar only when standard error is a
terminal; ``True`` always shows one, ``False`` never. Under ``torch.distributed`` only rank 0
draws.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from landprobe.common.distributed import rank_and_world

__all__ = ["Progress", "progress", "wants_progress"]

T = TypeVar("T")


def wants_progress(enabled: bool | None) -> bool:
    """Whether a bar is drawn for ``enabled`` (``None``: only on a terminal, rank 0 only).

    Example:
        >>> from landprobe.engine import wants_progress
        >>> wants_progress(True), wants_progress(False)
        (True, False)
    """
    if rank_and_world()[0] != 0:
        return False
    if enabled is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(enabled)


class Progress:
    """A bar that may be a no-op: ``update(n)``, ``set(**postfix)``, ``close()``; a context manager.

    Args:
        desc: What runs (``"interpolate"``, ``"Lanczos"``, ...).
        total: Units of work, or ``None`` when unknown (then the bar counts without an ETA).
        enabled: ``None`` (a terminal only), ``True`` or ``False``.
        unit: Name of one unit (``"point"``, ``"product"``, ...).

    Example:
        >>> from landprobe.engine import Progress
        >>> with Progress("work", total=3, enabled=False) as bar:
        ...     for _ in range(3):
        ...         bar.update()
        >>> bar.n
        3
    """

    def __init__(self, desc: str, total: int | None = None, *, enabled: bool | None = None, unit: str = "it"):
        self.n = 0
        self._bar: Any = None
        if wants_progress(enabled):
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set(self, **postfix: Any) -> None:
        """Show ``key=value`` pairs beside the bar (e.g. the current residual)."""
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable[T], desc: str, *, total: int | None = None, enabled: bool | None = None,
             unit: str = "it") -> Iterator[T]:
    """Iterate ``iterable`` with a :class:`Progress` bar (closed when the loop ends or breaks).

    Example:
        >>> from landprobe.engine import progress
        >>> sum(progress(range(4), "sum", enabled=False))
        6
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(desc, total, enabled=enabled, unit=unit) as bar:
        for item in iterable:
            yield item
            bar.update()

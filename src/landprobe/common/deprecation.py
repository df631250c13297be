"""Renamed keywords: the old spelling keeps working for one release, with a DeprecationWarning."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

__all__ = ["renamed_keywords"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """Accept ``old=value`` as ``new=value`` with a ``DeprecationWarning`` (``old="new"`` pairs).

    Giving both spellings is a ``TypeError`` naming both.

    Example:
        >>> import warnings
        >>> from landprobe.common.deprecation import renamed_keywords
        >>> @renamed_keywords(steps="points")
        ... def grid(points: int = 3) -> int:
        ...     return points
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     grid(steps=5), str(caught[0].message)
        (5, 'grid(steps=...) is renamed grid(points=...); steps= will be removed in the next release')
    """
    def wrap(func: F) -> F:
        name = func.__qualname__.replace(".__init__", "").replace(".<locals>", "")

        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{name}() got both {old}= and {new}=; {old}= is the old name of "
                                    f"{new}=, pass only {new}=")
                warnings.warn(f"{name}({old}=...) is renamed {name}({new}=...); {old}= will be removed "
                              f"in the next release", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)
        return inner  # type: ignore[return-value]
    return wrap

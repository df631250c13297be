"""Argument types of the ``landprobe`` command: numbers checked as they are parsed.

Each is an ``argparse`` ``type=``: it returns the value or raises ``ArgumentTypeError`` with a
message that argparse prefixes with the flag (``argument --points: expected ...``).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

__all__ = ["positive_int", "nonneg_int", "positive_float", "nonneg_float", "finite_float", "positive_seconds",
           "int_at_least"]


def positive_int(text: str) -> int:
    """An integer >= 1.

    Example:
        >>> from landprobe.cli.argtypes import positive_int
        >>> positive_int("3")
        3
        >>> positive_int("0")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: expected a positive integer (>= 1), got 0
    """
    return int_at_least(1, "a positive integer")(text)


def nonneg_int(text: str) -> int:
    """An integer >= 0.

    Example:
        >>> from landprobe.cli.argtypes import nonneg_int
        >>> nonneg_int("0")
        0
    """
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def int_at_least(low: int, what: str | None = None) -> Callable[[str], int]:
    """A type accepting integers >= ``low``.

    Example:
        >>> from landprobe.cli.argtypes import int_at_least
        >>> int_at_least(2)("2")
        2
        >>> int_at_least(2)("1")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: expected an integer >= 2, got 1
    """
    bound = f" (>= {low})" if what else ""
    what = what or f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}{bound}, got {v}")
        return v
    parse.__name__ = f"int_at_least_{low}"
    return parse


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_float(text: str) -> float:
    """A finite number > 0.

    Example:
        >>> from landprobe.cli.argtypes import positive_float
        >>> positive_float("0.5")
        0.5
        >>> positive_float("inf")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: expected a positive finite number, got inf
    """
    v = _float(text, "a positive number")
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return v


def nonneg_float(text: str) -> float:
    """A finite number >= 0.

    Example:
        >>> from landprobe.cli.argtypes import nonneg_float
        >>> nonneg_float("0")
        0.0
    """
    v = _float(text, "a non-negative number")
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a non-negative finite number, got {text}")
    return v


def finite_float(text: str) -> float:
    """Any finite number.

    Example:
        >>> from landprobe.cli.argtypes import finite_float
        >>> finite_float("-1.5")
        -1.5
    """
    v = _float(text, "a number")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return v


def positive_seconds(text: str) -> float:
    """A positive finite number of seconds.

    Example:
        >>> from landprobe.cli.argtypes import positive_seconds
        >>> positive_seconds("60")
        60.0
    """
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number of seconds, got {text}")
    return v

"""Argument checks shared by every layer: each error names the argument, the value and what
was expected.

Example:
    >>> from landprobe.common.checks import check_int, check_positive
    >>> check_int("steps", 3, 1, "training steps")
    3
    >>> check_positive("lr", 0.0, "the learning rate")
    Traceback (most recent call last):
    ...
    ValueError: lr=0.0; expected a finite number > 0 (the learning rate)
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

__all__ = ["check_int", "check_positive", "check_nonnegative", "check_module", "check_loss_fn"]


def _what(what: str) -> str:
    return f" ({what})" if what else ""


def check_int(name: str, value: Any, low: int, what: str = "") -> int:
    """``value`` as an int >= ``low`` (bools refused); ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r}; expected an integer >= {low}{_what(what)}")
    return value


def check_positive(name: str, value: Any, what: str = "") -> float:
    """``value`` as a finite float > 0; ``ValueError`` naming ``name`` otherwise."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}; expected a finite number > 0{_what(what)}")
    return float(value)


def check_nonnegative(name: str, value: Any, what: str = "") -> float:
    """``value`` as a finite float >= 0; ``ValueError`` naming ``name`` otherwise."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value!r}; expected a finite number >= 0{_what(what)}")
    return float(value)


def check_module(model: Any, who: str = "model") -> nn.Module:
    """``model`` if it is an ``nn.Module`` instance with values (not on the ``meta`` device); a
    ``TypeError`` or ``ValueError`` that says the fix otherwise.

    Example:
        >>> import torch
        >>> from landprobe.common.checks import check_module
        >>> check_module(torch.nn.Linear(1, 1, device="meta"))
        Traceback (most recent call last):
        ValueError: model (Linear) is on the meta device ('weight' has a shape but no values); materialise it...
    """
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise TypeError(f"{who}: received the class {model.__name__}; instantiate it: {model.__name__}(...)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who} has type {type(model).__name__}; expected a torch.nn.Module instance")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type == "meta":
            raise ValueError(f"{who} ({type(model).__name__}) is on the meta device ({name!r} has a shape but no "
                             f"values); materialise it first, e.g. model.to_empty(device='cpu') and then "
                             f"model.load_state_dict(...)")
    return model


def check_loss_fn(loss_fn: Any, who: str = "loss_fn") -> Any:
    """``loss_fn`` if it is a callable instance; a ``TypeError`` that says the fix otherwise."""
    if isinstance(loss_fn, type):
        raise TypeError(f"{who}: received the class {loss_fn.__name__}; instantiate it: {loss_fn.__name__}()")
    if not callable(loss_fn):
        raise TypeError(f"{who} must be callable (e.g. torch.nn.MSELoss()), got {type(loss_fn).__name__}")
    return loss_fn

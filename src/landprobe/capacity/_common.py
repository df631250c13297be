"""Helpers shared by the capacity measures (private)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from landprobe.params import Selector, select

MODEL = "model"


def check_model(model: Any, who: str) -> None:
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise TypeError(f"{who}: model is the class {model.__name__}; instantiate it: {model.__name__}(...)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model has type {type(model).__name__}; expected a torch.nn.Module instance")


def scopes(model: nn.Module, subnets: Mapping[Any, Selector] | Sequence[Selector] | None) -> dict[str, list[str]]:
    """``{"model": every parameter, <subnet>: its parameters, ...}``; subnets may overlap."""
    out = {MODEL: select(model, None)}
    if subnets is None:
        return out
    if isinstance(subnets, Mapping):
        items = list(subnets.items())
    elif isinstance(subnets, (list, tuple)):
        items = [(s if isinstance(s, str) else repr(s), s) for s in subnets]
    else:
        raise TypeError(f"subnets has type {type(subnets).__name__}; expected a mapping name -> selector "
                        f"(e.g. {{'enet': 'enet', 'head': 'fc.*'}}), a list of selectors, or None")
    for key, sel in items:
        if str(key) == MODEL:
            raise ValueError(f"subnets has a key {key!r}, which is reserved for the whole model; rename it")
        out[str(key)] = select(model, sel)
    return out


def weight_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The names among ``names`` of parameters with at least 2 dimensions (the layers' matrices)."""
    params = dict(model.named_parameters())
    return [n for n in names if params[n].dim() >= 2]


def as_matrix(w: Tensor) -> Tensor:
    """A weight as the matrix ``(shape[0], -1)``: a Conv weight ``(out, in, k, k)`` becomes ``(out, in*k*k)``."""
    return w.reshape(w.shape[0], -1)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an integer of at least {minimum}")
    return value


def check_positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r}; expected a finite float {'>=' if allow_zero else '>'} 0")
    return float(value)

"""Helpers shared by the capacity measures (private)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from landprobe.common.checks import check_module
from landprobe.params import Selector, select

MODEL = "model"


def check_model(model: Any, who: str) -> None:
    """``model`` must be an nn.Module instance; the error names the measure ``who``."""
    check_module(model, f"{who}: model")


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

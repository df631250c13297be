"""The restore promise and the one-probe-per-model rule.

:class:`ModelGuard` snapshots everything a probe may touch and puts it back exactly on exit,
also on an exception or KeyboardInterrupt. While a guard is open its model is marked as
probed: a second probe of the same model, from another thread or from inside the first
one's loss function, raises instead of silently mixing two sets of parameters.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landprobe.engine.contract import is_batchnorm

__all__ = ["ModelGuard", "ParameterWatch", "rng_state", "set_rng_state", "ProbeInProgressError", "ModelChangedError"]


class ProbeInProgressError(RuntimeError):
    """A model is probed by two probes at once (two threads, or a probe inside a probe's loss).

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.engine import ProbeInProgressError
        >>> model = torch.nn.Linear(1, 1)
        >>> def nested(out, y):                 # a loss that starts a second probe of the model
        ...     return lp.LandscapeProbe(model, torch.nn.MSELoss(), [(torch.ones(1, 1), y)]).loss()
        >>> try:
        ...     lp.LandscapeProbe(model, nested, [(torch.ones(1, 1), torch.zeros(1, 1))]).loss()
        ... except ProbeInProgressError as err:
        ...     print("refused:", str(err)[:40])
        refused: Linear is being probed by LandscapeProbe
    """


class ModelChangedError(RuntimeError):
    """The model's parameters changed during a pass over the data (trained while probed).

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.engine import ModelChangedError
        >>> model = torch.nn.Linear(1, 1)
        >>> def meddling(out, y):               # stands in for a training thread's optimizer.step()
        ...     with torch.no_grad():
        ...         model.weight.add_(1.0)
        ...     return torch.nn.functional.mse_loss(out, y)
        >>> try:
        ...     lp.LandscapeProbe(model, meddling, [(torch.ones(1, 1), torch.zeros(1, 1))]).loss()
        ... except ModelChangedError:
        ...     print("refused")
        refused
    """


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """The global RNG states: torch (CPU), CUDA (when initialised), numpy and Python's ``random``.

    Example:
        >>> import torch
        >>> from landprobe.engine import rng_state, set_rng_state
        >>> s = rng_state(); a = torch.rand(1); set_rng_state(s)
        >>> bool(torch.rand(1) == a)
        True
    """
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back states taken by :func:`rng_state`.

    Example:
        >>> import random
        >>> from landprobe.engine import rng_state, set_rng_state
        >>> s = rng_state(); a = random.random(); set_rng_state(s)
        >>> random.random() == a
        True
    """
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- one probe per model
@dataclass
class _Hold:
    owner: int            # id of the engine (or guard) that holds the model
    label: str            # what runs, for the error message
    thread: int
    model_id: int
    model_name: str
    keys: list[int]       # id of the model and of each of its parameters
    depth: int = 1
    passes: int = 0       # > 0 while a pass over the data runs user code


# id(model) and id(each parameter) -> the hold of the probe running on it. A second probe is
# refused on the same model, and on any model that shares a parameter with it (a submodule,
# tied weights across models). Ids, not weak references: a hold lives only while its guard is
# open, and the guard keeps the model (and so its parameters) alive.
_HOLDS: dict[int, _Hold] = {}
_HOLDS_LOCK = threading.Lock()


def _acquire(model: nn.Module, owner: int, label: str) -> None:
    me = threading.get_ident()
    with _HOLDS_LOCK:
        hold = _HOLDS.get(id(model))
        if (hold is not None and hold.model_id == id(model) and hold.thread == me and hold.owner == owner
                and hold.passes == 0):
            hold.depth += 1               # the same probe, one step inside another (e.g. a fit's check)
            return
        keys = [id(model)] + [id(p) for p in model.parameters()]
        clash = hold if hold is not None else next((_HOLDS[k] for k in keys if k in _HOLDS), None)
        if clash is not None:
            where = ("another thread" if clash.thread != me
                     else "this thread (a probe started inside its loss or data)")
            what = (type(model).__name__ if clash.model_id == id(model)
                    else f"{type(model).__name__} shares parameters with {clash.model_name}, which")
            raise ProbeInProgressError(
                f"{what} is being probed by {clash.label} in {where}; one probe at a time per model. Wait for it "
                f"to finish, or probe a copy (copy.deepcopy(model)). Do not train a model while it is probed."
            )
        new = _Hold(owner, label, me, id(model), type(model).__name__, keys)
        for k in keys:
            _HOLDS[k] = new


def _release(model: nn.Module) -> None:
    with _HOLDS_LOCK:
        hold = _HOLDS.get(id(model))
        if hold is not None and hold.model_id == id(model):
            hold.depth -= 1
            if hold.depth == 0:
                for k in hold.keys:
                    _HOLDS.pop(k, None)


@contextlib.contextmanager
def data_pass(model: nn.Module) -> Iterator[None]:
    """Mark a pass over the data (user code runs): a guard opened inside it is a second probe."""
    hold = _HOLDS.get(id(model))
    if hold is not None:
        hold.passes += 1
    try:
        yield
    finally:
        if hold is not None:
            hold.passes -= 1


class ParameterWatch:
    """Detects a parameter written in place (its version counter moves) or replaced by another
    object in its module, cheaply enough to check around every pass: the slots are listed once.

    Example:
        >>> import torch
        >>> from landprobe.engine.guard import ParameterWatch
        >>> model = torch.nn.Linear(2, 1)
        >>> watch = ParameterWatch.of(model); seen = watch.versions()
        >>> watch.changed(seen)
        False
        >>> with torch.no_grad():
        ...     _ = model.bias.add_(1.0)
        >>> watch.changed(seen)
        True
    """

    def __init__(self, slots: list[tuple[nn.Module, str, nn.Parameter]], model_name: str):
        self._slots = [(mod._parameters, name, p) for mod, name, p in slots]
        # an inference tensor has no version counter (only a parameter made under inference_mode)
        self._plain = [(p, not p.is_inference()) for _, _, p in self._slots]
        self._model_name = model_name

    @classmethod
    def of(cls, model: nn.Module) -> ParameterWatch:
        return cls([(mod, name, p) for mod in model.modules() for name, p in mod._parameters.items()
                    if p is not None], type(model).__name__)

    def versions(self) -> list[int]:
        return [p._version if plain else -1 for p, plain in self._plain]

    def changed(self, versions: list[int]) -> bool:
        """True if a parameter was written since ``versions`` were read, or replaced."""
        return self.versions() != versions or any(d.get(name) is not p for d, name, p in self._slots)

    def check(self, versions: list[int]) -> None:
        """Raise :class:`ModelChangedError` if :meth:`changed`."""
        if self.changed(versions):
            raise ModelChangedError(
                f"the parameters of {self._model_name} changed during a pass over the data: is the model trained "
                f"(or modified by its own forward) while it is probed? A model must not be trained while it is "
                f"probed; probe a copy (copy.deepcopy(model)) or probe between training steps."
            )


# --------------------------------------------------------------------------- the guard
def _tensor_attrs(mod: nn.Module) -> dict[str, Tensor]:
    """Tensor-valued plain attributes of a module (not parameters or buffers)."""
    return {k: v for k, v in vars(mod).items() if isinstance(v, Tensor) and not isinstance(v, nn.Parameter)}


class ModelGuard(contextlib.AbstractContextManager):
    """Snapshot everything a probe may touch and restore it exactly on exit.

    Parameters and buffers are restored bitwise from one clone taken on entry (so a probe
    costs one extra copy of the model's state, not one per point); ``requires_grad`` flags,
    ``.grad`` tensors, each module's train/eval mode, BatchNorm momenta and the global RNG
    states (torch, CUDA, numpy, Python) are put back too, also when an exception or
    KeyboardInterrupt ends the probe. Plain tensor attributes of modules (caches a forward
    may set, e.g. ``self._cache = ...``) are put back by identity: one set during the probe is
    removed, one replaced is restored. Probes evaluate under ``torch.inference_mode``;
    without this, a cache created then would be an inference tensor that later breaks the
    user's training.

    While the guard is open the model is marked as probed by ``owner`` (``label`` names it in
    errors): entering a guard on the same model from another thread, or from inside a pass
    over the data, raises :class:`ProbeInProgressError`. The same owner may nest guards.

    Example:
        >>> import torch
        >>> from landprobe.engine import ModelGuard
        >>> model = torch.nn.Linear(1, 1)
        >>> before = model.weight.detach().clone()
        >>> with ModelGuard(model):
        ...     _ = model.weight.data.fill_(7.0); _ = model.eval(); _ = torch.rand(3)
        >>> bool(torch.equal(model.weight, before)), model.training
        (True, True)
    """

    def __init__(self, model: nn.Module, owner: object | None = None, label: str = "a probe"):
        self.model = model
        self._owner = id(owner if owner is not None else self)
        self._label = label

    def __enter__(self) -> ModelGuard:
        m = self.model
        _acquire(m, self._owner, self._label)
        try:
            self._params = [(p, p.detach().clone(), p.requires_grad, p.grad) for p in m.parameters()]
            self._slots = [(mod, name, p) for mod in m.modules() for name, p in mod._parameters.items()
                           if p is not None]
            self.watch = ParameterWatch(self._slots, type(m).__name__)
            self._buffers = [(mod, name, b, b.detach().clone()) for mod in m.modules()
                             for name, b in mod._buffers.items() if b is not None]
            self._modes = [(mod, mod.training) for mod in m.modules()]
            self._momenta = [(mod, mod.momentum) for mod in m.modules() if is_batchnorm(mod)]
            self._attrs = [(mod, _tensor_attrs(mod)) for mod in m.modules()]
            self._rng = rng_state()
        except BaseException:
            _release(m)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._restore()
        finally:
            _release(self.model)
        return None

    def _restore(self) -> None:
        for mod, name, p in self._slots:
            if mod._parameters.get(name) is not p:        # a parameter replaced by another: put ours back
                mod._parameters[name] = p
        with torch.no_grad():
            for p, saved, flag, grad in self._params:
                p.copy_(saved)
                p.requires_grad_(flag)
                p.grad = grad
            for mod, name, b, saved in self._buffers:
                if mod._buffers.get(name) is not b:       # a module swapped the tensor: put ours back
                    mod._buffers[name] = b
                b.copy_(saved)
        for mod, flag in self._modes:
            mod.training = flag
        for mod, mom in self._momenta:
            mod.momentum = mom
        for mod, saved in self._attrs:
            for name, t in _tensor_attrs(mod).items():
                if name not in saved:
                    delattr(mod, name)
                elif t is not saved[name]:
                    setattr(mod, name, saved[name])
        set_rng_state(self._rng)

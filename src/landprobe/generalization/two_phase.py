"""Two-phase training (Kawaguchi, Kaelbling & Bengio, "Generalization in Deep Learning").

Standard training on ``α·m`` of the ``m`` training samples gives the phase-1 network. Phase 2
trains on the other ``(1 − α)·m`` samples with every ReLU-family unit gated by a frozen copy
of the phase-1 network: for an input ``x``, a unit whose pre-activation is ``z`` outputs

    gate(z_ref) · z,    gate(z_ref) = 1 if z_ref > 0, else the unit's negative slope

(0 for ``nn.ReLU``, ``negative_slope`` for ``nn.LeakyReLU``, the frozen copy's weight for
``nn.PReLU``), where ``z_ref`` is the same unit's pre-activation in the frozen copy on the
same ``x``. The gates depend on the phase-1 samples only, and given the input the phase-2
network is linear in each layer's weights, which is what Kawaguchi et al.'s two-phase bound
(:func:`landprobe.generalization.bounds.two_phase_bound`) needs.

Pieces, lowest first:

- :func:`gate_modules`: the ReLU-family modules of a model, found by traversal (any other
  nonlinearity module is an error that names it);
- :func:`frozen_copy`: the frozen phase-1 network (a deep copy in eval mode, no gradients);
- :func:`frozen_gates`: a context manager that gates a model by a reference with hooks (no
  change to the model's class; hooks removed on exit, also on an exception), replaying each
  module's gates call by call when it runs several times in one forward;
- :class:`GatedNetwork`: the phase-2 network as a module (model + frozen reference);
- :func:`check_gates`: the output checks run at the start of phase 2;
- :func:`two_phase_train`: both phases through the engine, with explicit seeds, an optimizer
  factory and step counts;
- :func:`two_phase_experiment`: base, two-phase and DARC1 training over seeds, test errors
  and their ratios to base in a :class:`TwoPhaseResult` (save/load, table, plot).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landprobe.common.checks import (
    check_int,
    check_loss_fn,
    check_module,
    check_nonnegative,
)
from landprobe.common.results import Result, require_matplotlib
from landprobe.common.version import __version__
from landprobe.engine import BatchLoss, Engine, call_model, is_batchnorm, progress
from landprobe.penalties import DARC1Penalty

__all__ = [
    "GATE_TYPES",
    "GatedNetwork",
    "TwoPhaseResult",
    "TwoPhaseRun",
    "check_gates",
    "frozen_copy",
    "frozen_gates",
    "gate_modules",
    "two_phase_experiment",
    "two_phase_train",
]

#: The modules whose output is a gate times their input, the gate set by the input's sign.
GATE_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.PReLU)

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

_NORMS_OF_THE_INPUT: tuple[type[nn.Module], ...] = tuple(
    t for t in (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d, getattr(nn, "RMSNorm", None))
    if t is not None)


# --------------------------------------------------------------------------- traversal
def _unsupported(mod: nn.Module) -> str | None:
    """Why ``mod`` breaks "gate × input" (None if it does not)."""
    cls = type(mod)
    if cls.__module__ == "torch.nn.modules.activation":
        return "its output is not a fixed gate times its input (e.g. min(max(z, 0), 6), tanh(z), z·Φ(z))"
    if cls.__module__ == "torch.nn.modules.pooling" and ("Max" in cls.__name__ or "LP" in cls.__name__):
        return "it picks or weighs its inputs by their values; use nn.AvgPool* or a strided convolution"
    if isinstance(mod, _NORMS_OF_THE_INPUT):
        return "it divides by statistics of its own input, so the network is not linear in the weights before it"
    if isinstance(mod, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)) and not mod.track_running_stats:
        return "it divides by statistics of its own input (track_running_stats=False)"
    if isinstance(mod, (nn.RNNBase, nn.RNNCellBase)):
        return "it applies tanh/sigmoid inside"
    return None


def gate_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The ReLU-family units of ``model`` (``nn.ReLU``, ``nn.LeakyReLU``, ``nn.PReLU`` and their
    subclasses) by module path, in ``named_modules`` order; a module used under two paths is
    listed once.

    Functional activations (``F.relu``, ``torch.relu``, ``x.clamp(min=0)`` inside ``forward``)
    are not modules and cannot be found here; :func:`check_gates` detects them from outputs.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` instance.
        ValueError: If the model holds another nonlinearity module (``nn.ReLU6``, ``nn.GELU``,
            ``nn.Tanh``, ``nn.Sigmoid``, ``nn.ELU``, ``nn.SiLU``, ..., max pooling,
            ``nn.LayerNorm``, recurrent layers): the message names each one's path and why.

    Example:
        >>> import torch
        >>> from landprobe.generalization.two_phase import gate_modules
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> list(gate_modules(net))
        ['1']
        >>> gate_modules(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.GELU()))
        Traceback (most recent call last):
        ...
        ValueError: two-phase training gates only nn.ReLU, nn.LeakyReLU and nn.PReLU units; Sequential holds: '1' (GELU): ...
    """
    check_module(model)
    units: dict[str, nn.Module] = {}
    bad: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, GATE_TYPES):
            units[name] = mod
            continue
        reason = _unsupported(mod)
        if reason is not None:
            bad.append(f"{name or '<the model itself>'!r} ({type(mod).__name__}): {reason}")
    if bad:
        raise ValueError(f"two-phase training gates only nn.ReLU, nn.LeakyReLU and nn.PReLU units; "
                         f"{type(model).__name__} holds: {'; '.join(bad)}. Replace each by a ReLU-family module "
                         f"(the network is then piecewise linear), or train it without two-phase gating.")
    return units


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with ``requires_grad=False`` everywhere: the frozen
    phase-1 network whose pre-activations set the gates. BatchNorm layers in it normalise with
    the running statistics of phase 1 and never update them.

    Example:
        >>> import torch
        >>> from landprobe.generalization.two_phase import frozen_copy
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.ReLU())
        >>> ref = frozen_copy(net)
        >>> ref.training, any(p.requires_grad for p in ref.parameters()), net.training
        (False, False, True)
    """
    ref = copy.deepcopy(check_module(model)).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# --------------------------------------------------------------------------- gates
@dataclass
class _Gate:
    """One call's gate: ``z`` where the reference's pre-activation was > 0, else ``slope · z``."""

    on: Tensor                       # bool, the reference's z_ref > 0
    slope: float | Tensor            # 0.0 (ReLU), negative_slope (LeakyReLU), PReLU weight (broadcast)

    def apply(self, z: Tensor, name: str) -> Tensor:
        if self.on.shape != z.shape:
            raise ValueError(f"unit {name!r}: its input has shape {tuple(z.shape)} but the reference's had "
                             f"{tuple(self.on.shape)} in the same call; model and reference must take the same "
                             f"path through forward (pass the same inputs; reference = frozen_copy(model))")
        if isinstance(self.slope, float) and self.slope == 0.0:
            return torch.where(self.on, z, 0.0)
        return torch.where(self.on, z, z * self.slope)


def _gate_of(unit: nn.Module, z: Tensor) -> _Gate:
    """The gate a reference unit sets on its pre-activation ``z``."""
    on = z.detach() > 0
    if isinstance(unit, nn.PReLU):
        w = unit.weight.detach()
        if w.numel() == 1:
            return _Gate(on, w.reshape(()).clone())
        shape = [1] * z.dim()
        shape[1 if z.dim() >= 2 else 0] = w.numel()
        return _Gate(on, w.reshape(shape).clone())
    if isinstance(unit, nn.LeakyReLU):
        return _Gate(on, float(unit.negative_slope))
    return _Gate(on, 0.0)


class _Replay:
    """The gates the reference recorded in one forward, per unit and in call order, and the
    pre-activations of the model's units between their pre-hook and their forward hook."""

    def __init__(self, names: Iterable[str], reference: nn.Module | None):
        self.reference = reference            # None: every gate is 1 (the check of check_gates)
        self.gates: dict[str, deque[_Gate]] = {n: deque() for n in names}
        self.inputs: dict[str, list[Tensor]] = {n: [] for n in self.gates}
        self.depth = 0

    def record(self, name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(unit: nn.Module, args: tuple) -> None:
            self.gates[name].append(_gate_of(unit, args[0]))
        return hook

    def keep_input(self, name: str) -> Callable[[nn.Module, tuple], tuple | None]:
        def hook(unit: nn.Module, args: tuple) -> tuple | None:
            self.inputs[name].append(args[0])
            if getattr(unit, "inplace", False):   # let an in-place unit write a copy, not z
                return (args[0].clone(), *args[1:])
            return None
        return hook

    def replay(self, name: str) -> Callable[[nn.Module, tuple, Any], Tensor]:
        def hook(unit: nn.Module, args: tuple, output: Any) -> Tensor:
            z = self.inputs[name].pop()
            if self.reference is None:
                return z
            if not self.gates[name]:
                raise ValueError(f"unit {name!r} ran more often than in the reference's forward, or outside a call "
                                 f"of the whole model: gates are recorded when the gated model itself is called "
                                 f"(not a submodule of it), and forward must not branch on the weights")
            return self.gates[name].popleft().apply(z, name)
        return hook

    def start(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        self.depth += 1                       # finish() runs even when this or forward raises
        if self.depth == 1 and self.reference is not None:
            for q in self.gates.values():
                q.clear()
            for s in self.inputs.values():
                s.clear()
            with torch.no_grad():
                self.reference(*args, **kwargs)

    def finish(self, model: nn.Module, args: tuple, output: Any) -> None:
        self.depth -= 1
        if self.depth == 0 and output is not None:
            left = {n: len(q) for n, q in self.gates.items() if q}
            if left:
                raise ValueError(f"frozen gates left unused after the forward (unit: count) {left}: the model "
                                 f"called these units fewer times than its reference; forward must take the "
                                 f"same path in both (no branching on the weights)")


def _check_pair(model: nn.Module, reference: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    check_module(model)
    check_module(reference, "reference")
    if reference is model:
        raise ValueError("reference is the model itself; the gates must come from a separate, frozen network: "
                         "reference = frozen_copy(model)")
    units, ref_units = gate_modules(model), gate_modules(reference)
    if list(units) != list(ref_units):
        raise ValueError(f"reference's ReLU-family units {list(ref_units)} differ from the model's {list(units)}; "
                         f"the reference must be a copy of the model: frozen_copy(model)")
    shared = [n for n in units if units[n] is ref_units[n]]
    if shared:
        raise ValueError(f"model and reference share the unit modules {shared}; pass a deep copy as the "
                         f"reference: frozen_copy(model)")
    return units, ref_units


@contextlib.contextmanager
def frozen_gates(model: nn.Module, reference: nn.Module) -> Iterator[None]:
    """Inside the context, ``model(...)`` runs with every ReLU-family unit gated by ``reference``.

    Each call of the model first runs ``reference`` on the same arguments (under
    ``torch.no_grad``, in whatever mode the reference is in: :func:`frozen_copy` gives eval
    mode), recording for each unit and each of its calls the gate of its pre-activation
    ``z_ref``; then the model runs, and its unit's ``k``-th call in this forward outputs
    ``z`` where ``z_ref > 0`` and ``slope · z`` elsewhere (slope 0 for ``nn.ReLU``, the
    negative slope for ``nn.LeakyReLU``, the reference's weight for ``nn.PReLU``). With
    the gates fixed, the output is linear in each layer's weights given the input.

    Everything runs through forward hooks and forward pre-hooks on the model, its units and
    the reference's units; they are removed on exit, also on an exception, and neither the
    model's class nor its attributes change. Call the whole model inside the context (the
    gates are recorded when it is called), any number of times.

    Args:
        model: The gated network (e.g. the one trained in phase 2).
        reference: The network that sets the gates, with the same units at the same paths
            (usually ``frozen_copy(model)`` taken at the end of phase 1).

    Raises:
        ValueError: If either holds an unsupported nonlinearity module (see
            :func:`gate_modules`), if ``reference`` is ``model`` or shares unit modules with
            it, if their units differ, or (during a call) if the model's units run in another
            order or number than the reference's.

    Example:
        >>> import torch
        >>> from landprobe.generalization.two_phase import frozen_copy, frozen_gates
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.ReLU())
        >>> _ = torch.nn.init.constant_(net[0].weight, 1.0)
        >>> ref = frozen_copy(net)                          # its gates: open where x > 0
        >>> _ = torch.nn.init.constant_(net[0].weight, -2.0)
        >>> x = torch.tensor([[1.0], [-1.0]])
        >>> net(x).flatten().tolist()                       # relu(-2x)
        [0.0, 2.0]
        >>> with frozen_gates(net, ref):
        ...     net(x).flatten().tolist()                   # (x > 0) * (-2x)
        [-2.0, 0.0]
    """
    units, ref_units = _check_pair(model, reference)
    replay = _Replay(units, reference)
    handles: list[Any] = []
    try:
        for name, unit in ref_units.items():
            handles.append(unit.register_forward_pre_hook(replay.record(name)))
        for name, unit in units.items():
            handles.append(unit.register_forward_pre_hook(replay.keep_input(name)))
            handles.append(unit.register_forward_hook(replay.replay(name)))
        handles.append(model.register_forward_pre_hook(replay.start, with_kwargs=True))
        handles.append(model.register_forward_hook(replay.finish, always_call=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _unit_gates(model: nn.Module) -> Iterator[None]:
    """Every ReLU-family unit of ``model`` replaced by the identity (all gates 1)."""
    units = gate_modules(model)
    replay = _Replay(units, None)
    handles: list[Any] = []
    try:
        for name, unit in units.items():
            handles.append(unit.register_forward_pre_hook(replay.keep_input(name)))
            handles.append(unit.register_forward_hook(replay.replay(name)))
        yield
    finally:
        for h in handles:
            h.remove()


class GatedNetwork(nn.Module):
    """The phase-2 network as a module: ``model`` called under :func:`frozen_gates` with ``reference``.

    ``reference`` is a submodule (it moves with ``.to()`` and is saved in ``state_dict()``
    under ``reference.*``) but it is frozen: it always runs in eval mode, and
    :func:`frozen_copy` turns its gradients off. BatchNorm layers of ``model`` also stay in
    eval mode here, normalising with the running statistics they had at the end of phase 1,
    so that the network remains linear in each layer's weights given the input (their affine
    weight and bias still train). Other layers follow ``train()`` / ``eval()`` as usual (dropout
    is active in training). Optimise ``gated.model.parameters()``.

    Args:
        model: The network to gate (trained in phase 2).
        reference: The gating network; default ``frozen_copy(model)`` (gates of ``model`` as
            it is now).

    Example:
        >>> import torch
        >>> from landprobe.generalization.two_phase import GatedNetwork
        >>> torch.manual_seed(0)                            # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> gated = GatedNetwork(net)                       # gates from net's present weights
        >>> x = torch.randn(5, 3)
        >>> torch.equal(gated(x), net(x))                   # same weights: the same outputs
        True
        >>> with torch.no_grad():
        ...     _ = net[0].weight.mul_(-1.0)                # move the weights: the gates stay
        >>> torch.equal(gated(x), net(x))
        False
    """

    def __init__(self, model: nn.Module, reference: nn.Module | None = None):
        super().__init__()
        check_module(model)
        self.model = model
        self.reference = frozen_copy(model) if reference is None else check_module(reference, "reference")
        _check_pair(self.model, self.reference)
        self.train(self.training)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with frozen_gates(self.model, self.reference):
            return self.model(*args, **kwargs)

    def train(self, mode: bool = True) -> GatedNetwork:
        """Set the mode of ``model``'s layers; the reference and BatchNorm layers stay in eval."""
        super().train(mode)
        self.reference.eval()
        for m in self.model.modules():
            if is_batchnorm(m):
                m.eval()
        return self


# --------------------------------------------------------------------------- checks
def _tensors(out: Any) -> list[Tensor]:
    """The tensors of a model output (a tensor, or tuples/lists/dicts of them), in order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


def _map_floating(x: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``x`` with ``fn`` applied to each floating-point tensor in it (tensors, tuples, lists, dicts)."""
    if isinstance(x, Tensor):
        return fn(x) if x.is_floating_point() else x
    if isinstance(x, Mapping):
        return {k: _map_floating(v, fn) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_map_floating(v, fn) for v in x)
    return x


def _flat(out: Any) -> Tensor:
    ts = [t.detach().reshape(-1).double() for t in _tensors(out) if t.is_floating_point()]
    return torch.cat(ts) if ts else torch.zeros(0, dtype=torch.float64)


def _amax(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _check_replay(model: nn.Module, reference: nn.Module, inputs: Any) -> None:
    with frozen_gates(model, reference):
        gated = _tensors(call_model(model, inputs))
    plain = _tensors(call_model(reference, inputs))
    same = len(gated) == len(plain) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(gated, plain))
    if not same:
        fg, fp = _flat(gated), _flat(plain)
        diff = f"{_amax(fg - fp):.3g}" if fg.shape == fp.shape else f"n/a, {len(gated)} vs {len(plain)} tensors"
        raise ValueError(
            f"the gated model's outputs differ from the reference's (max |difference| {diff}) although the gates "
            f"come from it. Expected: identical weights (the check is meant at the start of phase 2, with "
            f"reference = frozen_copy(model)), no randomness in eval mode, and no unit whose in-place result is "
            f"read through its input tensor (use x = relu(x))")


def _check_affine(model: nn.Module, inputs: Any) -> None:
    """With every unit's gate 1 the network must be affine in its (floating-point) input."""
    floats = [t for t in _tensors(inputs) if t.is_floating_point()]
    if not floats:
        raise ValueError("check_gates(affine=True) moves the floating-point tensors of inputs, but inputs has none "
                         "(token ids?); pass affine=False (functional activations then go undetected)")
    other = _map_floating(inputs, lambda t: -t.flip(0))             # other samples, other signs
    ts = (0.0, 1.0, 0.5, -1.0)
    with _unit_gates(model):
        outs = [_flat(call_model(model, _mix(inputs, other, t))) for t in ts]
    f0, f1 = outs[0], outs[1]
    err = max(_amax(f - ((1 - t) * f0 + t * f1)) for t, f in zip(ts[2:], outs[2:]))
    scale = max(max(_amax(f) for f in outs), 1e-30)
    tol = math.sqrt(torch.finfo(floats[0].dtype).eps)
    if not err <= tol * scale:
        raise ValueError(
            f"with every ReLU-family module's gate set to 1 the network is not affine in its input (relative "
            f"deviation {err / scale:.3g} > {tol:.1e}): a nonlinearity that module traversal cannot find runs "
            f"inside forward, e.g. a functional F.relu / torch.relu / x.clamp(min=0) / torch.max, or a custom "
            f"activation module. Use nn.ReLU, nn.LeakyReLU or nn.PReLU modules for it (one module may be called "
            f"several times), or pass affine=False (check=False in two_phase_train) if it is meant to stay")


def _mix(a: Any, b: Any, s: float) -> Any:
    """``(1 − s)·a + s·b`` over the floating-point tensors of two input structures."""
    bs = iter([t for t in _tensors(b) if t.is_floating_point()])
    return _map_floating(a, lambda t: (1 - s) * t + s * next(bs))


def check_gates(model: nn.Module, reference: nn.Module, inputs: Any, *, affine: bool = True) -> None:
    """The checks at the start of phase 2; returns ``None`` or raises ``ValueError``.

    1. Replay: under :func:`frozen_gates`, ``model(inputs)`` equals ``reference(inputs)``
       exactly (``torch.equal``, so bitwise up to the sign of zero); meant for identical
       weights, i.e. right after ``reference = frozen_copy(model)``. It fails when the units
       run in another order or number, when forward is random in eval mode, or when the
       result of an in-place unit is read through its input tensor.
    2. Affine (``affine=True``): with every found unit's gate set to 1 the network must be
       affine in the floating-point tensors of its input, checked along the line from
       ``inputs`` to ``-inputs.flip(0)`` at t = 0.5 and -1 (relative tolerance
       √eps of the input dtype). A nonlinearity that traversal cannot find (a functional
       ``F.relu`` inside forward, a custom activation module) breaks this.

    Both run in eval mode under ``torch.no_grad``; the modes of both networks are put back.

    Args:
        model, reference: As for :func:`frozen_gates`.
        inputs: One batch of model inputs, as the model takes them (a tensor; a tuple is
            unpacked as positional arguments, a dict as keywords).
        affine: Run check 2 (it needs floating-point inputs).

    Example:
        >>> import torch
        >>> from landprobe.generalization.two_phase import check_gates, frozen_copy
        >>> class Functional(torch.nn.Module):               # a relu the traversal cannot see
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc1, self.fc2 = torch.nn.Linear(3, 8), torch.nn.Linear(8, 2)
        ...     def forward(self, x):
        ...         return self.fc2(torch.relu(self.fc1(x)))
        >>> net = Functional()
        >>> check_gates(net, frozen_copy(net), torch.randn(16, 3))   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: with every ReLU-family module's gate set to 1 the network is not affine in its input ...
        >>> ok = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> check_gates(ok, frozen_copy(ok), torch.randn(16, 3)) is None
        True
    """
    _check_pair(model, reference)
    modes = [(m, m.training) for m in (*model.modules(), *reference.modules())]
    try:
        model.eval()
        reference.eval()
        with torch.no_grad():
            _check_replay(model, reference, inputs)
            if affine:
                _check_affine(model, inputs)
    finally:
        for m, flag in modes:
            m.training = flag


# --------------------------------------------------------------------------- training
def _make_optimizer(factory: Any, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if isinstance(factory, (torch.optim.Optimizer, type)) or not callable(factory):
        raise TypeError(f"optimizer={factory!r}; expected a factory params -> torch.optim.Optimizer (each phase "
                        f"and each run gets a fresh one), e.g. lambda params: torch.optim.SGD(params, lr=0.1)")
    opt = factory(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"the optimizer factory returned a {type(opt).__name__}, not a torch.optim.Optimizer; "
                        f"e.g. lambda params: torch.optim.SGD(params, lr=0.1)")
    return opt


def _train(module: nn.Module, loss_fn: Callable, data: Iterable, optimizer: OptimizerFactory,
           params: Iterable[nn.Parameter], steps: int, seed: int, label: str,
           train_loss: Callable | None = None) -> np.ndarray:
    """Train ``module`` in place for ``steps`` optimizer steps on ``data`` cycled in order,
    through the engine (train mode, a fresh optimizer from the factory on the ``params`` that
    require gradients, the global torch RNG seeded with ``seed``); the per-step losses. The
    engine's guard puts back the global RNG and the starting values, so the trained values
    are copied out before it closes and written back after."""
    engine = Engine(module, loss_fn, data, progress=False)
    state = [*module.parameters(), *module.buffers()]
    losses = np.zeros(steps)
    with engine.guard(label):
        torch.manual_seed(seed)
        opt = _make_optimizer(optimizer, [p for p in params if p.requires_grad])
        batches = engine.batch_cycle()
        for s in range(steps):
            losses[s] = engine.train_step(next(batches), opt, train_loss)
        trained = [t.detach().clone() for t in state]
    with torch.no_grad():
        for t, v in zip(state, trained):
            t.copy_(v)
    return losses


def _first_inputs(module: nn.Module, loss_fn: Callable, data: Iterable) -> Any:
    """The inputs of the first batch of ``data``, prepared by the engine (pair-form data)."""
    if isinstance(loss_fn, BatchLoss):   # a valid loss; what is missing is an argument
        msg = ("two_phase_train(check=True) cannot find the inputs in a BatchLoss's batches: pass check_inputs= "
               "(one batch of inputs, as the model takes them) or check=False")
        raise ValueError(msg)  # noqa: TRY004
    engine = Engine(module, loss_fn, data, progress=False)
    with engine.guard("two_phase_train: the gate check"):
        first = next(engine.batches(), None)
    if first is None:
        raise ValueError("phase2_data yielded no batch; pass a non-empty list of (inputs, targets) pairs or a "
                         "DataLoader")
    return engine.contract.inputs(first[0])


@dataclass(eq=False)
class TwoPhaseRun:
    """What :func:`two_phase_train` returns.

    Attributes:
        network: The two-phase network, a :class:`GatedNetwork`: call it to predict
            (``network.model`` holds the phase-2 weights, ``network.reference`` the frozen
            phase-1 network that sets the gates).
        phase1_losses: Training loss of each phase-1 step (mini-batch, before the step).
        phase2_losses: Training loss of each phase-2 step.

    Example:
        >>> import numpy as np, torch
        >>> from landprobe.generalization.two_phase import GatedNetwork, TwoPhaseRun
        >>> run = TwoPhaseRun(GatedNetwork(torch.nn.Linear(2, 1)), np.zeros(3), np.zeros(5))
        >>> run.phase1 is run.network.reference, len(run.phase1_losses) + len(run.phase2_losses)
        (True, 8)
    """

    network: GatedNetwork
    phase1_losses: np.ndarray
    phase2_losses: np.ndarray

    @property
    def phase1(self) -> nn.Module:
        """The frozen phase-1 network (eval mode, no gradients)."""
        return self.network.reference


def _check_steps(steps: Any) -> tuple[int, int]:
    if not isinstance(steps, (tuple, list)) or len(steps) != 2:
        raise ValueError(f"steps={steps!r}; expected a pair (phase-1 steps, phase-2 steps) of integers >= 0, "
                         f"e.g. steps=(250, 750)")
    return check_int("steps[0]", steps[0], 0, "phase-1 steps"), check_int("steps[1]", steps[1], 0, "phase-2 steps")


def two_phase_train(model: nn.Module, loss_fn: Callable, phase1_data: Iterable, phase2_data: Iterable, *,
                    optimizer: OptimizerFactory, steps: tuple[int, int], seed: int = 0, check: bool = True,
                    check_inputs: Any = None) -> TwoPhaseRun:
    """Kawaguchi et al.'s two-phase training of a copy of ``model``.

    Phase 1: standard training of ``copy.deepcopy(model)`` for ``steps[0]`` optimizer steps
    on ``phase1_data`` (the ``α·m`` samples). The phase-1 network is then frozen
    (:func:`frozen_copy`), and phase 2 trains the same weights for ``steps[1]`` steps on
    ``phase2_data`` (the other ``(1 − α)·m`` samples) as a :class:`GatedNetwork`: every
    ReLU-family unit gated by the frozen network's pre-activation on the same input. Each
    phase gets a fresh optimizer from the factory (no momentum carried over), cycles its data
    in order (a shuffling loader reshuffles each pass) and seeds the global torch RNG with
    ``seed`` first (dropout masks, a shuffling loader's draws); the caller's global RNG state
    is put back afterwards. Training goes through :class:`landprobe.engine.Engine` (its
    ``train_step``), so ``loss_fn`` and the data follow the engine's contract: ``(inputs,
    targets)`` batches with ``loss_fn(model(inputs), targets)``, or a :class:`~landprobe.BatchLoss`.

    Args:
        model: The initial network; left unchanged (training runs on a deep copy). Its
            nonlinearities must be ReLU-family modules (:func:`gate_modules`).
        loss_fn: Training loss, mean over the batch.
        phase1_data, phase2_data: Batches of the two disjoint training samples.
        optimizer: Factory ``params -> torch.optim.Optimizer``.
        steps: ``(phase-1 steps, phase-2 steps)``.
        seed: Seed of the global torch RNG at the start of each phase.
        check: Run :func:`check_gates` at the start of phase 2 on ``check_inputs`` (default:
            the inputs of the first batch of ``phase2_data``; a ``BatchLoss`` needs them given).
        check_inputs: Inputs for the check, as the model takes them.

    Returns:
        A :class:`TwoPhaseRun` with the two-phase network and the training losses.

    Raises:
        ValueError: On an unsupported nonlinearity module (before any training), on a failed
            check (a functional activation inside forward, see :func:`check_gates`), on bad
            ``steps`` or empty data.
        TypeError: If ``optimizer`` is not a factory of optimizers.

    Example:
        >>> import torch
        >>> from landprobe.generalization.two_phase import two_phase_train
        >>> torch.manual_seed(0)                                     # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> x = torch.randn(64, 2); y = (x[:, 0] * x[:, 1] > 0).long()
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> run = two_phase_train(net, torch.nn.CrossEntropyLoss(), [(x[:16], y[:16])], [(x[16:], y[16:])],
        ...                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1), steps=(20, 40), seed=0)
        >>> run.phase1_losses.shape, run.phase2_losses.shape
        ((20,), (40,))
        >>> bool(run.phase2_losses[-1] < run.phase2_losses[0])       # phase 2 trains the gated network
        True
        >>> bool((run.network(x).argmax(1) == y).float().mean() > 0.5)
        True
    """
    check_module(model)
    check_loss_fn(loss_fn)
    s1, s2 = _check_steps(steps)
    check_int("seed", seed, 0, "the seed of each phase")
    gate_modules(model)
    net = copy.deepcopy(model)
    losses1 = _train(net, loss_fn, phase1_data, optimizer, net.parameters(), s1, seed, "two_phase_train: phase 1")
    gated = GatedNetwork(net, frozen_copy(net))
    if check:
        inputs = check_inputs if check_inputs is not None else _first_inputs(gated, loss_fn, phase2_data)
        check_gates(net, gated.reference, inputs)
    losses2 = _train(gated, loss_fn, phase2_data, optimizer, net.parameters(), s2, seed, "two_phase_train: phase 2")
    return TwoPhaseRun(gated, losses1, losses2)


# --------------------------------------------------------------------------- the experiment
def _mean_sd(a: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for one value)."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(a)), float(np.std(a, ddof=1)) if a.size > 1 else float("nan")


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass(frozen=True, eq=False)
class TwoPhaseResult(Result):
    """Test errors of base, two-phase and DARC1 training over seeds, and their ratios to base.

    Per seed, from one initialisation: *base* is standard training on all ``m`` training
    samples; *two-phase* is :func:`two_phase_train` (phase 1 on ``α·m`` samples, phase 2 on
    the rest) with the same total number of optimizer steps; *DARC1* is base training with
    :class:`~landprobe.DARC1Penalty` added to the loss. The ratios two-phase/base and
    DARC1/base are taken per seed; their mean and sample standard deviation (ddof = 1) over
    seeds are Kawaguchi et al.'s table entries.

    Attributes:
        seeds: One per run.
        base_error, two_phase_error, darc1_error: Test error (fraction misclassified) per seed.
        phase1_error: Test error of the phase-1 network alone (trained on ``α·m`` samples).
        base_train_error, two_phase_train_error, darc1_train_error: Error on all ``m``
            training samples per seed.
        settings: alpha, sample and step counts, batch size, optimizer, DARC1 weight, model,
            versions.

    Example:
        >>> import numpy as np
        >>> from landprobe.generalization.two_phase import TwoPhaseResult
        >>> r = TwoPhaseResult([0, 1], base_error=np.array([0.10, 0.20]), two_phase_error=np.array([0.12, 0.20]),
        ...                    darc1_error=np.array([0.10, 0.16]))
        >>> r.two_phase_ratio.round(6).tolist(), r.darc1_ratio.round(6).tolist()
        ([1.2, 1.0], [1.0, 0.8])
        >>> [round(v, 4) for v in r.ratio_stats("two_phase")]      # mean, sd (ddof = 1)
        [1.1, 0.1414]
    """

    # checked by Result.from_dict when loading (the train errors may be empty: files without them)
    _same_length = (("seeds", "base_error", "two_phase_error", "darc1_error"),)
    seeds: list[int]
    base_error: np.ndarray
    two_phase_error: np.ndarray
    darc1_error: np.ndarray
    phase1_error: np.ndarray = field(default_factory=_empty)
    base_train_error: np.ndarray = field(default_factory=_empty)
    two_phase_train_error: np.ndarray = field(default_factory=_empty)
    darc1_train_error: np.ndarray = field(default_factory=_empty)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def two_phase_ratio(self) -> np.ndarray:
        """Two-phase test error / base test error, per seed (NaN where base is 0)."""
        return _ratio(self.two_phase_error, self.base_error)

    @property
    def darc1_ratio(self) -> np.ndarray:
        """DARC1 test error / base test error, per seed (NaN where base is 0)."""
        return _ratio(self.darc1_error, self.base_error)

    def ratio_stats(self, which: str) -> tuple[float, float]:
        """``(mean, sd)`` over seeds of the ratio ``which`` ("two_phase" or "darc1") to base.

        Example:
            >>> import numpy as np
            >>> from landprobe.generalization.two_phase import TwoPhaseResult
            >>> r = TwoPhaseResult([0], np.array([0.1]), np.array([0.2]), np.array([0.1]))
            >>> r.ratio_stats("two_phase")                             # one seed: no sd
            (2.0, nan)
        """
        if which not in ("two_phase", "darc1"):
            raise ValueError(f"which={which!r}; expected 'two_phase' or 'darc1'")
        return _mean_sd(self.two_phase_ratio if which == "two_phase" else self.darc1_ratio)

    def summary(self) -> dict[str, float]:
        """Means and sample standard deviations over seeds of every error and both ratios.

        Example:
            >>> import numpy as np
            >>> from landprobe.generalization.two_phase import TwoPhaseResult
            >>> r = TwoPhaseResult([0, 1], np.array([0.1, 0.3]), np.array([0.1, 0.3]), np.array([0.2, 0.3]))
            >>> s = r.summary()
            >>> s["seeds"], round(s["base_error_mean"], 6), s["two_phase_ratio_mean"]
            (2, 0.2, 1.0)
        """
        out: dict[str, float] = {"seeds": len(self.seeds)}
        arrays = {"base_error": self.base_error, "two_phase_error": self.two_phase_error,
                  "darc1_error": self.darc1_error, "phase1_error": self.phase1_error,
                  "base_train_error": self.base_train_error, "two_phase_train_error": self.two_phase_train_error,
                  "darc1_train_error": self.darc1_train_error, "two_phase_ratio": self.two_phase_ratio,
                  "darc1_ratio": self.darc1_ratio}
        for key, arr in arrays.items():
            if len(arr):
                out[f"{key}_mean"], out[f"{key}_sd"] = _mean_sd(arr)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus ``summary`` (ignored by :meth:`load`, recomputed from the fields)."""
        return {**super().to_dict(), "summary": self.summary()}

    def table(self, per_seed: bool = False) -> str:
        """A Markdown table as Kawaguchi et al.'s: each ratio to base as mean ± sd over seeds,
        then the test errors (in %); with ``per_seed``, a row per seed as well.

        Example:
            >>> import numpy as np
            >>> from landprobe.generalization.two_phase import TwoPhaseResult
            >>> r = TwoPhaseResult([0, 1], np.array([0.1, 0.2]), np.array([0.1, 0.2]), np.array([0.1, 0.2]))
            >>> print(r.table().splitlines()[2])
            | two-phase / base | 1.000 ± 0.000 |
        """
        n = len(self.seeds)
        lines = [f"| test error ratio | mean ± sd over {n} seeds |", "|---|---|"]
        for label, which in (("two-phase / base", "two_phase"), ("DARC1 / base", "darc1")):
            m, s = self.ratio_stats(which)
            lines.append(f"| {label} | {m:.3f} ± {s:.3f} |")
        lines += ["", f"| test error (%) | mean ± sd over {n} seeds |", "|---|---|"]
        for label, arr in self._errors():
            m, s = _mean_sd(100 * arr)
            lines.append(f"| {label} | {m:.2f} ± {s:.2f} |")
        if per_seed:
            heads = [label for label, _ in self._errors()]
            lines += ["", "| seed | " + " | ".join(heads) + " | two-phase / base | DARC1 / base |",
                      "|---" * (len(heads) + 3) + "|"]
            for i, seed in enumerate(self.seeds):
                cells = [f"{100 * arr[i]:.2f}" for _, arr in self._errors()]
                lines.append(f"| {seed} | " + " | ".join(cells) +
                             f" | {self.two_phase_ratio[i]:.3f} | {self.darc1_ratio[i]:.3f} |")
        return "\n".join(lines)

    def _errors(self) -> list[tuple[str, np.ndarray]]:
        rows = [("base", self.base_error), ("two-phase", self.two_phase_error), ("DARC1", self.darc1_error)]
        if len(self.phase1_error):
            rows.append(("phase 1 alone", self.phase1_error))
        return rows

    def plot(self, ax: Any = None) -> Any:
        """Per-seed ratios to base (dots) with their mean ± sd (bars) and a dashed line at 1;
        returns the matplotlib axes.

        Example:
            >>> import numpy as np
            >>> from landprobe.generalization.two_phase import TwoPhaseResult
            >>> r = TwoPhaseResult([0, 1], np.array([0.1, 0.2]), np.array([0.1, 0.3]), np.array([0.1, 0.2]))
            >>> r.plot().get_ylabel()
            'test error / base test error'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3.5))
        for i, (label, which) in enumerate((("two-phase / base", "two_phase"), ("DARC1 / base", "darc1"))):
            r = self.two_phase_ratio if which == "two_phase" else self.darc1_ratio
            jitter = np.linspace(-0.12, 0.12, len(r)) if len(r) > 1 else np.zeros(len(r))
            ax.plot(i + jitter, r, "o", ms=4, alpha=0.6, color=f"C{i}")
            m, s = self.ratio_stats(which)
            ax.errorbar([i + 0.3], [m], yerr=[0.0 if math.isnan(s) else s], fmt="s", color=f"C{i}", capsize=4,
                        label=f"{label}: {m:.3f} ± {s:.3f}")
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.set_xticks([0, 1], ["two-phase", "DARC1"])
        ax.set_xlim(-0.5, 1.7)
        ax.set_ylabel("test error / base test error")
        alpha = self.settings.get("alpha", "?")
        ax.set_title(f"alpha = {alpha}, {len(self.seeds)} seeds", fontsize=10)
        ax.legend(frameon=False, fontsize=8)
        return ax


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


class _Batches:
    """Mini-batches of ``(x, y)`` in a new seeded order on each pass (its own generator)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.y), generator=self.generator)
        for i in range(0, len(order), self.batch_size):
            idx = order[i: i + self.batch_size]
            yield self.x[idx], self.y[idx]


def _top1_error(out: Tensor, y: Tensor) -> Tensor:
    return (out.argmax(dim=1) != y).double().mean()


def _error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``(x, y)`` misclassified (argmax of the outputs), through the engine, eval mode."""
    chunks = [(x[i: i + 1024], y[i: i + 1024]) for i in range(0, len(y), 1024)]
    return Engine(model, _top1_error, chunks, progress=False).evaluate_at(label="two_phase_experiment: error").loss


def _sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The default optimizer of :func:`two_phase_experiment`: SGD, lr 0.05, momentum 0.9."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


@dataclass(frozen=True)
class _Plan:
    """The settings every seed of :func:`two_phase_experiment` shares."""

    phase1_samples: int
    steps: int
    phase1_steps: int
    batch_size: int
    optimizer: OptimizerFactory
    loss_fn: Callable
    darc1: DARC1Penalty
    darc1_weight: float

    def darc1_loss(self, out: Tensor, target: Tensor) -> Tensor:
        return self.loss_fn(out, target) + self.darc1(out)


def _one_seed(model_fn: Callable[[], nn.Module], train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
              plan: _Plan, seed: int) -> dict[str, float]:
    """Base, DARC1 and two-phase training from one initialisation; their errors."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init = check_module(model_fn(), "model_fn()")
    x, y = train
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    first, rest = order[: plan.phase1_samples], order[plan.phase1_samples:]
    base, darc1 = copy.deepcopy(init), copy.deepcopy(init)
    _train(base, plan.loss_fn, _Batches(x, y, plan.batch_size, seed), plan.optimizer, base.parameters(),
           plan.steps, seed, "two_phase_experiment: base")
    _train(darc1, plan.loss_fn, _Batches(x, y, plan.batch_size, seed), plan.optimizer, darc1.parameters(),
           plan.steps, seed, "two_phase_experiment: DARC1", train_loss=plan.darc1_loss)
    run = two_phase_train(init, plan.loss_fn, _Batches(x[first], y[first], plan.batch_size, seed),
                          _Batches(x[rest], y[rest], plan.batch_size, seed), optimizer=plan.optimizer,
                          steps=(plan.phase1_steps, plan.steps - plan.phase1_steps), seed=seed)
    return {"base_error": _error(base, *test), "two_phase_error": _error(run.network, *test),
            "darc1_error": _error(darc1, *test), "phase1_error": _error(run.phase1, *test),
            "base_train_error": _error(base, x, y), "two_phase_train_error": _error(run.network, x, y),
            "darc1_train_error": _error(darc1, x, y)}


def _check_split(name: str, pair: Any) -> tuple[Tensor, Tensor]:
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(t, Tensor) for t in pair)
            or len(pair[0]) != len(pair[1]) or len(pair[1]) == 0):
        raise ValueError(f"{name} must be a pair (inputs, labels) of tensors with the same, non-zero number of "
                         f"samples (labels: class indices); got {type(pair).__name__}")
    return pair[0], pair[1]


def _plan(m: int, alpha: float, steps: int, batch_size: int, optimizer: OptimizerFactory | None,
          loss_fn: Callable | None, darc1_weight: float) -> _Plan:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r}; expected a number in (0, 1), the share of the training samples that "
                         f"phase 1 trains on (e.g. 0.25)")
    n1 = round(alpha * m)
    if not 1 <= n1 <= m - 1:
        raise ValueError(f"alpha={alpha} of m={m} training samples leaves {n1} for phase 1 and {m - n1} for "
                         f"phase 2; both need at least one: choose alpha in [{1 / m:.3g}, {1 - 1 / m:.3g}]")
    check_int("steps", steps, 2, "total optimizer steps of each arm")
    s1 = min(max(round(steps * n1 / m), 1), steps - 1)
    check_nonnegative("darc1_weight", darc1_weight, "λ of DARC1Penalty")
    return _Plan(n1, steps, s1, check_int("batch_size", batch_size, 1, "samples per optimizer step"),
                 _sgd if optimizer is None else optimizer,
                 nn.CrossEntropyLoss() if loss_fn is None else check_loss_fn(loss_fn), DARC1Penalty(darc1_weight),
                 float(darc1_weight))


def _settings(plan: _Plan, alpha: float, m: int, n_test: int, init: nn.Module) -> dict[str, Any]:
    probe = _make_optimizer(plan.optimizer, [nn.Parameter(torch.zeros(1))])
    return {"alpha": alpha, "train_samples": m, "phase1_samples": plan.phase1_samples,
            "phase2_samples": m - plan.phase1_samples, "test_samples": n_test, "steps": plan.steps,
            "phase1_steps": plan.phase1_steps, "phase2_steps": plan.steps - plan.phase1_steps,
            "batch_size": plan.batch_size, "optimizer": {"class": type(probe).__name__, **probe.defaults},
            "loss_fn": repr(plan.loss_fn), "darc1_weight": plan.darc1_weight, "model": repr(init),
            "error": "fraction of samples whose argmax output differs from the label",
            "sd": "sample standard deviation over seeds (ddof = 1)",
            "landprobe": __version__, "torch": torch.__version__}


def two_phase_experiment(model_fn: Callable[[], nn.Module], train: tuple[Tensor, Tensor],
                         test: tuple[Tensor, Tensor], *, alpha: float = 0.25, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                         steps: int = 1000, batch_size: int = 64, optimizer: OptimizerFactory | None = None,
                         loss_fn: Callable | None = None, darc1_weight: float = 1e-3,
                         progress_bar: bool | None = None) -> TwoPhaseResult:
    """Kawaguchi et al.'s comparison: base, two-phase and DARC1 training over seeds.

    For each seed, ``model_fn()`` is called with the global torch RNG seeded by the seed (the
    caller's RNG state is put back), and from that one initialisation:

    - *base*: ``steps`` optimizer steps of ``batch_size`` samples on all ``m`` training samples;
    - *DARC1*: the same, with ``DARC1Penalty(darc1_weight)`` on the outputs added to the loss;
    - *two-phase*: :func:`two_phase_train` with phase 1 on ``round(α·m)`` samples drawn by the
      seed and phase 2 on the others; the ``steps`` are split in proportion to the samples
      (so each sample is visited about as often as in base training: the same budget).

    Every arm reshuffles its samples each pass with a generator seeded by the seed (base and
    DARC1 see the same batches), and gets a fresh optimizer from the factory (one per phase).
    Errors are the fraction of samples whose argmax output differs from the label, computed
    through the engine in eval mode (the two-phase network with its frozen gates).

    Args:
        model_fn: Builds the network (outputs: logits of shape (N, classes); ReLU-family
            modules only, see :func:`gate_modules`).
        train, test: ``(inputs, labels)`` tensors (labels: class indices).
        alpha: Share of the training samples in phase 1, in (0, 1).
        seeds: One run per seed.
        steps: Optimizer steps of each arm (base, DARC1, and the two phases together).
        batch_size: Samples per step.
        optimizer: Factory ``params -> torch.optim.Optimizer``; default SGD, lr 0.05, momentum 0.9.
        loss_fn: Training loss on (outputs, labels); default ``nn.CrossEntropyLoss()``.
        darc1_weight: λ of :class:`~landprobe.DARC1Penalty` (Kawaguchi et al. use 0.001).
        progress_bar: A progress bar over the seeds (default: on a terminal only).

    Returns:
        A :class:`TwoPhaseResult` (per-seed errors, ratios, ``table()``, ``plot()``, ``save``).

    Example:
        >>> import torch
        >>> from landprobe.generalization.two_phase import two_phase_experiment
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(96, 2, generator=g); y = (x[:, 0] + x[:, 1] > 0).long()
        >>> def make():
        ...     return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> res = two_phase_experiment(make, (x[:64], y[:64]), (x[64:], y[64:]), seeds=[0, 1], steps=40,
        ...                            batch_size=16)
        >>> res.two_phase_ratio.shape, res.settings["phase1_samples"], res.settings["phase1_steps"]
        ((2,), 16, 10)
        >>> sorted(k for k in res.summary() if k.endswith("ratio_mean"))
        ['darc1_ratio_mean', 'two_phase_ratio_mean']
    """
    x, y = _check_split("train", train)
    xt, yt = _check_split("test", test)
    plan = _plan(len(y), alpha, steps, batch_size, optimizer, loss_fn, darc1_weight)
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r}; expected distinct integers >= 0, one per run, e.g. range(5)")
    rows = [_one_seed(model_fn, (x, y), (xt, yt), plan, s)
            for s in progress(seeds, "two_phase_experiment", enabled=progress_bar, unit="seed")]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds[0])
        init = model_fn()
    arrays = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return TwoPhaseResult(seeds=seeds, **arrays, settings=_settings(plan, float(alpha), len(y), len(yt), init))

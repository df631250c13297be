"""Sparsity of weights (near-zero fraction, Hoyer's measure) and of activations (Treves–Rolls).

Convention:
    - Weights: over the selected parameters flattened into one vector (biases included).
    - Activations of a subnet are the outputs of its submodule, captured with a forward hook
      while the model runs on ``data`` (eval mode; a module called several times per forward,
      such as a recurred block, contributes every call). A 2-D output ``(batch, features)`` has
      stimuli = samples and units = features. An output with ≥ 3 dimensions is read channel
      first, ``(batch, channels, *positions)``: units = channels, stimuli = every (sample,
      position) pair, so a conv feature map ``(B, C, H, W)`` gives ``B·H·W`` stimuli of ``C`` units.
      A 1-D output is one unit.
    - The Treves–Rolls sparseness (Treves & Rolls 1991, in the form of Vinje & Gallant 2000 and
      Willmore & Tolhurst 2001) of responses ``r_1..r_n`` is
      ``S = (1 − (Σ r/n)² / (Σ r²/n)) / (1 − 1/n)``: 0 for equal responses, 1 when a single
      one is non-zero. *Population* sparseness: over the units for each stimulus, averaged over
      stimuli; *lifetime* sparseness: over the stimuli for each unit, averaged over units.
      Responses that are all zero (0/0) are left out of the average. The measure assumes
      non-negative responses (e.g. ReLU outputs), where it lies in [0, 1]; values are used as they
      are, so :func:`activation_sparseness` warns (or, with ``strict=True``, raises) when a hooked
      subnet returns a negative value (signed values can give a "sparseness" above 1); the
      model's own output, often signed by design (logits, regression), is reported unchecked.
    - Under data sharding (``sharding=landprobe.Sharding(data=True)``) each rank runs the
      forwards of its own batches and the accumulators' sums are added over the ranks, so every
      rank returns the one-process values.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landprobe.capacity._common import MODEL, check_model
from landprobe.common.checks import check_int, check_positive
from landprobe.engine import BatchLoss, Engine, Sharding
from landprobe.engine.contract import no_batch_error
from landprobe.params import ParamVector, Selector

__all__ = ["fraction_near_zero", "hoyer", "treves_rolls", "activation_sparseness", "SparsenessAccumulator"]


def _flat(x: Any) -> Tensor:
    if isinstance(x, nn.Module):
        ts = [p.detach().reshape(-1) for p in x.parameters()]
    elif isinstance(x, ParamVector):
        ts = [t.detach().reshape(-1) for t in x.tensors]
    elif isinstance(x, Tensor):
        ts = [x.detach().reshape(-1)]
    elif isinstance(x, np.ndarray):
        ts = [torch.from_numpy(np.asarray(x, dtype=np.float64)).reshape(-1)]
    elif isinstance(x, (list, tuple)):
        ts = [_flat(v) for v in x]
    else:
        raise TypeError(f"expected a tensor, array, ParamVector, module or list of tensors, got {type(x).__name__}")
    ts = [t.to(torch.float64).cpu() for t in ts]
    return torch.cat(ts) if ts else torch.zeros(0, dtype=torch.float64)


def fraction_near_zero(x: Any, threshold: float = 1e-3) -> float:
    """Fraction of the entries with ``|w| < threshold``.

    Args:
        x: A tensor, numpy array, ParamVector, module (its parameters) or list of tensors.
        threshold: The "near zero" bound (> 0).

    Raises:
        ValueError: If ``x`` is empty or ``threshold`` is not positive.

    Example:
        >>> import torch
        >>> from landprobe.capacity import fraction_near_zero
        >>> fraction_near_zero(torch.tensor([0.0, 1e-4, -0.5, 2.0]))    # 2 of 4 below 1e-3
        0.5
    """
    threshold = check_positive("threshold", threshold)
    v = _flat(x)
    if v.numel() == 0:
        raise ValueError("fraction_near_zero: the input holds no entries")
    return float((v.abs() < threshold).double().mean())


def hoyer(x: Any) -> float:
    """Hoyer's sparseness ``(√n − ‖w‖₁/‖w‖₂) / (√n − 1)`` (Hoyer 2004): 0 for a constant vector, 1 for a one-hot.

    Args:
        x: A tensor, numpy array, ParamVector, module (its parameters) or list of tensors.

    Returns:
        A float in [0, 1]; NaN for an all-zero vector (0/0).

    Raises:
        ValueError: If ``x`` has fewer than 2 entries.

    Example:
        >>> import torch
        >>> from landprobe.capacity import hoyer
        >>> hoyer(torch.ones(4)), hoyer(torch.tensor([0.0, 0.0, 3.0, 0.0]))
        (0.0, 1.0)
        >>> round(hoyer(torch.tensor([1.0, 1.0, 0.0, 0.0])), 12)   # (2 - 2/sqrt(2)) / (2 - 1)
        0.585786437627
    """
    v = _flat(x)
    n = v.numel()
    if n < 2:
        raise ValueError(f"hoyer: needs at least 2 entries, got {n}")
    l2 = float(torch.linalg.vector_norm(v))
    if l2 == 0.0:
        return float("nan")
    l1 = float(v.abs().sum())
    r = math.sqrt(n)
    return (r - l1 / l2) / (r - 1)


def _tr_rows(r: Tensor) -> Tensor:
    """Treves–Rolls sparseness of each row of a float64 matrix (NaN where a row is all zero)."""
    n = r.shape[1]
    m1 = r.mean(dim=1)
    m2 = r.pow(2).mean(dim=1)
    s = (1 - m1.pow(2) / m2) / (1 - 1 / n)
    return torch.where(m2 > 0, s, torch.full_like(s, float("nan")))


def treves_rolls(responses: Any, kind: str = "population") -> float:
    """Treves–Rolls sparseness of a ``(stimuli, units)`` response matrix, averaged.

    Args:
        responses: A 2-D array or tensor, rows = stimuli, columns = units.
        kind: ``"population"`` (over units for each stimulus, mean over stimuli) or
            ``"lifetime"`` (over stimuli for each unit, mean over units).

    Returns:
        The mean sparseness (rows or columns that are all zero are left out; NaN if all are).

    Raises:
        ValueError: On an unknown ``kind``, a matrix that is not 2-D, or fewer than 2 units
            (population) or stimuli (lifetime).

    Example:
        >>> import numpy as np
        >>> from landprobe.capacity import treves_rolls
        >>> r = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # one-hot row: 1; constant row: 0
        >>> treves_rolls(r, "population")
        0.5
        >>> treves_rolls(r, "lifetime")                          # columns (1,1), (0,1), (0,1): 0, 1, 1
        0.6666666666666666
    """
    if kind not in ("population", "lifetime"):
        raise ValueError(f"kind={kind!r}; expected 'population' (over units per stimulus) or 'lifetime' "
                         f"(over stimuli per unit)")
    r = torch.as_tensor(np.asarray(responses, dtype=np.float64)) if not isinstance(responses, Tensor) \
        else responses.detach().to(torch.float64).cpu()
    if r.dim() != 2:
        raise ValueError(f"treves_rolls needs a 2-D (stimuli, units) matrix, got shape {tuple(r.shape)}")
    m = r if kind == "population" else r.T
    if m.shape[1] < 2:
        what = "units" if kind == "population" else "stimuli"
        raise ValueError(f"treves_rolls: {kind} sparseness needs at least 2 {what}, got {m.shape[1]}")
    s = _tr_rows(m)
    s = s[torch.isfinite(s)]
    return float(s.mean()) if s.numel() else float("nan")


def _as_responses(out: Tensor) -> Tensor:
    t = out.detach().to(torch.float64)
    if t.dim() == 1:
        return t.reshape(-1, 1)
    if t.dim() == 2:
        return t
    return t.movedim(1, -1).reshape(-1, t.shape[1])


class SparsenessAccumulator:
    """Treves–Rolls sums streamed over a module's outputs: a forward hook, or :meth:`add` by hand.

    Each output is read as in the module's Convention (``(B, C, *positions)``: ``C`` units,
    every (sample, position) a stimulus). Population sparseness is summed over the stimuli
    (``population_sum`` over ``population_count``; all-zero stimuli are left out); the units'
    first and second moments are summed for the lifetime sparseness, so :meth:`result` is exact
    over every output seen, without storing one. :func:`activation_sparseness` hooks one per
    subnet. Under data sharding, :meth:`all_sum` adds the sums of every rank.

    Attributes:
        population_sum, population_count: Σ of the population sparseness over the stimuli seen,
            and their number.
        stimuli: Stimuli seen (all-zero ones included).
        min_value: The smallest response seen (``inf`` before any; NaNs are ignored): a negative
            one means the responses are signed, outside the measure's non-negative domain.

    Raises:
        ValueError: (from :meth:`add`) When an output has another number of units than the
            first one.

    Example:
        >>> import torch
        >>> from landprobe.capacity import SparsenessAccumulator
        >>> acc = SparsenessAccumulator()
        >>> acc.add(torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))  # 3 stimuli of 2 units: 1, -, 0
        >>> acc.population_sum, acc.population_count
        (1.0, 2)
        >>> acc.result()["population_sparseness"], acc.result()["lifetime_sparseness"]  # units (1,0,1), (0,0,1)
        (0.5, 0.75)
        >>> relu, hooked = torch.nn.ReLU(), SparsenessAccumulator()    # or as a forward hook
        >>> h = relu.register_forward_hook(hooked); _ = relu(torch.tensor([[2.0, -1.0]])); h.remove()
        >>> hooked.population_sum, hooked.population_count            # (2, 0): one unit active
        (1.0, 1)
    """

    def __init__(self) -> None:
        self.population_sum = 0.0
        self.population_count = 0
        self._s1: Tensor | None = None
        self._s2: Tensor | None = None
        self.stimuli = 0
        self.min_value = math.inf

    def __call__(self, _module: Any, _inputs: Any, out: Any) -> None:
        if isinstance(out, (list, tuple)):
            out = next((o for o in out if isinstance(o, Tensor)), None)
        if isinstance(out, Tensor):
            self.add(out)

    def add(self, out: Tensor) -> None:
        """Add one output (a tensor of responses) to the sums."""
        r = _as_responses(out)
        if r.shape[1] >= 2:
            s = _tr_rows(r)
            s = s[torch.isfinite(s)]
            self.population_sum += float(s.sum())
            self.population_count += int(s.numel())
        if self._s1 is None or self._s1.shape[0] != r.shape[1]:
            if self._s1 is not None:
                raise ValueError(f"a hooked module returned {r.shape[1]} units after {self._s1.shape[0]}; "
                                 f"activation sparseness needs a fixed number of units (channels)")
            self._s1 = torch.zeros(r.shape[1], dtype=torch.float64, device=r.device)
            self._s2 = torch.zeros_like(self._s1)
        self._s1 += r.sum(dim=0)
        self._s2 += r.pow(2).sum(dim=0)
        self.stimuli += r.shape[0]
        if r.numel():
            low = float(r.min())
            if low < self.min_value:            # False for NaN: NaNs leave the minimum as it is
                self.min_value = low

    @staticmethod
    def all_sum(accumulators: Sequence[SparsenessAccumulator], engine: Engine, run: Callable[[], int],
                what: str = "activation sparseness") -> int:
        """Run ``run()`` and add the accumulators' sums over the ranks that share the data.

        ``run()`` is this rank's part of the pass: forwards of its batches (e.g. over
        ``engine.forwards()``) that feed the accumulators, returning how many batches it ran.
        Under data sharding the sums of every rank are then added (``engine.all_sum``; an
        exception in ``run`` on one rank raises on every rank), so each accumulator holds the
        sums over all the ranks' outputs; alone, the accumulators keep what ``run`` added.
        ``min_value`` becomes the smallest over the ranks when it is negative anywhere (a
        non-negative minimum is left as this rank's own).

        Returns:
            The batches run, over all the ranks.

        Raises:
            ValueError: When the ranks' outputs have different numbers of units.

        Example:
            >>> import torch
            >>> from landprobe.capacity import SparsenessAccumulator
            >>> from landprobe.engine import Engine
            >>> relu = torch.nn.ReLU()
            >>> engine = Engine(relu, lambda out, y: out.sum(), [(torch.tensor([[2.0, -1.0]]), None)])
            >>> acc = SparsenessAccumulator()
            >>> def run():
            ...     h = relu.register_forward_hook(acc)
            ...     try:
            ...         return sum(1 for _ in engine.forwards())
            ...     finally:
            ...         h.remove()
            >>> with engine.guard():
            ...     SparsenessAccumulator.all_sum([acc], engine, run)
            1
            >>> acc.population_sum, acc.stimuli
            (1.0, 1)
        """
        accs = list(accumulators)

        def local() -> list[Tensor]:
            batches = run()
            return [torch.tensor([float(batches)], dtype=torch.float64)] + [a._totals() for a in accs]
        head, *totals = engine.all_sum(local, what)
        units = [_units_of(t) for t in totals]
        signed = [float(t[6]) > 0 for t in totals]     # some rank saw a negative response
        ranks = engine.ranks()

        def second() -> list[Tensor]:
            out = [m for a, u in zip(accs, units) for m in a._moments(u)]
            # a minimum is not a sum: each rank puts its (negative) minimum in its own slot
            for a, neg in zip(accs, signed):
                if neg:
                    slots = torch.zeros(ranks.data_world, dtype=torch.float64)
                    slots[ranks.data_rank] = min(a.min_value, 0.0)
                    out.append(slots)
            return out
        moments = engine.all_sum(second, what)
        it = iter(moments)                     # two per accumulator that saw output anywhere
        for a, t, u in zip(accs, totals, units):
            a._load(t, u, [] if u is None else [next(it), next(it)])
        for a, neg in zip(accs, signed):       # then one per accumulator with a negative response
            if neg:
                a.min_value = float(next(it).min())
        return int(head[0])

    def _totals(self) -> Tensor:
        """``[population_sum, population_count, stimuli, units, units², 1 if units, 1 if min < 0]`` (float64)."""
        u = 0 if self._s1 is None else self._s1.shape[0]
        return torch.tensor([self.population_sum, float(self.population_count), float(self.stimuli), float(u),
                             float(u * u), float(self._s1 is not None), float(self.min_value < 0)],
                            dtype=torch.float64)

    def _moments(self, units: int | None) -> list[Tensor]:
        """The units' summed first and second moments (zeros when this one saw no output)."""
        if units is None:
            return []
        if self._s1 is None or self._s2 is None:
            zero = torch.zeros(units, dtype=torch.float64)
            return [zero, zero.clone()]
        return [self._s1, self._s2]

    def _load(self, totals: Tensor, units: int | None, moments: list[Tensor]) -> None:
        """Take the sums ``totals`` and ``moments`` (over the ranks) as this accumulator's."""
        self.population_sum = float(totals[0])
        self.population_count = int(totals[1])
        self.stimuli = int(totals[2])
        if units is not None:
            self._s1, self._s2 = moments

    def result(self) -> dict[str, float]:
        """``{"population_sparseness": s, "lifetime_sparseness": s}``, means over stimuli and units (NaN if none)."""
        pop = self.population_sum / self.population_count if self.population_count else float("nan")
        life = float("nan")
        if self._s1 is not None and self.stimuli >= 2:
            m1, m2 = self._s1 / self.stimuli, self._s2 / self.stimuli
            s = (1 - m1.pow(2) / m2) / (1 - 1 / self.stimuli)
            s = s[m2 > 0]
            life = float(s.mean()) if s.numel() else float("nan")
        return {"population_sparseness": pop, "lifetime_sparseness": life}


def _units_of(totals: Tensor) -> int | None:
    """The number of units all the ranks saw (``None``: no output anywhere), from summed totals."""
    u_sum, u_sq, seen = (float(v) for v in totals[3:6])
    if not seen:
        return None
    if u_sq * seen != u_sum * u_sum:
        raise ValueError("the ranks' hooked modules returned different numbers of units; activation sparseness "
                         "needs a fixed number of units (channels)")
    return int(u_sum / seen)


def _module_of(model: nn.Module, key: Any, sel: Selector) -> nn.Module:
    if isinstance(sel, nn.Module):
        if not any(m is sel for m in model.modules()):
            raise ValueError(f"subnet {key!r}: the module {type(sel).__name__} is not a submodule of {type(model).__name__}")
        return sel
    if isinstance(sel, str):
        try:
            return model.get_submodule(sel) if sel else model
        except AttributeError:
            pass
    raise ValueError(f"subnet {key!r} = {sel!r}: activation sparseness needs a submodule (its output is the "
                     f"subnet's activation): pass a dotted module path such as 'inet' or the module itself, "
                     f"not a glob or a list")


def activation_sparseness(model: nn.Module, data: Iterable, subnets: Mapping[Any, Selector] | None = None, *,
                          max_batches: int | None = None, loss_fn: BatchLoss | None = None,
                          sharding: Sharding | None = None, strict: bool = False) -> dict[str, dict[str, float]]:
    """Population and lifetime Treves–Rolls sparseness of the outputs of the model and of subnets.

    See the module's Convention for units and stimuli. The sums are streamed over batches, so
    activations are never stored; the lifetime value is exact over all stimuli seen.

    Args:
        model: Any ``nn.Module``; run in eval mode on ``data`` (not modified).
        data: Iterable of ``(x, y)`` batches (only ``x`` is used).
        subnets: Mapping name → submodule (a dotted path or the module). ``"model"`` (the
            model's own output) is always included.
        max_batches: Use only the first batches of ``data`` (>= 1).
        loss_fn: For batches that are not ``(inputs, targets)`` pairs: a
            :class:`~landprobe.BatchLoss` whose function runs the model on the batch (its
            value is ignored; the hooks read the activations).
        sharding: Under ``torch.distributed``: :class:`landprobe.Sharding` (``data=True``: each
            rank runs the forwards of its share of the batches, the first ``max_batches`` of
            the whole data, and the sums are added over the ranks: every rank returns the
            one-process values). ``None``: every rank runs all the data.
        strict: Raise instead of warning when a subnet returns a negative value (the model's
            own output is not checked).

    Returns:
        ``{"model": {"population_sparseness": s, "lifetime_sparseness": s}, <subnet>: {...}}``.

    Raises:
        ValueError: If a subnet is not a submodule (e.g. a glob), or ``data`` is empty; with
            ``strict=True``, if a subnet returned a negative value.

    Warns:
        UserWarning: Once per hooked module that returned a negative value (the measure assumes
            non-negative activations, such as ReLU outputs), naming it and its smallest value.

    Example:
        >>> import torch
        >>> from landprobe.capacity import activation_sparseness
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3, bias=False), torch.nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])       # ReLU outputs (1, 0, 1) and (1, 1, 2)
        >>> out = activation_sparseness(net, [(x, None)], {"relu": "1"})
        >>> round(out["relu"]["population_sparseness"], 12)  # rows give 1/2 and 1/6: mean 1/3
        0.333333333333
        >>> round(out["relu"]["lifetime_sparseness"], 12)    # units (1,1): 0, (0,1): 1, (1,2): 1/5
        0.4
    """
    check_model(model, "activation_sparseness")
    modules = {MODEL: model}
    for key, sel in (subnets or {}).items():
        if str(key) == MODEL:
            raise ValueError(f"subnets has a key {key!r}, which is reserved for the whole model; rename it")
        modules[str(key)] = _module_of(model, key, sel)
    if loss_fn is not None and not isinstance(loss_fn, BatchLoss):
        raise TypeError(f"loss_fn={loss_fn!r}; activation_sparseness only needs a loss to read batches that are not "
                        f"(inputs, targets) pairs: pass a landprobe.BatchLoss whose fn runs the model, or None")
    if max_batches is not None:
        check_int("max_batches", max_batches, 1)
    # the forward of each batch is what the hooks read: model(inputs), or the BatchLoss's fn
    engine = Engine(model, loss_fn if loss_fn is not None else (lambda o, y: o), data, sharding=sharding)
    ranks = engine.ranks()
    # this rank's k-th batch is batch k·W + r of the whole data: those below max_batches
    limit = None if max_batches is None else len(range(ranks.data_rank, max_batches, ranks.data_world))
    accs = {k: SparsenessAccumulator() for k in modules}

    def run() -> int:
        seen = 0
        if limit == 0:
            return seen
        with contextlib.closing(engine.forwards()) as passes:
            for _ in passes:
                seen += 1
                if limit is not None and seen >= limit:
                    break
        return seen
    handles = []
    try:
        with engine.guard("activation_sparseness"):
            engine.set_eval_modes()
            for k, m in modules.items():
                handles.append(m.register_forward_hook(accs[k]))
            batches = SparsenessAccumulator.all_sum(list(accs.values()), engine, run)
    finally:
        for h in handles:
            h.remove()
    if not batches:
        raise no_batch_error()
    for k, a in accs.items():
        # the model's own output is often signed (regression, logits): reported as it is, unchecked
        if a.min_value < 0 and k != MODEL:
            where = f"subnet {k!r} ({type(modules[k]).__name__})"
            msg = (f"activation_sparseness: {where} returned negative values (most negative {a.min_value:.6g}); "
                   f"the Treves-Rolls sparseness assumes non-negative activations such as ReLU outputs, and on "
                   f"signed values it can leave [0, 1]: hook the module after the ReLU (post-activation) instead")
            if strict:
                raise ValueError(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
    return {k: a.result() for k, a in accs.items()}

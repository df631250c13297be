"""The loss/data contract: what a batch is, how many samples it holds, how its loss is taken.

Two forms, one per kind of user code:

- **pairs** (the default): ``data`` yields ``(inputs, targets)`` and the loss is
  ``loss_fn(model(inputs), targets)``. ``inputs`` may be a tensor, a tuple (positional
  arguments) or a dict (keyword arguments); the sample count is the leading dimension of the
  first tensor of ``inputs``.
- **whole batches**: wrap the loss in :class:`BatchLoss`; ``data`` yields any structure (a dict
  carrying its labels, a graph batch, ...) and the loss is ``fn(model, batch)``, e.g. a
  Hugging Face-style ``model(**batch).loss``. The sample count is the leading dimension of the
  first tensor found in the batch, or what ``samples(batch)`` says.

Every error about the contract is raised here, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BatchLoss", "Contract", "batch_size", "to_device", "call_model", "is_batchnorm", "no_batch_error",
    "FunctionalModel",
]


def no_batch_error() -> ValueError:
    """The error for data that yields nothing."""
    return ValueError("data yielded no batch: pass a non-empty DataLoader, Dataset or list of batches "
                      "((inputs, targets) pairs, or any batch with a BatchLoss)")


def batch_size(x: Any) -> int:
    """Samples in a batch: the leading dimension of the first tensor found (0-d: one sample).

    Example:
        >>> import torch
        >>> from landprobe.engine import batch_size
        >>> batch_size({"ids": torch.zeros(8, 5), "mask": torch.ones(8, 5)})
        8
    """
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.dim() else 1
    if isinstance(x, (list, tuple)):
        for v in x:
            try:
                return batch_size(v)
            except TypeError:
                continue
    if isinstance(x, Mapping):
        for v in x.values():
            try:
                return batch_size(v)
            except TypeError:
                continue
    raise TypeError(f"cannot tell the number of samples in a batch of type {type(x).__name__}: no tensor in it. "
                    f"Batches must hold tensors, or pass BatchLoss(fn, samples=lambda batch: ...)")


def to_device(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Tensors of a batch (nested tuples, lists, dicts) on ``device``; floating ones in ``dtype``
    when given. Other leaves are returned as they are.

    Example:
        >>> import torch
        >>> from landprobe.engine import to_device
        >>> b = to_device({"x": torch.ones(2), "n": torch.tensor([1, 2]), "tag": "a"}, torch.device("cpu"), torch.float64)
        >>> b["x"].dtype, b["n"].dtype, b["tag"]
        (torch.float64, torch.int64, 'a')
    """
    if isinstance(x, Tensor):
        if dtype is not None and x.is_floating_point() and x.dtype != dtype:
            return x.to(device=device, dtype=dtype)
        return x if x.device == device else x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        items = [to_device(v, device, dtype) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    if isinstance(x, Mapping):
        moved = {k: to_device(v, device, dtype) for k, v in x.items()}
        try:
            return type(x)(moved)
        except TypeError:
            return moved
    return x


def call_model(model: Callable, x: Any) -> Any:
    """``model(x)``; a tuple/list input is unpacked as positional arguments, a dict as keywords.

    Example:
        >>> from landprobe.engine import call_model
        >>> call_model(lambda a, b=0: a + b, {"a": 1, "b": 2}), call_model(lambda a, b: a * b, (3, 4))
        (3, 12)
    """
    if isinstance(x, (list, tuple)):
        return model(*x)
    if isinstance(x, Mapping):
        return model(**x)
    return model(x)


def is_batchnorm(m: nn.Module) -> bool:
    """True for BatchNorm layers (1d/2d/3d, SyncBatchNorm, lazy ones).

    Example:
        >>> import torch
        >>> from landprobe.engine import is_batchnorm
        >>> is_batchnorm(torch.nn.BatchNorm2d(3)), is_batchnorm(torch.nn.LayerNorm(3))
        (True, False)
    """
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


class FunctionalModel:
    """The model called with other parameter tensors (``torch.func.functional_call``).

    Calling it runs ``model`` with ``params`` in place of its own (the rest from the model;
    ``tie_weights=False`` skips the search for tensors tied under two names, for models known
    to have none);
    any other attribute is the model's, so a :class:`BatchLoss` function may read
    ``model.config`` or call ``model.encoder`` as it would on the model itself (those calls
    use the model's own parameters).

    Example:
        >>> import torch
        >>> from landprobe.engine import FunctionalModel
        >>> lin = torch.nn.Linear(1, 1, bias=False)
        >>> f = FunctionalModel(lin, {"weight": torch.tensor([[3.0]])})
        >>> f(torch.ones(1, 1)).item(), f.in_features
        (3.0, 1)
    """

    def __init__(self, model: nn.Module, params: Mapping[str, Tensor], tie_weights: bool = True):
        self._model, self._params, self._tie = model, params, tie_weights

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.func import functional_call

        return functional_call(self._model, dict(self._params), args, kwargs, tie_weights=self._tie)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class BatchLoss:
    """A loss taken from the model and a whole batch: ``fn(model, batch)`` -> scalar tensor.

    Use it for batches that are not ``(inputs, targets)`` pairs: a dict that carries its
    labels, a model that returns its own loss (``model(**batch).loss``), a graph batch. The
    loss must be a mean over the batch's samples (the empirical error weighs each batch by
    its sample count).

    Args:
        fn: ``fn(model, batch)``. ``model`` may be a stand-in that calls the real model with
            the probed parameters; call it as you would the model.
        samples: ``samples(batch)`` -> the number of samples in it; default the leading
            dimension of the first tensor found in the batch.

    Example:
        >>> import torch, landprobe as lp
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> def loss(model, batch):                    # the batch carries its own target
        ...     return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
        >>> data = [{"x": torch.ones(4, 1), "y": torch.zeros(4, 1)}]
        >>> probe = lp.LandscapeProbe(model, lp.BatchLoss(loss), data)
        >>> probe.loss({"weight": torch.tensor([[3.0]])})          # (3 * 1 - 0)**2
        9.0
    """

    def __init__(self, fn: Callable[[Any, Any], Tensor], *, samples: Callable[[Any], int] | None = None):
        if isinstance(fn, type) or not callable(fn):
            raise TypeError(f"BatchLoss(fn): fn must be a callable fn(model, batch) -> scalar tensor, "
                            f"got {fn!r}")
        if samples is not None and not callable(samples):
            raise TypeError(f"BatchLoss(samples=...): expected a callable batch -> int, got {samples!r}")
        self.fn = fn
        self.samples = samples

    def __call__(self, model: Any, batch: Any) -> Tensor:
        return self.fn(model, batch)

    def __repr__(self) -> str:
        return f"BatchLoss({getattr(self.fn, '__qualname__', self.fn)!r})"


class Contract:
    """One loss function's reading of the data: batches, sample counts, forward and loss.

    A prepared batch is ``(inputs, targets)`` for the pair form and the batch itself for a
    :class:`BatchLoss`; the methods below take it as they return it.
    """

    def __init__(self, loss_fn: Callable):
        self.loss_fn = loss_fn
        self.whole = isinstance(loss_fn, BatchLoss)

    def prepare(self, batch: Any, device: torch.device, dtype: torch.dtype | None = None) -> tuple[Any, int]:
        """The batch on ``device`` (floating tensors in ``dtype`` when given) and its sample count."""
        if self.whole:
            return to_device(batch, device, dtype), self.samples(batch)
        x, y = self.unpack(batch)
        return (to_device(x, device, dtype), to_device(y, device, dtype)), batch_size(x)

    def samples(self, batch: Any) -> int:
        """Sample count of a raw (unprepared) batch."""
        if not self.whole:
            return batch_size(self.unpack(batch)[0])
        if self.loss_fn.samples is None:
            return batch_size(batch)
        n = self.loss_fn.samples(batch)
        if isinstance(n, Tensor) and n.numel() == 1:
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"BatchLoss samples(batch) returned {n!r}; expected a number of samples >= 0")
        return n

    @staticmethod
    def unpack(batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, (list, tuple)) and len(batch) == 2:
            return batch[0], batch[1]
        kind = type(batch).__name__ + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else "")
        raise ValueError(
            f"each item of the data must be a pair (inputs, targets) for loss_fn(model(inputs), targets); got "
            f"{kind}. Wrap a dataset in a DataLoader or pass a list of (x, y) batches; for batches of another "
            f"structure (e.g. dicts that carry their labels) pass loss_fn=landprobe.BatchLoss(fn) with "
            f"fn(model, batch) -> loss."
        )

    def forward(self, model: Callable, batch: Any) -> Any:
        """The model's forward on a prepared batch (a :class:`BatchLoss` runs its function)."""
        if self.whole:
            return self.loss_fn(model, batch)
        return call_model(model, batch[0])

    def loss(self, model: Callable, batch: Any, outputs: list | None = None) -> Tensor:
        """The loss of a prepared batch, checked to be one number, as a 0-d tensor (graph kept);
        the model's output is appended to ``outputs`` when given (pair form)."""
        if self.whole:
            return check_loss(self.loss_fn(model, batch))
        x, y = batch
        try:
            out = call_model(model, x)
            if outputs is not None:
                outputs.append(out)
            return check_loss(self.loss_fn(out, y))
        except RuntimeError as exc:
            if type(exc) is RuntimeError:  # torch's shape and dtype errors; not the probe's own errors
                exc.add_note(f"raised by loss_fn(model(inputs), targets) on a batch with inputs {_shapes(x)} and "
                             f"targets {_shapes(y)}: check that the data's shapes and dtypes fit the model and "
                             f"the loss")
            raise

    def inputs(self, batch: Any) -> Any:
        """The model inputs of a prepared batch (pair form only; what ``control`` and
        activation measures read)."""
        if self.whole:
            raise ValueError("this measure needs (inputs, targets) pairs and loss_fn(output, target); it cannot "
                             "be used with a BatchLoss")
        return batch[0]


def looks_sum_reduced(loss_fn: Callable, output: Any, target: Any, whole: float | None = None) -> bool:
    """Whether ``loss_fn`` adds up (rather than averages) its samples. A torch loss module says so
    itself (``reduction="sum"``); any other callable is judged on one batch's model ``output``
    and ``target`` (``whole``: its loss, if already known): the loss of the batch equals the sum
    of the losses of its two halves and not their sample-weighted mean. Needs tensors with at
    least 2 samples (else False). Costs two calls of ``loss_fn`` on halves of the batch, no
    forward of the model.

    Example:
        >>> import torch
        >>> from landprobe.engine.contract import looks_sum_reduced
        >>> out, y = torch.randn(8, 1), torch.randn(8, 1)
        >>> looks_sum_reduced(torch.nn.MSELoss(reduction="sum"), out, y)
        True
        >>> looks_sum_reduced(torch.nn.MSELoss(), out, y)
        False
    """
    if isinstance(getattr(loss_fn, "reduction", None), str):
        return loss_fn.reduction == "sum"                # type: ignore[attr-defined]
    if not (isinstance(output, Tensor) and isinstance(target, Tensor) and output.dim() and target.dim()
            and output.shape[0] == target.shape[0] >= 2):
        return False
    n = output.shape[0]
    h = n // 2
    with torch.no_grad():
        first, second = float(loss_fn(output[:h], target[:h])), float(loss_fn(output[h:], target[h:]))
        whole = float(loss_fn(output, target)) if whole is None else float(whole)
    mean, total = (h * first + (n - h) * second) / n, first + second
    if not all(math.isfinite(v) for v in (whole, mean, total)) or abs(total - mean) <= 1e-3 * abs(total):
        return False                                     # a zero loss, or halves that cannot tell
    return abs(whole - total) <= 1e-3 * abs(total) and abs(whole - mean) > 1e-2 * abs(whole)


def _shapes(x: Any) -> Any:
    """The shapes in a batch part, for error messages: ``(4, 3)`` for a tensor, nested for tuples and dicts."""
    if isinstance(x, Tensor):
        return tuple(x.shape)
    if isinstance(x, (list, tuple)):
        return [_shapes(v) for v in x]
    if isinstance(x, Mapping):
        return {k: _shapes(v) for k, v in x.items()}
    return type(x).__name__


def check_loss(loss: Any) -> Tensor:
    """``loss`` as a 0-d tensor; ``ValueError`` unless it is a one-element tensor."""
    if isinstance(loss, Tensor) and loss.dim() == 0:
        return loss
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(
            "loss_fn must return a scalar tensor (a mean-reduced loss such as nn.MSELoss()); "
            f"got {type(loss).__name__}" + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    return loss.reshape(())


def cycle(batches: Callable[[], Iterator]) -> Iterator:
    """The batches of ``batches()`` over and over (a new pass each time the data runs out)."""
    while True:
        empty = True
        for batch in batches():
            empty = False
            yield batch
        if empty:
            raise no_batch_error()

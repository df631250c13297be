"""The evaluation engine every probe shares: model guard, data passes, BatchNorm handling.

Nothing here is public; :class:`landprobe.LandscapeProbe` is the user's door.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

BN_MODES = ("eval", "train", "recompute")


def batch_size(x: Any) -> int:
    """Samples in a batch input: the leading dimension of the first tensor found."""
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.dim() else 1
    if isinstance(x, (list, tuple)):
        for v in x:
            return batch_size(v)
    if isinstance(x, dict):
        for v in x.values():
            return batch_size(v)
    raise TypeError(f"cannot tell the batch size of an input of type {type(x).__name__}; inputs must be tensors "
                    f"(or tuples/dicts of tensors)")


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x if x.device == device else x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def call_model(model: Callable, x: Any) -> Any:
    """``model(x)``; a tuple/list input is unpacked as positional arguments, a dict as keywords."""
    if isinstance(x, (list, tuple)):
        return model(*x)
    if isinstance(x, dict):
        return model(**x)
    return model(x)


def unpack_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        f"each item of the data must be a pair (inputs, targets); got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else "")
        + ". Wrap a dataset in a DataLoader or pass a list of (x, y) batches."
    )


def is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


# --------------------------------------------------------------------------- RNG
def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensor_attrs(mod: nn.Module) -> dict[str, Tensor]:
    """Tensor-valued plain attributes of a module (not parameters or buffers)."""
    return {k: v for k, v in vars(mod).items() if isinstance(v, Tensor) and not isinstance(v, nn.Parameter)}


class ModelGuard(contextlib.AbstractContextManager):
    """Snapshot everything a probe may touch and restore it exactly on exit.

    Parameters and buffers are restored bitwise from one clone taken on entry (so a probe
    costs one extra copy of the model's state, not one per point); ``requires_grad`` flags,
    each module's train/eval mode, BatchNorm momenta and the global RNG states (torch, CUDA,
    numpy, Python) are put back too, also when an exception or KeyboardInterrupt ends the
    probe. Plain tensor attributes of modules (caches a forward may set, e.g.
    ``self._cache = ...``) are put back by identity: one set during the probe is removed, one
    replaced is restored. The probe evaluates under ``torch.inference_mode``; without this, a
    cache created then would be an inference tensor that later breaks the user's training.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> ModelGuard:
        m = self.model
        self._params = [(p, p.detach().clone(), p.requires_grad) for p in m.parameters()]
        self._buffers = [(mod, name, b, b.detach().clone()) for mod in m.modules()
                         for name, b in mod._buffers.items() if b is not None]
        self._modes = [(mod, mod.training) for mod in m.modules()]
        self._momenta = [(mod, mod.momentum) for mod in m.modules() if is_batchnorm(mod)]
        self._attrs = [(mod, _tensor_attrs(mod)) for mod in m.modules()]
        self._rng = _rng_state()
        return self

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for p, saved, flag in self._params:
                p.copy_(saved)
                p.requires_grad_(flag)
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
        _set_rng_state(self._rng)
        return None


# --------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Empirical error of one parameter set: sample-weighted mean over the data."""

    loss: float
    stderr: float
    batch_losses: np.ndarray
    batch_sizes: np.ndarray

    @staticmethod
    def from_batches(losses: Sequence[float], sizes: Sequence[int], population: int | None = None) -> Evaluation:
        """Mean and standard error from per-batch losses and sizes.

        Without ``population`` the standard error is that of a ratio (cluster) estimator over
        batches, Var = B/(B-1) Σ w_b² (l_b − m)² (s²/B for equal batches): how well a random
        subset of such batches pins the mean down; with all the data evaluated the mean itself
        is exact. With ``population`` (the number of samples the batches were drawn from,
        without replacement) the finite-population factor (1 − n/N) is applied: the error of
        the estimate of the full-data mean, zero once every sample is used.
        """
        l = np.asarray(losses, dtype=np.float64)
        n = np.asarray(sizes, dtype=np.int64)
        # Plain Python floats: for the handful of batches of one point this is several times
        # cheaper than numpy's per-call overhead, and it runs once per point.
        lf, nf = l.tolist(), [float(v) for v in sizes]
        total = math.fsum(nf)
        mean = math.fsum(ni * li for ni, li in zip(nf, lf)) / total
        b = len(lf)
        if b > 1:
            var = b / (b - 1) * math.fsum((ni / total) ** 2 * (li - mean) ** 2 for ni, li in zip(nf, lf))
            if population is not None:
                var *= max(0.0, 1.0 - total / population)
            se = math.sqrt(var)
        else:
            se = float("nan")
        return Evaluation(mean, se, l, n)

    @staticmethod
    def with_control(losses: Sequence[float], sizes: Sequence[int], covariates: np.ndarray,
                     population_mean: np.ndarray, population: int) -> Evaluation:
        """Regression estimator with control variates (Cochran 1977, ch. 7).

        ``covariates[b]`` is batch b's mean of per-sample covariates whose mean over the whole
        data, ``population_mean``, is known exactly. With batch weights w_b = n_b/n, the
        weighted least-squares fit l_b ≈ a + βᵀc_b gives the estimate
        m = l̄ − βᵀ(c̄ − C̄) and, from the residuals e_b,
        Var = (1 − n/N) · B/(B − k − 1) · Σ w_b² e_b². When the covariates predict the batch
        losses well the variance shrinks by about 1 − R²; when they do not, the estimate
        stays honest and the stopping rule simply needs more batches. The bias is O(1/B).
        Once every sample is used, c̄ = C̄ and the estimate is the exact mean.
        """
        l = np.asarray(losses, dtype=np.float64)
        n = np.asarray(sizes, dtype=np.float64)
        c = np.asarray(covariates, dtype=np.float64).reshape(len(l), -1)
        total = n.sum()
        w = n / total
        lbar = float(np.dot(w, l))
        cbar = w @ c
        b, k = len(l), c.shape[1]
        dc = c - cbar
        sw = np.sqrt(w)[:, None]
        beta, *_ = np.linalg.lstsq(sw * dc, sw[:, 0] * (l - lbar), rcond=None)
        mean = lbar - float(beta @ (cbar - np.asarray(population_mean, dtype=np.float64)))
        resid = l - lbar - dc @ beta
        dof = b - k - 1
        if dof > 0:
            var = b / dof * np.sum(w**2 * resid**2) * max(0.0, 1.0 - total / population)
            se = float(math.sqrt(var))
        else:
            se = float("nan")
        return Evaluation(mean, se, l, n.astype(np.int64))


class Engine:
    """Runs the data through the model at given parameter values, in place, fast and safely."""

    def __init__(self, model: nn.Module, loss_fn: Callable, data: Iterable, *, bn: str = "eval",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 precision: float | None = None, min_batches: int = 4, batch_size: int | None = None,
                 seed: int = 0, control: Callable | None = None):
        if not isinstance(model, nn.Module):
            if isinstance(model, type) and issubclass(model, nn.Module):
                raise TypeError(f"received the class {model.__name__}; instantiate it: {model.__name__}(...)")
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (e.g. torch.nn.MSELoss()), got {type(loss_fn).__name__}")
        if isinstance(loss_fn, type):
            raise TypeError(f"loss_fn is the class {loss_fn.__name__}; instantiate it: {loss_fn.__name__}()")
        if bn not in BN_MODES:
            raise ValueError(f"bn={bn!r}; expected one of {BN_MODES} (see LandscapeProbe's docstring)")
        if data is None or isinstance(data, (Tensor, str)):
            raise TypeError("data must be an iterable of (inputs, targets) batches: a DataLoader or a list of pairs")
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.bn = bn
        first = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
        if first is not None and first.device != self.device:
            raise ValueError(
                f"the model lives on {first.device} but device={self.device} was asked for; move the "
                f"model first (model.to({str(self.device)!r})): a probe never moves the user's model."
            )
        if dtype is not None and dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype={dtype}; expected None (the model's own), torch.bfloat16/float16 (autocast) or float32/64")
        model_dtype = first.dtype if first is not None else torch.float32
        if dtype in (torch.float32, torch.float64) and dtype != model_dtype:
            raise ValueError(f"dtype={dtype} but the model's parameters are {model_dtype}; convert the model "
                             f"(model.to({dtype})) or pass dtype=None")
        self.dtype = dtype
        from landprobe._hardware import warn_if_slow_autocast

        warn_if_slow_autocast(self.device, dtype, "dtype=torch.bfloat16", stacklevel=4)
        self._bns = [m for m in model.modules() if is_batchnorm(m)]
        self.precision = precision
        if control is not None and (precision is None or not callable(control)):
            raise ValueError(
                "control= needs precision= (it reduces the variance of precision-targeted evaluation) and a "
                f"callable control(x, y) -> per-sample covariates; got control={control!r}, precision={precision!r}"
            )
        self.control = control
        self._sampler = (None if precision is None else
                         _PrecisionSampler(data, precision, min_batches, batch_size, seed, control))

    # ---- contexts
    def autocast(self):
        if self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def set_eval_modes(self) -> None:
        """Eval mode everywhere; BatchNorm in train mode under ``bn='train'``."""
        self.model.eval()
        if self.bn == "train":
            for m in self._bns:
                m.train()

    # ---- passes
    def batches(self):
        for batch in self.data:
            x, y = unpack_batch(batch)
            yield to_device(x, self.device), to_device(y, self.device)

    def recompute_bn(self) -> None:
        """Reset BatchNorm statistics and re-estimate them with a cumulative average over the data."""
        if not self._bns:
            return
        for m in self._bns:
            if m.track_running_stats:
                m.reset_running_stats()
                m.momentum = None
            m.train()
        with torch.no_grad(), self.autocast():
            for x, _ in self.batches():
                call_model(self.model, x)
        for m in self._bns:
            m.eval()

    def evaluate(self) -> Evaluation:
        """One pass over the data at the model's current parameters (modes already set)."""
        if self.bn == "recompute":
            self.recompute_bn()
            self.set_eval_modes()
        if self._sampler is not None:
            return self._evaluate_to_precision()
        losses: list[Tensor] = []
        sizes: list[int] = []
        with torch.inference_mode(), self.autocast():
            for x, y in self.batches():
                out = call_model(self.model, x)
                loss = self.loss_fn(out, y)
                if not isinstance(loss, Tensor) or loss.dim() != 0:
                    loss = self._check_loss(loss)   # raises unless a one-element tensor
                losses.append(loss)
                sizes.append(batch_size(x))
        if not losses:
            raise ValueError("data yielded no batch: pass a non-empty DataLoader or list of (x, y) pairs")
        if any(l.dtype != losses[0].dtype for l in losses):
            losses = [l.double() for l in losses]
        vals = torch.stack(losses).double().cpu().numpy()   # one device sync per point
        return Evaluation.from_batches(vals, sizes)

    @staticmethod
    def _check_loss(loss: Any) -> Tensor:
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                "loss_fn must return a scalar tensor (a mean-reduced loss such as nn.MSELoss()); "
                f"got {type(loss).__name__}" + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
            )
        return loss.detach().reshape(()).double()

    def _evaluate_to_precision(self) -> Evaluation:
        """Seeded random batches until 2·stderr <= precision·|loss| (or the data runs out)."""
        sampler = self._sampler
        means = sampler.control_means() if sampler.control is not None else None
        losses: list[float] = []
        sizes: list[int] = []
        with torch.inference_mode(), self.autocast():
            for i, batch in enumerate(sampler.batches()):
                x, y = unpack_batch(batch)
                x, y = to_device(x, self.device), to_device(y, self.device)
                losses.append(float(self._check_loss(self.loss_fn(call_model(self.model, x), y))))
                sizes.append(batch_size(x))
                if len(losses) >= sampler.min_batches:
                    ev = self._estimate(losses, sizes, means)
                    if 2.0 * ev.stderr <= sampler.precision * abs(ev.loss):
                        return ev
        if not losses:
            raise ValueError("data yielded no batch: pass a non-empty DataLoader, Dataset or list of (x, y) pairs")
        return self._estimate(losses, sizes, means)

    def _estimate(self, losses, sizes, means) -> Evaluation:
        sampler = self._sampler
        if means is None:
            return Evaluation.from_batches(losses, sizes, population=sampler.population)
        covariates, population_mean = means
        return Evaluation.with_control(losses, sizes, covariates[: len(losses)], population_mean,
                                       population=sampler.population)


class _PrecisionSampler:
    """Seeded random batches for precision-targeted evaluation.

    The same random order serves every point of a probe (common random numbers: differences
    between points, such as barriers, are measured on the same samples).
    """

    def __init__(self, data: Any, precision: float, min_batches: int, batch_size_: int | None, seed: int,
                 control: Callable | None = None):
        from torch.utils.data import DataLoader, Dataset, IterableDataset
        from torch.utils.data._utils.collate import default_collate

        if not (isinstance(precision, (int, float)) and 0 < precision < 1 and math.isfinite(precision)):
            raise ValueError(f"precision={precision!r}; expected a relative error in (0, 1), e.g. 0.01 for ±1% (2σ)")
        if not isinstance(min_batches, int) or min_batches < 2:
            raise ValueError(f"min_batches={min_batches!r}; expected an integer >= 2 (a standard error needs two batches)")
        self.precision, self.min_batches = float(precision), min_batches
        self.control = control
        self._control_means: tuple[np.ndarray, np.ndarray] | None = None
        gen = torch.Generator().manual_seed(int(seed))
        if isinstance(data, DataLoader):
            if isinstance(data.dataset, IterableDataset):
                raise ValueError("precision= needs random access to the data: a DataLoader over a map-style "
                                 "Dataset, a Dataset, or a list of (x, y) batches; got an IterableDataset")
            dataset, bs, collate = data.dataset, batch_size_ or data.batch_size or 1, data.collate_fn
        elif isinstance(data, (list, tuple)):
            self._mode = "batches"
            self._batches = data
            self._order = torch.randperm(len(data), generator=gen).tolist()
            self.population = sum(batch_size(unpack_batch(b)[0]) for b in data)
            return
        elif isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            dataset, bs, collate = data, batch_size_ or 64, default_collate
        else:
            raise ValueError(f"precision= needs random access to the data (a list of batches, a map-style "
                             f"Dataset or a DataLoader over one); got {type(data).__name__}")
        self._mode = "samples"
        self._dataset, self._bs, self._collate = dataset, int(bs), collate
        self.population = len(dataset)
        self._order = torch.randperm(len(dataset), generator=gen).tolist()

    def batches(self):
        if self._mode == "batches":
            for i in self._order:
                yield self._batches[i]
            return
        for i in range(0, len(self._order), self._bs):
            yield self._collate([self._dataset[j] for j in self._order[i:i + self._bs]])

    def control_means(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-batch covariate means in the sampling order, ``(batches, k)``, and the exact
        population mean ``(k,)``: one pass of ``control`` over all the data, once per probe."""
        if self._control_means is None:
            rows, sizes = [], []
            with torch.inference_mode():
                for batch in self.batches():
                    x, y = unpack_batch(batch)
                    c = self.control(x, y)
                    n = batch_size(x)
                    if not isinstance(c, Tensor) or c.dim() not in (1, 2) or c.shape[0] != n:
                        got = f"shape {tuple(c.shape)}" if isinstance(c, Tensor) else type(c).__name__
                        raise ValueError(
                            f"control(x, y) must return a tensor of per-sample covariates, shape ({n},) or "
                            f"({n}, k) for a batch of {n}; got {got}"
                        )
                    c = c.detach().to("cpu", torch.float64).reshape(n, -1)
                    if not torch.isfinite(c).all():
                        raise ValueError("control(x, y) returned NaN or inf; covariates must be finite")
                    rows.append(c.mean(0).numpy())
                    sizes.append(n)
            per_batch = np.stack(rows)
            w = np.asarray(sizes, dtype=np.float64)
            self._control_means = (per_batch, (w[:, None] * per_batch).sum(0) / w.sum())
            # The residual variance needs degrees of freedom, or the stopping rule stops on an
            # underestimate: with k covariates at least 4(k + 1) batches (measured: 2σ bars
            # covered 79% of 200 seeded runs at k + 1 batches, 94% at 4(k + 1), plain 93%).
            self.min_batches = max(self.min_batches, 4 * (per_batch.shape[1] + 1))
        return self._control_means

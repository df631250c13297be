"""``LandscapeProbe``: the empirical error of a model as a function of its parameters."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from landprobe.params import ParamVector, Selector, as_param_vector, select, state_names
from landprobe.probes._engine import Engine, Evaluation, ModelGuard
from landprobe.probes.results import Curve

__all__ = ["LandscapeProbe"]


def _dist_info() -> tuple[int, int]:
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


class LandscapeProbe:
    """The empirical error of ``model`` on ``data``, probed at any parameter values.

    The empirical error of θ is the sample-weighted mean over ``data`` of
    ``loss_fn(model(x), y)`` (exact for mean-reduced losses: each batch counts by its
    number of samples). A probe writes each θ into the model's own tensors, measures (under
    ``torch.inference_mode``), and restores parameters, buffers, ``requires_grad`` flags,
    train/eval modes and the global RNG states bitwise when it ends, also on an exception or
    KeyboardInterrupt; tensor attributes that a forward sets on a module (caches) are put
    back by identity. It makes no
    copy of the model per point: one clone of its state is taken per call.

    Args:
        model: Any ``nn.Module``. It is measured in eval mode (dropout off).
        loss_fn: ``loss_fn(model(x), y)`` returning a scalar, mean-reduced tensor.
        data: An iterable of ``(x, y)`` batches, iterated once per point: a DataLoader or a
            list of pairs. ``x`` may be a tuple (positional inputs) or dict (keywords).
        bn: BatchNorm handling.
            ``"eval"`` (default): running statistics are used, and they are interpolated
            with the weights (floating buffers move like parameters), so the ends of a curve
            are exactly the losses of the endpoint models in eval mode.
            ``"train"``: BatchNorm normalises with each batch's own statistics (as in
            training); the running statistics are not used, and are left untouched.
            ``"recompute"``: at each point the running statistics are reset and re-estimated
            by one pass over ``data`` (cumulative average), then the loss is measured in eval
            mode: the loss of the model one would deploy at θ. Costs a second pass per point.
        device: Where to evaluate; default the model's device. The model is never moved.
        dtype: ``None`` evaluates in the model's dtype (fp32 recommended: barriers are small
            differences); ``torch.bfloat16`` opts in to autocast.
        progress: Show a progress bar over the points of multi-point probes.
        precision: ``None`` (default): every point is one pass over all of ``data``. A number
            such as ``0.01``: each point is evaluated on seeded random batches, drawn without
            replacement, until its 2σ standard error (finite-population corrected) falls below
            ``precision`` times the loss, or the data runs out (then the loss is exact). The
            same random order serves every point (common random numbers), and each point's
            error is reported (``Curve.stderr``). Needs random access: a list of batches, a
            map-style Dataset, or a DataLoader over one (its ``batch_size`` and ``collate_fn``).
        min_batches: With ``precision``: batches evaluated before the stopping rule applies.
        batch_size: With ``precision`` and a Dataset: samples per batch (default: the
            DataLoader's, or 64).
        seed: With ``precision``: seed of the random order (the global RNG is not used).
        control: With ``precision``: control variates, a callable ``control(x, y)`` returning
            per-sample covariates, shape ``(batch,)`` or ``(batch, k)``, that do not depend on
            the model and that track the per-sample loss (for super-resolution,
            :func:`landprobe.data.sr_covariates`: the bicubic input's error and the target's
            energy). Their exact mean is computed once by one pass of ``control`` over the
            data; each point is then estimated by regression on them (see
            ``Evaluation.with_control``), which needs about 1 − R² as many samples for the
            same precision. At least 4(k + 1) batches are drawn per point, so that the
            residual variance is not underestimated. Poor covariates cost nothing but the
            pass and those batches: the error stays honest and more batches are drawn.

    Example:
        >>> import torch, landprobe as lp
        >>> model = torch.nn.Linear(1, 1, bias=False)              # y_hat = w * x
        >>> data = [(torch.ones(4, 1), torch.zeros(4, 1))]          # so L(w) = w**2
        >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), data)
        >>> probe.loss({"weight": torch.tensor([[3.0]])})
        9.0
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, data: Iterable, *, bn: str = "eval",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 progress: bool = False, precision: float | None = None, min_batches: int = 4,
                 batch_size: int | None = None, seed: int = 0, control: Callable | None = None):
        self.engine = Engine(model, loss_fn, data, bn=bn, device=device, dtype=dtype, precision=precision,
                             min_batches=min_batches, batch_size=batch_size, seed=seed, control=control)
        self.progress = progress

    # ---- conveniences
    @property
    def model(self) -> nn.Module:
        return self.engine.model

    @property
    def data(self) -> Iterable:
        return self.engine.data

    @property
    def loss_fn(self) -> Callable:
        return self.engine.loss_fn

    @property
    def bn(self) -> str:
        return self.engine.bn

    def _state_names(self, subnet: Selector | None = None) -> list[str]:
        """Parameters, plus the floating buffers that move with them under ``bn='eval'``."""
        model = self.model
        names = select(model, subnet)
        if self.bn == "eval":
            bufs = dict(model.named_buffers())
            names += [n for n in select(model, subnet, buffers=True, allow_empty=True)
                      if bufs[n] is not None and bufs[n].is_floating_point()]
        return names

    def _settings(self, **kw: Any) -> dict[str, Any]:
        from landprobe import __version__

        kw.update(bn=self.bn, device=str(self.engine.device), precision=self.engine.precision,
                  dtype=str(self.engine.dtype or next(self.model.parameters()).dtype),
                  model=type(self.model).__name__, landprobe=__version__)
        if self.engine.control is not None:
            kw["control"] = getattr(self.engine.control, "__qualname__", repr(self.engine.control))
        return kw

    def _targets(self, names: Sequence[str]) -> list[torch.Tensor]:
        state = dict(self.model.named_parameters())
        state.update(dict(self.model.named_buffers()))
        return [state[n].data for n in names]

    # ---- single points
    def evaluate(self, theta: Any = None) -> Evaluation:
        """Loss, standard error and per-batch losses at ``theta`` (``None``: the model as it is).

        Example:
            >>> import torch, landprobe as lp
            >>> model = torch.nn.Linear(1, 1, bias=False)
            >>> data = [(torch.ones(2, 1), torch.zeros(2, 1)), (torch.ones(6, 1), torch.ones(6, 1))]
            >>> ev = lp.LandscapeProbe(model, torch.nn.MSELoss(), data).evaluate({"weight": torch.tensor([[0.0]])})
            >>> ev.loss, ev.batch_losses.tolist(), ev.batch_sizes.tolist()   # (2*0 + 6*1) / 8
            (0.75, [0.0, 1.0], [2, 6])
        """
        with ModelGuard(self.model):
            if theta is not None:
                names = self._state_names()
                vec = as_param_vector(theta, self.model, names=names)
                with torch.no_grad():
                    torch._foreach_copy_(self._targets(names), vec.tensors)
            self.engine.set_eval_modes()
            return self.engine.evaluate()

    def loss(self, theta: Any = None) -> float:
        """Empirical error at ``theta``: a state_dict, module or ParamVector (``None``: as is).

        Example:
            >>> import torch, landprobe as lp
            >>> model = torch.nn.Linear(2, 1, bias=False)
            >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); y = torch.zeros(2, 1)
            >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)])
            >>> probe.loss({"weight": torch.tensor([[1.0, 3.0]])})    # (1 + 9) / 2
            5.0
        """
        return self.evaluate(theta).loss

    # ---- many points
    def _sweep(self, names: Sequence[str], points: Sequence[Callable[[list[torch.Tensor]], None]],
               desc: str) -> list[Evaluation]:
        """Evaluate points given as in-place writers of the target tensors; split across ranks."""
        rank, world = _dist_info()
        mine = list(range(rank, len(points), world))
        results: dict[int, Evaluation] = {}
        with ModelGuard(self.model):
            self.engine.set_eval_modes()
            targets = self._targets(names)
            with torch.no_grad():
                for i in _progress(mine, len(mine), desc, self.progress and rank == 0):
                    points[i](targets)
                    results[i] = self.engine.evaluate()
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, results)
            for part in gathered:
                results.update(part)
        return [results[i] for i in range(len(points))]

    def _sweep_vmap(self, names: Sequence[str], values: Sequence[Callable[[], list[torch.Tensor]]],
                    chunk: int, desc: str) -> list[Evaluation]:
        """Evaluate ``chunk`` points per model call: ``functional_call`` under ``vmap``."""
        from torch.func import functional_call, vmap
        from torch.utils._pytree import tree_map

        from landprobe.probes._engine import batch_size, call_model

        if self.bn != "eval":
            raise ValueError(f"batch_points > 1 needs bn='eval' (got bn={self.bn!r}); use batch_points=1")
        if self.engine.precision is not None:
            raise ValueError("batch_points > 1 evaluates all the data per point; it cannot be combined with "
                             "precision= (use batch_points=1)")
        model, engine = self.model, self.engine
        rank, world = _dist_info()
        chunks = [list(range(i, min(i + chunk, len(values)))) for i in range(0, len(values), chunk)]
        mine = chunks[rank::world]
        results: dict[int, Evaluation] = {}

        def one(params, x):
            return call_model(lambda *args, **kw: functional_call(model, params, args, kw), x)

        batched = vmap(one, in_dims=(0, None))
        with ModelGuard(model):
            engine.set_eval_modes()
            with torch.no_grad(), engine.autocast():
                for idx in _progress(mine, len(mine), desc, self.progress and rank == 0):
                    stacked = {n: torch.stack(ts) for n, ts in zip(names, zip(*(values[i]() for i in idx)))}
                    per_point: list[list[torch.Tensor]] = [[] for _ in idx]
                    sizes: list[int] = []
                    for x, y in engine.batches():
                        try:
                            outs = batched(stacked, x)
                        except RuntimeError as exc:
                            raise RuntimeError(
                                f"this model cannot be evaluated under torch.func.vmap ({exc}); "
                                f"use batch_points=1"
                            ) from exc
                        for j in range(len(idx)):
                            out_j = tree_map(lambda t, j=j: t[j], outs)
                            per_point[j].append(self.loss_fn(out_j, y).detach().reshape(()).double())
                        sizes.append(batch_size(x))
                    for j, i in enumerate(idx):
                        results[i] = Evaluation.from_batches(torch.stack(per_point[j]).cpu().numpy(), sizes)
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, results)
            for part in gathered:
                results.update(part)
        return [results[i] for i in range(len(values))]

    def interpolate(self, a: Any, b: Any, steps: int = 51, *, subnet: Selector | None = None,
                    extend: float = 0.0, batch_points: int = 1) -> Curve:
        """Evaluate the empirical error on the segment θ(α) = (1 − α)·a + α·b.

        Args:
            a, b: Endpoints: state_dicts, modules or ParamVectors of the probed model. A
                buffer missing from an endpoint is taken from the model as it is.
            steps: Evenly spaced alphas in [0, 1], both ends included. At least 2.
            subnet: Selector of the parameters that move; the others stay at ``a``.
            extend: Extrapolate past both ends by this fraction of the segment, on the same
                grid spacing (rounded up to whole steps), so 0 and 1 stay on the grid.
            batch_points: Evaluate this many points per model call (``torch.func.functional_call``
                under ``vmap``; ``bn='eval'`` only). Results agree with ``batch_points=1`` to float
                rounding; it costs ``batch_points`` copies of the parameters. On the 2-core CPU it
                did not beat one point per pass (benchmarks/results/interpolate.json); it is
                offered for devices where wider batched kernels pay.

        Returns:
            A :class:`Curve`. The model is restored exactly afterwards. Under
            ``torch.distributed`` the points are split across ranks and every rank gets the
            whole curve.

        Raises:
            ValueError: If ``steps < 2``, ``extend < 0`` or an endpoint lacks a parameter of
                the model or has another shape (the message names the keys).

        Example:
            >>> import torch, landprobe as lp
            >>> model = torch.nn.Linear(1, 1, bias=False)       # y_hat = w * x
            >>> data = [(torch.ones(4, 1), torch.zeros(4, 1))]  # so L(w) = w**2
            >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), data)
            >>> a, b = {"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[1.0]])}
            >>> curve = probe.interpolate(a, b, steps=5)
            >>> curve.losses.tolist()
            [1.0, 0.25, 0.0, 0.25, 1.0]
            >>> curve.barrier                                    # a convex bowl has none
            0.0
        """
        if not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps={steps!r}; an interpolation needs an integer of at least 2 (both ends)")
        if not (isinstance(extend, (int, float)) and math.isfinite(extend) and extend >= 0):
            raise ValueError(f"extend={extend!r}; expected a finite fraction >= 0 (e.g. 0.25)")
        names = self._state_names()
        va = as_param_vector(a, self.model, names=names, what="a")
        vb = as_param_vector(b, self.model, names=names, what="b")
        moving = set(self._state_names(subnet)) if subnet is not None else set(names)
        # Entries outside the subnet lerp from a to a: exactly a.
        b_eff = [tb if n in moving else ta for n, ta, tb in zip(names, va.tensors, vb.tensors)]
        a_list = va.tensors
        h = 1.0 / (steps - 1)
        k = int(math.ceil(extend / h - 1e-9)) if extend > 0 else 0
        idx = np.arange(-k, steps + k)
        alphas = idx * h
        alphas[idx == 0] = 0.0
        alphas[idx == steps - 1] = 1.0

        # Large tensors: one fused pass lerp(a, b, out=target) (a copy followed by an in-place
        # lerp reads and writes them twice); small ones: two foreach kernels over all of them.
        big = [i for i, t in enumerate(a_list) if t.numel() >= 1 << 16]
        small = [i for i in range(len(a_list)) if i not in set(big)]
        a_small, b_small = [a_list[i] for i in small], [b_eff[i] for i in small]

        def writer(alpha: float):
            def write(targets: list[torch.Tensor]) -> None:
                if alpha == 0.0:
                    torch._foreach_copy_(targets, a_list)
                    return
                for i in big:
                    torch.lerp(a_list[i], b_eff[i], alpha, out=targets[i])
                if small:
                    t_small = [targets[i] for i in small]
                    torch._foreach_copy_(t_small, a_small)
                    torch._foreach_lerp_(t_small, b_small, alpha)
            return write

        if not isinstance(batch_points, int) or batch_points < 1:
            raise ValueError(f"batch_points={batch_points!r}; expected an integer >= 1 (1: one point per pass)")
        if batch_points == 1:
            evals = self._sweep(names, [writer(float(al)) for al in alphas], "interpolate")
        else:
            def value(alpha: float):
                return lambda: list(torch._foreach_lerp(a_list, b_eff, alpha)) if alpha != 0.0 else list(a_list)
            evals = self._sweep_vmap(names, [value(float(al)) for al in alphas], batch_points, "interpolate")
        losses = np.array([e.loss for e in evals])
        stderr = np.array([e.stderr for e in evals])
        i0, i1 = k, k + steps - 1
        sub = None if subnet is None else (subnet if isinstance(subnet, str) else select(self.model, subnet))
        return Curve(
            alphas=alphas, losses=losses, stderr=stderr,
            loss_a=float(losses[i0]), loss_b=float(losses[i1]),
            settings=self._settings(probe="interpolate", steps=steps, extend=float(extend), subnet=sub,
                                    grid_extension_steps=k, batch_points=batch_points,
                                    samples_per_point=[int(e.batch_sizes.sum()) for e in evals]),
        )

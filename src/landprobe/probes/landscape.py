"""``LandscapeProbe``: the empirical error of a model as a function of its parameters.

The class is a facade: each method is a few lines that hand the probe's
:class:`~landprobe.engine.Engine` to the function of its layer (``probes.interpolate``,
``probes.plane``, ``probes.curves``, ``probes.perturb``, ``curvature.hessian``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from landprobe.common.deprecation import renamed_keywords
from landprobe.curvature.hessian import DEFAULT_GRAPH_BYTES, HessianOperator, hessian
from landprobe.engine import Engine, Evaluation, Sharding
from landprobe.params import Selector
from landprobe.symmetry import PermutationSpec
from landprobe.probes.curves import LevelSet, Path, auto_neb, connect, level_set
from landprobe.probes.interpolate import interpolate
from landprobe.probes.perturb import PerturbationResult, perturb
from landprobe.probes.plane import Surface, plane
from landprobe.probes.results import Curve

__all__ = ["LandscapeProbe"]


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

    One probe at a time per model: while a probe runs, another probe of the same model
    (another thread, or one started from inside the loss function) raises
    :class:`~landprobe.engine.ProbeInProgressError`. A model must not be trained while it is
    probed; a pass during which its parameters change raises
    :class:`~landprobe.engine.ModelChangedError` rather than return a wrong value.

    Args:
        model: Any ``nn.Module``. It is measured in eval mode (dropout off).
        loss_fn: ``loss_fn(model(x), y)`` returning a scalar, mean-reduced tensor (a loss that
            sums over samples is warned about once: a torch loss module states its
            ``reduction``; any other callable is called twice more, on the halves of the first
            batch, and compared; give it a ``reduction = "mean"`` attribute to skip that); or a
            :class:`~landprobe.BatchLoss` ``fn(model, batch)`` for batches of any structure
            (a dict carrying its labels, a model that returns its own ``.loss``).
        data: An iterable of batches, iterated once per point: a DataLoader or a list of
            ``(x, y)`` pairs (any batch with a ``BatchLoss``). ``x`` may be a tuple
            (positional inputs) or dict (keywords).
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
        progress: Progress bars (tqdm, with ETA) for every probe that takes a while: ``None``
            (default) shows them only when standard error is a terminal, ``True`` always,
            ``False`` never.
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
            energy; :func:`landprobe.data.sr_covariates_with_mean` adds the target's mean, for
            points far from trained weights). Their exact mean is computed once by one pass of
            ``control`` over the data; each point is then estimated by regression on them (see
            ``Evaluation.with_control``), which needs about 1 − R² as many samples for the
            same precision. At least 4(k + 1) batches are drawn per point and the error is
            leverage-corrected, so that it is not underestimated (2σ covers about 95%). Poor covariates cost nothing but the
            pass and those batches: the error stays honest and more batches are drawn.
        control_at: With ``precision``: a list of parameter sets (state_dicts, modules or
            ParamVectors), e.g. the two trained solutions a curve or plane runs through, whose
            per-batch losses become control variates (after ``control``'s columns): at the
            first precision-targeted evaluation the probe makes one exact pass over all the
            data at each of them (their losses are kept in ``probe.engine.reference_losses``),
            and each point is then estimated by regression on those losses of the same
            batches. Near trained solutions a point's per-batch losses track theirs far more
            closely than any model-free covariate (WARSHIP between two trained solutions: about
            1/5 of the samples of ``control`` alone at the midpoint, 1/100 near them; see
            docs/precision.md),
            so the passes pay for themselves on a plane or a long curve. Works with any loss,
            ``BatchLoss`` included; not with ``bn="recompute"``. The tensors are read, not
            copied: do not change them while the probe lives.
        sharding: Under ``torch.distributed``: how the ranks share the work
            (:class:`landprobe.Sharding`). ``None`` (default) splits the points of a sweep
            across ranks, each passing over all the data; ``lp.Sharding(data=True)`` shares
            every pass over the data, so every probe (Hessian and fits included) runs on all
            ranks at once with the one-process result on each. See docs/distributed.md.
        strict: Endpoints, centers and directions are checked as ``load_state_dict(strict=True)``
            checks (a key the model lacks, a missing parameter, another shape, a non-floating
            tensor or a non-finite parameter is an error that names the keys; a wrapper's
            ``module.``/``_orig_mod.`` prefix is renamed with a warning). Another floating
            dtype is cast to the model's with one warning naming the keys; ``strict=True``
            makes it an error.

    Threads: torch starts one thread per core by default. When other processes share the
    CPU (two probes, a training job, a test runner), call ``torch.set_num_threads(k)`` with
    ``k`` = cores / processes (or set ``OMP_NUM_THREADS``) before probing; oversubscribed
    threads can make a probe several times slower.

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
                 progress: bool | None = None, precision: float | None = None, min_batches: int = 4,
                 batch_size: int | None = None, seed: int = 0, control: Callable | None = None,
                 control_at: Sequence[Any] | None = None, sharding: Sharding | None = None, strict: bool = False):
        self.engine = Engine(model, loss_fn, data, bn=bn, device=device, dtype=dtype, precision=precision,
                             min_batches=min_batches, batch_size=batch_size, seed=seed, control=control,
                             control_at=control_at, progress=progress, sharding=sharding, strict=strict)
        self.engine.finite_model = True

    # ---- what the probe holds
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

    @property
    def progress(self) -> bool | None:
        return self.engine.progress

    @progress.setter
    def progress(self, value: bool | None) -> None:
        self.engine.progress = value

    def __repr__(self) -> str:
        e = self.engine
        return (f"LandscapeProbe({type(e.model).__name__}, bn={e.bn!r}, device={str(e.device)!r}, "
                f"precision={e.precision!r})")

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
        return self.engine.evaluate_at(theta)

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
        return self.engine.evaluate_at(theta, label="LandscapeProbe.loss").loss

    # ---- many points
    @renamed_keywords(steps="points")
    def interpolate(self, a: Any, b: Any, points: int = 51, *, subnet: Selector | None = None,
                    extend: float = 0.0, batch_points: int = 1, align: str | None = None,
                    spec: PermutationSpec | None = None) -> Curve:
        """The empirical error on the segment θ(α) = (1 − α)·a + α·b: see :func:`landprobe.probes.interpolate.interpolate`.

        Example:
            >>> import torch, landprobe as lp
            >>> model = torch.nn.Linear(1, 1, bias=False)       # y_hat = w * x
            >>> data = [(torch.ones(4, 1), torch.zeros(4, 1))]  # so L(w) = w**2
            >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), data)
            >>> a, b = {"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[1.0]])}
            >>> curve = probe.interpolate(a, b, points=5)
            >>> curve.losses.tolist(), curve.barrier            # a convex bowl has no barrier
            ([1.0, 0.25, 0.0, 0.25, 1.0], 0.0)
        """
        return interpolate(self.engine, a, b, points, subnet=subnet, extend=extend, batch_points=batch_points,
                           align=align, spec=spec)

    @renamed_keywords(steps="points")
    def plane(self, center: Any = None, directions: Sequence[Any] | None = None, span: Any = None,
              points: Any = 21, normalization: str | None = "auto", subnet: Selector | None = None, seed: int = 0, *,
              one_d: str = "zero", through: Sequence[Any] | None = None, margin: float = 0.25) -> Surface:
        """The empirical error on a plane θ(x, y) = center + x·d₁ + y·d₂: see :func:`landprobe.probes.plane.plane`.

        Example:
            >>> import torch, landprobe as lp
            >>> model = torch.nn.Linear(2, 1, bias=False)                 # L(w) = |w|² / 2 on x = I
            >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), [(torch.eye(2), torch.zeros(2, 1))])
            >>> d1, d2 = {"weight": torch.tensor([[1.0, 0.0]])}, {"weight": torch.tensor([[0.0, 1.0]])}
            >>> s = probe.plane({"weight": torch.zeros(1, 2)}, directions=(d1, d2), span=1.0, points=3)
            >>> s.losses.tolist()[0]                                    # the row y = -1: (x² + 1) / 2
            [1.0, 0.5, 1.0]
        """
        return plane(self.engine, center, directions, span, points, normalization, subnet, seed, one_d=one_d,
                     through=through, margin=margin)

    @renamed_keywords(eval_points="points")
    def connect(self, a: Any, b: Any, method: str = "bezier", bends: int = 1, steps: int = 1000, lr: float = 0.01,
                optimizer: str = "sgd", *, momentum: float = 0.9, t_samples: int = 1, points: int = 61,
                seed: int = 0, checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
                **neb_options: Any) -> Path:
        """Fit a low-error curve between ``a`` and ``b`` (Garipov et al. 2018; ``method="neb"``:
        AutoNEB, taking :meth:`auto_neb`'s options): see :func:`landprobe.probes.curves.connect.connect`.

        Example:
            >>> from landprobe.probes import toys
            >>> valley = toys.CurvyValley()                       # minima at (∓5π/2, ∓1), saddle 1.0
            >>> probe = toys.toy_probe(valley)
            >>> a, b = valley.minima()
            >>> path = probe.connect(a, b, method="polychain", bends=5, steps=300, lr=0.01)
            >>> bool(path.max_loss < 1.3), bool(path.losses[0] == probe.loss(a))
            (True, True)
        """
        return connect(self.engine, a, b, method, bends, steps, lr, optimizer, momentum=momentum,
                       t_samples=t_samples, points=points, seed=seed, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, **neb_options)

    @renamed_keywords(eval_points="points")
    def auto_neb(self, a: Any, b: Any, *, images: int | None = None,
                 schedule: Sequence[dict[str, Any]] | None = None, steps: int = 1000, lr: float = 0.1,
                 momentum: float = 0.9, spring: float = math.inf, climbing: bool = True, insert_tol: float = 0.0,
                 sub_points: int = 9, points: int = 61, seed: int = 0,
                 checkpoint: str | os.PathLike | None = None) -> Path:
        """Minimum-energy path between ``a`` and ``b`` by AutoNEB (Draxler et al. 2018): see
        :func:`landprobe.probes.curves.neb.auto_neb`.

        Example:
            >>> import torch
            >>> from landprobe.probes import toys
            >>> egg = toys.Eggcarton()                              # E = cos 2πx + cos 2πy
            >>> probe = toys.toy_probe(egg)
            >>> a = {"location": torch.tensor([0.5, 0.5], dtype=torch.float64)}
            >>> b = {"location": torch.tensor([1.5, 0.5], dtype=torch.float64)}
            >>> quick = [dict(steps=10, lr=0.01, insert=3)] + [dict(steps=10, lr=0.001, climbing=True)] * 2
            >>> round(probe.auto_neb(a, b, schedule=quick).barrier, 2)   # over the saddle (1, ½): E = 0
            2.0
        """
        return auto_neb(self.engine, a, b, images=images, schedule=schedule, steps=steps, lr=lr, momentum=momentum,
                        spring=spring, climbing=climbing, insert_tol=insert_tol, sub_points=sub_points,
                        points=points, seed=seed, checkpoint=checkpoint)

    def level_set(self, a: Any, b: Any, threshold: float, *, steps: int = 500, lr: float = 0.01,
                  optimizer: str = "sgd", momentum: float = 0.0, margin: float = 0.25, pull: float = 0.0,
                  check_points: int = 9, check_every: int = 10, max_beads: int = 64, max_depth: int = 12,
                  checkpoint: str | os.PathLike | None = None) -> LevelSet:
        """Search a path from ``a`` to ``b`` below ``threshold`` (Freeman & Bruna 2017): see
        :func:`landprobe.probes.curves.levelset.level_set`.

        Example:
            >>> import landprobe as lp
            >>> from landprobe.probes import toys
            >>> p = toys.two_unit_relu()                    # minima a, b; every path crosses loss 0.5
            >>> probe = lp.LandscapeProbe(p["model"], p["loss_fn"], p["data"])
            >>> probe.level_set(p["a"], p["b"], threshold=0.3, steps=100, lr=0.1).connected
            False
        """
        return level_set(self.engine, a, b, threshold, steps=steps, lr=lr, optimizer=optimizer, momentum=momentum,
                         margin=margin, pull=pull, check_points=check_points, check_every=check_every,
                         max_beads=max_beads, max_depth=max_depth, checkpoint=checkpoint)

    def perturb(self, optimizer: torch.optim.Optimizer | Callable[[list], torch.optim.Optimizer],
                scale: float = 0.1, steps: int = 20, repeats: int = 5, seed: int = 0,
                loss_fn: Callable | None = None, *, subnet: Selector | None = None, relative: bool = True,
                eval_every: int | None = None) -> PerturbationResult:
        """Perturb the weights and retrain a few steps, several times (Liao & Poggio 2017): see
        :func:`landprobe.probes.perturb.perturb`.

        Example:
            >>> import torch, landprobe as lp
            >>> _ = torch.manual_seed(0)
            >>> model = torch.nn.Linear(3, 1)
            >>> x = torch.randn(32, 3); probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, x.sum(1, keepdim=True))])
            >>> r = probe.perturb(lambda p: torch.optim.SGD(p, lr=0.1), scale=0.5, steps=30, repeats=2)
            >>> bool((r.retrained_losses < r.perturbed_losses).all()), probe.loss() == r.base_loss
            (True, True)
        """
        return perturb(self.engine, optimizer, scale, steps, repeats, seed, loss_fn, subnet=subnet,
                       relative=relative, eval_every=eval_every)

    # ---- curvature
    def hessian(self, theta: Any = None, subnet: Selector | None = None, *, dtype: torch.dtype | None = None,
                hvp: str = "auto", graph: str = "auto", graph_bytes: int = DEFAULT_GRAPH_BYTES) -> HessianOperator:
        """The Hessian of the empirical error at ``theta`` as a matrix-free operator: see
        :func:`landprobe.curvature.hessian.hessian`.

        Example:
            >>> import torch, landprobe as lp
            >>> model = torch.nn.Linear(1, 1, bias=False)                    # y_hat = w * x
            >>> data = [(torch.ones(4, 1), torch.zeros(4, 1))]                # L(w) = w**2, so H = 2
            >>> lp.LandscapeProbe(model, torch.nn.MSELoss(), data).hessian().top_eigenvalues().values.tolist()
            [2.0]
        """
        return hessian(self.engine, theta, subnet, dtype=dtype, hvp=hvp, graph=graph, graph_bytes=graph_bytes)

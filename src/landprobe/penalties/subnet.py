"""Subnet-wise norm penalties: weight decay, L1, group and spectral norms on parts of any model.

:class:`SubnetNormPenalty` attaches a norm-based capacity control to named parts (subnets) of a
model and returns one differentiable scalar to add to the training loss. It is called every
training step, so the common kinds (``"l2_squared"``, ``"l1"``, ``"l2norm"``) run on all tensors of the
model at once (``torch._foreach_norm`` forward, one ``torch._foreach_mul`` per subnet backward),
and the selectors are resolved once, at construction.

Convention:
    - Kinds, for the parameters θ of one subnet:
      ``"l2_squared"`` = Σθ² (weight decay; the "L2" of Xu & Zhang's Table II),
      ``"l1"`` = Σ|θ|,
      ``"l2norm"`` = √Σθ² (``"l2"`` in :mod:`landprobe.capacity`),
      ``"group"`` = Σ over output filters of their L2 norms (each slice along dim 0 of a tensor
      with ≥ 2 dims is one group; each element of a 1-D or 0-D tensor is its own group, so a
      bias contributes Σ|b|),
      ``"spectral"`` = Σ over layers of the largest singular value of the weight reshaped to a
      matrix ``(shape[0], -1)`` (for a Conv weight ``(out, in*k*k)``: the spectral norm of that
      reshaped matrix, not the operator norm of the convolution), by power iteration kept warm
      between calls, as ``torch.nn.utils.spectral_norm``.
    - ``"l2"``, the old spelling of ``"l2_squared"``, is accepted for one release with a
      ``DeprecationWarning``; afterwards ``"l2"`` will mean √Σθ², as the capacity measure of
      that name does.
    - ``include_bias=False`` leaves out every parameter with fewer than 2 dimensions (biases,
      BatchNorm/LayerNorm scales and shifts, scalar gains) and every parameter whose name ends
      in ``bias``.
    - ``"spectral"`` applies to tensors with ≥ 2 dimensions only; a 1-D or 0-D parameter
      selected under ``"spectral"`` (with ``include_bias=True``) is an error that names it.
    - Subgradients at 0: ``|x|`` and ``‖x‖`` have gradient 0 there (as ``torch.abs`` and
      ``torch.linalg.vector_norm``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Hashable, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from landprobe.common.checks import check_module
from landprobe.params import Selector, match_selector, no_match_error

__all__ = ["KINDS", "PRESETS", "SubnetNormPenalty"]

KINDS = ("l2_squared", "l1", "l2norm", "group", "spectral")
#: Old spellings of kinds, accepted with a DeprecationWarning: old -> current.
DEPRECATED_KINDS = {"l2": "l2_squared"}

#: Xu & Zhang, Table II: kinds on (Enet, Inet, Rnet).
PRESETS = {
    "all-l2": ("l2_squared", "l2_squared", "l2_squared"),
    "mix": ("l2_squared", "l1", "l2_squared"),
    "all-l1": ("l1", "l1", "l1"),
}
_PRESET_SUBNETS = ("enet", "inet", "rnet")

Weight = Union[float, Mapping[Hashable, float]]


#: Tensors with at most this many elements are stacked with others of the same shape, so that a
#: bucket of many small tensors costs a few ops instead of a few ops per tensor (on CPU, per-op
#: dispatch, not arithmetic, is what a penalty on 200 small tensors spends its time on).
_STACK_MAX_NUMEL = 1 << 16
#: Largest stacked bucket, in elements (a transient copy of this size is made per call).
_STACK_MAX_BUCKET = 1 << 22


class _Plan:
    """Tensors of one norm power ``p`` (1 or 2) for several subnets, cut into stackable segments.

    ``groups[i]`` are the tensors of output ``i``. Within a group, small tensors of equal shape,
    dtype and device form one segment (stacked at evaluation); every other tensor is a segment
    of its own. ``tensors`` lists them in segment order; ``segments`` holds
    ``(output, start, stop, stacked)``.
    """

    def __init__(self, p: int, groups: list[list[Tensor]]):
        self.p, self.n_out = p, len(groups)
        self.tensors: list[Tensor] = []
        self.segments: list[tuple[int, int, int, bool]] = []
        for out, group in enumerate(groups):
            buckets: dict[Any, list[Tensor]] = {}
            for t in group:
                key = (tuple(t.shape), t.dtype, t.device) if t.numel() <= _STACK_MAX_NUMEL else id(t)
                buckets.setdefault(key, []).append(t)
            for ts in buckets.values():
                per = max(1, _STACK_MAX_BUCKET // max(1, ts[0].numel()))
                for i in range(0, len(ts), per):
                    chunk = ts[i:i + per]
                    start = len(self.tensors)
                    self.tensors.extend(chunk)
                    self.segments.append((out, start, len(self.tensors), len(chunk) > 1))
        self.seg_out = torch.tensor([seg[0] for seg in self.segments])

    def flat(self, tensors, seg) -> Tensor:
        """The segment's elements as one 1-D tensor (a stacked copy, or a view of one tensor)."""
        _, a, b, stacked = seg
        return torch.stack(tensors[a:b]).view(-1) if stacked else tensors[a].reshape(-1)

    def reduce(self, flats: list[Tensor]) -> Tensor:
        """Per-output Σθ² (p=2) or Σ|θ| (p=1), shape ``(n_out,)``, from the segments' flats."""
        if self.p == 2:
            vals = torch.stack([torch.dot(x, x) for x in flats])
        else:
            vals = torch.stack([torch.linalg.vector_norm(x, 1) for x in flats])
        if self.n_out == 1:
            return vals.sum().reshape(1)
        return vals.new_zeros(self.n_out).index_add_(0, self.seg_out.to(vals.device), vals)

    def grads(self, tensors, flats: list[Tensor], coefs: list[Any]) -> list[Tensor]:
        """∂/∂θ of Σ_i coefs[i] · value_i, one tensor per input (coefs: per output, d value = ...)."""
        out: list[Tensor] = [None] * len(tensors)  # type: ignore[list-item]
        for seg, x in zip(self.segments, flats):
            o, a, b, stacked = seg
            g = x * coefs[o] if self.p == 2 else torch.sign(x).mul_(coefs[o])
            if stacked:
                out[a:b] = g.view(b - a, *tensors[a].shape).unbind()
            else:
                out[a] = g.view(tensors[a].shape)
        return out


class _FusedNorms(torch.autograd.Function):
    """Per-subnet Σθ² (p=2) or Σ|θ| (p=1) over many tensors, in a few stacked ops each way.

    Called as ``_FusedNorms.apply(plan, *plan.tensors)``; returns one value per output of the
    plan. The inputs are saved (not their stacked copies) and re-stacked in backward.
    """

    @staticmethod
    def forward(ctx, plan: _Plan, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        ctx.plan = plan
        ctx.save_for_backward(*tensors)
        return plan.reduce([plan.flat(tensors, seg) for seg in plan.segments])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        plan, tensors = ctx.plan, ctx.saved_tensors
        coefs = (2 * grad if plan.p == 2 else grad).unbind()
        flats = [plan.flat(tensors, seg) for seg in plan.segments]
        return (None, *plan.grads(tensors, flats, coefs))


def _check_weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{where}={value!r} has type {type(value).__name__}; expected a non-negative float "
            f"such as 2e-4."
        )
    w = float(value)
    if not math.isfinite(w) or w < 0:
        raise ValueError(
            f"{where}={value!r}; expected a finite, non-negative float such as 2e-4 "
            f"(use 0.0 to switch a subnet's penalty off)."
        )
    return w


class SubnetNormPenalty:
    """A differentiable norm penalty on subnets of any model: ``Σ_s weight_s · norm_s(θ_s)``.

    Args:
        model: The ``nn.Module`` instance whose parameters are penalised.
        norms: Mapping selector → kind. A selector is a dotted module path (``"rnet.expand"``),
            a glob on parameter names (``"inet.*"``), a submodule of ``model``, or a tuple of
            these (see :func:`landprobe.select`). A selected module brings every parameter
            it uses, a shared (tied) one included under its canonical name (the first name
            ``named_parameters()`` gives it). Two selectors may share a parameter only with the
            same kind and weight; it is then penalised once, in the first of them.
            Kinds: ``"l2_squared"`` (Σθ², weight decay), ``"l1"`` (Σ|θ|), ``"l2norm"`` (√Σθ²),
            ``"group"`` (Σ of output-filter L2 norms), ``"spectral"`` (Σ of per-layer largest
            singular values); see the module's ``Convention``.
        weight: One non-negative float for all subnets, or a mapping with exactly the keys of
            ``norms``. Default 1.0 (the raw norms).
        include_bias: If ``False``, leave out parameters with fewer than 2 dims and parameters
            whose name ends in ``bias``.
        power_iterations: Power iterations per call for ``"spectral"`` (warm start). At least 1.
        init_power_iterations: Power iterations on the first call, from a seeded random start.
        seed: Seed of the random start vectors (own generator; the global RNG is not touched).
        check_finite: Raise if the penalty is NaN/inf (costs one scalar check per call).

    The selectors are resolved once, here: later replacing a submodule of ``model`` is not seen
    (``model.to(...)`` and ``load_state_dict`` are, since they keep the parameter objects).

    Raises:
        TypeError: If ``model`` is a class or not an ``nn.Module``, a kind or weight has the
            wrong type, or ``include_bias`` is not a bool.
        ValueError: On an unknown kind, a negative or non-finite weight, weight keys that differ
            from ``norms``' keys, a selector that matches nothing, two selectors that give one
            parameter different kinds or weights (the message names both and the parameter),
            a subnet that ``include_bias=False`` empties, or 1-D parameters under ``"spectral"``.

    Example:
        >>> import torch, landprobe as lp
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(1.0), net[0].bias.fill_(-1.0)  # Σθ² = 4 + 2 = 6
        ...     _ = net[1].weight.fill_(-2.0), net[1].bias.fill_(3.0)  # Σ|θ| = 2 + 2 + 3 = 7
        >>> penalty = lp.SubnetNormPenalty(net, {"0": "l2_squared", "1": "l1"}, weight={"0": 1.0, "1": 0.5})
        >>> loss = penalty()                                           # 6 + 0.5 * 7
        >>> loss.item(), loss.requires_grad
        (9.5, True)
        >>> loss.backward(); net[1].weight.grad                        # 0.5 * sign(θ)
        tensor([[-0.5000, -0.5000]])
        >>> penalty.breakdown()
        {'0': 6.0, '1': 3.5}
        >>> penalty.breakdown(weighted=False)
        {'0': 6.0, '1': 7.0}
    """

    def __init__(self, model: nn.Module, norms: Mapping[Hashable, str], weight: Weight = 1.0,
                 include_bias: bool = True, *, power_iterations: int = 1,
                 init_power_iterations: int = 30, seed: int = 0, check_finite: bool = True):
        if not isinstance(norms, Mapping):
            raise TypeError(
                f"norms has type {type(norms).__name__}; expected a mapping selector -> kind, "
                f"e.g. {{'enet': 'l2_squared', 'inet': 'l1'}}."
            )
        specs = {key: (key, _current_kind(key, kind)) for key, kind in norms.items()}
        self._setup(model, specs, weight, include_bias, power_iterations, init_power_iterations,
                    seed, check_finite)

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, model: nn.Module, setting: str, weight: Weight = 2e-4, *,
               subnets: Mapping[str, Selector] | None = None, include_bias: bool = True,
               **kwargs: Any) -> SubnetNormPenalty:
        """One of the three settings of Xu & Zhang's study (Table II), on Enet, Inet and Rnet.

        ``"all-l2"``: L2 (Σθ²) on Enet, Inet and Rnet; ``"mix"``: L2 on Enet, L1 (Σ|θ|) on Inet,
        L2 on Rnet; ``"all-l1"``: L1 on all three. λ = 2e-4 as in the paper.

        Args:
            model: A model with submodules ``enet``, ``inet`` and ``rnet``, or any model when
                ``subnets`` is given.
            setting: ``"all-l2"``, ``"mix"`` or ``"all-l1"`` (case-insensitive).
            weight: λ, a float or a mapping with keys ``"enet"``, ``"inet"``, ``"rnet"``.
            subnets: Mapping ``{"enet": sel, "inet": sel, "rnet": sel}`` of selectors for models
                whose parts are named otherwise.
            include_bias: As in :class:`SubnetNormPenalty`.
            **kwargs: Passed on to :class:`SubnetNormPenalty`.

        Returns:
            A penalty whose subnets are labelled ``"enet"``, ``"inet"``, ``"rnet"``.

        Raises:
            ValueError: On an unknown setting, a model without the three submodules and no
                ``subnets``, or ``subnets`` with other keys.

        Example:
            >>> import torch.nn as nn, landprobe as lp
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1))
            >>> pen = lp.SubnetNormPenalty.preset(net, "mix", subnets={"enet": "0", "inet": "1", "rnet": "2"})
            >>> pen.kinds, pen.weights["inet"]
            ({'enet': 'l2_squared', 'inet': 'l1', 'rnet': 'l2_squared'}, 0.0002)
        """
        if not isinstance(setting, str) or setting.lower() not in PRESETS:
            raise ValueError(f"setting={setting!r}; expected one of {list(PRESETS)} (Xu & Zhang, Table II).")
        kinds = PRESETS[setting.lower()]
        if subnets is None:
            _check_model(model)
            missing = [n for n in _PRESET_SUBNETS if not isinstance(getattr(model, n, None), nn.Module)]
            if missing:
                raise ValueError(
                    f"{type(model).__name__} has no submodule(s) {missing}; the presets need "
                    f"model.enet, model.inet and model.rnet. For a model named otherwise pass "
                    f"subnets={{'enet': sel, 'inet': sel, 'rnet': sel}} with selectors such as 'features.0'."
                )
            subnets = {n: n for n in _PRESET_SUBNETS}
        elif not isinstance(subnets, Mapping) or set(subnets) != set(_PRESET_SUBNETS):
            got = list(subnets) if isinstance(subnets, Mapping) else type(subnets).__name__
            raise ValueError(
                f"subnets={got!r}; expected a mapping with exactly the keys 'enet', 'inet', 'rnet' "
                f"to selectors, e.g. {{'enet': 'head', 'inet': 'body', 'rnet': 'tail'}}."
            )
        specs = {n: (subnets[n], k) for n, k in zip(_PRESET_SUBNETS, kinds)}
        self = cls.__new__(cls)
        opts = dict(power_iterations=1, init_power_iterations=30, seed=0, check_finite=True)
        unknown = set(kwargs) - set(opts)
        if unknown:
            raise TypeError(f"preset() got unexpected keyword argument(s) {sorted(unknown)}; "
                            f"it accepts {sorted(opts)} besides weight, subnets, include_bias.")
        opts.update(kwargs)
        self._setup(model, specs, weight, include_bias, opts["power_iterations"],
                    opts["init_power_iterations"], opts["seed"], opts["check_finite"])
        return self

    def _setup(self, model: nn.Module, specs: dict[Hashable, tuple[Selector, str]], weight: Weight,
               include_bias: bool, power_iterations: int, init_power_iterations: int, seed: int,
               check_finite: bool) -> None:
        _check_options(model, specs, include_bias, power_iterations, init_power_iterations)
        labels = list(specs)
        weights = _resolve_weights(weight, specs)
        params, members = _resolve_members(model, specs, include_bias, weights)

        self._model_name = type(model).__name__
        self._labels = labels
        self._kinds = {k: specs[k][1] for k in labels}
        self._weights = weights
        self._members = members
        self._include_bias = include_bias
        self._power_iterations = power_iterations
        self._init_power_iterations = init_power_iterations
        self._seed = int(seed)
        self._check_finite = check_finite
        self._params = {n: params[n] for names in members.values() for n in names}
        self._plan_evaluation(params)
        self._u: dict[int, Tensor] = {}
        self._weight_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self._plan_direct_backward()

    def _plan_evaluation(self, params: Mapping[str, Tensor]) -> None:
        """The fused plans, the group/spectral buckets and the fast path of ``_values``.

        Fused groups: per p, subnets with tensors contiguous. "group" sends its 1-D/0-D tensors
        (each element its own group, i.e. |b|) to the p=1 batch; its matrices and the
        "spectral" matrices go to buckets of equal (shape, dtype, device); spectral buckets run
        one batched power iteration each.
        """
        labels = self._labels
        fused, buckets = _sort_tensors(labels, self._kinds, self._members, params)
        self._fused: list[tuple[_Plan, list[int]]] = []
        for p, entries in fused.items():
            if entries:
                plan = _Plan(p, [[params[n] for n in ns] for _, ns in entries])
                self._fused.append((plan, [self._labels.index(lab) for lab, _ in entries]))
        self._buckets = [(kind, [n for _, n in entries], [params[n] for _, n in entries],
                          torch.tensor([pos for pos, _ in entries]))
                         for (kind, *_), entries in buckets.items()]
        self._bucket_index = torch.cat([b[3] for b in self._buckets]) if self._buckets else None
        # Fast path (l2/l1/l2norm only, the common case): each subnet is one fused output, so the
        # per-subnet vector is one cat of the fused outputs, reordered if needed.
        order = [pos for _, positions in self._fused for pos in positions]
        self._simple = not self._buckets and sorted(order) == list(range(len(labels)))
        self._perm = (None if not self._simple or order == list(range(len(labels)))
                      else torch.tensor([order.index(i) for i in range(len(labels))]))
        self._sqrt_idx = [i for i, lab in enumerate(labels) if self._kinds[lab] == "l2norm"]

    def _plan_direct_backward(self) -> None:
        """``penalty.backward()`` without l2norm: per segment its tensors, stacked flag, norm power,
        λ and gradient coefficient (2λ for Σθ², λ for Σ|θ|), so that a call is one pass over the
        segments. Only on the fast path, with all tensors on one dtype and device."""
        self._direct = None
        if not self._simple or self._sqrt_idx:
            return
        segs = []
        for plan, positions in self._fused:
            for out, a, b, stacked in plan.segments:
                lam = self._weights[self._labels[positions[out]]]
                segs.append((plan.tensors[a:b], stacked, plan.p, lam, 2.0 * lam if plan.p == 2 else lam))
        kinds = {(t.dtype, t.device) for seg in segs for t in seg[0]}
        if len(kinds) == 1:
            self._direct = segs
            self._direct_lams = torch.tensor([seg[3] for seg in segs], dtype=next(iter(kinds))[0],
                                             device=next(iter(kinds))[1])

    # ------------------------------------------------------------------ introspection
    @property
    def kinds(self) -> dict[Hashable, str]:
        """Subnet label → kind."""
        return dict(self._kinds)

    @property
    def weights(self) -> dict[Hashable, float]:
        """Subnet label → weight."""
        return dict(self._weights)

    @property
    def subnets(self) -> dict[Hashable, list[str]]:
        """Subnet label → names of the parameters it penalises (after ``include_bias``; a
        parameter that several subnets select is listed under the first of them only)."""
        return {k: list(v) for k, v in self._members.items()}

    def __repr__(self) -> str:
        parts = ", ".join(f"{k!r}: {self._kinds[k]!r} x {self._weights[k]:g} ({len(self._members[k])} tensors)"
                          for k in self._labels)
        return f"SubnetNormPenalty({self._model_name}, {{{parts}}}, include_bias={self._include_bias})"

    # ------------------------------------------------------------------ evaluation
    def _values(self) -> Tensor:
        """Unweighted per-subnet values, shape (n_subnets,), in label order."""
        if self._simple:
            outs = [_FusedNorms.apply(plan, *plan.tensors) for plan, _ in self._fused]
            values = outs[0] if len(outs) == 1 else torch.cat(outs)
            if self._perm is not None:
                values = values[self._perm.to(values.device)]
            return self._apply_sqrt(values)
        parts: list[list[Tensor]] = [[] for _ in self._labels]
        for plan, positions in self._fused:
            vals = _FusedNorms.apply(plan, *plan.tensors).unbind()
            for i, v in zip(positions, vals):
                parts[i].append(v)
        bucketed = None
        if self._buckets:        # group/spectral matrices: per-tensor values, summed per subnet
            per_tensor = torch.cat([self._bucket_values(i) for i in range(len(self._buckets))])
            idx = self._bucket_index.to(per_tensor.device)
            bucketed = per_tensor.new_zeros(len(self._labels)).index_add(0, idx, per_tensor)
        ref = bucketed if bucketed is not None else next(v for ps in parts for v in ps)
        scalars = []
        for ps in parts:
            if not ps:          # bucketed matrices only, or nothing not already counted elsewhere
                ps = [ref.new_zeros(())]
            scalars.append(ps[0] if len(ps) == 1 else torch.stack(ps).sum())
        values = torch.stack(scalars)
        if bucketed is not None:
            values = values + bucketed
        return self._apply_sqrt(values)

    def _apply_sqrt(self, values: Tensor) -> Tensor:
        if self._sqrt_idx:       # "l2norm": sqrt of the summed squares, gradient 0 at 0
            idx = torch.tensor(self._sqrt_idx, device=values.device)
            sq = values[idx]
            pos = sq > 0
            # zero stays zero (with gradient 0); NaN and inf stay what they are, so that a
            # non-finite parameter is reported, not hidden as a norm of 0
            zero_or_bad = torch.where(torch.isfinite(sq), torch.zeros_like(sq), sq)
            root = torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), zero_or_bad)
            values = values.index_put((idx,), root)
        return values

    def _bucket_values(self, i: int) -> Tensor:
        """Per-tensor values of bucket ``i`` (equal shapes): group norms or spectral norms."""
        kind, _, tensors, _ = self._buckets[i]
        if kind == "group":     # per tensor: stacking the weights measured slower on CPU (copy + unbind)
            return torch.stack([torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).sum() for t in tensors])
        mats = torch.stack(tensors) if len(tensors) > 1 else tensors[0].unsqueeze(0)
        mats = mats.reshape(mats.shape[0], mats.shape[1], -1)          # (B, out, rest)
        u = self._u.get(i)
        iters = self._power_iterations
        with torch.no_grad():
            wd = mats.detach()
            if u is None:
                gen = torch.Generator().manual_seed(self._seed + i)
                u = torch.randn(wd.shape[0], wd.shape[1], 1, generator=gen, dtype=torch.float64)
                iters = self._init_power_iterations
            u = u.to(device=wd.device, dtype=wd.dtype)
            u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min(1e-12)
            for _ in range(iters):
                v = torch.bmm(wd.transpose(1, 2), u)
                v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-12)
                u = torch.bmm(wd, v)
                u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min(1e-12)
            self._u[i] = u
        return torch.bmm(u.transpose(1, 2), torch.bmm(mats, v)).reshape(-1)   # uᵀ W v, u and v fixed

    def _weight_tensor(self, like: Tensor) -> Tensor:
        key = (like.dtype, like.device)
        w = self._weight_cache.get(key)
        if w is None:
            w = torch.tensor([self._weights[k] for k in self._labels], dtype=like.dtype, device=like.device)
            self._weight_cache[key] = w
        return w

    def __call__(self) -> Tensor:
        """The penalty ``Σ_s weight_s · norm_s`` as a differentiable scalar (0-dim tensor).

        Raises:
            ValueError: If it is NaN or inf (``check_finite=True``); the message names the
                non-finite parameters, or the subnet that overflowed.
        """
        values = self._values()
        total = torch.dot(values, self._weight_tensor(values))
        if self._check_finite and not math.isfinite(total.item()):
            self._raise_non_finite(values.detach())
        return total

    def backward(self, scale: float = 1.0) -> Tensor:
        """Add the penalty's gradient to the parameters' ``.grad`` directly; return its value.

        The same gradients as ``(scale * penalty()).backward()``, without building an autograd
        graph: for the kinds ``"l2_squared"``, ``"l1"`` and ``"l2norm"`` the value and the gradient come
        from one pass over each bucket of same-shaped parameters, and gradients are written
        straight into ``.grad`` (a parameter whose ``.grad`` is ``None`` gets a fresh tensor).
        On a model with many small tensors this is several times cheaper than the autograd path
        (``benchmarks/bench_penalty.py``). ``"group"`` and ``"spectral"`` subnets go through
        autograd (``(scale * penalty()).backward()``) with the same result. Parameters with
        ``requires_grad=False`` are left alone, as autograd would.

        Call it anywhere between ``optimizer.zero_grad()`` and ``optimizer.step()``, usually
        right after ``loss.backward()``; under ``DistributedDataParallel`` call it after
        ``loss.backward()`` (the penalty's gradient is the same on every rank).

        Args:
            scale: Multiplies the gradient (not the returned value): a gradient-accumulation
                factor or an AMP loss scale. Default 1.

        Returns:
            The penalty ``Σ_s weight_s · norm_s`` as a detached 0-dim tensor.

        Raises:
            ValueError: If the penalty is NaN or inf (``check_finite=True``), as ``__call__``.

        Example:
            >>> import torch, landprobe as lp
            >>> net = torch.nn.Linear(2, 1)
            >>> with torch.no_grad():
            ...     _ = net.weight.copy_(torch.tensor([[1.0, -2.0]])), net.bias.fill_(0.5)
            >>> pen = lp.SubnetNormPenalty(net, {"weight": "l2_squared", "bias": "l1"}, weight=0.1)
            >>> loss = (net(torch.ones(1, 2)) ** 2).sum()      # output -0.5: loss 0.25
            >>> loss.backward()                                # d loss / d w = 2 * (-0.5) * 1 = -1
            >>> pen.backward().item()                          # 0.1 * (1 + 4) + 0.1 * 0.5
            0.55
            >>> net.weight.grad                                # -1 + 0.1 * 2 * (1, -2)
            tensor([[-0.8000, -1.4000]])
            >>> net.bias.grad                                  # -1 + 0.1 * sign(0.5)
            tensor([-0.9000])
        """
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ValueError(f"scale={scale!r}; expected a finite float such as 1.0 (a gradient "
                             f"accumulation factor or an AMP loss scale).")
        if not self._simple:
            total = self()
            (total * scale if scale != 1 else total).backward()
            return total.detach()
        if self._direct is not None:
            return self._backward_direct(float(scale))
        with torch.no_grad():
            flats = [[plan.flat(plan.tensors, seg) for seg in plan.segments] for plan, _ in self._fused]
            raw = [plan.reduce(f) for (plan, _), f in zip(self._fused, flats)]
            values = raw[0] if len(raw) == 1 else torch.cat(raw)
            if self._perm is not None:
                values = values[self._perm.to(values.device)]
            values = self._apply_sqrt(values)
            total = torch.dot(values, self._weight_tensor(values))
            if self._check_finite and not math.isfinite(total.item()):
                self._raise_non_finite(values)
            pairs: list[tuple[Tensor, Tensor]] = []
            for (plan, positions), f in zip(self._fused, flats):
                coefs = []
                for pos in positions:
                    label = self._labels[pos]
                    c = self._weights[label] * float(scale)
                    kind = self._kinds[label]
                    if kind == "l2_squared":
                        c = 2.0 * c
                    elif kind == "l2norm":     # d√S/dθ = θ/√S; 0 at θ = 0 as in __call__
                        norm = float(values[pos])
                        c = c / norm if norm > 0 else 0.0
                    coefs.append(c)
                pairs.extend(zip(plan.tensors, plan.grads(plan.tensors, f, coefs)))
            if all(p.grad is None and p.requires_grad for p, _ in pairs):
                for p, g in pairs:                     # the common case, right after zero_grad()
                    p.grad = g
            else:
                owners: list[Tensor] = []
                new: list[Tensor] = []
                for p, g in pairs:
                    if not p.requires_grad:
                        continue
                    if p.grad is None:
                        p.grad = g
                    else:
                        owners.append(p.grad)
                        new.append(g)
                if owners:
                    torch._foreach_add_(owners, new)
        return total

    def _backward_direct(self, scale: float) -> Tensor:
        """``backward`` for l2/l1 subnets on one dtype and device: per segment of same-shaped
        tensors one stacked copy, its value, its gradient and the views handed out as ``.grad``
        (after the finite check, so that a failing call leaves every ``.grad`` untouched)."""
        owners: list[Tensor] = []
        new: list[Tensor] = []
        with torch.no_grad():
            flats = [torch.stack(seg[0]).view(-1) if seg[1] else seg[0][0].reshape(-1) for seg in self._direct]
            vals = [torch.dot(x, x) if seg[2] == 2 else torch.linalg.vector_norm(x, 1)
                    for x, seg in zip(flats, self._direct)]
            total = torch.dot(torch.stack(vals), self._direct_lams)
            if self._check_finite and not math.isfinite(total.item()):
                self._raise_non_finite(self._values().detach())
            for x, (tensors, stacked, p, _, coef) in zip(flats, self._direct):
                c = coef * scale
                if stacked:             # x is our own stacked copy: it becomes the gradient buffer
                    g = x.mul_(c) if p == 2 else x.sign_().mul_(c)
                else:                   # x is a view of the parameter itself
                    g = x * c if p == 2 else torch.sign(x).mul_(c)
                gs = g.view(len(tensors), *tensors[0].shape).unbind() if stacked else (g.view(tensors[0].shape),)
                for t, gt in zip(tensors, gs):
                    tg = t.grad
                    if tg is None:
                        if t.requires_grad:
                            t.grad = gt
                    elif t.requires_grad:
                        owners.append(tg)
                        new.append(gt)
            if owners:
                torch._foreach_add_(owners, new)
        return total

    def breakdown(self, weighted: bool = True) -> dict[Hashable, float]:
        """Per-subnet values at the current parameters, as Python floats (computed without grad).

        Args:
            weighted: ``weight_s · norm_s`` (the default; they sum to ``penalty()``), or the raw
                ``norm_s`` if ``False``.

        Returns:
            Dict subnet label → float, in the order of ``norms``. For ``"spectral"`` subnets
            this runs the warm power iteration once more, like a call.

        Example:
            >>> import torch, landprobe as lp
            >>> net = torch.nn.Linear(2, 1, bias=False)
            >>> _ = torch.nn.init.constant_(net.weight, 3.0)                 # θ = (3, 3)
            >>> pen = lp.SubnetNormPenalty(net, {"weight": "l2norm"}, weight=0.5)
            >>> pen.breakdown(weighted=False), pen.breakdown()               # √18 and √18 / 2
            ({'weight': 4.242640495300293}, {'weight': 2.1213202476501465})
        """
        with torch.no_grad():
            values = self._values()
            if weighted:
                values = values * self._weight_tensor(values)
        return dict(zip(self._labels, values.double().tolist()))

    def _raise_non_finite(self, values: Tensor) -> None:
        bad = [n for n, t in self._params.items() if not bool(torch.isfinite(t).all())]
        if bad:
            owner = {n: lab for lab, ns in self._members.items() for n in ns}
            desc = ", ".join(f"{n!r} (subnet {owner[n]!r})" for n in bad[:6])
            raise ValueError(
                f"SubnetNormPenalty: parameter(s) {desc} of {self._model_name} hold NaN or inf, "
                f"so the penalty is not finite. Training has likely diverged: lower the learning "
                f"rate or clip the gradient norm, and restart from a finite checkpoint."
            )
        over = [lab for lab, v in zip(self._labels, values.tolist()) if not math.isfinite(v)]
        raise ValueError(
            f"SubnetNormPenalty: the parameters are finite but the penalty of subnet(s) {over} "
            f"overflowed {values.dtype}; the weights are far too large. Lower the learning rate "
            f"or compute in a wider dtype (model.double())."
            if over else
            f"SubnetNormPenalty: the weighted total is not finite ({values.tolist()} weighted by "
            f"{list(self._weights.values())}); the sum overflowed. Lower the weights."
        )


def _current_kind(label: Hashable, kind: Any) -> Any:
    """``kind`` in its current spelling; an old one warns once per call site."""
    if isinstance(kind, str) and kind in DEPRECATED_KINDS:
        new = DEPRECATED_KINDS[kind]
        warnings.warn(f"SubnetNormPenalty kind {kind!r} (subnet {label!r}) is renamed {new!r} (Σθ²); {kind!r} "
                      f"will mean √Σθ² in the next release, as in landprobe.capacity", DeprecationWarning,
                      stacklevel=4)
        return new
    return kind


def _check_options(model: Any, specs: dict[Hashable, tuple[Selector, str]], include_bias: Any,
                   power_iterations: Any, init_power_iterations: Any) -> None:
    _check_model(model)
    if not specs:
        raise ValueError("norms is empty; give at least one subnet, e.g. {'features': 'l2_squared'}.")
    for label, (_, kind) in specs.items():
        if not isinstance(kind, str):
            raise TypeError(f"kind for subnet {label!r} is {kind!r} ({type(kind).__name__}); "
                            f"expected one of {list(KINDS)}.")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} for subnet {label!r}; expected one of {list(KINDS)}.")
    if not isinstance(include_bias, bool):
        raise TypeError(f"include_bias={include_bias!r}; expected True or False.")
    for name, val, low in (("power_iterations", power_iterations, 1),
                           ("init_power_iterations", init_power_iterations, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise ValueError(f"{name}={val!r}; expected an int >= {low}.")


def _resolve_weights(weight: Weight, specs: Mapping[Hashable, Any]) -> dict[Hashable, float]:
    """Subnet label → checked weight, from one float or a mapping with exactly the labels."""
    labels = list(specs)
    if isinstance(weight, Mapping):
        missing = [k for k in labels if k not in weight]
        extra = [k for k in weight if k not in specs]
        if missing or extra:
            raise ValueError(
                f"weight mapping keys differ from the subnets {labels}: missing {missing}, "
                f"unexpected {extra}. Give one weight per subnet, or a single float."
            )
        return {k: _check_weight(weight[k], f"weight[{k!r}]") for k in labels}
    w = _check_weight(weight, "weight")
    return {k: w for k in labels}


def _select_uses(model: nn.Module, selector: Selector) -> list[str]:
    """Canonical names of every parameter ``selector`` picks, shared (tied) ones included.

    As :func:`landprobe.select`, but matched against every name a parameter has in ``model``
    (``named_parameters(remove_duplicate=False)``): with ``m.out.weight = m.emb.weight``,
    ``"out"`` selects the shared matrix too, reported under its canonical name ``"emb.weight"``
    (the first name ``named_parameters()`` gives it). Returned in model order.
    """
    canonical_of: dict[int, str] = {}
    alias: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        alias[name] = canonical_of.setdefault(id(p), name)
    canonical = list(canonical_of.values())
    all_names = list(alias)
    sels = list(selector) if isinstance(selector, (list, tuple)) else [selector]
    if not sels:
        raise ValueError("subnet selector is an empty list; pass None to select the whole model.")
    chosen: set[str] = set()
    for sel in sels:
        got = match_selector(model, sel, all_names)
        if not got:
            raise no_match_error(model, sel, canonical, "parameter")
        chosen.update(alias[n] for n in got)
    return [n for n in canonical if n in chosen]


def _resolve_members(model: nn.Module, specs: dict[Hashable, tuple[Selector, str]], include_bias: bool,
                     weights: Mapping[Hashable, float] | None = None
                     ) -> tuple[dict[str, nn.Parameter], dict[Hashable, list[str]]]:
    """The model's parameters by name, and subnet label → names of its penalised parameters.

    A selected module brings every parameter it uses, shared (tied) ones included, by canonical
    name. A parameter selected by several subnets must get the same kind and weight from each
    (else ``ValueError`` naming both selectors and the parameter); it is then penalised once,
    in the first of these subnets (in the order of ``specs``).
    """
    params = dict(model.named_parameters())
    members: dict[Hashable, list[str]] = {}
    owner: dict[str, Hashable] = {}
    for label, (sel, kind) in specs.items():
        selected = _select_uses(model, sel)
        names = selected
        if not include_bias:
            names = [n for n in names if params[n].dim() >= 2 and not n.endswith("bias")]
            if not names:
                raise ValueError(
                    f"subnet {label!r} selects only biases and 1-D parameters "
                    f"({selected[:4]}), which include_bias=False leaves out; "
                    f"drop the subnet or pass include_bias=True."
                )
        if kind == "spectral":
            flat = [n for n in names if params[n].dim() < 2]
            if flat:
                raise ValueError(
                    f"kind 'spectral' needs weight matrices (tensors with >= 2 dims), but subnet "
                    f"{label!r} selects 1-D/0-D parameter(s) {flat[:6]}. Pass include_bias=False "
                    f"to leave them out, or narrow the selector (e.g. 'rnet.*.weight')."
                )
        own = []
        for n in names:
            first = owner.get(n)
            if first is None:
                owner[n] = label
                own.append(n)
                continue
            first_kind = specs[first][1]
            if first_kind != kind:
                raise ValueError(
                    f"subnet selectors {first!r} and {label!r} both select parameter {n!r}, with "
                    f"different kinds ({first_kind!r} and {kind!r}); a parameter (shared ones "
                    f"included) gets one kind only. Narrow one of the selectors (e.g. a glob such "
                    f"as 'inet.conv1.*') or give both the same kind."
                )
            if weights is not None and weights[first] != weights[label]:
                raise ValueError(
                    f"subnet selectors {first!r} and {label!r} both select parameter {n!r}, with "
                    f"different weights ({weights[first]!r} and {weights[label]!r}); a parameter "
                    f"(shared ones included) gets one weight only. Narrow one of the selectors or "
                    f"give both the same weight."
                )
        members[label] = own
    return params, members


def _sort_tensors(labels: list[Hashable], kinds: dict[Hashable, str], members: dict[Hashable, list[str]],
                  params: Mapping[str, Tensor]
                  ) -> tuple[dict[int, list[tuple[Hashable, list[str]]]], dict[tuple, list[tuple[int, str]]]]:
    """Per norm power p, ``(label, names)`` of the tensors fused by ``_Plan``; and buckets
    ``(kind, shape, dtype, device)`` → ``[(position, name)]`` of the group/spectral matrices."""
    fused: dict[int, list[tuple[Hashable, list[str]]]] = {1: [], 2: []}
    buckets: dict[tuple[str, tuple[int, ...], torch.dtype, torch.device], list[tuple[int, str]]] = {}
    for pos, label in enumerate(labels):
        kind, names = kinds[label], members[label]
        if not names:           # every parameter it selects is penalised in an earlier subnet
            continue
        if kind in ("l2_squared", "l2norm"):
            fused[2].append((label, names))
        elif kind == "l1":
            fused[1].append((label, names))
        else:
            if kind == "group":
                small = [n for n in names if params[n].dim() < 2]
                if small:
                    fused[1].append((label, small))
            for n in names:
                if params[n].dim() >= 2:
                    t = params[n]
                    buckets.setdefault((kind, tuple(t.shape), t.dtype, t.device), []).append((pos, n))
    return fused, buckets


def _check_model(model: Any) -> None:
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise TypeError(f"model is the class {model.__name__}, not a model; instantiate it: "
                        f"SubnetNormPenalty({model.__name__}(...), norms).")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model has type {type(model).__name__}; expected a torch.nn.Module instance.")
    check_module(model)                     # a model on the meta device

"""The Hessian of the empirical error as a matrix-free operator.

:func:`hessian` (also ``LandscapeProbe.hessian``, which hands it the probe's engine) returns a
:class:`HessianOperator`: the exact Hessian, with respect to the model's parameters (or one subnet of them), of the
sample-weighted empirical error

    L(θ) = Σ_b (n_b / N) · loss_fn(model(x_b; θ), y_b),

evaluated at θ functionally (``torch.func.functional_call``): the user's model is never
written to, and its modes, flags, buffers and the RNG states are restored after every product.

Products reuse the gradient's autograd graph when it fits in memory (``graph=``): the
gradient of L at θ is built once, with ``create_graph=True``, and each product H v is then a
single backward pass through it, instead of a forward, a first and a second backward per
batch. Where it is exact, the batches are concatenated into one (one graph, one set of
weight-sized intermediate tensors instead of one per batch).

Under data sharding (``sharding=landprobe.Sharding(data=True)``) each rank caches only its
own batches (weighted by the samples of all ranks), computes its share of every product over
them (zero when it has none; a kept graph is per rank) and the shares are summed, so every
rank holds the one-process H v; an error on one rank is raised on every rank.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, jvp

from landprobe.params import ParamVector, Selector, select, select_subnets
from landprobe.curvature.results import Eigenpairs, Spectrum, TraceEstimate
from landprobe.engine import Engine, HasEngine, as_engine, is_batchnorm

__all__ = ["HessianOperator", "hessian", "HVP_METHODS", "GRAPH_MODES", "DEFAULT_GRAPH_BYTES"]

HVP_METHODS = ("double-backward", "forward-over-reverse")
GRAPH_MODES = ("auto", "merged", "per-batch", "streamed")
# Default memory allowed for a kept gradient graph under graph="auto": the bytes of the tensors
# autograd saves while the graph is built (parameters and the cached data not counted).
DEFAULT_GRAPH_BYTES = 2 * 1024**3
# Measured on the 2-core CPU (benchmarks/results/hessian.json): double backward is the faster
# of the two for conv + linear nets; forward-over-reverse stays available for comparison.
DEFAULT_HVP = "double-backward"
# What a kept graph is, in the order the ranks of a data-sharded Hessian agree on it: the
# first kind any rank reports is the one every rank reports.
_KINDS = ("streamed", "per-batch", "merged")


class _GraphTooLarge(Exception):
    """Raised from the saved-tensor hook once a gradient graph outgrows its memory budget."""


class _SavedBytes:
    """Counts the bytes of the distinct storages autograd saves while a graph is built.

    Storages that exist anyway (θ, the buffers, the cached batches) are not counted. With a
    ``budget``, building stops (``_GraphTooLarge``) as soon as the count passes it, so that a
    graph too large for memory is never completed.
    """

    def __init__(self, budget: int | None, exclude: set[int]):
        self.budget = budget
        self.exclude = exclude
        self.seen: set[int] = set()
        self.nbytes = 0

    def reset(self) -> None:
        self.seen.clear()
        self.nbytes = 0

    def pack(self, t: Tensor) -> Tensor:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self.exclude and ptr not in self.seen:
            self.seen.add(ptr)
            self.nbytes += st.nbytes()
            if self.budget is not None and self.nbytes > self.budget:
                raise _GraphTooLarge
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t


def _storages(obj: Any, out: set[int]) -> set[int]:
    if isinstance(obj, Tensor):
        out.add(obj.untyped_storage().data_ptr())
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _storages(v, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, out)
    return out


def _concat(parts: list[Any]) -> Any:
    """Concatenate batch inputs (tensors, or tuples/lists/dicts of them) along dim 0; None if
    they cannot be (other types, or shapes that differ beyond the first dimension)."""
    first = parts[0]
    if isinstance(first, Tensor):
        if not all(isinstance(t, Tensor) and t.dim() > 0 and t.shape[1:] == first.shape[1:]
                   and t.dtype == first.dtype for t in parts):
            return None
        return torch.cat(parts)
    if isinstance(first, (list, tuple)):
        if not all(isinstance(t, type(first)) and len(t) == len(first) for t in parts):
            return None
        cols = [_concat([t[i] for t in parts]) for i in range(len(first))]
        return None if any(c is None for c in cols) else type(first)(cols)
    if isinstance(first, dict):
        if not all(isinstance(t, dict) and t.keys() == first.keys() for t in parts):
            return None
        cols = {k: _concat([t[k] for t in parts]) for k in first}
        return None if any(c is None for c in cols.values()) else cols
    return None


def _backward_of_gradient(g: Sequence[Tensor], leaves: Sequence[Tensor], vs: Sequence[Tensor],
                          retain: bool) -> list[Tensor]:
    """Σ_i ∂(g_i · v_i)/∂leaves: one backward through the gradient's graph. Entries of g that
    do not depend on the leaves (a constant gradient) contribute nothing."""
    pairs = [(gi, vi) for gi, vi in zip(g, vs) if gi.requires_grad]
    if not pairs:
        return [torch.zeros_like(t) for t in leaves]
    hv = torch.autograd.grad([gi for gi, _ in pairs], leaves, grad_outputs=[vi for _, vi in pairs],
                             allow_unused=True, retain_graph=retain)
    return [torch.zeros_like(t) if h is None else h for h, t in zip(hv, leaves)]


class _Graph:
    """The gradient of the empirical error at θ with its autograd graph kept: each product
    H v is one backward pass through it."""

    def __init__(self, leaves: list[Tensor], grads: list[Tensor]):
        self.leaves, self.grads = leaves, grads

    def product(self, vs: Sequence[Tensor]) -> list[Tensor]:
        with torch.enable_grad():
            return _backward_of_gradient(self.grads, self.leaves, vs, retain=True)


class _Problem:
    """What every block of one Hessian shares: the engine (model, loss, modes), the cached
    batches with their weights n_b / N, and θ."""

    def __init__(self, engine: Engine, batches: list[tuple[Any, float]], state: dict[str, Tensor]):
        self.engine = engine
        self.model = engine.model
        self.batches = batches          # (prepared batch, weight n_b / N)
        self.state = state              # every parameter and buffer at θ, in the operator's dtype
        self.bn = engine.bn
        self.bns = [m for m in self.model.modules() if is_batchnorm(m)]
        self._merged: Any = False       # False: not tried yet; None: cannot be merged
        self.sharded = engine.ranks().sharded   # batches: this rank's; weights: over all ranks' samples

    def merged(self) -> Any:
        """This rank's batches concatenated into one, or None if they cannot be (or there are none)."""
        if self._merged is False:
            self._merged = _concat([b for b, _ in self.batches]) if self.batches else None
        return self._merged

    def all_weights(self) -> tuple[list[float], list[int]]:
        """The weights n_b / N of every rank's batches in the order of the data (this rank's
        alone without data sharding), and where each of this rank's batches sits in it."""
        ranks = self.engine.ranks()
        # this rank's j-th batch is the data's (j·W + r)-th with the engine's split (batch i on
        # rank i mod W), and takes that place among the ranks' batches with given shards
        slots = [j * ranks.data_world + ranks.data_rank for j in range(len(self.batches))]

        def table() -> Tensor:
            rows = torch.zeros(slots[-1] + 1 if slots else 0, 2, dtype=torch.float64)
            for slot, (_, w) in zip(slots, self.batches):
                rows[slot] = torch.tensor([w, 1.0], dtype=torch.float64)
            return rows
        rows = ranks.all_sum_rows(table, "subsampling the Hessian's batches")
        present = rows[:, 1] > 0
        place = (torch.cumsum(present.long(), 0) - 1).tolist()
        return rows[present, 0].tolist(), [place[slot] for slot in slots]

    def storages(self) -> set[int]:
        """Storages that exist whether or not a graph is kept: θ, buffers and the cached batches."""
        return _storages([list(self.state.values()), [b for b, _ in self.batches]], set())

    @contextlib.contextmanager
    def product_context(self) -> Iterator[None]:
        """Model in the probe's modes for one product; everything restored afterwards."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # The math attention kernel: the fused CPU/GPU kernels have no second derivative.
        with self.engine.guard("hessian"), sdpa_kernel([SDPBackend.MATH]):
            self.engine.set_eval_modes()
            saved = [(m, m.track_running_stats) for m in self.bns]
            try:
                if self.bn == "train":
                    # BatchNorm normalises with each batch's statistics; with tracking off the
                    # running statistics are neither used nor updated (no in-place writes).
                    for m in self.bns:
                        m.track_running_stats = False
                yield
            finally:
                for m, flag in saved:
                    m.track_running_stats = flag

    def loss(self, names: Sequence[str], tensors: Sequence[Tensor], batch: Any) -> Tensor:
        state = dict(self.state)
        state.update(zip(names, tensors))
        return self.engine.functional_loss(state, batch)


class HessianOperator:
    """The Hessian of the empirical error at θ, as a symmetric matrix-free operator.

    Built by :func:`hessian` (``probe.hessian(theta)``). It acts on parameter vectors of the
    block it covers (all parameters, or one subnet; the others are held at θ):
    ``H @ v`` is :meth:`matvec`, ``op.shape == (n, n)``.

    Convention:
        H = Σ_b (n_b / N) ∇²_θ loss_fn(model(x_b; θ), y_b): batches of unequal size weigh by
        their sample count, so H is exact for mean-reduced losses. BatchNorm follows the
        probe's ``bn``: ``"eval"`` uses the running statistics at θ as constants (the Hessian
        of the deployed model's loss); ``"train"`` normalises each batch with its own
        statistics, which are differentiated through (as in training), and the running
        statistics are not used or touched; ``"recompute"`` re-estimates the running
        statistics at θ once (one pass over the data), then treats them as constants as
        ``"eval"``. Dropout is off (eval mode). The batches are cached on the model's device
        when the operator is built, so a shuffling or augmenting loader gives one fixed H.
        Under data sharding each rank caches its own batches and the products are summed
        over the ranks (see the module's docstring): every rank gets the one-process H.

    Attributes:
        names: Parameter names of the block, in model order.
        n: Its dimension (number of scalar parameters).
        dtype: dtype the model is evaluated in (its own, or float64 on request).
        hvp: ``"double-backward"`` (default; measured fastest here) or
            ``"forward-over-reverse"`` (``torch.func.jvp`` of ``torch.func.grad``).
        graph: The requested reuse of the gradient graph (see :func:`hessian`).
        graph_used: What the products use: ``"merged"`` (one kept graph over the
            concatenated batches), ``"per-batch"`` (one kept graph per batch), ``"streamed"``
            (nothing kept), or ``None`` before the first product decides. Under data
            sharding the same on every rank: ``"streamed"`` if one rank's graph outgrew
            ``graph_bytes`` (a budget per rank), else ``"per-batch"`` if one rank keeps a
            graph per batch.
        matvecs: Number of Hessian-vector products computed so far.
        progress: The probe's progress setting, which the spectral probes follow (see
            :attr:`progress`).

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.curvature import hessian
        >>> model = torch.nn.Linear(2, 1, bias=False)                    # y_hat = w . x
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); y = torch.zeros(2, 1)
        >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)])
        >>> H = hessian(probe, dtype=torch.float64)                      # (2/N) X^T X = diag(1, 4)
        >>> H.matvec(torch.tensor([1.0, 1.0], dtype=torch.float64))
        tensor([1., 4.], dtype=torch.float64)
        >>> H.top_eigenvalues(k=2).values.tolist()
        [4.0, 1.0]
        >>> round(H.trace(matvecs=30).value, 10)                          # exact for diagonal H
        5.0
    """

    def __init__(self, problem: _Problem, names: Sequence[str], *, hvp: str = "auto",
                 settings: dict[str, Any] | None = None, graph: str = "auto",
                 graph_bytes: int = DEFAULT_GRAPH_BYTES):
        if hvp == "auto":
            hvp = DEFAULT_HVP
        if hvp not in HVP_METHODS:
            raise ValueError(f"hvp={hvp!r}; expected 'auto' or one of {HVP_METHODS}")
        if graph not in GRAPH_MODES:
            raise ValueError(f"graph={graph!r}; expected one of {GRAPH_MODES}")
        if hvp == "forward-over-reverse" and graph in ("merged", "per-batch"):
            raise ValueError(f"graph={graph!r} keeps a double-backward graph; it cannot be combined with "
                             f"hvp='forward-over-reverse' (use graph='streamed' or hvp='double-backward')")
        if graph == "merged" and problem.bn == "train":
            raise ValueError("graph='merged' concatenates the batches, which changes what BatchNorm normalises "
                             "with under bn='train'; use graph='per-batch' or 'auto'")
        if isinstance(graph_bytes, bool) or not isinstance(graph_bytes, (int, float)) or not graph_bytes >= 0:
            raise ValueError(f"graph_bytes={graph_bytes!r}; expected a number of bytes >= 0 (e.g. 2**31)")
        self._p = problem
        self.names = list(names)
        self.hvp = hvp
        self.graph = graph
        self.graph_bytes = int(graph_bytes)
        self.graph_used: str | None = "streamed" if (graph == "streamed" or hvp != "double-backward") else None
        self._graph: _Graph | None = None
        theta = [problem.state[n] for n in self.names]
        self._theta = theta
        self._shapes = [t.shape for t in theta]
        self._sizes = [t.numel() for t in theta]
        self.n = int(sum(self._sizes))
        self.dtype = theta[0].dtype
        self.device = theta[0].device
        self.matvecs = 0
        self.settings = dict(settings or {})
        self.settings.update(hvp=hvp, n=self.n, dtype=str(self.dtype), graph=graph)
        if self.graph_used == "streamed":
            self.settings["graph_used"] = "streamed"

    # ---- basic properties
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def progress(self) -> bool | None:
        """Whether ``top_eigenvalues``, ``trace`` and ``density`` draw a progress bar: the
        probe's (its engine's) setting, read when each starts: ``None`` on a terminal only,
        ``True`` always, ``False`` never. Set it on the probe (``probe.progress = True``).

        Example:
            >>> import torch, landprobe as lp
            >>> from landprobe.curvature import hessian
            >>> model = torch.nn.Linear(2, 1)
            >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), [(torch.randn(4, 2), torch.randn(4, 1))])
            >>> H = hessian(probe)
            >>> H.progress is None, H.subsample(0.5).progress is None
            (True, True)
            >>> probe.progress = False; H.progress
            False
        """
        return self._p.engine.progress

    def __repr__(self) -> str:
        return (f"HessianOperator(n={self.n}, {len(self.names)} tensors, {self.dtype}, "
                f"hvp={self.hvp!r}, batches={self.settings.get('batches', len(self._p.batches))})")

    def theta(self) -> ParamVector:
        """The point θ of this block (the operator's own tensors; do not modify)."""
        return ParamVector(dict(zip(self.names, self._theta)))

    # ---- products
    def _hvp_lists(self, vs: list[Tensor]) -> list[Tensor]:
        return self._hvp_many([vs])[0]

    def _hvp_many(self, vss: list[list[Tensor]]) -> list[list[Tensor]]:
        """H @ v for each list of tensors in ``vss``: through the kept graph when there is one
        (built on the first product), else streamed over the batches. Under data sharding each
        rank computes its share over its own batches and the shares are summed."""
        if self.graph_used is None:
            self._build_graph()

        def local() -> list[Tensor]:
            if self._graph is not None:
                out = [self._graph.product(vs) for vs in vss]
            elif self.hvp == "double-backward":
                out = self._streamed_double_backward(vss)
            else:
                out = [self._streamed_forward_over_reverse(vs) for vs in vss]
            return [h for hv in out for h in hv]
        flat = self._p.engine.all_sum(local, "a Hessian-vector product")
        k = len(self._theta)
        self.matvecs += len(vss)
        return [flat[i * k:(i + 1) * k] for i in range(len(vss))]

    def _build_graph(self) -> None:
        """Build the gradient at θ with its graph (merged batches where exact), within the
        memory budget under ``graph="auto"``; otherwise fall back to streaming. Under data
        sharding each rank keeps the graph of its own batches, and the ranks agree on what
        :attr:`graph_used` reports: ``"streamed"`` (every rank drops its graph) as soon as one
        rank's graph outgrows the budget."""
        p = self._p
        ranks = p.engine.ranks()
        built: list[Any] = []

        def local() -> list[Tensor]:
            graph, kind, nbytes = self._local_graph()
            built[:] = [graph]
            code = torch.zeros(3 + ranks.data_world, dtype=torch.float64)
            if kind is not None:
                code[_KINDS.index(kind)] = 1.0
            code[3 + ranks.data_rank] = float(nbytes)
            return [code]
        code = p.engine.all_sum(local, "building the Hessian's gradient graph")[0]
        counts = [int(c) for c in code[:3].tolist()]
        kind = next((k for k, c in zip(_KINDS, counts) if c), "per-batch")
        if kind == "streamed":
            self.graph_used = "streamed"
            self.settings.update(graph_used="streamed", graph_bytes_limit=self.graph_bytes)
            return
        self._graph = built[0]
        self.graph_used = kind
        self.settings.update(graph_used=kind, graph_saved_bytes=int(code[3:].max()))

    def _local_graph(self) -> tuple[_Graph | None, str | None, int]:
        """This rank's kept graph over its own batches, what it is (``"merged"``,
        ``"per-batch"``, ``"streamed"`` when it outgrew the budget, or ``None`` for at most one
        batch where merging was allowed: the same graph either way) and the bytes it saves."""
        p = self._p
        counter = _SavedBytes(self.graph_bytes if self.graph == "auto" else None, p.storages())
        leaves = [t.detach().requires_grad_(True) for t in self._theta]
        if not p.batches:                   # a rank without batches: its share of H is zero
            return _Graph(leaves, [torch.zeros_like(t) for t in leaves]), None, 0
        kinds = {"auto": ("merged", "per-batch"), "merged": ("merged",), "per-batch": ("per-batch",)}[self.graph]
        neutral = len(p.batches) == 1 and "merged" in kinds and p.bn != "train"
        if p.bn == "train" or len(p.batches) == 1:
            kinds = tuple(k for k in kinds if k != "merged") or ("per-batch",)
        grads: list[Tensor] | None = None
        kind = None
        with p.product_context(), torch.enable_grad():
            try:
                with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                    if "merged" in kinds:
                        grads = self._merged_gradient(leaves, check=self.graph == "auto")
                        if grads is None and self.graph == "merged":
                            raise ValueError("graph='merged' needs batches that concatenate along the first "
                                             "dimension (tensors, or tuples/dicts of them, of equal trailing shapes)")
                        kind = "merged" if grads is not None else None
                    if grads is None:
                        counter.reset()
                        for batch, w in p.batches:
                            loss = p.loss(self.names, leaves, batch) * w
                            g = torch.autograd.grad(loss, leaves, create_graph=True)
                            grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
                        kind = "per-batch"
            except _GraphTooLarge:
                return None, "streamed", counter.nbytes
        assert grads is not None
        return _Graph(leaves, grads), (None if neutral else kind), counter.nbytes

    def _merged_gradient(self, leaves: list[Tensor], check: bool) -> list[Tensor] | None:
        """The gradient of the loss of all batches concatenated, with its graph; None if they do
        not concatenate or (``check``) if that loss differs from the sample-weighted mean of the
        per-batch losses at θ (a loss that is not a per-sample mean, or a model that couples
        the samples of a batch): then merging would change the empirical error. Under data
        sharding: this rank's batches, the loss weighted by their share of the samples."""
        p = self._p
        merged = p.merged()
        if merged is None:
            return None
        loss = p.loss(self.names, leaves, merged)
        if p.sharded:
            loss = loss * math.fsum(w for _, w in p.batches)
        if check:
            with torch.no_grad():
                parts = [(w, float(p.loss(self.names, leaves, batch))) for batch, w in p.batches]
            ref = math.fsum(w * l for w, l in parts)
            scale = math.fsum(w * abs(l) for w, l in parts)
            tol = 1000 * torch.finfo(self.dtype).eps * scale + 1e-300
            if not (abs(float(loss.detach()) - ref) <= tol):
                p._merged = None            # not exact for this loss and model: free the copy, never retry
                return None
        return list(torch.autograd.grad(loss, leaves, create_graph=True))

    def _streamed_double_backward(self, vss: list[list[Tensor]]) -> list[list[Tensor]]:
        """Per batch: forward, gradient with its graph, one second backward per vector (the
        graph is built once per batch for all the vectors of a ``matmat``)."""
        p = self._p
        accs = [[torch.zeros_like(t) for t in self._theta] for _ in vss]
        with p.product_context():
            leaves = [t.detach().requires_grad_(True) for t in self._theta]
            with torch.enable_grad():
                for batch, w in p.batches:
                    loss = p.loss(self.names, leaves, batch)
                    g = torch.autograd.grad(loss, leaves, create_graph=True)
                    for j, vs in enumerate(vss):
                        hv = _backward_of_gradient(g, leaves, vs, retain=j + 1 < len(vss))
                        torch._foreach_add_(accs[j], hv, alpha=w)
        return accs

    def _streamed_forward_over_reverse(self, vs: list[Tensor]) -> list[Tensor]:
        p = self._p
        acc = [torch.zeros_like(t) for t in self._theta]
        with p.product_context():
            for batch, w in p.batches:
                hv = self._forward_over_reverse_batch(vs, batch)
                torch._foreach_add_(acc, list(hv), alpha=w)
        return acc

    def _forward_over_reverse_batch(self, vs: list[Tensor], batch: Any) -> tuple[Tensor, ...]:
        p = self._p
        if p.engine.contract.whole:
            def g_whole(params: tuple[Tensor, ...]) -> Any:
                return grad(lambda q: p.loss(self.names, q, batch))(params)
            return jvp(g_whole, (tuple(self._theta),), (tuple(vs),))[1]
        x, y = batch

        def g_of(params: tuple[Tensor, ...], yy: Any) -> Any:
            return grad(lambda q: p.loss(self.names, q, (x, yy)))(params)
        # The target enters as a primal with a materialised zero tangent: some loss
        # backwards (mse_loss in torch 2.13) fail on a captured target under forward AD.
        if isinstance(y, Tensor) and y.is_floating_point():
            return jvp(g_of, (tuple(self._theta), y), (tuple(vs), torch.zeros_like(y)))[1]
        return jvp(lambda q: g_of(q, y), (tuple(self._theta),), (tuple(vs),))[1]

    def release_graph(self) -> None:
        """Free the kept gradient graph; the next product decides again (and builds it again).

        Example:
            >>> import torch, landprobe as lp
            >>> from landprobe.curvature import hessian
            >>> model = torch.nn.Linear(2, 1)
            >>> data = [(torch.randn(4, 2), torch.randn(4, 1)), (torch.randn(3, 2), torch.randn(3, 1))]
            >>> H = hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), data))
            >>> _ = H.matvec(torch.ones(H.n)); H.graph_used      # two batches concatenated: exact here
            'merged'
            >>> H.release_graph(); H.graph_used is None
            True
        """
        self._graph = None
        if self.graph != "streamed" and self.hvp == "double-backward":
            self.graph_used = None

    def matmat(self, V: Tensor) -> Tensor:
        """H @ V for a (n, m) tensor of m flat vectors (columns); the result is (n, m) in the operator's dtype.

        Faster than m calls of :meth:`matvec` with double backward (one forward and gradient
        graph per batch for all columns). Memory: the m vectors and their products.

        Raises:
            ValueError: If ``V`` is not (n, m).

        Example:
            >>> import torch, landprobe as lp
            >>> from landprobe.curvature import hessian
            >>> model = torch.nn.Linear(2, 1, bias=False)
            >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); y = torch.zeros(2, 1)
            >>> H = hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)]), dtype=torch.float64)
            >>> H.matmat(torch.eye(2, dtype=torch.float64))                    # (2/N) X^T X
            tensor([[1., 0.],
                    [0., 4.]], dtype=torch.float64)
        """
        if not isinstance(V, Tensor) or V.dim() != 2 or V.shape[0] != self.n:
            raise ValueError(f"V has shape {tuple(V.shape) if isinstance(V, Tensor) else type(V).__name__}; "
                             f"expected a (n, m) tensor with n={self.n} rows (one column per vector)")
        return self._rows_product(V.T).T

    def _rows_product(self, rows: Tensor) -> Tensor:
        """H applied to each row of an (m, n) tensor; (m, n) in the operator's dtype. Rows, not
        columns: a column of a large (n, m) matrix is a strided gather over all of it."""
        rows = rows.to(device=self.device, dtype=self.dtype).contiguous()
        out = self._hvp_many([self._split(r) for r in rows])
        return torch.stack([torch.cat([h.reshape(-1) for h in hv]) for hv in out])

    def _check_flat(self, v: Tensor) -> None:
        if v.dim() != 1 or v.numel() != self.n:
            raise ValueError(
                f"v has shape {tuple(v.shape)}; expected a flat tensor of {self.n} elements (this block's "
                f"dimension) or a ParamVector with the names {self.names[:4]}{'...' if len(self.names) > 4 else ''}"
            )

    def _split(self, flat: Tensor) -> list[Tensor]:
        flat = flat.to(device=self.device, dtype=self.dtype)
        return [c.view(s) for c, s in zip(torch.split(flat, self._sizes), self._shapes)]

    @overload
    def matvec(self, v: ParamVector) -> ParamVector: ...

    @overload
    def matvec(self, v: Tensor) -> Tensor: ...

    def matvec(self, v: ParamVector | Tensor) -> ParamVector | Tensor:
        """H @ v for a ParamVector over :attr:`names` or a flat tensor of :attr:`n` elements.

        Returns the same kind as ``v``, in the operator's dtype. Under data sharding every
        rank must call it with the same ``v`` (each computes its share; the shares are summed).

        Raises:
            ValueError: If ``v`` has the wrong size or names.
            TypeError: If ``v`` is neither a ParamVector nor a tensor.
        """
        if isinstance(v, ParamVector):
            if v.names != self.names:
                missing = [n for n in self.names if n not in v.names]
                extra = [n for n in v.names if n not in self.names]
                raise ValueError(f"v has other names than this Hessian block: missing {missing[:4]}, extra "
                                 f"{extra[:4]}; build v with ParamVector.from_module(model, subnet) of the same subnet")
            vs = [t.to(device=self.device, dtype=self.dtype) for t in v.tensors]
            for n, a, s in zip(self.names, vs, self._shapes):
                if a.shape != s:
                    raise ValueError(f"v[{n!r}] has shape {tuple(a.shape)}; expected {tuple(s)}")
            return ParamVector(dict(zip(self.names, self._hvp_lists(vs))))
        if isinstance(v, Tensor):
            self._check_flat(v)
            return self._flat_matvec(v)
        raise TypeError(f"v must be a ParamVector or a flat torch.Tensor, not {type(v).__name__}")

    __matmul__ = matvec

    def _flat_matvec(self, v: Tensor) -> Tensor:
        return torch.cat([h.reshape(-1) for h in self._hvp_lists(self._split(v))])

    def gradient(self) -> Tensor:
        """The loss gradient at θ over this block's parameters, flat (the operator's dtype and
        device), summed over the ranks that share the data: read off the kept gradient graph
        when there is one (no pass of its own), else one pass over the batches. It does not
        count in :attr:`matvecs`.

        Example:
            >>> import torch, landprobe as lp
            >>> from landprobe.curvature import hessian
            >>> model = torch.nn.Linear(2, 1, bias=False)
            >>> with torch.no_grad(): _ = model.weight.fill_(1.0)
            >>> x = torch.eye(2); y = torch.zeros(2, 1)                   # loss (w1² + w2²) / 2
            >>> hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)])).gradient().tolist()
            [1.0, 1.0]
        """
        if self.graph_used is None:
            self._build_graph()
        p = self._p

        def local() -> list[Tensor]:
            if self._graph is not None:
                return [g.detach() for g in self._graph.grads]
            acc = [torch.zeros_like(t) for t in self._theta]
            with p.product_context():
                leaves = [t.detach().requires_grad_(True) for t in self._theta]
                with torch.enable_grad():
                    for batch, w in p.batches:
                        g = torch.autograd.grad(p.loss(self.names, leaves, batch), leaves, allow_unused=True)
                        torch._foreach_add_(acc, [torch.zeros_like(t) if gi is None else gi
                                                  for t, gi in zip(leaves, g)], alpha=w)
            return acc
        return torch.cat([g.reshape(-1) for g in p.engine.all_sum(local, "the Hessian's gradient")])

    def to_param_vector(self, flat: Tensor) -> ParamVector:
        """A flat vector of this block as a ParamVector (copy, in the operator's dtype)."""
        self._check_flat(flat)
        return ParamVector(dict(zip(self.names, [t.clone() for t in self._split(flat)])))

    def as_linear_operator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 numpy in and out), e.g. for ``eigsh``.

        Example:
            >>> import torch, landprobe as lp
            >>> from scipy.sparse.linalg import eigsh
            >>> from landprobe.curvature import hessian
            >>> model = torch.nn.Linear(3, 1, bias=False)
            >>> x = torch.diag(torch.tensor([1.0, 2.0, 3.0])); y = torch.zeros(3, 1)
            >>> H = hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), [(x, y)]), dtype=torch.float64)
            >>> A = H.as_linear_operator()                                  # (2/3) diag(1, 4, 9)
            >>> float(eigsh(A, k=1, which="LA", return_eigenvectors=False)[0])
            6.0
        """
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self._flat_matvec(t).detach().to("cpu", torch.float64).numpy()

        def mm(X: np.ndarray) -> np.ndarray:
            X = np.asarray(X, dtype=np.float64).reshape(self.n, -1)
            return np.stack([mv(X[:, j]) for j in range(X.shape[1])], axis=1)

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)

    def dense(self, max_n: int = 4096) -> Tensor:
        """The full n x n matrix, column by column (n products): for small blocks and tests.

        Raises:
            ValueError: If ``n > max_n`` (raise ``max_n`` if you really want it).
        """
        if self.n > max_n:
            raise ValueError(f"dense() of an n={self.n} Hessian needs {self.n} products and {self.n ** 2} "
                             f"entries; max_n={max_n}. Raise max_n or use top_eigenvalues/trace/density.")
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
        return torch.stack([self._flat_matvec(eye[i]) for i in range(self.n)], dim=1)

    def subsample(self, fraction: float) -> HessianOperator:
        """The same Hessian block at the same θ over the first batches holding ≥ ``fraction`` of
        the samples (reweighted by their own total): a cheaper, noisier estimate of H. Under
        data sharding: the first of all the ranks' batches (in the data's order with the
        engine's split; the ranks' j-th batches in turn with given shards).

        Raises:
            ValueError: If ``fraction`` is not in (0, 1].

        Example:
            >>> import torch, landprobe as lp
            >>> from landprobe.curvature import hessian
            >>> model = torch.nn.Linear(1, 1, bias=False)                 # H = 2 mean(x²)
            >>> data = [(torch.full((2, 1), 1.0), torch.zeros(2, 1)), (torch.full((6, 1), 2.0), torch.zeros(6, 1))]
            >>> H = hessian(lp.LandscapeProbe(model, torch.nn.MSELoss(), data), dtype=torch.float64)
            >>> H.dense().item(), H.subsample(0.25).dense().item()      # 2 (2·1 + 6·4)/8 and 2·1
            (6.5, 2.0)
        """
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"fraction={fraction!r}; expected a share of the samples in (0, 1], e.g. 0.125")
        p = self._p
        weights, places = p.all_weights()
        keep, acc = 0, 0.0
        while keep < len(weights) and acc < fraction - 1e-12:
            acc += weights[keep]
            keep += 1
        batches = [(b, w / acc) for (b, w), i in zip(p.batches, places) if i < keep]
        sub = _Problem(p.engine, batches, p.state)
        return self._derived(sub, self.names, batches=keep, subsample=float(acc))

    def _derived(self, problem: _Problem, names: Sequence[str], **settings: Any) -> HessianOperator:
        """Another operator with this one's options (its graph, if any, is its own)."""
        kept = {k: v for k, v in self.settings.items() if not k.startswith("graph_")}
        return HessianOperator(problem, names, hvp=self.hvp, settings={**kept, **settings}, graph=self.graph,
                               graph_bytes=self.graph_bytes)

    # ---- blocks
    def block(self, subnet: Selector) -> HessianOperator:
        """The diagonal block of H for the parameters that ``subnet`` selects (others held at θ).

        Raises:
            ValueError: If the selector matches nothing or leaves this operator's block.
        """
        names = select(self._p.model, subnet)
        outside = [n for n in names if n not in self.names]
        if outside:
            raise ValueError(f"subnet {subnet!r} selects {outside[:4]}, which are not in this Hessian block; "
                             f"take blocks of the full operator (probe.hessian() with subnet=None)")
        return self._derived(self._p, names, subnet=_describe(subnet))

    def blocks(self, selectors: Mapping[Any, Selector]) -> dict[Any, HessianOperator]:
        """Diagonal blocks per subnet, e.g. ``{"enet": "enet", "inet": "inet", "rnet": "rnet"}``.

        Raises:
            ValueError: If a selector matches nothing or two of them share a parameter.

        Example:
            >>> import torch, landprobe as lp
            >>> from landprobe.curvature import hessian
            >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
            >>> probe = lp.LandscapeProbe(net, torch.nn.MSELoss(), [(torch.randn(4, 2), torch.randn(4, 1))])
            >>> parts = hessian(probe).blocks({"first": "0", "last": "2"})
            >>> {k: op.n for k, op in parts.items()}                       # 2*3+3 and 3*1+1
            {'first': 9, 'last': 4}
        """
        subs = select_subnets(self._p.model, selectors)
        return {k: self.block(names) for k, names in subs.items()}

    # ---- spectra (see lanczos.py, trace.py, density.py)
    def top_eigenvalues(self, k: int = 1, which: str = "LA", *, tol: float = 1e-6, max_iter: int | None = None,
                        seed: int = 0, method: str = "lanczos", atol: float | None = None,
                        warm_start: float | str | None = None, tol_on: str = "residual") -> Eigenpairs:
        """Extreme eigenvalues by Lanczos; see :func:`landprobe.curvature.lanczos.top_eigenvalues`."""
        from landprobe.curvature.lanczos import top_eigenvalues

        return top_eigenvalues(self, k, which, tol=tol, max_iter=max_iter, seed=seed, method=method, atol=atol,
                               warm_start=warm_start, tol_on=tol_on)

    def trace(self, method: str = "hutch++", matvecs: int = 99, *, seed: int = 0) -> TraceEstimate:
        """Stochastic trace estimate; see :func:`landprobe.curvature.trace.trace`."""
        from landprobe.curvature.trace import trace

        return trace(self, method, matvecs, seed=seed)

    def density(self, steps: int = 90, probes: int = 1, *, sigma: float | None = None, grid: Any = 1000,
                seed: int = 0) -> Spectrum:
        """Spectral density by stochastic Lanczos quadrature; see :func:`landprobe.curvature.density.density`."""
        from landprobe.curvature.density import density

        return density(self, steps, probes, sigma=sigma, grid=grid, seed=seed)


def _describe(subnet: Any) -> Any:
    if subnet is None or isinstance(subnet, str):
        return subnet
    if isinstance(subnet, (list, tuple)) and all(isinstance(s, str) for s in subnet):
        return list(subnet)
    return repr(subnet)


def hessian(engine: Engine | HasEngine, theta: Any = None, subnet: Selector | None = None, *, dtype: torch.dtype | None = None,
            hvp: str = "auto", graph: str = "auto", graph_bytes: int = DEFAULT_GRAPH_BYTES) -> HessianOperator:
    """The Hessian of the empirical error at ``theta``, as a matrix-free operator.

    H = Σ_b (n_b / N) ∇² loss_fn(model(x_b; θ), y_b) over the probe's data, with respect to
    all parameters or one subnet (the others held at θ). θ is never written into the model:
    products run through ``torch.func.functional_call`` with θ's tensors, and the model's
    parameters, buffers, flags, modes and the RNG states are restored bitwise after each one.

    Args:
        theta: A state_dict, module or ParamVector of the probed model (``None``: the model as
            it is). Under ``bn="eval"`` its floating buffers (BatchNorm statistics) are used too.
        subnet: Selector of the parameters the Hessian is taken over (see :func:`landprobe.select`);
            use :meth:`HessianOperator.blocks` for several diagonal blocks at once.
        dtype: ``None`` (the model's dtype) or ``torch.float64``/``torch.float32``: the model is
            evaluated functionally on copies of θ and of the data in that dtype; the model itself
            is not converted.
        hvp: ``"auto"`` (double backward, measured fastest on CPU here),
            ``"double-backward"`` or ``"forward-over-reverse"``.
        graph: How double-backward products reuse work (all give the same H to rounding):
            ``"auto"`` (default): on the first product the gradient at θ is built with its
            autograd graph and kept, so that each product is one backward pass through it;
            the batches are concatenated into one when the loss of the concatenation equals
            the sample-weighted mean of the per-batch losses at θ (checked: true for
            per-sample-mean losses on models that treat samples independently; never under
            ``bn="train"``), else one graph per batch is kept. If the tensors autograd saves
            outgrow ``graph_bytes`` while it is built, it is dropped and products stream.
            ``"merged"`` / ``"per-batch"``: keep that graph whatever its size (``"merged"``
            unchecked: you assert the loss is a per-sample mean). ``"streamed"``: keep
            nothing; each product runs forward, gradient and second backward per batch
            (memory of one batch's graph). :attr:`HessianOperator.graph_used` says which ran.
        graph_bytes: Memory budget of the kept graph under ``graph="auto"`` (bytes of the
            storages autograd saves, not counting θ and the data; per rank under data
            sharding). Default 2 GiB.

    Returns:
        A :class:`HessianOperator` with ``matvec``, ``as_linear_operator``, ``blocks``,
        ``top_eigenvalues``, ``trace`` and ``density``. BatchNorm follows the probe's ``bn``
        (see the operator's Convention). Under data sharding (the probe's
        ``sharding=landprobe.Sharding(data=True)``) each rank caches only its own batches and
        every product is summed over the ranks, so every rank gets the one-process operator
        and spectra; ``settings["batches"]`` counts the batches of all ranks.

    Raises:
        ValueError: If ``dtype`` is not a floating dtype the Hessian supports, ``theta`` lacks a
            parameter, a selector matches nothing, or the data is empty.

    Example:
        >>> import torch, landprobe as lp
        >>> from landprobe.curvature import hessian
        >>> model = torch.nn.Linear(1, 1, bias=False)                    # y_hat = w * x
        >>> data = [(torch.ones(4, 1), torch.zeros(4, 1))]                # L(w) = w**2, so H = 2
        >>> probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), data)
        >>> hessian(probe).top_eigenvalues().values.tolist()
        [2.0]
    """
    engine = as_engine(engine)
    model = engine.model
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype}; the Hessian is evaluated in torch.float32 or torch.float64 "
                         f"(or None for the model's own dtype). Autocast dtypes are not supported here.")
    params = dict(model.named_parameters())
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters: there is no Hessian to take")
    names = select(model, subnet)
    state = _state_at(engine, theta, dtype)
    batches, total = engine.cached_batches(dtype)
    problem = _Problem(engine, batches, state)
    count = engine.all_sum(lambda: [torch.tensor([float(len(batches))], dtype=torch.float64)],
                           "counting the Hessian's batches")[0]
    settings = engine.settings(probe="hessian", subnet=_describe(subnet), batches=int(count),
                               samples=int(total))
    if dtype is not None:
        settings["dtype"] = str(dtype)
    return HessianOperator(problem, names, hvp=hvp, settings=settings, graph=graph, graph_bytes=graph_bytes)


def _state_at(engine: Engine, theta: Any, dtype: torch.dtype | None) -> dict[str, Tensor]:
    """θ as a copy of every parameter and buffer on the engine's device (floating ones in
    ``dtype``): parameters (and, under bn="eval", floating buffers) from ``theta``, the rest from
    the model; under bn="recompute" the BatchNorm statistics re-estimated at θ."""
    model = engine.model
    state: dict[str, Tensor] = {n: t.detach() for n, t in model.named_parameters()}
    state.update({n: b.detach() for n, b in model.named_buffers() if b is not None})
    if theta is not None:
        state.update(engine.as_point(theta).state_dict())
    if engine.bn == "recompute":
        with engine.guard("hessian (recomputing BatchNorm statistics)"):
            ParamVector({n: state[n] for n, _ in model.named_parameters()}).apply_to(model)
            engine.recompute_bn()
            state.update({n: b.detach().clone() for n, b in model.named_buffers() if b is not None})
    device = engine.device
    return {n: (t.to(device=device, dtype=dtype) if (dtype is not None and t.is_floating_point())
                else t.to(device)).clone() for n, t in state.items()}

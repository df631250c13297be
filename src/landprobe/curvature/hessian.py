"""The Hessian of the empirical error as a matrix-free operator.

:func:`hessian` (bound as ``LandscapeProbe.hessian``) returns a :class:`HessianOperator`: the
exact Hessian, with respect to the model's parameters (or one subnet of them), of the
sample-weighted empirical error

    L(θ) = Σ_b (n_b / N) · loss_fn(model(x_b; θ), y_b),

evaluated at θ functionally (``torch.func.functional_call``): the user's model is never
written to, and its modes, flags, buffers and the RNG states are restored after every product.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from landprobe.params import ParamVector, Selector, as_param_vector, select, select_subnets
from landprobe.probes._engine import ModelGuard, batch_size, is_batchnorm

__all__ = ["HessianOperator", "hessian", "HVP_METHODS"]

HVP_METHODS = ("double-backward", "forward-over-reverse")
# Measured on the 2-core CPU (benchmarks/results/hessian.json): double backward is the faster
# of the two for conv + linear nets; forward-over-reverse stays available for comparison.
DEFAULT_HVP = "double-backward"


def _cast(x: Any, dtype: torch.dtype | None, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        if x.is_floating_point() and dtype is not None and x.dtype != dtype:
            return x.to(device=device, dtype=dtype)
        return x.to(device) if x.device != device else x
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype, device) for v in x)
    if isinstance(x, dict):
        return {k: _cast(v, dtype, device) for k, v in x.items()}
    return x


class _Problem:
    """What every block of one Hessian shares: the model, the loss, the data and θ."""

    def __init__(self, model: nn.Module, loss_fn: Callable, batches: list[tuple[Any, Any, float]],
                 state: dict[str, Tensor], bn: str, engine_modes: Callable[[], None]):
        self.model = model
        self.loss_fn = loss_fn
        self.batches = batches          # (x, y, weight n_b / N)
        self.state = state              # every parameter and buffer at θ, in the operator's dtype
        self.bn = bn
        self.set_modes = engine_modes
        self.bns = [m for m in model.modules() if is_batchnorm(m)]

    @contextlib.contextmanager
    def session(self):
        """Model in the probe's modes for one product; everything restored afterwards."""
        with ModelGuard(self.model):
            self.set_modes()
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

    def loss(self, names: Sequence[str], tensors: Sequence[Tensor], x: Any, y: Any) -> Tensor:
        state = dict(self.state)
        state.update(zip(names, tensors))
        if isinstance(x, tuple):
            out = functional_call(self.model, state, x)
        elif isinstance(x, dict):
            out = functional_call(self.model, state, (), x)
        elif isinstance(x, list):
            out = functional_call(self.model, state, tuple(x))
        else:
            out = functional_call(self.model, state, (x,))
        loss = self.loss_fn(out, y)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                "loss_fn must return a scalar tensor (a mean-reduced loss such as nn.MSELoss()); got "
                + (f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__)
            )
        return loss.reshape(())


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

    Attributes:
        names: Parameter names of the block, in model order.
        n: Its dimension (number of scalar parameters).
        dtype: dtype the model is evaluated in (its own, or float64 on request).
        hvp: ``"double-backward"`` (default; measured fastest here) or
            ``"forward-over-reverse"`` (``torch.func.jvp`` of ``torch.func.grad``).
        matvecs: Number of Hessian-vector products computed so far.

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
                 settings: dict[str, Any] | None = None):
        if hvp == "auto":
            hvp = DEFAULT_HVP
        if hvp not in HVP_METHODS:
            raise ValueError(f"hvp={hvp!r}; expected 'auto' or one of {HVP_METHODS}")
        self._p = problem
        self.names = list(names)
        self.hvp = hvp
        theta = [problem.state[n] for n in self.names]
        self._theta = theta
        self._shapes = [t.shape for t in theta]
        self._sizes = [t.numel() for t in theta]
        self.n = int(sum(self._sizes))
        self.dtype = theta[0].dtype
        self.device = theta[0].device
        self.matvecs = 0
        self.settings = dict(settings or {})
        self.settings.update(hvp=hvp, n=self.n, dtype=str(self.dtype))

    # ---- basic properties
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def __repr__(self) -> str:
        return (f"HessianOperator(n={self.n}, {len(self.names)} tensors, {self.dtype}, "
                f"hvp={self.hvp!r}, batches={len(self._p.batches)})")

    def theta(self) -> ParamVector:
        """The point θ of this block (the operator's own tensors; do not modify)."""
        return ParamVector(dict(zip(self.names, self._theta)))

    # ---- products
    def _hvp_lists(self, vs: list[Tensor]) -> list[Tensor]:
        p = self._p
        acc = [torch.zeros_like(t) for t in self._theta]
        with p.session():
            if self.hvp == "double-backward":
                leaves = [t.detach().requires_grad_(True) for t in self._theta]
                with torch.enable_grad():
                    for x, y, w in p.batches:
                        loss = p.loss(self.names, leaves, x, y)
                        g = torch.autograd.grad(loss, leaves, create_graph=True)
                        hv = torch.autograd.grad(g, leaves, grad_outputs=vs, allow_unused=True)
                        hv = [torch.zeros_like(t) if h is None else h for h, t in zip(hv, leaves)]
                        torch._foreach_add_(acc, list(hv), alpha=w)
            else:
                for x, y, w in p.batches:
                    def g_of(params, yy, x=x):
                        return grad(lambda q: p.loss(self.names, q, x, yy))(params)
                    # The target enters as a primal with a materialised zero tangent: some loss
                    # backwards (mse_loss in torch 2.13) fail on a captured target under forward AD.
                    y_t = torch.zeros_like(y) if isinstance(y, Tensor) and y.is_floating_point() else None
                    if y_t is None:
                        _, hv = jvp(lambda q: g_of(q, y), (tuple(self._theta),), (tuple(vs),))
                    else:
                        _, hv = jvp(g_of, (tuple(self._theta), y), (tuple(vs), y_t))
                    torch._foreach_add_(acc, list(hv), alpha=w)
        self.matvecs += 1
        return acc

    def _hvp_many(self, vss: list[list[Tensor]]) -> list[list[Tensor]]:
        """H @ v for several vectors: with double backward, each batch's gradient graph is built
        once and differentiated once per vector (saves the forward and first backward per extra
        vector, about a quarter of an HVP on CPU); forward-over-reverse loops."""
        if self.hvp != "double-backward" or len(vss) == 1:
            return [self._hvp_lists(vs) for vs in vss]
        p = self._p
        accs = [[torch.zeros_like(t) for t in self._theta] for _ in vss]
        with p.session():
            leaves = [t.detach().requires_grad_(True) for t in self._theta]
            with torch.enable_grad():
                for x, y, w in p.batches:
                    loss = p.loss(self.names, leaves, x, y)
                    g = torch.autograd.grad(loss, leaves, create_graph=True)
                    for j, vs in enumerate(vss):
                        hv = torch.autograd.grad(g, leaves, grad_outputs=vs, allow_unused=True,
                                                 retain_graph=j + 1 < len(vss))
                        hv = [torch.zeros_like(t) if h is None else h for h, t in zip(hv, leaves)]
                        torch._foreach_add_(accs[j], list(hv), alpha=w)
        self.matvecs += len(vss)
        return accs

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
        out = self._hvp_many([self._split(V[:, j].contiguous()) for j in range(V.shape[1])])
        return torch.stack([torch.cat([h.reshape(-1) for h in hv]) for hv in out], dim=1)

    def _check_flat(self, v: Tensor) -> None:
        if v.dim() != 1 or v.numel() != self.n:
            raise ValueError(
                f"v has shape {tuple(v.shape)}; expected a flat tensor of {self.n} elements (this block's "
                f"dimension) or a ParamVector with the names {self.names[:4]}{'...' if len(self.names) > 4 else ''}"
            )

    def _split(self, flat: Tensor) -> list[Tensor]:
        flat = flat.to(device=self.device, dtype=self.dtype)
        return [c.view(s) for c, s in zip(torch.split(flat, self._sizes), self._shapes)]

    def matvec(self, v: ParamVector | Tensor) -> ParamVector | Tensor:
        """H @ v for a ParamVector over :attr:`names` or a flat tensor of :attr:`n` elements.

        Returns the same kind as ``v``, in the operator's dtype.

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
        return HessianOperator(self._p, names, hvp=self.hvp, settings=dict(self.settings, subnet=_describe(subnet)))

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
                        seed: int = 0, method: str = "lanczos", atol: float | None = None):
        """Extreme eigenvalues by Lanczos; see :func:`landprobe.curvature.lanczos.top_eigenvalues`."""
        from landprobe.curvature.lanczos import top_eigenvalues

        return top_eigenvalues(self, k, which, tol=tol, max_iter=max_iter, seed=seed, method=method, atol=atol)

    def trace(self, method: str = "hutch++", matvecs: int = 99, *, seed: int = 0):
        """Stochastic trace estimate; see :func:`landprobe.curvature.trace.trace`."""
        from landprobe.curvature.trace import trace

        return trace(self, method, matvecs, seed=seed)

    def density(self, steps: int = 90, probes: int = 1, *, sigma: float | None = None, grid: Any = 1000,
                seed: int = 0):
        """Spectral density by stochastic Lanczos quadrature; see :func:`landprobe.curvature.density.density`."""
        from landprobe.curvature.density import density

        return density(self, steps, probes, sigma=sigma, grid=grid, seed=seed)


def _describe(subnet: Any) -> Any:
    if subnet is None or isinstance(subnet, str):
        return subnet
    if isinstance(subnet, (list, tuple)) and all(isinstance(s, str) for s in subnet):
        return list(subnet)
    return repr(subnet)


def hessian(self, theta: Any = None, subnet: Selector | None = None, *, dtype: torch.dtype | None = None,
            hvp: str = "auto") -> HessianOperator:
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

    Returns:
        A :class:`HessianOperator` with ``matvec``, ``as_linear_operator``, ``blocks``,
        ``top_eigenvalues``, ``trace`` and ``density``. BatchNorm follows the probe's ``bn``
        (see the operator's Convention).

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
    probe = self
    model = probe.model
    engine = probe.engine
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype}; the Hessian is evaluated in torch.float32 or torch.float64 "
                         f"(or None for the model's own dtype). Autocast dtypes are not supported here.")
    params = dict(model.named_parameters())
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters: there is no Hessian to take")
    names = select(model, subnet)
    # θ: parameters (and, under bn="eval", floating buffers) from theta, the rest from the model.
    state: dict[str, Tensor] = {n: t.detach() for n, t in model.named_parameters()}
    state.update({n: b.detach() for n, b in model.named_buffers() if b is not None})
    if theta is not None:
        vec = as_param_vector(theta, model, names=probe._state_names())
        state.update(vec.state_dict())
    if engine.bn == "recompute":
        with ModelGuard(model):
            ParamVector({n: state[n] for n in params}).apply_to(model)
            engine.recompute_bn()
            state.update({n: b.detach().clone() for n, b in model.named_buffers() if b is not None})
    device = engine.device
    state = {n: (t.to(device=device, dtype=dtype) if (dtype is not None and t.is_floating_point())
                 else t.to(device)).clone() for n, t in state.items()}
    batches_raw: list[tuple[Any, Any, int]] = []
    for x, y in engine.batches():
        batches_raw.append((_cast(x, dtype, device), _cast(y, dtype, device), batch_size(x)))
    if not batches_raw:
        raise ValueError("data yielded no batch: pass a non-empty DataLoader or list of (x, y) pairs")
    total = float(sum(n for _, _, n in batches_raw))
    batches = [(x, y, n / total) for x, y, n in batches_raw]
    problem = _Problem(model, probe.loss_fn, batches, state, engine.bn, engine.set_eval_modes)
    settings = probe._settings(probe="hessian", subnet=_describe(subnet), batches=len(batches),
                               samples=int(total))
    if dtype is not None:
        settings["dtype"] = str(dtype)
    return HessianOperator(problem, names, hvp=hvp, settings=settings)

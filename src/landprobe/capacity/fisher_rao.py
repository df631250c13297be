"""The Fisher–Rao norm of Liang, Poggio, Rakhlin & Stokes 2019 ("Fisher–Rao metric, geometry,
and complexity of neural networks").

Liang et al. define ``‖θ‖_fr² = ⟨θ, I(θ) θ⟩`` with the Fisher information
``I(θ) = E[∇_θ ℓ(f_θ(X), Y) ∇_θ ℓ(f_θ(X), Y)ᵀ]``, so

    ‖θ‖_fr² = E_(X,Y)[ ⟨θ, ∇_θ ℓ(f_θ(X), Y)⟩² ].

Convention:
    - The version computed is the **empirical** one: the expectation is the mean over the
      samples of ``data`` with their own labels (the "empirical Fisher"), ``ℓ`` is ``loss_fn``
      applied to one sample at a time (``loss_fn(f(x_i)[None], y_i[None])``), and ``f`` is the
      model's output. The model-Fisher variant, which draws ``Y`` from the model's predictive
      distribution, is not computed.
    - ``⟨θ, ∇_θ ℓ_i⟩`` is the derivative of ``ℓ_i`` along the ray ``t ↦ (1 + t)θ`` at ``t = 0``:
      one forward-mode product (``torch.func.jvp``) per batch, no per-sample gradients. With a
      ``subnet`` only that subnet's parameters move along their ray (the others are fixed).
    - For a bias-free network with ``L`` hidden layers and positive-homogeneous activations
      (ReLU), ``f((1+t)θ) = (1+t)^(L+1) f(θ)`` so ``⟨θ, ∇_θ f⟩ = (L+1)·f`` (Liang et al.,
      Lemma 2.1) and ``‖θ‖_fr² = (L+1)² E[⟨∂ℓ/∂f, f⟩²]``. Biases break this identity; the
      definition above is computed as it is for any model.
    - The model runs in eval mode (BatchNorm on its running statistics); it is not modified.
    - Under data sharding (``sharding=landprobe.Sharding(data=True)``) each rank sums the
      squared derivatives of its own batches and the sums and sample counts are added over the
      ranks: every rank returns the one-process value.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from landprobe.capacity._common import check_model
from landprobe.engine import Engine, ModelGuard, Sharding, call_model
from landprobe.engine.contract import no_batch_error
from landprobe.params import Selector, select

__all__ = ["radial_derivative", "fisher_rao_norm"]


@contextlib.contextmanager
def _quiet():
    """Silence torch's own DeprecationWarning (jit.script) raised when forward-mode AD first loads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        yield


@contextlib.contextmanager
def _no_fastpath():
    """Off: the fused eval-mode transformer kernels (no forward-mode derivative) and the fused
    attention kernels; the math paths give the same values and have jvps."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mha = getattr(torch.backends, "mha", None)
    flag = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(flag)


def _ray_function(model: nn.Module, names: list[str]):
    from torch.func import functional_call

    state = {n: t.detach() for n, t in model.named_parameters()}
    state.update({n: b for n, b in model.named_buffers() if b is not None})
    primal = {n: state[n] for n in names}

    def run(p: dict[str, Tensor], x: Any):
        full = dict(state)
        full.update(p)
        return call_model(lambda *a, **k: functional_call(model, full, a, k), x)

    return run, primal


def radial_derivative(model: nn.Module, x: Any, *, subnet: Selector | None = None) -> tuple[Any, Any]:
    """The output ``f(x)`` and its derivative along θ: ``⟨θ, ∇_θ f(x)⟩ = d/dt f((1+t)θ)|_(t=0)``.

    One ``torch.func.jvp`` through the model's own forward (eval mode, model unchanged). For a
    bias-free ReLU net with ``L`` hidden layers the derivative is ``(L+1)·f(x)`` (homogeneity).

    Args:
        model: Any ``nn.Module`` whose layers support forward-mode AD.
        x: A batch of inputs (a tuple is unpacked into positional arguments).
        subnet: Only these parameters move along their ray (default all).

    Returns:
        ``(output, derivative)``, with the structure of the model's output.

    Example:
        >>> import torch
        >>> from landprobe.capacity import radial_derivative
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.ReLU(),
        ...                           torch.nn.Linear(4, 2, bias=False))          # L = 1 hidden layer
        >>> f, d = radial_derivative(net, torch.randn(5, 3))
        >>> torch.allclose(d, 2 * f)                                              # (L + 1) * f
        True
    """
    check_model(model, "radial_derivative")
    from torch.func import jvp

    names = select(model, subnet)
    with ModelGuard(model, label="radial_derivative"):
        model.eval()
        run, primal = _ray_function(model, names)
        with _quiet(), _no_fastpath():
            out, tangent = jvp(lambda p: run(p, x), (primal,), (primal,))
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, out), \
        tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, tangent)


def fisher_rao_norm(model: nn.Module, loss_fn: Callable, data: Iterable, *, subnet: Selector | None = None,
                    squared: bool = False, sharding: Sharding | None = None) -> float:
    """Empirical Fisher–Rao norm ``‖θ‖_fr = √( (1/N) Σ_i ⟨θ, ∇_θ ℓ(f_θ(x_i), y_i)⟩² )``.

    See the module's Convention for exactly which version this is (empirical Fisher, the
    model's output ``f`` and ``loss_fn`` per sample).

    Args:
        model: Any ``nn.Module`` (forward-mode AD through its layers).
        loss_fn: ``loss_fn(output, target)``, mean-reduced; applied to one sample at a time.
        data: Iterable of ``(x, y)`` batches (a DataLoader or a list of pairs).
        subnet: Only this subnet's parameters: ``⟨θ_S, ∇_(θ_S) ℓ⟩``.
        squared: Return ``‖θ‖_fr²`` instead.
        sharding: Under ``torch.distributed``: :class:`landprobe.Sharding` (``data=True``: each
            rank takes its share of the batches and the sums are added over the ranks, every
            rank returning the one-process value). ``None``: every rank passes over all the data.

    Raises:
        ValueError: If the data is empty or ``loss_fn`` does not return a scalar.

    Example:
        >>> import torch
        >>> from landprobe.capacity import fisher_rao_norm
        >>> net = torch.nn.Linear(1, 1, bias=False)           # f = w x, L = 0 hidden layers
        >>> _ = torch.nn.init.constant_(net.weight, 2.0)
        >>> data = [(torch.tensor([[1.0], [2.0]]), torch.zeros(2, 1))]
        >>> # l = (w x)^2, <w, dl/dw> = 2 (w x)^2 = 8 and 32: sqrt((64 + 1024) / 2)
        >>> fisher_rao_norm(net, torch.nn.MSELoss(), data) == (544.0) ** 0.5
        True
    """
    check_model(model, "fisher_rao_norm")
    from torch.func import jvp

    engine = Engine(model, loss_fn, data, sharding=sharding)
    names = select(model, subnet)
    with engine.guard("fisher_rao_norm"):
        engine.set_eval_modes()
        state = {n: t.detach() for n, t in model.named_parameters()}
        state.update({n: b for n, b in model.named_buffers() if b is not None})
        primal = {n: state[n] for n in names}

        def local() -> list[Tensor]:
            sq_sum: Tensor | None = None
            count = 0
            for batch, n in engine.each_batch():
                def losses(p: dict[str, Tensor], batch: Any = batch) -> Tensor:
                    return engine.per_sample_losses({**state, **p}, batch)
                with _quiet(), _no_fastpath():
                    _, d = jvp(losses, (primal,), (primal,))
                s = d.detach().to(torch.float64).pow(2).sum()
                sq_sum = s if sq_sum is None else sq_sum + s
                count += n
            total = torch.zeros(1, dtype=torch.float64) if sq_sum is None else sq_sum.reshape(1)
            return [total, torch.tensor([float(count)], dtype=torch.float64)]
        sq_sum, count = engine.all_sum(local, "fisher_rao_norm")
    if not float(count):
        raise no_batch_error()
    value = float(sq_sum) / float(count)
    return value if squared else math.sqrt(value)

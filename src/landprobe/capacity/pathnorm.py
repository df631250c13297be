"""ℓ1 and ℓ2 path norms (Neyshabur, Salakhutdinov & Srebro 2015; Neyshabur, Tomioka & Srebro 2015).

The ℓp path norm of a network is ``(Σ_paths Π_{e ∈ path} |w_e|^p)^(1/p)``, summed over every
path from an input unit to an output unit through the network's graph. It is computed with one
forward pass: replace every parameter by ``|θ|^p`` and feed an all-ones input; each unit then
holds the sum over the paths reaching it of the products of ``|w|^p``, and the sum of the
outputs is the sum over all paths.

Convention:
    - The model's own ``forward`` runs, with the parameters replaced through
      ``torch.func.functional_call`` (the model is not modified), in eval mode.
    - Biases: a bias ``b_i`` is an edge from a constant unit that holds 1, so it enters as
      ``|b_i|^p`` and the paths that start at a bias unit are counted (as Neyshabur et al.
      treat biases as weights of an extra input). A bias-free net gives the input→output paths only.
    - Requirement: activations positive-homogeneous and equal to the identity on non-negative
      inputs (ReLU, LeakyReLU, max-pooling, identity); on the all-ones input every
      pre-activation is non-negative, so they pass values through. BatchNorm (it would
      normalise the path sums) is refused; LayerNorm, softmax, sigmoid and tanh make the result
      meaningless and are not detected. Fixed linear operations (average pooling, residual
      additions, upsampling) enter with their own coefficients, not raised to ``p``.
    - Convolutions are unrolled on the input size given (weights shared across positions): it
      is the path norm of the network as a map on inputs of that size, and it grows with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from landprobe.capacity._common import check_model
from landprobe.engine import ModelGuard, is_batchnorm

__all__ = ["path_norm", "infer_input_shape"]


def infer_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The input shape (without batch) of a model whose first parametrised layer is an ``nn.Linear``."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        if any(True for _ in m.parameters(recurse=False)):
            return None
    return None


def path_norm(model: nn.Module, p: float = 2, *, input_shape: Sequence[int] | None = None,
              output: Callable[[Any], Tensor] | None = None) -> float:
    """The ℓp path norm ``(Σ_paths Π |w_e|^p)^(1/p)`` of a ReLU-type network (see the module's Convention).

    Args:
        model: A network with positive-homogeneous activations and no BatchNorm.
        p: 1 or 2 (any ``p >= 1`` works).
        input_shape: Input shape without the batch dimension, e.g. ``(3, 32, 32)``; inferred
            for a model whose first parametrised layer is an ``nn.Linear``.
        output: Picks the tensor from the model's output when it is not one tensor (e.g.
            ``lambda out: out[-1]``).

    Returns:
        The path norm as a Python float.

    Raises:
        ValueError: If ``p < 1``, the model holds a BatchNorm layer, or ``input_shape`` is
            needed and missing. TypeError: If the output is not a tensor and ``output`` is not given.

    Example:
        >>> import torch
        >>> from landprobe.capacity import path_norm
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.ReLU(),
        ...                           torch.nn.Linear(1, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -2.0]])); _ = net[2].weight.fill_(3.0)
        >>> path_norm(net, p=2)                     # sqrt((1*3)**2 + (2*3)**2) = sqrt(45)
        6.708203932499369
        >>> path_norm(net, p=1)                     # 1*3 + 2*3
        9.0
    """
    check_model(model, "path_norm")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1:
        raise ValueError(f"p={p!r}; the path norm is defined here for p >= 1 (use 1 or 2)")
    bns = [n for n, m in model.named_modules() if is_batchnorm(m)]
    if bns:
        raise ValueError(f"path_norm: {type(model).__name__} holds BatchNorm layers {bns[:4]}, which normalise "
                         f"the path sums; the path norm is defined for nets without normalisation. Fold the "
                         f"BatchNorm into the preceding layer first, or skip this measure.")
    if input_shape is None:
        input_shape = infer_input_shape(model)
        if input_shape is None:
            raise ValueError(f"path_norm: cannot infer the input shape of {type(model).__name__} (its first layer "
                             f"is not an nn.Linear); pass input_shape=(channels, height, width) for example")
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    from torch.func import functional_call

    with ModelGuard(model, label="path_norm"), torch.no_grad():
        model.eval()
        params = {n: t.detach().abs().pow(p) for n, t in model.named_parameters()}
        x = torch.ones((1, *tuple(int(s) for s in input_shape)), dtype=dtype, device=device)
        out = functional_call(model, params, (x,))
    if output is not None:
        out = output(out)
    if not isinstance(out, Tensor):
        raise TypeError(f"path_norm: the model returned a {type(out).__name__}, not a tensor; pass output= "
                        f"to pick it (e.g. output=lambda out: out[-1])")
    return float(out.detach().to(torch.float64).sum() ** (1.0 / p))
